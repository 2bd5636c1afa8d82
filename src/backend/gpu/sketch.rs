//! Sketched (binary-basis) Conv and Linear layers (shaders/sketch.wgsl) on packed bits.
//!
//! The packed `SketchWeights` are repacked on the host, still as bits, into the order each
//! kernel reads; nothing is expanded to f32 weights. `y_c = Σ_j a_{c,j} (2 P_{c,j} − S)`
//! with `S` the sum of the inputs and `P` the sum of those whose bit is set, so the inner
//! loops only add.
//!
//! - Conv (`sketch_conv`): lanes = 64 output pixels, workgroup = one block of output
//!   channels whose `(channel, base)` pairs fit 64 bits; the bit words, two u32 per
//!   `k` and block (bit q % 32 of word q / 32 = pair q), come from a 64 KiB uniform
//!   buffer. Also Linear at batch >= 8 (a 1x1 conv over `[batch, K, 1, 1]`).
//! - Linear at batch < 8 (`sketch_fc`, split K): lanes = output rows reading their own
//!   bit words (storage, `[m][word][row]` so lanes read consecutive words), the input row
//!   from a uniform window filled by `sketch_gather` one dispatch earlier; grid `(row
//!   blocks of 64, K slices, batch items)`. Each invocation covers one slice of the
//!   window's words for all m bases of its row (one window load feeds every base; with
//!   one or two bases, four or two words are loaded per iteration so that about four
//!   loads are in flight), and forms `Σ_j a_j (2 P_j − S)` with the `P` and `S` of its
//!   own slice: both are sums over the slices, so the slices' results add up to the
//!   row's. With more than one slice they go to a scratch buffer `[item][slice][row]`
//!   and `fc_reduce` (shaders/fc_reduce.wgsl) adds them and applies the epilogue (bias, accumulate across
//!   windows, ReLU). Slices (`fc_slices`): 1 on software adapters (lavapipe keeps one
//!   invocation per row), about 16 words per base and slice (at most 64 slices) on GPUs;
//!   `GpuOptions::fc_split_k` forces N.
//!
//! Measured on lavapipe (llvmpipe, LLVM 15, 256-bit; 2 shared cores under load ~5-8, so
//! CPU timings, not GPU speed, +-40% run to run; timestamp queries, best of 5; the
//! ignored `timing` test in tests/gpu_sketch.rs):
//! - fc 9216->4096, batch 1 (75.5 MFLOP dense-equivalent): dense GEMV 0.9-1.4 s;
//!   sketch m=1 48-69 ms (1.1-1.6 GFLOP/s-eq.), m=2 77-85 ms, m=4 132-183 ms.
//!   Window loads dominate on lavapipe: a separate pass for S cost as much as the m=1
//!   pass itself (121 ms before S was folded into the first pass), and one window load
//!   now feeds up to four bases (m=4: 292 -> 132 ms).
//!   Rejected: a subset-sum LUT (16 sums per 4 inputs, built by the gather kernel into
//!   the uniform window, one lookup per 4 bits at a per-lane index): in one paired run
//!   32.6/49.3/93.8 ms against this kernel's 40.0/57.2/87.8 ms (m = 1/2/4), i.e. ~20%
//!   faster at m <= 2 on lavapipe only; on GPUs a uniform load at divergent addresses
//!   serialises in the constant cache, so it is not worth a second kernel.
//! - conv 3x3 64->64, 56x56, batch 8 (1.85 GFLOP): dense `conv_fwd_ubo` 1.0-2.0 s;
//!   sketch m=1 0.48-0.75 s (2.5-3.9 GFLOP/s-eq.), m=2 0.87-1.13 s, m=4 1.3-1.7 s.
//!   Pairs per block: 16 and 32 ran ~1.15 s at m=1 (the per-lane input load dominates,
//!   not the selects), 64 ~0.5 s, 128 1.4 s (spills).
//!
//! Packed weights are 1/32 of dense per base, so on a real GPU the fc should be bound by
//! reading `m/32` of the dense bytes. Measured on an NVIDIA H200 (Vulkan, timestamp
//! queries, AlexNet fc6 at batch 1) with the one-invocation-per-row kernel, before split
//! K: m = 1/2/4 0.19/0.21/0.27 ms (25/44/70 GB/s of bits, against the dense GEMV's
//! 2158 GB/s), fc8 ~0.09-0.13 ms: 4096 invocations each looping over all of K cannot
//! cover DRAM latency. Split K, in the ignored `fc_split_k_timing` test of
//! tests/gpu_sketch.rs on the same H200 (old kernel there: fc6 0.19/0.21/0.27 ms, fc8
//! 0.43-0.61 ms): fc6 m = 1/2/4 0.032/0.13-0.14/0.21-0.23 ms (auto slices; 16 slices
//! 0.031/0.13/0.215), fc7 0.065-0.13 ms, fc8 0.057-0.11 ms. The new kernel with one
//! slice is slower than the old one at m >= 2 on that GPU (fc6 m = 4: 1.37 ms; cause not
//! found), which only software adapters run. The AlexNet bench has not been rerun.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::encode::{bias_or_zeros, StepIo};
use super::select;
use super::GpuError;
use crate::graph::{Conv2d, Linear};
use crate::weights::SketchWeights;
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/sketch.wgsl");

