//! The dense fc: with AVX2+FMA a row-streaming GEMV at batch 1, the blocked GEMV at
//! 2-15 and the register-blocked GEMM on input panels at 16-64 (`select::dense_fc`);
//! otherwise sgemm. `decoded_rows_dots` runs the blocked GEMV on weight rows decoded as
//! they are used (the pow2 and sketch fcs).

use super::sgemm;
use crate::backend::cpu::fast::gemm::InputPanels;
use crate::backend::cpu::select::{self, DenseFc};
use crate::graph::{Linear, Tensor};
use rayon::prelude::*;

/// Output rows per parallel task of the fc layer.
const ROW_BLOCK: usize = 64;

/// Dense fully connected layer; same semantics as `reference::linear`.
///
/// With AVX2+FMA, by batch (see `select::DENSE_GEMM_MIN_BATCH`): 1, a row-streaming GEMV
/// (memory-bound: fc6 of AlexNet reads 151 MB of weights per call, so the rate is the
/// memory bandwidth); 2-15, the blocked GEMV (`gemv_rows`); 16-64, the register-blocked
/// GEMM (`gemm::InputPanels`; its AVX-512 micro-kernel where the CPU has it) on the
/// weights in place and the inputs in panels. Otherwise sgemm.
pub fn linear(x: &Tensor, fc: &Linear) -> Tensor {
    linear_isa(x, fc, crate::backend::cpu::fast::Isa::default())
}

/// `linear` with the vector instructions of `isa` (the GEMM's AVX-512 micro-kernel
/// where `isa` allows it): `linear_as` with `select::dense_fc`'s variant.
pub fn linear_isa(x: &Tensor, fc: &Linear, isa: crate::backend::cpu::fast::Isa) -> Tensor {
    let (n, k) = (x.shape[0], x.shape[1]);
    linear_as(x, fc, select::dense_fc(n, k, isa))
}

/// `linear` on the kernel `choice` (`select::dense_fc` decides it). A GEMV or GEMM
/// choice on a CPU without AVX2+FMA, or with no input features, runs sgemm; `GemvRow`
/// at a batch other than 1 runs the blocked GEMV.
pub fn linear_as(x: &Tensor, fc: &Linear, choice: DenseFc) -> Tensor {
    let w = fc.weight.to_dense();
    let (n, k, out) = (x.shape[0], x.shape[1], w.shape[0]);
    if n == 0 || out == 0 {
        return Tensor::zeros(vec![n, out]);
    }
    let choice = match choice {
        _ if k == 0 || !gemv_supported() => DenseFc::Sgemm,
        DenseFc::GemvRow if n != 1 => DenseFc::GemvRows,
        choice => choice,
    };
    let panels = match choice {
        DenseFc::Gemm { avx512 } => Some(InputPanels::new(&x.data, n, k, k, avx512)),
        _ => None,
    };
    // y^T[out x n] = W[out x k] * x^T[k x n], split over blocks of output rows.
    let blocks: Vec<Vec<f32>> = (0..out)
        .step_by(ROW_BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| {
            let rows = ROW_BLOCK.min(out - r0);
            let w_rows = &w.data[r0 * k..(r0 + rows) * k];
            if let Some(panels) = &panels {
                return panels.dots_with_rows(w_rows, rows);
            }
            let mut yt = vec![0.0; rows * n];
            match choice {
                DenseFc::GemvRow => {
                    for (y, w_row) in yt.iter_mut().zip(w_rows.chunks_exact(k)) {
                        *y = gemv_row(w_row, &x.data[..k]);
                    }
                }
                DenseFc::GemvRows => {
                    for (r, dst) in (0..rows)
                        .step_by(GEMV_ROWS)
                        .zip(yt.chunks_mut(GEMV_ROWS * n))
                    {
                        let ws = Rows {
                            data: &w_rows[r * k..],
                            stride: k,
                            count: dst.len() / n,
                        };
                        let xs = Rows {
                            data: &x.data[..n * k],
                            stride: k,
                            count: n,
                        };
                        gemv_rows(ws, xs, k, dst);
                    }
                }
                DenseFc::Gemm { .. } | DenseFc::Sgemm => {
                    sgemm(
                        rows, k, n, w_rows, k as isize, 1, &x.data, 1, k as isize, &mut yt,
                        n as isize,
                    );
                }
            }
            yt
        })
        .collect();
    crate::backend::cpu::fast::layout::transpose_blocks(
        &blocks,
        ROW_BLOCK,
        n,
        out,
        fc.bias.as_ref(),
    )
}

