//! The CPU kernel-selection table (`backend::cpu::select`) is the one source of kernel
//! names: on every zoo model, dense and compressed, at batch 1 and 8 and on every
//! instruction set level, the name `fast::kernel_name` prints (what `cnnpack bench`
//! reports) is the name of the choice the model stored or made, the same for two
//! preparations with the same `Tuning`. The dispatch itself runs those choices: the
//! unit test `dispatch_runs_the_named_choice` in `fast` records them; here the small
//! models run through them against the reference. The storage decision (`compress
//! sparse`'s default) keeps sparse exactly the layers the executor runs CSR.

mod common;

use cnnpack::backend::cpu::fast::{self, Isa, Prepared};
use cnnpack::backend::cpu::reference;
use cnnpack::backend::cpu::select::{self, ConvChoice, CpuChoice, FcChoice};
use cnnpack::bench::sweep::{compress, SweepKind};
use cnnpack::compress::dns::{sparsify_graph, SparsePolicy};
use cnnpack::graph::{Graph, Op, Rng};
use cnnpack::tuning::{CpuOptions, Tuning};
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
