//! Dense conv on weights packed once per layer (`PackedConv`), for graphs that are run
//! many times (`Prepared`).
//!
//! The GEMM is the conv's `W[cout, K] · B[K, positions]`, computed transposed in
//! registers: a 16-channel x 6-position tile of the output in 12 ymm accumulators,
//! where per k two aligned loads bring 16 packed weights (one k of a 16-channel panel)
//! and six broadcasts bring the six positions' inputs. Against `dense`'s in-place
//! kernel (6 weight rows broadcast, 16 positions loaded):
//! - the weights are one sequential stream (`[panel][k][16]`), not six rows K apart;
//! - every output position is a column, with no junk: `dense` computes the whole
//!   padded row width (`wq - ow` junk columns per row: 29% of a 7x7 layer's columns,
//!   14% at 14x14) and 16 columns at a time, while here each of a tile's six positions
//!   has its own input pointer, so a tile may cross rows and images;
//! - batch > 1 shares tiles across images (a 7x7 layer at batch 8: 392 positions in
//!   66 tiles, against 8 x 64 columns in `dense`).
//!
//! With AVX-512F (`micro_16x12_avx512`) a tile is 16 channels x 12 positions in 12 zmm
//! accumulators: per k one aligned 16-lane load of the weights, twelve broadcasts and
//! twelve FMAs, from the same packing (a panel's k row is one 64-byte line).
//!
//! Position q's input for patch element k = (ci, ky, kx) is `src[pos[q] + off[k]]`,
//! where `src` is the zero-padded input split into stride phases (as in `dense`'s
//! `Patches::Shifted`) or, for 1x1 stride-1 unpadded convs, the input itself.
//!
//! The packed copy is built from the weights once and must not outlive a change to
//! them: `Prepared` (in the executor) holds the graph it packed behind an `Arc`, so
//! the graph cannot change while the packing exists.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::dense::{pad_and_phase, OutPtr};
use crate::graph::{Conv2d, Tensor};
use rayon::prelude::*;

/// Output channels per weight panel (two 8-lane vectors).
const MR: usize = 16;
/// Output positions per tile of the AVX2 micro-kernel (`NR_AVX512` for the AVX-512 one).
const NR: usize = 6;
/// Depth of one K block: a 16 x 256 weight panel block is 16 KiB (L1).
const KC: usize = 256;
/// Channels (a multiple of 16) per L2 block of weights: 96 x 256 floats = 96 KiB.
const MC: usize = 96;
/// Positions per task column block (a multiple of 6).
const COLUMN_BLOCK: usize = 240;
/// Parallel tasks aimed for per call, per thread.
const TASKS_PER_THREAD: usize = 3;

/// A dense conv's weights packed for `conv2d_packed`: per group, per panel of 16
/// output channels, K rows of 16 weights (`[group][panel][k][16]`, channels past the
/// group's last zero), 64-byte aligned.
#[derive(Debug)]
pub struct PackedConv {
    /// Whether `conv2d_packed` runs the AVX-512 micro-kernel on this packing.
    avx512: bool,
    data: AlignedF32,
    groups: usize,
    cout_g: usize,
    k: usize,
}

/// A float buffer whose first element is 64-byte aligned: each k row of a panel (16
/// floats) is then exactly one cache line, and its two vector loads are aligned.
#[derive(Debug)]
struct AlignedF32 {
    buf: Vec<f32>,
    start: usize,
}

impl AlignedF32 {
    fn zeros(len: usize) -> AlignedF32 {
        let buf = vec![0f32; len + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        AlignedF32 { buf, start }
    }
    fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..]
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..]
    }
}

impl PackedConv {
    /// Packs `conv`'s weights (decoded to dense first when compressed). `None` when this
    /// CPU lacks AVX2+FMA, where `conv2d_packed` cannot run.
    pub fn new(conv: &Conv2d) -> Option<PackedConv> {
        PackedConv::with_isa(conv, super::Isa::default())
    }

