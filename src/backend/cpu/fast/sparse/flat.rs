//! The flat sparse conv (`sparse_conv_flat`): every stored weight one contiguous axpy
//! over a tile of flat output positions held in registers, on the zero-padded input
//! viewed as one flat array per (image, group).

use super::kernels::{tile_axpy, TileSimd};
use super::prep::{channel_block, FlatPrep};
use super::LINE;
use crate::graph::{Conv2d, Tensor};
use crate::weights::SparseWeights;
use rayon::prelude::*;

/// Sparse conv on the zero-padded input viewed as one flat array per (image, group),
/// described here for stride 1 (a strided conv splits the input into stride phases,
/// each of which a weight reads at stride 1: see the body): with `P` the row pitch (the padded width `Wp`, or `Wp` rounded up to
/// a cache line, see `TileSimd::pitch`), output `(oy, ox)` is flat position
/// `q = oy·P + ox`, and the stored weight `(ci, ky, kx)` reads input `q + off` with
/// `off = (ci·Hp + ky·dh)·P + kx·dw`. So every stored weight is one contiguous axpy
/// over a tile of flat positions, accumulated in registers across all the channel's
/// stored weights (one load and one multiply-add per weight and position, no stores
/// until the tile is done). The `P − OW` positions per row past the output width are
/// computed and dropped (8 of 64 at 56x56 with 3x3 and a rounded pitch, 2 of 9 at 7x7).
///
/// With AVX-512 and a pitch of whole cache lines, every load is aligned: a weight's
/// offset is `off = 16a + s` with the shift `s = (kx·dw) mod 16` the same for a whole
/// kernel column, so a channel's weights are run in groups of one shift, each summed at
/// the aligned positions `q0 + 16a` (one vector more than the tile) and added into the
/// tile shifted by `s` once per group. An unaligned 64-byte load spans two cache lines
/// and took twice as long per weight as an aligned one (8 loads and multiply-adds per
/// weight: 3.7 against 1.9 ns on the Xeon of docs/benchmarks-archive.md, session 13).
pub(super) fn sparse_conv_flat(
    x: &Tensor,
    conv: &Conv2d,
    w: &SparseWeights,
    relu: bool,
    simd: TileSimd,
) -> Tensor {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let shape = w.shape();
    let (cout, cin_g, kw) = (shape[0], shape[1], shape[3]);
    let groups = conv.groups.max(1);
    let [oh, ow] = conv
        .output_hw(h, wd)
        .expect("shape inference checked the window fits");
    let cout_g = cout / groups;
    let [dh, dw] = conv.dilation;
    let [pt, pl, pb, pr] = conv.pads;
    let [sh, sw] = conv.stride;
    let tile = simd.tile();
    // A strided conv reads its padded input split into sh x sw phases, phase (py, px)
    // holding rows py, py + sh, .. and columns px, px + sw, ..: each stored weight then
    // reads one phase at stride 1 (one phase when the stride is 1).
    let (hph, wp) = ((h + pt + pb).div_ceil(sh), (wd + pl + pr).div_ceil(sw));
    let phases = sh * sw;
    // The phases some kernel tap reads (a 1x1 conv of stride 2 reads one of four).
    let kh = shape[2];
    let read_py: Vec<bool> = (0..sh)
        .map(|p| (0..kh).any(|ky| ky * dh % sh == p))
        .collect();
    let read_px: Vec<bool> = (0..sw)
        .map(|p| (0..kw).any(|kx| kx * dw % sw == p))
        .collect();
    // Maps that fill at most half a tile (7x7 at 128 positions) hold the whole batch in
    // one flat array, images innermost (`es` floats per position): 8 images of 7x7 are
    // 4 full tiles instead of 8 half tiles, and at 8 images every offset is a multiple of
    // 8 floats (two shift groups). AVX-512 only: its tile is the one half-filled there.
    let batched = simd == TileSimd::Avx512 && n > 1 && oh * wp <= tile / 2;
    let (es, arrays) = if batched { (n, 1) } else { (1, n) };
    let pitch = if batched { wp } else { simd.pitch(wp) };
    let aligned = simd.aligns(pitch * es) || (batched && es.is_multiple_of(LINE / 2));
    let flat_out = oh * pitch * es;
    let tiles = flat_out.div_ceil(tile);
    // Room for the last tile's overrun past the last row, the largest offset's column
    // shift and the aligned kernel's vector past the tile.
    let plane_len = (cin_g * phases * hph * pitch + ((kw - 1) * dw) / sw + pitch) * es
        + tiles * tile
        - flat_out
        + LINE;
    let mut y = Tensor::zeros(vec![n, cout, oh, ow]);
    if n == 0 || cout == 0 || oh * ow == 0 {
        return y;
    }
    // Padded inputs, one flat array per (image, group) (per group when batched),
    // starting on a cache line where the kernel's loads are to be aligned (only there:
    // unaligned ones gain nothing); each channel plane zeroed and filled by its own task
    // (per (image, group) alone, a batch-1 layer padded its whole input on one thread
    // while the other waited).
    let padded: Vec<(Vec<f32>, usize)> = (0..arrays * groups)
        .map(|ag| {
            let (a, g) = (ag / groups, ag % groups);
            let mut p = crate::backend::cpu::fast::uninit_vec(plane_len + LINE - 1);
            let lead = if aligned {
                p.as_ptr().align_offset(4 * LINE).min(LINE - 1)
            } else {
                0
            };
            let (head, rest) = p.split_at_mut(lead);
            let (planes, tail) = rest.split_at_mut(cin_g * phases * hph * pitch * es);
            head.fill(std::mem::MaybeUninit::new(0.0));
            tail.fill(std::mem::MaybeUninit::new(0.0));
            if hph * pitch > 0 {
                planes
                    .par_chunks_mut(phases * hph * pitch * es)
                    .enumerate()
                    .for_each(|(ci, dst)| {
                        dst.fill(std::mem::MaybeUninit::new(0.0));
                        // Image `a` alone, or all of them (image b at b of every `es`).
                        for (e, b) in (a..a + es).enumerate() {
                            let src = &x.data[(b * cin + g * cin_g + ci) * h * wd..][..h * wd];
                            for (iy, row) in src.chunks_exact(wd.max(1)).enumerate() {
                                // Padded row iy + pt is row (iy + pt) / sh of phase row
                                // (iy + pt) mod sh; its columns go to the sw column phases.
                                let (py, i) = ((iy + pt) % sh, (iy + pt) / sh);
                                if !read_py[py] {
                                    continue;
                                }
                                for px in (0..sw).filter(|&px| read_px[px]) {
                                    // Input columns ix with (ix + pl) mod sw == px.
                                    let ix0 = (px + sw - pl % sw) % sw;
                                    if ix0 >= wd {
                                        continue;
                                    }
                                    let j0 = (ix0 + pl) / sw;
                                    let at = (((py * sw + px) * hph + i) * pitch + j0) * es + e;
                                    let vals = row[ix0..].iter().step_by(sw);
                                    for (d, v) in dst[at..].iter_mut().step_by(es).zip(vals) {
                                        d.write(*v);
                                    }
                                }
                            }
                        }
                    });
            }
            // SAFETY: every element was written (each plane zeroed first, the rest too).
            (unsafe { crate::backend::cpu::fast::assume_init(p) }, lead)
        })
        .collect();
    // Flat offset of every stored weight, its kernel order and the chunk plan (see
    // `FlatPrep`), built once per layer and input geometry and kept with the weights: a
    // 512-channel 7x7 layer at batch 1 spent a third of its time rebuilding them on
    // every call.
    let geometry = [hph, pitch, dh, dw, aligned as usize, tile, es, sh, sw];
    let prep = w.derived().get_or_make(
        |p: &FlatPrep| p.geometry == geometry,
        || FlatPrep::new(w, geometry),
    );
    let block = channel_block(cout);
    let layer = FlatLayer {
        prep: &prep,
        values: prep.values.as_deref().unwrap_or(w.values()),
        padded: &padded,
        bias: conv.bias.as_ref().map(|b| b.data.as_slice()),
        relu,
        simd,
        tile,
        tiles,
        flat_out,
        pitch,
        es,
        out_hw: [oh, ow],
        cout,
        cout_g,
        groups,
    };
    let plane = oh * ow;
    if !batched {
        // Tasks of `block` output channels of one image (never across images, so every
        // task's channels share one padded input), written in place.
        y.data
            .par_chunks_mut(plane * block)
            .enumerate()
            .for_each(|(task, out)| layer.run_block(task * block, block, out));
        return y;
    }
    // Tasks of `block` output channels of every image, `[channel][image][OH][OW]`, then
    // copied to NCHW.
    let blocks: Vec<Vec<f32>> = (0..cout / block)
        .into_par_iter()
        .map(|task| {
            let mut out = vec![0f32; block * n * plane];
            layer.run_block(task * block, block, &mut out);
            out
        })
        .collect();
    y.data
        .par_chunks_mut(cout * plane)
        .enumerate()
        .for_each(|(b, image)| {
            for (co, dst) in image.chunks_exact_mut(plane).enumerate() {
                let src = &blocks[co / block][((co % block) * n + b) * plane..][..plane];
                dst.copy_from_slice(src);
            }
        });
    y
}

