//! Tensor plumbing: Concat, Flatten, Reshape, Pad, Slice, Transpose, Identity,
//! Constant (and the constant folding of Identity and Reshape).

use super::shape::reshape_target;
use super::{norm_axis, one};
use crate::graph::{Op, PadMode};
use crate::import::onnx::importer::{Ctx, Dim, Importer, Out};
use crate::import::onnx::tensors::{Const, ConstData};
use crate::import::ImportError;
use std::collections::HashSet;

/// Slice end stored for "the whole batch axis": the batch is unknown at import
/// time, and i32::MAX survives any u32/i32 conversion a backend makes.
const WHOLE_AXIS: usize = i32::MAX as usize;

impl Importer {
    /// Concat of computed values (of shape values: folded).
    pub(super) fn concat(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let shape_like = (0..ctx.np.input.len()).any(|i| self.is_dims(ctx, i))
            || (0..ctx.np.input.len()).all(|i| self.int_value(ctx, i).is_some());
        if shape_like {
            return self.concat_dims(ctx);
        }
        let consts = (0..ctx.np.input.len())
            .filter(|&i| ctx.input(i).is_some_and(|v| self.consts.contains_key(v)))
            .count();
        if self.lift && consts > 0 && consts < ctx.np.input.len() {
            return self.concat_constants(ctx);
        }
        let a = ctx.attrs();
        a.only(&["axis"])?;
        // The axis attribute is required from opset 4; before, it defaults to 1.
        let axis = match (a.int("axis")?, self.opset < 4) {
            (Some(axis), _) => axis,
            (None, true) => 1,
            (None, false) => return Err(ctx.unsupported("axis", "<missing>")),
        };
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
        let axis = self
            .axis(axis, rank)
            .ok_or_else(|| ctx.unsupported("axis", axis))?;
        Ok(Out::Node(Op::Concat { axis }, inputs))
    }

    /// Concat of one computed value and constants, without a batch axis: the value
    /// padded with zeros where the constants go, plus a constant holding them (zeros
    /// over the value): `x + 0` is `x`, `0 + c` is `c`.
    fn concat_constants(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let axis = a
            .int("axis")?
            .ok_or_else(|| ctx.unsupported("axis", "<missing>"))?;
        let n = ctx.np.input.len();
        let computed: Vec<usize> = (0..n)
            .filter(|&i| !ctx.input(i).is_some_and(|v| self.consts.contains_key(v)))
            .collect();
        let [xi] = computed[..] else {
            return Err(ctx.unsupported("inputs", "constants around more than one computed value"));
        };
        let x = self.dynamic(ctx, xi)?;
        let shape = self.shape(&x)?;
        let ax = self
            .axis(axis, shape.len())
            .filter(|&ax| ax > 0)
            .ok_or_else(|| ctx.unsupported("axis", axis))?;
        // Every part in IR axes (a constant gets the leading 1).
        let mut parts: Vec<Option<crate::graph::Tensor>> = vec![];
        for i in 0..n {
            if i == xi {
                parts.push(None);
                continue;
            }
            let mut t = self.constant(ctx, i, "input")?.to_tensor();
            t.shape.insert(0, 1);
            let fits = t.shape.len() == shape.len()
                && (0..shape.len()).all(|d| d == ax || t.shape[d] == shape[d]);
            if !fits {
                return Err(ctx.bad(format!(
                    "constant {:?} does not fit {shape:?} off axis {ax}",
                    &t.shape[1..]
                )));
            }
            parts.push(Some(t));
        }
        let size = |p: &Option<crate::graph::Tensor>| p.as_ref().map_or(shape[ax], |t| t.shape[ax]);
        let before: usize = parts[..xi].iter().map(size).sum();
        let after: usize = parts[xi + 1..].iter().map(size).sum();
        let zeros = crate::graph::Tensor::zeros(shape.clone());
        let refs: Vec<&crate::graph::Tensor> =
            parts.iter().map(|p| p.as_ref().unwrap_or(&zeros)).collect();
        let constant = crate::backend::cpu::reference::concat(&refs, ax);
        let rank = shape.len();
        let mut pads = vec![0; 2 * rank];
        pads[ax] = before;
        pads[rank + ax] = after;
        let output = ctx.np.output[0].clone();
        let padded = format!("{output}/cnnpack_pad");
        Ok(Out::Nodes {
            nodes: vec![
                (
                    Op::Pad {
                        pads,
                        value: 0.0,
                        mode: PadMode::Constant,
                    },
                    vec![x],
                    padded.clone(),
                ),
                (
                    Op::ConstBinary {
                        kind: crate::graph::BinaryKind::Add,
                        constant,
                        constant_first: false,
                    },
                    vec![padded],
                    output,
                ),
            ],
            main: 1,
        })
    }

