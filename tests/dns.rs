//! Dynamic network surgery and the sparse (CSR) encoding: round trips, mask
//! properties, splicing, and the sparse CPU kernels against the reference.
//! Kernel tolerance: max |fast − ref| ≤ 1e-4 · max(max |ref|, 1e-3) (f32 sums in a
//! different order than the f64 reference).

mod common;
use cnnpack::backend::cpu::fast::Isa;
use cnnpack::backend::cpu::{fast, reference};
use cnnpack::compress::dns::{
    sparsify_graph, surgery, surgery_probability, DnsOptions, SparsePolicy, Surgeon, Thresholds,
};
use cnnpack::graph::{Conv2d, Graph, GraphBuilder, Linear, Op, Rng, Tensor};
use cnnpack::train::{self, BnMode, Masks, Sgd};
use cnnpack::weights::{SparseWeights, Weights};
use common::data_dir;
use std::collections::HashMap;

/// Random tensor with roughly `density` of its entries nonzero (at least one per
/// tensor when density > 0 is tiny is not guaranteed: all-zero rows are a case too).
fn sparse_tensor(rng: &mut Rng, shape: Vec<usize>, density: f32) -> Tensor {
    let mut t = rng.normal_tensor(shape, 1.0);
    for v in &mut t.data {
        if rng.uniform() >= density {
            *v = 0.0;
        }
    }
    t
}

fn check(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    let diff = got.max_abs_diff(want);
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max diff {diff} > {}",
        1e-4 * scale
    );
}

#[test]
fn csr_round_trip_is_exact() {
    let mut rng = Rng::new(3);
    // K = 70_001 > 65535 exercises the u32 index width.
    for (case, shape) in [
        vec![7, 3, 5, 5],
        vec![1, 1, 1, 1],
        vec![13, 97],
        vec![3, 70_001],
        vec![4, 0],
    ]
    .into_iter()
    .enumerate()
    {
        for density in [0.0, 0.01, 0.3, 1.0] {
            let t = sparse_tensor(&mut rng, shape.clone(), density);
            let s = SparseWeights::from_dense(shape.clone(), &t.data).expect("encode");
            assert_eq!(s.dense_data(), t.data, "case {case} density {density}");
            assert_eq!(s.nnz(), t.nonzeros());
            let k: usize = shape[1..].iter().product();
            let w = Weights::Sparse(s.clone());
            assert_eq!(w.encoding(), "sparse");
            assert_eq!(*w.to_dense(), t);
            assert_eq!(w.nonzeros(), t.nonzeros());
            let idx = if k > 65535 { 4 } else { 2 };
            assert_eq!(w.bytes(), 4 * (shape[0] + 1) + (idx + 4) * s.nnz());
            let kinds: Vec<&str> = w.parts().iter().map(|(n, _)| *n).collect();
            assert_eq!(kinds, ["row_ptr", "cols", "values"]);
            w.check().expect("valid");
        }
    }
    // Through a .cnnpack file.
    let mut b = GraphBuilder::new("x", &[2, 9, 9], 5);
    let x = b.input();
    let c = b.conv(&x, 4, 3, 1, 1, 1);
    let f = b.flatten(&c);
    let y = b.linear(&f, 6);
    let g = b.finish(&[&y]).expect("graph");
    let (sg, _) = sparsify_graph(&g, &SparsePolicy::All).expect("sparsify");
    let path = std::env::temp_dir().join(format!("dns_roundtrip_{}.cnnpack", std::process::id()));
    cnnpack::format::save(&sg, &path).expect("save");
    let back = cnnpack::format::load(&path).expect("load");
    let _ = std::fs::remove_file(&path);
    assert_eq!(back, sg);
}

/// DNS then INQ: CSR whose values are power-of-two codes. Every code (zero included,
/// every sign and magnitude, b = 2..5, rows with 0 or many entries, code words split
/// across rows) round-trips through `.cnnpack` exactly; bytes count the code words; a
/// value outside the set, an invalid code or set unused bits are refused.
#[test]
fn sparse_pow2_values_round_trip() {
    use cnnpack::weights::Pow2Weights;
    let mut rng = Rng::new(31);
    for bits in 2..=5u32 {
        let (rows, k) = (7, 45);
        let max_code = 1u32 << bits;
        let codes: Vec<u8> = (0..rows * k)
            .map(|i| {
                if i / k == 3 || rng.uniform() < 0.6 {
                    return 0; // row 3 empty, ~60% zeros elsewhere
                }
                loop {
                    let c = rng.range(1, max_code as usize - 1) as u32;
                    let e = c & ((1 << (bits - 1)) - 1);
                    if e >= 1 && e <= 1 << (bits - 2) {
                        return c as u8;
                    }
                }
            })
            .collect();
        let p = Pow2Weights::from_codes(vec![rows, k], bits, -3, &codes).expect("codes");
        let sp = SparseWeights::from_pow2(&p).expect("sparse pow2");
        assert_eq!(
            sp.dense_data(),
            p.dense_data(),
            "b{bits}: values decode exactly"
        );
        let vc = sp.value_codes().expect("value codes");
        assert_eq!((vc.bits, vc.n1), (bits, -3));
        let w = Weights::Sparse(sp.clone());
        assert_eq!(w.encoding(), "sparse+pow2");
        assert_eq!(
            w.bytes(),
            4 * (rows + 1) + 2 * sp.nnz() + 4 * (sp.nnz() * bits as usize).div_ceil(32),
            "b{bits}: bytes count the code stream, not f32 values"
        );
        let kinds: Vec<&str> = w.parts().iter().map(|(n, _)| *n).collect();
        assert_eq!(kinds, ["row_ptr", "cols", "value_codes"]);
        // Through a file, inside a graph, via sparsify_graph (pow2 layer -> sparse+pow2).
        let mut b = GraphBuilder::new("x", &[k], 1);
        let x = b.input();
        let y = b.linear_named("fc", &x, rows);
        let mut g = b.finish(&[&y]).expect("graph");
        if let Op::Linear(l) = &mut g.nodes[0].op {
            l.weight = Weights::Pow2(p.clone());
        }
        let (sg, report) = sparsify_graph(&g, &SparsePolicy::All).expect("sparsify");
        assert!(report[0].sparse);
        assert_eq!(
            sg.nodes[0].op.weights().expect("w").encoding(),
            "sparse+pow2"
        );
        let path =
            std::env::temp_dir().join(format!("dns_pow2_{}_{bits}.cnnpack", std::process::id()));
        cnnpack::format::save(&sg, &path).expect("save");
        let back = cnnpack::format::load(&path).expect("load");
        assert_eq!(back, sg, "b{bits}: file round trip");
        assert_eq!(
            legacy_value_codes(&sg, bits),
            sg,
            "b{bits}: file from before the code stream"
        );
        let xin = rng.normal_tensor(vec![2, k], 1.0);
        assert_eq!(
            reference::run_node(&back.nodes[0], &[&xin]).expect("ref"),
            reference::run_node(&g.nodes[0], &[&xin]).expect("ref"),
            "b{bits}: same outputs as the pow2 layer"
        );
        // Corrupt the codes in the file's graph: an invalid code, then unused bits.
        for corrupt in 0..2 {
            let mut bad = sg.clone();
            if let Op::Linear(l) = &mut bad.nodes[0].op {
                if let Weights::Sparse(s) = &mut l.weight {
                    let (.., codes) = s.arrays_mut();
                    if corrupt == 0 {
                        codes[0] = (codes[0] & !((1 << bits) - 1)) | (1 << (bits - 1));
                    // -0
                    } else if !(sp.nnz() * bits as usize).is_multiple_of(32) {
                        // Bit 31 of the last word is past the last code.
                        *codes.last_mut().expect("a word") |= 1 << 31;
                    } else {
                        codes.push(1); // a word past the stream
                    }
                }
            }
            cnnpack::format::save(&bad, &path).expect("save");
            let err = cnnpack::format::load(&path).expect_err("corrupt codes are refused");
            assert!(err.to_string().contains("value_codes"), "b{bits}: {err}");
        }
        let _ = std::fs::remove_file(&path);
    }
    // A value that is not in the code set.
    let sp = SparseWeights::from_dense(vec![1, 3], &[0.5, 0.0, 0.3]).expect("csr");
    assert!(
        sp.clone().with_value_codes(3, -1).is_err(),
        "0.3 is no power of two"
    );
    let sp = SparseWeights::from_dense(vec![1, 3], &[0.5, 0.0, -0.25]).expect("csr");
    assert!(sp.clone().with_value_codes(3, -1).is_ok());
    assert!(
        sp.with_value_codes(2, -1).is_err(),
        "ternary {{0, ±2^-1}} lacks 0.25"
    );
}

