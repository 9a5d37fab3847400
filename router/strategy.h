/* strategy.h -- routing strategies: which experts to call and with what weights.
 *
 * Given the router network's K logits for one latent, a strategy picks a set
 * of experts and weights that sum to 1 (see the table in DESIGN.md). The
 * probabilities are softmax(logits / temperature) for every strategy that
 * reads the router (temperature 1 by default; below 1 sharpens, above 1
 * flattens: full at a high temperature is the uniform committee):
 *   full         softmax over all K
 *   top-k        the k largest probabilities, renormalised ("top-2";
 *                "top-2:greedy" is accepted as the same)
 *   top-k:drawn  k experts drawn for the trajectory from p: the k largest
 *                of log p_i + g_i, weighted p_i e^(g_i) renormalised, with
 *                g_i standard Gumbel noise fixed for the whole trajectory
 *                (router/sampler.h). At t = 1, where p is the clusters'
 *                prior, the largest weight lands on expert i with
 *                probability p_i -- trajectories spread over the clusters as
 *                the data does -- instead of always on the largest ones;
 *                once the router is sure, the draw is the k most probable.
 *   threshold    every expert with p >= tau, renormalised (argmax if none)
 *   sample       one expert drawn from softmax(logits / temperature)
 *   nucleus      smallest set with cumulative p >= top_p, renormalised
 *   uniform      1/K each (ignores the router)
 *   expert:N     expert N alone (ignores the router)
 * Ties are broken towards the lower expert index, so selection is
 * deterministic. Selected experts are returned in increasing index order. */
#ifndef DDM_STRATEGY_H
#define DDM_STRATEGY_H

#include <stddef.h>

#define STRAT_MAX_EXPERTS 64

typedef enum strat_kind {
    STRAT_TOPK = 0,
    STRAT_FULL,
    STRAT_THRESHOLD,
    STRAT_SAMPLE,
    STRAT_NUCLEUS,
    STRAT_UNIFORM,
    STRAT_EXPERT,
} strat_kind;

typedef struct strategy {
    strat_kind kind;
    int k;              /* top-k: k; expert:N: N */
    int drawn;          /* top-k: the set drawn per trajectory ("top-k:drawn"); 0: the k most
                         * probable */
    float threshold;    /* threshold: tau (default 0.05); nucleus: top_p (default 0.9) */
    float temperature;  /* softmax temperature of the router's probabilities (default 1) */
} strategy;

/* Parses "top-2", "top-2:drawn" ("top-2:greedy" = "top-2"), "full", "threshold", "sample", "nucleus",
 * "uniform", "expert:3" for a set of K experts. threshold/temperature may be NaN for
 * "use the default". Returns 0, or DDM_EINVAL with a message naming the
 * allowed values in err. */
int strategy_parse(const char *name, int K, float threshold, float temperature,
                   strategy *out, char *err, size_t errlen);

/* Range checks of the strategy's parameters: threshold in (0, 1] for
 * threshold and nucleus, temperature in 0.01..100. Returns 0, or DDM_EINVAL with
 * a message naming the field ("field \"threshold\" = 5 is out of range: ..."). */
int strategy_check(const strategy *s, char *err, size_t errlen);

/* Canonical name ("top-2", "expert:3", ...) into buf. */
void strategy_name(const strategy *s, char *buf, size_t len);

/* Experts the strategy calls per evaluation at most: k for top-k, K for full,
 * uniform, threshold and nucleus (their count varies: K bounds it), 1 for
 * sample and expert:N. */
int strategy_experts_bound(const strategy *s, int K);

/* 1 if the strategy reads the router network's output. */
int strategy_uses_router(const strategy *s);

/* Selects experts for one latent. logits: K router outputs (may be NULL when
 * !strategy_uses_router). u: a uniform draw in (0, 1), used by "sample".
 * noise: the trajectory's K Gumbel values for top-k:drawn
 * (sample_route_noise), or NULL, which makes top-k:drawn the plain top-k;
 * every other strategy ignores it. Writes up to K
 * indices (increasing) into idx and weights into w; returns how many. Never
 * fails for a strategy that strategy_parse accepted. */
int strategy_select(const strategy *s, const float *logits, int K, double u, const float *noise,
                    int *idx, float *w);

/* Load-aware substitution: in the selection idx/w (*n experts, increasing),
 * every expert that usable[] marks 0 is replaced by the next-best usable
 * expert in the router's ranking (the weights strategy_select ranks by: the
 * softmax of logits / T, or for top-k:drawn that with the image's noise, so
 * pass the same noise; ties to the lower index)
 * that is not selected yet; when there is none (full, uniform, or every
 * usable expert already selected) it is dropped. Weights are then those of
 * the strategy for the new set: the router's probabilities renormalised over
 * it (full, top-k, threshold, nucleus), 1 (sample, expert:N), or equal
 * (uniform). Without logits (NULL: no router network was run) the ranking
 * is the index order and the weights equal. Writes each replaced expert to
 * orig[] and what stands in for it to subst[] (-1: dropped), and returns how
 * many were replaced; when nothing usable would remain, changes nothing and
 * returns 0 (the caller fails as without substitution). */
int strategy_substitute(const strategy *s, const float *logits, const float *noise, int K,
                        const unsigned char *usable, int *idx, float *w, int *n, int *orig,
                        int *subst);

/* Softmax of logits (length K) at temperature temp into p. */
void strategy_softmax(const float *logits, int K, float temp, float *p);

#endif
