//! Softmax over the last axis (shaders/softmax.wgsl).

use super::context::{uw, Dispatch, Slot};
use super::encode::StepIo;
use super::GpuError;

const SOURCE: &str = include_str!("../../../shaders/softmax.wgsl");

/// Bindings: input, output, params.
const LAYOUT: [Slot; 3] = [Slot::Read, Slot::Write, Slot::Uniform];

pub(crate) fn encode(io: &StepIo) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let len = *x.last().unwrap_or(&1);
    let rows = x.iter().product::<usize>() / len.max(1);
    let groups = io.ctx.grid(rows).map_err(|e| io.unsupported(e))?;
    Ok(vec![io.ctx.dispatch(
        &io.ctx.kernel("softmax", SOURCE, "softmax_fwd", &LAYOUT),
        io.name,
        &[io.inputs[0].0.clone(), io.output.0.clone()],
        &[uw(rows), uw(len)],
        groups,
    )])
}
