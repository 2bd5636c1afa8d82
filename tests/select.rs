//! The CPU kernel-selection table (`backend::cpu::select`) is the one source of kernel
//! names: on every zoo model, dense and compressed, at batch 1 and 8 and on every
//! instruction set level, the name `fast::kernel_name` prints (what `cnnpack bench`
//! reports) is the name of the choice the model stored or made, the same for two
//! preparations with the same `Tuning`. The dispatch itself runs those choices: the
//! unit test `dispatch_runs_the_named_choice` in `fast` records them; here the small
//! models run through them against the reference. The storage decision (`compress
//! sparse`'s default) keeps sparse exactly the layers the executor runs CSR.
//!
//! The GPU table (`backend::gpu::select`) likewise: on the adapter, every conv and fc
//! step of every zoo model stores `select::choose`'s choice, prints its name
//! (`GpuModel::step_kernels`, what `bench` shows) and records only its entry points.

mod common;

use cnnpack::backend::cpu::fast::{self, Isa, Prepared};
use cnnpack::backend::cpu::reference;
use cnnpack::backend::cpu::select::{self, ConvChoice, CpuChoice, FcChoice};
use cnnpack::backend::gpu::select::{self as gpu_select, DeviceInfo};
use cnnpack::backend::gpu::{GpuContext, GpuModel};
use cnnpack::bench::sweep::{compress, SweepKind};
use cnnpack::compress::dns::{sparsify_graph, SparsePolicy};
use cnnpack::graph::{Graph, Op, Rng};
use cnnpack::tuning::{CompressedConv, ConvKernel, CpuOptions, GpuOptions, Pow2Fc, Tuning};
use cnnpack::weights::Weights;
use std::sync::Arc;

/// The zoo model `name`, folded.
fn zoo(name: &str) -> Graph {
    cnnpack::graph::fold(cnnpack::zoo::build(name, 1).expect("zoo model builds")).expect("folds")
}

/// `g` and its one-shot compressions as `bench sweep` makes them: sketch m = 2, INQ
/// 4 bits, CSR at 10% and 30% density.
fn variants(name: &str, g: Graph) -> Vec<(String, Graph)> {
    let mut out = Vec::new();
    for (kind, v) in [
        (SweepKind::Sketch, 2.0),
        (SweepKind::Inq, 4.0),
        (SweepKind::Sparse, 0.1),
        (SweepKind::Sparse, 0.3),
    ] {
        let c = compress(&g, kind, v).expect("compresses");
        out.push((format!("{name} {kind} {v}"), c));
    }
    out.push((name.to_string(), g));
    out
}

/// A tuning that runs the kernels of `isa`.
fn tuning(isa: Isa) -> Tuning {
    Tuning {
        cpu: CpuOptions {
            avx512: isa.avx512(),
            ..CpuOptions::default()
        },
        ..Tuning::default()
    }
}

/// Every name a choice can have.
const NAMES: &[&str] = &[
    "sparse_conv",
    "conv2d_packed",
    "conv2d",
    "decoded+conv2d",
    "linear (gemv)",
    "linear (gemm)",
    "linear (sgemm)",
    "pow2_linear (avx512)",
    "pow2_linear (avx2)",
    "pow2_linear (decode+gemm)",
    "pow2_linear (arithmetic decode)",
    "sketch_linear (avx512 masks)",
    "sketch_linear (decode+gemm)",
    "sketch_linear (decode+gemv)",
    "sketch_linear (avx2 triplets)",
    "sketch_linear (masked)",
    "sparse_linear",
];

