//! Image preprocessing: decode, resize, center crop, channel order, scale, normalise.

use super::DataError;
use image::{imageops::FilterType, DynamicImage, GenericImageView};
use std::collections::BTreeMap;
use std::path::Path;

/// Largest image (width x height, read from the file header before decoding) that
/// `load_image` decodes.
pub const MAX_PIXELS: u64 = 100_000_000;

/// Channel order the network expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (Caffe models).
    Bgr,
    /// One luma channel: `0.299 R + 0.587 G + 0.114 B` (ITU-R 601, as Pillow's "L").
    Gray,
}

/// How one image becomes one CHW f32 item:
/// resize (shorter side to `resize`) -> center crop -> channel order ->
/// `x * scale` -> `(x - mean[c]) / std[c]`, with `x` the 0-255 pixel value.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Channel order of the output.
    pub color_order: ColorOrder,
    /// Multiplier applied to the 0-255 pixel first.
    pub scale: f32,
    /// Per output channel (in output order) or one value for all, subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per output channel or one value for all; divides after the mean is subtracted.
    pub std: Vec<f32>,
    /// Resize the shorter side to this many pixels (bilinear, antialiased when
    /// shrinking), the longer side to `round(len * resize / short)`.
    pub resize: Option<u32>,
    /// Center crop to this square size: `left = (w - crop) / 2`, `top = (h - crop) / 2`.
    pub crop: Option<u32>,
    /// Output height in pixels (from the item shape).
    pub height: u32,
    /// Output width in pixels (from the item shape).
    pub width: u32,
}

fn parse_list(key: &str, v: &str) -> Result<Vec<f32>, DataError> {
    v.split(',')
        .map(|s| {
            s.trim().parse::<f32>().map_err(|_| DataError::Metadata {
                key: key.into(),
                value: v.into(),
                reason: format!("'{}' is not a number", s.trim()),
            })
        })
        .collect()
}

fn parse_u32(key: &str, v: &str) -> Result<u32, DataError> {
    match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(DataError::Metadata {
            key: key.into(),
            value: v.into(),
            reason: "expected a positive integer".into(),
        }),
    }
}

