//! The operators of the IR. Layer parameters live inside the op, so a pass
//! that compresses a layer rewrites one value and nothing else.

use super::Tensor;
use crate::weights::Weights;
use serde::{Deserialize, Serialize};

/// 2-D convolution, NCHW. Output channel `co` reads input channels
/// `g*Cin/groups .. (g+1)*Cin/groups` with `g = co / (Cout/groups)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along H and W.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Dilation along H and W.
    pub dilation: [usize; 2],
    /// Number of groups (Cin and Cout are divisible by it).
    pub groups: usize,
    /// Weights, logically `[Cout, Cin/groups, kh, kw]`.
    pub weight: Weights,
    /// Per-output-channel bias `[Cout]`.
    pub bias: Option<Tensor>,
}

impl Conv2d {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }
    /// Input channels per group.
    pub fn in_channels_per_group(&self) -> usize {
        self.weight.shape()[1]
    }
    /// Output spatial size for an input of `h x w`; `None` if the window does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let out = |inp: usize, k: usize, s: usize, d: usize, p0: usize, p1: usize| {
            let span = d * (k - 1) + 1;
            let padded = inp + p0 + p1;
            (padded >= span && s > 0).then(|| (padded - span) / s + 1)
        };
        let [kh, kw] = self.kernel;
        Some([
            out(
                h,
                kh,
                self.stride[0],
                self.dilation[0],
                self.pads[0],
                self.pads[2],
            )?,
            out(
                w,
                kw,
                self.stride[1],
                self.dilation[1],
                self.pads[1],
                self.pads[3],
            )?,
        ])
    }
}

/// Fully connected layer: `y[n, o] = sum_k x[n, k] * W[o, k] + b[o]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Weights, logically `[out, in]`.
    pub weight: Weights,
    /// Bias `[out]`.
    pub bias: Option<Tensor>,
}

/// Max or average pooling window over H and W.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride along H and W.
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Output size rounds up (ONNX `ceil_mode=1`); a window that would start
    /// in the bottom/right padding only is dropped, as in ONNX Runtime.
    pub ceil_mode: bool,
    /// Average pooling: divide by the full window including padding.
    pub count_include_pad: bool,
}

impl Pool2d {
    /// Output spatial size for an input of `h x w`; `None` if the window does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let out = |inp: usize, k: usize, s: usize, p0: usize, p1: usize| {
            let padded = inp + p0 + p1;
            if padded < k || s == 0 {
                return None;
            }
            let mut o = if self.ceil_mode {
                (padded - k).div_ceil(s) + 1
            } else {
                (padded - k) / s + 1
            };
            // The last window must start inside the input or the top/left padding.
            if self.ceil_mode && (o - 1) * s >= inp + p0 {
                o -= 1;
            }
            Some(o)
        };
        Some([
            out(
                h,
                self.kernel[0],
                self.stride[0],
                self.pads[0],
                self.pads[2],
            )?,
            out(
                w,
                self.kernel[1],
                self.stride[1],
                self.pads[1],
                self.pads[3],
            )?,
        ])
    }
}

/// Element-wise arithmetic with a constant operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    /// x + c
    Add,
    /// x - c (or c - x when the constant comes first)
    Sub,
    /// x * c
    Mul,
    /// x / c (or c / x when the constant comes first)
    Div,
}

