//! Dense conv and fc: im2col + `matrixmultiply::sgemm`, parallel with rayon.
//!
//! Why im2col and not direct: sgemm's packed micro-kernels reach several times the
//! FLOP rate of a direct loop nest on x86 (AVX2/FMA picked at run time), and the
//! im2col buffer (K x OH*OW per image and group) is small for the CNNs in the zoo.
//! 1x1 convolutions with stride 1 and no padding skip im2col: the input already is
//! the K x P matrix.

use crate::graph::{Conv2d, Linear, Tensor};
use rayon::prelude::*;

/// Columns (output positions) per parallel task: large enough to amortise sgemm's
/// packing of the weight panel, small enough to spread a batch-1 layer over cores.
const COLUMN_BLOCK: usize = 256;

/// `c[m x n] = a[m x k] * b[k x n]` with explicit row/column strides (in elements).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    c: &mut [f32],
    rsc: isize,
) {
    // SAFETY: the callers size `a`, `b` and `c` for the given dimensions and strides
    // (m*k, k*n and m*n elements with the strides below), which is all sgemm reads/writes.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            rsc,
            1,
        );
    }
}

/// Dense convolution; same semantics as `reference::conv2d`.
pub fn conv2d(x: &Tensor, conv: &Conv2d) -> Tensor {
    let w = conv.weight.to_dense();
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let (groups, cout_g, k, p) = (conv.groups, cout / conv.groups, cin_g * kh * kw, oh * ow);
    let direct = kh == 1 && kw == 1 && conv.stride == [1, 1] && conv.pads == [0; 4];
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    // One task per (image, group, column block); each writes a disjoint column block.
    let tasks: Vec<(usize, usize, usize)> = (0..n)
        .flat_map(|b| {
            (0..groups).flat_map(move |g| (0..p).step_by(COLUMN_BLOCK).map(move |c0| (b, g, c0)))
        })
        .collect();
    let blocks: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, g, c0)| {
            let cols = COLUMN_BLOCK.min(p - c0);
            let image =
                &x.data[(b * cin + g * cin_g) * h * wd..(b * cin + (g + 1) * cin_g) * h * wd];
            let wg = &w.data[g * cout_g * k..(g + 1) * cout_g * k];
            let mut out = vec![0.0; cout_g * cols];
            if direct {
                // b[k][col] = image[k * p + c0 + col]
                sgemm(
                    cout_g,
                    k,
                    cols,
                    wg,
                    k as isize,
                    1,
                    &image[c0..],
                    p as isize,
                    1,
                    &mut out,
                    cols as isize,
                );
            } else {
                let col = im2col(image, conv, [h, wd], [kh, kw], ow, c0, cols, cin_g);
                sgemm(
                    cout_g,
                    k,
                    cols,
                    wg,
                    k as isize,
                    1,
                    &col,
                    cols as isize,
                    1,
                    &mut out,
                    cols as isize,
                );
            }
            out
        })
        .collect();
    for ((b, g, c0), out) in tasks.into_iter().zip(blocks) {
        let cols = COLUMN_BLOCK.min(p - c0);
        for r in 0..cout_g {
            let co = g * cout_g + r;
            let bias = conv.bias.as_ref().map_or(0.0, |t| t.data[co]);
            let dst = &mut y.data[(b * cout + co) * p + c0..(b * cout + co) * p + c0 + cols];
            for (d, s) in dst.iter_mut().zip(&out[r * cols..(r + 1) * cols]) {
                *d = s + bias;
            }
        }
    }
    y
}

/// Patches for output positions `c0 .. c0+cols` as a `[K, cols]` row-major matrix,
/// K in the order documented in `weights` (ci, ky, kx). Padding reads as 0.
#[allow(clippy::too_many_arguments)]
fn im2col(
    image: &[f32],
    conv: &Conv2d,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    ow: usize,
    c0: usize,
    cols: usize,
    cin_g: usize,
) -> Vec<f32> {
    let mut col = vec![0.0; cin_g * kh * kw * cols];
    for ci in 0..cin_g {
        let plane = &image[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * cols..][..cols];
                // Walk the output positions row by row: one bounds check per output row
                // and a contiguous (or strided) run per row, no division per element.
                let (mut j, mut oy, mut ox0) = (0, c0 / ow, c0 % ow);
                while j < cols {
                    let run = (ow - ox0).min(cols - j);
                    let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                        - conv.pads[0] as isize;
                    if iy >= 0 && iy < h as isize {
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let x_off = (kx * conv.dilation[1]) as isize - conv.pads[1] as isize;
                        for (i, dst) in row[j..j + run].iter_mut().enumerate() {
                            let ix = ((ox0 + i) * conv.stride[1]) as isize + x_off;
                            if ix >= 0 && ix < w as isize {
                                *dst = src[ix as usize];
                            }
                        }
                    }
                    j += run;
                    oy += 1;
                    ox0 = 0;
                }
            }
        }
    }
    col
}

/// Output rows per parallel task of the fc layer.
const ROW_BLOCK: usize = 64;

/// Dense fully connected layer; same semantics as `reference::linear`.
pub fn linear(x: &Tensor, fc: &Linear) -> Tensor {
    let w = fc.weight.to_dense();
    let (n, k, out) = (x.shape[0], x.shape[1], w.shape[0]);
    // y^T[out x n] = W[out x k] * x^T[k x n], split over blocks of output rows.
    let blocks: Vec<Vec<f32>> = (0..out)
        .step_by(ROW_BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| {
            let rows = ROW_BLOCK.min(out - r0);
            let mut yt = vec![0.0; rows * n];
            sgemm(
                rows,
                k,
                n,
                &w.data[r0 * k..],
                k as isize,
                1,
                &x.data,
                1,
                k as isize,
                &mut yt,
                n as isize,
            );
            yt
        })
        .collect();
    let mut y = Tensor::zeros(vec![n, out]);
    for (bi, yt) in blocks.iter().enumerate() {
        let r0 = bi * ROW_BLOCK;
        let rows = yt.len() / n;
        for r in 0..rows {
            let bias = fc.bias.as_ref().map_or(0.0, |t| t.data[r0 + r]);
            for b in 0..n {
                y.data[b * out + r0 + r] = yt[r * n + b] + bias;
            }
        }
    }
    y
}
