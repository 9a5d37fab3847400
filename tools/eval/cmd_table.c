/* cmd_table.c -- `ddm-eval table`: every routing strategy, the monolith and
 * each expert alone, unconditional and class-conditional, judged by every
 * judge, on one page (the sampling and summaries are table.c's). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "tools/eval/cmds.h"
#include "tools/eval/plot.h"
#include "tools/eval/table.h"

static const char *MODE_NAME[TBL_MODES] = { "unconditional", "class-conditional" };
static const char *STAT_NAME[EVAL_STATS] = { "FID", "KID", "precision", "recall" };

int table_default_rows(int K, char names[][GEN_NAME], int max)
{
    int n = 0;
    const char *fixed[] = { "monolith", "full", "uniform", "top-1", "top-2", "top-3",
                            "threshold", "sample", "nucleus", "top-1:drawn", "top-2:drawn" };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0] && n < max; i++) {
        if (!strncmp(fixed[i], "top-", 4) && fixed[i][4] - '0' > K)
            continue;
        snprintf(names[n++], GEN_NAME, "%s", fixed[i]);
    }
    for (int k = 0; k < K && n < max; k++)
        snprintf(names[n++], GEN_NAME, "expert:%d", k);
    return n;
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

/* "12.34 ± 0.56" (scale multiplies both). */
static void md_est(FILE *f, tbl_est e, const char *fmt, double scale)
{
    md_num(f, e.mean * scale, fmt);
    if (isfinite(e.half)) {
        fprintf(f, " ± ");
        fprintf(f, fmt, e.half * scale);
    }
}

/* The judges' short descriptions for the page. */
static void judges_line(FILE *md, tbl *t)
{
    for (int k = 0; k < t->js.n; k++) {
        const judge *j = t->js.j[k];
        const char *acc = st_meta(judge_file(j), "test_accuracy");
        fprintf(md, "%s**%s** (%s, %s features %d wide%s%s)", k ? "; " : "", j->name,
                st_path(judge_file(j)), j->cv ? "dense" : "penultimate", j->H,
                acc ? ", test accuracy " : "", acc ? acc : "");
    }
}

/* Kendall's tau between the judges' FID orderings of the bootstrapped rows,
 * and the pairs they order differently. */
void table_write_ordering(FILE *md, tbl *t, int m)
{
    if (t->js.n < 2)
        return;
    int idx[TBL_MAX_ROWS], n = 0;
    for (int r = 0; r < t->nrows; r++)
        if (t->boot_row[r])
            idx[n++] = r;
    int conc = 0, disc = 0, sig = 0;
    char list[4096] = "";
    size_t at = 0;
    for (int a = 0; a < n; a++)
        for (int b = a + 1; b < n; b++) {
            tbl_est d0 = tbl_diff(t, m, idx[a], idx[b], 0, TBL_FID);
            tbl_est d1 = tbl_diff(t, m, idx[a], idx[b], 1, TBL_FID);
            if (d0.mean * d1.mean > 0) {
                conc++;
                continue;
            }
            disc++;
            int s0 = fabs(d0.mean) > d0.half, s1 = fabs(d1.mean) > d1.half;
            sig += s0 && s1;
            if (at < sizeof list - 200)
                at += (size_t)snprintf(list + at, sizeof list - at,
                                       "%s%s vs %s (%s %+.2f ± %.2f%s, %s %+.2f ± %.2f%s)",
                                       disc > 1 ? "; " : "", t->rows[idx[a]], t->rows[idx[b]],
                                       t->js.j[0]->name, d0.mean, d0.half, s0 ? "*" : "",
                                       t->js.j[1]->name, d1.mean, d1.half, s1 ? "*" : "");
        }
    int pairs = conc + disc;
    fprintf(md, "\n**Is the ordering the same under both judges?** ");
    if (pairs == 0) {
        fprintf(md, "(fewer than two rows with intervals)\n");
        return;
    }
    double tau = (double)(conc - disc) / pairs;
    if (disc == 0)
        fprintf(md, "Yes: both judges order all %d rows the same way by FID (Kendall tau = 1).\n",
                n);
    else if (sig == 0)
        fprintf(md, "Not exactly, but no reversal is significant: Kendall tau = %.2f; %d of %d "
                "pairs are ordered differently, and in none of them do both judges' paired "
                "95%% intervals exclude 0 (differences are row minus row, FID; * = interval "
                "excludes 0): %s.\n", tau, disc, pairs, list);
    else
        fprintf(md, "**No.** Kendall tau = %.2f; %d of %d pairs are ordered differently, %d of "
                "them significantly under both judges (paired 95%% intervals exclude 0 in "
                "opposite directions; differences are row minus row, FID; * = interval excludes "
                "0): %s.\n", tau, disc, pairs, sig, list);
}

