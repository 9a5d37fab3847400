/* worker.c -- ddm-expert's event loop: receive, validate, batch, compute on a
 * thread-pool thread, reply.
 *
 * Flow of a DenoiseRequest: nnuv delivers the message; it is decoded into a
 * pooled job's arena (the nanomsg buffer is released at once), validated and
 * queued in the batcher. After each receive burst (a uv_check handle) and
 * whenever a forward pass ends or the delay timer fires, schedule() asks the
 * batcher whether to start a pass; if so uv_queue_work hands the jobs to a
 * pool thread, which copies their rows into the input buffers and runs
 * net_forward. One pass at a time: the next batch forms in the queue
 * meanwhile, and starts (into the other of two output buffers) before the
 * finished pass's replies are packed. A pass of at most --inline-rows
 * latents (well under a millisecond) with nothing queued behind it runs on
 * the loop thread instead: the hop to a pool thread and back costs two
 * wake-ups, which at the few rows per call of sparse routing was about a
 * fifth of a worker's CPU (docs/benchmarks.md); its replies go out before
 * the next pass starts. The delay timer is a timerfd (microsecond
 * resolution; uv timers have milliseconds).
 *
 * Replies leave a raw REP socket, which silently drops a reply when the
 * requester's pipe is still busy writing an earlier one (nnuv.h): the socket
 * gets an NN_SNDBUF big enough for a whole batch of replies.
 *
 * With a cluster key (--cluster-key-file), a request must end with a valid
 * MAC trailer (common/hmac.h) or it gets an unauthenticated error reply and
 * nothing is computed; every other reply carries a MAC chained to its
 * request's. Warnings a peer can trigger per message are rate-limited. */
#include "expert-worker/worker.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cblas.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/err.h"
#include "common/hmac.h"
#include "common/log.h"
#include "common/nnuv.h"
#include "common/version.h"
#include "expert-worker/batcher.h"
#include "common/blas.h"
#include "expert-worker/metrics.h"
#include "expert-worker/wire.h"
#include "server/http.h"

#define JOB_POOL_KEEP 1024 /* idle jobs kept for reuse (with their arenas) */

typedef struct job {
    batcher_item bi;                     /* first member: the batcher links jobs */
    struct job *next_free;
    nnuv_hdr hdr;                        /* the requester's SP header, for the reply */
    uint8_t mac[HMAC_SIZE];              /* the request's MAC (with a cluster key) */
    const Ddm__V1__DenoiseRequest *req;  /* decoded, inside arena */
    wire_arena arena;
    int off;                             /* first row in the batch buffers */
    uint64_t queue_ns;                   /* arrival to start of its forward pass */
} job;

struct expert_worker {
    uv_loop_t *loop;
    expert_config cfg;
    model *m;
    wire_limits lim;
    char arch[160];
    size_t arena_keep;         /* largest arena kept by a pooled job */
    size_t pool_budget;        /* bytes of arenas kept by idle jobs, at most */
    size_t pool_bytes;         /* bytes of arenas kept by idle jobs now */

    nnuv *sock;                /* raw REP, bound to every listen URL */
    batcher q;
    int timer_fd;              /* delay timer */
    uv_poll_t timer_poll;
    int timer_armed;
    uv_check_t check;          /* schedule after a receive burst */
    int check_active;
    uv_timer_t linger;
    uv_timer_t log_timer;      /* reports suppressed warnings (4 looks a second) */
    uv_signal_t sig[2];
    int has_key;
    hmac_key key;
    http_server *http;

    /* the forward pass in flight: the pool thread owns x, t, labels,
     * out[cur], scratch and the batch's jobs while computing is set */
    uv_work_t work;
    int computing;
    int replying;        /* finish_pass is sending a pass's replies: no inline pass now */
    batcher_item *batch;       /* jobs in the pass, in row order */
    int batch_n;
    int fwd_rc;
    uint64_t compute_ns;
    float *x;                  /* [max_batch][D] inputs */
    float *t;                  /* [max_batch] times */
    int *labels;               /* [max_batch] classes, -1 = null */
    float *out[2];             /* [max_batch][D] velocities, two so that the next pass
                                  starts before the last one's replies are packed */
    int cur;                   /* out[cur] is the buffer of the pass in flight */
    net_scratch *scratch;

    job *free_jobs;
    int n_free;
    int stopping, finishing;
    int handles;               /* uv handles initialised and not yet closed */
    emetrics met;
};

