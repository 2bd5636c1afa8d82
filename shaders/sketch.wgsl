// Sketched (binary-basis) convolution and fully connected layers on packed bits.
//
// A sketched output channel c is W_c = sum_j a_{c,j} B_{c,j}, B in {-1,+1}^K (layout in
// src/weights/sketch.rs). With S = sum_k x_k (the patch or input row, shared by every
// channel and base) and P_{c,j} = sum of the x_k whose bit of B_{c,j} is set,
//     y_c = sum_j a_{c,j} * (2 P_{c,j} - S).
// The inner loops only add (select(0, x, bit) then +=); the scales are applied once per
// output. Padding bits past K never meet a real input: the conv loops stop at the
// slice's K, and the fc input window is zero past K (and its padding bits are 0).
//
// Why these shapes (lavapipe, Mesa's CPU Vulkan, is the adapter this was tuned on; see
// the notes in src/backend/gpu/conv.rs and src/backend/gpu/sketch.rs): a uniform-buffer
// load at a workgroup-uniform address is one scalar load plus a broadcast, while
// storage and workgroup loads inside loops are per-lane scalar loops. So the operand
// shared by all lanes of a workgroup lives in a 64 KiB uniform buffer: the bit words in
// the conv (lanes = output pixels, workgroup = block of output channels), the input row
// in the fc (lanes = output rows). On GPUs the same choice is a constant-cache broadcast.

// ---------------------------------------------------------------------------------------
// sketch_conv: implicit GEMM over output pixels, 64 per workgroup (one per invocation).
// A workgroup covers one group (wid.z: g0 + wid.z) and one block of `rpb` output channels
// of it (wid.y: b0 + wid.y), i.e. rpb * m <= 64 (channel, base) pairs q = r * m + j.
// Each input value (the per-lane storage load, the cost that dominates on lavapipe)
// feeds all 64 pairs: 16 vec4 accumulators. (32 pairs per block ran 2-2.4x slower,
// 128 pairs 3x slower: register spills.)
// Each dispatch covers a slice of input channels ci0..ci0+ci_count; later slices add to
// the output (bias with the first, ReLU with the last).
// Bit words (uniform, 16384 u32 = 64 KiB): [group in dispatch][block in dispatch][kc][2],
// kc = ci_count * kh * kw in K order of the slice; bit q % 32 of word q / 32 is B_q at
// that k.
// Bindings: 0 input (read), 1 bit words (uniform), 2 scales [rows of dispatch][m]
// (read), 3 bias [rows of dispatch] (read), 4 output (read_write), 5 params.

