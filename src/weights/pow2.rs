//! Power-of-two encoding (INQ, Zhou et al., ICLR 2017): every weight of a layer is 0
//! or `±2^n` with `n2 ≤ n ≤ n1`, stored as a `b`-bit code.
//!
//! Value set for `b` bits (2..=5) and the layer's largest exponent `n1` (i32):
//! `P = {0} ∪ {±2^n : n2 ≤ n ≤ n1}` with `n2 = n1 + 1 − 2^(b−2)`, i.e. `2^(b−2)`
//! magnitudes, `2^(b−1) + 1` values (b = 2: ternary `{0, ±2^n1}`).
//!
//! Layout (the one place it is written down):
//! - Code of one weight, `b` bits: `0` = zero. Otherwise the top bit (`1 << (b−1)`) is
//!   the sign (set = negative) and the low `b−1` bits hold `e ∈ 1..=2^(b−2)`, the
//!   magnitude index: the value is `±2^(n1 + 1 − e)` (e = 1 is `2^n1`, e = `2^(b−2)` is
//!   `2^n2`). Other codes (`e = 0` with the sign set, `e > 2^(b−2)`) are invalid and
//!   `check` refuses them.
//! - `codes`: u32 words `[Cout][words_per_row]`. A word holds `codes_per_word =
//!   floor(32 / b)` codes (16, 10, 8, 6 for b = 2, 3, 4, 5); element `k` of row `c` (K
//!   order as in `weights/mod.rs`: `k = (ci * kh + ky) * kw + kx`) is bits
//!   `b·(k % codes_per_word) ..` of word `k / codes_per_word` of the row. Codes never
//!   straddle words (b = 3 and 5 leave the top 2 bits of each word clear) and every row
//!   starts on a word, `words_per_row = ceil(K / codes_per_word)`, so kernels decode
//!   a row without carrying bits across words. Unused bits are 0 (`check` verifies).
//! - Header (serde, with the graph JSON): `shape`, `bits` (b), `n1`, `words_per_row`,
//!   `packing`.
//! - In a `.cnnpack` file (`packing: Stream`) the codes are the part `code_stream`: all
//!   `Cout·K` codes in row-major order as one dense bit stream (`weights/bitstream.rs`),
//!   exactly `ceil(Cout·K·b / 32)` words, so the file holds b bits per weight (the
//!   word layout above spends 3.2 and 5.33 bits at b = 3 and 5, plus row padding).
//!   The loader re-packs the stream into the word layout. Files written before the
//!   stream (no `packing` in the header: `Words`) store the word layout as `codes`.
//!
//! `n1` is limited to `N1_MIN..=N1_MAX` so that `2^n1` is a finite f32; magnitudes
//! below the f32 range decode as the f32 value of `2^n` (subnormal or 0), computed
//! exactly in f64 and rounded once.

use super::{bitstream, Derived, EncodingError};
use serde::{Deserialize, Serialize};

/// Smallest allowed `n1` (2^-160 rounds to 0 in f32: every nonzero code of such a
/// layer decodes to 0, which is still well defined).
pub const N1_MIN: i32 = -160;
/// Largest allowed `n1` (2^127 is the largest power of two in f32).
pub const N1_MAX: i32 = 127;

/// Power-of-two codes plus the per-layer header; see the module docs for the layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pow2Weights {
    /// Logical weight shape `[Cout, ...]`.
    shape: Vec<usize>,
    /// Bits per code (b, 2..=5).
    bits: u32,
    /// Largest exponent n1: the largest magnitude is `2^n1`.
    n1: i32,
    /// u32 words per output row, `ceil(K / codes_per_word)`.
    words_per_row: usize,
    /// How a `.cnnpack` file stores the codes. Always `Stream` in memory; a header
    /// without the key (files written before the stream) reads as `Words`, and
    /// `finish_load` turns it into `Stream` so that a re-save writes the stream.
    #[serde(default)]
    packing: CodePacking,
    /// Packed codes `[Cout][words_per_row]`; stored beside the graph JSON. Between
    /// `codes_mut` for a `Stream` file and `finish_load`, the file's stream.
    #[serde(skip)]
    codes: Vec<u32>,
    /// Kernel data derived from these weights (see `Derived`).
    #[serde(skip)]
    derived: Derived,
}

/// How a `.cnnpack` file stores pow2 codes (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodePacking {
    /// The in-memory word layout, part `codes` (files written before `Stream`).
    #[default]
    Words,
    /// One dense bit stream of b bits per weight, part `code_stream`.
    Stream,
}

/// The word layout (module docs) of `rows` rows of `k` codes, `code(i)` being code `i`
/// in row-major order; `bits` in 2..=5.
fn word_layout(rows: usize, k: usize, bits: u32, code: impl Fn(usize) -> u32) -> Vec<u32> {
    let (cpw, b) = (codes_per_word(bits), bits as usize);
    let wpr = k.div_ceil(cpw);
    let mut words = vec![0u32; rows * wpr];
    for (r, out) in words.chunks_exact_mut(wpr.max(1)).enumerate().take(rows) {
        for i in 0..k {
            out[i / cpw] |= code(r * k + i) << (b * (i % cpw));
        }
    }
    words
}

