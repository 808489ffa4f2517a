#!/usr/bin/env bash
# Benchmarks noisescale against PyTorch eager on this machine's CPU. Not used by tests or CI.
#
#   bench/run.sh --install      # once: create bench/.venv and `pip install torch` from PyPI
#   bench/run.sh [--threads N] [--steps N] [--rounds N] [--no-mnist] [--data DIR]
#
# The PyPI torch wheel for Linux x86-64 is the CUDA build (torch 2.15.0+cu132 when this was
# written): it runs on the CPU but pulls the nvidia-* wheels, about 5 GB installed in bench/.venv.
# Only plain PyPI is assumed reachable (no --index-url for the CPU-only wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=bench/.venv
PY="$VENV/bin/python"
THREADS=2
STEPS=20
ROUNDS=3
DATA=../shared/data
MNIST=1
INSTALL=0

while [ $# -gt 0 ]; do
    case "$1" in
        --install) INSTALL=1 ;;
        --threads) THREADS="$2"; shift ;;
        --steps) STEPS="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --no-mnist) MNIST=0 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$INSTALL" = 1 ]; then
    python3 -m venv "$VENV"
    "$PY" -m pip install torch
    "$PY" -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())'
    du -sh "$VENV"
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "no $PY: run bench/run.sh --install first" >&2
    exit 1
fi

export RAYON_NUM_THREADS="$THREADS"
date
grep -m1 'model name' /proc/cpuinfo || true
echo "cores: $(nproc)"
rustc --version
"$PY" -c 'import torch; print("torch", torch.__version__)'
uptime

mkdir -p bench/out
# Training rows and PyTorch's, interleaved --rounds times, medians: this machine's speed drifts.
cargo run --release -- bench --threads "$THREADS" --steps "$STEPS" --rounds "$ROUNDS" --data "$DATA" \
    --pytorch --python "$PY" --json bench/out/bench.json

if [ "$MNIST" = 1 ]; then
    # End to end, "time to the same test accuracy": the mnist preset's schedules in both.
    cargo build --release
    bench/mnist-e2e.sh --bin target/release/noisescale --python "$PY" --data "$DATA" \
        --threads "$THREADS" --out bench/out
fi
