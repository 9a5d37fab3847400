/* sampler.c -- trajectories and ticks (see sampler.h). */
#include "router/sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/net_par.h"
#include "common/rng.h"

void sample_params_default(sample_params *p, int K)
{
    memset(p, 0, sizeof *p);
    p->n = 1;
    p->steps = 50;
    p->seed = 0;
    p->strat.kind = K >= 2 ? STRAT_TOPK : STRAT_EXPERT;
    p->strat.k = K >= 2 ? 2 : 0;
    p->strat.threshold = NAN;
    p->strat.temperature = 1.0f;
    p->label = -1;
    p->guidance = 1.0f;
    p->sampler = SAMPLER_EULER;
}

const char *sample_field_range(const char *field, int n_classes, char *buf, size_t len)
{
    if (!strcmp(field, "n"))
        snprintf(buf, len, "1..%d", SAMPLE_MAX_N);
    else if (!strcmp(field, "steps"))
        snprintf(buf, len, "1..%d", SAMPLE_MAX_STEPS);
    else if (!strcmp(field, "priority"))
        snprintf(buf, len, "%d..%d", SAMPLE_PRIORITY_MIN, SAMPLE_PRIORITY_MAX);
    else if (!strcmp(field, "preview_every"))
        snprintf(buf, len, "0..%d (0: no previews)", SAMPLE_MAX_STEPS);
    else if (!strcmp(field, "label") && n_classes > 0)
        snprintf(buf, len, "0..%d", n_classes - 1);
    else if (!strcmp(field, "label"))
        snprintf(buf, len, "none (this model is unconditional: omit label)");
    else
        snprintf(buf, len, "%s", "");
    return buf;
}

int sample_params_check(const sample_params *p, int n_classes, char *err, size_t errlen)
{
    char r[64];
    if (p->n < 1 || p->n > SAMPLE_MAX_N)
        return ddm_errf(err, errlen, DDM_EINVAL, "field \"n\" = %d is out of range: allowed %s",
                        p->n, sample_field_range("n", n_classes, r, sizeof r));
    if (p->steps < 1 || p->steps > SAMPLE_MAX_STEPS)
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "field \"steps\" = %d is out of range: allowed %s", p->steps,
                        sample_field_range("steps", n_classes, r, sizeof r));
    if (p->label < -1 || p->label >= n_classes)
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "field \"label\" = %d is out of range: allowed %s", p->label,
                        sample_field_range("label", n_classes, r, sizeof r));
    if (!(p->guidance >= 0.0f && p->guidance <= 20.0f))
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "field \"guidance\" = %g is out of range: allowed 0..20", p->guidance);
    if (p->sampler != SAMPLER_EULER && p->sampler != SAMPLER_HEUN)
        return ddm_errf(err, errlen, DDM_EINVAL, "field \"sampler\": allowed euler or heun");
    if (p->priority < SAMPLE_PRIORITY_MIN || p->priority > SAMPLE_PRIORITY_MAX)
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "field \"priority\" = %d is out of range: allowed %s", p->priority,
                        sample_field_range("priority", n_classes, r, sizeof r));
    return strategy_check(&p->strat, err, errlen);
}

const char *sampler_name(sampler_kind k) { return k == SAMPLER_HEUN ? "heun" : "euler"; }

int sampler_parse(const char *s, sampler_kind *out)
{
    if (!strcmp(s, "euler"))
        *out = SAMPLER_EULER;
    else if (!strcmp(s, "heun"))
        *out = SAMPLER_HEUN;
    else
        return DDM_EINVAL;
    return 0;
}

void sample_route_noise(const sample_params *p, int image, int K, float *noise)
{
    for (int k = 0; k < K; k++) {
        double u = rng_uniform(p->seed, SAMPLE_STREAM_GUMBEL + (uint64_t)image, (uint64_t)k);
        noise[k] = (float)-log(-log(u));
    }
}

int sample_evals(const sample_params *p)
{
    return p->sampler == SAMPLER_HEUN ? 2 * p->steps : p->steps;
}

int sample_rows_per_eval(const sample_params *p, int K)
{
    int guided = p->label >= 0 && p->guidance != 1.0f;
    return strategy_experts_bound(&p->strat, K) * (guided ? 2 : 1);
}

uint64_t sample_cost(const sample_params *p, int K)
{
    return (uint64_t)p->n * (uint64_t)sample_evals(p) * (uint64_t)sample_rows_per_eval(p, K);
}

