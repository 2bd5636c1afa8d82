//! Every GPU kernel against the CPU reference (`backend::cpu::reference`) on random
//! shapes: odd channel counts, stride 2, asymmetric padding, groups and depthwise,
//! dilation, ceil_mode, batch 1 and 5, K not a multiple of the 16-deep K tile, more
//! than one 64x64 output tile. Plus a small zoo-like model, weights split over several
//! bindings, and one model shared by four threads.
//!
//! Tolerance: max |gpu - ref| <= rel * max |ref| + abs per output. The reference
//! accumulates in f64, the GPU in f32 in a different order, so reductions over K
//! (conv, linear: K up to ~600 here) get rel 1e-4; element-wise ops that only round
//! once get 1e-5 (exp/pow in shaders are not correctly rounded: 1e-4 for those).
//!
//! Without an adapter the tests print `skipped: no GPU adapter` and pass, unless
//! CNNPACK_REQUIRE_GPU=1.

mod common;
use cnnpack::backend::cpu::reference;
use cnnpack::backend::gpu::{ConvKernel, GpuContext, GpuError, GpuModel, GpuOptions};
use cnnpack::graph::{
    BinaryKind, Conv2d, Graph, GraphBuilder, Linear, Op, PadMode, Pool2d, Rng, Tensor,
};
use cnnpack::weights::Weights;
use common::{assert_close, gpu};
use std::sync::Arc;

const CONV_TOL: (f32, f32) = (1e-4, 1e-5);
const ELT_TOL: (f32, f32) = (1e-5, 1e-6);
const TRANSCENDENTAL_TOL: (f32, f32) = (1e-4, 1e-6);

/// Runs `graph` at `batch` on the GPU and the reference and compares every output.
fn check_with(
    ctx: &Arc<GpuContext>,
    what: &str,
    graph: &Graph,
    batch: usize,
    tol: (f32, f32),
    options: GpuOptions,
) {
    let mut rng = Rng::new(batch as u64 * 31 + graph.nodes.len() as u64);
    let mut shape = vec![batch];
    shape.extend(&graph.input.item_shape);
    let input = rng.normal_tensor(shape, 1.0);
    let model = GpuModel::with_options(ctx.clone(), graph, batch, options)
        .unwrap_or_else(|e| panic!("{what}: building the GPU model failed: {e}"));
    assert_eq!(model.batch(), batch);
    let got = model
        .run(&input)
        .unwrap_or_else(|e| panic!("{what}: GPU run failed: {e}"));
    let want = reference::run_graph(graph, &input)
        .unwrap_or_else(|e| panic!("{what}: reference failed: {e}"));
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("{what} (batch {batch}, output {k})"), g, w, tol);
    }
}

fn check(ctx: &Arc<GpuContext>, what: &str, graph: &Graph, batches: &[usize], tol: (f32, f32)) {
    for &b in batches {
        check_with(ctx, what, graph, b, tol, GpuOptions::default());
    }
}

/// As `check`, once with each dense conv kernel (the tiled GPU ones: `conv_gemm` with its
/// K split in 3 as well as as chosen, and with 128-pixel tiles; the uniform-buffer one),
/// whatever the adapter would pick.
fn check_conv_kernels(
    ctx: &Arc<GpuContext>,
    what: &str,
    graph: &Graph,
    batches: &[usize],
    tol: (f32, f32),
) {
    for conv_kernel in [
        ConvKernel::Tiled,
        ConvKernel::Uniform,
        ConvKernel::Gemm,
        ConvKernel::GemmSplits(3),
        ConvKernel::GemmWide,
    ] {
        for &b in batches {
            let options = GpuOptions {
                conv_kernel,
                ..GpuOptions::default()
            };
            check_with(
                ctx,
                &format!("{what} [{conv_kernel:?}]"),
                graph,
                b,
                tol,
                options,
            );
        }
    }
}

/// A graph with a single node reading the input.
fn one(item: &[usize], op: Op) -> Graph {
    let mut b = GraphBuilder::new("x", item, 1);
    let y = b.push("op", op, &["x"]);
    b.finish(&[&y]).expect("test graph is valid")
}

