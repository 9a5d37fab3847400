/* cmd_coverage.c -- `ddm-eval coverage`: does each strategy draw every class
 * as often as the data has it, and if not, why?
 *
 *   clusters      each expert's share of the training data (shard_n), pi_k;
 *   calibration   the router's mean probability of each cluster on training
 *                 images noised to t, against pi (a calibrated router's mean
 *                 posterior is the prior at every t; at t = 1 the image is
 *                 pure noise and the posterior should be pi itself);
 *   per strategy  the class histogram of n unconditional samples per seed
 *                 (the same images as `table`: same seeds and chunks) and its
 *                 total-variation distance from the data's class frequencies
 *                 with a bootstrap interval; which expert carries the largest
 *                 weight at the first evaluation (t = 1) against pi; how often
 *                 that first choice is still the top expert at later
 *                 evaluations (when the trajectory commits); and the class
 *                 drawn given the first choice.
 * Writes OUT/coverage.md and coverage.csv. In-process only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/rng.h"
#include "tools/eval/cmds.h"

#define MAX_STRATS 12
#define CAL_TS 7
static const float CAL_T[CAL_TS] = { 1.0f, 0.95f, 0.9f, 0.8f, 0.7f, 0.5f, 0.3f };

/* What one strategy did over all seeds. */
typedef struct cov {
    char name[GEN_NAME];
    long n;
    int *pred;          /* [n] judge 0's class of each image */
    int *first;         /* [n] expert with the largest weight at the first evaluation */
    int *last;          /* [n] ... at the last evaluation */
    int *top;           /* [n][evals] top expert at every evaluation */
    int evals;
} cov;

static void cov_free(cov *c)
{
    free(c->pred);
    free(c->first);
    free(c->last);
    free(c->top);
}

static int top_of(const trace_entry *e)
{
    int best = 0;
    for (int j = 1; j < e->n_sel; j++)
        if (e->w[j] > e->w[best])
            best = j;
    return e->n_sel ? e->sel[best] : -1;
}