/// Channels, height and width of an item shape: `[C, H, W]`, or `[K]` with K a
/// square (one channel, `sqrt(K)` square), as for an MLP on flattened images.
pub fn image_dims(item_shape: &[usize]) -> Result<(usize, u32, u32), DataError> {
    let bad = || DataError::ItemShape(item_shape.to_vec());
    match *item_shape {
        [c, h, w] if c > 0 && h > 0 && w > 0 => Ok((
            c,
            u32::try_from(h).map_err(|_| bad())?,
            u32::try_from(w).map_err(|_| bad())?,
        )),
        [k] if k > 0 => {
            let s = (k as f64).sqrt().round() as usize;
            if s * s == k {
                let s = u32::try_from(s).map_err(|_| bad())?;
                Ok((1, s, s))
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

impl Preprocess {
    /// Builds the preprocessing from a model's `preprocess.*` metadata keys (see
    /// data/README.md): missing keys mean scale 1, mean 0, std 1, no resize or crop,
    /// RGB (GRAY for one channel). `item_shape` is the model's input without the batch.
    pub fn from_metadata(
        meta: &BTreeMap<String, String>,
        item_shape: &[usize],
    ) -> Result<Preprocess, DataError> {
        let (c, height, width) = image_dims(item_shape)?;
        let color_order = match meta.get("preprocess.color_order") {
            None => {
                if c == 1 {
                    ColorOrder::Gray
                } else {
                    ColorOrder::Rgb
                }
            }
            Some(v) => match v.trim().to_ascii_uppercase().as_str() {
                "RGB" => ColorOrder::Rgb,
                "BGR" => ColorOrder::Bgr,
                "GRAY" | "GREY" | "L" => ColorOrder::Gray,
                _ => {
                    return Err(DataError::Metadata {
                        key: "preprocess.color_order".into(),
                        value: v.clone(),
                        reason: "expected RGB, BGR or GRAY".into(),
                    })
                }
            },
        };
        let scale = match meta.get("preprocess.scale") {
            None => 1.0,
            Some(v) => {
                let s = parse_list("preprocess.scale", v)?;
                match s[..] {
                    [x] => x,
                    _ => {
                        return Err(DataError::Metadata {
                            key: "preprocess.scale".into(),
                            value: v.clone(),
                            reason: "expected one number".into(),
                        })
                    }
                }
            }
        };
        let mean = match meta.get("preprocess.mean") {
            None => vec![0.0],
            Some(v) => parse_list("preprocess.mean", v)?,
        };
        let std = match meta.get("preprocess.std") {
            None => vec![1.0],
            Some(v) => parse_list("preprocess.std", v)?,
        };
        let resize = meta
            .get("preprocess.resize")
            .map(|v| parse_u32("preprocess.resize", v))
            .transpose()?;
        let crop = meta
            .get("preprocess.crop")
            .map(|v| parse_u32("preprocess.crop", v))
            .transpose()?;
        let p = Preprocess {
            color_order,
            scale,
            mean,
            std,
            resize,
            crop,
            height,
            width,
        };
        p.check(c)?;
        Ok(p)
    }

    /// Output channels (3 for RGB/BGR, 1 for GRAY).
    pub fn channels(&self) -> usize {
        match self.color_order {
            ColorOrder::Gray => 1,
            _ => 3,
        }
    }

    /// Elements of one output item (`C * H * W`).
    pub fn item_len(&self) -> usize {
        self.channels() * self.height as usize * self.width as usize
    }

    /// Checks settings against an expected channel count (call after changing fields).
    pub fn check(&self, channels: usize) -> Result<(), DataError> {
        let bad = |key: &str, reason: String| DataError::Metadata {
            key: key.into(),
            value: String::new(),
            reason,
        };
        if self.channels() != channels {
            return Err(bad(
                "preprocess.color_order",
                format!(
                    "{:?} gives {} channels but the model input has {channels}",
                    self.color_order,
                    self.channels()
                ),
            ));
        }
        for (key, v) in [
            ("preprocess.mean", &self.mean),
            ("preprocess.std", &self.std),
        ] {
            if v.len() != 1 && v.len() != channels {
                return Err(bad(
                    key,
                    format!("{} values for {channels} channels", v.len()),
                ));
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(bad(key, "non-finite value".into()));
            }
        }
        if self.std.contains(&0.0) {
            return Err(bad("preprocess.std", "zero std".into()));
        }
        if !self.scale.is_finite() {
            return Err(bad("preprocess.scale", "non-finite".into()));
        }
        Ok(())
    }

    fn mean_std(&self, c: usize) -> (f32, f32) {
        let m = if self.mean.len() == 1 {
            self.mean[0]
        } else {
            self.mean[c]
        };
        let s = if self.std.len() == 1 {
            self.std[0]
        } else {
            self.std[c]
        };
        (m, s)
    }

    /// Resizes and crops `img` to the output size (the geometric part of `apply`).
    pub fn geometry(&self, img: &DynamicImage) -> Result<DynamicImage, DataError> {
        let mut img = std::borrow::Cow::Borrowed(img);
        if let Some(r) = self.resize {
            let (w, h) = img.dimensions();
            if w == 0 || h == 0 {
                return Err(DataError::ImageSize {
                    found: (w, h),
                    expected: (self.width, self.height),
                });
            }
            let short = w.min(h) as f64;
            // Python's round(): ties to even, as the reference preprocessing used.
            let scaled =
                |len: u32| ((len as f64 * r as f64 / short).round_ties_even() as u32).max(1);
            let (nw, nh) = if w <= h {
                (r, scaled(h))
            } else {
                (scaled(w), r)
            };
            if (nw, nh) != (w, h) {
                // Triangle = bilinear; the image crate widens the filter support by
                // the scale factor when shrinking, like Pillow's antialiased BILINEAR.
                let resized = match &*img {
                    DynamicImage::ImageLuma8(g) => DynamicImage::ImageLuma8(
                        image::imageops::resize(g, nw, nh, FilterType::Triangle),
                    ),
                    other => DynamicImage::ImageRgb8(image::imageops::resize(
                        &other.to_rgb8(),
                        nw,
                        nh,
                        FilterType::Triangle,
                    )),
                };
                img = std::borrow::Cow::Owned(resized);
            }
        }
        if let Some(c) = self.crop {
            let (w, h) = img.dimensions();
            if w < c || h < c {
                return Err(DataError::ImageSize {
                    found: (w, h),
                    expected: (c, c),
                });
            }
            img = std::borrow::Cow::Owned(img.crop_imm((w - c) / 2, (h - c) / 2, c, c));
        }
        let (w, h) = img.dimensions();
        if (w, h) != (self.width, self.height) {
            return Err(DataError::ImageSize {
                found: (w, h),
                expected: (self.width, self.height),
            });
        }
        Ok(img.into_owned())
    }

    /// Writes one CHW item for `img` into `out` (length `item_len()`).
    pub fn apply(&self, img: &DynamicImage, out: &mut [f32]) -> Result<(), DataError> {
        if out.len() != self.item_len() {
            return Err(DataError::ItemLen {
                found: out.len(),
                expected: self.item_len(),
            });
        }
        let img = self.geometry(img)?;
        let plane = self.height as usize * self.width as usize;
        match self.color_order {
            ColorOrder::Gray => {
                let (m, s) = self.mean_std(0);
                match &img {
                    DynamicImage::ImageLuma8(g) => {
                        for (o, p) in out.iter_mut().zip(g.as_raw()) {
                            *o = (*p as f32 * self.scale - m) / s;
                        }
                    }
                    other => {
                        let rgb = other.to_rgb8();
                        for (o, p) in out.iter_mut().zip(rgb.as_raw().chunks_exact(3)) {
                            let l = 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32;
                            *o = (l * self.scale - m) / s;
                        }
                    }
                }
            }
            order => {
                let rgb = img.to_rgb8();
                for c in 0..3 {
                    let src = if order == ColorOrder::Bgr { 2 - c } else { c };
                    let (m, s) = self.mean_std(c);
                    for (o, p) in out[c * plane..(c + 1) * plane]
                        .iter_mut()
                        .zip(rgb.as_raw().chunks_exact(3))
                    {
                        *o = (p[src] as f32 * self.scale - m) / s;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes one item from raw 8-bit gray pixels (row-major `height x width`, as in
    /// IDX files): `(p * scale - mean) / std`. Only for one-channel models.
    pub fn apply_gray_u8(&self, pixels: &[u8], out: &mut [f32]) -> Result<(), DataError> {
        if self.color_order != ColorOrder::Gray {
            return Err(DataError::Metadata {
                key: "preprocess.color_order".into(),
                value: format!("{:?}", self.color_order),
                reason: "gray-scale data needs a one-channel (GRAY) model".into(),
            });
        }
        if pixels.len() != out.len() || out.len() != self.item_len() {
            return Err(DataError::ItemLen {
                found: pixels.len(),
                expected: self.item_len(),
            });
        }
        let (m, s) = self.mean_std(0);
        for (o, p) in out.iter_mut().zip(pixels) {
            *o = (*p as f32 * self.scale - m) / s;
        }
        Ok(())
    }
}

/// Decodes an image file (JPEG or PNG, format guessed from the contents). The pixel
/// count is read from the header and checked against `MAX_PIXELS` before decoding.
pub fn load_image(path: &Path) -> Result<DynamicImage, DataError> {
    let p = path.display().to_string();
    let open = || -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, DataError> {
        image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|source| DataError::Io {
                path: p.clone(),
                source,
            })
    };
    let (w, h) = open()?.into_dimensions().map_err(|e| DataError::Image {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(DataError::TooManyPixels {
            path: p,
            width: w,
            height: h,
            limit: MAX_PIXELS,
        });
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    reader.limits(limits);
    reader.decode().map_err(|e| DataError::Image {
        path: p,
        reason: e.to_string(),
    })
}
