/* cmd_specialists.c -- `ddm-eval specialists`: the "ask the 7 expert for a 7,
 * then the 0 expert for a 7" test.
 *
 * 1. Every expert forced alone (expert:k) is asked for every class by label
 *    (guidance --guidance): a K x classes table of how often the classifier
 *    recognises the asked class, beside each cluster's class make-up (from
 *    the partition file).
 * 2. Every expert alone, unconditional: its class histogram.
 * 3. Switching mid-trajectory (in-process): expert a until t_switch, then
 *    expert b (the expert whose unconditional histogram differs most from
 *    a's); which class wins tells when the image's identity is decided. The
 *    trajectories start from the same noise as step 2's, so t_switch = 0 is
 *    "a alone" and t_switch = 1 is "b alone". */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "tools/eval/cmds.h"
#include "tools/train/data.h"

#define N_SWITCH 3
static const float T_SWITCH[N_SWITCH] = { 0.75f, 0.5f, 0.25f };

static int argmax_int(const int *v, int n)
{
    int a = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[a])
            a = i;
    return a;
}

/* Total-variation distance between two histograms (as shares). */
static double tv(const int *a, const int *b, int C)
{
    double sa = 0, sb = 0, d = 0;
    for (int c = 0; c < C; c++) {
        sa += a[c];
        sb += b[c];
    }
    for (int c = 0; c < C && sa > 0 && sb > 0; c++)
        d += fabs(a[c] / sa - b[c] / sb);
    return 0.5 * d;
}

/* n unconditional images: expert a while t > t_switch, then expert b; the
 * noise of gen_draw(expert a, unconditional, run_seed). In-process only. */
static int switch_draw(ensemble *e, int a, int b, float t_switch, int n, uint64_t run_seed,
                       int steps, float *out, char *err, size_t errlen)
{
    sample_params pa, pb;
    sample_params_default(&pa, e->K);
    pa.n = n;
    pa.steps = steps;
    pa.seed = gen_request_seed(run_seed, -1, 0);
    pb = pa;
    int rc = strategy_parse("expert:0", e->K, NAN, NAN, &pa.strat, err, errlen);
    if (rc)
        return rc;
    pa.strat.k = a;
    pb.strat = pa.strat;
    pb.strat.k = b;
    traj **tr = calloc((size_t)n, sizeof *tr);
    rc = tr ? 0 : DDM_ENOMEM;
    for (int i = 0; i < n && !rc; i++)
        if (!(tr[i] = traj_new(&pa, i, e->dim)))
            rc = DDM_ENOMEM;
    int evals = sample_evals(&pa);
    for (int ev = 0; ev < evals && !rc; ev++) {
        if (traj_time(tr[0]) <= t_switch)
            for (int i = 0; i < n; i++)
                tr[i]->p = &pb;
        for (int i0 = 0; i0 < n && !rc; i0 += e->tick_cap) {
            int m = n - i0 < e->tick_cap ? n - i0 : e->tick_cap;
            rc = tick_plan(e->tk, tr + i0, m);
            rc = rc ? rc : ensemble_eval_tick(e, e->tk);
            if (!rc)
                tick_finish(e->tk);
        }
    }
    for (int i = 0; i < n && !rc; i++)
        memcpy(out + (size_t)i * e->dim, tr[i]->x, (size_t)e->dim * sizeof *out);
    if (!rc)
        gen_quantize(out, (size_t)n * e->dim);
    else
        snprintf(err, errlen, "switching expert %d -> %d: %s", a, b, ddm_strerror(rc));
    for (int i = 0; tr && i < n; i++)
        traj_free(tr[i]);
    free(tr);
    return rc;
}

