//! Dynamic network surgery (Guo, Yao, Chen, NIPS 2016, arXiv:1608.04493) and the
//! conversion of dense weights with exact zeros to the sparse (CSR) encoding.
//!
//! DNS keeps the dense weights W of every conv/fc layer and a binary mask T beside
//! them (`train::Masks::forward`). The forward and backward passes use W⊙T, the SGD
//! update reaches every entry of W (so pruned weights keep moving and may return).
//! Surgery h(W) per layer k, with thresholds `a_k = 0.9·t_k`, `b_k = 1.1·t_k`:
//! `T = 0` where `|W| < a_k` (prune), `T = 1` where `|W| ≥ b_k` (splice), T unchanged in
//! between (the hysteresis band keeps masks from flickering).
//! `t_k = max(mean|W_k| + c_k·std|W_k|, 0)` is computed once, from the initial
//! weights. Surgery runs after an update with probability `σ(iter) = (1 + γ·iter)^(−power)`
//! until `iter_stop`, then the masks are frozen and training continues on W⊙T.
//! At the end W⊙T is stored as `Weights::Sparse` (or dense above the CPU kernel
//! crossover density, see `SparsifyOptions`).
//!
//! Biases: the authors' Caffe code (`CConvolution`/`CInnerProduct` layers) masks
//! biases with the same rule and its own thresholds. Here biases are **not** pruned:
//! `train::Masks` masks weights only, and biases are 0.1% of LeNet-5's parameters
//! (580 of 431,080), so they stay dense and are counted in full in every byte and
//! nonzero figure.
//!
//! Result on this machine (2 shared cores; `cargo build --release`):
//! `cnnpack compress dns lenet5_original.onnx -o out.cnnpack --data mnist
//! --c conv1=1,conv2=3,ip1=4,ip2=2.5 --iters 4710 --batch 64` (lr 0.01, Caffe inv
//! policy, 30 epochs of the 10k-image train10k set, masks updated until iteration 3532),
//! 544 s of training: 3,829 of 430,500 weights nonzero (112.4x fewer; conv1 26.2%,
//! conv2 3.34%, ip1 0.65%, ip2 5.02%), t10k top-1 98.05% on CPU and GPU (the paper,
//! with 60k training images: 108x, 99.09%). Training accuracy reaches 99.9%: with a
//! sixth of MNIST the pruned net overfits. lr 0.001 and 0.003 recovered more slowly
//! (94.0% after 8 epochs, 97% after 11) and were stopped. With augmentation
//! (`--augment affine:2:10:0.1`, cosine schedule) the same `c` gives 85.7x at 98.80%, and
//! fixed-mask fine-tuning with distillation from the dense original 98.93%: the fixed
//! thresholds keep more weights when the gradients are larger (docs/results.md).

use super::CompressError;
use crate::backend::cpu::select;
use crate::graph::{Graph, Op, Rng};
use crate::train::Masks;
use crate::weights::{SparseWeights, Weights};
use std::collections::HashMap;

/// Which layers `sparsify_graph` stores sparse.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum SparsePolicy {
    /// Sparse where the CPU backend runs the CSR kernel faster (`select::stores_sparse`:
    /// density at most `CONV_CROSSOVER` for stride-1 convs, `STRIDED_CONV_CROSSOVER`
    /// for strided ones, `FC_CROSSOVER` for fc), dense above it (default).
    #[default]
    Crossover,
    /// Sparse where the density is at most this fraction.
    MaxDensity(f64),
    /// Every conv/fc layer sparse, whatever its density.
    All,
}

/// What the sparse conversion did to one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseReport {
    /// Node name.
    pub name: String,
    /// "conv" or "linear".
    pub op: &'static str,
    /// Logical weight shape.
    pub shape: Vec<usize>,
    /// Weight parameters.
    pub parameters: usize,
    /// Nonzero weights.
    pub nonzeros: usize,
    /// Dense weight bytes (f32); bias not counted.
    pub bytes_before: usize,
    /// Weight bytes after (CSR incl. indices and row pointers, or dense); bias not counted.
    pub bytes_after: usize,
    /// Whether the layer was stored sparse.
    pub sparse: bool,
}

impl SparseReport {
    /// Nonzeros over parameters, in [0, 1].
    pub fn density(&self) -> f64 {
        self.nonzeros as f64 / self.parameters.max(1) as f64
    }
}

