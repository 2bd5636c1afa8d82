//! Linear layers (shaders/gemm.wgsl): GEMV for small batches (`linear_fwd_gemv` at batch
//! 1, `linear_fwd_gemv8` with 8 items per workgroup up to `select::GEMV_BELOW`), a conv GEMM (1x1)
//! for larger ones: `conv_gemm` where the convs use it, else `conv_fwd_tiled`. Weights
//! over the binding limit are split by rows, one dispatch per chunk.
//!
//! Measured on an H200 (AlexNet, timestamp queries): fc6 (9216 -> 4096) at batch 8 took
//! 1.13 ms on `conv_gemm` (64 output tiles of 64 rows x 64 items, 8 of them used, split K:
//! a few workgroups per multiprocessor) in a run at idle clocks where every layer was ~3x
//! slow, so perhaps ~0.35 ms warm; the 8-item GEMV, which reads each weight once per 8
//! items, takes 0.147 ms warm (0.075 ms for one item on `linear_fwd_gemv`).

use super::context::{uw, Bind, Dispatch, GpuContext, Kernel};
use super::conv::{self, Geometry};
use super::encode::StepIo;
use super::select::{DenseConv, FcChoice};
use super::GpuError;
use crate::graph::Linear;
use std::sync::Arc;

const SOURCE: &str = include_str!("../../../shaders/gemm.wgsl");

fn gemv(ctx: &GpuContext, choice: FcChoice) -> Arc<Kernel> {
    // Same bindings as dense conv: input, weights, bias, output, params.
    let entry = if choice == FcChoice::Gemv {
        "linear_fwd_gemv"
    } else {
        "linear_fwd_gemv8"
    };
    ctx.kernel("gemm", SOURCE, entry, &conv::LAYOUT)
}

/// Records a dense Linear with the kernel `select::fc` chose (`Gemv`, `Gemv8` or a
/// conv kernel on a 1x1 conv).
pub(crate) fn encode(io: &StepIo, l: &Linear, choice: FcChoice) -> Result<Vec<Dispatch>, GpuError> {
    let x = io.inputs[0].1;
    let (batch, k) = (x[0], x[1]);
    let out = l.weight.rows();
    let weight = l.weight.to_dense();
    if let FcChoice::Conv(DenseConv::Gemm { wide, split_k }) = choice {
        let g = Geometry::linear(batch, k, out, out, 0, io.relu);
        return conv::encode_gemm(io, &g, &weight.data, l.bias.as_ref(), wide, split_k);
    }
    let as_conv = matches!(choice, FcChoice::Conv(_));
    let chunks = conv::upload_rows(io, &weight.data, out, k, l.bias.as_ref())?;
    chunks
        .iter()
        .map(|ch| {
            let binds = [
                io.inputs[0].0.clone(),
                Bind::f32s(&ch.weight, ch.rows * k),
                Bind::f32s(&ch.bias, ch.rows),
                io.output.0.clone(),
            ];
            if as_conv {
                let g = Geometry::linear(batch, k, ch.rows, out, ch.r0, io.relu);
                return conv::dispatch_geometry(io, &g, &binds);
            }
            let [gx, gy, _] = io.ctx.grid(ch.rows).map_err(|e| io.unsupported(e))?;
            let params = [
                uw(ch.rows),
                uw(k),
                uw(out),
                uw(ch.r0),
                io.relu as u32,
                uw(batch),
            ];
            // One workgroup per row and item (batch 1) or per row and 8 items.
            Ok(io.ctx.dispatch(
                &gemv(io.ctx, choice),
                io.name,
                &binds,
                &params,
                [gx, gy, batch.div_ceil(8) as u32],
            ))
        })
        .collect()
}
