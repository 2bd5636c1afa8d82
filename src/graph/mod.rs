//! The intermediate representation every stage reads and writes.
//!
//! A `Graph` has one NCHW (or `[N, K]`) input whose first axis is the batch, a list
//! of nodes in topological order, and named outputs. Values are named by strings, as
//! in ONNX. Constants live inside the ops (see `op.rs`).

mod builder;
mod fold;
mod op;
mod shape;
mod stats;

pub use builder::GraphBuilder;
pub use fold::fold;
pub use op::{BinaryKind, Conv2d, Linear, Op, PadMode, Pool2d, ReduceKind, UnaryOp};
pub(crate) use shape::node_shape;
pub use shape::{broadcast, reshape, slice_len, Shapes};
pub use stats::{layer_stats, LayerStats};
// `Tensor` and `Rng` live in the leaf module `crate::tensor` so that `weights` needs nothing
// from `graph`; the `graph::` paths stay for callers.
pub use crate::tensor::{Rng, Tensor};

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Errors in a graph's structure or shapes.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A node reads a value that nothing produces.
    #[error("node '{node}' reads '{value}', which no node or graph input produces")]
    DanglingInput {
        /// The reading node.
        node: String,
        /// The missing value.
        value: String,
    },
    /// Two producers for one value.
    #[error("value '{0}' is produced more than once")]
    DuplicateValue(String),
    /// The nodes cannot be ordered.
    #[error("the graph has a cycle through node '{0}'")]
    Cycle(String),
    /// A graph output is never produced.
    #[error("graph output '{0}' is not produced by any node")]
    MissingOutput(String),
    /// A shape rule failed.
    #[error("node '{node}' ({op}): {reason}")]
    Shape {
        /// The node at fault.
        node: String,
        /// Its op kind.
        op: &'static str,
        /// What disagreed.
        reason: String,
    },
    /// A weight or constant whose stored data disagrees with its shape or encoding.
    #[error("node '{node}': {what} is malformed: {reason}")]
    BadData {
        /// The node at fault.
        node: String,
        /// Which weight or constant.
        what: String,
        /// What disagreed.
        reason: String,
    },
    /// The graph input's shape is unusable (empty or with a zero dimension).
    #[error("graph input '{name}': item shape {shape:?} {reason}")]
    BadInput {
        /// The input's name.
        name: String,
        /// Its item shape.
        shape: Vec<usize>,
        /// What is wrong.
        reason: &'static str,
    },
    /// A constant holds NaN or infinity.
    #[error("node '{node}': {what} holds a non-finite value")]
    NonFinite {
        /// The node at fault.
        node: String,
        /// Which constant.
        what: String,
    },
}

/// One operation applied to named values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (the ONNX node name, or one made up at import).
    pub name: String,
    /// The operation and its parameters.
    pub op: Op,
    /// Names of the dynamic input values.
    pub inputs: Vec<String>,
    /// Name of the value it produces.
    pub output: String,
}

/// The model's input: axis 0 is the batch, the rest is fixed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphInput {
    /// Value name.
    pub name: String,
    /// Shape without the batch axis (e.g. `[3, 224, 224]` or `[784]`).
    pub item_shape: Vec<usize>,
    /// The batch size fixed in the source file, if it fixed one (informational:
    /// cnnpack runs any batch size).
    pub declared_batch: Option<usize>,
}

/// A CNN as a list of nodes in topological order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// The single graph input.
    pub input: GraphInput,
    /// Nodes, each after the producers of its inputs.
    pub nodes: Vec<Node>,
    /// Names of the output values, in order.
    pub outputs: Vec<String>,
    /// Free-form metadata (ONNX `metadata_props`: preprocessing, labels, ...).
    pub metadata: BTreeMap<String, String>,
}

