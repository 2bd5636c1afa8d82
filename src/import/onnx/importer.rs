//! Per-node import state: the `Importer` (graph so far, constants, shapes), the
//! node context `Ctx`, and the checks every node goes through (domain, outputs,
//! constant or computed inputs, shape tracking) before its op converter runs.

use super::attributes::Attrs;
use super::bounds::node_shape_bounded;
use super::tensors::{Const, ConstData};
use crate::graph::{Graph, Node, Op, Shapes};
use crate::import::proto::NodeProto;
use crate::import::ImportError;
use std::collections::{HashMap, HashSet};

pub(super) struct Importer {
    pub(super) graph: Graph,
    pub(super) consts: HashMap<String, Const>,
    pub(super) opset: i64,
    pub(super) names: HashSet<String>,
    /// Shape of every computed value at the declared batch (1 when symbolic);
    /// `None` once a node read a value not produced yet (file out of order).
    pub(super) shapes: Option<Shapes>,
    /// Shape-like integer values that depend on the batch size (a `Shape` of a computed
    /// value and what is computed from it), folded into the Reshape that reads them.
    pub(super) dims: HashMap<String, DimsValue>,
    /// The model has no batch axis (a fully static input the batched import refused):
    /// its input is read as one item of a batch of 1 that the IR adds in front, so every
    /// ONNX axis `a >= 0` is IR axis `a + 1` (see `UNBATCHED`).
    pub(super) lift: bool,
}

/// Metadata key marking a graph imported without a batch axis: its input and outputs
/// carry an extra leading axis of 1 that callers add and strip (`cnnpack run` does).
pub const UNBATCHED: &str = "cnnpack.unbatched";

/// One entry of a shape-like integer tensor: known at import, or a multiple of the
/// batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dim {
    /// A known integer.
    Fixed(i64),
    /// `k * N` for the batch size N.
    Batch(i64),
}

/// An integer tensor of rank 0 or 1 whose entries may depend on the batch size.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct DimsValue {
    /// Its shape: `[]` (a scalar) or `[len]`.
    pub(super) shape: Vec<usize>,
    /// Its entries.
    pub(super) vals: Vec<Dim>,
}

/// Per-node context: names for errors, input lookup.
pub(super) struct Ctx<'a> {
    pub(super) np: &'a NodeProto,
    pub(super) op: &'a str,
    pub(super) name: String,
}

impl Ctx<'_> {
    pub(super) fn bad(&self, reason: impl Into<String>) -> ImportError {
        ImportError::BadNode {
            op: self.op.into(),
            node: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The name of input `i`, or `None` when absent or empty (optional input).
    pub(super) fn input(&self, i: usize) -> Option<&str> {
        self.np
            .input
            .get(i)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }

    pub(super) fn attrs(&self) -> Attrs<'_> {
        Attrs {
            list: &self.np.attribute,
            op: self.op,
            node: &self.name,
        }
    }

    pub(super) fn unsupported(&self, attribute: &str, value: impl std::fmt::Debug) -> ImportError {
        self.attrs().unsupported(attribute, value)
    }
}

/// What one ONNX node imports to. Short-lived (returned by a conversion step and
/// consumed at once), so the size gap between a node (an `Op`, ~260 bytes) and a
/// constant costs nothing worth an allocation per node.
#[allow(clippy::large_enum_variant)]
pub(super) enum Out {
    /// A node of the IR.
    Node(Op, Vec<String>),
    /// A constant value (Constant nodes, folded Reshape).
    Const(Const),
    /// A shape-like value computed from the batch size (stored as a constant when every
    /// entry is known).
    Dims(DimsValue),
    /// Several IR nodes (a lowering or a multi-output op), each `(op, inputs, output)`,
    /// in order; node `main` takes the ONNX node's name, the others names made from it.
    Nodes {
        nodes: Vec<(Op, Vec<String>, String)>,
        main: usize,
    },
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