void sample_cost_explain(const sample_params *p, int K, char *buf, size_t len)
{
    char sname[32];
    strategy_name(&p->strat, sname, sizeof sname);
    int ex = strategy_experts_bound(&p->strat, K);
    int bound = p->strat.kind == STRAT_THRESHOLD || p->strat.kind == STRAT_NUCLEUS;
    snprintf(buf, len, "%d image%s x %d steps%s x %d expert%s (%s%s)%s", p->n, p->n == 1 ? "" : "s",
             p->steps, p->sampler == SAMPLER_HEUN ? " x 2 (heun)" : "", ex, ex == 1 ? "" : "s",
             sname, bound ? ", at most" : "",
             p->label >= 0 && p->guidance != 1.0f ? " x 2 (guidance with a label)" : "");
}

traj *traj_new(const sample_params *p, int image, int dim)
{
    traj *tr = calloc(1, sizeof *tr);
    float *mem = malloc(4 * (size_t)dim * sizeof *mem);
    if (!tr || !mem)
        goto fail;
    tr->p = p;
    tr->image = image;
    tr->dim = dim;
    tr->x = mem;
    tr->xe = mem + dim;
    tr->v1 = mem + 2 * dim;
    tr->v = mem + 3 * dim;
    rng_normal_fill(p->seed, (uint64_t)image, 0, tr->x, (size_t)dim);
    sample_route_noise(p, image, STRAT_MAX_EXPERTS, tr->route_noise);
    memcpy(tr->xe, tr->x, (size_t)dim * sizeof *mem);
    memset(tr->v1, 0, 2 * (size_t)dim * sizeof *mem);
    if (p->trace) {
        tr->trace = calloc((size_t)sample_evals(p), sizeof *tr->trace);
        if (!tr->trace)
            goto fail;
    }
    return tr;
fail:
    free(mem);
    free(tr);
    return NULL;
}

void traj_free(traj *tr)
{
    if (!tr)
        return;
    free(tr->x);
    free(tr->trace);
    free(tr);
}

static float grid_time(const traj *tr, int step)
{
    return 1.0f - (float)step / (float)tr->p->steps;
}

float traj_time(const traj *tr)
{
    return grid_time(tr, tr->step + tr->stage);
}

/* Where one selected (trajectory, expert) pair's rows sit in the expert's buffer. */
typedef struct slot {
    int row_cond;   /* row with the label (or the only row), -1 if none */
    int row_null;   /* row with the null label, -1 if none */
    int spec;       /* 1: in the speculation buffers, else in the plan's */
} slot;

/* One expert's rows: inputs and where the velocities go, capacity 2 * cap. */
typedef struct rowbuf {
    float **x;          /* [K] -> [2cap][D] */
    float **t;          /* [K] -> [2cap] */
    int **lab;          /* [K] -> [2cap] */
    float **out;        /* [K] -> [2cap][D] */
    int *rows;          /* [K] */
} rowbuf;

struct tick {
    int K, dim, cap;
    const model *router;
    net_par *router_par;     /* router network scratch, rows split over its threads */
    float *rx;          /* [cap][D] router inputs */
    float *rt;          /* [cap] */
    int *rlab;          /* [cap] */
    float *logits;      /* [cap][K] */
    rowbuf plan;        /* per expert: the rows the plan made */
    rowbuf spec;        /* per expert: the rows tick_speculate made */
    traj **trajs;       /* [cap] the planned batch */
    slot *slots;        /* [cap][K] */
    unsigned char *skip; /* [cap] tick_skip */
    int n;
    double router_us;
    /* speculation for the next plan */
    traj **strajs;      /* [cap] the batch speculated for */
    int sn;             /* its size, -1: none */
    slot *sslots;       /* [cap][K]: trajectory i's speculative rows for expert k (-1: none) */
    unsigned char *swithdrawn; /* [K] */
    int *sused;         /* [K] rows of the speculation the last plan used */
    tick_spec_stats sst;
    /* load-aware substitution */
    unsigned char *usable; /* [K] */
    int usable_set;
};