impl Graph {
    /// Puts the nodes in topological order and checks the structure: unique
    /// producers, no dangling inputs, no cycles, every output produced.
    pub fn sort_and_validate(&mut self) -> Result<(), GraphError> {
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.output == self.input.name || producer.insert(&n.output, i).is_some() {
                return Err(GraphError::DuplicateValue(n.output.clone()));
            }
        }
        for n in &self.nodes {
            for v in &n.inputs {
                if *v != self.input.name && !producer.contains_key(v.as_str()) {
                    return Err(GraphError::DanglingInput {
                        node: n.name.clone(),
                        value: v.clone(),
                    });
                }
            }
        }
        for o in &self.outputs {
            if *o != self.input.name && !producer.contains_key(o.as_str()) {
                return Err(GraphError::MissingOutput(o.clone()));
            }
        }
        // Kahn's algorithm, stable with respect to the current order.
        let n = self.nodes.len();
        let mut indegree = vec![0usize; n];
        let mut users: Vec<Vec<usize>> = vec![vec![]; n];
        for (i, node) in self.nodes.iter().enumerate() {
            for v in &node.inputs {
                if let Some(&p) = producer.get(v.as_str()) {
                    indegree[i] += 1;
                    users[p].push(i);
                }
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in &users[i] {
                indegree[u] -= 1;
                if indegree[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() != n {
            let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(GraphError::Cycle(self.nodes[stuck].name.clone()));
        }
        let mut slots: Vec<Option<Node>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        self.nodes = order
            .into_iter()
            .map(|i| slots[i].take().expect("each index once"))
            .collect();
        Ok(())
    }

    /// Full validation before any kernel runs: structure (unique producers, no
    /// dangling inputs, no cycles, every output produced), a non-empty input shape
    /// without zeros, weights and constants whose data matches their shape and
    /// encoding and holds no NaN/Inf ([`Graph::check_values`]), and shapes at batch 1
    /// (zero-sized results refused). Clones the graph only when its nodes are out of
    /// topological order.
    pub fn validate(&self) -> Result<(), GraphError> {
        if self.input.item_shape.is_empty() || self.input.item_shape.contains(&0) {
            return Err(GraphError::BadInput {
                name: self.input.name.clone(),
                shape: self.input.item_shape.clone(),
                reason: if self.input.item_shape.is_empty() {
                    "is empty"
                } else {
                    "has a zero dimension"
                },
            });
        }
        let mut sorted = self.clone_if_unsorted();
        let g = match &mut sorted {
            Some(g) => {
                g.sort_and_validate()?;
                &*g
            }
            None => {
                // Already ordered: the structural checks without the copy.
                self.check_structure()?;
                self
            }
        };
        self.check_values()?;
        g.infer_shapes(1)?;
        Ok(())
    }

    /// `Some(clone)` when some node reads a value produced by a later node.
    fn clone_if_unsorted(&self) -> Option<Graph> {
        let position: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.output.as_str(), i))
            .collect();
        let unsorted = self.nodes.iter().enumerate().any(|(i, n)| {
            n.inputs
                .iter()
                .any(|v| position.get(v.as_str()).is_some_and(|&p| p >= i))
        });
        unsorted.then(|| self.clone())
    }

    /// The structural checks of `sort_and_validate` for a graph already in order:
    /// unique producers, every input produced earlier (so no cycles), outputs produced.
    fn check_structure(&self) -> Result<(), GraphError> {
        let mut produced: HashSet<&str> = HashSet::new();
        produced.insert(&self.input.name);
        for n in &self.nodes {
            for v in &n.inputs {
                if !produced.contains(v.as_str()) {
                    return Err(GraphError::DanglingInput {
                        node: n.name.clone(),
                        value: v.clone(),
                    });
                }
            }
            if !produced.insert(&n.output) {
                return Err(GraphError::DuplicateValue(n.output.clone()));
            }
        }
        for o in &self.outputs {
            if !produced.contains(o.as_str()) {
                return Err(GraphError::MissingOutput(o.clone()));
            }
        }
        Ok(())
    }

    /// Checks every weight and constant: data length and encoding parts against the
    /// shape (`Weights::check`), then no NaN or infinity. Names the node at fault.
    pub fn check_values(&self) -> Result<(), GraphError> {
        for node in &self.nodes {
            if let Some(w) = node.op.weights() {
                // The encoding first: expanding a malformed encoding could index out of range.
                w.check().map_err(|e| GraphError::BadData {
                    node: node.name.clone(),
                    what: "weight".into(),
                    reason: e.to_string(),
                })?;
                if !w.to_dense().data.iter().all(|v| v.is_finite()) {
                    return Err(GraphError::NonFinite {
                        node: node.name.clone(),
                        what: "weight".into(),
                    });
                }
            }
            for (role, t) in node.op.constants() {
                let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                if n != Some(t.data.len()) {
                    return Err(GraphError::BadData {
                        node: node.name.clone(),
                        what: role.into(),
                        reason: format!("{} values for shape {:?}", t.data.len(), t.shape),
                    });
                }
                if !t.data.iter().all(|v| v.is_finite()) {
                    return Err(GraphError::NonFinite {
                        node: node.name.clone(),
                        what: role.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Index of the node that produces `value`.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == value)
    }

    /// Names of values read by some node or listed as outputs.
    pub fn used_values(&self) -> HashSet<&str> {
        let mut used: HashSet<&str> = self.outputs.iter().map(|s| s.as_str()).collect();
        for n in &self.nodes {
            used.extend(n.inputs.iter().map(|s| s.as_str()));
        }
        used
    }

    /// Number of weight parameters (conv and fc weights and biases, BN constants).
    pub fn parameters(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                n.op.weights().map_or(0, |w| w.parameters())
                    + n.op.constants().iter().map(|(_, t)| t.len()).sum::<usize>()
            })
            .sum()
    }
}
