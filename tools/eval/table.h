/* table.h -- the engine behind `ddm-eval table` and `ddm-eval sweep`: rows
 * (strategies, the monolith, experts alone, strategies at a router
 * temperature) sampled over run seeds and modes, judged by every judge, with
 * bootstrap replicates, and the summaries the reports print.
 *
 * Work is cut into items -- (mode, row, seed) FID draws and (mode, row)
 * probe passes (probe.h) -- that o->jobs worker threads take from a shared
 * list, largest first. Each worker owns its sample source and judges and runs
 * OpenBLAS single-threaded, so rows are sampled side by side on separate
 * cores; images/s is therefore a one-core figure.
 *
 * Confidence intervals: every FID draw of a row is resampled o->boot times
 * (metric_boot_counts of the run seed: the same resamples for every row of a
 * seed, so differences between rows are paired); a replicate's value of a
 * row is the mean over seeds of the seeds' replicate values. An interval is
 * the estimate +- 1.96 bootstrap standard errors. Rows "expert:N" are not
 * resampled (references, not contenders). */
#ifndef DDM_EVAL_TABLE_H
#define DDM_EVAL_TABLE_H

#include <stdint.h>

#include "tools/eval/ctx.h"
#include "tools/eval/probe.h"

#define TBL_MAX_ROWS 80
#define TBL_MODES 2 /* 0 unconditional, 1 class-conditional */
#define TBL_MAX_SEEDS 16

enum { TBL_FID = 0, TBL_KID, TBL_PRECISION, TBL_RECALL }; /* stat index, as EVAL_STATS */

/* One FID draw's outcome. */
typedef struct tbl_cell {
    int done;
    eval_quality q;
    gen_stats st;
    float *grid;        /* first images (seed 0 only), TBL_GRID_N or 8 per class */
    int grid_n;
} tbl_cell;
#define TBL_GRID_N 64

/* One probe pass's outcome. */
typedef struct tbl_probe {
    int done;
    probe_result pr;
    float *conf;        /* [pr.n] judge 0's confidence in each final image */
} tbl_probe;

typedef struct tbl {
    const eval_opts *o;
    eval_judges js;                   /* worker 0's judges */
    eval_ref ref;
    gen_source *g0;                   /* worker 0's source */
    int K, D, C;
    int nrows;
    char rows[TBL_MAX_ROWS][GEN_NAME];
    gen_spec spec[TBL_MAX_ROWS];
    int boot_row[TBL_MAX_ROWS];       /* rows that get bootstrap replicates */
    int modes[TBL_MODES];             /* which modes run */
    long n_mode[TBL_MODES];           /* images per FID draw */
    int probes;                       /* probe passes run (in-process only) */
    tbl_cell *f;                      /* [TBL_MODES][nrows][seeds] */
    tbl_probe *p;                     /* [TBL_MODES][nrows] */
    eval_quality floor[TBL_MODES][TBL_MAX_SEEDS]; /* training images vs held-out */
    int floor_ok[TBL_MODES];
    long floor_n[TBL_MODES];
    char weights[1024];               /* sha256 line of the weights in use */
    double wall, cpu;                 /* of tbl_run */
} tbl;

/* Opens judges, reference set and source for o and parses rows (a comma
 * list; "" = table_default_rows); modes: bit 1 unconditional, bit 2
 * conditional; probe != 0 runs probe passes (in-process only). Drops the
 * monolith row when there is none, with a note. Returns 0 or an error with a
 * message; call tbl_close either way. */
int tbl_open(tbl *t, const eval_opts *o, const char *rows, int modes, int probe, char *err,
             size_t errlen);
/* Samples and judges every item (and the floors). Returns 0 or an error. */
int tbl_run(tbl *t, char *err, size_t errlen);
void tbl_close(tbl *t);

tbl_cell *tbl_cell_at(tbl *t, int mode, int row, int seed);
tbl_probe *tbl_probe_at(tbl *t, int mode, int row);
/* Index of row name, or -1. */
int tbl_row_index(const tbl *t, const char *name);

/* An estimate: the mean over seeds, the seeds' standard deviation and the
 * half-width of its 95% bootstrap interval (NAN without replicates). */
typedef struct tbl_est {
    double mean, sd, half;
} tbl_est;

/* stat (TBL_FID ..) of judge k for a row. */
tbl_est tbl_stat(tbl *t, int mode, int row, int k, int stat);
/* Row a minus row b, paired (mean over seeds of the differences, interval
 * from the paired replicates). */
tbl_est tbl_diff(tbl *t, int mode, int a, int b, int k, int stat);
/* Total-variation distance between judge k's class histogram of all seeds'
 * samples pooled and the data's class frequencies; sd is NAN. */
tbl_est tbl_tv(tbl *t, int mode, int row, int k);
/* The pooled class histogram behind tbl_tv into hist [C] (counts). */
void tbl_hist(tbl *t, int mode, int row, int k, double *hist);
/* The floor's stat of judge k (mean and sd over seeds). */
tbl_est tbl_floor(tbl *t, int mode, int k, int stat);
/* TV distance of the floor's judged class histogram (real images) pooled over seeds. */
double tbl_floor_tv(tbl *t, int mode, int k);

/* Mean over seeds of confident rate / label accuracy of judge k. */
double tbl_confident(tbl *t, int mode, int row, int k);
double tbl_label_acc(tbl *t, int mode, int row, int k);

#endif
