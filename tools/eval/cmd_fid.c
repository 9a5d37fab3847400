/* cmd_fid.c -- `ddm-eval fid`: FID of one strategy against the held-out set,
 * beside the floor (training images vs held-out at the same n), the class
 * histogram and the confident-sample rate. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "tools/eval/cmds.h"

static int fail(const char *err)
{
    fprintf(stderr, "ddm-eval: %s\n", err);
    return 1;
}

int cmd_fid(const eval_opts *o)
{
    char err[2048] = "";
    eval_judges js;
    if (eval_open_judges(o, &js, err, sizeof err))
        return fail(err);
    judge *j = js.j[0];
    eval_ref ref;
    gen_source *g = NULL;
    float *x = NULL;
    int *asked = NULL, rc = 1;
    eval_quality q = { 0 }, fq = { 0 };
    if (eval_ref_load(o, &js, &ref, err, sizeof err)) {
        eval_close_judges(&js);
        return fail(err);
    }
    if (!(g = eval_open_source(o, err, sizeof err)))
        goto out;
    if (gen_dim(g) != j->D) {
        snprintf(err, sizeof err, "the models make images of %d pixels, the classifier %s takes %d",
                 gen_dim(g), o->classifier, j->D);
        goto out;
    }
    if (o->label >= gen_classes(g) || ((o->label >= 0 || o->conditional) && gen_classes(g) < 1)) {
        snprintf(err, sizeof err, "--label %d: the set has %d label classes%s", o->label,
                 gen_classes(g), gen_classes(g) ? "" : " (unconditional experts)");
        goto out;
    }
    gen_spec sp;
    gen_spec_init(&sp, o->strategy);
    sp.steps = o->steps;
    sp.guidance = o->guidance;
    strategy st;
    if (gen_spec_strategy(&sp, sp.monolith ? 1 : gen_K(g), &st, err, sizeof err))
        goto out;
    x = malloc((size_t)o->n * (size_t)j->D * sizeof *x);
    asked = malloc((size_t)o->n * sizeof *asked);
    if (!x || !asked) {
        snprintf(err, sizeof err, "out of memory for %ld images", o->n);
        goto out;
    }
    gen_stats gs = { 0 };
    if (!o->quiet)
        fprintf(stderr, "ddm-eval: sampling %ld images with %s (%d steps)...\n", o->n, sp.name,
                o->steps);
    int e = o->conditional
                ? gen_draw_classes(g, &sp, o->seed, o->n, x, asked, &gs, err, sizeof err)
                : gen_draw(g, &sp, o->label, o->seed, o->n, x, &gs, err, sizeof err);
    if (e)
        goto out;
    if (!o->conditional)
        for (long i = 0; i < o->n; i++)
            asked[i] = o->label;
    if (eval_quality_of(&js, &ref, x, o->n, (o->conditional || o->label >= 0) ? asked : NULL,
                        o->boot, o->seed, NULL, &q, err, sizeof err))
        goto out;
    char ferr[512] = "";
    int have_floor = eval_floor(&ref, &js, o->n, o->seed, &fq, ferr, sizeof ferr) == 0;

    const char *what = o->conditional ? "class-balanced labels" : o->label >= 0 ? "label" : "unconditional";
    printf("fid %s: %s, %ld images, %d Euler steps, run seed %llu, %s", sp.name,
           o->url[0] ? o->url : o->models, o->n, o->steps, (unsigned long long)o->seed, what);
    if (o->label >= 0)
        printf(" %d", o->label);
    if (o->conditional || o->label >= 0)
        printf(", guidance %g", o->guidance);
    printf("\n");
    for (int k = 0; k < q.judges; k++) {
        const eval_jq *v = &q.j[k];
        double half[EVAL_STATS];
        for (int s = 0; s < EVAL_STATS; s++) {
            double *r = q.boot > 1 ? malloc((size_t)q.boot * sizeof *r) : NULL, mean, sd = NAN;
            for (int b = 0; r && b < q.boot; b++)
                r[b] = q.boot_val[((size_t)k * q.boot + b) * EVAL_STATS + s];
            if (r)
                metric_mean_sd(r, q.boot, &mean, &sd);
            half[s] = 1.96 * sd;
            free(r);
        }
        if (q.boot > 1)
            printf("  judge %s (%d features; ± 95%% bootstrap half-width, %d resamples)\n",
                   js.j[k]->name, js.j[k]->H, q.boot);
        else
            printf("  judge %s (%d features)\n", js.j[k]->name, js.j[k]->H);
        char pm[EVAL_STATS][32];
        for (int s = 0; s < EVAL_STATS; s++)
            pm[s][0] = '\0';
        for (int s = 0; s < EVAL_STATS && q.boot > 1; s++)
            snprintf(pm[s], sizeof pm[s], s == 0 ? " ± %.2f" : " ± %.3f",
                     s == 1 ? 1000 * half[s] : half[s]);
        printf("    FID           %10.2f%s   (vs %ld held-out images)\n", v->fid, pm[0],
               ref.held_n);
        printf("    KID x 1000    %10.3f%s\n", 1000 * v->kid, pm[1]);
        printf("    precision     %10.3f%s\n", v->precision, pm[2]);
        printf("    recall        %10.3f%s\n", v->recall, pm[3]);
        if (have_floor)
            printf("    floor         FID %.2f, KID x 1000 %.3f, precision %.3f, recall %.3f "
                   "(%ld training images)\n", fq.j[k].fid, 1000 * fq.j[k].kid,
                   fq.j[k].precision, fq.j[k].recall, fq.n);
        printf("    confident     %9.1f%%   (max softmax > %.1f)\n", 100 * v->confident,
               JUDGE_CONFIDENT);
        if (isfinite(v->label_acc))
            printf("    label accuracy %8.1f%%   (classified as the asked class)\n",
                   100 * v->label_acc);
        printf("    classes        ");
        double hist[EVAL_MAX_CLASSES];
        for (int c = 0; c < j->C && c < EVAL_MAX_CLASSES; c++) {
            char nb[64];
            hist[c] = v->hist[c];
            printf(" %s:%d", eval_class_name(&ref, c, nb, sizeof nb), v->hist[c]);
        }
        printf("\n    class TV       %10.3f   (total variation from the data's class "
               "frequencies)\n", metric_tv(hist, ref.class_freq, j->C));
    }
    if (!have_floor)
        printf("  floor: n/a (%s)\n", ferr);
    printf("  expert calls    %10.1f   per image (%d steps)\n", gs.rows / (double)o->n, o->steps);
    printf("  images/s        %10.1f   (%s)\n", gs.seconds > 0 ? o->n / gs.seconds : NAN,
           o->url[0] ? "through the router, one request at a time" : "in-process");
    printf("  switches        %10.2f   routing changes per trajectory\n",
           gs.switches / (double)o->n);
    rc = 0;
out:
    if (rc)
        fail(err);
    eval_quality_free(&q);
    eval_quality_free(&fq);
    free(x);
    free(asked);
    gen_close(g);
    eval_ref_free(&ref);
    eval_close_judges(&js);
    return rc;
}
