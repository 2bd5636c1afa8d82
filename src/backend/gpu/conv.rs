//! Dense convolution: four kernels, chosen per layer.
//!
//! - `conv_gemm` (shaders/conv_gemm.wgsl): the GPU kernel. 64x64 implicit-GEMM tiles,
//!   4x4 register blocks, weights transposed at upload (one vec4 load per invocation and
//!   K tile), input taps from a per-layer offset table (no division in the loop), the
//!   next K tile's loads issued before the current tile's multiply, and K split across
//!   workgroups when a layer has too few output tiles to fill the GPU
//!   (`conv_gemm_reduce` sums the slices).
//! - `conv_fwd_tiled` (shaders/dense_conv.wgsl): the first tiled kernel (same tiles, each
//!   load waited on before the next, weights as stored). Measured on an NVIDIA H200
//!   (Vulkan): every ResNet-18 3x3 conv took ~4 us per 16-deep K step whatever the batch
//!   (latency-bound: 1.2 ms for a 7x7x512 layer at batch 1 and at batch 8), 3.6-21% of
//!   the measured FMA peak at batch 8. Kept for comparison, CPU adapters' Linear at
//!   batch >= 32 and the retraining kernels.
//! - `conv_fwd_ubo` (shaders/dense_conv_ubo.wgsl): weights through 64 KiB uniform buffers,
//!   32 output channels per invocation; the CPU-adapter kernel.
//! - `conv_fwd_direct`: one invocation per output, for < 16 output channels per group
//!   (depthwise).
//!
//! Numbers behind the choice (lavapipe, Mesa 22.3.6 / LLVM 15, 2 shared AMD EPYC cores,
//! load average ~8, so CPU timings, not GPU speed; 3x3 conv 64->64, 56x56, batch 8,
//! 1.85 GFLOP, timestamp queries): `conv_fwd_tiled` 0.18-0.21 GFLOP/s, `conv_fwd_ubo`
//! 0.7-1.2 GFLOP/s; an FMA-only micro-kernel reached 11-18 GFLOP/s on the same adapter,
//! so ~6-8% of peak. Rejected: a register-blocked kernel reading weights from storage
//! (0.1 GFLOP/s: llvmpipe turns every storage load inside a loop into a per-lane scalar
//! loop, uniform address or not); 16 instead of 32 channels per invocation (~10% slower);
//! trusted shader modules without loop bounding and division guards (no change). With
//! weights from the uniform buffer, the remaining cost is the per-lane input load.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::encode::StepIo;
use super::select::{self, DenseConv, UBO_FLOATS};
use super::GpuError;
use crate::graph::{Conv2d, Tensor};
pub use crate::tuning::ConvKernel;
use std::sync::Arc;
use wgpu::util::DeviceExt;

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

pub(crate) fn tiled(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("dense_conv", SOURCE, "conv_fwd_tiled", &LAYOUT)
}

const SOURCE_UBO: &str = include_str!("../../../shaders/dense_conv_ubo.wgsl");

