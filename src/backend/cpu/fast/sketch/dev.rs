//! Sketch kernels kept for development, not run by the CPU executor (llm.c's `dev/`
//! habit: the variants that lost stay beside the winner, as references to compare
//! with). `select::conv` runs sketched convs on the dense GEMM conv over weights decoded
//! once per model (the masked conv took 16.7 ms for a 3x3 64->64 conv at 28x28 with
//! m = 3 against ~2 ms for sgemm: the note in `select::conv`), and `select::sketch_fc`
//! picks only the masked fallback of this file's fc kinds. Each is public under
//! `fast::sketch` and used by tests/sketch.rs:
//!
//! - `sketch_conv` (masked), `sketch_conv_lut`, `sketch_conv_assoc(_with)`: the conv by
//!   im2col and each way of getting P; held to the dense reference in
//!   `conv_kernels_match_dense_reference` and `padding_bits_are_neutral`, timed in the
//!   `#[ignore]` test `timing`.
//! - `sketch_linear_lut`, `sketch_linear_assoc(_with)` and `AssocPlan`: the fc with
//!   8-input lookup tables and the associative scheme of the paper (a minimum spanning
//!   tree over the rows' Hamming distance); the module docs of `fast::sketch` say where
//!   they lost to the masked kernel. Checked against the reference in
//!   `linear_kernels_match_dense_reference`, the plan's costs in
//!   `assoc_tree_cost_bounded_and_small_for_similar_rows`; timed in `timing`.

use super::masked::{self, masked_kernel, MaskedFn, O_TILE};
use crate::graph::{Conv2d, Tensor};
use crate::weights::{SketchWeights, Weights};
use rayon::prelude::*;

/// How P (the sum of inputs under set bits) is computed.
#[derive(Clone, Copy)]
enum Method<'a> {
    Masked,
    Lut,
    Assoc(&'a AssocPlan),
}

/// As `sketch_linear`, with P from per-input-row 8-input lookup tables.
pub fn sketch_linear_lut(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    masked::linear_with(x, w, bias, |xs, sums, kp| {
        rows_times_weights(xs, sums, kp, w, 0, w.rows(), Method::Lut, 0)
    })
}

/// As `sketch_linear`, with P computed associatively (builds the plan each call;
/// see `sketch_linear_assoc_with` to reuse one).
pub fn sketch_linear_assoc(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    let plan = AssocPlan::new(w, 1);
    masked::linear_with(x, w, bias, |xs, sums, kp| {
        rows_times_weights(xs, sums, kp, w, 0, w.rows(), Method::Assoc(&plan), 0)
    })
}

/// As `sketch_linear_assoc` with a plan built by `AssocPlan::new(w, 1)`.
pub fn sketch_linear_assoc_with(
    x: &Tensor,
    w: &SketchWeights,
    plan: &AssocPlan,
    bias: Option<&Tensor>,
) -> Tensor {
    masked::linear_with(x, w, bias, |xs, sums, kp| {
        rows_times_weights(xs, sums, kp, w, 0, w.rows(), Method::Assoc(plan), 0)
    })
}

/// Sketch convolution, NCHW: `x: [N, Cin, H, W]`, `conv.weight` a `Weights::Sketch`
/// of logical shape `[Cout, Cin/groups, kh, kw]`; returns `[N, Cout, OH, OW]`.
pub fn sketch_conv(x: &Tensor, conv: &Conv2d) -> Tensor {
    conv_with(x, conv, Method::Masked)
}

/// As `sketch_conv`, with P from per-patch 8-input lookup tables.
pub fn sketch_conv_lut(x: &Tensor, conv: &Conv2d) -> Tensor {
    conv_with(x, conv, Method::Lut)
}

/// As `sketch_conv`, with P computed associatively (builds the plan each call).
pub fn sketch_conv_assoc(x: &Tensor, conv: &Conv2d) -> Tensor {
    let plan = AssocPlan::new(sketch_of(conv), conv.groups);
    conv_with(x, conv, Method::Assoc(&plan))
}

/// As `sketch_conv_assoc` with a plan built by `AssocPlan::new(weights, conv.groups)`.
pub fn sketch_conv_assoc_with(x: &Tensor, conv: &Conv2d, plan: &AssocPlan) -> Tensor {
    conv_with(x, conv, Method::Assoc(plan))
}

fn sketch_of(conv: &Conv2d) -> &SketchWeights {
    match &conv.weight {
        Weights::Sketch(s) => s,
        other => panic!(
            "sketch_conv needs sketch weights, got {} (the planner picks the kernel by encoding)",
            other.encoding()
        ),
    }
}

