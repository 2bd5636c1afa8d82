//! Compressed against dense on the CPU, timed in interleaved rounds: each round runs
//! the dense layer and every compressed variant once (in a random order), and the
//! report gives each one's median over the rounds and its ratio to dense's median.
//!
//! Why beside `kernels.rs`: criterion times one variant after the other, so on a shared
//! VM whose speed drifts over minutes a ratio can move by a third between two runs, and
//! a variant that is timed alone keeps its weights in L3 across iterations (fc6's 19 MB
//! of 4-bit codes do; in a model they would not). Interleaving puts every variant under
//! the same drift and evicts each one's weights with the others' (dense fc6 streams 151
//! MB per call).
//!
//! `cargo bench --bench interleaved` (both sets, about 3 minutes on 2 cores);
//! `-- conv` or `-- fc` for one; `INTERLEAVED_ROUNDS` (default 15);
//! `INTERLEAVED_FC_BATCHES` (comma-separated, default `1,8`).

use cnnpack::backend::cpu::fast;
use cnnpack::backend::cpu::fast::FcKernel;
use cnnpack::graph::{Conv2d, Linear, Node, Op, Rng, Tensor};
use cnnpack::weights::{Pow2Weights, SketchWeights, SparseWeights, Weights};
use std::hint::black_box;
use std::time::Instant;

fn node(op: Op) -> Node {
    Node {
        name: "layer".into(),
        op,
        inputs: vec!["x".into()],
        output: "y".into(),
    }
}

fn conv3x3(weight: Weights, bias: Tensor) -> Node {
    node(Op::Conv(Conv2d {
        kernel: [3, 3],
        stride: [1, 1],
        pads: [1; 4],
        dilation: [1, 1],
        groups: 1,
        weight,
        bias: Some(bias),
    }))
}

/// One variant of a layer: its node, and for a dense conv optionally its packed weights
/// (then it runs `conv2d_packed`, as an `Engine` on the CPU does), or for a pow2 or
/// sketch fc a named kernel (then it runs `pow2_linear_with` or `sketch_linear_with`).
struct Variant {
    name: &'static str,
    node: Node,
    packed: Option<fast::PackedConv>,
    fc_kernel: Option<FcKernel>,
    /// A sparse conv run by the CSR kernel whatever its density.
    csr: bool,
}

impl Variant {
    fn new(name: &'static str, node: Node) -> Variant {
        Variant {
            name,
            node,
            packed: None,
            fc_kernel: None,
            csr: false,
        }
    }

    /// The sparse conv `node` on the CSR kernel (`fast::sparse::sparse_conv`).
    fn csr(name: &'static str, node: Node) -> Variant {
        Variant {
            csr: true,
            ..Variant::new(name, node)
        }
    }

    /// The pow2 or sketch fc `node` on the kernel `kernel`.
    fn fc(name: &'static str, node: Node, kernel: FcKernel) -> Variant {
        Variant {
            fc_kernel: Some(kernel),
            ..Variant::new(name, node)
        }
    }

    /// The dense conv `node` on packed weights (on a CPU without AVX2+FMA: in place).
    fn packed(name: &'static str, node: Node) -> Variant {
        let packed = match &node.op {
            Op::Conv(c) => fast::PackedConv::new(c),
            _ => None,
        };
        Variant {
            packed,
            ..Variant::new(name, node)
        }
    }
}

