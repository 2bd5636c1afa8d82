//! Weight encodings of conv and fc layers.
//!
//! Every encoding describes the same logical tensor: conv `[Cout, Cin/groups, kh, kw]`,
//! fc `[out, in]`. The reduction axis K of output channel `co` is the flattened
//! `(ci, ky, kx)` index, `k = (ci * kh + ky) * kw + kx`, i.e. the row-major order of
//! the dense weight with the output channel taken off. Every kernel iterates K in this
//! order and every packed encoding added later (sketch bit planes, pow2 codes, CSR
//! columns) is laid out along it.

pub mod bitstream;
mod derived;
mod pow2;
mod sketch;
mod sparse;

pub use derived::Derived;

pub use pow2::{
    codes_per_word, decode_table, encode_power, magnitudes, pow2_f32, CodePacking, Pow2Weights,
    N1_MAX, N1_MIN,
};
pub use sketch::{words_for, SketchWeights};
pub use sparse::{Cols, SparseWeights, ValueCodes, MAX_U16_K};

use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Borrowed view of one flat array of an encoding, as stored in `.cnnpack`.
#[derive(Debug)]
pub enum PartRef<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// u32 words (bit planes, packed codes); owned where the stored form is built
    /// from the in-memory one (pow2 code streams).
    U32(Cow<'a, [u32]>),
    /// u16 values (sparse indices).
    U16(&'a [u16]),
}

/// Mutable slot for one flat array of an encoding, filled by the `.cnnpack` loader.
#[derive(Debug)]
pub enum PartMut<'a> {
    /// f32 values.
    F32(&'a mut Vec<f32>),
    /// u32 words.
    U32(&'a mut Vec<u32>),
    /// u16 values.
    U16(&'a mut Vec<u16>),
}

/// An encoding whose arrays disagree with its declared shape.
#[derive(Debug, thiserror::Error)]
#[error("{encoding} weights of shape {shape:?}: part '{part}' has {found} elements, expected {expected}")]
pub struct EncodingError {
    /// Encoding name.
    pub encoding: &'static str,
    /// Logical weight shape.
    pub shape: Vec<usize>,
    /// The part at fault.
    pub part: &'static str,
    /// Elements found.
    pub found: usize,
    /// Elements expected.
    pub expected: usize,
}

/// How a layer's weights are stored.
///
/// The serde form holds each encoding's shape and settings; the flat arrays
/// (`parts`) are stored beside it and filled in through `parts_mut`, after which
/// `check` verifies their sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Weights {
    /// Plain f32, row-major.
    Dense(Tensor),
    /// Network sketching: binary bases plus scales (see `sketch.rs` for the layout).
    Sketch(SketchWeights),
    /// CSR over K per output channel (see `sparse.rs` for the layout).
    Sparse(SparseWeights),
    /// INQ powers of two: b-bit codes for `{0, ±2^n}` (see `pow2.rs` for the layout).
    Pow2(Pow2Weights),
}

impl Weights {
    /// Logical shape of the weight tensor.
    pub fn shape(&self) -> &[usize] {
        match self {
            Weights::Dense(t) => &t.shape,
            Weights::Sketch(s) => s.shape(),
            Weights::Sparse(s) => s.shape(),
            Weights::Pow2(p) => p.shape(),
        }
    }

    /// Output channels (rows).
    pub fn rows(&self) -> usize {
        self.shape()[0]
    }

    /// Length of the reduction axis K per output channel.
    pub fn row_len(&self) -> usize {
        self.shape()[1..].iter().product()
    }

    /// The dense f32 tensor these weights stand for (borrowed when already dense).
    pub fn to_dense(&self) -> Cow<'_, Tensor> {
        match self {
            Weights::Dense(t) => Cow::Borrowed(t),
            Weights::Sketch(s) => Cow::Owned(Tensor {
                shape: s.shape().to_vec(),
                data: s.dense_data(),
            }),
            Weights::Sparse(s) => Cow::Owned(Tensor {
                shape: s.shape().to_vec(),
                data: s.dense_data(),
            }),
            Weights::Pow2(p) => Cow::Owned(Tensor {
                shape: p.shape().to_vec(),
                data: p.dense_data(),
            }),
        }
    }

    /// Name of the encoding, for reports.
    pub fn encoding(&self) -> &'static str {
        match self {
            Weights::Dense(_) => "dense",
            Weights::Sketch(_) => "sketch",
            Weights::Sparse(s) if s.value_codes().is_some() => "sparse+pow2",
            Weights::Sparse(_) => "sparse",
            Weights::Pow2(_) => "pow2",
        }
    }

    /// Bytes the encoding occupies on disk (and in GPU memory, except pow2 codes, which
    /// are stored as a dense stream and used word-aligned: see `Pow2Weights::bytes`).
    pub fn bytes(&self) -> usize {
        match self {
            Weights::Dense(t) => t.bytes(),
            Weights::Sketch(s) => s.bytes(),
            Weights::Sparse(s) => s.bytes(),
            Weights::Pow2(p) => p.bytes(),
        }
    }

    /// Logical parameter count.
    pub fn parameters(&self) -> usize {
        self.shape().iter().product()
    }

    /// The flat arrays holding the data, with role names (unique per encoding).
    pub fn parts(&self) -> Vec<(&'static str, PartRef<'_>)> {
        match self {
            Weights::Dense(t) => vec![("weight", PartRef::F32(&t.data))],
            Weights::Sketch(s) => vec![
                ("bits", PartRef::U32(Cow::Borrowed(s.bits()))),
                ("scales", PartRef::F32(s.scales())),
            ],
            Weights::Sparse(s) => {
                let cols = match s.cols() {
                    crate::weights::Cols::U16(c) => PartRef::U16(c),
                    crate::weights::Cols::U32(c) => PartRef::U32(Cow::Borrowed(c)),
                };
                let values = match s.value_codes() {
                    Some(_) => ("value_codes", PartRef::U32(Cow::Borrowed(s.codes()))),
                    None => ("values", PartRef::F32(s.values())),
                };
                vec![
                    ("row_ptr", PartRef::U32(Cow::Borrowed(s.row_ptr()))),
                    ("cols", cols),
                    values,
                ]
            }
            Weights::Pow2(p) => vec![("code_stream", PartRef::U32(Cow::Owned(p.code_stream())))],
        }
    }

    /// Mutable slots for the same arrays as `parts`, in the same order.
    pub fn parts_mut(&mut self) -> Vec<(&'static str, PartMut<'_>)> {
        match self {
            Weights::Dense(t) => vec![("weight", PartMut::F32(&mut t.data))],
            Weights::Sketch(s) => {
                let (bits, scales) = s.arrays_mut();
                vec![
                    ("bits", PartMut::U32(bits)),
                    ("scales", PartMut::F32(scales)),
                ]
            }
            Weights::Sparse(s) => {
                let wide = s.wide();
                let coded = s.value_codes().is_some();
                let (row_ptr, cols16, cols32, values, codes) = s.arrays_mut();
                let cols = if wide {
                    PartMut::U32(cols32)
                } else {
                    PartMut::U16(cols16)
                };
                let values = if coded {
                    ("value_codes", PartMut::U32(codes))
                } else {
                    ("values", PartMut::F32(values))
                };
                vec![("row_ptr", PartMut::U32(row_ptr)), ("cols", cols), values]
            }
            Weights::Pow2(p) => {
                let role = match p.packing() {
                    CodePacking::Stream => "code_stream",
                    CodePacking::Words => "codes",
                };
                vec![(role, PartMut::U32(p.codes_mut()))]
            }
        }
    }

    /// After a loader filled `parts_mut`: derives what the file does not store (sparse
    /// values from their power-of-two codes, pow2 code words from the code stream),
    /// then `check`s.
    pub fn finish_load(&mut self) -> Result<(), EncodingError> {
        match self {
            Weights::Sparse(s) => s.decode_value_codes()?,
            Weights::Pow2(p) => return p.finish_load(),
            _ => {}
        }
        self.check()
    }

    /// Verifies that every part has the size the shape and settings imply.
    pub fn check(&self) -> Result<(), EncodingError> {
        match self {
            Weights::Dense(t) => {
                let expected = t.shape.iter().product();
                if t.data.len() != expected {
                    return Err(EncodingError {
                        encoding: "dense",
                        shape: t.shape.clone(),
                        part: "weight",
                        found: t.data.len(),
                        expected,
                    });
                }
                Ok(())
            }
            Weights::Sketch(s) => s.check(),
            Weights::Sparse(s) => s.check(),
            Weights::Pow2(p) => p.check(),
        }
    }

    /// Parameters that are not zero.
    pub fn nonzeros(&self) -> usize {
        match self {
            Weights::Dense(t) => t.nonzeros(),
            Weights::Sketch(s) => s.dense_data().iter().filter(|v| **v != 0.0).count(),
            Weights::Sparse(s) => s.nonzeros(),
            Weights::Pow2(p) => p.dense_data().iter().filter(|v| **v != 0.0).count(),
        }
    }
}
