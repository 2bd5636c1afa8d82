//! The training forward pass: runs the graph with the fast CPU kernels and keeps
//! what the backward pass needs (every value, max-pool argmax, BN batch statistics,
//! the masked weights a forward mask made).

pub use crate::backend::training::{loss_target, BnMode, LossTarget};

use super::TrainError;
use crate::backend::cpu::{check_input, fast};
use crate::graph::{Conv2d, Graph, Linear, Op, Pool2d, Tensor};
use crate::weights::Weights;
use rayon::prelude::*;
use std::collections::HashMap;

/// What a node's backward needs beyond its input and output values.
#[derive(Clone, Debug)]
pub(crate) enum Aux {
    /// Max pool: for each output, the index of the winning input inside its plane
    /// (`u32::MAX` for a window with no real input).
    Argmax(Vec<u32>),
    /// BatchNorm in train mode: per-channel batch mean, biased variance, 1/sqrt(var+eps),
    /// and the number of elements per channel.
    BnBatch {
        mean: Vec<f32>,
        var: Vec<f32>,
        inv_std: Vec<f32>,
        count: usize,
    },
    /// Conv/fc under a forward mask: the weight W⊙T the forward used.
    MaskedWeight(Tensor),
}

/// Values and auxiliary data of one training forward.
#[derive(Debug)]
pub struct Cache {
    /// Every value of the graph by name (the graph input included), except a
    /// skipped final Softmax's output.
    pub values: HashMap<String, Tensor>,
    /// The loss target this forward ran for.
    pub target: LossTarget,
    /// BN mode the forward ran in.
    pub mode: BnMode,
    pub(crate) aux: HashMap<usize, Aux>,
}

impl Cache {
    /// The logits value (what the loss reads).
    pub fn logits(&self) -> &Tensor {
        &self.values[&self.target.logits]
    }

