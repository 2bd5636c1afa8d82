//! Which CPU kernel runs each node: the one table of kernel choices for the CPU backend.
//!
//! `choose` decides, for a conv or fc node, the kernel (and its parameters) from the
//! node's weights, the batch, the instruction sets the model may use (`Isa`) and
//! whether the model holds packed weights for it. The executor (`fast::run_node_in`)
//! dispatches on the choice, `cnnpack bench` names each layer's kernel by
//! `CpuChoice::name`, and `compress` asks `stores_sparse` which layers to keep as CSR,
//! so every threshold below is read in one place. Each comes with the measurement that
//! set it; the CPU-feature tests that a choice depends on stay beside the kernels whose
//! `unsafe` code they guard and are called from here.
//!
//! Conv choices do not depend on the batch and are made once per model (`Prepared`
//! stores them); fc choices are made per call, at the call's batch.

use super::fast::{self, FcKernel, Isa};
use crate::graph::{Conv2d, Linear, Node, Op};
use crate::weights::{Pow2Weights, SketchWeights, Weights};

/// Density above which the dense conv kernel is faster than the CSR one
/// (`sparse::sparse_conv`), for stride-1 convs (strided: `STRIDED_CONV_CROSSOVER`).
/// ResNet-18's 3x3 convs, batch 1 and 8, with the flat stride-1 kernel
/// (benches/kernels.rs, table in docs/benchmarks-archive.md, "Compressed kernels vs dense"):
/// 1.3-3x faster than dense at 30% on every shape, 0.5-0.9x at 50% on most. The same
/// with the AVX2 kernels and the AVX-512 ones (dense and CSR both 1.3-1.5x faster with
/// AVX-512): against the AVX-512 dense conv, the aligned CSR kernel ran 1.2-1.4x at 40%
/// and 1.0-1.2x at 50% on the 14x14-56x56 shapes at batch 1 and 8, 1.2x / 0.8x at 40%
/// on 7x7 at batch 1 / 8 (docs/benchmarks-archive.md, session 13). The first measurement (the
/// `#[ignore]` test `sparse_dense_crossover` in tests/dns.rs) is tabled in the docs of
/// `fast::sparse`.
pub const CONV_CROSSOVER: f64 = 0.4;

/// `CONV_CROSSOVER` for strided convs, which the flat kernel reads from the input split
/// into stride phases: ResNet-18's 3x3 stride-2 convs at batch 8 ran 0.86-0.99x of
/// dense at 30% and 1.24-1.34x at 10%, meeting near 25-28%; its 7x7 and AlexNet's 11x11
/// stems and the 1x1 stride-2 convs ran 1.0-1.5x at 30% (docs/benchmarks-archive.md, session
/// 13). (Before session 13 strided convs ran the row kernel, slower than dense at every
/// density tried: AlexNet's 11x11 stride-4 conv1, batch 1, 14.8 / 6.2 / 3.6 ms at 25 /
/// 10 / 5% against 2.2 ms dense; they never ran sparse.)
pub const STRIDED_CONV_CROSSOVER: f64 = 0.25;

/// Density above which the dense fc kernel is faster than `sparse::sparse_linear`
/// (fc 9216->4096, batch 1: 3x at 50%; session 13's SpMM: 2x at 25% at batch 8, 1x at
/// batch 32; see the docs of `fast::sparse`). A storage choice only (`stores_sparse`):
/// a layer stored sparse runs the CSR kernel at every density.
pub const FC_CROSSOVER: f64 = 0.5;

/// Batches the dense fc runs on the register-blocked GEMM with the inputs in panels
/// (`DENSE_GEMM_MIN_BATCH` to `DENSE_GEMM_MAX_BATCH`); below, the row-streaming GEMV
/// (`gemv_row` at batch 1, the blocked `gemv_rows` above); above, sgemm. On the 2-core
/// Xeon (fc6, 9216 -> 4096, interleaved; docs/benchmarks-archive.md, session 12), the GEMM with
/// its AVX2 micro-kernel against the GEMV over three runs: 13.9-14.6 ms against
/// 13.9-15.1 at batch 16, 20.6-20.9 against 23.5-23.9 at 32, 36.0-36.8 against
/// 46.7-49.9 at 64. Over two runs: slower at 12 (13.9-14.7 against 11.7-12.7), and
/// slower than sgemm (which has an AVX-512 kernel there) at 128 (69.7-70.9 against
/// 52.2-64.6).
pub const DENSE_GEMM_MIN_BATCH: usize = 16;
/// See `DENSE_GEMM_MIN_BATCH`.
pub const DENSE_GEMM_MAX_BATCH: usize = 64;

