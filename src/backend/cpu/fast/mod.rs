//! Fast CPU kernels.

pub mod sketch;