    /// The dense weight node `i` used in this forward: W⊙T under a forward mask, else W.
    pub(crate) fn weight<'a>(&'a self, graph: &'a Graph, i: usize) -> Option<&'a Tensor> {
        if let Some(Aux::MaskedWeight(t)) = self.aux.get(&i) {
            return Some(t);
        }
        match graph.nodes[i].op.weights()? {
            Weights::Dense(t) => Some(t),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// `w ⊙ mask` as a dense tensor.
fn masked(w: &Tensor, mask: &[bool]) -> Tensor {
    Tensor {
        shape: w.shape.clone(),
        data: w
            .data
            .iter()
            .zip(mask)
            .map(|(v, &m)| if m { *v } else { 0.0 })
            .collect(),
    }
}

/// Runs `graph` on `input` for training. `forward_masks` (node name -> one bool per
/// weight entry) replaces W by W⊙T in the listed conv/fc layers. A final Softmax is
/// skipped (see `LossTarget`). Every value is kept for `backward`.
pub fn forward(
    graph: &Graph,
    input: &Tensor,
    mode: BnMode,
    forward_masks: &HashMap<String, Vec<bool>>,
) -> Result<Cache, TrainError> {
    let batch = check_input(graph, input)?;
    graph.infer_shapes(batch)?;
    let target = loss_target(graph)?;
    let mut values: HashMap<String, Tensor> = HashMap::new();
    let mut aux = HashMap::new();
    values.insert(graph.input.name.clone(), input.clone());
    for (i, node) in graph.nodes.iter().enumerate() {
        if Some(i) == target.skipped_softmax {
            continue;
        }
        let ins: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|v| {
                values.get(v).ok_or_else(|| TrainError::Unsupported {
                    node: node.name.clone(),
                    reason: format!("reads '{v}', which the training forward did not produce"),
                })
            })
            .collect::<Result<_, _>>()?;
        let x = ins[0];
        let mask = forward_masks.get(&node.name);
        let out = match (&node.op, mask) {
            (Op::Conv(c), Some(m)) => {
                let w = masked(&c.weight.to_dense(), m);
                let conv = Conv2d {
                    weight: Weights::Dense(w.clone()),
                    ..c.clone()
                };
                aux.insert(i, Aux::MaskedWeight(w));
                fast::conv2d(x, &conv)
            }
            (Op::Linear(l), Some(m)) => {
                let w = masked(&l.weight.to_dense(), m);
                let fc = Linear {
                    weight: Weights::Dense(w.clone()),
                    bias: l.bias.clone(),
                };
                aux.insert(i, Aux::MaskedWeight(w));
                fast::linear(x, &fc)
            }
            (Op::MaxPool(p), _) => {
                let (y, arg) = max_pool_argmax(x, p);
                aux.insert(i, Aux::Argmax(arg));
                y
            }
            (
                Op::BatchNorm {
                    scale,
                    bias,
                    epsilon,
                    ..
                },
                _,
            ) if mode == BnMode::Train => {
                let (y, a) = batch_norm_train(x, scale, bias, *epsilon);
                aux.insert(i, a);
                y
            }
            (_, Some(_)) => {
                return Err(TrainError::Mask {
                    layer: node.name.clone(),
                    reason: format!(
                        "a forward mask needs a Conv or Linear layer, not {}",
                        node.op.kind()
                    ),
                })
            }
            _ => fast::run_node(node, &ins)?,
        };
        values.insert(node.output.clone(), out);
    }
    Ok(Cache {
        values,
        target,
        mode,
        aux,
    })
}

/// Max pooling that also records, per output, the index of the winner in its plane.
/// Padded positions never win (as `reference::max_pool`); ties go to the first.
fn max_pool_argmax(x: &Tensor, p: &Pool2d) -> (Tensor, Vec<u32>) {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let [oh, ow] = p
        .output_hw(h, w)
        .expect("shape inference checked the window fits");
    let mut y = vec![0.0f32; n * c * oh * ow];
    let mut arg = vec![u32::MAX; n * c * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(plane, (yp, ap))| {
            let src = &x.data[plane * h * w..(plane + 1) * h * w];
            for oy in 0..oh {
                let y0 = (oy * p.stride[0]) as isize - p.pads[0] as isize;
                let y1 = (y0 + p.kernel[0] as isize).min(h as isize);
                for ox in 0..ow {
                    let x0 = (ox * p.stride[1]) as isize - p.pads[1] as isize;
                    let x1 = (x0 + p.kernel[1] as isize).min(w as isize);
                    let mut best = f32::NEG_INFINITY;
                    let mut at = u32::MAX;
                    for iy in y0.max(0)..y1 {
                        for ix in x0.max(0)..x1 {
                            let i = iy as usize * w + ix as usize;
                            if at == u32::MAX || src[i] > best {
                                best = src[i];
                                at = i as u32;
                            }
                        }
                    }
                    yp[oy * ow + ox] = best;
                    ap[oy * ow + ox] = at;
                }
            }
        });
    (
        Tensor {
            shape: vec![n, c, oh, ow],
            data: y,
        },
        arg,
    )
}

/// BatchNorm with batch statistics over every axis but 1 (f64 sums).
fn batch_norm_train(x: &Tensor, scale: &Tensor, bias: &Tensor, eps: f32) -> (Tensor, Aux) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let count = n * inner;
    let mut mean = vec![0.0f32; c];
    let mut var = vec![0.0f32; c];
    let mut inv_std = vec![0.0f32; c];
    for ch in 0..c {
        let vals = || (0..n).flat_map(move |b| x.data[(b * c + ch) * inner..][..inner].iter());
        let m = vals().map(|v| *v as f64).sum::<f64>() / count as f64;
        let v = vals().map(|v| (*v as f64 - m).powi(2)).sum::<f64>() / count as f64;
        mean[ch] = m as f32;
        var[ch] = v as f32;
        inv_std[ch] = (1.0 / (v + eps as f64).sqrt()) as f32;
    }
    let mut y = x.clone();
    for (i, v) in y.data.iter_mut().enumerate() {
        let ch = (i / inner) % c;
        *v = (*v - mean[ch]) * inv_std[ch] * scale.data[ch] + bias.data[ch];
    }
    (
        y,
        Aux::BnBatch {
            mean,
            var,
            inv_std,
            count,
        },
    )
}

/// Folds the batch statistics of a train-mode forward into each BatchNorm's running
/// mean and variance, PyTorch style: `r = (1 - momentum) * r + momentum * batch`, with
/// the unbiased batch variance (`var * count / (count - 1)`). Momentum 0.1 is PyTorch's
/// default. `graph` must be the graph `cache` was made with.
pub fn update_bn_running(graph: &mut Graph, cache: &Cache, momentum: f32) {
    for (i, node) in graph.nodes.iter_mut().enumerate() {
        if let (
            Op::BatchNorm { mean, var, .. },
            Some(Aux::BnBatch {
                mean: bm,
                var: bv,
                count,
                ..
            }),
        ) = (&mut node.op, cache.aux.get(&i))
        {
            let unbias = if *count > 1 {
                *count as f32 / (*count - 1) as f32
            } else {
                1.0
            };
            for ((r, b), (rv, v)) in mean
                .data
                .iter_mut()
                .zip(bm)
                .zip(var.data.iter_mut().zip(bv))
            {
                *r = (1.0 - momentum) * *r + momentum * b;
                *rv = (1.0 - momentum) * *rv + momentum * v * unbias;
            }
        }
    }
}

/// Mean softmax cross-entropy over the batch and its gradient.
///
/// `logits` is `[N, C]` (any shape whose first axis is N; the rest flattens to C
/// classes); `labels` holds N class indices. Returns (loss, dL/dlogits) with the loss
/// averaged over the batch (Caffe's and PyTorch's default normalisation), computed in
/// f64 with the max subtracted.
pub fn softmax_cross_entropy(
    logits: &Tensor,
    labels: &[usize],
) -> Result<(f32, Tensor), TrainError> {
    let n = logits.shape.first().copied().unwrap_or(0);
    if n == 0 || n != labels.len() {
        return Err(TrainError::Labels {
            reason: format!(
                "logits of shape {:?} for a batch of {} labels",
                logits.shape,
                labels.len()
            ),
        });
    }
    let classes = logits.data.len() / n;
    let mut d = vec![0.0f32; logits.data.len()];
    let mut loss = 0.0f64;
    for (b, (row, drow)) in logits
        .data
        .chunks(classes)
        .zip(d.chunks_mut(classes))
        .enumerate()
    {
        let label = labels[b];
        if label >= classes {
            return Err(TrainError::Labels {
                reason: format!(
                    "label {label} of item {b} is not below the {classes} classes of the logits"
                ),
            });
        }
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|v| (*v as f64 - m).exp()).sum();
        loss += sum.ln() + m - row[label] as f64;
        for (j, (dv, v)) in drow.iter_mut().zip(row).enumerate() {
            let p = (*v as f64 - m).exp() / sum;
            let t = if j == label { 1.0 } else { 0.0 };
            *dv = ((p - t) / n as f64) as f32;
        }
    }
    Ok((
        (loss / n as f64) as f32,
        Tensor {
            shape: logits.shape.clone(),
            data: d,
        },
    ))
}

/// Top-1 hits of `logits` (`[N, ...]`) against `labels`.
pub fn top1_hits(logits: &Tensor, labels: &[usize]) -> usize {
    let n = labels.len().max(1);
    let classes = logits.data.len() / n;
    logits
        .data
        .chunks(classes.max(1))
        .zip(labels)
        .filter(|(row, &l)| {
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                );
            best.0 == l
        })
        .count()
}
