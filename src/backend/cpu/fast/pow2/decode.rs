//! Decoding pow2 code rows to f32 (`Decoder`): arithmetically where every value is a
//! normal f32, else through the layer's table; with AVX2, an 8-lane arithmetic decode
//! and (with FMA) `row_dot_perm`, a batch-1 dot straight from the codes by `vpermps`.
//! The fc runs it where no code kernel of `lut.rs` applies, and the conv of `dev.rs`
//! decodes its rows with it.

use crate::weights::Pow2Weights;

/// Decodes row `c` of `w` into `out` (K values) through `table`.
pub fn decode_row(w: &Pow2Weights, table: &[f32], c: usize, out: &mut [f32]) {
    let k = w.row_len();
    let cpw = w.codes_per_word();
    let b = w.bits() as usize;
    let mask = (1u32 << b) - 1;
    for (chunk, &word) in out[..k].chunks_mut(cpw).zip(w.code_row(c)) {
        let mut word = word;
        for v in chunk {
            *v = table[(word & mask) as usize];
            word >>= b;
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Words decoded per block by `Decoder::row_dot` (up to 512 values on the stack).
const DOT_WORDS: usize = 32;

/// Decodes code rows, arithmetically where every value is a normal f32 (a code is
/// `s·2^(b−1) | e` and its value `±2^(n1+1−e)` has the bits `s << 31 | (128 + n1 − e)
/// << 23`: shifts, masks and a select per code, which vectorise), else through the
/// table (subnormal or zero magnitudes, a layer with tiny weights).
pub(super) struct Decoder<'a> {
    bits: u32,
    /// `128 + n1`: the biased exponent of `2^(n1 + 1 − e)` is `base − e`.
    base: u32,
    arithmetic: bool,
    table: &'a [f32],
    /// The CPU has AVX2 (8-lane decode and dot), detected once per layer call.
    avx2: bool,
    /// The CPU has AVX2 and FMA, and the layer has 2 to 5 bits: `row_dot_perm`.
    fma: bool,
}

impl<'a> Decoder<'a> {
    pub(super) fn new(w: &Pow2Weights, table: &'a [f32]) -> Decoder<'a> {
        let bits = w.bits();
        // Smallest exponent n2 = n1 + 1 − 2^(b−2) must be ≥ −126 (normal), n1 ≤ 127.
        let arithmetic = (2..=5).contains(&bits) && w.n2() >= -126 && w.n1() <= 127;
        Decoder {
            bits,
            base: (128 + w.n1()).max(0) as u32,
            arithmetic,
            table,
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            avx2: false,
            #[cfg(target_arch = "x86_64")]
            fma: (2..=5).contains(&bits)
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            fma: false,
        }
    }

    /// Decodes `words` (a whole row or a block of it) into `out`, `codes_per_word`
    /// values per word; `out` may be shorter than the words hold (the row's tail).
    #[inline(always)]
    fn decode_words(&self, words: &[u32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.arithmetic && self.avx2 {
            // SAFETY: AVX2 support was detected in `Decoder::new`.
            let done = unsafe { decode_arith_avx2(words, self.bits, self.base, out) };
            let cpw = (32 / self.bits) as usize;
            let start = (done * cpw).min(out.len());
            let (words, out) = (&words[done..], &mut out[start..]);
            match self.bits {
                2 => decode_arith::<2>(words, self.base, out),
                3 => decode_arith::<3>(words, self.base, out),
                4 => decode_arith::<4>(words, self.base, out),
                _ => decode_arith::<5>(words, self.base, out),
            }
            return;
        }
        if self.arithmetic {
            match self.bits {
                2 => decode_arith::<2>(words, self.base, out),
                3 => decode_arith::<3>(words, self.base, out),
                4 => decode_arith::<4>(words, self.base, out),
                _ => decode_arith::<5>(words, self.base, out),
            }
        } else {
            let b = self.bits as usize;
            let mask = (1u32 << b) - 1;
            for (chunk, &word) in out.chunks_mut(32 / b).zip(words) {
                let mut word = word;
                for v in chunk {
                    *v = self.table[(word & mask) as usize];
                    word >>= b;
                }
            }
        }
    }

    /// Decodes one full row into `out[..K]` (`out` may be longer: values past K are
    /// scratch).
    pub(super) fn decode(&self, row: &[u32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected in `Decoder::new`.
            return unsafe { self.decode_avx2(row, out) };
        }
        self.decode_words(row, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn decode_avx2(&self, row: &[u32], out: &mut [f32]) {
        self.decode_words(row, out);
    }

    /// `row · x` for one code row and `x` of K values, decoding block by block.
    pub(super) fn row_dot(&self, row: &[u32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: AVX2 and FMA support were detected in `Decoder::new`.
            return unsafe {
                match self.bits {
                    2 => row_dot_perm::<2>(row, x, self.table),
                    3 => row_dot_perm::<3>(row, x, self.table),
                    4 => row_dot_perm::<4>(row, x, self.table),
                    _ => row_dot_perm::<5>(row, x, self.table),
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 support was detected in `Decoder::new`.
            return unsafe { self.row_dot_avx2(row, x) };
        }
        self.row_dot_impl(row, x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn row_dot_avx2(&self, row: &[u32], x: &[f32]) -> f32 {
        self.row_dot_impl(row, x)
    }

    #[inline(always)]
    fn row_dot_impl(&self, row: &[u32], x: &[f32]) -> f32 {
        let cpw = (32 / self.bits) as usize;
        let block = DOT_WORDS * cpw;
        // 16 values of slack: the AVX2 decoder stores 8 or 16 lanes per word.
        let mut buf = [0f32; DOT_WORDS * 16 + 16];
        let mut acc = 0f32;
        for (words, xs) in row.chunks(DOT_WORDS).zip(x.chunks(block)) {
            self.decode_words(words, &mut buf);
            acc += dot(xs, &buf[..xs.len()]);
        }
        acc
    }
}

/// Arithmetic decode of `B`-bit codes (see `Decoder`); `out` holds up to
/// `words.len() · (32 / B)` values.
#[inline(always)]
fn decode_arith<const B: usize>(words: &[u32], base: u32, out: &mut [f32]) {
    let cpw = 32 / B;
    let mask = (1u32 << B) - 1;
    let emask = (1u32 << (B - 1)) - 1;
    let decode = |c: u32| -> f32 {
        let e = c & emask;
        let bits = ((c >> (B - 1)) << 31) | (base.wrapping_sub(e) << 23);
        if e == 0 {
            0.0
        } else {
            f32::from_bits(bits)
        }
    };
    let full = out.len() / cpw;
    let (head, tail) = out.split_at_mut(full * cpw);
    for (o, &w) in head.chunks_exact_mut(cpw).zip(words) {
        for (t, v) in o.iter_mut().enumerate() {
            *v = decode((w >> (B * t)) & mask);
        }
    }
    if let Some(&w) = words.get(full) {
        for (t, v) in tail.iter_mut().enumerate() {
            *v = decode((w >> (B * t)) & mask);
        }
    }
}

/// AVX2 arithmetic decode (see `Decoder`): one word's codes become 8 (b = 4, 5) or
/// 16 (b = 2, 3) lanes by variable shifts, stored at the word's place in `out`; the
/// lanes past the word's codes spill into the next word's place and are overwritten
/// by it. Decodes the words whose stores fit in `out` and returns how many it did
/// (the rest go through the portable decoder).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn decode_arith_avx2(words: &[u32], bits: u32, base: u32, out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let b = bits as i32;
    let cpw = (32 / bits) as usize;
    let vecs = cpw.div_ceil(8);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let sh0 = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(b));
    let sh1 = _mm256_add_epi32(sh0, _mm256_set1_epi32(8 * b));
    let mask = _mm256_set1_epi32((1 << b) - 1);
    let emask = _mm256_set1_epi32((1 << (b - 1)) - 1);
    let basev = _mm256_set1_epi32(base as i32);
    let sign_bit = _mm256_set1_epi32(i32::MIN);
    let to_sign = _mm_cvtsi32_si128(32 - b);
    let zero = _mm256_setzero_si256();
    // Words whose 8·vecs stores stay inside `out`.
    let fit = if out.len() >= 8 * vecs {
        ((out.len() - 8 * vecs) / cpw + 1).min(words.len())
    } else {
        0
    };
    let decode = |w: __m256i, sh: __m256i| -> __m256 {
        let c = _mm256_and_si256(_mm256_srlv_epi32(w, sh), mask);
        let e = _mm256_and_si256(c, emask);
        let sign = _mm256_and_si256(_mm256_sll_epi32(c, to_sign), sign_bit);
        let exp = _mm256_slli_epi32::<23>(_mm256_sub_epi32(basev, e));
        let v = _mm256_or_si256(sign, exp);
        _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_cmpeq_epi32(e, zero), v))
    };
    let ptr = out.as_mut_ptr();
    for (i, &w) in words[..fit].iter().enumerate() {
        let wv = _mm256_set1_epi32(w as i32);
        // SAFETY: i < fit, so i·cpw + 8·vecs ≤ out.len() (the definition of `fit`).
        unsafe {
            _mm256_storeu_ps(ptr.add(i * cpw), decode(wv, sh0));
            if vecs > 1 {
                _mm256_storeu_ps(ptr.add(i * cpw + 8), decode(wv, sh1));
            }
        }
    }
    fit
}

/// Batch-1 row dot product straight from the codes (AVX2 + FMA): per code word, the
/// codes go to 8 or 16 lanes by variable shifts and are decoded by an in-register
/// table lookup (`vpermps` over the layer's `2^B`-entry table, blended on the code's
/// upper bits for B = 4, 5), then multiplied into the input with FMA. Four accumulators
/// hide the FMA latency. Words whose inputs run past K are done in scalar.
/// `table` must have `2^B` entries (`decode_table`); `x` has K values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_dot_perm<const B: u32>(row: &[u32], x: &[f32], table: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let cpw = (32 / B) as usize;
    let vecs = cpw.div_ceil(8);
    let k = x.len();
    let mut t = [0f32; 32];
    t[..table.len().min(32)].copy_from_slice(&table[..table.len().min(32)]);
    // SAFETY: (all loads below) `t` has 32 elements; x loads are bounds-checked slices.
    let tv = unsafe {
        [
            _mm256_loadu_ps(t.as_ptr()),
            _mm256_loadu_ps(t.as_ptr().add(8)),
            _mm256_loadu_ps(t.as_ptr().add(16)),
            _mm256_loadu_ps(t.as_ptr().add(24)),
        ]
    };
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let sh = [
        _mm256_mullo_epi32(lanes, _mm256_set1_epi32(B as i32)),
        _mm256_mullo_epi32(
            _mm256_add_epi32(lanes, _mm256_set1_epi32(8)),
            _mm256_set1_epi32(B as i32),
        ),
    ];
    // Lanes past the word's codes read the next word's inputs: masked to 0.
    let keep = [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cpw as i32), lanes),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cpw as i32 - 8), lanes),
    ];
    let lookup = |c: __m256i| -> __m256 {
        match B {
            2 => _mm256_permutevar8x32_ps(tv[0], _mm256_and_si256(c, _mm256_set1_epi32(3))),
            3 => _mm256_permutevar8x32_ps(tv[0], c),
            4 => _mm256_blendv_ps(
                _mm256_permutevar8x32_ps(tv[0], c),
                _mm256_permutevar8x32_ps(tv[1], c),
                _mm256_castsi256_ps(_mm256_slli_epi32::<28>(c)),
            ),
            _ => {
                let b3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(c));
                let lo = _mm256_blendv_ps(
                    _mm256_permutevar8x32_ps(tv[0], c),
                    _mm256_permutevar8x32_ps(tv[1], c),
                    b3,
                );
                let hi = _mm256_blendv_ps(
                    _mm256_permutevar8x32_ps(tv[2], c),
                    _mm256_permutevar8x32_ps(tv[3], c),
                    b3,
                );
                _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32::<27>(c)))
            }
        }
    };
    // Words whose 8·vecs input lanes stay inside x.
    let full = if k >= 8 * vecs {
        ((k - 8 * vecs) / cpw + 1).min(row.len())
    } else {
        0
    };
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, &w) in row[..full].iter().enumerate() {
        let wv = _mm256_set1_epi32(w as i32);
        let xs = &x[i * cpw..i * cpw + 8 * vecs];
        for v in 0..vecs {
            let val = lookup(_mm256_srlv_epi32(wv, sh[v]));
            // SAFETY: `xs` has 8·vecs elements.
            let xv = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * v)) };
            let xv = if cpw.is_multiple_of(8) {
                xv
            } else {
                _mm256_and_ps(xv, _mm256_castsi256_ps(keep[v]))
            };
            acc[(i + v) % 4] = _mm256_fmadd_ps(val, xv, acc[(i + v) % 4]);
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes_out = [0f32; 8];
    // SAFETY: `lanes_out` has 8 elements.
    unsafe { _mm256_storeu_ps(lanes_out.as_mut_ptr(), sum) };
    let mut s = lanes_out.iter().sum::<f32>();
    let mask = (1u32 << B) - 1;
    for (i, &w) in row.iter().enumerate().skip(full) {
        for (j, xv) in x[(i * cpw).min(k)..((i + 1) * cpw).min(k)]
            .iter()
            .enumerate()
        {
            s += xv * table[((w >> (B as usize * j)) & mask) as usize];
        }
    }
    s
}
