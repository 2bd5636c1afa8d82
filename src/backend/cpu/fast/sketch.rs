//! Binary-weight (sketch) fc and conv on the CPU, with additions and subtractions only.
//!
//! For an input row `x` (an fc input row or a conv im2col patch, K long, in the K order
//! of `weights/mod.rs`) and a binary row `B ∈ {±1}^K`:
//! `x·B = 2·P − S` with `S = Σ_k x_k` (once per input row, shared by every output
//! channel and base) and `P = Σ_{k: bit set} x_k`. Then `y_o = b_o + Σ_j a_{o,j}(2P_{o,j} − S)`.
//! Three ways to get P:
//! - masked (`sketch_linear`, `sketch_conv`): for each word, every input is ANDed with
//!   an all-ones/all-zeros lane mask derived from its bit and added; vectorises, no
//!   multiply by ±1.
//! - LUT (`*_lut`): for each group of 8 inputs all 256 subset sums are built once per
//!   input row; P is then one table lookup and add per byte of the bit row.
//! - associative (`*_assoc`, the paper's CPU scheme): a layer's binary rows are ordered
//!   along a minimum spanning tree over Hamming distance (rooted at the all-clear row,
//!   whose P is 0), and each row's P is its parent's plus the inputs whose bit turns on
//!   minus those whose bit turns off; cost ∝ the tree's total Hamming distance.
//!   `AssocPlan::pure` is that scheme; `AssocPlan::new` (used by `*_assoc`) is a hybrid
//!   whose root edge means "compute the row with the masked kernel" at a cost of K/8
//!   flips, so it only takes tree edges that beat the vectorised kernel.
//!
//! Default (`sketch_linear`, `sketch_conv`): the masked kernel, AVX2 build chosen at run
//! time where the CPU has it. On the 2-core development machine it beat the 8-input
//! LUT above on most shapes (see the `timing` test in tests/sketch.rs); the associative
//! scheme wins only when rows are within a few percent of each other in Hamming
//! distance. The batch-1 fc with AVX2 uses a different table kernel, with 3-input
//! tables looked up 8 output rows at a time (`sketch_triplets`): 5.7x dense on fc6 at
//! m = 2 where the masked kernel made 2.6x (docs/benchmarks-archive.md). The fc at batch 2-16
//! with AVX-512 turns each 16 bits into a lane mask (`sketch_masks`); other batches with
//! AVX2 decode rows into the blocked GEMV (2-15) or the GEMM's panels (16 and more;
//! `sketch_linear_with` lists the choice).
//!
//! Input rows are copied into buffers padded with zeros to `32 · words_per_row`, so the
//! padding bits of the last word meet zero inputs and contribute nothing to P, and the
//! conv's spatial zero padding contributes zero to both P and S, as in the dense conv.
//!
//! Preconditions (shapes agreeing with the weights, `Weights::Sketch` in the conv) are
//! the planner's invariants, checked by shape inference before a kernel runs; a
//! violation panics with a message naming it.

use super::gemm::InputPanels;
use super::sketch_masks as masks;
use super::sketch_triplets as triplets;
use super::FcKernel;
use crate::backend::cpu::select::{self, SketchFc};
use crate::graph::{Conv2d, Tensor};
use crate::weights::{SketchWeights, Weights};
use rayon::prelude::*;

/// How P (the sum of inputs under set bits) is computed.
#[derive(Clone, Copy)]
enum Method<'a> {
    Masked,
    Lut,
    Assoc(&'a AssocPlan),
}

/// `y = x Wᵀ + b` for `x: [N, K]` and sketch weights `[O, K]`; returns `[N, O]`. Runs
/// `sketch_linear_with` and the `Auto` kernel.
pub fn sketch_linear(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    sketch_linear_with(x, w, bias, FcKernel::Auto)
}

/// `sketch_linear` with the kernel chosen (for tests and benches that compare them); a
/// kernel this CPU lacks falls back to the portable masked kernel.
///
/// - AVX-512F, batch 2-16 (`Avx512`: 1-16), m ≤ 4 (`sketch_masks`): each 16 bits of a
///   binary row are a lane mask that builds 16 weights from the broadcast scales; 3
///   rows (2 for m > 2) against passes of up to 4 inputs.
/// - AVX2, batch 1: the 3-input table kernel (`triplets`; additions only, memory
///   traffic about `m/32` of dense).
/// - AVX2+FMA, batch 2-15 (and AVX-512 past its limits): each weight row is decoded
///   once into f32 (`Σ_j ±a_j`, a shift and a blend per 8 weights and base) and dotted
///   with every input row by the blocked GEMV, which beats `N` masked passes over the
///   bits (fc6 at batch 8: see docs/benchmarks-archive.md).
/// - AVX2+FMA, batch 16 and more (`select::SKETCH_GEMM_MIN_BATCH`, where the masks
///   kernel does not run): the rows decoded the same way, per K block, into the GEMM's
///   panels.
/// - Otherwise the masked kernel.
///
/// Runs `sketch_linear_as` with `select::sketch_fc`'s variant (the batch limits and
/// their measurements are there).
pub fn sketch_linear_with(
    x: &Tensor,
    w: &SketchWeights,
    bias: Option<&Tensor>,
    kernel: FcKernel,
) -> Tensor {
    let choice = if x.shape.len() == 2 && x.shape[1] == w.row_len() {
        select::sketch_fc(w, x.shape[0], kernel)
    } else {
        SketchFc::Masked
    };
    sketch_linear_as(x, w, bias, choice)
}

