"""train_unet.py -- ddm-torch-train: trains the U-Net expert (unet.py) the
decentralized way, from nothing but the one shard file that
`ddm-train partition` wrote for its cluster (tools/train/shard.c:
images U8 [n][dim] with x = b * 2/255 - 1, labels I32 [n], metadata
dataset, num_experts, cluster, n_classes).

Objective as ddm-train's experts (docs/training.md): rectified flow,
x_t = (1 - t) x0 + t eps, target v = eps - x0, MSE; t logit-normal; labels
replaced by the null label (-1) 10% of the time; Adam with linear warmup
then cosine decay to 2% of the peak, gradient-norm clip 1, and an EMA of
the weights (the EMA is what is saved). A class the shard has no image of
gets the null label's embedding, so asking for it gives the unconditional
prediction rather than an untrained direction.

The output is safetensors with common/model.h's identity keys (expert_id,
num_experts, in_dim, n_classes, dataset, height, width, channels,
class_names when the shard has them) plus ddm.format "ddm-unet-v1",
architecture, the U-Net config and the training record (command, seed,
steps, loss, shard_sha256), which ddm-torch-worker, the router's handshake
and ddm-client conform read.
"""
import math
import os
import shlex
import sys
import time

from . import __version__
from .args import UsageError, integer, number, parse as getopt_parse

# numpy, torch and the model modules are imported when training starts, so
# --help and usage errors answer at once

PROG = "ddm-torch-train"

USAGE = f"""usage: {PROG} --shard FILE --out FILE [options]

Trains a small convolutional U-Net expert on one shard file written by
`ddm-train partition` (data/<set>/kK/shard-N.safetensors) and nothing else,
and writes it as safetensors that ddm-torch-worker serves as expert N.

  --shard FILE        the one shard this expert learns from
  --out FILE          weights to write (e.g. models/mine/expert-3.safetensors)
  --steps N           optimiser steps (default 1500)
  --batch N           images per step (default 64)
  --lr X              peak learning rate (default 0.002; warmup 100 steps, cosine to 2%)
  --ema X             EMA decay of the saved weights (default 0.999)
  --p-null X          share of labels replaced by the null label (default 0.1)
  --base N            U-Net width at full resolution (default 16)
  --mults LIST        width multipliers per level, comma-separated (default 1,2,2)
  --time-dim N        sinusoidal time features (default 64)
  --emb-dim N         time/class embedding width (default 64)
  --height N, --width N, --channels N
                      image shape (default: the shard's metadata, else 28 x 28 x 1 for dim 784)
  --dtype f16|f32     storage of the weights (default f16)
  --seed N            seed of every random draw (default 1)
  --threads N         torch threads (default 1)
  --log-secs N        progress line every N seconds on stderr (default 10; 0 = none)
  -h, --help          this text
  -V, --version       version

Exit status: 0 success, 1 runtime error (e.g. bad shard), 2 usage error.
"""

_LONG = ["shard=", "out=", "steps=", "batch=", "lr=", "ema=", "p-null=", "base=", "mults=",
         "time-dim=", "emb-dim=", "height=", "width=", "channels=", "dtype=", "seed=",
         "threads=", "log-secs=", "help", "version"]


