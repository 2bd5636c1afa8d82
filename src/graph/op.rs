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
    /// x ^ c (or c ^ x when the constant comes first)
    Pow,
    /// max(x, c)
    Max,
    /// min(x, c)
    Min,
    /// ONNX PRelu with the slope as the right operand: x if x >= 0 else c * x.
    PRelu,
}

impl BinaryKind {
    /// `a op b` (f32, as ONNX Runtime computes it; Pow in f64 then rounded).
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
            BinaryKind::Pow => (a as f64).powf(b as f64) as f32,
            BinaryKind::Max => a.max(b),
            BinaryKind::Min => a.min(b),
            BinaryKind::PRelu => {
                if a >= 0.0 {
                    a
                } else {
                    a * b
                }
            }
        }
    }

    /// The ONNX operator of the same name.
    pub fn onnx_name(self) -> &'static str {
        match self {
            BinaryKind::Add => "Add",
            BinaryKind::Sub => "Sub",
            BinaryKind::Mul => "Mul",
            BinaryKind::Div => "Div",
            BinaryKind::Pow => "Pow",
            BinaryKind::Max => "Max",
            BinaryKind::Min => "Min",
            BinaryKind::PRelu => "PRelu",
        }
    }

    /// Its number in the shaders' switch (eltwise.wgsl `const_binary_fwd`, broadcast.wgsl).
    pub fn code(self) -> u32 {
        match self {
            BinaryKind::Add => 0,
            BinaryKind::Sub => 1,
            BinaryKind::Mul => 2,
            BinaryKind::Div => 3,
            BinaryKind::Pow => 4,
            BinaryKind::Max => 5,
            BinaryKind::Min => 6,
            BinaryKind::PRelu => 7,
        }
    }
}

/// Element-wise functions beyond the activations that fuse into convs and train
/// (Relu, LeakyRelu, Clip, Sigmoid have their own ops).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UnaryOp {
    /// max(0, min(1, alpha * x + beta)).
    HardSigmoid {
        /// Slope (ONNX default 0.2; PyTorch exports 1/6).
        alpha: f32,
        /// Offset (ONNX default 0.5).
        beta: f32,
    },
    /// x * max(0, min(1, x / 6 + 1 / 2)).
    HardSwish,
    /// x * sigmoid(x) (fused from Sigmoid and Mul at import).
    Silu,
    /// tanh(x)
    Tanh,
    /// The error function.
    Erf,
    /// x / 2 * (1 + erf(x / sqrt 2)), or the tanh approximation.
    Gelu {
        /// ONNX `approximate = "tanh"`.
        tanh: bool,
    },
    /// e^x
    Exp,
    /// ln x
    Log,
    /// sqrt x
    Sqrt,
    /// -x
    Neg,
    /// |x|
    Abs,
    /// 1 / x
    Reciprocal,
    /// ln(1 + e^x)
    Softplus,
    /// x if x > 0 else alpha * (e^x - 1)
    Elu {
        /// Scale of the negative branch.
        alpha: f32,
    },
    /// x / (1 + |x|)
    Softsign,
}

impl UnaryOp {
    /// The function on one value (in f64, rounded once).
    pub fn apply(self, v: f32) -> f32 {
        let x = v as f64;
        let r = match self {
            UnaryOp::HardSigmoid { alpha, beta } => {
                (alpha as f64 * x + beta as f64).clamp(0.0, 1.0)
            }
            UnaryOp::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            UnaryOp::Silu => x / (1.0 + (-x).exp()),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Erf => erf(x),
            UnaryOp::Gelu { tanh: false } => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            UnaryOp::Gelu { tanh: true } => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Reciprocal => 1.0 / x,
            // ln(1 + e^x) without overflow: max(x, 0) + ln(1 + e^-|x|).
            UnaryOp::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            UnaryOp::Elu { alpha } => {
                if x > 0.0 {
                    x
                } else {
                    alpha as f64 * x.exp_m1()
                }
            }
            UnaryOp::Softsign => x / (1.0 + x.abs()),
        };
        r as f32
    }

