// Linear layers at small batch: y[n, row_off + r] = sum_k x[n, k] * W[r, k] + b[r] (+ ReLU).
//
// GEMV: one 64-invocation workgroup per output row and batch item; each invocation
// strides over K (consecutive invocations read consecutive weights, so loads coalesce)
// and a workgroup tree reduction sums the 64 partials. `linear_fwd_gemv8` does the same
// for 8 batch items at once (wid.z = group of 8 items), so each weight is read from
// memory once per 8 items instead of once per item. Weight matrices larger than the
// adapter's storage binding limit arrive as row chunks: each chunk is its own dispatch,
// `row_off` places its rows in the output. Larger batches use a 1x1 conv kernel.
//
// Bindings: 0 input (read), 1 weights (read), 2 bias (read), 3 output (read_write), 4 params.

struct Params {
    rows: u32,
    k_len: u32,
    out_total: u32,
    row_off: u32,
    relu: u32,
    // Batch items (linear_fwd_gemv8).
    batch: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn linear_fwd_gemv(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = wid.y * nwg.x + wid.x;
    let n = wid.z;
    // Uniform control flow: every invocation reaches the barriers, rows past the end add nothing.
    let live = r < p.rows;
    var acc = 0.0;
    if (live) {
        let w_base = r * p.k_len;
        let x_base = n * p.k_len;
        for (var k = li; k < p.k_len; k += 64u) {
            acc = fma(x[x_base + k], wt[w_base + k], acc);
        }
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u && live) {
        var v = partial[0] + bias[r];
        if (p.relu != 0u) {
            v = max(v, 0.0);
        }
        y[n * p.out_total + p.row_off + r] = v;
    }
}

var<workgroup> partial8: array<vec4<f32>, 128>;

@compute @workgroup_size(64, 1, 1)
fn linear_fwd_gemv8(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = wid.y * nwg.x + wid.x;
    let n0 = wid.z * 8u;
    let live = r < p.rows;
    // Items past the batch read the last item (in bounds); their sums are dropped.
    let last = p.batch - 1u;
    let b0 = vec4<u32>(min(n0, last), min(n0 + 1u, last), min(n0 + 2u, last), min(n0 + 3u, last)) * p.k_len;
    let b1 = vec4<u32>(min(n0 + 4u, last), min(n0 + 5u, last), min(n0 + 6u, last), min(n0 + 7u, last)) * p.k_len;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    if (live) {
        let w_base = r * p.k_len;
        for (var k = li; k < p.k_len; k += 64u) {
            let w = wt[w_base + k];
            lo = fma(vec4<f32>(x[b0.x + k], x[b0.y + k], x[b0.z + k], x[b0.w + k]), vec4<f32>(w), lo);
            hi = fma(vec4<f32>(x[b1.x + k], x[b1.y + k], x[b1.z + k], x[b1.w + k]), vec4<f32>(w), hi);
        }
    }
    partial8[li] = lo;
    partial8[64u + li] = hi;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial8[li] += partial8[li + s];
            partial8[64u + li] += partial8[64u + li + s];
        }
        workgroupBarrier();
    }
    // Invocation i < 8 finishes item n0 + i.
    if (li < 8u && live && n0 + li < p.batch) {
        var v = partial8[(li / 4u) * 64u][li % 4u] + bias[r];
        if (p.relu != 0u) {
            v = max(v, 0.0);
        }
        y[(n0 + li) * p.out_total + p.row_off + r] = v;
    }
}
