//! Ops that only move data: concat, pad, slice.

use crate::graph::Tensor;

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

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
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

/// Constant padding: `pads` holds the begin pads of every axis, then the end pads.
pub fn pad(x: &Tensor, pads: &[usize], value: f32) -> Tensor {
    let rank = x.shape.len();
    let shape: Vec<usize> = (0..rank)
        .map(|d| x.shape[d] + pads[d] + pads[d + rank])
        .collect();
    let xs = strides(&x.shape);
    let mut y = Tensor::full(shape.clone(), value);
    for_each_index(&shape, |i, idx| {
        let mut off = 0;
        for d in 0..rank {
            let s = idx[d] as isize - pads[d] as isize;
            if s < 0 || s >= x.shape[d] as isize {
                return;
            }
            off += s as usize * xs[d];
        }
        y.data[i] = x.data[off];
    });
    y
}

/// Strided slice, one (start, end, step) per axis; `end` clamps to the axis length.
pub fn slice(x: &Tensor, starts: &[usize], ends: &[usize], steps: &[usize]) -> Tensor {
    let rank = x.shape.len();
    let shape: Vec<usize> = (0..rank)
        .map(|d| (ends[d].min(x.shape[d]) - starts[d]).div_ceil(steps[d]))
        .collect();
    let xs = strides(&x.shape);
    let mut y = Tensor::zeros(shape.clone());
    for_each_index(&shape, |i, idx| {
        let off: usize = (0..rank)
            .map(|d| (starts[d] + idx[d] * steps[d]) * xs[d])
            .sum();
        y.data[i] = x.data[off];
    });
    y
}
