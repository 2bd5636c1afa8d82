//! Sparse (CSR) conv and fc on the CPU; the layout is in `weights/sparse.rs`.
//!
//! - Conv (`sparse_conv_flat`): direct, no im2col, on the zero-padded input viewed as
//!   one flat array per (image, group) (strided convs: split into stride phases, so
//!   that every weight reads one phase at stride 1), where every stored weight is one
//!   contiguous axpy over a tile of flat output positions held in 8 registers (64
//!   positions with AVX2 + FMA; 128 with AVX-512, whose loads are made aligned by
//!   grouping each channel's weights by their offset's place in a cache line, and maps
//!   of at most half a tile take the whole batch in one array, images innermost; see
//!   `sparse_conv_flat`); tasks are blocks of up to 8 output channels, tiles outer, then
//!   chunks of input channels small enough that a tile's input rows for one chunk stay
//!   in L1 while every channel of the block consumes its stored weights of that chunk.
//!   The flat offsets and the chunk plan are built once per layer and input geometry
//!   and kept with the weights (`weights::Derived`; 4 bytes per stored weight).
//! - Conv, any stride, for layers whose flat offsets would pass 2^32
//!   (`sparse_conv_rows`): each task owns a block of output channels
//!   of one image; for every stored weight `(k, v)` of a channel it decodes `(ci, ky, kx)`
//!   once and adds `v · x[ci]` shifted by `(ky, kx)` to the output plane, row by row,
//!   over the output columns whose input column lies inside the image.
//!   Work is `nnz · OH · OW` multiply-adds per image either way, so they beat the dense
//!   conv only below a crossover density (see below; measured against the im2col +
//!   sgemm conv that preceded the GEMM conv of `fast::gemm`).
//! - Fc: SpMV at batch 1 (rows in parallel, one dot product of the stored entries with
//!   the gathered inputs, four accumulators, index width matched once per layer); SpMM
//!   for batch > 1 on the batch transposed into panels of 8 inputs, `[panel][K][8]` (16
//!   from batch 16 with AVX-512), so that each stored weight is one register-wide
//!   multiply-add into a row's sums held in registers (four chains), panel by panel
//!   (it was an axpy into memory over `[K][N]`, 4x slower at batch 8:
//!   docs/benchmarks-archive.md, session 13).
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
//! with u16 indices against 4 dense, i.e. smaller only below 67%).
//!
//! Re-measured with the flat stride-1 kernel on all four ResNet-18 3x3 shapes, batch 1
//! and 8 (benches/kernels.rs, table in docs/benchmarks-archive.md, "Compressed kernels vs
//! dense"): 1.3-3x faster than dense at 30% on every shape, 0.5-0.9x at 50% on most,
//! so the conv crossover is 0.4 (`select::CONV_CROSSOVER`; `fast::run_node` runs the
//! dense path on weights decoded once above it, strided convs above
//! `select::STRIDED_CONV_CROSSOVER`). The fc stays at 0.5 (`select::FC_CROSSOVER`): 3x
//! at 50% at batch 1 (session 13's SpMM: 2x at 25% at batch 8, 1x at batch 32).
//! `compress sparse` keeps a layer dense above its crossover unless told otherwise
//! (`--all`, `--max-density`).

use super::Isa;
use crate::graph::{Conv2d, Tensor};
use crate::weights::{Cols, SparseWeights, Weights};
use rayon::prelude::*;

/// Output channels per conv task.
const CHANNEL_BLOCK: usize = 4;
/// Fc rows per task.
const ROW_BLOCK: usize = 64;

/// Sparse convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a `Weights::Sparse`
/// (other encodings are densified and run through the dense kernel). Same semantics as
/// `reference::conv2d` (padding, stride, dilation, groups).
pub fn sparse_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    sparse_conv_relu(x, conv, false)
}

/// `sparse_conv`, followed by a ReLU when `relu` (fused into the flat kernel's stores).
pub fn sparse_conv_relu(x: &Tensor, conv: &Conv2d, relu: bool) -> Tensor {
    sparse_conv_isa(x, conv, relu, Isa::default())
}

