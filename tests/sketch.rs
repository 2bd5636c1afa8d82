//! Network sketching: algorithm properties, the bit-packed encoding, and the fast CPU
//! kernels (masked, LUT, associative) against a dense reference of the unpacked weights.
//!
//! Kernel tolerance: max |fast − reference| ≤ 1e-4 · max |reference| (+1e-6 absolute),
//! f32 sums of at most a few hundred terms in a different order.

mod common;
use cnnpack::backend::cpu::fast::sketch::{
    sketch_conv, sketch_conv_assoc, sketch_conv_assoc_with, sketch_conv_lut, sketch_linear,
    sketch_linear_assoc, sketch_linear_assoc_with, sketch_linear_lut, sketch_linear_with,
    AssocPlan,
};
use cnnpack::backend::cpu::fast::FcKernel;
use cnnpack::backend::cpu::{fast as cpu_fast, reference as cpu_reference};
use cnnpack::compress::sketch::{relative_error, sketch_row};
use cnnpack::compress::{sketch_graph, sketch_tensor, CompressError, SketchOptions};
use cnnpack::format::cnnpack as pack_format;
use cnnpack::graph::{Conv2d, GraphBuilder, Linear, Node, Op, Rng, Tensor};
use cnnpack::weights::{PartMut, SketchWeights, Weights};
use common::{assert_close, data_dir};
use std::collections::HashMap;

/// The dense reference (`backend::cpu::reference`, f64 accumulation) on one layer:
/// it unpacks the sketch with `to_dense`, so this checks the fast kernels against
/// the unpacked weights.
fn reference(op: Op, x: &Tensor) -> Tensor {
    let node = Node {
        name: "layer".into(),
        op,
        inputs: vec!["x".into()],
        output: "y".into(),
    };
    cpu_reference::run_node(&node, &[x]).expect("reference runs the layer")
}

fn reference_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    reference(Op::Conv(conv.clone()), x)
}

/// Naive dense fc `[N, K] x [O, K]ᵀ + b` (for weights given as a dense tensor).
fn naive_linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (n, k) = (x.shape[0], x.shape[1]);
    let o = w.shape[0];
    let mut out = vec![0f32; n * o];
    for r in 0..n {
        for c in 0..o {
            let mut acc = bias.map_or(0.0, |b| b.data[c] as f64);
            for i in 0..k {
                acc += x.data[r * k + i] as f64 * w.data[c * k + i] as f64;
            }
            out[r * o + c] = acc as f32;
        }
    }
    Tensor::new(vec![n, o], out).expect("sizes agree")
}

/// Kernel tolerance (see the top of the file): `1e-4 * max |reference| + 1e-6`.
const TOL: (f32, f32) = (1e-4, 1e-6);

fn random_sketch(rng: &mut Rng, shape: Vec<usize>, m: usize, refined: bool) -> SketchWeights {
    let w = rng.normal_tensor(shape, 0.3);
    sketch_tensor(&w, m, refined)
}

#[test]
fn direct_m1_is_bwn() {
    let mut rng = Rng::new(1);
    for _ in 0..10 {
        let rows = rng.range(1, 9);
        let k = rng.range(1, 100);
        let w = rng.normal_tensor(vec![rows, k], 1.0);
        for refined in [false, true] {
            let s = sketch_tensor(&w, 1, refined);
            for c in 0..rows {
                let row = &w.data[c * k..(c + 1) * k];
                let mean = (row.iter().map(|v| v.abs() as f64).sum::<f64>() / k as f64) as f32;
                let a = s.scales()[c];
                // Refined m = 1 is the same least-squares optimum, up to f64 rounding.
                if refined {
                    assert!((a - mean).abs() <= 1e-6 * mean, "refined a {a} vs {mean}");
                } else {
                    assert_eq!(a, mean, "direct a of row {c}");
                }
                for (i, v) in row.iter().enumerate() {
                    let want = if *v >= 0.0 { 1.0 } else { -1.0 };
                    assert_eq!(s.sign(c, 0, i), want, "sign of row {c} element {i}");
                }
            }
        }
    }
}

#[test]
fn refined_error_never_above_direct_and_both_fall_with_m() {
    let mut rng = Rng::new(2);
    for layer in 0..8 {
        let rows = rng.range(1, 12);
        let k = rng.range(9, 300);
        let w = rng.normal_tensor(vec![rows, k], 0.1);
        let mut prev = [f64::INFINITY; 2];
        for m in 1..=6 {
            let d = relative_error(&w.data, &sketch_tensor(&w, m, false).dense_data());
            let r = relative_error(&w.data, &sketch_tensor(&w, m, true).dense_data());
            assert!(
                r <= d * (1.0 + 1e-6),
                "layer {layer} [{rows},{k}] m={m}: refined {r} > direct {d}"
            );
            assert!(
                d < prev[0],
                "layer {layer} m={m}: direct {d} !< {}",
                prev[0]
            );
            assert!(
                r < prev[1],
                "layer {layer} m={m}: refined {r} !< {}",
                prev[1]
            );
            prev = [d, r];
        }
        println!(
            "layer {layer} [{rows},{k}]: m=6 direct {:.4} refined {:.4}",
            prev[0], prev[1]
        );
    }
}