    /// As `new`; `conv2d_packed` then runs the micro-kernel of `isa` (AVX-512F where
    /// it allows, else AVX2), on the same packing.
    pub fn with_isa(conv: &Conv2d, isa: super::Isa) -> Option<PackedConv> {
        if !super::gemm::supported() {
            return None;
        }
        let w = conv.weight.to_dense();
        let (cout, k) = (w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]);
        let groups = conv.groups;
        let cout_g = cout / groups;
        let panels = cout_g.div_ceil(MR);
        let mut data = AlignedF32::zeros(groups * panels * k * MR);
        data.as_mut_slice()
            .par_chunks_mut(k * MR)
            .enumerate()
            .take(groups * panels)
            .for_each(|(gp, dst)| {
                let (g, p) = (gp / panels, gp % panels);
                for c in 0..MR.min(cout_g - p * MR) {
                    let row = &w.data[(g * cout_g + p * MR + c) * k..][..k];
                    for (kk, &v) in row.iter().enumerate() {
                        dst[kk * MR + c] = v;
                    }
                }
            });
        Some(PackedConv {
            avx512: isa.avx512(),
            data,
            groups,
            cout_g,
            k,
        })
    }

    /// Bytes held by the packed copy.
    pub fn bytes(&self) -> usize {
        self.data.buf.len() * 4
    }

    /// Whether this packing fits `conv` (same grouping and weight shape).
    fn fits(&self, conv: &Conv2d) -> bool {
        let s = conv.weight.shape();
        conv.groups == self.groups
            && s[0] == self.groups * self.cout_g
            && s[1] * s[2] * s[3] == self.k
    }
}