/// `sparse_conv_relu` with the vector instructions of `isa`.
pub fn sparse_conv_isa(x: &Tensor, conv: &Conv2d, relu: bool, isa: Isa) -> Tensor {
    let Weights::Sparse(w) = &conv.weight else {
        return super::conv2d_relu(x, conv, relu);
    };
    if flat_fits(x, conv, w) {
        return sparse_conv_flat(x, conv, w, relu, TileSimd::for_isa(isa));
    }
    // Only layers of tens of GiB get here.
    let mut y = sparse_conv_rows(x, conv, w);
    if relu {
        y.data.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

/// Whether the flat kernel's u32 offsets and CSR positions can address this layer: one
/// group's padded input (rows padded by up to a cache line, plus the tail) and
/// the stored weights under 2^32 (only inputs of tens of GiB are not).
fn flat_fits(x: &Tensor, conv: &Conv2d, w: &SparseWeights) -> bool {
    let shape = w.shape();
    let [pt, pl, pb, pr] = conv.pads;
    // Strided: sh x sw phases of ceil(Hp / sh) x ceil(Wp / sw).
    let rows = shape[1] * (x.shape[2] + pt + pb + conv.stride[0]);
    let pitch = x.shape[3] + pl + pr + 2 * LINE + shape[3] * conv.dilation[1];
    // Times the batch: small maps put every image in one array.
    rows.checked_mul(pitch)
        .and_then(|len| len.checked_mul(x.shape[0].max(1)))
        .is_some_and(|len| len < u32::MAX as usize - 4 * TILE_MAX)
        && w.values().len() < u32::MAX as usize
}

/// The row-by-row kernel of `sparse_conv` (any stride): per stored weight, an axpy of
/// the shifted input rows into the output plane.
pub fn sparse_conv_rows(x: &Tensor, conv: &Conv2d, w: &SparseWeights) -> Tensor {
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
    sparse_linear_isa(x, w, bias, Isa::default())
}

/// `sparse_linear` with the vector instructions of `isa`.
pub fn sparse_linear_isa(x: &Tensor, w: &SparseWeights, bias: Option<&Tensor>, isa: Isa) -> Tensor {
    let (rows, k) = (w.rows(), w.row_len());
    let n = x.shape[0];
    let mut y = Tensor::zeros(vec![n, rows]);
    let cols = w.cols();
    let values = w.values();
    let b = bias.map(|t| t.data.as_slice());
    if n == 1 {
        // SpMV: gather x at the stored columns (index width matched once per layer).
        y.data
            .par_chunks_mut(ROW_BLOCK)
            .enumerate()
            .for_each(|(t, out)| {
                for (j, o) in out.iter_mut().enumerate() {
                    let r = t * ROW_BLOCK + j;
                    let range = w.row_range(r);
                    let vals = &values[range.clone()];
                    let acc = match cols {
                        Cols::U16(c) => gather_dot(vals, &c[range], &x.data),
                        Cols::U32(c) => gather_dot(vals, &c[range], &x.data),
                    };
                    *o = acc + b.map_or(0.0, |bb| bb[r]);
                }
            });
        return y;
    }
    // SpMM on the batch transposed into panels of `panel` items, `[panel][K][panel]`
    // (zero past the batch): each stored weight is one multiply-add of a contiguous
    // row of the panel into a row's accumulators, held in registers across the row.
    // Panels of 16 (one AVX-512 register) from batch 16 where the CPU has AVX-512, else 8.
    let simd = TileSimd::for_isa(isa);
    let panel = if simd == TileSimd::Avx512 && n >= 16 {
        16
    } else {
        8
    };
    let panels = n.div_ceil(panel);
    let mut xt = vec![0f32; panels * k * panel];
    xt.par_chunks_mut(k * panel)
        .enumerate()
        .for_each(|(p, dst)| {
            for (e, row) in x
                .data
                .chunks_exact(k)
                .skip(p * panel)
                .take(panel)
                .enumerate()
            {
                for (d, v) in dst[e..].iter_mut().step_by(panel).zip(row) {
                    *d = *v;
                }
            }
        });
    // Per task, ROW_BLOCK rows: `[row][panel][P]` sums. Panels outer: one panel of
    // inputs (`K·P` floats, 590 KB for fc6 at P = 16) is read by all the task's rows
    // before the next; rows outer swept every panel per row and ran fc6 at batch 64
    // out of L2.
    let blocks: Vec<Vec<f32>> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|t| {
            let (r0, r1) = (t * ROW_BLOCK, ((t + 1) * ROW_BLOCK).min(rows));
            let mut acc = vec![0f32; (r1 - r0) * panels * panel];
            for (p, xp) in xt.chunks_exact(k * panel).enumerate() {
                for (r, out) in (r0..r1).zip(acc.chunks_exact_mut(panels * panel)) {
                    let range = w.row_range(r);
                    let (vals, o) = (&values[range.clone()], &mut out[p * panel..][..panel]);
                    match cols {
                        Cols::U16(c) => spmm_row(vals, &c[range], xp, o, simd),
                        Cols::U32(c) => spmm_row(vals, &c[range], xp, o, simd),
                    }
                }
            }
            acc
        })
        .collect();
    y.data
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(bi, yb)| {
            let (p, e) = (bi / panel, bi % panel);
            for (r, yv) in yb.iter_mut().enumerate() {
                let acc = &blocks[r / ROW_BLOCK];
                *yv = acc[((r % ROW_BLOCK) * panels + p) * panel + e] + b.map_or(0.0, |bb| bb[r]);
            }
        });
    y
}

/// `out[e] = Σ_i vals[i] · xp[idx[i]·P + e]`: one fc row against one panel of
/// `P = out.len()` inputs (8 or 16) stored `[K][P]`.
#[inline]
fn spmm_row<I: Copy + Into<u32>>(
    vals: &[f32],
    idx: &[I],
    xp: &[f32],
    out: &mut [f32],
    simd: TileSimd,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: (both) the instruction sets were detected by `TileSimd::for_isa`; the
    // kernels check every slice bound like the portable loop.
    unsafe {
        match (simd, out.len()) {
            (TileSimd::Avx512, 16) => return spmm_row_avx512(vals, idx, xp, out),
            (TileSimd::Avx512 | TileSimd::Avx2, 8) => return spmm_row_avx2(vals, idx, xp, out),
            _ => {}
        }
    }
    let _ = simd;
    let panel = out.len();
    out.fill(0.0);
    for (&v, &c) in vals.iter().zip(idx) {
        let xr = &xp[c.into() as usize * panel..][..panel];
        for (o, x) in out.iter_mut().zip(xr) {
            *o += v * x;
        }
    }
}

