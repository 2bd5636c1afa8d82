//! Dense convolution (shaders/dense_conv.wgsl): tiled implicit GEMM, plus a direct
//! kernel for convs with few output channels per group (depthwise).

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::model::StepIo;
use super::GpuError;
use crate::graph::{Conv2d, Tensor};
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/dense_conv.wgsl");

/// Bindings: input, weights, bias, output, params.
pub(crate) const LAYOUT: [Slot; 5] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

/// Output rows (channels) per workgroup tile of `conv_fwd_tiled`.
const TILE_M: usize = 64;
/// Output pixels per workgroup tile of `conv_fwd_tiled`.
const TILE_N: usize = 64;
/// Below this many output channels per group the 64-row tile is mostly idle and the
/// direct kernel is used instead (depthwise: 1).
const DIRECT_BELOW: usize = 16;

pub(crate) fn tiled(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("dense_conv", SOURCE, "conv_fwd_tiled", &LAYOUT)
}

fn direct(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("dense_conv", SOURCE, "conv_fwd_direct", &LAYOUT)
}

/// The `Params` struct of dense_conv.wgsl, field for field.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) sh: usize,
    pub(crate) sw: usize,
    pub(crate) ph: usize,
    pub(crate) pw: usize,
    pub(crate) dh: usize,
    pub(crate) dw: usize,
    pub(crate) cin_g: usize,
    pub(crate) cout_g: usize,
    pub(crate) k_len: usize,
    pub(crate) c_total: usize,
    pub(crate) c_off: usize,
    pub(crate) relu: bool,
    pub(crate) groups: usize,
}

impl Geometry {
    fn words(&self) -> Vec<u32> {
        [
            self.batch,
            self.cin,
            self.h,
            self.w,
            self.oh,
            self.ow,
            self.kh,
            self.kw,
            self.sh,
            self.sw,
            self.ph,
            self.pw,
            self.dh,
            self.dw,
            self.cin_g,
            self.cout_g,
            self.k_len,
            self.c_total,
            self.c_off,
            self.relu as usize,
            self.groups,
        ]
        .iter()
        .map(|&v| uw(v))
        .collect()
    }

    /// A 1x1 "conv" over `[batch, k, 1, 1]`: the tiled GEMM for Linear at larger batch.
    pub(crate) fn linear(
        batch: usize,
        k: usize,
        rows: usize,
        total: usize,
        off: usize,
        relu: bool,
    ) -> Self {
        Geometry {
            batch,
            cin: k,
            h: 1,
            w: 1,
            oh: 1,
            ow: 1,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            cin_g: k,
            cout_g: rows,
            k_len: k,
            c_total: total,
            c_off: off,
            relu,
            groups: 1,
            ..Default::default()
        }
    }
}

/// Rows `r0..r0+rows` of a `[rows_total, row_len]` weight matrix in their own buffers.
pub(crate) struct RowChunk {
    pub(crate) r0: usize,
    pub(crate) rows: usize,
    pub(crate) weight: wgpu::Buffer,
    pub(crate) bias: wgpu::Buffer,
}

/// Uploads a row-major `[rows, row_len]` weight matrix and its bias, split by rows into
/// chunks of at most `io.max_binding` bytes each (never truncated).
pub(crate) fn upload_rows(
    io: &StepIo,
    data: &[f32],
    rows: usize,
    row_len: usize,
    bias: Option<&Tensor>,
) -> Result<Vec<RowChunk>, GpuError> {
    let per = (io.max_binding / (row_len.max(1) as u64 * 4)) as usize;
    if per == 0 {
        return Err(io.unsupported(format!(
            "one weight row of {row_len} f32 exceeds the {}-byte binding limit",
            io.max_binding
        )));
    }
    let zeros;
    let bias: &[f32] = match bias {
        Some(b) => &b.data,
        None => {
            zeros = vec![0.0; rows];
            &zeros
        }
    };
    let chunks = rows.div_ceil(per);
    Ok((0..chunks)
        .map(|c| {
            let r0 = c * per;
            let r1 = (r0 + per).min(rows);
            let label = if chunks == 1 {
                io.name.to_string()
            } else {
                format!("{} rows {r0}..{r1}", io.name)
            };
            RowChunk {
                r0,
                rows: r1 - r0,
                weight: io.ctx.upload(
                    &format!("{label} weight"),
                    &data[r0 * row_len..r1 * row_len],
                ),
                bias: io.ctx.upload(&format!("{label} bias"), &bias[r0..r1]),
            }
        })
        .collect())
}

pub(crate) fn encode(io: &StepIo, c: &Conv2d) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let y = io.output.1;
    let weight = c.weight.to_dense();
    let cout = c.out_channels();
    let cin_g = c.in_channels_per_group();
    let cout_g = cout / c.groups;
    let k_len = cin_g * c.kernel[0] * c.kernel[1];
    let geom = Geometry {
        batch: x[0],
        cin: x[1],
        h: x[2],
        w: x[3],
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
        cin_g,
        cout_g,
        k_len,
        c_total: cout,
        c_off: 0,
        relu: io.relu,
        groups: c.groups,
    };
    let chunks = upload_rows(io, &weight.data, cout, k_len, c.bias.as_ref())?;
    if chunks.len() > 1 && c.groups > 1 {
        return Err(io.unsupported(format!(
            "grouped conv weights of {} bytes exceed the {}-byte binding limit",
            weight.bytes(),
            io.max_binding
        )));
    }
    let use_direct = cout_g < DIRECT_BELOW;
    let kernel = if use_direct {
        direct(io.ctx)
    } else {
        tiled(io.ctx)
    };
    chunks
        .iter()
        .map(|ch| {
            let g = if chunks.len() > 1 {
                Geometry {
                    cout_g: ch.rows,
                    c_off: ch.r0,
                    ..geom
                }
            } else {
                geom
            };
            let groups = if use_direct {
                io.grid256(g.batch * g.cout_g * g.groups * g.oh * g.ow)?
            } else {
                dispatch_tiled(io, &g)?
            };
            Ok(io.ctx.dispatch(
                &kernel,
                io.name,
                &[
                    io.inputs[0].0.clone(),
                    Bind::f32s(&ch.weight, ch.rows * k_len),
                    Bind::f32s(&ch.bias, ch.rows),
                    io.output.0.clone(),
                ],
                &g.words(),
                groups,
            ))
        })
        .collect()
}

/// Workgroup counts of `conv_fwd_tiled`: pixel tiles, channel tiles, groups.
pub(crate) fn dispatch_tiled(io: &StepIo, g: &Geometry) -> Result<[u32; 3], GpuError> {
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    let nx = (g.batch * g.oh * g.ow).div_ceil(TILE_N);
    let ny = g.cout_g.div_ceil(TILE_M);
    if nx > max || ny > max || g.groups > max {
        return Err(io.unsupported(format!(
            "{nx}x{ny}x{} workgroups exceed the per-dimension limit {max}; use a smaller batch",
            g.groups
        )));
    }
    Ok([nx as u32, ny as u32, g.groups as u32])
}

/// Runs `conv_fwd_tiled` with an arbitrary geometry (Linear at larger batch).
pub(crate) fn dispatch_geometry(
    io: &StepIo,
    g: &Geometry,
    binds: &[Bind],
) -> Result<Dispatch, GpuError> {
    let groups = dispatch_tiled(io, g)?;
    Ok(io
        .ctx
        .dispatch(&tiled(io.ctx), io.name, binds, &g.words(), groups))
}
