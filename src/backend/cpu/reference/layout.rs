//! Ops that only move data: concat, pad, slice, transpose.

use crate::graph::{PadMode, ReduceKind, Tensor};
use crate::tensor::strides;

/// Concatenation along `axis`.
pub fn concat(xs: &[&Tensor], axis: usize) -> Tensor {
    let outer: usize = xs[0].shape[..axis].iter().product();
    let mut shape = xs[0].shape.clone();
    shape[axis] = xs.iter().map(|t| t.shape[axis]).sum();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for t in xs {
            let block: usize = t.shape[axis..].iter().product();
            data.extend_from_slice(&t.data[o * block..(o + 1) * block]);
        }
    }
    Tensor { shape, data }
}

/// Calls `f(out_index, multi_index)` for every element of `shape` in row-major order.
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

/// Padding: `pads` holds the begin pads of every axis, then the end pads.
pub fn pad(x: &Tensor, pads: &[usize], value: f32, mode: PadMode) -> Tensor {
    let rank = x.shape.len();
    let shape: Vec<usize> = (0..rank)
        .map(|d| x.shape[d] + pads[d] + pads[d + rank])
        .collect();
    let xs = strides(&x.shape);
    let mut y = Tensor::full(shape.clone(), value);
    for_each_index(&shape, |i, idx| {
        let mut off = 0;
        for d in 0..rank {
            let Some(s) = mode.source(idx[d] as isize - pads[d] as isize, x.shape[d]) else {
                return;
            };
            off += s * xs[d];
        }
        y.data[i] = x.data[off];
    });
    y
}

/// Strided slice, one (start, end, step) per axis (`Op::Slice`).
pub fn slice(x: &Tensor, starts: &[usize], ends: &[usize], steps: &[i64]) -> Tensor {
    let rank = x.shape.len();
    let shape: Vec<usize> = (0..rank)
        .map(|d| crate::graph::slice_len(x.shape[d], starts[d], ends[d], steps[d]).unwrap_or(0))
        .collect();
    let xs = strides(&x.shape);
    let mut y = Tensor::zeros(shape.clone());
    for_each_index(&shape, |i, idx| {
        let off: i64 = (0..rank)
            .map(|d| (starts[d] as i64 + idx[d] as i64 * steps[d]) * xs[d] as i64)
            .sum();
        y.data[i] = x.data[off as usize];
    });
    y
}

/// Axis permutation: output axis `i` is input axis `perm[i]`.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = strides(&x.shape);
    let mut y = Tensor::zeros(shape.clone());
    for_each_index(&shape, |i, idx| {
        let off: usize = (0..perm.len()).map(|d| idx[d] * xs[perm[d]]).sum();
        y.data[i] = x.data[off];
    });
    y
}

/// Reduction over `axes` (f64 accumulation); reduced axes kept as 1s when `keepdims`.
pub fn reduce(x: &Tensor, kind: ReduceKind, axes: &[usize], keepdims: bool) -> Tensor {
    let kept: Vec<usize> = (0..x.shape.len())
        .map(|d| if axes.contains(&d) { 1 } else { x.shape[d] })
        .collect();
    let ks = strides(&kept);
    let n_out: usize = kept.iter().product();
    let count = x.data.len() / n_out.max(1);
    let init = match kind {
        ReduceKind::Max => f64::NEG_INFINITY,
        ReduceKind::Min => f64::INFINITY,
        _ => 0.0,
    };
    let mut acc = vec![init; n_out];
    for_each_index(&x.shape, |i, idx| {
        let o: usize = (0..idx.len())
            .map(|d| if axes.contains(&d) { 0 } else { idx[d] * ks[d] })
            .sum();
        let v = x.data[i] as f64;
        acc[o] = match kind {
            ReduceKind::Mean | ReduceKind::Sum => acc[o] + v,
            ReduceKind::Max => acc[o].max(v),
            ReduceKind::Min => acc[o].min(v),
            ReduceKind::L2 => acc[o] + v * v,
        };
    });
    let data = acc
        .into_iter()
        .map(|a| match kind {
            ReduceKind::Mean => (a / count as f64) as f32,
            ReduceKind::L2 => a.sqrt() as f32,
            _ => a as f32,
        })
        .collect();
    let shape = if keepdims {
        kept
    } else {
        (0..x.shape.len())
            .filter(|d| !axes.contains(d))
            .map(|d| x.shape[d])
            .collect()
    };
    Tensor { shape, data }
}
