//! Execution plan: a graph turned into ordered steps for one batch size, with the shape
//! of every value and an assignment of values to a small pool of reusable buffers.
//!
//! Backend-neutral: a backend allocates one buffer per [`Plan::slots`] entry (at least
//! `slots[i]` f32 elements) and runs the steps in order, each reading its inputs from and
//! writing its output to the slot given by [`Plan::slot_of`].
//!
//! What the plan decides:
//! - Aliases: Flatten and Identity move no data, so their output shares the input's slot.
//! - Fusion: a Conv or Linear whose only reader is a Relu (and whose own output is not a
//!   graph output) runs with a fused ReLU; the Relu becomes an alias of it.
//! - Liveness: a slot returns to the pool once the last step reading it has run. The
//!   graph input and every graph output keep their own slot for the whole run (the
//!   outputs are read back after the last step). A step's output never shares a slot
//!   with its inputs, so kernels need not support in-place operation.

use crate::graph::{Graph, GraphError, Op, Shapes};
use std::collections::HashMap;

/// One kernel invocation of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Index of the node in `graph.nodes`.
    pub node: usize,
    /// Name for reports and errors: the node name, `+relu` appended when fused.
    pub name: String,
    /// Apply ReLU to the output (a fused Relu node).
    pub fused_relu: bool,
    /// Input value names (as in the node).
    pub inputs: Vec<String>,
    /// Output value name (the fused Relu's output when fused).
    pub output: String,
}

/// A graph planned for one batch size.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The batch size the shapes are for.
    pub batch: usize,
    /// Shape of every value at this batch size.
    pub shapes: Shapes,
    /// Steps in execution order (aliases and fused Relus have none).
    pub steps: Vec<Step>,
    /// Element count (f32) of each buffer slot.
    pub slots: Vec<usize>,
    /// Slot of every value (aliases share their source's slot).
    slot_of: HashMap<String, usize>,
}

/// Options that change how a graph is planned.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Fuse a Relu into the Conv or Linear it follows when it is the only reader.
    pub fuse_relu: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { fuse_relu: true }
    }
}

impl Plan {
    /// Plans `graph` (nodes in topological order, e.g. after `sort_and_validate`) at
    /// batch size `batch` with default options.
    pub fn new(graph: &Graph, batch: usize) -> Result<Plan, GraphError> {
        Plan::with_options(graph, batch, PlanOptions::default())
    }

    /// Plans `graph` at batch size `batch`.
    pub fn with_options(
        graph: &Graph,
        batch: usize,
        options: PlanOptions,
    ) -> Result<Plan, GraphError> {
        let shapes = graph.infer_shapes(batch)?;
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for n in &graph.nodes {
            for v in &n.inputs {
                *readers.entry(v.as_str()).or_default() += 1;
            }
        }
        let is_output = |v: &str| graph.outputs.iter().any(|o| o == v);

        // Steps, and the value each alias resolves to.
        let mut alias: HashMap<String, String> = HashMap::new();
        let mut steps: Vec<Step> = vec![];
        let mut fused_into: HashMap<usize, usize> = HashMap::new(); // relu node -> step
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Some(&s) = fused_into.get(&i) {
                alias.insert(node.output.clone(), steps[s].output.clone());
                continue;
            }
            match node.op {
                Op::Flatten { .. } | Op::Identity => {
                    alias.insert(node.output.clone(), node.inputs[0].clone());
                    continue;
                }
                _ => {}
            }
            let mut step = Step {
                node: i,
                name: node.name.clone(),
                fused_relu: false,
                inputs: node.inputs.clone(),
                output: node.output.clone(),
            };
            if options.fuse_relu
                && matches!(node.op, Op::Conv(_) | Op::Linear(_))
                && readers.get(node.output.as_str()) == Some(&1)
                && !is_output(&node.output)
            {
                let reader = graph.nodes[i + 1..]
                    .iter()
                    .position(|n| n.inputs.contains(&node.output))
                    .map(|p| p + i + 1);
                if let Some(r) = reader {
                    if matches!(graph.nodes[r].op, Op::Relu) {
                        step.fused_relu = true;
                        step.name = format!("{}+{}", node.name, graph.nodes[r].name);
                        fused_into.insert(r, steps.len());
                    }
                }
            }
            steps.push(step);
        }
        let resolve = |v: &str| -> String {
            let mut v = v.to_string();
            while let Some(a) = alias.get(&v) {
                v = a.clone();
            }
            v
        };

        // Last step reading each root value; pinned roots are never released.
        let mut last_use: HashMap<String, usize> = HashMap::new();
        for (s, step) in steps.iter().enumerate() {
            for v in &step.inputs {
                last_use.insert(resolve(v), s);
            }
        }
        let input_root = graph.input.name.clone();
        let pinned: Vec<String> = graph
            .outputs
            .iter()
            .map(|o| resolve(o))
            .chain(std::iter::once(input_root.clone()))
            .collect();

