//! Whole-model and per-layer benchmarks on an `Engine`, with a roofline verdict.

use super::{time_runs, Timing};
use crate::backend::cpu::fast;
use crate::engine::{Engine, EngineError};
use crate::graph::{layer_stats, Rng, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The roof a layer is measured against.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Roof {
    /// Peak f32 rate, GFLOP/s.
    pub gflops: f64,
    /// Peak bandwidth, GB/s.
    pub gbps: f64,
}

/// One layer's time and rates (batch-scaled).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerTiming {
    /// Node (or fused step) name.
    pub name: String,
    /// Op kind.
    pub op: String,
    /// Weight encoding.
    pub encoding: String,
    /// The kernels the layer ran: GPU shader entry points (`conv_gemm+conv_gemm_reduce`)
    /// or the CPU kernel's function (`conv2d_packed`, `pow2_linear`, ...).
    pub kernel: Option<String>,
    /// Milliseconds (GPU timestamps or CPU wall time).
    pub ms: f64,
    /// Dense-equivalent FLOPs for the batch.
    pub flops: u64,
    /// Bytes moved at least once: weights + input and output activations.
    pub bytes: u64,
    /// Achieved GFLOP/s.
    pub gflops: f64,
    /// Achieved GB/s.
    pub gbps: f64,
    /// Fraction of the roof that bounds this layer (compute or memory), if a roof was given.
    pub roof_fraction: Option<f64>,
    /// `compute` or `memory`: which roof bounds the layer at its arithmetic intensity.
    pub bound: Option<String>,
}

/// A model on one device at one batch size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelBench {
    /// Device name.
    pub device: String,
    /// Batch size.
    pub batch: usize,
    /// Bytes of all weights and constants as stored (compressed encodings at their
    /// compressed size), from `layer_stats`.
    pub weight_bytes: u64,
    /// Whole-model latency per batch (wall clock, including upload and readback).
    pub latency: Timing,
    /// Images per second at p50.
    pub images_per_s: f64,
    /// Per-layer times (GPU: timestamp queries when the adapter has them).
    pub layers: Vec<LayerTiming>,
}

/// Most profiled runs whose per-layer medians `bench_model` reports: one run's layer
/// times on a GPU vary with its clocks (a single run was the report before).
const PROFILED_RUNS: usize = 5;

/// Per-step medians of several profiled runs (each the same steps in the same order;
/// a step missing from a run is left out of its median).
fn median_profile(profiles: Vec<Vec<(String, f64)>>) -> Vec<(String, f64)> {
    let Some(first) = profiles.first() else {
        return vec![];
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut ms: Vec<f64> = profiles
                .iter()
                .filter_map(|p| p.get(i).filter(|(n, _)| n == name).map(|&(_, t)| t))
                .collect();
            ms.sort_by(f64::total_cmp);
            (name.clone(), ms[ms.len() / 2])
        })
        .collect()
}

