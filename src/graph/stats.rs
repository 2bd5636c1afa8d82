//! Per-layer statistics: parameters, nonzeros, weight bytes, FLOPs.

use super::{Graph, GraphError, Op};
use serde::Serialize;

/// One node's numbers, as printed by `cnnpack inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    /// Node name.
    pub name: String,
    /// Op kind.
    pub op: &'static str,
    /// Input shapes at batch 1.
    pub input_shapes: Vec<Vec<usize>>,
    /// Output shape at batch 1.
    pub output_shape: Vec<usize>,
    /// Weight encoding (`dense`, `sketch`, ...) or `-` for ops without weights.
    pub encoding: String,
    /// Parameters: weights, biases and other constants.
    pub parameters: usize,
    /// Parameters that are not zero.
    pub nonzero_parameters: usize,
    /// Bytes of weights and constants as stored.
    pub weight_bytes: usize,
    /// Floating-point operations for one image, counting a multiply-add as 2
    /// (dense-equivalent for compressed layers).
    pub flops: u64,
}

/// Statistics of every node at batch 1.
pub fn layer_stats(graph: &Graph) -> Result<Vec<LayerStats>, GraphError> {
    let shapes = graph.infer_shapes(1)?;
    Ok(graph
        .nodes
        .iter()
        .map(|node| {
            let out = shapes[&node.output].clone();
            let out_elems: u64 = out.iter().product::<usize>() as u64;
            let constants = node.op.constants();
            let const_params: usize = constants.iter().map(|(_, t)| t.len()).sum();
            let const_nonzeros: usize = constants.iter().map(|(_, t)| t.nonzeros()).sum();
            let const_bytes: usize = constants.iter().map(|(_, t)| t.bytes()).sum();
            let w = node.op.weights();
            let flops = match &node.op {
                Op::Conv(_) | Op::Linear(_) => 2 * out_elems * w.map_or(0, |w| w.row_len()) as u64,
                Op::MaxPool(p) | Op::AvgPool(p) => out_elems * (p.kernel[0] * p.kernel[1]) as u64,
                Op::GlobalAvgPool => shapes[&node.inputs[0]].iter().product::<usize>() as u64,
                Op::Lrn { size, .. } => out_elems * (2 * *size as u64 + 4),
                Op::Softmax => out_elems * 4,
                Op::Relu
                | Op::LeakyRelu { .. }
                | Op::Clip { .. }
                | Op::Add
                | Op::ConstBinary { .. } => out_elems,
                Op::Sigmoid => out_elems * 4,
                Op::BatchNorm { .. } => out_elems * 2,
                Op::Unary(u) => out_elems * u.flops(),
                Op::Binary(_) => out_elems,
                Op::Reduce { .. } => shapes[&node.inputs[0]].iter().product::<usize>() as u64,
                Op::LayerNorm { .. } => out_elems * 8,
                Op::Concat { .. }
                | Op::Transpose { .. }
                | Op::Expand { .. }
                | Op::Reshape { .. }
                | Op::Flatten { .. }
                | Op::Pad { .. }
                | Op::Slice { .. }
                | Op::Identity => 0,
            };
            LayerStats {
                name: node.name.clone(),
                op: node.op.kind(),
                input_shapes: node.inputs.iter().map(|v| shapes[v].clone()).collect(),
                output_shape: out,
                encoding: w.map_or("-".to_string(), |w| w.encoding().to_string()),
                parameters: w.map_or(0, |w| w.parameters()) + const_params,
                nonzero_parameters: w.map_or(0, |w| w.nonzeros()) + const_nonzeros,
                weight_bytes: w.map_or(0, |w| w.bytes()) + const_bytes,
                flops,
            }
        })
        .collect())
}
