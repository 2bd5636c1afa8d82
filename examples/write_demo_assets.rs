//! Writes the demo's test images: the first N Fashion-MNIST t10k images as 28x28
//! grayscale PNGs named `NNN_<class>.png`, into assets/fashion/.
//!
//! cargo run --release --example write_demo_assets -- /usr/share/datasets/fashion-mnist assets/fashion 24

use std::path::PathBuf;

/// Fashion-MNIST's class names, by label.
const CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let src = PathBuf::from(
        args.get(1)
            .map_or("/usr/share/datasets/fashion-mnist", |s| s.as_str()),
    );
    let dst = PathBuf::from(args.get(2).map_or("assets/fashion", |s| s.as_str()));
    let count: usize = args.get(3).map_or(Ok(24), |s| s.parse())?;
    let (pixels, n, rows, cols) =
        cnnpack::data::read_idx_images(&src.join("t10k-images-idx3-ubyte.gz"))?;
    let labels = cnnpack::data::read_idx_labels(&src.join("t10k-labels-idx1-ubyte.gz"))?;
    std::fs::create_dir_all(&dst)?;
    for i in 0..count.min(n) {
        let img = image::GrayImage::from_raw(
            cols as u32,
            rows as u32,
            pixels[i * rows * cols..(i + 1) * rows * cols].to_vec(),
        )
        .ok_or("image size mismatch")?;
        let path = dst.join(format!("{i:03}_{}.png", CLASSES[labels[i] as usize]));
        img.save(&path)?;
        println!("{}", path.display());
    }
    Ok(())
}
