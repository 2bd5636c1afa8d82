//! ONNX to Graph IR.
//!
//! Supported (default domain, opsets 7 to 21): Conv, Gemm, MatMul (constant 2-D
//! weight), Relu, LeakyRelu, Clip, Sigmoid, MaxPool, AveragePool,
//! GlobalAveragePool, BatchNormalization, Add, Sub, Mul, Div, Concat, Flatten,
//! Reshape (to `[N, rest]` only), Dropout, Identity, LRN, Softmax (last axis),
//! Pad (constant mode), Slice, Transpose (identity permutation), Constant.
//!
//! Everything read from the file is bounds-checked before memory is allocated
//! for it: element counts against `MAX_ELEMENTS` and against the bytes actually
//! present, node count against `MAX_NODES`, file size against `MAX_FILE_BYTES`.

use super::proto::{attr_type, data_type, AttributeProto, ModelProto, NodeProto, TensorProto};
use super::ImportError;
use crate::graph::{
    BinaryKind, Conv2d, Graph, GraphError, GraphInput, Linear, Node, Op, Pool2d, Shapes, Tensor,
};
use crate::weights::Weights;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Largest file `load_onnx` reads (4 GiB).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Largest element count of any tensor or value (2^31).
pub const MAX_ELEMENTS: u64 = 1 << 31;
/// Largest node count of a graph.
pub const MAX_NODES: usize = 1_000_000;

/// Slice end stored for "the whole batch axis": the batch is unknown at import
/// time, and i32::MAX survives any u32/i32 conversion a backend makes.
const WHOLE_AXIS: usize = i32::MAX as usize;

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
    let input = graph_input(real[0])?;

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
    };
    for (index, np) in gp.node.iter().enumerate() {
        imp.node(np, index, &used)?;
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
        bounded_shapes(&mut graph, batch)?;
    }
    graph.infer_shapes(1)?;
    // Weights and constants: lengths against shapes, and no NaN or infinity.
    graph.check_values()?;
    Ok(graph)
}

/// Shapes of every node in order, rejecting any value over `MAX_ELEMENTS` per
/// item as soon as it appears, so later shape arithmetic cannot overflow.
fn bounded_shapes(graph: &mut Graph, batch: usize) -> Result<Shapes, ImportError> {
    let mut shapes = Shapes::new();
    let mut first = vec![batch];
    first.extend(&graph.input.item_shape);
    shapes.insert(graph.input.name.clone(), first);
    for i in 0..graph.nodes.len() {
        match node_shape_bounded(&mut graph.nodes[i], &shapes)? {
            Some(s) => {
                shapes.insert(graph.nodes[i].output.clone(), s);
            }
            None => {
                return Err(ImportError::Malformed(format!(
                    "node '{}' reads a value produced later",
                    graph.nodes[i].name
                )))
            }
        }
    }
    Ok(shapes)
}

/// The output shape of one node from known input shapes (`None` when an input
/// has no shape yet), with the per-item element count bounded by `MAX_ELEMENTS`.
///
/// Single-input ops go through the IR's own shape rules on a one-node graph (the
/// node is moved in and back, not copied); Add and Concat are checked here.
fn node_shape_bounded(node: &mut Node, shapes: &Shapes) -> Result<Option<Vec<usize>>, ImportError> {
    let mut ins = Vec::with_capacity(node.inputs.len());
    for v in &node.inputs {
        match shapes.get(v) {
            Some(s) => ins.push(s.clone()),
            None => return Ok(None),
        }
    }
    let (name, kind) = (node.name.clone(), node.op.kind());
    let shape_err = |reason: String| {
        ImportError::Graph(GraphError::Shape {
            node: name.clone(),
            op: kind,
            reason,
        })
    };
    let out = match &node.op {
        Op::Add => {
            if ins.len() != 2 || ins[0] != ins[1] {
                return Err(shape_err(format!(
                    "operands must have equal shapes, got {ins:?}"
                )));
            }
            ins[0].clone()
        }
        Op::Concat { axis } => {
            let axis = *axis;
            let Some(first) = ins.first() else {
                return Err(shape_err("no inputs".into()));
            };
            if axis >= first.len() {
                return Err(shape_err(format!("axis {axis} out of range for {first:?}")));
            }
            let mut out = first.clone();
            out[axis] = 0;
            for s in &ins {
                let same_rest =
                    s.len() == first.len() && (0..s.len()).all(|i| i == axis || s[i] == first[i]);
                if !same_rest {
                    return Err(shape_err(format!(
                        "shapes {first:?} and {s:?} differ off axis {axis}"
                    )));
                }
                out[axis] = out[axis].saturating_add(s[axis]);
            }
            out
        }
        _ => {
            if ins.len() != 1 || ins[0].is_empty() {
                return Err(shape_err(format!(
                    "expects one input with a batch axis, got {ins:?}"
                )));
            }
            let placeholder = Node {
                name: String::new(),
                op: Op::Identity,
                inputs: vec![],
                output: String::new(),
            };
            let output = node.output.clone();
            let mut mini = Graph {
                input: GraphInput {
                    name: node.inputs[0].clone(),
                    item_shape: ins[0][1..].to_vec(),
                    declared_batch: None,
                },
                nodes: vec![std::mem::replace(node, placeholder)],
                outputs: vec![],
                metadata: BTreeMap::new(),
            };
            let r = mini.infer_shapes(ins[0][0]);
            *node = mini.nodes.pop().expect("the node moved in above");
            let mut s = r?;
            s.remove(&output).unwrap_or_default()
        }
    };
    let items = out
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_ELEMENTS);
    if items.is_none() || out.is_empty() {
        return Err(shape_err(format!(
            "output shape {out:?} is over {MAX_ELEMENTS} elements per item"
        )));
    }
    Ok(Some(out))
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
    if !(7..=21).contains(&v) {
        return Err(ImportError::Opset(v));
    }
    Ok(v)
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

