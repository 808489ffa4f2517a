#!/usr/bin/env bash
# Data-parallel benchmark: decay-lr and increase-batch on the MNIST preset with W ranks
# (default 2) over MPI, then wall time, all-reduce calls and communication seconds of each and
# their ratio. Needs the `mpi` feature (scripts/setup installs OpenMPI).
# Usage: bench/mpi.sh [RANKS] [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-2}
DATA=${2:-../shared/data}
OUT=runs/bench-mpi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --features mpi -q
mkdir -p "$OUT"
for kind in decay-lr increase-batch; do
  sed "s/^kind = \"decay-lr\"/kind = \"$kind\"/; s/^name = \"mnist\"/name = \"mnist-$kind-w$W\"/" \
    presets/mnist.toml > "$OUT/$kind.toml"
  mpirun -np "$W" --oversubscribe --bind-to none target/release/noisescale \
    train "$OUT/$kind.toml" --data "$DATA" --out "$OUT/$kind" -q
done
python3 - "$OUT" "$W" <<'PY'
import json, sys
out, w = sys.argv[1], sys.argv[2]
rows = {}
for kind in ("decay-lr", "increase-batch"):
    s = json.load(open(f"{out}/{kind}/summary.json"))
    rows[kind] = s
    print(f"{kind:15s} W={w}  updates {s['updates']:6d}  all-reduce calls {s['allreduce_calls']:6d}  "
          f"comm {s['comm_seconds']:7.2f}s  wall {s['wall_seconds']:7.1f}s  "
          f"test acc {100*s['final_test_accuracy']:.2f}%")
d, i = rows["decay-lr"], rows["increase-batch"]
print(f"increase-batch / decay-lr: all-reduce calls {i['allreduce_calls']/d['allreduce_calls']:.3f}, "
      f"comm seconds {i['comm_seconds']/max(d['comm_seconds'],1e-9):.3f}, wall {i['wall_seconds']/d['wall_seconds']:.3f}")
PY
