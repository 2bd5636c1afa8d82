#!/usr/bin/env python3
"""Regenerates the golden input/output pairs that the tests compare against.

The goldens live in the shared data folder (`../shared/data`, or `$CNNPACK_DATA`):
`<model dir>/golden/input.npy` and `golden/output.npy`, float32 .npy. Their recipes are
the "Golden pairs" paragraph of `data/README.md` and each `golden/info.txt`; this script
is those recipes as code. It never writes into the data folder.

    pip install onnxruntime numpy pillow
    python3 scripts/make_goldens.py OUT_DIR            # writes OUT_DIR/<model dir>/golden/*.npy
    python3 scripts/make_goldens.py OUT_DIR --check    # also compares with the shipped files
    python3 scripts/make_goldens.py OUT_DIR --check --only lenet,cifar

`--check` prints the max |difference| per file and exits 1 when one is over its
tolerance: inputs 1e-6, outputs 1e-5 (absolute; onnxruntime's f32 kernels differ between
versions and CPUs in the last bits). The Rust tests never run this script; it is only
the record of how the goldens were made (Python 3, numpy, onnxruntime, Pillow).

Recipes and what reproduces (checked 2026-12-07 with onnxruntime 1.32.0, numpy 2.4.6,
Pillow 13.0.0 on x86-64; the exact numbers are what `--check` prints):

- lenet (`lenet/golden`): MNIST t10k images 0..15 (uint8) * 0.00390625, [16,1,28,28];
  output `prob` of `lenet/lenet5_original.onnx`. Input exact, output within 1e-5.
- cifar (`cifar/golden`): `np.random.RandomState(0).standard_normal((8,3,32,32))` cast
  to float32 (already in normalized space); output `logits` of `cifar/resnet20.onnx`.
  Input exact, output within 1e-5.
- squeezenet1.0 (`imagenet/squeezenet1.0/golden`): 4 sample images (tench, great white
  shark, cliff dwelling, ear), RGB decode, Pillow bilinear resize of the shorter side to
  256 (longer side round(len*256/short)), center crop 227 (left=(w-227)//2,
  top=(h-227)//2), reorder to BGR, keep 0-255, subtract 104,117,123 (B,G,R); output
  `prob`. See RESULTS below for which variant reproduces.
- mobilenetv2 (`imagenet/mobilenetv2/golden`): rows 0, 100, 250, 400 of
  `imagenet/samples/labels.csv`, Pillow bilinear resize of the shorter side to 256,
  center crop 224, RGB, x = pixel/128 - 1; output `prob`.
- mobilenetv1-0.75-192 (`imagenet/mobilenetv1-0.75-192/golden`): the same rows, shorter
  side 219, center crop 192, otherwise as mobilenetv2.

Results of `--check --all-variants` (2026-12-07): every shipped golden reproduces
bit-identically, input and output (max |d| 0 for all ten files), with the documented
preprocessing and onnxruntime 1.32.0 CPU (one thread here; its outputs are the same
bits as the shipped ones). The one open choice tried, how the longer side is rounded
in the shorter-side resize ("round", as the README states, or "floor" = int()):
  squeezenet1.0         round and floor give the same input (for these 4 images the
                        two agree), both bit-identical;
  mobilenetv2           round reproduces; floor does not (input max |d| 0.72,
                        output 7.2e-3);
  mobilenetv1-0.75-192  round reproduces; floor does not (input max |d| 0.80,
                        output 1.2e-3).
The channel order (BGR for SqueezeNet, RGB for the MobileNets), the crop offsets
((w-c)//2, (h-c)//2) and Pillow's BILINEAR filter are as documented; no other variant
was needed.
"""

import argparse
import csv
import gzip
import os
import sys
from pathlib import Path

import numpy as np

INPUT_TOL = 1e-6
OUTPUT_TOL = 1e-5


