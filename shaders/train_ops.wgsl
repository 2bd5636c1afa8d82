// Backward of the element-wise, pooling, copy, LRN and BatchNorm ops, the BatchNorm
// training forward, and softmax cross-entropy.
//
// Every kernel that produces an input gradient gathers: one invocation per input
// element reads the output gradients that element influenced and adds them to dx
// (`out[i] += ...`), so values read by several nodes sum their gradients without
// atomics, and the order of additions is fixed. Per-channel reductions (BatchNorm)
// use one workgroup per channel and a fixed-order tree.
//
// Bindings: 0 a, 1 b, 2 c, 3 d (read), 4 out, 5 out2 (read_write), 6 params; a kernel
// names what it reads in each. Unused bindings hold a dummy buffer.

struct Ops {
    total: u32,
    c: u32,
    inner: u32,
    n: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    pb: u32,
    pr: u32,
    mode: u32,
    size: u32,
    off: u32,
    block: u32,
    block_out: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    fa: f32,
    fb: f32,
    fc: f32,
    fd: f32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read> d: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;
@group(0) @binding(6) var<uniform> p: Ops;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + li;
}

// Activation backward. a = dY, b = the op's input x (sigmoid: its output y).
// mode 0 relu, 1 leaky relu (fa = alpha), 2 clip (fa = min, fb = max), 3 sigmoid.
@compute @workgroup_size(256, 1, 1)
fn act_bwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let g = a[i];
    let v = b[i];
    var r = 0.0;
    switch p.mode {
        case 0u: { r = select(0.0, g, v > 0.0); }
        case 1u: { r = select(p.fa * g, g, v >= 0.0); }
        case 2u: { r = select(0.0, g, v > p.fa && v < p.fb); }
        case 3u: { r = g * v * (1.0 - v); }
        default: {}
    }
    out[i] += r;
}

// out[i] += a[i] (Add backward: each input receives dY).
@compute @workgroup_size(256, 1, 1)
fn acc(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    out[i] += a[i];
}

// Concat backward for one input: its element i (block = its elements per outer index)
// reads dY (a) at outer * block_out + off + inner.
@compute @workgroup_size(256, 1, 1)
fn concat_bwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    out[i] += a[(i / p.block) * p.block_out + p.off + i % p.block];
}

// Global average pool backward: a = dY [N*C], inner = H*W.
@compute @workgroup_size(256, 1, 1)
fn gap_bwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    out[i] += a[i / p.inner] / f32(p.inner);
}

// First and one-past-last output index whose window (start o*s - pad, length k) holds
// input coordinate i, clamped to [0, len).
fn window_range(i: u32, k: u32, s: u32, pad: u32, len: u32) -> vec2<u32> {
    let hi = (i + pad) / s + 1u;
    var lo = 0u;
    if (i + pad + 1u > k) {
        lo = (i + pad + 1u - k + s - 1u) / s;
    }
    return vec2<u32>(lo, min(hi, len));
}

// Average pool backward, gathered per input element. a = dY. mode 1 divides by the
// window area clipped to the padded input, mode 2 by its in-input elements (as pool.wgsl).
@compute @workgroup_size(256, 1, 1)
fn avgpool_bwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let ry = window_range(iy, p.kh, p.sh, p.pt, p.oh);
    let rx = window_range(ix, p.kw, p.sw, p.pl, p.ow);
    var s = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        let y0 = i32(oy * p.sh) - i32(p.pt);
        let y1 = min(y0 + i32(p.kh), i32(p.h + p.pb));
        for (var ox = rx.x; ox < rx.y; ox++) {
            let x0 = i32(ox * p.sw) - i32(p.pl);
            let x1 = min(x0 + i32(p.kw), i32(p.w + p.pr));
            var count = (y1 - y0) * (x1 - x0);
            if (p.mode == 2u) {
                count = (min(y1, i32(p.h)) - max(y0, 0)) * (min(x1, i32(p.w)) - max(x0, 0));
            }
            s += a[(plane * p.oh + oy) * p.ow + ox] / f32(max(count, 1));
        }
    }
    out[i] += s;
}

