/* cmd_sweep.c -- `ddm-eval sweep`: where the committee average fails. The
 * router's softmax temperature T is swept for the full ensemble (T -> 0 is
 * top-1, T = 1 the router's own weights, T -> infinity the uniform committee)
 * and for top-2 (same two experts, weights renormalised at T), with the
 * monolith, top-1, top-2 and uniform as references; FID under every judge,
 * precision and recall against T, and the temperatures at which full is no
 * worse than top-2. Writes OUT/sweep.md, sweep.csv and sweep-*.png. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "tools/eval/cmds.h"
#include "tools/eval/plot.h"
#include "tools/eval/table.h"

#define MAX_T 24
static const char *REFS[] = { "top-2", "top-2:drawn", "top-1", "monolith", "uniform" };
#define NREFS 5
static const char *SWEPT[] = { "full", "top-2" };
#define NSWEPT 2

typedef struct sweep {
    int nt;
    double temp[MAX_T];
    int row[NSWEPT][MAX_T];     /* table row of SWEPT[s] at temp[i] */
    int ref[NREFS];             /* table row of each reference, -1 if absent */
} sweep;

static int parse_temps(const char *list, sweep *w, char *err, size_t errlen)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    w->nt = 0;
    for (char *save = NULL, *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        char *end;
        double t = strtod(s, &end);
        if (*end || !(t >= 0.01 && t <= 100) || w->nt == MAX_T ||
            (w->nt && t <= w->temp[w->nt - 1])) {
            snprintf(err, errlen, "--temperatures \"%s\": give up to %d increasing numbers in "
                     "0.01..100", list, MAX_T);
            return DDM_EINVAL;
        }
        w->temp[w->nt++] = t;
    }
    return w->nt ? 0 : DDM_EINVAL;
}

/* FID (or another stat) of every swept temperature of strategy s, judge k. */
static void series(tbl *t, const sweep *w, int m, int s, int k, int stat, double *y, double *e)
{
    for (int i = 0; i < w->nt; i++) {
        tbl_est v = tbl_stat(t, m, w->row[s][i], k, stat);
        y[i] = v.mean;
        e[i] = v.half;
    }
}

static int write_plots(tbl *t, const sweep *w, int m, char *err, size_t errlen)
{
    static const char *file[EVAL_STATS] = { "fid", "kid", "precision", "recall" };
    static const char *ylab[EVAL_STATS] = { "FID", "KID", "PRECISION", "RECALL" };
    int rc = 0;
    for (int k = 0; k < t->js.n && !rc; k++)
        for (int stat = 0; stat < EVAL_STATS && !rc; stat++) {
            if (stat == TBL_KID)
                continue;
            double y[NSWEPT][MAX_T], e[NSWEPT][MAX_T];
            plot_series ser[NSWEPT];
            for (int s = 0; s < NSWEPT; s++) {
                series(t, w, m, s, k, stat, y[s], e[s]);
                ser[s] = (plot_series){ SWEPT[s], w->temp, y[s], e[s], w->nt };
            }
            plot_ref refs[NREFS];
            int nr = 0;
            for (int r = 0; r < NREFS; r++)
                if (w->ref[r] >= 0)
                    refs[nr++] = (plot_ref){ REFS[r],
                                             tbl_stat(t, m, w->ref[r], k, stat).mean };
            /* keep the interesting range: FID up to 3x top-2's */
            double ymax = 0;
            if (stat == TBL_FID && w->ref[0] >= 0)
                ymax = 3 * tbl_stat(t, m, w->ref[0], k, stat).mean;
            char path[EVAL_PATH + 64], title[160];
            snprintf(path, sizeof path, "%s/sweep-%s-%s.png", t->o->out, file[stat],
                     t->js.j[k]->name);
            snprintf(title, sizeof title, "%s %s (%s judge) vs router temperature", t->o->set,
                     ylab[stat], t->js.j[k]->name);
            rc = plot_lines(path, title, "ROUTER SOFTMAX TEMPERATURE T (LOG)", ylab[stat], 1, ser,
                            NSWEPT, refs, nr, ymax, err, errlen);
        }
    return rc;
}

static void md_est(FILE *f, tbl_est e, const char *fmt)
{
    if (!isfinite(e.mean)) {
        fprintf(f, " – |");
        return;
    }
    fprintf(f, " ");
    fprintf(f, fmt, e.mean);
    if (isfinite(e.half)) {
        fprintf(f, " ± ");
        fprintf(f, fmt, e.half);
    }
    fprintf(f, " |");
}

