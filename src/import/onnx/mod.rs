//! ONNX to Graph IR.
//!
//! Supported (default domain, opsets 1 to 21):
//! - layers: Conv (2-D, and 1-D as 2-D over `[N, C, 1, L]`), Gemm, MatMul (constant 2-D
//!   weight; inputs of any rank),
//!   BatchNormalization, LayerNormalization, InstanceNormalization, LRN;
//! - element-wise: Relu, LeakyRelu, PRelu, Elu, Clip, Sigmoid, HardSigmoid, HardSwish,
//!   Tanh, Erf, Gelu, Exp, Log, Sqrt, Neg, Abs, Reciprocal, Softplus, Softsign; Add,
//!   Sub, Mul, Div, Pow, Max, Min, Sum, Mean with NumPy broadcasting, between computed
//!   values or with constants;
//! - reductions and pools: ReduceMean/Sum/Max/Min/L2, MaxPool, AveragePool (2-D and 1-D),
//!   GlobalAveragePool, GlobalMaxPool, Softmax and LogSoftmax on any non-batch axis;
//! - layout: Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Expand, Concat, Split,
//!   Slice (negative steps too), Gather (constant indices), Pad (constant, edge,
//!   reflect), Dropout, Identity, Cast between float types;
//! - folded at load: Constant, ConstantOfShape, and the shape subgraphs exporters build
//!   (Shape, Size, Gather, Unsqueeze, Squeeze, Concat, Slice, Cast, integer
//!   arithmetic; `importer::Dim` keeps what depends on the batch symbolic).
//!
//! A tensor's axis 0 is the batch throughout; a fully static model the batched import
//! refuses (a rank-1 input, an op over axis 0) is imported again without one
//! (`UNBATCHED`).
//!
//! Everything read from the file is bounds-checked before memory is allocated
//! for it: element counts against `MAX_ELEMENTS` and against the bytes actually
//! present, node count against `MAX_NODES`, file size against `MAX_FILE_BYTES`.
//!
//! Layout: this file reads the model (`load_onnx`, `parse_onnx`: limits, opset,
//! graph input, node loop, final checks); `bounds.rs` holds the `MAX_*` limits
//! and bounded shape inference, `tensors.rs` constant decoding, `attributes.rs`
//! typed attribute lookup, `importer.rs` the per-node state and checks, and
//! `ops/` the op converters (`nn`, `math`, `array`).

mod attributes;
mod bounds;
mod importer;
mod ops;
mod tensors;

pub use bounds::{MAX_ELEMENTS, MAX_FILE_BYTES, MAX_NODES};

use super::proto::{data_type, ModelProto};
use super::ImportError;
use crate::graph::{Graph, GraphInput, Shapes};
use bounds::bounded_shapes;
use importer::Importer;
pub use importer::UNBATCHED;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use tensors::Const;

/// Reads and imports an ONNX file (see `parse_onnx`).
pub fn load_onnx(path: &Path) -> Result<Graph, ImportError> {
    let io = |source| ImportError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(ImportError::TooLarge {
            path: path.display().to_string(),
            bytes: len,
            limit: MAX_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_onnx(&bytes)
}

/// Imports an ONNX model from its serialized bytes. The result is sorted,
/// validated and shape-checked at batch 1; folding (BatchNorm, Identity) is left
/// to the caller.
pub fn parse_onnx(bytes: &[u8]) -> Result<Graph, ImportError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ImportError::TooLarge {
            path: "<bytes>".into(),
            bytes: bytes.len() as u64,
            limit: MAX_FILE_BYTES,
        });
    }
    // Bound what decoding allocates before prost allocates it.
    let est = super::prescan::estimate(bytes);
    if est.nodes > MAX_NODES as u64 {
        return Err(ImportError::Malformed(format!(
            "{} nodes, over the limit of {MAX_NODES}",
            est.nodes
        )));
    }
    let budget = 4 * bytes.len() as u64 + (256 << 20);
    if est.cost > budget {
        return Err(ImportError::Malformed(format!(
            "decoding would take about {} bytes for a {}-byte file (limit {budget})",
            est.cost,
            bytes.len()
        )));
    }
    match import(bytes, false) {
        Ok(g) => Ok(g),
        // A model whose input is fully static and that the batched import refused (a
        // rank-1 input, an op over axis 0) may still run as one item without a batch
        // axis; if that fails too, the first error is the one to report.
        Err(e) => import(bytes, true).map_err(|_| e),
    }
}

