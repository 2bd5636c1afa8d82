//! Timing and roofline helpers shared by `cnnpack bench` and the criterion benches.

pub mod compare;
pub mod gpu_peak;
pub mod model;
pub mod peak;
pub mod plot;
pub mod report;
pub mod sweep;

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Summary of repeated timings, in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Number of timed runs.
    pub runs: usize,
}

impl Timing {
    /// Summarises raw samples (ms); `None` when there are none.
    pub fn from_samples(mut samples: Vec<f64>) -> Option<Timing> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Some(Timing {
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            min_ms: samples[0],
            runs: samples.len(),
        })
    }
}

/// Runs `f` `warmup` times untimed, then until `runs` samples or `budget_s` seconds
/// (at least 3 samples) are collected; returns the summary.
pub fn time_runs<E>(
    warmup: usize,
    runs: usize,
    budget_s: f64,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Timing, E> {
    for _ in 0..warmup {
        f()?;
    }
    let start = Instant::now();
    let mut samples = Vec::with_capacity(runs);
    while samples.len() < runs && (samples.len() < 3 || start.elapsed().as_secs_f64() < budget_s) {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing::from_samples(samples).expect("at least three samples were taken"))
}
