#!/usr/bin/env python3
"""The `cifar10-subset` preset re-implemented in PyTorch, independently of noisescale's code.

What it re-implements (README "Presets"; presets/cifar10-subset.toml):
- data: the CIFAR-10 binary files in DIR (`data_batch_*.bin`, `test_batch.bin`), scaled to [0, 1]
  and normalised per channel with the training set's mean and (population) standard deviation;
- augmentation: zero-pad 4 pixels (in pixel space, before normalising), a random 32×32 crop and a
  horizontal flip with probability 1/2, drawn per sample per epoch;
- model: the CIFAR ResNet-8 of He et al. (2016, §4.2), widths 16/32/64, 1×1 + BN projection
  shortcuts, no conv biases, He normal init (fan-out, ReLU gain), PyTorch's default Linear init;
  ghost batch norm: each training micro-batch is normalised in chunks of 16 samples, each chunk
  updating the running statistics once (momentum 0.1, unbiased variance), as calling
  `F.batch_norm` once per chunk does;
- optimiser: `torch.optim.SGD(momentum=m, weight_decay=5e-4)` on every parameter, ε and m set
  from the schedule before every update;
- the step: a batch of B samples is cut into micro-batches of at most 256 (in order); each
  micro-batch's mean cross-entropy is scaled by its length/B and back-propagated, so the gradient
  is that of the batch's mean loss; one optimiser step per batch; every sample once per epoch
  (the last batch kept whole if shorter);
- evaluation after every epoch on the test split in batches of 500 with the running statistics.

The schedule's phases come from noisescale's own table (`noisescale schedule --preset
cifar10-subset --schedule KIND --json`), as `pytorch_ref.py --mnist-schedule` does for MNIST.

Usage:
  python3 bench/cifar_torch.py --schedule FILE.json --seed S [--data ../shared/data/cifar10-subset]
        [--threads 2] [--out RESULT.json]
Prints one line per epoch on stderr and writes JSON {"seed", "schedule", "epochs": [{epoch,
batch_size, lr, updates, train_loss, test_accuracy, wall_seconds}]}.

`bench/parity.py` reuses the model (`resnet8`) and the step (`train_step`) to replay
noisescale's traced updates.
"""

import argparse
import glob
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

GHOST = 16
MICRO = 256
EVAL_BATCH = 500
WEIGHT_DECAY = 5e-4


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def read_cifar(paths):
    raw = b"".join(open(p, "rb").read() for p in paths)
    if len(raw) % 3073:
        raise ValueError(f"{paths}: {len(raw)} bytes is not a whole number of 3,073-byte records")
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, 3073)
    return t[:, 1:].reshape(-1, 3, 32, 32).clone(), t[:, 0].long()


def load(data_dir):
    # Numerically, as noisescale orders them (data_batch_10 after data_batch_9).
    train = [p for p in glob.glob(os.path.join(data_dir, "data_batch_*.bin"))
             if os.path.basename(p)[len("data_batch_"):-len(".bin")].isdigit()]
    train.sort(key=lambda p: int(os.path.basename(p)[len("data_batch_"):-len(".bin")]))
    if not train:
        raise FileNotFoundError(f"no data_batch_*.bin in {data_dir}")
    xtr, ytr = read_cifar(train)
    xte, yte = read_cifar([os.path.join(data_dir, "test_batch.bin")])
    f = xtr.double() / 255
    mean = f.mean((0, 2, 3))
    std = f.std((0, 2, 3), unbiased=False)
    return (xtr, ytr), (xte, yte), mean.float(), std.float()


def normalise(x_u8, mean, std):
    return (x_u8.float() / 255 - mean[None, :, None, None]) / std[None, :, None, None]


def crop_flip(x_u8, gen, pad=4):
    """Zero-pad, random crop back to 32×32, random horizontal flip, per sample."""
    n, _, h, w = x_u8.shape
    padded = F.pad(x_u8, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]  # [n, h]
    cols = dx[:, None] + torch.arange(w)[None, :]  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(3)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- model
