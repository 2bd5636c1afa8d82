#!/usr/bin/env python3
"""Runs ONNX's own backend node tests through `cnnpack run` for the ops cnnpack implements.

The node tests are the one-operator models that ship with ONNX (`onnx/backend/test/data/
node/test_*/model.onnx` with `test_data_set_0/input_*.pb` and `output_*.pb`). Debian's
`libonnx-testdata` package installs them (`dpkg -L libonnx-testdata`; here
`/usr/share/libonnx-testdata/data/node`, ONNX 1.12's set, opsets up to 17). `--data`
overrides the folder.

For every test of an op in OPS (the op is the model's single node; an `*_expanded` test,
whose graph is the op's function body, counts for the op of the test it expands):

1. Keep it only when input 0 is a float32 tensor of rank >= 1 and the compared output is
   a float32 tensor (AUTO_EXCLUSIONS lists these rules) and its name is not in EXCLUDE.
2. Lift every other graph input into an initializer, with its test_data_set_0 value, so
   the op's weights, axes, shapes, exponents and second operands become constants; the
   rewritten model has one graph input, named and shaped exactly as the test's input 0
   (cnnpack treats its first dimension as the batch), and one graph output: output 0
   (for Split, one rewritten model per output, named `test#k`).
3. Write input_0 as .npy, run `cnnpack run MODEL --input X --output Y --device D` for
   each device, and compare with the reference: pass when
   max|d| <= 1e-3 * max(1, max|ref|) (equal infinities and NaN at the same places count
   as equal), the shapes being equal.

It prints one line per test, then a table per op (passed / total per device) and the
overall percentage; `--markdown` prints that table as markdown for the docs.

Usage (from the repository root; needs python3 with onnx and numpy, and onnxruntime for
--ort-check; the cnnpack binary is only read, never built here):

    cargo build --release                      # once, elsewhere
    python3 tools/onnx_node_tests.py                          # cpu and gpu
    python3 tools/onnx_node_tests.py --devices cpu --filter softmax
    python3 tools/onnx_node_tests.py --markdown > /tmp/node_tests.md
    python3 tools/onnx_node_tests.py --ort-check --prepare-only   # checks the rewriting
    python3 tools/onnx_node_tests.py --list-excluded

Options: --cnnpack PATH (default target/release/cnnpack), --data DIR, --devices cpu,gpu,
--filter SUBSTR (on the test name), --workdir DIR (rewritten models and outputs; default
a temporary folder, removed unless --keep), --jobs N (parallel cnnpack runs, default 1),
--timeout S (per run, default 120), --ort-check (also run each rewritten model with ONNX
Runtime against the reference), --prepare-only (stop before running cnnpack).

Exit status: 0 after a report (failures are results, not errors); 2 when the test data
or the cnnpack binary is missing (after --prepare-only work, the binary is not needed).
"""

from __future__ import annotations

import argparse
import collections
import os
import concurrent.futures as cf
import fnmatch
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# The ops cnnpack implements; one summary row each (also when the data has no test).
OPS = """
Relu LeakyRelu PRelu Elu Clip Sigmoid HardSigmoid HardSwish Tanh Erf Gelu Exp Log Sqrt
Neg Abs Reciprocal Softplus Add Sub Mul Div Pow Max Min ReduceMean ReduceSum ReduceMax
ReduceMin ReduceL2 Softmax LogSoftmax MatMul Gemm Transpose Reshape Flatten Squeeze
Unsqueeze Expand Concat Split Slice Gather Pad LayerNormalization InstanceNormalization
BatchNormalization MaxPool AveragePool GlobalAveragePool GlobalMaxPool Dropout Identity
Cast Conv LRN
""".split()

# Ops whose tests get one rewritten model per float32 output (the others compare output 0).
PER_OUTPUT_OPS = {"Split"}

