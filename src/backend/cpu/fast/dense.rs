//! Dense conv and fc.
//!
//! Conv, with AVX2+FMA: a GEMM per (image, group), `W[cout, K] · B[K, positions]`,
//! through the register-blocked kernel in `gemm` on operands read in place: the weights
//! as stored, and B as shifted views of the zero-padded input split into its stride
//! phases (no im2col; 1x1 stride-1 convs read the input planes themselves). Bias and a
//! fused ReLU are applied when a task's accumulator block is written out. Without
//! AVX2+FMA: im2col + `matrixmultiply::sgemm`.
//!
//! Fc with AVX2+FMA: a row-streaming GEMV at batch 1-15, `gemm::block` at 16-64 (see
//! `linear`); else sgemm.

use super::gemm::InputPanels;
use crate::backend::cpu::select::{self, DenseFc};
use crate::graph::{Conv2d, Linear, Tensor};
use rayon::prelude::*;

/// GEMM columns (output positions) per task: a task's 256-column accumulator block
/// (rows x 256 floats) stays in L2, and the sgemm path's im2col block (K x 256) too
/// for the common K.
const COLUMN_BLOCK: usize = 256;
/// Parallel tasks aimed for per conv call, per thread: a few per thread so that
/// uneven tasks still balance.
const TASKS_PER_THREAD: usize = 3;
/// Shortest row tile when a column block's GEMM is split over output channels.
const MIN_TILE_ROWS: usize = 24;

/// `c[m x n] = a[m x k] * b[k x n]` (overwriting `c`) with explicit row/column strides
/// (in elements).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    c: &mut [f32],
    rsc: isize,
) {
    debug_assert!(a.len() >= (m.max(1) - 1) * rsa as usize + (k.max(1) - 1) * csa as usize);
    debug_assert!(b.len() >= (k.max(1) - 1) * rsb as usize + (n.max(1) - 1) * csb as usize);
    debug_assert!(c.len() >= (m.max(1) - 1) * rsc as usize + n);
    // SAFETY: the asserts above (the callers' contract) cover every element sgemm reads
    // or writes with these dimensions and strides.
    unsafe {
        sgemm_raw(
            m,
            k,
            n,
            a.as_ptr(),
            [rsa, csa],
            b.as_ptr(),
            [rsb, csb],
            0.0,
            c.as_mut_ptr(),
            rsc,
        )
    }
}

/// `matrixmultiply::sgemm` with `alpha = 1`, unit column stride for `c`.
///
/// # Safety
/// Every element addressed by the dimensions and strides must be inside the
/// allocations behind `a`, `b` and `c`, and no other thread may touch that part of `c`.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_raw(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    [rsa, csa]: [isize; 2],
    b: *const f32,
    [rsb, csb]: [isize; 2],
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    // SAFETY: the caller's contract is sgemm's: every addressed element inside its
    // allocation, and this part of `c` touched by no other thread.
    unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, 1) };
}

/// The output pointer shared by the tile tasks of one conv call.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: the tiles of one call write pairwise disjoint regions of the output (distinct
// images, output channels or columns), and the call waits for all of them.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: shared only by tasks that write disjoint regions.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` past the start. A method (rather than `.0`) so that closures
    /// capture the whole `Send + Sync` wrapper, not the raw pointer field.
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Dense convolution; same semantics as `reference::conv2d`.
pub fn conv2d(x: &Tensor, conv: &Conv2d) -> Tensor {
    conv2d_relu(x, conv, false)
}

