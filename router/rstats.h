/* rstats.h -- routing statistics: how often each expert is selected, and with
 * what mean weight, per band of the diffusion time t.
 *
 * t in [0, 1] falls into RSTATS_BUCKETS equal bands (band b holds
 * [b/10, (b+1)/10), the last one also t = 1), so the label set of the metrics
 * is bounded by K x 10 whatever the requests. Fed one evaluation at a time on
 * the loop thread (the engine's evaluation observer); read by /metrics and by
 * a job's status document. */
#ifndef DDM_RSTATS_H
#define DDM_RSTATS_H

#include <stdint.h>

#include "common/strbuf.h"
#include "router/sampler.h"

#define RSTATS_BUCKETS 10

typedef struct rstats {
    int K;
    uint64_t sel[STRAT_MAX_EXPERTS][RSTATS_BUCKETS];   /* evaluations that selected k */
    double wsum[STRAT_MAX_EXPERTS][RSTATS_BUCKETS];    /* their weights, summed */
} rstats;

/* Zeroes r for K experts (1..STRAT_MAX_EXPERTS). */
void rstats_init(rstats *r, int K);
/* Band of time t (clamped to 0..RSTATS_BUCKETS-1). */
int rstats_bucket(float t);
/* Time t at which evaluation e (0-based) of a request with params p happens:
 * Euler evaluates step e at 1 - e/steps; Heun's predictor and corrector of
 * step e/2 at its start and end. */
float rstats_eval_time(const sample_params *p, int e);
/* Counts the evaluation tr has just completed (tr->evals - 1, routing tr->sel/w). */
void rstats_add_eval(rstats *r, const traj *tr);
/* Prometheus text: ddm_routing_selections_total{expert,t_bucket} and
 * ddm_routing_weight_total{expert,t_bucket} (mean weight = weight / selections). */
void rstats_prometheus(const rstats *r, strbuf *o);
/* JSON object {"t_buckets": [lower edges], "selections": [[per band] per expert],
 * "mean_weight": [[...] per expert]} (mean 0 where never selected). */
void rstats_json(const rstats *r, strbuf *o);

#endif
