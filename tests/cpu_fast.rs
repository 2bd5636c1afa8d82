//! The fast CPU kernels against the reference on random shapes (conv cases from
//! `common::conv_cases`, shared with `devices.rs`), with the one tolerance rule
//! (`common::tolerance`: sgemm accumulates K products in f32 in another order than the
//! f64 reference).

mod common;
use cnnpack::backend::cpu::fast::Isa;
use cnnpack::backend::cpu::{fast, reference};
use cnnpack::graph::{Conv2d, Linear, Node, Op, Rng, Tensor};
use cnnpack::tuning::CpuOptions;
use cnnpack::weights::Weights;

/// The AVX2 kernels where the CPU has AVX-512 (the default runs the AVX-512 ones).
const AVX2_ONLY: CpuOptions = CpuOptions {
    avx512: false,
    spin: true,
};

/// `got` against the reference's `want` for sums of `k` products.
fn check(got: &Tensor, want: &Tensor, k: usize, what: &str) {
    common::assert_close(what, got, want, common::tolerance(k));
}

/// The conv through each dense kernel, each checked against `want` (the reference):
/// in place (`fast::conv2d`) and on packed weights (`fast::conv2d_packed`, where this
/// CPU has AVX2+FMA, with each micro-kernel this CPU has), the latter also with its
/// fused ReLU.
fn check_dense_convs(x: &Tensor, conv: &Conv2d, want: &Tensor, k: usize, what: &str) {
    check(
        &fast::conv2d(x, conv),
        want,
        k,
        &format!("{what} (in place)"),
    );
    let mut want_relu = want.clone();
    want_relu.data.iter_mut().for_each(|v| *v = v.max(0.0));
    for isa in Isa::available() {
        let Some(packed) = fast::PackedConv::with_isa(conv, isa) else {
            eprintln!("no AVX2+FMA: packed conv not checked");
            return;
        };
        let isa = isa.name();
        check(
            &fast::conv2d_packed(x, conv, &packed, false),
            want,
            k,
            &format!("{what} (packed, {isa})"),
        );
        check(
            &fast::conv2d_packed(x, conv, &packed, true),
            &want_relu,
            k,
            &format!("{what} (packed, relu, {isa})"),
        );
    }
}

fn node(op: Op) -> Node {
    Node {
        name: "n".into(),
        op,
        inputs: vec!["x".into()],
        output: "y".into(),
    }
}

#[test]
fn conv_matches_reference_on_random_shapes() {
    for case in common::conv_cases(42, 60) {
        let want = reference::run_node(&node(Op::Conv(case.conv.clone())), &[&case.input]).unwrap();
        check_dense_convs(&case.input, &case.conv, &want, case.k, &case.what);
    }
}

#[test]
fn conv_with_many_columns_spans_blocks() {
    // P = 40*40 = 1600 output positions: several column blocks, the last one partial.
    let mut rng = Rng::new(7);
    for (k, pad) in [(1, 0), (3, 1)] {
        let conv = Conv2d {
            kernel: [k, k],
            stride: [1, 1],
            pads: [pad; 4],
            dilation: [1, 1],
            groups: 1,
            weight: Weights::Dense(rng.normal_tensor(vec![7, 5, k, k], 1.0)),
            bias: Some(rng.normal_tensor(vec![7], 1.0)),
        };
        let x = rng.normal_tensor(vec![2, 5, 40, 40], 1.0);
        let want = reference::conv2d(&x, &conv);
        check_dense_convs(
            &x,
            &conv,
            &want,
            5 * k * k,
            &format!("{k}x{k} conv over 40x40"),
        );
    }
}

