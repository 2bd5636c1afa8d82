//! Sketched (binary-basis) Conv and Linear on the GPU against the CPU reference run on
//! the dense reconstruction (`Weights::to_dense()`): random signs and scales, odd K not
//! a multiple of 32, stride 2, asymmetric padding, groups and depthwise, dilation,
//! batch 1 and 5 (and 9 for the Linear-as-conv path), m = 1..4; the binding-split
//! path (tiny `max_binding_bytes`); a whole sketched model against the CPU fast backend.
//!
//! Tolerance: max |gpu - ref| <= 1e-4 * max |ref| + 1e-5. The reference accumulates in
//! f64; the GPU sums the selected inputs in f32 (P and S up to K ~ 600 terms) and forms
//! `2P - S` before scaling, so it rounds differently from a dense dot product.
//!
//! Without an adapter the tests print `skipped: no GPU adapter` and pass, unless
//! CNNPACK_REQUIRE_GPU=1.

mod common;
use cnnpack::backend::cpu::{fast, reference};
use cnnpack::backend::gpu::{CompressedConv, GpuContext, GpuModel, GpuOptions};
use cnnpack::compress::sketch::{sketch_graph, SketchOptions};
use cnnpack::graph::{Conv2d, Graph, GraphBuilder, Linear, Op, Rng, Tensor};
use cnnpack::weights::{Pow2Weights, SketchWeights, Weights};
use common::{assert_close, gpu};
use std::sync::Arc;

const TOL: (f32, f32) = (1e-4, 1e-5);

/// Random signs and scales (either sign) for a `shape` layer with `m` bases.
fn random_sketch(rng: &mut Rng, shape: Vec<usize>, m: usize) -> SketchWeights {
    let rows = shape[0];
    let k: usize = shape[1..].iter().product();
    let signs: Vec<bool> = (0..rows * m * k).map(|_| rng.next_u64() & 1 == 1).collect();
    let scales: Vec<f32> = (0..rows * m).map(|_| rng.normal() * 0.3).collect();
    SketchWeights::from_signs(shape, m, &signs, scales).expect("consistent test sketch")
}

/// The same graph with every sketched weight replaced by its dense reconstruction.
fn densified(graph: &Graph) -> Graph {
    let mut g = graph.clone();
    for node in &mut g.nodes {
        let w = match &mut node.op {
            Op::Conv(c) => &mut c.weight,
            Op::Linear(l) => &mut l.weight,
            _ => continue,
        };
        let dense = w.to_dense().into_owned();
        *w = Weights::Dense(dense);
    }
    g
}

/// Runs the (sketched) `graph` on the GPU and the reference (on its dense
/// reconstruction) and compares every output.
fn check(ctx: &Arc<GpuContext>, what: &str, graph: &Graph, batch: usize, options: GpuOptions) {
    let mut rng = Rng::new(batch as u64 * 17 + 3);
    let mut shape = vec![batch];
    shape.extend(&graph.input.item_shape);
    let input = rng.normal_tensor(shape, 1.0);
    let model = GpuModel::with_options(ctx.clone(), graph, batch, options)
        .unwrap_or_else(|e| panic!("{what}: building the GPU model failed: {e}"));
    let got = model
        .run(&input)
        .unwrap_or_else(|e| panic!("{what}: GPU run failed: {e}"));
    let want = reference::run_graph(&densified(graph), &input)
        .unwrap_or_else(|e| panic!("{what}: reference failed: {e}"));
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("{what} (batch {batch}, output {k})"), g, w, TOL);
    }
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
    relu: bool,
}

/// A one-conv graph (plus a ReLU to exercise the fused flag) with sketched weights.
fn conv_graph(c: &ConvCase, m: usize, rng: &mut Rng) -> Graph {
    let w = random_sketch(rng, vec![c.cout, c.cin / c.groups, c.k[0], c.k[1]], m);
    let op = Op::Conv(Conv2d {
        kernel: c.k,
        stride: c.stride,
        pads: c.pads,
        dilation: c.dilation,
        groups: c.groups,
        weight: Weights::Sketch(w),
        bias: c.bias.then(|| rng.normal_tensor(vec![c.cout], 1.0)),
    });
    let mut b = GraphBuilder::new("x", &[c.cin, c.hw[0], c.hw[1]], 1);
    let mut y = b.push("conv", op, &["x"]);
    if c.relu {
        y = b.relu(&y);
    }
    b.finish(&[&y]).expect("test graph is valid")
}

