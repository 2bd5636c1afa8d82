//! Pow2 kernels kept for development, not run by the CPU executor (llm.c's `dev/`
//! habit: a variant that lost stays beside the winner, as a reference to compare with).
//!
//! - `pow2_conv`: the direct conv on the codes (im2col, zero codes skipped).
//!   `select::conv` never picks it: pow2 convs run the dense GEMM conv on weights
//!   decoded once per model (`ConvChoice::Packed` / `DecodedInPlace`), faster on every
//!   ResNet-18 shape measured (benches/kernels.rs, docs/benchmarks-archive.md). It stays
//!   public as `fast::pow2::pow2_conv` for such comparisons; `pow2_conv_matches_reference`
//!   in tests/inq.rs holds it to the reference beside the executor's path.

use super::decode::Decoder;
use crate::graph::{Conv2d, Tensor};
use crate::weights::Weights;
use rayon::prelude::*;

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
    let decoder = Decoder::new(w, &table);
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
            let decoder = &decoder;
            block.par_chunks_mut(p).enumerate().for_each_init(
                || vec![0f32; k + 16],
                |wrow, (oc, y)| {
                    let c = g * cout_g + oc;
                    decoder.decode(w.code_row(c), wrow);
                    let b = conv.bias.as_ref().map_or(0.0, |b| b.data[c]);
                    y.iter_mut().for_each(|v| *v = b);
                    for (kk, &wk) in wrow[..k].iter().enumerate() {
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
