// Local response normalisation across channels (ONNX LRN), one invocation per element:
//   y = x / (bias + alpha / size * sum_{c' in window} x[c']^2) ^ beta,
// window c - floor((size-1)/2) ..= c + ceil((size-1)/2), clipped to the channels.
//
// Bindings: 0 input (read), 1 output (read_write), 2 params.

struct Params {
    total: u32,
    channels: u32,
    hw: u32,
    size: u32,
    alpha: f32,
    beta: f32,
    bias: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256, 1, 1)
fn lrn_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + li;
    if (i >= p.total) {
        return;
    }
    let c = i32((i / p.hw) % p.channels);
    let plane0 = i - u32(c) * p.hw; // element (n, 0, h, w)
    let lo = max(c - i32((p.size - 1u) / 2u), 0);
    let hi = min(c + i32(p.size / 2u), i32(p.channels) - 1);
    var s = 0.0;
    for (var cc = lo; cc <= hi; cc++) {
        let v = x[plane0 + u32(cc) * p.hw];
        s = fma(v, v, s);
    }
    y[i] = x[i] / pow(p.bias + p.alpha / f32(p.size) * s, p.beta);
}
