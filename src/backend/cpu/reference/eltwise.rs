//! Element-wise ops, batch norm, LRN and softmax.

use crate::graph::{BinaryKind, Tensor};

/// Applies `f` to every element.
pub fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|v| f(*v)).collect(),
    }
}

/// a + b, same shapes.
pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    Tensor {
        shape: a.shape.clone(),
        data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
    }
}

/// Expands `c` (NumPy broadcasting) to `shape`.
pub fn broadcast_to(c: &Tensor, shape: &[usize]) -> Tensor {
    let rank = shape.len();
    let mut cshape = vec![1; rank - c.shape.len()];
    cshape.extend(&c.shape);
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    for _ in 0..n {
        let mut off = 0;
        for d in 0..rank {
            off = off * cshape[d] + if cshape[d] == 1 { 0 } else { idx[d] };
        }
        data.push(c.data[off]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Tensor {
        shape: shape.to_vec(),
        data,
    }
}

/// Arithmetic with a broadcast constant.
pub fn const_binary(x: &Tensor, kind: BinaryKind, c: &Tensor, constant_first: bool) -> Tensor {
    let c = broadcast_to(c, &x.shape);
    let data = x
        .data
        .iter()
        .zip(&c.data)
        .map(|(&x, &c)| {
            let (a, b) = if constant_first { (c, x) } else { (x, c) };
            kind.apply(a, b)
        })
        .collect();
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// `a op b` between two computed values, both broadcast (NumPy rules) to their joint shape.
pub fn binary(a: &Tensor, b: &Tensor, kind: BinaryKind) -> Tensor {
    let shape = crate::graph::broadcast(&a.shape, &b.shape).expect("shape inference checked");
    let (a, b) = (broadcast_to(a, &shape), broadcast_to(b, &shape));
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| kind.apply(x, y))
        .collect();
    Tensor { shape, data }
}

/// Layer normalisation over the axes from `axis` on (ONNX LayerNormalization), in f64.
pub fn layer_norm(
    x: &Tensor,
    axis: usize,
    eps: f32,
    scale: &Tensor,
    bias: Option<&Tensor>,
) -> Tensor {
    let inner: usize = x.shape[axis..].iter().product();
    let mut y = x.clone();
    for row in y.data.chunks_mut(inner) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / inner as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            let b = bias.map_or(0.0, |b| b.data[i] as f64);
            *v = ((*v as f64 - mean) * inv * scale.data[i] as f64 + b) as f32;
        }
    }
    y
}

/// Inference batch norm over axis 1.
pub fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Tensor {
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut y = x.clone();
    for (i, v) in y.data.iter_mut().enumerate() {
        let ch = (i / inner) % c;
        let inv = 1.0 / ((var.data[ch] as f64 + eps as f64).sqrt());
        *v = ((*v as f64 - mean.data[ch] as f64) * inv * scale.data[ch] as f64
            + bias.data[ch] as f64) as f32;
    }
    y
}

/// ONNX LRN: y = x / (bias + alpha/size * sum_{window} x^2)^beta, window of `size`
/// channels centred on c (floor((size-1)/2) before, ceil((size-1)/2) after).
pub fn lrn(x: &Tensor, size: usize, alpha: f32, beta: f32, bias: f32) -> Tensor {
    let (n, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let mut y = x.clone();
    for b in 0..n {
        for ch in 0..c {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c - 1);
            for p in 0..hw {
                let sq: f64 = (lo..=hi)
                    .map(|k| (x.data[(b * c + k) * hw + p] as f64).powi(2))
                    .sum();
                let d = (bias as f64 + alpha as f64 / size as f64 * sq).powf(beta as f64);
                let i = (b * c + ch) * hw + p;
                y.data[i] = (x.data[i] as f64 / d) as f32;
            }
        }
    }
    y
}

/// Softmax over the last axis, max-subtracted.
pub fn softmax(x: &Tensor) -> Tensor {
    let last = *x.shape.last().expect("softmax input has rank >= 1");
    let mut y = x.clone();
    for row in y.data.chunks_mut(last) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|v| ((*v - m) as f64).exp()).sum();
        for v in row.iter_mut() {
            *v = (((*v - m) as f64).exp() / sum) as f32;
        }
    }
    y
}
