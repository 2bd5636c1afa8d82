//! A corpus of malformed inputs for every reader: ONNX, `.cnnpack`, IDX, labels.csv and
//! images (through the dataset loader). Each is truncated at many offsets, bit-flipped
//! at many positions, given huge declared sizes, wrong types, cycles and dangling
//! inputs. Every case must return an error (or, where a damaged file can still be a
//! well-formed one, a model that validates and runs) and never panic: a panic fails
//! the test with the case named. Also: graph validation before any GPU work, NaN/Inf
//! refused at compress time, and a killed save leaving the old `.cnnpack` intact.

mod common;
use cnnpack::compress::{dns, inq, sketch, CompressError};
use cnnpack::data::{load_image, Dataset, Preprocess};
use cnnpack::engine::{DeviceKind, Engine, EngineError};
use cnnpack::format::{self, FormatError};
use cnnpack::graph::{Graph, GraphBuilder, GraphError, Op, Rng, Tensor};
use cnnpack::import::proto::ModelProto;
use cnnpack::import::{export_onnx, parse_onnx};
use cnnpack::weights::Weights;
use prost::Message;
use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `f`; a panic fails the test naming `case`.
fn no_panic<T>(case: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{case}: panicked ({msg})")
        }
    }
}

/// `f` must return an error (without panicking); returns the error's message.
fn must_fail<T, E: std::fmt::Display>(case: &str, f: impl FnOnce() -> Result<T, E>) -> String {
    match no_panic(case, f) {
        Ok(_) => panic!("{case}: accepted"),
        Err(e) => e.to_string(),
    }
}

/// A model that survived damage must still be usable: validate it and run it on the
/// CPU once (a parsed-but-unrunnable model would crash the host later).
fn accepted_model_runs(case: &str, g: Graph) {
    no_panic(case, || {
        g.validate().expect("an accepted model validates");
        if let Ok(engine) = Engine::new(g.clone(), DeviceKind::Cpu) {
            let mut shape = vec![1];
            shape.extend(&engine.graph().input.item_shape);
            if shape.iter().product::<usize>() <= 1 << 20 {
                let _ = engine.run(&Tensor::full(shape, 0.5));
            }
        }
    });
}

/// A fresh, empty folder under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    common::temp_dir(&format!("malformed-{name}"))
}

/// conv-relu-pool-flatten-linear on 1x6x6 (a few hundred bytes as a file).
fn tiny(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("x", &[1, 6, 6], seed);
    let x = b.input();
    let c = b.conv(&x, 2, 3, 1, 1, 1);
    let r = b.relu(&c);
    let p = b.max_pool(&r, 2, 2, 0);
    let f = b.flatten(&p);
    let l = b.linear(&f, 3);
    b.finish(&[&l]).expect("the tiny model is valid")
}

/// Offsets to cut at: every one for short inputs, else ~`n` spread plus the last few.
fn cuts(len: usize, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = if len <= n {
        (0..len).collect()
    } else {
        (0..n).map(|k| len * k / n).collect()
    };
    v.extend(len.saturating_sub(8)..len);
    v.sort_unstable();
    v.dedup();
    v
}

/// Bit positions to flip: every byte for short inputs, else `n` random ones.
fn flips(len: usize, n: usize, seed: u64) -> Vec<(usize, u8)> {
    let mut rng = Rng::new(seed);
    if len <= n {
        (0..len).map(|i| (i, 1u8 << (i % 8))).collect()
    } else {
        (0..n)
            .map(|_| (rng.range(0, len - 1), 1u8 << rng.range(0, 7)))
            .collect()
    }
}

// ---------------------------------------------------------------- ONNX

