//! `cnnpack demo`: the main job on an embedded default, with no arguments and no network.
//!
//! The default is a LeNet-5 trained by `cnnpack train` on Fashion-MNIST (assets/README.md
//! has the exact command) and 24 Fashion-MNIST test images written by
//! `examples/write_demo_assets.rs`. The demo classifies them on the GPU and the CPU,
//! sketches the model (network sketching, refined, m = 2) and quantizes it to powers of
//! two (INQ, 5 and 4 bits, one step without retraining: the demo has no training data),
//! and compares accuracy, size and speed; where Debian's `dataset-fashion-mnist` is
//! installed it also scores the full 10,000-image test set. It ends with a zoo ResNet-18
//! on the GPU vs the CPU.

use anyhow::{Context, Result};
use cnnpack::compress::inq::{inq_graph, InqOptions};
use cnnpack::compress::sketch::{sketch_graph, SketchOptions};
use cnnpack::data::{Dataset, Preprocess};
use cnnpack::engine::{DeviceKind, Engine};
use cnnpack::graph::{layer_stats, Graph, Rng, Tensor};
use std::path::Path;
use std::time::Instant;

/// The embedded model (see assets/README.md).
const MODEL: &[u8] = include_bytes!("../assets/lenet5-fashion.cnnpack");

/// Fashion-MNIST test images 0..24; the file name carries the true class.
const IMAGES: &[(&str, &[u8])] = &[
    (
        "000_ankle-boot.png",
        include_bytes!("../assets/fashion/000_ankle-boot.png"),
    ),
    (
        "001_pullover.png",
        include_bytes!("../assets/fashion/001_pullover.png"),
    ),
    (
        "002_trouser.png",
        include_bytes!("../assets/fashion/002_trouser.png"),
    ),
    (
        "003_trouser.png",
        include_bytes!("../assets/fashion/003_trouser.png"),
    ),
    (
        "004_shirt.png",
        include_bytes!("../assets/fashion/004_shirt.png"),
    ),
    (
        "005_trouser.png",
        include_bytes!("../assets/fashion/005_trouser.png"),
    ),
    (
        "006_coat.png",
        include_bytes!("../assets/fashion/006_coat.png"),
    ),
    (
        "007_shirt.png",
        include_bytes!("../assets/fashion/007_shirt.png"),
    ),
    (
        "008_sandal.png",
        include_bytes!("../assets/fashion/008_sandal.png"),
    ),
    (
        "009_sneaker.png",
        include_bytes!("../assets/fashion/009_sneaker.png"),
    ),
    (
        "010_coat.png",
        include_bytes!("../assets/fashion/010_coat.png"),
    ),
    (
        "011_sandal.png",
        include_bytes!("../assets/fashion/011_sandal.png"),
    ),
    (
        "012_sneaker.png",
        include_bytes!("../assets/fashion/012_sneaker.png"),
    ),
    (
        "013_dress.png",
        include_bytes!("../assets/fashion/013_dress.png"),
    ),
    (
        "014_coat.png",
        include_bytes!("../assets/fashion/014_coat.png"),
    ),
    (
        "015_trouser.png",
        include_bytes!("../assets/fashion/015_trouser.png"),
    ),
    (
        "016_pullover.png",
        include_bytes!("../assets/fashion/016_pullover.png"),
    ),
    (
        "017_coat.png",
        include_bytes!("../assets/fashion/017_coat.png"),
    ),
    (
        "018_bag.png",
        include_bytes!("../assets/fashion/018_bag.png"),
    ),
    (
        "019_t-shirt.png",
        include_bytes!("../assets/fashion/019_t-shirt.png"),
    ),
    (
        "020_pullover.png",
        include_bytes!("../assets/fashion/020_pullover.png"),
    ),
    (
        "021_sandal.png",
        include_bytes!("../assets/fashion/021_sandal.png"),
    ),
    (
        "022_sneaker.png",
        include_bytes!("../assets/fashion/022_sneaker.png"),
    ),
    (
        "023_ankle-boot.png",
        include_bytes!("../assets/fashion/023_ankle-boot.png"),
    ),
];

