//! A graph planned for one batch size on one device: weights uploaded, every kernel
//! launch recorded (by `encode`, the op → encoder table, from the kernel `select`
//! chose), activation buffers allocated by liveness (see `plan.rs`); running, profiling
//! and reading back.

use super::context::{scoped, Bind, Dispatch, GpuContext};
use super::encode::{encode, StepIo};
use super::select::{self, DeviceInfo, GpuChoice};
use super::GpuError;
use crate::graph::{Graph, Tensor};
use crate::plan::{Plan, PlanOptions};
pub use crate::tuning::{CompressedConv, GpuOptions, Pow2Fc};
use std::sync::{mpsc, Arc, Mutex};

/// GPU time of each step: `(step name, milliseconds)` in execution order.
pub type StepTimes = Vec<(String, f64)>;

struct StepKernels {
    name: String,
    /// The kernel chosen for a conv or fc step (`select::choose`).
    choice: Option<GpuChoice>,
    dispatches: Vec<Dispatch>,
}

impl StepKernels {
    /// The entry points of the recorded dispatches, in order, repeats dropped.
    fn recorded_entries(&self) -> Vec<&'static str> {
        let mut entries: Vec<&'static str> = vec![];
        for d in &self.dispatches {
            if !entries.contains(&d.kernel.entry) {
                entries.push(d.kernel.entry);
            }
        }
        entries
    }
}

struct Output {
    slot: usize,
    shape: Vec<usize>,
    /// Byte offset in the staging buffer.
    staging_offset: u64,
}

/// Buffers a run writes; one run at a time holds them.
struct RunState {
    staging: wgpu::Buffer,
    timing: Option<Timing>,
}