fn onnx_of(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

#[test]
fn onnx_truncated_and_bit_flipped() {
    let bytes = export_onnx(&tiny(1)).expect("tiny exports");
    assert!(parse_onnx(&bytes).is_ok());
    let (mut errs, mut oks) = (0, 0);
    for cut in cuts(bytes.len(), 400) {
        let case = format!("ONNX truncated to {cut} of {} bytes", bytes.len());
        match no_panic(&case, || parse_onnx(&bytes[..cut])) {
            Err(_) => errs += 1,
            // A cut at a field boundary can drop only optional trailing fields.
            Ok(g) => {
                oks += 1;
                accepted_model_runs(&case, g)
            }
        }
    }
    assert!(
        errs > 10 * oks.max(1),
        "{errs} truncations failed, {oks} parsed"
    );
    for (i, bit) in flips(bytes.len(), 2000, 7) {
        let mut b = bytes.clone();
        b[i] ^= bit;
        let case = format!("ONNX bit {bit:#04x} flipped at byte {i}");
        // A flip inside a weight is still a valid model; it must then run.
        if let Ok(g) = no_panic(&case, || parse_onnx(&b)) {
            accepted_model_runs(&case, g);
        }
    }
}

#[test]
fn onnx_huge_sizes_wrong_types_cycles_dangling() {
    let bytes = export_onnx(&tiny(2)).expect("tiny exports");
    let base = ModelProto::decode(&bytes[..]).expect("own export decodes");
    let graph = |m: &mut ModelProto| m.graph.as_mut().expect("export has a graph").clone();
    let with = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = base.clone();
        f(&mut m);
        onnx_of(&m)
    };
    let weight_index = graph(&mut base.clone())
        .initializer
        .iter()
        .position(|t| t.dims.len() == 4)
        .expect("the conv weight is an initializer");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "conv weight dims 2^40",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.initializer[weight_index].dims = vec![1 << 20, 1 << 20, 1, 1];
            }),
        ),
        (
            "conv weight dims overflowing i64 products",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.initializer[weight_index].dims = vec![i64::MAX, i64::MAX, 3, 3];
            }),
        ),
        (
            "negative dim",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.initializer[weight_index].dims[0] = -2;
            }),
        ),
        (
            "zero dim",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.initializer[weight_index].dims[0] = 0;
                g.initializer[weight_index].raw_data = Some(vec![]);
                g.initializer[weight_index].float_data.clear();
            }),
        ),
        (
            "input shape 2^31 x 2^31",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let t = g.input[0].r#type.as_mut().expect("typed input");
                let s = t.tensor_type.as_mut().expect("tensor").shape.as_mut();
                let s = s.expect("shape");
                s.dim[2].dim_value = Some(1 << 31);
                s.dim[3].dim_value = Some(1 << 31);
            }),
        ),
        (
            "weight as INT64",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.initializer[weight_index].data_type = Some(7);
            }),
        ),
        (
            "weight as STRING",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let t = &mut g.initializer[weight_index];
                t.data_type = Some(8);
                t.raw_data = None;
                t.float_data.clear();
                t.string_data = vec![b"w".to_vec(); 18];
            }),
        ),
        (
            "input elem type FLOAT16",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let t = g.input[0].r#type.as_mut().expect("typed input");
                t.tensor_type.as_mut().expect("tensor").elem_type = Some(10);
            }),
        ),
        (
            "cycle: first node reads the last node's output",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let last = g.node.last().expect("nodes").output[0].clone();
                g.node[1].input[0] = last;
            }),
        ),
        (
            "self loop",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let own = g.node[1].output[0].clone();
                g.node[1].input[0] = own;
            }),
        ),
        (
            "dangling input",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.node[1].input[0] = "nobody_makes_this".into();
            }),
        ),
        (
            "output nobody produces",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                g.output[0].name = Some("ghost".into());
            }),
        ),
        (
            "two nodes write one value",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let o = g.node[0].output[0].clone();
                g.node[1].output[0] = o;
            }),
        ),
        (
            "no graph",
            with(&|m| {
                m.graph = None;
            }),
        ),
        (
            "no opset",
            with(&|m| {
                m.opset_import.clear();
            }),
        ),
        (
            "linear weight shape mismatch",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let i = g
                    .initializer
                    .iter()
                    .position(|t| t.dims.len() == 2)
                    .expect("fc weight");
                let t = &mut g.initializer[i];
                let n: i64 = t.dims.iter().product();
                t.dims = vec![t.dims[0] + 1, t.dims[1] - 1];
                assert_ne!(t.dims.iter().product::<i64>(), n);
            }),
        ),
        (
            "NaN weight",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let t = &mut g.initializer[weight_index];
                if let Some(raw) = t.raw_data.as_mut() {
                    raw[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
                } else {
                    t.float_data[0] = f32::NAN;
                }
            }),
        ),
        (
            "infinite weight",
            with(&|m| {
                let g = m.graph.as_mut().expect("graph");
                let t = &mut g.initializer[weight_index];
                if let Some(raw) = t.raw_data.as_mut() {
                    raw[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
                } else {
                    t.float_data[1] = f32::INFINITY;
                }
            }),
        ),
    ];
    for (name, b) in &cases {
        let msg = must_fail(&format!("ONNX {name}"), || parse_onnx(b));
        assert!(!msg.is_empty(), "{name}: empty message");
    }
    // Garbage of every short length.
    let mut rng = Rng::new(3);
    for len in 0..300 {
        let b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let case = format!("ONNX {len} random bytes");
        if let Ok(g) = no_panic(&case, || parse_onnx(&b)) {
            accepted_model_runs(&case, g);
        }
    }
}

// ---------------------------------------------------------------- .cnnpack

