//! Neural-network layers: Conv, Gemm, MatMul, MaxPool, AveragePool,
//! GlobalAveragePool, BatchNormalization, LRN, Softmax, Dropout.

use super::{norm_axis, one};
use crate::graph::{Conv2d, Linear, Op, Pool2d, Tensor};
use crate::import::onnx::bounds::MAX_ELEMENTS;
use crate::import::onnx::importer::{Ctx, Importer, Out};
use crate::import::ImportError;
use crate::weights::Weights;

impl Importer {
    /// Conv (2-D) with a constant weight and an optional constant bias.
    pub(super) fn conv(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "pads",
            "strides",
        ])?;
        let x = self.dynamic(ctx, 0)?;
        let w = self.constant(ctx, 1, "W")?;
        if w.dims.len() != 4 {
            return Err(ctx.unsupported(
                "W",
                format!("weight of rank {} (only 2-D convolution)", w.dims.len()),
            ));
        }
        if w.dims.contains(&0) {
            return Err(ctx.unsupported("W", format!("weight of shape {:?}", w.dims)));
        }
        let weight = w.to_tensor();
        let bias = match self.opt_constant(ctx, 2, "B")? {
            None => None,
            Some(b) => {
                let mut t = b.to_tensor();
                t.shape = vec![t.data.len()];
                Some(t)
            }
        };
        let groups = a.int_or("group", 1)?;
        if groups < 1 || groups as u64 > MAX_ELEMENTS {
            return Err(ctx.unsupported("group", groups));
        }
        let kernel = [weight.shape[2], weight.shape[3]];
        if let Some(ks) = a.ints("kernel_shape")? {
            if ks.len() != 2 || ks[0] as usize != kernel[0] || ks[1] as usize != kernel[1] {
                return Err(ctx.unsupported("kernel_shape", ks));
            }
        }
        let stride = a.sizes("strides", 2, 1)?;
        let dilation = a.sizes("dilations", 2, 1)?;
        let span = [
            dilation[0] * (kernel[0].max(1) - 1) + 1,
            dilation[1] * (kernel[1].max(1) - 1) + 1,
        ];
        let pads = self.pads(ctx, &x, [stride[0], stride[1]], span)?;
        Ok(Out::Node(
            Op::Conv(Conv2d {
                kernel,
                stride: [stride[0], stride[1]],
                pads,
                dilation: [dilation[0], dilation[1]],
                groups: groups as usize,
                weight: Weights::Dense(weight),
                bias,
            }),
            vec![x],
        ))
    }

    /// Explicit or automatic padding (top, left, bottom, right) for a window
    /// spanning `span` input pixels.
    fn pads(
        &mut self,
        ctx: &Ctx,
        x: &str,
        stride: [usize; 2],
        span: [usize; 2],
    ) -> Result<[usize; 4], ImportError> {
        let a = ctx.attrs();
        let auto = a.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" => match a.ints("pads")? {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 && p.iter().all(|&v| (0..1 << 24).contains(&v)) => {
                    Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
                }
                Some(p) => Err(ctx.unsupported("pads", p)),
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let shape = self.shape(x)?;
                if shape.len() != 4 {
                    return Err(ctx.bad(format!("expects an NCHW input, got {shape:?}")));
                }
                let mut begin = [0; 2];
                let mut end = [0; 2];
                for i in 0..2 {
                    let inp = shape[2 + i];
                    let out = inp.div_ceil(stride[i]);
                    let total = ((out - 1) * stride[i] + span[i]).saturating_sub(inp);
                    let small = total / 2;
                    let (b, e) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    begin[i] = b;
                    end[i] = e;
                }
                Ok([begin[0], begin[1], end[0], end[1]])
            }
            other => Err(ctx.unsupported("auto_pad", other)),
        }
    }

    /// MaxPool and AveragePool (2-D, no dilation).
    pub(super) fn pool(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        let max = ctx.op == "MaxPool";
        if max {
            a.only(&[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ])?;
            let d = a.sizes("dilations", 2, 1)?;
            if d != [1, 1] {
                return Err(ctx.unsupported("dilations", d));
            }
        } else {
            a.only(&[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ])?;
            let d = a.sizes("dilations", 2, 1)?;
            if d != [1, 1] {
                return Err(ctx.unsupported("dilations", d));
            }
        }
        let x = self.dynamic(ctx, 0)?;
        let kernel = match a.ints("kernel_shape")? {
            Some(k) if k.len() == 2 && k.iter().all(|&v| (1..1 << 24).contains(&v)) => {
                [k[0] as usize, k[1] as usize]
            }
            k => return Err(ctx.unsupported("kernel_shape", k)),
        };
        let stride = a.sizes("strides", 2, 1)?;
        let stride = [stride[0], stride[1]];
        let ceil_mode = match a.int_or("ceil_mode", 0)? {
            0 => false,
            1 => true,
            v => return Err(ctx.unsupported("ceil_mode", v)),
        };
        let count_include_pad = match a.int_or("count_include_pad", 0)? {
            0 => false,
            1 => true,
            v => return Err(ctx.unsupported("count_include_pad", v)),
        };
        let pads = self.pads(ctx, &x, stride, kernel)?;
        let p = Pool2d {
            kernel,
            stride,
            pads,
            ceil_mode,
            count_include_pad,
        };
        Ok(Out::Node(
            if max { Op::MaxPool(p) } else { Op::AvgPool(p) },
            vec![x],
        ))
    }

    /// GlobalAveragePool.
    pub(super) fn global_average_pool(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[])?;
        one(Op::GlobalAvgPool, self.dynamic(ctx, 0)?)
    }

    /// Gemm with a constant weight: a Linear, with alpha and beta folded in.
    pub(super) fn gemm(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["alpha", "beta", "transA", "transB", "broadcast"])?;
        if a.int_or("transA", 0)? != 0 {
            return Err(ctx.unsupported("transA", a.int_or("transA", 0)?));
        }
        let trans_b = a.int_or("transB", 0)?;
        let alpha = a.float_or("alpha", 1.0)?;
        let beta = a.float_or("beta", 1.0)?;
        let x = self.dynamic(ctx, 0)?;
        let w = self.constant(ctx, 1, "B")?;
        if w.dims.len() != 2 {
            return Err(ctx.unsupported("B", format!("weight of rank {}", w.dims.len())));
        }
        let mut weight = match trans_b {
            0 => transpose2(&w.to_tensor()),
            1 => w.to_tensor(),
            v => return Err(ctx.unsupported("transB", v)),
        };
        if alpha != 1.0 {
            weight.data.iter_mut().for_each(|v| *v *= alpha);
        }
        let out = weight.shape[0];
        let bias = match self.opt_constant(ctx, 2, "C")? {
            None => None,
            Some(c) => {
                let mut t = c.to_tensor();
                let ok = match t.shape.as_slice() {
                    [n] | [1, n] => *n == out || *n == 1,
                    [] => true,
                    _ => false,
                };
                if !ok {
                    return Err(ctx.unsupported(
                        "C",
                        format!("bias of shape {:?} for {out} outputs", t.shape),
                    ));
                }
                if t.data.len() == 1 {
                    t.data = vec![t.data[0]; out];
                }
                t.shape = vec![out];
                if beta != 1.0 {
                    t.data.iter_mut().for_each(|v| *v *= beta);
                }
                Some(t)
            }
        };
        Ok(Out::Node(
            Op::Linear(Linear {
                weight: Weights::Dense(weight),
                bias,
            }),
            vec![x],
        ))
    }

    /// MatMul by a constant 2-D weight: a Linear without bias.
    pub(super) fn matmul(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[])?;
        let x = self.dynamic(ctx, 0)?;
        let w = self.constant(ctx, 1, "B")?;
        if w.dims.len() != 2 {
            return Err(ctx.unsupported("B", format!("weight of rank {}", w.dims.len())));
        }
        let weight = transpose2(&w.to_tensor());
        one(
            Op::Linear(Linear {
                weight: Weights::Dense(weight),
                bias: None,
            }),
            x,
        )
    }

    /// BatchNormalization in inference mode (folded later by the caller).
    pub(super) fn batch_norm(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[
            "epsilon",
            "momentum",
            "spatial",
            "training_mode",
            "is_test",
            "consumed_inputs",
        ])?;
        if a.int_or("spatial", 1)? != 1 {
            return Err(ctx.unsupported("spatial", a.int_or("spatial", 1)?));
        }
        if a.int_or("training_mode", 0)? != 0 {
            return Err(ctx.unsupported("training_mode", a.int_or("training_mode", 0)?));
        }
        let epsilon = a.float_or("epsilon", 1e-5)?;
        if !(epsilon >= 0.0 && epsilon.is_finite()) {
            return Err(ctx.unsupported("epsilon", epsilon));
        }
        let x = self.dynamic(ctx, 0)?;
        let scale = self.constant(ctx, 1, "scale")?.to_tensor();
        let bias = self.constant(ctx, 2, "B")?.to_tensor();
        let mean = self.constant(ctx, 3, "mean")?.to_tensor();
        let var = self.constant(ctx, 4, "var")?.to_tensor();
        let flat = |mut t: Tensor| {
            t.shape = vec![t.data.len()];
            t
        };
        one(
            Op::BatchNorm {
                scale: flat(scale),
                bias: flat(bias),
                mean: flat(mean),
                var: flat(var),
                epsilon,
            },
            x,
        )
    }

    /// LRN (across channels).
    pub(super) fn lrn(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["size", "alpha", "beta", "bias"])?;
        let size = a
            .int("size")?
            .ok_or_else(|| ctx.unsupported("size", "<missing>"))?;
        if !(1..=4096).contains(&size) {
            return Err(ctx.unsupported("size", size));
        }
        one(
            Op::Lrn {
                size: size as usize,
                alpha: a.float_or("alpha", 1e-4)?,
                beta: a.float_or("beta", 0.75)?,
                bias: a.float_or("bias", 1.0)?,
            },
            self.dynamic(ctx, 0)?,
        )
    }

    /// Softmax over the last axis only.
    pub(super) fn softmax(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis"])?;
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        let default = if self.opset < 13 { 1 } else { -1 };
        let axis = a.int_or("axis", default)?;
        let ax = norm_axis(axis, rank);
        // Before opset 13 Softmax coerces to 2-D at `axis`; that is the
        // last-axis softmax when axis is the last one.
        if ax != Some(rank.saturating_sub(1)) {
            return Err(ctx.unsupported(
                "axis",
                format!("{axis} on a rank-{rank} input (only the last axis is supported)"),
            ));
        }
        one(Op::Softmax, x)
    }

    /// Dropout at inference: an Identity.
    pub(super) fn dropout(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["ratio", "seed", "is_test", "consumed_inputs"])?;
        if let Some(t) = self.opt_constant(ctx, 2, "training_mode")? {
            if t.scalar().is_some_and(|v| v != 0.0) {
                return Err(ctx.unsupported("training_mode", "true"));
            }
        }
        let x = self.dynamic(ctx, 0)?;
        one(Op::Identity, x)
    }
}

/// `[r, c] -> [c, r]`.
fn transpose2(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            data[j * r + i] = t.data[i * c + j];
        }
    }
    Tensor {
        shape: vec![c, r],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_exact() {
        let t = Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).expect("6 values");
        let u = transpose2(&t);
        assert_eq!(u.shape, vec![3, 2]);
        assert_eq!(u.data, vec![1., 4., 2., 5., 3., 6.]);
    }
}