/// `sketch_linear` on the kernel `choice` (`select::sketch_fc` decides it). A kernel
/// this CPU lacks, or an input whose shape does not match the weights (reported by the
/// masked kernel), runs the portable masked kernel.
pub fn sketch_linear_as(
    x: &Tensor,
    w: &SketchWeights,
    bias: Option<&Tensor>,
    choice: SketchFc,
) -> Tensor {
    if x.shape.len() == 2 && x.shape[1] == w.row_len() {
        let n = x.shape[0];
        match choice {
            SketchFc::Masks if masks::supported(w) => {
                return masks::sketch_linear_masks(x, w, bias);
            }
            SketchFc::DecodeGemm { avx512 } if decoded_rows_supported() => {
                let k = w.row_len();
                let panels = InputPanels::new(&x.data, n, k, k, avx512);
                return super::gemm::fc_decoded(&panels, w.rows(), bias, |c, k0, kc, dst| {
                    decode_span(w, c, k0..k0 + kc, dst)
                });
            }
            SketchFc::DecodeGemv if decoded_rows_supported() => {
                return linear_decoded_rows(x, w, bias);
            }
            SketchFc::Triplets if triplets::supported() => {
                return triplets::sketch_linear_triplets(x, w, bias);
            }
            _ => {}
        }
    }
    linear_with(x, w, bias, Method::Masked)
}

/// AVX2+FMA (the GEMV's requirement; the row decode needs AVX2 too).
fn decoded_rows_supported() -> bool {
    super::dense::gemv_supported()
}

/// Output rows per task of `linear_decoded_rows`.
const DECODED_ROW_BLOCK: usize = 32;

/// `sketch_linear` for batches of 2 or more: decode a row, GEMV it against the batch.
fn linear_decoded_rows(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    let (n, k, o) = (x.shape[0], w.row_len(), w.rows());
    let stride = 32 * w.words_per_row();
    let blocks: Vec<Vec<f32>> = (0..o)
        .step_by(DECODED_ROW_BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r0| {
            let rows = r0..(r0 + DECODED_ROW_BLOCK).min(o);
            super::dense::decoded_rows_dots(rows, stride, &x.data, n, k, |c, row| {
                decode_row(w, c, row)
            })
        })
        .collect();
    super::layout::transpose_blocks(&blocks, DECODED_ROW_BLOCK, n, o, bias)
}

/// Row `c` of the sketch as f32, `Σ_j a_j (2 B_j − 1)`, into `row` (32 per bit word;
/// entries past K get the padding bits' values and are not read).
fn decode_row(w: &SketchWeights, c: usize, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: callers check `decoded_rows_supported()` (AVX2 present).
        unsafe { decode_row_avx2(w, c, row) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, c, row);
        unreachable!("decoded_rows_supported() is false off x86-64");
    }
}

/// Weights `span` of row `c` of the sketch as f32 (`Σ_j a_j (2 B_j − 1)`) into `out`;
/// `span.start` is a multiple of 32, and `out` holds `span.len()` rounded up to 32
/// (the padding bits' values land past `span.len()`).
fn decode_span(w: &SketchWeights, c: usize, span: std::ops::Range<usize>, out: &mut [f32]) {
    assert!(span.start.is_multiple_of(32) && span.end <= w.row_len());
    assert!(out.len() >= span.len().next_multiple_of(32));
    #[cfg(target_arch = "x86_64")]
    {
        assert!(decoded_rows_supported());
        // SAFETY: AVX2 is present (asserted).
        unsafe { decode_span_avx2(w, c, span.start / 32..span.end.div_ceil(32), out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, c, span, out);
        unreachable!("decoded_rows_supported() is false off x86-64");
    }
}

/// `decode_span` of the bit words `words`: per 32 weights, every base's word is
/// expanded in registers (a shift, a blend and an add per 8 weights and base), then
/// stored once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_span_avx2(w: &SketchWeights, c: usize, words: std::ops::Range<usize>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let m = w.bases();
    let shifts = sign_shifts();
    let scales = &w.scales()[c * m..(c + 1) * m];
    let bits: Vec<&[u32]> = (0..m).map(|j| &w.bit_row(c, j)[words.clone()]).collect();
    for (i, chunk) in out.chunks_exact_mut(32).take(words.len()).enumerate() {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (rows, &a) in bits.iter().zip(scales) {
            let (pos, neg) = (_mm256_set1_ps(a), _mm256_set1_ps(-a));
            let wv = _mm256_set1_epi32(rows[i] as i32);
            for (acc, sh) in acc.iter_mut().zip(&shifts) {
                let mask = _mm256_castsi256_ps(_mm256_sllv_epi32(wv, *sh));
                *acc = _mm256_add_ps(*acc, _mm256_blendv_ps(neg, pos, mask));
            }
        }
        for (q, v) in acc.iter().enumerate() {
            // SAFETY: `chunk` has 32 elements; 8q + 8 <= 32.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr().add(8 * q), *v) };
        }
    }
}

