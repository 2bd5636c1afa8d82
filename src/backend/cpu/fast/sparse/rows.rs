//! The row-by-row sparse conv (any stride), for layers whose flat offsets would pass
//! 2^32: per stored weight, an axpy of the shifted input rows into the output plane.

use crate::graph::{Conv2d, Tensor};
use crate::weights::SparseWeights;
use rayon::prelude::*;

/// Output channels per conv task.
const CHANNEL_BLOCK: usize = 4;

/// The row-by-row kernel of `sparse_conv` (any stride): per stored weight, an axpy of
/// the shifted input rows into the output plane.
pub fn sparse_conv_rows(x: &Tensor, conv: &Conv2d, w: &SparseWeights) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let shape = w.shape();
    let (cout, cin_g, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let cout_g = cout / conv.groups;
    let plane = oh * ow;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (pt, pl) = (conv.pads[0], conv.pads[1]);
    let bias = conv.bias.as_ref().map(|b| b.data.as_slice());
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    let cols = w.cols();
    let values = w.values();
    // Valid output columns per kx: ix = ox*sw + kx*dw - pl in [0, W).
    let ox_range: Vec<(usize, usize)> = (0..kw)
        .map(|kx| {
            let off = kx * dw;
            let lo = if off >= pl {
                0
            } else {
                (pl - off).div_ceil(sw)
            };
            // ox*sw + off - pl <= W - 1  <=>  ox <= (W - 1 + pl - off) / sw
            let hi = if wd + pl > off {
                ((wd - 1 + pl - off) / sw + 1).min(ow)
            } else {
                0
            };
            (lo.min(hi), hi)
        })
        .collect();
    y.data
        .par_chunks_mut(plane * CHANNEL_BLOCK)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * CHANNEL_BLOCK;
            for (j, o) in out.chunks_mut(plane).enumerate() {
                let idx = first + j;
                let (b, co) = (idx / cout, idx % cout);
                let g = co / cout_g;
                o.fill(bias.map_or(0.0, |bb| bb[co]));
                let image = &x.data[(b * cin + g * cin_g) * h * wd..];
                for i in w.row_range(co) {
                    let k = cols.get(i);
                    let v = values[i];
                    let (ci, ky, kx) = (k / (kh * kw), (k / kw) % kh, k % kw);
                    let xc = &image[ci * h * wd..(ci + 1) * h * wd];
                    let (lo, hi) = ox_range[kx];
                    if lo >= hi {
                        continue;
                    }
                    let off_y = ky * dh;
                    for oy in 0..oh {
                        let iy = (oy * sh + off_y) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let xrow = &xc[iy as usize * wd..(iy as usize + 1) * wd];
                        let orow = &mut o[oy * ow..(oy + 1) * ow];
                        // ix0 = lo*sw + kx*dw - pl >= 0 by construction of lo.
                        let ix0 = lo * sw + kx * dw - pl;
                        if sw == 1 {
                            let len = hi - lo;
                            for (ov, xv) in orow[lo..hi].iter_mut().zip(&xrow[ix0..ix0 + len]) {
                                *ov += v * xv;
                            }
                        } else {
                            for (t, ov) in orow[lo..hi].iter_mut().enumerate() {
                                *ov += v * xrow[ix0 + t * sw];
                            }
                        }
                    }
                }
            }
        });
    y
}
