//! cnnpack: a GPU compute engine for compressed CNNs.
#![warn(missing_docs)]

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
pub mod weights;
pub mod zoo;