/// A constant value: an initializer, a Constant node, or a folded Reshape.
#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: ConstData,
}

#[derive(Clone, Debug)]
enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Const {
    /// Decodes a TensorProto, checking dims and data length before allocating.
    fn from_proto(t: &TensorProto) -> Result<Const, ImportError> {
        let name = t.name.clone().unwrap_or_default();
        let dtype = t.data_type.unwrap_or(0);
        let bad = |reason: String| ImportError::BadTensor {
            name: name.clone(),
            dtype,
            dims: t.dims.clone(),
            reason,
        };
        let mut n: u64 = 1;
        let mut dims = Vec::with_capacity(t.dims.len().min(64));
        for &d in &t.dims {
            if d < 0 {
                return Err(bad(format!("negative dimension {d}")));
            }
            n = n.saturating_mul(d as u64);
            dims.push(d as usize);
        }
        if n > MAX_ELEMENTS {
            return Err(bad(format!(
                "{n} elements, over the limit of {MAX_ELEMENTS}"
            )));
        }
        if t.data_location == Some(1) || !t.external_data.is_empty() {
            return Err(bad("external data is not supported".into()));
        }
        let n = n as usize;
        let raw = t.raw_data.as_deref();
        let check = |found: usize, unit: &str| {
            if found == n {
                Ok(())
            } else {
                Err(bad(format!(
                    "declares {n} elements but holds {found} {unit}"
                )))
            }
        };
        let data = match dtype {
            data_type::FLOAT => ConstData::F32(match raw {
                Some(r) => {
                    check(r.len() / 4, "floats")?;
                    check_exact(r.len(), n, 4).map_err(&bad)?;
                    r.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                None => {
                    check(t.float_data.len(), "floats")?;
                    t.float_data.clone()
                }
            }),
            data_type::DOUBLE => ConstData::F32(match raw {
                Some(r) => {
                    check(r.len() / 8, "doubles")?;
                    check_exact(r.len(), n, 8).map_err(&bad)?;
                    r.chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect()
                }
                None => {
                    check(t.double_data.len(), "doubles")?;
                    t.double_data.iter().map(|&v| v as f32).collect()
                }
            }),
            data_type::INT64 => ConstData::I64(match raw {
                Some(r) => {
                    check(r.len() / 8, "int64s")?;
                    check_exact(r.len(), n, 8).map_err(&bad)?;
                    r.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect()
                }
                None => {
                    check(t.int64_data.len(), "int64s")?;
                    t.int64_data.clone()
                }
            }),
            data_type::INT32 => ConstData::I64(match raw {
                Some(r) => {
                    check(r.len() / 4, "int32s")?;
                    check_exact(r.len(), n, 4).map_err(&bad)?;
                    r.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect()
                }
                None => {
                    check(t.int32_data.len(), "int32s")?;
                    t.int32_data.iter().map(|&v| v as i64).collect()
                }
            }),
            other => {
                return Err(bad(format!(
                    "data type {other} is not supported (float, double, int32, int64 are)"
                )))
            }
        };
        Ok(Const { dims, data })
    }

    fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }

    /// As an f32 tensor (integers converted).
    fn to_tensor(&self) -> Tensor {
        let data = match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        };
        Tensor {
            shape: self.dims.clone(),
            data,
        }
    }

    /// As integers (shape-like inputs); `None` for float data.
    fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            ConstData::I64(v) => Some(v),
            ConstData::F32(_) => None,
        }
    }

    /// The single value of a one-element constant, as f32.
    fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| match &self.data {
            ConstData::F32(v) => v[0],
            ConstData::I64(v) => v[0] as f32,
        })
    }
}

/// Raw byte length must be an exact multiple (a trailing partial element is corruption).
fn check_exact(bytes: usize, n: usize, size: usize) -> Result<(), String> {
    if bytes == n * size {
        Ok(())
    } else {
        Err(format!("raw_data has {bytes} bytes, expected {}", n * size))
    }
}