int cmd_specialists(const eval_opts *o)
{
    char err[2048] = "", nb[64];
    judge *j = eval_open_judge(o, err, sizeof err);
    eval_ref ref = { 0 };
    gen_source *g = NULL;
    int rc = 1, K = 0, C = 0;
    int *asked_ok = NULL, *hist = NULL, *table = NULL, *sw = NULL, *partner = NULL, *pred = NULL;
    float *x = NULL, *grid = NULL;
    FILE *md = NULL, *csv = NULL;
    if (!j)
        goto out;
    /* class names only; no FID here */
    ref.C = j->C;
    ref.D = j->D;
    ref.class_names = o->heldout[0] ? NULL : data_class_names(o->data);
    if (!(g = eval_open_source(o, err, sizeof err)))
        goto out;
    K = gen_K(g);
    C = j->C;
    if (gen_dim(g) != j->D) {
        snprintf(err, sizeof err, "the models make images of %d pixels, the classifier takes %d",
                 gen_dim(g), j->D);
        goto out;
    }
    if (gen_classes(g) != C) {
        snprintf(err, sizeof err, "specialists asks experts for classes by label: the experts "
                 "have %d label classes, the classifier %d", gen_classes(g), C);
        goto out;
    }
    const int D = j->D;
    const long ncell = o->n_given ? o->n : 50, nunc = 4 * ncell;
    x = malloc((size_t)nunc * D * sizeof *x);
    pred = malloc((size_t)nunc * sizeof *pred);
    asked_ok = calloc((size_t)K * C, sizeof *asked_ok);
    hist = calloc((size_t)K * C, sizeof *hist);
    sw = calloc((size_t)K * N_SWITCH * C, sizeof *sw);
    partner = calloc((size_t)K, sizeof *partner);
    grid = calloc((size_t)K * C * D, sizeof *grid);
    if (!x || !pred || !asked_ok || !hist || !sw || !partner || !grid) {
        snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    char werr[1024];
    table = eval_cluster_table(o, K, C, werr, sizeof werr);
    if (!table)
        fprintf(stderr, "ddm-eval: note: no cluster class make-up: %s\n", werr);
    double t0 = eval_now();
    for (int k = 0; k < K; k++) {
        gen_spec sp;
        char name[GEN_NAME];
        snprintf(name, sizeof name, "expert:%d", k);
        gen_spec_init(&sp, name);
        sp.steps = o->steps;
        sp.guidance = o->guidance;
        for (int c = 0; c < C; c++) {
            if (gen_draw(g, &sp, c, o->seed, ncell, x, NULL, err, sizeof err) ||
                judge_run(j, x, ncell, NULL, pred, NULL))
                goto fail_sample;
            for (long i = 0; i < ncell; i++)
                asked_ok[k * C + c] += pred[i] == c;
            memcpy(grid + ((size_t)k * C + c) * D, x, (size_t)D * sizeof *x);
        }
        if (gen_draw(g, &sp, -1, o->seed, nunc, x, NULL, err, sizeof err) ||
            judge_run(j, x, nunc, NULL, pred, NULL))
            goto fail_sample;
        for (long i = 0; i < nunc; i++)
            hist[k * C + pred[i]]++;
        if (!o->quiet)
            fprintf(stderr, "ddm-eval: specialists: expert %d done (%.0f s)\n", k,
                    eval_now() - t0);
    }
    ensemble *e = gen_ensemble(g);
    for (int a = 0; a < K && e; a++) {
        int best = (a + 1) % K;
        double bt = -1;
        for (int b = 0; b < K; b++) {
            double d = b == a ? -1 : tv(hist + a * C, hist + b * C, C);
            if (d > bt) {
                bt = d;
                best = b;
            }
        }
        partner[a] = best;
        for (int s = 0; s < N_SWITCH; s++) {
            if (switch_draw(e, a, best, T_SWITCH[s], (int)(nunc < 256 ? nunc : 256), o->seed,
                            o->steps, x, err, sizeof err) ||
                judge_run(j, x, nunc < 256 ? nunc : 256, NULL, pred, NULL))
                goto fail_sample;
            for (long i = 0; i < (nunc < 256 ? nunc : 256); i++)
                sw[(a * N_SWITCH + s) * C + pred[i]]++;
        }
    }
    /* reports */
    if (!(md = eval_fopen(o, "specialists.md", err, sizeof err)) ||
        !(csv = eval_fopen(o, "specialists.csv", err, sizeof err)))
        goto out;
    fprintf(md, "# %s: ask each expert for each class\n\n", o->set);
    fprintf(md, "Written by `%s`. Each expert forced alone (`expert:k`), %ld samples per "
            "(expert, class) with that label and guidance %g; %ld unconditional samples per "
            "expert; %d Euler steps, run seed %llu.\n\n", o->command, ncell, o->guidance, nunc,
            o->steps, (unsigned long long)o->seed);
    char wl[1024];
    eval_judges one = { { j, NULL }, 1 };
    eval_weights_line(g, &one, wl, sizeof wl);
    if (wl[0])
        fprintf(md, "Weights (sha256): %s.\n\n", wl);
    fprintf(md, "## Asked class recognised by the classifier (%%)\n\n| expert | cluster make-up |");
    fprintf(csv, "table,expert");
    for (int c = 0; c < C; c++) {
        fprintf(md, " %s |", eval_class_name(&ref, c, nb, sizeof nb));
        fprintf(csv, ",%s", eval_class_name(&ref, c, nb, sizeof nb));
    }
    fprintf(md, " mean |\n|---|---|");
    fprintf(csv, "\n");
    for (int c = 0; c <= C; c++)
        fprintf(md, "---:|");
    fprintf(md, "\n");
    for (int k = 0; k < K; k++) {
        fprintf(md, "| %d | ", k);
        if (table) {
            /* the three largest classes of the cluster */
            int tot = 0, used[EVAL_MAX_CLASSES] = { 0 };
            for (int c = 0; c < C; c++)
                tot += table[k * C + c];
            for (int r = 0; r < 3 && tot > 0; r++) {
                int a = -1;
                for (int c = 0; c < C && c < EVAL_MAX_CLASSES; c++)
                    if (!used[c] && (a < 0 || table[k * C + c] > table[k * C + a]))
                        a = c;
                if (a < 0 || table[k * C + a] == 0)
                    break;
                used[a] = 1;
                fprintf(md, "%s%s %.0f%%", r ? ", " : "", eval_class_name(&ref, a, nb, sizeof nb),
                        100.0 * table[k * C + a] / tot);
            }
        } else {
            fprintf(md, "?");
        }
        fprintf(md, " |");
        fprintf(csv, "asked_recognised,%d", k);
        double s = 0;
        for (int c = 0; c < C; c++) {
            double v = 100.0 * asked_ok[k * C + c] / ncell;
            s += v;
            fprintf(md, " %.0f |", v);
            fprintf(csv, ",%.4f", v / 100);
        }
        fprintf(md, " %.0f |\n", s / C);
        fprintf(csv, "\n");
    }
    fprintf(md, "\n## Unconditional samples of each expert vs its cluster's data (%% per class)"
                "\n\n| expert | |");
    for (int c = 0; c < C; c++)
        fprintf(md, " %s |", eval_class_name(&ref, c, nb, sizeof nb));
    fprintf(md, "\n|---|---|");
    for (int c = 0; c < C; c++)
        fprintf(md, "---:|");
    fprintf(md, "\n");
    for (int k = 0; k < K; k++) {
        fprintf(md, "| %d | samples |", k);
        fprintf(csv, "unconditional_histogram,%d", k);
        for (int c = 0; c < C; c++) {
            fprintf(md, " %.0f |", 100.0 * hist[k * C + c] / nunc);
            fprintf(csv, ",%.4f", (double)hist[k * C + c] / nunc);
        }
        fprintf(md, "\n");
        fprintf(csv, "\n");
        if (table) {
            int tot = 0;
            for (int c = 0; c < C; c++)
                tot += table[k * C + c];
            fprintf(md, "| | cluster data |");
            fprintf(csv, "cluster_makeup,%d", k);
            for (int c = 0; c < C; c++) {
                fprintf(md, " %.0f |", tot ? 100.0 * table[k * C + c] / tot : 0.0);
                fprintf(csv, ",%.4f", tot ? (double)table[k * C + c] / tot : 0.0);
            }
            fprintf(md, "\n");
            fprintf(csv, "\n");
        }
    }
    if (e) {
        long nsw = nunc < 256 ? nunc : 256;
        fprintf(md, "\n## Switching experts mid-trajectory\n\n"
                "Expert a runs from t = 1 until the switch time, then expert b finishes (b = the "
                "expert whose samples differ most from a's). Cells: share of %ld unconditional "
                "samples classified as a's usual class / as b's usual class (the most frequent "
                "class of each expert alone). The trajectories start from the same noise as "
                "the unconditional samples of a, so t = 0 is a alone.\n\n"
                "| a → b | a's class | b's class | b alone (t = 1) |", nsw);
        for (int s = 0; s < N_SWITCH; s++)
            fprintf(md, " switch at t = %.2f |", T_SWITCH[s]);
        fprintf(md, " a alone (t = 0) |\n|---|---|---|---:|");
        for (int s = 0; s <= N_SWITCH; s++)
            fprintf(md, "---:|");
        fprintf(md, "\n");
        for (int a = 0; a < K; a++) {
            int b = partner[a];
            int ca = argmax_int(hist + a * C, C), cb = argmax_int(hist + b * C, C);
            char na[64];
            fprintf(md, "| %d → %d | %s | %s | %.0f%% / %.0f%% |", a, b,
                    eval_class_name(&ref, ca, na, sizeof na),
                    eval_class_name(&ref, cb, nb, sizeof nb), 100.0 * hist[b * C + ca] / nunc,
                    100.0 * hist[b * C + cb] / nunc);
            fprintf(csv, "switch,%d,%d", a, b);
            for (int s = 0; s < N_SWITCH; s++) {
                const int *h = sw + (a * N_SWITCH + s) * C;
                fprintf(md, " %.0f%% / %.0f%% |", 100.0 * h[ca] / nsw, 100.0 * h[cb] / nsw);
                fprintf(csv, ",t%.2f:%.4f/%.4f", T_SWITCH[s], (double)h[ca] / nsw,
                        (double)h[cb] / nsw);
            }
            fprintf(md, " %.0f%% / %.0f%% |\n", 100.0 * hist[a * C + ca] / nunc,
                    100.0 * hist[a * C + cb] / nunc);
            fprintf(csv, "\n");
        }
    } else {
        fprintf(md, "\nSwitching mid-trajectory needs the models in-process (not measured "
                    "through --url).\n");
    }
    fprintf(md, "\nGrid: specialists.png, row k = expert k, column c = asked for class c.\n");
    if (eval_fclose_reports(o, &md, &csv, "specialists.md or specialists.csv", err, sizeof err))
        goto out;
    if (o->plots && eval_write_grid(o, "specialists.png", grid, K * C, D, C, err, sizeof err))
        goto out;
    printf("specialists: asked class recognised (%%), rows = experts, columns = classes\n");
    for (int k = 0; k < K; k++) {
        printf("  expert %2d:", k);
        for (int c = 0; c < C; c++)
            printf(" %4.0f", 100.0 * asked_ok[k * C + c] / ncell);
        printf("   unconditional mostly %s (%.0f%%)\n",
               eval_class_name(&ref, argmax_int(hist + k * C, C), nb, sizeof nb),
               100.0 * hist[k * C + argmax_int(hist + k * C, C)] / nunc);
    }
    printf("wrote %s/specialists.md and specialists.csv\n", o->out);
    rc = 0;
    goto out;
fail_sample:
    if (!err[0])
        snprintf(err, sizeof err, "classifying samples failed");
out:
    if (rc)
        fprintf(stderr, "ddm-eval: %s\n", err);
    if (md)
        fclose(md);
    if (csv)
        fclose(csv);
    free(x);
    free(pred);
    free(asked_ok);
    free(hist);
    free(table);
    free(sw);
    free(partner);
    free(grid);
    gen_close(g);
    judge_close(j);
    return rc;
}
