/* worker.h -- ddm-expert: one expert's weights served over nanomsg.
 *
 * A raw REP socket (bound to every --listen URL) receives WorkerRequests
 * from any number of routers, many in flight at once. DenoiseRequests are
 * validated, queued, and stacked into one forward pass (dynamic batching,
 * see batcher.h) that runs on a libuv thread-pool thread while the loop
 * keeps receiving; each reply goes back to its own requester. InfoRequests
 * are answered at once. Optional Prometheus metrics over HTTP. With a cluster
 * key every message in both directions carries an HMAC (common/hmac.h).
 *
 * Everything here runs on one uv loop thread, except the forward pass. */
#ifndef DDM_EXPERT_WORKER_H
#define DDM_EXPERT_WORKER_H

#include <stddef.h>
#include <uv.h>

#include "common/model.h"

#define EXPERT_MAX_LISTEN 16

typedef struct expert_config {
    const char *weights;                     /* safetensors file of a denoiser */
    const char *listen[EXPERT_MAX_LISTEN];   /* nanomsg URLs to bind */
    int n_listen;
    int max_batch;       /* latents per request and per forward pass (256) */
    int max_delay_us;    /* how long the oldest request may wait for company (500; 0 = never) */
    long max_queue;      /* latents waiting before new requests are refused (0 = 16 x max_batch) */
    int threads;         /* OpenBLAS threads (1); 0 leaves OpenBLAS alone */
    int inline_rows;     /* passes of at most this many latents run on the loop thread (20) */
    const char *metrics; /* "host:port" serving GET /metrics, NULL = none */
    int linger_ms;       /* after draining, time nanomsg gets to write the last replies (200) */
    int handle_signals;  /* SIGTERM/SIGINT start a graceful stop */
    const char *cluster_key_file; /* HMAC key shared with the routers, NULL = none */
} expert_config;

/* Fills c with the defaults above (no weights, no listen URL). */
void expert_config_default(expert_config *c);

typedef struct expert_worker expert_worker;

/* Loads the weights (model_open), allocates every buffer, binds the socket
 * and starts serving on loop. Returns 0 and *out, or an error with a
 * one-line message in err (the bad weights file, an unusable URL, a busy
 * metrics port, ...). On failure the loop may have been run to release
 * handles. */
int expert_worker_new(uv_loop_t *loop, const expert_config *cfg, expert_worker **out, char *err,
                      size_t errlen);

/* Graceful stop: stop taking work (new denoise requests get an error reply),
 * finish and answer everything queued, wait linger_ms, close every handle.
 * uv_run on the loop returns once this is done. Idempotent. */
void expert_worker_stop(expert_worker *w);

/* Frees w; call after uv_run returned (after expert_worker_stop). */
void expert_worker_free(expert_worker *w);

/* The model served (owned by w). */
const model *expert_worker_model(const expert_worker *w);

/* TCP port of the metrics server, or a negative ddm_err when there is none. */
int expert_worker_metrics_port(const expert_worker *w);

#endif