fn conv_with(x: &Tensor, conv: &Conv2d, method: Method) -> Tensor {
    let w = sketch_of(conv);
    assert!(
        x.shape.len() == 4,
        "sketch_conv: input must be NCHW, got {:?}",
        x.shape
    );
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let groups = conv.groups.max(1);
    let cout = w.rows();
    let cin_g = conv.in_channels_per_group();
    assert!(
        cin == cin_g * groups && cout.is_multiple_of(groups),
        "sketch_conv: input channels {cin} do not match weights {:?} with {groups} groups",
        w.shape()
    );
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("sketch_conv: window larger than the padded input (shape inference rejects this)");
    let [kh, kw] = conv.kernel;
    let k = cin_g * kh * kw;
    let kp = 32 * w.words_per_row();
    let ohw = oh * ow;
    let cout_g = cout / groups;
    let mut out = vec![0f32; n * cout * ohw];
    let mut patches = vec![0f32; ohw * kp];
    let mut sums = vec![0f32; ohw];
    for img in 0..n {
        for g in (0..groups).filter(|_| kp > 0) {
            // im2col: one contiguous, zero-padded row of K per output position.
            patches
                .par_chunks_mut(kp)
                .zip(sums.par_iter_mut())
                .enumerate()
                .for_each(|(pos, (row, s))| {
                    let (oy, ox) = (pos / ow, pos % ow);
                    let mut sum = 0f32;
                    for ci in 0..cin_g {
                        let plane = &x.data[((img * cin) + g * cin_g + ci) * h * wd..][..h * wd];
                        for ky in 0..kh {
                            let iy = (oy * conv.stride[0] + ky * conv.dilation[0]) as isize
                                - conv.pads[0] as isize;
                            for kx in 0..kw {
                                let ix = (ox * conv.stride[1] + kx * conv.dilation[1]) as isize
                                    - conv.pads[1] as isize;
                                let v = if iy >= 0
                                    && (iy as usize) < h
                                    && ix >= 0
                                    && (ix as usize) < wd
                                {
                                    plane[iy as usize * wd + ix as usize]
                                } else {
                                    0.0
                                };
                                row[(ci * kh + ky) * kw + kx] = v;
                                sum += v;
                            }
                        }
                    }
                    row[k..].fill(0.0);
                    *s = sum;
                });
            let y = rows_times_weights(&patches, &sums, kp, w, g * cout_g, cout_g, method, g);
            // [pos][co] -> NCHW planes.
            let base = img * cout * ohw + g * cout_g * ohw;
            for (pos, yr) in y.chunks_exact(cout_g).enumerate() {
                for (oi, v) in yr.iter().enumerate() {
                    out[base + oi * ohw + pos] = *v;
                }
            }
        }
        if let Some(b) = &conv.bias {
            assert_eq!(
                b.data.len(),
                cout,
                "bias length must equal the output channels"
            );
            for (co, plane) in out[img * cout * ohw..(img + 1) * cout * ohw]
                .chunks_exact_mut(ohw.max(1))
                .enumerate()
            {
                plane.iter_mut().for_each(|v| *v += b.data[co]);
            }
        }
    }
    Tensor {
        shape: vec![n, cout, oh, ow],
        data: out,
    }
}

