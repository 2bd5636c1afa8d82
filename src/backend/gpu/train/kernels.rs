//! Host side of the training shaders: shaders/train_conv.wgsl (conv/fc backward),
//! shaders/train_ops.wgsl (every other backward, BatchNorm training forward, loss) and
//! shaders/train_sgd.wgsl (the update). Each function records one or more launches.

use super::super::context::{fw, uw, Bind, Dispatch, GpuContext, Kernel, Slot};
use super::super::GpuError;
use std::sync::Arc;

const CONV_SOURCE: &str = include_str!("../../../../shaders/train_conv.wgsl");
const OPS_SOURCE: &str = include_str!("../../../../shaders/train_ops.wgsl");
const SGD_SOURCE: &str = include_str!("../../../../shaders/train_sgd.wgsl");

/// train_conv.wgsl: a (dY), b (x or weights), out, params.
const CONV_LAYOUT: [Slot; 4] = [Slot::Read, Slot::Read, Slot::Write, Slot::Uniform];
/// train_ops.wgsl: a, b, c, d, out, out2, params.
const OPS_LAYOUT: [Slot; 7] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Write,
    Slot::Uniform,
];
/// train_sgd.wgsl: g, gradient mask, forward mask, hyper, w, v, wf, params.
const SGD_LAYOUT: [Slot; 8] = [
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Write,
    Slot::Write,
    Slot::Write,
    Slot::Uniform,
];

/// Upper bound on the f32 entries of the split-K partial buffer of the weight gradient
/// (64 MiB): layers with large weights get fewer splits.
pub(crate) const PARTIAL_BUDGET: usize = 1 << 24;
/// At most this many reduction chunks per weight gradient.
const MAX_SPLITS: usize = 64;
/// Reduction entries per chunk aimed for (before the budget caps the split count).
const SPLIT_TARGET: usize = 2048;

/// Buffers bound where a kernel reads or writes nothing (wgpu binds every slot).
pub(crate) struct Dummies {
    pub(crate) read: wgpu::Buffer,
    pub(crate) write: wgpu::Buffer,
    pub(crate) write3: wgpu::Buffer,
}

impl Dummies {
    pub(crate) fn new(ctx: &GpuContext) -> Dummies {
        let mk = |label: &str| {
            ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Dummies {
            read: mk("train dummy read"),
            write: mk("train dummy write"),
            write3: mk("train dummy write3"),
        }
    }
}

/// The sizes of one conv (or fc, as a 1x1 conv on 1x1 images): the `Conv` struct of
/// train_conv.wgsl up to `groups`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConvShape {
    pub(crate) batch: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cout: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) sh: usize,
    pub(crate) sw: usize,
    pub(crate) ph: usize,
    pub(crate) pw: usize,
    pub(crate) dh: usize,
    pub(crate) dw: usize,
    pub(crate) groups: usize,
}

