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

/// One GPU context per test binary. `None` (printing "skipped") without an adapter,
/// unless `CNNPACK_REQUIRE_GPU=1`, which turns a missing adapter into a failure so CI
/// cannot pass by skipping every GPU test.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(c) => {
            eprintln!("adapter: {}", c.adapter_name());
            Some(Arc::new(c))
        }
        Err(e) => {
            if std::env::var("CNNPACK_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("CNNPACK_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            None
        }
    })
    .clone()
    .or_else(|| {
        println!("skipped: no GPU adapter");
        None
    })
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
        require_gpu: std::env::var("CNNPACK_REQUIRE_GPU").as_deref() == Ok("1"),
        ..Default::default()
    }
}
