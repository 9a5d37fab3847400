"""server.py -- the PyTorch worker's serving loop: one raw REP socket bound
to every --listen URL, requests batched across concurrent senders, one
forward pass at a time, replies routed back by their SP headers.

Threads: the main thread receives (select on NN_RCVFD and a signal wake-up
pipe), checks the MAC, decodes and validates, answers Info requests and
refusals at once and queues valid DenoiseRequests. The compute thread takes
everything queued (up to --max-batch latents, after waiting up to
--max-delay-us for company when the batch is not full), runs one forward
pass over the concatenated rows and sends each request its slice. The GIL
is released during the forward pass and during nanomsg calls, so receiving
goes on while the network computes. An optional third thread serves
Prometheus text on GET /metrics.

Stopping (SIGTERM/SIGINT or stop()): new denoise requests are refused with
ECLOSED, what is queued is answered, then after --linger-ms (time for
nanomsg to send the last replies) the socket is closed and run() returns.
"""
import http.server
import os
import select
import signal
import threading
import time

import numpy as np
import torch

from . import nanomsg as nn
from . import protocol as proto
from .log import log

try:
    from ddm.v1 import worker_pb2 as pb
except ImportError as e:  # pragma: no cover - the launcher points at the generated code
    raise ImportError(f"cannot import the generated protobuf code ddm/v1/worker_pb2.py ({e}): "
                      f"run make (it writes build/rel/py) or set DDM_PY_GEN") from e

RECV_BURST = 256      # messages per wake-up before the loop looks at signals again


class _Job:
    __slots__ = ("hdr", "req", "x", "t", "labels", "n", "arrived", "req_mac")


class Metrics:
    """Counters and the batch-size histogram; updated under the worker's lock."""

    REASONS = ("decode", "invalid", "busy", "shutdown", "internal", "auth")

    def __init__(self, max_batch):
        self.requests = {"denoise": 0, "info": 0}
        self.errors = {r: 0 for r in self.REASONS}
        self.latents = self.batches = self.unsent = 0
        self.compute_s = 0.0
        self.buckets = []
        v = 1
        while True:
            self.buckets.append(min(v, max_batch))
            if v >= max_batch:
                break
            v *= 2
        self.bcounts = [0] * (len(self.buckets) + 1)
        self.queue_latents = 0

    def observe_batch(self, n, seconds):
        self.batches += 1
        self.latents += n
        self.compute_s += seconds
        i = 0
        while i < len(self.buckets) and n > self.buckets[i]:
            i += 1
        self.bcounts[i] += 1

    def render(self, expert, version, max_batch):
        out = ["# HELP ddm_expert_info The expert this worker serves.",
               "# TYPE ddm_expert_info gauge",
               f'ddm_expert_info{{expert_id="{expert.expert_id}",sha256="{expert.weights_sha256}",'
               f'dataset="{expert.dataset}",version="{version}",max_batch="{max_batch}",'
               f'impl="torch"}} 1',
               "# HELP ddm_expert_requests_total Requests received, by kind.",
               "# TYPE ddm_expert_requests_total counter"]
        out += [f'ddm_expert_requests_total{{kind="{k}"}} {v}' for k, v in self.requests.items()]
        out += ["# HELP ddm_expert_errors_total Error replies, by reason.",
                "# TYPE ddm_expert_errors_total counter"]
        out += [f'ddm_expert_errors_total{{reason="{k}"}} {v}' for k, v in self.errors.items()]
        for name, help_, v in (("ddm_expert_latents_total", "Latents computed.", self.latents),
                               ("ddm_expert_batches_total", "Forward passes run.", self.batches),
                               ("ddm_expert_replies_unsent_total",
                                "Replies nanomsg refused to send.", self.unsent)):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {v}"]
        out += ["# HELP ddm_expert_batch_size Latents per forward pass.",
                "# TYPE ddm_expert_batch_size histogram"]
        cum = 0
        for le, c in zip(self.buckets, self.bcounts):
            cum += c
            out.append(f'ddm_expert_batch_size_bucket{{le="{le}"}} {cum}')
        out.append(f'ddm_expert_batch_size_bucket{{le="+Inf"}} {cum + self.bcounts[-1]}')
        out += [f"ddm_expert_batch_size_sum {self.latents}",
                f"ddm_expert_batch_size_count {self.batches}",
                "# HELP ddm_expert_compute_seconds_total Time spent in forward passes.",
                "# TYPE ddm_expert_compute_seconds_total counter",
                f"ddm_expert_compute_seconds_total {self.compute_s:.9g}",
                "# HELP ddm_expert_queue_latents Latents waiting for a forward pass.",
                "# TYPE ddm_expert_queue_latents gauge",
                f"ddm_expert_queue_latents {self.queue_latents}"]
        return "\n".join(out) + "\n"


