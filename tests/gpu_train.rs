//! The GPU trainer (src/backend/gpu/train, shaders/train_*.wgsl) against the CPU
//! trainer, whose backward is checked by finite differences in tests/train.rs.
//!
//! Per op: a graph `x -> op` whose output is the logits; softmax cross-entropy on random
//! labels; dL/dx and every parameter gradient from `GpuTrainer::gradients` against
//! `train::backward`. Tolerance: max |gpu - cpu| <= 1e-4 * max |cpu| + 1e-7 per tensor.
//! Both sides compute in f32 (the CPU partly in f64) with different summation orders;
//! rounding gives relative differences around 1e-6, while an indexing bug is off by
//! O(max |cpu|).
//!
//! Whole steps: LeNet-5 (MNIST shape) and a small net with BatchNorm (train mode),
//! a residual Add and a Concat, three SGD steps with momentum, weight decay, a gradient
//! mask and a forward mask, on the same batches; the updated weights (and BN running
//! statistics) agree within 1e-3 * max |update| + 1e-6 per tensor (forward values
//! differ in their last bits, which three steps amplify a little). Same seed, same
//! device: bit-identical weights.
//!
//! Without a GPU adapter every test prints `skipped: ...` and returns.

mod common;
use cnnpack::backend::gpu::train::{DataGradKernel, GpuTrainOptions, GpuTrainer};
use cnnpack::backend::gpu::GpuContext;
use cnnpack::data::{Dataset, Preprocess};
use cnnpack::graph::{Conv2d, Graph, GraphInput, Linear, Node, Op, Pool2d, Rng, Tensor};
use cnnpack::train::{self, BnMode, Masks, Sgd, TrainDevice, TrainOptions};
use cnnpack::weights::Weights;
use common::{assert_close, gpu};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A graph from (name, op, inputs) triples; each node's output is named after it.
fn graph(item: &[usize], nodes: Vec<(&str, Op, Vec<&str>)>, output: &str) -> Graph {
    let mut g = Graph {
        input: GraphInput {
            name: "x".into(),
            item_shape: item.to_vec(),
            declared_batch: None,
        },
        nodes: nodes
            .into_iter()
            .map(|(name, op, inputs)| Node {
                name: name.into(),
                op,
                inputs: inputs.into_iter().map(String::from).collect(),
                output: name.into(),
            })
            .collect(),
        outputs: vec![output.into()],
        metadata: BTreeMap::new(),
    };
    g.sort_and_validate().expect("test graph is valid");
    g
}

fn conv_op(
    rng: &mut Rng,
    [cin, cout, groups]: [usize; 3],
    k: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    dilation: [usize; 2],
    bias: bool,
) -> Op {
    Op::Conv(Conv2d {
        kernel: k,
        stride,
        pads,
        dilation,
        groups,
        weight: Weights::Dense(rng.normal_tensor(vec![cout, cin / groups, k[0], k[1]], 0.5)),
        bias: bias.then(|| rng.normal_tensor(vec![cout], 0.5)),
    })
}

fn fc_op(rng: &mut Rng, k: usize, out: usize) -> Op {
    Op::Linear(Linear {
        weight: Weights::Dense(rng.normal_tensor(vec![out, k], (1.0 / k as f32).sqrt())),
        bias: Some(rng.normal_tensor(vec![out], 0.1)),
    })
}

fn pool(k: usize, s: usize, pads: [usize; 4], ceil: bool, include_pad: bool) -> Pool2d {
    Pool2d {
        kernel: [k, k],
        stride: [s, s],
        pads,
        ceil_mode: ceil,
        count_include_pad: include_pad,
    }
}

fn bn_op(rng: &mut Rng, c: usize) -> Op {
    Op::BatchNorm {
        scale: rng.normal_tensor(vec![c], 1.0),
        bias: rng.normal_tensor(vec![c], 1.0),
        mean: rng.normal_tensor(vec![c], 0.5),
        var: Tensor {
            shape: vec![c],
            data: (0..c).map(|_| 0.5 + rng.uniform()).collect(),
        },
        epsilon: 1e-5,
    }
}

/// GPU gradients against the CPU backward: `max |gpu - cpu| <= 1e-4 * max |cpu| + 1e-7`.
const GRAD_TOL: (f32, f32) = (1e-4, 1e-7);

fn labels(rng: &mut Rng, n: usize, classes: usize) -> Vec<usize> {
    (0..n).map(|_| rng.range(0, classes - 1)).collect()
}