/// Codes per u32 word for `b`-bit codes (`floor(32 / b)`).
pub fn codes_per_word(bits: u32) -> usize {
    (32 / bits.max(1)) as usize
}

/// Number of magnitudes `2^(b−2)` for `b`-bit codes.
pub fn magnitudes(bits: u32) -> u32 {
    1 << (bits.clamp(2, 5) - 2)
}

/// `2^n` as f32: exact where representable, subnormal or 0 below the normal range
/// (computed in f64, exact for every n used here, and rounded once).
pub fn pow2_f32(n: i32) -> f32 {
    (2f64).powi(n) as f32
}

impl Pow2Weights {
    /// Packs per-element codes (`codes[c * K + k]`, each a valid `b`-bit code as in the
    /// module docs) for weights of `shape`.
    pub fn from_codes(
        shape: Vec<usize>,
        bits: u32,
        n1: i32,
        codes: &[u8],
    ) -> Result<Pow2Weights, EncodingError> {
        let rows = shape.first().copied().unwrap_or(0);
        let k: usize = shape.iter().skip(1).product();
        let err = |part, found, expected| EncodingError {
            encoding: "pow2",
            shape: shape.clone(),
            part,
            found,
            expected,
        };
        if !(2..=5).contains(&bits) {
            return Err(err("bits", bits as usize, 4));
        }
        if codes.len() != rows * k {
            return Err(err("codes", codes.len(), rows * k));
        }
        let wpr = k.div_ceil(codes_per_word(bits));
        let words = word_layout(rows, k, bits, |i| codes[i] as u32);
        let w = Pow2Weights {
            shape,
            bits,
            n1,
            words_per_row: wpr,
            packing: CodePacking::Stream,
            codes: words,
            derived: Derived::default(),
        };
        w.check()?;
        Ok(w)
    }

    /// Logical weight shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Output channels (Cout).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Length K of the reduction axis.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Bits per code (b).
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Largest exponent n1.
    pub fn n1(&self) -> i32 {
        self.n1
    }

    /// Smallest exponent `n2 = n1 + 1 − 2^(b−2)`.
    pub fn n2(&self) -> i32 {
        self.n1 + 1 - magnitudes(self.bits) as i32
    }

    /// Codes per u32 word.
    pub fn codes_per_word(&self) -> usize {
        codes_per_word(self.bits)
    }

    /// u32 words per output row.
    pub fn words_per_row(&self) -> usize {
        self.words_per_row
    }

    /// Packed code words `[Cout][words_per_row]`.
    pub fn codes(&self) -> &[u32] {
        &self.codes
    }

    /// Words of output row `c`.
    pub fn code_row(&self, c: usize) -> &[u32] {
        &self.codes[c * self.words_per_row..(c + 1) * self.words_per_row]
    }

    /// Code of element `k` of row `c`.
    pub fn code(&self, c: usize, k: usize) -> u32 {
        let cpw = self.codes_per_word();
        let mask = (1u32 << self.bits) - 1;
        self.code_row(c)[k / cpw] >> (self.bits as usize * (k % cpw)) & mask
    }

    /// Decoding table: `table()[code]` is the f32 value of every code (`2^b` entries;
    /// invalid codes map to 0, and `check` refuses them anyway).
    pub fn table(&self) -> Vec<f32> {
        decode_table(self.bits, self.n1)
    }

    /// Dense values `[Cout][K]`, row-major; exact (each value is `0` or `±2^n`).
    pub fn dense_data(&self) -> Vec<f32> {
        let (rows, k) = (self.rows(), self.row_len());
        let table = self.table();
        let (cpw, b) = (self.codes_per_word(), self.bits as usize);
        let mask = (1u32 << b) - 1;
        let mut out = Vec::with_capacity(rows * k);
        for c in 0..rows {
            let row = self.code_row(c);
            out.extend((0..k).map(|i| table[(row[i / cpw] >> (b * (i % cpw)) & mask) as usize]));
        }
        out
    }

    /// Bytes of the stored form, the code stream: `ceil(Cout·K·b / 32)` words (the
    /// header is a few bytes of JSON). The word layout in memory and on GPUs is up to
    /// 1/15 larger (b = 3 and 5) plus row padding.
    pub fn bytes(&self) -> usize {
        bitstream::words(self.rows() * self.row_len(), self.bits) * 4
    }

    /// The codes as one dense bit stream, the form `.cnnpack` files store.
    pub fn code_stream(&self) -> Vec<u32> {
        let (k, cpw, b) = (self.row_len(), self.codes_per_word(), self.bits as usize);
        let mask = (1u32 << b) - 1;
        // Row by row, word by word: the first K codes of each row's words.
        let codes = (0..self.rows()).flat_map(|c| {
            self.code_row(c)
                .iter()
                .flat_map(move |&word| (0..cpw).map(move |j| (word >> (b * j)) & mask))
                .take(k)
        });
        bitstream::pack(codes, self.bits, self.rows() * k)
    }

