/* local.c -- in-process expert sets (see local.h). */
#include "router/local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/forkjoin.h"

#define LOCAL_CHUNK 256
#define LOCAL_TICK_CAP 256

static int finish_open(ensemble *e, char *err, size_t errlen)
{
    e->chunk = LOCAL_CHUNK;
    e->threads = 1;
    e->scratch = calloc((size_t)e->K, sizeof *e->scratch);
    if (!e->scratch)
        goto oom;
    for (int k = 0; k < e->K; k++) {
        e->scratch[k] = net_scratch_new(&e->experts[k]->cfg, e->chunk, 0);
        if (!e->scratch[k])
            goto oom;
    }
    e->tick_cap = LOCAL_TICK_CAP;
    e->tk = tick_new(e->K, e->dim, e->tick_cap, e->router, err, errlen);
    return e->tk ? 0 : DDM_ENOMEM;
oom:
    snprintf(err, errlen, "out of memory loading the expert set");
    return DDM_ENOMEM;
}

ensemble *ensemble_open(const char *dir, char *err, size_t errlen)
{
    char path[4096];
    ensemble *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(path, sizeof path, "%s/router.safetensors", dir);
    e->router = model_open(path, err, errlen);
    if (!e->router)
        goto fail;
    if (e->router->kind != MODEL_ROUTER) {
        snprintf(err, errlen, "%s is a %s network, not a router", path,
                 model_kind_name(e->router->kind));
        goto fail;
    }
    e->K = e->router->cfg.out_dim;
    e->dim = e->router->cfg.in_dim;
    e->shape = &e->router->shape;
    if (e->K > STRAT_MAX_EXPERTS) {
        snprintf(err, errlen, "%s routes over %d experts; at most %d are supported", path, e->K,
                 STRAT_MAX_EXPERTS);
        goto fail;
    }
    e->experts = calloc((size_t)e->K, sizeof *e->experts);
    if (!e->experts)
        goto fail;
    for (int k = 0; k < e->K; k++) {
        snprintf(path, sizeof path, "%s/expert-%d.safetensors", dir, k);
        model *m = model_open(path, err, errlen);
        if (!m)
            goto fail;
        e->experts[k] = m;
        if (m->kind != MODEL_DENOISER || m->cfg.in_dim != e->dim || m->expert_id != k) {
            snprintf(err, errlen,
                     "%s: expected the denoiser of expert %d with dim %d, found %s expert_id %d dim %d",
                     path, k, e->dim, model_kind_name(m->kind), m->expert_id, m->cfg.in_dim);
            goto fail;
        }
        if (k > 0 && m->cfg.n_classes != e->n_classes) {
            snprintf(err, errlen, "%s has %d classes, expert-0 has %d", path, m->cfg.n_classes,
                     e->n_classes);
            goto fail;
        }
        if (!model_shape_equal(&m->shape, &e->router->shape)) {
            char a[32], b[32];
            snprintf(err, errlen, "%s: its images (%s, %d class names) differ from "
                     "%s/router.safetensors's (%s, %d class names): the set must come from one "
                     "training run", path, model_shape_str(&m->shape, a, sizeof a),
                     m->shape.n_class_names, dir, model_shape_str(&e->router->shape, b, sizeof b),
                     e->router->shape.n_class_names);
            goto fail;
        }
        e->n_classes = m->cfg.n_classes;
    }
    if (finish_open(e, err, errlen))
        goto fail;
    return e;
fail:
    ensemble_close(e);
    return NULL;
}

ensemble *ensemble_open_single(const char *path, char *err, size_t errlen)
{
    ensemble *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->K = 1;
    e->experts = calloc(1, sizeof *e->experts);
    if (!e->experts || !(e->experts[0] = model_open(path, err, errlen)))
        goto fail;
    if (e->experts[0]->kind != MODEL_DENOISER) {
        snprintf(err, errlen, "%s is a %s network, not a denoiser", path,
                 model_kind_name(e->experts[0]->kind));
        goto fail;
    }
    e->dim = e->experts[0]->cfg.in_dim;
    e->n_classes = e->experts[0]->cfg.n_classes;
    e->shape = &e->experts[0]->shape;
    if (finish_open(e, err, errlen))
        goto fail;
    return e;
fail:
    ensemble_close(e);
    return NULL;
}

void ensemble_close(ensemble *e)
{
    if (!e)
        return;
    tick_free(e->tk);
    for (int k = 0; k < e->K; k++) {
        if (e->scratch)
            net_scratch_free(e->scratch[k]);
        if (e->experts)
            model_close(e->experts[k]);
    }
    free(e->scratch);
    free(e->experts);
    model_close(e->router);
    free(e);
}

