//! The AVX2 + FMA code kernels: each code byte looked up in two 16-byte tables
//! (`vpshufb`) holding the upper bytes of its f32 value; row dots at batch 1
//! (`row_dot_bytes`) and 2 to `POW2_BYTES_MAX_BATCH` (`rows_dots_bytes`), and row decodes
//! for the GEMM's panels (`decode_bytes`). `CodeLut` (`lut.rs`) calls them after checking
//! the CPU has AVX2 and FMA.

use super::CODE_PREFETCH_WORDS;

/// The byte tables and masks of `row_dot_bytes` and `decode_bytes`, as vectors.
struct ByteTables {
    high: std::arch::x86_64::__m256i,
    low: std::arch::x86_64::__m256i,
    code_mask: std::arch::x86_64::__m256i,
    top_bit: std::arch::x86_64::__m256i,
    low_nibble: std::arch::x86_64::__m256i,
    high_half: std::arch::x86_64::__m256i,
}

impl ByteTables {
    #[target_feature(enable = "avx2")]
    fn new<const B: i32>(high: &[u8; 16], low: &[u8; 16]) -> ByteTables {
        use std::arch::x86_64::*;
        // SAFETY: the tables are 16 bytes; broadcast to both 128-bit lanes for vpshufb.
        let (high, low) = unsafe {
            (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(high.as_ptr().cast())),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(low.as_ptr().cast())),
            )
        };
        ByteTables {
            high,
            low,
            code_mask: _mm256_set1_epi8(((1 << B) - 1) as i8),
            top_bit: _mm256_set1_epi8(i8::MIN),
            low_nibble: _mm256_set1_epi8(0x0f),
            high_half: _mm256_set1_epi32(0xffff_0000u32 as i32),
        }
    }
}

/// The f32 values of the next 32 codes of `v` (`B`-bit stored codes, one group: the
/// low `B` bits of each byte), in the lane order of `block_order`, and `v` moved on to
/// the next group: two `vpshufb`, two byte interleaves, a shift and a mask per pair of
/// vectors. `SIGN_BIT_4`: the codes are 5-bit, sign in bit 4, tables indexed by the
/// low 4 bits.
#[target_feature(enable = "avx2")]
#[inline]
fn decode_group<const B: i32, const SIGN_BIT_4: bool>(
    v: &mut std::arch::x86_64::__m256i,
    t: &ByteTables,
) -> [std::arch::x86_64::__m256; 4] {
    let [w0, w1] = lookup_words::<B, SIGN_BIT_4>(v, t);
    [0, 1, 2, 3].map(|q| word_values(if q < 2 { w0 } else { w1 }, q % 2 == 1, t))
}

/// Vector `odd` (0: the words' low halves moved up, 1: their high halves) of the f32
/// values in the 16-bit words `w` from `lookup_words`.
#[target_feature(enable = "avx2")]
#[inline]
fn word_values(
    w: std::arch::x86_64::__m256i,
    odd: bool,
    t: &ByteTables,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_castsi256_ps(if odd {
        _mm256_and_si256(w, t.high_half)
    } else {
        _mm256_slli_epi32::<16>(w)
    })
}

/// The upper 16 bits of the f32 values of the next 32 codes of `v` as two vectors of
/// 16-bit words (`decode_group` before its last shift or mask), and `v` moved on.
#[target_feature(enable = "avx2")]
#[inline]
fn lookup_words<const B: i32, const SIGN_BIT_4: bool>(
    v: &mut std::arch::x86_64::__m256i,
    t: &ByteTables,
) -> [std::arch::x86_64::__m256i; 2] {
    use std::arch::x86_64::*;
    let mut codes = _mm256_and_si256(*v, t.code_mask);
    *v = _mm256_srli_epi16::<B>(*v);
    let mut sign = _mm256_setzero_si256();
    if SIGN_BIT_4 {
        // 5-bit codes `s·16 | e`: look up `e`, move `s` to the byte's top bit (a 16-bit
        // shift by 3 keeps every byte's bit 4 -> 7 in its byte).
        sign = _mm256_and_si256(_mm256_slli_epi16::<3>(codes), t.top_bit);
        codes = _mm256_and_si256(codes, t.low_nibble);
    }
    let h = _mm256_or_si256(_mm256_shuffle_epi8(t.high, codes), sign);
    let l = _mm256_shuffle_epi8(t.low, codes);
    [_mm256_unpacklo_epi8(l, h), _mm256_unpackhi_epi8(l, h)]
}

/// `row_dot_bytes` for `R` code rows against the `N` input rows of `x_lanes`
/// (`x_stride` apart), at small batches: each input load feeds the `R` rows and each
/// decoded vector the `N` inputs. R = N = 2 keeps the 4 accumulators, 4 word vectors
/// and 2 code vectors in AVX2's 16 registers.
#[target_feature(enable = "avx2,fma")]
pub(super) fn rows_dots_bytes<
    const B: i32,
    const SIGN_BIT_4: bool,
    const R: usize,
    const N: usize,
