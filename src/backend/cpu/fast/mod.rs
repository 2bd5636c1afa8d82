//! Fast CPU kernels (rayon, GEMM) and the executor that picks them per node.
//! Ops without a fast kernel here run their reference kernel, which is already
//! memory-bound-cheap for them (element-wise, layout).

mod dense;
mod pool;
pub mod pow2;
pub mod sketch;
pub mod sparse;

pub use dense::{conv2d, linear};
pub use pool::{avg_pool, max_pool};

use super::{reference, CpuError};
use crate::graph::{Conv2d, Graph, Linear, Node, Op, Tensor};
use crate::weights::Weights;

/// Runs one node with the fastest CPU kernel for its op and weight encoding.
pub fn run_node(node: &Node, inputs: &[&Tensor]) -> Result<Tensor, CpuError> {
    match (&node.op, inputs.first()) {
        // Sketched conv on the CPU: the bits are expanded to f32 (K x Cout x m adds, small
        // next to the conv) and run through sgemm. Measured on this project's 2-core x86
        // machine: the bit-masked kernel (`sketch::sketch_conv`) took 16.7 ms for a 3x3
        // 64->64 conv at 28x28 with m = 3 against ~2 ms for sgemm, and sketched SqueezeNet
        // evaluated at ~1 image/s against ~4 for dense. Batch-1 fc is memory-bound and
        // keeps the additions-only kernel below.
        (Op::Conv(c), Some(x)) if matches!(c.weight, Weights::Sketch(_)) => {
            // Only the weights change; the bits are not cloned on the way.
            let dense = Conv2d {
                kernel: c.kernel,
                stride: c.stride,
                pads: c.pads,
                dilation: c.dilation,
                groups: c.groups,
                weight: Weights::Dense(c.weight.to_dense().into_owned()),
                bias: c.bias.clone(),
            };
            Ok(conv2d(x, &dense))
        }
        (Op::Conv(c), Some(x)) if matches!(c.weight, Weights::Sparse(_)) => {
            Ok(sparse::sparse_conv(x, c))
        }
        (Op::Conv(c), Some(x)) if matches!(c.weight, Weights::Pow2(_)) => Ok(pow2::pow2_conv(x, c)),
        (
            Op::Linear(Linear {
                weight: Weights::Sketch(w),
                bias,
            }),
            Some(x),
        ) => Ok(sketch::sketch_linear(x, w, bias.as_ref())),
        (
            Op::Linear(Linear {
                weight: Weights::Sparse(w),
                bias,
            }),
            Some(x),
        ) => Ok(sparse::sparse_linear(x, w, bias.as_ref())),
        (
            Op::Linear(Linear {
                weight: Weights::Pow2(w),
                bias,
            }),
            Some(x),
        ) => Ok(pow2::pow2_linear(x, w, bias.as_ref())),
        (Op::Conv(c), Some(x)) => Ok(conv2d(x, c)),
        (Op::Linear(l), Some(x)) => Ok(linear(x, l)),
        (Op::MaxPool(p), Some(x)) => Ok(max_pool(x, p)),
        (Op::AvgPool(p), Some(x)) => Ok(avg_pool(x, p)),
        _ => reference::run_node(node, inputs),
    }
}

/// Runs the whole graph with the fast kernels; returns the outputs in order.
pub fn run_graph(graph: &Graph, input: &Tensor) -> Result<Vec<Tensor>, CpuError> {
    super::run_with(graph, input, run_node)
}

/// As `run_graph`, plus each node's wall time in milliseconds, in node order.
pub fn run_graph_profiled(
    graph: &Graph,
    input: &Tensor,
) -> Result<(Vec<Tensor>, crate::backend::StepTimes), CpuError> {
    let times = std::sync::Mutex::new(Vec::with_capacity(graph.nodes.len()));
    let outputs = super::run_with(graph, input, |node, ins| {
        let t = std::time::Instant::now();
        let out = run_node(node, ins);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        times
            .lock()
            .expect("the timing list lock is never poisoned")
            .push((node.name.clone(), ms));
        out
    })?;
    Ok((
        outputs,
        times
            .into_inner()
            .expect("the timing list lock is never poisoned"),
    ))
}
