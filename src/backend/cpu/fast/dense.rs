//! Dense conv and fc: im2col + `matrixmultiply::sgemm`, parallel with rayon; fc at
//! batch 1-4 is a row-streaming AVX2 GEMV instead (see `linear`).
//!
//! Why im2col and not direct: sgemm's packed micro-kernels reach several times the
//! FLOP rate of a direct loop nest on x86 (AVX2/FMA picked at run time), and the
//! im2col buffer (K x OH*OW per image and group) is small for the CNNs in the zoo.
//! 1x1 convolutions with stride 1 and no padding skip im2col: the input already is
//! the K x P matrix.

use crate::graph::{Conv2d, Linear, Tensor};
use rayon::prelude::*;

/// Output positions per column block: one block's im2col (K x 256) stays in L2 for the
/// common K (576 floats = 590 KB), and sgemm packs it straight after it is written.
const COLUMN_BLOCK: usize = 256;
/// Parallel tasks aimed for per conv call, per thread: a few per thread so that
/// uneven tasks still balance.
const TASKS_PER_THREAD: usize = 3;
/// Shortest row tile when a column block's GEMM is split over output channels.
const MIN_TILE_ROWS: usize = 32;

/// `c[m x n] = a[m x k] * b[k x n]` (overwriting `c`) with explicit row/column strides
/// (in elements).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: isize,
    csa: isize,
    b: &[f32],
    rsb: isize,
    csb: isize,
    c: &mut [f32],
    rsc: isize,
) {
    debug_assert!(a.len() >= (m.max(1) - 1) * rsa as usize + (k.max(1) - 1) * csa as usize);
    debug_assert!(b.len() >= (k.max(1) - 1) * rsb as usize + (n.max(1) - 1) * csb as usize);
    debug_assert!(c.len() >= (m.max(1) - 1) * rsc as usize + n);
    // SAFETY: the asserts above (the callers' contract) cover every element sgemm reads
    // or writes with these dimensions and strides.
    unsafe {
        sgemm_raw(
            m,
            k,
            n,
            a.as_ptr(),
            [rsa, csa],
            b.as_ptr(),
            [rsb, csb],
            0.0,
            c.as_mut_ptr(),
            rsc,
        )
    }
}

/// `matrixmultiply::sgemm` with `alpha = 1`, unit column stride for `c`.
///
/// # Safety
/// Every element addressed by the dimensions and strides must be inside the
/// allocations behind `a`, `b` and `c`, and no other thread may touch that part of `c`.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_raw(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    [rsa, csa]: [isize; 2],
    b: *const f32,
    [rsb, csb]: [isize; 2],
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, 1);
}

/// The output pointer shared by the tile tasks of one conv call.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tiles of one call write pairwise disjoint regions of the output (distinct
// images, output channels or columns), and the call waits for all of them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` past the start. A method (rather than `.0`) so that closures
    /// capture the whole `Send + Sync` wrapper, not the raw pointer field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Dense convolution; same semantics as `reference::conv2d`.
