//! Which GPU kernel runs each conv and fc node: the one table of kernel choices for the
//! GPU backend (the CPU's is `backend::cpu::select`).
//!
//! `choose` decides, for a conv or fc node, the kernel family and its parameters from the
//! node's weights, its input shape, what the adapter is (`DeviceInfo`: software or not,
//! its uniform-buffer limit) and the model's `GpuOptions`. `GpuModel` stores the choice on
//! each step and its encoder (`encode::encode`) dispatches on it; the kernel name
//! `cnnpack bench` prints (`GpuModel::step_kernels`) is the choice's `name()`, plus the
//! reduce kernel's when the encoder split K (split counts depend on how the weights are
//! chunked into bindings, so the encoders work them out, with the rules below).
//!
//! Every GPU threshold lives here once, with the measurement that set it. Per-dispatch
//! quantities that depend on the chunking (`gemm_splits`, `fc_slices_wanted`) are
//! functions here that the encoders call.
//!
//! Other ops have one kernel each (pools, elementwise, softmax, copies:
//! `encode::encode_stateless`). The GPU trainer (`gpu/train`) runs its own forward kernels
//! for layers with parameters (the tiled conv, whose layout its backward kernels share;
//! BatchNorm with batch statistics) and calls `encode::encode_stateless` for the rest.

use super::context::GpuContext;
use crate::graph::{Conv2d, Linear};
use crate::tuning::{CompressedConv, ConvKernel, GpuOptions, Pow2Fc};
use crate::weights::{SparseWeights, Weights};

/// What kernel selection needs to know about an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// A CPU adapter (lavapipe, SwiftShader, WARP): its kernels are CPU code, where a
    /// uniform load is cheap and per-lane gathers are scalar loops.
    pub software: bool,
    /// `max_uniform_buffer_binding_size` in bytes.
    pub max_uniform_binding: u64,
}

impl DeviceInfo {
    /// The adapter of `ctx`.
    pub fn of(ctx: &GpuContext) -> DeviceInfo {
        DeviceInfo {
            software: ctx.is_software(),
            max_uniform_binding: ctx.limits().max_uniform_buffer_binding_size,
        }
    }
}

/// The dense conv kernels (also what compressed weights decoded at upload run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseConv {
    /// `conv_fwd_direct`: one invocation per output, for fewer than `DIRECT_BELOW`
    /// output channels per group (depthwise).
    Direct,
    /// `conv_fwd_ubo`: weights through 64 KiB uniform buffers, 32 output channels per
    /// invocation; the CPU-adapter kernel.
    Uniform,
    /// `conv_fwd_tiled`: 64x64 implicit-GEMM tiles, weights as stored.
    Tiled,
    /// `conv_gemm` (`wide`: `conv_gemm_wide`, 128-pixel tiles): transposed weights, loads
    /// overlapped, K split across workgroups (`conv_gemm_reduce` sums the slices) by
    /// `gemm_splits`, or into `split_k` slices when forced.
    Gemm {
        /// 64x128 tiles.
        wide: bool,
        /// Forced K slices (`ConvKernel::GemmSplits`, `GpuOptions::conv_split_k`).
        split_k: Option<usize>,
    },
}

impl DenseConv {
    /// The shader entry point.
    pub fn entry(self) -> &'static str {
        match self {
            DenseConv::Direct => "conv_fwd_direct",
            DenseConv::Uniform => "conv_fwd_ubo",
            DenseConv::Tiled => "conv_fwd_tiled",
            DenseConv::Gemm { wide: false, .. } => "conv_gemm",
            DenseConv::Gemm { wide: true, .. } => "conv_gemm_wide",
        }
    }
}

/// The kernel of a conv node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvChoice {
    /// Dense f32 weights: the layer's own, or (`decoded`) its compressed weights decoded
    /// once at upload.
    Dense {
        /// The kernel.
        kernel: DenseConv,
        /// Compressed weights decoded to f32 at upload.
        decoded: bool,
    },
    /// `sketch_conv` on the packed bits.
    Sketch,
    /// `sparse_conv` on the CSR rows.
    Sparse,
    /// `pow2_conv` on the b-bit codes.
    Pow2,
}