/// The largest batch the sketch fc runs on the AVX-512 lane masks (`sketch_masks`);
/// larger ones decode rows into the GEMM. fc6 m = 2 against decoded rows (three runs):
/// 2.9x faster at batch 2, 2.1x at 4, 1.1x at 16, even at 32 and 64. At batch 1 the
/// AVX2 3-input tables (`sketch_triplets`) beat the masks (fc6 m = 2: 0.87-1.03 ms
/// against 1.71-1.98 ms), so only an explicit `FcKernel::Avx512` runs the masks there.
pub const SKETCH_MASKS_MAX_BATCH: usize = 16;

/// Smallest batch at which the sketch fc runs on rows decoded into the GEMM's panels
/// (`gemm::fc_decoded`) rather than the blocked GEMV (on AVX2, or on AVX-512 past the
/// masks kernel's batches). fc6, m = 2, on the Xeon with the AVX2 kernels and the
/// GEMM's AVX2 micro-kernel (interleaved, ms): batch 16, 15.1-19.5 against 14.6-15.7 (a
/// tie); 32, 22.9-25.8 against 27.3-31.4; 2-8: 2x slower (the batch is padded to 16
/// columns).
pub const SKETCH_GEMM_MIN_BATCH: usize = 16;

/// The largest batch the AVX2 pow2 kernel runs on the codes (`vpshufb` byte tables);
/// larger ones decode rows into the GEMM's panels. fc6 on the Xeon, against decoding
/// rows into the blocked GEMV (session 11, three runs; each pass decodes its rows
/// again): 1.95-2.11x faster at batch 2, 1.32-1.42x at 4, 1.23-1.25x at 6, 1.07-1.11x
/// at 8, 0.86-0.96x at 16. Against the GEMM (two runs, ms): 10.2-11.0 against
/// 10.7-11.5 at 9, 10.0 against 11.5-11.6 at 10, 12.0-12.3 against 11.3-11.4 at 12.
pub const POW2_BYTES_MAX_BATCH: usize = 10;

/// The largest batch `Auto` runs the pow2 fc on the codes with AVX-512 (`vpermt2ps`);
/// above it, rows are decoded into the GEMM's panels. fc6 on the Xeon (ms, two runs):
/// at 64, 27.8-29.9 against 35.9-36.1 decoded; above, the decoded rows win: 67.3-69.5
/// against 71.1-72.9 at 128, 130-133 against 157-164 at 256.
pub const POW2_PERM32_MAX_BATCH: usize = 64;

/// The kernel of a conv node. Made once per model (the batch does not enter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvChoice {
    /// CSR weights, `sparse::sparse_conv_isa` (at most the crossover density).
    Csr,
    /// The model's packed weights, `conv2d_packed` (dense, or compressed decoded first).
    Packed,
    /// Dense weights in place, `conv2d_relu` (not packed: few channels per group, no
    /// AVX2).
    InPlace,
    /// A depthwise conv (one input channel per group), `depthwise_conv2d` on the dense
    /// weights (decoded once per model when compressed).
    Depthwise,
    /// Compressed weights decoded to dense f32 (once per model, or per call without
    /// one), then `conv2d_relu`.
    DecodedInPlace,
}

impl ConvChoice {
    /// The kernel's name, as `cnnpack bench` reports it.
    pub fn name(self) -> &'static str {
        match self {
            ConvChoice::Csr => "sparse_conv",
            ConvChoice::Packed => "conv2d_packed",
            ConvChoice::InPlace => "conv2d",
            ConvChoice::Depthwise => "depthwise_conv2d",
            ConvChoice::DecodedInPlace => "decoded+conv2d",
        }
    }
}

