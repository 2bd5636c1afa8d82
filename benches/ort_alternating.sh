#!/usr/bin/env bash
# cnnpack CPU against ONNX Runtime on the same ONNX file, alternating in rounds so that
# both see the same machine state (this project's VM drifts by 20-40% over minutes;
# ratios from runs minutes apart are not ratios). Each round: ORT (benches/ort_bench.py,
# RUNS timed runs), then `cnnpack bench` (RUNS timed runs), for every model; the table
# gives each round's p50s and their ratio. Extra cnnpack files (compressed models) may be
# timed against an ORT file with NAME=ORT.onnx:CNNPACK_FILE.
#
# Usage: benches/ort_alternating.sh [-r ROUNDS] [-n RUNS] [-b BATCH] [-t THREADS] \
#            NAME=FILE.onnx[:CNNPACK_FILE] ...
# Needs python3 with onnxruntime and numpy (says so and stops when missing) and a
# release build (`cargo build --release`).
set -euo pipefail
rounds=3 runs=30 batch=1 threads=2
while getopts "r:n:b:t:" opt; do
    case $opt in
        r) rounds=$OPTARG ;;
        n) runs=$OPTARG ;;
        b) batch=$OPTARG ;;
        t) threads=$OPTARG ;;
        *) sed -n '2,13p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { sed -n '2,13p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
cnnpack=$here/target/release/cnnpack
[ -x "$cnnpack" ] || { echo "build first: cargo build --release" >&2; exit 1; }
python3 -c "import onnxruntime, numpy" 2>/dev/null || {
    echo "onnxruntime (python) not installed: pip install onnxruntime numpy" >&2
    exit 0
}
export RAYON_NUM_THREADS=$threads
echo "# $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
    "batch $batch, $threads threads, $runs runs per engine per round"
echo "| model | round | ONNX Runtime p50 ms | cnnpack CPU p50 ms | cnnpack / ORT |"
echo "|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
    for spec in "$@"; do
        name=${spec%%=*}
        files=${spec#*=}
        onnx=${files%%:*}
        ours=$onnx
        [ "$files" != "$onnx" ] && ours=${files#*:}
        ort=$(python3 "$here/benches/ort_bench.py" --threads "$threads" --batch "$batch" \
            --runs "$runs" "$name=$onnx" | awk -v n="$name" '$1 == n { print $3 }')
        cp=$("$cnnpack" bench "$ours" --device cpu --batch "$batch" --runs "$runs" \
            --layers 0 | sed -n 's/.* p50 \([0-9.]*\) ms.*/\1/p')
        ratio=$(awk -v a="$cp" -v b="$ort" 'BEGIN { printf "%.2fx", a / b }')
        echo "| $name | $round | $ort | $cp | $ratio |"
    done
done
