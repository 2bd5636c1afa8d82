// Softmax over the last axis: one 64-invocation workgroup per row of `len` values
// (row = wid.y * nwg.x + wid.x). Subtracts the row max before exp for range safety.
//
// Bindings: 0 input (read), 1 output (read_write), 2 params.

struct Params {
    rows: u32,
    len: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn softmax_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    let live = row < p.rows;
    let base = row * p.len;
    var m = -3.402823e38;
    if (live) {
        for (var i = li; i < p.len; i += 64u) {
            m = max(m, x[base + i]);
        }
    }
    red[li] = m;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();
    var sum = 0.0;
    if (live) {
        for (var i = li; i < p.len; i += 64u) {
            sum += exp(x[base + i] - row_max);
        }
    }
    red[li] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    if (live) {
        for (var i = li; i < p.len; i += 64u) {
            y[base + i] = exp(x[base + i] - row_max) / total;
        }
    }
}