class GhostBN(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises chunks of `ghost` samples separately, each chunk
    updating the running statistics once (what calling BatchNorm2d once per chunk does)."""

    def __init__(self, c, ghost=GHOST):
        super().__init__(c)
        self.ghost = ghost

    def forward(self, x):
        if not self.training or self.ghost == 0 or x.shape[0] <= self.ghost:
            return super().forward(x)
        return torch.cat([super(GhostBN, self).forward(part) for part in x.split(self.ghost)], 0)


def conv(i, o, k, stride):
    c = nn.Conv2d(i, o, k, stride=stride, padding=k // 2, bias=False)
    nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
    return c


class Projection(nn.Module):
    def __init__(self, i, o, stride, ghost):
        super().__init__()
        self.conv, self.bn = conv(i, o, 1, stride), GhostBN(o, ghost)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, i, o, stride, ghost):
        super().__init__()
        self.conv1, self.bn1 = conv(i, o, 3, stride), GhostBN(o, ghost)
        self.conv2, self.bn2 = conv(o, o, 3, 1), GhostBN(o, ghost)
        self.shortcut = Projection(i, o, stride, ghost) if stride != 1 or i != o else None

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + skip)


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2) with ghost batch norm; attribute names follow noisescale's module
    paths (`stem`, `stem_bn`, `blocks.{i}.conv1`, ..., `fc`) so that parameters map by name."""

    def __init__(self, c=3, base=16, n=1, classes=10, ghost=GHOST):
        super().__init__()
        self.stem, self.stem_bn = conv(c, base, 3, 1), GhostBN(base, ghost)
        blocks, width = [], base
        for stage in range(3):
            out = base << stage
            for b in range(n):
                blocks.append(BasicBlock(width, out, 2 if stage > 0 and b == 0 else 1, ghost))
                width = out
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        return self.fc(x.mean((2, 3)))


def resnet8(ghost=GHOST, base=16, classes=10, channels=3):
    return ResNet(c=channels, base=base, n=1, classes=classes, ghost=ghost)


# ----------------------------------------------------------------------------- the step
def train_step(model, opt, x, y, micro=MICRO, pieces=None):
    """One update on the batch (x, y): micro-batches of `micro` samples (or the lengths `pieces`),
    each mean loss scaled by its length/B, summed gradients, one optimiser step. Returns the
    batch's mean loss and the number of correct predictions."""
    b = len(y)
    if pieces is None:
        pieces = [min(micro, b - s) for s in range(0, b, micro)]
    assert sum(pieces) == b, (pieces, b)
    opt.zero_grad(set_to_none=True)
    loss_sum, correct, s = 0.0, 0, 0
    for n in pieces:
        logits = model(x[s : s + n])
        loss = F.cross_entropy(logits, y[s : s + n])
        (loss * (n / b)).backward()
        loss_sum += loss.item() * n
        correct += (logits.argmax(1) == y[s : s + n]).sum().item()
        s += n
    opt.step()
    return loss_sum / b, correct


def phase_of(phases, epoch):
    for p in phases:
        if p["start"] <= epoch < p["end"]:
            return p
    raise ValueError(f"no phase holds epoch {epoch}")


def evaluate(model, x_u8, y, mean, std):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for s in range(0, len(y), EVAL_BATCH):
            logits = model(normalise(x_u8[s : s + EVAL_BATCH], mean, std))
            loss += F.cross_entropy(logits, y[s : s + EVAL_BATCH], reduction="sum").item()
            correct += (logits.argmax(1) == y[s : s + EVAL_BATCH]).sum().item()
    model.train()
    return loss / len(y), correct / len(y)


def train(args, phases, name):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    (xtr, ytr), (xte, yte), mean, std = load(args.data)
    model = resnet8()
    first = phases[0]
    opt = torch.optim.SGD(model.parameters(), lr=first["lr"], momentum=first["momentum"], weight_decay=WEIGHT_DECAY)
    epochs, wall, updates, start = [], 0.0, 0, time.perf_counter()
    n = len(ytr)
    for epoch in range(phases[-1]["end"]):
        phase = phase_of(phases, epoch)
        b = phase["batch_size"]
        for group in opt.param_groups:
            group["lr"] = phase["lr"]
            group["momentum"] = phase["momentum"]
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for s in range(0, n, b):
            idx = perm[s : s + b]
            x = normalise(crop_flip(xtr[idx], gen), mean, std)
            loss, c = train_step(model, opt, x, ytr[idx])
            loss_sum += loss * len(idx)
            correct += c
            updates += 1
        test_loss, acc = evaluate(model, xte, yte, mean, std)
        wall = time.perf_counter() - start
        row = {
            "epoch": epoch + 1,
            "batch_size": b,
            "lr": phase["lr"],
            "updates": updates,
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "test_loss": test_loss,
            "test_accuracy": acc,
            "wall_seconds": wall,
        }
        log(f"torch cifar10-subset {name} seed {args.seed} epoch {epoch + 1}: B {b}, lr {phase['lr']}, "
            f"loss {row['train_loss']:.4f}, acc {acc:.4f}, {wall:.0f}s")
        epochs.append(row)
    return {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "schedule": name,
        "phases": phases,
        "epochs": epochs,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedule", required=True, help="noisescale schedule --json output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="../shared/data/cifar10-subset")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="result JSON (default: stdout)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table = json.load(open(args.schedule))
    phases = [
        {"start": ph["start"], "end": ph["end"], "lr": ph["lr"], "batch_size": ph["batch_size"],
         "momentum": ph["momentum"]}
        for ph in table["phases"]
    ]
    name = os.path.basename(args.schedule).removesuffix(".json").removesuffix(".schedule")
    result = json.dumps(train(args, phases, name), indent=1)
    if args.out:
        open(args.out, "w").write(result)
    else:
        print(result)


if __name__ == "__main__":
    main()
