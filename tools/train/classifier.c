/* classifier.c -- the clean-image classifier task (random shifts) and its use. */
#include "tools/train/tasks.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

typedef struct cls_ctx {
    const train_data *d;
    const train_opts *o;
    int side, channels, shift, K;
    int *target;   /* [B] class of each row */
} cls_ctx;

/* dst = src [side][side][ch] moved by (dx, dy) pixels. Where nothing moves
 * in: black (-1) for grey images, as digits and fashion have; the nearest
 * edge pixel for RGB, whose backgrounds may have any colour. */
static void shift_image(const float *src, int side, int ch, int dx, int dy, float *dst)
{
    for (int y = 0; y < side; y++) {
        int sy = y - dy;
        for (int x = 0; x < side; x++) {
            int sx = x - dx;
            int inside = sy >= 0 && sy < side && sx >= 0 && sx < side;
            if (ch == 1) {
                dst[y * side + x] = inside ? src[sy * side + sx] : -1.0f;
                continue;
            }
            int cy = sy < 0 ? 0 : sy >= side ? side - 1 : sy;
            int cx = sx < 0 ? 0 : sx >= side ? side - 1 : sx;
            for (int k = 0; k < ch; k++)
                dst[(y * side + x) * ch + k] = src[(cy * side + cx) * ch + k];
        }
    }
}

static void cls_batch(void *vctx, long step, int B, float *x, float *t, int *labels)
{
    cls_ctx *ctx = vctx;
    const train_data *d = ctx->d;
    const uint64_t seed = ctx->o->seed;
    const size_t D = (size_t)d->dim;
    const uint64_t base = (uint64_t)step * (uint64_t)B;
    const int span = 2 * ctx->shift + 1;
    for (int i = 0; i < B; i++) {
        uint64_t r = base + (uint64_t)i;
        int j = (int)(rng_uniform(seed, FIT_STREAM_INDEX, r) * d->n);
        if (j >= d->n)
            j = d->n - 1;
        int dx = (int)(rng_uniform(seed, FIT_STREAM_AUG, 2 * r) * span) - ctx->shift;
        int dy = (int)(rng_uniform(seed, FIT_STREAM_AUG, 2 * r + 1) * span) - ctx->shift;
        if (ctx->side * ctx->side * ctx->channels == d->dim)
            shift_image(d->x + (size_t)j * D, ctx->side, ctx->channels, dx, dy,
                        x + (size_t)i * D);
        else
            memcpy(x + (size_t)i * D, d->x + (size_t)j * D, D * sizeof *x);
        t[i] = 0.0f;
        labels[i] = -1;
        ctx->target[i] = d->y[j];
    }
}

static double cls_loss(void *vctx, int B, const float *out, float *dout)
{
    cls_ctx *ctx = vctx;
    return fit_xent(B, ctx->K, out, ctx->target, dout);
}

int classifier_train_net(const fit_net *net, float *params, float *avg, const train_data *d,
                         int side, int channels, int shift, const train_opts *o,
                         train_result *res, char *err, size_t errlen)
{
    if (d->n < 1 || !d->y || d->dim != net->in_dim) {
        snprintf(err, errlen, "%s: no data, no labels or dim %d != %d", o->tag, d->dim,
                 net->in_dim);
        return DDM_EINVAL;
    }
    for (int i = 0; i < d->n; i++) {
        if (d->y[i] < 0 || d->y[i] >= net->out_dim) {
            snprintf(err, errlen, "%s: class %d of sample %d is outside 0..%d", o->tag, d->y[i], i,
                     net->out_dim - 1);
            return DDM_ERANGE;
        }
    }
    cls_ctx ctx = { d, o, side, channels < 1 ? 1 : channels, shift < 0 ? 0 : shift, net->out_dim,
                    malloc((size_t)o->batch * sizeof(int)) };
    if (!ctx.target) {
        snprintf(err, errlen, "%s: out of memory", o->tag);
        return DDM_ENOMEM;
    }
    fit_task task = { &ctx, cls_batch, cls_loss };
    int rc = fit_run_net(net, params, avg, &task, o, res, err, errlen);
    free(ctx.target);
    return rc;
}

int classifier_train(const net_config *c, float *params, float *avg, const train_data *d,
                     int side, int channels, int shift, const train_opts *o, train_result *res,
                     char *err, size_t errlen)
{
    fit_net net;
    if (fit_net_mlp(c, o->batch > 0 ? o->batch : 1, &net)) {
        snprintf(err, errlen, "%s: out of memory for batch %d", o->tag, o->batch);
        return DDM_ENOMEM;
    }
    int rc = classifier_train_net(&net, params, avg, d, side, channels, shift, o, res, err,
                                  errlen);
    fit_net_free(&net);
    return rc;
}

void classifier_verdict(const float *logits, int n, int K, int *pred, float *conf)
{
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * K;
        int a = fit_argmax(l, K);
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp((double)(l[k] - l[a]));
        if (pred)
            pred[i] = a;
        if (conf)
            conf[i] = (float)(1.0 / sum);
    }
}

int classifier_predict(const net_config *c, const float *params, int n, const float *x,
                       int *pred, float *conf)
{
    enum { CH = 256 };
    const int K = c->out_dim;
    net_scratch *s = net_scratch_new(c, CH, 0);
    float *out = malloc((size_t)CH * K * sizeof *out);
    float *tz = calloc(CH, sizeof *tz);
    int rc = (!s || !out || !tz) ? DDM_ENOMEM : 0;
    net_weights w;
    net_bind(c, (float *)params, &w);
    for (int r0 = 0; r0 < n && !rc; r0 += CH) {
        int m = n - r0 < CH ? n - r0 : CH;
        rc = net_forward(c, &w, s, m, x + (size_t)r0 * c->in_dim, tz, NULL, out);
        if (!rc)
            classifier_verdict(out, m, K, pred ? pred + r0 : NULL, conf ? conf + r0 : NULL);
    }
    net_scratch_free(s);
    free(out);
    free(tz);
    return rc;
}

double classifier_eval(const net_config *c, const float *params, const train_data *d)
{
    int *pred = malloc((size_t)(d->n > 0 ? d->n : 1) * sizeof *pred);
    double acc = -1.0;
    if (pred && d->y && d->n > 0 && d->dim == c->in_dim &&
        classifier_predict(c, params, d->n, d->x, pred, NULL) == 0) {
        long hit = 0;
        for (int i = 0; i < d->n; i++)
            hit += pred[i] == d->y[i];
        acc = (double)hit / d->n;
    }
    free(pred);
    return acc;
}