        let len_of = |v: &str| shapes[v].iter().product::<usize>();
        let mut slots: Vec<usize> = vec![len_of(&input_root)];
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        slot_of.insert(input_root, 0);
        let mut free: Vec<usize> = vec![];
        for (s, step) in steps.iter().enumerate() {
            let need = len_of(&step.output);
            let slot = if pinned.contains(&step.output) {
                slots.push(need);
                slots.len() - 1
            } else {
                take_slot(&mut free, &mut slots, need)
            };
            slot_of.insert(step.output.clone(), slot);
            // Release inputs after the output is placed, so the two never share a slot.
            let mut released: Vec<String> = step.inputs.iter().map(|v| resolve(v)).collect();
            released.push(step.output.clone());
            released.sort();
            released.dedup();
            for v in released {
                if pinned.contains(&v) || last_use.get(&v).is_some_and(|&l| l > s) {
                    continue;
                }
                if let Some(&sl) = slot_of.get(&v) {
                    if !free.contains(&sl) {
                        free.push(sl);
                    }
                }
            }
        }
        for v in shapes.keys() {
            let root = resolve(v);
            if let Some(&sl) = slot_of.get(&root) {
                slot_of.insert(v.clone(), sl);
            }
        }
        Ok(Plan {
            batch,
            shapes,
            steps,
            slots,
            slot_of,
        })
    }

    /// The buffer slot holding `value`, if the plan computes it.
    pub fn slot_of(&self, value: &str) -> Option<usize> {
        self.slot_of.get(value).copied()
    }

    /// Shape of `value` at the plan's batch size.
    pub fn shape(&self, value: &str) -> Option<&[usize]> {
        self.shapes.get(value).map(|s| s.as_slice())
    }

    /// Total f32 elements over all slots (activation memory of one run).
    pub fn activation_elements(&self) -> usize {
        self.slots.iter().sum()
    }
}

/// A free slot for `need` elements: the smallest free one that fits, else the largest
/// free one grown to fit, else a new slot.
fn take_slot(free: &mut Vec<usize>, slots: &mut Vec<usize>, need: usize) -> usize {
    let fit = free
        .iter()
        .enumerate()
        .filter(|(_, &s)| slots[s] >= need)
        .min_by_key(|(_, &s)| slots[s])
        .map(|(i, _)| i);
    let pick = fit.or_else(|| {
        free.iter()
            .enumerate()
            .max_by_key(|(_, &s)| slots[s])
            .map(|(i, _)| i)
    });
    match pick {
        Some(i) => {
            let s = free.swap_remove(i);
            slots[s] = slots[s].max(need);
            s
        }
        None => {
            slots.push(need);
            slots.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphBuilder;

    #[test]
    fn fuses_relu_aliases_flatten_and_reuses_buffers() {
        let mut b = GraphBuilder::new("data", &[3, 16, 16], 1);
        let x = b.input();
        let c1 = b.conv(&x, 8, 3, 1, 1, 1);
        let r1 = b.relu(&c1);
        let c2 = b.conv(&r1, 8, 3, 1, 1, 1);
        let r2 = b.relu(&c2);
        let c3 = b.conv(&r2, 8, 3, 1, 1, 1);
        let p = b.max_pool(&c3, 2, 2, 0);
        let f = b.flatten(&p);
        let y = b.linear(&f, 10);
        let g = b.finish(&[&y]).unwrap();
        let plan = Plan::new(&g, 2).unwrap();
        // conv+relu, conv+relu, conv, pool, linear
        assert_eq!(plan.steps.len(), 5);
        assert!(plan.steps[0].fused_relu && plan.steps[1].fused_relu);
        assert!(!plan.steps[2].fused_relu);
        assert_eq!(plan.slot_of(&f), plan.slot_of(&p));
        assert_eq!(plan.slot_of(&r1), plan.slot_of(&c1));
        // c1 is dead once c2 ran, so c3 reuses its slot.
        assert_eq!(plan.slot_of(&c3), plan.slot_of(&c1));
        assert_ne!(plan.slot_of(&c2), plan.slot_of(&c1));
        // Input and output slots are never shared.
        let pinned = [plan.slot_of("data"), plan.slot_of(&y)];
        for s in &plan.steps[..4] {
            assert!(!pinned.contains(&plan.slot_of(&s.output)));
        }
        assert_eq!(plan.shape(&y), Some(&[2, 10][..]));
    }

    #[test]
    fn relu_read_twice_is_not_fused() {
        let mut b = GraphBuilder::new("data", &[4, 5, 5], 2);
        let x = b.input();
        let c = b.conv(&x, 4, 3, 1, 1, 1);
        let r = b.relu(&c);
        let a = b.add(&c, &r);
        let g = b.finish(&[&a]).unwrap();
        let plan = Plan::new(&g, 1).unwrap();
        assert_eq!(plan.steps.len(), 3);
        assert!(!plan.steps[0].fused_relu);
        assert_ne!(plan.slot_of(&c), plan.slot_of(&r));
    }
}