thread_local! {
    /// A task's accumulator block, kept per thread from call to call (as in `dense`).
    static ACC: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `conv` on `x` with its weights from `packed` (built from this conv), then
/// `max(0, ·)` when `relu`. Same result as `dense::conv2d_relu` up to the order of the
/// sums (K is summed in blocks of at most 256 in both).
///
/// # Panics
/// When `packed` was not built from a conv of this shape.
pub fn conv2d_packed(x: &Tensor, conv: &Conv2d, packed: &PackedConv, relu: bool) -> Tensor {
    assert!(packed.fits(conv), "packed weights of another conv shape");
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let [kh, kw] = conv.kernel;
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let (groups, cout_g, k) = (packed.groups, packed.cout_g, packed.k);
    let cout = groups * cout_g;
    let cin_g = cin / groups;
    let p = oh * ow;
    if p == 0 || cout == 0 || n == 0 {
        return Tensor::zeros(vec![n, cout, oh, ow]);
    }
    // Where each position's inputs start (`pos`) and where patch element k lies from
    // there (`off`), per image and group offsets added below.
    let direct = kh == 1 && kw == 1 && conv.stride == [1, 1] && conv.pads == [0; 4];
    let [sy, sx] = conv.stride;
    let hq = (h + conv.pads[0] + conv.pads[2]).div_ceil(sy);
    let wq = (wd + conv.pads[1] + conv.pads[3]).div_ceil(sx);
    let (src, plane, off): (std::borrow::Cow<[f32]>, usize, Vec<usize>) = if direct {
        let off = (0..k).map(|kk| kk * h * wd).collect();
        (std::borrow::Cow::Borrowed(&x.data[..]), h * wd, off)
    } else {
        let plane_q = sy * sx * hq * wq;
        let off = (0..k)
            .map(|kk| {
                let (ci, ky, kx) = (kk / (kh * kw), kk / kw % kh, kk % kw);
                let (dy, dx) = (ky * conv.dilation[0], kx * conv.dilation[1]);
                let phase = (dy % sy) * sx + dx % sx;
                ci * plane_q + (phase * hq + dy / sy) * wq + dx / sx
            })
            .collect();
        let phased = pad_and_phase(x, conv.pads, conv.stride, [hq, wq]);
        (std::borrow::Cow::Owned(phased), plane_q, off)
    };
    // Position q of a group (image q / p, output position q % p) starts at
    // `(image * cin + g * cin_g) * plane + pos_in_plane(q % p)`.
    let pos_in_plane = |pos: usize| {
        if direct {
            pos
        } else {
            pos / ow * wq + pos % ow
        }
    };
    // The furthest any patch element lies from its position's start.
    let off_max = off.iter().max().copied().unwrap_or(0);
    let ncols = n * p;
    // Positions per tile: 12 with the AVX-512 micro-kernel, else 6.
    let avx512 = packed.avx512;
    let nr = if avx512 { NR_AVX512 } else { NR };
    let tiles_total = ncols.div_ceil(nr);
    let panels = cout_g.div_ceil(MR);
    let (col_parts, row_parts) = task_split(groups, ncols, panels, nr);
    let tasks: Vec<(usize, usize, usize)> = (0..groups)
        .flat_map(|g| (0..col_parts).flat_map(move |ci| (0..row_parts).map(move |ri| (g, ci, ri))))
        .collect();
    // K in blocks of equal depth (at most KC): a short last block (K = 288 as 256 + 32)
    // pays a whole pass of tile loads and stores for a few rows.
    let k_step = k.div_ceil(k.div_ceil(KC).max(1)).max(1);
    let bias: Vec<f32> = match &conv.bias {
        Some(b) => b.data.clone(),
        None => vec![0.0; cout],
    };
    // Every output element is written exactly once by the tasks below (each task's
    // channels x positions, the tasks a partition of both), so the output starts
    // uninitialised rather than zero-filled (a pass over up to tens of MB).
    let mut y_data = super::uninit_vec(n * cout * p);
    let out = OutPtr(y_data.as_mut_ptr().cast::<f32>());
    let out_len = y_data.len();
    let weights = packed.data.as_slice();
    tasks.par_iter().for_each(|&(g, ci, ri)| {
        // Column part ci: tiles [ci * T / parts, (ci + 1) * T / parts), and likewise
        // for the panels, so the parts differ by at most one tile or panel.
        let (t0, t1) = (
            ci * tiles_total / col_parts,
            (ci + 1) * tiles_total / col_parts,
        );
        let c0 = t0 * nr;
        let cols = (t1 * nr).min(ncols) - c0;
        let tiles = t1 - t0;
        let p0 = ri * panels / row_parts;
        let task_panels = (ri + 1) * panels / row_parts - p0;
        // Each tile's `nr` input pointers (as offsets into `src`); a last tile's
        // missing positions repeat its first (their sums land in the block's padding).
        let pos: Vec<usize> = (0..tiles * nr)
            .map(|j| {
                let q = c0 + if j < cols { j } else { j / nr * nr };
                (q / p * cin + g * cin_g) * plane + pos_in_plane(q % p)
            })
            .collect();
        let mut acc_cell = ACC.with(|cell| cell.take());
        let acc_len = task_panels * tiles * nr * MR;
        acc_cell.resize(acc_cell.len().max(acc_len), 0.0);
        let acc = &mut acc_cell[..acc_len];
        if k == 0 {
            acc.fill(0.0);
        }
        // Every read is `src[pos[j] + off[kk]]`; each (position, element) pair is a real
        // read of the padded input, so the largest of each makes one too.
        assert!(pos.iter().max().copied().unwrap_or(0) + off_max < src.len());
        let group_weights = &weights[(g * panels + p0) * k * MR..][..task_panels * k * MR];
        for k0 in (0..k).step_by(k_step) {
            let kc = k_step.min(k - k0);
            for m0 in (0..task_panels).step_by(MC / MR) {
                let mp = (MC / MR).min(task_panels - m0);
                for t in 0..tiles {
                    for pn in m0..m0 + mp {
                        let w = group_weights.as_ptr().wrapping_add((pn * k + k0) * MR);
                        let (pos, off) = (&pos[t * nr..][..nr], &off[k0..k0 + kc]);
                        let tile = acc[(pn * tiles + t) * nr * MR..][..nr * MR].as_mut_ptr();
                        // SAFETY: AVX2+FMA are present (`PackedConv::new` checked), and
                        // AVX-512F where `avx512`; the panel holds K x 16 weights (64-byte
                        // aligned rows), read from k0 for kc rows; every input read is
                        // `src[pos[j] + off[kk]]` with both at most their maxima
                        // (asserted below `src.len()`); the nr x 16 tile is inside this
                        // task's own accumulator block.
                        unsafe {
                            if avx512 {
                                micro_16x12_avx512(kc, w, src.as_ptr(), pos, off, tile, k0 > 0)
                            } else {
                                micro_16x6(kc, w, src.as_ptr(), pos, off, tile, k0 > 0)
                            }
                        }
                    }
                }
            }
        }
        // Epilogue: bias, ReLU, and the block's [position][channel] tiles to NCHW, one
        // run of positions of one image at a time.
        for pn in 0..task_panels {
            let co0 = g * cout_g + (p0 + pn) * MR;
            let channels = MR.min(cout_g - (p0 + pn) * MR);
            let tile_block = &acc[pn * tiles * nr * MR..][..tiles * nr * MR];
            let mut j = 0;
            while j < cols {
                let q = c0 + j;
                let (image, first) = (q / p, q % p);
                let run = (p - first).min(cols - j);
                let at = (image * cout + co0) * p + first;
                assert!(at + (channels - 1) * p + run <= out_len);
                // SAFETY: AVX2 is present (`PackedConv::new` checked); the block holds
                // `run` positions from j, 16 floats each; channels co0.. at these
                // positions lie inside `y` (asserted), belong to this task only, and
                // `y` is not otherwise accessed until every task has finished.
                unsafe {
                    block_to_planes(
                        &tile_block[j * MR..(j + run) * MR],
                        &bias[co0..co0 + channels],
                        out.at(at),
                        p,
                        relu,
                    )
                };
                j += run;
            }
        }
        ACC.with(|cell| cell.replace(acc_cell));
    });
    // SAFETY: every element was written by the tasks (see above).
    let data = unsafe { super::assume_init(y_data) };
    Tensor {
        shape: vec![n, cout, oh, ow],
        data,
    }
}

/// How a conv's GEMM is cut into parallel tasks: `(column parts, row parts)` per group.
/// Columns in parts of about `COLUMN_BLOCK` positions; when that gives fewer than
/// `TASKS_PER_THREAD` tasks per thread (small layers at batch 1), the 16-channel panels
/// are split too. The task count is then rounded up to a multiple of the thread count
/// with more column parts where there are tiles for them: parts of equal work finish
/// together only if each thread gets as many (13 parts on 2 threads: one thread does 7).
fn task_split(groups: usize, ncols: usize, panels: usize, nr: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let want = TASKS_PER_THREAD * threads;
    let tiles = ncols.div_ceil(nr);
    let mut col_parts = ncols.div_ceil(COLUMN_BLOCK).clamp(1, tiles.max(1));
    let row_parts = want.div_ceil(groups * col_parts).clamp(1, panels.max(1));
    while !(groups * col_parts * row_parts).is_multiple_of(threads) && col_parts < tiles {
        col_parts += 1;
    }
    (col_parts, row_parts)
}

/// Writes `block` (`[position][16 channels]`, `block.len() / 16` positions) to the
/// first `bias.len()` channel planes at `dst` (channel c's positions from
/// `dst + c * plane`), adding each channel's bias and, when `relu`, clamping at 0.
/// Eight positions x eight channels at a time through a register transpose.
///
/// # Safety
/// AVX2 present; `bias.len() <= 16`; for every channel c < `bias.len()`, the
/// `block.len() / 16` floats from `dst + c * plane` are writable and not otherwise
/// accessed during the call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_to_planes(block: &[f32], bias: &[f32], dst: *mut f32, plane: usize, relu: bool) {
    let run = block.len() / MR;
    let channels = bias.len();
    let zero = _mm256_setzero_ps();
    let finish = |v: f32, c: usize| {
        let v = v + bias[c];
        if relu {
            v.max(0.0)
        } else {
            v
        }
    };
    for c8 in (0..channels).step_by(8) {
        let lanes = 8.min(channels - c8);
        let mut i = 0;
        while i + 8 <= run {
            // SAFETY: positions i..i+8 of the block, channels c8..c8+8 (< 16), and the
            // caller's contract for dst.
            unsafe {
                let r: [__m256; 8] =
                    std::array::from_fn(|t| _mm256_loadu_ps(block.as_ptr().add((i + t) * MR + c8)));
                let cols = transpose8(r);
                for (u, col) in cols.iter().enumerate().take(lanes) {
                    let mut v = _mm256_add_ps(*col, _mm256_set1_ps(bias[c8 + u]));
                    if relu {
                        v = _mm256_max_ps(v, zero);
                    }
                    _mm256_storeu_ps(dst.add((c8 + u) * plane + i), v);
                }
            }
            i += 8;
        }
        for c in c8..c8 + lanes {
            for ii in i..run {
                // SAFETY: the caller's contract for dst.
                unsafe { *dst.add(c * plane + ii) = finish(block[ii * MR + c], c) };
            }
        }
    }
}

