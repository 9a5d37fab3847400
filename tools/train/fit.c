/* fit.c -- the shared training loop (see fit.h). */
#define _GNU_SOURCE /* sincosf */
#include "tools/train/fit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/rng.h"
#include "tools/train/adam.h"

void train_opts_default(train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 3000;
    o->batch = 128;
    o->lr = 1e-3f;
    o->lr_final = 0.02f;
    o->warmup = 200;
    o->ema = 0.997f;
    o->weight_decay = 0.0f;
    o->clip = 1.0f;
    o->seed = 1;
    o->tdist = T_UNIFORM;
    o->p_null = 0.1f;
    o->log_secs = 10.0;
    o->tag = "train";
}

void fit_normals(uint64_t seed, uint64_t stream, uint64_t block0, float *out, size_t n)
{
    const uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    const float scale = 1.0f / 16777216.0f; /* 24 bits -> [0, 1) */
    for (size_t i = 0; i < n; i += 4) {
        uint64_t b = block0 + i / 4;
        uint32_t ctr[4] = { (uint32_t)b, (uint32_t)(b >> 32), (uint32_t)stream,
                            (uint32_t)(stream >> 32) | 0x80000000u };
        uint32_t r[4];
        rng_philox(ctr, key, r);
        float z[4];
        for (int h = 0; h < 2; h++) {
            float u1 = ((float)(r[2 * h] >> 8) + 0.5f) * scale;  /* (0, 1) */
            float u2 = (float)(r[2 * h + 1] >> 8) * scale;
            float rad = sqrtf(-2.0f * logf(u1)), sn, cs;
            sincosf(6.2831853f * u2, &sn, &cs);
            z[2 * h] = rad * cs;
            z[2 * h + 1] = rad * sn;
        }
        size_t m = n - i < 4 ? n - i : 4;
        for (size_t k = 0; k < m; k++)
            out[i + k] = z[k];
    }
}

double fit_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

float fit_draw_t(t_dist dist, double u, float z, float mean)
{
    if (dist == T_LOGIT_NORMAL) {
        float t = 1.0f / (1.0f + expf(-(z + mean)));
        return t < 1e-5f ? 1e-5f : (t > 1.0f - 1e-5f ? 1.0f - 1e-5f : t);
    }
    return (float)u;
}

int fit_argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

double fit_xent(int B, int K, const float *logits, const int *y, float *dout)
{
    double loss = 0.0;
    for (int i = 0; i < B; i++) {
        const float *l = logits + (size_t)i * K;
        float *d = dout + (size_t)i * K;
        float mx = l[fit_argmax(l, K)];
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp((double)(l[k] - mx));
        double lse = mx + log(sum);
        loss += lse - l[y[i]];
        for (int k = 0; k < K; k++)
            d[k] = (float)(exp(l[k] - lse) / B);
        d[y[i]] -= 1.0f / (float)B;
    }
    return loss / B;
}

static void fmt_secs(double s, char *buf, size_t len)
{
    long v = (long)(s + 0.5);
    if (v >= 3600)
        snprintf(buf, len, "%ldh%02ldm", v / 3600, (v / 60) % 60);
    else if (v >= 60)
        snprintf(buf, len, "%ldm%02lds", v / 60, v % 60);
    else
        snprintf(buf, len, "%lds", v);
}

/* ---- the MLP as a fit_net ---------------------------------------------------------- */

typedef struct mlp_ctx {
    net_config c;
    net_scratch *s;
    net_weights w, g;
} mlp_ctx;

static void mlp_bind(void *vctx, float *params, float *grad)
{
    mlp_ctx *m = vctx;
    net_bind(&m->c, params, &m->w);
    net_bind(&m->c, grad, &m->g);
}

static int mlp_forward(void *vctx, int B, const float *x, const float *t, const int *labels,
                       float *out)
{
    mlp_ctx *m = vctx;
    return net_forward(&m->c, &m->w, m->s, B, x, t, m->c.n_classes > 0 ? labels : NULL, out);
}

static int mlp_backward(void *vctx, int B, const float *dout)
{
    mlp_ctx *m = vctx;
    return net_backward(&m->c, &m->w, &m->g, m->s, B, dout);
}

static void mlp_destroy(void *vctx)
{
    mlp_ctx *m = vctx;
    net_scratch_free(m->s);
    free(m);
}

int fit_net_mlp(const net_config *c, int max_batch, fit_net *out)
{
    memset(out, 0, sizeof *out);
    mlp_ctx *m = calloc(1, sizeof *m);
    if (!m)
        return DDM_ENOMEM;
    m->c = *c;
    m->s = net_scratch_new(c, max_batch, 1);
    if (!m->s) {
        free(m);
        return DDM_ENOMEM;
    }
    *out = (fit_net){ m, net_param_count(c), net_trainable_count(c), c->in_dim, c->out_dim,
                      mlp_bind, mlp_forward, mlp_backward, mlp_destroy };
    return 0;
}