/// Per quarter q of a 32-bit word, the left shifts that move bit 8q + t into the sign of
/// lane t (31 − (8q + t)): `_mm256_sllv_epi32` then lets `blendv` select on the bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sign_shifts() -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::*;
    std::array::from_fn(|q| {
        let b = 8 * q as i32;
        _mm256_setr_epi32(
            31 - b,
            30 - b,
            29 - b,
            28 - b,
            27 - b,
            26 - b,
            25 - b,
            24 - b,
        )
    })
}

/// `decode_row` with AVX2: per 8 weights and base, one variable shift moves each lane's
/// bit into its sign, one blend picks `+a` or `−a`, one add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_row_avx2(w: &SketchWeights, c: usize, row: &mut [f32]) {
    use std::arch::x86_64::*;
    let m = w.bases();
    let shifts = sign_shifts();
    row.fill(0.0);
    for j in 0..m {
        let a = w.scales()[c * m + j];
        let (pos, neg) = (_mm256_set1_ps(a), _mm256_set1_ps(-a));
        for (chunk, &word) in row.chunks_exact_mut(32).zip(w.bit_row(c, j)) {
            let wv = _mm256_set1_epi32(word as i32);
            for (q, sh) in shifts.iter().enumerate() {
                let mask = _mm256_castsi256_ps(_mm256_sllv_epi32(wv, *sh));
                // SAFETY: `chunk` has 32 elements; 8q + 8 <= 32.
                unsafe {
                    let p = chunk.as_mut_ptr().add(8 * q);
                    _mm256_storeu_ps(
                        p,
                        _mm256_add_ps(_mm256_loadu_ps(p), _mm256_blendv_ps(neg, pos, mask)),
                    );
                }
            }
        }
    }
}

/// As `sketch_linear`, with P from per-input-row 8-input lookup tables.
pub fn sketch_linear_lut(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    linear_with(x, w, bias, Method::Lut)
}

/// As `sketch_linear`, with P computed associatively (builds the plan each call;
/// see `sketch_linear_assoc_with` to reuse one).
pub fn sketch_linear_assoc(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    let plan = AssocPlan::new(w, 1);
    linear_with(x, w, bias, Method::Assoc(&plan))
}

/// As `sketch_linear_assoc` with a plan built by `AssocPlan::new(w, 1)`.
pub fn sketch_linear_assoc_with(
    x: &Tensor,
    w: &SketchWeights,
    plan: &AssocPlan,
    bias: Option<&Tensor>,
) -> Tensor {
    linear_with(x, w, bias, Method::Assoc(plan))
}

/// Sketch convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a `Weights::Sketch`
/// of logical shape `[Cout, Cin/groups, kh, kw]`; returns `[N, Cout, OH, OW]`.
pub fn sketch_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    conv_with(x, conv, Method::Masked)
}

/// As `sketch_conv`, with P from per-patch 8-input lookup tables.
pub fn sketch_conv_lut(x: &Tensor, conv: &Conv2d) -> Tensor {
    conv_with(x, conv, Method::Lut)
}

/// As `sketch_conv`, with P computed associatively (builds the plan each call).
pub fn sketch_conv_assoc(x: &Tensor, conv: &Conv2d) -> Tensor {
    let plan = AssocPlan::new(sketch_of(conv), conv.groups);
    conv_with(x, conv, Method::Assoc(&plan))
}

/// As `sketch_conv_assoc` with a plan built by `AssocPlan::new(weights, conv.groups)`.
pub fn sketch_conv_assoc_with(x: &Tensor, conv: &Conv2d, plan: &AssocPlan) -> Tensor {
    conv_with(x, conv, Method::Assoc(plan))
}

fn sketch_of(conv: &Conv2d) -> &SketchWeights {
    match &conv.weight {
        Weights::Sketch(s) => s,
        other => panic!(
            "sketch_conv needs sketch weights, got {} (the planner picks the kernel by encoding)",
            other.encoding()
        ),
    }
}

