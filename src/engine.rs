//! `Engine`: one loaded model on one device, the entry point for inference.
//!
//! ```no_run
//! use cnnpack::{engine::{Engine, DeviceKind}, graph::Tensor};
//! let graph = cnnpack::zoo::build("lenet5", 0).unwrap();
//! let engine = Engine::new(graph, DeviceKind::Gpu).unwrap();
//! println!("running on {}", engine.device_name());
//! let logits = engine.run(&Tensor::zeros(vec![1, 1, 28, 28])).unwrap();
//! ```

use crate::backend::cpu::{self, CpuError};
use crate::backend::gpu::{GpuContext, GpuError, GpuModel};
use crate::graph::{fold, Graph, GraphError, Tensor};
use crate::tuning::Tuning;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The GPU through wgpu; falls back to the CPU when no adapter exists.
    Gpu,
    /// The fast CPU kernels.
    Cpu,
    /// The naive CPU reference (slow; for checking).
    Reference,
}

/// How an [`Engine`] is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineOptions {
    /// The kernel choices of its models on either device.
    pub tuning: Tuning,
    /// `DeviceKind::Gpu` without an adapter is an error instead of a fallback to the
    /// CPU (the command line sets it from `CNNPACK_REQUIRE_GPU=1`, as CI does).
    pub require_gpu: bool,
}

/// Errors from building or running an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The graph is malformed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A CPU kernel or input check failed.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// The GPU failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

enum Executor {
    Cpu,
    Reference,
    /// GPU models are planned per batch size (eval's last batch is smaller).
    Gpu {
        /// Replaced by `recover` after a device loss (when `owned`).
        ctx: RwLock<Arc<GpuContext>>,
        /// The engine opened the device itself (`Engine::new`), so it may open another.
        owned: bool,
        models: Mutex<HashMap<usize, Arc<GpuModel>>>,
        /// `GpuModel::max_batch` on this device, found on the first run (planning the
        /// graph takes a copy of it: not per run); cleared with `models` by `recover`.
        max_batch: Mutex<Option<usize>>,
    },
}

/// A model ready to run on one device. Send + Sync: many threads may call `run` (and
/// `run_async`) at once; results equal sequential runs.
///
/// Device loss: once the GPU device is lost, every call returns
/// `EngineError::Gpu(GpuError::DeviceLost)`; [`Engine::recover`] opens a new device and
/// re-uploads the model lazily (or drop the engine and build a new one).
pub struct Engine {
    graph: Arc<Graph>,
    executor: Executor,
    /// The graph with its conv weights packed for the CPU kernels, built on the first
    /// CPU run (`cpu_prepared`).
    prepared: std::sync::OnceLock<Arc<cpu::fast::Prepared>>,
    fallback_note: Option<String>,
    tuning: Tuning,
}

impl Engine {
    /// Folds and validates `graph` and prepares it on `device` with the default
    /// kernel choices. For `Gpu` without an adapter, falls back to the CPU and records
    /// why (`fallback_note`).
    pub fn new(graph: Graph, device: DeviceKind) -> Result<Engine, EngineError> {
        Engine::with_options(graph, device, EngineOptions::default())
    }