/// `g` (one sparse+pow2 layer "fc" with `bits`-bit value codes) written as a build
/// before the code stream wrote it (no `packing` in the header, `floor(32 / bits)` codes
/// per word), then loaded by this build.
fn legacy_value_codes(g: &Graph, bits: u32) -> Graph {
    use cnnpack::format::cnnpack::{disassemble, RawTensor};
    use cnnpack::weights::bitstream;
    let Some(Weights::Sparse(sp)) = g.nodes[0].op.weights() else {
        panic!("a sparse layer")
    };
    let bytes = cnnpack::format::to_bytes(g).expect("to_bytes");
    let (meta, tensors) = disassemble(&bytes).expect("disassemble");
    let json = meta["graph"].replace(",\"packing\":\"Stream\"", "");
    assert_ne!(
        &json, &meta["graph"],
        "new files say how their codes are packed"
    );
    let per_word = (32 / bits) as usize;
    let mut words = vec![0u32; sp.nnz().div_ceil(per_word)];
    for i in 0..sp.nnz() {
        words[i / per_word] |=
            bitstream::get(sp.codes(), bits, i) << (bits as usize * (i % per_word));
    }
    let tensors: Vec<RawTensor<'_>> = tensors
        .into_iter()
        .map(|t| {
            if t.name == "fc.value_codes" {
                RawTensor {
                    shape: vec![words.len()],
                    data: words
                        .iter()
                        .flat_map(|w| w.to_le_bytes())
                        .collect::<Vec<u8>>()
                        .into(),
                    ..t
                }
            } else {
                t
            }
        })
        .collect();
    let old = common::version_1_file(&json, &tensors);
    cnnpack::format::from_bytes(&old).expect("a version-1 file loads")
}

#[test]
fn check_rejects_malformed_csr() {
    let shape = vec![2, 4];
    assert!(SparseWeights::new(shape.clone(), vec![0, 1, 2], vec![0, 3], vec![1.0, 2.0]).is_ok());
    // Unsorted indices within a row.
    assert!(SparseWeights::new(shape.clone(), vec![0, 2, 2], vec![3, 1], vec![1.0, 2.0]).is_err());
    // Duplicate index.
    assert!(SparseWeights::new(shape.clone(), vec![0, 2, 2], vec![1, 1], vec![1.0, 2.0]).is_err());
    // Index out of range.
    assert!(SparseWeights::new(shape.clone(), vec![0, 1, 2], vec![0, 4], vec![1.0, 2.0]).is_err());
    // Decreasing row pointers.
    assert!(SparseWeights::new(shape.clone(), vec![0, 2, 1], vec![0, 1], vec![1.0, 2.0]).is_err());
    // row_ptr[rows] != nnz; wrong row_ptr length; cols/values mismatch.
    assert!(SparseWeights::new(shape.clone(), vec![0, 1, 1], vec![0, 1], vec![1.0, 2.0]).is_err());
    assert!(SparseWeights::new(shape.clone(), vec![0, 2], vec![0, 1], vec![1.0, 2.0]).is_err());
    assert!(SparseWeights::new(shape, vec![0, 1, 2], vec![0], vec![1.0, 2.0]).is_err());
}

/// `dense` with its (dense) weight stored as CSR.
fn sparse_twin(dense: &Conv2d) -> Conv2d {
    let Weights::Dense(wt) = &dense.weight else {
        panic!("sparse_twin takes a dense conv");
    };
    let mut sparse = dense.clone();
    sparse.weight =
        Weights::Sparse(SparseWeights::from_dense(wt.shape.clone(), &wt.data).expect("encodes"));
    sparse
}

const DENSITIES: [f32; 6] = [0.01, 0.05, 0.1, 0.3, 0.5, 1.0];