/// Stores the exact zeros of every dense conv/fc weight as CSR (`Weights::Sparse`),
/// choosing per layer by `policy`; layers already sparse are re-encoded. Power-of-two
/// layers (INQ, e.g. after DNS) become CSR whose values stay power-of-two codes, or stay
/// pow2 where the policy keeps them dense; sketch layers are rejected. No value changes:
/// the result computes exactly what `graph` does.
pub fn sparsify_graph(
    graph: &Graph,
    policy: &SparsePolicy,
) -> Result<(Graph, Vec<SparseReport>), CompressError> {
    let mut out = graph.clone();
    let mut reports = Vec::new();
    for node in &mut out.nodes {
        let Some(crossover) = select::sparse_crossover(&node.op) else {
            continue;
        };
        let (weight, op) = match &mut node.op {
            Op::Conv(c) => (&mut c.weight, "conv"),
            Op::Linear(l) => (&mut l.weight, "linear"),
            _ => continue,
        };
        let codes = match &*weight {
            Weights::Pow2(p) => Some((p.bits(), p.n1())),
            Weights::Sparse(s) => s.value_codes().map(|c| (c.bits, c.n1)),
            _ => None,
        };
        let dense = match &*weight {
            Weights::Dense(t) => t.clone(),
            Weights::Sparse(s) => crate::graph::Tensor {
                shape: s.shape().to_vec(),
                data: s.dense_data(),
            },
            Weights::Pow2(p) => crate::graph::Tensor {
                shape: p.shape().to_vec(),
                data: p.dense_data(),
            },
            other => {
                return Err(CompressError::NotDense {
                    layer: node.name.clone(),
                    encoding: other.encoding(),
                })
            }
        };
        if dense.data.iter().any(|v| !v.is_finite()) {
            return Err(CompressError::NonFinite(node.name.clone()));
        }
        let mut sparse = SparseWeights::from_dense(dense.shape.clone(), &dense.data)
            .expect("from_dense gets data matching its shape");
        if let Some((bits, n1)) = codes {
            sparse = sparse
                .with_value_codes(bits, n1)
                .expect("values decoded from codes of this set encode back");
        }
        let density = sparse.density();
        let keep_sparse = match policy {
            // `select::stores_sparse` for this op: the executor's own crossover (a conv
            // stored sparse runs the CSR kernel).
            SparsePolicy::Crossover => density <= crossover,
            SparsePolicy::MaxDensity(d) => density <= *d,
            SparsePolicy::All => true,
        };
        let kept = match (&*weight, keep_sparse) {
            (_, true) => Weights::Sparse(sparse.clone()),
            (Weights::Pow2(p), false) => Weights::Pow2(p.clone()),
            (_, false) => Weights::Dense(dense.clone()),
        };
        let report = SparseReport {
            name: node.name.clone(),
            op,
            shape: dense.shape.clone(),
            parameters: dense.data.len(),
            nonzeros: sparse.nnz(),
            bytes_before: dense.bytes(),
            bytes_after: kept.bytes(),
            sparse: keep_sparse,
        };
        *weight = kept;
        reports.push(report);
    }
    Ok((out, reports))
}

/// Errors of dynamic network surgery; each names the layer or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A layer named in the options is not a conv/fc node.
    #[error("layer '{0}' named in --c is not a conv or linear node of the graph")]
    UnknownLayer(String),
    /// A layer whose weights are not dense.
    #[error("layer '{layer}' holds {encoding} weights; DNS needs dense weights")]
    NotDense {
        /// The layer.
        layer: String,
        /// Its encoding.
        encoding: &'static str,
    },
    /// A layer with NaN or infinite weights.
    #[error("layer '{0}' has non-finite (NaN or infinite) weights")]
    NonFinite(String),
    /// A bad option.
    #[error("option {name}: {reason}")]
    Option {
        /// The option.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Training failed.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// The final sparse conversion failed.
    #[error(transparent)]
    Compress(#[from] CompressError),
}

/// Settings of dynamic network surgery.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsOptions {
    /// c for layers not in `c_per_layer` (t = mean|W| + c·std|W|).
    pub c: f64,
    /// Per-layer c by node name.
    pub c_per_layer: HashMap<String, f64>,
    /// Per-layer initial density by node name, an alternative to c: the layer's `t` is
    /// set so that the first surgery keeps exactly this fraction of its weights (the
    /// prune threshold `a = 0.9·t` falls on the k-th largest |w|). Handy for a surgery
    /// run that starts from an already sparse model, where mean|W| and std|W| count the
    /// zeros and c loses its usual meaning.
    pub density_per_layer: HashMap<String, f64>,
    /// γ of the surgery probability `σ(iter) = (1 + γ·iter)^(−power)`.
    pub gamma: f64,
    /// power of the surgery probability.
    pub power: f64,
    /// Masks are updated only at iterations `< iter_stop`.
    pub iter_stop: usize,
    /// Seed of the surgery coin flips.
    pub seed: u64,
    /// How the result is encoded.
    pub policy: SparsePolicy,
}

