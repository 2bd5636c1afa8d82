//! Standard CNN architectures with seeded He-initialised weights, for tests,
//! benchmarks and compression experiments without downloading anything.
//!
//! Layouts follow torchvision (`alexnet`, `vgg16`, `resnet18`, `resnet50`,
//! `squeezenet1_0`, `squeezenet1_1`) and the Caffe models of the Dynamic Network
//! Surgery repository (`lenet5`, `lenet300100`); parameter counts equal theirs (see
//! the tests). Differences worth knowing:
//! - `alexnet` is torchvision's (64/192/384/256/256 channels, no LRN: LRN holds no
//!   parameters and torchvision dropped it); its AdaptiveAvgPool(6,6) and VGG's (7,7)
//!   are identities at 224x224 and are left out. Dropout is inference-time identity and
//!   is left out everywhere.
//! - torchvision models end in logits (no softmax), as the originals do. The Caffe
//!   models (`lenet5`, `lenet300100`) and the SqueezeNets end in a Softmax named
//!   `prob`, as their original deploy nets do.
//! - `squeezenet1.0` takes 227x227 input (as the Caffe original and the SqueezeNet in
//!   the test data), `squeezenet1.1` 224x224; their final 1x1 conv has no padding
//!   (torchvision).
//! - BatchNorm layers start with identity statistics.
//!
//! Preprocessing is recorded in `metadata` with the `preprocess.*` keys (see
//! `crate::data::Preprocess::from_metadata`).

use crate::graph::{Graph, GraphBuilder, GraphError};

/// Errors building a zoo model.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// The name is not in `names()`.
    #[error("unknown model '{name}'; known: {known}")]
    Unknown {
        /// The requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// The builder produced an invalid graph (a bug in the zoo).
    #[error("model '{name}': {source}")]
    Graph {
        /// The model.
        name: String,
        /// The validation error.
        source: GraphError,
    },
}

const NAMES: &[&str] = &[
    "lenet5",
    "lenet300100",
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet50",
    "squeezenet1.0",
    "squeezenet1.1",
];

/// Names accepted by `build` (`squeezenet1_0`/`squeezenet1_1` are accepted as aliases).
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// Builds the named model with weights drawn from `seed` (same seed, same bits).
pub fn build(name: &str, seed: u64) -> Result<Graph, ZooError> {
    let r = match name {
        "lenet5" => lenet5(seed),
        "lenet300100" => lenet300100(seed),
        "alexnet" => alexnet(seed),
        "vgg16" => vgg16(seed),
        "resnet18" => resnet(seed, false, &[2, 2, 2, 2]),
        "resnet50" => resnet(seed, true, &[3, 4, 6, 3]),
        "squeezenet1.0" | "squeezenet1_0" => squeezenet(seed, false),
        "squeezenet1.1" | "squeezenet1_1" => squeezenet(seed, true),
        _ => {
            return Err(ZooError::Unknown {
                name: name.into(),
                known: NAMES.join(", "),
            })
        }
    };
    r.map_err(|source| ZooError::Graph {
        name: name.into(),
        source,
    })
}

/// torchvision ImageNet preprocessing: RGB, /255, ImageNet mean/std, 256 -> 224.
fn torchvision_meta(b: &mut GraphBuilder) {
    b.metadata("preprocess.color_order", "RGB");
    b.metadata("preprocess.scale", "0.00392156862745098");
    b.metadata("preprocess.mean", "0.485,0.456,0.406");
    b.metadata("preprocess.std", "0.229,0.224,0.225");
    b.metadata("preprocess.resize", "256");
    b.metadata("preprocess.crop", "224");
}

fn mnist_meta(b: &mut GraphBuilder) {
    b.metadata("preprocess.color_order", "GRAY");
    b.metadata("preprocess.scale", "0.00390625");
}

