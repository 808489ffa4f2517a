#!/usr/bin/env python3
"""End-to-end MNIST comparison: time to the same test accuracy, noisescale against PyTorch.

Reads the per-epoch JSON of `pytorch_ref.py --mnist-decay-lr` (the reference) and the
`metrics.jsonl` of noisescale runs, and prints for each run its final accuracy, total wall time
and the wall time at the end of the first epoch that reaches each target accuracy, with the ratio
to PyTorch decay-lr's time to the same target. Targets: 97.0%, 97.5% and PyTorch's own final
accuracy (the issue's "decay-lr's accuracy"). Standard library only.

Usage: python3 bench/e2e.py TORCH_JSON RUN_DIR [RUN_DIR ...]
"""
import json
import sys
from pathlib import Path


def torch_epochs(path):
    data = json.loads(Path(path).read_text())
    return [(e["test_accuracy"], e["wall_seconds"]) for e in data["epochs"]]


def our_epochs(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["test_accuracy"], r["wall_seconds"]) for r in rows], rows[-1]["updates"]


def time_to(epochs, target):
    """(wall seconds, 1-based epoch) at the end of the first epoch with accuracy >= target."""
    for i, (acc, wall) in enumerate(epochs):
        if acc >= target - 1e-9:
            return wall, i + 1
    return None, None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ref = torch_epochs(sys.argv[1])
    runs = [("PyTorch decay-lr", ref, None)]
    for d in sys.argv[2:]:
        epochs, updates = our_epochs(d)
        runs.append((f"noisescale {Path(d).name}", epochs, updates))
    targets = [0.970, 0.975, ref[-1][0]]
    names = ["97.0%", "97.5%", f"{100 * ref[-1][0]:.2f}% (PyTorch final)"]
    head = "| run | final acc. | total wall (s) | vs PyTorch |"
    head += "".join(f" to {n} (s, epoch) | vs PyTorch |" for n in names) + " updates |"
    print(head)
    print("|---" + "|--:" * (3 + 2 * len(targets) + 1) + "|")
    for name, epochs, updates in runs:
        cells = [name, f"{100 * epochs[-1][0]:.2f}%", f"{epochs[-1][1]:.1f}", f"{epochs[-1][1] / ref[-1][1]:.2f}"]
        for t in targets:
            wall, epoch = time_to(epochs, t)
            ref_wall, _ = time_to(ref, t)
            if wall is None:
                cells += ["not reached", "—"]
            else:
                cells += [f"{wall:.1f} ({epoch})", f"{wall / ref_wall:.2f}" if ref_wall else "—"]
        cells.append(str(updates) if updates is not None else "28140")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
