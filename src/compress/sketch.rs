//! Network sketching (Guo et al., CVPR 2017, arXiv:1706.02021).
//!
//! Each output channel (conv filter or fc row) `w ∈ R^K` is approximated by
//! `Σ_{j<m} a_j B_j` with `B_j ∈ {−1,+1}^K`:
//! - direct: `R_0 = w`; `B_j = sign(R_{j−1})` (sign(0) = +1), `a_j = mean|R_{j−1}|`,
//!   `R_j = R_{j−1} − a_j B_j`. With m = 1 this is BWN (XNOR-Net's binary weights).
//! - refined: after each new `B_j`, all of `a_1..a_j` are refit by least squares on the
//!   original `w`, and the next sign is taken from the new residual.
//!
//! Arithmetic is f64; scales are rounded to f32 when stored and the residual is
//! updated with the rounded value, so the reported error is that of the stored weights.

use super::CompressError;
use crate::graph::{Graph, Op, Tensor};
use crate::weights::{words_for, SketchWeights, Weights};
use rayon::prelude::*;
use std::collections::HashMap;

/// Settings of `sketch_graph`.
#[derive(Clone, Debug, PartialEq)]
pub struct SketchOptions {
    /// Binary bases per output channel (m) for every sketched layer.
    pub bases: usize,
    /// Refined sketching (least-squares refit of the scales) instead of direct.
    pub refined: bool,
    /// Names of Conv/Linear nodes to leave dense (often the first and last layer).
    pub dense_layers: Vec<String>,
    /// Per-layer override of `bases`, by node name.
    pub bases_per_layer: HashMap<String, usize>,
}

impl Default for SketchOptions {
    fn default() -> Self {
        SketchOptions {
            bases: 3,
            refined: true,
            dense_layers: Vec::new(),
            bases_per_layer: HashMap::new(),
        }
    }
}

/// What sketching did to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Node name.
    pub name: String,
    /// "conv" or "linear".
    pub op: &'static str,
    /// Logical weight shape.
    pub shape: Vec<usize>,
    /// Bases used (m).
    pub bases: usize,
    /// `||W − Ŵ||_F / ||W||_F` over the whole layer (0 for an all-zero layer).
    pub rel_error: f64,
    /// Weight bytes before (dense f32); bias not counted.
    pub bytes_before: usize,
    /// Weight bytes after (bit words + scales); bias not counted.
    pub bytes_after: usize,
}

/// Sketches every Conv and Linear node not named in `opts.dense_layers`.
///
/// Errors: a name in `dense_layers` or `bases_per_layer` that is not a Conv/Linear
/// node, zero bases for a layer, a layer whose weights are not dense, or non-finite weights.
pub fn sketch_graph(
    graph: &Graph,
    opts: &SketchOptions,
) -> Result<(Graph, Vec<LayerReport>), CompressError> {
    let is_layer = |name: &str| {
        graph
            .nodes
            .iter()
            .any(|n| n.name == name && matches!(n.op, Op::Conv(_) | Op::Linear(_)))
    };
    for name in opts.dense_layers.iter().chain(opts.bases_per_layer.keys()) {
        if !is_layer(name) {
            return Err(CompressError::UnknownLayer(name.clone()));
        }
    }
    let mut out = graph.clone();
    let mut reports = Vec::new();
    for node in &mut out.nodes {
        if opts.dense_layers.contains(&node.name) {
            continue;
        }
        let (weight, op) = match &mut node.op {
            Op::Conv(c) => (&mut c.weight, "conv"),
            Op::Linear(l) => (&mut l.weight, "linear"),
            _ => continue,
        };
        let bases = opts
            .bases_per_layer
            .get(&node.name)
            .copied()
            .unwrap_or(opts.bases);
        if bases == 0 {
            return Err(CompressError::ZeroBases(node.name.clone()));
        }
        let Weights::Dense(w) = &*weight else {
            return Err(CompressError::NotDense {
                layer: node.name.clone(),
                encoding: weight.encoding(),
            });
        };
        if w.data.iter().any(|v| !v.is_finite()) {
            return Err(CompressError::NonFinite(node.name.clone()));
        }
        let sketch = sketch_tensor(w, bases, opts.refined);
        let rel_error = relative_error(&w.data, &sketch.dense_data());
        let report = LayerReport {
            name: node.name.clone(),
            op,
            shape: w.shape.clone(),
            bases,
            rel_error,
            bytes_before: w.bytes(),
            bytes_after: sketch.bytes(),
        };
        *weight = Weights::Sketch(sketch);
        reports.push(report);
    }
    Ok((out, reports))
}

