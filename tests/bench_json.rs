//! `cnnpack bench --json` against the schema documented in docs/benchmarks.md ("JSON
//! schema"): the structs below mirror that section field by field and reject unknown
//! fields, so a field added, renamed or removed without updating the documentation (and
//! `SCHEMA_VERSION`) fails here.

mod common;
use serde::Deserialize;
use std::process::Command;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Report {
    schema_version: u32,
    cnnpack_version: String,
    threads: usize,
    load_average: Option<[f64; 3]>,
    cpu_peak: Option<CpuPeak>,
    gpu_peak: Option<GpuPeak>,
    runs: Vec<Run>,
    comparisons: Vec<Comparison>,
    sweep: Vec<SweepPoint>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CpuPeak {
    fma_gflops: f64,
    read_gbps: f64,
    copy_gbps: f64,
    threads: usize,
    kernel: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // present for the schema check only: no GPU run in this test
struct GpuPeak {
    adapter: String,
    fma_gflops: f64,
    read_gbps: f64,
    copy_gbps: f64,
    popcount_gops: f64,
    buffer_bytes: u64,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Run {
    model: String,
    role: String,
    sweep_value: Option<f64>,
    result: ModelBench,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ModelBench {
    device: String,
    batch: usize,
    weight_bytes: u64,
    latency: Timing,
    images_per_s: f64,
    layers: Vec<Layer>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Timing {
    p50_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    runs: usize,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Layer {
    name: String,
    op: String,
    encoding: String,
    kernel: Option<String>,
    ms: f64,
    flops: u64,
    bytes: u64,
    gflops: f64,
    gbps: f64,
    roof_fraction: Option<f64>,
    bound: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Comparison {
    device: String,
    batch: usize,
    base_p50_ms: f64,
    p50_ms: f64,
    speedup: f64,
    base_weight_bytes: u64,
    weight_bytes: u64,
    bytes_ratio: f64,
    conv_speedup: f64,
    fc_speedup: f64,
    layers: Vec<LayerSpeedup>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LayerSpeedup {
    name: String,
    op: String,
    base_encoding: String,
    encoding: String,
    base_ms: f64,
    ms: f64,
    speedup: f64,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct SweepPoint {
    kind: String,
    value: f64,
    comparison: Comparison,
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn check_comparison(c: &Comparison, base_encoding: &str, encoding: &str) {
    assert!(close(c.speedup, c.base_p50_ms / c.p50_ms), "{c:?}");
    assert!(close(
        c.bytes_ratio,
        c.weight_bytes as f64 / c.base_weight_bytes as f64
    ));
    assert!(c.conv_speedup > 0.0 && c.fc_speedup > 0.0);
    let weighted: Vec<&LayerSpeedup> = c
        .layers
        .iter()
        .filter(|l| l.op == "Conv" || l.op == "Linear")
        .collect();
    assert_eq!(weighted.len(), 4, "lenet5 has 2 conv + 2 fc layers: {c:?}");
    for l in weighted {
        assert_eq!(l.base_encoding, base_encoding);
        assert_eq!(l.encoding, encoding);
    }
    for l in &c.layers {
        assert!(!l.name.is_empty() && !l.op.is_empty());
        assert!(close(l.speedup, l.base_ms / l.ms.max(1e-12)), "{l:?}");
    }
}

#[test]
fn bench_json_matches_the_documented_schema() {
    let dir = common::temp_dir("bench-json");
    let json = dir.join("bench.json");
    let svg = dir.join("plots");
    let out = Command::new(env!("CARGO_BIN_EXE_cnnpack"))
        .args(["bench", "zoo:lenet5", "--device", "cpu", "--batch", "1,3"])
        .args([
            "--runs",
            "3",
            "--budget",
            "0.05",
            "--baseline",
            "zoo:lenet5",
        ])
        .args(["--sweep", "sketch", "--values", "1,2"])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("the cnnpack binary runs");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("bench --json wrote its file");
    let r: Report = serde_json::from_str(&text).expect("the JSON matches the documented schema");

    assert_eq!(r.schema_version, 2);
    assert_eq!(r.cnnpack_version, env!("CARGO_PKG_VERSION"));
    assert!(r.threads >= 1);
    if let Some(l) = r.load_average {
        assert!(l.iter().all(|x| *x >= 0.0));
    }
    // --svg implies --peak: the CPU roof is there, no GPU was asked for.
    let peak = r.cpu_peak.as_ref().expect("--svg measures the CPU peak");
    assert!(peak.fma_gflops > 0.0 && peak.read_gbps > 0.0 && peak.copy_gbps > 0.0);
    assert!(peak.threads >= 1 && !peak.kernel.is_empty());
    assert!(r.gpu_peak.is_none());

    // Per batch: the model, its baseline and two sweep variants.
    assert_eq!(
        r.runs.len(),
        2 * 4,
        "{:?}",
        r.runs.iter().map(|r| &r.role).collect::<Vec<_>>()
    );
    for run in &r.runs {
        let b = &run.result;
        assert_eq!(b.device, "cpu");
        assert!(b.batch == 1 || b.batch == 3);
        match run.role.as_str() {
            "model" | "baseline" => {
                assert_eq!(run.model, "zoo:lenet5");
                assert!(run.sweep_value.is_none());
            }
            "sweep" => {
                let v = run.sweep_value.expect("sweep runs carry their value");
                assert_eq!(run.model, format!("zoo:lenet5@sketch={v}"));
            }
            other => panic!("unknown role {other}"),
        }
        assert!(b.latency.runs >= 3);
        assert!(b.latency.min_ms <= b.latency.p50_ms && b.latency.p50_ms <= b.latency.p90_ms);
        assert!(close(
            b.images_per_s,
            b.batch as f64 / (b.latency.p50_ms / 1e3)
        ));
        assert!(b.weight_bytes > 0);
        assert!(
            b.layers.iter().any(|l| l.op == "Conv") && b.layers.iter().any(|l| l.op == "Linear")
        );
        for l in &b.layers {
            assert!(!l.name.is_empty() && !l.encoding.is_empty() && l.ms >= 0.0);
            // CPU kernels by function: the zoo LeNet-5's convs are packed (or, without
            // AVX2+FMA, the in-place GEMM), its fc layers dense, sketched in the sweep.
            if l.op == "Conv" {
                assert!(
                    matches!(
                        l.kernel.as_deref(),
                        Some("conv2d_packed" | "conv2d" | "decoded+conv2d")
                    ),
                    "{l:?}"
                );
            }
            if l.op == "Linear" {
                let want = match (l.encoding.as_str(), b.batch) {
                    ("sketch", 1) => {
                        &["sketch_linear (avx2 triplets)", "sketch_linear (masked)"][..]
                    }
                    ("sketch", _) => &[
                        "sketch_linear (avx512 masks)",
                        "sketch_linear (decode+gemv)",
                        "sketch_linear (decode+gemm)",
                        "sketch_linear (masked)",
                    ][..],
                    ("dense", 1) => &["linear (gemv)", "linear (sgemm)"][..],
                    ("dense", _) => &["linear (sgemm)", "linear (gemv)", "linear (gemm)"][..],
                    (other, _) => panic!("unexpected encoding {other}"),
                };
                assert!(want.contains(&l.kernel.as_deref().unwrap_or("-")), "{l:?}");
            }
            if l.op == "Conv" || l.op == "Linear" {
                assert!(l.flops > 0 && l.bytes > 0 && l.gflops >= 0.0 && l.gbps >= 0.0);
                assert!(l.roof_fraction.is_some_and(|f| f >= 0.0));
                assert!(matches!(l.bound.as_deref(), Some("compute" | "memory")));
            }
        }
    }
    // The model against itself as baseline: dense -> dense, same bytes.
    assert_eq!(r.comparisons.len(), 2);
    for c in &r.comparisons {
        assert_eq!(c.device, "cpu");
        assert!(c.batch == 1 || c.batch == 3);
        assert_eq!(c.weight_bytes, c.base_weight_bytes);
        check_comparison(c, "dense", "dense");
    }
    // The sweep: m = 1, 2 at both batches, smaller than dense, more bytes with more bases.
    assert_eq!(r.sweep.len(), 4);
    for p in &r.sweep {
        assert_eq!(p.kind, "sketch");
        assert!(p.value == 1.0 || p.value == 2.0);
        assert!(
            p.comparison.bytes_ratio < 0.25,
            "{:?}",
            p.comparison.bytes_ratio
        );
        check_comparison(&p.comparison, "dense", "sketch");
    }
    let ratio = |v: f64| {
        r.sweep
            .iter()
            .find(|p| p.value == v)
            .map(|p| p.comparison.bytes_ratio)
            .expect("value swept")
    };
    assert!(ratio(1.0) < ratio(2.0));

    // The plots: a roofline per batch and the sweep chart.
    for name in [
        "roofline-lenet5-cpu-b1.svg",
        "roofline-lenet5-cpu-b3.svg",
        "speedup-lenet5-sketch.svg",
    ] {
        let s = std::fs::read_to_string(svg.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.starts_with("<svg"), "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_rejects_a_bad_sweep() {
    let out = Command::new(env!("CARGO_BIN_EXE_cnnpack"))
        .args(["bench", "zoo:lenet5", "--device", "cpu", "--sweep", "bogus"])
        .output()
        .expect("the cnnpack binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("sketch"), "{err}");
}
