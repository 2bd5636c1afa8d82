//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.
//!
//! Format: big-endian `u32` magic `0x0000_08DD` (type 0x08 = unsigned byte, `DD` =
//! number of dimensions), then one big-endian `u32` per dimension, then the bytes.

use super::DataError;
use std::io::Read;
use std::path::Path;

/// Largest (decompressed) IDX file read (bytes).
pub const MAX_IDX_BYTES: u64 = 1 << 31;

/// Reads the bytes of a file, decompressing gzip (detected by its magic), at most
/// `MAX_IDX_BYTES` after decompression.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let p = path.display().to_string();
    let io = |source| DataError::Io {
        path: p.clone(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io)?;
    let gz = n == 2 && magic == [0x1f, 0x8b];
    let f = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    if gz {
        // Read one byte past the limit to tell "exactly at the limit" from "over it".
        flate2::read::MultiGzDecoder::new(f)
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::Idx {
                path: p.clone(),
                reason: format!("gzip: {e}"),
            })?;
    } else {
        if len > MAX_IDX_BYTES {
            return Err(DataError::Idx {
                path: p,
                reason: format!("{len} bytes, more than the limit of {MAX_IDX_BYTES}"),
            });
        }
        f.take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(io)?;
    }
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(DataError::Idx {
            path: p,
            reason: format!("more than {MAX_IDX_BYTES} bytes after decompression"),
        });
    }
    Ok(out)
}

/// Parses an unsigned-byte IDX file with `ndims` dimensions; returns the dims and the data.
fn parse(path: &Path, bytes: Vec<u8>, ndims: u8) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let err = |reason: String| DataError::Idx {
        path: path.display().to_string(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(err(format!(
            "{} bytes, too short for the magic",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "bad magic {:02x}{:02x}{:02x}{:02x} (not an IDX file)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "element type 0x{:02x}, only 0x08 (unsigned byte) is supported",
            bytes[2]
        )));
    }
    if bytes[3] != ndims {
        return Err(err(format!("{} dimensions, expected {ndims}", bytes[3])));
    }
    let header = 4 + 4 * ndims as usize;
    if bytes.len() < header {
        return Err(err(format!(
            "{} bytes, too short for the header",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndims as usize)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header;
    if found != expected {
        return Err(err(format!(
            "dimensions {dims:?} need {expected} data bytes, the file has {found}"
        )));
    }
    let mut bytes = bytes;
    bytes.drain(..header);
    Ok((dims, bytes))
}

/// Reads an IDX image file (`.gz` or raw): `(pixels, n, rows, cols)`, pixels row-major
/// `[n, rows, cols]`, 0-255.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, data) = parse(path, bytes, 3)?;
    Ok((data, dims[0], dims[1], dims[2]))
}

/// Reads an IDX label file (`.gz` or raw): one byte per item.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse(path, bytes, 1)?;
    Ok(data)
}