/// `spmm_row` with four accumulators (one multiply-add chain per 4 stored weights).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn spmm_row_avx2<I: Copy + Into<u32>>(vals: &[f32], idx: &[I], xp: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let (vq, vr) = vals.split_at(vals.len() / 4 * 4);
    let (iq, ir) = idx.split_at(vq.len());
    for (v, i) in vq.chunks_exact(4).zip(iq.chunks_exact(4)) {
        for j in 0..4 {
            let xr = &xp[i[j].into() as usize * 8..][..8];
            // SAFETY: `xr` has 8 elements.
            let xv = unsafe { _mm256_loadu_ps(xr.as_ptr()) };
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(v[j]), xv, acc[j]);
        }
    }
    for (&v, &i) in vr.iter().zip(ir) {
        let xr = &xp[i.into() as usize * 8..][..8];
        // SAFETY: `xr` has 8 elements.
        let xv = unsafe { _mm256_loadu_ps(xr.as_ptr()) };
        acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(v), xv, acc[0]);
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let out = &mut out[..8];
    // SAFETY: `out` has 8 elements.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
}

/// `spmm_row` on panels of 16, with four accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn spmm_row_avx512<I: Copy + Into<u32>>(vals: &[f32], idx: &[I], xp: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 4];
    let (vq, vr) = vals.split_at(vals.len() / 4 * 4);
    let (iq, ir) = idx.split_at(vq.len());
    for (v, i) in vq.chunks_exact(4).zip(iq.chunks_exact(4)) {
        for j in 0..4 {
            let xr = &xp[i[j].into() as usize * 16..][..16];
            // SAFETY: `xr` has 16 elements.
            let xv = unsafe { _mm512_loadu_ps(xr.as_ptr()) };
            acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(v[j]), xv, acc[j]);
        }
    }
    for (&v, &i) in vr.iter().zip(ir) {
        let xr = &xp[i.into() as usize * 16..][..16];
        // SAFETY: `xr` has 16 elements.
        let xv = unsafe { _mm512_loadu_ps(xr.as_ptr()) };
        acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(v), xv, acc[0]);
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let out = &mut out[..16];
    // SAFETY: `out` has 16 elements.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
}

