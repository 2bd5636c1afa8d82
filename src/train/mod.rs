//! The retraining engine on the CPU: training forward with caches, backward kernels
//! for every op of the IR, SGD with momentum/weight decay/schedules and weight masks,
//! and a training loop over a `Dataset`.
//!
//! Loss: mean softmax cross-entropy on the logits. A graph whose first output comes
//! from a Softmax node (the Caffe deploy nets: LeNet, SqueezeNet 1.0) trains on that
//! Softmax's input instead, as Caffe's `SoftmaxWithLoss` does: the training forward
//! skips the final Softmax (see `forward::loss_target`). Softmax does not change the
//! argmax, so accuracies are the same on either value.
//!
//! Compression passes use `Masks` (gradient masks for INQ, forward masks for DNS)
//! and the per-iteration hook of `train`, which may rewrite the masks.

pub mod backward;
pub mod conv;
pub mod forward;
pub mod gpu;
pub mod sgd;

pub use crate::backend::training::SetupError;
pub use backward::{backward, Grads, ParamGrad};
pub use conv::{
    conv2d_backward, conv2d_backward_naive, linear_backward, linear_backward_naive, LayerGrads,
};
pub use forward::{
    forward, loss_target, softmax_cross_entropy, top1_hits, update_bn_running, BnMode, Cache,
    LossTarget,
};
pub use gpu::{throughput, Throughput, TrainDevice};
pub use sgd::{check_trainable, Masks, Schedule, Sgd};

use crate::backend::cpu::CpuError;
use crate::data::{DataError, Dataset};
use crate::format::FormatError;
use crate::graph::{Graph, GraphError, Rng, Tensor};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

/// Errors from training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Running the graph failed.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// The graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Reading a batch failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The GPU trainer failed.
    #[error(transparent)]
    Gpu(#[from] crate::backend::gpu::GpuError),
    /// Writing a checkpoint failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A layer whose weights are not `Weights::Dense` (compressed encodings are not trained).
    #[error("layer '{layer}' holds {encoding} weights; only dense layers can be trained")]
    NotTrainable {
        /// The layer.
        layer: String,
        /// Its weight encoding.
        encoding: &'static str,
    },
    /// A mask that does not fit its layer.
    #[error("mask for layer '{layer}': {reason}")]
    Mask {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// Labels that do not fit the logits.
    #[error("labels: {reason}")]
    Labels {
        /// What is wrong.
        reason: String,
    },
    /// A node the trainer cannot differentiate or find values for.
    #[error("node '{node}': {reason}")]
    Unsupported {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The graph lists no outputs.
    #[error("the graph has no output to put the loss on")]
    NoOutput,
    /// Dataset items do not match the model input.
    #[error("dataset items have shape {found:?}, the model input is {expected:?}")]
    ItemShape {
        /// The model's item shape.
        expected: Vec<usize>,
        /// The dataset's.
        found: Vec<usize>,
    },
    /// A bad option value.
    #[error("option {name}: {reason}")]
    Option {
        /// The option.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at epoch {epoch} iteration {iter}; lower the learning rate")]
    Diverged {
        /// Epoch (0-based).
        epoch: usize,
        /// Global iteration (0-based).
        iter: usize,
        /// The loss value.
        loss: f32,
    },
}

impl From<SetupError> for TrainError {
    /// Each `SetupError` becomes the `TrainError` variant of the same name and message.
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::NotTrainable { layer, encoding } => {
                TrainError::NotTrainable { layer, encoding }
            }
            SetupError::Mask { layer, reason } => TrainError::Mask { layer, reason },
            SetupError::Unsupported { node, reason } => TrainError::Unsupported { node, reason },
            SetupError::NoOutput => TrainError::NoOutput,
        }
    }
}

impl From<crate::backend::gpu::train::GpuTrainError> for TrainError {
    /// Each GPU trainer error becomes the `TrainError` variant of the same message.
    fn from(e: crate::backend::gpu::train::GpuTrainError) -> Self {
        use crate::backend::gpu::train::GpuTrainError as E;
        match e {
            E::Setup(e) => e.into(),
            E::Gpu(e) => TrainError::Gpu(e),
            E::Graph(e) => TrainError::Graph(e),
            E::Labels { reason } => TrainError::Labels { reason },
            E::Unsupported { node, reason } => TrainError::Unsupported { node, reason },
            E::WrongGraph { reason } => TrainError::Option {
                name: "graph",
                reason,
            },
        }
    }
}

/// Settings of a training run. `Default` is Caffe's LeNet solver (lr 0.01, momentum
/// 0.9, weight decay 5e-4, "inv" policy gamma 1e-4 power 0.75, batch 64), 1 epoch.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Items per iteration (the last batch of an epoch may be smaller).
    pub batch: usize,
    /// Base learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Learning-rate policy over the global iteration count.
    pub schedule: Schedule,
    /// Seed of the per-epoch shuffles: the same seed gives identical weights.
    pub seed: u64,
    /// BatchNorm behaviour: `Train` (batch statistics, running stats updated) or
    /// `Frozen` (running statistics used and kept).
    pub bn_mode: BnMode,
    /// Weight of the batch in the running-statistics update (PyTorch default 0.1).
    pub bn_momentum: f32,
    /// Print one summary line per epoch to stderr.
    pub log: bool,
    /// Where the steps run (CPU kernels or the GPU trainer, see `gpu`).
    pub device: TrainDevice,
    /// Random augmentation of every training item (`None`: items as preprocessed);
    /// seeded from `seed`, the epoch and the item index. Evaluation never augments.
    pub augment: Option<crate::data::Augment>,
    /// Knowledge distillation from a fixed teacher (`None`: plain cross-entropy).
    pub distill: Option<Distill>,
}

