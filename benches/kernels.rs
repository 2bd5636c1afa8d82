//! Compressed-weight kernels against dense on the same device: AlexNet's fc6 shape
//! (9216 -> 4096) and ResNet-18's 3x3 stride-1 conv shapes (64, 128, 256, 512 channels at
//! 56, 28, 14, 7, padding 1), batch 1 and 8, for dense, sketch m = 1..4, pow2 b = 2..5
//! and sparse at densities 1, 5, 10, 30, 50%, on the fast CPU kernels and on the GPU
//! (wgpu; lavapipe here, i.e. also the CPU).
//!
//! `cargo bench --bench kernels` runs the default set (about 10 minutes on a 2-core
//! machine). Filters as usual: `cargo bench --bench kernels -- cpu/fc6`.
//! `KERNELS_FULL=1` adds the GPU rows left out by default (GPU conv at batch 8 and the
//! intermediate m, b and densities on the GPU), which take much longer on lavapipe.
//! `KERNELS_NO_GPU=1` skips the GPU rows.
//!
//! Weights are random (a fixed seed): sketch bits uniform, pow2 codes uniform over the
//! valid codes (zero included), sparse entries kept with the given probability. The
//! kernels' speed does not depend on the values, only on the encoding and density.
//! The CPU sketch and pow2 convs are timed as a prepared model runs them: on weights
//! decoded to dense once, before timing (`as_prepared`, as `fast::Prepared` does).

use cnnpack::backend::cpu::fast;
use cnnpack::backend::gpu::{GpuContext, GpuModel};
use cnnpack::graph::{Conv2d, Graph, GraphBuilder, Linear, Node, Op, Rng, Tensor};
use cnnpack::weights::{Pow2Weights, SketchWeights, SparseWeights, Weights};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// One layer shape: fc `[out, in]` or a 3x3 conv `c -> c` at `hw x hw`.
#[derive(Clone, Copy)]
enum Layer {
    Fc { out: usize, k: usize },
    Conv { c: usize, hw: usize },
}

impl Layer {
    fn name(self) -> String {
        match self {
            Layer::Fc { .. } => "fc6".into(),
            Layer::Conv { c, hw } => format!("conv{c}_{hw}"),
        }
    }
    fn weight_shape(self) -> Vec<usize> {
        match self {
            Layer::Fc { out, k } => vec![out, k],
            Layer::Conv { c, .. } => vec![c, c, 3, 3],
        }
    }
    fn input(self, batch: usize, rng: &mut Rng) -> Tensor {
        match self {
            Layer::Fc { k, .. } => rng.normal_tensor(vec![batch, k], 1.0),
            Layer::Conv { c, hw } => rng.normal_tensor(vec![batch, c, hw, hw], 1.0),
        }
    }
    fn op(self, weight: Weights, rng: &mut Rng) -> Op {
        let rows = weight.rows();
        let bias = Some(rng.normal_tensor(vec![rows], 0.1));
        match self {
            Layer::Fc { .. } => Op::Linear(Linear { weight, bias }),
            Layer::Conv { .. } => Op::Conv(Conv2d {
                kernel: [3, 3],
                stride: [1, 1],
                pads: [1, 1, 1, 1],
                dilation: [1, 1],
                groups: 1,
                weight,
                bias,
            }),
        }
    }
    fn item(self) -> Vec<usize> {
        match self {
            Layer::Fc { k, .. } => vec![k],
            Layer::Conv { c, hw } => vec![c, hw, hw],
        }
    }
}

/// A weight encoding to bench.
#[derive(Clone, Copy)]
enum Method {
    Dense,
    Sketch(usize),
    Pow2(u32),
    /// Density in percent.
    Sparse(u32),
}

impl Method {
    fn name(self) -> String {
        match self {
            Method::Dense => "dense".into(),
            Method::Sketch(m) => format!("sketch_m{m}"),
            Method::Pow2(b) => format!("pow2_b{b}"),
            Method::Sparse(d) => format!("sparse_{d}pct"),
        }
    }

    fn weights(self, shape: Vec<usize>, rng: &mut Rng) -> Weights {
        let rows = shape[0];
        let k: usize = shape[1..].iter().product();
        match self {
            Method::Dense => Weights::Dense(rng.normal_tensor(shape, 0.05)),
            Method::Sketch(m) => {
                let words = rows * m * k.div_ceil(32);
                let bits = (0..words).map(|_| rng.next_u64() as u32).collect();
                let scales = (0..rows * m)
                    .map(|i| 0.05 / (1 << (i % m)) as f32)
                    .collect();
                Weights::Sketch(
                    SketchWeights::new(shape, m, bits, scales).expect("random sketch is valid"),
                )
            }
            Method::Pow2(b) => {
                let mags = 1u64 << (b - 2);
                let codes: Vec<u8> = (0..rows * k)
                    .map(|_| {
                        let r = rng.next_u64() % (2 * mags + 1);
                        if r == 0 {
                            0
                        } else {
                            let e = (r - 1) % mags + 1;
                            let sign = if r > mags { 1u64 << (b - 1) } else { 0 };
                            (sign | e) as u8
                        }
                    })
                    .collect();
                Weights::Pow2(Pow2Weights::from_codes(shape, b, -3, &codes).expect("valid codes"))
            }
            Method::Sparse(d) => {
                let mut t = rng.normal_tensor(shape.clone(), 0.05);
                let keep = d as f32 / 100.0;
                for v in &mut t.data {
                    if rng.uniform() >= keep {
                        *v = 0.0;
                    }
                }
                Weights::Sparse(SparseWeights::from_dense(shape, &t.data).expect("shape agrees"))
            }
        }
    }
}