/// `Σ_i vals[i] · x[idx[i]]` with four independent accumulators (the adds of one chain
/// would wait on each other).
#[inline]
fn gather_dot<I: Copy + Into<u32>>(vals: &[f32], idx: &[I], x: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let (vc, vr) = vals.split_at(vals.len() / 4 * 4);
    let (ic, ir) = idx.split_at(vc.len());
    for (v, i) in vc.chunks_exact(4).zip(ic.chunks_exact(4)) {
        for t in 0..4 {
            acc[t] += v[t] * x[i[t].into() as usize];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (v, i) in vr.iter().zip(ir) {
        s += v * x[(*i).into() as usize];
    }
    s
}

/// Most output channels per task of the flat kernel (a divisor of Cout is used).
const FLAT_CHANNELS: usize = 8;
/// Input bytes a tile reads per chunk of input channels (half of a 32 KiB L1).
const CHUNK_BYTES: usize = 16 << 10;
/// The widest tile of the flat kernel (AVX-512's).
const TILE_MAX: usize = 128;
/// Floats per 64-byte cache line, the alignment of the AVX-512 kernel's loads.
const LINE: usize = 16;

/// Sparse conv on the zero-padded input viewed as one flat array per (image, group),
/// described here for stride 1 (a strided conv splits the input into stride phases,
/// each of which a weight reads at stride 1: see the body): with `P` the row pitch (the padded width `Wp`, or `Wp` rounded up to
/// a cache line, see `TileSimd::pitch`), output `(oy, ox)` is flat position
/// `q = oy·P + ox`, and the stored weight `(ci, ky, kx)` reads input `q + off` with
/// `off = (ci·Hp + ky·dh)·P + kx·dw`. So every stored weight is one contiguous axpy
/// over a tile of flat positions, accumulated in registers across all the channel's
/// stored weights (one load and one multiply-add per weight and position, no stores
/// until the tile is done). The `P − OW` positions per row past the output width are
/// computed and dropped (8 of 64 at 56x56 with 3x3 and a rounded pitch, 2 of 9 at 7x7).
///
/// With AVX-512 and a pitch of whole cache lines, every load is aligned: a weight's
/// offset is `off = 16a + s` with the shift `s = (kx·dw) mod 16` the same for a whole
/// kernel column, so a channel's weights are run in groups of one shift, each summed at
/// the aligned positions `q0 + 16a` (one vector more than the tile) and added into the
/// tile shifted by `s` once per group. An unaligned 64-byte load spans two cache lines
/// and took twice as long per weight as an aligned one (8 loads and multiply-adds per
/// weight: 3.7 against 1.9 ns on the Xeon of docs/benchmarks-archive.md, session 13).
fn sparse_conv_flat(
    x: &Tensor,
    conv: &Conv2d,
    w: &SparseWeights,
    relu: bool,
    simd: TileSimd,
) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let shape = w.shape();
    let (cout, cin_g, kw) = (shape[0], shape[1], shape[3]);
    let groups = conv.groups.max(1);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let cout_g = cout / groups;
    let [dh, dw] = conv.dilation;
    let [pt, pl, pb, pr] = conv.pads;
    let [sh, sw] = conv.stride;
    let tile = simd.tile();
    // A strided conv reads its padded input split into sh x sw phases, phase (py, px)
    // holding rows py, py + sh, .. and columns px, px + sw, ..: each stored weight then
    // reads one phase at stride 1 (one phase when the stride is 1).
    let (hph, wp) = ((h + pt + pb).div_ceil(sh), (wd + pl + pr).div_ceil(sw));
    let phases = sh * sw;
    // The phases some kernel tap reads (a 1x1 conv of stride 2 reads one of four).
    let kh = shape[2];
    let read_py: Vec<bool> = (0..sh)
        .map(|p| (0..kh).any(|ky| ky * dh % sh == p))
        .collect();
    let read_px: Vec<bool> = (0..sw)
        .map(|p| (0..kw).any(|kx| kx * dw % sw == p))
        .collect();
    // Maps that fill at most half a tile (7x7 at 128 positions) hold the whole batch in
    // one flat array, images innermost (`es` floats per position): 8 images of 7x7 are
    // 4 full tiles instead of 8 half tiles, and at 8 images every offset is a multiple of
    // 8 floats (two shift groups). AVX-512 only: its tile is the one half-filled there.
    let batched = simd == TileSimd::Avx512 && n > 1 && oh * wp <= tile / 2;
    let (es, arrays) = if batched { (n, 1) } else { (1, n) };
    let pitch = if batched { wp } else { simd.pitch(wp) };
    let aligned = simd.aligns(pitch * es) || (batched && es.is_multiple_of(LINE / 2));
    let flat_out = oh * pitch * es;
    let tiles = flat_out.div_ceil(tile);
    // Room for the last tile's overrun past the last row, the largest offset's column
    // shift and the aligned kernel's vector past the tile.
    let plane_len = (cin_g * phases * hph * pitch + ((kw - 1) * dw) / sw + pitch) * es
        + tiles * tile
        - flat_out
        + LINE;
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    if n == 0 || cout == 0 || oh * ow == 0 {
        return y;
    }
    // Padded inputs, one flat array per (image, group) (per group when batched),
    // starting on a cache line where the kernel's loads are to be aligned (only there:
    // unaligned ones gain nothing); each channel plane zeroed and filled by its own task
    // (per (image, group) alone, a batch-1 layer padded its whole input on one thread
    // while the other waited).
    let padded: Vec<(Vec<f32>, usize)> = (0..arrays * groups)
        .map(|ag| {
            let (a, g) = (ag / groups, ag % groups);
            let mut p = super::uninit_vec(plane_len + LINE - 1);
            let lead = if aligned {
                p.as_ptr().align_offset(4 * LINE).min(LINE - 1)
            } else {
                0
            };
            let (head, rest) = p.split_at_mut(lead);
            let (planes, tail) = rest.split_at_mut(cin_g * phases * hph * pitch * es);
            head.fill(std::mem::MaybeUninit::new(0.0));
            tail.fill(std::mem::MaybeUninit::new(0.0));
            if hph * pitch > 0 {
                planes
                    .par_chunks_mut(phases * hph * pitch * es)
                    .enumerate()
                    .for_each(|(ci, dst)| {
                        dst.fill(std::mem::MaybeUninit::new(0.0));
                        // Image `a` alone, or all of them (image b at b of every `es`).
                        for (e, b) in (a..a + es).enumerate() {
                            let src = &x.data[(b * cin + g * cin_g + ci) * h * wd..][..h * wd];
                            for (iy, row) in src.chunks_exact(wd.max(1)).enumerate() {
                                // Padded row iy + pt is row (iy + pt) / sh of phase row
                                // (iy + pt) mod sh; its columns go to the sw column phases.
                                let (py, i) = ((iy + pt) % sh, (iy + pt) / sh);
                                if !read_py[py] {
                                    continue;
                                }
                                for px in (0..sw).filter(|&px| read_px[px]) {
                                    // Input columns ix with (ix + pl) mod sw == px.
                                    let ix0 = (px + sw - pl % sw) % sw;
                                    if ix0 >= wd {
                                        continue;
                                    }
                                    let j0 = (ix0 + pl) / sw;
                                    let at = (((py * sw + px) * hph + i) * pitch + j0) * es + e;
                                    let vals = row[ix0..].iter().step_by(sw);
                                    for (d, v) in dst[at..].iter_mut().step_by(es).zip(vals) {
                                        d.write(*v);
                                    }
                                }
                            }
                        }
                    });
            }
            // SAFETY: every element was written (each plane zeroed first, the rest too).
            (unsafe { super::assume_init(p) }, lead)
        })
        .collect();
    // Flat offset of every stored weight, its kernel order and the chunk plan (see
    // `FlatPrep`), built once per layer and input geometry and kept with the weights: a
    // 512-channel 7x7 layer at batch 1 spent a third of its time rebuilding them on
    // every call.
    let geometry = [hph, pitch, dh, dw, aligned as usize, tile, es, sh, sw];
    let prep = w.derived().get_or_make(
        |p: &FlatPrep| p.geometry == geometry,
        || FlatPrep::new(w, geometry),
    );
    let block = channel_block(cout);
    let layer = FlatLayer {
        prep: &prep,
        values: prep.values.as_deref().unwrap_or(w.values()),
        padded: &padded,
        bias: conv.bias.as_ref().map(|b| b.data.as_slice()),
        relu,
        simd,
        tile,
        tiles,
        flat_out,
        pitch,
        es,
        out_hw: [oh, ow],
        cout,
        cout_g,
        groups,
    };
    let plane = oh * ow;
    if !batched {
        // Tasks of `block` output channels of one image (never across images, so every
        // task's channels share one padded input), written in place.
        y.data
            .par_chunks_mut(plane * block)
            .enumerate()
            .for_each(|(task, out)| layer.run_block(task * block, block, out));
        return y;
    }
    // Tasks of `block` output channels of every image, `[channel][image][OH][OW]`, then
    // copied to NCHW.
    let blocks: Vec<Vec<f32>> = (0..cout / block)
        .into_par_iter()
        .map(|task| {
            let mut out = vec![0f32; block * n * plane];
            layer.run_block(task * block, block, &mut out);
            out
        })
        .collect();
    y.data
        .par_chunks_mut(cout * plane)
        .enumerate()
        .for_each(|(b, image)| {
            for (co, dst) in image.chunks_exact_mut(plane).enumerate() {
                let src = &blocks[co / block][((co % block) * n + b) * plane..][..plane];
                dst.copy_from_slice(src);
            }
        });
    y
}

/// One call of the flat kernel: what every task reads.
struct FlatLayer<'a> {
    prep: &'a FlatPrep,
    /// The stored values in kernel order.
    values: &'a [f32],
    /// The padded inputs and where their data starts, `[arrays][groups]`.
    padded: &'a [(Vec<f32>, usize)],
    bias: Option<&'a [f32]>,
    /// Whether a ReLU follows (applied as the outputs are stored).
    relu: bool,
    simd: TileSimd,
    tile: usize,
    tiles: usize,
    flat_out: usize,
    pitch: usize,
    /// Floats per input position: 1, or the batch when the images are innermost.
    es: usize,
    out_hw: [usize; 2],
    cout: usize,
    cout_g: usize,
    groups: usize,
}