    /// Flatten at a non-batch axis.
    pub(super) fn flatten(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let axis = a.int_or("axis", 1)?;
        // Of a constant: folded.
        if let Some(c) = ctx.input(0).and_then(|v| self.consts.get(v)) {
            let r = c.dims.len() as i64;
            let ax = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&ax) {
                return Err(ctx.unsupported("axis", axis));
            }
            let mut c = c.clone();
            let (head, tail) = c.dims.split_at(ax as usize);
            c.dims = vec![head.iter().product(), tail.iter().product()];
            return Ok(Out::Const(c));
        }
        let x = self.dynamic(ctx, 0)?;
        if self.lift {
            // [d0, ..] -> [prod(..axis), prod(axis..)] under the IR's leading 1.
            let shape = self.shape(&x)?;
            let r = self.onnx_rank(shape.len()) as i64;
            let ax = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&ax) {
                return Err(ctx.unsupported("axis", axis));
            }
            let split = ax as usize + 1;
            let target = vec![
                0,
                shape[1..split].iter().product::<usize>() as i64,
                shape[split..].iter().product::<usize>() as i64,
            ];
            return one(Op::Reshape { target }, x);
        }
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

    /// Reshape: folded on a constant; on a computed value any target that keeps the
    /// batch on axis 0 (its entries may come from a folded shape subgraph).
    pub(super) fn reshape(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["allowzero", "shape"])?;
        let target: Vec<Dim> = if self.opset < 5 {
            let t = a.ints("shape")?.unwrap_or_default();
            t.into_iter().map(Dim::Fixed).collect()
        } else {
            match self.int_value(ctx, 1) {
                Some(d) if d.shape.len() == 1 => d.vals,
                Some(d) => return Err(ctx.unsupported("shape", format!("rank {}", d.shape.len()))),
                None => {
                    self.constant(ctx, 1, "shape")?;
                    return Err(ctx.unsupported("shape", "a float tensor"));
                }
            }
        };
        let allowzero = a.int_or("allowzero", 0)? != 0;
        let fixed: Option<Vec<i64>> = target
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => Some(*v),
                Dim::Batch(_) => None,
            })
            .collect();
        // A Reshape of a constant (e.g. a weight reshaped for MatMul) is folded.
        if let Some(c) = ctx.input(0).and_then(|v| self.consts.get(v)) {
            let dims = fixed
                .as_ref()
                .and_then(|t| reshape_dims(&c.dims, t, allowzero))
                .ok_or_else(|| ctx.unsupported("shape", format!("{target:?}")))?;
            let mut c = c.clone();
            c.dims = dims;
            return Ok(Out::Const(c));
        }
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        // Without a batch axis the IR's leading 1 is copied in front (ONNX's 0s, which
        // copy the input's axis at their index, keep their meaning one axis up).
        let target: Vec<Dim> = if self.lift {
            std::iter::once(Dim::Fixed(0)).chain(target).collect()
        } else {
            target
        };
        if allowzero && target.contains(&Dim::Fixed(0)) && !self.lift {
            return Err(ctx.unsupported("allowzero", "1 with a 0 in the shape (an empty tensor)"));
        }
        let declared = self.graph.input.declared_batch;
        let factor = (shape[0] / declared.unwrap_or(1).max(1)) as i64;
        let mut t = reshape_target(&target, factor)
            .map_err(|r| ctx.unsupported("shape", format!("{target:?} on input {shape:?}: {r}")))?;
        // A literal first dimension must be the batch fixed in the file (it follows the
        // batch from then on); any other would move the batch off axis 0.
        if t[0] > 0 {
            if declared == Some(t[0] as usize) && shape[0] == t[0] as usize {
                t[0] = 0;
            } else {
                return Err(ctx.unsupported(
                    "shape",
                    format!("{target:?} on input {shape:?} fixes axis 0, which holds the batch"),
                ));
            }
        }
        let dims = crate::graph::reshape(&shape, &t).ok_or_else(|| {
            ctx.unsupported("shape", format!("{target:?} does not fit input {shape:?}"))
        })?;
        if dims.len() == 2 && dims[0] == shape[0] {
            return Ok(Out::Node(Op::Flatten { axis: 1 }, vec![x]));
        }
        Ok(Out::Node(Op::Reshape { target: t }, vec![x]))
    }

    /// Expand of a computed value to a constant (or batch-led shape value) shape of at
    /// most its rank whose axis 0 is 1 or the batch.
    pub(super) fn expand(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        ctx.attrs().only(&[])?;
        let mut x = self.dynamic(ctx, 0)?;
        let mut shape = self.shape(&x)?;
        let target = self
            .int_value(ctx, 1)
            .filter(|d| d.shape.len() == 1)
            .ok_or_else(|| ctx.unsupported("shape", "not a 1-D integer value"))?;
        let factor = (shape[0] / self.graph.input.declared_batch.unwrap_or(1).max(1)) as i64;
        // Without a batch axis the target may have more axes than the input: 1s go in
        // front of the ONNX axes first (a Reshape, which moves no data).
        let mut raised = None;
        if self.lift && target.vals.len() >= shape.len() {
            let mut to = vec![1usize; target.vals.len() + 1 - shape.len()];
            to.extend(&shape[1..]);
            to.insert(0, 1);
            let name = format!("{}/cnnpack_raise", ctx.np.output[0]);
            let mut t: Vec<i64> = to.iter().map(|&d| d as i64).collect();
            t[0] = 0;
            raised = Some((Op::Reshape { target: t }, vec![x], name.clone()));
            x = name;
            shape = to;
        }
        if target.vals.len() > shape.len() {
            return Err(ctx.unsupported(
                "shape",
                format!(
                    "{:?} has a higher rank than the input {shape:?}",
                    target.vals
                ),
            ));
        }
        let lead = shape.len() - target.vals.len();
        let mut dims = vec![1usize; shape.len()];
        for (i, v) in target.vals.iter().enumerate() {
            let axis = lead + i;
            dims[axis] = match (*v, axis) {
                (Dim::Batch(k), 0) if k == factor => 1,
                (Dim::Fixed(1), _) => 1,
                (Dim::Fixed(d), a) if a > 0 && d > 0 => d as usize,
                _ => {
                    return Err(ctx.unsupported(
                        "shape",
                        format!(
                            "{:?} on input {shape:?} (the batch axis cannot grow)",
                            target.vals
                        ),
                    ))
                }
            };
        }
        let op = if crate::graph::broadcast(&shape, &dims).as_deref() == Some(shape.as_slice()) {
            Op::Identity
        } else {
            Op::Expand { shape: dims }
        };
        match raised {
            None => one(op, x),
            Some(reshape) => Ok(Out::Nodes {
                nodes: vec![reshape, (op, vec![x], ctx.np.output[0].clone())],
                main: 1,
            }),
        }
    }

    /// Squeeze and Unsqueeze: a Reshape of a computed value (never the batch axis),
    /// folded on constants and shape values.
    pub(super) fn squeeze(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        if self.is_dims(ctx, 0)
            || ctx
                .input(0)
                .and_then(|v| self.consts.get(v))
                .is_some_and(|c| c.ints().is_some() && c.dims.len() <= 1)
        {
            if let Ok(out) = self.squeeze_dims(ctx) {
                return Ok(out);
            }
        }
        let axes = self.squeeze_axes(ctx)?;
        let (shape, x) = match ctx.input(0).and_then(|v| self.consts.get(v)) {
            Some(c) => (c.dims.clone(), None),
            None => {
                let x = self.dynamic(ctx, 0)?;
                (self.shape(&x)?, Some(x))
            }
        };
        let offset = (x.is_some() && self.lift) as usize;
        let out = squeezed(ctx.op, &shape, axes.as_deref(), x.is_some(), offset)
            .ok_or_else(|| ctx.unsupported("axes", format!("{axes:?} on shape {shape:?}")))?;
        match x {
            None => {
                let mut c = self.constant(ctx, 0, "data")?.clone();
                c.dims = out;
                Ok(Out::Const(c))
            }
            Some(x) => {
                let mut target: Vec<i64> = out.iter().map(|&d| d as i64).collect();
                target[0] = 0;
                Ok(Out::Node(Op::Reshape { target }, vec![x]))
            }
        }
    }

    /// Split along a non-batch axis into Slices, one per output.
    pub(super) fn split(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis", "split", "num_outputs"])?;
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let rank = shape.len();
        let axis = a.int_or("axis", 0)?;
        let ax = self
            .axis(axis, rank)
            .filter(|&ax| ax > 0)
            .ok_or_else(|| ctx.unsupported("axis", axis))?;
        let outputs: Vec<String> = ctx.np.output.clone();
        let n = outputs.len();
        let sizes: Vec<i64> = match (a.ints("split")?, self.opt_constant(ctx, 1, "split")?) {
            (Some(s), _) => s,
            (None, Some(c)) => c
                .ints()
                .ok_or_else(|| ctx.unsupported("split", "a float tensor"))?
                .to_vec(),
            (None, None) => {
                let d = shape[ax];
                let k = d.div_ceil(n.max(1));
                (0..n)
                    .map(|i| (k.min(d.saturating_sub(i * k))) as i64)
                    .collect()
            }
        };
        if sizes.len() != n
            || sizes.iter().any(|&s| s <= 0)
            || sizes.iter().sum::<i64>() != shape[ax] as i64
        {
            return Err(ctx.unsupported(
                "split",
                format!(
                    "{sizes:?} into {n} outputs of axis {ax} (size {})",
                    shape[ax]
                ),
            ));
        }
        let mut nodes = vec![];
        let mut offset = 0usize;
        for (size, out) in sizes.iter().zip(outputs) {
            let mut starts = vec![0usize; rank];
            let mut ends = shape.clone();
            ends[0] = WHOLE_AXIS;
            starts[ax] = offset;
            ends[ax] = offset + *size as usize;
            offset += *size as usize;
            let op = Op::Slice {
                starts,
                ends,
                steps: vec![1; rank],
            };
            nodes.push((op, vec![x.clone()], out));
        }
        Ok(Out::Nodes { nodes, main: 0 })
    }

    /// Gather with constant indices: folded on shape values; on a computed value along
    /// a non-batch axis, a Slice (indices in arithmetic progression) and, for a scalar
    /// index, a Reshape that drops the axis.
    pub(super) fn gather(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        if self.int_value(ctx, 0).is_some_and(|d| d.shape.len() == 1) {
            return self.gather_dims(ctx);
        }
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let rank = shape.len();
        let axis = a.int_or("axis", 0)?;
        let ax = self
            .axis(axis, rank)
            .filter(|&ax| ax > 0)
            .ok_or_else(|| ctx.unsupported("axis", axis))?;
        let idx = self.constant(ctx, 1, "indices")?;
        let ints = idx
            .ints()
            .ok_or_else(|| ctx.unsupported("indices", "a float tensor"))?;
        let d = shape[ax] as i64;
        let norm: Option<Vec<usize>> = ints
            .iter()
            .map(|&i| {
                let i = if i < 0 { i + d } else { i };
                (0..d).contains(&i).then_some(i as usize)
            })
            .collect();
        let norm = norm.ok_or_else(|| ctx.unsupported("indices", ints))?;
        let step = if norm.len() > 1 {
            norm[1] as i64 - norm[0] as i64
        } else {
            1
        };
        let progression = step >= 1 && norm.windows(2).all(|w| w[1] as i64 - w[0] as i64 == step);
        if norm.is_empty() {
            return Err(ctx.unsupported("indices", "an empty list"));
        }
        let idx_dims = idx.dims.clone();
        let slice_of = |first: usize, last: usize, step: usize| {
            let mut starts = vec![0usize; rank];
            let mut ends = shape.clone();
            ends[0] = WHOLE_AXIS;
            let mut steps = vec![1i64; rank];
            starts[ax] = first;
            ends[ax] = last + 1;
            steps[ax] = step as i64;
            Op::Slice {
                starts,
                ends,
                steps,
            }
        };
        let output = ctx.np.output[0].clone();
        // A scalar index, or indices of rank 2 and more: gathered as a flat list, then the
        // axis is replaced by the indices' dims (none for a scalar; a Reshape).
        let reshaped = idx_dims.len() != 1;
        let gathered = if reshaped {
            format!("{output}/cnnpack_flat")
        } else {
            output.clone()
        };
        let mut nodes = vec![];
        if !progression {
            // Any other list: one Slice per index, concatenated.
            let mut parts = vec![];
            for (j, &i) in norm.iter().enumerate() {
                let part = format!("{output}/cnnpack_index{j}");
                nodes.push((slice_of(i, i, 1), vec![x.clone()], part.clone()));
                parts.push(part);
            }
            nodes.push((Op::Concat { axis: ax }, parts, gathered.clone()));
        } else {
            let slice = slice_of(norm[0], norm[norm.len() - 1], step as usize);
            if idx_dims.len() == 1 {
                return Ok(Out::Node(slice, vec![x]));
            }
            nodes.push((slice, vec![x], gathered.clone()));
        }
        let main = nodes.len() - 1;
        if reshaped {
            let mut target: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            target[0] = 0;
            target.splice(ax..=ax, idx_dims.iter().map(|&d| d as i64));
            nodes.push((Op::Reshape { target }, vec![gathered], output));
        }
        Ok(Out::Nodes { nodes, main })
    }

    /// Pad in constant mode, not on the batch axis.
    pub(super) fn pad(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let x = self.dynamic(ctx, 0)?;
        let rank = self.onnx_rank(self.shape(&x)?.len());
        let mode = match a.string("mode")?.as_deref() {
            None | Some("constant") => PadMode::Constant,
            Some("edge") => PadMode::Edge,
            Some("reflect") => PadMode::Reflect,
            Some(other) => return Err(ctx.unsupported("mode", other)),
        };
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
        if !self.lift && (raw[0] != 0 || raw[rank] != 0) {
            return Err(ctx.unsupported("pads", format!("{raw:?} pads the batch axis")));
        }
        let mut pads: Vec<usize> = raw.iter().map(|&v| v as usize).collect();
        if self.lift {
            pads.insert(rank, 0);
            pads.insert(0, 0);
        }
        Ok(Out::Node(Op::Pad { pads, value, mode }, vec![x]))
    }

    /// Slice: any non-batch axis; the batch axis only whole (of a shape value: folded).
    pub(super) fn slice(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        if self.int_value(ctx, 0).is_some_and(|d| d.shape.len() == 1) {
            return self.slice_dims(ctx);
        }
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
        let mut st = vec![1i64; rank];
        let mut seen = HashSet::new();
        for j in 0..starts.len() {
            let ax = self
                .axis(axes[j], rank)
                .filter(|ax| seen.insert(*ax))
                .ok_or_else(|| ctx.unsupported("axes", &axes))?;
            if steps[j] == 0 || steps[j].unsigned_abs() >= 1 << 24 {
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
            // ONNX clamps start and end to [0, d] for a positive step, to [0, d - 1] and
            // [-1, d - 1] for a negative one (whose IR end is ONNX's end + 1).
            let wrap = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
            let (b, en, empty) = if steps[j] > 0 {
                let (b, en) = (wrap(starts[j]).clamp(0, d), wrap(ends[j]).clamp(0, d));
                (b, en, b >= en)
            } else {
                let (b, en) = (
                    wrap(starts[j]).clamp(0, d - 1),
                    wrap(ends[j]).clamp(-1, d - 1),
                );
                (b, en + 1, b <= en)
            };
            if empty {
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
            st[ax] = steps[j];
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

    /// Transpose of a computed value that keeps the batch on axis 0 (the identity
    /// permutation is an Identity node); folded on a float constant.
    pub(super) fn transpose(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["perm"])?;
        let konst = ctx.input(0).and_then(|v| self.consts.get(v)).cloned();
        let (rank, x) = match &konst {
            Some(c) => (c.dims.len(), None),
            None => {
                let x = self.dynamic(ctx, 0)?;
                (self.shape(&x)?.len(), Some(x))
            }
        };
        // Without a batch axis the permutation is of the ONNX axes, behind the IR's 1.
        let lift = x.is_some() && self.lift;
        let r = rank - lift as usize;
        let raw = a
            .ints("perm")?
            .unwrap_or_else(|| (0..r as i64).rev().collect());
        let mut seen = vec![false; r];
        let perm: Option<Vec<usize>> = raw
            .iter()
            .map(|&p| norm_axis(p, r).filter(|&p| !std::mem::replace(&mut seen[p], true)))
            .collect();
        let mut perm = perm
            .filter(|p| p.len() == r)
            .ok_or_else(|| ctx.unsupported("perm", &raw))?;
        if lift {
            perm = std::iter::once(0)
                .chain(perm.iter().map(|p| p + 1))
                .collect();
        }
        if let Some(c) = konst {
            let t = c.to_tensor();
            let t = crate::backend::cpu::reference::transpose(&t, &perm);
            return Ok(Out::Const(Const {
                dims: t.shape,
                data: match c.data {
                    ConstData::F32(_) => ConstData::F32(t.data),
                    ConstData::I64(_) => ConstData::I64(t.data.iter().map(|&v| v as i64).collect()),
                },
            }));
        }
        let x = x.expect("computed when not a constant");
        if perm.iter().enumerate().all(|(i, &p)| p == i) {
            return one(Op::Identity, x);
        }
        if perm[0] != 0 {
            return Err(ctx.unsupported(
                "perm",
                format!("{raw:?} moves axis 0, which holds the batch"),
            ));
        }
        one(Op::Transpose { perm }, x)
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

/// The shape Squeeze or Unsqueeze (`op`) with `axes` gives `shape`; `None` for axes out
/// of range, squeezing an axis that is not 1, or (for a computed value) axis 0.
/// `offset` moves non-negative axes up (1 for a model without a batch axis).
fn squeezed(
    op: &str,
    shape: &[usize],
    axes: Option<&[i64]>,
    computed: bool,
    offset: usize,
) -> Option<Vec<usize>> {
    let first = if computed { 1 } else { 0 };
    let norm_axis = |a: i64, rank: usize| {
        if a >= 0 {
            Some(a as usize + offset).filter(|&a| a < rank)
        } else {
            norm_axis(a, rank)
        }
    };
    if op == "Unsqueeze" {
        let axes = axes?;
        let rank = shape.len() + axes.len();
        let mut norm: Vec<usize> = axes
            .iter()
            .map(|&a| norm_axis(a, rank))
            .collect::<Option<_>>()?;
        norm.sort_unstable();
        if norm.windows(2).any(|w| w[0] == w[1]) || norm.first() < Some(&first) {
            return None;
        }
        let mut out = Vec::with_capacity(rank);
        let mut src = shape.iter();
        for i in 0..rank {
            out.push(if norm.contains(&i) { 1 } else { *src.next()? });
        }
        return Some(out);
    }
    let drop: Vec<usize> = match axes {
        Some(axes) => axes
            .iter()
            .map(|&a| norm_axis(a, shape.len()).filter(|&a| shape[a] == 1 && a >= first))
            .collect::<Option<_>>()?,
        None => (first..shape.len()).filter(|&a| shape[a] == 1).collect(),
    };
    Some(
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(_, &d)| d)
            .collect(),
    )
}

/// The shape `target` (ONNX Reshape rules: 0 copies, -1 infers) gives `input`.
fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    // With allowzero a 0 is a zero-size axis, which cnnpack's shapes never have.
    if allowzero && target.contains(&0) {
        return None;
    }
    crate::graph::reshape(input, target)
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