    /// As [`Engine::new`] with `options`: its kernel choices, and with
    /// `require_gpu` a missing adapter is an error.
    pub fn with_options(
        graph: Graph,
        device: DeviceKind,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let graph = Arc::new(fold(graph)?);
        graph.validate()?;
        let (executor, fallback_note) = match device {
            DeviceKind::Cpu => (Executor::Cpu, None),
            DeviceKind::Reference => (Executor::Reference, None),
            DeviceKind::Gpu => match GpuContext::new() {
                Ok(ctx) => (
                    Executor::Gpu {
                        ctx: RwLock::new(Arc::new(ctx)),
                        owned: true,
                        models: Mutex::default(),
                        max_batch: Mutex::default(),
                    },
                    None,
                ),
                Err(e) if !options.require_gpu => (
                    Executor::Cpu,
                    Some(format!("no GPU ({e}); running on the CPU")),
                ),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Engine {
            graph,
            executor,
            prepared: std::sync::OnceLock::new(),
            fallback_note,
            tuning: options.tuning,
        })
    }

    /// Prepares `graph` on an existing GPU context (e.g. an application's own device,
    /// through `GpuContext::from_device`).
    pub fn with_gpu(graph: Graph, ctx: Arc<GpuContext>) -> Result<Engine, EngineError> {
        Engine::with_gpu_tuning(graph, ctx, Tuning::default())
    }

    /// As [`Engine::with_gpu`], with the kernel choices of `tuning`.
    pub fn with_gpu_tuning(
        graph: Graph,
        ctx: Arc<GpuContext>,
        tuning: Tuning,
    ) -> Result<Engine, EngineError> {
        let graph = Arc::new(fold(graph)?);
        graph.validate()?;
        Ok(Engine {
            graph,
            executor: Executor::Gpu {
                ctx: RwLock::new(ctx),
                owned: false,
                models: Mutex::default(),
                max_batch: Mutex::default(),
            },
            prepared: std::sync::OnceLock::new(),
            fallback_note: None,
            tuning,
        })
    }

    /// The kernel choices of its models.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The folded graph this engine runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// On the CPU executor: the graph with its conv weights packed for the fast
    /// kernels (built on first use, as much memory as the dense conv weights); `None` on
    /// the other executors.
    pub fn cpu_prepared(&self) -> Option<&Arc<cpu::fast::Prepared>> {
        matches!(self.executor, Executor::Cpu).then(|| {
            self.prepared.get_or_init(|| {
                Arc::new(cpu::fast::Prepared::with_options(
                    self.graph.clone(),
                    &self.tuning.cpu,
                ))
            })
        })
    }

    /// Why a GPU request ended up on the CPU, if it did.
    pub fn fallback_note(&self) -> Option<&str> {
        self.fallback_note.as_deref()
    }

    /// The adapter's name, or `cpu` / `cpu-reference`.
    pub fn device_name(&self) -> String {
        match &self.executor {
            Executor::Cpu => "cpu".into(),
            Executor::Reference => "cpu-reference".into(),
            Executor::Gpu { .. } => self
                .gpu_context()
                .map_or_else(|| "gpu".into(), |c| c.adapter_name()),
        }
    }

    /// True when running on a GPU adapter.
    pub fn is_gpu(&self) -> bool {
        matches!(self.executor, Executor::Gpu { .. })
    }

    /// The GPU context in use (`None` on the CPU).
    pub fn gpu_context(&self) -> Option<Arc<GpuContext>> {
        match &self.executor {
            Executor::Gpu { ctx, .. } => Some(
                ctx.read()
                    .expect("the context lock is never held across a panic")
                    .clone(),
            ),
            _ => None,
        }
    }

    /// After a device loss: opens a new device, drops the models planned on the lost
    /// one (they are re-planned and re-uploaded on the next run) and returns `true`.
    /// Returns `false` when there is nothing to recover (CPU, or the device works).
    /// An engine built on an application's device (`with_gpu`) cannot open another:
    /// that is a `DeviceLost` error, and the application builds a new engine.
    pub fn recover(&self) -> Result<bool, EngineError> {
        let Executor::Gpu {
            ctx,
            owned,
            models,
            max_batch,
        } = &self.executor
        else {
            return Ok(false);
        };
        let mut ctx = ctx
            .write()
            .expect("the context lock is never held across a panic");
        let Some(reason) = ctx.lost_reason() else {
            return Ok(false);
        };
        if !owned {
            return Err(GpuError::DeviceLost(format!(
                "{reason}; the application's device cannot be reopened by cnnpack"
            ))
            .into());
        }
        let fresh = Arc::new(GpuContext::new()?);
        *ctx = fresh;
        models
            .lock()
            .expect("the model cache lock is never held across a panic")
            .clear();
        *max_batch
            .lock()
            .expect("the max-batch lock is never held across a panic") = None;
        Ok(true)
    }

    /// The GPU model for a batch size, planned and uploaded on first use.
    pub fn gpu_model(&self, batch: usize) -> Result<Option<Arc<GpuModel>>, EngineError> {
        let Executor::Gpu { models, .. } = &self.executor else {
            return Ok(None);
        };
        let ctx = self.gpu_context().expect("executor is Gpu");
        if let Some(reason) = ctx.lost_reason() {
            return Err(GpuError::DeviceLost(reason).into());
        }
        let mut models = models
            .lock()
            .expect("the model cache lock is never held across a panic");
        if let Some(m) = models.get(&batch) {
            if Arc::ptr_eq(m.context(), &ctx) {
                return Ok(Some(m.clone()));
            }
        }
        let model = Arc::new(GpuModel::with_options(
            ctx,
            &self.graph,
            batch,
            self.tuning.gpu,
        )?);
        models.insert(batch, model.clone());
        Ok(Some(model))
    }

    /// The batch the GPU model for `batch` items is planned for: `batch` itself when its
    /// buffers fit the adapter, else the largest that fits (`GpuModel::max_batch`), in
    /// pieces of which `run` and `run_async` run it. `batch` on the CPU. An error when
    /// not even one item fits (it names the layer).
    pub fn gpu_piece(&self, batch: usize) -> Result<usize, EngineError> {
        let Executor::Gpu { max_batch, .. } = &self.executor else {
            return Ok(batch);
        };
        let ctx = self.gpu_context().expect("executor is Gpu");
        let mut cached = max_batch
            .lock()
            .expect("the max-batch lock is never held across a panic");
        let fits = match *cached {
            Some(fits) => fits,
            None => *cached.insert(GpuModel::max_batch(&ctx, &self.graph, &self.tuning.gpu)?),
        };
        drop(cached);
        match fits {
            // Building the one-item model gives the error that names the layer.
            0 => self.gpu_model(1).map(|_| 1),
            fits => Ok(batch.min(fits)),
        }
    }

    /// Runs a batch `[N, ..item_shape]`; returns the graph outputs in order. On the GPU
    /// a batch whose buffers would exceed the adapter's limits runs in pieces that fit
    /// (`gpu_piece`), with the same outputs.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, EngineError> {
        let batch = cpu::check_input(&self.graph, input)?;
        match &self.executor {
            Executor::Cpu => Ok(self.cpu_prepared().expect("executor is Cpu").run(input)?),
            Executor::Reference => Ok(cpu::reference::run_graph(&self.graph, input)?),
            Executor::Gpu { .. } => {
                let piece = self.gpu_piece(batch)?;
                let model = self.gpu_model(piece)?.expect("executor is Gpu");
                if piece == batch {
                    Ok(model.run(input)?)
                } else {
                    run_in_pieces(&model, input)
                }
            }
        }
    }