impl ConvShape {
    fn cin_g(&self) -> usize {
        self.cin / self.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    /// Weight entries per output channel.
    pub(crate) fn k_len(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    /// Length of the weight-gradient reduction: images times output pixels.
    fn r_len(&self) -> usize {
        self.batch * self.oh * self.ow
    }

    /// (splits, entries per split) of the weight-gradient reduction: a function of the
    /// shape only, so the summation order never depends on the machine.
    pub(crate) fn splits(&self) -> (usize, usize) {
        let r = self.r_len().max(1);
        let weights = (self.cout * self.k_len()).max(1);
        let cap = (PARTIAL_BUDGET / weights).clamp(1, MAX_SPLITS);
        let want = r.div_ceil(SPLIT_TARGET).clamp(1, cap);
        let chunk = r.div_ceil(want).div_ceil(16) * 16;
        (r.div_ceil(chunk), chunk)
    }

    fn words(&self, m_tiles: usize, splits: usize, r_chunk: usize, total: usize) -> Vec<u32> {
        [
            self.batch,
            self.cin,
            self.h,
            self.w,
            self.cout,
            self.oh,
            self.ow,
            self.kh,
            self.kw,
            self.sh,
            self.sw,
            self.ph,
            self.pw,
            self.dh,
            self.dw,
            self.cin_g(),
            self.cout_g(),
            self.k_len(),
            self.groups,
            m_tiles,
            splits,
            r_chunk,
            total,
            0,
        ]
        .map(uw)
        .to_vec()
    }
}

fn conv_kernel(ctx: &GpuContext, entry: &'static str) -> Arc<Kernel> {
    ctx.kernel("train_conv", CONV_SOURCE, entry, &CONV_LAYOUT)
}

fn ops_kernel(ctx: &GpuContext, entry: &'static str) -> Arc<Kernel> {
    ctx.kernel("train_ops", OPS_SOURCE, entry, &OPS_LAYOUT)
}

fn grid(ctx: &GpuContext, label: &str, workgroups: usize) -> Result<[u32; 3], GpuError> {
    ctx.grid(workgroups).map_err(|e| GpuError::Unsupported {
        node: label.into(),
        op: "backward",
        reason: e,
    })
}

/// dW (and db) of a conv/fc: split-K tiled reduction into `partial` (when more than one
/// split) then the in-order sum; `dw` gets `[cout, k_len]`, `db` `[cout]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_weight_grad(
    ctx: &GpuContext,
    label: &str,
    s: &ConvShape,
    dy: &Bind,
    x: &Bind,
    dw: &wgpu::Buffer,
    db: Option<&wgpu::Buffer>,
    partial: &wgpu::Buffer,
) -> Result<Vec<Dispatch>, GpuError> {
    let (splits, r_chunk) = s.splits();
    let m_tiles = s.cout_g().div_ceil(32);
    let n_tiles = s.k_len().div_ceil(32);
    let total = s.cout * s.k_len();
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if n_tiles > max || m_tiles * s.groups > max || splits > max {
        return Err(GpuError::Unsupported {
            node: label.into(),
            op: "Conv",
            reason: format!(
                "weight-gradient grid {n_tiles}x{}x{splits} exceeds {max}",
                m_tiles * s.groups
            ),
        });
    }
    let words = s.words(m_tiles, splits, r_chunk, total);
    let mut out = vec![];
    let target = if splits > 1 {
        Bind::f32s(partial, splits * total)
    } else {
        Bind::f32s(dw, total)
    };
    out.push(ctx.dispatch(
        &conv_kernel(ctx, "conv_bwd_weight"),
        label,
        &[dy.clone(), x.clone(), target],
        &words,
        [n_tiles as u32, (m_tiles * s.groups) as u32, splits as u32],
    ));
    if splits > 1 {
        out.push(ctx.dispatch(
            &conv_kernel(ctx, "reduce_splits"),
            label,
            &[
                Bind::f32s(partial, splits * total),
                Bind::f32s(partial, splits * total),
                Bind::f32s(dw, total),
            ],
            &words,
            grid(ctx, label, total.div_ceil(256))?,
        ));
    }
    if let Some(db) = db {
        out.push(ctx.dispatch(
            &conv_kernel(ctx, "channel_sum"),
            label,
            &[dy.clone(), dy.clone(), Bind::f32s(db, s.cout)],
            &words,
            grid(ctx, label, s.cout)?,
        ));
    }
    Ok(out)
}

/// dx += conv_transpose(dY, W): the tiled kernel when `tiled` (and the pixel tiles fit
/// the grid), else the per-element gather.
pub(crate) fn conv_data_grad(
    ctx: &GpuContext,
    label: &str,
    tiled: bool,
    s: &ConvShape,
    dy: &Bind,
    w: &Bind,
    dx: &Bind,
) -> Result<Dispatch, GpuError> {
    let total = s.batch * s.cin * s.h * s.w;
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let m_tiles = s.cin_g().div_ceil(32);
    let n_tiles = (s.batch * s.h * s.w).div_ceil(32);
    if tiled && n_tiles <= max && m_tiles * s.groups <= max {
        return Ok(ctx.dispatch(
            &conv_kernel(ctx, "conv_bwd_data_tiled"),
            label,
            &[dy.clone(), w.clone(), dx.clone()],
            &s.words(m_tiles, 1, 0, total),
            [n_tiles as u32, (m_tiles * s.groups) as u32, 1],
        ));
    }
    Ok(ctx.dispatch(
        &conv_kernel(ctx, "conv_bwd_data"),
        label,
        &[dy.clone(), w.clone(), dx.clone()],
        &s.words(0, 1, 0, total),
        grid(ctx, label, total.div_ceil(256))?,
    ))
}

/// The `Ops` params struct of train_ops.wgsl (unused fields stay 0).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OpsParams {
    pub(crate) total: usize,
    pub(crate) c: usize,
    pub(crate) inner: usize,
    pub(crate) n: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) sh: usize,
    pub(crate) sw: usize,
    pub(crate) pads: [usize; 4],
    pub(crate) mode: usize,
    pub(crate) size: usize,
    pub(crate) off: usize,
    pub(crate) block: usize,
    pub(crate) block_out: usize,
    pub(crate) f: [f32; 4],
}

