//! Random data augmentation of preprocessed training items, deterministic by seed.
//!
//! Items are CHW `f32` tensors as `Dataset::batch` returns them (after scaling and
//! mean/std), so augmentation works on any dataset layout. Every transform samples the
//! source image at a warped position; positions outside the image repeat the nearest
//! edge pixel (for MNIST-like digits the edge is background, and for natural images a
//! repeated edge is closer to the content than a constant).
//!
//! The generator of each item is seeded from (run seed, epoch, item index in the
//! dataset), so the same seed gives the same augmented batches whatever the thread
//! that prepares them.

use crate::graph::Rng;

/// Errors of augmentation specs and item shapes.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    /// A spec string that does not parse.
    #[error("augmentation '{spec}': {reason} (use shift:PX, affine:PX:DEG:SCALE, crop:MIN_AREA or flip)")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// An item that is not `c * h * w` values.
    #[error("augmentation: item has {found} values, shape [{c}, {h}, {w}] needs {}", c * h * w)]
    Shape {
        /// Values in the item.
        found: usize,
        /// Channels.
        c: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
}

/// One random transform applied independently to every training item.
#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// Integer translation by (dy, dx), each uniform in `[-max, max]` pixels (exact copy,
    /// no interpolation). Spec `shift:MAX`.
    Shift {
        /// Largest shift in pixels.
        max: usize,
    },
    /// Small affine warp about the image centre, bilinear: rotation uniform in
    /// `±degrees`, isotropic scale uniform in `[1 − scale, 1 + scale]`, translation
    /// uniform in `±shift` pixels per axis. Spec `affine:SHIFT:DEGREES:SCALE`.
    Affine {
        /// Largest translation in pixels.
        shift: f32,
        /// Largest rotation in degrees.
        degrees: f32,
        /// Largest relative scale change.
        scale: f32,
    },
    /// ImageNet-style random resized crop (area fraction uniform in `[min_area, 1]`,
    /// aspect ratio log-uniform in `[3/4, 4/3]`, up to 10 tries, else the whole image)
    /// resized back to the item size (bilinear), then a horizontal flip with probability
    /// 1/2. Spec `crop:MIN_AREA` (torchvision's default is 0.08).
    ResizedCrop {
        /// Smallest area fraction of the crop.
        min_area: f32,
    },
    /// Horizontal flip with probability 1/2. Spec `flip`.
    Flip,
}

impl std::str::FromStr for Augment {
    type Err = AugmentError;

    fn from_str(spec: &str) -> Result<Augment, AugmentError> {
        let err = |reason: &str| AugmentError::Spec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = spec.trim().split(':');
        let kind = parts.next().unwrap_or_default();
        let nums: Vec<f32> = parts
            .map(|p| p.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .map_err(|_| err("parameters must be numbers"))?;
        if nums.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(err("parameters must be finite and >= 0"));
        }
        match (kind, nums.as_slice()) {
            ("shift", [m]) if m.fract() == 0.0 => Ok(Augment::Shift { max: *m as usize }),
            ("shift", _) => Err(err("shift takes one whole number of pixels")),
            ("affine", [shift, degrees, scale]) if *scale < 1.0 => Ok(Augment::Affine {
                shift: *shift,
                degrees: *degrees,
                scale: *scale,
            }),
            ("affine", _) => Err(err("affine takes SHIFT:DEGREES:SCALE with SCALE < 1")),
            ("crop", []) => Ok(Augment::ResizedCrop { min_area: 0.08 }),
            ("crop", [a]) if *a > 0.0 && *a <= 1.0 => Ok(Augment::ResizedCrop { min_area: *a }),
            ("crop", _) => Err(err("crop takes MIN_AREA in (0, 1]")),
            ("flip", []) => Ok(Augment::Flip),
            _ => Err(err("unknown kind")),
        }
    }
}