/// u32 words (or f32 values) in one 64 KiB uniform buffer, as the shader declares it.
pub(crate) const UBO_WORDS: usize = 16384;

/// Bindings of `sketch_conv`: input, bit words (uniform), scales, bias, output, params.
const LAYOUT_CONV: [Slot; 6] = [
    Slot::Read,
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

/// Bindings of `sketch_fc`: input window (uniform), bits, scales, bias, output, params.
const LAYOUT_FC: [Slot; 6] = [
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

const SOURCE_REDUCE: &str = include_str!("../../../shaders/fc_reduce.wgsl");

/// Bindings of `fc_reduce`: partial sums, bias, output, params.
const LAYOUT_REDUCE: [Slot; 4] = [Slot::Read, Slot::Read, Slot::Write, Slot::Uniform];

/// Bindings of `sketch_gather`: input, window, params.
const LAYOUT_GATHER: [Slot; 3] = [Slot::Read, Slot::Write, Slot::Uniform];

fn conv_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("sketch", SOURCE, "sketch_conv", &LAYOUT_CONV)
}

/// Where a split-K fc dispatch's partial sums go and how `fc_reduce` finishes them.
pub(crate) struct FcReduce<'a> {
    /// The partial sums, `[item][slice][row]`.
    pub(crate) partials: Bind,
    /// The chunk's bias.
    pub(crate) bias: &'a wgpu::Buffer,
    /// Rows of the chunk, the first one's index in the output row, the output row length.
    pub(crate) rows: usize,
    pub(crate) row0: usize,
    pub(crate) out_total: usize,
    /// K slices.
    pub(crate) slices: usize,
    /// First batch item of the input window and how many it holds.
    pub(crate) n0: usize,
    pub(crate) nn: usize,
    /// Add to what an earlier window wrote; add the bias now; apply ReLU now.
    pub(crate) accumulate: bool,
    pub(crate) add_bias: bool,
    pub(crate) relu: bool,
}

/// Records `fc_reduce` (shaders/fc_reduce.wgsl), shared by `sketch_fc` and `pow2_fc`.
pub(crate) fn fc_reduce(io: &StepIo, label: &str, r: FcReduce) -> Dispatch {
    let kernel = io
        .ctx
        .kernel("fc_reduce", SOURCE_REDUCE, "fc_reduce", &LAYOUT_REDUCE);
    let params = [
        uw(r.rows),
        uw(r.slices),
        uw(r.row0),
        uw(r.out_total),
        uw(r.n0),
        r.accumulate as u32,
        r.add_bias as u32,
        r.relu as u32,
    ];
    io.ctx.dispatch(
        &kernel,
        label,
        &[r.partials, Bind::f32s(r.bias, r.rows), io.output.0.clone()],
        &params,
        [r.rows.div_ceil(64) as u32, 1, r.nn as u32],
    )
}

fn fc_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("sketch", SOURCE, "sketch_fc", &LAYOUT_FC)
}

/// `sketch_gather`: copies inputs `k0 .. k0 + kc` of items `n0 .. n0 + nn` into a
/// uniform window (item stride `kpad`, zero-filled), for `sketch_fc` and `pow2_fc`.
fn gather_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("sketch", SOURCE, "sketch_gather", &LAYOUT_GATHER)
}

/// Convolution geometry in the order of `ConvParams` (first 18 words).
struct ConvShape {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
}