/// Benchmarks `engine` at `batch` on a seeded random input: `warmup` untimed runs,
/// then up to `runs` timed ones within about `budget_s` seconds, then up to
/// `PROFILED_RUNS` profiled ones (within about half the budget), whose per-layer
/// medians are the layer times.
pub fn bench_model(
    engine: &Engine,
    batch: usize,
    warmup: usize,
    runs: usize,
    budget_s: f64,
    roof: Option<Roof>,
) -> Result<ModelBench, EngineError> {
    let graph = engine.graph();
    let mut shape = vec![batch];
    shape.extend(&graph.input.item_shape);
    let x = Rng::new(0).normal_tensor(shape, 1.0);
    let latency = time_runs(warmup, runs, budget_s, || engine.run(&x).map(|_| ()))?;
    // Kernel names by step name (GPU) or node name (CPU; fused steps are `node+relu`).
    let mut kernels: HashMap<String, String> = HashMap::new();
    // One profiled run takes about a timed run's time.
    let profiled_runs =
        ((budget_s / 2.0 / (latency.p50_ms / 1e3).max(1e-6)) as usize).clamp(1, PROFILED_RUNS);
    // A batch over the adapter's buffer limits runs in equal pieces (the last one
    // padded): one piece is profiled and its layer times count once per piece.
    let piece = engine.gpu_piece(batch)?;
    let pieces = batch.div_ceil(piece);
    let gpu = engine.gpu_model(piece)?;
    let first_piece = (piece < batch).then(|| {
        let mut shape = x.shape.clone();
        shape[0] = piece;
        let len = shape.iter().product();
        Tensor {
            shape,
            data: x.data[..len].to_vec(),
        }
    });
    let x_piece = first_piece.as_ref().unwrap_or(&x);
    let prepared = engine.cpu_prepared();
    match &gpu {
        Some(model) => kernels.extend(model.step_kernels()),
        None => {
            // A Linear after a Reshape sees N * H * W rows (ConvNeXt's MatMuls), not N.
            let shapes = graph.infer_shapes(batch).ok();
            for node in &graph.nodes {
                let rows = shapes
                    .as_ref()
                    .and_then(|s| s.get(node.inputs.first()?))
                    .and_then(|s| s.first().copied())
                    .unwrap_or(batch);
                if let Some(k) = fast::kernel_name(prepared.map(|p| p.as_ref()), node, rows) {
                    kernels.insert(node.name.clone(), k.to_string());
                }
            }
        }
    }
    let mut profiles = Vec::with_capacity(profiled_runs);
    for _ in 0..profiled_runs {
        profiles.push(match (&gpu, prepared) {
            (Some(model), _) => {
                let mut times = model.run_profiled(x_piece)?.1.unwrap_or_default();
                times.iter_mut().for_each(|(_, ms)| *ms *= pieces as f64);
                times
            }
            (None, Some(prepared)) => prepared.run_profiled(&x)?.1,
            (None, None) => fast::run_graph_profiled(graph, &x)?.1,
        });
    }
    let times = median_profile(profiles);
    let all_stats = layer_stats(graph)?;
    let weight_bytes = all_stats.iter().map(|s| s.weight_bytes as u64).sum();
    let stats: HashMap<String, _> = all_stats.into_iter().map(|s| (s.name.clone(), s)).collect();
    let layers = times
        .into_iter()
        .filter_map(|(name, ms)| {
            // Fused steps are named `node+relu`: the node carries the layer's numbers.
            let s = stats.get(name.split('+').next().unwrap_or(&name))?;
            let act = |shape: &Vec<usize>| shape.iter().product::<usize>() as u64 * 4;
            let bytes = s.weight_bytes as u64
                + batch as u64
                    * (s.input_shapes.iter().map(act).sum::<u64>() + act(&s.output_shape));
            let flops = s.flops * batch as u64;
            let secs = (ms / 1e3).max(1e-12);
            let (gflops, gbps) = (flops as f64 / secs / 1e9, bytes as f64 / secs / 1e9);
            let (roof_fraction, bound) = match roof {
                Some(r) if flops as f64 / bytes as f64 >= r.gflops / r.gbps => {
                    (Some(gflops / r.gflops), Some("compute".to_string()))
                }
                Some(r) => (Some(gbps / r.gbps), Some("memory".to_string())),
                None => (None, None),
            };
            Some(LayerTiming {
                kernel: kernels
                    .get(&name)
                    .or_else(|| kernels.get(name.split('+').next().unwrap_or(&name)))
                    .cloned(),
                name,
                op: s.op.to_string(),
                encoding: s.encoding.clone(),
                ms,
                flops,
                bytes,
                gflops,
                gbps,
                roof_fraction,
                bound,
            })
        })
        .collect();
    Ok(ModelBench {
        device: engine.device_name(),
        batch,
        weight_bytes,
        images_per_s: batch as f64 / (latency.p50_ms / 1e3),
        latency,
        layers,
    })
}
