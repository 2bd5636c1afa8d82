#!/usr/bin/env python3
"""Times ONNX files with ONNX Runtime (CPU execution provider), for the peers table.

Same inputs as benches/peers.rs: a standard-normal float32 batch of the model's input
shape, batch sizes as given, intra-op threads as given (inter-op 1, sequential
execution), full graph optimisation. Reports the median and 90th percentile of `--runs`
timed runs after `--warmup` untimed ones, per model and batch, as a table on stdout and
as JSON with --json.

When onnxruntime (or numpy) is not installed it says so and exits 0, so scripts that call
it keep going: `pip install onnxruntime` to enable it.

Usage: benches/ort_bench.py [--threads 2] [--batch 1,8] [--runs 20] [--json OUT]
                            NAME=FILE.onnx [NAME=FILE.onnx ...]
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=FILE.onnx (or just FILE.onnx)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--runs", type=int, default=20, help="timed runs (at least 3)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=20.0,
                    help="seconds of timed runs per row (stops early, after 3 runs)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        print(f"skipped: ONNX Runtime is not installed ({e}); pip install onnxruntime")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"engine": "onnxruntime", "available": False,
                           "reason": str(e), "results": []}, f, indent=2)
        return 0

    batches = [int(b) for b in args.batch.split(",") if b]
    results = []
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, "
          f"providers {ort.get_available_providers()} (CPUExecutionProvider used)")
    print(f"{'model':<12} {'batch':>5} {'p50 ms':>10} {'p90 ms':>10} {'images/s':>10} {'runs':>5}")
    for spec in args.models:
        name, _, path = spec.rpartition("=")
        name = name or os.path.splitext(os.path.basename(path))[0]
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        item = [d for d in inp.shape[1:]]
        if not all(isinstance(d, int) for d in item):
            print(f"skipped: {name}: input {inp.name} has symbolic non-batch dims {inp.shape}")
            continue
        for batch in batches:
            x = np.random.default_rng(0).standard_normal([batch] + item).astype(np.float32)
            for _ in range(args.warmup):
                sess.run(None, {inp.name: x})
            samples = []
            start = time.perf_counter()
            while len(samples) < args.runs and (
                    len(samples) < 3 or time.perf_counter() - start < args.budget):
                t = time.perf_counter()
                sess.run(None, {inp.name: x})
                samples.append((time.perf_counter() - t) * 1e3)
            samples.sort()
            at = lambda q: samples[round((len(samples) - 1) * q)]
            r = {"model": name, "file": path, "batch": batch, "threads": args.threads,
                 "p50_ms": at(0.5), "p90_ms": at(0.9), "min_ms": samples[0],
                 "runs": len(samples), "images_per_s": batch / (at(0.5) / 1e3)}
            results.append(r)
            print(f"{name:<12} {batch:>5} {r['p50_ms']:>10.2f} {r['p90_ms']:>10.2f} "
                  f"{r['images_per_s']:>10.1f} {r['runs']:>5}")
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"engine": "onnxruntime", "available": True, "version": ort.__version__,
                       "threads": args.threads, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
