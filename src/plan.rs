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
//! - Liveness: a value is dead once the last step reading it has run ([`Step::frees`]),
//!   and its slot returns to the pool. The graph input and every graph output keep
//!   their own slot for the whole run (the outputs are read back after the last step).
//!   A step's output never shares a slot with its inputs, so kernels need not support
//!   in-place operation; a backend that allocates per step may still reuse a dying
//!   first input's buffer ([`Step::first_input_dies`]).
//!
//! Both backends run from a plan: the GPU from slots (`backend::gpu::model`), the CPU
//! allocating a tensor per step and dropping each after the step that frees it
//! (`backend::cpu::run_with`).

use crate::graph::{Graph, GraphError, Op, Shapes};
use std::collections::HashMap;

/// One kernel invocation of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Index of the node in `graph.nodes`.
    pub node: usize,
    /// Name for reports, errors and profiles (both backends): the node name, then
    /// `+` and the fused Relu's node name when fused (`conv1+relu2`).
    pub name: String,
    /// Apply ReLU to the output (a fused Relu node).
    pub fused_relu: bool,
    /// Input value names (as in the node).
    pub inputs: Vec<String>,
    /// Output value name (the node's; a fused Relu's output is an alias of it).
    pub output: String,
    /// Values dead once this step has run, by root name (see [`Plan::root`]), sorted:
    /// those this step reads last, and its own output when nothing reads it, except
    /// graph outputs (and values they alias). The graph input is listed after its last
    /// reader, although its slot stays reserved.
    pub frees: Vec<String>,
    /// The first input's value dies at this step (it is in `frees`) and this step reads
    /// it only once: its buffer may become the output (the CPU's in-place ops).
    pub first_input_dies: bool,
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
    /// The value each alias stands for (a step output or the graph input).
    root_of: HashMap<String, String>,
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
            if node.op.is_alias() {
                alias.insert(node.output.clone(), node.inputs[0].clone());
                continue;
            }
            let mut step = Step {
                node: i,
                name: node.name.clone(),
                fused_relu: false,
                inputs: node.inputs.clone(),
                output: node.output.clone(),
                frees: vec![],
                first_input_dies: false,
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

        // Last step reading each root value; the values dying at each step.
        let mut last_use: HashMap<String, usize> = HashMap::new();
        for (s, step) in steps.iter().enumerate() {
            for v in &step.inputs {
                last_use.insert(resolve(v), s);
            }
        }
        let output_roots: Vec<String> = graph.outputs.iter().map(|o| resolve(o)).collect();
        for (s, step) in steps.iter_mut().enumerate() {
            let roots: Vec<String> = step.inputs.iter().map(|v| resolve(v)).collect();
            let mut frees: Vec<String> = roots
                .iter()
                .chain(std::iter::once(&step.output))
                .filter(|v| {
                    !output_roots.contains(v) && last_use.get(v.as_str()).is_none_or(|&l| l == s)
                })
                .cloned()
                .collect();
            frees.sort();
            frees.dedup();
            step.first_input_dies = roots.first().is_some_and(|r| {
                frees.contains(r) && roots.iter().filter(|u| *u == r).count() == 1
            });
            step.frees = frees;
        }
        let input_root = graph.input.name.clone();
        let pinned: Vec<String> = output_roots
            .iter()
            .cloned()
            .chain(std::iter::once(input_root.clone()))
            .collect();

        let len_of = |v: &str| shapes[v].iter().product::<usize>();
        let mut slots: Vec<usize> = vec![len_of(&input_root)];
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        slot_of.insert(input_root.clone(), 0);
        let mut free: Vec<usize> = vec![];
        for step in &steps {
            let need = len_of(&step.output);
            let slot = if pinned.contains(&step.output) {
                slots.push(need);
                slots.len() - 1
            } else {
                take_slot(&mut free, &mut slots, need)
            };
            slot_of.insert(step.output.clone(), slot);
            // Release inputs after the output is placed, so the two never share a slot.
            for v in &step.frees {
                if *v == input_root {
                    continue;
                }
                if let Some(&sl) = slot_of.get(v) {
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
        let root_of = alias.keys().map(|v| (v.clone(), resolve(v))).collect();
        Ok(Plan {
            batch,
            shapes,
            steps,
            slots,
            slot_of,
            root_of,
        })
    }

    /// The value that holds `value`'s data: the source of an alias (followed through
    /// chains of aliases), else `value` itself.
    pub fn root<'a>(&'a self, value: &'a str) -> &'a str {
        self.root_of.get(value).map_or(value, |r| r.as_str())
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
    fn frees_each_value_after_its_last_reader() {
        let mut b = GraphBuilder::new("data", &[3, 8, 8], 1);
        let x = b.input();
        let c1 = b.conv(&x, 4, 3, 1, 1, 1);
        let r1 = b.relu(&c1); // fused into c1; also a graph output
        let c2 = b.conv(&r1, 4, 3, 1, 1, 1);
        let unread = b.conv(&r1, 2, 1, 1, 0, 1); // nothing reads it
        let a = b.add(&c2, &r1);
        let twice = b.add(&a, &a);
        let f = b.flatten(&twice);
        let y = b.linear(&f, 5);
        let g = b.finish(&[&y, &r1]).unwrap();
        let plan = Plan::new(&g, 2).unwrap();
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("{c1}+{r1}"),
                c2.clone(),
                unread.clone(),
                a.clone(),
                twice.clone(),
                y.clone()
            ]
        );
        assert_eq!(plan.root(&r1), c1);
        assert_eq!(plan.root(&f), twice);
        assert_eq!(plan.root(&c2), c2);
        let frees: Vec<Vec<&str>> = plan
            .steps
            .iter()
            .map(|s| s.frees.iter().map(|v| v.as_str()).collect())
            .collect();
        // The input after its only reader; c1 (the output r1's source) never; an unread
        // output at its own step; a, read twice by one step, there; y (an output) never.
        let want: Vec<Vec<&str>> = vec![
            vec!["data"],
            vec![],
            vec![unread.as_str()],
            vec![c2.as_str()],
            vec![a.as_str()],
            vec![twice.as_str()],
        ];
        assert_eq!(frees, want);
        let dies: Vec<bool> = plan.steps.iter().map(|s| s.first_input_dies).collect();
        // c2 and unread read r1, which lives on; `twice` reads `a` twice.
        assert_eq!(dies, [true, false, false, true, false, true]);
        // The slots follow the same liveness: c2's slot is free once `a` ran.
        assert_eq!(plan.slot_of(&twice), plan.slot_of(&c2));
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
