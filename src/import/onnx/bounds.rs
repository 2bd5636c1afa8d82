//! Bounds on what an import may allocate: the `MAX_*` limits, and shape
//! inference that rejects any value over `MAX_ELEMENTS` per item as soon as it
//! appears (`bounded_shapes`, `node_shape_bounded`).

use crate::graph::{Graph, GraphError, Node, Op, Shapes};
use crate::import::ImportError;

/// Largest file `load_onnx` reads (4 GiB).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Largest element count of any tensor or value (2^31).
pub const MAX_ELEMENTS: u64 = 1 << 31;
/// Largest node count of a graph.
pub const MAX_NODES: usize = 1_000_000;

/// Shapes of every node in order, rejecting any value over `MAX_ELEMENTS` per
/// item as soon as it appears, so later shape arithmetic cannot overflow.
pub(super) fn bounded_shapes(graph: &Graph, batch: usize) -> Result<Shapes, ImportError> {
    let mut shapes = Shapes::new();
    let mut first = vec![batch];
    first.extend(&graph.input.item_shape);
    shapes.insert(graph.input.name.clone(), first);
    for i in 0..graph.nodes.len() {
        match node_shape_bounded(&graph.nodes[i], &shapes)? {
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
/// Ops go through the IR's own shape rules; Add and Concat are checked here (their
/// sums saturate).
pub(super) fn node_shape_bounded(
    node: &Node,
    shapes: &Shapes,
) -> Result<Option<Vec<usize>>, ImportError> {
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
            if ins.iter().any(|s| s.is_empty()) {
                return Err(shape_err(format!(
                    "expects inputs with a batch axis, got {ins:?}"
                )));
            }
            let refs: Vec<&Vec<usize>> = ins.iter().collect();
            crate::graph::node_shape(node, &refs)?
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
