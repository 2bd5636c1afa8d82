//! One test body per op family, run on every device (`for_each_device!`: the reference,
//! the fast CPU kernels at every instruction set level this CPU has, the GPU adapter)
//! over the shared random cases of `tests/common`, each device against the reference
//! with the one tolerance rule (`common::tolerance`). The family files (`cpu_fast.rs`,
//! `gpu_ops.rs`, ...) go further into each backend's own paths (forced kernels, split
//! bindings, packed layouts); this file is where a new device or kernel family first
//! has to agree with the rest.

mod common;

use cnnpack::bench::sweep::{compress, SweepKind};
use cnnpack::graph::{GraphBuilder, Linear, Op, Pool2d, Rng};
use cnnpack::weights::Weights;
use common::{conv_cases, one_node, tolerance};

#[test]
fn conv_on_every_device() {
    for case in conv_cases(5, 30) {
        let item = &case.input.shape[1..];
        let g = one_node(item, Op::Conv(case.conv.clone()));
        for_each_device!(|dev| dev.check(&case.what, &g, &case.input, tolerance(case.k)));
    }
}

/// The one-shot compressions `bench sweep` makes: sketch m = 2, INQ 4 bits, CSR at 30%.
const COMPRESSIONS: [(SweepKind, f64); 3] = [
    (SweepKind::Sketch, 2.0),
    (SweepKind::Inq, 4.0),
    (SweepKind::Sparse, 0.3),
];

/// Convs and fcs with compressed weights (each device's own kernels or its
/// decode-to-dense, as its selection table picks), against the reference on the same
/// compressed graph.
#[test]
fn compressed_layers_on_every_device() {
    let mut rng = Rng::new(13);
    let mut graphs = Vec::new();
    for case in conv_cases(11, 14) {
        let item = case.input.shape[1..].to_vec();
        graphs.push((
            case.what,
            one_node(&item, Op::Conv(case.conv)),
            case.input,
            case.k,
        ));
    }
    for (n, k, out) in [(1, 97, 33), (3, 200, 17), (9, 64, 70)] {
        let fc = Linear {
            weight: Weights::Dense(rng.normal_tensor(vec![out, k], 1.0)),
            bias: Some(rng.normal_tensor(vec![out], 1.0)),
        };
        let x = rng.normal_tensor(vec![n, k], 1.0);
        graphs.push((
            format!("linear n{n} k{k} out{out}"),
            one_node(&[k], Op::Linear(fc)),
            x,
            k,
        ));
    }
    for (what, g, x, k) in &graphs {
        for (kind, value) in COMPRESSIONS {
            let c = compress(g, kind, value).expect("compresses");
            let what = format!("{what} {kind} {value}");
            for_each_device!(|dev| dev.check(&what, &c, x, tolerance(*k)));
        }
    }
}

#[test]
fn linear_on_every_device() {
    let mut rng = Rng::new(9);
    for case in 0..16 {
        // Batch 1 (GEMV), small batches (blocked GEMV), 33 and 65 (GEMM paths).
        let n = [1, 2, 5, 9, 17, 33, 65, 3][case % 8];
        let k = rng.range(1, 400);
        let out = rng.range(1, 150);
        let fc = Linear {
            weight: Weights::Dense(rng.normal_tensor(vec![out, k], 1.0)),
            bias: (case % 2 == 0).then(|| rng.normal_tensor(vec![out], 1.0)),
        };
        let x = rng.normal_tensor(vec![n, k], 1.0);
        let g = one_node(&[k], Op::Linear(fc));
        let what = format!("linear case {case}: n{n} k{k} out{out}");
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(k)));
    }
}