void expert_config_default(expert_config *c)
{
    memset(c, 0, sizeof *c);
    c->max_batch = 256;
    c->max_delay_us = 500;
    c->threads = 1;
    c->inline_rows = 20;
    c->linger_ms = 200;
}

const model *expert_worker_model(const expert_worker *w) { return w->m; }

int expert_worker_metrics_port(const expert_worker *w)
{
    return w->http ? http_server_port(w->http) : DDM_ENOTFOUND;
}

/* ---- jobs ------------------------------------------------------------------ */

static job *job_get(expert_worker *w)
{
    job *j = w->free_jobs;
    if (j) {
        w->free_jobs = j->next_free;
        w->n_free--;
        w->pool_bytes -= j->arena.cap;
    } else {
        j = calloc(1, sizeof *j);
        if (!j)
            return NULL;
        wire_arena_init(&j->arena);
    }
    j->req = NULL;
    return j;
}

static void job_put(expert_worker *w, job *j)
{
    if (w->n_free >= JOB_POOL_KEEP) {
        wire_arena_free(&j->arena);
        free(j);
        return;
    }
    wire_arena_reset(&j->arena, w->arena_keep);
    if (w->pool_bytes + j->arena.cap > w->pool_budget) {
        /* keep the job, not its big buffer: idle memory stays bounded */
        wire_arena_free(&j->arena);
        wire_arena_init(&j->arena);
    }
    w->pool_bytes += j->arena.cap;
    j->next_free = w->free_jobs;
    w->free_jobs = j;
    w->n_free++;
}

/* ---- replies ----------------------------------------------------------------- */

/* Sends r to the requester of hdr; with a cluster key and req_mac (the
 * request's MAC) it ends with the reply's MAC trailer. req_mac NULL: an
 * unauthenticated reply (to a request without a valid MAC). */
static void send_reply(expert_worker *w, const nnuv_hdr *hdr, const Ddm__V1__WorkerReply *r,
                       const uint8_t *req_mac)
{
    size_t len;
    void *msg = wire_pack_reply(r, &len);
    if (msg && w->has_key && req_mac) {
        void *grown = nn_reallocmsg(msg, len + HMAC_TRAILER_SIZE);
        if (!grown) {
            nn_freemsg(msg);
            msg = NULL;
        } else {
            msg = grown;
            hmac_trailer_rep(&w->key, req_mac, msg, len, (uint8_t *)msg + len);
        }
    }
    if (!msg) {
        w->met.replies_unsent++;
        log_error_limited("out of memory packing a %zu-byte reply; it is lost",
                          ddm__v1__worker_reply__get_packed_size(r));
        return;
    }
    int rc = nnuv_send(w->sock, msg, hdr);
    if (rc < 0) {
        nn_freemsg(msg);
        w->met.replies_unsent++;
        log_warn_limited("reply to peer %08x not sent: %s", nnuv_hdr_peer(hdr),
                         ddm_strerror(rc));
    }
}

/* A DenoiseReply carrying an error (the request was a decodable denoise). */
static void reply_denoise_error(expert_worker *w, const nnuv_hdr *hdr, const uint8_t *req_mac,
                                const Ddm__V1__DenoiseRequest *req, int code, const char *msg,
                                emetrics_reason why)
{
    Ddm__V1__Error e = DDM__V1__ERROR__INIT;
    e.has_code = 1;
    e.code = code;
    e.message = (char *)msg;
    Ddm__V1__DenoiseReply d = DDM__V1__DENOISE_REPLY__INIT;
    d.has_id = req->has_id;
    d.id = req->id;
    d.error = &e;
    Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
    r.kind_case = DDM__V1__WORKER_REPLY__KIND_DENOISE;
    r.denoise = &d;
    w->met.errors[why]++;
    log_warn_limited("denoise request %llu from peer %08x refused: %s",
                     (unsigned long long)req->id, nnuv_hdr_peer(hdr), msg);
    send_reply(w, hdr, &r, req_mac);
}

/* WorkerReply.error: the message was not a usable WorkerRequest (or, with a
 * cluster key and req_mac NULL, carried no valid MAC). */