fn conv_cases() -> Vec<ConvCase> {
    vec![
        // K = 27: one partial word, bias, ReLU fused.
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
            relu: true,
        },
        // K = 63, 37 channels (several blocks for every m), stride 2, asymmetric pads.
        ConvCase {
            cin: 7,
            cout: 37,
            hw: [15, 13],
            k: [3, 3],
            stride: [2, 2],
            pads: [0, 1, 2, 1],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            relu: false,
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
            relu: false,
        },
        // Groups (3 groups of 4 -> 6 channels).
        ConvCase {
            cin: 12,
            cout: 18,
            hw: [8, 9],
            k: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 3,
            bias: true,
            relu: true,
        },
        // Depthwise, stride 2.
        ConvCase {
            cin: 10,
            cout: 10,
            hw: [11, 11],
            k: [3, 3],
            stride: [2, 2],
            pads: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 10,
            bias: true,
            relu: false,
        },
        // K = 600 (19 words, last one partial), 1x1 output corner cases: 5x5 kernel.
        ConvCase {
            cin: 24,
            cout: 40,
            hw: [7, 6],
            k: [5, 5],
            stride: [1, 1],
            pads: [2, 2, 2, 2],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            relu: false,
        },
    ]
}

#[test]
fn sketch_conv_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(11);
    for (i, c) in conv_cases().iter().enumerate() {
        for m in 1..=4 {
            let g = conv_graph(c, m, &mut rng);
            for batch in [1, 5] {
                check(
                    &ctx,
                    &format!("conv case {i} m={m}"),
                    &g,
                    batch,
                    GpuOptions {
                        compressed_conv: CompressedConv::Native,
                        ..GpuOptions::default()
                    },
                );
            }
        }
    }
}

fn linear_graph(k: usize, out: usize, m: usize, bias: bool, relu: bool, rng: &mut Rng) -> Graph {
    let w = random_sketch(rng, vec![out, k], m);
    let op = Op::Linear(Linear {
        weight: Weights::Sketch(w),
        bias: bias.then(|| rng.normal_tensor(vec![out], 1.0)),
    });
    let mut b = GraphBuilder::new("x", &[k], 1);
    let mut y = b.push("fc", op, &["x"]);
    if relu {
        y = b.relu(&y);
    }
    b.finish(&[&y]).expect("test graph is valid")
}

#[test]
fn sketch_linear_matches_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(12);
    // (K, out): K odd and not a multiple of 32, exactly 32, over one 64-row workgroup.
    for (k, out, bias, relu) in [
        (37, 5, true, true),
        (32, 70, false, false),
        (301, 130, true, false),
    ] {
        for m in 1..=4 {
            let g = linear_graph(k, out, m, bias, relu, &mut rng);
            // 1 and 5: GEMV kernel; 9: the conv kernel over batch items.
            for batch in [1, 5, 9] {
                check(
                    &ctx,
                    &format!("linear {k}->{out} m={m}"),
                    &g,
                    batch,
                    GpuOptions {
                        compressed_conv: CompressedConv::Native,
                        ..GpuOptions::default()
                    },
                );
            }
        }
    }
}

/// More than four bases: the fc takes them four per pass (5 = 4 + 1, 7 = 4 + 3), the conv
/// fits fewer channels per 64-pair block (12 at m = 5, 9 at m = 7).
#[test]
fn sketch_many_bases() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(16);
    for m in [5, 7] {
        let g = linear_graph(101, 70, m, true, false, &mut rng);
        for batch in [1, 9] {
            check(
                &ctx,
                &format!("linear m={m}"),
                &g,
                batch,
                GpuOptions {
                    compressed_conv: CompressedConv::Native,
                    ..GpuOptions::default()
                },
            );
        }
        let c = &conv_cases()[1];
        let g = conv_graph(c, m, &mut rng);
        check(
            &ctx,
            &format!("conv case 1 m={m}"),
            &g,
            2,
            GpuOptions {
                compressed_conv: CompressedConv::Native,
                ..GpuOptions::default()
            },
        );
    }
}

