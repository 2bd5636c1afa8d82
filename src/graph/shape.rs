//! Shape inference: the shape of every value for a given batch size.

use super::{Graph, GraphError, Node, Op};
use std::collections::HashMap;

/// Shape of every value in a graph, by value name.
pub type Shapes = HashMap<String, Vec<usize>>;

/// Broadcasts `b` against `a` with NumPy rules; `None` if incompatible.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// The shape `target` gives `input` under ONNX Reshape rules (`0` copies the input's
/// axis, one `-1` is inferred); `None` if it does not fit.
pub fn reshape(input: &[usize], target: &[i64]) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len().min(16));
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 => out.push(*input.get(i)?),
            t if t > 0 => out.push(usize::try_from(t).ok()?),
            _ => return None,
        }
    }
    let known = out.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    match infer {
        Some(i) if known > 0 && total.is_multiple_of(known) => out[i] = total / known,
        None if known == total => {}
        _ => return None,
    }
    Some(out)
}

/// Elements a Slice takes from an axis of `d` (see `Op::Slice`); `None` when empty or
/// invalid.
pub fn slice_len(d: usize, start: usize, end: usize, step: i64) -> Option<usize> {
    let s = step.unsigned_abs() as usize;
    if step > 0 {
        let end = end.min(d);
        (start < end).then(|| (end - start).div_ceil(s))
    } else if step < 0 {
        (start < d && end <= start).then(|| (start + 1 - end).div_ceil(s))
    } else {
        None
    }
}

impl Graph {
    /// Shapes of every value at batch size `batch`. The nodes must be in
    /// topological order (`sort_and_validate`).
    pub fn infer_shapes(&self, batch: usize) -> Result<Shapes, GraphError> {
        let mut shapes = Shapes::new();
        let mut input_shape = vec![batch];
        input_shape.extend(&self.input.item_shape);
        shapes.insert(self.input.name.clone(), input_shape);
        for node in &self.nodes {
            let ins: Vec<&Vec<usize>> = node
                .inputs
                .iter()
                .map(|v| {
                    shapes.get(v).ok_or_else(|| GraphError::DanglingInput {
                        node: node.name.clone(),
                        value: v.clone(),
                    })
                })
                .collect::<Result<_, _>>()?;
            let out = node_shape(node, &ins)?;
            if out.contains(&0) {
                return Err(err(
                    node,
                    format!("output shape {out:?} has a zero dimension"),
                ));
            }
            shapes.insert(node.output.clone(), out);
        }
        Ok(shapes)
    }
}

fn err(node: &Node, reason: String) -> GraphError {
    GraphError::Shape {
        node: node.name.clone(),
        op: node.op.kind(),
        reason,
    }
}

fn arity(node: &Node, ins: &[&Vec<usize>], n: usize) -> Result<(), GraphError> {
    if ins.len() != n {
        return Err(err(
            node,
            format!("expects {n} input(s), has {}", ins.len()),
        ));
    }
    Ok(())
}

fn rank4<'a>(node: &Node, ins: &[&'a Vec<usize>]) -> Result<&'a [usize], GraphError> {
    arity(node, ins, 1)?;
    if ins[0].len() != 4 {
        return Err(err(
            node,
            format!("expects an NCHW input, got shape {:?}", ins[0]),
        ));
    }
    Ok(ins[0])
}

