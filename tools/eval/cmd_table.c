/* cmd_table.c -- `ddm-eval table`: every routing strategy, the monolith and
 * each expert alone, unconditional and class-conditional, on one page.
 *
 * Work is cut into items -- (mode, row, seed) FID draws and (mode, row)
 * probe passes (probe.h) -- that --jobs worker threads take from a shared
 * list, largest first. Each worker owns its sample source and classifier
 * scratch and runs OpenBLAS single-threaded, so rows are sampled side by side
 * on separate cores; images/s is therefore a one-core figure. Results land
 * in per-item slots and are summarised once every item is done. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "tools/eval/cmds.h"
#include "tools/eval/plot.h"
#include "tools/eval/probe.h"

void openblas_set_num_threads(int num_threads);

#define MAX_ROWS 80
#define GRID_N 64
#define MODES 2 /* 0 unconditional, 1 class-conditional */

static const char *MODE_NAME[MODES] = { "unconditional", "class-conditional" };

int table_default_rows(int K, char names[][GEN_NAME], int max)
{
    int n = 0;
    const char *fixed[] = { "monolith", "full", "uniform", "top-1", "top-2", "top-3",
                            "threshold", "sample", "nucleus" };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0] && n < max; i++) {
        if (!strncmp(fixed[i], "top-", 4) && fixed[i][4] - '0' > K)
            continue;
        snprintf(names[n++], GEN_NAME, "%s", fixed[i]);
    }
    for (int k = 0; k < K && n < max; k++)
        snprintf(names[n++], GEN_NAME, "expert:%d", k);
    return n;
}

/* One FID draw's outcome. */
typedef struct fcell {
    int done;
    eval_quality q;
    gen_stats st;
    float *grid;        /* first images (seed 0 only), GRID_N or 8 per class */
    int grid_n;
} fcell;

/* One probe pass's outcome. */
typedef struct pcell {
    int done;
    probe_result pr;
    float *conf;        /* [pr.n] classifier confidence of each final image */
} pcell;

typedef struct item {
    int probe;          /* 0 FID draw, 1 probe pass */
    int mode, row, seed;
    double cost;        /* estimated expert rows, for scheduling */
} item;

typedef struct table {
    const eval_opts *o;
    eval_ref *ref;
    int K, D, C;
    int nrows;
    char rows[MAX_ROWS][GEN_NAME];
    gen_spec spec[MAX_ROWS];
    int modes[MODES];                 /* which modes run */
    long n_mode[MODES];               /* images per FID draw */
    fcell *f;                         /* [MODES][nrows][seeds] */
    pcell *p;                         /* [MODES][nrows] */
    item *items;
    int nitems;
    int probes;                       /* probe passes run (in-process only) */
    double floor_fid[MODES][16];      /* training vs held-out, per mode (its n) and seed */
    long floor_n[MODES];
    char weights[1024];               /* sha256 line of the weights in use */
    /* shared state of the workers */
    pthread_mutex_t mu;
    int next, finished, failed;
    char err[2048];
    double t0;
} table;

static fcell *FC(table *t, int m, int r, int s)
{
    return &t->f[((size_t)m * t->nrows + r) * t->o->seeds + s];
}

static pcell *PC(table *t, int m, int r) { return &t->p[(size_t)m * t->nrows + r]; }

