//! Binary-weight (sketch) fc and conv on the CPU, with additions and subtractions only.
//!
//! For an input row `x` (an fc input row or a conv im2col patch, K long, in the K order
//! of `weights/mod.rs`) and a binary row `B ∈ {±1}^K`:
//! `x·B = 2·P − S` with `S = Σ_k x_k` (once per input row, shared by every output
//! channel and base) and `P = Σ_{k: bit set} x_k`. Then `y_o = b_o + Σ_j a_{o,j}(2P_{o,j} − S)`.
//! Three ways to get P:
//! - masked (`sketch_linear`, `sketch_conv`): for each word, every input is ANDed with
//!   an all-ones/all-zeros lane mask derived from its bit and added; vectorises, no
//!   multiply by ±1.
//! - LUT (`*_lut`): for each group of 8 inputs all 256 subset sums are built once per
//!   input row; P is then one table lookup and add per byte of the bit row.
//! - associative (`*_assoc`, the paper's CPU scheme): a layer's binary rows are ordered
//!   along a minimum spanning tree over Hamming distance (rooted at the all-clear row,
//!   whose P is 0), and each row's P is its parent's plus the inputs whose bit turns on
//!   minus those whose bit turns off; cost ∝ the tree's total Hamming distance.
//!   `AssocPlan::pure` is that scheme; `AssocPlan::new` (used by `*_assoc`) is a hybrid
//!   whose root edge means "compute the row with the masked kernel" at a cost of K/8
//!   flips, so it only takes tree edges that beat the vectorised kernel.
//!
//! Default (`sketch_linear`, `sketch_conv`): the masked kernel, AVX2 build chosen at run
//! time where the CPU has it. On the 2-core development machine it beat the 8-input
//! LUT above on most shapes (see the `timing` test in tests/sketch.rs); the associative
//! scheme wins only when rows are within a few percent of each other in Hamming
//! distance. The batch-1 fc with AVX2 uses a different table kernel, with 3-input
//! tables looked up 8 output rows at a time (`sketch_triplets`): 5.7x dense on fc6 at
//! m = 2 where the masked kernel made 2.6x (docs/benchmarks-archive.md). The fc at batch 2-16
//! with AVX-512 turns each 16 bits into a lane mask (`sketch_masks`); other batches with
//! AVX2 decode rows into the blocked GEMV (2-15) or the GEMM's panels (16 and more;
//! `sketch_linear_with` lists the choice).
//!
//! Input rows are copied into buffers padded with zeros to `32 · words_per_row`, so the
//! padding bits of the last word meet zero inputs and contribute nothing to P, and the
//! conv's spatial zero padding contributes zero to both P and S, as in the dense conv.
//!
//! Preconditions (shapes agreeing with the weights, `Weights::Sketch` in the conv) are
//! the planner's invariants, checked by shape inference before a kernel runs; a
//! violation panics with a message naming it.
//!
//! Files: `masked.rs` the masked kernel (the fallback every choice can take),
//! `decode.rs` the AVX2 row decode for the GEMV and the GEMM, `dev.rs` the kernels no
//! selection picks (the conv, LUT and associative ones). The AVX-512 masks and the AVX2
//! 3-input tables are the families beside this one (`sketch_masks`, `sketch_triplets`).

mod decode;
mod dev;
mod masked;

pub use dev::{
    sketch_conv, sketch_conv_assoc, sketch_conv_assoc_with, sketch_conv_lut, sketch_linear_assoc,
    sketch_linear_assoc_with, sketch_linear_lut, AssocPlan,
};

use super::gemm::InputPanels;
use super::sketch_masks as masks;
use super::sketch_triplets as triplets;
use super::FcKernel;
use crate::backend::cpu::select::{self, SketchFc};
use crate::graph::Tensor;
use crate::weights::SketchWeights;
use decode::{decode_row, decode_span};
use rayon::prelude::*;

/// `y = x Wᵀ + b` for `x: [N, K]` and sketch weights `[O, K]`; returns `[N, O]`. Runs
/// `sketch_linear_with` and the `Auto` kernel.
pub fn sketch_linear(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    sketch_linear_with(x, w, bias, FcKernel::Auto)
}

