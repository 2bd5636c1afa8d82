//! Backends that execute a `Graph`: the CPU (reference and fast kernels) and the GPU (wgpu).

pub mod cpu;
pub mod gpu;
pub mod training;

/// Per-step times of one profiled run: (node or fused-step name, milliseconds), in run order.
pub type StepTimes = Vec<(String, f64)>;
