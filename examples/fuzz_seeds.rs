//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`) from tiny
//! project-made models and data files, so `cargo fuzz run` starts from valid inputs
//! that reach deep into each parser.
//!
//! Run: `cargo run --example fuzz_seeds [-- OUT_DIR]` (default `fuzz/corpus`).

use cnnpack::compress::{dns, inq, sketch};
use cnnpack::graph::{Graph, GraphBuilder};
use std::io::Write;
use std::path::{Path, PathBuf};

/// conv-relu-maxpool-flatten-linear-softmax on a 1x6x6 input (a few hundred bytes).
fn tiny_chain(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("x", &[1, 6, 6], seed);
    let x = b.input();
    let c = b.conv(&x, 2, 3, 1, 1, 1);
    let r = b.relu(&c);
    let p = b.max_pool(&r, 2, 2, 0);
    let f = b.flatten(&p);
    let l = b.linear(&f, 3);
    let s = b.softmax(&l);
    b.finish(&[&s]).expect("the tiny chain is valid")
}

/// Two branches (conv+bn+relu, avg pool) concatenated, a residual add and a global pool.
fn tiny_branches(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("x", &[2, 5, 5], seed);
    let x = b.input();
    let c = b.conv(&x, 2, 3, 1, 1, 2);
    let n = b.batch_norm(&c);
    let r = b.relu(&n);
    let a = b.avg_pool(&x, 3, 1, 1);
    let cat = b.concat(&[&r, &a]);
    let c2 = b.conv(&cat, 4, 1, 1, 0, 1);
    let sum = b.add(&c2, &cat);
    let l = b.lrn(&sum, 3);
    let g = b.global_avg_pool(&l);
    let f = b.flatten(&g);
    let o = b.linear(&f, 2);
    b.finish(&[&o]).expect("the branchy graph is valid")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("the corpus folder is writable");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("writing to memory");
    e.finish().expect("writing to memory")
}

fn idx(dims: &[u32], fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    let n: u32 = dims.iter().product();
    out.extend((0..n as usize).map(fill));
    out
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus"));
    let dirs = ["onnx_import", "cnnpack_load", "idx_read"].map(|t| root.join(t));
    for d in &dirs {
        std::fs::create_dir_all(d).expect("the corpus folder is writable");
    }
    let [onnx_dir, pack_dir, idx_dir] = &dirs;

    // The ONNX pattern graphs of the importer tests: the modern ops (broadcasting
    // binaries, shape subgraphs, Transpose, LayerNorm, ...) for the fuzzer to mutate, as
    // ONNX and as imported .cnnpack.
    let patterns = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx_patterns");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&patterns)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
    {
        let bytes = std::fs::read(path).expect("the pattern files are readable");
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("pattern");
        write(onnx_dir, &format!("pattern-{stem}.onnx"), &bytes);
        if let Ok(g) = cnnpack::import::parse_onnx(&bytes) {
            let packed = cnnpack::format::to_bytes(&g).expect("imported patterns serialize");
            write(pack_dir, &format!("pattern-{stem}.cnnpack"), &packed);
        }
    }

    let models = [("chain", tiny_chain(1)), ("branches", tiny_branches(2))];
    for (name, g) in &models {
        let onnx = cnnpack::import::export_onnx(g).expect("tiny models export");
        write(onnx_dir, &format!("{name}.onnx"), &onnx);
        write(
            pack_dir,
            &format!("{name}-dense.cnnpack"),
            &cnnpack::format::to_bytes(g).expect("tiny models serialize"),
        );
        let (sk, _) = sketch::sketch_graph(
            g,
            &sketch::SketchOptions {
                bases: 2,
                ..Default::default()
            },
        )
        .expect("tiny models sketch");
        write(
            pack_dir,
            &format!("{name}-sketch.cnnpack"),
            &cnnpack::format::to_bytes(&sk).expect("sketched models serialize"),
        );
        let (q, _) = inq::inq_graph(
            g,
            &inq::InqOptions {
                bits: 4,
                ..Default::default()
            },
            None,
            &mut |_| {},
        )
        .expect("tiny models quantize");
        write(
            pack_dir,
            &format!("{name}-inq.cnnpack"),
            &cnnpack::format::to_bytes(&q).expect("quantized models serialize"),
        );
        // CSR with f32 values (from the dense model) and with power-of-two value codes
        // (from the quantized one: `sparse+pow2`).
        let (sp, _) =
            dns::sparsify_graph(g, &dns::SparsePolicy::All).expect("dense models sparsify");
        write(
            pack_dir,
            &format!("{name}-sparse.cnnpack"),
            &cnnpack::format::to_bytes(&sp).expect("sparse models serialize"),
        );
        let (spq, _) =
            dns::sparsify_graph(&q, &dns::SparsePolicy::All).expect("pow2 models sparsify");
        write(
            pack_dir,
            &format!("{name}-sparse-pow2.cnnpack"),
            &cnnpack::format::to_bytes(&spq).expect("sparse+pow2 models serialize"),
        );
    }

    let images = idx(&[3, 4, 5], |i| (i * 37 % 256) as u8);
    let labels = idx(&[3], |i| i as u8);
    write(idx_dir, "images.idx3", &images);
    write(idx_dir, "labels.idx1", &labels);
    write(idx_dir, "images.idx3.gz", &gzip(&images));
    write(idx_dir, "labels.idx1.gz", &gzip(&labels));
    println!("seeds written under {}", root.display());
}