/// K over one 64 KiB input window (16384 floats): the fc runs in K slices that accumulate.
#[test]
fn sketch_linear_wide_input() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(13);
    let g = linear_graph(16384 + 45, 9, 2, true, true, &mut rng);
    for batch in [1, 3] {
        check(
            &ctx,
            "linear 16429->9",
            &g,
            batch,
            GpuOptions {
                compressed_conv: CompressedConv::Native,
                ..GpuOptions::default()
            },
        );
    }
}

/// Tiny binding cap: conv bits in input-channel slices and channel-block chunks, fc rows in
/// chunks and K in several windows.
#[test]
fn sketch_split_bindings() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(14);
    let options = GpuOptions {
        max_binding_bytes: Some(256),
        ..GpuOptions {
            compressed_conv: CompressedConv::Native,
            ..GpuOptions::default()
        }
    };
    let cases = conv_cases();
    for (i, c) in cases.iter().enumerate() {
        let g = conv_graph(c, 3, &mut rng);
        for batch in [1, 5] {
            check(&ctx, &format!("split conv case {i}"), &g, batch, options);
        }
    }
    // 301 inputs = 10 words: 256 bytes hold 64 floats = 2 words per window, and 21 rows
    // of 3 words (m = 1) per chunk.
    for m in [1, 2] {
        let g = linear_graph(301, 50, m, true, true, &mut rng);
        for batch in [1, 5, 9] {
            check(&ctx, &format!("split linear m={m}"), &g, batch, options);
        }
    }
}

/// The split-K fc (`sketch_fc` slices + `sketch_fc_reduce`), which lavapipe only runs
/// when forced: K = 301 is 10 words per base (3 slices of 4, 4, 2 words: the unrolled
/// loops and their tails; 4 of 3, 3, 3, 1; 64 asked, 10 given), m = 1..5 (every base
/// loop, and 4 + 1), rows off multiples of 64, two input windows (K > 16384), batch 1
/// and 3 (and 5), ReLU on and off, row chunks.
#[test]
fn sketch_linear_split_k() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(17);
    let opts = |s: usize, cap: Option<u64>| GpuOptions {
        compressed_conv: CompressedConv::Native,
        fc_split_k: Some(s),
        max_binding_bytes: cap,
        ..GpuOptions::default()
    };
    for m in 1..=5 {
        let relu = m % 2 == 1;
        let g = linear_graph(301, 70, m, m != 3, relu, &mut rng);
        for s in [3, 4, 64] {
            for batch in [1, 3] {
                check(
                    &ctx,
                    &format!("split-K linear 301->70 m={m} S={s}"),
                    &g,
                    batch,
                    opts(s, None),
                );
            }
        }
        // Row chunks and windows of 2 words.
        check(
            &ctx,
            &format!("split-K linear 301->70 m={m} chunked S=2"),
            &g,
            5,
            opts(2, Some(256)),
        );
    }
    for (m, relu) in [(1, true), (2, false)] {
        let g = linear_graph(16384 + 45, 9, m, true, relu, &mut rng);
        for batch in [1, 3] {
            check(
                &ctx,
                &format!("split-K linear 16429->9 m={m} S=5"),
                &g,
                batch,
                opts(5, None),
            );
        }
    }
}

/// A small model sketched with `sketch_graph`: GPU vs the CPU fast backend (which runs
/// the sketch kernels on the same packed bits).
#[test]
fn sketched_model_matches_cpu_fast() {
    let Some(ctx) = gpu() else { return };
    let mut b = GraphBuilder::new("x", &[3, 20, 20], 5);
    let x = b.input();
    let c1 = b.conv(&x, 16, 3, 1, 1, 1);
    let r1 = b.relu(&c1);
    let p1 = b.max_pool(&r1, 2, 2, 0);
    let c2 = b.conv(&p1, 16, 3, 1, 1, 16);
    let r2 = b.relu(&c2);
    let c3 = b.conv(&r2, 24, 3, 2, 1, 2);
    let r3 = b.relu(&c3);
    let f = b.flatten(&r3);
    let fc1 = b.linear(&f, 40);
    let r4 = b.relu(&fc1);
    let fc2 = b.linear(&r4, 10);
    let graph = b.finish(&[&fc2]).expect("test graph is valid");
    let opts = SketchOptions {
        bases: 3,
        ..SketchOptions::default()
    };
    let (sketched, reports) = sketch_graph(&graph, &opts).expect("sketching succeeds");
    assert_eq!(reports.len(), 5, "every conv and fc is sketched");
    for batch in [1, 5] {
        let mut rng = Rng::new(99 + batch as u64);
        let input = rng.normal_tensor(vec![batch, 3, 20, 20], 1.0);
        let model = GpuModel::new(ctx.clone(), &sketched, batch).expect("GPU model builds");
        let got = model.run(&input).expect("GPU run");
        let want = fast::run_graph(&sketched, &input).expect("CPU fast run");
        assert_close(
            &format!("sketched model batch {batch}"),
            &got[0],
            &want[0],
            TOL,
        );
    }
}