/// Shapes that make the dense conv split its GEMMs over output channels as well as
/// column blocks and depth (cout not a multiple of 8, groups, a 1x1 conv with 49 columns),
/// asymmetric strides (the contiguous and the strided im2col paths in one conv), and a
/// large input with many column blocks per image.
#[test]
fn conv_tiles_over_channels_and_columns() {
    let mut rng = Rng::new(9);
    #[allow(clippy::type_complexity)]
    let cases: [(
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        usize,
        usize,
    ); 9] = [
        // (n, cin, cout, groups, stride, hw, k, pad)
        // K = 2700, 1200 and 300 (several K blocks of the GEMM), 100 output channels
        // (more than one L2 row block), each B source: shifted padded input, im2col
        // (stride 2), the input planes (1x1; the last block reads up to the end).
        (1, 300, 100, 1, [1, 1], [5, 6], 3, 1),
        (2, 80, 14, 2, [2, 2], [9, 9], 3, 1),
        (2, 300, 20, 1, [1, 1], [6, 7], 1, 0),
        (1, 64, 7, 1, [1, 1], [16, 16], 3, 0),
        (1, 5, 70, 1, [1, 1], [9, 9], 3, 1),
        (2, 6, 80, 2, [1, 2], [13, 11], 3, 1),
        (3, 4, 41, 1, [2, 1], [10, 15], 5, 2),
        (1, 96, 130, 1, [1, 1], [7, 7], 1, 0),
        (3, 64, 4, 1, [1, 1], [112, 112], 3, 1),
    ];
    for (n, cin, cout, groups, stride, [h, w], k, pad) in cases {
        let conv = Conv2d {
            kernel: [k, k],
            stride,
            pads: [pad; 4],
            dilation: [1, 1],
            groups,
            weight: Weights::Dense(rng.normal_tensor(vec![cout, cin / groups, k, k], 1.0)),
            bias: Some(rng.normal_tensor(vec![cout], 1.0)),
        };
        let x = rng.normal_tensor(vec![n, cin, h, w], 1.0);
        let want = reference::conv2d(&x, &conv);
        check_dense_convs(
            &x,
            &conv,
            &want,
            cin / groups * k * k,
            &format!("n{n} cin{cin} cout{cout} g{groups} s{stride:?} {h}x{w} k{k}"),
        );
    }
}

#[test]
fn concat_matches_reference_on_random_shapes() {
    let mut rng = Rng::new(21);
    // The last case's inputs are larger than one parallel copy (65536 floats).
    for (case, shape) in [[1, 3, 5, 7], [2, 4, 3, 3], [3, 2, 1, 9], [1, 70, 40, 40]]
        .into_iter()
        .enumerate()
    {
        for axis in 0..4 {
            let parts: Vec<Tensor> = (0..1 + case % 3 + axis % 2)
                .map(|i| {
                    let mut s = shape.to_vec();
                    s[axis] += i;
                    rng.normal_tensor(s, 1.0)
                })
                .collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let want = reference::run_node(&node(Op::Concat { axis }), &refs).unwrap();
            let got = fast::concat(&refs, axis);
            assert_eq!(got.shape, want.shape, "case {case} axis {axis}");
            assert!(
                got.data == want.data,
                "case {case} axis {axis}: values differ"
            );
        }
    }
}

#[test]
fn linear_matches_reference_on_random_shapes() {
    let mut rng = Rng::new(3);
    // With AVX2+FMA: batch 1 runs the one-row GEMV, 2-15 the 3-row blocks in passes of
    // 4 inputs, 16-64 the GEMM on input panels (one to four, part-filled), 65 sgemm; K
    // below, at and above the 8- and 16-wide steps and the GEMM's 256-deep blocks, with
    // odd tails; output counts that leave 1 or 2 rows for the last block.
    for case in 0..72 {
        let n = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 64, 65][case % 14];
        let k = rng.range(1, 600);
        let out = rng.range(1, 200);
        let fc = Linear {
            weight: Weights::Dense(rng.normal_tensor(vec![out, k], 1.0)),
            bias: (case % 2 == 0).then(|| rng.normal_tensor(vec![out], 1.0)),
        };
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let want = reference::linear(&x, &fc);
        for isa in Isa::available() {
            check(
                &fast::linear_isa(&x, &fc, isa),
                &want,
                k,
                &format!("case {case}: n{n} k{k} out{out} {}", isa.name()),
            );
        }
    }
}

