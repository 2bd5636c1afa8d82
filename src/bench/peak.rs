//! CPU peak micro-kernels: f32 FMA rate and memory bandwidth, the roofline's roof.
//!
//! The FMA kernel keeps 12 independent accumulators per thread so the FMA units'
//! latency is hidden (2 ports x 4-5 cycles latency needs >= 10 chains). It uses the
//! widest FMA the CPU kernels run (`fast::FcKernel::Avx512.supported()`): 16-lane
//! `_mm512_fmadd_ps` with AVX-512F (the fc GEMM and the compressed fc kernels use it),
//! else 8-lane `_mm256_fmadd_ps` with AVX2+FMA, else portable code that LLVM vectorises
//! to SSE multiply + add. A peak below the kernels' widest would put layers above 100%
//! of their roof.

use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// Measured peak rates of this CPU.
#[derive(Clone, Debug, Serialize)]
pub struct CpuPeak {
    /// f32 FLOP/s counting an FMA as 2, all threads, in GFLOP/s.
    pub fma_gflops: f64,
    /// Read bandwidth over a buffer far larger than the caches, GB/s.
    pub read_gbps: f64,
    /// Copy bandwidth (read + write bytes counted), GB/s.
    pub copy_gbps: f64,
    /// Threads used.
    pub threads: usize,
    /// Which FMA kernel ran (`avx512f`, `avx2+fma` or `portable`).
    pub kernel: &'static str,
}

const CHAINS: usize = 12;
const LANES: usize = 8;

fn fma_portable(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; LANES]; CHAINS];
    let (a, b) = (0.999_999_9f32, 1e-7f32);
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    acc.iter().flatten().sum()
}

/// `iters` rounds of FMA chains in AVX2 registers.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999_9);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut out = [0f32; LANES];
    let mut sum = _mm256_setzero_ps();
    for v in acc {
        sum = _mm256_add_ps(sum, v);
    }
    // SAFETY: `out` holds LANES = 8 floats, the 8 lanes stored.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out.iter().sum()
}

/// `iters` rounds of FMA chains in AVX-512 registers.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999_9);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for v in acc {
        sum = _mm512_add_ps(sum, v);
    }
    _mm512_reduce_add_ps(sum)
}

/// The FMA kernel, its name and its lanes per accumulator.
fn fma_kernel() -> (&'static str, usize, fn(usize, f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::backend::cpu::fast::FcKernel::Avx512.supported() {
            // SAFETY: the CPU supports avx512f (`supported()` detects it).
            return ("avx512f", 16, |n, s| unsafe { fma_avx512(n, s) });
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports avx2 and fma (checked just above).
            return ("avx2+fma", LANES, |n, s| unsafe { fma_avx2(n, s) });
        }
    }
    ("portable", LANES, fma_portable)
}

/// Sums with 16 independent lanes: a single running f32 sum cannot be vectorised
/// (its order is fixed) and would measure add latency instead of bandwidth.
fn sum_lanes(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for chunk in c.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().sum()
}

/// Measures the CPU's peak FMA rate and bandwidth; takes about a second.
pub fn cpu_peak() -> CpuPeak {
    let threads = rayon::current_num_threads();
    let (kernel, lanes, fma) = fma_kernel();
    let iters = 2_000_000;
    let mut best_fma = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sink: f32 = (0..threads)
            .into_par_iter()
            .map(|i| fma(iters, i as f32))
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        let flops = (threads * iters * CHAINS * lanes * 2) as f64;
        best_fma = best_fma.max(flops / secs / 1e9);
    }
    // 256 MiB: far beyond any last-level cache.
    let n = 64 << 20;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let (mut best_read, mut best_copy) = (0f64, 0f64);
    for _ in 0..4 {
        let t = Instant::now();
        let s: f32 = src.par_chunks(1 << 16).map(sum_lanes).sum();
        best_read = best_read.max((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        std::hint::black_box(s);
        let t = Instant::now();
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best_copy = best_copy.max((n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
        std::hint::black_box(&dst);
    }
    CpuPeak {
        fma_gflops: best_fma,
        read_gbps: best_read,
        copy_gbps: best_copy,
        threads,
        kernel,
    }
}
