//! Op converters, one ONNX operator to one IR node or constant, in groups as
//! tract's `onnx/src/ops/{nn,math,array}`: `nn.rs` (layers), `math.rs`
//! (arithmetic, activations), `array.rs` (tensor plumbing, constants). This file
//! is the dispatch table from op_type to converter and the helpers they share.

mod array;
mod math;
mod nn;
mod shape;

use super::importer::{Ctx, Importer, Out};
use crate::graph::Op;
use crate::import::ImportError;

impl Importer {
    /// Converts one node by its op_type; unknown ops are `UnsupportedOp`.
    pub(super) fn convert(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        // Without a batch axis the IR's NCHW layers would read the ONNX batch as channels.
        if self.lift
            && matches!(
                ctx.op,
                "Conv" | "MaxPool" | "AveragePool" | "BatchNormalization" | "LRN"
            )
        {
            return Err(ctx.unsupported("inputs", "a layer in a model without a batch axis"));
        }
        if matches!(ctx.op, "Conv" | "MaxPool" | "AveragePool") && self.is_1d(ctx) {
            return self.lower_1d(ctx);
        }
        match ctx.op {
            "Conv" => self.conv(ctx),
            "Gemm" => self.gemm(ctx),
            "MatMul" => self.matmul(ctx),
            "Identity" => self.identity(ctx),
            "Relu" | "Sigmoid" => self.activation(ctx),
            "HardSigmoid" | "HardSwish" | "Tanh" | "Erf" | "Gelu" | "Exp" | "Log" | "Sqrt"
            | "Neg" | "Abs" | "Reciprocal" | "Softplus" | "Elu" | "Softsign" => self.unary(ctx),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL2" => self.reduce(ctx),
            "GlobalMaxPool" => self.global_max_pool(ctx),
            "LayerNormalization" => self.layer_norm(ctx),
            "InstanceNormalization" => self.instance_norm(ctx),
            "Shape" => self.shape_of(ctx),
            "Size" => self.size(ctx),
            "Gather" => self.gather(ctx),
            "Unsqueeze" | "Squeeze" => self.squeeze(ctx),
            "Cast" => self.cast(ctx),
            "Split" => self.split(ctx),
            "Expand" => self.expand(ctx),
            "ConstantOfShape" => self.constant_of_shape(ctx),
            "Dropout" => self.dropout(ctx),
            "LeakyRelu" => self.leaky_relu(ctx),
            "Clip" => self.clip(ctx),
            "MaxPool" | "AveragePool" => self.pool(ctx),
            "GlobalAveragePool" => self.global_average_pool(ctx),
            "BatchNormalization" => self.batch_norm(ctx),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu" => {
                self.binary(ctx)
            }
            "Concat" => self.concat(ctx),
            "Flatten" => self.flatten(ctx),
            "Reshape" => self.reshape(ctx),
            "LRN" => self.lrn(ctx),
            "Softmax" | "LogSoftmax" => self.softmax(ctx),
            "Pad" => self.pad(ctx),
            "Slice" => self.slice(ctx),
            "Transpose" => self.transpose(ctx),
            "Constant" => self.constant_node(ctx),
            _ => Err(ImportError::UnsupportedOp {
                op: ctx.op.into(),
                node: ctx.name.clone(),
            }),
        }
    }
}

/// A one-input node.
fn one(op: Op, x: String) -> Result<Out, ImportError> {
    Ok(Out::Node(op, vec![x]))
}

/// `axis` in `-rank..rank` as a non-negative index.
pub(super) fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_normalise() {
        assert_eq!(norm_axis(-1, 4), Some(3));
        assert_eq!(norm_axis(4, 4), None);
        assert_eq!(norm_axis(-5, 4), None);
    }
}