/// Checks every node of `g` prepared for `tuning`: the printed name is the stored
/// choice's, two preparations choose alike, convs choose alike at every batch, and the
/// choice agrees with `select` on the node. Returns the names seen.
fn check_model(what: &str, g: &Arc<Graph>, tuning: &Tuning) -> Vec<&'static str> {
    let a = Prepared::with_options(g.clone(), &tuning.cpu);
    let b = Prepared::with_options(g.clone(), &tuning.cpu);
    let mut seen = Vec::new();
    for node in &g.nodes {
        for batch in [1, 8] {
            let what = format!("{what} {} batch {batch} {}", a.isa().name(), node.name);
            let choice = a.choice(node, batch);
            assert_eq!(choice, b.choice(node, batch), "{what}: deterministic");
            assert_eq!(
                fast::kernel_name(Some(&a), node, batch),
                choice.map(CpuChoice::name),
                "{what}: printed name"
            );
            assert_eq!(choice.is_some(), node.op.weights().is_some(), "{what}");
            match (&node.op, choice) {
                (Op::Conv(c), Some(CpuChoice::Conv(conv))) => {
                    assert_eq!(Some(CpuChoice::Conv(conv)), a.choice(node, 3), "{what}");
                    assert_eq!(conv == ConvChoice::Csr, select::runs_csr(c), "{what}");
                    if conv == ConvChoice::Packed {
                        assert!(select::packs(c), "{what}: packed without packs()");
                    }
                    let dense = matches!(c.weight, Weights::Dense(_));
                    assert!(
                        conv != ConvChoice::DecodedInPlace || !dense,
                        "{what}: dense weights decoded"
                    );
                }
                (Op::Linear(l), Some(CpuChoice::Fc(fc))) => {
                    assert_eq!(fc, select::fc(l, batch, a.isa()), "{what}");
                }
                (_, None) => {}
                (_, other) => panic!("{what}: {other:?} for this op"),
            }
            if let Some(name) = choice.map(CpuChoice::name) {
                assert!(NAMES.contains(&name), "{what}: unknown name {name}");
                assert!(
                    a.isa().avx512() || !name.contains("avx512"),
                    "{what}: {name} without AVX-512"
                );
                if !seen.contains(&name) {
                    seen.push(name);
                }
            }
        }
    }
    seen
}

/// Every zoo model, dense and (but the two largest, whose compression takes long)
/// compressed, on every instruction set level: printed names are the stored choices,
/// deterministic for a `Tuning`.
#[test]
fn every_zoo_model_prints_its_stored_choices() {
    let mut all = Vec::new();
    for &name in cnnpack::zoo::names() {
        let g = zoo(name);
        let models = if matches!(name, "alexnet" | "vgg16") {
            vec![(name.to_string(), g)]
        } else {
            variants(name, g)
        };
        for (what, g) in models {
            let g = Arc::new(g);
            for isa in Isa::available() {
                for name in check_model(&what, &g, &tuning(isa)) {
                    if !all.contains(&name) {
                        all.push(name);
                    }
                }
            }
        }
    }
    println!("kernels chosen: {all:?}");
    // The conv and compressed fc families all occur in the zoo.
    for name in ["sparse_conv", "decoded+conv2d", "sparse_linear"] {
        assert!(all.contains(&name), "{name} never chosen: {all:?}");
    }
}

/// The small models run through their choices, on every level and at batch 1 and 8,
/// and match the reference.
#[test]
fn chosen_kernels_match_the_reference() {
    for (what, g) in variants("lenet5", zoo("lenet5"))
        .into_iter()
        .chain(variants("lenet300100", zoo("lenet300100")))
    {
        let g = Arc::new(g);
        for isa in Isa::available() {
            let p = Prepared::with_options(g.clone(), &tuning(isa).cpu);
            for batch in [1, 8] {
                let mut shape = vec![batch];
                shape.extend(&g.input.item_shape);
                let x = Rng::new(2).normal_tensor(shape, 1.0);
                let got = p.run(&x).expect("fast run");
                let want = reference::run_graph(&g, &x).expect("reference run");
                for (got, want) in got.iter().zip(&want) {
                    let what = format!("{what} {} batch {batch}", isa.name());
                    common::assert_close(&what, got, want, (1e-4, 1e-5));
                }
            }
        }
    }
}