struct ConvCase {
    cin: usize,
    cout: usize,
    hw: [usize; 2],
    k: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
}

fn conv_op(c: &ConvCase, rng: &mut Rng) -> Op {
    let w = rng.normal_tensor(vec![c.cout, c.cin / c.groups, c.k[0], c.k[1]], 0.5);
    Op::Conv(Conv2d {
        kernel: c.k,
        stride: c.stride,
        pads: c.pads,
        dilation: c.dilation,
        groups: c.groups,
        weight: Weights::Dense(w),
        bias: c.bias.then(|| rng.normal_tensor(vec![c.cout], 1.0)),
    })
}

#[test]
fn conv_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(7);
    let cases = [
        // K = 27 (not a multiple of 16), one partial tile.
        ConvCase {
            cin: 3,
            cout: 5,
            hw: [9, 11],
            k: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        },
        // Two channel tiles (70 > 64), several pixel tiles, stride 2, asymmetric pads.
        ConvCase {
            cin: 7,
            cout: 70,
            hw: [15, 13],
            k: [3, 3],
            stride: [2, 2],
            pads: [0, 1, 2, 1],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        },
        // Dilation, rectangular kernel, no bias.
        ConvCase {
            cin: 5,
            cout: 17,
            hw: [12, 10],
            k: [3, 2],
            stride: [1, 2],
            pads: [2, 1, 2, 0],
            dilation: [2, 3],
            groups: 1,
            bias: false,
        },
        // Groups, 16+ channels per group: tiled path with z = groups.
        ConvCase {
            cin: 6,
            cout: 34,
            hw: [8, 8],
            k: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 2,
            bias: true,
        },
        // Groups with few channels per group: direct path.
        ConvCase {
            cin: 9,
            cout: 6,
            hw: [7, 9],
            k: [3, 3],
            stride: [2, 1],
            pads: [1, 0, 1, 2],
            dilation: [1, 1],
            groups: 3,
            bias: true,
        },
        // Depthwise.
        ConvCase {
            cin: 13,
            cout: 13,
            hw: [10, 10],
            k: [3, 3],
            stride: [2, 2],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 13,
            bias: true,
        },
        // Depthwise with multiplier 2 and dilation.
        ConvCase {
            cin: 5,
            cout: 10,
            hw: [11, 9],
            k: [5, 5],
            stride: [1, 1],
            pads: [2, 2, 2, 2],
            dilation: [2, 1],
            groups: 5,
            bias: false,
        },
        // 1x1 with long K (K = 67).
        ConvCase {
            cin: 67,
            cout: 33,
            hw: [6, 5],
            k: [1, 1],
            stride: [1, 1],
            pads: [0, 0, 0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        },
        // K = 90*9 = 810: the uniform-buffer kernel splits input channels into slices
        // that accumulate, and 70 rows into blocks; bias and ReLU on the right slice.
        ConvCase {
            cin: 90,
            cout: 70,
            hw: [6, 7],
            k: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        },
        // Same with groups (per-group slices).
        ConvCase {
            cin: 80,
            cout: 40,
            hw: [5, 5],
            k: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 2,
            bias: true,
        },
        // Fewer than 32 output rows over many input channels: the uniform-buffer slices
        // are sized for a whole 32-row block (EfficientNet-B0's SE reduce, 672 -> 28,
        // once left no room for one and panicked).
        ConvCase {
            cin: 672,
            cout: 28,
            hw: [1, 1],
            k: [1, 1],
            stride: [1, 1],
            pads: [0, 0, 0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        },
        // 7x7 stride 2 stem, K = 147.
        ConvCase {
            cin: 3,
            cout: 16,
            hw: [21, 19],
            k: [7, 7],
            stride: [2, 2],
            pads: [3, 3, 3, 3],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let g = one(&[c.cin, c.hw[0], c.hw[1]], conv_op(c, &mut rng));
        check_conv_kernels(&ctx, &format!("conv case {i}"), &g, &[1, 5], CONV_TOL);
    }
    // Random shapes.
    for i in 0..6 {
        let groups = [1, 1, 2, 3][rng.range(0, 3)];
        let cin = groups * rng.range(1, 9);
        let cout = groups * rng.range(1, 30);
        let k = rng.range(1, 4);
        let c = ConvCase {
            cin,
            cout,
            hw: [rng.range(k + 2, 14), rng.range(k + 2, 14)],
            k: [k, k],
            stride: [rng.range(1, 2), rng.range(1, 2)],
            pads: [
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(0, 2),
                rng.range(0, 2),
            ],
            dilation: [1, rng.range(1, 2)],
            groups,
            bias: rng.range(0, 1) == 1,
        };
        let g = one(&[c.cin, c.hw[0], c.hw[1]], conv_op(&c, &mut rng));
        check(
            &ctx,
            &format!("random conv {i} (cin {cin} cout {cout} k {k} groups {groups})"),
            &g,
            &[1, 5],
            CONV_TOL,
        );
    }
}

#[test]
fn conv_and_linear_with_fused_relu() {
    let Some(ctx) = gpu() else { return };
    let mut b = GraphBuilder::new("x", &[5, 9, 9], 3);
    let x = b.input();
    let c = b.conv(&x, 20, 3, 2, 1, 1);
    let r = b.relu(&c);
    let d = b.conv(&r, 20, 3, 1, 1, 20);
    let r2 = b.relu(&d);
    let f = b.flatten(&r2);
    let l = b.linear(&f, 19);
    let r3 = b.relu(&l);
    let g = b.finish(&[&r3]).unwrap();
    check_conv_kernels(&ctx, "fused relu", &g, &[1, 5, 9], CONV_TOL);
}

fn linear_op(out: usize, k: usize, bias: bool, rng: &mut Rng) -> Op {
    Op::Linear(Linear {
        weight: Weights::Dense(rng.normal_tensor(vec![out, k], 0.3)),
        bias: bias.then(|| rng.normal_tensor(vec![out], 1.0)),
    })
}

#[test]
fn linear_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(11);
    for (out, k, bias) in [
        (10, 37, true),
        (70, 129, false),
        (1, 5, true),
        (130, 600, true),
    ] {
        let g = one(&[k], linear_op(out, k, bias, &mut rng));
        // 1: GEMV; 5, 9, 17: 8-item GEMV (1, 2, 3 item groups); 33: a GEMM.
        check(
            &ctx,
            &format!("linear {out}x{k}"),
            &g,
            &[1, 5, 9, 17, 33],
            CONV_TOL,
        );
    }
}

#[test]
fn weights_over_the_binding_limit_are_split_by_rows() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(13);
    // 37 rows of 50 f32 (200 bytes) with 1000-byte bindings: 8 chunks of <= 5 rows.
    let small = GpuOptions {
        max_binding_bytes: Some(1000),
        ..GpuOptions::default()
    };
    let g = one(&[50], linear_op(37, 50, true, &mut rng));
    for batch in [1, 3, 9] {
        check_with(&ctx, "split linear", &g, batch, CONV_TOL, small);
    }
    // Batch >= 32 runs a GEMM: `conv_gemm` too (its transposed weights, K padded to 64,
    // split into chunks of 4 rows: 1024 bytes each under a 2000-byte cap).
    let gemm = GpuOptions {
        conv_kernel: ConvKernel::GemmSplits(2),
        max_binding_bytes: Some(2000),
        ..small
    };
    check_with(&ctx, "split linear [GemmSplits(2)]", &g, 33, CONV_TOL, gemm);
    // Conv with 70 output channels of K = 5*3*3 = 45 (180 bytes): 13 chunks of 5 rows.
    let c = ConvCase {
        cin: 5,
        cout: 70,
        hw: [7, 6],
        k: [3, 3],
        stride: [1, 1],
        pads: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
        bias: true,
    };
    let g = one(&[5, 7, 6], conv_op(&c, &mut rng));
    for batch in [1, 5] {
        // The tiled kernel binds weights as storage (split here); the uniform-buffer one
        // always slices them into 64 KiB uniform buffers.
        for conv_kernel in [
            ConvKernel::Tiled,
            ConvKernel::Uniform,
            ConvKernel::GemmSplits(2),
        ] {
            let options = GpuOptions {
                conv_kernel,
                ..small
            };
            check_with(
                &ctx,
                &format!("split conv [{conv_kernel:?}]"),
                &g,
                batch,
                CONV_TOL,
                options,
            );
        }
    }
    // One row over the limit cannot be split further: a clear error, not truncation.
    let g = one(&[300], linear_op(4, 300, true, &mut rng));
    let err = GpuModel::with_options(ctx.clone(), &g, 1, small).expect_err("row over the limit");
    assert!(matches!(err, GpuError::Unsupported { .. }), "{err}");
}

