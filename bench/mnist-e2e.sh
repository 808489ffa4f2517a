#!/usr/bin/env bash
# The mnist preset end to end against PyTorch, "time to the same test accuracy": its three
# schedules in PyTorch, driven by the phase tables noisescale itself runs, then
# `noisescale reproduce --preset mnist --seeds 1` (all its schedules), then bench/e2e.py's table.
# Used by bench/run.sh and bench/device.sh. Not used by tests or CI.
#
#   bench/mnist-e2e.sh --bin PATH --python PY [--data DIR] [--threads N] [--out DIR]
#
# Writes OUT/schedule-KIND.json, OUT/torch-mnist-KIND.json and OUT/reproduce-mnist/ (default
# OUT = bench/out); prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=
PY=
DATA=../shared/data
THREADS=2
OUT=bench/out
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN="$2"; shift ;;
        --python) PY="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$BIN" ] || [ -z "$PY" ]; then
    echo "--bin and --python are required" >&2
    exit 2
fi

mkdir -p "$OUT"
for kind in decay-lr increase-batch hybrid; do
    "$BIN" schedule --preset mnist --schedule "$kind" --json >"$OUT/schedule-$kind.json"
    "$PY" bench/pytorch_ref.py --mnist-schedule "$OUT/schedule-$kind.json" --name "$kind" \
        --threads "$THREADS" --data "$DATA/mnist" --json "$OUT/torch-mnist-$kind.json"
done
# A fresh directory: `reproduce` would otherwise reuse finished runs instead of timing them.
rm -rf "$OUT/reproduce-mnist"
RAYON_NUM_THREADS="$THREADS" "$BIN" reproduce --preset mnist --data "$DATA" --seeds 1 \
    --out "$OUT/reproduce-mnist"
python3 bench/e2e.py "$OUT"/torch-mnist-{decay-lr,increase-batch,hybrid}.json \
    "$OUT"/reproduce-mnist/runs/*