def parse(argv):
    """Returns the options dict, or None after --help/--version."""
    o = {"shard": None, "out": None, "steps": 1500, "batch": 64, "lr": 2e-3, "ema": 0.999,
         "p_null": 0.1, "base": 16, "mults": (1, 2, 2), "time_dim": 64, "emb_dim": 64,
         "height": None, "width": None, "channels": None, "dtype": "f16", "seed": 1,
         "threads": 1, "log_secs": 10}
    opts, rest = getopt_parse(argv, "hV", _LONG)
    for k, a in opts:
        if k in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return None
        if k in ("-V", "--version"):
            print(f"{PROG} {__version__}")
            return None
        name = k[2:]
        if name in ("shard", "out"):
            o[name] = a
        elif name in ("steps", "batch", "base", "time-dim", "emb-dim", "height", "width",
                      "seed", "threads", "log-secs", "channels"):
            lim = {"steps": (1, 10**8), "batch": (1, 65536), "base": (1, 1024),
                   "time-dim": (2, 4096), "emb-dim": (1, 4096), "height": (1, 4096),
                   "width": (1, 4096), "channels": (1, 3), "seed": (0, 2**63 - 1),
                   "threads": (1, 1024), "log-secs": (0, 86400)}[name]
            o[name.replace("-", "_")] = integer(name, a, *lim)
        elif name in ("lr", "ema", "p-null"):
            lim = {"lr": (1e-8, 1.0), "ema": (0.0, 0.99999), "p-null": (0.0, 1.0)}[name]
            o[name.replace("-", "_")] = number(name, a, *lim)
        elif name == "mults":
            try:
                m = tuple(int(v) for v in a.split(","))
            except ValueError:
                m = ()
            if not 1 <= len(m) <= 5 or not all(1 <= v <= 16 for v in m):
                raise UsageError(f"--mults \"{a}\": 1 to 5 comma-separated integers 1..16, "
                                 f"e.g. 1,2,2")
            o["mults"] = m
        elif name == "dtype":
            if a not in ("f16", "f32"):
                raise UsageError(f"--dtype \"{a}\": use f16 or f32")
            o["dtype"] = a
    if rest:
        raise UsageError(f"unexpected argument \"{rest[0]}\" (see --help)")
    if not o["shard"]:
        raise UsageError("--shard FILE is required (e.g. data/digits/k8/shard-3.safetensors)")
    if not o["out"]:
        raise UsageError("--out FILE is required (e.g. models/mine/expert-3.safetensors)")
    if o["channels"] not in (None, 1, 3):
        raise UsageError("--channels: use 1 (grey) or 3 (RGB)")
    return o


class Shard:
    """One shard file, checked: x float32 [n][dim] in [-1, 1], y int64 [n]."""

    def __init__(self, path):
        import numpy as np
        from . import safetensors
        st = safetensors.File(path)
        self.path, self.sha256 = path, st.sha256

        def fail(what):
            raise ValueError(f"shard {path}: {what}; re-run `ddm-train partition`")

        if st.meta("ddm.kind") != "shard":
            fail(f"ddm.kind is {st.meta('ddm.kind')!r}, expected \"shard\"")
        meta = {}
        for k in ("num_experts", "cluster", "n", "dim", "n_classes"):
            v = st.meta(k)
            if v is None or not v.isdigit():
                fail(f"metadata {k} = {v!r} is not a non-negative integer")
            meta[k] = int(v)
        self.dataset = st.meta("dataset", "")
        self.k, self.K, self.n, self.dim = meta["cluster"], meta["num_experts"], meta["n"], meta["dim"]
        self.n_classes = meta["n_classes"]
        if self.K < 1 or self.k >= self.K:
            fail(f"cluster {self.k} is outside 0..{self.K - 1}")
        if st.tensors.get("images") != ("U8", (self.n, self.dim)):
            fail(f"tensor \"images\" is {st.tensors.get('images')}, expected U8 [{self.n}, {self.dim}]")
        if st.tensors.get("labels") != ("I32", (self.n,)):
            fail(f"tensor \"labels\" is {st.tensors.get('labels')}, expected I32 [{self.n}]")
        if self.n < 1:
            fail("it holds no images")
        self.x = st.array("images").astype(np.float32) * (2.0 / 255.0) - 1.0
        self.y = st.array("labels").astype(np.int64)
        if ((self.y < 0) | (self.y >= self.n_classes)).any():
            fail(f"a label is outside 0..{self.n_classes - 1}")
        self.shape = tuple(int(st.meta(k)) for k in ("height", "width", "channels")) \
            if all(str(st.meta(k, "")).isdigit() for k in ("height", "width", "channels")) else None
        self.class_names = st.meta("class_names")


