//! Sparse encoding (dynamic network surgery, Guo et al., NIPS 2016; or any weight
//! tensor with many exact zeros): compressed sparse rows (CSR), one row per output
//! channel, over the reduction axis K.
//!
//! Layout (the one place it is written down):
//! - `row_ptr`: u32, `rows + 1` entries, `row_ptr[0] = 0`, non-decreasing,
//!   `row_ptr[rows] = nnz`. Row `c` (output channel) owns entries
//!   `row_ptr[c]..row_ptr[c + 1]` of `cols` and `values`.
//! - `cols`: the K index of each stored entry (K order as in `weights/mod.rs`:
//!   `k = (ci * kh + ky) * kw + kx`), strictly increasing within a row, `< K`.
//!   u16 when `K ≤ 65535` (part dtype U16), else u32 (dtype U32); the width follows
//!   from the shape alone, so a file cannot choose it.
//! - `values`: f32, `nnz` entries, the weights at those positions.
//!
//! - or, when the header has `value_codes: {bits, n1}` (DNS followed by INQ: every
//!   value is 0 or `±2^n` with `n2 ≤ n ≤ n1`), `value_codes` instead of `values`: the
//!   `nnz` values as `bits`-bit power-of-two codes (the code set of `weights/pow2.rs`)
//!   in CSR order, as one dense bit stream (`weights/bitstream.rs`: `ceil(nnz·bits /
//!   32)` words, unused bits 0) when `value_codes.packing` is `Stream`; files written
//!   before the stream (no `packing`: `Words`) pack `floor(32 / bits)` codes per word
//!   (codes do not straddle words). The loader decodes them into `values` (exact:
//!   powers of two are exact in f32), so the kernels see f32 values either way; the
//!   codes are the file form.
//!
//! Stored entries are normally nonzero, but a zero value is legal (it costs bytes,
//! not correctness). Bytes: `4·(rows + 1) + (2 or 4)·nnz + 4·nnz`, or with value codes
//! `4·(rows + 1) + (2 or 4)·nnz + 4·ceil(nnz·bits / 32)`.

use super::pow2::{
    codes_per_word, decode_table, encode_power, magnitudes, CodePacking, Pow2Weights, N1_MAX,
    N1_MIN,
};
use super::{bitstream, Derived, EncodingError};
use serde::{Deserialize, Serialize};

/// The power-of-two code set of values stored as codes (`weights/pow2.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCodes {
    /// Bits per code, 2..=5.
    pub bits: u32,
    /// Largest exponent of the set.
    pub n1: i32,
    /// How the file stores the codes: `Stream` for files written since the code stream
    /// (and always in memory after loading), `Words` when the header has no `packing`.
    #[serde(default)]
    pub packing: CodePacking,
}

/// Largest K for which column indices are stored as u16.
pub const MAX_U16_K: usize = u16::MAX as usize;

/// CSR weights, one row per output channel; see the module docs for the layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseWeights {
    /// Logical weight shape `[Cout, ...]` (conv `[Cout, Cin/groups, kh, kw]`, fc `[out, in]`).
    shape: Vec<usize>,
    /// Row pointers, `rows + 1`; stored beside the graph JSON.
    #[serde(skip)]
    row_ptr: Vec<u32>,
    /// Column indices, boxed so that `Weights` (and every `Op`) stays as small as
    /// with the other encodings.
    #[serde(skip)]
    cols: Box<ColStore>,
    /// Stored values, `nnz` (decoded from the codes when `value_codes` is set).
    #[serde(skip)]
    values: Vec<f32>,
    /// Set when the file stores the values as power-of-two codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_codes: Option<ValueCodes>,
}

/// Column index storage (exactly one of the two widths is used, by
/// `SparseWeights::wide`) and the packed value codes, if any.
#[derive(Clone, Debug, Default, PartialEq)]
struct ColStore {
    /// Indices when K ≤ 65535 (else empty).
    u16: Vec<u16>,
    /// Indices when K > 65535 (else empty).
    u32: Vec<u32>,
    /// Packed value codes when `value_codes` is set (else empty).
    codes: Vec<u32>,
    /// Kernel data derived from these weights (see `Derived`); here, behind the box,
    /// so that `Weights` stays small.
    derived: Derived,
}