>(
    rows: [&[u32]; R],
    x_lanes: &[f32],
    x_stride: usize,
    high: &[u8; 16],
    low: &[u8; 16],
) -> [[f32; N]; R] {
    use std::arch::x86_64::*;
    let groups = 8 / B as usize;
    let per_block = 32 * groups;
    let blocks = rows[0].len() / 8;
    assert!(rows.iter().all(|r| r.len() == 8 * blocks));
    assert!(N >= 1 && x_lanes.len() >= (N - 1) * x_stride + blocks * per_block);
    let t = ByteTables::new::<B>(high, low);
    // acc[i][r]: input i against row r.
    let mut acc = [[_mm256_setzero_ps(); R]; N];
    for blk in 0..blocks {
        // SAFETY: every row has 8 words at 8·blk (asserted); input `i` has `per_block`
        // floats at i·x_stride + blk·per_block (asserted), and every x load below reads
        // 8 of them at 32g + 8q ≤ per_block − 8.
        unsafe {
            let xs = x_lanes.as_ptr().add(blk * per_block);
            let mut v = [_mm256_setzero_si256(); R];
            for (v, row) in v.iter_mut().zip(rows) {
                let words = row.as_ptr().add(8 * blk);
                // A hint only: never faults, so running past the last row is harmless.
                _mm_prefetch::<_MM_HINT_T0>(words.wrapping_add(CODE_PREFETCH_WORDS).cast());
                *v = _mm256_loadu_si256(words.cast());
            }
            for g in 0..groups {
                // Plain loops, not `array::from_fn`: a closure does not inherit this
                // function's target features, so its intrinsics would not inline.
                let mut w = [[_mm256_setzero_si256(); 2]; R];
                for (w, v) in w.iter_mut().zip(v.iter_mut()) {
                    *w = lookup_words::<B, SIGN_BIT_4>(v, &t);
                }
                for q in 0..4 {
                    let mut f = [_mm256_setzero_ps(); R];
                    for (f, w) in f.iter_mut().zip(&w) {
                        *f = word_values(w[q / 2], q % 2 == 1, &t);
                    }
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xs.add(i * x_stride + 32 * g + 8 * q));
                        for (a, f) in acc.iter_mut().zip(&f) {
                            *a = _mm256_fmadd_ps(*f, xv, *a);
                        }
                    }
                }
            }
        }
    }
    let mut dots = [[0f32; N]; R];
    for (i, acc) in acc.iter().enumerate() {
        for (dots, a) in dots.iter_mut().zip(acc) {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` has 8 elements.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            dots[i] = lanes.iter().sum();
        }
    }
    dots
}

/// Sum over the whole blocks of one code row of `value(code) · x` (see `CodeLut`):
/// per 32 code bytes (`B`-bit stored codes), `8 / B` groups of 32 codes, each decoded
/// by `decode_group` and multiplied in with four FMAs.
#[target_feature(enable = "avx2,fma")]
pub(super) fn row_dot_bytes<const B: i32, const SIGN_BIT_4: bool>(
    row: &[u32],
    x_lanes: &[f32],
    high: &[u8; 16],
    low: &[u8; 16],
) -> f32 {
    use std::arch::x86_64::*;
    let groups = 8 / B as usize;
    let per_block = 32 * groups;
    let t = ByteTables::new::<B>(high, low);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (words, xs) in row.chunks_exact(8).zip(x_lanes.chunks_exact(per_block)) {
        // SAFETY: `words` has 8 u32 (32 bytes), `xs` has `per_block` f32 and every x
        // load below reads 8 of them at 32g + 8q ≤ per_block − 8.
        unsafe {
            // A hint only: never faults, so running past the last row is harmless.
            _mm_prefetch::<_MM_HINT_T0>(words.as_ptr().wrapping_add(CODE_PREFETCH_WORDS).cast());
            let mut v = _mm256_loadu_si256(words.as_ptr().cast());
            for g in 0..groups {
                let f = decode_group::<B, SIGN_BIT_4>(&mut v, &t);
                for (q, fq) in f.into_iter().enumerate() {
                    let xv = _mm256_loadu_ps(xs.as_ptr().add(32 * g + 8 * q));
                    acc[q] = _mm256_fmadd_ps(fq, xv, acc[q]);
                }
            }
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` has 8 elements.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// The values of the whole blocks of one code row into `out` (`per_block` floats per 8
/// words), in the lane order `row_dot_bytes` multiplies them in.
#[target_feature(enable = "avx2,fma")]
pub(super) fn decode_bytes<const B: i32, const SIGN_BIT_4: bool>(
    row: &[u32],
    high: &[u8; 16],
    low: &[u8; 16],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let groups = 8 / B as usize;
    let per_block = 32 * groups;
    assert_eq!(row.len() / 8 * per_block, out.len());
    let t = ByteTables::new::<B>(high, low);
    for (words, dst) in row.chunks_exact(8).zip(out.chunks_exact_mut(per_block)) {
        // SAFETY: `words` has 8 u32 (32 bytes), `dst` has `per_block` f32 and every
        // store below writes 8 of them at 32g + 8q ≤ per_block − 8.
        unsafe {
            let mut v = _mm256_loadu_si256(words.as_ptr().cast());
            for g in 0..groups {
                let f = decode_group::<B, SIGN_BIT_4>(&mut v, &t);
                for (q, fq) in f.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.as_mut_ptr().add(32 * g + 8 * q), fq);
                }
            }
        }
    }
}
