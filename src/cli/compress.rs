//! `cnnpack compress sketch|inq|sparse|dns`.

use super::*;
use crate::PreprocessArgs;
use anyhow::{bail, Context, Result};
use cnnpack::data::{Dataset, Preprocess};
use cnnpack::graph::{layer_stats, Graph};
use std::path::Path;
use std::time::Instant;

pub(crate) fn compress_sketch(
    model: &str,
    output: &Path,
    bases: usize,
    refined: bool,
    dense: &[String],
    layer_bases: &[String],
) -> Result<()> {
    use cnnpack::compress::sketch::{sketch_graph, SketchOptions};
    // Fold first: BatchNorm can only be folded into dense weights.
    let graph = cnnpack::graph::fold(load(model)?)?;
    let layers: Vec<&str> = graph
        .nodes
        .iter()
        .filter(|n| n.op.weights().is_some())
        .map(|n| n.name.as_str())
        .collect();
    let dense_layers = dense
        .iter()
        .map(|name| match name.as_str() {
            "first" => layers
                .first()
                .map(|s| s.to_string())
                .context("the model has no conv or fc layer"),
            "last" => layers
                .last()
                .map(|s| s.to_string())
                .context("the model has no conv or fc layer"),
            _ => Ok(name.clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut bases_per_layer = std::collections::HashMap::new();
    for item in layer_bases {
        let (name, m) = item
            .split_once('=')
            .with_context(|| format!("--layer-bases expects NAME=M, got '{item}'"))?;
        let m: usize = m
            .parse()
            .with_context(|| format!("--layer-bases: '{m}' is not a number of bases"))?;
        bases_per_layer.insert(name.to_string(), m);
    }
    let opts = SketchOptions {
        bases,
        refined,
        dense_layers,
        bases_per_layer,
    };
    let (sketched, report) = sketch_graph(&graph, &opts)?;
    println!(
        "{} sketching, m = {bases}",
        if refined { "refined" } else { "direct" }
    );
    println!(
        "{:<28} {:<7} {:<20} {:>5} {:>9} {:>12} {:>12} {:>7}",
        "layer", "op", "weight", "m", "rel.err", "bytes", "sketched", "ratio"
    );
    for r in &report {
        println!(
            "{:<28} {:<7} {:<20} {:>5} {:>9.4} {:>12} {:>12} {:>6.1}x",
            truncate(&r.name, 28),
            r.op,
            format!("{:?}", r.shape),
            r.bases,
            r.rel_error,
            r.bytes_before,
            r.bytes_after,
            r.bytes_before as f64 / r.bytes_after.max(1) as f64
        );
    }
    let note = format!(
        "{} of {} conv/fc layers sketched",
        report.len(),
        layers.len()
    );
    save_compressed(&graph, &sketched, output, &note)
}

/// Stores `graph`'s zeros as CSR per `policy`, prints a per-layer table and writes `output`
/// (shared by `compress sparse` and `compress dns`); byte ratios are against `original`.
pub(crate) fn compress_sparse(
    graph: &Graph,
    original: &Graph,
    output: &Path,
    policy: &cnnpack::compress::dns::SparsePolicy,
) -> Result<()> {
    let (sparse, report) = cnnpack::compress::dns::sparsify_graph(graph, policy)?;
    println!(
        "{:<28} {:<7} {:<20} {:>10} {:>9} {:>8} {:>12} {:>12} {:>7}",
        "layer", "op", "weight", "params", "nonzero", "density", "bytes", "stored", "ratio"
    );
    for r in &report {
        println!(
            "{:<28} {:<7} {:<20} {:>10} {:>9} {:>7.2}% {:>12} {:>12} {:>6.1}x{}",
            truncate(&r.name, 28),
            r.op,
            format!("{:?}", r.shape),
            r.parameters,
            r.nonzeros,
            100.0 * r.density(),
            r.bytes_before,
            r.bytes_after,
            r.bytes_before as f64 / r.bytes_after.max(1) as f64,
            if r.sparse { "" } else { "  (kept dense)" }
        );
    }
    let (params, nonzeros) = report
        .iter()
        .fold((0, 0), |(p, n), r| (p + r.parameters, n + r.nonzeros));
    let before = layer_stats(original)?
        .iter()
        .map(|l| l.weight_bytes)
        .sum::<usize>();
    let after = weight_bytes(&sparse)?;
    println!(
        "weights: {nonzeros} of {params} nonzero ({:.2}%, {:.1}x fewer); model: {before} -> {after} bytes of weights and constants incl. indices ({:.1}x smaller)",
        100.0 * nonzeros as f64 / params.max(1) as f64,
        params as f64 / nonzeros.max(1) as f64,
        before as f64 / after.max(1) as f64
    );
    cnnpack::format::save(&sparse, output)
        .with_context(|| format!("writing {}", output.display()))?;
    println!("wrote {}", output.display());
    Ok(())
}

/// `compress dns`: DNS retraining on `data`'s train split, then `compress_sparse`.
/// `run` is (iters, iter_stop, lr, batch, all_sparse); `extra` is (augment, schedule,
/// weight decay, seed); `then_inq` is (bits, lr, epochs per portion).
#[allow(clippy::too_many_arguments)]
pub(crate) fn compress_dns(
    model: &str,
    output: &Path,
    data: &Path,
    (c, density): (&[String], &[String]),
    run: (usize, Option<usize>, f32, usize, bool),
    extra: (Option<&str>, &str, f32, u64),
    then_inq: Option<(u32, f32, usize)>,
    distill: Option<&str>,
    (masks_from_zeros, teacher): (bool, Option<&str>),
) -> Result<()> {
    let (iters, iter_stop, lr, batch, all_sparse) = run;
    let (augment, schedule, weight_decay, seed) = extra;
    use cnnpack::compress::dns::{dns, DnsOptions, SparsePolicy};
    let graph = densify(&cnnpack::graph::fold(load(model)?)?);
    let mut opts = DnsOptions {
        iter_stop: iter_stop.unwrap_or(iters * 3 / 4),
        seed: seed.wrapping_add(6), // seed 1 gives the surgery seed 7 used before

        policy: if all_sparse {
            SparsePolicy::All
        } else {
            SparsePolicy::Crossover
        },
        ..DnsOptions::default()
    };
    for item in c {
        match item.split_once('=') {
            Some((name, v)) => {
                let v: f64 = v
                    .parse()
                    .with_context(|| format!("--c: '{v}' is not a number"))?;
                opts.c_per_layer.insert(name.to_string(), v);
            }
            None => {
                opts.c = item
                    .parse()
                    .with_context(|| format!("--c: '{item}' is neither LAYER=VALUE nor a number"))?
            }
        }
    }
    let mut density_default = None;
    for item in density {
        let (name, v) = match item.split_once('=') {
            Some((name, v)) => (Some(name), v),
            None => (None, item.as_str()),
        };
        let v: f64 = v
            .parse()
            .with_context(|| format!("--density: '{v}' is not a number"))?;
        match name {
            Some(name) => {
                opts.density_per_layer.insert(name.to_string(), v);
            }
            None => density_default = Some(v),
        }
    }
    if let Some(d) = density_default {
        for node in &graph.nodes {
            if node.op.weights().is_some() && !opts.c_per_layer.contains_key(&node.name) {
                opts.density_per_layer.entry(node.name.clone()).or_insert(d);
            }
        }
    }
    for node in &graph.nodes {
        if let (Some(w), Some(&d)) = (node.op.weights(), opts.density_per_layer.get(&node.name)) {
            let w = w.to_dense();
            let th = cnnpack::compress::dns::Thresholds::for_density(&w.data, d);
            eprintln!(
                "{}: density {d} -> a = {:.6}, b = {:.6} (c = {:.3})",
                node.name,
                th.a,
                th.b,
                th.implied_c(&w.data)
            );
        }
    }
    let pre = preprocess(&graph, &PreprocessArgs::default())?;
    let train = Dataset::open_split(data, "train", &pre, &graph.input.item_shape)?;
    let test = Dataset::open_split(data, "test", &pre, &graph.input.item_shape).ok();
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let per_epoch = train.len().div_ceil(batch);
    let epochs = iters.div_ceil(per_epoch.max(1)).max(1);
    let topts = cnnpack::train::TrainOptions {
        epochs,
        batch,
        lr,
        log: true,
        weight_decay,
        seed,
        schedule: parse_schedule(schedule, epochs * per_epoch)?,
        augment: parse_augment(augment)?,
        distill: match teacher {
            Some(t) => parse_distill(distill, &densify(&cnnpack::graph::fold(load(t)?)?))?,
            None => parse_distill(distill, &graph)?,
        },
        ..Default::default()
    };
    eprintln!(
        "DNS: {} training items, {epochs} epochs x {per_epoch} iterations, masks updated until iteration {}",
        train.len(),
        opts.iter_stop
    );
    let bar = progress(epochs * per_epoch, "dns");
    let t0 = Instant::now();
    if masks_from_zeros {
        let mut masks = cnnpack::train::Masks::new();
        for node in &graph.nodes {
            if let Some(w) = node.op.weights() {
                let m = w.to_dense().data.iter().map(|v| *v != 0.0).collect();
                masks.forward.insert(node.name.clone(), m);
            }
        }
        let mut g = graph.clone();
        cnnpack::train::train(&mut g, &train, test.as_ref(), &topts, &mut masks, |info| {
            bar.set_position(info.iter as u64 + 1)
        })?;
        bar.finish_and_clear();
        eprintln!(
            "fine-tuning with fixed masks took {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        masks.apply_forward(&mut g)?;
        return compress_sparse(&g, &graph, output, &opts.policy);
    }
    let (out, _, _) = dns(&graph, &train, test.as_ref(), &topts, &opts, |info| {
        bar.set_position(info.iter as u64 + 1);
        if info.iter % 20 == 0 {
            let kept: usize = info
                .masks
                .forward
                .values()
                .flatten()
                .filter(|m| **m)
                .count();
            let total: usize = info.masks.forward.values().map(|m| m.len()).sum();
            bar.set_message(format!(
                "dns loss {:.3} kept {:.2}%",
                info.loss,
                100.0 * kept as f64 / total.max(1) as f64
            ));
        }
    })?;
    bar.finish_and_clear();
    eprintln!("DNS training took {:.1} s", t0.elapsed().as_secs_f64());
    let Some((bits, inq_lr, inq_epochs)) = then_inq else {
        return compress_sparse(&out, &graph, output, &opts.policy);
    };
    let dns_path = output.with_extension("dns.cnnpack");
    compress_sparse(&out, &graph, &dns_path, &opts.policy)?;
    dns_then_inq(
        &graph,
        &out,
        output,
        (&train, test.as_ref()),
        cnnpack::compress::inq::InqOptions {
            bits,
            ..Default::default()
        },
        cnnpack::train::TrainOptions {
            epochs: inq_epochs,
            lr: inq_lr,
            schedule: parse_schedule("inv", 1)?,
            ..topts
        },
    )
}

/// INQ on the survivors of DNS (`pruned`, zeros kept at zero), saved to `output`; prints
/// the bytes of CSR indices + b-bit codes against the dense f32 `original`.
pub(crate) fn dns_then_inq(
    original: &Graph,
    pruned: &Graph,
    output: &Path,
    (train, test): (&Dataset, Option<&Dataset>),
    opts: cnnpack::compress::inq::InqOptions,
    sgd: cnnpack::train::TrainOptions,
) -> Result<()> {
    use cnnpack::compress::dns::SparsePolicy;
    use cnnpack::compress::inq::{inq_graph, InqOptions};
    let dense = densify(pruned);
    let bits = opts.bits;
    let opts = InqOptions {
        keep_zeros: true,
        ..opts
    };
    let t0 = Instant::now();
    let (q, _) = inq_graph(&dense, &opts, Some((train, test, sgd)), &mut |s| {
        let acc = s.epochs.last().and_then(|e| e.test_acc);
        println!(
            "INQ step {}: {:.1}% of the nonzeros quantized{} [{:.0} s]",
            s.step + 1,
            100.0 * s.portion,
            acc.map_or(String::new(), |a| format!(", test acc {:.2}%", 100.0 * a)),
            t0.elapsed().as_secs_f64()
        );
    })?;
    // CSR with the surviving values as b-bit codes (`sparse+pow2`), every layer: the
    // point of DNS then INQ is the byte count, and the kernels decode the codes at load.
    println!("DNS + INQ {bits}-bit, stored as CSR + {bits}-bit value codes:");
    compress_sparse(&q, original, output, &SparsePolicy::All)
}

/// `cnnpack compress inq`; `sgd` is (epochs per step, learning rate, batch, seed), `extra`
/// (augment, schedule, weight decay, bias-only epochs after the last portion).
#[allow(clippy::too_many_arguments)]
pub(crate) fn compress_inq(
    model: &str,
    output: &Path,
    bits: u32,
    portions: Vec<f64>,
    partition: &str,
    dense: &[String],
    data: Option<&Path>,
    sgd: (usize, f32, usize, u64),
    extra: (Option<&str>, &str, f32, usize),
    distill: Option<&str>,
    keep_zeros: bool,
) -> Result<()> {
    let (augment, schedule, weight_decay, bias_epochs) = extra;
    use cnnpack::compress::inq::{inq_graph, InqOptions, Partition, StepReport};
    let graph = densify(&cnnpack::graph::fold(load(model)?)?);
    let layers: Vec<&str> = graph
        .nodes
        .iter()
        .filter(|n| n.op.weights().is_some())
        .map(|n| n.name.as_str())
        .collect();
    let pick = |end: Option<&&str>| {
        end.map(|s| s.to_string())
            .context("the model has no conv or fc layer")
    };
    let dense_layers = dense
        .iter()
        .map(|name| match name.as_str() {
            "first" => pick(layers.first()),
            "last" => pick(layers.last()),
            _ => Ok(name.clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    let partition = match partition {
        "magnitude" => Partition::Magnitude,
        "random" => Partition::Random,
        other => bail!("--partition must be magnitude or random, got '{other}'"),
    };
    let (epochs, lr, batch, seed) = sgd;
    let opts = InqOptions {
        bits,
        portions,
        partition,
        seed,
        dense_layers,
        bias_epochs,
        keep_zeros: false,
    };
    let t0 = Instant::now();
    let sets = match data {
        Some(dir) => {
            let pre = Preprocess::from_metadata(&graph.metadata, &graph.input.item_shape)?;
            let item = graph.input.item_shape.clone();
            let train = Dataset::open_split(dir, "train", &pre, &item)
                .with_context(|| format!("opening the train split of {}", dir.display()))?;
            let test = Dataset::open_split(dir, "test", &pre, &item).ok();
            Some((train, test))
        }
        None => None,
    };
    let per_epoch = sets
        .as_ref()
        .map_or(1, |(tr, _)| tr.len().div_ceil(batch.max(1)));
    let train_opts = cnnpack::train::TrainOptions {
        epochs,
        batch,
        lr,
        seed,
        weight_decay,
        schedule: parse_schedule(schedule, epochs * per_epoch)?,
        augment: parse_augment(augment)?,
        distill: parse_distill(distill, &graph)?,
        ..Default::default()
    };
    let train_data = sets
        .as_ref()
        .map(|(tr, te)| (tr, te.as_ref(), train_opts.clone()));
    match &sets {
        Some((tr, te)) => println!(
            "INQ, {bits} bits, portions {:?}, {:?} partition: retraining {epochs} epoch(s) per step on {} items{}",
            opts.portions,
            opts.partition,
            tr.len(),
            if te.is_some() { " (test split evaluated)" } else { "" }
        ),
        None => println!(
            "INQ, {bits} bits: no --data, so one-step quantization of every weight WITHOUT retraining"
        ),
    }
    let mut on_step = |s: &StepReport| {
        let acc = s
            .epochs
            .iter()
            .map(|e| match e.test_acc {
                Some(a) => format!(
                    " epoch {}: train loss {:.4}, test acc {:.2}%;",
                    e.epoch + 1,
                    e.train_loss,
                    100.0 * a
                ),
                None => format!(" epoch {}: train loss {:.4};", e.epoch + 1, e.train_loss),
            })
            .collect::<String>();
        println!(
            "step {}: {:.1}% quantized ({} of {}){}{} [{:.0} s]",
            s.step + 1,
            100.0 * s.portion,
            s.quantized,
            s.total,
            if s.epochs.is_empty() {
                ""
            } else {
                "; retrained:"
            },
            acc,
            t0.elapsed().as_secs_f64()
        );
    };
    if keep_zeros {
        let (tr, te, sgd) = train_data.context("--keep-zeros needs --data")?;
        let opts = InqOptions {
            keep_zeros: true,
            ..opts
        };
        return dns_then_inq(&graph, &graph, output, (tr, te), opts, sgd);
    }
    let (quantized, report) = inq_graph(&graph, &opts, train_data, &mut on_step)?;
    println!(
        "{:<28} {:<7} {:<20} {:>4} {:>5} {:>8} {:>9} {:>12} {:>12} {:>7}",
        "layer", "op", "weight", "bits", "n1", "distinct", "rel.err", "bytes", "pow2", "ratio"
    );
    for r in &report {
        println!(
            "{:<28} {:<7} {:<20} {:>4} {:>5} {:>8} {:>9.4} {:>12} {:>12} {:>6.1}x",
            truncate(&r.name, 28),
            r.op,
            format!("{:?}", r.shape),
            r.bits,
            r.n1,
            r.distinct,
            r.rel_error,
            r.bytes_before,
            r.bytes_after,
            r.bytes_before as f64 / r.bytes_after.max(1) as f64
        );
    }
    let note = format!(
        "{} of {} conv/fc layers quantized; {:.1} s",
        report.len(),
        layers.len(),
        t0.elapsed().as_secs_f64()
    );
    save_compressed(&graph, &quantized, output, &note)
}
