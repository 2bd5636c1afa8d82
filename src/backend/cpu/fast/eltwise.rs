//! Element-wise functions and broadcasting binaries on the CPU, in place on the first
//! operand's buffer, in parallel blocks. Same arithmetic as the reference kernels
//! (`UnaryOp::apply`, `BinaryKind::apply`); only the loop differs.

use crate::graph::{broadcast, BinaryKind, Tensor, UnaryOp};
use rayon::prelude::*;

/// Elements per parallel block: big enough that rayon's per-task cost vanishes, small
/// enough that a 2-core machine splits a 64 KiB activation.
const BLOCK: usize = 1 << 14;

/// `x = u(x)` on every element.
pub fn unary_in_place(x: &mut Tensor, u: UnaryOp) {
    x.data
        .par_chunks_mut(BLOCK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = u.apply(*v)));
}

/// Whether `x op= b` can run in place: `b` broadcasts to `x`'s shape.
pub fn binary_fits(x: &[usize], b: &[usize]) -> bool {
    broadcast(x, b).as_deref() == Some(x)
}

/// `x = x op b` with `b` broadcast (NumPy rules) to `x`'s shape (`binary_fits`).
/// Rows of `x`'s last axis are the unit of work: each row reads `b` at one offset with a
/// stride of 1 or 0 along the row (0 where `b` broadcasts the last axis, as a
/// squeeze-excitation scale `[N, C, 1, 1]` does over `[N, C, H, W]`).
pub fn binary_in_place(x: &mut Tensor, b: &Tensor, kind: BinaryKind) {
    let rank = x.shape.len();
    if rank == 0 {
        x.data[0] = kind.apply(x.data[0], b.data[0]);
        return;
    }
    // b's strides over x's axes (0 where b broadcasts).
    let mut bs = vec![0usize; rank];
    let mut s = 1;
    for i in (0..b.shape.len()).rev() {
        let axis = rank - b.shape.len() + i;
        bs[axis] = if b.shape[i] == 1 { 0 } else { s };
        s *= b.shape[i];
    }
    let row = x.shape[rank - 1];
    let step = bs[rank - 1];
    let outer = &x.shape[..rank - 1];
    let rows_per_block = (BLOCK / row).max(1);
    x.data
        .par_chunks_mut(rows_per_block * row)
        .enumerate()
        .for_each(|(block, chunk)| {
            for (r, xs) in chunk.chunks_mut(row).enumerate() {
                // The offset of this row in b: its index over the outer axes.
                let mut rest = block * rows_per_block + r;
                let mut off = 0;
                for a in (0..outer.len()).rev() {
                    off += (rest % outer[a]) * bs[a];
                    rest /= outer[a];
                }
                if step == 0 {
                    let c = b.data[off];
                    xs.iter_mut().for_each(|v| *v = kind.apply(*v, c));
                } else {
                    let bs = &b.data[off..off + row];
                    xs.iter_mut()
                        .zip(bs)
                        .for_each(|(v, &c)| *v = kind.apply(*v, c));
                }
            }
        });
}
