//! Tensor plumbing: Concat, Flatten, Reshape, Pad, Slice, Transpose, Identity,
//! Constant (and the constant folding of Identity and Reshape).

use super::{norm_axis, one};
use crate::graph::Op;
use crate::import::onnx::bounds::MAX_ELEMENTS;
use crate::import::onnx::importer::{Ctx, Importer, Out};
use crate::import::onnx::tensors::{Const, ConstData};
use crate::import::ImportError;
use std::collections::HashSet;

/// Slice end stored for "the whole batch axis": the batch is unknown at import
/// time, and i32::MAX survives any u32/i32 conversion a backend makes.
const WHOLE_AXIS: usize = i32::MAX as usize;

impl Importer {
    /// Concat of computed values.
    pub(super) fn concat(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let axis = a
            .int("axis")?
            .ok_or_else(|| ctx.unsupported("axis", "<missing>"))?;
        let mut inputs = Vec::new();
        for i in 0..ctx.np.input.len() {
            inputs.push(self.dynamic(ctx, i)?);
        }
        if inputs.is_empty() {
            return Err(ctx.bad("no inputs"));
        }
        let rank = if axis >= 0 {
            usize::MAX >> 1
        } else {
            self.shape(&inputs[0])?.len()
        };
        let axis = norm_axis(axis, rank).ok_or_else(|| ctx.unsupported("axis", axis))?;
        Ok(Out::Node(Op::Concat { axis }, inputs))
    }

    /// Flatten at a non-batch axis.
    pub(super) fn flatten(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let x = self.dynamic(ctx, 0)?;
        let axis = a.int_or("axis", 1)?;
        // A non-negative axis needs no shape (the shape rules check it).
        let rank = if axis >= 0 {
            usize::MAX >> 1
        } else {
            self.shape(&x)?.len()
        };
        // Flatten allows axis in -rank..=rank.
        let ax = if axis < 0 { axis + rank as i64 } else { axis };
        // Axis 0 would fold the batch into the features.
        if !(1..=rank as i64).contains(&ax) {
            return Err(ctx.unsupported("axis", axis));
        }
        let axis = ax as usize;
        one(Op::Flatten { axis }, x)
    }

