//! The training backward of one node: dL/dx added into the input's gradient buffer
//! and the parameter gradients (shaders/train_*.wgsl through `kernels`).

use super::super::context::{Bind, Dispatch};
use super::super::eltwise::Unary;
use super::super::{pool, GpuError};
use super::buffers::Layer;
use super::kernels::{self, Launch, OpsParams};
use super::{DataGradKernel, GpuTrainer};
use crate::backend::training::BnMode;
use crate::graph::{Node, Op};

impl GpuTrainer {
    /// The backward launches of node `i` at `batch`: each adds into the gradient buffers
    /// `grad` binds (only where a gradient is wanted) and into the node's parameter
    /// gradients; `partial` is the split-K scratch of the weight gradients.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode_backward(
        &self,
        i: usize,
        node: &Node,
        shapes: &crate::graph::Shapes,
        batch: usize,
        act: &dyn Fn(&str) -> Result<Bind, GpuError>,
        grad: &dyn Fn(&str) -> Result<Bind, GpuError>,
        partial: &wgpu::Buffer,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let ctx = &*self.ctx;
        let d = &self.dummies;
        let name = node.name.as_str();
        let graph = &self.graph;
        let wants = |v: &str| v != graph.input.name || self.opts.input_grad;
        let need_dx = wants(&node.inputs[0]);
        let unsupported = |reason: &str| GpuError::Unsupported {
            node: name.into(),
            op: node.op.kind(),
            reason: reason.into(),
        };
        let xs = shapes.get(&node.inputs[0]).cloned().unwrap_or_default();
        let x_len: usize = xs.iter().product();
        let dy = grad(&node.output)?;
        let x = act(&node.inputs[0])?;
        let mut out = vec![];
        let elems = |total: usize| OpsParams {
            total,
            ..Default::default()
        };
        match (&node.op, self.layers.get(&i)) {
            (Op::Conv(_) | Op::Linear(_), Some(Layer::Dense { w, wf, bias, .. })) => {
                let s = self.conv_shape(node, shapes, batch).expect("conv/fc shape");
                out.extend(kernels::conv_weight_grad(
                    ctx,
                    name,
                    &s,
                    &dy,
                    &x,
                    &w.grad,
                    bias.as_ref().map(|b| &b.grad),
                    partial,
                )?);
                if need_dx {
                    let tiled = match self.opts.data_grad {
                        DataGradKernel::Auto => !ctx.is_software(),
                        k => k == DataGradKernel::Tiled,
                    };
                    out.push(kernels::conv_data_grad(
                        ctx,
                        name,
                        tiled,
                        &s,
                        &dy,
                        &Bind::f32s(wf, w.len),
                        &grad(&node.inputs[0])?,
                    )?);
                }
            }
            (Op::Relu | Op::LeakyRelu { .. } | Op::Clip { .. } | Op::Sigmoid, _) => {
                if need_dx {
                    let u = Unary::of(&node.op).expect("the arm matched an activation");
                    let [fa, fb] = u.params();
                    // Sigmoid's derivative is y(1 - y): it reads the output, the others x.
                    let src = match u {
                        Unary::Sigmoid => act(&node.output)?,
                        _ => x.clone(),
                    };
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "act_bwd",
                        &[&dy, &src],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            mode: u.code() as usize,
                            f: [fa, fb, 0.0, 0.0],
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::MaxPool(p) | Op::AvgPool(p), _) => {
                if need_dx {
                    let ys = &shapes[&node.output];
                    // train_ops.wgsl numbers the pooling modes as pool.wgsl does.
                    let (entry, mode) = match &node.op {
                        Op::MaxPool(_) => ("maxpool_bwd", pool::Mode::Max),
                        _ if p.count_include_pad => ("avgpool_bwd", pool::Mode::AvgIncludePad),
                        _ => ("avgpool_bwd", pool::Mode::AvgExcludePad),
                    };
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        entry,
                        &[&dy, &x],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            h: xs[2],
                            w: xs[3],
                            oh: ys[2],
                            ow: ys[3],
                            kh: p.kernel[0],
                            kw: p.kernel[1],
                            sh: p.stride[0],
                            sw: p.stride[1],
                            pads: p.pads,
                            mode: mode as usize,
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::GlobalAvgPool, _) => {
                if need_dx {
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "gap_bwd",
                        &[&dy],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            inner: xs[2] * xs[3],
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::BatchNorm { .. }, Some(Layer::Bn { sb, stats, c, .. })) => {
                let inner: usize = xs[2..].iter().product();
                let p = OpsParams {
                    c: *c,
                    inner,
                    n: batch,
                    mode: (self.opts.bn_mode == BnMode::Train) as usize,
                    ..elems(x_len)
                };
                let st = Bind::f32s(stats, 3 * c);
                let gsb = Bind::f32s(&sb.grad, 2 * c);
                out.push(kernels::ops(
                    ctx,
                    d,
                    name,
                    "bn_bwd_params",
                    &[&x, &dy, &st],
                    &gsb,
                    None,
                    &p,
                    Launch::Channels(*c),
                )?);
                if need_dx {
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "bn_bwd_data",
                        &[&x, &dy, &st, &Bind::f32s(&sb.data, 2 * c)],
                        &grad(&node.inputs[0])?,
                        Some(&gsb),
                        &p,
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (Op::Add, _) => {
                if node.inputs.len() < 2 {
                    return Err(unsupported("Add needs two inputs"));
                }
                for v in &node.inputs[..2] {
                    if wants(v) {
                        out.push(kernels::ops(
                            ctx,
                            d,
                            name,
                            "acc",
                            &[&dy],
                            &grad(v)?,
                            None,
                            &elems(x_len),
                            Launch::Elements(x_len),
                        )?);
                    }
                }
            }
            (Op::Concat { axis }, _) => {
                let ys = &shapes[&node.output];
                let block_out: usize = ys[*axis..].iter().product();
                let mut off = 0;
                for v in &node.inputs {
                    let vs = &shapes[v];
                    let block: usize = vs[*axis..].iter().product();
                    let len: usize = vs.iter().product();
                    if wants(v) {
                        out.push(kernels::ops(
                            ctx,
                            d,
                            name,
                            "concat_bwd",
                            &[&dy],
                            &grad(v)?,
                            None,
                            &OpsParams {
                                block,
                                block_out,
                                off,
                                ..elems(len)
                            },
                            Launch::Elements(len),
                        )?);
                    }
                    off += block;
                }
            }
            (
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    bias,
                },
                _,
            ) => {
                if need_dx {
                    out.push(kernels::ops(
                        ctx,
                        d,
                        name,
                        "lrn_bwd",
                        &[&dy, &x],
                        &grad(&node.inputs[0])?,
                        None,
                        &OpsParams {
                            c: xs[1],
                            inner: xs[2..].iter().product(),
                            size: *size,
                            f: [*alpha, *beta, *bias, 0.0],
                            ..elems(x_len)
                        },
                        Launch::Elements(x_len),
                    )?);
                }
            }
            (op, _) if op.is_alias() => {} // aliases share the gradient buffer
            (Op::ConstBinary { .. }, _) if !need_dx => {}
            _ => return Err(unsupported("the GPU trainer has no backward for this op")),
        }
        Ok(out)
    }
}
