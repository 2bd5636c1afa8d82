//! The device choice of the training loop: one step on the CPU kernels of this module
//! or on the GPU trainer (`crate::backend::gpu::train`), and the training-throughput
//! measurement behind `cnnpack train --bench-iters`.

use super::{
    backward, distill_loss, forward, softmax_cross_entropy, top1_hits, update_bn_running, BnMode,
    Distill, Masks, Sgd, TrainError, TrainOptions,
};
use crate::backend::gpu::train::{GpuTrainOptions, GpuTrainer};
use crate::backend::gpu::GpuContext;
use crate::graph::{Graph, Rng, Tensor};
use std::sync::Arc;
use std::time::Instant;

/// Where training steps run.
#[derive(Clone, Debug, Default)]
pub enum TrainDevice {
    /// The CPU kernels (`forward`, `backward`, `Sgd`).
    #[default]
    Cpu,
    /// The WGSL training kernels on this context. Weights are read back into the graph
    /// after every step (the per-iteration hook sees them); evaluation stays on the CPU.
    Gpu(Arc<GpuContext>),
}

/// One training step on the chosen device, with the optimiser state it keeps.
pub(crate) enum Stepper {
    Cpu {
        sgd: Sgd,
        bn_mode: BnMode,
        bn_momentum: f32,
        distill: Option<Distill>,
    },
    Gpu(Box<GpuTrainer>),
}

impl Stepper {
    pub(crate) fn new(
        graph: &Graph,
        opts: &TrainOptions,
        masks: &Masks,
    ) -> Result<Self, TrainError> {
        Ok(match &opts.device {
            TrainDevice::Cpu => Stepper::Cpu {
                sgd: Sgd::new(opts.momentum, opts.weight_decay),
                bn_mode: opts.bn_mode,
                bn_momentum: opts.bn_momentum,
                distill: opts.distill.clone(),
            },
            // The teacher's forward pass and the blended loss gradient exist on the CPU only.
            TrainDevice::Gpu(_) if opts.distill.is_some() => {
                return Err(TrainError::Option {
                    name: "distill",
                    reason: "distillation trains on the CPU only: use --device cpu".into(),
                })
            }
            TrainDevice::Gpu(ctx) => Stepper::Gpu(Box::new(GpuTrainer::new(
                ctx.clone(),
                graph,
                GpuTrainOptions {
                    momentum: opts.momentum,
                    weight_decay: opts.weight_decay,
                    bn_mode: opts.bn_mode,
                    bn_momentum: opts.bn_momentum,
                    input_grad: false,
                    ..GpuTrainOptions::default()
                },
                masks,
            )?)),
        })
    }

    /// Forward, loss, backward and update on one batch; `graph` holds the updated
    /// parameters afterwards. Returns the batch's mean loss and top-1 hits (before the
    /// update). A non-finite loss is an error (`epoch` and `iter` name where).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &mut self,
        graph: &mut Graph,
        x: &Tensor,
        labels: &[usize],
        masks: &Masks,
        lr: f32,
        epoch: usize,
        iter: usize,
    ) -> Result<(f32, usize), TrainError> {
        match self {
            Stepper::Cpu {
                sgd,
                bn_mode,
                bn_momentum,
                distill,
            } => {
                let cache = forward(graph, x, *bn_mode, &masks.forward)?;
                let (loss, dlogits) = softmax_cross_entropy(cache.logits(), labels)?;
                let (loss, dlogits) = match distill {
                    Some(d) => distill_loss(d, x, cache.logits(), loss, dlogits)?,
                    None => (loss, dlogits),
                };
                if !loss.is_finite() {
                    return Err(TrainError::Diverged { epoch, iter, loss });
                }
                let hits = top1_hits(cache.logits(), labels);
                let (grads, _) = backward(graph, &cache, dlogits, false)?;
                sgd.step(graph, &grads, masks, lr)?;
                if *bn_mode == BnMode::Train {
                    update_bn_running(graph, &cache, *bn_momentum);
                }
                Ok((loss, hits))
            }
            Stepper::Gpu(t) => {
                let out = t.step(x, labels, lr)?;
                if !out.loss.is_finite() {
                    return Err(TrainError::Diverged {
                        epoch,
                        iter,
                        loss: out.loss,
                    });
                }
                t.sync_graph(graph)?;
                Ok((out.loss, top1_hits(&out.logits, labels)))
            }
        }
    }

    /// Tells the GPU trainer about masks the per-iteration hook changed.
    pub(crate) fn masks_changed(&mut self, masks: &Masks) -> Result<(), TrainError> {
        match self {
            Stepper::Cpu { .. } => Ok(()),
            Stepper::Gpu(t) => Ok(t.set_masks(masks)?),
        }
    }
}

/// Result of [`throughput`].
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// Timed steps.
    pub iters: usize,
    /// Images per step.
    pub batch: usize,
    /// Wall seconds of the timed steps (the warm-up step excluded).
    pub seconds: f64,
    /// Training images per second: `iters * batch / seconds`.
    pub images_per_second: f64,
}

/// Times `iters` full training steps (forward, loss, backward, update, weights back in
/// the graph) of `graph` at batch `batch` on `opts.device`, after one untimed warm-up
/// step (GPU: records the program and compiles the pipelines). The batch is synthetic
/// (normal noise, labels cycling over the classes): speed does not depend on the data.
pub fn throughput(
    graph: &Graph,
    opts: &TrainOptions,
    batch: usize,
    iters: usize,
) -> Result<Throughput, TrainError> {
    if batch == 0 || iters == 0 {
        return Err(TrainError::Option {
            name: "bench",
            reason: "batch and iterations must be at least 1".into(),
        });
    }
    let mut g = graph.clone();
    let masks = Masks::new();
    let mut shape = vec![batch];
    shape.extend(&g.input.item_shape);
    let x = Rng::new(opts.seed).normal_tensor(shape, 1.0);
    let classes = g
        .infer_shapes(1)?
        .get(&super::loss_target(&g)?.logits)
        .map_or(1, |s| s.iter().product::<usize>().max(1));
    let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
    let mut stepper = Stepper::new(&g, opts, &masks)?;
    stepper.step(&mut g, &x, &labels, &masks, opts.lr, 0, 0)?;
    let t0 = Instant::now();
    for it in 0..iters {
        stepper.step(&mut g, &x, &labels, &masks, opts.lr, 0, it + 1)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Throughput {
        iters,
        batch,
        seconds,
        images_per_second: (iters * batch) as f64 / seconds.max(1e-9),
    })
}