/// Dense convolution, then `max(0, ·)` when `relu` (fused into the last store of each
/// output tile, so a following ReLU costs no pass over the output).
///
/// With AVX2+FMA: one task per (image, group, block of `COLUMN_BLOCK` GEMM columns,
/// range of output channels); per K block of `gemm::KC` rows, `gemm::block` adds
/// `W_g[rows, K block] · B[K block, columns]` into the task's accumulator block (B as
/// described in `Patches`), which is then written to the output with the bias and
/// the ReLU. When there are fewer column blocks than `TASKS_PER_THREAD` per thread (the
/// 7x7 and 14x14 layers of a batch-1 ResNet), the output channels are split too, so
/// both cores stay busy. Elsewhere: im2col + matrixmultiply's sgemm, then the ReLU.
pub fn conv2d_relu(x: &Tensor, conv: &Conv2d, relu: bool) -> Tensor {
    let mut y = if super::gemm::supported() {
        conv2d_gemm(x, conv, relu)
    } else {
        conv2d_sgemm(x, conv)
    };
    if relu && !super::gemm::supported() {
        y.data.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

/// The output tensor of `conv` for input `x`, filled with the bias (zeros without one).
fn output_with_bias(x: &Tensor, conv: &Conv2d) -> (Tensor, [usize; 2]) {
    let [oh, ow] = conv
        .output_hw(x.shape[2], x.shape[3])
        .expect("shape inference checked the window fits");
    let cout = conv.out_channels();
    let mut y = Tensor::zeros(vec![x.shape[0], cout, oh, ow]);
    if let Some(bias) = &conv.bias {
        if oh * ow > 0 {
            y.data
                .par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(plane, dst)| dst.fill(bias.data[plane % cout]));
        }
    }
    (y, [oh, ow])
}

thread_local! {
    /// A conv task's accumulator block, kept per thread from call to call: the first K
    /// block overwrites every tile of it (`accumulate = false`), so it needs neither a
    /// fresh allocation nor zeroing per task. Each thread keeps the largest block it has
    /// needed: a task's output channels (rounded up to 6) x at most 256 floats, e.g.
    /// 64 KiB for 64 channels, 512 KiB for 512.
    static ACC: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where the GEMM's B operand (patch element k x output position) comes from.
#[derive(Clone, Copy, PartialEq)]
enum Patches {
    /// 1x1, stride 1, no padding: the input planes are B already.
    Input,
    /// B row k = (ci, ky, kx) is a shifted view of the zero-padded input, split into
    /// its stride phases (`phase[py][px][i][j] = padded[i * sy + py][j * sx + px]`, so
    /// tap (ky, kx) reads phase (ky % sy, kx % sx) from (ky / sy, kx / sx) on): the
    /// columns are positions of the phase width (`wq` per output row, the last
    /// `wq - ow` of each row junk), so every row of B is one contiguous run and there is
    /// no im2col.
    Shifted,
    /// im2col into a buffer, one K block at a time: only for the last column block of
    /// an `Input` conv whose 16-column panels would read past the input's end.
    Im2col,
}

/// The conv through `gemm::block` (see `conv2d_relu`).
fn conv2d_gemm(x: &Tensor, conv: &Conv2d, relu: bool) -> Tensor {
    use super::gemm::{self, KC, MR, NR};
    let w = conv.weight.to_dense();
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    let (groups, cout_g, k, p) = (conv.groups, cout / conv.groups, cin_g * kh * kw, oh * ow);
    if p == 0 || cout == 0 {
        return y;
    }
    let mode = if kh == 1 && kw == 1 && conv.stride == [1, 1] && conv.pads == [0; 4] {
        Patches::Input
    } else {
        Patches::Shifted
    };
    // The phases of the zero-padded input for `Shifted` (each `hq x wq`), plus NR
    // floats of slack: the last column panel reads up to 15 junk columns past the end.
    let [sy, sx] = conv.stride;
    let hq = (h + conv.pads[0] + conv.pads[2]).div_ceil(sy);
    let wq = (wd + conv.pads[1] + conv.pads[3]).div_ceil(sx);
    let phased = if mode == Patches::Shifted {
        pad_and_phase(x, conv.pads, conv.stride, [hq, wq])
    } else {
        Vec::new()
    };
    let plane_q = sy * sx * hq * wq;
    // GEMM columns per (image, group).
    let ncols = match mode {
        Patches::Shifted => (oh - 1) * wq + ow,
        _ => p,
    };
    // Column blocks of equal width (a multiple of 16, at most COLUMN_BLOCK): with a short
    // last block the tasks of a small layer split unevenly over the threads (traced on
    // a 28x28x128 conv: 2.2 against 1.7 ms busy).
    let col_step = ncols
        .div_ceil(ncols.div_ceil(COLUMN_BLOCK))
        .next_multiple_of(NR);
    let blocks = n * groups * ncols.div_ceil(col_step);
    let want = TASKS_PER_THREAD * rayon::current_num_threads();
    let row_split = want
        .div_ceil(blocks)
        .min(cout_g.div_ceil(MIN_TILE_ROWS))
        .max(1);
    let row_step = cout_g.div_ceil(row_split).next_multiple_of(MR);
    let tasks: Vec<(usize, usize, usize, usize)> = (0..n)
        .flat_map(|b| {
            (0..groups).flat_map(move |g| {
                (0..ncols)
                    .step_by(col_step)
                    .flat_map(move |c0| (0..cout_g).step_by(row_step).map(move |m0| (b, g, c0, m0)))
            })
        })
        .collect();
    let out = OutPtr(y.data.as_mut_ptr());
    let out_len = y.data.len();
    tasks.par_iter().for_each(|&(b, g, c0, m0)| {
        let cols = col_step.min(ncols - c0);
        let cols_pad = cols.next_multiple_of(NR);
        let rows = row_step.min(cout_g - m0);
        let weights = &w.data[(g * cout_g + m0) * k..(g * cout_g + m0 + rows) * k];
        let image_at = (b * cin + g * cin_g) * h * wd;
        // The input planes serve as B only if the last panel's reads stay inside them.
        let mode = match mode {
            Patches::Input if image_at + (k - 1) * p + c0 + cols_pad > x.data.len() => {
                Patches::Im2col
            }
            m => m,
        };
        // im2col rows at a stride of whole cache lines that is not a multiple of
        // 64 lines (so a micro-panel's rows spread over L1's sets), 64-byte aligned.
        let ldb = if cols_pad.is_multiple_of(64) {
            cols_pad + 16
        } else {
            cols_pad
        };
        let mut col_buf = if mode == Patches::Im2col {
            vec![0f32; KC.min(k) * ldb + 16]
        } else {
            Vec::new()
        };
        let aligned = col_buf.as_ptr().align_offset(64).min(16);
        let mut b_rows = vec![0usize; KC.min(k)];
        let mut acc_cell = ACC.with(|cell| cell.take());
        acc_cell.resize(
            acc_cell.len().max(rows.next_multiple_of(MR) * cols_pad),
            0.0,
        );
        let acc = &mut acc_cell[..rows.next_multiple_of(MR) * cols_pad];
        if k == 0 {
            acc.fill(0.0);
        }
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let b_mat: &[f32] = match mode {
                Patches::Input => {
                    for (i, r) in b_rows[..kc].iter_mut().enumerate() {
                        *r = (k0 + i) * p;
                    }
                    &x.data[image_at + c0..]
                }
                Patches::Shifted => {
                    for (i, r) in b_rows[..kc].iter_mut().enumerate() {
                        let kk = k0 + i;
                        let (ci, ky, kx) = (kk / (kh * kw), kk / kw % kh, kk % kw);
                        let (dy, dx) = (ky * conv.dilation[0], kx * conv.dilation[1]);
                        let phase = (dy % sy) * sx + dx % sx;
                        *r = ci * plane_q + (phase * hq + dy / sy) * wq + dx / sx;
                    }
                    &phased[(b * cin + g * cin_g) * plane_q + c0..]
                }
                Patches::Im2col => {
                    let image = &x.data[image_at..image_at + cin_g * h * wd];
                    let dst = &mut col_buf[aligned..aligned + kc * ldb];
                    im2col(
                        image,
                        conv,
                        [h, wd],
                        [kh, kw],
                        ow,
                        [k0, kc],
                        [c0, cols],
                        ldb,
                        dst,
                    );
                    dst[..]
                        .chunks_exact_mut(ldb)
                        .for_each(|r| r[cols..cols_pad].fill(0.0));
                    for (i, r) in b_rows[..kc].iter_mut().enumerate() {
                        *r = i * ldb;
                    }
                    &col_buf[aligned..]
                }
            };
            assert!(b_rows[..kc].iter().all(|&r| r + cols_pad <= b_mat.len()));
            // SAFETY: AVX2+FMA are present (checked by the caller); `weights` holds
            // rows x K weights, read from column k0 for kc columns; every B row has
            // cols_pad readable floats (asserted); `acc` holds the rows rounded up to 6
            // by cols_pad floats and is this task's own.
            unsafe {
                gemm::block(
                    kc,
                    weights.as_ptr().add(k0),
                    k,
                    rows,
                    b_mat.as_ptr(),
                    &b_rows[..kc],
                    cols_pad,
                    acc.as_mut_ptr(),
                    cols_pad,
                    k0 > 0,
                )
            }
        }
        // Epilogue: bias, ReLU, and the GEMM columns to output positions.
        for (r, sums) in acc.chunks_exact(cols_pad).take(rows).enumerate() {
            let co = g * cout_g + m0 + r;
            let bias = conv.bias.as_ref().map_or(0.0, |t| t.data[co]);
            let plane = (b * cout + co) * p;
            let put = |at: usize, src: &[f32]| {
                assert!(plane + at + src.len() <= out_len);
                // SAFETY: inside `y` (asserted); output channel co of image b at these
                // positions belongs to this task only, and `y` is not otherwise borrowed
                // until every task has finished.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(plane + at), src.len()) };
                for (d, s) in dst.iter_mut().zip(src) {
                    let v = s + bias;
                    *d = if relu { v.max(0.0) } else { v };
                }
            };
            if mode == Patches::Shifted {
                // Column c of the block is phase-width position c0 + c.
                let mut at = c0;
                while at < c0 + cols {
                    let (oy, ox) = (at / wq, at % wq);
                    let end = (oy * wq + ow).min(c0 + cols);
                    if ox < ow {
                        put(oy * ow + ox, &sums[at - c0..end - c0]);
                    }
                    at = (oy + 1) * wq;
                }
            } else {
                put(c0, &sums[..cols]);
            }
        }
        ACC.with(|cell| cell.replace(acc_cell));
    });
    y
}

/// Every input plane zero-padded by `pads` (top, left, bottom, right) and split into
/// its `sy x sx` stride phases of `hq x wq` each (see `Patches::Shifted`), plus
/// `gemm::NR` floats of zeros at the end.
///
/// Each plane is zeroed and filled by one task while it is in cache (a zero-filled
/// allocation, then the copy, made two passes over memory, one on a single thread:
/// 2.7 ms of a 33 ms ResNet-18 run went here).
pub(super) fn pad_and_phase(
    x: &Tensor,
    pads: [usize; 4],
    [sy, sx]: [usize; 2],
    [hq, wq]: [usize; 2],
) -> Vec<f32> {
    use std::mem::MaybeUninit;
    let (h, w) = (x.shape[2], x.shape[3]);
    let planes = x.shape[0] * x.shape[1];
    let plane_q = sy * sx * hq * wq;
    let len = planes * plane_q + super::gemm::NR;
    let mut phased = super::uninit_vec(len);
    let (body, slack) = phased.split_at_mut(planes * plane_q);
    slack.fill(MaybeUninit::new(0.0));
    if plane_q > 0 {
        body.par_chunks_mut(plane_q)
            .zip(x.data.par_chunks(h * w))
            .for_each(|(dst, src)| {
                dst.fill(MaybeUninit::new(0.0));
                for (y, row) in src.chunks_exact(w).enumerate() {
                    let (py, i) = ((y + pads[0]) % sy, (y + pads[0]) / sy);
                    for px in 0..sx {
                        // Input columns xc with (xc + left) % sx == px, from the first.
                        let first = (px + sx - pads[1] % sx) % sx;
                        let j0 = (first + pads[1]) / sx;
                        let at = ((py * sx + px) * hq + i) * wq + j0;
                        if sx == 1 {
                            for (d, v) in dst[at..at + w].iter_mut().zip(row) {
                                d.write(*v);
                            }
                        } else {
                            let taken = row.iter().skip(first).step_by(sx);
                            for (d, v) in dst[at..].iter_mut().zip(taken) {
                                d.write(*v);
                            }
                        }
                    }
                }
            });
    }
    // SAFETY: every element was written (each plane filled with zeros first, the slack
    // too).
    unsafe { super::assume_init(phased) }
}

/// The conv through im2col + matrixmultiply's sgemm (CPUs without AVX2+FMA).
fn conv2d_sgemm(x: &Tensor, conv: &Conv2d) -> Tensor {
    let w = conv.weight.to_dense();
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let (mut y, [oh, ow]) = output_with_bias(x, conv);
    let (groups, cout_g, k, p) = (conv.groups, cout / conv.groups, cin_g * kh * kw, oh * ow);
    let direct = kh == 1 && kw == 1 && conv.stride == [1, 1] && conv.pads == [0; 4];
    if p == 0 || cout == 0 {
        return y;
    }
    let beta = if conv.bias.is_some() { 1.0 } else { 0.0 };
    let tasks: Vec<(usize, usize, usize)> = (0..n)
        .flat_map(|b| {
            (0..groups).flat_map(move |g| (0..p).step_by(COLUMN_BLOCK).map(move |c0| (b, g, c0)))
        })
        .collect();
    let out = OutPtr(y.data.as_mut_ptr());
    let out_len = y.data.len();
    tasks.par_iter().for_each(|&(b, g, c0)| {
        let cols = COLUMN_BLOCK.min(p - c0);
        let image = &x.data[(b * cin + g * cin_g) * h * wd..(b * cin + (g + 1) * cin_g) * h * wd];
        let mut col_buf = Vec::new();
        // B = [K x cols] at row stride rsb.
        let (b_mat, rsb) = if direct {
            (&image[c0..], p)
        } else {
            col_buf.resize(k * cols, 0.0);
            im2col(
                image,
                conv,
                [h, wd],
                [kh, kw],
                ow,
                [0, k],
                [c0, cols],
                cols,
                &mut col_buf,
            );
            (&col_buf[..], cols)
        };
        let a = &w.data[g * cout_g * k..][..cout_g * k];
        let c_off = (b * cout + g * cout_g) * p + c0;
        assert!(b_mat.len() >= (k - 1) * rsb + cols);
        assert!(c_off + (cout_g - 1) * p + cols <= out_len);
        // SAFETY: `a` holds cout_g·K weights; `b_mat` covers K rows of stride rsb and
        // `cols` columns (asserted); the C region (cout_g x cols at stride P from c_off,
        // inside `y`, asserted) belongs to this (image, group, column block) only, and
        // `y` is not otherwise borrowed until every task has finished.
        unsafe {
            sgemm_raw(
                cout_g,
                k,
                cols,
                a.as_ptr(),
                [k as isize, 1],
                b_mat.as_ptr(),
                [rsb as isize, 1],
                beta,
                out.at(c_off),
                p as isize,
            )
        }
    });
    y
}

/// Rows `k0 .. k0+kc` of the patch matrix for output positions `c0 .. c0+cols`,
/// written into `dst` at row stride `ldb` (row `k - k0` holds patch element k, in the
/// order documented in `weights`: ci, ky, kx). Padding reads as 0; every one of the
/// `cols` entries of each row is written, so `dst` may hold an earlier block.
#[allow(clippy::too_many_arguments)]
fn im2col(
    image: &[f32],
    conv: &Conv2d,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    ow: usize,
    [k0, kc]: [usize; 2],
    [c0, cols]: [usize; 2],
    ldb: usize,
    dst: &mut [f32],
) {
    for kr in 0..kc {
        let kk = k0 + kr;
        let (ci, ky, kx) = (kk / (kh * kw), kk / kw % kh, kk % kw);
        let plane = &image[ci * h * w..(ci + 1) * h * w];
        let row = &mut dst[kr * ldb..kr * ldb + cols];
        // Walk the output positions row by row: one bounds check per output row and a
        // contiguous (or strided) run per row, no division per element.
        let (mut j, mut oy, mut ox0) = (0, c0 / ow, c0 % ow);
        let x_off = (kx * conv.dilation[1]) as isize - conv.pads[1] as isize;
        while j < cols {
            let run = (ow - ox0).min(cols - j);
            let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize - conv.pads[0] as isize;
            let out = &mut row[j..j + run];
            if iy < 0 || iy >= h as isize {
                out.fill(0.0);
            } else {
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                if conv.stride[1] == 1 {
                    // Stride 1: the in-bounds part of the run is one slice copy.
                    let lo = (-x_off - ox0 as isize).clamp(0, run as isize) as usize;
                    let hi = (w as isize - x_off - ox0 as isize).clamp(lo as isize, run as isize)
                        as usize;
                    out[..lo].fill(0.0);
                    if hi > lo {
                        let s0 = (ox0 as isize + lo as isize + x_off) as usize;
                        out[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                    }
                    out[hi..].fill(0.0);
                } else {
                    for (i, d) in out.iter_mut().enumerate() {
                        let ix = ((ox0 + i) * conv.stride[1]) as isize + x_off;
                        *d = if ix >= 0 && ix < w as isize {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
            j += run;
            oy += 1;
            ox0 = 0;
        }
    }
}

/// Output rows per parallel task of the fc layer.
const ROW_BLOCK: usize = 64;

/// Dense fully connected layer; same semantics as `reference::linear`.
///
/// With AVX2+FMA, by batch (see `select::DENSE_GEMM_MIN_BATCH`): 1, a row-streaming GEMV
/// (memory-bound: fc6 of AlexNet reads 151 MB of weights per call, so the rate is the
/// memory bandwidth); 2-15, the blocked GEMV (`gemv_rows`); 16-64, the register-blocked
/// GEMM (`gemm::InputPanels`; its AVX-512 micro-kernel where the CPU has it) on the
/// weights in place and the inputs in panels. Otherwise sgemm.
pub fn linear(x: &Tensor, fc: &Linear) -> Tensor {
    linear_isa(x, fc, super::Isa::default())
}

/// `linear` with the vector instructions of `isa` (the GEMM's AVX-512 micro-kernel
/// where `isa` allows it): `linear_as` with `select::dense_fc`'s variant.
pub fn linear_isa(x: &Tensor, fc: &Linear, isa: super::Isa) -> Tensor {
    let (n, k) = (x.shape[0], x.shape[1]);
    linear_as(x, fc, select::dense_fc(n, k, isa))
}

/// `linear` on the kernel `choice` (`select::dense_fc` decides it). A GEMV or GEMM
/// choice on a CPU without AVX2+FMA, or with no input features, runs sgemm; `GemvRow`
/// at a batch other than 1 runs the blocked GEMV.
pub fn linear_as(x: &Tensor, fc: &Linear, choice: DenseFc) -> Tensor {
    let w = fc.weight.to_dense();
    let (n, k, out) = (x.shape[0], x.shape[1], w.shape[0]);
    if n == 0 || out == 0 {
        return Tensor::zeros(vec![n, out]);
    }
    let choice = match choice {
        _ if k == 0 || !gemv_supported() => DenseFc::Sgemm,
        DenseFc::GemvRow if n != 1 => DenseFc::GemvRows,
        choice => choice,
    };
    let panels = match choice {
        DenseFc::Gemm { avx512 } => Some(InputPanels::new(&x.data, n, k, k, avx512)),
        _ => None,
    };
    // y^T[out x n] = W[out x k] * x^T[k x n], split over blocks of output rows.
    let blocks: Vec<Vec<f32>> = (0..out)
        .step_by(ROW_BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| {
            let rows = ROW_BLOCK.min(out - r0);
            let w_rows = &w.data[r0 * k..(r0 + rows) * k];
            if let Some(panels) = &panels {
                return panels.dots_with_rows(w_rows, rows);
            }
            let mut yt = vec![0.0; rows * n];
            match choice {
                DenseFc::GemvRow => {
                    for (y, w_row) in yt.iter_mut().zip(w_rows.chunks_exact(k)) {
                        *y = gemv_row(w_row, &x.data[..k]);
                    }
                }
                DenseFc::GemvRows => {
                    for (r, dst) in (0..rows)
                        .step_by(GEMV_ROWS)
                        .zip(yt.chunks_mut(GEMV_ROWS * n))
                    {
                        let ws = Rows {
                            data: &w_rows[r * k..],
                            stride: k,
                            count: dst.len() / n,
                        };
                        let xs = Rows {
                            data: &x.data[..n * k],
                            stride: k,
                            count: n,
                        };
                        gemv_rows(ws, xs, k, dst);
                    }
                }
                DenseFc::Gemm { .. } | DenseFc::Sgemm => {
                    sgemm(
                        rows, k, n, w_rows, k as isize, 1, &x.data, 1, k as isize, &mut yt,
                        n as isize,
                    );
                }
            }
            yt
        })
        .collect();
    super::layout::transpose_blocks(&blocks, ROW_BLOCK, n, out, fc.bias.as_ref())
}

/// Whether this CPU runs `gemv_row` (x86-64 with AVX2 and FMA, detected once).
pub(crate) fn gemv_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `w · x` for one input row (batch 1: the weights stream from memory once, so the
/// rate is the memory bandwidth). Callers check `gemv_supported()`.
fn gemv_row(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(x.len(), w.len());
    #[cfg(target_arch = "x86_64")]
    {
        assert!(gemv_supported());
        // SAFETY: AVX2 and FMA are present (asserted); the lengths are checked above.
        unsafe { gemv_row_avx2(w, x) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemv_supported() is false off x86-64");
}

/// Weight rows per call of `gemv_rows`.
pub(super) const GEMV_ROWS: usize = 3;
/// Input rows per pass of `gemv_rows`' kernel.
const GEMV_PASS_INPUTS: usize = 4;

/// `count` rows of a matrix, `stride` floats apart, from the start of `data`.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub(super) data: &'a [f32],
    pub(super) stride: usize,
    pub(super) count: usize,
}

impl Rows<'_> {
    /// Whether every row has `k` floats in `data` (and `k` fits the stride).
    fn holds(&self, k: usize) -> bool {
        k <= self.stride
            && (self.count == 0 || self.data.len() >= (self.count - 1) * self.stride + k)
    }
}

/// `[row][input]` dots of the weight rows `rows` with the `n` input rows of `x` (K = `k`
/// floats each), for weights that are made as they are used: `GEMV_ROWS` rows at a time
/// are written by `decode(row, dst)` into buffers of `stride` floats (the first `k`
/// read), then dotted with every input row by `gemv_rows` (without AVX2+FMA, by plain
/// dots).
pub(super) fn decoded_rows_dots(
    rows: std::ops::Range<usize>,
    stride: usize,
    x: &[f32],
    n: usize,
    k: usize,
    mut decode: impl FnMut(usize, &mut [f32]),
) -> Vec<f32> {
    assert!(n > 0 && k <= stride && x.len() >= n * k);
    let mut dots = vec![0f32; rows.len() * n];
    let mut wrows = vec![0f32; GEMV_ROWS * stride];
    let gemv = gemv_supported();
    for (c0, ys) in rows.step_by(GEMV_ROWS).zip(dots.chunks_mut(GEMV_ROWS * n)) {
        let count = ys.len() / n;
        for (j, wrow) in wrows.chunks_exact_mut(stride).take(count).enumerate() {
            decode(c0 + j, wrow);
        }
        if gemv {
            let ws = Rows {
                data: &wrows,
                stride,
                count,
            };
            let xs = Rows {
                data: x,
                stride: k,
                count: n,
            };
            gemv_rows(ws, xs, k, ys);
        } else {
            for (wrow, yr) in wrows.chunks_exact(stride).zip(ys.chunks_exact_mut(n)) {
                for (y, xr) in yr.iter_mut().zip(x.chunks_exact(k.max(1))) {
                    *y = wrow[..k].iter().zip(xr).map(|(a, b)| a * b).sum();
                }
            }
        }
    }
    dots
}

/// `dst[r·n + b] = w_r[..k] · x_b[..k]` for `w.count` (1 to `GEMV_ROWS`) weight rows and
/// `n = x.count` input rows: the small-batch GEMV.
///
/// Why blocks of 3 rows x 4 inputs: with one row at a time (`gemv_row`) every input row
/// streams from L2 once per weight row, 8 x 36 KiB per row of fc6 at batch 8, which
/// bounds the layer well above its weight stream (fc6 batch 8: sgemm took 14-16 ms,
/// against 6-8 ms to read the weights). Three rows share each input load (12 accumulators,
/// 3 weight registers and an input: the 16 AVX registers), and the 4-input passes re-read
/// the 3 rows from L1/L2, not memory. Callers check `gemv_supported()`.
pub(super) fn gemv_rows(w: Rows, x: Rows, k: usize, dst: &mut [f32]) {
    let (rows, stride, n, x_stride) = (w.count, w.stride, x.count, x.stride);
    assert!((1..=GEMV_ROWS).contains(&rows) && w.holds(k) && x.holds(k));
    assert!(dst.len() == rows * n);
    let (w, xs) = (w.data, x.data);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(gemv_supported());
        let mut part = [0f32; GEMV_ROWS * GEMV_PASS_INPUTS];
        for b0 in (0..n).step_by(GEMV_PASS_INPUTS) {
            let m = GEMV_PASS_INPUTS.min(n - b0);
            let x = &xs[b0 * x_stride..];
            let part = &mut part[..rows * m];
            // SAFETY: AVX2 and FMA are present (asserted); `w` holds `rows` rows of `k`
            // at `stride`, `x` holds `m` rows of `k` at `x_stride` (b0 + m ≤ n), `part`
            // holds `rows · m` (checked).
            unsafe {
                let (st, xst) = (stride, x_stride);
                match (rows, m) {
                    (1, 1) => gemv_block::<1, 1>(w, st, k, x, xst, part),
                    (1, 2) => gemv_block::<1, 2>(w, st, k, x, xst, part),
                    (1, 3) => gemv_block::<1, 3>(w, st, k, x, xst, part),
                    (1, _) => gemv_block::<1, 4>(w, st, k, x, xst, part),
                    (2, 1) => gemv_block::<2, 1>(w, st, k, x, xst, part),
                    (2, 2) => gemv_block::<2, 2>(w, st, k, x, xst, part),
                    (2, 3) => gemv_block::<2, 3>(w, st, k, x, xst, part),
                    (2, _) => gemv_block::<2, 4>(w, st, k, x, xst, part),
                    (_, 1) => gemv_block::<3, 1>(w, st, k, x, xst, part),
                    (_, 2) => gemv_block::<3, 2>(w, st, k, x, xst, part),
                    (_, 3) => gemv_block::<3, 3>(w, st, k, x, xst, part),
                    (_, _) => gemv_block::<3, 4>(w, st, k, x, xst, part),
                }
            }
            for r in 0..rows {
                dst[r * n + b0..r * n + b0 + m].copy_from_slice(&part[r * m..(r + 1) * m]);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemv_supported() is false off x86-64");
}

/// `out[r·N + b]` = row `r` of `w` (at `stride`) · input row `b` of `xs` (at
/// `x_stride`), for `R` rows and `N` inputs: 8 weights per step, each input load shared
/// by the `R` rows.
///
/// # Safety
/// AVX2 and FMA must be present; `w` must hold `(R − 1)·stride + k` floats, `xs`
/// `(N − 1)·x_stride + k` and `out` `R·N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_block<const R: usize, const N: usize>(
    w: &[f32],
    stride: usize,
    k: usize,
    xs: &[f32],
    x_stride: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let main = k / 8 * 8;
    // acc[b][r]: input b against row r.
    let mut acc = [[_mm256_setzero_ps(); R]; N];
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    let mut i = 0;
    while i < main {
        // SAFETY: (caller) i + 8 <= k, rows at r·stride hold k floats, inputs at
        // b·x_stride too.
        unsafe {
            let mut wv = [_mm256_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(wp.add(r * stride + i));
            }
            for (b, accb) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(b * x_stride + i));
                for (a, wr) in accb.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(*wr, xv, *a);
                }
            }
        }
        i += 8;
    }
    for (b, accb) in acc.iter().enumerate() {
        for (r, a) in accb.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            let mut s = lanes.iter().sum::<f32>();
            for j in main..k {
                s += w[r * stride + j] * xs[b * x_stride + j];
            }
            out[r * N + b] = s;
        }
    }
}

/// `gemv_row` with AVX2: 16 weights per step into two 8-lane accumulators (two
/// independent FMA chains), then a scalar tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemv_row_avx2(w: &[f32], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let k = w.len();
    let main = k / 16 * 16;
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i < main {
        // SAFETY: i + 16 <= main <= k = x.len().
        unsafe {
            let (wp, xp) = (w.as_ptr().add(i), x.as_ptr().add(i));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp), _mm256_loadu_ps(xp), acc[0]);
            acc[1] = _mm256_fmadd_ps(
                _mm256_loadu_ps(wp.add(8)),
                _mm256_loadu_ps(xp.add(8)),
                acc[1],
            );
        }
        i += 16;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
    let mut s = lanes.iter().sum::<f32>();
    for j in main..k {
        s += w[j] * x[j];
    }
    s
}