/// The import proper; `lift` reads a fully static input as one item (`Importer::lift`).
fn import(bytes: &[u8], lift: bool) -> Result<Graph, ImportError> {
    let mut model = ModelProto::decode(bytes)?;
    let opset = default_opset(&model)?;
    let Some(mut gp) = model.graph.take() else {
        return Err(ImportError::Malformed("the model has no graph".into()));
    };
    if gp.node.len() > MAX_NODES {
        return Err(ImportError::Malformed(format!(
            "{} nodes, over the limit of {MAX_NODES}",
            gp.node.len()
        )));
    }

    let mut consts: HashMap<String, Const> = HashMap::new();
    // Each TensorProto is dropped once converted, so its bytes are not held twice.
    for t in std::mem::take(&mut gp.initializer) {
        let c = Const::from_proto(&t)?;
        consts.insert(t.name.clone().unwrap_or_default(), c);
    }

    // Older IR versions list initializers among the inputs; the rest are real inputs.
    let real: Vec<_> = gp
        .input
        .iter()
        .filter(|v| !consts.contains_key(v.name.as_deref().unwrap_or("")))
        .collect();
    if real.len() != 1 {
        return Err(ImportError::Input(format!(
            "expected exactly one non-constant input, found {} ({:?})",
            real.len(),
            real.iter()
                .map(|v| v.name.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        )));
    }
    let input = if lift {
        static_input(real[0])?
    } else {
        graph_input(real[0])?
    };

    let metadata: BTreeMap<String, String> = model
        .metadata_props
        .iter()
        .map(|e| {
            (
                e.key.clone().unwrap_or_default(),
                e.value.clone().unwrap_or_default(),
            )
        })
        .collect();

    let outputs: Vec<String> = gp
        .output
        .iter()
        .map(|v| v.name.clone().unwrap_or_default())
        .collect();
    if outputs.is_empty() {
        return Err(ImportError::Malformed("the graph has no outputs".into()));
    }

    // Values read anywhere, to reject ops whose extra outputs (MaxPool Indices,
    // Dropout mask, BatchNorm running stats) are actually used.
    let mut used: HashSet<&str> = outputs.iter().map(|s| s.as_str()).collect();
    for n in &gp.node {
        used.extend(n.input.iter().map(|s| s.as_str()));
    }

    let batch = input.declared_batch.unwrap_or(1);
    let mut shapes = Shapes::new();
    let mut first = vec![batch];
    first.extend(&input.item_shape);
    shapes.insert(input.name.clone(), first);
    let mut imp = Importer {
        graph: Graph {
            input,
            nodes: Vec::new(),
            outputs: outputs.clone(),
            metadata,
        },
        consts,
        opset,
        names: HashSet::new(),
        shapes: Some(shapes),
        dims: HashMap::new(),
        lift,
    };
    if lift {
        imp.graph
            .metadata
            .insert(importer::UNBATCHED.into(), "true".into());
    }
    // An unsupported operator or attribute does not stop the import: the nodes after it
    // are still checked (those reading what it should have made only for their own
    // operator and attributes), so that one error lists every one.
    let mut unsupported: Vec<ImportError> = Vec::new();
    let mut missing: HashSet<&str> = HashSet::new();
    for (index, np) in gp.node.iter().enumerate() {
        let downstream = np.input.iter().any(|v| missing.contains(v.as_str()));
        let error = if downstream {
            imp.check_downstream(np, index)
        } else {
            imp.node(np, index, &used).err()
        };
        match error {
            None if !downstream => continue,
            None => {}
            Some(
                e @ (ImportError::UnsupportedOp { .. } | ImportError::UnsupportedAttribute { .. }),
            ) => unsupported.push(e),
            Some(e) if unsupported.is_empty() => return Err(e),
            // Another error after unsupported ones: reported with them, and the end.
            Some(e) => {
                unsupported.push(e);
                break;
            }
        }
        missing.extend(np.output.iter().map(|s| s.as_str()));
    }
    match unsupported.len() {
        0 => {}
        1 => return Err(unsupported.remove(0)),
        _ => return Err(ImportError::Unsupported(unsupported)),
    }
    for o in &outputs {
        if imp.consts.contains_key(o)
            && imp.graph.producer(o).is_none()
            && *o != imp.graph.input.name
        {
            return Err(ImportError::Malformed(format!(
                "graph output '{o}' is a constant; cnnpack needs computed outputs"
            )));
        }
    }
    let unordered = imp.shapes.is_none();
    let mut graph = imp.graph;
    graph.sort_and_validate()?;
    if unordered {
        // The file was not in topological order (ONNX requires it, but sorting
        // fixed it): check sizes over the sorted nodes before any plain inference.
        bounded_shapes(&graph, batch)?;
    }
    graph.infer_shapes(1)?;
    // Weights and constants: lengths against shapes, and no NaN or infinity.
    graph.check_values()?;
    Ok(graph)
}

/// The default-domain opset version, checked against the supported range.
fn default_opset(model: &ModelProto) -> Result<i64, ImportError> {
    let v = model
        .opset_import
        .iter()
        .filter(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .filter_map(|o| o.version)
        .max()
        .ok_or_else(|| ImportError::Malformed("no default-domain opset_import".into()))?;
    if !(1..=21).contains(&v) {
        return Err(ImportError::Opset(v));
    }
    Ok(v)
}

/// The input of a model imported without a batch axis: every dimension fixed, all of
/// them the item shape.
fn static_input(v: &super::proto::ValueInfoProto) -> Result<GraphInput, ImportError> {
    let name = v.name.clone().unwrap_or_default();
    let dims = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .filter(|t| t.elem_type == Some(data_type::FLOAT))
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.as_slice())
        .unwrap_or_default();
    let item_shape: Option<Vec<usize>> = dims
        .iter()
        .map(|d| {
            d.dim_value
                .filter(|&x| x > 0 && (x as u64) < MAX_ELEMENTS)
                .map(|x| x as usize)
        })
        .collect();
    match item_shape {
        Some(item_shape)
            if !item_shape.is_empty()
                && item_shape
                    .iter()
                    .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                    .is_some_and(|n| n <= MAX_ELEMENTS) =>
        {
            Ok(GraphInput {
                name,
                item_shape,
                declared_batch: None,
            })
        }
        _ => Err(ImportError::Input(format!(
            "'{name}' is not a fully static float tensor"
        ))),
    }
}

/// The graph input: first axis is the batch (symbolic or fixed), the rest fixed.
fn graph_input(v: &super::proto::ValueInfoProto) -> Result<GraphInput, ImportError> {
    let name = v.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ImportError::Input("the input has no name".into()));
    }
    let tt = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| ImportError::Input(format!("'{name}' is not a tensor")))?;
    if tt.elem_type != Some(data_type::FLOAT) {
        return Err(ImportError::Input(format!(
            "'{name}' has element type {:?}; only float (1) is supported",
            tt.elem_type
        )));
    }
    let dims = tt
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or_default();
    if dims.len() < 2 {
        return Err(ImportError::Input(format!(
            "'{name}' has rank {}; expected a batch axis and at least one more",
            dims.len()
        )));
    }
    let declared_batch = match dims[0].dim_value {
        Some(b) if b > 0 && (b as u64) < MAX_ELEMENTS => Some(b as usize),
        Some(b) if b != 0 || dims[0].dim_param.is_none() => {
            return Err(ImportError::Input(format!(
                "'{name}' has batch dimension {b}"
            )))
        }
        _ => None,
    };
    let mut item_shape = Vec::with_capacity(dims.len() - 1);
    let mut total: u64 = 1;
    for (i, d) in dims[1..].iter().enumerate() {
        match d.dim_value {
            Some(x) if x > 0 => {
                total = total.saturating_mul(x as u64);
                item_shape.push(x as usize);
            }
            _ => {
                return Err(ImportError::Input(format!(
                    "'{name}' axis {}: dimension {:?} must be a fixed positive size",
                    i + 1,
                    d.dim_param.clone().or(d.dim_value.map(|x| x.to_string()))
                )))
            }
        }
    }
    if total > MAX_ELEMENTS {
        return Err(ImportError::Input(format!(
            "'{name}' item shape {item_shape:?} is over {MAX_ELEMENTS} elements"
        )));
    }
    Ok(GraphInput {
        name,
        item_shape,
        declared_batch,
    })
}
