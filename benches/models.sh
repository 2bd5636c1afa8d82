#!/usr/bin/env bash
# Reproduces the tables of docs/benchmarks-archive.md: peak rates, then dense and sketched models on
# the GPU and the CPU, each configuration in one `cnnpack bench` run (same device, same run
# for every ratio quoted). Usage: benches/models.sh [OUT_DIR]   (needs ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
cargo build --release --quiet
R=./target/release/cnnpack
D=${CNNPACK_DATA:-../shared/data}
runs="--runs 5 --budget 20"

# Compressed variants (refined sketching, every conv/fc layer sketched).
$R compress sketch zoo:alexnet -o "$out/alexnet-m2.cnnpack" --bases 2 > "$out/alexnet-m2.txt"
$R compress sketch zoo:resnet18 -o "$out/resnet18-m2.cnnpack" --bases 2 > "$out/resnet18-m2.txt"

$R bench --peak --device gpu,cpu --json "$out/peak.json" | tee "$out/peak.txt"
$R bench zoo:resnet18 --peak --device gpu,cpu --batch 1,8 $runs --layers 25 --json "$out/resnet18.json" | tee "$out/resnet18.txt"
$R bench "$out/resnet18-m2.cnnpack" --peak --device gpu,cpu --batch 1,8 $runs --layers 25 --json "$out/resnet18-m2.json" | tee "$out/resnet18-m2.txt"
$R bench "$D/imagenet/squeezenet1.0/squeezenet1.0.onnx" --peak --device gpu,cpu --batch 1,8 $runs --layers 8 --json "$out/squeezenet.json" | tee "$out/squeezenet.txt"
$R bench zoo:alexnet --peak --device gpu,cpu --batch 1,8 $runs --layers 8 --json "$out/alexnet.json" | tee "$out/alexnet.txt"
$R bench "$out/alexnet-m2.cnnpack" --peak --device gpu,cpu --batch 1,8 $runs --layers 8 --json "$out/alexnet-m2.json" | tee "$out/alexnet-m2.txt"
