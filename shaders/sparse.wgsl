// Sparse (CSR) convolution and fully connected layers (layout in src/weights/sparse.rs).
//
// sparse_conv: lanes = 64 consecutive output pixels p of the flattened [N, OH, OW];
// workgroup (wid.x, wid.y) = (pixel block, output channel co). Every lane walks the
// same CSR row co, so the row pointer, column and value loads are at workgroup-uniform
// addresses (a broadcast on GPUs); the only per-lane load is the input value. The work
// is nnz(co) multiply-adds per output, against K for the dense kernel.
// Column k decodes to (ci, ky, kx) in K order: k = (ci * kh + ky) * kw + kx.
// Bindings: 0 input (read), 1 row_ptr [cout + 1] (read), 2 cols [nnz] u32 (read),
// 3 values [nnz] (read), 4 bias [cout] (read), 5 output (read_write), 6 params.

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

// sparse_fc: y[b, r] = bias[r] + sum over row r's stored entries of vals[i] * x[b, cols[i]].
// Lanes = 64 output rows (wid.x blocks), wid.y = batch item; x is [batch, K] with
// K = prm.cin and the rows are prm.cout. Each lane walks its own CSR row, so the work
// is nnz lane-iterations per batch item (the conv kernel's layout would leave 63 of 64
// lanes idle at batch 1).
@compute @workgroup_size(64)
fn sparse_fc(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x * 64u + lid;
    if (r >= prm.cout) {
        return;
    }
    let b = wid.y;
    let base = b * prm.cin;
    var acc = bias[r];
    let end = row_ptr[r + 1u];
    for (var i = row_ptr[r]; i < end; i = i + 1u) {
        acc = acc + vals[i] * x[base + cols[i]];
    }
    if (prm.relu != 0u) {
        acc = max(acc, 0.0);
    }
    y[b * prm.cout + r] = acc;
}
