#!/usr/bin/env python3
"""Checks `cnnpack run` against ONNX Runtime on every torchvision classifier family.

Each model is built with random weights (`weights=None`, `torch.manual_seed(0)`, eval
mode; googlenet and inception_v3 with `aux_logits=False, init_weights=True`) and
exported with

    torch.onnx.export(model, x, f, opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})

where x is [2, 3, 224, 224] (299 for inception_v3), normal samples from
`numpy.random.default_rng(0)`. ONNX Runtime (CPU, all optimizations off) gives the
reference output; `cnnpack run MODEL --input X --output Y --device D` runs for each
device. One row per model and device: model, device, status (ok, mismatch, or the
first line of cnnpack's error), max |d|, max |ref|, pass (max|d| <= 1e-3 * max(1,
max|ref|)) and cnnpack's wall time in seconds (process start to exit, model load
included).

Random weights make many of these outputs tiny (mobilenet_v2 ~1e-9, efficientnet_b0
~1e-14: eval-mode BatchNorm with running statistics 0/1 shrinks every block) or huge
(inception_v3 ~1e12), and below max|ref| = 1 the pass test is an absolute 1e-3, which
a tiny output passes whatever cnnpack computes. The table's `rel` column is
max|d| / max|ref|, and passes with max|ref| < 0.01 are counted as weak. `--calibrate-bn`
exports a second variant (files MODEL-bncal.*) whose BatchNorm running statistics are
the batch statistics of the input (one forward pass in train mode with momentum None,
under the same seed), so that every layer sees O(1) activations; that checks the
arithmetic, the plain variant checks the brief's exact export.

Files go to --workdir (default /tmp/torchvision_check): MODEL.onnx, MODEL.input.npy,
MODEL.ort.npy, MODEL.DEVICE.npy (MODEL-bncal.* with --calibrate-bn). Existing exports and references are reused (--force
re-exports), so a second run only runs cnnpack. The exports are large (vgg11 is ~0.5 GB,
all of them ~2.5 GB, more with --all) and exporting all takes minutes.

Usage (from the repository root; needs torch, torchvision, onnx, onnxruntime, numpy;
the cnnpack binary is only read, never built here):

    pip install torch torchvision onnx onnxruntime numpy
    python3 tools/torchvision_check.py                         # cpu and gpu, every family
    python3 tools/torchvision_check.py --only resnet18,convnext_tiny --devices cpu
    python3 tools/torchvision_check.py --all --markdown        # b1..b7 too, a markdown table
    python3 tools/torchvision_check.py --export-only --ops     # export; print op types
    python3 tools/torchvision_check.py --calibrate-bn          # O(1) outputs (see above)

Options: --cnnpack PATH (default target/release/cnnpack), --only a,b, --devices cpu,gpu,
--workdir DIR, --all, --force, --calibrate-bn, --markdown, --export-only, --ops (op types of each
exported graph), --timeout S (per cnnpack run, default 600).

Exit status: 0 after the report (mismatches and errors are results); 2 when torch or
torchvision is missing and a model still has to be exported, or when the cnnpack binary
is missing (after exporting).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

MODELS = [
    "alexnet", "vgg11", "vgg11_bn", "resnet18", "resnext50_32x4d", "wide_resnet50_2",
    "squeezenet1_0", "squeezenet1_1", "densenet121", "googlenet", "inception_v3",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x1_0",
    "mnasnet1_0", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf",
    "regnet_y_400mf", "convnext_tiny",
]
EXTRA_MODELS = [f"efficientnet_b{i}" for i in range(1, 8)]  # with --all
MODEL_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
INPUT_SIZE = {"inception_v3": 299}
BATCH = 2
OPSET = 17
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CNNPACK = REPO / "target" / "release" / "cnnpack"


def have_torch() -> str | None:
    """None when torch and torchvision import, else the reason."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def export(name: str, work: Path, calibrate_bn: bool = False) -> None:
    import torch
    import torchvision

    tag = file_tag(name, calibrate_bn)
    size = INPUT_SIZE.get(name, 224)
    x = np.random.default_rng(0).standard_normal((BATCH, 3, size, size)).astype(np.float32)
    np.save(work / f"{tag}.input.npy", x)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **MODEL_KWARGS.get(name, {}))
    if calibrate_bn:
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, that batch's statistics
        model.train()
        with torch.no_grad():
            model(torch.from_numpy(x))
    model.eval()
    tmp = work / f"{tag}.onnx.part"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(x),), str(tmp), opset_version=OPSET, dynamo=False,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )
    tmp.rename(work / f"{tag}.onnx")


