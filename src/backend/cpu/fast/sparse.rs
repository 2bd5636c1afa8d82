//! Sparse (CSR) conv and fc on the CPU; the layout is in `weights/sparse.rs`.
//!
//! - Conv, stride 1 (`sparse_conv_flat`): direct, no im2col, on the zero-padded input
//!   viewed as one flat array per (image, group), where every stored weight is one
//!   contiguous axpy over a tile of 64 flat output positions held in registers (AVX2 +
//!   FMA where available); tasks are blocks of up to 8 output channels, tiles outer, then
//!   chunks of input channels small enough that a tile's input rows for one chunk stay
//!   in L1 while every channel of the block consumes its stored weights of that chunk.
//!   The flat offsets and the chunk plan are built once per layer and input geometry
//!   and kept with the weights (`weights::Derived`; 4 bytes per stored weight).
//! - Conv, other strides (`sparse_conv_rows`): each task owns a block of output channels
//!   of one image; for every stored weight `(k, v)` of a channel it decodes `(ci, ky, kx)`
//!   once and adds `v · x[ci]` shifted by `(ky, kx)` to the output plane, row by row,
//!   over the output columns whose input column lies inside the image.
//!   Work is `nnz · OH · OW` multiply-adds per image either way, so they beat the dense
//!   conv only below a crossover density (see below; measured against the im2col +
//!   sgemm conv that preceded the GEMM conv of `fast::gemm`).
//! - Fc: SpMV at batch 1 (rows in parallel, one dot product of the stored entries with
//!   the gathered inputs, four accumulators, index width matched once per layer); SpMM for batch > 1 on the transposed input `[K][N]`, so
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
//! with u16 indices against 4 dense, i.e. smaller only below 67%).
//!
//! Re-measured with the flat stride-1 kernel on all four ResNet-18 3x3 shapes, batch 1
//! and 8 (benches/kernels.rs, table in docs/benchmarks.md, "Compressed kernels vs
//! dense"): 1.3-3x faster than dense at 30% on every shape, 0.5-0.9x at 50% on most,
//! so the conv crossover is 0.4 (`fast::run_node` runs the dense path on weights
//! decoded once above it). The fc stays at 0.5: 3x at 50% at batch 1 (at batch 8 the
//! SpMM already loses at 30%, 0.7x). `compress sparse` keeps a layer dense above its crossover unless
//! told otherwise (`--all`, `--max-density`).

use crate::graph::{Conv2d, Tensor};
use crate::weights::{Cols, SparseWeights, Weights};
use rayon::prelude::*;

/// Output channels per conv task.
const CHANNEL_BLOCK: usize = 4;
/// Fc rows per task.
const ROW_BLOCK: usize = 64;

/// Density above which the dense conv kernel is faster than `sparse_conv`
/// (ResNet-18's 3x3 convs, batch 1 and 8; measured, see module docs), with the dense
/// conv's AVX2 micro-kernel. Stride-1 convs only (the flat kernel): see `runs_sparse`.
pub const CONV_CROSSOVER: f64 = 0.4;

/// `CONV_CROSSOVER` where the dense conv runs its AVX-512 micro-kernel (1.3-1.5x faster
/// than the AVX2 one on ResNet-18's 3x3 convs): at 30% density the CSR kernel ran
/// 1.00-1.30x of it (docs/benchmarks.md, session 12), and its time grows with the
/// density, so the two meet near 35%.
pub const CONV_CROSSOVER_AVX512: f64 = 0.35;

/// The crossover density the executor uses on this CPU.
pub fn conv_crossover() -> f64 {
    if super::avx512_supported() {
        CONV_CROSSOVER_AVX512
    } else {
        CONV_CROSSOVER
    }
}

/// Whether the executor runs this sparse conv with the CSR kernel (else the dense path
/// on weights decoded once). Strided convs never do: their row kernel measured slower
/// than dense at every density tried (AlexNet's 11x11 stride-4 conv1, batch 1: 14.8 /
/// 6.2 / 3.6 ms at 25 / 10 / 5% against 2.2 ms dense, session 3's `bench --sweep
/// sparse`); stride-1 convs use the flat kernel up to `conv_crossover()`.
pub fn runs_sparse(conv: &Conv2d, w: &SparseWeights) -> bool {
    conv.stride == [1, 1] && w.density() <= conv_crossover()
}
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
    if conv.stride == [1, 1] {
        return sparse_conv_flat(x, conv, w);
    }
    sparse_conv_rows(x, conv, w)
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

