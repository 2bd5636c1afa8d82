//! The constructs of the torchvision families cnnpack once refused (SiLU, squeeze-
//! excitation, HardSwish, ReduceMean heads, ShuffleNet's shape-computed channel shuffle,
//! ConvNeXt's channels-last block, 1-D convs and pools) and an operator-coverage set, as
//! small ONNX graphs
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

const PATTERNS: [&str; 10] = [
    "silu",
    "squeeze_excite",
    "hardswish_se",
    "reduce_mean",
    "channel_shuffle",
    "convnext_block",
    "broadcast_binaries",
    "reductions",
    "layout_ops",
    "conv1d",
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

/// Every pattern survives `.cnnpack` (the graph JSON of the new ops) and ONNX export
/// (opset 17: SiLU and erf-GELU written as their decompositions) and computes the same.
#[test]
fn patterns_round_trip_through_cnnpack_and_onnx_export() {
    use cnnpack::backend::cpu::reference::run_graph;
    for name in PATTERNS {
        let d = dir();
        let graph = fold(load_onnx(&d.join(format!("{name}.onnx"))).unwrap()).unwrap();
        let x = read_npy(&d.join(format!("{name}.input.npy"))).unwrap();
        let want = run_graph(&graph, &x).unwrap().remove(0);
        let packed = cnnpack::format::to_bytes(&graph).unwrap();
        let back = cnnpack::format::from_bytes(&packed)
            .unwrap_or_else(|e| panic!("{name}: .cnnpack reload: {e}"));
        assert_eq!(
            back.nodes, graph.nodes,
            "{name}: .cnnpack changed the graph"
        );
        let onnx =
            cnnpack::import::export_onnx(&graph).unwrap_or_else(|e| panic!("{name}: export: {e}"));
        let again = fold(
            cnnpack::import::parse_onnx(&onnx)
                .unwrap_or_else(|e| panic!("{name}: re-import of the export: {e}")),
        )
        .unwrap();
        let got = run_graph(&again, &x).unwrap().remove(0);
        assert_close(&format!("{name} exported"), &got, &want, (1e-5, 1e-5));
    }
}

/// The element-wise ops whose export is not one ONNX node, or needs attributes, come back
/// from ONNX computing the same: SiLU, erf-GELU, HardSigmoid, Elu; the tanh GELU (no
/// opset-17 operator) is a clear export error.
#[test]
fn unary_exports_round_trip() {
    use cnnpack::backend::cpu::reference::run_graph;
    use cnnpack::graph::{GraphBuilder, Op, Rng, UnaryOp};
    let mut rng = Rng::new(3);
    let x = rng.normal_tensor(vec![2, 3, 5], 2.0);
    for op in [
        UnaryOp::Silu,
        UnaryOp::Gelu { tanh: false },
        UnaryOp::HardSigmoid {
            alpha: 0.3,
            beta: 0.4,
        },
        UnaryOp::Elu { alpha: 0.7 },
    ] {
        let mut b = GraphBuilder::new("x", &[3, 5], 1);
        let y = b.push("op", Op::Unary(op), &["x"]);
        let g = b.finish(&[&y]).unwrap();
        let want = run_graph(&g, &x).unwrap().remove(0);
        let onnx = cnnpack::import::export_onnx(&g).unwrap();
        let back = fold(cnnpack::import::parse_onnx(&onnx).unwrap()).unwrap();
        let got = run_graph(&back, &x).unwrap().remove(0);
        assert_close(&format!("{op:?} exported"), &got, &want, (1e-6, 1e-6));
    }
    let mut b = GraphBuilder::new("x", &[3, 5], 1);
    let y = b.push("op", Op::Unary(UnaryOp::Gelu { tanh: true }), &["x"]);
    let g = b.finish(&[&y]).unwrap();
    let e = cnnpack::import::export_onnx(&g).unwrap_err();
    assert!(e.to_string().contains("tanh GELU"), "{e}");
}