fn lenet5(seed: u64) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::new("data", &[1, 28, 28], seed);
    mnist_meta(&mut b);
    let x = b.input();
    let x = b.conv_named("conv1", &x, 20, 5, 1, 0, 1);
    let x = b.max_pool(&x, 2, 2, 0);
    let x = b.conv_named("conv2", &x, 50, 5, 1, 0, 1);
    let x = b.max_pool(&x, 2, 2, 0);
    let x = b.flatten(&x);
    let x = b.linear_named("ip1", &x, 500);
    let x = b.relu(&x);
    let x = b.linear_named("ip2", &x, 10);
    let y = b.push("prob", crate::graph::Op::Softmax, &[&x]);
    b.finish(&[&y])
}

fn lenet300100(seed: u64) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::new("data", &[784], seed);
    mnist_meta(&mut b);
    let x = b.input();
    let x = b.linear_named("ip1", &x, 300);
    let x = b.relu(&x);
    let x = b.linear_named("ip2", &x, 100);
    let x = b.relu(&x);
    let x = b.linear_named("ip3", &x, 10);
    let y = b.push("prob", crate::graph::Op::Softmax, &[&x]);
    b.finish(&[&y])
}

fn alexnet(seed: u64) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::new("data", &[3, 224, 224], seed);
    torchvision_meta(&mut b);
    let x = b.input();
    let x = b.conv(&x, 64, 11, 4, 2, 1);
    let x = b.relu(&x);
    let x = b.max_pool(&x, 3, 2, 0);
    let x = b.conv(&x, 192, 5, 1, 2, 1);
    let x = b.relu(&x);
    let x = b.max_pool(&x, 3, 2, 0);
    let x = b.conv(&x, 384, 3, 1, 1, 1);
    let x = b.relu(&x);
    let x = b.conv(&x, 256, 3, 1, 1, 1);
    let x = b.relu(&x);
    let x = b.conv(&x, 256, 3, 1, 1, 1);
    let x = b.relu(&x);
    let x = b.max_pool(&x, 3, 2, 0);
    let x = b.flatten(&x);
    let x = b.linear(&x, 4096);
    let x = b.relu(&x);
    let x = b.linear(&x, 4096);
    let x = b.relu(&x);
    let y = b.linear(&x, 1000);
    b.finish(&[&y])
}

fn vgg16(seed: u64) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::new("data", &[3, 224, 224], seed);
    torchvision_meta(&mut b);
    let mut x = b.input();
    for (convs, ch) in [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)] {
        for _ in 0..convs {
            x = b.conv(&x, ch, 3, 1, 1, 1);
            x = b.relu(&x);
        }
        x = b.max_pool(&x, 2, 2, 0);
    }
    let x = b.flatten(&x);
    let x = b.linear(&x, 4096);
    let x = b.relu(&x);
    let x = b.linear(&x, 4096);
    let x = b.relu(&x);
    let y = b.linear(&x, 1000);
    b.finish(&[&y])
}

/// conv (no bias) + BN, optionally + ReLU.
fn conv_bn(b: &mut GraphBuilder, x: &str, out: usize, k: usize, s: usize, relu: bool) -> String {
    let y = b.conv_no_bias(x, out, k, s, k / 2);
    let y = b.batch_norm(&y);
    if relu {
        b.relu(&y)
    } else {
        y
    }
}

