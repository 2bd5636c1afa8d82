//! Power-of-two (INQ) fc and conv on the CPU, reading the b-bit codes directly.
//!
//! Decoding is fused into the weight load: each code word is split into its
//! `floor(32 / b)` codes and every code goes through the layer's `2^b`-entry table
//! (`Pow2Weights::table`, at most 32 f32 values: 0 and `±2^n`), so a weight row costs
//! `b/32` of the dense row's memory traffic. The product `x · (±2^n)` is then one
//! multiply, which is exact (a power of two only moves the exponent) and has exactly
//! the IEEE semantics of `ldexp` including underflow to subnormals/zero and overflow
//! to infinity, so it needs no special cases for zero, sign or tiny exponents the way
//! an integer add on the exponent field of `x` would. Results differ from the dense
//! reference only by summation order.
//!
//! - fc (`pow2_linear`): output rows in parallel tiles, looked up in registers
//!   (`CodeLut`); only codes are read from memory. b = 2 and 4 read the layer's codes;
//!   3- and 5-bit codes straddle bytes and are re-laid out once per layer as nibbles or
//!   bytes (kept with the weights: 4/3 and 8/5 of the codes' size).
//!   - Batch 1-64 on AVX-512F (`rows_dots_perm32`): 64 bytes of codes per load; code
//!     `g` of each of the 16 words is looked up in a 32-entry f32 table by `vpermt2ps`
//!     and multiplied in by one FMA per input, the words shifted on by b bits. At batch
//!     > 1, 4 rows against passes of up to 4 inputs, so each input load feeds 4 rows.
//!   - Batch 1 on AVX2 + FMA (`row_dot_bytes`): 32 bytes of codes (32 to 128 weights)
//!     are split into code bytes by shift and mask, each code byte is looked up in two
//!     16-byte tables (`vpshufb`) that hold the upper two bytes of its f32 value (a
//!     power of two has a zero low half), the two bytes are interleaved into 16-bit
//!     words and each word becomes an f32 by a shift or a mask.
//!   - Either way the input is permuted once per call into the kernel's lane order, so
//!     a row needs no shuffles past the lookup.
//!   - Batch 2-10 on AVX2 without AVX-512 (`rows_dots_bytes`): the same lookups, 2 rows
//!     against passes of up to 2 inputs.
//!   - Larger batches (past 10 on AVX2, past 64 on AVX-512): rows are decoded through
//!     the AVX2 byte tables, per K block of 256, into the panels of the register-blocked
//!     GEMM (`gemm::fc_decoded`; in that lane order, against inputs permuted the same
//!     way). Each weight is decoded once per call, and the GEMM re-reads the panel from
//!     cache for every 16 inputs.
//!   - Without AVX2, or (AVX2 only) with subnormal values, rows go through `Decoder`
//!     (arithmetic decode, or `row_dot_perm`'s `vpermps` lookup at batch 1).
//! - conv (`pow2_conv`): per (image, group) an im2col matrix `[K][OH·OW]`; each output
//!   channel's row is decoded and its nonzero weights are accumulated as
//!   `y += w_k · col_k` (zero codes, common after INQ, are skipped). The CPU executor
//!   (`fast::run_node`) does not use it: it runs pow2 convs through the dense GEMM conv on
//!   weights decoded once per model (`fast::Prepared`), which was faster on every ResNet-18
//!   shape measured (benches/kernels.rs, docs/benchmarks-archive.md).
//!
//! Preconditions (shapes agreeing with the weights, `Weights::Pow2` in the conv) are the
//! planner's invariants, checked by shape inference; a violation panics naming it.

use super::gemm::{self, InputPanels};
use super::FcKernel;
use crate::backend::cpu::select::{self, Pow2Fc, POW2_BYTES_MAX_BATCH};
use crate::graph::{Conv2d, Tensor};
use crate::weights::{Pow2Weights, Weights};
use rayon::prelude::*;
use std::sync::Arc;

/// Output rows per fc task.
const O_TILE: usize = 8;

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

