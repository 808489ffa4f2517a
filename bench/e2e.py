#!/usr/bin/env python3
"""End-to-end MNIST comparison: time to the same test accuracy, noisescale against PyTorch.

Reads the per-epoch JSON of `pytorch_ref.py --mnist-schedule` runs (the first one must be
decay-lr, the reference) and the `metrics.jsonl` of noisescale runs, and prints for each run its
final accuracy, total wall time and the wall time at the end of the first epoch that reaches each
target accuracy, with ratios to PyTorch decay-lr and to PyTorch running the same schedule.
Targets: 97.0%, 97.5% and PyTorch decay-lr's own final accuracy. Standard library only.

Usage: python3 bench/e2e.py TORCH_DECAY_LR_JSON [TORCH_JSON ...] RUN_DIR [RUN_DIR ...]
       (arguments ending in .json are PyTorch runs, the others noisescale run directories)
"""
import json
import sys
from pathlib import Path


def torch_run(path):
    data = json.loads(Path(path).read_text())
    name = data.get("schedule", "decay-lr")
    epochs = [(e["test_accuracy"], e["wall_seconds"]) for e in data["epochs"]]
    updates = data["epochs"][-1].get("updates")
    return name, epochs, updates


def our_run(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    info = Path(run_dir) / "run.json"
    name = json.loads(info.read_text()).get("schedule", Path(run_dir).name) if info.exists() else Path(run_dir).name
    return name, [(r["test_accuracy"], r["wall_seconds"]) for r in rows], rows[-1]["updates"]


def time_to(epochs, target):
    """(wall seconds, 1-based epoch) at the end of the first epoch with accuracy >= target."""
    for i, (acc, wall) in enumerate(epochs):
        if acc >= target - 1e-9:
            return wall, i + 1
    return None, None


def main():
    args = sys.argv[1:]
    torch_paths = [a for a in args if a.endswith(".json")]
    run_dirs = [a for a in args if not a.endswith(".json")]
    if not torch_paths or not run_dirs:
        sys.exit(__doc__)
    torch = [torch_run(p) for p in torch_paths]
    same = {name: epochs for name, epochs, _ in torch}
    ref_name, ref, _ = torch[0]
    runs = [(f"PyTorch {n}", n, e, u) for n, e, u in torch]
    runs += [(f"noisescale {n}", n, e, u) for n, e, u in map(our_run, run_dirs)]
    targets = [0.970, 0.975, ref[-1][0]]
    names = ["97.0%", "97.5%", f"{100 * ref[-1][0]:.2f}% ({ref_name} final)"]
    head = f"| run | final acc. | total wall (s) | vs PyTorch {ref_name} | vs PyTorch same schedule |"
    head += "".join(f" to {n} (s, epoch) | vs PyTorch {ref_name} |" for n in names) + " updates |"
    print(head)
    print("|---" + "|--:" * (4 + 2 * len(targets) + 1) + "|")
    for label, schedule, epochs, updates in runs:
        total = epochs[-1][1]
        twin = same.get(schedule)
        cells = [
            label,
            f"{100 * epochs[-1][0]:.2f}%",
            f"{total:.1f}",
            f"{total / ref[-1][1]:.2f}",
            f"{total / twin[-1][1]:.2f}" if twin else "—",
        ]
        for t in targets:
            wall, epoch = time_to(epochs, t)
            ref_wall, _ = time_to(ref, t)
            if wall is None:
                cells += ["not reached", "—"]
            else:
                cells += [f"{wall:.1f} ({epoch})", f"{wall / ref_wall:.2f}" if ref_wall else "—"]
        cells.append(str(updates) if updates is not None else "—")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
