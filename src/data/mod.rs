//! Input data: image preprocessing, IDX (MNIST) files, and labelled datasets.

pub mod augment;
pub mod dataset;
pub mod idx;
pub mod preprocess;

pub use augment::{Augment, AugmentError};
pub use dataset::Dataset;
pub use idx::{read_idx_images, read_idx_labels};
pub use preprocess::{load_image, ColorOrder, Preprocess};

/// Errors reading data or preprocessing it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An image that does not decode.
    #[error("{path}: cannot decode image: {reason}")]
    Image {
        /// The file.
        path: String,
        /// The decoder's message.
        reason: String,
    },
    /// An image larger than the pixel limit.
    #[error("{path}: image is {width}x{height}, more than {limit} pixels")]
    TooManyPixels {
        /// The file.
        path: String,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The limit.
        limit: u64,
    },
    /// An image whose size does not fit the model input (after resize/crop).
    #[error("image is {}x{} (w x h), expected {}x{}; set resize/crop to adapt it", found.0, found.1, expected.0, expected.1)]
    ImageSize {
        /// Width and height found.
        found: (u32, u32),
        /// Width and height needed.
        expected: (u32, u32),
    },
    /// An output buffer of the wrong size.
    #[error("item buffer holds {found} values, expected {expected}")]
    ItemLen {
        /// Length given.
        found: usize,
        /// Length needed.
        expected: usize,
    },
    /// An item shape that is not `[C, H, W]` or `[H*W]`.
    #[error("model input shape {0:?} is not an image shape ([C,H,W] or [K] with K a square)")]
    ItemShape(Vec<usize>),
    /// A bad preprocessing setting.
    #[error("{key} = '{value}': {reason}")]
    Metadata {
        /// The metadata key (or setting).
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A malformed IDX file.
    #[error("{path}: IDX: {reason}")]
    Idx {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A malformed labels.csv.
    #[error("{path}:{line}: {reason}")]
    Csv {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A folder that holds no recognised dataset layout.
    #[error("{path}: {reason}")]
    Layout {
        /// The folder.
        path: String,
        /// What was looked for.
        reason: String,
    },
    /// A batch range outside the dataset.
    #[error("batch starting at {start} is outside the dataset of {len} items")]
    Range {
        /// First item asked for.
        start: usize,
        /// Dataset size.
        len: usize,
    },
    /// An item failed (wraps the cause with the item's file).
    #[error("{path}: {source}")]
    Item {
        /// The item's file.
        path: String,
        /// The error.
        #[source]
        source: Box<DataError>,
    },
}