/// `compress sparse`'s default (`SparsePolicy::Crossover`) stores sparse exactly the
/// layers `select::stores_sparse` names, and every conv stored sparse runs the CSR
/// kernel: at 30% density ResNet-18's and SqueezeNet's stride-1 convs are CSR, their
/// strided ones (crossover 25%) stay dense (they were stored CSR and run dense before).
#[test]
fn stored_sparse_convs_run_csr() {
    for name in ["resnet18", "squeezenet1.1"] {
        for density in [0.1, 0.3] {
            let pruned = compress(&zoo(name), SweepKind::Sparse, density).expect("prunes");
            let (g, reports) = sparsify_graph(&pruned, &SparsePolicy::Crossover).expect("csr");
            let g = Arc::new(g);
            let p = Prepared::new(g.clone());
            let mut strided = 0;
            for (node, report) in g
                .nodes
                .iter()
                .filter(|n| n.op.weights().is_some())
                .zip(&reports)
            {
                let what = format!("{name} {density} {}", node.name);
                assert_eq!(report.name, node.name);
                assert_eq!(
                    report.sparse,
                    select::stores_sparse(&node.op, report.density()),
                    "{what}"
                );
                let sparse = matches!(node.op.weights(), Some(Weights::Sparse(_)));
                assert_eq!(sparse, report.sparse, "{what}");
                match (&node.op, p.choice(node, 1)) {
                    (Op::Conv(c), Some(CpuChoice::Conv(choice))) => {
                        assert_eq!(choice == ConvChoice::Csr, sparse, "{what}: {choice:?}");
                        if c.stride != [1, 1] {
                            strided += 1;
                            assert_eq!(sparse, density < 0.25, "{what}: strided");
                        } else {
                            assert!(sparse, "{what}: stride 1");
                        }
                    }
                    (Op::Linear(_), Some(CpuChoice::Fc(choice))) => {
                        assert!(sparse, "{what}");
                        assert_eq!(choice, FcChoice::Sparse, "{what}");
                    }
                    (_, other) => panic!("{what}: {other:?}"),
                }
            }
            assert!(strided > 0, "{name} has strided convs");
        }
    }
}

/// GPU options that force each kernel family's other paths, beside the default.
fn gpu_option_sets() -> Vec<(&'static str, GpuOptions)> {
    let mut sets = vec![("default", GpuOptions::default())];
    for (what, conv_kernel) in [
        ("tiled", ConvKernel::Tiled),
        ("gemm", ConvKernel::Gemm),
        ("gemm/3", ConvKernel::GemmSplits(3)),
        ("gemm wide", ConvKernel::GemmWide),
        ("uniform", ConvKernel::Uniform),
    ] {
        sets.push((
            what,
            GpuOptions {
                conv_kernel,
                ..GpuOptions::default()
            },
        ));
    }
    sets.push((
        "native compressed",
        GpuOptions {
            compressed_conv: CompressedConv::Native,
            pow2_fc: Pow2Fc::Window,
            sparse_fc_lanes: Some(4),
            ..GpuOptions::default()
        },
    ));
    sets.push((
        "decoded, lut 16 rows",
        GpuOptions {
            compressed_conv: CompressedConv::Decoded,
            pow2_fc: Pow2Fc::Lut,
            pow2_fc_rows: Some(16),
            pow2_fc_prefetch: Some(2),
            ..GpuOptions::default()
        },
    ));
    sets
}