///
/// One task per (image, group, block of `COLUMN_BLOCK` output positions): im2col of the
/// block (skipped for 1x1 stride-1 unpadded convs, whose input already is the K x P
/// matrix), then `W_g [cout_g x K] · cols [K x block]` written straight into the output
/// (pre-filled with the bias, beta = 1). When there are fewer blocks than
/// `TASKS_PER_THREAD` per thread (the 7x7 and 14x14 layers of a batch-1 ResNet), each
/// block's GEMM is also split over output channels, so both cores stay busy.
pub fn conv2d(x: &Tensor, conv: &Conv2d) -> Tensor {
    let w = conv.weight.to_dense();
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let (groups, cout_g, k, p) = (conv.groups, cout / conv.groups, cin_g * kh * kw, oh * ow);
    let direct = kh == 1 && kw == 1 && conv.stride == [1, 1] && conv.pads == [0; 4];
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    if p == 0 || cout == 0 {
        return y;
    }
    let beta = match &conv.bias {
        Some(bias) => {
            y.data
                .par_chunks_mut(p)
                .enumerate()
                .for_each(|(plane, dst)| dst.fill(bias.data[plane % cout]));
            1.0
        }
        None => 0.0,
    };
    let tasks: Vec<(usize, usize, usize)> = (0..n)
        .flat_map(|b| {
            (0..groups).flat_map(move |g| (0..p).step_by(COLUMN_BLOCK).map(move |c0| (b, g, c0)))
        })
        .collect();
    let want = TASKS_PER_THREAD * rayon::current_num_threads();
    let row_split = want
        .div_ceil(tasks.len())
        .min(cout_g.div_ceil(MIN_TILE_ROWS))
        .max(1);
    let row_step = cout_g.div_ceil(row_split).next_multiple_of(8);
    let out = OutPtr(y.data.as_mut_ptr());
    let out_len = y.data.len();
    tasks.par_iter().for_each(|&(b, g, c0)| {
        let cols = COLUMN_BLOCK.min(p - c0);
        let image = &x.data[(b * cin + g * cin_g) * h * wd..(b * cin + (g + 1) * cin_g) * h * wd];
        let col_buf;
        // B = [K x cols] at row stride rsb.
        let (b_mat, rsb) = if direct {
            (&image[c0..], p)
        } else {
            col_buf = im2col(image, conv, [h, wd], [kh, kw], ow, c0, cols, cin_g);
            (&col_buf[..], cols)
        };
        let gemm_rows = |m0: usize| {
            let rows = row_step.min(cout_g - m0);
            let a = &w.data[(g * cout_g + m0) * k..][..rows * k];
            let c_off = (b * cout + g * cout_g + m0) * p + c0;
            assert!(b_mat.len() >= (k - 1) * rsb + cols);
            assert!(c_off + (rows - 1) * p + cols <= out_len);
            // SAFETY: `a` holds rows·K weights; `b_mat` covers K rows of stride rsb and
            // `cols` columns (asserted); the C region (rows x cols at stride P from c_off,
            // inside `y`, asserted) belongs to this (image, channel range, column block)
            // only, and `y` is not otherwise borrowed until every task has finished.
            unsafe {
                sgemm_raw(
                    rows,
                    k,
                    cols,
                    a.as_ptr(),
                    [k as isize, 1],
                    b_mat.as_ptr(),
                    [rsb as isize, 1],
                    beta,
                    out.at(c_off),
                    p as isize,
                )
            }
        };
        if row_split == 1 {
            gemm_rows(0);
        } else {
            (0..cout_g)
                .step_by(row_step)
                .collect::<Vec<_>>()
                .into_par_iter()
                .for_each(gemm_rows);
        }
    });
    y
}

/// Patches for output positions `c0 .. c0+cols` as a `[K, cols]` row-major matrix,
/// K in the order documented in `weights` (ci, ky, kx). Padding reads as 0.
#[allow(clippy::too_many_arguments)]
fn im2col(
    image: &[f32],
    conv: &Conv2d,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    ow: usize,
    c0: usize,
    cols: usize,
    cin_g: usize,
) -> Vec<f32> {
    let mut col = vec![0.0; cin_g * kh * kw * cols];
    for ci in 0..cin_g {
        let plane = &image[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &mut col[((ci * kh + ky) * kw + kx) * cols..][..cols];
                // Walk the output positions row by row: one bounds check per output row
                // and a contiguous (or strided) run per row, no division per element.
                let (mut j, mut oy, mut ox0) = (0, c0 / ow, c0 % ow);
                let x_off = (kx * conv.dilation[1]) as isize - conv.pads[1] as isize;
                while j < cols {
                    let run = (ow - ox0).min(cols - j);
                    let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                        - conv.pads[0] as isize;
                    if iy >= 0 && iy < h as isize {
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let dst = &mut row[j..j + run];
                        if conv.stride[1] == 1 {
                            // Stride 1: the in-bounds part of the run is one slice copy.
                            let lo = (-x_off - ox0 as isize).clamp(0, run as isize) as usize;
                            let hi = (w as isize - x_off - ox0 as isize)
                                .clamp(lo as isize, run as isize)
                                as usize;
                            if hi > lo {
                                let s0 = (ox0 as isize + lo as isize + x_off) as usize;
                                dst[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                            }
                        } else {
                            for (i, d) in dst.iter_mut().enumerate() {
                                let ix = ((ox0 + i) * conv.stride[1]) as isize + x_off;
                                if ix >= 0 && ix < w as isize {
                                    *d = src[ix as usize];
                                }
                            }
                        }
                    }
                    j += run;
                    oy += 1;
                    ox0 = 0;
                }
            }
        }
    }
    col
}

/// Output rows per parallel task of the fc layer.
const ROW_BLOCK: usize = 64;