/// Timing (not a test of speed): `cargo test --test gpu_sketch timing -- --ignored --nocapture`.
/// AlexNet fc6's shape 9216 -> 4096 at batch 1, m = 1, 2, 4, and a 3x3 conv 64 -> 64 on
/// 56x56 at batch 8, each against the dense kernels on the same adapter.
#[test]
#[ignore]
fn timing() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(15);
    let time = |graph: &Graph, batch: usize, what: &str, flops: f64, weight_bytes: f64| {
        let mut shape = vec![batch];
        shape.extend(&graph.input.item_shape);
        let input = rng_input(&shape);
        let model = GpuModel::new(ctx.clone(), graph, batch).expect("model builds");
        model.run(&input).expect("warm-up run");
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let out = model.run_profiled(&input).expect("run");
            let wall = t.elapsed().as_secs_f64() * 1e3;
            let gpu_ms = out
                .1
                .map(|s| s.iter().map(|(_, ms)| ms).sum::<f64>())
                .unwrap_or(wall);
            best = best.min(gpu_ms);
        }
        println!(
            "{what}: {best:.2} ms, {:.2} GFLOP/s-equivalent, {:.2} MB/s of weight bytes (packed when sketched)",
            flops / best * 1e-6,
            weight_bytes / best * 1e-3
        );
    };
    // CNNPACK_TIMING=fc or conv runs only that half.
    let only = std::env::var("CNNPACK_TIMING").unwrap_or_default();
    let (k, out) = (9216, 4096);
    let dense_fc = {
        let mut b = GraphBuilder::new("x", &[k], 1);
        let x = b.input();
        let y = b.linear(&x, out);
        b.finish(&[&y]).expect("valid")
    };
    let flops = 2.0 * (k * out) as f64;
    if only != "conv" {
        time(
            &dense_fc,
            1,
            "fc 9216->4096 dense",
            flops,
            (k * out * 4) as f64,
        );
        for m in [1, 2, 4] {
            let g = linear_graph(k, out, m, true, false, &mut rng);
            time(
                &g,
                1,
                &format!("fc 9216->4096 sketch m={m}"),
                flops,
                (out * m * (k / 32) * 4) as f64,
            );
        }
    }
    if only == "fc" {
        return;
    }
    let c = ConvCase {
        cin: 64,
        cout: 64,
        hw: [56, 56],
        k: [3, 3],
        stride: [1, 1],
        pads: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
        bias: true,
        relu: false,
    };
    let flops = 2.0 * (64 * 64 * 9 * 56 * 56 * 8) as f64;
    let dense_conv = densified(&conv_graph(&c, 1, &mut rng));
    time(
        &dense_conv,
        8,
        "conv 3x3 64->64 56x56 b8 dense",
        flops,
        (64 * 576 * 4) as f64,
    );
    for m in [1, 2, 4] {
        let g = conv_graph(&c, m, &mut rng);
        time(
            &g,
            8,
            &format!("conv 3x3 64->64 56x56 b8 sketch m={m}"),
            flops,
            (64 * m * 18 * 4) as f64,
        );
    }
}

