//! The document `cnnpack bench --json OUT` writes. Its schema is documented field by
//! field in docs/benchmarks.md ("JSON schema"); `SCHEMA_VERSION` changes whenever a field
//! is renamed, removed or changes meaning (adding a field also bumps it, so that strict
//! readers fail loudly instead of silently ignoring data).

use super::compare::Comparison;
use super::gpu_peak::GpuPeak;
use super::model::ModelBench;
use super::peak::CpuPeak;
use super::sweep::SweepPoint;
use serde::Serialize;

/// Version of the `bench --json` schema described in docs/benchmarks.md.
pub const SCHEMA_VERSION: u32 = 2;

/// Why a model was timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The MODEL argument.
    Model,
    /// The `--baseline` model.
    Baseline,
    /// A compressed variant of MODEL made by `--sweep`.
    Sweep,
}

/// One model timed on one device at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// The model as given on the command line (path or `zoo:NAME`); sweep variants are
    /// named `MODEL@KIND=VALUE`.
    pub model: String,
    /// Why it was timed.
    pub role: Role,
    /// The swept parameter value, for `role = sweep`.
    pub sweep_value: Option<f64>,
    /// Timings.
    pub result: ModelBench,
}

/// Everything one `cnnpack bench` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// `SCHEMA_VERSION`.
    pub schema_version: u32,
    /// The cnnpack version that wrote the file.
    pub cnnpack_version: String,
    /// CPU worker threads (rayon) cnnpack used.
    pub threads: usize,
    /// Output of `uptime`-style load average (1, 5, 15 min) when the run started, if the
    /// OS reports it (`/proc/loadavg`): timings on a loaded machine are noisy.
    pub load_average: Option<[f64; 3]>,
    /// CPU peak rates, with `--peak` (or `--svg`) and the cpu device.
    pub cpu_peak: Option<CpuPeak>,
    /// GPU peak rates, with `--peak` (or `--svg`) and the gpu device.
    pub gpu_peak: Option<GpuPeak>,
    /// Every timed configuration.
    pub runs: Vec<Run>,
    /// MODEL against `--baseline`, per device and batch.
    pub comparisons: Vec<Comparison>,
    /// `--sweep` results: each value against MODEL, per device and batch.
    pub sweep: Vec<SweepPoint>,
}

impl BenchReport {
    /// An empty report stamped with the schema and crate versions, thread count and load.
    pub fn new() -> BenchReport {
        BenchReport {
            schema_version: SCHEMA_VERSION,
            cnnpack_version: env!("CARGO_PKG_VERSION").to_string(),
            threads: rayon::current_num_threads(),
            load_average: load_average(),
            cpu_peak: None,
            gpu_peak: None,
            runs: Vec::new(),
            comparisons: Vec::new(),
            sweep: Vec::new(),
        }
    }
}

impl Default for BenchReport {
    fn default() -> Self {
        BenchReport::new()
    }
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg` (Linux), else `None`.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}
