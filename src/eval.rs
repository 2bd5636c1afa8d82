//! Accuracy evaluation and top-k classification.

use crate::data::{DataError, Dataset};
use crate::engine::{Engine, EngineError};
use crate::graph::Tensor;
use serde::Serialize;
use std::time::Instant;

/// Errors during evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or decoding the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Running the model failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model's output is not `[N, classes]`.
    #[error("model output has shape {0:?}; expected [N, classes]")]
    OutputShape(Vec<usize>),
    /// A label does not index the output.
    #[error("label {label} is out of range for {classes} model outputs")]
    LabelRange {
        /// The label.
        label: usize,
        /// The number of outputs.
        classes: usize,
    },
}

/// Result of an evaluation, as printed by `cnnpack eval --json`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent.
    pub top5: f64,
    /// Images evaluated.
    pub count: usize,
    /// Throughput over the whole run (decode + inference), images per second.
    pub images_per_s: f64,
    /// The adapter's name or `cpu`.
    pub device: String,
}

/// Indices of the `k` largest values of `row`, largest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Evaluates `engine` on the first `limit` items of `data` in batches of `batch`.
/// The next batch is decoded on another thread while the current one runs.
/// `progress` is called with the number of items done.
pub fn evaluate(
    engine: &Engine,
    data: &Dataset,
    batch: usize,
    limit: Option<usize>,
    progress: impl Fn(usize),
) -> Result<EvalResult, EvalError> {
    let total = limit.map_or(data.len(), |l| l.min(data.len()));
    let batch = batch.max(1);
    let start = Instant::now();
    let (mut top1, mut top5) = (0usize, 0usize);
    std::thread::scope(|scope| -> Result<(), EvalError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Tensor, Vec<usize>), DataError>>(1);
        scope.spawn(move || {
            for s in (0..total).step_by(batch) {
                if tx.send(data.batch(s, batch.min(total - s))).is_err() {
                    return;
                }
            }
        });
        let mut done = 0;
        for item in rx {
            let (x, labels) = item?;
            let out = engine.run(&x)?.swap_remove(0);
            if out.shape.len() != 2 || out.shape[0] != labels.len() {
                return Err(EvalError::OutputShape(out.shape));
            }
            let classes = out.shape[1];
            for (row, &label) in out.data.chunks(classes).zip(&labels) {
                if label >= classes {
                    return Err(EvalError::LabelRange { label, classes });
                }
                let best = top_k(row, 5);
                top1 += (best[0] == label) as usize;
                top5 += best.contains(&label) as usize;
            }
            done += labels.len();
            progress(done);
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let pct = |c: usize| {
        if total == 0 {
            0.0
        } else {
            100.0 * c as f64 / total as f64
        }
    };
    Ok(EvalResult {
        top1: pct(top1),
        top5: pct(top5),
        count: total,
        images_per_s: total as f64 / secs.max(1e-9),
        device: engine.device_name(),
    })
}