/* Buffers for up to 2 cap rows per expert (pages are touched only as used). */
static int rowbuf_init(rowbuf *b, int K, size_t cap, size_t D)
{
    b->x = calloc((size_t)K, sizeof(float *));
    b->t = calloc((size_t)K, sizeof(float *));
    b->lab = calloc((size_t)K, sizeof(int *));
    b->out = calloc((size_t)K, sizeof(float *));
    b->rows = calloc((size_t)K, sizeof(int));
    if (!b->x || !b->t || !b->lab || !b->out || !b->rows)
        return -1;
    for (int k = 0; k < K; k++) {
        b->x[k] = malloc(2 * cap * D * sizeof(float));
        b->t[k] = malloc(2 * cap * sizeof(float));
        b->lab[k] = malloc(2 * cap * sizeof(int));
        b->out[k] = malloc(2 * cap * D * sizeof(float));
        if (!b->x[k] || !b->t[k] || !b->lab[k] || !b->out[k])
            return -1;
    }
    return 0;
}

static void rowbuf_free(rowbuf *b, int K)
{
    for (int k = 0; b->x && k < K; k++) {
        free(b->x[k]);
        free(b->t ? b->t[k] : NULL);
        free(b->lab ? b->lab[k] : NULL);
        free(b->out ? b->out[k] : NULL);
    }
    free(b->x);
    free(b->t);
    free(b->lab);
    free(b->out);
    free(b->rows);
}

tick *tick_new(int K, int dim, int max_trajs, const model *router, char *err, size_t errlen)
{
    if (K < 1 || K > STRAT_MAX_EXPERTS || dim < 1 || max_trajs < 1) {
        snprintf(err, errlen, "tick: bad size (K %d, dim %d, capacity %d)", K, dim, max_trajs);
        return NULL;
    }
    if (router && (router->cfg.in_dim != dim || router->cfg.out_dim != K)) {
        snprintf(err, errlen, "router network maps %d -> %d, but the set has dim %d and %d experts",
                 router->cfg.in_dim, router->cfg.out_dim, dim, K);
        return NULL;
    }
    tick *tk = calloc(1, sizeof *tk);
    if (!tk)
        goto oom;
    tk->K = K;
    tk->dim = dim;
    tk->cap = max_trajs;
    tk->router = router;
    size_t c = (size_t)max_trajs, D = (size_t)dim;
    tk->rx = malloc(c * D * sizeof(float));
    tk->rt = malloc(c * sizeof(float));
    tk->rlab = malloc(c * sizeof(int));
    tk->logits = malloc(c * (size_t)K * sizeof(float));
    tk->trajs = calloc(c, sizeof(traj *));
    tk->slots = calloc(c * (size_t)K, sizeof(slot));
    tk->skip = calloc(c, 1);
    tk->strajs = calloc(c, sizeof(traj *));
    tk->sslots = calloc(c * (size_t)K, sizeof(slot));
    tk->swithdrawn = calloc((size_t)K, 1);
    tk->sused = calloc((size_t)K, sizeof(int));
    tk->usable = calloc((size_t)K, 1);
    tk->sn = -1;
    if (!tk->rx || !tk->rt || !tk->rlab || !tk->logits || !tk->trajs || !tk->slots ||
        !tk->skip || !tk->strajs || !tk->sslots || !tk->swithdrawn || !tk->sused ||
        !tk->usable || rowbuf_init(&tk->plan, K, c, D) || rowbuf_init(&tk->spec, K, c, D))
        goto oom;
    if (router) {
        tk->router_par = net_par_new(&router->cfg, max_trajs, 1);
        if (!tk->router_par)
            goto oom;
    }
    return tk;
oom:
    snprintf(err, errlen, "tick: out of memory for %d trajectories of %d floats", max_trajs, dim);
    tick_free(tk);
    return NULL;
}

void tick_free(tick *tk)
{
    if (!tk)
        return;
    rowbuf_free(&tk->plan, tk->K);
    rowbuf_free(&tk->spec, tk->K);
    free(tk->trajs);
    free(tk->slots);
    free(tk->skip);
    free(tk->strajs);
    free(tk->sslots);
    free(tk->swithdrawn);
    free(tk->sused);
    free(tk->usable);
    free(tk->rx);
    free(tk->rt);
    free(tk->rlab);
    free(tk->logits);
    net_par_free(tk->router_par);
    free(tk);
}

int tick_capacity(const tick *tk) { return tk->cap; }
double tick_router_us(const tick *tk) { return tk->router_us; }

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Appends one row (x, t, label) for expert k to b; returns its index. */
static int add_row(rowbuf *b, int dim, int k, const float *x, float t, int label)
{
    int r = b->rows[k]++;
    memcpy(b->x[k] + (size_t)r * dim, x, (size_t)dim * sizeof(float));
    b->t[k][r] = t;
    b->lab[k][r] = label;
    return r;
}