static void write_quality(FILE *md, tbl *t, int m)
{
    const int J = t->js.n;
    fprintf(md, "\n### Quality under %s\n\n| row |", J > 1 ? "both judges" : "the judge");
    for (int s = 0; s < EVAL_STATS; s++)
        for (int k = 0; k < J; k++)
            fprintf(md, " %s%s %s |", STAT_NAME[s], s == TBL_KID ? " ×10³" : "", t->js.j[k]->name);
    for (int k = 0; k < J; k++)
        fprintf(md, " confident %s |", t->js.j[k]->name);
    fprintf(md, "\n|---|");
    for (int i = 0; i < (EVAL_STATS + 1) * J; i++)
        fprintf(md, "---:|");
    fprintf(md, "\n");
    if (t->floor_ok[m]) {
        fprintf(md, "| *training data (floor, %ld images)* |", t->floor_n[m]);
        for (int s = 0; s < EVAL_STATS; s++)
            for (int k = 0; k < J; k++) {
                tbl_est e = tbl_floor(t, m, k, s);
                fprintf(md, " ");
                md_num(md, e.mean * (s == TBL_KID ? 1000 : 1), s >= TBL_PRECISION ? "%.3f" : "%.2f");
                fprintf(md, " |");
            }
        for (int k = 0; k < J; k++) {
            double c = 0;
            for (int s = 0; s < t->o->seeds; s++)
                c += t->floor[m][s].j[k].confident;
            fprintf(md, " %.1f%% |", 100 * c / t->o->seeds);
        }
        fprintf(md, "\n");
    }
    fprintf(md, "| *held-out images (real, %ld)* |", t->ref.held_n);
    for (int i = 0; i < EVAL_STATS * J; i++)
        fprintf(md, " |");
    for (int k = 0; k < J; k++)
        fprintf(md, " %.1f%% |", 100 * t->ref.j[k].confident);
    fprintf(md, "\n");
    for (int r = 0; r < t->nrows; r++) {
        fprintf(md, "| %s |", t->rows[r]);
        for (int s = 0; s < EVAL_STATS; s++)
            for (int k = 0; k < J; k++) {
                fprintf(md, " ");
                md_est(md, tbl_stat(t, m, r, k, s), s >= TBL_PRECISION ? "%.3f" : "%.2f",
                       s == TBL_KID ? 1000 : 1);
                fprintf(md, " |");
            }
        for (int k = 0; k < J; k++)
            fprintf(md, " %.1f%% |", 100 * tbl_confident(t, m, r, k));
        fprintf(md, "\n");
    }
    table_write_ordering(md, t, m);
}