/* Where full@T is no worse than top-2 and top-2:drawn (paired interval of
 * full@T - reference reaches 0 or below). */
static void write_verdict(FILE *md, tbl *t, const sweep *w, int m)
{
    for (int ref = 0; ref < 2; ref++) {
        if (w->ref[ref] < 0)
            continue;
        for (int k = 0; k < t->js.n; k++) {
            fprintf(md, "- **%s judge, against %s**: full@T minus %s, FID (paired, 95%%):",
                    t->js.j[k]->name, REFS[ref], REFS[ref]);
            int ok_lo = -1, ok_hi = -1, gaps = 0;
            for (int i = 0; i < w->nt; i++) {
                tbl_est d = tbl_diff(t, m, w->row[0][i], w->ref[ref], k, TBL_FID);
                double h = isfinite(d.half) ? d.half : 0;
                int better = d.mean + h < 0, worse = d.mean - h > 0;
                fprintf(md, " T=%g %+.2f ± %.2f%s;", w->temp[i], d.mean, d.half,
                        better ? " (better)" : worse ? " (worse)" : " (level)");
                if (!worse) {
                    gaps += ok_hi >= 0 && ok_hi != i - 1;
                    if (ok_lo < 0)
                        ok_lo = i;
                    ok_hi = i;
                }
            }
            if (ok_lo < 0)
                fprintf(md, " full is worse than %s at every temperature swept.\n", REFS[ref]);
            else
                fprintf(md, " full is no worse than %s from T = %g to T = %g%s.\n", REFS[ref],
                        w->temp[ok_lo], w->temp[ok_hi],
                        gaps ? " (with gaps: see the list)" : "");
        }
    }
}

static int write_reports(tbl *t, const sweep *w, char *err, size_t errlen)
{
    const eval_opts *o = t->o;
    FILE *md, *csv;
    if (eval_fopen_reports(o, "sweep.md", "sweep.csv", &md, &csv, err, errlen))
        return DDM_EIO;
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    fprintf(md, "# %s: the router's temperature, from top-1 to the uniform committee\n\n"
            "Written by `%s` on %s in %.0f s wall, %.0f s CPU (%d worker threads).\n\n",
            o->set, o->command, date, t->wall, t->cpu, o->jobs);
    fprintf(md, "- Weights (sha256): %s.\n- Per row: %d seeds x %ld samples, %d Euler steps; "
            "numbers are the mean over seeds ± the half-width of a 95%% bootstrap interval "
            "(%d resamples, paired across rows).\n- full@T: every expert, weights "
            "softmax(logits / T) -- T -> 0 is top-1, T -> infinity the uniform committee. "
            "top-2@T: the two most probable experts, their weights renormalised from "
            "softmax(logits / T). top-2:drawn (reference, T = 1): each trajectory's two "
            "experts drawn from p (the largest of log p_i + g_i, g_i the trajectory's Gumbel "
            "noise), weighted p_i e^(g_i) renormalised.\n", t->weights, o->seeds, t->n_mode[0], o->steps, o->boot);
    fprintf(csv, "mode,strategy,temperature,judge,fid,fid_ci,kid,kid_ci,precision,precision_ci,"
                 "recall,recall_ci,confident,tv,tv_ci\n");
    for (int m = 0; m < TBL_MODES; m++) {
        if (!t->modes[m])
            continue;
        fprintf(md, "\n## %s\n\n| strategy | T |", m ? "Class-conditional" : "Unconditional");
        for (int k = 0; k < t->js.n; k++)
            fprintf(md, " FID %s | precision %s | recall %s |", t->js.j[k]->name,
                    t->js.j[k]->name, t->js.j[k]->name);
        fprintf(md, " confident %s | class TV %s |\n|---|---:|", t->js.j[0]->name,
                t->js.j[0]->name);
        for (int k = 0; k < 3 * t->js.n + 2; k++)
            fprintf(md, "---:|");
        fprintf(md, "\n");
        for (int s = 0; s < NSWEPT + NREFS; s++) {
            int n = s < NSWEPT ? w->nt : (w->ref[s - NSWEPT] >= 0);
            for (int i = 0; i < n; i++) {
                int r = s < NSWEPT ? w->row[s][i] : w->ref[s - NSWEPT];
                const char *name = s < NSWEPT ? SWEPT[s] : REFS[s - NSWEPT];
                double temp = s < NSWEPT ? w->temp[i] : NAN;
                fprintf(md, "| %s%s |", name, s < NSWEPT ? "" : " (reference)");
                if (isfinite(temp))
                    fprintf(md, " %g |", temp);
                else
                    fprintf(md, " |");
                for (int k = 0; k < t->js.n; k++) {
                    md_est(md, tbl_stat(t, m, r, k, TBL_FID), "%.2f");
                    md_est(md, tbl_stat(t, m, r, k, TBL_PRECISION), "%.3f");
                    md_est(md, tbl_stat(t, m, r, k, TBL_RECALL), "%.3f");
                }
                fprintf(md, " %.1f%% |", 100 * tbl_confident(t, m, r, 0));
                md_est(md, tbl_tv(t, m, r, 0), "%.3f");
                fprintf(md, "\n");
                for (int k = 0; k < t->js.n; k++) {
                    tbl_est e[EVAL_STATS];
                    for (int st = 0; st < EVAL_STATS; st++)
                        e[st] = tbl_stat(t, m, r, k, st);
                    tbl_est tv = tbl_tv(t, m, r, k);
                    fprintf(csv, "%s,%s,%g,%s,%.4f,%.4f,%.6f,%.6f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,"
                            "%.4f\n", m ? "conditional" : "unconditional", name, temp,
                            t->js.j[k]->name, e[0].mean, e[0].half, e[1].mean, e[1].half,
                            e[2].mean, e[2].half, e[3].mean, e[3].half,
                            tbl_confident(t, m, r, k), tv.mean, tv.half);
                }
            }
        }
        fprintf(md, "\nHow sharp must the router be for full to stop being worse than top-2?\n\n");
        write_verdict(md, t, w, m);
        fprintf(md, "\nPlots: sweep-fid-*.png, sweep-precision-*.png, sweep-recall-*.png (one "
                "per judge; dashed lines: the references).\n");
    }
    return eval_fclose_reports(o, &md, &csv, "sweep.md or sweep.csv", err, errlen);
}

