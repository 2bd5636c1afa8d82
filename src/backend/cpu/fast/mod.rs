//! Fast CPU kernels (rayon, GEMM) and the executor that picks them per node.
//! Ops without a fast kernel here run their reference kernel, which is already
//! memory-bound-cheap for them (element-wise, layout).

mod dense;
mod eltwise;
mod gemm;
mod layout;
mod packed;
mod pool;
pub mod pow2;
pub mod sketch;
mod sketch_masks;
pub mod sketch_triplets;
pub mod sparse;

pub use dense::{conv2d, conv2d_relu, depthwise_conv2d, is_depthwise, linear, linear_isa};
pub use layout::{concat, slice, transpose};
pub use packed::{conv2d_packed, PackedConv};
pub use pool::{avg_pool, max_pool};

pub(crate) use dense::gemv_supported;
pub(crate) use sketch_masks::supported as sketch_masks_supported;

use super::select::{self, ConvChoice, CpuChoice, FcChoice};
use super::{reference, CpuError};
use crate::graph::{Conv2d, Graph, Linear, Node, Op, Tensor};
use crate::plan::PlanOptions;
use crate::tuning::CpuOptions;
use crate::weights::Weights;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Which fc kernel a compressed Linear runs (`pow2::pow2_linear_with`,
/// `sketch::sketch_linear_with`): for tests and benches that compare them. Each reads
/// only the compressed weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FcKernel {
    /// The fastest one this CPU has: `Avx512`, else `Avx2`, else a portable kernel.
    Auto,
    /// The AVX2 + FMA kernels. pow2: `vpshufb` byte tables on the codes up to batch 10,
    /// rows decoded by them into the GEMM's panels above. sketch: 3-input tables at
    /// batch 1, decoded rows into the blocked GEMV at 2-15 and the GEMM's panels above.
    Avx2,
    /// The AVX-512F kernels (pow2: a 32-entry f32 table looked up by `vpermt2ps`, up to
    /// batch 64; sketch: bits as lane masks, up to batch 16); larger batches as `Avx2`,
    /// with the GEMM's AVX-512 micro-kernel.
    Avx512,
}

impl FcKernel {
    /// Whether this CPU runs the kernel (`Auto` always runs).
    pub fn supported(self) -> bool {
        match self {
            FcKernel::Auto => true,
            FcKernel::Avx2 => dense::gemv_supported(),
            FcKernel::Avx512 => avx512_detected(),
        }
    }
}

/// The vector instruction sets the CPU kernels may use: what this CPU has, less what
/// `CpuOptions` turns off. A model (`Prepared`) holds one and hands it to every
/// kernel that has variants per instruction set; the free functions (`run_node`,
/// `linear`, ...) use `Isa::default()`, everything the CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa {
    avx512: bool,
}

impl Isa {
    /// What this CPU has (detected once by std), less what `options` turns off.
    pub fn new(options: &CpuOptions) -> Isa {
        Isa {
            avx512: options.avx512 && avx512_detected(),
        }
    }

    /// Every instruction set level this CPU runs, best first: with AVX-512F, both it
    /// and AVX2 (tests run every kernel at each).
    pub fn available() -> Vec<Isa> {
        let best = Isa::default();
        let mut all = vec![best];
        if best.avx512 {
            all.push(Isa { avx512: false });
        }
        all
    }

    /// Whether the AVX-512F kernels run.
    pub fn avx512(self) -> bool {
        self.avx512
    }

    /// The compressed fc kernel choice that keeps to this level (`FcKernel::Auto`
    /// takes AVX-512F where the CPU has it).
    pub fn fc_kernel(self) -> FcKernel {
        if self.avx512 {
            FcKernel::Auto
        } else {
            FcKernel::Avx2
        }
    }

    /// `avx512` or `avx2` (the level; a CPU without AVX2 runs portable kernels at
    /// either), for test and bench labels.
    pub fn name(self) -> &'static str {
        if self.avx512 {
            "avx512"
        } else {
            "avx2"
        }
    }
}

impl Default for Isa {
    fn default() -> Isa {
        Isa::new(&CpuOptions::default())
    }
}