#[test]
fn dependent_bases_give_no_nan() {
    // A constant row is fit exactly by one base; later residual signs repeat B_1.
    let w = Tensor::new(
        vec![2, 5],
        vec![0.5; 5]
            .into_iter()
            .chain([1.0, -1.0, 1.0, -1.0, 1.0])
            .collect(),
    )
    .expect("10 values");
    for refined in [false, true] {
        let s = sketch_tensor(&w, 4, refined);
        assert!(s.scales().iter().all(|a| a.is_finite()), "{:?}", s.scales());
        let e = relative_error(&w.data, &s.dense_data());
        assert!(e < 1e-6, "refined={refined}: error {e}");
    }
    let (_, a) = sketch_row(&[0.0; 7], 3, true);
    assert_eq!(a, vec![0.0; 3]);
}

#[test]
fn pack_unpack_round_trip() {
    let mut rng = Rng::new(3);
    for &(rows, k, m) in &[
        (3usize, 1usize, 2usize),
        (4, 32, 3),
        (2, 33, 1),
        (5, 75, 4),
        (1, 64, 6),
    ] {
        let signs: Vec<bool> = (0..rows * m * k).map(|_| rng.uniform() < 0.5).collect();
        let scales: Vec<f32> = (0..rows * m).map(|_| rng.normal()).collect();
        let s = SketchWeights::from_signs(vec![rows, k], m, &signs, scales.clone()).expect("sizes");
        assert_eq!(s.words_per_row(), k.div_ceil(32));
        let dense = Weights::Sketch(s.clone()).to_dense().into_owned();
        for c in 0..rows {
            for i in 0..k {
                let mut want = 0f32;
                for j in 0..m {
                    let b = signs[(c * m + j) * k + i];
                    assert_eq!(s.sign(c, j, i), if b { 1.0 } else { -1.0 });
                    // Documented layout: bit k % 32 of word k / 32 of row (c, j).
                    let word = s.bits()[(c * m + j) * s.words_per_row() + i / 32];
                    assert_eq!(word >> (i % 32) & 1 == 1, b);
                    let a = scales[c * m + j];
                    want += if b { a } else { -a };
                }
                assert_eq!(dense.data[c * k + i], want, "row {c} k {i}");
            }
        }
        // Padding bits are written as zero.
        if k % 32 != 0 {
            for row in s.bits().chunks_exact(s.words_per_row()) {
                assert_eq!(row[row.len() - 1] >> (k % 32), 0);
            }
        }
        let wts = Weights::Sketch(s.clone());
        assert_eq!(wts.encoding(), "sketch");
        assert_eq!(wts.bytes(), (rows * m * k.div_ceil(32) + rows * m) * 4);
        assert_eq!(wts.parameters(), rows * k);
    }
}

#[test]
fn serde_and_parts_round_trip() {
    let mut rng = Rng::new(4);
    let s = random_sketch(&mut rng, vec![6, 3, 3, 3], 3, true);
    let wts = Weights::Sketch(s);
    let json = serde_json::to_string(&wts).expect("serialises");
    let mut back: Weights = serde_json::from_str(&json).expect("deserialises");
    assert!(
        back.check().is_err(),
        "empty arrays must fail the size check"
    );
    let parts: Vec<_> = wts.parts().into_iter().map(|(n, _)| n).collect();
    assert_eq!(parts, vec!["bits", "scales"]);
    for ((name, dst), (_, src)) in back.parts_mut().into_iter().zip(wts.parts()) {
        match (dst, src) {
            (PartMut::U32(d), cnnpack::weights::PartRef::U32(s)) => *d = s.to_vec(),
            (PartMut::F32(d), cnnpack::weights::PartRef::F32(s)) => *d = s.to_vec(),
            _ => panic!("part {name} changed type"),
        }
    }
    back.check().expect("filled parts pass");
    assert_eq!(back, wts);
}

fn set_padding_bits(s: &mut SketchWeights) {
    let k = s.row_len();
    let wpr = s.words_per_row();
    let (bits, _) = s.arrays_mut();
    for row in bits.chunks_exact_mut(wpr) {
        row[wpr - 1] |= !((1u32 << (k % 32)) - 1);
    }
}