static void reply_decode_error(expert_worker *w, const nnuv_hdr *hdr, const uint8_t *req_mac,
                               int code, const char *msg)
{
    Ddm__V1__Error e = DDM__V1__ERROR__INIT;
    e.has_code = 1;
    e.code = code;
    e.message = (char *)msg;
    Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
    r.kind_case = DDM__V1__WORKER_REPLY__KIND_ERROR;
    r.error = &e;
    w->met.errors[EM_ERR_DECODE]++;
    log_warn_limited("message from peer %08x refused: %s", nnuv_hdr_peer(hdr), msg);
    send_reply(w, hdr, &r, req_mac);
}

static void reply_info(expert_worker *w, const nnuv_hdr *hdr, const uint8_t *req_mac,
                       const Ddm__V1__InfoRequest *req)
{
    Ddm__V1__InfoReply i = DDM__V1__INFO_REPLY__INIT;
    i.has_id = req->has_id;
    i.id = req->id;
    i.protocol_version = (char *)WIRE_PROTOCOL_VERSION;
    i.has_expert_id = 1;
    i.expert_id = w->m->expert_id;
    i.has_dim = 1;
    i.dim = (uint32_t)w->lim.dim;
    i.architecture = w->arch;
    i.weights_sha256 = (char *)st_sha256(w->m->file);
    i.dataset = w->m->dataset;
    i.has_num_experts = 1;
    i.num_experts = (uint32_t)(w->m->num_experts > 0 ? w->m->num_experts : 0);
    i.has_max_batch = 1;
    i.max_batch = (uint32_t)w->cfg.max_batch;
    i.has_num_classes = 1;
    i.num_classes = (uint32_t)w->m->cfg.n_classes;
    const model_shape *sh = &w->m->shape; /* image shape and class names (rgb, #15) */
    i.has_height = i.has_width = i.has_channels = 1;
    i.height = (uint32_t)sh->height;
    i.width = (uint32_t)sh->width;
    i.channels = (uint32_t)sh->channels;
    i.n_class_names = (size_t)sh->n_class_names;
    i.class_names = sh->class_names;
    Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
    r.kind_case = DDM__V1__WORKER_REPLY__KIND_INFO;
    r.info = &i;
    send_reply(w, hdr, &r, req_mac);
}

/* ---- batching and compute ---------------------------------------------------------- */

static void schedule(expert_worker *w);
static void maybe_finish(expert_worker *w);

/* Pool thread: gathers the batch's rows into the input buffers, then runs
 * the forward pass. */
static void work_cb(uv_work_t *req)
{
    expert_worker *w = req->data;
    uint64_t t0 = uv_hrtime();
    size_t D = (size_t)w->lim.dim;
    for (batcher_item *it = w->batch; it; it = it->next) {
        const job *j = (const job *)it;
        const Ddm__V1__DenoiseRequest *r = j->req;
        int k = (int)r->batch, off = j->off;
        wire_le_to_f32(w->x + (size_t)off * D, r->x.data, (size_t)k * D);
        for (int i = 0; i < k; i++) {
            w->t[off + i] = r->n_ts ? r->ts[i] : r->t;
            w->labels[off + i] = r->n_labels ? r->labels[i] : -1;
        }
    }
    w->fwd_rc = net_forward(&w->m->cfg, &w->m->w, w->scratch, w->batch_n, w->x, w->t, w->labels,
                            w->out[w->cur]);
    w->compute_ns = uv_hrtime() - t0;
}

/* Loop thread, after a pass: a pool pass starts the next pass (into the
 * other output buffer) before sending its replies; an inline pass sends its
 * replies first, then looks for more work. */
