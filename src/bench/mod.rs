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

/// Seconds of untimed runs before timing starts, whatever `warmup` says: a GPU idle for
/// a while (a sweep compressing the next model on the CPU) runs at low clocks (an H200
/// idles at 345 MHz against 1980 MHz) until its driver raises them. On an H200 a 20-run
/// AlexNet measurement after such a pause came out 3-4x slower in every layer than the
/// same model measured warm, and 0.3 s of warm-up did not always prevent it.
const MIN_WARMUP_S: f64 = 1.0;

/// Runs `f` `warmup` times untimed (and for at least `MIN_WARMUP_S`), then until `runs`
/// samples or `budget_s` seconds (at least 3 samples) are collected; returns the summary.
pub fn time_runs<E>(
    warmup: usize,
    runs: usize,
    budget_s: f64,
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Timing, E> {
    let warm = Instant::now();
    let mut done = 0;
    while done < warmup || warm.elapsed().as_secs_f64() < MIN_WARMUP_S {
        f()?;
        done += 1;
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
