//! Labelled datasets read from a folder: IDX files, images + labels.csv, or an
//! ImageFolder tree.

use super::{idx, load_image, DataError, Preprocess};
use crate::graph::Tensor;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// A labelled dataset whose items come out preprocessed for one model.
#[derive(Debug)]
pub enum Dataset {
    /// IDX images held in memory (MNIST-style, one gray channel).
    Idx {
        /// Pixels, `[n, rows, cols]` row-major.
        pixels: Vec<u8>,
        /// One label per image.
        labels: Vec<u8>,
        /// Image height.
        rows: usize,
        /// Image width.
        cols: usize,
        /// Preprocessing applied per item.
        preprocess: Preprocess,
        /// Model input shape without the batch axis (batches are `[n] + item_shape`).
        item_shape: Vec<usize>,
    },
    /// Image files with class indices, decoded on demand.
    Images {
        /// (file, class index), in dataset order.
        items: Vec<(PathBuf, usize)>,
        /// Preprocessing applied per item.
        preprocess: Preprocess,
        /// Model input shape without the batch axis (batches are `[n] + item_shape`).
        item_shape: Vec<usize>,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn first_existing(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

impl Dataset {
    /// Opens the test split of the dataset in folder `path` (see `open_split`).
    pub fn open(
        path: &Path,
        preprocess: &Preprocess,
        item_shape: &[usize],
    ) -> Result<Dataset, DataError> {
        Self::open_split(path, "test", preprocess, item_shape)
    }

    /// Opens a dataset folder, detecting its layout:
    /// 1. IDX files `{prefix}-images-idx3-ubyte[.gz]` + `{prefix}-labels-idx1-ubyte[.gz]`,
    ///    with prefix `t10k` for split "test"/"t10k", `train` then `train10k` for
    ///    "train", or the split name itself otherwise;
    /// 2. images beside a `labels.csv` (`file,wnid,class_index`, one header line);
    /// 3. ImageFolder: one sub-folder per class, class index = sorted folder order,
    ///    `.jpg/.jpeg/.png` files in name order.
    ///
    /// Layouts 2 and 3 have no splits; `split` is ignored for them.
    /// `item_shape` is the model input without the batch axis; it must agree with
    /// the preprocessing's output.
    pub fn open_split(
        path: &Path,
        split: &str,
        preprocess: &Preprocess,
        item_shape: &[usize],
    ) -> Result<Dataset, DataError> {
        let (c, h, w) = super::preprocess::image_dims(item_shape)?;
        preprocess.check(c)?;
        if (preprocess.height, preprocess.width) != (h, w) {
            return Err(DataError::ImageSize {
                found: (preprocess.width, preprocess.height),
                expected: (w, h),
            });
        }
        let prefixes: Vec<&str> = match split {
            "test" | "t10k" => vec!["t10k"],
            "train" => vec!["train", "train10k"],
            other => vec![other],
        };
        for prefix in prefixes {
            let names = |kind: &str| {
                vec![
                    format!("{prefix}-{kind}-ubyte.gz"),
                    format!("{prefix}-{kind}-ubyte"),
                    format!("{prefix}-{}-ubyte", kind.replace("-idx", ".idx")),
                ]
            };
            if let Some(img) = first_existing(path, &names("images-idx3")) {
                let lab = first_existing(path, &names("labels-idx1")).ok_or_else(|| {
                    DataError::Layout {
                        path: path.display().to_string(),
                        reason: format!("{} has no matching labels file", img.display()),
                    }
                })?;
                return Self::from_idx(&img, &lab, preprocess, item_shape);
            }
        }
        let csv = path.join("labels.csv");
        if csv.is_file() {
            return Self::from_csv(path, &csv, preprocess, item_shape);
        }
        Self::from_image_folder(path, preprocess, item_shape)
    }

    /// A dataset from an IDX image file and its label file.
    pub fn from_idx(
        images: &Path,
        labels: &Path,
        preprocess: &Preprocess,
        item_shape: &[usize],
    ) -> Result<Dataset, DataError> {
        if item_shape.iter().product::<usize>() != preprocess.item_len() {
            return Err(DataError::ItemShape(item_shape.to_vec()));
        }
        let (pixels, n, rows, cols) = idx::read_idx_images(images)?;
        let labels_v = idx::read_idx_labels(labels)?;
        if labels_v.len() != n {
            return Err(DataError::Idx {
                path: labels.display().to_string(),
                reason: format!("{} labels for {n} images", labels_v.len()),
            });
        }
        if (rows, cols) != (preprocess.height as usize, preprocess.width as usize) {
            return Err(DataError::ImageSize {
                found: (cols as u32, rows as u32),
                expected: (preprocess.width, preprocess.height),
            });
        }
        if preprocess.channels() != 1 {
            return Err(DataError::Metadata {
                key: "preprocess.color_order".into(),
                value: format!("{:?}", preprocess.color_order),
                reason: "IDX images are gray-scale; the model needs one input channel".into(),
            });
        }
        Ok(Dataset::Idx {
            pixels,
            labels: labels_v,
            rows,
            cols,
            preprocess: preprocess.clone(),
            item_shape: item_shape.to_vec(),
        })
    }

    fn from_csv(
        dir: &Path,
        csv: &Path,
        preprocess: &Preprocess,
        item_shape: &[usize],
    ) -> Result<Dataset, DataError> {
        let text = std::fs::read_to_string(csv).map_err(io_err(csv))?;
        let mut items = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| DataError::Csv {
                path: csv.display().to_string(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != 3 {
                return Err(err(format!(
                    "{} fields, expected 3 (file,wnid,class_index)",
                    fields.len()
                )));
            }
            let class: usize = fields[2]
                .trim()
                .parse()
                .map_err(|_| err(format!("class_index '{}' is not a number", fields[2])))?;
            let file = fields[0].trim();
            if file.is_empty() || file.contains("..") || Path::new(file).is_absolute() {
                return Err(err(format!(
                    "file '{file}' is not a plain name in the folder"
                )));
            }
            items.push((dir.join(file), class));
        }
        if items.is_empty() {
            return Err(DataError::Layout {
                path: csv.display().to_string(),
                reason: "labels.csv lists no images".into(),
            });
        }
        Ok(Dataset::Images {
            items,
            preprocess: preprocess.clone(),
            item_shape: item_shape.to_vec(),
        })
    }

    fn from_image_folder(
        dir: &Path,
        preprocess: &Preprocess,
        item_shape: &[usize],
    ) -> Result<Dataset, DataError> {
        let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        classes.sort();
        let mut items = Vec::new();
        for (class, sub) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(sub)
                .map_err(io_err(sub))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|f| (f, class)));
        }
        if items.is_empty() {
            return Err(DataError::Layout {
                path: dir.display().to_string(),
                reason: "no IDX files (t10k-images-idx3-ubyte[.gz], ...), no labels.csv, \
                         and no class sub-folders with .jpg/.jpeg/.png images"
                    .into(),
            });
        }
        Ok(Dataset::Images {
            items,
            preprocess: preprocess.clone(),
            item_shape: item_shape.to_vec(),
        })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            Dataset::Idx { labels, .. } => labels.len(),
            Dataset::Images { items, .. } => items.len(),
        }
    }

