//! INQ: the pow2 encoding (pack/unpack, validation), the quantizer (values in P, clamp,
//! distinct values), the partition (exact portion counts, frozen weights bitwise fixed
//! during retraining), and the CPU pow2 kernels against the reference.
//!
//! Kernel tolerance: max |fast − ref| ≤ 1e-5 · max |ref|. Products by powers of two
//! are exact, so the results differ from the reference (run on the exact dense
//! reconstruction) only by f32 summation order.

mod common;
use cnnpack::backend::cpu::fast::{FcKernel, Isa};
use cnnpack::backend::cpu::{fast, reference};
use cnnpack::compress::inq::{
    choose_n1, encode_quantized, inq_graph, layer_n1, portion_count, quantize_value, InqOptions,
    Partition, StepReport,
};
use cnnpack::data::{Dataset, Preprocess};
use cnnpack::graph::{Conv2d, Graph, Linear, Node, Op, Rng, Tensor};
use cnnpack::train::TrainOptions;
use cnnpack::tuning::CpuOptions;
use cnnpack::weights::{decode_table, encode_power, pow2_f32, Pow2Weights, Weights};
use std::path::Path;

fn node(op: Op) -> Node {
    Node {
        name: "n".into(),
        op,
        inputs: vec!["x".into()],
        output: "y".into(),
    }
}

fn check(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tol = 1e-5 * scale;
    let diff = got.max_abs_diff(want);
    assert!(diff <= tol, "{what}: max diff {diff} > {tol}");
}

/// The value set P for `bits` and `n1`, as f32 bit patterns.
fn value_set(bits: u32, n1: i32) -> Vec<u32> {
    let n2 = n1 + 1 - (1 << (bits - 2));
    let mut p = vec![0f32.to_bits()];
    for n in n2..=n1 {
        p.push(pow2_f32(n).to_bits());
        p.push((-pow2_f32(n)).to_bits());
    }
    p
}

fn random_pow2(rng: &mut Rng, shape: Vec<usize>, bits: u32) -> Pow2Weights {
    let t = rng.normal_tensor(shape, 0.3);
    let s = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    encode_quantized(&t, bits, choose_n1(s))
}

#[test]
fn pack_unpack_is_exact() {
    let mut rng = Rng::new(3);
    for case in 0..40 {
        let bits = 2 + (case % 4) as u32;
        let n1 = rng.range(0, 20) as i32 - 10;
        let rows = rng.range(1, 6);
        let k = rng.range(1, 70);
        let emax = 1u32 << (bits - 2);
        let codes: Vec<u8> = (0..rows * k)
            .map(|_| {
                let e = rng.range(0, emax as usize) as u32;
                if e == 0 {
                    0
                } else {
                    (e | (rng.range(0, 1) as u32) << (bits - 1)) as u8
                }
            })
            .collect();
        let w = Pow2Weights::from_codes(vec![rows, k], bits, n1, &codes).expect("valid codes");
        let table = decode_table(bits, n1);
        let dense = w.dense_data();
        for (i, &c) in codes.iter().enumerate() {
            assert_eq!(w.code(i / k, i % k), c as u32, "case {case}: code {i}");
            assert_eq!(
                dense[i].to_bits(),
                table[c as usize].to_bits(),
                "case {case}: value {i}"
            );
        }
        // Re-encoding the dense values gives back the same codes.
        let again = encode_quantized(
            &Tensor {
                shape: vec![rows, k],
                data: dense.clone(),
            },
            bits,
            n1,
        );
        assert_eq!(again, w, "case {case}: re-encode");
        assert_eq!(w.words_per_row(), k.div_ceil(32 / bits as usize));
        let ww = Weights::Pow2(w.clone());
        assert_eq!(ww.encoding(), "pow2");
        // Files hold the dense stream: b bits per weight, rounded up to a word once.
        assert_eq!(ww.bytes(), (rows * k * bits as usize).div_ceil(32) * 4);
        let stream = w.code_stream();
        assert_eq!(stream.len() * 4, ww.bytes());
        let mut back = Weights::Pow2(w.clone());
        if let Weights::Pow2(p) = &mut back {
            *p.codes_mut() = stream;
        }
        back.finish_load().expect("stream re-packs");
        assert_eq!(back, ww, "case {case}: stream round trip");
        assert_eq!(ww.to_dense().data, dense);
        assert_eq!(ww.nonzeros(), dense.iter().filter(|v| **v != 0.0).count());
    }
}

#[test]
fn check_refuses_invalid_codes_and_padding() {
    // 4 bits, K = 3: one word per row, bits 12.. are padding.
    let w = Pow2Weights::from_codes(vec![1, 3], 4, 0, &[1, 9, 0]).expect("valid");
    let mut bad = Weights::Pow2(w.clone());
    if let Weights::Pow2(p) = &mut bad {
        p.codes_mut()[0] |= 1 << 20;
    }
    assert!(bad.check().is_err(), "set padding bit accepted");
    let mut bad = Weights::Pow2(w.clone());
    if let Weights::Pow2(p) = &mut bad {
        p.codes_mut()[0] |= 8 << 8; // third code = 8: "negative zero"
    }
    assert!(bad.check().is_err(), "code with sign and e = 0 accepted");
    let mut bad = Weights::Pow2(w);
    if let Weights::Pow2(p) = &mut bad {
        p.codes_mut()[0] = (p.codes_mut()[0] & !0xf) | 7; // e = 7 > 4 magnitudes
    }
    assert!(
        bad.check().is_err(),
        "magnitude index past 2^(b-2) accepted"
    );
    assert!(Pow2Weights::from_codes(vec![1, 3], 6, 0, &[0, 0, 0]).is_err());
    assert!(Pow2Weights::from_codes(vec![1, 3], 3, 0, &[0, 0]).is_err());
    // The header survives a serde round trip, the codes travel as a part: the dense
    // stream, re-packed into words by `finish_load`.
    let w = Pow2Weights::from_codes(vec![2, 3], 3, -4, &[1, 2, 5, 6, 0, 1]).expect("valid");
    let json = serde_json::to_string(&Weights::Pow2(w.clone())).expect("serialise");
    assert!(json.contains("\"packing\":\"Stream\""), "{json}");
    let mut back: Weights = serde_json::from_str(&json).expect("deserialise");
    assert!(back.check().is_err(), "codes are not in the JSON");
    let filled = |back: &mut Weights, codes: Vec<u32>| {
        let mut back = back.clone();
        let roles: Vec<&str> = back.parts_mut().iter().map(|(r, _)| *r).collect();
        if let Weights::Pow2(p) = &mut back {
            *p.codes_mut() = codes;
        }
        (roles, back.finish_load().map(|_| back))
    };
    // 2 rows x 3 codes x 3 bits = 18 bits: one word.
    let (roles, ok) = filled(&mut back, w.code_stream());
    assert_eq!(roles, ["code_stream"]);
    assert_eq!(ok.expect("stream accepted"), Weights::Pow2(w.clone()));
    let (_, short) = filled(&mut back, vec![]);
    assert!(short.is_err(), "empty stream accepted");
    let (_, padded) = filled(&mut back, vec![w.code_stream()[0] | 1 << 18]);
    assert!(padded.is_err(), "set bit past the last code accepted");
    let (_, words) = filled(&mut back, w.codes().to_vec());
    assert!(words.is_err(), "word layout accepted as a stream");
    // A header from before the stream (no `packing`) reads the word layout as `codes`
    // and is re-saved as a stream.
    let legacy = json.replace(",\"packing\":\"Stream\"", "");
    assert_ne!(legacy, json);
    let mut old: Weights = serde_json::from_str(&legacy).expect("deserialise");
    let (roles, ok) = filled(&mut old, w.codes().to_vec());
    assert_eq!(roles, ["codes"]);
    let ok = ok.expect("word layout accepted");
    assert_eq!(ok, Weights::Pow2(w));
    assert_eq!(ok.parts()[0].0, "code_stream");
}

