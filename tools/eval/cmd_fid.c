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
    judge *j = eval_open_judge(o, err, sizeof err);
    if (!j)
        return fail(err);
    eval_ref ref;
    gen_source *g = NULL;
    float *x = NULL;
    int *asked = NULL, rc = 1;
    if (eval_ref_load(o, j, &ref, err, sizeof err)) {
        judge_close(j);
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
    eval_quality q;
    if (eval_quality_of(j, &ref, x, o->n, (o->conditional || o->label >= 0) ? asked : NULL, NULL,
                        &q, err, sizeof err))
        goto out;
    double floor_fid = NAN;
    long floor_n = 0;
    char ferr[512] = "";
    eval_floor(&ref, j, o->n, o->seed, &floor_fid, &floor_n, ferr, sizeof ferr);

    const char *what = o->conditional ? "class-balanced labels" : o->label >= 0 ? "label" : "unconditional";
    printf("fid %s: %s, %ld images, %d Euler steps, run seed %llu, %s", sp.name,
           o->url[0] ? o->url : o->models, o->n, o->steps, (unsigned long long)o->seed, what);
    if (o->label >= 0)
        printf(" %d", o->label);
    if (o->conditional || o->label >= 0)
        printf(", guidance %g", o->guidance);
    printf("\n");
    printf("  FID             %10.2f   (classifier features vs %ld held-out images)\n", q.fid,
           ref.held_n);
    if (isfinite(floor_fid))
        printf("  floor           %10.2f   (%ld training images vs the held-out set: the best a "
               "generator can expect at this n)\n", floor_fid, floor_n);
    else
        printf("  floor                  n/a   (%s)\n", ferr);
    printf("  confident       %9.1f%%   (classifier max softmax > %.1f)\n", 100 * q.confident,
           JUDGE_CONFIDENT);
    if (isfinite(q.label_acc))
        printf("  label accuracy  %9.1f%%   (classified as the asked class)\n", 100 * q.label_acc);
    printf("  class histogram ");
    for (int c = 0; c < j->C && c < EVAL_MAX_CLASSES; c++) {
        char nb[64];
        printf(" %s:%d", eval_class_name(&ref, c, nb, sizeof nb), q.hist[c]);
    }
    printf("\n");
    printf("  expert calls    %10.1f   per image (%d steps)\n", gs.rows / (double)o->n, o->steps);
    printf("  images/s        %10.1f   (%s)\n", gs.seconds > 0 ? o->n / gs.seconds : NAN,
           o->url[0] ? "through the router, one request at a time" : "in-process");
    printf("  switches        %10.2f   routing changes per trajectory\n",
           gs.switches / (double)o->n);
    rc = 0;
out:
    if (rc)
        fail(err);
    free(x);
    free(asked);
    gen_close(g);
    eval_ref_free(&ref);
    judge_close(j);
    return rc;
}
