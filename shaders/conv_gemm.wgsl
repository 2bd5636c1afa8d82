// Dense convolution as an implicit GEMM for hardware GPUs, with the global loads of the
// next K tile in flight while the current one is multiplied, and split-K.
//
// Per group g: C[m, n] = sum_k A[k, m] * B[k, n] with
//   m = output channel within the group, n = flattened (batch, oy, ox) pixel,
//   k = (ci * kh + ky) * kw + kx (the K order of src/weights/mod.rs).
// A is the weight tensor transposed at upload to [group][k_pad][m_pad] (m_pad = cout_g
// rounded up to 4, k_pad = K rounded up to 16, zero-filled), so a tile row of 4 output
// channels is one aligned vec4 load and no K bound is checked.
// B is the im2col of the input, gathered on the fly: `ktab[k]` holds the input offset of
// tap k relative to the pixel's top-left corner (ci * h * w + ky * dh * w + kx * dw) and
// its (ky * dh, kx * dw) displacement for the padding test, so the loop has no integer
// division. Entries past K have a displacement that always fails the test (zeros).
//
// Tiling: a workgroup computes a 64 (m) x 64 (n) tile with 256 invocations; each holds a
// 4x4 register block. K advances 16 at a time through two workgroup tiles of 256 vec4;
// each invocation loads one vec4 of A and 4 pixels of B per step, issued before the
// multiply of the previous step so their latency overlaps it (the first version,
// conv_fwd_tiled, waited on each load: ~4 us per K step on an H200).
//
// Split-K: wid.z = group * splits + slice; slice s covers K tiles [s * kt_per, ...). With
// one slice the result (bias, ReLU) goes straight to `y`; with more, raw sums go to
// `part[slice][g * cout_g + m][n]` and `conv_gemm_reduce` finishes them.
//
// Bindings: 0 input, 1 weights (transposed, vec4), 2 bias, 3 output, 4 ktab, 5 partial
// sums (read_write), 6 params.

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
    // Rows of the transposed weights (K rounded up to 16) and their width in vec4.
    k_pad: u32,
    m4: u32,
    // K slices and K tiles (of 16) per slice.
    splits: u32,
    kt_per: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> ktab: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// a_tile[k * 16 + i]: output channels 4i..4i+3 at depth k; b_tile[k * 16 + j]: pixels
// 4j..4j+3 at depth k.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

// Where pixel n's window starts: (base offset into x, iy0, ix0), or iy0 = huge when n is
// past the end so every tap fails the bounds test.
fn pixel_origin(g: u32, n: u32) -> vec3<i32> {
    let ohw = p.oh * p.ow;
    if (n >= p.batch * ohw) {
        return vec3<i32>(0, 1 << 30, 0);
    }
    let b = n / ohw;
    let r = n % ohw;
    let iy0 = i32((r / p.ow) * p.sh) - i32(p.ph);
    let ix0 = i32((r % p.ow) * p.sw) - i32(p.pw);
    let base = i32((b * p.cin + g * p.cin_g) * p.h * p.w) + iy0 * i32(p.w) + ix0;
    return vec3<i32>(base, iy0, ix0);
}

// Input value of tap `t` (offset, packed displacement) for a pixel origin.
fn tap(o: vec3<i32>, t: vec2<u32>) -> f32 {
    let iy = o.y + i32(t.y >> 16u);
    let ix = o.z + i32(t.y & 0xffffu);
    let ok = iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    let idx = select(0, o.x + i32(t.x), ok);
    return select(0.0, x[idx], ok);
}

