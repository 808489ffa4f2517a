#!/usr/bin/env python3
"""Replays noisescale's traced updates in PyTorch and says where the two engines part.

A run with `train.trace_updates = [u, ...]` writes `RUN/trace/update-{u:06}.safetensors`: the
model and optimiser state before update u, the batch as fed (augmented, normalised), the
gradient the optimiser received, and the state after (src/train/trace.rs). For each file this
script loads the state before into the PyTorch ResNet of `cifar_torch.py` (ghost batch norm,
torch.optim.SGD), runs the same step on the same batch, cut into the same micro-batch pieces,
and compares, tensor by tensor:
- the batch's mean loss;
- every gradient (of the batch's mean loss, before weight decay);
- every weight, momentum buffer and running statistic after the update;
and checks the batch itself against the data set: each sample's label, that its pixels are one
of the 162 crops and flips of the training image it names (for up to --check-samples samples),
and, for a batch that is a whole epoch, that its samples are each training sample once.

An error is the largest |a − b| over a tensor relative to the tensor's largest |b|. The reference
is PyTorch in float64 (noisescale and PyTorch both compute in float32, so neither is the truth).
Beside noisescale's error each row gives PyTorch float32's own, and the float32 step's
sensitivity to rounding: PyTorch float32 on the batch perturbed by a relative 1e-7 (about one
float32 rounding; worst of 3 draws). With a few hundred thousand ReLU inputs a batch, some lie
within rounding of zero, and which side they fall on moves a gradient by 1e-4–1e-3: any float32
engine differs from float64 by that much at some updates. An update passes when noisescale's
worst error is within --tolerance or within 3× that sensitivity; exit status 1 otherwise, or if
a label, crop or permutation is wrong.

Usage: python3 bench/parity.py RUN_DIR [--data ../shared/data/cifar10-subset] [--tolerance 1e-4]
       [--show 4] [--check-samples 64]
"""

import argparse
import glob
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar_torch  # noqa: E402

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        buf = bytearray(raw[base + a : base + b])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[info["dtype"]])
        tensors[name] = t.reshape(info["shape"])
    return tensors, meta


def torch_name(path):
    """noisescale's module path (`ResNet.blocks.0.bn1.gamma`) as the PyTorch state-dict key."""
    parts = path.split(".")
    if parts[0] in ("ResNet", "Mlp", "Cnn", "Wrn"):
        parts = parts[1:]
    leaf = {"gamma": "weight", "beta": "bias"}.get(parts[-1], parts[-1])
    return ".".join(parts[:-1] + [leaf])


def to_torch(key, value, like):
    """A noisescale tensor as the PyTorch tensor `like`: burn's Linear keeps [in, out]."""
    if key.endswith("fc.weight"):
        return value.reshape(like.shape[1], like.shape[0]).t().contiguous()
    return value.reshape(like.shape)


def rel(a, b):
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / max(scale, 1e-30)


def step(t, meta, dtype):
    """Loads the state before into the PyTorch model in `dtype` and runs the update; returns the
    mean loss and, by name, every gradient, tensor after the update and velocity after it."""
    x, y = t["x"].to(dtype), t["y"]
    classes = int(t[[k for k in t if k.endswith("fc.bias") and k.startswith("before/")][0]].numel())
    base = t[[k for k in t if k.startswith("before/model/") and k.endswith("stem.weight")][0]].shape[0]
    blocks = {k.split(".blocks.")[1].split(".")[0] for k in t if k.startswith("before/model/") and ".blocks." in k}
    model = cifar_torch.ResNet(c=x.shape[1], base=base, n=len(blocks) // 3, classes=classes,
                               ghost=meta["ghost_batch_size"])
    model = model.to(dtype)
    model.train()
    sd = model.state_dict()
    names = {}
    for key in t:
        if key.startswith("before/model/"):
            p = key[len("before/model/") :]
            tn = torch_name(p)
            if tn not in sd:
                raise ValueError(f"{p} has no counterpart in the PyTorch ResNet ({tn}): not a CIFAR ResNet trace?")
            sd[tn] = to_torch(tn, t[key], sd[tn]).to(dtype)
            names[tn] = p
    missing = [k for k in sd if k not in names and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"the trace lacks {missing}")
    model.load_state_dict(sd)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(
        params.values(),
        lr=meta["lr"],
        momentum=meta["momentum"],
        weight_decay=meta["weight_decay"],
        nesterov=meta["optimizer"] == "nesterov",
    )
    for tn, p in params.items():
        key = f"before/optim/{names[tn]}#v"
        if key in t:
            opt.state[p]["momentum_buffer"] = to_torch(tn, t[key], p).to(dtype).clone()
    # The step, as cifar_torch.train_step, with the gradient read before the optimiser.
    b = len(y)
    opt.zero_grad(set_to_none=True)
    loss_sum, s = 0.0, 0
    for n in meta["pieces"]:
        loss = F.cross_entropy(model(x[s : s + n]), y[s : s + n])
        (loss * (n / b)).backward()
        loss_sum += loss.item() * n
        s += n
    out = {"loss": torch.tensor([loss_sum / b], dtype=torch.float64)}
    for tn, p in params.items():
        out[f"grad/{names[tn]}"] = p.grad.detach().clone()
    opt.step()
    for tn, v in model.state_dict().items():
        if tn in names:
            out[f"after/model/{names[tn]}"] = v.detach().clone()
    for tn, p in params.items():
        if f"after/optim/{names[tn]}#v" in t:
            out[f"after/optim/{names[tn]}#v"] = opt.state[p]["momentum_buffer"].clone()
    return out, names


