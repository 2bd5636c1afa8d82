//! The inner loops of the sparse kernels: the instruction set the flat conv runs
//! (`TileSimd`), and the dispatchers `tile_axpy` (flat conv) and `spmm_row` (SpMM) with
//! their portable loops; the AVX2 and AVX-512 builds are in `x86.rs`. Also the SpMV's
//! `gather_dot`.

#[cfg(target_arch = "x86_64")]
use super::x86::{spmm_row_avx2, spmm_row_avx512, tile_avx2, tile_avx512, tile_avx512_shifted};
use super::{LINE, TILE_MAX};
use crate::backend::cpu::fast::Isa;

/// The instruction set the flat kernel runs, picked once per call.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum TileSimd {
    Portable,
    /// 8 lanes: a tile is 8 vectors of 8 positions.
    Avx2,
    /// 16 lanes: a tile is 8 vectors of 16 positions, loads aligned where the pitch
    /// allows (where the `Isa` allows it: `CpuOptions::avx512` turns it off).
    Avx512,
}

impl TileSimd {
    pub(super) fn for_isa(isa: Isa) -> TileSimd {
        #[cfg(target_arch = "x86_64")]
        {
            if isa.avx512() {
                return TileSimd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return TileSimd::Avx2;
            }
        }
        let _ = isa;
        TileSimd::Portable
    }

    /// Output positions per tile: 8 registers of accumulators.
    pub(super) fn tile(self) -> usize {
        match self {
            TileSimd::Avx512 => TILE_MAX,
            TileSimd::Avx2 | TileSimd::Portable => 64,
        }
    }

    /// The flat row pitch for a padded row of `wp` floats: with AVX-512, rounded up to
    /// whole cache lines where that adds at most a quarter to the positions computed
    /// (58 -> 64 at 56x56, 30 -> 32 at 28x28; not 9 -> 16 at 7x7), else `wp`.
    pub(super) fn pitch(self, wp: usize) -> usize {
        let lines = wp.next_multiple_of(LINE);
        if self == TileSimd::Avx512 && 4 * lines <= 5 * wp {
            lines
        } else {
            wp
        }
    }

    /// Whether rows of `pitch` floats let the kernel group weights by shift and load
    /// aligned.
    pub(super) fn aligns(self, pitch: usize) -> bool {
        self == TileSimd::Avx512 && pitch.is_multiple_of(LINE)
    }
}

/// `acc[t] += Σ_i vals[i] · xp[q0 + offs[i] + shift + t]` for `t < acc.len()`, which
/// is a whole number of the kernel's vectors (a tile or half a tile).
#[inline]
pub(super) fn tile_axpy(
    acc: &mut [f32],
    xp: &[f32],
    q0: usize,
    vals: &[f32],
    offs: &[u32],
    shift: usize,
    simd: TileSimd,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: (all) the instruction sets were detected by `TileSimd::for_isa`; the
    // kernels check every slice bound like the portable loop.
    unsafe {
        match (simd, acc.len()) {
            (TileSimd::Avx512, 128) if shift > 0 => {
                return tile_avx512_shifted::<8>(acc, xp, q0, vals, offs, shift)
            }
            (TileSimd::Avx512, 64) if shift > 0 => {
                return tile_avx512_shifted::<4>(acc, xp, q0, vals, offs, shift)
            }
            (TileSimd::Avx512, 128) => return tile_avx512::<8>(acc, xp, q0, vals, offs),
            (TileSimd::Avx512, 64) => return tile_avx512::<4>(acc, xp, q0, vals, offs),
            (TileSimd::Avx2, 64) => return tile_avx2::<8>(acc, xp, q0 + shift, vals, offs),
            (TileSimd::Avx2, 32) => return tile_avx2::<4>(acc, xp, q0 + shift, vals, offs),
            _ => {}
        }
    }
    let _ = simd;
    let width = acc.len();
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + shift + off as usize..][..width];
        for (a, s) in acc.iter_mut().zip(src) {
            *a += v * s;
        }
    }
}

/// `out[e] = Σ_i vals[i] · xp[idx[i]·P + e]`: one fc row against one panel of
/// `P = out.len()` inputs (8 or 16) stored `[K][P]`.
#[inline]
pub(super) fn spmm_row<I: Copy + Into<u32>>(
    vals: &[f32],
    idx: &[I],
    xp: &[f32],
    out: &mut [f32],
    simd: TileSimd,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: (both) the instruction sets were detected by `TileSimd::for_isa`; the
    // kernels check every slice bound like the portable loop.
    unsafe {
        match (simd, out.len()) {
            (TileSimd::Avx512, 16) => return spmm_row_avx512(vals, idx, xp, out),
            (TileSimd::Avx512 | TileSimd::Avx2, 8) => return spmm_row_avx2(vals, idx, xp, out),
            _ => {}
        }
    }
    let _ = simd;
    let panel = out.len();
    out.fill(0.0);
    for (&v, &c) in vals.iter().zip(idx) {
        let xr = &xp[c.into() as usize * panel..][..panel];
        for (o, x) in out.iter_mut().zip(xr) {
            *o += v * x;
        }
    }
}

/// `Σ_i vals[i] · x[idx[i]]` with four independent accumulators (the adds of one chain
/// would wait on each other).
#[inline]
pub(super) fn gather_dot<I: Copy + Into<u32>>(vals: &[f32], idx: &[I], x: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let (vc, vr) = vals.split_at(vals.len() / 4 * 4);
    let (ic, ir) = idx.split_at(vc.len());
    for (v, i) in vc.chunks_exact(4).zip(ic.chunks_exact(4)) {
        for t in 0..4 {
            acc[t] += v[t] * x[i[t].into() as usize];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (v, i) in vr.iter().zip(ir) {
        s += v * x[(*i).into() as usize];
    }
    s
}
