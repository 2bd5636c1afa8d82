//! Rank-generic ops (shaders/strided.wgsl): broadcasting binaries between computed
//! values (and with constants for the kinds `const_binary_fwd` lacks), Transpose,
//! reductions and LayerNorm. Shapes and strides travel in the params uniform, so one
//! pipeline per entry point serves every shape up to rank 8.

use super::context::{fw, uw, Bind, Dispatch, Slot};
use super::encode::StepIo;
use super::GpuError;
use crate::graph::{BinaryKind, ReduceKind, Tensor};
use crate::tensor::strides;

const SOURCE: &str = include_str!("../../../shaders/strided.wgsl");

/// Bindings: first operand, second operand, output, params.
const LAYOUT: [Slot; 4] = [Slot::Read, Slot::Read, Slot::Write, Slot::Uniform];

const MAX_RANK: usize = 8;

/// Params words: total, op, rank, count, then `[dims, sa, sb]` 8 words each, eps.
fn words(
    io: &StepIo,
    total: usize,
    op: u32,
    count: usize,
    axes: [&[usize]; 3],
    eps: f32,
) -> Result<Vec<u32>, GpuError> {
    let rank = axes[0].len();
    if rank > MAX_RANK {
        return Err(io.unsupported(format!("rank {rank} above {MAX_RANK}")));
    }
    let mut w = vec![uw(total), op, uw(rank), uw(count)];
    for v in axes {
        let start = w.len();
        w.extend(v.iter().map(|&d| uw(d)));
        w.resize(start + MAX_RANK, 0);
    }
    w.push(fw(eps));
    Ok(w)
}

fn launch(
    io: &StepIo,
    entry: &'static str,
    a: Bind,
    b: Bind,
    words: &[u32],
    invocations: usize,
) -> Result<Vec<Dispatch>, GpuError> {
    Ok(vec![io.ctx.dispatch(
        &io.ctx.kernel("strided", SOURCE, entry, &LAYOUT),
        io.name,
        &[a, b, io.output.0.clone()],
        words,
        io.grid256(invocations)?,
    )])
}

/// Strides of an operand of shape `operand` read at the indices of `out` (NumPy
/// broadcasting: right-aligned, 0 where the operand has 1).
fn broadcast_strides(operand: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(operand);
    let lead = out.len() - operand.len();
    (0..out.len())
        .map(|d| match d.checked_sub(lead) {
            Some(i) if operand[i] != 1 => own[i],
            _ => 0,
        })
        .collect()
}

/// `a op b` between the step's two inputs, broadcast to the output shape.
pub(crate) fn encode_binary(io: &StepIo, kind: BinaryKind) -> Result<Vec<Dispatch>, GpuError> {
    let out = io.output.1;
    let sa = broadcast_strides(io.inputs[0].1, out);
    let sb = broadcast_strides(io.inputs[1].1, out);
    let total: usize = out.iter().product();
    let w = words(io, total, kind.code(), 0, [out, &sa, &sb], 0.0)?;
    launch(
        io,
        "binary_fwd",
        io.inputs[0].0.clone(),
        io.inputs[1].0.clone(),
        &w,
        total,
    )
}

/// `x op c` (or `c op x`) with the constant uploaded as is and read through its
/// broadcast strides.
pub(crate) fn encode_binary_const(
    io: &StepIo,
    kind: BinaryKind,
    constant: &Tensor,
    constant_first: bool,
) -> Result<Vec<Dispatch>, GpuError> {
    let out = io.output.1;
    if constant.shape.len() > out.len() {
        return Err(io.unsupported(format!(
            "constant {:?} has a higher rank than {out:?}",
            constant.shape
        )));
    }
    let buf = io
        .ctx
        .upload(&format!("{} constant", io.name), &constant.data);
    let c = Bind::f32s(&buf, constant.len());
    let sx = broadcast_strides(io.inputs[0].1, out);
    let sc = broadcast_strides(&constant.shape, out);
    let x = io.inputs[0].0.clone();
    let total: usize = out.iter().product();
    let (a, b, sa, sb) = if constant_first {
        (c, x, sc, sx)
    } else {
        (x, c, sx, sc)
    };
    let w = words(io, total, kind.code(), 0, [out, &sa, &sb], 0.0)?;
    launch(io, "binary_fwd", a, b, &w, total)
}

/// Output axis `i` is input axis `perm[i]`.
pub(crate) fn encode_transpose(io: &StepIo, perm: &[usize]) -> Result<Vec<Dispatch>, GpuError> {
    let own = strides(io.inputs[0].1);
    let sa: Vec<usize> = perm.iter().map(|&p| own[p]).collect();
    let out = io.output.1;
    let total: usize = out.iter().product();
    let x = io.inputs[0].0.clone();
    let w = words(io, total, 0, 0, [out, &sa, &[]], 0.0)?;
    launch(io, "transpose_fwd", x.clone(), x, &w, total)
}

/// Broadcast to the output shape: the transpose kernel with 0 strides where the input
/// has 1s.
pub(crate) fn encode_expand(io: &StepIo) -> Result<Vec<Dispatch>, GpuError> {
    let out = io.output.1;
    let sa = broadcast_strides(io.inputs[0].1, out);
    let total: usize = out.iter().product();
    let x = io.inputs[0].0.clone();
    let w = words(io, total, 0, 0, [out, &sa, &[]], 0.0)?;
    launch(io, "transpose_fwd", x.clone(), x, &w, total)
}

/// A reduction over `axes`: each output walks its reduced sub-block through the input's
/// strides (the output's keepdims or not is only its shape).
pub(crate) fn encode_reduce(
    io: &StepIo,
    kind: ReduceKind,
    axes: &[usize],
) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let kept: Vec<usize> = (0..x.len())
        .map(|d| if axes.contains(&d) { 1 } else { x[d] })
        .collect();
    let reduced: Vec<usize> = (0..x.len())
        .map(|d| if axes.contains(&d) { x[d] } else { 1 })
        .collect();
    let total: usize = kept.iter().product();
    let count: usize = reduced.iter().product();
    let sa = strides(x);
    let w = words(io, total, kind.code(), count, [&kept, &sa, &reduced], 0.0)?;
    let b = io.inputs[0].0.clone();
    launch(io, "reduce_fwd", b.clone(), b, &w, total)
}

/// LayerNorm over the axes from `axis` on: one invocation per row.
pub(crate) fn encode_layer_norm(
    io: &StepIo,
    axis: usize,
    epsilon: f32,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Vec<Dispatch>, GpuError> {
    let shape = io.output.1;
    let inner: usize = shape[axis..].iter().product();
    let rows: usize = shape[..axis].iter().product();
    let mut params = scale.data.clone();
    if let Some(b) = bias {
        params.extend(&b.data);
    }
    let buf = io.ctx.upload(&format!("{} scale_bias", io.name), &params);
    let w = words(
        io,
        rows,
        bias.is_some() as u32,
        inner,
        [&[], &[], &[]],
        epsilon,
    )?;
    launch(
        io,
        "layer_norm_fwd",
        io.inputs[0].0.clone(),
        Bind::f32s(&buf, params.len()),
        &w,
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_follow_numpy() {
        assert_eq!(
            broadcast_strides(&[2, 3, 1, 1], &[2, 3, 4, 5]),
            vec![3, 1, 0, 0]
        );
        assert_eq!(broadcast_strides(&[5], &[2, 3, 4, 5]), vec![0, 0, 0, 1]);
        assert_eq!(
            broadcast_strides(&[1, 4, 1], &[2, 3, 4, 5]),
            vec![0, 0, 1, 0]
        );
    }
}