static void finish_pass(expert_worker *w, int rc, int was_inline)
{
    int D = w->lim.dim;
    uint32_t compute_us = (uint32_t)(w->compute_ns / 1000);
    batcher_item *it = w->batch;
    int n = w->batch_n;
    float *out = w->out[w->cur];
    w->batch = NULL;
    w->batch_n = 0;
    w->computing = 0;
    w->met.computing = 0;
    w->cur ^= 1;
    if (rc == 0) {
        w->met.batches++;
        w->met.latents += (uint64_t)n;
        emetrics_observe(&w->met.batch_size, n);
        emetrics_observe(&w->met.compute_s, (double)w->compute_ns * 1e-9);
    } else {
        log_error_limited("forward pass over %d latents failed: %s", n, ddm_strerror(rc));
    }
    w->replying = 1; /* a pass started now goes to the pool, not ahead of these replies */
    if (!was_inline && (!w->stopping || w->q.count > 0))
        schedule(w); /* when stopping with nothing left, finish after the replies */
    if (rc == 0)
        wire_f32_to_le(out, (size_t)n * (size_t)D);
    while (it) {
        job *j = (job *)it;
        it = it->next;
        const Ddm__V1__DenoiseRequest *r = j->req;
        if (rc != 0) {
            reply_denoise_error(w, &j->hdr, j->mac, r, rc, "forward pass failed on this worker",
                                EM_ERR_INTERNAL);
        } else {
            Ddm__V1__DenoiseReply d = DDM__V1__DENOISE_REPLY__INIT;
            d.has_id = r->has_id;
            d.id = r->id;
            d.has_v = 1;
            d.v.data = (uint8_t *)(out + (size_t)j->off * (size_t)D);
            d.v.len = (size_t)r->batch * (size_t)D * sizeof(float);
            d.has_queue_us = 1;
            d.queue_us = (uint32_t)(j->queue_ns / 1000);
            d.has_compute_us = 1;
            d.compute_us = compute_us;
            d.has_batch_size = 1;
            d.batch_size = (uint32_t)n;
            Ddm__V1__WorkerReply wr = DDM__V1__WORKER_REPLY__INIT;
            wr.kind_case = DDM__V1__WORKER_REPLY__KIND_DENOISE;
            wr.denoise = &d;
            send_reply(w, &j->hdr, &wr, j->mac);
        }
        job_put(w, j);
    }
    w->replying = 0;
    if (w->stopping || was_inline)
        schedule(w);
}

static void after_work_cb(uv_work_t *req, int status)
{
    expert_worker *w = req->data;
    finish_pass(w, status < 0 ? status : w->fwd_rc, 0);
}

/* Starts a forward pass over the jobs the batcher hands out; the pool
 * thread gathers their rows. */
static void dispatch(expert_worker *w)
{
    int n;
    batcher_item *list = batcher_take(&w->q, &n);
    uint64_t now = uv_hrtime();
    int off = 0;
    for (batcher_item *it = list; it; it = it->next) {
        job *j = (job *)it;
        j->off = off;
        j->queue_ns = now - it->t_ns;
        emetrics_observe(&w->met.queue_s, (double)j->queue_ns * 1e-9);
        off += it->n;
    }
    w->batch = list;
    w->batch_n = n;
    w->computing = 1;
    w->met.computing = 1;
    w->met.queue_latents = w->q.latents;
    /* inline only a lone small pass: with work queued behind it the loop
     * stays free to receive while a pool thread computes */
    if (n <= w->cfg.inline_rows && !w->replying && w->q.count == 0) {
        work_cb(&w->work);
        finish_pass(w, w->fwd_rc, 1);
        return;
    }
    int rc = uv_queue_work(w->loop, &w->work, work_cb, after_work_cb);
    if (rc < 0) /* only for a NULL work_cb: a bug */
        abort();
}

static void timer_disarm(expert_worker *w)
{
    if (!w->timer_armed)
        return;
    struct itimerspec its = { 0 };
    timerfd_settime(w->timer_fd, 0, &its, NULL);
    w->timer_armed = 0;
}

static void timer_arm(expert_worker *w, uint64_t wait_ns)
{
    if (w->timer_armed)
        return; /* armed for the same oldest request */
    if (wait_ns == 0)
        wait_ns = 1;
    struct itimerspec its = { .it_value = { .tv_sec = (time_t)(wait_ns / 1000000000u),
                                            .tv_nsec = (long)(wait_ns % 1000000000u) } };
    if (timerfd_settime(w->timer_fd, 0, &its, NULL) == 0)
        w->timer_armed = 1;
    else
        log_error("timerfd_settime: %s", strerror(errno));
}

static void schedule(expert_worker *w)
{
    if (w->computing)
        return;
    uint64_t wait;
    if (batcher_ready(&w->q, uv_hrtime(), w->stopping, &wait)) {
        timer_disarm(w);
        dispatch(w);
        return;
    }
    if (wait == UINT64_MAX) {
        timer_disarm(w);
        maybe_finish(w);
        return;
    }
    timer_arm(w, wait);
}

