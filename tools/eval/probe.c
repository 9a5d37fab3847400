/* probe.c -- measurements along sampling trajectories (see probe.h). */
#include "tools/eval/probe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

/* rng stream of the Lipschitz directions of image i: this + i */
#define PROBE_STREAM (3ull << 32)

void probe_opts_default(probe_opts *o)
{
    memset(o, 0, sizeof *o);
    o->every = 5;
    o->lipschitz = 1;
    o->eps = 0.01f;
    o->disagreement = 1;
}

double probe_mean_angle(const float *x, int K, int D)
{
    double sum = 0;
    int pairs = 0;
    for (int a = 0; a < K; a++) {
        for (int b = a + 1; b < K; b++) {
            const float *p = x + (size_t)a * D, *q = x + (size_t)b * D;
            double pq = 0, pp = 0, qq = 0;
            for (int d = 0; d < D; d++) {
                pq += (double)p[d] * q[d];
                pp += (double)p[d] * p[d];
                qq += (double)q[d] * q[d];
            }
            double c = (pp > 0 && qq > 0) ? pq / sqrt(pp * qq) : 0.0;
            c = c > 1 ? 1 : (c < -1 ? -1 : c);
            sum += acos(c) * (180.0 / M_PI);
            pairs++;
        }
    }
    return pairs ? sum / pairs : NAN;
}

int probe_expert_velocity(ensemble *e, int k, const float *x, const float *t, const int *labels,
                          int n, float g, float *out, float *tmp)
{
    const model *m = e->experts[k];
    const size_t D = (size_t)e->dim;
    int cond = 0;
    for (int i = 0; labels && i < n; i++)
        cond |= labels[i] >= 0;
    int with_labels = cond && m->cfg.n_classes > 0;
    for (int r0 = 0; r0 < n; r0 += e->chunk) {
        int nr = n - r0 < e->chunk ? n - r0 : e->chunk;
        int rc = net_forward(&m->cfg, &m->w, e->scratch[k], nr, x + r0 * D, t + r0,
                             with_labels ? labels + r0 : NULL, out + r0 * D);
        if (!rc && with_labels && g != 1.0f)
            rc = net_forward(&m->cfg, &m->w, e->scratch[k], nr, x + r0 * D, t + r0, NULL,
                             tmp + r0 * D);
        if (rc)
            return rc;
    }
    if (with_labels && g != 1.0f) {
        for (int i = 0; i < n; i++) {
            if (labels[i] < 0)
                continue;
            float *o = out + i * D;
            const float *vn = tmp + i * D;
            for (size_t d = 0; d < D; d++)
                o[d] = vn[d] + g * (o[d] - vn[d]);
        }
    }
    return 0;
}

void probe_result_free(probe_result *r)
{
    free(r->images);
    free(r->labels);
    free(r->disagree);
    free(r->t_eval);
    free(r->weight);
    free(r->dist_xt);
    free(r->dist_x0);
    free(r->nearest_x0);
    free(r->nearest_xt);
    free(r->top_nearest_x0);
    free(r->top_nearest_xt);
    free(r->rank_x0);
    free(r->far_w_x0);
    free(r->far_w_xt);
    free(r->wdist_x0);
    free(r->wdist_xt);
    free(r->mindist_x0);
    free(r->mindist_xt);
    free(r->nearest_fin);
    free(r->top_nearest_fin);
    free(r->rank_fin);
    free(r->far_w_fin);
    memset(r, 0, sizeof *r);
}

/* Scratch of one pass. */
typedef struct pwork {
    int n, K, D, P;
    sample_params *ps;   /* [P] one per label block */
    traj **tr;           /* [n] */
    traj **cl;           /* [n] Lipschitz clones */
    traj **list;         /* [2n] what a tick plans */
    tick *tk;
    float *xsave;        /* [n][D] points of the current evaluation */
    float *vprev;        /* [n][D] */
    float *tv;           /* [n] */
    int *lab;            /* [n] */
    float *vk;           /* [K][n][D] experts' velocities (disagreement) */
    float *tmp;          /* [n][D] */
    float *x0;           /* [K][D] */
    double *dis_sum;     /* [n] */
    float *wsel;         /* [n][evals][K] routing weights (distances only) */
} pwork;

static void pwork_free(pwork *w)
{
    for (int i = 0; i < w->n; i++) {
        if (w->tr)
            traj_free(w->tr[i]);
        if (w->cl)
            traj_free(w->cl[i]);
    }
    free(w->tr);
    free(w->cl);
    free(w->list);
    free(w->ps);
    tick_free(w->tk);
    free(w->xsave);
    free(w->vprev);
    free(w->tv);
    free(w->lab);
    free(w->vk);
    free(w->tmp);
    free(w->x0);
    free(w->dis_sum);
    free(w->wsel);
}

