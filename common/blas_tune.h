/* blas_tune.h -- choosing OpenBLAS's kernels and the half_gemm crossover from
 * measurements, and the small per-CPU cache file that keeps them.
 *
 * OpenBLAS (DYNAMIC_ARCH) picks its kernels by CPU name when it loads, and
 * the name is not the speed: on an AMD EPYC with AVX-512 it picked Haswell/Zen
 * kernels while SkylakeX ran sgemm 1.85x faster, on one Xeon it fell back to
 * Prescott. So every core type the CPU can run is timed on the forward pass
 * of the shipped expert at the row counts workers see (blas_probe.h), checked
 * against the reference forward, and the fastest correct one wins; the same
 * table gives the row count up to which net_forward uses half_gemm.
 *
 * Everything here is logic on a table of timings (tested with made-up
 * tables); the measuring is in blas_probe.h, the startup glue in blas.h. */
#ifndef DDM_BLAS_TUNE_H
#define DDM_BLAS_TUNE_H

#include <stddef.h>
#include <stdio.h>

#define BLAS_TUNE_NAME 24       /* longest core type name + 1 */
#define BLAS_TUNE_MAX_CANDS 12
#define BLAS_TUNE_MAX_ROWS 16
#define BLAS_TUNE_MAX_ERR 1e-5  /* L2 error relative to net_forward_ref, as tests/test_net.c */
#define BLAS_TUNE_MARGIN 0.03   /* OpenBLAS's own pick stays unless 3% slower than the best */
#define BLAS_TUNE_FORMAT 1      /* of the cache file; a change invalidates old files */

/* The row counts timed, ascending: what workers see (1-64), and 96 and 128
 * so that a crossover above 64 is found where it is. */
extern const int blas_tune_rows[];
extern const int blas_tune_n_rows;

typedef enum blas_cand_status {
    BLAS_CAND_OK = 0,      /* measured */
    BLAS_CAND_UNKNOWN = 1, /* this OpenBLAS does not know the name (it loaded another core) */
    BLAS_CAND_FAILED = 2,  /* the probe died, timed out or could not start */
} blas_cand_status;

typedef struct blas_cand {
    char core[BLAS_TUNE_NAME];
    blas_cand_status status;
    double err_blas;                    /* forward on OpenBLAS vs the reference, all rows */
    double err_half;                    /* forward on half_gemm vs the reference; -1 if none */
    double blas_us[BLAS_TUNE_MAX_ROWS]; /* CPU us per forward over rows[i] on OpenBLAS: the
                                           median over rounds of the fastest call in a round */
    double half_us[BLAS_TUNE_MAX_ROWS]; /* the same on half_gemm; 0 when this CPU has none */
    /* set by blas_tune_choose */
    int wrong;         /* 1 when an error is over BLAS_TUNE_MAX_ERR (OpenBLAS's: refused) */
    int half_rows;     /* this core's crossover (blas_tune_crossover) */
    double score;      /* geometric mean over the rows of latents/s on OpenBLAS: the
                          kernels' speed (half_gemm does not depend on them) */
} blas_cand;

typedef struct blas_table {
    int n_rows;
    int rows[BLAS_TUNE_MAX_ROWS];
    int n_cand;
    blas_cand cand[BLAS_TUNE_MAX_CANDS];
    char own[BLAS_TUNE_NAME]; /* the core OpenBLAS picks by itself on this CPU */
    int rounds;               /* interleaved rounds the medians are over */
    char when[32];            /* UTC time of the measurement, ISO 8601 */
    double seconds;           /* how long the measurement took */
} blas_table;

typedef struct blas_choice {
    char core[BLAS_TUNE_NAME];
    int half_rows;
    int index;    /* the candidate chosen, -1 when no usable one (core then as forced, or "") */
    int kept_own; /* 1 when OpenBLAS's own pick was kept within BLAS_TUNE_MARGIN of the best */
} blas_choice;

/* What a measurement is valid for: a cache file answers only for the same. */
typedef struct blas_ident {
    char cpu[128];      /* /proc/cpuinfo "model name" */
    char flags[4096];   /* its "flags" */
    char openblas[192]; /* openblas_get_config() without the name of the loaded core */
    char build[64];     /* ddm version and build (release or sanitizers: another speed) */
} blas_ident;

/* 1 if the CPU whose /proc/cpuinfo flags are `flags` (space separated) has
 * every instruction set OpenBLAS's `core` kernels use; 0 if not, with the
 * first missing flag in missing; -1 if core is not an x86 core type this
 * module knows (the names of OPENBLAS_CORETYPE, case-insensitive). */
int blas_tune_runnable(const char *core, const char *flags, char *missing, size_t missing_len);

/* The known core type names, comma separated (for messages). */
const char *blas_tune_known_cores(void);

/* Writes the canonical spelling of a known core name into out; -1 if unknown. */
int blas_tune_canonical(const char *core, char out[BLAS_TUNE_NAME]);

/* The core types worth timing on a CPU with `flags`: those it can run from
 * the two newest instruction-set generations it has (AVX-512, AVX2, AVX,
 * SSE3), newest first, then `own` (OpenBLAS's own pick; may be NULL) when not
 * among them. Returns the count (at most max). */
int blas_tune_candidates(const char *flags, const char *own, char out[][BLAS_TUNE_NAME], int max);

/* The crossover of candidate c of t: the row count h (0 or one of t->rows)
 * that minimises the time per latent summed over the rows when half_gemm
 * takes rows <= h and OpenBLAS the others. 0 when c has no half_gemm
 * timings or its half_gemm results were wrong. */
int blas_tune_crossover(const blas_table *t, const blas_cand *c);

/* Marks wrong candidates, sets every candidate's crossover and score, and
 * chooses: the OK, correct candidate with the best score, except that
 * OpenBLAS's own pick is kept when it is within BLAS_TUNE_MARGIN of it (no
 * restart for noise). With forced (a core name, or NULL) that core is taken
 * whatever the timings, with its crossover when the table has it. When
 * nothing is usable (or forced is not in the table), index is -1 and
 * half_rows is fallback_rows. Returns out->index. */
int blas_tune_choose(blas_table *t, const char *forced, int fallback_rows, blas_choice *out);

/* Path of the cache file for id: $XDG_CACHE_HOME/ddm/blas-<hash>.txt, else
 * $HOME/.cache/ddm/blas-<hash>.txt, the hash taken over id. Returns 0, or
 * DDM_ENOTFOUND when neither variable is set (absolute), DDM_ERANGE when the
 * path does not fit. */
int blas_tune_cache_path(const blas_ident *id, char *path, size_t len);

/* mkdir -p of the directory that holds path, mode 0700. Returns 0 or -errno. */
int blas_tune_make_dir(const char *path);

/* Writes t for id to path (its directory created, mode 0700), through a
 * temporary file renamed into place. Returns 0 or a negative error with a
 * message in err. */
int blas_tune_write(const char *path, const blas_ident *id, const blas_table *t, char *err,
                    size_t errlen);

/* Reads the table at path into t if it was measured for id. Returns 0;
 * DDM_ENOTFOUND (no file), DDM_EMISMATCH (another CPU, OpenBLAS, build or
 * file format: measure again), DDM_EFORMAT (damaged) with a message in err. */
int blas_tune_read(const char *path, const blas_ident *id, blas_table *t, char *err,
                   size_t errlen);

/* The table as Markdown (latents/s per row count on OpenBLAS and, last, on
 * half_gemm; errors; crossover; the choice marked) into f. */
void blas_tune_print(FILE *f, const blas_table *t, const blas_choice *c);

#endif
