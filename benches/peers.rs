//! cnnpack against tract on the same ONNX files, same batch, same thread count, in one
//! criterion run: SqueezeNet v1.0 (from the shared data folder) and the zoo ResNet-18 and
//! AlexNet exported to ONNX by `cnnpack::import::export` (seed 0, the same file tract reads).
//!
//! Rows (criterion ids `MODEL/ENGINE/bN`):
//! - `tract`: tract-onnx, optimized plan, its matmuls on a `THREADS`-thread pool;
//! - `cnnpack-cpu`: cnnpack's CPU fast path (rayon with `THREADS` threads);
//! - `cnnpack-gpu`: cnnpack's wgpu path on whatever adapter wgpu finds (lavapipe, Mesa's
//!   CPU Vulkan, on a machine without a GPU: a CPU timing then). Skipped without one.
//!
//! Environment (all optional):
//! - `CNNPACK_DATA`: the data folder (default `../shared/data`);
//! - `CNNPACK_PEERS_DIR`: where the exported ONNX files are written/read (default
//!   `target/peers`); `benches/peers.sh` points ONNX Runtime at the same files;
//! - `CNNPACK_PEERS_MODELS` (default `squeezenet,resnet18,alexnet`),
//!   `CNNPACK_PEERS_ENGINES` (default `tract,cnnpack-cpu,cnnpack-gpu`),
//!   `CNNPACK_PEERS_BATCH` (default `1,8`), `CNNPACK_PEERS_GPU_BATCH` (batch sizes of the
//!   `cnnpack-gpu` rows, default `CNNPACK_PEERS_BATCH`: on lavapipe a ResNet-18 batch of 8
//!   takes ~25 s, so a criterion row of 11 runs takes minutes),
//!   `CNNPACK_THREADS` (default: all cores),
//!   `CNNPACK_PEERS_SECONDS` (criterion measurement time per row, default 10; criterion
//!   still takes at least 10 samples, so a row lasts at least 10 runs).
//!
//! Run: `cargo bench --bench peers --features peers` (or `benches/peers.sh`, which adds ONNX Runtime and
//! prints the table).

use cnnpack::engine::{DeviceKind, Engine};
use cnnpack::graph::{Graph, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn data_dir() -> PathBuf {
    std::env::var("CNNPACK_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")))
}

fn peers_dir() -> PathBuf {
    std::env::var("CNNPACK_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/peers")))
}

/// The ONNX file every engine reads for `model`; zoo models are exported on first use.
fn onnx_file(model: &str) -> Option<PathBuf> {
    if model == "squeezenet" {
        let p = data_dir().join("imagenet/squeezenet1.0/squeezenet1.0.onnx");
        if p.exists() {
            return Some(p);
        }
        println!("skipped: squeezenet: {} is missing", p.display());
        return None;
    }
    let dir = peers_dir();
    let p = dir.join(format!("{model}.onnx"));
    if !p.exists() {
        let graph = cnnpack::zoo::build(model, 0).expect("the zoo builds its models");
        let bytes = cnnpack::import::export::export_onnx(&graph).expect("zoo models export");
        std::fs::create_dir_all(&dir).expect("the peers folder can be created");
        cnnpack::format::write_atomic(&p, &bytes).expect("the exported ONNX file can be written");
    }
    Some(p)
}

fn tract_model(path: &Path, shape: &[usize], threads: usize) -> TypedRunnableModel<TypedModel> {
    let options = PlanOptions {
        executor: Some(Executor::multithread(threads)),
        ..Default::default()
    };
    tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable_with_options(&options))
        .unwrap_or_else(|e| panic!("tract cannot load {}: {e:?}", path.display()))
}

fn peers(c: &mut Criterion) {
    let threads = std::env::var("CNNPACK_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // As the `cnnpack` binary does: keep freed activation buffers in the heap (this
    // applies to tract's allocations too, so both engines get the same allocator).
    cnnpack::backend::cpu::keep_freed_memory();
    // cnnpack's CPU path runs on rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let engines = env_list("CNNPACK_PEERS_ENGINES", "tract,cnnpack-cpu,cnnpack-gpu");
    let batches: Vec<usize> = env_list("CNNPACK_PEERS_BATCH", "1,8")
        .iter()
        .map(|b| b.parse().expect("CNNPACK_PEERS_BATCH holds batch sizes"))
        .collect();
    let gpu_batches: Vec<usize> = std::env::var("CNNPACK_PEERS_GPU_BATCH")
        .map(|s| {
            s.split(',')
                .filter(|b| !b.trim().is_empty())
                .map(|b| {
                    b.trim()
                        .parse()
                        .expect("CNNPACK_PEERS_GPU_BATCH holds batch sizes")
                })
                .collect()
        })
        .unwrap_or_else(|_| batches.clone());
    let seconds: u64 = std::env::var("CNNPACK_PEERS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("peers: {threads} threads, engines {engines:?}, batches {batches:?}");
    for model in env_list("CNNPACK_PEERS_MODELS", "squeezenet,resnet18,alexnet") {
        let Some(path) = onnx_file(&model) else {
            continue;
        };
        let graph: Graph = cnnpack::format::load_model(&path)
            .unwrap_or_else(|e| panic!("cnnpack cannot load {}: {e}", path.display()));
        let mut group = c.benchmark_group(&model);
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(seconds));
        for engine in &engines {
            let cnnpack_engine = match engine.as_str() {
                "tract" => None,
                "cnnpack-cpu" => Some(Engine::new(graph.clone(), DeviceKind::Cpu).expect("engine")),
                "cnnpack-gpu" => {
                    let e = Engine::new(graph.clone(), DeviceKind::Gpu).expect("engine");
                    if let Some(note) = e.fallback_note() {
                        println!("skipped: cnnpack-gpu: {note}");
                        continue;
                    }
                    println!("cnnpack-gpu adapter: {}", e.device_name());
                    Some(e)
                }
                other => panic!("unknown engine '{other}' in CNNPACK_PEERS_ENGINES"),
            };
            let engine_batches = if engine == "cnnpack-gpu" {
                &gpu_batches
            } else {
                &batches
            };
            for &batch in engine_batches {
                let mut shape = vec![batch];
                shape.extend(&graph.input.item_shape);
                let x = Rng::new(0).normal_tensor(shape.clone(), 1.0);
                let id = BenchmarkId::new(engine.as_str(), format!("b{batch}"));
                match &cnnpack_engine {
                    None => {
                        let plan = tract_model(&path, &shape, threads);
                        let input: TValue =
                            tract_onnx::prelude::Tensor::from_shape(&shape, &x.data)
                                .expect("the input has the fact's shape")
                                .into();
                        group.bench_function(id, |b| {
                            b.iter(|| plan.run(tvec![input.clone()]).expect("tract runs"))
                        });
                    }
                    Some(e) => {
                        group.bench_function(id, |b| b.iter(|| e.run(&x).expect("cnnpack runs")));
                    }
                }
            }
        }
        group.finish();
    }
}

criterion_group!(benches, peers);
criterion_main!(benches);
