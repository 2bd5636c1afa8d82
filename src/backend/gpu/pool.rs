//! Max, average and global average pooling (shaders/pool.wgsl).

use super::context::{uw, Dispatch, GpuContext, Kernel, Slot};
use super::encode::StepIo;
use super::GpuError;
use crate::graph::Pool2d;
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/pool.wgsl");

/// Bindings: input, output, params.
const LAYOUT: [Slot; 3] = [Slot::Read, Slot::Write, Slot::Uniform];

/// The `mode` word of pool.wgsl.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    Max = 0,
    AvgIncludePad = 1,
    AvgExcludePad = 2,
}

fn kernel(ctx: &GpuContext, entry: &'static str) -> Arc<Kernel> {
    ctx.kernel("pool", SOURCE, entry, &LAYOUT)
}

pub(crate) fn encode(io: &StepIo, p: &Pool2d, mode: Mode) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let y = io.output.1;
    let total: usize = y.iter().product();
    let params = [
        total,
        x[2],
        x[3],
        y[2],
        y[3],
        p.kernel[0],
        p.kernel[1],
        p.stride[0],
        p.stride[1],
        p.pads[0],
        p.pads[1],
        p.pads[2],
        p.pads[3],
        mode as usize,
    ]
    .map(uw);
    Ok(vec![io.ctx.dispatch(
        &kernel(io.ctx, "pool_fwd"),
        io.name,
        &[io.inputs[0].0.clone(), io.output.0.clone()],
        &params,
        io.grid256(total)?,
    )])
}

pub(crate) fn encode_global(io: &StepIo) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let planes = x[0] * x[1];
    // Only total, h and w are read by global_avg_pool_fwd.
    let params = [uw(planes), uw(x[2]), uw(x[3])];
    Ok(vec![io.ctx.dispatch(
        &kernel(io.ctx, "global_avg_pool_fwd"),
        io.name,
        &[io.inputs[0].0.clone(), io.output.0.clone()],
        &params,
        io.grid256(planes)?,
    )])
}
