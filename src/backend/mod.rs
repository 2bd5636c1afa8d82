//! Executors of a planned graph.

// pub mod cpu;
pub mod gpu;
