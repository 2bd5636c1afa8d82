//! CPU backend: `reference` (naive, the yardstick) and `fast` (rayon + GEMM).

pub mod fast;
pub mod reference;
pub mod select;

use crate::backend::StepTimes;
use crate::graph::{Graph, GraphError, Node, Tensor};
use crate::plan::{Plan, PlanOptions};
use rayon::prelude::*;
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

/// Runs `graph` on `input` from its [`Plan`] for the input's batch size (planned with
/// `options`): the plan's steps in order, each value dropped after the step that frees
/// it, aliases (Flatten, Identity, fused Relus) read as their source. Shared by the
/// reference and the fast executor, which give the kernels:
///
/// - `kernel(node, inputs)`: the node's output.
/// - `in_place(node, x, rest)`, offered a step whose first input dies there
///   ([`crate::plan::Step::first_input_dies`]) first: applies the node to that input's
///   tensor `x` (the other inputs are `rest`), or returns `None` when it does not handle
///   the node, which then goes to `kernel`.
/// - `with_relu(node, inputs)`, offered a step with a fused ReLU first: the node's output
///   with the ReLU applied, or `None` when it does not fuse that node, which then goes to
///   `kernel` and gets the ReLU applied to its output here.
///
/// An alias read with another shape than its source (a Flatten) gets the source's
/// tensor reshaped: taken over when the source dies at that step and the step reads it
/// once, else copied. With `times`, each step's wall time is appended under its name.
pub(crate) fn run_with(
    graph: &Graph,
    input: &Tensor,
    options: PlanOptions,
    kernel: impl Fn(&Node, &[&Tensor]) -> Result<Tensor, CpuError>,
    in_place: impl Fn(&Node, &mut Tensor, &[&Tensor]) -> Option<Result<(), CpuError>>,
    with_relu: impl Fn(&Node, &[&Tensor]) -> Option<Result<Tensor, CpuError>>,
    mut times: Option<&mut StepTimes>,
) -> Result<Vec<Tensor>, CpuError> {
    let batch = check_input(graph, input)?;
    let plan = Plan::with_options(graph, batch, options)?;
    let shape = |v: &str| plan.shape(v).expect("the plan has every value's shape");
    let mut values: HashMap<&str, Tensor> = HashMap::new();
    values.insert(&graph.input.name, input.clone());
    for step in &plan.steps {
        let start = times.is_some().then(std::time::Instant::now);
        let node = &graph.nodes[step.node];
        // Tensors this step owns: the dying first input, and reshaped aliases.
        let mut first = None;
        let mut owned: Vec<Tensor> = vec![];
        let mut from: Vec<Source> = Vec::with_capacity(step.inputs.len());
        for (i, v) in step.inputs.iter().enumerate() {
            let root = plan.root(v);
            let reads = step.inputs.iter().filter(|u| plan.root(u) == root).count();
            if i == 0 && step.first_input_dies {
                let mut x = values.remove(root).expect(COMPUTED);
                reshape(&mut x, shape(v));
                first = Some(x);
                from.push(Source::First);
            } else if values.get(root).expect(COMPUTED).shape == shape(v) {
                from.push(Source::Value(root));
            } else if reads == 1 && step.frees.iter().any(|f| f == root) {
                let mut x = values.remove(root).expect(COMPUTED);
                reshape(&mut x, shape(v));
                owned.push(x);
                from.push(Source::Owned(owned.len() - 1));
            } else {
                let x = &values[root];
                owned.push(Tensor {
                    shape: shape(v).to_vec(),
                    data: x.data.clone(),
                });
                from.push(Source::Owned(owned.len() - 1));
            }
        }
        let (mut out, relu_applied) = 'run: {
            if let (Some(x), false) = (first.as_mut(), step.fused_relu) {
                let rest: Vec<&Tensor> = from[1..]
                    .iter()
                    .map(|s| s.get(None, &owned, &values))
                    .collect();
                if let Some(done) = in_place(node, x, &rest) {
                    done?;
                    break 'run (first.take().expect("taken above"), false);
                }
            }
            let ins: Vec<&Tensor> = from
                .iter()
                .map(|s| s.get(first.as_ref(), &owned, &values))
                .collect();
            if step.fused_relu {
                if let Some(out) = with_relu(node, &ins) {
                    break 'run (out?, true);
                }
            }
            (kernel(node, &ins)?, false)
        };
        if step.fused_relu && !relu_applied {
            out.data
                .par_chunks_mut(1 << 16)
                .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
        }
        values.insert(&step.output, out);
        for v in &step.frees {
            values.remove(v.as_str());
        }
        if let (Some(times), Some(start)) = (times.as_mut(), start) {
            times.push((step.name.clone(), start.elapsed().as_secs_f64() * 1e3));
        }
    }
    // Each output in its own shape; a tensor is handed over by its last output.
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for (i, o) in graph.outputs.iter().enumerate() {
        let root = plan.root(o);
        let later = graph.outputs[i + 1..].iter().any(|u| plan.root(u) == root);
        let mut x = if later {
            values.get(root).expect(COMPUTED).clone()
        } else {
            values.remove(root).expect(COMPUTED)
        };
        reshape(&mut x, shape(o));
        outputs.push(x);
    }
    Ok(outputs)
}

const COMPUTED: &str = "the plan computes every value before its readers and frees it after";

/// Where a step's input tensor is (see `run_with`).
enum Source<'a> {
    /// The dying first input, taken over.
    First,
    /// A live value, by root name.
    Value(&'a str),
    /// A tensor the step owns (a reshaped alias), by index.
    Owned(usize),
}

impl Source<'_> {
    fn get<'t>(
        &self,
        first: Option<&'t Tensor>,
        owned: &'t [Tensor],
        values: &'t HashMap<&'t str, Tensor>,
    ) -> &'t Tensor {
        match self {
            Source::First => first.expect("the first input is taken over"),
            Source::Value(v) => &values[*v],
            Source::Owned(i) => &owned[*i],
        }
    }
}

/// Gives `x` the shape `shape` (an alias's: the same elements).
fn reshape(x: &mut Tensor, shape: &[usize]) {
    if x.shape != shape {
        x.shape = shape.to_vec();
    }
}
