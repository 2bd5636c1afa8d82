//! Depthwise convolution (one input channel per group: MobileNet, EfficientNet,
//! ShuffleNet, ConvNeXt), direct, in two forms:
//! - planes at least `LANES_BELOW` wide: one task per output plane, each kernel tap a
//!   multiply-add of an input row segment into an output row (vectorized along the row);
//! - narrower planes: blocks of `LANES` channels interleaved into a padded scratch buffer,
//!   each tap one `LANES`-wide multiply-add per output pixel (rows there are too short to
//!   vectorize along).
//!
//! The GEMM path did one 1 x (kh * kw) by (kh * kw) x positions product per channel, whose
//! packing cost more than the arithmetic. MobileNet v3-large's depthwise layers at batch 1
//! (AMD EPYC Zen 4, `cnnpack bench --layers 500`, three runs on a VM whose speed drifted):
//! ~3.5 ms on the GEMM, 4.6 ms with the row form alone, 2.1 ms with both; EfficientNet-B0's
//! ~9.6, 8.3, 3.5 ms.

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
    let plane_of =
        |image: usize, co: usize| &x.data[(image * cin + co / per_group) * h * w..][..h * w];
    let bias_of = |co: usize| c.bias.as_ref().map_or(0.0, |b| b.data[co]);
    if ow < LANES_BELOW {
        // Narrow planes: LANES channels at a time, interleaved (see `block_lanes`).
        let blocks = cout / LANES;
        let tasks: Vec<(usize, usize)> = (0..n)
            .flat_map(|image| (0..blocks).map(move |b| (image, b)))
            .collect();
        let out = super::OutPtr(y.data.as_mut_ptr());
        tasks.par_iter().for_each(|&(image, b)| {
            let co0 = b * LANES;
            let planes: [&[f32]; LANES] = std::array::from_fn(|l| plane_of(image, co0 + l));
            let mut result = vec![0.0f32; LANES * oh * ow];
            lanes_dispatch(
                &mut result,
                &planes,
                &weights[co0 * taps..][..LANES * taps],
                co0,
                &bias_of,
                &geom,
                relu,
            );
            for l in 0..LANES {
                let plane = (image * cout + co0 + l) * oh * ow;
                // SAFETY: each task writes the LANES output planes of its own (image,
                // block), disjoint from every other task's and inside `y`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        result[l * oh * ow..].as_ptr(),
                        out.at(plane),
                        oh * ow,
                    )
                };
            }
        });
        // The channels past the last whole block, one plane each.
        y.data
            .par_chunks_mut(oh * ow)
            .enumerate()
            .filter(|(plane, _)| plane % cout >= blocks * LANES)
            .for_each(|(plane, dst)| {
                let (image, co) = (plane / cout, plane % cout);
                let wt = &weights[co * taps..][..taps];
                plane_dispatch(dst, plane_of(image, co), wt, bias_of(co), &geom, relu);
            });
        return y;
    }
    y.data
        .par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, out)| {
            let (image, co) = (plane / cout, plane % cout);
            let wt = &weights[co * taps..][..taps];
            plane_dispatch(out, plane_of(image, co), wt, bias_of(co), &geom, relu);
        });
    y
}

/// Channels computed together on narrow planes (one AVX2 register of f32).
const LANES: usize = 8;

/// Output widths below which the channel-interleaved kernel runs: there an output row is
/// shorter than a few vectors and the per-row loops of `plane` are mostly overhead
/// (MobileNet v3-large's 7x7 depthwise layers ran at ~5 GFLOP/s on them).
const LANES_BELOW: usize = 32;

fn lanes_dispatch(
    out: &mut [f32],
    planes: &[&[f32]; LANES],
    weights: &[f32],
    co0: usize,
    bias_of: &(dyn Fn(usize) -> f32 + Sync),
    g: &Geometry,
    relu: bool,
) {
    let bias: [f32; LANES] = std::array::from_fn(|l| bias_of(co0 + l));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { block_lanes_avx2(out, planes, weights, &bias, g, relu) };
        return;
    }
    block_lanes(out, planes, weights, &bias, g, relu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_lanes_avx2(
    out: &mut [f32],
    planes: &[&[f32]; LANES],
    weights: &[f32],
    bias: &[f32; LANES],
    g: &Geometry,
    relu: bool,
) {
    block_lanes(out, planes, weights, bias, g, relu)
}

/// `LANES` channels of one image: their input planes interleaved into a zero-padded
/// `[padded row][padded column][lane]` buffer, then per output pixel and tap one
/// `LANES`-wide multiply-add (one vector), written back as `LANES` planes of `out`.
#[inline(always)]
fn block_lanes(
    out: &mut [f32],
    planes: &[&[f32]; LANES],
    weights: &[f32],
    bias: &[f32; LANES],
    g: &Geometry,
    relu: bool,
) {
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let taps = kh * kw;
    // The padded extent that every window reads inside.
    let ph = (g.oh - 1) * sh + (kh - 1) * dh + 1;
    let pw = (g.ow - 1) * sw + (kw - 1) * dw + 1;
    let mut pin = vec![0.0f32; ph.max(1) * pw.max(1) * LANES];
    for y in 0..g.h {
        let py = y + g.pads[0];
        if py >= ph {
            continue;
        }
        for x in 0..g.w {
            let px = x + g.pads[1];
            if px >= pw {
                continue;
            }
            let dst = &mut pin[(py * pw + px) * LANES..][..LANES];
            for (l, d) in dst.iter_mut().enumerate() {
                *d = planes[l][y * g.w + x];
            }
        }
    }
    // Weights as [tap][lane].
    let wt: Vec<[f32; LANES]> = (0..taps)
        .map(|t| std::array::from_fn(|l| weights[l * taps + t]))
        .collect();
    let plane = g.oh * g.ow;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut acc = *bias;
            for ky in 0..kh {
                let row = (oy * sh + ky * dh) * pw;
                for kx in 0..kw {
                    let v = &pin[(row + ox * sw + kx * dw) * LANES..][..LANES];
                    let wv = &wt[ky * kw + kx];
                    for l in 0..LANES {
                        acc[l] += wv[l] * v[l];
                    }
                }
            }
            let at = oy * g.ow + ox;
            for l in 0..LANES {
                out[l * plane + at] = if relu { acc[l].max(0.0) } else { acc[l] };
            }
        }
    }
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