/// The 8 x 8 transpose of eight rows: `out[u]` lane t = `rows[t]` lane u.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// The off-x86-64 stand-in (never called: `PackedConv::new` returns `None` there).
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_to_planes(_: &[f32], _: &[f32], _: *mut f32, _: usize, _: bool) {
    unreachable!("PackedConv::new returns None off x86-64");
}

/// One 16-channel x 6-position tile (`acc[j * 16 + c]`) `(+)= Σ_k w[k][c] · src[pos[j] +
/// off[k]]` over `kc = off.len()` rows of a packed panel.
///
/// # Safety
/// AVX2+FMA present; `w` holds `16 * kc` floats, 32-byte aligned; every
/// `src[pos[j] + off[k]]` is in bounds; `acc` holds 96 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_16x6(
    kc: usize,
    w: *const f32,
    src: *const f32,
    pos: &[usize],
    off: &[usize],
    acc: *mut f32,
    accumulate: bool,
) {
    debug_assert!(pos.len() == NR && off.len() == kc);
    let base: [*const f32; NR] = std::array::from_fn(|j| src.wrapping_add(pos[j]));
    let mut sums = [_mm256_setzero_ps(); 2 * NR];
    // One k: the 16 weights at `wk` times each position's input at offset `o`.
    // SAFETY: (callers below) `wk` is a k row of the panel and `o` an entry of `off`,
    // so every read is inside the caller's contract.
    let step = |wk: *const f32, o: usize, sums: &mut [__m256; 2 * NR]| unsafe {
        let w0 = _mm256_load_ps(wk);
        let w1 = _mm256_load_ps(wk.add(8));
        for (j, b) in base.iter().enumerate() {
            let v = _mm256_broadcast_ss(&*b.add(o));
            sums[2 * j] = _mm256_fmadd_ps(v, w0, sums[2 * j]);
            sums[2 * j + 1] = _mm256_fmadd_ps(v, w1, sums[2 * j + 1]);
        }
    };
    // SAFETY: (whole loop) the caller's contract.
    unsafe {
        // Two k per iteration: the loop overhead and the offset loads' latency are
        // shared (4-8% in isolation).
        let pairs = off.chunks_exact(2);
        let last = pairs.remainder();
        let mut wk = w;
        for pair in pairs {
            for &o in pair {
                step(wk, o, &mut sums);
                wk = wk.add(MR);
            }
        }
        for &o in last {
            step(wk, o, &mut sums);
        }
        for (i, s) in sums.iter().enumerate() {
            let at = acc.add(8 * i);
            let v = if accumulate {
                _mm256_add_ps(_mm256_loadu_ps(at), *s)
            } else {
                *s
            };
            _mm256_storeu_ps(at, v);
        }
    }
}