#[test]
fn padding_bits_are_neutral() {
    let mut rng = Rng::new(5);
    let k = 37;
    let clean = random_sketch(&mut rng, vec![7, k], 3, true);
    let mut dirty = clean.clone();
    set_padding_bits(&mut dirty);
    assert_ne!(clean.bits(), dirty.bits());
    assert_eq!(clean.dense_data(), dirty.dense_data());
    let x = rng.normal_tensor(vec![3, k], 1.0);
    for (name, f) in [
        (
            "masked",
            sketch_linear as fn(&Tensor, &SketchWeights, Option<&Tensor>) -> Tensor,
        ),
        ("lut", sketch_linear_lut),
        ("assoc", sketch_linear_assoc),
    ] {
        assert_eq!(f(&x, &clean, None).data, f(&x, &dirty, None).data, "{name}");
    }
    for kernel in [FcKernel::Avx2, FcKernel::Avx512] {
        let f = |s: &SketchWeights| sketch_linear_with(&x, s, None, kernel).data;
        assert_eq!(f(&clean), f(&dirty), "{kernel:?}");
    }
    // Conv: K = 4 * 3 * 3 = 36.
    let w = random_sketch(&mut rng, vec![5, 4, 3, 3], 2, false);
    let mut dw = w.clone();
    set_padding_bits(&mut dw);
    let mk = |w: SketchWeights| Conv2d {
        kernel: [3, 3],
        stride: [1, 1],
        pads: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
        weight: Weights::Sketch(w),
        bias: None,
    };
    let (c1, c2) = (mk(w), mk(dw));
    let x = rng.normal_tensor(vec![2, 4, 6, 5], 1.0);
    assert_eq!(sketch_conv(&x, &c1).data, sketch_conv(&x, &c2).data);
    assert_eq!(sketch_conv_lut(&x, &c1).data, sketch_conv_lut(&x, &c2).data);
    assert_eq!(
        sketch_conv_assoc(&x, &c1).data,
        sketch_conv_assoc(&x, &c2).data
    );
}

#[test]
fn linear_kernels_match_dense_reference() {
    let mut rng = Rng::new(6);
    for case in 0..44 {
        // AVX-512 (masks): passes of 1-4 inputs, up to 16; AVX2: decoded rows from 2
        // (the GEMV), and into the GEMM's panels from 16 (and on AVX-512 from 17). Up
        // to 110 rows: several 48-row GEMM tasks, the last one short.
        let n = [1, 5, 1, 8, 2, 3, 4, 66, 16, 17, 33][case % 11];
        let k = rng.range(1, 600) | 1;
        let o = rng.range(1, 110);
        let m = rng.range(1, 6);
        let s = random_sketch(&mut rng, vec![o, k], m, case % 3 == 0);
        let bias = rng.normal_tensor(vec![o], 1.0);
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let want = reference(
            Op::Linear(Linear {
                weight: Weights::Sketch(s.clone()),
                bias: Some(bias.clone()),
            }),
            &x,
        );
        let what = format!("fc case {case} n={n} k={k} o={o} m={m}");
        assert_close(
            &format!("{what} masked"),
            &sketch_linear(&x, &s, Some(&bias)),
            &want,
            TOL,
        );
        for kernel in [FcKernel::Avx2, FcKernel::Avx512] {
            if kernel.supported() {
                assert_close(
                    &format!("{what} {kernel:?}"),
                    &sketch_linear_with(&x, &s, Some(&bias), kernel),
                    &want,
                    TOL,
                );
            }
        }
        assert_close(
            &format!("{what} lut"),
            &sketch_linear_lut(&x, &s, Some(&bias)),
            &want,
            TOL,
        );
        if cpu_fast::sketch_triplets::supported() {
            assert_close(
                &format!("{what} triplets"),
                &cpu_fast::sketch_triplets::sketch_linear_triplets(&x, &s, Some(&bias)),
                &want,
                TOL,
            );
        }
        assert_close(
            &format!("{what} assoc"),
            &sketch_linear_assoc(&x, &s, Some(&bias)),
            &want,
            TOL,
        );
        let pure = AssocPlan::pure(&s, 1);
        assert_close(
            &format!("{what} assoc (pure tree)"),
            &sketch_linear_assoc_with(&x, &s, &pure, Some(&bias)),
            &want,
            TOL,
        );
    }
}