/// Bit `k` of row `(c, j)`.
fn bit(w: &SketchWeights, c: usize, j: usize, k: usize) -> u32 {
    w.bit_row(c, j)[k / 32] >> (k % 32) & 1
}

/// K slices of one split-K fc dispatch (`pow2_fc`, `sketch_fc`) over a window of `words`
/// code words per row (per base), `rows` rows and `items` batch items: `(slices, words
/// per slice)`, every slice non-empty. The slices wanted come from
/// `select::fc_slices_wanted`; the partial sums (`items * slices * rows` f32) must fit one
/// storage binding and the grid the per-dimension limit, which cap them here.
pub(crate) fn fc_slices(io: &StepIo, words: usize, rows: usize, items: usize) -> (usize, usize) {
    let words = words.max(1);
    let want = select::fc_slices_wanted(
        words,
        rows,
        items,
        io.ctx.is_software(),
        io.options.fc_split_k,
    );
    let max_dim = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    let fit = (io.ctx.max_binding_bytes() / (4 * rows * items).max(1) as u64) as usize;
    let s = want.min(words).min(max_dim).min(fit).max(1);
    let per = words.div_ceil(s);
    (words.div_ceil(per), per)
}

/// `(slices, words per slice)` of every (input window, row chunk) dispatch of an fc layer.
pub(crate) type FcPlans = Vec<Vec<(usize, usize)>>;

/// K slices of every (input window, row chunk) dispatch of a split-K fc layer, and the
/// scratch buffer they share (sized for the largest; `None` when nothing splits).
pub(crate) fn fc_plans(
    io: &StepIo,
    windows: &[InputWindow],
    chunk_rows: &[usize],
) -> Result<(FcPlans, Option<wgpu::Buffer>), GpuError> {
    let plans: FcPlans = windows
        .iter()
        .map(|win| {
            chunk_rows
                .iter()
                .map(|&rows| fc_slices(io, win.wn, rows, win.nn))
                .collect()
        })
        .collect();
    let scratch_len = windows
        .iter()
        .zip(&plans)
        .flat_map(|(win, plan)| {
            chunk_rows
                .iter()
                .zip(plan)
                .filter(|(_, &(s, _))| s > 1)
                .map(move |(&rows, &(s, _))| win.nn * s * rows)
        })
        .max()
        .unwrap_or(0);
    Ok((plans, fc_scratch(io, scratch_len)?))
}

/// The scratch buffer of a split-K fc layer: `floats` f32 of partial sums, shared by its
/// dispatches (each reduce reads them before the next kernel writes them); `None` when no
/// dispatch splits.
pub(crate) fn fc_scratch(io: &StepIo, floats: usize) -> Result<Option<wgpu::Buffer>, GpuError> {
    if floats == 0 {
        return Ok(None);
    }
    io.ctx
        .try_create_buffer(
            &format!("{} split-K partial sums", io.name),
            (floats * 4) as u64,
            wgpu::BufferUsages::STORAGE,
        )
        .map(Some)
}

/// Uniform-buffer words available to one dispatch: 64 KiB, or fewer when the caller
/// caps bindings (tests force the chunked path that way).
pub(crate) fn word_cap(io: &StepIo) -> Result<usize, GpuError> {
    if (io.ctx.limits().max_uniform_buffer_binding_size as usize) < UBO_WORDS * 4 {
        return Err(io.unsupported(format!(
            "the adapter's uniform binding limit {} is below the {} bytes the sketch kernels need",
            io.ctx.limits().max_uniform_buffer_binding_size,
            UBO_WORDS * 4
        )));
    }
    Ok(UBO_WORDS.min((io.max_binding / 4) as usize))
}

/// Records a sketched conv (`c.weight` must be `Weights::Sketch(w)`).
pub(crate) fn encode_conv(
    io: &StepIo,
    c: &Conv2d,
    w: &SketchWeights,
) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let y = io.output.1;
    let shape = ConvShape {
        batch: x[0],
        cin: x[1],
        h: x[2],
        w: x[3],
        oh: y[2],
        ow: y[3],
        kernel: c.kernel,
        stride: c.stride,
        pads: [c.pads[0], c.pads[1]],
        dilation: c.dilation,
        groups: c.groups,
    };
    let bias = bias_or_zeros(c.bias.as_ref(), w.rows());
    conv_dispatches(io, &shape, w, &bias)
}

