/* pool.c -- replica sockets and handshakes, calls split into messages, reply
 * checks, deadlines and retries (see pool.h).
 *
 * Message ids: a data message's id is (generation << 16 | slot) in its table
 * slot (bit 30 clear), so a reply finds its message without a search and a
 * late reply to an earlier use of the slot does not match; a handshake's id
 * has bit 30 set. Ids stay below 2^31 (nnuv's raw REQ header).
 *
 * Pipe identity: nanomsg counts the connections a socket established and
 * lost (NN_STAT_ESTABLISHED_CONNECTIONS, NN_STAT_BROKEN_CONNECTIONS), and it
 * bumps the first when a connection comes up, before any message can flow on
 * it, under the socket's lock that nn_recv also takes. So a reply read while
 * "established" still equals its value when the accepted handshake was sent
 * came over the pipe that handshake verified. A handshake counts only if that
 * value did not move between its send and its reply.
 *
 * Deadlines are checked by one sweep timer (every 20 ms) rather than a timer
 * per message: messages are many and short-lived, and 20 ms is fine against
 * deadlines of seconds. The sweep also reads the connection counters, sends
 * the handshakes and ends quarantines. */
#include "router/pool.h"

#include <errno.h>
#include <limits.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/err.h"
#include "common/hmac.h"
#include "common/log.h"
#include "common/nnuv.h"
#include "ddm/v1/worker.pb-c.h"
#include "router/pool_check.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "latents travel as little-endian fp32; this host would need byte swapping"
#endif

#define SWEEP_MS 20
#define PROBE_BIT 0x40000000u
#define SLOT_BITS 16
#define MAX_SLOTS (1 << SLOT_BITS)
#define GEN_MASK 0x3fffu                /* 14 bits of generation: bits 16..29 */
#define QUARANTINE_MAX_MS 300000u
#define CHALLENGE_BYTES 16

enum { REP_CONNECTING = 0, REP_UP, REP_DOWN, REP_REFUSED, REP_QUARANTINED };
static const char *STATE_NAMES[] = { "connecting", "up", "down", "refused", "quarantined" };

typedef struct replica {
    pool *p;
    int k, r;
    char *url;
    char pin[65];             /* the cluster file's sha256=, or "" */
    nnuv *s;                  /* raw REQ connected to url alone */
    int state;
    int stale;                /* UP, but its pipe changed: skipped until the sweep acts */
    uint64_t seen_est, seen_brk; /* connection counters at the last look */
    uint64_t ver_est;         /* "established" when the accepted handshake was sent */
    /* the handshake in flight */
    int hs_out;
    uint32_t hs_id;
    uint64_t hs_est, hs_sent_ns;
    uint8_t hs_mac[HMAC_SIZE];
    uint64_t next_probe_ns;
    int misses;
    int max_batch;
    int out_rows;             /* rows of messages in flight here */
    uint64_t bad_until_ns, last_bad_ns;
    uint32_t bad_ms;
    /* slow: no new work while another live replica is not (see pick) */
    int slow;                 /* SLOW_* bits */
    uint64_t last_data_ns;    /* when the last denoise reply (any) came from it */
    pool_replica_stats st;
    log_limit warn;           /* this replica's warnings */
    char detail[320];
    char slow_detail[400];    /* detail while slow */
} replica;

/* Why a replica is slow: a message on it unanswered for suspect_ms with no
 * denoise reply from it meanwhile (cleared by its next denoise reply), or a
 * missed probe (cleared by its next reply of any kind). */
enum { SLOW_OVERDUE = 1, SLOW_PROBE = 2 };

typedef struct msg {
    int in_use;
    uint32_t id;
    uint16_t gen;
    int call;                 /* calls[] index */
    int next;                 /* next message of the call, or next free slot */
    int row0, rows;
    replica *rep;             /* where it is in flight (NULL: waiting to be re-sent) */
    int fl_pos;               /* index in fl[] */
    int attempts;
    uint32_t tried;           /* replicas (bit r) that failed it */
    int send_err;             /* the last send failed: the sweep retries it */
    uint64_t sent_ns;
    uint8_t mac[HMAC_SIZE];   /* request MAC of the attempt in flight */
} msg;

typedef struct call {
    int in_use, next_free;
    uint32_t gen;             /* bumped at every use of the slot: ids of old calls do not match */
    int k, rows;
    const float *x, *t;
    const int *labels;
    float *out;
    pool_done_fn done;
    void *ud;
    int pending;              /* messages not answered yet */
    int first;                /* first message (msgs[] index) */
} call;

typedef struct expert {
    int n_reps;
    replica reps[CLUSTER_MAX_REPLICAS];
    char trusted[65];         /* weights hash trusted on first use, or "" */
    unsigned rr;              /* round-robin start among equally loaded replicas */
    pool_expert_stats st;
} expert;

struct pool {
    uv_loop_t *loop;
    pool_config cfg;
    char **class_names;
    int K;
    expert *ex;
    uv_timer_t sweep;
    int has_key;
    hmac_key key;
    uint32_t probe_seq;
    msg *msgs;                /* [cap_msgs] */
    int cap_msgs, free_msg;
    int *fl, nfl;             /* slots in flight (or waiting to be re-sent) */
    call *calls;
    int cap_calls, free_call;
    int32_t *labels;          /* [cap_labels] per-message label copy */
    int cap_labels;
    uint64_t suspect_ns;      /* cfg.suspect_ms, or a quarter of the deadline */
    int closing, open_handles;
    void (*close_cb)(void *);
    void *close_ud;
};

void pool_config_default(pool_config *c)
{
    memset(c, 0, sizeof *c);
    c->height = 28;
    c->width = 28;
    c->channels = 1;
    c->call_timeout_ms = 2000;
    c->attempts = 3;
    c->probe_interval_ms = 500;
    c->probe_timeout_ms = 1000;
    c->down_after = 2;
    c->quarantine_ms = 10000;
}

