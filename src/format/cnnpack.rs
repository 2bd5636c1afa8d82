//! The `.cnnpack` model file: a safetensors container.
//!
//! Layout:
//! - `__metadata__` holds `format` = `"cnnpack"`, `version` = `"2"`, `graph` = the
//!   [`Graph`] as JSON (tensors and weights serialize their shapes and settings only),
//!   and `checksum` = FNV-1a-64 (16 lowercase hex digits) over the graph JSON and every
//!   tensor (see [`checksum`]).
//! - One safetensors tensor per flat array, named `{node}.{role}`: each op constant
//!   (`bias`, `scale`, `mean`, `var`, `constant`) with its own shape, and each weight
//!   part (`Weights::parts`, e.g. `weight`) as a 1-D array of its dtype (F32, U32, U16).
//!   All little-endian.
//!
//! Loading trusts nothing before checking it: container offsets (safetensors), format
//! and version, the checksum, then every tensor's presence, dtype and length against
//! what the graph JSON implies, and finally `Graph::validate`.

use crate::graph::{Graph, GraphError, Op};
use crate::weights::{EncodingError, PartMut, PartRef, Weights};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "cnnpack";
/// Value of the `version` metadata key this code writes. Version 2 stores pow2 codes
/// (and sparse value codes) as dense bit streams (`weights/bitstream.rs`); version 1
/// files, which store them word-aligned and say so by the headers' missing `packing`,
/// are still read (`READS`).
pub const VERSION: &str = "2";
/// Versions this code reads.
pub const READS: [&str; 2] = ["1", "2"];
/// Largest `.cnnpack` file `load` reads (bytes).
pub const MAX_FILE_BYTES: u64 = 8 << 30;
/// Largest element count of any one tensor or shape in a loaded graph.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// Errors reading or writing `.cnnpack` files (and dispatching model files).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File at fault.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exceeds `MAX_FILE_BYTES`.
    #[error("{path}: file has {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        /// File at fault.
        path: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The safetensors container is malformed (truncated, bad offsets, bad header).
    #[error("not a valid safetensors container: {0}")]
    Container(String),
    /// A `__metadata__` key is missing or has the wrong value.
    #[error("metadata key '{key}': {reason}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Stored and computed checksums differ: the file was altered or damaged.
    #[error("checksum mismatch: file says {stored}, contents hash to {computed}")]
    Checksum {
        /// Checksum in the metadata.
        stored: String,
        /// Checksum of the contents.
        computed: String,
    },
    /// The graph JSON does not parse.
    #[error("graph JSON: {0}")]
    GraphJson(String),
    /// A tensor the graph needs is absent.
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    /// A tensor no node claims.
    #[error("tensor '{0}' is not used by any node")]
    UnexpectedTensor(String),
    /// Two arrays would be stored under one name.
    #[error("two arrays would both be stored as tensor '{0}'")]
    DuplicateTensor(String),
    /// A tensor's dtype is not the one its role needs.
    #[error("tensor '{name}': dtype {found}, expected {expected}")]
    Dtype {
        /// Tensor name.
        name: String,
        /// Dtype found.
        found: String,
        /// Dtype expected.
        expected: &'static str,
    },
    /// A tensor's size disagrees with the graph.
    #[error("tensor '{name}': {found}, expected {expected}")]
    Length {
        /// Tensor name.
        name: String,
        /// What was found (bytes or shape).
        found: String,
        /// What the graph implies.
        expected: String,
    },
    /// A shape in the graph JSON is implausibly large.
    #[error("node '{node}': shape {shape:?} of {what} exceeds {MAX_ELEMENTS} elements")]
    Oversized {
        /// Node (or the graph input's name).
        node: String,
        /// Which tensor.
        what: String,
        /// The shape.
        shape: Vec<usize>,
    },
    /// A weight encoding's parts disagree with its shape.
    #[error("node '{node}': {source}")]
    Encoding {
        /// The node at fault.
        node: String,
        /// The check that failed.
        source: EncodingError,
    },
    /// The loaded graph (or the graph to save) is invalid.
    #[error("graph: {0}")]
    Graph(#[from] GraphError),
    /// The file extension is not a known model format.
    #[error("{path}: unknown model extension '{ext}' (expected .cnnpack or .onnx)")]
    UnknownExtension {
        /// The file.
        path: String,
        /// Its extension.
        ext: String,
    },
    /// ONNX import failed or is not available.
    #[error("{path}: ONNX: {reason}")]
    Onnx {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// One stored array, as it sits in the container.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    /// `{node}.{role}`.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape as written in the safetensors header.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Cow<'a, [u8]>,
}

impl View for &RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// FNV-1a 64-bit hash; `state` starts at [`FNV_OFFSET`].
pub fn fnv1a64(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= b as u64;
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// FNV-1a 64 offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The file checksum: FNV-1a-64 over the graph JSON, then for each tensor in name
/// order its name, dtype name, shape (as u64 LE) and data, with 0xFF separators.
/// Returned as 16 lowercase hex digits.
pub fn checksum(graph_json: &str, tensors: &[&RawTensor<'_>]) -> String {
    let mut sorted: Vec<&&RawTensor<'_>> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = fnv1a64(FNV_OFFSET, graph_json.as_bytes());
    for t in sorted {
        h = fnv1a64(h, &[0xFF]);
        h = fnv1a64(h, t.name.as_bytes());
        h = fnv1a64(h, &[0xFF]);
        h = fnv1a64(h, format!("{:?}", t.dtype).as_bytes());
        for d in &t.shape {
            h = fnv1a64(h, &(*d as u64).to_le_bytes());
        }
        h = fnv1a64(h, &[0xFF]);
        h = fnv1a64(h, &t.data);
    }
    format!("{h:016x}")
}

/// Writes a container from graph JSON and arrays, adding format, version and checksum.
/// Low level: `to_bytes` is the normal entry; tests use this to build damaged files.
pub fn assemble(graph_json: &str, tensors: &[RawTensor<'_>]) -> Result<Vec<u8>, FormatError> {
    let refs: Vec<&RawTensor<'_>> = tensors.iter().collect();
    let sum = checksum(graph_json, &refs);
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("version".to_string(), VERSION.to_string());
    meta.insert("graph".to_string(), graph_json.to_string());
    meta.insert("checksum".to_string(), sum);
    safetensors::serialize(refs.iter().map(|t| (t.name.clone(), *t)), Some(meta))
        .map_err(|e| FormatError::Container(e.to_string()))
}

/// Reads a container into its metadata map and arrays (borrowing the bytes), checking
/// only the container structure. Low level: `from_bytes` is the normal entry.
pub fn disassemble(
    bytes: &[u8],
) -> Result<(HashMap<String, String>, Vec<RawTensor<'_>>), FormatError> {
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| FormatError::Container(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| FormatError::Container(e.to_string()))?;
    let map = meta.metadata().clone().unwrap_or_default();
    let mut tensors: Vec<RawTensor<'_>> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| RawTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: Cow::Borrowed(v.data()),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((map, tensors))
}

fn f32_bytes(v: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

fn u32_bytes(v: &[u32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

fn u16_bytes(v: &[u16]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

fn weights_mut(op: &mut Op) -> Option<&mut Weights> {
    match op {
        Op::Conv(c) => Some(&mut c.weight),
        Op::Linear(l) => Some(&mut l.weight),
        _ => None,
    }
}

/// The arrays of a graph, named `{node}.{role}`.
fn collect_tensors(graph: &Graph) -> Result<Vec<RawTensor<'_>>, FormatError> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for node in &graph.nodes {
        if let Some(w) = node.op.weights() {
            w.check().map_err(|source| FormatError::Encoding {
                node: node.name.clone(),
                source,
            })?;
            for (role, part) in w.parts() {
                let name = format!("{}.{}", node.name, role);
                let (dtype, len, data) = match part {
                    PartRef::F32(v) => (Dtype::F32, v.len(), f32_bytes(v)),
                    PartRef::U32(Cow::Borrowed(v)) => (Dtype::U32, v.len(), u32_bytes(v)),
                    PartRef::U32(Cow::Owned(v)) => {
                        (Dtype::U32, v.len(), Cow::Owned(u32_bytes(&v).into_owned()))
                    }
                    PartRef::U16(v) => (Dtype::U16, v.len(), u16_bytes(v)),
                };
                if !seen.insert(name.clone()) {
                    return Err(FormatError::DuplicateTensor(name));
                }
                out.push(RawTensor {
                    name,
                    dtype,
                    shape: vec![len],
                    data,
                });
            }
        }
        for (role, t) in node.op.constants() {
            let name = format!("{}.{}", node.name, role);
            if t.data.len() != t.shape.iter().product::<usize>() {
                return Err(FormatError::Length {
                    name,
                    found: format!("{} elements", t.data.len()),
                    expected: format!(
                        "{} for shape {:?}",
                        t.shape.iter().product::<usize>(),
                        t.shape
                    ),
                });
            }
            if !seen.insert(name.clone()) {
                return Err(FormatError::DuplicateTensor(name));
            }
            out.push(RawTensor {
                name,
                dtype: Dtype::F32,
                shape: t.shape.clone(),
                data: f32_bytes(&t.data),
            });
        }
    }
    Ok(out)
}

/// Serializes a graph to `.cnnpack` bytes.
pub fn to_bytes(graph: &Graph) -> Result<Vec<u8>, FormatError> {
    let json = serde_json::to_string(graph).map_err(|e| FormatError::GraphJson(e.to_string()))?;
    let tensors = collect_tensors(graph)?;
    assemble(&json, &tensors)
}

/// Saves `graph` to `path` atomically: the bytes go to a temporary file in the same
/// directory, which is synced and then renamed over `path`. A save that fails or is
/// killed part-way leaves any previous file at `path` intact (a stray temporary file
/// may remain; it never has the `.cnnpack` name).
pub fn save(graph: &Graph, path: &Path) -> Result<(), FormatError> {
    save_with_hook(graph, path, |_| Ok(()))
}

/// As [`save`], calling `before_rename(temp_path)` after the temporary file is written
/// and synced and before it replaces `path`. An error from the hook aborts the save
/// (the temporary file is removed) exactly where a crash would: crash tests use it.
pub fn save_with_hook(
    graph: &Graph,
    path: &Path,
    before_rename: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), FormatError> {
    let bytes = to_bytes(graph)?;
    super::write_atomic_with_hook(path, &bytes, before_rename).map_err(|(p, source)| {
        FormatError::Io {
            path: p.display().to_string(),
            source,
        }
    })
}

/// Loads a `.cnnpack` file (at most `MAX_FILE_BYTES`).
pub fn load(path: &Path) -> Result<Graph, FormatError> {
    let io = |source: std::io::Error| FormatError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(FormatError::TooLarge {
            path: path.display().to_string(),
            bytes: len,
            limit: MAX_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    from_bytes(&bytes)
}

fn bounded(shape: &[usize], node: &str, what: &str) -> Result<usize, FormatError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| FormatError::Oversized {
            node: node.into(),
            what: what.into(),
            shape: shape.to_vec(),
        })
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Parses `.cnnpack` bytes into a graph, checking everything (see the module docs).
pub fn from_bytes(bytes: &[u8]) -> Result<Graph, FormatError> {
    let (meta, tensors) = disassemble(bytes)?;
    let get = |key: &'static str| {
        meta.get(key).ok_or(FormatError::Metadata {
            key,
            reason: "missing".into(),
        })
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(FormatError::Metadata {
            key: "format",
            reason: format!("'{format}', expected '{FORMAT}'"),
        });
    }
    let version = get("version")?;
    if !READS.contains(&version.as_str()) {
        return Err(FormatError::Metadata {
            key: "version",
            reason: format!(
                "'{version}', this build reads versions {}",
                READS.join(", ")
            ),
        });
    }
    let json = get("graph")?;
    let stored = get("checksum")?;
    let refs: Vec<&RawTensor<'_>> = tensors.iter().collect();
    let computed = checksum(json, &refs);
    if *stored != computed {
        return Err(FormatError::Checksum {
            stored: stored.clone(),
            computed,
        });
    }
    let mut graph: Graph =
        serde_json::from_str(json).map_err(|e| FormatError::GraphJson(e.to_string()))?;

    // Sizes first, with overflow-checked products, before anything is allocated.
    bounded(&graph.input.item_shape, &graph.input.name, "the input")?;
    for node in &graph.nodes {
        if let Some(w) = node.op.weights() {
            bounded(w.shape(), &node.name, "the weights")?;
        }
        for (role, t) in node.op.constants() {
            bounded(&t.shape, &node.name, role)?;
        }
    }

    let mut by_name: BTreeMap<String, RawTensor<'_>> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    for node in &mut graph.nodes {
        let node_name = node.name.clone();
        for (role, t) in node.op.constants_mut() {
            let name = format!("{node_name}.{role}");
            let raw = by_name
                .remove(&name)
                .ok_or_else(|| FormatError::MissingTensor(name.clone()))?;
            if raw.dtype != Dtype::F32 {
                return Err(FormatError::Dtype {
                    name,
                    found: dtype_name(raw.dtype),
                    expected: "F32",
                });
            }
            if raw.shape != t.shape {
                return Err(FormatError::Length {
                    name,
                    found: format!("shape {:?}", raw.shape),
                    expected: format!("shape {:?}", t.shape),
                });
            }
            let n = t.shape.iter().product::<usize>();
            if raw.data.len() != n * 4 {
                return Err(FormatError::Length {
                    name,
                    found: format!("{} bytes", raw.data.len()),
                    expected: format!("{} bytes", n * 4),
                });
            }
            t.data = raw
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        if let Some(w) = weights_mut(&mut node.op) {
            for (role, part) in w.parts_mut() {
                let name = format!("{node_name}.{role}");
                let raw = by_name
                    .remove(&name)
                    .ok_or_else(|| FormatError::MissingTensor(name.clone()))?;
                let (want, width) = match &part {
                    PartMut::F32(_) => (Dtype::F32, 4),
                    PartMut::U32(_) => (Dtype::U32, 4),
                    PartMut::U16(_) => (Dtype::U16, 2),
                };
                if raw.dtype != want {
                    return Err(FormatError::Dtype {
                        name,
                        found: dtype_name(raw.dtype),
                        expected: match want {
                            Dtype::F32 => "F32",
                            Dtype::U32 => "U32",
                            _ => "U16",
                        },
                    });
                }
                let elems = raw.data.len() / width;
                if raw.shape != [elems] {
                    return Err(FormatError::Length {
                        name,
                        found: format!("shape {:?}", raw.shape),
                        expected: format!("a 1-D array of {elems} elements"),
                    });
                }
                match part {
                    PartMut::F32(v) => {
                        *v = raw
                            .data
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect()
                    }
                    PartMut::U32(v) => {
                        *v = raw
                            .data
                            .chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect()
                    }
                    PartMut::U16(v) => {
                        *v = raw
                            .data
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect()
                    }
                }
            }
            w.finish_load().map_err(|source| FormatError::Encoding {
                node: node_name.clone(),
                source,
            })?;
        }
    }
    if let Some(name) = by_name.into_keys().next() {
        return Err(FormatError::UnexpectedTensor(name));
    }
    graph.validate()?;
    Ok(graph)
}
