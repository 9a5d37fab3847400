/* local.h -- an expert set loaded in-process: sampling without any daemon.
 *
 * Used by ddm-eval and ddm-train, and as the reference the served images
 * are compared against: it runs the very same tick code as ddm-router, with
 * net_forward standing in for the nanomsg round trip. */
#ifndef DDM_LOCAL_H
#define DDM_LOCAL_H

#include <stddef.h>

#include "common/forkjoin.h"
#include "common/model.h"
#include "router/sampler.h"

typedef struct ensemble {
    int K;                 /* experts */
    int dim;
    int n_classes;         /* label classes of the experts (0 = unconditional) */
    const model_shape *shape; /* image shape and class names (the router's; all experts agree) */
    model *router;         /* router network, NULL for a single-model set */
    model **experts;       /* [K] */
    net_scratch **scratch; /* [K], for up to chunk rows */
    int chunk;             /* rows per expert forward call */
    tick *tk;
    int tick_cap;
    int threads;           /* ensemble_set_threads() (1 until set) */
} ensemble;

#define ENSEMBLE_MAX_THREADS FORKJOIN_MAX

/* Loads dir/router.safetensors and dir/expert-0..K-1.safetensors (K from
 * the router's out_dim). Checks that every expert has the same dim,
 * classes, image shape and class names as the router, and that expert-k's
 * metadata says expert_id k. NULL on error, the message naming the file. */
ensemble *ensemble_open(const char *dir, char *err, size_t errlen);
/* A "set" of one denoiser (the monolith): strategies reduce to expert:0. */
ensemble *ensemble_open_single(const char *path, char *err, size_t errlen);
void ensemble_close(ensemble *e);

/* Per-request statistics. */
typedef struct sample_stats {
    uint64_t rows;             /* expert rows evaluated, all images */
    uint64_t rows_by_expert[STRAT_MAX_EXPERTS];
    double switches;           /* mean routing switches per trajectory */
    double seconds;            /* wall time */
    /* where the wall time went, summed over ticks: the router network (tick_router_us),
     * the experts' forward passes (ensemble_eval_tick), and the rest of planning
     * (selection, grouping rows per expert) and finishing (combining, the ODE step) */
    double router_s, experts_s, plan_finish_s;
} sample_stats;

/* Samples p->n images into out [n][dim] (values of x at t = 0, not clamped).
 * trajs_out, if not NULL, receives the finished trajectories (caller frees
 * each with traj_free) -- e.g. for traces. Returns 0 or an error. */
int ensemble_sample(ensemble *e, const sample_params *p, float *out, sample_stats *st,
                    traj **trajs_out);

/* Runs one planned tick's expert rows in-process (net_forward per expert;
 * with threads > 1 the experts are shared out over that many threads, the
 * busiest first, each to the least loaded). */
int ensemble_eval_tick(ensemble *e, tick *tk);

/* Threads for the experts of a tick and for the router network's rows
 * (1..ENSEMBLE_MAX_THREADS). Returns 0 or DDM_EINVAL. */
int ensemble_set_threads(ensemble *e, int threads);

#endif