fn linear_with(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>, method: Method) -> Tensor {
    let k = w.row_len();
    assert!(
        x.shape.len() == 2 && x.shape[1] == k,
        "sketch_linear: input shape {:?} does not match weights {:?}",
        x.shape,
        w.shape()
    );
    let n = x.shape[0];
    let o = w.rows();
    let kp = 32 * w.words_per_row();
    let mut xs = vec![0f32; n * kp];
    let mut sums = vec![0f32; n];
    for ((dst, src), s) in xs
        .chunks_exact_mut(kp.max(1))
        .zip(x.data.chunks_exact(k.max(1)))
        .zip(&mut sums)
    {
        dst[..k].copy_from_slice(src);
        *s = src.iter().sum();
    }
    let mut out = rows_times_weights(&xs, &sums, kp, w, 0, o, method, 0);
    add_bias_rows(&mut out, o, bias);
    Tensor {
        shape: vec![n, o],
        data: out,
    }
}

fn add_bias_rows(out: &mut [f32], o: usize, bias: Option<&Tensor>) {
    if let Some(b) = bias {
        assert_eq!(
            b.data.len(),
            o,
            "bias length must equal the output channels"
        );
        for row in out.chunks_exact_mut(o) {
            row.iter_mut().zip(&b.data).for_each(|(y, b)| *y += b);
        }
    }
}

/// Output-channel tile of the masked and LUT kernels (outputs per task).
const O_TILE: usize = 16;
/// Input-row tile of the masked kernel.
const R_TILE: usize = 16;

