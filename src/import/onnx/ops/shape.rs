//! Shape subgraphs folded at load: Shape, Size, and the integer plumbing exporters
//! build reshape targets with (Gather, Unsqueeze, Squeeze, Concat, Slice, Cast, integer
//! Add/Sub/Mul/Div). A value known at import becomes a constant; one that depends on
//! the batch size stays a `DimsValue` whose entries are `k * N`, so that a channel
//! shuffle's `Reshape(x, [N, g, C / g, H, W])` works for any N.

use super::norm_axis;
use crate::graph::BinaryKind;
use crate::import::onnx::importer::{Ctx, Dim, DimsValue, Importer, Out};
use crate::import::onnx::tensors::ConstData;
use crate::import::ImportError;

impl Importer {
    /// Input `i` as a shape-like integer value: an integer constant of rank 0 or 1, or
    /// a batch-dependent `DimsValue`; `None` otherwise.
    pub(super) fn int_value(&self, ctx: &Ctx, i: usize) -> Option<DimsValue> {
        let v = ctx.input(i)?;
        if let Some(d) = self.dims.get(v) {
            return Some(d.clone());
        }
        let c = self.consts.get(v)?;
        let ints = c.ints()?;
        (c.dims.len() <= 1).then(|| DimsValue {
            shape: c.dims.clone(),
            vals: ints.iter().map(|&i| Dim::Fixed(i)).collect(),
        })
    }

    /// Whether input `i` is a batch-dependent shape value.
    pub(super) fn is_dims(&self, ctx: &Ctx, i: usize) -> bool {
        ctx.input(i).is_some_and(|v| self.dims.contains_key(v))
    }

    /// The batch factor of axis 0 of a computed value: its size at import over the
    /// batch size it was tracked at.
    fn batch_factor(&self, first: usize) -> i64 {
        let declared = self.graph.input.declared_batch.unwrap_or(1).max(1);
        (first / declared) as i64
    }

