//! The value types of training that the backends' trainers share with the `train` module:
//! the BatchNorm mode, the loss target, parameter gradients, the weight masks, the
//! trainability check, and `SetupError` for a graph or masks that do not fit training.
//!
//! Why here: `train` (the loop, the CPU training kernels) sits above `backend`, and
//! the GPU trainer (`backend::gpu::train`) runs the same steps on the device, so both
//! need this vocabulary. Defined below the backends, it lets the GPU trainer use it
//! without importing `train`; `train` re-exports every item under its old names
//! (`train::{BnMode, LossTarget, loss_target, ParamGrad, Grads, Masks, check_trainable}`,
//! also through `train::{forward, backward, sgd}`), and `TrainError` converts from
//! `SetupError` variant by variant (`From`), so a caller sees the same errors as before.

use crate::graph::{Graph, Op};
use crate::tensor::Tensor;
use crate::weights::Weights;
use std::collections::HashMap;

/// A graph or masks that do not fit training. Each variant has a twin of the same name
/// and message in `train::TrainError`, which converts from this one.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A layer whose weights are not `Weights::Dense` (compressed encodings are not trained).
    #[error("layer '{layer}' holds {encoding} weights; only dense layers can be trained")]
    NotTrainable {
        /// The layer.
        layer: String,
        /// Its weight encoding.
        encoding: &'static str,
    },
    /// A mask that does not fit its layer.
    #[error("mask for layer '{layer}': {reason}")]
    Mask {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A node that has no value the operation needs (e.g. a mask on a weightless op).
    #[error("node '{node}': {reason}")]
    Unsupported {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The graph lists no outputs.
    #[error("the graph has no output to put the loss on")]
    NoOutput,
}

/// How BatchNorm layers behave in the training forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Normalise with the batch's own mean and (biased) variance, as PyTorch's
    /// `train()` mode; `update_bn_running` then folds them into the running stats.
    Train,
    /// Use the running statistics stored in the op (inference behaviour, "frozen BN").
    Frozen,
}

/// Where the loss attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossTarget {
    /// The value cross-entropy is computed on (the logits).
    pub logits: String,
    /// Index of a final Softmax node that the training forward skips: when the node
    /// producing the graph's first output is a Softmax, the loss is taken on its
    /// input, as Caffe's `SoftmaxWithLoss` does.
    pub skipped_softmax: Option<usize>,
}

/// Finds the loss target of `graph`: its first output, or the input of that output's
/// Softmax when the graph ends in one (see `LossTarget`).
pub fn loss_target(graph: &Graph) -> Result<LossTarget, SetupError> {
    let out = graph.outputs.first().ok_or(SetupError::NoOutput)?;
    match graph.producer(out) {
        Some(i) if graph.nodes[i].op == Op::Softmax => Ok(LossTarget {
            logits: graph.nodes[i].inputs[0].clone(),
            skipped_softmax: Some(i),
        }),
        _ => Ok(LossTarget {
            logits: out.clone(),
            skipped_softmax: None,
        }),
    }
}

/// Gradient of one layer's parameters.
#[derive(Clone, Debug)]
pub struct ParamGrad {
    /// dL/dW for conv/fc (w.r.t. the weight the forward used, W⊙T under a forward
    /// mask), dL/dscale for BatchNorm.
    pub weight: Tensor,
    /// dL/dbias (conv/fc bias when present, BN bias).
    pub bias: Option<Tensor>,
}

/// Parameter gradients by node name.
pub type Grads = HashMap<String, ParamGrad>;

/// Per-layer weight masks, keyed by node name, one bool per entry of the layer's
/// weight tensor (row-major, the dense weight's order). Biases and BN parameters are
/// never masked.
///
/// - `grad`: a *gradient mask* (INQ). Entries with `false` are frozen: they get no
///   update at all — no gradient, no weight decay, no momentum (their velocity is
///   left untouched) — so their value never changes.
/// - `forward`: a *forward mask* T (dynamic network surgery). The forward pass and
///   the backward pass use W⊙T, while the update reaches every entry of W with the
///   gradient dL/d(W⊙T), so a pruned entry can grow back and be spliced in again.
///   The graph keeps the full W; call `Masks::apply_forward` to bake W⊙T into it.
///
/// A layer may have both. Layers without an entry are unmasked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Masks {
    /// Gradient masks (false = frozen entry).
    pub grad: HashMap<String, Vec<bool>>,
    /// Forward masks (false = entry reads as zero in the forward pass).
    pub forward: HashMap<String, Vec<bool>>,
}

impl Masks {
    /// No masks.
    pub fn new() -> Masks {
        Masks::default()
    }

    /// Checks that every mask names a conv/fc node of `graph` and has one entry per
    /// weight element.
    pub fn check(&self, graph: &Graph) -> Result<(), SetupError> {
        for (kind, map) in [("gradient", &self.grad), ("forward", &self.forward)] {
            for (name, mask) in map {
                let node = graph
                    .nodes
                    .iter()
                    .find(|n| &n.name == name)
                    .ok_or_else(|| SetupError::Mask {
                        layer: name.clone(),
                        reason: format!("{kind} mask for a layer the graph does not have"),
                    })?;
                let w = node.op.weights().ok_or_else(|| SetupError::Mask {
                    layer: name.clone(),
                    reason: format!(
                        "{kind} mask on a {} layer, which has no weights",
                        node.op.kind()
                    ),
                })?;
                if mask.len() != w.parameters() {
                    return Err(SetupError::Mask {
                        layer: name.clone(),
                        reason: format!(
                            "{kind} mask has {} entries, the weight {:?} has {}",
                            mask.len(),
                            w.shape(),
                            w.parameters()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Sets every weight entry whose forward mask is false to zero (W <- W⊙T).
    pub fn apply_forward(&self, graph: &mut Graph) -> Result<(), SetupError> {
        self.check(graph)?;
        for node in &mut graph.nodes {
            if let Some(mask) = self.forward.get(&node.name) {
                let w = dense_weight_mut(&node.name, &mut node.op)?;
                for (v, &m) in w.data.iter_mut().zip(mask) {
                    if !m {
                        *v = 0.0;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The dense weight of a conv/fc op; an error naming the layer for other encodings.
pub(crate) fn dense_weight_mut<'a>(
    layer: &str,
    op: &'a mut Op,
) -> Result<&'a mut Tensor, SetupError> {
    let w = match op {
        Op::Conv(c) => &mut c.weight,
        Op::Linear(l) => &mut l.weight,
        _ => {
            return Err(SetupError::Unsupported {
                node: layer.into(),
                reason: format!("{} has no weight tensor", op.kind()),
            })
        }
    };
    #[allow(unreachable_patterns)]
    match w {
        Weights::Dense(t) => Ok(t),
        other => Err(SetupError::NotTrainable {
            layer: layer.into(),
            encoding: other.encoding(),
        }),
    }
}

/// Checks that every parameterised layer of `graph` can be trained (its weights are
/// `Weights::Dense`); the error names the first layer that cannot.
pub fn check_trainable(graph: &Graph) -> Result<(), SetupError> {
    for node in &graph.nodes {
        match node.op.weights() {
            None | Some(Weights::Dense(_)) => {}
            Some(other) => {
                return Err(SetupError::NotTrainable {
                    layer: node.name.clone(),
                    encoding: other.encoding(),
                })
            }
        }
    }
    Ok(())
}
