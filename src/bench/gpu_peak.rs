//! GPU peak micro-kernels (shaders/peak.wgsl): FMA rate, read and copy bandwidth,
//! xor+popcount rate. Each is the best of several timed submissions after a warm-up,
//! timed by the wall clock around submit + wait: the kernels run for tens of
//! milliseconds or more, so the submission overhead (~0.1 ms) is noise.

use crate::backend::gpu::{GpuContext, GpuError};
use serde::Serialize;
use std::time::Instant;
use wgpu::util::DeviceExt;

/// Measured peak rates of a GPU adapter.
#[derive(Clone, Debug, Serialize)]
pub struct GpuPeak {
    /// Adapter name.
    pub adapter: String,
    /// f32 FMA rate counting an FMA as 2 FLOPs, GFLOP/s.
    pub fma_gflops: f64,
    /// Read bandwidth, GB/s.
    pub read_gbps: f64,
    /// Copy bandwidth (read + write bytes), GB/s.
    pub copy_gbps: f64,
    /// u32 xor+popcount operations per second, G/s.
    pub popcount_gops: f64,
    /// Bytes of the bandwidth buffers.
    pub buffer_bytes: u64,
}

const WORKGROUP: u32 = 256;

struct Peak<'a> {
    ctx: &'a GpuContext,
    layout: wgpu::BindGroupLayout,
    module: wgpu::ShaderModule,
}

impl Peak<'_> {
    fn pipeline(&self, entry: &str) -> wgpu::ComputePipeline {
        let device = self.ctx.device();
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("peak"),
            bind_group_layouts: &[Some(&self.layout)],
            immediate_size: 0,
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&layout),
            module: &self.module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    }

    /// Best seconds of `repeats` timed submissions of `dispatches` x `groups` workgroups.
    fn time(
        &self,
        entry: &str,
        bind: &wgpu::BindGroup,
        groups: u32,
        dispatches: u32,
        repeats: usize,
    ) -> Result<f64, GpuError> {
        let pipeline = self.pipeline(entry);
        let (device, queue) = (self.ctx.device(), self.ctx.queue());
        let mut best = f64::INFINITY;
        for r in 0..=repeats {
            let mut enc = device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(entry) });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(entry),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, bind, &[]);
                for _ in 0..dispatches {
                    pass.dispatch_workgroups(groups, 1, 1);
                }
            }
            let t = Instant::now();
            queue.submit([enc.finish()]);
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| GpuError::DeviceLost(format!("waiting for {entry}: {e}")))?;
            // Submission 0 is the warm-up (pipeline compilation, first touch of memory).
            if r > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(best)
    }
}

/// Measures the adapter's peaks. `quick` uses smaller problems (for tests).
pub fn gpu_peak(ctx: &GpuContext, quick: bool) -> Result<GpuPeak, GpuError> {
    let device = ctx.device();
    let storage = |read_only| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Storage { read_only },
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty,
        count: None,
    };
    // Binding contract of shaders/peak.wgsl: src (read), dst (read_write), params (uniform).
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("peak"),
        entries: &[
            entry(0, storage(true)),
            entry(1, storage(false)),
            entry(
                2,
                wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            ),
        ],
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("peak"),
        source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/peak.wgsl").into()),
    });
    let peak = Peak {
        ctx,
        layout,
        module,
    };

    // Bandwidth buffers: far beyond any cache, within the binding limit.
    let want: u64 = if quick { 16 << 20 } else { 256 << 20 };
    let bytes = want.min(ctx.max_binding_bytes()) / 16 * 16;
    let n = (bytes / 16) as u32;
    let mk = |label, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let src = mk(
        "peak.src",
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    );
    let dst = mk("peak.dst", wgpu::BufferUsages::STORAGE);
    let groups: u32 = if ctx.is_software() { 64 } else { 4096 };
    let threads = groups * WORKGROUP;
    let iters: u32 = if quick {
        64
    } else if ctx.is_software() {
        4096
    } else {
        65536
    };
    let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("peak.params"),
        contents: bytemuck::cast_slice(&[iters, n, threads, 0u32]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("peak"),
        layout: &peak.layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: dst.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: params.as_entire_binding(),
            },
        ],
    });
    let repeats = if quick { 1 } else { 5 };
    let secs = peak.time("peak_fma", &bind, groups, 1, repeats)?;
    let fma_gflops = threads as f64 * iters as f64 * 8.0 * 4.0 * 2.0 / secs / 1e9;
    let secs = peak.time("peak_popcount", &bind, groups, 1, repeats)?;
    let popcount_gops = threads as f64 * iters as f64 * 8.0 * 4.0 / secs / 1e9;
    let secs = peak.time("peak_read", &bind, groups, 4, repeats)?;
    let read_gbps = 4.0 * bytes as f64 / secs / 1e9;
    let secs = peak.time("peak_copy", &bind, groups, 4, repeats)?;
    let copy_gbps = 4.0 * 2.0 * bytes as f64 / secs / 1e9;
    Ok(GpuPeak {
        adapter: ctx.adapter_name(),
        fma_gflops,
        read_gbps,
        copy_gbps,
        popcount_gops,
        buffer_bytes: bytes,
    })
}
