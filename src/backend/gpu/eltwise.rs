//! Element-wise ops (shaders/eltwise.wgsl): activations, Add, arithmetic with a
//! broadcast constant, inference batch norm.

use super::context::{fw, uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::encode::StepIo;
use super::GpuError;
use crate::graph::{BinaryKind, Op, Tensor, UnaryOp};
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/eltwise.wgsl");

/// Bindings: input, second operand (unary ops bind the input again), output, params.
const LAYOUT: [Slot; 4] = [Slot::Read, Slot::Read, Slot::Write, Slot::Uniform];

fn kernel(ctx: &GpuContext, entry: &'static str) -> Arc<Kernel> {
    ctx.kernel("eltwise", SOURCE, entry, &LAYOUT)
}

/// Params: total, op, a, b, inner, channels, const_first.
fn launch(
    io: &StepIo,
    entry: &'static str,
    second: Bind,
    params: [u32; 7],
) -> Result<Vec<Dispatch>, GpuError> {
    let total: usize = io.output.1.iter().product();
    Ok(vec![io.ctx.dispatch(
        &kernel(io.ctx, entry),
        io.name,
        &[io.inputs[0].0.clone(), second, io.output.0.clone()],
        &params,
        io.grid256(total)?,
    )])
}

fn total(io: &StepIo) -> u32 {
    uw(io.output.1.iter().product())
}

/// An element-wise activation and its parameters: what `unary_fwd` (eltwise.wgsl) and,
/// in training, `act_bwd` (train_ops.wgsl) compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Unary {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x >= 0`, else `alpha * x`.
    LeakyRelu { alpha: f32 },
    /// `min(max(x, min), max)`.
    Clip { min: f32, max: f32 },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
}

impl Unary {
    /// The activation `op` is, `None` for other ops.
    pub(crate) fn of(op: &Op) -> Option<Unary> {
        match *op {
            Op::Relu => Some(Unary::Relu),
            Op::LeakyRelu { alpha } => Some(Unary::LeakyRelu { alpha }),
            Op::Clip { min, max } => Some(Unary::Clip { min, max }),
            Op::Sigmoid => Some(Unary::Sigmoid),
            _ => None,
        }
    }

    /// Its number in the shaders' switch: the `op` word of `unary_fwd` and the `mode`
    /// word of `act_bwd` (the two shaders number the activations alike).
    pub(crate) fn code(self) -> u32 {
        match self {
            Unary::Relu => 0,
            Unary::LeakyRelu { .. } => 1,
            Unary::Clip { .. } => 2,
            Unary::Sigmoid => 3,
        }
    }

    /// The shaders' two f32 parameters `(a, b)`: `(alpha, 0)` for leaky ReLU,
    /// `(min, max)` for clip, zeros otherwise.
    pub(crate) fn params(self) -> [f32; 2] {
        match self {
            Unary::LeakyRelu { alpha } => [alpha, 0.0],
            Unary::Clip { min, max } => [min, max],
            Unary::Relu | Unary::Sigmoid => [0.0, 0.0],
        }
    }
}

/// `unary_fwd` computing `op` on every element.
pub(crate) fn encode_unary(io: &StepIo, op: Unary) -> Result<Vec<Dispatch>, GpuError> {
    let [a, b] = op.params();
    let params = [total(io), op.code(), fw(a), fw(b), 0, 0, 0];
    launch(io, "unary_fwd", io.inputs[0].0.clone(), params)
}

/// `unary_fwd` computing one of the `UnaryOp` functions (codes 16 and up).
pub(crate) fn encode_unary_op(io: &StepIo, op: UnaryOp) -> Result<Vec<Dispatch>, GpuError> {
    let (code, [a, b]) = op.code_and_params();
    let params = [total(io), code, fw(a), fw(b), 0, 0, 0];
    launch(io, "unary_fwd", io.inputs[0].0.clone(), params)
}

pub(crate) fn encode_add(io: &StepIo) -> Result<Vec<Dispatch>, GpuError> {
    let params = [total(io), 0, 0, 0, 0, 0, 0];
    launch(io, "add_fwd", io.inputs[1].0.clone(), params)
}

