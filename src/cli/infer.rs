//! `cnnpack classify`, `eval` and `run`: inference on images, datasets and tensors.

use super::*;
use crate::PreprocessArgs;
use anyhow::{bail, Context, Result};
use cnnpack::data::Dataset;
use cnnpack::engine::DeviceKind;
use cnnpack::graph::Tensor;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

pub(crate) fn classify(
    model: &str,
    images: &[PathBuf],
    device: DeviceKind,
    top: usize,
    labels_file: Option<&Path>,
    pre: &PreprocessArgs,
) -> Result<()> {
    let graph = load(model)?;
    let pre = preprocess(&graph, pre)?;
    let names = labels(&graph, model, labels_file)?;
    let item = graph.input.item_shape.clone();
    let engine = engine(graph, device)?;
    let item_len: usize = item.iter().product();
    let mut shape = vec![images.len()];
    shape.extend(&item);
    let mut batch = Tensor::zeros(shape);
    for (i, path) in images.iter().enumerate() {
        let img = cnnpack::data::load_image(path)?;
        pre.apply(&img, &mut batch.data[i * item_len..(i + 1) * item_len])
            .with_context(|| format!("preprocessing {}", path.display()))?;
    }
    let out = engine.run(&batch)?.swap_remove(0);
    let classes = *out.shape.last().unwrap_or(&1);
    for (path, row) in images.iter().zip(out.data.chunks(classes)) {
        println!("{}", path.display());
        for c in cnnpack::eval::top_k(row, top) {
            let name = names
                .as_ref()
                .and_then(|n| n.get(c))
                .map_or("", |s| s.as_str());
            println!("  {c:>5}  {:>10.6}  {name}", row[c]);
        }
    }
    Ok(())
}

pub(crate) fn eval(
    model: &str,
    data: &Path,
    device: DeviceKind,
    batch: usize,
    limit: Option<usize>,
    json: bool,
    pre: &PreprocessArgs,
) -> Result<()> {
    let graph = load(model)?;
    let pre = preprocess(&graph, pre)?;
    let dataset = Dataset::open(data, &pre, &graph.input.item_shape)?;
    let engine = engine(graph, device)?;
    let total = limit.map_or(dataset.len(), |l| l.min(dataset.len()));
    let bar = if json {
        ProgressBar::hidden()
    } else {
        progress(total, "eval")
    };
    let result = cnnpack::eval::evaluate(&engine, &dataset, batch, limit, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "top-1 {:.2}%  top-5 {:.2}%  count {}  {:.1} images/s  device {}",
            result.top1, result.top5, result.count, result.images_per_s, result.device
        );
    }
    Ok(())
}

pub(crate) fn run_npy(model: &str, input: &Path, output: &Path, device: DeviceKind) -> Result<()> {
    let graph = load(model)?;
    let mut x = cnnpack::format::npy::read_npy(input)
        .with_context(|| format!("reading {}", input.display()))?;
    // A model imported without a batch axis takes its input as it is: the IR's leading
    // 1 is added here and stripped from the output.
    let unbatched = graph.metadata.contains_key(cnnpack::import::UNBATCHED);
    if unbatched && x.shape == graph.input.item_shape {
        x.shape.insert(0, 1);
    }
    let mut expected = vec!["N".to_string()];
    expected.extend(graph.input.item_shape.iter().map(|d| d.to_string()));
    if x.shape.len() != graph.input.item_shape.len() + 1
        || x.shape[1..] != graph.input.item_shape[..]
        || x.shape[0] == 0
    {
        bail!(
            "{} has shape {:?}; the model's input '{}' takes [{}]",
            input.display(),
            x.shape,
            graph.input.name,
            expected.join(", ")
        );
    }
    let engine = engine(graph, device)?;
    let mut y = engine.run(&x)?.swap_remove(0);
    if unbatched && y.shape.first() == Some(&1) {
        y.shape.remove(0);
    }
    cnnpack::format::npy::write_npy(output, &y)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!("wrote {} {:?}", output.display(), y.shape);
    Ok(())
}