/// Timing of the batch-1 compressed fc kernels per K-slice count (not a test of speed):
/// `CNNPACK_FC_SWEEP=0,1,8,32 cargo test --release --test gpu_sketch fc_split_k_timing --
/// --ignored --nocapture` (slice counts, 0 = automatic; default 0,1). AlexNet's fc6, fc7
/// and fc8 shapes with sketch m = 1, 2, 4 and pow2 b = 2, 4, 5, next to the dense GEMV;
/// best of 20 timestamp-query runs after 10 warm-up runs of the step (gather, kernel, reduce), and the largest
/// difference of each output from the first slice count's, relative to its max |y|.
#[test]
#[ignore]
fn fc_split_k_timing() {
    let Some(ctx) = gpu() else { return };
    let sweep: Vec<usize> = std::env::var("CNNPACK_FC_SWEEP")
        .unwrap_or_else(|_| "0,1".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let mut rng = Rng::new(21);
    let run = |g: &Graph, k: usize, s: Option<usize>| -> (f64, Tensor) {
        let opts = GpuOptions {
            compressed_conv: CompressedConv::Native,
            fc_split_k: s,
            ..GpuOptions::default()
        };
        let model = GpuModel::with_options(ctx.clone(), g, 1, opts).expect("model builds");
        let input = rng_input(&[1, k]);
        let y = model.run(&input).expect("warm-up run").remove(0);
        for _ in 0..10 {
            model.run(&input).expect("warm-up run");
        }
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            let (_, times) = model.run_profiled(&input).expect("run");
            let wall = t.elapsed().as_secs_f64() * 1e3;
            let ms = times.map_or(wall, |s| s.iter().map(|(_, ms)| ms).sum::<f64>());
            best = best.min(ms);
        }
        (best, y)
    };
    let fc = |k: usize, out: usize, w: Weights, rng: &mut Rng| {
        let op = Op::Linear(Linear {
            weight: w,
            bias: Some(rng.normal_tensor(vec![out], 1.0)),
        });
        let mut b = GraphBuilder::new("x", &[k], 1);
        let y = b.push("fc", op, &["x"]);
        b.finish(&[&y]).expect("valid")
    };
    for (name, k, out) in [
        ("fc6", 9216, 4096),
        ("fc7", 4096, 4096),
        ("fc8", 4096, 1000),
    ] {
        let g = fc(
            k,
            out,
            Weights::Dense(rng.normal_tensor(vec![out, k], 0.05)),
            &mut rng,
        );
        let (ms, _) = run(&g, k, None);
        let gbs = (k * out * 4) as f64 / ms * 1e-6;
        println!("{name} {k}->{out} dense: {ms:.4} ms ({gbs:.0} GB/s)");
        for (kind, p) in [
            ("sketch m", 1u32),
            ("sketch m", 2),
            ("sketch m", 4),
            ("pow2 b", 2),
            ("pow2 b", 4),
            ("pow2 b", 5),
        ] {
            let (w, bytes) = if kind == "sketch m" {
                let m = p as usize;
                let words = out * m * k.div_ceil(32);
                let bits = (0..words).map(|_| rng.next_u64() as u32).collect();
                let scales = (0..out * m).map(|i| 0.05 / (1 << (i % m)) as f32).collect();
                let w = SketchWeights::new(vec![out, k], m, bits, scales).expect("valid sketch");
                (Weights::Sketch(w), words * 4)
            } else {
                let mags = 1u64 << (p - 2);
                let codes: Vec<u8> = (0..out * k)
                    .map(|_| {
                        let r = rng.next_u64() % (2 * mags + 1);
                        let e = (r.max(1) - 1) % mags + 1;
                        let sign = if r > mags { 1u64 << (p - 1) } else { 0 };
                        if r == 0 {
                            0
                        } else {
                            (sign | e) as u8
                        }
                    })
                    .collect();
                let w = Pow2Weights::from_codes(vec![out, k], p, -3, &codes).expect("valid codes");
                let bytes = out * w.words_per_row() * 4;
                (Weights::Pow2(w), bytes)
            };
            let g = fc(k, out, w, &mut rng);
            let mut line = format!("{name} {kind}={p}:");
            let mut first: Option<Tensor> = None;
            for &s in &sweep {
                let (ms, y) = run(&g, k, (s > 0).then_some(s));
                let gbs = bytes as f64 / ms * 1e-6;
                let rel = first.as_ref().map_or(0.0, |f| {
                    let scale = f.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                    y.max_abs_diff(f) / scale
                });
                first.get_or_insert(y);
                let s = if s == 0 { "auto".into() } else { s.to_string() };
                line += &format!(" S={s} {ms:.4} ms ({gbs:.0} GB/s, rel {rel:.1e});");
            }
            println!("{line}");
        }
    }
}

fn rng_input(shape: &[usize]) -> Tensor {
    Rng::new(5).normal_tensor(shape.to_vec(), 1.0)
}