/// Whether this CPU has AVX-512F (detected once by std).
pub(crate) fn avx512_detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A vector of `len` floats to be written before it is read (`assume_init` hands it
/// over): for outputs that the kernels overwrite whole, which a zero fill would pass
/// over once more.
fn uninit_vec(len: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation; the capacity was just reserved.
    unsafe { v.set_len(len) };
    v
}

/// The floats of `v` (from `uninit_vec`), without a copy.
///
/// # Safety
/// Every element of `v` has been written.
unsafe fn assume_init(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: all elements initialised (the caller's contract); MaybeUninit<f32> and
    // f32 have the same layout, and the allocation is handed over whole.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
}

/// Runs one node with the fastest CPU kernel for its op and weight encoding (everything
/// this CPU has; a compressed conv is decoded for this call: repeated runs go through
/// a [`Prepared`] model, which decodes once).
pub fn run_node(node: &Node, inputs: &[&Tensor]) -> Result<Tensor, CpuError> {
    run_node_in(None, Isa::default(), node, inputs)
}

/// As `run_node`, on the kernels of `isa` (tests run every level).
pub fn run_node_isa(node: &Node, inputs: &[&Tensor], isa: Isa) -> Result<Tensor, CpuError> {
    run_node_in(None, isa, node, inputs)
}

/// As `run_node`, on the kernels of `isa`, a conv on its prepared weights when
/// `prepared` has them. Convs and fcs run the kernel `choice_in` names.
fn run_node_in(
    prepared: Option<&Prepared>,
    isa: Isa,
    node: &Node,
    inputs: &[&Tensor],
) -> Result<Tensor, CpuError> {
    match (&node.op, inputs.first()) {
        (Op::Conv(c), Some(x)) => Ok(conv_node(x, c, false, prepared, node, isa)),
        (Op::Linear(l), Some(x)) => {
            let batch = x.shape.first().copied().unwrap_or(0);
            let choice = choice_in(prepared, isa, node, batch);
            #[cfg(test)]
            tests::record(node, choice);
            match choice {
                Some(CpuChoice::Fc(choice)) => Ok(fc_node(x, l, choice, isa)),
                _ => unreachable!("select::choose gives an fc node an fc choice"),
            }
        }
        (Op::MaxPool(p), Some(x)) => Ok(max_pool(x, p)),
        (Op::Concat { axis }, Some(_)) => Ok(concat(inputs, *axis)),
        (Op::AvgPool(p), Some(x)) => Ok(avg_pool(x, p)),
        (
            Op::Slice {
                starts,
                ends,
                steps,
            },
            Some(x),
        ) => Ok(slice(x, starts, ends, steps)),
        (Op::Transpose { perm }, Some(x)) => Ok(transpose(x, perm)),
        (Op::GlobalAvgPool, Some(x)) => Ok(pool::global_avg_pool(x)),
        (Op::Unary(u), Some(x)) => {
            let mut y = (*x).clone();
            eltwise::unary_in_place(&mut y, *u);
            Ok(y)
        }
        (
            Op::ConstBinary {
                kind,
                constant,
                constant_first,
            },
            Some(x),
        ) if eltwise::binary_fits(&x.shape, &constant.shape) => {
            let mut y = (*x).clone();
            eltwise::binary_in_place_as(&mut y, constant, *kind, *constant_first);
            Ok(y)
        }
        (Op::Sigmoid, Some(x)) => {
            let mut y = (*x).clone();
            eltwise::sigmoid_in_place(&mut y);
            Ok(y)
        }
        (Op::Binary(kind), Some(x))
            if inputs.len() == 2 && eltwise::binary_fits(&x.shape, &inputs[1].shape) =>
        {
            let mut y = (*x).clone();
            eltwise::binary_in_place(&mut y, inputs[1], *kind);
            Ok(y)
        }
        _ => reference::run_node(node, inputs),
    }
}

/// The fc `l` on `x` with the kernel `choice` (from `select::fc` for `l`).
fn fc_node(x: &Tensor, l: &Linear, choice: FcChoice, isa: Isa) -> Tensor {
    let bias = l.bias.as_ref();
    match (choice, &l.weight) {
        (FcChoice::Sketch(v), Weights::Sketch(w)) => sketch::sketch_linear_as(x, w, bias, v),
        (FcChoice::Sparse, Weights::Sparse(w)) => sparse::sparse_linear_isa(x, w, bias, isa),
        (FcChoice::Pow2(v), Weights::Pow2(w)) => pow2::pow2_linear_as(x, w, bias, v),
        (FcChoice::Dense(v), Weights::Dense(_)) => dense::linear_as(x, l, v),
        _ => unreachable!("select::fc picks the family of the weights' encoding"),
    }
}

/// Element-wise and layout ops on the buffer of an input that dies at this node: no new
/// allocation (a fresh output of tens of MB is page-faulted in on every run, which cost
/// more than the op: a ReLU over SqueezeNet's first activation at batch 8, 36 MB, took
/// 32 ms), one parallel pass. Same arithmetic as the reference kernels.
pub fn run_in_place(node: &Node, x: &mut Tensor, rest: &[&Tensor]) -> Option<Result<(), CpuError>> {
    fn each(x: &mut Tensor, f: impl Fn(f32) -> f32 + Sync) {
        x.data
            .par_chunks_mut(1 << 16)
            .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
    }
    match &node.op {
        Op::Relu => each(x, |v| v.max(0.0)),
        Op::LeakyRelu { alpha } => {
            let a = *alpha;
            each(x, move |v| if v >= 0.0 { v } else { a * v })
        }
        Op::Clip { min, max } => {
            let (lo, hi) = (*min, *max);
            each(x, move |v| v.max(lo).min(hi))
        }
        Op::Unary(u) => eltwise::unary_in_place(x, *u),
        Op::Sigmoid => eltwise::sigmoid_in_place(x),
        Op::ConstBinary {
            kind,
            constant,
            constant_first,
        } if eltwise::binary_fits(&x.shape, &constant.shape) => {
            eltwise::binary_in_place_as(x, constant, *kind, *constant_first)
        }
        Op::Binary(kind) if rest.len() == 1 && eltwise::binary_fits(&x.shape, &rest[0].shape) => {
            eltwise::binary_in_place(x, rest[0], *kind)
        }
        // Flatten, Reshape and Identity never get here: the plan makes them aliases.
        Op::Add if rest.len() == 1 && rest[0].shape == x.shape => {
            x.data
                .par_chunks_mut(1 << 16)
                .zip(rest[0].data.par_chunks(1 << 16))
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        }
        _ => return None,
    }
    Some(Ok(()))
}

/// The kernel `run_node_in` runs for `node` at batch `batch`, by the name of its Rust
/// function (what `cnnpack bench` reports per layer); `None` for ops without a weight
/// kernel. The name of `choice_in`'s choice, the one the dispatch runs (the model's
/// `Isa`; `Isa::default()` without a model).
pub fn kernel_name(prepared: Option<&Prepared>, node: &Node, batch: usize) -> Option<&'static str> {
    let isa = prepared.map_or_else(Isa::default, |p| p.isa);
    choice_in(prepared, isa, node, batch).map(CpuChoice::name)
}

/// The kernel `run_node_in(prepared, isa, ..)` runs for `node` at batch `batch`: a
/// conv's choice stored by `prepared` (made by `select::conv` when it was prepared),
/// else `select::choose` without packed weights.
fn choice_in(
    prepared: Option<&Prepared>,
    isa: Isa,
    node: &Node,
    batch: usize,
) -> Option<CpuChoice> {
    if let Some(choice) = prepared.and_then(|p| p.convs.get(&node.output)) {
        return Some(CpuChoice::Conv(*choice));
    }
    select::choose(node, batch, isa, false)
}

/// The conv `c` (node `node`) on `x` with the kernel `choice_in` names, on `prepared`'s
/// packed or decoded weights where it has them, the ReLU that follows it fused when
/// `relu` (every conv kernel fuses it into its output stores).
fn conv_node(
    x: &Tensor,
    c: &Conv2d,
    relu: bool,
    prepared: Option<&Prepared>,
    node: &Node,
    isa: Isa,
) -> Tensor {
    let choice = choice_in(prepared, isa, node, x.shape.first().copied().unwrap_or(0));
    #[cfg(test)]
    tests::record(node, choice);
    match choice {
        Some(CpuChoice::Conv(ConvChoice::Csr)) => sparse::sparse_conv_isa(x, c, relu, isa),
        Some(CpuChoice::Conv(ConvChoice::Packed)) => {
            let packed = prepared.and_then(|p| p.packed(node));
            conv2d_packed(
                x,
                c,
                packed.expect("a Packed choice has packed weights"),
                relu,
            )
        }
        Some(CpuChoice::Conv(ConvChoice::InPlace)) => conv2d_relu(x, c, relu),
        Some(CpuChoice::Conv(ConvChoice::Depthwise)) => {
            // Compressed weights: decoded once by the model, or for this call.
            let w = match (&c.weight, prepared.and_then(|p| p.decoded(node))) {
                (
                    _,
                    Some(Conv2d {
                        weight: Weights::Dense(w),
                        ..
                    }),
                ) => std::borrow::Cow::Borrowed(w),
                _ => c.weight.to_dense(),
            };
            dense::depthwise_conv2d(x, c, &w.data, relu)
        }
        Some(CpuChoice::Conv(ConvChoice::DecodedInPlace)) => {
            match prepared.and_then(|p| p.decoded(node)) {
                Some(dense) => conv2d_relu(x, dense, relu),
                None => conv2d_relu(x, &decoded_conv(c), relu),
            }
        }
        _ => unreachable!("select::choose gives a conv node a conv choice"),
    }
}

/// `conv` with its weights decoded to `Weights::Dense`.
fn decoded_conv(conv: &Conv2d) -> Conv2d {
    Conv2d {
        kernel: conv.kernel,
        stride: conv.stride,
        pads: conv.pads,
        dilation: conv.dilation,
        groups: conv.groups,
        weight: Weights::Dense(conv.weight.to_dense().into_owned()),
        bias: conv.bias.clone(),
    }
}

/// Runs `node` with the ReLU that follows it fused into its output stores (a Conv on
/// a kernel that fuses it); `None` for other nodes, which then run unfused.
pub fn run_node_relu(node: &Node, inputs: &[&Tensor]) -> Option<Result<Tensor, CpuError>> {
    run_node_relu_in(None, Isa::default(), node, inputs)
}

/// As `run_node_relu`, on the kernels of `isa`, a conv on its prepared weights when
/// `prepared` has them.
fn run_node_relu_in(
    prepared: Option<&Prepared>,
    isa: Isa,
    node: &Node,
    inputs: &[&Tensor],
) -> Option<Result<Tensor, CpuError>> {
    match (&node.op, inputs.first()) {
        (Op::Conv(c), Some(x)) => Some(Ok(conv_node(x, c, true, prepared, node, isa))),
        _ => None,
    }
}

/// A graph ready for repeated runs on the CPU: the model owns everything derived from
/// its weights, built once here, and its kernel choices (`CpuOptions`; every conv's
/// kernel, `select::conv`, is chosen here and stored).
///
/// - The weights of every conv that runs a dense GEMM kernel (dense, and compressed
///   ones above the sparse crossover or with sketch/pow2 codes, decoded first) packed
///   for `conv2d_packed`: ResNet-18 and SqueezeNet ran 20-29% faster at batch 1 than on
///   `run_graph`'s in-place kernel (docs/benchmarks-archive.md, session 6).
/// - Compressed convs that are not packed (depthwise groups, or a CPU without AVX2 +
///   FMA) decoded to dense f32 once: decoding on every call cost more than the conv on
///   small maps (a sketched ResNet-18 ran at 0.27x dense at batch 1).
///
/// These copies cost as much memory as the dense conv weights (plus rounding of each
/// group's output channels to 16). They are built from, and used only with, the graph
/// held here, which nothing can change while this holds it (`Arc`), so they cannot go
/// stale. `Engine` builds one on its first CPU run.
pub struct Prepared {
    graph: std::sync::Arc<Graph>,
    /// By the conv node's output name (unique in a valid graph).
    packed: std::collections::HashMap<String, PackedConv>,
    /// Compressed convs decoded to dense, by output name, where not packed.
    decoded: std::collections::HashMap<String, Conv2d>,
    /// Every conv's kernel, by output name (`select::conv`, made here).
    convs: std::collections::HashMap<String, ConvChoice>,
    isa: Isa,
    spin: bool,
}

impl Prepared {
    /// Prepares `graph` with the default options (every instruction set this CPU has).
    pub fn new(graph: std::sync::Arc<Graph>) -> Prepared {
        Prepared::with_options(graph, &CpuOptions::default())
    }

    /// Packs `graph`'s GEMM convs (none on a CPU without AVX2+FMA, where the runs use
    /// `run_graph`'s kernels) and decodes the other compressed convs, for the kernels
    /// `options` allow.
    pub fn with_options(graph: std::sync::Arc<Graph>, options: &CpuOptions) -> Prepared {
        let isa = Isa::new(options);
        let mut packed = std::collections::HashMap::new();
        let mut decoded = std::collections::HashMap::new();
        let mut convs = std::collections::HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for node in &graph.nodes {
            // A name produced twice (an invalid graph) gets no prepared weights or
            // choice at all, so no node can run another's weights.
            if !seen.insert(node.output.as_str()) {
                packed.remove(&node.output);
                decoded.remove(&node.output);
                convs.remove(&node.output);
                continue;
            }
            let Op::Conv(c) = &node.op else { continue };
            let packed_conv = select::packs(c)
                .then(|| PackedConv::with_isa(c, isa))
                .flatten();
            let choice = select::conv(c, packed_conv.is_some());
            match (choice, packed_conv) {
                (ConvChoice::Packed, Some(p)) => {
                    packed.insert(node.output.clone(), p);
                }
                (ConvChoice::DecodedInPlace, _) => {
                    decoded.insert(node.output.clone(), decoded_conv(c));
                }
                (ConvChoice::Depthwise, _) if !matches!(c.weight, Weights::Dense(_)) => {
                    decoded.insert(node.output.clone(), decoded_conv(c));
                }
                _ => {}
            }
            convs.insert(node.output.clone(), choice);
        }
        Prepared {
            graph,
            packed,
            decoded,
            convs,
            isa,
            spin: options.spin,
        }
    }

    /// The graph this runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The instruction sets its kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The kernel `node` (of the held graph) runs at batch `batch` (`kernel_name` names
    /// it); `None` for ops without a weight kernel.
    pub fn choice(&self, node: &Node, batch: usize) -> Option<CpuChoice> {
        choice_in(Some(self), self.isa, node, batch)
    }

    /// Bytes held by the packed weights.
    pub fn packed_bytes(&self) -> usize {
        self.packed.values().map(PackedConv::bytes).sum()
    }

    /// Compressed convs held decoded (not packed), and their dense weight bytes.
    pub fn decoded_stats(&self) -> (usize, usize) {
        let bytes = self.decoded.values().map(|c| c.weight.parameters() * 4);
        (self.decoded.len(), bytes.sum())
    }

    /// As `run_graph` on the held graph.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, CpuError> {
        run_graph_in(&self.graph, Some(self), self.isa, self.spin, input)
    }

    /// As `run_graph_profiled` on the held graph.
    pub fn run_profiled(
        &self,
        input: &Tensor,
    ) -> Result<(Vec<Tensor>, crate::backend::StepTimes), CpuError> {
        run_graph_profiled_in(&self.graph, Some(self), self.isa, self.spin, input)
    }

    /// The packed weights of a conv node of the held graph.
    fn packed(&self, node: &Node) -> Option<&PackedConv> {
        self.packed.get(&node.output)
    }

    /// The decoded weights of a compressed conv node of the held graph.
    fn decoded(&self, node: &Node) -> Option<&Conv2d> {
        self.decoded.get(&node.output)
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("isa", &self.isa)
            .field("packed_convs", &self.packed.len())
            .field("packed_bytes", &self.packed_bytes())
            .field("decoded_convs", &self.decoded.len())
            .finish()
    }
}

