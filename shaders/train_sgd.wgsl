// SGD with momentum and weight decay (Caffe semantics) and the two weight masks.
//
// v = momentum * v + lr * (g + weight_decay * w); w -= v, for every entry whose
// gradient mask is set; frozen entries (gradient mask 0) keep w and v. With masks, the
// forward weight wf = w ⊙ forward_mask is rewritten after the update, so the forward
// and backward passes use W⊙T while the update reached every entry of W.
//
// Bindings: 0 g (read), 1 gradient mask (read, 1.0 / 0.0), 2 forward mask (read),
// 3 hyper (read: [lr], written by the host each step so recorded launches stay valid),
// 4 w, 5 v, 6 wf (read_write), 7 params. Unmasked tensors (biases, BatchNorm) bind
// dummies for 1, 2, 6 and set masked = 0.

struct Sgd {
    total: u32,
    masked: u32,
    momentum: f32,
    weight_decay: f32,
}

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> gmask: array<f32>;
@group(0) @binding(2) var<storage, read> fmask: array<f32>;
@group(0) @binding(3) var<storage, read> hyper: array<f32>;
@group(0) @binding(4) var<storage, read_write> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> wf: array<f32>;
@group(0) @binding(7) var<uniform> p: Sgd;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + li;
}

@compute @workgroup_size(256, 1, 1)
fn sgd_step(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    if (p.masked == 0u || gmask[i] != 0.0) {
        let vi = p.momentum * v[i] + hyper[0] * (g[i] + p.weight_decay * w[i]);
        v[i] = vi;
        w[i] = w[i] - vi;
    }
    if (p.masked != 0u) {
        wf[i] = select(0.0, w[i], fmask[i] != 0.0);
    }
}

// wf = w ⊙ forward mask (after the masks change).
@compute @workgroup_size(256, 1, 1)
fn apply_mask(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    wf[i] = select(0.0, w[i], fmask[i] != 0.0);
}
