/* sampler.h -- flow-matching trajectories and the tick that advances many at once.
 *
 * Rectified flow: x_t = (1 - t) x0 + t eps; v = eps - x0; sampling integrates
 * dx/dt = v from t = 1 (noise) to t = 0 on the grid t_i = 1 - i / steps.
 * One "evaluation" of the combined velocity at (x, t) is
 *     v = sum_k w_k [v_k(x, t, null) + g (v_k(x, t, label) - v_k(x, t, null))]
 * with the experts and weights w chosen by the routing strategy from the
 * router network's logits r(x, t, label); without a label (or with g = 1)
 * each expert gets one row. Euler takes one evaluation per step, Heun two.
 *
 * A tick advances a batch of trajectories -- possibly of different requests
 * at different steps -- by one evaluation, in three phases:
 *   tick_plan()    router network over the batch, expert selection, and the
 *                  rows (x, t, label) each selected expert must evaluate;
 *   (caller)       fills tick_out(k) with expert k's velocities for its rows:
 *                  in-process with net_forward (local.c) or over nanomsg;
 *   tick_finish()  combines the experts' rows per trajectory and takes the
 *                  ODE step.
 * The same code runs in ddm-router and in-process (ddm-eval, ddm-train), so
 * served and offline images are the same computation. */
#ifndef DDM_SAMPLER_H
#define DDM_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "common/model.h"
#include "router/strategy.h"

#define SAMPLE_MAX_N 256
#define SAMPLE_MAX_STEPS 1000
#define SAMPLE_PRIORITY_MIN (-100)
#define SAMPLE_PRIORITY_MAX 100
/* rng stream of the "sample" strategy's draws for image i: this + i */
#define SAMPLE_STREAM_ROUTING (1ull << 32)
/* rng stream of image i's routing noise (top-k's drawn set): this + i */
#define SAMPLE_STREAM_GUMBEL (2ull << 32)

typedef enum sampler_kind { SAMPLER_EULER = 0, SAMPLER_HEUN } sampler_kind;

typedef struct sample_params {
    int n;                /* images, 1..SAMPLE_MAX_N */
    int steps;            /* 1..SAMPLE_MAX_STEPS */
    uint64_t seed;        /* noise of image i is rng stream i of this seed */
    strategy strat;
    int label;            /* class, or -1 for unconditional */
    float guidance;       /* classifier-free guidance scale; 1 = none */
    sampler_kind sampler;
    int trace;            /* record selected experts and weights per evaluation */
    int priority;         /* scheduling: higher first, SAMPLE_PRIORITY_MIN..MAX (default 0;
                           * see engine.h) */
    int substitute;       /* load-aware substitution: a selected expert the tick marks
                           * unusable (tick_set_usable) is replaced by the next-best one */
} sample_params;

/* Defaults: n 1, steps 50, top-2, unconditional, guidance 1, euler. */
void sample_params_default(sample_params *p, int K);
/* Range checks against the model (n_classes 0 = no labels), strategy
 * parameters included (strategy_check): the one validation of a request.
 * Returns 0 or DDM_EINVAL with a message naming the field and its allowed range
 * ("field \"n\" = 300 is out of range: allowed 1..256"). */
int sample_params_check(const sample_params *p, int n_classes, char *err, size_t errlen);
/* The allowed range of an integer field ("n", "steps", "label", "priority",
 * "preview_every") as text ("1..256"), the one the checks name; "" for other
 * fields. */
const char *sample_field_range(const char *field, int n_classes, char *buf, size_t len);
const char *sampler_name(sampler_kind k);
/* "euler" / "heun" -> kind; returns 0 or DDM_EINVAL. */
int sampler_parse(const char *s, sampler_kind *out);
/* The routing noise of image `image` of request p: K standard Gumbel draws
 * -log(-log(u_k)), u_k from rng stream SAMPLE_STREAM_GUMBEL + image of
 * p->seed (u_k in (0, 1), so every value is finite), the same at every
 * evaluation of the trajectory: top-k's draw (router/strategy.h). Served and
 * in-process trajectories of the same request draw the same. */
