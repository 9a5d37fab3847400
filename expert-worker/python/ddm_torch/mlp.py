"""mlp.py -- the ddm MLP expert (common/net.h) in PyTorch, loaded straight
from our safetensors weights files (ddm.format "ddm-mlp-v1").

The math is net.h's, term for term:
  h0 = W_in x + b_in + W_t temb(t) + emb[label]      (label -1 -> row C, the null label)
  per block b:  h += W2_b silu(W1_b (LN(h) g_b) + b1_b) + b2_b
  f  = silu(LN(h) g_out);  y = W_out f + b_out
  v  = y + gauss(x, t)
LN is LayerNorm without bias, eps 1e-5. temb: T2 = T/2, freq_i = exp(-ln(10000) i / T2),
arg_i = 1000 t freq_i in double, temb = [sin(arg), cos(arg)] rounded to float.
gauss: with a = 1 - t (float), d = x - a mu and f(l) = (t - (1-t) l) / ((1-t)^2 l + t^2)
computed in double, gauss = -mu + f(sig2) d + ((d U^T) (f(lam) - f(sig2))) U.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

FORMAT = "ddm-mlp-v1"
LN_EPS = 1e-5
MAX_DIM = 8192
_CFG_KEYS = ("in_dim", "hidden", "n_blocks", "out_dim", "n_classes", "time_dim", "gauss_rank")


def time_embedding(t, time_dim):
    """[B] times -> [B, time_dim] sinusoidal features, computed in double
    and rounded to float exactly as common/net.c does."""
    half = time_dim // 2
    k = torch.arange(half, dtype=torch.float64)
    freq = torch.exp(-math.log(10000.0) * k / half)
    arg = 1000.0 * t.to(torch.float64)[:, None] * freq[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(torch.float32)


def _tensor_shapes(c):
    """The tensors of net_tensor_table() for config c: name -> shape."""
    D, H, B, O = c["in_dim"], c["hidden"], c["n_blocks"], c["out_dim"]
    T, C, R = c["time_dim"], c["n_classes"], c["gauss_rank"]
    shapes = {"w_in": (H, D), "b_in": (H,)}
    if T > 0:
        shapes["w_t"] = (H, T)
    if C > 0:
        shapes["emb"] = (C + 1, H)
    shapes["ln_g"] = (B + 1, H)
    if B > 0:
        shapes.update({"w1": (B, H, H), "b1": (B, H), "w2": (B, H, H), "b2": (B, H)})
    shapes.update({"w_out": (O, H), "b_out": (O,)})
    if R > 0:
        shapes.update({"g_mu": (D,), "g_u": (R, D), "g_lam": (R,), "g_sig2": (1,)})
    return shapes


def read_config(st, kind="denoiser"):
    """The net config from a weights file's metadata, checked as
    common/model.c checks it. kind: "denoiser" (what a worker serves) or
    "router" (the router network: K logits, no Gaussian baseline).
    Raises ValueError naming the file and key."""
    def fail(what):
        raise ValueError(f"weights file {st.path}: {what}")
    fmt = st.meta("ddm.format")
    if fmt != FORMAT:
        fail(f"ddm.format is {fmt!r}, expected {FORMAT!r}")
    if st.meta("ddm.kind") != kind:
        fail(f"ddm.kind is {st.meta('ddm.kind')!r}: " +
             ("only denoisers (experts, monolith) are served" if kind == "denoiser"
              else f"expected {kind!r}"))
    c = {}
    for k in _CFG_KEYS:
        v = st.meta(k)
        if v is None:
            fail(f"metadata {k} is missing")
        if not v.isdigit() or len(v) > 9:
            fail(f"metadata {k} = {v!r} is not a non-negative decimal integer")
        c[k] = int(v)
        lo = 0 if k in ("n_blocks", "n_classes", "time_dim", "gauss_rank") else 1
        if not lo <= c[k] <= MAX_DIM:
            fail(f"network config: {k} = {c[k]}, allowed {lo}..{MAX_DIM}")
    if c["n_blocks"] > 64:
        fail(f"network config: n_blocks = {c['n_blocks']}, allowed 0..64")
    if c["time_dim"] % 2:
        fail(f"network config: time_dim = {c['time_dim']} must be even")
    if kind == "denoiser" and c["out_dim"] != c["in_dim"]:
        fail(f"a denoiser needs out_dim == in_dim (in_dim {c['in_dim']}, out_dim {c['out_dim']})")
    if c["gauss_rank"] > 0 and c["out_dim"] != c["in_dim"]:
        fail(f"a Gaussian baseline (gauss_rank {c['gauss_rank']}) needs out_dim == in_dim")
    if c["gauss_rank"] > c["in_dim"]:
        fail(f"gauss_rank {c['gauss_rank']} is over in_dim {c['in_dim']}")
    return c


class DdmMlp(torch.nn.Module):
    """forward(x [B,D] float32, t [B] float32 in [0,1], labels [B] int64,
    -1 = null) -> v [B,D] float32. Inference only: the weights are buffers."""

    def __init__(self, config, tensors):
        """config: dict of the net config ints; tensors: name -> float32
        numpy array of exactly the shapes of _tensor_shapes(config)."""
        super().__init__()
        self.config = dict(config)
        for name, shape in _tensor_shapes(config).items():
            a = tensors[name]
            if tuple(a.shape) != shape:
                raise ValueError(f"tensor {name} has shape {list(a.shape)}, expected {list(shape)}")
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
        R = config["gauss_rank"]
        if R > 0:
            self.register_buffer("lam64", self.g_lam.to(torch.float64))
            self.register_buffer("sig64", self.g_sig2.to(torch.float64))

    @staticmethod
    def _gain(l, t):
        a = 1.0 - t
        return (t - a * l) / (a * a * l + t * t)

    def forward(self, x, t, labels):
        c = self.config
        H, B, C = c["hidden"], c["n_blocks"], c["n_classes"]
        h = F.linear(x, self.w_in, self.b_in)
        if c["time_dim"] > 0:
            h = h + F.linear(time_embedding(t, c["time_dim"]), self.w_t)
        if C > 0:
            row = torch.where(labels >= 0, labels, torch.full_like(labels, C))
            h = h + self.emb[row]
        for b in range(B):
            u = F.layer_norm(h, (H,), weight=self.ln_g[b], eps=LN_EPS)
            a = F.silu(F.linear(u, self.w1[b], self.b1[b]))
            h = h + F.linear(a, self.w2[b], self.b2[b])
        f = F.silu(F.layer_norm(h, (H,), weight=self.ln_g[B], eps=LN_EPS))
        y = F.linear(f, self.w_out, self.b_out)
        if c["gauss_rank"] > 0:
            a = 1.0 - t                                      # float, as net.c
            d = x - a[:, None] * self.g_mu[None, :]
            t64 = t.to(torch.float64)
            fs = self._gain(self.sig64, t64)                 # [B]
            gain = (self._gain(self.lam64[None, :], t64[:, None]) - fs[:, None]).to(torch.float32)
            z = F.linear(d, self.g_u) * gain                 # [B, R]
            y = y - self.g_mu + fs.to(torch.float32)[:, None] * d + z @ self.g_u
        return y


def load(st, kind="denoiser"):
    """DdmMlp from an open safetensors File (weights converted to float32,
    checked finite, variances positive); kind as read_config's. Raises
    ValueError with a message naming the file and the problem."""
    c = read_config(st, kind)
    tensors = {}
    for name, shape in _tensor_shapes(c).items():
        if name not in st.tensors:
            raise ValueError(f"weights file {st.path}: tensor \"{name}\" is missing "
                             f"(expected shape {list(shape)})")
        dt, got = st.tensors[name]
        if dt not in ("F32", "F16", "BF16"):
            raise ValueError(f"weights file {st.path}: tensor \"{name}\" has dtype {dt}, "
                             f"expected F32, F16 or BF16")
        if got != shape:
            raise ValueError(f"weights file {st.path}: tensor \"{name}\" shape {list(got)} does "
                             f"not match the metadata: expected {list(shape)}")
        a = st.f32(name)
        if not np.isfinite(a).all():
            raise ValueError(f"weights file {st.path}: tensor \"{name}\" holds a non-finite value")
        tensors[name] = a
    if c["gauss_rank"] > 0:
        if (tensors["g_lam"] < 0).any():
            raise ValueError(f"weights file {st.path}: tensor \"g_lam\" has a negative variance")
        if not tensors["g_sig2"][0] > 0:
            raise ValueError(f"weights file {st.path}: tensor \"g_sig2\" must be positive")
    return DdmMlp(c, tensors)


def architecture(config):
    """The handshake's architecture string, as ddm-expert words it, plus
    the implementation."""
    c = config
    return (f"{FORMAT} denoiser in_dim={c['in_dim']} hidden={c['hidden']} n_blocks={c['n_blocks']} "
            f"time_dim={c['time_dim']} n_classes={c['n_classes']} gauss_rank={c['gauss_rank']} "
            f"(pytorch)")
