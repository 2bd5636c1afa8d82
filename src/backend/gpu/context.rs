//! The device, its queue and limits, the cache of compute pipelines, and `scoped` (the
//! error scopes every upload and submission runs in).

use super::GpuError;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use wgpu::util::DeviceExt;

/// What a binding of a kernel's bind group layout holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A read-only storage buffer (inputs, weights).
    Read,
    /// A read-write storage buffer (outputs).
    Write,
    /// The params uniform (always last).
    Uniform,
}

/// A compute pipeline with the bind group layout it was built against.
pub(crate) struct Kernel {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::ComputePipeline,
    /// The shader entry point (named in `cnnpack bench`'s per-layer report).
    pub(crate) entry: &'static str,
}

/// A byte range of a buffer bound to one binding.
#[derive(Clone, Debug)]
pub(crate) struct Bind {
    pub(crate) buffer: wgpu::Buffer,
    /// Byte offset (a multiple of the adapter's storage offset alignment; 0 so far).
    pub(crate) offset: u64,
    /// Byte length (> 0, a multiple of 4).
    pub(crate) size: u64,
}

impl Bind {
    /// The first `elements` f32 values of `buffer`.
    pub(crate) fn f32s(buffer: &wgpu::Buffer, elements: usize) -> Bind {
        Bind {
            buffer: buffer.clone(),
            offset: 0,
            size: (elements.max(1) * 4) as u64,
        }
    }
}

/// One recorded kernel launch: pipeline, bindings and workgroup counts.
pub(crate) struct Dispatch {
    pub(crate) kernel: Arc<Kernel>,
    pub(crate) bind_group: wgpu::BindGroup,
    pub(crate) groups: [u32; 3],
}

/// A wgpu device and queue with the adapter's description and limits.
///
/// Shared (`Arc`) by every model built on it; pipelines are compiled once per
/// context and kernel.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    timestamps: bool,
    timestamps_in_passes: bool,
    lost: Arc<Mutex<Option<String>>>,
    /// Compiled pipelines by (shader family, entry point).
    kernels: Mutex<HashMap<(String, &'static str), Arc<Kernel>>>,
    poller: Arc<Poller>,
}

/// Drives wgpu's map callbacks for asynchronous runs: one background thread per
/// context polls the device while any async readback is in flight and sleeps
/// otherwise, so no thread is blocked per request.
#[derive(Default)]
struct Poller {
    state: Mutex<PollState>,
    wake: Condvar,
}

#[derive(Default)]
struct PollState {
    /// Async readbacks whose map callback has not run yet.
    pending: usize,
    /// The poll thread exists.
    started: bool,
    /// The context is gone: the thread exits.
    stop: bool,
}

/// One in-flight async readback; dropping it (after its callback ran) lets the poll
/// thread sleep again once none is left.
pub(crate) struct PollTicket(Arc<Poller>);

impl Drop for PollTicket {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        if let Ok(mut s) = self.poller.state.lock() {
            s.stop = true;
        }
        self.poller.wake.notify_all();
    }
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_name())
            .field("timestamps", &self.timestamps)
            .finish()
    }
}