@compute @workgroup_size(16, 16, 1)
fn conv_gemm(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = wid.z / p.splits;
    let slice = wid.z % p.splits;
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;

    // This invocation's loads: A row (depth) `lk`, channels 4*lm..; B depth `lk`, pixels
    // 4*lm.. of the tile.
    let lk = li / 16u;
    let lm = li % 16u;
    let a_col = m0 / 4u + lm;
    let a_ok = a_col < p.m4;
    let a_base = (g * p.k_pad + lk) * p.m4 + min(a_col, p.m4 - 1u);
    let o0 = pixel_origin(g, n0 + 4u * lm);
    let o1 = pixel_origin(g, n0 + 4u * lm + 1u);
    let o2 = pixel_origin(g, n0 + 4u * lm + 2u);
    let o3 = pixel_origin(g, n0 + 4u * lm + 3u);

    let kt0 = slice * p.kt_per;
    let kt1 = min(kt0 + p.kt_per, p.k_pad / TK);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    // Loads of the first tile.
    var ra = vec4<f32>(0.0);
    var rb = vec4<f32>(0.0);
    if (kt0 < kt1) {
        let k = kt0 * TK + lk;
        ra = select(vec4<f32>(0.0), wt[a_base + kt0 * TK * p.m4], a_ok);
        let t = ktab[k];
        rb = vec4<f32>(tap(o0, t), tap(o1, t), tap(o2, t), tap(o3, t));
    }
    for (var kt = kt0; kt < kt1; kt++) {
        a_tile[lk * 16u + lm] = ra;
        b_tile[lk * 16u + lm] = rb;
        workgroupBarrier();
        // The next tile's loads go out now and land while this one is multiplied.
        if (kt + 1u < kt1) {
            let k = (kt + 1u) * TK + lk;
            ra = select(vec4<f32>(0.0), wt[a_base + (kt + 1u) * TK * p.m4], a_ok);
            let t = ktab[k];
            rb = vec4<f32>(tap(o0, t), tap(o1, t), tap(o2, t), tap(o3, t));
        }
        for (var kk = 0u; kk < TK; kk++) {
            let a = a_tile[kk * 16u + lid.y];
            let b = b_tile[kk * 16u + lid.x];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }

    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            store(g, slice, m0 + lid.y * 4u + i, n0 + lid.x * 4u + j, accs[i][j]);
        }
    }
}

// Writes one output (or partial sum) of the 64 x TN tile: shared by both tile widths.
fn store(g: u32, slice: u32, co: u32, n: u32, v: f32) {
    let ohw = p.oh * p.ow;
    let n_total = p.batch * ohw;
    if (co >= p.cout_g || n >= n_total) {
        return;
    }
    let row = g * p.cout_g + co;
    if (p.splits > 1u) {
        part[(slice * p.cout_g * p.groups + row) * n_total + n] = v;
    } else {
        var o = v + bias[row];
        if (p.relu != 0u) {
            o = max(o, 0.0);
        }
        y[((n / ohw) * p.c_total + p.c_off + row) * ohw + n % ohw] = o;
    }
}

// bw_tile[k * 32 + j]: pixels 4j..4j+3 at depth k of a 128-pixel tile.
var<workgroup> bw_tile: array<vec4<f32>, 512>;

