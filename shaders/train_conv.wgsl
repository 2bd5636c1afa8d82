// Conv and fully connected backward (a Linear layer is a 1x1 conv on a 1x1 image).
//
// - conv_bwd_weight: dW_g[co, k] = sum_r dY_g[co, r] * patch[r, k] over r = (image,
//   output pixel), an implicit GEMM: 32x32 output tiles per workgroup, 16-deep slices of
//   the reduction staged in workgroup memory, 2x2 outputs per invocation. The reduction
//   is split into `splits` fixed chunks (workgroup z) written to separate partial rows,
//   which reduce_splits then adds in chunk order: deterministic, no float atomics.
// - conv_bwd_data_tiled: dX_g[ci, pixel] = sum_q W_g[ci, q] * dYcol[q, pixel] over
//   q = (co, ky, kx), where dYcol holds the output gradient at the output pixel that read
//   the input pixel through tap (ky, kx) (0 where none did): the same 32x32 tiling, one
//   workgroup per (input-channel tile, pixel tile), no split. Each input element is
//   written by exactly one invocation, which adds to dx (it may already hold the gradient
//   from another reader of the same value).
// - conv_bwd_data: the untiled gather (one invocation per input element), used when the
//   pixel tiles exceed the grid limit.
// - channel_sum: bias gradient, one workgroup per channel, fixed-order tree reduction.
//
// Bindings: 0 a (read: dY), 1 b (read: x for the weight gradient, the weights for the
// data gradient), 2 out (read_write), 3 params.

struct Conv {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
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
    groups: u32,
    // Output-channel tiles per group (conv_bwd_weight: workgroup y = group * m_tiles + tile).
    m_tiles: u32,
    splits: u32,
    // Reduction entries per split (a multiple of 16).
    r_chunk: u32,
    // Elements (conv_bwd_data: of dx; reduce_splits: of dW).
    total: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Conv;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + li;
}

// dY of output channel m of group g at reduction index r = image * OH*OW + pixel.
fn load_dy(g: u32, m: u32, r: u32, r_len: u32) -> f32 {
    if (m >= p.cout_g || r >= r_len) {
        return 0.0;
    }
    let np = p.oh * p.ow;
    let n = r / np;
    let q = r % np;
    return a[(n * p.cout + g * p.cout_g + m) * np + q];
}

