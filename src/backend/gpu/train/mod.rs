//! Training on the GPU: the forward pass with every activation kept, softmax
//! cross-entropy, the backward pass (shaders/train_*.wgsl) and the SGD update with
//! gradient and forward masks, recorded once per batch size and run as one command
//! buffer per step. The CPU trainer (the `train` module) is the reference it is tested
//! against (tests/gpu_train.rs).
//!
//! The forward reuses the inference kernels (tiled implicit-GEMM conv and fc with the
//! trainer's own weight buffers, pooling, activations, Add, LRN, Concat); BatchNorm has
//! a training forward here (batch statistics). Every value keeps its own activation and
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

mod kernels;

use super::context::{scoped, Bind, Dispatch, GpuContext};
use super::conv::{dispatch_geometry, ConvKernel, Geometry};
use super::model::{encode_stateless, CompressedConv, GpuOptions, StepIo};
use super::eltwise::Unary;
use super::{pool, GpuError};
use crate::backend::training::{
    check_trainable, loss_target, BnMode, Grads, LossTarget, Masks, ParamGrad, SetupError,
};
use crate::graph::{Graph, GraphError, Node, Op, Tensor};
use crate::weights::Weights;
use kernels::{ConvShape, Dummies, Launch, OpsParams};
use std::collections::{HashMap, HashSet};
use std::sync::{mpsc, Arc};

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

/// A parameter tensor on the device: value, gradient, SGD velocity.
struct Param {
    data: wgpu::Buffer,
    grad: wgpu::Buffer,
    vel: wgpu::Buffer,
    len: usize,
}

/// The device state of one trainable node.
enum Layer {
    /// Conv or fc: W (full), W⊙T (what forward and backward read), masks as 1.0/0.0.
    Dense {
        w: Param,
        wf: wgpu::Buffer,
        gmask: wgpu::Buffer,
        fmask: wgpu::Buffer,
        bias: Option<Param>,
        /// Zeros the forward binds when the layer has no bias.
        zero_bias: wgpu::Buffer,
        rows: usize,
    },
    /// BatchNorm: [scale C | bias C] as one parameter, running [mean C | var C], and the
    /// statistics the last forward used [mean C | var C | inv_std C].
    Bn {
        sb: Param,
        running: wgpu::Buffer,
        stats: wgpu::Buffer,
        c: usize,
    },
}

/// Everything recorded for one batch size.
struct Program {
    grads: Vec<wgpu::Buffer>,
    input_slot: usize,
    input_len: usize,
    logits_slot: usize,
    logits_shape: Vec<usize>,
    labels: wgpu::Buffer,
    loss: wgpu::Buffer,
    staging: wgpu::Buffer,
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    update: Vec<Dispatch>,
    /// "node fwd" / "node bwd" for each forward and backward launch (profiling).
    names: Vec<String>,
    acts: Vec<wgpu::Buffer>,
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

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

fn buffer(ctx: &GpuContext, label: &str, len: usize) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (len.max(4) * 4) as u64,
        usage: USAGE,
        mapped_at_creation: false,
    })
}

fn buffer_init(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    let b = buffer(ctx, label, data.len());
    if !data.is_empty() {
        ctx.queue().write_buffer(&b, 0, bytemuck::cast_slice(data));
    }
    b
}

fn param(ctx: &GpuContext, label: &str, data: &[f32]) -> Param {
    Param {
        data: buffer_init(ctx, label, data),
        grad: buffer(ctx, &format!("{label} grad"), data.len()),
        vel: buffer_init(ctx, &format!("{label} velocity"), &vec![0.0; data.len()]),
        len: data.len(),
    }
}

fn mask_f32(mask: Option<&Vec<bool>>, len: usize) -> Vec<f32> {
    match mask {
        Some(m) => m.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
        None => vec![1.0; len],
    }
}

fn gpu_err(node: &Node, reason: impl Into<String>) -> GpuTrainError {
    GpuTrainError::Unsupported {
        node: node.name.clone(),
        reason: reason.into(),
    }
}

