#!/usr/bin/env bash
# The peers table of docs/benchmarks-archive.md in one run: the same ONNX files (SqueezeNet v1.0
# from the data folder, zoo ResNet-18 and AlexNet exported by `cnnpack export`), batch 1
# and 8, the same thread count, timed by ONNX Runtime (benches/ort_bench.py, skipped with a
# note when it is not installed), then tract, cnnpack CPU and cnnpack GPU
# (benches/peers.rs, one criterion run). Usage: benches/peers.sh [OUT_DIR]
# Env: CNNPACK_DATA, CNNPACK_THREADS (default: nproc), CNNPACK_PEERS_ENGINES,
# CNNPACK_PEERS_BATCH, CNNPACK_PEERS_GPU_BATCH, CNNPACK_PEERS_SECONDS (see benches/peers.rs),
# CARGO_TARGET_DIR (e.g. a separate folder for the tract build).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out/peers}
mkdir -p "$out"
D=${CNNPACK_DATA:-../shared/data}
threads=${CNNPACK_THREADS:-$(nproc)}
batch=${CNNPACK_PEERS_BATCH:-1,8}
T=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
R=$T/release/cnnpack
$R export zoo:resnet18 -o "$out/resnet18.onnx"
$R export zoo:alexnet -o "$out/alexnet.onnx"
squeeze="$D/imagenet/squeezenet1.0/squeezenet1.0.onnx"
{ date -u; nproc; uptime; } | tee "$out/load.txt"
python3 benches/ort_bench.py --threads "$threads" --batch "$batch" --json "$out/ort.json" \
    squeezenet="$squeeze" resnet18="$out/resnet18.onnx" alexnet="$out/alexnet.onnx" | tee "$out/ort.txt"
CNNPACK_DATA="$D" CNNPACK_PEERS_DIR="$out" CNNPACK_THREADS="$threads" CNNPACK_PEERS_BATCH="$batch" \
    cargo bench --bench peers --features peers -- --noplot 2>&1 | tee "$out/peers.txt"
uptime | tee -a "$out/load.txt"
gpu=$(grep -m1 'cnnpack-gpu adapter:' "$out/peers.txt" | sed 's/.*adapter: //' || true)
python3 benches/peers_table.py --criterion "$T/criterion" --ort "$out/ort.json" \
    --batch "$batch" --gpu-name "cnnpack GPU (${gpu:-none})" --json "$out/peers.json" | tee "$out/table.md"
