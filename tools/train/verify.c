/* verify.c -- ddm-train verify: sample quality of a trained set, judged by
 * its own classifier.
 *
 * Samples go through the same in-process sampler and routing library as
 * ddm-router and ddm-eval (router/local.h). Two numbers are measured:
 *   confident rate: unconditional top-2 samples whose classifier softmax
 *                   maximum exceeds 0.9;
 *   label accuracy: samples asked for a label (guidance --guidance, equal
 *                   numbers per class) that the classifier calls that label.
 * The monolith, when present, is measured the same way for comparison.
 * When OUT/judge-conv.safetensors exists, the conv judge gives its own
 * confident rate of the same unconditional samples. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/png.h"
#include "router/local.h"
#include "tools/train/cmds.h"
#include "tools/train/tasks.h"

#define CONFIDENT 0.9f
#define CHUNK 250

/* n samples (chunks of CHUNK, seed + chunk index) into out [n][dim], clamped
 * to [-1, 1]. Returns 0 or an error with a message. */
static int draw(ensemble *e, const strategy *st, int label, float guidance, int n, int steps,
                uint64_t seed, float *out, double *secs, char *err, size_t errlen)
{
    *secs = 0.0;
    for (int i0 = 0, ch = 0; i0 < n; i0 += CHUNK, ch++) {
        sample_params p;
        sample_params_default(&p, e->K);
        p.n = n - i0 < CHUNK ? n - i0 : CHUNK;
        p.steps = steps;
        p.seed = seed + (uint64_t)ch;
        p.strat = *st;
        p.label = label;
        p.guidance = guidance;
        if (sample_params_check(&p, e->n_classes, err, errlen))
            return DDM_EINVAL;
        sample_stats ss;
        int rc = ensemble_sample(e, &p, out + (size_t)i0 * e->dim, &ss, NULL);
        if (rc) {
            snprintf(err, errlen, "sampling failed: %s", ddm_strerror(rc));
            return rc;
        }
        *secs += ss.seconds;
    }
    for (size_t i = 0; i < (size_t)n * e->dim; i++)
        out[i] = out[i] < -1.0f ? -1.0f : (out[i] > 1.0f ? 1.0f : out[i]);
    return 0;
}

typedef struct quality {
    double confident;     /* unconditional: share with max prob > CONFIDENT */
    double confident_conv; /* the same by the conv judge (NAN without one) */
    int hist[64];         /* unconditional: predicted class counts */
    double label_acc;     /* label-asked: share classified as asked */
    double secs;
} quality;

/* Measures one set; keeps the first samples for grids when u64 / lab80 not NULL. */
static int measure(ensemble *e, const strategy *st, const model *cls, const conv_model *jc,
                   const train_cfg *c, quality *q, float *u64, float *lab80, char *err,
                   size_t errlen)
{
    const int n = c->samples, D = e->dim, C = cls->cfg.out_dim;
    const int per = n / (C > 0 ? C : 1) > 0 ? n / C : 1;
    float *x = malloc((size_t)(n > per ? n : per) * D * sizeof *x);
    float *conf = malloc((size_t)n * sizeof *conf);
    int *pred = malloc((size_t)n * sizeof *pred);
    memset(q, 0, sizeof *q);
    int rc = (!x || !conf || !pred) ? DDM_ENOMEM : 0;
    double secs = 0.0;
    if (rc)
        snprintf(err, errlen, "verify: out of memory");
    uint64_t seed = cfg_seed(c, "verify", 0);
    rc = rc ? rc : draw(e, st, -1, 1.0f, n, c->sample_steps, seed, x, &secs, err, errlen);
    rc = rc ? rc : classifier_predict(&cls->cfg, cls->params, n, x, pred, conf);
    if (!rc) {
        q->secs += secs;
        int hit = 0;
        for (int i = 0; i < n; i++) {
            hit += conf[i] > CONFIDENT;
            if (pred[i] >= 0 && pred[i] < 64)
                q->hist[pred[i]]++;
        }
        q->confident = (double)hit / n;
        q->confident_conv = NAN;
        conv_scratch *js = jc ? conv_scratch_new(&jc->cfg, 256, 0) : NULL;
        if (js && conv_classify(&jc->cfg, &jc->w, js, n, x, NULL, NULL, conf) == 0) {
            hit = 0;
            for (int i = 0; i < n; i++)
                hit += conf[i] > CONFIDENT;
            q->confident_conv = (double)hit / n;
        }
        conv_scratch_free(js);
        if (u64)
            memcpy(u64, x, (size_t)(n < 64 ? n : 64) * D * sizeof *x);
    }
    int right = 0, total = 0;
    for (int k = 0; k < C && !rc && e->n_classes > 0; k++) {
        rc = draw(e, st, k, c->guidance, per, c->sample_steps, seed + 1000 * (uint64_t)(k + 1),
                  x, &secs, err, errlen);
        rc = rc ? rc : classifier_predict(&cls->cfg, cls->params, per, x, pred, NULL);
        if (rc)
            break;
        q->secs += secs;
        for (int i = 0; i < per; i++)
            right += pred[i] == k;
        total += per;
        if (lab80 && k < 10)
            memcpy(lab80 + (size_t)k * 8 * D, x, (size_t)(per < 8 ? per : 8) * D * sizeof *x);
    }
    if (!rc)
        q->label_acc = total ? (double)right / total : NAN;
    if (rc && !err[0])
        snprintf(err, errlen, "verify: %s", ddm_strerror(rc));
    free(x);
    free(conf);
    free(pred);
    return rc;
}