# Tests left out by name (fnmatch patterns), with the reason.
EXCLUDE = {
    "test_training_dropout*": "training mode: the output is random",
    "test_dropout_default_mask*": "the point is the mask output (bool), a second output",
    "test_batchnorm_*training_mode*": "training mode: running statistics outputs",
    "test_maxpool_with_argmax_*": "the point is the Indices output (int64), a second output",
    "test_identity_sequence": "sequence type",
    "test_identity_opt": "optional type",
    "test_pow_types_float32_*int*": "integer exponent (int data)",
    # cnnpack's shapes have no zero dimension (an inference engine for CNNs never makes
    # an empty tensor): these tests are about empty tensors.
    "test_split_zero_size_splits*": "zero-size outputs (empty tensors)",
    "test_reshape_allowzero_reordered": "a zero-size input (dimension 0)",
    "test_slice_start_out_of_bounds": "an empty output (a slice past the end)",
}

# Types a lifted input (now an initializer) may have: weights and second operands are
# float32, shapes/axes/pads/starts/indices int64 or int32.
LIFTED_TYPES = {TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32}

# The rules applied to every test, with the reason printed for what they drop.
AUTO_EXCLUSIONS = {
    "not-a-listed-op": "the op under test is not in OPS",
    "no-input": "the model has no graph input",
    "input0-type": "input 0 is not a float32 tensor (int/bool/double/float16/string data, "
                   "sequence or optional types)",
    "input0-scalar": "input 0 is a scalar: cnnpack's input has a batch dimension first",
    "output-type": "the compared output is not a float32 tensor",
    "missing-data": "test_data_set_0 lacks an input or output file",
    "lifted-type": "an input lifted into an initializer is not float32/int64/int32",
}

DEFAULT_DATA_CANDIDATES = [
    Path("/usr/share/libonnx-testdata/data/node"),
    Path("/usr/share/onnx/backend/test/data/node"),
]
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CNNPACK = REPO / "target" / "release" / "cnnpack"


def find_data_dir() -> Path | None:
    """The node-test folder: the usual places, then what dpkg says libonnx-testdata has."""
    for c in DEFAULT_DATA_CANDIDATES:
        if c.is_dir():
            return c
    try:
        files = subprocess.run(["dpkg", "-L", "libonnx-testdata"], capture_output=True,
                               text=True, check=False).stdout.split()
    except OSError:
        files = []
    for f in files:
        if f.endswith("/data/node") and Path(f).is_dir():
            return Path(f)
    try:
        import onnx.backend.test as bt

        p = Path(bt.__file__).parent / "data" / "node"
        if p.is_dir():
            return p
    except Exception:  # noqa: BLE001
        pass
    return None


# --------------------------------------------------------------------------------------
# preparing the cases
# --------------------------------------------------------------------------------------


@dataclass
class Case:
    test: str                 # test folder name, `#k` appended for per-output cases
    op: str
    model: Path | None = None
    input: Path | None = None
    ref: np.ndarray | None = None
    note: str = ""
    results: dict = field(default_factory=dict)  # device -> (status, max|d|, max|ref|, secs)


