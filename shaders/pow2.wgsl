// Power-of-two (INQ) convolution and fully connected layers on packed b-bit codes.
//
// Code layout (src/weights/pow2.rs): a row of K codes is packed floor(32 / b) codes per
// u32 word (`cpw`), code j of a word at bits b*j; code 0 is zero, otherwise bit b-1 is
// the sign (set = negative) and the low b-1 bits hold e >= 1, the value being
// +-2^(n1 + 1 - e). A product x * w is therefore ldexp(x, n1 + 1 - e) with the sign
// flipped: no weight is ever expanded to f32, and the weight bytes read are b/32 of
// the dense layer's (b = 2..5: 16, 10, 8, 6 codes per word).
//
// Kernel shapes (kept simple; see src/backend/gpu/pow2.rs for what was and was not
// measured):
// - pow2_conv: direct convolution, one invocation per output pixel (64 per workgroup,
//   across batch, oh, ow), one output channel per workgroup row (wid.y). All lanes of a
//   workgroup read the same code word (a workgroup-uniform address: one load and a
//   broadcast on GPUs).
// - pow2_fc: GEMV, one invocation per output row (lanes = rows) and K slice (wid.y),
//   wid.z = batch item within the window. Codes are stored transposed, [word][row], so
//   the 64 lanes read 64 consecutive words; the input comes from a uniform window (see
//   the kernel). Instead of ldexp it builds each code's f32 value from bits (one fma per
//   code). Several slices write partial sums that fc_reduce (fc_reduce.wgsl) adds up.

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
    cout: u32,
    relu: u32,
    bits: u32,
    cpw: u32,
    wpr: u32,
    // Largest exponent, as i32 bits.
    n1: i32,
    // First output channel of this dispatch.
    row0: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> cx: array<f32>;
@group(0) @binding(1) var<storage, read> ccodes: array<u32>;
@group(0) @binding(2) var<storage, read> cbias: array<f32>;
@group(0) @binding(3) var<storage, read_write> cy: array<f32>;
@group(0) @binding(4) var<uniform> cp: ConvParams;

// x * value(code) for a b-bit code: 0, or +-ldexp(x, n1 + 1 - e).
fn times_code(x: f32, code: u32, bits: u32, n1: i32) -> f32 {
    let sign = 1u << (bits - 1u);
    let e = i32(code & (sign - 1u));
    let v = ldexp(x, n1 + 1 - e);
    let signed = select(v, -v, (code & sign) != 0u);
    return select(0.0, signed, code != 0u);
}

@compute @workgroup_size(64, 1, 1)
fn pow2_conv(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let pix = wid.x * 64u + li;
    let pixels = cp.batch * cp.oh * cp.ow;
    let co = cp.row0 + wid.y;
    if (pix >= pixels || co >= cp.cout) {
        return;
    }
    let n = pix / (cp.oh * cp.ow);
    let oy = (pix / cp.ow) % cp.oh;
    let ox = pix % cp.ow;
    let g = co / cp.cout_g;
    let mask = (1u << cp.bits) - 1u;
    let row = (co - cp.row0) * cp.wpr;
    var acc = 0.0;
    var k = 0u;
    for (var ci = 0u; ci < cp.cin_g; ci++) {
        let plane = (n * cp.cin + g * cp.cin_g + ci) * cp.h * cp.w;
        for (var ky = 0u; ky < cp.kh; ky++) {
            let iy = i32(oy * cp.sh + ky * cp.dh) - i32(cp.ph);
            for (var kx = 0u; kx < cp.kw; kx++) {
                let ix = i32(ox * cp.sw + kx * cp.dw) - i32(cp.pw);
                let word = ccodes[row + k / cp.cpw];
                let code = (word >> (cp.bits * (k % cp.cpw))) & mask;
                let inside = iy >= 0 && iy < i32(cp.h) && ix >= 0 && ix < i32(cp.w);
                if (inside && code != 0u) {
                    acc += times_code(cx[plane + u32(iy) * cp.w + u32(ix)], code, cp.bits, cp.n1);
                }
                k++;
            }
        }
    }
    var v = acc + cbias[co];
    if (cp.relu != 0u) {
        v = max(v, 0.0);
    }
    cy[((n * cp.cout + co) * cp.oh + oy) * cp.ow + ox] = v;
}

struct FcParams {
    rows: u32,
    wpr: u32,
    cpw: u32,
    bits: u32,
    n1: i32,
    relu: u32,
    // First output row of this dispatch and the layer's output width.
    row0: u32,
    out_total: u32,
    // The window: code words w0 .. w0 + wn of every row, i.e. inputs w0*cpw ..
    // (w0 + wn)*cpw, each batch item's slice `kpad` floats long, items n0 .. n0 + nz.
    w0: u32,
    wn: u32,
    kpad: u32,
    n0: u32,
    // Add to the output (a window after the first); add the bias and apply ReLU (the
    // last window).
    accumulate: u32,
    last: u32,
    // Split K: slice wid.y covers window words wid.y * spw .. (clamped to wn).
    spw: u32,
    // 1: write the slice's partial sum to `fy` = scratch [item][slices][rows] (no
    // epilogue; `fc_reduce` finishes); 0: one slice, the epilogue here.
    split: u32,
}

