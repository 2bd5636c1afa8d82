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