/// Largest batch that `linear` runs as a GEMV (each weight row streamed once from
/// memory and dotted with every input row) rather than through sgemm, whose packing of
/// the weight panel costs as much as the product when there are so few columns.
pub(super) const GEMV_MAX_BATCH: usize = 4;

/// Dense fully connected layer; same semantics as `reference::linear`.
///
/// Batch 1..=4 with AVX2+FMA: a row-streaming GEMV (memory-bound: fc6 of AlexNet reads
/// 151 MB of weights per call, so the rate is the memory bandwidth). Otherwise sgemm.
pub fn linear(x: &Tensor, fc: &Linear) -> Tensor {
    let w = fc.weight.to_dense();
    let (n, k, out) = (x.shape[0], x.shape[1], w.shape[0]);
    if n == 0 || out == 0 {
        return Tensor::zeros(vec![n, out]);
    }
    let gemv = n <= GEMV_MAX_BATCH && k > 0 && gemv_supported();
    // y^T[out x n] = W[out x k] * x^T[k x n], split over blocks of output rows.
    let blocks: Vec<Vec<f32>> = (0..out)
        .step_by(ROW_BLOCK)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&r0| {
            if gemv {
                let rows = ROW_BLOCK.min(out - r0);
                let mut yt = vec![0.0; rows * n];
                for (r, dst) in yt.chunks_exact_mut(n).enumerate() {
                    gemv_row(
                        &w.data[(r0 + r) * k..(r0 + r + 1) * k],
                        &x.data[..n * k],
                        dst,
                    );
                }
                return yt;
            }
            let rows = ROW_BLOCK.min(out - r0);
            let mut yt = vec![0.0; rows * n];
            sgemm(
                rows,
                k,
                n,
                &w.data[r0 * k..],
                k as isize,
                1,
                &x.data,
                1,
                k as isize,
                &mut yt,
                n as isize,
            );
            yt
        })
        .collect();
    let mut y = Tensor::zeros(vec![n, out]);
    for (bi, yt) in blocks.iter().enumerate() {
        let r0 = bi * ROW_BLOCK;
        let rows = yt.len() / n;
        for r in 0..rows {
            let bias = fc.bias.as_ref().map_or(0.0, |t| t.data[r0 + r]);
            for b in 0..n {
                y.data[b * out + r0 + r] = yt[r * n + b] + bias;
            }
        }
    }
    y
}

/// Whether this CPU runs `gemv_row` (x86-64 with AVX2 and FMA, detected once).
pub(super) fn gemv_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[b] = w · xs[b·K .. (b+1)·K]` for `b < dst.len()` (1 to `GEMV_MAX_BATCH`).
/// Callers check `gemv_supported()`.
pub(super) fn gemv_row(w: &[f32], xs: &[f32], dst: &mut [f32]) {
    assert!(xs.len() == dst.len() * w.len() && (1..=GEMV_MAX_BATCH).contains(&dst.len()));
    #[cfg(target_arch = "x86_64")]
    {
        assert!(gemv_supported());
        // SAFETY: AVX2 and FMA are present (asserted); the lengths are checked above.
        unsafe {
            match dst.len() {
                1 => gemv_row_avx2::<1>(w, xs, dst),
                2 => gemv_row_avx2::<2>(w, xs, dst),
                3 => gemv_row_avx2::<3>(w, xs, dst),
                _ => gemv_row_avx2::<4>(w, xs, dst),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("gemv_supported() is false off x86-64");
}

/// `gemv_row` for `N` input rows: 16 weights per step, loaded once and multiplied
/// into two 8-lane accumulators per input row (2·N independent FMA chains), then a
/// scalar tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemv_row_avx2<const N: usize>(w: &[f32], xs: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = w.len();
    let main = k / 16 * 16;
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut i = 0;
    while i < main {
        // SAFETY: i + 16 <= main <= k, and every input row has k elements.
        unsafe {
            let w0 = _mm256_loadu_ps(w.as_ptr().add(i));
            let w1 = _mm256_loadu_ps(w.as_ptr().add(i + 8));
            for (b, a) in acc.iter_mut().enumerate() {
                let x = xs.as_ptr().add(b * k + i);
                a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), a[0]);
                a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.add(8)), a[1]);
            }
        }
        i += 16;
    }
    for (b, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a[0], a[1])) };
        let mut s = lanes.iter().sum::<f32>();
        for j in main..k {
            s += w[j] * xs[b * k + j];
        }
        dst[b] = s;
    }
}
