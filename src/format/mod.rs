//! Model files: the `.cnnpack` container, `.npy` tensors, and extension dispatch.

pub mod cnnpack;
pub mod npy;

pub use cnnpack::{from_bytes, load, save, to_bytes, FormatError};
pub use npy::{read_npy, write_npy, NpyError};

use crate::graph::Graph;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Loads a model by file extension: `.cnnpack` (this crate's format) or `.onnx`.
pub fn load_model(path: &Path) -> Result<Graph, FormatError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("cnnpack") => load(path),
        Some("onnx") => import_onnx(path),
        other => Err(FormatError::UnknownExtension {
            path: path.display().to_string(),
            ext: other.unwrap_or("").to_string(),
        }),
    }
}

/// The single place where `.onnx` files reach the ONNX importer.
fn import_onnx(path: &Path) -> Result<Graph, FormatError> {
    crate::import::onnx::load_onnx(path).map_err(|e| FormatError::Onnx {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same directory,
/// fsynced, then renamed over `path`. A write that fails or is killed part-way leaves
/// any previous file at `path` intact (a stray hidden `.NAME.tmp-*` file may remain).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with_hook(path, bytes, |_| Ok(())).map_err(|(_, e)| e)
}

/// As [`write_atomic`], calling `before_rename(temp_path)` after the temporary file is
/// written and synced and before it replaces `path`. An error from the hook aborts the
/// write (the temporary file is removed) exactly where a crash would: crash tests use
/// it. Errors carry the path they concern.
pub fn write_atomic_with_hook(
    path: &Path,
    bytes: &[u8],
    before_rename: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), (PathBuf, std::io::Error)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| (tmp.clone(), e))?;
        f.write_all(bytes).map_err(|e| (tmp.clone(), e))?;
        f.sync_all().map_err(|e| (tmp.clone(), e))?;
        drop(f);
        before_rename(&tmp).map_err(|e| (tmp.clone(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable; not all platforms can open a directory.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