static int alloc_result(probe_result *r, int n, int evals, int K, int D, int dist)
{
    r->images = malloc((size_t)n * D * sizeof *r->images);
    r->labels = malloc((size_t)n * sizeof *r->labels);
    r->t_eval = calloc((size_t)evals, sizeof *r->t_eval);
    r->weight = calloc((size_t)evals * K, sizeof *r->weight);
    int bad = !r->images || !r->labels || !r->t_eval || !r->weight;
    if (dist) {
        r->dist_xt = calloc((size_t)evals * K, sizeof(double));
        r->dist_x0 = calloc((size_t)evals * K, sizeof(double));
        r->nearest_x0 = calloc((size_t)evals, sizeof(double));
        r->nearest_xt = calloc((size_t)evals, sizeof(double));
        r->top_nearest_x0 = calloc((size_t)evals, sizeof(double));
        r->top_nearest_xt = calloc((size_t)evals, sizeof(double));
        bad |= !r->top_nearest_xt;
        r->rank_x0 = calloc((size_t)evals, sizeof(double));
        r->far_w_x0 = calloc((size_t)evals, sizeof(double));
        r->far_w_xt = calloc((size_t)evals, sizeof(double));
        r->wdist_x0 = calloc((size_t)evals, sizeof(double));
        r->wdist_xt = calloc((size_t)evals, sizeof(double));
        r->mindist_x0 = calloc((size_t)evals, sizeof(double));
        r->mindist_xt = calloc((size_t)evals, sizeof(double));
        r->nearest_fin = calloc((size_t)evals, sizeof(double));
        r->top_nearest_fin = calloc((size_t)evals, sizeof(double));
        r->rank_fin = calloc((size_t)evals, sizeof(double));
        r->far_w_fin = calloc((size_t)evals, sizeof(double));
        bad |= !r->wdist_x0 || !r->wdist_xt || !r->mindist_x0 || !r->mindist_xt ||
               !r->nearest_fin || !r->top_nearest_fin || !r->rank_fin || !r->far_w_fin;
        bad |= !r->dist_xt || !r->dist_x0 || !r->nearest_x0 || !r->nearest_xt ||
               !r->top_nearest_x0 || !r->rank_x0 || !r->far_w_x0 || !r->far_w_xt;
    }
    return bad ? DDM_ENOMEM : 0;
}

/* rank[k] = 1 + position of expert k when sorted by dist ascending (ties: lower index). */
static void ranks(const double *dist, int K, int *rank)
{
    for (int k = 0; k < K; k++) {
        int r = 1;
        for (int j = 0; j < K; j++)
            if (dist[j] < dist[k] || (dist[j] == dist[k] && j < k))
                r++;
        rank[k] = r;
    }
}

/* Distance bookkeeping of trajectory tr at evaluation ev (point xs, combined v). */
static void account_distance(probe_result *r, const probe_opts *o, const traj *tr, int ev,
                             const float *xs, float t, float *x0)
{
    const int K = r->K, D = r->dim;
    double dxt[STRAT_MAX_EXPERTS], dx0[STRAT_MAX_EXPERTS];
    int rk0[STRAT_MAX_EXPERTS], rkt[STRAT_MAX_EXPERTS];
    for (int d = 0; d < D; d++)
        x0[d] = xs[d] - t * tr->v[d];
    for (int k = 0; k < K; k++) {
        const float *c = o->centroids + (size_t)k * D;
        double a = 0, b = 0;
        for (int d = 0; d < D; d++) {
            double u = xs[d] - (1.0 - t) * c[d], v = x0[d] - c[d];
            a += u * u;
            b += v * v;
        }
        dxt[k] = sqrt(a);
        dx0[k] = sqrt(b);
        r->dist_xt[(size_t)ev * K + k] += dxt[k];
        r->dist_x0[(size_t)ev * K + k] += dx0[k];
    }
    ranks(dx0, K, rk0);
    ranks(dxt, K, rkt);
    int near0 = 1, neart = 1, best = 0;
    double wr = 0, far0 = 0, fart = 0, wd0 = 0, wdt = 0;
    for (int j = 0; j < tr->n_sel; j++) {
        int k = tr->sel[j];
        near0 &= rk0[k] <= tr->n_sel;
        neart &= rkt[k] <= tr->n_sel;
        if (tr->w[j] > tr->w[best])
            best = j;
        wr += tr->w[j] * rk0[k];
        far0 += rk0[k] > 2 ? tr->w[j] : 0.0;
        fart += rkt[k] > 2 ? tr->w[j] : 0.0;
        wd0 += tr->w[j] * dx0[k];
        wdt += tr->w[j] * dxt[k];
    }
    double m0 = dx0[0], mt = dxt[0];
    for (int k = 1; k < K; k++) {
        m0 = dx0[k] < m0 ? dx0[k] : m0;
        mt = dxt[k] < mt ? dxt[k] : mt;
    }
    r->wdist_x0[ev] += wd0;
    r->wdist_xt[ev] += wdt;
    r->mindist_x0[ev] += m0;
    r->mindist_xt[ev] += mt;
    r->nearest_x0[ev] += near0;
    r->nearest_xt[ev] += neart;
    r->top_nearest_x0[ev] += tr->n_sel > 0 && rk0[tr->sel[best]] == 1;
    r->top_nearest_xt[ev] += tr->n_sel > 0 && rkt[tr->sel[best]] == 1;
    r->rank_x0[ev] += wr;
    r->far_w_x0[ev] += far0;
    r->far_w_xt[ev] += fart;
}