/* Trajectory tr's rows for expert k into b, as an evaluation needs them: the
 * conditional (or only) row, and with guidance the null-label row. */
static slot add_rows(rowbuf *b, int dim, int k, const traj *tr)
{
    const sample_params *p = tr->p;
    float t = traj_time(tr);
    int cond = p->label >= 0;
    int cfg = cond && p->guidance != 1.0f;
    slot sl = { .row_cond = add_row(b, dim, k, tr->xe, t, cond ? p->label : -1), .row_null = -1 };
    if (cfg)
        sl.row_null = add_row(b, dim, k, tr->xe, t, -1);
    return sl;
}

static int slot_rows(const slot *sl) { return 1 + (sl->row_null >= 0); }

/* Whether tr's evaluation runs the router network (its strategy reads it, or
 * substitution ranks the experts by it). */
static int needs_router(const tick *tk, const traj *tr)
{
    return strategy_uses_router(&tr->p->strat) || (tr->p->substitute && tk->router);
}

int tick_set_router_threads(tick *tk, int threads)
{
    if (!tk->router)
        return 0;
    net_par *p = net_par_new(&tk->router->cfg, tk->cap, threads);
    if (!p)
        return DDM_EINVAL;
    net_par_free(tk->router_par);
    tk->router_par = p;
    return 0;
}

void tick_set_usable(tick *tk, const unsigned char *usable)
{
    tk->usable_set = usable != NULL;
    if (usable)
        memcpy(tk->usable, usable, (size_t)tk->K);
}

int tick_speculate(tick *tk, traj **trajs, int n)
{
    int K = tk->K, total = 0;
    tk->sn = -1;
    memset(tk->spec.rows, 0, (size_t)K * sizeof(int));
    memset(tk->swithdrawn, 0, (size_t)K);
    if (n < 1 || n > tk->cap)
        return 0;
    for (int i = 0; i < n; i++) {
        const traj *tr = trajs[i];
        slot *ss = tk->sslots + (size_t)i * K;
        for (int k = 0; k < K; k++)
            ss[k] = (slot){ .row_cond = -1, .row_null = -1, .spec = 1 };
        if (tr->done || tr->evals == 0 || tr->dim != tk->dim)
            continue;
        for (int j = 0; j < tr->n_sel; j++) { /* in batch order, as tick_plan lays them out */
            int k = tr->sel[j];
            ss[k] = add_rows(&tk->spec, tk->dim, k, tr);
            ss[k].spec = 1;
            total += slot_rows(&ss[k]);
        }
    }
    memcpy(tk->strajs, trajs, (size_t)n * sizeof(traj *));
    tk->sn = n;
    return total;
}

int tick_spec_rows(const tick *tk, int k, const float **x, const float **t, const int **labels)
{
    if (x)
        *x = tk->spec.x[k];
    if (t)
        *t = tk->spec.t[k];
    if (labels)
        *labels = tk->spec.lab[k];
    return tk->spec.rows[k];
}

float *tick_spec_out(tick *tk, int k) { return tk->spec.out[k]; }
void tick_spec_withdraw(tick *tk, int k) { tk->swithdrawn[k] = 1; }
int tick_spec_used(const tick *tk, int k) { return tk->sused[k]; }
void tick_spec_get_stats(const tick *tk, tick_spec_stats *st) { *st = tk->sst; }