/// Whether this CPU runs `gemv_row` (x86-64 with AVX2 and FMA, detected once).
pub(crate) fn gemv_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `w · x` for one input row (batch 1: the weights stream from memory once, so the
/// rate is the memory bandwidth). Callers check `gemv_supported()`.
fn gemv_row(w: &[f32], x: &[f32]) -> f32 {
    assert_eq!(x.len(), w.len());
    #[cfg(target_arch = "x86_64")]
    {
        assert!(gemv_supported());
        // SAFETY: AVX2 and FMA are present (asserted); the lengths are checked above.
        unsafe { gemv_row_avx2(w, x) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemv_supported() is false off x86-64");
}

/// Weight rows per call of `gemv_rows`.
const GEMV_ROWS: usize = 3;
/// Input rows per pass of `gemv_rows`' kernel.
const GEMV_PASS_INPUTS: usize = 4;

/// `count` rows of a matrix, `stride` floats apart, from the start of `data`.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    stride: usize,
    count: usize,
}

impl Rows<'_> {
    /// Whether every row has `k` floats in `data` (and `k` fits the stride).
    fn holds(&self, k: usize) -> bool {
        k <= self.stride
            && (self.count == 0 || self.data.len() >= (self.count - 1) * self.stride + k)
    }
}

/// `[row][input]` dots of the weight rows `rows` with the `n` input rows of `x` (K = `k`
/// floats each), for weights that are made as they are used: `GEMV_ROWS` rows at a time
/// are written by `decode(row, dst)` into buffers of `stride` floats (the first `k`
/// read), then dotted with every input row by `gemv_rows` (without AVX2+FMA, by plain
/// dots).
pub(in crate::backend::cpu::fast) fn decoded_rows_dots(
    rows: std::ops::Range<usize>,
    stride: usize,
    x: &[f32],
    n: usize,
    k: usize,
    mut decode: impl FnMut(usize, &mut [f32]),
) -> Vec<f32> {
    assert!(n > 0 && k <= stride && x.len() >= n * k);
    let mut dots = vec![0f32; rows.len() * n];
    let mut wrows = vec![0f32; GEMV_ROWS * stride];
    let gemv = gemv_supported();
    for (c0, ys) in rows.step_by(GEMV_ROWS).zip(dots.chunks_mut(GEMV_ROWS * n)) {
        let count = ys.len() / n;
        for (j, wrow) in wrows.chunks_exact_mut(stride).take(count).enumerate() {
            decode(c0 + j, wrow);
        }
        if gemv {
            let ws = Rows {
                data: &wrows,
                stride,
                count,
            };
            let xs = Rows {
                data: x,
                stride: k,
                count: n,
            };
            gemv_rows(ws, xs, k, ys);
        } else {
            for (wrow, yr) in wrows.chunks_exact(stride).zip(ys.chunks_exact_mut(n)) {
                for (y, xr) in yr.iter_mut().zip(x.chunks_exact(k.max(1))) {
                    *y = wrow[..k].iter().zip(xr).map(|(a, b)| a * b).sum();
                }
            }
        }
    }
    dots
}

/// `dst[r·n + b] = w_r[..k] · x_b[..k]` for `w.count` (1 to `GEMV_ROWS`) weight rows and
/// `n = x.count` input rows: the small-batch GEMV.
///
/// Why blocks of 3 rows x 4 inputs: with one row at a time (`gemv_row`) every input row
/// streams from L2 once per weight row, 8 x 36 KiB per row of fc6 at batch 8, which
/// bounds the layer well above its weight stream (fc6 batch 8: sgemm took 14-16 ms,
/// against 6-8 ms to read the weights). Three rows share each input load (12 accumulators,
/// 3 weight registers and an input: the 16 AVX registers), and the 4-input passes re-read
/// the 3 rows from L1/L2, not memory. Callers check `gemv_supported()`.
fn gemv_rows(w: Rows, x: Rows, k: usize, dst: &mut [f32]) {
    let (rows, stride, n, x_stride) = (w.count, w.stride, x.count, x.stride);
    assert!((1..=GEMV_ROWS).contains(&rows) && w.holds(k) && x.holds(k));
    assert!(dst.len() == rows * n);
    let (w, xs) = (w.data, x.data);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(gemv_supported());
        let mut part = [0f32; GEMV_ROWS * GEMV_PASS_INPUTS];
        for b0 in (0..n).step_by(GEMV_PASS_INPUTS) {
            let m = GEMV_PASS_INPUTS.min(n - b0);
            let x = &xs[b0 * x_stride..];
            let part = &mut part[..rows * m];
            // SAFETY: AVX2 and FMA are present (asserted); `w` holds `rows` rows of `k`
            // at `stride`, `x` holds `m` rows of `k` at `x_stride` (b0 + m ≤ n), `part`
            // holds `rows · m` (checked).
            unsafe {
                let (st, xst) = (stride, x_stride);
                match (rows, m) {
                    (1, 1) => gemv_block::<1, 1>(w, st, k, x, xst, part),
                    (1, 2) => gemv_block::<1, 2>(w, st, k, x, xst, part),
                    (1, 3) => gemv_block::<1, 3>(w, st, k, x, xst, part),
                    (1, _) => gemv_block::<1, 4>(w, st, k, x, xst, part),
                    (2, 1) => gemv_block::<2, 1>(w, st, k, x, xst, part),
                    (2, 2) => gemv_block::<2, 2>(w, st, k, x, xst, part),
                    (2, 3) => gemv_block::<2, 3>(w, st, k, x, xst, part),
                    (2, _) => gemv_block::<2, 4>(w, st, k, x, xst, part),
                    (_, 1) => gemv_block::<3, 1>(w, st, k, x, xst, part),
                    (_, 2) => gemv_block::<3, 2>(w, st, k, x, xst, part),
                    (_, 3) => gemv_block::<3, 3>(w, st, k, x, xst, part),
                    (_, _) => gemv_block::<3, 4>(w, st, k, x, xst, part),
                }
            }
            for r in 0..rows {
                dst[r * n + b0..r * n + b0 + m].copy_from_slice(&part[r * m..(r + 1) * m]);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemv_supported() is false off x86-64");
}

/// `out[r·N + b]` = row `r` of `w` (at `stride`) · input row `b` of `xs` (at
/// `x_stride`), for `R` rows and `N` inputs: 8 weights per step, each input load shared
/// by the `R` rows.
///
/// # Safety
/// AVX2 and FMA must be present; `w` must hold `(R − 1)·stride + k` floats, `xs`
/// `(N − 1)·x_stride + k` and `out` `R·N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_block<const R: usize, const N: usize>(
    w: &[f32],
    stride: usize,
    k: usize,
    xs: &[f32],
    x_stride: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let main = k / 8 * 8;
    // acc[b][r]: input b against row r.
    let mut acc = [[_mm256_setzero_ps(); R]; N];
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    let mut i = 0;
    while i < main {
        // SAFETY: (caller) i + 8 <= k, rows at r·stride hold k floats, inputs at
        // b·x_stride too.
        unsafe {
            let mut wv = [_mm256_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(wp.add(r * stride + i));
            }
            for (b, accb) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(b * x_stride + i));
                for (a, wr) in accb.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(*wr, xv, *a);
                }
            }
        }
        i += 8;
    }
    for (b, accb) in acc.iter().enumerate() {
        for (r, a) in accb.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            let mut s = lanes.iter().sum::<f32>();
            for j in main..k {
                s += w[r * stride + j] * xs[b * x_stride + j];
            }
            out[r * N + b] = s;
        }
    }
}

/// `gemv_row` with AVX2: 16 weights per step into two 8-lane accumulators (two
/// independent FMA chains), then a scalar tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemv_row_avx2(w: &[f32], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let k = w.len();
    let main = k / 16 * 16;
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i < main {
        // SAFETY: i + 16 <= main <= k = x.len().
        unsafe {
            let (wp, xp) = (w.as_ptr().add(i), x.as_ptr().add(i));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(wp), _mm256_loadu_ps(xp), acc[0]);
            acc[1] = _mm256_fmadd_ps(
                _mm256_loadu_ps(wp.add(8)),
                _mm256_loadu_ps(xp.add(8)),
                acc[1],
            );
        }
        i += 16;
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1])) };
    let mut s = lanes.iter().sum::<f32>();
    for j in main..k {
        s += w[j] * x[j];
    }
    s
}
