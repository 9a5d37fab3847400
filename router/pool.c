/* pool.c -- expert sockets, replica probes, calls with deadlines and retries.
 *
 * Deadlines are checked by one sweep timer (every 20 ms) rather than a timer
 * per message: messages are many and short-lived, libuv timers need an async
 * close, and 20 ms is fine against deadlines of seconds. */
#include "router/pool.h"

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/nnuv.h"
#include "ddm/v1/worker.pb-c.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "latents travel as little-endian fp32; this host would need byte swapping"
#endif

#define SWEEP_MS 20

enum { REP_CONNECTING = 0, REP_UP, REP_DOWN, REP_REFUSED };
static const char *STATE_NAMES[] = { "connecting", "up", "down", "refused" };

typedef struct replica {
    pool *p;
    int k, r;
    char *url;
    nnuv *probe;
    int state;
    int eid;              /* endpoint on the expert's data socket, -1 when detached */
    int misses;
    int awaiting;         /* a probe is out */
    uint64_t probe_sent_ns;
    int max_batch;
    char detail[200];
} replica;

typedef struct call call;

typedef struct msg {
    call *c;
    uint32_t id;
    int row0, rows;
    int attempts;
    uint64_t sent_ns;
    int done;
} msg;

struct call {
    pool *p;
    int k, rows;
    const float *x, *t;
    const int *labels;
    float *out;
    pool_done_fn done;
    void *ud;
    int n_msgs, pending;
    msg *msgs;
};

typedef struct expert {
    nnuv *data;
    int n_reps;
    replica reps[CLUSTER_MAX_REPLICAS];
    pool_expert_stats st;
} expert;

struct pool {
    uv_loop_t *loop;
    pool_config cfg;
    int K;
    expert *ex;
    uv_timer_t sweep;
    uint64_t last_probe_ns;
    uint32_t next_id;
    msg **fl;            /* messages in flight */
    int nfl, capfl;
    int closing, open_handles;
    void (*close_cb)(void *);
    void *close_ud;
};

void pool_config_default(pool_config *c)
{
    memset(c, 0, sizeof *c);
    c->call_timeout_ms = 2000;
    c->attempts = 3;
    c->probe_interval_ms = 500;
    c->probe_timeout_ms = 1000;
    c->down_after = 2;
}

/* ---- in-flight table ---------------------------------------------------------------- */

static int fl_add(pool *p, msg *m)
{
    if (p->nfl == p->capfl) {
        int cap = p->capfl ? 2 * p->capfl : 64;
        msg **n = realloc(p->fl, (size_t)cap * sizeof *n);
        if (!n)
            return DDM_ENOMEM;
        p->fl = n;
        p->capfl = cap;
    }
    p->fl[p->nfl++] = m;
    return 0;
}

static void fl_remove(pool *p, msg *m)
{
    for (int i = 0; i < p->nfl; i++)
        if (p->fl[i] == m) {
            p->fl[i] = p->fl[--p->nfl];
            return;
        }
}

static msg *fl_find(pool *p, uint32_t id)
{
    for (int i = 0; i < p->nfl; i++)
        if (p->fl[i]->id == id)
            return p->fl[i];
    return NULL;
}

/* ---- calls -------------------------------------------------------------------------- */

static void call_finish(call *c, int status, const char *why)
{
    for (int i = 0; i < c->n_msgs; i++)
        if (!c->msgs[i].done) {
            c->msgs[i].done = 1;
            fl_remove(c->p, &c->msgs[i]);
        }
    if (status)
        c->p->ex[c->k].st.failures++;
    pool_done_fn done = c->done;
    void *ud = c->ud;
    int k = c->k;
    free(c->msgs);
    free(c);
    done(ud, k, status, why);
}

