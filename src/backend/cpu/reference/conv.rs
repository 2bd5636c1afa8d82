//! Naive direct convolution and fully connected layer.

use crate::graph::{Conv2d, Linear, Tensor};

/// Direct 2-D convolution, NCHW, any stride/padding/dilation/groups.
/// Accumulates in f64 so it can serve as the yardstick for every f32 kernel.
pub fn conv2d(x: &Tensor, conv: &Conv2d) -> Tensor {
    let w = conv.weight.to_dense();
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let cout_g = cout / conv.groups;
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    for b in 0..n {
        for co in 0..cout {
            let g = co / cout_g;
            let bias = conv.bias.as_ref().map_or(0.0, |t| t.data[co]) as f64;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        for ky in 0..kh {
                            let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                                - conv.pads[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize
                                    - conv.pads[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    x.data[((b * cin + c) * h + iy as usize) * wd + ix as usize];
                                let wv = w.data[((co * cin_g + ci) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y.data[((b * cout + co) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// `y[n, o] = sum_k x[n, k] * W[o, k] + b[o]`, accumulated in f64.
pub fn linear(x: &Tensor, fc: &Linear) -> Tensor {
    let w = fc.weight.to_dense();
    let (n, k) = (x.shape[0], x.shape[1]);
    let out = w.shape[0];
    let mut y = Tensor::zeros(vec![n, out]);
    for b in 0..n {
        let row = &x.data[b * k..(b + 1) * k];
        for o in 0..out {
            let wrow = &w.data[o * k..(o + 1) * k];
            let acc: f64 = row
                .iter()
                .zip(wrow)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            y.data[b * out + o] = (acc + fc.bias.as_ref().map_or(0.0, |t| t.data[o]) as f64) as f32;
        }
    }
    y
}
