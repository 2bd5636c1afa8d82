//! The constructs of the torchvision families cnnpack once refused (SiLU, squeeze-
//! excitation, HardSwish, ReduceMean heads, ShuffleNet's shape-computed channel shuffle,
//! ConvNeXt's channels-last block) and an operator-coverage set, as small ONNX graphs
//! with ONNX Runtime's outputs (`tests/data/onnx_patterns`, made by
//! `tools/onnx_patterns.py`): each is imported, folded as the engine folds it, and run
//! on every device at the file's batch and at batch 1 and 3 (the reference at those
//! batches is checked against ORT's batch-2 rows where they coincide).

mod common;

use cnnpack::format::npy::read_npy;
use cnnpack::graph::{fold, Tensor};
use cnnpack::import::onnx::load_onnx;
use common::assert_close;
use std::path::PathBuf;

const PATTERNS: [&str; 9] = [
    "silu",
    "squeeze_excite",
    "hardswish_se",
    "reduce_mean",
    "channel_shuffle",
    "convnext_block",
    "broadcast_binaries",
    "reductions",
    "layout_ops",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx_patterns")
}

/// Rows `lo..hi` of a batch-first tensor.
fn rows(t: &Tensor, lo: usize, hi: usize) -> Tensor {
    let per: usize = t.shape[1..].iter().product();
    let mut shape = t.shape.clone();
    shape[0] = hi - lo;
    Tensor::new(shape, t.data[lo * per..hi * per].to_vec()).unwrap()
}

/// The rule: max |Δ| ≤ 1e-3 · max(1, max |reference|).
fn ort_tolerance() -> (f32, f32) {
    (1e-3, 1e-3)
}

#[test]
fn patterns_match_onnx_runtime_on_every_device() {
    for name in PATTERNS {
        let d = dir();
        let graph = load_onnx(&d.join(format!("{name}.onnx")))
            .unwrap_or_else(|e| panic!("{name}: import failed: {e}"));
        let graph = fold(graph).unwrap_or_else(|e| panic!("{name}: fold failed: {e}"));
        let x = read_npy(&d.join(format!("{name}.input.npy"))).unwrap();
        let want = read_npy(&d.join(format!("{name}.output.npy"))).unwrap();
        for_each_device!(|dev| {
            let got = dev.run(&graph, &x);
            assert_close(
                &format!("{name} on {}", dev.name()),
                &got[0],
                &want,
                ort_tolerance(),
            );
            // One image alone gives that image's row of the batch-2 output.
            let one = dev.run(&graph, &rows(&x, 1, 2));
            assert_close(
                &format!("{name} on {} at batch 1", dev.name()),
                &one[0],
                &rows(&want, 1, 2),
                ort_tolerance(),
            );
        });
    }
}

#[test]
fn patterns_import_to_fused_ops() {
    use cnnpack::graph::{Op, UnaryOp};
    let ops = |name: &str| {
        let g = fold(load_onnx(&dir().join(format!("{name}.onnx"))).unwrap()).unwrap();
        g.nodes.iter().map(|n| n.op.clone()).collect::<Vec<_>>()
    };
    // x * sigmoid(x) is one SiLU; no Sigmoid is left over.
    let silu = ops("silu");
    assert!(silu.contains(&Op::Unary(UnaryOp::Silu)), "{silu:?}");
    assert!(!silu.iter().any(|o| matches!(o, Op::Sigmoid)));
    // The shuffle's shape subgraph folds away: no node reads a shape.
    let shuffle = ops("channel_shuffle");
    assert!(shuffle.iter().any(|o| matches!(o, Op::Transpose { .. })));
    assert!(
        shuffle
            .iter()
            .filter(|o| matches!(o, Op::Reshape { .. }))
            .count()
            >= 2
    );
    // ConvNeXt's MatMuls are Linear layers (what compression sees).
    let convnext = ops("convnext_block");
    assert_eq!(
        convnext
            .iter()
            .filter(|o| matches!(o, Op::Linear(_)))
            .count(),
        2
    );
}