impl FlatLayer<'_> {
    /// Output channels `first..first + block` (counted over images, `image·Cout + co`,
    /// when the images are not innermost), `[channel][es][OH][OW]` into `out`: tiles
    /// outer, then chunks of input channels, then the block's channels, each
    /// accumulating its tile in registers from its stored weights of that chunk.
    fn run_block(&self, first: usize, block: usize, out: &mut [f32]) {
        let (tile, es, pitch) = (self.tile, self.es, self.pitch);
        let [oh, ow] = self.out_hw;
        let plane = oh * ow;
        let offs = &self.prep.offs;
        let mut acc = vec![0f32; tile * block];
        for t in 0..self.tiles {
            let q0 = t * tile;
            // A last tile with at most half a tile of positions left is done at half
            // width (e.g. 14x14 with padding 1 and 64-position tiles: 224 flat
            // positions, 3.5 tiles).
            let width = if self.flat_out - q0 <= tile / 2 {
                tile / 2
            } else {
                tile
            };
            acc.fill(0.0);
            for c in 0..self.prep.plan.chunks {
                for (j, a) in acc.chunks_exact_mut(tile).enumerate() {
                    let idx = first + j;
                    let (b, co) = (idx / self.cout, idx % self.cout);
                    let (buf, lead) = &self.padded[b * self.groups + co / self.cout_g];
                    let xp = &buf[*lead..];
                    for run in self.prep.runs(co, c) {
                        let r = run.start as usize..run.end as usize;
                        let (vals, offs) = (&self.values[r.clone()], &offs[r]);
                        let a = &mut a[..width];
                        tile_axpy(a, xp, q0, vals, offs, run.shift as usize, self.simd);
                    }
                }
            }
            let end = (q0 + tile).min(self.flat_out);
            for ((j, o), a) in out
                .chunks_exact_mut(es * plane)
                .enumerate()
                .zip(acc.chunks_exact(tile))
            {
                let co = (first + j) % self.cout;
                let bv = self.bias.map_or(0.0, |bb| bb[co]);
                let relu = self.relu;
                let store = |v: f32| if relu { (v + bv).max(0.0) } else { v + bv };
                if es > 1 {
                    // Flat position q is image q mod es at (oy, ox) = (q / es) / pitch,
                    // (q / es) mod pitch: counted up from q0's, no division per position.
                    let (p, mut e) = (q0 / es, q0 % es);
                    let (mut oy, mut ox) = (p / pitch, p % pitch);
                    for v in &a[..end - q0] {
                        if ox < ow {
                            o[e * plane + oy * ow + ox] = store(*v);
                        }
                        e += 1;
                        if e == es {
                            e = 0;
                            ox += 1;
                            if ox == pitch {
                                ox = 0;
                                oy += 1;
                            }
                        }
                    }
                    continue;
                }
                // Flat positions q0.. back to (oy, ox): row by row, dropping ox >= OW.
                let mut q = q0;
                while q < end {
                    let (oy, ox) = (q / pitch, q % pitch);
                    let row_end = ((oy + 1) * pitch).min(end);
                    if ox < ow {
                        let valid = (oy * pitch + ow).min(end) - q;
                        let dst = &mut o[oy * ow + ox..][..valid];
                        for (d, v) in dst.iter_mut().zip(&a[q - q0..]) {
                            *d = store(*v);
                        }
                    }
                    q = row_end;
                }
            }
        }
    }
}