def replay(path, args, data):
    """One traced update against PyTorch: (meta, rows, data check), each row
    (tensor, noisescale's error, PyTorch float32's error), errors against PyTorch float64, and
    the float32 step's sensitivity to a rounding-sized perturbation of its input."""
    t, meta = read_safetensors(path)
    meta = json.loads(meta["trace"])
    if meta["optimizer"] not in ("momentum", "sgd", "nesterov") or meta.get("velocity_rescale"):
        raise SystemExit(f"{path}: the replay is torch.optim.SGD: plain, momentum or Nesterov without "
                         f"velocity_rescale, not {meta['optimizer']}")
    try:
        ref64, _ = step(t, meta, torch.float64)
    except ValueError as e:
        raise SystemExit(f"{path}: {e}")
    ref32, _ = step(t, meta, torch.float32)
    ours = {"loss": torch.tensor([meta["loss"]], dtype=torch.float64)}
    for key in ref64:
        if key != "loss":
            ours[key] = to_torch(torch_name(key.split("/")[-1].split("#")[0]), t[key], ref64[key])
    label = lambda k: k.replace("after/model/", "after ").replace("after/optim/", "velocity ").replace("grad/", "grad ")
    rows = [(label(k), rel(ours[k].double(), ref64[k].double()), rel(ref32[k].double(), ref64[k].double()))
            for k in ref64]
    sensitivity = 0.0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x = t["x"].double()
        perturbed = dict(t, x=(x * (1 + 1e-7 * torch.randn(x.shape, generator=g, dtype=torch.float64))).float())
        r, _ = step(perturbed, meta, torch.float32)
        sensitivity = max(sensitivity, max(rel(r[k].double(), ref64[k].double()) for k in r))
    return meta, rows, sensitivity, check_batch(t, meta, args, data)


def check_batch(t, meta, args, data):
    """The batch against the training set: wrong labels, crops matched of those tried, flips
    among them, and whether a whole-epoch batch holds every sample once (None otherwise)."""
    (xtr, ytr), mean, std = data
    x, y, index = t["x"], t["y"], t["index"]
    b = len(y)
    bad_labels = int((ytr[index] != y).sum())
    k = min(args.check_samples, b)
    sample = torch.linspace(0, b - 1, k).long()
    padded = F.pad(xtr[index[sample]], (4, 4, 4, 4))
    def crop_of(j, i):
        """Whether sample i is flipped, if it is a crop of its training image; None if not."""
        for dy in range(9):
            for dx in range(9):
                for flip in (False, True):
                    crop = padded[j : j + 1, :, dy : dy + 32, dx : dx + 32]
                    crop = crop.flip(3) if flip else crop
                    if (cifar_torch.normalise(crop, mean, std)[0] - x[i]).abs().max() < 1e-5:
                        return flip
        return None

    found = [crop_of(j, i) for j, i in enumerate(sample.tolist())]
    matched, flips = sum(f is not None for f in found), sum(f is True for f in found)
    whole = None
    if b == len(ytr):
        whole = bool((index.sort().values == torch.arange(b)).all())
    return bad_labels, matched, k, flips, whole


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a noisescale run directory with trace/")
    p.add_argument("--data", default="../shared/data/cifar10-subset")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--check-samples", type=int, default=64)
    p.add_argument("--show", type=int, default=4, help="noisescale's worst tensors shown per update")
    args = p.parse_args()
    torch.set_num_threads(2)
    files = sorted(glob.glob(os.path.join(args.run, "trace", "update-*.safetensors")))
    if not files:
        raise SystemExit(f"no traces in {args.run}/trace")
    (xtr, ytr), _, mean, std = cifar_torch.load(args.data)
    data = ((xtr, ytr), mean, std)
    failed = []
    print("| update | epoch | B | micro-batches | ε | m | loss | tensor | noisescale | PyTorch f32 | "
          "PyTorch f32, input ±1e-7 | data |")
    print("|--:|--:|--:|---|--:|--:|--:|---|--:|--:|--:|---|")
    for f in files:
        meta, rows, sensitivity, (bad_labels, matched, k, flips, whole) = replay(f, args, data)
        rows.sort(key=lambda r: -r[1])
        pieces = meta["pieces"]
        piece_text = f"{len(pieces)}×{pieces[0]}" if len(set(pieces)) == 1 else f"{len(pieces) - 1}×{pieces[0]}+{pieces[-1]}"
        n = meta["end"] - meta["start"]
        perm = "" if whole is None else (", every sample once" if whole else ", NOT a permutation")
        for i, (name, err, err32) in enumerate(rows[: args.show]):
            if i == 0:
                head = (f"| {meta['update']} | {meta['epoch']} | {meta['batch_size']} | {piece_text} | "
                        f"{meta['lr']:g} | {meta['momentum']:g} | {meta['loss']:.5f} |")
                tail = (f" {sensitivity:.1e} | labels {n - bad_labels}/{n}, crops {matched}/{k} "
                        f"({flips} flipped){perm} |")
            else:
                head, tail = "|" + "  |" * 7, "  |  |"
            print(f"{head} {name} | {err:.1e} | {err32:.1e} |{tail}")
        worst = rows[0][1]
        if worst > max(args.tolerance, 3 * sensitivity) or bad_labels or matched < k or whole is False:
            failed.append(meta["update"])
    print()
    print(f"{len(files) - len(failed)} of {len(files)} updates agree (tolerance {args.tolerance:g} or 3× the "
          f"float32 sensitivity)" + (f"; parting at {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