/* Expert rows per image per step, roughly, for scheduling. */
static double row_cost(const table *t, int r)
{
    const char *s = t->rows[r];
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

/* ---- work --------------------------------------------------------------------------- */

typedef struct wctx {
    table *t;
    gen_source *g;
    judge *j;
} wctx;

static int run_fid(wctx *w, const item *it, char *err, size_t errlen)
{
    table *t = w->t;
    const eval_opts *o = t->o;
    long n = t->n_mode[it->mode];
    float *x = malloc((size_t)n * t->D * sizeof *x);
    int *lab = malloc((size_t)n * sizeof *lab);
    fcell *c = FC(t, it->mode, it->row, it->seed);
    int rc = (!x || !lab) ? DDM_ENOMEM : 0;
    if (rc)
        snprintf(err, errlen, "out of memory for %ld images", n);
    const gen_spec *sp = &t->spec[it->row];
    uint64_t seed = o->seed + (uint64_t)it->seed;
    if (!rc)
        rc = it->mode ? gen_draw_classes(w->g, sp, seed, n, x, lab, &c->st, err, errlen)
                      : gen_draw(w->g, sp, -1, seed, n, x, &c->st, err, errlen);
    if (!rc)
        rc = eval_quality_of(w->j, t->ref, x, n, it->mode ? lab : NULL, NULL, &c->q, err, errlen);
    if (!rc && it->seed == 0) {
        /* keep a grid: the first GRID_N images, or up to 8 of each class */
        int per = it->mode ? (int)(n / t->C < 8 ? n / t->C : 8) : 0;
        int gn = it->mode ? per * t->C : (int)(n < GRID_N ? n : GRID_N);
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
    table *t = w->t;
    const eval_opts *o = t->o;
    const gen_spec *sp = &t->spec[it->row];
    ensemble *e = sp->monolith ? gen_monolith(w->g) : gen_ensemble(w->g);
    pcell *c = PC(t, it->mode, it->row);
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
        if (!c->conf || judge_run(w->j, c->pr.images, c->pr.n, NULL, NULL, c->conf)) {
            snprintf(err, errlen, "%s: classifying probe samples failed", sp->name);
            rc = DDM_ENOMEM;
        }
    }
    return rc;
}

static void *worker(void *arg)
{
    wctx *w = arg;
    table *t = w->t;
    char err[2048];
    for (;;) {
        pthread_mutex_lock(&t->mu);
        int i = t->failed ? t->nitems : t->next++;
        pthread_mutex_unlock(&t->mu);
        if (i >= t->nitems)
            break;
        const item *it = &t->items[i];
        double t0 = eval_now();
        err[0] = '\0';
        int rc = it->probe ? run_probe(w, it, err, sizeof err) : run_fid(w, it, err, sizeof err);
        pthread_mutex_lock(&t->mu);
        if (rc) {
            if (!t->failed)
                snprintf(t->err, sizeof t->err, "%s", err[0] ? err : ddm_strerror(rc));
            t->failed = 1;
        } else {
            t->finished++;
            if (it->probe)
                PC(t, it->mode, it->row)->done = 1;
            else
                FC(t, it->mode, it->row, it->seed)->done = 1;
            if (!t->o->quiet) {
                char what[96];
                if (it->probe)
                    snprintf(what, sizeof what, "probe pass (%d trajectories)", t->o->probe_n);
                else
                    snprintf(what, sizeof what, "seed %d: FID %.2f",
                             it->seed + 1, FC(t, it->mode, it->row, it->seed)->q.fid);
                fprintf(stderr, "[%3d/%d %6.0fs] %-10s %-17s %s (%.1f s)\n", t->finished,
                        t->nitems, eval_now() - t->t0, t->rows[it->row], MODE_NAME[it->mode],
                        what, eval_now() - t0);
            }
        }
        pthread_mutex_unlock(&t->mu);
    }
    return NULL;
}

/* ---- summary -------------------------------------------------------------------------- */

typedef struct rowsum {
    double fid_mean, fid_sd, fid[16];
    int seeds;
    double calls, ips, switches, confident, label_acc;
    double vel, lip, lip_max, dis;
    int hist[EVAL_MAX_CLASSES];
} rowsum;

static void summarise(table *t, int m, int r, rowsum *s)
{
    const int S = t->o->seeds;
    memset(s, 0, sizeof *s);
    double sum = 0, images = 0, rows = 0, secs = 0, sw = 0, conf = 0, acc = 0;
    for (int k = 0; k < S; k++) {
        fcell *c = FC(t, m, r, k);
        if (k < 16)
            s->fid[k] = c->q.fid;
        sum += c->q.fid;
        images += (double)c->st.images;
        rows += c->st.rows;
        secs += c->st.seconds;
        sw += c->st.switches;
        conf += c->q.confident;
        acc += c->q.label_acc;
        if (k == 0)
            memcpy(s->hist, c->q.hist, sizeof s->hist);
    }
    s->seeds = S;
    s->fid_mean = sum / S;
    double var = 0;
    for (int k = 0; k < S; k++) {
        double e = FC(t, m, r, k)->q.fid - s->fid_mean;
        var += e * e;
    }
    s->fid_sd = S > 1 ? sqrt(var / (S - 1)) : NAN;
    s->calls = images > 0 ? rows / images : NAN;
    s->ips = secs > 0 ? images / secs : NAN;
    s->switches = images > 0 ? sw / images : NAN;
    s->confident = conf / S;
    s->label_acc = m ? acc / S : NAN;
    pcell *p = PC(t, m, r);
    if (p->done) {
        s->vel = p->pr.vel_change;
        s->lip = p->pr.lip_mean;
        s->lip_max = p->pr.lip_max;
        s->dis = p->pr.disagree_deg;
    } else {
        s->vel = s->lip = s->lip_max = s->dis = NAN;
    }
}

/* Pearson correlation of a and b [n]; NAN when either is constant. */
static double pearson(const float *a, const float *b, int n)
{
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int i = 0; i < n; i++) {
        ma += a[i];
        mb += b[i];
    }
    ma /= n;
    mb /= n;
    for (int i = 0; i < n; i++) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : NAN;
}

