//! cnnpack: a GPU compute engine for compressed CNNs.
#![warn(missing_docs)]

pub mod graph;
pub mod import;
pub mod weights;