#[test]
fn pools_on_every_device() {
    let mut rng = Rng::new(17);
    for case in 0..24 {
        let k = [rng.range(1, 4), rng.range(1, 4)];
        let p = Pool2d {
            kernel: k,
            stride: [rng.range(1, 3), rng.range(1, 3)],
            pads: [
                rng.range(0, k[0] - 1),
                rng.range(0, k[1] - 1),
                rng.range(0, k[0] - 1),
                rng.range(0, k[1] - 1),
            ],
            ceil_mode: case % 2 == 0,
            count_include_pad: case % 3 == 0,
        };
        let (h, w) = (rng.range(k[0], k[0] + 9), rng.range(k[1], k[1] + 9));
        let item = [rng.range(1, 4), h, w];
        let x = rng.normal_tensor(vec![[1, 5][case % 2], item[0], h, w], 1.0);
        for (name, op) in [
            ("max", Op::MaxPool(p.clone())),
            ("avg", Op::AvgPool(p.clone())),
        ] {
            let what = format!("{name} pool case {case}: {p:?} on {:?}", x.shape);
            let g = one_node(&item, op);
            for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(k[0] * k[1])));
        }
        let g = one_node(&item, Op::GlobalAvgPool);
        let what = format!("global avg pool on {:?}", x.shape);
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(h * w)));
    }
}

/// A residual block with the fusions and aliases the plan makes (conv + ReLU, an Add of
/// a value read twice, a flatten before a Linear), at batch 1 and 3.
#[test]
fn planned_block_on_every_device() {
    let mut b = GraphBuilder::new("x", &[4, 9, 7], 21);
    let x = b.input();
    let c1 = b.conv(&x, 6, 3, 1, 1, 1);
    let r1 = b.relu(&c1);
    let c2 = b.conv(&r1, 4, 3, 1, 1, 1);
    let s = b.add(&c2, &x);
    let r2 = b.relu(&s);
    let p = b.max_pool(&r2, 2, 2, 0);
    let f = b.push("flat", Op::Flatten { axis: 1 }, &[&p]);
    let y = b.linear(&f, 10);
    let g = b.finish(&[&y, &r1]).expect("valid");
    let mut rng = Rng::new(4);
    for batch in [1, 3] {
        let x = rng.normal_tensor(vec![batch, 4, 9, 7], 1.0);
        let what = format!("block batch {batch}");
        // The deepest sum: the Linear over 4·4·3 pooled values of 6·9 + 4 products.
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(6 * 9 * 4 * 4 * 3)));
    }
}

/// Pool windows that lie in the padding only (end padding larger than the kernel): zero
/// for the average (no input under it; the fuzzer found the fast kernel slicing
/// backwards there).
#[test]
fn pool_windows_in_the_padding_only() {
    let p = Pool2d {
        kernel: [2, 2],
        stride: [1, 1],
        pads: [0, 0, 3, 3],
        ceil_mode: false,
        count_include_pad: false,
    };
    let x = Rng::new(3).normal_tensor(vec![2, 3, 4, 4], 1.0);
    for include in [false, true] {
        let p = Pool2d {
            count_include_pad: include,
            ..p.clone()
        };
        for (name, op) in [
            ("max", Op::MaxPool(p.clone())),
            ("avg", Op::AvgPool(p.clone())),
        ] {
            let g = one_node(&[3, 4, 4], op);
            let what = format!("{name} pool {p:?}");
            for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(4)));
        }
    }
}

/// A random shape of `rank` axes (batch first, 1 or 3), each 1-7 long.
fn random_shape(rng: &mut Rng, rank: usize) -> Vec<usize> {
    let mut s = vec![[1, 3][rng.range(0, 1)]];
    s.extend((1..rank).map(|_| rng.range(1, 7)));
    s
}

/// Every `UnaryOp` on ranks 2-5, on inputs inside its domain (Log, Sqrt: positive;
/// Reciprocal: away from 0), read from a computed value (the CPU runs it in place) and
/// from the graph input.
#[test]
fn unary_functions_on_every_device() {
    use cnnpack::graph::UnaryOp;
    let ops = [
        UnaryOp::HardSigmoid {
            alpha: 0.3,
            beta: 0.4,
        },
        UnaryOp::HardSwish,
        UnaryOp::Silu,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Gelu { tanh: false },
        UnaryOp::Gelu { tanh: true },
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Reciprocal,
        UnaryOp::Softplus,
        UnaryOp::Elu { alpha: 0.7 },
        UnaryOp::Softsign,
    ];
    let mut rng = Rng::new(31);
    for (i, op) in ops.into_iter().enumerate() {
        let shape = random_shape(&mut rng, 2 + i % 4);
        let mut x = rng.normal_tensor(shape.clone(), 2.0);
        if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Reciprocal) {
            // Positive and away from 0 (Reciprocal's sign is tested through Neg below).
            x.data.iter_mut().for_each(|v| *v = v.abs() + 0.25);
        }
        let mut b = GraphBuilder::new("x", &shape[1..], 1);
        let direct = b.push("direct", Op::Unary(op), &["x"]);
        let copy = b.push("copy", Op::Identity, &["x"]);
        let scaled = b.push(
            "scaled",
            Op::ConstBinary {
                kind: cnnpack::graph::BinaryKind::Mul,
                constant: cnnpack::graph::Tensor::new(vec![], vec![1.0]).unwrap(),
                constant_first: false,
            },
            &[&copy],
        );
        let in_place = b.push("in_place", Op::Unary(op), &[&scaled]);
        let g = b.finish(&[&direct, &in_place]).expect("valid");
        let what = format!("{op:?} on {shape:?}");
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(16)));
    }
}

