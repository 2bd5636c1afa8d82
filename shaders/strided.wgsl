// Rank-generic ops addressed by strides held in the params uniform (rank <= 8): a
// broadcasting binary between two computed tensors, an axis permutation, a reduction
// over any set of axes, and layer normalisation over the trailing axes. One invocation
// per output element (per row for layer_norm), a 2-D grid of 256-wide workgroups.
//
// Bindings: 0 first operand (read), 1 second operand (read: the other binary operand,
// layer norm's [scale | bias]; the others bind the input again), 2 output, 3 params.

struct Params {
    total: u32,
    // binary: BinaryKind::code. reduce: ReduceKind::code. layer_norm: has bias.
    op: u32,
    rank: u32,
    // reduce: elements per output. layer_norm: elements per row.
    count: u32,
    // Output dims, right-aligned to `rank` (reduce: the input dims with reduced axes 1).
    dims: array<vec4<u32>, 2>,
    // Strides of operand a (binary), of the input along each output axis (transpose,
    // reduce), 0 where an operand broadcasts.
    sa: array<vec4<u32>, 2>,
    // binary: strides of operand b. reduce: the reduced dims (kept axes 1).
    sb: array<vec4<u32>, 2>,
    // layer_norm: epsilon (f32 bits).
    eps: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + li;
}

fn dim(d: u32) -> u32 { return p.dims[d / 4u][d % 4u]; }
fn stride_a(d: u32) -> u32 { return p.sa[d / 4u][d % 4u]; }
fn stride_b(d: u32) -> u32 { return p.sb[d / 4u][d % 4u]; }

fn apply(op: u32, a: f32, b: f32) -> f32 {
    switch op {
        case 1u: { return a - b; }
        case 2u: { return a * b; }
        case 3u: { return a / b; }
        // pow: WGSL's pow is undefined for a < 0; integral exponents of negatives as
        // ONNX Runtime computes them (sign from the exponent's parity).
        case 4u: {
            if (b == 0.0) {
                return 1.0;
            }
            let m = pow(abs(a), b);
            if (a < 0.0 && b == round(b)) {
                return select(m, -m, (i32(b) & 1) != 0);
            }
            return select(bitcast<f32>(0x7fc00000u), m, a >= 0.0);
        }
        case 5u: { return max(a, b); }
        case 6u: { return min(a, b); }
        case 7u: { return select(a * b, a, a >= 0.0); }
        default: { return a + b; }
    }
}

@compute @workgroup_size(256, 1, 1)
fn binary_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    var rest = i;
    var oa = 0u;
    var ob = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let n = dim(u32(d));
        let k = rest % n;
        rest = rest / n;
        oa += k * stride_a(u32(d));
        ob += k * stride_b(u32(d));
    }
    y[i] = apply(p.op, x[oa], z[ob]);
}

@compute @workgroup_size(256, 1, 1)
fn transpose_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    var rest = i;
    var o = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let n = dim(u32(d));
        o += (rest % n) * stride_a(u32(d));
        rest = rest / n;
    }
    y[i] = x[o];
}

@compute @workgroup_size(256, 1, 1)
fn reduce_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    // The first input element of this output: its index over the kept axes.
    var rest = i;
    var base = 0u;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let n = dim(u32(d));
        base += (rest % n) * stride_a(u32(d));
        rest = rest / n;
    }
    var acc = 0.0;
    if (p.op == 2u) { acc = -3.4028235e38; }
    if (p.op == 3u) { acc = 3.4028235e38; }
    for (var r = 0u; r < p.count; r++) {
        var k = r;
        var o = base;
        for (var d = i32(p.rank) - 1; d >= 0; d--) {
            let n = stride_b(u32(d));
            o += (k % n) * stride_a(u32(d));
            k = k / n;
        }
        let v = x[o];
        switch p.op {
            case 2u: { acc = max(acc, v); }
            case 3u: { acc = min(acc, v); }
            case 4u: { acc = fma(v, v, acc); }
            default: { acc += v; }
        }
    }
    switch p.op {
        case 0u: { acc = acc / f32(p.count); }
        case 4u: { acc = sqrt(acc); }
        default: {}
    }
    y[i] = acc;
}

// One invocation per row of `count` elements: mean, then variance, then the affine map.
@compute @workgroup_size(256, 1, 1)
fn layer_norm_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = linear_index(wid, nwg, li);
    if (row >= p.total) {
        return;
    }
    let n = p.count;
    let base = row * n;
    var sum = 0.0;
    for (var j = 0u; j < n; j++) {
        sum += x[base + j];
    }
    let mean = sum / f32(n);
    var sq = 0.0;
    for (var j = 0u; j < n; j++) {
        let d = x[base + j] - mean;
        sq = fma(d, d, sq);
    }
    let inv = inverseSqrt(sq / f32(n) + bitcast<f32>(p.eps));
    for (var j = 0u; j < n; j++) {
        var v = (x[base + j] - mean) * inv * z[j];
        if (p.op != 0u) {
            v += z[n + j];
        }
        y[base + j] = v;
    }
}