impl GpuContext {
    /// Picks an adapter and opens a device on it.
    ///
    /// Honours env `WGPU_BACKEND` (comma list of vulkan, metal, dx12, gl) and
    /// `WGPU_ADAPTER_NAME` (case-insensitive substring of the adapter name). Requests the
    /// adapter's own limits (so large storage bindings are available) and
    /// `TIMESTAMP_QUERY` (and `TIMESTAMP_QUERY_INSIDE_PASSES`) when the adapter has it.
    pub fn new() -> Result<GpuContext, GpuError> {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let wanted = std::env::var("WGPU_ADAPTER_NAME").ok();
        let adapter = match &wanted {
            Some(name) => {
                let name = name.to_lowercase();
                let adapters = pollster::block_on(instance.enumerate_adapters(backends));
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&name))
                    .ok_or_else(|| {
                        GpuError::NoAdapter(format!(
                            "no adapter name contains WGPU_ADAPTER_NAME='{name}' (backends {backends:?}; found {names:?})"
                        ))
                    })?
            }
            None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            }))
            .map_err(|e| {
                GpuError::NoAdapter(format!(
                    "no wgpu adapter for backends {backends:?} ({e}); install a Vulkan driver \
                     (e.g. Mesa's lavapipe, Debian package mesa-vulkan-drivers) or use the CPU backend"
                ))
            })?,
        };
        // Timestamps between dispatches of one pass too, where the adapter has them
        // (`GpuModel::run_profiled` with `GpuOptions::profile_in_pass`).
        let features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("cnnpack"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| GpuError::RequestDevice(format!("{}: {e}", adapter.get_info().name)))?;
        Ok(GpuContext::from_device(device, queue))
    }

    /// Wraps an application's own device and queue (a game or desktop app). Uses
    /// whatever limits and features the device was created with; timestamps only if it
    /// has `TIMESTAMP_QUERY`.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> GpuContext {
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        // Errors are caught with error scopes around every creation and run; anything
        // escaping them is reported here instead of panicking inside wgpu.
        device.on_uncaptured_error(Arc::new(|e| {
            eprintln!("cnnpack: uncaptured wgpu error: {e}")
        }));
        GpuContext {
            info: device.adapter_info(),
            limits: device.limits(),
            timestamps: device.features().contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_passes: device.features().contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            ),
            device,
            queue,
            lost,
            kernels: Mutex::new(HashMap::new()),
            poller: Arc::default(),
        }
    }

    /// Adapter name and backend, e.g. `"llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"`.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// True for a CPU implementation (lavapipe, WARP, SwiftShader): timings are not GPU speed.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether per-pass timestamp queries are available.
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// Whether timestamps can also be written between the dispatches of one pass.
    pub fn has_timestamps_in_passes(&self) -> bool {
        self.timestamps_in_passes
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Largest storage binding in bytes (the smaller of the binding and buffer limits).
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Why the device was lost (driver reset, removal, `Device::destroy`), once it was;
    /// `None` while it works. A lost device never comes back: every later call on this
    /// context returns `GpuError::DeviceLost`; build a new context (or `Engine`).
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// True once the device is lost (see [`GpuContext::lost_reason`]).
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    pub(crate) fn check_lost(&self) -> Result<(), GpuError> {
        match self.lost_reason() {
            Some(msg) => Err(GpuError::DeviceLost(msg)),
            None => Ok(()),
        }
    }

    /// Registers one async readback and makes sure the poll thread runs; the ticket
    /// goes into the map callback and is dropped when it has run.
    pub(crate) fn poll_ticket(&self) -> Result<PollTicket, GpuError> {
        let mut s = self
            .poller
            .state
            .lock()
            .map_err(|_| GpuError::DeviceLost("the poll thread panicked".into()))?;
        s.pending += 1;
        if !s.started {
            let device = self.device.clone();
            let lost = self.lost.clone();
            let poller = self.poller.clone();
            std::thread::Builder::new()
                .name("cnnpack-wgpu-poll".into())
                .spawn(move || poll_loop(&device, &lost, &poller))
                .map_err(|e| GpuError::Map {
                    buffer: "async readback",
                    message: format!("cannot start the poll thread: {e}"),
                })?;
            s.started = true;
        }
        drop(s);
        self.poller.wake.notify_all();
        Ok(PollTicket(self.poller.clone()))
    }

    /// Creates a buffer of `size` bytes inside out-of-memory and validation error
    /// scopes: a size over the adapter's limits, or memory the device does not have,
    /// comes back as `GpuError::Validation` / `GpuError::OutOfMemory` naming `label`
    /// (wgpu's message names the limit), and a lost device as `GpuError::DeviceLost`.
    pub fn try_create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        scoped(self, label, || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            }))
        })
    }

    /// The pipeline for `entry` of `family`'s shader, compiled on first use.
    /// `slots` is the bind group layout, binding 0 first, spelled out by the family's host file.
    pub(crate) fn kernel(
        &self,
        family: &'static str,
        source: &'static str,
        entry: &'static str,
        slots: &[Slot],
    ) -> Arc<Kernel> {
        self.kernel_from(family, || source.to_string(), entry, slots, true)
    }

    /// A kernel whose source is generated (specialised per layer shape): `family` names
    /// the variant (it keys the cache, so `source` runs once per family). Without
    /// `zero_workgroup_memory` wgpu skips zeroing the workgroup variables at launch; only
    /// for shaders that write every workgroup value before reading it.
    pub(crate) fn kernel_generated(
        &self,
        family: String,
        source: impl FnOnce() -> String,
        entry: &'static str,
        slots: &[Slot],
        zero_workgroup_memory: bool,
    ) -> Arc<Kernel> {
        self.kernel_from(family, source, entry, slots, zero_workgroup_memory)
    }

    fn kernel_from(
        &self,
        family: impl Into<String>,
        source: impl FnOnce() -> String,
        entry: &'static str,
        slots: &[Slot],
        zero_workgroup_memory: bool,
    ) -> Arc<Kernel> {
        let family = family.into();
        let mut cache = self
            .kernels
            .lock()
            .expect("kernel cache mutex is not poisoned");
        let key = (family, entry);
        if let Some(k) = cache.get(&key) {
            return k.clone();
        }
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match s {
                        Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Slot::Write => wgpu::BufferBindingType::Storage { read_only: false },
                        Slot::Uniform => wgpu::BufferBindingType::Uniform,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(entry),
                entries: &entries,
            });
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&key.0),
                source: wgpu::ShaderSource::Wgsl(source().into()),
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: zero_workgroup_memory,
                    ..Default::default()
                },
                cache: None,
            });
        let k = Arc::new(Kernel {
            layout,
            pipeline,
            entry,
        });
        cache.insert(key, k.clone());
        k
    }

    /// A read-only storage buffer holding `data` (at least 4 bytes: wgpu cannot bind empty buffers).
    pub(crate) fn upload(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        let zero = [0.0f32];
        let data = if data.is_empty() { &zero[..] } else { data };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
    }

    /// A uniform buffer holding `data` (the caller pads it to the size the shader declares).
    pub(crate) fn upload_uniform(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Records a launch of `kernel` over `binds` (in layout order, the params uniform
    /// excluded) with `params` (u32 words; f32 as bits) in a fresh uniform buffer.
    pub(crate) fn dispatch(
        &self,
        kernel: &Arc<Kernel>,
        label: &str,
        binds: &[Bind],
        params: &[u32],
        groups: [u32; 3],
    ) -> Dispatch {
        // Every params struct fits in 64 words; a fixed size keeps the binding at least
        // as large as the struct the shader declares, whatever the host filled in.
        let mut words = params.to_vec();
        words.resize(PARAMS_WORDS.max(params.len()), 0);
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries: Vec<wgpu::BindGroupEntry> = binds
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size),
                }),
            })
            .collect();
        entries.push(wgpu::BindGroupEntry {
            binding: binds.len() as u32,
            resource: uniform.as_entire_binding(),
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &kernel.layout,
            entries: &entries,
        });
        Dispatch {
            kernel: kernel.clone(),
            bind_group,
            groups,
        }
    }

    /// Workgroup counts covering `workgroups` linear workgroups as a 2-D grid within the
    /// per-dimension limit; shaders index `wid.y * nwg.x + wid.x` and bounds-check.
    pub(crate) fn grid(&self, workgroups: usize) -> Result<[u32; 3], String> {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1) as usize;
        let w = workgroups.max(1);
        let x = w.min(max);
        let y = w.div_ceil(x);
        if y > max {
            return Err(format!("{w} workgroups exceed the {max}x{max} grid"));
        }
        Ok([x as u32, y as u32, 1])
    }
}

