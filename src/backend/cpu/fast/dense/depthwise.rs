//! Depthwise convolution (one input channel per group: MobileNet, EfficientNet,
//! ShuffleNet, ConvNeXt), direct: one task per output plane, each kernel tap a
//! multiply-add of an input row segment into an output row. The GEMM path does one
//! 1 x (kh * kw) by (kh * kw) x positions product per channel there, whose packing
//! cost more than the arithmetic (MobileNet v3-large's depthwise layers took 3.8 of its
//! 8.4 ms at batch 1 that way).

use crate::graph::{Conv2d, Tensor};
use rayon::prelude::*;

/// Whether `c` is a depthwise conv this kernel runs: groups of one input channel (any
/// channel multiplier), more than one group.
pub fn is_depthwise(c: &Conv2d) -> bool {
    c.groups > 1 && c.in_channels_per_group() == 1
}

/// The depthwise conv `c` (`is_depthwise`, dense weights) on `x`, then `max(0, ·)` when
/// `relu`.
pub fn depthwise_conv2d(x: &Tensor, c: &Conv2d, weights: &[f32], relu: bool) -> Tensor {
    let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let [oh, ow] = c
        .output_hw(h, w)
        .expect("shape inference checked the window fits");
    let cout = c.out_channels();
    let per_group = cout / c.groups;
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    if oh * ow == 0 {
        return y;
    }
    let geom = Geometry {
        h,
        w,
        oh,
        ow,
        kernel: c.kernel,
        stride: c.stride,
        dilation: c.dilation,
        pads: [c.pads[0], c.pads[1]],
    };
    let taps = c.kernel[0] * c.kernel[1];
    y.data
        .par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, out)| {
            let (image, co) = (plane / cout, plane % cout);
            let ci = co / per_group;
            let input = &x.data[(image * cin + ci) * h * w..][..h * w];
            let wt = &weights[co * taps..][..taps];
            let bias = c.bias.as_ref().map_or(0.0, |b| b.data[co]);
            plane_dispatch(out, input, wt, bias, &geom, relu);
        });
    y
}

/// What one output plane needs to know of the conv's geometry.
struct Geometry {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Top and left padding.
    pads: [usize; 2],
}

fn plane_dispatch(out: &mut [f32], input: &[f32], wt: &[f32], bias: f32, g: &Geometry, relu: bool) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { plane_avx2(out, input, wt, bias, g, relu) };
        return;
    }
    plane(out, input, wt, bias, g, relu)
}

/// `plane` compiled for AVX2 + FMA, so that the row loops vectorize 8 wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2(
    out: &mut [f32],
    input: &[f32],
    wt: &[f32],
    bias: f32,
    g: &Geometry,
    relu: bool,
) {
    plane(out, input, wt, bias, g, relu)
}

/// One output plane: the bias, then per output row and tap the input row segment the
/// tap reads (the output columns whose input column lies inside the row; padding adds
/// nothing), then the ReLU.
#[inline(always)]
fn plane(out: &mut [f32], input: &[f32], wt: &[f32], bias: f32, g: &Geometry, relu: bool) {
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    out.fill(bias);
    for oy in 0..g.oh {
        let row = &mut out[oy * g.ow..][..g.ow];
        for ky in 0..kh {
            let iy = (oy * sh + ky * dh) as isize - g.pads[0] as isize;
            if iy < 0 || iy >= g.h as isize {
                continue;
            }
            let src = &input[iy as usize * g.w..][..g.w];
            for kx in 0..kw {
                let weight = wt[ky * kw + kx];
                // Output column ox reads input column ox * sw + off.
                let off = (kx * dw) as isize - g.pads[1] as isize;
                let lo = if off < 0 {
                    ((-off) as usize).div_ceil(sw)
                } else {
                    0
                };
                let last = g.w as isize - 1 - off;
                if last < 0 {
                    continue;
                }
                let hi = (last as usize / sw + 1).min(g.ow);
                if lo >= hi {
                    continue;
                }
                let first = (lo * sw) as isize + off;
                if sw == 1 {
                    let s = &src[first as usize..][..hi - lo];
                    row[lo..hi]
                        .iter_mut()
                        .zip(s)
                        .for_each(|(o, &v)| *o += weight * v);
                } else {
                    row[lo..hi]
                        .iter_mut()
                        .zip(src[first as usize..].iter().step_by(sw))
                        .for_each(|(o, &v)| *o += weight * v);
                }
            }
        }
    }
    if relu {
        out.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}
