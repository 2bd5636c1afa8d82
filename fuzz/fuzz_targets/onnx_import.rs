//! Fuzzes the ONNX importer: any byte string must give a `Graph` or an `ImportError`,
//! never a panic, a hang or an allocation the input merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = cnnpack::import::parse_onnx(data) {
        // An imported graph has passed validation; validating it again must agree.
        g.validate().expect("an imported graph validates");
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
    // Small everywhere: a Pad, Expand or Concat can make a large value from a small
    // input (a mutated pads list gave a 36M-element output, 10 s in the reference kernels).
    let Ok(shapes) = g.infer_shapes(1) else {
        return;
    };
    if shapes.values().any(|s| s.iter().product::<usize>() > 1 << 16) {
        return;
    }
    let mut shape = vec![1];
    shape.extend(&g.input.item_shape);
    if let Ok(e) = cnnpack::engine::Engine::new(g, cnnpack::engine::DeviceKind::Cpu) {
        let _ = e.run(&cnnpack::graph::Tensor::full(shape, 0.5));
    }
}
