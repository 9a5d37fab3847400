"""nanomsg.py -- the few nanomsg calls a worker needs, through ctypes on the
system libnanomsg (Debian's libnanomsg5); no Python bindings are vendored.

A raw (AF_SP_RAW) REP socket lets one process hold many requests at once,
which batching needs. nanomsg hands each request's SP header (the backtrace
of pipe and request ids) to nn_recvmsg as one PROTO_SP/SP_HDR control
message whose data is a size_t length followed by the header bytes; the
reply must carry the same header back through nn_sendmsg, or nanomsg cannot
route it (common/nnuv.c does the same in C).

ctypes releases the GIL during every foreign call, so a blocking receive on
one thread does not stop another thread's forward pass.
"""
import ctypes
import ctypes.util
import errno as _errno

AF_SP = 1
AF_SP_RAW = 2
NN_PROTO_REQREP = 3
NN_REQ = NN_PROTO_REQREP * 16 + 0
NN_REP = NN_PROTO_REQREP * 16 + 1

NN_SOL_SOCKET = 0
NN_LINGER = 1
NN_SNDBUF = 2
NN_RCVBUF = 3
NN_SNDTIMEO = 4
NN_RCVTIMEO = 5
NN_SNDFD = 10
NN_RCVFD = 11
NN_RCVMAXSIZE = 16

NN_DONTWAIT = 1
PROTO_SP = 1
SP_HDR = 1
NN_MSG = ctypes.c_size_t(-1).value

MAX_HDR = 64            # SP header bytes kept (16 hops), as common/nnuv.h
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_int),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t)]


class _CmsgHdr(ctypes.Structure):
    _fields_ = [("cmsg_len", ctypes.c_size_t), ("cmsg_level", ctypes.c_int),
                ("cmsg_type", ctypes.c_int)]


def _align(n):
    """NN_CMSG_ALIGN_: round up to a multiple of sizeof(size_t)."""
    return (n + _SIZE_T - 1) & ~(_SIZE_T - 1)


_CMSG_HDR = _align(ctypes.sizeof(_CmsgHdr))   # NN_CMSG_DATA offset


def _cmsg_space(n):
    return _align(n) + _CMSG_HDR


_CTRL_BYTES = _cmsg_space(_SIZE_T + MAX_HDR)


def _load():
    name = ctypes.util.find_library("nanomsg") or "libnanomsg.so.5"
    try:
        lib = ctypes.CDLL(name, use_errno=False)
    except OSError as e:
        raise OSError(f"cannot load libnanomsg ({name}): {e}; install it with "
                      f"apt-get install libnanomsg5 (make deps does)") from e
    c_int, c_void_p, c_size_t, c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    sig = {
        "nn_socket": (c_int, [c_int, c_int]),
        "nn_close": (c_int, [c_int]),
        "nn_bind": (c_int, [c_int, c_char_p]),
        "nn_connect": (c_int, [c_int, c_char_p]),
        "nn_setsockopt": (c_int, [c_int, c_int, c_int, c_void_p, c_size_t]),
        "nn_getsockopt": (c_int, [c_int, c_int, c_int, c_void_p, ctypes.POINTER(c_size_t)]),
        "nn_sendmsg": (c_int, [c_int, ctypes.POINTER(_MsgHdr), c_int]),
        "nn_recvmsg": (c_int, [c_int, ctypes.POINTER(_MsgHdr), c_int]),
        "nn_freemsg": (c_int, [c_void_p]),
        "nn_errno": (c_int, []),
        "nn_strerror": (c_char_p, [c_int]),
    }
    for fn, (res, args) in sig.items():
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    return lib


_lib = _load()


class NanomsgError(OSError):
    """A failed nanomsg call: errno and nanomsg's own message."""

    def __init__(self, what, err=None):
        err = _lib.nn_errno() if err is None else err
        msg = _lib.nn_strerror(err).decode("utf-8", "replace")
        super().__init__(err, f"{what}: {msg}")
        self.what = what


def _check(rc, what):
    if rc < 0:
        raise NanomsgError(what)
    return rc


