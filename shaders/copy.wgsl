// Strided copies for Pad, Slice and Concat over tensors of rank <= 8 (shapes padded
// with leading 1s), one invocation per element, dispatched as a 2-D grid of 256-wide
// workgroups.
//
// gather_fwd (Pad, Slice): for each output coordinate c, the input coordinate is
// c * mul + add per axis; outside the input it writes `fill`.
// place_fwd (Concat): for each input coordinate c, writes output coordinate c + add.
//
// Bindings: 0 input (read), 1 output (read_write), 2 params.

struct Params {
    out_dims: array<vec4<u32>, 2>,
    in_dims: array<vec4<u32>, 2>,
    mul: array<vec4<i32>, 2>,
    add: array<vec4<i32>, 2>,
    total: u32,
    fill: f32,
    // Pad: 0 constant (fill), 1 edge (clamp), 2 reflect (mirror without the edge).
    mode: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

fn out_dim(a: u32) -> u32 {
    return p.out_dims[a / 4u][a % 4u];
}
fn in_dim(a: u32) -> u32 {
    return p.in_dims[a / 4u][a % 4u];
}

@compute @workgroup_size(256, 1, 1)
fn gather_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + li;
    if (idx >= p.total) {
        return;
    }
    var rest = idx;
    var src = 0u;
    var stride = 1u;
    var inside = true;
    for (var a = 7i; a >= 0i; a--) {
        let au = u32(a);
        let d = out_dim(au);
        let c = i32(rest % d);
        rest = rest / d;
        var ic = c * p.mul[au / 4u][au % 4u] + p.add[au / 4u][au % 4u];
        let id = in_dim(au);
        let last = i32(id) - 1;
        if (p.mode == 1u) {
            ic = clamp(ic, 0, last);
        } else if (p.mode == 2u && last > 0) {
            let period = 2 * last;
            var m = ic % period;
            if (m < 0) {
                m += period;
            }
            ic = select(period - m, m, m <= last);
        } else if (p.mode == 2u) {
            ic = 0;
        }
        if (ic < 0 || ic >= i32(id)) {
            inside = false;
        } else {
            src += u32(ic) * stride;
        }
        stride *= id;
    }
    y[idx] = select(p.fill, x[min(src, arrayLength(&x) - 1u)], inside);
}

@compute @workgroup_size(256, 1, 1)
fn place_fwd(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + li;
    if (idx >= p.total) {
        return;
    }
    var rest = idx;
    var dst = 0u;
    var stride = 1u;
    for (var a = 7i; a >= 0i; a--) {
        let au = u32(a);
        let d = in_dim(au);
        let c = rest % d;
        rest = rest / d;
        dst += u32(i32(c) + p.add[au / 4u][au % 4u]) * stride;
        stride *= out_dim(au);
    }
    y[dst] = x[idx];
}