/// The kernel of an fc (Linear) node at one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FcChoice {
    /// Dense, batch 1: `linear_fwd_gemv` (one workgroup per row).
    Gemv,
    /// Dense, batch 2 to `GEMV_BELOW - 1`: `linear_fwd_gemv8` (per row and 8 items).
    Gemv8,
    /// Dense, batch >= `GEMV_BELOW`: the conv kernels on a 1x1 "conv" over
    /// `[batch, k, 1, 1]` (`Tiled` or `Gemm`).
    Conv(DenseConv),
    /// Sketch, batch < `SKETCH_GEMV_BELOW`: `sketch_fc` (split K, `fc_reduce` sums the
    /// slices) after `sketch_gather` fills the input window.
    SketchGemv,
    /// Sketch, larger batches: `sketch_conv` on a 1x1 conv.
    SketchConv,
    /// `sparse_fc` with `2^lanes_log2` lanes per CSR row.
    Sparse {
        /// log2 of the lanes per row (0..=8).
        lanes_log2: u32,
    },
    /// `pow2_fc_lut`: the table-decode GEMV generated per bit width and shape.
    Pow2Lut {
        /// Output rows per workgroup (4, 8, 16, 32 or 64).
        rows: usize,
        /// Code quads loaded ahead (1..=3).
        prefetch: usize,
    },
    /// `pow2_fc`: the window kernel (split K, `fc_reduce` sums the slices) after
    /// `sketch_gather` fills the input window.
    Pow2Window,
}

/// The kernel chosen for one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuChoice {
    /// A conv node.
    Conv(ConvChoice),
    /// An fc node.
    Fc(FcChoice),
}

impl GpuChoice {
    /// The entry point of the step's main dispatches (the first kernel the step runs;
    /// `sketch_gather` runs first for `SketchGemv` and `Pow2Window` and is named in
    /// `entries`).
    pub fn entry(self) -> &'static str {
        match self {
            GpuChoice::Conv(ConvChoice::Dense { kernel, .. }) => kernel.entry(),
            GpuChoice::Conv(ConvChoice::Sketch) | GpuChoice::Fc(FcChoice::SketchConv) => {
                "sketch_conv"
            }
            GpuChoice::Conv(ConvChoice::Sparse) => "sparse_conv",
            GpuChoice::Conv(ConvChoice::Pow2) => "pow2_conv",
            GpuChoice::Fc(FcChoice::Gemv) => "linear_fwd_gemv",
            GpuChoice::Fc(FcChoice::Gemv8) => "linear_fwd_gemv8",
            GpuChoice::Fc(FcChoice::Conv(kernel)) => kernel.entry(),
            GpuChoice::Fc(FcChoice::SketchGemv) => "sketch_fc",
            GpuChoice::Fc(FcChoice::Sparse { .. }) => "sparse_fc",
            GpuChoice::Fc(FcChoice::Pow2Lut { .. }) => "pow2_fc_lut",
            GpuChoice::Fc(FcChoice::Pow2Window) => "pow2_fc",
        }
    }

    /// Every entry point the step may dispatch, in the order the encoder records them:
    /// the main kernel, plus the gather before it and the reduce after it where the
    /// family has them (whether a reduce runs depends on the K split).
    pub fn entries(self) -> Vec<&'static str> {
        let main = self.entry();
        match self {
            GpuChoice::Conv(ConvChoice::Dense {
                kernel: DenseConv::Gemm { .. },
                ..
            })
            | GpuChoice::Fc(FcChoice::Conv(DenseConv::Gemm { .. })) => {
                vec![main, "conv_gemm_reduce"]
            }
            GpuChoice::Fc(FcChoice::SketchGemv | FcChoice::Pow2Window) => {
                vec!["sketch_gather", main, "fc_reduce"]
            }
            _ => vec![main],
        }
    }

    /// The name `cnnpack bench` prints: the main entry point, with `decoded+` in front
    /// when compressed weights run on the dense kernels.
    pub fn name(self) -> String {
        match self {
            GpuChoice::Conv(ConvChoice::Dense {
                kernel,
                decoded: true,
            }) => format!("decoded+{}", kernel.entry()),
            _ => self.entry().to_string(),
        }
    }
}

