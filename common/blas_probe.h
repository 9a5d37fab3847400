/* blas_probe.h -- timing OpenBLAS core types on the forward pass, one child
 * process per core type.
 *
 * OpenBLAS picks its kernels once, when it loads, from OPENBLAS_CORETYPE or
 * the CPU's name, so one process can time only one core type. The probe
 * starts the calling program again (/proc/self/exe) as
 * `PROG --probe-blas CORE WINDOW_MS` with OPENBLAS_CORETYPE=CORE for every
 * candidate at once; blas_select (blas.h) sends such a process to
 * blas_probe_child. Each child builds the shipped digits expert's network
 * (random fp16-exact weights), checks its forward on OpenBLAS and on
 * half_gemm against net_forward_ref at every row count, then times both at
 * every row count whenever the parent asks: the parent asks each child in
 * turn, round after round, so the candidates are measured interleaved on a
 * machine whose speed drifts, and only one measures at a time. */
#ifndef DDM_BLAS_PROBE_H
#define DDM_BLAS_PROBE_H

#include <stddef.h>

#include "common/blas_tune.h"

#define BLAS_PROBE_FLAG "--probe-blas"

/* The network timed: the shipped digits expert (models/digits). */
#define BLAS_PROBE_ARCH { .in_dim = 784, .hidden = 384, .n_blocks = 2, .out_dim = 784, \
                          .n_classes = 10, .time_dim = 64, .gauss_rank = 64 }

/* The child's side: argv after BLAS_PROBE_FLAG is CORE (or "own": only
 * report the core OpenBLAS picked by itself) and WINDOW_MS. Speaks the
 * line protocol on stdin/stdout described in blas_probe.c. Never returns:
 * exits 0, or 1 on a setup failure. */
void blas_probe_child(int argc, char **argv);

/* Measures on this CPU (/proc/cpuinfo flags in `flags`): finds OpenBLAS's
 * own pick, then times every candidate of blas_tune_candidates over `rounds`
 * interleaved rounds (fewer when 60 s have passed: t->rounds says how many),
 * each timing a forward for about window_s per row count and path. exe is the program to start (this one). Fills t (rows,
 * candidates with their status, errors and median times, own, rounds, when,
 * seconds). Returns 0, or DDM_EUNAVAIL with a message in err when no probe
 * could run at all. */
int blas_probe_run(const char *exe, const char *flags, int rounds, double window_s, blas_table *t,
                   char *err, size_t errlen);

#endif