struct ConvParams {
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
    c_total: u32,
    relu: u32,
    // Bases per channel and channels per block (rpb * m <= 64).
    m: u32,
    rpb: u32,
    // First group and block of this dispatch, blocks per group in it.
    g0: u32,
    b0: u32,
    bn: u32,
    // Input channel slice (within the group) and its K length ci_count * kh * kw.
    ci0: u32,
    ci_count: u32,
    kc: u32,
    // Add to the output (slices after the first); apply ReLU (last slice).
    accumulate: u32,
    last: u32,
    // Output channel (0..cout) of scales[0] / bias[0].
    row0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> cx: array<f32>;
@group(0) @binding(1) var<uniform> cbits: array<vec4<u32>, 4096>;
@group(0) @binding(2) var<storage, read> cscales: array<f32>;
@group(0) @binding(3) var<storage, read> cbias: array<f32>;
@group(0) @binding(4) var<storage, read_write> cy: array<f32>;
@group(0) @binding(5) var<uniform> cp: ConvParams;

const M0 = vec4<u32>(1u, 2u, 4u, 8u);
const U0 = vec4<u32>(0u);
const Z4 = vec4<f32>(0.0);

// Adds v to the lanes of acc whose bit (of word w, bits 4*i .. 4*i+3) is set.
fn acc4(acc: vec4<f32>, w: u32, i: u32, v: f32) -> vec4<f32> {
    let on = (vec4<u32>(w >> (4u * i)) & M0) != vec4<u32>(0u);
    return acc + select(vec4<f32>(0.0), vec4<f32>(v), on);
}

@compute @workgroup_size(64, 1, 1)
fn sketch_conv(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let g = cp.g0 + wid.z;
    let blk = cp.b0 + wid.y;
    let ohw = cp.oh * cp.ow;
    let pix_total = cp.batch * ohw;
    let pix = min(wid.x * 64u + li, pix_total - 1u);
    let b = pix / ohw;
    let rem = pix % ohw;
    let iy0 = i32((rem / cp.ow) * cp.sh) - i32(cp.ph);
    let ix0 = i32((rem % cp.ow) * cp.sw) - i32(cp.pw);
    let hw = cp.h * cp.w;
    let khw = cp.kh * cp.kw;
    let x_base = (b * cp.cin + g * cp.cin_g + cp.ci0) * hw;
    let w_base = (wid.z * cp.bn + wid.y) * cp.kc;
    var s = 0.0;
    var p0 = vec4<f32>(0.0);
    var p1 = vec4<f32>(0.0);
    var p2 = vec4<f32>(0.0);
    var p3 = vec4<f32>(0.0);
    var p4 = vec4<f32>(0.0);
    var p5 = vec4<f32>(0.0);
    var p6 = vec4<f32>(0.0);
    var p7 = vec4<f32>(0.0);
    var p8 = vec4<f32>(0.0);
    var p9 = vec4<f32>(0.0);
    var p10 = vec4<f32>(0.0);
    var p11 = vec4<f32>(0.0);
    var p12 = vec4<f32>(0.0);
    var p13 = vec4<f32>(0.0);
    var p14 = vec4<f32>(0.0);
    var p15 = vec4<f32>(0.0);
    for (var ky = 0u; ky < cp.kh; ky++) {
        let iy = iy0 + i32(ky * cp.dh);
        for (var kx = 0u; kx < cp.kw; kx++) {
            let ix = ix0 + i32(kx * cp.dw);
            let inside = iy >= 0 && iy < i32(cp.h) && ix >= 0 && ix < i32(cp.w);
            let factor = select(0.0, 1.0, inside);
            var off = x_base + select(0u, u32(iy) * cp.w + u32(ix), inside);
            // Two words per k: pairs 0..31 and 32..63.
            var wi = 2u * (w_base + ky * cp.kw + kx);
            for (var ci = 0u; ci < cp.ci_count; ci++) {
                let v = cx[off] * factor;
                let wpair = cbits[wi >> 2u];
                let wa = select(wpair.x, wpair.z, (wi & 2u) != 0u);
                let wb = select(wpair.y, wpair.w, (wi & 2u) != 0u);
                s += v;
                p0 = acc4(p0, wa, 0u, v);
                p1 = acc4(p1, wa, 1u, v);
                p2 = acc4(p2, wa, 2u, v);
                p3 = acc4(p3, wa, 3u, v);
                p4 = acc4(p4, wa, 4u, v);
                p5 = acc4(p5, wa, 5u, v);
                p6 = acc4(p6, wa, 6u, v);
                p7 = acc4(p7, wa, 7u, v);
                p8 = acc4(p8, wb, 0u, v);
                p9 = acc4(p9, wb, 1u, v);
                p10 = acc4(p10, wb, 2u, v);
                p11 = acc4(p11, wb, 3u, v);
                p12 = acc4(p12, wb, 4u, v);
                p13 = acc4(p13, wb, 5u, v);
                p14 = acc4(p14, wb, 6u, v);
                p15 = acc4(p15, wb, 7u, v);
                off += hw;
                wi += 2u * khw;
            }
        }
    }
    if (wid.x * 64u + li >= pix_total) {
        return;
    }
    let ps = array<vec4<f32>, 16>(p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14, p15);
    for (var r = 0u; r < cp.rpb; r++) {
        let co = blk * cp.rpb + r;
        if (co >= cp.cout_g) {
            break;
        }
        let row = g * cp.cout_g + co;
        let local = row - cp.row0;
        var v = 0.0;
        for (var j = 0u; j < cp.m; j++) {
            let q = r * cp.m + j;
            v += cscales[local * cp.m + j] * (2.0 * ps[q >> 2u][q & 3u] - s);
        }
        let i = (b * cp.c_total + row) * ohw + rem;
        if (cp.accumulate != 0u) {
            v += cy[i];
        } else {
            v += cbias[local];
        }
        if (cp.last != 0u && cp.relu != 0u) {
            v = max(v, 0.0);
        }
        cy[i] = v;
    }
}

// ---------------------------------------------------------------------------------------
// sketch_gather: copies a K slice of some batch items' input rows into the window that
// sketch_fc reads as a uniform buffer, zero past K and past the slice.
// window[n * kpad + t] = x[(n0 + n) * k_len + k0 + t] for t < kc, else 0.
// Bindings: 0 input (read), 1 window (read_write; a STORAGE | UNIFORM buffer), 2 params.

struct GatherParams {
    k_len: u32,
    k0: u32,
    kc: u32,
    kpad: u32,
    n0: u32,
    nn: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> gx: array<f32>;
@group(0) @binding(1) var<storage, read_write> gwin: array<f32>;
@group(0) @binding(2) var<uniform> gp: GatherParams;

@compute @workgroup_size(256, 1, 1)
fn sketch_gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= 16384u) {
        return;
    }
    let n = e / gp.kpad;
    let t = e % gp.kpad;
    var v = 0.0;
    if (n < gp.nn && t < gp.kc) {
        v = gx[(gp.n0 + n) * gp.k_len + gp.k0 + t];
    }
    gwin[e] = v;
}

