//! Power-of-two (INQ) Conv and Linear layers (shaders/pow2.wgsl) on the packed b-bit codes.
//! On GPUs a pow2 Linear runs `pow2_fc_lut` instead (`pow2_fc.rs`: 3.6x faster than this
//! file's `pow2_fc` on an H200); software adapters (lavapipe) keep `pow2_fc`.
//!
//! The codes are uploaded as they are stored (conv: `[Cout][words_per_row]`) or
//! transposed word-wise (fc: `[word][row]`, so the lanes of a workgroup, one output row
//! each, read consecutive words); nothing is expanded to f32 weights. The conv forms a
//! product as `ldexp(x, n1 + 1 − e)` with the code's sign; the fc builds the code's f32
//! value from its bits (sign, exponent `127 + n1 + 1 − e`) and does one fma per code,
//! exact like the ldexp (magnitudes below 2^-126, which no trained layer has, flush to
//! 0). The weight bytes are `b/32` of dense (3.2 and 5.33 bits per weight for b = 3 and
//! 5: codes do not straddle words).
//!
//! - Conv (`pow2_conv`): direct, lanes = 64 output pixels, workgroup row = one output
//!   channel (dispatches of at most 65535 channels); the code word is read at a
//!   workgroup-uniform address.
//! - Linear (`pow2_fc`, split K): lanes = output rows, grid `(row blocks of 64, K
//!   slices, batch items)`; the input comes from a 64 KiB uniform window filled by
//!   `sketch_gather` (whole code words of K per window, several windows accumulate into
//!   the output), so all lanes read one input value at a time from a uniform buffer;
//!   rows are split into chunks whose codes fit the storage binding limit. Each
//!   invocation sums its row over one slice of the window's words, four words loaded
//!   before any is decoded. With more than one slice the partial sums go to a scratch
//!   buffer `[item][slice][row]` and `fc_reduce` (one invocation per item and row)
//!   adds them and applies the epilogue (accumulate across windows, bias, ReLU).
//!   Slices (`sketch::fc_slices`): 1 on software adapters (lavapipe: the same one
//!   invocation per row as before), about 16 words per slice (at most 64 slices) on
//!   GPUs; `GpuOptions::fc_split_k` forces N.
//!
//! Measured on lavapipe only before split K (no GPU here; CPU timings): AlexNet fc6
//! (9216 -> 4096) at batch 1, criterion, other jobs paused: dense GEMV 350 ms, pow2 b =
//! 2/3/4/5 84/74/85/93 ms (4.1-4.7x; b = 5 3.75x), where the first version (inputs from
//! storage, which llvmpipe loads per lane) ran at 1.8x of dense. The dense GEMV reads its
//! input per lane too (coalesced on a GPU, a gather on llvmpipe), so part of the ratio is
//! that difference.
//!
//! Measured on an NVIDIA H200 (Vulkan, timestamp queries, AlexNet batch 1) with the
//! one-invocation-per-row kernel (4096 invocations for fc6, each over all of K):
//! fc6 b = 2/4/5 0.97/1.07/1.28 ms, i.e. ~10 GB/s of codes against the dense GEMV's
//! 2158 GB/s (0.070 ms); fc7 0.42-0.56 ms and fc8 0.42-0.55 ms (latency-bound: too few
//! invocations, each with one load in flight). In the ignored `fc_split_k_timing` test
//! of tests/gpu_sketch.rs (one Linear layer, n1 = -3, best of 20 after 10 warm-ups; the
//! old kernel ran 2.5-3.4 ms there for every shape, so that harness is slower than the
//! AlexNet bench above for it), one H200 run: split K (auto slices) fc6 b = 2/4/5
//! 0.31/0.33/0.34 ms (30/58/73 GB/s of codes), fc7 0.16-0.18 ms, fc8 0.09-0.11 ms, the
//! same kernel with 1 slice 2.65-2.9 ms (fc6). Still far from bandwidth (the decode and
//! the per-code uniform load bound it); the AlexNet bench has not been rerun.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::encode::{bias_or_zeros, StepIo};
use super::GpuError;
use crate::graph::{Conv2d, Linear};
use crate::weights::Pow2Weights;
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/pow2.wgsl");

/// Bindings of `pow2_conv`: input, codes, bias, output, params.
const LAYOUT: [Slot; 5] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

/// Bindings of `pow2_fc`: input window (uniform), codes, bias, output, params.
const LAYOUT_FC: [Slot; 5] = [
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Uniform,
];