    /// Reshape: folded on a constant, else only a flatten to `[N, rest]`.
    pub(super) fn reshape(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["allowzero", "shape"])?;
        let target: Vec<i64> = if self.opset < 5 {
            a.ints("shape")?.unwrap_or_default()
        } else {
            let c = self.constant(ctx, 1, "shape")?;
            c.ints()
                .ok_or_else(|| ctx.unsupported("shape", "a float tensor"))?
                .to_vec()
        };
        let allowzero = a.int_or("allowzero", 0)? != 0;
        // A Reshape of a constant (e.g. a weight reshaped for MatMul) is folded.
        if let Some(c) = ctx.input(0).and_then(|v| self.consts.get(v)) {
            let dims = reshape_dims(&c.dims, &target, allowzero)
                .ok_or_else(|| ctx.unsupported("shape", &target))?;
            let mut c = c.clone();
            c.dims = dims;
            return Ok(Out::Const(c));
        }
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let dims = reshape_dims(&shape, &target, allowzero);
        let flat = vec![shape[0], shape[1..].iter().product()];
        // Only a flatten to [N, rest] is supported. A literal first dimension must
        // equal the batch fixed in the file (or 0 / -1, which follow it).
        let batch_ok = match target.first() {
            Some(&0) => !allowzero,
            Some(&-1) => true,
            Some(&n) => {
                self.graph.input.declared_batch == Some(n as usize) && shape[0] == n as usize
            }
            None => false,
        };
        if dims.as_deref() != Some(flat.as_slice()) || target.len() != 2 || !batch_ok {
            return Err(ctx.unsupported(
                "shape",
                format!("{target:?} on input {shape:?} (only a flatten to [N, rest] is supported)"),
            ));
        }
        Ok(Out::Node(Op::Flatten { axis: 1 }, vec![x]))
    }

    /// Pad in constant mode, not on the batch axis.
    pub(super) fn pad(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        let mode = a.string("mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(ctx.unsupported("mode", mode));
        }
        let (raw, value) = if self.opset < 11 {
            a.only(&["mode", "pads", "paddings", "value"])?;
            let p = a
                .ints("pads")?
                .or(a.ints("paddings")?)
                .ok_or_else(|| ctx.unsupported("pads", "<missing>"))?;
            (p, a.float_or("value", 0.0)?)
        } else {
            a.only(&["mode"])?;
            let p = self.constant(ctx, 1, "pads")?;
            let p = p
                .ints()
                .ok_or_else(|| ctx.unsupported("pads", "a float tensor"))?
                .to_vec();
            let value = match self.opt_constant(ctx, 2, "constant_value")? {
                None => 0.0,
                Some(c) => c.scalar().ok_or_else(|| {
                    ctx.unsupported("constant_value", format!("shape {:?}", c.dims))
                })?,
            };
            let p = match self.opt_constant(ctx, 3, "axes")? {
                None => p,
                Some(axes) => {
                    let axes = axes
                        .ints()
                        .ok_or_else(|| ctx.unsupported("axes", "a float tensor"))?;
                    if p.len() != 2 * axes.len() {
                        return Err(ctx.unsupported("pads", &p));
                    }
                    let mut full = vec![0i64; 2 * rank];
                    for (j, &ax) in axes.iter().enumerate() {
                        let ax =
                            norm_axis(ax, rank).ok_or_else(|| ctx.unsupported("axes", axes))?;
                        full[ax] = p[j];
                        full[ax + rank] = p[j + axes.len()];
                    }
                    full
                }
            };
            (p, value)
        };
        if raw.len() != 2 * rank || raw.iter().any(|&v| !(0..1 << 24).contains(&v)) {
            return Err(ctx.unsupported("pads", format!("{raw:?} for rank {rank}")));
        }
        if !value.is_finite() {
            return Err(ctx.unsupported("constant_value", value));
        }
        if raw[0] != 0 || raw[rank] != 0 {
            return Err(ctx.unsupported("pads", format!("{raw:?} pads the batch axis")));
        }
        Ok(Out::Node(
            Op::Pad {
                pads: raw.iter().map(|&v| v as usize).collect(),
                value,
            },
            vec![x],
        ))
    }

    /// Slice: any non-batch axis; the batch axis only whole.
    pub(super) fn slice(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let rank = shape.len();
        let ints = |c: &Const, role: &str| -> Result<Vec<i64>, ImportError> {
            c.ints()
                .map(|v| v.to_vec())
                .ok_or_else(|| ctx.unsupported(role, "a float tensor"))
        };
        let (starts, ends, axes, steps) = if self.opset < 10 {
            a.only(&["starts", "ends", "axes"])?;
            let starts = a
                .ints("starts")?
                .ok_or_else(|| ctx.unsupported("starts", "<missing>"))?;
            let ends = a
                .ints("ends")?
                .ok_or_else(|| ctx.unsupported("ends", "<missing>"))?;
            (starts, ends, a.ints("axes")?, None)
        } else {
            a.only(&[])?;
            let starts = ints(self.constant(ctx, 1, "starts")?, "starts")?;
            let ends = ints(self.constant(ctx, 2, "ends")?, "ends")?;
            let axes = match self.opt_constant(ctx, 3, "axes")? {
                Some(c) => Some(ints(c, "axes")?),
                None => None,
            };
            let steps = match self.opt_constant(ctx, 4, "steps")? {
                Some(c) => Some(ints(c, "steps")?),
                None => None,
            };
            (starts, ends, axes, steps)
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err(ctx.unsupported(
                "starts/ends/axes/steps",
                format!(
                    "lengths {} {} {} {}",
                    starts.len(),
                    ends.len(),
                    axes.len(),
                    steps.len()
                ),
            ));
        }
        let mut s = vec![0usize; rank];
        let mut e = shape.clone();
        e[0] = WHOLE_AXIS;
        let mut st = vec![1usize; rank];
        let mut seen = HashSet::new();
        for j in 0..starts.len() {
            let ax = norm_axis(axes[j], rank)
                .filter(|ax| seen.insert(*ax))
                .ok_or_else(|| ctx.unsupported("axes", &axes))?;
            if !(1..1 << 24).contains(&steps[j]) {
                return Err(ctx.unsupported("steps", &steps));
            }
            if ax == 0 {
                // The batch is not known at import time: only the whole axis.
                let whole = starts[j] == 0
                    && steps[j] == 1
                    && (ends[j] >= i32::MAX as i64
                        || self
                            .graph
                            .input
                            .declared_batch
                            .is_some_and(|b| ends[j] >= b as i64));
                if !whole {
                    return Err(ctx.unsupported(
                        "starts/ends",
                        format!(
                            "{}..{} step {} on the batch axis",
                            starts[j], ends[j], steps[j]
                        ),
                    ));
                }
                continue;
            }
            let d = shape[ax] as i64;
            let clamp = |v: i64| {
                if v < 0 {
                    (v.saturating_add(d)).max(0)
                } else {
                    v.min(d)
                }
            };
            let (b, en) = (clamp(starts[j]), clamp(ends[j]));
            if b >= en {
                return Err(ctx.unsupported(
                    "starts/ends",
                    format!(
                        "empty slice {}..{} of axis {ax} (size {d})",
                        starts[j], ends[j]
                    ),
                ));
            }
            s[ax] = b as usize;
            e[ax] = en as usize;
            st[ax] = steps[j] as usize;
        }
        Ok(Out::Node(
            Op::Slice {
                starts: s,
                ends: e,
                steps: st,
            },
            vec![x],
        ))
    }

    /// Transpose: only the identity permutation (an Identity node).
    pub(super) fn transpose(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["perm"])?;
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        let perm = a
            .ints("perm")?
            .unwrap_or_else(|| (0..rank as i64).rev().collect());
        if perm.iter().enumerate().any(|(i, &p)| p != i as i64) || perm.len() != rank {
            return Err(ctx.unsupported("perm", perm));
        }
        one(Op::Identity, x)
    }

    /// Identity: a constant stays a constant, a computed value an Identity node.
    pub(super) fn identity(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        if ctx.input(0).is_some_and(|v| self.consts.contains_key(v)) {
            // An alias of a constant stays a constant.
            a.only(&[])?;
            return Ok(Out::Const(self.constant(ctx, 0, "input")?.clone()));
        }
        a.only(&["consumed_inputs"])?;
        let x = self.dynamic(ctx, 0)?;
        one(Op::Identity, x)
    }

    /// A Constant node: a constant value, no node.
    pub(super) fn constant_node(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[
            "value",
            "value_float",
            "value_floats",
            "value_int",
            "value_ints",
        ])?;
        if let Some(at) = a.get("value") {
            let t = at.t.as_ref().ok_or_else(|| a.wrong_type(at, "TENSOR"))?;
            let mut t = t.clone();
            if t.name.as_deref().unwrap_or("").is_empty() {
                t.name = Some(ctx.name.clone());
            }
            Ok(Out::Const(Const::from_proto(&t)?))
        } else if a.get("value_float").is_some() {
            Ok(Out::Const(Const {
                dims: vec![],
                data: ConstData::F32(vec![a.float_or("value_float", 0.0)?]),
            }))
        } else if let Some(v) = a.floats("value_floats")? {
            Ok(Out::Const(Const {
                dims: vec![v.len()],
                data: ConstData::F32(v),
            }))
        } else if let Some(v) = a.int("value_int")? {
            Ok(Out::Const(Const {
                dims: vec![],
                data: ConstData::I64(vec![v]),
            }))
        } else if let Some(v) = a.ints("value_ints")? {
            Ok(Out::Const(Const {
                dims: vec![v.len()],
                data: ConstData::I64(v),
            }))
        } else {
            Err(ctx.bad("Constant without a value"))
        }
    }
}

/// The shape `target` (ONNX Reshape rules: 0 copies, -1 infers) gives `input`.
fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len().min(64));
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*input.get(i)?),
            t if t >= 0 && (t as u64) <= MAX_ELEMENTS => out.push(t as usize),
            _ => return None,
        }
    }
    let known = out.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    } else if known != total {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_rules() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false), Some(vec![2, 12]));
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[-1, 12], false),
            Some(vec![2, 12])
        );
        assert_eq!(reshape_dims(&[2, 3, 4], &[5, -1], false), None);
        assert_eq!(reshape_dims(&[2, 3, 4], &[-1, -1], false), None);
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, 0, 4], true), None);
    }
}