/// GPU gradients of `g` at `x` (random labels) against the CPU backward.
fn check_op(ctx: &Arc<GpuContext>, g: &Graph, x: &Tensor, mode: BnMode, seed: u64, what: &str) {
    check_op_with(ctx, g, x, mode, seed, what, DataGradKernel::Auto)
}

fn check_op_with(
    ctx: &Arc<GpuContext>,
    g: &Graph,
    x: &Tensor,
    mode: BnMode,
    seed: u64,
    what: &str,
    data_grad: DataGradKernel,
) {
    let mut rng = Rng::new(seed);
    let cache = train::forward(g, x, mode, &HashMap::new()).expect("CPU forward");
    let n = x.shape[0];
    let classes = cache.logits().data.len() / n;
    let lab = labels(&mut rng, n, classes);
    let (loss, dlogits) = train::softmax_cross_entropy(cache.logits(), &lab).expect("loss");
    let (grads, dx) = train::backward(g, &cache, dlogits, true).expect("CPU backward");
    let mut t = GpuTrainer::new(
        ctx.clone(),
        g,
        GpuTrainOptions {
            bn_mode: mode,
            input_grad: true,
            data_grad,
            ..Default::default()
        },
        &Masks::new(),
    )
    .expect("GPU trainer");
    let (gloss, ggrads, gdx) = t.gradients(x, &lab).expect("GPU gradients");
    assert!(
        (gloss - loss).abs() <= 1e-5 * (1.0 + loss.abs()),
        "{what}: loss {gloss} vs {loss}"
    );
    assert_close(
        &format!("{what}: dL/dx"),
        &gdx.expect("input gradient"),
        &dx.expect("input gradient"),
        GRAD_TOL,
    );
    assert_eq!(ggrads.len(), grads.len(), "{what}: parameterised layers");
    for (name, cg) in &grads {
        let gg = &ggrads[name];
        assert_close(
            &format!("{what}: {name}.weight"),
            &gg.weight,
            &cg.weight,
            GRAD_TOL,
        );
        match (&gg.bias, &cg.bias) {
            (Some(a), Some(b)) => assert_close(&format!("{what}: {name}.bias"), a, b, GRAD_TOL),
            (None, None) => {}
            _ => panic!("{what}: {name}: bias gradient on one side only"),
        }
    }
}

#[test]
fn conv_backward_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(1);
    // ([cin, cout, groups], kernel, stride, pads, dilation, bias, [batch, h, w])
    type Case = (
        [usize; 3],
        [usize; 2],
        [usize; 2],
        [usize; 4],
        [usize; 2],
        bool,
        [usize; 3],
    );
    let cases: &[Case] = &[
        ([3, 4, 1], [3, 3], [1, 1], [0; 4], [1, 1], true, [1, 7, 6]),
        ([3, 5, 1], [3, 3], [2, 2], [1; 4], [1, 1], true, [2, 9, 8]),
        (
            [4, 6, 2],
            [3, 2],
            [2, 1],
            [1, 0, 2, 1],
            [1, 1],
            false,
            [2, 7, 7],
        ),
        ([4, 4, 4], [3, 3], [1, 1], [2; 4], [2, 2], true, [1, 6, 7]),
        ([2, 3, 1], [1, 1], [1, 1], [0; 4], [1, 1], true, [3, 5, 4]),
        ([6, 6, 3], [3, 3], [2, 2], [1; 4], [2, 1], true, [2, 9, 10]),
        // Enough output channels and pixels for several weight tiles and split-K chunks.
        (
            [5, 40, 1],
            [5, 5],
            [1, 1],
            [2; 4],
            [1, 1],
            true,
            [3, 33, 35],
        ),
        (
            [34, 36, 2],
            [3, 3],
            [2, 2],
            [1; 4],
            [1, 1],
            false,
            [2, 13, 11],
        ),
    ];
    for (ci, &(ch, k, s, p, d, bias, [n, h, w])) in cases.iter().enumerate() {
        let g = graph(
            &[ch[0], h, w],
            vec![("conv", conv_op(&mut rng, ch, k, s, p, d, bias), vec!["x"])],
            "conv",
        );
        let x = rng.normal_tensor(vec![n, ch[0], h, w], 1.0);
        check_op(
            &ctx,
            &g,
            &x,
            BnMode::Frozen,
            100 + ci as u64,
            &format!("conv case {ci}"),
        );
    }
}

