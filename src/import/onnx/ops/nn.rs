//! Neural-network layers: Conv, Gemm, MatMul, MaxPool, AveragePool,
//! GlobalAveragePool, BatchNormalization, LRN, Softmax, Dropout.

use super::one;
use crate::graph::{Conv2d, Linear, Op, Pool2d, ReduceKind, Tensor, UnaryOp};
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
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        if rank == 4 && !self.lift {
            return one(Op::GlobalAvgPool, x);
        }
        self.global_reduce(ctx, ReduceKind::Mean, x, rank)
    }

    /// GlobalMaxPool: a max over the spatial axes, kept as 1s.
    pub(super) fn global_max_pool(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        ctx.attrs().only(&[])?;
        let x = self.dynamic(ctx, 0)?;
        let rank = self.shape(&x)?.len();
        self.global_reduce(ctx, ReduceKind::Max, x, rank)
    }

    fn global_reduce(
        &mut self,
        ctx: &Ctx,
        kind: ReduceKind,
        x: String,
        rank: usize,
    ) -> Result<Out, ImportError> {
        let first = 2 + self.lift as usize;
        if rank <= first {
            return Err(ctx.bad(format!("input of rank {rank} has no spatial axes")));
        }
        one(
            Op::Reduce {
                kind,
                axes: (first..rank).collect(),
                keepdims: true,
            },
            x,
        )
    }

    /// LayerNormalization with constant scale and bias over the axes from `axis` on.
    pub(super) fn layer_norm(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["axis", "epsilon", "stash_type"])?;
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let axis = a.int_or("axis", -1)?;
        let ax = self
            .axis(axis, shape.len())
            .filter(|&ax| ax > 0)
            .ok_or_else(|| ctx.unsupported("axis", axis))?;
        let epsilon = a.float_or("epsilon", 1e-5)?;
        if !(epsilon >= 0.0 && epsilon.is_finite()) {
            return Err(ctx.unsupported("epsilon", epsilon));
        }
        let inner: usize = shape[ax..].iter().product();
        // Scale and bias broadcast to the normalised axes (usually they are that shape).
        let expand = |c: &Tensor, role: &str| -> Result<Tensor, ImportError> {
            let dims = &shape[ax..];
            match crate::graph::broadcast(dims, &c.shape) {
                Some(b) if b == dims => {
                    let t = crate::backend::cpu::reference::broadcast_to(c, dims);
                    Ok(Tensor {
                        shape: vec![inner],
                        data: t.data,
                    })
                }
                _ => Err(ctx.unsupported(role, format!("shape {:?} for axes {dims:?}", c.shape))),
            }
        };
        let scale = expand(&self.constant(ctx, 1, "Scale")?.to_tensor(), "Scale")?;
        let bias = match self.opt_constant(ctx, 2, "B")? {
            Some(b) => Some(expand(&b.to_tensor(), "B")?),
            None => None,
        };
        one(
            Op::LayerNorm {
                axis: ax,
                epsilon,
                scale,
                bias,
            },
            x,
        )
    }

    /// Gemm with a constant weight: a Linear, with alpha and beta folded in.
    pub(super) fn gemm(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["alpha", "beta", "transA", "transB", "broadcast"])?;
        // transA transposes the batch axis in; without one it is a Transpose first.
        let trans_a = a.int_or("transA", 0)?;
        if trans_a != 0 && !(self.lift && trans_a == 1) {
            return Err(ctx.unsupported("transA", trans_a));
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
        // Without a batch axis a matrix C is added after the Linear.
        let matrix_bias = match self.opt_constant(ctx, 2, "C")? {
            Some(c) if self.lift && c.dims.len() == 2 && c.dims[0] != 1 => {
                let mut t = c.to_tensor();
                t.data.iter_mut().for_each(|v| *v *= beta);
                Some(t)
            }
            _ => None,
        };
        let bias = match self.opt_constant(ctx, 2, "C")? {
            _ if matrix_bias.is_some() => None,
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
        let (k, o) = (weight.shape[1], weight.shape[0]);
        let linear = Op::Linear(Linear {
            weight: Weights::Dense(weight),
            bias,
        });
        if trans_a == 0 && matrix_bias.is_none() {
            return self.linear_rows(ctx, linear, x, k, o);
        }
        let output = ctx.np.output[0].clone();
        let v = |s: &str| format!("{output}/cnnpack_{s}");
        let mut nodes = vec![];
        let x_name = x.clone();
        let mut cur = x;
        if trans_a == 1 {
            nodes.push((
                Op::Transpose {
                    perm: vec![0, 2, 1],
                },
                vec![cur],
                v("a_t"),
            ));
            cur = v("a_t");
        }
        // A is [1, M, K] under the IR's leading 1: its rows through the Linear.
        let main = nodes.len() + 1;
        let back = vec![
            -1,
            self.shape(&x_name)?[1 + trans_a as usize] as i64,
            o as i64,
        ];
        nodes.push((
            Op::Reshape {
                target: vec![-1, k as i64],
            },
            vec![cur],
            v("rows"),
        ));
        nodes.push((linear, vec![v("rows")], v("mm2d")));
        nodes.push((Op::Reshape { target: back }, vec![v("mm2d")], v("mm")));
        cur = v("mm");
        if let Some(c) = matrix_bias {
            let op = Op::ConstBinary {
                kind: crate::graph::BinaryKind::Add,
                constant: c,
                constant_first: false,
            };
            nodes.push((op, vec![cur], v("bias")));
        }
        // The last node writes the ONNX output.
        if let Some(last) = nodes.last_mut() {
            last.2 = output;
        }
        Ok(Out::Nodes { nodes, main })
    }

    /// InstanceNormalization: a LayerNorm over the spatial axes, then the per-channel
    /// scale and bias.
    pub(super) fn instance_norm(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&["epsilon"])?;
        let epsilon = a.float_or("epsilon", 1e-5)?;
        if !(epsilon >= 0.0 && epsilon.is_finite()) {
            return Err(ctx.unsupported("epsilon", epsilon));
        }
        let x = self.dynamic(ctx, 0)?;
        let shape = self.shape(&x)?;
        let ch = 1 + self.lift as usize;
        if shape.len() < ch + 2 {
            return Err(ctx.bad(format!("input {shape:?} has no spatial axes")));
        }
        let c = shape[ch];
        let inner: usize = shape[ch + 1..].iter().product();
        let per_channel = |t: Tensor, role: &str| -> Result<Tensor, ImportError> {
            if t.len() != c {
                return Err(ctx.bad(format!("{role} has {} values for {c} channels", t.len())));
            }
            let mut dims = vec![c];
            dims.extend(std::iter::repeat_n(1, shape.len() - ch - 1));
            Ok(Tensor::new(dims, t.data).expect("sizes match"))
        };
        let scale = per_channel(self.constant(ctx, 1, "scale")?.to_tensor(), "scale")?;
        let bias = per_channel(self.constant(ctx, 2, "B")?.to_tensor(), "B")?;
        let output = ctx.np.output[0].clone();
        let (normed, scaled) = (
            format!("{output}/cnnpack_norm"),
            format!("{output}/cnnpack_scale"),
        );
        let norm = Op::LayerNorm {
            axis: ch + 1,
            epsilon,
            scale: Tensor::new(vec![inner], vec![1.0; inner]).expect("sizes match"),
            bias: None,
        };
        let affine = |kind, constant| Op::ConstBinary {
            kind,
            constant,
            constant_first: false,
        };
        Ok(Out::Nodes {
            nodes: vec![
                (norm, vec![x], normed.clone()),
                (
                    affine(crate::graph::BinaryKind::Mul, scale),
                    vec![normed],
                    scaled.clone(),
                ),
                (
                    affine(crate::graph::BinaryKind::Add, bias),
                    vec![scaled],
                    output,
                ),
            ],
            main: 0,
        })
    }

    /// MatMul by a constant 2-D weight: a Linear without bias.
    pub(super) fn matmul(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let a = ctx.attrs();
        a.only(&[])?;
        let x = self.dynamic(ctx, 0)?;
        let w = self.constant(ctx, 1, "B")?.clone();
        if w.dims.len() != 2 {
            return Err(ctx.unsupported("B", format!("weight of rank {}", w.dims.len())));
        }
        let weight = transpose2(&w.to_tensor());
        let linear = Op::Linear(Linear {
            weight: Weights::Dense(weight),
            bias: None,
        });
        self.linear_rows(ctx, linear, x, w.dims[0], w.dims[1])
    }

    /// A Linear `k -> o` on `x`: directly on `[N, k]`; on `[N, ..., k]` the rows of
    /// every leading axis through one Linear, between Reshapes (which move no data):
    /// `[-1, k]`, then `[-1, ..., o]`.
    fn linear_rows(
        &mut self,
        ctx: &Ctx,
        linear: Op,
        x: String,
        k: usize,
        o: usize,
    ) -> Result<Out, ImportError> {
        let shape = self.shape(&x)?;
        if shape.len() == 2 {
            return one(linear, x);
        }
        if shape.len() < 2 || shape[shape.len() - 1] != k {
            return Err(ctx.bad(format!("input {shape:?} does not fit a {k} -> {o} weight")));
        }
        let mut back: Vec<i64> = shape[..shape.len() - 1].iter().map(|&d| d as i64).collect();
        back[0] = -1;
        back.push(o as i64);
        let k = k as i64;
        let output = ctx.np.output[0].clone();
        let (rows, mm) = (
            format!("{output}/cnnpack_rows"),
            format!("{output}/cnnpack_matmul"),
        );
        Ok(Out::Nodes {
            nodes: vec![
                (
                    Op::Reshape {
                        target: vec![-1, k],
                    },
                    vec![x],
                    rows.clone(),
                ),
                (linear, vec![rows], mm.clone()),
                (Op::Reshape { target: back }, vec![mm], output),
            ],
            main: 1,
        })
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
        let shape = self.shape(&x)?;
        let rank = shape.len();
        let default = if self.opset < 13 { 1 } else { -1 };
        let axis = a.int_or("axis", default)?;
        let ax = self
            .axis(axis, rank)
            .filter(|&ax| ax > 0)
            .ok_or_else(|| ctx.unsupported("axis", format!("{axis} on a rank-{rank} input")))?;
        let log = ctx.op == "LogSoftmax";
        let output = ctx.np.output[0].clone();
        let v = |s: &str| format!("{output}/cnnpack_{s}");
        // The IR's Softmax is over the last axis; another axis is brought there and back:
        // by a Reshape before opset 13 (which coerces to 2-D at `axis`), by a Transpose
        // swapping it with the last axis after.
        let (before, after) = if ax == rank - 1 {
            (None, None)
        } else if self.opset < 13 {
            let inner: usize = shape[ax..].iter().product();
            let mut back: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
            back[0] = -1;
            (
                Some(Op::Reshape {
                    target: vec![-1, inner as i64],
                }),
                Some(Op::Reshape { target: back }),
            )
        } else {
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.swap(ax, rank - 1);
            (
                Some(Op::Transpose { perm: perm.clone() }),
                Some(Op::Transpose { perm }),
            )
        };
        let mut nodes = vec![];
        let mut cur = x;
        if let Some(op) = before {
            nodes.push((op, vec![cur], v("in")));
            cur = v("in");
        }
        let main = nodes.len();
        let steps: Vec<Op> = [
            Some(Op::Softmax),
            log.then_some(Op::Unary(UnaryOp::Log)),
            after,
        ]
        .into_iter()
        .flatten()
        .collect();
        let last = steps.len() - 1;
        for (i, op) in steps.into_iter().enumerate() {
            let out = if i == last {
                output.clone()
            } else {
                v(&format!("s{i}"))
            };
            nodes.push((op, vec![cur], out.clone()));
            cur = out;
        }
        Ok(Out::Nodes { nodes, main })
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

impl Importer {
    /// Whether a Conv, MaxPool or AveragePool node is 1-D: its computed input has rank 3.
    pub(super) fn is_1d(&self, ctx: &Ctx) -> bool {
        !self.lift
            && ctx
                .input(0)
                .and_then(|v| self.shape(v).ok())
                .is_some_and(|s| s.len() == 3)
    }

    /// A 1-D Conv or pool as the 2-D one over `[N, C, 1, L]`: the input reshaped (no
    /// data moves), the window attributes and a conv's weight given a leading 1, the
    /// output reshaped back to `[N, C', L']`.
    pub(super) fn lower_1d(&mut self, ctx: &Ctx) -> Result<Out, ImportError> {
        let x = self.dynamic(ctx, 0)?;
        let s = self.shape(&x)?;
        let output = ctx.np.output[0].clone();
        let (x2, y2) = (
            format!("{output}/cnnpack_2d_in"),
            format!("{output}/cnnpack_2d_out"),
        );
        let mut np = ctx.np.clone();
        for at in &mut np.attribute {
            let ints = &mut at.ints;
            match at.name.as_deref() {
                Some("kernel_shape" | "strides" | "dilations") if ints.len() == 1 => {
                    ints.insert(0, 1)
                }
                Some("pads") if ints.len() == 2 => *ints = vec![0, ints[0], 0, ints[1]],
                _ => {}
            }
        }
        np.input[0] = x2.clone();
        np.output[0] = y2.clone();
        if ctx.op == "Conv" {
            let w = self.constant(ctx, 1, "W")?.clone();
            if w.dims.len() != 3 {
                return Err(ctx.unsupported(
                    "W",
                    format!("weight of rank {} for a 1-D input", w.dims.len()),
                ));
            }
            let mut w2 = w;
            w2.dims.insert(2, 1);
            let name = format!("{output}/cnnpack_2d_weight");
            self.consts.insert(name.clone(), w2);
            np.input[1] = name;
        }
        // The reshaped input's shape, for the 2-D converter (auto_pad reads it).
        let s2 = vec![s[0], s[1], 1, s[2]];
        if let Some(shapes) = self.shapes.as_mut() {
            shapes.insert(x2.clone(), s2.clone());
        }
        let inner = Ctx {
            np: &np,
            op: ctx.op,
            name: ctx.name.clone(),
        };
        let converted = self.convert(&inner);
        if let Some(shapes) = self.shapes.as_mut() {
            shapes.remove(&x2);
        }
        let Out::Node(op, _) = converted? else {
            return Err(ctx.bad("a 1-D window op converted to more than one node"));
        };
        let out_hw = match &op {
            Op::Conv(c) => c.output_hw(1, s[2]).map(|[_, w]| (c.out_channels(), w)),
            Op::MaxPool(p) | Op::AvgPool(p) => p.output_hw(1, s[2]).map(|[_, w]| (s[1], w)),
            _ => None,
        };
        let (channels, len) =
            out_hw.ok_or_else(|| ctx.bad(format!("the window does not fit input {s:?}")))?;
        Ok(Out::Nodes {
            nodes: vec![
                (
                    Op::Reshape {
                        target: vec![0, s[1] as i64, 1, s[2] as i64],
                    },
                    vec![x],
                    x2.clone(),
                ),
                (op, vec![x2], y2.clone()),
                (
                    Op::Reshape {
                        target: vec![0, channels as i64, len as i64],
                    },
                    vec![y2],
                    output,
                ),
            ],
            main: 1,
        })
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