/// torchvision ResNet: BasicBlock (resnet18/34) or Bottleneck with the stride on the
/// 3x3 conv (ResNet v1.5, resnet50).
fn resnet(seed: u64, bottleneck: bool, blocks: &[usize]) -> Result<Graph, GraphError> {
    let mut b = GraphBuilder::new("data", &[3, 224, 224], seed);
    torchvision_meta(&mut b);
    let x = b.input();
    let x = conv_bn(&mut b, &x, 64, 7, 2, true);
    let mut x = b.max_pool(&x, 3, 2, 1);
    let expansion = if bottleneck { 4 } else { 1 };
    let mut in_ch = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = 64 << stage;
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let out_ch = planes * expansion;
            let shortcut = if stride != 1 || in_ch != out_ch {
                conv_bn(&mut b, &x, out_ch, 1, stride, false)
            } else {
                x.clone()
            };
            let y = if bottleneck {
                let y = conv_bn(&mut b, &x, planes, 1, 1, true);
                let y = conv_bn(&mut b, &y, planes, 3, stride, true);
                conv_bn(&mut b, &y, out_ch, 1, 1, false)
            } else {
                let y = conv_bn(&mut b, &x, planes, 3, stride, true);
                conv_bn(&mut b, &y, planes, 3, 1, false)
            };
            let s = b.add(&y, &shortcut);
            x = b.relu(&s);
            in_ch = out_ch;
        }
    }
    let x = b.global_avg_pool(&x);
    let x = b.flatten(&x);
    let y = b.linear(&x, 1000);
    b.finish(&[&y])
}

/// Fire module: squeeze 1x1 + ReLU, then Concat(expand 1x1 + ReLU, expand 3x3 + ReLU).
fn fire(b: &mut GraphBuilder, x: &str, squeeze: usize, e1: usize, e3: usize) -> String {
    let s = b.conv(x, squeeze, 1, 1, 0, 1);
    let s = b.relu(&s);
    let a = b.conv(&s, e1, 1, 1, 0, 1);
    let a = b.relu(&a);
    let c = b.conv(&s, e3, 3, 1, 1, 1);
    let c = b.relu(&c);
    b.concat(&[&a, &c])
}

fn squeezenet(seed: u64, v11: bool) -> Result<Graph, GraphError> {
    let size = if v11 { 224 } else { 227 };
    let mut b = GraphBuilder::new("data", &[3, size, size], seed);
    if v11 {
        torchvision_meta(&mut b);
    } else {
        // The Caffe SqueezeNet 1.0 convention (as in the test data's ONNX file).
        b.metadata("preprocess.color_order", "BGR");
        b.metadata("preprocess.mean", "104,117,123");
        b.metadata("preprocess.resize", "256");
        b.metadata("preprocess.crop", "227");
    }
    let x = b.input();
    let mut x = if v11 {
        let x = b.conv(&x, 64, 3, 2, 0, 1);
        let x = b.relu(&x);
        let x = b.max_pool_ceil(&x, 3, 2);
        let x = fire(&mut b, &x, 16, 64, 64);
        let x = fire(&mut b, &x, 16, 64, 64);
        let x = b.max_pool_ceil(&x, 3, 2);
        let x = fire(&mut b, &x, 32, 128, 128);
        let x = fire(&mut b, &x, 32, 128, 128);
        b.max_pool_ceil(&x, 3, 2)
    } else {
        let x = b.conv(&x, 96, 7, 2, 0, 1);
        let x = b.relu(&x);
        let x = b.max_pool_ceil(&x, 3, 2);
        let x = fire(&mut b, &x, 16, 64, 64);
        let x = fire(&mut b, &x, 16, 64, 64);
        let x = fire(&mut b, &x, 32, 128, 128);
        let x = b.max_pool_ceil(&x, 3, 2);
        let x = fire(&mut b, &x, 32, 128, 128);
        let x = fire(&mut b, &x, 48, 192, 192);
        let x = fire(&mut b, &x, 48, 192, 192);
        let x = fire(&mut b, &x, 64, 256, 256);
        b.max_pool_ceil(&x, 3, 2)
    };
    if v11 {
        x = fire(&mut b, &x, 48, 192, 192);
        x = fire(&mut b, &x, 48, 192, 192);
        x = fire(&mut b, &x, 64, 256, 256);
    }
    let x = fire(&mut b, &x, 64, 256, 256);
    let x = b.conv(&x, 1000, 1, 1, 0, 1);
    let x = b.relu(&x);
    let x = b.global_avg_pool(&x);
    let x = b.flatten(&x);
    let y = b.push("prob", crate::graph::Op::Softmax, &[&x]);
    b.finish(&[&y])
}
