//! Batch-1 sketch fc by lookup tables over groups of 3 inputs (AVX2), additions only.
//!
//! For an input row `x`, every group of 3 inputs `G` gets a table of its 8 signed sums,
//! `T_G[p] = Σ_{t<3} (bit t of p ? +x : −x)[3G + t]`, built once per call with one
//! addition per entry and shared by every output row and base. A binary row's signed
//! dot product `Σ_k s_k x_k` is then one lookup and one add per 3 inputs. The lookups
//! run 8 output rows at once, one per lane: `vpermps` indexes the group's 8-entry table
//! (one register) by the low 3 bits of each lane, so the bits are re-laid out once per
//! layer (`TripletRows`, kept with the weights through `Derived`): per block of 8 rows,
//! base and 30 inputs, one u32 per row holding the 10 groups' 3-bit patterns, and a
//! shift by 3 brings the next group's pattern down. Up to 4 (row block, base) streams
//! share each table load. Memory: the re-laid-out bits take 32/30 of the sketch's own
//! bits (10 MB for fc6 at m = 2), kept as long as the weights.
//!
//! Why: the masked kernel spends a shift, a blend and an add per 8 weights and base
//! (about one cycle); this one a shift, a lookup and an add per 24 (fc6, m = 2, 2 cores:
//! 0.95 against 1.9 ms in a stand-alone measurement). The result is
//! `y = b + Σ_j a_j · (signed sum of base j)`, the same sums as the reference up to
//! f32 summation order.

use crate::graph::Tensor;
use crate::weights::SketchWeights;
use rayon::prelude::*;

/// Inputs per group (one table of `2^3` entries).
const GROUP: usize = 3;
/// Groups per u32 word of the re-laid-out bits (30 of its 32 bits).
const GROUPS_PER_WORD: usize = 10;
/// Inputs per word.
const WORD_INPUTS: usize = GROUP * GROUPS_PER_WORD;
/// Most (row block, base) streams per pass over the tables.
const STREAMS: usize = 4;

/// Whether the kernel runs here (x86_64 with AVX2).
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bits of a sketch layer laid out for this kernel.
pub struct TripletRows {
    /// Blocks of 8 output rows (the last one padded with zero bits).
    blocks: usize,
    /// Words per (block, base, row): `ceil(K / 30)`.
    words: usize,
    bases: usize,
    /// `[block][word][base][8 rows]`: bits `3q..3q+3` of row `8·block + r`'s entry hold
    /// the signs (set = +1) of inputs `30·word + 3q .. +3` of that base.
    bits: Vec<u32>,
}

impl TripletRows {
    fn new(w: &SketchWeights) -> TripletRows {
        let (rows, k, m) = (w.rows(), w.row_len(), w.bases());
        let blocks = rows.div_ceil(8);
        let words = k.div_ceil(WORD_INPUTS);
        let mut bits = vec![0u32; blocks * words * m * 8];
        bits.par_chunks_mut((words * m * 8).max(1))
            .enumerate()
            .for_each(|(block, out)| {
                for r in 0..8 {
                    let row = 8 * block + r;
                    if row >= rows {
                        break;
                    }
                    for j in 0..m {
                        let src = w.bit_row(row, j);
                        for kk in 0..k {
                            if src[kk / 32] >> (kk % 32) & 1 == 1 {
                                let (word, pos) = (kk / WORD_INPUTS, kk % WORD_INPUTS);
                                out[(word * m + j) * 8 + r] |= 1 << pos;
                            }
                        }
                    }
                }
            });
        TripletRows {
            blocks,
            words,
            bases: m,
            bits,
        }
    }
}