/// `||a − b|| / ||a||` in f64; 0 when `a` is all zero and equal to `b`.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*x as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// Sketches a dense weight tensor `[Cout, ...]` row by row (each output channel
/// over its K axis) with `bases` binary bases. The weights must be finite
/// (`sketch_graph` checks). `bases = 0` gives an empty (all-zero) sketch.
pub fn sketch_tensor(w: &Tensor, bases: usize, refined: bool) -> SketchWeights {
    let rows = w.shape.first().copied().unwrap_or(0);
    let k: usize = w.shape.iter().skip(1).product();
    let wpr = words_for(k);
    let mut bits = vec![0u32; rows * bases * wpr];
    let mut scales = vec![0f32; rows * bases];
    if k > 0 && bases > 0 {
        // Rows are independent: one rayon task per output channel, packing as it goes
        // so that only one row's f64 signs are alive per task.
        bits.par_chunks_exact_mut(bases * wpr)
            .zip(scales.par_chunks_exact_mut(bases))
            .zip(w.data.par_chunks_exact(k))
            .for_each(|((out, sc), row)| {
                let (signs, a) = sketch_row(row, bases, refined);
                for (j, plane) in out.chunks_exact_mut(wpr).enumerate() {
                    for (i, &s) in signs[j * k..(j + 1) * k].iter().enumerate() {
                        if s > 0.0 {
                            plane[i / 32] |= 1 << (i % 32);
                        }
                    }
                }
                sc.copy_from_slice(&a);
            });
    }
    SketchWeights::new(w.shape.clone(), bases, bits, scales)
        .expect("sketch_tensor sizes its arrays from the shape")
}

/// One output channel: returns the bases as ±1 (`[m][K]`, f64) and the f32 scales.
pub fn sketch_row(w: &[f32], m: usize, refined: bool) -> (Vec<f64>, Vec<f32>) {
    let k = w.len();
    let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let mut resid = w64.clone();
    let mut signs = Vec::with_capacity(m * k);
    let mut a = Vec::with_capacity(m);
    for j in 0..m {
        let start = signs.len();
        signs.extend(resid.iter().map(|&r| if r >= 0.0 { 1.0 } else { -1.0 }));
        let b = &signs[start..];
        if refined {
            a = least_squares(&signs, j + 1, k, &w64)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            resid.copy_from_slice(&w64);
            for (jj, &aj) in a.iter().enumerate() {
                let bj = &signs[jj * k..(jj + 1) * k];
                for (r, s) in resid.iter_mut().zip(bj) {
                    *r -= aj as f64 * s;
                }
            }
        } else {
            let mean = if k == 0 {
                0.0
            } else {
                resid.iter().map(|r| r.abs()).sum::<f64>() / k as f64
            };
            let aj = mean as f32;
            for (r, s) in resid.iter_mut().zip(b) {
                *r -= aj as f64 * s;
            }
            a.push(aj);
        }
    }
    (signs, a)
}

/// Least-squares scales for `cols` ±1 columns (`signs[j * k + i]`) fitting `w`:
/// `a = (AᵀA)⁻¹ Aᵀ w` by a Cholesky factorisation of the Gram matrix that skips a
/// column lying in the span of the earlier ones (its scale is 0), so linearly
/// dependent bases (repeated or negated sign patterns) never produce NaN.
fn least_squares(signs: &[f64], cols: usize, k: usize, w: &[f64]) -> Vec<f64> {
    let col = |j: usize| &signs[j * k..(j + 1) * k];
    // Gram matrix entries are integers (K − 2·Hamming), exact in f64.
    let mut g = vec![0f64; cols * cols];
    let mut rhs = vec![0f64; cols];
    for i in 0..cols {
        for j in 0..=i {
            let v: f64 = col(i).iter().zip(col(j)).map(|(x, y)| x * y).sum();
            g[i * cols + j] = v;
            g[j * cols + i] = v;
        }
        rhs[i] = col(i).iter().zip(w).map(|(x, y)| x * y).sum();
    }
    // Lower-triangular L with L Lᵀ = G restricted to the kept columns.
    let mut l = vec![0f64; cols * cols];
    let mut kept = vec![false; cols];
    for i in 0..cols {
        for j in 0..i {
            if !kept[j] {
                continue;
            }
            let mut s = g[i * cols + j];
            for p in 0..j {
                if kept[p] {
                    s -= l[i * cols + p] * l[j * cols + p];
                }
            }
            l[i * cols + j] = s / l[j * cols + j];
        }
        let mut d = g[i * cols + i];
        for p in 0..i {
            if kept[p] {
                d -= l[i * cols + p] * l[i * cols + p];
            }
        }
        // A dependent column leaves (up to rounding) nothing on the diagonal.
        if d > 1e-9 * g[i * cols + i].max(1.0) {
            l[i * cols + i] = d.sqrt();
            kept[i] = true;
        }
    }
    // Forward substitution L y = rhs, then back substitution Lᵀ a = y, kept columns only.
    let mut y = vec![0f64; cols];
    for i in 0..cols {
        if !kept[i] {
            continue;
        }
        let mut s = rhs[i];
        for p in 0..i {
            if kept[p] {
                s -= l[i * cols + p] * y[p];
            }
        }
        y[i] = s / l[i * cols + i];
    }
    let mut a = vec![0f64; cols];
    for i in (0..cols).rev() {
        if !kept[i] {
            continue;
        }
        let mut s = y[i];
        for p in i + 1..cols {
            if kept[p] {
                s -= l[p * cols + i] * a[p];
            }
        }
        a[i] = s / l[i * cols + i];
    }
    a
}
