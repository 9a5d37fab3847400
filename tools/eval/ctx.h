/* ctx.h -- what every ddm-eval command shares: options, the reference
 * images (held-out set for FID, training set for the floor), the per-sample
 * quality summary, and small output helpers.
 *
 * The reference sets are the dataset's own splits (tools/train/data.h) or,
 * with --heldout / --train, any safetensors file with a tensor "images"
 * ([n][D], U8 as x = b * 2 / 255 - 1, or F32 in [-1, 1]) and optionally
 * "labels" (I32 [n]) -- a shard file of ddm-train is one. */
#ifndef DDM_EVAL_CTX_H
#define DDM_EVAL_CTX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tools/eval/fid.h"
#include "tools/eval/gen.h"
#include "tools/eval/judge.h"
#include "tools/eval/metrics.h"

#define EVAL_PATH 1024
#define EVAL_MAX_CLASSES 64

typedef struct eval_opts {
    char data[EVAL_PATH];         /* --data: digits | fashion | a folder of PNGs */
    char set[32];                 /* the set's short name (digits, fashion, the folder's name) */
    char data_dir[EVAL_PATH];     /* --data-dir */
    char models[EVAL_PATH];       /* --models (default models/<data>) */
    char classifier[EVAL_PATH];   /* --classifier (default <models>/classifier.safetensors) */
    char conv_judge[EVAL_PATH];   /* --conv-judge ("" = judge-conv.safetensors beside the
                                     classifier if present; "none" = no second judge) */
    char monolith[EVAL_PATH];     /* --monolith ("" = <models>/monolith.safetensors if present) */
    char partition[EVAL_PATH];    /* --partition (default <data-dir>/<data>/k<K>/partition.safetensors) */
    char heldout[EVAL_PATH];      /* --heldout file ("" = the dataset's test split) */
    char train[EVAL_PATH];        /* --train file ("" = the dataset's training split) */
    char url[256];                /* --url: sample through a running ddm-router */
    char out[EVAL_PATH];          /* --out (default docs/results/<data>) */
    char strategy[GEN_NAME];      /* fid: --strategy */
    char rows[512];               /* table: --rows (comma list, "" = all) */
    char strategies[256];         /* distance, coverage: --strategies */
    int strategies_given;
    char temps[256];              /* sweep: --temperatures */
    int label;                    /* fid: --label (-1 none) */
    int conditional;              /* fid: --conditional (class-balanced labels) */
    int steps;                    /* --steps */
    float guidance;               /* --guidance of labelled samples */
    int seeds;                    /* --seeds */
    uint64_t seed;                /* --seed: first run seed */
    long n;                       /* -n: images per FID (per seed in table) */
    long n_cond;                  /* --n-cond: table, class-conditional images per seed */
    int modes;                    /* table: bit 1 unconditional, bit 2 conditional */
    int modes_given;
    int probe_n;                  /* --probe: trajectories of a probe pass */
    int every;                    /* --every: probed evaluations */
    float eps;                    /* --eps: Lipschitz step */
    int jobs;                     /* --jobs: worker threads */
    int boot;                     /* --boot: bootstrap replicates per FID draw (0 = none) */
    int timeout_ms;               /* --timeout (url mode) */
    int plots;                    /* write PNG charts and grids */
    int quiet;
    char command[2048];           /* the command line, for reports */
    int n_given;                  /* -n was given */
} eval_opts;

void eval_opts_default(eval_opts *o);
/* Fills defaults that depend on --data and --models; call after parsing. */
void eval_opts_finish(eval_opts *o);

#define EVAL_MAX_JUDGES 2
#define EVAL_REF_MAX 1000   /* reference points for KID and precision/recall */
#define EVAL_STATS 4        /* bootstrap values per replicate: FID, KID, precision, recall */

/* A set of judges, judge 0 the classifier (one set per thread). */
typedef struct eval_judges {
    judge *j[EVAL_MAX_JUDGES];
    int n;
} eval_judges;

/* The held-out set as one judge sees it. */
typedef struct eval_jref {
    fid_ref fid;            /* statistics and square root of all held-out features */
    float *feat;            /* [m][H] features of the reference subset (KID, precision/recall) */
    long m;
    int H;
    double kid_scale;       /* KID's kernel scale (kid_scale of the subset) */
    double kid_rr;          /* KID's reference term */
    double *radius;         /* [m] k-NN radii of the subset (precision) */
    double confident;       /* share of all held-out images the judge is confident about */
} eval_jref;

/* The reference images and their features under every judge. */
typedef struct eval_ref {
    int D, C;
    float *held;            /* [held_n][D] */
    int *held_labels;       /* [held_n] or NULL */
    long held_n;
    long *ref_idx;          /* [ref_m] the held-out images of the KID / PR subset */
    long ref_m;
    int judges;
    eval_jref j[EVAL_MAX_JUDGES];
    double class_freq[EVAL_MAX_CLASSES]; /* the training labels' class frequencies (or the
                                            held-out set's when no training labels) */
    float *train;           /* [train_n][D] or NULL when unavailable */
    long train_n;
    const char *const *class_names; /* [C] or NULL */
} eval_ref;

/* Loads the held-out set (required) and the training set (optional: on
 * failure train is NULL and a warning goes to stderr) and computes every
 * judge's reference features. Returns 0 or an error with a message. */