    /// Shape (with opset 15's start/end) of a computed value or a constant.
    pub(super) fn shape_of(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["start", "end"])?;
        let v = ctx.input(0).ok_or_else(|| ctx.bad("input 0 is missing"))?;
        let vals: Vec<Dim> = match self.consts.get(v) {
            Some(c) => c.dims.iter().map(|&d| Dim::Fixed(d as i64)).collect(),
            None => {
                let x = self.dynamic(ctx, 0)?;
                let s = self.shape(&x)?;
                let k = self.batch_factor(s[0]);
                let fixed = s[1..].iter().map(|&d| Dim::Fixed(d as i64));
                if self.lift {
                    // The IR's leading 1 is not an ONNX axis.
                    fixed.collect()
                } else {
                    std::iter::once(Dim::Batch(k)).chain(fixed).collect()
                }
            }
        };
        let r = vals.len() as i64;
        let clamp = |i: i64| (if i < 0 { i + r } else { i }).clamp(0, r) as usize;
        let start = clamp(a.int_or("start", 0)?);
        let end = clamp(a.int_or("end", r)?);
        let vals = vals[start..end.max(start)].to_vec();
        Ok(Out::Dims(DimsValue {
            shape: vec![vals.len()],
            vals,
        }))
    }

    /// Size: the element count, a multiple of N for a computed value.
    pub(super) fn size(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        ctx.attrs().only(&[])?;
        let v = ctx.input(0).ok_or_else(|| ctx.bad("input 0 is missing"))?;
        let val = match (self.consts.get(v), self.dims.get(v)) {
            (Some(c), _) => Dim::Fixed(c.dims.iter().product::<usize>() as i64),
            (None, Some(d)) => Dim::Fixed(d.vals.len() as i64),
            (None, None) => {
                let x = self.dynamic(ctx, 0)?;
                let s = self.shape(&x)?;
                let rest = s[1..].iter().product::<usize>() as i64;
                if self.lift {
                    Dim::Fixed(rest)
                } else {
                    Dim::Batch(self.batch_factor(s[0]) * rest)
                }
            }
        };
        Ok(Out::Dims(DimsValue {
            shape: vec![],
            vals: vec![val],
        }))
    }

    /// Gather on a shape value (constant indices on axis 0).
    pub(super) fn gather_dims(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let data = self.int_value(ctx, 0).expect("called on a shape value");
        if a.int_or("axis", 0)? != 0 || data.shape.len() != 1 {
            return Err(ctx.unsupported("axis", a.int_or("axis", 0)?));
        }
        let idx = self.constant(ctx, 1, "indices")?;
        let ints = idx
            .ints()
            .ok_or_else(|| ctx.unsupported("indices", "a float tensor"))?;
        if idx.dims.len() > 1 {
            return Err(ctx.unsupported("indices", format!("rank {}", idx.dims.len())));
        }
        let n = data.vals.len();
        let vals = ints
            .iter()
            .map(|&i| {
                norm_axis(i, n)
                    .map(|i| data.vals[i])
                    .ok_or_else(|| ctx.unsupported("indices", ints))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Out::Dims(DimsValue {
            shape: idx.dims.clone(),
            vals,
        }))
    }

    /// The axes of Unsqueeze/Squeeze: an attribute before opset 13, an input after.
    pub(super) fn squeeze_axes(&self, ctx: &Ctx) -> Result<Option<Vec<i64>>, ImportError> {
        let a = ctx.attrs();
        if self.opset < 13 {
            a.only(&["axes"])?;
            a.ints("axes")
        } else {
            a.only(&[])?;
            match self.opt_constant(ctx, 1, "axes")? {
                None => Ok(None),
                Some(c) => c
                    .ints()
                    .map(|v| Some(v.to_vec()))
                    .ok_or_else(|| ctx.unsupported("axes", "a float tensor")),
            }
        }
    }

    /// Unsqueeze or Squeeze of a shape value: only between a scalar and one entry.
    pub(super) fn squeeze_dims(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let data = self.int_value(ctx, 0).expect("called on a shape value");
        let axes = self.squeeze_axes(ctx)?.unwrap_or_else(|| vec![0]);
        let shape = match (ctx.op, data.shape.as_slice(), axes.as_slice()) {
            ("Unsqueeze", [], [0 | -1]) => vec![1],
            ("Squeeze", [1], [0 | -1]) => vec![],
            _ => {
                return Err(ctx.unsupported(
                    "axes",
                    format!("{axes:?} on a shape value of shape {:?}", data.shape),
                ))
            }
        };
        Ok(Out::Dims(DimsValue {
            shape,
            vals: data.vals,
        }))
    }

    /// Concat of shape values along their only axis.
    pub(super) fn concat_dims(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let mut vals = vec![];
        for i in 0..ctx.np.input.len() {
            let d = self
                .int_value(ctx, i)
                .filter(|d| d.shape.len() == 1)
                .ok_or_else(|| {
                    ctx.unsupported(
                        "inputs",
                        format!("input {i} of a shape Concat is not a 1-D integer value"),
                    )
                })?;
            vals.extend(d.vals);
        }
        Ok(Out::Dims(DimsValue {
            shape: vec![vals.len()],
            vals,
        }))
    }

    /// Slice of a 1-D shape value (constant starts/ends/axes/steps, axis 0).
    pub(super) fn slice_dims(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let data = self.int_value(ctx, 0).expect("called on a shape value");
        let ints = |i: usize, role: &str| -> Result<Option<Vec<i64>>, ImportError> {
            match self.opt_constant(ctx, i, role)? {
                None => Ok(None),
                Some(c) => c
                    .ints()
                    .map(|v| Some(v.to_vec()))
                    .ok_or_else(|| ctx.unsupported(role, "a float tensor")),
            }
        };
        let (starts, ends, axes, steps) = if self.opset < 10 {
            let a = ctx.attrs();
            (a.ints("starts")?, a.ints("ends")?, a.ints("axes")?, None)
        } else {
            (
                ints(1, "starts")?,
                ints(2, "ends")?,
                ints(3, "axes")?,
                ints(4, "steps")?,
            )
        };
        let one = |v: Option<Vec<i64>>, default: i64| match v.as_deref() {
            None => Some(default),
            Some([x]) => Some(*x),
            _ => None,
        };
        let n = data.vals.len() as i64;
        let (Some(start), Some(end), Some(axis), Some(step)) =
            (one(starts, 0), one(ends, n), one(axes, 0), one(steps, 1))
        else {
            return Err(ctx.unsupported("starts/ends/axes/steps", "more than one axis"));
        };
        if data.shape.len() != 1 || (axis != 0 && axis != -1) || step == 0 {
            return Err(ctx.unsupported("axes/steps", (axis, step)));
        }
        let clamp = |v: i64, lo: i64, hi: i64| (if v < 0 { v + n } else { v }).clamp(lo, hi);
        let mut vals = vec![];
        if step > 0 {
            let mut i = clamp(start, 0, n);
            while i < clamp(end, 0, n) {
                vals.push(data.vals[i as usize]);
                i += step;
            }
        } else {
            let mut i = clamp(start, -1, n - 1);
            while i > clamp(end, -1, n - 1) {
                vals.push(data.vals[i as usize]);
                i += step;
            }
        }
        Ok(Out::Dims(DimsValue {
            shape: vec![vals.len()],
            vals,
        }))
    }

    /// Integer arithmetic on shape values: Fixed op Fixed; `k N` times or divided by a
    /// known integer.
    pub(super) fn arith_dims(&mut self, ctx: &Ctx, kind: BinaryKind) -> Result<Out, ImportError> {
        let (Some(a), Some(b)) = (self.int_value(ctx, 0), self.int_value(ctx, 1)) else {
            return Err(ctx.unsupported(
                "inputs",
                format!("{} of a shape value and a non-integer value", ctx.op),
            ));
        };
        let n = a.vals.len().max(b.vals.len());
        let pick = |d: &DimsValue, i: usize| {
            if d.vals.len() == 1 {
                Some(d.vals[0])
            } else {
                d.vals.get(i).copied()
            }
        };
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            let (Some(x), Some(y)) = (pick(&a, i), pick(&b, i)) else {
                return Err(ctx.unsupported("inputs", "shape values of different lengths"));
            };
            let r = match (kind, x, y) {
                (_, Dim::Fixed(p), Dim::Fixed(q)) => int_op(kind, p, q).map(Dim::Fixed),
                (BinaryKind::Mul, Dim::Batch(k), Dim::Fixed(m))
                | (BinaryKind::Mul, Dim::Fixed(m), Dim::Batch(k)) => Some(Dim::Batch(k * m)),
                (BinaryKind::Div, Dim::Batch(k), Dim::Fixed(m)) if m != 0 && k % m == 0 => {
                    Some(Dim::Batch(k / m))
                }
                _ => None,
            };
            vals.push(r.ok_or_else(|| {
                ctx.unsupported("inputs", format!("{} of {x:?} and {y:?}", ctx.op))
            })?);
        }
        let shape = if a.shape.len() >= b.shape.len() {
            a.shape
        } else {
            b.shape
        };
        Ok(Out::Dims(DimsValue { shape, vals }))
    }

    /// ConstantOfShape of a known shape: a constant.
    pub(super) fn constant_of_shape(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["value"])?;
        let Some(shape) = self.int_value(ctx, 0) else {
            return Err(ctx.unsupported("input", "not a 1-D integer value"));
        };
        let dims: Option<Vec<usize>> = shape
            .vals
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => usize::try_from(*v).ok(),
                Dim::Batch(_) => None,
            })
            .collect();
        let dims = dims.ok_or_else(|| {
            ctx.unsupported(
                "input",
                format!("{:?} (depends on the batch size)", shape.vals),
            )
        })?;
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        if n.is_none_or(|n| n > crate::import::onnx::bounds::MAX_ELEMENTS) {
            return Err(ctx.bad(format!("shape {dims:?} is too large")));
        }
        let value = match a.get("value") {
            None => ConstData::F32(vec![0.0]),
            Some(at) => {
                let t = at.t.as_ref().ok_or_else(|| a.wrong_type(at, "TENSOR"))?;
                crate::import::onnx::tensors::Const::from_proto(t)?.data
            }
        };
        let n = n.unwrap_or(0) as usize;
        let data = match value {
            ConstData::F32(v) => ConstData::F32(vec![v.first().copied().unwrap_or(0.0); n]),
            ConstData::I64(v) => ConstData::I64(vec![v.first().copied().unwrap_or(0); n]),
        };
        Ok(Out::Const(crate::import::onnx::tensors::Const {
            dims,
            data,
        }))
    }

    /// Cast of a shape value to an integer type (a no-op here).
    pub(super) fn cast(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["to", "saturate"])?;
        let to = a
            .int("to")?
            .ok_or_else(|| ctx.unsupported("to", "<missing>"))?;
        // TensorProto.DataType: 1 float, 6 int32, 7 int64, 10 float16, 11 double.
        let float = matches!(to, 1 | 10 | 11 | 16);
        let int = matches!(to, 2..=7 | 12 | 13);
        if let Some(d) = self.int_value(ctx, 0) {
            if int {
                return Ok(Out::Dims(d));
            }
        }
        if let Some(c) = ctx.input(0).and_then(|v| self.consts.get(v)) {
            let mut c = c.clone();
            c.data = match (&c.data, float) {
                (ConstData::I64(v), true) => ConstData::F32(v.iter().map(|&x| x as f32).collect()),
                (ConstData::F32(v), false) if int => {
                    ConstData::I64(v.iter().map(|&x| x as i64).collect())
                }
                (data, _) => data.clone(),
            };
            return Ok(Out::Const(c));
        }
        if !float {
            return Err(ctx.unsupported("to", format!("{to} (cnnpack computes in float32)")));
        }
        // Float to float: cnnpack computes in f32 throughout.
        let x = self.dynamic(ctx, 0)?;
        Ok(Out::Node(crate::graph::Op::Identity, vec![x]))
    }
}

