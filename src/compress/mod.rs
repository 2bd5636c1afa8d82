//! Compression algorithms: pure functions from dense layers to packed encodings.

pub mod dns;
pub mod inq;
pub mod sketch;

pub use sketch::{sketch_graph, sketch_tensor, LayerReport, SketchOptions};

/// Errors of the compression passes; each names the layer at fault.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// A layer named in the options is not a Conv or Linear node of the graph.
    #[error("layer '{0}' named in the options is not a conv or linear node of the graph")]
    UnknownLayer(String),
    /// A layer's weights hold NaN or infinity.
    #[error("layer '{0}' has non-finite (NaN or infinite) weights")]
    NonFinite(String),
    /// A layer was asked for zero bases.
    #[error("layer '{0}': the number of bases must be at least 1")]
    ZeroBases(String),
    /// A layer is already compressed.
    #[error("layer '{layer}' is already {encoding}-encoded; only dense layers can be compressed")]
    NotDense {
        /// Node name.
        layer: String,
        /// Its current encoding.
        encoding: &'static str,
    },
}
