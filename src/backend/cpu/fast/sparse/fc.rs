//! The sparse fc: SpMV at batch 1 (a gathered dot product per row), SpMM above it on
//! the batch transposed into panels of 8 or 16 inputs.

use super::kernels::{gather_dot, spmm_row, TileSimd};
use crate::backend::cpu::fast::Isa;
use crate::graph::Tensor;
use crate::weights::{Cols, SparseWeights};
use rayon::prelude::*;

/// Fc rows per task.
const ROW_BLOCK: usize = 64;

/// Sparse fully connected layer: `x: [N, K]` (any trailing shape flattened),
/// `y = x · Wᵀ + b`, `[N, out]`.
pub fn sparse_linear(x: &Tensor, w: &SparseWeights, bias: Option<&Tensor>) -> Tensor {
    sparse_linear_isa(x, w, bias, Isa::default())
}

/// `sparse_linear` with the vector instructions of `isa`.
pub fn sparse_linear_isa(x: &Tensor, w: &SparseWeights, bias: Option<&Tensor>, isa: Isa) -> Tensor {
    let (rows, k) = (w.rows(), w.row_len());
    let n = x.shape[0];
    let mut y = Tensor::zeros(vec![n, rows]);
    let cols = w.cols();
    let values = w.values();
    let b = bias.map(|t| t.data.as_slice());
    if n == 1 {
        // SpMV: gather x at the stored columns (index width matched once per layer).
        y.data
            .par_chunks_mut(ROW_BLOCK)
            .enumerate()
            .for_each(|(t, out)| {
                for (j, o) in out.iter_mut().enumerate() {
                    let r = t * ROW_BLOCK + j;
                    let range = w.row_range(r);
                    let vals = &values[range.clone()];
                    let acc = match cols {
                        Cols::U16(c) => gather_dot(vals, &c[range], &x.data),
                        Cols::U32(c) => gather_dot(vals, &c[range], &x.data),
                    };
                    *o = acc + b.map_or(0.0, |bb| bb[r]);
                }
            });
        return y;
    }
    // SpMM on the batch transposed into panels of `panel` items, `[panel][K][panel]`
    // (zero past the batch): each stored weight is one multiply-add of a contiguous
    // row of the panel into a row's accumulators, held in registers across the row.
    // Panels of 16 (one AVX-512 register) from batch 16 where the CPU has AVX-512, else 8.
    let simd = TileSimd::for_isa(isa);
    let panel = if simd == TileSimd::Avx512 && n >= 16 {
        16
    } else {
        8
    };
    let panels = n.div_ceil(panel);
    let mut xt = vec![0f32; panels * k * panel];
    xt.par_chunks_mut(k * panel)
        .enumerate()
        .for_each(|(p, dst)| {
            for (e, row) in x
                .data
                .chunks_exact(k)
                .skip(p * panel)
                .take(panel)
                .enumerate()
            {
                for (d, v) in dst[e..].iter_mut().step_by(panel).zip(row) {
                    *d = *v;
                }
            }
        });
    // Per task, ROW_BLOCK rows: `[row][panel][P]` sums. Panels outer: one panel of
    // inputs (`K·P` floats, 590 KB for fc6 at P = 16) is read by all the task's rows
    // before the next; rows outer swept every panel per row and ran fc6 at batch 64
    // out of L2.
    let blocks: Vec<Vec<f32>> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|t| {
            let (r0, r1) = (t * ROW_BLOCK, ((t + 1) * ROW_BLOCK).min(rows));
            let mut acc = vec![0f32; (r1 - r0) * panels * panel];
            for (p, xp) in xt.chunks_exact(k * panel).enumerate() {
                for (r, out) in (r0..r1).zip(acc.chunks_exact_mut(panels * panel)) {
                    let range = w.row_range(r);
                    let (vals, o) = (&values[range.clone()], &mut out[p * panel..][..panel]);
                    match cols {
                        Cols::U16(c) => spmm_row(vals, &c[range], xp, o, simd),
                        Cols::U32(c) => spmm_row(vals, &c[range], xp, o, simd),
                    }
                }
            }
            acc
        })
        .collect();
    y.data
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(bi, yb)| {
            let (p, e) = (bi / panel, bi % panel);
            for (r, yv) in yb.iter_mut().enumerate() {
                let acc = &blocks[r / ROW_BLOCK];
                *yv = acc[((r % ROW_BLOCK) * panels + p) * panel + e] + b.map_or(0.0, |bb| bb[r]);
            }
        });
    y
}