/// The constant is broadcast (NumPy rules) to the input's item shape on the host, so
/// the kernel indexes it with `i % item_len`; a constant that varies along the batch
/// axis is expanded to the full shape instead.
pub(crate) fn encode_const(
    io: &StepIo,
    kind: BinaryKind,
    constant: &Tensor,
    constant_first: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    let shape = io.output.1;
    let rank = shape.len();
    let batch_varies = constant.shape.len() == rank && rank > 0 && constant.shape[0] > 1;
    let target: &[usize] = if batch_varies {
        shape
    } else {
        &shape[1.min(rank)..]
    };
    let expanded = broadcast_to(constant, target).ok_or_else(|| {
        io.unsupported(format!(
            "constant {:?} does not broadcast to {shape:?}",
            constant.shape
        ))
    })?;
    let buf = io.ctx.upload(&format!("{} constant", io.name), &expanded);
    let op = match kind {
        BinaryKind::Add | BinaryKind::Sub | BinaryKind::Mul | BinaryKind::Div => kind.code(),
        // The rest read the constant through its strides in strided.wgsl.
        _ => return super::strided::encode_binary_const(io, kind, constant, constant_first),
    };
    let params = [
        total(io),
        op,
        0,
        0,
        uw(expanded.len()),
        0,
        constant_first as u32,
    ];
    launch(
        io,
        "const_binary_fwd",
        Bind::f32s(&buf, expanded.len()),
        params,
    )
}

/// `t` broadcast to `target` (NumPy rules, `t` aligned to the trailing axes).
fn broadcast_to(t: &Tensor, target: &[usize]) -> Option<Vec<f32>> {
    let rank = target.len();
    // Leading axes of t beyond target must be 1.
    let extra = t.shape.len().saturating_sub(rank);
    if t.shape[..extra].iter().any(|&d| d != 1) {
        return None;
    }
    let ts = &t.shape[extra..];
    let off = rank - ts.len();
    for (i, &d) in ts.iter().enumerate() {
        if d != 1 && d != target[off + i] {
            return None;
        }
    }
    // Strides of t over target's axes (0 where t broadcasts).
    let mut strides = vec![0usize; rank];
    let mut s = 1;
    for i in (0..ts.len()).rev() {
        strides[off + i] = if ts[i] == 1 { 0 } else { s };
        s *= ts[i];
    }
    let n: usize = target.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        out.push(t.data[idx.iter().zip(&strides).map(|(a, b)| a * b).sum::<usize>()]);
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < target[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Some(out)
}

/// BatchNorm folded on the host into `scale = gamma / sqrt(var + eps)` and
/// `shift = beta - mean * scale` (f64 for the fold, as the reference does in f32: the
/// difference is far below the test tolerance).
pub(crate) fn encode_batchnorm(
    io: &StepIo,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Result<Vec<Dispatch>, GpuError> {
    let shape = io.output.1;
    let c = shape[1];
    let inner: usize = shape[2..].iter().product();
    let mut ss = vec![0.0f32; 2 * c];
    for i in 0..c {
        let s = gamma.data[i] / (var.data[i] + eps).sqrt();
        ss[i] = s;
        ss[c + i] = beta.data[i] - mean.data[i] * s;
    }
    let buf = io.ctx.upload(&format!("{} scale_shift", io.name), &ss);
    let params = [total(io), 0, 0, 0, uw(inner), uw(c), 0];
    launch(io, "batchnorm_fwd", Bind::f32s(&buf, 2 * c), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_expands_trailing_axes() {
        let t = Tensor::new(vec![3, 1], vec![1.0, 2.0, 3.0]).unwrap();
        let out = broadcast_to(&t, &[2, 3, 2]).unwrap();
        assert_eq!(out, vec![1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
        let s = Tensor::new(vec![1], vec![5.0]).unwrap();
        assert_eq!(broadcast_to(&s, &[2, 2]).unwrap(), vec![5.0; 4]);
        assert!(broadcast_to(&t, &[2, 4]).is_none());
    }
}