#[test]
fn pooling_matches_reference_on_random_shapes() {
    use cnnpack::graph::Pool2d;
    let mut rng = Rng::new(17);
    for case in 0..60 {
        let k = [rng.range(1, 4), rng.range(1, 4)];
        let stride = [rng.range(1, 3), rng.range(1, 3)];
        let pads = [
            rng.range(0, k[0] - 1),
            rng.range(0, k[1] - 1),
            rng.range(0, k[0] - 1),
            rng.range(0, k[1] - 1),
        ];
        let p = Pool2d {
            kernel: k,
            stride,
            pads,
            ceil_mode: case % 2 == 0,
            count_include_pad: case % 3 == 0,
        };
        let (h, w) = (rng.range(k[0], k[0] + 9), rng.range(k[1], k[1] + 9));
        let c = rng.range(1, 4);
        let x = rng.normal_tensor(vec![[1, 5][case % 2], c, h, w], 1.0);
        let what = format!("case {case}: {p:?} on {:?}", x.shape);
        assert_eq!(
            fast::max_pool(&x, &p),
            reference::max_pool(&x, &p),
            "max {what}"
        );
        check(
            &fast::avg_pool(&x, &p),
            &reference::avg_pool(&x, &p),
            k[0] * k[1],
            &format!("avg {what}"),
        );
    }
}

/// The fast executor applies element-wise and layout ops to the buffer of an input that
/// dies at the node. It must give exactly the reference's values, and must not touch a
/// value that a later node (or the graph's outputs) still reads: here the input feeds a
/// ReLU and, later, an Add; a ReLU output is both added and returned; an Add reads the
/// same value twice.
#[test]
fn in_place_ops_match_the_reference_and_spare_live_values() {
    use cnnpack::graph::GraphBuilder;
    let mut b = GraphBuilder::new("x", &[3, 5, 7], 1);
    let x = b.input();
    let r = b.relu(&x); // x is read again below: not in place
    let a = b.add(&r, &x); // r dies here: in place
    let twice = b.add(&a, &a); // the same value twice: not in place
    let r2 = b.relu(&twice); // in place
    let kept = b.relu(&r2); // r2 dies here, but `kept` is an output
    let s = b.add(&kept, &a); // kept is an output: not in place
    let f = b.flatten(&s); // in place (shape only)
    let y = b.push(
        "clip",
        Op::Clip {
            min: -0.5,
            max: 1.5,
        },
        &[&f],
    );
    let g = b.finish(&[&y, &kept]).expect("graph");
    let mut rng = Rng::new(3);
    for n in [1, 4] {
        let input = rng.normal_tensor(vec![n, 3, 5, 7], 1.0);
        let fast_out = fast::run_graph(&g, &input).expect("fast");
        let ref_out = reference::run_graph(&g, &input).expect("reference");
        assert_eq!(fast_out, ref_out, "batch {n}");
        let (profiled, times) = fast::run_graph_profiled(&g, &input).expect("profiled");
        assert_eq!(profiled, ref_out, "batch {n}, profiled");
        // Every step timed once, under its node's name: all nodes but the Flatten (an
        // alias, no step).
        let names: Vec<&str> = times.iter().map(|(name, _)| name.as_str()).collect();
        let steps: Vec<&str> = g
            .nodes
            .iter()
            .filter(|n| n.output != f)
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, steps, "every step timed once");
    }
}

/// The allocator setting the CLI applies at start is accepted by glibc.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_applies_on_glibc() {
    assert!(cnnpack::backend::cpu::keep_freed_memory());
}

