//! The op → encoder table: what each step's encoder gets (`StepIo`) and, per op, which
//! family's host code records its launches (`encode`, dispatching on the step's stored
//! `select::GpuChoice` for convs and fcs; `encode_stateless` for the ops without
//! parameters, shared with the GPU trainer's forward).

use super::context::{Bind, Dispatch, GpuContext};
use super::eltwise::Unary;
use super::select::{ConvChoice, FcChoice, GpuChoice};
use super::{
    conv, copy, eltwise, gemm, lrn, pool, pow2, pow2_fc, sketch, softmax, sparse, strided, GpuError,
};
use crate::graph::{Node, Op};
use crate::tuning::GpuOptions;
use crate::weights::Weights;

/// What a family's encoder gets for one step.
pub(crate) struct StepIo<'a> {
    pub(crate) ctx: &'a GpuContext,
    pub(crate) node: &'a Node,
    /// Step name (node name, `+relu` when fused): labels every wgpu object of the step.
    pub(crate) name: &'a str,
    /// Apply a fused ReLU.
    pub(crate) relu: bool,
    /// Input buffers and shapes, in node order.
    pub(crate) inputs: Vec<(Bind, &'a [usize])>,
    /// Output buffer and shape.
    pub(crate) output: (Bind, &'a [usize]),
    /// Largest weight binding in bytes.
    pub(crate) max_binding: u64,
    /// The model's kernel choices and knobs.
    pub(crate) options: &'a GpuOptions,
    /// The kernel `select::choose` picked for a conv or fc step (`None` for other ops).
    pub(crate) choice: Option<GpuChoice>,
}

/// A layer's bias, or zeros for `rows` outputs when it has none.
pub(crate) fn bias_or_zeros(bias: Option<&crate::graph::Tensor>, rows: usize) -> Vec<f32> {
    match bias {
        Some(b) => b.data.clone(),
        None => vec![0.0; rows],
    }
}

impl StepIo<'_> {
    /// `(batch, K)` of a Linear step whose `encoding` weights have rows of `row_len`
    /// values and this `shape`; an error when K does not match.
    pub(crate) fn linear_dims(
        &self,
        encoding: &str,
        row_len: usize,
        shape: &[usize],
    ) -> Result<(usize, usize), GpuError> {
        let x = self.inputs[0].1;
        let (batch, k) = (x[0], x[1]);
        if row_len != k {
            return Err(self.unsupported(format!(
                "{encoding} weights {shape:?} do not match input width {k}"
            )));
        }
        Ok((batch, k))
    }

    pub(crate) fn unsupported(&self, reason: impl Into<String>) -> GpuError {
        GpuError::Unsupported {
            node: self.node.name.clone(),
            op: self.node.op.kind(),
            reason: reason.into(),
        }
    }

    /// Workgroup grid for `elements` invocations in 256-wide workgroups.
    pub(crate) fn grid256(&self, elements: usize) -> Result<[u32; 3], GpuError> {
        self.ctx
            .grid(elements.div_ceil(256))
            .map_err(|e| self.unsupported(e))
    }
}

