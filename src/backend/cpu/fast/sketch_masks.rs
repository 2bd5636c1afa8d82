//! Sketch (binary-weight) fc on AVX-512 at batch 2 to 16 (1 when asked for by name):
//! every 16 bits of a binary row are a lane mask.
//!
//! Weight `k` of output row `c` is `Σ_j a_{c,j}·(±1)`, `+` where bit `k` of `B_{c,j}`
//! is set. Per 16 weights and base, one masked subtract (`0 − a` in the lanes whose bit
//! is clear, `a` in the others) builds the 16 values from the broadcast scale, and the
//! bases are added in base order, as `decode_row` does; then one FMA per input. The
//! bit rows are read once per pass, never decoded to memory. A pass takes `R` rows (3
//! for m ≤ 2, 2 for m = 3, 4) against up to 4 inputs, so each input load feeds `R` rows
//! and each value vector 4 inputs. The accumulators and every row's scales live in
//! registers: at m = 2, 4 rows x 4 inputs spilled and ran fc6 at batch 8 in 6.9-8.2 ms,
//! against 5.2-5.6 ms for 3 x 4 and 5.6-6.0 ms for 2 x 4 (2 x 8 spilled too: 8.9-9.3 ms).
//!
//! Inputs are copied into rows of `32 · words_per_row` floats with zeros past K, so the
//! padding bits of the last word meet zeros, as in the masked kernel.

use super::avx512_detected;
use crate::graph::Tensor;
use crate::weights::SketchWeights;
use rayon::prelude::*;

/// Most bases per row the kernel is built for (its scales are registers).
const MAX_BASES: usize = 4;
/// Inputs per pass.
const PASS_INPUTS: usize = 4;
/// Output rows per parallel task (a multiple of every pass's row count, 2 and 3).
const ROW_TILE: usize = 24;
/// Floats past each padded input row (rows 32·W floats apart, W a multiple of 128,
/// would share L1 sets).
const X_PAD: usize = 16;

/// Whether this CPU (AVX-512F) and `w` (1 to 4 bases) run `sketch_linear_masks`.
pub(crate) fn supported(w: &SketchWeights) -> bool {
    (1..=MAX_BASES).contains(&w.bases()) && avx512_detected()
}

/// `y = x Wᵀ + b` for `x: [N, K]`, sketch weights `[O, K]`; returns `[N, O]`. Callers
/// check `supported(w)`.
pub(super) fn sketch_linear_masks(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    assert!(
        supported(w),
        "sketch_linear_masks: needs AVX-512F and 1-4 bases"
    );
    let (k, o, m) = (w.row_len(), w.rows(), w.bases());
    assert!(
        x.shape.len() == 2 && x.shape[1] == k,
        "input does not match the weights"
    );
    let n = x.shape[0];
    if n == 0 || o == 0 {
        return Tensor::zeros(vec![n, o]);
    }
    let x_stride = 32 * w.words_per_row() + X_PAD;
    let mut xs = vec![0f32; n * x_stride];
    for (dst, src) in xs
        .chunks_exact_mut(x_stride)
        .zip(x.data.chunks_exact(k.max(1)))
    {
        dst[..k].copy_from_slice(src);
    }
    let group = if m <= 2 { 3 } else { 2 };
    let tiles: Vec<Vec<f32>> = (0..o)
        .step_by(ROW_TILE)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r0| {
            // [row][input] for the tile's rows.
            let mut out = vec![0f32; ROW_TILE.min(o - r0) * n];
            for (g, out) in out.chunks_mut(group * n).enumerate() {
                let c0 = r0 + g * group;
                for b0 in (0..n).step_by(PASS_INPUTS) {
                    let inputs = PASS_INPUTS.min(n - b0);
                    let xs = &xs[b0 * x_stride..];
                    // SAFETY: `supported(w)` was asserted (AVX-512F present).
                    let dots = unsafe { pass(w, c0, xs, x_stride, inputs) };
                    for (j, row) in out.chunks_exact_mut(n).enumerate() {
                        row[b0..b0 + inputs].copy_from_slice(&dots[j][..inputs]);
                    }
                }
            }
            out
        })
        .collect();
    super::layout::transpose_blocks(&tiles, ROW_TILE, n, o, bias)
}

