//! The trainer's device memory: parameter tensors (value, gradient, velocity) and
//! masks per trainable layer, the buffers of one recorded program, their upload from the
//! graph, and the readbacks.

use super::super::context::{scoped, Dispatch, GpuContext};
use super::super::GpuError;
use crate::backend::training::Masks;
use crate::graph::{Graph, Op};
use crate::weights::Weights;
use std::collections::HashMap;
use std::sync::mpsc;

/// A parameter tensor on the device: value, gradient, SGD velocity.
pub(super) struct Param {
    pub(super) data: wgpu::Buffer,
    pub(super) grad: wgpu::Buffer,
    pub(super) vel: wgpu::Buffer,
    pub(super) len: usize,
}

/// The device state of one trainable node.
pub(super) enum Layer {
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
pub(super) struct Program {
    pub(super) grads: Vec<wgpu::Buffer>,
    pub(super) input_slot: usize,
    pub(super) input_len: usize,
    pub(super) logits_slot: usize,
    pub(super) logits_shape: Vec<usize>,
    pub(super) labels: wgpu::Buffer,
    pub(super) loss: wgpu::Buffer,
    pub(super) staging: wgpu::Buffer,
    pub(super) forward: Vec<Dispatch>,
    pub(super) backward: Vec<Dispatch>,
    pub(super) update: Vec<Dispatch>,
    /// "node fwd" / "node bwd" for each forward and backward launch (profiling).
    pub(super) names: Vec<String>,
    pub(super) acts: Vec<wgpu::Buffer>,
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

pub(super) fn buffer(ctx: &GpuContext, label: &str, len: usize) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (len.max(4) * 4) as u64,
        usage: USAGE,
        mapped_at_creation: false,
    })
}

pub(super) fn buffer_init(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    let b = buffer(ctx, label, data.len());
    if !data.is_empty() {
        ctx.queue().write_buffer(&b, 0, bytemuck::cast_slice(data));
    }
    b
}

pub(super) fn param(ctx: &GpuContext, label: &str, data: &[f32]) -> Param {
    Param {
        data: buffer_init(ctx, label, data),
        grad: buffer(ctx, &format!("{label} grad"), data.len()),
        vel: buffer_init(ctx, &format!("{label} velocity"), &vec![0.0; data.len()]),
        len: data.len(),
    }
}

pub(super) fn mask_f32(mask: Option<&Vec<bool>>, len: usize) -> Vec<f32> {
    match mask {
        Some(m) => m.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
        None => vec![1.0; len],
    }
}

/// Uploads the parameters of the dense conv/fc and BatchNorm nodes of `graph` with
/// their masks, keyed by node index.
pub(super) fn upload_layers(
    ctx: &GpuContext,
    graph: &Graph,
    masks: &Masks,
) -> Result<HashMap<usize, Layer>, GpuError> {
    let mut layers = HashMap::new();
    scoped(ctx, "upload parameters", || {
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
                    let running: Vec<f32> = mean.data.iter().chain(&var.data).copied().collect();
                    layers.insert(
                        i,
                        Layer::Bn {
                            sb: param(ctx, name, &sb),
                            running: buffer_init(ctx, &format!("{name} running"), &running),
                            stats: buffer(ctx, &format!("{name} stats"), 3 * ch),
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
                    w: param(ctx, name, &wt.data),
                    wf: buffer_init(ctx, &format!("{name} masked weight"), &wf),
                    gmask: buffer_init(
                        ctx,
                        &format!("{name} gradient mask"),
                        &mask_f32(masks.grad.get(name), len),
                    ),
                    fmask: buffer_init(ctx, &format!("{name} forward mask"), &fm),
                    bias: bias.map(|b| param(ctx, &format!("{name} bias"), &b.data)),
                    zero_bias: buffer(ctx, &format!("{name} zero bias"), wt.shape[0]),
                    rows: wt.shape[0],
                },
            );
        }
        Ok(())
    })?;
    Ok(layers)
}

/// Maps `buffer` and returns its first `len` f32 values.
pub(super) fn read_f32(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<f32>, GpuError> {
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
pub(super) fn read_many(
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

/// Replaces the entries of a dense weight.
pub(super) fn set_dense(w: &mut Weights, data: Vec<f32>) {
    if let Weights::Dense(t) = w {
        t.data = data;
    }
}
