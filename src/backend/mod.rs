//! Backends that execute a `Graph`: the CPU (reference and fast kernels) and the GPU (wgpu).

pub mod cpu;
pub mod gpu;