    pub(super) fn node(
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
            // Split makes every output.
            if op != "Split" && !extra.is_empty() && used.contains(extra.as_str()) {
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
            Out::Dims(d) => {
                if d.vals.iter().all(|v| matches!(v, Dim::Fixed(_))) {
                    let ints = d
                        .vals
                        .iter()
                        .map(|v| match v {
                            Dim::Fixed(i) | Dim::Batch(i) => *i,
                        })
                        .collect();
                    let c = Const {
                        dims: d.shape,
                        data: ConstData::I64(ints),
                    };
                    self.consts.insert(output.clone(), c);
                } else {
                    self.dims.insert(output.clone(), d);
                }
            }
            Out::Nodes { nodes, main } => {
                for (k, (op, inputs, out)) in nodes.into_iter().enumerate() {
                    if self.consts.contains_key(&out) || out == self.graph.input.name {
                        return Err(ctx.bad(format!("output '{out}' is already defined")));
                    }
                    let name = if k == main {
                        ctx.name.clone()
                    } else {
                        let base = format!("{}/{}", ctx.name, op.kind());
                        let mut name = base.clone();
                        let mut j = 1;
                        while !self.names.insert(name.clone()) {
                            name = format!("{base}_{j}");
                            j += 1;
                        }
                        name
                    };
                    self.graph.nodes.push(Node {
                        name,
                        op,
                        inputs,
                        output: out,
                    });
                    self.track_last()?;
                }
            }
        }
        Ok(())
    }

    /// For a node that reads a value an unsupported node should have made (so it is not
    /// imported): the unsupported operator or attribute its conversion meets, if any,
    /// so that one load names every one. Nothing is added to the graph; other errors
    /// (inputs it cannot find) are consequences of the first and dropped.
    pub(super) fn check_downstream(&mut self, np: &NodeProto, index: usize) -> Option<ImportError> {
        let op = np.op_type.as_deref().unwrap_or("");
        let name = self.unique_name(np, op, index);
        if !matches!(np.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
            return Some(ImportError::UnsupportedOp {
                op: format!("{}.{op}", np.domain.as_deref().unwrap_or("")),
                node: name,
            });
        }
        match self.convert(&Ctx { np, op, name }) {
            Err(
                e @ (ImportError::UnsupportedOp { .. } | ImportError::UnsupportedAttribute { .. }),
            ) => Some(e),
            _ => None,
        }
    }

    /// A constant input; error if absent or dynamic.
    pub(super) fn constant(&self, ctx: &Ctx, i: usize, role: &str) -> Result<&Const, ImportError> {
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

    pub(super) fn opt_constant(
        &self,
        ctx: &Ctx,
        i: usize,
        role: &str,
    ) -> Result<Option<&Const>, ImportError> {
        match ctx.input(i) {
            None => Ok(None),
            Some(_) => self.constant(ctx, i, role).map(Some),
        }
    }

    /// A dynamic input (computed by a node or the graph input).
    pub(super) fn dynamic(&self, ctx: &Ctx, i: usize) -> Result<String, ImportError> {
        let v = ctx
            .input(i)
            .ok_or_else(|| ctx.bad(format!("input {i} is missing")))?;
        if self.consts.contains_key(v) {
            return Err(ctx.bad(format!(
                "input {i} ('{v}') is a constant; cnnpack needs a computed value here"
            )));
        }
        if self.dims.contains_key(v) {
            return Err(ctx.unsupported(
                "inputs",
                format!(
                    "input {i} ('{v}') is a shape computed from the batch size; cnnpack folds \
                     such values only into Reshape, Gather, Concat, Unsqueeze, Squeeze, \
                     Slice, Cast and integer arithmetic"
                ),
            ));
        }
        Ok(v.to_string())
    }

    /// IR axis of an ONNX `axis` of a value of IR rank `rank` (negative counts from the
    /// end; a lifted model's axes move one up).
    pub(super) fn axis(&self, axis: i64, rank: usize) -> Option<usize> {
        if axis >= 0 {
            let a = axis as usize + self.lift as usize;
            (a < rank).then_some(a)
        } else {
            super::ops::norm_axis(axis, rank)
        }
    }

    /// The ONNX rank of a value of IR rank `rank`.
    pub(super) fn onnx_rank(&self, rank: usize) -> usize {
        rank - self.lift as usize
    }

    /// Shape of a computed value at the declared batch (1 when symbolic).
    pub(super) fn shape(&self, v: &str) -> Result<Vec<usize>, ImportError> {
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
        let node = self.graph.nodes.last().expect("called after a push");
        match node_shape_bounded(node, shapes)? {
            Some(s) => {
                shapes.insert(node.output.clone(), s);
            }
            // Out of order: sort_and_validate decides (cycle, dangling or just unsorted).
            None => self.shapes = None,
        }
        Ok(())
    }
}
