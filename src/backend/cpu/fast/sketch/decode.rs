//! Sketch rows decoded to f32 (`Σ_j a_j (2 B_j − 1)`) with AVX2, for the blocked GEMV
//! (`decode_row`) and the GEMM's panels (`decode_span`); `sign_shifts` is shared with the
//! masked kernel's AVX2 build.

use super::decoded_rows_supported;
use crate::weights::SketchWeights;

/// Row `c` of the sketch as f32, `Σ_j a_j (2 B_j − 1)`, into `row` (32 per bit word;
/// entries past K get the padding bits' values and are not read).
pub(super) fn decode_row(w: &SketchWeights, c: usize, row: &mut [f32]) {
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
pub(super) fn decode_span(
    w: &SketchWeights,
    c: usize,
    span: std::ops::Range<usize>,
    out: &mut [f32],
) {
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
pub(super) fn sign_shifts() -> [std::arch::x86_64::__m256i; 4] {
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