/// The fast executor fuses a ReLU into the conv before it when the ReLU alone reads
/// the conv's output. Fused, unfused (the conv output read twice, or a graph output)
/// and the reference must agree, and the profile names the fused step `conv+relu` (the
/// two node names, as the plan and the GPU name it).
#[test]
fn relu_fused_into_conv_matches_the_reference() {
    use cnnpack::graph::GraphBuilder;
    let mut b = GraphBuilder::new("x", &[3, 9, 11], 5);
    let x = b.input();
    // 16 and 32 channels: packed by `Prepared`; c3's 4 channels are not (see below).
    let c1 = b.conv(&x, 16, 3, 1, 1, 1); // read by the relu only: fused
    let r1 = b.relu(&c1);
    let c2 = b.conv(&r1, 16, 3, 2, 1, 1); // read by the relu and the add: not fused
    let r2 = b.relu(&c2);
    let s = b.add(&r2, &c2);
    let c3 = b.conv(&s, 4, 1, 1, 0, 1); // a graph output itself: not fused
    let r3 = b.relu(&c3);
    let g = b.finish(&[&r3, &c3]).expect("graph");
    let prepared = fast::Prepared::new(std::sync::Arc::new(g.clone()));
    // c1 and c2 packed (16 channels each, 3x3 over 3 and 16 inputs), c3 (4 channels:
    // 12 of 16 panel rows would be zeros) left to the in-place kernel.
    let packed_floats = 16 * 27 + 16 * 144;
    assert!(
        prepared.packed_bytes() >= 4 * packed_floats
            && prepared.packed_bytes() < 4 * (packed_floats + 64),
        "{prepared:?}"
    );
    let mut rng = Rng::new(4);
    for n in [1, 3] {
        let input = rng.normal_tensor(vec![n, 3, 9, 11], 1.0);
        let want = reference::run_graph(&g, &input).expect("reference");
        let got = fast::run_graph(&g, &input).expect("fast");
        for (o, (a, w)) in got.iter().zip(&want).enumerate() {
            check(a, w, 144, &format!("batch {n}, output {o}"));
        }
        let got = prepared.run(&input).expect("packed");
        let avx2 = fast::Prepared::with_options(std::sync::Arc::new(g.clone()), &AVX2_ONLY);
        let got_avx2 = avx2.run(&input).expect("packed, avx2");
        for (o, (a, w)) in got_avx2.iter().zip(&want).enumerate() {
            check(a, w, 144, &format!("batch {n}, output {o}, avx2"));
        }
        for (o, (a, w)) in got.iter().zip(&want).enumerate() {
            check(a, w, 144, &format!("batch {n}, output {o}, packed convs"));
        }
        assert!(want[0].data.contains(&0.0), "the relu clips something");
        for (what, (_, times)) in [
            (
                "in place",
                fast::run_graph_profiled(&g, &input).expect("profiled"),
            ),
            ("packed", prepared.run_profiled(&input).expect("profiled")),
        ] {
            let names: Vec<&str> = times.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(
                names.iter().filter(|n| n.contains('+')).count(),
                1,
                "{what}: {names:?}"
            );
            assert!(
                names.contains(&format!("{c1}+{r1}").as_str()),
                "{what}: {names:?}"
            );
            assert_eq!(
                times.len(),
                g.nodes.len() - 1,
                "{what}: one node fused away: {names:?}"
            );
        }
    }
}

/// The CPU runs the plan's fusion and aliases: a Relu fused into a conv it does not
/// directly follow, a Relu fused into a Linear (applied to its output), a Flatten read
/// by two steps while its source lives on (copied), a Flatten whose source dies at its
/// reader (taken over), and Flattens as graph outputs (in the Flatten's shape, one of
/// them sharing its source with another output). Fast (plain and prepared), profiled
/// and reference runs must agree, and the profile must name the fused steps.
#[test]
fn plan_fusion_and_aliases_match_the_reference() {
    use cnnpack::graph::GraphBuilder;
    let mut b = GraphBuilder::new("x", &[3, 6, 6], 1);
    let x = b.input();
    let ca = b.conv(&x, 4, 3, 1, 1, 1);
    let cb = b.conv(&x, 4, 3, 1, 1, 1);
    let ra = b.relu(&ca); // not next to ca (cb is between): fused all the same
    let rb = b.relu(&cb);
    let s = b.add(&ra, &rb);
    let f = b.flatten(&s); // read by two Linears, and s by the pool after them: copied
    let l1 = b.linear(&f, 6);
    let r1 = b.relu(&l1); // fused into the Linear
    let l2 = b.linear(&f, 6);
    let sum = b.add(&r1, &l2);
    let p = b.max_pool(&s, 2, 2, 0);
    let fp = b.flatten(&p); // p dies at its only reader: taken over
    let l3 = b.linear(&fp, 3);
    let fo = b.flatten(&l3); // an output, as is its source
    let g = b.finish(&[&sum, &fo, &l3, &f]).expect("graph");
    let prepared = fast::Prepared::new(std::sync::Arc::new(g.clone()));
    let mut rng = Rng::new(12);
    for n in [1, 3] {
        let input = rng.normal_tensor(vec![n, 3, 6, 6], 1.0);
        let want = reference::run_graph(&g, &input).expect("reference");
        assert_eq!(want[1].shape, [n, 3]);
        assert_eq!(want[3].shape, [n, 144]);
        let (profiled, times) = fast::run_graph_profiled(&g, &input).expect("profiled");
        for (what, got) in [
            ("fast", fast::run_graph(&g, &input).expect("fast")),
            ("prepared", prepared.run(&input).expect("prepared")),
            ("profiled", profiled),
        ] {
            assert_eq!(got.len(), want.len());
            for (o, (a, w)) in got.iter().zip(&want).enumerate() {
                check(a, w, 64, &format!("{what}, batch {n}, output {o}"));
            }
        }
        let names: Vec<&str> = times.iter().map(|(name, _)| name.as_str()).collect();
        let fused = [
            format!("{ca}+{ra}"),
            format!("{cb}+{rb}"),
            format!("{l1}+{r1}"),
        ];
        let want_names = [
            fused[0].as_str(),
            fused[1].as_str(),
            s.as_str(),
            fused[2].as_str(),
            l2.as_str(),
            sum.as_str(),
            p.as_str(),
            l3.as_str(),
        ];
        assert_eq!(names, want_names, "batch {n}");
    }
    // The fused Linear's ReLU is applied: r1 clips something, so skipping it would
    // change `sum`.
    let input = Rng::new(13).normal_tensor(vec![4, 3, 6, 6], 1.0);
    let mut without = g.clone();
    let relu = without
        .nodes
        .iter()
        .position(|n| n.output == r1)
        .expect("r1");
    without.nodes[relu].op = Op::Identity;
    let unclipped = reference::run_graph(&without, &input).expect("reference")[0].clone();
    let got = fast::run_graph(&g, &input).expect("fast");
    assert!(
        got[0].max_abs_diff(&unclipped) > 1e-3,
        "the Linear's ReLU clips"
    );
}