// ---------------------------------------------------------------------------------------
// sketch_fc: GEMV for small batches. One invocation per output row and K slice (lanes =
// rows of the chunk, wid.y = slice, wid.z = batch item within the window). For each
// base j the row's bit words (storage, one per 32 inputs) select inputs from the uniform
// window; the window is zero past K, so S = sum of the window's row.
// Split K: slice s covers words s * spw .. (s + 1) * spw of the window (clamped to wn)
// for all m bases of its row, so one window load feeds every base. The slice's
// y_s = sum_j a_j (2 P_{j,s} - S_s) uses the S_s of its own inputs; y = sum_s y_s
// because both P and S are sums over the slices. With split = 1, y_s goes to `fy` =
// scratch [item][slices][rows] and `fc_reduce` (shaders/fc_reduce.wgsl) applies the epilogue.
// Bits of the chunk: [m][words_per_row][rows of chunk] (row fastest: lanes read
// consecutive words); the window covers words w0 .. w0 + wn of every row.
// Bindings: 0 window (uniform, [item][kpad] f32), 1 bits (read), 2 scales [rows][m]
// (read), 3 bias [rows] (read), 4 output or scratch (read_write), 5 params.

struct FcParams {
    rows: u32,
    m: u32,
    words_per_row: u32,
    w0: u32,
    wn: u32,
    kpad: u32,
    out_total: u32,
    row_off: u32,
    n0: u32,
    accumulate: u32,
    last: u32,
    relu: u32,
    // Words per K slice; 1: write the slice's partial sum (see above).
    spw: u32,
    split: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> fx: array<vec4<f32>, 4096>;
@group(0) @binding(1) var<storage, read> fbits: array<u32>;
@group(0) @binding(2) var<storage, read> fscales: array<f32>;
@group(0) @binding(3) var<storage, read> fbias: array<f32>;
@group(0) @binding(4) var<storage, read_write> fy: array<f32>;
@group(0) @binding(5) var<uniform> fp: FcParams;

// Adds the window's vec4 xq to the lanes of p whose bits (4 of word w at shift sh) are set.
fn sel4(p: vec4<f32>, w: u32, sh: u32, xq: vec4<f32>) -> vec4<f32> {
    return p + select(Z4, xq, (vec4<u32>(w >> sh) & M0) != U0);
}

@compute @workgroup_size(64, 1, 1)
fn sketch_fc(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let r_live = wid.x * 64u + li;
    let r = min(r_live, fp.rows - 1u);
    let n = wid.z;
    let t0 = min(wid.y * fp.spw, fp.wn);
    let nw = min(t0 + fp.spw, fp.wn) - t0;
    let x_base = n * (fp.kpad / 4u) + t0 * 8u;
    // Bases go four at a time, so each window load (these dominate on lavapipe) feeds
    // four of them, and S comes out of the first pass:
    // y = sum_j 2 a_j P_j - S * sum_j a_j.
    var s = 0.0;
    var v = 0.0;
    var a_sum = 0.0;
    let rows = fp.rows;
    for (var j0 = 0u; j0 < fp.m; j0 += 4u) {
        var s4 = vec4<f32>(0.0);
        var p0 = vec4<f32>(0.0);
        var p1 = vec4<f32>(0.0);
        var p2 = vec4<f32>(0.0);
        var p3 = vec4<f32>(0.0);
        let nb = min(fp.m - j0, 4u);
        let stride = fp.words_per_row * rows;
        var bi = (j0 * fp.words_per_row + fp.w0 + t0) * rows + r;
        var xi = x_base;
        var wl = 0u;
        // One loop per base count: masked-out bases would cost as much as real ones.
        // Fewer bases: more words per iteration, so that each invocation has about four
        // independent bit-word loads in flight before it uses them.
        if (nb == 1u) {
            for (; wl + 4u <= nw; wl += 4u) {
                let w0 = fbits[bi];
                let w1 = fbits[bi + rows];
                let w2 = fbits[bi + 2u * rows];
                let w3 = fbits[bi + 3u * rows];
                for (var i = 0u; i < 8u; i++) {
                    let sh = 4u * i;
                    let x0 = fx[xi + i];
                    let x1 = fx[xi + 8u + i];
                    let x2 = fx[xi + 16u + i];
                    let x3 = fx[xi + 24u + i];
                    s4 += (x0 + x1) + (x2 + x3);
                    p0 = sel4(p0, w0, sh, x0);
                    p1 = sel4(p1, w1, sh, x1);
                    p2 = sel4(p2, w2, sh, x2);
                    p3 = sel4(p3, w3, sh, x3);
                }
                bi += 4u * rows;
                xi += 32u;
            }
            for (; wl < nw; wl++) {
                let w0 = fbits[bi];
                for (var i = 0u; i < 8u; i++) {
                    let xq = fx[xi + i];
                    s4 += xq;
                    p0 = sel4(p0, w0, 4u * i, xq);
                }
                bi += rows;
                xi += 8u;
            }
            // One base: the four words' sums are all P of base j0.
            p0 = (p0 + p1) + (p2 + p3);
            p1 = Z4;
            p2 = Z4;
            p3 = Z4;
        } else if (nb == 2u) {
            for (; wl + 2u <= nw; wl += 2u) {
                let w0 = fbits[bi];
                let w1 = fbits[bi + stride];
                let u0 = fbits[bi + rows];
                let u1 = fbits[bi + rows + stride];
                for (var i = 0u; i < 8u; i++) {
                    let sh = 4u * i;
                    let x0 = fx[xi + i];
                    let x1 = fx[xi + 8u + i];
                    s4 += x0 + x1;
                    p0 = sel4(p0, w0, sh, x0);
                    p1 = sel4(p1, w1, sh, x0);
                    p2 = sel4(p2, u0, sh, x1);
                    p3 = sel4(p3, u1, sh, x1);
                }
                bi += 2u * rows;
                xi += 16u;
            }
            for (; wl < nw; wl++) {
                let w0 = fbits[bi];
                let w1 = fbits[bi + stride];
                for (var i = 0u; i < 8u; i++) {
                    let xq = fx[xi + i];
                    let sh = 4u * i;
                    s4 += xq;
                    p0 = sel4(p0, w0, sh, xq);
                    p1 = sel4(p1, w1, sh, xq);
                }
                bi += rows;
                xi += 8u;
            }
            // Two bases: p2, p3 hold the odd words' sums of bases j0, j0 + 1.
            p0 += p2;
            p1 += p3;
            p2 = Z4;
            p3 = Z4;
        } else {
            // Three bases: the fourth reads base j0 again and is masked to nothing.
            let s3 = select(0u, 3u * stride, nb > 3u);
            for (; wl < nw; wl++) {
                let w0 = fbits[bi];
                let w1 = fbits[bi + stride];
                let w2 = fbits[bi + 2u * stride];
                let w3 = select(0u, fbits[bi + s3], nb > 3u);
                for (var i = 0u; i < 8u; i++) {
                    let xq = fx[xi + i];
                    let sh = 4u * i;
                    s4 += xq;
                    p0 = sel4(p0, w0, sh, xq);
                    p1 = sel4(p1, w1, sh, xq);
                    p2 = sel4(p2, w2, sh, xq);
                    p3 = sel4(p3, w3, sh, xq);
                }
                bi += rows;
                xi += 8u;
            }
        }
        if (j0 == 0u) {
            s = s4.x + s4.y + s4.z + s4.w;
        }
        let ps = array<vec4<f32>, 4>(p0, p1, p2, p3);
        for (var t = 0u; t < nb; t++) {
            let a = fscales[r * fp.m + j0 + t];
            a_sum += a;
            let pt = ps[t];
            v += 2.0 * a * (pt.x + pt.y + pt.z + pt.w);
        }
    }
    v -= s * a_sum;
    if (r_live >= fp.rows) {
        return;
    }
    if (fp.split != 0u) {
        fy[(n * ((fp.wn + fp.spw - 1u) / fp.spw) + wid.y) * fp.rows + r] = v;
        return;
    }
    let i = (fp.n0 + n) * fp.out_total + fp.row_off + r;
    if (fp.accumulate != 0u) {
        v += fy[i];
    } else {
        v += fbias[r];
    }
    if (fp.last != 0u && fp.relu != 0u) {
        v = max(v, 0.0);
    }
    fy[i] = v;
}