struct Timing {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

/// A graph planned for one batch size on a [`GpuContext`], weights resident on the device.
///
/// `Send + Sync`: runs from several threads are serialised (they share the activation
/// buffers).
pub struct GpuModel {
    ctx: Arc<GpuContext>,
    batch: usize,
    input_shape: Vec<usize>,
    slots: Vec<wgpu::Buffer>,
    input_slot: usize,
    steps: Vec<StepKernels>,
    outputs: Vec<Output>,
    run: Mutex<RunState>,
    /// `run_profiled` writes its timestamps between the dispatches of one pass.
    in_pass: bool,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("batch", &self.batch)
            .field("input_shape", &self.input_shape)
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl GpuModel {
    /// Validates the graph, plans it for `batch` and uploads the weights once.
    pub fn new(ctx: Arc<GpuContext>, graph: &Graph, batch: usize) -> Result<GpuModel, GpuError> {
        GpuModel::with_options(ctx, graph, batch, GpuOptions::default())
    }

    /// The largest batch of `graph` whose activation buffers and readback each fit the
    /// adapter's binding and buffer limits (and `options.max_activation_bytes`), so that
    /// a model for it can be built; 0 when not even one item fits. Every buffer the plan
    /// makes grows linearly with the batch, so this is the limit over the largest one at
    /// batch 1. `Engine` runs larger batches in pieces of this size.
    pub fn max_batch(
        ctx: &GpuContext,
        graph: &Graph,
        options: &GpuOptions,
    ) -> Result<usize, GpuError> {
        let mut graph = graph.clone();
        graph.sort_and_validate()?;
        let plan = Plan::with_options(
            &graph,
            1,
            PlanOptions {
                fuse_relu: options.fuse_relu,
            },
        )?;
        let largest = plan.slots.iter().copied().max().unwrap_or(0).max(1) as u64 * 4;
        let outputs: u64 = graph
            .outputs
            .iter()
            .map(|o| plan.shape(o).map_or(0, |s| s.iter().product::<usize>()) as u64 * 4)
            .sum();
        let by_slots = activation_limit(ctx, options) / largest;
        let by_outputs = ctx.limits().max_buffer_size / outputs.max(4);
        Ok(by_slots.min(by_outputs).min(usize::MAX as u64) as usize)
    }

    /// As [`GpuModel::new`], with options.
    pub fn with_options(
        ctx: Arc<GpuContext>,
        graph: &Graph,
        batch: usize,
        options: GpuOptions,
    ) -> Result<GpuModel, GpuError> {
        graph.validate()?;
        if batch == 0 {
            return Err(GpuError::BadInput {
                expected: vec![1],
                found: vec![0],
            });
        }
        let mut graph = graph.clone();
        graph.sort_and_validate()?;
        let plan = Plan::with_options(
            &graph,
            batch,
            PlanOptions {
                fuse_relu: options.fuse_relu,
            },
        )?;
        let limit = ctx.max_binding_bytes();
        let max_binding = options.max_binding_bytes.map_or(limit, |m| m.min(limit));
        let limit = activation_limit(&ctx, &options);
        for (i, &len) in plan.slots.iter().enumerate() {
            if (len as u64).saturating_mul(4) > limit {
                // Name the largest layer whose output lives in this buffer.
                let layer = plan
                    .steps
                    .iter()
                    .filter(|s| plan.slot_of(&s.output) == Some(i))
                    .max_by_key(|s| {
                        plan.shape(&s.output)
                            .map_or(0, |v| v.iter().product::<usize>())
                    })
                    .map_or_else(|| graph.input.name.clone(), |s| s.name.clone());
                return Err(GpuError::Unsupported {
                    node: layer,
                    op: "buffer",
                    reason: format!(
                        "its output needs {} bytes at batch {batch}, over the adapter's \
                         max_storage_buffer_binding_size/max_buffer_size of {limit} bytes; \
                         use a smaller batch (`Engine` runs a batch in pieces that fit, \
                         `GpuModel::max_batch`)",
                        len as u64 * 4
                    ),
                });
            }
        }
        let slots: Vec<wgpu::Buffer> = scoped(&ctx, "activation buffers", || {
            Ok(plan
                .slots
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    ctx.device().create_buffer(&wgpu::BufferDescriptor {
                        label: Some(&format!("activations{i}")),
                        size: (len.max(1) * 4) as u64,
                        usage: wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_DST
                            | wgpu::BufferUsages::COPY_SRC,
                        mapped_at_creation: false,
                    })
                })
                .collect())
        })?;
        let value = |v: &str| -> Result<(Bind, &[usize]), GpuError> {
            let slot = plan.slot_of(v).ok_or_else(|| GpuError::Unsupported {
                node: v.into(),
                op: "value",
                reason: "not computed by the plan".into(),
            })?;
            let shape = plan.shape(v).expect("every planned value has a shape");
            Ok((Bind::f32s(&slots[slot], shape.iter().product()), shape))
        };
        let device = DeviceInfo::of(&ctx);
        let mut steps = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let node = &graph.nodes[step.node];
            let input = step
                .inputs
                .first()
                .and_then(|v| plan.shape(v))
                .unwrap_or(&[]);
            let choice = select::choose(&node.op, input, &device, &options);
            let io = StepIo {
                ctx: &ctx,
                node,
                name: &step.name,
                relu: step.fused_relu,
                inputs: step
                    .inputs
                    .iter()
                    .map(|v| value(v))
                    .collect::<Result<_, _>>()?,
                output: value(&step.output)?,
                max_binding,
                options: &options,
                choice,
            };
            let dispatches = scoped(&ctx, &step.name, || encode(&io))?;
            steps.push(StepKernels {
                name: step.name.clone(),
                choice,
                dispatches,
            });
        }
        let input_slot = plan
            .slot_of(&graph.input.name)
            .expect("the plan places the graph input");
        let mut outputs = vec![];
        let mut staging_len = 0u64;
        for o in &graph.outputs {
            let shape = plan.shape(o).expect("outputs have shapes").to_vec();
            let bytes = (shape.iter().product::<usize>() * 4) as u64;
            outputs.push(Output {
                slot: plan.slot_of(o).expect("the plan places every output"),
                shape,
                staging_offset: staging_len,
            });
            staging_len += bytes;
        }
        if staging_len > ctx.limits().max_buffer_size {
            return Err(GpuError::Unsupported {
                node: "outputs".into(),
                op: "buffer",
                reason: format!(
                    "{staging_len} bytes of outputs at batch {batch} exceed the adapter's \
                     max_buffer_size of {} bytes; use a smaller batch",
                    ctx.limits().max_buffer_size
                ),
            });
        }
        let run = scoped(&ctx, "readback buffers", || {
            let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: staging_len.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let n_queries = 2 * steps.len() as u32;
            let timing = (ctx.has_timestamps()
                && n_queries > 0
                && n_queries <= wgpu::QUERY_SET_MAX_QUERIES)
                .then(|| {
                    let bytes = n_queries as u64 * wgpu::QUERY_SIZE as u64;
                    Timing {
                        queries: ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
                            label: Some("step timestamps"),
                            ty: wgpu::QueryType::Timestamp,
                            count: n_queries,
                        }),
                        resolve: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                            label: Some("timestamp resolve"),
                            size: bytes,
                            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                            mapped_at_creation: false,
                        }),
                        readback: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                            label: Some("timestamp readback"),
                            size: bytes,
                            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        }),
                    }
                });
            Ok(RunState { staging, timing })
        })?;
        let mut input_shape = vec![batch];
        input_shape.extend(&graph.input.item_shape);
        let in_pass = ctx.has_timestamps_in_passes() && options.profile_in_pass.unwrap_or(false);
        Ok(GpuModel {
            ctx,
            batch,
            input_shape,
            slots,
            input_slot,
            steps,
            outputs,
            run: Mutex::new(run),
            in_pass,
        })
    }

    /// Whether `run_profiled` times each step between the dispatches of one pass (as
    /// an unprofiled run executes them), rather than as a pass of its own. One pass per
    /// step is the default: it also attributes time to steps that do not depend on each
    /// other (within one pass those may overlap), but every step then pays a pass's
    /// begin and end (on an H200 no step measured under ~7 us that way, a tiny maxpool
    /// included), which weighs on short kernels.
    pub fn profiles_in_pass(&self) -> bool {
        self.in_pass
    }

    /// The batch size the model was planned for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The context the model runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Names of the steps (kernel launches grouped per node), in execution order.
    pub fn step_names(&self) -> Vec<String> {
        self.steps.iter().map(|s| s.name.clone()).collect()
    }

    /// Runs one batch: `input` must have shape `[batch, ..item_shape]`. Returns the
    /// graph outputs in order. One command buffer per call.
    pub fn run(&self, input: &Tensor) -> Result<Vec<Tensor>, GpuError> {
        self.execute(input, false).map(|(o, _)| o)
    }

    /// Each step's name (as `run_profiled` times it) and its kernel name (what `cnnpack
    /// bench` prints): the entry points its dispatches run, in recording order, repeats
    /// dropped and joined by `+` (e.g. `conv_gemm+conv_gemm_reduce`,
    /// `sketch_gather+sketch_fc`); for a conv or fc step the main one is the stored
    /// choice's `GpuChoice::name` (`decoded+conv_fwd_ubo`).
    pub fn step_kernels(&self) -> Vec<(String, String)> {
        self.steps
            .iter()
            .map(|s| {
                let recorded = s.recorded_entries();
                let name = match s.choice {
                    // The recorded dispatches in order, the main one named by the choice
                    // (which adds `decoded+`).
                    Some(choice) => recorded
                        .iter()
                        .map(|&e| {
                            if e == choice.entry() {
                                choice.name()
                            } else {
                                e.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("+"),
                    None => recorded.join("+"),
                };
                (s.name.clone(), name)
            })
            .collect()
    }

    /// Each step's name, the kernel `select::choose` stored for it (conv and fc steps)
    /// and the entry points its recorded dispatches run (in order, repeats dropped).
    pub fn step_choices(&self) -> Vec<(String, Option<GpuChoice>, Vec<&'static str>)> {
        self.steps
            .iter()
            .map(|s| (s.name.clone(), s.choice, s.recorded_entries()))
            .collect()
    }

    /// As [`GpuModel::run`], plus the GPU time of each step in milliseconds from
    /// timestamp queries (`None` when the adapter has none).
    pub fn run_profiled(
        &self,
        input: &Tensor,
    ) -> Result<(Vec<Tensor>, Option<StepTimes>), GpuError> {
        self.execute(input, true)
    }

    fn execute(
        &self,
        input: &Tensor,
        profile: bool,
    ) -> Result<(Vec<Tensor>, Option<StepTimes>), GpuError> {
        if input.shape != self.input_shape
            || input.data.len() != input.shape.iter().product::<usize>()
        {
            return Err(GpuError::BadInput {
                expected: self.input_shape.clone(),
                found: input.shape.clone(),
            });
        }
        let state = self
            .run
            .lock()
            .map_err(|_| GpuError::DeviceLost("a previous run panicked mid-way".into()))?;
        let ctx = &self.ctx;
        let timing = if profile { state.timing.as_ref() } else { None };
        scoped(ctx, "run", || {
            ctx.queue().write_buffer(
                &self.slots[self.input_slot],
                0,
                bytemuck::cast_slice(&input.data),
            );
            let mut enc = ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
            match timing {
                // One pass for all, timestamps between the steps' dispatches: what a
                // step costs inside an unprofiled run, without per-pass overhead. Only
                // meaningful for steps that depend on the one before (wgpu puts a
                // barrier between them); independent steps may overlap.
                Some(t) if self.in_pass => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("model, timed"),
                        timestamp_writes: None,
                    });
                    for (i, step) in self.steps.iter().enumerate() {
                        pass.write_timestamp(&t.queries, 2 * i as u32);
                        record(&mut pass, &step.dispatches);
                        pass.write_timestamp(&t.queries, 2 * i as u32 + 1);
                    }
                    drop(pass);
                    let n = 2 * self.steps.len() as u32;
                    enc.resolve_query_set(&t.queries, 0..n, &t.resolve, 0);
                    enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, t.resolve.size());
                }
                // One pass per step, so each step's time is bracketed by two timestamps.
                Some(t) => {
                    for (i, step) in self.steps.iter().enumerate() {
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(&step.name),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: &t.queries,
                                beginning_of_pass_write_index: Some(2 * i as u32),
                                end_of_pass_write_index: Some(2 * i as u32 + 1),
                            }),
                        });
                        record(&mut pass, &step.dispatches);
                    }
                    let n = 2 * self.steps.len() as u32;
                    enc.resolve_query_set(&t.queries, 0..n, &t.resolve, 0);
                    enc.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, t.resolve.size());
                }
                // One pass for all: wgpu inserts the barriers between dependent dispatches.
                None => {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("model"),
                        timestamp_writes: None,
                    });
                    for step in &self.steps {
                        record(&mut pass, &step.dispatches);
                    }
                }
            }
            for o in &self.outputs {
                let bytes = (o.shape.iter().product::<usize>() * 4) as u64;
                enc.copy_buffer_to_buffer(
                    &self.slots[o.slot],
                    0,
                    &state.staging,
                    o.staging_offset,
                    bytes,
                );
            }
            ctx.queue().submit([enc.finish()]);
            Ok(())
        })?;
        let raw = read_back(ctx, &state.staging, "readback")?;
        let floats: &[f32] = bytemuck::cast_slice(&raw);
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                let start = (o.staging_offset / 4) as usize;
                let len: usize = o.shape.iter().product();
                Tensor {
                    shape: o.shape.clone(),
                    data: floats[start..start + len].to_vec(),
                }
            })
            .collect();
        let times = match timing {
            Some(t) => {
                let raw = read_back(ctx, &t.readback, "timestamp readback")?;
                let ticks: &[u64] = bytemuck::cast_slice(&raw);
                let period = ctx.queue().get_timestamp_period() as f64;
                Some(
                    self.steps
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let dt = ticks[2 * i + 1].wrapping_sub(ticks[2 * i]);
                            (s.name.clone(), dt as f64 * period * 1e-6)
                        })
                        .collect(),
                )
            }
            None => None,
        };
        Ok((outputs, times))
    }
}