int eval_ref_load(const eval_opts *o, const eval_judges *js, eval_ref *r, char *err,
                  size_t errlen);
void eval_ref_free(eval_ref *r);

/* One judge's verdict on a sample set. */
typedef struct eval_jq {
    double fid, kid, precision, recall;
    double confident;              /* share with max softmax > JUDGE_CONFIDENT */
    double label_acc;              /* share classified as asked (NAN without labels) */
    int hist[EVAL_MAX_CLASSES];    /* class counts */
} eval_jq;

/* Quality of n samples under every judge, with bootstrap replicates. */
typedef struct eval_quality {
    long n;
    int judges;
    eval_jq j[EVAL_MAX_JUDGES];
    int boot;                      /* replicates (0 = none) */
    double *boot_val;              /* [judges][boot][EVAL_STATS] (owned) */
    double *boot_hist;             /* [judges][boot][C] class counts of each replicate (owned) */
    int C;
} eval_quality;

/* Judges x [n][D] with every judge of js against r: FID, KID, precision and
 * recall, class histogram, confident rate, label accuracy (asked [n] the
 * requested classes, or NULL). With boot > 0 also that many bootstrap
 * replicates (metric_boot_counts of boot_seed: the same for every row of a
 * run seed, so rows are paired). conf [n] receives judge 0's per-sample
 * confidence when not NULL. Returns 0 or an error with a message; free q
 * with eval_quality_free either way. */
int eval_quality_of(const eval_judges *js, const eval_ref *r, const float *x, long n,
                    const int *asked, int boot, uint64_t boot_seed, float *conf,
                    eval_quality *q, char *err, size_t errlen);
void eval_quality_free(eval_quality *q);

/* The quality of n training images (a subset drawn without replacement with
 * seed; all of them when n >= train_n) against the held-out set, no
 * bootstrap: the floor a perfect generator would reach with that many
 * samples. Returns 0, DDM_ENOTFOUND without a training set, or an error. */
int eval_floor(const eval_ref *r, const eval_judges *js, long n, uint64_t seed, eval_quality *q,
               char *err, size_t errlen);

/* Opens the judges named by o: the classifier (required) and the conv judge
 * (--conv-judge; by default judge-conv.safetensors beside the classifier when
 * it exists, with a note on stderr when it does not). Returns 0 or an error with a message
 * naming the flag to fix. */
int eval_open_judges(const eval_opts *o, eval_judges *js, char *err, size_t errlen);
void eval_close_judges(eval_judges *js);

/* Opens the classifier named by o (message names the flag to fix). */
judge *eval_open_judge(const eval_opts *o, char *err, size_t errlen);
/* Opens the sample source of o: --url, else the in-process set. */
gen_source *eval_open_source(const eval_opts *o, char *err, size_t errlen);

/* Cluster centroids [K][D] (caller frees): the experts' "centroid" tensors,
 * else the partition file's "centroids". NULL with a message when neither
 * exists. where receives a description of the source. */
float *eval_centroids(const eval_opts *o, ensemble *e, char *where, size_t wlen, char *err,
                      size_t errlen);
/* Class make-up of the clusters: table [K][C] counts (caller frees) from the
 * partition file, or NULL with a message. */
int *eval_cluster_table(const eval_opts *o, int K, int C, char *err, size_t errlen);

/* Opens out/name for writing; NULL with a message. */
FILE *eval_fopen(const eval_opts *o, const char *name, char *err, size_t errlen);
/* Opens a command's two reports out/md_name and out/csv_name (*md, *csv).
 * Returns 0, or DDM_EIO with a message (neither left open). */
int eval_fopen_reports(const eval_opts *o, const char *md_name, const char *csv_name, FILE **md,
                       FILE **csv, char *err, size_t errlen);
/* Closes a command's two reports (*md, *csv; both set to NULL). Returns 0, or
 * DDM_EIO with "writing OUT/what failed" when a write or a close failed. */
int eval_fclose_reports(const eval_opts *o, FILE **md, FILE **csv, const char *what, char *err,
                        size_t errlen);
/* A file-name-safe copy of a row name ("expert:3" -> "expert-3"). */
void eval_slug(const char *name, char *buf, size_t len);
/* Width and height of an image of D pixels (square when D is a square). */
void eval_image_side(int D, int *w, int *h);
/* The image shape of the set being evaluated (from the classifier's
 * metadata, eval_open_judge): eval_write_grid draws images of that many
 * values with it -- RGB included -- and others with eval_image_side. */
void eval_set_image_shape(const model_shape *shape);
/* Writes n images [n][D] as a grid PNG with cols columns at out/name. */
int eval_write_grid(const eval_opts *o, const char *name, const float *x, int n, int D, int cols,
                    char *err, size_t errlen);
/* One line naming the weights in use by their sha256 (first 12 hex digits):
 * router, experts, monolith (in-process sources) and the judges of js (may be
 * NULL). Empty for a URL source without judges. */
void eval_weights_line(gen_source *g, const eval_judges *js, char *buf, size_t len);
/* Seconds since an arbitrary start (monotonic). */
double eval_now(void);
/* Class name c ("3", "T-shirt/top", ...) into buf. */
const char *eval_class_name(const eval_ref *r, int c, char *buf, size_t len);

#endif
