"""experts.py -- a weights file turned into what the worker serves: a
torch.nn.Module with forward(x [B,D], t [B], labels [B]) -> v [B,D], and the
identity the Info handshake declares (expert id, dim, classes, shape, hash).

The identity always comes from the weights file's safetensors metadata
(common/model.h's keys): expert_id, num_experts, dataset, n_classes, in_dim
(or height x width x channels), and optionally height, width, channels and
class_names. The module comes from ddm.format ("ddm-mlp-v1" or
"ddm-unet-v1"), or from a user factory (--module FILE.py:NAME) that is
called with the weights path and returns any such module.
"""
import importlib.util
import json
import os

import torch

from . import mlp, safetensors, unet


class Expert:
    """module: the torch.nn.Module (in eval mode); the other attributes are
    the handshake's InfoReply fields."""

    def __init__(self, module, st, architecture):
        self.module = module
        self.path = st.path
        self.weights_sha256 = st.sha256
        self.architecture = architecture
        self._identity(st)

    def _identity(self, st):
        def fail(what):
            raise ValueError(f"weights file {st.path}: {what}")

        def integer(key, lo, hi, default=None):
            v = st.meta(key)
            if v is None:
                if default is None:
                    fail(f"metadata {key} is missing")
                return default
            neg = v.startswith("-")
            if not (v[1:] if neg else v).isdigit() or len(v) > 10 or not lo <= int(v) <= hi:
                fail(f"metadata {key} = {v!r}: expected an integer {lo}..{hi}")
            return int(v)

        self.expert_id = integer("expert_id", -1, 1 << 30, -1)
        self.num_experts = integer("num_experts", 0, 1 << 30, 0)
        if self.num_experts > 0 and self.expert_id >= self.num_experts:
            fail(f"metadata expert_id = {self.expert_id} is outside 0..{self.num_experts - 1} "
                 f"(num_experts = {self.num_experts})")
        self.dataset = st.meta("dataset", "")
        if len(self.dataset) >= 32:
            fail(f"metadata dataset = {self.dataset[:40]!r} is longer than 31 characters")
        self.num_classes = integer("n_classes", 0, 1 << 20, 0)
        shape = [st.meta(k) for k in ("height", "width", "channels")]
        if any(v is not None for v in shape):
            self.height = integer("height", 1, 1 << 16)
            self.width = integer("width", 1, 1 << 16)
            self.channels = integer("channels", 1, 3)
            if self.channels not in (1, 3):
                fail(f"metadata channels = {self.channels}: use 1 (grey) or 3 (RGB)")
        else:
            self.height = self.width = self.channels = None     # absent = 28 x 28 x 1
        if st.meta("in_dim") is not None:
            self.dim = integer("in_dim", 1, 1 << 26)
        elif self.height is not None:
            self.dim = self.height * self.width * self.channels
        else:
            fail("metadata in_dim (or height, width, channels) is missing")
        if self.height is not None and self.height * self.width * self.channels != self.dim:
            fail(f"height x width x channels = {self.height}x{self.width}x{self.channels} "
                 f"does not equal in_dim {self.dim}")
        self.class_names = []
        names = st.meta("class_names")
        if names is not None:
            try:
                self.class_names = json.loads(names)
            except ValueError:
                fail("metadata class_names is not a JSON array")
            if (not isinstance(self.class_names, list) or
                    not all(isinstance(n, str) for n in self.class_names) or
                    len(self.class_names) != self.num_classes):
                fail(f"metadata class_names must be a JSON array of n_classes "
                     f"({self.num_classes}) strings")


def _load_factory(spec):
    """"FILE.py:NAME" -> the callable NAME defined in FILE.py."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"--module {spec}: use FILE.py:NAME (NAME(weights_path) returns "
                         f"the torch.nn.Module to serve)")
    if not os.path.isfile(path):
        raise ValueError(f"--module {spec}: {path} not found")
    modspec = importlib.util.spec_from_file_location("ddm_user_module", path)
    mod = importlib.util.module_from_spec(modspec)
    modspec.loader.exec_module(mod)
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ValueError(f"--module {spec}: {path} defines no callable {name}")
    return fn


def load(path, module_spec=None):
    """Opens a weights file and builds its Expert. module_spec: None (the
    file's ddm.format decides) or "FILE.py:NAME". Raises ValueError (or
    safetensors.FormatError, a ValueError) with a one-line message."""
    st = safetensors.File(path)
    if module_spec:
        module = _load_factory(module_spec)(path)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"--module {module_spec}: returned {type(module).__name__}, "
                             f"not a torch.nn.Module")
        arch = getattr(module, "architecture", None)
        arch = str(arch()) if callable(arch) else f"{type(module).__name__} from {module_spec}"
        arch = arch if "pytorch" in arch else f"{arch} (pytorch)"
    else:
        fmt = st.meta("ddm.format")
        if fmt == mlp.FORMAT:
            module = mlp.load(st)
            arch = mlp.architecture(module.config)
        elif fmt == unet.FORMAT:
            module = unet.load(st)
            arch = module.architecture()
        else:
            raise ValueError(f"weights file {path}: ddm.format is {fmt!r}: this worker reads "
                             f"{mlp.FORMAT!r} and {unet.FORMAT!r} (or give --module FILE.py:NAME)")
    module.eval()
    return Expert(module, st, arch)
