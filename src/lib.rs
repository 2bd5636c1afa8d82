//! cnnpack: a GPU compute engine for compressed CNNs.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod backend;
pub mod bench;
pub mod compress;
pub mod data;
pub mod engine;
pub mod eval;
pub mod format;
pub mod graph;
pub mod import;
pub mod plan;
pub mod tensor;
pub mod train;
pub mod tuning;
pub mod weights;
pub mod zoo;

/// The README's code blocks, compiled as doctests so the documented API stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