/// Output positions per tile of the flat kernel (8 AVX registers of accumulators).
const FLAT_TILE: usize = 64;
/// Most output channels per task of the flat kernel (a divisor of Cout is used).
const FLAT_CHANNELS: usize = 8;
/// Input bytes a tile reads per chunk of input channels (half of a 32 KiB L1).
const CHUNK_BYTES: usize = 16 << 10;

/// Stride-1 sparse conv on the zero-padded input viewed as one flat array per
/// (image, group): with `Wp` the padded width, output `(oy, ox)` is flat position
/// `q = oy·Wp + ox`, and the stored weight `(ci, ky, kx)` reads input `q + off` with
/// `off = (ci·Hp + ky·dh)·Wp + kx·dw`. So every stored weight is one contiguous axpy
/// over a tile of flat positions, accumulated in registers across all the channel's
/// stored weights (one load and one multiply-add per weight and position, no stores
/// until the tile is done). The `Wp − OW` positions per row past the output width are
/// computed and dropped (2 of 58 at 56x56 with 3x3, 2 of 9 at 7x7).
fn sparse_conv_flat(x: &Tensor, conv: &Conv2d, w: &SparseWeights) -> Tensor {
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
    let (hp, wp) = (h + pt + pb, wd + pl + pr);
    let avx2 = has_avx2_fma();
    let flat_out = oh * wp;
    let tiles = flat_out.div_ceil(FLAT_TILE);
    // Room for the last tile's overrun past the last row plus the largest offset's
    // column shift.
    let plane_len = cin_g * hp * wp + tiles * FLAT_TILE - flat_out + (kw - 1) * dw + wp;
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    if n == 0 || cout == 0 || oh * ow == 0 {
        return y;
    }
    // Padded inputs, one flat array per (image, group), each channel plane zeroed and
    // filled by its own task (per (image, group) alone, a batch-1 layer padded its whole
    // input on one thread while the other waited).
    let padded: Vec<Vec<f32>> = (0..n * groups)
        .map(|ng| {
            let (b, g) = (ng / groups, ng % groups);
            let mut p = super::uninit_vec(plane_len);
            let (planes, tail) = p.split_at_mut(cin_g * hp * wp);
            tail.fill(std::mem::MaybeUninit::new(0.0));
            if hp * wp > 0 {
                planes
                    .par_chunks_mut(hp * wp)
                    .enumerate()
                    .for_each(|(ci, dst)| {
                        dst.fill(std::mem::MaybeUninit::new(0.0));
                        let src = &x.data[(b * cin + g * cin_g + ci) * h * wd..][..h * wd];
                        for (iy, row) in src.chunks_exact(wd.max(1)).enumerate() {
                            let at = (iy + pt) * wp + pl;
                            for (d, v) in dst[at..at + wd].iter_mut().zip(row) {
                                d.write(*v);
                            }
                        }
                    });
            }
            // SAFETY: every element was written (each plane zeroed first, the tail too).
            unsafe { super::assume_init(p) }
        })
        .collect();
    // Flat offset of every stored weight (CSR order) and the chunk plan (see
    // `FlatPrep`), built once per layer and input geometry and kept with the weights: a
    // 512-channel 7x7 layer at batch 1 spent a third of its time rebuilding them on
    // every call.
    let geometry = [hp, wp, dh, dw];
    let prep = w.derived().get_or_make(
        |p: &FlatPrep| p.geometry == geometry,
        || FlatPrep::new(w, geometry),
    );
    let (offs, plan) = (&prep.offs, &prep.plan);
    let values = w.values();
    let bias = conv.bias.as_ref().map(|b| b.data.as_slice());
    let plane = oh * ow;
    // Tasks of FLAT_CHANNELS output channels of one image (never across images, so
    // every task's channels share one padded input); tiles outer, then chunks of input
    // channels, then the block's channels, each accumulating its tile in registers
    // from its stored weights of that chunk.
    let block = channel_block(cout);
    y.data
        .par_chunks_mut(plane * block)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * block;
            let mut acc = vec![[0f32; FLAT_TILE]; block];
            for t in 0..tiles {
                let q0 = t * FLAT_TILE;
                // A last tile with at most half a tile of positions left is done at half
                // width (e.g. 14x14 with padding 1: 224 flat positions, 3.5 tiles).
                let half = flat_out - q0 <= FLAT_TILE / 2;
                acc.iter_mut().for_each(|a| a.fill(0.0));
                for c in 0..plan.chunks {
                    for (j, a) in acc.iter_mut().enumerate() {
                        let idx = first + j;
                        let (b, co) = (idx / cout, idx % cout);
                        let xp = &padded[b * groups + co / cout_g];
                        let range = plan.range(co, c);
                        let (vals, offs) = (&values[range.clone()], &offs[range]);
                        tile_axpy(a, xp, q0, vals, offs, avx2, half);
                    }
                }
                for ((j, o), a) in out.chunks_exact_mut(plane).enumerate().zip(&acc) {
                    let co = (first + j) % cout;
                    let bv = bias.map_or(0.0, |bb| bb[co]);
                    // Flat positions q0.. back to (oy, ox): row by row, dropping ox >= OW.
                    let end = (q0 + FLAT_TILE).min(flat_out);
                    let mut q = q0;
                    while q < end {
                        let (oy, ox) = (q / wp, q % wp);
                        let row_end = ((oy + 1) * wp).min(end);
                        if ox < ow {
                            let valid = (oy * wp + ow).min(end) - q;
                            let dst = &mut o[oy * ow + ox..][..valid];
                            for (d, v) in dst.iter_mut().zip(&a[q - q0..]) {
                                *d = v + bv;
                            }
                        }
                        q = row_end;
                    }
                }
            }
        });
    y
}

