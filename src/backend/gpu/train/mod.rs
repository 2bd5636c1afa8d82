//! Training on the GPU: the forward pass with every activation kept, softmax
//! cross-entropy, the backward pass (shaders/train_*.wgsl) and the SGD update with
//! gradient and forward masks, recorded once per batch size and run as one command
//! buffer per step. The CPU trainer (the `train` module) is the reference it is tested
//! against (tests/gpu_train.rs).
//!
//! The forward reuses the inference kernels: the tiled implicit-GEMM conv and fc on the
//! trainer's own weight buffers, and inference's encoder (`encode::encode_stateless`) for
//! pooling, activations, Add, ConstBinary, LRN and Concat; BatchNorm has a training
//! forward here (batch statistics). Every value keeps its own activation and
//! gradient buffer (Flatten/Identity alias their input), gradient buffers are cleared at
//! the start of each step and each backward kernel adds into them, so values read by
//! several nodes (shortcuts, Fire modules) sum their gradients in node order.
//!
//! Determinism: no float atomics; every reduction (weight gradients split into
//! shape-determined chunks, bias and BatchNorm sums as fixed trees) has an order fixed
//! by the shapes, so the same inputs on the same device give the same bits.
//!
//! Not differentiated on the GPU (an error names the node): Pad, Slice, a Softmax
//! inside the graph, and ConstBinary whose input needs a gradient.
//!
//! Files: this one holds the trainer, its options, errors and public API; `buffers`
//! the device memory (parameters, masks, a program's buffers, readback); `program` the
//! recording of one batch size's dispatch lists; `forward` and `backward` the encoding
//! of one node in each direction; `kernels` the host side of the training shaders.

mod backward;
mod buffers;
mod forward;
mod kernels;
mod program;

use super::context::{scoped, Dispatch, GpuContext};
use super::GpuError;
use crate::backend::training::{
    check_trainable, loss_target, BnMode, Grads, LossTarget, Masks, ParamGrad, SetupError,
};
use crate::graph::{Graph, GraphError, Op, Tensor};
use buffers::{buffer, mask_f32, read_f32, read_many, set_dense, Layer, Program};
use kernels::Dummies;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Errors of the GPU trainer. `train::TrainError` converts from it (`From`), variant by
/// variant into its twins of the same message.
#[derive(Debug, thiserror::Error)]
pub enum GpuTrainError {
    /// The graph or masks do not fit training.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The device failed or refused a kernel.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Labels that do not fit the logits.
    #[error("labels: {reason}")]
    Labels {
        /// What is wrong.
        reason: String,
    },
    /// A node the trainer cannot find values for.
    #[error("node '{node}': {reason}")]
    Unsupported {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// `sync_graph` got a graph other than the one the trainer was made from (the
    /// message is the one `TrainError::Option` gives for option "graph").
    #[error("option graph: {reason}")]
    WrongGraph {
        /// What differs.
        reason: String,
    },
}

/// Settings of a [`GpuTrainer`] (the SGD and BatchNorm fields of `TrainOptions`).
#[derive(Clone, Copy, Debug)]
pub struct GpuTrainOptions {
    /// SGD momentum.
    pub momentum: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// BatchNorm behaviour (batch statistics or running statistics).
    pub bn_mode: BnMode,
    /// Weight of the batch in the running-statistics update.
    pub bn_momentum: f32,
    /// Also compute dL/d(graph input) (gradient checks need it; training does not).
    pub input_grad: bool,
    /// Kernel for the conv/fc input gradient.
    pub data_grad: DataGradKernel,
}

/// Which kernel computes conv/fc input gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataGradKernel {
    /// `Gather` on CPU adapters (lavapipe), `Tiled` on GPUs.
    #[default]
    Auto,
    /// 32x32 tiles of (input channel, pixel) in workgroup memory, an implicit GEMM over
    /// (output channel, tap): the GPU kernel. On lavapipe (LeNet-5 conv2, batch 32) it
    /// took 2.6x as long as `Gather`: workgroup barriers and the per-element index math
    /// of the staged loads cost more there than the loads they save.
    Tiled,
    /// One invocation per input element, summing over the output channels and taps
    /// that read it.
    Gather,
}

impl Default for GpuTrainOptions {
    fn default() -> Self {
        GpuTrainOptions {
            momentum: 0.9,
            weight_decay: 5e-4,
            bn_mode: BnMode::Train,
            bn_momentum: 0.1,
            input_grad: false,
            data_grad: DataGradKernel::Auto,
        }
    }
}