/// `y = x Wᵀ + b` for `x: [N, K]` (each row separately; meant for N = 1) and sketch
/// weights `[O, K]`; returns `[N, O]`. Panics where `supported()` is false.
pub fn sketch_linear_triplets(x: &Tensor, w: &SketchWeights, bias: Option<&Tensor>) -> Tensor {
    assert!(
        supported(),
        "sketch_linear_triplets needs AVX2 (see `supported`)"
    );
    let (k, o, m) = (w.row_len(), w.rows(), w.bases());
    assert!(
        x.shape.len() == 2 && x.shape[1] == k,
        "sketch_linear: input shape {:?} does not match weights {:?}",
        x.shape,
        w.shape()
    );
    if let Some(b) = bias {
        assert_eq!(b.data.len(), o, "bias length must equal the output rows");
    }
    let layout = w
        .derived()
        .get_or_make(|_: &TripletRows| true, || TripletRows::new(w));
    let n = x.shape[0];
    let mut out = vec![0f32; n * o];
    // Streams (row block, base), grouped so one pass shares each table load.
    let streams: Vec<(usize, usize)> = (0..layout.blocks)
        .flat_map(|b| (0..m).map(move |j| (b, j)))
        .collect();
    for (xr, yr) in x
        .data
        .chunks_exact(k.max(1))
        .zip(out.chunks_exact_mut(o.max(1)))
    {
        let tables = build_tables(xr, layout.words);
        // Signed sums `[block][base][8 rows]`.
        let sums: Vec<[f32; 8]> = streams
            .par_chunks(STREAMS)
            .flat_map_iter(|group| pass(&layout, &tables, group))
            .collect();
        for (row, y) in yr.iter_mut().enumerate() {
            let (block, r) = (row / 8, row % 8);
            let scales = &w.scales()[row * m..(row + 1) * m];
            let s: f32 = scales
                .iter()
                .enumerate()
                .map(|(j, a)| a * sums[block * m + j][r])
                .sum();
            *y = s + bias.map_or(0.0, |b| b.data[row]);
        }
    }
    Tensor {
        shape: vec![n, o],
        data: out,
    }
}

/// The 8-entry signed-sum table of every group of 3 inputs (inputs past K are 0),
/// `8 · 10 · words` values. Entry `p` is entry `p` without its lowest set bit plus
/// twice that bit's input: additions only.
fn build_tables(x: &[f32], words: usize) -> Vec<f32> {
    let groups = words * GROUPS_PER_WORD;
    let mut t = vec![0f32; groups * 8];
    for (g, tg) in t.chunks_exact_mut(8).enumerate() {
        let xs: [f32; GROUP] =
            std::array::from_fn(|i| x.get(GROUP * g + i).copied().unwrap_or(0.0));
        tg[0] = -(xs[0] + xs[1] + xs[2]);
        for p in 1..8usize {
            let low = p.trailing_zeros() as usize;
            tg[p] = tg[p & (p - 1)] + (xs[low] + xs[low]);
        }
    }
    t
}

/// Signed sums of the streams in `group` (at most `STREAMS`), `[stream][8 rows]`.
fn pass(layout: &TripletRows, tables: &[f32], group: &[(usize, usize)]) -> Vec<[f32; 8]> {
    let step = layout.bases * 8;
    let base = |&(b, j): &(usize, usize)| b * layout.words * step + j * 8;
    let mut starts = [0usize; STREAMS];
    for (s, g) in starts.iter_mut().zip(group) {
        *s = base(g);
    }
    // SAFETY: (all four) `supported()` was asserted by the caller (AVX2).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match group.len() {
            1 => streams_sums::<1>(layout, tables, &starts),
            2 => streams_sums::<2>(layout, tables, &starts),
            3 => streams_sums::<3>(layout, tables, &starts),
            _ => streams_sums::<4>(layout, tables, &starts),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("triplet kernel on a target without AVX2")
}

/// `C` streams starting at word offsets `starts` (stride `bases · 8` per word): for
/// every word, each of its 10 groups adds `T_G[pattern]` to the stream's lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn streams_sums<const C: usize>(
    layout: &TripletRows,
    tables: &[f32],
    starts: &[usize; STREAMS],
) -> Vec<[f32; 8]> {
    use std::arch::x86_64::*;
    let step = layout.bases * 8;
    let mut acc = [[_mm256_setzero_ps(); 2]; C];
    for (word, tw) in tables
        .chunks_exact(8 * GROUPS_PER_WORD)
        .take(layout.words)
        .enumerate()
    {
        let mut v = [_mm256_setzero_si256(); C];
        for (vc, &s) in v.iter_mut().zip(starts) {
            let src = &layout.bits[s + word * step..][..8];
            // SAFETY: `src` has 8 u32 (bounds-checked slice).
            *vc = unsafe { _mm256_loadu_si256(src.as_ptr().cast()) };
        }
        for (q, tq) in tw.chunks_exact(8).enumerate() {
            // SAFETY: `tq` has 8 f32.
            let t = unsafe { _mm256_loadu_ps(tq.as_ptr()) };
            for c in 0..C {
                // vpermps uses the low 3 bits of each lane: group q's pattern.
                let a = &mut acc[c][q % 2];
                *a = _mm256_add_ps(*a, _mm256_permutevar8x32_ps(t, v[c]));
                v[c] = _mm256_srli_epi32::<3>(v[c]);
            }
        }
    }
    (0..C)
        .map(|c| {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` has 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[c][0], acc[c][1])) };
            lanes
        })
        .collect()
}
