/* cmd_distance.c -- `ddm-eval distance`: along each strategy's trajectories,
 * how far x_t and the predicted x0 are from every cluster centroid, whether
 * the experts a strategy selects are the nearest ones, and how much weight
 * lands on far experts (the summary's "distance test"). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "tools/eval/cmds.h"
#include "tools/eval/plot.h"
#include "tools/eval/probe.h"

#define MAX_STRATS 12
#define BUCKETS 5 /* t in (0.8, 1], (0.6, 0.8], ..., [0, 0.2] */

static int bucket_of(float t)
{
    int b = (int)((1.0f - t) * BUCKETS);
    return b < 0 ? 0 : b >= BUCKETS ? BUCKETS - 1 : b;
}

/* Mean of v over the evaluations of bucket b (all evaluations when b < 0). */
static double bmean(const probe_result *r, const double *v, int b)
{
    double s = 0;
    int n = 0;
    for (int e = 0; e < r->evals; e++)
        if (b < 0 || bucket_of(r->t_eval[e]) == b) {
            s += v[e];
            n++;
        }
    return n ? s / n : NAN;
}

int cmd_distance(const eval_opts *o)
{
    char err[2048] = "", where[EVAL_PATH + 64] = "";
    if (o->url[0]) {
        fprintf(stderr, "ddm-eval: distance looks inside the sampler: run it in-process with "
                "--models, not --url\n");
        return 1;
    }
    gen_source *g = eval_open_source(o, err, sizeof err);
    if (!g) {
        fprintf(stderr, "ddm-eval: %s\n", err);
        return 1;
    }
    ensemble *e = gen_ensemble(g);
    float *cent = NULL;
    probe_result res[MAX_STRATS];
    char names[MAX_STRATS][GEN_NAME];
    int ns = 0, rc = 1;
    memset(res, 0, sizeof res);
    FILE *md = NULL, *csv = NULL;
    if (e->K < 2) {
        snprintf(err, sizeof err, "distance needs a set of at least 2 experts");
        goto out;
    }
    if (!(cent = eval_centroids(o, e, where, sizeof where, err, sizeof err)))
        goto out;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", o->strategies);
    for (char *save = NULL, *s = strtok_r(buf, ",", &save); s && ns < MAX_STRATS;
         s = strtok_r(NULL, ",", &save))
        snprintf(names[ns++], GEN_NAME, "%s", s);
    int n = o->n_given ? (int)(o->n < PROBE_MAX_N ? o->n : PROBE_MAX_N) : 250;
    probe_opts po;
    probe_opts_default(&po);
    po.every = 1;
    po.lipschitz = 0;
    po.disagreement = 0;
    po.centroids = cent;
    for (int i = 0; i < ns; i++) {
        gen_spec sp;
        gen_spec_init(&sp, names[i]);
        sp.steps = o->steps;
        if (sp.monolith) {
            snprintf(err, sizeof err, "--strategies: the monolith has no clusters to be near to");
            goto out;
        }
        if (!o->quiet)
            fprintf(stderr, "ddm-eval: distance: %d %s trajectories...\n", n, names[i]);
        if (probe_run(e, &sp, 0, o->seed, n, &po, &res[i], err, sizeof err))
            goto out;
    }
    if (!(md = eval_fopen(o, "distance.md", err, sizeof err)) ||
        !(csv = eval_fopen(o, "distance.csv", err, sizeof err)))
        goto out;
    fprintf(md, "# %s: are the selected experts the nearest ones?\n\n", o->set);
    fprintf(md, "Written by `%s`. %d unconditional trajectories per strategy, %d Euler steps, "
            "run seed %llu; centroids from %s.\n\n", o->command, n, o->steps,
            (unsigned long long)o->seed, where);
    char wl[1024];
    eval_weights_line(g, NULL, wl, sizeof wl);
    fprintf(md, "Weights (sha256): %s.\n\n", wl);
    fprintf(md, "At every step the cluster centroids c_k are ranked (1 = nearest) by three "
            "distances: from x_t to (1 - t) c_k, where cluster k's data sits at time t; from the "
            "image the trajectory finally draws, x_final; and from the predicted clean image "
            "x0 = x_t - t v. The x0 ranking is partly self-fulfilling (x0 is predicted by the "
            "selected experts themselves); x_t and x_final are independent of the selection. "
            "Columns, as averages over trajectories and the steps of each t range:\n\n"
            "- *sel = nearest*: the selected set (experts with weight > 0) is exactly the |S| "
            "nearest clusters (trivially true for full, which selects all);\n"
            "- *top = nearest*: the largest weight is on the nearest cluster;\n"
            "- *weighted rank*: sum of weight x rank of the selected experts;\n"
            "- *far weight*: weight on experts outside the 2 nearest.\n\n");
    fprintf(csv, "strategy,eval,t,sel_nearest_xt,sel_nearest_final,sel_nearest_x0,"
                 "top_nearest_xt,top_nearest_final,top_nearest_x0,weighted_rank_final,"
                 "weighted_rank_x0,far_weight_xt,far_weight_final,far_weight_x0,"
                 "dist_selected_x0,dist_nearest_x0,dist_selected_xt,dist_nearest_xt\n");
    for (int i = 0; i < ns; i++) {
        const probe_result *r = &res[i];
        fprintf(md, "## %s\n\n", names[i]);
        fprintf(md, "| t | sel = nearest: x_t | x_final | x0 | top = nearest: x_t | x_final | "
                    "weighted rank (x_final) | far weight: x_t | x_final | x0 |\n"
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for (int b = -1; b < BUCKETS; b++) {
            if (b < 0)
                fprintf(md, "| all | ");
            else
                fprintf(md, "| %.1f–%.1f | ", 1.0 - (b + 1) / (double)BUCKETS,
                        1.0 - b / (double)BUCKETS);
            fprintf(md, "%.0f%% | %.0f%% | %.0f%% | %.0f%% | %.0f%% | %.2f | %.1f%% | %.1f%% | "
                    "%.1f%% |\n",
                    100 * bmean(r, r->nearest_xt, b), 100 * bmean(r, r->nearest_fin, b),
                    100 * bmean(r, r->nearest_x0, b), 100 * bmean(r, r->top_nearest_xt, b),
                    100 * bmean(r, r->top_nearest_fin, b), bmean(r, r->rank_fin, b),
                    100 * bmean(r, r->far_w_xt, b), 100 * bmean(r, r->far_w_fin, b),
                    100 * bmean(r, r->far_w_x0, b));
        }
        fprintf(md, "\n");
        for (int ev = 0; ev < r->evals; ev++)
            fprintf(csv, "%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,"
                    "%.4f,%.4f,%.4f\n", names[i], ev, r->t_eval[ev], r->nearest_xt[ev],
                    r->nearest_fin[ev], r->nearest_x0[ev], r->top_nearest_xt[ev],
                    r->top_nearest_fin[ev], r->top_nearest_x0[ev], r->rank_fin[ev],
                    r->rank_x0[ev], r->far_w_xt[ev], r->far_w_fin[ev], r->far_w_x0[ev],
                    r->wdist_x0[ev], r->mindist_x0[ev], r->wdist_xt[ev], r->mindist_xt[ev]);
        printf("distance %-10s top weight on the nearest cluster: x_t %5.1f%%, final image "
               "%5.1f%%; weight outside the 2 nearest: x_t %5.1f%%, final %5.1f%% (all steps)\n",
               names[i], 100 * bmean(r, r->top_nearest_xt, -1),
               100 * bmean(r, r->top_nearest_fin, -1), 100 * bmean(r, r->far_w_xt, -1),
               100 * bmean(r, r->far_w_fin, -1));
    }
    if (eval_fclose_reports(o, &md, &csv, "distance.md or distance.csv", err, sizeof err))
        goto out;
    if (o->plots) {
        int tot = 0;
        for (int i = 0; i < ns; i++)
            tot += res[i].evals;
        double *x = malloc((size_t)tot * sizeof *x), *y = malloc((size_t)tot * sizeof *y);
        int *gp = malloc((size_t)tot * sizeof *gp), k = 0;
        const char *gn[6];
        if (!x || !y || !gp) {
            free(x);
            free(y);
            free(gp);
            snprintf(err, sizeof err, "out of memory");
            goto out;
        }
        for (int i = 0; i < ns && i < 6; i++) {
            gn[i] = names[i];
            for (int ev = 0; ev < res[i].evals; ev++, k++) {
                x[k] = res[i].t_eval[ev];
                y[k] = res[i].far_w_fin[ev];
                gp[k] = i;
            }
        }
        char path[EVAL_PATH + 32];
        snprintf(path, sizeof path, "%s/distance.png", o->out);
        int prc = plot_scatter(path, "weight outside the 2 clusters nearest the final image", "t",
                               "far weight", x, y, gp, k, gn, ns < 6 ? ns : 6, err, sizeof err);
        free(x);
        free(y);
        free(gp);
        if (prc)
            goto out;
    }
    printf("wrote %s/distance.md and distance.csv\n", o->out);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "ddm-eval: %s\n", err);
    if (md)
        fclose(md);
    if (csv)
        fclose(csv);
    for (int i = 0; i < MAX_STRATS; i++)
        probe_result_free(&res[i]);
    free(cent);
    gen_close(g);
    return rc;
}
