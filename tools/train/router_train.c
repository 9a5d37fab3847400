/* router_train.c -- the router task: noisy image, t, optional label -> cluster. */
#include "tools/train/tasks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

typedef struct router_ctx {
    const train_data *d;
    const train_opts *o;
    int *target;   /* [B] cluster of each row */
    int K;
} router_ctx;

/* x_t of image j with noise eps (D floats) into x. */
static void noisy(const float *x0, const float *eps, float t, size_t D, float *x)
{
    for (size_t k = 0; k < D; k++)
        x[k] = (1.0f - t) * x0[k] + t * eps[k];
}

static void router_batch(void *vctx, long step, int B, float *x, float *t, int *labels)
{
    router_ctx *ctx = vctx;
    const train_data *d = ctx->d;
    const uint64_t seed = ctx->o->seed;
    const size_t D = (size_t)d->dim;
    const uint64_t base = (uint64_t)step * (uint64_t)B;
    fit_normals(seed, FIT_STREAM_NOISE, base * ((D + 3) / 4), x, (size_t)B * D);
    for (int i = 0; i < B; i++) {
        uint64_t r = base + (uint64_t)i;
        int j = (int)(rng_uniform(seed, FIT_STREAM_INDEX, r) * d->n);
        if (j >= d->n)
            j = d->n - 1;
        float ti = fit_draw_t(ctx->o->tdist, rng_uniform(seed, FIT_STREAM_TIME, r),
                              rng_normal(seed, FIT_STREAM_TIME, r), ctx->o->t_mean);
        t[i] = ti;
        int drop = rng_uniform(seed, FIT_STREAM_DROP, r) < ctx->o->p_null;
        labels[i] = (d->y && !drop) ? d->y[j] : -1;
        ctx->target[i] = d->z[j];
        float *xi = x + (size_t)i * D;
        noisy(d->x + (size_t)j * D, xi, ti, D, xi);
    }
}

static double router_loss(void *vctx, int B, const float *out, float *dout)
{
    router_ctx *ctx = vctx;
    return fit_xent(B, ctx->K, out, ctx->target, dout);
}

int router_train(const net_config *c, float *params, float *avg, const train_data *d,
                 const train_opts *o, train_result *res, char *err, size_t errlen)
{
    if (d->n < 1 || !d->z || d->dim != c->in_dim) {
        snprintf(err, errlen, "%s: no data, no cluster targets or dim %d != %d", o->tag, d->dim,
                 c->in_dim);
        return DDM_EINVAL;
    }
    for (int i = 0; i < d->n; i++) {
        if (d->z[i] < 0 || d->z[i] >= c->out_dim) {
            snprintf(err, errlen, "%s: cluster %d of sample %d is outside 0..%d", o->tag, d->z[i],
                     i, c->out_dim - 1);
            return DDM_ERANGE;
        }
    }
    router_ctx ctx = { d, o, malloc((size_t)o->batch * sizeof(int)), c->out_dim };
    if (!ctx.target) {
        snprintf(err, errlen, "%s: out of memory", o->tag);
        return DDM_ENOMEM;
    }
    fit_task task = { &ctx, router_batch, router_loss };
    int rc = fit_run(c, params, avg, &task, o, res, err, errlen);
    free(ctx.target);
    return rc;
}

double router_eval(const net_config *c, const float *params, const train_data *d, float t,
                   int with_label, uint64_t seed)
{
    enum { CH = 256 };
    const size_t D = (size_t)d->dim, K = (size_t)c->out_dim;
    net_scratch *s = net_scratch_new(c, CH, 0);
    float *x = malloc(CH * D * sizeof *x), *out = malloc(CH * K * sizeof *out);
    float *tt = malloc(CH * sizeof *tt);
    int *lab = malloc(CH * sizeof *lab);
    double acc = -1.0;
    long hit = 0;
    net_weights w;
    if (!s || !x || !out || !tt || !lab || d->dim != c->in_dim || !d->z || d->n < 1)
        goto out;
    net_bind(c, (float *)params, &w);
    for (int r0 = 0; r0 < d->n; r0 += CH) {
        int m = d->n - r0 < CH ? d->n - r0 : CH;
        rng_normal_fill(seed, FIT_STREAM_EVAL, (uint64_t)r0 * D, x, (size_t)m * D);
        for (int i = 0; i < m; i++) {
            int j = r0 + i;
            tt[i] = t;
            lab[i] = with_label && d->y ? d->y[j] : -1;
            float *xi = x + (size_t)i * D;
            noisy(d->x + (size_t)j * D, xi, t, D, xi);
        }
        if (net_forward(c, &w, s, m, x, tt, c->n_classes > 0 ? lab : NULL, out))
            goto out;
        for (int i = 0; i < m; i++)
            hit += fit_argmax(out + (size_t)i * K, (int)K) == d->z[r0 + i];
    }
    acc = (double)hit / d->n;
out:
    net_scratch_free(s);
    free(x);
    free(out);
    free(tt);
    free(lab);
    return acc;
}
