#!/usr/bin/env python3
"""PyTorch eager reference for `noisescale bench`.

Mode 1 (default): training-step throughput of the same models, same step as noisescale's bench
(forward, cross-entropy, backward, torch.optim.SGD(momentum=0.9, weight_decay=5e-4).step(), lr 0.1)
on random inputs; prints JSON {"torch_version", "threads", "rows": [{"model", "batch",
"images_per_second", "steps", "seconds_per_step"}]}.

Mode 2 (--mnist-schedule FILE): trains the `mnist` preset's MLP 784-256-10 (SGD momentum 0.9,
mean 0.1307 std 0.3081) under the phases of FILE, the JSON of
`noisescale schedule --preset mnist --schedule KIND --json` (epochs, lr, batch size and momentum
per phase: decay-lr, increase-batch or hybrid, exactly as noisescale runs them), and prints
per-epoch test accuracy and wall time as JSON, for "time to the same test accuracy".
`--mnist-decay-lr` is the decay-lr run without a FILE (lr 0.1, B 64, x0.2 at 9/18/24).

Mode 3 (--matmul SPECS): times torch.matmul on the products SPECS lists (JSON from `noisescale
bench --only matmul`: product, batch, m, k, n and whether each operand is the transposed view of a
row-major tensor, as burn's linear layers hand them over), --steps products and --min-seconds
each after --warmup; prints JSON {"torch_version", "threads", "rows": [], "matmul": [{...SPECS
entry, "calls", "seconds_per_call"}]}.

`--device cuda` times mode 1 on a CUDA GPU instead, for `noisescale bench --device wgpu` rows: each
step uploads its host batch (as noisescale's step does) and ends with torch.cuda.synchronize().

Usage: python bench/pytorch_ref.py [--json FILE|-] [--threads 2] [--steps 20] [--warmup 3] [--device cuda]
       python bench/pytorch_ref.py --matmul SPECS [--threads 2] [--steps 20] [--min-seconds 0.5]
       python bench/pytorch_ref.py --mnist-schedule FILE [--data ../shared/data/mnist]
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models
class Mlp(nn.Module):
    """784-256-10, ReLU (noisescale `mlp-256`)."""

    def __init__(self, inputs=784, widths=(256,), classes=10):
        super().__init__()
        layers, last = [], inputs
        for w in widths:
            layers += [nn.Linear(last, w), nn.ReLU()]
            last = w
        layers.append(nn.Linear(last, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class Cnn(nn.Module):
    """conv 1→32 5×5 pad 2, ReLU, pool 2; conv 32→64 5×5 pad 2, ReLU, pool 2; fc 3136→512→10."""

    def __init__(self, c=1, hw=28, hidden=512, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (hw // 4) * (hw // 4), hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def conv(i, o, k, stride):
    return nn.Conv2d(i, o, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block; 1×1 conv + BN projection when the shape changes."""

    def __init__(self, i, o, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(i, o, 3, stride), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = conv(o, o, 3, 1), nn.BatchNorm2d(o)
        self.shortcut = None
        if stride != 1 or i != o:
            self.shortcut = nn.Sequential(conv(i, o, 1, stride), nn.BatchNorm2d(o))

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + skip)


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2), widths base/2·base/4·base (noisescale `resnet-8`: n = 1, base 16)."""

    def __init__(self, c=3, base=16, n=1, classes=10):
        super().__init__()
        self.stem, self.stem_bn = conv(c, base, 3, 1), nn.BatchNorm2d(base)
        blocks, width = [], base
        for stage in range(3):
            out = base << stage
            for b in range(n):
                blocks.append(BasicBlock(width, out, 2 if stage > 0 and b == 0 else 1))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem_bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class WideBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv-BN-ReLU-dropout-conv); 1×1 conv shortcut on the
    activated input when the shape changes."""

    def __init__(self, i, o, stride, dropout):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(i), conv(i, o, 3, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(o), conv(o, o, 3, 1)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = conv(i, o, 1, stride) if (i != o or stride != 1) else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        y = self.dropout(F.relu(self.bn2(self.conv1(o))))
        return self.conv2(y) + skip


class WideResNet(nn.Module):
    """WRN-depth-widen (noisescale `wrn-16-4`)."""

    def __init__(self, c=3, depth=16, widen=4, dropout=0.0, classes=10):
        super().__init__()
        n = (depth - 4) // 6
        self.stem = conv(c, 16, 3, 1)
        blocks, width = [], 16
        for stage in range(3):
            out = (16 << stage) * widen
            for b in range(n):
                blocks.append(WideBlock(width, out, 2 if stage > 0 and b == 0 else 1, dropout))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(x.mean((2, 3)))


# name, constructor, input shape, batch sizes, slow (fewer steps) — same rows as src/bench.rs
ROWS = [
    ("mlp-256", lambda: Mlp(), (1, 28, 28), [64, 1024], False),
    ("cnn", lambda: Cnn(), (1, 28, 28), [128, 1024], False),
    ("resnet-8", lambda: ResNet(), (3, 32, 32), [128, 1024], False),
    ("wrn-16-4", lambda: WideResNet(), (3, 32, 32), [128], True),
]


def bench_row(make, shape, batch, steps, warmup, max_seconds, min_seconds, device="cpu"):
    torch.manual_seed(0)
    model = make().to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x_host = torch.rand(batch, *shape) * 2 - 1
    y_host = torch.randint(0, 10, (batch,))
    cuda = device != "cpu"
    timed, elapsed = 0, 0.0
    i = 0
    while not (i >= warmup and timed >= steps and elapsed >= min_seconds):
        t = time.perf_counter()
        x, y = (x_host.to(device), y_host.to(device)) if cuda else (x_host, y_host)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.item()  # as the Rust trainer reads the loss every step
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if i >= warmup:
            timed += 1
            elapsed += dt
            if timed >= 3 and elapsed > max_seconds:
                break
        i += 1
    sps = elapsed / timed
    return {"steps": timed, "seconds_per_step": sps, "images_per_second": batch / sps}


def throughput(args):
    rows = []
    for name, make, shape, batches, slow in ROWS:
        if args.models and name not in args.models.split(","):
            continue
        for b in batches:
            if args.batch_sizes and b not in [int(v) for v in args.batch_sizes.split(",")]:
                continue
            steps, warmup = (max(args.steps // 4, 3), min(args.warmup, 1)) if slow else (args.steps, args.warmup)
            r = bench_row(make, shape, b, steps, warmup, args.max_seconds, args.min_seconds, args.device)
            log(f"torch {name} B={b} on {args.device}: {r['images_per_second']:.1f} images/s ({r['steps']} steps)")
            rows.append({"model": name, "batch": b, **r})
    out = {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    if args.device != "cpu":
        out["device"] = torch.cuda.get_device_name(torch.device(args.device))
    return out


def operand(rows, cols, transposed):
    """A rows×cols operand with values in [-1, 1): row-major, or the transposed view of a
    cols×rows tensor."""
    if transposed:
        return (torch.rand(cols, rows) * 2 - 1).t()
    return torch.rand(rows, cols) * 2 - 1


def matmul(args, specs):
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for s in specs:
            lhs = operand(s["m"], s["k"], s["lhs_transposed"])
            rhs = operand(s["k"], s["n"], s["rhs_transposed"])
            for _ in range(args.warmup):
                torch.matmul(lhs, rhs)
            calls, start = 0, time.perf_counter()
            while calls < args.steps or time.perf_counter() - start < args.min_seconds:
                torch.matmul(lhs, rhs)
                calls += 1
            spc = (time.perf_counter() - start) / calls
            log(f"torch {s['product']} B={s['batch']}: {2 * s['m'] * s['k'] * s['n'] / spc / 1e9:.1f} GFLOP/s")
            rows.append({**s, "calls": calls, "seconds_per_call": spc})
    return {"torch_version": torch.__version__, "threads": torch.get_num_threads(), "rows": [], "matmul": rows}


# ----------------------------------------------------------------------------- MNIST end to end
def read_idx(path):
    """IDX (optionally .gz) → (dims, bytes)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def find(dir_, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(dir_, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"no {stem}[.gz] in {dir_}")


def load_mnist(dir_, split):
    prefix = "train" if split == "train" else "t10k"
    dims, img = read_idx(find(dir_, f"{prefix}-images-idx3-ubyte"))
    _, lab = read_idx(find(dir_, f"{prefix}-labels-idx1-ubyte"))
    x = torch.frombuffer(bytearray(img), dtype=torch.uint8).reshape(dims[0], 1, dims[1], dims[2])
    x = (x.float() / 255.0 - 0.1307) / 0.3081
    y = torch.frombuffer(bytearray(lab), dtype=torch.uint8).long()
    return x, y


DECAY_LR_PHASES = [
    {"start": 0, "end": 9, "lr": 0.1, "batch_size": 64, "momentum": 0.9},
    {"start": 9, "end": 18, "lr": 0.02, "batch_size": 64, "momentum": 0.9},
    {"start": 18, "end": 24, "lr": 0.004, "batch_size": 64, "momentum": 0.9},
    {"start": 24, "end": 30, "lr": 0.0008, "batch_size": 64, "momentum": 0.9},
]


def phase_of(phases, epoch):
    for p in phases:
        if p["start"] <= epoch < p["end"]:
            return p
    raise ValueError(f"no phase holds epoch {epoch}")


def mnist_schedule(args, phases, name):
    torch.manual_seed(args.seed)
    xtr, ytr = load_mnist(args.data, "train")
    xte, yte = load_mnist(args.data, "test")
    model = Mlp()
    first = phases[0]
    opt = torch.optim.SGD(model.parameters(), lr=first["lr"], momentum=first["momentum"], weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    epochs, wall, updates = [], 0.0, 0
    n_epochs = phases[-1]["end"]
    for epoch in range(n_epochs):
        phase = phase_of(phases, epoch)
        b = phase["batch_size"]
        for group in opt.param_groups:
            group["lr"] = phase["lr"]
            group["momentum"] = phase["momentum"]
        t = time.perf_counter()
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        loss_sum = 0.0
        for s in range(0, len(ytr), b):
            idx = perm[s : s + b]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            loss_sum += loss.item() * len(idx)
            loss.backward()
            opt.step()
            updates += 1
        train_s = time.perf_counter() - t
        model.eval()
        with torch.no_grad():
            correct = sum(
                (model(xte[s : s + 1000]).argmax(1) == yte[s : s + 1000]).sum().item()
                for s in range(0, len(yte), 1000)
            )
        wall += time.perf_counter() - t
        row = {
            "epoch": epoch + 1,
            "batch_size": b,
            "lr": phase["lr"],
            "updates": updates,
            "train_loss": loss_sum / len(ytr),
            "test_accuracy": correct / len(yte),
            "train_seconds": train_s,
            "wall_seconds": wall,
        }
        log(f"torch mnist {name} epoch {epoch + 1}: B {b}, acc {row['test_accuracy']:.4f}, wall {wall:.1f}s")
        epochs.append(row)
    return {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "run": f"mnist {name}: MLP 784-256-10, SGD m 0.9, phases {phases}",
        "schedule": name,
        "epochs": epochs,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="-", help="output file, - for stdout")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="keep timing a row past --steps until this many seconds are timed")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for the training-step rows")
    p.add_argument("--models", default="", help="comma-separated rows to run (default: all)")
    p.add_argument("--batch-sizes", default="", help="comma-separated batch sizes to run (default: all)")
    p.add_argument("--matmul", metavar="SPECS", help="JSON list of products to time (mode 3)")
    p.add_argument("--mnist-decay-lr", action="store_true")
    p.add_argument("--mnist-schedule", metavar="FILE",
                   help="JSON of `noisescale schedule --preset mnist --schedule KIND --json`")
    p.add_argument("--name", default=None, help="schedule name for the output (default: from FILE)")
    p.add_argument("--data", default="../shared/data/mnist")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.mnist_schedule:
        with open(args.mnist_schedule) as f:
            table = json.load(f)
        phases = [
            {k: p[k] for k in ("start", "end", "lr", "batch_size", "momentum")} for p in table["phases"]
        ]
        name = args.name or os.path.splitext(os.path.basename(args.mnist_schedule))[0]
        out = mnist_schedule(args, phases, name)
    elif args.matmul:
        out = matmul(args, json.loads(args.matmul))
    elif args.mnist_decay_lr:
        out = mnist_schedule(args, DECAY_LR_PHASES, "decay-lr")
    else:
        out = throughput(args)
    text = json.dumps(out, indent=2)
    if args.json == "-":
        print(text)
    else:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