/// `out[r][o − o0] = Σ_j a_{o,j} (2 P_{o,j}(x_r) − S_r)` for rows `r` of `xs`
/// (padded to `kp`) and outputs `o0..o0+count`. `group` selects the plan's group.
#[allow(clippy::too_many_arguments)]
fn rows_times_weights(
    xs: &[f32],
    sums: &[f32],
    kp: usize,
    w: &SketchWeights,
    o0: usize,
    count: usize,
    method: Method,
    group: usize,
) -> Vec<f32> {
    let nrows = sums.len();
    let mut out = vec![0f32; nrows * count];
    // K = 0: every P and S is 0, so is y.
    if nrows == 0 || count == 0 || kp == 0 {
        return out;
    }
    let m = w.bases();
    let wpr = w.words_per_row();
    let scales = w.scales();
    let bits = w.bits();
    // y for one output from the m values of P.
    let combine = |o: usize, p: &[f32], s: f32| -> f32 {
        let a = &scales[o * m..(o + 1) * m];
        a.iter().zip(p).map(|(a, p)| a * (2.0 * p - s)).sum()
    };
    let many_rows = nrows >= 2 * rayon::current_num_threads();
    match method {
        Method::Masked => {
            // Tiles of (rows × outputs) so that bit rows and input rows stay in cache.
            let kernel = masked_kernel();
            let r_tiles = nrows.div_ceil(R_TILE);
            let o_tiles = count.div_ceil(O_TILE);
            let tiles: Vec<(usize, usize, Vec<f32>)> = (0..r_tiles * o_tiles)
                .into_par_iter()
                .map(|t| {
                    let (rt, ot) = (t / o_tiles, t % o_tiles);
                    let rs = rt * R_TILE..((rt + 1) * R_TILE).min(nrows);
                    let os = ot * O_TILE..((ot + 1) * O_TILE).min(count);
                    let mut tile = Vec::with_capacity(rs.len() * os.len());
                    // The tile's bit rows (o, j) are contiguous: [o0+os.start .. o0+os.end) × m.
                    let tile_bits = &bits[(o0 + os.start) * m * wpr..(o0 + os.end) * m * wpr];
                    let mut p = vec![0f32; os.len() * m];
                    for r in rs.clone() {
                        let x = &xs[r * kp..(r + 1) * kp];
                        kernel(x, tile_bits, &mut p);
                        for (i, oi) in os.clone().enumerate() {
                            tile.push(combine(o0 + oi, &p[i * m..(i + 1) * m], sums[r]));
                        }
                    }
                    (rs.start, os.start, tile)
                })
                .collect();
            for (r0, oi0, tile) in tiles {
                let width = O_TILE.min(count - oi0);
                for (i, chunk) in tile.chunks_exact(width).enumerate() {
                    let dst = (r0 + i) * count + oi0;
                    out[dst..dst + width].copy_from_slice(chunk);
                }
            }
        }
        Method::Lut => {
            let groups = kp / 8;
            let lut_one = |x: &[f32], lut: &mut Vec<f32>| {
                lut.resize(groups * 256, 0.0);
                build_lut(x, lut);
            };
            let eval = |lut: &[f32], o: usize, s: f32, p: &mut [f32]| -> f32 {
                for (j, pj) in p.iter_mut().enumerate() {
                    let row = &bits[(o * m + j) * wpr..(o * m + j + 1) * wpr];
                    *pj = lut_sum(lut, row);
                }
                combine(o, p, s)
            };
            if many_rows {
                out.par_chunks_mut(count).enumerate().for_each_init(
                    || (Vec::new(), vec![0f32; m]),
                    |(lut, p), (r, y)| {
                        lut_one(&xs[r * kp..(r + 1) * kp], lut);
                        for (oi, yo) in y.iter_mut().enumerate() {
                            *yo = eval(lut, o0 + oi, sums[r], p);
                        }
                    },
                );
            } else {
                let luts: Vec<Vec<f32>> = (0..nrows)
                    .into_par_iter()
                    .map(|r| {
                        let mut lut = Vec::new();
                        lut_one(&xs[r * kp..(r + 1) * kp], &mut lut);
                        lut
                    })
                    .collect();
                let cols: Vec<Vec<f32>> = (0..count.div_ceil(O_TILE))
                    .into_par_iter()
                    .map(|ot| {
                        let mut p = vec![0f32; m];
                        let os = ot * O_TILE..((ot + 1) * O_TILE).min(count);
                        let mut tile = Vec::with_capacity(nrows * os.len());
                        for (r, lut) in luts.iter().enumerate() {
                            for oi in os.clone() {
                                tile.push(eval(lut, o0 + oi, sums[r], &mut p));
                            }
                        }
                        tile
                    })
                    .collect();
                for (ot, tile) in cols.into_iter().enumerate() {
                    let oi0 = ot * O_TILE;
                    let width = O_TILE.min(count - oi0);
                    for (r, chunk) in tile.chunks_exact(width).enumerate() {
                        out[r * count + oi0..r * count + oi0 + width].copy_from_slice(chunk);
                    }
                }
            }
        }
        Method::Assoc(plan) => {
            let kernel = masked_kernel();
            let chunks = &plan.groups[group];
            assert_eq!(
                chunks.iter().map(|c| c.rows).sum::<usize>(),
                count * m,
                "associative plan was built for other weights or groups"
            );
            // P of every row of the group for one input row, chunk trees in turn or in parallel.
            let eval_all = |x: &[f32], pv: &mut [f32], parallel: bool| {
                let mut parts = Vec::with_capacity(chunks.len());
                let mut rest = pv;
                for c in chunks {
                    let (head, tail) = rest.split_at_mut(c.rows);
                    parts.push((c, head));
                    rest = tail;
                }
                if parallel {
                    parts
                        .into_par_iter()
                        .for_each(|(c, p)| c.eval(x, p, kernel));
                } else {
                    parts.into_iter().for_each(|(c, p)| c.eval(x, p, kernel));
                }
            };
            let finish = |r: usize, pv: &[f32], y: &mut [f32]| {
                for (oi, yo) in y.iter_mut().enumerate() {
                    *yo = combine(o0 + oi, &pv[oi * m..(oi + 1) * m], sums[r]);
                }
            };
            if many_rows {
                out.par_chunks_mut(count).enumerate().for_each_init(
                    || vec![0f32; count * m],
                    |pv, (r, y)| {
                        eval_all(&xs[r * kp..(r + 1) * kp], pv, false);
                        finish(r, pv, y);
                    },
                );
            } else {
                // Few input rows (fc at batch 1): the trees of the chunks run in parallel.
                let mut pv = vec![0f32; count * m];
                for (r, y) in out.chunks_exact_mut(count).enumerate() {
                    eval_all(&xs[r * kp..(r + 1) * kp], &mut pv, true);
                    finish(r, &pv, y);
                }
            }
        }
    }
    out
}

/// Signature of the masked inner kernel: `p[i]` = sum of `x` under the set bits of
/// row `i` of `bits` (rows of `x.len() / 32` words, back to back).
type MaskedFn = fn(&[f32], &[u32], &mut [f32]);

/// The masked kernel for this CPU: the AVX2 build where available (8 lanes instead
/// of SSE2's 4), chosen once per layer call.
fn masked_kernel() -> MaskedFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return |x, bits, p| {
                // SAFETY: AVX2 support was detected just above.
                unsafe { masked_rows_avx2(x, bits, p) }
            };
        }
    }
    masked_rows
}