/// Every binary kind between computed values of different shapes: `x` and a reduction of
/// it with 1s on random axes, in both orders (the CPU runs `x op r` in x's buffer, `r op
/// x` into a new one), on ranks 2-5.
#[test]
fn broadcast_binaries_on_every_device() {
    use cnnpack::graph::{BinaryKind, ReduceKind, UnaryOp};
    let kinds = [
        BinaryKind::Add,
        BinaryKind::Sub,
        BinaryKind::Mul,
        BinaryKind::Div,
        BinaryKind::Pow,
        BinaryKind::Max,
        BinaryKind::Min,
        BinaryKind::PRelu,
    ];
    let mut rng = Rng::new(32);
    for case in 0..24 {
        let kind = kinds[case % kinds.len()];
        let rank = 2 + case % 4;
        let shape = random_shape(&mut rng, rank);
        let mut axes: Vec<usize> = (1..rank).filter(|_| rng.range(0, 1) == 1).collect();
        if axes.is_empty() {
            axes.push(rank - 1);
        }
        let mut b = GraphBuilder::new("x", &shape[1..], 1);
        // Pow gets a positive base; Div a denominator away from 0 (an L2 norm).
        let base = match kind {
            BinaryKind::Pow => b.push("base", Op::Unary(UnaryOp::Exp), &["x"]),
            _ => b.push("base", Op::Unary(UnaryOp::Neg), &["x"]),
        };
        let r = b.push(
            "r",
            Op::Reduce {
                kind: if kind == BinaryKind::Div {
                    ReduceKind::L2
                } else {
                    ReduceKind::Mean
                },
                axes: axes.clone(),
                keepdims: true,
            },
            &["x"],
        );
        let xr = b.push("x_op_r", Op::Binary(kind), &[&base, &r]);
        let mut outputs = vec![xr];
        if !matches!(kind, BinaryKind::Div | BinaryKind::Pow) {
            outputs.push(b.push("r_op_x", Op::Binary(kind), &[&r, "x"]));
        }
        let refs: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
        let g = b.finish(&refs).expect("valid");
        let x = rng.normal_tensor(shape.clone(), 1.0);
        let what = format!("{kind:?} over axes {axes:?} of {shape:?}");
        let k = axes.iter().map(|&a| shape[a]).product::<usize>();
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(4 * k)));
    }
}

/// Every reduction over random non-batch axes of ranks 2-6, with and without keepdims.
#[test]
fn reductions_on_every_device() {
    use cnnpack::graph::ReduceKind;
    let kinds = [
        ReduceKind::Mean,
        ReduceKind::Sum,
        ReduceKind::Max,
        ReduceKind::Min,
        ReduceKind::L2,
    ];
    let mut rng = Rng::new(33);
    for case in 0..20 {
        let rank = 2 + case % 5;
        let shape = random_shape(&mut rng, rank);
        let mut axes: Vec<usize> = (1..rank).filter(|_| rng.range(0, 2) > 0).collect();
        if axes.is_empty() {
            axes.push(1);
        }
        let op = Op::Reduce {
            kind: kinds[case % kinds.len()],
            axes: axes.clone(),
            keepdims: case % 2 == 0,
        };
        let what = format!("{op:?} of {shape:?}");
        let g = one_node(&shape[1..], op);
        let x = rng.normal_tensor(shape.clone(), 1.0);
        let k = axes.iter().map(|&a| shape[a]).product::<usize>();
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(k)));
    }
}

