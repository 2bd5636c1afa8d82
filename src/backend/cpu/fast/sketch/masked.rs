//! The masked sketch kernel: P (the sum of the inputs under a binary row's set bits)
//! by ANDing every input with a lane mask made from its bit, portable (auto-vectorised)
//! or with AVX2, chosen once per layer call. The fc falls back to it wherever no other
//! kernel applies; `dev.rs` runs it for the conv and inside the associative plans.

use super::SketchWeights;
use crate::graph::Tensor;
use rayon::prelude::*;

/// `sketch_linear` on the masked kernel.
pub(super) fn linear_masked(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    let o = w.rows();
    linear_with(x, w, bias, |xs, sums, kp| {
        rows_times_weights(xs, sums, kp, w, 0, o)
    })
}

/// An fc on sketch weights: the input rows copied into rows padded with zeros to
/// `kp = 32 · words_per_row` and summed (S), `rows(xs, sums, kp)` for the `[N][O]`
/// outputs, then the bias.
pub(super) fn linear_with(
    x: &Tensor,
    w: &SketchWeights,
    bias: Option<&Tensor>,
    rows: impl FnOnce(&[f32], &[f32], usize) -> Vec<f32>,
) -> Tensor {
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
    let mut out = rows(&xs, &sums, kp);
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
pub(super) const O_TILE: usize = 16;
/// Input-row tile of the masked kernel.
const R_TILE: usize = 16;

/// `out[r][o − o0] = Σ_j a_{o,j} (2 P_{o,j}(x_r) − S_r)` for rows `r` of `xs`
/// (padded to `kp`) and outputs `o0..o0+count`, P by the masked kernel.
pub(super) fn rows_times_weights(
    xs: &[f32],
    sums: &[f32],
    kp: usize,
    w: &SketchWeights,
    o0: usize,
    count: usize,
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
    // y for one output from the m values of P. Written out here and in `dev.rs`, not
    // shared: a helper returning this closure changed the generated code.
    let combine = |o: usize, p: &[f32], s: f32| -> f32 {
        let a = &scales[o * m..(o + 1) * m];
        a.iter().zip(p).map(|(a, p)| a * (2.0 * p - s)).sum()
    };
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
    out
}

/// Signature of the masked inner kernel: `p[i]` = sum of `x` under the set bits of
/// row `i` of `bits` (rows of `x.len() / 32` words, back to back).
pub(super) type MaskedFn = fn(&[f32], &[u32], &mut [f32]);

/// The masked kernel for this CPU: the AVX2 build where available (8 lanes instead
/// of SSE2's 4), chosen once per layer call.
pub(super) fn masked_kernel() -> MaskedFn {
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
    let shifts = super::decode::sign_shifts();
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