#[test]
fn linear_and_flatten_backward_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(2);
    for (ci, &(n, c, h, out)) in [(1, 3, 5, 7), (4, 2, 3, 10), (33, 5, 7, 37)]
        .iter()
        .enumerate()
    {
        let g = graph(
            &[c, h, h],
            vec![
                ("flat", Op::Flatten { axis: 1 }, vec!["x"]),
                ("fc", fc_op(&mut rng, c * h * h, out), vec!["flat"]),
            ],
            "fc",
        );
        let x = rng.normal_tensor(vec![n, c, h, h], 1.0);
        check_op(
            &ctx,
            &g,
            &x,
            BnMode::Frozen,
            200 + ci as u64,
            &format!("fc case {ci}"),
        );
    }
}

#[test]
fn activation_backward_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(3);
    let ops = [
        Op::Relu,
        Op::LeakyRelu { alpha: 0.1 },
        Op::Clip {
            min: -0.5,
            max: 0.7,
        },
        Op::Sigmoid,
    ];
    for (ci, op) in ops.into_iter().enumerate() {
        let g = graph(&[3, 5, 7], vec![("act", op, vec!["x"])], "act");
        for n in [1, 3] {
            let x = rng.normal_tensor(vec![n, 3, 5, 7], 1.0);
            check_op(
                &ctx,
                &g,
                &x,
                BnMode::Frozen,
                300 + ci as u64,
                &format!("activation {ci} batch {n}"),
            );
        }
    }
}

#[test]
fn pooling_backward_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(4);
    let pools = [
        pool(2, 2, [0; 4], false, false),
        pool(3, 2, [1; 4], false, false),
        pool(3, 2, [0; 4], true, false),
        pool(3, 1, [1, 0, 1, 2], false, false),
    ];
    for (pi, p) in pools.iter().enumerate() {
        for (kind, op) in [
            ("max", Op::MaxPool(p.clone())),
            ("avg", Op::AvgPool(p.clone())),
            (
                "avg incl. pad",
                Op::AvgPool(Pool2d {
                    count_include_pad: true,
                    ..p.clone()
                }),
            ),
        ] {
            let g = graph(&[2, 9, 8], vec![("pool", op, vec!["x"])], "pool");
            for n in [1, 2] {
                let x = rng.normal_tensor(vec![n, 2, 9, 8], 1.0);
                check_op(
                    &ctx,
                    &g,
                    &x,
                    BnMode::Frozen,
                    400 + pi as u64,
                    &format!("{kind} pool {pi} batch {n}"),
                );
            }
        }
    }
    let g = graph(
        &[5, 7, 3],
        vec![("gap", Op::GlobalAvgPool, vec!["x"])],
        "gap",
    );
    let x = rng.normal_tensor(vec![3, 5, 7, 3], 1.0);
    check_op(&ctx, &g, &x, BnMode::Frozen, 410, "global average pool");
}

#[test]
fn lrn_backward_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(5);
    for (ci, size) in [3usize, 5, 4].into_iter().enumerate() {
        let op = Op::Lrn {
            size,
            alpha: 1e-2,
            beta: 0.75,
            bias: 1.0,
        };
        let g = graph(&[7, 4, 3], vec![("lrn", op, vec!["x"])], "lrn");
        let x = rng.normal_tensor(vec![2, 7, 4, 3], 2.0);
        check_op(
            &ctx,
            &g,
            &x,
            BnMode::Frozen,
            500 + ci as u64,
            &format!("lrn size {size}"),
        );
    }
}

#[test]
fn batch_norm_backward_matches_cpu_train_and_frozen() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    for mode in [BnMode::Train, BnMode::Frozen] {
        for (n, shape) in [(2, vec![3, 4, 5]), (5, vec![4]), (1, vec![3, 7, 9])] {
            let c = shape[0];
            let g = graph(&shape, vec![("bn", bn_op(&mut rng, c), vec!["x"])], "bn");
            let mut xs = vec![n];
            xs.extend(&shape);
            let x = rng.normal_tensor(xs, 1.0);
            check_op(
                &ctx,
                &g,
                &x,
                mode,
                600,
                &format!("batch norm {mode:?} {n}x{shape:?}"),
            );
        }
    }
}