static void write_routing(FILE *md, tbl *t, int m)
{
    fprintf(md, "\n### Cost, routing and trajectories\n\n"
                "| row | FID %s per seed | expert calls / image | images/s | switches / trajectory | "
                "velocity change | Lipschitz mean / max | disagreement (°) |%s\n",
            t->js.j[0]->name, m ? " label accuracy |" : "");
    fprintf(md, "|---|---:|---:|---:|---:|---:|---:|---:|%s\n", m ? "---:|" : "");
    for (int r = 0; r < t->nrows; r++) {
        double images = 0, rows = 0, secs = 0, sw = 0;
        fprintf(md, "| %s |", t->rows[r]);
        for (int s = 0; s < t->o->seeds; s++) {
            tbl_cell *c = tbl_cell_at(t, m, r, s);
            images += (double)c->st.images;
            rows += c->st.rows;
            secs += c->st.seconds;
            sw += c->st.switches;
            fprintf(md, "%s%.2f", s ? ", " : " ", c->q.j[0].fid);
        }
        fprintf(md, " | ");
        md_num(md, images > 0 ? rows / images : NAN, "%.0f");
        fprintf(md, " | ");
        md_num(md, secs > 0 ? images / secs : NAN, "%.1f");
        fprintf(md, " | ");
        md_num(md, images > 0 ? sw / images : NAN, "%.2f");
        tbl_probe *p = tbl_probe_at(t, m, r);
        fprintf(md, " | ");
        md_num(md, p->done ? p->pr.vel_change : NAN, "%.3f");
        fprintf(md, " | ");
        md_num(md, p->done ? p->pr.lip_mean : NAN, "%.2f");
        fprintf(md, " / ");
        md_num(md, p->done ? p->pr.lip_max : NAN, "%.1f");
        fprintf(md, " | ");
        md_num(md, p->done ? p->pr.disagree_deg : NAN, "%.1f");
        fprintf(md, " |");
        if (m)
            fprintf(md, " %.1f%% |", 100 * tbl_label_acc(t, m, r, 0));
        fprintf(md, "\n");
    }
    if (t->probes && t->K >= 2) {
        fprintf(md, "\nDoes disagreement go with bad samples? Correlation (Pearson r) between "
                    "a trajectory's mean expert disagreement and its sample's classifier "
                    "confidence, over the %d probe trajectories of each row:", t->o->probe_n);
        for (int r = 0; r < t->nrows; r++) {
            tbl_probe *p = tbl_probe_at(t, m, r);
            if (!p->done || !p->pr.disagree)
                continue;
            fprintf(md, " %s %+.2f%s", t->rows[r], pearson(p->pr.disagree, p->conf, p->pr.n),
                    r + 1 < t->nrows ? "," : ".");
        }
        fprintf(md, "\n");
    }
}

void table_write_coverage(FILE *md, tbl *t, int m)
{
    const int J = t->js.n;
    char nb[64];
    fprintf(md, "\n### Class coverage\n\nThe class histogram of all %d seeds' samples (%ld "
            "images per row) as each judge reads it, against the data's class frequencies "
            "(training labels); TV = total-variation distance, ± the 95%% bootstrap "
            "half-width.%s\n\n| row |", t->o->seeds, t->o->seeds * t->n_mode[m],
            m ? " With labels the histogram mostly reflects the label accuracy." : "");
    for (int k = 0; k < J; k++)
        fprintf(md, " TV %s |", t->js.j[k]->name);
    for (int c = 0; c < t->C; c++)
        fprintf(md, " %s |", eval_class_name(&t->ref, c, nb, sizeof nb));
    fprintf(md, "\n|---|");
    for (int i = 0; i < J + t->C; i++)
        fprintf(md, "---:|");
    fprintf(md, "\n| *data (per %ld)* |", t->o->seeds * t->n_mode[m]);
    for (int k = 0; k < J; k++)
        fprintf(md, " 0 |");
    for (int c = 0; c < t->C; c++)
        fprintf(md, " %.0f |", t->ref.class_freq[c] * t->o->seeds * t->n_mode[m]);
    fprintf(md, "\n");
    if (t->floor_ok[m]) {
        fprintf(md, "| *training images, judged* |");
        for (int k = 0; k < J; k++)
            fprintf(md, " %.3f |", tbl_floor_tv(t, m, k));
        for (int c = 0; c < t->C; c++) {
            double h = 0;
            for (int s = 0; s < t->o->seeds; s++)
                h += t->floor[m][s].j[0].hist[c];
            fprintf(md, " %.0f |", h);
        }
        fprintf(md, "\n");
    }
    for (int r = 0; r < t->nrows; r++) {
        double hist[EVAL_MAX_CLASSES];
        fprintf(md, "| %s |", t->rows[r]);
        for (int k = 0; k < J; k++) {
            fprintf(md, " ");
            md_est(md, tbl_tv(t, m, r, k), "%.3f", 1);
            fprintf(md, " |");
        }
        tbl_hist(t, m, r, 0, hist);
        for (int c = 0; c < t->C; c++)
            fprintf(md, " %.0f |", hist[c]);
        fprintf(md, "\n");
    }
    fprintf(md, "\nHistogram columns: the %s judge's verdict.\n", t->js.j[0]->name);
}

