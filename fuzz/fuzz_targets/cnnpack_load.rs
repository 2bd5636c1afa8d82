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
        run_small(g);
    }
});

/// An accepted model must also run: small ones are run once on the CPU (a model that
/// loads but crashes the kernels would crash the host later).
fn run_small(g: cnnpack::graph::Graph) {
    let item: usize = g.input.item_shape.iter().product();
    if item > 1 << 12 || g.parameters() > 1 << 16 || g.nodes.len() > 64 {
        return;
    }
    let mut shape = vec![1];
    shape.extend(&g.input.item_shape);
    if let Ok(e) = cnnpack::engine::Engine::new(g, cnnpack::engine::DeviceKind::Cpu) {
        let _ = e.run(&cnnpack::graph::Tensor::full(shape, 0.5));
    }
}