int tick_plan(tick *tk, traj **trajs, int n)
{
    if (n < 0 || n > tk->cap)
        return DDM_ERANGE;
    int K = tk->K;
    size_t D = (size_t)tk->dim;
    /* the speculation counts only for the batch it was made for */
    int spec = tk->sn == n && n > 0 && !memcmp(tk->strajs, trajs, (size_t)n * sizeof(traj *));
    tk->sn = -1;
    memset(&tk->sst, 0, sizeof tk->sst);
    memset(tk->sused, 0, (size_t)K * sizeof(int));
    tk->n = n;
    memcpy(tk->trajs, trajs, (size_t)n * sizeof(traj *));
    memset(tk->plan.rows, 0, (size_t)K * sizeof(int));
    memset(tk->skip, 0, (size_t)n);

    /* 1. the router network, once over every trajectory whose strategy reads it */
    int nr = 0;
    for (int i = 0; i < n; i++) {
        traj *tr = trajs[i];
        if (tr->done || tr->dim != tk->dim)
            return DDM_EINVAL;
        if (!needs_router(tk, tr))
            continue;
        if (!tk->router)
            return DDM_EINVAL;
        memcpy(tk->rx + (size_t)nr * D, tr->xe, D * sizeof(float));
        tk->rt[nr] = traj_time(tr);
        tk->rlab[nr] = tk->router->cfg.n_classes > 0 ? tr->p->label : -1;
        nr++;
    }
    double t0 = now_us();
    if (nr > 0) {
        int rc = net_par_forward(tk->router_par, &tk->router->w, nr, tk->rx, tk->rt, tk->rlab,
                                 tk->logits);
        if (rc)
            return rc;
    }
    tk->router_us = now_us() - t0;

    /* 2. selection per trajectory (substitution for requests that ask), rows
     * grouped per expert: taken from the speculation where it has them, the
     * others planned */
    int ir = 0;
    for (int i = 0; i < n; i++) {
        traj *tr = trajs[i];
        const sample_params *p = tr->p;
        const float *lg = NULL;
        if (needs_router(tk, tr))
            lg = tk->logits + (size_t)(ir++) * K;
        double u = rng_uniform(p->seed, SAMPLE_STREAM_ROUTING + (uint64_t)tr->image,
                               (uint64_t)tr->evals);
        tr->n_sel = strategy_select(&p->strat, strategy_uses_router(&p->strat) ? lg : NULL, K,
                                    u, tr->route_noise, tr->sel, tr->w);
        tr->n_sub = 0;
        if (p->substitute && tk->usable_set)
            tr->n_sub = strategy_substitute(&p->strat, lg, tr->route_noise, K, tk->usable,
                                            tr->sel, tr->w, &tr->n_sel, tr->sub_orig,
                                            tr->sub_new);
        slot *sl = tk->slots + (size_t)i * K;
        const slot *ss = spec ? tk->sslots + (size_t)i * K : NULL;
        int speculated = 0, missed = 0;
        for (int k = 0; ss && k < K && !speculated; k++)
            speculated = ss[k].row_cond >= 0;
        for (int j = 0; j < tr->n_sel; j++) {
            int k = tr->sel[j];
            if (speculated && ss[k].row_cond >= 0 && !tk->swithdrawn[k]) {
                sl[j] = ss[k];
                tk->sused[k] += slot_rows(&sl[j]);
                tk->sst.rows_hit += slot_rows(&sl[j]);
                continue;
            }
            sl[j] = add_rows(&tk->plan, tk->dim, k, tr);
            sl[j].spec = 0;
            if (speculated) {
                tk->sst.rows_miss += slot_rows(&sl[j]);
                missed = 1;
            }
        }
        if (speculated)
            missed ? tk->sst.evals_miss++ : tk->sst.evals_hit++;
    }
    for (int k = 0; spec && k < K; k++)
        if (!tk->swithdrawn[k])
            tk->sst.rows_wasted += tk->spec.rows[k] - tk->sused[k];
    return 0;
}

void tick_skip(tick *tk, int i)
{
    if (i >= 0 && i < tk->n)
        tk->skip[i] = 1;
}

int tick_rows(const tick *tk, int k, const float **x, const float **t, const int **labels)
{
    if (x)
        *x = tk->plan.x[k];
    if (t)
        *t = tk->plan.t[k];
    if (labels)
        *labels = tk->plan.lab[k];
    return tk->plan.rows[k];
}

void tick_experts_by_rows(const tick *tk, int *order)
{
    for (int k = 0; k < tk->K; k++) { /* insertion sort: K is small */
        int at = k;
        for (; at > 0 && tk->plan.rows[order[at - 1]] < tk->plan.rows[k]; at--)
            order[at] = order[at - 1];
        order[at] = k;
    }
}

float *tick_out(tick *tk, int k) { return tk->plan.out[k]; }

