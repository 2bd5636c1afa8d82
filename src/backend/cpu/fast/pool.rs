//! Max and average pooling, parallel over (image, channel) planes. Same semantics as
//! `reference::{max_pool, avg_pool}`; the reference gathers each window into a Vec
//! (obviously correct, ~30x slower), these read the plane in place.

use crate::graph::{Pool2d, Tensor};
use rayon::prelude::*;

/// Max pooling; padded positions never win.
///
/// Per output row: the max over the window's input rows (contiguous, vectorised) into
/// a row buffer that holds -inf where the window reaches into the padding, then the
/// max along the row. For stride > 1 the row buffer is first split into its `stride`
/// phases (`phase[r][i] = row[i * stride + r]`), so every tap of the row max is a
/// contiguous pass too. The strided per-tap loop this replaced ran at ~1 GB/s
/// (SqueezeNet's three 3x3/2 pools took 3.3-5.9 ms together in profiled batch-1 runs
/// of 26-33 ms). With AVX2 the plane loop is compiled for it (8 lanes and `vmaxps`
/// instead of SSE2's 4 lanes).
pub fn max_pool(x: &Tensor, p: &Pool2d) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let [oh, ow] = p
        .output_hw(h, w)
        .expect("shape inference checked the window fits");
    let mut y = Tensor::zeros(vec![n, c, oh, ow]);
    if oh * ow == 0 {
        return y;
    }
    let avx2 = super::gemm::supported();
    y.data
        .par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, src)| {
            let geometry = PlaneGeometry {
                hw: [h, w],
                ohw: [oh, ow],
                pool: p,
            };
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 is present (checked above).
                unsafe { max_pool_plane_avx2(src, dst, &geometry) };
                return;
            }
            let _ = avx2;
            max_pool_plane(src, dst, &geometry);
        });
    y
}

/// Sizes for one plane of a pooling.
struct PlaneGeometry<'a> {
    hw: [usize; 2],
    ohw: [usize; 2],
    pool: &'a Pool2d,
}

/// `max_pool_plane` compiled with AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_plane_avx2(src: &[f32], dst: &mut [f32], g: &PlaneGeometry) {
    max_pool_plane(src, dst, g)
}

/// One plane of `max_pool` (see there).
#[inline(always)]
fn max_pool_plane(src: &[f32], dst: &mut [f32], g: &PlaneGeometry) {
    let ([h, w], [_, ow], p) = (g.hw, g.ohw, g.pool);
    let ([kh, kw], [sh, sw], left) = (p.kernel, p.stride, p.pads[1]);
    // Row buffer: input column i at `left + i`; output column ox reads
    // `ox * sw .. ox * sw + kw`.
    let row_len = (ow - 1) * sw + kw;
    let copied = w.min(row_len.saturating_sub(left));
    let phase_len = row_len.div_ceil(sw);
    let mut row = vec![f32::NEG_INFINITY; row_len];
    let mut phases = vec![f32::NEG_INFINITY; sw * phase_len];
    for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
        let (a, b) = window(oy, sh, p.pads[0], kh, h);
        let cols = &mut row[left..left + copied];
        cols.fill(f32::NEG_INFINITY);
        for src_row in src[a * w..b * w].chunks_exact(w) {
            for (m, v) in cols.iter_mut().zip(&src_row[..copied]) {
                *m = m.max(*v);
            }
        }
        let taps: &[f32] = if sw == 1 {
            &row
        } else {
            // A transpose of `row` seen as `phase_len x sw` (the last chunk partial);
            // stride 2, the common one, gets a loop the compiler vectorises.
            let (even, odd) = phases.split_at_mut(phase_len);
            if sw == 2 {
                for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
                    *e = pair[0];
                    *o = pair[1];
                }
            } else {
                for (i, chunk) in row.chunks_exact(sw).enumerate() {
                    for (r, v) in chunk.iter().enumerate() {
                        phases[r * phase_len + i] = *v;
                    }
                }
            }
            let whole = row_len / sw;
            for (r, v) in row[whole * sw..].iter().enumerate() {
                phases[r * phase_len + whole] = *v;
            }
            &phases
        };
        out.fill(f32::NEG_INFINITY);
        for kx in 0..kw {
            let start = (kx % sw) * phase_len + kx / sw;
            for (o, v) in out.iter_mut().zip(&taps[start..start + ow]) {
                *o = o.max(*v);
            }
        }
    }
}

/// The input positions `[start, end)` under output position `o`'s window, clipped to
/// `0..len` (empty when the window lies in the padding only).
fn window(o: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = (start + kernel as isize).clamp(0, len as isize) as usize;
    (
        start.clamp(0, len as isize) as usize,
        end.max(start.clamp(0, len as isize) as usize),
    )
}

/// Average pooling; the divisor follows `count_include_pad` as in the reference.
pub fn avg_pool(x: &Tensor, p: &Pool2d) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let [oh, ow] = p
        .output_hw(h, w)
        .expect("shape inference checked the window fits");
    let mut y = Tensor::zeros(vec![n, c, oh, ow]);
    y.data
        .par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for oy in 0..oh {
                let y0 = (oy * p.stride[0]) as isize - p.pads[0] as isize;
                let y1 = (y0 + p.kernel[0] as isize).min((h + p.pads[2]) as isize);
                // Clipped to the input; empty (ya == yb) for a window in the padding only.
                let yb = y1.min(h as isize).max(0) as usize;
                let ya = (y0.max(0) as usize).min(yb);
                for ox in 0..ow {
                    let x0 = (ox * p.stride[1]) as isize - p.pads[1] as isize;
                    let x1 = (x0 + p.kernel[1] as isize).min((w + p.pads[3]) as isize);
                    let xb = x1.min(w as isize).max(0) as usize;
                    let xa = (x0.max(0) as usize).min(xb);
                    dst[oy * ow + ox] = {
                        let mut sum = 0f32;
                        for row in src[ya * w..yb * w].chunks_exact(w) {
                            sum += row[xa..xb].iter().sum::<f32>();
                        }
                        let count = if p.count_include_pad {
                            ((y1 - y0) * (x1 - x0)).max(0) as usize
                        } else {
                            (yb - ya) * (xb - xa)
                        };
                        sum / count.max(1) as f32
                    };
                }
            }
        });
    y
}

/// Mean over H and W, one plane per task, summed in 8 f32 lanes (vectorized; the
/// reference sums in f64: the difference is a few ulps of the mean). EfficientNet-B0's
/// global pools (its squeeze-excitations' and the head's) took 1.8 of its ~25 ms at batch 1
/// in the reference.
pub fn global_avg_pool(x: &Tensor) -> Tensor {
    let (n, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let data = x
        .data
        .par_chunks(hw)
        .map(|plane| {
            let mut lanes = [0f32; 8];
            let chunks = plane.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for (l, v) in lanes.iter_mut().zip(c) {
                    *l += v;
                }
            }
            (lanes.iter().sum::<f32>() + tail) / hw as f32
        })
        .collect();
    Tensor {
        shape: vec![n, c, 1, 1],
        data,
    }
}