/// The kernel of a conv or fc node whose input has shape `input` (NCHW or `[batch, k]`),
/// on `device` with `options`; `None` for other ops (they have one kernel each).
pub fn choose(
    op: &crate::graph::Op,
    input: &[usize],
    device: &DeviceInfo,
    options: &GpuOptions,
) -> Option<GpuChoice> {
    match op {
        crate::graph::Op::Conv(c) => Some(GpuChoice::Conv(conv(c, device, options))),
        crate::graph::Op::Linear(l) => {
            let batch = input.first().copied().unwrap_or(1);
            Some(GpuChoice::Fc(fc(l, batch, device, options)))
        }
        _ => None,
    }
}

/// The GPU trainer's dense conv and fc forward kernel, whatever the layer: its backward
/// kernels (`gpu/train/backward.rs`) read the activations and weights in the tiled
/// kernel's layout, and one kernel keeps the trainer's results independent of the
/// adapter's inference choices. (Training throughput on lavapipe and GPUs is in
/// docs/benchmarks.md; a faster forward would need its backward counterparts.)
pub const TRAINER_CONV: DenseConv = DenseConv::Tiled;

/// Below this many output channels per group the 64-row tile of the tiled and GEMM
/// kernels is mostly idle and `conv_fwd_direct` runs instead (depthwise: 1), whatever
/// `GpuOptions::conv_kernel` asks.
pub const DIRECT_BELOW: usize = 16;

/// f32 values in one weight uniform buffer of `conv_fwd_ubo` (64 KiB, the WebGPU default
/// `max_uniform_buffer_binding_size`): a 32-channel block of one input channel's taps
/// must fit.
pub const UBO_FLOATS: usize = 16384;

/// The kernel of conv `c`.
///
/// Compressed weights run their own kernels (`CompressedConv::Native`) or dense f32
/// decoded at upload (`Decoded`); `Auto` decodes everything but a sketch of at most 2
/// bases on a software adapter. On lavapipe the sketch kernel beat the dense one at m = 1
/// and 2 (3x3 64->64, 56x56, batch 8: 0.48-0.75 s / 0.87-1.13 s against 1.0-2.0 s for
/// `conv_fwd_ubo`; gpu/sketch.rs) and not beyond; on GPUs the decoded dense GEMM wins
/// (the compressed kernels read fewer bytes, but convs are compute-bound there).
///
/// Dense kernels (gpu/conv.rs has the numbers): `conv_fwd_ubo` on software adapters
/// where its uniform block fits (0.7-1.2 GFLOP/s against `conv_fwd_tiled`'s 0.18-0.21 on
/// lavapipe), else `conv_fwd_tiled`; `conv_gemm` on GPUs (on an H200 the tiled kernel was
/// latency-bound at 3.6-21% of the FMA peak).
pub fn conv(c: &Conv2d, device: &DeviceInfo, options: &GpuOptions) -> ConvChoice {
    let decoded = decodes(options.compressed_conv, &c.weight, device.software);
    if !decoded {
        match &c.weight {
            Weights::Sketch(_) => return ConvChoice::Sketch,
            Weights::Sparse(_) => return ConvChoice::Sparse,
            Weights::Pow2(_) => return ConvChoice::Pow2,
            _ => {}
        }
    }
    let cout_g = c.out_channels() / c.groups.max(1);
    let khw = c.kernel[0] * c.kernel[1];
    let ubo_fits = khw * 32 <= UBO_FLOATS && device.max_uniform_binding as usize >= UBO_FLOATS * 4;
    let gemm = || DenseConv::Gemm {
        wide: options.conv_kernel == ConvKernel::GemmWide,
        split_k: forced_split_k(options),
    };
    let kernel = match options.conv_kernel {
        _ if cout_g < DIRECT_BELOW => DenseConv::Direct,
        ConvKernel::Tiled => DenseConv::Tiled,
        ConvKernel::Uniform if ubo_fits => DenseConv::Uniform,
        ConvKernel::Uniform => DenseConv::Tiled,
        ConvKernel::Auto if ubo_fits && device.software => DenseConv::Uniform,
        ConvKernel::Auto if device.software => DenseConv::Tiled,
        ConvKernel::Auto | ConvKernel::Gemm | ConvKernel::GemmSplits(_) | ConvKernel::GemmWide => {
            gemm()
        }
    };
    ConvChoice::Dense { kernel, decoded }
}

