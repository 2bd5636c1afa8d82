// Finishes a split-K fully connected layer (`sketch_fc`, `pow2_fc`): sums the K slices'
// partial sums of one (batch item, row) and applies the layer's epilogue.
//
// Partial sums are laid out [item][slice][row]; the output is row `row0 + r` of item
// `n0 + n` in rows of `out_total`. `accumulate` adds to what an earlier input window
// wrote, `add_bias` adds the bias (the host says on which window), `relu` clamps (set on
// the last window only). Grid: (row blocks of 64, 1, batch items of the window).
//
// Bindings: 0 partial sums (read), 1 bias [rows] (read), 2 output (read_write), 3 params.

struct Params {
    rows: u32,
    slices: u32,
    row0: u32,
    out_total: u32,
    n0: u32,
    accumulate: u32,
    add_bias: u32,
    relu: u32,
}

@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn fc_reduce(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let r = wid.x * 64u + li;
    if (r >= p.rows) {
        return;
    }
    let n = wid.z;
    var v = 0.0;
    var i = n * p.slices * p.rows + r;
    for (var s = 0u; s < p.slices; s++) {
        v += part[i];
        i += p.rows;
    }
    let o = (p.n0 + n) * p.out_total + p.row0 + r;
    if (p.accumulate != 0u) {
        v += y[o];
    }
    if (p.add_bias != 0u) {
        v += bias[r];
    }
    if (p.relu != 0u) {
        v = max(v, 0.0);
    }
    y[o] = v;
}
