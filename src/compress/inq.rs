//! Incremental network quantization (INQ, Zhou et al., ICLR 2017, arXiv:1702.03044).
//!
//! Each conv/fc layer's weights become powers of two or zero, `P = {0, ±2^n2..±2^n1}`
//! (see `weights/pow2.rs`), in steps:
//! 1. per layer `s = max|W|` of the pretrained weights, `n1 = floor(log2(4s/3))`,
//!    `n2 = n1 + 1 − 2^(b−2)` (fixed for the whole run). Deviation: for b = 2 (ternary)
//!    `n1` minimises the layer's squared quantization error instead (see `layer_n1`);
//! 2. for each accumulated portion σ_i (default 0.5, 0.75, 0.875, 1): the weights not yet
//!    quantized are partitioned, the next ones up to `round(σ_i·N)` quantized weights per
//!    layer are chosen — largest `|W|` first ("pruning-inspired", the paper's default)
//!    or in a seeded random order — and set to their value in P (eq. 4);
//! 3. the quantized weights are frozen (a gradient mask, `train::Masks::grad`) and the
//!    others are retrained with SGD (`train::train`) for the given epochs, which lets
//!    them compensate for the quantization error;
//! 4. after the last portion (σ = 1) every weight is in P and the layer is encoded as
//!    `Weights::Pow2`. No retraining follows the last portion: nothing is free.
//!
//! Quantization rule (eq. 4): with the positive part of P sorted,
//! `0 < 2^n2 < … < 2^n1`, a weight becomes `β·sgn(W)` when `(α+β)/2 ≤ |W| < 3β/2` for
//! adjacent `α < β` (α = 0 below the smallest power), and 0 when `|W| < 2^n2 / 2`.
//! `|W| ≥ 3·2^n1/2` (possible after retraining) clamps to `±2^n1`. Ties go to the
//! larger magnitude. Arithmetic is exact (f64 on f32 inputs).
//!
//! Without training data the pass is one-step quantization of every weight, with no
//! retraining (`inq_graph` with `train = None`).
//!
//! Biases stay f32. Layers named in `dense_layers` stay dense and are still retrained.
//!
//! Measured (2-core shared machine, `cnnpack compress inq` then `cnnpack eval --device
//! cpu`): LeNet-5 on MNIST t10k (dense 99.09%), retrained on train10k, magnitude
//! partition, 1 epoch per step at lr 0.001 unless noted: 5 bits 99.08%, 4 bits 99.02%
//! (random partition 99.02%), 3 bits 98.30% (2 epochs, lr 0.005: 98.40%), 2 bits
//! 98.67% (2 epochs, lr 0.005: 98.59%); one step without retraining: 4 bits 98.92%,
//! 3 bits 98.19%, 2 bits 97.99%. Most of the loss at 3 and 2 bits comes from the last
//! portion, which is never retrained (3 bits, 2 epochs: 98.96% before it). SqueezeNet
//! 1.0 without retraining collapses (ImageNet samples, dense 63.0/82.4: 5 bits
//! 9.8/25.0, 4 bits 1.2/4.2): each layer's powers of two carry ~20% relative error,
//! compounding over 26 layers; INQ needs its retraining there.

use super::sketch::relative_error;
use super::CompressError;
use crate::data::Dataset;
use crate::graph::{Graph, Op, Rng, Tensor};
use crate::train::{train, EpochStats, Masks, TrainError, TrainOptions};
use crate::weights::{encode_power, magnitudes, Pow2Weights, Weights, N1_MAX, N1_MIN};
use std::collections::HashMap;

/// How the not-yet-quantized weights are ordered for the next portion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Largest `|W|` first (the paper's "pruning-inspired" strategy); ties by index.
    Magnitude,
    /// A random order drawn once per layer from the seed.
    Random,
}