    /// d f / d x at `v` (the CPU trainer's backward).
    pub fn derivative(self, v: f32) -> f32 {
        let x = v as f64;
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let gauss = |x: f64| (-x * x).exp() * std::f64::consts::FRAC_2_SQRT_PI;
        let r = match self {
            UnaryOp::HardSigmoid { alpha, beta } => {
                let t = alpha as f64 * x + beta as f64;
                if (0.0..=1.0).contains(&t) {
                    alpha as f64
                } else {
                    0.0
                }
            }
            UnaryOp::HardSwish => {
                if x < -3.0 {
                    0.0
                } else if x > 3.0 {
                    1.0
                } else {
                    x / 3.0 + 0.5
                }
            }
            UnaryOp::Silu => {
                let s = sig(x);
                s * (1.0 + x * (1.0 - s))
            }
            UnaryOp::Tanh => 1.0 - x.tanh().powi(2),
            UnaryOp::Erf => gauss(x),
            UnaryOp::Gelu { tanh: false } => {
                let r = std::f64::consts::SQRT_2;
                0.5 * (1.0 + erf(x / r)) + 0.5 * x * gauss(x / r) / r
            }
            UnaryOp::Gelu { tanh: true } => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let u = k * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => 1.0 / x,
            UnaryOp::Sqrt => 0.5 / x.sqrt(),
            UnaryOp::Neg => -1.0,
            UnaryOp::Abs => x.signum(),
            UnaryOp::Reciprocal => -1.0 / (x * x),
            UnaryOp::Softplus => sig(x),
            UnaryOp::Elu { alpha } => {
                if x > 0.0 {
                    1.0
                } else {
                    alpha as f64 * x.exp()
                }
            }
            UnaryOp::Softsign => 1.0 / (1.0 + x.abs()).powi(2),
        };
        r as f32
    }

    /// The ONNX operator (Silu has none: Sigmoid and Mul).
    pub fn onnx_name(self) -> &'static str {
        match self {
            UnaryOp::HardSigmoid { .. } => "HardSigmoid",
            UnaryOp::HardSwish => "HardSwish",
            UnaryOp::Silu => "Silu",
            UnaryOp::Tanh => "Tanh",
            UnaryOp::Erf => "Erf",
            UnaryOp::Gelu { .. } => "Gelu",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Neg => "Neg",
            UnaryOp::Abs => "Abs",
            UnaryOp::Reciprocal => "Reciprocal",
            UnaryOp::Softplus => "Softplus",
            UnaryOp::Elu { .. } => "Elu",
            UnaryOp::Softsign => "Softsign",
        }
    }

    /// Its number in `unary_fwd`'s switch (eltwise.wgsl; 0-3 are the activations of
    /// `gpu::eltwise::Unary`) and its two f32 parameters.
    pub fn code_and_params(self) -> (u32, [f32; 2]) {
        match self {
            UnaryOp::HardSigmoid { alpha, beta } => (16, [alpha, beta]),
            UnaryOp::HardSwish => (17, [0.0; 2]),
            UnaryOp::Silu => (18, [0.0; 2]),
            UnaryOp::Tanh => (19, [0.0; 2]),
            UnaryOp::Erf => (20, [0.0; 2]),
            UnaryOp::Gelu { tanh } => (21, [tanh as u32 as f32, 0.0]),
            UnaryOp::Exp => (22, [0.0; 2]),
            UnaryOp::Log => (23, [0.0; 2]),
            UnaryOp::Sqrt => (24, [0.0; 2]),
            UnaryOp::Neg => (25, [0.0; 2]),
            UnaryOp::Abs => (26, [0.0; 2]),
            UnaryOp::Reciprocal => (27, [0.0; 2]),
            UnaryOp::Softplus => (28, [0.0; 2]),
            UnaryOp::Elu { alpha } => (29, [alpha, 0.0]),
            UnaryOp::Softsign => (30, [0.0; 2]),
        }
    }

    /// FLOPs per element, roughly (for `inspect`).
    pub fn flops(self) -> u64 {
        match self {
            UnaryOp::Neg | UnaryOp::Abs => 1,
            UnaryOp::HardSigmoid { .. } | UnaryOp::HardSwish | UnaryOp::Reciprocal => 3,
            _ => 8,
        }
    }
}

