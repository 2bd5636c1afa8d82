//! Linear layers (shaders/gemm.wgsl): GEMV for small batches, a conv GEMM (1x1) for
//! larger ones: `conv_gemm` (split-K: AlexNet's fc6 at batch 8 has 64 output tiles) where
//! the convs use it, else `conv_fwd_tiled`. Weights over the binding limit are split by
//! rows, one dispatch per chunk.

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel};
use super::conv::{self, Geometry};
use super::model::StepIo;
use super::GpuError;
use crate::graph::Linear;
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/gemm.wgsl");

/// Batches below this use GEMV (weights read once per item, bandwidth-bound either way);
/// from here on the 64x64 tiled GEMM reuses each weight over the batch.
const GEMV_BELOW: usize = 8;

fn gemv(ctx: &GpuContext) -> Arc<Kernel> {
    // Same bindings as dense conv: input, weights, bias, output, params.
    ctx.kernel("gemm", SOURCE, "linear_fwd_gemv", &conv::LAYOUT)
}

pub(crate) fn encode(io: &StepIo, l: &Linear) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let (batch, k) = (x[0], x[1]);
    let out = l.weight.rows();
    let weight = l.weight.to_dense();
    if batch >= GEMV_BELOW && conv::gemm_chosen(io) {
        let g = Geometry::linear(batch, k, out, out, 0, io.relu);
        return conv::encode_gemm(io, &g, &weight.data, l.bias.as_ref());
    }
    let chunks = conv::upload_rows(io, &weight.data, out, k, l.bias.as_ref())?;
    let max = io.ctx.limits().max_compute_workgroups_per_dimension as usize;
    chunks
        .iter()
        .map(|ch| {
            let binds = [
                io.inputs[0].0.clone(),
                Bind::f32s(&ch.weight, ch.rows * k),
                Bind::f32s(&ch.bias, ch.rows),
                io.output.0.clone(),
            ];
            if batch >= GEMV_BELOW {
                let g = Geometry::linear(batch, k, ch.rows, out, ch.r0, io.relu);
                return conv::dispatch_geometry(io, &g, &binds);
            }
            let [gx, gy, _] = io.ctx.grid(ch.rows).map_err(|e| io.unsupported(e))?;
            if batch > max {
                return Err(io.unsupported(format!("batch {batch} exceeds {max} workgroups")));
            }
            let params = [uw(ch.rows), uw(k), uw(out), uw(ch.r0), io.relu as u32];
            Ok(io.ctx.dispatch(
                &gemv(io.ctx),
                io.name,
                &binds,
                &params,
                [gx, gy, batch as u32],
            ))
        })
        .collect()
}