// As `conv_gemm` with 64 x 128 tiles and 4x8 register blocks (columns 4*tx.. and
// 64 + 4*tx..): 32 FMAs per three workgroup vec4 loads instead of 16 per two. An
// alternative for large GPUs, chosen with `ConvKernel::GemmWide` (not measured on one yet).
@compute @workgroup_size(16, 16, 1)
fn conv_gemm_wide(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = wid.z / p.splits;
    let slice = wid.z % p.splits;
    let m0 = wid.y * TM;
    let n0 = wid.x * 2u * TN;

    let lk = li / 16u;
    let lm = li % 16u;
    let a_col = m0 / 4u + lm;
    let a_ok = a_col < p.m4;
    let a_base = (g * p.k_pad + lk) * p.m4 + min(a_col, p.m4 - 1u);
    // Pixel quads lm (pixels 4*lm..) and lm + 16 (pixels 64 + 4*lm..) of the tile.
    let q0 = n0 + 4u * lm;
    let q1 = q0 + TN;
    let o0 = pixel_origin(g, q0);
    let o1 = pixel_origin(g, q0 + 1u);
    let o2 = pixel_origin(g, q0 + 2u);
    let o3 = pixel_origin(g, q0 + 3u);
    let o4 = pixel_origin(g, q1);
    let o5 = pixel_origin(g, q1 + 1u);
    let o6 = pixel_origin(g, q1 + 2u);
    let o7 = pixel_origin(g, q1 + 3u);

    let kt0 = slice * p.kt_per;
    let kt1 = min(kt0 + p.kt_per, p.k_pad / TK);

    var acc: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    var ra = vec4<f32>(0.0);
    var rb0 = vec4<f32>(0.0);
    var rb1 = vec4<f32>(0.0);
    if (kt0 < kt1) {
        ra = select(vec4<f32>(0.0), wt[a_base + kt0 * TK * p.m4], a_ok);
        let t = ktab[kt0 * TK + lk];
        rb0 = vec4<f32>(tap(o0, t), tap(o1, t), tap(o2, t), tap(o3, t));
        rb1 = vec4<f32>(tap(o4, t), tap(o5, t), tap(o6, t), tap(o7, t));
    }
    for (var kt = kt0; kt < kt1; kt++) {
        a_tile[lk * 16u + lm] = ra;
        bw_tile[lk * 32u + lm] = rb0;
        bw_tile[lk * 32u + 16u + lm] = rb1;
        workgroupBarrier();
        if (kt + 1u < kt1) {
            ra = select(vec4<f32>(0.0), wt[a_base + (kt + 1u) * TK * p.m4], a_ok);
            let t = ktab[(kt + 1u) * TK + lk];
            rb0 = vec4<f32>(tap(o0, t), tap(o1, t), tap(o2, t), tap(o3, t));
            rb1 = vec4<f32>(tap(o4, t), tap(o5, t), tap(o6, t), tap(o7, t));
        }
        for (var kk = 0u; kk < TK; kk++) {
            let a = a_tile[kk * 16u + lid.y];
            let b0 = bw_tile[kk * 32u + lid.x];
            let b1 = bw_tile[kk * 32u + 16u + lid.x];
            acc[0] = fma(vec4<f32>(a.x), b0, acc[0]);
            acc[1] = fma(vec4<f32>(a.y), b0, acc[1]);
            acc[2] = fma(vec4<f32>(a.z), b0, acc[2]);
            acc[3] = fma(vec4<f32>(a.w), b0, acc[3]);
            acc[4] = fma(vec4<f32>(a.x), b1, acc[4]);
            acc[5] = fma(vec4<f32>(a.y), b1, acc[5]);
            acc[6] = fma(vec4<f32>(a.z), b1, acc[6]);
            acc[7] = fma(vec4<f32>(a.w), b1, acc[7]);
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let co = m0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            store(g, slice, co, n0 + lid.x * 4u + j, acc[i][j]);
            store(g, slice, co, n0 + TN + lid.x * 4u + j, acc[4u + i][j]);
        }
    }
}

// Sums the K slices of `conv_gemm`, adds the bias, applies ReLU: one invocation per
// (output channel, pixel), a 2-D grid of 256-wide workgroups.
@compute @workgroup_size(256, 1, 1)
fn conv_gemm_reduce(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + li;
    let ohw = p.oh * p.ow;
    let n_total = p.batch * ohw;
    let rows = p.cout_g * p.groups;
    if (idx >= rows * n_total) {
        return;
    }
    let row = idx / n_total;
    let n = idx % n_total;
    var v = bias[row];
    for (var s = 0u; s < p.splits; s++) {
        v += part[(s * rows + row) * n_total + n];
    }
    if (p.relu != 0u) {
        v = max(v, 0.0);
    }
    y[((n / ohw) * p.c_total + p.c_off + row) * ohw + n % ohw] = v;
}
