//! The flat sparse conv's per-layer data (`FlatPrep`): every stored weight's flat input
//! offset, the kernel order of the weights (grouped by shift for aligned loads) and the
//! chunks of input channels (`ChunkPlan`), built once per layer and input geometry and
//! kept with the weights.

use super::LINE;
use crate::weights::{Cols, SparseWeights};
use rayon::prelude::*;

/// Most output channels per task of the flat kernel (a divisor of Cout is used).
const FLAT_CHANNELS: usize = 8;
/// Input bytes a tile reads per chunk of input channels (half of a 32 KiB L1).
const CHUNK_BYTES: usize = 16 << 10;

/// Per-layer data of the flat kernel for one input geometry
/// `[rows per phase, pitch, dh, dw, aligned, tile, es, sh, sw]`.
pub(super) struct FlatPrep {
    pub(super) geometry: [usize; 9],
    /// The stored values in kernel order, where that is not CSR order (aligned: each
    /// channel's weights of a chunk grouped by shift).
    pub(super) values: Option<Vec<f32>>,
    /// Flat input offset of every stored weight in kernel order, less its run's shift.
    pub(super) offs: Vec<u32>,
    pub(super) plan: ChunkPlan,
    /// Runs of stored weights with one shift, in kernel order; those of (output
    /// channel `co`, chunk `c`) are `runs[run_starts[i]..run_starts[i + 1]]` with
    /// `i = co·chunks + c`.
    runs: Vec<Run>,
    run_starts: Vec<u32>,
}

/// Stored weights `start..end` (kernel order), all read at their offset plus `shift`.
pub(super) struct Run {
    pub(super) start: u32,
    pub(super) end: u32,
    pub(super) shift: u32,
}

impl FlatPrep {
    /// Input channels per chunk: the input a tile reads for one chunk (its channels'
    /// tile of positions plus the kernel's reach below and right of them) stays within
    /// `CHUNK_BYTES`, so it is read from L2 once and from L1 by every output channel
    /// of the block (without chunks a tile of a 256-channel layer reads ~100 KiB per
    /// output channel, all from L2: the kernel was L2-bandwidth-bound).
    pub(super) fn new(w: &SparseWeights, geometry: [usize; 9]) -> FlatPrep {
        let [hph, pitch, dh, dw, aligned, tile, es, sh, sw] = geometry;
        let shape = w.shape();
        let (cin_g, kh, kw) = (shape[1], shape[2], shape[3]);
        // Offset of every K index first: no division per stored weight.
        let mut off_of_k = Vec::with_capacity(cin_g * kh * kw);
        for ci in 0..cin_g {
            for ky in 0..kh {
                for kx in 0..kw {
                    // Phase (ky·dh mod sh, kx·dw mod sw), shifted by the quotients.
                    let phase = ci * sh * sw + (ky * dh) % sh * sw + (kx * dw) % sw;
                    let row = phase * hph + (ky * dh) / sh;
                    off_of_k.push(((row * pitch + (kx * dw) / sw) * es) as u32);
                }
            }
        }
        let csr_offs: Vec<u32> = match w.cols() {
            Cols::U16(c) => c.par_iter().map(|&k| off_of_k[k as usize]).collect(),
            Cols::U32(c) => c.par_iter().map(|&k| off_of_k[k as usize]).collect(),
        };
        // The aligned kernel reads one vector past the tile for its shifted runs.
        let past = if aligned == 1 { LINE } else { 0 };
        let phases = (sh * sw).min(kh * kw);
        let reach =
            phases * (tile + (((kh - 1) * dh) / sh * pitch + ((kw - 1) * dw) / sw) * es + past);
        let plan = ChunkPlan::new(w, CHUNK_BYTES / (4 * reach));
        let chunks = plan.chunks;
        let mut runs = Vec::new();
        let mut run_starts = Vec::with_capacity(w.rows() * chunks + 1);
        run_starts.push(0);
        if aligned == 0 {
            // CSR order, one run of shift 0 per (channel, chunk).
            for co in 0..w.rows() {
                for c in 0..chunks {
                    let r = plan.range(co, c);
                    if !r.is_empty() {
                        runs.push(Run {
                            start: r.start as u32,
                            end: r.end as u32,
                            shift: 0,
                        });
                    }
                    run_starts.push(runs.len() as u32);
                }
            }
            return FlatPrep {
                geometry,
                values: None,
                offs: csr_offs,
                plan,
                runs,
                run_starts,
            };
        }
        // Each (channel, chunk)'s stored weights sorted by shift, in place of their CSR
        // positions (a stable sort: CSR order within a shift).
        let csr_values = w.values();
        let mut values = Vec::with_capacity(csr_values.len());
        let mut offs = Vec::with_capacity(csr_values.len());
        let mut order: Vec<usize> = Vec::new();
        for co in 0..w.rows() {
            for c in 0..chunks {
                let r = plan.range(co, c);
                order.clear();
                order.extend(r);
                order.sort_by_key(|&i| csr_offs[i] as usize % LINE);
                let first_run = runs.len();
                for &i in &order {
                    let shift = csr_offs[i] % LINE as u32;
                    let at = values.len() as u32;
                    match runs[first_run..].last_mut() {
                        Some(run) if run.shift == shift => run.end = at + 1,
                        _ => runs.push(Run {
                            start: at,
                            end: at + 1,
                            shift,
                        }),
                    }
                    values.push(csr_values[i]);
                    offs.push(csr_offs[i] - shift);
                }
                run_starts.push(runs.len() as u32);
            }
        }
        FlatPrep {
            geometry,
            values: Some(values),
            offs,
            plan,
            runs,
            run_starts,
        }
    }