#[test]
fn sparse_conv_matches_reference() {
    let mut rng = Rng::new(11);
    for case in 0..48 {
        let density = DENSITIES[case % DENSITIES.len()];
        let depthwise = case % 5 == 0;
        let groups = if depthwise {
            rng.range(2, 6)
        } else {
            [1, 2, 3][rng.range(0, 2)]
        };
        let cin_g = if depthwise { 1 } else { rng.range(1, 6) };
        let cout = groups * if depthwise { 1 } else { rng.range(1, 9) };
        let k = [1, 3, 5][rng.range(0, 2)];
        let kw = if case % 4 == 1 { k.max(2) - 1 } else { k };
        let stride = if case % 3 == 0 { 2 } else { 1 };
        let dilation = if case % 7 == 3 { 2 } else { 1 };
        let pads = [
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
        ];
        let h = rng.range(dilation * (k - 1) + 1, dilation * (k - 1) + 12);
        let w = rng.range(dilation * (kw - 1) + 1, dilation * (kw - 1) + 14);
        let n = [1, 5][case % 2];
        let wt = sparse_tensor(&mut rng, vec![cout, cin_g, k, kw], density);
        let dense = Conv2d {
            kernel: [k, kw],
            stride: [stride; 2],
            pads,
            dilation: [dilation; 2],
            groups,
            weight: Weights::Dense(wt.clone()),
            bias: (case % 3 != 2).then(|| rng.normal_tensor(vec![cout], 1.0)),
        };
        let sparse = sparse_twin(&dense);
        let x = rng.normal_tensor(vec![n, cin_g * groups, h, w], 1.0);
        let want = reference::conv2d(&x, &dense);
        let got = fast::sparse::sparse_conv(&x, &sparse);
        check(
            &got,
            &want,
            &format!("case {case}: density {density} n{n} g{groups} cout{cout} k{k}x{kw} s{stride} d{dilation} p{pads:?} {h}x{w}"),
        );
    }
}

#[test]
fn sparse_linear_matches_reference() {
    let mut rng = Rng::new(12);
    for case in 0..24 {
        let density = DENSITIES[case % DENSITIES.len()];
        let (out, k) = (rng.range(1, 150), rng.range(1, 301) | 1);
        // Several 8- or 16-item panels of the SpMM, a partial last one, 1 to 3 row
        // blocks.
        let n = [1, 5, 2, 8, 9, 17, 16, 33][case % 8];
        let wt = sparse_tensor(&mut rng, vec![out, k], density);
        let bias = (case % 4 != 0).then(|| rng.normal_tensor(vec![out], 1.0));
        let dense = Linear {
            weight: Weights::Dense(wt.clone()),
            bias: bias.clone(),
        };
        let s = SparseWeights::from_dense(wt.shape.clone(), &wt.data).unwrap();
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let want = reference::linear(&x, &dense);
        for isa in Isa::available() {
            let got = fast::sparse::sparse_linear_isa(&x, &s, bias.as_ref(), isa);
            check(
                &got,
                &want,
                &format!(
                    "case {case}: density {density} n{n} {k}->{out} {}",
                    isa.name()
                ),
            );
        }
    }
}

#[test]
fn masks_obey_the_thresholds() {
    let mut rng = Rng::new(21);
    for c in [-1.0, 0.0, 1.0, 2.5] {
        let w = rng.normal_tensor(vec![4000], 1.0).data;
        let th = Thresholds::from_weights(&w, c);
        let mean = w.iter().map(|v| v.abs() as f64).sum::<f64>() / w.len() as f64;
        let std = (w
            .iter()
            .map(|v| (v.abs() as f64 - mean).powi(2))
            .sum::<f64>()
            / w.len() as f64)
            .sqrt();
        let t = (mean + c * std).max(0.0);
        assert!((th.a as f64 - 0.9 * t).abs() < 1e-6 && (th.b as f64 - 1.1 * t).abs() < 1e-6);
        let before: Vec<bool> = (0..w.len()).map(|_| rng.uniform() < 0.5).collect();
        let mut mask = before.clone();
        let (pruned, spliced) = surgery(&w, &mut mask, th);
        let (mut p, mut s, mut in_band) = (0, 0, 0);
        for i in 0..w.len() {
            let a = w[i].abs();
            if a < th.a {
                assert!(!mask[i], "|w| {a} < a {} must be pruned", th.a);
                p += before[i] as usize;
            } else if a >= th.b {
                assert!(mask[i], "|w| {a} >= b {} must be kept", th.b);
                s += !before[i] as usize;
            } else {
                assert_eq!(mask[i], before[i], "|w| {a} in [a, b) must keep its mask");
                in_band += 1;
            }
        }
        assert_eq!((pruned, spliced), (p, s));
        if c >= 0.0 {
            assert!(
                in_band > 0,
                "c = {c}: the hysteresis band holds some entries"
            );
        }
    }
    assert_eq!(surgery_probability(0, 1e-4, 1.0), 1.0);
    assert!((surgery_probability(10_000, 1e-4, 1.0) - 0.5).abs() < 1e-12);
}

/// `--density`: the first surgery from all-ones masks keeps exactly the requested
/// fraction (rounded up) when magnitudes are distinct, and the implied c gives back the
/// same thresholds through `from_weights`.
#[test]
fn density_thresholds_keep_the_requested_fraction() {
    let mut rng = Rng::new(5);
    for (n, density) in [
        (4000, 0.02),
        (4000, 0.5),
        (997, 0.013),
        (10, 1.0),
        (10, 0.01),
    ] {
        let w = rng.normal_tensor(vec![n], 0.1).data;
        let th = Thresholds::for_density(&w, density);
        let mut mask = vec![true; n];
        surgery(&w, &mut mask, th);
        let kept = mask.iter().filter(|m| **m).count();
        let want = ((density * n as f64).ceil() as usize).clamp(1, n);
        assert_eq!(kept, want, "n {n} density {density}");
        let again = Thresholds::from_weights(&w, th.implied_c(&w));
        assert!(
            (again.a - th.a).abs() <= 1e-5 * th.a.abs().max(1e-3),
            "implied c reproduces a: {} vs {}",
            again.a,
            th.a
        );
    }
    let mut b = GraphBuilder::new("x", &[4], 1);
    let x = b.input();
    let y = b.linear_named("fc", &x, 3);
    let graph = b.finish(&[&y]).expect("graph");
    let mut opts = DnsOptions::default();
    opts.density_per_layer.insert("fc".into(), 1.5);
    assert!(
        Surgeon::new(&graph, &opts).is_err(),
        "density > 1 is refused"
    );
    opts.density_per_layer.insert("fc".into(), 0.5);
    opts.c_per_layer.insert("fc".into(), 1.0);
    assert!(
        Surgeon::new(&graph, &opts).is_err(),
        "c and density together are refused"
    );
    opts.c_per_layer.clear();
    let s = Surgeon::new(&graph, &opts).unwrap();
    let w = graph.nodes[0].op.weights().expect("fc weights").to_dense();
    assert_eq!(s.thresholds["fc"], Thresholds::for_density(&w.data, 0.5));
}

