//! Local response normalisation across channels (shaders/lrn.wgsl).

use super::context::{fw, uw, Dispatch, Slot};
use super::encode::StepIo;
use super::GpuError;

const SOURCE: &str = include_str!("../../../shaders/lrn.wgsl");

/// Bindings: input, output, params.
const LAYOUT: [Slot; 3] = [Slot::Read, Slot::Write, Slot::Uniform];

pub(crate) fn encode(
    io: &StepIo,
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let total: usize = x.iter().product();
    let params = [
        uw(total),
        uw(x[1]),
        uw(x[2] * x[3]),
        uw(size),
        fw(alpha),
        fw(beta),
        fw(bias),
    ];
    Ok(vec![io.ctx.dispatch(
        &io.ctx.kernel("lrn", SOURCE, "lrn_fwd", &LAYOUT),
        io.name,
        &[io.inputs[0].0.clone(), io.output.0.clone()],
        &params,
        io.grid256(total)?,
    )])
}