fn conv_dispatches(
    io: &StepIo,
    s: &ConvShape,
    w: &SketchWeights,
    bias: &[f32],
) -> Result<Vec<Dispatch>, GpuError> {
    let m = w.bases();
    if m == 0 || m > 64 {
        return Err(io.unsupported(format!(
            "{m} bases per channel; the sketch conv kernel takes 1 to 64"
        )));
    }
    let cout = w.rows();
    let groups = s.groups;
    let cout_g = cout / groups;
    let cin_g = s.cin / groups;
    let khw = s.kernel[0] * s.kernel[1];
    let k_len = w.row_len();
    if cin_g * khw != k_len || cout_g * groups != cout {
        return Err(io.unsupported(format!(
            "sketch weights {:?} do not match {} input channels in {groups} groups",
            w.shape(),
            s.cin
        )));
    }
    let cap = word_cap(io)?;
    // Channels per block: its (channel, base) pairs fill at most the 32 bits of a word.
    let rpb = 64 / m;
    let nblocks = cout_g.div_ceil(rpb);
    let ci_per = cin_g.min(cap / (2 * khw.max(1)));
    if ci_per == 0 {
        return Err(io.unsupported(format!(
            "a {}x{} kernel needs {khw} words in one binding, over the {cap}-word cap",
            s.kernel[0], s.kernel[1]
        )));
    }
    let kc_full = 2 * ci_per * khw;
    let bn = nblocks.min(cap / kc_full);
    // Several groups per dispatch only when a whole group's blocks fit (depthwise), so a
    // dispatch's channels are one contiguous range.
    let gn = if bn == nblocks {
        groups.min(cap / (kc_full * nblocks)).max(1)
    } else {
        1
    };
    let pixels = s.batch * s.oh * s.ow;
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    let px_groups = pixels.div_ceil(64);
    if px_groups > max {
        return Err(io.unsupported(format!(
            "{pixels} output pixels need {px_groups} workgroups, over the per-dimension limit {max}; use a smaller batch"
        )));
    }
    let kernel = conv_kernel(io.ctx);
    let mut out = vec![];
    for g0 in (0..groups).step_by(gn) {
        let gcount = gn.min(groups - g0);
        for b0 in (0..nblocks).step_by(bn) {
            let bcount = bn.min(nblocks - b0);
            // Contiguous output channels row0..row1 of this dispatch.
            let row0 = g0 * cout_g + b0 * rpb;
            let row1 = if gcount > 1 {
                (g0 + gcount) * cout_g
            } else {
                g0 * cout_g + ((b0 + bcount) * rpb).min(cout_g)
            };
            let label = format!("{} rows {row0}..{row1}", io.name);
            let scales = io
                .ctx
                .upload(&format!("{label} scales"), &w.scales()[row0 * m..row1 * m]);
            let bias_buf = io.ctx.upload(&format!("{label} bias"), &bias[row0..row1]);
            for ci0 in (0..cin_g).step_by(ci_per) {
                let cc = ci_per.min(cin_g - ci0);
                let kc = cc * khw;
                let mut words = vec![0u32; UBO_WORDS];
                for gl in 0..gcount {
                    let g = g0 + gl;
                    for bl in 0..bcount {
                        let dst = &mut words[2 * (gl * bcount + bl) * kc..][..2 * kc];
                        for r in 0..rpb {
                            let co = (b0 + bl) * rpb + r;
                            if co >= cout_g {
                                break;
                            }
                            let row = g * cout_g + co;
                            for j in 0..m {
                                let q = r * m + j;
                                for t in 0..kc {
                                    dst[2 * t + q / 32] |=
                                        bit(w, row, j, ci0 * khw + t) << (q % 32);
                                }
                            }
                        }
                    }
                }
                let bits = io.ctx.device().create_buffer_init_u32(
                    &format!("{label} channels {ci0}..{} bits", ci0 + cc),
                    &words,
                );
                let params = [
                    s.batch,
                    s.cin,
                    s.h,
                    s.w,
                    s.oh,
                    s.ow,
                    s.kernel[0],
                    s.kernel[1],
                    s.stride[0],
                    s.stride[1],
                    s.pads[0],
                    s.pads[1],
                    s.dilation[0],
                    s.dilation[1],
                    cin_g,
                    cout_g,
                    cout,
                    io.relu as usize,
                    m,
                    rpb,
                    g0,
                    b0,
                    bcount,
                    ci0,
                    cc,
                    kc,
                    (ci0 > 0) as usize,
                    (ci0 + cc == cin_g) as usize,
                    row0,
                ]
                .map(uw);
                out.push(io.ctx.dispatch(
                    &kernel,
                    &label,
                    &[
                        io.inputs[0].0.clone(),
                        Bind::f32s(&bits, UBO_WORDS),
                        Bind::f32s(&scales, (row1 - row0) * m),
                        Bind::f32s(&bias_buf, row1 - row0),
                        io.output.0.clone(),
                    ],
                    &params,
                    [px_groups as u32, bcount as u32, gcount as u32],
                ));
            }
        }
    }
    Ok(out)
}

