/* pool.h -- the router's connections to its expert workers.
 *
 * Identity first: per replica, one raw REQ socket connected to that URL
 * alone carries both the Info handshake and the work, so the identity the
 * router checked is the identity of the pipe its work goes on. A replica
 * gets work only after a handshake on its current pipe passed every check of
 * worker protocol v1 (router/pool_check.h: protocol major, expert id, dim,
 * classes, shape, the weights hash pinned in the cluster file or trusted on
 * first use, and with a cluster key a MAC over a fresh challenge). nanomsg
 * reconnects a pipe silently when a worker dies and something else binds its
 * address; the pool notices (the socket's connection counters, read on every
 * reply and every sweep), stops using the replica, retries what was on it,
 * and asks the newcomer who it is before trusting it. Handshakes repeat every
 * probe interval as health checks: a replica that stops answering is down
 * until it answers again -- no restart needed.
 *
 * A call sends one expert's rows, split into messages of at most the
 * workers' max batch. The pool picks a replica per message itself (the live
 * one with the fewest rows outstanding), so replies are attributed to a
 * replica and a retry can go elsewhere. Every reply is checked: decodable,
 * for a message in flight on that replica, v of rows x dim floats, every one
 * finite, and with a cluster key a MAC chained to the request's. A bad reply
 * takes that replica out of rotation for a while (quarantine, logged with
 * its URL and the reason, rate-limited) and its messages go to another live
 * replica; with none left the call fails with DDM_EUNAVAIL naming that
 * expert -- never a garbage velocity, never another expert's fault. Every
 * message has a deadline; a message that times out or comes back with a
 * worker error is sent again until the attempts run out, to another live
 * replica whenever there is one (never the one that failed it while another
 * is live).
 *
 * A stopped worker (SIGSTOP, a stalled host) keeps its connection, so only
 * silence shows it. A replica is "slow" while a message on it has waited
 * suspect_ms (a quarter of the deadline by default; four times the expert's
 * mean message latency when that is longer) with no denoise reply from it
 * meanwhile, or after it missed a probe. While another live replica of the
 * expert is not slow, a slow one gets no new work, and what waits on it is
 * sent there at once (an attempt given up, unless it was the last) instead
 * of at its deadline -- until it answers again. So a stopped worker costs
 * its messages about suspect_ms, not the deadline, and not once per message
 * sent there before the probes mark it down.
 *
 * Steady state allocates nothing per call: calls and messages live in tables
 * reused through free lists, and a reply finds its message by id (the id
 * holds the table slot and a generation). All on the loop thread. */
#ifndef DDM_POOL_H
#define DDM_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "router/cluster.h"

typedef struct pool pool;

typedef struct pool_config {
    int dim;                 /* latent size every worker must serve */
    int n_experts;           /* K */
    int n_classes;           /* label classes (0: unconditional) */
    int height, width, channels;       /* the router model's image shape (default 28x28x1) */
    const char *const *class_names;    /* n_class_names names (copied), or NULL */
    int n_class_names;
    uint32_t call_timeout_ms;   /* per message attempt (default 2000) */
    int attempts;               /* sends per message before failing (default 3) */
    uint32_t probe_interval_ms; /* handshake / health check period (default 500) */
    uint32_t probe_timeout_ms;  /* a probe unanswered this long is a miss (default 1000) */
    int down_after;             /* misses before a replica is down (default 2) */
    int max_rows_per_msg;       /* cap on rows per message (default: workers' max batch) */
    uint32_t quarantine_ms;     /* a replica that sent a bad reply is out this long
                                   (default 10000), doubling while it keeps at it (to 5 min) */
    uint32_t suspect_ms;        /* a message unanswered this long makes its replica slow
                                   (above; 0 = default, call_timeout_ms / 4) */
    const char *cluster_key_file; /* HMAC key shared with the workers, NULL = none */
} pool_config;

void pool_config_default(pool_config *c);