fn pool(
    k: [usize; 2],
    s: [usize; 2],
    pads: [usize; 4],
    ceil_mode: bool,
    count_include_pad: bool,
) -> Pool2d {
    Pool2d {
        kernel: k,
        stride: s,
        pads,
        ceil_mode,
        count_include_pad,
    }
}

#[test]
fn pools_match_reference() {
    let Some(ctx) = gpu() else { return };
    let configs = [
        pool([2, 2], [2, 2], [0; 4], false, false),
        pool([3, 3], [2, 2], [0; 4], true, false),
        pool([3, 3], [2, 2], [1, 1, 1, 1], false, false),
        pool([3, 3], [2, 2], [1, 0, 2, 1], true, true),
        pool([3, 2], [1, 2], [1, 1, 0, 1], true, false),
        pool([5, 5], [3, 3], [2, 2, 2, 2], true, true),
    ];
    for (i, p) in configs.iter().enumerate() {
        for item in [[3, 13, 13], [5, 8, 11]] {
            let max = one(&item, Op::MaxPool(p.clone()));
            check(
                &ctx,
                &format!("max pool {i} {item:?}"),
                &max,
                &[1, 5],
                ELT_TOL,
            );
            let avg = one(&item, Op::AvgPool(p.clone()));
            check(
                &ctx,
                &format!("avg pool {i} {item:?}"),
                &avg,
                &[1, 5],
                ELT_TOL,
            );
        }
    }
    let g = one(&[7, 5, 9], Op::GlobalAvgPool);
    check(&ctx, "global avg pool", &g, &[1, 5], ELT_TOL);
}