/// `out[r][o − o0] = Σ_j a_{o,j} (2 P_{o,j}(x_r) − S_r)` for rows `r` of `xs`
/// (padded to `kp`) and outputs `o0..o0+count`, P by `method`. `group` selects the
/// plan's group.
#[allow(clippy::too_many_arguments)]
fn rows_times_weights(
    xs: &[f32],
    sums: &[f32],
    kp: usize,
    w: &SketchWeights,
    o0: usize,
    count: usize,
    method: Method,
    group: usize,
) -> Vec<f32> {
    let plan = match method {
        Method::Masked => return masked::rows_times_weights(xs, sums, kp, w, o0, count),
        Method::Lut => None,
        Method::Assoc(plan) => Some(plan),
    };
    let nrows = sums.len();
    let mut out = vec![0f32; nrows * count];
    // K = 0: every P and S is 0, so is y.
    if nrows == 0 || count == 0 || kp == 0 {
        return out;
    }
    let m = w.bases();
    let wpr = w.words_per_row();
    let scales = w.scales();
    let bits = w.bits();
    // y for one output from the m values of P. Written out here and in `masked.rs`, not
    // shared: a helper returning this closure changed the generated code.
    let combine = |o: usize, p: &[f32], s: f32| -> f32 {
        let a = &scales[o * m..(o + 1) * m];
        a.iter().zip(p).map(|(a, p)| a * (2.0 * p - s)).sum()
    };
    let many_rows = nrows >= 2 * rayon::current_num_threads();
    match plan {
        None => {
            let groups = kp / 8;
            let lut_one = |x: &[f32], lut: &mut Vec<f32>| {
                lut.resize(groups * 256, 0.0);
                build_lut(x, lut);
            };
            let eval = |lut: &[f32], o: usize, s: f32, p: &mut [f32]| -> f32 {
                for (j, pj) in p.iter_mut().enumerate() {
                    let row = &bits[(o * m + j) * wpr..(o * m + j + 1) * wpr];
                    *pj = lut_sum(lut, row);
                }
                combine(o, p, s)
            };
            if many_rows {
                out.par_chunks_mut(count).enumerate().for_each_init(
                    || (Vec::new(), vec![0f32; m]),
                    |(lut, p), (r, y)| {
                        lut_one(&xs[r * kp..(r + 1) * kp], lut);
                        for (oi, yo) in y.iter_mut().enumerate() {
                            *yo = eval(lut, o0 + oi, sums[r], p);
                        }
                    },
                );
            } else {
                let luts: Vec<Vec<f32>> = (0..nrows)
                    .into_par_iter()
                    .map(|r| {
                        let mut lut = Vec::new();
                        lut_one(&xs[r * kp..(r + 1) * kp], &mut lut);
                        lut
                    })
                    .collect();
                let cols: Vec<Vec<f32>> = (0..count.div_ceil(O_TILE))
                    .into_par_iter()
                    .map(|ot| {
                        let mut p = vec![0f32; m];
                        let os = ot * O_TILE..((ot + 1) * O_TILE).min(count);
                        let mut tile = Vec::with_capacity(nrows * os.len());
                        for (r, lut) in luts.iter().enumerate() {
                            for oi in os.clone() {
                                tile.push(eval(lut, o0 + oi, sums[r], &mut p));
                            }
                        }
                        tile
                    })
                    .collect();
                for (ot, tile) in cols.into_iter().enumerate() {
                    let oi0 = ot * O_TILE;
                    let width = O_TILE.min(count - oi0);
                    for (r, chunk) in tile.chunks_exact(width).enumerate() {
                        out[r * count + oi0..r * count + oi0 + width].copy_from_slice(chunk);
                    }
                }
            }
        }
        Some(plan) => {
            let kernel = masked_kernel();
            let chunks = &plan.groups[group];
            assert_eq!(
                chunks.iter().map(|c| c.rows).sum::<usize>(),
                count * m,
                "associative plan was built for other weights or groups"
            );
            // P of every row of the group for one input row, chunk trees in turn or in parallel.
            let eval_all = |x: &[f32], pv: &mut [f32], parallel: bool| {
                let mut parts = Vec::with_capacity(chunks.len());
                let mut rest = pv;
                for c in chunks {
                    let (head, tail) = rest.split_at_mut(c.rows);
                    parts.push((c, head));
                    rest = tail;
                }
                if parallel {
                    parts
                        .into_par_iter()
                        .for_each(|(c, p)| c.eval(x, p, kernel));
                } else {
                    parts.into_iter().for_each(|(c, p)| c.eval(x, p, kernel));
                }
            };
            let finish = |r: usize, pv: &[f32], y: &mut [f32]| {
                for (oi, yo) in y.iter_mut().enumerate() {
                    *yo = combine(o0 + oi, &pv[oi * m..(oi + 1) * m], sums[r]);
                }
            };
            if many_rows {
                out.par_chunks_mut(count).enumerate().for_each_init(
                    || vec![0f32; count * m],
                    |pv, (r, y)| {
                        eval_all(&xs[r * kp..(r + 1) * kp], pv, false);
                        finish(r, pv, y);
                    },
                );
            } else {
                // Few input rows (fc at batch 1): the trees of the chunks run in parallel.
                let mut pv = vec![0f32; count * m];
                for (r, y) in out.chunks_exact_mut(count).enumerate() {
                    eval_all(&xs[r * kp..(r + 1) * kp], &mut pv, true);
                    finish(r, &pv, y);
                }
            }
        }
    }
    out
}

