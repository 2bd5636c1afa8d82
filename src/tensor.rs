//! Dense f32 tensors in row-major (C) order; activations are NCHW. Also the seeded `Rng`.
//!
//! A leaf: it imports nothing of the crate, so `weights` (which stores tensors) and `graph`
//! (which holds weights) both build on it without depending on each other. `graph`
//! re-exports both types, so `cnnpack::graph::{Tensor, Rng}` still work.

use serde::{Deserialize, Serialize};

/// Row-major strides of `shape` (elements between neighbours along each axis).
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// A dense f32 tensor, row-major. Activations are NCHW, conv weights
/// `[Cout, Cin/groups, kh, kw]`, fc weights `[out, in]`.
///
/// Its serde form holds the shape only: the `.cnnpack` format stores the
/// data beside the graph JSON (as safetensors) and fills it in on load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major. Not serialized (see above).
    #[serde(skip)]
    pub data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` with `shape`; `None` if the element count disagrees.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A tensor with every element equal to `value`.
    pub fn full(shape: Vec<usize>, value: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![value; n],
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Size of the data in bytes (f32).
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// Count of elements that are not exactly zero.
    pub fn nonzeros(&self) -> usize {
        self.data.iter().filter(|v| **v != 0.0).count()
    }

    /// Largest absolute element-wise difference to `other` (same length assumed).
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}

/// A small deterministic PRNG (SplitMix64) for seeded initialisation and tests,
/// so results do not depend on a crate's version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// A tensor of standard-normal values times `std`.
    pub fn normal_tensor(&mut self, shape: Vec<usize>, std: f32) -> Tensor {
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.normal() * std).collect();
        Tensor { shape, data }
    }
}