static int send_msg(msg *m)
{
    call *c = m->c;
    pool *p = c->p;
    size_t D = (size_t)p->cfg.dim;
    Ddm__V1__DenoiseRequest dr = DDM__V1__DENOISE_REQUEST__INIT;
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    m->id = (p->next_id++ & 0x7fffffffu);
    dr.has_id = 1, dr.id = m->id;
    dr.has_dim = 1, dr.dim = (uint32_t)D;
    dr.has_batch = 1, dr.batch = (uint32_t)m->rows;
    dr.has_x = 1;
    dr.x.data = (uint8_t *)(c->x + (size_t)m->row0 * D);
    dr.x.len = (size_t)m->rows * D * sizeof(float);
    dr.n_ts = (size_t)m->rows;
    dr.ts = (float *)(c->t + m->row0);
    int32_t labs[1024];
    int32_t *lab = NULL;
    if (c->labels && p->cfg.n_classes > 0) {
        lab = m->rows <= 1024 ? labs : malloc((size_t)m->rows * sizeof *lab);
        if (!lab)
            return DDM_ENOMEM;
        for (int i = 0; i < m->rows; i++)
            lab[i] = c->labels[m->row0 + i];
        dr.n_labels = (size_t)m->rows;
        dr.labels = lab;
    }
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    wr.denoise = &dr;
    size_t len = ddm__v1__worker_request__get_packed_size(&wr);
    void *buf = nn_allocmsg(len, 0);
    int rc = DDM_ENOMEM;
    if (buf) {
        ddm__v1__worker_request__pack(&wr, buf);
        nnuv_hdr h;
        nnuv_hdr_set_id(&h, m->id);
        rc = nnuv_send(p->ex[c->k].data, buf, &h);
        if (rc)
            nn_freemsg(buf);
    }
    if (lab && lab != labs)
        free(lab);
    if (!rc) {
        m->attempts++;
        m->sent_ns = uv_hrtime();
        p->ex[c->k].st.messages++;
    }
    return rc;
}

int pool_call(pool *p, int k, int rows, const float *x, const float *t, const int *labels,
              float *out, pool_done_fn done, void *ud)
{
    if (p->closing)
        return DDM_ECLOSED;
    if (k < 0 || k >= p->K || rows < 1)
        return DDM_EINVAL;
    if (pool_live_replicas(p, k) == 0)
        return DDM_EUNAVAIL;
    int per = p->cfg.max_rows_per_msg > 0 ? p->cfg.max_rows_per_msg : 256;
    for (int r = 0; r < p->ex[k].n_reps; r++)
        if (p->ex[k].reps[r].state == REP_UP && p->ex[k].reps[r].max_batch > 0 &&
            p->ex[k].reps[r].max_batch < per)
            per = p->ex[k].reps[r].max_batch;
    call *c = calloc(1, sizeof *c);
    int n = (rows + per - 1) / per;
    msg *ms = calloc((size_t)n, sizeof *ms);
    if (!c || !ms) {
        free(c);
        free(ms);
        return DDM_ENOMEM;
    }
    *c = (call){ .p = p, .k = k, .rows = rows, .x = x, .t = t, .labels = labels, .out = out,
                 .done = done, .ud = ud, .n_msgs = n, .pending = n, .msgs = ms };
    /* spread rows evenly so replicas get similar batches */
    for (int i = 0; i < n; i++) {
        ms[i].c = c;
        ms[i].row0 = (int)((long)rows * i / n);
        ms[i].rows = (int)((long)rows * (i + 1) / n) - ms[i].row0;
    }
    for (int i = 0; i < n; i++) {
        int rc = send_msg(&ms[i]);
        if (!rc)
            rc = fl_add(p, &ms[i]);
        if (rc) {
            for (int j = 0; j < i; j++)
                fl_remove(p, &ms[j]);
            free(ms);
            free(c);
            return rc;
        }
    }
    p->ex[k].st.calls++;
    p->ex[k].st.rows += (uint64_t)rows;
    return 0;
}

/* A message failed (error reply or deadline): retry or fail its call. */
static void msg_retry(msg *m, int status, const char *why)
{
    call *c = m->c;
    pool *p = c->p;
    if (m->attempts < p->cfg.attempts && pool_live_replicas(p, c->k) > 0) {
        p->ex[c->k].st.retries++;
        log_debug("expert %d: retrying message (%s), attempt %d", c->k, why, m->attempts + 1);
        if (send_msg(m) == 0)
            return;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "expert %d: %s after %d attempt(s)", c->k, why, m->attempts);
    if (pool_live_replicas(p, c->k) == 0) {
        snprintf(buf, sizeof buf, "expert %d has no live replica (%s)", c->k, why);
        status = DDM_EUNAVAIL;
    }
    call_finish(c, status, buf);
}