/// The tiny model in each weight encoding.
fn packed_models() -> Vec<(&'static str, Graph)> {
    let g = tiny(4);
    let (sk, _) = sketch::sketch_graph(
        &g,
        &sketch::SketchOptions {
            bases: 2,
            ..Default::default()
        },
    )
    .expect("tiny sketches");
    let (q, _) = inq::inq_graph(
        &g,
        &inq::InqOptions {
            bits: 4,
            ..Default::default()
        },
        None,
        &mut |_| {},
    )
    .expect("tiny quantizes");
    let (sp, _) = dns::sparsify_graph(&g, &dns::SparsePolicy::All).expect("tiny sparsifies");
    vec![("dense", g), ("sketch", sk), ("pow2", q), ("sparse", sp)]
}

#[test]
fn cnnpack_truncated_and_bit_flipped() {
    for (enc, g) in packed_models() {
        let bytes = format::to_bytes(&g).expect("tiny serializes");
        assert_eq!(format::from_bytes(&bytes).expect("round trip"), g);
        for cut in cuts(bytes.len(), 500) {
            must_fail(
                &format!(".cnnpack ({enc}) truncated to {cut} of {}", bytes.len()),
                || format::from_bytes(&bytes[..cut]),
            );
        }
        for (i, bit) in flips(bytes.len(), 1500, 11) {
            let mut b = bytes.clone();
            b[i] ^= bit;
            let case = format!(".cnnpack ({enc}) bit {bit:#04x} flipped at byte {i}");
            // The header pads with spaces; a flip there can leave valid JSON, which
            // is harmless. Anything else is caught by the container or the checksum.
            if let Ok(g2) = no_panic(&case, || format::from_bytes(&b)) {
                assert_eq!(g2, g, "{case}: loaded a different model");
            }
        }
    }
}

/// Re-assembles a container with new graph JSON and tensors and a valid checksum.
fn repack(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (meta, tensors) = format::cnnpack::disassemble(bytes).expect("own file");
    let mut json: serde_json::Value =
        serde_json::from_str(&meta["graph"]).expect("own graph JSON parses");
    edit(&mut json);
    format::cnnpack::assemble(&json.to_string(), &tensors).expect("assembles")
}

/// Edits the header of every pow2 weight in the graph JSON.
fn edit_pow2(j: &mut serde_json::Value, edit: &dyn Fn(&mut serde_json::Value)) {
    for node in j["nodes"].as_array_mut().expect("nodes") {
        for op in ["Conv", "Linear"] {
            let w = node["op"]
                .get_mut(op)
                .and_then(|o| o.get_mut("weight"))
                .and_then(|w| w.get_mut("Pow2"));
            if let Some(w) = w {
                edit(w);
            }
        }
    }
}

#[test]
fn cnnpack_pow2_headers_and_streams_refused() {
    let (_, q) = packed_models()
        .into_iter()
        .find(|(enc, _)| *enc == "pow2")
        .expect("a pow2 model");
    let bytes = format::to_bytes(&q).expect("serializes");
    let headers: Vec<(&str, serde_json::Value)> = vec![
        ("bits 0", serde_json::json!({"bits": 0})),
        ("bits 1", serde_json::json!({"bits": 1})),
        ("bits 6", serde_json::json!({"bits": 6})),
        ("bits 40", serde_json::json!({"bits": 40})),
        ("bits 2^40", serde_json::json!({"bits": 1u64 << 40})),
        ("n1 2^31 - 1", serde_json::json!({"n1": i32::MAX})),
        ("words_per_row 0", serde_json::json!({"words_per_row": 0})),
        (
            "words_per_row 2^60",
            serde_json::json!({"words_per_row": 1u64 << 60}),
        ),
        (
            "packing Words with a stream",
            serde_json::json!({"packing": "Words"}),
        ),
        ("packing unknown", serde_json::json!({"packing": "Zip"})),
    ];
    for (name, patch) in &headers {
        let b = repack(&bytes, |j| {
            edit_pow2(j, &|w| {
                for (key, v) in patch.as_object().expect("patch") {
                    w[key] = v.clone();
                }
            })
        });
        must_fail(&format!(".cnnpack pow2 {name}"), || format::from_bytes(&b));
    }
    // Streams one word short, one word long, and with a set bit past the last code.
    let (meta, tensors) = format::cnnpack::disassemble(&bytes).expect("own file");
    let streams: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].name.ends_with(".code_stream"))
        .collect();
    assert!(!streams.is_empty(), "pow2 files hold code streams");
    // Layers whose stream ends inside a word (the padding bit edit applies to them).
    let padded: Vec<String> = q
        .nodes
        .iter()
        .filter_map(|n| match n.op.weights() {
            Some(cnnpack::weights::Weights::Pow2(w))
                if !(w.rows() * w.row_len() * w.bits() as usize).is_multiple_of(32) =>
            {
                Some(format!("{}.code_stream", n.name))
            }
            _ => None,
        })
        .collect();
    assert!(
        !padded.is_empty(),
        "the tiny model has a stream with padding"
    );
    // 40-bit codes with a stream of the length they would take.
    let mut t = tensors.clone();
    let json = {
        let mut j: serde_json::Value = serde_json::from_str(&meta["graph"]).expect("JSON");
        edit_pow2(&mut j, &|w| w["bits"] = serde_json::json!(40));
        j.to_string()
    };
    for &i in &streams {
        let name = t[i].name.trim_end_matches(".code_stream").to_string();
        let n = q.nodes.iter().find(|n| n.name == name).expect("node");
        let count = n.op.weights().expect("weights").parameters();
        let words = (count * 40).div_ceil(32);
        t[i].shape = vec![words];
        t[i].data = vec![0u8; 4 * words].into();
    }
    let b = format::cnnpack::assemble(&json, &t).expect("assembles");
    must_fail(".cnnpack pow2 bits 40, stream to match", || {
        format::from_bytes(&b)
    });
    for (name, edit) in [
        ("stream one word short", 0),
        ("stream one word long", 1),
        ("stream with a padding bit set", 2),
    ] {
        let mut t = tensors.clone();
        for &i in &streams {
            if edit == 2 && !padded.contains(&t[i].name) {
                continue;
            }
            let mut d = t[i].data.to_vec();
            match edit {
                0 => d.truncate(d.len() - 4),
                1 => d.extend([0u8; 4]),
                _ => {
                    let last = d.len() - 1;
                    d[last] |= 0x80;
                }
            }
            t[i].shape = vec![d.len() / 4];
            t[i].data = d.into();
        }
        let b = format::cnnpack::assemble(&meta["graph"], &t).expect("assembles");
        must_fail(&format!(".cnnpack pow2 {name}"), || format::from_bytes(&b));
    }
}

