//! An AVX2/FMA register-blocked GEMM for the dense conv and the batched fc layers:
//! `C += A · B` on strided operands, read where they lie (no packing of A or B).
//!
//! Why not `matrixmultiply::sgemm`: it packs both operands on every call. For a conv
//! the weights A are the big operand at batch 1 (ResNet-18's 3x3 512->512 conv: 9.4 MB
//! against 0.9 MB of im2col columns) and packing them cost as much as the product, so
//! the deep layers ran at 15-26% of the FMA peak. Here A is read in place, six rows at
//! a time (one broadcast per row and k), and B is given row by row through a table of
//! offsets (in the conv: shifted views of the padded, stride-phased input, or the input
//! planes themselves for 1x1 convs; no im2col), sixteen columns at a time.
//!
//! Micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators; per k, two loads of B, six
//! broadcasts of A and twelve FMAs (the two FMA pipes are the limit: 6 cycles per k).
//! Blocking (callers block K; `block` blocks rows): a 16-column micro-panel of B
//! (`kc x 16`, 16 KiB at `kc = 256`) stays in L1 while the six-row panels of A pass
//! over it, and an `MC x kc` block of A (96 KiB) stays in L2 while the micro-panels of
//! B pass under it.
//!
//! Fc layers at batches past the GEMV's (`InputPanels`, `fc_decoded`): A is the weight
//! rows (dense: in place; pow2 and sketch: decoded per K block into a panel), B the
//! inputs transposed into 16-input panels. Where the CPU has AVX-512F, the fc products
//! run a 12 x 16 micro-kernel on 16-lane registers instead (`block_avx512`: one load of
//! B, twelve broadcasts of A and twelve FMAs per k); fc6 at batch 64 took 28.9-29.9 ms
//! against 35.2-35.8 with the AVX2 kernel.

use crate::graph::Tensor;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of C per micro-kernel call.
pub const MR: usize = 6;
/// Columns of C per micro-kernel call (two 8-lane vectors).
pub const NR: usize = 16;
/// Depth of one K block (chosen by the callers): 256 keeps a B micro-panel in L1.
pub const KC: usize = 256;
/// Rows of A per L2 block.
const MC: usize = 96;

/// Whether this CPU runs the kernels here (x86-64 with AVX2 and FMA, detected once).
pub fn supported() -> bool {
    super::dense::gemv_supported()
}

/// `C = A · B` (or `C += A · B` when `accumulate`) for a block of `rows` rows of A
/// and `cols` (a multiple of 16) columns of B, over depth `kc`.
///
/// A is row-major with row stride `lda`. Row k of B is the `cols` floats from
/// `b + b_rows[k]` (so B may be an im2col buffer, the input itself, or shifted views
/// of a padded input). C has row stride `ldc` and `rows` rounded up to a multiple of 6
/// rows: the micro-kernel always stores whole 6 x 16 tiles (the extra rows hold junk).
///
/// # Safety
/// `supported()` must be true, `cols % 16 == 0` and `b_rows.len() >= kc`. Every element
/// of A (`rows x kc` at `lda`), of B (`cols` from each `b + b_rows[k]`) and of C
/// (`rows.next_multiple_of(6) x cols` at `ldc`) must be inside its allocation, and no
/// other thread may touch that part of C during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    b_rows: &[usize],
    cols: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract.
    unsafe {
        block_avx2(kc, a, lda, rows, b, b_rows, cols, c, ldc, accumulate)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("supported() is false off x86-64");
}

/// `block` with AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA, and `block`'s contract holds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    b_rows: &[usize],
    cols: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(cols.is_multiple_of(NR) && b_rows.len() >= kc);
    for m0 in (0..rows).step_by(MC) {
        let mc = MC.min(rows - m0);
        for j0 in (0..cols).step_by(NR) {
            for i0 in (m0..m0 + mc).step_by(MR) {
                // SAFETY: rows i0..i0+mr of A, the 6 x 16 tile of C at (i0, j0) and
                // columns j0..j0+16 of every B row are inside the blocks the caller
                // vouched for.
                unsafe {
                    micro_6x16(
                        kc,
                        a.add(i0 * lda),
                        lda,
                        MR.min(m0 + mc - i0),
                        b.add(j0),
                        b_rows,
                        c.add(i0 * ldc + j0),
                        ldc,
                        accumulate,
                    )
                }
            }
        }
    }
}

