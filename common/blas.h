/* blas.h -- which OpenBLAS kernels and which half_gemm crossover a process
 * uses: measured on the CPU it runs on, cached, overridable (every ddm
 * binary that does matrix work calls blas_select first).
 *
 * OpenBLAS 0.3.21 (Debian, DYNAMIC_ARCH) picks its kernels by CPU name when
 * it loads, and the name is not the speed (blas_tune.h). The kernels can only
 * be chosen before the library loads, through OPENBLAS_CORETYPE: so the
 * choice is measured in child processes (blas_probe.h), kept in a small file
 * per CPU, and the program re-executes itself when OpenBLAS loaded another
 * core than the one chosen. */
#ifndef DDM_BLAS_H
#define DDM_BLAS_H

#include <stddef.h>

#include "common/blas_tune.h"

/* Rounds and window of the measurement made at startup when the cache has
 * none: about 2 s of CPU on this project's machine (docs/benchmarks.md).
 * `expert_bench --retune N` measures longer. */
#define BLAS_STARTUP_ROUNDS 3
#define BLAS_STARTUP_WINDOW_S 0.001

/* Call first thing in main, before any thread and before parsing argv.
 *  - `PROG --probe-blas ...` is a probe child (blas_probe.h): it runs and exits.
 *  - Removes `--blas-core NAME` and `--half-rows N` (also `--opt=value`) from
 *    argv and *argc, so the program's own parser never sees them; a bad value
 *    prints "PROG: ..." saying what to fix and exits with status 2.
 *  - Decides the core and the crossover, each from the first of: its flag;
 *    the environment (OPENBLAS_CORETYPE, DDM_HALF_ROWS: what a parent ddm
 *    process or the user set); the measurement cached for this CPU, OpenBLAS
 *    and build (taken now, under a lock, when there is none; blas_tune.h);
 *    OpenBLAS's own pick (Prescott replaced by SkylakeX or Haswell where the
 *    CPU has AVX-512 or AVX2) and HALF_GEMM_DEFAULT_ROWS.
 *  - Calls half_gemm_set_rows, exports OPENBLAS_CORETYPE and DDM_HALF_ROWS
 *    (child processes inherit the choice), and re-executes the program
 *    (/proc/self/exe, the remaining argv) when OpenBLAS loaded another core.
 *  - Logs the choice in the process that made it: at info when it measured,
 *    restarts, follows a flag or has no measurement, else at debug.
 * With -h, --help, -V or --version among the arguments it only strips and
 * checks the flags: nothing is measured or re-executed. With --blas-table it
 * prints this CPU's table (measured now if none is cached) and the choice it
 * gives on stdout, and exits 0 (1 when nothing could be measured). */
void blas_select(int *argc, char **argv);

/* Where this process's choice came from, e.g. "measured on this CPU",
 * "--blas-core", "OPENBLAS_CORETYPE" (set by blas_select; "" before). */
const char *blas_core_source(void);
const char *blas_rows_source(void);

/* Fills id with this CPU, OpenBLAS and build (what a cached measurement is
 * valid for). */
void blas_ident_get(blas_ident *id);

/* Measures now (rounds interleaved rounds of window_s per row count and
 * path; blas_probe_run) and writes the result to this CPU's cache file, for
 * the processes started after. Fills t and the choice it gives. Returns 0 or
 * a negative error with a message in err (a cache that cannot be written is
 * only logged). */
int blas_measure(int rounds, double window_s, blas_table *t, blas_choice *c, char *err,
                 size_t errlen);

/* The cached table for this CPU and the choice it gives (no override
 * applied). Returns 0, or an error of blas_tune_read with a message in err. */
int blas_cached(blas_table *t, blas_choice *c, char *path, size_t pathlen, char *err,
                size_t errlen);

/* The kernel set OpenBLAS uses ("SkylakeX", "Prescott", ...). */
const char *blas_core(void);

/* 1 when that kernel set multiplies small sgemm problems (m n k <= 1e6)
 * without packing its operands (OpenBLAS 0.3.21: SkylakeX and the cores built
 * on it), else 0. net_forward slices small-batch layers to use them. */
int blas_has_small_gemm(void);

#endif