/// A weight pruned at the start grows through the updates (which reach W, not W⊙T)
/// past b and is spliced back in.
#[test]
fn a_pruned_connection_can_return() {
    let mut b = GraphBuilder::new("x", &[2], 1);
    let x = b.input();
    let y = b.linear_named("fc", &x, 2);
    let mut g = b.finish(&[&y]).expect("graph");
    if let Op::Linear(l) = &mut g.nodes[0].op {
        l.weight = Weights::Dense(Tensor {
            shape: vec![2, 2],
            data: vec![1.0, 0.01, 0.01, 1.0],
        });
    }
    let opts = DnsOptions {
        c: 0.0,
        gamma: 0.0, // surgery at every iteration
        ..DnsOptions::default()
    };
    let mut surgeon = Surgeon::new(&g, &opts).expect("surgeon");
    let th = surgeon.thresholds["fc"];
    let mut masks: Masks = surgeon.start(&g);
    assert_eq!(
        masks.forward["fc"],
        vec![true, false, false, true],
        "0.01 < a = {}",
        th.a
    );
    // Input (0, 1) labelled class 0: dL/dW[0][1] = (p0 − 1)·1 < 0, so W[0][1] grows.
    let xb = Tensor {
        shape: vec![4, 2],
        data: vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
    };
    let labels = [0, 0, 0, 0];
    let mut sgd = Sgd::new(0.0, 0.0);
    let mut returned_at = None;
    for iter in 0..200 {
        let cache = train::forward(&g, &xb, BnMode::Train, &masks.forward).expect("forward");
        let (_, dl) = train::softmax_cross_entropy(cache.logits(), &labels).expect("loss");
        let (grads, _) = train::backward(&g, &cache, dl, false).expect("backward");
        sgd.step(&mut g, &grads, &masks, 0.5).expect("step");
        surgeon.step(&g, &mut masks, iter);
        let w01 = g.nodes[0].op.weights().unwrap().to_dense().data[1];
        if masks.forward["fc"][1] {
            assert!(w01 >= th.b, "spliced only at |w| >= b: {w01} vs {}", th.b);
            returned_at = Some(iter);
            break;
        }
        assert!(w01 < th.b);
    }
    assert!(returned_at.is_some(), "the pruned weight never returned");
}

#[test]
fn dns_prunes_a_small_net_end_to_end() {
    use cnnpack::data::{Dataset, Preprocess};
    use std::collections::BTreeMap;
    let mut rng = Rng::new(5);
    let (n, side) = (256, 8);
    let mut pixels = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.range(0, 1);
        for r in 0..side {
            for _ in 0..side {
                let base = if r * 2 / side == class { 160 } else { 40 };
                pixels.push((base + rng.range(0, 80)) as u8);
            }
        }
        labels.push(class as u8);
    }
    let preprocess = Preprocess::from_metadata(
        &BTreeMap::from([("preprocess.scale".to_string(), "0.00390625".to_string())]),
        &[1, side, side],
    )
    .expect("preprocess");
    let ds = Dataset::Idx {
        pixels,
        labels,
        rows: side,
        cols: side,
        preprocess,
        item_shape: vec![1, side, side],
    };
    let mut b = GraphBuilder::new("x", &[1, side, side], 3);
    let x = b.input();
    let c = b.conv(&x, 8, 3, 1, 1, 1);
    let r = b.relu(&c);
    let f = b.flatten(&r);
    let y = b.linear(&f, 2);
    let g = b.finish(&[&y]).expect("graph");
    let topts = train::TrainOptions {
        epochs: 3,
        batch: 16,
        ..Default::default()
    };
    let opts = DnsOptions {
        c: 1.0,
        iter_stop: 30,
        policy: SparsePolicy::All,
        ..DnsOptions::default()
    };
    let mut seen = 0;
    let (out, report, stats) =
        cnnpack::compress::dns::dns(&g, &ds, Some(&ds), &topts, &opts, |_| seen += 1).expect("dns");
    assert_eq!(seen, 48);
    assert!(stats.last().unwrap().test_acc.unwrap() > 0.9, "{stats:?}");
    for r in &report {
        assert!(r.sparse && r.density() < 0.5, "{r:?}");
    }
    // The sparse graph computes what the masked dense one does.
    let xb = ds.batch(0, 5).unwrap().0;
    let ys = fast::run_graph(&out, &xb).unwrap().remove(0);
    let yr = reference::run_graph(&out, &xb).unwrap().remove(0);
    check(&ys, &yr, "dns output");
    let prepared = fast::Prepared::new(std::sync::Arc::new(out.clone()));
    check(
        &prepared.run(&xb).unwrap()[0],
        &yr,
        "dns output, packed convs",
    );
}

#[test]
fn released_sparse_lenet_loads_with_paper_densities() {
    let Some(dir) = data_dir() else { return };
    let path = dir.join("lenet/lenet5_sparse.onnx");
    if !path.is_file() {
        println!("skipped: {} missing", path.display());
        return;
    }
    let g = cnnpack::format::load_model(&path).expect("load");
    let (sg, report) = sparsify_graph(&g, &SparsePolicy::All).expect("sparsify");
    let nnz: Vec<usize> = report.iter().map(|r| r.nonzeros).collect();
    assert_eq!(nnz, [72, 770, 2920, 215]);
    let mut rng = Rng::new(9);
    let x = rng.normal_tensor(vec![3, 1, 28, 28], 1.0);
    let want = reference::run_graph(&g, &x).unwrap().remove(0);
    let got = fast::run_graph(&sg, &x).unwrap().remove(0);
    check(&got, &want, "sparse lenet");
    let prepared = fast::Prepared::new(std::sync::Arc::new(sg.clone()));
    check(
        &prepared.run(&x).unwrap()[0],
        &want,
        "sparse lenet, packed convs",
    );
}

