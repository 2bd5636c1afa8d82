//! Arithmetic, activations and reductions: Add, Sub, Mul, Div, Pow, Max, Min, PRelu
//! (with a constant operand or between computed values), Relu, Sigmoid, LeakyRelu,
//! Clip, the `UnaryOp` functions, ReduceMean/Sum/Max/Min/L2.

use super::one;
use super::shape::int_op;
use crate::graph::{broadcast, BinaryKind, Op, ReduceKind, Tensor, UnaryOp};
use crate::import::onnx::importer::{Ctx, Importer, Out};
use crate::import::onnx::tensors::{Const, ConstData};
use crate::import::ImportError;

impl Importer {
    /// Add, Sub, Mul, Div, Pow, Max, Min, PRelu: with a constant operand, between two
    /// computed values (NumPy broadcasting), folded between constants and on shape values.
    pub(super) fn binary(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["consumed_inputs", "broadcast", "axis"])?;
        if a.int("axis")?.is_some() {
            return Err(ctx.unsupported("axis", a.int("axis")?));
        }
        let kind = match ctx.op {
            "Add" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            "Div" => BinaryKind::Div,
            "Pow" => BinaryKind::Pow,
            "Max" => BinaryKind::Max,
            "Sum" | "Mean" => BinaryKind::Add,
            "Min" => BinaryKind::Min,
            _ => BinaryKind::PRelu,
        };
        // Max, Min, Sum and Mean take one or more inputs.
        let variadic = matches!(ctx.op, "Max" | "Min" | "Sum" | "Mean");
        if variadic && (ctx.np.input.len() != 2 || ctx.op == "Mean") {
            return self.variadic(ctx, kind);
        }
        if ctx.np.input.len() != 2 {
            return Err(ctx.unsupported(
                "inputs",
                format!("{} inputs (cnnpack takes 2)", ctx.np.input.len()),
            ));
        }
        if self.is_dims(ctx, 0) || self.is_dims(ctx, 1) {
            return self.arith_dims(ctx, kind);
        }
        let c0 = ctx.input(0).and_then(|v| self.consts.get(v));
        let c1 = ctx.input(1).and_then(|v| self.consts.get(v));
        match (c0, c1) {
            (None, None) => {
                let (mut x0, mut x1) = (self.dynamic(ctx, 0)?, self.dynamic(ctx, 1)?);
                let (Ok(s0), Ok(s1)) = (self.shape(&x0), self.shape(&x1)) else {
                    // A file out of order: no shapes yet; sort_and_validate decides.
                    let op = match kind {
                        BinaryKind::Add => Op::Add,
                        _ => Op::Binary(kind),
                    };
                    return Ok(Out::Node(op, vec![x0, x1]));
                };
                let out = broadcast(&s0, &s1)
                    .ok_or_else(|| ctx.bad(format!("shapes {s0:?} and {s1:?} do not broadcast")))?;
                if kind == BinaryKind::Add && s0 == s1 {
                    return Ok(Out::Node(Op::Add, vec![x0, x1]));
                }
                // The operand of the output's shape goes first, so that the CPU runs the
                // op in its buffer (a squeeze-excitation `scale * x` becomes `x * scale`).
                let commutes = matches!(
                    kind,
                    BinaryKind::Add | BinaryKind::Mul | BinaryKind::Max | BinaryKind::Min
                );
                if commutes && s0 != out && s1 == out {
                    std::mem::swap(&mut x0, &mut x1);
                }
                Ok(Out::Node(Op::Binary(kind), vec![x0, x1]))
            }
            (Some(p), Some(q)) => fold_binary(ctx, kind, p, q).map(Out::Const),
            (Some(c), None) | (None, Some(c)) => {
                let constant_first = c0.is_some();
                if kind == BinaryKind::PRelu && constant_first {
                    return Err(ctx.unsupported("X", "a constant input with a computed slope"));
                }
                let constant = c.to_tensor();
                let cdims = c.dims.clone();
                let mut x = self.dynamic(ctx, if constant_first { 1 } else { 0 })?;
                let op = Op::ConstBinary {
                    kind,
                    constant,
                    constant_first,
                };
                let Ok(mut shape) = self.shape(&x) else {
                    return Ok(Out::Node(op, vec![x]));
                };
                let output = ctx.np.output[0].clone();
                let mut nodes = vec![];
                // Without a batch axis a constant may have more axes than x: 1s go in
                // front of x's ONNX axes first.
                if self.lift && cdims.len() >= shape.len() {
                    let mut to = vec![1usize; cdims.len() + 1 - shape.len()];
                    to.extend(&shape[1..]);
                    to.insert(0, 1);
                    let mut t: Vec<i64> = to.iter().map(|&d| d as i64).collect();
                    t[0] = 0;
                    let raised = format!("{output}/cnnpack_raise");
                    nodes.push((Op::Reshape { target: t }, vec![x], raised.clone()));
                    x = raised;
                    shape = to;
                }
                // A constant larger than x along non-batch axes: x is expanded first.
                match broadcast(&shape, &cdims) {
                    Some(out) if out != shape && out.len() == shape.len() && out[0] == shape[0] => {
                        let mut to = out.clone();
                        to[0] = 1;
                        let expanded = format!("{output}/cnnpack_expand");
                        nodes.push((Op::Expand { shape: to }, vec![x], expanded.clone()));
                        x = expanded;
                    }
                    _ => {}
                }
                if nodes.is_empty() {
                    return Ok(Out::Node(op, vec![x]));
                }
                nodes.push((op, vec![x], output));
                let main = nodes.len() - 1;
                Ok(Out::Nodes { nodes, main })
            }
        }
    }

    /// Max, Min, Sum, Mean of any number of inputs: the constants folded into one, the
    /// computed values chained pairwise, the constant applied last (Mean: then * 1/n).
    fn variadic(&mut self, ctx: &Ctx, kind: BinaryKind) -> Result<Out, ImportError> {
        let n = ctx.np.input.len();
        if n == 0 {
            return Err(ctx.bad("no inputs"));
        }
        let mut konst: Option<Const> = None;
        let mut computed = vec![];
        for i in 0..n {
            match ctx.input(i).and_then(|v| self.consts.get(v)) {
                Some(c) => {
                    konst = Some(match konst {
                        None => c.clone(),
                        Some(k) => fold_binary(ctx, kind, &k, c)?,
                    })
                }
                None => computed.push(self.dynamic(ctx, i)?),
            }
        }
        let Some(first) = computed.first().cloned() else {
            return Err(ctx.bad("every input is a constant"));
        };
        let output = ctx.np.output[0].clone();
        let mut steps: Vec<(Op, Vec<String>)> = vec![];
        let mut cur = first;
        let mut cur_shape = self.shape(&cur)?;
        let mut k = 0;
        let mut tmp = |steps: &mut Vec<(Op, Vec<String>)>, op: Op, inputs: Vec<String>| {
            steps.push((op, inputs));
            k += 1;
            format!("{output}/cnnpack_{k}")
        };
        for other in &computed[1..] {
            let s = self.shape(other)?;
            let out = broadcast(&cur_shape, &s).ok_or_else(|| {
                ctx.bad(format!("shapes {cur_shape:?} and {s:?} do not broadcast"))
            })?;
            let op = if kind == BinaryKind::Add && s == cur_shape {
                Op::Add
            } else {
                Op::Binary(kind)
            };
            let (a, b) = if s == out && cur_shape != out {
                (other.clone(), cur.clone())
            } else {
                (cur.clone(), other.clone())
            };
            cur = tmp(&mut steps, op, vec![a, b]);
            cur_shape = out;
        }
        if let Some(c) = konst {
            let op = Op::ConstBinary {
                kind,
                constant: c.to_tensor(),
                constant_first: false,
            };
            cur = tmp(&mut steps, op, vec![cur]);
        }
        if ctx.op == "Mean" {
            let op = Op::ConstBinary {
                kind: BinaryKind::Mul,
                constant: Tensor::new(vec![], vec![1.0 / n as f32]).expect("a scalar"),
                constant_first: false,
            };
            cur = tmp(&mut steps, op, vec![cur]);
        }
        let _ = cur;
        if steps.is_empty() {
            return one(Op::Identity, computed.remove(0));
        }
        // Each step writes the name the next reads; the last writes the node's output.
        let last = steps.len() - 1;
        let nodes = steps
            .into_iter()
            .enumerate()
            .map(|(i, (op, inputs))| {
                let out = if i == last {
                    output.clone()
                } else {
                    format!("{output}/cnnpack_{}", i + 1)
                };
                (op, inputs, out)
            })
            .collect();
        Ok(Out::Nodes { nodes, main: 0 })
    }

    /// The element-wise functions of `UnaryOp`.
    pub(super) fn unary(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let op = match ctx.op {
            "HardSigmoid" => {
                a.only(&["alpha", "beta"])?;
                UnaryOp::HardSigmoid {
                    alpha: a.float_or("alpha", 0.2)?,
                    beta: a.float_or("beta", 0.5)?,
                }
            }
            "Elu" => {
                a.only(&["alpha"])?;
                UnaryOp::Elu {
                    alpha: a.float_or("alpha", 1.0)?,
                }
            }
            "Gelu" => {
                a.only(&["approximate"])?;
                let tanh = match a.string("approximate")?.as_deref() {
                    None | Some("none") => false,
                    Some("tanh") => true,
                    Some(other) => return Err(ctx.unsupported("approximate", other)),
                };
                UnaryOp::Gelu { tanh }
            }
            op => {
                a.only(&["consumed_inputs"])?;
                match op {
                    "HardSwish" => UnaryOp::HardSwish,
                    "Tanh" => UnaryOp::Tanh,
                    "Erf" => UnaryOp::Erf,
                    "Exp" => UnaryOp::Exp,
                    "Log" => UnaryOp::Log,
                    "Sqrt" => UnaryOp::Sqrt,
                    "Neg" => UnaryOp::Neg,
                    "Abs" => UnaryOp::Abs,
                    "Reciprocal" => UnaryOp::Reciprocal,
                    "Softplus" => UnaryOp::Softplus,
                    _ => UnaryOp::Softsign,
                }
            }
        };
        // Of a constant: folded (integers stay integers for Neg and Abs).
        if let Some(c) = ctx.input(0).and_then(|v| self.consts.get(v)) {
            let data = match (&c.data, op) {
                (ConstData::I64(v), UnaryOp::Neg) => ConstData::I64(v.iter().map(|x| -x).collect()),
                (ConstData::I64(v), UnaryOp::Abs) => {
                    ConstData::I64(v.iter().map(|x| x.abs()).collect())
                }
                _ => ConstData::F32(c.to_tensor().data.iter().map(|&x| op.apply(x)).collect()),
            };
            return Ok(Out::Const(Const {
                dims: c.dims.clone(),
                data,
            }));
        }
        one(Op::Unary(op), self.dynamic(ctx, 0)?)
    }

    /// ReduceMean/Sum/Max/Min/L2 over non-batch axes (attribute or input, by opset).
    pub(super) fn reduce(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axes", "keepdims", "noop_with_empty_axes"])?;
        let kind = match ctx.op {
            "ReduceMean" => ReduceKind::Mean,
            "ReduceSum" => ReduceKind::Sum,
            "ReduceMax" => ReduceKind::Max,
            "ReduceMin" => ReduceKind::Min,
            _ => ReduceKind::L2,
        };
        let keepdims = a.int_or("keepdims", 1)? != 0;
        // Axes moved from the attribute to an input: ReduceSum at opset 13, the rest at 18.
        let axes_input = self.opset >= 18 || (kind == ReduceKind::Sum && self.opset >= 13);
        let axes = if axes_input {
            match self.opt_constant(ctx, 1, "axes")? {
                None => None,
                Some(c) => Some(
                    c.ints()
                        .ok_or_else(|| ctx.unsupported("axes", "a float tensor"))?
                        .to_vec(),
                ),
            }
        } else {
            a.ints("axes")?
        };
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        let axes = match axes {
            Some(v) if !v.is_empty() => v,
            _ if a.int_or("noop_with_empty_axes", 0)? != 0 => return one(Op::Identity, x),
            _ => (0..self.onnx_rank(rank) as i64).collect(),
        };
        let mut norm: Vec<usize> = axes
            .iter()
            .map(|&ax| self.axis(ax, rank))
            .collect::<Option<_>>()
            .ok_or_else(|| ctx.unsupported("axes", &axes))?;
        norm.sort_unstable();
        norm.dedup();
        if norm[0] == 0 {
            return Err(ctx.unsupported(
                "axes",
                format!("{axes:?} reduces axis 0, which holds the batch"),
            ));
        }
        one(
            Op::Reduce {
                kind,
                axes: norm,
                keepdims,
            },
            x,
        )
    }

    /// Relu and Sigmoid.
    pub(super) fn activation(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["consumed_inputs"])?;
        let x = self.dynamic(ctx, 0)?;
        let op = match ctx.op {
            "Relu" => Op::Relu,
            _ => Op::Sigmoid,
        };
        one(op, x)
    }

    /// LeakyRelu.
    pub(super) fn leaky_relu(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["alpha"])?;
        let alpha = a.float_or("alpha", 0.01)?;
        one(Op::LeakyRelu { alpha }, self.dynamic(ctx, 0)?)
    }

    /// Clip: bounds from attributes before opset 11, constant inputs after.
    pub(super) fn clip(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let (min, max) = if self.opset < 11 {
            a.only(&["min", "max", "consumed_inputs"])?;
            (
                a.float_or("min", f32::NEG_INFINITY)?,
                a.float_or("max", f32::INFINITY)?,
            )
        } else {
            a.only(&[])?;
            let bound = |i: usize, role: &str, default: f32| -> Result<f32, ImportError> {
                match self.opt_constant(ctx, i, role)? {
                    None => Ok(default),
                    Some(c) => c.scalar().ok_or_else(|| {
                        ctx.unsupported(role, format!("tensor of shape {:?}", c.dims))
                    }),
                }
            };
            (
                bound(1, "min", f32::NEG_INFINITY)?,
                bound(2, "max", f32::INFINITY)?,
            )
        };
        if min.is_nan() || max.is_nan() || min > max {
            return Err(ctx.unsupported("min/max", (min, max)));
        }
        one(Op::Clip { min, max }, self.dynamic(ctx, 0)?)
    }
}

