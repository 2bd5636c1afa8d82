//! The training forward of one node: conv/fc and BatchNorm on the trainer's own
//! buffers (W⊙T, batch statistics kept for the backward), every other op through the
//! inference encoder (`encode::encode_stateless`).

use super::super::context::{Bind, Dispatch};
use super::super::conv::{dispatch_geometry, Geometry};
use super::super::encode::{encode_stateless, StepIo};
use super::super::model::{CompressedConv, GpuOptions};
use super::super::select::{self, DenseConv};
use super::super::GpuError;
use super::buffers::Layer;
use super::kernels::{self, ConvShape, Launch, OpsParams};
use super::GpuTrainer;
use crate::backend::training::BnMode;
use crate::graph::{Node, Op};

impl GpuTrainer {
    /// The conv geometry of a conv/fc node at `batch` (fc as a 1x1 conv on 1x1 images).
    pub(super) fn conv_shape(
        &self,
        node: &Node,
        shapes: &crate::graph::Shapes,
        batch: usize,
    ) -> Option<ConvShape> {
        let x = shapes.get(node.inputs.first()?)?;
        match &node.op {
            Op::Conv(c) => {
                let y = shapes.get(&node.output)?;
                Some(ConvShape {
                    batch,
                    cin: x[1],
                    h: x[2],
                    w: x[3],
                    cout: c.out_channels(),
                    oh: y[2],
                    ow: y[3],
                    kh: c.kernel[0],
                    kw: c.kernel[1],
                    sh: c.stride[0],
                    sw: c.stride[1],
                    ph: c.pads[0],
                    pw: c.pads[1],
                    dh: c.dilation[0],
                    dw: c.dilation[1],
                    groups: c.groups,
                })
            }
            Op::Linear(l) => Some(ConvShape {
                batch,
                cin: x[1..].iter().product(),
                h: 1,
                w: 1,
                cout: l.weight.rows(),
                oh: 1,
                ow: 1,
                kh: 1,
                kw: 1,
                sh: 1,
                sw: 1,
                dh: 1,
                dw: 1,
                groups: 1,
                ..Default::default()
            }),
            _ => None,
        }
    }

    /// The forward launches of node `i` at `batch`, reading and writing the activations
    /// `act` binds.
    pub(super) fn encode_forward(
        &self,
        i: usize,
        node: &Node,
        shapes: &crate::graph::Shapes,
        batch: usize,
        act: &dyn Fn(&str) -> Result<Bind, GpuError>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let ctx = &*self.ctx;
        let shape = |v: &str| shapes.get(v).map(|s| s.as_slice()).unwrap_or(&[]);
        // The trainer's forward runs compressed kernels as they are; its dense convs
        // and fcs run `select::TRAINER_CONV` below.
        let options = GpuOptions {
            compressed_conv: CompressedConv::Native,
            ..GpuOptions::default()
        };
        let io = StepIo {
            ctx,
            node,
            name: &node.name,
            relu: false,
            inputs: node
                .inputs
                .iter()
                .map(|v| Ok((act(v)?, shape(v))))
                .collect::<Result<_, GpuError>>()?,
            output: (act(&node.output)?, shape(&node.output)),
            max_binding: ctx.max_binding_bytes(),
            options: &options,
            // The trainer runs its own kernels for conv and fc layers.
            choice: None,
        };
        match (&node.op, self.layers.get(&i)) {
            // Not inference's encoder: the trainer binds its own weight buffer (W⊙T under
            // a forward mask, rewritten by every update) and runs `select::TRAINER_CONV`
            // (the tiled kernel, whose layout its backward kernels share).
            (
                Op::Conv(_) | Op::Linear(_),
                Some(Layer::Dense {
                    wf,
                    bias,
                    zero_bias,
                    rows,
                    w,
                    ..
                }),
            ) => {
                let s = self.conv_shape(node, shapes, batch).expect("conv/fc shape");
                let g = Geometry {
                    batch,
                    cin: s.cin,
                    h: s.h,
                    w: s.w,
                    oh: s.oh,
                    ow: s.ow,
                    kh: s.kh,
                    kw: s.kw,
                    sh: s.sh,
                    sw: s.sw,
                    ph: s.ph,
                    pw: s.pw,
                    dh: s.dh,
                    dw: s.dw,
                    cin_g: s.cin / s.groups,
                    cout_g: s.cout / s.groups,
                    k_len: s.k_len(),
                    c_total: s.cout,
                    c_off: 0,
                    relu: false,
                    groups: s.groups,
                };
                // `dispatch_geometry` runs the tiled kernel: changing the trainer's kernel
                // means new backward kernels for its layout too.
                const _: () = assert!(matches!(select::TRAINER_CONV, DenseConv::Tiled));
                let b = bias.as_ref().map_or(zero_bias, |b| &b.data);
                Ok(vec![dispatch_geometry(
                    &io,
                    &g,
                    &[
                        io.inputs[0].0.clone(),
                        Bind::f32s(wf, w.len),
                        Bind::f32s(b, *rows),
                        io.output.0.clone(),
                    ],
                )?])
            }
            // Not inference's encoder (a scale and shift folded on the host): in train
            // mode the statistics are the batch's, and either way they are kept in
            // `stats` for the backward.
            (
                Op::BatchNorm { epsilon, .. },
                Some(Layer::Bn {
                    sb,
                    running,
                    stats,
                    c,
                }),
            ) => {
                let x = shape(&node.inputs[0]);
                let inner: usize = x[2..].iter().product();
                let total = batch * c * inner;
                let p = OpsParams {
                    total,
                    c: *c,
                    inner,
                    n: batch,
                    f: [*epsilon, 0.0, 0.0, 0.0],
                    ..Default::default()
                };
                let st = Bind::f32s(stats, 3 * c);
                let stats_pass = if self.opts.bn_mode == BnMode::Train {
                    kernels::ops(
                        ctx,
                        &self.dummies,
                        &node.name,
                        "bn_stats",
                        &[&io.inputs[0].0],
                        &st,
                        None,
                        &p,
                        Launch::Channels(*c),
                    )?
                } else {
                    kernels::ops(
                        ctx,
                        &self.dummies,
                        &node.name,
                        "bn_frozen_stats",
                        &[&Bind::f32s(running, 2 * c)],
                        &st,
                        None,
                        &p,
                        Launch::Elements(*c),
                    )?
                };
                let fwd = kernels::ops(
                    ctx,
                    &self.dummies,
                    &node.name,
                    "bn_fwd",
                    &[&io.inputs[0].0, &st, &Bind::f32s(&sb.data, 2 * c)],
                    &io.output.0,
                    None,
                    &p,
                    Launch::Elements(total),
                )?;
                Ok(vec![stats_pass, fwd])
            }
            // No backward kernels exist for these; refusing them here keeps the error at
            // the node even when it does not reach the loss.
            (
                Op::Softmax
                | Op::Pad { .. }
                | Op::Slice { .. }
                | Op::Unary(_)
                | Op::Binary(_)
                | Op::Reduce { .. }
                | Op::Transpose { .. }
                | Op::Expand { .. }
                | Op::LayerNorm { .. },
                _,
            ) => Err(io.unsupported("the GPU trainer has no forward for this op")),
            // Ops without parameters or state run exactly as in inference; their
            // backward reads only their input and output activations, which stay in the
            // trainer's buffers.
            _ => encode_stateless(&io),
        }
    }
}
