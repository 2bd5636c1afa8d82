//! Backward of conv and fc: im2col + `matrixmultiply::sgemm` with rayon (the fast
//! path training uses), plus naive f64 loop nests that serve as the yardstick.
//!
//! Determinism: weight gradients are summed per fixed chunk of images (the chunking
//! depends on the batch size only, never on the thread count) and the chunk sums are
//! added in order, so the same inputs give the same bits on any machine load.

use crate::graph::{Conv2d, Tensor};
use rayon::prelude::*;

/// Gradients of a conv or fc layer.
#[derive(Clone, Debug)]
pub struct LayerGrads {
    /// dL/dx, same shape as the input (absent when not asked for).
    pub dx: Option<Tensor>,
    /// dL/dW, same shape as the weight.
    pub dw: Tensor,
    /// dL/db `[Cout]`, when the layer has a bias.
    pub db: Option<Tensor>,
}

/// Images per weight-gradient chunk are `ceil(N / WGRAD_CHUNKS)`: a fixed count so
/// that the summation order depends on N only.
const WGRAD_CHUNKS: usize = 8;

/// `c = a * b + beta * c` (`m x k` times `k x n`) with explicit strides in elements.
#[allow(clippy::too_many_arguments)]
fn gemm(
    [m, k, n]: [usize; 3],
    a: &[f32],
    [rsa, csa]: [usize; 2],
    b: &[f32],
    [rsb, csb]: [usize; 2],
    beta: f32,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |r: usize, c: usize, rs: usize, cs: usize| (r - 1) * rs + (c - 1) * cs + 1;
    assert!(
        (k == 0 || (a.len() >= last(m, k, rsa, csa) && b.len() >= last(k, n, rsb, csb)))
            && c.len() >= last(m, n, rsc, 1),
        "gemm operands are sized for their dimensions and strides"
    );
    // SAFETY: the assert above checks that the last element each operand is read or
    // written at lies inside its slice; sgemm touches nothing else.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// Sizes of one conv problem.
#[derive(Clone, Copy)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    cin_g: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    groups: usize,
    cout_g: usize,
    /// Reduction length per output channel, `cin_g * kh * kw`.
    k: usize,
    /// Output positions per image, `oh * ow`.
    p: usize,
}

fn geom(x: &Tensor, weight: &Tensor, conv: &Conv2d) -> Geom {
    let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (
        weight.shape[0],
        weight.shape[1],
        weight.shape[2],
        weight.shape[3],
    );
    let [oh, ow] = conv
        .output_hw(h, w)
        .expect("shape inference checked the window fits");
    Geom {
        n,
        cin,
        h,
        w,
        cout,
        cin_g,
        kh,
        kw,
        oh,
        ow,
        groups: conv.groups,
        cout_g: cout / conv.groups,
        k: cin_g * kh * kw,
        p: oh * ow,
    }
}

/// Input row and column read by output (oy, ox) at kernel tap (ky, kx), if inside.
#[inline]
fn tap(conv: &Conv2d, g: &Geom, oy: usize, ky: usize, ox: usize, kx: usize) -> Option<usize> {
    let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize - conv.pads[0] as isize;
    let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize - conv.pads[1] as isize;
    (iy >= 0 && iy < g.h as isize && ix >= 0 && ix < g.w as isize)
        .then(|| iy as usize * g.w + ix as usize)
}