/// Where dense beats sparse on this CPU. Run with
/// `cargo test --release --test dns sparse_dense_crossover -- --ignored --nocapture`.
#[test]
#[ignore]
fn sparse_dense_crossover() {
    use std::time::Instant;
    let mut rng = Rng::new(1);
    let best = |f: &mut dyn FnMut()| {
        f();
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::MAX, f64::min)
    };
    let x = rng.normal_tensor(vec![1, 9216], 1.0);
    for d in [0.01f32, 0.05, 0.1, 0.2, 0.3, 0.5] {
        let wt = sparse_tensor(&mut rng, vec![4096, 9216], d);
        let s = SparseWeights::from_dense(wt.shape.clone(), &wt.data).unwrap();
        let dense = Linear {
            weight: Weights::Dense(wt),
            bias: None,
        };
        let td = best(&mut || drop(fast::linear(&x, &dense)));
        let ts = best(&mut || drop(fast::sparse::sparse_linear(&x, &s, None)));
        println!("fc 9216->4096 batch 1 density {d}: dense {td:.2} ms sparse {ts:.2} ms");
    }
    let x = rng.normal_tensor(vec![1, 64, 56, 56], 1.0);
    for d in [0.01f32, 0.05, 0.1, 0.2, 0.3, 0.5] {
        let wt = sparse_tensor(&mut rng, vec![64, 64, 3, 3], d);
        let dense = Conv2d {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 1,
            weight: Weights::Dense(wt.clone()),
            bias: None,
        };
        let sparse = sparse_twin(&dense);
        let td = best(&mut || drop(fast::conv2d(&x, &dense)));
        let ts = best(&mut || drop(fast::sparse::sparse_conv(&x, &sparse)));
        println!("conv 3x3 64->64 56x56 batch 1 density {d}: dense {td:.2} ms sparse {ts:.2} ms");
    }
    let _ = HashMap::<u8, u8>::new();
}

/// The WGSL sparse kernels against the reference on the dense reconstruction: graphs of
/// one sparse conv (random geometry, groups incl. depthwise, stride 2, padding) followed
/// by a sparse fc, at batch 1 and 5. Skipped without an adapter (a failure under
/// CNNPACK_REQUIRE_GPU=1).
#[test]
fn gpu_sparse_kernels_match_reference() {
    use cnnpack::backend::gpu::GpuModel;
    let Some(ctx) = common::gpu() else { return };
    let mut rng = Rng::new(31);
    for case in 0..6 {
        let density = DENSITIES[case];
        let depthwise = case == 2;
        let groups = if depthwise { 6 } else { [1, 2, 3][case % 3] };
        let cin = if depthwise {
            6
        } else {
            groups * rng.range(1, 4)
        };
        let cout = if depthwise {
            6
        } else {
            groups * rng.range(1, 5)
        };
        let k = [3, 5, 1][case % 3];
        let stride = 1 + case % 2;
        let pad = case % 3;
        let side = rng.range(k + 2, k + 10) | 1;
        let mut b = GraphBuilder::new("x", &[cin, side, side], case as u64);
        let x = b.input();
        let c = b.conv(&x, cout, k, stride, pad, groups);
        let f = b.flatten(&c);
        let y = b.linear(&f, 7);
        let mut g = b.finish(&[&y]).expect("graph");
        for node in &mut g.nodes {
            let (w, bias) = match &mut node.op {
                Op::Conv(c) => (&mut c.weight, &mut c.bias),
                Op::Linear(l) => (&mut l.weight, &mut l.bias),
                _ => continue,
            };
            let shape = w.shape().to_vec();
            *w = Weights::Dense(sparse_tensor(&mut rng, shape, density));
            if let Some(bb) = bias {
                *bb = rng.normal_tensor(bb.shape.clone(), 1.0);
            }
        }
        let (sg, _) = sparsify_graph(&g, &SparsePolicy::All).expect("sparsify");
        for n in [1, 5] {
            let xb = rng.normal_tensor(vec![n, cin, side, side], 1.0);
            let want = reference::run_graph(&g, &xb).unwrap().remove(0);
            // The CSR kernels themselves: `Auto` would decode convs on lavapipe.
            let native = cnnpack::backend::gpu::GpuOptions {
                compressed_conv: cnnpack::backend::gpu::CompressedConv::Native,
                ..Default::default()
            };
            let model = GpuModel::with_options(ctx.clone(), &sg, n, native).expect("gpu model");
            let got = model.run(&xb).expect("gpu run").remove(0);
            check(
                &got,
                &want,
                &format!(
                    "gpu case {case} density {density} batch {n} g{groups} k{k} s{stride} p{pad}"
                ),
            );
        }
    }
}

/// The stride-1 flat kernel, the row kernel and the dispatch (sparse below the
/// crossover density, dense-decoded above it) all match the reference on random
/// stride-1 shapes with odd sizes, padding, dilation, groups, batch 1, 5 and 9 and
/// densities from 1% to 100%.
#[test]
fn sparse_conv_paths_and_dispatch_match_reference() {
    let mut rng = Rng::new(21);
    let densities = [0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 1.0];
    for case in 0..42 {
        let density = densities[case % densities.len()];
        let groups = [1, 1, 2, 3][rng.range(0, 3)];
        let cin_g = rng.range(1, 7);
        let cout = groups * rng.range(1, 7);
        let (kh, kw) = ([1, 3, 5][rng.range(0, 2)], [1, 2, 3][rng.range(0, 2)]);
        let dilation = if case % 5 == 2 { 2 } else { 1 };
        let pads = [
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
        ];
        let h = rng.range(dilation * (kh - 1) + 1, dilation * (kh - 1) + 15);
        let w = rng.range(dilation * (kw - 1) + 1, dilation * (kw - 1) + 71);
        let n = [1, 5, 9][case % 3];
        let wt = sparse_tensor(&mut rng, vec![cout, cin_g, kh, kw], density);
        let dense = Conv2d {
            kernel: [kh, kw],
            stride: [1, 1],
            pads,
            dilation: [dilation; 2],
            groups,
            weight: Weights::Dense(wt.clone()),
            bias: (case % 3 != 2).then(|| rng.normal_tensor(vec![cout], 1.0)),
        };
        let s = SparseWeights::from_dense(wt.shape.clone(), &wt.data).expect("encodes");
        let mut sparse = dense.clone();
        sparse.weight = Weights::Sparse(s.clone());
        let x = rng.normal_tensor(vec![n, cin_g * groups, h, w], 1.0);
        let want = reference::conv2d(&x, &dense);
        let what = format!(
            "case {case}: density {density} n{n} g{groups} cout{cout} k{kh}x{kw} d{dilation} p{pads:?} {h}x{w}"
        );
        check(&fast::sparse::sparse_conv(&x, &sparse), &want, &what);
        check(
            &fast::sparse::sparse_conv_rows(&x, &sparse, &s),
            &want,
            &format!("{what} rows"),
        );
        let node = cnnpack::graph::Node {
            name: "c".into(),
            op: Op::Conv(sparse),
            inputs: vec!["x".into()],
            output: "y".into(),
        };
        for isa in Isa::available() {
            let got = fast::run_node_isa(&node, &[&x], isa).expect("runs");
            check(&got, &want, &format!("{what} dispatch {}", isa.name()));
        }
    }
}