/// Knowledge distillation (Hinton, Vinyals, Dean 2015): the loss becomes
/// `(1 − alpha)·CE(labels) + alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`,
/// whose gradient on the student logits is `(1 − alpha)·(p − y) + alpha·T·(p_T − q_T)`
/// (per item, averaged over the batch). Compression uses the uncompressed model as the
/// teacher: it carries what it learnt from data the retraining set lacks.
#[derive(Clone, Debug)]
pub struct Distill {
    /// The teacher, run in inference mode (BN running statistics, no masks).
    pub teacher: std::sync::Arc<Graph>,
    /// Softmax temperature T (> 0).
    pub temperature: f32,
    /// Weight of the distillation term in [0, 1].
    pub alpha: f32,
}

/// Blends the cross-entropy `(ce, dce)` of `logits` with the distillation term of `d`
/// on input `x` (see `Distill`).
fn distill_loss(
    d: &Distill,
    x: &Tensor,
    logits: &Tensor,
    ce: f32,
    mut dce: Tensor,
) -> Result<(f32, Tensor), TrainError> {
    let tc = forward(&d.teacher, x, BnMode::Frozen, &Default::default())?;
    let tl = tc.logits();
    if tl.data.len() != logits.data.len() || d.temperature <= 0.0 {
        return Err(TrainError::Option {
            name: "distill",
            reason: format!(
                "teacher logits {:?} vs student {:?}, temperature {}",
                tl.shape, logits.shape, d.temperature
            ),
        });
    }
    let n = logits.shape.first().copied().unwrap_or(1).max(1);
    let k = logits.data.len() / n;
    let (t, a) = (d.temperature as f64, d.alpha as f64);
    let soft = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|v| ((*v as f64 - m) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect()
    };
    let mut kl = 0.0f64;
    for b in 0..n {
        let ps = soft(&logits.data[b * k..(b + 1) * k]);
        let pt = soft(&tl.data[b * k..(b + 1) * k]);
        for j in 0..k {
            if pt[j] > 0.0 {
                kl += pt[j] * (pt[j].ln() - ps[j].max(1e-300).ln());
            }
            let g = &mut dce.data[b * k + j];
            *g = ((1.0 - a) * *g as f64 + a * t * (ps[j] - pt[j]) / n as f64) as f32;
        }
    }
    let loss = (1.0 - a) * ce as f64 + a * t * t * kl / n as f64;
    Ok((loss as f32, dce))
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 1,
            batch: 64,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Inv {
                gamma: 1e-4,
                power: 0.75,
            },
            seed: 1,
            bn_mode: BnMode::Train,
            bn_momentum: 0.1,
            log: false,
            device: TrainDevice::Cpu,
            augment: None,
            distill: None,
        }
    }
}