#[test]
fn eltwise_ops_match_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(17);
    let item = [5, 7, 3];
    for (name, op, tol) in [
        ("relu", Op::Relu, ELT_TOL),
        ("leaky", Op::LeakyRelu { alpha: 0.1 }, ELT_TOL),
        (
            "clip",
            Op::Clip {
                min: -0.5,
                max: 0.7,
            },
            ELT_TOL,
        ),
        ("sigmoid", Op::Sigmoid, TRANSCENDENTAL_TOL),
    ] {
        check(&ctx, name, &one(&item, op), &[1, 5], tol);
    }
    let constants = [
        vec![5, 1, 1],
        vec![1],
        vec![3],
        vec![7, 1],
        vec![5, 7, 3],
        vec![1, 5, 1, 3],
    ];
    for shape in &constants {
        for kind in [
            BinaryKind::Add,
            BinaryKind::Sub,
            BinaryKind::Mul,
            BinaryKind::Div,
        ] {
            for constant_first in [false, true] {
                let mut constant = rng.normal_tensor(shape.clone(), 1.0);
                // Keep divisors away from zero.
                constant
                    .data
                    .iter_mut()
                    .for_each(|v| *v += v.signum() * 0.5);
                let op = Op::ConstBinary {
                    kind,
                    constant,
                    constant_first,
                };
                // Division by x near 0 blows up: the input is shifted away from zero below.
                let mut b = GraphBuilder::new("x", &item, 1);
                let s = b.push(
                    "shift",
                    Op::ConstBinary {
                        kind: BinaryKind::Add,
                        constant: Tensor::full(vec![1], 3.0),
                        constant_first: false,
                    },
                    &["x"],
                );
                let y = b.push("op", op, &[&s]);
                let g = b.finish(&[&y]).unwrap();
                check(
                    &ctx,
                    &format!("const {kind:?} {shape:?} first={constant_first}"),
                    &g,
                    &[1, 5],
                    ELT_TOL,
                );
            }
        }
    }
    let c = item[0];
    let bn = Op::BatchNorm {
        scale: rng.normal_tensor(vec![c], 1.0),
        bias: rng.normal_tensor(vec![c], 1.0),
        mean: rng.normal_tensor(vec![c], 1.0),
        var: Tensor::new(vec![c], (0..c).map(|i| 0.5 + i as f32).collect()).unwrap(),
        epsilon: 1e-5,
    };
    check(&ctx, "batchnorm", &one(&item, bn.clone()), &[1, 5], ELT_TOL);
    check(&ctx, "batchnorm rank 2", &one(&[c], bn), &[1, 5], ELT_TOL);

    let mut b = GraphBuilder::new("x", &item, 1);
    let s = b.push("sig", Op::Sigmoid, &["x"]);
    let a = b.add("x", &s);
    let g = b.finish(&[&a]).unwrap();
    check(&ctx, "add", &g, &[1, 5], TRANSCENDENTAL_TOL);
}