/// Wide kernels and dilations on rows that the AVX-512 flat kernel pads to whole cache
/// lines (16 floats), so that its weights fall into several shift groups, some of them
/// past a line (dilation 9, kx 2: 18 floats, shift 2): the shifted sums must land on
/// the right positions. Other CPUs run the same shapes on their own kernel.
#[test]
fn sparse_conv_shift_groups_match_reference() {
    let mut rng = Rng::new(29);
    for case in 0..12 {
        let kw = [3, 5, 7, 2][case % 4];
        let kh = [1, 3][case % 2];
        let dilation = [1, 5, 9, 17, 3, 7][case % 6];
        let pads = [kh / 2, rng.range(0, 3), kh / 2, rng.range(0, 3)];
        // Padded widths of 30-64 floats: most round up to 32, 48 or 64.
        let reach = dilation * (kw - 1) + 1;
        let w = rng.range(
            reach.max(30 - pads[1] - pads[3]),
            reach.max(64 - pads[1] - pads[3]) + 1,
        );
        let h = rng.range(dilation * (kh - 1) + 1, dilation * (kh - 1) + 6);
        let (cin_g, cout) = (rng.range(1, 20), rng.range(1, 10));
        let case_ = SparseConvCase {
            stride: [1, 1],
            n: [1, 2, 3][case % 3],
            groups: 1,
            cin_g,
            cout,
            kernel: [kh, kw],
            pads,
            dilation,
            hw: [h, w],
            density: 0.3,
            bias: true,
        };
        check_sparse_conv(&mut rng, case_, &format!("case {case}"));
    }
}

/// Small maps (at most 64 flat positions per image) at batch 2 and up, which the AVX-512
/// flat kernel runs with the whole batch in one array, images innermost: 8 and 16
/// images (offsets on half or whole cache lines, shift groups) and other counts
/// (unaligned), with padding, dilation and groups.
#[test]
fn sparse_conv_small_maps_batched_match_reference() {
    let mut rng = Rng::new(31);
    for case in 0..16 {
        let n = [8, 16, 2, 3, 5, 8, 24, 9][case % 8];
        let (kh, kw) = [(3, 3), (1, 1), (5, 3), (3, 1)][case % 4];
        let dilation = if case % 5 == 3 { 2 } else { 1 };
        let pads = [kh / 2, kw / 2, rng.range(0, kh / 2 + 1), kw / 2];
        let h = rng.range(dilation * (kh - 1) + 1, dilation * (kh - 1) + 6);
        let w = rng.range(dilation * (kw - 1) + 1, dilation * (kw - 1) + 6);
        let groups = if case % 6 == 4 { 2 } else { 1 };
        let cin_g = rng.range(1, 40);
        let cout = groups * rng.range(1, 12);
        let case_ = SparseConvCase {
            stride: [1, 1],
            n,
            groups,
            cin_g,
            cout,
            kernel: [kh, kw],
            pads,
            dilation,
            hw: [h, w],
            density: [0.3, 0.05, 0.6][case % 3],
            bias: case % 4 != 1,
        };
        check_sparse_conv(&mut rng, case_, &format!("case {case}"));
    }
}

/// Strided convs, which the flat kernel reads from the input split into stride phases:
/// ResNet's 7x7 / 2 stem and 3x3 / 2 and 1x1 / 2 downsampling, AlexNet's 11x11 / 4 stem
/// (small), unequal strides, stride with dilation, odd sizes and padding.
#[test]
fn sparse_conv_strided_matches_reference() {
    let mut rng = Rng::new(37);
    let shapes = [
        ([7, 7], [2, 2], 1),
        ([3, 3], [2, 2], 1),
        ([1, 1], [2, 2], 1),
        ([11, 11], [4, 4], 1),
        ([3, 3], [2, 1], 1),
        ([1, 3], [1, 3], 1),
        ([3, 3], [2, 2], 2),
        ([5, 2], [3, 2], 1),
    ];
    for (case, &(kernel, stride, dilation)) in shapes.iter().cycle().take(24).enumerate() {
        let [kh, kw] = kernel;
        let pads = [
            rng.range(0, kh / 2 + 1),
            rng.range(0, kw / 2 + 1),
            rng.range(0, kh / 2 + 1),
            rng.range(0, kw / 2 + 1),
        ];
        let (rh, rw) = (dilation * (kh - 1) + 1, dilation * (kw - 1) + 1);
        let case_ = SparseConvCase {
            stride,
            n: [1, 2, 5][case % 3],
            groups: if case % 5 == 4 { 2 } else { 1 },
            cin_g: rng.range(1, 12),
            cout: 2 * rng.range(1, 6),
            kernel,
            pads,
            dilation,
            hw: [rng.range(rh, rh + 20), rng.range(rw, rw + 30)],
            density: [0.3, 0.1, 0.6][case % 3],
            bias: case % 4 != 3,
        };
        check_sparse_conv(&mut rng, case_, &format!("case {case}"));
    }
}