/// Per-layer data of the flat kernel for one input geometry
/// `[rows per phase, pitch, dh, dw, aligned, tile, es, sh, sw]`.
struct FlatPrep {
    geometry: [usize; 9],
    /// The stored values in kernel order, where that is not CSR order (aligned: each
    /// channel's weights of a chunk grouped by shift).
    values: Option<Vec<f32>>,
    /// Flat input offset of every stored weight in kernel order, less its run's shift.
    offs: Vec<u32>,
    plan: ChunkPlan,
    /// Runs of stored weights with one shift, in kernel order; those of (output
    /// channel `co`, chunk `c`) are `runs[run_starts[i]..run_starts[i + 1]]` with
    /// `i = co·chunks + c`.
    runs: Vec<Run>,
    run_starts: Vec<u32>,
}

/// Stored weights `start..end` (kernel order), all read at their offset plus `shift`.
struct Run {
    start: u32,
    end: u32,
    shift: u32,
}

impl FlatPrep {
    /// Input channels per chunk: the input a tile reads for one chunk (its channels'
    /// tile of positions plus the kernel's reach below and right of them) stays within
    /// `CHUNK_BYTES`, so it is read from L2 once and from L1 by every output channel
    /// of the block (without chunks a tile of a 256-channel layer reads ~100 KiB per
    /// output channel, all from L2: the kernel was L2-bandwidth-bound).
    fn new(w: &SparseWeights, geometry: [usize; 9]) -> FlatPrep {
        let [hph, pitch, dh, dw, aligned, tile, es, sh, sw] = geometry;
        let shape = w.shape();
        let (cin_g, kh, kw) = (shape[1], shape[2], shape[3]);
        // Offset of every K index first: no division per stored weight.
        let mut off_of_k = Vec::with_capacity(cin_g * kh * kw);
        for ci in 0..cin_g {
            for ky in 0..kh {
                for kx in 0..kw {
                    // Phase (ky·dh mod sh, kx·dw mod sw), shifted by the quotients.
                    let phase = ci * sh * sw + (ky * dh) % sh * sw + (kx * dw) % sw;
                    let row = phase * hph + (ky * dh) / sh;
                    off_of_k.push(((row * pitch + (kx * dw) / sw) * es) as u32);
                }
            }
        }
        let csr_offs: Vec<u32> = match w.cols() {
            Cols::U16(c) => c.par_iter().map(|&k| off_of_k[k as usize]).collect(),
            Cols::U32(c) => c.par_iter().map(|&k| off_of_k[k as usize]).collect(),
        };
        // The aligned kernel reads one vector past the tile for its shifted runs.
        let past = if aligned == 1 { LINE } else { 0 };
        let phases = (sh * sw).min(kh * kw);
        let reach =
            phases * (tile + (((kh - 1) * dh) / sh * pitch + ((kw - 1) * dw) / sw) * es + past);
        let plan = ChunkPlan::new(w, CHUNK_BYTES / (4 * reach));
        let chunks = plan.chunks;
        let mut runs = Vec::new();
        let mut run_starts = Vec::with_capacity(w.rows() * chunks + 1);
        run_starts.push(0);
        if aligned == 0 {
            // CSR order, one run of shift 0 per (channel, chunk).
            for co in 0..w.rows() {
                for c in 0..chunks {
                    let r = plan.range(co, c);
                    if !r.is_empty() {
                        runs.push(Run {
                            start: r.start as u32,
                            end: r.end as u32,
                            shift: 0,
                        });
                    }
                    run_starts.push(runs.len() as u32);
                }
            }
            return FlatPrep {
                geometry,
                values: None,
                offs: csr_offs,
                plan,
                runs,
                run_starts,
            };
        }
        // Each (channel, chunk)'s stored weights sorted by shift, in place of their CSR
        // positions (a stable sort: CSR order within a shift).
        let csr_values = w.values();
        let mut values = Vec::with_capacity(csr_values.len());
        let mut offs = Vec::with_capacity(csr_values.len());
        let mut order: Vec<usize> = Vec::new();
        for co in 0..w.rows() {
            for c in 0..chunks {
                let r = plan.range(co, c);
                order.clear();
                order.extend(r);
                order.sort_by_key(|&i| csr_offs[i] as usize % LINE);
                let first_run = runs.len();
                for &i in &order {
                    let shift = csr_offs[i] % LINE as u32;
                    let at = values.len() as u32;
                    match runs[first_run..].last_mut() {
                        Some(run) if run.shift == shift => run.end = at + 1,
                        _ => runs.push(Run {
                            start: at,
                            end: at + 1,
                            shift,
                        }),
                    }
                    values.push(csr_values[i]);
                    offs.push(csr_offs[i] - shift);
                }
                run_starts.push(runs.len() as u32);
            }
        }
        FlatPrep {
            geometry,
            values: Some(values),
            offs,
            plan,
            runs,
            run_starts,
        }
    }

