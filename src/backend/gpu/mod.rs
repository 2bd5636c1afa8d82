//! GPU backend: WGSL compute shaders (shaders/*.wgsl) run through wgpu.
//!
//! [`GpuContext`] owns the device; [`GpuModel`] is one graph planned for one batch
//! size, with its weights uploaded once and every kernel launch recorded up front, so
//! a run writes the input, submits one command buffer and reads the outputs back.
//! Each kernel family has one shader and one host file here (`conv`, `gemm`, `pool`,
//! `eltwise`, `lrn`, `softmax`, `copy`, `sketch`).

mod context;
mod conv;
mod copy;
mod eltwise;
mod encode;
mod gemm;
mod lrn;
mod model;
mod pool;
mod pow2;
mod pow2_fc;
pub mod select;
mod sketch;
mod softmax;
mod sparse;
mod strided;
pub mod train;

pub use context::GpuContext;
pub use conv::ConvKernel;
pub use model::{CompressedConv, GpuModel, GpuOptions, Pow2Fc, StepTimes};

use crate::graph::GraphError;

/// Errors of the GPU backend; each names the layer or resource at fault.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable adapter.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// The adapter refused to open a device.
    #[error("requesting a device failed: {0}")]
    RequestDevice(String),
    /// The device ran out of memory while building or running `layer`.
    #[error("out of GPU memory at '{layer}': {message}")]
    OutOfMemory {
        /// Layer (or stage: "upload", "run") at fault.
        layer: String,
        /// wgpu's message.
        message: String,
    },
    /// wgpu rejected a call made for `layer` (a bug in cnnpack or an adapter limit).
    #[error("wgpu validation error at '{layer}': {message}")]
    Validation {
        /// Layer (or stage) at fault.
        layer: String,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost (driver reset, removal).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// A node this backend cannot run as given.
    #[error("node '{node}' ({op}) is not supported on the GPU: {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op kind.
        op: &'static str,
        /// Why.
        reason: String,
    },
    /// The graph is malformed.
    #[error(transparent)]
    Shape(#[from] GraphError),
    /// The input tensor's shape does not match the model's.
    #[error("input shape {found:?} does not match the model's {expected:?}")]
    BadInput {
        /// Expected `[batch, ..item_shape]`.
        expected: Vec<usize>,
        /// Given.
        found: Vec<usize>,
    },
    /// Reading results back failed.
    #[error("mapping the '{buffer}' buffer for reading failed: {message}")]
    Map {
        /// Which buffer.
        buffer: &'static str,
        /// wgpu's message.
        message: String,
    },
}
