//! Dynamic network surgery (Guo, Yao, Chen, NIPS 2016, arXiv:1608.04493) and the
//! conversion of dense weights with exact zeros to the sparse (CSR) encoding.
//!
//! DNS keeps the dense weights W of every conv/fc layer and a binary mask T beside
//! them (`train::Masks::forward`). The forward and backward passes use W⊙T, the SGD
//! update reaches every entry of W (so pruned weights keep moving and may return).
//! Surgery h(W) per layer k, with thresholds `a_k = 0.9·t_k`, `b_k = 1.1·t_k`:
//! `T = 0` where `|W| < a_k` (prune), `T = 1` where `|W| ≥ b_k` (splice), T unchanged in
//! between (the hysteresis band keeps masks from flickering).
//! `t_k = max(mean|W_k| + c_k·std|W_k|, 0)` is computed once, from the initial
//! weights. Surgery runs after an update with probability `σ(iter) = (1 + γ·iter)^(−power)`
//! until `iter_stop`, then the masks are frozen and training continues on W⊙T.
//! At the end W⊙T is stored as `Weights::Sparse` (or dense above the CPU kernel
//! crossover density, see `SparsifyOptions`).
//!
//! Biases: the authors' Caffe code (`CConvolution`/`CInnerProduct` layers) masks
//! biases with the same rule and its own thresholds. Here biases are **not** pruned:
//! `train::Masks` masks weights only, and biases are 0.1% of LeNet-5's parameters
//! (580 of 431,080), so they stay dense and are counted in full in every byte and
//! nonzero figure.

use super::CompressError;
use crate::backend::cpu::fast::sparse::{CONV_CROSSOVER, FC_CROSSOVER};
use crate::graph::{Graph, Op, Rng};
use crate::train::Masks;
use crate::weights::{SparseWeights, Weights};
use std::collections::HashMap;

/// Which layers `sparsify_graph` stores sparse.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum SparsePolicy {
    /// Sparse where the density is at most the CPU kernel crossover
    /// (`CONV_CROSSOVER`, `FC_CROSSOVER`), dense above it (default).
    #[default]
    Crossover,
    /// Sparse where the density is at most this fraction.
    MaxDensity(f64),
    /// Every conv/fc layer sparse, whatever its density.
    All,
}

/// What the sparse conversion did to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseReport {
    /// Node name.
    pub name: String,
    /// "conv" or "linear".
    pub op: &'static str,
    /// Logical weight shape.
    pub shape: Vec<usize>,
    /// Weight parameters.
    pub parameters: usize,
    /// Nonzero weights.
    pub nonzeros: usize,
    /// Dense weight bytes (f32); bias not counted.
    pub bytes_before: usize,
    /// Weight bytes after (CSR incl. indices and row pointers, or dense); bias not counted.
    pub bytes_after: usize,
    /// Whether the layer was stored sparse.
    pub sparse: bool,
}

impl SparseReport {
    /// Nonzeros over parameters, in [0, 1].
    pub fn density(&self) -> f64 {
        self.nonzeros as f64 / self.parameters.max(1) as f64
    }
}

/// Stores the exact zeros of every dense conv/fc weight as CSR (`Weights::Sparse`),
/// choosing per layer by `policy`; layers already sparse are re-encoded, other encodings
/// are rejected. No value changes: the result computes exactly what `graph` does.
pub fn sparsify_graph(
    graph: &Graph,
    policy: &SparsePolicy,
) -> Result<(Graph, Vec<SparseReport>), CompressError> {
    let mut out = graph.clone();
    let mut reports = Vec::new();
    for node in &mut out.nodes {
        let (weight, op, crossover) = match &mut node.op {
            Op::Conv(c) => (&mut c.weight, "conv", CONV_CROSSOVER),
            Op::Linear(l) => (&mut l.weight, "linear", FC_CROSSOVER),
            _ => continue,
        };
        let dense = match &*weight {
            Weights::Dense(t) => t.clone(),
            Weights::Sparse(s) => crate::graph::Tensor {
                shape: s.shape().to_vec(),
                data: s.dense_data(),
            },
            other => {
                return Err(CompressError::NotDense {
                    layer: node.name.clone(),
                    encoding: other.encoding(),
                })
            }
        };
        if dense.data.iter().any(|v| !v.is_finite()) {
            return Err(CompressError::NonFinite(node.name.clone()));
        }
        let sparse = SparseWeights::from_dense(dense.shape.clone(), &dense.data)
            .expect("from_dense gets data matching its shape");
        let density = sparse.density();
        let keep_sparse = match policy {
            SparsePolicy::Crossover => density <= crossover,
            SparsePolicy::MaxDensity(d) => density <= *d,
            SparsePolicy::All => true,
        };
        let report = SparseReport {
            name: node.name.clone(),
            op,
            shape: dense.shape.clone(),
            parameters: dense.data.len(),
            nonzeros: sparse.nnz(),
            bytes_before: dense.bytes(),
            bytes_after: if keep_sparse {
                sparse.bytes()
            } else {
                dense.bytes()
            },
            sparse: keep_sparse,
        };
        *weight = if keep_sparse {
            Weights::Sparse(sparse)
        } else {
            Weights::Dense(dense)
        };
        reports.push(report);
    }
    Ok((out, reports))
}