static void write_csv(FILE *csv, tbl *t)
{
    const eval_opts *o = t->o;
    fprintf(csv, "mode,row,judge,fid,fid_ci,fid_sd,kid,kid_ci,precision,precision_ci,recall,"
                 "recall_ci,confident,label_accuracy,tv,tv_ci");
    for (int s = 0; s < o->seeds; s++)
        fprintf(csv, ",fid_seed%llu", (unsigned long long)(o->seed + s));
    fprintf(csv, ",calls_per_image,images_per_s,switches_per_traj,velocity_change,lipschitz_mean,"
                 "lipschitz_max,disagreement_deg,n_per_seed,seeds,steps,guidance,boot\n");
    for (int m = 0; m < TBL_MODES; m++) {
        if (!t->modes[m])
            continue;
        const char *mn = m ? "conditional" : "unconditional";
        for (int k = 0; k < t->js.n && t->floor_ok[m]; k++) {
            tbl_est f = tbl_floor(t, m, k, TBL_FID);
            fprintf(csv, "%s,training-data,%s,%.4f,,%.4f,%.6f,,%.4f,,%.4f,,,,%.4f,", mn,
                    t->js.j[k]->name, f.mean, f.sd, tbl_floor(t, m, k, TBL_KID).mean,
                    tbl_floor(t, m, k, TBL_PRECISION).mean, tbl_floor(t, m, k, TBL_RECALL).mean,
                    tbl_floor_tv(t, m, k));
            for (int s = 0; s < o->seeds; s++)
                fprintf(csv, ",%.4f", t->floor[m][s].j[k].fid);
            fprintf(csv, ",,,,,,,,%ld,%d,,,\n", t->floor_n[m], o->seeds);
        }
        for (int r = 0; r < t->nrows; r++)
            for (int k = 0; k < t->js.n; k++) {
                tbl_est e[EVAL_STATS];
                for (int s = 0; s < EVAL_STATS; s++)
                    e[s] = tbl_stat(t, m, r, k, s);
                tbl_est tv = tbl_tv(t, m, r, k);
                fprintf(csv, "%s,%s,%s,%.4f,%.4f,%.4f,%.6f,%.6f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,"
                        "%.4f,%.4f", mn, t->rows[r], t->js.j[k]->name, e[0].mean, e[0].half,
                        e[0].sd, e[1].mean, e[1].half, e[2].mean, e[2].half, e[3].mean, e[3].half,
                        tbl_confident(t, m, r, k), tbl_label_acc(t, m, r, k), tv.mean, tv.half);
                double images = 0, rows = 0, secs = 0, sw = 0;
                for (int s = 0; s < o->seeds; s++) {
                    tbl_cell *c = tbl_cell_at(t, m, r, s);
                    fprintf(csv, ",%.4f", c->q.j[k].fid);
                    images += (double)c->st.images;
                    rows += c->st.rows;
                    secs += c->st.seconds;
                    sw += c->st.switches;
                }
                tbl_probe *p = tbl_probe_at(t, m, r);
                fprintf(csv, ",%.3f,%.3f,%.4f,%.5f,%.4f,%.4f,%.3f,%ld,%d,%d,%g,%d\n",
                        images > 0 ? rows / images : NAN, secs > 0 ? images / secs : NAN,
                        images > 0 ? sw / images : NAN, p->done ? p->pr.vel_change : NAN,
                        p->done ? p->pr.lip_mean : NAN, p->done ? p->pr.lip_max : NAN,
                        p->done ? p->pr.disagree_deg : NAN, t->n_mode[m], o->seeds, o->steps,
                        m ? o->guidance : 1.0, t->boot_row[r] ? o->boot : 0);
            }
    }
}