/// erf in f64 to ~1e-15 (W. J. Cody's rational approximations are what libm uses; this
/// is the series / continued-fraction pair, exact enough for a reference).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // Maclaurin series: 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc by its continued fraction (Lentz), converging fast for a >= 2.5.
        let mut f = a;
        let mut c = a;
        let mut d = 0.0;
        for k in 1..200 {
            let an = k as f64 / 2.0;
            d = a + an * d;
            d = if d == 0.0 { 1e-300 } else { 1.0 / d };
            c = a + an / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    r.copysign(x)
}

/// What Pad writes outside the input (ONNX `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PadMode {
    /// The fill value.
    #[default]
    Constant,
    /// The nearest edge value.
    Edge,
    /// The mirror image without the edge (`pads < size`).
    Reflect,
}

impl PadMode {
    /// The ONNX spelling.
    pub fn onnx_name(self) -> &'static str {
        match self {
            PadMode::Constant => "constant",
            PadMode::Edge => "edge",
            PadMode::Reflect => "reflect",
        }
    }

    /// The input coordinate output coordinate `i - pad` reads on an axis of `d`, `None`
    /// for the fill.
    pub fn source(self, i: isize, d: usize) -> Option<usize> {
        let d = d as isize;
        match self {
            _ if (0..d).contains(&i) => Some(i as usize),
            PadMode::Constant => None,
            PadMode::Edge => Some(i.clamp(0, d - 1) as usize),
            PadMode::Reflect => {
                // Mirror until inside (pads below the axis length need one fold).
                let period = 2 * (d - 1).max(1);
                let m = i.rem_euclid(period);
                Some(if m < d { m } else { period - m } as usize)
            }
        }
    }
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReduceKind {
    /// Arithmetic mean.
    Mean,
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Euclidean norm.
    L2,
}

