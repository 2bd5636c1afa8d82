//! Sparse (CSR) conv and fc on the CPU; the layout is in `weights/sparse.rs`.
//!
//! - Conv: direct, no im2col. Each task owns a block of output channels of one image;
//!   for every stored weight `(k, v)` of a channel it decodes `(ci, ky, kx)` once and
//!   adds `v · x[ci]` shifted by `(ky, kx)` to the output plane, row by row, over the
//!   output columns whose input column lies inside the image (computed, not tested per
//!   element). With stride 1 the inner loop is a contiguous axpy the compiler
//!   vectorises. Work is `nnz · OH · OW` multiply-adds per image, so it beats the dense
//!   im2col + sgemm path only below a crossover density (see below).
//! - Fc: SpMV at batch 1 (rows in parallel, one dot product of the stored entries with
//!   the gathered inputs); SpMM for batch > 1 on the transposed input `[K][N]`, so
//!   each stored weight updates N contiguous accumulators.
//!
//! Crossover (where dense becomes faster), measured by the `#[ignore]` test
//! `sparse_dense_crossover` in tests/dns.rs (test profile, opt-level 2) on the 2-core
//! shared dev machine at load ~12, best of 3, batch 1, ms dense / sparse:
//!
//! | density | fc 9216->4096 | conv 3x3 64->64 56x56 pad 1 |
//! |---|---|---|
//! | 1%  | 668 / 3.9 | 29.4 / 0.55 |
//! | 5%  | 793 / 42  | 28.1 / 2.5 |
//! | 10% | 592 / 7.9 | 29.6 / 4.9 |
//! | 20% | 472 / 24  | 24.8 / 9.9 |
//! | 30% | 772 / 86  | 47.5 / 19.0 |
//! | 50% | 344 / 90  | 25.8 / 21.6 |
//!
//! The load makes single numbers noisy (±2x), but the trend is clear: the conv
//! crosses over just above 50% (sparse time grows linearly with density, dense stays
//! ~25 ms); the batch-1 fc is a GEMV that sgemm runs far below bandwidth, so sparse
//! wins even at 50%. Above 50% CSR also stops saving bytes (6 bytes per stored weight
//! with u16 indices against 4 dense, i.e. smaller only below 67%), so both crossovers
//! are set to 50%. `compress sparse` keeps a layer dense above its crossover unless
//! told otherwise (`--all`, `--max-density`).

use crate::graph::{Conv2d, Tensor};
use crate::weights::{SparseWeights, Weights};
use rayon::prelude::*;

/// Output channels per conv task.
const CHANNEL_BLOCK: usize = 4;
/// Fc rows per task.
const ROW_BLOCK: usize = 64;

/// Density above which the dense conv kernel is faster than `sparse_conv`
/// (3x3 conv 64->64 at 56x56, batch 1; measured, see module docs).
pub const CONV_CROSSOVER: f64 = 0.5;
/// Density above which the dense fc kernel is faster than `sparse_linear`
/// (fc 9216->4096, batch 1; measured, see module docs).
pub const FC_CROSSOVER: f64 = 0.5;