static void on_data(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    (void)s;
    expert *e = ud;
    uint32_t id;
    msg *m = NULL;
    if (nnuv_hdr_id(hdr, &id) == 0)
        m = fl_find(e->reps[0].p, id);
    if (!m) { /* a late reply to a message already retried or failed */
        nn_freemsg(body);
        return;
    }
    call *c = m->c;
    pool *p = c->p;
    size_t D = (size_t)p->cfg.dim;
    Ddm__V1__WorkerReply *wr = ddm__v1__worker_reply__unpack(NULL, len, body);
    nn_freemsg(body);
    const Ddm__V1__DenoiseReply *dr =
        wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE ? wr->denoise : NULL;
    char why[200];
    if (!dr) {
        snprintf(why, sizeof why, "undecodable reply%s%s", wr && wr->error ? ": " : "",
                 wr && wr->error && wr->error->message ? wr->error->message : "");
    } else if (dr->error) {
        snprintf(why, sizeof why, "worker error: %s", dr->error->message ? dr->error->message : "?");
    } else if (!dr->has_v || dr->v.len != (size_t)m->rows * D * sizeof(float)) {
        snprintf(why, sizeof why, "reply holds %zu bytes, expected %zu", dr->has_v ? dr->v.len : 0,
                 (size_t)m->rows * D * sizeof(float));
    } else {
        memcpy(c->out + (size_t)m->row0 * D, dr->v.data, dr->v.len);
        e->st.latency_ms_sum += (double)(uv_hrtime() - m->sent_ns) / 1e6;
        if (dr->has_batch_size) {
            e->st.batch_rows_sum += dr->batch_size;
            e->st.batch_reports++;
        }
        ddm__v1__worker_reply__free_unpacked(wr, NULL);
        m->done = 1;
        fl_remove(p, m);
        if (--c->pending == 0)
            call_finish(c, 0, NULL);
        return;
    }
    if (wr)
        ddm__v1__worker_reply__free_unpacked(wr, NULL);
    log_warn("expert %d: %s", c->k, why);
    msg_retry(m, DDM_EPROTO, why);
}

/* ---- replicas and probes ----------------------------------------------------------- */

static void detach(replica *rp, int state, const char *why)
{
    pool *p = rp->p;
    if (rp->eid >= 0) {
        nn_shutdown(nnuv_socket(p->ex[rp->k].data), rp->eid);
        rp->eid = -1;
    }
    if (rp->state != state)
        log_warn("expert %d replica %s is %s: %s", rp->k, rp->url, STATE_NAMES[state], why);
    rp->state = state;
    snprintf(rp->detail, sizeof rp->detail, "%s", why);
}

/* The image shape and class names of a handshake against the router's
 * (docs/protocol.md): a worker that does not send height/width/channels
 * serves 28x28x1; class names are checked when the worker sends them. On a
 * mismatch writes why and returns 1. */
static int shape_refused(const pool_config *cfg, const Ddm__V1__InfoReply *ir, char *why,
                         size_t len)
{
    if (cfg->channels <= 0)
        return 0;
    int has = ir->has_height && ir->has_width && ir->has_channels;
    unsigned h = has ? ir->height : 28, w = has ? ir->width : 28, c = has ? ir->channels : 1;
    if ((int)h != cfg->height || (int)w != cfg->width || (int)c != cfg->channels) {
        snprintf(why, len, "serves %ux%ux%u images%s, the router's model makes %dx%dx%d: its "
                 "weights are from another set", h, w, c, has ? "" : " (no shape sent: 28x28x1)",
                 cfg->height, cfg->width, cfg->channels);
        return 1;
    }
    if (ir->n_class_names == 0)
        return 0;
    int same = (int)ir->n_class_names == cfg->n_class_names;
    for (size_t i = 0; same && i < ir->n_class_names; i++)
        same = ir->class_names[i] && !strcmp(ir->class_names[i], cfg->class_names[i]);
    if (!same)
        snprintf(why, len, "names its %zu classes differently from the router's model (%d names): "
                 "its weights are from another set", ir->n_class_names, cfg->n_class_names);
    return !same;
}