int cmd_sweep(const eval_opts *o)
{
    char err[2048] = "", rows[2048];
    sweep w;
    tbl t;
    memset(&t, 0, sizeof t);
    int rc = 1;
    if (parse_temps(o->temps, &w, err, sizeof err)) {
        fprintf(stderr, "ddm-eval: %s\n", err);
        return 2;
    }
    size_t at = 0;
    for (int s = 0; s < NSWEPT; s++)
        for (int i = 0; i < w.nt; i++)
            at += (size_t)snprintf(rows + at, sizeof rows - at, "%s%s@%g", at ? "," : "",
                                   SWEPT[s], w.temp[i]);
    for (int r = 0; r < NREFS; r++)
        at += (size_t)snprintf(rows + at, sizeof rows - at, ",%s", REFS[r]);
    if (at >= sizeof rows) {
        fprintf(stderr, "ddm-eval: too many temperatures\n");
        return 2;
    }
    if (tbl_open(&t, o, rows, o->modes, 0, err, sizeof err))
        goto out;
    for (int s = 0; s < NSWEPT; s++)
        for (int i = 0; i < w.nt; i++) {
            char name[GEN_NAME];
            snprintf(name, sizeof name, "%s@%g", SWEPT[s], w.temp[i]);
            w.row[s][i] = tbl_row_index(&t, name);
        }
    for (int r = 0; r < NREFS; r++)
        w.ref[r] = tbl_row_index(&t, REFS[r]);
    if (tbl_run(&t, err, sizeof err) || write_reports(&t, &w, err, sizeof err))
        goto out;
    for (int m = 0; m < TBL_MODES; m++)
        if (t.modes[m] && o->plots && write_plots(&t, &w, m, err, sizeof err))
            goto out;
    printf("%s sweep (%s), %.0f s: FID of full@T and top-2@T\n", o->set, o->out, t.wall);
    for (int i = 0; i < w.nt; i++) {
        printf("  T %6g", w.temp[i]);
        for (int s = 0; s < NSWEPT; s++)
            for (int k = 0; k < t.js.n; k++)
                printf("  %s %s %8.2f", SWEPT[s], t.js.j[k]->name,
                       tbl_stat(&t, t.modes[0] ? 0 : 1, w.row[s][i], k, TBL_FID).mean);
        printf("\n");
    }
    printf("wrote %s/sweep.md and sweep.csv%s\n", o->out, o->plots ? " and plots" : "");
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "ddm-eval: %s\n", err[0] ? err : "sweep failed");
    tbl_close(&t);
    return rc;
}