void sample_route_noise(const sample_params *p, int image, int K, float *noise);
/* Evaluations per image: steps (euler) or 2 * steps (heun). */
int sample_evals(const sample_params *p);
/* Expert rows one evaluation of one image costs at most: the strategy's
 * experts (strategy_experts_bound), twice with guidance != 1 and a label
 * (conditional and null rows). */
int sample_rows_per_eval(const sample_params *p, int K);
/* A request's cost in expert evaluations (rows), an upper bound:
 * n x evaluations (steps, x2 for heun) x sample_rows_per_eval. */
uint64_t sample_cost(const sample_params *p, int K);
/* "256 images x 500 steps x 2 (heun) x 8 experts (full) x 2 (guidance with a
 * label)": how sample_cost came about, into buf. */
void sample_cost_explain(const sample_params *p, int K, char *buf, size_t len);

/* One evaluation's routing, kept when tracing. */
typedef struct trace_entry {
    uint16_t step;
    uint8_t stage;
    uint8_t n_sel;
    float t;
    uint8_t sel[STRAT_MAX_EXPERTS];
    float w[STRAT_MAX_EXPERTS];
    uint8_t n_sub;                      /* substitutions in this evaluation */
    uint8_t sub_orig[STRAT_MAX_EXPERTS]; /* the experts the strategy chose that were unusable */
    uint8_t sub_new[STRAT_MAX_EXPERTS];  /* what stood in for each (TRACE_DROPPED: nothing) */
} trace_entry;

#define TRACE_DROPPED 0xff

/* One image's trajectory. Created by traj_new, advanced only by ticks. */
typedef struct traj {
    const sample_params *p;   /* not owned; must outlive the trajectory */
    int image;                /* index within its request (noise stream) */
    int dim;
    float *x;                 /* [D] state at t_step */
    float *xe;                /* [D] where the current evaluation happens */
    float *v1;                /* [D] Heun: velocity of the predictor stage */
    float *v;                 /* [D] combined velocity of the last evaluation */
    int step;                 /* steps completed */
    int stage;                /* Heun: 0 predictor, 1 corrector */
    int evals;                /* evaluations completed */
    int done;                 /* reached t = 0: x is the image */
    int n_sel;                /* experts of the current evaluation */
    int sel[STRAT_MAX_EXPERTS];
    float w[STRAT_MAX_EXPERTS];
    int n_sub;                /* of those, substitutes (load-aware substitution): */
    int sub_orig[STRAT_MAX_EXPERTS]; /* the expert replaced */
    int sub_new[STRAT_MAX_EXPERTS];  /* and its substitute (-1: dropped) */
    uint64_t substitutions;   /* substitutions over all evaluations */
    int redo;                 /* times in a row its evaluation was to be done again (engine) */
    uint64_t sel_mask_prev;   /* selected set of the previous evaluation */
    float route_noise[STRAT_MAX_EXPERTS]; /* sample_route_noise of this image: top-k's draw */
    int switches;             /* evaluations whose set differed from the one before */
    uint64_t rows;            /* expert rows evaluated for this image */
    uint32_t rows_by_expert[STRAT_MAX_EXPERTS];
    trace_entry *trace;       /* [sample_evals] when p->trace, else NULL */
    void *owner;              /* free for the caller (e.g. its request) */
} traj;

/* Allocates trajectory `image` of request p with its initial noise
 * x = N(0, I) from rng stream `image` of p->seed. Returns NULL on OOM. */
traj *traj_new(const sample_params *p, int image, int dim);
void traj_free(traj *tr);
/* Time of the current evaluation. */
float traj_time(const traj *tr);

typedef struct tick tick;

/* A tick for up to max_trajs trajectories of a K-expert set of dimension
 * dim. router: the router network (used for strategies that read it; may be
 * NULL when none will). Allocates all buffers once. NULL on error (err set). */
