"""safetensors.py -- read and write safetensors files (the weights and shard
format of ddm), checked like common/st.c checks them.

Layout: an 8-byte little-endian header length N, N bytes of JSON
({"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}), then
the data block, which the tensors must tile exactly (no overlap, no gap, no
trailing bytes). Nothing from the file is trusted before it is checked.
"""
import hashlib
import json
import os
import tempfile

import numpy as np

# dtype name -> (numpy dtype of the stored bytes, bytes per element)
_DTYPES = {
    "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "F64": ("<f8", 8), "I32": ("<i4", 4), "I64": ("<i8", 8), "U8": ("u1", 1),
}
_MAX_HEADER = 100 * 1024 * 1024


class FormatError(ValueError):
    """The file does not follow the format; the message names the file and
    what is wrong."""


class File:
    """A safetensors file read into memory: .path, .metadata (dict of str),
    .sha256 (hex of the whole file), .tensors (name -> (dtype, shape))."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self._raw = f.read()
        except OSError as e:
            raise FormatError(f"{path}: cannot read: {e.strerror}") from e
        self.sha256 = hashlib.sha256(self._raw).hexdigest()
        self.metadata, self.tensors, self._spans = self._parse()

    def _fail(self, what):
        raise FormatError(f"{self.path}: {what}")

    def _parse(self):
        raw = self._raw
        if len(raw) < 8:
            self._fail(f"{len(raw)} bytes: too short for a safetensors file")
        n = int.from_bytes(raw[:8], "little")
        if n > _MAX_HEADER or 8 + n > len(raw):
            self._fail(f"header length {n} does not fit the file's {len(raw)} bytes")
        try:
            head = json.loads(raw[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self._fail(f"header is not valid JSON: {e}")
        if not isinstance(head, dict):
            self._fail("header is not a JSON object")
        meta = head.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in meta.items()):
            self._fail("__metadata__ must map strings to strings")
        base = 8 + n
        size = len(raw) - base
        tensors, spans = {}, []
        for name, t in head.items():
            if not isinstance(t, dict):
                self._fail(f"tensor \"{name}\" is not an object")
            dt, shape, offs = t.get("dtype"), t.get("shape"), t.get("data_offsets")
            if dt not in _DTYPES:
                self._fail(f"tensor \"{name}\" has unknown dtype {dt!r}")
            if (not isinstance(shape, list) or
                    not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
                self._fail(f"tensor \"{name}\" shape {shape!r} is not a list of non-negative integers")
            if (not isinstance(offs, list) or len(offs) != 2 or
                    not all(isinstance(o, int) and not isinstance(o, bool) for o in offs) or
                    not 0 <= offs[0] <= offs[1] <= size):
                self._fail(f"tensor \"{name}\" data_offsets {offs!r} are outside the "
                           f"{size}-byte data block")
            numel = 1
            for d in shape:
                numel *= d
            if numel * _DTYPES[dt][1] != offs[1] - offs[0]:
                self._fail(f"tensor \"{name}\" {dt} {shape} needs {numel * _DTYPES[dt][1]} bytes, "
                           f"data_offsets give {offs[1] - offs[0]}")
            tensors[name] = (dt, tuple(shape))
            spans.append((offs[0], offs[1], name))
        at = 0
        for b, e, name in sorted(spans):
            if b != at:
                self._fail(f"data block has a gap or overlap at byte {at} (tensor \"{name}\" "
                           f"starts at {b})")
            at = e
        if at != size:
            self._fail(f"{size - at} trailing bytes after the last tensor")
        return meta, tensors, {name: (base + b, base + e) for b, e, name in spans}

    def meta(self, key, default=None):
        return self.metadata.get(key, default)

    def array(self, name):
        """The tensor as a numpy array of its stored type (F16 as float16,
        BF16 widened to float32); KeyError if absent."""
        dt, shape = self.tensors[name]
        b, e = self._spans[name]
        a = np.frombuffer(self._raw, dtype=_DTYPES[dt][0], count=(e - b) // _DTYPES[dt][1],
                          offset=b)
        if dt == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a.reshape(shape)

    def f32(self, name):
        """The tensor converted to a float32 numpy array (a copy)."""
        dt = self.tensors[name][0]
        if dt not in ("F32", "F16", "BF16", "F64"):
            self._fail(f"tensor \"{name}\" has dtype {dt}, expected F32, F16 or BF16")
        return np.array(self.array(name), dtype=np.float32)


def write(path, tensors, metadata, dtype="F32"):
    """Writes tensors (ordered dict name -> numpy array or torch tensor) and
    metadata (dict str -> str) to path atomically (temp file + rename).
    Float tensors are stored as dtype ("F32" or "F16"); integer numpy arrays
    of int32/uint8 keep their type. The header is padded with spaces to a
    multiple of 8 so the data block is aligned, as common/st.c writes it."""
    if dtype not in ("F32", "F16"):
        raise ValueError(f"dtype {dtype}: use F32 or F16")
    head, blobs, at = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        if a.dtype.kind == "f":
            a, dt = (a.astype("<f2"), "F16") if dtype == "F16" else (a.astype("<f4"), "F32")
        elif a.dtype == np.int32:
            a, dt = a.astype("<i4"), "I32"
        elif a.dtype == np.uint8:
            dt = "U8"
        else:
            raise ValueError(f"tensor {name}: dtype {a.dtype} is not written")
        b = np.ascontiguousarray(a).tobytes()
        head[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    head["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    js = json.dumps(head, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 8)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(js).to_bytes(8, "little"))
            f.write(js)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