    /// True when the dataset has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The preprocessing applied to items.
    pub fn preprocess(&self) -> &Preprocess {
        match self {
            Dataset::Idx { preprocess, .. } | Dataset::Images { preprocess, .. } => preprocess,
        }
    }

    /// Model input shape without the batch axis.
    pub fn item_shape(&self) -> &[usize] {
        match self {
            Dataset::Idx { item_shape, .. } | Dataset::Images { item_shape, .. } => item_shape,
        }
    }

    /// Items `start .. start + n` (clipped to the end) as an NCHW f32 batch
    /// `[n, C, H, W]` plus their labels. Images are decoded in parallel.
    pub fn batch(&self, start: usize, n: usize) -> Result<(Tensor, Vec<usize>), DataError> {
        let len = self.len();
        if start >= len {
            return Err(DataError::Range { start, len });
        }
        let n = n.min(len - start);
        let pre = self.preprocess();
        let item = pre.item_len();
        let mut out = vec![0f32; n * item];
        let labels = match self {
            Dataset::Idx {
                pixels,
                labels,
                rows,
                cols,
                ..
            } => {
                let px = rows * cols;
                out.par_chunks_mut(item)
                    .enumerate()
                    .try_for_each(|(i, o)| {
                        let k = start + i;
                        pre.apply_gray_u8(&pixels[k * px..(k + 1) * px], o)
                    })?;
                labels[start..start + n]
                    .iter()
                    .map(|&l| l as usize)
                    .collect()
            }
            Dataset::Images { items, .. } => {
                let slice = &items[start..start + n];
                out.par_chunks_mut(item)
                    .zip(slice.par_iter())
                    .try_for_each(|(o, (path, _))| {
                        let wrap = |e: DataError| DataError::Item {
                            path: path.display().to_string(),
                            source: Box::new(e),
                        };
                        let img = load_image(path)?;
                        pre.apply(&img, o).map_err(wrap)
                    })?;
                slice.iter().map(|(_, c)| *c).collect()
            }
        };
        let mut shape = vec![n];
        shape.extend(self.item_shape());
        let t = Tensor::new(shape, out)
            .ok_or_else(|| DataError::ItemShape(self.item_shape().to_vec()))?;
        Ok((t, labels))
    }
}