/// The output shape of `node` from its input shapes.
pub(crate) fn node_shape(node: &Node, ins: &[&Vec<usize>]) -> Result<Vec<usize>, GraphError> {
    match &node.op {
        Op::Conv(c) => {
            let x = rank4(node, ins)?;
            let w = c.weight.shape();
            if w.len() != 4 || c.groups == 0 || w[0] % c.groups != 0 || x[1] != w[1] * c.groups {
                return Err(err(
                    node,
                    format!(
                        "input {:?} does not fit weight {:?} with {} group(s)",
                        x, w, c.groups
                    ),
                ));
            }
            if [w[2], w[3]] != c.kernel || c.stride.contains(&0) || c.dilation.contains(&0) {
                return Err(err(
                    node,
                    format!(
                        "kernel {:?}, stride {:?}, dilation {:?} invalid for weight {:?}",
                        c.kernel, c.stride, c.dilation, w
                    ),
                ));
            }
            if let Some(b) = &c.bias {
                if b.len() != w[0] {
                    return Err(err(
                        node,
                        format!("bias has {} values for {} channels", b.len(), w[0]),
                    ));
                }
            }
            let [oh, ow] = c
                .output_hw(x[2], x[3])
                .ok_or_else(|| err(node, format!("kernel does not fit input {x:?}")))?;
            Ok(vec![x[0], w[0], oh, ow])
        }
        Op::Linear(l) => {
            arity(node, ins, 1)?;
            let x = ins[0];
            let w = l.weight.shape();
            if x.len() != 2 || w.len() != 2 || x[1] != w[1] {
                return Err(err(
                    node,
                    format!("input {x:?} does not fit weight {w:?} ([out, in])"),
                ));
            }
            if let Some(b) = &l.bias {
                if b.len() != w[0] {
                    return Err(err(
                        node,
                        format!("bias has {} values for {} outputs", b.len(), w[0]),
                    ));
                }
            }
            Ok(vec![x[0], w[0]])
        }
        Op::Relu
        | Op::LeakyRelu { .. }
        | Op::Clip { .. }
        | Op::Sigmoid
        | Op::Identity
        | Op::Unary(_) => {
            arity(node, ins, 1)?;
            Ok(ins[0].clone())
        }
        Op::Softmax => {
            arity(node, ins, 1)?;
            Ok(ins[0].clone())
        }
        Op::MaxPool(p) | Op::AvgPool(p) => {
            let x = rank4(node, ins)?;
            if p.stride.contains(&0) || p.kernel.contains(&0) {
                return Err(err(node, "zero kernel or stride".into()));
            }
            let [oh, ow] = p
                .output_hw(x[2], x[3])
                .ok_or_else(|| err(node, format!("window does not fit input {x:?}")))?;
            Ok(vec![x[0], x[1], oh, ow])
        }
        Op::GlobalAvgPool => {
            let x = rank4(node, ins)?;
            Ok(vec![x[0], x[1], 1, 1])
        }
        Op::BatchNorm {
            scale,
            bias,
            mean,
            var,
            ..
        } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            let c = *x
                .get(1)
                .ok_or_else(|| err(node, "input has no channel axis".into()))?;
            if [scale, bias, mean, var].iter().any(|t| t.len() != c) {
                return Err(err(node, format!("parameters do not have {c} channels")));
            }
            Ok(x.clone())
        }
        Op::Lrn { size, .. } => {
            let x = rank4(node, ins)?;
            if *size == 0 {
                return Err(err(node, "size 0".into()));
            }
            Ok(x.to_vec())
        }
        Op::Add => {
            arity(node, ins, 2)?;
            if ins[0] != ins[1] {
                return Err(err(
                    node,
                    format!("operands differ in shape: {:?} vs {:?}", ins[0], ins[1]),
                ));
            }
            Ok(ins[0].clone())
        }
        Op::ConstBinary { constant, .. } => {
            arity(node, ins, 1)?;
            match broadcast(ins[0], &constant.shape) {
                Some(s) if s == *ins[0] => Ok(s),
                _ => Err(err(
                    node,
                    format!(
                        "constant {:?} does not broadcast to input {:?}",
                        constant.shape, ins[0]
                    ),
                )),
            }
        }
        Op::Concat { axis } => {
            if ins.is_empty() {
                return Err(err(node, "no inputs".into()));
            }
            let first = ins[0];
            if *axis >= first.len() {
                return Err(err(
                    node,
                    format!("axis {axis} out of range for rank {}", first.len()),
                ));
            }
            let mut out = first.clone();
            out[*axis] = 0;
            for s in ins {
                let same_rest = s.len() == first.len()
                    && s.iter()
                        .zip(first.iter())
                        .enumerate()
                        .all(|(i, (a, b))| i == *axis || a == b);
                if !same_rest {
                    return Err(err(
                        node,
                        format!("shapes {first:?} and {s:?} differ off axis {axis}"),
                    ));
                }
                out[*axis] += s[*axis];
            }
            Ok(out)
        }
        Op::Flatten { axis } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            if *axis > x.len() {
                return Err(err(
                    node,
                    format!("axis {axis} out of range for rank {}", x.len()),
                ));
            }
            Ok(vec![
                x[..*axis].iter().product(),
                x[*axis..].iter().product(),
            ])
        }
        Op::Pad { pads, .. } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            if pads.len() != 2 * x.len() {
                return Err(err(
                    node,
                    format!("{} pads for rank {}", pads.len(), x.len()),
                ));
            }
            Ok(x.iter()
                .enumerate()
                .map(|(i, d)| d + pads[i] + pads[i + x.len()])
                .collect())
        }
        Op::Binary(_) => {
            arity(node, ins, 2)?;
            broadcast(ins[0], ins[1]).ok_or_else(|| {
                err(
                    node,
                    format!("shapes {:?} and {:?} do not broadcast", ins[0], ins[1]),
                )
            })
        }
        Op::Reduce { axes, keepdims, .. } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            let sorted = axes.windows(2).all(|w| w[0] < w[1]);
            if axes.is_empty() || !sorted || axes[0] == 0 || axes[axes.len() - 1] >= x.len() {
                return Err(err(
                    node,
                    format!(
                        "axes {axes:?} invalid for rank {} (batch axis kept)",
                        x.len()
                    ),
                ));
            }
            Ok(x.iter()
                .enumerate()
                .filter_map(|(i, &d)| match (axes.contains(&i), keepdims) {
                    (false, _) => Some(d),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect())
        }
        Op::Transpose { perm } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            let mut seen = vec![false; x.len()];
            let valid = perm.len() == x.len()
                && perm.first() == Some(&0)
                && perm
                    .iter()
                    .all(|&p| p < x.len() && !std::mem::replace(&mut seen[p], true));
            if !valid {
                return Err(err(
                    node,
                    format!(
                        "perm {perm:?} invalid for rank {} (batch axis first)",
                        x.len()
                    ),
                ));
            }
            Ok(perm.iter().map(|&p| x[p]).collect())
        }
        Op::Reshape { target } => {
            arity(node, ins, 1)?;
            reshape(ins[0], target)
                .ok_or_else(|| err(node, format!("cannot reshape {:?} to {target:?}", ins[0])))
        }
        Op::Expand { shape } => {
            arity(node, ins, 1)?;
            match broadcast(ins[0], shape) {
                Some(s) if shape.len() == ins[0].len() && shape.first() == Some(&1) => Ok(s),
                _ => Err(err(
                    node,
                    format!("cannot expand {:?} to {shape:?}", ins[0]),
                )),
            }
        }
        Op::LayerNorm {
            axis, scale, bias, ..
        } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            if *axis == 0 || *axis >= x.len() {
                return Err(err(
                    node,
                    format!("axis {axis} invalid for rank {} (batch axis kept)", x.len()),
                ));
            }
            let inner: usize = x[*axis..].iter().product();
            if scale.len() != inner || bias.as_ref().is_some_and(|b| b.len() != inner) {
                return Err(err(
                    node,
                    format!(
                        "scale/bias do not have the {inner} values of {:?}",
                        &x[*axis..]
                    ),
                ));
            }
            Ok(x.clone())
        }
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            arity(node, ins, 1)?;
            let x = ins[0];
            if starts.len() != x.len() || ends.len() != x.len() || steps.len() != x.len() {
                return Err(err(
                    node,
                    format!("slice parameters do not match rank {}", x.len()),
                ));
            }
            let mut out = Vec::with_capacity(x.len());
            for i in 0..x.len() {
                match slice_len(x[i], starts[i], ends[i], steps[i]) {
                    Some(n) => out.push(n),
                    None => {
                        return Err(err(
                            node,
                            format!(
                                "axis {i}: empty or invalid slice {}..{} step {}",
                                starts[i], ends[i], steps[i]
                            ),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}