/* ---- tables ---------------------------------------------------------------------------- */

/* Doubles the message table (slots keep their index). */
static int grow_msgs(pool *p)
{
    if (p->cap_msgs >= MAX_SLOTS)
        return DDM_EBUSY;
    int cap = p->cap_msgs ? 2 * p->cap_msgs : 256;
    msg *m = realloc(p->msgs, (size_t)cap * sizeof *m);
    if (!m)
        return DDM_ENOMEM;
    p->msgs = m;
    int *fl = realloc(p->fl, (size_t)cap * sizeof *fl);
    if (!fl)
        return DDM_ENOMEM;
    p->fl = fl;
    for (int i = cap - 1; i >= p->cap_msgs; i--) {
        memset(&m[i], 0, sizeof m[i]);
        m[i].next = p->free_msg;
        p->free_msg = i;
    }
    p->cap_msgs = cap;
    return 0;
}

static int msg_alloc(pool *p)
{
    if (p->free_msg < 0) {
        int rc = grow_msgs(p);
        if (rc)
            return rc;
    }
    int i = p->free_msg;
    msg *m = &p->msgs[i];
    p->free_msg = m->next;
    uint16_t gen = (uint16_t)((m->gen + 1) & GEN_MASK);
    memset(m, 0, sizeof *m);
    m->gen = gen;
    m->in_use = 1;
    m->next = -1;
    m->fl_pos = -1;
    return i;
}

static void fl_add(pool *p, int slot)
{
    p->msgs[slot].fl_pos = p->nfl;
    p->fl[p->nfl++] = slot;
}

static void fl_remove(pool *p, msg *m)
{
    if (m->fl_pos < 0)
        return;
    int last = p->fl[--p->nfl];
    p->fl[m->fl_pos] = last;
    p->msgs[last].fl_pos = m->fl_pos;
    m->fl_pos = -1;
}

/* Takes m off its replica (its rows no longer count there). */
static void msg_unassign(msg *m)
{
    if (m->rep)
        m->rep->out_rows -= m->rows;
    m->rep = NULL;
}

static void msg_free(pool *p, int slot)
{
    msg *m = &p->msgs[slot];
    msg_unassign(m);
    fl_remove(p, m);
    m->in_use = 0;
    m->id = 0;
    m->next = p->free_msg;
    p->free_msg = slot;
}

static int call_alloc(pool *p)
{
    if (p->free_call < 0) {
        int cap = p->cap_calls ? 2 * p->cap_calls : 64;
        call *c = realloc(p->calls, (size_t)cap * sizeof *c);
        if (!c)
            return DDM_ENOMEM;
        for (int i = cap - 1; i >= p->cap_calls; i--) {
            memset(&c[i], 0, sizeof c[i]);
            c[i].next_free = p->free_call;
            p->free_call = i;
        }
        p->calls = c;
        p->cap_calls = cap;
    }
    int i = p->free_call;
    p->free_call = p->calls[i].next_free;
    p->calls[i].in_use = 1;
    p->calls[i].gen++;
    return i;
}

/* ---- replicas: connection state ----------------------------------------------------- */

static void conn_stats(const replica *rp, uint64_t *est, uint64_t *brk)
{
    int s = nnuv_socket(rp->s);
    *est = nn_get_statistic(s, NN_STAT_ESTABLISHED_CONNECTIONS);
    if (brk)
        *brk = nn_get_statistic(s, NN_STAT_BROKEN_CONNECTIONS);
}

static int connected(const replica *rp)
{
    return nn_get_statistic(nnuv_socket(rp->s), NN_STAT_CURRENT_CONNECTIONS) > 0;
}

static void msg_failed(pool *p, int slot, int status, const char *why);
static void on_reply(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud);

/* Every message in flight on rp fails this attempt (it goes elsewhere). A
 * rare path: each failure may end calls, call back and change the list, so
 * it looks again from the start each time. */
static void fail_replica_msgs(replica *rp, int status, const char *why)
{
    pool *p = rp->p;
    for (int i = 0; i < p->nfl;) {
        if (p->msgs[p->fl[i]].rep != rp) {
            i++;
            continue;
        }
        msg_failed(p, p->fl[i], status, why);
        i = 0;
    }
}

/* The largest reply a worker may send: a message's rows of velocities (at
 * most the larger of 256 and max_rows_per_msg), plus 1 MiB for the rest (an
 * InfoReply's strings). nanomsg drops the connection on anything larger, so
 * a hostile peer cannot make the router allocate without bound. */
static int max_reply_bytes(const pool *p)
{
    size_t rows = p->cfg.max_rows_per_msg > 256 ? (size_t)p->cfg.max_rows_per_msg : 256;
    size_t n = rows * (size_t)p->cfg.dim * sizeof(float) + (1u << 20);
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* Opens rp's socket (raw REQ, connected to its URL alone). */
static int open_socket(replica *rp, char *err, size_t errlen)
{
    pool *p = rp->p;
    int s = nn_socket(AF_SP_RAW, NN_REQ);
    if (s < 0)
        return ddm_errf(err, errlen, DDM_EIO, "nanomsg socket: %s", nn_strerror(nn_errno()));
    int rcvmax = max_reply_bytes(p), buf = 8 << 20, linger = 0;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &rcvmax, sizeof rcvmax);
    nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDBUF, &buf, sizeof buf);
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVBUF, &buf, sizeof buf);
    nn_setsockopt(s, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof linger);
    if (nn_connect(s, rp->url) < 0) {
        int e = nn_errno();
        nn_close(s);
        return ddm_errf(err, errlen, DDM_EIO, "cannot connect to %s: %s", rp->url,
                        nn_strerror(e));
    }
    int rc = nnuv_open(p->loop, s, &rp->s);
    if (rc) {
        nn_close(s);
        return ddm_errf(err, errlen, rc, "cannot poll the socket of %s: %s", rp->url,
                        ddm_strerror(rc));
    }
    p->open_handles++;
    nnuv_recv_start(rp->s, on_reply, rp);
    rp->seen_est = rp->seen_brk = rp->ver_est = 0;
    rp->hs_out = 0;
    return 0;
}