/// Records a sketched Linear (`l.weight` must be `Weights::Sketch(w)`).
pub(crate) fn encode_linear(
    io: &StepIo,
    l: &Linear,
    w: &SketchWeights,
    as_conv: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    let (batch, k) = io.linear_dims("sketch", w.row_len(), w.shape())?;
    let rows = w.rows();
    let bias = bias_or_zeros(l.bias.as_ref(), rows);
    if as_conv {
        let shape = ConvShape {
            batch,
            cin: k,
            h: 1,
            w: 1,
            oh: 1,
            ow: 1,
            kernel: [1, 1],
            stride: [1, 1],
            pads: [0, 0],
            dilation: [1, 1],
            groups: 1,
        };
        return conv_dispatches(io, &shape, w, &bias);
    }
    let m = w.bases();
    if m == 0 {
        return Err(io.unsupported("0 bases per row"));
    }
    let wpr = w.words_per_row();
    let cap = word_cap(io)?;
    // Input window: whole words of K, at most `cap` floats per dispatch.
    let win_words = wpr.min(cap / 32);
    if win_words == 0 {
        return Err(io.unsupported(format!(
            "a {cap}-word binding cap cannot hold one 32-input word"
        )));
    }
    // Row chunks: each chunk's bits within the storage binding cap.
    let per_row = (m * wpr * 4) as u64;
    let rows_per = ((io.max_binding / per_row) as usize).min(rows);
    if rows_per == 0 {
        return Err(io.unsupported(format!(
            "one row's {per_row} bytes of bits exceed the {}-byte binding limit",
            io.max_binding
        )));
    }
    struct Chunk {
        r0: usize,
        rows: usize,
        bits: wgpu::Buffer,
        scales: wgpu::Buffer,
        bias: wgpu::Buffer,
    }
    let chunks: Vec<Chunk> = (0..rows)
        .step_by(rows_per)
        .map(|r0| {
            let n = rows_per.min(rows - r0);
            let label = format!("{} rows {r0}..{}", io.name, r0 + n);
            // [m][word][row of chunk]
            let mut words = vec![0u32; m * wpr * n];
            for r in 0..n {
                for j in 0..m {
                    for (t, &b) in w.bit_row(r0 + r, j).iter().enumerate() {
                        words[(j * wpr + t) * n + r] = b;
                    }
                }
            }
            Chunk {
                r0,
                rows: n,
                bits: io
                    .ctx
                    .device()
                    .create_buffer_init_u32(&format!("{label} bits"), &words),
                scales: io.ctx.upload(
                    &format!("{label} scales"),
                    &w.scales()[r0 * m..(r0 + n) * m],
                ),
                bias: io.ctx.upload(&format!("{label} bias"), &bias[r0..r0 + n]),
            }
        })
        .collect();
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    if rows_per.div_ceil(64) > max {
        return Err(io.unsupported(format!("{rows_per} rows exceed {max} workgroups of 64")));
    }
    let windows = input_windows(io, [k, batch], [wpr, 32], cap);
    let chunk_rows: Vec<usize> = chunks.iter().map(|ch| ch.rows).collect();
    let (plans, scratch) = fc_plans(io, &windows, &chunk_rows)?;
    let kernel = fc_kernel(io.ctx);
    let mut out = vec![];
    for (win, plan) in windows.into_iter().zip(plans) {
        let label = win.label.clone();
        out.push(win.gather);
        let accumulate = (win.w0 > 0) as usize;
        let last = (win.w0 + win.wn == wpr) as usize;
        for (ch, (slices, spw)) in chunks.iter().zip(plan) {
            let split = match (&scratch, slices > 1) {
                (Some(buf), true) => Some(buf),
                _ => None,
            };
            let params = [
                ch.rows,
                m,
                wpr,
                win.w0,
                win.wn,
                win.kpad,
                rows,
                ch.r0,
                win.n0,
                accumulate,
                last,
                io.relu as usize,
                spw,
                split.is_some() as usize,
            ]
            .map(uw);
            let chunk_label = format!("{label} rows {}..{}", ch.r0, ch.r0 + ch.rows);
            let target = match split {
                Some(buf) => Bind::f32s(buf, win.nn * slices * ch.rows),
                None => io.output.0.clone(),
            };
            out.push(io.ctx.dispatch(
                &kernel,
                &chunk_label,
                &[
                    Bind::f32s(&win.buffer, UBO_WORDS),
                    Bind::f32s(&ch.bits, m * wpr * ch.rows),
                    Bind::f32s(&ch.scales, ch.rows * m),
                    Bind::f32s(&ch.bias, ch.rows),
                    target.clone(),
                ],
                &params,
                [ch.rows.div_ceil(64) as u32, slices as u32, win.nn as u32],
            ));
            if split.is_some() {
                // sketch_fc's epilogue: the bias with the first window, ReLU on the last.
                let finish = FcReduce {
                    partials: target,
                    bias: &ch.bias,
                    rows: ch.rows,
                    row0: ch.r0,
                    out_total: rows,
                    slices,
                    n0: win.n0,
                    nn: win.nn,
                    accumulate: accumulate != 0,
                    add_bias: accumulate == 0,
                    relu: last != 0 && io.relu,
                };
                let label = format!("{chunk_label} reduce {slices} slices");
                out.push(fc_reduce(io, &label, finish));
            }
        }
    }
    Ok(out)
}