/// What the per-iteration hook sees, after the update of that iteration.
pub struct IterInfo<'a> {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Iteration within the epoch (0-based).
    pub iter_in_epoch: usize,
    /// Iterations per epoch.
    pub iters_per_epoch: usize,
    /// Global iteration (0-based), the schedule's clock.
    pub iter: usize,
    /// Mean cross-entropy of this batch (before the update).
    pub loss: f32,
    /// Learning rate used.
    pub lr: f32,
    /// The graph with the updated weights.
    pub graph: &'a Graph,
    /// The masks; the hook may change them (DNS prunes and splices here).
    pub masks: &'a mut Masks,
}

/// Loss and accuracy of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (weighted by batch size), measured
    /// during training (before each batch's update).
    pub train_loss: f32,
    /// Training top-1 accuracy in [0, 1], measured the same way.
    pub train_acc: f32,
    /// Test loss after the epoch, when a test set was given.
    pub test_loss: Option<f32>,
    /// Test top-1 accuracy in [0, 1] after the epoch.
    pub test_acc: Option<f32>,
    /// Wall time of the epoch's training (seconds, evaluation excluded).
    pub train_seconds: f32,
}

/// Deterministic permutation of `0..n` for `seed` and `epoch` (Fisher-Yates).
fn shuffle(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.range(0, i);
        order.swap(i, j);
    }
    order
}

/// Gathers the items at `indices` into one batch tensor plus labels, augmenting each
/// item when `augment` is `Some((transform, seed, epoch))`.
fn gather(
    ds: &Dataset,
    indices: &[usize],
    augment: Option<(&crate::data::Augment, u64, usize)>,
) -> Result<(Tensor, Vec<usize>), TrainError> {
    use rayon::prelude::*;
    let items: Vec<(Tensor, Vec<usize>)> = indices
        .par_iter()
        .map(|&i| -> Result<_, TrainError> {
            let (mut t, l) = ds.batch(i, 1)?;
            if let Some((aug, seed, epoch)) = augment {
                let (c, h, w) = crate::data::preprocess::image_dims(ds.item_shape())?;
                let mut rng = crate::data::augment::item_rng(seed, epoch, i);
                aug.apply(&mut t.data, (c, h as usize, w as usize), &mut rng)
                    .map_err(|e| TrainError::Option {
                        name: "augment",
                        reason: e.to_string(),
                    })?;
            }
            Ok((t, l))
        })
        .collect::<Result<_, _>>()?;
    let mut shape = vec![indices.len()];
    shape.extend(ds.item_shape());
    let mut data = Vec::with_capacity(shape.iter().product());
    let mut labels = Vec::with_capacity(indices.len());
    for (t, l) in items {
        data.extend_from_slice(&t.data);
        labels.extend(l);
    }
    Ok((Tensor { shape, data }, labels))
}