    /// How the codes a loader is about to fill in are stored (see `CodePacking`).
    pub fn packing(&self) -> CodePacking {
        self.packing
    }

    /// Mutable code words (for the loader: it fills in the file's part, the word layout
    /// or the stream as `packing` says; call `finish_load` afterwards).
    pub fn codes_mut(&mut self) -> &mut Vec<u32> {
        self.derived.clear();
        &mut self.codes
    }

    /// After a loader filled `codes_mut`: re-packs a `Stream` file's stream into the
    /// word layout (refusing a stream of the wrong length or with set padding bits),
    /// marks the weights `Stream` for the next save, then `check`s.
    pub fn finish_load(&mut self) -> Result<(), EncodingError> {
        if !(2..=5).contains(&self.bits) {
            // Refused by `check`, before a width the re-pack cannot handle is used.
            return self.check();
        }
        if self.packing == CodePacking::Stream {
            let (rows, k) = (self.rows(), self.row_len());
            let expected = bitstream::words(rows * k, self.bits);
            let err = |part, found| EncodingError {
                encoding: "pow2",
                shape: self.shape.clone(),
                part,
                found,
                expected,
            };
            if self.codes.len() != expected {
                return Err(err("code_stream", self.codes.len()));
            }
            if !bitstream::padding_clear(&self.codes, self.bits, rows * k) {
                return Err(err("code_stream (set bits past the last code)", 1));
            }
            if self.words_per_row != k.div_ceil(self.codes_per_word()) {
                // A header that disagrees with the shape: `check` refuses it.
                return self.check();
            }
            let stream = std::mem::take(&mut self.codes);
            self.codes = word_layout(rows, k, self.bits, |i| {
                bitstream::get(&stream, self.bits, i)
            });
        }
        self.packing = CodePacking::Stream;
        self.check()
    }

    /// Kernel data derived from these weights, built on first use (see `Derived`).
    pub fn derived(&self) -> &Derived {
        &self.derived
    }

    /// Verifies the header (b in 2..=5, n1 in range, words_per_row), the size of
    /// `codes`, that every code is valid and that unused bits are clear.
    pub fn check(&self) -> Result<(), EncodingError> {
        let err = |part, found: usize, expected: usize| EncodingError {
            encoding: "pow2",
            shape: self.shape.clone(),
            part,
            found,
            expected,
        };
        if !(2..=5).contains(&self.bits) {
            return Err(err("bits", self.bits as usize, 4));
        }
        if !(N1_MIN..=N1_MAX).contains(&self.n1) {
            // Report the distance outside the range as "found".
            let off = if self.n1 < N1_MIN {
                (N1_MIN - self.n1) as usize
            } else {
                (self.n1 - N1_MAX) as usize
            };
            return Err(err("n1 (outside -160..=127 by)", off, 0));
        }
        let (k, cpw, b) = (self.row_len(), self.codes_per_word(), self.bits as usize);
        let wpr = k.div_ceil(cpw);
        if self.words_per_row != wpr {
            return Err(err("words_per_row", self.words_per_row, wpr));
        }
        let n = self.rows() * wpr;
        if self.codes.len() != n {
            return Err(err("codes", self.codes.len(), n));
        }
        let mask = (1u32 << b) - 1;
        let sign = 1u32 << (b - 1);
        let emax = magnitudes(self.bits);
        let mut bad = 0usize;
        for row in self.codes.chunks_exact(wpr.max(1)) {
            for (w, &word) in row.iter().enumerate() {
                let used = (k - w * cpw).min(cpw);
                // Bits past the last used code of this word must be clear.
                if used * b < 32 && word >> (used * b) != 0 {
                    bad += 1;
                    continue;
                }
                for j in 0..used {
                    let c = word >> (b * j) & mask;
                    let e = c & (sign - 1);
                    if c != 0 && (e == 0 || e > emax) {
                        bad += 1;
                    }
                }
            }
        }
        if bad > 0 {
            return Err(err("codes (invalid codes or set padding bits)", bad, 0));
        }
        Ok(())
    }
}

/// Value of every `b`-bit code for largest exponent `n1` (`2^b` entries; invalid
/// codes give 0).
pub fn decode_table(bits: u32, n1: i32) -> Vec<f32> {
    let b = bits.clamp(2, 5);
    let sign = 1u32 << (b - 1);
    let emax = magnitudes(b);
    (0..1u32 << b)
        .map(|c| {
            let e = c & (sign - 1);
            if e == 0 || e > emax {
                0.0
            } else {
                let v = pow2_f32(n1 + 1 - e as i32);
                if c & sign != 0 {
                    -v
                } else {
                    v
                }
            }
        })
        .collect()
}

/// Code of `±2^n` (n2 ≤ n ≤ n1) for `b` bits; `None` when `n` is outside the range.
pub fn encode_power(bits: u32, n1: i32, negative: bool, n: i32) -> Option<u8> {
    let e = n1 + 1 - n;
    if e < 1 || e > magnitudes(bits) as i32 {
        return None;
    }
    let sign = if negative { 1u32 << (bits - 1) } else { 0 };
    Some((sign | e as u32) as u8)
}