tick *tick_new(int K, int dim, int max_trajs, const model *router, char *err, size_t errlen);
void tick_free(tick *tk);
int tick_capacity(const tick *tk);
/* Splits the router network's rows over `threads` threads (1..16; a tick
 * starts with 1). Returns 0, or DDM_EINVAL (bad count or out of memory)
 * leaving it as it was. */
int tick_set_router_threads(tick *tk, int threads);

/* Phase 1: routing and grouping for trajs[0..n) (none done, n <= capacity).
 * Returns 0 or an error (e.g. DDM_ERANGE for too many). */
int tick_plan(tick *tk, traj **trajs, int n);
/* Rows planned for expert k: returns the count and points x ([rows][D]),
 * t ([rows]) and labels ([rows], -1 null) at the tick's buffers. */
int tick_rows(const tick *tk, int k, const float **x, const float **t, const int **labels);
/* The K experts of a planned tick, most rows first (ties in index order),
 * into order[K]: the order to start calls in when they share cores. */
void tick_experts_by_rows(const tick *tk, int *order);
/* Where the caller writes expert k's velocities, [rows][D]. */
float *tick_out(tick *tk, int k);
/* Phase 3: combines and steps every planned trajectory (but those tick_skip
 * named: they stay at the evaluation they were planned for). */
void tick_finish(tick *tk);
/* Router-network time of the last plan, in microseconds. */
double tick_router_us(const tick *tk);
/* Between tick_plan and tick_finish: trajectory i of the planned batch is not
 * advanced (its evaluation is to be done again, e.g. an expert failed). */
void tick_skip(tick *tk, int i);

/* Load-aware substitution: before tick_plan, which experts the trajectories
 * of requests with `substitute` may use (usable[K], 1 = yes; copied). Until
 * set, or with NULL, every expert is usable. */
void tick_set_usable(tick *tk, const unsigned char *usable);

/* ---- speculative dispatch ----------------------------------------------------------
 * Routing changes slowly from one evaluation to the next, so a trajectory's
 * next latent can go to the experts of its previous evaluation while the
 * router network decides. tick_speculate, before tick_plan over the same
 * batch, lays out those rows per expert in speculation buffers of their own
 * (for the caller to send while the plan runs). tick_plan then takes every
 * selected (trajectory, expert) pair that was speculated from the speculation
 * (a hit) and plans rows only for the others (the difference, in tick_rows as
 * usual); tick_finish reads each pair's velocities from where they came. The
 * rows, and so the images, are exactly those of planning without it. */

/* Speculates for trajs[0..n), the batch the next tick_plan gets (same
 * trajectories, same order): for each trajectory evaluated before, the rows of
 * its current evaluation point (x, t, label; and the null-label row with
 * guidance, as tick_plan makes them) for every expert its last evaluation
 * selected. Returns the rows laid out (0: nothing to speculate). */
int tick_speculate(tick *tk, traj **trajs, int n);
/* Expert k's speculative rows (as tick_rows) and where their velocities go. */
int tick_spec_rows(const tick *tk, int k, const float **x, const float **t,
                   const int **labels);
float *tick_spec_out(tick *tk, int k);
/* Between tick_speculate and tick_plan: expert k's speculative rows will not
 * be answered (they could not be sent); the plan treats them as never made. */
void tick_spec_withdraw(tick *tk, int k);
/* After tick_plan: rows of expert k's speculation the plan uses (0: none,
 * its answer is not needed). */
int tick_spec_used(const tick *tk, int k);

typedef struct tick_spec_stats {
    int evals_hit;     /* speculated evaluations whose every selected expert was speculated */
    int evals_miss;    /* speculated evaluations that needed rows of another expert */
    int rows_hit;      /* rows taken from the speculation */
    int rows_miss;     /* rows of speculated evaluations planned after all */
    int rows_wasted;   /* speculative rows the plan did not use */
} tick_spec_stats;
/* What the last tick_plan made of the speculation before it (all 0 without). */
void tick_spec_get_stats(const tick *tk, tick_spec_stats *st);

#endif