/// One 6 x 16 tile of `C (+)= A · B` over depth `kc`, from `mr <= 6` rows of A.
///
/// Rows past `mr` re-read row 0 of A (their sums land in C's padding rows), so the
/// loop has no branches.
///
/// # Safety
/// The CPU has AVX2 and FMA; rows `0..mr` of A (`lda` floats apart from `a`, `kc` floats
/// each), `kc` rows of B at `b_rows` (16 floats each) and 6 rows of C (`ldc` apart, 16
/// floats each) are inside their allocations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro_6x16(
    kc: usize,
    a: *const f32,
    lda: usize,
    mr: usize,
    b: *const f32,
    b_rows: &[usize],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let rows: [usize; MR] = std::array::from_fn(|r| if r < mr { r * lda } else { 0 });
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    // SAFETY: (whole loop) k < kc <= b_rows.len(), so a + rows[r] + k is inside row r of
    // A, and b + b_rows[k] .. +16 inside row k of B (the caller's contract).
    unsafe {
        for k in 0..kc {
            let bk = b.add(*b_rows.get_unchecked(k));
            let b0 = _mm256_loadu_ps(bk);
            let b1 = _mm256_loadu_ps(bk.add(8));
            let ak = a.add(k);
            for (r, &row) in rows.iter().enumerate() {
                let v = _mm256_broadcast_ss(&*ak.add(row));
                acc[2 * r] = _mm256_fmadd_ps(v, b0, acc[2 * r]);
                acc[2 * r + 1] = _mm256_fmadd_ps(v, b1, acc[2 * r + 1]);
            }
        }
    }
    for r in 0..MR {
        // SAFETY: the whole 6 x 16 tile of C is inside C (the caller's contract).
        unsafe {
            let cr = c.add(r * ldc);
            for h in 0..2 {
                let v = if accumulate {
                    _mm256_add_ps(_mm256_loadu_ps(cr.add(8 * h)), acc[2 * r + h])
                } else {
                    acc[2 * r + h]
                };
                _mm256_storeu_ps(cr.add(8 * h), v);
            }
        }
    }
}

/// Rows of C per tile of the AVX-512 micro-kernel (the fc path only).
const MR_AVX512: usize = 12;

/// `C += A · B` for `rows` rows of A (at `lda`) and one 16-column micro-panel of B (row
/// `k` at `b + b_rows[k]`), over depth `kc`, in 12 x 16 tiles: per k, one 16-lane load of
/// B, twelve broadcasts of A and twelve FMAs. C (at `ldc`) is written in whole tiles.
///
/// # Safety
/// AVX-512F must be present; A's `rows x kc`, B's `kc` rows of 16 and C's `rows` rounded
/// up to 12 rows of 16 must be inside their allocations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512(
    kc: usize,
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    b_rows: &[usize],
    c: *mut f32,
    ldc: usize,
) {
    debug_assert!(b_rows.len() >= kc);
    for i0 in (0..rows).step_by(MR_AVX512) {
        let mr = MR_AVX512.min(rows - i0);
        // Rows past `mr` re-read row 0 (their sums land in C's padding rows).
        let mut offsets = [0usize; MR_AVX512];
        for (r, o) in offsets.iter_mut().enumerate().take(mr) {
            *o = (i0 + r) * lda;
        }
        let mut acc = [_mm512_setzero_ps(); MR_AVX512];
        // SAFETY: (whole loop) k < kc, so a + offsets[r] + k is inside row i0 + r (or row
        // 0) of A, and b + b_rows[k] .. +16 inside row k of B (the caller's contract).
        unsafe {
            for k in 0..kc {
                let bv = _mm512_loadu_ps(b.add(*b_rows.get_unchecked(k)));
                let ak = a.add(k);
                for (accr, &o) in acc.iter_mut().zip(&offsets) {
                    *accr = _mm512_fmadd_ps(_mm512_set1_ps(*ak.add(o)), bv, *accr);
                }
            }
            for (r, accr) in acc.iter().enumerate() {
                let cr = c.add((i0 + r) * ldc);
                _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), *accr));
            }
        }
    }
}

