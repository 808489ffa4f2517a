#!/usr/bin/env bash
# The cifar10-subset preset in both engines, seed by seed: noisescale (`train --preset
# cifar10-subset --schedule KIND --seed S`) and bench/cifar_torch.py (the independent PyTorch
# re-implementation), one run of each engine at a time side by side, each on one thread (the
# CPU's two cores shared). Finished runs are kept and skipped; bench/cifar_table.py makes the table.
#
# Usage: bench/cifar_subset.sh OUT "decay-lr increase-batch" "0 1 2 3" [--bin target/release/noisescale]
#        [--data ../shared/data] [--python python3] [--engines "noisescale pytorch"]
set -euo pipefail
OUT=${1:?OUT}; KINDS=${2:?schedule kinds}; SEEDS=${3:?seeds}; shift 3
BIN=target/release/noisescale; DATA=../shared/data; PY=python3; ENGINES="noisescale pytorch"
while [ $# -gt 0 ]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --engines) ENGINES=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT/noisescale" "$OUT/pytorch"
for kind in $KINDS; do
    "$BIN" schedule --preset cifar10-subset --schedule "$kind" --data "$DATA" --json > "$OUT/$kind.schedule.json"
done
ours() {
    for seed in $SEEDS; do for kind in $KINDS; do
        dir="$OUT/noisescale/$kind-seed$seed"
        [ -f "$dir/summary.json" ] && continue
        RAYON_NUM_THREADS=1 "$BIN" train --preset cifar10-subset --schedule "$kind" --seed "$seed" \
            --data "$DATA" --out "$dir" -q --overwrite
        echo "noisescale $kind seed $seed: $(grep -o '"final_test_accuracy": [0-9.]*' "$dir/summary.json")"
    done; done
}
theirs() {
    for seed in $SEEDS; do for kind in $KINDS; do
        out="$OUT/pytorch/$kind-seed$seed.json"
        [ -f "$out" ] && continue
        "$PY" bench/cifar_torch.py --schedule "$OUT/$kind.schedule.json" --seed "$seed" --threads 1 \
            --data "$DATA/cifar10-subset" --out "$out.tmp" 2>> "$OUT/pytorch/log.txt"
        mv "$out.tmp" "$out"
        echo "pytorch $kind seed $seed: $(tail -c 300 "$out" | tr -d '\n ' | grep -o '"test_accuracy":[0-9.]*' | tail -1)"
    done; done
}
pids=()
case " $ENGINES " in *" noisescale "*) ours & pids+=($!) ;; esac
case " $ENGINES " in *" pytorch "*) theirs & pids+=($!) ;; esac
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
