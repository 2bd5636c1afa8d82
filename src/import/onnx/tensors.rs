//! Constant tensors: `TensorProto` decoding into `Const` (initializers,
//! Constant nodes), with dims and data length checked before allocating.

use super::bounds::MAX_ELEMENTS;
use crate::graph::Tensor;
use crate::import::proto::{data_type, TensorProto};
use crate::import::ImportError;

/// A constant value: an initializer, a Constant node, or a folded Reshape.
#[derive(Clone, Debug)]
pub(super) struct Const {
    pub(super) dims: Vec<usize>,
    pub(super) data: ConstData,
}

#[derive(Clone, Debug)]
pub(super) enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Const {
    /// Decodes a TensorProto, checking dims and data length before allocating.
    pub(super) fn from_proto(t: &TensorProto) -> Result<Const, ImportError> {
        let name = t.name.clone().unwrap_or_default();
        let dtype = t.data_type.unwrap_or(0);
        let bad = |reason: String| ImportError::BadTensor {
            name: name.clone(),
            dtype,
            dims: t.dims.clone(),
            reason,
        };
        let mut n: u64 = 1;
        let mut dims = Vec::with_capacity(t.dims.len().min(64));
        for &d in &t.dims {
            if d < 0 {
                return Err(bad(format!("negative dimension {d}")));
            }
            n = n.saturating_mul(d as u64);
            dims.push(d as usize);
        }
        if n > MAX_ELEMENTS {
            return Err(bad(format!(
                "{n} elements, over the limit of {MAX_ELEMENTS}"
            )));
        }
        if t.data_location == Some(1) || !t.external_data.is_empty() {
            return Err(bad("external data is not supported".into()));
        }
        let n = n as usize;
        let raw = t.raw_data.as_deref();
        let check = |found: usize, unit: &str| {
            if found == n {
                Ok(())
            } else {
                Err(bad(format!(
                    "declares {n} elements but holds {found} {unit}"
                )))
            }
        };
        let data = match dtype {
            data_type::FLOAT => ConstData::F32(match raw {
                Some(r) => {
                    check(r.len() / 4, "floats")?;
                    check_exact(r.len(), n, 4).map_err(&bad)?;
                    r.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                None => {
                    check(t.float_data.len(), "floats")?;
                    t.float_data.clone()
                }
            }),
            data_type::DOUBLE => ConstData::F32(match raw {
                Some(r) => {
                    check(r.len() / 8, "doubles")?;
                    check_exact(r.len(), n, 8).map_err(&bad)?;
                    r.chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect()
                }
                None => {
                    check(t.double_data.len(), "doubles")?;
                    t.double_data.iter().map(|&v| v as f32).collect()
                }
            }),
            data_type::INT64 => ConstData::I64(match raw {
                Some(r) => {
                    check(r.len() / 8, "int64s")?;
                    check_exact(r.len(), n, 8).map_err(&bad)?;
                    r.chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect()
                }
                None => {
                    check(t.int64_data.len(), "int64s")?;
                    t.int64_data.clone()
                }
            }),
            data_type::INT32 => ConstData::I64(match raw {
                Some(r) => {
                    check(r.len() / 4, "int32s")?;
                    check_exact(r.len(), n, 4).map_err(&bad)?;
                    r.chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                        .collect()
                }
                None => {
                    check(t.int32_data.len(), "int32s")?;
                    t.int32_data.iter().map(|&v| v as i64).collect()
                }
            }),
            other => {
                return Err(bad(format!(
                    "data type {other} is not supported (float, double, int32, int64 are)"
                )))
            }
        };
        Ok(Const { dims, data })
    }

    fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }

    /// As an f32 tensor (integers converted).
    pub(super) fn to_tensor(&self) -> Tensor {
        let data = match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        };
        Tensor {
            shape: self.dims.clone(),
            data,
        }
    }

    /// As integers (shape-like inputs); `None` for float data.
    pub(super) fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            ConstData::I64(v) => Some(v),
            ConstData::F32(_) => None,
        }
    }

    /// The single value of a one-element constant, as f32.
    pub(super) fn scalar(&self) -> Option<f32> {
        (self.len() == 1).then(|| match &self.data {
            ConstData::F32(v) => v[0],
            ConstData::I64(v) => v[0] as f32,
        })
    }
}

/// Raw byte length must be an exact multiple (a trailing partial element is corruption).
fn check_exact(bytes: usize, n: usize, size: usize) -> Result<(), String> {
    if bytes == n * size {
        Ok(())
    } else {
        Err(format!("raw_data has {bytes} bytes, expected {}", n * size))
    }
}