/// Runs `f` inside out-of-memory and validation error scopes; a caught error names `layer`.
pub(crate) fn scoped<T>(
    ctx: &GpuContext,
    layer: &str,
    f: impl FnOnce() -> Result<T, GpuError>,
) -> Result<T, GpuError> {
    let oom = ctx
        .device()
        .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let val = ctx.device().push_error_scope(wgpu::ErrorFilter::Validation);
    ctx.check_lost()?;
    let out = f();
    let val = pollster::block_on(val.pop());
    let oom = pollster::block_on(oom.pop());
    // On a lost device every call fails validation; the loss is the error to report.
    ctx.check_lost()?;
    if let Some(e) = oom {
        return Err(GpuError::OutOfMemory {
            layer: layer.into(),
            message: e.to_string(),
        });
    }
    if let Some(e) = val {
        return Err(GpuError::Validation {
            layer: layer.into(),
            message: e.to_string(),
        });
    }
    ctx.check_lost()?;
    out
}

/// The poll thread: waits while nothing is in flight, polls the device (firing map
/// callbacks) while something is, exits when the context is dropped.
fn poll_loop(device: &wgpu::Device, lost: &Mutex<Option<String>>, poller: &Poller) {
    loop {
        {
            let Ok(mut s) = poller.state.lock() else {
                return;
            };
            while s.pending == 0 && !s.stop {
                s = match poller.wake.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
            if s.stop {
                return;
            }
        }
        let failed = device.poll(wgpu::PollType::wait_indefinitely()).is_err();
        // A lost device fails every poll (and its pending maps); don't spin on it.
        if failed || lost.lock().map_or(true, |l| l.is_some()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Size of every params uniform in u32 words (the largest struct, copy.wgsl's, has 36).
const PARAMS_WORDS: usize = 64;

/// f32 as a params word.
pub(crate) fn fw(v: f32) -> u32 {
    v.to_bits()
}

/// usize as a params word (sizes are checked against the binding limit, far below 2^32).
pub(crate) fn uw(v: usize) -> u32 {
    v as u32
}