/// ONNX integer arithmetic (Div truncates toward zero); `None` on division by zero or
/// overflow.
pub(super) fn int_op(kind: BinaryKind, p: i64, q: i64) -> Option<i64> {
    match kind {
        BinaryKind::Add => p.checked_add(q),
        BinaryKind::Sub => p.checked_sub(q),
        BinaryKind::Mul => p.checked_mul(q),
        BinaryKind::Div => p.checked_div(q),
        BinaryKind::Max => Some(p.max(q)),
        BinaryKind::Min => Some(p.min(q)),
        BinaryKind::Pow => u32::try_from(q).ok().and_then(|q| p.checked_pow(q)),
        BinaryKind::PRelu => None,
    }
}

/// How a Reshape target made of shape entries resolves to IR dims (0 copies, -1 infers)
/// that keep the batch on axis 0; `batch_factor` is the input's axis-0 factor of N.
pub(super) fn reshape_target(vals: &[Dim], batch_factor: i64) -> Result<Vec<i64>, String> {
    let mut out: Vec<i64> = Vec::with_capacity(vals.len());
    for (i, v) in vals.iter().enumerate() {
        out.push(match (*v, i) {
            (Dim::Fixed(x), _) => x,
            (Dim::Batch(k), 0) if k == batch_factor => 0,
            (Dim::Batch(_), 0) => -1,
            (Dim::Batch(k), _) => {
                return Err(format!(
                    "axis {i} is {k} times the batch size (the batch must stay on axis 0)"
                ))
            }
        });
    }
    if matches!(vals.first(), Some(Dim::Batch(k)) if *k != batch_factor)
        && out.iter().skip(1).any(|&x| x == -1)
    {
        return Err("two axes to infer".into());
    }
    Ok(out)
}