// Max pool backward: b = x, a = dY. Each input element recomputes the winner of every
// window that holds it (first maximum in row-major order, padding never wins, as the
// forward) and takes the gradient of the windows it won.
@compute @workgroup_size(256, 1, 1)
fn maxpool_bwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let plane = i / (p.w * p.h);
    let base = plane * p.h * p.w;
    let me = iy * p.w + ix;
    let ry = window_range(iy, p.kh, p.sh, p.pt, p.oh);
    let rx = window_range(ix, p.kw, p.sw, p.pl, p.ow);
    var s = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        let y0 = i32(oy * p.sh) - i32(p.pt);
        let y1 = min(y0 + i32(p.kh), i32(p.h));
        for (var ox = rx.x; ox < rx.y; ox++) {
            let x0 = i32(ox * p.sw) - i32(p.pl);
            let x1 = min(x0 + i32(p.kw), i32(p.w));
            var best = 0.0;
            var at = 0xffffffffu;
            for (var yy = max(y0, 0); yy < y1; yy++) {
                for (var xx = max(x0, 0); xx < x1; xx++) {
                    let k = u32(yy) * p.w + u32(xx);
                    let v = b[base + k];
                    if (at == 0xffffffffu || v > best) {
                        best = v;
                        at = k;
                    }
                }
            }
            if (at == me) {
                s += a[(plane * p.oh + oy) * p.ow + ox];
            }
        }
    }
    out[i] += s;
}

// LRN denominator d_j = bias + alpha/size * sum of x^2 over the channel window of j.
fn lrn_den(img: u32, ch: u32, q: u32) -> f32 {
    let before = (p.size - 1u) / 2u;
    let after = p.size - 1u - before;
    let lo = select(0u, ch - before, ch >= before);
    let hi = min(ch + after, p.c - 1u);
    var sq = 0.0;
    for (var j = lo; j <= hi; j++) {
        let v = b[(img * p.c + j) * p.inner + q];
        sq += v * v;
    }
    return p.fc + p.fa / f32(p.size) * sq;
}

// LRN backward (see train/backward.rs): a = dY, b = x; fa alpha, fb beta, fc bias.
// dx_j = dy_j d_j^-beta - 2 alpha beta / size * x_j * sum_{i: j in W(i)} dy_i x_i d_i^(-beta-1).
@compute @workgroup_size(256, 1, 1)
fn lrn_bwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let q = i % p.inner;
    let ch = (i / p.inner) % p.c;
    let img = i / (p.inner * p.c);
    let before = (p.size - 1u) / 2u;
    let after = p.size - 1u - before;
    let lo = select(0u, ch - after, ch >= after);
    let hi = min(ch + before, p.c - 1u);
    var s = 0.0;
    for (var k = lo; k <= hi; k++) {
        let at = (img * p.c + k) * p.inner + q;
        s += a[at] * b[at] * pow(lrn_den(img, k, q), -p.fb - 1.0);
    }
    let dj = lrn_den(img, ch, q);
    out[i] += a[i] * pow(dj, -p.fb) - 2.0 * p.fa * p.fb / f32(p.size) * b[i] * s;
}

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

// Sums red and red2 over the workgroup (fixed tree); every invocation gets the totals.
fn reduce2(li: u32, x: f32, y: f32) -> vec2<f32> {
    red[li] = x;
    red2[li] = y;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] += red[li + s];
            red2[li] += red2[li + s];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red[0], red2[0]);
    workgroupBarrier();
    return r;
}

// Element j of channel ch in an [N, C, inner] tensor.
fn chan_at(ch: u32, j: u32) -> u32 {
    return ((j / p.inner) * p.c + ch) * p.inner + j % p.inner;
}

// BatchNorm batch statistics, workgroup = channel: a = x; out = stats
// [mean C | biased var C | 1/sqrt(var + eps) C]; fa = eps. Two passes (mean, then
// squared deviations) for accuracy.
@compute @workgroup_size(256, 1, 1)
fn bn_stats(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let ch = wid.y * nwg.x + wid.x;
    let live = ch < p.c;
    let m = p.n * p.inner;
    var s = 0.0;
    if (live) {
        for (var j = li; j < m; j += 256u) {
            s += a[chan_at(ch, j)];
        }
    }
    let mean = reduce2(li, s, 0.0).x / f32(m);
    var v = 0.0;
    if (live) {
        for (var j = li; j < m; j += 256u) {
            let dv = a[chan_at(ch, j)] - mean;
            v += dv * dv;
        }
    }
    let var_ = reduce2(li, v, 0.0).x / f32(m);
    if (li == 0u && live) {
        out[ch] = mean;
        out[p.c + ch] = var_;
        out[2u * p.c + ch] = 1.0 / sqrt(var_ + p.fa);
    }
}