/// One call of the flat kernel: what every task reads.
struct FlatLayer<'a> {
    prep: &'a FlatPrep,
    /// The stored values in kernel order.
    values: &'a [f32],
    /// The padded inputs and where their data starts, `[arrays][groups]`.
    padded: &'a [(Vec<f32>, usize)],
    bias: Option<&'a [f32]>,
    /// Whether a ReLU follows (applied as the outputs are stored).
    relu: bool,
    simd: TileSimd,
    tile: usize,
    tiles: usize,
    flat_out: usize,
    pitch: usize,
    /// Floats per input position: 1, or the batch when the images are innermost.
    es: usize,
    out_hw: [usize; 2],
    cout: usize,
    cout_g: usize,
    groups: usize,
}

impl FlatLayer<'_> {
    /// Output channels `first..first + block` (counted over images, `image·Cout + co`,
    /// when the images are not innermost), `[channel][es][OH][OW]` into `out`: tiles
    /// outer, then chunks of input channels, then the block's channels, each
    /// accumulating its tile in registers from its stored weights of that chunk.
    fn run_block(&self, first: usize, block: usize, out: &mut [f32]) {
        let (tile, es, pitch) = (self.tile, self.es, self.pitch);
        let [oh, ow] = self.out_hw;
        let plane = oh * ow;
        let offs = &self.prep.offs;
        let mut acc = vec![0f32; tile * block];
        for t in 0..self.tiles {
            let q0 = t * tile;
            // A last tile with at most half a tile of positions left is done at half
            // width (e.g. 14x14 with padding 1 and 64-position tiles: 224 flat
            // positions, 3.5 tiles).
            let width = if self.flat_out - q0 <= tile / 2 {
                tile / 2
            } else {
                tile
            };
            acc.fill(0.0);
            for c in 0..self.prep.plan.chunks {
                for (j, a) in acc.chunks_exact_mut(tile).enumerate() {
                    let idx = first + j;
                    let (b, co) = (idx / self.cout, idx % self.cout);
                    let (buf, lead) = &self.padded[b * self.groups + co / self.cout_g];
                    let xp = &buf[*lead..];
                    for run in self.prep.runs(co, c) {
                        let r = run.start as usize..run.end as usize;
                        let (vals, offs) = (&self.values[r.clone()], &offs[r]);
                        let a = &mut a[..width];
                        tile_axpy(a, xp, q0, vals, offs, run.shift as usize, self.simd);
                    }
                }
            }
            let end = (q0 + tile).min(self.flat_out);
            for ((j, o), a) in out
                .chunks_exact_mut(es * plane)
                .enumerate()
                .zip(acc.chunks_exact(tile))
            {
                let co = (first + j) % self.cout;
                let bv = self.bias.map_or(0.0, |bb| bb[co]);
                let relu = self.relu;
                let store = |v: f32| if relu { (v + bv).max(0.0) } else { v + bv };
                if es > 1 {
                    // Flat position q is image q mod es at (oy, ox) = (q / es) / pitch,
                    // (q / es) mod pitch: counted up from q0's, no division per position.
                    let (p, mut e) = (q0 / es, q0 % es);
                    let (mut oy, mut ox) = (p / pitch, p % pitch);
                    for v in &a[..end - q0] {
                        if ox < ow {
                            o[e * plane + oy * ow + ox] = store(*v);
                        }
                        e += 1;
                        if e == es {
                            e = 0;
                            ox += 1;
                            if ox == pitch {
                                ox = 0;
                                oy += 1;
                            }
                        }
                    }
                    continue;
                }
                // Flat positions q0.. back to (oy, ox): row by row, dropping ox >= OW.
                let mut q = q0;
                while q < end {
                    let (oy, ox) = (q / pitch, q % pitch);
                    let row_end = ((oy + 1) * pitch).min(end);
                    if ox < ow {
                        let valid = (oy * pitch + ow).min(end) - q;
                        let dst = &mut o[oy * ow + ox..][..valid];
                        for (d, v) in dst.iter_mut().zip(&a[q - q0..]) {
                            *d = store(*v);
                        }
                    }
                    q = row_end;
                }
            }
        }
    }
}