static void on_probe(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    (void)s;
    (void)hdr;
    replica *rp = ud;
    pool *p = rp->p;
    Ddm__V1__WorkerReply *wr = ddm__v1__worker_reply__unpack(NULL, len, body);
    nn_freemsg(body);
    rp->awaiting = 0;
    const Ddm__V1__InfoReply *ir =
        wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_INFO ? wr->info : NULL;
    char why[200] = "";
    if (!ir)
        snprintf(why, sizeof why, "answered the handshake with something else than an InfoReply");
    else if (ir->expert_id != rp->k)
        snprintf(why, sizeof why, "serves expert %d, but the cluster file lists it as expert %d",
                 ir->expert_id, rp->k);
    else if ((int)ir->dim != p->cfg.dim)
        snprintf(why, sizeof why, "serves dim %u, the router's model has dim %d", ir->dim,
                 p->cfg.dim);
    else if (ir->num_experts && (int)ir->num_experts != p->K)
        snprintf(why, sizeof why, "comes from a set of %u experts, the router routes over %d",
                 ir->num_experts, p->K);
    else if ((int)ir->num_classes != p->cfg.n_classes)
        snprintf(why, sizeof why, "has %u classes, the router's model has %d", ir->num_classes,
                 p->cfg.n_classes);
    else
        shape_refused(&p->cfg, ir, why, sizeof why);
    if (why[0]) {
        detach(rp, REP_REFUSED, why);
    } else {
        rp->misses = 0;
        rp->max_batch = (int)ir->max_batch;
        if (rp->state != REP_UP) {
            int eid = nn_connect(nnuv_socket(p->ex[rp->k].data), rp->url);
            if (eid < 0) {
                detach(rp, REP_DOWN, nn_strerror(nn_errno()));
            } else {
                rp->eid = eid;
                rp->state = REP_UP;
                snprintf(rp->detail, sizeof rp->detail, "weights %.16s..., max batch %d",
                         ir->weights_sha256 ? ir->weights_sha256 : "?", rp->max_batch);
                log_info("expert %d replica %s is up (%s)", rp->k, rp->url, rp->detail);
            }
        }
    }
    if (wr)
        ddm__v1__worker_reply__free_unpacked(wr, NULL);
}

static void send_probe(replica *rp)
{
    Ddm__V1__InfoRequest ir = DDM__V1__INFO_REQUEST__INIT;
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    ir.has_id = 1, ir.id = (uint64_t)rp->k << 32 | (uint64_t)rp->r;
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
    wr.info = &ir;
    uint8_t buf[64];
    size_t len = ddm__v1__worker_request__pack(&wr, buf);
    nnuv_hdr h;
    nnuv_hdr_set_id(&h, rp->p->next_id++ & 0x7fffffffu);
    if (nnuv_send_copy(rp->probe, buf, len, &h) == 0) {
        rp->awaiting = 1;
        rp->probe_sent_ns = uv_hrtime();
    }
}

static void on_sweep(uv_timer_t *t)
{
    pool *p = t->data;
    uint64_t now = uv_hrtime();
    /* deadlines of messages in flight (iterate over a snapshot: retries
     * keep messages in the table, failures remove whole calls) */
    uint64_t limit = (uint64_t)p->cfg.call_timeout_ms * 1000000ull;
    for (int i = 0; i < p->nfl; i++) {
        msg *m = p->fl[i];
        if (now - m->sent_ns > limit) {
            char why[64];
            snprintf(why, sizeof why, "no reply within %u ms", p->cfg.call_timeout_ms);
            msg_retry(m, DDM_ETIMEDOUT, why);
            i = -1; /* the table may have changed: rescan (rare path) */
            now = uv_hrtime();
        }
    }
    /* probes */
    uint64_t plimit = (uint64_t)p->cfg.probe_timeout_ms * 1000000ull;
    int due = now - p->last_probe_ns >= (uint64_t)p->cfg.probe_interval_ms * 1000000ull;
    for (int k = 0; k < p->K; k++) {
        for (int r = 0; r < p->ex[k].n_reps; r++) {
            replica *rp = &p->ex[k].reps[r];
            if (rp->awaiting && now - rp->probe_sent_ns > plimit) {
                rp->awaiting = 0;
                if (++rp->misses >= p->cfg.down_after && rp->state != REP_REFUSED)
                    detach(rp, REP_DOWN, "does not answer the health probe");
            }
            if (due && !rp->awaiting)
                send_probe(rp);
        }
    }
    if (due)
        p->last_probe_ns = now;
}

static int open_sock(int proto, int raw, const char *url, char *err, size_t errlen)
{
    int s = nn_socket(raw ? AF_SP_RAW : AF_SP, proto);
    if (s < 0) {
        snprintf(err, errlen, "nanomsg socket: %s", nn_strerror(nn_errno()));
        return -1;
    }
    int unlimited = -1, buf = 8 << 20, linger = 0;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &unlimited, sizeof unlimited);
    nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDBUF, &buf, sizeof buf);
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVBUF, &buf, sizeof buf);
    nn_setsockopt(s, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof linger);
    if (url && nn_connect(s, url) < 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", url, nn_strerror(nn_errno()));
        nn_close(s);
        return -1;
    }
    return s;
}