/// The off-x86-64 stand-in (never called: AVX-512 is never detected there).
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512(
    _: usize,
    _: *const f32,
    _: usize,
    _: usize,
    _: *const f32,
    _: &[usize],
    _: *mut f32,
    _: usize,
) {
    unreachable!("AVX-512 is x86-64 only");
}

/// The input rows of an fc as the B operand of `block`: panels of `NR` inputs, each
/// `[K][NR]` and contiguous, zeros past the batch.
///
/// Panel-major rather than one `[K][batch]` matrix: at batch 64 a row stride of 64
/// floats (256 bytes) maps a K block's rows of a micro-panel onto 16 of the 64 L1 sets,
/// and the panel the micro-kernel re-reads for every 6 rows of A was evicted (pow2 fc6
/// at batch 64: 47-64 ms over seven runs, against 35 ms panel-major).
pub struct InputPanels {
    /// Whether `add_block` runs the AVX-512 micro-kernel (12 rows per tile, not 6).
    avx512: bool,
    data: Vec<f32>,
    n: usize,
    k: usize,
    /// The batch rounded up to a multiple of `NR`.
    cols: usize,
    /// Offset of row `i` of a K block within a panel: `i · NR`.
    b_rows: Vec<usize>,
}

impl InputPanels {
    /// The `n` input rows of `k` floats, `stride` apart in `x`; `avx512`: whether the
    /// products may run the AVX-512 micro-kernel (where the CPU has it).
    pub fn new(x: &[f32], n: usize, k: usize, stride: usize, avx512: bool) -> InputPanels {
        assert!(k <= stride && (n == 0 || x.len() >= (n - 1) * stride + k));
        let cols = n.next_multiple_of(NR);
        let mut data = vec![0f32; k * cols];
        // K blocks of every panel in parallel (fc6 at batch 64 took 2.8-4.5 ms on one
        // thread); each input row's part is read in order.
        if k > 0 {
            data.par_chunks_mut(k * NR)
                .enumerate()
                .for_each(|(panel, p)| {
                    p.par_chunks_mut(KC * NR)
                        .enumerate()
                        .for_each(|(block, dst)| {
                            let (k0, kc) = (block * KC, dst.len() / NR);
                            for j in 0..NR.min(n - panel * NR) {
                                let b = panel * NR + j;
                                let src = &x[b * stride + k0..b * stride + k0 + kc];
                                for (i, &v) in src.iter().enumerate() {
                                    dst[i * NR + j] = v;
                                }
                            }
                        })
                });
        }
        InputPanels {
            avx512: avx512 && super::avx512_detected(),
            data,
            n,
            k,
            cols,
            b_rows: (0..KC).map(|i| i * NR).collect(),
        }
    }

    /// Rows per tile of the micro-kernel `add_block` runs.
    fn tile_rows(&self) -> usize {
        if self.avx512 {
            MR_AVX512
        } else {
            MR
        }
    }

    /// A zeroed accumulator for `rows` weight rows: `[row][cols]`, the rows rounded up
    /// to the micro-kernel's tile (it stores whole tiles).
    fn accumulator(&self, rows: usize) -> Vec<f32> {
        vec![0f32; rows.next_multiple_of(self.tile_rows()) * self.cols]
    }

