// Dense convolution as an implicit GEMM (and the 1x1 case serves Linear at batch >= 8).
//
// Per group g: C[m, n] = sum_k A[m, k] * B[k, n] with
//   m = output channel within the group (M = Cout/groups),
//   n = flattened (batch, oy, ox) pixel (N = batch*OH*OW),
//   k = (ci * kh + ky) * kw + kx, the K order of src/weights/mod.rs (K = Cin/groups*kh*kw).
// A is the weight tensor as stored ([Cout, K] row-major), B the im2col of the input,
// gathered on the fly into workgroup memory (never materialised).
//
// Tiling: a workgroup computes a 64 (m) x 64 (n) tile with 256 invocations; each
// invocation holds a 4x4 register block (rows 4*ty.., columns 4*tx..), vec4 along n.
// K advances 16 at a time through workgroup tiles stored k-major as vec4 so the inner
// loop does 2 vec4 workgroup loads per 4 vec4 FMAs.
//
// Output channel `c_off + co` of a tensor with `c_total` channels: lets a layer write
// straight into a slice of a wider buffer (weights split by rows, concat).
//
// Bindings: 0 input (read), 1 weights (read), 2 bias (read), 3 output (read_write), 4 params.

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// a_tile[k * 16 + i] holds rows 4i..4i+3 at depth k; b_tile[k * 16 + j] columns 4j..4j+3.
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16, 1)
fn conv_fwd_tiled(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = wid.z;
    let m0 = wid.y * TM;
    let n0 = wid.x * TN;
    let ohw = p.oh * p.ow;
    let n_total = p.batch * ohw;
    let khw = p.kh * p.kw;

    // The pixel this invocation gathers for B is fixed (li % 64): decompose it once.
    let bn = li % TN;
    let bk0 = li / TN; // rows bk0, bk0 + 4, bk0 + 8, bk0 + 12 of the B tile
    let pix = n0 + bn;
    let pix_ok = pix < n_total;
    let pb = pix / ohw;
    let prem = pix % ohw;
    let iy0 = i32((prem / p.ow) * p.sh) - i32(p.ph);
    let ix0 = i32((prem % p.ow) * p.sw) - i32(p.pw);
    let x_base = (pb * p.cin + g * p.cin_g) * p.h * p.w;

    // A loads: 4 elements per invocation, consecutive invocations along k.
    let ak = li % TK;
    let am0 = li / TK; // rows am0, am0 + 16, am0 + 32, am0 + 48
    let w_base = g * p.cout_g;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.k_len; k0 += TK) {
        let kg = k0 + ak;
        for (var r = 0u; r < 4u; r++) {
            let m = am0 + 16u * r;
            let co = m0 + m;
            var v = 0.0;
            if (co < p.cout_g && kg < p.k_len) {
                v = wt[(w_base + co) * p.k_len + kg];
            }
            a_tile[ak * 16u + m / 4u][m % 4u] = v;
        }
        for (var r = 0u; r < 4u; r++) {
            let kk = bk0 + 4u * r;
            let kb = k0 + kk;
            var v = 0.0;
            if (pix_ok && kb < p.k_len) {
                let ci = kb / khw;
                let kr = kb % khw;
                let iy = iy0 + i32((kr / p.kw) * p.dh);
                let ix = ix0 + i32((kr % p.kw) * p.dw);
                if (iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w)) {
                    v = x[x_base + (ci * p.h + u32(iy)) * p.w + u32(ix)];
                }
            }
            b_tile[kk * 16u + bn / 4u][bn % 4u] = v;
        }
        workgroupBarrier();
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
        let co = m0 + lid.y * 4u + i;
        if (co >= p.cout_g) {
            continue;
        }
        let bv = bias[w_base + co];
        let oc = p.c_off + w_base + co;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + lid.x * 4u + j;
            if (n < n_total) {
                var v = accs[i][j] + bv;
                if (p.relu != 0u) {
                    v = max(v, 0.0);
                }
                let b = n / ohw;
                y[(b * p.c_total + oc) * ohw + n % ohw] = v;
            }
        }
    }
}

// Direct convolution, one invocation per output element: for depthwise and other
// convs with few output channels per group, where a 64-row tile would be mostly idle.
// Dispatched as a 2-D grid of 256-wide workgroups over batch*Cout*OH*OW.
@compute @workgroup_size(256, 1, 1)
fn conv_fwd_direct(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + li;
    let cout = p.cout_g * p.groups;
    let ohw = p.oh * p.ow;
    let total = p.batch * cout * ohw;
    if (idx >= total) {
        return;
    }
    let b = idx / (cout * ohw);
    let rem = idx % (cout * ohw);
    let co = rem / ohw;
    let pix = rem % ohw;
    let g = co / p.cout_g;
    let iy0 = i32((pix / p.ow) * p.sh) - i32(p.ph);
    let ix0 = i32((pix % p.ow) * p.sw) - i32(p.pw);
    var acc = 0.0;
    for (var ci = 0u; ci < p.cin_g; ci++) {
        let x_base = (b * p.cin + g * p.cin_g + ci) * p.h * p.w;
        let w_base = (co * p.cin_g + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = iy0 + i32(ky * p.dh);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = ix0 + i32(kx * p.dw);
                if (ix >= 0 && ix < i32(p.w)) {
                    acc = fma(x[x_base + u32(iy) * p.w + u32(ix)], wt[w_base + ky * p.kw + kx], acc);
                }
            }
        }
    }
    var v = acc + bias[co];
    if (p.relu != 0u) {
        v = max(v, 0.0);
    }
    y[(b * p.c_total + p.c_off + co) * ohw + pix] = v;
}

