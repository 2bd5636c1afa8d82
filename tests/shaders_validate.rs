//! Parses and validates every `shaders/*.wgsl` with naga, without a device, so a
//! broken shader fails here with its file name and line numbers rather than at
//! pipeline creation on some adapter. Templates (`shaders/*.wgsl.tmpl`, filled in by the
//! host) are validated per generated variant by their host file's unit tests.

mod common;
use std::path::{Path, PathBuf};

/// Parses and validates one WGSL source; the error text names the file and lines.
fn check(path: &Path, source: &str) -> Result<(), String> {
    let name = path.display().to_string();
    let module = naga::front::wgsl::parse_str(source).map_err(|e| {
        format!(
            "{name}: parse error:\n{}",
            e.emit_to_string_with_path(source, &name)
        )
    })?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| {
        format!(
            "{name}: validation error:\n{}",
            e.emit_to_string_with_path(source, &name)
        )
    })?;
    Ok(())
}

fn shader_files() -> Vec<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("shaders/ exists in the crate root")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_validates() {
    let files = shader_files();
    assert!(!files.is_empty(), "no shaders found");
    let mut failures = vec![];
    for path in &files {
        let source = std::fs::read_to_string(path).expect("shader file is readable UTF-8");
        if let Err(e) = check(path, &source) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn broken_shader_is_reported() {
    let bad_type = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    let err = check(Path::new("bad.wgsl"), bad_type).expect_err("type error must fail");
    assert!(err.contains("bad.wgsl"), "{err}");
    let bad_syntax = "fn main( {";
    assert!(check(Path::new("bad2.wgsl"), bad_syntax).is_err());
}