static void on_timer(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    expert_worker *w = p->data;
    uint64_t ticks;
    if (read(w->timer_fd, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
        log_warn("timerfd read: %s", strerror(errno));
    w->timer_armed = 0;
    schedule(w);
}

static void on_check(uv_check_t *c)
{
    expert_worker *w = c->data;
    uv_check_stop(c);
    w->check_active = 0;
    schedule(w);
}

/* ---- receiving ------------------------------------------------------------------------ */

static void on_request(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    (void)s;
    expert_worker *w = ud;
    char err[256];
    job *j = job_get(w);
    if (!j) {
        nn_freemsg(body);
        log_error_limited("out of memory for a request from peer %08x; dropped",
                          nnuv_hdr_peer(hdr));
        return;
    }
    uint64_t now = uv_hrtime();
    if (w->has_key) {
        int rc = hmac_trailer_check_req(&w->key, body, len, j->mac);
        if (rc < 0) {
            nn_freemsg(body);
            /* rc: DDM_EPROTO (no trailer) or DDM_EMISMATCH (wrong MAC), the codes
             * docs/protocol.md gives for them */
            reply_decode_error(w, hdr, NULL, rc,
                               rc == DDM_EPROTO
                                   ? "message without a MAC: this worker has a cluster key; "
                                     "start the router with the same --cluster-key-file"
                                   : "message with a wrong MAC: the sender does not hold this "
                                     "worker's cluster key (--cluster-key-file)");
            job_put(w, j);
            return;
        }
        len -= HMAC_TRAILER_SIZE;
    }
    const uint8_t *mac = w->has_key ? j->mac : NULL;
    Ddm__V1__WorkerRequest *wr;
    int rc = wire_decode(&j->arena, body, len, &wr, err, sizeof err);
    nn_freemsg(body);
    if (rc < 0) {
        reply_decode_error(w, hdr, mac, rc, err);
        job_put(w, j);
        return;
    }
    switch (wr->kind_case) {
    case DDM__V1__WORKER_REQUEST__KIND_INFO:
        w->met.info_requests++;
        reply_info(w, hdr, mac, wr->info);
        job_put(w, j);
        return;
    case DDM__V1__WORKER_REQUEST__KIND_DENOISE:
        break;
    default:
        reply_decode_error(w, hdr, mac, DDM_EINVAL,
                           "empty WorkerRequest: set denoise or info");
        job_put(w, j);
        return;
    }
    const Ddm__V1__DenoiseRequest *r = wr->denoise;
    w->met.denoise_requests++;
    if (w->stopping) {
        reply_denoise_error(w, hdr, mac, r, DDM_ECLOSED,
                            "worker is shutting down: send to another replica", EM_ERR_SHUTDOWN);
        job_put(w, j);
        return;
    }
    rc = wire_check_denoise(r, &w->lim, err, sizeof err);
    if (rc < 0) {
        reply_denoise_error(w, hdr, mac, r, rc, err, EM_ERR_INVALID);
        job_put(w, j);
        return;
    }
    if (w->q.latents + (long)r->batch > w->cfg.max_queue) {
        snprintf(err, sizeof err, "queue full (%ld latents waiting, --max-queue %ld): retry "
                 "later or add replicas", w->q.latents, w->cfg.max_queue);
        reply_denoise_error(w, hdr, mac, r, DDM_EBUSY, err, EM_ERR_BUSY);
        job_put(w, j);
        return;
    }
    j->hdr = *hdr;
    j->req = r;
    j->bi.n = (int)r->batch;
    j->bi.t_ns = now;
    batcher_push(&w->q, &j->bi);
    w->met.queue_latents = w->q.latents;
    if (!w->check_active && !w->computing) {
        uv_check_start(&w->check, on_check);
        w->check_active = 1;
    }
}

/* ---- metrics over HTTP ----------------------------------------------------------------- */

static void on_metrics(http_req *req, void *ud)
{
    expert_worker *w = ud;
    emetrics_info info = { .expert_id = w->m->expert_id,
                           .sha256 = st_sha256(w->m->file),
                           .dataset = w->m->dataset,
                           .version = DDM_VERSION,
                           .max_batch = w->cfg.max_batch };
    size_t len;
    char *text = emetrics_render(&w->met, &info, &len);
    if (!text) {
        http_respond_error(req, 500, "internal", "out of memory rendering metrics");
        return;
    }
    http_respond_owned(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

static void on_healthz(http_req *req, void *ud)
{
    (void)ud;
    http_respond(req, 200, "text/plain", "ok\n", 3);
}

/* ---- start and stop ------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h)
{
    expert_worker *w = h->data;
    w->handles--;
}

static void on_part_closed(void *ud)
{
    expert_worker *w = ud;
    w->handles--;
}

/* Closes every handle that is open; safe on a partly built worker. */
static void close_all(expert_worker *w)
{
    if (w->sock) {
        nnuv_close(w->sock, on_part_closed, w);
        w->sock = NULL;
    }
    if (w->http) {
        http_server_close(w->http, on_part_closed, w);
        w->http = NULL;
    }
    uv_handle_t *hs[] = { (uv_handle_t *)&w->timer_poll, (uv_handle_t *)&w->check,
                          (uv_handle_t *)&w->linger, (uv_handle_t *)&w->log_timer,
                          (uv_handle_t *)&w->sig[0], (uv_handle_t *)&w->sig[1] };
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (hs[i]->loop && !uv_is_closing(hs[i]))
            uv_close(hs[i], on_handle_closed);
}

static void on_log_timer(uv_timer_t *t)
{
    (void)t;
    log_flush_suppressed();
}

static void on_linger(uv_timer_t *t)
{
    expert_worker *w = t->data;
    log_flush_suppressed();
    log_info("stopped: %llu denoise requests, %llu latents in %llu batches",
             (unsigned long long)w->met.denoise_requests, (unsigned long long)w->met.latents,
             (unsigned long long)w->met.batches);
    close_all(w);
}

static void maybe_finish(expert_worker *w)
{
    if (!w->stopping || w->finishing || w->computing || w->q.count > 0)
        return;
    w->finishing = 1;
    nnuv_recv_stop(w->sock);
    uv_timer_start(&w->linger, on_linger, (uint64_t)w->cfg.linger_ms, 0);
}

void expert_worker_stop(expert_worker *w)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    log_info("draining: %d requests (%ld latents) queued, %d latents computing", w->q.count,
             w->q.latents, w->batch_n);
    schedule(w);
}

static void on_signal(uv_signal_t *s, int signum)
{
    expert_worker *w = s->data;
    if (w->stopping) {
        log_info("%s again: already draining", strsignal(signum));
        return;
    }
    log_info("%s: stopping", strsignal(signum));
    expert_worker_stop(w);
}

/* Every uv handle starts with loop == NULL here (calloc) so close_all can
 * tell which ones were initialised. */
static int init_handles(expert_worker *w, char *err, size_t errlen)
{
    int rc;
    w->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (w->timer_fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "timerfd_create: %s", strerror(errno));
        return rc;
    }
    if ((rc = uv_poll_init(w->loop, &w->timer_poll, w->timer_fd)) < 0)
        goto uv_fail;
    w->handles++;
    w->timer_poll.data = w;
    if ((rc = uv_poll_start(&w->timer_poll, UV_READABLE, on_timer)) < 0)
        goto uv_fail;
    if ((rc = uv_check_init(w->loop, &w->check)) < 0)
        goto uv_fail;
    w->handles++;
    w->check.data = w;
    if ((rc = uv_timer_init(w->loop, &w->linger)) < 0)
        goto uv_fail;
    w->handles++;
    w->linger.data = w;
    if ((rc = uv_timer_init(w->loop, &w->log_timer)) < 0)
        goto uv_fail;
    w->handles++;
    w->log_timer.data = w;
    uv_timer_start(&w->log_timer, on_log_timer, 250, 250);
    if (w->cfg.handle_signals) {
        int sigs[2] = { SIGTERM, SIGINT };
        for (int i = 0; i < 2; i++) {
            if ((rc = uv_signal_init(w->loop, &w->sig[i])) < 0)
                goto uv_fail;
            w->handles++;
            w->sig[i].data = w;
            if ((rc = uv_signal_start(&w->sig[i], on_signal, sigs[i])) < 0)
                goto uv_fail;
        }
    }
    return 0;
uv_fail:
    snprintf(err, errlen, "libuv: %s", uv_strerror(rc));
    return rc;
}

/* Creates the raw REP socket, sizes its buffers from the limits and binds
 * every URL; wraps it in nnuv. */
static int init_socket(expert_worker *w, char *err, size_t errlen)
{
    int sock = nn_socket(AF_SP_RAW, NN_REP);
    if (sock < 0) {
        snprintf(err, errlen, "nn_socket: %s", nn_strerror(nn_errno()));
        return -nn_errno();
    }
    size_t maxreq = wire_max_request_bytes(&w->lim);
    /* room for requests up to twice too big, so they get an error reply
     * instead of nanomsg dropping the connection */
    size_t rcvmax = 2 * maxreq + 65536;
    int rcvmax_i = rcvmax > INT_MAX ? INT_MAX : (int)rcvmax;
    size_t batch_bytes = (size_t)w->cfg.max_batch * (size_t)w->lim.dim * 4;
    size_t buf = 2 * batch_bytes + 65536;
    int buf_i = buf > INT_MAX ? INT_MAX : (int)buf;
    if (nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &rcvmax_i, sizeof rcvmax_i) < 0 ||
        nn_setsockopt(sock, NN_SOL_SOCKET, NN_SNDBUF, &buf_i, sizeof buf_i) < 0 ||
        nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVBUF, &buf_i, sizeof buf_i) < 0) {
        int e = nn_errno();
        snprintf(err, errlen, "nn_setsockopt: %s", nn_strerror(e));
        nn_close(sock);
        return -e;
    }
    FILE *f = fopen("/proc/sys/net/core/wmem_max", "r");
    long wmem = 0;
    if (f) {
        if (fscanf(f, "%ld", &wmem) != 1)
            wmem = 0;
        fclose(f);
    }
    if (wmem > 0 && (size_t)wmem * 2 < batch_bytes)
        log_warn("net.core.wmem_max = %ld is below the %zu bytes of one full batch of replies: "
                 "nanomsg may drop replies to a router with several requests in one batch; "
                 "raise it (sysctl -w net.core.wmem_max=%zu)", wmem, batch_bytes, buf);
    for (int i = 0; i < w->cfg.n_listen; i++) {
        const char *url = w->cfg.listen[i];
        if (nn_bind(sock, url) < 0) {
            int e = nn_errno();
            if (e == EINVAL || e == EPROTONOSUPPORT)
                snprintf(err, errlen, "--listen %s: not a usable nanomsg URL (use "
                         "tcp://host:port or ipc:///path)", url);
            else
                snprintf(err, errlen, "--listen %s: %s", url, nn_strerror(e));
            nn_close(sock);
            return -e;
        }
    }
    int rc = nnuv_open(w->loop, sock, &w->sock);
    if (rc < 0) {
        snprintf(err, errlen, "cannot poll the nanomsg socket: %s", ddm_strerror(rc));
        nn_close(sock);
        return rc;
    }
    w->handles++; /* nnuv counts as one part */
    return nnuv_recv_start(w->sock, on_request, w);
}

