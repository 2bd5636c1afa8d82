//! Per-node import state: the `Importer` (graph so far, constants, shapes), the
//! node context `Ctx`, and the checks every node goes through (domain, outputs,
//! constant or computed inputs, shape tracking) before its op converter runs.

use super::attributes::Attrs;
use super::bounds::node_shape_bounded;
use super::tensors::Const;
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
        Ok(v.to_string())
    }

    /// Shape of a computed value at the declared batch (1 when symbolic).
    pub(super) fn shape(&mut self, v: &str) -> Result<Vec<usize>, ImportError> {
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
}