#[test]
fn quantizer_follows_eq4_and_clamps() {
    for bits in 2..=5u32 {
        let n1 = 1; // P ∋ 2, 1, 0.5, 0.25 ... down to 2^n2
        let n2 = n1 + 1 - (1 << (bits - 2));
        let set = value_set(bits, n1);
        let mut rng = Rng::new(bits as u64);
        for _ in 0..2000 {
            let w = rng.normal() * 2.0;
            let q = quantize_value(w, bits, n1);
            assert!(set.contains(&q.to_bits()), "b{bits}: {w} -> {q} not in P");
            // Nearest in the eq. 4 sense: brute force over adjacent pairs.
            let a = w.abs() as f64;
            let want = if a < pow2_f32(n2) as f64 / 2.0 {
                0.0
            } else {
                let mut v = pow2_f32(n1) as f64;
                for n in n2..n1 {
                    let beta = (2f64).powi(n);
                    if a < 1.5 * beta {
                        v = beta;
                        break;
                    }
                }
                v
            };
            assert_eq!(q.abs() as f64, want, "b{bits}: |{w}|");
            if q != 0.0 {
                assert_eq!(q.is_sign_negative(), w < 0.0, "sign of {w}");
            }
        }
        // Above 3·2^n1/2 clamps to ±2^n1; exactly (α+β)/2 rounds up.
        assert_eq!(quantize_value(100.0, bits, n1), 2.0);
        assert_eq!(quantize_value(-3.5, bits, n1), -2.0);
        if bits > 2 {
            assert_eq!(quantize_value(1.5, bits, n1), 2.0);
            assert_eq!(quantize_value(1.4999, bits, n1), 1.0);
        }
        assert_eq!(quantize_value(pow2_f32(n2) / 2.0, bits, n1), pow2_f32(n2));
        assert_eq!(quantize_value(pow2_f32(n2) * 0.49, bits, n1), 0.0);
        assert_eq!(encode_power(bits, n1, false, n1 + 1), None, "above n1");
        assert_eq!(encode_power(bits, n1, false, n2 - 1), None, "below n2");
    }
    // Ternary: n1 minimises the squared error, never above the paper's n1.
    let w = Rng::new(8).normal_tensor(vec![500], 0.1);
    let s = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let sq = |n1: i32| -> f64 {
        w.data
            .iter()
            .map(|&v| (v as f64 - quantize_value(v, 2, n1) as f64).powi(2))
            .sum()
    };
    let n1 = layer_n1(&w.data, s, 2);
    assert!(
        n1 < choose_n1(s),
        "gaussian weights: a smaller ternary magnitude fits better"
    );
    for n in n1 - 3..=choose_n1(s) {
        assert!(sq(n1) <= sq(n), "n1 {n1} is not the best (n = {n})");
    }
    assert_eq!(layer_n1(&w.data, s, 3), choose_n1(s));
    // n1 = floor(log2(4s/3)): s = 1.5 -> 4s/3 = 2 -> n1 = 1; s just below -> 0.
    assert_eq!(choose_n1(1.5), 1);
    assert_eq!(choose_n1(1.4999), 0);
    assert_eq!(choose_n1(0.75), 0);
    assert_eq!(choose_n1(0.1), -3);
}

fn lenet() -> Graph {
    cnnpack::zoo::build("lenet5", 1).expect("zoo lenet5")
}

fn layer_weights(g: &Graph) -> Vec<(String, Tensor)> {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv(c) => Some((n.name.clone(), c.weight.to_dense().into_owned())),
            Op::Linear(l) => Some((n.name.clone(), l.weight.to_dense().into_owned())),
            _ => None,
        })
        .collect()
}