/// Mean loss and top-1 accuracy of `graph` on `ds` (BN with running statistics,
/// forward masks applied), in batches of `batch`.
pub fn evaluate(
    graph: &Graph,
    ds: &Dataset,
    masks: &Masks,
    batch: usize,
) -> Result<(f32, f32), TrainError> {
    check_items(graph, ds)?;
    let (mut loss, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
    let mut start = 0;
    while start < ds.len() {
        let (x, labels) = ds.batch(start, batch.max(1))?;
        let cache = forward(graph, &x, BnMode::Frozen, &masks.forward)?;
        let (l, _) = softmax_cross_entropy(cache.logits(), &labels)?;
        loss += l as f64 * labels.len() as f64;
        hits += top1_hits(cache.logits(), &labels);
        seen += labels.len();
        start += labels.len();
    }
    let seen = seen.max(1) as f64;
    Ok(((loss / seen) as f32, (hits as f64 / seen) as f32))
}

fn check_items(graph: &Graph, ds: &Dataset) -> Result<(), TrainError> {
    if ds.item_shape() != graph.input.item_shape.as_slice() {
        return Err(TrainError::ItemShape {
            expected: graph.input.item_shape.clone(),
            found: ds.item_shape().to_vec(),
        });
    }
    Ok(())
}

/// Trains `graph` in place on `train` with SGD; evaluates on `test` after each epoch.
///
/// Each epoch visits the training set in a shuffled order drawn from `opts.seed` and
/// the epoch number, so the same seed gives bit-identical weights. Batches are gathered
/// and preprocessed on a second thread while the current one trains. `on_iter` runs
/// after every update (see `IterInfo`); it may change `masks`, which take effect from
/// the next iteration. Progress display is the caller's job, through `on_iter`.
pub fn train(
    graph: &mut Graph,
    train: &Dataset,
    test: Option<&Dataset>,
    opts: &TrainOptions,
    masks: &mut Masks,
    mut on_iter: impl FnMut(IterInfo<'_>),
) -> Result<Vec<EpochStats>, TrainError> {
    if opts.batch == 0 {
        return Err(TrainError::Option {
            name: "batch",
            reason: "must be at least 1".into(),
        });
    }
    if train.is_empty() {
        return Err(TrainError::Option {
            name: "train",
            reason: "the training set is empty".into(),
        });
    }
    graph.validate()?;
    check_trainable(graph)?;
    check_items(graph, train)?;
    if let Some(t) = test {
        check_items(graph, t)?;
    }
    masks.check(graph)?;
    let mut stepper = gpu::Stepper::new(graph, opts, masks)?;
    let iters_per_epoch = train.len().div_ceil(opts.batch);
    let mut stats = Vec::with_capacity(opts.epochs);
    let mut iter = 0usize;
    for epoch in 0..opts.epochs {
        let t0 = Instant::now();
        let order = shuffle(train.len(), opts.seed, epoch);
        let (mut loss_sum, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
        std::thread::scope(|s| -> Result<(), TrainError> {
            // Two batches in flight: one being trained, one being prepared.
            let (tx, rx) = sync_channel::<Result<(Tensor, Vec<usize>), TrainError>>(1);
            let order = &order;
            s.spawn(move || {
                for idx in order.chunks(opts.batch) {
                    let aug = opts.augment.as_ref().map(|a| (a, opts.seed, epoch));
                    if tx.send(gather(train, idx, aug)).is_err() {
                        break; // the trainer stopped early
                    }
                }
            });
            for (iter_in_epoch, b) in rx.iter().enumerate() {
                let (x, labels) = b?;
                let lr = opts.schedule.lr(opts.lr, iter);
                let (loss, batch_hits) =
                    stepper.step(graph, &x, &labels, masks, lr, epoch, iter)?;
                hits += batch_hits;
                loss_sum += loss as f64 * labels.len() as f64;
                seen += labels.len();
                on_iter(IterInfo {
                    epoch,
                    iter_in_epoch,
                    iters_per_epoch,
                    iter,
                    loss,
                    lr,
                    graph,
                    masks: &mut *masks,
                });
                masks.check(graph)?;
                stepper.masks_changed(masks)?;
                iter += 1;
            }
            Ok(())
        })?;
        let train_seconds = t0.elapsed().as_secs_f32();
        let (test_loss, test_acc) = match test {
            Some(t) => {
                let (l, a) = evaluate(graph, t, masks, opts.batch.max(256))?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let seen_f = seen.max(1) as f64;
        let st = EpochStats {
            epoch,
            train_loss: (loss_sum / seen_f) as f32,
            train_acc: (hits as f64 / seen_f) as f32,
            test_loss,
            test_acc,
            train_seconds,
        };
        if opts.log {
            eprintln!(
                "epoch {}: train loss {:.4} acc {:.4}{} ({:.1} s)",
                epoch + 1,
                st.train_loss,
                st.train_acc,
                match (st.test_loss, st.test_acc) {
                    (Some(l), Some(a)) => format!(", test loss {l:.4} acc {a:.4}"),
                    _ => String::new(),
                },
                train_seconds
            );
        }
        stats.push(st);
    }
    Ok(stats)
}

/// Writes `graph` to `path` as `.cnnpack` (atomic: a crash leaves the old file).
pub fn save_checkpoint(graph: &Graph, path: &Path) -> Result<(), TrainError> {
    crate::format::save(graph, path)?;
    Ok(())
}
