//! Pad, Slice and Concat as strided copies (shaders/copy.wgsl), rank <= 8.

use super::context::{fw, uw, Bind, Dispatch, Slot};
use super::encode::StepIo;
use super::GpuError;
use crate::graph::PadMode;

const SOURCE: &str = include_str!("../../../shaders/copy.wgsl");

/// Bindings: input, output, params.
const LAYOUT: [Slot; 3] = [Slot::Read, Slot::Write, Slot::Uniform];

const MAX_RANK: usize = 8;

/// Params words: out_dims[8], in_dims[8], mul[8], add[8] (shapes right-aligned, padded
/// with leading 1s / mul 1 / add 0), total, fill.
fn params(
    io: &StepIo,
    out: &[usize],
    inp: &[usize],
    mul: &[i64],
    add: &[i64],
    total: usize,
    fill: f32,
) -> Result<Vec<u32>, GpuError> {
    if out.len() > MAX_RANK {
        return Err(io.unsupported(format!("rank {} above {MAX_RANK}", out.len())));
    }
    let pad = MAX_RANK - out.len();
    let mut w = Vec::with_capacity(4 * MAX_RANK + 2);
    for dims in [out, inp] {
        w.extend(std::iter::repeat_n(1u32, pad));
        w.extend(dims.iter().map(|&d| uw(d)));
    }
    for (vals, fill_word) in [(mul, 1i64), (add, 0i64)] {
        w.extend(std::iter::repeat_n(fill_word as i32 as u32, pad));
        w.extend(vals.iter().map(|&v| v as i32 as u32));
    }
    w.push(uw(total));
    w.push(fw(fill));
    Ok(w)
}

fn launch(
    io: &StepIo,
    entry: &'static str,
    input: Bind,
    words: &[u32],
    total: usize,
) -> Result<Dispatch, GpuError> {
    Ok(io.ctx.dispatch(
        &io.ctx.kernel("copy", SOURCE, entry, &LAYOUT),
        io.name,
        &[input, io.output.0.clone()],
        words,
        io.grid256(total)?,
    ))
}

/// Each input copied into its slice of the output along `axis`.
pub(crate) fn encode_concat(io: &StepIo, axis: usize) -> Result<Vec<Dispatch>, GpuError> {
    let out = io.output.1;
    let mut offset = 0i64;
    let mut ds = vec![];
    for (bind, shape) in &io.inputs {
        let total: usize = shape.iter().product();
        let mul = vec![1i64; out.len()];
        let mut add = vec![0i64; out.len()];
        add[axis] = offset;
        offset += shape[axis] as i64;
        let w = params(io, out, shape, &mul, &add, total, 0.0)?;
        ds.push(launch(io, "place_fwd", bind.clone(), &w, total)?);
    }
    Ok(ds)
}

/// Output coordinate c reads input coordinate c - begin (outside: `value`).
pub(crate) fn encode_pad(
    io: &StepIo,
    pads: &[usize],
    value: f32,
    mode: PadMode,
) -> Result<Vec<Dispatch>, GpuError> {
    let out = io.output.1;
    let inp = io.inputs[0].1;
    let mul = vec![1i64; out.len()];
    let add: Vec<i64> = pads[..out.len()].iter().map(|&p| -(p as i64)).collect();
    let total: usize = out.iter().product();
    let mut w = params(io, out, inp, &mul, &add, total, value)?;
    // The mode word (copy.wgsl: 0 constant, 1 edge, 2 reflect).
    w.push(match mode {
        PadMode::Constant => 0,
        PadMode::Edge => 1,
        PadMode::Reflect => 2,
    });
    Ok(vec![launch(
        io,
        "gather_fwd",
        io.inputs[0].0.clone(),
        &w,
        total,
    )?])
}

/// Output coordinate c reads input coordinate start + c * step (ends are already in the output shape).
pub(crate) fn encode_slice(
    io: &StepIo,
    starts: &[usize],
    steps: &[i64],
) -> Result<Vec<Dispatch>, GpuError> {
    let out = io.output.1;
    let inp = io.inputs[0].1;
    let mul: Vec<i64> = steps.to_vec();
    let add: Vec<i64> = starts.iter().map(|&s| s as i64).collect();
    let total: usize = out.iter().product();
    let w = params(io, out, inp, &mul, &add, total, 0.0)?;
    Ok(vec![launch(
        io,
        "gather_fwd",
        io.inputs[0].0.clone(),
        &w,
        total,
    )?])
}
