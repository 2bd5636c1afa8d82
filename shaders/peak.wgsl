// Peak micro-kernels: the roofline's roof for `cnnpack bench --peak`.
//
// peak_fma:  each invocation runs 8 independent vec4 FMA chains (enough to hide FMA
//            latency on GPUs and to fill the 8-wide SIMD of lavapipe's llvmpipe);
//            flops = invocations * iters * 8 chains * 4 lanes * 2.
// peak_read: grid-stride sum over `src` (vec4 loads); bytes = n * 16.
// peak_copy: grid-stride copy src -> dst; bytes = 2 * n * 16.
// peak_popcount: u32 xor + popcount throughput (binary-weight kernels' inner op);
//            ops = invocations * iters * 8 popcounts * 4 lanes (each with its xor).
//
// Bindings: src (read), dst (read_write), params (uniform), as in every cnnpack kernel.

struct Params {
    iters: u32,
    n: u32,        // vec4 elements in src/dst
    threads: u32,  // total invocations launched
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn peak_fma(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let seed = f32(i) * 1e-9;
    var a0 = vec4<f32>(seed);
    var a1 = a0 + 0.1;
    var a2 = a0 + 0.2;
    var a3 = a0 + 0.3;
    var a4 = a0 + 0.4;
    var a5 = a0 + 0.5;
    var a6 = a0 + 0.6;
    var a7 = a0 + 0.7;
    let m = vec4<f32>(0.9999999);
    let c = vec4<f32>(1e-7);
    for (var k = 0u; k < params.iters; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    // The store keeps the chains alive; dst holds one vec4 per invocation.
    dst[i % params.n] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

@compute @workgroup_size(256)
fn peak_popcount(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    var a0 = vec4<u32>(i, i + 1u, i + 2u, i + 3u);
    var a1 = a0 * 3u;
    var a2 = a0 * 5u;
    var a3 = a0 * 7u;
    var s = vec4<u32>(0u);
    let m = vec4<u32>(0x9E3779B9u);
    for (var k = 0u; k < params.iters; k++) {
        a0 = a0 ^ m;
        a1 = a1 ^ m;
        a2 = a2 ^ m;
        a3 = a3 ^ m;
        s += countOneBits(a0) + countOneBits(a1);
        s += countOneBits(a2) + countOneBits(a3);
        a0 = a0 ^ s;
        a1 = a1 ^ s;
        a2 = a2 ^ s;
        a3 = a3 ^ s;
        s += countOneBits(a0) + countOneBits(a1) + countOneBits(a2) + countOneBits(a3);
    }
    dst[i % params.n] = vec4<f32>(s);
}

@compute @workgroup_size(256)
fn peak_read(@builtin(global_invocation_id) gid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    for (var j = gid.x; j < params.n; j += params.threads) {
        acc += src[j];
    }
    dst[gid.x % params.n] = acc;
}

@compute @workgroup_size(256)
fn peak_copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    for (var j = gid.x; j < params.n; j += params.threads) {
        dst[j] = src[j];
    }
}