/// The operators cnnpack runs. Each takes its dynamic inputs from the node's
/// `inputs` (one value unless stated) and produces one value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// 2-D convolution.
    Conv(Conv2d),
    /// Fully connected layer on `[N, K]`.
    Linear(Linear),
    /// max(x, 0)
    Relu,
    /// x if x >= 0 else alpha * x
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// min(max(x, min), max); ReLU6 is Clip(0, 6).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// 1 / (1 + exp(-x))
    Sigmoid,
    /// Max pooling; padding never wins.
    MaxPool(Pool2d),
    /// Average pooling.
    AvgPool(Pool2d),
    /// Mean over H and W: `[N, C, H, W] -> [N, C, 1, 1]`.
    GlobalAvgPool,
    /// Inference batch normalisation over channel axis 1.
    BatchNorm {
        /// gamma `[C]`.
        scale: Tensor,
        /// beta `[C]`.
        bias: Tensor,
        /// Running mean `[C]`.
        mean: Tensor,
        /// Running variance `[C]`.
        var: Tensor,
        /// Added to the variance.
        epsilon: f32,
    },
    /// Sum of two dynamic inputs of the same shape.
    Add,
    /// Arithmetic with a constant that broadcasts (NumPy rules) to the input.
    ConstBinary {
        /// Which operation.
        kind: BinaryKind,
        /// The constant; its shape broadcasts against the input's.
        constant: Tensor,
        /// The constant is the left operand (matters for Sub and Div).
        constant_first: bool,
    },
    /// Concatenation of all inputs along `axis`.
    Concat {
        /// Axis (non-negative).
        axis: usize,
    },
    /// `[d0, ..., dn] -> [d0*..*d(axis-1), d(axis)*..*dn]`.
    Flatten {
        /// Axis (non-negative).
        axis: usize,
    },
    /// Local response normalisation across channels (ONNX LRN).
    Lrn {
        /// Window size across channels.
        size: usize,
        /// Scale.
        alpha: f32,
        /// Exponent.
        beta: f32,
        /// Bias (ONNX `bias`, Caffe `k`).
        bias: f32,
    },
    /// Softmax over the last axis.
    Softmax,
    /// Constant padding; `pads` holds begins then ends, one per axis.
    Pad {
        /// Begin pads for every axis, then end pads.
        pads: Vec<usize>,
        /// Fill value.
        value: f32,
    },
    /// Strided slice: for each axis, `start..end` in steps of `step` (>0), normalised to bounds.
    Slice {
        /// Per axis of the input: first index taken.
        starts: Vec<usize>,
        /// Per axis: one past the last index (clamped to the axis length).
        ends: Vec<usize>,
        /// Per axis: step (>= 1).
        steps: Vec<usize>,
    },
    /// Passes its input through (Dropout, Identity, no-op Transpose); removed by `fold`.
    Identity,
}

impl Op {
    /// Short name used in reports and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::Linear(_) => "Linear",
            Op::Relu => "Relu",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Clip { .. } => "Clip",
            Op::Sigmoid => "Sigmoid",
            Op::MaxPool(_) => "MaxPool",
            Op::AvgPool(_) => "AveragePool",
            Op::GlobalAvgPool => "GlobalAveragePool",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Add => "Add",
            Op::ConstBinary { .. } => "ConstBinary",
            Op::Concat { .. } => "Concat",
            Op::Flatten { .. } => "Flatten",
            Op::Lrn { .. } => "LRN",
            Op::Softmax => "Softmax",
            Op::Pad { .. } => "Pad",
            Op::Slice { .. } => "Slice",
            Op::Identity => "Identity",
        }
    }

    /// The op's layer weights, if it has any.
    pub fn weights(&self) -> Option<&Weights> {
        match self {
            Op::Conv(c) => Some(&c.weight),
            Op::Linear(l) => Some(&l.weight),
            _ => None,
        }
    }

    /// Every constant tensor the op holds besides `weights()`, with a role name
    /// (used as the tensor-name suffix in `.cnnpack`).
    pub fn constants(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Op::Conv(Conv2d { bias, .. }) | Op::Linear(Linear { bias, .. }) => {
                bias.iter().map(|b| ("bias", b)).collect()
            }
            Op::BatchNorm {
                scale,
                bias,
                mean,
                var,
                ..
            } => {
                vec![
                    ("scale", scale),
                    ("bias", bias),
                    ("mean", mean),
                    ("var", var),
                ]
            }
            Op::ConstBinary { constant, .. } => vec![("constant", constant)],
            _ => vec![],
        }
    }

    /// Mutable access to the same tensors as `constants`, in the same order.
    pub fn constants_mut(&mut self) -> Vec<(&'static str, &mut Tensor)> {
        match self {
            Op::Conv(Conv2d { bias, .. }) | Op::Linear(Linear { bias, .. }) => {
                bias.iter_mut().map(|b| ("bias", b)).collect()
            }
            Op::BatchNorm {
                scale,
                bias,
                mean,
                var,
                ..
            } => {
                vec![
                    ("scale", scale),
                    ("bias", bias),
                    ("mean", mean),
                    ("var", var),
                ]
            }
            Op::ConstBinary { constant, .. } => vec![("constant", constant)],
            _ => vec![],
        }
    }
}