void fit_net_free(fit_net *net)
{
    if (net->destroy)
        net->destroy(net->ctx);
    memset(net, 0, sizeof *net);
}

int fit_run(const net_config *c, float *params, float *avg, const fit_task *task,
            const train_opts *o, train_result *res, char *err, size_t errlen)
{
    fit_net net;
    if (fit_net_mlp(c, o->batch > 0 ? o->batch : 1, &net)) {
        snprintf(err, errlen, "%s: out of memory for batch %d", o->tag, o->batch);
        return DDM_ENOMEM;
    }
    int rc = fit_run_net(&net, params, avg, task, o, res, err, errlen);
    fit_net_free(&net);
    return rc;
}

/* ---- the loop --------------------------------------------------------------------- */

int fit_run_net(const fit_net *net, float *params, float *avg, const fit_task *task,
                const train_opts *o, train_result *res, char *err, size_t errlen)
{
    const int B = o->batch;
    const size_t np = net->n_params, nt = net->n_train;
    const size_t D = (size_t)net->in_dim, O = (size_t)net->out_dim;
    if (o->steps < 1 || B < 1 || (o->ema > 0.0f && !avg)) {
        snprintf(err, errlen, "%s: need steps >= 1, batch >= 1 and an EMA buffer", o->tag);
        return DDM_EINVAL;
    }
    float *gradbuf = calloc(np, sizeof *gradbuf);
    float *x = malloc((size_t)B * D * sizeof *x), *t = malloc((size_t)B * sizeof *t);
    float *out = malloc((size_t)B * O * sizeof *out), *dout = malloc((size_t)B * O * sizeof *dout);
    int *lab = malloc((size_t)B * sizeof *lab);
    adam opt = { 0 };
    int rc = 0;
    if (!gradbuf || !x || !t || !out || !dout || !lab || adam_init(&opt, nt, o->weight_decay)) {
        snprintf(err, errlen, "%s: out of memory for batch %d", o->tag, B);
        rc = DDM_ENOMEM;
        goto out;
    }
    net->bind(net->ctx, params, gradbuf);
    if (avg)
        memcpy(avg, params, np * sizeof *avg);

    long first_n = o->steps / 100 > 0 ? o->steps / 100 : 1;
    long last_from = o->steps - (o->steps / 10 > 0 ? o->steps / 10 : 1);
    double first_sum = 0.0, last_sum = 0.0, win_sum = 0.0;
    long last_cnt = 0, win_cnt = 0;
    double t0 = fit_now(), t_log = t0;
    for (long step = 0; step < o->steps; step++) {
        task->batch(task->ctx, step, B, x, t, lab);
        rc = net->forward(net->ctx, B, x, t, lab, out);
        if (rc) {
            snprintf(err, errlen, "%s: forward failed at step %ld: %s", o->tag, step,
                     ddm_strerror(rc));
            goto out;
        }
        double loss = task->loss(task->ctx, B, out, dout);
        if (!isfinite(loss)) {
            snprintf(err, errlen, "%s: loss is %g at step %ld; lower --lr", o->tag, loss, step);
            rc = DDM_ERANGE;
            goto out;
        }
        memset(gradbuf, 0, nt * sizeof *gradbuf);
        rc = net->backward(net->ctx, B, dout);
        if (rc) {
            snprintf(err, errlen, "%s: backward failed: %s", o->tag, ddm_strerror(rc));
            goto out;
        }
        grad_clip(gradbuf, nt, o->clip);
        adam_step_ema(&opt, params, gradbuf, lr_at(step, o->steps, o->warmup, o->lr, o->lr_final),
                      o->ema > 0.0f ? avg : NULL, o->ema, step);

        if (step < first_n)
            first_sum += loss;
        if (step >= last_from) {
            last_sum += loss;
            last_cnt++;
        }
        win_sum += loss;
        win_cnt++;
        double now = fit_now();
        if (o->log_secs > 0 && (now - t_log >= o->log_secs || step == o->steps - 1)) {
            double rate = (double)(step + 1) * B / (now - t0);
            char eta[32];
            fmt_secs((double)(o->steps - step - 1) * B / rate, eta, sizeof eta);
            fprintf(stderr, "%s: step %ld/%ld loss %.4f lr %.2e %.0f samples/s ETA %s\n", o->tag,
                    step + 1, o->steps, win_sum / win_cnt,
                    lr_at(step, o->steps, o->warmup, o->lr, o->lr_final), rate, eta);
            t_log = now;
            win_sum = 0.0;
            win_cnt = 0;
        }
    }
    if (avg && o->ema <= 0.0f)
        memcpy(avg, params, np * sizeof *avg);
    if (res) {
        res->seconds = fit_now() - t0;
        res->samples_per_s = (double)o->steps * B / res->seconds;
        res->first_loss = first_sum / first_n;
        res->final_loss = last_cnt ? last_sum / last_cnt : 0.0;
    }
out:
    adam_free(&opt);
    free(gradbuf);
    free(x);
    free(t);
    free(out);
    free(dout);
    free(lab);
    return rc;
}
