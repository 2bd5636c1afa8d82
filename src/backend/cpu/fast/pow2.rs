//! Power-of-two (INQ) fc and conv on the CPU, reading the b-bit codes directly.
//!
//! Decoding is fused into the weight load: each code word is split into its
//! `floor(32 / b)` codes and every code goes through the layer's `2^b`-entry table
//! (`Pow2Weights::table`, at most 32 f32 values: 0 and `±2^n`), so a weight row costs
//! `b/32` of the dense row's memory traffic. The product `x · (±2^n)` is then one
//! multiply, which is exact (a power of two only moves the exponent) and has exactly
//! the IEEE semantics of `ldexp` including underflow to subnormals/zero and overflow
//! to infinity, so it needs no special cases for zero, sign or tiny exponents the way
//! an integer add on the exponent field of `x` would. Results differ from the dense
//! reference only by summation order.
//!
//! - fc (`pow2_linear`): output rows in parallel tiles; each row is decoded once into a
//!   K-long buffer and dotted with every input row (8 accumulators, vectorised).
//! - conv (`pow2_conv`): per (image, group) an im2col matrix `[K][OH·OW]`; each output
//!   channel's row is decoded and its nonzero weights are accumulated as
//!   `y += w_k · col_k` (zero codes, common after INQ, are skipped).
//!
//! Preconditions (shapes agreeing with the weights, `Weights::Pow2` in the conv) are the
//! planner's invariants, checked by shape inference; a violation panics naming it.

use crate::graph::{Conv2d, Tensor};
use crate::weights::{Pow2Weights, Weights};
use rayon::prelude::*;

/// Output rows per fc task.
const O_TILE: usize = 8;

/// Decodes row `c` of `w` into `out` (K values) through `table`.
pub fn decode_row(w: &Pow2Weights, table: &[f32], c: usize, out: &mut [f32]) {
    let k = w.row_len();
    let cpw = w.codes_per_word();
    let b = w.bits() as usize;
    let mask = (1u32 << b) - 1;
    for (chunk, &word) in out[..k].chunks_mut(cpw).zip(w.code_row(c)) {
        let mut word = word;
        for v in chunk {
            *v = table[(word & mask) as usize];
            word >>= b;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `y = x Wᵀ + b` for `x: [N, K]` and pow2 weights `[O, K]`; returns `[N, O]`.
pub fn pow2_linear(x: &Tensor, w: &Pow2Weights, bias: Option<&Tensor>) -> Tensor {
    let k = w.row_len();
    assert!(
        x.shape.len() == 2 && x.shape[1] == k,
        "pow2_linear: input shape {:?} does not match weights {:?}",
        x.shape,
        w.shape()
    );
    let (n, o) = (x.shape[0], w.rows());
    if let Some(b) = bias {
        assert_eq!(b.data.len(), o, "bias length must equal the output rows");
    }
    let table = w.table();
    // Tiles of output rows, each `[tile][N]` (transposed into `[N][O]` afterwards).
    let tiles: Vec<Vec<f32>> = (0..o.div_ceil(O_TILE))
        .into_par_iter()
        .map(|t| {
            let rows = t * O_TILE..((t + 1) * O_TILE).min(o);
            let mut wrow = vec![0f32; k];
            let mut tile = Vec::with_capacity(rows.len() * n);
            for c in rows {
                decode_row(w, &table, c, &mut wrow);
                let b = bias.map_or(0.0, |b| b.data[c]);
                for r in 0..n {
                    tile.push(dot(&x.data[r * k..(r + 1) * k], &wrow) + b);
                }
            }
            tile
        })
        .collect();
    let mut out = vec![0f32; n * o];
    for (t, tile) in tiles.iter().enumerate() {
        for (i, col) in tile.chunks_exact(n.max(1)).enumerate() {
            let c = t * O_TILE + i;
            for (r, &v) in col.iter().enumerate() {
                out[r * o + c] = v;
            }
        }
    }
    Tensor {
        shape: vec![n, o],
        data: out,
    }
}

/// Power-of-two convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a
/// `Weights::Pow2` of logical shape `[Cout, Cin/groups, kh, kw]`; returns
/// `[N, Cout, OH, OW]`. Same semantics as `reference::conv2d` (stride, padding,
/// dilation, groups).
pub fn pow2_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    let w = match &conv.weight {
        Weights::Pow2(p) => p,
        other => panic!(
            "pow2_conv needs pow2 weights, got {} (the planner picks the kernel by encoding)",
            other.encoding()
        ),
    };
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g) = (w.rows(), w.shape()[1]);
    let [kh, kw] = conv.kernel;
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let groups = conv.groups;
    assert!(
        cin == cin_g * groups && cout % groups == 0,
        "pow2_conv: input channels {cin} do not match weights {:?} with {groups} groups",
        w.shape()
    );
    let cout_g = cout / groups;
    let k = cin_g * kh * kw;
    let p = oh * ow;
    let table = w.table();
    let mut out = vec![0f32; n * cout * p];
    if p == 0 || cout == 0 {
        return Tensor {
            shape: vec![n, cout, oh, ow],
            data: out,
        };
    }
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (pt, pl) = (conv.pads[0], conv.pads[1]);
    out.par_chunks_mut(cout_g * p)
        .enumerate()
        .for_each(|(ng, block)| {
            let (img, g) = (ng / groups, ng % groups);
            // im2col: cols[k][p], zero where the window meets padding.
            let mut cols = vec![0f32; k * p];
            for ci in 0..cin_g {
                let plane = &x.data[((img * cin) + g * cin_g + ci) * h * wd..][..h * wd];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let row = &mut cols[((ci * kh + ky) * kw + kx) * p..][..p];
                        for oy in 0..oh {
                            let iy = (oy * sh + ky * dh) as isize - pt as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let src = &plane[iy as usize * wd..][..wd];
                            for ox in 0..ow {
                                let ix = (ox * sw + kx * dw) as isize - pl as isize;
                                if ix >= 0 && ix < wd as isize {
                                    row[oy * ow + ox] = src[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
            let cols = &cols;
            let table = &table;
            block.par_chunks_mut(p).enumerate().for_each_init(
                || vec![0f32; k],
                |wrow, (oc, y)| {
                    let c = g * cout_g + oc;
                    decode_row(w, table, c, wrow);
                    let b = conv.bias.as_ref().map_or(0.0, |b| b.data[c]);
                    y.iter_mut().for_each(|v| *v = b);
                    for (kk, &wk) in wrow.iter().enumerate() {
                        if wk == 0.0 {
                            continue;
                        }
                        let col = &cols[kk * p..(kk + 1) * p];
                        for (v, &xv) in y.iter_mut().zip(col) {
                            *v += wk * xv;
                        }
                    }
                },
            );
        });
    Tensor {
        shape: vec![n, cout, oh, ow],
        data: out,
    }
}
