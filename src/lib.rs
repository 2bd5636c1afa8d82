//! cnnpack: a GPU compute engine for compressed CNNs.
#![warn(missing_docs)]

pub mod backend;
pub mod compress;
pub mod graph;
pub mod weights;