/* Records routing of the evaluation about to complete (trace, switches, rows). */
static void account(traj *tr, const slot *sl)
{
    uint64_t mask = 0;
    for (int j = 0; j < tr->n_sel; j++) {
        int r = 1 + (sl[j].row_null >= 0);
        mask |= 1ull << tr->sel[j];
        tr->rows += (uint64_t)r;
        tr->rows_by_expert[tr->sel[j]] += (uint32_t)r;
    }
    if (tr->evals > 0 && mask != tr->sel_mask_prev)
        tr->switches++;
    tr->sel_mask_prev = mask;
    tr->substitutions += (uint64_t)tr->n_sub;
    if (tr->trace) {
        trace_entry *e = &tr->trace[tr->evals];
        e->step = (uint16_t)tr->step;
        e->stage = (uint8_t)tr->stage;
        e->t = traj_time(tr);
        e->n_sel = (uint8_t)tr->n_sel;
        for (int j = 0; j < tr->n_sel; j++) {
            e->sel[j] = (uint8_t)tr->sel[j];
            e->w[j] = tr->w[j];
        }
        e->n_sub = (uint8_t)tr->n_sub;
        for (int j = 0; j < tr->n_sub; j++) {
            e->sub_orig[j] = (uint8_t)tr->sub_orig[j];
            e->sub_new[j] = tr->sub_new[j] < 0 ? TRACE_DROPPED : (uint8_t)tr->sub_new[j];
        }
    }
}

/* Elementwise loops over a latent, in blocks of a fixed VL floats: gcc -O2
 * vectorises a loop only when its trip count is known (see common/net.c), and
 * these run for every row of every tick. Same arithmetic per element as the
 * plain loop, so results do not change. */
#define VL 16

/* y += a * x */
static void axpy(int n, float a, const float *restrict x, float *restrict y)
{
    int d = 0;
    for (; d + VL <= n; d += VL)
        for (int k = 0; k < VL; k++)
            y[d + k] += a * x[d + k];
    for (; d < n; d++)
        y[d] += a * x[d];
}

/* y += w * (vn + g (vc - vn)): one expert's guided velocity */
static void add_guided(int n, float w, float g, const float *restrict vn,
                       const float *restrict vc, float *restrict y)
{
    int d = 0;
    for (; d + VL <= n; d += VL)
        for (int k = 0; k < VL; k++)
            y[d + k] += w * (vn[d + k] + g * (vc[d + k] - vn[d + k]));
    for (; d < n; d++)
        y[d] += w * (vn[d] + g * (vc[d] - vn[d]));
}

/* x += h (a + b): Heun's corrector with h = dt / 2 */
static void add_mean_step(int n, float h, const float *restrict a, const float *restrict b,
                          float *restrict x)
{
    int d = 0;
    for (; d + VL <= n; d += VL)
        for (int k = 0; k < VL; k++)
            x[d + k] += h * (a[d + k] + b[d + k]);
    for (; d < n; d++)
        x[d] += h * (a[d] + b[d]);
}

/* ODE step after the evaluation whose velocity is in tr->v. */
static void advance(traj *tr)
{
    int D = tr->dim;
    float dt = grid_time(tr, tr->step + 1) - grid_time(tr, tr->step); /* negative */
    if (tr->p->sampler == SAMPLER_HEUN && tr->stage == 0) {
        memcpy(tr->v1, tr->v, (size_t)D * sizeof(float));
        memcpy(tr->xe, tr->x, (size_t)D * sizeof(float));
        axpy(D, dt, tr->v1, tr->xe); /* xe = x + dt v1 */
        tr->stage = 1;
    } else {
        if (tr->p->sampler == SAMPLER_HEUN)
            add_mean_step(D, dt * 0.5f, tr->v1, tr->v, tr->x);
        else
            axpy(D, dt, tr->v, tr->x);
        tr->stage = 0;
        tr->step++;
        memcpy(tr->xe, tr->x, (size_t)D * sizeof(float));
    }
    tr->evals++;
    if (tr->step >= tr->p->steps)
        tr->done = 1;
}

void tick_finish(tick *tk)
{
    size_t D = (size_t)tk->dim;
    for (int i = 0; i < tk->n; i++) {
        traj *tr = tk->trajs[i];
        const slot *sl = tk->slots + (size_t)i * tk->K;
        float g = tr->p->guidance;
        if (tk->skip[i])
            continue;
        memset(tr->v, 0, D * sizeof(float));
        /* experts in increasing index order: the sum is deterministic */
        for (int j = 0; j < tr->n_sel; j++) {
            int k = tr->sel[j];
            float w = tr->w[j];
            const float *out = sl[j].spec ? tk->spec.out[k] : tk->plan.out[k];
            const float *vc = out + (size_t)sl[j].row_cond * D;
            if (sl[j].row_null >= 0)
                add_guided((int)D, w, g, out + (size_t)sl[j].row_null * D, vc, tr->v);
            else
                axpy((int)D, w, vc, tr->v);
        }
        account(tr, sl);
        advance(tr);
    }
    tk->n = 0;
}
