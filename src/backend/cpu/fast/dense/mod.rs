//! Dense conv and fc.
//!
//! Conv, with AVX2+FMA: a GEMM per (image, group), `W[cout, K] · B[K, positions]`,
//! through the register-blocked kernel in `gemm` on operands read in place: the weights
//! as stored, and B as shifted views of the zero-padded input split into its stride
//! phases (no im2col; 1x1 stride-1 convs read the input planes themselves). Bias and a
//! fused ReLU are applied when a task's accumulator block is written out. Without
//! AVX2+FMA: im2col + `matrixmultiply::sgemm`.
//!
//! Fc with AVX2+FMA: a row-streaming GEMV at batch 1-15, `gemm::block` at 16-64 (see
//! `linear`); else sgemm.
//!
//! Files: `conv.rs` the conv (GEMM on shifted views of the padded input, or im2col +
//! sgemm), `fc.rs` the fc (the GEMVs, the GEMM on input panels, sgemm) and the GEMV on
//! rows decoded as they are used, which the compressed fcs share.

mod conv;
mod depthwise;
mod fc;

pub(super) use conv::pad_and_phase;
pub use conv::{conv2d, conv2d_relu};
pub use depthwise::{depthwise_conv2d, is_depthwise};
pub(super) use fc::decoded_rows_dots;
pub(crate) use fc::gemv_supported;
pub use fc::{linear, linear_as, linear_isa};

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
    // SAFETY: the caller's contract is sgemm's: every addressed element inside its
    // allocation, and this part of `c` touched by no other thread.
    unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, 1) };
}

/// The output pointer shared by the tile tasks of one conv call.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: the tiles of one call write pairwise disjoint regions of the output (distinct
// images, output channels or columns), and the call waits for all of them.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: shared only by tasks that write disjoint regions.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` past the start. A method (rather than `.0`) so that closures
    /// capture the whole `Send + Sync` wrapper, not the raw pointer field.
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
