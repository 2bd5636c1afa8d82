//! Execution backends.

pub mod cpu;
