//! Data augmentation (`cnnpack::data::Augment`) and distillation (`train::Distill`),
//! the two training options of the compression commands. Augmentation: shifts are exact translations with
//! edge repetition, identity parameters change nothing, flips are involutions, the same
//! seed gives the same items, specs parse or fail with a message, and training with
//! augmentation is deterministic.
//!
//! Tolerances: integer shifts and flips copy values, so they are compared bitwise;
//! bilinear warps with identity parameters sample pixel centres exactly (weights 0 and
//! 1), so they are compared to 1e-6.

mod common;
use cnnpack::data::augment::item_rng;
use cnnpack::data::{Augment, Dataset, Preprocess};
use cnnpack::graph::{Op, Rng};
use cnnpack::train::{self, Masks, TrainOptions};

fn image(rng: &mut Rng, c: usize, h: usize, w: usize) -> Vec<f32> {
    (0..c * h * w).map(|_| rng.normal()).collect()
}

#[test]
fn shift_is_an_exact_translation_with_edge_repeat() {
    let mut rng = Rng::new(3);
    for &(c, h, w, max) in &[(1, 28, 28, 2), (3, 7, 5, 3), (2, 1, 9, 1)] {
        let src = image(&mut rng, c, h, w);
        let mut seen = std::collections::HashSet::new();
        for item in 0..60 {
            let mut out = src.clone();
            let mut r = item_rng(5, 0, item);
            Augment::Shift { max }
                .apply(&mut out, (c, h, w), &mut r)
                .unwrap();
            // Recover (dy, dx) as the unique shift in range that explains the output.
            let m = max as isize;
            let mut found = None;
            for dy in -m..=m {
                for dx in -m..=m {
                    let ok = (0..c).all(|ch| {
                        (0..h).all(|y| {
                            (0..w).all(|x| {
                                let sy = (y as isize - dy).clamp(0, h as isize - 1) as usize;
                                let sx = (x as isize - dx).clamp(0, w as isize - 1) as usize;
                                out[(ch * h + y) * w + x].to_bits()
                                    == src[(ch * h + sy) * w + sx].to_bits()
                            })
                        })
                    });
                    if ok && found.is_none() {
                        found = Some((dy, dx));
                    }
                }
            }
            let (dy, dx) = found.expect("output is a clamped shift of the input");
            if h > 2 * max && w > 2 * max {
                seen.insert((dy, dx));
            }
        }
        if h > 2 * max && w > 2 * max {
            // 60 draws over (2m+1)^2 shifts: most of them appear.
            assert!(seen.len() * 2 > (2 * max + 1).pow(2), "{seen:?}");
        }
    }
}

#[test]
fn identity_parameters_change_nothing_and_flip_is_an_involution() {
    let mut rng = Rng::new(4);
    let (c, h, w) = (2, 9, 6);
    let src = image(&mut rng, c, h, w);
    for aug in [
        Augment::Shift { max: 0 },
        Augment::Affine {
            shift: 0.0,
            degrees: 0.0,
            scale: 0.0,
        },
    ] {
        let mut out = src.clone();
        aug.apply(&mut out, (c, h, w), &mut Rng::new(1)).unwrap();
        for (a, b) in out.iter().zip(&src) {
            assert!((a - b).abs() <= 1e-6, "{aug:?}: {a} vs {b}");
        }
    }
    // crop:1 keeps the whole image; the only randomness left is the flip.
    let mut flips = 0;
    for item in 0..40 {
        let mut out = src.clone();
        Augment::ResizedCrop { min_area: 1.0 }
            .apply(&mut out, (c, h, w), &mut item_rng(2, 1, item))
            .unwrap();
        let same = out.iter().zip(&src).all(|(a, b)| (a - b).abs() <= 1e-5);
        let mut mirrored = src.clone();
        for row in mirrored.chunks_mut(w) {
            row.reverse();
        }
        let flipped = out
            .iter()
            .zip(&mirrored)
            .all(|(a, b)| (a - b).abs() <= 1e-5);
        assert!(same || flipped, "crop:1 is the identity or a mirror");
        flips += (flipped && !same) as usize;
    }
    assert!((8..=32).contains(&flips), "{flips} flips of 40");
    let mut out = src.clone();
    for item in 0..10 {
        Augment::Flip
            .apply(&mut out, (c, h, w), &mut item_rng(9, 0, item))
            .unwrap();
        Augment::Flip
            .apply(&mut out, (c, h, w), &mut item_rng(9, 0, item))
            .unwrap();
        assert_eq!(out, src, "the same draw twice undoes the flip");
    }
}

#[test]
fn warps_stay_within_the_value_range_and_are_seeded() {
    let mut rng = Rng::new(8);
    let (c, h, w) = (3, 16, 12);
    let src = image(&mut rng, c, h, w);
    let (lo, hi) = src
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, u), &v| (l.min(v), u.max(v)));
    for aug in [
        Augment::Affine {
            shift: 2.0,
            degrees: 15.0,
            scale: 0.15,
        },
        Augment::ResizedCrop { min_area: 0.08 },
    ] {
        let mut a = src.clone();
        let mut b = src.clone();
        aug.apply(&mut a, (c, h, w), &mut item_rng(1, 2, 3))
            .unwrap();
        aug.apply(&mut b, (c, h, w), &mut item_rng(1, 2, 3))
            .unwrap();
        assert_eq!(a, b, "{aug:?}: same seed, same item");
        assert_ne!(a, src, "{aug:?} changed nothing");
        // Bilinear interpolation is a convex combination of source pixels.
        assert!(
            a.iter().all(|v| *v >= lo - 1e-5 && *v <= hi + 1e-5),
            "{aug:?}"
        );
        let mut d = src.clone();
        aug.apply(&mut d, (c, h, w), &mut item_rng(1, 2, 4))
            .unwrap();
        assert_ne!(a, d, "{aug:?}: different items draw differently");
    }
    let err = Augment::Shift { max: 1 }
        .apply(&mut [0.0; 10], (1, 3, 3), &mut Rng::new(1))
        .unwrap_err();
    assert!(err.to_string().contains("10 values"), "{err}");
}