def file_tag(name: str, calibrate_bn: bool) -> str:
    return f"{name}-bncal" if calibrate_bn else name


def reference(name: str, work: Path) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(work / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
    y = s.run(None, {"input": np.load(work / f"{name}.input.npy")})[0]
    return np.asarray(y, np.float32)


def op_counts(path: Path) -> collections.Counter:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


def error_line(text: str, code: int) -> str:
    """cnnpack's error: `error: context: cause` on one line (anyhow's {:#}), and when it
    lists several problems, a line ending in `:` followed by one indented line each.
    Other lines (warnings, notes) may come first. Returns the error without `error: `,
    its list joined with `; `."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):  # a Rust panic: the message is on the next line
        if "panicked at" in ln:
            where = ln.split("panicked at", 1)[1].strip().rstrip(":")
            what = lines[i + 1].strip() if i + 1 < len(lines) else ""
            # with RUST_BACKTRACE=1: the first frame in cnnpack's own code
            for j in range(i + 2, len(lines) - 1):
                frame = lines[j].strip()
                if ": cnnpack::" in frame and lines[j + 1].strip().startswith("at "):
                    fn = frame.split(": ", 1)[1]
                    loc = lines[j + 1].strip()[3:]
                    if "/src/" in loc:
                        loc = "src/" + loc.split("/src/", 1)[1]
                    where = f"{fn}, {loc}"
                    break
            return f"panic: {what} (at {where})"
    for i, ln in enumerate(lines):
        if ln.lower().startswith("error"):
            msg = ln.split(":", 1)[1].strip() if ":" in ln else ln
            if msg.endswith(":"):
                rest = [r.strip() for r in lines[i + 1:] if r[:1].isspace()]
                msg = msg + " " + "; ".join(rest)
            return msg
    return lines[0].strip() if lines else f"exit status {code}"

def run_cnnpack(binary: Path, name: str, device: str, work: Path, timeout: float):
    """(status, max|d|, max|ref|, passed, seconds)."""
    out = work / f"{name}.{device}.npy"
    if out.exists():
        out.unlink()
    model = work / f"{name}.onnx"
    cmd = [str(binary), "run", str(model), "--input", str(work / f"{name}.input.npy"),
           "--output", str(out), "--device", device]
    ref = np.load(work / f"{name}.ort.npy")
    max_ref = float(np.max(np.abs(ref)))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                           env={**os.environ, "RUST_BACKTRACE": "1"})
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:g}s", float("nan"), max_ref, False, time.perf_counter() - t0
    secs = time.perf_counter() - t0
    if p.returncode != 0 or not out.exists():
        msg = error_line(p.stderr or p.stdout, p.returncode).replace(str(model), "MODEL")
        return f"error: {msg[:400]}", float("nan"), max_ref, False, secs
    got = np.load(out)
    if got.shape != ref.shape:
        return f"shape {list(got.shape)} != {list(ref.shape)}", float("nan"), max_ref, False, secs
    d = float(np.max(np.abs(got.astype(np.float64) - ref)))
    if np.isnan(d):
        d = float("inf")
    passed = d <= 1e-3 * max(1.0, max_ref)
    return "ok" if passed else "mismatch", d, max_ref, passed, secs


def rel(d: float, max_ref: float) -> float:
    return d / max_ref if max_ref > 0 and d == d else float("nan")


def fmt(v: float) -> str:
    return "-" if v != v else f"{v:.3g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnnpack", type=Path, default=DEFAULT_CNNPACK)
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--all", action="store_true", help="also efficientnet_b1..b7")
    ap.add_argument("--devices", default="cpu,gpu")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/torchvision_check"))
    ap.add_argument("--force", action="store_true", help="re-export and recompute references")
    ap.add_argument("--calibrate-bn", action="store_true",
                    help="BatchNorm statistics from the input (files MODEL-bncal.*), O(1) outputs")
    ap.add_argument("--markdown", action="store_true", help="print the results as a markdown table")
    ap.add_argument("--export-only", action="store_true", help="export and compute references, no cnnpack")
    ap.add_argument("--ops", action="store_true", help="print the op types of each exported graph")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    known = MODELS + EXTRA_MODELS
    names = MODELS + (EXTRA_MODELS if args.all else [])
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = [n for n in names if n not in known]
        if unknown:
            ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    devices = [d for d in args.devices.split(",") if d]
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.markdown else print  # noqa: E731

    # ---- export and reference ----------------------------------------------------
    cal = args.calibrate_bn
    tags = {n: file_tag(n, cal) for n in names}
    to_export = [n for n in names if args.force or not (work / f"{tags[n]}.onnx").exists()
                 or not (work / f"{tags[n]}.input.npy").exists()]
    if to_export:
        why = have_torch()
        if why:
            print(f"error: torch and torchvision are needed to export {', '.join(to_export)} "
                  f"({why}); install them with `pip install torch torchvision`", file=sys.stderr)
            return 2
    for n in names:
        t = tags[n]
        if n in to_export:
            t0 = time.perf_counter()
            export(n, work, cal)
            log(f"exported {t} ({(work / f'{t}.onnx').stat().st_size / 2**20:.0f} MiB, "
                f"{time.perf_counter() - t0:.0f}s)")
        if n in to_export or not (work / f"{t}.ort.npy").exists():
            np.save(work / f"{t}.ort.npy", reference(t, work))
        if args.ops:
            c = op_counts(work / f"{t}.onnx")
            log(f"{t}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if args.export_only:
        return 0
    if not args.cnnpack.exists():
        print(f"error: the cnnpack binary {args.cnnpack} does not exist: build it with "
              "`cargo build --release` or pass --cnnpack PATH (exports are in "
              f"{work}; --export-only skips this step)", file=sys.stderr)
        return 2

    # ---- cnnpack -----------------------------------------------------------------
    rows = []
    log(f"{'model':26s} {'device':6s} {'max|d|':>9s} {'max|ref|':>9s} {'rel':>9s} {'pass':5s} "
        f"{'secs':>7s}  status")
    for n in names:
        t = tags[n]
        for d in devices:
            status, dd, mr, ok, secs = run_cnnpack(args.cnnpack, t, d, work, args.timeout)
            weak = ok and mr < 0.01
            rows.append((t, d, status, dd, mr, ok, weak, secs))
            verdict = ("yes*" if weak else "yes") if ok else "no"
            log(f"{t:26s} {d:6s} {fmt(dd):>9s} {fmt(mr):>9s} {fmt(rel(dd, mr)):>9s} {verdict:5s} "
                f"{secs:7.2f}  {status}")
    for d in devices:
        got = [r for r in rows if r[1] == d]
        weak = sum(r[6] for r in got)
        log(f"{d}: {sum(r[5] for r in got)}/{len(got)} pass"
            + (f" ({weak} weak: max|ref| < 0.01, see --calibrate-bn)" if weak else ""))
    if args.markdown:
        print("| model | device | status | max abs diff | max abs ref | rel | pass | cnnpack s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for t, d, status, dd, mr, ok, weak, secs in rows:
            st = status.replace("|", "\\|")
            verdict = ("yes (weak)" if weak else "yes") if ok else "no"
            print(f"| {t} | {d} | {st} | {fmt(dd)} | {fmt(mr)} | {fmt(rel(dd, mr))} | {verdict} "
                  f"| {secs:.2f} |")
    return 0

if __name__ == "__main__":
    sys.exit(main())