/// Runs the whole graph with the fast kernels; returns the outputs in order. Compressed
/// convs are decoded for this run: repeated runs go through a [`Prepared`] model.
///
/// The graph runs on one of rayon's worker threads (`on_pool`), not on the caller's.
pub fn run_graph(graph: &Graph, input: &Tensor) -> Result<Vec<Tensor>, CpuError> {
    run_graph_in(graph, None, Isa::default(), true, input)
}

/// `run_graph` on the kernels of `isa`, convs on the prepared weights of `prepared`
/// (built from `graph`); `spin`: see `on_pool`.
fn run_graph_in(
    graph: &Graph,
    prepared: Option<&Prepared>,
    isa: Isa,
    spin: bool,
    input: &Tensor,
) -> Result<Vec<Tensor>, CpuError> {
    on_pool(spin, || {
        super::run_with(
            graph,
            input,
            PlanOptions::default(),
            |node, ins| run_node_in(prepared, isa, node, ins),
            run_in_place,
            |node, ins| run_node_relu_in(prepared, isa, node, ins),
            None,
        )
    })
}

/// Runs `f` on a worker thread of rayon's pool (the caller waits), or right here when
/// already on one; while `f` runs, one other worker spins for its forked work when
/// `spin` (`CpuOptions::spin`).
///
/// Why: every layer forks parallel work two or three times (SqueezeNet: ~150 forks per
/// image). Forked from a thread outside the pool, each fork wakes a worker and then
/// puts the caller to sleep until the work is done, and on this project's VM such a
/// round trip measured 20-300 µs (a 2-task `par_iter`, median, by the gap since the
/// last one); from a worker thread the forking thread takes the first task itself and
/// goes on without sleeping (0.1-30 µs). ResNet-18 at batch 1: 10% faster in an
/// interleaved A/B (median of 15 runs each: 50.0 vs 55.7 ms); SqueezeNet and AlexNet
/// within the noise. The spinning helper (`spin_for_forks`) removes the other half of
/// the cost, the idle worker's sleep and wake between layers: SqueezeNet 4-15% faster
/// (three interleaved A/Bs), ResNet-18 and AlexNet within the noise.
fn on_pool<R: Send>(spin: bool, f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        // Only the first of concurrent runs gets a helper (see `spin_for_forks`).
        let alone = ACTIVE_RUNS.fetch_add(1, Ordering::AcqRel) == 0;
        let _finish = Finish(&done);
        if alone && rayon::current_num_threads() > 1 && spin {
            let (done, runner) = (&done, rayon::current_thread_index());
            s.spawn(move |_| spin_for_forks(done, runner));
        }
        f()
    })
}