/* Judges every evaluation's selection against the final images. */
static void account_final(probe_result *r, const probe_opts *o, const float *wsel,
                          traj *const *tr)
{
    const int K = r->K, D = r->dim;
    for (int i = 0; i < r->n; i++) {
        double d[STRAT_MAX_EXPERTS];
        int rk[STRAT_MAX_EXPERTS];
        const float *x = tr[i]->x;
        for (int k = 0; k < K; k++) {
            const float *c = o->centroids + (size_t)k * D;
            double s = 0;
            for (int j = 0; j < D; j++)
                s += ((double)x[j] - c[j]) * ((double)x[j] - c[j]);
            d[k] = s;
        }
        ranks(d, K, rk);
        for (int ev = 0; ev < r->evals; ev++) {
            const float *w = wsel + ((size_t)i * r->evals + ev) * K;
            int nsel = 0, near = 1, best = -1;
            double wr = 0, far = 0;
            for (int k = 0; k < K; k++)
                nsel += w[k] > 0;
            for (int k = 0; k < K; k++) {
                if (!(w[k] > 0))
                    continue;
                near &= rk[k] <= nsel;
                if (best < 0 || w[k] > w[best])
                    best = k;
                wr += w[k] * rk[k];
                far += rk[k] > 2 ? w[k] : 0.0;
            }
            r->nearest_fin[ev] += (double)near / r->n;
            r->top_nearest_fin[ev] += (best >= 0 && rk[best] == 1) ? 1.0 / r->n : 0.0;
            r->rank_fin[ev] += wr / r->n;
            r->far_w_fin[ev] += far / r->n;
        }
    }
}

static void clone_into(traj *c, const traj *tr, float eps, float *u)
{
    const int D = tr->dim;
    c->p = tr->p;
    c->image = tr->image;
    memcpy(c->x, tr->x, (size_t)D * sizeof(float));
    memcpy(c->v1, tr->v1, (size_t)D * sizeof(float));
    c->step = tr->step;
    c->stage = tr->stage;
    c->evals = tr->evals;
    c->done = 0;
    c->sel_mask_prev = tr->sel_mask_prev;
    rng_normal_fill(tr->p->seed, PROBE_STREAM + (uint64_t)tr->image, (uint64_t)tr->evals * D, u,
                    (size_t)D);
    double nn = 0;
    for (int d = 0; d < D; d++)
        nn += (double)u[d] * u[d];
    float s = nn > 0 ? (float)(eps * sqrt((double)D / nn)) : 0.0f;
    for (int d = 0; d < D; d++)
        c->xe[d] = tr->xe[d] + s * u[d];
}

static double norm_diff(const float *a, const float *b, int D)
{
    double s = 0;
    for (int d = 0; d < D; d++) {
        double e = (double)a[d] - b[d];
        s += e * e;
    }
    return sqrt(s);
}

static double norm(const float *a, int D)
{
    double s = 0;
    for (int d = 0; d < D; d++)
        s += (double)a[d] * a[d];
    return sqrt(s);
}