static void handle_closed(void *ud);

/* Replaces rp's socket by a fresh one: what nnuv still queued for the old
 * pipe is discarded (it must not reach whatever connects next), and late
 * replies to the old socket's messages cannot arrive. */
static void reopen_socket(replica *rp)
{
    nnuv_close(rp->s, handle_closed, rp->p);
    rp->s = NULL;
    char err[256];
    if (open_socket(rp, err, sizeof err)) {
        /* out of descriptors or memory: try again at the next sweep */
        log_limited(&rp->warn, LOG_ERROR, "expert %d replica %s: %s", rp->k, rp->url, err);
    }
}

/* Sets rp's state and detail; logs a change (rate-limited per replica). */
static void set_state(replica *rp, int state, const char *why)
{
    int changed = rp->state != state || strcmp(rp->detail, why);
    if (changed && state != REP_UP)
        log_limited(&rp->warn, state == REP_CONNECTING ? LOG_INFO : LOG_WARN,
                    "expert %d replica %s is %s: %s", rp->k, rp->url, STATE_NAMES[state], why);
    rp->state = state;
    if (rp->detail != why)
        snprintf(rp->detail, sizeof rp->detail, "%s", why);
}

/* rp is slow for reason bit (SLOW_*): it gets no new work while a sibling
 * is not slow (pick). Logged when it starts. */
static void slow_set(replica *rp, int bit, const char *why)
{
    if (rp->slow & bit)
        return;
    if (!rp->slow && rp->state == REP_UP) {
        snprintf(rp->slow_detail, sizeof rp->slow_detail, "%s; no new work while another "
                 "replica answers: %s", rp->detail, why);
        log_limited(&rp->warn, LOG_WARN, "expert %d replica %s is slow (%s): no new work for "
                    "it until it answers", rp->k, rp->url, why);
    }
    rp->slow |= bit;
}

/* rp answered: the reasons in bits no longer hold. */
static void slow_clear(replica *rp, int bits)
{
    int was = rp->slow;
    rp->slow &= ~bits;
    if (was && !rp->slow && rp->state == REP_UP)
        log_limited(&rp->warn, LOG_INFO, "expert %d replica %s answers again", rp->k, rp->url);
}

/* rp leaves rotation: state, log, and its messages go elsewhere. */
static void replica_out(replica *rp, int state, int status, const char *why)
{
    set_state(rp, state, why);
    char reason[400];
    snprintf(reason, sizeof reason, "replica %s: %s", rp->url, why);
    fail_replica_msgs(rp, status, reason);
}

/* The pipe changed (lost, or re-established to whatever now listens): stop
 * using rp until a handshake on the new pipe passes. */
static void pipe_changed(replica *rp, const char *what)
{
    rp->stale = 0;
    if (rp->state == REP_UP)
        replica_out(rp, REP_CONNECTING, DDM_EUNAVAIL, what);
    else
        fail_replica_msgs(rp, DDM_EUNAVAIL, what);
    rp->hs_out = 0;
    rp->next_probe_ns = 0; /* ask who it is at once */
    if (rp->s && nnuv_queued(rp->s) > 0)
        reopen_socket(rp);
}

/* Reads rp's connection counters; acts on a change. */
static void check_conn(replica *rp)
{
    if (!rp->s)
        return;
    uint64_t est, brk;
    conn_stats(rp, &est, &brk);
    if (est == rp->seen_est && brk == rp->seen_brk)
        return;
    int lost = brk != rp->seen_brk, again = est != rp->seen_est;
    rp->seen_est = est;
    rp->seen_brk = brk;
    if (rp->state == REP_UP || rp->hs_out || rp->out_rows > 0)
        pipe_changed(rp, again && rp->ver_est ? "its connection was re-established: checking "
                                                "who listens there now"
                         : lost ? "connection lost" : "connected");
}

/* A bad reply: rp is quarantined (longer each time it comes back and does
 * it again) and its messages go elsewhere. */
static void replica_bad(replica *rp, const char *why)
{
    pool *p = rp->p;
    uint64_t now = uv_hrtime();
    uint32_t base = p->cfg.quarantine_ms ? p->cfg.quarantine_ms : 10000;
    if (rp->last_bad_ns && now - rp->last_bad_ns < 2ull * rp->bad_ms * 1000000ull)
        rp->bad_ms = rp->bad_ms * 2 > QUARANTINE_MAX_MS ? QUARANTINE_MAX_MS : rp->bad_ms * 2;
    else
        rp->bad_ms = base;
    if (rp->bad_ms < base)
        rp->bad_ms = base;
    rp->last_bad_ns = now;
    rp->bad_until_ns = now + (uint64_t)rp->bad_ms * 1000000ull;
    p->ex[rp->k].st.bad_replies++;
    rp->st.bad_replies++;
    char d[300];
    snprintf(d, sizeof d, "taken out of rotation for %u s: %s", rp->bad_ms / 1000, why);
    replica_out(rp, REP_QUARANTINED, DDM_EUNAVAIL, d);
}

/* ---- replies ------------------------------------------------------------------------------ */

/* Opens a reply to the request whose MAC was req_mac: with a cluster key,
 * checks and strips its MAC trailer (*mac_rc = 0, or DDM_EPROTO for none,
 * DDM_EMISMATCH for a wrong one: then NULL), then decodes it. Returns the
 * reply (free with ddm__v1__worker_reply__free_unpacked) or NULL. */
static Ddm__V1__WorkerReply *open_reply(pool *p, const uint8_t *req_mac, const uint8_t *body,
                                        size_t len, int *mac_rc)
{
    *mac_rc = 0;
    if (p->has_key) {
        *mac_rc = hmac_trailer_check_rep(&p->key, req_mac, body, len);
        if (*mac_rc)
            return NULL;
        len -= HMAC_TRAILER_SIZE;
    }
    return ddm__v1__worker_reply__unpack(NULL, len, body);
}