    /// The runs of output channel `co` in chunk `c`.
    pub(super) fn runs(&self, co: usize, c: usize) -> &[Run] {
        let i = co * self.plan.chunks + c;
        &self.runs[self.run_starts[i] as usize..self.run_starts[i + 1] as usize]
    }
}

/// Output channels per task of the flat kernels: the largest divisor of Cout up to
/// `FLAT_CHANNELS`.
pub(super) fn channel_block(cout: usize) -> usize {
    (1..=FLAT_CHANNELS.min(cout))
        .rev()
        .find(|b| cout.is_multiple_of(*b))
        .unwrap_or(1)
}

/// A conv's stored weights split by chunks of input channels: a CSR row's columns
/// increase in `k = (ci·kh + ky)·kw + kx`, so each chunk of input channels is a
/// contiguous run of the row.
pub(super) struct ChunkPlan {
    /// Number of chunks.
    pub(super) chunks: usize,
    /// CSR position where each (output channel, chunk) starts, `[Cout][chunks + 1]`.
    starts: Vec<usize>,
}

impl ChunkPlan {
    /// Chunks of `chunk_ci` input channels (clamped to 1..=Cin/groups).
    fn new(w: &SparseWeights, chunk_ci: usize) -> ChunkPlan {
        let shape = w.shape();
        let (cin_g, k_per_ci) = (shape[1], shape[2] * shape[3]);
        let chunk_ci = chunk_ci.clamp(1, cin_g.max(1));
        let chunks = cin_g.div_ceil(chunk_ci);
        let cols = w.cols();
        let starts = (0..w.rows())
            .flat_map(|co| {
                let range = w.row_range(co);
                (0..=chunks).map(move |c| {
                    let k_end = (c * chunk_ci).min(cin_g) * k_per_ci;
                    let run = range.clone();
                    let len = match cols {
                        Cols::U16(v) => v[run].partition_point(|&k| (k as usize) < k_end),
                        Cols::U32(v) => v[run].partition_point(|&k| (k as usize) < k_end),
                    };
                    range.start + len
                })
            })
            .collect();
        ChunkPlan { chunks, starts }
    }

    /// CSR positions of output channel `co`'s stored weights in chunk `c`.
    fn range(&self, co: usize, c: usize) -> std::ops::Range<usize> {
        let at = co * (self.chunks + 1) + c;
        self.starts[at]..self.starts[at + 1]
    }
}
