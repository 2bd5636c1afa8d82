//! The CPU reference: naive, obviously correct kernels for every op, accumulating
//! in f64. Every fast CPU and GPU kernel is tested against these.

mod conv;
mod eltwise;
mod layout;
mod pool;

pub use conv::{conv2d, linear};
pub use eltwise::{
    add, batch_norm, binary, broadcast_to, const_binary, layer_norm, lrn, map, softmax,
};
pub use layout::{concat, pad, reduce, slice, transpose};
pub use pool::{avg_pool, global_avg_pool, max_pool};

use super::CpuError;
use crate::graph::{Graph, Node, Op, Tensor};
use crate::plan::PlanOptions;
use std::collections::HashMap;

/// Runs one node on its input values with the reference kernels.
pub fn run_node(node: &Node, inputs: &[&Tensor]) -> Result<Tensor, CpuError> {
    let x = inputs.first().ok_or_else(|| CpuError::Arity {
        node: node.name.clone(),
    })?;
    Ok(match &node.op {
        Op::Conv(c) => conv2d(x, c),
        Op::Linear(l) => linear(x, l),
        Op::Relu => map(x, |v| v.max(0.0)),
        Op::LeakyRelu { alpha } => map(x, |v| if v >= 0.0 { v } else { alpha * v }),
        Op::Clip { min, max } => map(x, |v| v.max(*min).min(*max)),
        Op::Sigmoid => map(x, |v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32),
        Op::MaxPool(p) => max_pool(x, p),
        Op::AvgPool(p) => avg_pool(x, p),
        Op::GlobalAvgPool => global_avg_pool(x),
        Op::BatchNorm {
            scale,
            bias,
            mean,
            var,
            epsilon,
        } => batch_norm(x, scale, bias, mean, var, *epsilon),
        Op::Add => {
            let b = inputs.get(1).ok_or_else(|| CpuError::Arity {
                node: node.name.clone(),
            })?;
            add(x, b)
        }
        Op::ConstBinary {
            kind,
            constant,
            constant_first,
        } => const_binary(x, *kind, constant, *constant_first),
        Op::Concat { axis } => concat(inputs, *axis),
        Op::Flatten { axis } => {
            let shape = vec![
                x.shape[..*axis].iter().product(),
                x.shape[*axis..].iter().product(),
            ];
            Tensor {
                shape,
                data: x.data.clone(),
            }
        }
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => lrn(x, *size, *alpha, *beta, *bias),
        Op::Softmax => softmax(x),
        Op::Pad { pads, value, mode } => pad(x, pads, *value, *mode),
        Op::Slice {
            starts,
            ends,
            steps,
        } => slice(x, starts, ends, steps),
        Op::Identity => (*x).clone(),
        Op::Unary(u) => map(x, |v| u.apply(v)),
        Op::Binary(kind) => {
            let b = inputs.get(1).ok_or_else(|| CpuError::Arity {
                node: node.name.clone(),
            })?;
            binary(x, b, *kind)
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => reduce(x, *kind, axes, *keepdims),
        Op::Transpose { perm } => transpose(x, perm),
        Op::Expand { shape } => {
            let out = crate::graph::broadcast(&x.shape, shape).unwrap_or_else(|| x.shape.clone());
            broadcast_to(x, &out)
        }
        Op::Reshape { target } => Tensor {
            shape: crate::graph::reshape(&x.shape, target).ok_or_else(|| {
                CpuError::Graph(crate::graph::GraphError::Shape {
                    node: node.name.clone(),
                    op: "Reshape",
                    reason: format!("cannot reshape {:?} to {target:?}", x.shape),
                })
            })?,
            data: x.data.clone(),
        },
        Op::LayerNorm {
            axis,
            epsilon,
            scale,
            bias,
        } => layer_norm(x, *axis, *epsilon, scale, bias.as_ref()),
    })
}

/// Runs the whole graph with the reference kernels; returns the outputs in order.
/// The graph is validated and its shapes checked against `input` first. It runs from
/// the same plan as the other executors (liveness, aliases) but fuses nothing: each
/// Relu runs as its own node.
pub fn run_graph(graph: &Graph, input: &Tensor) -> Result<Vec<Tensor>, CpuError> {
    super::run_with(
        graph,
        input,
        PlanOptions { fuse_relu: false },
        run_node,
        |_, _, _| None,
        |_, _| None,
        None,
    )
}

/// Values by name, for callers that want every intermediate (debugging, tests).
pub type Values = HashMap<String, Tensor>;

#[cfg(test)]
mod tests;