def lr_at(step, steps, peak, warmup):
    """Linear warmup, then cosine decay to 2% of the peak (as ddm-train)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def train(o, argv):
    s = Shard(o["shard"])           # before torch: a bad shard is refused at once
    import numpy as np
    import torch
    from . import safetensors, unet
    torch.manual_seed(o["seed"])
    torch.set_num_threads(o["threads"])
    shape = (o["height"], o["width"], o["channels"])
    if all(v is None for v in shape):
        shape = s.shape or ((28, 28, 1) if s.dim == 784 else None)
        if shape is None:
            raise ValueError(f"shard {s.path}: dim {s.dim} has no known image shape: give "
                             f"--height, --width and --channels")
    elif any(v is None for v in shape):
        raise ValueError("give all of --height, --width and --channels, or none")
    H, W, C = shape
    if H * W * C != s.dim:
        raise ValueError(f"--height x --width x --channels = {H}x{W}x{C} = {H * W * C} does "
                         f"not equal the shard's dim {s.dim}")
    net = unet.UNet(H, W, C, s.n_classes, base=o["base"], mults=o["mults"],
                    time_dim=o["time_dim"], emb_dim=o["emb_dim"])
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=o["lr"], betas=(0.9, 0.999))
    X, Y = torch.from_numpy(s.x), torch.from_numpy(s.y)
    g = torch.Generator().manual_seed(o["seed"])
    steps, B, warmup = o["steps"], o["batch"], min(100, max(1, o["steps"] // 10))
    params = sum(p.numel() for p in net.parameters())
    sys.stderr.write(f"{PROG}: expert {s.k} of {s.K} ({s.dataset}): {s.n} images of {H}x{W}x{C} "
                     f"from {s.path}; U-Net {params} parameters; {steps} steps of {B}\n")
    losses, t0, last = [], time.monotonic(), time.monotonic()
    net.train()
    for step in range(steps):
        idx = torch.randint(0, s.n, (B,), generator=g)
        x0, y = X[idx], Y[idx].clone()
        y[torch.rand(B, generator=g) < o["p_null"]] = -1
        t = torch.sigmoid(torch.randn(B, generator=g))          # logit-normal
        eps = torch.randn(B, s.dim, generator=g)
        xt = (1 - t)[:, None] * x0 + t[:, None] * eps
        loss = torch.mean((net(xt, t, y) - (eps - x0)) ** 2)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, o["lr"], warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        d = min(o["ema"], 1.0 - 1.0 / (step + 2))               # plain mean until 1/(1-ema) steps
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(d).add_(v, alpha=1 - d)
                else:
                    ema[k].copy_(v)
        losses.append(float(loss))
        now = time.monotonic()
        if o["log_secs"] and (now - last >= o["log_secs"] or step == steps - 1):
            last = now
            rate = (step + 1) / (now - t0)
            sys.stderr.write(f"{PROG}: step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f} "
                             f"lr {lr_at(step, steps, o['lr'], warmup):.2e} {rate:.1f} steps/s "
                             f"ETA {(steps - step - 1) / rate:.0f}s\n")
    # classes the shard never showed answer as the null label
    seen = np.bincount(s.y, minlength=s.n_classes) > 0
    emb = ema["class_emb.weight"]
    for c in range(s.n_classes):
        if not seen[c]:
            emb[c] = emb[s.n_classes]
    tail = losses[-max(1, steps // 10):]
    meta = {"ddm.format": unet.FORMAT, "ddm.kind": "denoiser", "architecture": net.architecture(),
            "in_dim": str(s.dim), "dataset": s.dataset, "expert_id": str(s.k),
            "num_experts": str(s.K), "cluster": str(s.k), "shard_n": str(s.n),
            "shard_sha256": s.sha256, "classes": ",".join(str(c) for c in range(s.n_classes) if seen[c]),
            "seed": str(o["seed"]), "steps": str(steps), "loss": f"{float(np.mean(tail)):.6f}",
            "config": (f"batch={B} lr={o['lr']} warmup={warmup} ema={o['ema']} p_null={o['p_null']} "
                       f"t=logit-normal dtype={o['dtype']} threads={o['threads']}"),
            "command": " ".join(shlex.quote(a) for a in [PROG] + argv),
            "trainer": f"{PROG} {__version__} (torch {torch.__version__})"}
    meta.update(net.config())
    if s.class_names is not None:
        meta["class_names"] = s.class_names
    out_dir = os.path.dirname(os.path.abspath(o["out"]))
    os.makedirs(out_dir, exist_ok=True)
    safetensors.write(o["out"], ema, meta, dtype="F16" if o["dtype"] == "f16" else "F32")
    sys.stderr.write(f"{PROG}: wrote {o['out']} (loss {meta['loss']}, "
                     f"{time.monotonic() - t0:.0f}s)\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        o = parse(argv)
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 2
    if o is None:
        return 0
    try:
        train(o, argv)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    return 0