/// `y = x Wᵀ + b` for `x: [N, K]` and pow2 weights `[O, K]`; returns `[N, O]`. Runs
/// `pow2_linear_with` and the `Auto` kernel.
pub fn pow2_linear(x: &Tensor, w: &Pow2Weights, bias: Option<&Tensor>) -> Tensor {
    pow2_linear_with(x, w, bias, FcKernel::Auto)
}

/// `pow2_linear` with the kernel chosen (for tests and benches that compare them); a
/// kernel this CPU lacks falls back to the arithmetic decoder. The code kernels stream
/// each code row once per pass and look its codes up in registers, so only the `b/32`
/// code bytes come from memory. Runs `pow2_linear_as` with `select::pow2_fc`'s variant.
pub fn pow2_linear_with(
    x: &Tensor,
    w: &Pow2Weights,
    bias: Option<&Tensor>,
    kernel: FcKernel,
) -> Tensor {
    let n = x.shape.first().copied().unwrap_or(0);
    pow2_linear_as(x, w, bias, select::pow2_fc(w, n, kernel))
}

/// `pow2_linear` on the kernel `choice` (`select::pow2_fc` decides it; `BytesDots` runs
/// up to `POW2_BYTES_MAX_BATCH`). A code kernel that does not apply to `w` on this CPU
/// (`code_kernel_applies`) runs the arithmetic decoder instead.
pub fn pow2_linear_as(
    x: &Tensor,
    w: &Pow2Weights,
    bias: Option<&Tensor>,
    choice: Pow2Fc,
) -> Tensor {
    let k = w.row_len();
    assert!(
        x.shape.len() == 2 && x.shape[1] == k,
        "pow2_linear: input shape {:?} does not match weights {:?}",
        x.shape,
        w.shape()
    );
    let (n, o) = (x.shape[0], w.rows());
    if let Some(b) = bias {
        assert_eq!(b.data.len(), o, "bias length must equal the output rows");
    }
    if n == 0 || o == 0 || k == 0 {
        let zeros = [vec![0f32; o * n]];
        return super::layout::transpose_blocks(&zeros, o, n, o, bias);
    }
    let table = w.table();
    let decoder = Decoder::new(w, &table);
    // The code kernels (`CodeLut`) where chosen: AVX-512 on the codes, AVX2 on the codes
    // and on rows decoded into the GEMM's panels.
    let kind = match choice {
        Pow2Fc::Perm32 => Some(LutKind::Perm32),
        Pow2Fc::BytesDots | Pow2Fc::BytesGemm { .. } => Some(LutKind::Bytes),
        Pow2Fc::Decode => None,
    };
    let bytes = kind.and_then(|kind| CodeLut::new(w, &table, &x.data, kind));
    if let (Pow2Fc::BytesGemm { avx512 }, Some(lut)) = (choice, &bytes) {
        // The byte tables need AVX2 and FMA, as the GEMM does; the inputs are in the
        // decoded rows' lane order.
        let panels = InputPanels::new(&lut.x_lanes, n, k, lut.x_stride, avx512);
        return gemm::fc_decoded(&panels, o, bias, |c, k0, kc, dst| {
            lut.decode_span(w, c, k0..k0 + kc, &table, dst)
        });
    }
    // Tiles of output rows, each `[row][input]`.
    let tiles: Vec<Vec<f32>> = (0..o.div_ceil(O_TILE))
        .into_par_iter()
        .map(|t| {
            let rows = t * O_TILE..((t + 1) * O_TILE).min(o);
            if let Some(lut) = &bytes {
                return lut.tile_dots(w, rows, &x.data, &table);
            }
            if n == 1 {
                return rows
                    .map(|c| decoder.row_dot(w.code_row(c), &x.data[..k]))
                    .collect();
            }
            // Without the code kernels: rows decoded by `Decoder`, then the GEMV.
            super::dense::decoded_rows_dots(rows, k + 16, &x.data, n, k, |c, wrow| {
                decoder.decode(w.code_row(c), wrow)
            })
        })
        .collect();
    super::layout::transpose_blocks(&tiles, O_TILE, n, o, bias)
}

