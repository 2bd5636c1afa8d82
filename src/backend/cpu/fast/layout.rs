//! Ops that only move data, in parallel: concat, slice, transpose, and the fc kernels'
//! output blocks into the output.

use super::dense::OutPtr;
use crate::graph::Tensor;
use crate::tensor::strides;
use rayon::prelude::*;

/// Floats per parallel copy: 256 KiB, large enough that a task is not dominated by its
/// scheduling, small enough that a two-input concat splits over every thread.
const CHUNK: usize = 1 << 16;

/// Concatenation along `axis` (inputs of equal shape but along `axis`), copied in
/// parallel into an output that is not zero-filled first. Same result as
/// `reference::concat`. SqueezeNet's eight concats copy ~11 MB per image; one thread
/// copied them at ~8 GB/s (fire4's 3 MB took 0.38 ms).
pub fn concat(xs: &[&Tensor], axis: usize) -> Tensor {
    let outer: usize = xs[0].shape[..axis].iter().product();
    let mut shape = xs[0].shape.clone();
    shape[axis] = xs.iter().map(|t| t.shape[axis]).sum();
    let total: usize = shape.iter().product();
    // (offset in the output, source run): the output in order, in runs of <= CHUNK.
    let mut pieces: Vec<(usize, &[f32])> = Vec::new();
    let mut at = 0;
    for o in 0..outer {
        for t in xs {
            let block: usize = t.shape[axis..].iter().product();
            for run in t.data[o * block..(o + 1) * block].chunks(CHUNK) {
                pieces.push((at, run));
                at += run.len();
            }
        }
    }
    assert_eq!(at, total, "concat inputs disagree with the output shape");
    let mut data = super::uninit_vec(total);
    let out = OutPtr(data.as_mut_ptr().cast::<f32>());
    pieces.par_iter().for_each(|&(at, run)| {
        // SAFETY: the pieces tile the output exactly once (their lengths sum to
        // `total`, asserted, and their offsets are running sums), so each writes its
        // own part of `data`, which is not otherwise accessed until all have finished.
        unsafe { std::ptr::copy_nonoverlapping(run.as_ptr(), out.at(at), run.len()) }
    });
    // SAFETY: every element was written (above).
    let data = unsafe { super::assume_init(data) };
    Tensor { shape, data }
}

/// `[N, O]` (plus the bias) from blocks of `block_rows` output rows, each `[row][input]`
/// (the last block may be shorter): the fc kernels work on blocks of weight rows. Each
/// task writes one input's output row, so the writes are in order (at batch 64, fc6's
/// 262,144 outputs took 1 ms on one thread with the writes strided).
pub(super) fn transpose_blocks(
    blocks: &[Vec<f32>],
    block_rows: usize,
    n: usize,
    o: usize,
    bias: Option<&Tensor>,
) -> Tensor {
    let mut y = vec![0f32; n * o];
    y.par_chunks_mut(o.max(1))
        .enumerate()
        .for_each(|(item, y)| {
            for (bi, block) in blocks.iter().enumerate() {
                for (r, vals) in block.chunks_exact(n).enumerate() {
                    let c = bi * block_rows + r;
                    y[c] = vals[item] + bias.map_or(0.0, |b| b.data[c]);
                }
            }
        });
    Tensor {
        shape: vec![n, o],
        data: y,
    }
}

/// Rows of `rows_per_task * row` output elements per parallel task: about `CHUNK`.
fn rows_per_task(row: usize) -> usize {
    (CHUNK / row.max(1)).max(1)
}

/// Writes every row of the last axis of `out_shape` in parallel: `row_at(index)` gives
/// the input offset of the row's first element for the row's index over the outer axes,
/// and `step` the input stride along the row (1: a copy).
fn gather_rows(
    x: &[f32],
    out_shape: &[usize],
    step: isize,
    row_at: impl Fn(&[usize]) -> isize + Sync,
) -> Vec<f32> {
    let rank = out_shape.len();
    let row = out_shape[rank - 1];
    let outer = &out_shape[..rank - 1];
    let total: usize = out_shape.iter().product();
    let mut data = vec![0.0f32; total];
    if total == 0 {
        return data;
    }
    let per = rows_per_task(row);
    data.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(task, chunk)| {
            let mut idx = vec![0usize; outer.len()];
            for (r, dst) in chunk.chunks_mut(row).enumerate() {
                let mut rest = task * per + r;
                for a in (0..outer.len()).rev() {
                    idx[a] = rest % outer[a];
                    rest /= outer[a];
                }
                let start = row_at(&idx);
                if step == 1 {
                    dst.copy_from_slice(&x[start as usize..][..row]);
                } else {
                    for (j, v) in dst.iter_mut().enumerate() {
                        *v = x[(start + j as isize * step) as usize];
                    }
                }
            }
        });
    data
}

/// Strided slice (`Op::Slice`), rows copied in parallel. Same result as
/// `reference::slice`; ShuffleNet v2's channel splits took 2.8 of its 13 ms at batch 1
/// through the reference's per-element index arithmetic.
pub fn slice(x: &Tensor, starts: &[usize], ends: &[usize], steps: &[i64]) -> Tensor {
    let rank = x.shape.len();
    let shape: Vec<usize> = (0..rank)
        .map(|d| crate::graph::slice_len(x.shape[d], starts[d], ends[d], steps[d]).unwrap_or(0))
        .collect();
    let xs = strides(&x.shape);
    let last = rank - 1;
    let data = gather_rows(
        &x.data,
        &shape,
        steps[last] as isize * xs[last] as isize,
        |idx| {
            let mut off = (starts[last] * xs[last]) as isize;
            for (d, &i) in idx.iter().enumerate() {
                off += (starts[d] as isize + i as isize * steps[d] as isize) * xs[d] as isize;
            }
            off
        },
    );
    Tensor { shape, data }
}

/// Axis permutation (`Op::Transpose`), output rows gathered in parallel (a copy when
/// the last axis stays last). Same result as `reference::transpose`.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = strides(&x.shape);
    let last = perm.len() - 1;
    let data = gather_rows(&x.data, &shape, xs[perm[last]] as isize, |idx| {
        idx.iter()
            .enumerate()
            .map(|(d, &i)| (i * xs[perm[d]]) as isize)
            .sum()
    });
    Tensor { shape, data }
}