class Worker:
    """Serves one Expert (experts.py) with the settings of a cli.Config.
    Create, then open() and run() on the main thread; stop() may be called
    from any thread or a signal handler."""

    def __init__(self, expert, cfg, key=None, version="unknown"):
        self.expert = expert
        self.cfg = cfg
        self.key = key
        self.version = version
        self.max_queue = cfg.max_queue if cfg.max_queue > 0 else 16 * cfg.max_batch
        self.max_queue = max(self.max_queue, cfg.max_batch)
        self.lock = threading.Condition()
        self.queue = []              # _Job, arrival order
        self.queued_latents = 0
        self.computing = False
        self.stopping = False
        self.met = Metrics(cfg.max_batch)
        self.sock = None
        self.http = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._compute = threading.Thread(target=self._compute_loop, name="compute", daemon=True)

    # ---- set-up -------------------------------------------------------------------------

    def open(self):
        """Binds the socket(s) and the metrics server and starts computing.
        Raises OSError/ValueError with a message naming the flag to fix."""
        dim, mb = self.expert.dim, self.cfg.max_batch
        s = nn.Socket(nn.AF_SP_RAW, nn.NN_REP)
        try:
            # room for requests up to twice too big, so they get an error
            # reply instead of nanomsg dropping the connection (as ddm-expert)
            rcvmax = min(2 * proto.max_request_bytes(dim, mb) + 65536, 2**31 - 1)
            buf = min(2 * mb * dim * 4 + 65536, 2**31 - 1)
            s.setsockopt_int(nn.NN_RCVMAXSIZE, rcvmax)
            s.setsockopt_int(nn.NN_SNDBUF, buf)
            s.setsockopt_int(nn.NN_RCVBUF, buf)
            for url in self.cfg.listen:
                try:
                    s.bind(url)
                except nn.NanomsgError as e:
                    if e.errno in (22, 93):   # EINVAL, EPROTONOSUPPORT
                        raise ValueError(f"--listen {url}: not a usable nanomsg URL (use "
                                         f"tcp://host:port or ipc:///path)") from None
                    raise ValueError(f"--listen {url}: {e.strerror.split(': ', 1)[-1]}") from None
            self._rcvfd = s.getsockopt_int(nn.NN_RCVFD)
        except BaseException:
            s.close()
            raise
        self.sock = s
        if self.cfg.metrics:
            self._start_metrics(self.cfg.metrics)
        self._compute.start()

    def _start_metrics(self, spec):
        host, sep, port = spec.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"--metrics {spec}: use HOST:PORT, e.g. 127.0.0.1:9103")
        worker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/metrics":
                    with worker.lock:
                        body = worker.met.render(worker.expert, worker.version,
                                                 worker.cfg.max_batch).encode()
                    ctype = "text/plain; version=0.0.4; charset=utf-8"
                elif self.path == "/healthz":
                    body, ctype = b"ok\n", "text/plain"
                else:
                    self.send_error(404, "not found: GET /metrics or /healthz")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                pass

        try:
            self.http = http.server.ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)),
                                                        Handler)
        except OSError as e:
            raise ValueError(f"--metrics {spec}: {e.strerror}") from None
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="metrics", daemon=True).start()

    @property
    def metrics_port(self):
        return self.http.server_address[1] if self.http else None

    # ---- stopping -----------------------------------------------------------------------

    def stop(self):
        """Starts a graceful stop; safe from a signal handler."""
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def install_signals(self):
        def on_signal(signum, frame):
            if self.stopping:
                log.info(f"{signal.Signals(signum).name} again: already draining")
            else:
                log.info(f"{signal.Signals(signum).name}: stopping")
            self.stop()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # ---- replies ------------------------------------------------------------------------

    def _send(self, hdr, reply, req_mac):
        body = reply.SerializeToString()
        if self.key is not None and req_mac is not None:
            body = proto.seal_reply(self.key, req_mac, body)
        try:
            self.sock.send(body, hdr)
        except nn.NanomsgError as e:
            with self.lock:
                self.met.unsent += 1
            log.warn(f"reply to peer {hdr[:4].hex()} not sent: {e.strerror}")

    def _error_reply(self, hdr, code, message, reason, req_mac=None):
        """WorkerReply.error: the message was not a usable WorkerRequest."""
        r = pb.WorkerReply()
        r.error.code = code
        r.error.message = message
        with self.lock:
            self.met.errors[reason] += 1
        log.warn(f"message from peer {hdr[:4].hex()} refused: {message}")
        self._send(hdr, r, req_mac)

    def _denoise_error(self, hdr, req, code, message, reason, req_mac):
        r = pb.WorkerReply()
        if req.HasField("id"):
            r.denoise.id = req.id
        r.denoise.error.code = code
        r.denoise.error.message = message
        with self.lock:
            self.met.errors[reason] += 1
        log.warn(f"denoise request {req.id} from peer {hdr[:4].hex()} refused: {message}")
        self._send(hdr, r, req_mac)

    def _info_reply(self, hdr, req, req_mac):
        e = self.expert
        r = pb.WorkerReply()
        i = r.info
        if req.HasField("id"):
            i.id = req.id
        i.protocol_version = proto.PROTOCOL_VERSION
        i.expert_id = e.expert_id
        i.dim = e.dim
        i.architecture = e.architecture
        i.weights_sha256 = e.weights_sha256
        i.dataset = e.dataset
        i.num_experts = e.num_experts
        i.max_batch = self.cfg.max_batch
        i.num_classes = e.num_classes
        if e.height is not None:
            i.height, i.width, i.channels = e.height, e.width, e.channels
        i.class_names.extend(e.class_names)
        self._send(hdr, r, req_mac)

    # ---- receiving ----------------------------------------------------------------------

    def _on_message(self, msg, hdr):
        req_mac = None
        if self.key is not None:
            try:
                _, req_mac = proto.verify_request(self.key, msg)
            except proto.ProtocolError as e:
                self._error_reply(hdr, e.code, e.message, "auth")   # unauthenticated
                return
        try:
            wr = pb.WorkerRequest.FromString(msg)
        except Exception:  # DecodeError, or anything the parser raises on garbage
            self._error_reply(hdr, proto.EFORMAT, f"undecodable message ({len(msg)} bytes): send "
                              f"one protobuf ddm.v1.WorkerRequest per message", "decode", req_mac)
            return
        kind = wr.WhichOneof("kind")
        if kind == "info":
            with self.lock:
                self.met.requests["info"] += 1
            self._info_reply(hdr, wr.info, req_mac)
            return
        if kind != "denoise":
            self._error_reply(hdr, proto.EINVAL, "empty WorkerRequest: set denoise or info",
                              "decode", req_mac)
            return
        r = wr.denoise
        with self.lock:
            self.met.requests["denoise"] += 1
        if self.stopping:
            self._denoise_error(hdr, r, proto.ECLOSED, "worker is shutting down: send to another "
                                "replica", "shutdown", req_mac)
            return
        try:
            x, t, labels = proto.check_denoise(r, self.expert.dim, self.cfg.max_batch,
                                               self.expert.num_classes)
        except proto.ProtocolError as e:
            self._denoise_error(hdr, r, e.code, e.message, "invalid", req_mac)
            return
        j = _Job()
        j.hdr, j.req, j.x, j.t, j.labels, j.n = hdr, r, x, t, labels, r.batch
        j.arrived, j.req_mac = time.monotonic(), req_mac
        with self.lock:
            if self.queued_latents + j.n > self.max_queue:
                busy = (f"queue full ({self.queued_latents} latents waiting, --max-queue "
                        f"{self.max_queue}): retry later or add replicas")
            else:
                busy = None
                self.queue.append(j)
                self.queued_latents += j.n
                self.met.queue_latents = self.queued_latents
                self.lock.notify_all()
        if busy:
            self._denoise_error(hdr, r, proto.EBUSY, busy, "busy", req_mac)

    def run(self):
        """Serves until stop(), then drains and closes. Returns 0."""
        log.info(f"serving expert {self.expert.expert_id} ({self.expert.architecture}, dim "
                 f"{self.expert.dim}) on {' '.join(self.cfg.listen)}, max batch "
                 f"{self.cfg.max_batch}{', keyed' if self.key is not None else ''}")
        on_main = threading.current_thread() is threading.main_thread()
        prev = signal.set_wakeup_fd(self._wake_w) if on_main else None
        try:
            announced = False
            while True:
                if self.stopping:
                    with self.lock:
                        if not announced:
                            log.info(f"draining: {len(self.queue)} requests ({self.queued_latents} "
                                     f"latents) queued")
                            announced = True
                            self.lock.notify_all()
                        if not self.queue and not self.computing:
                            break
                ready, _, _ = select.select([self._rcvfd, self._wake_r], [], [], 0.2)
                if self._wake_r in ready:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                if self._rcvfd in ready:
                    for _ in range(RECV_BURST):
                        m = self.sock.recv(dontwait=True)
                        if m is None:
                            break
                        msg, hdr = m
                        if not hdr:
                            log.warn("dropped a message whose SP header is over 64 bytes "
                                     "(too many device hops)")
                            continue
                        try:
                            self._on_message(msg, hdr)
                        except Exception as e:  # a bug here must not stop the worker
                            log.error(f"message from peer {hdr[:4].hex()} dropped: "
                                      f"{type(e).__name__}: {e}")
        finally:
            if prev is not None:
                signal.set_wakeup_fd(prev)
        time.sleep(self.cfg.linger_ms / 1000.0)
        self.close()
        log.info(f"stopped: {self.met.requests['denoise']} denoise requests, {self.met.latents} "
                 f"latents in {self.met.batches} batches")
        return 0

    def close(self):
        """Releases the socket, the metrics server and the wake-up pipe."""
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        if self._compute.is_alive():
            self._compute.join()
        if self.http:
            self.http.shutdown()
            self.http.server_close()
            self.http = None
        if self.sock:
            self.sock.close()
            self.sock = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # ---- computing ----------------------------------------------------------------------

    def _take(self):
        """Waits for work; returns the jobs of the next pass, or None to end.
        Called with the lock held."""
        delay = self.cfg.max_delay_us / 1e6
        while True:
            if not self.queue:
                if self.stopping:
                    return None
                self.lock.wait()
                continue
            if not self.stopping and delay > 0 and self.queued_latents < self.cfg.max_batch:
                left = self.queue[0].arrived + delay - time.monotonic()
                if left > 0:
                    self.lock.wait(left)
                    continue
            jobs, n = [], 0
            while self.queue and n + self.queue[0].n <= self.cfg.max_batch:
                j = self.queue.pop(0)
                jobs.append(j)
                n += j.n
            self.queued_latents -= n
            self.met.queue_latents = self.queued_latents
            self.computing = True
            return jobs

    def _compute_loop(self):
        torch.set_num_threads(self.cfg.threads)
        while True:
            with self.lock:
                jobs = self._take()
            if jobs is None:
                return
            try:
                self._pass(jobs)
            except Exception as e:  # never leave requests unanswered or the loop dead
                log.error(f"forward pass over {len(jobs)} requests failed: {type(e).__name__}: {e}")
                for j in jobs:
                    try:
                        self._denoise_error(j.hdr, j.req, proto.EUNAVAIL, "forward pass failed "
                                            f"on this worker: {type(e).__name__}", "internal",
                                            j.req_mac)
                    except Exception:
                        pass
            finally:
                with self.lock:
                    self.computing = False
                    self.lock.notify_all()
                self.stop_wake()

    def stop_wake(self):
        """Wakes the receive loop when stopping, so it sees the queue drained."""
        if self.stopping and self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _pass(self, jobs):
        start = time.monotonic()
        n = sum(j.n for j in jobs)
        D = self.expert.dim
        x = np.concatenate([j.x for j in jobs]) if len(jobs) > 1 else jobs[0].x.copy()
        x = torch.from_numpy(x)
        t = torch.from_numpy(np.concatenate([j.t for j in jobs]))
        labels = torch.from_numpy(np.concatenate([j.labels for j in jobs]))
        err = None
        try:
            with torch.inference_mode():
                v = self.expert.module(x, t, labels)
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n, D):
                got = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                err = f"the module returned {got} for {n} latents of dim {D}: expected [{n}, {D}]"
            else:
                v = v.detach().to(torch.float32).contiguous().numpy()
                if not np.isfinite(v).all():
                    bad = int(np.argmin(np.isfinite(v).all(axis=1)))
                    err = f"the module returned a non-finite velocity for latent {bad}"
        except Exception as e:  # a user module may raise anything
            err = f"{type(e).__name__}: {e}"
        secs = time.monotonic() - start
        if err:
            log.error(f"forward pass over {n} latents failed: {err}")
            for j in jobs:
                self._denoise_error(j.hdr, j.req, proto.EUNAVAIL,
                                    f"forward pass failed on this worker: {err}", "internal",
                                    j.req_mac)
            return
        with self.lock:
            self.met.observe_batch(n, secs)
        v = v.astype("<f4", copy=False)
        compute_us = min(int(secs * 1e6), 2**32 - 1)
        off = 0
        for j in jobs:
            r = pb.WorkerReply()
            d = r.denoise
            if j.req.HasField("id"):
                d.id = j.req.id
            d.v = v[off:off + j.n].tobytes()
            d.queue_us = min(int((start - j.arrived) * 1e6), 2**32 - 1)
            d.compute_us = compute_us
            d.batch_size = n
            off += j.n
            self._send(j.hdr, r, j.req_mac)