    /// `acc[r][b] += a_r[..kc] · x_b[k0..k0 + kc]` for `rows` rows of A, `lda` apart.
    fn add_block(&self, a: &[f32], lda: usize, rows: usize, k0: usize, kc: usize, acc: &mut [f32]) {
        assert!(supported() && kc <= KC && k0 + kc <= self.k);
        assert!(rows == 0 || (kc <= lda && a.len() >= (rows - 1) * lda + kc));
        assert!(acc.len() >= rows.next_multiple_of(self.tile_rows()) * self.cols);
        for j0 in (0..self.cols).step_by(NR) {
            let b = self.data[j0 * self.k + k0 * NR..].as_ptr();
            let c = acc[j0..].as_mut_ptr();
            if self.avx512 {
                // SAFETY: as below, with C rounded up to 12 rows (asserted); AVX-512F is
                // present (`avx512` is set only then).
                unsafe {
                    block_avx512(
                        kc,
                        a.as_ptr(),
                        lda,
                        rows,
                        b,
                        &self.b_rows[..kc],
                        c,
                        self.cols,
                    )
                };
                continue;
            }
            // SAFETY: `supported()` (asserted); A is `rows x kc` at `lda` inside `a`; B
            // row `i` is the NR floats at `j0 · k + (k0 + i) · NR`, inside `data` (panel
            // `j0 / NR` holds k rows, k0 + i < k); C is `rows` rounded up to 6 rows of
            // `cols` inside `acc` (asserted), of which this writes columns j0..j0 + NR.
            unsafe {
                block(
                    kc,
                    a.as_ptr(),
                    lda,
                    rows,
                    b,
                    &self.b_rows[..kc],
                    NR,
                    c,
                    self.cols,
                    true,
                );
            }
        }
    }

    /// The first `rows` rows of `acc` as `[row][input]` (without the padding columns).
    fn dots(&self, acc: &[f32], rows: usize) -> Vec<f32> {
        let mut dots = Vec::with_capacity(rows * self.n);
        for row in acc.chunks_exact(self.cols).take(rows) {
            dots.extend_from_slice(&row[..self.n]);
        }
        dots
    }

    /// `[row][input]` dots of `rows` weight rows, row-major (K floats each, read in
    /// place), with the inputs.
    pub fn dots_with_rows(&self, w: &[f32], rows: usize) -> Vec<f32> {
        let k = self.k;
        assert_eq!(w.len(), rows * k);
        let mut acc = self.accumulator(rows);
        for k0 in (0..k).step_by(KC) {
            self.add_block(&w[k0..], k, rows, k0, KC.min(k - k0), &mut acc);
        }
        self.dots(&acc, rows)
    }
}

/// Output rows per task of `fc_decoded` (a multiple of both micro-kernels' tiles, 6 and
/// 12 rows). 48 measured as fast as or faster than 24 on fc6 (pow2, batch 16 and 64);
/// its 48 KiB panel stays in L2.
const FC_DECODED_ROWS: usize = 48;
const _: () =
    assert!(FC_DECODED_ROWS.is_multiple_of(MR) && FC_DECODED_ROWS.is_multiple_of(MR_AVX512));

/// An fc whose weight rows are made as they are used: `[N, O]` (plus the bias) for the
/// inputs `x` and `o` weight rows. Per task of `FC_DECODED_ROWS` rows and per K block
/// of `KC`, `decode(row, k0, kc, dst)` writes weights `k0..k0 + kc` of `row` into `dst`
/// (`KC` floats; entries past `kc` are not read), in the order of `x`'s columns; then
/// the micro-kernel multiplies the panel in (`InputPanels::add_block`). Each weight is
/// decoded once per call, whatever the batch.
pub fn fc_decoded(
    x: &InputPanels,
    o: usize,
    bias: Option<&Tensor>,
    decode: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) -> Tensor {
    let k = x.k;
    let blocks: Vec<Vec<f32>> = (0..o.div_ceil(FC_DECODED_ROWS))
        .into_par_iter()
        .map(|t| {
            let rows = t * FC_DECODED_ROWS..((t + 1) * FC_DECODED_ROWS).min(o);
            let count = rows.len();
            let mut panel = vec![0f32; count * KC];
            let mut acc = x.accumulator(count);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for (c, dst) in rows.clone().zip(panel.chunks_exact_mut(KC)) {
                    decode(c, k0, kc, dst);
                }
                x.add_block(&panel, KC, count, k0, kc, &mut acc);
            }
            x.dots(&acc, count)
        })
        .collect();
    super::layout::transpose_blocks(&blocks, FC_DECODED_ROWS, x.n, o, bias)
}