int probe_run(ensemble *e, const gen_spec *sp, int conditional, uint64_t run_seed, int n,
              const probe_opts *o, probe_result *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    if (n < 1 || n > PROBE_MAX_N || o->every < 1 || !(o->eps > 0)) {
        snprintf(err, errlen, "probe: n = %d (allowed 1..%d), every = %d, eps = %g", n,
                 PROBE_MAX_N, o->every, o->eps);
        return DDM_EINVAL;
    }
    if (conditional && e->n_classes < 1) {
        snprintf(err, errlen, "probe: the set is unconditional; class-conditional probes need "
                 "labelled experts");
        return DDM_EINVAL;
    }
    pwork w = { 0 };
    w.n = n;
    w.K = e->K;
    w.D = e->dim;
    w.P = conditional ? e->n_classes : 1;
    const size_t D = (size_t)w.D, K = (size_t)w.K;
    int rc = 0;
    w.ps = calloc((size_t)w.P, sizeof *w.ps);
    w.tr = calloc((size_t)n, sizeof *w.tr);
    w.cl = calloc((size_t)n, sizeof *w.cl);
    w.list = calloc(2 * (size_t)n, sizeof *w.list);
    w.xsave = malloc((size_t)n * D * sizeof(float));
    w.vprev = malloc((size_t)n * D * sizeof(float));
    w.tv = malloc((size_t)n * sizeof(float));
    w.lab = malloc((size_t)n * sizeof(int));
    w.tmp = malloc((size_t)n * D * sizeof(float));
    w.x0 = malloc((K > 1 ? K : 2) * D * sizeof(float));
    w.dis_sum = calloc((size_t)n, sizeof(double));
    int dis = o->disagreement && w.K >= 2;
    if (dis)
        w.vk = malloc(K * (size_t)n * D * sizeof(float));
    if (!w.ps || !w.tr || !w.cl || !w.list || !w.xsave || !w.vprev || !w.tv || !w.lab ||
        !w.tmp || !w.x0 || !w.dis_sum || (dis && !w.vk)) {
        rc = DDM_ENOMEM;
        goto oom;
    }
    strategy st;
    rc = gen_spec_strategy(sp, w.K, &st, err, errlen);
    for (int c = 0; c < w.P && !rc; c++) {
        sample_params *p = &w.ps[c];
        sample_params_default(p, w.K);
        p->n = n;
        p->steps = sp->steps;
        p->strat = st;
        p->label = conditional ? c : -1;
        p->guidance = conditional ? sp->guidance : 1.0f;
        p->seed = gen_request_seed(run_seed, p->label, 0);
        rc = sample_params_check(p, e->n_classes, err, errlen);
    }
    if (rc)
        goto out;
    for (int c = 0; c < w.P && !rc; c++) {
        int a = (int)((long)c * n / w.P), b = (int)((long)(c + 1) * n / w.P);
        for (int i = a; i < b && !rc; i++) {
            w.tr[i] = traj_new(&w.ps[c], i - a, w.D);
            w.cl[i] = traj_new(&w.ps[c], i - a, w.D);
            w.lab[i] = w.ps[c].label;
            if (!w.tr[i] || !w.cl[i])
                rc = DDM_ENOMEM;
        }
    }
    if (rc)
        goto oom;
    w.tk = tick_new(w.K, w.D, 2 * n, e->router, err, errlen);
    if (!w.tk) {
        rc = DDM_ENOMEM;
        goto out;
    }
    const int evals = sample_evals(&w.ps[0]);
    r->n = n;
    r->evals = evals;
    r->K = w.K;
    r->dim = w.D;
    r->conditional = conditional;
    r->lip_mean = r->lip_max = r->disagree_deg = NAN;
    int dist = o->centroids != NULL && w.K >= 2;
    if ((rc = alloc_result(r, n, evals, w.K, w.D, dist)) != 0)
        goto oom;
    if (dist && !(w.wsel = calloc((size_t)n * evals * K, sizeof *w.wsel))) {
        rc = DDM_ENOMEM;
        goto oom;
    }
    if (dis && !(r->disagree = calloc((size_t)n, sizeof *r->disagree))) {
        rc = DDM_ENOMEM;
        goto oom;
    }
    memcpy(r->labels, w.lab, (size_t)n * sizeof *w.lab);
    const float g = conditional ? sp->guidance : 1.0f;
    double vel_sum = 0, lip_sum = 0, lip_max = 0;
    long vel_cnt = 0, lip_cnt = 0, dis_cnt = 0;
    for (int ev = 0; ev < evals && !rc; ev++) {
        const float t = traj_time(w.tr[0]);
        const int probed = ev % o->every == 0;
        r->t_eval[ev] = t;
        int m = 0;
        for (int i = 0; i < n; i++) {
            memcpy(w.xsave + i * D, w.tr[i]->xe, D * sizeof(float));
            w.tv[i] = t;
            w.list[m++] = w.tr[i];
        }
        if (probed && o->lipschitz) {
            for (int i = 0; i < n; i++) {
                clone_into(w.cl[i], w.tr[i], o->eps, w.tmp + i * D);
                w.list[m++] = w.cl[i];
            }
        }
        rc = tick_plan(w.tk, w.list, m);
        for (int i = 0; i < n && !rc; i++) {
            for (int j = 0; j < w.tr[i]->n_sel; j++) {
                r->weight[(size_t)ev * K + w.tr[i]->sel[j]] += w.tr[i]->w[j] / n;
                if (dist)
                    w.wsel[((size_t)i * evals + ev) * K + w.tr[i]->sel[j]] = w.tr[i]->w[j];
            }
        }
        if (!rc)
            rc = ensemble_eval_tick(e, w.tk);
        if (!rc && probed && dis) {
            for (int k = 0; k < w.K && !rc; k++)
                rc = probe_expert_velocity(e, k, w.xsave, w.tv, w.lab, n, g,
                                           w.vk + (size_t)k * n * D, w.tmp);
            for (int i = 0; i < n && !rc; i++) {
                const float *xs = w.xsave + i * D;
                for (int k = 0; k < w.K; k++) {
                    const float *v = w.vk + ((size_t)k * n + i) * D;
                    float *x0 = w.x0 + k * D;
                    for (size_t d = 0; d < D; d++)
                        x0[d] = xs[d] - t * v[d];
                }
                w.dis_sum[i] += probe_mean_angle(w.x0, w.K, w.D);
            }
            dis_cnt++;
        }
        if (rc)
            break;
        tick_finish(w.tk);
        for (int i = 0; i < n; i++) {
            const traj *tr = w.tr[i];
            float *vp = w.vprev + i * D;
            if (ev > 0) {
                double nv = norm(vp, w.D);
                if (nv > 0) {
                    vel_sum += norm_diff(tr->v, vp, w.D) / nv;
                    vel_cnt++;
                }
            }
            memcpy(vp, tr->v, D * sizeof(float));
            if (probed && o->lipschitz) {
                double l = norm_diff(w.cl[i]->v, tr->v, w.D) / (o->eps * sqrt((double)w.D));
                lip_sum += l;
                lip_max = l > lip_max ? l : lip_max;
                lip_cnt++;
            }
            if (dist)
                account_distance(r, o, tr, ev, w.xsave + i * D, t, w.x0);
        }
    }
    if (rc) {
        snprintf(err, errlen, "%s: probe pass failed: %s", sp->name, ddm_strerror(rc));
        goto out;
    }
    double rows = 0, sw = 0;
    for (int i = 0; i < n; i++) {
        memcpy(r->images + i * D, w.tr[i]->x, D * sizeof(float));
        rows += (double)w.tr[i]->rows;
        sw += w.tr[i]->switches;
        if (dis && dis_cnt)
            r->disagree[i] = (float)(w.dis_sum[i] / dis_cnt);
    }
    gen_quantize(r->images, (size_t)n * D);
    if (dist)
        account_final(r, o, w.wsel, w.tr);
    r->rows = rows / n;
    r->switches = sw / n;
    r->vel_change = vel_cnt ? vel_sum / vel_cnt : NAN;
    if (lip_cnt) {
        r->lip_mean = lip_sum / lip_cnt;
        r->lip_max = lip_max;
    }
    if (dis && dis_cnt) {
        double s = 0;
        for (int i = 0; i < n; i++)
            s += r->disagree[i];
        r->disagree_deg = s / n;
    }
    if (dist) {
        for (int ev = 0; ev < evals; ev++) {
            for (size_t k = 0; k < K; k++) {
                r->dist_xt[ev * K + k] /= n;
                r->dist_x0[ev * K + k] /= n;
            }
            r->nearest_x0[ev] /= n;
            r->nearest_xt[ev] /= n;
            r->top_nearest_x0[ev] /= n;
            r->top_nearest_xt[ev] /= n;
            r->rank_x0[ev] /= n;
            r->far_w_x0[ev] /= n;
            r->far_w_xt[ev] /= n;
            r->wdist_x0[ev] /= n;
            r->wdist_xt[ev] /= n;
            r->mindist_x0[ev] /= n;
            r->mindist_xt[ev] /= n;
        }
    }
    pwork_free(&w);
    return 0;
oom:
    snprintf(err, errlen, "%s: probe pass: out of memory for %d trajectories", sp->name, n);
out:
    pwork_free(&w);
    probe_result_free(r);
    return rc ? rc : DDM_ENOMEM;
}