/* ---- handshakes ------------------------------------------------------------------------ */

static void send_handshake(replica *rp, uint64_t now)
{
    pool *p = rp->p;
    uint8_t challenge[CHALLENGE_BYTES];
    Ddm__V1__InfoRequest ir = DDM__V1__INFO_REQUEST__INIT;
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    uint32_t id = PROBE_BIT | (++p->probe_seq & (PROBE_BIT - 1));
    ir.has_id = 1, ir.id = id;
    if (p->has_key) {
        if (getrandom(challenge, sizeof challenge, 0) != (ssize_t)sizeof challenge) {
            log_limited(&rp->warn, LOG_ERROR, "getrandom: %s", strerror(errno));
            return;
        }
        ir.has_challenge = 1;
        ir.challenge.data = challenge;
        ir.challenge.len = sizeof challenge;
    }
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
    wr.info = &ir;
    uint8_t buf[128];
    size_t len = ddm__v1__worker_request__pack(&wr, buf);
    if (p->has_key) {
        hmac_trailer_req(&p->key, buf, len, buf + len);
        memcpy(rp->hs_mac, buf + len + 2, HMAC_SIZE);
        len += HMAC_TRAILER_SIZE;
    }
    nnuv_hdr h;
    nnuv_hdr_set_id(&h, id);
    uint64_t est;
    conn_stats(rp, &est, NULL);
    if (nnuv_send_copy(rp->s, buf, len, &h) == 0) {
        rp->hs_out = 1;
        rp->hs_id = id;
        rp->hs_est = est;
        rp->hs_sent_ns = now;
    }
}

/* A handshake was refused: rp is out until one passes. */
static void refuse(replica *rp, const char *why)
{
    char d[400];
    snprintf(d, sizeof d, "refused: %s", why);
    if (rp->state != REP_REFUSED || strcmp(rp->detail, why))
        log_limited(&rp->warn, LOG_WARN, "expert %d replica %s refused: %s", rp->k, rp->url, why);
    rp->state = REP_REFUSED; /* before the retries: no message may go back here */
    snprintf(rp->detail, sizeof rp->detail, "%s", why);
    fail_replica_msgs(rp, DDM_EUNAVAIL, d);
}

/* 1 if body (an unauthenticated reply: trusted for a log line only) is a
 * WorkerReply.error with code DDM_EMISMATCH, a keyed worker's answer to a
 * request under another key (docs/protocol.md, Authentication). */
static int refused_our_mac(const uint8_t *body, size_t len)
{
    Ddm__V1__WorkerReply *wr = ddm__v1__worker_reply__unpack(NULL, len, body);
    int yes = wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_ERROR && wr->error &&
              wr->error->has_code && wr->error->code == DDM_EMISMATCH;
    if (wr)
        ddm__v1__worker_reply__free_unpacked(wr, NULL);
    return yes;
}

static void on_handshake(replica *rp, uint32_t id, const uint8_t *body, size_t len)
{
    pool *p = rp->p;
    if (!rp->hs_out || id != rp->hs_id)
        return; /* a late answer to an earlier handshake */
    rp->hs_out = 0;
    uint64_t est;
    conn_stats(rp, &est, NULL);
    if (est != rp->hs_est) {
        rp->next_probe_ns = 0; /* the pipe changed meanwhile: ask again */
        return;
    }
    int mac_rc;
    Ddm__V1__WorkerReply *wr = open_reply(p, rp->hs_mac, body, len, &mac_rc);
    if (mac_rc) {
        refuse(rp, mac_rc == DDM_EMISMATCH
                       ? "its handshake reply has a wrong MAC: it does not hold the router's "
                         "cluster key"
                   : refused_our_mac(body, len)
                       ? "it refuses our MAC (an unauthenticated error, code -1005): its "
                         "--cluster-key-file is not the router's"
                       : "its handshake reply carries no MAC: start the worker with the "
                         "router's --cluster-key-file");
        return;
    }
    const Ddm__V1__InfoReply *ir =
        wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_INFO ? wr->info : NULL;
    char why[400];
    int rc = 0;
    if (!ir) {
        rc = DDM_EPROTO;
        if (wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_ERROR && wr->error)
            snprintf(why, sizeof why, "answered the handshake with an error: %.300s",
                     wr->error->message ? wr->error->message : "(no message)");
        else
            snprintf(why, sizeof why, "answered the handshake with something else than an "
                     "InfoReply");
    } else if (!ir->has_id || ir->id != id) {
        rc = DDM_EPROTO;
        snprintf(why, sizeof why, "answered handshake %u with id %llu", id,
                 (unsigned long long)ir->id);
    } else {
        expert *e = &p->ex[rp->k];
        pool_expect ex = { .expert_id = rp->k, .dim = p->cfg.dim, .n_experts = p->K,
                           .n_classes = p->cfg.n_classes, .height = p->cfg.height,
                           .width = p->cfg.width, .channels = p->cfg.channels,
                           .class_names = (const char *const *)p->class_names,
                           .n_class_names = p->cfg.n_class_names, .pin = rp->pin,
                           .trusted = e->trusted };
        rc = pool_check_info(&ex, ir, why, sizeof why);
    }
    if (rc) {
        refuse(rp, why);
    } else {
        expert *e = &p->ex[rp->k];
        if (!rp->pin[0] && !e->trusted[0]) {
            snprintf(e->trusted, sizeof e->trusted, "%s", ir->weights_sha256);
            for (char *c = e->trusted; *c; c++)
                *c = (char)(*c >= 'A' && *c <= 'F' ? *c - 'A' + 'a' : *c);
            log_info("expert %d: trusting weights sha256 %s, first declared by %s (pin it in "
                     "the cluster file: expert %d %s sha256=%s)", rp->k, e->trusted, rp->url,
                     rp->k, rp->url, e->trusted);
        }
        rp->misses = 0;
        rp->max_batch = (int)ir->max_batch;
        uint64_t now = uv_hrtime();
        if (now < rp->bad_until_ns) {
            /* identity is fine, but its replies were not: wait out the quarantine */
            if (rp->state != REP_QUARANTINED)
                set_state(rp, REP_QUARANTINED, "answers the handshake again, but stays out "
                          "until its quarantine for bad replies ends");
        } else if (rp->state != REP_UP) {
            rp->ver_est = rp->hs_est;
            rp->stale = 0;
            rp->slow = 0;
            rp->state = REP_UP;
            snprintf(rp->detail, sizeof rp->detail, "weights %.16s..., max batch %d%s",
                     ir->weights_sha256, rp->max_batch, p->has_key ? ", MAC verified" : "");
            log_info("expert %d replica %s is up (%s)", rp->k, rp->url, rp->detail);
        }
    }
    if (wr)
        ddm__v1__worker_reply__free_unpacked(wr, NULL);
}