/// Fashion-MNIST's class names, by label.
const CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// Where Debian's `dataset-fashion-mnist` puts the files.
const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Runs the demo.
pub fn run() -> Result<()> {
    let dense = cnnpack::format::from_bytes(MODEL).context("the embedded model")?;
    let (batch, labels) = embedded_batch(&dense)?;
    println!("cnnpack demo");
    println!(
        "model: LeNet-5 trained on Fashion-MNIST by `cnnpack train` (embedded; assets/README.md)\n"
    );

    let cpu = Engine::new(dense.clone(), DeviceKind::Cpu)?;
    let gpu = Engine::new(dense.clone(), DeviceKind::Gpu)?;
    if let Some(note) = gpu.fallback_note() {
        println!("note: {note}");
    }
    let (y_gpu, y_cpu) = (
        gpu.run(&batch)?.swap_remove(0),
        cpu.run(&batch)?.swap_remove(0),
    );
    println!(
        "{} embedded test images on {} and on the CPU:",
        labels.len(),
        gpu.device_name()
    );
    let predicted: Vec<usize> = y_gpu
        .data
        .chunks(10)
        .map(|row| cnnpack::eval::top_k(row, 1)[0])
        .collect();
    for (chunk_labels, chunk_pred) in labels.chunks(6).zip(predicted.chunks(6)) {
        let line: Vec<String> = chunk_labels
            .iter()
            .zip(chunk_pred)
            .map(|(&l, &p)| format!("{:<10}{}", CLASSES[p], if l == p { " ok " } else { " XX " }))
            .collect();
        println!("  {}", line.join(""));
    }
    println!(
        "  max |gpu - cpu| over all outputs: {:.2e}\n",
        y_gpu.max_abs_diff(&y_cpu)
    );

    let opts = SketchOptions {
        bases: 2,
        refined: true,
        ..Default::default()
    };
    let folded = cnnpack::graph::fold(dense.clone())?;
    let (sketched, _) = sketch_graph(&folded, &opts)?;
    // INQ in one step (every weight quantized at once, no retraining).
    let inq = |bits| -> Result<Graph> {
        let opts = InqOptions {
            bits,
            ..Default::default()
        };
        Ok(inq_graph(&folded, &opts, None, &mut |_| {})?.0)
    };
    let models = [
        ("dense f32", dense),
        ("sketch m=2", sketched),
        ("inq 5-bit", inq(5)?),
        ("inq 4-bit", inq(4)?),
    ];
    let full = Path::new(FASHION_DIR).is_dir();
    println!(
        "{:<12} {:>12} {:>10} {:>12} {:>14} {:>14}",
        "model",
        "weight bytes",
        "embedded",
        if full { "test set" } else { "" },
        "cpu ms/batch64",
        "gpu ms/batch64"
    );
    for (name, graph) in &models {
        let bytes: usize = layer_stats(graph)?.iter().map(|l| l.weight_bytes).sum();
        let cpu = Engine::new(graph.clone(), DeviceKind::Cpu)?;
        let gpu = Engine::new(graph.clone(), DeviceKind::Gpu)?;
        let out = gpu.run(&batch)?.swap_remove(0);
        let hits = out
            .data
            .chunks(10)
            .zip(&labels)
            .filter(|(row, l)| cnnpack::eval::top_k(row, 1)[0] == **l)
            .count();
        // The full test set runs on the CPU: on a software adapter it would take minutes.
        let test = if full {
            format!("{:.2}%", test_set_accuracy(graph, &cpu)?)
        } else {
            String::new()
        };
        let x = Rng::new(3).normal_tensor(vec![64, 1, 28, 28], 1.0);
        println!(
            "{:<12} {:>12} {:>9}/{} {:>12} {:>14.2} {:>14.2}",
            name,
            bytes,
            hits,
            labels.len(),
            test,
            time_ms(&cpu, &x)?,
            time_ms(&gpu, &x)?
        );
    }
    println!("(inq: one step without retraining; `cnnpack compress inq --data` retrains)");
    if !full {
        println!(
            "(install Debian's dataset-fashion-mnist to score the full 10,000-image test set)"
        );
    }
    if gpu.device_name().contains("llvmpipe") {
        println!("(the GPU here is lavapipe, Mesa's software Vulkan: GPU times are CPU times)");
    }
    resnet18(&gpu)
}