fn millis(v: &Variant, x: &Tensor) -> f64 {
    let t = Instant::now();
    match (&v.packed, &v.node.op) {
        (Some(p), Op::Conv(c)) => {
            black_box(fast::conv2d_packed(x, c, p, false));
        }
        (_, Op::Conv(c)) if v.csr => {
            black_box(fast::sparse::sparse_conv(x, c));
        }
        (_, Op::Linear(l)) if v.fc_kernel.is_some() => {
            let (bias, kernel) = (l.bias.as_ref(), v.fc_kernel.expect("checked"));
            match &l.weight {
                Weights::Pow2(w) => black_box(fast::pow2::pow2_linear_with(x, w, bias, kernel)),
                Weights::Sketch(w) => {
                    black_box(fast::sketch::sketch_linear_with(x, w, bias, kernel))
                }
                _ => panic!("{}: a named fc kernel for dense or sparse weights", v.name),
            };
        }
        _ => {
            black_box(fast::run_node(&v.node, &[x]).expect("kernel runs"));
        }
    }
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `variants[0]` (dense) and the rest in interleaved rounds; prints one line.
fn compare(label: &str, variants: &[Variant], x: &Tensor, rounds: usize) {
    for v in variants {
        millis(v, x); // warm-up: fills per-layer derived data
    }
    let mut times = vec![Vec::with_capacity(rounds); variants.len()];
    // Each round runs the variants in a fresh random order (Fisher-Yates, fixed seed).
    // A rotated order keeps every variant's neighbours: the one listed after dense then
    // always ran right after dense's 151 MB stream, and pow2 fc6 measured 10-15% slower
    // there than in a random order (docs/benchmarks-archive.md, session 11).
    let mut rng = Rng::new(5);
    let mut order: Vec<usize> = (0..variants.len()).collect();
    for _ in 0..rounds {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.range(0, i));
        }
        for &v in &order {
            times[v].push(millis(&variants[v], x));
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let mut line = format!("{label}: {} {:.3} ms", variants[0].name, medians[0]);
    for (v, m) in variants.iter().zip(&medians).skip(1) {
        line += &format!(" | {} {m:.3} ms ({:.2}x)", v.name, medians[0] / m);
    }
    println!("{line}");
}

fn sparse(rng: &mut Rng, dense: &Tensor, density: f32) -> Weights {
    let mut data = dense.data.clone();
    for v in &mut data {
        if rng.uniform() >= density {
            *v = 0.0;
        }
    }
    Weights::Sparse(SparseWeights::from_dense(dense.shape.clone(), &data).expect("shape agrees"))
}

fn conv_set(rng: &mut Rng, rounds: usize) {
    for (c, hw) in [(64, 56), (128, 28), (256, 14), (512, 7)] {
        let w = rng.normal_tensor(vec![c, c, 3, 3], 0.05);
        let bias = rng.normal_tensor(vec![c], 0.1);
        // The baseline is the dense conv as an Engine runs it (packed weights); the
        // in-place dense kernel (`fast::run_graph`'s) is timed beside it.
        let variants = [
            Variant::packed("dense", conv3x3(Weights::Dense(w.clone()), bias.clone())),
            Variant::new(
                "dense in place",
                conv3x3(Weights::Dense(w.clone()), bias.clone()),
            ),
            Variant::new("sparse 30%", conv3x3(sparse(rng, &w, 0.3), bias.clone())),
            // The CSR kernel itself above the executor's crossover
            // (`select::CONV_CROSSOVER`), where the executor runs dense weights.
            Variant::csr("csr 40%", conv3x3(sparse(rng, &w, 0.4), bias.clone())),
            Variant::csr("csr 50%", conv3x3(sparse(rng, &w, 0.5), bias.clone())),
        ];
        for n in [1, 8] {
            let x = rng.normal_tensor(vec![n, c, hw, hw], 1.0);
            compare(&format!("conv{c}_{hw} n{n}"), &variants, &x, rounds);
        }
    }
}

/// Strided convs (ResNet-18's stem and downsampling, AlexNet's stem): dense against the
/// CSR kernel at 30%, which reads the input split into stride phases.
fn strided_set(rng: &mut Rng, rounds: usize) {
    // (name, Cin, Cout, kernel, stride, pad, input size)
    let shapes = [
        ("resnet conv1", 3, 64, 7, 2, 3, 224),
        ("resnet l2 3x3/2", 64, 128, 3, 2, 1, 56),
        ("resnet l2 1x1/2", 64, 128, 1, 2, 0, 56),
        ("resnet l4 3x3/2", 256, 512, 3, 2, 1, 14),
        ("alexnet conv1", 3, 64, 11, 4, 2, 224),
    ];
    for (name, cin, cout, k, stride, pad, hw) in shapes {
        let w = rng.normal_tensor(vec![cout, cin, k, k], 0.05);
        let bias = rng.normal_tensor(vec![cout], 0.1);
        let conv = |weight| {
            node(Op::Conv(Conv2d {
                kernel: [k, k],
                stride: [stride; 2],
                pads: [pad; 4],
                dilation: [1, 1],
                groups: 1,
                weight,
                bias: Some(bias.clone()),
            }))
        };
        let variants = [
            Variant::packed("dense", conv(Weights::Dense(w.clone()))),
            Variant::csr("csr 30%", conv(sparse(rng, &w, 0.3))),
            Variant::csr("csr 10%", conv(sparse(rng, &w, 0.1))),
        ];
        for n in [1, 8] {
            let x = rng.normal_tensor(vec![n, cin, hw, hw], 1.0);
            compare(&format!("{name} n{n}"), &variants, &x, rounds);
        }
    }
}

fn fc_set(rng: &mut Rng, rounds: usize, batches: &[usize]) {
    let (o, k) = (4096, 9216);
    let w = rng.normal_tensor(vec![o, k], 0.01);
    let bias = rng.normal_tensor(vec![o], 0.1);
    let fc = |weight| {
        node(Op::Linear(Linear {
            weight,
            bias: Some(bias.clone()),
        }))
    };
    // pow2 b = 4: codes uniform over the 9 valid ones; sketch m = 2: uniform bits.
    let codes: Vec<u8> = (0..o * k)
        .map(|_| match rng.next_u64() % 9 {
            0 => 0,
            r => (((r - 1) % 4 + 1) | if r > 4 { 8 } else { 0 }) as u8,
        })
        .collect();
    let pow2 = Pow2Weights::from_codes(vec![o, k], 4, -3, &codes).expect("valid codes");
    let bits = (0..o * 2 * k.div_ceil(32))
        .map(|_| rng.next_u64() as u32)
        .collect();
    let scales = (0..o * 2).map(|i| 0.01 / (1 + i % 2) as f32).collect();
    let sketch = SketchWeights::new(vec![o, k], 2, bits, scales).expect("valid sketch");
    let mut variants = vec![
        Variant::new("dense", fc(Weights::Dense(w.clone()))),
        Variant::new("pow2 b4", fc(Weights::Pow2(pow2))),
        Variant::new("sketch m2", fc(Weights::Sketch(sketch.clone()))),
        Variant::new("sparse 5%", fc(sparse(rng, &w, 0.05))),
        Variant::new("sparse 25%", fc(sparse(rng, &w, 0.25))),
    ];
    // Where `pow2 b4` and `sketch m2` run the AVX-512 kernels, the AVX2 ones beside
    // them, on their own copies of the weights (a shared copy would come from cache
    // right after the other).
    if FcKernel::Avx512.supported() {
        let copy = Pow2Weights::from_codes(vec![o, k], 4, -3, &codes).expect("valid codes");
        let node = fc(Weights::Pow2(copy));
        variants.push(Variant::fc("pow2 b4 avx2", node, FcKernel::Avx2));
        let copy = SketchWeights::new(
            vec![o, k],
            2,
            sketch.bits().to_vec(),
            sketch.scales().to_vec(),
        )
        .expect("valid sketch");
        variants.push(Variant::fc(
            "sketch m2 avx2",
            fc(Weights::Sketch(copy)),
            FcKernel::Avx2,
        ));
    }
    for &n in batches {
        let x = rng.normal_tensor(vec![n, k], 1.0);
        compare(&format!("fc6 n{n}"), &variants, &x, rounds);
    }
}

fn main() {
    cnnpack::backend::cpu::keep_freed_memory();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |set: &str| filter.is_empty() || filter.iter().any(|f| f == set);
    let rounds = std::env::var("INTERLEAVED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let fc_batches: Vec<usize> = match std::env::var("INTERLEAVED_FC_BATCHES") {
        Ok(list) => list
            .split(',')
            .map(|b| match b.trim().parse() {
                Ok(n) if n > 0 => n,
                _ => panic!("INTERLEAVED_FC_BATCHES: {b:?} is not a batch size"),
            })
            .collect(),
        Err(_) => vec![1, 8],
    };
    let mut rng = Rng::new(11);
    println!(
        "CPU, {} rayon threads, {rounds} rounds",
        rayon::current_num_threads()
    );
    if wants("fc") {
        fc_set(&mut rng, rounds, &fc_batches);
    }
    if wants("conv") {
        conv_set(&mut rng, rounds);
    }
    if wants("strided") {
        strided_set(&mut rng, rounds);
    }
}
