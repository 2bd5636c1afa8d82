//! CPU backends: `fast` (rayon, bit tricks, LUT).

pub mod fast;
