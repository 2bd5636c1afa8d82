//! The backward pass over the Graph IR: reverse-mode differentiation node by node,
//! from dL/dlogits back to every parameter (and, on request, to the graph input).
//!
//! Gradients of values read by several nodes (ResNet shortcuts, Fire squeezes) are
//! summed. Parameter gradients are per node name: conv/fc weight and bias, BN scale
//! (as `weight`) and bias. ConstBinary constants, LRN and the like hold no
//! trainable parameters.

pub use crate::backend::training::{Grads, ParamGrad};

use super::conv::{conv2d_backward, linear_backward};
use super::forward::{Aux, BnMode, Cache};
use super::TrainError;
use crate::backend::cpu::reference::broadcast_to;
use crate::graph::{BinaryKind, Graph, Op, Pool2d, Tensor};
use crate::tensor::strides;
use std::collections::HashMap;

fn add_into(grads: &mut HashMap<String, Tensor>, name: &str, g: Tensor) {
    match grads.get_mut(name) {
        Some(acc) => {
            for (a, b) in acc.data.iter_mut().zip(&g.data) {
                *a += b;
            }
        }
        None => {
            grads.insert(name.to_string(), g);
        }
    }
}

fn like(x: &Tensor, data: Vec<f32>) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

fn zip_map(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    like(
        a,
        a.data.iter().zip(&b.data).map(|(x, y)| f(*x, *y)).collect(),
    )
}