/// Column indices of one row, in whichever width the layer uses.
#[derive(Clone, Copy, Debug)]
pub enum Cols<'a> {
    /// u16 indices (K ≤ 65535).
    U16(&'a [u16]),
    /// u32 indices.
    U32(&'a [u32]),
}

impl Cols<'_> {
    /// Index `i` as usize.
    #[inline]
    pub fn get(&self, i: usize) -> usize {
        match self {
            Cols::U16(c) => c[i] as usize,
            Cols::U32(c) => c[i] as usize,
        }
    }

    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            Cols::U16(c) => c.len(),
            Cols::U32(c) => c.len(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SparseWeights {
    /// Encodes the nonzero entries of a dense row-major tensor of `shape`
    /// (`data.len()` must be the product of `shape`).
    pub fn from_dense(shape: Vec<usize>, data: &[f32]) -> Result<SparseWeights, EncodingError> {
        let rows = shape.first().copied().unwrap_or(0);
        let k: usize = shape.iter().skip(1).product();
        if data.len() != rows * k {
            return Err(EncodingError {
                encoding: "sparse",
                shape,
                part: "dense data",
                found: data.len(),
                expected: rows * k,
            });
        }
        let mut row_ptr = Vec::with_capacity(rows + 1);
        row_ptr.push(0u32);
        let (mut cols, mut values) = (Vec::new(), Vec::new());
        for r in 0..rows {
            for (i, &v) in data[r * k..(r + 1) * k].iter().enumerate() {
                if v != 0.0 {
                    cols.push(i as u32);
                    values.push(v);
                }
            }
            row_ptr.push(values.len() as u32);
        }
        SparseWeights::new(shape, row_ptr, cols, values)
    }

    /// Wraps CSR arrays (column indices given as u32 whatever the width) and checks them.
    pub fn new(
        shape: Vec<usize>,
        row_ptr: Vec<u32>,
        cols: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<SparseWeights, EncodingError> {
        let k: usize = shape.iter().skip(1).product();
        let (cols16, cols32) = if k <= MAX_U16_K {
            (
                cols.iter()
                    .map(|&c| c.min(u16::MAX as u32) as u16)
                    .collect(),
                Vec::new(),
            )
        } else {
            (Vec::new(), cols)
        };
        let w = SparseWeights {
            shape,
            row_ptr,
            cols: Box::new(ColStore {
                u16: cols16,
                u32: cols32,
                codes: Vec::new(),
                derived: Derived::default(),
            }),
            values,
            value_codes: None,
        };
        w.check()?;
        Ok(w)
    }

    /// Logical weight shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Output channels.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Length K of the reduction axis.
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// True when column indices are u32 (K > 65535).
    pub fn wide(&self) -> bool {
        self.row_len() > MAX_U16_K
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Stored entries over parameters, in [0, 1].
    pub fn density(&self) -> f64 {
        self.nnz() as f64 / (self.rows() * self.row_len()).max(1) as f64
    }

    /// Row pointers, `rows + 1`.
    pub fn row_ptr(&self) -> &[u32] {
        &self.row_ptr
    }

    /// All column indices.
    pub fn cols(&self) -> Cols<'_> {
        if self.wide() {
            Cols::U32(&self.cols.u32)
        } else {
            Cols::U16(&self.cols.u16)
        }
    }

    /// All column indices widened to u32 (for GPU upload).
    pub fn cols_u32(&self) -> Vec<u32> {
        if self.wide() {
            self.cols.u32.clone()
        } else {
            self.cols.u16.iter().map(|&c| c as u32).collect()
        }
    }

    /// All stored values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Range of row `c` in `cols` / `values`.
    #[inline]
    pub fn row_range(&self, c: usize) -> std::ops::Range<usize> {
        self.row_ptr[c] as usize..self.row_ptr[c + 1] as usize
    }

    /// Dense values, `[Cout][K]` row-major; exact (stored values are copied).
    pub fn dense_data(&self) -> Vec<f32> {
        let k = self.row_len();
        let mut out = vec![0f32; self.rows() * k];
        let cols = self.cols();
        for r in 0..self.rows() {
            for i in self.row_range(r) {
                out[r * k + cols.get(i)] = self.values[i];
            }
        }
        out
    }

    /// Bytes in the file: row pointers (4 each), column indices (2 or 4 each), values
    /// (4 each, or the packed code words when the values are codes).
    pub fn bytes(&self) -> usize {
        let values = match self.value_codes {
            Some(_) => self.cols.codes.len() * 4,
            None => self.values.len() * 4,
        };
        self.row_ptr.len() * 4 + self.cols.u16.len() * 2 + self.cols.u32.len() * 4 + values
    }

    /// The code set when the values are stored as power-of-two codes.
    pub fn value_codes(&self) -> Option<ValueCodes> {
        self.value_codes
    }

    /// The packed value codes (empty unless `value_codes` is set).
    pub fn codes(&self) -> &[u32] {
        &self.cols.codes
    }

    /// The nonzero entries of dense power-of-two codes as CSR with the values kept as
    /// codes of the same set (DNS followed by INQ: zeros are pruned connections).
    pub fn from_pow2(w: &Pow2Weights) -> Result<SparseWeights, EncodingError> {
        let sp = SparseWeights::from_dense(w.shape().to_vec(), &w.dense_data())?;
        sp.with_value_codes(w.bits(), w.n1())
    }

    /// Refuses a code set outside what the pow2 encoding allows (b = 2..=5, n1 in range).
    fn check_code_set(&self, bits: u32, n1: i32) -> Result<(), EncodingError> {
        let (part, found, expected) = if !(2..=5).contains(&bits) {
            ("value_codes.bits", bits as usize, 5)
        } else if !(N1_MIN..=N1_MAX).contains(&n1) {
            (
                "value_codes.n1",
                n1.unsigned_abs() as usize,
                N1_MAX as usize,
            )
        } else {
            return Ok(());
        };
        Err(EncodingError {
            encoding: "sparse",
            shape: self.shape.clone(),
            part,
            found,
            expected,
        })
    }

    /// Stores the values as `bits`-bit codes of the set with largest exponent `n1`;
    /// fails (part "values (not in the code set)") if a value is not 0 or `±2^n`,
    /// `n2 ≤ n ≤ n1`, exactly.
    pub fn with_value_codes(mut self, bits: u32, n1: i32) -> Result<SparseWeights, EncodingError> {
        let err = |part, found, expected| EncodingError {
            encoding: "sparse",
            shape: self.shape.clone(),
            part,
            found,
            expected,
        };
        self.check_code_set(bits, n1)?;
        let table = decode_table(bits, n1);
        let mut codes = Vec::with_capacity(self.values.len());
        for (i, &v) in self.values.iter().enumerate() {
            let code = if v == 0.0 {
                Some(0)
            } else {
                let n = v.abs().log2().round() as i32;
                encode_power(bits, n1, v < 0.0, n).filter(|&c| table[c as usize] == v)
            };
            let Some(code) = code else {
                return Err(err("values (not in the code set)", i, self.values.len()));
            };
            codes.push(code as u32);
        }
        self.cols.codes = bitstream::pack(codes, bits, self.values.len());
        self.value_codes = Some(ValueCodes {
            bits,
            n1,
            packing: CodePacking::Stream,
        });
        Ok(self)
    }

    /// Loader step for files with value codes: checks the codes against `row_ptr`'s
    /// nnz and the code set, then decodes them into `values`. No-op without codes.
    pub fn decode_value_codes(&mut self) -> Result<(), EncodingError> {
        self.cols.derived.clear();
        let Some(ValueCodes { bits, n1, packing }) = self.value_codes else {
            return Ok(());
        };
        let err = |part, found, expected| EncodingError {
            encoding: "sparse",
            shape: self.shape.clone(),
            part,
            found,
            expected,
        };
        self.check_code_set(bits, n1)?;
        let nnz = self.row_ptr.last().copied().unwrap_or(0) as usize;
        let stored = &self.cols.codes;
        let codes: Vec<u32> = match packing {
            CodePacking::Stream => {
                let want = bitstream::words(nnz, bits);
                if stored.len() != want {
                    return Err(err("value_codes", stored.len(), want));
                }
                if !bitstream::padding_clear(stored, bits, nnz) {
                    return Err(err("value_codes (unused bits set)", want - 1, 0));
                }
                (0..nnz).map(|i| bitstream::get(stored, bits, i)).collect()
            }
            CodePacking::Words => {
                let per_word = codes_per_word(bits);
                if stored.len() != nnz.div_ceil(per_word) {
                    return Err(err("value_codes", stored.len(), nnz.div_ceil(per_word)));
                }
                let mask = (1u32 << bits) - 1;
                let mut codes = Vec::with_capacity(nnz);
                for (w, &word) in stored.iter().enumerate() {
                    let here = per_word.min(nnz - w * per_word);
                    if here < 32 / bits as usize && word >> (bits as usize * here) != 0 {
                        return Err(err("value_codes (unused bits set)", w, 0));
                    }
                    codes.extend((0..here).map(|j| (word >> (bits as usize * j)) & mask));
                }
                codes
            }
        };
        let (table, sign) = (decode_table(bits, n1), 1u32 << (bits - 1));
        let mut values = Vec::with_capacity(nnz);
        for &code in &codes {
            let e = code & (sign - 1);
            if (code != 0 && e == 0) || e > magnitudes(bits) {
                return Err(err("value_codes (invalid code)", code as usize, 0));
            }
            values.push(table[code as usize]);
        }
        self.values = values;
        // Kept as a stream, the form the next save writes.
        self.cols.codes = bitstream::pack(codes, bits, nnz);
        self.value_codes = Some(ValueCodes {
            bits,
            n1,
            packing: CodePacking::Stream,
        });
        Ok(())
    }

    /// Nonzero stored values.
    pub fn nonzeros(&self) -> usize {
        self.values.iter().filter(|v| **v != 0.0).count()
    }

    /// Mutable row pointers, column indices (u16 variant) , column indices (u32 variant),
    /// values and value codes, for the loader; call `decode_value_codes` and `check`
    /// afterwards.
    #[allow(clippy::type_complexity)]
    pub fn arrays_mut(
        &mut self,
    ) -> (
        &mut Vec<u32>,
        &mut Vec<u16>,
        &mut Vec<u32>,
        &mut Vec<f32>,
        &mut Vec<u32>,
    ) {
        self.cols.derived.clear();
        (
            &mut self.row_ptr,
            &mut self.cols.u16,
            &mut self.cols.u32,
            &mut self.values,
            &mut self.cols.codes,
        )
    }

    /// Kernel data derived from these weights, built on first use (see `Derived`).
    pub fn derived(&self) -> &Derived {
        &self.cols.derived
    }

    /// Verifies sizes, monotone row pointers ending at nnz, and strictly increasing
    /// in-range column indices within every row.
    pub fn check(&self) -> Result<(), EncodingError> {
        let err = |part, found, expected| EncodingError {
            encoding: "sparse",
            shape: self.shape.clone(),
            part,
            found,
            expected,
        };
        let (rows, k) = (self.rows(), self.row_len());
        if self.row_ptr.len() != rows + 1 {
            return Err(err("row_ptr", self.row_ptr.len(), rows + 1));
        }
        let nnz = self.values.len();
        let (n_cols, other) = if self.wide() {
            (self.cols.u32.len(), self.cols.u16.len())
        } else {
            (self.cols.u16.len(), self.cols.u32.len())
        };
        if other != 0 {
            return Err(err("cols (unused width)", other, 0));
        }
        if n_cols != nnz {
            return Err(err("cols", n_cols, nnz));
        }
        if self.row_ptr[0] != 0 {
            return Err(err("row_ptr[0]", self.row_ptr[0] as usize, 0));
        }
        if self.row_ptr[rows] as usize != nnz {
            return Err(err(
                "row_ptr[rows] (= nnz)",
                self.row_ptr[rows] as usize,
                nnz,
            ));
        }
        if nnz > rows * k {
            return Err(err("values", nnz, rows * k));
        }
        let cols = self.cols();
        for r in 0..rows {
            let (a, b) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
            if b < a {
                // Non-monotone: report the offending pointer against its predecessor.
                return Err(err("row_ptr (decreasing)", b, a));
            }
            let mut prev: Option<usize> = None;
            for i in a..b {
                let c = cols.get(i);
                if c >= k {
                    return Err(err("cols (index out of range)", c, k));
                }
                if prev.is_some_and(|p| c <= p) {
                    return Err(err(
                        "cols (not strictly increasing)",
                        c,
                        prev.unwrap_or(0) + 1,
                    ));
                }
                prev = Some(c);
            }
        }
        Ok(())
    }
}