#[test]
fn lrn_softmax_and_layout_ops_match_reference() {
    let Some(ctx) = gpu() else { return };
    for size in [1, 4, 5] {
        let op = Op::Lrn {
            size,
            alpha: 1e-2,
            beta: 0.75,
            bias: 1.0,
        };
        check(
            &ctx,
            &format!("lrn {size}"),
            &one(&[7, 4, 5], op),
            &[1, 5],
            TRANSCENDENTAL_TOL,
        );
    }
    check(
        &ctx,
        "softmax rank 2",
        &one(&[1000], Op::Softmax),
        &[1, 5],
        TRANSCENDENTAL_TOL,
    );
    check(
        &ctx,
        "softmax rank 4",
        &one(&[3, 4, 37], Op::Softmax),
        &[1, 5],
        TRANSCENDENTAL_TOL,
    );

    let pad = Op::Pad {
        pads: vec![0, 1, 2, 0, 0, 2, 1, 3],
        value: -1.5,
        mode: PadMode::Constant,
    };
    check(&ctx, "pad", &one(&[3, 5, 4], pad), &[1, 5], ELT_TOL);
    let slice = Op::Slice {
        starts: vec![0, 1, 0, 2],
        ends: vec![usize::MAX, 6, 9, 7],
        steps: vec![1, 2, 3, 1],
    };
    check(&ctx, "slice", &one(&[7, 9, 8], slice), &[1, 5], ELT_TOL);
    let slice0 = Op::Slice {
        starts: vec![0, 1],
        ends: vec![usize::MAX, 4],
        steps: vec![2, 2],
    };
    check(&ctx, "slice along batch", &one(&[5], slice0), &[5], ELT_TOL);

    for axis in [0, 1, 2, 3] {
        let mut b = GraphBuilder::new("x", &[4, 5, 6], 1);
        let s = b.push("sig", Op::Sigmoid, &["x"]);
        let r = b.push("relu", Op::Relu, &["x"]);
        let c = b.push("cat", Op::Concat { axis }, &["x", &s, &r]);
        let g = b.finish(&[&c]).unwrap();
        check(
            &ctx,
            &format!("concat axis {axis}"),
            &g,
            &[1, 3],
            TRANSCENDENTAL_TOL,
        );
    }

    // Aliases: Flatten and Identity move nothing, and may be graph outputs.
    let mut b = GraphBuilder::new("x", &[3, 2, 2], 1);
    let r = b.relu("x");
    let id = b.push("id", Op::Identity, &[&r]);
    let f = b.flatten(&id);
    let g = b.finish(&[&f, &r]).unwrap();
    check(&ctx, "flatten/identity", &g, &[1, 5], ELT_TOL);
}

