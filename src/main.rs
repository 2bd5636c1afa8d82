//! The `cnnpack` command line: a thin layer over the library. Errors are printed
//! once and map to exit code 1; a panic anywhere is a bug.

mod demo;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cnnpack::data::{Dataset, Preprocess};
use cnnpack::engine::{DeviceKind, Engine};
use cnnpack::graph::{layer_stats, Graph, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "cnnpack",
    version,
    about = "Compress CNNs (network sketching, INQ, DNS) and run them on wgpu or the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-layer op, shapes, encoding, parameters, nonzeros, weight bytes and FLOPs.
    Inspect {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Classify images and print the top classes.
    Classify {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Image files (JPEG or PNG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        device: DeviceArg,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Class names, one per line (default: the model's `labels` metadata).
        #[arg(long)]
        labels: Option<PathBuf>,
        #[command(flatten)]
        pre: PreprocessArgs,
    },
    /// Top-1/top-5 accuracy on a labelled data set.
    Eval {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// A folder of IDX files (MNIST layout), of images with labels.csv, or ImageFolder layout.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Evaluate only the first N items.
        #[arg(long)]
        limit: Option<usize>,
        /// Print one JSON object (top1, top5, count, images_per_s, device).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pre: PreprocessArgs,
    },
    /// Run a model on a tensor from a .npy file and write the output as .npy.
    Run {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Input: float32 C-order .npy of shape [N, ..the model's input shape].
        #[arg(long)]
        input: PathBuf,
        /// Output .npy (float32): the model's first output.
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Compress a model's conv and fc weights.
    #[command(subcommand)]
    Compress(Compress),
    /// Train a model (e.g. zoo:lenet5, randomly initialised) on a data set; CPU for now.
    Train(TrainArgs),
    /// Fine-tune a pre-trained model (as `train`, with fine-tuning defaults: lr 0.001, 1 epoch).
    Finetune(TrainArgs),
    /// Convert a model to .cnnpack (lossless).
    Convert {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Output .cnnpack file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Export a model to ONNX (opset 13; compressed weights are expanded to f32).
    Export {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Output .onnx file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Time a model (whole and per layer) and/or measure the device's peak rates.
    ///
    /// Examples:
    ///   cnnpack bench --peak                                   peak FMA rate and bandwidth
    ///   cnnpack bench zoo:resnet18 --peak --batch 1,8          per-layer times + roofline %
    ///   cnnpack bench m2.cnnpack --baseline zoo:alexnet        compressed vs its dense origin
    ///   cnnpack bench zoo:alexnet --sweep sketch --svg plots/  speed-up vs bases m, plotted
    ///   cnnpack bench zoo:alexnet --json out.json              everything as JSON (schema:
    ///                                                          docs/benchmarks.md)
    #[command(verbatim_doc_comment)]
    Bench {
        /// Model: .onnx, .cnnpack or zoo:NAME (omit with --peak to measure peaks only).
        model: Option<String>,
        /// Measure the peak FMA rate and bandwidth first, and rate each layer against it.
        #[arg(long)]
        peak: bool,
        /// Devices, comma-separated: gpu, cpu.
        #[arg(long, value_delimiter = ',', default_value = "gpu,cpu")]
        device: Vec<DeviceKind>,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batch: Vec<usize>,
        /// Timed runs per configuration (fewer if --budget runs out; at least 3).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Seconds of timed runs per configuration.
        #[arg(long, default_value_t = 10.0)]
        budget: f64,
        /// How many of the slowest layers to print per configuration (all with --json).
        #[arg(long, default_value_t = 12)]
        layers: usize,
        /// Also time this (dense) model on the same devices and batches, in the same run,
        /// and print MODEL's whole-model and per-layer speed-up over it and the bytes ratio.
        #[arg(long, value_name = "DENSE_MODEL")]
        baseline: Option<String>,
        /// Compress MODEL (dense) at several values of one parameter and time each against
        /// it: sketch (bases m, default 1,2,3,4), inq (bits b, default 2,3,4,5; one step,
        /// no retraining) or sparse (magnitude-pruned density, default 0.5,0.25,0.1,0.05).
        #[arg(long, value_name = "KIND")]
        sweep: Option<String>,
        /// Values for --sweep, comma-separated.
        #[arg(long, value_delimiter = ',', requires = "sweep")]
        values: Vec<f64>,
        /// Write everything as JSON to this file (schema: docs/benchmarks.md, "JSON schema").
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write SVG plots into this folder (created if missing): a per-layer roofline chart
        /// per model, device and batch (`roofline-MODEL-DEVICE-bN.svg`; implies --peak), and
        /// with --sweep the speed-up chart `speedup-MODEL-KIND.svg`.
        #[arg(long, value_name = "DIR")]
        svg: Option<PathBuf>,
    },
    /// The main job on an embedded default, no arguments, no network.
    Demo,
}

#[derive(Subcommand)]
enum Compress {
    /// Network sketching (Guo et al., CVPR 2017): each filter becomes m binary (±1)
    /// tensors with a scale each; kernels use additions and subtractions only.
    Sketch {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Output .cnnpack file.
        #[arg(short, long)]
        output: PathBuf,
        /// Binary bases per filter (m); m = 1 is a binary-weight network (BWN).
        #[arg(long, default_value_t = 3)]
        bases: usize,
        /// Direct sketching (greedy residual signs, scale = mean |residual|).
        #[arg(long, conflicts_with = "refined")]
        direct: bool,
        /// Refined sketching: refit all scales by least squares after each new base (default).
        #[arg(long)]
        refined: bool,
        /// Conv/fc layers to keep dense, comma-separated node names; `first` and `last`
        /// name the first and last conv/fc layer.
        #[arg(long, value_delimiter = ',')]
        dense_layers: Vec<String>,
        /// Per-layer bases, e.g. `conv1=4,fc8=2`.
        #[arg(long, value_delimiter = ',')]
        layer_bases: Vec<String>,
    },
    /// Incremental network quantization (Zhou et al., ICLR 2017): weights become 0 or
    /// ±2^n (b-bit codes), quantized in portions with retraining of the rest in between.
    Inq {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Output .cnnpack file.
        #[arg(short, long)]
        output: PathBuf,
        /// Bits per weight (2..=5; 2 is ternary {0, ±2^n1}).
        #[arg(long, default_value_t = 5)]
        bits: u32,
        /// Accumulated portions of quantized weights, ending at 1.
        #[arg(long, value_delimiter = ',', default_value = "0.5,0.75,0.875,1")]
        portions: Vec<f64>,
        /// Which weights are quantized first: magnitude (largest first) or random.
        #[arg(long, default_value = "magnitude")]
        partition: String,
        /// Conv/fc layers to keep dense, comma-separated node names; `first` and `last`
        /// name the first and last conv/fc layer.
        #[arg(long, value_delimiter = ',')]
        dense_layers: Vec<String>,
        /// Dataset folder for retraining (its "train" split; the "test" split, when
        /// present, is evaluated after each epoch). Without it: one-step quantization.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Retraining epochs after each portion but the last.
        #[arg(long, default_value_t = 2)]
        epochs_per_step: usize,
        /// Base learning rate of each retraining (Caffe "inv" decay, momentum 0.9,
        /// weight decay 5e-4).
        #[arg(long, default_value_t = 0.001)]
        lr: f32,
        /// Retraining batch size.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Seed of the random partition and of the training shuffles.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Random augmentation of training items: shift:PX, affine:PX:DEG:SCALE,
        /// crop:MIN_AREA (random resized crop + flip) or flip.
        #[arg(long)]
        augment: Option<String>,
        /// Learning-rate schedule of each retraining: inv, cosine, fixed, step:GAMMA:ITERS.
        #[arg(long, default_value = "inv")]
        schedule: String,
        /// L2 weight decay of the retraining.
        #[arg(long, default_value_t = 5e-4)]
        weight_decay: f32,
        /// Epochs of bias-only retraining after the last portion (all weights frozen).
        #[arg(long, default_value_t = 0)]
        bias_epochs: usize,
        /// Keep exact zeros at zero (e.g. a DNS model): they are frozen from the start and
        /// the portions count the nonzeros; prints CSR + code bytes. Needs --data.
        #[arg(long)]
        keep_zeros: bool,
        /// Distil from the input model while retraining: T:ALPHA, e.g. 4:0.9 (loss
        /// (1-ALPHA)·CE + ALPHA·T²·KL to the original model's softened outputs).
        #[arg(long)]
        distill: Option<String>,
    },
    /// Store the exact zeros already in the weights as CSR (no retraining), e.g. for the
    /// DNS paper's released sparse LeNet. Layers denser than the CPU kernels' crossover
    /// stay dense unless `--all` or `--max-density` says otherwise.
    Sparse {
        /// Model: .onnx, .cnnpack or zoo:NAME.
        model: String,
        /// Output .cnnpack file.
        #[arg(short, long)]
        output: PathBuf,
        /// Store every conv/fc layer sparse, whatever its density.
        #[arg(long, conflicts_with = "max_density")]
        all: bool,
        /// Store a layer sparse when its density (0..1) is at most this.
        #[arg(long)]
        max_density: Option<f64>,
    },
    /// Dynamic network surgery (Guo et al., NIPS 2016): retrain with masks that prune
    /// small weights and splice back those that grow, then store the result as CSR.
    Dns {
        /// Model: .onnx, .cnnpack or zoo:NAME (dense weights).
        model: String,
        /// Output .cnnpack file.
        #[arg(short, long)]
        output: PathBuf,
        /// Data folder with a train split (and a test split, evaluated after each epoch).
        #[arg(long)]
        data: PathBuf,
        /// c of t = mean|W| + c·std|W|: one value for all layers, or LAYER=VALUE pairs
        /// (a bare VALUE among them sets the default).
        #[arg(long, value_delimiter = ',', default_value = "1")]
        c: Vec<String>,
        /// Instead of c, the fraction of weights the first surgery keeps, as LAYER=FRACTION
        /// pairs (a bare FRACTION sets every layer not given a c): t is set so that
        /// a = 0.9·t is that layer's k-th largest |w|. Useful when continuing surgery from
        /// a sparse model, where mean|W| and std|W| count the zeros.
        #[arg(long, value_delimiter = ',')]
        density: Vec<String>,
        /// Training iterations (rounded up to whole epochs).
        #[arg(long, default_value_t = 6000)]
        iters: usize,
        /// Masks are updated until this iteration (default: 3/4 of --iters).
        #[arg(long)]
        iter_stop: Option<usize>,
        /// Base learning rate (Caffe "inv" policy, gamma 1e-4, power 0.75).
        #[arg(long, default_value_t = 0.01)]
        lr: f32,
        /// Items per iteration.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Store every layer sparse, whatever its density (default: dense above the
        /// CPU kernels' crossover density).
        #[arg(long)]
        all_sparse: bool,
        /// Random augmentation of training items: shift:PX, affine:PX:DEG:SCALE,
        /// crop:MIN_AREA (random resized crop + flip) or flip.
        #[arg(long)]
        augment: Option<String>,
        /// Learning-rate schedule: inv (Caffe, gamma 1e-4, power 0.75), cosine, fixed,
        /// step:GAMMA:ITERS.
        #[arg(long, default_value = "inv")]
        schedule: String,
        /// L2 weight decay.
        #[arg(long, default_value_t = 5e-4)]
        weight_decay: f32,
        /// Seed of the shuffles, the augmentation and the surgery coin flips.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Then quantize the surviving weights with INQ at this many bits (zeros stay
        /// zero; portions 0.5,0.75,0.875,1 of the nonzeros; same data, augmentation and
        /// batch). OUTPUT gets the INQ model, OUTPUT with extension .dns.cnnpack the
        /// sparse DNS one.
        #[arg(long)]
        then_inq: Option<u32>,
        /// Learning rate of the INQ retraining after DNS (Caffe inv policy).
        #[arg(long, default_value_t = 0.001)]
        inq_lr: f32,
        /// INQ retraining epochs per portion after DNS.
        #[arg(long, default_value_t = 1)]
        inq_epochs_per_step: usize,
        /// No surgery: the masks are the input model's nonzeros, frozen (fine-tunes an
        /// already pruned model, e.g. a DNS output, without changing its sparsity).
        #[arg(long)]
        masks_from_zeros: bool,
        /// Teacher for --distill (default: the input model).
        #[arg(long)]
        teacher: Option<String>,
        /// Distil from the input model while retraining: T:ALPHA, e.g. 4:0.9 (loss
        /// (1-ALPHA)·CE + ALPHA·T²·KL to the original model's softened outputs).
        #[arg(long)]
        distill: Option<String>,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Model: .onnx, .cnnpack or zoo:NAME.
    model: String,
    /// Folder with the training split (train-* or train10k-* IDX files, or images);
    /// its test split (t10k-* / labels.csv) is evaluated after each epoch when present.
    #[arg(long, required_unless_present = "bench_iters")]
    data: Option<PathBuf>,
    /// Output .cnnpack, rewritten atomically after every epoch (a checkpoint).
    #[arg(short, long, required_unless_present = "bench_iters")]
    output: Option<PathBuf>,
    /// Passes over the training set [train: 10, finetune: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Base learning rate [train: 0.01, finetune: 0.001].
    #[arg(long)]
    lr: Option<f32>,
    /// Images per update.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// L2 weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Learning-rate schedule: inv (Caffe LeNet: gamma 1e-4, power 0.75), cosine (to 0 at
    /// the end), fixed, step:GAMMA:ITERS.
    #[arg(long, default_value = "inv")]
    schedule: String,
    /// Shuffling seed (same seed, same device: same weights).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random augmentation of training items: shift:PX, affine:PX:DEG:SCALE,
    /// crop:MIN_AREA (random resized crop + flip) or flip.
    #[arg(long)]
    augment: Option<String>,
    /// Where to train: cpu, or gpu (the WGSL training kernels; on lavapipe that is a
    /// CPU timing). Same seed, same device: same weights.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Measure training throughput instead: N timed steps (after one warm-up step) on a
    /// synthetic batch of --batch images; prints images/s, needs no --data, writes nothing.
    #[arg(long)]
    bench_iters: Option<usize>,
}

#[derive(Args)]
struct DeviceArg {
    /// Where to run: gpu (falls back to cpu without an adapter), cpu, or reference (naive CPU).
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceKind,
}

/// Overrides of the preprocessing that the model's metadata specifies.
#[derive(Args, Default)]
struct PreprocessArgs {
    /// Resize the shorter side to this many pixels.
    #[arg(long)]
    resize: Option<u32>,
    /// Center-crop to this square size.
    #[arg(long)]
    crop: Option<u32>,
    /// Per-channel mean, comma-separated, in the network's channel order.
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-channel std, comma-separated.
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Multiplier applied to the 0-255 pixel first.
    #[arg(long)]
    scale: Option<f32>,
    /// Feed channels as BGR instead of RGB.
    #[arg(long)]
    bgr: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Mesa's Vulkan drivers print "XDG_RUNTIME_DIR is invalid" to stderr when probing
    // window-system support on a headless machine; cnnpack draws nothing, so give them
    // a harmless value before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect { model, json } => inspect(&model, json),
        Command::Classify {
            model,
            images,
            device,
            top,
            labels,
            pre,
        } => classify(&model, &images, device.device, top, labels.as_deref(), &pre),
        Command::Eval {
            model,
            data,
            device,
            batch,
            limit,
            json,
            pre,
        } => eval(&model, &data, device.device, batch, limit, json, &pre),
        Command::Run {
            model,
            input,
            output,
            device,
        } => run_npy(&model, &input, &output, device.device),
        Command::Compress(Compress::Sketch {
            model,
            output,
            bases,
            direct,
            refined: _,
            dense_layers,
            layer_bases,
        }) => compress_sketch(&model, &output, bases, !direct, &dense_layers, &layer_bases),
        Command::Train(args) => train(&args, 10, 0.01),
        Command::Finetune(args) => train(&args, 1, 0.001),
        Command::Compress(Compress::Inq {
            model,
            output,
            bits,
            portions,
            partition,
            dense_layers,
            data,
            epochs_per_step,
            lr,
            batch,
            seed,
            augment,
            schedule,
            weight_decay,
            bias_epochs,
            keep_zeros,
            distill,
        }) => compress_inq(
            &model,
            &output,
            bits,
            portions,
            &partition,
            &dense_layers,
            data.as_deref(),
            (epochs_per_step, lr, batch, seed),
            (augment.as_deref(), &schedule, weight_decay, bias_epochs),
            distill.as_deref(),
            keep_zeros,
        ),
        Command::Compress(Compress::Sparse {
            model,
            output,
            all,
            max_density,
        }) => {
            use cnnpack::compress::dns::SparsePolicy;
            let policy = match (all, max_density) {
                (true, _) => SparsePolicy::All,
                (false, Some(d)) => SparsePolicy::MaxDensity(d),
                (false, None) => SparsePolicy::Crossover,
            };
            let graph = cnnpack::graph::fold(load(&model)?)?;
            compress_sparse(&graph, &graph, &output, &policy)
        }
        Command::Compress(Compress::Dns {
            model,
            output,
            data,
            c,
            density,
            iters,
            iter_stop,
            lr,
            batch,
            all_sparse,
            augment,
            schedule,
            weight_decay,
            seed,
            then_inq,
            inq_lr,
            inq_epochs_per_step,
            masks_from_zeros,
            teacher,
            distill,
        }) => compress_dns(
            &model,
            &output,
            &data,
            (&c, &density),
            (iters, iter_stop, lr, batch, all_sparse),
            (augment.as_deref(), &schedule, weight_decay, seed),
            then_inq.map(|b| (b, inq_lr, inq_epochs_per_step)),
            distill.as_deref(),
            (masks_from_zeros, teacher.as_deref()),
        ),
        Command::Convert { model, output } => {
            let graph = load(&model)?;
            cnnpack::format::save(&graph, &output)
                .with_context(|| format!("writing {}", output.display()))?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Export { model, output } => {
            let graph = load(&model)?;
            let bytes = cnnpack::import::export::export_onnx(&graph)?;
            cnnpack::format::write_atomic(&output, &bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Bench {
            model,
            peak,
            device,
            batch,
            runs,
            budget,
            layers,
            baseline,
            sweep,
            values,
            json,
            svg,
        } => bench(BenchArgs {
            model,
            peak,
            devices: device,
            batches: batch,
            runs,
            budget,
            top: layers,
            baseline,
            sweep,
            values,
            json,
            svg,
        }),
        Command::Demo => demo::run(),
    }
}

/// Loads `.onnx`, `.cnnpack` or `zoo:NAME` (seed 0).
fn load(model: &str) -> Result<Graph> {
    if let Some(name) = model.strip_prefix("zoo:") {
        return Ok(cnnpack::zoo::build(name, 0)?);
    }
    cnnpack::format::load_model(Path::new(model)).with_context(|| format!("loading {model}"))
}

fn engine(graph: Graph, device: DeviceKind) -> Result<Engine> {
    let engine = Engine::new(graph, device)?;
    if let Some(note) = engine.fallback_note() {
        eprintln!("note: {note}");
    }
    eprintln!("device: {}", engine.device_name());
    Ok(engine)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn inspect(model: &str, json: bool) -> Result<()> {
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

fn join(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn preprocess(graph: &Graph, args: &PreprocessArgs) -> Result<Preprocess> {
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
fn labels(graph: &Graph, model: &str, file: Option<&Path>) -> Result<Option<Vec<String>>> {
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

fn classify(
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

fn eval(
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

fn run_npy(model: &str, input: &Path, output: &Path, device: DeviceKind) -> Result<()> {
    let graph = load(model)?;
    let x = cnnpack::format::npy::read_npy(input)
        .with_context(|| format!("reading {}", input.display()))?;
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
    let y = engine.run(&x)?.swap_remove(0);
    cnnpack::format::npy::write_npy(output, &y)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!("wrote {} {:?}", output.display(), y.shape);
    Ok(())
}

/// Arguments of `cnnpack bench`.
struct BenchArgs {
    model: Option<String>,
    peak: bool,
    devices: Vec<DeviceKind>,
    batches: Vec<usize>,
    runs: usize,
    budget: f64,
    top: usize,
    baseline: Option<String>,
    sweep: Option<String>,
    values: Vec<f64>,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
}

fn bench(a: BenchArgs) -> Result<()> {
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
            let engine = Engine::new(graph.clone(), device)?;
            if let Some(note) = engine.fallback_note() {
                eprintln!("note: skipping --device gpu: {note}");
                continue;
            }
            let base_engine = base_graph
                .clone()
                .map(|g| Engine::new(g, device))
                .transpose()?;
            let variant_engines = variants
                .iter()
                .map(|(v, g)| Ok((*v, Engine::new(g.clone(), device)?)))
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
fn model_stem(model: &str) -> &str {
    let name = model.strip_prefix("zoo:").unwrap_or(model);
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    file.split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(file)
}

/// Whole-model line and the `top` slowest layers.
fn print_model_bench(model: &str, r: &cnnpack::bench::model::ModelBench, top: usize) {
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
        "  {:<28} {:<12} {:<8} {:>9} {:>9} {:>8} {:>7} {:>8}",
        "layer", "op", "encoding", "ms", "GFLOP/s", "GB/s", "roof%", "bound"
    );
    for l in slowest.iter().take(top) {
        println!(
            "  {:<28} {:<12} {:<8} {:>9.3} {:>9.2} {:>8.2} {:>7} {:>8}",
            truncate(&l.name, 28),
            l.op,
            l.encoding,
            l.ms,
            l.gflops,
            l.gbps,
            l.roof_fraction
                .map_or("-".into(), |f| format!("{:.1}", 100.0 * f)),
            l.bound.as_deref().unwrap_or("-")
        );
    }
}

/// MODEL against its baseline: whole model, bytes, then every matched layer.
fn print_comparison(model: &str, base: &str, c: &cnnpack::bench::compare::Comparison) {
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
fn software_note(adapter: &str) -> &'static str {
    if adapter.contains("llvmpipe")
        || adapter.contains("lavapipe")
        || adapter.contains("SwiftShader")
    {
        " [software rasterizer: CPU timing, not GPU speed]"
    } else {
        ""
    }
}

fn compress_sketch(
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

/// `--schedule`: inv (Caffe: gamma 1e-4, power 0.75), cosine over `total` iterations,
/// fixed, or step:GAMMA:ITERS.
fn parse_schedule(spec: &str, total: usize) -> Result<cnnpack::train::Schedule> {
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
fn parse_distill(spec: Option<&str>, teacher: &Graph) -> Result<Option<cnnpack::train::Distill>> {
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
fn parse_augment(spec: Option<&str>) -> Result<Option<cnnpack::data::Augment>> {
    spec.map(|s| s.parse().map_err(anyhow::Error::from))
        .transpose()
}

fn train(args: &TrainArgs, default_epochs: usize, default_lr: f32) -> Result<()> {
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
/// Stores `graph`'s zeros as CSR per `policy`, prints a per-layer table and writes `output`
/// (shared by `compress sparse` and `compress dns`); byte ratios are against `original`.
fn compress_sparse(
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
fn compress_dns(
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

/// `graph` with every conv/fc weight stored dense (sparse layers expanded).
fn densify(graph: &Graph) -> Graph {
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

/// INQ on the survivors of DNS (`pruned`, zeros kept at zero), saved to `output`; prints
/// the bytes of CSR indices + b-bit codes against the dense f32 `original`.
fn dns_then_inq(
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
fn compress_inq(
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

/// Bytes of a graph's weights and constants as stored.
fn weight_bytes(graph: &Graph) -> Result<usize> {
    Ok(layer_stats(graph)?.iter().map(|l| l.weight_bytes).sum())
}

/// Prints the model's bytes before and after compression (plus `note`) and saves it.
fn save_compressed(original: &Graph, compressed: &Graph, output: &Path, note: &str) -> Result<()> {
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