/// One uniform window of a Linear layer's input: words `w0 .. w0 + wn` of K (inputs
/// `w0·per_word ..`, zero past K) of batch items `n0 .. n0 + nn`, each item `kpad`
/// floats apart, in `buffer`; `gather` fills it and is recorded before the kernels that
/// read it (`sketch_fc`, `pow2_fc`).
pub(crate) struct InputWindow {
    pub(crate) w0: usize,
    pub(crate) wn: usize,
    pub(crate) kpad: usize,
    pub(crate) n0: usize,
    pub(crate) nn: usize,
    pub(crate) label: String,
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) gather: Dispatch,
}

/// Splits an input of `[batch, k]` into uniform windows of at most `cap` floats: whole
/// words of `per_word` inputs along K (`words` per row), then as many batch items as fit.
/// The caller checked that one word fits (`cap >= per_word`).
pub(crate) fn input_windows(
    io: &StepIo,
    [k, batch]: [usize; 2],
    [words, per_word]: [usize; 2],
    cap: usize,
) -> Vec<InputWindow> {
    let win_words = words.min(cap / per_word).max(1);
    let mut out = vec![];
    for w0 in (0..words).step_by(win_words) {
        let wn = win_words.min(words - w0);
        let k0 = w0 * per_word;
        let kc = (wn * per_word).min(k - k0);
        let kpad = wn * per_word;
        let items = (cap / kpad).clamp(1, batch);
        for n0 in (0..batch).step_by(items) {
            let nn = items.min(batch - n0);
            let label = format!(
                "{} inputs {k0}..{} items {n0}..{}",
                io.name,
                k0 + kc,
                n0 + nn
            );
            let buffer = io.ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{label} window")),
                size: (UBO_WORDS * 4) as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: false,
            });
            let gather = io.ctx.dispatch(
                &gather_kernel(io.ctx),
                &label,
                &[io.inputs[0].0.clone(), Bind::f32s(&buffer, UBO_WORDS)],
                &[k, k0, kc, kpad, n0, nn].map(uw),
                [UBO_WORDS.div_ceil(256) as u32, 1, 1],
            );
            out.push(InputWindow {
                w0,
                wn,
                kpad,
                n0,
                nn,
                label,
                buffer,
                gather,
            });
        }
    }
    out
}

/// Storage/uniform buffers of u32 words (the context's `upload` takes f32).
trait InitU32 {
    fn create_buffer_init_u32(&self, label: &str, words: &[u32]) -> wgpu::Buffer;
}

impl InitU32 for wgpu::Device {
    fn create_buffer_init_u32(&self, label: &str, words: &[u32]) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let zero = [0u32];
        let words = if words.is_empty() { &zero[..] } else { words };
        self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(words),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
        })
    }
}