#[test]
fn conv_kernels_match_dense_reference() {
    let mut rng = Rng::new(7);
    // (cin, cout, groups, k, stride, pad, dilation)
    let cases = [
        (3, 8, 1, 3, 1, 1, 1),
        (5, 7, 1, 3, 2, 1, 1),
        (6, 6, 6, 3, 1, 1, 1),  // depthwise
        (8, 12, 4, 3, 2, 2, 1), // grouped, stride 2, wide padding
        (4, 5, 1, 5, 1, 2, 2),  // dilated
        (9, 3, 1, 1, 1, 0, 1),  // 1x1
        (7, 11, 1, 3, 2, 0, 1), // K = 63
        (16, 4, 2, 3, 1, 1, 1), // K = 72
    ];
    for (case, &(cin, cout, groups, k, stride, pad, dil)) in cases.iter().enumerate() {
        for n in [1, 5] {
            let h = rng.range(k * dil, 13);
            let wd = rng.range(k * dil, 11);
            let m = rng.range(1, 4);
            let s = random_sketch(&mut rng, vec![cout, cin / groups, k, k], m, case % 2 == 0);
            let conv = Conv2d {
                kernel: [k, k],
                stride: [stride, stride],
                pads: [pad, pad + case % 2, pad, pad],
                dilation: [dil, dil],
                groups,
                weight: Weights::Sketch(s),
                bias: Some(rng.normal_tensor(vec![cout], 1.0)),
            };
            let x = rng.normal_tensor(vec![n, cin, h, wd], 1.0);
            let want = reference_conv(&x, &conv);
            let what = format!("conv case {case} n={n} {h}x{wd} m={m}");
            assert_close(
                &format!("{what} masked"),
                &sketch_conv(&x, &conv),
                &want,
                TOL,
            );
            assert_close(
                &format!("{what} lut"),
                &sketch_conv_lut(&x, &conv),
                &want,
                TOL,
            );
            assert_close(
                &format!("{what} assoc"),
                &sketch_conv_assoc(&x, &conv),
                &want,
                TOL,
            );
            let Weights::Sketch(sw) = &conv.weight else {
                unreachable!("built as sketch above")
            };
            let pure = AssocPlan::pure(sw, groups);
            assert_close(
                &format!("{what} assoc (pure tree)"),
                &sketch_conv_assoc_with(&x, &conv, &pure),
                &want,
                TOL,
            );
        }
    }
}

#[test]
fn assoc_tree_cost_bounded_and_small_for_similar_rows() {
    let mut rng = Rng::new(8);
    let s = random_sketch(&mut rng, vec![32, 100], 3, true);
    let plan = AssocPlan::pure(&s, 1);
    // The tree contains every root edge, so it never costs more than summing set bits.
    assert!(plan.tree_flips() <= plan.direct_set_bits(&s));
    assert_eq!(plan.dense_cost(), 32 * 3 * 100);
    // Rows that differ from one prototype in 2 bits each: the tree is nearly free.
    let k = 200;
    let proto: Vec<bool> = (0..k).map(|_| rng.uniform() < 0.5).collect();
    let mut signs = Vec::new();
    for _ in 0..20 {
        let mut row = proto.clone();
        for _ in 0..2 {
            let i = rng.range(0, k - 1);
            row[i] = !row[i];
        }
        signs.extend(row);
    }
    let scales = (0..20).map(|_| rng.normal()).collect();
    let s = SketchWeights::from_signs(vec![20, k], 1, &signs, scales).expect("sizes");
    // Hybrid: one direct row per tree, every other row a cheap tree edge.
    let hybrid = AssocPlan::new(&s, 1);
    assert_eq!(hybrid.direct_rows(), hybrid.trees());
    assert!(
        hybrid.tree_flips() <= 20 * 4,
        "hybrid flips {}",
        hybrid.tree_flips()
    );
    // Random rows are all computed directly by the hybrid plan.
    let far = random_sketch(&mut rng, vec![16, k], 2, true);
    let far_plan = AssocPlan::new(&far, 1);
    assert_eq!((far_plan.direct_rows(), far_plan.tree_flips()), (32, 0));
    let plan = AssocPlan::pure(&s, 1);
    let set: usize = proto.iter().filter(|b| **b).count();
    // Each tree pays one root edge (about the prototype's set bits), then ≤ 4 flips a row.
    assert!(
        plan.tree_flips() <= plan.trees() * (set + 2) + 20 * 4,
        "tree {} vs prototype bits {set}",
        plan.tree_flips()
    );
    let x = rng.normal_tensor(vec![3, k], 1.0);
    let want = naive_linear(&x, &Weights::Sketch(s.clone()).to_dense(), None);
    assert_close(
        "near-duplicate rows",
        &sketch_linear_assoc(&x, &s, None),
        &want,
        TOL,
    );
    assert_close(
        "near-duplicate rows, pure tree",
        &sketch_linear_assoc_with(&x, &s, &plan, None),
        &want,
        TOL,
    );
}

