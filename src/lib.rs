//! cnnpack: a GPU compute engine for compressed CNNs.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod data;
pub mod format;
pub mod graph;
pub mod train;
pub mod weights;
pub mod zoo;