/// Many input channels, so the flat kernel splits them into several L1-sized chunks
/// (a 3x3 tile over a 30-wide input reads ~130 floats per channel: ~31 channels per
/// 16 KiB chunk), with rows whose stored weights miss whole chunks at 2% density.
#[test]
fn sparse_conv_with_many_input_channels_matches_reference() {
    let mut rng = Rng::new(23);
    for case in 0..8 {
        let density = [0.02, 0.3, 0.1, 0.5][case % 4];
        let groups = if case == 5 { 2 } else { 1 };
        let cin_g = rng.range(40, 130);
        let cout = groups * rng.range(1, 12);
        let (kh, kw) = ([3, 1, 5][case % 3], [3, 3, 1][case % 3]);
        let pads = [kh / 2, kw / 2, kh / 2, kw / 2];
        let (h, w) = (rng.range(kh, 20), rng.range(kw + 8, 40));
        let case_ = SparseConvCase {
            stride: [1, 1],
            n: [1, 8, 11][case % 3],
            groups,
            cin_g,
            cout,
            kernel: [kh, kw],
            pads,
            dilation: 1,
            hw: [h, w],
            density,
            bias: case % 3 != 2,
        };
        check_sparse_conv(&mut rng, case_, &format!("case {case}"));
    }
}

/// One sparse conv for `check_sparse_conv`.
struct SparseConvCase {
    n: usize,
    stride: [usize; 2],
    groups: usize,
    /// Input channels per group.
    cin_g: usize,
    cout: usize,
    kernel: [usize; 2],
    pads: [usize; 4],
    dilation: usize,
    hw: [usize; 2],
    density: f32,
    bias: bool,
}

/// `sparse_conv` on random weights of the case's density (a random bias when it has
/// one) and a random input, against the reference, and again with the ReLU fused;
/// `what` and the shape name a failure.
fn check_sparse_conv(rng: &mut Rng, c: SparseConvCase, what: &str) {
    let [kh, kw] = c.kernel;
    let wt = sparse_tensor(rng, vec![c.cout, c.cin_g, kh, kw], c.density);
    let dense = Conv2d {
        kernel: c.kernel,
        stride: c.stride,
        pads: c.pads,
        dilation: [c.dilation; 2],
        groups: c.groups,
        weight: Weights::Dense(wt),
        bias: c.bias.then(|| rng.normal_tensor(vec![c.cout], 1.0)),
    };
    let sparse = sparse_twin(&dense);
    let [h, w] = c.hw;
    let x = rng.normal_tensor(vec![c.n, c.cin_g * c.groups, h, w], 1.0);
    let want = reference::conv2d(&x, &dense);
    let what = format!(
        "{what}: n{} g{} cin{} cout{} k{kh}x{kw} s{:?} d{} p{:?} {h}x{w} density {}",
        c.n, c.groups, c.cin_g, c.cout, c.stride, c.dilation, c.pads, c.density
    );
    // The ReLU fused into the stores, too; on every instruction set this CPU has.
    let mut want_relu = want.clone();
    want_relu.data.iter_mut().for_each(|v| *v = v.max(0.0));
    for isa in Isa::available() {
        let what = format!("{what} {}", isa.name());
        let got = fast::sparse::sparse_conv_isa(&x, &sparse, false, isa);
        check(&got, &want, &what);
        let got = fast::sparse::sparse_conv_isa(&x, &sparse, true, isa);
        check(&got, &want_relu, &format!("{what} relu"));
    }
}

/// A 0-output-row / all-zero-row layer and a big K (u32 indices) through the SpMV.
#[test]
fn sparse_linear_wide_indices_and_empty_rows() {
    let mut rng = Rng::new(22);
    let k = 70_001;
    for (n, density) in [(1, 0.001), (3, 0.002), (1, 0.0), (9, 0.002)] {
        let wt = sparse_tensor(&mut rng, vec![9, k], density);
        let s = SparseWeights::from_dense(wt.shape.clone(), &wt.data).expect("encodes");
        assert!(s.wide());
        let dense = Linear {
            weight: Weights::Dense(wt.clone()),
            bias: None,
        };
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let want = reference::linear(&x, &dense);
        for isa in Isa::available() {
            let got = fast::sparse::sparse_linear_isa(&x, &s, None, isa);
            check(
                &got,
                &want,
                &format!("wide n{n} density {density} {}", isa.name()),
            );
        }
    }
}

/// Which sparse convs the executor runs with the CSR kernel: up to the crossover density
/// (a lower one for strided convs); denser layers go through the dense path, with the
/// same results.
#[test]
fn executor_routes_sparse_convs_by_stride_and_density() {
    use cnnpack::backend::cpu::select::{runs_csr, CONV_CROSSOVER, STRIDED_CONV_CROSSOVER};
    let mut rng = Rng::new(77);
    for (stride, density) in [(1, 0.2), (1, 0.9), (2, 0.1), (2, 0.5), (4, 0.05)] {
        let t = sparse_tensor(&mut rng, vec![6, 3, 3, 3], density);
        let w = SparseWeights::from_dense(t.shape.clone(), &t.data).expect("csr");
        let conv = Conv2d {
            kernel: [3, 3],
            stride: [stride, stride],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 1,
            weight: Weights::Sparse(w.clone()),
            bias: Some(rng.normal_tensor(vec![6], 1.0)),
        };
        let crossover = if stride == 1 {
            CONV_CROSSOVER
        } else {
            STRIDED_CONV_CROSSOVER
        };
        let expect = w.density() <= crossover;
        assert_eq!(runs_csr(&conv), expect, "stride {stride} density {density}");
        let x = rng.normal_tensor(vec![2, 3, 11, 9], 1.0);
        let node = cnnpack::graph::Node {
            name: "c".into(),
            op: Op::Conv(conv.clone()),
            inputs: vec!["x".into()],
            output: "y".into(),
        };
        let got = fast::run_node(&node, &[&x]).expect("fast");
        let want = reference::conv2d(&x, &conv);
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        assert!(
            got.max_abs_diff(&want) <= 1e-4 * scale,
            "stride {stride} density {density}"
        );
    }
}

/// `sparse_fc` (vector CSR: several lanes per row, a reduction per row) against the
/// reference on the dense reconstruction, with the lanes per row the host picks (1 on
/// lavapipe); `gpu_sparse_fc_forced_lane_widths_match_reference` forces each width
/// (`GpuOptions::sparse_fc_lanes`) on the same cases. On a GPU the picked width is about half the mean
/// entries per row for these small row counts, so the cases step the mean through
/// every width from 1 to 256 lanes (~3, ~5, ~8, ~17, ~38, ~78, ~150, ~250, ~560, ~2000
/// entries per row), plus 1% density with a long and a short K. Rows are not multiples
/// of the rows per workgroup, K is odd, every fifth row is empty and row 1 is full
/// (more entries than lanes x 4 unrolled loads), batch 1 and 3, with and without a
/// fused ReLU. Skipped without an adapter (a failure under `CNNPACK_REQUIRE_GPU=1`).
#[test]
fn gpu_sparse_fc_lane_widths_match_reference() {
    let Some(ctx) = common::gpu() else { return };
    check_sparse_fc_lanes(&ctx, None);
}