/* ---- calls and messages ------------------------------------------------------------------ */

static void call_finish(pool *p, int ci, int status, const char *why)
{
    call *c = &p->calls[ci];
    for (int s = c->first, next; s >= 0; s = next) {
        next = p->msgs[s].next;
        msg_free(p, s);
    }
    if (status) {
        p->ex[c->k].st.failures++;
        if (status != DDM_ECLOSED)
            log_warn_limited("call of %d rows failed: %s", c->rows, why);
    }
    pool_done_fn done = c->done;
    void *ud = c->ud;
    int k = c->k;
    c->in_use = 0;
    c->next_free = p->free_call;
    p->free_call = ci;
    done(ud, k, status, why);
}

/* The live replica of expert k to send to, in this order of preference:
 * not in avoid (bit r: the replicas that failed this message), not slow,
 * the fewest rows outstanding (ties: round-robin). NULL if none is live. */
static replica *pick(pool *p, int k, uint32_t avoid)
{
    expert *e = &p->ex[k];
    replica *best = NULL;
    int best_rank = 0;
    for (int i = 0; i < e->n_reps; i++) {
        replica *rp = &e->reps[(e->rr + (unsigned)i) % (unsigned)e->n_reps];
        if (rp->state != REP_UP || rp->stale)
            continue;
        int rank = ((avoid >> rp->r) & 1) * 2 + (rp->slow != 0);
        if (!best || rank < best_rank || (rank == best_rank && rp->out_rows < best->out_rows)) {
            best = rp;
            best_rank = rank;
        }
    }
    e->rr++;
    return best;
}

/* Packs and sends message slot on rp. Returns 0 or an error (m not sent). */
static int send_on(pool *p, int slot, replica *rp)
{
    msg *m = &p->msgs[slot];
    call *c = &p->calls[m->call];
    size_t D = (size_t)p->cfg.dim;
    Ddm__V1__DenoiseRequest dr = DDM__V1__DENOISE_REQUEST__INIT;
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    m->gen = (uint16_t)((m->gen + 1) & GEN_MASK); /* a new attempt: earlier replies do not match */
    m->id = (uint32_t)m->gen << SLOT_BITS | (uint32_t)slot;
    dr.has_id = 1, dr.id = m->id;
    dr.has_dim = 1, dr.dim = (uint32_t)D;
    dr.has_batch = 1, dr.batch = (uint32_t)m->rows;
    dr.has_x = 1;
    dr.x.data = (uint8_t *)(c->x + (size_t)m->row0 * D);
    dr.x.len = (size_t)m->rows * D * sizeof(float);
    dr.n_ts = (size_t)m->rows;
    dr.ts = (float *)(c->t + m->row0);
    if (c->labels && p->cfg.n_classes > 0) {
        if (m->rows > p->cap_labels) {
            int32_t *l = realloc(p->labels, (size_t)m->rows * sizeof *l);
            if (!l)
                return DDM_ENOMEM;
            p->labels = l;
            p->cap_labels = m->rows;
        }
        for (int i = 0; i < m->rows; i++)
            p->labels[i] = c->labels[m->row0 + i];
        dr.n_labels = (size_t)m->rows;
        dr.labels = p->labels;
    }
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    wr.denoise = &dr;
    size_t len = ddm__v1__worker_request__get_packed_size(&wr);
    uint8_t *buf = nn_allocmsg(len + (p->has_key ? HMAC_TRAILER_SIZE : 0), 0);
    if (!buf)
        return DDM_ENOMEM;
    ddm__v1__worker_request__pack(&wr, buf);
    if (p->has_key) {
        hmac_trailer_req(&p->key, buf, len, buf + len);
        memcpy(m->mac, buf + len + 2, HMAC_SIZE);
    }
    nnuv_hdr h;
    nnuv_hdr_set_id(&h, m->id);
    int rc = nnuv_send(rp->s, buf, &h);
    if (rc) {
        nn_freemsg(buf);
        return rc;
    }
    m->attempts++;
    m->sent_ns = uv_hrtime();
    m->rep = rp;
    m->send_err = 0;
    rp->out_rows += m->rows;
    rp->st.messages++;
    p->ex[c->k].st.messages++;
    return 0;
}

/* Sends m to the best live replica. Returns 0, DDM_EUNAVAIL (none live) or
 * a send error; on error m is on no replica. Calls nothing back. */
static int dispatch(pool *p, int slot)
{
    msg *m = &p->msgs[slot];
    int k = p->calls[m->call].k;
    for (;;) {
        replica *rp = pick(p, k, m->tried);
        if (!rp)
            return DDM_EUNAVAIL;
        uint64_t est;
        conn_stats(rp, &est, NULL);
        if (est != rp->ver_est) {
            /* reconnected since its handshake: never send there; the sweep (or the
             * next reply) moves what is on it and asks who listens now */
            rp->stale = 1;
            continue;
        }
        return send_on(p, slot, rp);
    }
}