/// Sparse convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a `Weights::Sparse`
/// (other encodings are densified and run through the dense kernel). Same semantics as
/// `reference::conv2d` (padding, stride, dilation, groups).
pub fn sparse_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    let Weights::Sparse(w) = &conv.weight else {
        return super::conv2d(x, conv);
    };
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let shape = w.shape();
    let (cout, cin_g, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let cout_g = cout / conv.groups;
    let plane = oh * ow;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (pt, pl) = (conv.pads[0], conv.pads[1]);
    let bias = conv.bias.as_ref().map(|b| b.data.as_slice());
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    let cols = w.cols();
    let values = w.values();
    // Valid output columns per kx: ix = ox*sw + kx*dw - pl in [0, W).
    let ox_range: Vec<(usize, usize)> = (0..kw)
        .map(|kx| {
            let off = kx * dw;
            let lo = if off >= pl {
                0
            } else {
                (pl - off).div_ceil(sw)
            };
            // ox*sw + off - pl <= W - 1  <=>  ox <= (W - 1 + pl - off) / sw
            let hi = if wd + pl > off {
                ((wd - 1 + pl - off) / sw + 1).min(ow)
            } else {
                0
            };
            (lo.min(hi), hi)
        })
        .collect();
    y.data
        .par_chunks_mut(plane * CHANNEL_BLOCK)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * CHANNEL_BLOCK;
            for (j, o) in out.chunks_mut(plane).enumerate() {
                let idx = first + j;
                let (b, co) = (idx / cout, idx % cout);
                let g = co / cout_g;
                o.fill(bias.map_or(0.0, |bb| bb[co]));
                let image = &x.data[(b * cin + g * cin_g) * h * wd..];
                for i in w.row_range(co) {
                    let k = cols.get(i);
                    let v = values[i];
                    let (ci, ky, kx) = (k / (kh * kw), (k / kw) % kh, k % kw);
                    let xc = &image[ci * h * wd..(ci + 1) * h * wd];
                    let (lo, hi) = ox_range[kx];
                    if lo >= hi {
                        continue;
                    }
                    let off_y = ky * dh;
                    for oy in 0..oh {
                        let iy = (oy * sh + off_y) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let xrow = &xc[iy as usize * wd..(iy as usize + 1) * wd];
                        let orow = &mut o[oy * ow..(oy + 1) * ow];
                        // ix0 = lo*sw + kx*dw - pl >= 0 by construction of lo.
                        let ix0 = lo * sw + kx * dw - pl;
                        if sw == 1 {
                            let len = hi - lo;
                            for (ov, xv) in orow[lo..hi].iter_mut().zip(&xrow[ix0..ix0 + len]) {
                                *ov += v * xv;
                            }
                        } else {
                            for (t, ov) in orow[lo..hi].iter_mut().enumerate() {
                                *ov += v * xrow[ix0 + t * sw];
                            }
                        }
                    }
                }
            }
        });
    y
}

/// Sparse fully connected layer: `x: [N, K]` (any trailing shape flattened),
/// `y = x · Wᵀ + b`, `[N, out]`.
pub fn sparse_linear(x: &Tensor, w: &SparseWeights, bias: Option<&Tensor>) -> Tensor {
    let (rows, k) = (w.rows(), w.row_len());
    let n = x.shape[0];
    let mut y = Tensor::zeros(vec![n, rows]);
    let cols = w.cols();
    let values = w.values();
    let b = bias.map(|t| t.data.as_slice());
    if n == 1 {
        // SpMV: gather x at the stored columns.
        y.data
            .par_chunks_mut(ROW_BLOCK)
            .enumerate()
            .for_each(|(t, out)| {
                for (j, o) in out.iter_mut().enumerate() {
                    let r = t * ROW_BLOCK + j;
                    let mut acc = 0f32;
                    for i in w.row_range(r) {
                        acc += values[i] * x.data[cols.get(i)];
                    }
                    *o = acc + b.map_or(0.0, |bb| bb[r]);
                }
            });
        return y;
    }
    // SpMM on xT [K][N]: each stored weight is one axpy over the batch.
    let mut xt = vec![0f32; k * n];
    for (bi, row) in x.data.chunks_exact(k).enumerate() {
        for (kk, &v) in row.iter().enumerate() {
            xt[kk * n + bi] = v;
        }
    }
    let blocks: Vec<Vec<f32>> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|t| {
            let r0 = t * ROW_BLOCK;
            let r1 = (r0 + ROW_BLOCK).min(rows);
            let mut acc = vec![0f32; (r1 - r0) * n];
            for r in r0..r1 {
                let a = &mut acc[(r - r0) * n..(r - r0 + 1) * n];
                for i in w.row_range(r) {
                    let v = values[i];
                    let xr = &xt[cols.get(i) * n..(cols.get(i) + 1) * n];
                    for (av, xv) in a.iter_mut().zip(xr) {
                        *av += v * xv;
                    }
                }
            }
            acc
        })
        .collect();
    for (t, acc) in blocks.iter().enumerate() {
        let r0 = t * ROW_BLOCK;
        for (j, a) in acc.chunks_exact(n).enumerate() {
            let r = r0 + j;
            for (bi, v) in a.iter().enumerate() {
                y.data[bi * rows + r] = v + b.map_or(0.0, |bb| bb[r]);
            }
        }
    }
    y
}
