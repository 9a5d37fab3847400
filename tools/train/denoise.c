/* denoise.c -- the rectified-flow denoiser task (experts and monolith). */
#include "tools/train/tasks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"
#include "tools/train/gauss.h"

int denoiser_init(const net_config *c, float *params, const train_data *d, uint64_t seed,
                  float var_floor, char *err, size_t errlen)
{
    if (net_config_check(c, err, errlen))
        return DDM_EINVAL;
    if (c->out_dim != c->in_dim || d->dim != c->in_dim || d->n < 1) {
        snprintf(err, errlen, "denoiser: data of dim %d (n %d) for a net of in %d out %d", d->dim,
                 d->n, c->in_dim, c->out_dim);
        return DDM_EINVAL;
    }
    net_init(c, params, seed);
    if (c->gauss_rank == 0)
        return 0;
    net_weights w;
    net_bind(c, params, &w);
    return gauss_fit(d->x, d->n, d->dim, c->gauss_rank, var_floor, w.g_mu, w.g_u, w.g_lam,
                     w.g_sig2, err, errlen);
}

typedef struct denoise_ctx {
    const train_data *d;
    const train_opts *o;
    float *target;   /* [B][D] eps - x0 of the current batch */
} denoise_ctx;

static void denoise_batch(void *vctx, long step, int B, float *x, float *t, int *labels)
{
    denoise_ctx *ctx = vctx;
    const train_data *d = ctx->d;
    const uint64_t seed = ctx->o->seed;
    const size_t D = (size_t)d->dim;
    const uint64_t base = (uint64_t)step * (uint64_t)B;
    /* eps first, into target; then target = eps - x0 and x = (1 - t) x0 + t eps */
    fit_normals(seed, FIT_STREAM_NOISE, base * ((D + 3) / 4), ctx->target, (size_t)B * D);
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
        const float *x0 = d->x + (size_t)j * D;
        float *xi = x + (size_t)i * D, *vi = ctx->target + (size_t)i * D;
        for (size_t k = 0; k < D; k++) {
            float e = vi[k];
            xi[k] = (1.0f - ti) * x0[k] + ti * e;
            vi[k] = e - x0[k];
        }
    }
}

static double denoise_loss(void *vctx, int B, const float *out, float *dout)
{
    denoise_ctx *ctx = vctx;
    const size_t n = (size_t)B * (size_t)ctx->d->dim;
    const float scale = 2.0f / (float)n;
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        float e = out[i] - ctx->target[i];
        sum += (double)e * e;
        dout[i] = scale * e;
    }
    return sum / (double)n;
}

int denoiser_train(const net_config *c, float *params, float *avg, const train_data *d,
                   const train_opts *o, train_result *res, char *err, size_t errlen)
{
    if (d->n < 1 || d->dim != c->in_dim || c->out_dim != c->in_dim) {
        snprintf(err, errlen, "%s: no data, or data dim %d != net dim %d", o->tag, d->dim,
                 c->in_dim);
        return DDM_EINVAL;
    }
    denoise_ctx ctx = { d, o, malloc((size_t)o->batch * d->dim * sizeof(float)) };
    if (!ctx.target) {
        snprintf(err, errlen, "%s: out of memory", o->tag);
        return DDM_ENOMEM;
    }
    fit_task task = { &ctx, denoise_batch, denoise_loss };
    int rc = fit_run(c, params, avg, &task, o, res, err, errlen);
    free(ctx.target);
    return rc;
}

double denoiser_eval(const net_config *c, const float *params, const train_data *d, int draws,
                     uint64_t seed)
{
    enum { CH = 256 };
    const size_t D = (size_t)d->dim;
    net_scratch *s = net_scratch_new(c, CH, 0);
    float *x = malloc(CH * D * sizeof *x), *v = malloc(CH * D * sizeof *v);
    float *out = malloc(CH * D * sizeof *out), *t = malloc(CH * sizeof *t);
    int *lab = malloc(CH * sizeof *lab);
    double sum = -1.0;
    net_weights w;
    if (!s || !x || !v || !out || !t || !lab || d->dim != c->in_dim)
        goto out;
    net_bind(c, (float *)params, &w);
    sum = 0.0;
    long total = (long)d->n * draws;
    for (long r0 = 0; r0 < total; r0 += CH) {
        int m = total - r0 < CH ? (int)(total - r0) : CH;
        rng_normal_fill(seed, FIT_STREAM_EVAL, (uint64_t)r0 * D, v, (size_t)m * D);
        for (int i = 0; i < m; i++) {
            long r = r0 + i;
            int j = (int)(r % d->n);
            float ti = (float)rng_uniform(seed, FIT_STREAM_TIME, (uint64_t)r);
            t[i] = ti;
            lab[i] = d->y ? d->y[j] : -1;
            const float *x0 = d->x + (size_t)j * D;
            for (size_t k = 0; k < D; k++) {
                float e = v[(size_t)i * D + k];
                x[(size_t)i * D + k] = (1.0f - ti) * x0[k] + ti * e;
                v[(size_t)i * D + k] = e - x0[k];
            }
        }
        if (net_forward(c, &w, s, m, x, t, c->n_classes > 0 ? lab : NULL, out)) {
            sum = -1.0;
            goto out;
        }
        for (size_t k = 0; k < (size_t)m * D; k++) {
            double e = out[k] - v[k];
            sum += e * e;
        }
    }
    sum /= (double)total * (double)D;
out:
    net_scratch_free(s);
    free(x);
    free(v);
    free(out);
    free(t);
    free(lab);
    return sum;
}
