//! Fold passes: BatchNormalization into the preceding Conv/Linear, Identity removed.

use super::{BinaryKind, Graph, GraphError, Op, Tensor, UnaryOp};
use crate::weights::Weights;

/// Runs every fold pass. The result computes the same function (to f32 rounding)
/// with fewer nodes. Folding needs dense weights; compressed layers are left alone.
pub fn fold(mut graph: Graph) -> Result<Graph, GraphError> {
    graph.sort_and_validate()?;
    remove_identities(&mut graph);
    fold_batchnorm(&mut graph);
    fuse_gated_activations(&mut graph);
    graph.sort_and_validate()?;
    Ok(graph)
}

/// Rewires the readers of each Identity to its input. An Identity whose output is
/// a graph output renames its producer's output instead, so output names survive;
/// where that is impossible (its input is the graph input or is read elsewhere) it stays.
fn remove_identities(graph: &mut Graph) {
    let mut i = 0;
    while i < graph.nodes.len() {
        if !matches!(graph.nodes[i].op, Op::Identity) {
            i += 1;
            continue;
        }
        let (from, to) = (
            graph.nodes[i].inputs[0].clone(),
            graph.nodes[i].output.clone(),
        );
        if graph.outputs.contains(&to) {
            let readers = graph
                .nodes
                .iter()
                .filter(|n| n.inputs.contains(&from))
                .count();
            match graph.producer(&from) {
                Some(p) if readers == 1 && !graph.outputs.contains(&from) => {
                    graph.nodes[p].output = to;
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
        } else {
            for n in &mut graph.nodes {
                for v in &mut n.inputs {
                    if *v == to {
                        *v = from.clone();
                    }
                }
            }
        }
        graph.nodes.remove(i);
    }
}

/// Folds `BN(conv(x))` into the conv: w' = w * s, b' = (b - mean) * s + beta with
/// s = gamma / sqrt(var + eps). Only when the conv's output feeds the BN alone.
fn fold_batchnorm(graph: &mut Graph) {
    let mut i = 0;
    while i < graph.nodes.len() {
        let Op::BatchNorm {
            scale,
            bias,
            mean,
            var,
            epsilon,
        } = &graph.nodes[i].op
        else {
            i += 1;
            continue;
        };
        let input = graph.nodes[i].inputs[0].clone();
        let Some(p) = graph.producer(&input) else {
            i += 1;
            continue;
        };
        let readers = graph
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&input))
            .count();
        if readers != 1 || graph.outputs.contains(&input) {
            i += 1;
            continue;
        }
        let s: Vec<f32> = scale
            .data
            .iter()
            .zip(&var.data)
            .map(|(g, v)| g / (v + epsilon).sqrt())
            .collect();
        let shift: Vec<(f32, f32)> = mean
            .data
            .iter()
            .copied()
            .zip(bias.data.iter().copied())
            .collect();
        let folded = match &mut graph.nodes[p].op {
            Op::Conv(c) => scale_layer(&mut c.weight, &mut c.bias, &s, &shift),
            // BN normalises axis 1, which for [N, K] is the fc output axis.
            Op::Linear(l) => scale_layer(&mut l.weight, &mut l.bias, &s, &shift),
            _ => false,
        };
        if folded {
            let bn = graph.nodes.remove(i);
            graph.nodes[p].output = bn.output;
        } else {
            i += 1;
        }
    }
}

/// Fuses `x * sigmoid(x)` into SiLU and `x * hardsigmoid(x)` (alpha 1/6, beta 1/2)
/// into HardSwish: one pass over the activation instead of two and a stored gate.
/// Only where the gate feeds the Mul alone.
fn fuse_gated_activations(graph: &mut Graph) {
    let mut i = 0;
    while i < graph.nodes.len() {
        let node = &graph.nodes[i];
        if node.op != Op::Binary(BinaryKind::Mul) || node.inputs.len() != 2 {
            i += 1;
            continue;
        }
        let gate_of = |value: &str, other: &str| -> Option<(usize, UnaryOp)> {
            let p = graph.producer(value)?;
            let g = &graph.nodes[p];
            let fused = match g.op {
                Op::Sigmoid => UnaryOp::Silu,
                Op::Unary(UnaryOp::HardSigmoid { alpha, beta })
                    if (alpha - 1.0 / 6.0).abs() < 1e-6 && beta == 0.5 =>
                {
                    UnaryOp::HardSwish
                }
                _ => return None,
            };
            let readers = graph
                .nodes
                .iter()
                .filter(|n| n.inputs.iter().any(|v| v == value))
                .count();
            (g.inputs[0] == other && readers == 1 && !graph.outputs.iter().any(|o| o == value))
                .then_some((p, fused))
        };
        let (a, b) = (&node.inputs[0], &node.inputs[1]);
        let found = gate_of(b, a)
            .map(|(p, f)| (p, f, a.clone()))
            .or_else(|| gate_of(a, b).map(|(p, f)| (p, f, b.clone())));
        let Some((gate, fused, x)) = found else {
            i += 1;
            continue;
        };
        graph.nodes[i].op = Op::Unary(fused);
        graph.nodes[i].inputs = vec![x];
        graph.nodes.remove(gate);
        if gate > i {
            i += 1;
        }
    }
}

fn scale_layer(
    weight: &mut Weights,
    bias: &mut Option<Tensor>,
    s: &[f32],
    shift: &[(f32, f32)],
) -> bool {
    // Only dense weights are rescaled; compressed layers are left as they are.
    let Weights::Dense(w) = weight else {
        return false;
    };
    let rows = w.shape[0];
    if rows != s.len() {
        return false;
    }
    let per_row = w.len() / rows;
    for (r, chunk) in w.data.chunks_mut(per_row).enumerate() {
        chunk.iter_mut().for_each(|v| *v *= s[r]);
    }
    let b = bias.get_or_insert_with(|| Tensor::zeros(vec![rows]));
    for r in 0..rows {
        let (mean, beta) = shift[r];
        b.data[r] = (b.data[r] - mean) * s[r] + beta;
    }
    true
}