// Frozen BatchNorm statistics from the running ones: a = running [mean C | var C];
// out = stats as bn_stats writes them.
@compute @workgroup_size(256, 1, 1)
fn bn_frozen_stats(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let ch = linear_index(wid, nwg, li);
    if (ch >= p.c) {
        return;
    }
    out[ch] = a[ch];
    out[p.c + ch] = a[p.c + ch];
    out[2u * p.c + ch] = 1.0 / sqrt(a[p.c + ch] + p.fa);
}

// y = (x - mean) * inv_std * scale + bias: a = x, b = stats, c = [scale C | bias C].
@compute @workgroup_size(256, 1, 1)
fn bn_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.inner) % p.c;
    out[i] = (a[i] - b[ch]) * b[2u * p.c + ch] * c[ch] + c[p.c + ch];
}

// BatchNorm parameter gradients, workgroup = channel: a = x, b = dY, c = stats;
// out = [dscale C | dbias C] with dscale = sum dY * xhat, dbias = sum dY.
@compute @workgroup_size(256, 1, 1)
fn bn_bwd_params(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let ch = wid.y * nwg.x + wid.x;
    let live = ch < p.c;
    let m = p.n * p.inner;
    var sd = 0.0;
    var sdx = 0.0;
    if (live) {
        let mean = c[ch];
        let inv = c[2u * p.c + ch];
        for (var j = li; j < m; j += 256u) {
            let k = chan_at(ch, j);
            let g = b[k];
            sd += g;
            sdx += g * (a[k] - mean) * inv;
        }
    }
    let r = reduce2(li, sd, sdx);
    if (li == 0u && live) {
        out[ch] = r.y;
        out[p.c + ch] = r.x;
    }
}

// BatchNorm input gradient: a = x, b = dY, c = stats, d = [scale C | bias C],
// out2 = [dscale C | dbias C] (read); out = dx (+=). mode 1 (batch statistics):
// dx = scale*inv_std * (dy - dbias/M - xhat * dscale/M); mode 0 (running statistics):
// dx = scale*inv_std * dy.
@compute @workgroup_size(256, 1, 1)
fn bn_bwd_data(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_index(wid, nwg, li);
    if (i >= p.total) {
        return;
    }
    let ch = (i / p.inner) % p.c;
    let inv = c[2u * p.c + ch];
    let g = d[ch] * inv;
    var r = g * b[i];
    if (p.mode == 1u) {
        let m = f32(p.n * p.inner);
        let xhat = (a[i] - c[ch]) * inv;
        r = g * (b[i] - out2[p.c + ch] / m - xhat * out2[ch] / m);
    }
    out[i] += r;
}

// Running statistics update (PyTorch): a = stats, out = running [mean C | var C];
// fa = momentum, fb = count / (count - 1) (unbiased variance).
@compute @workgroup_size(256, 1, 1)
fn bn_running(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let ch = linear_index(wid, nwg, li);
    if (ch >= p.c) {
        return;
    }
    out[ch] = (1.0 - p.fa) * out[ch] + p.fa * a[ch];
    out[p.c + ch] = (1.0 - p.fa) * out[p.c + ch] + p.fa * a[p.c + ch] * p.fb;
}

// Maximum over the workgroup (fixed tree); every invocation gets it.
fn reduce_max(li: u32, x: f32) -> f32 {
    red[li] = x;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Mean softmax cross-entropy, one workgroup per row: a = logits [N, C classes],
// b = labels (u32 bit patterns); out = dlogits (+=, scaled by fa = 1/N), out2 = loss
// per row. Max and sum of exponentials as fixed-order trees.
@compute @workgroup_size(256, 1, 1)
fn ce_loss(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    let live = row < p.total;
    let base = row * p.c;
    var m = -3.0e38;
    if (live) {
        for (var j = li; j < p.c; j += 256u) {
            m = max(m, a[base + j]);
        }
    }
    m = reduce_max(li, m);
    var s = 0.0;
    if (live) {
        for (var j = li; j < p.c; j += 256u) {
            s += exp(a[base + j] - m);
        }
    }
    let sum = reduce2(li, s, 0.0).x;
    if (!live) {
        return;
    }
    let label = bitcast<u32>(b[row]);
    if (li == 0u) {
        out2[row] = log(sum) + m - a[base + label];
    }
    for (var j = li; j < p.c; j += 256u) {
        let q = exp(a[base + j] - m) / sum;
        out[base + j] += (q - select(0.0, 1.0, j == label)) * p.fa;
    }
}
