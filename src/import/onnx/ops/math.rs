//! Arithmetic and activations: Add, Sub, Mul, Div (with a constant operand,
//! or Add of two computed values), Relu, Sigmoid, LeakyRelu, Clip.

use super::one;
use crate::graph::{BinaryKind, Op};
use crate::import::onnx::importer::{Ctx, Importer, Out};
use crate::import::ImportError;

impl Importer {
    /// Add, Sub, Mul, Div with one constant operand, or Add of two computed values.
    pub(super) fn binary(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["consumed_inputs"])?;
        let kind = match ctx.op {
            "Add" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            _ => BinaryKind::Div,
        };
        if ctx.np.input.len() != 2 {
            return Err(ctx.bad(format!("expects 2 inputs, has {}", ctx.np.input.len())));
        }
        let c0 = ctx.input(0).and_then(|v| self.consts.get(v));
        let c1 = ctx.input(1).and_then(|v| self.consts.get(v));
        match (c0, c1) {
            (None, None) if kind == BinaryKind::Add => Ok(Out::Node(
                Op::Add,
                vec![self.dynamic(ctx, 0)?, self.dynamic(ctx, 1)?],
            )),
            (None, None) => Err(ctx.unsupported(
                "inputs",
                format!("{} of two computed values (only Add is supported)", ctx.op),
            )),
            (Some(_), Some(_)) => Err(ctx.bad("both operands are constants")),
            (Some(c), None) | (None, Some(c)) => {
                let constant_first = c0.is_some();
                let constant = c.to_tensor();
                let x = self.dynamic(ctx, if constant_first { 1 } else { 0 })?;
                Ok(Out::Node(
                    Op::ConstBinary {
                        kind,
                        constant,
                        constant_first,
                    },
                    vec![x],
                ))
            }
        }
    }

    /// Relu and Sigmoid.
    pub(super) fn activation(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["consumed_inputs"])?;
        let x = self.dynamic(ctx, 0)?;
        let op = match ctx.op {
            "Relu" => Op::Relu,
            _ => Op::Sigmoid,
        };
        one(op, x)
    }

    /// LeakyRelu.
    pub(super) fn leaky_relu(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["alpha"])?;
        let alpha = a.float_or("alpha", 0.01)?;
        one(Op::LeakyRelu { alpha }, self.dynamic(ctx, 0)?)
    }

    /// Clip: bounds from attributes before opset 11, constant inputs after.
    pub(super) fn clip(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let (min, max) = if self.opset < 11 {
            a.only(&["min", "max", "consumed_inputs"])?;
            (
                a.float_or("min", f32::NEG_INFINITY)?,
                a.float_or("max", f32::INFINITY)?,
            )
        } else {
            a.only(&[])?;
            let bound = |i: usize, role: &str, default: f32| -> Result<f32, ImportError> {
                match self.opt_constant(ctx, i, role)? {
                    None => Ok(default),
                    Some(c) => c.scalar().ok_or_else(|| {
                        ctx.unsupported(role, format!("tensor of shape {:?}", c.dims))
                    }),
                }
            };
            (
                bound(1, "min", f32::NEG_INFINITY)?,
                bound(2, "max", f32::INFINITY)?,
            )
        };
        if min.is_nan() || max.is_nan() || min > max {
            return Err(ctx.unsupported("min/max", (min, max)));
        }
        one(Op::Clip { min, max }, self.dynamic(ctx, 0)?)
    }
}