/// What one step returns.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f32,
    /// The logits of the batch (before the update), `[N, classes...]`.
    pub logits: Tensor,
}

/// A graph set up for training on a [`GpuContext`]: parameters, velocities and masks
/// resident on the device, one recorded program per batch size.
pub struct GpuTrainer {
    ctx: Arc<GpuContext>,
    graph: Graph,
    opts: GpuTrainOptions,
    target: LossTarget,
    layers: HashMap<usize, Layer>,
    /// Nodes whose output reaches the loss (they get a backward and an update).
    active: HashSet<usize>,
    hyper: wgpu::Buffer,
    dummies: Dummies,
    masks: Masks,
    programs: HashMap<usize, Program>,
}

impl std::fmt::Debug for GpuTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTrainer")
            .field("nodes", &self.graph.nodes.len())
            .field("batches", &self.programs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl GpuTrainer {
    /// Uploads the parameters of `graph` (dense conv/fc, BatchNorm) and `masks`.
    /// Programs are recorded on the first step of each batch size.
    pub fn new(
        ctx: Arc<GpuContext>,
        graph: &Graph,
        opts: GpuTrainOptions,
        masks: &Masks,
    ) -> Result<GpuTrainer, GpuTrainError> {
        graph.validate()?;
        check_trainable(graph)?;
        masks.check(graph)?;
        let target = loss_target(graph)?;
        let layers = buffers::upload_layers(&ctx, graph, masks)?;
        // Which nodes reach the loss: walk back from the logits.
        let mut need: HashSet<&str> = HashSet::from([target.logits.as_str()]);
        let mut active = HashSet::new();
        for (i, node) in graph.nodes.iter().enumerate().rev() {
            if Some(i) == target.skipped_softmax || !need.contains(node.output.as_str()) {
                continue;
            }
            active.insert(i);
            for v in &node.inputs {
                need.insert(v);
            }
        }
        let hyper = buffer(&ctx, "train hyper", 1);
        let dummies = Dummies::new(&ctx);
        Ok(GpuTrainer {
            ctx,
            graph: graph.clone(),
            opts,
            target,
            layers,
            active,
            hyper,
            dummies,
            masks: masks.clone(),
            programs: HashMap::new(),
        })
    }

    /// The context the trainer runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Uploads `masks` when they differ from the ones in use and rewrites W⊙T.
    pub fn set_masks(&mut self, masks: &Masks) -> Result<(), GpuTrainError> {
        if *masks == self.masks {
            return Ok(());
        }
        masks.check(&self.graph)?;
        let ctx = self.ctx.clone();
        let mut ds = vec![];
        scoped(&ctx, "masks", || {
            for (&i, layer) in &self.layers {
                if let Layer::Dense {
                    w,
                    wf,
                    gmask,
                    fmask,
                    ..
                } = layer
                {
                    let name = &self.graph.nodes[i].name;
                    let g = mask_f32(masks.grad.get(name), w.len);
                    let f = mask_f32(masks.forward.get(name), w.len);
                    ctx.queue().write_buffer(gmask, 0, bytemuck::cast_slice(&g));
                    ctx.queue().write_buffer(fmask, 0, bytemuck::cast_slice(&f));
                    ds.push(kernels::apply_mask(
                        &ctx,
                        &self.dummies,
                        name,
                        w.len,
                        &w.data,
                        fmask,
                        wf,
                    )?);
                }
            }
            Ok(())
        })?;
        self.submit(&ds, None)?;
        self.masks = masks.clone();
        Ok(())
    }

    /// Runs `dispatches` in one pass (after clearing `clear`) and waits for them.
    fn submit(
        &self,
        dispatches: &[Dispatch],
        clear: Option<&[wgpu::Buffer]>,
    ) -> Result<(), GpuError> {
        scoped(&self.ctx, "train run", || {
            let mut enc =
                self.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("train"),
                    });
            for b in clear.unwrap_or(&[]) {
                enc.clear_buffer(b, 0, None);
            }
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("train"),
                    timestamp_writes: None,
                });
                for d in dispatches {
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
            self.ctx.queue().submit([enc.finish()]);
            Ok(())
        })
    }

    /// One SGD step on a batch: forward, loss, backward, update (and the BatchNorm
    /// running statistics in train mode). Returns the loss and logits before the update.
    pub fn step(
        &mut self,
        x: &Tensor,
        labels: &[usize],
        lr: f32,
    ) -> Result<StepOutput, GpuTrainError> {
        self.run(x, labels, Some(lr))
    }

    /// Forward, loss and backward only: the loss, the parameter gradients (by node name,
    /// as the CPU trainer's `backward` returns them) and dL/dinput when the trainer was made
    /// with `input_grad`. Parameters are left unchanged.
    pub fn gradients(
        &mut self,
        x: &Tensor,
        labels: &[usize],
    ) -> Result<(f32, Grads, Option<Tensor>), GpuTrainError> {
        let out = self.run(x, labels, None)?;
        let batch = x.shape[0];
        let prog = &self.programs[&batch];
        let mut pieces: Vec<(&wgpu::Buffer, usize)> = vec![];
        let mut order = vec![];
        for (&i, layer) in &self.layers {
            if !self.active.contains(&i) {
                continue;
            }
            match layer {
                Layer::Dense { w, bias, .. } => {
                    pieces.push((&w.grad, w.len));
                    if let Some(b) = bias {
                        pieces.push((&b.grad, b.len));
                    }
                }
                Layer::Bn { sb, .. } => pieces.push((&sb.grad, sb.len)),
            }
            order.push(i);
        }
        if self.opts.input_grad {
            pieces.push((&prog.grads[prog.input_slot], prog.input_len));
        }
        let mut data = read_many(&self.ctx, &pieces)?.into_iter();
        let mut grads = Grads::new();
        for i in order {
            let node = &self.graph.nodes[i];
            let g = match (&self.layers[&i], &node.op) {
                (Layer::Dense { bias, .. }, Op::Conv(_) | Op::Linear(_)) => {
                    let shape = node
                        .op
                        .weights()
                        .expect("conv/fc has weights")
                        .shape()
                        .to_vec();
                    let w = data.next().expect("one piece per gradient");
                    ParamGrad {
                        weight: Tensor { shape, data: w },
                        bias: bias.as_ref().map(|b| Tensor {
                            shape: vec![b.len],
                            data: data.next().expect("one piece per gradient"),
                        }),
                    }
                }
                (Layer::Bn { c, .. }, _) => {
                    let sb = data.next().expect("one piece per gradient");
                    ParamGrad {
                        weight: Tensor {
                            shape: vec![*c],
                            data: sb[..*c].to_vec(),
                        },
                        bias: Some(Tensor {
                            shape: vec![*c],
                            data: sb[*c..].to_vec(),
                        }),
                    }
                }
                _ => continue,
            };
            grads.insert(node.name.clone(), g);
        }
        let dinput = data.next().map(|d| Tensor {
            shape: x.shape.clone(),
            data: d,
        });
        Ok((out.loss, grads, dinput))
    }

    fn run(
        &mut self,
        x: &Tensor,
        labels: &[usize],
        lr: Option<f32>,
    ) -> Result<StepOutput, GpuTrainError> {
        let batch = x.shape.first().copied().unwrap_or(0);
        let mut want = vec![batch];
        want.extend(&self.graph.input.item_shape);
        if batch == 0 || x.shape != want || x.data.len() != want.iter().product::<usize>() {
            return Err(GpuError::BadInput {
                expected: want,
                found: x.shape.clone(),
            }
            .into());
        }
        if labels.len() != batch {
            return Err(GpuTrainError::Labels {
                reason: format!("{} labels for a batch of {batch}", labels.len()),
            });
        }
        if !self.programs.contains_key(&batch) {
            let p = self.record(batch)?;
            self.programs.insert(batch, p);
        }
        let prog = &self.programs[&batch];
        let classes = prog.logits_shape.iter().skip(1).product::<usize>();
        if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
            return Err(GpuTrainError::Labels {
                reason: format!("label {l} is not below the {classes} classes of the logits"),
            });
        }
        let q = self.ctx.queue();
        q.write_buffer(
            &prog.acts[prog.input_slot],
            0,
            bytemuck::cast_slice(&x.data),
        );
        let lab: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        q.write_buffer(&prog.labels, 0, bytemuck::cast_slice(&lab));
        if let Some(lr) = lr {
            q.write_buffer(&self.hyper, 0, bytemuck::cast_slice(&[lr]));
        }
        let logits_len: usize = prog.logits_shape.iter().product();
        scoped(&self.ctx, "train step", || {
            let mut enc =
                self.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("train step"),
                    });
            for b in &prog.grads {
                enc.clear_buffer(b, 0, None);
            }
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("train step"),
                    timestamp_writes: None,
                });
                let upd: &[Dispatch] = if lr.is_some() { &prog.update } else { &[] };
                for d in prog.forward.iter().chain(&prog.backward).chain(upd) {
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
            enc.copy_buffer_to_buffer(&prog.loss, 0, &prog.staging, 0, (batch * 4) as u64);
            enc.copy_buffer_to_buffer(
                &prog.acts[prog.logits_slot],
                0,
                &prog.staging,
                (batch * 4) as u64,
                (logits_len * 4) as u64,
            );
            self.ctx.queue().submit([enc.finish()]);
            Ok(())
        })?;
        let all = read_f32(&self.ctx, &prog.staging, batch + logits_len)?;
        let loss = all[..batch].iter().map(|&v| v as f64).sum::<f64>() / batch as f64;
        Ok(StepOutput {
            loss: loss as f32,
            logits: Tensor {
                shape: prog.logits_shape.clone(),
                data: all[batch..].to_vec(),
            },
        })
    }

    /// Wall time of each forward and backward launch for a batch like `x`, one
    /// submission per launch (so slower than a step): `(\"node fwd|bwd\", seconds)` summed
    /// per node and phase, in execution order. Parameters are left unchanged.
    pub fn profile(
        &mut self,
        x: &Tensor,
        labels: &[usize],
    ) -> Result<Vec<(String, f64)>, GpuTrainError> {
        self.run(x, labels, None)?; // records the program, checks the inputs
        let prog = &self.programs[&x.shape[0]];
        let mut out: Vec<(String, f64)> = vec![];
        for (d, name) in prog.forward.iter().chain(&prog.backward).zip(&prog.names) {
            let t0 = std::time::Instant::now();
            self.submit(std::slice::from_ref(d), None)?;
            self.ctx
                .device()
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| GpuError::Map {
                    buffer: "profile",
                    message: e.to_string(),
                })?;
            let dt = t0.elapsed().as_secs_f64();
            match out.last_mut() {
                Some((n, t)) if n == name => *t += dt,
                _ => out.push((name.clone(), dt)),
            }
        }
        Ok(out)
    }

    /// Writes the device parameters (weights W, biases, BatchNorm scale/bias and running
    /// statistics) into `graph`, which must be the graph the trainer was made from.
    pub fn sync_graph(&self, graph: &mut Graph) -> Result<(), GpuTrainError> {
        if graph.nodes.len() != self.graph.nodes.len() {
            return Err(GpuTrainError::WrongGraph {
                reason: "sync_graph needs the graph the trainer was made from".into(),
            });
        }
        let mut idx: Vec<usize> = self.layers.keys().copied().collect();
        idx.sort_unstable();
        let mut pieces: Vec<(&wgpu::Buffer, usize)> = vec![];
        for i in &idx {
            match &self.layers[i] {
                Layer::Dense { w, bias, .. } => {
                    pieces.push((&w.data, w.len));
                    if let Some(b) = bias {
                        pieces.push((&b.data, b.len));
                    }
                }
                Layer::Bn { sb, running, c, .. } => {
                    pieces.push((&sb.data, sb.len));
                    pieces.push((running, 2 * c));
                }
            }
        }
        let mut data = read_many(&self.ctx, &pieces)?.into_iter();
        let mut next = || data.next().expect("one piece per parameter");
        for i in idx {
            let node = &mut graph.nodes[i];
            if node.name != self.graph.nodes[i].name {
                return Err(GpuTrainError::WrongGraph {
                    reason: format!(
                        "node {i} is '{}', the trainer's is '{}'",
                        node.name, self.graph.nodes[i].name
                    ),
                });
            }
            match (&self.layers[&i], &mut node.op) {
                (Layer::Dense { bias, .. }, Op::Conv(cv)) => {
                    set_dense(&mut cv.weight, next());
                    if let (Some(_), Some(b)) = (bias, cv.bias.as_mut()) {
                        b.data = next();
                    }
                }
                (Layer::Dense { bias, .. }, Op::Linear(l)) => {
                    set_dense(&mut l.weight, next());
                    if let (Some(_), Some(b)) = (bias, l.bias.as_mut()) {
                        b.data = next();
                    }
                }
                (
                    Layer::Bn { c, .. },
                    Op::BatchNorm {
                        scale,
                        bias,
                        mean,
                        var,
                        ..
                    },
                ) => {
                    let sb = next();
                    scale.data = sb[..*c].to_vec();
                    bias.data = sb[*c..].to_vec();
                    let r = next();
                    mean.data = r[..*c].to_vec();
                    var.data = r[*c..].to_vec();
                }
                _ => {
                    return Err(GpuTrainError::WrongGraph {
                        reason: format!(
                            "node '{}' changed kind since the trainer was made",
                            node.name
                        ),
                    })
                }
            }
        }
        Ok(())
    }
}
