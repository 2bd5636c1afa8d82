//! CPU backend: `reference` (naive, the yardstick) and `fast` (rayon + GEMM).

pub mod fast;
pub mod reference;
pub mod select;

use crate::graph::{Graph, GraphError, Node, Tensor};
use std::collections::HashMap;

/// Errors from running a graph on the CPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A node got too few inputs.
    #[error("node '{node}' is missing an input")]
    Arity {
        /// The node.
        node: String,
    },
    /// The input tensor does not fit the model.
    #[error("input has shape {found:?}, the model expects {expected}")]
    BadInput {
        /// What the model takes, e.g. `[N, 3, 227, 227]`.
        expected: String,
        /// What was given.
        found: Vec<usize>,
    },
}

/// Asks the C allocator (glibc) to keep freed memory for reuse instead of returning it
/// to the OS: blocks up to 32 MiB come from the heap rather than from their own `mmap`,
/// and the heap is never trimmed. Every inference allocates each activation afresh
/// and frees it after its last reader; without this, each large buffer is mapped,
/// page-faulted in and unmapped again on every run, which cost more than the op for
/// copies (SqueezeNet at batch 8 on the 2-core dev machine: a 25 MB Concat 21 -> 3.4
/// ms, a max pool 21.6 -> 12.9 ms, the model 307 -> 251 ms, measured with the same
/// settings given through `GLIBC_TUNABLES`). The price is that the
/// process keeps its peak heap. The `cnnpack` binary calls this at start; programs
/// embedding the library may call it too. Returns whether it applied (glibc on Linux
/// only; elsewhere it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // glibc's malloc.h: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3. 32 MiB is the
        // largest mmap threshold glibc accepts on 64-bit targets.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets malloc parameters; glibc allows it at any time and
        // returns 0 for a value it refuses.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Checks `input` against the graph's input (any batch size) and returns the batch.
pub fn check_input(graph: &Graph, input: &Tensor) -> Result<usize, CpuError> {
    let item = &graph.input.item_shape;
    let ok = input.shape.len() == item.len() + 1
        && input.shape[1..] == item[..]
        && input.shape[0] > 0
        && input.data.len() == input.shape.iter().product::<usize>();
    if !ok {
        return Err(CpuError::BadInput {
            expected: format!(
                "[N, {}]",
                item.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            found: input.shape.clone(),
        });
    }
    Ok(input.shape[0])
}

/// Interprets the graph node by node with `kernel`, freeing each value after its
/// last reader. Shared by the reference and the fast executor.
pub(crate) fn run_with(
    graph: &Graph,
    input: &Tensor,
    kernel: impl Fn(&Node, &[&Tensor]) -> Result<Tensor, CpuError>,
) -> Result<Vec<Tensor>, CpuError> {
    run_with_in_place(graph, input, kernel, |_, _, _| None, |_, _| None)
}

/// `run_with`, offering each node whose first input dies at it to `in_place` first:
/// `in_place(node, x, rest)` applies the node to that input's buffer `x` (the other
/// inputs are `rest`) and returns `None` when it does not handle the node, which then
/// goes to `kernel` as usual.
///
/// A node whose output is read only by the next node, a Relu, and is not a graph
/// output is first offered to `with_relu(node, inputs)`, which returns the node's
/// output with the ReLU applied (the Relu node is then skipped) or `None` when it does
/// not fuse that node.
pub(crate) fn run_with_in_place(
    graph: &Graph,
    input: &Tensor,
    kernel: impl Fn(&Node, &[&Tensor]) -> Result<Tensor, CpuError>,
    in_place: impl Fn(&Node, &mut Tensor, &[&Tensor]) -> Option<Result<(), CpuError>>,
    with_relu: impl Fn(&Node, &[&Tensor]) -> Option<Result<Tensor, CpuError>>,
) -> Result<Vec<Tensor>, CpuError> {
    let batch = check_input(graph, input)?;
    graph.infer_shapes(batch)?;
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        for v in &n.inputs {
            last_use.insert(v, i);
        }
    }
    for o in &graph.outputs {
        last_use.insert(o, usize::MAX);
    }
    let mut values: HashMap<&str, Tensor> = HashMap::new();
    values.insert(&graph.input.name, input.clone());
    let mut fused_away = None;
    for (i, node) in graph.nodes.iter().enumerate() {
        if fused_away == Some(i) {
            continue;
        }
        // A Relu that alone reads this node's output, right after it.
        let relu_next = graph.nodes.get(i + 1).filter(|next| {
            matches!(next.op, crate::graph::Op::Relu)
                && next.inputs.len() == 1
                && next.inputs[0] == node.output
                && last_use.get(node.output.as_str()) == Some(&(i + 1))
        });
        if let Some(next) = relu_next {
            let fused = {
                let ins: Vec<&Tensor> = node.inputs.iter().map(|v| &values[v.as_str()]).collect();
                with_relu(node, &ins)
            };
            if let Some(out) = fused {
                values.insert(&next.output, out?);
                for v in &node.inputs {
                    if last_use.get(v.as_str()).is_some_and(|&u| u <= i + 1) {
                        values.remove(v.as_str());
                    }
                }
                fused_away = Some(i + 1);
                continue;
            }
        }
        // The first input can be handed over when nothing reads it after this node and
        // this node reads it only once.
        let handed = node.inputs.first().filter(|v| {
            last_use.get(v.as_str()) == Some(&i)
                && node.inputs.iter().filter(|u| u == v).count() == 1
        });
        let mut done = None;
        if let Some(v) = handed {
            if let Some(mut x) = values.remove(v.as_str()) {
                let outcome = {
                    let rest: Vec<&Tensor> = node.inputs[1..]
                        .iter()
                        .map(|u| &values[u.as_str()])
                        .collect();
                    in_place(node, &mut x, &rest)
                };
                match outcome {
                    Some(r) => {
                        r?;
                        done = Some(x);
                    }
                    None => {
                        values.insert(v.as_str(), x);
                    }
                }
            }
        }
        let out = match done {
            Some(x) => x,
            None => {
                let ins: Vec<&Tensor> = node.inputs.iter().map(|v| &values[v.as_str()]).collect();
                kernel(node, &ins)?
            }
        };
        values.insert(&node.output, out);
        for v in &node.inputs {
            if last_use.get(v.as_str()) == Some(&i) {
                values.remove(v.as_str());
            }
        }
    }
    Ok(graph
        .outputs
        .iter()
        .map(|o| values[o.as_str()].clone())
        .collect())
}