static int init_metrics(expert_worker *w, char *err, size_t errlen)
{
    if (!w->cfg.metrics)
        return 0;
    int rc = http_server_new(w->loop, NULL, &w->http);
    if (rc < 0) {
        snprintf(err, errlen, "metrics server: %s", ddm_strerror(rc));
        return rc;
    }
    w->handles++;
    if ((rc = http_server_route(w->http, "GET", "/metrics", on_metrics, w)) < 0 ||
        (rc = http_server_route(w->http, "GET", "/healthz", on_healthz, w)) < 0) {
        snprintf(err, errlen, "metrics server: %s", ddm_strerror(rc));
        return rc;
    }
    char lerr[200];
    rc = http_server_listen(w->http, w->cfg.metrics, lerr, sizeof lerr);
    if (rc < 0) {
        snprintf(err, errlen, "--metrics %s: %s", w->cfg.metrics, lerr);
        return rc;
    }
    return 0;
}

static void free_buffers(expert_worker *w)
{
    while (w->free_jobs) {
        job *j = w->free_jobs;
        w->free_jobs = j->next_free;
        wire_arena_free(&j->arena);
        free(j);
    }
    net_scratch_free(w->scratch);
    free(w->x);
    free(w->t);
    free(w->labels);
    free(w->out[0]);
    free(w->out[1]);
    if (w->timer_fd >= 0)
        close(w->timer_fd);
    if (w->m)
        model_close(w->m);
    free(w);
}