/// `sketch_linear` with the kernel chosen (for tests and benches that compare them); a
/// kernel this CPU lacks falls back to the portable masked kernel.
///
/// - AVX-512F, batch 2-16 (`Avx512`: 1-16), m ≤ 4 (`sketch_masks`): each 16 bits of a
///   binary row are a lane mask that builds 16 weights from the broadcast scales; 3
///   rows (2 for m > 2) against passes of up to 4 inputs.
/// - AVX2, batch 1: the 3-input table kernel (`triplets`; additions only, memory
///   traffic about `m/32` of dense).
/// - AVX2+FMA, batch 2-15 (and AVX-512 past its limits): each weight row is decoded
///   once into f32 (`Σ_j ±a_j`, a shift and a blend per 8 weights and base) and dotted
///   with every input row by the blocked GEMV, which beats `N` masked passes over the
///   bits (fc6 at batch 8: see docs/benchmarks-archive.md).
/// - AVX2+FMA, batch 16 and more (`select::SKETCH_GEMM_MIN_BATCH`, where the masks
///   kernel does not run): the rows decoded the same way, per K block, into the GEMM's
///   panels.
/// - Otherwise the masked kernel.
///
/// Runs `sketch_linear_as` with `select::sketch_fc`'s variant (the batch limits and
/// their measurements are there).
pub fn sketch_linear_with(
    x: &Tensor,
    w: &SketchWeights,
    bias: Option<&Tensor>,
    kernel: FcKernel,
) -> Tensor {
    let choice = if x.shape.len() == 2 && x.shape[1] == w.row_len() {
        select::sketch_fc(w, x.shape[0], kernel)
    } else {
        SketchFc::Masked
    };
    sketch_linear_as(x, w, bias, choice)
}

/// `sketch_linear` on the kernel `choice` (`select::sketch_fc` decides it). A kernel
/// this CPU lacks, or an input whose shape does not match the weights (reported by the
/// masked kernel), runs the portable masked kernel.
pub fn sketch_linear_as(
    x: &Tensor,
    w: &SketchWeights,
    bias: Option<&Tensor>,
    choice: SketchFc,
) -> Tensor {
    if x.shape.len() == 2 && x.shape[1] == w.row_len() {
        let n = x.shape[0];
        match choice {
            SketchFc::Masks if masks::supported(w) => {
                return masks::sketch_linear_masks(x, w, bias);
            }
            SketchFc::DecodeGemm { avx512 } if decoded_rows_supported() => {
                let k = w.row_len();
                let panels = InputPanels::new(&x.data, n, k, k, avx512);
                return super::gemm::fc_decoded(&panels, w.rows(), bias, |c, k0, kc, dst| {
                    decode_span(w, c, k0..k0 + kc, dst)
                });
            }
            SketchFc::DecodeGemv if decoded_rows_supported() => {
                return linear_decoded_rows(x, w, bias);
            }
            SketchFc::Triplets if triplets::supported() => {
                return triplets::sketch_linear_triplets(x, w, bias);
            }
            _ => {}
        }
    }
    masked::linear_masked(x, w, bias)
}

/// AVX2+FMA (the GEMV's requirement; the row decode needs AVX2 too).
fn decoded_rows_supported() -> bool {
    super::dense::gemv_supported()
}

/// Output rows per task of `linear_decoded_rows`.
const DECODED_ROW_BLOCK: usize = 32;

/// `sketch_linear` for batches of 2 or more: decode a row, GEMV it against the batch.
fn linear_decoded_rows(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    let (n, k, o) = (x.shape[0], w.row_len(), w.rows());
    let stride = 32 * w.words_per_row();
    let blocks: Vec<Vec<f32>> = (0..o)
        .step_by(DECODED_ROW_BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|r0| {
            let rows = r0..(r0 + DECODED_ROW_BLOCK).min(o);
            super::dense::decoded_rows_dots(rows, stride, &x.data, n, k, |c, row| {
                decode_row(w, c, row)
            })
        })
        .collect();
    super::layout::transpose_blocks(&blocks, DECODED_ROW_BLOCK, n, o, bias)
}