#[test]
fn sketch_graph_options_and_errors() {
    let mut b = GraphBuilder::new("net", &[3, 12, 12], 9);
    let x = b.input();
    let c1 = b.conv_named("conv1", &x, 8, 3, 1, 1, 1);
    let r = b.relu(&c1);
    let c2 = b.conv_named("conv2", &r, 8, 3, 2, 1, 2);
    let f = b.flatten(&c2);
    let y = b.linear_named("fc", &f, 10);
    let g = b.finish(&[&y]).expect("valid graph");

    let opts = SketchOptions {
        bases: 2,
        refined: true,
        dense_layers: vec!["conv1".into()],
        bases_per_layer: HashMap::from([("fc".to_string(), 4)]),
    };
    let (out, reports) = sketch_graph(&g, &opts).expect("sketches");
    let names: Vec<_> = reports
        .iter()
        .map(|r| (r.name.as_str(), r.op, r.bases))
        .collect();
    assert_eq!(names, vec![("conv2", "conv", 2), ("fc", "linear", 4)]);
    for r in &reports {
        assert!(r.rel_error > 0.0 && r.rel_error < 1.0, "{r:?}");
        assert!(r.bytes_after < r.bytes_before, "{r:?}");
    }
    let enc = |name: &str| {
        let node = out
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node kept");
        match &node.op {
            Op::Conv(c) => c.weight.encoding(),
            Op::Linear(l) => l.weight.encoding(),
            _ => "other",
        }
    };
    assert_eq!(
        (enc("conv1"), enc("conv2"), enc("fc")),
        ("dense", "sketch", "sketch")
    );

    let bad = SketchOptions {
        dense_layers: vec!["conv9".into()],
        ..opts.clone()
    };
    let e = sketch_graph(&g, &bad).expect_err("unknown layer");
    assert!(
        matches!(e, CompressError::UnknownLayer(ref n) if n == "conv9"),
        "{e}"
    );
    assert!(e.to_string().contains("conv9"));

    let mut nan = g.clone();
    for node in &mut nan.nodes {
        if let Op::Linear(l) = &mut node.op {
            if let Weights::Dense(t) = &mut l.weight {
                t.data[3] = f32::NAN;
            }
        }
    }
    let e = sketch_graph(&nan, &opts).expect_err("NaN weights");
    assert!(e.to_string().contains("'fc'"), "{e}");

    // Sketching twice refuses the already-sketched layer.
    let e = sketch_graph(&out, &opts).expect_err("already sketched");
    assert!(e.to_string().contains("conv2"), "{e}");
}

#[test]
fn sketched_graph_runs_fast_path_like_reference_and_survives_cnnpack() {
    let mut b = GraphBuilder::new("net", &[3, 15, 13], 11);
    let x = b.input();
    let c1 = b.conv_named("conv1", &x, 8, 3, 2, 1, 1);
    let r1 = b.relu(&c1);
    let c2 = b.conv_named("conv2", &r1, 8, 3, 1, 1, 8);
    let r2 = b.relu(&c2);
    let c3 = b.conv_named("conv3", &r2, 12, 3, 2, 0, 2);
    let f = b.flatten(&c3);
    let y = b.linear_named("fc", &f, 10);
    let g = b.finish(&[&y]).expect("valid graph");
    let opts = SketchOptions {
        bases: 3,
        ..SketchOptions::default()
    };
    let (sk, _) = sketch_graph(&g, &opts).expect("sketches");
    let prepared = cpu_fast::Prepared::new(std::sync::Arc::new(sk.clone()));
    let mut rng = Rng::new(12);
    for batch in [1, 5] {
        let input = rng.normal_tensor(vec![batch, 3, 15, 13], 1.0);
        let want = cpu_reference::run_graph(&sk, &input).expect("reference runs");
        let got = cpu_fast::run_graph(&sk, &input).expect("fast runs");
        assert_close(
            &format!("sketched graph, batch {batch}"),
            &got[0],
            &want[0],
            TOL,
        );
        let got = prepared.run(&input).expect("packed runs");
        assert_close(
            &format!("sketched graph, batch {batch}, packed"),
            &got[0],
            &want[0],
            TOL,
        );
        let avx2 = cnnpack::tuning::CpuOptions {
            avx512: false,
            ..Default::default()
        };
        let got = cpu_fast::Prepared::with_options(std::sync::Arc::new(sk.clone()), &avx2)
            .run(&input)
            .expect("packed runs");
        assert_close(
            &format!("sketched graph, batch {batch}, packed, avx2"),
            &got[0],
            &want[0],
            TOL,
        );
    }
    // .cnnpack round trip keeps the packed arrays bit for bit.
    let bytes = pack_format::to_bytes(&sk).expect("saves");
    let back = pack_format::from_bytes(&bytes).expect("loads");
    assert_eq!(back.nodes, sk.nodes);
}

