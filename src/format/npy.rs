//! NumPy `.npy` reader and writer for little-endian float32 C-order arrays.
//!
//! Reads format versions 1.0, 2.0 and 3.0 (header length u16 for 1.0, u32 otherwise);
//! accepts only `descr` `'<f4'` and `fortran_order` `False`. The header dict is parsed
//! by a small hand-written parser for the Python literal NumPy writes. The data length
//! is checked against the shape (with overflow checks and a size limit) before any
//! allocation. Writes version 1.0.

use crate::graph::Tensor;
use std::io::Read;
use std::path::Path;

/// Largest element count `read_npy` accepts.
pub const MAX_NPY_ELEMENTS: usize = 1 << 31;
/// Largest header `read_npy` accepts (bytes).
const MAX_HEADER: usize = 1 << 20;

/// Errors reading or writing `.npy` files.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not an `.npy` file, or a header that does not parse.
    #[error("{path}: bad .npy header: {reason}")]
    Header {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An element type other than little-endian float32.
    #[error("{path}: dtype '{found}' is not supported (only '<f4', little-endian float32)")]
    Dtype {
        /// The file.
        path: String,
        /// The `descr` found.
        found: String,
    },
    /// A Fortran-order array.
    #[error("{path}: fortran_order True is not supported (only C order)")]
    FortranOrder {
        /// The file.
        path: String,
    },
    /// The shape holds more elements than `MAX_NPY_ELEMENTS` (or overflows).
    #[error("{path}: shape {shape:?} is too large")]
    TooLarge {
        /// The file.
        path: String,
        /// The shape.
        shape: Vec<usize>,
    },
    /// The data section is shorter or longer than the shape implies.
    #[error("{path}: shape {shape:?} needs {expected} data bytes, found {found}")]
    Length {
        /// The file.
        path: String,
        /// The shape.
        shape: Vec<usize>,
        /// Bytes the shape implies.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
}

/// Reads a float32 `.npy` file into a tensor.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let p = path.display().to_string();
    let io = |source| NpyError::Io {
        path: p.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = std::io::BufReader::new(file);
    let header_err = |reason: String| NpyError::Header {
        path: p.clone(),
        reason,
    };
    let mut pre = [0u8; 8];
    read_exact_or(&mut r, &mut pre, || {
        header_err(format!(
            "file has {file_len} bytes, too short for the 8-byte preamble"
        ))
    })?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(header_err("missing the \\x93NUMPY magic".into()));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, prefix) = match major {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or(&mut r, &mut b, || {
                header_err("truncated header length".into())
            })?;
            (u16::from_le_bytes(b) as usize, 10u64)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or(&mut r, &mut b, || {
                header_err("truncated header length".into())
            })?;
            (u32::from_le_bytes(b) as usize, 12u64)
        }
        _ => {
            return Err(header_err(format!(
                "unsupported format version {major}.{minor}"
            )))
        }
    };
    if header_len > MAX_HEADER || prefix + header_len as u64 > file_len {
        return Err(header_err(format!(
            "header length {header_len} exceeds the file ({file_len} bytes) or the {MAX_HEADER}-byte limit"
        )));
    }
    let mut hbytes = vec![0u8; header_len];
    read_exact_or(&mut r, &mut hbytes, || {
        header_err("truncated header".into())
    })?;
    // v1/v2 headers are latin-1/ASCII, v3 UTF-8; the accepted dicts are ASCII either way.
    let text = std::str::from_utf8(&hbytes)
        .map_err(|_| header_err("header is not ASCII/UTF-8 text".into()))?;
    let h = parse_header(text).map_err(header_err)?;
    if h.descr != "<f4" {
        return Err(NpyError::Dtype {
            path: p.clone(),
            found: h.descr,
        });
    }
    if h.fortran {
        return Err(NpyError::FortranOrder { path: p.clone() });
    }
    let n = h
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_NPY_ELEMENTS)
        .ok_or_else(|| NpyError::TooLarge {
            path: p.clone(),
            shape: h.shape.clone(),
        })?;
    let expected = n as u64 * 4;
    let found = file_len - prefix - header_len as u64;
    if found != expected {
        return Err(NpyError::Length {
            path: p.clone(),
            shape: h.shape,
            expected,
            found,
        });
    }
    let mut raw = vec![0u8; n * 4];
    r.read_exact(&mut raw).map_err(io)?;
    let data = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Tensor {
        shape: h.shape,
        data,
    })
}

fn read_exact_or(
    r: &mut impl Read,
    buf: &mut [u8],
    err: impl FnOnce() -> NpyError,
) -> Result<(), NpyError> {
    r.read_exact(buf).map_err(|_| err())
}

/// Writes a tensor as a float32 C-order `.npy` (format 1.0).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let io = |source| NpyError::Io {
        path: path.display().to_string(),
        source,
    };
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so magic + length + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    if header.len() > u16::MAX as usize {
        return Err(NpyError::Header {
            path: path.display().to_string(),
            reason: "shape too long for a version 1.0 header".into(),
        });
    }
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    // Atomic, so a failed write never leaves a half .npy where a good one was.
    super::write_atomic(path, &out).map_err(io)
}

struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
}

/// Parses `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` (keys in any order).
fn parse_header(text: &str) -> Result<Header, String> {
    let s = text.trim_end_matches(['\n', ' ', '\0']).trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("expected a dict, found '{}'", short(s)))?;
    let mut p = Parser { s: inner, pos: 0 };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.done() {
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(':')?;
        p.ws();
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unknown key '{}'", short(other))),
        }
        p.ws();
        if p.done() {
            break;
        }
        p.expect(',')?;
    }
    Ok(Header {
        descr: descr.ok_or("missing key 'descr'")?,
        fortran: fortran.ok_or("missing key 'fortran_order'")?,
        shape: shape.ok_or("missing key 'shape'")?,
    })
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn done(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }
    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            Err(format!("expected '{c}' at '{}'", short(self.rest())))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let q = match self.rest().chars().next() {
            Some(c @ ('\'' | '"')) => c,
            _ => {
                return Err(format!(
                    "expected a quoted string at '{}'",
                    short(self.rest())
                ))
            }
        };
        self.pos += 1;
        let end = self
            .rest()
            .find(q)
            .ok_or_else(|| "unterminated string".to_string())?;
        let v = self.rest()[..end].to_string();
        self.pos += end + 1;
        Ok(v)
    }
    fn boolean(&mut self) -> Result<bool, String> {
        for (word, v) in [("True", true), ("False", false)] {
            if self.rest().starts_with(word) {
                self.pos += word.len();
                return Ok(v);
            }
        }
        Err(format!(
            "expected True or False at '{}'",
            short(self.rest())
        ))
    }
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        loop {
            self.ws();
            if self.rest().starts_with(')') {
                self.pos += 1;
                return Ok(dims);
            }
            let digits = self.rest().len()
                - self
                    .rest()
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            if digits == 0 {
                return Err(format!("expected a dimension at '{}'", short(self.rest())));
            }
            let d: usize = self.rest()[..digits]
                .parse()
                .map_err(|_| format!("dimension '{}' too large", &self.rest()[..digits]))?;
            self.pos += digits;
            // Python may write `3L` in old files.
            if self.rest().starts_with('L') {
                self.pos += 1;
            }
            dims.push(d);
            self.ws();
            if self.rest().starts_with(',') {
                self.pos += 1;
            } else if !self.rest().starts_with(')') {
                return Err(format!("expected ',' or ')' at '{}'", short(self.rest())));
            }
        }
    }
}
