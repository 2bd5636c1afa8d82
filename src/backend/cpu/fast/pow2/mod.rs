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
//! - conv (`pow2_conv`, in `dev.rs`): per (image, group) an im2col matrix `[K][OH·OW]`;
//!   each output channel's row is decoded and its nonzero weights are accumulated as
//!   `y += w_k · col_k` (zero codes, common after INQ, are skipped). The CPU executor
//!   (`fast::run_node`) does not use it: it runs pow2 convs through the dense GEMM conv on
//!   weights decoded once per model (`fast::Prepared`), which was faster on every ResNet-18
//!   shape measured (benches/kernels.rs, docs/benchmarks-archive.md).
//!
//! Preconditions (shapes agreeing with the weights, `Weights::Pow2` in the conv) are the
//! planner's invariants, checked by shape inference; a violation panics naming it.
//!
//! Files: `decode.rs` the decoders that make f32 rows (`Decoder`: arithmetic or table,
//! with its AVX2 builds), `lut.rs` the code kernels' tables and layouts (`CodeLut`:
//! the input in lane order, 3- and 5-bit codes re-laid out) and their dispatch,
//! `avx2.rs` and `avx512.rs` the code kernels, `dev.rs` the conv no selection picks.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod decode;
mod dev;
mod lut;

pub use decode::decode_row;
pub use dev::pow2_conv;
pub(crate) use lut::code_kernel_applies;

use super::gemm::{self, InputPanels};
use super::FcKernel;
use crate::backend::cpu::select::{self, Pow2Fc};
use crate::graph::Tensor;
use crate::weights::Pow2Weights;
use decode::Decoder;
use lut::{CodeLut, LutKind};
use rayon::prelude::*;

/// Output rows per fc task.
const O_TILE: usize = 8;

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

/// How far ahead of its loads `row_dot_bytes` and `rows_dots_perm32` prefetch codes: 512
/// words (2 KiB, into
/// the next row near a row's end). The rows of a tile are contiguous but the 8-row
/// tiles are spread over the threads, and each thread's stream jumps at every tile; on
/// the 2-core VM fc6 4-bit at batch 1 ran 8% faster on average with it (5 of 6
/// interleaved runs, -5% to +15%; 1,024 words measured the same).
const CODE_PREFETCH_WORDS: usize = 512;
