/* table.c -- rows x seeds x modes sampled on worker threads, judged, and
 * summarised with bootstrap intervals (see table.h). */
#include "tools/eval/table.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "tools/eval/cmds.h"

void openblas_set_num_threads(int num_threads);

static const char *MODE_NAME[TBL_MODES] = { "unconditional", "class-conditional" };

tbl_cell *tbl_cell_at(tbl *t, int m, int r, int s)
{
    return &t->f[((size_t)m * t->nrows + r) * t->o->seeds + s];
}

tbl_probe *tbl_probe_at(tbl *t, int m, int r) { return &t->p[(size_t)m * t->nrows + r]; }

int tbl_row_index(const tbl *t, const char *name)
{
    for (int r = 0; r < t->nrows; r++)
        if (!strcmp(t->rows[r], name))
            return r;
    return -1;
}

/* ---- setup --------------------------------------------------------------------------------- */

static int parse_rows(tbl *t, const char *list, char *err, size_t errlen)
{
    char names[TBL_MAX_ROWS][GEN_NAME];
    int n = 0;
    if (!list[0]) {
        n = table_default_rows(t->K, names, TBL_MAX_ROWS);
    } else {
        char buf[2048];
        snprintf(buf, sizeof buf, "%s", list);
        for (char *save = NULL, *s = strtok_r(buf, ",", &save); s && n < TBL_MAX_ROWS;
             s = strtok_r(NULL, ",", &save))
            snprintf(names[n++], GEN_NAME, "%s", s);
    }
    t->nrows = 0;
    for (int i = 0; i < n; i++) {
        gen_spec sp;
        gen_spec_init(&sp, names[i]);
        sp.steps = t->o->steps;
        sp.guidance = t->o->guidance;
        strategy st;
        char e2[512];
        if (gen_spec_strategy(&sp, t->K, &st, e2, sizeof e2)) {
            snprintf(err, errlen, "--rows: %s", e2);
            return DDM_EINVAL;
        }
        if (sp.monolith && !gen_has_monolith(t->g0)) {
            fprintf(stderr, "ddm-eval: note: no monolith row (%s)\n",
                    t->o->url[0] ? "not served by the router" : "no monolith.safetensors");
            continue;
        }
        t->spec[t->nrows] = sp;
        t->boot_row[t->nrows] = strncmp(names[i], "expert:", 7) != 0;
        memcpy(t->rows[t->nrows++], names[i], GEN_NAME);
    }
    if (t->nrows < 1) {
        snprintf(err, errlen, "no rows to measure");
        return DDM_EINVAL;
    }
    return 0;
}

