//! The AVX-512F code kernel (`rows_dots_perm32`): 16 codes at a time looked up in a
//! 32-entry f32 table by `vpermt2ps`. `CodeLut` (`lut.rs`) calls it after checking the
//! CPU has AVX-512F.

use super::CODE_PREFETCH_WORDS;

/// Sums over the whole blocks of `R` code rows of `value(code) · x` for the `N` input
/// rows of `x_lanes` (`x_stride` apart; see `CodeLut`), by AVX-512: per 64 code bytes
/// (16 words of `S`-bit stored codes), `32 / S` vectors of 16 codes, code `g` of every
/// word in vector `g`. `vpermt2ps` looks up 16 values at a time in the 32-entry `table`
/// by the low 5 bits of each word, and the word is moved on by `S` bits: one permute and
/// one shift per 16 weights and row, and one FMA per input and row, where the AVX2 kernel
/// spends about three ALU operations per 8 weights. Each input load feeds the `R` rows.
/// fc6 4-bit at batch 1 ran 1.10-1.22x faster than `row_dot_bytes` (12 interleaved runs
/// on a 2-core Xeon, Emerald Rapids; docs/benchmarks-archive.md), near the code stream's memory
/// bound.
#[target_feature(enable = "avx512f")]
pub(super) fn rows_dots_perm32<const S: u32, const R: usize, const N: usize>(
    rows: [&[u32]; R],
    x_lanes: &[f32],
    x_stride: usize,
    table: &[f32; 32],
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let per_word = 32 / S as usize;
    let per_block = 16 * per_word;
    let blocks = rows[0].len() / 16;
    assert!(rows.iter().all(|r| r.len() == 16 * blocks));
    assert!(N >= 1 && x_lanes.len() >= (N - 1) * x_stride + blocks * per_block);
    // Independent FMA chains per (row, input): 4 for one pair, 2 for two, else 1 (the
    // pairs' chains interleave).
    let chains = match R * N {
        1 => 4,
        2 => 2,
        _ => 1,
    };
    // SAFETY: `table` has 32 floats, read as two vectors of 16.
    let (t0, t1) = unsafe {
        (
            _mm512_loadu_ps(table.as_ptr()),
            _mm512_loadu_ps(table.as_ptr().add(16)),
        )
    };
    // acc[i][r]: input i against row r.
    let mut acc = [[[_mm512_setzero_ps(); 4]; R]; N];
    for blk in 0..blocks {
        // SAFETY: every row has 16 words at 16·blk (asserted); input `i` has `per_block`
        // floats at i·x_stride + blk·per_block (asserted), and every x load below reads
        // 16 of them at 16g ≤ per_block − 16.
        unsafe {
            let xs = x_lanes.as_ptr().add(blk * per_block);
            let mut v = [_mm512_setzero_si512(); R];
            for (v, row) in v.iter_mut().zip(rows) {
                let words = row.as_ptr().add(16 * blk);
                // A hint only: never faults, so running past the last row is harmless.
                _mm_prefetch::<_MM_HINT_T0>(words.wrapping_add(CODE_PREFETCH_WORDS).cast());
                *v = _mm512_loadu_si512(words.cast());
            }
            for g in 0..per_word {
                // A plain loop, not `array::from_fn`: a closure does not inherit this
                // function's target features, so the permute would not inline.
                let mut values = [_mm512_setzero_ps(); R];
                for (value, v) in values.iter_mut().zip(&v) {
                    *value = _mm512_permutex2var_ps(t0, *v, t1);
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(xs.add(i * x_stride + 16 * g));
                    for (a, value) in acc.iter_mut().zip(&values) {
                        a[g % chains] = _mm512_fmadd_ps(*value, xv, a[g % chains]);
                    }
                }
                for v in &mut v {
                    *v = _mm512_srli_epi32::<S>(*v);
                }
            }
        }
    }
    let mut dots = [[0f32; N]; R];
    for (i, acc) in acc.iter().enumerate() {
        for (dots, a) in dots.iter_mut().zip(acc) {
            let sum = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            dots[i] = _mm512_reduce_add_ps(sum);
        }
    }
    dots
}