static void report(const char *name, const quality *q, int C, const train_cfg *c)
{
    printf("verify %-9s confident(>%.1f) %5.1f%%   label accuracy (g=%g) %5.1f%%   %.1f s\n",
           name, CONFIDENT, 100 * q->confident, c->guidance, 100 * q->label_acc, q->secs);
    if (isfinite(q->confident_conv))
        printf("  confident by the conv judge: %5.1f%%\n", 100 * q->confident_conv);
    printf("  unconditional class histogram:");
    for (int k = 0; k < C && k < 64; k++)
        printf(" %d", q->hist[k]);
    printf("\n");
}

int cmd_verify(const train_cfg *c)
{
    char err[4096] = "", path[CFG_PATH + 64];
    snprintf(path, sizeof path, "%s/classifier.safetensors", c->out);
    model *cls = model_open(path, err, sizeof err);
    if (!cls) {
        fprintf(stderr, "ddm-train: %s\n", err);
        return 1;
    }
    ensemble *e = ensemble_open(c->out, err, sizeof err);
    int rc = e ? 0 : 1;
    char jpath[CFG_PATH + 64], jerr[512];
    snprintf(jpath, sizeof jpath, "%s/judge-conv.safetensors", c->out);
    conv_model *jc = rc ? NULL : conv_open(jpath, jerr, sizeof jerr);
    if (!rc && !jc)
        printf("verify: no conv judge (%s)\n", jerr);
    float *u64 = NULL, *lab80 = NULL;
    quality q;
    if (!rc) {
        u64 = calloc((size_t)64 * e->dim, sizeof *u64);
        lab80 = calloc((size_t)80 * e->dim, sizeof *lab80);
        strategy st;
        rc = (!u64 || !lab80) ||
             strategy_parse(c->strategy, e->K, NAN, NAN, &st, err, sizeof err);
        printf("verify: %s, %d samples per measurement, %d Euler steps, classifier %s\n", c->out,
               c->samples, c->sample_steps, path);
        rc = rc ? rc : measure(e, &st, cls, jc, c, &q, u64, lab80, err, sizeof err);
        if (!rc)
            report(c->strategy, &q, cls->cfg.out_dim, c);
    }
    if (!rc && c->grids[0]) {
        char g[CFG_PATH + 32];
        const model_shape *sh = &cls->shape; /* the images' shape, as training saw them */
        snprintf(g, sizeof g, "%s-top2.png", c->grids);
        rc = pngio_write_grid_ch(g, u64, 64, sh->width, sh->height, sh->channels, 8, err,
                                 sizeof err);
        if (!rc && e->n_classes > 0) {
            snprintf(g, sizeof g, "%s-labels.png", c->grids);
            rc = pngio_write_grid_ch(g, lab80, 80, sh->width, sh->height, sh->channels, 8, err,
                                     sizeof err);
        }
        if (!rc)
            printf("verify: wrote %s-top2.png and %s-labels.png\n", c->grids, c->grids);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/monolith.safetensors", c->out);
        ensemble *m = ensemble_open_single(path, err, sizeof err);
        if (m) {
            strategy st;
            rc = strategy_parse("expert:0", 1, NAN, NAN, &st, err, sizeof err);
            rc = rc ? rc : measure(m, &st, cls, jc, c, &q, NULL, NULL, err, sizeof err);
            if (!rc)
                report("monolith", &q, cls->cfg.out_dim, c);
            ensemble_close(m);
        } else {
            printf("verify: no monolith measured (%s)\n", err);
        }
    }
    fflush(stdout);
    if (rc)
        fprintf(stderr, "ddm-train: %s\n", err[0] ? err : "verify failed");
    free(u64);
    free(lab80);
    ensemble_close(e);
    conv_close(jc);
    model_close(cls);
    return rc ? 1 : 0;
}