/// Settings of `inq_graph`.
#[derive(Clone, Debug, PartialEq)]
pub struct InqOptions {
    /// Bits per weight (b, 2..=5).
    pub bits: u32,
    /// Accumulated portions of quantized weights, increasing, in (0, 1], the last 1.
    pub portions: Vec<f64>,
    /// Partition strategy.
    pub partition: Partition,
    /// Seed of the random partition.
    pub seed: u64,
    /// Conv/fc node names to leave dense.
    pub dense_layers: Vec<String>,
    /// Epochs of retraining after the last portion, with every quantized weight frozen:
    /// only the f32 parameters (biases, layers in `dense_layers`) move. 0 (default)
    /// stops at the last portion as the paper's procedure does.
    pub bias_epochs: usize,
    /// Keep exact zeros at zero (DNS then INQ): weights that are 0 at the start are
    /// frozen from the start, the portions count the nonzero weights only, and the
    /// ternary n1 is fitted to the nonzeros.
    pub keep_zeros: bool,
}

/// 5 bits, portions 0.5/0.75/0.875/1, magnitude partition, every layer quantized.
impl Default for InqOptions {
    fn default() -> Self {
        InqOptions {
            bits: 5,
            portions: vec![0.5, 0.75, 0.875, 1.0],
            partition: Partition::Magnitude,
            seed: 1,
            dense_layers: Vec::new(),
            bias_epochs: 0,
            keep_zeros: false,
        }
    }
}

/// What INQ did to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Node name.
    pub name: String,
    /// "conv" or "linear".
    pub op: &'static str,
    /// Logical weight shape.
    pub shape: Vec<usize>,
    /// Bits per weight (b).
    pub bits: u32,
    /// Largest exponent n1.
    pub n1: i32,
    /// Distinct values among the quantized weights (at most `2^(b−1) + 1`).
    pub distinct: usize,
    /// `||W − Ŵ||_F / ||W||_F` of the final weights against the original ones.
    pub rel_error: f64,
    /// Weight bytes before (dense f32); bias not counted.
    pub bytes_before: usize,
    /// Weight bytes after (code words); bias not counted.
    pub bytes_after: usize,
}

/// Progress of `inq_graph` after each portion.
#[derive(Clone, Debug)]
pub struct StepReport<'a> {
    /// Step index (0-based).
    pub step: usize,
    /// Accumulated portion quantized after this step.
    pub portion: f64,
    /// Quantized weights over all quantized layers after this step.
    pub quantized: usize,
    /// Weights over all quantized layers.
    pub total: usize,
    /// Retraining epochs of this step (empty without data; after the last portion, the
    /// `bias_epochs` of bias-only retraining).
    pub epochs: Vec<EpochStats>,
    /// The graph after this step's quantization and retraining (still dense weights).
    pub graph: &'a Graph,
    /// This step's gradient masks per quantized layer (`false` = quantized, frozen).
    pub masks: &'a Masks,
}