/// Attribute lookup with typed accessors that report the node on error.
struct Attrs<'a> {
    list: &'a [AttributeProto],
    op: &'a str,
    node: &'a str,
}

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name.as_deref() == Some(name))
    }

    fn unsupported(&self, attribute: &str, value: impl std::fmt::Debug) -> ImportError {
        ImportError::UnsupportedAttribute {
            op: self.op.into(),
            node: self.node.into(),
            attribute: attribute.into(),
            value: format!("{value:?}"),
        }
    }

    fn wrong_type(&self, a: &AttributeProto, want: &str) -> ImportError {
        self.unsupported(
            a.name.as_deref().unwrap_or(""),
            format!("attribute of type {:?}, expected {want}", a.r#type),
        )
    }

    /// Rejects attributes the op does not define (or cnnpack does not know).
    fn only(&self, known: &[&str]) -> Result<(), ImportError> {
        for a in self.list {
            let name = a.name.as_deref().unwrap_or("");
            if !known.contains(&name) {
                return Err(self.unsupported(name, "<unknown attribute>"));
            }
        }
        Ok(())
    }

    fn int(&self, name: &str) -> Result<Option<i64>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::INT) => Ok(Some(a.i.unwrap_or(0))),
            Some(a) => Err(self.wrong_type(a, "INT")),
        }
    }

    fn int_or(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    fn float_or(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        match self.get(name) {
            None => Ok(default),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::FLOAT) => Ok(a.f.unwrap_or(0.0)),
            Some(a) => Err(self.wrong_type(a, "FLOAT")),
        }
    }

    fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::INTS) => Ok(Some(a.ints.clone())),
            Some(a) => Err(self.wrong_type(a, "INTS")),
        }
    }

    fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::FLOATS) => {
                Ok(Some(a.floats.clone()))
            }
            Some(a) => Err(self.wrong_type(a, "FLOATS")),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>, ImportError> {
        match self.get(name) {
            None => Ok(None),
            Some(a) if a.r#type.is_none_or(|t| t == attr_type::STRING) => Ok(Some(
                String::from_utf8_lossy(a.s.as_deref().unwrap_or_default()).into_owned(),
            )),
            Some(a) => Err(self.wrong_type(a, "STRING")),
        }
    }

    /// A non-negative size list of the given length (kernel, strides, dilations).
    fn sizes(&self, name: &str, len: usize, default: usize) -> Result<Vec<usize>, ImportError> {
        match self.ints(name)? {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len && v.iter().all(|&x| (1..1 << 24).contains(&x)) => {
                Ok(v.iter().map(|&x| x as usize).collect())
            }
            Some(v) => Err(self.unsupported(name, v)),
        }
    }
}

struct Importer {
    graph: Graph,
    consts: HashMap<String, Const>,
    opset: i64,
    names: HashSet<String>,
    /// Shape of every computed value at the declared batch (1 when symbolic);
    /// `None` once a node read a value not produced yet (file out of order).
    shapes: Option<Shapes>,
}

/// Per-node context: names for errors, input lookup.
struct Ctx<'a> {
    np: &'a NodeProto,
    op: &'a str,
    name: String,
}

impl Ctx<'_> {
    fn bad(&self, reason: impl Into<String>) -> ImportError {
        ImportError::BadNode {
            op: self.op.into(),
            node: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The name of input `i`, or `None` when absent or empty (optional input).
    fn input(&self, i: usize) -> Option<&str> {
        self.np
            .input
            .get(i)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }

    fn attrs(&self) -> Attrs<'_> {
        Attrs {
            list: &self.np.attribute,
            op: self.op,
            node: &self.name,
        }
    }

    fn unsupported(&self, attribute: &str, value: impl std::fmt::Debug) -> ImportError {
        self.attrs().unsupported(attribute, value)
    }
}

/// What one ONNX node imports to. Short-lived (returned by a conversion step and
/// consumed at once), so the size gap between a node (an `Op`, ~260 bytes) and a
/// constant costs nothing worth an allocation per node.
#[allow(clippy::large_enum_variant)]
enum Out {
    /// A node of the IR.
    Node(Op, Vec<String>),
    /// A constant value (Constant nodes, folded Reshape).
    Const(Const),
}

impl Importer {
    fn unique_name(&mut self, np: &NodeProto, op: &str, index: usize) -> String {
        let base = match np.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{op}_{index}"),
        };
        let mut name = base.clone();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn node(
        &mut self,
        np: &NodeProto,
        index: usize,
        used: &HashSet<&str>,
    ) -> Result<(), ImportError> {
        let op = np.op_type.as_deref().unwrap_or("");
        let name = self.unique_name(np, op, index);
        let ctx = Ctx { np, op, name };
        if !matches!(np.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
            return Err(ImportError::UnsupportedOp {
                op: format!("{}.{op}", np.domain.as_deref().unwrap_or("")),
                node: ctx.name,
            });
        }
        let Some(output) = np.output.first().filter(|s| !s.is_empty()) else {
            return Err(ctx.bad("has no output"));
        };
        for extra in np.output.iter().skip(1) {
            if !extra.is_empty() && used.contains(extra.as_str()) {
                return Err(ctx.bad(format!(
                    "extra output '{extra}' is used; cnnpack only computes the first output"
                )));
            }
        }
        if self.consts.contains_key(output) || *output == self.graph.input.name {
            return Err(ctx.bad(format!("output '{output}' is already defined")));
        }
        match self.convert(&ctx)? {
            Out::Node(op, inputs) => {
                self.graph.nodes.push(Node {
                    name: ctx.name.clone(),
                    op,
                    inputs,
                    output: output.clone(),
                });
                self.track_last()?;
            }
            Out::Const(c) => {
                self.consts.insert(output.clone(), c);
            }
        }
        Ok(())
    }

    /// A constant input; error if absent or dynamic.
    fn constant(&self, ctx: &Ctx, i: usize, role: &str) -> Result<&Const, ImportError> {
        let missing = |input: String| ImportError::MissingConstant {
            op: ctx.op.into(),
            node: ctx.name.clone(),
            input,
        };
        let v = ctx
            .input(i)
            .ok_or_else(|| missing(format!("<{role}: absent>")))?;
        self.consts.get(v).ok_or_else(|| missing(v.to_string()))
    }

    fn opt_constant(&self, ctx: &Ctx, i: usize, role: &str) -> Result<Option<&Const>, ImportError> {
        match ctx.input(i) {
            None => Ok(None),
            Some(_) => self.constant(ctx, i, role).map(Some),
        }
    }

