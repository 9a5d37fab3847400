"""unet.py -- a small convolutional U-Net expert (ddm.format "ddm-unet-v1").

Latents travel as [B, D] rows in HWC order (dim = height * width * channels);
the network sees them as [B, C, H, W] images. Layout, for mults (1, 2, 2):

  conv_in 3x3 -> ResBlock(base) -> down -> ResBlock(2 base) -> down -> ResBlock(2 base)
      -> ResBlock(2 base) (middle)
      -> up: ResBlock on [features, skip] at each level, nearest upsampling + 3x3 conv
      -> GroupNorm, SiLU, conv_out 3x3 (zero at start) -> v

Each ResBlock: GroupNorm, SiLU, 3x3 conv, + a per-channel shift from the
embedding, GroupNorm, SiLU, 3x3 conv, + skip (1x1 conv when the width
changes). The embedding is silu(MLP(temb(t)) + class_emb[label]) with the
same sinusoidal temb as the MLP experts (mlp.time_embedding) and row
n_classes of class_emb as the null label. GroupNorm normalises each image on
its own, so a row's answer does not depend on its batch mates.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import mlp

FORMAT = "ddm-unet-v1"


def _groups(ch, want):
    g = min(want, ch)
    while ch % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """forward(x [B, H*W*C] float32 HWC rows, t [B] in [0, 1], labels [B]
    int64 with -1 = null) -> v [B, H*W*C]."""

    def __init__(self, height, width, channels, n_classes, base=16, mults=(1, 2, 2),
                 time_dim=64, emb_dim=64, groups=8):
        super().__init__()
        levels = len(mults)
        if levels < 1 or height % (1 << (levels - 1)) or width % (1 << (levels - 1)):
            raise ValueError(f"a U-Net with {levels} levels needs height and width divisible by "
                             f"{1 << (levels - 1)} (got {height}x{width})")
        if time_dim < 2 or time_dim % 2:
            raise ValueError(f"time_dim {time_dim} must be even and >= 2")
        self.height, self.width, self.channels = height, width, channels
        self.n_classes, self.base, self.mults = n_classes, base, tuple(mults)
        self.time_dim, self.emb_dim, self.groups = time_dim, emb_dim, groups
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(n_classes + 1, emb_dim)
        nn.init.normal_(self.class_emb.weight, std=0.1)
        self.conv_in = nn.Conv2d(channels, base, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch, skips = base, []
        for i, m in enumerate(mults):
            self.down.append(ResBlock(ch, base * m, emb_dim, groups))
            ch = base * m
            skips.append(ch)
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(ch, ch, emb_dim, groups)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            self.up.append(ResBlock(ch + skips[i], base * m, emb_dim, groups))
            ch = base * m
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(ch, groups), ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def config(self):
        """The constructor's arguments, as weights metadata (str -> str)."""
        return {"height": str(self.height), "width": str(self.width),
                "channels": str(self.channels), "n_classes": str(self.n_classes),
                "unet.base": str(self.base), "unet.mults": ",".join(map(str, self.mults)),
                "unet.time_dim": str(self.time_dim), "unet.emb_dim": str(self.emb_dim),
                "unet.groups": str(self.groups)}

    def architecture(self):
        return (f"{FORMAT} denoiser {self.height}x{self.width}x{self.channels} base={self.base} "
                f"mults={','.join(map(str, self.mults))} time_dim={self.time_dim} "
                f"emb_dim={self.emb_dim} n_classes={self.n_classes} (pytorch)")

    def forward(self, x, t, labels):
        B = x.shape[0]
        img = x.reshape(B, self.height, self.width, self.channels).permute(0, 3, 1, 2)
        row = torch.where(labels >= 0, labels, torch.full_like(labels, self.n_classes))
        e = F.silu(self.time_mlp(mlp.time_embedding(t, self.time_dim)) + self.class_emb(row))
        h = self.conv_in(img)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, e)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), e)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h.permute(0, 2, 3, 1).reshape(B, -1)


def _meta_int(st, key, lo, hi):
    v = st.meta(key)
    if v is None or not v.isdigit() or not lo <= int(v) <= hi:
        raise ValueError(f"weights file {st.path}: metadata {key} = {v!r}: expected an integer "
                         f"{lo}..{hi}")
    return int(v)


def load(st):
    """UNet from an open safetensors File written by train_unet (its config
    in the metadata, its state_dict as tensors). Raises ValueError naming
    the file and the problem."""
    if st.meta("ddm.format") != FORMAT:
        raise ValueError(f"weights file {st.path}: ddm.format is {st.meta('ddm.format')!r}, "
                         f"expected {FORMAT!r}")
    mults = st.meta("unet.mults", "")
    try:
        mults = tuple(int(m) for m in mults.split(","))
    except ValueError:
        raise ValueError(f"weights file {st.path}: metadata unet.mults = {mults!r}: expected "
                         f"comma-separated integers such as 1,2,2") from None
    if not 1 <= len(mults) <= 5 or not all(1 <= m <= 16 for m in mults):
        raise ValueError(f"weights file {st.path}: metadata unet.mults = {mults!r}: 1-5 levels "
                         f"of 1..16")
    net = UNet(_meta_int(st, "height", 1, 4096), _meta_int(st, "width", 1, 4096),
               _meta_int(st, "channels", 1, 4), _meta_int(st, "n_classes", 0, 100000),
               base=_meta_int(st, "unet.base", 1, 1024), mults=mults,
               time_dim=_meta_int(st, "unet.time_dim", 2, 4096),
               emb_dim=_meta_int(st, "unet.emb_dim", 1, 4096),
               groups=_meta_int(st, "unet.groups", 1, 1024))
    want = net.state_dict()
    missing = [k for k in want if k not in st.tensors]
    extra = [k for k in st.tensors if k not in want]
    if missing or extra:
        raise ValueError(f"weights file {st.path}: tensors do not match the U-Net of its "
                         f"metadata: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {}
    for k, v in want.items():
        a = torch.from_numpy(st.f32(k))
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(f"weights file {st.path}: tensor \"{k}\" shape {list(a.shape)}, "
                             f"expected {list(v.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError(f"weights file {st.path}: tensor \"{k}\" holds a non-finite value")
        state[k] = a
    net.load_state_dict(state)
    net.eval()
    return net
