//! The `cnnpack` command line: a thin layer over the library. Errors are printed
//! once and map to exit code 1; a panic anywhere is a bug.

mod cli;
mod demo;

use cli::*;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use cnnpack::engine::DeviceKind;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cnnpack",
    version,
    about = "Compress CNNs (network sketching, INQ, DNS) and run them on wgpu or the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Force a kernel choice, KEY=VALUE (repeatable): e.g. gpu.conv_kernel=tiled,
    /// cpu.avx512=false, gpu.fc_split_k=8; `--tune help` lists every key. The older
    /// CNNPACK_* variables (CNNPACK_CONV_KERNEL, CNNPACK_CPU_NO_AVX512, ...) still
    /// apply, and these flags override them.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    tune: Vec<String>,
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
    /// Train a model (e.g. zoo:lenet5, randomly initialised) on a data set, on the CPU (default) or the GPU (`--device gpu`).
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
    /// Export a model to ONNX (opset 17; compressed weights are expanded to f32).
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
        /// Timed runs per configuration (fewer if --budget runs out; at least 3), after at
        /// least 1 s of untimed runs (an idle GPU runs at low clocks at first). Layer times
        /// are medians over up to 5 more, profiled runs; on a GPU each layer is its own
        /// pass, or with --tune gpu.profile=in-pass (where the adapter can) timed
        /// between the dispatches of one pass, as unprofiled runs execute them.
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
    // Reuse freed activation buffers across runs (see the function's docs).
    cnnpack::backend::cpu::keep_freed_memory();
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
    if cli.tune.iter().any(|t| t == "help") {
        println!("--tune keys (KEY=VALUE; `none` restores a chosen default):");
        for key in cnnpack::tuning::Tuning::keys() {
            println!("  {key}");
        }
        return Ok(());
    }
    set_engine_options(&cli.tune)?;
    let Some(command) = cli.command else {
        anyhow::bail!("a command is needed (`cnnpack --help` lists them)");
    };
    match command {
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
