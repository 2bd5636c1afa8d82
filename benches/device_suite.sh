#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one command, for a lent machine with a real
# GPU (the `device` tool) that has no Rust toolchain: it runs binaries built beforehand.
#
# Prepare (on the build machine, from the repo root):
#   benches/device_suite.sh --prepare      # builds, strips and copies into .dev/
# Run (on the GPU machine, from the repo root; OUT defaults to ./device-out):
#   benches/device_suite.sh [STAGES]       # default: all stages, comma-separated
#
# Stages: env (driver, Vulkan ICDs, adapter), tests (the GPU test binaries), peak, resnet18,
# convkernels (ResNet-18 again with the first tiled conv kernel, with conv_gemm_wide, and
# with unsplit K), squeezenet, alexnet (GPU sweeps of sketch m, INQ b, sparse density at
# batch 1), fcsplit (sketch m = 2 and INQ b = 2 with the compressed fc kernels' K
# unsplit), pow2fc (fc6 dense vs pow2 b = 2..5 in one model, pow2_fc_lut's prefetch depths
# 1-3 side by side; INQ fc kernels on AlexNet:
# pow2_fc_lut at b = 2..5, batch 1 and 8, the uniform-window pow2_fc; dense fc at batch 16
# and 32), peers (ONNX Runtime if installed,
# tract, cnnpack CPU, cnnpack GPU in one criterion run, then the merged table).
# The GPU machine's image has NVIDIA's Vulkan ICD but no loader: carry .gl/ holding
# Debian's libvulkan1 and glvnd .debs (the device tool's README says how to download them);
# they are unpacked first.
# Everything lands under $OUT/suite/ and is packed into $OUT/suite.tgz; the console gets
# short summaries (the device tool returns only the tail of the output).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    T=${CARGO_TARGET_DIR:-target}
    cargo build --release --quiet
    cargo bench --bench peers --features peers --no-run 2>&1 | tail -1
    peers=$(ls -t "$T"/release/deps/peers-* | grep -v '\.d$' | head -1)
    rm -rf .dev/bin && mkdir -p .dev/bin
    cp "$T/release/cnnpack" .dev/bin/cnnpack
    cp "$peers" .dev/bin/peers
    # GPU test binaries: the kernels checked against the CPU reference on the real GPU.
    for t in gpu_ops gpu_sketch inq dns; do
        exe=$(cargo test --no-run --test "$t" 2>&1 | sed -n 's/.*Executable.*(\(.*\))/\1/p' | tail -1)
        cp "$exe" ".dev/bin/test-$t"
    done
    strip .dev/bin/*
    # xz: the device tool carries at most 64 MiB.
    tar cJf .dev/bin.tar.xz -C .dev bin && rm -rf .dev/bin
    D=${CNNPACK_DATA:-../shared/data}
    mkdir -p .dev/data/imagenet/squeezenet1.0
    cp "$D/imagenet/squeezenet1.0/squeezenet1.0.onnx" .dev/data/imagenet/squeezenet1.0/
    du -sh .dev
    exit 0
fi

if [[ -f .dev/bin.tar.xz ]]; then
    tar xJf .dev/bin.tar.xz -C .dev
fi
stages=${1:-env,tests,peak,resnet18,convkernels,squeezenet,alexnet,fcsplit,pow2fc,peers}
OUT=${OUT:-device-out}
S="$OUT/suite"
mkdir -p "$S"
B=.dev/bin/cnnpack
export CNNPACK_REQUIRE_GPU=1
threads=$(nproc)
has() { [[ ",$stages," == *",$1,"* ]]; }
stage() { echo "=== $1 ($(date -u +%T))"; }

# Vulkan loader: the image has the NVIDIA driver but may lack libvulkan.so.1; the device
# tool's README says to carry the Debian packages in .gl and unpack them first.
if compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if ! $B bench --peak --device gpu --runs 3 --budget 1 >"$S/probe.txt" 2>&1; then
    echo "no adapter with the default ICDs; retrying with the NVIDIA ICD file"
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

if has env; then
    stage env
    {
        nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw --format=csv
        ldconfig -p | grep -i vulkan
        ls -l /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
        nproc; uname -a
    } >"$S/env.txt" 2>&1
    head -3 "$S/env.txt"
fi
if has tests; then
    # The GPU kernels against the CPU reference, on this GPU (CI runs them on lavapipe).
    for t in gpu_ops:"" gpu_sketch:"" inq:gpu dns:gpu; do
        stage "test ${t%%:*} ${t#*:}"
        timeout 120 ".dev/bin/test-${t%%:*}" ${t#*:} --test-threads 8 >"$S/test-${t%%:*}.txt" 2>&1
        echo "rc $?"; grep -E "^test result|panicked|FAILED" "$S/test-${t%%:*}.txt" | head -5
    done
fi
if has peak; then
    stage peak
    timeout 90 $B bench --peak --device gpu,cpu 2>&1 | tee "$S/peak.txt" | tail -12
fi
if has resnet18; then
    stage resnet18
    timeout 120 $B bench zoo:resnet18 --peak --device gpu --batch 1,8 --layers 40 --budget 3 \
        --json "$S/resnet18.json" >"$S/resnet18.txt" 2>&1
    grep -E "conv|p50|GFLOP|peak" "$S/resnet18.txt" | head -60
fi
if has convkernels; then
    # ResNet-18 again with the first tiled kernel, with 64x128 tiles, with K never split.
    for v in CNNPACK_CONV_KERNEL=tiled CNNPACK_CONV_KERNEL=gemm-wide CNNPACK_CONV_SPLITK=1; do
        stage "resnet18 $v"
        env "$v" timeout 60 $B bench zoo:resnet18 --peak --device gpu --batch 1,8 --layers 40 \
            --budget 2 --json "$S/resnet18-${v#*=}.json" >"$S/resnet18-${v#*=}.txt" 2>&1
        grep -E "p50" "$S/resnet18-${v#*=}.txt"
    done
fi
if has squeezenet; then
    stage squeezenet
    timeout 60 $B bench .dev/data/imagenet/squeezenet1.0/squeezenet1.0.onnx --peak --device gpu \
        --batch 1,8 --budget 2 --json "$S/squeezenet.json" >"$S/squeezenet.txt" 2>&1
    grep -E "p50|images" "$S/squeezenet.txt" | head -8
fi
if has alexnet; then
    for kind in sketch inq sparse; do
        stage "alexnet $kind"
        timeout 120 $B bench zoo:alexnet --sweep "$kind" --peak --device gpu --batch 1 --budget 2 \
            --layers 12 --json "$S/alexnet-$kind.json" >"$S/alexnet-$kind.txt" 2>&1
        grep -E "fc|speed|x " "$S/alexnet-$kind.txt" | head -30
    done
fi
if has fcsplit; then
    # The compressed fc kernels with K never split (the first kernels' shape), same run.
    for kind in sketch inq; do
        stage "alexnet $kind CNNPACK_FC_SPLITK=1"
        CNNPACK_FC_SPLITK=1 timeout 90 $B bench zoo:alexnet --sweep "$kind" --values 2 --peak \
            --device gpu --batch 1 --budget 2 --layers 12 --json "$S/alexnet-$kind-s1.json" \
            >"$S/alexnet-$kind-s1.txt" 2>&1
        grep -E "fc|speed|x " "$S/alexnet-$kind-s1.txt" | tail -4
    done
fi
# fc layers of a bench JSON: encoding, kernel, ms per run (dense and sweep).
fc_table() {
    python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for run in d["runs"]:
    r = run["result"]
    fcs = [l for l in r["layers"] if l["op"] == "Linear"]
    cells = " ".join(f'{l["name"].split("+")[0]} {l["ms"]:.4f}' for l in fcs)
    kernel = fcs[0]["kernel"] if fcs else "-"
    print(f'{run["model"]:<22} b{r["batch"]} {kernel:<26} {cells}')
PY
}
if has pow2fc; then
    # fc6 dense and pow2 b = 2..5 as branches of one model (same clocks in every run).
    stage "fc6 dense vs pow2, one model"
    # Prefetch depths 1-3 of pow2_fc_lut side by side (one model per depth, same rounds).
    CNNPACK_POW2_FC_PREFETCH_SWEEP=1,2,3 timeout 90 .dev/bin/test-inq pow2_fc_timing --ignored \
        --nocapture >"$S/pow2fc-timing.txt" 2>&1
    grep -E "  (dense|pow2)|batch" "$S/pow2fc-timing.txt"
    # The same AlexNet runs timed inside one pass: per-layer times without a pass's
    # begin and end (sequential layers, so no overlap to misattribute).
    stage "alexnet inq, layers timed in one pass"
    CNNPACK_PROFILE=in-pass timeout 60 $B bench zoo:alexnet --sweep inq --values 4 \
        --device gpu --batch 1,8 --budget 2 --layers 12 --json "$S/pow2fc-inpass.json" \
        >"$S/pow2fc-inpass.txt" 2>&1
    fc_table "$S/pow2fc-inpass.json"
    stage "alexnet inq pow2_fc_lut"
    timeout 150 $B bench zoo:alexnet --sweep inq --peak --device gpu --batch 1,8 --budget 2 \
        --layers 12 --json "$S/pow2fc-lut.json" >"$S/pow2fc-lut.txt" 2>&1
    fc_table "$S/pow2fc-lut.json"
    stage "alexnet inq 4 CNNPACK_POW2_FC=window"
    CNNPACK_POW2_FC=window timeout 60 $B bench zoo:alexnet --sweep inq --values 4 --device gpu \
        --batch 1 --budget 2 --layers 12 --json "$S/pow2fc-window.json" >"$S/pow2fc-window.txt" 2>&1
    fc_table "$S/pow2fc-window.json"
    # Dense Linear: the 8-item GEMV at batch 16, conv_gemm at 32.
    stage "alexnet dense batch 16, 32"
    timeout 60 $B bench zoo:alexnet --device gpu --batch 16,32 --budget 2 --layers 12 \
        --json "$S/alexnet-b16-32.json" >"$S/alexnet-b16-32.txt" 2>&1
    fc_table "$S/alexnet-b16-32.json"
fi
if has peers; then
    stage peers
    P="$S/peers"
    mkdir -p "$P"
    $B export zoo:resnet18 -o "$P/resnet18.onnx" && $B export zoo:alexnet -o "$P/alexnet.onnx"
    squeeze=.dev/data/imagenet/squeezenet1.0/squeezenet1.0.onnx
    { date -u; nproc; uptime; } >"$P/load.txt"
    timeout 150 python3 benches/ort_bench.py --threads "$threads" --batch 1,8 --budget 5 \
        --json "$P/ort.json" squeezenet="$squeeze" resnet18="$P/resnet18.onnx" \
        alexnet="$P/alexnet.onnx" >"$P/ort.txt" 2>&1
    tail -8 "$P/ort.txt"
    CNNPACK_DATA=.dev/data CNNPACK_PEERS_DIR="$P" CNNPACK_THREADS="$threads" \
        CNNPACK_PEERS_SECONDS=${CNNPACK_PEERS_SECONDS:-2} CRITERION_HOME="$P/criterion" \
        timeout 300 .dev/bin/peers --bench --noplot >"$P/peers.txt" 2>&1
    grep -E "adapter|time:" "$P/peers.txt" | head -30
    uptime >>"$P/load.txt"
    gpu=$(grep -m1 'cnnpack-gpu adapter:' "$P/peers.txt" | sed 's/.*adapter: //' || true)
    python3 benches/peers_table.py --criterion "$P/criterion" --ort "$P/ort.json" \
        --batch 1,8 --gpu-name "cnnpack GPU (${gpu:-none})" --json "$P/peers.json" | tee "$P/table.md"
fi
# The device tool returns at most 8 files: one archive, without the exported models.
tar czf "$OUT/suite.tgz" --exclude='*.onnx' -C "$OUT" suite && rm -rf "$S"
echo "=== done ($(date -u +%T))"