impl Default for DnsOptions {
    /// c = 1 everywhere, γ = 1e-4, power = 1, surgery for ever, seed 7, crossover policy.
    fn default() -> Self {
        DnsOptions {
            c: 1.0,
            c_per_layer: HashMap::new(),
            density_per_layer: HashMap::new(),
            gamma: 1e-4,
            power: 1.0,
            iter_stop: usize::MAX,
            seed: 7,
            policy: SparsePolicy::Crossover,
        }
    }
}

/// The surgery thresholds of one layer: prune below `a`, splice at or above `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// `0.9·t`.
    pub a: f32,
    /// `1.1·t`.
    pub b: f32,
}

impl Thresholds {
    /// From `t = max(mean|w| + c·std|w|, 0)` over all entries of `w` (f64 sums; std is
    /// the population standard deviation of |w|, as in the authors' Caffe layers).
    pub fn from_weights(w: &[f32], c: f64) -> Thresholds {
        let n = w.len().max(1) as f64;
        let mean = w.iter().map(|v| v.abs() as f64).sum::<f64>() / n;
        let var = w
            .iter()
            .map(|v| (v.abs() as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let t = (mean + c * var.sqrt()).max(0.0);
        Thresholds {
            a: (0.9 * t) as f32,
            b: (1.1 * t) as f32,
        }
    }

    /// The thresholds whose first surgery keeps the `density` fraction of `w` (rounded
    /// up to whole weights, at least one): `a` is the k-th largest |w|, `t = a / 0.9`.
    /// Ties at the k-th magnitude all stay.
    pub fn for_density(w: &[f32], density: f64) -> Thresholds {
        let mut mags: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        if mags.is_empty() {
            return Thresholds { a: 0.0, b: 0.0 };
        }
        let k =
            ((density.clamp(0.0, 1.0) * mags.len() as f64).ceil() as usize).clamp(1, mags.len());
        let (_, kth, _) = mags.select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x));
        let a = *kth;
        let t = a as f64 / 0.9;
        Thresholds {
            a,
            b: (1.1 * t) as f32,
        }
    }

