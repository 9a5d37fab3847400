/* metrics.h -- the worker's counters and histograms, rendered as Prometheus
 * text (exposition format 0.0.4) for GET /metrics.
 *
 * Updated only on the loop thread; no locking. */
#ifndef DDM_EXPERT_METRICS_H
#define DDM_EXPERT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define EMETRICS_MAX_BUCKETS 24

typedef struct emetrics_hist {
    int nb;                                  /* finite buckets */
    double le[EMETRICS_MAX_BUCKETS];         /* upper bounds, increasing */
    uint64_t counts[EMETRICS_MAX_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    uint64_t count;
    double sum;
} emetrics_hist;

/* Why a request got an error reply. */
typedef enum emetrics_reason {
    EM_ERR_DECODE = 0,   /* not a WorkerRequest */
    EM_ERR_INVALID,      /* failed validation (dim, sizes, t, labels, ...) */
    EM_ERR_BUSY,         /* queue full */
    EM_ERR_SHUTDOWN,     /* arrived while draining */
    EM_ERR_INTERNAL,     /* forward pass or reply failed */
    EM_ERR_COUNT
} emetrics_reason;

typedef struct emetrics {
    uint64_t denoise_requests, info_requests;
    uint64_t errors[EM_ERR_COUNT];
    uint64_t latents;            /* latents computed */
    uint64_t batches;            /* forward passes */
    uint64_t replies_unsent;     /* replies nanomsg refused */
    emetrics_hist batch_size;    /* latents per forward pass */
    emetrics_hist queue_s;       /* per request: arrival to start of its forward pass */
    emetrics_hist compute_s;     /* per forward pass */
    long queue_latents;          /* gauge: latents waiting */
    int computing;               /* gauge: 1 while a forward pass runs */
} emetrics;

/* Zeroes m and sets the bucket bounds (batch sizes: powers of two up to
 * max_batch; times: 50 us .. 10 s). */
void emetrics_init(emetrics *m, int max_batch);
void emetrics_observe(emetrics_hist *h, double v);

/* Static labels of the worker, shown on ddm_expert_info. */
typedef struct emetrics_info {
    int expert_id;
    const char *sha256;
    const char *dataset;
    const char *version;
    int max_batch;
} emetrics_info;

/* Renders m as Prometheus text into a malloc'd buffer (caller frees), its
 * length in *len. Returns NULL if out of memory. */
char *emetrics_render(const emetrics *m, const emetrics_info *info, size_t *len);

#endif