/// Errors of INQ: compression-option errors and retraining errors.
#[derive(Debug, thiserror::Error)]
pub enum InqError {
    /// A bad layer or option.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// A bad INQ option.
    #[error("INQ option {name}: {reason}")]
    Option {
        /// The option.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Retraining failed.
    #[error("INQ retraining: {0}")]
    Train(#[from] TrainError),
}

/// Training data of `inq_graph`: training set, optional test set, and the SGD
/// settings of each portion's retraining (`epochs` is per portion).
pub type TrainData<'a> = (&'a Dataset, Option<&'a Dataset>, TrainOptions);

/// `n1 = floor(log2(4s/3))` for the layer's largest magnitude `s > 0`, clamped to the
/// encodable range; 0 for an all-zero layer.
pub fn choose_n1(s: f32) -> i32 {
    if s <= 0.0 || !s.is_finite() {
        return 0;
    }
    let v = 4.0 * s as f64 / 3.0;
    let mut n = v.log2().floor() as i32;
    // Guard against log2 rounding at exact powers of two.
    while (2f64).powi(n + 1) <= v {
        n += 1;
    }
    while (2f64).powi(n) > v {
        n -= 1;
    }
    n.clamp(N1_MIN, N1_MAX)
}

/// The layer's `n1`: the paper's `choose_n1(max|W|)` for b ≥ 3. For b = 2 (ternary,
/// a single magnitude) that rule sets `2^n1 ≈ max|W|` and zeroes every weight below
/// half of it, which on LeNet-5 zeroes almost every weight (30.7% top-1 after
/// retraining); instead b = 2 takes the `n1 ≤ choose_n1(s)` (at most 12 below) that
/// minimises the layer's squared quantization error.
pub fn layer_n1(w: &[f32], s: f32, bits: u32) -> i32 {
    let top = choose_n1(s);
    if bits != 2 || s <= 0.0 {
        return top;
    }
    let err = |n1: i32| -> f64 {
        w.iter()
            .map(|&v| (v as f64 - quantize_value(v, bits, n1) as f64).powi(2))
            .sum()
    };
    let mut best = (top, err(top));
    for n in (top - 12).max(N1_MIN)..top {
        let e = err(n);
        if e < best.1 {
            best = (n, e);
        }
    }
    best.0
}

/// Exponent of the quantized value of `w` (eq. 4), or `None` for 0. Values above the
/// range clamp to `n1`.
pub fn quantize_exponent(w: f32, bits: u32, n1: i32) -> Option<i32> {
    let a = (w as f64).abs();
    let n2 = n1 + 1 - magnitudes(bits) as i32;
    // From the largest magnitude down: the first β with (α+β)/2 ≤ |W| wins.
    for n in (n2..=n1).rev() {
        let beta = (2f64).powi(n);
        let alpha = if n > n2 { (2f64).powi(n - 1) } else { 0.0 };
        if a >= (alpha + beta) / 2.0 {
            return Some(n);
        }
    }
    None
}

/// The value in P that `w` quantizes to.
pub fn quantize_value(w: f32, bits: u32, n1: i32) -> f32 {
    match quantize_exponent(w, bits, n1) {
        Some(n) => {
            let v = crate::weights::pow2_f32(n);
            if w < 0.0 {
                -v
            } else {
                v
            }
        }
        None => 0.0,
    }
}

/// Encodes a tensor whose every value is in P (`quantize_value` output) as Pow2.
pub fn encode_quantized(w: &Tensor, bits: u32, n1: i32) -> Pow2Weights {
    let codes: Vec<u8> = w
        .data
        .iter()
        .map(|&v| match quantize_exponent(v, bits, n1) {
            Some(n) => encode_power(bits, n1, v < 0.0, n).expect("exponent within [n2, n1]"),
            None => 0,
        })
        .collect();
    Pow2Weights::from_codes(w.shape.clone(), bits, n1, &codes)
        .expect("encode_quantized sizes the codes from the shape")
}

/// Number of quantized weights of an `n`-weight layer at accumulated portion `p`.
pub fn portion_count(p: f64, n: usize) -> usize {
    if p >= 1.0 {
        n
    } else {
        ((p * n as f64).round() as usize).min(n)
    }
}

/// Marks `count − already` more weights as quantized (`frozen[i] = true`), choosing
/// among the free ones by `partition`; `order` is the layer's random order.
pub fn select_next(
    values: &[f32],
    frozen: &mut [bool],
    count: usize,
    partition: Partition,
    order: &[usize],
) {
    let already = frozen.iter().filter(|f| **f).count();
    if count <= already {
        return;
    }
    let need = count - already;
    match partition {
        Partition::Magnitude => {
            if need >= frozen.len() - already {
                // The last portion takes every weight left: no order to find.
                frozen.iter_mut().for_each(|f| *f = true);
                return;
            }
            // Largest |W| first, ties by index. Keys sorted in one contiguous array (not
            // indices compared through `values`): the same order, far fewer cache misses
            // on AlexNet's 37M-weight fc6.
            let mut free: Vec<(std::cmp::Reverse<u32>, usize)> = (0..values.len())
                .filter(|&i| !frozen[i])
                .map(|i| (std::cmp::Reverse(values[i].abs().to_bits()), i))
                .collect();
            free.sort_unstable();
            for &(_, i) in free.iter().take(need) {
                frozen[i] = true;
            }
        }
        Partition::Random => {
            let mut left = need;
            for &i in order {
                if left == 0 {
                    break;
                }
                if !frozen[i] {
                    frozen[i] = true;
                    left -= 1;
                }
            }
        }
    }
}

struct LayerState {
    name: String,
    op: &'static str,
    original: Tensor,
    n1: i32,
    frozen: Vec<bool>,
    /// Weights frozen at zero from the start (`keep_zeros`), else 0.
    zeros: usize,
    order: Vec<usize>,
}

fn weight_mut<'a>(graph: &'a mut Graph, name: &str) -> &'a mut Tensor {
    let node = graph
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .expect("INQ layer list comes from this graph");
    match &mut node.op {
        Op::Conv(c) => match &mut c.weight {
            Weights::Dense(t) => t,
            _ => unreachable!("INQ checked that its layers are dense"),
        },
        Op::Linear(l) => match &mut l.weight {
            Weights::Dense(t) => t,
            _ => unreachable!("INQ checked that its layers are dense"),
        },
        _ => unreachable!("INQ layers are conv or linear"),
    }
}