/// Data movement of any rank: Transpose (random permutations keeping the batch first),
/// Expand, Reshape (an alias) into an op, Slice with negative steps, Pad in edge and
/// reflect modes. Exact on every device.
#[test]
fn layout_ops_on_every_device() {
    use cnnpack::graph::PadMode;
    let mut rng = Rng::new(34);
    for case in 0..18 {
        let rank = 2 + case % 5;
        let shape = random_shape(&mut rng, rank);
        let mut perm: Vec<usize> = (1..rank).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, rng.range(0, i));
        }
        perm.insert(0, 0);
        // Expand: grow the axes of length 1 (there is always the batch's; add one).
        let mut item = shape.clone();
        item[rank - 1] = 1;
        let mut expand_to = vec![1; rank];
        expand_to[rank - 1] = rng.range(2, 5);
        // Slice: a negative step on the last axis, from the end or inside.
        let d = shape[rank - 1];
        let step = -(rng.range(1, 3) as i64);
        let mut starts = vec![0; rank];
        let mut ends: Vec<usize> = shape.clone();
        let mut steps = vec![1i64; rank];
        ends[0] = usize::MAX;
        starts[rank - 1] = d - 1 - rng.range(0, d - 1) / 2;
        ends[rank - 1] = rng.range(0, starts[rank - 1]);
        steps[rank - 1] = step;
        // Pad: edge or reflect, pads below the axis length for reflect.
        let mode = [PadMode::Edge, PadMode::Reflect][case % 2];
        let mut pads = vec![0; 2 * rank];
        for a in 1..rank {
            let limit = if mode == PadMode::Reflect {
                shape[a] - 1
            } else {
                3
            };
            pads[a] = rng.range(0, limit.min(3));
            pads[a + rank] = rng.range(0, limit.min(3));
        }
        let mut target: Vec<i64> = shape[1..].iter().rev().map(|&v| v as i64).collect();
        target.insert(0, 0);
        let mut b = GraphBuilder::new("x", &shape[1..], 1);
        let t = b.push("t", Op::Transpose { perm: perm.clone() }, &["x"]);
        let s = b.push(
            "s",
            Op::Slice {
                starts,
                ends,
                steps,
            },
            &["x"],
        );
        let p = b.push(
            "p",
            Op::Pad {
                pads,
                value: 0.0,
                mode,
            },
            &["x"],
        );
        let r = b.push("r", Op::Reshape { target }, &["x"]);
        let rr = b.push("rr", Op::Relu, &[&r]);
        let g = b.finish(&[&t, &s, &p, &rr]).expect("valid");
        let x = rng.normal_tensor(shape.clone(), 1.0);
        let what = format!("layout case {case} on {shape:?} (perm {perm:?}, {mode:?})");
        for_each_device!(|dev| dev.check(&what, &g, &x, (0.0, 0.0)));
        // Expand reads an input with a 1 on the last axis.
        let ge = one_node(
            &item[1..],
            Op::Expand {
                shape: expand_to.clone(),
            },
        );
        let xe = rng.normal_tensor(item.clone(), 1.0);
        let what = format!("expand {item:?} to {expand_to:?}");
        for_each_device!(|dev| dev.check(&what, &ge, &xe, (0.0, 0.0)));
    }
}

/// LayerNorm over the trailing axes from a random axis, with and without bias.
#[test]
fn layer_norm_on_every_device() {
    let mut rng = Rng::new(35);
    for case in 0..12 {
        let rank = 2 + case % 4;
        let shape = random_shape(&mut rng, rank);
        let axis = rng.range(1, rank - 1);
        let inner: usize = shape[axis..].iter().product();
        let op = Op::LayerNorm {
            axis,
            epsilon: 1e-5,
            scale: rng.normal_tensor(vec![inner], 1.0),
            bias: (case % 2 == 0).then(|| rng.normal_tensor(vec![inner], 1.0)),
        };
        let g = one_node(&shape[1..], op);
        let x = rng.normal_tensor(shape.clone(), 3.0);
        let what = format!("layer norm from axis {axis} of {shape:?}");
        for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(4 * inner)));
    }
}