/* Message slot's attempt failed (status, why): send it again, or fail its call. */
static void msg_failed(pool *p, int slot, int status, const char *why)
{
    msg *m = &p->msgs[slot];
    int ci = m->call;
    int k = p->calls[ci].k;
    if (m->rep)
        m->tried |= 1u << m->rep->r;
    msg_unassign(m);
    int rc = 0;
    if (m->attempts < p->cfg.attempts && !p->closing) {
        p->ex[k].st.retries++;
        log_debug("expert %d: message %u retried (%s), attempt %d", k, m->id, why,
                  m->attempts + 1);
        rc = dispatch(p, slot);
        if (rc == 0)
            return;
    }
    char buf[600];
    if (rc == DDM_EUNAVAIL || pool_live_replicas(p, k) == 0) {
        snprintf(buf, sizeof buf, "expert %d has no live replica (%s)", k, why);
        status = DDM_EUNAVAIL;
    } else if (rc == 0) {
        snprintf(buf, sizeof buf, "expert %d: %s after %d attempt(s)", k, why, m->attempts);
    } else {
        snprintf(buf, sizeof buf, "expert %d: cannot send: %s", k, ddm_strerror(rc));
        status = rc;
    }
    call_finish(p, ci, status, buf);
}

int pool_call(pool *p, int k, int rows, const float *x, const float *t, const int *labels,
              float *out, pool_done_fn done, void *ud, pool_call_id *id)
{
    if (p->closing)
        return DDM_ECLOSED;
    if (k < 0 || k >= p->K || rows < 1)
        return DDM_EINVAL;
    if (pool_live_replicas(p, k) == 0)
        return DDM_EUNAVAIL;
    int per = p->cfg.max_rows_per_msg > 0 ? p->cfg.max_rows_per_msg : 256;
    for (int r = 0; r < p->ex[k].n_reps; r++) {
        const replica *rp = &p->ex[k].reps[r];
        if (rp->state == REP_UP && rp->max_batch > 0 && rp->max_batch < per)
            per = rp->max_batch;
    }
    int n = (rows + per - 1) / per;
    int ci = call_alloc(p);
    if (ci < 0)
        return ci;
    call *c = &p->calls[ci];
    *c = (call){ .in_use = 1, .gen = c->gen, .k = k, .rows = rows, .x = x, .t = t,
                 .labels = labels, .out = out, .done = done, .ud = ud, .pending = n,
                 .first = -1 };
    /* every slot first (the table may grow), then the sends */
    int prev = -1;
    for (int i = 0; i < n; i++) {
        int s = msg_alloc(p);
        if (s < 0) {
            for (int j = c->first, next; j >= 0; j = next) {
                next = p->msgs[j].next;
                msg_free(p, j);
            }
            c = &p->calls[ci];
            c->in_use = 0;
            c->next_free = p->free_call;
            p->free_call = ci;
            return s;
        }
        msg *m = &p->msgs[s];
        m->call = ci;
        /* spread rows evenly so replicas get similar batches */
        m->row0 = (int)((long)rows * i / n);
        m->rows = (int)((long)rows * (i + 1) / n) - m->row0;
        if (prev < 0)
            c->first = s;
        else
            p->msgs[prev].next = s;
        prev = s;
    }
    for (int s = c->first; s >= 0; s = p->msgs[s].next) {
        fl_add(p, s);
        if (dispatch(p, s)) {
            /* retried by the next sweep, which calls back if it cannot be sent */
            p->msgs[s].send_err = 1;
        }
    }
    p->ex[k].st.calls++;
    p->ex[k].st.rows += (uint64_t)rows;
    if (id)
        *id = (pool_call_id)p->calls[ci].gen << 32 | (uint32_t)ci;
    return 0;
}

int pool_cancel(pool *p, pool_call_id id)
{
    uint32_t ci = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (p->closing || ci >= (uint32_t)p->cap_calls)
        return 0;
    call *c = &p->calls[ci];
    if (!c->in_use || c->gen != gen)
        return 0;
    for (int s = c->first, next; s >= 0; s = next) { /* late replies find no message */
        next = p->msgs[s].next;
        msg_free(p, s);
    }
    p->ex[c->k].st.cancelled++;
    c->in_use = 0;
    c->next_free = p->free_call;
    p->free_call = (int)ci;
    return 1;
}

static void on_data(replica *rp, uint32_t id, const uint8_t *body, size_t len)
{
    pool *p = rp->p;
    uint32_t slot = id & (MAX_SLOTS - 1);
    msg *m = slot < (uint32_t)p->cap_msgs ? &p->msgs[slot] : NULL;
    if (!m || !m->in_use || m->id != id || m->rep != rp)
        return; /* a late reply to an attempt already retried or failed */
    expert *e = &p->ex[rp->k];
    call *c = &p->calls[m->call];
    size_t D = (size_t)p->cfg.dim;
    int mac_rc;
    Ddm__V1__WorkerReply *wr = open_reply(p, m->mac, body, len, &mac_rc);
    if (mac_rc) {
        replica_bad(rp, mac_rc == DDM_EPROTO ? "reply without a MAC" : "reply with a wrong MAC");
        return;
    }
    char why[300];
    size_t want = (size_t)m->rows * D * sizeof(float);
    int verdict = pool_check_reply(wr, len, m->id, m->rows, D, why, sizeof why);
    if (verdict != POOL_REPLY_OK) {
        if (wr)
            ddm__v1__worker_reply__free_unpacked(wr, NULL);
        if (verdict == POOL_REPLY_WORKER_ERROR) {
            /* the worker could not serve it: its fault or ours, not garbage */
            log_limited(&rp->warn, LOG_WARN, "expert %d replica %s: %s", rp->k, rp->url, why);
            msg_failed(p, (int)slot, DDM_EPROTO, why);
            return;
        }
        log_limited(&rp->warn, LOG_WARN, "expert %d replica %s: bad reply: %s", rp->k, rp->url,
                    why);
        replica_bad(rp, why);
        return;
    }
    const Ddm__V1__DenoiseReply *dr = wr->denoise;
    memcpy(c->out + (size_t)m->row0 * D, dr->v.data, want);
    e->st.latency_ms_sum += (double)(uv_hrtime() - m->sent_ns) / 1e6;
    if (dr->has_batch_size) {
        e->st.batch_rows_sum += dr->batch_size;
        e->st.batch_reports++;
    }
    ddm__v1__worker_reply__free_unpacked(wr, NULL);
    msg_unassign(m);
    fl_remove(p, m);
    if (--c->pending == 0)
        call_finish(p, m->call, 0, NULL);
}

