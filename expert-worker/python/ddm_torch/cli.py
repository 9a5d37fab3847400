"""cli.py -- ddm-torch-worker's command line: the flags of ddm-expert
(expert-worker/args.c), parsed with getopt, one-line errors, exit 0/1/2."""
import sys

from . import __version__
from .args import UsageError, integer, parse as getopt_parse
from .log import LEVELS, log

PROG = "ddm-torch-worker"

USAGE = f"""usage: {PROG} --weights FILE --listen URL [--listen URL ...] [options]

The PyTorch reference worker of worker protocol v1 (docs/protocol.md): serves one
expert to ddm-router over nanomsg, answering DenoiseRequests and InfoRequests
(proto/ddm/v1/worker.proto) from any number of routers and batching concurrent
requests into one forward pass. Serves ddm MLP weights (ddm.format ddm-mlp-v1,
as ddm-expert), U-Net weights from ddm-torch-train (ddm-unet-v1), or any
torch.nn.Module with forward(x [B,D], t [B], labels [B]) -> v [B,D] (--module).

  -w, --weights FILE         expert weights (safetensors, e.g. models/digits/expert-3.safetensors);
                             its metadata gives the handshake's expert_id, num_experts,
                             dataset, n_classes, in_dim and image shape
  -l, --listen URL           nanomsg URL to bind, repeatable (at most 16): tcp://127.0.0.1:7103,
                             tcp://*:7103, ipc:///tmp/expert-3.ipc
      --module FILE.py:NAME  serve NAME(weights_path) from FILE.py, a function returning
                             the torch.nn.Module (default: the module of the file's ddm.format)
      --max-batch N          latents per request and per forward pass (default 256)
      --max-delay-us N       how long a request may wait for others to share its forward
                             pass (default 500; 0 = never wait)
      --max-queue N          latents waiting before new requests are refused with a busy
                             error (default 16 x max-batch)
      --threads N            torch intra-op threads (default 1: many workers share a machine)
      --inline-rows N        accepted for ddm-expert compatibility; no effect here
      --metrics HOST:PORT    serve Prometheus text on GET /metrics (default off)
      --linger-ms N          on SIGTERM/SIGINT, after the last reply, time given to nanomsg
                             to send it before exiting (default 200)
      --cluster-key-file FILE  the cluster's shared key (at least 16 bytes): every request
                             must carry a valid MAC and every reply gets one (default off)
      --log-level LEVEL      debug, info, warn, error or off (default info)
  -h, --help                 this text
  -V, --version              version

SIGTERM or SIGINT: stop taking work, answer what is queued, exit 0.
Exit status: 0 success, 1 runtime error (e.g. bad weights file), 2 usage error.
"""

class Config:
    """The worker's settings (the command line); server.Worker reads it."""

    def __init__(self):
        self.weights = None
        self.listen = []
        self.max_batch = 256
        self.max_delay_us = 500
        self.max_queue = 0           # 0: 16 x max_batch
        self.threads = 1
        self.metrics = None          # "HOST:PORT"
        self.linger_ms = 200
        self.cluster_key_file = None
        self.module = None           # "FILE.py:NAME"


_LONG = ["weights=", "listen=", "module=", "max-batch=", "max-delay-us=", "max-queue=",
         "threads=", "inline-rows=", "metrics=", "linger-ms=", "cluster-key-file=",
         "log-level=", "help", "version"]


def parse(argv, cfg):
    """Fills cfg (a Config) from argv (without the program name).
    Returns "run" or "exit" (help/version printed); raises UsageError."""
    opts, rest = getopt_parse(argv, "w:l:hV", _LONG)
    for o, a in opts:
        if o in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return "exit"
        if o in ("-V", "--version"):
            print(f"{PROG} {__version__}")
            return "exit"
        if o in ("-w", "--weights"):
            cfg.weights = a
        elif o in ("-l", "--listen"):
            if len(cfg.listen) == 16:
                raise UsageError("--listen: at most 16 URLs")
            cfg.listen.append(a)
        elif o == "--module":
            cfg.module = a
        elif o == "--max-batch":
            cfg.max_batch = integer("max-batch", a, 1, 65536)
        elif o == "--max-delay-us":
            cfg.max_delay_us = integer("max-delay-us", a, 0, 10000000)
        elif o == "--max-queue":
            cfg.max_queue = integer("max-queue", a, 1, 1 << 30)
        elif o == "--threads":
            cfg.threads = integer("threads", a, 1, 1024)
        elif o == "--inline-rows":
            integer("inline-rows", a, 0, 65536)
        elif o == "--metrics":
            cfg.metrics = a
        elif o == "--linger-ms":
            cfg.linger_ms = integer("linger-ms", a, 0, 60000)
        elif o == "--cluster-key-file":
            cfg.cluster_key_file = a
        elif o == "--log-level":
            if not log.set_level(a):
                raise UsageError(f"--log-level \"{a}\": use {', '.join(LEVELS[:-1])} or off")
    if rest:
        raise UsageError(f"unexpected argument \"{rest[0]}\" (see --help)")
    if not cfg.weights:
        raise UsageError("--weights FILE is required (e.g. models/digits/expert-3.safetensors)")
    if not cfg.listen:
        raise UsageError("--listen URL is required (e.g. tcp://127.0.0.1:7103)")
    return "run"


def main(argv=None):
    """The ddm-torch-worker program. Returns the exit status."""
    cfg = Config()
    try:
        if parse(sys.argv[1:] if argv is None else argv, cfg) == "exit":
            return 0
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 2
    # heavy imports (torch) after the flags and the key: --help and usage
    # errors answer at once
    from . import protocol
    worker = None
    try:
        key = protocol.read_key(cfg.cluster_key_file) if cfg.cluster_key_file else None
        from . import experts
        from .server import Worker
        expert = experts.load(cfg.weights, cfg.module)
        worker = Worker(expert, cfg, key=key, version=__version__)
        worker.install_signals()
        worker.open()
    except Exception as e:  # bad files, flags, user modules: one line, exit 1
        msg = str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"
        sys.stderr.write(f"{PROG}: {msg}\n")
        if worker is not None:
            worker.close()
        return 1
    return worker.run()