/* Samples s->n images of spec sp over o->seeds seeds with traces, judged by j. */
static int draw(const eval_opts *o, ensemble *e, judge *j, const gen_spec *sp, cov *s, char *err,
                size_t errlen)
{
    const long per = o->n, n = per * o->seeds;
    const int D = e->dim;
    s->n = n;
    s->evals = sp->steps;
    s->pred = malloc((size_t)n * sizeof *s->pred);
    s->first = malloc((size_t)n * sizeof *s->first);
    s->last = malloc((size_t)n * sizeof *s->last);
    s->top = malloc((size_t)n * s->evals * sizeof *s->top);
    float *x = malloc((size_t)GEN_CHUNK * D * sizeof *x);
    traj **tr = calloc(GEN_CHUNK, sizeof *tr);
    if (!s->pred || !s->first || !s->last || !s->top || !x || !tr) {
        free(x);
        free(tr);
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    int rc = 0;
    long at = 0;
    for (int sd = 0; sd < o->seeds && !rc; sd++)
        for (long i0 = 0, ch = 0; i0 < per && !rc; i0 += GEN_CHUNK, ch++) {
            int m = per - i0 < GEN_CHUNK ? (int)(per - i0) : GEN_CHUNK;
            sample_params p;
            sample_params_default(&p, e->K);
            p.n = m;
            p.steps = sp->steps;
            p.seed = gen_request_seed(o->seed + (uint64_t)sd, -1, (int)ch);
            p.trace = 1;
            rc = gen_spec_strategy(sp, e->K, &p.strat, err, errlen);
            rc = rc ? rc : sample_params_check(&p, e->n_classes, err, errlen);
            sample_stats ss;
            if (!rc && (rc = ensemble_sample(e, &p, x, &ss, tr)) != 0)
                snprintf(err, errlen, "%s: sampling failed: %s", sp->name, ddm_strerror(rc));
            if (!rc) {
                gen_quantize(x, (size_t)m * D);
                rc = judge_run(j, x, m, NULL, s->pred + at, NULL);
            }
            for (int i = 0; i < m; i++) {
                if (!tr[i]) {
                    rc = rc ? rc : DDM_EINVAL;
                    continue;
                }
                if (!rc) {
                    for (int ev = 0; ev < s->evals; ev++)
                        s->top[(at + i) * s->evals + ev] = top_of(&tr[i]->trace[ev]);
                    s->first[at + i] = s->top[(at + i) * s->evals];
                    s->last[at + i] = s->top[(at + i) * s->evals + s->evals - 1];
                }
                traj_free(tr[i]);
                tr[i] = NULL;
            }
            at += m;
        }
    free(x);
    free(tr);
    return rc;
}

/* TV of the class histogram of s against freq, and the 95% half-width from o->boot resamples. */
static void tv_ci(const eval_opts *o, const cov *s, const double *freq, int C, double *tv,
                  double *half)
{
    double h[EVAL_MAX_CLASSES] = { 0 };
    for (long i = 0; i < s->n; i++)
        h[s->pred[i]] += 1;
    *tv = metric_tv(h, freq, C);
    *half = NAN;
    int *cnt = malloc((size_t)s->n * sizeof *cnt);
    double *v = malloc((size_t)(o->boot > 0 ? o->boot : 1) * sizeof *v);
    if (cnt && v && o->boot > 1) {
        for (int b = 0; b < o->boot; b++) {
            metric_boot_counts(o->seed, b, s->n, cnt);
            memset(h, 0, sizeof h);
            for (long i = 0; i < s->n; i++)
                h[s->pred[i]] += cnt[i];
            v[b] = metric_tv(h, freq, C);
        }
        double mean, sd;
        metric_mean_sd(v, o->boot, &mean, &sd);
        *half = 1.96 * sd;
    }
    free(cnt);
    free(v);
}

/* Mean router probabilities [CAL_TS][K] on the training images noised to each t. */
static int calibration(const eval_ref *r, ensemble *e, double *mean)
{
    const model *rt = e->router;
    const int K = e->K, D = e->dim, CH = 256;
    const long n = r->train_n;
    net_scratch *s = net_scratch_new(&rt->cfg, CH, 0);
    float *x = malloc((size_t)CH * D * sizeof *x), *lg = malloc((size_t)CH * K * sizeof *lg);
    float *tt = malloc((size_t)CH * sizeof *tt), *p = malloc((size_t)K * sizeof *p);
    int rc = (!s || !x || !lg || !tt || !p) ? DDM_ENOMEM : 0;
    memset(mean, 0, (size_t)CAL_TS * K * sizeof *mean);
    for (int ti = 0; ti < CAL_TS && !rc; ti++) {
        float t = CAL_T[ti];
        for (long r0 = 0; r0 < n && !rc; r0 += CH) {
            int m = n - r0 < CH ? (int)(n - r0) : CH;
            rng_normal_fill(0xCA1, (uint64_t)ti, (uint64_t)r0 * D, x, (size_t)m * D);
            for (int i = 0; i < m; i++) {
                tt[i] = t;
                for (int d = 0; d < D; d++) {
                    size_t q = (size_t)i * D + d;
                    x[q] = (1 - t) * r->train[(size_t)(r0 + i) * D + d] + t * x[q];
                }
            }
            rc = net_forward(&rt->cfg, &rt->w, s, m, x, tt, NULL, lg);
            for (int i = 0; i < m && !rc; i++) {
                strategy_softmax(lg + (size_t)i * K, K, 1.0f, p);
                for (int k = 0; k < K; k++)
                    mean[ti * K + k] += p[k] / (double)n;
            }
        }
    }
    net_scratch_free(s);
    free(x);
    free(lg);
    free(tt);
    free(p);
    return rc;
}

int cmd_coverage(const eval_opts *o)
{
    char err[2048] = "";
    eval_judges js = { 0 };
    eval_ref ref = { 0 };
    gen_source *g = NULL;
    cov s[MAX_STRATS];
    int ns = 0, rc = 1;
    memset(s, 0, sizeof s);
    FILE *md = NULL, *csv = NULL;
    double t0 = eval_now();
    if (o->url[0]) {
        snprintf(err, sizeof err, "coverage reads the routing of every step: in-process only "
                 "(drop --url)");
        goto out;
    }
    if (eval_open_judges(o, &js, err, sizeof err) || eval_ref_load(o, &js, &ref, err, sizeof err))
        goto out;
    if (!(g = eval_open_source(o, err, sizeof err)))
        goto out;
    ensemble *e = gen_ensemble(g);
    const int K = e->K, C = ref.C;
    if (!ref.train) {
        snprintf(err, sizeof err, "coverage needs the training images (for the router's "
                 "calibration): run `make data` or pass --train");
        goto out;
    }
    double pi[STRAT_MAX_EXPERTS], tot = 0;
    for (int k = 0; k < K; k++) {
        const char *v = model_meta(e->experts[k], "shard_n");
        pi[k] = v ? atof(v) : 0;
        tot += pi[k];
    }
    for (int k = 0; k < K; k++)
        pi[k] = tot > 0 ? pi[k] / tot : 1.0 / K;
    double cal[CAL_TS * STRAT_MAX_EXPERTS];
    if (calibration(&ref, e, cal)) {
        snprintf(err, sizeof err, "router calibration: out of memory");
        goto out;
    }
    char buf[512];
    snprintf(buf, sizeof buf, "%s", o->strategies);
    for (char *save = NULL, *name = strtok_r(buf, ",", &save); name && ns < MAX_STRATS;
         name = strtok_r(NULL, ",", &save)) {
        gen_spec sp;
        gen_spec_init(&sp, name);
        sp.steps = o->steps;
        if (sp.monolith) {
            snprintf(err, sizeof err, "coverage: the monolith has no routing; list strategies");
            goto out;
        }
        snprintf(s[ns].name, sizeof s[ns].name, "%s", name);
        if (!o->quiet)
            fprintf(stderr, "ddm-eval: coverage: %s, %d x %ld samples...\n", name, o->seeds, o->n);
        if (draw(o, e, js.j[0], &sp, &s[ns++], err, sizeof err))
            goto out;
    }
    if (eval_fopen_reports(o, "coverage.md", "coverage.csv", &md, &csv, err, sizeof err))
        goto out;
    char wl[1024], nb[64];
    eval_weights_line(g, &js, wl, sizeof wl);
    fprintf(md, "# %s: class coverage and why it fails\n\nWritten by `%s` in %.0f s.\n\n"
            "- Weights (sha256): %s.\n- Per strategy %d seeds x %ld unconditional samples "
            "(the `table` images), %d Euler steps, classes read by the %s judge; intervals: "
            "95%% bootstrap, %d resamples.\n", o->set, o->command, eval_now() - t0, wl,
            o->seeds, o->n, o->steps, js.j[0]->name, o->boot);
    fprintf(md, "\n## The router's calibration\n\nMean router probability of each cluster on "
            "the %ld training images noised to t (x_t = (1 - t) x0 + t eps), against the "
            "cluster's share of the data pi. A calibrated router matches pi at every t.\n\n"
            "| t |", ref.train_n);
    for (int k = 0; k < K; k++)
        fprintf(md, " E%d |", k);
    fprintf(md, " TV from pi |\n|---|");
    for (int k = 0; k <= K; k++)
        fprintf(md, "---:|");
    fprintf(md, "\n| *pi (cluster share)* |");
    for (int k = 0; k < K; k++)
        fprintf(md, " %.3f |", pi[k]);
    fprintf(md, " |\n");
    fprintf(csv, "section,name,t_or_eval,k_or_class,value\n");
    for (int k = 0; k < K; k++)
        fprintf(csv, "pi,,,%d,%.5f\n", k, pi[k]);
    for (int ti = 0; ti < CAL_TS; ti++) {
        fprintf(md, "| %.2f |", CAL_T[ti]);
        for (int k = 0; k < K; k++) {
            fprintf(md, " %.3f |", cal[ti * K + k]);
            fprintf(csv, "calibration,,%.2f,%d,%.5f\n", CAL_T[ti], k, cal[ti * K + k]);
        }
        fprintf(md, " %.3f |\n", metric_tv(cal + ti * K, pi, K));
    }
    fprintf(md, "\n## Class histograms\n\nAll seeds pooled; TV from the data's class "
            "frequencies.\n\n| strategy | TV |");
    for (int c = 0; c < C; c++)
        fprintf(md, " %s |", eval_class_name(&ref, c, nb, sizeof nb));
    fprintf(md, "\n|---|---:|");
    for (int c = 0; c < C; c++)
        fprintf(md, "---:|");
    fprintf(md, "\n| *data* | |");
    for (int c = 0; c < C; c++)
        fprintf(md, " %.0f |", ref.class_freq[c] * o->n * o->seeds);
    fprintf(md, "\n");
    for (int i = 0; i < ns; i++) {
        double tv, half, h[EVAL_MAX_CLASSES] = { 0 };
        tv_ci(o, &s[i], ref.class_freq, C, &tv, &half);
        for (long q = 0; q < s[i].n; q++)
            h[s[i].pred[q]] += 1;
        fprintf(md, "| %s | %.3f ± %.3f |", s[i].name, tv, half);
        for (int c = 0; c < C; c++) {
            fprintf(md, " %.0f |", h[c]);
            fprintf(csv, "class,%s,,%d,%.0f\n", s[i].name, c, h[c]);
        }
        fprintf(md, "\n");
        fprintf(csv, "tv,%s,,,%.5f\ntv_ci,%s,,,%.5f\n", s[i].name, tv, s[i].name, half);
    }
    fprintf(md, "\n## The first choice\n\nShare of trajectories whose largest routing weight "
            "at the first evaluation (t = 1, pure noise) is on expert k, against pi; and how "
            "often that first choice is still the top expert at later evaluations.\n\n"
            "| strategy |");
    for (int k = 0; k < K; k++)
        fprintf(md, " E%d |", k);
    fprintf(md, " TV from pi |");
    static const int AT[] = { 5, 10, 15, 20, 25, 30, 40, 49 };
    for (size_t a = 0; a < sizeof AT / sizeof AT[0]; a++)
        fprintf(md, " same at eval %d |", AT[a]);
    fprintf(md, "\n|---|");
    for (size_t k = 0; k < (size_t)K + 1 + sizeof AT / sizeof AT[0]; k++)
        fprintf(md, "---:|");
    fprintf(md, "\n| *pi* |");
    for (int k = 0; k < K; k++)
        fprintf(md, " %.3f |", pi[k]);
    fprintf(md, " |");
    for (size_t a = 0; a < sizeof AT / sizeof AT[0]; a++)
        fprintf(md, " |");
    fprintf(md, "\n");
    for (int i = 0; i < ns; i++) {
        double f[STRAT_MAX_EXPERTS] = { 0 };
        for (long q = 0; q < s[i].n; q++)
            if (s[i].first[q] >= 0)
                f[s[i].first[q]] += 1.0 / s[i].n;
        fprintf(md, "| %s |", s[i].name);
        for (int k = 0; k < K; k++) {
            fprintf(md, " %.3f |", f[k]);
            fprintf(csv, "first,%s,0,%d,%.5f\n", s[i].name, k, f[k]);
        }
        fprintf(md, " %.3f |", metric_tv(f, pi, K));
        for (size_t a = 0; a < sizeof AT / sizeof AT[0]; a++) {
            int ev = AT[a] < s[i].evals ? AT[a] : s[i].evals - 1;
            long same = 0;
            for (long q = 0; q < s[i].n; q++)
                same += s[i].top[q * s[i].evals + ev] == s[i].first[q];
            fprintf(md, " %.2f |", (double)same / s[i].n);
            fprintf(csv, "commit,%s,%d,,%.5f\n", s[i].name, ev, (double)same / s[i].n);
        }
        fprintf(md, "\n");
    }
    fprintf(md, "\n## The class drawn given the first choice\n\nPer strategy and first-choice "
            "expert: trajectories, and the share of each class among their images.\n");
    for (int i = 0; i < ns; i++) {
        fprintf(md, "\n**%s**\n\n| first expert | trajectories |", s[i].name);
        for (int c = 0; c < C; c++)
            fprintf(md, " %s |", eval_class_name(&ref, c, nb, sizeof nb));
        fprintf(md, "\n|---|---:|");
        for (int c = 0; c < C; c++)
            fprintf(md, "---:|");
        fprintf(md, "\n");
        for (int k = 0; k < K; k++) {
            long nk = 0, h[EVAL_MAX_CLASSES] = { 0 };
            for (long q = 0; q < s[i].n; q++)
                if (s[i].first[q] == k) {
                    nk++;
                    h[s[i].pred[q]]++;
                }
            if (!nk)
                continue;
            fprintf(md, "| E%d | %ld |", k, nk);
            for (int c = 0; c < C; c++)
                fprintf(md, " %.0f%% |", 100.0 * h[c] / nk);
            fprintf(md, "\n");
        }
    }
    if (eval_fclose_reports(o, &md, &csv, "coverage.md or coverage.csv", err, sizeof err))
        goto out;
    printf("%s coverage (%s): class TV from the data's frequencies, %d x %ld samples\n",
           o->set, o->out, o->seeds, o->n);
    for (int i = 0; i < ns; i++) {
        double tv, half;
        tv_ci(o, &s[i], ref.class_freq, C, &tv, &half);
        printf("  %-16s TV %.3f ± %.3f\n", s[i].name, tv, half);
    }
    printf("wrote %s/coverage.md and coverage.csv\n", o->out);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "ddm-eval: %s\n", err[0] ? err : "coverage failed");
    if (md)
        fclose(md);
    if (csv)
        fclose(csv);
    for (int i = 0; i < ns; i++)
        cov_free(&s[i]);
    gen_close(g);
    eval_ref_free(&ref);
    eval_close_judges(&js);
    return rc;
}