static void on_reply(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    (void)s;
    replica *rp = ud;
    uint32_t id;
    check_conn(rp);
    if (rp->p->closing || nnuv_hdr_id(hdr, &id) != 0) {
        nn_freemsg(body);
        return;
    }
    /* any answer shows it runs; a denoise reply, that it computes */
    if (id & PROBE_BIT) {
        slow_clear(rp, SLOW_PROBE);
        on_handshake(rp, id, body, len);
    } else {
        rp->last_data_ns = uv_hrtime();
        slow_clear(rp, SLOW_PROBE | SLOW_OVERDUE);
        if (rp->state == REP_UP)
            on_data(rp, id, body, len);
    }
    nn_freemsg(body);
}

/* ---- the sweep -------------------------------------------------------------------------- */

/* How long a message may wait before its replica counts as slow:
 * suspect_ns, or four times the expert's mean message latency when that is
 * longer (a slow model is not a stopped worker). */
static uint64_t overdue_ns(const pool *p, int k)
{
    const pool_expert_stats *st = &p->ex[k].st;
    double mean4 = st->messages ? 4e6 * st->latency_ms_sum / (double)st->messages : 0;
    return mean4 > (double)p->suspect_ns ? (uint64_t)mean4 : p->suspect_ns;
}

/* 1 if another replica of rp's expert is live and not slow. */
static int sibling_answers(const replica *rp)
{
    const expert *e = &rp->p->ex[rp->k];
    for (int r = 0; r < e->n_reps; r++) {
        const replica *o = &e->reps[r];
        if (o != rp && o->state == REP_UP && !o->stale && !o->slow)
            return 1;
    }
    return 0;
}

/* Message slot, in flight and within its deadline: marks its replica slow
 * when the message is overdue with nothing from the replica meanwhile; and
 * while the replica is slow and a sibling answers, gives up this attempt
 * (when it is not the last) so that the message goes there now rather than
 * at its deadline. Returns 1 if it did (the lists may have changed). */
static int moved_off_slow(pool *p, int slot, uint64_t now)
{
    msg *m = &p->msgs[slot];
    replica *rp = m->rep;
    uint64_t thr = overdue_ns(p, rp->k);
    int overdue = m->sent_ns + thr < now;
    char why[160];
    if (!(rp->slow & SLOW_OVERDUE) && overdue && rp->last_data_ns + thr < now) {
        snprintf(why, sizeof why, "a message unanswered for %llu ms",
                 (unsigned long long)(thr / 1000000ull));
        slow_set(rp, SLOW_OVERDUE, why);
    }
    if (!rp->slow || !(overdue || (rp->slow & SLOW_PROBE)) || m->attempts >= p->cfg.attempts ||
        !sibling_answers(rp))
        return 0;
    snprintf(why, sizeof why, "replica %s is slow: sent to another replica before the deadline",
             rp->url);
    rp->st.timeouts++;
    msg_failed(p, slot, DDM_ETIMEDOUT, why);
    return 1;
}

static void sweep_replica(replica *rp, uint64_t now)
{
    pool *p = rp->p;
    if (!rp->s) {
        char err[256];
        if (open_socket(rp, err, sizeof err))
            return;
    }
    check_conn(rp);
    if (!rp->s)
        return; /* a reopen failed: again at the next sweep */
    uint64_t plimit = (uint64_t)p->cfg.probe_timeout_ms * 1000000ull;
    if (rp->hs_out && now - rp->hs_sent_ns > plimit) {
        rp->hs_out = 0;
        char why[96];
        snprintf(why, sizeof why, "no answer to a probe within %u ms", p->cfg.probe_timeout_ms);
        slow_set(rp, SLOW_PROBE, why);
        if (++rp->misses >= p->cfg.down_after &&
            (rp->state == REP_UP || rp->state == REP_CONNECTING))
            replica_out(rp, REP_DOWN, DDM_EUNAVAIL, "does not answer the handshake (health "
                        "probe)");
    }
    if (!rp->hs_out && now >= rp->next_probe_ns) {
        rp->next_probe_ns = now + (uint64_t)p->cfg.probe_interval_ms * 1000000ull;
        if (connected(rp)) {
            send_handshake(rp, now);
        } else if (++rp->misses >= p->cfg.down_after &&
                   (rp->state == REP_UP || rp->state == REP_CONNECTING)) {
            replica_out(rp, REP_DOWN, DDM_EUNAVAIL, "no connection: is a worker listening "
                        "there?");
        }
    }
    log_limit_flush(&rp->warn, 0);
}

static void on_sweep(uv_timer_t *t)
{
    pool *p = t->data;
    uint64_t now = uv_hrtime();
    for (int k = 0; k < p->K; k++)
        for (int r = 0; r < p->ex[k].n_reps; r++)
            sweep_replica(&p->ex[k].reps[r], now);
    /* deadlines, and sends that failed; a failure may end calls and change the
     * list, so look again from the start after each (a rare path) */
    uint64_t limit = (uint64_t)p->cfg.call_timeout_ms * 1000000ull;
    for (int i = 0; i < p->nfl;) {
        int s = p->fl[i];
        msg *m = &p->msgs[s];
        if (m->send_err || !m->rep) {
            msg_failed(p, s, DDM_EUNAVAIL, "could not send the request");
        } else if (m->sent_ns + limit < now) { /* a retry just sent is later than now */
            char why[160];
            snprintf(why, sizeof why, "replica %s: no reply within %u ms", m->rep->url,
                     p->cfg.call_timeout_ms);
            m->rep->st.timeouts++;
            msg_failed(p, s, DDM_ETIMEDOUT, why);
        } else if (!moved_off_slow(p, s, now)) {
            i++;
            continue;
        }
        i = 0;
    }
    log_flush_suppressed();
}