/// Backpropagates `dlogits` (dL/d`cache.target.logits`) through the graph `cache` was
/// made from. Returns the parameter gradients and, when `need_input_grad`, dL/dinput.
pub fn backward(
    graph: &Graph,
    cache: &Cache,
    dlogits: Tensor,
    need_input_grad: bool,
) -> Result<(Grads, Option<Tensor>), TrainError> {
    let mut grads: HashMap<String, Tensor> = HashMap::new();
    grads.insert(cache.target.logits.clone(), dlogits);
    let mut params = Grads::new();
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if Some(i) == cache.target.skipped_softmax {
            continue;
        }
        let Some(dy) = grads.remove(&node.output) else {
            continue; // the value does not reach the loss
        };
        let value = |v: &str| {
            cache.values.get(v).ok_or_else(|| TrainError::Unsupported {
                node: node.name.clone(),
                reason: format!("value '{v}' is missing from the forward cache"),
            })
        };
        let x = value(&node.inputs[0])?;
        let y = value(&node.output)?;
        let need_dx = node.inputs[0] != graph.input.name || need_input_grad;
        let unsupported = |reason: &str| TrainError::Unsupported {
            node: node.name.clone(),
            reason: reason.to_string(),
        };
        let dx: Option<Tensor> = match &node.op {
            Op::Conv(c) => {
                let w = cache
                    .weight(graph, i)
                    .ok_or_else(|| unsupported("weights are not dense"))?;
                let g = conv2d_backward(x, w, c, &dy, need_dx);
                params.insert(
                    node.name.clone(),
                    ParamGrad {
                        weight: g.dw,
                        bias: g.db,
                    },
                );
                g.dx
            }
            Op::Linear(l) => {
                let w = cache
                    .weight(graph, i)
                    .ok_or_else(|| unsupported("weights are not dense"))?;
                let g = linear_backward(x, w, l.bias.is_some(), &dy, need_dx);
                params.insert(
                    node.name.clone(),
                    ParamGrad {
                        weight: g.dw,
                        bias: g.db,
                    },
                );
                g.dx
            }
            Op::Relu => Some(zip_map(&dy, x, |d, x| if x > 0.0 { d } else { 0.0 })),
            Op::LeakyRelu { alpha } => {
                Some(zip_map(&dy, x, |d, x| if x >= 0.0 { d } else { alpha * d }))
            }
            Op::Clip { min, max } => {
                Some(zip_map(
                    &dy,
                    x,
                    |d, x| {
                        if x > *min && x < *max {
                            d
                        } else {
                            0.0
                        }
                    },
                ))
            }
            Op::Sigmoid => Some(zip_map(&dy, y, |d, y| d * y * (1.0 - y))),
            Op::MaxPool(_) => {
                let Some(Aux::Argmax(arg)) = cache.aux.get(&i) else {
                    return Err(unsupported("max pool argmax missing from the cache"));
                };
                Some(max_pool_backward(x, y, arg, &dy))
            }
            Op::AvgPool(p) => Some(avg_pool_backward(x, p, &dy)),
            Op::GlobalAvgPool => {
                let hw = x.shape[2] * x.shape[3];
                let mut dx = vec![0.0f32; x.data.len()];
                for (plane, d) in dx.chunks_mut(hw).zip(&dy.data) {
                    plane.fill(d / hw as f32);
                }
                Some(like(x, dx))
            }
            Op::BatchNorm {
                scale,
                mean,
                var,
                epsilon,
                ..
            } => {
                let (dx, dscale, dbias) = match (cache.mode, cache.aux.get(&i)) {
                    (BnMode::Train, Some(Aux::BnBatch { mean, inv_std, .. })) => {
                        batch_norm_backward(x, &dy, &scale.data, mean, inv_std, true)
                    }
                    _ => {
                        let inv: Vec<f32> = var
                            .data
                            .iter()
                            .map(|v| (1.0 / (*v as f64 + *epsilon as f64).sqrt()) as f32)
                            .collect();
                        batch_norm_backward(x, &dy, &scale.data, &mean.data, &inv, false)
                    }
                };
                params.insert(
                    node.name.clone(),
                    ParamGrad {
                        weight: dscale,
                        bias: Some(dbias),
                    },
                );
                Some(dx)
            }
            Op::Add => {
                if node.inputs.len() < 2 {
                    return Err(unsupported("Add needs two inputs"));
                }
                if node.inputs[1] != graph.input.name || need_input_grad {
                    add_into(&mut grads, &node.inputs[1], dy.clone());
                }
                Some(dy)
            }
            Op::ConstBinary {
                kind,
                constant,
                constant_first,
            } => {
                let c = broadcast_to(constant, &x.shape);
                let data = dy
                    .data
                    .iter()
                    .zip(&x.data)
                    .zip(&c.data)
                    .map(|((&d, &x), &c)| match (kind, constant_first) {
                        (BinaryKind::Add, _) | (BinaryKind::Sub, false) => d,
                        (BinaryKind::Sub, true) => -d,
                        (BinaryKind::Mul, _) => d * c,
                        (BinaryKind::Div, false) => d / c,
                        (BinaryKind::Div, true) => -d * c / (x * x),
                        (BinaryKind::Pow, false) => d * c * x.powf(c - 1.0),
                        (BinaryKind::Pow, true) => d * c.powf(x) * c.ln(),
                        (BinaryKind::Max, _) => {
                            if x >= c {
                                d
                            } else {
                                0.0
                            }
                        }
                        (BinaryKind::Min, _) => {
                            if x <= c {
                                d
                            } else {
                                0.0
                            }
                        }
                        (BinaryKind::PRelu, _) => {
                            if x >= 0.0 {
                                d
                            } else {
                                d * c
                            }
                        }
                    })
                    .collect();
                Some(like(x, data))
            }
            Op::Concat { axis } => {
                let outer: usize = dy.shape[..*axis].iter().product();
                let block_out: usize = dy.shape[*axis..].iter().product();
                let mut offset = 0;
                for v in &node.inputs {
                    let t = value(v)?;
                    let block: usize = t.shape[*axis..].iter().product();
                    if *v != graph.input.name || need_input_grad {
                        let mut d = Vec::with_capacity(t.data.len());
                        for o in 0..outer {
                            d.extend_from_slice(&dy.data[o * block_out + offset..][..block]);
                        }
                        add_into(&mut grads, v, like(t, d));
                    }
                    offset += block;
                }
                None
            }
            Op::Flatten { .. } | Op::Identity | Op::Reshape { .. } => Some(like(x, dy.data)),
            Op::Unary(u) => Some(zip_map(&dy, x, |d, x| d * u.derivative(x))),
            Op::Binary(_)
            | Op::Reduce { .. }
            | Op::Transpose { .. }
            | Op::Expand { .. }
            | Op::LayerNorm { .. } => {
                return Err(unsupported(&format!(
                    "{} has no backward pass in the trainer yet",
                    node.op.kind()
                )))
            }
            Op::Lrn {
                size,
                alpha,
                beta,
                bias,
            } => Some(lrn_backward(x, &dy, *size, *alpha, *beta, *bias)),
            Op::Softmax => {
                // A Softmax inside the graph (the final one is skipped, see LossTarget).
                let last = *y.shape.last().unwrap_or(&1);
                let mut dx = dy.data.clone();
                for (drow, yrow) in dx.chunks_mut(last).zip(y.data.chunks(last)) {
                    let dot: f32 = drow.iter().zip(yrow).map(|(d, y)| d * y).sum();
                    for (d, y) in drow.iter_mut().zip(yrow) {
                        *d = y * (*d - dot);
                    }
                }
                Some(like(x, dx))
            }
            Op::Pad {
                pads,
                mode: crate::graph::PadMode::Constant,
                ..
            } => Some(pad_backward(x, &dy, pads)),
            Op::Pad { .. } => {
                return Err(unsupported("edge and reflect Pad have no backward pass"))
            }
            Op::Slice { starts, steps, .. } => Some(slice_backward(x, &dy, starts, steps)),
        };
        if let Some(dx) = dx {
            if need_dx {
                add_into(&mut grads, &node.inputs[0], dx);
            }
        }
    }
    let dinput = if need_input_grad {
        Some(
            grads
                .remove(&graph.input.name)
                .unwrap_or_else(|| Tensor::zeros(cache.values[&graph.input.name].shape.clone())),
        )
    } else {
        None
    };
    Ok((params, dinput))
}