    /// The runs of output channel `co` in chunk `c`.
    fn runs(&self, co: usize, c: usize) -> &[Run] {
        let i = co * self.plan.chunks + c;
        &self.runs[self.run_starts[i] as usize..self.run_starts[i + 1] as usize]
    }
}

/// Output channels per task of the flat kernels: the largest divisor of Cout up to
/// `FLAT_CHANNELS`.
fn channel_block(cout: usize) -> usize {
    (1..=FLAT_CHANNELS.min(cout))
        .rev()
        .find(|b| cout.is_multiple_of(*b))
        .unwrap_or(1)
}

/// A conv's stored weights split by chunks of input channels: a CSR row's columns
/// increase in `k = (ci·kh + ky)·kw + kx`, so each chunk of input channels is a
/// contiguous run of the row.
struct ChunkPlan {
    /// Number of chunks.
    chunks: usize,
    /// CSR position where each (output channel, chunk) starts, `[Cout][chunks + 1]`.
    starts: Vec<usize>,
}

impl ChunkPlan {
    /// Chunks of `chunk_ci` input channels (clamped to 1..=Cin/groups).
    fn new(w: &SparseWeights, chunk_ci: usize) -> ChunkPlan {
        let shape = w.shape();
        let (cin_g, k_per_ci) = (shape[1], shape[2] * shape[3]);
        let chunk_ci = chunk_ci.clamp(1, cin_g.max(1));
        let chunks = cin_g.div_ceil(chunk_ci);
        let cols = w.cols();
        let starts = (0..w.rows())
            .flat_map(|co| {
                let range = w.row_range(co);
                (0..=chunks).map(move |c| {
                    let k_end = (c * chunk_ci).min(cin_g) * k_per_ci;
                    let run = range.clone();
                    let len = match cols {
                        Cols::U16(v) => v[run].partition_point(|&k| (k as usize) < k_end),
                        Cols::U32(v) => v[run].partition_point(|&k| (k as usize) < k_end),
                    };
                    range.start + len
                })
            })
            .collect();
        ChunkPlan { chunks, starts }
    }

    /// CSR positions of output channel `co`'s stored weights in chunk `c`.
    fn range(&self, co: usize, c: usize) -> std::ops::Range<usize> {
        let at = co * (self.chunks + 1) + c;
        self.starts[at]..self.starts[at + 1]
    }
}

/// The instruction set the flat kernel runs, picked once per call.
#[derive(Clone, Copy, PartialEq)]
enum TileSimd {
    Portable,
    /// 8 lanes: a tile is 8 vectors of 8 positions.
    Avx2,
    /// 16 lanes: a tile is 8 vectors of 16 positions, loads aligned where the pitch
    /// allows (where the `Isa` allows it: `CpuOptions::avx512` turns it off).
    Avx512,
}

impl TileSimd {
    fn for_isa(isa: Isa) -> TileSimd {
        #[cfg(target_arch = "x86_64")]
        {
            if isa.avx512() {
                return TileSimd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return TileSimd::Avx2;
            }
        }
        let _ = isa;
        TileSimd::Portable
    }

    /// Output positions per tile: 8 registers of accumulators.
    fn tile(self) -> usize {
        match self {
            TileSimd::Avx512 => TILE_MAX,
            TileSimd::Avx2 | TileSimd::Portable => 64,
        }
    }

    /// The flat row pitch for a padded row of `wp` floats: with AVX-512, rounded up to
    /// whole cache lines where that adds at most a quarter to the positions computed
    /// (58 -> 64 at 56x56, 30 -> 32 at 28x28; not 9 -> 16 at 7x7), else `wp`.
    fn pitch(self, wp: usize) -> usize {
        let lines = wp.next_multiple_of(LINE);
        if self == TileSimd::Avx512 && 4 * lines <= 5 * wp {
            lines
        } else {
            wp
        }
    }

    /// Whether rows of `pitch` floats let the kernel group weights by shift and load
    /// aligned.
    fn aligns(self, pitch: usize) -> bool {
        self == TileSimd::Avx512 && pitch.is_multiple_of(LINE)
    }
}

