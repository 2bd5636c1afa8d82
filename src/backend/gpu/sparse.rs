//! Sparse (CSR) Conv and Linear layers (shaders/sparse.wgsl) on the stored CSR arrays.
//!
//! - Conv (`sparse_conv`): lanes = 64 output pixels of one output channel, every
//!   lane walking that channel's CSR row (uniform-address loads), so the per-lane cost
//!   is one input load per stored weight.
//! - Linear (`sparse_fc`): lanes = 64 output rows, each walking its own CSR row, one
//!   workgroup row per batch item. (Linear used to run as a 1x1 conv over
//!   `[batch, K, 1, 1]` with the batch on the lanes: at batch 1 one live lane in 64,
//!   10.5 s for fc6 at 5% density on lavapipe against 2.5 s dense.)
//!
//! Column indices are widened to u32 on upload (WGSL has no u16 arrays), so GPU memory
//! holds 4 + 4 bytes per stored weight plus the row pointers.
//!
//! Timings on lavapipe (a CPU) are in docs/benchmarks.md; no GPU was available.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::model::StepIo;
use super::GpuError;
use crate::graph::{Conv2d, Linear, Tensor};
use crate::weights::SparseWeights;
use std::sync::Arc;
use wgpu::util::DeviceExt;

const SOURCE: &str = include_str!("../../../shaders/sparse.wgsl");

/// Bindings: input, row_ptr, cols, values, bias, output, params.
const LAYOUT: [Slot; 7] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

fn kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("sparse", SOURCE, "sparse_conv", &LAYOUT)
}

fn fc_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("sparse", SOURCE, "sparse_fc", &LAYOUT)
}

/// A read-only storage buffer of u32 words (at least one word).
fn upload_u32(ctx: &GpuContext, label: &str, data: &[u32]) -> wgpu::Buffer {
    let zero = [0u32];
    let data = if data.is_empty() { &zero[..] } else { data };
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// Geometry `[batch, cin, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups]`.
type Geometry = [usize; 15];

fn dispatch(
    io: &StepIo,
    g: Geometry,
    w: &SparseWeights,
    bias: Option<&Tensor>,
    fc: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    let [batch, cin, h, wd, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, groups] = g;
    let cout = w.rows();
    if groups == 0 || !cout.is_multiple_of(groups) || !cin.is_multiple_of(groups) {
        return Err(io.unsupported(format!("{cout} outputs / {cin} inputs in {groups} groups")));
    }
    let cin_g = cin / groups;
    if cin_g * kh * kw != w.row_len() {
        return Err(io.unsupported(format!(
            "sparse weights {:?} do not match {cin} input channels in {groups} groups",
            w.shape()
        )));
    }
    let pixels = batch * oh * ow;
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    let px_groups = pixels.div_ceil(64);
    if fc && (cout.div_ceil(64) > max || batch > max) {
        return Err(io.unsupported(format!(
            "{cout} rows x batch {batch} exceed the {max} workgroups per dimension"
        )));
    }
    if !fc && (px_groups > max || cout > max) {
        return Err(io.unsupported(format!(
            "{pixels} output pixels x {cout} channels exceed the {max} workgroups per dimension; use a smaller batch"
        )));
    }
    let label = io.name;
    let row_ptr = upload_u32(io.ctx, &format!("{label} row_ptr"), w.row_ptr());
    let cols = upload_u32(io.ctx, &format!("{label} cols"), &w.cols_u32());
    let vals = io.ctx.upload(&format!("{label} values"), w.values());
    let b = match bias {
        Some(b) => b.data.clone(),
        None => vec![0.0; cout],
    };
    let bias_buf = io.ctx.upload(&format!("{label} bias"), &b);
    let params = [
        batch,
        cin,
        h,
        wd,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        cin_g,
        cout / groups,
        cout,
        io.relu as usize,
        pixels,
    ]
    .map(uw);
    let (k, grid) = if fc {
        (
            fc_kernel(io.ctx),
            [cout.div_ceil(64).max(1) as u32, batch as u32, 1],
        )
    } else {
        (kernel(io.ctx), [px_groups.max(1) as u32, cout as u32, 1])
    };
    Ok(vec![io.ctx.dispatch(
        &k,
        label,
        &[
            io.inputs[0].0.clone(),
            Bind::f32s(&row_ptr, cout + 1),
            Bind::f32s(&cols, w.nnz()),
            Bind::f32s(&vals, w.nnz()),
            Bind::f32s(&bias_buf, cout),
            io.output.0.clone(),
        ],
        &params,
        grid,
    )])
}

/// Records a sparse conv (`c.weight` must be `Weights::Sparse(w)`).
pub(crate) fn encode_conv(
    io: &StepIo,
    c: &Conv2d,
    w: &SparseWeights,
) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let y = io.output.1;
    dispatch(
        io,
        [
            x[0],
            x[1],
            x[2],
            x[3],
            y[2],
            y[3],
            c.kernel[0],
            c.kernel[1],
            c.stride[0],
            c.stride[1],
            c.pads[0],
            c.pads[1],
            c.dilation[0],
            c.dilation[1],
            c.groups,
        ],
        w,
        c.bias.as_ref(),
        false,
    )
}

/// Records a sparse Linear (`l.weight` must be `Weights::Sparse(w)`) with `sparse_fc`:
/// lanes = output rows, one workgroup row per batch item.
pub(crate) fn encode_linear(
    io: &StepIo,
    l: &Linear,
    w: &SparseWeights,
) -> Result<Vec<Dispatch>, GpuError> {
    let batch = io.inputs[0].1[0];
    dispatch(
        io,
        [batch, w.row_len(), 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1],
        w,
        l.bias.as_ref(),
        true,
    )
}