/* ---- life cycle ------------------------------------------------------------------------ */

int pool_new(uv_loop_t *loop, const cluster *cl, const pool_config *cfg, pool **out,
             char *err, size_t errlen)
{
    pool *p = calloc(1, sizeof *p);
    if (!p)
        return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
    p->loop = loop;
    p->cfg = *cfg;
    p->K = cl->n_experts;
    p->free_msg = p->free_call = -1;
    p->suspect_ns = (uint64_t)(cfg->suspect_ms ? cfg->suspect_ms
                               : cfg->call_timeout_ms / 4 ? cfg->call_timeout_ms / 4 : 1) *
                    1000000ull;
    if (cfg->cluster_key_file) {
        int rc = hmac_key_load(cfg->cluster_key_file, &p->key, err, errlen);
        if (rc) {
            free(p);
            return rc;
        }
        p->has_key = 1;
    }
    p->ex = calloc((size_t)p->K, sizeof *p->ex);
    if (cfg->n_class_names > 0)
        p->class_names = calloc((size_t)cfg->n_class_names, sizeof *p->class_names);
    int rc = !p->ex || (cfg->n_class_names > 0 && !p->class_names) ? DDM_ENOMEM : 0;
    for (int i = 0; !rc && i < cfg->n_class_names; i++)
        if (!(p->class_names[i] = strdup(cfg->class_names[i])))
            rc = DDM_ENOMEM;
    if (!rc)
        rc = grow_msgs(p);
    if (rc) {
        if (p->class_names)
            for (int i = 0; i < cfg->n_class_names; i++)
                free(p->class_names[i]);
        free(p->class_names);
        free(p->ex);
        free(p->msgs);
        free(p->fl);
        free(p);
        return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
    }
    uv_timer_init(loop, &p->sweep);
    p->sweep.data = p;
    p->open_handles = 1; /* the sweep timer */
    for (int k = 0; k < p->K && !rc; k++) {
        expert *e = &p->ex[k];
        e->n_reps = cl->experts[k].n_replicas;
        for (int r = 0; r < e->n_reps && !rc; r++) {
            replica *rp = &e->reps[r];
            *rp = (replica){ .p = p, .k = k, .r = r, .state = REP_CONNECTING };
            log_limit_init(&rp->warn, 5, 1000);
            snprintf(rp->pin, sizeof rp->pin, "%s", cl->experts[k].sha256[r]);
            snprintf(rp->detail, sizeof rp->detail, "waiting for the handshake");
            rp->url = strdup(cl->experts[k].urls[r]);
            if (!rp->url)
                rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
            else
                rc = open_socket(rp, err, errlen);
        }
    }
    if (rc) {
        pool_close(p, NULL, NULL);
        return rc;
    }
    uv_timer_start(&p->sweep, on_sweep, 0, SWEEP_MS);
    if (p->has_key)
        log_info("cluster key from %s: every worker message is authenticated (HMAC-SHA256%s)",
                 cfg->cluster_key_file, sha256_hw_available() ? ", SHA extensions" : "");
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

int pool_queue_rows(const pool *p, int k)
{
    int best = -1;
    for (int r = 0; r < p->ex[k].n_reps; r++) {
        const replica *rp = &p->ex[k].reps[r];
        if (rp->state == REP_UP && !rp->stale && (best < 0 || rp->out_rows < best))
            best = rp->out_rows;
    }
    return best;
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
    *detail = rp->slow && rp->state == REP_UP ? rp->slow_detail : rp->detail;
}

void pool_get_replica_stats(const pool *p, int k, int r, pool_replica_stats *out)
{
    const replica *rp = &p->ex[k].reps[r];
    *out = rp->st;
    out->slow = rp->state == REP_UP && rp->slow != 0;
}

static void handle_closed(void *ud)
{
    pool *p = ud;
    if (--p->open_handles > 0 || !p->closing)
        return;
    /* every socket is gone: what is still pending fails now, after pool_close returned */
    for (int i = 0; i < p->cap_calls; i++)
        if (p->calls[i].in_use)
            call_finish(p, i, DDM_ECLOSED, "router shutting down");
    for (int k = 0; k < p->K; k++)
        for (int r = 0; r < p->ex[k].n_reps; r++) {
            log_limit_flush(&p->ex[k].reps[r].warn, 1);
            free(p->ex[k].reps[r].url);
        }
    for (int i = 0; i < p->cfg.n_class_names && p->class_names; i++)
        free(p->class_names[i]);
    void (*cb)(void *) = p->close_cb;
    void *cud = p->close_ud;
    free(p->class_names);
    free(p->msgs);
    free(p->fl);
    free(p->calls);
    free(p->labels);
    free(p->ex);
    free(p);
    if (cb)
        cb(cud);
}

static void timer_closed(uv_handle_t *h) { handle_closed(h->data); }

void pool_close(pool *p, void (*cb)(void *ud), void *ud)
{
    if (p->closing)
        return;
    p->closing = 1;
    p->close_cb = cb;
    p->close_ud = ud;
    for (int k = 0; k < p->K; k++)
        for (int r = 0; r < p->ex[k].n_reps; r++) {
            replica *rp = &p->ex[k].reps[r];
            if (rp->s) {
                nnuv_close(rp->s, handle_closed, p);
                rp->s = NULL;
            }
        }
    uv_close((uv_handle_t *)&p->sweep, timer_closed);
}