/// Whether a conv with `weight` runs on dense f32 decoded at upload (see `conv`).
fn decodes(mode: CompressedConv, weight: &Weights, software: bool) -> bool {
    match (mode, weight) {
        (_, Weights::Dense(_)) => false,
        (CompressedConv::Native, _) => false,
        (CompressedConv::Decoded, _) => true,
        (CompressedConv::Auto, Weights::Sketch(w)) => !software || w.bases() > 2,
        (CompressedConv::Auto, _) => true,
    }
}

/// The K split that `options` forces on `conv_gemm`, if any.
fn forced_split_k(options: &GpuOptions) -> Option<usize> {
    match options.conv_kernel {
        ConvKernel::GemmSplits(n) => Some(n),
        _ => options.conv_split_k,
    }
}

/// Dense fc batches below this use GEMV (weights read once per item at batch 1, once per
/// 8 items above: bandwidth-bound); from here on the conv kernels reuse each weight over
/// 64 items.
pub const GEMV_BELOW: usize = 32;

/// Sketch fc batches below this run `sketch_fc`; from here on `sketch_conv` (lanes =
/// batch items) fills its 64 lanes better.
pub const SKETCH_GEMV_BELOW: usize = 8;

/// The kernel of fc `l` at `batch`.
pub fn fc(l: &Linear, batch: usize, device: &DeviceInfo, options: &GpuOptions) -> FcChoice {
    match &l.weight {
        Weights::Sketch(_) if batch >= SKETCH_GEMV_BELOW => FcChoice::SketchConv,
        Weights::Sketch(_) => FcChoice::SketchGemv,
        Weights::Sparse(w) => FcChoice::Sparse {
            lanes_log2: sparse_fc_lanes_log2(w, device.software, options.sparse_fc_lanes),
        },
        Weights::Pow2(w) if pow2_lut(options.pow2_fc, device.software) => FcChoice::Pow2Lut {
            rows: pow2_rows_per_workgroup(
                w.rows(),
                batch.clamp(1, POW2_LUT_MAX_ITEMS),
                options.pow2_fc_rows,
            ),
            prefetch: pow2_prefetch(options.pow2_fc_prefetch),
        },
        Weights::Pow2(_) => FcChoice::Pow2Window,
        _ if batch >= GEMV_BELOW => FcChoice::Conv(if gemm_for_fc(device, options) {
            DenseConv::Gemm {
                wide: options.conv_kernel == ConvKernel::GemmWide,
                split_k: forced_split_k(options),
            }
        } else {
            DenseConv::Tiled
        }),
        _ if batch == 1 => FcChoice::Gemv,
        _ => FcChoice::Gemv8,
    }
}

/// Whether dense fc layers at batch >= `GEMV_BELOW` run `conv_gemm`: where convs with
/// many channels would, i.e. not on software adapters unless a GEMM kernel is forced.
fn gemm_for_fc(device: &DeviceInfo, options: &GpuOptions) -> bool {
    match options.conv_kernel {
        ConvKernel::Gemm | ConvKernel::GemmSplits(_) | ConvKernel::GemmWide => true,
        ConvKernel::Auto => !device.software,
        ConvKernel::Tiled | ConvKernel::Uniform => false,
    }
}

/// Whether pow2 fc layers run the table kernel `pow2_fc_lut`: on GPUs unless forced off.
/// Software adapters run `pow2_fc` (the window kernel): there the table load is a
/// per-lane gather.
fn pow2_lut(mode: Pow2Fc, software: bool) -> bool {
    match mode {
        Pow2Fc::Window => false,
        Pow2Fc::Lut => true,
        Pow2Fc::Auto => !software,
    }
}

/// Most batch items per `pow2_fc_lut` workgroup (the shader has 8 accumulators).
pub const POW2_LUT_MAX_ITEMS: usize = 8;

