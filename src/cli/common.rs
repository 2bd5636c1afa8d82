//! Helpers shared by the commands: loading models, engines, progress bars,
//! preprocessing, labels, byte counts.

use crate::PreprocessArgs;
use anyhow::{Context, Result};
use cnnpack::data::Preprocess;
use cnnpack::engine::{DeviceKind, Engine, EngineOptions};
use cnnpack::graph::{layer_stats, Graph};
use cnnpack::tuning::Tuning;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// Loads `.onnx`, `.cnnpack` or `zoo:NAME` (seed 0).
pub(crate) fn load(model: &str) -> Result<Graph> {
    if let Some(name) = model.strip_prefix("zoo:") {
        return Ok(cnnpack::zoo::build(name, 0)?);
    }
    cnnpack::format::load_model(Path::new(model)).with_context(|| format!("loading {model}"))
}

/// The engine options of this process (`set_engine_options`).
static ENGINE_OPTIONS: std::sync::OnceLock<EngineOptions> = std::sync::OnceLock::new();

/// Builds this process's engine options, once, before any command runs: the
/// `CNNPACK_*` variables of `Tuning::ENV`, then the `--tune KEY=VALUE` flags, and
/// `CNNPACK_REQUIRE_GPU=1` (as CI sets it) makes a missing GPU adapter an error. The
/// command line is the only place that reads these from the environment.
pub(crate) fn set_engine_options(flags: &[String]) -> Result<()> {
    let mut tuning = Tuning::default();
    for (var, key, fixed) in Tuning::ENV {
        let Some(value) = std::env::var_os(var) else {
            continue;
        };
        let value = value.to_string_lossy();
        let value = if fixed.is_empty() { &*value } else { fixed };
        tuning
            .set(key, value)
            .with_context(|| format!("environment variable {var}"))?;
    }
    for flag in flags {
        let (key, value) = flag.split_once('=').with_context(|| {
            format!("--tune {flag}: expected KEY=VALUE (`--tune help` lists keys)")
        })?;
        tuning.set(key, value).context("--tune")?;
    }
    let options = EngineOptions {
        tuning,
        require_gpu: std::env::var("CNNPACK_REQUIRE_GPU").as_deref() == Ok("1"),
    };
    ENGINE_OPTIONS
        .set(options)
        .map_err(|_| anyhow::anyhow!("engine options are set once"))
}

/// The options every engine of this process is built with.
pub(crate) fn engine_options() -> EngineOptions {
    ENGINE_OPTIONS.get().cloned().unwrap_or_default()
}

/// An engine with this process's options (silent: see `engine`).
pub(crate) fn engine_quiet(graph: Graph, device: DeviceKind) -> Result<Engine> {
    Ok(Engine::with_options(graph, device, engine_options())?)
}

pub(crate) fn engine(graph: Graph, device: DeviceKind) -> Result<Engine> {
    let engine = engine_quiet(graph, device)?;
    if let Some(note) = engine.fallback_note() {
        eprintln!("note: {note}");
    }
    eprintln!("device: {}", engine.device_name());
    Ok(engine)
}

pub(crate) fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub(crate) fn join(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

pub(crate) fn preprocess(graph: &Graph, args: &PreprocessArgs) -> Result<Preprocess> {
    let mut p = Preprocess::from_metadata(&graph.metadata, &graph.input.item_shape)?;
    if args.resize.is_some() {
        p.resize = args.resize;
    }
    if args.crop.is_some() {
        p.crop = args.crop;
    }
    if let Some(m) = &args.mean {
        p.mean = m.clone();
    }
    if let Some(s) = &args.std {
        p.std = s.clone();
    }
    if let Some(s) = args.scale {
        p.scale = s;
    }
    if args.bgr {
        p.color_order = cnnpack::data::ColorOrder::Bgr;
    }
    Ok(p)
}

/// Class names from `--labels`, or the model's `labels` metadata (a file beside the
/// model or a comma-separated list).
pub(crate) fn labels(
    graph: &Graph,
    model: &str,
    file: Option<&Path>,
) -> Result<Option<Vec<String>>> {
    let from_file = |p: &Path| -> Result<Vec<String>> {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading labels {}", p.display()))?;
        Ok(text.lines().map(|l| l.trim().to_string()).collect())
    };
    if let Some(f) = file {
        return Ok(Some(from_file(f)?));
    }
    let Some(meta) = graph.metadata.get("labels") else {
        return Ok(None);
    };
    let beside = Path::new(model).parent().map(|d| d.join(meta));
    match beside {
        Some(p) if p.is_file() => Ok(Some(from_file(&p)?)),
        _ if meta.contains(',') => Ok(Some(
            meta.split(',').map(|s| s.trim().to_string()).collect(),
        )),
        _ => Ok(None),
    }
}

/// `graph` with every conv/fc weight stored dense (sparse layers expanded).
pub(crate) fn densify(graph: &Graph) -> Graph {
    let mut dense = graph.clone();
    for node in &mut dense.nodes {
        let w = match &mut node.op {
            cnnpack::graph::Op::Conv(c) => &mut c.weight,
            cnnpack::graph::Op::Linear(l) => &mut l.weight,
            _ => continue,
        };
        *w = cnnpack::weights::Weights::Dense(w.to_dense().into_owned());
    }
    dense
}

/// Bytes of a graph's weights and constants as stored.
pub(crate) fn weight_bytes(graph: &Graph) -> Result<usize> {
    Ok(layer_stats(graph)?.iter().map(|l| l.weight_bytes).sum())
}

/// Prints the model's bytes before and after compression (plus `note`) and saves it.
pub(crate) fn save_compressed(
    original: &Graph,
    compressed: &Graph,
    output: &Path,
    note: &str,
) -> Result<()> {
    let (before, after) = (weight_bytes(original)?, weight_bytes(compressed)?);
    println!(
        "model: {before} -> {after} bytes of weights and constants ({:.1}x smaller); {note}",
        before as f64 / after.max(1) as f64
    );
    cnnpack::format::save(compressed, output)
        .with_context(|| format!("writing {}", output.display()))?;
    println!("wrote {}", output.display());
    Ok(())
}