    /// The c that `from_weights` would need to give these thresholds' `t` (for reports).
    pub fn implied_c(&self, w: &[f32]) -> f64 {
        let n = w.len().max(1) as f64;
        let mean = w.iter().map(|v| v.abs() as f64).sum::<f64>() / n;
        let std = (w
            .iter()
            .map(|v| (v.abs() as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let t = self.a as f64 / 0.9;
        if std > 0.0 {
            (t - mean) / std
        } else {
            0.0
        }
    }
}

/// h(W): `T = 0` where `|w| < a`, `T = 1` where `|w| ≥ b`, unchanged in between.
/// Returns (pruned, spliced) counts of entries that changed.
pub fn surgery(w: &[f32], mask: &mut [bool], th: Thresholds) -> (usize, usize) {
    let (mut pruned, mut spliced) = (0, 0);
    for (v, m) in w.iter().zip(mask.iter_mut()) {
        let a = v.abs();
        if a < th.a {
            pruned += *m as usize;
            *m = false;
        } else if a >= th.b {
            spliced += !*m as usize;
            *m = true;
        }
    }
    (pruned, spliced)
}

/// Surgery probability at iteration `iter`: `(1 + γ·iter)^(−power)`.
pub fn surgery_probability(iter: usize, gamma: f64, power: f64) -> f64 {
    (1.0 + gamma * iter as f64).powf(-power)
}

/// The DNS state: per-layer thresholds (fixed at the start) and the coin-flip source.
/// Drive it with `start` once, then `step` after every update (the `train` hook).
#[derive(Clone, Debug)]
pub struct Surgeon {
    /// Thresholds per conv/fc node name.
    pub thresholds: HashMap<String, Thresholds>,
    opts: DnsOptions,
    rng: Rng,
    /// Surgeries performed so far (iterations at which the masks were updated).
    pub surgeries: usize,
}

impl Surgeon {
    /// Computes every conv/fc layer's thresholds from the current (initial) weights.
    pub fn new(graph: &Graph, opts: &DnsOptions) -> Result<Surgeon, DnsError> {
        for name in opts.c_per_layer.keys().chain(opts.density_per_layer.keys()) {
            if !graph
                .nodes
                .iter()
                .any(|n| &n.name == name && matches!(n.op, Op::Conv(_) | Op::Linear(_)))
            {
                return Err(DnsError::UnknownLayer(name.clone()));
            }
        }
        if let Some((name, d)) = opts
            .density_per_layer
            .iter()
            .find(|(_, d)| !(**d > 0.0 && **d <= 1.0))
        {
            return Err(DnsError::Option {
                name: "density",
                reason: format!("{name}: must be in (0, 1], got {d}"),
            });
        }
        if let Some(name) = opts
            .density_per_layer
            .keys()
            .find(|n| opts.c_per_layer.contains_key(*n))
        {
            return Err(DnsError::Option {
                name: "density",
                reason: format!("{name} has both a c and a density; give one"),
            });
        }
        if !(opts.gamma >= 0.0 && opts.power >= 0.0) {
            return Err(DnsError::Option {
                name: "gamma/power",
                reason: format!("must be >= 0, got {} / {}", opts.gamma, opts.power),
            });
        }
        let mut thresholds = HashMap::new();
        for node in &graph.nodes {
            let Some(w) = node.op.weights() else { continue };
            let Weights::Dense(t) = w else {
                return Err(DnsError::NotDense {
                    layer: node.name.clone(),
                    encoding: w.encoding(),
                });
            };
            if t.data.iter().any(|v| !v.is_finite()) {
                return Err(DnsError::NonFinite(node.name.clone()));
            }
            let th = match opts.density_per_layer.get(&node.name) {
                Some(&d) => Thresholds::for_density(&t.data, d),
                None => {
                    let c = opts.c_per_layer.get(&node.name).copied().unwrap_or(opts.c);
                    Thresholds::from_weights(&t.data, c)
                }
            };
            thresholds.insert(node.name.clone(), th);
        }
        Ok(Surgeon {
            thresholds,
            opts: opts.clone(),
            rng: Rng::new(opts.seed),
            surgeries: 0,
        })
    }

    /// Initial masks: all ones, then one surgery (iteration 0 has probability 1).
    pub fn start(&mut self, graph: &Graph) -> Masks {
        let mut masks = Masks::new();
        for node in &graph.nodes {
            if let (Some(w), Some(th)) = (node.op.weights(), self.thresholds.get(&node.name)) {
                let w = w.to_dense();
                let mut m = vec![true; w.data.len()];
                surgery(&w.data, &mut m, *th);
                masks.forward.insert(node.name.clone(), m);
            }
        }
        self.surgeries += 1;
        masks
    }

    /// Called after the update of iteration `iter`: with probability σ(iter + 1), and
    /// only while `iter + 1 < iter_stop`, applies h to every layer's mask for the next
    /// iteration. Returns whether surgery ran.
    pub fn step(&mut self, graph: &Graph, masks: &mut Masks, iter: usize) -> bool {
        let next = iter + 1;
        if next >= self.opts.iter_stop {
            return false;
        }
        let p = surgery_probability(next, self.opts.gamma, self.opts.power);
        if self.rng.uniform() as f64 >= p {
            return false;
        }
        for node in &graph.nodes {
            let (Some(w), Some(th)) = (node.op.weights(), self.thresholds.get(&node.name)) else {
                continue;
            };
            if let (Weights::Dense(t), Some(m)) = (w, masks.forward.get_mut(&node.name)) {
                surgery(&t.data, m, *th);
            }
        }
        self.surgeries += 1;
        true
    }
}

/// Runs DNS on `graph` (dense conv/fc weights): thresholds from the initial weights,
/// masks from one surgery, then `crate::train::train` with surgery in the hook, and
/// finally W⊙T encoded per `opts.policy`. `on_iter` sees every iteration (progress).
/// Returns the compressed graph, the per-layer report and the epoch statistics.
pub fn dns(
    graph: &Graph,
    train: &crate::data::Dataset,
    test: Option<&crate::data::Dataset>,
    train_opts: &crate::train::TrainOptions,
    opts: &DnsOptions,
    mut on_iter: impl FnMut(&crate::train::IterInfo<'_>),
) -> Result<(Graph, Vec<SparseReport>, Vec<crate::train::EpochStats>), DnsError> {
    let mut g = graph.clone();
    let mut surgeon = Surgeon::new(&g, opts)?;
    let mut masks = surgeon.start(&g);
    let stats = crate::train::train(&mut g, train, test, train_opts, &mut masks, |info| {
        on_iter(&info);
        surgeon.step(info.graph, info.masks, info.iter);
    })?;
    masks
        .apply_forward(&mut g)
        .map_err(crate::train::TrainError::from)?;
    let (out, report) = sparsify_graph(&g, &opts.policy)?;
    Ok((out, report, stats))
}