// The im2col entry (r, k) of group g: k = (ci, ky, kx); padding reads as 0.
fn load_patch(g: u32, r: u32, k: u32, r_len: u32) -> f32 {
    if (k >= p.k_len || r >= r_len) {
        return 0.0;
    }
    let np = p.oh * p.ow;
    let n = r / np;
    let q = r % np;
    let oy = q / p.ow;
    let ox = q % p.ow;
    let khw = p.kh * p.kw;
    let ci = k / khw;
    let t = k % khw;
    let ky = t / p.kw;
    let kx = t % p.kw;
    let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
    let ix = i32(ox * p.sw + kx * p.dw) - i32(p.pw);
    if (iy < 0 || iy >= i32(p.h) || ix < 0 || ix >= i32(p.w)) {
        return 0.0;
    }
    return b[((n * p.cin + g * p.cin_g + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

// [32 channels][16 reduction]: consecutive invocations load consecutive pixels of dY.
var<workgroup> tile_a: array<f32, 512>;
// [16 reduction][32 weight columns].
var<workgroup> tile_b: array<f32, 512>;

@compute @workgroup_size(16, 16, 1)
fn conv_bwd_weight(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = wid.y / p.m_tiles;
    let m0 = (wid.y % p.m_tiles) * 32u;
    let n0 = wid.x * 32u;
    let r_len = p.batch * p.oh * p.ow;
    let r_begin = wid.z * p.r_chunk;
    let r_end = min(r_begin + p.r_chunk, r_len);
    let flat = lid.y * 16u + lid.x;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var r0 = r_begin; r0 < r_end; r0 += 16u) {
        for (var j = 0u; j < 2u; j++) {
            let e = flat + 256u * j;
            // tile_a: e = m * 16 + rr.
            tile_a[e] = load_dy(g, m0 + e / 16u, r0 + e % 16u, r_end);
            // tile_b: e = rr * 32 + n.
            tile_b[e] = load_patch(g, r0 + e / 32u, n0 + e % 32u, r_end);
        }
        workgroupBarrier();
        for (var rr = 0u; rr < 16u; rr++) {
            let a0 = tile_a[(lid.y * 2u) * 16u + rr];
            let a1 = tile_a[(lid.y * 2u + 1u) * 16u + rr];
            let b0 = tile_b[rr * 32u + lid.x * 2u];
            let b1 = tile_b[rr * 32u + lid.x * 2u + 1u];
            acc[0] += a0 * b0;
            acc[1] += a0 * b1;
            acc[2] += a1 * b0;
            acc[3] += a1 * b1;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        let m = m0 + lid.y * 2u + i;
        for (var j = 0u; j < 2u; j++) {
            let n = n0 + lid.x * 2u + j;
            if (m < p.cout_g && n < p.k_len) {
                out[(wid.z * p.cout + g * p.cout_g + m) * p.k_len + n] = acc[i * 2u + j];
            }
        }
    }
}

// W_g[ci, q] with q = (co, ky, kx) (bindings: b = weights).
fn load_wt(g: u32, ci: u32, q: u32) -> f32 {
    let khw = p.kh * p.kw;
    if (ci >= p.cin_g || q >= p.cout_g * khw) {
        return 0.0;
    }
    let co = q / khw;
    return b[((g * p.cout_g + co) * p.cin_g + ci) * khw + q % khw];
}

// dY at the output pixel that read input pixel `pix` (= image * H*W + iy * W + ix)
// through tap q = (co, ky, kx) of group g, 0 where no output pixel did.
fn load_dycol(g: u32, q: u32, pix: u32) -> f32 {
    let khw = p.kh * p.kw;
    if (q >= p.cout_g * khw || pix >= p.batch * p.h * p.w) {
        return 0.0;
    }
    let co = q / khw;
    let t = q % khw;
    let ky = t / p.kw;
    let kx = t % p.kw;
    let hw = p.h * p.w;
    let n = pix / hw;
    let iy = (pix % hw) / p.w;
    let ix = pix % p.w;
    let ty = i32(iy + p.ph) - i32(ky * p.dh);
    let tx = i32(ix + p.pw) - i32(kx * p.dw);
    if (ty < 0 || tx < 0 || u32(ty) % p.sh != 0u || u32(tx) % p.sw != 0u) {
        return 0.0;
    }
    let oy = u32(ty) / p.sh;
    let ox = u32(tx) / p.sw;
    if (oy >= p.oh || ox >= p.ow) {
        return 0.0;
    }
    return a[((n * p.cout + g * p.cout_g + co) * p.oh + oy) * p.ow + ox];
}

// Workgroup: x = tile of 32 input pixels (over the batch), y = group * m_tiles + tile of
// 32 input channels.
@compute @workgroup_size(16, 16, 1)
fn conv_bwd_data_tiled(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = wid.y / p.m_tiles;
    let m0 = (wid.y % p.m_tiles) * 32u;
    let n0 = wid.x * 32u;
    let q_len = p.cout_g * p.kh * p.kw;
    let flat = lid.y * 16u + lid.x;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var q0 = 0u; q0 < q_len; q0 += 16u) {
        for (var j = 0u; j < 2u; j++) {
            let e = flat + 256u * j;
            // tile_a: e = ci * 16 + qq; tile_b: e = qq * 32 + pixel.
            tile_a[e] = load_wt(g, m0 + e / 16u, q0 + e % 16u);
            tile_b[e] = load_dycol(g, q0 + e / 32u, n0 + e % 32u);
        }
        workgroupBarrier();
        for (var rr = 0u; rr < 16u; rr++) {
            let a0 = tile_a[(lid.y * 2u) * 16u + rr];
            let a1 = tile_a[(lid.y * 2u + 1u) * 16u + rr];
            let b0 = tile_b[rr * 32u + lid.x * 2u];
            let b1 = tile_b[rr * 32u + lid.x * 2u + 1u];
            acc[0] += a0 * b0;
            acc[1] += a0 * b1;
            acc[2] += a1 * b0;
            acc[3] += a1 * b1;
        }
        workgroupBarrier();
    }
    let hw = p.h * p.w;
    for (var i = 0u; i < 2u; i++) {
        let ci = m0 + lid.y * 2u + i;
        for (var j = 0u; j < 2u; j++) {
            let pix = n0 + lid.x * 2u + j;
            if (ci < p.cin_g && pix < p.batch * hw) {
                let n = pix / hw;
                out[(n * p.cin + g * p.cin_g + ci) * hw + pix % hw] += acc[i * 2u + j];
            }
        }
    }
}

// out[i] = sum over s of a[s * total + i], s ascending.
@compute @workgroup_size(256, 1, 1)
fn reduce_splits(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    var s = 0.0;
    for (var k = 0u; k < p.splits; k++) {
        s += a[k * p.total + i];
    }
    out[i] = s;
}

@compute @workgroup_size(256, 1, 1)
fn conv_bwd_data(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ix = i % p.w;
    var t = i / p.w;
    let iy = t % p.h;
    t = t / p.h;
    let c = t % p.cin;
    let n = t / p.cin;
    let g = c / p.cin_g;
    let ci = c % p.cin_g;
    let np = p.oh * p.ow;
    var acc = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let ty = i32(iy + p.ph) - i32(ky * p.dh);
        if (ty < 0 || u32(ty) % p.sh != 0u || u32(ty) / p.sh >= p.oh) {
            continue;
        }
        let oy = u32(ty) / p.sh;
        for (var kx = 0u; kx < p.kw; kx++) {
            let tx = i32(ix + p.pw) - i32(kx * p.dw);
            if (tx < 0 || u32(tx) % p.sw != 0u || u32(tx) / p.sw >= p.ow) {
                continue;
            }
            let q = oy * p.ow + u32(tx) / p.sw;
            for (var co = 0u; co < p.cout_g; co++) {
                let oc = g * p.cout_g + co;
                acc += a[(n * p.cout + oc) * np + q]
                    * b[((oc * p.cin_g + ci) * p.kh + ky) * p.kw + kx];
            }
        }
    }
    out[i] += acc;
}

var<workgroup> red: array<f32, 256>;

// out[c] = sum of dY over images and pixels of channel c (workgroup c).
@compute @workgroup_size(256, 1, 1)
fn channel_sum(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let c = wid.y * nwg.x + wid.x;
    let live = c < p.cout;
    let np = p.oh * p.ow;
    var acc = 0.0;
    if (live) {
        for (var j = li; j < p.batch * np; j += 256u) {
            acc += a[((j / np) * p.cout + c) * np + j % np];
        }
    }
    red[li] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u && live) {
        out[c] = red[0];
    }
}