/// Routes each output gradient to the input that won its window.
fn max_pool_backward(x: &Tensor, y: &Tensor, arg: &[u32], dy: &Tensor) -> Tensor {
    let hw = x.shape[2] * x.shape[3];
    let ohw = y.shape[2] * y.shape[3];
    let mut dx = vec![0.0f32; x.data.len()];
    for (plane, dxp) in dx.chunks_mut(hw).enumerate() {
        for j in 0..ohw {
            let a = arg[plane * ohw + j];
            if a != u32::MAX {
                dxp[a as usize] += dy.data[plane * ohw + j];
            }
        }
    }
    like(x, dx)
}

/// Spreads each output gradient evenly over its window's real inputs, with the same
/// divisor as `reference::avg_pool`.
fn avg_pool_backward(x: &Tensor, p: &Pool2d, dy: &Tensor) -> Tensor {
    let (h, w) = (x.shape[2], x.shape[3]);
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let mut dx = vec![0.0f32; x.data.len()];
    for (plane, dxp) in dx.chunks_mut(h * w).enumerate() {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * p.stride[0]) as isize - p.pads[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.pads[1] as isize;
                let y1 = (y0 + p.kernel[0] as isize).min((h + p.pads[2]) as isize);
                let x1 = (x0 + p.kernel[1] as isize).min((w + p.pads[3]) as isize);
                let padded = ((y1 - y0) * (x1 - x0)).max(0) as usize;
                let (ry0, ry1) = (y0.max(0), y1.min(h as isize));
                let (rx0, rx1) = (x0.max(0), x1.min(w as isize));
                let real = ((ry1 - ry0).max(0) * (rx1 - rx0).max(0)) as usize;
                let count = if p.count_include_pad { padded } else { real };
                let d = dy.data[(plane * oh + oy) * ow + ox] / count.max(1) as f32;
                for iy in ry0..ry1 {
                    for ix in rx0..rx1 {
                        dxp[iy as usize * w + ix as usize] += d;
                    }
                }
            }
        }
    }
    like(x, dx)
}

