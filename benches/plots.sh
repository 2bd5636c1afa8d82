#!/usr/bin/env bash
# The plots of docs/benchmarks.md (written to docs/plots/ unless OUT_DIR is given):
# per-layer roofline charts of ResNet-18 (CPU, batch 1 and 8) and speed-up against the
# compression parameter for AlexNet on the CPU (sketch m = 1..4, INQ b = 2..5, sparse
# density 0.5..0.05; one-step compression, no retraining: speed does not depend on it).
# Usage: benches/plots.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/plots}
json=${JSON_DIR:-bench-out/plots}
mkdir -p "$out" "$json"
cargo build --release --quiet
R=./target/release/cnnpack
runs="--runs 5 --budget 10"
uptime
$R bench zoo:resnet18 --device cpu --batch 1,8 $runs --layers 0 --svg "$out" --json "$json/resnet18-roofline.json"
for kind in sketch inq sparse; do
    $R bench zoo:alexnet --device cpu --batch 1,8 $runs --layers 0 --sweep $kind --svg "$out" \
        --json "$json/alexnet-$kind.json"
done
uptime