/// Records the launches of one step with the family's host code.
pub(crate) fn encode(io: &StepIo) -> Result<Vec<Dispatch>, GpuError> {
    match &io.node.op {
        Op::Conv(c) => match (io.choice, &c.weight) {
            // `conv::encode` decodes compressed weights to dense f32 once, at upload.
            (Some(GpuChoice::Conv(ConvChoice::Dense { kernel, .. })), _) => {
                conv::encode(io, c, kernel)
            }
            (Some(GpuChoice::Conv(ConvChoice::Sketch)), Weights::Sketch(w)) => {
                sketch::encode_conv(io, c, w)
            }
            (Some(GpuChoice::Conv(ConvChoice::Sparse)), Weights::Sparse(w)) => {
                sparse::encode_conv(io, c, w)
            }
            (Some(GpuChoice::Conv(ConvChoice::Pow2)), Weights::Pow2(w)) => {
                pow2::encode_conv(io, c, w)
            }
            (choice, _) => Err(io.unsupported(format!(
                "no conv kernel for {} weights as chosen ({choice:?})",
                c.weight.encoding()
            ))),
        },
        Op::Linear(l) => match (io.choice, &l.weight) {
            (Some(GpuChoice::Fc(FcChoice::SketchGemv)), Weights::Sketch(w)) => {
                sketch::encode_linear(io, l, w, false)
            }
            (Some(GpuChoice::Fc(FcChoice::SketchConv)), Weights::Sketch(w)) => {
                sketch::encode_linear(io, l, w, true)
            }
            (Some(GpuChoice::Fc(FcChoice::Sparse { lanes_log2 })), Weights::Sparse(w)) => {
                sparse::encode_linear(io, l, w, lanes_log2)
            }
            (Some(GpuChoice::Fc(FcChoice::Pow2Lut { rows, prefetch })), Weights::Pow2(w)) => {
                pow2_fc::encode_linear(io, l, w, rows, prefetch)
            }
            (Some(GpuChoice::Fc(FcChoice::Pow2Window)), Weights::Pow2(w)) => {
                pow2::encode_linear(io, l, w)
            }
            (
                Some(GpuChoice::Fc(
                    choice @ (FcChoice::Gemv | FcChoice::Gemv8 | FcChoice::Conv(_)),
                )),
                _,
            ) => gemm::encode(io, l, choice),
            (choice, _) => Err(io.unsupported(format!(
                "no fc kernel for {} weights as chosen ({choice:?})",
                l.weight.encoding()
            ))),
        },
        Op::BatchNorm {
            scale,
            bias,
            mean,
            var,
            epsilon,
        } => eltwise::encode_batchnorm(io, scale, bias, mean, var, *epsilon),
        Op::LayerNorm {
            axis,
            epsilon,
            scale,
            bias,
        } => strided::encode_layer_norm(io, *axis, *epsilon, scale, bias.as_ref()),
        // Aliases never become steps; planned graphs cannot reach this.
        op if op.is_alias() => Err(io.unsupported("alias op planned as a step")),
        _ => encode_stateless(io),
    }
}

/// Records the launches of an op without parameters or state (pools, activations,
/// Add, ConstBinary, LRN, Softmax, copies): one kernel each, the same for inference and
/// the GPU trainer's forward, which calls this for them.
pub(crate) fn encode_stateless(io: &StepIo) -> Result<Vec<Dispatch>, GpuError> {
    match &io.node.op {
        Op::MaxPool(p) => pool::encode(io, p, pool::Mode::Max),
        Op::AvgPool(p) => pool::encode(
            io,
            p,
            if p.count_include_pad {
                pool::Mode::AvgIncludePad
            } else {
                pool::Mode::AvgExcludePad
            },
        ),
        Op::GlobalAvgPool => pool::encode_global(io),
        Op::Relu => eltwise::encode_unary(io, Unary::Relu),
        Op::LeakyRelu { alpha } => eltwise::encode_unary(io, Unary::LeakyRelu { alpha: *alpha }),
        Op::Clip { min, max } => eltwise::encode_unary(
            io,
            Unary::Clip {
                min: *min,
                max: *max,
            },
        ),
        Op::Sigmoid => eltwise::encode_unary(io, Unary::Sigmoid),
        Op::Add => eltwise::encode_add(io),
        Op::ConstBinary {
            kind,
            constant,
            constant_first,
        } => eltwise::encode_const(io, *kind, constant, *constant_first),
        Op::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => lrn::encode(io, *size, *alpha, *beta, *bias),
        Op::Softmax => softmax::encode(io),
        Op::Concat { axis } => copy::encode_concat(io, *axis),
        Op::Pad { pads, value, mode } => copy::encode_pad(io, pads, *value, *mode),
        Op::Slice {
            starts,
            ends: _,
            steps,
        } => copy::encode_slice(io, starts, steps),
        Op::Unary(u) => eltwise::encode_unary_op(io, *u),
        Op::Binary(kind) => strided::encode_binary(io, *kind),
        Op::Reduce { kind, axes, .. } => strided::encode_reduce(io, *kind, axes),
        Op::Transpose { perm } => strided::encode_transpose(io, perm),
        Op::Expand { .. } => strided::encode_expand(io),
        Op::Conv(_)
        | Op::Linear(_)
        | Op::BatchNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Identity => Err(io.unsupported("not a stateless op")),
    }
}
