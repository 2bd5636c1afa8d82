//! `cnnpack train` / `finetune` and the option parsers shared with the compressors.

use super::*;
use crate::TrainArgs;
use anyhow::{bail, Context, Result};
use cnnpack::data::{Dataset, Preprocess};
use cnnpack::engine::DeviceKind;
use cnnpack::graph::Graph;
use std::time::Instant;

/// `--schedule`: inv (Caffe: gamma 1e-4, power 0.75), cosine over `total` iterations,
/// fixed, or step:GAMMA:ITERS.
pub(crate) fn parse_schedule(spec: &str, total: usize) -> Result<cnnpack::train::Schedule> {
    use cnnpack::train::Schedule;
    let parts: Vec<&str> = spec.split(':').collect();
    Ok(match parts.as_slice() {
        ["inv"] => Schedule::Inv {
            gamma: 1e-4,
            power: 0.75,
        },
        ["cosine"] => Schedule::Cosine {
            total: total.max(1),
        },
        ["fixed"] => Schedule::Fixed,
        ["step", g, n] => Schedule::Step {
            gamma: g
                .parse()
                .with_context(|| format!("--schedule {spec}: bad GAMMA"))?,
            step_size: n
                .parse()
                .with_context(|| format!("--schedule {spec}: bad ITERS"))?,
        },
        _ => bail!("unknown --schedule '{spec}': use inv, cosine, fixed or step:GAMMA:ITERS"),
    })
}

/// `--distill T:ALPHA` with `teacher` (the uncompressed model) as the teacher.
pub(crate) fn parse_distill(
    spec: Option<&str>,
    teacher: &Graph,
) -> Result<Option<cnnpack::train::Distill>> {
    let Some(spec) = spec else { return Ok(None) };
    let (t, a) = spec
        .split_once(':')
        .with_context(|| format!("--distill '{spec}': use T:ALPHA, e.g. 4:0.9"))?;
    let temperature: f32 = t
        .parse()
        .with_context(|| format!("--distill '{spec}': bad T"))?;
    let alpha: f32 = a
        .parse()
        .with_context(|| format!("--distill '{spec}': bad ALPHA"))?;
    if !(temperature > 0.0 && (0.0..=1.0).contains(&alpha)) {
        bail!("--distill '{spec}': need T > 0 and ALPHA in [0, 1]");
    }
    Ok(Some(cnnpack::train::Distill {
        teacher: std::sync::Arc::new(teacher.clone()),
        temperature,
        alpha,
    }))
}

/// `--augment SPEC` (see `cnnpack::data::Augment`).
pub(crate) fn parse_augment(spec: Option<&str>) -> Result<Option<cnnpack::data::Augment>> {
    spec.map(|s| s.parse().map_err(anyhow::Error::from))
        .transpose()
}

pub(crate) fn train(args: &TrainArgs, default_epochs: usize, default_lr: f32) -> Result<()> {
    use cnnpack::train::{Masks, TrainDevice, TrainOptions};
    let device = match args.device {
        DeviceKind::Cpu => TrainDevice::Cpu,
        DeviceKind::Gpu => {
            let ctx = cnnpack::backend::gpu::GpuContext::new()
                .context("--device gpu: opening the GPU")?;
            eprintln!(
                "training on {}{}",
                ctx.adapter_name(),
                if ctx.is_software() {
                    " (a CPU implementation: its timings are CPU timings)"
                } else {
                    ""
                }
            );
            TrainDevice::Gpu(std::sync::Arc::new(ctx))
        }
        DeviceKind::Reference => bail!("--device reference cannot train: use cpu or gpu"),
    };
    if let Some(iters) = args.bench_iters {
        let graph = load(&args.model)?;
        let opts = TrainOptions {
            lr: args.lr.unwrap_or(default_lr),
            momentum: args.momentum,
            weight_decay: args.weight_decay,
            seed: args.seed,
            device,
            ..TrainOptions::default()
        };
        let t = cnnpack::train::throughput(&graph, &opts, args.batch, iters)?;
        println!(
            "train throughput {} {:?} batch {} input {:?}: {:.2} images/s ({} steps in {:.2} s)",
            args.model,
            args.device,
            t.batch,
            graph.input.item_shape,
            t.images_per_second,
            t.iters,
            t.seconds
        );
        return Ok(());
    }
    let (Some(data), Some(output)) = (args.data.as_ref(), args.output.as_ref()) else {
        bail!("--data and --output are required to train");
    };
    let mut graph = load(&args.model)?;
    let pre = Preprocess::from_metadata(&graph.metadata, &graph.input.item_shape)?;
    let train_set = Dataset::open_split(data, "train", &pre, &graph.input.item_shape)
        .with_context(|| format!("opening the training split in {}", data.display()))?;
    let test_set = Dataset::open(data, &pre, &graph.input.item_shape).ok();
    let epochs = args.epochs.unwrap_or(default_epochs);
    let iters_per_epoch = train_set.len().div_ceil(args.batch.max(1));
    let schedule = parse_schedule(&args.schedule, epochs * iters_per_epoch)?;
    let opts = TrainOptions {
        epochs,
        batch: args.batch,
        lr: args.lr.unwrap_or(default_lr),
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        schedule,
        seed: args.seed,
        log: true, // one line per epoch: losses, accuracies, seconds
        device,
        augment: parse_augment(args.augment.as_deref())?,
        ..TrainOptions::default()
    };
    println!(
        "training {} on {} images ({iters_per_epoch} updates per epoch at batch {}), {epochs} epoch(s), lr {}, schedule {}",
        args.model, train_set.len(), args.batch, opts.lr, args.schedule
    );
    let mut masks = Masks::default();
    let start = Instant::now();
    let bar = progress(epochs * iters_per_epoch, "train");
    let mut saved: Result<()> = Ok(());
    cnnpack::train::train(
        &mut graph,
        &train_set,
        test_set.as_ref(),
        &opts,
        &mut masks,
        |info| {
            bar.set_position(info.iter as u64 + 1);
            if info.iter_in_epoch % 20 == 0 {
                bar.set_message(format!(
                    "epoch {}/{epochs} loss {:.4}",
                    info.epoch + 1,
                    info.loss
                ));
            }
            // Checkpoint at the end of every epoch (atomic: a killed run keeps the last one).
            if info.iter_in_epoch + 1 == info.iters_per_epoch && saved.is_ok() {
                saved = cnnpack::format::save(info.graph, output)
                    .with_context(|| format!("writing checkpoint {}", output.display()));
            }
        },
    )?;
    bar.finish_and_clear();
    saved?;
    println!(
        "wrote {} ({:.1} s)",
        output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
