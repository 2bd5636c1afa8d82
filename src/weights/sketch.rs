//! Sketch encoding (Guo et al., CVPR 2017): each output channel `c` is approximated
//! by `m` binary tensors with a scale each, `W_c ≈ Σ_j a_{c,j} · B_{c,j}`,
//! `B_{c,j} ∈ {−1, +1}^K`.
//!
//! Layout (the one place it is written down):
//! - `bits`: u32 words, `[Cout][m][words_per_row]`, `words_per_row = ceil(K / 32)`.
//!   Element `k` of `B_{c,j}` (K order as in `weights/mod.rs`:
//!   `k = (ci * kh + ky) * kw + kx`) is bit `k % 32` of word `k / 32` of the
//!   row `(c, j)`; a set bit means `+1`, a clear bit `−1`.
//!   Padding bits (positions `K..32 * words_per_row` of the last word) are written as 0
//!   and every reader ignores them: `to_dense` stops at K and the kernels pair them with
//!   zero inputs, so they contribute nothing even if a file sets them.
//! - `scales`: f32, `[Cout][m]`, `a_{c,j}`.

use super::{Derived, EncodingError};
use serde::{Deserialize, Serialize};

/// Binary bases plus per-(channel, base) scales; see the module docs for the layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SketchWeights {
    /// Logical weight shape `[Cout, ...]` (conv `[Cout, Cin/groups, kh, kw]`, fc `[out, in]`).
    shape: Vec<usize>,
    /// Number of binary bases per output channel (m).
    bases: usize,
    /// u32 words per binary row, `ceil(K / 32)`.
    words_per_row: usize,
    /// Bit planes `[Cout][m][words_per_row]`; stored beside the graph JSON.
    #[serde(skip)]
    bits: Vec<u32>,
    /// Scales `[Cout][m]`; stored beside the graph JSON.
    #[serde(skip)]
    scales: Vec<f32>,
    /// Kernel data derived from these weights (see `Derived`).
    #[serde(skip)]
    derived: Derived,
}

/// Words needed for `k` bits.
pub fn words_for(k: usize) -> usize {
    k.div_ceil(32)
}

impl SketchWeights {
    /// Wraps packed arrays; checks their sizes against `shape` and `bases`.
    /// Padding bits past K are cleared so the stored form is canonical.
    pub fn new(
        shape: Vec<usize>,
        bases: usize,
        mut bits: Vec<u32>,
        scales: Vec<f32>,
    ) -> Result<SketchWeights, EncodingError> {
        let k: usize = shape.iter().skip(1).product();
        let words_per_row = words_for(k);
        let mut w = SketchWeights {
            shape,
            bases,
            words_per_row,
            bits: Vec::new(),
            scales,
            derived: Derived::default(),
        };
        if !k.is_multiple_of(32)
            && words_per_row > 0
            && bits.len() == w.rows() * bases * words_per_row
        {
            let keep = (1u32 << (k % 32)) - 1;
            for row in bits.chunks_exact_mut(words_per_row) {
                row[words_per_row - 1] &= keep;
            }
        }
        w.bits = bits;
        w.check()?;
        Ok(w)
    }

    /// Packs ±1 tensors: `signs[(c * m + j) * K + k]` is element `k` of `B_{c,j}`
    /// (`true` = +1); `scales[c * m + j]` is `a_{c,j}`.
    pub fn from_signs(
        shape: Vec<usize>,
        bases: usize,
        signs: &[bool],
        scales: Vec<f32>,
    ) -> Result<SketchWeights, EncodingError> {
        let rows: usize = shape.first().copied().unwrap_or(0);
        let k: usize = shape.iter().skip(1).product();
        let wpr = words_for(k);
        if signs.len() != rows * bases * k {
            return Err(EncodingError {
                encoding: "sketch",
                shape,
                part: "signs",
                found: signs.len(),
                expected: rows * bases * k,
            });
        }
        let mut bits = vec![0u32; rows * bases * wpr];
        if k > 0 {
            for (r, row) in signs.chunks_exact(k).enumerate() {
                let out = &mut bits[r * wpr..(r + 1) * wpr];
                for (i, &s) in row.iter().enumerate() {
                    out[i / 32] |= (s as u32) << (i % 32);
                }
            }
        }
        SketchWeights::new(shape, bases, bits, scales)
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

    /// Binary bases per output channel (m).
    pub fn bases(&self) -> usize {
        self.bases
    }

    /// u32 words per binary row.
    pub fn words_per_row(&self) -> usize {
        self.words_per_row
    }

    /// Bit planes `[Cout][m][words_per_row]`.
    pub fn bits(&self) -> &[u32] {
        &self.bits
    }

    /// Words of `B_{c,j}`.
    pub fn bit_row(&self, c: usize, j: usize) -> &[u32] {
        let start = (c * self.bases + j) * self.words_per_row;
        &self.bits[start..start + self.words_per_row]
    }

    /// Scales `[Cout][m]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Element `k` of `B_{c,j}` as ±1.
    pub fn sign(&self, c: usize, j: usize, k: usize) -> f32 {
        if self.bit_row(c, j)[k / 32] >> (k % 32) & 1 == 1 {
            1.0
        } else {
            -1.0
        }
    }

    /// Dense values `Σ_j a_{c,j} B_{c,j}`, `[Cout][K]` row-major, summed in base order in f32.
    pub fn dense_data(&self) -> Vec<f32> {
        let (rows, k, m) = (self.rows(), self.row_len(), self.bases);
        let mut out = vec![0f32; rows * k];
        for c in 0..rows {
            let row = &mut out[c * k..(c + 1) * k];
            for j in 0..m {
                let a = self.scales[c * m + j];
                let bits = self.bit_row(c, j);
                for (i, v) in row.iter_mut().enumerate() {
                    *v += if bits[i / 32] >> (i % 32) & 1 == 1 {
                        a
                    } else {
                        -a
                    };
                }
            }
        }
        out
    }

    /// Bytes of the packed form: bit words plus scales, 4 bytes each.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 4 + self.scales.len() * 4
    }

    /// Mutable bit words and scales (for the loader; call `check` afterwards).
    pub fn arrays_mut(&mut self) -> (&mut Vec<u32>, &mut Vec<f32>) {
        self.derived.clear();
        (&mut self.bits, &mut self.scales)
    }

    /// Kernel data derived from these weights, built on first use (see `Derived`).
    pub fn derived(&self) -> &Derived {
        &self.derived
    }

    /// Verifies `words_per_row`, `bits` and `scales` against shape and bases.
    pub fn check(&self) -> Result<(), EncodingError> {
        let err = |part, found, expected| EncodingError {
            encoding: "sketch",
            shape: self.shape.clone(),
            part,
            found,
            expected,
        };
        let wpr = words_for(self.row_len());
        if self.words_per_row != wpr {
            return Err(err("words_per_row", self.words_per_row, wpr));
        }
        let n_bits = self.rows() * self.bases * wpr;
        if self.bits.len() != n_bits {
            return Err(err("bits", self.bits.len(), n_bits));
        }
        let n_scales = self.rows() * self.bases;
        if self.scales.len() != n_scales {
            return Err(err("scales", self.scales.len(), n_scales));
        }
        Ok(())
    }
}