/// `acc[t] += Σ_i vals[i] · xp[q0 + offs[i] + shift + t]` for `t < acc.len()`, which
/// is a whole number of the kernel's vectors (a tile or half a tile).
#[inline]
fn tile_axpy(
    acc: &mut [f32],
    xp: &[f32],
    q0: usize,
    vals: &[f32],
    offs: &[u32],
    shift: usize,
    simd: TileSimd,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: (all) the instruction sets were detected by `TileSimd::for_isa`; the
    // kernels check every slice bound like the portable loop.
    unsafe {
        match (simd, acc.len()) {
            (TileSimd::Avx512, 128) if shift > 0 => {
                return tile_avx512_shifted::<8>(acc, xp, q0, vals, offs, shift)
            }
            (TileSimd::Avx512, 64) if shift > 0 => {
                return tile_avx512_shifted::<4>(acc, xp, q0, vals, offs, shift)
            }
            (TileSimd::Avx512, 128) => return tile_avx512::<8>(acc, xp, q0, vals, offs),
            (TileSimd::Avx512, 64) => return tile_avx512::<4>(acc, xp, q0, vals, offs),
            (TileSimd::Avx2, 64) => return tile_avx2::<8>(acc, xp, q0 + shift, vals, offs),
            (TileSimd::Avx2, 32) => return tile_avx2::<4>(acc, xp, q0 + shift, vals, offs),
            _ => {}
        }
    }
    let _ = simd;
    let width = acc.len();
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + shift + off as usize..][..width];
        for (a, s) in acc.iter_mut().zip(src) {
            *a += v * s;
        }
    }
}

/// `tile_axpy` over `V` vectors of 8 positions, accumulated in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2<const V: usize>(acc: &mut [f32], xp: &[f32], q0: usize, vals: &[f32], offs: &[u32]) {
    use std::arch::x86_64::*;
    if vals.is_empty() {
        return;
    }
    let acc = &mut acc[..8 * V];
    let mut r = [_mm256_setzero_ps(); V];
    for (i, ri) in r.iter_mut().enumerate() {
        // SAFETY: `acc` has 8·V elements.
        *ri = unsafe { _mm256_loadu_ps(acc.as_ptr().add(8 * i)) };
    }
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + off as usize..][..8 * V];
        let vv = _mm256_set1_ps(v);
        for (i, ri) in r.iter_mut().enumerate() {
            // SAFETY: `src` has 8·V elements (bounds-checked slice above), so the 8
            // lanes at 8·i are in it; unaligned loads are allowed.
            let xv = unsafe { _mm256_loadu_ps(src.as_ptr().add(8 * i)) };
            *ri = _mm256_fmadd_ps(vv, xv, *ri);
        }
    }
    for (i, ri) in r.iter().enumerate() {
        // SAFETY: `acc` has 8·V elements.
        unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(8 * i), *ri) };
    }
}

/// `tile_axpy` with shift 0 over `V` vectors of 16 positions, accumulated in
/// registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn tile_avx512<const V: usize>(acc: &mut [f32], xp: &[f32], q0: usize, vals: &[f32], offs: &[u32]) {
    use std::arch::x86_64::*;
    if vals.is_empty() {
        return;
    }
    let acc = &mut acc[..16 * V];
    let mut r = [_mm512_setzero_ps(); V];
    for (i, ri) in r.iter_mut().enumerate() {
        // SAFETY: `acc` has 16·V elements.
        *ri = unsafe { _mm512_loadu_ps(acc.as_ptr().add(16 * i)) };
    }
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + off as usize..][..16 * V];
        let vv = _mm512_set1_ps(v);
        for (i, ri) in r.iter_mut().enumerate() {
            // SAFETY: `src` has 16·V elements (bounds-checked slice above), so the 16
            // lanes at 16·i are in it; unaligned loads are allowed.
            let xv = unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * i)) };
            *ri = _mm512_fmadd_ps(vv, xv, *ri);
        }
    }
    for (i, ri) in r.iter().enumerate() {
        // SAFETY: `acc` has 16·V elements.
        unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(16 * i), *ri) };
    }
}

/// Most vectors of `tile_avx512_shifted`'s sums: a tile's 8 and the one past it.
const SHIFTED_MAX: usize = 9;

/// `tile_axpy` for a run of one shift `0 < shift < 16` over `V` vectors of 16
/// positions: the run's sums at the unshifted (aligned) positions, `V + 1` vectors so
/// that they cover the tile shifted by `shift`, then added into `acc` shifted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn tile_avx512_shifted<const V: usize>(
    acc: &mut [f32],
    xp: &[f32],
    q0: usize,
    vals: &[f32],
    offs: &[u32],
    shift: usize,
) {
    use std::arch::x86_64::*;
    const { assert!(V < SHIFTED_MAX) };
    if vals.is_empty() {
        return;
    }
    let acc = &mut acc[..16 * V];
    let mut r = [_mm512_setzero_ps(); SHIFTED_MAX];
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + off as usize..][..16 * (V + 1)];
        let vv = _mm512_set1_ps(v);
        for (i, ri) in r[..V + 1].iter_mut().enumerate() {
            // SAFETY: `src` has 16·(V + 1) elements (bounds-checked slice above).
            let xv = unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * i)) };
            *ri = _mm512_fmadd_ps(vv, xv, *ri);
        }
    }
    // Lanes shift..shift + 16 of each pair of adjacent sums (`shift` < 16): in
    // registers, as a round trip through memory stalled on store forwarding.
    let lanes = _mm512_add_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(shift as i32),
    );
    for (i, a) in acc.chunks_exact_mut(16).enumerate() {
        let s = _mm512_permutex2var_ps(r[i], lanes, r[i + 1]);
        // SAFETY: `a` has 16 elements.
        unsafe {
            _mm512_storeu_ps(
                a.as_mut_ptr(),
                _mm512_add_ps(_mm512_loadu_ps(a.as_ptr()), s),
            )
        };
    }
}
