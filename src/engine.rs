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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
        ctx: Arc<GpuContext>,
        models: Mutex<HashMap<usize, Arc<GpuModel>>>,
    },
}

/// A model ready to run on one device. Send + Sync: many threads may call `run`.
pub struct Engine {
    graph: Arc<Graph>,
    executor: Executor,
    fallback_note: Option<String>,
}

impl Engine {
    /// Folds and validates `graph` and prepares it on `device`. For `Gpu` without an
    /// adapter, falls back to the CPU and records why (`fallback_note`), unless
    /// `CNNPACK_REQUIRE_GPU=1`, where the missing adapter is an error.
    pub fn new(graph: Graph, device: DeviceKind) -> Result<Engine, EngineError> {
        let graph = Arc::new(fold(graph)?);
        graph.validate()?;
        let (executor, fallback_note) = match device {
            DeviceKind::Cpu => (Executor::Cpu, None),
            DeviceKind::Reference => (Executor::Reference, None),
            DeviceKind::Gpu => match GpuContext::new() {
                Ok(ctx) => (
                    Executor::Gpu {
                        ctx: Arc::new(ctx),
                        models: Mutex::default(),
                    },
                    None,
                ),
                Err(e) if std::env::var("CNNPACK_REQUIRE_GPU").as_deref() != Ok("1") => (
                    Executor::Cpu,
                    Some(format!("no GPU ({e}); running on the CPU")),
                ),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Engine {
            graph,
            executor,
            fallback_note,
        })
    }

    /// Prepares `graph` on an existing GPU context (e.g. an application's own device,
    /// through `GpuContext::from_device`).
    pub fn with_gpu(graph: Graph, ctx: Arc<GpuContext>) -> Result<Engine, EngineError> {
        let graph = Arc::new(fold(graph)?);
        graph.validate()?;
        Ok(Engine {
            graph,
            executor: Executor::Gpu {
                ctx,
                models: Mutex::default(),
            },
            fallback_note: None,
        })
    }

    /// The folded graph this engine runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
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
            Executor::Gpu { ctx, .. } => ctx.adapter_name(),
        }
    }

    /// True when running on a GPU adapter.
    pub fn is_gpu(&self) -> bool {
        matches!(self.executor, Executor::Gpu { .. })
    }

    /// The GPU model for a batch size, planned and uploaded on first use.
    pub fn gpu_model(&self, batch: usize) -> Result<Option<Arc<GpuModel>>, EngineError> {
        let Executor::Gpu { ctx, models } = &self.executor else {
            return Ok(None);
        };
        let mut models = models
            .lock()
            .expect("the model cache lock is never held across a panic");
        if let Some(m) = models.get(&batch) {
            return Ok(Some(m.clone()));
        }
        let model = Arc::new(GpuModel::new(ctx.clone(), &self.graph, batch)?);
        models.insert(batch, model.clone());
        Ok(Some(model))
    }

    /// Runs a batch `[N, ..item_shape]`; returns the graph outputs in order.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, EngineError> {
        let batch = cpu::check_input(&self.graph, input)?;
        match &self.executor {
            Executor::Cpu => Ok(cpu::fast::run_graph(&self.graph, input)?),
            Executor::Reference => Ok(cpu::reference::run_graph(&self.graph, input)?),
            Executor::Gpu { .. } => {
                let model = self.gpu_model(batch)?.expect("executor is Gpu");
                Ok(model.run(input)?)
            }
        }
    }
}
