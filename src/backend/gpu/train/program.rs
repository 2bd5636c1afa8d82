//! Recording the program of one batch size: activation and gradient slots (aliases
//! share their input's), the forward, the loss, the backward in reverse node order and
//! the SGD and BatchNorm running-statistics updates, as dispatch lists.

use super::super::context::{scoped, Bind};
use super::super::GpuError;
use super::buffers::{buffer, Layer, Program};
use super::kernels::{self, Launch, OpsParams};
use super::{GpuTrainError, GpuTrainer};
use crate::backend::training::{BnMode, SetupError};
use crate::graph::Node;
use std::collections::HashMap;

impl GpuTrainer {
    /// Records forward, loss, backward and update for `batch`.
    pub(super) fn record(&self, batch: usize) -> Result<Program, GpuTrainError> {
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
                ref op if op.is_alias() => {
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
                if Some(i) == self.target.skipped_softmax || node.op.is_alias() {
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
}

fn gpu_err(node: &Node, reason: impl Into<String>) -> GpuTrainError {
    GpuTrainError::Unsupported {
        node: node.name.clone(),
        reason: reason.into(),
    }
}