    /// A dynamic input (computed by a node or the graph input).
    fn dynamic(&self, ctx: &Ctx, i: usize) -> Result<String, ImportError> {
        let v = ctx
            .input(i)
            .ok_or_else(|| ctx.bad(format!("input {i} is missing")))?;
        if self.consts.contains_key(v) {
            return Err(ctx.bad(format!(
                "input {i} ('{v}') is a constant; cnnpack needs a computed value here"
            )));
        }
        Ok(v.to_string())
    }

    /// Shape of a computed value at the declared batch (1 when symbolic).
    fn shape(&mut self, v: &str) -> Result<Vec<usize>, ImportError> {
        self.shapes
            .as_ref()
            .and_then(|s| s.get(v))
            .cloned()
            .ok_or_else(|| {
                ImportError::Malformed(format!(
                    "value '{v}' is used before it is produced (nodes must be in topological order)"
                ))
            })
    }

    /// Records the shape of the node just pushed.
    fn track_last(&mut self) -> Result<(), ImportError> {
        let Some(shapes) = self.shapes.as_mut() else {
            return Ok(());
        };
        let node = self.graph.nodes.last_mut().expect("called after a push");
        match node_shape_bounded(node, shapes)? {
            Some(s) => {
                shapes.insert(node.output.clone(), s);
            }
            // Out of order: sort_and_validate decides (cycle, dangling or just unsorted).
            None => self.shapes = None,
        }
        Ok(())
    }

