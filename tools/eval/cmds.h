/* cmds.h -- the ddm-eval subcommands. Each takes parsed options and returns
 * the process exit code: 0 success, 1 runtime error (one line on stderr). */
#ifndef DDM_EVAL_CMDS_H
#define DDM_EVAL_CMDS_H

#include "tools/eval/ctx.h"

/* FID of one strategy, with floor, class histogram and confident rate. */
int cmd_fid(const eval_opts *o);
/* Every strategy, monolith and expert alone: table.md / table.csv / plots. */
int cmd_table(const eval_opts *o);
/* Distances from x_t and predicted x0 to cluster centroids along trajectories. */
int cmd_distance(const eval_opts *o);
/* Forced experts asked for each class; switching experts mid-trajectory. */
int cmd_specialists(const eval_opts *o);
/* full and top-2 over router temperatures, with references: sweep.md / .csv / plots. */
int cmd_sweep(const eval_opts *o);
/* Class histograms vs the data, router calibration, first choices: coverage.md / .csv. */
int cmd_coverage(const eval_opts *o);

/* Default table rows for a set of K experts: "monolith", "full", "uniform",
 * "top-1", "top-2", "top-3", "threshold", "sample", "nucleus", "expert:0",
 * ... (top-k only for k <= K). Writes up to max names (each GEN_NAME) into
 * names; returns the count. */
int table_default_rows(int K, char names[][GEN_NAME], int max);

#endif