/// Dense f32 `x Wᵀ` (one vectorised dot product per output), for context in `timing`;
/// built for AVX2 + FMA like the sketch kernel.
fn dense_f32(x: &Tensor, w: &Tensor) -> Tensor {
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    fn dots(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
        for (yo, wr) in y.iter_mut().zip(w.chunks_exact(k)) {
            let mut acc = [0f32; 16];
            let (xc, wc) = (x.chunks_exact(16), wr.chunks_exact(16));
            let tail: f32 = xc
                .remainder()
                .iter()
                .zip(wc.remainder())
                .map(|(a, b)| a * b)
                .sum();
            for (a, b) in xc.zip(wc) {
                for t in 0..16 {
                    acc[t] = a[t].mul_add(b[t], acc[t]);
                }
            }
            *yo = acc.iter().sum::<f32>() + tail;
        }
    }
    let (n, k, o) = (x.shape[0], x.shape[1], w.shape[0]);
    let mut y = vec![0f32; n * o];
    for (xr, yr) in x.data.chunks_exact(k).zip(y.chunks_exact_mut(o)) {
        #[cfg(target_arch = "x86_64")]
        assert!(
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        );
        // SAFETY: AVX2 and FMA were detected just above.
        #[allow(unused_unsafe)]
        unsafe {
            dots(xr, &w.data, k, yr)
        };
    }
    Tensor::new(vec![n, o], y).expect("sizes agree")
}