/// AVX2 masked rows with explicit intrinsics: per 8 inputs, one variable shift moves
/// each lane's bit into its sign, one blend selects the input or 0.0 by that sign, one
/// add (three ops; the auto-vectorised `masked_sum` spends five on test, compare and
/// mask). Sums in a different order than `masked_rows`; both are exact to f32 rounding.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn masked_rows_avx2(x: &[f32], bits: &[u32], p: &mut [f32]) {
    use std::arch::x86_64::*;
    let wpr = x.len() / 32;
    if wpr == 0 {
        p.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let shifts = sign_shifts();
    let zero = _mm256_setzero_ps();
    for (row, pi) in bits.chunks_exact(wpr).zip(p.iter_mut()) {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (xc, &word) in x.chunks_exact(32).zip(row) {
            let w = _mm256_set1_epi32(word as i32);
            for q in 0..4 {
                // SAFETY: xc has 32 elements; q * 8 + 8 <= 32.
                let xv = unsafe { _mm256_loadu_ps(xc.as_ptr().add(8 * q)) };
                let m = _mm256_castsi256_ps(_mm256_sllv_epi32(w, shifts[q]));
                acc[q] = _mm256_add_ps(acc[q], _mm256_blendv_ps(zero, xv, m));
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: lanes has 8 elements.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        *pi = lanes.iter().sum();
    }
}

/// `masked_sum` over consecutive rows. (Blocking 2 or 4 rows per pass over `x` was
/// measured no faster, 4 was slower: its accumulators spilled; `x` stays in L1 anyway.)
#[inline(always)]
fn masked_rows(x: &[f32], bits: &[u32], p: &mut [f32]) {
    let wpr = x.len() / 32;
    for (row, pi) in bits.chunks_exact(wpr.max(1)).zip(p.iter_mut()) {
        *pi = masked_sum(x, row);
    }
}

/// Sum of `x[k]` over the set bits of `bits`; `x` has `32 * bits.len()` elements.
#[inline(always)]
fn masked_sum(x: &[f32], bits: &[u32]) -> f32 {
    // One accumulator per bit position: the compiler vectorises the lane loop
    // (broadcast the word, test each lane's bit, AND the input with the mask, add).
    let mut acc = [0f32; 32];
    for (xc, &word) in x.chunks_exact(32).zip(bits) {
        for t in 0..32 {
            let mask = if word & (1u32 << t) != 0 { u32::MAX } else { 0 };
            acc[t] += f32::from_bits(xc[t].to_bits() & mask);
        }
    }
    let mut half = [0f32; 8];
    for c in acc.chunks_exact(8) {
        for (h, v) in half.iter_mut().zip(c) {
            *h += v;
        }
    }
    half.iter().sum()
}

/// All 256 subset sums of each group of 8 inputs: `lut[g * 256 + b] = Σ_{t: bit t of b} x[8g + t]`.
/// Built from two 16-entry nibble tables per group, one addition per entry.
fn build_lut(x: &[f32], lut: &mut [f32]) {
    for (xg, l) in x.chunks_exact(8).zip(lut.chunks_exact_mut(256)) {
        let mut lo = [0f32; 16];
        let mut hi = [0f32; 16];
        for b in 1..16usize {
            let t = b.trailing_zeros() as usize;
            lo[b] = lo[b & (b - 1)] + xg[t];
            hi[b] = hi[b & (b - 1)] + xg[4 + t];
        }
        for (h, chunk) in hi.iter().zip(l.chunks_exact_mut(16)) {
            for (dst, lv) in chunk.iter_mut().zip(&lo) {
                *dst = h + lv;
            }
        }
    }
}

/// P from the lookup tables: one lookup per byte of the bit row.
#[inline]
fn lut_sum(lut: &[f32], bits: &[u32]) -> f32 {
    let mut acc = [0f32; 4];
    for (i, &word) in bits.iter().enumerate() {
        let l = &lut[i * 1024..(i + 1) * 1024];
        acc[0] += l[(word & 0xff) as usize];
        acc[1] += l[256 + ((word >> 8) & 0xff) as usize];
        acc[2] += l[512 + ((word >> 16) & 0xff) as usize];
        acc[3] += l[768 + (word >> 24) as usize];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// The associative evaluation order of a layer's binary rows: per conv group, the
/// rows are cut into a few contiguous chunks (about two per worker thread) with one
/// tree each, so a single input row can still be spread over the threads; each cut
/// costs at most one extra root edge.
#[derive(Clone, Debug)]
pub struct AssocPlan {
    groups: Vec<Vec<GroupPlan>>,
    k: usize,
}

/// One chunk of a group's rows `(o, j)` (local output `o`, base `j`, index `o * m + j`,
/// counted from the chunk's first row) in tree order: each step names the row, its
/// parent (or none: the all-clear row, P = 0) and the inputs whose bit differs from
/// the parent's.
#[derive(Clone, Debug)]
struct GroupPlan {
    rows: usize,
    /// (row, parent or `ROOT`/`DIRECT`, end of its `plus` run, end of its `minus` run).
    steps: Vec<(usize, usize, usize, usize)>,
    /// Bit rows of the `DIRECT` steps, in step order, `words` each.
    direct: Vec<u32>,
    words: usize,
    /// Input indices whose bit turns on (concatenated runs, in step order).
    plus: Vec<u32>,
    /// Input indices whose bit turns off.
    minus: Vec<u32>,
}

/// Parent marker: P summed from the all-clear row through index lists (pure scheme).
const ROOT: usize = usize::MAX;
/// Parent marker: P computed from scratch with the masked kernel (hybrid scheme).
const DIRECT: usize = usize::MAX - 1;
/// Hybrid plans take a tree edge only when its Hamming distance is below K / this:
/// one scalar gather-add per flipped bit costs about as much as 8 to 14 lanes of the
/// vectorised masked kernel on the machines measured (see the report in tests/sketch.rs).
const DIRECT_RATIO: usize = 8;

impl AssocPlan {
    /// Builds the hybrid plan for `w` split into `groups` conv groups (1 for fc): a
    /// minimum spanning tree (Prim, O(R² · words) per chunk of R rows) over Hamming
    /// distance, where the root edge of every row costs `32 · words / DIRECT_RATIO`
    /// and means "compute this row directly with the masked kernel". Rows with no
    /// close neighbour are thus never slower than `sketch_linear`'s kernel, and rows
    /// close to another one cost one add per differing bit.
    pub fn new(w: &SketchWeights, groups: usize) -> AssocPlan {
        Self::build(w, groups, true)
    }

    /// The pure associative plan (the paper's scheme): every row is reached from the
    /// all-clear row (P = 0, root edge = its set bits) or from another row through
    /// index lists, along a minimum spanning tree over Hamming distance.
    pub fn pure(w: &SketchWeights, groups: usize) -> AssocPlan {
        Self::build(w, groups, false)
    }

    fn build(w: &SketchWeights, groups: usize, hybrid: bool) -> AssocPlan {
        let m = w.bases();
        let wpr = w.words_per_row();
        let k = w.row_len();
        let groups = groups.max(1);
        assert!(
            w.rows().is_multiple_of(groups),
            "output channels {} not divisible by groups {groups}",
            w.rows()
        );
        let per = w.rows() / groups * m;
        let n_chunks = (2 * rayon::current_num_threads()).clamp(1, per.max(1));
        let chunk = per.div_ceil(n_chunks).max(1);
        let plans = (0..groups)
            .map(|g| {
                (0..per)
                    .step_by(chunk)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map(|start| {
                        let rows: Vec<&[u32]> = (start..(start + chunk).min(per))
                            .map(|i| &w.bits()[(g * per + i) * wpr..(g * per + i + 1) * wpr])
                            .collect();
                        GroupPlan::new(&rows, k, hybrid)
                    })
                    .collect()
            })
            .collect();
        AssocPlan { groups: plans, k }
    }

    /// Number of trees (chunks over all groups); each starts from the all-clear row.
    pub fn trees(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    /// Rows computed from scratch with the masked kernel (0 for a pure plan).
    pub fn direct_rows(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .map(|g| g.direct.len() / g.words.max(1))
            .sum()
    }

    /// Input additions per input row along the tree (its total Hamming distance).
    pub fn tree_flips(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .map(|g| g.plus.len() + g.minus.len())
            .sum()
    }

    /// Input additions per input row if every row were summed from scratch over its
    /// set bits (the sparse direct cost), for comparison with `tree_flips`.
    pub fn direct_set_bits(&self, w: &SketchWeights) -> usize {
        w.bits().iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Additions per input row of the dense masked kernel: rows × K.
    pub fn dense_cost(&self) -> usize {
        self.groups.iter().flatten().map(|g| g.rows).sum::<usize>() * self.k
    }
}

fn hamming(a: &[u32], b: &[u32]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

impl GroupPlan {
    fn new(rows: &[&[u32]], k: usize, hybrid: bool) -> GroupPlan {
        let r = rows.len();
        // Bits past K are ignored, whatever the file holds.
        let wpr = k.div_ceil(32);
        let clean: Vec<Vec<u32>> = rows
            .iter()
            .map(|row| {
                let mut v = row.to_vec();
                if !k.is_multiple_of(32) && wpr > 0 {
                    v[wpr - 1] &= (1u32 << (k % 32)) - 1;
                }
                v
            })
            .collect();
        // Prim from the virtual root: best[i] = (distance, parent) of the cheapest edge
        // from the tree to row i.
        let direct_cost = (32 * wpr / DIRECT_RATIO) as u32;
        let mut best: Vec<(u32, usize)> = clean
            .iter()
            .map(|v| {
                if hybrid {
                    (direct_cost, DIRECT)
                } else {
                    (v.iter().map(|w| w.count_ones()).sum(), ROOT)
                }
            })
            .collect();
        let mut done = vec![false; r];
        let mut steps = Vec::with_capacity(r);
        let (mut plus, mut minus, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..r {
            let Some(i) = (0..r).filter(|&i| !done[i]).min_by_key(|&i| best[i].0) else {
                break;
            };
            done[i] = true;
            let parent = best[i].1;
            if parent == DIRECT {
                direct.extend_from_slice(&clean[i]);
            }
            for (wi, &word) in clean[i].iter().enumerate().filter(|_| parent != DIRECT) {
                let old = if parent == ROOT { 0 } else { clean[parent][wi] };
                let (mut on, mut off) = (word & !old, old & !word);
                while on != 0 {
                    plus.push((wi * 32) as u32 + on.trailing_zeros());
                    on &= on - 1;
                }
                while off != 0 {
                    minus.push((wi * 32) as u32 + off.trailing_zeros());
                    off &= off - 1;
                }
            }
            steps.push((i, parent, plus.len(), minus.len()));
            let ci = &clean[i];
            for j in 0..r {
                if !done[j] {
                    let d = hamming(ci, &clean[j]);
                    if d < best[j].0 {
                        best[j] = (d, i);
                    }
                }
            }
        }
        GroupPlan {
            rows: r,
            steps,
            direct,
            words: wpr,
            plus,
            minus,
        }
    }

    /// P for every row of the group from one (padded) input row, written to `p[row]`.
    fn eval(&self, x: &[f32], p: &mut [f32], kernel: MaskedFn) {
        let (mut pi, mut mi, mut di) = (0, 0, 0);
        for &(row, parent, pe, me) in &self.steps {
            if parent == DIRECT {
                let bits = &self.direct[di * self.words..(di + 1) * self.words];
                kernel(x, bits, &mut p[row..row + 1]);
                di += 1;
                continue;
            }
            let mut v = if parent == ROOT { 0.0 } else { p[parent] };
            for &k in &self.plus[pi..pe] {
                v += x[k as usize];
            }
            for &k in &self.minus[mi..me] {
                v -= x[k as usize];
            }
            p[row] = v;
            pi = pe;
            mi = me;
        }
    }
}

fn conv_with(x: &Tensor, conv: &Conv2d, method: Method) -> Tensor {
    let w = sketch_of(conv);
    assert!(
        x.shape.len() == 4,
        "sketch_conv: input must be NCHW, got {:?}",
        x.shape
    );
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let groups = conv.groups.max(1);
    let cout = w.rows();
    let cin_g = conv.in_channels_per_group();
    assert!(
        cin == cin_g * groups && cout.is_multiple_of(groups),
        "sketch_conv: input channels {cin} do not match weights {:?} with {groups} groups",
        w.shape()
    );
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("sketch_conv: window larger than the padded input (shape inference rejects this)");
    let [kh, kw] = conv.kernel;
    let k = cin_g * kh * kw;
    let kp = 32 * w.words_per_row();
    let ohw = oh * ow;
    let cout_g = cout / groups;
    let mut out = vec![0f32; n * cout * ohw];
    let mut patches = vec![0f32; ohw * kp];
    let mut sums = vec![0f32; ohw];
    for img in 0..n {
        for g in (0..groups).filter(|_| kp > 0) {
            // im2col: one contiguous, zero-padded row of K per output position.
            patches
                .par_chunks_mut(kp)
                .zip(sums.par_iter_mut())
                .enumerate()
                .for_each(|(pos, (row, s))| {
                    let (oy, ox) = (pos / ow, pos % ow);
                    let mut sum = 0f32;
                    for ci in 0..cin_g {
                        let plane = &x.data[((img * cin) + g * cin_g + ci) * h * wd..][..h * wd];
                        for ky in 0..kh {
                            let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                                - conv.pads[0] as isize;
                            for kx in 0..kw {
                                let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize
                                    - conv.pads[1] as isize;
                                let v = if iy >= 0
                                    && (iy as usize) < h
                                    && ix >= 0
                                    && (ix as usize) < wd
                                {
                                    plane[iy as usize * wd + ix as usize]
                                } else {
                                    0.0
                                };
                                row[(ci * kh + ky) * kw + kx] = v;
                                sum += v;
                            }
                        }
                    }
                    row[k..].fill(0.0);
                    *s = sum;
                });
            let y = rows_times_weights(&patches, &sums, kp, w, g * cout_g, cout_g, method, g);
            // [pos][co] -> NCHW planes.
            let base = img * cout * ohw + g * cout_g * ohw;
            for (pos, yr) in y.chunks_exact(cout_g).enumerate() {
                for (oi, v) in yr.iter().enumerate() {
                    out[base + oi * ohw + pos] = *v;
                }
            }
        }
        if let Some(b) = &conv.bias {
            assert_eq!(
                b.data.len(),
                cout,
                "bias length must equal the output channels"
            );
            for (co, plane) in out[img * cout * ohw..(img + 1) * cout * ohw]
                .chunks_exact_mut(ohw.max(1))
                .enumerate()
            {
                plane.iter_mut().for_each(|v| *v += b.data[co]);
            }
        }
    }
    Tensor {
        shape: vec![n, cout, oh, ow],
        data: out,
    }
}