/// Writes the patches of one image and group as a `[P, K]` row-major matrix: one row
/// per output position, K ordered (ci, ky, kx). Padding reads as 0. Rows (not the
/// usual im2col columns) so that both backward GEMMs read it with unit stride.
fn im2row(planes: &[f32], conv: &Conv2d, g: &Geom, rows: &mut [f32]) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let dst = &mut rows[(oy * g.ow + ox) * g.k..][..g.k];
            let mut t = 0;
            for ci in 0..g.cin_g {
                let plane = &planes[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                for ky in 0..g.kh {
                    let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                        - conv.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst[t..t + g.kw].fill(0.0);
                        t += g.kw;
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for kx in 0..g.kw {
                        let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize
                            - conv.pads[1] as isize;
                        dst[t] = if ix >= 0 && ix < g.w as isize {
                            src[ix as usize]
                        } else {
                            0.0
                        };
                        t += 1;
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2row`: adds each entry of the `[P, K]` matrix back onto the input
/// pixel it came from.
fn row2im(rows: &[f32], conv: &Conv2d, g: &Geom, planes: &mut [f32]) {
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let src = &rows[(oy * g.ow + ox) * g.k..][..g.k];
            let mut t = 0;
            for ci in 0..g.cin_g {
                let plane = &mut planes[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                for ky in 0..g.kh {
                    let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                        - conv.pads[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        t += g.kw;
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for kx in 0..g.kw {
                        let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize
                            - conv.pads[1] as isize;
                        if ix >= 0 && ix < g.w as isize {
                            dst[ix as usize] += src[t];
                        }
                        t += 1;
                    }
                }
            }
        }
    }
}

/// Upper bound on the elements of one patch matrix (`K x images*P`): several images
/// share one GEMM (so sgemm packs the weights once for all of them) until this is hit.
const COL_BUDGET: usize = 1 << 22;

/// Conv backward with im2col + sgemm, parallel over chunks of images.
///
/// `weight` is the dense weight the forward used (W, or W⊙T under a forward mask);
/// `dy` is dL/dy `[N, Cout, OH, OW]`. `dx` is computed only when `need_dx`.
/// Within a chunk, the patches of several images are stacked in one `[m*P, K]` matrix
/// so that each GEMM is large: dW_g += dY_g * rows and drows = dY_g^T * W_g.
pub fn conv2d_backward(
    x: &Tensor,
    weight: &Tensor,
    conv: &Conv2d,
    dy: &Tensor,
    need_dx: bool,
) -> LayerGrads {
    let g = geom(x, weight, conv);
    let chunk = g.n.div_ceil(WGRAD_CHUNKS).max(1);
    let per_gemm = (COL_BUDGET / (g.k * g.p).max(1)).clamp(1, chunk);
    let in_img = g.cin * g.h * g.w;
    let out_img = g.cout * g.p;
    let group_in = g.cin_g * g.h * g.w;
    let mut dx = vec![0.0f32; if need_dx { x.data.len() } else { 0 }];
    let mut dx_chunks: Vec<&mut [f32]> = if need_dx {
        dx.chunks_mut(chunk * in_img).collect()
    } else {
        (0..g.n.div_ceil(chunk)).map(|_| &mut [][..]).collect()
    };
    let partial: Vec<Vec<f32>> = dx_chunks
        .par_iter_mut()
        .enumerate()
        .map(|(ci, dxc)| {
            let mut dw = vec![0.0f32; g.cout * g.k];
            let b0 = ci * chunk;
            let b_end = (b0 + chunk).min(g.n);
            let mut col = Vec::new();
            let mut dcol = Vec::new();
            let mut dyc = Vec::new();
            for s0 in (b0..b_end).step_by(per_gemm) {
                let m = per_gemm.min(b_end - s0);
                let ld = m * g.p;
                col.resize(g.k * ld, 0.0);
                dyc.resize(g.cout_g * ld, 0.0);
                if need_dx {
                    dcol.resize(g.k * ld, 0.0);
                }
                for gi in 0..g.groups {
                    for j in 0..m {
                        let b = s0 + j;
                        let planes = &x.data[b * in_img + gi * group_in..][..group_in];
                        im2row(planes, conv, &g, &mut col[j * g.p * g.k..][..g.p * g.k]);
                        for r in 0..g.cout_g {
                            let src = &dy.data[b * out_img + (gi * g.cout_g + r) * g.p..][..g.p];
                            dyc[r * ld + j * g.p..][..g.p].copy_from_slice(src);
                        }
                    }
                    // dW_g[cout_g x K] += dY_g[cout_g x m*P] * rows[m*P x K]
                    gemm(
                        [g.cout_g, ld, g.k],
                        &dyc,
                        [ld, 1],
                        &col,
                        [g.k, 1],
                        1.0,
                        &mut dw[gi * g.cout_g * g.k..],
                        g.k,
                    );
                    if need_dx {
                        let wg = &weight.data[gi * g.cout_g * g.k..][..g.cout_g * g.k];
                        // drows[m*P x K] = dY_g^T[m*P x cout_g] * W_g[cout_g x K]
                        gemm(
                            [ld, g.cout_g, g.k],
                            &dyc,
                            [1, ld],
                            wg,
                            [g.k, 1],
                            0.0,
                            &mut dcol,
                            g.k,
                        );
                        for j in 0..m {
                            let at = (s0 + j - b0) * in_img + gi * group_in;
                            row2im(
                                &dcol[j * g.p * g.k..][..g.p * g.k],
                                conv,
                                &g,
                                &mut dxc[at..at + group_in],
                            );
                        }
                    }
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0.0f32; g.cout * g.k];
    for part in &partial {
        for (d, s) in dw.iter_mut().zip(part) {
            *d += s;
        }
    }
    let db = conv.bias.as_ref().map(|_| {
        let mut db = vec![0.0f32; g.cout];
        for b in 0..g.n {
            for (co, d) in db.iter_mut().enumerate() {
                *d += dy.data[(b * g.cout + co) * g.p..][..g.p]
                    .iter()
                    .sum::<f32>();
            }
        }
        Tensor {
            shape: vec![g.cout],
            data: db,
        }
    });
    LayerGrads {
        dx: need_dx.then(|| Tensor {
            shape: x.shape.clone(),
            data: dx,
        }),
        dw: Tensor {
            shape: weight.shape.clone(),
            data: dw,
        },
        db,
    }
}

/// Naive conv backward (f64 accumulation, always computes dx): the yardstick for
/// `conv2d_backward`.
#[allow(clippy::needless_range_loop)] // the index loops spell out the definition
pub fn conv2d_backward_naive(
    x: &Tensor,
    weight: &Tensor,
    conv: &Conv2d,
    dy: &Tensor,
) -> LayerGrads {
    let g = geom(x, weight, conv);
    let mut dx = vec![0.0f64; x.data.len()];
    let mut dw = vec![0.0f64; weight.data.len()];
    let mut db = vec![0.0f64; g.cout];
    for b in 0..g.n {
        for co in 0..g.cout {
            let gi = co / g.cout_g;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let d = dy.data[((b * g.cout + co) * g.oh + oy) * g.ow + ox] as f64;
                    db[co] += d;
                    for ci in 0..g.cin_g {
                        let c = gi * g.cin_g + ci;
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some(i) = tap(conv, &g, oy, ky, ox, kx) {
                                    let xi = (b * g.cin + c) * g.h * g.w + i;
                                    let wi = ((co * g.cin_g + ci) * g.kh + ky) * g.kw + kx;
                                    dw[wi] += d * x.data[xi] as f64;
                                    dx[xi] += d * weight.data[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>, shape: Vec<usize>| Tensor {
        shape,
        data: v.into_iter().map(|v| v as f32).collect(),
    };
    LayerGrads {
        dx: Some(f(dx, x.shape.clone())),
        dw: f(dw, weight.shape.clone()),
        db: conv.bias.as_ref().map(|_| f(db, vec![g.cout])),
    }
}

/// Output rows of dW (or batch rows of dx) per parallel task of the fc backward.
const ROW_BLOCK: usize = 32;

/// Fully connected backward: `x [N, K]`, `weight [out, K]`, `dy [N, out]`.
pub fn linear_backward(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    dy: &Tensor,
    need_dx: bool,
) -> LayerGrads {
    let (n, k, out) = (x.shape[0], x.shape[1], weight.shape[0]);
    let mut dw = vec![0.0f32; out * k];
    // dW[out x K] = dY^T[out x N] * X[N x K], split over blocks of output rows.
    dw.par_chunks_mut(ROW_BLOCK * k)
        .enumerate()
        .for_each(|(i, c)| {
            let r0 = i * ROW_BLOCK;
            gemm(
                [c.len() / k, n, k],
                &dy.data[r0..],
                [1, out],
                &x.data,
                [k, 1],
                0.0,
                c,
                k,
            );
        });
    let dx = need_dx.then(|| {
        let mut dx = vec![0.0f32; n * k];
        // dX[N x K] = dY[N x out] * W[out x K], split over blocks of batch rows.
        dx.par_chunks_mut(ROW_BLOCK * k)
            .enumerate()
            .for_each(|(i, c)| {
                gemm(
                    [c.len() / k, out, k],
                    &dy.data[i * ROW_BLOCK * out..],
                    [out, 1],
                    &weight.data,
                    [k, 1],
                    0.0,
                    c,
                    k,
                );
            });
        Tensor {
            shape: x.shape.clone(),
            data: dx,
        }
    });
    let db = has_bias.then(|| {
        let mut db = vec![0.0f32; out];
        for row in dy.data.chunks(out) {
            for (d, s) in db.iter_mut().zip(row) {
                *d += s;
            }
        }
        Tensor {
            shape: vec![out],
            data: db,
        }
    });
    LayerGrads {
        dx,
        dw: Tensor {
            shape: weight.shape.clone(),
            data: dw,
        },
        db,
    }
}

/// Naive fc backward (f64 accumulation, always computes dx): the yardstick for
/// `linear_backward`.
#[allow(clippy::needless_range_loop)] // the index loops spell out the definition
pub fn linear_backward_naive(
    x: &Tensor,
    weight: &Tensor,
    has_bias: bool,
    dy: &Tensor,
) -> LayerGrads {
    let (n, k, out) = (x.shape[0], x.shape[1], weight.shape[0]);
    let mut dx = vec![0.0f64; n * k];
    let mut dw = vec![0.0f64; out * k];
    let mut db = vec![0.0f64; out];
    for b in 0..n {
        for o in 0..out {
            let d = dy.data[b * out + o] as f64;
            db[o] += d;
            for i in 0..k {
                dw[o * k + i] += d * x.data[b * k + i] as f64;
                dx[b * k + i] += d * weight.data[o * k + i] as f64;
            }
        }
    }
    let f = |v: Vec<f64>, shape: Vec<usize>| Tensor {
        shape,
        data: v.into_iter().map(|v| v as f32).collect(),
    };
    LayerGrads {
        dx: Some(f(dx, x.shape.clone())),
        dw: f(dw, weight.shape.clone()),
        db: has_bias.then(|| f(db, vec![out])),
    }
}
