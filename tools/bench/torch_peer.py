#!/usr/bin/python3
"""torch_peer.py -- the whole DDM sampler in PyTorch eager on the CPU: the peer
`make bench-peer` measures ddm against (tools/bench/peer_bench_main.c runs it).

It computes what router/sampler.c and router/local.c compute for an
unconditional request with guidance off and Euler steps, written the way a
PyTorch user would write it, batched over the images, under
torch.inference_mode(), with no loop over images:

  for step i of `steps` (t = 1 - i / steps, dt = t_{i+1} - t_i, float32):
    logits = router(x, t, null label)                    the router network, one batch
    p      = softmax(logits)
    top-k:   w = the k largest p of each row renormalised to sum 1, 0 elsewhere
    full:    w = p renormalised
    v      = sum over experts k, in index order, of w[:, k] * expert_k(x[rows of k])
             (each expert runs once on exactly the rows that selected it)
    x      = x + dt * v

The networks are expert-worker/python/ddm_torch/mlp.py's DdmMlp (the PyTorch
worker's definition, imported, not copied): the router network and the K
experts are read from the same safetensors files ddm reads (models/digits).

Run it with Debian's /usr/bin/python3 (python3-torch). Noise files are raw
little-endian float32, [n][dim] row-major: the initial x of each image (the
bench writes ddm's noise for a seed, so both sample from the same x).

  torch_peer.py --models DIR --noise FILE --out FILE [--strategy top-2|full]
                [--steps 50] [--threads 2] [--omp-wait passive|default]
      samples one batch (n = the noise file's rows) and writes the images
      (x at t = 0, float32 [n][dim]) to --out
  torch_peer.py --models DIR --serve [--threads 2] [--omp-wait passive|default]
      answers commands on stdin, one per line ("ready" first, then one
      answer per command, a line starting with "ok" or "error"):
        sample STRATEGY STEPS NOISE OUT     -> ok SECONDS
        bench STRATEGY N STEPS SECONDS NOISE
            samples batches of the first N noise rows until SECONDS have
            passed -> ok BATCHES IMAGES WALL_SECONDS CPU_SECONDS
        profile STRATEGY N STEPS BATCHES NOISE
            per-phase time of each step and torch.profiler's operator table,
            as text lines each starting with "# ", then ok
        quit
--threads: torch's intra-op threads and OpenBLAS's (torch's sgemm here).
--omp-wait: libgomp's wait policy. passive (the default here) puts a waiting
OpenMP thread to sleep at once; "default" leaves libgomp's spin-then-sleep,
which on a machine whose cores are shared with other work can make every
parallel region wait for a descheduled spinning thread (docs/benchmarks.md
measures both).
Exit status 0, 1 on a runtime error (bad files), 2 on a usage error.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "expert-worker", "python"))

from ddm_torch.args import UsageError, integer, parse as getopt_parse  # noqa: E402

PROG = "torch_peer.py"
USAGE = __doc__[__doc__.index("  torch_peer.py --models"):__doc__.index("\nExit status") + 1]


class Sampler:
    """The router network and the K experts of a model directory."""

    def __init__(self, models):
        from ddm_torch import mlp, safetensors
        self.router = mlp.load(safetensors.File(os.path.join(models, "router.safetensors")),
                               "router").eval()
        self.K = self.router.config["out_dim"]
        self.dim = self.router.config["in_dim"]
        self.experts = []
        for k in range(self.K):
            e = mlp.load(safetensors.File(os.path.join(models, f"expert-{k}.safetensors"))).eval()
            if e.config["in_dim"] != self.dim:
                raise ValueError(f"{models}/expert-{k}.safetensors has dim {e.config['in_dim']}, "
                                 f"the router {self.dim}")
            self.experts.append(e)

    def top_k(self, strategy):
        """"top-k" -> k, "full" -> K."""
        if strategy == "full":
            return self.K
        if strategy.startswith("top-") and strategy[4:].isdigit() and \
                1 <= int(strategy[4:]) <= self.K:
            return int(strategy[4:])
        raise ValueError(f"strategy \"{strategy}\": use full or top-1..top-{self.K}")

    def velocity(self, x, t, labels, k, clock=None):
        """The combined velocity at (x, t) with the top-k (k = K: full) experts.
        clock: a dict of phase -> seconds to add to (profiling), or None."""
        import torch
        tick = time.perf_counter
        c0 = tick()
        logits = self.router(x, t, labels)
        c1 = tick()
        p = torch.softmax(logits, dim=1)
        v = torch.zeros_like(x)
        if k >= self.K:   # full: every expert takes every row
            w = p / p.sum(dim=1, keepdim=True)
            c2 = tick()
            for e, expert in enumerate(self.experts):
                v += w[:, e, None] * expert(x, t, labels)
        else:
            top_p, top_i = p.topk(k, dim=1)
            w = top_p / top_p.sum(dim=1, keepdim=True)
            # the (expert, row) pairs sorted by expert, then row: each expert's rows
            sel = torch.zeros(p.shape, dtype=torch.bool).scatter_(1, top_i, True)
            wfull = torch.zeros_like(p).scatter_(1, top_i, w)
            ex, rows = sel.t().nonzero(as_tuple=True)
            counts = sel.sum(dim=0).tolist()
            weights = wfull[rows, ex]
            c2 = tick()
            for e, r, we in zip(range(self.K), rows.split(counts), weights.split(counts)):
                if len(r) == 0:
                    continue
                out = self.experts[e](x.index_select(0, r), t.index_select(0, r),
                                      labels.index_select(0, r))
                v.index_add_(0, r, we[:, None] * out)
        if clock is not None:
            c3 = tick()
            clock["router network"] = clock.get("router network", 0.0) + c1 - c0
            clock["selection, grouping"] = clock.get("selection, grouping", 0.0) + c2 - c1
            clock["experts (gather, forward, weighted scatter-add)"] = \
                clock.get("experts (gather, forward, weighted scatter-add)", 0.0) + c3 - c2
        return v

    def sample(self, x0, strategy, steps, clock=None):
        """Images (x at t = 0) from the initial noise x0 [n, dim]."""
        import numpy as np
        import torch
        k = self.top_k(strategy)
        n = x0.shape[0]
        one, fs = np.float32(1), np.float32(steps)
        with torch.inference_mode():
            x = x0.clone()
            labels = torch.full((n,), -1, dtype=torch.int64)
            for i in range(steps):
                t = one - np.float32(i) / fs                  # as sampler.c: float32
                dt = (one - np.float32(i + 1) / fs) - t
                v = self.velocity(x, torch.full((n,), float(t)), labels, k, clock)
                c0 = time.perf_counter()
                x = x + float(dt) * v
                if clock is not None:
                    clock["Euler step"] = clock.get("Euler step", 0.0) + time.perf_counter() - c0
        return x


def read_noise(path, dim, n=None):
    """The first n (default: all) rows of a raw float32 [rows][dim] file."""
    import numpy as np
    import torch
    try:
        a = np.fromfile(path, dtype="<f4")
    except OSError as e:
        raise ValueError(f"noise file {path}: cannot read: {e.strerror}") from None
    if a.size == 0 or a.size % dim:
        raise ValueError(f"noise file {path}: {a.size} floats is not a whole number of "
                         f"{dim}-float images")
    a = a.reshape(-1, dim)
    if n is not None:
        if n > a.shape[0]:
            raise ValueError(f"noise file {path} has {a.shape[0]} images, {n} asked for")
        a = a[:n]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def write_images(path, x):
    x.numpy().astype("<f4").tofile(path)


def profile(s, strategy, n, steps, batches, noise, out):
    """Per-phase wall time per step and the operator table, as "# " lines."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    x0 = read_noise(noise, s.dim, n)
    s.sample(x0, strategy, steps)                      # warm-up
    clock = {}
    w0, p0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        s.sample(x0, strategy, steps, clock)
    wall, cpu = time.perf_counter() - w0, time.process_time() - p0
    per = batches * steps
    out.write(f"# {strategy}, {n} image(s), {steps} steps, {batches} batch(es): "
              f"{1e3 * wall / batches:.2f} ms per batch, {1e6 * wall / per:.0f} us per step "
              f"(CPU {1e6 * cpu / per:.0f} us per step, all threads)\n")
    for name, sec in sorted(clock.items(), key=lambda kv: -kv[1]):
        out.write(f"#   {name}: {1e6 * sec / per:.0f} us per step ({100 * sec / wall:.0f}%)\n")
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        s.sample(x0, strategy, steps)
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    mat = sum(e.self_cpu_time_total for e in ops if e.key in ("aten::addmm", "aten::mm"))
    calls = sum(e.count for e in ops if e.key.startswith("aten::"))
    out.write(f"#   operators: {calls / steps:.0f} aten calls per step (nested ones included); "
              f"matrix products (addmm, mm) {100 * mat / max(total, 1):.0f}% of the operators' "
              f"self time, everything else {100 - 100 * mat / max(total, 1):.0f}%\n")
    table = ops.table(sort_by="self_cpu_time_total", row_limit=10)
    for line in table.splitlines():
        out.write(f"# {line}\n")