impl GpuModel {
    /// Submits one batch and returns without waiting for the GPU: `done` receives the
    /// outputs (as [`GpuModel::run`] returns them) once the work has finished and its
    /// readback is mapped. `done` runs on the context's poll thread: keep it short
    /// (send the result somewhere). Each call has its own readback buffer; calls are
    /// ordered by submission, and their results equal sequential runs.
    ///
    /// Errors found before submission (input shape, buffer creation, a lost device)
    /// are returned here and `done` is not called.
    pub fn run_with_callback(
        &self,
        input: &Tensor,
        done: impl FnOnce(Result<Vec<Tensor>, GpuError>) + Send + 'static,
    ) -> Result<(), GpuError> {
        if input.shape != self.input_shape
            || input.data.len() != input.shape.iter().product::<usize>()
        {
            return Err(GpuError::BadInput {
                expected: self.input_shape.clone(),
                found: input.shape.clone(),
            });
        }
        let ctx = &self.ctx;
        let layout: Vec<(Vec<usize>, u64)> = self
            .outputs
            .iter()
            .map(|o| (o.shape.clone(), o.staging_offset))
            .collect();
        let bytes: u64 = self
            .outputs
            .iter()
            .map(|o| (o.shape.iter().product::<usize>() * 4) as u64)
            .sum();
        let staging = ctx.try_create_buffer(
            "async readback",
            bytes.max(4),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        {
            // The activation buffers are shared: writing this input and submitting
            // must not interleave with another run's (queue writes land before the
            // next submit).
            let _state = self
                .run
                .lock()
                .map_err(|_| GpuError::DeviceLost("a previous run panicked mid-way".into()))?;
            scoped(ctx, "run", || {
                ctx.queue().write_buffer(
                    &self.slots[self.input_slot],
                    0,
                    bytemuck::cast_slice(&input.data),
                );
                let mut enc =
                    ctx.device()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("async run"),
                        });
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("model"),
                        timestamp_writes: None,
                    });
                    for step in &self.steps {
                        record(&mut pass, &step.dispatches);
                    }
                }
                for o in &self.outputs {
                    let n = (o.shape.iter().product::<usize>() * 4) as u64;
                    enc.copy_buffer_to_buffer(
                        &self.slots[o.slot],
                        0,
                        &staging,
                        o.staging_offset,
                        n,
                    );
                }
                ctx.queue().submit([enc.finish()]);
                Ok(())
            })?;
        }
        let ticket = ctx.poll_ticket()?;
        let buffer = staging.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let map_err = |message: String| GpuError::Map {
                buffer: "async readback",
                message,
            };
            let out = r.map_err(|e| map_err(e.to_string())).and_then(|()| {
                let view = buffer
                    .get_mapped_range(..)
                    .map_err(|e| map_err(e.to_string()))?;
                let tensors = layout
                    .iter()
                    .map(|(shape, offset)| {
                        let start = *offset as usize;
                        let len: usize = shape.iter().product();
                        Tensor {
                            shape: shape.clone(),
                            data: view[start..start + 4 * len]
                                .chunks_exact(4)
                                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        }
                    })
                    .collect();
                drop(view);
                buffer.unmap();
                Ok(tensors)
            });
            done(out);
            drop(ticket);
        });
        Ok(())
    }
}

