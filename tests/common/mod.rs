//! Helpers shared by the integration tests (each test file is its own crate and
//! includes this module with `mod common;`, so not every helper is used by every file).
#![allow(dead_code)]

use cnnpack::backend::gpu::GpuContext;
use cnnpack::graph::Tensor;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// The shared test data folder: `$CNNPACK_DATA`, else `../shared/data` beside the crate.
/// `None` (after printing why the caller skips) when it is absent.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var("CNNPACK_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: test data folder {} not found", dir.display());
        None
    }
}

/// True when `CNNPACK_REQUIRE_GPU=1`: a missing adapter is then a failure, not a skip.
pub fn gpu_required() -> bool {
    std::env::var("CNNPACK_REQUIRE_GPU").as_deref() == Ok("1")
}

/// What every GPU helper does without an adapter: panics under `CNNPACK_REQUIRE_GPU=1`,
/// otherwise prints why the caller skips.
fn no_adapter(why: &dyn std::fmt::Display) {
    if gpu_required() {
        panic!("CNNPACK_REQUIRE_GPU=1 but no usable GPU: {why}");
    }
    println!("skipped: no usable GPU: {why}");
}

/// One GPU context per test binary. `None` (printing "skipped") without an adapter,
/// unless `CNNPACK_REQUIRE_GPU=1`, which turns a missing adapter into a failure so CI
/// cannot pass by skipping every GPU test.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    match CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("adapter: {}", c.adapter_name());
            Ok(Arc::new(c))
        }
        Err(e) => Err(e.to_string()),
    }) {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            no_adapter(e);
            None
        }
    }
}

/// A new GPU context of the caller's own, for tests that must not share the binary's
/// device (device loss, faults). Obeys `CNNPACK_REQUIRE_GPU` as [`gpu`] does.
pub fn fresh_gpu() -> Option<Arc<GpuContext>> {
    match GpuContext::new() {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            no_adapter(&e);
            None
        }
    }
}

/// `Engine::new(graph, DeviceKind::Gpu)`: an engine that opens (and owns, so it can
/// `recover`) a device of its own. `None` (printing "skipped") when it fell back to the
/// CPU for want of an adapter; under `CNNPACK_REQUIRE_GPU=1` that is a failure.
pub fn fresh_gpu_engine(graph: cnnpack::graph::Graph) -> Option<cnnpack::engine::Engine> {
    use cnnpack::engine::{DeviceKind, Engine};
    match Engine::with_options(graph, DeviceKind::Gpu, engine_options()) {
        Ok(e) if e.is_gpu() => Some(e),
        Ok(e) => {
            no_adapter(&e.fallback_note().unwrap_or("the engine runs on the CPU"));
            None
        }
        // `engine_options` refuses the fallback under CNNPACK_REQUIRE_GPU=1.
        Err(e) if gpu_required() => panic!("CNNPACK_REQUIRE_GPU=1 but no GPU engine: {e}"),
        Err(e) => panic!("engine builds: {e}"),
    }
}

/// A fresh, empty folder `<temp dir>/cnnpack-<name>-<pid>` (removed first if it exists).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnpack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the temp dir is writable");
    d
}

/// Asserts `max |got − want| ≤ rel · max |want| + abs`, naming the worst element.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, (rel, abs): (f32, f32)) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let max_ref = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (i, d) = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f32), |best, (i, d)| {
            if d > best.1 || d.is_nan() {
                (i, d)
            } else {
                best
            }
        });
    let bound = rel * max_ref + abs;
    assert!(
        d <= bound,
        "{what}: max |d| = {d:e} at {i} (got {}, want {}) > {bound:e} (max|want| {max_ref})",
        got.data[i],
        want.data[i]
    );
}

/// A `.cnnpack` file as a version-1 build wrote it: `json` (headers without `packing`)
/// and `tensors` (pow2 codes word-aligned) in a container that says version 1.
pub fn version_1_file(json: &str, tensors: &[cnnpack::format::cnnpack::RawTensor<'_>]) -> Vec<u8> {
    use cnnpack::format::cnnpack::{assemble, disassemble};
    let bytes = assemble(json, tensors).expect("assemble");
    let (mut meta, tensors) = disassemble(&bytes).expect("disassemble");
    // The checksum covers the graph and the tensors, not the version.
    meta.insert("version".into(), "1".into());
    safetensors::serialize(tensors.iter().map(|t| (t.name.clone(), t)), Some(meta))
        .expect("serialize")
}

/// Engine options that obey `CNNPACK_REQUIRE_GPU=1` (a missing adapter fails
/// `Engine::with_options(.., DeviceKind::Gpu, ..)` instead of falling back to the CPU).
pub fn engine_options() -> cnnpack::engine::EngineOptions {
    cnnpack::engine::EngineOptions {
        require_gpu: gpu_required(),
        ..Default::default()
    }
}
