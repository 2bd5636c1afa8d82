// Sparse (CSR) convolution and fully connected layers (layout in src/weights/sparse.rs).
//
// sparse_conv: lanes = 64 consecutive output pixels p of the flattened [N, OH, OW];
// workgroup (wid.x, wid.y) = (pixel block, output channel co). Every lane walks the
// same CSR row co, so the row pointer, column and value loads are at workgroup-uniform
// addresses (a broadcast on GPUs); the only per-lane load is the input value. The work
// is nnz(co) multiply-adds per output, against K for the dense kernel.
// Column k decodes to (ci, ky, kx) in K order: k = (ci * kh + ky) * kw + kx.
// Bindings: 0 input (read), 1 row_ptr [cout + 1] (read), 2 cols [nnz] u32 (read),
// 3 values [nnz] (read), 4 bias [cout] (read), 5 output (read_write), 6 params
// (shared by both entry points).

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
    cout: u32,
    relu: u32,
    pixels: u32,
    // sparse_fc only: log2 of the lanes per row (0..=8).
    lanes_log2: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> row_ptr: array<u32>;
@group(0) @binding(2) var<storage, read> cols: array<u32>;
@group(0) @binding(3) var<storage, read> vals: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> prm: Params;

@compute @workgroup_size(64)
fn sparse_conv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let co = wid.y;
    let p = wid.x * 64u + lid;
    let live = p < prm.pixels;
    let plane = prm.oh * prm.ow;
    let pp = select(0u, p, live);
    let b = pp / plane;
    let rem = pp % plane;
    let oy = rem / prm.ow;
    let ox = rem % prm.ow;
    let g = co / prm.cout_g;
    let base = (b * prm.cin + g * prm.cin_g) * prm.h * prm.w;
    let khw = prm.kh * prm.kw;
    // Signed origin of the window in the padded input.
    let y0 = i32(oy * prm.sh) - i32(prm.ph);
    let x0 = i32(ox * prm.sw) - i32(prm.pw);
    var acc = bias[co];
    let end = row_ptr[co + 1u];
    for (var i = row_ptr[co]; i < end; i = i + 1u) {
        let k = cols[i];
        let v = vals[i];
        let ci = k / khw;
        let r = k % khw;
        let iy = y0 + i32((r / prm.kw) * prm.dh);
        let ix = x0 + i32((r % prm.kw) * prm.dw);
        if (iy >= 0 && iy < i32(prm.h) && ix >= 0 && ix < i32(prm.w)) {
            acc = acc + v * x[base + (ci * prm.h + u32(iy)) * prm.w + u32(ix)];
        }
    }
    if (prm.relu != 0u) {
        acc = max(acc, 0.0);
    }
    if (live) {
        y[(b * prm.cout + co) * plane + rem] = acc;
    }
}

// sparse_fc ("vector CSR"): y[b, r] = bias[r] + sum over row r's stored entries of
// vals[i] * x[b, cols[i]]; x is [batch, K] with K = prm.cin, the rows are prm.cout.
// A workgroup of 256 invocations takes 256 / L consecutive rows, L = 1 << prm.lanes_log2
// invocations (lanes) per row (the host picks L from the mean nonzeros per row). Lane j
// of a row reads entries row_ptr[r] + j, + L, + 2L, ...: consecutive lanes read
// consecutive values and columns (coalesced), four independent entries per loop trip,
// and gather x, which is small and stays in cache. The L partial sums of a row are then
// added by a tree in workgroup memory. Row block = wid.y * nwg.x + wid.x (a 2-D grid
// past the per-dimension limit), wid.z = batch item.
var<workgroup> fc_part: array<f32, 256>;

@compute @workgroup_size(256)
fn sparse_fc(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Uniform (from the params), so the reduction loop below is in uniform control flow.
    let shift = prm.lanes_log2;
    let lanes = 1u << shift;
    let lane = lid & (lanes - 1u);
    let r = ((wid.y * nwg.x + wid.x) << (8u - shift)) + (lid >> shift);
    let live = r < prm.cout;
    let b = wid.z;
    let base = b * prm.cin;
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    if (live) {
        let end = row_ptr[r + 1u];
        var i = row_ptr[r] + lane;
        let l2 = 2u * lanes;
        let l3 = 3u * lanes;
        let step = 4u * lanes;
        for (; i + l3 < end; i = i + step) {
            let c0 = cols[i];
            let c1 = cols[i + lanes];
            let c2 = cols[i + l2];
            let c3 = cols[i + l3];
            let v0 = vals[i];
            let v1 = vals[i + lanes];
            let v2 = vals[i + l2];
            let v3 = vals[i + l3];
            a0 = fma(v0, x[base + c0], a0);
            a1 = fma(v1, x[base + c1], a1);
            a2 = fma(v2, x[base + c2], a2);
            a3 = fma(v3, x[base + c3], a3);
        }
        for (; i < end; i = i + lanes) {
            a0 = fma(vals[i], x[base + cols[i]], a0);
        }
    }
    var acc = (a0 + a1) + (a2 + a3);
    // One lane per row (software adapters): no reduction, no barrier. `shift` is
    // uniform, so the barriers below stay in uniform control flow.
    if (shift != 0u) {
        fc_part[lid] = acc;
        workgroupBarrier();
        for (var s = lanes >> 1u; s > 0u; s = s >> 1u) {
            if (lane < s) {
                fc_part[lid] = fc_part[lid] + fc_part[lid + s];
            }
            workgroupBarrier();
        }
        acc = fc_part[lid];
    }
    if (live && lane == 0u) {
        acc = acc + bias[r];
        if (prm.relu != 0u) {
            acc = max(acc, 0.0);
        }
        y[b * prm.cout + r] = acc;
    }
}