/// Maps `buffer` and returns its first `len` f32 values.
fn read_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
    let (tx, rx) = mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |r| {
        // A failed send only means the receiver below gave up.
        let _ = tx.send(r);
    });
    let map_err = |m: String| GpuError::Map {
        buffer: "train readback",
        message: m,
    };
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| map_err(e.to_string()))?;
    ctx.check_lost()?;
    rx.recv()
        .map_err(|e| map_err(e.to_string()))?
        .map_err(|e| map_err(e.to_string()))?;
    let bytes = buffer
        .get_mapped_range(..)
        .map_err(|e| map_err(e.to_string()))?
        .to_vec();
    buffer.unmap();
    let floats: &[f32] = bytemuck::cast_slice(&bytes);
    Ok(floats[..len.min(floats.len())].to_vec())
}

/// Copies `(buffer, len)` pieces into one staging buffer, submits and reads them back.
fn read_many(
    ctx: &GpuContext,
    pieces: &[(&wgpu::Buffer, usize)],
) -> Result<Vec<Vec<f32>>, GpuError> {
    let total: usize = pieces.iter().map(|p| p.1).sum();
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("train readback"),
        size: (total.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("train readback"),
        });
    let mut off = 0u64;
    for (b, len) in pieces {
        if *len > 0 {
            enc.copy_buffer_to_buffer(b, 0, &staging, off, (*len * 4) as u64);
        }
        off += (*len * 4) as u64;
    }
    ctx.queue().submit([enc.finish()]);
    let all = read_f32(ctx, &staging, total)?;
    let mut out = Vec::with_capacity(pieces.len());
    let mut at = 0;
    for (_, len) in pieces {
        out.push(all[at..at + len].to_vec());
        at += len;
    }
    Ok(out)
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
        let mut layers = HashMap::new();
        let c = ctx.clone();
        scoped(&c, "upload parameters", || {
            for (i, node) in graph.nodes.iter().enumerate() {
                let name = &node.name;
                let (w, bias) = match &node.op {
                    Op::Conv(cv) => (&cv.weight, cv.bias.as_ref()),
                    Op::Linear(l) => (&l.weight, l.bias.as_ref()),
                    Op::BatchNorm {
                        scale,
                        bias,
                        mean,
                        var,
                        ..
                    } => {
                        let ch = scale.data.len();
                        let sb: Vec<f32> = scale.data.iter().chain(&bias.data).copied().collect();
                        let running: Vec<f32> =
                            mean.data.iter().chain(&var.data).copied().collect();
                        layers.insert(
                            i,
                            Layer::Bn {
                                sb: param(&ctx, name, &sb),
                                running: buffer_init(&ctx, &format!("{name} running"), &running),
                                stats: buffer(&ctx, &format!("{name} stats"), 3 * ch),
                                c: ch,
                            },
                        );
                        continue;
                    }
                    _ => continue,
                };
                let Weights::Dense(wt) = w else {
                    continue; // check_trainable rejected other encodings
                };
                let len = wt.data.len();
                let fm = mask_f32(masks.forward.get(name), len);
                let wf: Vec<f32> = wt
                    .data
                    .iter()
                    .zip(&fm)
                    .map(|(v, m)| if *m != 0.0 { *v } else { 0.0 })
                    .collect();
                layers.insert(
                    i,
                    Layer::Dense {
                        w: param(&ctx, name, &wt.data),
                        wf: buffer_init(&ctx, &format!("{name} masked weight"), &wf),
                        gmask: buffer_init(
                            &ctx,
                            &format!("{name} gradient mask"),
                            &mask_f32(masks.grad.get(name), len),
                        ),
                        fmask: buffer_init(&ctx, &format!("{name} forward mask"), &fm),
                        bias: bias.map(|b| param(&ctx, &format!("{name} bias"), &b.data)),
                        zero_bias: buffer(&ctx, &format!("{name} zero bias"), wt.shape[0]),
                        rows: wt.shape[0],
                    },
                );
            }
            Ok(())
        })
        .map_err(GpuTrainError::from)?;
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

    /// Records forward, loss, backward and update for `batch`.
    fn record(&self, batch: usize) -> Result<Program, GpuTrainError> {
        let ctx = &*self.ctx;
        let graph = &self.graph;
        let shapes = graph.infer_shapes(batch)?;
        let shape_of = |v: &str, node: &Node| -> Result<Vec<usize>, GpuTrainError> {
            shapes
                .get(v)
                .cloned()
                .ok_or_else(|| gpu_err(node, format!("no shape for '{v}'")))
        };
        // Value -> slot; aliases share their input's slot.
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut lens: Vec<usize> = vec![];
        let mut input_shape = vec![batch];
        input_shape.extend(&graph.input.item_shape);
        let input_len: usize = input_shape.iter().product();
        slot_of.insert(graph.input.name.clone(), 0);
        lens.push(input_len);
        for (i, node) in graph.nodes.iter().enumerate() {
            if Some(i) == self.target.skipped_softmax {
                continue;
            }
            match node.op {
                Op::Flatten { .. } | Op::Identity => {
                    let s = *slot_of.get(&node.inputs[0]).ok_or_else(|| {
                        gpu_err(
                            node,
                            format!("reads '{}' before it is made", node.inputs[0]),
                        )
                    })?;
                    slot_of.insert(node.output.clone(), s);
                }
                _ => {
                    slot_of.insert(node.output.clone(), lens.len());
                    lens.push(shape_of(&node.output, node)?.iter().product());
                }
            }
        }
        let limit = ctx.max_binding_bytes();
        if let Some(l) = lens.iter().find(|&&l| (l * 4) as u64 > limit) {
            return Err(GpuError::Unsupported {
                node: "activations".into(),
                op: "buffer",
                reason: format!("an activation of {} bytes at batch {batch} exceeds the {limit}-byte binding limit", l * 4),
            }
            .into());
        }
        let logits_shape = shapes
            .get(&self.target.logits)
            .cloned()
            .ok_or(SetupError::NoOutput)?;
        let logits_len: usize = logits_shape.iter().product();
        // Split-K scratch: the largest partial any conv/fc needs.
        let mut partial_len = 4usize;
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Some(s) = self.conv_shape(node, &shapes, batch) {
                let (splits, _) = s.splits();
                if splits > 1 && self.active.contains(&i) {
                    partial_len = partial_len.max(splits * s.cout * s.k_len());
                }
            }
        }
        scoped(ctx, "record training program", || {
            let acts: Vec<wgpu::Buffer> = lens
                .iter()
                .enumerate()
                .map(|(k, &l)| buffer(ctx, &format!("train act{k}"), l))
                .collect();
            let grads: Vec<wgpu::Buffer> = lens
                .iter()
                .enumerate()
                .map(|(k, &l)| buffer(ctx, &format!("train grad{k}"), l))
                .collect();
            let partial = buffer(ctx, "wgrad partial", partial_len);
            let labels = buffer(ctx, "labels", batch);
            let loss = buffer(ctx, "loss per item", batch);
            let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("train staging"),
                size: ((batch + logits_len) * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let val = |v: &str| -> Result<(usize, Vec<usize>), GpuError> {
                let s = *slot_of.get(v).ok_or_else(|| GpuError::Unsupported {
                    node: v.into(),
                    op: "value",
                    reason: "not produced by the training forward".into(),
                })?;
                let shape = shapes.get(v).cloned().unwrap_or_default();
                Ok((s, shape))
            };
            let act = |v: &str| -> Result<Bind, GpuError> {
                let (s, shape) = val(v)?;
                Ok(Bind::f32s(&acts[s], shape.iter().product()))
            };
            let grad = |v: &str| -> Result<Bind, GpuError> {
                let (s, shape) = val(v)?;
                Ok(Bind::f32s(&grads[s], shape.iter().product()))
            };
            let mut forward = vec![];
            let mut names = vec![];
            for (i, node) in graph.nodes.iter().enumerate() {
                if Some(i) == self.target.skipped_softmax
                    || matches!(node.op, Op::Flatten { .. } | Op::Identity)
                {
                    continue;
                }
                forward.extend(self.encode_forward(i, node, &shapes, batch, &act)?);
                names.resize(forward.len(), format!("{} fwd", node.name));
            }
            // Loss on the logits: dL/dlogits lands in the logits' gradient buffer.
            forward.push(kernels::ops(
                ctx,
                &self.dummies,
                "softmax cross-entropy",
                "ce_loss",
                &[&act(&self.target.logits)?, &Bind::f32s(&labels, batch)],
                &grad(&self.target.logits)?,
                Some(&Bind::f32s(&loss, batch)),
                &OpsParams {
                    total: batch,
                    c: logits_len / batch,
                    f: [1.0 / batch as f32, 0.0, 0.0, 0.0],
                    ..Default::default()
                },
                Launch::Channels(batch),
            )?);
            names.push("loss".into());
            let mut backward = vec![];
            for (i, node) in graph.nodes.iter().enumerate().rev() {
                if !self.active.contains(&i) {
                    continue;
                }
                backward
                    .extend(self.encode_backward(i, node, &shapes, batch, &act, &grad, &partial)?);
                names.resize(forward.len() + backward.len(), format!("{} bwd", node.name));
            }
            let mut update = vec![];
            let mut idx: Vec<usize> = self.layers.keys().copied().collect();
            idx.sort_unstable();
            let (m, wd) = (self.opts.momentum, self.opts.weight_decay);
            for i in idx {
                let name = &graph.nodes[i].name;
                let layer = &self.layers[&i];
                if let Layer::Bn {
                    running, stats, c, ..
                } = layer
                {
                    if self.opts.bn_mode == BnMode::Train {
                        let count = batch
                            * shapes[&graph.nodes[i].inputs[0]][2..]
                                .iter()
                                .product::<usize>();
                        let unbias = if count > 1 {
                            count as f32 / (count - 1) as f32
                        } else {
                            1.0
                        };
                        update.push(kernels::ops(
                            ctx,
                            &self.dummies,
                            name,
                            "bn_running",
                            &[&Bind::f32s(stats, 3 * c)],
                            &Bind::f32s(running, 2 * c),
                            None,
                            &OpsParams {
                                c: *c,
                                f: [self.opts.bn_momentum, unbias, 0.0, 0.0],
                                ..Default::default()
                            },
                            Launch::Elements(*c),
                        )?);
                    }
                }
                if !self.active.contains(&i) {
                    continue;
                }
                match layer {
                    Layer::Dense {
                        w,
                        wf,
                        gmask,
                        fmask,
                        bias,
                        ..
                    } => {
                        update.push(kernels::sgd(
                            ctx,
                            &self.dummies,
                            name,
                            w.len,
                            &w.grad,
                            &self.hyper,
                            &w.data,
                            &w.vel,
                            Some((gmask, fmask, wf)),
                            m,
                            wd,
                        )?);
                        if let Some(b) = bias {
                            update.push(kernels::sgd(
                                ctx,
                                &self.dummies,
                                name,
                                b.len,
                                &b.grad,
                                &self.hyper,
                                &b.data,
                                &b.vel,
                                None,
                                m,
                                wd,
                            )?);
                        }
                    }
                    Layer::Bn { sb, .. } => {
                        update.push(kernels::sgd(
                            ctx,
                            &self.dummies,
                            name,
                            sb.len,
                            &sb.grad,
                            &self.hyper,
                            &sb.data,
                            &sb.vel,
                            None,
                            m,
                            wd,
                        )?);
                    }
                }
            }
            let (logits_slot, _) = val(&self.target.logits)?;
            Ok(Program {
                grads,
                input_slot: 0,
                input_len,
                logits_slot,
                logits_shape: logits_shape.clone(),
                labels,
                loss,
                staging,
                forward,
                backward,
                update,
                names,
                acts,
            })
        })
        .map_err(GpuTrainError::from)
    }

    /// The conv geometry of a conv/fc node at `batch` (fc as a 1x1 conv on 1x1 images).
    fn conv_shape(
        &self,
        node: &Node,
        shapes: &crate::graph::Shapes,
        batch: usize,
    ) -> Option<ConvShape> {
        let x = shapes.get(node.inputs.first()?)?;
        match &node.op {
            Op::Conv(c) => {
                let y = shapes.get(&node.output)?;
                Some(ConvShape {
                    batch,
                    cin: x[1],
                    h: x[2],
                    w: x[3],
                    cout: c.out_channels(),
                    oh: y[2],
                    ow: y[3],
                    kh: c.kernel[0],
                    kw: c.kernel[1],
                    sh: c.stride[0],
                    sw: c.stride[1],
                    ph: c.pads[0],
                    pw: c.pads[1],
                    dh: c.dilation[0],
                    dw: c.dilation[1],
                    groups: c.groups,
                })
            }
            Op::Linear(l) => Some(ConvShape {
                batch,
                cin: x[1..].iter().product(),
                h: 1,
                w: 1,
                cout: l.weight.rows(),
                oh: 1,
                ow: 1,
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                dh: 1,
                dw: 1,
                groups: 1,
                ..Default::default()
            }),
            _ => None,
        }
    }

    fn encode_forward(
        &self,
        i: usize,
        node: &Node,
        shapes: &crate::graph::Shapes,
        batch: usize,
        act: &dyn Fn(&str) -> Result<Bind, GpuError>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let ctx = &*self.ctx;
        let shape = |v: &str| shapes.get(v).map(|s| s.as_slice()).unwrap_or(&[]);
        // The trainer's forward runs the tiled conv kernel and the compressed kernels
        // as they are (its backward kernels share the tiled layout).
        let options = GpuOptions {
            conv_kernel: ConvKernel::Tiled,
            compressed_conv: CompressedConv::Native,
            ..GpuOptions::default()
        };
        let io = StepIo {
            ctx,
            node,
            name: &node.name,
            relu: false,
            inputs: node
                .inputs
                .iter()
                .map(|v| Ok((act(v)?, shape(v))))
                .collect::<Result<_, GpuError>>()?,
            output: (act(&node.output)?, shape(&node.output)),
            max_binding: ctx.max_binding_bytes(),
            options: &options,
            // The trainer runs its own kernels for conv and fc layers.
            choice: None,
        };
        match (&node.op, self.layers.get(&i)) {
            // Not inference's encoder: the trainer binds its own weight buffer (W⊙T under
            // a forward mask, rewritten by every update) and always runs the tiled kernel,
            // whose layout its backward kernels share.
            (
                Op::Conv(_) | Op::Linear(_),
                Some(Layer::Dense {
                    wf,
                    bias,
                    zero_bias,
                    rows,
                    w,
                    ..
                }),
            ) => {
                let s = self.conv_shape(node, shapes, batch).expect("conv/fc shape");
                let g = Geometry {
                    batch,
                    cin: s.cin,
                    h: s.h,
                    w: s.w,
                    oh: s.oh,
                    ow: s.ow,
                    kh: s.kh,
                    kw: s.kw,
                    sh: s.sh,
                    sw: s.sw,
                    ph: s.ph,
                    pw: s.pw,
                    dh: s.dh,
                    dw: s.dw,
                    cin_g: s.cin / s.groups,
                    cout_g: s.cout / s.groups,
                    k_len: s.k_len(),
                    c_total: s.cout,
                    c_off: 0,
                    relu: false,
                    groups: s.groups,
                };
                let b = bias.as_ref().map_or(zero_bias, |b| &b.data);
                Ok(vec![dispatch_geometry(
                    &io,
                    &g,
                    &[
                        io.inputs[0].0.clone(),
                        Bind::f32s(wf, w.len),
                        Bind::f32s(b, *rows),
                        io.output.0.clone(),
                    ],
                )?])
            }
            // Not inference's encoder (a scale and shift folded on the host): in train
            // mode the statistics are the batch's, and either way they are kept in
            // `stats` for the backward.
            (
                Op::BatchNorm { epsilon, .. },
                Some(Layer::Bn {
                    sb,
                    running,
                    stats,
                    c,
                }),
            ) => {
                let x = shape(&node.inputs[0]);
                let inner: usize = x[2..].iter().product();
                let total = batch * c * inner;
                let p = OpsParams {
                    total,
                    c: *c,
                    inner,
                    n: batch,
                    f: [*epsilon, 0.0, 0.0, 0.0],
                    ..Default::default()
                };
                let st = Bind::f32s(stats, 3 * c);
                let stats_pass = if self.opts.bn_mode == BnMode::Train {
                    kernels::ops(
                        ctx,
                        &self.dummies,
                        &node.name,
                        "bn_stats",
                        &[&io.inputs[0].0],
                        &st,
                        None,
                        &p,
                        Launch::Channels(*c),
                    )?
                } else {
                    kernels::ops(
                        ctx,
                        &self.dummies,
                        &node.name,
                        "bn_frozen_stats",
                        &[&Bind::f32s(running, 2 * c)],
                        &st,
                        None,
                        &p,
                        Launch::Elements(*c),
                    )?
                };
                let fwd = kernels::ops(
                    ctx,
                    &self.dummies,
                    &node.name,
                    "bn_fwd",
                    &[&io.inputs[0].0, &st, &Bind::f32s(&sb.data, 2 * c)],
                    &io.output.0,
                    None,
                    &p,
                    Launch::Elements(total),
                )?;
                Ok(vec![stats_pass, fwd])
            }
            // No backward kernels exist for these; refusing them here keeps the error at
            // the node even when it does not reach the loss.
            (Op::Softmax | Op::Pad { .. } | Op::Slice { .. }, _) => {
                Err(io.unsupported("the GPU trainer has no forward for this op"))
            }
            // Ops without parameters or state run exactly as in inference; their
            // backward reads only their input and output activations, which stay in the
            // trainer's buffers.
            _ => encode_stateless(&io),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_backward(
        &self,
        i: usize,
        node: &Node,
        shapes: &crate::graph::Shapes,
        batch: usize,
        act: &dyn Fn(&str) -> Result<Bind, GpuError>,
        grad: &dyn Fn(&str) -> Result<Bind, GpuError>,
        partial: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let ctx = &*self.ctx;
        let d = &self.dummies;
        let name = node.name.as_str();
        let graph = &self.graph;
        let wants = |v: &str| v != graph.input.name || self.opts.input_grad;
        let need_dx = wants(&node.inputs[0]);
        let unsupported = |reason: &str| GpuError::Unsupported {
            node: name.into(),
            op: node.op.kind(),
            reason: reason.into(),
        };
        let xs = shapes.get(&node.inputs[0]).cloned().unwrap_or_default();
        let x_len: usize = xs.iter().product();
        let dy = grad(&node.output)?;
        let x = act(&node.inputs[0])?;
        let mut out = vec![];
        let elems = |total: usize| OpsParams {
            total,
            ..Default::default()
        };
        match (&node.op, self.layers.get(&i)) {
            (Op::Conv(_) | Op::Linear(_), Some(Layer::Dense { w, wf, bias, .. })) => {
                let s = self.conv_shape(node, shapes, batch).expect("conv/fc shape");
                out.extend(kernels::conv_weight_grad(
                    ctx,
                    name,
                    &s,
                    &dy,
                    &x,
                    &w.grad,
                    bias.as_ref().map(|b| &b.grad),
                    partial,
                )?);
                if need_dx {
                    let tiled = match self.opts.data_grad {
                        DataGradKernel::Auto => !ctx.is_software(),
                        k => k == DataGradKernel::Tiled,
                    };
                    out.push(kernels::conv_data_grad(
                        ctx,
                        name,
                        tiled,
                        &s,
                        &dy,
                        &Bind::f32s(wf, w.len),
                        &grad(&node.inputs[0])?,
                    )?);
                }
            }
            (Op::Relu | Op::LeakyRelu { .. } | Op::Clip { .. } | Op::Sigmoid, _) => {
                if need_dx {
                    let u = Unary::of(&node.op).expect("the arm matched an activation");
                    let [fa, fb] = u.params();
                    // Sigmoid's derivative is y(1 - y): it reads the output, the others x.
                    let src = match u {
                        Unary::Sigmoid => act(&node.output)?,
                        _ => x.clone(),
                    };
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "act_bwd",
                        &[&dy, &src],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            mode: u.code() as usize,
                            f: [fa, fb, 0.0, 0.0],
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::MaxPool(p) | Op::AvgPool(p), _) => {
                if need_dx {
                    let ys = &shapes[&node.output];
                    // train_ops.wgsl numbers the pooling modes as pool.wgsl does.
                    let (entry, mode) = match &node.op {
                        Op::MaxPool(_) => ("maxpool_bwd", pool::Mode::Max),
                        _ if p.count_include_pad => ("avgpool_bwd", pool::Mode::AvgIncludePad),
                        _ => ("avgpool_bwd", pool::Mode::AvgExcludePad),
                    };
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        entry,
                        &[&dy, &x],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            h: xs[2],
                            w: xs[3],
                            oh: ys[2],
                            ow: ys[3],
                            kh: p.kernel[0],
                            kw: p.kernel[1],
                            sh: p.stride[0],
                            sw: p.stride[1],
                            pads: p.pads,
                            mode: mode as usize,
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::GlobalAvgPool, _) => {
                if need_dx {
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "gap_bwd",
                        &[&dy],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            inner: xs[2] * xs[3],
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::BatchNorm { .. }, Some(Layer::Bn { sb, stats, c, .. })) => {
                let inner: usize = xs[2..].iter().product();
                let p = OpsParams {
                    c: *c,
                    inner,
                    n: batch,
                    mode: (self.opts.bn_mode == BnMode::Train) as usize,
                    ..elems(x_len)
                };
                let st = Bind::f32s(stats, 3 * c);
                let gsb = Bind::f32s(&sb.grad, 2 * c);
                out.push(kernels::ops(
                    ctx,
                    d,
                    name,
                    "bn_bwd_params",
                    &[&x, &dy, &st],
                    &gsb,
                    None,
                    &p,
                    Launch::Channels(*c),
                )?);
                if need_dx {
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "bn_bwd_data",
                        &[&x, &dy, &st, &Bind::f32s(&sb.data, 2 * c)],
                        &grad(&node.inputs[0])?,
                        Some(&gsb),
                        &p,
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::Add, _) => {
                if node.inputs.len() < 2 {
                    return Err(unsupported("Add needs two inputs"));
                }
                for v in &node.inputs[..2] {
                    if wants(v) {
                        out.push(kernels::ops(
                            ctx,
                            d,
                            name,
                            "acc",
                            &[&dy],
                            &grad(v)?,
                            None,
                            &elems(x_len),
                            Launch::Elements(x_len),
                        )?);
                    }
                }
            }
            (Op::Concat { axis }, _) => {
                let ys = &shapes[&node.output];
                let block_out: usize = ys[*axis..].iter().product();
                let mut off = 0;
                for v in &node.inputs {
                    let vs = &shapes[v];
                    let block: usize = vs[*axis..].iter().product();
                    let len: usize = vs.iter().product();
                    if wants(v) {
                        out.push(kernels::ops(
                            ctx,
                            d,
                            name,
                            "concat_bwd",
                            &[&dy],
                            &grad(v)?,
                            None,
                            &OpsParams {
                                block,
                                block_out,
                                off,
                                ..elems(len)
                            },
                            Launch::Elements(len),
                        )?);
                    }
                    off += block;
                }
            }
            (
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    bias,
                },
                _,
            ) => {
                if need_dx {
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "lrn_bwd",
                        &[&dy, &x],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            c: xs[1],
                            inner: xs[2..].iter().product(),
                            size: *size,
                            f: [*alpha, *beta, *bias, 0.0],
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::Flatten { .. } | Op::Identity, _) => {} // aliases share the gradient buffer
            (Op::ConstBinary { .. }, _) if !need_dx => {}
            _ => return Err(unsupported("the GPU trainer has no backward for this op")),
        }
        Ok(out)
    }
}

/// Replaces the entries of a dense weight.
fn set_dense(w: &mut Weights, data: Vec<f32>) {
    if let Weights::Dense(t) = w {
        t.data = data;
    }
}
