//! The AVX2 and AVX-512 builds of the sparse kernels' inner loops (`kernels.rs` picks
//! one per call). The AVX2 and AVX-512 twins of `spmm_row` and of the flat conv's tile
//! differ only in the vector width and the intrinsics' names, so each pair is one
//! `macro_rules!` body instantiated twice; the shifted AVX-512 tile has no AVX2 twin.
//!
//! The functions are safe `#[target_feature]` functions: a caller outside code compiled
//! with their features calls them in an `unsafe` block, after checking the CPU has them
//! (`TileSimd::for_isa`). Every slice bound inside is checked like the portable loops'.

use std::arch::x86_64::*;

/// Defines `spmm_row` on panels of one vector (`$lanes` inputs), with four accumulators
/// (one multiply-add chain per 4 stored weights).
macro_rules! spmm_row_simd {
    (
        $(#[$attr:meta])*
        fn $name:ident, lanes: $lanes:literal, zero: $zero:ident, load: $load:ident,
        store: $store:ident, set1: $set1:ident, fmadd: $fmadd:ident, add: $add:ident
    ) => {
        $(#[$attr])*
        pub(super) fn $name<I: Copy + Into<u32>>(
            vals: &[f32],
            idx: &[I],
            xp: &[f32],
            out: &mut [f32],
        ) {
            let mut acc = [$zero(); 4];
            let (vq, vr) = vals.split_at(vals.len() / 4 * 4);
            let (iq, ir) = idx.split_at(vq.len());
            for (v, i) in vq.chunks_exact(4).zip(iq.chunks_exact(4)) {
                for j in 0..4 {
                    let xr = &xp[i[j].into() as usize * $lanes..][..$lanes];
                    // SAFETY: `xr` has one vector's lanes.
                    let xv = unsafe { $load(xr.as_ptr()) };
                    acc[j] = $fmadd($set1(v[j]), xv, acc[j]);
                }
            }
            for (&v, &i) in vr.iter().zip(ir) {
                let xr = &xp[i.into() as usize * $lanes..][..$lanes];
                // SAFETY: `xr` has one vector's lanes.
                let xv = unsafe { $load(xr.as_ptr()) };
                acc[0] = $fmadd($set1(v), xv, acc[0]);
            }
            let sum = $add($add(acc[0], acc[1]), $add(acc[2], acc[3]));
            let out = &mut out[..$lanes];
            // SAFETY: `out` has one vector's lanes.
            unsafe { $store(out.as_mut_ptr(), sum) };
        }
    };
}

spmm_row_simd! {
    /// `spmm_row` on panels of 8, with four accumulators (one multiply-add chain per 4
    /// stored weights).
    #[target_feature(enable = "avx2,fma")]
    fn spmm_row_avx2, lanes: 8, zero: _mm256_setzero_ps, load: _mm256_loadu_ps,
    store: _mm256_storeu_ps, set1: _mm256_set1_ps, fmadd: _mm256_fmadd_ps, add: _mm256_add_ps
}

spmm_row_simd! {
    /// `spmm_row` on panels of 16, with four accumulators.
    #[target_feature(enable = "avx512f")]
    fn spmm_row_avx512, lanes: 16, zero: _mm512_setzero_ps, load: _mm512_loadu_ps,
    store: _mm512_storeu_ps, set1: _mm512_set1_ps, fmadd: _mm512_fmadd_ps, add: _mm512_add_ps
}

/// Defines the flat conv's `tile_axpy` with shift 0 over `V` vectors of `$lanes`
/// positions, accumulated in registers.
macro_rules! tile_simd {
    (
        $(#[$attr:meta])*
        fn $name:ident, lanes: $lanes:literal, zero: $zero:ident, load: $load:ident,
        store: $store:ident, set1: $set1:ident, fmadd: $fmadd:ident
    ) => {
        $(#[$attr])*
        pub(super) fn $name<const V: usize>(
            acc: &mut [f32],
            xp: &[f32],
            q0: usize,
            vals: &[f32],
            offs: &[u32],
        ) {
            if vals.is_empty() {
                return;
            }
            let acc = &mut acc[..$lanes * V];
            let mut r = [$zero(); V];
            for (i, ri) in r.iter_mut().enumerate() {
                // SAFETY: `acc` has V vectors.
                *ri = unsafe { $load(acc.as_ptr().add($lanes * i)) };
            }
            for (&v, &off) in vals.iter().zip(offs) {
                let src = &xp[q0 + off as usize..][..$lanes * V];
                let vv = $set1(v);
                for (i, ri) in r.iter_mut().enumerate() {
                    // SAFETY: `src` has V vectors (bounds-checked slice above), so the
                    // vector at `i` is in it; unaligned loads are allowed.
                    let xv = unsafe { $load(src.as_ptr().add($lanes * i)) };
                    *ri = $fmadd(vv, xv, *ri);
                }
            }
            for (i, ri) in r.iter().enumerate() {
                // SAFETY: `acc` has V vectors.
                unsafe { $store(acc.as_mut_ptr().add($lanes * i), *ri) };
            }
        }
    };
}

tile_simd! {
    /// `tile_axpy` over `V` vectors of 8 positions, accumulated in registers.
    #[target_feature(enable = "avx2,fma")]
    fn tile_avx2, lanes: 8, zero: _mm256_setzero_ps, load: _mm256_loadu_ps,
    store: _mm256_storeu_ps, set1: _mm256_set1_ps, fmadd: _mm256_fmadd_ps
}

tile_simd! {
    /// `tile_axpy` with shift 0 over `V` vectors of 16 positions, accumulated in
    /// registers.
    #[target_feature(enable = "avx512f")]
    fn tile_avx512, lanes: 16, zero: _mm512_setzero_ps, load: _mm512_loadu_ps,
    store: _mm512_storeu_ps, set1: _mm512_set1_ps, fmadd: _mm512_fmadd_ps
}

/// Most vectors of `tile_avx512_shifted`'s sums: a tile's 8 and the one past it.
const SHIFTED_MAX: usize = 9;

/// `tile_axpy` for a run of one shift `0 < shift < 16` over `V` vectors of 16
/// positions: the run's sums at the unshifted (aligned) positions, `V + 1` vectors so
/// that they cover the tile shifted by `shift`, then added into `acc` shifted.
#[target_feature(enable = "avx512f")]
pub(super) fn tile_avx512_shifted<const V: usize>(
    acc: &mut [f32],
    xp: &[f32],
    q0: usize,
    vals: &[f32],
    offs: &[u32],
    shift: usize,
) {
    const { assert!(V < SHIFTED_MAX) };
    if vals.is_empty() {
        return;
    }
    let acc = &mut acc[..16 * V];
    let mut r = [_mm512_setzero_ps(); SHIFTED_MAX];
    for (&v, &off) in vals.iter().zip(offs) {
        let src = &xp[q0 + off as usize..][..16 * (V + 1)];
        let vv = _mm512_set1_ps(v);
        for (i, ri) in r[..V + 1].iter_mut().enumerate() {
            // SAFETY: `src` has 16·(V + 1) elements (bounds-checked slice above).
            let xv = unsafe { _mm512_loadu_ps(src.as_ptr().add(16 * i)) };
            *ri = _mm512_fmadd_ps(vv, xv, *ri);
        }
    }
    // Lanes shift..shift + 16 of each pair of adjacent sums (`shift` < 16): in
    // registers, as a round trip through memory stalled on store forwarding.
    let lanes = _mm512_add_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(shift as i32),
    );
    for (i, a) in acc.chunks_exact_mut(16).enumerate() {
        let s = _mm512_permutex2var_ps(r[i], lanes, r[i + 1]);
        // SAFETY: `a` has 16 elements.
        unsafe {
            _mm512_storeu_ps(
                a.as_mut_ptr(),
                _mm512_add_ps(_mm512_loadu_ps(a.as_ptr()), s),
            )
        };
    }
}