/// BatchNorm backward. With batch statistics (`batch_stats`), the mean and variance
/// depend on x: `dx = inv_std/M * (M*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))`;
/// with running statistics x only passes through the affine map.
/// Returns (dx, dscale, dbias); sums in f64.
fn batch_norm_backward(
    x: &Tensor,
    dy: &Tensor,
    scale: &[f32],
    mean: &[f32],
    inv_std: &[f32],
    batch_stats: bool,
) -> (Tensor, Tensor, Tensor) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let m = (n * inner) as f64;
    let mut dscale = vec![0.0f32; c];
    let mut dbias = vec![0.0f32; c];
    let mut dx = vec![0.0f32; x.data.len()];
    for ch in 0..c {
        let idx = || (0..n).flat_map(move |b| (b * c + ch) * inner..(b * c + ch + 1) * inner);
        let xhat = |i: usize| (x.data[i] as f64 - mean[ch] as f64) * inv_std[ch] as f64;
        let (mut sd, mut sdx) = (0.0f64, 0.0f64);
        for i in idx() {
            sd += dy.data[i] as f64;
            sdx += dy.data[i] as f64 * xhat(i);
        }
        dscale[ch] = sdx as f32;
        dbias[ch] = sd as f32;
        let g = scale[ch] as f64 * inv_std[ch] as f64;
        for i in idx() {
            let d = dy.data[i] as f64;
            dx[i] = if batch_stats {
                (g * (d - sd / m - xhat(i) * sdx / m)) as f32
            } else {
                (g * d) as f32
            };
        }
    }
    (
        like(x, dx),
        Tensor {
            shape: vec![c],
            data: dscale,
        },
        Tensor {
            shape: vec![c],
            data: dbias,
        },
    )
}

/// LRN backward. With `d_i = bias + alpha/size * sum_{j in W(i)} x_j^2` and
/// `y_i = x_i d_i^-beta`:
/// `dx_j = dy_j d_j^-beta - 2 alpha beta / size * x_j * sum_{i: j in W(i)} dy_i x_i d_i^(-beta-1)`.
fn lrn_backward(x: &Tensor, dy: &Tensor, size: usize, alpha: f32, beta: f32, bias: f32) -> Tensor {
    let (n, c) = (x.shape[0], x.shape[1]);
    let hw: usize = x.shape[2..].iter().product();
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let (a, b, k) = (alpha as f64 / size as f64, beta as f64, bias as f64);
    let mut dx = vec![0.0f32; x.data.len()];
    let mut d = vec![0.0f64; c];
    let mut t = vec![0.0f64; c];
    for img in 0..n {
        for p in 0..hw {
            let at = |ch: usize| (img * c + ch) * hw + p;
            for ch in 0..c {
                let lo = ch.saturating_sub(before);
                let hi = (ch + after).min(c - 1);
                let sq: f64 = (lo..=hi).map(|j| (x.data[at(j)] as f64).powi(2)).sum();
                d[ch] = k + a * sq;
                t[ch] = dy.data[at(ch)] as f64 * x.data[at(ch)] as f64 * d[ch].powf(-b - 1.0);
            }
            for j in 0..c {
                // Channels i whose window holds j: i - before <= j <= i + after.
                let lo = j.saturating_sub(after);
                let hi = (j + before).min(c - 1);
                let s: f64 = (lo..=hi).map(|i| t[i]).sum();
                let xj = x.data[at(j)] as f64;
                dx[at(j)] = (dy.data[at(j)] as f64 * d[j].powf(-b) - 2.0 * a * b * xj * s) as f32;
            }
        }
    }
    like(x, dx)
}

/// Calls `f(flat_index, multi_index)` for every element of `shape` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for i in 0..n {
        f(i, &idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Pad backward: the gradient of each input element is the output gradient at its
/// shifted position (the fill value is a constant).
fn pad_backward(x: &Tensor, dy: &Tensor, pads: &[usize]) -> Tensor {
    let ys = strides(&dy.shape);
    let mut dx = vec![0.0f32; x.data.len()];
    for_each_index(&x.shape, |i, idx| {
        let off: usize = idx
            .iter()
            .enumerate()
            .map(|(d, v)| (v + pads[d]) * ys[d])
            .sum();
        dx[i] = dy.data[off];
    });
    like(x, dx)
}

/// Slice backward: scatters the output gradient back to the elements taken.
fn slice_backward(x: &Tensor, dy: &Tensor, starts: &[usize], steps: &[i64]) -> Tensor {
    let xs = strides(&x.shape);
    let mut dx = vec![0.0f32; x.data.len()];
    for_each_index(&dy.shape, |i, idx| {
        let off: i64 = idx
            .iter()
            .enumerate()
            .map(|(d, &v)| (starts[d] as i64 + v as i64 * steps[d]) * xs[d] as i64)
            .sum();
        dx[off as usize] += dy.data[i];
    });
    like(x, dx)
}
