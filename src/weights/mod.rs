//! Weight encodings of conv and fc layers.
//!
//! Every encoding describes the same logical tensor: conv `[Cout, Cin/groups, kh, kw]`,
//! fc `[out, in]`. The reduction axis K of output channel `co` is the flattened
//! `(ci, ky, kx)` index, `k = (ci * kh + ky) * kw + kx`, i.e. the row-major order of
//! the dense weight with the output channel taken off. Every kernel iterates K in this
//! order and every packed encoding added later (sketch bit planes, pow2 codes, CSR
//! columns) is laid out along it.

use crate::graph::Tensor;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// How a layer's weights are stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Weights {
    /// Plain f32, row-major.
    Dense(Tensor),
}

impl Weights {
    /// Logical shape of the weight tensor.
    pub fn shape(&self) -> &[usize] {
        match self {
            Weights::Dense(t) => &t.shape,
        }
    }

    /// Output channels (rows).
    pub fn rows(&self) -> usize {
        self.shape()[0]
    }

    /// Length of the reduction axis K per output channel.
    pub fn row_len(&self) -> usize {
        self.shape()[1..].iter().product()
    }

    /// The dense f32 tensor these weights stand for (borrowed when already dense).
    pub fn to_dense(&self) -> Cow<'_, Tensor> {
        match self {
            Weights::Dense(t) => Cow::Borrowed(t),
        }
    }

    /// Name of the encoding, for reports.
    pub fn encoding(&self) -> &'static str {
        match self {
            Weights::Dense(_) => "dense",
        }
    }

    /// Bytes the encoding occupies (on disk and in GPU memory).
    pub fn bytes(&self) -> usize {
        match self {
            Weights::Dense(t) => t.bytes(),
        }
    }

    /// Logical parameter count.
    pub fn parameters(&self) -> usize {
        self.shape().iter().product()
    }

    /// Parameters that are not zero.
    pub fn nonzeros(&self) -> usize {
        match self {
            Weights::Dense(t) => t.nonzeros(),
        }
    }
}