/// The kernel of a dense fc (`dense::linear_as`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenseFc {
    /// Batch 1: one streaming dot product per weight row (`gemv_row`; AVX2+FMA).
    GemvRow,
    /// Batch 2 to 15: the blocked GEMV, several rows against passes of inputs
    /// (`gemv_rows`; AVX2+FMA).
    GemvRows,
    /// The register-blocked GEMM on the weights in place and the inputs in panels
    /// (AVX2+FMA; its AVX-512 micro-kernel when `avx512`).
    Gemm {
        /// The panels' AVX-512 micro-kernel.
        avx512: bool,
    },
    /// `matrixmultiply::sgemm` (large batches, or a CPU without AVX2+FMA).
    Sgemm,
}

/// The kernel of a pow2 (INQ) fc (`pow2::pow2_linear_as`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pow2Fc {
    /// Row dots on the codes through a 32-entry f32 table, `vpermt2ps` (AVX-512F).
    Perm32,
    /// Row dots on the codes through `vpshufb` byte tables (AVX2+FMA), up to
    /// `POW2_BYTES_MAX_BATCH`.
    BytesDots,
    /// Rows decoded by the byte tables into the GEMM's panels (AVX2+FMA).
    BytesGemm {
        /// The GEMM's AVX-512 micro-kernel.
        avx512: bool,
    },
    /// Arithmetic (or table) decode of each row, then dots: no code kernel applies
    /// (no AVX2, bits outside 2-5, or subnormal values for the byte tables).
    Decode,
}

/// The kernel of a sketch fc (`sketch::sketch_linear_as`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SketchFc {
    /// Each 16 bits of a binary row as a lane mask (AVX-512F, 1-4 bases).
    Masks,
    /// Rows decoded into the GEMM's panels (AVX2+FMA).
    DecodeGemm {
        /// The GEMM's AVX-512 micro-kernel.
        avx512: bool,
    },
    /// Rows decoded, then the blocked GEMV against the batch (AVX2+FMA).
    DecodeGemv,
    /// Batch 1: 3-input tables, 8 output rows at a time (AVX2).
    Triplets,
    /// The portable masked kernel.
    Masked,
}

/// The kernel of an fc node, by its weights' encoding. Made per call (the batch enters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FcChoice {
    /// Dense weights.
    Dense(DenseFc),
    /// Power-of-two codes.
    Pow2(Pow2Fc),
    /// Binary bases and scales.
    Sketch(SketchFc),
    /// CSR weights: `sparse::sparse_linear_isa` (SpMV at batch 1, SpMM above).
    Sparse,
}

impl FcChoice {
    /// The kernel's name, as `cnnpack bench` reports it.
    pub fn name(self) -> &'static str {
        match self {
            FcChoice::Dense(DenseFc::GemvRow | DenseFc::GemvRows) => "linear (gemv)",
            FcChoice::Dense(DenseFc::Gemm { .. }) => "linear (gemm)",
            FcChoice::Dense(DenseFc::Sgemm) => "linear (sgemm)",
            FcChoice::Pow2(Pow2Fc::Perm32) => "pow2_linear (avx512)",
            FcChoice::Pow2(Pow2Fc::BytesDots) => "pow2_linear (avx2)",
            FcChoice::Pow2(Pow2Fc::BytesGemm { .. }) => "pow2_linear (decode+gemm)",
            FcChoice::Pow2(Pow2Fc::Decode) => "pow2_linear (arithmetic decode)",
            FcChoice::Sketch(SketchFc::Masks) => "sketch_linear (avx512 masks)",
            FcChoice::Sketch(SketchFc::DecodeGemm { .. }) => "sketch_linear (decode+gemm)",
            FcChoice::Sketch(SketchFc::DecodeGemv) => "sketch_linear (decode+gemv)",
            FcChoice::Sketch(SketchFc::Triplets) => "sketch_linear (avx2 triplets)",
            FcChoice::Sketch(SketchFc::Masked) => "sketch_linear (masked)",
            FcChoice::Sparse => "sparse_linear",
        }
    }
}

/// The kernel of a node that has a weight kernel (conv, fc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuChoice {
    /// A conv node.
    Conv(ConvChoice),
    /// An fc node.
    Fc(FcChoice),
}

impl CpuChoice {
    /// The kernel's name, as `cnnpack bench` reports it per layer.
    pub fn name(self) -> &'static str {
        match self {
            CpuChoice::Conv(c) => c.name(),
            CpuChoice::Fc(f) => f.name(),
        }
    }
}