/// Bindings of `conv_fwd_ubo`: input, weights (uniform), bias, output, params.
const LAYOUT_UBO: [Slot; 5] = [
    Slot::Read,
    Slot::Uniform,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

fn ubo(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("dense_conv_ubo", SOURCE_UBO, "conv_fwd_ubo", &LAYOUT_UBO)
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

/// Records a conv on dense f32 weights (compressed weights decoded here, once) with the
/// kernel `select::conv` chose.
pub(crate) fn encode(
    io: &StepIo,
    c: &Conv2d,
    kernel: DenseConv,
) -> Result<Vec<Dispatch>, GpuError> {
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
    match kernel {
        DenseConv::Uniform => return encode_ubo(io, c, &geom, &weight.data),
        DenseConv::Gemm { wide, split_k } => {
            return encode_gemm(io, &geom, &weight.data, c.bias.as_ref(), wide, split_k)
        }
        DenseConv::Direct | DenseConv::Tiled => {}
    }
    let chunks = upload_rows(io, &weight.data, cout, k_len, c.bias.as_ref())?;
    if chunks.len() > 1 && c.groups > 1 {
        return Err(io.unsupported(format!(
            "grouped conv weights of {} bytes exceed the {}-byte binding limit",
            weight.bytes(),
            io.max_binding
        )));
    }
    let direct_kernel = kernel == DenseConv::Direct;
    let kernel = if direct_kernel {
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
            let groups = if direct_kernel {
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

/// `conv_fwd_ubo`: one dispatch per (group, block of output rows, slice of input
/// channels) whose weights fill one 64 KiB uniform buffer; slices after the first add
/// to the output, so the steps of one layer must run in order (they do: one pass).
fn encode_ubo(
    io: &StepIo,
    c: &Conv2d,
    geom: &Geometry,
    weight: &[f32],
) -> Result<Vec<Dispatch>, GpuError> {
    let khw = geom.kh * geom.kw;
    let (cin_g, cout_g) = (geom.cin_g, geom.cout_g);
    // Rows are loaded in zero-padded blocks of 32, so a slice of input channels is sized
    // for at least one whole block (sizing it for fewer rows, e.g. 28 of a 672 -> 28 1x1
    // conv, left no room for a block: EfficientNet-B0's SE reduce).
    let ci_per = cin_g.min((UBO_FLOATS / (khw * cout_g.min(64).next_multiple_of(32))).max(1));
    // Whole 32-row blocks (zero-padded) must fit the buffer.
    let rows_per = (UBO_FLOATS / (ci_per * khw)) / 32 * 32;
    let zeros;
    let bias: &[f32] = match &c.bias {
        Some(b) => &b.data,
        None => {
            zeros = vec![0.0; geom.cout_g * geom.groups];
            &zeros
        }
    };
    let pixels = geom.batch * geom.oh * geom.ow;
    let kernel = ubo(io.ctx);
    let mut out = vec![];
    for g in 0..geom.groups {
        for r0 in (0..cout_g).step_by(rows_per) {
            let rows = rows_per.min(cout_g - r0);
            let row0 = g * cout_g + r0;
            let bias_buf = io.ctx.upload(
                &format!("{} bias {row0}..{}", io.name, row0 + rows),
                &bias[row0..row0 + rows],
            );
            for ci0 in (0..cin_g).step_by(ci_per) {
                let cc = ci_per.min(cin_g - ci0);
                // [block of 32 rows][k][row in block], as conv_fwd_ubo loads it.
                let kc = cc * khw;
                let mut data = vec![0.0f32; UBO_FLOATS];
                for r in 0..rows {
                    let src = (row0 + r) * geom.k_len + ci0 * khw;
                    let dst0 = (r / 32) * kc * 32 + r % 32;
                    for k in 0..kc {
                        data[dst0 + k * 32] = weight[src + k];
                    }
                }
                let label = format!(
                    "{} rows {row0}..{} channels {ci0}..{}",
                    io.name,
                    row0 + rows,
                    ci0 + cc
                );
                let w_buf = io.ctx.upload_uniform(&label, &data);
                let g_chunk = Geometry {
                    cout_g: rows,
                    k_len: cc * khw,
                    c_off: geom.c_off + row0,
                    ..*geom
                };
                let mut words = g_chunk.words();
                words.extend([
                    uw(g),
                    uw(ci0),
                    uw(cc),
                    (ci0 > 0) as u32,
                    (ci0 + cc == cin_g) as u32,
                ]);
                let groups = io
                    .ctx
                    .grid(pixels.div_ceil(64))
                    .map_err(|e| io.unsupported(e))?;
                if groups[1] > 1 {
                    return Err(
                        io.unsupported("too many pixels for one grid row; use a smaller batch")
                    );
                }
                out.push(io.ctx.dispatch(
                    &kernel,
                    &label,
                    &[
                        io.inputs[0].0.clone(),
                        Bind::f32s(&w_buf, UBO_FLOATS),
                        Bind::f32s(&bias_buf, rows),
                        io.output.0.clone(),
                    ],
                    &words,
                    [groups[0], rows.div_ceil(32) as u32, 1],
                ));
            }
        }
    }
    Ok(out)
}

const SOURCE_GEMM: &str = include_str!("../../../shaders/conv_gemm.wgsl");

/// Bindings of `conv_gemm` and `conv_gemm_reduce`: input, transposed weights, bias,
/// output, tap table, partial sums, params.
const LAYOUT_GEMM: [Slot; 7] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

/// Depth of one K tile of `conv_gemm`.
const GEMM_TK: usize = 16;

/// The tap table of `conv_gemm`: per k (padded to whole K tiles), the input offset from
/// the pixel's window origin and the (dy, dx) displacement packed as `dy << 16 | dx`;
/// padding entries get a displacement no input has, so they read zero.
fn gemm_taps(g: &Geometry, k_pad: usize) -> Result<Vec<u32>, String> {
    let (dy_max, dx_max) = ((g.kh - 1) * g.dh, (g.kw - 1) * g.dw);
    if dy_max >= 0xffff || dx_max >= 0xffff || g.h >= 0x7fff || g.w >= 0x7fff {
        return Err(format!(
            "kernel extent {dy_max}x{dx_max} or input {}x{} too large for the tap table",
            g.h, g.w
        ));
    }
    let mut taps = Vec::with_capacity(2 * k_pad);
    for k in 0..k_pad {
        if k < g.k_len {
            let (ci, r) = (k / (g.kh * g.kw), k % (g.kh * g.kw));
            let (dy, dx) = ((r / g.kw) * g.dh, (r % g.kw) * g.dw);
            taps.push(uw(ci * g.h * g.w + dy * g.w + dx));
            taps.push(uw(dy << 16 | dx));
        } else {
            taps.push(0);
            taps.push(0xffff << 16);
        }
    }
    Ok(taps)
}

/// Weight rows `r0..r0 + rows` of every group, transposed to `[group][k_pad][m_pad]`
/// (m_pad = rows rounded up to 4), zero-filled.
fn gemm_weights(weight: &[f32], g: &Geometry, r0: usize, rows: usize, k_pad: usize) -> Vec<f32> {
    let m_pad = rows.next_multiple_of(4);
    let mut t = vec![0.0f32; g.groups * k_pad * m_pad];
    for grp in 0..g.groups {
        for m in 0..rows {
            let src = &weight[(grp * g.cout_g + r0 + m) * g.k_len..][..g.k_len];
            for (k, &v) in src.iter().enumerate() {
                t[(grp * k_pad + k) * m_pad + m] = v;
            }
        }
    }
    t
}

/// `conv_gemm`: transposed weights (split by output channels when they exceed the
/// binding limit), one dispatch per chunk, plus `conv_gemm_reduce` when K is split.
pub(crate) fn encode_gemm(
    io: &StepIo,
    geom: &Geometry,
    weight: &[f32],
    bias: Option<&Tensor>,
    wide: bool,
    forced_splits: Option<usize>,
) -> Result<Vec<Dispatch>, GpuError> {
    let k_pad = geom.k_len.next_multiple_of(GEMM_TK);
    let k_tiles = k_pad / GEMM_TK;
    let row_bytes = (k_pad * 4 * geom.groups) as u64;
    let per = ((io.max_binding / row_bytes.max(1)) as usize) / 4 * 4;
    if per == 0 {
        return Err(io.unsupported(format!(
            "4 output channels of {k_pad} f32 weights exceed the {}-byte binding limit",
            io.max_binding
        )));
    }
    let per = per.min(geom.cout_g);
    if per < geom.cout_g && geom.groups > 1 {
        return Err(io.unsupported(format!(
            "grouped conv weights of {} bytes exceed the {}-byte binding limit",
            weight.len() * 4,
            io.max_binding
        )));
    }
    let taps = gemm_taps(geom, k_pad).map_err(|e| io.unsupported(e))?;
    let tap_buf = io
        .ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(&format!("{} taps", io.name)),
            contents: bytemuck::cast_slice(&taps),
            usage: wgpu::BufferUsages::STORAGE,
        });
    let zeros;
    let bias: &[f32] = match bias {
        Some(b) => &b.data,
        None => {
            zeros = vec![0.0; geom.cout_g * geom.groups];
            &zeros
        }
    };
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    let n_total = geom.batch * geom.oh * geom.ow;
    let (entry, tile_n) = if wide {
        ("conv_gemm_wide", 2 * TILE_N)
    } else {
        ("conv_gemm", TILE_N)
    };
    let main = io.ctx.kernel("conv_gemm", SOURCE_GEMM, entry, &LAYOUT_GEMM);
    let reduce = io
        .ctx
        .kernel("conv_gemm", SOURCE_GEMM, "conv_gemm_reduce", &LAYOUT_GEMM);
    let mut out = vec![];
    for r0 in (0..geom.cout_g).step_by(per) {
        let rows = per.min(geom.cout_g - r0);
        let chunked = per < geom.cout_g;
        let label = if chunked {
            format!("{} rows {r0}..{}", io.name, r0 + rows)
        } else {
            io.name.to_string()
        };
        let nx = n_total.div_ceil(tile_n);
        let ny = rows.div_ceil(TILE_M);
        let splits = select::gemm_splits(nx * ny * geom.groups, k_tiles, forced_splits);
        let kt_per = k_tiles.div_ceil(splits);
        if nx > max || ny > max || geom.groups * splits > max {
            return Err(io.unsupported(format!(
                "{nx}x{ny}x{} workgroups exceed the per-dimension limit {max}; use a smaller batch",
                geom.groups * splits
            )));
        }
        let m_pad = rows.next_multiple_of(4);
        let w_buf = io.ctx.upload(
            &format!("{label} weight (transposed)"),
            &gemm_weights(weight, geom, r0, rows, k_pad),
        );
        let b_buf = if chunked {
            io.ctx
                .upload(&format!("{label} bias"), &bias[r0..r0 + rows])
        } else {
            io.ctx.upload(&format!("{label} bias"), bias)
        };
        let part_len = if splits > 1 {
            splits * rows * geom.groups * n_total
        } else {
            1
        };
        let part = io.ctx.try_create_buffer(
            &format!("{label} partial sums"),
            (part_len * 4) as u64,
            wgpu::BufferUsages::STORAGE,
        )?;
        let g = Geometry {
            cout_g: rows,
            c_off: geom.c_off + r0,
            ..*geom
        };
        let mut words = g.words();
        words.extend([uw(k_pad), uw(m_pad / 4), uw(splits), uw(kt_per)]);
        let binds = [
            io.inputs[0].0.clone(),
            Bind::f32s(&w_buf, geom.groups * k_pad * m_pad),
            Bind::f32s(&b_buf, rows * geom.groups),
            io.output.0.clone(),
            Bind::f32s(&tap_buf, taps.len()),
            Bind::f32s(&part, part_len),
        ];
        out.push(io.ctx.dispatch(
            &main,
            &label,
            &binds,
            &words,
            [nx as u32, ny as u32, (geom.groups * splits) as u32],
        ));
        if splits > 1 {
            let grid = io.grid256(rows * geom.groups * n_total)?;
            out.push(io.ctx.dispatch(
                &reduce,
                &format!("{label} K-slice sum"),
                &binds,
                &words,
                grid,
            ));
        }
    }
    Ok(out)
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

/// Runs `conv_fwd_tiled` with an arbitrary geometry: the GPU trainer's dense conv and fc
/// forward (`select::TRAINER_CONV`).
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