#[test]
fn add_concat_backward_match_cpu() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(7);
    let g = graph(
        &[3, 4, 5],
        vec![
            ("s", Op::Sigmoid, vec!["x"]),
            ("sum", Op::Add, vec!["s", "x"]),
            ("self", Op::Add, vec!["x", "x"]),
            ("cat", Op::Concat { axis: 1 }, vec!["sum", "x", "self"]),
            ("r", Op::Relu, vec!["cat"]),
        ],
        "r",
    );
    for n in [1, 2] {
        let x = rng.normal_tensor(vec![n, 3, 4, 5], 1.0);
        check_op(
            &ctx,
            &g,
            &x,
            BnMode::Frozen,
            700,
            &format!("add/concat batch {n}"),
        );
    }
}

/// LeNet-5 as the zoo builds it, on MNIST-shaped input.
fn lenet() -> Graph {
    cnnpack::zoo::build("lenet5", 3).expect("zoo lenet5")
}

/// conv-BN-relu stem, a residual block (conv-BN-relu-conv-BN + shortcut), a Concat of
/// two branches, max pool, global average pool and fc.
fn bn_res_net(seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    graph(
        &[3, 11, 10],
        vec![
            (
                "c1",
                conv_op(&mut rng, [3, 8, 1], [3, 3], [1, 1], [1; 4], [1, 1], false),
                vec!["x"],
            ),
            ("b1", bn_op(&mut rng, 8), vec!["c1"]),
            ("r1", Op::Relu, vec!["b1"]),
            (
                "c2",
                conv_op(&mut rng, [8, 8, 1], [3, 3], [1, 1], [1; 4], [1, 1], false),
                vec!["r1"],
            ),
            ("b2", bn_op(&mut rng, 8), vec!["c2"]),
            ("r2", Op::Relu, vec!["b2"]),
            (
                "c3",
                conv_op(&mut rng, [8, 8, 2], [3, 3], [1, 1], [1; 4], [1, 1], false),
                vec!["r2"],
            ),
            ("b3", bn_op(&mut rng, 8), vec!["c3"]),
            ("sum", Op::Add, vec!["b3", "r1"]),
            ("r3", Op::Relu, vec!["sum"]),
            (
                "e1",
                conv_op(&mut rng, [8, 6, 1], [1, 1], [1, 1], [0; 4], [1, 1], true),
                vec!["r3"],
            ),
            (
                "e3",
                conv_op(&mut rng, [8, 6, 1], [3, 3], [1, 1], [1; 4], [1, 1], true),
                vec!["r3"],
            ),
            ("cat", Op::Concat { axis: 1 }, vec!["e1", "e3"]),
            ("r4", Op::Relu, vec!["cat"]),
            (
                "mp",
                Op::MaxPool(pool(3, 2, [1; 4], false, false)),
                vec!["r4"],
            ),
            ("gap", Op::GlobalAvgPool, vec!["mp"]),
            ("flat", Op::Flatten { axis: 1 }, vec!["gap"]),
            ("fc", fc_op(&mut rng, 12, 5), vec!["flat"]),
        ],
        "fc",
    )
}

/// Random masks on two layers: a gradient mask (INQ) and a forward mask (DNS).
fn masks_for(g: &Graph, grad_layer: &str, fwd_layer: &str, seed: u64) -> Masks {
    let mut rng = Rng::new(seed);
    let mut m = Masks::new();
    for (layer, into_grad) in [(grad_layer, true), (fwd_layer, false)] {
        let n = g.nodes.iter().find(|n| n.name == layer).expect("layer");
        let len = n.op.weights().expect("weights").parameters();
        let mask: Vec<bool> = (0..len).map(|_| rng.uniform() > 0.3).collect();
        if into_grad {
            m.grad.insert(layer.into(), mask);
        } else {
            m.forward.insert(layer.into(), mask);
        }
    }
    m
}

