// Pooling over H and W of NCHW tensors, one invocation per output element, dispatched as
// a 2-D grid of 256-wide workgroups.
//
// Semantics (src/graph/op.rs): max pooling takes the max over in-input elements only
// (padding never wins). Average pooling clips the window to the padded input (as ONNX
// Runtime does when ceil_mode makes a window overhang) and divides by that padded window
// area when count_include_pad, otherwise by the number of in-input elements.
//
// Bindings: 0 input (read), 1 output (read_write), 2 params.

struct Params {
    total: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    pb: u32,
    pr: u32,
    // 0 max, 1 average counting padding, 2 average over in-input elements only.
    mode: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256, 1, 1)
fn pool_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + li;
    if (idx >= p.total) {
        return;
    }
    let ohw = p.oh * p.ow;
    let plane = idx / ohw;
    let pix = idx % ohw;
    let hs = i32((pix / p.ow) * p.sh) - i32(p.pt);
    let ws = i32((pix % p.ow) * p.sw) - i32(p.pl);
    let he_pad = min(hs + i32(p.kh), i32(p.h + p.pb));
    let we_pad = min(ws + i32(p.kw), i32(p.w + p.pr));
    let h0 = max(hs, 0);
    let w0 = max(ws, 0);
    let h1 = min(he_pad, i32(p.h));
    let w1 = min(we_pad, i32(p.w));
    let base = plane * p.h * p.w;
    if (p.mode == 0u) {
        var m = -3.402823e38;
        for (var iy = h0; iy < h1; iy++) {
            for (var ix = w0; ix < w1; ix++) {
                m = max(m, x[base + u32(iy) * p.w + u32(ix)]);
            }
        }
        y[idx] = m;
        return;
    }
    var s = 0.0;
    for (var iy = h0; iy < h1; iy++) {
        for (var ix = w0; ix < w1; ix++) {
            s += x[base + u32(iy) * p.w + u32(ix)];
        }
    }
    var count = (h1 - h0) * (w1 - w0);
    if (p.mode == 1u) {
        count = (he_pad - hs) * (we_pad - ws);
    }
    y[idx] = s / f32(max(count, 1));
}

// Global average pooling: one invocation per (n, c) plane; `total` planes of h*w values.
@compute @workgroup_size(256, 1, 1)
fn global_avg_pool_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + li;
    if (idx >= p.total) {
        return;
    }
    let hw = p.h * p.w;
    let base = idx * hw;
    var s = 0.0;
    for (var i = 0u; i < hw; i++) {
        s += x[base + i];
    }
    y[idx] = s / f32(hw);
}