/// All 256 subset sums of each group of 8 inputs: `lut[g * 256 + b] = Σ_{t: bit t of b} x[8g + t]`.
/// Built from two 16-entry nibble tables per group, one addition per entry.
fn build_lut(x: &[f32], lut: &mut [f32]) {
    for (xg, l) in x.chunks_exact(8).zip(lut.chunks_exact_mut(256)) {
        let mut lo = [0f32; 16];
        let mut hi = [0f32; 16];
        for b in 1..16usize {
            let t = b.trailing_zeros() as usize;
            lo[b] = lo[b & (b - 1)] + xg[t];
            hi[b] = hi[b & (b - 1)] + xg[4 + t];
        }
        for (h, chunk) in hi.iter().zip(l.chunks_exact_mut(16)) {
            for (dst, lv) in chunk.iter_mut().zip(&lo) {
                *dst = h + lv;
            }
        }
    }
}

/// P from the lookup tables: one lookup per byte of the bit row.
#[inline]
fn lut_sum(lut: &[f32], bits: &[u32]) -> f32 {
    let mut acc = [0f32; 4];
    for (i, &word) in bits.iter().enumerate() {
        let l = &lut[i * 1024..(i + 1) * 1024];
        acc[0] += l[(word & 0xff) as usize];
        acc[1] += l[256 + ((word >> 8) & 0xff) as usize];
        acc[2] += l[512 + ((word >> 16) & 0xff) as usize];
        acc[3] += l[768 + (word >> 24) as usize];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// The associative evaluation order of a layer's binary rows: per conv group, the
/// rows are cut into a few contiguous chunks (about two per worker thread) with one
/// tree each, so a single input row can still be spread over the threads; each cut
/// costs at most one extra root edge.
#[derive(Clone, Debug)]
pub struct AssocPlan {
    groups: Vec<Vec<GroupPlan>>,
    k: usize,
}

/// One chunk of a group's rows `(o, j)` (local output `o`, base `j`, index `o * m + j`,
/// counted from the chunk's first row) in tree order: each step names the row, its
/// parent (or none: the all-clear row, P = 0) and the inputs whose bit differs from
/// the parent's.
#[derive(Clone, Debug)]
struct GroupPlan {
    rows: usize,
    /// (row, parent or `ROOT`/`DIRECT`, end of its `plus` run, end of its `minus` run).
    steps: Vec<(usize, usize, usize, usize)>,
    /// Bit rows of the `DIRECT` steps, in step order, `words` each.
    direct: Vec<u32>,
    words: usize,
    /// Input indices whose bit turns on (concatenated runs, in step order).
    plus: Vec<u32>,
    /// Input indices whose bit turns off.
    minus: Vec<u32>,
}

/// Parent marker: P summed from the all-clear row through index lists (pure scheme).
const ROOT: usize = usize::MAX;
/// Parent marker: P computed from scratch with the masked kernel (hybrid scheme).
const DIRECT: usize = usize::MAX - 1;
/// Hybrid plans take a tree edge only when its Hamming distance is below K / this:
/// one scalar gather-add per flipped bit costs about as much as 8 to 14 lanes of the
/// vectorised masked kernel on the machines measured (see the report in tests/sketch.rs).
const DIRECT_RATIO: usize = 8;

impl AssocPlan {
    /// Builds the hybrid plan for `w` split into `groups` conv groups (1 for fc): a
    /// minimum spanning tree (Prim, O(R² · words) per chunk of R rows) over Hamming
    /// distance, where the root edge of every row costs `32 · words / DIRECT_RATIO`
    /// and means "compute this row directly with the masked kernel". Rows with no
    /// close neighbour are thus never slower than `sketch_linear`'s kernel, and rows
    /// close to another one cost one add per differing bit.
    pub fn new(w: &SketchWeights, groups: usize) -> AssocPlan {
        Self::build(w, groups, true)
    }

    /// The pure associative plan (the paper's scheme): every row is reached from the
    /// all-clear row (P = 0, root edge = its set bits) or from another row through
    /// index lists, along a minimum spanning tree over Hamming distance.
    pub fn pure(w: &SketchWeights, groups: usize) -> AssocPlan {
        Self::build(w, groups, false)
    }

    fn build(w: &SketchWeights, groups: usize, hybrid: bool) -> AssocPlan {
        let m = w.bases();
        let wpr = w.words_per_row();
        let k = w.row_len();
        let groups = groups.max(1);
        assert!(
            w.rows().is_multiple_of(groups),
            "output channels {} not divisible by groups {groups}",
            w.rows()
        );
        let per = w.rows() / groups * m;
        let n_chunks = (2 * rayon::current_num_threads()).clamp(1, per.max(1));
        let chunk = per.div_ceil(n_chunks).max(1);
        let plans = (0..groups)
            .map(|g| {
                (0..per)
                    .step_by(chunk)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map(|start| {
                        let rows: Vec<&[u32]> = (start..(start + chunk).min(per))
                            .map(|i| &w.bits()[(g * per + i) * wpr..(g * per + i + 1) * wpr])
                            .collect();
                        GroupPlan::new(&rows, k, hybrid)
                    })
                    .collect()
            })
            .collect();
        AssocPlan { groups: plans, k }
    }

    /// Number of trees (chunks over all groups); each starts from the all-clear row.
    pub fn trees(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    /// Rows computed from scratch with the masked kernel (0 for a pure plan).
    pub fn direct_rows(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .map(|g| g.direct.len() / g.words.max(1))
            .sum()
    }

    /// Input additions per input row along the tree (its total Hamming distance).
    pub fn tree_flips(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .map(|g| g.plus.len() + g.minus.len())
            .sum()
    }

    /// Input additions per input row if every row were summed from scratch over its
    /// set bits (the sparse direct cost), for comparison with `tree_flips`.
    pub fn direct_set_bits(&self, w: &SketchWeights) -> usize {
        w.bits().iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Additions per input row of the dense masked kernel: rows × K.
    pub fn dense_cost(&self) -> usize {
        self.groups.iter().flatten().map(|g| g.rows).sum::<usize>() * self.k
    }
}

fn hamming(a: &[u32], b: &[u32]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

impl GroupPlan {
    fn new(rows: &[&[u32]], k: usize, hybrid: bool) -> GroupPlan {
        let r = rows.len();
        // Bits past K are ignored, whatever the file holds.
        let wpr = k.div_ceil(32);
        let clean: Vec<Vec<u32>> = rows
            .iter()
            .map(|row| {
                let mut v = row.to_vec();
                if !k.is_multiple_of(32) && wpr > 0 {
                    v[wpr - 1] &= (1u32 << (k % 32)) - 1;
                }
                v
            })
            .collect();
        // Prim from the virtual root: best[i] = (distance, parent) of the cheapest edge
        // from the tree to row i.
        let direct_cost = (32 * wpr / DIRECT_RATIO) as u32;
        let mut best: Vec<(u32, usize)> = clean
            .iter()
            .map(|v| {
                if hybrid {
                    (direct_cost, DIRECT)
                } else {
                    (v.iter().map(|w| w.count_ones()).sum(), ROOT)
                }
            })
            .collect();
        let mut done = vec![false; r];
        let mut steps = Vec::with_capacity(r);
        let (mut plus, mut minus, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..r {
            let Some(i) = (0..r).filter(|&i| !done[i]).min_by_key(|&i| best[i].0) else {
                break;
            };
            done[i] = true;
            let parent = best[i].1;
            if parent == DIRECT {
                direct.extend_from_slice(&clean[i]);
            }
            for (wi, &word) in clean[i].iter().enumerate().filter(|_| parent != DIRECT) {
                let old = if parent == ROOT { 0 } else { clean[parent][wi] };
                let (mut on, mut off) = (word & !old, old & !word);
                while on != 0 {
                    plus.push((wi * 32) as u32 + on.trailing_zeros());
                    on &= on - 1;
                }
                while off != 0 {
                    minus.push((wi * 32) as u32 + off.trailing_zeros());
                    off &= off - 1;
                }
            }
            steps.push((i, parent, plus.len(), minus.len()));
            let ci = &clean[i];
            for j in 0..r {
                if !done[j] {
                    let d = hamming(ci, &clean[j]);
                    if d < best[j].0 {
                        best[j] = (d, i);
                    }
                }
            }
        }
        GroupPlan {
            rows: r,
            steps,
            direct,
            words: wpr,
            plus,
            minus,
        }
    }

    /// P for every row of the group from one (padded) input row, written to `p[row]`.
    fn eval(&self, x: &[f32], p: &mut [f32], kernel: MaskedFn) {
        let (mut pi, mut mi, mut di) = (0, 0, 0);
        for &(row, parent, pe, me) in &self.steps {
            if parent == DIRECT {
                let bits = &self.direct[di * self.words..(di + 1) * self.words];
                kernel(x, bits, &mut p[row..row + 1]);
                di += 1;
                continue;
            }
            let mut v = if parent == ROOT { 0.0 } else { p[parent] };
            for &k in &self.plus[pi..pe] {
                v += x[k as usize];
            }
            for &k in &self.minus[mi..me] {
                v -= x[k as usize];
            }
            p[row] = v;
            pi = pe;
            mi = me;
        }
    }
}