/// `gpu_sparse_fc_lane_widths_match_reference`'s cases with each lane width from 1 to
/// 256 forced.
#[test]
fn gpu_sparse_fc_forced_lane_widths_match_reference() {
    let Some(ctx) = common::gpu() else { return };
    for lanes in [1, 2, 4, 8, 16, 32, 64, 128, 256] {
        check_sparse_fc_lanes(&ctx, Some(lanes));
    }
}

/// The cases of `gpu_sparse_fc_lane_widths_match_reference` with `lanes` lanes per row
/// (`None`: the host's choice).
fn check_sparse_fc_lanes(
    ctx: &std::sync::Arc<cnnpack::backend::gpu::GpuContext>,
    lanes: Option<usize>,
) {
    use cnnpack::backend::gpu::{GpuModel, GpuOptions};
    let options = GpuOptions {
        sparse_fc_lanes: lanes,
        ..GpuOptions::default()
    };
    let mut rng = Rng::new(41);
    let cases: [(usize, usize, f32); 12] = [
        (37, 9, 0.3),
        (53, 19, 0.3),
        (70, 31, 0.3),
        (100, 21, 1.0),
        (65, 151, 0.3),
        (33, 301, 0.3),
        (300, 191, 1.0),
        (45, 1001, 0.3),
        (261, 701, 1.0),
        (19, 2501, 1.0),
        (129, 4999, 0.01),
        (9, 30001, 0.01),
    ];
    for (case, &(rows, k, density)) in cases.iter().enumerate() {
        let relu = case % 2 == 0;
        let mut b = GraphBuilder::new("x", &[k], case as u64);
        let x = b.input();
        let mut y = b.linear(&x, rows);
        if relu {
            y = b.relu(&y);
        }
        let mut g = b.finish(&[&y]).expect("graph");
        for node in &mut g.nodes {
            if let Op::Linear(l) = &mut node.op {
                let mut wt = sparse_tensor(&mut rng, vec![rows, k], density);
                for r in (0..rows).step_by(5) {
                    wt.data[r * k..(r + 1) * k].fill(0.0);
                }
                for v in &mut wt.data[k..2 * k] {
                    *v = rng.normal() + 0.1;
                }
                l.weight = Weights::Dense(wt);
                if let Some(bb) = &mut l.bias {
                    *bb = rng.normal_tensor(bb.shape.clone(), 1.0);
                }
            }
        }
        let (sg, _) = sparsify_graph(&g, &SparsePolicy::All).expect("sparsify");
        for n in [1, 3] {
            let xb = rng.normal_tensor(vec![n, k], 1.0);
            let want = reference::run_graph(&g, &xb).unwrap().remove(0);
            let model = GpuModel::with_options(ctx.clone(), &sg, n, options).expect("gpu model");
            let got = model.run(&xb).expect("gpu run").remove(0);
            check(
                &got,
                &want,
                &format!(
                    "fc case {case}: {rows}x{k} density {density} batch {n} relu {relu} lanes {lanes:?}"
                ),
            );
        }
    }
}

/// GPU time of `sparse_fc` on AlexNet's fc6/fc7/fc8 shapes at batch 1 (timestamp
/// queries; CSR bytes = values + columns as f32/u32 + row pointers), and of the dense
/// GEMV on the same shapes. Run on a GPU with
/// `cargo test --release --test dns gpu_sparse_fc_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn gpu_sparse_fc_timing() {
    use cnnpack::backend::gpu::GpuModel;
    let Some(ctx) = common::gpu() else { return };
    // Lane widths to compare, e.g. SPARSE_FC_TIMING_LANES=8,32,128 (default: the
    // host's choice).
    let lanes: Vec<Option<usize>> = std::env::var("SPARSE_FC_TIMING_LANES")
        .map(|v| v.split(',').map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![None]);
    let mut rng = Rng::new(5);
    for (name, k, rows) in [
        ("fc6", 9216, 4096),
        ("fc7", 4096, 4096),
        ("fc8", 4096, 1000),
    ] {
        let mut b = GraphBuilder::new("x", &[k], 1);
        let x = b.input();
        let y = b.linear(&x, rows);
        let g = b.finish(&[&y]).expect("graph");
        let xb = rng.normal_tensor(vec![1, k], 1.0);
        let best = |g: &cnnpack::graph::Graph, lanes: Option<usize>| {
            let options = cnnpack::backend::gpu::GpuOptions {
                sparse_fc_lanes: lanes,
                ..Default::default()
            };
            let model = GpuModel::with_options(ctx.clone(), g, 1, options).expect("gpu model");
            let mut best = f64::INFINITY;
            for _ in 0..8 {
                let (_, t) = model.run_profiled(&xb).expect("run");
                let Some(t) = t else { return f64::NAN };
                best = best.min(t.iter().map(|s| s.1).sum::<f64>());
            }
            best
        };
        let td = best(&g, None);
        println!("{name} dense gemv: {td:.4} ms");
        for density in [0.5f32, 0.25, 0.1, 0.05] {
            let mut sg = g.clone();
            let mut nnz = 0;
            for node in &mut sg.nodes {
                if let Op::Linear(l) = &mut node.op {
                    let wt = sparse_tensor(&mut rng, vec![rows, k], density);
                    let s = SparseWeights::from_dense(wt.shape.clone(), &wt.data).unwrap();
                    nnz = s.nnz();
                    l.weight = Weights::Sparse(s);
                }
            }
            let bytes = (nnz * 8 + (rows + 1) * 4) as f64;
            for &l in &lanes {
                let ts = best(&sg, l);
                println!(
                    "{name} density {density} lanes {:>4}: sparse {ts:.4} ms ({:.1} GB/s), dense {td:.4} ms",
                    l.map_or("auto".into(), |l| l.to_string()),
                    bytes / ts * 1e-6
                );
            }
        }
    }
}
