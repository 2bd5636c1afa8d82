//! Sparse (CSR) conv and fc on the CPU; the layout is in `weights/sparse.rs`.
//!
//! - Conv (`sparse_conv_flat`): direct, no im2col, on the zero-padded input viewed as
//!   one flat array per (image, group) (strided convs: split into stride phases, so
//!   that every weight reads one phase at stride 1), where every stored weight is one
//!   contiguous axpy over a tile of flat output positions held in 8 registers (64
//!   positions with AVX2 + FMA; 128 with AVX-512, whose loads are made aligned by
//!   grouping each channel's weights by their offset's place in a cache line, and maps
//!   of at most half a tile take the whole batch in one array, images innermost; see
//!   `sparse_conv_flat`); tasks are blocks of up to 8 output channels, tiles outer, then
//!   chunks of input channels small enough that a tile's input rows for one chunk stay
//!   in L1 while every channel of the block consumes its stored weights of that chunk.
//!   The flat offsets and the chunk plan are built once per layer and input geometry
//!   and kept with the weights (`weights::Derived`; 4 bytes per stored weight).
//! - Conv, any stride, for layers whose flat offsets would pass 2^32
//!   (`sparse_conv_rows`): each task owns a block of output channels
//!   of one image; for every stored weight `(k, v)` of a channel it decodes `(ci, ky, kx)`
//!   once and adds `v · x[ci]` shifted by `(ky, kx)` to the output plane, row by row,
//!   over the output columns whose input column lies inside the image.
//!   Work is `nnz · OH · OW` multiply-adds per image either way, so they beat the dense
//!   conv only below a crossover density (see below; measured against the im2col +
//!   sgemm conv that preceded the GEMM conv of `fast::gemm`).
//! - Fc: SpMV at batch 1 (rows in parallel, one dot product of the stored entries with
//!   the gathered inputs, four accumulators, index width matched once per layer); SpMM
//!   for batch > 1 on the batch transposed into panels of 8 inputs, `[panel][K][8]` (16
//!   from batch 16 with AVX-512), so that each stored weight is one register-wide
//!   multiply-add into a row's sums held in registers (four chains), panel by panel
//!   (it was an axpy into memory over `[K][N]`, 4x slower at batch 8:
//!   docs/benchmarks-archive.md, session 13).
//!
//! Crossover (where dense becomes faster), measured by the `#[ignore]` test
//! `sparse_dense_crossover` in tests/dns.rs (test profile, opt-level 2) on the 2-core
//! shared dev machine at load ~12, best of 3, batch 1, ms dense / sparse:
//!
//! | density | fc 9216->4096 | conv 3x3 64->64 56x56 pad 1 |
//! |---|---|---|
//! | 1%  | 668 / 3.9 | 29.4 / 0.55 |
//! | 5%  | 793 / 42  | 28.1 / 2.5 |
//! | 10% | 592 / 7.9 | 29.6 / 4.9 |
//! | 20% | 472 / 24  | 24.8 / 9.9 |
//! | 30% | 772 / 86  | 47.5 / 19.0 |
//! | 50% | 344 / 90  | 25.8 / 21.6 |
//!
//! The load makes single numbers noisy (±2x), but the trend is clear: the conv
//! crosses over just above 50% (sparse time grows linearly with density, dense stays
//! ~25 ms); the batch-1 fc is a GEMV that sgemm runs far below bandwidth, so sparse
//! wins even at 50%. Above 50% CSR also stops saving bytes (6 bytes per stored weight
//! with u16 indices against 4 dense, i.e. smaller only below 67%).
//!
//! Re-measured with the flat stride-1 kernel on all four ResNet-18 3x3 shapes, batch 1
//! and 8 (benches/kernels.rs, table in docs/benchmarks-archive.md, "Compressed kernels vs
//! dense"): 1.3-3x faster than dense at 30% on every shape, 0.5-0.9x at 50% on most,
//! so the conv crossover is 0.4 (`select::CONV_CROSSOVER`; `fast::run_node` runs the
//! dense path on weights decoded once above it, strided convs above
//! `select::STRIDED_CONV_CROSSOVER`). The fc stays at 0.5 (`select::FC_CROSSOVER`): 3x
//! at 50% at batch 1 (session 13's SpMM: 2x at 25% at batch 8, 1x at batch 32).
//! `compress sparse` keeps a layer dense above its crossover unless told otherwise
//! (`--all`, `--max-density`).
//!
//! Files: `rows.rs` and `flat.rs` the two conv kernels, `prep.rs` the flat kernel's
//! per-layer layout (offsets, chunk plan), `fc.rs` the SpMV and SpMM, `kernels.rs` the
//! instruction-set choice (`TileSimd`) with the portable inner loops, and `x86.rs` their
//! AVX2 and AVX-512 builds.

mod fc;
mod flat;
mod kernels;
mod prep;
mod rows;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use fc::{sparse_linear, sparse_linear_isa};
pub use rows::sparse_conv_rows;

use super::Isa;
use crate::graph::{Conv2d, Tensor};
use crate::weights::{SparseWeights, Weights};
use flat::sparse_conv_flat;
use kernels::TileSimd;

/// Sparse convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a `Weights::Sparse`
/// (other encodings are densified and run through the dense kernel). Same semantics as
/// `reference::conv2d` (padding, stride, dilation, groups).
pub fn sparse_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    sparse_conv_relu(x, conv, false)
}

/// `sparse_conv`, followed by a ReLU when `relu` (fused into the flat kernel's stores).
pub fn sparse_conv_relu(x: &Tensor, conv: &Conv2d, relu: bool) -> Tensor {
    sparse_conv_isa(x, conv, relu, Isa::default())
}

/// `sparse_conv_relu` with the vector instructions of `isa`.
pub fn sparse_conv_isa(x: &Tensor, conv: &Conv2d, relu: bool, isa: Isa) -> Tensor {
    let Weights::Sparse(w) = &conv.weight else {
        return super::conv2d_relu(x, conv, relu);
    };
    if flat_fits(x, conv, w) {
        return sparse_conv_flat(x, conv, w, relu, TileSimd::for_isa(isa));
    }
    // Only layers of tens of GiB get here.
    let mut y = sparse_conv_rows(x, conv, w);
    if relu {
        y.data.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    y
}

/// Whether the flat kernel's u32 offsets and CSR positions can address this layer: one
/// group's padded input (rows padded by up to a cache line, plus the tail) and
/// the stored weights under 2^32 (only inputs of tens of GiB are not).
fn flat_fits(x: &Tensor, conv: &Conv2d, w: &SparseWeights) -> bool {
    let shape = w.shape();
    let [pt, pl, pb, pr] = conv.pads;
    // Strided: sh x sw phases of ceil(Hp / sh) x ceil(Wp / sw).
    let rows = shape[1] * (x.shape[2] + pt + pb + conv.stride[0]);
    let pitch = x.shape[3] + pl + pr + 2 * LINE + shape[3] * conv.dilation[1];
    // Times the batch: small maps put every image in one array.
    rows.checked_mul(pitch)
        .and_then(|len| len.checked_mul(x.shape[0].max(1)))
        .is_some_and(|len| len < u32::MAX as usize - 4 * TILE_MAX)
        && w.values().len() < u32::MAX as usize
}

/// The widest tile of the flat kernel (AVX-512's).
const TILE_MAX: usize = 128;
/// Floats per 64-byte cache line, the alignment of the AVX-512 kernel's loads.
const LINE: usize = 16;
