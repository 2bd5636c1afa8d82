//! The code kernels' preparation and dispatch (`CodeLut`): the decode tables in the
//! forms the kernels look up (`vpshufb` byte tables, a 32-entry f32 table), the input
//! permuted once per call into the kernels' lane order (`block_order`,
//! `perm32_order`), the 3- and 5-bit codes re-laid out once per layer (`WideCodes`),
//! and the choice of kernel per tile of rows (`tile_dots`, `decode_span`). The kernels
//! themselves are in `avx2.rs` and `avx512.rs`.

#[cfg(target_arch = "x86_64")]
use super::avx2::{decode_bytes, row_dot_bytes, rows_dots_bytes};
#[cfg(target_arch = "x86_64")]
use super::avx512::rows_dots_perm32;
use super::gemm;
use crate::backend::cpu::select::POW2_BYTES_MAX_BATCH;
use crate::weights::Pow2Weights;
use rayon::prelude::*;
use std::sync::Arc;

/// Zeros after each input row in `CodeLut::x_lanes`. Unpadded, fc6's rows (9216 floats,
/// 9 x 4 KiB) put the same inputs of every row in the same L1 sets; padded, pow2 fc6 at
/// batch 8 ran 2.6-6.4% faster (4 of 4 interleaved runs).
const X_PAD: usize = 16;

/// How `CodeLut` looks codes up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum LutKind {
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
                crate::backend::cpu::fast::gemv_supported()
                    && table.iter().all(|v| v.to_bits() & 0xffff == 0)
            }
            LutKind::Perm32 => crate::backend::cpu::fast::avx512_detected(),
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
pub(super) struct CodeLut {
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
    pub(super) x_lanes: Vec<f32>,
    /// Floats from one row of `x_lanes` to the next: K + `X_PAD`.
    pub(super) x_stride: usize,
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
    pub(super) fn new(w: &Pow2Weights, table: &[f32], x: &[f32], kind: LutKind) -> Option<CodeLut> {
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
    pub(super) fn tile_dots(
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
    pub(super) fn decode_span(
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