/// Words decoded per block by `Decoder::row_dot` (up to 512 values on the stack).
const DOT_WORDS: usize = 32;

/// Decodes code rows, arithmetically where every value is a normal f32 (a code is
/// `s·2^(b−1) | e` and its value `±2^(n1+1−e)` has the bits `s << 31 | (128 + n1 − e)
/// << 23`: shifts, masks and a select per code, which vectorise), else through the
/// table (subnormal or zero magnitudes, a layer with tiny weights).
struct Decoder<'a> {
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
    fn new(w: &Pow2Weights, table: &'a [f32]) -> Decoder<'a> {
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
    fn decode(&self, row: &[u32], out: &mut [f32]) {
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
    fn row_dot(&self, row: &[u32], x: &[f32]) -> f32 {
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

/// Power-of-two convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a
/// `Weights::Pow2` of logical shape `[Cout, Cin/groups, kh, kw]`; returns
/// `[N, Cout, OH, OW]`. Same semantics as `reference::conv2d` (stride, padding,
/// dilation, groups).
pub fn pow2_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    let w = match &conv.weight {
        Weights::Pow2(p) => p,
        other => panic!(
            "pow2_conv needs pow2 weights, got {} (the planner picks the kernel by encoding)",
            other.encoding()
        ),
    };
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g) = (w.rows(), w.shape()[1]);
    let [kh, kw] = conv.kernel;
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let groups = conv.groups;
    assert!(
        cin == cin_g * groups && cout % groups == 0,
        "pow2_conv: input channels {cin} do not match weights {:?} with {groups} groups",
        w.shape()
    );
    let cout_g = cout / groups;
    let k = cin_g * kh * kw;
    let p = oh * ow;
    let table = w.table();
    let decoder = Decoder::new(w, &table);
    let mut out = vec![0f32; n * cout * p];
    if p == 0 || cout == 0 {
        return Tensor {
            shape: vec![n, cout, oh, ow],
            data: out,
        };
    }
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (pt, pl) = (conv.pads[0], conv.pads[1]);
    out.par_chunks_mut(cout_g * p)
        .enumerate()
        .for_each(|(ng, block)| {
            let (img, g) = (ng / groups, ng % groups);
            // im2col: cols[k][p], zero where the window meets padding.
            let mut cols = vec![0f32; k * p];
            for ci in 0..cin_g {
                let plane = &x.data[((img * cin) + g * cin_g + ci) * h * wd..][..h * wd];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let row = &mut cols[((ci * kh + ky) * kw + kx) * p..][..p];
                        for oy in 0..oh {
                            let iy = (oy * sh + ky * dh) as isize - pt as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let src = &plane[iy as usize * wd..][..wd];
                            for ox in 0..ow {
                                let ix = (ox * sw + kx * dw) as isize - pl as isize;
                                if ix >= 0 && ix < wd as isize {
                                    row[oy * ow + ox] = src[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
            let cols = &cols;
            let decoder = &decoder;
            block.par_chunks_mut(p).enumerate().for_each_init(
                || vec![0f32; k + 16],
                |wrow, (oc, y)| {
                    let c = g * cout_g + oc;
                    decoder.decode(w.code_row(c), wrow);
                    let b = conv.bias.as_ref().map_or(0.0, |b| b.data[c]);
                    y.iter_mut().for_each(|v| *v = b);
                    for (kk, &wk) in wrow[..k].iter().enumerate() {
                        if wk == 0.0 {
                            continue;
                        }
                        let col = &cols[kk * p..(kk + 1) * p];
                        for (v, &xv) in y.iter_mut().zip(col) {
                            *v += wk * xv;
                        }
                    }
                },
            );
        });
    Tensor {
        shape: vec![n, cout, oh, ow],
        data: out,
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

/// Zeros after each input row in `CodeLut::x_lanes`. Unpadded, fc6's rows (9216 floats,
/// 9 x 4 KiB) put the same inputs of every row in the same L1 sets; padded, pow2 fc6 at
/// batch 8 ran 2.6-6.4% faster (4 of 4 interleaved runs).
const X_PAD: usize = 16;

/// How `CodeLut` looks codes up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LutKind {
    /// Two 16-byte tables of the values' upper bytes, `vpshufb` (AVX2): row dots at
    /// batch 1-8 (`row_dot_bytes`, `rows_dots_bytes`) and row decodes at larger batches
    /// (`decode_bytes`); blocks of 32 code bytes.
    Bytes,
    /// One 32-entry f32 table, `vpermt2ps` (AVX-512F): row dots at batch 1 to 64
    /// (`rows_dots_perm32`); blocks of 64 code bytes.
    Perm32,
}

impl LutKind {
    /// Whether the kind runs `w` (decode table `table`) on this CPU: 2 to 5 bits, the
    /// CPU features (AVX2 and FMA; AVX-512F), and for `Bytes` no value with nonzero low
    /// 16 bits (a subnormal power of two).
    fn applies(self, w: &Pow2Weights, table: &[f32]) -> bool {
        if !cfg!(target_arch = "x86_64") || !(2..=5).contains(&w.bits()) {
            return false;
        }
        match self {
            LutKind::Bytes => {
                super::dense::gemv_supported() && table.iter().all(|v| v.to_bits() & 0xffff == 0)
            }
            LutKind::Perm32 => super::avx512_detected(),
        }
    }
}

/// Whether the code kernels run `w` on this CPU: AVX-512F's 32-entry table (`perm32`)
/// or the AVX2 byte tables (`LutKind::applies`, the test `CodeLut::new` makes before its
/// kernels run); `select::pow2_fc` asks it.
pub(crate) fn code_kernel_applies(w: &Pow2Weights, perm32: bool) -> bool {
    let kind = if perm32 {
        LutKind::Perm32
    } else {
        LutKind::Bytes
    };
    kind.applies(w, &w.table())
}

/// Row dot products (on the codes) and row decodes (for the GEMV) by table lookups in
/// registers (see the module docs). b = 2 and 4 read
/// the layer's own codes; b = 3 and 5 codes straddle bytes, so they are re-laid out
/// once per layer (`WideCodes`, kept with the weights): 3-bit codes as 4-bit nibbles
/// (run as b = 4 with the 3-bit table), 5-bit codes one per byte. Holds the tables
/// and the input permuted into the kernel's lane order for every whole block of
/// code bytes; the rest of a row (K past the last whole block) is done in scalar from
/// the layer's table.
struct CodeLut {
    kind: LutKind,
    /// `Perm32`'s table: entry `i` is the value of the code in the low `stored` bits of
    /// `i` (the index holds 5 bits, so for 2- and 4-bit stored codes the next code's
    /// low bits too).
    table32: [f32; 32],
    /// Bits per stored code in the rows the kernel reads: 2, 4 or 8.
    stored: u32,
    /// Byte 3 (sign and exponent's top 7 bits) of each code's value; for 8-bit stored
    /// codes (b = 5), of the magnitude `e` only (the sign is or-ed in by the kernel).
    high: [u8; 16],
    /// Byte 2 (exponent's low bit, mantissa's top 7 bits: 0 here) of each value.
    low: [u8; 16],
    /// Every input row of `x`: its whole blocks in lane order (`block_order`), the rest
    /// in order, then `X_PAD` zeros.
    x_lanes: Vec<f32>,
    /// Floats from one row of `x_lanes` to the next: K + `X_PAD`.
    x_stride: usize,
    /// The re-laid-out rows for b = 3 and 5.
    wide: Option<Arc<WideCodes>>,
}

/// Codes of a b = 3 or 5 layer, one per nibble (b = 3) or byte (b = 5), rows of
/// `words_per_row` u32 in the layout of a 4- or 8-bit code row.
struct WideCodes {
    words_per_row: usize,
    words: Vec<u32>,
}

impl WideCodes {
    fn new(w: &Pow2Weights, stored: u32) -> WideCodes {
        let (k, per_word) = (w.row_len(), 32 / stored as usize);
        let words_per_row = k.div_ceil(per_word);
        let mut words = vec![0u32; w.rows() * words_per_row];
        words
            .par_chunks_mut(words_per_row.max(1))
            .enumerate()
            .for_each(|(c, out)| {
                for i in 0..k {
                    out[i / per_word] |= w.code(c, i) << (stored as usize * (i % per_word));
                }
            });
        WideCodes {
            words_per_row,
            words,
        }
    }

    fn row(&self, c: usize) -> &[u32] {
        &self.words[c * self.words_per_row..(c + 1) * self.words_per_row]
    }
}

impl CodeLut {
    /// For the input rows `x` (each `K` long). `None` where the kernel does not apply:
    /// a CPU without it (AVX2 and FMA; AVX-512F), or for `Bytes` a value with nonzero
    /// low 16 bits (a subnormal power of two).
    fn new(w: &Pow2Weights, table: &[f32], x: &[f32], kind: LutKind) -> Option<CodeLut> {
        #[cfg(target_arch = "x86_64")]
        {
            if !kind.applies(w, table) {
                return None;
            }
            let bits = w.bits();
            let stored = match bits {
                2 => 2,
                3 | 4 => 4,
                _ => 8,
            };
            // b = 5: codes `s·16 | e`, tables over `e` (the positive half).
            let (mut high, mut low) = ([0u8; 16], [0u8; 16]);
            for (c, v) in table.iter().take(16).enumerate() {
                high[c] = (v.to_bits() >> 24) as u8;
                low[c] = (v.to_bits() >> 16) as u8;
            }
            let wide = (bits == 3 || bits == 5).then(|| {
                w.derived().get_or_make(
                    |d: &WideCodes| d.words.len() == w.rows() * d.words_per_row,
                    || WideCodes::new(w, stored),
                )
            });
            let order = match kind {
                LutKind::Bytes => block_order(8 / stored as usize),
                LutKind::Perm32 => perm32_order(32 / stored as usize),
            };
            let code_mask = if stored == 8 { 31 } else { (1 << stored) - 1 };
            let table32 = std::array::from_fn(|i| table.get(i & code_mask).copied().unwrap_or(0.0));
            let k = w.row_len();
            let whole = k / order.len() * order.len();
            let x_stride = k + X_PAD;
            // Rows in parallel, by plain loops: at batch 64 an iterator chain over
            // fc6's inputs took 2.4-3.8 ms on one thread.
            let mut x_lanes = vec![0f32; x.len() / k.max(1) * x_stride];
            x_lanes
                .par_chunks_mut(x_stride)
                .zip(x.par_chunks_exact(k.max(1)))
                .for_each(|(dst, row)| {
                    let (dst_blocks, src_blocks) = (&mut dst[..whole], &row[..whole]);
                    for (d, block) in dst_blocks
                        .chunks_exact_mut(order.len())
                        .zip(src_blocks.chunks_exact(order.len()))
                    {
                        for (dv, &e) in d.iter_mut().zip(&order) {
                            *dv = block[e];
                        }
                    }
                    dst[whole..k].copy_from_slice(&row[whole..k]);
                });
            Some(CodeLut {
                kind,
                table32,
                stored,
                high,
                low,
                x_lanes,
                x_stride,
                wide,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (w, table, x, kind);
            None
        }
    }

    /// Code words per block of the kernel, and codes per block: 32 bytes for `Bytes`,
    /// 64 for `Perm32` (one load each).
    fn block(&self) -> (usize, usize) {
        let words = match self.kind {
            LutKind::Bytes => 8,
            LutKind::Perm32 => 16,
        };
        (words, words * (32 / self.stored as usize))
    }

    /// `row · x_i` for the code rows `rows` of `w` and every input row of `x` (N rows of
    /// K), `[row][input]`; `table` is the layer's decode table. Each row is streamed
    /// whole, in passes of several rows and inputs: interleaving a tile's rows over
    /// chunks of the input (to keep a chunk of the permuted input in L1) measured 30%
    /// slower at batch 1 (AVX2), the code streams being read in short runs.
    fn tile_dots(
        &self,
        w: &Pow2Weights,
        rows: std::ops::Range<usize>,
        x: &[f32],
        table: &[f32],
    ) -> Vec<f32> {
        let k = w.row_len();
        let n = x.len() / k.max(1);
        assert!(
            n <= POW2_BYTES_MAX_BATCH || self.kind == LutKind::Perm32,
            "byte tables dot up to {POW2_BYTES_MAX_BATCH} inputs"
        );
        let (block_words, per_block) = self.block();
        let blocks = k / per_block;
        let code_row = |c: usize| -> &[u32] { &self.code_row(w, c)[..block_words * blocks] };
        let (xs, x_stride) = (&self.x_lanes[..], self.x_stride);
        let (high, low, t32) = (&self.high, &self.low, &self.table32);
        let mut sums = vec![0f32; rows.len() * n];
        let group = match self.kind {
            LutKind::Bytes if n == 1 => 1,
            LutKind::Bytes => BYTES_ROWS,
            // One row at batch 1 measured faster than 2 or 4 (fc6: 1.05-1.31 ms against
            // 1.37-1.46, four interleaved runs on the Xeon).
            LutKind::Perm32 if n == 1 => 1,
            LutKind::Perm32 => PERM32_ROWS,
        };
        for (g, sums) in sums.chunks_mut(group * n).enumerate() {
            let c = rows.start + g * group;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `CodeLut::new` returned Some, so the CPU has the kind's features:
            // AVX2 and FMA for `Bytes`, AVX-512F for `Perm32`.
            unsafe {
                let count = sums.len() / n;
                if self.kind == LutKind::Bytes && n == 1 {
                    let words = code_row(c);
                    sums[0] = match self.stored {
                        2 => row_dot_bytes::<2, false>(words, xs, high, low),
                        4 => row_dot_bytes::<4, false>(words, xs, high, low),
                        _ => row_dot_bytes::<8, true>(words, xs, high, low),
                    };
                    continue;
                }
                if self.kind == LutKind::Bytes {
                    for b0 in (0..n).step_by(BYTES_PASS_INPUTS) {
                        let m = BYTES_PASS_INPUTS.min(n - b0);
                        let xs = &xs[b0 * x_stride..];
                        macro_rules! pass {
                            ($r:literal, $m:literal) => {{
                                let rs: [&[u32]; $r] = std::array::from_fn(|j| code_row(c + j));
                                let d: [[f32; $m]; $r] = match self.stored {
                                    2 => rows_dots_bytes::<2, false, $r, $m>(
                                        rs, xs, x_stride, high, low,
                                    ),
                                    4 => rows_dots_bytes::<4, false, $r, $m>(
                                        rs, xs, x_stride, high, low,
                                    ),
                                    _ => rows_dots_bytes::<8, true, $r, $m>(
                                        rs, xs, x_stride, high, low,
                                    ),
                                };
                                for (j, d) in d.iter().enumerate() {
                                    sums[j * n + b0..j * n + b0 + $m].copy_from_slice(d);
                                }
                            }};
                        }
                        match (count, m) {
                            (1, 1) => pass!(1, 1),
                            (1, _) => pass!(1, 2),
                            (_, 1) => pass!(2, 1),
                            (_, _) => pass!(2, 2),
                        }
                    }
                    continue;
                }
                for b0 in (0..n).step_by(PERM32_PASS_INPUTS) {
                    let m = PERM32_PASS_INPUTS.min(n - b0);
                    let xs = &xs[b0 * x_stride..];
                    macro_rules! pass {
                        ($r:literal, $m:literal) => {{
                            let rs: [&[u32]; $r] = std::array::from_fn(|j| code_row(c + j));
                            let d: [[f32; $m]; $r] = match self.stored {
                                2 => rows_dots_perm32::<2, $r, $m>(rs, xs, x_stride, t32),
                                4 => rows_dots_perm32::<4, $r, $m>(rs, xs, x_stride, t32),
                                _ => rows_dots_perm32::<8, $r, $m>(rs, xs, x_stride, t32),
                            };
                            for (j, d) in d.iter().enumerate() {
                                sums[j * n + b0..j * n + b0 + $m].copy_from_slice(d);
                            }
                        }};
                    }
                    match (count, m) {
                        (1, 1) => pass!(1, 1),
                        (1, 2) => pass!(1, 2),
                        (1, 3) => pass!(1, 3),
                        (1, _) => pass!(1, 4),
                        (2, 1) => pass!(2, 1),
                        (2, 2) => pass!(2, 2),
                        (2, 3) => pass!(2, 3),
                        (2, _) => pass!(2, 4),
                        (3, 1) => pass!(3, 1),
                        (3, 2) => pass!(3, 2),
                        (3, 3) => pass!(3, 3),
                        (3, _) => pass!(3, 4),
                        (_, 1) => pass!(4, 1),
                        (_, 2) => pass!(4, 2),
                        (_, 3) => pass!(4, 3),
                        (_, _) => pass!(4, 4),
                    }
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (c, sums, &code_row, xs, x_stride, high, low, t32);
        }
        for (c, sums) in rows.zip(sums.chunks_exact_mut(n)) {
            for (sum, x) in sums.iter_mut().zip(x.chunks_exact(k)) {
                for (i, xv) in x.iter().enumerate().skip(blocks * per_block) {
                    *sum += xv * table[w.code(c, i) as usize];
                }
            }
        }
        sums
    }

    /// Row `c` of the codes the kernels read: `w`'s own, or the re-laid-out ones.
    fn code_row<'a>(&'a self, w: &'a Pow2Weights, c: usize) -> &'a [u32] {
        match &self.wide {
            Some(wide) => wide.row(c),
            None => w.code_row(c),
        }
    }

    /// Whole blocks of code words (8 per block) as f32 into `dst` (`per_block` each), in
    /// the lane order of `x_lanes`.
    fn decode_blocks(&self, words: &[u32], dst: &mut [f32]) {
        assert!(self.kind == LutKind::Bytes);
        let (high, low) = (&self.high, &self.low);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `CodeLut::new` returned Some, so AVX2 and FMA are present.
        unsafe {
            match self.stored {
                2 => decode_bytes::<2, false>(words, high, low, dst),
                4 => decode_bytes::<4, false>(words, high, low, dst),
                _ => decode_bytes::<8, true>(words, high, low, dst),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (words, high, low, dst);
    }

    /// Weights `span` of row `c` as f32 into `out` (`span.len()` of them), in the lane
    /// order of `x_lanes`; `span.start` is a multiple of `gemm::KC` (so of every
    /// kind's block). The whole blocks are decoded by the byte tables, the rest from
    /// `table`.
    fn decode_span(
        &self,
        w: &Pow2Weights,
        c: usize,
        span: std::ops::Range<usize>,
        table: &[f32],
        out: &mut [f32],
    ) {
        const { assert!(gemm::KC.is_multiple_of(128)) };
        assert!(span.start.is_multiple_of(gemm::KC) && span.end <= w.row_len());
        let (block_words, per_block) = self.block();
        let per_word = per_block / block_words;
        let whole = w.row_len() / per_block * per_block;
        let end = span.end.min(whole).max(span.start);
        let words = &self.code_row(w, c)[span.start / per_word..end / per_word];
        self.decode_blocks(words, &mut out[..end - span.start]);
        for i in end..span.end {
            out[i - span.start] = table[w.code(c, i) as usize];
        }
    }
}

/// Lane order of `row_dot_bytes` for `codes_per_byte` codes per byte (4 for b = 2, 2
/// for 4-bit stored codes, 1 for 8-bit): entry `p` is the element (within the block of `32 · codes_per_byte`)
/// whose product lands in position `p = 32g + 8q + i` (code group `g`, f32 vector
/// `q`, lane `i`). Code group `g` of byte `j` is element `codes_per_byte · j + g`;
/// the byte interleave takes bytes `16L + 8h + w` of 128-bit lane `L` to 16-bit word
/// `w` (`h` = 0 for the low unpack, 1 for the high); dword `d` of lane `L` holds words
/// `2d` (moved up by a shift, vector `q = 2h`) and `2d + 1` (masked, `q = 2h + 1`).
fn block_order(codes_per_byte: usize) -> Vec<usize> {
    let mut order = Vec::with_capacity(32 * codes_per_byte);
    for g in 0..codes_per_byte {
        for q in 0..4 {
            let (h, odd) = (q / 2, q % 2);
            for i in 0..8 {
                let (lane, d) = (i / 4, i % 4);
                let byte = 16 * lane + 8 * h + 2 * d + odd;
                order.push(codes_per_byte * byte + g);
            }
        }
    }
    order
}

/// How far ahead of its loads `row_dot_bytes` and `rows_dots_perm32` prefetch codes: 512
/// words (2 KiB, into
/// the next row near a row's end). The rows of a tile are contiguous but the 8-row
/// tiles are spread over the threads, and each thread's stream jumps at every tile; on
/// the 2-core VM fc6 4-bit at batch 1 ran 8% faster on average with it (5 of 6
/// interleaved runs, -5% to +15%; 1,024 words measured the same).
const CODE_PREFETCH_WORDS: usize = 512;

/// The byte tables and masks of `row_dot_bytes` and `decode_bytes`, as vectors.
#[cfg(target_arch = "x86_64")]
struct ByteTables {
    high: std::arch::x86_64::__m256i,
    low: std::arch::x86_64::__m256i,
    code_mask: std::arch::x86_64::__m256i,
    top_bit: std::arch::x86_64::__m256i,
    low_nibble: std::arch::x86_64::__m256i,
    high_half: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_dots_bytes<const B: i32, const SIGN_BIT_4: bool, const R: usize, const N: usize>(
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_dot_bytes<const B: i32, const SIGN_BIT_4: bool>(
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

/// Code rows and inputs per pass of `rows_dots_bytes` (batch 2 to `POW2_BYTES_MAX_BATCH`).
const BYTES_ROWS: usize = 2;
const BYTES_PASS_INPUTS: usize = 2;

/// Inputs per pass of `rows_dots_perm32` at batch > 1 (the code rows are re-read from
/// L1 for each pass).
const PERM32_PASS_INPUTS: usize = 4;

/// Code rows per pass of `rows_dots_perm32` at batch > 1: each input load feeds all 4,
/// so the inputs (36 KiB per fc6 row, in L2) are read once per 4 rows. fc6, two runs:
/// 3.8-5.2 / 3.6-4.2 / 3.7-3.8 ms with 2 / 3 / 4 rows at batch 8, 49-52 / 38-41 / 31 ms
/// at batch 64.
const PERM32_ROWS: usize = 4;

/// Lane order of `rows_dots_perm32` for `per_word` codes per u32 word: entry `p = 16g + d`
/// is the element (within the block of `16 · per_word`) whose product lands in lane `d`
/// of vector `g`, that is code `g` of word `d`.
fn perm32_order(per_word: usize) -> Vec<usize> {
    (0..per_word)
        .flat_map(|g| (0..16).map(move |d| per_word * d + g))
        .collect()
}

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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rows_dots_perm32<const S: u32, const R: usize, const N: usize>(
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

/// The values of the whole blocks of one code row into `out` (`per_block` floats per 8
/// words), in the lane order `row_dot_bytes` multiplies them in.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn decode_bytes<const B: i32, const SIGN_BIT_4: bool>(
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