/// Checks one GPU model of `g` at `batch`: every conv and fc step stored the choice
/// `gpu_select::choose` makes for its node and input shape, its printed name is that
/// choice's (plus the recorded reduce or gather kernel), the dispatches it recorded are
/// the choice's entry points with the main one first, and a second build stores and
/// prints the same. The choice also does not depend on anything but `DeviceInfo`: a
/// hardware adapter's is deterministic too. Returns the names printed.
fn check_gpu_model(
    what: &str,
    ctx: &Arc<GpuContext>,
    g: &Graph,
    batch: usize,
    options: &GpuOptions,
) -> Vec<String> {
    let build = || GpuModel::with_options(ctx.clone(), g, batch, *options).expect("plans");
    let (a, b) = (build(), build());
    assert_eq!(a.step_choices(), b.step_choices(), "{what}: deterministic");
    assert_eq!(
        a.step_kernels(),
        b.step_kernels(),
        "{what}: deterministic names"
    );
    let mut sorted = g.clone();
    sorted.sort_and_validate().expect("valid");
    let shapes = sorted.infer_shapes(batch).expect("shapes");
    let device = DeviceInfo::of(ctx);
    let hardware = DeviceInfo {
        software: false,
        ..device
    };
    let choices = a.step_choices();
    let names = a.step_kernels();
    let mut seen = Vec::new();
    for node in sorted.nodes.iter().filter(|n| n.op.weights().is_some()) {
        let what = format!("{what} batch {batch} {}", node.name);
        let step = choices
            .iter()
            .position(|(name, _, _)| {
                name == &node.name || name.starts_with(&format!("{}+", node.name))
            })
            .unwrap_or_else(|| panic!("{what}: no step"));
        let (_, stored, recorded) = &choices[step];
        let input = &shapes[&node.inputs[0]];
        let want = gpu_select::choose(&node.op, input, &device, options);
        assert_eq!(*stored, want, "{what}: stored choice");
        let choice = stored.unwrap_or_else(|| panic!("{what}: no choice"));
        assert_eq!(
            gpu_select::choose(&node.op, input, &hardware, options),
            gpu_select::choose(&node.op, input, &hardware, options),
            "{what}: hardware choice deterministic"
        );
        let entries = choice.entries();
        assert!(
            recorded.iter().all(|e| entries.contains(e)),
            "{what}: recorded {recorded:?} outside {entries:?}"
        );
        let main = recorded
            .iter()
            .find(|e| **e != "sketch_gather")
            .unwrap_or_else(|| panic!("{what}: nothing recorded"));
        assert_eq!(*main, choice.entry(), "{what}: main dispatch");
        let name = &names[step].1;
        let joined: Vec<String> = recorded
            .iter()
            .map(|&e| {
                if e == choice.entry() {
                    choice.name()
                } else {
                    e.to_string()
                }
            })
            .collect();
        assert_eq!(
            name,
            &joined.join("+"),
            "{what}: printed name for {choice:?}"
        );
        assert!(name.contains(&choice.name()), "{what}: printed {name}");
        if !seen.contains(name) {
            seen.push(name.clone());
        }
    }
    seen
}

/// Every zoo model on the GPU adapter, dense and (but the three largest) compressed, at
/// batch 1 and 8, the small ones with every option set: printed kernel names are the stored
/// choices, which are `gpu_select::choose`'s, deterministic for a `GpuOptions`.
#[test]
fn gpu_steps_print_their_stored_choices() {
    let Some(ctx) = common::gpu() else { return };
    let mut all: Vec<String> = Vec::new();
    let mut add = |names: Vec<String>| {
        for n in names {
            if !all.contains(&n) {
                all.push(n);
            }
        }
    };
    for &name in cnnpack::zoo::names() {
        let g = zoo(name);
        let big = matches!(name, "alexnet" | "vgg16" | "resnet50");
        let models = if big {
            vec![(name.to_string(), g)]
        } else {
            variants(name, g)
        };
        for (what, g) in &models {
            // The large models at batch 1 with the default options only: their weights
            // take seconds to upload on a software adapter.
            // Every option set on the small models; the mid-size ones (ResNet-18,
            // SqueezeNet 1.0) with the default and the native compressed kernels, which
            // keeps this test near half a minute on lavapipe.
            let small = matches!(name, "lenet5" | "lenet300100" | "squeezenet1.1");
            let sets = if big {
                vec![("default", GpuOptions::default())]
            } else if small {
                gpu_option_sets()
            } else {
                gpu_option_sets()
                    .into_iter()
                    .filter(|(set, _)| matches!(*set, "default" | "native compressed"))
                    .collect()
            };
            let batches: &[usize] = if big { &[1] } else { &[1, 8] };
            for (set, options) in &sets {
                for &batch in batches {
                    add(check_gpu_model(
                        &format!("{what} {set}"),
                        &ctx,
                        g,
                        batch,
                        options,
                    ));
                }
            }
        }
    }
    println!("GPU kernels printed: {all:?}");
    // (No zoo model has a depthwise conv: `conv_fwd_direct` is `select`'s unit test's.)
    for name in [
        "conv_fwd_tiled",
        "conv_fwd_ubo",
        "conv_gemm_wide",
        "sketch_conv",
        "sparse_conv",
        "pow2_conv",
        "decoded+conv_fwd_ubo",
        "linear_fwd_gemv",
        "linear_fwd_gemv8",
        "sketch_gather+sketch_fc",
        "sparse_fc",
        "pow2_fc_lut",
    ] {
        assert!(
            all.iter()
                .any(|n| format!("+{n}+").contains(&format!("+{name}+"))),
            "{name} never printed: {all:?}"
        );
    }
}