#[test]
fn cnnpack_huge_sizes_wrong_types_cycles_dangling() {
    let g = tiny(5);
    let bytes = format::to_bytes(&g).expect("serializes");
    let conv = g.nodes[0].name.clone();
    let (meta, tensors) = format::cnnpack::disassemble(&bytes).expect("own file");
    let json = meta["graph"].clone();
    let with_tensors = |edit: &dyn Fn(&mut Vec<format::cnnpack::RawTensor<'_>>)| {
        let mut t = tensors.clone();
        edit(&mut t);
        format::cnnpack::assemble(&json, &t).expect("assembles")
    };
    let nodes = |j: &mut serde_json::Value| -> Vec<serde_json::Value> {
        j["nodes"].as_array().expect("nodes array").clone()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "input item shape 2^80",
            repack(&bytes, |j| {
                j["input"]["item_shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]);
            }),
        ),
        (
            "input item shape with a zero",
            repack(&bytes, |j| {
                j["input"]["item_shape"] = serde_json::json!([1, 0, 6]);
            }),
        ),
        (
            "input item shape negative",
            repack(&bytes, |j| {
                j["input"]["item_shape"] = serde_json::json!([1, -6, 6]);
            }),
        ),
        (
            "cycle",
            repack(&bytes, |j| {
                let n = nodes(j);
                let last = n.last().expect("nodes")["output"].clone();
                j["nodes"][0]["inputs"][0] = last;
            }),
        ),
        (
            "dangling input",
            repack(&bytes, |j| {
                j["nodes"][1]["inputs"][0] = serde_json::json!("nobody");
            }),
        ),
        (
            "missing output",
            repack(&bytes, |j| {
                j["outputs"] = serde_json::json!(["ghost"]);
            }),
        ),
        (
            "graph JSON of the wrong type",
            repack(&bytes, |j| {
                *j = serde_json::json!([1, 2, 3]);
            }),
        ),
        (
            "node op of the wrong type",
            repack(&bytes, |j| {
                j["nodes"][0]["op"] = serde_json::json!(42);
            }),
        ),
        (
            "weight tensor as U8",
            with_tensors(&|t| {
                let w = t
                    .iter_mut()
                    .find(|t| t.name == format!("{conv}.weight"))
                    .expect("conv weight");
                w.dtype = safetensors::Dtype::U8;
                let n = w.data.len();
                w.shape = vec![n];
            }),
        ),
        (
            "weight tensor one element short",
            with_tensors(&|t| {
                let w = t
                    .iter_mut()
                    .find(|t| t.name == format!("{conv}.weight"))
                    .expect("conv weight");
                let n = w.data.len() - 4;
                w.data = w.data[..n].to_vec().into();
                w.shape = vec![n / 4];
            }),
        ),
        (
            "weight tensor missing",
            with_tensors(&|t| t.retain(|t| t.name != format!("{conv}.weight"))),
        ),
        (
            "NaN weight",
            with_tensors(&|t| {
                let w = t
                    .iter_mut()
                    .find(|t| t.name == format!("{conv}.weight"))
                    .expect("conv weight");
                let mut d = w.data.to_vec();
                d[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
                w.data = d.into();
            }),
        ),
        (
            "infinite bias",
            with_tensors(&|t| {
                let w = t
                    .iter_mut()
                    .find(|t| t.name == format!("{conv}.bias"))
                    .expect("conv bias");
                let mut d = w.data.to_vec();
                d[0..4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
                w.data = d.into();
            }),
        ),
    ];
    for (name, b) in &cases {
        must_fail(&format!(".cnnpack {name}"), || format::from_bytes(b));
    }
    // A safetensors header that claims an 2^60-byte header or huge offsets.
    let mut huge = bytes.clone();
    huge[0..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    must_fail(".cnnpack header length 2^60", || format::from_bytes(&huge));
    let header =
        br#"{"a":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend(header);
    f.extend([0u8; 16]);
    must_fail(".cnnpack tensor offsets past the end", || {
        format::from_bytes(&f)
    });
    // The wrong version is refused by name.
    let v2 = {
        let (mut meta, t) = format::cnnpack::disassemble(&bytes).expect("own file");
        meta.insert("version".into(), "3".into());
        safetensors::serialize(t.iter().map(|t| (t.name.clone(), t)), Some(meta)).expect("ser")
    };
    let msg = must_fail(".cnnpack version 3", || format::from_bytes(&v2));
    assert!(msg.contains("version"), "{msg}");
    // And through the file loader: a missing file and a directory.
    let d = temp_dir("cnnpack-paths");
    must_fail(".cnnpack missing file", || {
        format::load(&d.join("none.cnnpack"))
    });
    must_fail(".cnnpack directory", || format::load(&d));
}

#[test]
fn killed_save_leaves_the_old_file_intact() {
    let d = temp_dir("killed-save");
    let path = d.join("model.cnnpack");
    let old = tiny(6);
    format::save(&old, &path).expect("first save");
    let old_bytes = std::fs::read(&path).expect("saved");
    let new = tiny(7);
    assert_ne!(old, new);

    // Killed after the temporary file is complete, before the rename.
    let mut seen_tmp = None;
    let r = format::cnnpack::save_with_hook(&new, &path, |tmp| {
        assert!(tmp.exists(), "the temporary file exists when the hook runs");
        assert_eq!(
            tmp.parent(),
            path.parent(),
            "the temporary file is beside the target"
        );
        assert_ne!(tmp, path.as_path());
        // The temporary file holds the complete new model at this point.
        let g = format::from_bytes(&std::fs::read(tmp)?).expect("the temp file is complete");
        assert_eq!(g, new);
        seen_tmp = Some(tmp.to_path_buf());
        Err(std::io::Error::other("simulated kill before rename"))
    });
    assert!(matches!(r, Err(FormatError::Io { .. })), "{r:?}");
    assert_eq!(std::fs::read(&path).expect("old file"), old_bytes);
    assert_eq!(format::load(&path).expect("old file loads"), old);
    let tmp = seen_tmp.expect("the hook ran");
    assert!(!tmp.exists(), "the failed save removed its temporary file");

    // Killed mid-write: a half-written temporary file is left behind by the "crash";
    // the model file itself is untouched and still loads, and the next save works.
    let bytes = format::to_bytes(&new).expect("serializes");
    let stray = d.join(".model.cnnpack.tmp-999999-0");
    std::fs::write(&stray, &bytes[..bytes.len() / 2]).expect("write stray");
    assert_eq!(format::load(&path).expect("old file loads"), old);
    format::save(&new, &path).expect("a later save succeeds");
    assert_eq!(format::load(&path).expect("new file loads"), new);

    // A save that cannot rename (the target is a directory) fails and cleans up.
    let dir_target = d.join("dir.cnnpack");
    std::fs::create_dir_all(dir_target.join("inner")).expect("mkdir");
    must_fail("save over a directory", || format::save(&new, &dir_target));
    // A save into a folder that does not exist fails without creating it.
    must_fail("save into a missing folder", || {
        format::save(&new, &d.join("missing/model.cnnpack"))
    });
    assert!(!d.join("missing").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") && !n.ends_with("-999999-0"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

// ---------------------------------------------------------------- IDX

fn idx(dims: &[u32], fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    // Headers that claim more than a small file are cut by the callers.
    let n: u64 = dims.iter().map(|&d| d as u64).product();
    out.extend((0..n.min(1 << 16) as usize).map(fill));
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("memory");
    e.finish().expect("memory")
}

fn read_both(path: &Path) -> (bool, bool) {
    (
        cnnpack::data::read_idx_images(path).is_ok(),
        cnnpack::data::read_idx_labels(path).is_ok(),
    )
}

#[test]
fn idx_truncated_flipped_huge_and_wrong_type() {
    let d = temp_dir("idx");
    let images = idx(&[3, 5, 7], |i| (i * 31) as u8);
    let labels = idx(&[3], |i| i as u8);
    let p = d.join("f");
    for (what, file, dims) in [
        ("images", images.clone(), 3),
        ("labels", labels.clone(), 1),
        ("images.gz", gzip(&images), 3),
        ("labels.gz", gzip(&labels), 1),
    ] {
        std::fs::write(&p, &file).expect("write");
        let ok = read_both(&p);
        assert_eq!(ok, (dims == 3, dims == 1), "{what} reads");
        for cut in cuts(file.len(), 1000) {
            std::fs::write(&p, &file[..cut]).expect("write");
            let r = no_panic(&format!("IDX {what} truncated to {cut}"), || read_both(&p));
            assert_eq!(r, (false, false), "IDX {what} truncated to {cut} was read");
        }
        for (i, bit) in flips(file.len(), 1000, 13) {
            let mut b = file.clone();
            b[i] ^= bit;
            std::fs::write(&p, &b).expect("write");
            let r = no_panic(&format!("IDX {what} bit {bit:#04x} at {i}"), || {
                read_both(&p)
            });
            // A flip in the pixels (or in gzip's unchecked header fields) is still a
            // valid file; a flip in the IDX header never is.
            if i < 4 + 4 * dims && !what.ends_with(".gz") {
                assert_eq!(r, (false, false), "IDX {what} header flip at {i} was read");
            }
        }
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dims 2^32-1 cubed", {
            let mut h = idx(&[0, 0, 0], |_| 0);
            h[4..].copy_from_slice(&[0xff; 12]);
            h
        }),
        ("dims claim 2 GiB, raw 16 bytes", {
            let mut h = idx(&[1 << 15, 1 << 8, 1 << 8], |_| 0)[..16].to_vec();
            h.extend([0u8; 16]);
            h
        }),
        ("dims claim 2 GiB, gzip of 16 bytes", {
            let mut h = idx(&[1 << 15, 1 << 8, 1 << 8], |_| 0)[..16].to_vec();
            h.extend([0u8; 16]);
            gzip(&h)
        }),
        ("dims claim 2^40, gzip", {
            let mut h = idx(&[1 << 20, 1 << 10, 1 << 10], |_| 0)[..16].to_vec();
            h.extend([0u8; 16]);
            gzip(&h)
        }),
        ("element type float (0x0D)", {
            let mut h = images.clone();
            h[2] = 0x0D;
            h
        }),
        ("two dims for images", idx(&[15, 7], |_| 0)),
        ("trailing bytes", {
            let mut h = images.clone();
            h.push(0);
            h
        }),
        ("gzip with trailing garbage", {
            let mut g = gzip(&images);
            g.extend([1, 2, 3]);
            g
        }),
        (
            "gzip that is not deflate",
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        ),
        ("empty", vec![]),
    ];
    for (what, b) in &cases {
        std::fs::write(&p, b).expect("write");
        must_fail(&format!("IDX {what}"), || {
            cnnpack::data::read_idx_images(&p)
        });
    }
    must_fail("IDX missing file", || {
        cnnpack::data::read_idx_images(&d.join("none"))
    });
}

// ---------------------------------------------------------------- labels.csv and images

fn gray_8x8() -> Preprocess {
    Preprocess::from_metadata(&BTreeMap::new(), &[1, 8, 8]).expect("gray 8x8")
}

fn png_bytes() -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png encodes");
    out.into_inner()
}

fn jpeg_bytes() -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("jpeg encodes");
    out.into_inner()
}

/// Opens a labels.csv dataset in `dir` and loads every item.
fn open_and_load(dir: &Path) -> Result<usize, String> {
    let ds = Dataset::open(dir, &gray_8x8(), &[1, 8, 8]).map_err(|e| e.to_string())?;
    let (t, labels) = ds.batch(0, ds.len()).map_err(|e| e.to_string())?;
    assert_eq!(t.shape, vec![labels.len(), 1, 8, 8]);
    Ok(labels.len())
}

#[test]
fn labels_csv_malformed() {
    let d = temp_dir("csv");
    std::fs::write(d.join("a.png"), png_bytes()).expect("write");
    std::fs::write(d.join("b.jpg"), jpeg_bytes()).expect("write");
    let good = "file,wnid,class_index\na.png,n01,0\nb.jpg,n02,1\n";
    std::fs::write(d.join("labels.csv"), good).expect("write");
    assert_eq!(open_and_load(&d), Ok(2));
    let cases: &[(&str, &[u8])] = &[
        ("header only", b"file,wnid,class_index\n"),
        ("empty", b""),
        ("two fields", b"h\na.png,0\n"),
        ("four fields", b"h\na.png,n,0,1\n"),
        ("class not a number", b"h\na.png,n,zero\n"),
        ("negative class", b"h\na.png,n,-1\n"),
        ("class beyond u64", b"h\na.png,n,99999999999999999999999\n"),
        ("path traversal", b"h\n../a.png,n,0\n"),
        ("absolute path", b"h\n/etc/passwd,n,0\n"),
        ("empty file name", b"h\n,n,0\n"),
        ("missing image", b"h\nnone.png,n,0\n"),
        ("not UTF-8", b"h\n\xff\xfe.png,n,0\n"),
        ("a folder as image", b"h\nsub,n,0\n"),
        ("labels.csv itself as image", b"h\nlabels.csv,n,0\n"),
    ];
    std::fs::create_dir_all(d.join("sub")).expect("mkdir");
    for (what, text) in cases {
        std::fs::write(d.join("labels.csv"), text).expect("write");
        let r = no_panic(&format!("labels.csv {what}"), || open_and_load(&d));
        assert!(r.is_err(), "labels.csv {what} accepted: {r:?}");
    }
    // Truncations of the good file at every offset: no panic; errors or fewer items.
    for cut in 0..good.len() {
        std::fs::write(d.join("labels.csv"), &good.as_bytes()[..cut]).expect("write");
        let _ = no_panic(&format!("labels.csv truncated to {cut}"), || {
            open_and_load(&d)
        });
    }
}

/// Sets a PNG's IHDR width and height and fixes the chunk's CRC, so only the size
/// is wrong.
fn png_with_size(png: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut b = png.to_vec();
    // Signature (8), IHDR length (4), "IHDR" (4), then width, height.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in bytes {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn images_truncated_flipped_and_huge() {
    let d = temp_dir("images");
    let pre = gray_8x8();
    let p = d.join("img");
    for (what, bytes) in [("PNG", png_bytes()), ("JPEG", jpeg_bytes())] {
        std::fs::write(&p, &bytes).expect("write");
        let img = load_image(&p).expect("own image decodes");
        let mut out = vec![0f32; 64];
        pre.apply(&img, &mut out).expect("applies");
        let decode = |b: &[u8], case: &str| {
            std::fs::write(&p, b).expect("write");
            no_panic(case, || {
                let img = load_image(&p)?;
                let mut out = vec![0f32; 64];
                pre.apply(&img, &mut out)
            })
        };
        let mut errs = 0;
        let cs = cuts(bytes.len(), 300);
        for &cut in &cs {
            errs += decode(&bytes[..cut], &format!("{what} truncated to {cut}")).is_err() as usize;
        }
        // JPEG decoders tolerate a missing tail (gray fill); the header must be whole.
        assert!(
            errs * 2 > cs.len(),
            "{what}: only {errs} of {} cuts failed",
            cs.len()
        );
        for (i, bit) in flips(bytes.len(), 1000, 17) {
            let mut b = bytes.clone();
            b[i] ^= bit;
            let _ = decode(&b, &format!("{what} bit {bit:#04x} at {i}"));
        }
    }
    // Huge declared sizes are refused from the header, before decoding.
    for (w, h) in [(100_000, 100_000), (u32::MAX, u32::MAX), (1 << 31, 1)] {
        std::fs::write(&p, png_with_size(&png_bytes(), w, h)).expect("write");
        let msg = must_fail(&format!("PNG declaring {w}x{h}"), || load_image(&p));
        assert!(!msg.is_empty());
    }
    // A JPEG whose SOF0 declares 65500x65500.
    let mut jpeg = jpeg_bytes();
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    jpeg[sof + 5..sof + 7].copy_from_slice(&65500u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&65500u16.to_be_bytes());
    std::fs::write(&p, &jpeg).expect("write");
    let _ = no_panic("JPEG declaring 65500x65500", || load_image(&p));
    // Wrong type: a text file and a .cnnpack with an image extension.
    std::fs::write(&p, b"not an image at all").expect("write");
    must_fail("text as image", || load_image(&p));
    std::fs::write(&p, format::to_bytes(&tiny(8)).expect("ser")).expect("write");
    must_fail(".cnnpack as image", || load_image(&p));
    // Through the dataset: a damaged image in a labels.csv folder names its file.
    let ds_dir = temp_dir("images-ds");
    let png = png_bytes();
    std::fs::write(ds_dir.join("a.png"), &png[..png.len() / 2]).expect("write");
    std::fs::write(ds_dir.join("labels.csv"), "h\na.png,n,0\n").expect("write");
    let msg = must_fail("dataset with a truncated PNG", || open_and_load(&ds_dir));
    assert!(msg.contains("a.png"), "{msg}");
}

// ---------------------------------------------------------------- graph validation

fn conv_weight(g: &mut Graph) -> &mut Tensor {
    for n in &mut g.nodes {
        if let Op::Conv(c) = &mut n.op {
            if let Weights::Dense(t) = &mut c.weight {
                return t;
            }
        }
    }
    panic!("the tiny model has a dense conv")
}

/// Every broken graph is refused by `Engine::new` with a graph error, for every device
/// (so before any GPU buffer exists).
#[test]
fn invalid_graphs_fail_before_any_gpu_work() {
    let g = tiny(9);
    let mut cases: Vec<(&str, Graph)> = vec![];
    let mut c = g.clone();
    let last = c.nodes.last().expect("nodes").output.clone();
    c.nodes[0].inputs[0] = last;
    cases.push(("cycle", c));
    let mut c = g.clone();
    c.nodes[1].inputs[0] = "nowhere".into();
    cases.push(("dangling input", c));
    let mut c = g.clone();
    c.outputs = vec!["ghost".into()];
    cases.push(("missing output", c));
    let mut c = g.clone();
    let o = c.nodes[0].output.clone();
    c.nodes[1].output = o;
    cases.push(("duplicate producer", c));
    let mut c = g.clone();
    c.input.item_shape = vec![2, 6, 6];
    cases.push(("channel mismatch", c));
    let mut c = g.clone();
    c.input.item_shape = vec![1, 0, 6];
    cases.push(("zero-sized input", c));
    let mut c = g.clone();
    c.input.item_shape = vec![1, 2, 2];
    cases.push(("input smaller than the kernel", c));
    let mut c = g.clone();
    for n in &mut c.nodes {
        if let Op::Linear(l) = &mut n.op {
            if let Weights::Dense(t) = &mut l.weight {
                t.shape = vec![t.shape[0] * 2, t.shape[1] / 2];
            }
        }
    }
    cases.push(("linear shape mismatch", c));
    let mut c = g.clone();
    conv_weight(&mut c).data[3] = f32::NAN;
    cases.push(("NaN weight", c));
    let mut c = g.clone();
    conv_weight(&mut c).data[0] = f32::INFINITY;
    cases.push(("infinite weight", c));
    let mut c = g.clone();
    if let Op::Conv(conv) = &mut c.nodes[0].op {
        conv.bias = Some(Tensor::full(vec![2], f32::NAN));
    }
    cases.push(("NaN bias", c));
    let mut c = g.clone();
    if let Op::Conv(conv) = &mut c.nodes[0].op {
        conv.stride = [0, 0];
    }
    cases.push(("zero stride", c));
    let mut c = g.clone();
    if let Op::Conv(conv) = &mut c.nodes[0].op {
        conv.groups = 0;
    }
    cases.push(("zero groups", c));
    let mut c = g.clone();
    conv_weight(&mut c).data.pop();
    cases.push(("weight data shorter than its shape", c));

    for (what, bad) in cases {
        for device in [DeviceKind::Reference, DeviceKind::Cpu, DeviceKind::Gpu] {
            let case = format!("{what} on {device:?}");
            let r = no_panic(&case, || Engine::new(bad.clone(), device));
            match r {
                Err(EngineError::Graph(_)) => {}
                Err(e) => panic!("{case}: not a graph error: {e}"),
                Ok(_) => panic!("{case}: accepted"),
            }
        }
        must_fail(&format!("{what}: validate"), || bad.validate());
    }
    assert!(matches!(
        {
            let mut c = g.clone();
            c.nodes[1].inputs[0] = "nowhere".into();
            c.validate()
        },
        Err(GraphError::DanglingInput { .. })
    ));
}

/// Compression refuses NaN/Inf weights up front and names the layer.
#[test]
fn compress_refuses_non_finite_weights_naming_the_layer() {
    let mut g = tiny(10);
    let layer = g.nodes[0].name.clone();
    conv_weight(&mut g).data[1] = f32::NAN;
    let named = |msg: String, what: &str| {
        assert!(
            msg.contains(&layer),
            "{what}: '{msg}' does not name '{layer}'"
        );
    };
    let r = no_panic("sketch NaN", || {
        sketch::sketch_graph(&g, &sketch::SketchOptions::default())
    });
    match r {
        Err(e @ CompressError::NonFinite(_)) => named(e.to_string(), "sketch"),
        other => panic!("sketch of a NaN layer: {other:?}"),
    }
    let r = no_panic("inq NaN", || {
        inq::inq_graph(&g, &inq::InqOptions::default(), None, &mut |_| {})
    });
    named(r.expect_err("inq refuses NaN").to_string(), "inq");
    let r = no_panic("sparsify NaN", || {
        dns::sparsify_graph(&g, &dns::SparsePolicy::All)
    });
    named(r.expect_err("sparsify refuses NaN").to_string(), "sparsify");
    let r = no_panic("dns NaN", || {
        dns::Surgeon::new(&g, &dns::DnsOptions::default())
    });
    match r {
        Err(e) => named(e.to_string(), "dns"),
        Ok(_) => panic!("DNS accepted a NaN layer"),
    }
    // Infinity too.
    let mut g = tiny(10);
    conv_weight(&mut g).data[2] = f32::NEG_INFINITY;
    named(
        sketch::sketch_graph(&g, &sketch::SketchOptions::default())
            .expect_err("sketch refuses -inf")
            .to_string(),
        "sketch -inf",
    );
}
