//! Model import and export: ONNX files to and from the Graph IR.
//!
//! `load_onnx`/`parse_onnx` read an ONNX model (opsets 1 to 21, the CNN operators
//! listed in `onnx/mod.rs`) into a validated `Graph` with shapes checked at batch 1;
//! `export_onnx` writes a dense opset-17 model with a symbolic batch axis `N`.
//!
//! Untrusted input: the file size, the decoded size (a wire-format pre-pass,
//! `prescan.rs`), node count, tensor element counts and every value's size are
//! bounded before anything is allocated for them; bad input is an
//! `ImportError`, never a panic.

pub mod export;
pub mod onnx;
mod prescan;
pub mod proto;

pub use export::export_onnx;
pub use onnx::{load_onnx, parse_onnx, MAX_ELEMENTS, MAX_FILE_BYTES, MAX_NODES, UNBATCHED};

use crate::graph::GraphError;

/// Why an ONNX file could not be imported or a graph exported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read '{path}': {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than `MAX_FILE_BYTES`.
    #[error("'{path}' is {bytes} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a valid ONNX protobuf message.
    #[error("not a valid ONNX protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The model is structurally unusable (no graph, no default opset, too many nodes, ...).
    #[error("malformed model: {0}")]
    Malformed(String),
    /// The default-domain opset is outside the supported range.
    #[error("opset {0} is not supported (1 to 21 are)")]
    Opset(i64),
    /// An operator cnnpack does not implement (or one from another domain).
    #[error("node '{node}': unsupported operator '{op}'")]
    UnsupportedOp {
        /// ONNX op_type (with its domain when not the default one).
        op: String,
        /// Node name.
        node: String,
    },
    /// Several unsupported operators or attributes (every one in the model, in node
    /// order; a single one is reported as itself).
    #[error("the model uses operators or attributes cnnpack does not support ({} errors):{}", .0.len(), list(.0))]
    Unsupported(Vec<ImportError>),
    /// A supported operator with an attribute value cnnpack does not implement.
    #[error("node '{node}' ({op}): unsupported value {value} for attribute '{attribute}'")]
    UnsupportedAttribute {
        /// ONNX op_type.
        op: String,
        /// Node name.
        node: String,
        /// Attribute (or input) name.
        attribute: String,
        /// The offending value, printed.
        value: String,
    },
    /// An input that must be a constant (weights, pads, slice bounds) is not one.
    #[error("node '{node}' ({op}): input '{input}' must be a constant initializer")]
    MissingConstant {
        /// ONNX op_type.
        op: String,
        /// Node name.
        node: String,
        /// Value name (or the input's role when it is absent).
        input: String,
    },
    /// A node is wired in a way the op does not allow (wrong input count, a
    /// constant where a dynamic value is expected, a used extra output).
    #[error("node '{node}' ({op}): {reason}")]
    BadNode {
        /// ONNX op_type.
        op: String,
        /// Node name.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// An initializer or constant tensor that cannot be decoded.
    #[error("tensor '{name}' (data type {dtype}, dims {dims:?}): {reason}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// ONNX data type code.
        dtype: i32,
        /// Declared dims.
        dims: Vec<i64>,
        /// What is wrong.
        reason: String,
    },
    /// The graph input is missing, ambiguous or has an unusable shape.
    #[error("graph input: {0}")]
    Input(String),
    /// The imported graph fails validation or shape inference.
    #[error("invalid graph: {0}")]
    Graph(#[from] GraphError),
}

/// One error per line, indented, for `ImportError::Unsupported`.
fn list(errors: &[ImportError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}