static void md_num(FILE *f, double v, const char *fmt)
{
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fprintf(f, "–");
}

/* Mean and sd of the floor of mode m; returns the seeds that had one. */
static int floor_stats(const table *t, int m, double *mean, double *sd)
{
    const int S = t->o->seeds;
    double fm = 0, fv = 0;
    int fn = 0;
    for (int k = 0; k < S; k++)
        if (isfinite(t->floor_fid[m][k])) {
            fm += t->floor_fid[m][k];
            fn++;
        }
    fm = fn ? fm / fn : NAN;
    for (int k = 0; k < S; k++)
        if (isfinite(t->floor_fid[m][k]))
            fv += (t->floor_fid[m][k] - fm) * (t->floor_fid[m][k] - fm);
    *mean = fm;
    *sd = fn > 1 ? sqrt(fv / (fn - 1)) : NAN;
    return fn;
}

static int write_reports(table *t, double wall, double cpu, char *err, size_t errlen)
{
    const eval_opts *o = t->o;
    FILE *md = eval_fopen(o, "table.md", err, errlen);
    if (!md)
        return DDM_EIO;
    FILE *csv = eval_fopen(o, "table.csv", err, errlen);
    if (!csv) {
        fclose(md);
        return DDM_EIO;
    }
    const int S = o->seeds;
    double fm, fsd;
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    fprintf(md, "# %s: routing strategies side by side\n\n", o->data);
    fprintf(md, "Written by `%s` on %s in %.0f s wall, %.0f s CPU (%d worker threads).\n\n",
            o->command, date, wall, cpu, o->jobs);
    if (t->weights[0])
        fprintf(md, "- Weights (sha256): %s.\n", t->weights);
    fprintf(md, "- Samples: %s, %d Euler steps. FID per row and seed from %ld unconditional "
            "samples", o->url[0] ? o->url : o->models, o->steps, t->n_mode[0]);
    if (t->modes[1])
        fprintf(md, " and %ld class-conditional samples (%ld per class, guidance %g)",
                t->n_mode[1], t->n_mode[1] / t->C, o->guidance);
    fprintf(md, "; %d run seeds (%llu..%llu), mean ± standard deviation.\n", S,
            (unsigned long long)o->seed, (unsigned long long)(o->seed + S - 1));
    fprintf(md, "- FID: %s penultimate features (%d wide) against the %ld held-out images. "
            "With this few samples FID is biased upwards; compare rows with each other and with "
            "the floor, not with published numbers.\n", o->classifier, t->ref->held_stats.d,
            t->ref->held_n);
    fprintf(md, "- Floor: as many real training images as samples, against the same held-out "
            "set (one subset per seed); a perfect generator would score about this.\n");
    if (t->probes)
        fprintf(md, "- Trajectory measures (velocity change, Lipschitz, disagreement) from %d "
                "trajectories per row (run seed %llu), probed every %d steps; Lipschitz step "
                "%g RMS per pixel.\n", o->probe_n, (unsigned long long)o->seed, o->every,
                o->eps);
    else
        fprintf(md, "- Trajectory measures need the models in-process; not measured through "
                "--url.\n");
    fprintf(md, "- images/s: sampling alone, one core per row (rows run side by side, "
            "OpenBLAS single-threaded).\n");
    fprintf(csv, "mode,row,fid_mean,fid_sd");
    for (int k = 0; k < S; k++)
        fprintf(csv, ",fid_seed%llu", (unsigned long long)(o->seed + k));
    fprintf(csv, ",calls_per_image,images_per_s,switches_per_traj,velocity_change,lipschitz_mean,"
                 "lipschitz_max,disagreement_deg,confident,label_accuracy,n_per_seed,seeds,steps,"
                 "guidance\n");
    for (int m = 0; m < MODES; m++) {
        if (!t->modes[m] || !floor_stats(t, m, &fm, &fsd))
            continue;
        fprintf(csv, "%s,training-data,%.4f,%.4f", m ? "conditional" : "unconditional", fm, fsd);
        for (int k = 0; k < S; k++)
            fprintf(csv, ",%.4f", t->floor_fid[m][k]);
        fprintf(csv, ",,,,,,,,,%ld,%d,,\n", t->floor_n[m], S);
    }
    for (int m = 0; m < MODES; m++) {
        if (!t->modes[m])
            continue;
        int fn = floor_stats(t, m, &fm, &fsd);
        fprintf(md, "\n## %s%s\n\n", m ? "Class-conditional" : "Unconditional",
                m ? "" : "");
        if (m)
            fprintf(md, "Each class asked for equally often, classifier-free guidance %g.\n\n",
                    o->guidance);
        fprintf(md, "| row | FID | expert calls / image | images/s | switches / trajectory | "
                    "velocity change | Lipschitz mean / max | disagreement (°) | confident |%s\n",
                m ? " label accuracy |" : "");
        fprintf(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|%s\n", m ? "---:|" : "");
        if (fn)
            fprintf(md, "| *training data (floor, %ld images)* | %.2f ± %.2f | | | | | | | |%s\n",
                    t->floor_n[m], fm, isfinite(fsd) ? fsd : 0.0, m ? " |" : "");
        for (int r = 0; r < t->nrows; r++) {
            rowsum s;
            summarise(t, m, r, &s);
            fprintf(md, "| %s | ", t->rows[r]);
            md_num(md, s.fid_mean, "%.2f");
            if (isfinite(s.fid_sd))
                fprintf(md, " ± %.2f", s.fid_sd);
            fprintf(md, " | ");
            md_num(md, s.calls, "%.0f");
            fprintf(md, " | ");
            md_num(md, s.ips, "%.1f");
            fprintf(md, " | ");
            md_num(md, s.switches, "%.2f");
            fprintf(md, " | ");
            md_num(md, s.vel, "%.3f");
            fprintf(md, " | ");
            md_num(md, s.lip, "%.2f");
            fprintf(md, " / ");
            md_num(md, s.lip_max, "%.1f");
            fprintf(md, " | ");
            md_num(md, s.dis, "%.1f");
            fprintf(md, " | %.0f%% |", 100 * s.confident);
            if (m)
                fprintf(md, " %.0f%% |", 100 * s.label_acc);
            fprintf(md, "\n");
            fprintf(csv, "%s,%s,%.4f,%.4f", m ? "conditional" : "unconditional", t->rows[r],
                    s.fid_mean, s.fid_sd);
            for (int k = 0; k < S; k++)
                fprintf(csv, ",%.4f", FC(t, m, r, k)->q.fid);
            fprintf(csv, ",%.3f,%.3f,%.4f,%.5f,%.4f,%.4f,%.3f,%.4f,%.4f,%ld,%d,%d,%g\n", s.calls,
                    s.ips, s.switches, s.vel, s.lip, s.lip_max, s.dis, s.confident, s.label_acc,
                    t->n_mode[m], S, o->steps, m ? o->guidance : 1.0);
        }
        fprintf(md, "\nClass histogram of the first seed's samples (classifier's verdict):\n\n"
                    "| row |");
        for (int c = 0; c < t->C; c++) {
            char nb[64];
            fprintf(md, " %s |", eval_class_name(t->ref, c, nb, sizeof nb));
        }
        fprintf(md, "\n|---|");
        for (int c = 0; c < t->C; c++)
            fprintf(md, "---:|");
        fprintf(md, "\n");
        for (int r = 0; r < t->nrows; r++) {
            fprintf(md, "| %s |", t->rows[r]);
            for (int c = 0; c < t->C && c < EVAL_MAX_CLASSES; c++)
                fprintf(md, " %d |", FC(t, m, r, 0)->q.hist[c]);
            fprintf(md, "\n");
        }
        if (t->probes && t->K >= 2) {
            fprintf(md, "\nDoes disagreement go with bad samples? Correlation (Pearson r) between "
                        "a trajectory's mean expert disagreement and its sample's classifier "
                        "confidence, over the %d probe trajectories of each row:", o->probe_n);
            for (int r = 0; r < t->nrows; r++) {
                pcell *p = PC(t, m, r);
                if (!p->done || !p->pr.disagree)
                    continue;
                fprintf(md, " %s %+.2f%s", t->rows[r], pearson(p->pr.disagree, p->conf, p->pr.n),
                        r + 1 < t->nrows ? "," : ".");
            }
            fprintf(md, "\n");
        }
    }
    fprintf(md, "\n## Columns\n\n"
        "- **FID**: Fréchet distance between the classifier features of the samples and of the "
        "held-out images (lower is better).\n"
        "- **expert calls / image**: expert network evaluations (latent rows) per image over all "
        "steps; guidance doubles them (conditional and null rows).\n"
        "- **switches / trajectory**: evaluations whose selected expert set differs from the "
        "previous one.\n"
        "- **velocity change**: mean |v_i - v_(i-1)| / |v_(i-1)| of the combined velocity between "
        "consecutive steps.\n"
        "- **Lipschitz**: |v(x + d) - v(x)| / |d| of the combined velocity field, routing "
        "included, for small random d at probed steps: mean over all probes, and the largest "
        "(a routing switch between x and x + d shows up there).\n"
        "- **disagreement**: mean pairwise angle between all K experts' predicted clean images "
        "x0 = x_t - t v_k at the trajectory's points, whatever the row selected (velocities "
        "would be dominated by the noise every expert shares).\n"
        "- **confident**: share of samples whose classifier max softmax exceeds %.1f; "
        "**label accuracy**: share classified as the class asked for.\n", JUDGE_CONFIDENT);
    fprintf(md, "\nPlots: fid-unconditional.png, fid-conditional.png (FID per row), "
                "disagreement.png (per-sample disagreement vs classifier confidence), "
                "routing.png (mean routing weight per expert over t), samples-*.png "
                "(first samples of each row).\n");
    return eval_fclose_reports(o, &md, &csv, "table.md or table.csv", err, errlen);
}

static int write_plots(table *t, char *err, size_t errlen)
{
    const eval_opts *o = t->o;
    char path[EVAL_PATH + 64], name[GEN_NAME + 32], slug[GEN_NAME];
    int rc = 0;
    /* FID bars */
    for (int m = 0; m < MODES && !rc; m++) {
        if (!t->modes[m])
            continue;
        const char *labels[MAX_ROWS + 1];
        double v[MAX_ROWS + 1], sd[MAX_ROWS + 1];
        int n = 0;
        double fm, fsd;
        if (floor_stats(t, m, &fm, &fsd)) {
            labels[n] = "floor";
            v[n] = fm;
            sd[n++] = fsd;
        }
        for (int r = 0; r < t->nrows; r++) {
            rowsum s;
            summarise(t, m, r, &s);
            labels[n] = t->rows[r];
            v[n] = s.fid_mean;
            sd[n++] = s.fid_sd;
        }
        snprintf(path, sizeof path, "%s/fid-%s.png", o->out, m ? "conditional" : "unconditional");
        char title[128];
        snprintf(title, sizeof title, "%s FID, %s (lower is better)", o->set, MODE_NAME[m]);
        rc = plot_bars(path, title, labels, v, sd, n, err, errlen);
    }
    /* disagreement vs confidence, routed rows of the unconditional probes */
    if (!rc && t->probes && t->K >= 2) {
        static const char *want[] = { "full", "uniform", "top-1", "top-2", "top-3", "nucleus" };
        const char *gname[6];
        int ng = 0, total = 0;
        int gi[6];
        for (size_t w = 0; w < 6; w++)
            for (int r = 0; r < t->nrows; r++)
                if (!strcmp(t->rows[r], want[w]) && PC(t, 0, r)->done && PC(t, 0, r)->pr.disagree) {
                    gname[ng] = want[w];
                    gi[ng++] = r;
                    total += PC(t, 0, r)->pr.n;
                }
        double *x = malloc((size_t)(total ? total : 1) * sizeof *x);
        double *y = malloc((size_t)(total ? total : 1) * sizeof *y);
        int *grp = malloc((size_t)(total ? total : 1) * sizeof *grp);
        if (!x || !y || !grp) {
            rc = DDM_ENOMEM;
            snprintf(err, errlen, "out of memory");
        }
        int n = 0;
        for (int g = 0; g < ng && !rc; g++) {
            pcell *p = PC(t, 0, gi[g]);
            for (int i = 0; i < p->pr.n; i++, n++) {
                x[n] = p->pr.disagree[i];
                y[n] = p->conf[i];
                grp[n] = g;
            }
        }
        if (!rc && ng > 0) {
            snprintf(path, sizeof path, "%s/disagreement.png", o->out);
            rc = plot_scatter(path, "expert disagreement vs sample quality", "disagreement (deg)",
                              "classifier confidence", x, y, grp, n, gname, ng, err, errlen);
        }
        free(x);
        free(y);
        free(grp);
    }
    /* routing heat maps over t */
    if (!rc && t->probes && t->K >= 2) {
        static const char *want[] = { "top-1", "top-2", "threshold", "nucleus", "full", "sample" };
        const double *maps[6];
        double *own[6] = { 0 };
        const char *mname[6];
        int nm = 0, cols = 0;
        for (size_t w = 0; w < 6; w++) {
            for (int r = 0; r < t->nrows; r++) {
                pcell *p = PC(t, 0, r);
                if (strcmp(t->rows[r], want[w]) || !p->done)
                    continue;
                cols = p->pr.evals;
                double *v = malloc((size_t)t->K * cols * sizeof *v);
                if (!v)
                    break;
                for (int k = 0; k < t->K; k++)
                    for (int e = 0; e < cols; e++)
                        v[(size_t)k * cols + e] = p->pr.weight[(size_t)e * t->K + k];
                own[nm] = v;
                maps[nm] = v;
                mname[nm++] = want[w];
            }
        }
        if (nm > 0) {
            snprintf(path, sizeof path, "%s/routing.png", o->out);
            rc = plot_heat(path, "mean routing weight per expert, t = 1 (left) to 0", maps, mname,
                           nm, t->K, cols, "E", "t=1", "t=0", err, errlen);
        }
        for (int i = 0; i < nm; i++)
            free(own[i]);
    }
    /* sample grids */
    for (int m = 0; m < MODES && !rc; m++) {
        for (int r = 0; r < t->nrows && t->modes[m] && !rc; r++) {
            fcell *c = FC(t, m, r, 0);
            if (!c->grid)
                continue;
            eval_slug(t->rows[r], slug, sizeof slug);
            snprintf(name, sizeof name, "samples-%s%s.png", m ? "cond-" : "", slug);
            rc = eval_write_grid(o, name, c->grid, c->grid_n, t->D,
                                 m ? c->grid_n / t->C : 8, err, errlen);
        }
    }
    return rc;
}

/* ---- the command ------------------------------------------------------------------------ */

static int parse_rows(table *t, const char *list, char *err, size_t errlen)
{
    char names[MAX_ROWS][GEN_NAME];
    int n = 0;
    if (!list[0]) {
        n = table_default_rows(t->K, names, MAX_ROWS);
    } else {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", list);
        for (char *save = NULL, *s = strtok_r(buf, ",", &save); s && n < MAX_ROWS;
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
        t->spec[t->nrows] = sp;
        memcpy(t->rows[t->nrows++], names[i], GEN_NAME);
    }
    return 0;
}

int cmd_table(const eval_opts *o)
{
    char err[2048] = "";
    table t;
    memset(&t, 0, sizeof t);
    t.o = o;
    judge *j = NULL;
    gen_source *g0 = NULL;
    eval_ref ref = { 0 };
    wctx *w = NULL;
    pthread_t *th = NULL;
    int rc = 1, nthreads = 0;
    pthread_mutex_init(&t.mu, NULL);
    t.t0 = eval_now();
    if (!(j = eval_open_judge(o, err, sizeof err)) || eval_ref_load(o, j, &ref, err, sizeof err))
        goto out;
    if (!(g0 = eval_open_source(o, err, sizeof err)))
        goto out;
    t.ref = &ref;
    t.K = gen_K(g0);
    t.D = gen_dim(g0);
    t.C = j->C;
    if (t.D != j->D) {
        snprintf(err, sizeof err, "the models make images of %d pixels, the classifier %s takes %d",
                 t.D, o->classifier, j->D);
        goto out;
    }
    if (parse_rows(&t, o->rows, err, sizeof err))
        goto out;
    eval_weights_line(g0, j, t.weights, sizeof t.weights);
    /* the monolith only where it exists */
    for (int r = 0; r < t.nrows; r++) {
        if (t.spec[r].monolith && !gen_has_monolith(g0)) {
            fprintf(stderr, "ddm-eval: note: no monolith row (%s)\n",
                    o->url[0] ? "not served by the router" : "no monolith.safetensors");
            memmove(&t.spec[r], &t.spec[r + 1], (size_t)(t.nrows - r - 1) * sizeof t.spec[0]);
            memmove(t.rows[r], t.rows[r + 1], (size_t)(t.nrows - r - 1) * GEN_NAME);
            t.nrows--;
            r--;
        }
    }
    if (t.nrows < 1) {
        snprintf(err, sizeof err, "no rows to measure");
        goto out;
    }
    t.modes[0] = (o->modes & 1) != 0;
    t.modes[1] = (o->modes & 2) != 0 && gen_classes(g0) > 0;
    if ((o->modes & 2) && gen_classes(g0) == 0)
        fprintf(stderr, "ddm-eval: note: unconditional experts: no class-conditional table\n");
    if (t.modes[1] && gen_classes(g0) != t.C) {
        snprintf(err, sizeof err, "the experts have %d label classes, the classifier %d",
                 gen_classes(g0), t.C);
        goto out;
    }
    t.n_mode[0] = o->n;
    t.n_mode[1] = o->n_cond;
    t.probes = !o->url[0] && o->probe_n > 0;
    size_t nf = (size_t)MODES * t.nrows * o->seeds, np = (size_t)MODES * t.nrows;
    t.f = calloc(nf, sizeof *t.f);
    t.p = calloc(np, sizeof *t.p);
    t.items = calloc(nf + np, sizeof *t.items);
    if (!t.f || !t.p || !t.items) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    for (int m = 0; m < MODES; m++) {
        if (!t.modes[m])
            continue;
        double gm = m ? (o->guidance != 1.0f ? 2.0 : 1.0) : 1.0;
        for (int r = 0; r < t.nrows; r++) {
            for (int s = 0; s < o->seeds; s++)
                t.items[t.nitems++] = (item){ 0, m, r, s,
                                              row_cost(&t, r) * gm * (double)t.n_mode[m] };
            if (t.probes) {
                double pc = (row_cost(&t, r) + (t.spec[r].monolith ? 0 : t.K) / (double)o->every +
                             row_cost(&t, r) / o->every) * gm * o->probe_n;
                t.items[t.nitems++] = (item){ 1, m, r, 0, pc };
            }
        }
    }
    qsort(t.items, (size_t)t.nitems, sizeof *t.items, cmp_item);
    double est = 0;
    for (int i = 0; i < t.nitems; i++)
        est += t.items[i].cost * o->steps;
    if (!o->quiet)
        fprintf(stderr, "ddm-eval: table of %d rows x %s: %ld unconditional%s samples per row "
                "per seed, %d seeds, %d probe trajectories per row; %d items, ~%.1fM expert rows, "
                "%d worker threads\n", t.nrows,
                t.modes[0] && t.modes[1] ? "2 modes" : t.modes[1] ? "conditional" : "unconditional",
                t.n_mode[0], t.modes[1] ? "" : " (no conditional)", o->seeds,
                t.probes ? o->probe_n : 0, t.nitems, est / 1e6, o->jobs);
    if (t.modes[1] && !o->quiet)
        fprintf(stderr, "ddm-eval: class-conditional: %ld samples per row per seed "
                "(%ld per class), guidance %g\n", t.n_mode[1], t.n_mode[1] / t.C, o->guidance);
    /* the floor, per mode (its sample count) and seed */
    for (int m = 0; m < MODES; m++) {
        for (int s = 0; s < o->seeds; s++) {
            char ferr[512];
            t.floor_fid[m][s] = NAN;
            if (t.modes[m] && eval_floor(&ref, j, t.n_mode[m], o->seed + (uint64_t)s,
                                         &t.floor_fid[m][s], &t.floor_n[m], ferr, sizeof ferr) &&
                s == 0)
                fprintf(stderr, "ddm-eval: note: no FID floor: %s\n", ferr);
        }
    }
    /* workers: worker 0 reuses g0 and j */
    nthreads = o->jobs < 1 ? 1 : o->jobs;
    if (nthreads > 1 && !o->url[0])
        openblas_set_num_threads(1);
    w = calloc((size_t)nthreads, sizeof *w);
    th = calloc((size_t)nthreads, sizeof *th);
    if (!w || !th) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    for (int i = 0; i < nthreads; i++) {
        w[i].t = &t;
        if (i == 0) {
            w[i].g = g0;
            w[i].j = j;
        } else if (!(w[i].g = eval_open_source(o, err, sizeof err)) ||
                   !(w[i].j = eval_open_judge(o, err, sizeof err))) {
            nthreads = i + 1;
            goto out;
        }
    }
    int started = 0;
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&th[i], NULL, worker, &w[i]) != 0)
            break;
        started++;
    }
    if (started == 0) {
        snprintf(err, sizeof err, "cannot start worker threads");
        goto out;
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (t.failed) {
        snprintf(err, sizeof err, "%s", t.err);
        goto out;
    }
    double wall = eval_now() - t.t0, cpu = (double)clock() / CLOCKS_PER_SEC;
    if (write_reports(&t, wall, cpu, err, sizeof err))
        goto out;
    if (o->plots && write_plots(&t, err, sizeof err))
        goto out;
    /* the table on stdout */
    printf("%s table (%s), %.0f s: FID mean ± sd over %d seeds\n", o->data, o->out, wall,
           o->seeds);
    for (int m = 0; m < MODES; m++) {
        if (!t.modes[m])
            continue;
        printf("  %s (%ld samples per seed%s)\n", MODE_NAME[m], t.n_mode[m],
               m ? ", guidance applied" : "");
        printf("    %-12s %16s %8s %8s %8s %8s %9s %8s\n", "row", "FID", "calls", "img/s",
               "switch", "dv", "Lipschitz", "disagree");
        for (int r = 0; r < t.nrows; r++) {
            rowsum s;
            summarise(&t, m, r, &s);
            printf("    %-12s %8.2f ± %5.2f %8.0f %8.1f %8.2f %8.3f %9.2f %8.1f\n", t.rows[r],
                   s.fid_mean, isfinite(s.fid_sd) ? s.fid_sd : 0.0, s.calls, s.ips, s.switches,
                   s.vel, s.lip, s.dis);
        }
    }
    printf("wrote %s/table.md and table.csv%s\n", o->out, o->plots ? " and plots" : "");
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "ddm-eval: %s\n", err[0] ? err : "table failed");
    for (int i = 1; w && i < nthreads; i++) {
        gen_close(w[i].g);
        judge_close(w[i].j);
    }
    free(w);
    free(th);
    if (t.f)
        for (size_t i = 0; i < (size_t)MODES * t.nrows * o->seeds; i++)
            free(t.f[i].grid);
    if (t.p)
        for (size_t i = 0; i < (size_t)MODES * t.nrows; i++) {
            probe_result_free(&t.p[i].pr);
            free(t.p[i].conf);
        }
    free(t.f);
    free(t.p);
    free(t.items);
    pthread_mutex_destroy(&t.mu);
    gen_close(g0);
    eval_ref_free(&ref);
    judge_close(j);
    return rc;
}
