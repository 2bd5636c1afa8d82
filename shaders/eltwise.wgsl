// Element-wise ops, one invocation per element, dispatched as a 2-D grid of 256-wide
// workgroups (idx = (wid.y * nwg.x + wid.x) * 256 + lid).
//
// Bindings: 0 input (read), 1 second operand (read: the other Add input, the constant
// expanded on the host to the item shape, or BatchNorm's [scale | shift] per channel;
// unary ops bind the input again), 2 output (read_write), 3 params.

struct Params {
    total: u32,
    // unary: 0 relu, 1 leaky relu (a = alpha), 2 clip (a = min, b = max), 3 sigmoid;
    // 16 and up: UnaryOp::code_and_params (graph/op.rs).
    // const binary: 0 add, 1 sub, 2 mul, 3 div.
    op: u32,
    a: f32,
    b: f32,
    // Elements per batch item (const binary), or per channel plane (batchnorm).
    inner: u32,
    channels: u32,
    // const binary: the constant is the left operand.
    const_first: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + li;
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): WGSL has no erf.
fn erf(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
        + t * (-1.453152027 + t * 1.061405429))));
    return sign(v) * (1.0 - poly * exp(-a * a));
}

// tanh without the overflow of (e^2x - 1) / (e^2x + 1) for large |x|.
fn tanh_safe(v: f32) -> f32 {
    return sign(v) * (1.0 - 2.0 / (exp(2.0 * abs(v)) + 1.0));
}

fn unary_op(op: u32, v: f32, a: f32, b: f32) -> f32 {
    switch op {
        case 16u: { return clamp(a * v + b, 0.0, 1.0); }
        case 17u: { return v * clamp(v / 6.0 + 0.5, 0.0, 1.0); }
        case 18u: { return v / (1.0 + exp(-v)); }
        case 19u: { return tanh_safe(v); }
        case 20u: { return erf(v); }
        case 21u: {
            if (a != 0.0) {
                let u = 0.7978845608 * (v + 0.044715 * v * v * v);
                return 0.5 * v * (1.0 + tanh_safe(u));
            }
            return 0.5 * v * (1.0 + erf(v * 0.70710678118));
        }
        case 22u: { return exp(v); }
        case 23u: { return log(v); }
        case 24u: { return sqrt(v); }
        case 25u: { return -v; }
        case 26u: { return abs(v); }
        case 27u: { return 1.0 / v; }
        case 28u: { return max(v, 0.0) + log(1.0 + exp(-abs(v))); }
        case 29u: { return select(a * (exp(v) - 1.0), v, v > 0.0); }
        case 30u: { return v / (1.0 + abs(v)); }
        default: { return v; }
    }
}

@compute @workgroup_size(256, 1, 1)
fn unary_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let v = x[i];
    var r = v;
    switch p.op {
        case 0u: { r = max(v, 0.0); }
        case 1u: { r = select(p.a * v, v, v >= 0.0); }
        case 2u: { r = min(max(v, p.a), p.b); }
        case 3u: { r = 1.0 / (1.0 + exp(-v)); }
        default: { r = unary_op(p.op, v, p.a, p.b); }
    }
    y[i] = r;
}

@compute @workgroup_size(256, 1, 1)
fn add_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    y[i] = x[i] + z[i];
}

@compute @workgroup_size(256, 1, 1)
fn const_binary_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    var l = x[i];
    var r = z[i % p.inner];
    if (p.const_first != 0u) {
        let t = l;
        l = r;
        r = t;
    }
    var v = l + r;
    switch p.op {
        case 1u: { v = l - r; }
        case 2u: { v = l * r; }
        case 3u: { v = l / r; }
        default: {}
    }
    y[i] = v;
}

// Inference batch norm as a per-channel affine map: y = x * scale[c] + shift[c] with
// scale = gamma / sqrt(var + eps) and shift = beta - mean * scale folded on the host.
@compute @workgroup_size(256, 1, 1)
fn batchnorm_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let c = (i / p.inner) % p.channels;
    y[i] = fma(x[i], z[c], z[p.channels + c]);
}