/// Graph runs in progress (`on_pool` from outside the pool).
static ACTIVE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Marks a run finished when dropped (also when the run panics, so the helper stops).
struct Finish<'a>(&'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        ACTIVE_RUNS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The helper of one graph run: runs the run's forked tasks as they appear
/// (`rayon::yield_now`) instead of sleeping between them, until the run is `done`.
/// It returns at once on the run's own thread (which may pop this job while it waits in
/// a join, and must not wait for itself there) and as soon as another run starts (a
/// helper holding a worker that the other run waits on, while that run's own thread
/// holds this run's, would wait forever).
fn spin_for_forks(done: &AtomicBool, runner: Option<usize>) {
    if rayon::current_thread_index() == runner {
        return;
    }
    while !done.load(Ordering::Acquire) && ACTIVE_RUNS.load(Ordering::Acquire) == 1 {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

/// As `run_graph`, plus each step's wall time in milliseconds, in run order, under the
/// plan's step names (the node's, `conv+relu` for a Relu fused into the node `conv`;
/// aliases such as Flatten have no step).
pub fn run_graph_profiled(
    graph: &Graph,
    input: &Tensor,
) -> Result<(Vec<Tensor>, crate::backend::StepTimes), CpuError> {
    run_graph_profiled_in(graph, None, Isa::default(), true, input)
}

/// `run_graph_profiled` as `run_graph_in` runs it.
fn run_graph_profiled_in(
    graph: &Graph,
    prepared: Option<&Prepared>,
    isa: Isa,
    spin: bool,
    input: &Tensor,
) -> Result<(Vec<Tensor>, crate::backend::StepTimes), CpuError> {
    let mut times = Vec::with_capacity(graph.nodes.len());
    let outputs = on_pool(spin, || {
        super::run_with(
            graph,
            input,
            PlanOptions::default(),
            |node, ins| run_node_in(prepared, isa, node, ins),
            run_in_place,
            |node, ins| run_node_relu_in(prepared, isa, node, ins),
            Some(&mut times),
        )
    })?;
    Ok((outputs, times))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    thread_local! {
        static RECORDING: Cell<bool> = const { Cell::new(false) };
        static DISPATCHED: RefCell<Vec<(String, Option<CpuChoice>)>> =
            const { RefCell::new(Vec::new()) };
    }

    /// Notes the choice the dispatch runs for `node`, while this thread records.
    pub(super) fn record(node: &Node, choice: Option<CpuChoice>) {
        if RECORDING.with(Cell::get) {
            DISPATCHED.with(|d| d.borrow_mut().push((node.output.clone(), choice)));
        }
    }

    /// lenet5 and squeezenet1.1, dense and compressed as `bench sweep` does (sketch
    /// m = 2, INQ 4 bits, CSR at 10% and 30%: squeezenet's strided convs at 30% run the
    /// dense path, its stride-1 convs CSR).
    fn graphs() -> Vec<(String, Graph)> {
        use crate::bench::sweep::{compress, SweepKind};
        let mut out = Vec::new();
        for name in ["lenet5", "squeezenet1.1"] {
            let g = crate::graph::fold(crate::zoo::build(name, 3).expect("zoo model builds"))
                .expect("folds");
            let kinds: &[(SweepKind, f64)] = if name == "lenet5" {
                &[
                    (SweepKind::Sketch, 2.0),
                    (SweepKind::Inq, 4.0),
                    (SweepKind::Sparse, 0.1),
                    (SweepKind::Sparse, 0.3),
                ]
            } else {
                &[(SweepKind::Sparse, 0.3)]
            };
            for &(kind, v) in kinds {
                let c = compress(&g, kind, v).expect("compresses");
                out.push((format!("{name} {kind} {v}"), c));
            }
            out.push((name.to_string(), g));
        }
        out
    }

    /// The dispatch runs, for every conv and fc node, exactly the choice that
    /// `Prepared::choice` returns and `kernel_name` names, at batch 1 and 8 and on
    /// every instruction set level (the nodes run on this thread, which records them).
    #[test]
    fn dispatch_runs_the_named_choice() {
        for (name, g) in graphs() {
            let g = std::sync::Arc::new(g);
            for isa in Isa::available() {
                let options = CpuOptions {
                    avx512: isa.avx512(),
                    ..CpuOptions::default()
                };
                let p = Prepared::with_options(g.clone(), &options);
                for batch in [1, 8] {
                    let mut shape = vec![batch];
                    shape.extend(&g.input.item_shape);
                    let x = crate::graph::Rng::new(5).normal_tensor(shape, 1.0);
                    RECORDING.with(|r| r.set(true));
                    let run = super::super::run_with(
                        &g,
                        &x,
                        PlanOptions::default(),
                        |node, ins| run_node_in(Some(&p), p.isa, node, ins),
                        run_in_place,
                        |node, ins| run_node_relu_in(Some(&p), p.isa, node, ins),
                        None,
                    );
                    RECORDING.with(|r| r.set(false));
                    run.expect("runs");
                    let ran = DISPATCHED.with(|d| std::mem::take(&mut *d.borrow_mut()));
                    let weighted: Vec<&Node> = g
                        .nodes
                        .iter()
                        .filter(|n| n.op.weights().is_some())
                        .collect();
                    assert_eq!(ran.len(), weighted.len(), "{name}: one dispatch per node");
                    for (node, (output, choice)) in weighted.into_iter().zip(ran) {
                        let what = format!("{name} {} batch {batch} {}", isa.name(), node.name);
                        assert_eq!(output, node.output, "{what}");
                        assert_eq!(choice, p.choice(node, batch), "{what}");
                        assert_eq!(
                            kernel_name(Some(&p), node, batch),
                            choice.map(CpuChoice::name),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}