def data_dir() -> Path:
    env = os.environ.get("CNNPACK_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def run_onnx(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread: the result does not depend on how the work was split.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    out = sess.get_outputs()[0]
    return sess.run([out.name], {inp.name: x})[0].astype(np.float32)


def read_idx_images(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    assert magic == 0x803, f"{path}: not an IDX image file (magic {magic:#x})"
    n, h, w = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)


# ---------------------------------------------------------------------------------------
# Image preprocessing (the ImageNet models)


def load_rgb(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def resize_shorter(img, short: int, rounding: str):
    """Bilinear resize so the shorter side is `short`; the longer side is
    round(len*short/shorter) ("round") or int(len*short/shorter) ("floor")."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    scale = lambda n: (round(n * short / s) if rounding == "round" else int(n * short / s))
    size = (short, scale(h)) if w <= h else (scale(w), short)
    return img.resize(size, Image.BILINEAR)


def center_crop(img, crop: int):
    w, h = img.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return img.crop((left, top, left + crop, top + crop))


def chw(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1)


def squeezenet_item(path: Path, variant: str) -> np.ndarray:
    img = center_crop(resize_shorter(load_rgb(path), 256, variant), 227)
    x = chw(img)[::-1]  # RGB -> BGR
    mean = np.array([104, 117, 123], dtype=np.float32).reshape(3, 1, 1)
    return x - mean


def mobilenet_item(path: Path, short: int, crop: int, variant: str) -> np.ndarray:
    img = center_crop(resize_shorter(load_rgb(path), short, variant), crop)
    return chw(img) / np.float32(128.0) - np.float32(1.0)


def sample_rows(data: Path, rows):
    with open(data / "imagenet/samples/labels.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    return [data / "imagenet/samples" / recs[r]["file"] for r in rows]


# ---------------------------------------------------------------------------------------
# The goldens. Each maker returns (input, model path); variants name alternative
# preprocessing choices where the recipe leaves one open (first = the documented one).

SQUEEZENET_FILES = [
    "n01440764_tench.JPEG",
    "n01484850_great_white_shark.JPEG",
    "n03042490_cliff_dwelling.JPEG",
    "n13133613_ear.JPEG",
]
MOBILENET_ROWS = [0, 100, 250, 400]


def make_lenet(data: Path, variant: str):
    imgs = read_idx_images(data / "mnist/t10k-images-idx3-ubyte.gz")[:16]
    x = (imgs.astype(np.float32) * np.float32(0.00390625)).reshape(16, 1, 28, 28)
    return x, data / "lenet/lenet5_original.onnx"


def make_cifar(data: Path, variant: str):
    x = np.random.RandomState(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    return x, data / "cifar/resnet20.onnx"


def make_squeezenet(data: Path, variant: str):
    d = data / "imagenet/samples"
    x = np.stack([squeezenet_item(d / f, variant) for f in SQUEEZENET_FILES])
    return x.astype(np.float32), data / "imagenet/squeezenet1.0/squeezenet1.0.onnx"


def make_mobilenetv2(data: Path, variant: str):
    files = sample_rows(data, MOBILENET_ROWS)
    x = np.stack([mobilenet_item(p, 256, 224, variant) for p in files])
    return x.astype(np.float32), data / "imagenet/mobilenetv2/mobilenetv2.onnx"


def make_mobilenetv1(data: Path, variant: str):
    files = sample_rows(data, MOBILENET_ROWS)
    x = np.stack([mobilenet_item(p, 219, 192, variant) for p in files])
    return x.astype(np.float32), data / "imagenet/mobilenetv1-0.75-192/mobilenetv1-0.75-192.onnx"


# name -> (golden folder relative to the data folder, maker, variants)
GOLDENS = {
    "lenet": ("lenet/golden", make_lenet, ["-"]),
    "cifar": ("cifar/golden", make_cifar, ["-"]),
    "squeezenet1.0": ("imagenet/squeezenet1.0/golden", make_squeezenet, ["round", "floor"]),
    "mobilenetv2": ("imagenet/mobilenetv2/golden", make_mobilenetv2, ["round", "floor"]),
    "mobilenetv1-0.75-192": (
        "imagenet/mobilenetv1-0.75-192/golden",
        make_mobilenetv1,
        ["round", "floor"],
    ),
}


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder (never the data folder)")
    ap.add_argument("--check", action="store_true", help="compare with the shipped goldens")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(GOLDENS))
    ap.add_argument(
        "--all-variants",
        action="store_true",
        help="with --check, also try the alternative preprocessing variants",
    )
    args = ap.parse_args()
    data = data_dir()
    if not data.is_dir():
        print(f"data folder {data} not found (set CNNPACK_DATA)", file=sys.stderr)
        return 2
    out = args.out.resolve()
    if out == data.resolve() or data.resolve() in out.parents:
        print(f"refusing to write into the data folder {data}", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else list(GOLDENS)
    failed = False
    for name in names:
        rel, maker, variants = GOLDENS[name]
        tried = variants if (args.check and args.all_variants) else variants[:1]
        for variant in tried:
            x, model = maker(data, variant)
            y = run_onnx(model, x)
            tag = name if variant == "-" else f"{name} [{variant}]"
            if variant == variants[0]:
                dst = out / rel
                dst.mkdir(parents=True, exist_ok=True)
                np.save(dst / "input.npy", x)
                np.save(dst / "output.npy", y)
            if not args.check:
                print(f"{tag}: wrote {out / rel}/input.npy {list(x.shape)}, output.npy {list(y.shape)}")
                continue
            want_x = np.load(data / rel / "input.npy")
            want_y = np.load(data / rel / "output.npy")
            dx, dy = max_diff(x, want_x), max_diff(y, want_y)
            # The shipped output on our input and on the shipped input tells apart a
            # preprocessing difference from an onnxruntime difference.
            dy_shipped_in = max_diff(run_onnx(model, want_x.astype(np.float32)), want_y)
            ok = dx <= INPUT_TOL and dy <= OUTPUT_TOL
            if variant == variants[0] and not ok:
                failed = True
            exact = " (bit-identical)" if dx == 0 and np.array_equal(x, want_x) else ""
            print(
                f"{'ok  ' if ok else 'DIFF'} {tag}: input max|d| {dx:.3e}{exact}, "
                f"output max|d| {dy:.3e}; shipped input -> output max|d| {dy_shipped_in:.3e}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