@group(0) @binding(0) var<uniform> fx: array<vec4<f32>, 4096>;
@group(0) @binding(1) var<storage, read> fcodes: array<u32>;
@group(0) @binding(2) var<storage, read> fbias: array<f32>;
@group(0) @binding(3) var<storage, read_write> fy: array<f32>;
@group(0) @binding(4) var<uniform> fp: FcParams;

// The f32 value of a b-bit code, built from its bits: sign bit, biased exponent
// ebase - e with ebase = 127 + n1 + 1 (<= 255, so ebase - e <= 254 for e >= 1), zero
// mantissa; exactly decode_table's value for every normal magnitude. A magnitude below
// 2^-126 (n1 + 1 - e < -126, i.e. n1 < -125 + e: no trained layer) gives 0 where the
// table holds a subnormal: a flush-to-zero, as GPUs commonly do for denormals anyway.
fn code_value(code: u32, bits: u32, ebase: i32) -> f32 {
    let sign = code >> (bits - 1u);
    let ex = ebase - i32(code & ((1u << (bits - 1u)) - 1u));
    let v = bitcast<f32>((u32(max(ex, 0)) << 23u) | (sign << 31u));
    return select(0.0, v, code != 0u && ex > 0);
}

// acc + the dot product of one code word with inputs xi .. xi + cpw of the window. The
// products x * 2^n are exact, so fma(x, w, acc) rounds like acc + ldexp(x, n).
fn word_dot(acc: f32, word: u32, xi: u32, ebase: i32) -> f32 {
    let mask = (1u << fp.bits) - 1u;
    var a = acc;
    var w = word;
    for (var j = 0u; j < fp.cpw; j++) {
        let e = xi + j;
        a = fma(fx[e >> 2u][e & 3u], code_value(w & mask, fp.bits, ebase), a);
        w = w >> fp.bits;
    }
    return a;
}

// GEMV over a window of the input held in a 64 KiB uniform buffer (filled by
// `sketch_gather`, zero past K): every lane reads the same input value at a time, which
// a uniform buffer serves as one load and a broadcast, also on llvmpipe (lavapipe),
// where a storage load is a per-lane gather (the same trick as `sketch_fc`).
// Grid: (row blocks of 64, K slices, batch items of the window). Each invocation sums
// its row over its slice's words, four words loaded before any is decoded (four
// independent loads in flight), then a tail.
@compute @workgroup_size(64, 1, 1)
fn pow2_fc(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let r = wid.x * 64u + li;
    if (r >= fp.rows) {
        return;
    }
    let n = wid.z;
    let ebase = 128 + fp.n1;
    let t0 = min(wid.y * fp.spw, fp.wn);
    let t1 = min(t0 + fp.spw, fp.wn);
    var acc0 = 0.0;
    var acc1 = 0.0;
    var acc2 = 0.0;
    var acc3 = 0.0;
    var xi = n * fp.kpad + t0 * fp.cpw;
    var wi = (fp.w0 + t0) * fp.rows + r;
    var t = t0;
    for (; t + 4u <= t1; t += 4u) {
        let c0 = fcodes[wi];
        let c1 = fcodes[wi + fp.rows];
        let c2 = fcodes[wi + 2u * fp.rows];
        let c3 = fcodes[wi + 3u * fp.rows];
        acc0 = word_dot(acc0, c0, xi, ebase);
        acc1 = word_dot(acc1, c1, xi + fp.cpw, ebase);
        acc2 = word_dot(acc2, c2, xi + 2u * fp.cpw, ebase);
        acc3 = word_dot(acc3, c3, xi + 3u * fp.cpw, ebase);
        wi += 4u * fp.rows;
        xi += 4u * fp.cpw;
    }
    for (; t < t1; t++) {
        acc0 = word_dot(acc0, fcodes[wi], xi, ebase);
        wi += fp.rows;
        xi += fp.cpw;
    }
    let acc = (acc0 + acc1) + (acc2 + acc3);
    if (fp.split != 0u) {
        fy[(n * num_slices(fp.wn, fp.spw) + wid.y) * fp.rows + r] = acc;
        return;
    }
    let o = (fp.n0 + n) * fp.out_total + fp.row0 + r;
    var v = acc;
    if (fp.accumulate != 0u) {
        v += fy[o];
    }
    if (fp.last != 0u) {
        v += fbias[r];
        if (fp.relu != 0u) {
            v = max(v, 0.0);
        }
    }
    fy[o] = v;
}

fn num_slices(wn: u32, spw: u32) -> u32 {
    return (wn + spw - 1u) / spw;
}
