//! Tests of the .cnnpack format, .npy I/O, data loading/preprocessing and the model zoo.

mod common;

use cnnpack::data::{read_idx_images, read_idx_labels, ColorOrder, Dataset, Preprocess};
use cnnpack::format::cnnpack::{self as pack, FormatError, RawTensor};
use cnnpack::format::{read_npy, write_npy, NpyError};
use cnnpack::graph::{BinaryKind, Graph, GraphBuilder, Op, Rng, Tensor};
use cnnpack::zoo;
use common::data_dir;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fresh empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnpack-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

// ---------------------------------------------------------------- zoo

/// Parameter count as torchvision's `sum(p.numel() for p in model.parameters())`:
/// weights, biases and BN gamma/beta; BN running mean/var are buffers, not parameters.
fn torchvision_params(g: &Graph) -> usize {
    g.parameters()
        - g.nodes
            .iter()
            .map(|n| match &n.op {
                Op::BatchNorm { mean, var, .. } => mean.len() + var.len(),
                _ => 0,
            })
            .sum::<usize>()
}

fn check_zoo(name: &str, params: usize, classes: usize) {
    let g = zoo::build(name, 1).expect("zoo model builds");
    g.validate().expect("zoo model validates");
    assert_eq!(torchvision_params(&g), params, "{name} parameter count");
    for batch in [1, 3] {
        let shapes = g.infer_shapes(batch).expect("shapes");
        assert_eq!(shapes[&g.outputs[0]], vec![batch, classes], "{name} output");
    }
    // Every model declares its preprocessing, and it fits its input.
    Preprocess::from_metadata(&g.metadata, &g.input.item_shape).expect("zoo preprocessing");
}

#[test]
fn zoo_small_models() {
    check_zoo("lenet5", 431_080, 10);
    check_zoo("lenet300100", 266_610, 10);
    let g = zoo::build("lenet5", 0).expect("lenet5");
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    for layer in ["conv1", "conv2", "ip1", "ip2"] {
        assert!(names.contains(&layer), "lenet5 has node {layer}");
    }
    // No activation directly after the convolutions (Caffe LeNet-5).
    for n in &g.nodes {
        if n.inputs.iter().any(|i| i == "conv1" || i == "conv2") {
            assert!(matches!(n.op, Op::MaxPool(_)), "conv output goes to a pool");
        }
    }
}

#[test]
fn zoo_squeezenets_and_resnets() {
    check_zoo("squeezenet1.0", 1_248_424, 1000);
    check_zoo("squeezenet1.1", 1_235_496, 1000);
    check_zoo("resnet18", 11_689_512, 1000);
    check_zoo("resnet50", 25_557_032, 1000);
}

#[test]
fn zoo_alexnet_vgg() {
    check_zoo("alexnet", 61_100_840, 1000);
    check_zoo("vgg16", 138_357_544, 1000);
}

#[test]
fn zoo_seeded_and_named() {
    let a = zoo::build("resnet18", 42).expect("resnet18");
    let b = zoo::build("resnet18", 42).expect("resnet18");
    let c = zoo::build("resnet18", 43).expect("resnet18");
    assert_eq!(a, b, "same seed, same graph");
    assert_ne!(a, c, "different seed, different weights");
    assert!(zoo::build("resnet1000", 0).is_err());
    for n in zoo::names() {
        if !matches!(*n, "vgg16" | "alexnet" | "resnet50") {
            zoo::build(n, 0).expect("every listed name builds");
        }
    }
    assert_eq!(
        zoo::build("squeezenet1_1", 3).expect("alias"),
        zoo::build("squeezenet1.1", 3).expect("name")
    );
}

// ---------------------------------------------------------------- .cnnpack

/// Gives BN statistics and biases non-trivial values so a round trip is meaningful.
fn randomize_constants(g: &mut Graph, seed: u64) {
    let mut rng = Rng::new(seed);
    for n in &mut g.nodes {
        for (role, t) in n.op.constants_mut() {
            for v in &mut t.data {
                *v = rng.normal();
                if role == "var" {
                    *v = v.abs() + 0.1;
                }
            }
        }
    }
}