/// `p op q` between two constants (NumPy broadcasting): integers stay integers (shape
/// arithmetic), anything else is computed in f32.
fn fold_binary(ctx: &Ctx, kind: BinaryKind, p: &Const, q: &Const) -> Result<Const, ImportError> {
    let dims = broadcast(&p.dims, &q.dims).ok_or_else(|| {
        ctx.bad(format!(
            "constants {:?} and {:?} do not broadcast",
            p.dims, q.dims
        ))
    })?;
    if let (ConstData::I64(a), ConstData::I64(b)) = (&p.data, &q.data) {
        // Each output element reads `v` at its index with the broadcast axes at 0.
        let expand = |v: &[i64], d: &[usize]| {
            let own = crate::tensor::strides(d);
            let lead = dims.len() - d.len();
            let out = crate::tensor::strides(&dims);
            (0..dims.iter().product::<usize>())
                .map(|i| {
                    let off: usize = (lead..dims.len())
                        .filter(|&a| d[a - lead] != 1)
                        .map(|a| (i / out[a]) % dims[a] * own[a - lead])
                        .sum();
                    v[off]
                })
                .collect::<Vec<i64>>()
        };
        let (a, b) = (expand(a, &p.dims), expand(b, &q.dims));
        let data = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| int_op(kind, x, y))
            .collect::<Option<Vec<i64>>>()
            .ok_or_else(|| ctx.bad("integer overflow or division by zero"))?;
        return Ok(Const {
            dims,
            data: ConstData::I64(data),
        });
    }
    let (a, b) = (p.to_tensor(), q.to_tensor());
    let y = crate::backend::cpu::reference::binary(&a, &b, kind);
    Ok(Const {
        dims,
        data: ConstData::F32(y.data),
    })
}