fn conv_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("pow2", SOURCE, "pow2_conv", &LAYOUT)
}

fn fc_kernel(ctx: &GpuContext) -> Arc<Kernel> {
    ctx.kernel("pow2", SOURCE, "pow2_fc", &LAYOUT_FC)
}

/// A storage buffer holding `words` (at least one word: wgpu cannot bind empty buffers).
pub(crate) fn upload_u32(ctx: &GpuContext, label: &str, words: &[u32]) -> wgpu::Buffer {
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
    let (batch, k) = io.linear_dims("pow2", w.row_len(), w.shape())?;
    let rows = w.rows();
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
    let cpw = w.codes_per_word();
    let cap = super::sketch::word_cap(io)?;
    // Input windows: whole code words of K, at most `cap` floats per item.
    if cap < cpw {
        return Err(io.unsupported(format!(
            "a {cap}-float binding cap cannot hold one {cpw}-code word of inputs"
        )));
    }
    struct Chunk {
        r0: usize,
        rows: usize,
        codes: wgpu::Buffer,
        bias: wgpu::Buffer,
    }
    let chunks: Vec<Chunk> = (0..rows)
        .step_by(rows_per)
        .map(|r0| {
            let n = rows_per.min(rows - r0);
            let label = format!("{} rows {r0}..{}", io.name, r0 + n);
            // [word][row of chunk]: lanes (rows) read consecutive words.
            let mut words = vec![0u32; wpr * n];
            for r in 0..n {
                for (t, &cw) in w.code_row(r0 + r).iter().enumerate() {
                    words[t * n + r] = cw;
                }
            }
            Chunk {
                r0,
                rows: n,
                codes: upload_u32(io.ctx, &format!("{label} codes"), &words),
                bias: io.ctx.upload(&format!("{label} bias"), &bias[r0..r0 + n]),
            }
        })
        .collect();
    let ubo = super::sketch::UBO_WORDS;
    let windows = super::sketch::input_windows(io, [k, batch], [wpr, cpw], cap);
    let chunk_rows: Vec<usize> = chunks.iter().map(|ch| ch.rows).collect();
    let (plans, scratch) = super::sketch::fc_plans(io, &windows, &chunk_rows)?;
    let mut out = vec![];
    for (win, plan) in windows.into_iter().zip(plans) {
        let label = win.label.clone();
        out.push(win.gather);
        let accumulate = (win.w0 > 0) as u32;
        let last = (win.w0 + win.wn == wpr) as u32;
        for (ch, (slices, spw)) in chunks.iter().zip(plan) {
            let split = match (&scratch, slices > 1) {
                (Some(buf), true) => Some(buf),
                _ => None,
            };
            let params = [
                uw(ch.rows),
                uw(wpr),
                uw(cpw),
                w.bits(),
                w.n1() as u32,
                io.relu as u32,
                uw(ch.r0),
                uw(rows),
                uw(win.w0),
                uw(win.wn),
                uw(win.kpad),
                uw(win.n0),
                accumulate,
                last,
                uw(spw),
                split.is_some() as u32,
            ];
            let chunk_label = format!("{label} rows {}..{}", ch.r0, ch.r0 + ch.rows);
            let target = match split {
                Some(buf) => Bind::f32s(buf, win.nn * slices * ch.rows),
                None => io.output.0.clone(),
            };
            out.push(io.ctx.dispatch(
                &kernel,
                &chunk_label,
                &[
                    Bind::f32s(&win.buffer, ubo),
                    Bind::f32s(&ch.codes, wpr * ch.rows),
                    Bind::f32s(&ch.bias, ch.rows),
                    target.clone(),
                ],
                &params,
                [ch.rows.div_ceil(64) as u32, slices as u32, win.nn as u32],
            ));
            if split.is_some() {
                // pow2_fc's epilogue: bias and ReLU on the last window.
                let finish = super::sketch::FcReduce {
                    partials: target,
                    bias: &ch.bias,
                    rows: ch.rows,
                    row0: ch.r0,
                    out_total: rows,
                    slices,
                    n0: win.n0,
                    nn: win.nn,
                    accumulate: accumulate != 0,
                    add_bias: last != 0,
                    relu: last != 0 && io.relu,
                };
                let label = format!("{chunk_label} reduce {slices} slices");
                out.push(super::sketch::fc_reduce(io, &label, finish));
            }
        }
    }
    Ok(out)
}