/// Per-layer data of the flat kernel for one input geometry `[Hp, Wp, dh, dw]`.
struct FlatPrep {
    geometry: [usize; 4],
    /// Flat input offset of every stored weight, in CSR order.
    offs: Vec<u32>,
    plan: ChunkPlan,
}

impl FlatPrep {
    /// Input channels per chunk: the input a tile reads for one chunk (its channels'
    /// `FLAT_TILE` positions plus the kernel's reach below and right of them) stays
    /// within `CHUNK_BYTES`, so it is read from L2 once and from L1 by every output
    /// channel of the block (without chunks a tile of a 256-channel layer reads ~100
    /// KiB per output channel, all from L2: the kernel was L2-bandwidth-bound).
    fn new(w: &SparseWeights, geometry: [usize; 4]) -> FlatPrep {
        let [hp, wp, dh, dw] = geometry;
        let shape = w.shape();
        let (cin_g, kh, kw) = (shape[1], shape[2], shape[3]);
        // Offset of every K index first: no division per stored weight.
        let mut off_of_k = Vec::with_capacity(cin_g * kh * kw);
        for ci in 0..cin_g {
            for ky in 0..kh {
                for kx in 0..kw {
                    off_of_k.push(((ci * hp + ky * dh) * wp + kx * dw) as u32);
                }
            }
        }
        let offs = match w.cols() {
            Cols::U16(c) => c.par_iter().map(|&k| off_of_k[k as usize]).collect(),
            Cols::U32(c) => c.par_iter().map(|&k| off_of_k[k as usize]).collect(),
        };
        let reach = FLAT_TILE + (kh - 1) * dh * wp + (kw - 1) * dw;
        FlatPrep {
            geometry,
            offs,
            plan: ChunkPlan::new(w, CHUNK_BYTES / (4 * reach)),
        }
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

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `acc[t] += Σ_i vals[i] · xp[q0 + offs[i] + t]` for `t < FLAT_TILE`, or for
/// `t < FLAT_TILE / 2` when `half` (the rest of `acc` is left as it is).
#[inline]
fn tile_axpy(
    acc: &mut [f32; FLAT_TILE],
    xp: &[f32],
    q0: usize,
    vals: &[f32],
    offs: &[u32],
    avx2: bool,
    half: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: AVX2 and FMA support were detected by the caller; `tile_avx2` checks
        // every slice bound like the portable loop.
        return unsafe {
            if half {
                tile_avx2::<{ FLAT_TILE / 16 }>(acc, xp, q0, vals, offs)
            } else {
                tile_avx2::<{ FLAT_TILE / 8 }>(acc, xp, q0, vals, offs)
            }
        };
    }
    let _ = avx2;
    let width = if half { FLAT_TILE / 2 } else { FLAT_TILE };
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + off as usize..][..width];
        for (a, s) in acc.iter_mut().zip(src) {
            *a += v * s;
        }
    }
}

/// `tile_axpy` over `V` vectors of 8 positions, accumulated in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn tile_avx2<const V: usize>(
    acc: &mut [f32; FLAT_TILE],
    xp: &[f32],
    q0: usize,
    vals: &[f32],
    offs: &[u32],
) {
    use std::arch::x86_64::*;
    if vals.is_empty() {
        return;
    }
    let mut r = [_mm256_setzero_ps(); V];
    for (i, ri) in r.iter_mut().enumerate() {
        // SAFETY: `acc` has FLAT_TILE ≥ 8·V elements.
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
        // SAFETY: `acc` has FLAT_TILE ≥ 8·V elements.
        unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(8 * i), *ri) };
    }
}
