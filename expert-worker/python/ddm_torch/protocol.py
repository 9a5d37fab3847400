"""protocol.py -- worker protocol v1 (docs/protocol.md) on the worker's
side: error codes, DenoiseRequest validation, Info replies and the MAC
trailer of keyed clusters.

Validation follows expert-worker/wire.c check for check and word for word,
so both implementations refuse the same requests with the same codes:
dim present and equal to the expert's, batch 1..max_batch, x exactly
dim x batch x 4 bytes, labels empty or one per latent in -1..C-1, ts empty
or one per latent in [0, 1] (else t present and in [0, 1]), every x finite.

Authentication (HELPERS.md, docs/protocol.md): with a cluster key every
message is P || T, P the packed message without `mac`, T = 0x7a 0x20 and a
32-byte MAC (so P || T parses as the message with field 15 set).
Request MAC = HMAC-SHA256(key, "ddm1 req" || P); reply MAC =
HMAC-SHA256(key, "ddm1 rep" || request MAC || P_reply).
"""
import hashlib
import hmac

import numpy as np

PROTOCOL_VERSION = "1.0"

# common/err.h
EINVAL = -1000
ENOMEM = -1001
EIO = -1002
EFORMAT = -1003
ERANGE = -1004
EMISMATCH = -1005
ETIMEDOUT = -1006
EUNAVAIL = -1007
EBUSY = -1008
ECLOSED = -1009
ENOTFOUND = -1010
EPROTO = -1011

MAC_LEN = 32
TRAILER_LEN = 2 + MAC_LEN
TRAILER_TAG = b"\x7a\x20"            # field 15, wire type 2, length 32
MIN_KEY_BYTES = 16


class ProtocolError(Exception):
    """A request the worker refuses: code (common/err.h) and a one-line
    message saying what to fix."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def _fmt_g(v):
    """C's %g, as wire.c prints times."""
    return "%g" % v


def check_denoise(r, dim, max_batch, n_classes):
    """Validates a decoded DenoiseRequest r (ddm.v1 protobuf) against the
    worker's limits. Returns (x float32 [batch, dim] array, t float32
    [batch], labels int64 [batch]) or raises ProtocolError."""
    if not r.HasField("dim"):
        raise ProtocolError(EINVAL, f"dim missing: set dim = {dim}")
    if r.dim != dim:
        raise ProtocolError(EMISMATCH, f"dim {r.dim} does not match this expert's dim {dim}")
    if not r.HasField("batch") or r.batch == 0:
        raise ProtocolError(ERANGE, f"batch must be 1..{max_batch} latents")
    if r.batch > max_batch:
        raise ProtocolError(ERANGE, f"batch {r.batch} is over this worker's --max-batch "
                                    f"{max_batch}: split the request")
    n = r.batch
    want = r.dim * n * 4
    xlen = len(r.x) if r.HasField("x") else 0
    if xlen != want:
        raise ProtocolError(EMISMATCH, f"x has {xlen} bytes, expected dim x batch x 4 = "
                                       f"{r.dim} x {n} x 4 = {want}")
    nl = len(r.labels)
    if nl != 0 and nl != n:
        raise ProtocolError(EMISMATCH, f"labels has {nl} entries, expected none or one per "
                                       f"latent ({n})")
    labels = np.asarray(r.labels, dtype=np.int64) if nl else np.full(n, -1, dtype=np.int64)
    bad = np.nonzero((labels < -1) | (labels >= n_classes))[0]
    if bad.size:
        i = int(bad[0])
        if n_classes > 0:
            raise ProtocolError(ERANGE, f"labels[{i}] = {labels[i]} is outside "
                                        f"-1..{n_classes - 1} (-1 = null)")
        raise ProtocolError(ERANGE, f"labels[{i}] = {labels[i]} but this expert is "
                                    f"unconditional: send no labels or -1")
    nt = len(r.ts)
    if nt != 0:
        if nt != n:
            raise ProtocolError(EMISMATCH, f"ts has {nt} entries, expected none (use t) or one "
                                           f"per latent ({n})")
        t = np.asarray(r.ts, dtype=np.float32)
        bad = np.nonzero(~((t >= 0) & (t <= 1)))[0]          # NaN fails both
        if bad.size:
            i = int(bad[0])
            raise ProtocolError(ERANGE, f"ts[{i}] = {_fmt_g(float(t[i]))} is outside [0, 1]")
    else:
        if not r.HasField("t"):
            raise ProtocolError(EINVAL, "t missing: set t in [0, 1] (or ts, one per latent)")
        if not 0 <= r.t <= 1:
            raise ProtocolError(ERANGE, f"t = {_fmt_g(r.t)} is outside [0, 1]")
        t = np.full(n, r.t, dtype=np.float32)
    x = np.frombuffer(r.x, dtype="<f4").reshape(n, r.dim)
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.argmin(finite.reshape(-1)))
        raise ProtocolError(ERANGE, f"x of latent {i // r.dim}, element {i % r.dim} is not "
                                    f"finite (NaN or inf)")
    return x, t, labels


def max_request_bytes(dim, max_batch):
    """Largest encoded valid WorkerRequest (as wire_max_request_bytes), for
    NN_RCVMAXSIZE."""
    return max_batch * dim * 4 + max_batch * (6 + 5) + 128 + TRAILER_LEN


def read_key(path):
    """The cluster key: the file's bytes with trailing whitespace trimmed,
    at least MIN_KEY_BYTES. Raises ValueError with what to fix."""
    try:
        with open(path, "rb") as f:
            key = f.read().rstrip(b" \t\r\n\v\f")
    except OSError as e:
        raise ValueError(f"--cluster-key-file {path}: {e.strerror}") from e
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"--cluster-key-file {path}: the key is {len(key)} bytes, at least "
                         f"{MIN_KEY_BYTES} are needed (e.g. head -c 32 /dev/urandom | base64 > FILE)")
    return key


def request_mac(key, payload):
    return hmac.new(key, b"ddm1 req" + payload, hashlib.sha256).digest()


def reply_mac(key, req_mac, payload):
    return hmac.new(key, b"ddm1 rep" + req_mac + payload, hashlib.sha256).digest()


def verify_request(key, msg):
    """For a keyed worker: splits msg into (P, request MAC) after checking
    its trailer. Raises ProtocolError: EPROTO when the trailer is missing,
    EMISMATCH when the MAC is wrong (the codes docs/protocol.md gives)."""
    if len(msg) < TRAILER_LEN or msg[-TRAILER_LEN:-MAC_LEN] != TRAILER_TAG:
        raise ProtocolError(EPROTO, "request has no MAC trailer: this worker runs with a "
                                    "cluster key (--cluster-key-file); give the router the same key")
    payload, mac = msg[:-TRAILER_LEN], msg[-MAC_LEN:]
    if not hmac.compare_digest(mac, request_mac(key, payload)):
        raise ProtocolError(EMISMATCH, "request MAC does not verify: the router's cluster key "
                                       "is not this worker's (--cluster-key-file)")
    return payload, mac


def seal_reply(key, req_mac, payload):
    """P_reply || trailer, bound to the request MAC it answers."""
    return payload + TRAILER_TAG + reply_mac(key, req_mac, payload)
