//! The dense conv: with AVX2+FMA a GEMM per (image, group) through `gemm::block` on
//! operands read in place (the weights as stored, B as shifted views of the zero-padded
//! input split into its stride phases); otherwise im2col + `matrixmultiply::sgemm`.

use super::{sgemm_raw, OutPtr};
use crate::graph::{Conv2d, Tensor};
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
    let mut y = if crate::backend::cpu::fast::gemm::supported() {
        conv2d_gemm(x, conv, relu)
    } else {
        conv2d_sgemm(x, conv)
    };
    if relu && !crate::backend::cpu::fast::gemm::supported() {
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
    use crate::backend::cpu::fast::gemm::{self, KC, MR, NR};
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
pub(in crate::backend::cpu::fast) fn pad_and_phase(
    x: &Tensor,
    pads: [usize; 4],
    [sy, sx]: [usize; 2],
    [hq, wq]: [usize; 2],
) -> Vec<f32> {
    use std::mem::MaybeUninit;
    let (h, w) = (x.shape[2], x.shape[3]);
    let planes = x.shape[0] * x.shape[1];
    let plane_q = sy * sx * hq * wq;
    let len = planes * plane_q + crate::backend::cpu::fast::gemm::NR;
    let mut phased = crate::backend::cpu::fast::uninit_vec(len);
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
    unsafe { crate::backend::cpu::fast::assume_init(phased) }
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