impl OpsParams {
    fn words(&self) -> Vec<u32> {
        let mut w: Vec<u32> = [
            self.total,
            self.c,
            self.inner,
            self.n,
            self.h,
            self.w,
            self.oh,
            self.ow,
            self.kh,
            self.kw,
            self.sh,
            self.sw,
            self.pads[0],
            self.pads[1],
            self.pads[2],
            self.pads[3],
            self.mode,
            self.size,
            self.off,
            self.block,
            self.block_out,
            0,
            0,
            0,
        ]
        .map(uw)
        .to_vec();
        w.extend(self.f.map(fw));
        w
    }
}

/// How a train_ops launch is sized.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Launch {
    /// One invocation per element, 256 per workgroup.
    Elements(usize),
    /// One 256-wide workgroup per channel.
    Channels(usize),
}

/// Records `entry` of train_ops.wgsl; `reads` fill bindings a..d in order (the rest
/// get the dummy), `out` and `out2` the two writable bindings.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ops(
    ctx: &GpuContext,
    dummies: &Dummies,
    label: &str,
    entry: &'static str,
    reads: &[&Bind],
    out: &Bind,
    out2: Option<&Bind>,
    p: &OpsParams,
    launch: Launch,
) -> Result<Dispatch, GpuError> {
    let dummy_r = Bind {
        buffer: dummies.read.clone(),
        offset: 0,
        size: 16,
    };
    let mut binds: Vec<Bind> = (0..4)
        .map(|i| reads.get(i).map_or(dummy_r.clone(), |b| (*b).clone()))
        .collect();
    binds.push(out.clone());
    binds.push(out2.cloned().unwrap_or(Bind {
        buffer: dummies.write.clone(),
        offset: 0,
        size: 16,
    }));
    let groups = match launch {
        Launch::Elements(n) => grid(ctx, label, n.div_ceil(256))?,
        Launch::Channels(c) => grid(ctx, label, c)?,
    };
    Ok(ctx.dispatch(&ops_kernel(ctx, entry), label, &binds, &p.words(), groups))
}

/// One SGD update of a parameter tensor of `len` entries. `masks` = (gradient mask,
/// forward mask, forward weight W⊙T) for conv/fc weights, `None` for unmasked tensors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgd(
    ctx: &GpuContext,
    dummies: &Dummies,
    label: &str,
    len: usize,
    grad: &wgpu::Buffer,
    hyper: &wgpu::Buffer,
    w: &wgpu::Buffer,
    v: &wgpu::Buffer,
    masks: Option<(&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer)>,
    momentum: f32,
    weight_decay: f32,
) -> Result<Dispatch, GpuError> {
    let d = |b: &wgpu::Buffer| Bind {
        buffer: b.clone(),
        offset: 0,
        size: 16,
    };
    let (gm, fm, wf) = match masks {
        Some((g, f, wf)) => (Bind::f32s(g, len), Bind::f32s(f, len), Bind::f32s(wf, len)),
        None => (d(&dummies.read), d(&dummies.read), d(&dummies.write3)),
    };
    Ok(ctx.dispatch(
        &ctx.kernel("train_sgd", SGD_SOURCE, "sgd_step", &SGD_LAYOUT),
        label,
        &[
            Bind::f32s(grad, len),
            gm,
            fm,
            Bind::f32s(hyper, 1),
            Bind::f32s(w, len),
            Bind::f32s(v, len),
            wf,
        ],
        &[
            uw(len),
            masks.is_some() as u32,
            fw(momentum),
            fw(weight_decay),
        ],
        grid(ctx, label, len.div_ceil(256))?,
    ))
}

/// wf = w ⊙ forward mask.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_mask(
    ctx: &GpuContext,
    dummies: &Dummies,
    label: &str,
    len: usize,
    w: &wgpu::Buffer,
    fmask: &wgpu::Buffer,
    wf: &wgpu::Buffer,
) -> Result<Dispatch, GpuError> {
    let d = |b: &wgpu::Buffer| Bind {
        buffer: b.clone(),
        offset: 0,
        size: 16,
    };
    Ok(ctx.dispatch(
        &ctx.kernel("train_sgd", SGD_SOURCE, "apply_mask", &SGD_LAYOUT),
        label,
        &[
            d(&dummies.read),
            d(&dummies.read),
            Bind::f32s(fmask, len),
            d(&dummies.read),
            Bind::f32s(w, len),
            d(&dummies.write),
            Bind::f32s(wf, len),
        ],
        &[uw(len), 1, 0, 0],
        grid(ctx, label, len.div_ceil(256))?,
    ))
}
