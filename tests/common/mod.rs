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
    // A shape whose data length disagrees would pass the element zip below unchecked.
    assert_eq!(got.data.len(), want.data.len(), "{what}: data length");
    let max_ref = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (i, d) = got
        .data
        .iter()
        .zip(&want.data)
        // Equal values (infinities included: a max over padding only) differ by 0.
        .map(|(a, b)| if a == b { 0.0 } else { (a - b).abs() })
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

/// The one tolerance rule for a kernel against the f64 reference: f32 sums of `k`
/// products in another order drift like a random walk, so `rel = abs = 1e-5 · √k`
/// (`assert_close`'s bound becomes `1e-5 · √k · (1 + max |want|)`).
pub fn tolerance(k: usize) -> (f32, f32) {
    let t = 1e-5 * (k.max(1) as f32).sqrt();
    (t, t)
}

/// A device a test body runs graphs on.
pub enum TestDevice {
    /// The naive f64-accumulating CPU reference (the oracle; checked against itself).
    Reference,
    /// The fast CPU kernels of one instruction set level.
    Cpu(cnnpack::backend::cpu::fast::Isa),
    /// The GPU adapter (lavapipe in CI).
    Gpu(Arc<GpuContext>),
}

impl TestDevice {
    /// The reference, the fast CPU kernels at every level this CPU has (AVX-512 and
    /// AVX2 where it has both), and the GPU adapter (a missing one is a skip, printed,
    /// or a failure under `CNNPACK_REQUIRE_GPU=1`).
    pub fn all() -> Vec<TestDevice> {
        let mut all = vec![TestDevice::Reference];
        all.extend(
            cnnpack::backend::cpu::fast::Isa::available()
                .into_iter()
                .map(TestDevice::Cpu),
        );
        all.extend(gpu().map(TestDevice::Gpu));
        all
    }

    /// What a failure message calls it.
    pub fn name(&self) -> String {
        match self {
            TestDevice::Reference => "reference".into(),
            TestDevice::Cpu(isa) => format!("cpu {}", isa.name()),
            TestDevice::Gpu(ctx) => format!("gpu {}", ctx.adapter_name()),
        }
    }

    /// Runs `graph` on `input` (its batch is `input.shape[0]`); every output in order.
    pub fn run(&self, graph: &cnnpack::graph::Graph, input: &Tensor) -> Vec<Tensor> {
        use cnnpack::backend::cpu::{fast, reference};
        let what = self.name();
        match self {
            TestDevice::Reference => reference::run_graph(graph, input)
                .unwrap_or_else(|e| panic!("{what}: run failed: {e}")),
            TestDevice::Cpu(isa) => {
                let options = cnnpack::tuning::CpuOptions {
                    avx512: isa.avx512(),
                    ..Default::default()
                };
                fast::Prepared::with_options(Arc::new(graph.clone()), &options)
                    .run(input)
                    .unwrap_or_else(|e| panic!("{what}: run failed: {e}"))
            }
            TestDevice::Gpu(ctx) => {
                let batch = input.shape[0];
                cnnpack::backend::gpu::GpuModel::new(ctx.clone(), graph, batch)
                    .and_then(|m| m.run(input))
                    .unwrap_or_else(|e| panic!("{what}: run failed: {e}"))
            }
        }
    }

    /// Runs `graph` on `input` here and on the reference and compares every output
    /// with `tol` (usually `tolerance(k)`).
    pub fn check(
        &self,
        what: &str,
        graph: &cnnpack::graph::Graph,
        input: &Tensor,
        tol: (f32, f32),
    ) {
        let got = self.run(graph, input);
        let want = TestDevice::Reference.run(graph, input);
        assert_eq!(got.len(), want.len(), "{what} on {}: outputs", self.name());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let what = format!("{what} on {} (output {i})", self.name());
            assert_close(&what, g, w, tol);
        }
    }
}

/// Runs the body once per device of [`TestDevice::all`], with `$dev` bound to it:
/// `for_each_device!(|dev| dev.check("conv", &graph, &x, tolerance(k)));`
#[macro_export]
macro_rules! for_each_device {
    (|$dev:ident| $body:expr) => {
        for $dev in common::TestDevice::all() {
            let $dev = &$dev;
            $body;
        }
    };
}

/// One random conv case: a layer and an input for it. Odd sizes, padding on any side,
/// stride 1 and 2, dilation 2, groups (depthwise included), with and without bias,
/// batch 1 and more, as every conv kernel test draws them.
pub struct ConvCase {
    pub conv: cnnpack::graph::Conv2d,
    pub input: Tensor,
    /// Products summed per output (`cin / groups · kh · kw`), for `tolerance`.
    pub k: usize,
    pub what: String,
}

/// `count` random conv cases from `seed`.
pub fn conv_cases(seed: u64, count: usize) -> Vec<ConvCase> {
    use cnnpack::graph::{Conv2d, Rng};
    use cnnpack::weights::Weights;
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|case| {
            let depthwise = case % 7 == 0;
            let groups = if depthwise {
                rng.range(2, 9)
            } else {
                [1, 1, 2, 3][rng.range(0, 3)]
            };
            let cin_g = if depthwise { 1 } else { rng.range(1, 9) };
            let cout = groups * if depthwise { 1 } else { rng.range(1, 7) };
            let k = [1, 2, 3, 5][rng.range(0, 3)];
            let stride = rng.range(1, 2);
            let dilation = if case % 5 == 0 { 2 } else { 1 };
            let pads = [
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(0, 2),
            ];
            let span = dilation * (k - 1) + 1;
            let h = rng.range(span, span + 12);
            let w = rng.range(span, span + 17);
            let n = [1, 5][case % 2];
            let conv = Conv2d {
                kernel: [k, k],
                stride: [stride; 2],
                pads,
                dilation: [dilation; 2],
                groups,
                weight: Weights::Dense(rng.normal_tensor(vec![cout, cin_g, k, k], 1.0)),
                bias: (case % 3 != 0).then(|| rng.normal_tensor(vec![cout], 1.0)),
            };
            let input = rng.normal_tensor(vec![n, cin_g * groups, h, w], 1.0);
            let what = format!(
                "case {case}: n{n} cin{} cout{cout} g{groups} k{k} s{stride} d{dilation} \
                 p{pads:?} {h}x{w}",
                cin_g * groups
            );
            ConvCase {
                conv,
                input,
                k: cin_g * k * k,
                what,
            }
        })
        .collect()
}

/// A graph of one node `op` reading an input of item shape `item`.
pub fn one_node(item: &[usize], op: cnnpack::graph::Op) -> cnnpack::graph::Graph {
    let mut b = cnnpack::graph::GraphBuilder::new("x", item, 1);
    let y = b.push("op", op, &["x"]);
    b.finish(&[&y]).expect("test graph is valid")
}
