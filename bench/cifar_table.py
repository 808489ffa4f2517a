#!/usr/bin/env python3
"""The table of `bench/cifar_subset.sh`'s runs: final test accuracy per schedule, engine and seed,
mean ± sample standard deviation, the standard error of each mean, and noisescale's mean minus
PyTorch's in units of the difference's standard error (√(se₁² + se₂²)). Also the updates and the
wall time per run (each engine on one thread, the two sharing the CPU's two cores).

Usage: python3 bench/cifar_table.py OUT
"""

import json
import math
import sys
from pathlib import Path


def stats(xs):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, sd / math.sqrt(n)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    runs = {}  # (kind, engine) -> {seed: (acc, updates, wall)}
    for f in sorted((out / "noisescale").glob("*-seed*/summary.json")):
        s = json.loads(f.read_text())
        kind, seed = f.parent.name.rsplit("-seed", 1)
        runs.setdefault((kind, "noisescale"), {})[int(seed)] = (
            100 * s["final_test_accuracy"], s["updates"], s["wall_seconds"])
    for f in sorted((out / "pytorch").glob("*-seed*.json")):
        r = json.loads(f.read_text())
        kind, seed = f.stem.rsplit("-seed", 1)
        last = r["epochs"][-1]
        runs.setdefault((kind, "PyTorch"), {})[int(seed)] = (
            100 * last["test_accuracy"], last["updates"], last["wall_seconds"])
    kinds = sorted({k for k, _ in runs}, key=lambda k: (k != "decay-lr", k))
    seeds = sorted({s for v in runs.values() for s in v})
    head = "| schedule | engine | " + " | ".join(f"seed {s}" for s in seeds)
    print(head + " | mean ± sd | s.e. | updates | wall per run (s) |")
    print("|---|---|" + "--:|" * len(seeds) + "--:|--:|--:|--:|")
    means = {}
    for kind in kinds:
        for engine in ("noisescale", "PyTorch"):
            v = runs.get((kind, engine))
            if not v:
                continue
            accs = [v[s][0] for s in sorted(v)]
            mean, sd, se = stats(accs)
            means[(kind, engine)] = (mean, se, len(accs))
            cells = " | ".join(f"{v[s][0]:.2f}" if s in v else "" for s in seeds)
            updates = sorted({v[s][1] for s in v})
            walls = [v[s][2] for s in v]
            print(f"| {kind} | {engine} | {cells} | {mean:.2f} ± {sd:.2f} | {se:.2f} | "
                  f"{'/'.join(map(str, updates))} | {min(walls):.0f}–{max(walls):.0f} |")
    print()
    for kind in kinds:
        a, b = means.get((kind, "noisescale")), means.get((kind, "PyTorch"))
        if a and b:
            diff, se = a[0] - b[0], math.hypot(a[1], b[1])
            ratio = lambda x, y: f"{x / y:.2f}" if y > 0 else "n/a"
            print(f"{kind}: noisescale − PyTorch = {diff:+.2f} points, {ratio(diff, se)} standard errors of the "
                  f"difference ({a[2]} and {b[2]} seeds); noisescale's mean is "
                  f"{ratio(abs(diff), b[1])} of PyTorch's standard error from PyTorch's mean")


if __name__ == "__main__":
    main()