/// The embedded PNGs as one NCHW batch, with their labels from the file names.
fn embedded_batch(graph: &Graph) -> Result<(Tensor, Vec<usize>)> {
    let pre = Preprocess::from_metadata(&graph.metadata, &graph.input.item_shape)?;
    let item = pre.item_len();
    let mut batch = Tensor::zeros(vec![IMAGES.len(), 1, 28, 28]);
    let mut labels = Vec::with_capacity(IMAGES.len());
    for (i, (name, png)) in IMAGES.iter().enumerate() {
        let img = image::load_from_memory(png).with_context(|| format!("embedded image {name}"))?;
        pre.apply(&img, &mut batch.data[i * item..(i + 1) * item])?;
        let class = name[4..name.len() - 4].to_string();
        labels.push(
            CLASSES
                .iter()
                .position(|c| *c == class)
                .context("class in the file name")?,
        );
    }
    Ok((batch, labels))
}

fn test_set_accuracy(graph: &Graph, engine: &Engine) -> Result<f64> {
    let pre = Preprocess::from_metadata(&graph.metadata, &graph.input.item_shape)?;
    let data = Dataset::open(Path::new(FASHION_DIR), &pre, &graph.input.item_shape)?;
    Ok(cnnpack::eval::evaluate(engine, &data, 256, None, |_| {})?.top1)
}

/// Median of 5 timed runs after one warm-up, in ms.
fn time_ms(engine: &Engine, x: &Tensor) -> Result<f64> {
    Ok(cnnpack::bench::time_runs(1, 5, 5.0, || engine.run(x).map(|_| ()))?.p50_ms)
}

fn resnet18(gpu_for_name: &Engine) -> Result<()> {
    println!("\nzoo ResNet-18 (seeded He init), batch 1, 3x224x224: GPU vs CPU");
    let graph = cnnpack::zoo::build("resnet18", 0)?;
    let x = Rng::new(1).normal_tensor(vec![1, 3, 224, 224], 1.0);
    let cpu = Engine::new(graph.clone(), DeviceKind::Cpu)?;
    let gpu = Engine::new(graph, DeviceKind::Gpu)?;
    // Both timed on their second run: the first packs the CPU engine's conv weights and
    // uploads the GPU model.
    let y_cpu = cpu.run(&x)?.swap_remove(0);
    let t = Instant::now();
    cpu.run(&x)?;
    let ms_cpu = t.elapsed().as_secs_f64() * 1e3;
    let y_gpu = gpu.run(&x)?.swap_remove(0);
    let t = Instant::now();
    gpu.run(&x)?;
    let ms_gpu = t.elapsed().as_secs_f64() * 1e3;
    println!("  cpu (fast kernels): {ms_cpu:8.1} ms");
    println!("  {}: {ms_gpu:8.1} ms", gpu_for_name.device_name());
    let scale = y_cpu.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!(
        "  outputs agree: max |gpu - cpu| = {:.2e} (max |logit| {scale:.1}); top-1 class {} on both: {}",
        y_gpu.max_abs_diff(&y_cpu),
        cnnpack::eval::top_k(&y_gpu.data, 1)[0],
        cnnpack::eval::top_k(&y_gpu.data, 1) == cnnpack::eval::top_k(&y_cpu.data, 1)
    );
    Ok(())
}