int pool_new(uv_loop_t *loop, const cluster *cl, const pool_config *cfg, pool **out,
             char *err, size_t errlen)
{
    pool *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    p->loop = loop;
    p->cfg = *cfg;
    p->K = cl->n_experts;
    p->next_id = 1;
    p->ex = calloc((size_t)p->K, sizeof *p->ex);
    if (!p->ex) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    int rc = 0;
    for (int k = 0; k < p->K && !rc; k++) {
        expert *e = &p->ex[k];
        int s = open_sock(NN_REQ, 1, NULL, err, errlen);
        if (s < 0 || nnuv_open(loop, s, &e->data)) {
            if (s >= 0)
                nn_close(s);
            rc = DDM_EIO;
            break;
        }
        nnuv_recv_start(e->data, on_data, e);
        e->n_reps = cl->experts[k].n_replicas;
        for (int r = 0; r < e->n_reps && !rc; r++) {
            replica *rp = &e->reps[r];
            *rp = (replica){ .p = p, .k = k, .r = r, .eid = -1, .state = REP_CONNECTING };
            rp->url = strdup(cl->experts[k].urls[r]);
            snprintf(rp->detail, sizeof rp->detail, "waiting for the handshake");
            /* raw too: a cooked REQ socket allows one request at a time and
             * its state machine gets in the way of periodic probes */
            int ps = open_sock(NN_REQ, 1, rp->url, err, errlen);
            if (!rp->url || ps < 0 || nnuv_open(loop, ps, &rp->probe)) {
                if (ps >= 0 && !rp->probe)
                    nn_close(ps);
                rc = DDM_EIO;
                break;
            }
            nnuv_recv_start(rp->probe, on_probe, rp);
        }
    }
    uv_timer_init(loop, &p->sweep);
    p->sweep.data = p;
    if (rc) {
        pool_close(p, NULL, NULL);
        return rc;
    }
    uv_timer_start(&p->sweep, on_sweep, 0, SWEEP_MS);
    *out = p;
    return 0;
}

int pool_live_replicas(const pool *p, int k)
{
    int n = 0;
    for (int r = 0; r < p->ex[k].n_reps; r++)
        n += p->ex[k].reps[r].state == REP_UP;
    return n;
}

int pool_ready(const pool *p)
{
    for (int k = 0; k < p->K; k++)
        if (!pool_live_replicas(p, k))
            return 0;
    return 1;
}

void pool_get_stats(const pool *p, int k, pool_expert_stats *out) { *out = p->ex[k].st; }
int pool_n_replicas(const pool *p, int k) { return p->ex[k].n_reps; }

void pool_replica_info(const pool *p, int k, int r, const char **url, const char **state,
                       const char **detail)
{
    const replica *rp = &p->ex[k].reps[r];
    *url = rp->url;
    *state = STATE_NAMES[rp->state];
    *detail = rp->detail;
}

static void handle_closed(void *ud)
{
    pool *p = ud;
    if (--p->open_handles > 0)
        return;
    for (int k = 0; k < p->K; k++)
        for (int r = 0; r < p->ex[k].n_reps; r++)
            free(p->ex[k].reps[r].url);
    void (*cb)(void *) = p->close_cb;
    void *cud = p->close_ud;
    free(p->fl);
    free(p->ex);
    free(p);
    if (cb)
        cb(cud);
}

static void timer_closed(uv_handle_t *h) { handle_closed(h->data); }

void pool_close(pool *p, void (*cb)(void *ud), void *ud)
{
    p->closing = 1;
    p->close_cb = cb;
    p->close_ud = ud;
    /* fail pending calls first: their owners may still look at the pool */
    while (p->nfl > 0)
        call_finish(p->fl[0]->c, DDM_ECLOSED, "router shutting down");
    p->open_handles = 1; /* the sweep timer */
    for (int k = 0; k < p->K; k++) {
        if (p->ex[k].data)
            p->open_handles++;
        for (int r = 0; r < p->ex[k].n_reps; r++)
            if (p->ex[k].reps[r].probe)
                p->open_handles++;
    }
    for (int k = 0; k < p->K; k++) {
        if (p->ex[k].data)
            nnuv_close(p->ex[k].data, handle_closed, p);
        for (int r = 0; r < p->ex[k].n_reps; r++)
            if (p->ex[k].reps[r].probe)
                nnuv_close(p->ex[k].reps[r].probe, handle_closed, p);
    }
    uv_close((uv_handle_t *)&p->sweep, timer_closed);
}