#[test]
fn specs_parse_and_bad_ones_say_why() {
    assert_eq!(
        "shift:2".parse::<Augment>().unwrap(),
        Augment::Shift { max: 2 }
    );
    assert_eq!(
        "affine:1.5:10:0.1".parse::<Augment>().unwrap(),
        Augment::Affine {
            shift: 1.5,
            degrees: 10.0,
            scale: 0.1
        }
    );
    assert_eq!(
        "crop".parse::<Augment>().unwrap(),
        Augment::ResizedCrop { min_area: 0.08 }
    );
    assert_eq!("flip".parse::<Augment>().unwrap(), Augment::Flip);
    for bad in [
        "shift",
        "shift:1.5",
        "shift:-1",
        "affine:1:2",
        "crop:0",
        "crop:2",
        "blur:1",
        "shift:x",
    ] {
        let err = bad.parse::<Augment>().unwrap_err().to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

/// Writes `n` random 12x12 images (a class-dependent bright row) as an IDX train split.
fn write_idx(dir: &std::path::Path, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 12, 12] {
        img.extend(d.to_be_bytes());
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    for _ in 0..n {
        let label = rng.range(0, 1);
        lab.push(label as u8);
        for y in 0..12 {
            for _x in 0..12 {
                img.push(if y / 6 == label {
                    200
                } else {
                    rng.range(0, 60) as u8
                });
            }
        }
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).expect("write images");
    std::fs::write(dir.join("train-labels-idx1-ubyte"), lab).expect("write labels");
}

#[test]
fn augmented_and_distilled_training() {
    use cnnpack::graph::GraphBuilder;
    let dir = common::temp_dir("augment");
    write_idx(&dir, 64, 2);
    let mut b = GraphBuilder::new("x", &[1, 12, 12], 5);
    let x = b.input();
    let c = b.conv(&x, 4, 3, 1, 1, 1);
    let r = b.relu(&c);
    let f = b.flatten(&r);
    let y = b.linear(&f, 2);
    let mut g = b.finish(&[&y]).expect("graph");
    // Pixels to [0, 1), as the LeNet models do, so that lr 0.05 trains smoothly.
    g.metadata
        .insert("preprocess.scale".into(), "0.00390625".into());
    let pre = Preprocess::from_metadata(&g.metadata, &g.input.item_shape).expect("preprocess");
    let ds = Dataset::open_split(&dir, "train", &pre, &g.input.item_shape).expect("dataset");
    let run = |augment: Option<Augment>, distill: Option<train::Distill>| {
        let mut gg = g.clone();
        let opts = TrainOptions {
            epochs: 2,
            batch: 16,
            lr: 0.05,
            augment,
            distill,
            ..TrainOptions::default()
        };
        train::train(&mut gg, &ds, None, &opts, &mut Masks::new(), |_| {}).expect("train");
        // Every weight and bias, bitwise (the serialised file is not byte-stable: its
        // metadata map has no fixed order).
        gg.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Conv(c) => Some((c.weight.to_dense().into_owned(), c.bias.clone())),
                Op::Linear(l) => Some((l.weight.to_dense().into_owned(), l.bias.clone())),
                _ => None,
            })
            .flat_map(|(w, b)| {
                w.data
                    .into_iter()
                    .chain(b.map(|b| b.data).unwrap_or_default())
            })
            .map(f32::to_bits)
            .collect::<Vec<u32>>()
    };
    let shift = Some(Augment::Shift { max: 2 });
    let a = run(shift.clone(), None);
    assert_eq!(a, run(shift, None), "same seed, same augmented result");
    let plain = run(None, None);
    assert_ne!(a, plain, "augmentation had no effect");
    // Distillation with alpha 0 is plain cross-entropy, bitwise; with alpha 1 from a
    // teacher equal to the student, the first gradient is zero, and later ones differ.
    let teacher = std::sync::Arc::new(g.clone());
    let distill = |alpha: f32| train::Distill {
        teacher: teacher.clone(),
        temperature: 3.0,
        alpha,
    };
    assert_eq!(
        run(None, Some(distill(0.0))),
        plain,
        "alpha 0 changed training"
    );
    let soft = run(None, Some(distill(0.5)));
    assert_ne!(soft, plain, "alpha 0.5 had no effect");
    let mut gg = g.clone();
    let opts = TrainOptions {
        epochs: 1,
        batch: 64,
        lr: 0.05,
        momentum: 0.0,
        weight_decay: 0.0,
        distill: Some(distill(1.0)),
        ..TrainOptions::default()
    };
    train::train(&mut gg, &ds, None, &opts, &mut Masks::new(), |_| {}).expect("train");
    assert_eq!(
        gg, g,
        "one full-batch step towards an identical teacher moved weights"
    );
    std::fs::remove_dir_all(&dir).ok();
}
