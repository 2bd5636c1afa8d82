//! A compressed model against its dense origin, both timed on the same device, at the
//! same batch, in the same run: whole-model and per-layer speed-ups, and the bytes ratio.

use super::model::ModelBench;
use serde::{Deserialize, Serialize};

/// One layer of the compressed model next to the same layer of the baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerSpeedup {
    /// Step name in the compressed model (fused steps are `node+relu`).
    pub name: String,
    /// Op kind as `layer_stats` names it (`Conv`, `Linear`, `MaxPool`, ...).
    pub op: String,
    /// Weight encoding in the baseline (usually `dense`).
    pub base_encoding: String,
    /// Weight encoding in the compressed model.
    pub encoding: String,
    /// Baseline time of the layer, milliseconds.
    pub base_ms: f64,
    /// Compressed time of the layer, milliseconds.
    pub ms: f64,
    /// `base_ms / ms`: above 1 means the compressed layer is faster.
    pub speedup: f64,
}

/// A compressed model against its baseline on one device at one batch size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// Device name.
    pub device: String,
    /// Batch size.
    pub batch: usize,
    /// Baseline whole-model latency p50, milliseconds.
    pub base_p50_ms: f64,
    /// Compressed whole-model latency p50, milliseconds.
    pub p50_ms: f64,
    /// `base_p50_ms / p50_ms`.
    pub speedup: f64,
    /// Baseline weight + constant bytes.
    pub base_weight_bytes: u64,
    /// Compressed weight + constant bytes.
    pub weight_bytes: u64,
    /// `weight_bytes / base_weight_bytes` (below 1 means smaller).
    pub bytes_ratio: f64,
    /// Sum of the conv layers' times: baseline / compressed (1 when there are none).
    pub conv_speedup: f64,
    /// Sum of the fc (linear) layers' times: baseline / compressed (1 when there are none).
    pub fc_speedup: f64,
    /// Layers found in both models (matched by name, or by the node part of a fused
    /// step name), in the compressed model's order.
    pub layers: Vec<LayerSpeedup>,
}

/// Compares `model` with `base` (same device and batch expected; not checked, so that
/// callers can compare across anything they choose to).
pub fn compare(base: &ModelBench, model: &ModelBench) -> Comparison {
    let node = |name: &str| name.split('+').next().unwrap_or(name).to_string();
    let layers: Vec<LayerSpeedup> = model
        .layers
        .iter()
        .filter_map(|l| {
            let b = base
                .layers
                .iter()
                .find(|b| b.name == l.name)
                .or_else(|| base.layers.iter().find(|b| node(&b.name) == node(&l.name)))?;
            Some(LayerSpeedup {
                name: l.name.clone(),
                op: l.op.clone(),
                base_encoding: b.encoding.clone(),
                encoding: l.encoding.clone(),
                base_ms: b.ms,
                ms: l.ms,
                speedup: b.ms / l.ms.max(1e-12),
            })
        })
        .collect();
    let op_speedup = |op: &str| {
        let (b, m) = layers
            .iter()
            .filter(|l| l.op == op)
            .fold((0.0, 0.0), |(b, m), l| (b + l.base_ms, m + l.ms));
        if m > 0.0 {
            b / m
        } else {
            1.0
        }
    };
    Comparison {
        device: model.device.clone(),
        batch: model.batch,
        base_p50_ms: base.latency.p50_ms,
        p50_ms: model.latency.p50_ms,
        speedup: base.latency.p50_ms / model.latency.p50_ms.max(1e-12),
        base_weight_bytes: base.weight_bytes,
        weight_bytes: model.weight_bytes,
        bytes_ratio: model.weight_bytes as f64 / base.weight_bytes.max(1) as f64,
        conv_speedup: op_speedup("Conv"),
        fc_speedup: op_speedup("Linear"),
        layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::model::LayerTiming;
    use crate::bench::Timing;

    fn bench(p50: f64, bytes: u64, layers: &[(&str, &str, f64)]) -> ModelBench {
        ModelBench {
            device: "cpu".into(),
            batch: 1,
            weight_bytes: bytes,
            latency: Timing {
                p50_ms: p50,
                p90_ms: p50,
                min_ms: p50,
                runs: 3,
            },
            images_per_s: 1e3 / p50,
            layers: layers
                .iter()
                .map(|&(name, op, ms)| LayerTiming {
                    name: name.into(),
                    op: op.into(),
                    encoding: "dense".into(),
                    kernel: None,
                    ms,
                    flops: 1,
                    bytes: 1,
                    gflops: 0.0,
                    gbps: 0.0,
                    roof_fraction: None,
                    bound: None,
                })
                .collect(),
        }
    }

    #[test]
    fn speedups_and_matching() {
        let base = bench(
            10.0,
            1000,
            &[("c1+relu", "Conv", 4.0), ("fc", "Linear", 6.0)],
        );
        // The compressed model's conv is not fused: matched by its node name.
        let comp = bench(
            5.0,
            100,
            &[
                ("c1", "Conv", 2.0),
                ("fc", "Linear", 1.5),
                ("x", "Conv", 9.0),
            ],
        );
        let c = compare(&base, &comp);
        assert_eq!(c.speedup, 2.0);
        assert_eq!(c.bytes_ratio, 0.1);
        assert_eq!(c.layers.len(), 2, "x has no baseline layer");
        assert_eq!(c.layers[0].speedup, 2.0);
        assert_eq!(c.layers[1].speedup, 4.0);
        assert_eq!(c.conv_speedup, 2.0);
        assert_eq!(c.fc_speedup, 4.0);
    }
}
