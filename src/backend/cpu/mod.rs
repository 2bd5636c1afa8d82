//! CPU backend: `reference` (naive, the yardstick) and `fast` (rayon + GEMM).

pub mod fast;
pub mod reference;

use crate::graph::{Graph, GraphError, Node, Tensor};
use std::collections::HashMap;

/// Errors from running a graph on the CPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A node got too few inputs.
    #[error("node '{node}' is missing an input")]
    Arity {
        /// The node.
        node: String,
    },
    /// The input tensor does not fit the model.
    #[error("input has shape {found:?}, the model expects {expected}")]
    BadInput {
        /// What the model takes, e.g. `[N, 3, 227, 227]`.
        expected: String,
        /// What was given.
        found: Vec<usize>,
    },
}

/// Checks `input` against the graph's input (any batch size) and returns the batch.
pub fn check_input(graph: &Graph, input: &Tensor) -> Result<usize, CpuError> {
    let item = &graph.input.item_shape;
    let ok = input.shape.len() == item.len() + 1
        && input.shape[1..] == item[..]
        && input.shape[0] > 0
        && input.data.len() == input.shape.iter().product::<usize>();
    if !ok {
        return Err(CpuError::BadInput {
            expected: format!(
                "[N, {}]",
                item.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            found: input.shape.clone(),
        });
    }
    Ok(input.shape[0])
}

/// Interprets the graph node by node with `kernel`, freeing each value after its
/// last reader. Shared by the reference and the fast executor.
pub(crate) fn run_with(
    graph: &Graph,
    input: &Tensor,
    kernel: impl Fn(&Node, &[&Tensor]) -> Result<Tensor, CpuError>,
) -> Result<Vec<Tensor>, CpuError> {
    let batch = check_input(graph, input)?;
    graph.infer_shapes(batch)?;
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for v in &n.inputs {
            last_use.insert(v, i);
        }
    }
    for o in &graph.outputs {
        last_use.insert(o, usize::MAX);
    }
    let mut values: HashMap<&str, Tensor> = HashMap::new();
    values.insert(&graph.input.name, input.clone());
    for (i, node) in graph.nodes.iter().enumerate() {
        let ins: Vec<&Tensor> = node.inputs.iter().map(|v| &values[v.as_str()]).collect();
        let out = kernel(node, &ins)?;
        values.insert(&node.output, out);
        for v in &node.inputs {
            if last_use.get(v.as_str()) == Some(&i) {
                values.remove(v.as_str());
            }
        }
    }
    Ok(graph
        .outputs
        .iter()
        .map(|o| values[o.as_str()].clone())
        .collect())
}