impl ReduceKind {
    /// The ONNX operator.
    pub fn onnx_name(self) -> &'static str {
        match self {
            ReduceKind::Mean => "ReduceMean",
            ReduceKind::Sum => "ReduceSum",
            ReduceKind::Max => "ReduceMax",
            ReduceKind::Min => "ReduceMin",
            ReduceKind::L2 => "ReduceL2",
        }
    }

    /// Its number in reduce.wgsl's switch.
    pub fn code(self) -> u32 {
        match self {
            ReduceKind::Mean => 0,
            ReduceKind::Sum => 1,
            ReduceKind::Max => 2,
            ReduceKind::Min => 3,
            ReduceKind::L2 => 4,
        }
    }
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
    /// Padding; `pads` holds begins then ends, one per axis.
    Pad {
        /// Begin pads for every axis, then end pads.
        pads: Vec<usize>,
        /// Fill value (constant mode).
        value: f32,
        /// What the padding holds (files before it existed are constant).
        #[serde(default)]
        mode: PadMode,
    },
    /// Strided slice: output index `i` of an axis reads `start + i * step`, normalised to
    /// bounds. A positive step runs up to (not including) `end`; a negative one down to
    /// `end` included (ONNX's end + 1, so it stays non-negative).
    Slice {
        /// Per axis of the input: first index taken.
        starts: Vec<usize>,
        /// Per axis: the bound (clamped to the axis length); see above.
        ends: Vec<usize>,
        /// Per axis: step (never 0).
        steps: Vec<i64>,
    },
    /// Passes its input through (Dropout, Identity, no-op Transpose); removed by `fold`.
    Identity,
    /// An element-wise function.
    Unary(UnaryOp),
    /// Arithmetic between two computed values, NumPy broadcasting (Add of two equal
    /// shapes is `Add`).
    Binary(BinaryKind),
    /// Reduction over `axes` (sorted, non-negative, never the batch axis).
    Reduce {
        /// Which reduction.
        kind: ReduceKind,
        /// Axes reduced.
        axes: Vec<usize>,
        /// Reduced axes stay as 1s.
        keepdims: bool,
    },
    /// Axis permutation: output axis `i` is input axis `perm[i]` (`perm[0] == 0`).
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// Same data, another shape: ONNX rules, `0` copies the input's axis, `-1` is
    /// inferred; the batch follows through a `0` or the `-1`. Moves no data.
    Reshape {
        /// Target dims.
        target: Vec<i64>,
    },
    /// Broadcast to `shape` (NumPy rules, same rank as the input; `shape[0]` is 1, the
    /// batch stays).
    Expand {
        /// The target dims.
        shape: Vec<usize>,
    },
    /// Layer normalisation over the axes from `axis` on, then `* scale + bias`.
    LayerNorm {
        /// First normalised axis (non-negative, > 0).
        axis: usize,
        /// Added to the variance.
        epsilon: f32,
        /// gamma, the shape of the normalised axes.
        scale: Tensor,
        /// beta, the same shape.
        bias: Option<Tensor>,
    },
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
            Op::Unary(u) => u.onnx_name(),
            Op::Binary(k) => k.onnx_name(),
            Op::Reduce { kind, .. } => kind.onnx_name(),
            Op::Transpose { .. } => "Transpose",
            Op::Reshape { .. } => "Reshape",
            Op::Expand { .. } => "Expand",
            Op::LayerNorm { .. } => "LayerNormalization",
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
            Op::LayerNorm { scale, bias, .. } => std::iter::once(("scale", scale))
                .chain(bias.iter().map(|b| ("bias", b)))
                .collect(),
            _ => vec![],
        }
    }

    /// Ops that move no data: their output is their input under another shape.
    pub fn is_alias(&self) -> bool {
        matches!(self, Op::Flatten { .. } | Op::Identity | Op::Reshape { .. })
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
            Op::LayerNorm { scale, bias, .. } => std::iter::once(("scale", scale))
                .chain(bias.iter_mut().map(|b| ("bias", b)))
                .collect(),
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5), erf(1), erf(2), erf(3) to 15 digits (Abramowitz & Stegun table 7.1).
        for (x, want) in [
            (0.5, 0.520_499_877_813_047),
            (1.0, 0.842_700_792_949_715),
            (2.0, 0.995_322_265_018_953),
            (3.0, 0.999_977_909_503_001),
        ] {
            assert!((erf(x) - want).abs() < 1e-13, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-13);
        }
        assert_eq!(erf(0.0), 0.0);
    }

    #[test]
    fn unary_derivatives_match_differences() {
        let ops = [
            UnaryOp::HardSigmoid {
                alpha: 0.2,
                beta: 0.5,
            },
            UnaryOp::HardSwish,
            UnaryOp::Silu,
            UnaryOp::Tanh,
            UnaryOp::Erf,
            UnaryOp::Gelu { tanh: false },
            UnaryOp::Gelu { tanh: true },
            UnaryOp::Exp,
            UnaryOp::Softplus,
            UnaryOp::Elu { alpha: 1.3 },
            UnaryOp::Softsign,
        ];
        for op in ops {
            for x in [-2.7f32, -0.4, 0.3, 1.9] {
                let h = 1e-3f32;
                let fd = (op.apply(x + h) - op.apply(x - h)) / (2.0 * h);
                let d = op.derivative(x);
                assert!(
                    (fd - d).abs() < 2e-3 * (1.0 + d.abs()),
                    "{op:?} at {x}: {fd} vs {d}"
                );
            }
        }
    }
}