/// Every parameter tensor of `g` by "node.role" (BN running stats included).
fn params(g: &Graph) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for n in &g.nodes {
        match &n.op {
            Op::Conv(_) | Op::Linear(_) => {
                out.insert(
                    format!("{}.weight", n.name),
                    n.op.weights().expect("weights").to_dense().into_owned(),
                );
                let b = match &n.op {
                    Op::Conv(c) => c.bias.clone(),
                    Op::Linear(l) => l.bias.clone(),
                    _ => None,
                };
                if let Some(b) = b {
                    out.insert(format!("{}.bias", n.name), b);
                }
            }
            Op::BatchNorm {
                scale,
                bias,
                mean,
                var,
                ..
            } => {
                for (role, t) in [
                    ("scale", scale),
                    ("bias", bias),
                    ("mean", mean),
                    ("var", var),
                ] {
                    out.insert(format!("{}.{role}", n.name), t.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// Three SGD steps on the CPU and on the GPU from the same weights and batches.
fn compare_steps(ctx: &Arc<GpuContext>, g0: &Graph, masks: &Masks, batch: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (momentum, wd, bn_momentum) = (0.9, 5e-4, 0.1);
    let mut cpu = g0.clone();
    let mut gpu_g = g0.clone();
    let mut sgd = Sgd::new(momentum, wd);
    let mut t = GpuTrainer::new(
        ctx.clone(),
        g0,
        GpuTrainOptions {
            momentum,
            weight_decay: wd,
            bn_mode: BnMode::Train,
            bn_momentum,
            input_grad: false,
            data_grad: DataGradKernel::Auto,
        },
        masks,
    )
    .expect("GPU trainer");
    let mut item = vec![batch];
    item.extend(&g0.input.item_shape);
    let classes = {
        let s = g0.infer_shapes(1).expect("shapes");
        s[&train::loss_target(g0).expect("target").logits]
            .iter()
            .product::<usize>()
    };
    for step in 0..3 {
        // The last step runs a smaller batch (a new program on the GPU).
        let n = if step == 2 { batch.div_ceil(2) } else { batch };
        item[0] = n;
        let x = rng.normal_tensor(item.clone(), 1.0);
        let lab = labels(&mut rng, n, classes);
        let lr = 0.05;
        let cache = train::forward(&cpu, &x, BnMode::Train, &masks.forward).expect("CPU forward");
        let (loss, dl) = train::softmax_cross_entropy(cache.logits(), &lab).expect("loss");
        let (grads, _) = train::backward(&cpu, &cache, dl, false).expect("CPU backward");
        sgd.step(&mut cpu, &grads, masks, lr).expect("CPU step");
        train::update_bn_running(&mut cpu, &cache, bn_momentum);
        let out = t.step(&x, &lab, lr).expect("GPU step");
        assert!(
            (out.loss - loss).abs() <= 1e-4 * (1.0 + loss.abs()),
            "step {step}: loss {} vs {loss}",
            out.loss
        );
    }
    t.sync_graph(&mut gpu_g).expect("sync");
    let (p0, pc, pg) = (params(g0), params(&cpu), params(&gpu_g));
    for (k, c) in &pc {
        let moved = Tensor {
            shape: c.shape.clone(),
            data: c.data.iter().zip(&p0[k].data).map(|(a, b)| a - b).collect(),
        };
        let scale = moved.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{k} did not move on the CPU");
        let diff = pg[k].max_abs_diff(c);
        assert!(
            diff <= 1e-3 * scale + 1e-6,
            "{k}: max |gpu - cpu| = {diff:e}, largest update {scale:e}"
        );
    }
    // Frozen entries stayed put on both sides.
    for (layer, mask) in &masks.grad {
        let k = format!("{layer}.weight");
        for (i, &m) in mask.iter().enumerate() {
            if !m {
                assert_eq!(pg[&k].data[i], p0[&k].data[i], "{k}[{i}] is frozen");
            }
        }
    }
}

#[test]
fn lenet5_step_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let g = lenet();
    let masks = masks_for(&g, "conv2", "ip1", 9);
    compare_steps(&ctx, &g, &masks, 8, 10);
}

#[test]
fn bn_residual_concat_step_matches_cpu() {
    let Some(ctx) = gpu() else { return };
    let g = bn_res_net(11);
    let masks = masks_for(&g, "c2", "e3", 12);
    compare_steps(&ctx, &g, &masks, 5, 13);
}

/// A synthetic 3-class dataset of 8x8 gray images (class = brightest third of the rows).
fn tiny_dataset(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut pixels = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.range(0, 2);
        for r in 0..8 {
            for _ in 0..8 {
                let base = if r * 3 / 8 == class { 160 } else { 40 };
                pixels.push((base + rng.range(0, 80)) as u8);
            }
        }
        labels.push(class as u8);
    }
    let preprocess = Preprocess::from_metadata(
        &BTreeMap::from([("preprocess.scale".to_string(), "0.00390625".to_string())]),
        &[1, 8, 8],
    )
    .expect("preprocess");
    Dataset::Idx {
        pixels,
        labels,
        rows: 8,
        cols: 8,
        preprocess,
        item_shape: vec![1, 8, 8],
    }
}

fn tiny_net(seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    graph(
        &[1, 8, 8],
        vec![
            (
                "conv",
                conv_op(&mut rng, [1, 4, 1], [3, 3], [2, 2], [1; 4], [1, 1], true),
                vec!["x"],
            ),
            ("bn", bn_op(&mut rng, 4), vec!["conv"]),
            ("relu", Op::Relu, vec!["bn"]),
            ("flat", Op::Flatten { axis: 1 }, vec!["relu"]),
            ("fc", fc_op(&mut rng, 64, 3), vec!["flat"]),
            ("prob", Op::Softmax, vec!["fc"]),
        ],
        "prob",
    )
}

#[test]
fn gpu_training_loop_is_reproducible_and_learns() {
    let Some(ctx) = gpu() else { return };
    let ds = tiny_dataset(150, 21);
    let test = tiny_dataset(60, 22);
    let run = |seed: u64| {
        let mut g = tiny_net(5);
        let mut masks = Masks::new();
        let stats = train::train(
            &mut g,
            &ds,
            Some(&test),
            &TrainOptions {
                epochs: 3,
                batch: 16,
                lr: 0.05,
                seed,
                device: TrainDevice::Gpu(ctx.clone()),
                ..TrainOptions::default()
            },
            &mut masks,
            |_| {},
        )
        .expect("GPU training");
        (g, stats)
    };
    let (a, sa) = run(1);
    let (b, sb) = run(1);
    let (c, _) = run(2);
    assert_eq!(
        params(&a),
        params(&b),
        "same seed, same device: identical weights"
    );
    assert_eq!(
        sa,
        sb.iter()
            .map(|s| cnnpack::train::EpochStats {
                train_seconds: sa[s.epoch].train_seconds,
                ..s.clone()
            })
            .collect::<Vec<_>>()
    );
    assert_ne!(params(&a), params(&c), "another seed shuffles differently");
    let acc = sa.last().and_then(|s| s.test_acc).expect("test accuracy");
    assert!(
        acc > 0.9,
        "GPU training learns the toy task: test accuracy {acc}"
    );
}

/// Training throughput (images/s) of LeNet-5 (MNIST shape) and ResNet-18, batch 32,
/// GPU and CPU, for docs/benchmarks-archive.md. Slow on lavapipe: run by hand with
/// `cargo test --test gpu_train training_throughput -- --ignored --nocapture`.
/// Env: CNNPACK_BENCH_RESNET_SIZE (default 224), CNNPACK_BENCH_ITERS (default 3),
/// CNNPACK_BENCH_MODELS (default "lenet5,resnet18"), CNNPACK_BENCH_PROFILE=1 prints
/// the per-layer GPU times of one step.
#[test]
#[ignore]
fn training_throughput() {
    let env = |k: &str| std::env::var(k).ok();
    let size: usize = env("CNNPACK_BENCH_RESNET_SIZE")
        .and_then(|v| v.parse().ok())
        .unwrap_or(224);
    let iters: usize = env("CNNPACK_BENCH_ITERS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let models = env("CNNPACK_BENCH_MODELS").unwrap_or("lenet5,resnet18".into());
    let devices = env("CNNPACK_BENCH_DEVICES").unwrap_or("gpu,cpu".into());
    for model in models.split(',') {
        let mut g = cnnpack::zoo::build(model, 1).expect("zoo model");
        if model.starts_with("resnet") {
            g.input.item_shape = vec![3, size, size];
        }
        for dev in devices.split(',') {
            let device = match dev {
                "gpu" => match gpu() {
                    Some(c) => TrainDevice::Gpu(c),
                    None => continue,
                },
                _ => TrainDevice::Cpu,
            };
            if dev == "gpu" && env("CNNPACK_BENCH_PROFILE").is_some() {
                let mut t = GpuTrainer::new(
                    gpu().expect("gpu"),
                    &g,
                    GpuTrainOptions::default(),
                    &Masks::new(),
                )
                .expect("trainer");
                let mut shape = vec![32];
                shape.extend(&g.input.item_shape);
                let x = Rng::new(1).normal_tensor(shape, 1.0);
                for (name, s) in t.profile(&x, &[0; 32]).expect("profile") {
                    println!("  {name:<24} {:>9.1} ms", s * 1e3);
                }
            }
            let opts = TrainOptions {
                lr: 0.001,
                device,
                ..TrainOptions::default()
            };
            let t = train::throughput(&g, &opts, 32, iters).expect("throughput");
            println!(
                "{model} {:?} {dev}: {:.2} images/s ({} steps of 32 in {:.2} s)",
                g.input.item_shape, t.images_per_second, t.iters, t.seconds
            );
        }
    }
}
