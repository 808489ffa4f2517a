#!/usr/bin/env python3
"""Behaviour identity: digests of what short training runs log, to show a refactoring changed nothing.

Runs a short version of every preset under every schedule kind (plus warm-up, mid-epoch adaptive
decisions, micro-batches, dropout with ghost batch norm, and one 2-rank MPI run), then prints one
line per case: the SHA-256 of its `metrics.jsonl` with the timing fields removed, and of its
`decisions.jsonl` (adaptive runs) likewise. The digests depend on the CPU's kernels (AVX2 and
AVX-512 round differently), so a record names the CPU it was made on; compare on that CPU.

Usage:
  bench/identity.py record FILE [--bin PATH]   # run the cases, write their digests to FILE
  bench/identity.py check FILE [--bin PATH]    # run them again, compare with FILE (exit 1 if any differ)

`--bin` defaults to target/release/noisescale built with `--features mpi` (the script builds it).
Needs ../shared/data (MNIST and the CIFAR-10 subset) and, for the MPI case, OpenMPI.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The fields of a metrics or decisions line that measure time or memory, not training.
TIMING = {
    "wall_seconds", "epoch_seconds", "samples_per_second", "comm_seconds", "peak_memory_bytes",
    "seconds",
}

SHORT_MNIST = {
    "data": {"train_subset": 6000, "test_subset": 1000},
    "schedule": {"epochs": 4, "milestones": [1, 2, 3]},
}
SHORT_CIFAR = {
    "data": {"train_subset": 1000, "test_subset": 500},
    "schedule": {"epochs": 3, "milestones": [1, 2], "max_batch_size": 400},
}

# name: (preset, overrides, ranks)
CASES = {
    "mnist-decay-lr": ("mnist", [SHORT_MNIST], 1),
    "mnist-increase-batch": ("mnist", [SHORT_MNIST, {"schedule": {"kind": "increase-batch"}}], 1),
    "mnist-hybrid": ("mnist", [SHORT_MNIST, {"schedule": {"kind": "hybrid", "max_batch_size": 512}}], 1),
    "mnist-converted-cosine": ("mnist", [SHORT_MNIST, {"schedule": {
        "kind": "converted", "max_batch_size": 2000, "milestones": [],
        "lr_schedule": {"type": "cosine", "min_lr": 0.0}}}], 1),
    "mnist-adaptive": ("mnist", [SHORT_MNIST, {"schedule": {
        "kind": "adaptive", "milestones": [], "epochs": 6, "max_batch_size": 3000,
        "adaptive": {"alpha": 0.5, "min_change": 1.5}}}], 1),
    "mnist-adaptive-mid-epoch": ("mnist", [SHORT_MNIST, {"schedule": {
        "kind": "adaptive", "milestones": [], "max_batch_size": 3000,
        "adaptive": {"alpha": 0.5, "min_change": 1.5, "every_updates": 25}}}], 1),
    "mnist-decay-lr-warmup": ("mnist", [SHORT_MNIST, {"schedule": {"warmup_epochs": 0.5}}], 1),
    "mnist-cnn-increase-batch": ("mnist", [SHORT_MNIST, {
        "model": {"kind": "cnn", "hidden": 64}, "schedule": {"kind": "increase-batch", "epochs": 2, "milestones": [1]}}], 1),
    "cifar-decay-lr": ("cifar10-subset", [SHORT_CIFAR], 1),
    "cifar-increase-batch-micro": ("cifar10-subset", [SHORT_CIFAR, {
        "schedule": {"kind": "increase-batch"}, "train": {"max_micro_batch": 64}}], 1),
    "cifar-adaptive": ("cifar10-subset", [SHORT_CIFAR, {"schedule": {
        "kind": "adaptive", "milestones": [], "adaptive": {"alpha": 1.0, "min_change": 1.5}}}], 1),
    "synthetic-increase-batch": ("synthetic", [], 1),
    "synthetic-wrn-dropout-ghost": ("synthetic", [{
        "data": {"synthetic": {"train": 1024, "test": 256, "classes": 10, "shape": [3, 8, 8]}},
        "model": {"kind": "wrn", "depth": 10, "widen": 1, "dropout": 0.2, "ghost_batch_size": 8},
        "schedule": {"epochs": 3, "milestones": [1, 2]}}], 1),
    "synthetic-mpi-2-ranks": ("synthetic", [], 2),
}


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("lr_schedule", "model"):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(cfg):
    lines = [f"{k} = {toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{json.dumps(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def digest(path):
    """SHA-256 of a JSON-lines file with the timing fields dropped (None if absent)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    for line in path.read_text().splitlines():
        rec = {k: v for k, v in json.loads(line).items() if k not in TIMING}
        h.update(json.dumps(rec, sort_keys=True).encode() + b"\n")
    return h.hexdigest()[:16]


def run_case(binary, name, work, data):
    preset, overrides, ranks = CASES[name]
    cfg = tomllib.loads((ROOT / "presets" / f"{preset}.toml").read_text())
    for o in overrides:
        merge(cfg, json.loads(json.dumps(o)))
    cfg["name"] = name
    cfg.pop("reproduce", None)
    toml = work / f"{name}.toml"
    toml.write_text(to_toml(cfg))
    out = work / name
    cmd = [str(binary), "train", str(toml), "--data", data, "--out", str(out), "--overwrite", "-q"]
    if ranks > 1:
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none"] + cmd
    else:
        env = None
    subprocess.run(cmd, check=True, env=env)
    return digest(out / "metrics.jsonl"), digest(out / "decisions.jsonl")


def cpu_name():
    model = flags = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line
    family = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("cpu family")), "?")
    mdl = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model\t")), "?")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return f"{model}, family {family} model {mdl}, {isa}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("file")
    ap.add_argument("--bin", default=None)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "identity"))
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    if args.bin is None:
        subprocess.run(["cargo", "build", "--release", "--features", "mpi", "-q"], cwd=ROOT, check=True)
        binary = ROOT / "target" / "release" / "noisescale"
    else:
        binary = Path(args.bin)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    names = args.only or list(CASES)
    lines = {}
    for name in names:
        m, d = run_case(binary, name, work, args.data)
        lines[name] = f"{name} metrics {m} decisions {d or '-'}"
        print(lines[name], flush=True)
    if args.mode == "record":
        head = f"# bench/identity.py digests; CPU: {cpu_name()}\n"
        Path(args.file).write_text(head + "".join(lines[n] + "\n" for n in names))
        return 0
    want = {l.split()[0]: l for l in Path(args.file).read_text().splitlines() if l and not l.startswith("#")}
    bad = [n for n in names if want.get(n) != lines[n]]
    for n in bad:
        print(f"DIFFERS {n}\n  recorded: {want.get(n)}\n  now:      {lines[n]}")
    print(f"{len(names) - len(bad)} of {len(names)} cases identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