/// The kernel `node` runs at batch `batch` on the kernels of `isa`, `packed` telling
/// whether the model holds packed weights for it (conv); `None` for ops without a
/// weight kernel (they run their fast or reference kernel, one per op).
pub fn choose(node: &Node, batch: usize, isa: Isa, packed: bool) -> Option<CpuChoice> {
    match &node.op {
        Op::Conv(c) => Some(CpuChoice::Conv(conv(c, packed))),
        Op::Linear(l) => Some(CpuChoice::Fc(fc(l, batch, isa))),
        _ => None,
    }
}

/// The kernel of conv `c`, `packed` telling whether the model holds packed weights for
/// it (`packs` says which convs a model packs).
pub fn conv(c: &Conv2d, packed: bool) -> ConvChoice {
    if runs_csr(c) {
        ConvChoice::Csr
    } else if packed {
        ConvChoice::Packed
    } else if crate::backend::cpu::fast::is_depthwise(c) {
        ConvChoice::Depthwise
    } else if matches!(c.weight, Weights::Dense(_)) {
        ConvChoice::InPlace
    } else {
        // Sketched, pow2 and (above the crossover) sparse convs run the dense GEMM conv
        // on weights decoded once per model (`Prepared`): on this project's 2-core x86
        // machine the dense GEMM beat every bit and code kernel measured for conv (the
        // bit-masked `sketch::sketch_conv` took 16.7 ms for a 3x3 64->64 conv at 28x28
        // with m = 3 against ~2 ms for sgemm; benches/kernels.rs and docs/benchmarks-archive.md
        // have the full tables), and decoding on every call made a sketched ResNet-18
        // 3.7x slower than dense at batch 1. Batch-1 fc is memory-bound and keeps the
        // compressed kernels.
        ConvChoice::DecodedInPlace
    }
}

/// Whether a model packs conv `c`'s weights for `conv2d_packed` (it then runs
/// `ConvChoice::Packed` where the CPU has AVX2+FMA): every conv that does not run CSR
/// and whose group of output channels fills the packed kernel's 16-channel panels to at
/// least 80%: the panels past a group's last channel are computed as zeros, so a
/// depthwise conv (1 channel per group) would do 16x its work there, where the in-place
/// kernel's 6-row tiles waste at most 5 rows per group. ResNet-18 and SqueezeNet ran
/// 20-29% faster at batch 1 packed than on the in-place kernel (docs/benchmarks-archive.md,
/// session 6).
pub fn packs(c: &Conv2d) -> bool {
    let cout_g = c.out_channels() / c.groups.max(1);
    !runs_csr(c) && cout_g.next_multiple_of(16) * 4 <= cout_g * 5
}

/// Whether conv `c` runs the CSR kernel: sparse weights at most the crossover density
/// for its stride (`conv_crossover`); every other conv runs a dense GEMM kernel.
pub fn runs_csr(c: &Conv2d) -> bool {
    matches!(&c.weight, Weights::Sparse(w) if w.density() <= conv_crossover(c))
}

/// The density up to which conv `c` runs (and is stored) sparse: `CONV_CROSSOVER` at
/// stride 1, `STRIDED_CONV_CROSSOVER` otherwise.
pub fn conv_crossover(c: &Conv2d) -> f64 {
    if c.stride == [1, 1] {
        CONV_CROSSOVER
    } else {
        STRIDED_CONV_CROSSOVER
    }
}

/// The density up to which a conv or fc layer is stored sparse by default (`compress
/// sparse`, `compress dns`): where the CSR kernel is the faster one. `None` for other ops.
pub fn sparse_crossover(op: &Op) -> Option<f64> {
    match op {
        Op::Conv(c) => Some(conv_crossover(c)),
        Op::Linear(_) => Some(FC_CROSSOVER),
        _ => None,
    }
}

/// Whether a conv or fc layer of weight density `density` is stored sparse by default:
/// a conv stored so then runs the CSR kernel (`runs_csr`), an fc runs it at any density.
pub fn stores_sparse(op: &Op, density: f64) -> bool {
    sparse_crossover(op).is_some_and(|crossover| density <= crossover)
}