    fn convert(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let one = |op: Op, x: String| Ok(Out::Node(op, vec![x]));
        match ctx.op {
            "Conv" => self.conv(ctx),
            "Gemm" => self.gemm(ctx),
            "MatMul" => {
                a.only(&[])?;
                let x = self.dynamic(ctx, 0)?;
                let w = self.constant(ctx, 1, "B")?;
                if w.dims.len() != 2 {
                    return Err(ctx.unsupported("B", format!("weight of rank {}", w.dims.len())));
                }
                let weight = transpose2(&w.to_tensor());
                one(
                    Op::Linear(Linear {
                        weight: Weights::Dense(weight),
                        bias: None,
                    }),
                    x,
                )
            }
            "Identity" if ctx.input(0).is_some_and(|v| self.consts.contains_key(v)) => {
                // An alias of a constant stays a constant.
                a.only(&[])?;
                Ok(Out::Const(self.constant(ctx, 0, "input")?.clone()))
            }
            "Relu" | "Sigmoid" | "Identity" => {
                a.only(&["consumed_inputs"])?;
                let x = self.dynamic(ctx, 0)?;
                let op = match ctx.op {
                    "Relu" => Op::Relu,
                    "Sigmoid" => Op::Sigmoid,
                    _ => Op::Identity,
                };
                one(op, x)
            }
            "Dropout" => {
                a.only(&["ratio", "seed", "is_test", "consumed_inputs"])?;
                if let Some(t) = self.opt_constant(ctx, 2, "training_mode")? {
                    if t.scalar().is_some_and(|v| v != 0.0) {
                        return Err(ctx.unsupported("training_mode", "true"));
                    }
                }
                let x = self.dynamic(ctx, 0)?;
                one(Op::Identity, x)
            }
            "LeakyRelu" => {
                a.only(&["alpha"])?;
                let alpha = a.float_or("alpha", 0.01)?;
                one(Op::LeakyRelu { alpha }, self.dynamic(ctx, 0)?)
            }
            "Clip" => {
                let (min, max) = if self.opset < 11 {
                    a.only(&["min", "max", "consumed_inputs"])?;
                    (
                        a.float_or("min", f32::NEG_INFINITY)?,
                        a.float_or("max", f32::INFINITY)?,
                    )
                } else {
                    a.only(&[])?;
                    let bound = |i: usize, role: &str, default: f32| -> Result<f32, ImportError> {
                        match self.opt_constant(ctx, i, role)? {
                            None => Ok(default),
                            Some(c) => c.scalar().ok_or_else(|| {
                                ctx.unsupported(role, format!("tensor of shape {:?}", c.dims))
                            }),
                        }
                    };
                    (
                        bound(1, "min", f32::NEG_INFINITY)?,
                        bound(2, "max", f32::INFINITY)?,
                    )
                };
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(ctx.unsupported("min/max", (min, max)));
                }
                one(Op::Clip { min, max }, self.dynamic(ctx, 0)?)
            }
            "MaxPool" | "AveragePool" => self.pool(ctx),
            "GlobalAveragePool" => {
                a.only(&[])?;
                one(Op::GlobalAvgPool, self.dynamic(ctx, 0)?)
            }
            "BatchNormalization" => {
                a.only(&[
                    "epsilon",
                    "momentum",
                    "spatial",
                    "training_mode",
                    "is_test",
                    "consumed_inputs",
                ])?;
                if a.int_or("spatial", 1)? != 1 {
                    return Err(ctx.unsupported("spatial", a.int_or("spatial", 1)?));
                }
                if a.int_or("training_mode", 0)? != 0 {
                    return Err(ctx.unsupported("training_mode", a.int_or("training_mode", 0)?));
                }
                let epsilon = a.float_or("epsilon", 1e-5)?;
                if !(epsilon >= 0.0 && epsilon.is_finite()) {
                    return Err(ctx.unsupported("epsilon", epsilon));
                }
                let x = self.dynamic(ctx, 0)?;
                let scale = self.constant(ctx, 1, "scale")?.to_tensor();
                let bias = self.constant(ctx, 2, "B")?.to_tensor();
                let mean = self.constant(ctx, 3, "mean")?.to_tensor();
                let var = self.constant(ctx, 4, "var")?.to_tensor();
                let flat = |mut t: Tensor| {
                    t.shape = vec![t.data.len()];
                    t
                };
                one(
                    Op::BatchNorm {
                        scale: flat(scale),
                        bias: flat(bias),
                        mean: flat(mean),
                        var: flat(var),
                        epsilon,
                    },
                    x,
                )
            }
            "Add" | "Sub" | "Mul" | "Div" => self.binary(ctx),
            "Concat" => {
                a.only(&["axis"])?;
                let axis = a
                    .int("axis")?
                    .ok_or_else(|| ctx.unsupported("axis", "<missing>"))?;
                let mut inputs = Vec::new();
                for i in 0..ctx.np.input.len() {
                    inputs.push(self.dynamic(ctx, i)?);
                }
                if inputs.is_empty() {
                    return Err(ctx.bad("no inputs"));
                }
                let rank = if axis >= 0 {
                    usize::MAX >> 1
                } else {
                    self.shape(&inputs[0])?.len()
                };
                let axis = norm_axis(axis, rank).ok_or_else(|| ctx.unsupported("axis", axis))?;
                Ok(Out::Node(Op::Concat { axis }, inputs))
            }
            "Flatten" => {
                a.only(&["axis"])?;
                let x = self.dynamic(ctx, 0)?;
                let axis = a.int_or("axis", 1)?;
                // A non-negative axis needs no shape (the shape rules check it).
                let rank = if axis >= 0 {
                    usize::MAX >> 1
                } else {
                    self.shape(&x)?.len()
                };
                // Flatten allows axis in -rank..=rank.
                let ax = if axis < 0 { axis + rank as i64 } else { axis };
                // Axis 0 would fold the batch into the features.
                if !(1..=rank as i64).contains(&ax) {
                    return Err(ctx.unsupported("axis", axis));
                }
                let axis = ax as usize;
                one(Op::Flatten { axis }, x)
            }
            "Reshape" => self.reshape(ctx),
            "LRN" => {
                a.only(&["size", "alpha", "beta", "bias"])?;
                let size = a
                    .int("size")?
                    .ok_or_else(|| ctx.unsupported("size", "<missing>"))?;
                if !(1..=4096).contains(&size) {
                    return Err(ctx.unsupported("size", size));
                }
                one(
                    Op::Lrn {
                        size: size as usize,
                        alpha: a.float_or("alpha", 1e-4)?,
                        beta: a.float_or("beta", 0.75)?,
                        bias: a.float_or("bias", 1.0)?,
                    },
                    self.dynamic(ctx, 0)?,
                )
            }
            "Softmax" => {
                a.only(&["axis"])?;
                let x = self.dynamic(ctx, 0)?;
                let rank = self.shape(&x)?.len();
                let default = if self.opset < 13 { 1 } else { -1 };
                let axis = a.int_or("axis", default)?;
                let ax = norm_axis(axis, rank);
                // Before opset 13 Softmax coerces to 2-D at `axis`; that is the
                // last-axis softmax when axis is the last one.
                if ax != Some(rank.saturating_sub(1)) {
                    return Err(ctx.unsupported(
                        "axis",
                        format!("{axis} on a rank-{rank} input (only the last axis is supported)"),
                    ));
                }
                one(Op::Softmax, x)
            }
            "Pad" => self.pad(ctx),
            "Slice" => self.slice(ctx),
            "Transpose" => {
                a.only(&["perm"])?;
                let x = self.dynamic(ctx, 0)?;
                let rank = self.shape(&x)?.len();
                let perm = a
                    .ints("perm")?
                    .unwrap_or_else(|| (0..rank as i64).rev().collect());
                if perm.iter().enumerate().any(|(i, &p)| p != i as i64) || perm.len() != rank {
                    return Err(ctx.unsupported("perm", perm));
                }
                one(Op::Identity, x)
            }
            "Constant" => {
                a.only(&[
                    "value",
                    "value_float",
                    "value_floats",
                    "value_int",
                    "value_ints",
                ])?;
                if let Some(at) = a.get("value") {
                    let t = at.t.as_ref().ok_or_else(|| a.wrong_type(at, "TENSOR"))?;
                    let mut t = t.clone();
                    if t.name.as_deref().unwrap_or("").is_empty() {
                        t.name = Some(ctx.name.clone());
                    }
                    Ok(Out::Const(Const::from_proto(&t)?))
                } else if a.get("value_float").is_some() {
                    Ok(Out::Const(Const {
                        dims: vec![],
                        data: ConstData::F32(vec![a.float_or("value_float", 0.0)?]),
                    }))
                } else if let Some(v) = a.floats("value_floats")? {
                    Ok(Out::Const(Const {
                        dims: vec![v.len()],
                        data: ConstData::F32(v),
                    }))
                } else if let Some(v) = a.int("value_int")? {
                    Ok(Out::Const(Const {
                        dims: vec![],
                        data: ConstData::I64(vec![v]),
                    }))
                } else if let Some(v) = a.ints("value_ints")? {
                    Ok(Out::Const(Const {
                        dims: vec![v.len()],
                        data: ConstData::I64(v),
                    }))
                } else {
                    Err(ctx.bad("Constant without a value"))
                }
            }
            _ => Err(ImportError::UnsupportedOp {
                op: ctx.op.into(),
                node: ctx.name.clone(),
            }),
        }
    }

    fn conv(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let x = self.dynamic(ctx, 0)?;
        let w = self.constant(ctx, 1, "W")?;
        if w.dims.len() != 4 {
            return Err(ctx.unsupported(
                "W",
                format!("weight of rank {} (only 2-D convolution)", w.dims.len()),
            ));
        }
        if w.dims.contains(&0) {
            return Err(ctx.unsupported("W", format!("weight of shape {:?}", w.dims)));
        }
        let weight = w.to_tensor();
        let bias = match self.opt_constant(ctx, 2, "B")? {
            None => None,
            Some(b) => {
                let mut t = b.to_tensor();
                t.shape = vec![t.data.len()];
                Some(t)
            }
        };
        let groups = a.int_or("group", 1)?;
        if groups < 1 || groups as u64 > MAX_ELEMENTS {
            return Err(ctx.unsupported("group", groups));
        }
        let kernel = [weight.shape[2], weight.shape[3]];
        if let Some(ks) = a.ints("kernel_shape")? {
            if ks.len() != 2 || ks[0] as usize != kernel[0] || ks[1] as usize != kernel[1] {
                return Err(ctx.unsupported("kernel_shape", ks));
            }
        }
        let stride = a.sizes("strides", 2, 1)?;
        let dilation = a.sizes("dilations", 2, 1)?;
        let span = [
            dilation[0] * (kernel[0].max(1) - 1) + 1,
            dilation[1] * (kernel[1].max(1) - 1) + 1,
        ];
        let pads = self.pads(ctx, &x, [stride[0], stride[1]], span)?;
        Ok(Out::Node(
            Op::Conv(Conv2d {
                kernel,
                stride: [stride[0], stride[1]],
                pads,
                dilation: [dilation[0], dilation[1]],
                groups: groups as usize,
                weight: Weights::Dense(weight),
                bias,
            }),
            vec![x],
        ))
    }

    /// Explicit or automatic padding (top, left, bottom, right) for a window
    /// spanning `span` input pixels.
    fn pads(
        &mut self,
        ctx: &Ctx,
        x: &str,
        stride: [usize; 2],
        span: [usize; 2],
    ) -> Result<[usize; 4], ImportError> {
        let a = ctx.attrs();
        let auto = a.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" => match a.ints("pads")? {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 && p.iter().all(|&v| (0..1 << 24).contains(&v)) => {
                    Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
                }
                Some(p) => Err(ctx.unsupported("pads", p)),
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let shape = self.shape(x)?;
                if shape.len() != 4 {
                    return Err(ctx.bad(format!("expects an NCHW input, got {shape:?}")));
                }
                let mut begin = [0; 2];
                let mut end = [0; 2];
                for i in 0..2 {
                    let inp = shape[2 + i];
                    let out = inp.div_ceil(stride[i]);
                    let total = ((out - 1) * stride[i] + span[i]).saturating_sub(inp);
                    let small = total / 2;
                    let (b, e) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    begin[i] = b;
                    end[i] = e;
                }
                Ok([begin[0], begin[1], end[0], end[1]])
            }
            other => Err(ctx.unsupported("auto_pad", other)),
        }
    }

    fn pool(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let max = ctx.op == "MaxPool";
        if max {
            a.only(&[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ])?;
            let d = a.sizes("dilations", 2, 1)?;
            if d != [1, 1] {
                return Err(ctx.unsupported("dilations", d));
            }
        } else {
            a.only(&[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ])?;
            let d = a.sizes("dilations", 2, 1)?;
            if d != [1, 1] {
                return Err(ctx.unsupported("dilations", d));
            }
        }
        let x = self.dynamic(ctx, 0)?;
        let kernel = match a.ints("kernel_shape")? {
            Some(k) if k.len() == 2 && k.iter().all(|&v| (1..1 << 24).contains(&v)) => {
                [k[0] as usize, k[1] as usize]
            }
            k => return Err(ctx.unsupported("kernel_shape", k)),
        };
        let stride = a.sizes("strides", 2, 1)?;
        let stride = [stride[0], stride[1]];
        let ceil_mode = match a.int_or("ceil_mode", 0)? {
            0 => false,
            1 => true,
            v => return Err(ctx.unsupported("ceil_mode", v)),
        };
        let count_include_pad = match a.int_or("count_include_pad", 0)? {
            0 => false,
            1 => true,
            v => return Err(ctx.unsupported("count_include_pad", v)),
        };
        let pads = self.pads(ctx, &x, stride, kernel)?;
        let p = Pool2d {
            kernel,
            stride,
            pads,
            ceil_mode,
            count_include_pad,
        };
        Ok(Out::Node(
            if max { Op::MaxPool(p) } else { Op::AvgPool(p) },
            vec![x],
        ))
    }

    fn gemm(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["alpha", "beta", "transA", "transB", "broadcast"])?;
        if a.int_or("transA", 0)? != 0 {
            return Err(ctx.unsupported("transA", a.int_or("transA", 0)?));
        }
        let trans_b = a.int_or("transB", 0)?;
        let alpha = a.float_or("alpha", 1.0)?;
        let beta = a.float_or("beta", 1.0)?;
        let x = self.dynamic(ctx, 0)?;
        let w = self.constant(ctx, 1, "B")?;
        if w.dims.len() != 2 {
            return Err(ctx.unsupported("B", format!("weight of rank {}", w.dims.len())));
        }
        let mut weight = match trans_b {
            0 => transpose2(&w.to_tensor()),
            1 => w.to_tensor(),
            v => return Err(ctx.unsupported("transB", v)),
        };
        if alpha != 1.0 {
            weight.data.iter_mut().for_each(|v| *v *= alpha);
        }
        let out = weight.shape[0];
        let bias = match self.opt_constant(ctx, 2, "C")? {
            None => None,
            Some(c) => {
                let mut t = c.to_tensor();
                let ok = match t.shape.as_slice() {
                    [n] | [1, n] => *n == out || *n == 1,
                    [] => true,
                    _ => false,
                };
                if !ok {
                    return Err(ctx.unsupported(
                        "C",
                        format!("bias of shape {:?} for {out} outputs", t.shape),
                    ));
                }
                if t.data.len() == 1 {
                    t.data = vec![t.data[0]; out];
                }
                t.shape = vec![out];
                if beta != 1.0 {
                    t.data.iter_mut().for_each(|v| *v *= beta);
                }
                Some(t)
            }
        };
        Ok(Out::Node(
            Op::Linear(Linear {
                weight: Weights::Dense(weight),
                bias,
            }),
            vec![x],
        ))
    }

    fn binary(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["consumed_inputs"])?;
        let kind = match ctx.op {
            "Add" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            _ => BinaryKind::Div,
        };
        if ctx.np.input.len() != 2 {
            return Err(ctx.bad(format!("expects 2 inputs, has {}", ctx.np.input.len())));
        }
        let c0 = ctx.input(0).and_then(|v| self.consts.get(v));
        let c1 = ctx.input(1).and_then(|v| self.consts.get(v));
        match (c0, c1) {
            (None, None) if kind == BinaryKind::Add => Ok(Out::Node(
                Op::Add,
                vec![self.dynamic(ctx, 0)?, self.dynamic(ctx, 1)?],
            )),
            (None, None) => Err(ctx.unsupported(
                "inputs",
                format!("{} of two computed values (only Add is supported)", ctx.op),
            )),
            (Some(_), Some(_)) => Err(ctx.bad("both operands are constants")),
            (Some(c), None) | (None, Some(c)) => {
                let constant_first = c0.is_some();
                let constant = c.to_tensor();
                let x = self.dynamic(ctx, if constant_first { 1 } else { 0 })?;
                Ok(Out::Node(
                    Op::ConstBinary {
                        kind,
                        constant,
                        constant_first,
                    },
                    vec![x],
                ))
            }
        }
    }

    fn reshape(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["allowzero", "shape"])?;
        let target: Vec<i64> = if self.opset < 5 {
            a.ints("shape")?.unwrap_or_default()
        } else {
            let c = self.constant(ctx, 1, "shape")?;
            c.ints()
                .ok_or_else(|| ctx.unsupported("shape", "a float tensor"))?
                .to_vec()
        };
        let allowzero = a.int_or("allowzero", 0)? != 0;
        // A Reshape of a constant (e.g. a weight reshaped for MatMul) is folded.
        if let Some(c) = ctx.input(0).and_then(|v| self.consts.get(v)) {
            let dims = reshape_dims(&c.dims, &target, allowzero)
                .ok_or_else(|| ctx.unsupported("shape", &target))?;
            let mut c = c.clone();
            c.dims = dims;
            return Ok(Out::Const(c));
        }
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let dims = reshape_dims(&shape, &target, allowzero);
        let flat = vec![shape[0], shape[1..].iter().product()];
        // Only a flatten to [N, rest] is supported. A literal first dimension must
        // equal the batch fixed in the file (or 0 / -1, which follow it).
        let batch_ok = match target.first() {
            Some(&0) => !allowzero,
            Some(&-1) => true,
            Some(&n) => {
                self.graph.input.declared_batch == Some(n as usize) && shape[0] == n as usize
            }
            None => false,
        };
        if dims.as_deref() != Some(flat.as_slice()) || target.len() != 2 || !batch_ok {
            return Err(ctx.unsupported(
                "shape",
                format!("{target:?} on input {shape:?} (only a flatten to [N, rest] is supported)"),
            ));
        }
        Ok(Out::Node(Op::Flatten { axis: 1 }, vec![x]))
    }

    fn pad(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        let mode = a.string("mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(ctx.unsupported("mode", mode));
        }
        let (raw, value) = if self.opset < 11 {
            a.only(&["mode", "pads", "paddings", "value"])?;
            let p = a
                .ints("pads")?
                .or(a.ints("paddings")?)
                .ok_or_else(|| ctx.unsupported("pads", "<missing>"))?;
            (p, a.float_or("value", 0.0)?)
        } else {
            a.only(&["mode"])?;
            let p = self.constant(ctx, 1, "pads")?;
            let p = p
                .ints()
                .ok_or_else(|| ctx.unsupported("pads", "a float tensor"))?
                .to_vec();
            let value = match self.opt_constant(ctx, 2, "constant_value")? {
                None => 0.0,
                Some(c) => c.scalar().ok_or_else(|| {
                    ctx.unsupported("constant_value", format!("shape {:?}", c.dims))
                })?,
            };
            let p = match self.opt_constant(ctx, 3, "axes")? {
                None => p,
                Some(axes) => {
                    let axes = axes
                        .ints()
                        .ok_or_else(|| ctx.unsupported("axes", "a float tensor"))?;
                    if p.len() != 2 * axes.len() {
                        return Err(ctx.unsupported("pads", &p));
                    }
                    let mut full = vec![0i64; 2 * rank];
                    for (j, &ax) in axes.iter().enumerate() {
                        let ax =
                            norm_axis(ax, rank).ok_or_else(|| ctx.unsupported("axes", axes))?;
                        full[ax] = p[j];
                        full[ax + rank] = p[j + axes.len()];
                    }
                    full
                }
            };
            (p, value)
        };
        if raw.len() != 2 * rank || raw.iter().any(|&v| !(0..1 << 24).contains(&v)) {
            return Err(ctx.unsupported("pads", format!("{raw:?} for rank {rank}")));
        }
        if !value.is_finite() {
            return Err(ctx.unsupported("constant_value", value));
        }
        if raw[0] != 0 || raw[rank] != 0 {
            return Err(ctx.unsupported("pads", format!("{raw:?} pads the batch axis")));
        }
        Ok(Out::Node(
            Op::Pad {
                pads: raw.iter().map(|&v| v as usize).collect(),
                value,
            },
            vec![x],
        ))
    }

    fn slice(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let rank = shape.len();
        let ints = |c: &Const, role: &str| -> Result<Vec<i64>, ImportError> {
            c.ints()
                .map(|v| v.to_vec())
                .ok_or_else(|| ctx.unsupported(role, "a float tensor"))
        };
        let (starts, ends, axes, steps) = if self.opset < 10 {
            a.only(&["starts", "ends", "axes"])?;
            let starts = a
                .ints("starts")?
                .ok_or_else(|| ctx.unsupported("starts", "<missing>"))?;
            let ends = a
                .ints("ends")?
                .ok_or_else(|| ctx.unsupported("ends", "<missing>"))?;
            (starts, ends, a.ints("axes")?, None)
        } else {
            a.only(&[])?;
            let starts = ints(self.constant(ctx, 1, "starts")?, "starts")?;
            let ends = ints(self.constant(ctx, 2, "ends")?, "ends")?;
            let axes = match self.opt_constant(ctx, 3, "axes")? {
                Some(c) => Some(ints(c, "axes")?),
                None => None,
            };
            let steps = match self.opt_constant(ctx, 4, "steps")? {
                Some(c) => Some(ints(c, "steps")?),
                None => None,
            };
            (starts, ends, axes, steps)
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(ctx.unsupported(
                "starts/ends/axes/steps",
                format!(
                    "lengths {} {} {} {}",
                    starts.len(),
                    ends.len(),
                    axes.len(),
                    steps.len()
                ),
            ));
        }
        let mut s = vec![0usize; rank];
        let mut e = shape.clone();
        e[0] = WHOLE_AXIS;
        let mut st = vec![1usize; rank];
        let mut seen = HashSet::new();
        for j in 0..starts.len() {
            let ax = norm_axis(axes[j], rank)
                .filter(|ax| seen.insert(*ax))
                .ok_or_else(|| ctx.unsupported("axes", &axes))?;
            if !(1..1 << 24).contains(&steps[j]) {
                return Err(ctx.unsupported("steps", &steps));
            }
            if ax == 0 {
                // The batch is not known at import time: only the whole axis.
                let whole = starts[j] == 0
                    && steps[j] == 1
                    && (ends[j] >= i32::MAX as i64
                        || self
                            .graph
                            .input
                            .declared_batch
                            .is_some_and(|b| ends[j] >= b as i64));
                if !whole {
                    return Err(ctx.unsupported(
                        "starts/ends",
                        format!(
                            "{}..{} step {} on the batch axis",
                            starts[j], ends[j], steps[j]
                        ),
                    ));
                }
                continue;
            }
            let d = shape[ax] as i64;
            let clamp = |v: i64| {
                if v < 0 {
                    (v.saturating_add(d)).max(0)
                } else {
                    v.min(d)
                }
            };
            let (b, en) = (clamp(starts[j]), clamp(ends[j]));
            if b >= en {
                return Err(ctx.unsupported(
                    "starts/ends",
                    format!(
                        "empty slice {}..{} of axis {ax} (size {d})",
                        starts[j], ends[j]
                    ),
                ));
            }
            s[ax] = b as usize;
            e[ax] = en as usize;
            st[ax] = steps[j] as usize;
        }
        Ok(Out::Node(
            Op::Slice {
                starts: s,
                ends: e,
                steps: st,
            },
            vec![x],
        ))
    }
}