/// Rows per `pow2_fc_lut` workgroup for a layer of `rows` outputs and `items` items per
/// workgroup: 16 (16 K slices) with several items, 8 (32 slices) with one, while that
/// still gives 256 workgroups, else fewer (4 rows, 64 slices: AlexNet's fc8, 1000 rows,
/// gets 250 workgroups), so a large GPU has a few workgroups per multiprocessor. On an
/// H200 (fc6 4-bit, `pow2_fc_timing`): batch 1 with 8 / 16 rows 20.1 / 25.0 us (warm); in
/// an earlier run at idle clocks, batch 1 with 4 / 8 / 16 rows 112 / 94 / 104 us and batch
/// 8 545 / 398 / 315 us. `GpuOptions::pow2_fc_rows` = 4, 8, 16, 32 or 64 forces one.
pub fn pow2_rows_per_workgroup(rows: usize, items: usize, forced: Option<usize>) -> usize {
    let forced = forced.filter(|r| [4, 8, 16, 32, 64].contains(r));
    let want = if items > 1 { 16 } else { 8 };
    forced.unwrap_or_else(|| {
        [want, 8, 4]
            .into_iter()
            .find(|&r| r <= want && rows >= r * 256)
            .unwrap_or(4)
    })
}

/// Deepest prefetch the `pow2_fc_lut` generator writes.
pub const POW2_MAX_PREFETCH: usize = 3;

/// Code quads `pow2_fc_lut` loads ahead: 1 (the measured default; on an H200 fc6 4-bit at
/// batch 1 ran 20.1 us with it), or `GpuOptions::pow2_fc_prefetch` = 2 or 3. Why deeper
/// may pay: at batch 1 fc6 has 512 workgroups of 256 invocations, about half of an H200's
/// resident threads, each with 9 quads of 16 bytes; with one quad in flight per
/// invocation 2 MB are in flight, less than the ~3.5 MB that 3.5 TB/s times ~1 us of
/// loaded latency needs, and one quad's decode (~128 instructions per warp) is shorter
/// than a load. Not measured on a GPU yet (tested for correctness on every adapter).
pub fn pow2_prefetch(forced: Option<usize>) -> usize {
    forced
        .filter(|d| (1..=POW2_MAX_PREFETCH).contains(d))
        .unwrap_or(1)
}

/// Invocations per `sparse_fc` workgroup (the shader's `@workgroup_size`).
pub const SPARSE_FC_WORKGROUP: usize = 256;

/// Invocations a `sparse_fc` launch should have in flight: rows with fewer get more
/// lanes each (on an H200, fc8's 1000 rows ran best with 64-128 lanes, fc6's 4096 with
/// 32-64).
const SPARSE_FC_TARGET_THREADS: usize = 96 * 1024;

/// log2 of the lanes per CSR row for `sparse_fc`, 0..=8 (1 to 256 lanes). With `mean`
/// the mean stored entries per row: the larger of the power of two that gives
/// `rows * lanes >= SPARSE_FC_TARGET_THREADS` and the one that gives each lane at most
/// ~32 entries of a mean row (this one capped at 64), then cut to at most `mean / 2`
/// (every lane gets two entries or more). Software adapters get 1 lane per row (each
/// invocation walks its own row, no reduction): on lavapipe that ran 1.1-3.8x faster
/// than wider rows on 11 of 12 fc6/fc7/fc8 shape/density pairs.
/// `forced` (`GpuOptions::sparse_fc_lanes`, rounded up to a power of two, 1 to 256)
/// overrides the choice on every adapter (tests and tuning runs).
pub fn sparse_fc_lanes_log2(w: &SparseWeights, software: bool, forced: Option<usize>) -> u32 {
    if let Some(l) = forced {
        return l
            .clamp(1, SPARSE_FC_WORKGROUP)
            .next_power_of_two()
            .trailing_zeros();
    }
    if software {
        return 0;
    }
    let rows = w.rows().max(1);
    let mean = w.nnz().div_ceil(rows);
    let by_threads = SPARSE_FC_TARGET_THREADS.div_ceil(rows).next_power_of_two();
    let by_length = mean.div_ceil(32).next_power_of_two().min(64);
    // The largest power of two <= max(mean / 2, 1).
    let cap = 1usize << (mean / 2).max(1).ilog2();
    by_threads
        .max(by_length)
        .min(cap)
        .min(SPARSE_FC_WORKGROUP)
        .trailing_zeros()
}

/// Workgroups `conv_gemm` aims to launch per layer before it splits K: about two per
/// multiprocessor of a large GPU (an H100/H200 has 132), so that layers with few output
/// tiles (ResNet-18's 7x7 stage has 8 channel tiles at batch 1) still fill the chip.
pub const GEMM_TARGET_WORKGROUPS: usize = 264;