/// A small model in the style of the zoo: stem conv + BN + ReLU + max pool, a residual
/// block, a fire module (squeeze, two expands, concat), depthwise separable conv, LRN,
/// global average pooling, a classifier and softmax; two outputs.
fn zoo_model() -> Graph {
    let mut b = GraphBuilder::new("data", &[3, 33, 29], 5);
    let x = b.input();
    let x = b.conv(&x, 24, 3, 2, 1, 1);
    let x = b.batch_norm(&x);
    let x = b.relu(&x);
    let x = b.max_pool_ceil(&x, 3, 2);
    let r = b.conv(&x, 24, 3, 1, 1, 1);
    let r = b.relu(&r);
    let r = b.conv(&r, 24, 3, 1, 1, 1);
    let x = b.add(&x, &r);
    let x = b.relu(&x);
    let s = b.conv(&x, 8, 1, 1, 0, 1);
    let s = b.relu(&s);
    let e1 = b.conv(&s, 16, 1, 1, 0, 1);
    let e1 = b.relu(&e1);
    let e3 = b.conv(&s, 16, 3, 1, 1, 1);
    let e3 = b.relu(&e3);
    let x = b.concat(&[&e1, &e3]);
    let x = b.lrn(&x, 5);
    let x = b.conv(&x, 32, 3, 2, 1, 32);
    let x = b.relu(&x);
    let x = b.conv(&x, 40, 1, 1, 0, 1);
    let x = b.avg_pool(&x, 3, 1, 1);
    let x = b.global_avg_pool(&x);
    let x = b.flatten(&x);
    let logits = b.linear(&x, 10);
    let prob = b.softmax(&logits);
    b.finish(&[&logits, &prob]).unwrap()
}

#[test]
fn zoo_like_model_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let g = zoo_model();
    check_conv_kernels(&ctx, "zoo model", &g, &[1, 5], CONV_TOL);
    // Without fusion too: the Relu kernels and more buffers in play.
    let unfused = GpuOptions {
        fuse_relu: false,
        ..GpuOptions::default()
    };
    check_with(&ctx, "zoo model unfused", &g, 2, CONV_TOL, unfused);
}

#[test]
fn one_model_shared_by_four_threads() {
    let Some(ctx) = gpu() else { return };
    let g = zoo_model();
    let model = Arc::new(GpuModel::new(ctx, &g, 2).unwrap());
    let inputs: Vec<Tensor> = (0..4)
        .map(|i| Rng::new(100 + i).normal_tensor(vec![2, 3, 33, 29], 1.0))
        .collect();
    let expected: Vec<Vec<Tensor>> = inputs.iter().map(|x| model.run(x).unwrap()).collect();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let model = model.clone();
            let inputs = inputs.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|r| {
                        let i = (t + r) % 4;
                        (i, model.run(&inputs[i]).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (i, out) in h.join().expect("worker thread did not panic") {
            assert_eq!(out, expected[i], "thread result differs for input {i}");
        }
    }
}

#[test]
fn bad_input_and_profiling() {
    let Some(ctx) = gpu() else { return };
    let g = zoo_model();
    let model = GpuModel::new(ctx.clone(), &g, 2).unwrap();
    let wrong = Tensor::zeros(vec![3, 3, 33, 29]);
    assert!(matches!(model.run(&wrong), Err(GpuError::BadInput { .. })));
    let x = Rng::new(3).normal_tensor(vec![2, 3, 33, 29], 1.0);
    let want = model.run(&x).unwrap();
    // Both ways of timing steps: one pass per step, and timestamps inside one pass.
    for in_pass in [false, true] {
        let opts = GpuOptions {
            profile_in_pass: Some(in_pass),
            ..GpuOptions::default()
        };
        let model = GpuModel::with_options(ctx.clone(), &g, 2, opts).unwrap();
        assert_eq!(
            model.profiles_in_pass(),
            in_pass && ctx.has_timestamps_in_passes()
        );
        let (out, times) = model.run_profiled(&x).unwrap();
        assert_eq!(out, want, "in pass: {in_pass}");
        match times {
            Some(t) => {
                assert_eq!(t.len(), model.step_names().len());
                assert!(t.iter().all(|(_, ms)| ms.is_finite() && *ms >= 0.0));
                // The steps' times add up to less than a profiled run's wall time; a
                // query index mix-up gives wrapped (huge) differences instead.
                let sum: f64 = t.iter().map(|(_, ms)| ms).sum();
                assert!(sum < 60_000.0, "in pass: {in_pass}: {sum} ms");
            }
            None => assert!(!ctx.has_timestamps()),
        }
    }
    eprintln!(
        "{}: timestamps inside passes: {}",
        ctx.adapter_name(),
        ctx.has_timestamps_in_passes()
    );
}

/// `GpuModel::step_kernels` names what each step runs (what `cnnpack bench` reports).
#[test]
fn step_kernels_name_the_entry_points() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(31);
    let c = ConvCase {
        cin: 8,
        cout: 24,
        hw: [9, 9],
        k: [3, 3],
        stride: [1, 1],
        pads: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
        bias: true,
    };
    let g = one(&[8, 9, 9], conv_op(&c, &mut rng));
    for (conv_kernel, want) in [
        (ConvKernel::Tiled, "conv_fwd_tiled"),
        (ConvKernel::Gemm, "conv_gemm"),
        (ConvKernel::GemmSplits(2), "conv_gemm+conv_gemm_reduce"),
        (ConvKernel::GemmWide, "conv_gemm_wide"),
        (ConvKernel::Uniform, "conv_fwd_ubo"),
    ] {
        let options = GpuOptions {
            conv_kernel,
            ..GpuOptions::default()
        };
        let model = GpuModel::with_options(ctx.clone(), &g, 1, options).expect("model builds");
        let kernels = model.step_kernels();
        assert_eq!(kernels.len(), 1, "{kernels:?}");
        assert_eq!(kernels[0].0, "op");
        assert_eq!(kernels[0].1, want, "{conv_kernel:?}");
    }
}

