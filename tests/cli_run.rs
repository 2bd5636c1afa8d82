//! `cnnpack run` end to end: the ONNX Runtime golden pairs through the binary on the GPU
//! and the CPU, and bad input files that must give a clear error and exit code 1.
//! Tolerance: |got - want| <= 1e-5 * max|want| + 1e-6 (goldens come from ONNX Runtime's
//! f32 kernels; agreement to about 1e-5 relative is what its README promises).

mod common;
use cnnpack::format::npy::{read_npy, write_npy};
use cnnpack::graph::Tensor;
use common::data_dir;
use std::path::PathBuf;
use std::process::Command;

fn cnnpack(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnpack"))
        .args(args)
        .output()
        .expect("the cnnpack binary runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "cnnpack panicked: {text}");
    (out.status.success(), text)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnpack-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn golden(model: &str, dir: &str, device: &str) {
    let Some(data) = data_dir() else { return };
    let (model, input, want) = (
        data.join(model),
        data.join(dir).join("golden/input.npy"),
        data.join(dir).join("golden/output.npy"),
    );
    let out = tmp(&format!("{}-{device}.npy", dir.replace('/', "_")));
    let (ok, text) = cnnpack(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        device,
    ]);
    assert!(ok, "{text}");
    if device == "gpu" && common::gpu_required() {
        assert!(
            !text.contains("running on the CPU"),
            "CNNPACK_REQUIRE_GPU=1 but ran on the CPU: {text}"
        );
    }
    let (got, want) = (read_npy(&out).unwrap(), read_npy(&want).unwrap());
    assert_eq!(got.shape, want.shape);
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got.max_abs_diff(&want);
    assert!(
        diff <= 1e-5 * scale + 1e-6,
        "{model:?} on {device}: max diff {diff} (max |want| {scale})"
    );
}

#[test]
fn golden_squeezenet_cpu() {
    golden(
        "imagenet/squeezenet1.0/squeezenet1.0.onnx",
        "imagenet/squeezenet1.0",
        "cpu",
    );
}
#[test]
fn golden_squeezenet_gpu() {
    golden(
        "imagenet/squeezenet1.0/squeezenet1.0.onnx",
        "imagenet/squeezenet1.0",
        "gpu",
    );
}
#[test]
fn golden_lenet_cpu() {
    golden("lenet/lenet5_original.onnx", "lenet", "cpu");
}
#[test]
fn golden_lenet_gpu() {
    golden("lenet/lenet5_original.onnx", "lenet", "gpu");
}
#[test]
fn golden_resnet20_cpu() {
    golden("cifar/resnet20.onnx", "cifar", "cpu");
}
#[test]
fn golden_resnet20_gpu() {
    golden("cifar/resnet20.onnx", "cifar", "gpu");
}

#[test]
fn fc_only_model_takes_2d_input_and_cnnpack_files_work() {
    // LeNet-300-100 from the zoo takes [N, 784]; run it from a .cnnpack file.
    let model = tmp("lenet300100.cnnpack");
    let (ok, text) = cnnpack(&["convert", "zoo:lenet300100", "-o", model.to_str().unwrap()]);
    assert!(ok, "{text}");
    let x = tmp("x784.npy");
    let mut rng = cnnpack::graph::Rng::new(5);
    write_npy(&x, &rng.normal_tensor(vec![3, 784], 1.0)).unwrap();
    let y = tmp("y784.npy");
    for device in ["cpu", "gpu"] {
        let (ok, text) = cnnpack(&[
            "run",
            model.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
            "--device",
            device,
        ]);
        assert!(ok, "{text}");
        assert_eq!(read_npy(&y).unwrap().shape, vec![3, 10]);
    }
}

#[test]
fn fixed_batch_model_runs_other_batch_sizes() {
    let Some(data) = data_dir() else { return };
    // mnist-8 fixes its batch at 1 in the file; a batch of 4 still runs.
    let x = tmp("mnist8-x.npy");
    write_npy(&x, &Tensor::full(vec![4, 1, 28, 28], 0.5)).unwrap();
    let y = tmp("mnist8-y.npy");
    let model = data.join("onnx-zoo/mnist-8.onnx");
    let (ok, text) = cnnpack(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{text}");
    assert_eq!(read_npy(&y).unwrap().shape, vec![4, 10]);
}

/// A v1.0 .npy header for `descr`, `fortran`, `shape` (padded to 64 bytes), then `payload`.
fn npy_bytes(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran { "True" } else { "False" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(payload);
    out
}

#[test]
fn bad_input_files_are_clear_errors() {
    let model = "zoo:lenet5";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "f64.npy",
            npy_bytes("<f8", false, "(1, 1, 28, 28)", &[0u8; 784 * 8]),
            "<f8",
        ),
        (
            "fortran.npy",
            npy_bytes("<f4", true, "(1, 1, 28, 28)", &[0u8; 784 * 4]),
            "ortran",
        ),
        (
            "truncated.npy",
            npy_bytes("<f4", false, "(1, 1, 28, 28)", &[0u8; 100]),
            "bytes",
        ),
        (
            "wrongshape.npy",
            npy_bytes("<f4", false, "(1, 3, 28, 28)", &[0u8; 3 * 784 * 4]),
            "[N, 1, 28, 28]",
        ),
        (
            "wrongrank.npy",
            npy_bytes("<f4", false, "(784,)", &[0u8; 784 * 4]),
            "[N, 1, 28, 28]",
        ),
        ("garbage.npy", b"not a numpy file at all".to_vec(), "npy"),
    ];
    for (name, bytes, needle) in cases {
        let path = tmp(name);
        std::fs::write(&path, bytes).unwrap();
        let out = tmp("never.npy");
        let (ok, text) = cnnpack(&[
            "run",
            model,
            "--input",
            path.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(!ok, "{name}: accepted");
        assert!(
            text.contains(needle),
            "{name}: message lacks '{needle}': {text}"
        );
        assert!(!out.exists(), "{name}: wrote an output anyway");
    }
    let (ok, text) = cnnpack(&[
        "run",
        model,
        "--input",
        "/nonexistent/x.npy",
        "--output",
        "/tmp/y.npy",
    ]);
    assert!(!ok && text.contains("/nonexistent/x.npy"), "{text}");
}