/// A small graph with every kind of constant: conv bias, BN, ConstBinary, no-bias conv.
fn const_graph() -> Graph {
    let mut b = GraphBuilder::new("x", &[3, 9, 7], 5);
    b.metadata("preprocess.mean", "1,2,3");
    let x = b.input();
    let y = b.conv(&x, 4, 3, 2, 1, 1);
    let y = b.batch_norm(&y);
    let k = Tensor::new(vec![4, 1, 1], vec![0.5, -1.0, 2.0, -0.0]).expect("shape");
    let y = b.push(
        "scale_c",
        Op::ConstBinary {
            kind: BinaryKind::Mul,
            constant: k,
            constant_first: false,
        },
        &[&y],
    );
    let z = b.conv_no_bias(&y, 6, 1, 1, 0);
    let z = b.flatten(&z);
    let z = b.linear(&z, 5);
    let mut g = b.finish(&[&z]).expect("graph");
    randomize_constants(&mut g, 9);
    g
}

fn assert_bit_identical(a: &Graph, b: &Graph) {
    assert_eq!(a, b);
    for (x, y) in a.nodes.iter().zip(&b.nodes) {
        if let (Some(wx), Some(wy)) = (x.op.weights(), y.op.weights()) {
            let (dx, dy) = (wx.to_dense(), wy.to_dense());
            assert!(dx
                .data
                .iter()
                .zip(&dy.data)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
        }
        for ((_, tx), (_, ty)) in x.op.constants().iter().zip(y.op.constants()) {
            assert!(tx
                .data
                .iter()
                .zip(&ty.data)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}

#[test]
fn cnnpack_round_trip() {
    let dir = temp_dir("roundtrip");
    let mut graphs = vec![const_graph()];
    for name in ["lenet5", "lenet300100", "resnet18", "squeezenet1.0"] {
        let mut g = zoo::build(name, 7).expect("zoo");
        randomize_constants(&mut g, 3);
        graphs.push(g);
    }
    for (i, g) in graphs.iter().enumerate() {
        let path = dir.join(format!("m{i}.cnnpack"));
        pack::save(g, &path).expect("save");
        let back = pack::load(&path).expect("load");
        assert_bit_identical(g, &back);
        // Via the extension dispatcher too.
        let back2 = cnnpack::format::load_model(&path).expect("load_model");
        assert_eq!(g, &back2);
        // Saving again gives a file that loads to the same graph.
        let again = pack::from_bytes(&pack::to_bytes(&back).expect("bytes")).expect("reload");
        assert_eq!(g, &again);
    }
    // No temporary files are left behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cnnpack_interrupted_save_keeps_old_file() {
    let dir = temp_dir("atomic");
    let path = dir.join("model.cnnpack");
    let old = const_graph();
    let new = zoo::build("lenet5", 1).expect("lenet5");
    pack::save(&old, &path).expect("save old");

    // A crash between writing the temp file and the rename: at that moment the old
    // file is still complete and the new one sits, complete, beside it.
    let mut seen_tmp = None;
    let r = pack::save_with_hook(&new, &path, |tmp| {
        assert_eq!(pack::load(&path).expect("old file readable mid-save"), old);
        assert_eq!(pack::load(tmp).expect("temp file complete"), new);
        seen_tmp = Some(tmp.to_path_buf());
        Err(std::io::Error::other("simulated crash before rename"))
    });
    assert!(matches!(r, Err(FormatError::Io { .. })), "{r:?}");
    assert_eq!(pack::load(&path).expect("old file intact"), old);
    assert!(
        !seen_tmp.expect("hook ran").exists(),
        "failed save removes its temp file"
    );

    // A killed process leaves a half-written temp file: it does not disturb loading,
    // and the next save still succeeds.
    std::fs::write(dir.join(".model.cnnpack.tmp-99999-0"), b"half a file").expect("write");
    assert_eq!(pack::load(&path).expect("old file intact"), old);
    pack::save(&new, &path).expect("save new");
    assert_eq!(pack::load(&path).expect("new file"), new);

    // A graph that fails its own checks is refused before anything is written.
    let mut bad = new.clone();
    if let Op::Conv(c) = &mut bad.nodes[0].op {
        c.bias = Some(Tensor::zeros(vec![3]));
        c.bias.as_mut().expect("bias").data.push(1.0);
    }
    assert!(pack::save(&bad, &path).is_err());
    assert_eq!(pack::load(&path).expect("file intact"), new);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rebuilds a file from its metadata and tensors after `edit` (with a valid checksum).
fn reassemble(bytes: &[u8], edit: impl FnOnce(&mut String, &mut Vec<RawTensor<'_>>)) -> Vec<u8> {
    let (meta, mut tensors) = pack::disassemble(bytes).expect("valid file");
    let mut json = meta["graph"].clone();
    edit(&mut json, &mut tensors);
    pack::assemble(&json, &tensors).expect("assemble")
}

#[test]
fn cnnpack_malformed_files_are_errors() {
    let g = const_graph();
    let bytes = pack::to_bytes(&g).expect("bytes");
    assert_eq!(pack::from_bytes(&bytes).expect("valid"), g);
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize + 8;

    // Truncated anywhere.
    for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        assert!(
            pack::from_bytes(&bytes[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    // A flipped data byte is caught by the checksum.
    for pos in (header_len..bytes.len()).step_by(13) {
        let mut b = bytes.clone();
        b[pos] ^= 0x01;
        let r = pack::from_bytes(&b);
        assert!(
            matches!(r, Err(FormatError::Checksum { .. })),
            "flip at {pos}: {r:?}"
        );
    }
    // A flipped header byte is an error of some kind, never a panic.
    for pos in (0..header_len).step_by(3) {
        let mut b = bytes.clone();
        b[pos] ^= 0xFF;
        assert!(pack::from_bytes(&b).is_err(), "header flip at {pos}");
    }
    // Wrong dtype (same byte size, valid checksum).
    let b = reassemble(&bytes, |_, ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.name.ends_with(".weight"))
            .expect("weight");
        t.dtype = safetensors::Dtype::I32;
    });
    let r = pack::from_bytes(&b);
    assert!(matches!(r, Err(FormatError::Dtype { .. })), "{r:?}");
    // Wrong length of a weight part.
    let b = reassemble(&bytes, |_, ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.name.ends_with(".weight"))
            .expect("weight");
        let n = t.data.len() - 4;
        t.data = t.data[..n].to_vec().into();
        t.shape = vec![n / 4];
    });
    let r = pack::from_bytes(&b);
    assert!(matches!(r, Err(FormatError::Encoding { .. })), "{r:?}");
    // Wrong length of a constant.
    let b = reassemble(&bytes, |_, ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.name.ends_with(".var"))
            .expect("var");
        t.data = t.data[..4].to_vec().into();
        t.shape = vec![1];
    });
    let r = pack::from_bytes(&b);
    assert!(matches!(r, Err(FormatError::Length { .. })), "{r:?}");
    // Missing and unexpected tensors.
    let b = reassemble(&bytes, |_, ts| {
        ts.retain(|t| !t.name.ends_with(".bias"));
    });
    assert!(matches!(
        pack::from_bytes(&b),
        Err(FormatError::MissingTensor(_))
    ));
    let b = reassemble(&bytes, |_, ts| {
        let mut extra = ts[0].clone();
        extra.name = "ghost.weight".into();
        ts.push(extra);
    });
    assert!(matches!(
        pack::from_bytes(&b),
        Err(FormatError::UnexpectedTensor(_))
    ));
    // Bad JSON, and absurd shapes in valid JSON.
    let b = reassemble(&bytes, |json, _| *json = "{not json".into());
    assert!(matches!(
        pack::from_bytes(&b),
        Err(FormatError::GraphJson(_))
    ));
    let b = reassemble(&bytes, |json, _| {
        *json = json.replacen(
            "\"shape\":[4,3,3,3]",
            "\"shape\":[1099511627776,1099511627776,1,1]",
            1,
        );
    });
    let r = pack::from_bytes(&b);
    assert!(matches!(r, Err(FormatError::Oversized { .. })), "{r:?}");
    // A structurally broken graph (dangling input).
    let b = reassemble(&bytes, |json, _| {
        *json = json.replacen("\"inputs\":[\"x\"]", "\"inputs\":[\"nowhere\"]", 1);
    });
    let r = pack::from_bytes(&b);
    assert!(matches!(r, Err(FormatError::Graph(_))), "{r:?}");
    // Plain safetensors without the cnnpack metadata, and a wrong version.
    let plain = safetensors::serialize(Vec::<(String, &RawTensor<'_>)>::new(), None).expect("st");
    assert!(matches!(
        pack::from_bytes(&plain),
        Err(FormatError::Metadata { key: "format", .. })
    ));
    let (meta, tensors) = pack::disassemble(&bytes).expect("valid");
    let mut m: std::collections::HashMap<String, String> = meta.clone();
    m.insert("version".into(), "3".into());
    let v2 =
        safetensors::serialize(tensors.iter().map(|t| (t.name.clone(), t)), Some(m)).expect("st");
    assert!(matches!(
        pack::from_bytes(&v2),
        Err(FormatError::Metadata { key: "version", .. })
    ));
    // Unknown extensions and the ONNX placeholder.
    assert!(cnnpack::format::load_model(Path::new("model.bin")).is_err());
}

// ---------------------------------------------------------------- .npy

fn npy_bytes(header: &str, major: u8, data_len: usize) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.push(major);
    out.push(0);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

#[test]
fn npy_round_trip_and_versions() {
    let dir = temp_dir("npy");
    let mut rng = Rng::new(11);
    for shape in [vec![], vec![1], vec![7], vec![2, 3], vec![3, 1, 5, 2]] {
        let n = shape.iter().product();
        let t = Tensor::new(shape.clone(), (0..n).map(|_| rng.normal()).collect()).expect("t");
        let p = dir.join("t.npy");
        write_npy(&p, &t).expect("write");
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!((bytes.len() - n * 4) % 64, 0, "header padded to 64");
        let back = read_npy(&p).expect("read back");
        assert_eq!(back, t);
    }
    // Version 2.0 and 3.0 headers, keys in another order, double quotes.
    for major in [2u8, 3] {
        let h = "{\"shape\": (2, 2), 'fortran_order': False, 'descr': '<f4'}\n";
        let mut b = npy_bytes(h, major, 0);
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let p = dir.join("v.npy");
        std::fs::write(&p, &b).expect("write");
        let t = read_npy(&p).expect("v2/v3");
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn npy_malformed() {
    let dir = temp_dir("npybad");
    let p = dir.join("bad.npy");
    let read = |b: &[u8]| {
        std::fs::write(&p, b).expect("write");
        read_npy(&p)
    };
    for dtype in ["<f8", "|u1", ">f4", "<i4"] {
        let h = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': (2,), }}\n");
        match read(&npy_bytes(&h, 1, 16)) {
            Err(NpyError::Dtype { found, .. }) => assert_eq!(found, dtype),
            other => panic!("{dtype}: {other:?}"),
        }
    }
    let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n";
    assert!(matches!(
        read(&npy_bytes(h, 1, 24)),
        Err(NpyError::FortranOrder { .. })
    ));
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }\n";
    assert!(matches!(
        read(&npy_bytes(h, 1, 8)),
        Err(NpyError::TooLarge { .. })
    ));
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }\n";
    assert!(matches!(
        read(&npy_bytes(h, 1, 8)),
        Err(NpyError::Header { .. })
    ));
    for garbage in [
        "not a dict\n",
        "{'descr': '<f4'\n",
        "{'descr': '<f4', 'fortran_order': False}\n",
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (1,)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,,)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}\n",
        "{'descr: '<f4', 'fortran_order': False, 'shape': (1,)}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}\n",
    ] {
        assert!(
            matches!(
                read(&npy_bytes(garbage, 1, 4)),
                Err(NpyError::Header { .. })
            ),
            "{garbage}"
        );
    }
    assert!(
        read(b"\x93NUMPY\x09\x00\x10\x00").is_err(),
        "unknown version"
    );
    assert!(read(b"PK\x03\x04 not npy at all").is_err(), "bad magic");
    // A header length pointing past the end of the file.
    let mut b = npy_bytes("{}", 1, 0);
    b[8] = 0xFF;
    b[9] = 0xFF;
    assert!(matches!(read(&b), Err(NpyError::Header { .. })));

    // Truncated at every offset: error, and for data cuts the expected vs found bytes.
    let t = Tensor::new(vec![3, 5], (0..15).map(|i| i as f32).collect()).expect("t");
    let good = dir.join("good.npy");
    write_npy(&good, &t).expect("write");
    let bytes = std::fs::read(&good).expect("read");
    let data_start = bytes.len() - 60;
    for cut in 0..bytes.len() {
        match read(&bytes[..cut]) {
            Err(NpyError::Length {
                expected, found, ..
            }) => {
                assert!(cut >= data_start);
                assert_eq!((expected, found), (60, (cut - data_start) as u64));
            }
            Err(_) => assert!(cut < data_start, "cut {cut}"),
            Ok(_) => panic!("truncated at {cut} read fine"),
        }
    }
    // Trailing bytes are an error too.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 4]);
    assert!(matches!(read(&long), Err(NpyError::Length { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn npy_golden_files_and_mnist() {
    let Some(data) = data_dir() else {
        return;
    };
    for (rel, shape) in [
        (
            "imagenet/squeezenet1.0/golden/input.npy",
            vec![4, 3, 227, 227],
        ),
        ("imagenet/squeezenet1.0/golden/output.npy", vec![4, 1000]),
        ("lenet/golden/input.npy", vec![16, 1, 28, 28]),
        ("lenet/golden/output.npy", vec![16, 10]),
        ("cifar/golden/input.npy", vec![8, 3, 32, 32]),
        ("cifar/golden/output.npy", vec![8, 10]),
    ] {
        let t = read_npy(&data.join(rel)).expect(rel);
        assert_eq!(t.shape, shape, "{rel}");
        assert!(t.data.iter().all(|v| v.is_finite()), "{rel}");
    }
    // Softmax outputs sum to 1 per row.
    let out = read_npy(&data.join("lenet/golden/output.npy")).expect("out");
    for row in out.data.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    // IDX: MNIST t10k, and the lenet golden input = t10k images 0..15 x 1/256.
    let (px, n, rows, cols) =
        read_idx_images(&data.join("mnist/t10k-images-idx3-ubyte.gz")).expect("images");
    assert_eq!((n, rows, cols, px.len()), (10_000, 28, 28, 10_000 * 784));
    let labels = read_idx_labels(&data.join("mnist/t10k-labels-idx1-ubyte.gz")).expect("labels");
    assert_eq!(labels.len(), 10_000);
    let mut counts = [0usize; 10];
    for &l in &labels {
        assert!(l < 10);
        counts[l as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    assert_eq!(labels[..3], [7, 2, 1], "well-known first t10k labels");

    let lenet = zoo::build("lenet5", 0).expect("lenet5");
    let pre = Preprocess::from_metadata(&lenet.metadata, &lenet.input.item_shape).expect("pre");
    assert_eq!(pre.color_order, ColorOrder::Gray);
    assert_eq!(pre.scale, 0.00390625);
    let ds = Dataset::open(&data.join("mnist"), &pre, &[1, 28, 28]).expect("mnist");
    assert_eq!(ds.len(), 10_000);
    let (batch, lab) = ds.batch(0, 16).expect("batch");
    let golden = read_npy(&data.join("lenet/golden/input.npy")).expect("golden");
    assert_eq!(
        batch, golden,
        "MNIST batch equals the golden LeNet input exactly"
    );
    assert_eq!(lab[..3], [7, 2, 1]);
    // The last partial batch is clipped; past the end is an error.
    let (tail, tl) = ds.batch(9_990, 64).expect("tail");
    assert_eq!((tail.shape.clone(), tl.len()), (vec![10, 1, 28, 28], 10));
    assert!(ds.batch(10_000, 1).is_err());
    // The MLP input shape [784] works on the same files; the train split opens train10k.
    let mlp = zoo::build("lenet300100", 0).expect("mlp");
    let pre = Preprocess::from_metadata(&mlp.metadata, &mlp.input.item_shape).expect("pre");
    let train = Dataset::open_split(&data.join("mnist"), "train", &pre, &[784]).expect("train");
    assert_eq!(train.len(), 10_000);
    let (b, l) = train.batch(0, 2).expect("batch");
    assert_eq!(b.shape, vec![2, 784]);
    assert_eq!(l[0], 5, "first MNIST training image is a 5");
}

#[test]
fn idx_malformed() {
    let dir = temp_dir("idx");
    let p = dir.join("x-images-idx3-ubyte");
    let mut good = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    good.extend(0..12u8);
    std::fs::write(&p, &good).expect("write");
    let (px, n, r, c) = read_idx_images(&p).expect("raw idx");
    assert_eq!((px.len(), n, r, c), (12, 2, 2, 3));
    for cut in 0..good.len() {
        std::fs::write(&p, &good[..cut]).expect("write");
        assert!(read_idx_images(&p).is_err(), "cut {cut}");
    }
    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&[0xFF; 4]);
    huge[8..12].copy_from_slice(&[0xFF; 4]);
    std::fs::write(&p, &huge).expect("write");
    assert!(read_idx_images(&p).is_err());
    let mut wrong_type = good.clone();
    wrong_type[2] = 0x0D;
    std::fs::write(&p, &wrong_type).expect("write");
    assert!(read_idx_images(&p).is_err());
    std::fs::write(&p, &good).expect("write");
    assert!(
        read_idx_labels(&p).is_err(),
        "an image file is not a label file"
    );
    // Gzip: a valid file, one truncated in the data, and one whose header claims 4 GiB.
    let gz = |bytes: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    };
    let pg = dir.join("x-images-idx3-ubyte.gz");
    std::fs::write(&pg, gz(&good)).expect("write");
    assert_eq!(
        read_idx_images(&pg).expect("gz idx").0,
        (0..12u8).collect::<Vec<_>>()
    );
    std::fs::write(&pg, gz(&good[..good.len() - 1])).expect("write");
    assert!(read_idx_images(&pg).is_err(), "short gz data");
    std::fs::write(&pg, gz(&huge)).expect("write");
    assert!(read_idx_images(&pg).is_err(), "huge gz dims");
    std::fs::write(&p, [0x1f, 0x8b, 0x08, 0, 1, 2, 3]).expect("write");
    assert!(read_idx_images(&p).is_err(), "broken gzip");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- preprocessing

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn preprocess_metadata_and_channels() {
    let p = Preprocess::from_metadata(&BTreeMap::new(), &[3, 2, 2]).expect("defaults");
    assert_eq!(
        (
            p.color_order,
            p.scale,
            p.mean.clone(),
            p.std.clone(),
            p.resize,
            p.crop
        ),
        (ColorOrder::Rgb, 1.0, vec![0.0], vec![1.0], None, None)
    );
    let p = Preprocess::from_metadata(&BTreeMap::new(), &[1, 4, 4]).expect("gray default");
    assert_eq!(p.color_order, ColorOrder::Gray);
    assert!(Preprocess::from_metadata(&meta(&[("preprocess.mean", "1,2")]), &[3, 2, 2]).is_err());
    assert!(Preprocess::from_metadata(&meta(&[("preprocess.std", "1,0,1")]), &[3, 2, 2]).is_err());
    assert!(Preprocess::from_metadata(&meta(&[("preprocess.resize", "x")]), &[3, 2, 2]).is_err());
    assert!(
        Preprocess::from_metadata(&meta(&[("preprocess.color_order", "RGB")]), &[1, 2, 2]).is_err()
    );
    assert!(Preprocess::from_metadata(&BTreeMap::new(), &[3, 2]).is_err());

    // A 2x2 image with known pixels: exact channel order, scale, mean and std.
    let img = image::RgbImage::from_fn(2, 2, |x, y| image::Rgb([10 * x as u8, 100 + y as u8, 200]));
    let img = image::DynamicImage::ImageRgb8(img);
    let m = meta(&[
        ("preprocess.color_order", "BGR"),
        ("preprocess.scale", "0.5"),
        ("preprocess.mean", "1,2,3"),
        ("preprocess.std", "2,4,8"),
    ]);
    let p = Preprocess::from_metadata(&m, &[3, 2, 2]).expect("bgr");
    let mut out = vec![0.0; 12];
    p.apply(&img, &mut out).expect("apply");
    let want: Vec<f32> = [
        [200.0, 200.0, 200.0, 200.0].map(|v: f32| (v * 0.5 - 1.0) / 2.0),
        [100.0, 100.0, 101.0, 101.0].map(|v: f32| (v * 0.5 - 2.0) / 4.0),
        [0.0, 10.0, 0.0, 10.0].map(|v: f32| (v * 0.5 - 3.0) / 8.0),
    ]
    .concat();
    assert_eq!(out, want);
    // No resize/crop: the wrong size is an error, not a silent resample.
    let p = Preprocess::from_metadata(&BTreeMap::new(), &[3, 3, 3]).expect("p");
    assert!(p.apply(&img, &mut [0.0; 27]).is_err());
    // Gray: ITU-R 601 luma.
    let p = Preprocess::from_metadata(&BTreeMap::new(), &[1, 2, 2]).expect("gray");
    let mut out = vec![0.0; 4];
    p.apply(&img, &mut out).expect("gray apply");
    assert!((out[0] - (0.587 * 100.0 + 0.114 * 200.0)).abs() < 1e-3);
    // Resize keeps the aspect ratio, crop takes the centre.
    let big = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 20, |x, _| {
        image::Rgb([(x * 6) as u8, 0, 0])
    }));
    let m = meta(&[("preprocess.resize", "10"), ("preprocess.crop", "10")]);
    let p = Preprocess::from_metadata(&m, &[3, 10, 10]).expect("p");
    let g = p.geometry(&big).expect("geometry");
    assert_eq!((g.width(), g.height()), (10, 10));
    // The centre crop of a left-to-right ramp: the middle column is near the image middle.
    let mid = g.to_rgb8().get_pixel(5, 5)[0] as i32;
    assert!((mid - 120).abs() <= 8, "centre value {mid}");
}

fn squeezenet_meta() -> BTreeMap<String, String> {
    meta(&[
        ("preprocess.color_order", "BGR"),
        ("preprocess.mean", "104,117,123"),
        ("preprocess.resize", "256"),
        ("preprocess.crop", "227"),
    ])
}

#[test]
fn preprocess_real_images() {
    let Some(data) = data_dir() else {
        return;
    };
    let p = Preprocess::from_metadata(&squeezenet_meta(), &[3, 227, 227]).expect("p");
    let img = cnnpack::data::load_image(&data.join("onnx-zoo/bald_eagle.jpeg")).expect("jpeg");
    let mut out = vec![0.0; 3 * 227 * 227];
    p.apply(&img, &mut out).expect("apply");
    let plane = 227 * 227;
    for (c, mean) in [104.0f32, 117.0, 123.0].iter().enumerate() {
        let ch = &out[c * plane..(c + 1) * plane];
        let (lo, hi) = ch
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(lo >= -mean && hi <= 255.0 - mean, "channel {c}: {lo}..{hi}");
        assert!(hi - lo > 100.0, "channel {c} has contrast");
        assert!(
            ch.iter().all(|v| v.fract() == 0.0),
            "integer pixels minus integer means"
        );
    }

    // Against the golden input (Pillow BILINEAR + libjpeg), all four rows. Decoders and
    // resize filters differ slightly: measured max |diff| 1-2 (pixel levels), mean ~0.2.
    let golden = read_npy(&data.join("imagenet/squeezenet1.0/golden/input.npy")).expect("golden");
    let item = 3 * plane;
    for (row, file) in [
        (0, "n01440764_tench.JPEG"),
        (1, "n01484850_great_white_shark.JPEG"),
        (2, "n03042490_cliff_dwelling.JPEG"),
        (3, "n13133613_ear.JPEG"),
    ] {
        let img =
            cnnpack::data::load_image(&data.join("imagenet/samples").join(file)).expect("img");
        p.apply(&img, &mut out).expect("apply");
        let g = &golden.data[row * item..(row + 1) * item];
        let diffs: Vec<f32> = out.iter().zip(g).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().cloned().fold(0.0, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let within2 = diffs.iter().filter(|d| **d <= 2.0).count() as f32 / diffs.len() as f32;
        println!(
            "golden row {row} ({file}): max |diff| {max}, mean |diff| {mean:.3}, within 2: {:.1}%",
            within2 * 100.0
        );
        assert!(max <= 4.0, "row {row}: max |diff| {max}");
        assert!(mean < 0.5, "row {row}: mean |diff| {mean}");
        assert!(within2 > 0.99, "row {row}: only {within2} within 2");
    }
}

#[test]
fn datasets_from_folders() {
    // ImageFolder layout made on the fly: classes by sorted folder name.
    let dir = temp_dir("imagefolder");
    for (class, shade) in [("zebra", 200u8), ("ant", 10)] {
        std::fs::create_dir_all(dir.join(class)).expect("mkdir");
        for i in 0..3u8 {
            let img = image::RgbImage::from_pixel(6, 4, image::Rgb([shade, shade + i, 0]));
            img.save(dir.join(class).join(format!("{i}.png")))
                .expect("png");
        }
    }
    std::fs::write(dir.join("ant").join("notes.txt"), "not an image").expect("txt");
    let m = meta(&[("preprocess.resize", "4"), ("preprocess.crop", "4")]);
    let p = Preprocess::from_metadata(&m, &[3, 4, 4]).expect("p");
    let ds = Dataset::open(&dir, &p, &[3, 4, 4]).expect("image folder");
    assert_eq!(ds.len(), 6);
    let (b, l) = ds.batch(0, 6).expect("batch");
    assert_eq!(l, vec![0, 0, 0, 1, 1, 1], "ant = 0, zebra = 1");
    assert_eq!(b.shape, vec![6, 3, 4, 4]);
    assert_eq!(b.data[0], 10.0);
    assert_eq!(b.data[3 * 48], 200.0);
    // A corrupt image names its file.
    std::fs::write(dir.join("zebra").join("3.png"), b"\x89PNG broken").expect("write");
    let ds = Dataset::open(&dir, &p, &[3, 4, 4]).expect("image folder");
    let err = ds.batch(0, 7).expect_err("corrupt file").to_string();
    assert!(err.contains("3.png"), "{err}");
    // An empty folder is an error.
    let empty = temp_dir("empty");
    assert!(Dataset::open(&empty, &p, &[3, 4, 4]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);

    // labels.csv layout: the ImageNet samples.
    let Some(data) = data_dir() else {
        return;
    };
    let p = Preprocess::from_metadata(&squeezenet_meta(), &[3, 227, 227]).expect("p");
    let ds = Dataset::open(&data.join("imagenet/samples"), &p, &[3, 227, 227]).expect("samples");
    assert_eq!(ds.len(), 500);
    let (b, l) = ds.batch(0, 3).expect("batch");
    assert_eq!(b.shape, vec![3, 3, 227, 227]);
    assert_eq!(l, vec![0, 2, 4], "even class indices");
}