/* Called once per pool_call when every row has its velocity in out (status
 * 0), or when the call failed: DDM_ETIMEDOUT (attempts exhausted on
 * deadlines), DDM_EUNAVAIL (no live replica left, e.g. all sent bad
 * replies), DDM_EPROTO (worker errors until the attempts ran out),
 * DDM_ECLOSED (pool closing). msg describes the failure and names expert k. */
typedef void (*pool_done_fn)(void *ud, int expert, int status, const char *msg);

/* Creates the pool and starts the handshakes with every replica of the
 * cluster (cl is copied; cfg too). Returns 0 and *out, or an error with a
 * message in err (e.g. an unreadable cluster key file). */
int pool_new(uv_loop_t *loop, const cluster *cl, const pool_config *cfg, pool **out,
             char *err, size_t errlen);

/* Names one call for pool_cancel (its table slot and a generation: an id
 * outlives its call harmlessly). */
typedef uint64_t pool_call_id;

/* Evaluates rows (x [rows][dim], t [rows], labels [rows] or NULL) on expert
 * k, writing velocities to out [rows][dim]. x, t, labels and out must stay
 * valid until done runs (or the call is cancelled). Returns 0 (done will run
 * exactly once, never from inside this call, unless the call is cancelled
 * first) and the call's id in *id (id may be NULL), or an error (done will not
 * run): DDM_EUNAVAIL (no live replica), DDM_EBUSY (too many messages in
 * flight), DDM_ENOMEM, DDM_EINVAL, DDM_ECLOSED. */
int pool_call(pool *p, int k, int rows, const float *x, const float *t, const int *labels,
              float *out, pool_done_fn done, void *ud, pool_call_id *id);

/* Drops a call whose answer is no longer wanted (a speculative call whose
 * experts the router did not select): its done will not run, and from this
 * call on the pool neither reads its x, t, labels nor writes its out (late
 * replies are ignored; a worker may still compute them). Returns 1, or 0 when
 * id names no call in progress (it finished, failed or was cancelled: done ran
 * or will not). Not while the pool closes (pool_close completes every call). */
int pool_cancel(pool *p, pool_call_id id);

/* Live replicas of expert k (identity checked on their current pipe). */
int pool_live_replicas(const pool *p, int k);
/* 1 if every expert has a live replica. */
int pool_ready(const pool *p);
/* Rows outstanding (sent, not answered) at the live replica of expert k that
 * the next message would go to (the least loaded), or -1 when k has no live
 * replica: how long a new row of k would queue (load-aware substitution). */
int pool_queue_rows(const pool *p, int k);

typedef struct pool_expert_stats {
    uint64_t calls, messages, rows, retries, failures;
    double latency_ms_sum;      /* over messages */
    uint64_t batch_rows_sum;    /* batch sizes the workers reported */
    uint64_t batch_reports;
    uint64_t bad_replies;       /* replies refused (undecodable, wrong length, not finite, MAC) */
    uint64_t cancelled;         /* calls dropped with pool_cancel */
} pool_expert_stats;
void pool_get_stats(const pool *p, int k, pool_expert_stats *out);
int pool_n_replicas(const pool *p, int k);

typedef struct pool_replica_stats {
    uint64_t messages;          /* attempts sent to it */
    uint64_t timeouts;          /* of which given up unanswered: past the deadline, or
                                   moved elsewhere while it was slow */
    uint64_t bad_replies;       /* replies refused; each one quarantined it */
    int slow;                   /* now getting no new work: an overdue message or a missed
                                   probe (pool.h, above) */
} pool_replica_stats;
/* Counters of replica r of expert k since the pool started. */
void pool_get_replica_stats(const pool *p, int k, int r, pool_replica_stats *out);
/* Replica r of expert k: url, state ("connecting", "up", "down", "refused",
 * "quarantined") and a detail line (why, or the weights it serves; for a
 * slow replica, why it gets no new work). */
void pool_replica_info(const pool *p, int k, int r, const char **url, const char **state,
                       const char **detail);

/* Stops the sweep, closes every socket and, once libuv has released them,
 * completes pending calls with DDM_ECLOSED, frees the pool and calls
 * cb(ud). Nothing is called back before pool_close returns. */
void pool_close(pool *p, void (*cb)(void *ud), void *ud);

#endif
