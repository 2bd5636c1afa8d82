//! Fast CPU kernels (rayon, GEMM) and the executor that picks them per node.
//! Ops without a fast kernel here run their reference kernel, which is already
//! memory-bound-cheap for them (pooling, element-wise, layout).

mod dense;
pub mod pow2;
pub mod sketch;

pub use dense::{conv2d, linear};

use super::{reference, CpuError};
use crate::graph::{Graph, Node, Op, Tensor};
use crate::weights::Weights;

/// Runs one node with the fastest CPU kernel for its op and weight encoding.
pub fn run_node(node: &Node, inputs: &[&Tensor]) -> Result<Tensor, CpuError> {
    match (&node.op, inputs.first()) {
        (Op::Conv(c), Some(x)) if matches!(c.weight, Weights::Sketch(_)) => {
            Ok(sketch::sketch_conv(x, c))
        }
        (Op::Linear(l), Some(x)) if matches!(l.weight, Weights::Sketch(_)) => {
            let Weights::Sketch(w) = &l.weight else {
                unreachable!("guarded by the match arm")
            };
            Ok(sketch::sketch_linear(x, w, l.bias.as_ref()))
        }
        (Op::Conv(c), Some(x)) if matches!(c.weight, Weights::Pow2(_)) => Ok(pow2::pow2_conv(x, c)),
        (Op::Linear(l), Some(x)) if matches!(l.weight, Weights::Pow2(_)) => {
            let Weights::Pow2(w) = &l.weight else {
                unreachable!("guarded by the match arm")
            };
            Ok(pow2::pow2_linear(x, w, l.bias.as_ref()))
        }
        (Op::Conv(c), Some(x)) => Ok(conv2d(x, c)),
        (Op::Linear(l), Some(x)) => Ok(linear(x, l)),
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