/// One pass: rows `c0 ..` (3 for m ≤ 2, else 2; rows past the layer repeat its last row
/// and their sums are dropped by the caller) against `inputs` (1 to 4) input rows of
/// `xs`; `[row][input]`.
///
/// # Safety
/// AVX-512F must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pass(
    w: &SketchWeights,
    c0: usize,
    xs: &[f32],
    x_stride: usize,
    inputs: usize,
) -> [[f32; PASS_INPUTS]; 4] {
    let last = w.rows() - 1;
    let mut dots = [[0f32; PASS_INPUTS]; 4];
    macro_rules! run {
        ($m:literal, $r:literal, $n:literal) => {{
            let rows: [usize; $r] = std::array::from_fn(|j| (c0 + j).min(last));
            let d = rows_dots::<$m, $r, $n>(w, rows, xs, x_stride);
            for (dst, src) in dots.iter_mut().zip(&d) {
                dst[..$n].copy_from_slice(src);
            }
        }};
    }
    macro_rules! by_inputs {
        ($m:literal, $r:literal) => {
            match inputs {
                1 => run!($m, $r, 1),
                2 => run!($m, $r, 2),
                3 => run!($m, $r, 3),
                _ => run!($m, $r, 4),
            }
        };
    }
    match w.bases() {
        1 => by_inputs!(1, 3),
        2 => by_inputs!(2, 3),
        3 => by_inputs!(3, 2),
        _ => by_inputs!(4, 2),
    }
    dots
}

/// The off-x86-64 stand-in of `pass` (never called: `supported` is false there).
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pass(
    _: &SketchWeights,
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
) -> [[f32; PASS_INPUTS]; 4] {
    unreachable!("avx512_detected() is false off x86-64")
}

/// `rows[r] · x_i` for `R` rows of `M` bases and the `N` input rows of `xs`
/// (`x_stride` apart, each `32 · words_per_row` long): per 16 weights, `M` masked
/// subtracts and `M − 1` adds per row, one FMA per row and input.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
fn rows_dots<const M: usize, const R: usize, const N: usize>(
    w: &SketchWeights,
    rows: [usize; R],
    xs: &[f32],
    x_stride: usize,
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let words = w.words_per_row();
    assert!(w.bases() == M && xs.len() >= (N - 1) * x_stride + 32 * words);
    // The R·M bit rows, each `words` long (rows c·M + j of the bit planes).
    let planes = w.bits();
    let mut starts = [[0usize; M]; R];
    for (starts, &c) in starts.iter_mut().zip(&rows) {
        for (j, start) in starts.iter_mut().enumerate() {
            *start = (c * M + j) * words;
        }
    }
    assert!(rows.iter().all(|&c| (c + 1) * M * words <= planes.len()));
    let mut scale = [[_mm512_setzero_ps(); M]; R];
    for (scale, &c) in scale.iter_mut().zip(&rows) {
        for (a, &s) in scale.iter_mut().zip(&w.scales()[c * M..(c + 1) * M]) {
            *a = _mm512_set1_ps(s);
        }
    }
    let zero = _mm512_setzero_ps();
    // acc[i][r]: input i against row r.
    let mut acc = [[zero; R]; N];
    for wi in 0..words {
        let mut word = [[0u32; M]; R];
        for (word, starts) in word.iter_mut().zip(&starts) {
            for (bits, &start) in word.iter_mut().zip(starts) {
                *bits = planes[start + wi];
            }
        }
        for h in 0..2 {
            // Lanes whose bit is clear take −a: `0 − a` under the mask of clear bits.
            // Index loops, not closures or iterator adapters: a closure does not inherit
            // this function's target features, and `skip` did not inline (a call per
            // base, with `vzeroupper`).
            let mut values = [zero; R];
            for r in 0..R {
                let (a, bits) = (&scale[r], &word[r]);
                let mut value = _mm512_mask_sub_ps(a[0], !(bits[0] >> (16 * h)) as u16, zero, a[0]);
                for j in 1..M {
                    let b = _mm512_mask_sub_ps(a[j], !(bits[j] >> (16 * h)) as u16, zero, a[j]);
                    value = _mm512_add_ps(value, b);
                }
                values[r] = value;
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: input i has 32·words floats at i·x_stride (asserted); this
                // reads 16 at 32·wi + 16·h ≤ 32·words − 16.
                let xv =
                    unsafe { _mm512_loadu_ps(xs.as_ptr().add(i * x_stride + 32 * wi + 16 * h)) };
                for (a, v) in acc.iter_mut().zip(&values) {
                    *a = _mm512_fmadd_ps(*v, xv, *a);
                }
            }
        }
    }
    let mut dots = [[0f32; N]; R];
    for (i, acc) in acc.iter().enumerate() {
        for (dots, a) in dots.iter_mut().zip(acc) {
            dots[i] = _mm512_reduce_add_ps(*a);
        }
    }
    dots
}
