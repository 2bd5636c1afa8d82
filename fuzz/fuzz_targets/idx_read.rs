//! Fuzzes the IDX reader (raw and gzip) through a file, as datasets are read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("cnnpack-fuzz-idx-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("the temp dir is writable");
    f.write_all(data).expect("the temp dir is writable");
    drop(f);
    let _ = cnnpack::data::read_idx_images(&path);
    let _ = cnnpack::data::read_idx_labels(&path);
});
