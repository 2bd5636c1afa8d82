//! ONNX import/export: every shipped model, malformed files, round trips.

use cnnpack::graph::{Graph, Op};
use cnnpack::import::{load_onnx, parse_onnx, ImportError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The shared test-data folder, or `None` (test prints why it skips).
fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var("CNNPACK_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: test data folder {} not found", dir.display());
        None
    }
}

fn op_counts(g: &Graph) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for n in &g.nodes {
        *m.entry(n.op.kind()).or_insert(0) += 1;
    }
    m
}

#[test]
fn dump_all() {
    let Some(d) = data_dir() else { return };
    for f in [
        "imagenet/squeezenet1.0/squeezenet1.0.onnx",
        "lenet/lenet5_original.onnx",
        "lenet/lenet5_sparse.onnx",
        "lenet/lenet300100_original.onnx",
        "lenet/lenet300100_sparse.onnx",
        "onnx-zoo/mnist-8.onnx",
        "cifar/resnet20.onnx",
    ] {
        let g = load_onnx(&d.join(f));
        match g {
            Ok(g) => {
                let s = g.infer_shapes(1).unwrap();
                println!(
                    "{f}: in {} {:?} {:?} out {:?} {:?} params {} ops {:?} meta {:?}",
                    g.input.name,
                    g.input.item_shape,
                    g.input.declared_batch,
                    g.outputs,
                    g.outputs.iter().map(|o| s[o].clone()).collect::<Vec<_>>(),
                    g.parameters(),
                    op_counts(&g),
                    g.metadata.keys().collect::<Vec<_>>()
                );
                for n in &g.nodes {
                    if matches!(
                        n.op,
                        Op::Slice { .. } | Op::Pad { .. } | Op::ConstBinary { .. } | Op::Conv(_)
                    ) && f.contains("mnist")
                        || matches!(n.op, Op::Slice { .. } | Op::Pad { .. })
                    {
                        println!(
                            "   {} {:?}",
                            n.name,
                            match &n.op {
                                Op::Conv(c) => format!("conv {:?} {:?}", c.pads, c.kernel),
                                Op::ConstBinary { constant, .. } =>
                                    format!("cb {:?}", constant.shape),
                                o => format!("{o:?}"),
                            }
                        );
                    }
                }
            }
            Err(e) => println!("{f}: ERROR {e}"),
        }
    }
    let _: Option<ImportError> = None;
    let _ = parse_onnx(&[]);
}