/// Fewest K tiles one `conv_gemm` slice gets (shorter slices spend more on partial sums
/// than they save).
pub const GEMM_MIN_TILES_PER_SLICE: usize = 8;

/// K slices of one `conv_gemm` dispatch with `tiles` output tiles and `k_tiles` K tiles:
/// enough to reach [`GEMM_TARGET_WORKGROUPS`], no slice shorter than
/// [`GEMM_MIN_TILES_PER_SLICE`]; `forced` (the choice's `split_k`) overrides. Never more
/// than `k_tiles`, and no slice is empty.
pub fn gemm_splits(tiles: usize, k_tiles: usize, forced: Option<usize>) -> usize {
    let want = match forced {
        Some(n) => n,
        None if tiles >= GEMM_TARGET_WORKGROUPS => 1,
        None => GEMM_TARGET_WORKGROUPS
            .div_ceil(tiles.max(1))
            .min(k_tiles / GEMM_MIN_TILES_PER_SLICE),
    };
    let splits = want.clamp(1, k_tiles.max(1));
    // Every slice gets ceil(k_tiles / splits) tiles but the last.
    k_tiles.div_ceil(k_tiles.div_ceil(splits))
}

/// Code words (per base for sketch) per K slice that the split-K fc kernels
/// (`sketch_fc`, `pow2_fc`) aim at on hardware adapters.
const FC_SLICE_WORDS: usize = 16;
/// Most K slices of one fc window chosen automatically.
const FC_MAX_SLICES: usize = 64;
/// Invocations (rows x items x slices) past which splitting K further only adds partial
/// sums: a few times what a large GPU keeps resident.
const FC_TARGET_INVOCATIONS: usize = 1 << 19;

/// K slices wanted for one split-K fc dispatch (`pow2_fc`, `sketch_fc`) over a window of
/// `words` code words per row (per base), `rows` rows and `items` batch items: forced by
/// `GpuOptions::fc_split_k`, else 1 on software adapters (lavapipe: one invocation per row
/// already keeps its few cores busy) and `words / FC_SLICE_WORDS` (1..=64) on GPUs, fewer
/// when rows x items alone give `FC_TARGET_INVOCATIONS`. The encoder caps this by the
/// adapter's limits (`sketch::fc_slices`). Split K on an H200 (AlexNet fc6, batch 1,
/// sketch m = 1/2/4): 0.032/0.13-0.14/0.21-0.23 ms with these slices, against
/// 0.19/0.21/0.27 ms with one invocation per row (gpu/sketch.rs).
pub fn fc_slices_wanted(
    words: usize,
    rows: usize,
    items: usize,
    software: bool,
    forced: Option<usize>,
) -> usize {
    match forced {
        Some(n) => n,
        None if software => 1,
        None => (words.max(1) / FC_SLICE_WORDS)
            .clamp(1, FC_MAX_SLICES)
            .min(FC_TARGET_INVOCATIONS.div_ceil(rows * items).max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_splits_leave_no_slice_empty() {
        for k_tiles in 1..80 {
            for forced in [None, Some(1), Some(3), Some(7), Some(1000)] {
                for tiles in [1, 8, 100, 264, 1000] {
                    let s = gemm_splits(tiles, k_tiles, forced);
                    let per = k_tiles.div_ceil(s);
                    assert!(s >= 1 && s <= k_tiles, "{tiles} {k_tiles} {forced:?}: {s}");
                    assert!((s - 1) * per < k_tiles, "empty slice: {k_tiles} / {s}");
                }
            }
        }
    }

    #[test]
    fn depthwise_convs_run_direct_whatever_is_forced() {
        let info = DeviceInfo {
            software: false,
            max_uniform_binding: 65536,
        };
        let mut rng = crate::graph::Rng::new(3);
        let c = Conv2d {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
            dilation: [1, 1],
            groups: 8,
            weight: Weights::Dense(rng.normal_tensor(vec![8, 1, 3, 3], 1.0)),
            bias: None,
        };
        for conv_kernel in [ConvKernel::Auto, ConvKernel::Gemm, ConvKernel::Tiled] {
            let options = GpuOptions {
                conv_kernel,
                ..GpuOptions::default()
            };
            assert_eq!(
                conv(&c, &info, &options),
                ConvChoice::Dense {
                    kernel: DenseConv::Direct,
                    decoded: false
                }
            );
        }
    }
}
