/* loadgen.h -- closed-loop HTTP load generator behind `ddm-client bench`.
 *
 * C threads, each with its own keep-alive connection (httpc), send the same
 * request back to back until the duration has passed or the request budget is
 * spent; a thread sends its next request only when the previous one was
 * answered. Every request's latency is kept, so percentiles are exact. A
 * response counts as good when its status is 200 and its body is not empty;
 * everything else is counted by HTTP status, transport failures by error code.
 * The run is bounded: the duration, plus at most one request timeout. */
#ifndef DDM_CLIENT_LOADGEN_H
#define DDM_CLIENT_LOADGEN_H

#include <stddef.h>
#include <stdint.h>

#define LOADGEN_MAX_CONNECTIONS 1024
#define LOADGEN_MAX_KINDS 32        /* distinct failure kinds kept */

typedef struct loadgen_config {
    const char *hostport;       /* "host:port" */
    const char *method, *path;  /* "POST", "/v1/samples" */
    const void *body;           /* sent as is with every request (may be NULL) */
    size_t body_len;
    const char *content_type;   /* header values, may be NULL */
    const char *accept;
    int connections;            /* threads = connections, 1..LOADGEN_MAX_CONNECTIONS */
    long duration_ms;           /* stop sending after this long (> 0) */
    long max_requests;          /* stop after this many requests in total (0 = no limit) */
    int timeout_ms;             /* deadline of one request (connect included) */
    /* called from a worker thread about every second with the running totals
     * (may be NULL); must be thread-safe */
    void (*progress)(void *ud, double elapsed_s, uint64_t done, uint64_t failed);
    void *progress_ud;
} loadgen_config;

/* One kind of failure: an HTTP status (> 0) or a transport error (a ddm_err /
 * -errno, < 0), how often it happened and the first message seen. */
typedef struct loadgen_failure {
    int code;
    uint64_t count;
    char first_message[160];
} loadgen_failure;

typedef struct loadgen_result {
    uint64_t requests;          /* answered or failed */
    uint64_t ok;
    uint64_t failed;
    double elapsed_s;           /* first send to last answer */
    double mean_ms, p50_ms, p90_ms, p99_ms, max_ms, min_ms; /* latency of good requests */
    uint64_t bytes_received;    /* bodies of good responses */
    int n_failures;
    loadgen_failure failures[LOADGEN_MAX_KINDS]; /* sorted by code; the rest lumped in the last */
} loadgen_result;

/* Runs the load and fills *res. Returns 0 when the run happened (whatever the
 * failure count), or an error before any request with a message in err (bad
 * configuration, address, out of memory, threads). */
int loadgen_run(const loadgen_config *cfg, loadgen_result *res, char *err, size_t errlen);

#endif