static int write_reports(tbl *t, char *err, size_t errlen)
{
    const eval_opts *o = t->o;
    FILE *md, *csv;
    if (eval_fopen_reports(o, "table.md", "table.csv", &md, &csv, err, errlen))
        return DDM_EIO;
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    fprintf(md, "# %s: routing strategies side by side\n\n", o->set);
    fprintf(md, "Written by `%s` on %s in %.0f s wall, %.0f s CPU (%d worker threads).\n\n",
            o->command, date, t->wall, t->cpu, o->jobs);
    if (t->weights[0])
        fprintf(md, "- Weights (sha256): %s.\n", t->weights);
    fprintf(md, "- Samples: %s, %d Euler steps. Per row and seed %ld unconditional samples",
            o->url[0] ? o->url : o->models, o->steps, t->n_mode[0]);
    if (t->modes[1])
        fprintf(md, " and %ld class-conditional samples (%ld per class, guidance %g)",
                t->n_mode[1], t->n_mode[1] / t->C, o->guidance);
    fprintf(md, "; %d run seeds (%llu..%llu).\n", o->seeds, (unsigned long long)o->seed,
            (unsigned long long)(o->seed + o->seeds - 1));
    fprintf(md, "- Judges: ");
    judges_line(md, t);
    fprintf(md, ". FID against all %ld held-out images; KID (unbiased, cubic polynomial "
            "kernel scaled to the judge's features) and precision / recall (k-NN manifolds, k = %d, equal set sizes) against "
            "a fixed subset of %ld of them. With this few samples FID is biased upwards: "
            "compare rows with each other and with the floor, not with published numbers.\n",
            t->ref.held_n, METRIC_PR_K, t->ref.ref_m);
    fprintf(md, "- Numbers are the mean over the %d seeds ± the half-width of a 95%% bootstrap "
            "interval (%d resamples of every draw, the same resamples for every row of a seed, "
            "so differences between rows are paired; single experts are not resampled). The "
            "floor: as many real training images as samples, judged the same way.\n",
            o->seeds, o->boot);
    if (t->probes)
        fprintf(md, "- Trajectory measures from %d trajectories per row (run seed %llu), probed "
                "every %d steps; Lipschitz step %g RMS per pixel.\n", o->probe_n,
                (unsigned long long)o->seed, o->every, o->eps);
    fprintf(md, "- images/s: sampling alone, one core per row (rows run side by side, "
            "OpenBLAS single-threaded).\n");
    write_csv(csv, t);
    for (int m = 0; m < TBL_MODES; m++) {
        if (!t->modes[m])
            continue;
        fprintf(md, "\n## %s\n", m ? "Class-conditional" : "Unconditional");
        if (m)
            fprintf(md, "\nEach class asked for equally often, classifier-free guidance %g.\n",
                    o->guidance);
        write_quality(md, t, m);
        write_routing(md, t, m);
        table_write_coverage(md, t, m);
    }
    fprintf(md, "\n## Columns\n\n"
        "- **FID**: Fréchet distance between a judge's features of the samples and of the "
        "held-out images (lower is better). **KID**: unbiased squared MMD, kernel "
        "(x.y / s + 1)^3 with s the held-out features' mean squared norm, ×1000 (lower is better; can be slightly negative). **precision**: "
        "share of samples inside the held-out images' k-NN manifold; **recall**: share of "
        "held-out images inside the samples' manifold (both higher is better).\n"
        "- **confident**: share of samples whose judge's max softmax exceeds %.1f; "
        "**label accuracy**: share classified as the class asked for (classifier).\n"
        "- **expert calls / image**: expert network evaluations (latent rows) per image over all "
        "steps; guidance doubles them.\n"
        "- **switches / trajectory**: evaluations whose selected expert set differs from the "
        "previous one. **velocity change**: mean |v_i - v_(i-1)| / |v_(i-1)| between "
        "consecutive steps. **Lipschitz**: |v(x + d) - v(x)| / |d| of the combined velocity "
        "field, routing included, for small random d at probed steps (mean and largest). "
        "**disagreement**: mean pairwise angle between all K experts' predicted clean images.\n",
        JUDGE_CONFIDENT);
    fprintf(md, "\nPlots: fid-*.png (FID per row, one per judge and mode), disagreement.png, "
                "routing.png, samples-*.png (first samples of each row).\n");
    return eval_fclose_reports(o, &md, &csv, "table.md or table.csv", err, errlen);
}

