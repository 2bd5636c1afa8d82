//! Max and average pooling, parallel over (image, channel) planes. Same semantics as
//! `reference::{max_pool, avg_pool}`; the reference gathers each window into a Vec
//! (obviously correct, ~30x slower), these read the plane in place.

use crate::graph::{Pool2d, Tensor};
use rayon::prelude::*;

/// Max pooling; padded positions never win.
pub fn max_pool(x: &Tensor, p: &Pool2d) -> Tensor {
    pool(x, p, false)
}

/// Average pooling; the divisor follows `count_include_pad` as in the reference.
pub fn avg_pool(x: &Tensor, p: &Pool2d) -> Tensor {
    pool(x, p, true)
}

fn pool(x: &Tensor, p: &Pool2d, average: bool) -> Tensor {
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
                let (ya, yb) = (y0.max(0) as usize, y1.min(h as isize).max(0) as usize);
                for ox in 0..ow {
                    let x0 = (ox * p.stride[1]) as isize - p.pads[1] as isize;
                    let x1 = (x0 + p.kernel[1] as isize).min((w + p.pads[3]) as isize);
                    let (xa, xb) = (x0.max(0) as usize, x1.min(w as isize).max(0) as usize);
                    dst[oy * ow + ox] = if average {
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
                    } else {
                        let mut m = f32::NEG_INFINITY;
                        for row in src[ya * w..yb * w].chunks_exact(w) {
                            m = row[xa..xb].iter().copied().fold(m, f32::max);
                        }
                        m
                    };
                }
            }
        });
    y
}