/// The kernel of fc `l` at batch `batch` on the kernels of `isa`.
pub fn fc(l: &Linear, batch: usize, isa: Isa) -> FcChoice {
    match &l.weight {
        Weights::Dense(t) => {
            FcChoice::Dense(dense_fc(batch, t.shape.get(1).copied().unwrap_or(0), isa))
        }
        Weights::Pow2(w) => FcChoice::Pow2(pow2_fc(w, batch, isa.fc_kernel())),
        Weights::Sketch(w) => FcChoice::Sketch(sketch_fc(w, batch, isa.fc_kernel())),
        Weights::Sparse(_) => FcChoice::Sparse,
    }
}

/// The dense fc kernel at batch `n` for inputs of `k` features (see
/// `DENSE_GEMM_MIN_BATCH`): with AVX2+FMA, 1 the streaming GEMV, 2-15 the blocked GEMV,
/// 16-64 the GEMM (its AVX-512 micro-kernel where `isa` allows); otherwise sgemm.
pub fn dense_fc(n: usize, k: usize, isa: Isa) -> DenseFc {
    if k == 0 || !fast::gemv_supported() {
        DenseFc::Sgemm
    } else if n == 1 {
        DenseFc::GemvRow
    } else if n < DENSE_GEMM_MIN_BATCH {
        DenseFc::GemvRows
    } else if n <= DENSE_GEMM_MAX_BATCH {
        DenseFc::Gemm {
            avx512: isa.avx512(),
        }
    } else {
        DenseFc::Sgemm
    }
}

/// The pow2 fc kernel for `w` at batch `n` with `kernel`: AVX-512 on the codes up to
/// `POW2_PERM32_MAX_BATCH`, AVX2 on the codes up to `POW2_BYTES_MAX_BATCH` and on rows
/// decoded into the GEMM's panels past it; the arithmetic decoder where the code kernel
/// asked for does not apply (`pow2::code_kernel_applies`: CPU features, 2 to 5 bits, no
/// subnormal values for the byte tables).
pub fn pow2_fc(w: &Pow2Weights, n: usize, kernel: FcKernel) -> Pow2Fc {
    let perm32 = n <= POW2_PERM32_MAX_BATCH
        && match kernel {
            FcKernel::Auto => fast::avx512_detected(),
            FcKernel::Avx2 => false,
            FcKernel::Avx512 => true,
        };
    if !fast::pow2::code_kernel_applies(w, perm32) {
        Pow2Fc::Decode
    } else if perm32 {
        Pow2Fc::Perm32
    } else if n <= POW2_BYTES_MAX_BATCH {
        Pow2Fc::BytesDots
    } else {
        // The inputs go into the GEMM's panels, for its AVX-512 micro-kernel unless the
        // AVX2 kernels were asked for.
        Pow2Fc::BytesGemm {
            avx512: kernel != FcKernel::Avx2,
        }
    }
}

/// The sketch fc kernel for `w` at batch `n` with `kernel`: AVX-512 masks at batch 2-16
/// (`Avx512`: 0-16; 1-4 bases); with AVX2+FMA rows decoded into the GEMM's panels from
/// `SKETCH_GEMM_MIN_BATCH`, into the blocked GEMV at 2-15, the 3-input tables at batch
/// 1; otherwise (and for an explicit `Avx512` on a CPU without it) the masked kernel.
pub fn sketch_fc(w: &SketchWeights, n: usize, kernel: FcKernel) -> SketchFc {
    let masks = kernel != FcKernel::Avx2 && fast::sketch_masks_supported(w);
    // An explicit `Avx512` on a CPU without it runs the portable kernel.
    let avx2 = kernel != FcKernel::Avx512 || FcKernel::Avx512.supported();
    let masks_batch = n <= SKETCH_MASKS_MAX_BATCH && (n >= 2 || kernel == FcKernel::Avx512);
    let decoded_rows = avx2 && fast::gemv_supported();
    if masks && masks_batch {
        SketchFc::Masks
    } else if decoded_rows && n >= SKETCH_GEMM_MIN_BATCH {
        SketchFc::DecodeGemm {
            avx512: kernel != FcKernel::Avx2,
        }
    } else if decoded_rows && n >= 2 {
        SketchFc::DecodeGemv
    } else if avx2 && n == 1 && fast::sketch_triplets::supported() {
        SketchFc::Triplets
    } else {
        SketchFc::Masked
    }
}