/* Expert k's rows of a planned tick. */
static int eval_expert(ensemble *e, tick *tk, int k)
{
    const float *x, *t;
    const int *lab;
    int rows = tick_rows(tk, k, &x, &t, &lab);
    float *out = tick_out(tk, k);
    const model *m = e->experts[k];
    size_t D = (size_t)e->dim;
    for (int r0 = 0; r0 < rows; r0 += e->chunk) {
        int nr = rows - r0 < e->chunk ? rows - r0 : e->chunk;
        int rc = net_forward(&m->cfg, &m->w, e->scratch[k], nr, x + (size_t)r0 * D, t + r0,
                             m->cfg.n_classes > 0 ? lab + r0 : NULL, out + (size_t)r0 * D);
        if (rc)
            return rc;
    }
    return 0;
}

typedef struct lane {
    ensemble *e;
    tick *tk;
    int experts[STRAT_MAX_EXPERTS], n, rows, rc;
} lane;

static void *run_lane(void *arg)
{
    lane *l = arg;
    for (int i = 0; i < l->n && !l->rc; i++)
        l->rc = eval_expert(l->e, l->tk, l->experts[i]);
    return NULL;
}

int ensemble_eval_tick(ensemble *e, tick *tk)
{
    int lanes = e->threads;
    if (lanes > e->K)
        lanes = e->K;
    /* experts by rows, largest first, each to the lane with the fewest rows
     * (one lane: all of them, on this thread) */
    lane ln[ENSEMBLE_MAX_THREADS];
    memset(ln, 0, (size_t)lanes * sizeof ln[0]);
    int order[STRAT_MAX_EXPERTS];
    tick_experts_by_rows(tk, order);
    for (int i = 0; i < e->K; i++) {
        int k = order[i], best = 0;
        for (int l = 1; l < lanes; l++)
            if (ln[l].rows < ln[best].rows)
                best = l;
        ln[best].experts[ln[best].n++] = k;
        ln[best].rows += tick_rows(tk, k, NULL, NULL, NULL);
    }
    for (int l = 0; l < lanes; l++) {
        ln[l].e = e;
        ln[l].tk = tk;
    }
    forkjoin_run(lanes, run_lane, ln, sizeof ln[0]);
    int rc = 0;
    for (int l = 0; l < lanes && !rc; l++)
        rc = ln[l].rc;
    return rc;
}

int ensemble_set_threads(ensemble *e, int threads)
{
    if (threads < 1 || threads > ENSEMBLE_MAX_THREADS)
        return DDM_EINVAL;
    int rc = tick_set_router_threads(e->tk, threads);
    if (!rc)
        e->threads = threads;
    return rc;
}

/* Seconds on the monotonic clock since *t0. */
static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) / 1e9;
}

int ensemble_sample(ensemble *e, const sample_params *p, float *out, sample_stats *st,
                    traj **trajs_out)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    traj **tr = calloc((size_t)p->n, sizeof *tr);
    int rc = tr ? 0 : DDM_ENOMEM;
    for (int i = 0; i < p->n && !rc; i++)
        if (!(tr[i] = traj_new(p, i, e->dim)))
            rc = DDM_ENOMEM;
    /* all images advance together; chunks of tick capacity */
    int evals = sample_evals(p);
    double router_s = 0, experts_s = 0, ticks_s = 0;
    for (int ev = 0; ev < evals && !rc; ev++) {
        for (int i0 = 0; i0 < p->n && !rc; i0 += e->tick_cap) {
            int n = p->n - i0 < e->tick_cap ? p->n - i0 : e->tick_cap;
            double c0 = seconds_since(&t0);
            rc = tick_plan(e->tk, tr + i0, n);
            router_s += tick_router_us(e->tk) / 1e6;
            double c1 = seconds_since(&t0);
            if (!rc)
                rc = ensemble_eval_tick(e, e->tk);
            experts_s += seconds_since(&t0) - c1;
            if (!rc)
                tick_finish(e->tk);
            ticks_s += seconds_since(&t0) - c0;
        }
    }
    if (st) {
        memset(st, 0, sizeof *st);
        st->router_s = router_s;
        st->experts_s = experts_s;
        st->plan_finish_s = ticks_s - router_s - experts_s;
    }
    for (int i = 0; i < p->n && !rc; i++) {
        memcpy(out + (size_t)i * e->dim, tr[i]->x, (size_t)e->dim * sizeof(float));
        if (st) {
            st->rows += tr[i]->rows;
            st->switches += tr[i]->switches;
            for (int k = 0; k < e->K; k++)
                st->rows_by_expert[k] += tr[i]->rows_by_expert[k];
        }
    }
    if (st && p->n > 0)
        st->switches /= p->n;
    if (st)
        st->seconds = seconds_since(&t0);
    for (int i = 0; i < p->n && tr; i++) {
        if (trajs_out && !rc)
            trajs_out[i] = tr[i];
        else
            traj_free(tr[i]);
    }
    free(tr);
    return rc;
}