def tensor_elem_type(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type
    return t.tensor_type.elem_type if t.HasField("tensor_type") else None


def load_pb(path: Path) -> np.ndarray:
    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def op_under_test(test_dir: Path, model: onnx.ModelProto) -> str:
    """The model's single node; for `*_expanded` tests, the op of the test they expand."""
    ops = [n.op_type for n in model.graph.node]
    if "_expanded" in test_dir.name:
        base = test_dir.parent / test_dir.name.split("_expanded")[0]
        if (base / "model.onnx").exists():
            bops = [n.op_type for n in onnx.load(base / "model.onnx").graph.node]
            if len(bops) == 1:
                return bops[0]
    if len(ops) == 1:
        return ops[0]
    return "(" + "+".join(dict.fromkeys(ops)) + ")"


def excluded_by_name(name: str) -> str | None:
    for pat, why in EXCLUDE.items():
        if fnmatch.fnmatch(name, pat):
            return why
    return None


def prepare(test_dir: Path, work: Path) -> tuple[list[Case], str | None, str]:
    """Rewrites one test; returns (cases, exclusion reason or None, op)."""
    model = onnx.load(test_dir / "model.onnx")
    op = op_under_test(test_dir, model)
    if op not in OPS:
        return [], "not-a-listed-op", op
    why = excluded_by_name(test_dir.name)
    if why:
        return [], why, op
    g = model.graph
    init_names = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    if not inputs:
        return [], "no-input", op
    if tensor_elem_type(inputs[0]) != TensorProto.FLOAT:
        return [], "input0-type", op
    data = test_dir / "test_data_set_0"
    in_files = [data / f"input_{i}.pb" for i in range(len(inputs))]
    if not all(f.exists() for f in in_files):
        return [], "missing-data", op
    x = load_pb(in_files[0])
    if x.ndim == 0:
        return [], "input0-scalar", op
    if x.dtype != np.float32:
        return [], "input0-type", op
    outputs = list(g.output)
    wanted = list(range(len(outputs))) if op in PER_OUTPUT_OPS else [0]
    wanted = [k for k in wanted if tensor_elem_type(outputs[k]) == TensorProto.FLOAT]
    if not wanted:
        return [], "output-type", op
    if not all((data / f"output_{k}.pb").exists() for k in wanted):
        return [], "missing-data", op

    # lift inputs 1.. into initializers
    lifted = []
    for vi, f in zip(inputs[1:], in_files[1:]):
        t = TensorProto()
        t.ParseFromString(f.read_bytes())
        t.name = vi.name
        if t.data_type not in LIFTED_TYPES:
            return [], "lifted-type", op
        lifted.append(t)
    keep_input = onnx.ValueInfoProto()
    keep_input.CopyFrom(inputs[0])
    del g.input[:]
    g.input.append(keep_input)
    if model.ir_version < 4:  # before IR 4 every initializer also had to be a graph input
        model.ir_version = 4
    g.initializer.extend(lifted)

    cases = []
    folder = work / test_dir.name
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "input.npy", np.ascontiguousarray(x))
    all_outputs = [onnx.ValueInfoProto() for _ in outputs]
    for a, b in zip(all_outputs, outputs):
        a.CopyFrom(b)
    for k in wanted:
        del g.output[:]
        g.output.append(all_outputs[k])
        name = test_dir.name + (f"#{k}" if len(wanted) > 1 or k else "")
        path = folder / (f"model_{k}.onnx" if k else "model.onnx")
        onnx.save(model, path)
        ref = load_pb(data / f"output_{k}.pb")
        note = f"output {k} of {len(outputs)}" if len(outputs) > 1 else ""
        cases.append(Case(name, op, path, folder / "input.npy", ref, note))
    return cases, None, op


# --------------------------------------------------------------------------------------
# comparing and running
# --------------------------------------------------------------------------------------


def compare(got: np.ndarray, ref: np.ndarray) -> tuple[bool, float, float, str]:
    """(pass, max|d|, max|ref|, status) with max|d| <= 1e-3 * max(1, max|ref|)."""
    ref = np.asarray(ref, np.float32)
    finite = np.isfinite(ref)
    max_ref = float(np.max(np.abs(ref[finite]))) if finite.any() else 0.0
    if got.shape != ref.shape:
        return False, float("nan"), max_ref, f"shape {list(got.shape)} != {list(ref.shape)}"
    if ref.size == 0:
        return True, 0.0, 0.0, "ok"
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    diff = np.where(same, 0.0, np.abs(got.astype(np.float64) - ref.astype(np.float64)))
    d = float(np.max(diff)) if diff.size else 0.0
    if np.isnan(d):
        d = float("inf")
    ok = d <= 1e-3 * max(1.0, max_ref)
    return ok, d, max_ref, "ok" if ok else "mismatch"


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

def run_cnnpack(binary: Path, case: Case, device: str, timeout: float) -> tuple[str, float, float, float]:
    out = case.model.parent / f"{case.model.stem}.{device}.out.npy"
    if out.exists():
        out.unlink()
    cmd = [str(binary), "run", str(case.model), "--input", str(case.input), "--output", str(out),
           "--device", device]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                           env={**os.environ, "RUST_BACKTRACE": "1"})
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:g}s", float("nan"), float("nan"), time.perf_counter() - t0
    secs = time.perf_counter() - t0
    if p.returncode != 0 or not out.exists():
        msg = error_line(p.stderr or p.stdout, p.returncode).replace(str(case.model), "MODEL")
        return f"error: {msg[:300]}", float("nan"), float("nan"), secs
    try:
        got = np.load(out)
    except Exception as e:  # noqa: BLE001
        return f"error: unreadable output ({e})", float("nan"), float("nan"), secs
    ok, d, mr, status = compare(got, case.ref)
    return status, d, mr, secs