/// A batch whose activation buffers exceed the limit (forced small with
/// `max_activation_bytes`) runs through `Engine` in pieces that fit: pieces of 3 for a
/// batch of 8 (the last one padded), with the outputs of the unsplit run and of the
/// reference, by `run` and `run_async`, and `bench` profiles it.
#[test]
fn batches_over_the_buffer_limit_run_in_pieces() {
    use cnnpack::engine::Engine;
    use cnnpack::tuning::Tuning;
    let Some(ctx) = gpu() else { return };
    let graph = cnnpack::graph::fold(zoo_model()).expect("folds");
    let fits = |cap: u64| {
        let options = GpuOptions {
            max_activation_bytes: Some(cap),
            ..GpuOptions::default()
        };
        GpuModel::max_batch(&ctx, &graph, &options).expect("plans")
    };
    // The largest buffer of one item: the smallest cap one item fits.
    let (mut lo, mut hi) = (4u64, 1 << 32);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fits(mid) >= 1 {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cap = 3 * lo + lo / 2;
    assert_eq!(fits(cap), 3);
    let mut tuning = Tuning::default();
    tuning.gpu.max_activation_bytes = Some(cap);
    let split = Engine::with_gpu_tuning(graph.clone(), ctx.clone(), tuning).expect("engine");
    let whole = Engine::with_gpu(graph.clone(), ctx.clone()).expect("engine");
    let mut rng = Rng::new(8);
    for batch in [8, 3, 1] {
        assert_eq!(split.gpu_piece(batch).expect("piece"), batch.min(3));
        let x = rng.normal_tensor(vec![batch, 3, 33, 29], 1.0);
        let got = split.run(&x).expect("split run");
        let got_async = pollster::block_on(split.run_async(&x)).expect("split run_async");
        let unsplit = whole.run(&x).expect("unsplit run");
        let want = reference::run_graph(&graph, &x).expect("reference");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let what = format!("batch {batch} output {i}");
            assert_eq!(g.shape, unsplit[i].shape, "{what}");
            assert_close(&format!("{what} vs unsplit"), g, &unsplit[i], CONV_TOL);
            assert_close(&format!("{what} vs reference"), g, w, CONV_TOL);
            assert_eq!(g, &got_async[i], "{what}: run_async");
        }
    }
    // A model planned for the whole batch refuses it under the same limit.
    let options = GpuOptions {
        max_activation_bytes: Some(cap),
        ..GpuOptions::default()
    };
    let err = GpuModel::with_options(ctx.clone(), &graph, 8, options).unwrap_err();
    assert!(err.to_string().contains("pieces"), "{err}");
    let bench = cnnpack::bench::model::bench_model(&split, 8, 1, 3, 5.0, None).expect("bench");
    assert!(!bench.layers.is_empty());
}