def serve(s, inp, out):
    out.write("ready\n")
    out.flush()
    for line in inp:
        a = line.split()
        if not a:
            continue
        try:
            if a[0] == "quit":
                break
            if a[0] == "sample" and len(a) == 5:
                c0 = time.perf_counter()
                x = s.sample(read_noise(a[3], s.dim), a[1], int(a[2]))
                el = time.perf_counter() - c0
                write_images(a[4], x)
                out.write(f"ok {el:.6f}\n")
            elif a[0] == "bench" and len(a) == 6:
                n, steps, secs = int(a[2]), int(a[3]), float(a[4])
                x0 = read_noise(a[5], s.dim, n)
                batches, w0, p0 = 0, time.perf_counter(), time.process_time()
                while True:
                    s.sample(x0, a[1], steps)
                    batches += 1
                    if time.perf_counter() - w0 >= secs:
                        break
                out.write(f"ok {batches} {batches * n} {time.perf_counter() - w0:.6f} "
                          f"{time.process_time() - p0:.6f}\n")
            elif a[0] == "profile" and len(a) == 6:
                profile(s, a[1], int(a[2]), int(a[3]), int(a[4]), a[5], out)
                out.write("ok\n")
            else:
                out.write(f"error unknown command or wrong arguments: {line.strip()}\n")
        except (ValueError, OSError) as e:
            out.write(f"error {e}\n")
        out.flush()
    return 0