/// Quantizes every Conv and Linear node not in `opts.dense_layers` to powers of two.
///
/// With `train = Some((train_set, test_set, sgd))` the weights are quantized in the
/// portions of `opts.portions`, retraining the free weights for `sgd.epochs` epochs
/// after each portion but the last; with `None`, in one step without retraining.
/// `progress` is called after each step.
///
/// Errors: unknown names in `dense_layers`, a non-dense or non-finite layer (named),
/// bits outside 2..=5, bad portions, retraining failures.
pub fn inq_graph(
    graph: &Graph,
    opts: &InqOptions,
    train_data: Option<TrainData<'_>>,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<(Graph, Vec<LayerReport>), InqError> {
    if !(2..=5).contains(&opts.bits) {
        return Err(InqError::Option {
            name: "bits",
            reason: format!("{} is outside 2..=5", opts.bits),
        });
    }
    let portions = if train_data.is_some() {
        opts.portions.clone()
    } else {
        vec![1.0]
    };
    let increasing = portions.windows(2).all(|w| w[0] < w[1]);
    if portions.is_empty()
        || !increasing
        || portions[0] <= 0.0
        || portions.last().copied() != Some(1.0)
    {
        return Err(InqError::Option {
            name: "portions",
            reason: format!(
                "{portions:?}: need increasing accumulated portions in (0, 1] ending at 1"
            ),
        });
    }
    for name in &opts.dense_layers {
        let ok = graph
            .nodes
            .iter()
            .any(|n| &n.name == name && matches!(n.op, Op::Conv(_) | Op::Linear(_)));
        if !ok {
            return Err(CompressError::UnknownLayer(name.clone()).into());
        }
    }
    let mut out = graph.clone();
    let mut layers = Vec::new();
    for node in &graph.nodes {
        let (weight, op) = match &node.op {
            Op::Conv(c) => (&c.weight, "conv"),
            Op::Linear(l) => (&l.weight, "linear"),
            _ => continue,
        };
        if opts.dense_layers.contains(&node.name) {
            continue;
        }
        let Weights::Dense(w) = weight else {
            return Err(CompressError::NotDense {
                layer: node.name.clone(),
                encoding: weight.encoding(),
            }
            .into());
        };
        if w.data.iter().any(|v| !v.is_finite()) {
            return Err(CompressError::NonFinite(node.name.clone()).into());
        }
        let s = w.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let n = w.data.len();
        let mut order: Vec<usize> = (0..n).collect();
        if opts.partition == Partition::Random {
            let mut rng = Rng::new(opts.seed ^ hash_name(&node.name));
            for i in (1..n).rev() {
                order.swap(i, rng.range(0, i));
            }
        }
        let (frozen, n1) = if opts.keep_zeros {
            let nonzero: Vec<f32> = w.data.iter().copied().filter(|v| *v != 0.0).collect();
            (
                w.data.iter().map(|v| *v == 0.0).collect::<Vec<bool>>(),
                layer_n1(&nonzero, s, opts.bits),
            )
        } else {
            (vec![false; n], layer_n1(&w.data, s, opts.bits))
        };
        let zeros = frozen.iter().filter(|f| **f).count();
        layers.push(LayerState {
            name: node.name.clone(),
            op,
            original: w.clone(),
            n1,
            frozen,
            zeros,
            order,
        });
    }
    let total: usize = layers.iter().map(|l| l.frozen.len()).sum();
    for (step, &p) in portions.iter().enumerate() {
        let mut quantized = 0;
        for l in &mut layers {
            let t = weight_mut(&mut out, &l.name);
            let count = l.zeros + portion_count(p, t.data.len() - l.zeros);
            let before = l.frozen.clone();
            select_next(&t.data, &mut l.frozen, count, opts.partition, &l.order);
            for (i, v) in t.data.iter_mut().enumerate() {
                if l.frozen[i] && !before[i] {
                    *v = quantize_value(*v, opts.bits, l.n1);
                }
            }
            quantized += count;
        }
        let mut epochs = Vec::new();
        let last = step + 1 == portions.len();
        let mut masks = Masks::new();
        for l in &layers {
            masks
                .grad
                .insert(l.name.clone(), l.frozen.iter().map(|f| !f).collect());
        }
        if let (Some((tr, te, sgd)), false) = (&train_data, last) {
            epochs = train(&mut out, tr, *te, sgd, &mut masks, |_| {})?;
        }
        if let (Some((tr, te, sgd)), true, true) = (&train_data, last, opts.bias_epochs > 0) {
            // Every quantized weight is frozen now (all gradient masks false): this
            // retrains only the biases and the layers kept dense.
            let sgd = TrainOptions {
                epochs: opts.bias_epochs,
                ..sgd.clone()
            };
            epochs = train(&mut out, tr, *te, &sgd, &mut masks, |_| {})?;
        }
        progress(&StepReport {
            step,
            portion: p,
            quantized,
            total,
            epochs,
            graph: &out,
            masks: &masks,
        });
    }
    let mut reports = Vec::new();
    let index: HashMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    for node in &mut out.nodes {
        let Some(&i) = index.get(node.name.as_str()) else {
            continue;
        };
        let l = &layers[i];
        let weight = match &mut node.op {
            Op::Conv(c) => &mut c.weight,
            Op::Linear(lin) => &mut lin.weight,
            _ => unreachable!("INQ layers are conv or linear"),
        };
        let Weights::Dense(t) = &*weight else {
            unreachable!("INQ layers stay dense until encoded")
        };
        let enc = encode_quantized(t, opts.bits, l.n1);
        let dense = enc.dense_data();
        let mut vals: Vec<u32> = dense.iter().map(|v| v.to_bits()).collect();
        vals.sort_unstable();
        vals.dedup();
        reports.push(LayerReport {
            name: l.name.clone(),
            op: l.op,
            shape: t.shape.clone(),
            bits: opts.bits,
            n1: l.n1,
            distinct: vals.len(),
            rel_error: relative_error(&l.original.data, &dense),
            bytes_before: l.original.bytes(),
            bytes_after: enc.bytes(),
        });
        *weight = Weights::Pow2(enc);
    }
    Ok((out, reports))
}

/// FNV-1a of a layer name, so each layer's random order differs for one seed.
fn hash_name(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
