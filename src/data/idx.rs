//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed.
//!
//! Format: big-endian `u32` magic `0x0000_08DD` (type 0x08 = unsigned byte, `DD` =
//! number of dimensions), then one big-endian `u32` per dimension, then the bytes.

use super::DataError;
use std::io::Read;
use std::path::Path;

/// Largest (decompressed) IDX file read (bytes).
pub const MAX_IDX_BYTES: u64 = 1 << 31;

/// Largest buffer reserved before the data is read (bytes).
const RESERVE_BYTES: u64 = 64 << 20;

/// Reads an unsigned-byte IDX file with `ndims` dimensions (gzip detected by its
/// magic); returns the dims and the data. The dims are checked before the data is
/// allocated: against the file length for raw files, against `MAX_IDX_BYTES` for
/// gzip (whose decompressed size is only known by decompressing), and the data read
/// must then have exactly the length they imply.
fn read_idx(path: &Path, ndims: u8) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let p = path.display().to_string();
    let io = |source| DataError::Io {
        path: p.clone(),
        source,
    };
    let err = |reason: String| DataError::Idx {
        path: p.clone(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io)?;
    let gz = n == 2 && magic == [0x1f, 0x8b];
    let f = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let header_len = 4 + 4 * ndims as usize;
    let mut header = vec![0u8; header_len];
    let mut got = 0;
    while got < header_len {
        match r.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(format!("reading the header: {e}"))),
        }
    }
    if got < 4 {
        return Err(err(format!("{got} bytes, too short for the magic")));
    }
    if header[0] != 0 || header[1] != 0 {
        return Err(err(format!(
            "bad magic {:02x}{:02x}{:02x}{:02x} (not an IDX file)",
            header[0], header[1], header[2], header[3]
        )));
    }
    if header[2] != 0x08 {
        return Err(err(format!(
            "element type 0x{:02x}, only 0x08 (unsigned byte) is supported",
            header[2]
        )));
    }
    if header[3] != ndims {
        return Err(err(format!("{} dimensions, expected {ndims}", header[3])));
    }
    if got < header_len {
        return Err(err(format!("{got} bytes, too short for the header")));
    }
    let dims: Vec<usize> = (0..ndims as usize)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| err(format!("dimensions {dims:?} exceed {MAX_IDX_BYTES} bytes")))?;
    if !gz && file_len - header_len as u64 != expected {
        return Err(err(format!(
            "dimensions {dims:?} need {expected} data bytes, the file has {}",
            file_len - header_len as u64
        )));
    }
    // Read one byte more than expected to detect trailing data. A gzip header's dims
    // are only a claim until the data is decompressed: reserve at most 64 MiB up
    // front and let the vector grow with what actually arrives.
    let mut data = Vec::with_capacity(expected.min(RESERVE_BYTES) as usize);
    r.take(expected + 1)
        .read_to_end(&mut data)
        .map_err(|e| err(format!("reading the data: {e}")))?;
    if data.len() as u64 != expected {
        return Err(err(format!(
            "dimensions {dims:?} need {expected} data bytes, the file has {}{}",
            data.len(),
            if data.len() as u64 > expected {
                " or more"
            } else {
                ""
            }
        )));
    }
    Ok((dims, data))
}

/// Reads an IDX image file (`.gz` or raw): `(pixels, n, rows, cols)`, pixels row-major
/// `[n, rows, cols]`, 0-255.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let (dims, data) = read_idx(path, 3)?;
    Ok((data, dims[0], dims[1], dims[2]))
}

/// Reads an IDX label file (`.gz` or raw): one byte per item.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let (_, data) = read_idx(path, 1)?;
    Ok(data)
}