def main(argv):
    opts, rest = getopt_parse(argv, "hV", ["models=", "noise=", "out=", "strategy=", "steps=",
                                           "threads=", "omp-wait=", "serve", "help", "version"])
    o = {"models": None, "noise": None, "out": None, "strategy": "top-2", "steps": "50",
         "threads": "2", "omp-wait": "passive", "serve": False}
    for k, v in opts:
        if k in ("-h", "--help"):
            sys.stdout.write("usage:\n" + USAGE)
            return 0
        if k in ("-V", "--version"):
            from ddm_torch import __version__
            print(f"{PROG} {__version__}")
            return 0
        o[k[2:]] = True if k == "--serve" else v
    if rest:
        raise UsageError(f"unexpected argument \"{rest[0]}\" (see --help)")
    steps = integer("steps", o["steps"], 1, 1000)
    threads = integer("threads", o["threads"], 1, 64)
    if not o["models"]:
        raise UsageError("--models DIR is required (e.g. models/digits)")
    if not o["serve"] and not (o["noise"] and o["out"]):
        raise UsageError("give --noise FILE and --out FILE, or --serve (see --help)")
    if o["omp-wait"] not in ("passive", "default"):
        raise UsageError(f"--omp-wait \"{o['omp-wait']}\": use passive or default")
    router = os.path.join(o["models"], "router.safetensors")
    if not os.path.isfile(router):   # at once, before the slow import of torch
        sys.stderr.write(f"{PROG}: --models {o['models']}: {router} not found (a model set "
                         f"from ddm-train, e.g. models/digits)\n")
        return 1
    # OpenBLAS (torch's sgemm here) and libgomp read these when they load
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    if o["omp-wait"] == "passive":
        os.environ["OMP_WAIT_POLICY"] = "passive"
    import torch
    torch.set_num_threads(threads)
    try:
        s = Sampler(o["models"])
        if o["serve"]:
            return serve(s, sys.stdin, sys.stdout)
        x = s.sample(read_noise(o["noise"], s.dim), o["strategy"], steps)
        write_images(o["out"], x)
    except (ValueError, OSError) as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        sys.exit(2)