    /// As [`Engine::run`], without blocking the calling thread on the device: the
    /// work is submitted now and the returned future resolves when the outputs are
    /// read back (on the GPU: when the readback buffer is mapped, driven by one poll
    /// thread per device; on the CPU: computed on the rayon pool). The future is
    /// `Send + 'static` and works with any executor (tokio, `futures`, `pollster`).
    ///
    /// The first request of a new batch size plans and uploads the model on the
    /// calling thread.
    pub fn run_async(&self, input: &Tensor) -> RunFuture {
        let slot = Arc::new(Slot::default());
        let sender = slot.clone();
        let submitted = (|| -> Result<(), EngineError> {
            let batch = cpu::check_input(&self.graph, input)?;
            match &self.executor {
                Executor::Cpu | Executor::Reference => {
                    // The CPU executor's packed graph, or the plain graph for the
                    // reference kernels.
                    let prepared = self.cpu_prepared().cloned();
                    let graph = self.graph.clone();
                    let input = input.clone();
                    let sender = sender.clone();
                    rayon::spawn(move || {
                        let r = match prepared {
                            Some(prepared) => prepared.run(&input),
                            None => cpu::reference::run_graph(&graph, &input),
                        };
                        sender.complete(r.map_err(EngineError::from));
                    });
                }
                Executor::Gpu { .. } => {
                    let piece = self.gpu_piece(batch)?;
                    let model = self.gpu_model(piece)?.expect("executor is Gpu");
                    let sender = sender.clone();
                    if piece == batch {
                        model.run_with_callback(input, move |r| {
                            sender.complete(r.map_err(EngineError::from))
                        })?;
                    } else {
                        // Pieces run one after another (they share the model's buffers),
                        // each waiting for its readback: on a thread of their own.
                        let input = input.clone();
                        std::thread::spawn(move || {
                            sender.complete(run_in_pieces(&model, &input));
                        });
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = submitted {
            sender.complete(Err(e));
        }
        RunFuture { slot }
    }
}

/// Runs `input` through `model` (planned for fewer items) in pieces of `model.batch()`
/// items, the last one padded with zeros, and joins the outputs along the batch axis
/// (every graph output's first axis is the batch).
fn run_in_pieces(model: &GpuModel, input: &Tensor) -> RunResult {
    let (batch, piece) = (input.shape[0], model.batch());
    let item_len = input.data.len() / batch.max(1);
    let mut joined: Vec<Tensor> = Vec::new();
    for start in (0..batch).step_by(piece) {
        let n = piece.min(batch - start);
        let mut data = input.data[start * item_len..(start + n) * item_len].to_vec();
        data.resize(piece * item_len, 0.0);
        let mut shape = input.shape.clone();
        shape[0] = piece;
        let outputs = model.run(&Tensor { shape, data })?;
        if joined.is_empty() {
            joined = outputs
                .iter()
                .map(|o| {
                    let mut shape = o.shape.clone();
                    shape[0] = 0;
                    Tensor {
                        shape,
                        data: Vec::with_capacity(o.data.len() / piece * batch),
                    }
                })
                .collect();
        }
        for (all, o) in joined.iter_mut().zip(outputs) {
            let len = o.data.len() / piece;
            all.data.extend_from_slice(&o.data[..n * len]);
            all.shape[0] += n;
        }
    }
    Ok(joined)
}

/// What a run returns.
type RunResult = Result<Vec<Tensor>, EngineError>;

/// Where a pending run's result lands, with the waker of the task awaiting it.
#[derive(Default)]
struct Slot {
    state: Mutex<(Option<RunResult>, Option<Waker>)>,
}

impl Slot {
    fn complete(&self, r: RunResult) {
        let waker = {
            let mut s = self
                .state
                .lock()
                .expect("the result slot lock is never held across a panic");
            s.0 = Some(r);
            s.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The result of [`Engine::run_async`]: resolves to the graph outputs.
pub struct RunFuture {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for RunFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunFuture").finish_non_exhaustive()
    }
}

impl Future for RunFuture {
    type Output = Result<Vec<Tensor>, EngineError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self
            .slot
            .state
            .lock()
            .expect("the result slot lock is never held across a panic");
        match s.0.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_future_are_send_sync() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Engine>();
        send_sync::<RunFuture>();
        send_sync::<GpuContext>();
        send_sync::<GpuModel>();
    }

    #[test]
    fn run_async_on_the_cpu_equals_run() {
        let g = crate::zoo::build("lenet5", 3).expect("lenet5 builds");
        let e = Engine::new(g, DeviceKind::Cpu).expect("cpu engine");
        let x = Tensor::full(vec![2, 1, 28, 28], 0.25);
        let want = e.run(&x).expect("runs");
        let futs: Vec<RunFuture> = (0..8).map(|_| e.run_async(&x)).collect();
        for f in futs {
            assert_eq!(pollster::block_on(f).expect("async run"), want);
        }
        let bad = pollster::block_on(e.run_async(&Tensor::zeros(vec![1, 3])));
        assert!(bad.is_err());
    }
}
