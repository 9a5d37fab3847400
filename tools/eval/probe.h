/* probe.h -- measurements along sampling trajectories, in-process.
 *
 * A probe pass samples n images with the same tick code as ddm-router
 * (tick_plan, ensemble_eval_tick, tick_finish), driving the ticks itself so
 * that it can look at every evaluation:
 *   velocity change   |v_i - v_{i-1}| / |v_{i-1}| of the combined velocity
 *                     between consecutive evaluations, mean over all;
 *   Lipschitz         at probed evaluations a clone of each trajectory is
 *                     evaluated in the same tick at x + eps * u (u a random
 *                     direction with |u| = sqrt(D), so eps is the RMS change
 *                     per coordinate), routing included; the estimate is
 *                     |v(x + eps u) - v(x)| / |eps u|;
 *   disagreement      at probed evaluations every expert k is asked for the
 *                     (guided) velocity v_k at the trajectory's point and
 *                     predicts x0_k = x_t - t v_k; the mean pairwise angle
 *                     (degrees) between the x0_k, all K experts, whatever the
 *                     strategy selected (velocities would be dominated by the
 *                     noise all experts share, see DESIGN.md);
 *   routing           mean weight per expert per evaluation (heat map);
 *   distance          with cluster centroids c_k: |x_t - (1 - t) c_k|,
 *                     |x0 - c_k| (x0 = x_t - t v, the combined prediction --
 *                     partly made by the selected experts themselves) and
 *                     |x_final - c_k| (the image the trajectory ends in):
 *                     where the selected experts rank by those distances and
 *                     how much weight lands outside the two nearest.
 * Probed evaluations are 0, every, 2 every, ... . Trajectories, noise and
 * seeds are those of gen_draw: the first n images of the same draw. */
#ifndef DDM_EVAL_PROBE_H
#define DDM_EVAL_PROBE_H

#include <stddef.h>

#include "router/local.h"
#include "tools/eval/gen.h"

#define PROBE_MAX_N 256

typedef struct probe_opts {
    int every;               /* probe every this many evaluations (>= 1) */
    int lipschitz;           /* finite-difference probes */
    float eps;               /* their RMS step per coordinate (e.g. 0.01) */
    int disagreement;        /* all experts' x0 at probed evaluations (K >= 2) */
    const float *centroids;  /* [K][D] cluster centroids, or NULL: no distances */
} probe_opts;

void probe_opts_default(probe_opts *o);

typedef struct probe_result {
    int n, evals, K, dim;
    int conditional;
    float *images;         /* [n][D] final samples, 8-bit rounded like gen_draw */
    int *labels;           /* [n] asked class, -1 unconditional */
    double rows;           /* expert rows per image, sampling only */
    double switches;       /* routing switches per trajectory */
    double vel_change;     /* mean relative step-to-step change */
    double lip_mean, lip_max;        /* NAN when not probed */
    double disagree_deg;             /* NAN when not measured (K < 2 or off) */
    float *disagree;                 /* [n] per-trajectory mean angle, or NULL */
    float *t_eval;                   /* [evals] time of each evaluation */
    double *weight;                  /* [evals][K] mean routing weight */
    /* distances (NULL / NAN without centroids); rank 1 = nearest */
    double *dist_xt, *dist_x0;       /* [evals][K] mean distances */
    double *nearest_x0;              /* [evals] share whose selected set is the |S| nearest (x0) */
    double *nearest_xt;              /* [evals] the same by x_t */
    double *top_nearest_x0;          /* [evals] share whose largest weight is on the nearest (x0) */
    double *top_nearest_xt;          /* [evals] the same by x_t */
    double *rank_x0;                 /* [evals] weight-averaged rank of the selection (x0) */
    double *far_w_x0;                /* [evals] weight outside the 2 nearest (x0) */
    double *far_w_xt;                /* [evals] the same by x_t */
    double *wdist_x0, *wdist_xt;     /* [evals] weight-averaged distance to the selected centroids */
    double *mindist_x0, *mindist_xt; /* [evals] distance to the nearest centroid */
    /* the same judged against the trajectory's final image (what was being drawn) */
    double *nearest_fin, *top_nearest_fin, *rank_fin, *far_w_fin;   /* [evals] */
} probe_result;

/* Runs a probe pass of n (1..PROBE_MAX_N) trajectories of spec sp on the
 * in-process set e (the monolith is a set of one). conditional: the n
 * trajectories are split into class blocks like gen_draw_classes (guidance
 * sp->guidance); else unconditional. Fills *r (free with probe_result_free).
 * Returns 0 or an error with a message. */
int probe_run(ensemble *e, const gen_spec *sp, int conditional, uint64_t run_seed, int n,
              const probe_opts *o, probe_result *r, char *err, size_t errlen);

void probe_result_free(probe_result *r);

/* Mean pairwise angle in degrees between the K rows of x [K][D] (K >= 2);
 * a zero row counts as 90 degrees from everything. Exposed for tests. */
double probe_mean_angle(const float *x, int K, int D);

/* Guided velocities of expert k of e for n rows x [n][D] at times t [n]
 * with labels [n] (-1 = null; NULL = all null): out [n][D] =
 * v(null) + g (v(label) - v(null)) for labelled rows, v(null) for the rest,
 * as the sampler combines them. tmp must hold n * D floats. Returns 0 or a
 * net_forward error. */
int probe_expert_velocity(ensemble *e, int k, const float *x, const float *t, const int *labels,
                          int n, float g, float *out, float *tmp);

#endif
