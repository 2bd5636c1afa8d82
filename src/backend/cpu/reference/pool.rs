//! Naive pooling.

use crate::graph::{Pool2d, Tensor};

/// Max pooling; padded positions never win (they are skipped, not zeros).
pub fn max_pool(x: &Tensor, p: &Pool2d) -> Tensor {
    pool(x, p, |vals, _| {
        vals.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    })
}

/// Average pooling. The divisor is the window clipped to the padded input when
/// `count_include_pad`, else the number of real input elements in the window.
pub fn avg_pool(x: &Tensor, p: &Pool2d) -> Tensor {
    pool(x, p, |vals, padded_count| {
        let sum: f64 = vals.iter().map(|v| *v as f64).sum();
        let count = if p.count_include_pad {
            padded_count
        } else {
            vals.len()
        };
        (sum / count.max(1) as f64) as f32
    })
}

fn pool(x: &Tensor, p: &Pool2d, reduce: impl Fn(&[f32], usize) -> f32) -> Tensor {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let [oh, ow] = p
        .output_hw(h, w)
        .expect("shape inference checked the window fits");
    let mut y = Tensor::zeros(vec![n, c, oh, ow]);
    let mut vals = Vec::with_capacity(p.kernel[0] * p.kernel[1]);
    for plane in 0..n * c {
        let src = &x.data[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                vals.clear();
                let y0 = (oy * p.stride[0]) as isize - p.pads[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.pads[1] as isize;
                // Window clipped to the padded extent (for count_include_pad).
                let y1 = (y0 + p.kernel[0] as isize).min((h + p.pads[2]) as isize);
                let x1 = (x0 + p.kernel[1] as isize).min((w + p.pads[3]) as isize);
                let padded_count = ((y1 - y0) * (x1 - x0)).max(0) as usize;
                for iy in y0.max(0)..y1.min(h as isize) {
                    for ix in x0.max(0)..x1.min(w as isize) {
                        vals.push(src[iy as usize * w + ix as usize]);
                    }
                }
                y.data[(plane * oh + oy) * ow + ox] = reduce(&vals, padded_count);
            }
        }
    }
    y
}

/// Mean over H and W.
pub fn global_avg_pool(x: &Tensor) -> Tensor {
    let (n, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    let data = x
        .data
        .chunks(hw)
        .map(|plane| (plane.iter().map(|v| *v as f64).sum::<f64>() / hw as f64) as f32)
        .collect();
    Tensor {
        shape: vec![n, c, 1, 1],
        data,
    }
}