/// `axis` in `-rank..rank` as a non-negative index.
fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// The shape `target` (ONNX Reshape rules: 0 copies, -1 infers) gives `input`.
fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len().min(64));
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i)?),
            t if t >= 0 && (t as u64) <= MAX_ELEMENTS => out.push(t as usize),
            _ => return None,
        }
    }
    let known = out.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    } else if known != total {
        return None;
    }
    Some(out)
}

/// `[r, c] -> [c, r]`.
fn transpose2(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    Tensor {
        shape: vec![c, r],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false), Some(vec![2, 12]));
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[-1, 12], false),
            Some(vec![2, 12])
        );
        assert_eq!(reshape_dims(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(reshape_dims(&[2, 3, 4], &[-1, -1], false), None);
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, 0, 4], true), None);
    }

    #[test]
    fn axes_normalise() {
        assert_eq!(norm_axis(-1, 4), Some(3));
        assert_eq!(norm_axis(4, 4), None);
        assert_eq!(norm_axis(-5, 4), None);
    }

    #[test]
    fn transpose_is_exact() {
        let t = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).expect("6 values");
        let u = transpose2(&t);
        assert_eq!(u.shape, vec![3, 2]);
        assert_eq!(u.data, vec![1., 4., 2., 5., 3., 6.]);
    }
}