/// The per-item generator for run `seed`, `epoch` and dataset index `item`.
pub fn item_rng(seed: u64, epoch: usize, item: usize) -> Rng {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [epoch as u64, item as u64] {
        h = (h ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    Rng::new(h)
}

/// Inverse map of a transform: output pixel centre (x, y) -> source position, plus flip.
struct Warp {
    /// src = m · (dst − centre) + centre + t, as [m00, m01, m10, m11].
    m: [f32; 4],
    t: [f32; 2],
    flip: bool,
}

impl Augment {
    /// Augments one CHW item in place with randomness from `rng`.
    pub fn apply(
        &self,
        item: &mut [f32],
        (c, h, w): (usize, usize, usize),
        rng: &mut Rng,
    ) -> Result<(), AugmentError> {
        if item.len() != c * h * w {
            return Err(AugmentError::Shape {
                found: item.len(),
                c,
                h,
                w,
            });
        }
        if h == 0 || w == 0 {
            return Ok(());
        }
        let warp = match *self {
            Augment::Shift { max } => {
                let m = max as isize;
                let dy = rng.range(0, 2 * max) as isize - m;
                let dx = rng.range(0, 2 * max) as isize - m;
                shift(item, (c, h, w), dy, dx);
                return Ok(());
            }
            Augment::Flip => {
                if rng.uniform() < 0.5 {
                    flip(item, (c, h, w));
                }
                return Ok(());
            }
            Augment::Affine {
                shift,
                degrees,
                scale,
            } => {
                let sym = |rng: &mut Rng, a: f32| (2.0 * rng.uniform() - 1.0) * a;
                let theta = sym(rng, degrees).to_radians();
                let s = 1.0 + sym(rng, scale);
                let (tx, ty) = (sym(rng, shift), sym(rng, shift));
                // Output = R·s·(src − c) + c + t, so src = R^-1·(out − c − t)/s + c.
                let (sin, cos) = theta.sin_cos();
                Warp {
                    m: [cos / s, sin / s, -sin / s, cos / s],
                    t: [-(cos * tx + sin * ty) / s, -(-sin * tx + cos * ty) / s],
                    flip: false,
                }
            }
            Augment::ResizedCrop { min_area } => {
                let (hf, wf) = (h as f32, w as f32);
                let (mut cw, mut ch, mut x0, mut y0) = (wf, hf, 0.0, 0.0);
                for _ in 0..10 {
                    let area = hf * wf * (min_area + (1.0 - min_area) * rng.uniform());
                    let ratio = ((3f32 / 4.0).ln() + (16f32 / 9.0).ln() * rng.uniform()).exp();
                    let (tw, th) = ((area * ratio).sqrt(), (area / ratio).sqrt());
                    if tw <= wf && th <= hf {
                        (cw, ch) = (tw, th);
                        x0 = (wf - tw) * rng.uniform();
                        y0 = (hf - th) * rng.uniform();
                        break;
                    }
                }
                // Output pixel centre x+0.5 maps to x0 + (x+0.5)·cw/w in the source.
                let (sx, sy) = (cw / wf, ch / hf);
                let (cx, cy) = (wf / 2.0, hf / 2.0);
                Warp {
                    m: [sx, 0.0, 0.0, sy],
                    t: [x0 + cx * sx - cx, y0 + cy * sy - cy],
                    flip: rng.uniform() < 0.5,
                }
            }
        };
        warp_bilinear(item, (c, h, w), &warp);
        Ok(())
    }
}

/// Integer translation: out[y][x] = in[clamp(y − dy)][clamp(x − dx)].
fn shift(item: &mut [f32], (c, h, w): (usize, usize, usize), dy: isize, dx: isize) {
    if dy == 0 && dx == 0 {
        return;
    }
    let src = item.to_vec();
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let out = &mut item[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = clamp(y as isize - dy, h);
            for x in 0..w {
                out[y * w + x] = plane[sy * w + clamp(x as isize - dx, w)];
            }
        }
    }
}

fn flip(item: &mut [f32], (c, h, w): (usize, usize, usize)) {
    for row in item.chunks_mut(w).take(c * h) {
        row.reverse();
    }
}

/// Resamples every channel through `warp` (pixel centres at i + 0.5), bilinear, with
/// positions clamped to the image.
fn warp_bilinear(item: &mut [f32], (c, h, w): (usize, usize, usize), warp: &Warp) {
    let src = item.to_vec();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let [m00, m01, m10, m11] = warp.m;
    for y in 0..h {
        for x in 0..w {
            let xo = if warp.flip { w - 1 - x } else { x };
            let (px, py) = (xo as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let sx = (m00 * px + m01 * py + cx + warp.t[0] - 0.5).clamp(0.0, (w - 1) as f32);
            let sy = (m10 * px + m11 * py + cy + warp.t[1] - 0.5).clamp(0.0, (h - 1) as f32);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for ch in 0..c {
                let p = &src[ch * h * w..(ch + 1) * h * w];
                let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                let bot = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                item[ch * h * w + y * w + x] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
}