fn record(pass: &mut wgpu::ComputePass<'_>, dispatches: &[Dispatch]) {
    for d in dispatches {
        pass.set_pipeline(&d.kernel.pipeline);
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
    }
}

/// Maps `buffer`, copies its bytes out and unmaps it.
fn read_back(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    name: &'static str,
) -> Result<Vec<u8>, GpuError> {
    let (tx, rx) = mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |r| {
        // The receiver lives until after the poll below; a failed send only means it gave up.
        let _ = tx.send(r);
    });
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| GpuError::Map {
            buffer: name,
            message: e.to_string(),
        })?;
    ctx.check_lost()?;
    rx.recv()
        .map_err(|e| GpuError::Map {
            buffer: name,
            message: e.to_string(),
        })?
        .map_err(|e| GpuError::Map {
            buffer: name,
            message: e.to_string(),
        })?;
    let bytes = buffer
        .get_mapped_range(..)
        .map_err(|e| GpuError::Map {
            buffer: name,
            message: e.to_string(),
        })?
        .to_vec();
    buffer.unmap();
    Ok(bytes)
}

/// The bytes one activation buffer may have: the adapter's binding and buffer limits,
/// capped by `options.max_activation_bytes`.
fn activation_limit(ctx: &GpuContext, options: &GpuOptions) -> u64 {
    let limit = ctx.max_binding_bytes();
    options.max_activation_bytes.map_or(limit, |m| m.min(limit))
}
