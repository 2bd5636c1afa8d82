//! Power-of-two (INQ) Conv and Linear layers (shaders/pow2.wgsl) on the packed b-bit codes.
//!
//! The codes are uploaded as they are stored (conv: `[Cout][words_per_row]`) or
//! transposed word-wise (fc: `[word][row]`, so the lanes of a workgroup, one output row
//! each, read consecutive words); nothing is expanded to f32 weights, and a product is
//! `ldexp(x, n1 + 1 − e)` with the code's sign. The weight bytes are `b/32` of dense
//! (3.2 and 5.33 bits per weight for b = 3 and 5: codes do not straddle words).
//!
//! - Conv (`pow2_conv`): direct, lanes = 64 output pixels, workgroup row = one output
//!   channel (dispatches of at most 65535 channels); the code word is read at a
//!   workgroup-uniform address.
//! - Linear (`pow2_fc`): GEMV, lanes = output rows, one workgroup row per batch item;
//!   rows are split into chunks whose codes fit the storage binding limit.
//!
//! Not measured: this machine has no GPU, and unlike `sketch.rs` these kernels were not
//! tuned for lavapipe (inputs are read from storage, which lavapipe loads per lane; the
//! uniform-window trick of `sketch_fc` would apply to `pow2_fc` unchanged). On a GPU
//! the fc at batch 1 is bound by reading the codes, `b/32` of the dense GEMV's bytes.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::model::StepIo;
use super::GpuError;
use crate::graph::{Conv2d, Linear};
use crate::weights::Pow2Weights;
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/pow2.wgsl");

/// Bindings of both kernels: input, codes, bias, output, params.
const LAYOUT: [Slot; 5] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

fn conv_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("pow2", SOURCE, "pow2_conv", &LAYOUT)
}

fn fc_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("pow2", SOURCE, "pow2_fc", &LAYOUT)
}

fn bias_or_zeros(bias: Option<&crate::graph::Tensor>, rows: usize) -> Vec<f32> {
    match bias {
        Some(b) => b.data.clone(),
        None => vec![0.0; rows],
    }
}

fn upload_u32(ctx: &GpuContext, label: &str, words: &[u32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let zero = [0u32];
    let words = if words.is_empty() { &zero[..] } else { words };
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(words),
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// Records a pow2 conv (`c.weight` must be `Weights::Pow2(w)`).
pub(crate) fn encode_conv(
    io: &StepIo,
    c: &Conv2d,
    w: &Pow2Weights,
) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let y = io.output.1;
    let (batch, cin, h, wd, oh, ow) = (x[0], x[1], x[2], x[3], y[2], y[3]);
    let cout = w.rows();
    let groups = c.groups;
    let cin_g = cin / groups.max(1);
    let cout_g = cout / groups.max(1);
    if cin_g * groups != cin
        || cout_g * groups != cout
        || cin_g * c.kernel[0] * c.kernel[1] != w.row_len()
    {
        return Err(io.unsupported(format!(
            "pow2 weights {:?} do not match {cin} input channels in {groups} groups",
            w.shape()
        )));
    }
    let wpr = w.words_per_row();
    let per_row = (wpr * 4) as u64;
    let rows_per = ((io.max_binding / per_row.max(1)) as usize).min(cout);
    if rows_per == 0 {
        return Err(io.unsupported(format!(
            "one channel's {per_row} bytes of codes exceed the {}-byte binding limit",
            io.max_binding
        )));
    }
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    let pixels = batch * oh * ow;
    let px_groups = pixels.div_ceil(64);
    if px_groups > max {
        return Err(io.unsupported(format!(
            "{pixels} output pixels need {px_groups} workgroups, over the per-dimension limit {max}; use a smaller batch"
        )));
    }
    let rows_per = rows_per.min(max);
    let bias = io.ctx.upload(
        &format!("{} bias", io.name),
        &bias_or_zeros(c.bias.as_ref(), cout),
    );
    let kernel = conv_kernel(io.ctx);
    let mut out = vec![];
    for r0 in (0..cout).step_by(rows_per) {
        let n = rows_per.min(cout - r0);
        let label = format!("{} channels {r0}..{}", io.name, r0 + n);
        // This chunk's codes only; the shader subtracts `row0` from the channel.
        let codes = upload_u32(
            io.ctx,
            &format!("{label} codes"),
            &w.codes()[r0 * wpr..(r0 + n) * wpr],
        );
        let params = [
            batch,
            cin,
            h,
            wd,
            oh,
            ow,
            c.kernel[0],
            c.kernel[1],
            c.stride[0],
            c.stride[1],
            c.pads[0],
            c.pads[1],
            c.dilation[0],
            c.dilation[1],
            cin_g,
            cout_g,
            cout,
            io.relu as usize,
            w.bits() as usize,
            w.codes_per_word(),
            wpr,
        ]
        .map(uw);
        let mut params = params.to_vec();
        params.push(w.n1() as u32);
        params.push(uw(r0));
        params.push(0);
        out.push(io.ctx.dispatch(
            &kernel,
            &label,
            &[
                io.inputs[0].0.clone(),
                Bind::f32s(&codes, n * wpr),
                Bind::f32s(&bias, cout),
                io.output.0.clone(),
            ],
            &params,
            [px_groups as u32, n as u32, 1],
        ));
    }
    Ok(out)
}

/// Records a pow2 Linear (`l.weight` must be `Weights::Pow2(w)`).
pub(crate) fn encode_linear(
    io: &StepIo,
    l: &Linear,
    w: &Pow2Weights,
) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let (batch, k) = (x[0], x[1]);
    let rows = w.rows();
    if w.row_len() != k {
        return Err(io.unsupported(format!(
            "pow2 weights {:?} do not match input width {k}",
            w.shape()
        )));
    }
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    if batch > max {
        return Err(io.unsupported(format!("batch {batch} exceeds {max} workgroups")));
    }
    let wpr = w.words_per_row();
    let per_row = (wpr * 4) as u64;
    let rows_per = ((io.max_binding / per_row.max(1)) as usize)
        .min(rows)
        .min(max * 64);
    if rows_per == 0 {
        return Err(io.unsupported(format!(
            "one row's {per_row} bytes of codes exceed the {}-byte binding limit",
            io.max_binding
        )));
    }
    let bias = bias_or_zeros(l.bias.as_ref(), rows);
    let kernel = fc_kernel(io.ctx);
    let mut out = vec![];
    for r0 in (0..rows).step_by(rows_per) {
        let n = rows_per.min(rows - r0);
        let label = format!("{} rows {r0}..{}", io.name, r0 + n);
        // [word][row of chunk]: lanes (rows) read consecutive words.
        let mut words = vec![0u32; wpr * n];
        for r in 0..n {
            for (t, &cw) in w.code_row(r0 + r).iter().enumerate() {
                words[t * n + r] = cw;
            }
        }
        let codes = upload_u32(io.ctx, &format!("{label} codes"), &words);
        let bias_buf = io.ctx.upload(&format!("{label} bias"), &bias[r0..r0 + n]);
        let params = [
            uw(n),
            uw(k),
            uw(wpr),
            uw(w.codes_per_word()),
            w.bits(),
            w.n1() as u32,
            io.relu as u32,
            uw(r0),
            uw(rows),
        ];
        out.push(io.ctx.dispatch(
            &kernel,
            &label,
            &[
                io.inputs[0].0.clone(),
                Bind::f32s(&codes, wpr * n),
                Bind::f32s(&bias_buf, n),
                io.output.0.clone(),
            ],
            &params,
            [n.div_ceil(64) as u32, batch as u32, 1],
        ));
    }
    Ok(out)
}