#[test]
fn one_step_quantization_gives_values_in_p() {
    let g = lenet();
    for bits in 2..=5u32 {
        let opts = InqOptions {
            bits,
            ..InqOptions::default()
        };
        let mut steps = 0;
        let (q, reports) = inq_graph(&g, &opts, None, &mut |_| steps += 1).expect("inq");
        assert_eq!(steps, 1, "without data: one step");
        assert_eq!(reports.len(), 4);
        for ((name, w), r) in layer_weights(&q).iter().zip(&reports) {
            assert_eq!(&r.name, name);
            let set = value_set(bits, r.n1);
            assert!(
                w.data.iter().all(|v| set.contains(&v.to_bits())),
                "b{bits} {name}: value outside P"
            );
            let mut distinct: Vec<u32> = w.data.iter().map(|v| v.to_bits()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), r.distinct);
            assert!(r.distinct <= (1 << (bits - 1)) + 1, "b{bits} {name}");
            let k = w.data.len() / w.shape[0];
            assert_eq!(
                r.bytes_after,
                (w.shape[0] * k * bits as usize).div_ceil(32) * 4,
                "b{bits} {name}: bytes"
            );
            assert_eq!(r.bytes_before, w.data.len() * 4);
        }
        for n in &q.nodes {
            if let Some(w) = n.op.weights() {
                assert_eq!(w.encoding(), "pow2", "{}", n.name);
            }
        }
        // .cnnpack round trip: header in the JSON, codes as a u32 part.
        let path = std::env::temp_dir().join(format!(
            "cnnpack-inq-{}-b{bits}.cnnpack",
            std::process::id()
        ));
        cnnpack::format::save(&q, &path).expect("save");
        let back = cnnpack::format::load(&path).expect("load");
        std::fs::remove_file(&path).ok();
        assert_eq!(back, q, "b{bits}: file round trip");
        assert_eq!(
            legacy_file(&q),
            q,
            "b{bits}: file from before the code stream"
        );
        // The CPU fast executor runs the quantized graph like the reference does.
        let x = Rng::new(5).normal_tensor(vec![3, 1, 28, 28], 1.0);
        let want = reference::run_graph(&q, &x).expect("reference");
        let got = fast::run_graph(&q, &x).expect("fast");
        for (a, b) in got.iter().zip(&want) {
            check(a, b, "lenet pow2 graph");
        }
        let q = std::sync::Arc::new(q.clone());
        for avx512 in [true, false] {
            let options = CpuOptions {
                avx512,
                ..CpuOptions::default()
            };
            let prepared = fast::Prepared::with_options(q.clone(), &options);
            for (a, b) in prepared.run(&x).expect("packed").iter().zip(&want) {
                check(
                    a,
                    b,
                    &format!("lenet pow2 graph, packed convs, {options:?}"),
                );
            }
        }
    }
    // Dense layers stay dense; unknown names and non-finite weights are refused.
    let names: Vec<String> = layer_weights(&g).into_iter().map(|(n, _)| n).collect();
    let opts = InqOptions {
        dense_layers: vec![names[3].clone()],
        ..InqOptions::default()
    };
    let (q, reports) = inq_graph(&g, &opts, None, &mut |_| {}).expect("inq");
    assert_eq!(reports.len(), 3);
    assert!(q
        .nodes
        .iter()
        .any(|n| n.name == names[3] && n.op.weights().map(|w| w.encoding()) == Some("dense")));
    let bad = InqOptions {
        dense_layers: vec!["nope".into()],
        ..InqOptions::default()
    };
    assert!(inq_graph(&g, &bad, None, &mut |_| {}).is_err());
    let mut nan = g.clone();
    for n in &mut nan.nodes {
        if let Op::Linear(l) = &mut n.op {
            if let Weights::Dense(t) = &mut l.weight {
                t.data[3] = f32::NAN;
            }
        }
    }
    let err = inq_graph(&nan, &InqOptions::default(), None, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
}

/// `q` written as a build before the pow2 code stream wrote it (no `packing` in the
/// headers, the word layout as part `codes`), then loaded by this build.
fn legacy_file(q: &Graph) -> Graph {
    use cnnpack::format::cnnpack::{disassemble, RawTensor};
    let bytes = cnnpack::format::to_bytes(q).expect("to_bytes");
    let (meta, tensors) = disassemble(&bytes).expect("disassemble");
    let json = meta["graph"].replace(",\"packing\":\"Stream\"", "");
    assert_ne!(
        &json, &meta["graph"],
        "new files say how their codes are packed"
    );
    let tensors: Vec<RawTensor<'_>> = tensors
        .into_iter()
        .map(|t| match t.name.strip_suffix(".code_stream") {
            Some(node) => {
                let n = q.nodes.iter().find(|n| n.name == node).expect("node");
                let Some(Weights::Pow2(p)) = n.op.weights() else {
                    panic!("{node}: code stream on a non-pow2 layer")
                };
                assert_eq!(t.data.len(), Weights::Pow2(p.clone()).bytes(), "{node}");
                let words: Vec<u8> = p.codes().iter().flat_map(|w| w.to_le_bytes()).collect();
                RawTensor {
                    name: format!("{node}.codes"),
                    dtype: t.dtype,
                    shape: vec![p.codes().len()],
                    data: words.into(),
                }
            }
            None => t,
        })
        .collect();
    let old = common::version_1_file(&json, &tensors);
    cnnpack::format::from_bytes(&old).expect("a version-1 file loads")
}

/// Writes `n` random 28x28 images with labels as an uncompressed IDX "train" split.
fn write_idx(dir: &Path, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        img.extend(d.to_be_bytes());
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    for _ in 0..n {
        let label = rng.range(0, 9);
        lab.push(label as u8);
        // A class-dependent bright band so there is something to learn.
        for y in 0..28 {
            for x in 0..28 {
                let v = if y / 3 == label {
                    200
                } else {
                    rng.range(0, 60)
                };
                img.push((v + x % 2) as u8);
            }
        }
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).expect("write images");
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).expect("write labels");
}