class Socket:
    """One nanomsg socket. Methods raise NanomsgError on failure; recv() and
    send() may be called from different threads (nanomsg sockets are
    thread-safe), close() once, after every other use has ended."""

    def __init__(self, domain, protocol):
        self.fd = _check(_lib.nn_socket(domain, protocol), "nn_socket")
        self._ctrl = ctypes.create_string_buffer(_CTRL_BYTES)
        self._closed = False

    def setsockopt_int(self, option, value, level=NN_SOL_SOCKET):
        v = ctypes.c_int(value)
        _check(_lib.nn_setsockopt(self.fd, level, option, ctypes.byref(v), ctypes.sizeof(v)),
               f"nn_setsockopt({option})")

    def getsockopt_int(self, option, level=NN_SOL_SOCKET):
        v = ctypes.c_int(0)
        sz = ctypes.c_size_t(ctypes.sizeof(v))
        _check(_lib.nn_getsockopt(self.fd, level, option, ctypes.byref(v), ctypes.byref(sz)),
               f"nn_getsockopt({option})")
        return v.value

    def bind(self, url):
        return _check(_lib.nn_bind(self.fd, url.encode()), f"nn_bind {url}")

    def connect(self, url):
        return _check(_lib.nn_connect(self.fd, url.encode()), f"nn_connect {url}")

    def recv(self, dontwait=False):
        """Receives one message. Returns (body bytes, SP header bytes), or
        None when dontwait is set and nothing is waiting (or a signal
        interrupted the call). A header too long to keep (over MAX_HDR bytes)
        is returned as b"" so the caller drops the message."""
        body = ctypes.c_void_p()
        iov = _IoVec(ctypes.cast(ctypes.byref(body), ctypes.c_void_p), NN_MSG)
        cm = _CmsgHdr.from_buffer(self._ctrl)
        cm.cmsg_len = 0
        mh = _MsgHdr(ctypes.pointer(iov), 1, ctypes.cast(self._ctrl, ctypes.c_void_p), _CTRL_BYTES)
        n = _lib.nn_recvmsg(self.fd, ctypes.byref(mh), NN_DONTWAIT if dontwait else 0)
        if n < 0:
            err = _lib.nn_errno()
            if err in (_errno.EAGAIN, _errno.EINTR, _errno.ETIMEDOUT):
                return None
            raise NanomsgError("nn_recvmsg", err)
        try:
            data = ctypes.string_at(body, n)
        finally:
            _lib.nn_freemsg(body)
        return data, self._parse_hdr(cm)

    def _parse_hdr(self, cm):
        if cm.cmsg_len < _cmsg_space(_SIZE_T) or cm.cmsg_level != PROTO_SP or cm.cmsg_type != SP_HDR:
            return b""
        raw = self._ctrl.raw
        n = int.from_bytes(raw[_CMSG_HDR:_CMSG_HDR + _SIZE_T], "little")
        if n > MAX_HDR:
            return b""
        return raw[_CMSG_HDR + _SIZE_T:_CMSG_HDR + _SIZE_T + n]

    def send(self, body, hdr=b""):
        """Sends body (bytes-like) with the SP header hdr (from recv; b"" for
        a cooked socket). nanomsg copies both. Returns the bytes sent."""
        buf = (ctypes.c_char * len(body)).from_buffer_copy(body) if len(body) else ctypes.c_char()
        iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(body))
        mh = _MsgHdr(ctypes.pointer(iov), 1, None, 0)
        if hdr:
            if len(hdr) > MAX_HDR:
                raise ValueError(f"SP header of {len(hdr)} bytes is over {MAX_HDR}")
            space = _cmsg_space(_SIZE_T + len(hdr))
            ctrl = ctypes.create_string_buffer(space)
            cm = _CmsgHdr.from_buffer(ctrl)
            cm.cmsg_len = space
            cm.cmsg_level = PROTO_SP
            cm.cmsg_type = SP_HDR
            ctypes.memmove(ctypes.addressof(ctrl) + _CMSG_HDR, len(hdr).to_bytes(_SIZE_T, "little"),
                           _SIZE_T)
            ctypes.memmove(ctypes.addressof(ctrl) + _CMSG_HDR + _SIZE_T, hdr, len(hdr))
            mh.msg_control = ctypes.cast(ctrl, ctypes.c_void_p)
            mh.msg_controllen = space
        return _check(_lib.nn_sendmsg(self.fd, ctypes.byref(mh), 0), "nn_sendmsg")

    def close(self):
        if not self._closed:
            self._closed = True
            _lib.nn_close(self.fd)
