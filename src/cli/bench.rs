//! `cnnpack bench`: peaks, model and layer timings, baselines, sweeps, plots, JSON.

use super::*;
use anyhow::{bail, Context, Result};
use cnnpack::engine::{DeviceKind, Engine};
use cnnpack::graph::Graph;
use indicatif::ProgressBar;
use std::path::PathBuf;

/// Arguments of `cnnpack bench`.
pub(crate) struct BenchArgs {
    pub(crate) model: Option<String>,
    pub(crate) peak: bool,
    pub(crate) devices: Vec<DeviceKind>,
    pub(crate) batches: Vec<usize>,
    pub(crate) runs: usize,
    pub(crate) budget: f64,
    pub(crate) top: usize,
    pub(crate) baseline: Option<String>,
    pub(crate) sweep: Option<String>,
    pub(crate) values: Vec<f64>,
    pub(crate) json: Option<PathBuf>,
    pub(crate) svg: Option<PathBuf>,
}

pub(crate) fn bench(a: BenchArgs) -> Result<()> {
    use cnnpack::bench::compare::compare;
    use cnnpack::bench::model::{bench_model, ModelBench, Roof};
    use cnnpack::bench::plot::{roofline_svg, slug, sweep_svg};
    use cnnpack::bench::report::{BenchReport, Role, Run};
    use cnnpack::bench::sweep::{self, SweepKind, SweepPoint};
    if a.model.is_none() && !a.peak {
        bail!("give a MODEL to benchmark, or --peak to measure the device's peak rates");
    }
    if a.model.is_none() && (a.baseline.is_some() || a.sweep.is_some()) {
        bail!("--baseline and --sweep need a MODEL");
    }
    let sweep_kind: Option<SweepKind> = a.sweep.as_deref().map(str::parse).transpose()?;
    if let Some(dir) = &a.svg {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut report = BenchReport::new();
    if let Some(l) = report.load_average {
        println!(
            "load average {:.2} {:.2} {:.2}, {} cnnpack threads",
            l[0], l[1], l[2], report.threads
        );
    }
    // The roofline chart needs the roof: --svg measures the peaks too.
    let peak = a.peak || a.svg.is_some();
    let mut roofs = std::collections::HashMap::new();
    for &device in &a.devices {
        let gpu = device == DeviceKind::Gpu;
        if peak {
            let bar =
                ProgressBar::new_spinner().with_message(format!("measuring {device:?} peaks"));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            let roof = if gpu {
                let ctx = match cnnpack::backend::gpu::GpuContext::new() {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        bar.finish_and_clear();
                        eprintln!("note: skipping the GPU: {e}");
                        continue;
                    }
                };
                let p = cnnpack::bench::gpu_peak::gpu_peak(&ctx, false)?;
                bar.finish_and_clear();
                println!(
                    "peak {}: FMA {:.1} GFLOP/s, read {:.1} GB/s, copy {:.1} GB/s, xor+popcount {:.1} Gop/s{}",
                    p.adapter, p.fma_gflops, p.read_gbps, p.copy_gbps, p.popcount_gops, software_note(&p.adapter)
                );
                let roof = Roof {
                    gflops: p.fma_gflops,
                    gbps: p.read_gbps,
                };
                report.gpu_peak = Some(p);
                roof
            } else {
                let p = cnnpack::bench::peak::cpu_peak();
                bar.finish_and_clear();
                println!(
                    "peak cpu ({} threads, {}): FMA {:.1} GFLOP/s, read {:.1} GB/s, copy {:.1} GB/s",
                    p.threads, p.kernel, p.fma_gflops, p.read_gbps, p.copy_gbps
                );
                let roof = Roof {
                    gflops: p.fma_gflops,
                    gbps: p.read_gbps,
                };
                report.cpu_peak = Some(p);
                roof
            };
            roofs.insert(gpu, roof);
        }
    }
    if let Some(model) = a.model.as_deref() {
        let graph = load(model)?;
        let base_graph = a.baseline.as_deref().map(load).transpose()?;
        // Sweep variants are compressed once, from the folded dense model.
        let variants: Vec<(f64, Graph)> = match sweep_kind {
            Some(kind) => {
                let folded = cnnpack::graph::fold(graph.clone())?;
                let values = if a.values.is_empty() {
                    kind.default_values()
                } else {
                    a.values.clone()
                };
                values
                    .into_iter()
                    .map(|v| Ok((v, sweep::compress(&folded, kind, v)?)))
                    .collect::<Result<_>>()?
            }
            None => Vec::new(),
        };
        for &device in &a.devices {
            let engine = engine_quiet(graph.clone(), device)?;
            if let Some(note) = engine.fallback_note() {
                eprintln!("note: skipping --device gpu: {note}");
                continue;
            }
            let base_engine = base_graph
                .clone()
                .map(|g| engine_quiet(g, device))
                .transpose()?;
            let variant_engines = variants
                .iter()
                .map(|(v, g)| Ok((*v, engine_quiet(g.clone(), device)?)))
                .collect::<Result<Vec<_>>>()?;
            let roof = roofs.get(&engine.is_gpu()).copied();
            for &batch in &a.batches {
                let timed = |engine: &Engine, name: &str| -> Result<ModelBench> {
                    let bar = ProgressBar::new_spinner().with_message(format!(
                        "{name} on {} at batch {batch}",
                        engine.device_name()
                    ));
                    bar.enable_steady_tick(std::time::Duration::from_millis(200));
                    let r = bench_model(engine, batch, 2, a.runs, a.budget, roof)?;
                    bar.finish_and_clear();
                    Ok(r)
                };
                let r = timed(&engine, model)?;
                print_model_bench(model, &r, a.top);
                if let (Some(dir), Some(roof)) = (&a.svg, roof) {
                    let path = dir.join(format!(
                        "roofline-{}-{}-b{batch}.svg",
                        slug(model_stem(model)),
                        slug(&cnnpack::bench::plot::short_device(&r.device))
                    ));
                    let title = format!(
                        "{} on {}, batch {batch}: per-layer roofline",
                        model_stem(model),
                        r.device
                    );
                    roofline_svg(&path, &title, roof, &r.layers)?;
                    println!("  wrote {}", path.display());
                }
                if let (Some(base_engine), Some(base_name)) = (&base_engine, &a.baseline) {
                    let b = timed(base_engine, base_name)?;
                    print_model_bench(base_name, &b, 0);
                    let c = compare(&b, &r);
                    print_comparison(model, base_name, &c);
                    report.runs.push(Run {
                        model: base_name.clone(),
                        role: Role::Baseline,
                        sweep_value: None,
                        result: b,
                    });
                    report.comparisons.push(c);
                }
                for (value, variant) in &variant_engines {
                    let kind = sweep_kind.expect("variants exist only with --sweep");
                    let name = format!("{model}@{kind}={value}");
                    let v = timed(variant, &name)?;
                    let c = compare(&r, &v);
                    println!(
                        "  {kind} {value}: p50 {:.2} ms vs dense {:.2} ms: {:.2}x (conv {:.2}x, fc {:.2}x), bytes {:.1}% of dense",
                        c.p50_ms, c.base_p50_ms, c.speedup, c.conv_speedup, c.fc_speedup, 100.0 * c.bytes_ratio
                    );
                    report.runs.push(Run {
                        model: name,
                        role: Role::Sweep,
                        sweep_value: Some(*value),
                        result: v,
                    });
                    report.sweep.push(SweepPoint {
                        kind,
                        value: *value,
                        comparison: c,
                    });
                }
                report.runs.push(Run {
                    model: model.to_string(),
                    role: Role::Model,
                    sweep_value: None,
                    result: r,
                });
            }
        }
        if let (Some(dir), Some(kind)) = (&a.svg, sweep_kind) {
            if !report.sweep.is_empty() {
                let path = dir.join(format!("speedup-{}-{kind}.svg", slug(model_stem(model))));
                let title = format!(
                    "{}: {kind} vs dense, speed-up against {}",
                    model_stem(model),
                    kind.parameter()
                );
                sweep_svg(&path, &title, kind, &report.sweep)?;
                println!("wrote {}", path.display());
            }
        }
    }
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        cnnpack::format::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `../x/resnet18-m2.cnnpack` -> `resnet18-m2`, `zoo:alexnet` -> `alexnet`.
pub(crate) fn model_stem(model: &str) -> &str {
    let name = model.strip_prefix("zoo:").unwrap_or(model);
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    file.split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(file)
}

/// Whole-model line and the `top` slowest layers.
pub(crate) fn print_model_bench(model: &str, r: &cnnpack::bench::model::ModelBench, top: usize) {
    println!(
        "\n{model} on {}{} batch {}: p50 {:.2} ms, p90 {:.2} ms, {:.1} images/s ({} runs)",
        r.device,
        software_note(&r.device),
        r.batch,
        r.latency.p50_ms,
        r.latency.p90_ms,
        r.images_per_s,
        r.latency.runs
    );
    let mut slowest: Vec<_> = r.layers.iter().collect();
    slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    if top == 0 || slowest.is_empty() {
        return;
    }
    println!(
        "  {:<28} {:<12} {:<8} {:>9} {:>9} {:>8} {:>7} {:>8}  kernel",
        "layer", "op", "encoding", "ms", "GFLOP/s", "GB/s", "roof%", "bound"
    );
    for l in slowest.iter().take(top) {
        println!(
            "  {:<28} {:<12} {:<8} {:>9.3} {:>9.2} {:>8.2} {:>7} {:>8}  {}",
            truncate(&l.name, 28),
            l.op,
            l.encoding,
            l.ms,
            l.gflops,
            l.gbps,
            l.roof_fraction
                .map_or("-".into(), |f| format!("{:.1}", 100.0 * f)),
            l.bound.as_deref().unwrap_or("-"),
            l.kernel.as_deref().unwrap_or("-")
        );
    }
}

/// MODEL against its baseline: whole model, bytes, then every matched layer.
pub(crate) fn print_comparison(model: &str, base: &str, c: &cnnpack::bench::compare::Comparison) {
    println!(
        "\n{model} vs {base} on {} batch {}: p50 {:.2} ms vs {:.2} ms = {:.2}x; weight bytes {} vs {} = {:.2}% (conv {:.2}x, fc {:.2}x)",
        c.device,
        c.batch,
        c.p50_ms,
        c.base_p50_ms,
        c.speedup,
        c.weight_bytes,
        c.base_weight_bytes,
        100.0 * c.bytes_ratio,
        c.conv_speedup,
        c.fc_speedup
    );
    println!(
        "  {:<28} {:<8} {:<16} {:>10} {:>10} {:>8}",
        "layer", "op", "encoding", "base ms", "ms", "speedup"
    );
    for l in &c.layers {
        println!(
            "  {:<28} {:<8} {:<16} {:>10.3} {:>10.3} {:>7.2}x",
            truncate(&l.name, 28),
            l.op,
            format!("{}->{}", l.base_encoding, l.encoding),
            l.base_ms,
            l.ms,
            l.speedup
        );
    }
}

/// A reminder that a software adapter's times are CPU times.
pub(crate) fn software_note(adapter: &str) -> &'static str {
    if adapter.contains("llvmpipe")
        || adapter.contains("lavapipe")
        || adapter.contains("SwiftShader")
    {
        " [software rasterizer: CPU timing, not GPU speed]"
    } else {
        ""
    }
}
