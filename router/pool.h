/* pool.h -- the router's connections to its expert workers.
 *
 * Per expert, one raw REQ socket carries DenoiseRequests; it is connected to
 * every replica of that expert that passed the handshake, and nanomsg spreads
 * requests over them. Per replica, a probe (a cooked REQ socket to that URL
 * alone) sends an InfoRequest every probe interval: a replica that answers
 * with the right expert id, dim, set size, image shape and class names is attached to the expert's
 * socket; one that answers wrongly is refused (and logged); one that stops
 * answering is detached until it answers again -- no restart needed.
 *
 * A call sends one expert's rows, split into messages of at most the
 * worker's max batch. Every message has a deadline; a message that times out
 * or comes back with an error is sent again (nanomsg picks a live replica)
 * until the attempts run out. All on the loop thread. */
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
    int height, width, channels;  /* image shape every worker must serve (0 = not checked) */
    int n_class_names;            /* 0 = the router's model names no classes */
    const char *const *class_names; /* [n_class_names], must outlive the pool */
    uint32_t call_timeout_ms;   /* per message attempt (default 2000) */
    int attempts;               /* sends per message before failing (default 3) */
    uint32_t probe_interval_ms; /* default 500 */
    uint32_t probe_timeout_ms;  /* a probe unanswered this long is a miss (default 1000) */
    int down_after;             /* misses before a replica is detached (default 2) */
    int max_rows_per_msg;       /* cap on rows per message (default: worker's max batch) */
} pool_config;

void pool_config_default(pool_config *c);

/* Called once per pool_call when every row has its velocity in out (status
 * 0), or when the call failed: DDM_ETIMEDOUT (attempts exhausted),
 * DDM_EUNAVAIL (no live replica), DDM_EPROTO (bad replies), DDM_ECLOSED
 * (pool closing). msg describes the failure. */
typedef void (*pool_done_fn)(void *ud, int expert, int status, const char *msg);

/* Creates the pool and starts probing every replica of the cluster. */
int pool_new(uv_loop_t *loop, const cluster *cl, const pool_config *cfg, pool **out,
             char *err, size_t errlen);

/* Evaluates rows (x [rows][dim], t [rows], labels [rows] or NULL) on expert
 * k, writing velocities to out [rows][dim]. x, t, labels and out must stay
 * valid until done runs. Returns 0 (done will run exactly once, never from
 * inside this call) or an error (done will not run). */
int pool_call(pool *p, int k, int rows, const float *x, const float *t, const int *labels,
              float *out, pool_done_fn done, void *ud);

/* Live replicas of expert k (attached and answering). */
int pool_live_replicas(const pool *p, int k);
/* 1 if every expert has a live replica. */
int pool_ready(const pool *p);

/* Appends a JSON array describing every expert and replica (state, url,
 * requests, errors, mean latency, batch sizes) to buf via the writer. */
typedef struct pool_expert_stats {
    uint64_t calls, messages, rows, retries, failures;
    double latency_ms_sum;      /* over messages */
    uint64_t batch_rows_sum;    /* batch sizes the workers reported */
    uint64_t batch_reports;
} pool_expert_stats;
void pool_get_stats(const pool *p, int k, pool_expert_stats *out);
int pool_n_replicas(const pool *p, int k);
/* Replica r of expert k: url and state ("up", "down", "refused", "connecting"). */
void pool_replica_info(const pool *p, int k, int r, const char **url, const char **state,
                       const char **detail);

/* Closes sockets and timers; pending calls complete with DDM_ECLOSED; then
 * frees the pool and calls cb(ud). */
void pool_close(pool *p, void (*cb)(void *ud), void *ud);

#endif
