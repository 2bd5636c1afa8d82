// Dense convolution for CPU adapters (lavapipe, SwiftShader, WARP): weights read
// through a uniform buffer, 32 output channels per invocation, no workgroup memory.
//
// Why: CPU Vulkan drivers run 8 (AVX2) or 16 invocations in SIMD lanes. In Mesa's
// llvmpipe a storage-buffer or workgroup-memory load inside a loop is emitted as a
// per-lane scalar loop (about 8x the cost of one load) even when the address is the
// same in every lane, while a uniform-buffer load at a workgroup-uniform offset is a
// single scalar load plus a broadcast. So the weights (the same for every lane: lanes
// take consecutive output pixels, the workgroup a block of 32 output channels) come
// from a 64 KiB uniform buffer, and each input value (one storage load per k) feeds 32
// FMAs. Weights larger than 64 KiB arrive in row chunks of a multiple of 32 rows.
// The (ky, kx) bounds test is hoisted out of the channel loop; a clamped offset and a
// 0/1 factor replace branches. K order as in src/weights/mod.rs.
//
// Each dispatch covers one group, a range of output rows and a slice of input
// channels (so that its weights fit the 64 KiB buffer); later slices accumulate.
// Grid: x over ceil(batch*OH*OW / 64), y over ceil(rows / 32).
// Bindings: 0 input (read), 1 weights (uniform, 64 KiB: the chunk's rows in blocks of 32,
// each block k-major, [block][k][32 rows], zero rows past the end), 2 bias (read),
// 3 output (read_write), 4 params.

struct Params {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    cin_g: u32,
    cout_g: u32,
    k_len: u32,
    c_total: u32,
    c_off: u32,
    relu: u32,
    groups: u32,
    // This dispatch's group, first input channel (within the group) and channel count:
    // the uniform buffer holds weights [rows, ci_count * kh * kw] of that slice only.
    g: u32,
    ci0: u32,
    ci_count: u32,
    // Add to the output instead of storing (slices after the first); the bias is added
    // by the first slice, ReLU applied by the last.
    accumulate: u32,
    last: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<uniform> wt: array<vec4<f32>, 4096>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn conv_fwd_ubo(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = p.g;
    let co0 = wid.y * 32u;
    let ohw = p.oh * p.ow;
    let pix_total = p.batch * ohw;
    let pix = min(wid.x * 64u + li, pix_total - 1u);
    let b = pix / ohw;
    let rem = pix % ohw;
    let iy0 = i32((rem / p.ow) * p.sh) - i32(p.ph);
    let ix0 = i32((rem % p.ow) * p.sw) - i32(p.pw);
    let hw = p.h * p.w;
    let khw = p.kh * p.kw;
    let x_base = (b * p.cin + g * p.cin_g + p.ci0) * hw;
    // The chunk's weights are stored k-major per 32-row block (see the header): one
    // vec4 load gives 4 rows' weights for one k.
    let kl = p.k_len;
    let blk = wid.y * kl * 8u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = iy0 + i32(ky * p.dh);
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = ix0 + i32(kx * p.dw);
            let inside = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
            let factor = select(0.0, 1.0, inside);
            var off = x_base + select(0u, u32(iy) * p.w + u32(ix), inside);
            var wi = blk + (ky * p.kw + kx) * 8u;
            for (var ci = 0u; ci < p.ci_count; ci++) {
                let v = vec4<f32>(x[off] * factor);
                a0 = fma(wt[wi], v, a0);
                a1 = fma(wt[wi + 1u], v, a1);
                a2 = fma(wt[wi + 2u], v, a2);
                a3 = fma(wt[wi + 3u], v, a3);
                a4 = fma(wt[wi + 4u], v, a4);
                a5 = fma(wt[wi + 5u], v, a5);
                a6 = fma(wt[wi + 6u], v, a6);
                a7 = fma(wt[wi + 7u], v, a7);
                off += hw;
                wi += khw * 8u;
            }
        }
    }
    if (wid.x * 64u + li >= pix_total) {
        return;
    }
    let accs = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    for (var r = 0u; r < 32u; r++) {
        let co = co0 + r;
        if (co < p.cout_g) {
            // cout_g here is the chunk's row count; c_off places the chunk's first row.
            let i = (b * p.c_total + p.c_off + co) * ohw + rem;
            var v = accs[r / 4u][r % 4u];
            if (p.accumulate != 0u) {
                v += y[i];
            } else {
                v += bias[co];
            }
            if (p.last != 0u && p.relu != 0u) {
                v = max(v, 0.0);
            }
            y[i] = v;
        }
    }
}
