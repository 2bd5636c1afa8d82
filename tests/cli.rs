//! The CLI's documented outputs: `inspect --json` and `eval --json` keys, `classify`,
//! `compress sketch`, and clear errors (exit code 1, no panic) for bad model files.

mod common;
use common::data_dir;
use std::path::PathBuf;
use std::process::Command;

fn cnnpack(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnpack"))
        .args(args)
        .output()
        .expect("the cnnpack binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(!stderr.contains("panicked"), "cnnpack panicked: {stderr}");
    (out.status.code(), stdout, stderr)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnpack-cli-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn inspect_json_has_the_documented_keys() {
    let (code, out, err) = cnnpack(&["inspect", "zoo:lenet5", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parameters"], 431_080);
    assert_eq!(v["weight_bytes"], 431_080 * 4);
    // conv1: 24*24*20 outputs * 25 MACs * 2 + conv2: 8*8*50 * 500 * 2 + ip1 800*500*2 + ip2 500*10*2, plus pools/relu/softmax.
    let macs = 24 * 24 * 20 * 25 + 8 * 8 * 50 * 500 + 800 * 500 + 500 * 10;
    assert!(v["flops"].as_u64().unwrap() >= 2 * macs as u64);
    assert!(v["nonzero_parameters"].as_u64().unwrap() <= 431_080);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers[0]["name"], "conv1");
    assert_eq!(
        layers[0]["output_shape"],
        serde_json::json!([1, 20, 24, 24])
    );
}

#[test]
fn bad_model_files_are_errors_not_panics() {
    let garbage = tmp("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07\x12\xff\xff\xff\xff\x0fnot protobuf").unwrap();
    let empty = tmp("empty.cnnpack");
    std::fs::write(&empty, b"").unwrap();
    for (model, needle) in [
        (garbage.to_str().unwrap(), "garbage.onnx"),
        (empty.to_str().unwrap(), "empty.cnnpack"),
        ("/nonexistent/model.onnx", "/nonexistent/model.onnx"),
        ("model.txt", "model.txt"),
        ("zoo:nonesuch", "nonesuch"),
    ] {
        let (code, _, err) = cnnpack(&["inspect", model]);
        assert_eq!(code, Some(1), "{model}: {err}");
        assert!(
            err.contains(needle) && err.starts_with("error:"),
            "{model}: {err}"
        );
    }
}

#[test]
fn eval_json_and_classify_on_real_data() {
    let Some(data) = data_dir() else { return };
    let lenet = data.join("lenet/lenet5_original.onnx");
    let mnist = data.join("mnist");
    let (code, out, err) = cnnpack(&[
        "eval",
        lenet.to_str().unwrap(),
        "--data",
        mnist.to_str().unwrap(),
        "--limit",
        "500",
        "--batch",
        "64",
        "--json",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["count"], 500);
    assert_eq!(v["device"], "cpu");
    assert!(v["top1"].as_f64().unwrap() > 97.0, "{v}");
    assert!(v["top5"].as_f64().unwrap() >= v["top1"].as_f64().unwrap());
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);

    let squeezenet = data.join("imagenet/squeezenet1.0/squeezenet1.0.onnx");
    let eagle = data.join("onnx-zoo/bald_eagle.jpeg");
    let (code, out, err) = cnnpack(&[
        "classify",
        squeezenet.to_str().unwrap(),
        eagle.to_str().unwrap(),
        "--top",
        "3",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, Some(0), "{err}");
    // First class line: index 22, bald eagle (labels from the model's metadata).
    let first = out.lines().nth(1).unwrap();
    assert!(
        first.trim_start().starts_with("22 ") && first.contains("bald eagle"),
        "{out}"
    );
}

#[test]
fn compress_sketch_writes_a_smaller_model_that_runs() {
    let out = tmp("lenet5-sketch.cnnpack");
    let (code, stdout, err) = cnnpack(&[
        "compress",
        "sketch",
        "zoo:lenet5",
        "-o",
        out.to_str().unwrap(),
        "--bases",
        "2",
        "--dense-layers",
        "first",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stdout.contains("conv2") && !stdout.lines().any(|l| l.starts_with("conv1 ")),
        "{stdout}"
    );
    let (code, json, err) = cnnpack(&["inspect", out.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["weight_bytes"].as_u64().unwrap() < 431_080 * 4 / 10,
        "{}",
        v["weight_bytes"]
    );
    let encodings: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["encoding"].as_str().unwrap())
        .collect();
    assert_eq!(
        encodings.iter().filter(|e| **e == "sketch").count(),
        3,
        "{encodings:?}"
    );
    let (code, _, err) = cnnpack(&[
        "compress",
        "sketch",
        "zoo:lenet5",
        "-o",
        out.to_str().unwrap(),
        "--dense-layers",
        "nosuchlayer",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nosuchlayer"), "{err}");
}

/// A model with several unsupported operators fails at load with one error naming each
/// (node and operator), exit status 1, and nothing written.
#[test]
fn unsupported_ops_are_listed_at_once_and_nothing_is_written() {
    use cnnpack::import::proto::ModelProto;
    use prost::Message;
    let g = cnnpack::zoo::build("lenet5", 0).unwrap();
    let mut m = ModelProto::decode(&cnnpack::import::export_onnx(&g).unwrap()[..]).unwrap();
    let nodes = &mut m.graph.as_mut().unwrap().node;
    let relu = nodes
        .iter()
        .position(|n| n.op_type.as_deref() == Some("Relu"))
        .expect("lenet5 has a Relu");
    nodes[relu].op_type = Some("Einsum".into());
    let last = nodes.len() - 1;
    nodes[last].op_type = Some("Hardmax".into());
    let names = [relu, last].map(|i| nodes[i].name.clone().unwrap_or_default());
    let model = tmp("unsupported.onnx");
    std::fs::write(&model, m.encode_to_vec()).unwrap();
    let out = tmp("unsupported.cnnpack");
    let _ = std::fs::remove_file(&out);
    let (code, _, err) = cnnpack(&[
        "compress",
        "sketch",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    for what in ["Einsum", "Hardmax", &names[0], &names[1]] {
        assert!(err.contains(what), "{what} not in: {err}");
    }
    assert!(!out.exists(), "a file was written");
}