int expert_worker_new(uv_loop_t *loop, const expert_config *cfg, expert_worker **out, char *err,
                      size_t errlen)
{
    *out = NULL;
    if (!cfg->weights || cfg->n_listen < 1 || cfg->max_batch < 1 || cfg->max_delay_us < 0) {
        snprintf(err, errlen, "expert config: weights, a listen URL and max_batch >= 1 needed");
        return DDM_EINVAL;
    }
    expert_worker *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    w->loop = loop;
    w->cfg = *cfg;
    w->timer_fd = -1;
    if (w->cfg.max_queue <= 0)
        w->cfg.max_queue = 16L * cfg->max_batch;
    if (w->cfg.max_queue < cfg->max_batch)
        w->cfg.max_queue = cfg->max_batch;
    if (cfg->threads > 0)
        openblas_set_num_threads(cfg->threads);
    if (cfg->cluster_key_file) {
        int rc = hmac_key_load(cfg->cluster_key_file, &w->key, err, errlen);
        if (rc < 0) {
            free_buffers(w);
            return rc;
        }
        w->has_key = 1;
    }

    w->m = model_open(cfg->weights, err, errlen);
    if (!w->m) {
        free_buffers(w);
        return DDM_EFORMAT;
    }
    const net_config *c = &w->m->cfg;
    if (w->m->kind != MODEL_DENOISER || c->out_dim != c->in_dim) {
        snprintf(err, errlen, "weights file %s: a %s, not a denoiser: ddm-expert serves expert or "
                 "monolith denoisers", cfg->weights, model_kind_name(w->m->kind));
        free_buffers(w);
        return DDM_EMISMATCH;
    }
    w->lim.dim = c->in_dim;
    w->lim.max_batch = cfg->max_batch;
    w->lim.n_classes = c->n_classes;
    snprintf(w->arch, sizeof w->arch,
             "%s denoiser in_dim=%d hidden=%d n_blocks=%d time_dim=%d n_classes=%d "
             "gauss_rank=%d", MODEL_FORMAT, c->in_dim, c->hidden, c->n_blocks, c->time_dim,
             c->n_classes, c->gauss_rank);
    w->arena_keep = 2 * wire_max_request_bytes(&w->lim) + 65536;
    /* idle arenas may hold about twice the inputs of a full queue */
    w->pool_budget = 2 * (size_t)w->cfg.max_queue * (size_t)c->in_dim * 4 + w->arena_keep;

    size_t rows = (size_t)cfg->max_batch, D = (size_t)c->in_dim;
    w->x = malloc(rows * D * sizeof *w->x);
    w->out[0] = malloc(rows * D * sizeof(float));
    w->out[1] = malloc(rows * D * sizeof(float));
    w->t = malloc(rows * sizeof *w->t);
    w->labels = malloc(rows * sizeof *w->labels);
    w->scratch = net_scratch_new(c, cfg->max_batch, 0);
    if (!w->x || !w->out[0] || !w->out[1] || !w->t || !w->labels || !w->scratch) {
        snprintf(err, errlen, "out of memory for --max-batch %d latents of dim %zu: lower "
                 "--max-batch", cfg->max_batch, D);
        free_buffers(w);
        return DDM_ENOMEM;
    }
    batcher_init(&w->q, cfg->max_batch, (uint64_t)cfg->max_delay_us * 1000u);
    emetrics_init(&w->met, cfg->max_batch);
    w->work.data = w;

    int rc = init_handles(w, err, errlen);
    if (rc == 0)
        rc = init_socket(w, err, errlen);
    if (rc == 0)
        rc = init_metrics(w, err, errlen);
    if (rc < 0) {
        close_all(w);
        while (w->handles > 0 && uv_run(loop, UV_RUN_ONCE))
            ;
        free_buffers(w);
        return rc;
    }
    log_info("serving expert %d of %s (%s, sha256 %.16s) on %d URL(s) from %s; max-batch %d, "
             "max-delay %d us, inline up to %d rows, %d BLAS thread(s), %s kernels%s; protocol "
             "%s%s", w->m->expert_id, w->m->dataset, w->arch, st_sha256(w->m->file),
             cfg->n_listen, cfg->weights, cfg->max_batch, cfg->max_delay_us, cfg->inline_rows,
             cfg->threads, blas_core(), w->m->halves ? ", fp16 weight copies for small batches" : "",
             WIRE_PROTOCOL_VERSION, w->has_key ? ", cluster key: every message needs a MAC" : "");
    *out = w;
    return 0;
}

void expert_worker_free(expert_worker *w)
{
    if (!w)
        return;
    /* a worker freed without a stop (tests): release the handles first */
    if (w->handles > 0) {
        close_all(w);
        while (w->handles > 0 && uv_run(w->loop, UV_RUN_ONCE))
            ;
    }
    batcher_item *it = w->q.head;
    while (it) {
        job *j = (job *)it;
        it = it->next;
        wire_arena_free(&j->arena);
        free(j);
    }
    free_buffers(w);
}