/// Graph runs from several threads at once: each run may start a helper worker that
/// spins for its forks (`fast::on_pool`); with concurrent runs the helpers must step
/// aside, not wait on each other. Every run must finish (bounded wait) and agree with a
/// lone run. The interleaving in which two helpers would wait on each other is not
/// forced here (a mutation that lets every run keep its helper still passed), so this
/// checks results and progress under concurrency, not that guard itself.
#[test]
fn concurrent_runs_finish_and_agree() {
    use cnnpack::graph::GraphBuilder;
    use std::sync::{mpsc, Arc};
    let mut b = GraphBuilder::new("x", &[3, 40, 40], 9);
    let x = b.input();
    let c1 = b.conv(&x, 16, 3, 1, 1, 1);
    let r1 = b.relu(&c1);
    let p = b.max_pool(&r1, 2, 2, 0);
    let c2 = b.conv(&p, 8, 3, 2, 1, 1);
    let g = Arc::new(b.finish(&[&c2]).expect("graph"));
    let input = Arc::new(Rng::new(2).normal_tensor(vec![4, 3, 40, 40], 1.0));
    let want = fast::run_graph(&g, &input).expect("fast");
    let (tx, rx) = mpsc::channel();
    for _ in 0..4 {
        let (g, input, tx) = (g.clone(), input.clone(), tx.clone());
        std::thread::spawn(move || {
            for _ in 0..25 {
                tx.send(fast::run_graph(&g, &input).expect("fast"))
                    .expect("send");
            }
        });
    }
    for i in 0..100 {
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("run {i} did not finish: {e}"));
        assert_eq!(got, want, "run {i}");
    }
}

/// An empty batch, and an empty reduction (K = 0: the output is the bias), on the dense fc.
#[test]
fn linear_empty_batch_and_reduction() {
    let mut rng = Rng::new(37);
    for (n, k) in [(0, 300), (3, 0), (20, 0)] {
        let fc = Linear {
            weight: Weights::Dense(rng.normal_tensor(vec![7, k], 1.0)),
            bias: Some(rng.normal_tensor(vec![7], 1.0)),
        };
        let x = Tensor::zeros(vec![n, k]);
        let want = reference::linear(&x, &fc);
        let got = fast::linear(&x, &fc);
        assert_eq!(
            (&got.shape, &got.data),
            (&want.shape, &want.data),
            "n{n} k{k}"
        );
    }
}
