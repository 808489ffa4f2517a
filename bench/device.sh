#!/usr/bin/env bash
# Issue 19's whole CPU check in one call, for a lent machine with many cores (the accelerator
# machines here: 16 cores of an Intel Xeon beside one GPU, 15 minutes in all). Not used by tests
# or CI. On the 2-core AMD EPYC, one after another with --rounds 1: the step rows about 2.5 min
# (the MLP's matrix products 34 s more with --rounds 3), the MNIST part (bench/mnist-e2e.sh)
# 4 min 55 s. At once, the longest job sets the time (about 5 minutes expected with --rounds 3;
# not yet run on a many-core machine).
#
#   bench/device.sh [--bin PATH] [--python PY] [--data DIR] [--out DIR] [--rounds N]
#                   [--gpu] [--budget SECONDS]
#
# --bin runs a noisescale binary built elsewhere (`cargo build --release`, or `--features wgpu`
# for --gpu), for a machine without a Rust toolchain; --python is a Python with torch (default
# python3); --gpu also runs bench/gpu.sh on the cores left over (a wgpu build, --budget for its
# training runs).
#
# With 8 cores or more, four jobs run at once, each pinned with `taskset` to 2 cores of its own,
# both sides of every ratio on the same 2 cores (issue 19's setting: 2 threads):
#   A (cores 0-1): training-step rows of the MLP and the CNN against PyTorch, --rounds interleaved,
#                  and the MLP's matrix products alone against torch.matmul (`--only
#                  train-step,matmul`: how much of the MLP's ratio is gemm's kernels against MKL's);
#   B (cores 2-3): training-step rows of ResNet-8 and WRN-16-4 against PyTorch;
#   C (cores 4-5): the mnist preset end to end, its schedules in both (bench/mnist-e2e.sh);
#   D (cores 6-7): B again with NOISESCALE_DIRECT_CONV=off (im2col + GEMM for every
#                  convolution), to see whether the direct kernels (AVX-512 where the CPU has
#                  it) beat gemm's on that CPU too.
# With fewer cores they run one after another on cores 0-1. The jobs share the L3 cache and
# memory, so a ratio is what each side got under the same load.
#
# Writes OUT/cpu.txt (the machine), OUT/steps-mlp-cnn.txt, OUT/steps-resnet-wrn.txt,
# OUT/steps-resnet-wrn-im2col.txt, OUT/e2e.txt and, with --gpu, OUT/gpu/ (default
# OUT = runs/device).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=
PY=python3
DATA=../shared/data
OUT=runs/device
ROUNDS=3
GPU=0
BUDGET=240
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN="$2"; shift ;;
        --python) PY="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --gpu) GPU=1 ;;
        --budget) BUDGET="$2"; shift ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$BIN" ]; then
    cargo build --release
    BIN=target/release/noisescale
fi
"$PY" -c 'import torch' || { echo "no torch in $PY (--python)" >&2; exit 1; }
mkdir -p "$OUT"

CORES=$(nproc)
{
    date -u
    grep -m1 'model name' /proc/cpuinfo || true
    grep -m1 -o 'avx512f' /proc/cpuinfo || echo "no avx512f"
    echo "cores: $CORES"
    "$PY" -c 'import torch; print("torch", torch.__version__)'
    "$BIN" --version
} | tee "$OUT/cpu.txt"

# `pin CORES CMD...`: CMD on those cores only.
pin() {
    local cores="$1"
    shift
    taskset -c "$cores" "$@"
}

# `steps CORES MODELS ONLY OUT [VAR=VALUE...]`: those rows (bench's --only) against PyTorch, with
# the given environment.
steps() {
    local cores="$1" models="$2" only="$3" out="$4"
    shift 4
    env "$@" taskset -c "$cores" "$BIN" bench --threads 2 --only "$only" --no-gns-cost --models "$models" \
        --steps 10 --min-seconds 2 --max-seconds 8 --rounds "$ROUNDS" --pytorch --python "$PY" \
        --json "${out%.txt}.json" >"$out" 2>&1
}

e2e() {
    local cores="$1" out="$2"
    pin "$cores" bench/mnist-e2e.sh --bin "$BIN" --python "$PY" --data "$DATA" --threads 2 \
        --out "$OUT/e2e" >"$out" 2>&1
}

IM2COL=NOISESCALE_DIRECT_CONV=off
if [ "$CORES" -ge 8 ]; then
    steps 0-1 mlp-256,cnn train-step,matmul "$OUT/steps-mlp-cnn.txt" &
    steps 2-3 resnet-8,wrn-16-4 train-step "$OUT/steps-resnet-wrn.txt" &
    e2e 4-5 "$OUT/e2e.txt" &
    steps 6-7 resnet-8,wrn-16-4 train-step "$OUT/steps-resnet-wrn-im2col.txt" "$IM2COL" &
    if [ "$GPU" = 1 ] && [ "$CORES" -ge 10 ]; then
        pin "8-$((CORES - 1))" bench/gpu.sh --bin "$BIN" --threads "$((CORES - 8))" \
            --pytorch "$PY" --data "$DATA" --out "$OUT/gpu" --budget "$BUDGET" \
            >"$OUT/gpu.txt" 2>&1 &
    fi
    wait
else
    steps 0-1 mlp-256,cnn train-step,matmul "$OUT/steps-mlp-cnn.txt"
    steps 0-1 resnet-8,wrn-16-4 train-step "$OUT/steps-resnet-wrn.txt"
    steps 0-1 resnet-8,wrn-16-4 train-step "$OUT/steps-resnet-wrn-im2col.txt" "$IM2COL"
    e2e 0-1 "$OUT/e2e.txt"
    if [ "$GPU" = 1 ]; then
        bench/gpu.sh --bin "$BIN" --threads "$CORES" --pytorch "$PY" --data "$DATA" \
            --out "$OUT/gpu" --budget "$BUDGET" >"$OUT/gpu.txt" 2>&1
    fi
fi

for f in cpu steps-mlp-cnn steps-resnet-wrn steps-resnet-wrn-im2col e2e gpu; do
    if [ -f "$OUT/$f.txt" ]; then
        echo "== $f"
        cat "$OUT/$f.txt"
    fi
done
