//! Fuzzes the `.cnnpack` loader (safetensors + graph JSON + checksum).
//!
//! The checksum rejects almost every mutated file before the graph JSON is parsed, so
//! each input is also re-assembled with a recomputed checksum: the fuzzer then reaches
//! the JSON, tensor and weight-encoding checks behind it.
#![no_main]

use cnnpack::format::cnnpack::{assemble, disassemble};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cnnpack::format::from_bytes(data);
    let Ok((meta, tensors)) = disassemble(data) else {
        return;
    };
    let Some(json) = meta.get("graph") else {
        return;
    };
    let Ok(fixed) = assemble(json, &tensors) else {
        return;
    };
    if let Ok(g) = cnnpack::format::from_bytes(&fixed) {
        g.validate().expect("a loaded graph validates");
    }
});