#[test]
fn portions_are_exact_and_frozen_weights_never_change() {
    let dir = std::env::temp_dir().join(format!("cnnpack-inq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    write_idx(&dir, 96, 11);
    let g = lenet();
    let pre = Preprocess::from_metadata(&g.metadata, &g.input.item_shape).expect("preprocess");
    let ds = Dataset::open_split(&dir, "train", &pre, &g.input.item_shape).expect("dataset");
    for partition in [Partition::Magnitude, Partition::Random] {
        let opts = InqOptions {
            bits: 3,
            portions: vec![0.3, 0.6, 0.9, 1.0],
            partition,
            ..InqOptions::default()
        };
        let sgd = TrainOptions {
            epochs: 1,
            batch: 32,
            lr: 0.05,
            ..TrainOptions::default()
        };
        let mut prev = layer_weights(&g);
        let mut prev_masks: Option<cnnpack::train::Masks> = None;
        let mut steps = 0;
        let mut on_step = |s: &StepReport| {
            steps += 1;
            let now = layer_weights(s.graph);
            let mut moved = 0usize;
            for ((name, w), (_, before)) in now.iter().zip(&prev) {
                let mask = &s.masks.grad[name];
                let frozen = mask.iter().filter(|m| !**m).count();
                assert_eq!(frozen, portion_count(s.portion, w.data.len()), "{name}");
                let n1 = choose_n1(
                    g.nodes
                        .iter()
                        .find(|n| &n.name == name)
                        .and_then(|n| n.op.weights())
                        .map(|w| w.to_dense().data.iter().fold(0f32, |m, v| m.max(v.abs())))
                        .expect("layer"),
                );
                let was_frozen = prev_masks.as_ref().map(|m| &m.grad[name]);
                for i in 0..w.data.len() {
                    let old_frozen = was_frozen.is_some_and(|m| !m[i]);
                    if old_frozen {
                        assert!(!mask[i], "{name}[{i}] unfrozen");
                        assert_eq!(
                            w.data[i].to_bits(),
                            before.data[i].to_bits(),
                            "{name}[{i}] frozen weight changed during retraining"
                        );
                    } else if !mask[i] {
                        assert_eq!(
                            w.data[i].to_bits(),
                            quantize_value(before.data[i], 3, n1).to_bits(),
                            "{name}[{i}] newly quantized"
                        );
                    } else if w.data[i] != before.data[i] {
                        moved += 1;
                    }
                }
            }
            if s.portion < 1.0 {
                assert!(moved > 0, "retraining moved no free weight");
            }
            if partition == Partition::Magnitude {
                // Every free weight is no larger than the smallest newly frozen one's
                // pre-quantization value.
                for ((name, _), (_, before)) in now.iter().zip(&prev) {
                    let mask = &s.masks.grad[name];
                    let was = prev_masks.as_ref().map(|m| &m.grad[name]);
                    let newly = |i: usize| !mask[i] && was.is_none_or(|m| m[i]);
                    let min_new = (0..mask.len())
                        .filter(|&i| newly(i))
                        .map(|i| before.data[i].abs())
                        .fold(f32::INFINITY, f32::min);
                    let max_free = (0..mask.len())
                        .filter(|&i| mask[i])
                        .map(|i| before.data[i].abs())
                        .fold(0f32, f32::max);
                    assert!(max_free <= min_new, "{name}: magnitude order");
                }
            }
            prev = now;
            prev_masks = Some(s.masks.clone());
        };
        let (q, _) =
            inq_graph(&g, &opts, Some((&ds, None, sgd)), &mut on_step).expect("inq retrains");
        assert_eq!(steps, 4);
        // The encoded weights equal the last step's dense ones.
        for ((name, w), (_, last)) in layer_weights(&q).iter().zip(&prev) {
            assert_eq!(w.data, last.data, "{name}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pow2_linear_matches_reference() {
    let mut rng = Rng::new(17);
    for case in 0..40 {
        let bits = 2 + (case % 4) as u32;
        // Every bit width at batches 1, 5, 2, 8, 3, 7, 9, 66, 16 and 33 (`case % 2`
        // would tie b = 3, 5 to one batch): the code kernels (AVX-512 up to 64: passes
        // of 1 to 4 inputs against 4 rows; AVX2 up to 10: 1 or 2 against 2), and rows
        // decoded into the GEMM's panels (AVX2 from 11, AVX-512 from 65: one, two and
        // five 16-input panels, the last part-filled). Up to 110 rows: several 48-row
        // tasks, the last one short and not a multiple of the GEMM's 6-row tiles.
        let n = [1, 5, 2, 8, 3, 7, 9, 66, 16, 33][case / 4 % 10];
        let k = rng.range(1, 700);
        let o = rng.range(1, 110);
        let w = random_pow2(&mut rng, vec![o, k], bits);
        let bias = (case % 3 != 0).then(|| rng.normal_tensor(vec![o], 1.0));
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let dense = Linear {
            weight: Weights::Dense(w.dense_data().into_tensor(vec![o, k])),
            bias: bias.clone(),
        };
        let want = reference::run_node(&node(Op::Linear(dense)), &[&x]).expect("reference");
        let fc = Linear {
            weight: Weights::Pow2(w.clone()),
            bias: bias.clone(),
        };
        for isa in Isa::available() {
            let got = fast::run_node_isa(&node(Op::Linear(fc.clone())), &[&x], isa).expect("fast");
            check(
                &got,
                &want,
                &format!("case {case}: b{bits} n{n} k{k} o{o} {}", isa.name()),
            );
        }
        let direct = fast::pow2::pow2_linear(&x, &w, bias.as_ref());
        check(&direct, &want, &format!("case {case} direct"));
        // Each batch-1 kernel by name (the AVX2 byte tables and the AVX-512 permutes
        // lay the input out differently), where this CPU has it.
        for kernel in [FcKernel::Avx2, FcKernel::Avx512] {
            if kernel.supported() {
                let got = fast::pow2::pow2_linear_with(&x, &w, bias.as_ref(), kernel);
                check(&got, &want, &format!("case {case} {kernel:?}"));
            }
        }
    }
    for kernel in [FcKernel::Avx2, FcKernel::Avx512] {
        if !kernel.supported() {
            println!("pow2 fc kernel {kernel:?}: skipped: this CPU lacks its instructions");
        }
    }
}

/// The fc kernels on K around and past their blocks (AVX2: 32 code bytes, AVX-512: 64;
/// the GEMM's K blocks of 256), every code value in use, at batch 1, 6 and 11 (AVX2:
/// the codes, then the GEMM), against the reference.
#[test]
fn pow2_fc_kernels_on_block_edges() {
    let mut rng = Rng::new(23);
    for bits in 2..=5u32 {
        let emax = 1usize << (bits - 2);
        for k in [1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 512, 767, 1031] {
            let o = rng.range(1, 19);
            let n1 = rng.range(0, 20) as i32 - 10;
            let codes: Vec<u8> = (0..o * k)
                .map(|_| match rng.range(0, emax) {
                    0 => 0,
                    e => (e as u32 | (rng.range(0, 1) as u32) << (bits - 1)) as u8,
                })
                .collect();
            let w = Pow2Weights::from_codes(vec![o, k], bits, n1, &codes).expect("valid codes");
            for n in [1, 6, 11] {
                let x = rng.normal_tensor(vec![n, k], 1.0);
                let dense = Linear {
                    weight: Weights::Dense(w.dense_data().into_tensor(vec![o, k])),
                    bias: None,
                };
                let want = reference::run_node(&node(Op::Linear(dense)), &[&x]).expect("reference");
                for kernel in [FcKernel::Auto, FcKernel::Avx2, FcKernel::Avx512] {
                    if kernel.supported() {
                        let got = fast::pow2::pow2_linear_with(&x, &w, None, kernel);
                        let what = format!("b{bits} k{k} o{o} n{n} n1 {n1} {kernel:?}");
                        check(&got, &want, &what);
                    }
                }
            }
        }
    }
}

trait IntoTensor {
    fn into_tensor(self, shape: Vec<usize>) -> Tensor;
}

impl IntoTensor for Vec<f32> {
    fn into_tensor(self, shape: Vec<usize>) -> Tensor {
        Tensor { shape, data: self }
    }
}

#[test]
fn pow2_conv_matches_reference() {
    let mut rng = Rng::new(42);
    for case in 0..50 {
        let bits = 2 + (case % 4) as u32;
        let depthwise = case % 7 == 0;
        let groups = if depthwise {
            rng.range(2, 9)
        } else {
            [1, 1, 2, 3][rng.range(0, 3)]
        };
        let cin_g = if depthwise { 1 } else { rng.range(1, 9) };
        let cout = groups * if depthwise { 1 } else { rng.range(1, 7) };
        let kk = [1, 2, 3, 5][rng.range(0, 3)];
        let stride = rng.range(1, 2);
        let dilation = if case % 5 == 0 { 2 } else { 1 };
        let pads = [
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
            rng.range(0, 2),
        ];
        let span = dilation * (kk - 1) + 1;
        let h = rng.range(span, span + 12);
        let w = rng.range(span, span + 17);
        let n = [1, 5][case / 4 % 2];
        let weights = random_pow2(&mut rng, vec![cout, cin_g, kk, kk], bits);
        let conv = Conv2d {
            kernel: [kk, kk],
            stride: [stride; 2],
            pads,
            dilation: [dilation; 2],
            groups,
            weight: Weights::Pow2(weights.clone()),
            bias: (case % 3 != 0).then(|| rng.normal_tensor(vec![cout], 1.0)),
        };
        let dense = Conv2d {
            weight: Weights::Dense(weights.dense_data().into_tensor(vec![cout, cin_g, kk, kk])),
            ..conv.clone()
        };
        let x = rng.normal_tensor(vec![n, cin_g * groups, h, w], 1.0);
        let want = reference::run_node(&node(Op::Conv(dense)), &[&x]).expect("reference");
        let what = format!(
            "case {case}: b{bits} n{n} cin{} cout{cout} g{groups} k{kk} s{stride} d{dilation} p{pads:?} {h}x{w}",
            cin_g * groups
        );
        for isa in Isa::available() {
            let got = fast::run_node_isa(&node(Op::Conv(conv.clone())), &[&x], isa).expect("fast");
            check(&got, &want, &format!("{what} {}", isa.name()));
        }
        // The direct conv on the codes, which the executor does not pick (`pow2::dev`).
        check(
            &fast::pow2::pow2_conv(&x, &conv),
            &want,
            &format!("{what} pow2_conv"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// GPU pow2 kernels against the reference on the dense reconstruction. ldexp on a GPU may
// flush subnormal products, and the GPU sums in its own order, so the tolerance is
// 1e-5 · max |ref| plus 1e-6 absolute (products here are far above the subnormal range).
// Without an adapter the tests print `skipped: no GPU adapter` and pass, unless
// CNNPACK_REQUIRE_GPU=1.

mod gpu {
    use super::*;
    use crate::common::gpu;
    use cnnpack::backend::gpu::{CompressedConv, GpuContext, GpuModel, GpuOptions, Pow2Fc};
    use cnnpack::graph::GraphBuilder;
    use std::sync::Arc;

    fn densified(graph: &Graph) -> Graph {
        let mut g = graph.clone();
        for node in &mut g.nodes {
            let w = match &mut node.op {
                Op::Conv(c) => &mut c.weight,
                Op::Linear(l) => &mut l.weight,
                _ => continue,
            };
            let dense = w.to_dense().into_owned();
            *w = Weights::Dense(dense);
        }
        g
    }

    fn run_check(ctx: &Arc<GpuContext>, what: &str, graph: &Graph, batch: usize, opts: GpuOptions) {
        let mut rng = Rng::new(batch as u64 * 13 + 1);
        let mut shape = vec![batch];
        shape.extend(&graph.input.item_shape);
        let x = rng.normal_tensor(shape, 1.0);
        let model = GpuModel::with_options(ctx.clone(), graph, batch, opts)
            .unwrap_or_else(|e| panic!("{what}: building the GPU model failed: {e}"));
        let got = model
            .run(&x)
            .unwrap_or_else(|e| panic!("{what}: GPU run: {e}"));
        let want = reference::run_graph(&densified(graph), &x).expect("reference");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape, w.shape, "{what}: shape");
            let scale = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = g.max_abs_diff(w);
            let tol = 1e-5 * scale + 1e-6;
            assert!(diff <= tol, "{what} batch {batch}: max diff {diff} > {tol}");
        }
    }

    #[test]
    fn gpu_pow2_conv_matches_reference() {
        let Some(ctx) = gpu() else { return };
        let mut rng = Rng::new(99);
        for case in 0..16 {
            let bits = 2 + (case % 4) as u32;
            let depthwise = case % 5 == 0;
            let groups = if depthwise {
                rng.range(2, 6)
            } else {
                [1, 2, 3][rng.range(0, 2)]
            };
            let cin_g = if depthwise { 1 } else { rng.range(1, 7) };
            let cout = groups * if depthwise { 1 } else { rng.range(1, 9) };
            let kk = [1, 3, 5][rng.range(0, 2)];
            let stride = 1 + case % 2;
            let pads = [
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(0, 2),
            ];
            let h = rng.range(kk, kk + 10);
            let w = rng.range(kk, kk + 13);
            let weights = random_pow2(&mut rng, vec![cout, cin_g, kk, kk], bits);
            let op = Op::Conv(Conv2d {
                kernel: [kk, kk],
                stride: [stride; 2],
                pads,
                dilation: [1, 1],
                groups,
                weight: Weights::Pow2(weights),
                bias: (case % 3 != 0).then(|| rng.normal_tensor(vec![cout], 1.0)),
            });
            let mut b = GraphBuilder::new("x", &[cin_g * groups, h, w], 1);
            let mut y = b.push("conv", op, &["x"]);
            if case % 4 == 1 {
                y = b.relu(&y);
            }
            let g = b.finish(&[&y]).expect("graph");
            let what = format!("conv case {case}: b{bits} g{groups} k{kk} s{stride} {h}x{w}");
            for batch in [1, 5] {
                run_check(
                    &ctx,
                    &what,
                    &g,
                    batch,
                    GpuOptions {
                        compressed_conv: CompressedConv::Native,
                        ..GpuOptions::default()
                    },
                );
            }
        }
    }

    /// Both pow2 Linear kernels: `pow2_fc` (uniform window) and `pow2_fc_lut`
    /// (workgroup table; more batch sizes in `gpu_pow2_fc_lut_shapes`).
    const FC_KERNELS: [Pow2Fc; 2] = [Pow2Fc::Window, Pow2Fc::Lut];

    fn native(pow2_fc: Pow2Fc) -> GpuOptions {
        GpuOptions {
            compressed_conv: CompressedConv::Native,
            pow2_fc,
            ..GpuOptions::default()
        }
    }

    #[test]
    fn gpu_pow2_fc_matches_reference() {
        let Some(ctx) = gpu() else { return };
        let mut rng = Rng::new(98);
        for case in 0..12 {
            let bits = 2 + (case % 4) as u32;
            let k = rng.range(1, 400);
            let o = rng.range(1, 150);
            let weights = random_pow2(&mut rng, vec![o, k], bits);
            let op = Op::Linear(Linear {
                weight: Weights::Pow2(weights),
                bias: (case % 3 != 0).then(|| rng.normal_tensor(vec![o], 1.0)),
            });
            let mut b = GraphBuilder::new("x", &[k], 1);
            let y = b.push("fc", op, &["x"]);
            let g = b.finish(&[&y]).expect("graph");
            for kernel in FC_KERNELS {
                let what = format!("fc case {case}: b{bits} k{k} o{o} {kernel:?}");
                let batches: &[usize] = match kernel {
                    Pow2Fc::Lut => &[1, 3],
                    _ => &[1, 5],
                };
                for &batch in batches {
                    run_check(&ctx, &what, &g, batch, native(kernel));
                }
                if kernel == Pow2Fc::Window {
                    // Row chunks: a binding cap of a few rows' codes (the table kernel's
                    // chunks: `gpu_pow2_fc_lut_shapes`).
                    let opts = GpuOptions {
                        max_binding_bytes: Some(256),
                        ..native(kernel)
                    };
                    run_check(&ctx, &format!("{what} chunked"), &g, 2, opts);
                }
            }
        }
    }

    /// The split-K `pow2_fc` (K slices + `fc_reduce`), which lavapipe only runs when
    /// forced: slice counts that do not divide the words (and past the word count), rows
    /// off multiples of 64, K off multiples of the codes per word, two input windows
    /// (K > 16384), batch 1 and 3, ReLU on and off, row chunks.
    #[test]
    fn gpu_pow2_fc_split_k_matches_reference() {
        let Some(ctx) = gpu() else { return };
        let mut rng = Rng::new(97);
        let opts = |s: usize, cap: Option<u64>| GpuOptions {
            fc_split_k: Some(s),
            max_binding_bytes: cap,
            ..native(Pow2Fc::Window)
        };
        // (K, rows, bits, bias, relu, slices): K = 301 at b = 3 is 31 words (4 slices of
        // 8, 8, 8, 7 words: unrolled and tail; 7 of 5 words and a last of 1); K = 16429
        // at b = 5 is 2739 words in windows of 2730 and 9.
        for (k, o, bits, bias, relu, splits) in [
            (37, 5, 2, true, true, &[2, 3, 9][..]),
            (301, 130, 3, true, false, &[4, 7][..]),
            (301, 65, 4, false, true, &[3, 64][..]),
            (16384 + 45, 70, 5, true, true, &[5][..]),
            (16384 + 45, 3, 2, false, false, &[2][..]),
        ] {
            let g = fc_graph(&mut rng, k, o, bits, bias, relu);
            for &s in splits {
                let what = format!("split-K fc b{bits} k{k} o{o} relu {relu} S={s}");
                for batch in [1, 3] {
                    run_check(&ctx, &what, &g, batch, opts(s, None));
                }
            }
            if k < 1000 {
                // Row chunks of a few rows, K in windows of 64 floats.
                let what = format!("split-K fc b{bits} k{k} o{o} chunked S=3");
                run_check(&ctx, &what, &g, 3, opts(3, Some(256)));
            }
        }
    }

    /// `pow2_fc_lut`'s shapes: 16 rows per workgroup (>= 4096 rows, batch > 1), 8
    /// (>= 2048) and 4, K with and
    /// without a last quad past it (b = 4: 32 inputs per quad), K a multiple of 4 at
    /// batch > 1 (inputs as vec4s) and not (scalars), 1..8 items per workgroup and
    /// several item groups (batch 9, 17), row chunks under a binding cap, K > 16384,
    /// prefetch depths 1 to 3.
    #[test]
    fn gpu_pow2_fc_lut_shapes() {
        let Some(ctx) = gpu() else { return };
        let mut rng = Rng::new(96);
        let lut = native(Pow2Fc::Lut);
        // (K, rows, bits, bias, relu, batches)
        for (k, o, bits, bias, relu, batches) in [
            (64, 2049, 4, true, true, &[1, 3][..]),
            (32, 4100, 2, false, true, &[2][..]),
            (96, 7, 4, false, false, &[1, 2, 8, 9][..]),
            (100, 33, 3, true, false, &[1, 4, 17][..]),
            (37, 5, 2, true, true, &[1, 6][..]),
            (203, 130, 5, false, true, &[1, 7][..]),
            (16384 + 45, 9, 5, true, false, &[1, 3][..]),
        ] {
            let g = fc_graph(&mut rng, k, o, bits, bias, relu);
            for &batch in batches {
                let what = format!("lut fc b{bits} k{k} o{o} relu {relu}");
                run_check(&ctx, &what, &g, batch, lut);
            }
            // Deeper prefetch: slices with 0 to 11 quads, so the loads past the last
            // quad (clamped to it) and the register rotation are both exercised.
            for prefetch in [2, 3] {
                let what = format!("lut fc b{bits} k{k} o{o} prefetch {prefetch}");
                let opts = GpuOptions {
                    pow2_fc_prefetch: Some(prefetch),
                    ..lut
                };
                run_check(&ctx, &what, &g, batches[batches.len() - 1], opts);
            }
            if k < 1000 {
                // A binding of 1 KiB holds 64 quads: 1 to 5 row blocks per chunk.
                let what = format!("lut fc b{bits} k{k} o{o} chunked");
                let opts = GpuOptions {
                    max_binding_bytes: Some(1024),
                    ..lut
                };
                run_check(&ctx, &what, &g, 2, opts);
            }
        }
    }

    /// AlexNet fc6 (9216 -> 4096) dense and pow2 b = 2..5, as parallel branches of one
    /// model, so every profiled run times all of them under the same GPU clocks (on an
    /// H200 whole 20-run measurements came out 3-4x slower in every layer, now and
    /// then). Prints per-step medians and the median of the per-run ratios dense / pow2.
    /// Timing only, on a real GPU: `cargo test --release --test inq pow2_fc_timing --
    /// --ignored --nocapture` (`CNNPACK_POW2_FC`, `CNNPACK_POW2_FC_ROWS` pick variants, as
    /// the command line maps them onto `Tuning`;
    /// `CNNPACK_POW2_FC_PREFETCH_SWEEP=1,2,3` compares prefetch depths in one run;
    /// `CNNPACK_TIMING_RUNS`, default 30).
    /// The knobs of the `CNNPACK_*` variables (`Tuning::ENV`), as the command line
    /// reads them, for this timing run.
    fn env_tuning() -> cnnpack::tuning::Tuning {
        let mut tuning = cnnpack::tuning::Tuning::default();
        for (var, key, fixed) in cnnpack::tuning::Tuning::ENV {
            if let Ok(v) = std::env::var(var) {
                let v = if fixed.is_empty() { &v } else { *fixed };
                tuning.set(key, v).expect("a valid value");
            }
        }
        tuning
    }

    #[test]
    #[ignore]
    fn pow2_fc_timing() {
        let Some(ctx) = gpu() else { return };
        let runs: usize = std::env::var("CNNPACK_TIMING_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let (k, o) = (9216, 4096);
        let mut rng = Rng::new(5);
        let mut b = GraphBuilder::new("x", &[k], 1);
        let mut outs = vec![];
        let dense = Op::Linear(Linear {
            weight: Weights::Dense(rng.normal_tensor(vec![o, k], 0.01)),
            bias: Some(rng.normal_tensor(vec![o], 1.0)),
        });
        outs.push(b.push("dense", dense, &["x"]));
        for bits in 2..=5 {
            let op = Op::Linear(Linear {
                weight: Weights::Pow2(random_pow2(&mut rng, vec![o, k], bits)),
                bias: Some(rng.normal_tensor(vec![o], 1.0)),
            });
            outs.push(b.push(&format!("pow2_b{bits}"), op, &["x"]));
        }
        let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let g = b.finish(&outs).expect("graph");
        // Prefetch depths to compare (`CNNPACK_POW2_FC_PREFETCH_SWEEP=1,2,3`): one model
        // each, run in turn within every round, so all of them see the same clocks.
        let depths: Vec<Option<usize>> = match std::env::var("CNNPACK_POW2_FC_PREFETCH_SWEEP") {
            Ok(list) => list
                .split(',')
                .map(|d| Some(d.trim().parse().expect("prefetch depths 1..=3")))
                .collect(),
            Err(_) => vec![None],
        };
        for batch in [1, 8] {
            let models: Vec<GpuModel> = depths
                .iter()
                .map(|&d| {
                    let opts = GpuOptions {
                        pow2_fc_prefetch: d,
                        ..env_tuning().gpu
                    };
                    GpuModel::with_options(ctx.clone(), &g, batch, opts).expect("model")
                })
                .collect();
            let x = rng.normal_tensor(vec![batch, k], 1.0);
            let mut per_step = vec![vec![]; models.len()];
            let mut ratios = vec![vec![]; models.len()];
            // Warm-up: an idle GPU runs at low clocks until its driver raises them (an
            // H200 measured this test 3-4x slower after 5 warm-up runs).
            let warm = std::time::Instant::now();
            while warm.elapsed().as_secs_f64() < 2.0 {
                for model in &models {
                    model.run(&x).expect("run");
                }
            }
            for _ in 0..runs {
                for (m, model) in models.iter().enumerate() {
                    let (_, times) = model.run_profiled(&x).expect("run");
                    let Some(times) = times else {
                        println!("no timestamp queries on {}", ctx.adapter_name());
                        return;
                    };
                    let (per_step, ratios): (&mut Vec<Vec<f64>>, &mut Vec<Vec<f64>>) =
                        (&mut per_step[m], &mut ratios[m]);
                    per_step.resize(times.len(), vec![]);
                    ratios.resize(times.len(), vec![]);
                    for (i, (_, ms)) in times.iter().enumerate() {
                        per_step[i].push(*ms);
                        ratios[i].push(times[0].1 / ms);
                    }
                }
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            for (m, model) in models.iter().enumerate() {
                let depth = depths[m].map_or("default".to_string(), |d| d.to_string());
                println!(
                    "{} batch {batch}, {runs} runs, prefetch {depth}:",
                    ctx.adapter_name()
                );
                let (per_step, ratios) = (&mut per_step[m], &mut ratios[m]);
                for (i, (name, kernel)) in model.step_kernels().iter().enumerate() {
                    let (ms, r) = (median(&mut per_step[i]), median(&mut ratios[i]));
                    let (lo, hi) = (ratios[i][0], ratios[i][ratios[i].len() - 1]);
                    // The fastest run of each step: the least disturbed by other work.
                    let (best, best_dense) = (per_step[i][0], per_step[0][0]);
                    println!(
                        "  {name:<8} {kernel:<30} median {:>7.1} us, dense/this {r:.2}x ({lo:.2}-{hi:.2}); fastest {:>7.1} us, {:.2}x",
                        ms * 1e3,
                        best * 1e3,
                        best_dense / best
                    );
                }
            }
        }
    }

    fn fc_graph(rng: &mut Rng, k: usize, o: usize, bits: u32, bias: bool, relu: bool) -> Graph {
        let weights = random_pow2(rng, vec![o, k], bits);
        let op = Op::Linear(Linear {
            weight: Weights::Pow2(weights),
            bias: bias.then(|| rng.normal_tensor(vec![o], 1.0)),
        });
        let mut b = GraphBuilder::new("x", &[k], 1);
        let mut y = b.push("fc", op, &["x"]);
        if relu {
            y = b.relu(&y);
        }
        b.finish(&[&y]).expect("graph")
    }
}

#[test]
fn bias_epochs_move_only_biases_after_the_last_portion() {
    let dir = std::env::temp_dir().join(format!("cnnpack-inq-bias-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    write_idx(&dir, 64, 5);
    let g = lenet();
    let pre = Preprocess::from_metadata(&g.metadata, &g.input.item_shape).expect("preprocess");
    let ds = Dataset::open_split(&dir, "train", &pre, &g.input.item_shape).expect("dataset");
    let sgd = TrainOptions {
        epochs: 1,
        batch: 32,
        lr: 0.05,
        ..TrainOptions::default()
    };
    let biases = |g: &Graph| -> Vec<f32> {
        g.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Conv(c) => c.bias.clone(),
                Op::Linear(l) => l.bias.clone(),
                _ => None,
            })
            .flat_map(|b| b.data)
            .collect()
    };
    let run = |bias_epochs: usize| {
        let opts = InqOptions {
            bits: 4,
            portions: vec![0.5, 1.0],
            bias_epochs,
            ..InqOptions::default()
        };
        let mut last_epochs = usize::MAX;
        let (q, _) = inq_graph(&g, &opts, Some((&ds, None, sgd.clone())), &mut |s| {
            last_epochs = s.epochs.len();
        })
        .expect("inq");
        assert_eq!(last_epochs, bias_epochs, "epochs reported by the last step");
        q
    };
    let (plain, tuned) = (run(0), run(2));
    // The quantized weights are bitwise the same; the biases moved.
    for ((name, a), (_, b)) in layer_weights(&plain).iter().zip(&layer_weights(&tuned)) {
        assert_eq!(
            a.data, b.data,
            "{name}: a frozen weight changed in bias-only epochs"
        );
    }
    let (ba, bb) = (biases(&plain), biases(&tuned));
    assert_eq!(ba.len(), bb.len());
    assert!(
        ba.iter().zip(&bb).any(|(x, y)| x != y),
        "biases did not move"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn keep_zeros_keeps_pruned_weights_at_zero() {
    let dir = std::env::temp_dir().join(format!("cnnpack-inq-zeros-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    write_idx(&dir, 64, 6);
    // A pruned LeNet: about 80% of every layer set to exactly zero.
    let mut g = lenet();
    let mut rng = Rng::new(12);
    for node in &mut g.nodes {
        let w = match &mut node.op {
            Op::Conv(c) => &mut c.weight,
            Op::Linear(l) => &mut l.weight,
            _ => continue,
        };
        let mut t = w.to_dense().into_owned();
        for v in &mut t.data {
            if rng.uniform() < 0.8 {
                *v = 0.0;
            }
        }
        *w = Weights::Dense(t);
    }
    let zeros_before: Vec<Vec<bool>> = layer_weights(&g)
        .iter()
        .map(|(_, w)| w.data.iter().map(|v| *v == 0.0).collect())
        .collect();
    let pre = Preprocess::from_metadata(&g.metadata, &g.input.item_shape).expect("preprocess");
    let ds = Dataset::open_split(&dir, "train", &pre, &g.input.item_shape).expect("dataset");
    let opts = InqOptions {
        bits: 5,
        portions: vec![0.5, 1.0],
        keep_zeros: true,
        ..InqOptions::default()
    };
    let sgd = TrainOptions {
        epochs: 1,
        batch: 32,
        lr: 0.05,
        ..TrainOptions::default()
    };
    let mut checked = 0;
    let (q, _) = inq_graph(&g, &opts, Some((&ds, None, sgd)), &mut |s| {
        for ((name, w), zeros) in layer_weights(s.graph).iter().zip(&zeros_before) {
            let mask = &s.masks.grad[name];
            let z = zeros.iter().filter(|z| **z).count();
            let frozen = mask.iter().filter(|m| !**m).count();
            assert_eq!(
                frozen,
                z + portion_count(s.portion, w.data.len() - z),
                "{name}"
            );
            for (i, &was_zero) in zeros.iter().enumerate() {
                if was_zero {
                    assert!(!mask[i], "{name}[{i}]: a zero is trainable");
                    assert_eq!(w.data[i], 0.0, "{name}[{i}]: a pruned weight came back");
                }
            }
            checked += 1;
        }
    })
    .expect("inq keeps zeros");
    assert_eq!(checked, 8, "two steps of four layers");
    for ((name, w), zeros) in layer_weights(&q).iter().zip(&zeros_before) {
        let now: Vec<bool> = w.data.iter().map(|v| *v == 0.0).collect();
        // Every pruned weight is still zero; a few small survivors may quantize to zero.
        assert!(zeros.iter().zip(&now).all(|(z, n)| !z || *n), "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// An empty batch gives an empty output on every fc kernel (the GEMM's panels and the
/// output transposition split work by the batch), and K = 0 gives the bias.
#[test]
fn pow2_linear_empty_batch() {
    let mut rng = Rng::new(29);
    let w = random_pow2(&mut rng, vec![7, 300], 4);
    let bias = rng.normal_tensor(vec![7], 1.0);
    let x = Tensor::zeros(vec![0, 300]);
    // K = 0: the output is the bias.
    let w0 = random_pow2(&mut rng, vec![7, 0], 4);
    let x0 = Tensor::zeros(vec![20, 0]);
    for kernel in [FcKernel::Auto, FcKernel::Avx2, FcKernel::Avx512] {
        let y = fast::pow2::pow2_linear_with(&x, &w, Some(&bias), kernel);
        assert_eq!(
            (y.shape.as_slice(), y.data.len()),
            (&[0, 7][..], 0),
            "{kernel:?}"
        );
        let y = fast::pow2::pow2_linear_with(&x0, &w0, Some(&bias), kernel);
        assert_eq!(y.shape, [20, 7], "{kernel:?}");
        assert!(y.data.chunks(7).all(|row| row == bias.data), "{kernel:?}");
    }
}

/// Layers whose values include powers of two below 2^-133 (subnormals with nonzero low
/// 16 bits: n1 = -131 reaches 2^-134 at 4 bits, -130 reaches 2^-137 at 5) run the
/// arithmetic `Decoder` path instead of the AVX2 byte tables (batch 1: its row dots;
/// above: decoded rows into the GEMV), against the reference. The inputs are scaled by
/// 2^110 so that the products stay normal and the sums compare at the usual tolerance.
#[test]
fn pow2_linear_with_subnormal_values() {
    let mut rng = Rng::new(41);
    for (case, n) in [1, 3, 7, 20].into_iter().enumerate() {
        let bits = 4 + (case % 2) as u32;
        let (k, o) = (rng.range(1, 300), rng.range(1, 30));
        let emax = 1usize << (bits - 2);
        let codes: Vec<u8> = (0..o * k)
            .map(|_| match rng.range(0, emax) {
                0 => 0,
                e => (e as u32 | (rng.range(0, 1) as u32) << (bits - 1)) as u8,
            })
            .collect();
        let n1 = if bits == 4 { -131 } else { -130 };
        let w = Pow2Weights::from_codes(vec![o, k], bits, n1, &codes).expect("valid codes");
        let low_bits = w.table().iter().any(|v| v.to_bits() & 0xffff != 0);
        assert!(low_bits, "case {case}: every value has zero low 16 bits");
        let mut x = rng.normal_tensor(vec![n, k], 1.0);
        x.data.iter_mut().for_each(|v| *v *= 2f32.powi(110));
        let dense = Linear {
            weight: Weights::Dense(w.dense_data().into_tensor(vec![o, k])),
            bias: None,
        };
        let want = reference::run_node(&node(Op::Linear(dense)), &[&x]).expect("reference");
        for kernel in [FcKernel::Auto, FcKernel::Avx2, FcKernel::Avx512] {
            let got = fast::pow2::pow2_linear_with(&x, &w, None, kernel);
            check(
                &got,
                &want,
                &format!("case {case}: b{bits} n{n} k{k} o{o} {kernel:?}"),
            );
        }
    }
}
