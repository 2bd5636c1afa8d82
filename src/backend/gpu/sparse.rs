//! Sparse (CSR) Conv and Linear layers (shaders/sparse.wgsl) on the stored CSR arrays.
//!
//! - Conv (`sparse_conv`): lanes = 64 output pixels of one output channel, every
//!   lane walking that channel's CSR row (uniform-address loads), so the per-lane cost
//!   is one input load per stored weight.
//! - Linear (`sparse_fc`, "vector CSR"): workgroups of 256 invocations, L lanes per
//!   output row (L a power of two, 1 to 256, so 256 / L rows per workgroup). The lanes
//!   of a row read its consecutive stored entries (values and columns coalesce), four
//!   independent entries per lane per loop trip, gather the input from a storage buffer
//!   (small: it stays in cache), and a tree in workgroup memory adds the L partials.
//!   Row blocks fill a 2-D grid (x, y) past the per-dimension limit; z = batch item.
//!   L comes from the row count and the mean entries per row (`select::sparse_fc_lanes_log2`); on
//!   software adapters L = 1 (each invocation walks its own row, no reduction or
//!   barrier, as the earlier 64-rows-per-workgroup kernel did): on lavapipe that ran
//!   1.1-3.8x faster than wider rows on 11 of AlexNet's 12 fc shape/density pairs.
//!   (Before that, Linear ran as a 1x1 conv over `[batch, K, 1, 1]` with the batch on
//!   the lanes: at batch 1 one live lane in 64, 10.5 s for fc6 at 5% density on
//!   lavapipe against 2.5 s dense.)
//!
//! Column indices are widened to u32 on upload (WGSL has no u16 arrays), so GPU memory
//! holds 4 + 4 bytes per stored weight plus the row pointers.
//!
//! `sparse_fc` on an NVIDIA H200 (Vulkan, timestamp queries, batch 1, random CSR at
//! 50/25/10/5% density; `gpu_sparse_fc_timing` in tests/dns.rs): fc6 (9216 -> 4096)
//! 0.045-0.113 (unstable between identical runs) / 0.071 / 0.041 / 0.033 ms, fc7
//! (4096 -> 4096) 0.065 / 0.039 / 0.029 / 0.026 ms, fc8 (4096 -> 1000) 0.030 / 0.027 /
//! 0.024 / 0.023 ms, against the dense GEMV's 0.069 / 0.117 / 0.067 ms on the same
//! shapes. The earlier one-lane-per-row kernel took 3.77 / 1.89 / 0.74 / 0.18 ms on
//! fc6. About 0.023 ms is a floor for one launch there. Conv timings on lavapipe (a
//! CPU) are in docs/benchmarks-archive.md.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::encode::StepIo;
use super::select;
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

/// Invocations per `sparse_fc` workgroup (the shader's `@workgroup_size`).
const FC_WORKGROUP: usize = select::SPARSE_FC_WORKGROUP;

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
    fc_lanes_log2: Option<u32>,
) -> Result<Vec<Dispatch>, GpuError> {
    // An fc layer (`sparse_fc`) with 2^lanes_log2 lanes per row, or a conv (`sparse_conv`).
    let fc = fc_lanes_log2.is_some();
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
    let lanes_log2 = fc_lanes_log2.unwrap_or(0);
    let fc_grid = if fc {
        let blocks = cout.div_ceil(FC_WORKGROUP >> lanes_log2);
        let mut grid = io.ctx.grid(blocks).map_err(|e| io.unsupported(e))?;
        if batch > max {
            return Err(io.unsupported(format!(
                "batch {batch} exceeds the {max} workgroups per dimension"
            )));
        }
        grid[2] = batch.max(1) as u32;
        grid
    } else {
        [1, 1, 1]
    };
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
        lanes_log2 as usize,
    ]
    .map(uw);
    let (k, grid) = if fc {
        (fc_kernel(io.ctx), fc_grid)
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
        None,
    )
}

/// Records a sparse Linear (`l.weight` must be `Weights::Sparse(w)`) with `sparse_fc`:
/// `2^lanes_log2` lanes per output row (`select::sparse_fc_lanes_log2`), grid z = batch
/// item.
pub(crate) fn encode_linear(
    io: &StepIo,
    l: &Linear,
    w: &SparseWeights,
    lanes_log2: u32,
) -> Result<Vec<Dispatch>, GpuError> {
    let batch = io.inputs[0].1[0];
    dispatch(
        io,
        [batch, w.row_len(), 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1],
        w,
        l.bias.as_ref(),
        Some(lanes_log2),
    )
}
