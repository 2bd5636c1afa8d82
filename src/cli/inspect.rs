//! `cnnpack inspect`: the per-layer table (or JSON).

use super::*;
use anyhow::Result;
use cnnpack::graph::layer_stats;

pub(crate) fn inspect(model: &str, json: bool) -> Result<()> {
    let graph = load(model)?;
    let layers = layer_stats(&graph)?;
    let sum = |f: fn(&cnnpack::graph::LayerStats) -> u64| layers.iter().map(f).sum::<u64>();
    let (params, nonzeros) = (
        sum(|l| l.parameters as u64),
        sum(|l| l.nonzero_parameters as u64),
    );
    let (bytes, flops) = (sum(|l| l.weight_bytes as u64), sum(|l| l.flops));
    if json {
        let obj = serde_json::json!({
            "parameters": params, "nonzero_parameters": nonzeros, "weight_bytes": bytes, "flops": flops,
            "input": { "name": graph.input.name, "item_shape": graph.input.item_shape },
            "outputs": graph.outputs, "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    println!(
        "input {} [N, {}]",
        graph.input.name,
        join(&graph.input.item_shape)
    );
    println!(
        "{:<28} {:<18} {:<20} {:<8} {:>11} {:>11} {:>8} {:>12} {:>14}",
        "layer", "op", "output", "encoding", "params", "nonzero", "density", "bytes", "FLOPs"
    );
    for l in &layers {
        println!(
            "{:<28} {:<18} {:<20} {:<8} {:>11} {:>11} {:>8} {:>12} {:>14}",
            truncate(&l.name, 28),
            l.op,
            format!("[{}]", join(&l.output_shape)),
            l.encoding,
            l.parameters,
            l.nonzero_parameters,
            if l.parameters == 0 {
                "-".to_string()
            } else {
                format!(
                    "{:.2}%",
                    100.0 * l.nonzero_parameters as f64 / l.parameters as f64
                )
            },
            l.weight_bytes,
            l.flops
        );
    }
    println!(
        "total: {} nodes, {params} parameters ({nonzeros} nonzero, {:.2}%), {bytes} weight bytes ({:.2} MB), {:.3} GFLOPs per image",
        layers.len(), 100.0 * nonzeros as f64 / params.max(1) as f64, bytes as f64 / 1e6, flops as f64 / 1e9
    );
    Ok(())
}
