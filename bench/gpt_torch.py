"""The transformer of `src/model/gpt.rs` in PyTorch, written as nanoGPT writes it (fused QKV,
`F.scaled_dot_product_attention` with `is_causal`, native LayerNorm, tied output), for two uses:

    gpt_torch.py step --batch B --context T --layers L --heads H --dim D [--threads 2]
        times the training step (forward, cross-entropy, backward, AdamW) as the bench rows do,
        printing one JSON line: median seconds per step and tokens per second;
    gpt_torch.py reference OUT.safetensors
        writes a tiny model's weights, a batch, its loss and every gradient in float64 for the
        Rust test that checks the burn model against it (tests/integration/gpt.rs).
"""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, h):
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln_1(h)).split(d, dim=2)
        q, k, v = (x.view(b, t, self.heads, d // self.heads).transpose(1, 2) for x in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return h + self.out(F.gelu(self.fc(self.ln_2(h))))


class Gpt(nn.Module):
    def __init__(self, vocab, context, layers, heads, d):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))
            elif name.endswith("weight") and "ln" not in name:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, x, y):
        t = x.shape[1]
        h = self.wte(x) + self.wpe(torch.arange(t, device=x.device))
        for blk in self.blocks:
            h = blk(h)
        logits = self.ln_f(h) @ self.wte.weight.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def step_time(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Gpt(256, a.context, a.layers, a.heads, a.dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    x = torch.randint(0, 256, (a.batch, a.context))
    y = torch.randint(0, 256, (a.batch, a.context))
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "batch": a.batch,
                      "context": a.context, "seconds": med,
                      "tokens_per_second": a.batch * a.context / med}))


def reference(out):
    from safetensors.torch import save_file
    torch.manual_seed(7)
    vocab, context, layers, heads, d = 256, 8, 2, 2, 16
    model = Gpt(vocab, context, layers, heads, d).double()
    with torch.no_grad():
        # Weights large enough that the logits are far from uniform (GPT-2's 0.02 leaves the loss
        # at ln 256), biases and norms away from 0 and 1: a wrong wiring shows in every number.
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.4)
    x = torch.randint(0, vocab, (3, context))
    y = torch.randint(0, vocab, (3, context))
    loss = model(x, y)
    loss.backward()
    tensors = {"x": x.to(torch.int64), "y": y.to(torch.int64), "loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        tensors["param." + name] = p.detach().contiguous()
        tensors["grad." + name] = p.grad.detach().contiguous()
    save_file(tensors, out)
    print(f"{out}: loss {loss.item():.10f}, {len(list(model.parameters()))} parameters")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    for k, v in [("batch", 16), ("context", 64), ("layers", 4), ("heads", 4), ("dim", 128),
                 ("threads", 2), ("steps", 20), ("warmup", 5)]:
        s.add_argument("--" + k, type=int, default=v)
    r = sub.add_parser("reference")
    r.add_argument("out")
    a = p.parse_args()
    if a.cmd == "step":
        step_time(a)
    else:
        reference(a.out)