/// Local timing of the three kernels (not a pass/fail test):
/// `cargo test --test sketch -- --ignored --nocapture timing`.
#[test]
#[ignore]
fn timing() {
    use std::time::Instant;
    let mut rng = Rng::new(10);
    // The machine is shared: report the minimum of several runs on one thread
    // (SKETCH_THREADS overrides), which is the least disturbed by other load.
    let threads = std::env::var("SKETCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    println!("timings: min of 9 runs, {threads} thread(s)");
    let time = |f: &(dyn Fn() -> Tensor + Sync)| {
        pool.install(|| {
            f();
            (0..9)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        })
    };
    for &(n, k, o, m) in &[
        (1usize, 4096usize, 1024usize, 3usize),
        (16, 4096, 1024, 3),
        (1, 800, 500, 2),
        (784, 576, 64, 3), // the im2col matrix of the 64->64 3x3 28x28 conv below
    ] {
        let s = random_sketch(&mut rng, vec![o, k], m, true);
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let plan = AssocPlan::pure(&s, 1);
        let hyb = AssocPlan::new(&s, 1);
        let wd = Weights::Sketch(s.clone()).to_dense().into_owned();
        println!(
            "fc n={n} k={k} o={o} m={m}: masked {:.2} ms, lut {:.2} ms, assoc pure {:.2} ms, assoc hybrid {:.2} ms [{} direct rows, {} flips] (pure tree flips {} vs set bits {} vs dense {}), dense f32 FMA {:.2} ms",
            time(&|| sketch_linear(&x, &s, None)),
            time(&|| sketch_linear_lut(&x, &s, None)),
            time(&|| sketch_linear_assoc_with(&x, &s, &plan, None)),
            time(&|| sketch_linear_assoc_with(&x, &s, &hyb, None)),
            hyb.direct_rows(),
            hyb.tree_flips(),
            plan.tree_flips(),
            plan.direct_set_bits(&s),
            plan.dense_cost(),
            time(&|| dense_f32(&x, &wd)),
        );
    }
    // Where the associative scheme pays: rows that differ from a prototype in ~1% of bits.
    for &(n, k, o, flips) in &[
        (1usize, 4096usize, 1024usize, 40usize),
        (16, 4096, 1024, 40),
    ] {
        let proto: Vec<bool> = (0..k).map(|_| rng.uniform() < 0.5).collect();
        let mut signs = Vec::with_capacity(o * k);
        for _ in 0..o {
            let mut row = proto.clone();
            for _ in 0..flips {
                let i = rng.range(0, k - 1);
                row[i] = !row[i];
            }
            signs.extend(row);
        }
        let scales = (0..o).map(|_| rng.normal()).collect();
        let s = SketchWeights::from_signs(vec![o, k], 1, &signs, scales).expect("sizes");
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let plan = AssocPlan::pure(&s, 1);
        let hyb = AssocPlan::new(&s, 1);
        println!(
            "fc near-duplicate rows n={n} k={k} o={o} m=1 ({flips} flips/row): masked {:.2} ms, lut {:.2} ms, assoc pure {:.2} ms, assoc hybrid {:.2} ms [{} direct rows, {} flips] (pure tree flips {} vs dense {})",
            time(&|| sketch_linear(&x, &s, None)),
            time(&|| sketch_linear_lut(&x, &s, None)),
            time(&|| sketch_linear_assoc_with(&x, &s, &plan, None)),
            time(&|| sketch_linear_assoc_with(&x, &s, &hyb, None)),
            hyb.direct_rows(),
            hyb.tree_flips(),
            plan.tree_flips(),
            plan.dense_cost(),
        );
    }
    for &(n, cin, cout, hw, m) in &[
        (1usize, 64usize, 64usize, 28usize, 3usize),
        (1, 128, 128, 14, 2),
    ] {
        let s = random_sketch(&mut rng, vec![cout, cin, 3, 3], m, true);
        let conv = Conv2d {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 1,
            weight: Weights::Sketch(s.clone()),
            bias: None,
        };
        let x = rng.normal_tensor(vec![n, cin, hw, hw], 1.0);
        let plan = AssocPlan::pure(&s, 1);
        let hyb = AssocPlan::new(&s, 1);
        println!(
            "conv n={n} {cin}->{cout} 3x3 {hw}x{hw} m={m}: masked {:.2} ms, lut {:.2} ms, assoc pure {:.2} ms, assoc hybrid {:.2} ms [{} direct rows, {} flips] (pure tree flips {} vs set bits {} vs dense {})",
            time(&|| sketch_conv(&x, &conv)),
            time(&|| sketch_conv_lut(&x, &conv)),
            time(&|| sketch_conv_assoc_with(&x, &conv, &plan)),
            time(&|| sketch_conv_assoc_with(&x, &conv, &hyb)),
            hyb.direct_rows(),
            hyb.tree_flips(),
            plan.tree_flips(),
            plan.direct_set_bits(&s),
            plan.dense_cost(),
        );
    }
}

/// Fixed work for `perf stat -e cycles:u` comparisons of the masked kernel (cycle
/// counts are robust to the machine's other load where wall time is not).
#[test]
#[ignore]
fn masked_cycles() {
    let mut rng = Rng::new(13);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let s = random_sketch(&mut rng, vec![1024, 4096], 3, true);
    let x = rng.normal_tensor(vec![1, 4096], 1.0);
    let s2 = random_sketch(&mut rng, vec![64, 576], 3, true);
    let x2 = rng.normal_tensor(vec![784, 576], 1.0);
    pool.install(|| {
        for _ in 0..100 {
            std::hint::black_box(sketch_linear(&x, &s, None));
        }
        for _ in 0..10 {
            std::hint::black_box(sketch_linear(&x2, &s2, None));
        }
    });
}

/// LeNet-5 and MNIST test images for the accuracy checks; `None` when absent.
fn lenet5() -> Option<(cnnpack::graph::Graph, cnnpack::data::Dataset)> {
    use cnnpack::data::{Dataset, Preprocess};
    let dir = data_dir()?;
    let model = dir.join("lenet/lenet5_original.onnx");
    if !model.is_file() {
        println!("skipped: {} not found", model.display());
        return None;
    }
    let graph = cnnpack::format::load_model(&model).expect("LeNet-5 imports");
    let pre = Preprocess::from_metadata(&graph.metadata, &graph.input.item_shape)
        .expect("preprocessing metadata");
    let data = Dataset::open(&dir.join("mnist"), &pre, &graph.input.item_shape).expect("MNIST");
    Some((graph, data))
}

/// MNIST top-1 (%) of `g` on the first `n` test images with the fast CPU kernels.
fn top1(g: &cnnpack::graph::Graph, data: &cnnpack::data::Dataset, n: usize) -> f64 {
    use cnnpack::engine::{DeviceKind, Engine};
    let engine = Engine::new(g.clone(), DeviceKind::Cpu).expect("cpu engine");
    cnnpack::eval::evaluate(&engine, data, 250, Some(n), |_| {})
        .expect("evaluates")
        .top1
}

/// LeNet-5 (the DNS paper's Caffe model) with every conv and fc layer sketched
/// (refined, m = 3) stays within 1 point of the dense model's MNIST top-1
/// (first 1000 test images; the full table is `lenet5_sketch_sweep`).
#[test]
fn lenet5_sketched_accuracy() {
    let Some((graph, data)) = lenet5() else {
        return;
    };
    let dense = top1(&graph, &data, 1000);
    let (g, _) = sketch_graph(&graph, &SketchOptions::default()).expect("sketches");
    let sketched = top1(&g, &data, 1000);
    println!("LeNet-5 top-1 on 1000 images: dense {dense:.2}%, refined m=3 {sketched:.2}%");
    assert!(
        sketched >= dense - 1.0,
        "refined m=3 top-1 {sketched}% vs dense {dense}%"
    );
}

/// Direct and refined sketching of LeNet-5 at m = 1..4: bytes, per-layer relative
/// errors and MNIST top-1 on the first 2000 test images (a report, ~1 min).
#[test]
#[ignore]
fn lenet5_sketch_sweep() {
    let Some((graph, data)) = lenet5() else {
        return;
    };
    let dense = top1(&graph, &data, 2000);
    println!("LeNet-5 dense: top-1 {dense:.2}% (first 2000 MNIST test images)");
    for refined in [false, true] {
        for bases in 1..=4 {
            let opts = SketchOptions {
                bases,
                refined,
                ..SketchOptions::default()
            };
            let (g, reports) = sketch_graph(&graph, &opts).expect("sketches");
            let acc = top1(&g, &data, 2000);
            let (before, after): (usize, usize) = reports
                .iter()
                .fold((0, 0), |(b, a), r| (b + r.bytes_before, a + r.bytes_after));
            let errs: Vec<String> = reports
                .iter()
                .map(|r| format!("{} {:.3}", r.name, r.rel_error))
                .collect();
            println!(
                "{} m={bases}: top-1 {acc:.2}%, weights {before} -> {after} bytes ({:.1}x), rel. errors [{}]",
                if refined { "refined" } else { "direct " },
                before as f64 / after as f64,
                errs.join(", ")
            );
        }
    }
}

/// A prepared CPU model (`fast::Prepared`) decodes a sketched conv that it does not
/// pack once and keeps the copy (no process-wide cache); its runs, and the unprepared
/// `run_node` (decoded per call), equal the reference, and a model prepared from changed
/// weights runs the new weights.
#[test]
fn prepared_model_holds_decoded_convs() {
    let mut rng = Rng::new(31);
    let sk = random_sketch(&mut rng, vec![6, 5, 3, 3], 2, true);
    let mut conv = Conv2d {
        kernel: [3, 3],
        stride: [2, 1],
        pads: [1, 0, 1, 1],
        dilation: [1, 1],
        groups: 1,
        weight: Weights::Sketch(sk),
        bias: Some(rng.normal_tensor(vec![6], 1.0)),
    };
    let x = rng.normal_tensor(vec![2, 5, 9, 11], 1.0);
    let graph = |c: &Conv2d| {
        let mut b = GraphBuilder::new("x", &[5, 9, 11], 0);
        let y = b.push("c", Op::Conv(c.clone()), &["x"]);
        std::sync::Arc::new(b.finish(&[&y]).expect("valid graph"))
    };
    let node = |c: &Conv2d| Node {
        name: "c".into(),
        op: Op::Conv(c.clone()),
        inputs: vec!["x".into()],
        output: "y".into(),
    };
    let want = reference_conv(&x, &conv);
    let prepared = cpu_fast::Prepared::new(graph(&conv));
    // 6 output channels fill a 16-channel panel to 38%: not packed, decoded.
    assert_eq!(prepared.decoded_stats(), (1, 6 * 45 * 4), "{prepared:?}");
    for call in ["first", "second"] {
        assert_close(call, &prepared.run(&x).expect("runs").remove(0), &want, TOL);
    }
    let direct = cpu_fast::run_node(&node(&conv), &[&x]).expect("runs");
    assert_close("unprepared", &direct, &want, TOL);
    // Flip every bit: a model prepared from the new weights runs them.
    if let Weights::Sketch(s) = &mut conv.weight {
        let (bits, _) = s.arrays_mut();
        bits.iter_mut().for_each(|w| *w = !*w);
        // Keep the padding bits clear as the encoding requires.
        let k: usize = 5 * 9;
        let wpr = k.div_ceil(32);
        for row in bits.chunks_exact_mut(wpr) {
            row[wpr - 1] &= (1u32 << (k % 32)) - 1;
        }
    }
    let want2 = reference_conv(&x, &conv);
    assert!(
        want2.max_abs_diff(&want) > 1e-3,
        "flipped bits change the output"
    );
    let changed = cpu_fast::Prepared::new(graph(&conv));
    assert_close(
        "changed",
        &changed.run(&x).expect("runs").remove(0),
        &want2,
        TOL,
    );
    assert_close(
        "unprepared, changed",
        &cpu_fast::run_node(&node(&conv), &[&x]).expect("runs"),
        &want2,
        TOL,
    );
}

/// An empty batch gives an empty output on every fc kernel.
#[test]
fn linear_empty_batch() {
    let mut rng = Rng::new(31);
    let s = random_sketch(&mut rng, vec![7, 300], 2, true);
    let bias = rng.normal_tensor(vec![7], 1.0);
    let x = Tensor::zeros(vec![0, 300]);
    for kernel in [FcKernel::Auto, FcKernel::Avx2, FcKernel::Avx512] {
        let y = sketch_linear_with(&x, &s, Some(&bias), kernel);
        assert_eq!(
            (y.shape.as_slice(), y.data.len()),
            (&[0, 7][..], 0),
            "{kernel:?}"
        );
    }
}