int tbl_open(tbl *t, const eval_opts *o, const char *rows, int modes, int probe, char *err,
             size_t errlen)
{
    memset(t, 0, sizeof *t);
    t->o = o;
    if (eval_open_judges(o, &t->js, err, errlen) ||
        eval_ref_load(o, &t->js, &t->ref, err, errlen))
        return 1;
    if (!(t->g0 = eval_open_source(o, err, errlen)))
        return 1;
    t->K = gen_K(t->g0);
    t->D = gen_dim(t->g0);
    t->C = t->js.j[0]->C;
    if (t->D != t->js.j[0]->D) {
        snprintf(err, errlen, "the models make images of %d pixels, the classifier %s takes %d",
                 t->D, o->classifier, t->js.j[0]->D);
        return 1;
    }
    if (o->seeds > TBL_MAX_SEEDS) {
        snprintf(err, errlen, "--seeds %d: at most %d", o->seeds, TBL_MAX_SEEDS);
        return 1;
    }
    if (parse_rows(t, rows, err, errlen))
        return 1;
    eval_weights_line(t->g0, &t->js, t->weights, sizeof t->weights);
    t->modes[0] = (modes & 1) != 0;
    t->modes[1] = (modes & 2) != 0 && gen_classes(t->g0) > 0;
    if ((modes & 2) && gen_classes(t->g0) == 0)
        fprintf(stderr, "ddm-eval: note: unconditional experts: no class-conditional table\n");
    if (t->modes[1] && gen_classes(t->g0) != t->C) {
        snprintf(err, errlen, "the experts have %d label classes, the classifier %d",
                 gen_classes(t->g0), t->C);
        return 1;
    }
    t->n_mode[0] = o->n;
    t->n_mode[1] = o->n_cond;
    t->probes = probe && !o->url[0] && o->probe_n > 0;
    t->f = calloc((size_t)TBL_MODES * t->nrows * o->seeds, sizeof *t->f);
    t->p = calloc((size_t)TBL_MODES * t->nrows, sizeof *t->p);
    if (!t->f || !t->p) {
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    return 0;
}

void tbl_close(tbl *t)
{
    if (t->f)
        for (size_t i = 0; i < (size_t)TBL_MODES * t->nrows * t->o->seeds; i++) {
            free(t->f[i].grid);
            eval_quality_free(&t->f[i].q);
        }
    if (t->p)
        for (size_t i = 0; i < (size_t)TBL_MODES * t->nrows; i++) {
            probe_result_free(&t->p[i].pr);
            free(t->p[i].conf);
        }
    for (int m = 0; m < TBL_MODES; m++)
        for (int s = 0; s < TBL_MAX_SEEDS; s++)
            eval_quality_free(&t->floor[m][s]);
    free(t->f);
    free(t->p);
    gen_close(t->g0);
    eval_ref_free(&t->ref);
    eval_close_judges(&t->js);
    memset(t, 0, sizeof *t);
}

/* ---- work ------------------------------------------------------------------------------------ */

typedef struct item {
    int probe;          /* 0 FID draw, 1 probe pass */
    int mode, row, seed;
    double cost;        /* estimated expert rows, for scheduling */
} item;

typedef struct run {
    tbl *t;
    item *items;
    int nitems;
    pthread_mutex_t mu;
    int next, finished, failed;
    char err[2048];
    double t0;
} run;

typedef struct wctx {
    run *u;
    gen_source *g;
    eval_judges js;
    int own;            /* g and js are this worker's (not worker 0's) */
} wctx;

/* Expert rows per image per step, roughly, for scheduling. */
static double row_cost(const tbl *t, int r)
{
    const char *s = t->spec[r].strategy;
    if (!strcmp(s, "full") || !strcmp(s, "uniform"))
        return t->K;
    if (!strncmp(s, "top-", 4))
        return atoi(s + 4);
    if (!strcmp(s, "threshold") || !strcmp(s, "nucleus"))
        return 2.5;
    return 1;
}

static int cmp_item(const void *a, const void *b)
{
    const item *x = a, *y = b;
    return x->cost < y->cost ? 1 : x->cost > y->cost ? -1 : 0;
}

static int run_fid(wctx *w, const item *it, char *err, size_t errlen)
{
    tbl *t = w->u->t;
    const eval_opts *o = t->o;
    long n = t->n_mode[it->mode];
    float *x = malloc((size_t)n * t->D * sizeof *x);
    int *lab = malloc((size_t)n * sizeof *lab);
    tbl_cell *c = tbl_cell_at(t, it->mode, it->row, it->seed);
    int rc = (!x || !lab) ? DDM_ENOMEM : 0;
    if (rc)
        snprintf(err, errlen, "out of memory for %ld images", n);
    const gen_spec *sp = &t->spec[it->row];
    uint64_t seed = o->seed + (uint64_t)it->seed;
    if (!rc)
        rc = it->mode ? gen_draw_classes(w->g, sp, seed, n, x, lab, &c->st, err, errlen)
                      : gen_draw(w->g, sp, -1, seed, n, x, &c->st, err, errlen);
    if (!rc)
        rc = eval_quality_of(&w->js, &t->ref, x, n, it->mode ? lab : NULL,
                             t->boot_row[it->row] ? o->boot : 0, seed, NULL, &c->q, err, errlen);
    if (!rc && it->seed == 0) {
        /* keep a grid: the first TBL_GRID_N images, or up to 8 of each class */
        int per = it->mode ? (int)(n / t->C < 8 ? n / t->C : 8) : 0;
        int gn = it->mode ? per * t->C : (int)(n < TBL_GRID_N ? n : TBL_GRID_N);
        c->grid = gn > 0 ? malloc((size_t)gn * t->D * sizeof *c->grid) : NULL;
        if (c->grid) {
            c->grid_n = gn;
            for (int i = 0; i < gn; i++) {
                long src = it->mode ? (long)(i / per) * n / t->C + i % per : i;
                memcpy(c->grid + (size_t)i * t->D, x + (size_t)src * t->D, t->D * sizeof *x);
            }
        }
    }
    free(x);
    free(lab);
    return rc;
}

static int run_probe(wctx *w, const item *it, char *err, size_t errlen)
{
    tbl *t = w->u->t;
    const eval_opts *o = t->o;
    const gen_spec *sp = &t->spec[it->row];
    ensemble *e = sp->monolith ? gen_monolith(w->g) : gen_ensemble(w->g);
    tbl_probe *c = tbl_probe_at(t, it->mode, it->row);
    if (!e) {
        snprintf(err, errlen, "%s: not available in-process", sp->name);
        return DDM_ENOTFOUND;
    }
    probe_opts po;
    probe_opts_default(&po);
    po.every = o->every;
    po.eps = o->eps;
    int rc = probe_run(e, sp, it->mode, o->seed, o->probe_n, &po, &c->pr, err, errlen);
    if (!rc) {
        c->conf = malloc((size_t)c->pr.n * sizeof *c->conf);
        if (!c->conf || judge_run(w->js.j[0], c->pr.images, c->pr.n, NULL, NULL, c->conf)) {
            snprintf(err, errlen, "%s: classifying probe samples failed", sp->name);
            rc = DDM_ENOMEM;
        }
    }
    return rc;
}

static void *worker(void *arg)
{
    wctx *w = arg;
    run *u = w->u;
    tbl *t = u->t;
    char err[2048];
    for (;;) {
        pthread_mutex_lock(&u->mu);
        int i = u->failed ? u->nitems : u->next++;
        pthread_mutex_unlock(&u->mu);
        if (i >= u->nitems)
            break;
        const item *it = &u->items[i];
        double t0 = eval_now();
        err[0] = '\0';
        int rc = it->probe ? run_probe(w, it, err, sizeof err) : run_fid(w, it, err, sizeof err);
        pthread_mutex_lock(&u->mu);
        if (rc) {
            if (!u->failed)
                snprintf(u->err, sizeof u->err, "%s", err[0] ? err : ddm_strerror(rc));
            u->failed = 1;
        } else {
            u->finished++;
            if (it->probe)
                tbl_probe_at(t, it->mode, it->row)->done = 1;
            else
                tbl_cell_at(t, it->mode, it->row, it->seed)->done = 1;
            if (!t->o->quiet) {
                char what[128];
                if (it->probe) {
                    snprintf(what, sizeof what, "probe pass (%d trajectories)", t->o->probe_n);
                } else {
                    const eval_quality *q = &tbl_cell_at(t, it->mode, it->row, it->seed)->q;
                    snprintf(what, sizeof what, "seed %d: FID %.2f%s", it->seed + 1, q->j[0].fid,
                             q->judges > 1 ? "" : "");
                    if (q->judges > 1)
                        snprintf(what + strlen(what), sizeof what - strlen(what),
                                 " (conv %.2f)", q->j[1].fid);
                }
                fprintf(stderr, "[%3d/%d %6.0fs] %-10s %-17s %s (%.1f s)\n", u->finished,
                        u->nitems, eval_now() - u->t0, t->rows[it->row], MODE_NAME[it->mode],
                        what, eval_now() - t0);
            }
        }
        pthread_mutex_unlock(&u->mu);
    }
    return NULL;
}

int tbl_run(tbl *t, char *err, size_t errlen)
{
    const eval_opts *o = t->o;
    run u;
    memset(&u, 0, sizeof u);
    u.t = t;
    u.t0 = eval_now();
    size_t nf = (size_t)TBL_MODES * t->nrows * o->seeds, np = (size_t)TBL_MODES * t->nrows;
    u.items = calloc(nf + np, sizeof *u.items);
    if (!u.items) {
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    for (int m = 0; m < TBL_MODES; m++) {
        if (!t->modes[m])
            continue;
        double gm = m ? (o->guidance != 1.0f ? 2.0 : 1.0) : 1.0;
        for (int r = 0; r < t->nrows; r++) {
            for (int s = 0; s < o->seeds; s++)
                u.items[u.nitems++] = (item){ 0, m, r, s,
                                              row_cost(t, r) * gm * (double)t->n_mode[m] };
            if (t->probes) {
                double pc = (row_cost(t, r) + (t->spec[r].monolith ? 0 : t->K) / (double)o->every +
                             row_cost(t, r) / o->every) * gm * o->probe_n;
                u.items[u.nitems++] = (item){ 1, m, r, 0, pc };
            }
        }
    }
    qsort(u.items, (size_t)u.nitems, sizeof *u.items, cmp_item);
    double est = 0;
    for (int i = 0; i < u.nitems; i++)
        est += u.items[i].cost * o->steps;
    if (!o->quiet)
        fprintf(stderr, "ddm-eval: %d rows x %s: %ld unconditional%s samples per row per seed, "
                "%d seeds, %d probe trajectories per row, %d judge%s, %d bootstrap replicates; "
                "%d items, ~%.1fM expert rows, %d worker threads\n", t->nrows,
                t->modes[0] && t->modes[1] ? "2 modes" : t->modes[1] ? "conditional" : "unconditional",
                t->n_mode[0], t->modes[1] ? "" : " (no conditional)", o->seeds,
                t->probes ? o->probe_n : 0, t->js.n, t->js.n > 1 ? "s" : "", o->boot, u.nitems,
                est / 1e6, o->jobs);
    /* the floor, per mode (its sample count) and seed */
    for (int m = 0; m < TBL_MODES; m++) {
        t->floor_ok[m] = t->modes[m];
        for (int s = 0; s < o->seeds && t->modes[m]; s++) {
            char ferr[512];
            if (eval_floor(&t->ref, &t->js, t->n_mode[m], o->seed + (uint64_t)s, &t->floor[m][s],
                           ferr, sizeof ferr)) {
                if (s == 0)
                    fprintf(stderr, "ddm-eval: note: no FID floor: %s\n", ferr);
                t->floor_ok[m] = 0;
                break;
            }
            t->floor_n[m] = t->floor[m][s].n;
        }
    }
    /* workers: worker 0 reuses g0 and the judges */
    int nthreads = o->jobs < 1 ? 1 : o->jobs, rc = 0, started = 0;
    if (nthreads > 1 && !o->url[0])
        openblas_set_num_threads(1);
    wctx *w = calloc((size_t)nthreads, sizeof *w);
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    pthread_mutex_init(&u.mu, NULL);
    if (!w || !th) {
        snprintf(err, errlen, "out of memory");
        rc = DDM_ENOMEM;
        goto out;
    }
    for (int i = 0; i < nthreads && !rc; i++) {
        w[i].u = &u;
        if (i == 0) {
            w[i].g = t->g0;
            w[i].js = t->js;
            continue;
        }
        w[i].own = 1;
        if (!(w[i].g = eval_open_source(o, err, errlen)) ||
            eval_open_judges(o, &w[i].js, err, errlen))
            rc = DDM_EINVAL;
    }
    for (int i = 0; i < nthreads && !rc; i++) {
        if (pthread_create(&th[i], NULL, worker, &w[i]) != 0)
            break;
        started++;
    }
    if (!rc && started == 0) {
        snprintf(err, errlen, "cannot start worker threads");
        rc = DDM_ENOMEM;
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (!rc && u.failed) {
        snprintf(err, errlen, "%s", u.err);
        rc = DDM_EINVAL;
    }
    t->wall = eval_now() - u.t0;
    t->cpu = (double)clock() / CLOCKS_PER_SEC;
out:
    for (int i = 0; w && i < nthreads; i++)
        if (w[i].own) {
            gen_close(w[i].g);
            eval_close_judges(&w[i].js);
        }
    free(w);
    free(th);
    free(u.items);
    pthread_mutex_destroy(&u.mu);
    return rc;
}

/* ---- summaries ---------------------------------------------------------------------------------- */

/* Replicate b of a row's stat (mean over seeds); NAN without replicates. */
static double rep(tbl *t, int m, int r, int k, int stat, int b)
{
    double sum = 0;
    for (int s = 0; s < t->o->seeds; s++) {
        const eval_quality *q = &tbl_cell_at(t, m, r, s)->q;
        if (!q->boot_val || b >= q->boot || k >= q->judges)
            return NAN;
        sum += q->boot_val[((size_t)k * q->boot + b) * EVAL_STATS + stat];
    }
    return sum / t->o->seeds;
}

static double point(const eval_jq *v, int stat)
{
    switch (stat) {
    case TBL_FID: return v->fid;
    case TBL_KID: return v->kid;
    case TBL_PRECISION: return v->precision;
    default: return v->recall;
    }
}

/* 1.96 x the standard deviation of v [n] (NAN if any is NAN or n < 2). */
static double half_width(const double *v, int n)
{
    double mean, sd;
    for (int i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return NAN;
    metric_mean_sd(v, n, &mean, &sd);
    return 1.96 * sd;
}

static tbl_est estimate(tbl *t, int m, int a, int b, int k, int stat)
{
    const int S = t->o->seeds, B = t->o->boot;
    double vals[TBL_MAX_SEEDS];
    tbl_est e;
    for (int s = 0; s < S; s++) {
        const eval_quality *qa = &tbl_cell_at(t, m, a, s)->q;
        double v = k < qa->judges ? point(&qa->j[k], stat) : NAN;
        if (b >= 0) {
            const eval_quality *qb = &tbl_cell_at(t, m, b, s)->q;
            v -= k < qb->judges ? point(&qb->j[k], stat) : NAN;
        }
        vals[s] = v;
    }
    metric_mean_sd(vals, S, &e.mean, &e.sd);
    e.half = NAN;
    double *r = B > 1 ? malloc((size_t)B * sizeof *r) : NULL;
    if (r) {
        for (int i = 0; i < B; i++)
            r[i] = rep(t, m, a, k, stat, i) - (b >= 0 ? rep(t, m, b, k, stat, i) : 0.0);
        e.half = half_width(r, B);
        free(r);
    }
    return e;
}

tbl_est tbl_stat(tbl *t, int m, int r, int k, int stat) { return estimate(t, m, r, -1, k, stat); }

tbl_est tbl_diff(tbl *t, int m, int a, int b, int k, int stat)
{
    return estimate(t, m, a, b, k, stat);
}

void tbl_hist(tbl *t, int m, int r, int k, double *hist)
{
    memset(hist, 0, (size_t)t->C * sizeof *hist);
    for (int s = 0; s < t->o->seeds; s++) {
        const eval_quality *q = &tbl_cell_at(t, m, r, s)->q;
        for (int c = 0; c < t->C && k < q->judges; c++)
            hist[c] += q->j[k].hist[c];
    }
}

tbl_est tbl_tv(tbl *t, int m, int r, int k)
{
    const int B = t->o->boot, C = t->C;
    double hist[EVAL_MAX_CLASSES];
    tbl_est e = { NAN, NAN, NAN };
    tbl_hist(t, m, r, k, hist);
    e.mean = metric_tv(hist, t->ref.class_freq, C);
    double *v = B > 1 ? malloc((size_t)B * sizeof *v) : NULL;
    for (int b = 0; v && b < B; b++) {
        memset(hist, 0, sizeof hist);
        v[b] = 0;
        for (int s = 0; s < t->o->seeds; s++) {
            const eval_quality *q = &tbl_cell_at(t, m, r, s)->q;
            if (!q->boot_hist || k >= q->judges) {
                v[b] = NAN;
                break;
            }
            for (int c = 0; c < C; c++)
                hist[c] += q->boot_hist[((size_t)k * q->boot + b) * C + c];
        }
        if (isfinite(v[b]))
            v[b] = metric_tv(hist, t->ref.class_freq, C);
    }
    if (v)
        e.half = half_width(v, B);
    free(v);
    return e;
}

tbl_est tbl_floor(tbl *t, int m, int k, int stat)
{
    double vals[TBL_MAX_SEEDS];
    tbl_est e = { NAN, NAN, NAN };
    if (!t->floor_ok[m] || k >= t->floor[m][0].judges)
        return e;
    for (int s = 0; s < t->o->seeds; s++)
        vals[s] = point(&t->floor[m][s].j[k], stat);
    metric_mean_sd(vals, t->o->seeds, &e.mean, &e.sd);
    return e;
}

double tbl_floor_tv(tbl *t, int m, int k)
{
    double hist[EVAL_MAX_CLASSES] = { 0 };
    if (!t->floor_ok[m] || k >= t->floor[m][0].judges)
        return NAN;
    for (int s = 0; s < t->o->seeds; s++)
        for (int c = 0; c < t->C; c++)
            hist[c] += t->floor[m][s].j[k].hist[c];
    return metric_tv(hist, t->ref.class_freq, t->C);
}

static double seed_mean(tbl *t, int m, int r, int k, int acc)
{
    double sum = 0;
    for (int s = 0; s < t->o->seeds; s++) {
        const eval_quality *q = &tbl_cell_at(t, m, r, s)->q;
        if (k >= q->judges)
            return NAN;
        sum += acc ? q->j[k].label_acc : q->j[k].confident;
    }
    return sum / t->o->seeds;
}

double tbl_confident(tbl *t, int m, int r, int k) { return seed_mean(t, m, r, k, 0); }
double tbl_label_acc(tbl *t, int m, int r, int k) { return seed_mean(t, m, r, k, 1); }