def run_ort(case: Case) -> tuple[str, float, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        s = ort.InferenceSession(str(case.model), so, providers=["CPUExecutionProvider"])
        got = s.run(None, {s.get_inputs()[0].name: np.load(case.input)})[0]
    except Exception as e:  # noqa: BLE001
        return f"error: {str(e).splitlines()[0][:160]}", float("nan"), float("nan")
    ok, d, mr, status = compare(np.asarray(got), case.ref)
    return status, d, mr


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def fmt(v: float) -> str:
    return "-" if v != v else f"{v:.2e}"


def summary_rows(cases: list[Case], devices: list[str]):
    per_op = collections.OrderedDict((op, {d: [0, 0] for d in devices}) for op in OPS)
    for c in cases:
        for d in devices:
            if d in c.results:
                per_op[c.op][d][1] += 1
                per_op[c.op][d][0] += c.results[d][0] == "ok"
    return per_op


def print_summary(cases: list[Case], devices: list[str], markdown: bool, data: Path,
                  all_ops: bool = True) -> None:
    per_op = summary_rows(cases, devices)
    if not all_ops:  # --filter: only the ops it selected
        per_op = collections.OrderedDict((k, v) for k, v in per_op.items()
                                         if any(v[d][1] for d in devices))
    totals = {d: [sum(v[d][0] for v in per_op.values()), sum(v[d][1] for v in per_op.values())]
              for d in devices}
    if markdown:
        print(f"ONNX backend node tests ({data}), float32 tests with input 0 as the model "
              "input and the other inputs as constants; pass: max|d| <= 1e-3*max(1, max|ref|).")
        print()
        print("| op | " + " | ".join(f"{d} passed / total" for d in devices) + " |")
        print("| --- | " + " | ".join("---" for _ in devices) + " |")
        for op, v in per_op.items():
            cells = [f"{v[d][0]} / {v[d][1]}" if v[d][1] else "no test" for d in devices]
            print(f"| {op} | " + " | ".join(cells) + " |")
        cells = [f"**{t[0]} / {t[1]} ({100.0 * t[0] / t[1]:.1f}%)**" if t[1] else "-"
                 for t in totals.values()]
        print("| **all** | " + " | ".join(cells) + " |")
        return
    print()
    print(f"{'op':24s}" + "".join(f"{d + ' pass/total':>18s}" for d in devices))
    for op, v in per_op.items():
        cells = [f"{v[d][0]:>7d} / {v[d][1]:<7d}" if v[d][1] else f"{'no test':>15s}   " for d in devices]
        print(f"{op:24s}" + "".join(f"{c:>18s}" for c in cells))
    for d, (p, t) in totals.items():
        pct = 100.0 * p / t if t else 0.0
        print(f"overall {d}: {p}/{t} passed ({pct:.1f}%)")
    for d in devices:
        kinds = collections.Counter(failure_kind(c.results[d][0]) for c in cases
                                    if d in c.results and c.results[d][0] != "ok")
        if kinds:
            print(f"\nmost common failures on {d} (numbers and lists written as # and [..]):")
            for k, n in kinds.most_common(15):
                print(f"  {n:4d}  {k}")


def failure_kind(status: str) -> str:
    """A failure status with the test-specific parts (names, numbers, lists) blotted out,
    so that equal causes count together."""
    s = re.sub(r"node '[^']*'", "node", status)
    s = re.sub(r"graph input: '[^']*'", "graph input", s)
    s = re.sub(r"\[[^\]]*\]", "[..]", s)
    s = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", s)
    return s[:160]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnnpack", type=Path, default=DEFAULT_CNNPACK)
    ap.add_argument("--data", type=Path, help="node-test folder (default: found via libonnx-testdata)")
    ap.add_argument("--devices", default="cpu,gpu")
    ap.add_argument("--filter", help="only tests whose folder name contains this")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--markdown", action="store_true", help="print the summary as a markdown table only")
    ap.add_argument("--ort-check", action="store_true", help="also check each rewritten model with ONNX Runtime")
    ap.add_argument("--prepare-only", action="store_true", help="rewrite (and --ort-check) without cnnpack")
    ap.add_argument("--list-excluded", action="store_true", help="print each excluded test with its reason")
    args = ap.parse_args()
    devices = [d for d in args.devices.split(",") if d]
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.markdown else print  # noqa: E731

    data = args.data or find_data_dir()
    if data is None or not data.is_dir():
        print("error: ONNX node test data not found; install it (apt-get install libonnx-testdata) "
              "or pass --data DIR (a folder of test_*/model.onnx)", file=sys.stderr)
        return 2
    if not args.prepare_only and not args.cnnpack.exists():
        print(f"error: the cnnpack binary {args.cnnpack} does not exist: build it with "
              "`cargo build --release` or pass --cnnpack PATH (--prepare-only runs without it)",
              file=sys.stderr)
        return 2

    tmp = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="onnx_node_tests_")
        work = Path(tmp)

    tests = sorted(p for p in data.iterdir() if (p / "model.onnx").exists())
    if args.filter:
        tests = [t for t in tests if args.filter in t.name]
    cases: list[Case] = []
    excluded: list[tuple[str, str, str]] = []
    for t in tests:
        try:
            cs, why, op = prepare(t, work)
        except Exception as e:  # noqa: BLE001
            cs, why, op = [], f"could not be rewritten: {e}", "?"
        if why:
            if why != "not-a-listed-op":
                excluded.append((t.name, op, AUTO_EXCLUSIONS.get(why, why)))
        cases.extend(cs)
    log(f"{data}: {len(tests)} tests, {len(cases)} cases for {len({c.op for c in cases})} ops, "
        f"{len(excluded)} excluded tests of listed ops; work folder {work}")
    if args.list_excluded:
        for name, op, why in excluded:
            log(f"  excluded {name:55s} {op:20s} {why}")

    if args.ort_check:
        bad = 0
        for c in cases:
            status, d, mr = run_ort(c)
            c.results["ort"] = (status, d, mr, 0.0)
            if status != "ok":
                bad += 1
                log(f"  ort {c.test:55s} {status} max|d| {fmt(d)} max|ref| {fmt(mr)}")
        log(f"onnxruntime on the rewritten models: {len(cases) - bad}/{len(cases)} reproduce the reference")

    if args.prepare_only:
        if args.ort_check and not args.markdown:
            print_summary(cases, ["ort"], False, data, not args.filter)
        if tmp and not args.keep:
            shutil.rmtree(tmp)
        return 0

    def one(item):
        c, d = item
        c.results[d] = run_cnnpack(args.cnnpack, c, d, args.timeout)
        return c, d

    jobs = [(c, d) for c in cases for d in devices]
    with cf.ThreadPoolExecutor(max(1, args.jobs)) as ex:
        for c, d in ex.map(one, jobs):
            pass
    for c in cases:
        cells = []
        for d in devices:
            status, dd, mr, secs = c.results[d]
            if status in ("ok", "mismatch"):
                cells.append(f"{d}: {status} max|d| {fmt(dd)} max|ref| {fmt(mr)} {secs:.2f}s")
            else:
                cells.append(f"{d}: {status} ({secs:.2f}s)")
        log(f"{c.test:55s} {c.op:20s} " + " | ".join(cells) + (f"  ({c.note})" if c.note else ""))
    # the same error on every run of a device (e.g. no GPU) is worth one line
    for d in devices:
        errs = collections.Counter(c.results[d][0] for c in cases if c.results[d][0].startswith("error"))
        if cases and errs and errs.most_common(1)[0][1] == len(cases):
            log(f"note: every {d} run failed with: {errs.most_common(1)[0][0]}")
    print_summary(cases, devices, args.markdown, data, not args.filter)
    if tmp and not args.keep:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
