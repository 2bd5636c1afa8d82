#!/usr/bin/env python3
"""Merges the peers results into one table: criterion's estimates from benches/peers.rs
(tract, cnnpack CPU, cnnpack GPU) and benches/ort_bench.py's JSON (ONNX Runtime).

Each cell is the median time per batch in milliseconds (criterion: median of its
per-sample means; ONNX Runtime: median of single runs). Prints a Markdown table and, with
--json, writes the same numbers as JSON.

Usage: benches/peers_table.py [--criterion target/criterion] [--ort ort.json] [--json OUT]
"""
import argparse
import json
import os
import sys

ENGINES = [("cnnpack-gpu", "cnnpack GPU"), ("cnnpack-cpu", "cnnpack CPU"),
           ("tract", "tract"), ("onnxruntime", "ONNX Runtime")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--criterion", default="target/criterion")
    ap.add_argument("--ort")
    ap.add_argument("--models", default="squeezenet,resnet18,alexnet")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--gpu-name", default="cnnpack GPU",
                    help="column title of the cnnpack-gpu engine (name the adapter)")
    ap.add_argument("--json")
    args = ap.parse_args()
    ms = {}
    for model in args.models.split(","):
        for engine, _ in ENGINES[:3]:
            for batch in args.batch.split(","):
                p = os.path.join(args.criterion, model, engine, f"b{batch}", "new",
                                 "estimates.json")
                if os.path.exists(p):
                    with open(p) as f:
                        ms[(model, engine, int(batch))] = json.load(f)["median"]["point_estimate"] / 1e6
    if args.ort and os.path.exists(args.ort):
        with open(args.ort) as f:
            ort = json.load(f)
        for r in ort.get("results", []):
            ms[(r["model"], "onnxruntime", r["batch"])] = r["p50_ms"]
    titles = [t if e != "cnnpack-gpu" else args.gpu_name for e, t in ENGINES]
    print("| model | batch | " + " | ".join(f"{t} ms" for t in titles)
          + " | CPU / ORT | CPU / tract |")
    print("|---|---|" + "---|" * (len(ENGINES) + 2))
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            cells = [ms.get((model, e, batch)) for e, _ in ENGINES]
            if all(c is None for c in cells):
                continue
            cpu, tract, ortv = cells[1], cells[2], cells[3]
            ratio = lambda a, b: f"{a / b:.2f}x" if a is not None and b else "-"
            print(f"| {model} | {batch} | "
                  + " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
                  + f" | {ratio(cpu, ortv)} | {ratio(cpu, tract)} |")
            rows.append({"model": model, "batch": batch,
                         **{e: c for (e, _), c in zip(ENGINES, cells)}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"unit": "ms per batch (median)", "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