static int write_plots(tbl *t, char *err, size_t errlen)
{
    const eval_opts *o = t->o;
    char path[EVAL_PATH + 64], name[GEN_NAME + 32], slug[GEN_NAME];
    int rc = 0;
    for (int m = 0; m < TBL_MODES && !rc; m++) {
        for (int k = 0; k < t->js.n && t->modes[m] && !rc; k++) {
            const char *labels[TBL_MAX_ROWS + 1];
            double v[TBL_MAX_ROWS + 1], ci[TBL_MAX_ROWS + 1];
            int n = 0;
            tbl_est f = tbl_floor(t, m, k, TBL_FID);
            if (isfinite(f.mean)) {
                labels[n] = "floor";
                v[n] = f.mean;
                ci[n++] = f.sd;
            }
            for (int r = 0; r < t->nrows; r++) {
                tbl_est e = tbl_stat(t, m, r, k, TBL_FID);
                labels[n] = t->rows[r];
                v[n] = e.mean;
                ci[n++] = isfinite(e.half) ? e.half : e.sd;
            }
            snprintf(path, sizeof path, "%s/fid-%s%s.png", o->out, k ? "conv-" : "",
                     m ? "conditional" : "unconditional");
            char title[128];
            snprintf(title, sizeof title, "%s FID (%s judge), %s (lower is better)", o->set,
                     t->js.j[k]->name, MODE_NAME[m]);
            rc = plot_bars(path, title, labels, v, ci, n, err, errlen);
        }
    }
    if (!rc && t->probes && t->K >= 2) {
        static const char *want[] = { "full", "uniform", "top-1", "top-2", "top-3", "nucleus" };
        const char *gname[6];
        int ng = 0, total = 0, gi[6];
        for (size_t w = 0; w < 6; w++) {
            int r = tbl_row_index(t, want[w]);
            tbl_probe *p = r >= 0 ? tbl_probe_at(t, 0, r) : NULL;
            if (p && p->done && p->pr.disagree) {
                gname[ng] = want[w];
                gi[ng++] = r;
                total += p->pr.n;
            }
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
            tbl_probe *p = tbl_probe_at(t, 0, gi[g]);
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
    if (!rc && t->probes && t->K >= 2) {
        static const char *want[] = { "top-1", "top-2", "threshold", "nucleus", "full", "sample" };
        const double *maps[6];
        double *own[6] = { 0 };
        const char *mname[6];
        int nm = 0, cols = 0;
        for (size_t w = 0; w < 6; w++) {
            int r = tbl_row_index(t, want[w]);
            tbl_probe *p = r >= 0 ? tbl_probe_at(t, 0, r) : NULL;
            if (!p || !p->done)
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
        if (nm > 0) {
            snprintf(path, sizeof path, "%s/routing.png", o->out);
            rc = plot_heat(path, "mean routing weight per expert, t = 1 (left) to 0", maps, mname,
                           nm, t->K, cols, "E", "t=1", "t=0", err, errlen);
        }
        for (int i = 0; i < nm; i++)
            free(own[i]);
    }
    for (int m = 0; m < TBL_MODES && !rc; m++) {
        for (int r = 0; r < t->nrows && t->modes[m] && !rc; r++) {
            tbl_cell *c = tbl_cell_at(t, m, r, 0);
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

int cmd_table(const eval_opts *o)
{
    char err[2048] = "";
    tbl t;
    int rc = 1;
    if (tbl_open(&t, o, o->rows, o->modes, 1, err, sizeof err) || tbl_run(&t, err, sizeof err))
        goto out;
    if (write_reports(&t, err, sizeof err))
        goto out;
    if (o->plots && write_plots(&t, err, sizeof err))
        goto out;
    printf("%s table (%s), %.0f s: FID mean ± 95%% half-width over %d seeds\n", o->set, o->out,
           t.wall, o->seeds);
    for (int m = 0; m < TBL_MODES; m++) {
        if (!t.modes[m])
            continue;
        printf("  %s (%ld samples per seed%s)\n", MODE_NAME[m], t.n_mode[m],
               m ? ", guidance applied" : "");
        printf("    %-12s", "row");
        for (int k = 0; k < t.js.n; k++)
            printf(" %13s %-4s", "FID", t.js.j[k]->name);
        printf(" %8s %8s\n", "TV", "calls");
        for (int r = 0; r < t.nrows; r++) {
            printf("    %-12s", t.rows[r]);
            for (int k = 0; k < t.js.n; k++) {
                tbl_est e = tbl_stat(&t, m, r, k, TBL_FID);
                printf(" %8.2f ± %5.2f", e.mean, isfinite(e.half) ? e.half : 0.0);
            }
            double images = 0, rows = 0;
            for (int s = 0; s < o->seeds; s++) {
                images += (double)tbl_cell_at(&t, m, r, s)->st.images;
                rows += tbl_cell_at(&t, m, r, s)->st.rows;
            }
            printf(" %8.3f %8.0f\n", tbl_tv(&t, m, r, 0).mean, images > 0 ? rows / images : NAN);
        }
    }
    printf("wrote %s/table.md and table.csv%s\n", o->out, o->plots ? " and plots" : "");
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "ddm-eval: %s\n", err[0] ? err : "table failed");
    tbl_close(&t);
    return rc;
}
