//! Model files: the `.cnnpack` container, `.npy` tensors, and extension dispatch.

pub mod cnnpack;
pub mod npy;

pub use cnnpack::{from_bytes, load, save, to_bytes, FormatError};
pub use npy::{read_npy, write_npy, NpyError};

use crate::graph::Graph;
use std::path::Path;

/// Loads a model by file extension: `.cnnpack` (this crate's format) or `.onnx`.
pub fn load_model(path: &Path) -> Result<Graph, FormatError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("cnnpack") => load(path),
        Some("onnx") => import_onnx(path),
        other => Err(FormatError::UnknownExtension {
            path: path.display().to_string(),
            ext: other.unwrap_or("").to_string(),
        }),
    }
}

/// MERGE POINT: the single place where `.onnx` files reach the ONNX importer.
///
/// The importer (`crate::import::onnx::load_onnx`) lives on another branch; at merge
/// this body becomes
/// `crate::import::onnx::load_onnx(path).map_err(|e| FormatError::Onnx { path: .., reason: e.to_string() })`.
fn import_onnx(path: &Path) -> Result<Graph, FormatError> {
    Err(FormatError::Onnx {
        path: path.display().to_string(),
        reason: "ONNX import not built".into(),
    })
}