const LAYERS: [Layer; 5] = [
    Layer::Fc { out: 4096, k: 9216 },
    Layer::Conv { c: 64, hw: 56 },
    Layer::Conv { c: 128, hw: 28 },
    Layer::Conv { c: 256, hw: 14 },
    Layer::Conv { c: 512, hw: 7 },
];

fn all_methods() -> Vec<Method> {
    let mut v = vec![Method::Dense];
    v.extend((1..=4).map(Method::Sketch));
    v.extend((2..=5).map(Method::Pow2));
    v.extend([1, 5, 10, 30, 50].map(Method::Sparse));
    v
}

/// The GPU subset run by default (lavapipe is slow): the targets' rows and the ends
/// of each range.
fn gpu_methods(full: bool) -> Vec<Method> {
    if full {
        return all_methods();
    }
    vec![
        Method::Dense,
        Method::Sketch(1),
        Method::Sketch(2),
        Method::Sketch(4),
        Method::Pow2(2),
        Method::Pow2(4),
        Method::Sparse(5),
        Method::Sparse(30),
        Method::Sparse(50),
    ]
}

fn one_node_graph(layer: Layer, op: Op) -> Graph {
    let mut b = GraphBuilder::new("x", &layer.item(), 1);
    let y = b.push("layer", op, &["x"]);
    b.finish(&[&y]).expect("bench graph is valid")
}

fn configure<M: criterion::measurement::Measurement>(g: &mut criterion::BenchmarkGroup<'_, M>) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
}

fn bench_cpu(c: &mut Criterion) {
    let mut rng = Rng::new(7);
    for layer in LAYERS {
        for batch in [1, 8] {
            let x = layer.input(batch, &mut rng);
            let mut g = c.benchmark_group(format!("cpu/{}/n{batch}", layer.name()));
            configure(&mut g);
            for method in all_methods() {
                let op = layer.op(method.weights(layer.weight_shape(), &mut rng), &mut rng);
                let node = Node {
                    name: "layer".into(),
                    op: as_prepared(op),
                    inputs: vec!["x".into()],
                    output: "y".into(),
                };
                g.bench_with_input(BenchmarkId::from_parameter(method.name()), &x, |b, x| {
                    b.iter(|| black_box(fast::run_node(&node, &[x]).expect("kernel runs")))
                });
            }
            g.finish();
        }
    }
}

/// `op` as a prepared CPU model runs it (`fast::Prepared`): a compressed conv that does
/// not run the CSR kernel decoded to dense once, here, outside the timed loop.
fn as_prepared(op: Op) -> Op {
    match op {
        Op::Conv(c) => {
            let csr = cnnpack::backend::cpu::select::runs_csr(&c);
            if csr || matches!(c.weight, Weights::Dense(_)) {
                return Op::Conv(c);
            }
            Op::Conv(Conv2d {
                weight: Weights::Dense(c.weight.to_dense().into_owned()),
                ..c
            })
        }
        other => other,
    }
}

fn bench_gpu(c: &mut Criterion) {
    if std::env::var("KERNELS_NO_GPU").as_deref() == Ok("1") {
        return;
    }
    let ctx = match GpuContext::new() {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("skipped GPU benches: {e}");
            return;
        }
    };
    eprintln!("GPU adapter: {}", ctx.adapter_name());
    let full = std::env::var("KERNELS_FULL").as_deref() == Ok("1");
    let mut rng = Rng::new(8);
    for layer in LAYERS {
        for batch in [1, 8] {
            if !full && batch == 8 && matches!(layer, Layer::Conv { .. }) {
                continue;
            }
            let x = layer.input(batch, &mut rng);
            let mut g = c.benchmark_group(format!("gpu/{}/n{batch}", layer.name()));
            configure(&mut g);
            for method in gpu_methods(full) {
                let op = layer.op(method.weights(layer.weight_shape(), &mut rng), &mut rng);
                let graph = one_node_graph(layer, op);
                let model = match GpuModel::new(ctx.clone(), &graph, batch) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("{} {} n{batch}: {e}", layer.name(), method.name());
                        continue;
                    }
                };
                g.bench_with_input(BenchmarkId::from_parameter(method.name()), &x, |b, x| {
                    b.iter(|| black_box(model.run(x).expect("gpu runs")))
                });
            }
            g.finish();
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_cpu(&mut c);
    bench_gpu(&mut c);
    c.final_summary();
}