/// The off-x86-64 stand-in (never called: `PackedConv::new` returns `None` there).
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_16x6(
    _kc: usize,
    _w: *const f32,
    _src: *const f32,
    _pos: &[usize],
    _off: &[usize],
    _acc: *mut f32,
    _accumulate: bool,
) {
    unreachable!("PackedConv::new returns None off x86-64");
}

/// Positions per tile of the AVX-512 micro-kernel.
const NR_AVX512: usize = 12;

/// `micro_16x6` on 16-lane registers: one 16-channel x 12-position tile (`acc[j * 16 +
/// c]`) in 12 zmm accumulators; per k, one aligned 16-lane load of the panel's weights,
/// twelve broadcasts and twelve FMAs.
///
/// # Safety
/// AVX-512F present; `w` holds `16 * kc` floats, 64-byte aligned; every `src[pos[j] +
/// off[k]]` is in bounds; `acc` holds 192 floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_16x12_avx512(
    kc: usize,
    w: *const f32,
    src: *const f32,
    pos: &[usize],
    off: &[usize],
    acc: *mut f32,
    accumulate: bool,
) {
    debug_assert!(pos.len() == NR_AVX512 && off.len() == kc);
    let mut base = [src; NR_AVX512];
    for (b, &p) in base.iter_mut().zip(pos) {
        *b = src.wrapping_add(p);
    }
    let mut sums = [_mm512_setzero_ps(); NR_AVX512];
    // SAFETY: (whole loop) the caller's contract (`wk` walks the panel's kc rows, `o`
    // the entries of `off`).
    unsafe {
        let mut wk = w;
        for &o in off {
            let wv = _mm512_load_ps(wk);
            for (s, b) in sums.iter_mut().zip(&base) {
                *s = _mm512_fmadd_ps(_mm512_set1_ps(*b.add(o)), wv, *s);
            }
            wk = wk.add(MR);
        }
        for (j, s) in sums.iter().enumerate() {
            let at = acc.add(MR * j);
            let v = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(at), *s)
            } else {
                *s
            };
            _mm512_storeu_ps(at, v);
        }
    }
}

/// The off-x86-64 stand-in (never called: `PackedConv::new` returns `None` there).
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro_16x12_avx512(
    _kc: usize,
    _w: *const f32,
    _src: *const f32,
    _pos: &[usize],
    _off: &[usize],
    _acc: *mut f32,
    _accumulate: bool,
) {
    unreachable!("PackedConv::new returns None off x86-64");
}