/// Every binary kind with a broadcast constant on either side, read from a computed
/// value (the CPU runs it in place) and from the graph input.
#[test]
fn constant_binaries_on_every_device() {
    use cnnpack::graph::{BinaryKind, UnaryOp};
    let kinds = [
        BinaryKind::Add,
        BinaryKind::Sub,
        BinaryKind::Mul,
        BinaryKind::Div,
        BinaryKind::Pow,
        BinaryKind::Max,
        BinaryKind::Min,
        BinaryKind::PRelu,
    ];
    let mut rng = Rng::new(36);
    for case in 0..16 {
        let kind = kinds[case % kinds.len()];
        let constant_first = case >= kinds.len() && kind != BinaryKind::PRelu;
        let rank = 2 + case % 4;
        let shape = random_shape(&mut rng, rank);
        // The constant: trailing axes of the item shape, some of them 1.
        let keep = rng.range(1, rank - 1);
        let cshape: Vec<usize> = shape[rank - keep..]
            .iter()
            .map(|&d| if rng.range(0, 2) == 0 { 1 } else { d })
            .collect();
        let mut constant = rng.normal_tensor(cshape.clone(), 1.0);
        // Pow: positive bases, small exponents; Div: denominators away from 0.
        let positive =
            |t: &mut cnnpack::graph::Tensor| t.data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
        let mut b = GraphBuilder::new("x", &shape[1..], 1);
        let x = if kind == BinaryKind::Pow && !constant_first {
            b.push("base", Op::Unary(UnaryOp::Exp), &["x"])
        } else {
            b.push("copy", Op::Unary(UnaryOp::Neg), &["x"])
        };
        if matches!(kind, BinaryKind::Div | BinaryKind::Pow) {
            positive(&mut constant);
        }
        let op = Op::ConstBinary {
            kind,
            constant,
            constant_first,
        };
        let in_place = b.push("in_place", op.clone(), &[&x]);
        let mut outputs = vec![in_place];
        if !(matches!(kind, BinaryKind::Div) && constant_first) && kind != BinaryKind::Pow {
            outputs.push(b.push("direct", op, &["x"]));
        }
        let refs: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
        let g = b.finish(&refs).expect("valid");
        let input = rng.normal_tensor(shape.clone(), 1.0);
        let what = format!("{kind:?} (constant first: {constant_first}) {cshape:?} on {shape:?}");
        for_each_device!(|dev| dev.check(&what, &g, &input, tolerance(16)));
    }
}

/// Depthwise convs wide enough for the CPU's channel-interleaved kernel (blocks of 8
/// channels, planes under 32 columns) and its tail, and for its row kernel (wider
/// planes): channel multipliers 1 and 2, stride 1 and 2, dilation, uneven padding.
#[test]
fn depthwise_convs_on_every_device() {
    use cnnpack::graph::Conv2d;
    let mut rng = Rng::new(37);
    for (case, &(channels, mult, k, stride, dilation, hw)) in [
        (20, 1, 3, 1, 1, [7, 7]),
        (12, 2, 5, 2, 1, [13, 11]),
        (17, 1, 3, 2, 2, [9, 12]),
        (9, 1, 7, 1, 1, [40, 37]),
        (16, 2, 3, 1, 1, [5, 33]),
    ]
    .iter()
    .enumerate()
    {
        let conv = Conv2d {
            kernel: [k, k],
            stride: [stride; 2],
            pads: [k / 2, k / 2 + 1, k / 2 + 1, k / 2],
            dilation: [dilation; 2],
            groups: channels,
            weight: Weights::Dense(rng.normal_tensor(vec![channels * mult, 1, k, k], 1.0)),
            bias: (case % 2 == 0).then(|| rng.normal_tensor(vec![channels * mult], 1.0)),
        };
        let g = one_node(&[channels, hw[0], hw[1]], Op::Conv(conv));
        for batch in [1, 3] {
            let x = rng.normal_tensor(vec![batch, channels, hw[0], hw[1]], 1.0);
            let what = format!("depthwise case {case} batch {batch}");
            for_each_device!(|dev| dev.check(&what, &g, &x, tolerance(k * k)));
        }
    }
}
