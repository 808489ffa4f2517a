#!/usr/bin/env bash
# The GPU check, for a machine with a real GPU and a Vulkan (or Metal/DX12) driver: about 10
# minutes after the build. Not used by tests or CI (CI runs the wgpu tests on lavapipe).
#
#   bench/gpu.sh [--device wgpu[:N]] [--data DIR] [--out DIR] [--budget SECONDS]
#                [--bin PATH] [--threads N] [--pytorch PYTHON]
#
# --bin runs a noisescale binary built elsewhere (`cargo build --release --features wgpu`), for a
# GPU machine without a Rust toolchain; --threads sets flex's threads beside the GPU (all cores);
# --pytorch times PyTorch's same rows on CUDA (`bench/pytorch_ref.py --device cuda`) with PYTHON.
#
# 1. `noisescale bench` training-step rows on the GPU beside flex on all CPU cores.
# 2. The paper-cifar10 preset (WRN-16-4, ghost BN 128) per schedule, with its milestones moved
#    to epochs 1, 2, 3 so that each of 4 epochs runs one phase: decay-lr at B = 128 (its ε
#    changes, B does not), increase-batch at B = 128, 640, 3,200, 16,000 (micro-batches of 512),
#    hybrid at 128, 640, 3,200, 3,200 (cap 5,120). Each run gets a share of --budget and is
#    stopped (SIGINT, checkpoint written) when it runs out; the table shows the epochs that
#    finished. Uses the full CIFAR-10 when DIR holds cifar-10-batches-bin, else a synthetic set
#    of the same shapes (50,000 + 2,000 images of 3×32×32): epoch times are the same, accuracies
#    meaningless. Each run's first epoch includes burn's autotuning: every new shape's candidate
#    kernels are benchmarked once per process (the first update of a short run took 45 s on an
#    H200), so compare the later epochs.
#
# Writes OUT/bench.txt, OUT/bench.json, OUT/epochs.txt and the runs (default OUT = runs/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=wgpu
DATA=../shared/data
OUT=runs/gpu
BUDGET=420
BIN=
THREADS=$(nproc)
PYTORCH=
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        --threads) THREADS="$2"; shift ;;
        --pytorch) PYTORCH="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
if [ -z "$BIN" ]; then
    cargo build --release --features wgpu
    BIN=target/release/noisescale
fi
mkdir -p "$OUT"

echo "== training steps: $DEVICE beside flex ($THREADS threads)" | tee "$OUT/bench.txt"
"$BIN" bench --only train-step --no-gns-cost --device "flex,$DEVICE" --threads "$THREADS" \
    --steps 10 --min-seconds 1 --max-seconds 20 --json "$OUT/bench.json" | tee -a "$OUT/bench.txt"
if [ -n "$PYTORCH" ]; then
    echo "== the same rows in PyTorch on CUDA" | tee -a "$OUT/bench.txt"
    "$PYTORCH" bench/pytorch_ref.py --device cuda --threads "$THREADS" --steps 20 --min-seconds 2 \
        --max-seconds 10 --json "$OUT/torch-cuda.json" 2>&1 | tee -a "$OUT/bench.txt"
fi

if [ -d "$DATA/cifar-10-batches-bin" ]; then
    DATA_TOML="dataset = \"cifar10\"
dir = \"$DATA\"
augment = { crop-flip = { pad = 4 } }"
    SOURCE="CIFAR-10 from $DATA"
else
    DATA_TOML='dataset = "synthetic"
synthetic = { train = 50000, test = 2000, classes = 10, shape = [3, 32, 32] }
augment = { crop-flip = { pad = 4 } }'
    SOURCE="synthetic 50,000 × 3×32×32 (no cifar-10-batches-bin in $DATA)"
fi

# The preset with one epoch per phase and the data above; everything else as shipped.
CONFIG="$OUT/paper-cifar10-phases.toml"
awk -v data="$DATA_TOML" '
    /^\[data\]/ { print; print data; skip = 1; next }
    /^\[/ { skip = 0 }
    skip { next }
    /^epochs = / { print "epochs = 4"; next }
    /^milestones = / { print "milestones = [1, 2, 3]"; next }
    { print }
' presets/paper-cifar10.toml > "$CONFIG"

KINDS=(decay-lr increase-batch hybrid)
SHARE=$((BUDGET / ${#KINDS[@]}))
for kind in "${KINDS[@]}"; do
    echo "== paper-cifar10, $kind, on $DEVICE (at most ${SHARE}s)"
    timeout --signal=INT --kill-after=60 "$SHARE" \
        "$BIN" train "$CONFIG" --schedule "$kind" --device "$DEVICE" --out "$OUT/$kind" \
        --overwrite || echo "($kind stopped after ${SHARE}s)"
done

{
    echo "paper-cifar10 (WRN-16-4), one epoch per phase, on $DEVICE; data: $SOURCE"
    echo "| schedule | epoch | B | ε | updates | epoch s | img/s | test acc. |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|"
    for kind in "${KINDS[@]}"; do
        [ -f "$OUT/$kind/metrics.jsonl" ] || continue
        python3 - "$kind" "$OUT/$kind/metrics.jsonl" <<'EOF'
import json, sys
kind, path = sys.argv[1], sys.argv[2]
for line in open(path):
    m = json.loads(line)
    print(f"| {kind} | {m['epoch']} | {m['batch_size']} | {m['lr']:g} | {m['updates']} | "
          f"{m['epoch_seconds']:.1f} | {m['samples_per_second']:.0f} | "
          f"{100 * m['test_accuracy']:.2f} |")
EOF
    done
} | tee "$OUT/epochs.txt"
