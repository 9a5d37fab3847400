/* gen.h -- where ddm-eval's samples come from: the in-process sampler or a
 * running ddm-router.
 *
 * In-process, images are drawn with ensemble_sample (router/local.h): the
 * same tick code the daemon runs. With --url they are requested from a
 * ddm-router (POST /v1/samples, JSON, trace on for the switch count). Both
 * paths draw the same images: a draw of n images is cut into requests of at
 * most GEN_CHUNK, request j of run seed s for label l (-1 unconditional)
 * using seed
 *     gen_request_seed(s, l, j) = 10000 s + 100 (l + 1) + j,
 * and in-process images are rounded to 8 bits exactly as the server's PNGs
 * are, so an eval against a served cluster matches the offline one. */
#ifndef DDM_EVAL_GEN_H
#define DDM_EVAL_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "router/local.h"

#define GEN_CHUNK 250
#define GEN_NAME 32

/* One configuration to sample: a strategy on the expert set, or the monolith. */
typedef struct gen_spec {
    char name[GEN_NAME];      /* row name: "top-2", "threshold", "expert:3", "monolith" */
    char strategy[GEN_NAME];  /* strategy name as strategy_parse takes it */
    float threshold;          /* NAN = the strategy's default */
    float temperature;        /* NAN = default */
    int monolith;             /* sample models/<set>/monolith.safetensors instead */
    int steps;                /* Euler steps */
    float guidance;           /* classifier-free guidance of labelled draws */
} gen_spec;

/* Fills a spec for strategy name (or "monolith"), steps 50, guidance 1. A
 * suffix "@T" sets the router's softmax temperature ("full@0.5"); a bad one
 * is refused by gen_spec_strategy. */
void gen_spec_init(gen_spec *sp, const char *name);

/* What a draw cost and how it routed. */
typedef struct gen_stats {
    long images;
    double rows;                          /* expert rows (latent evaluations), all images */
    double rows_by_expert[STRAT_MAX_EXPERTS];
    double switches;                      /* routing switches, summed over images */
    double seconds;                       /* wall time of the sampling itself */
} gen_stats;

typedef struct gen_source gen_source;

/* In-process source: the set in models_dir (router + experts) and, when
 * monolith_path names an existing file, the monolith (NULL: models_dir/
 * monolith.safetensors if present). Returns NULL with a message in err. */
gen_source *gen_open_local(const char *models_dir, const char *monolith_path, char *err,
                           size_t errlen);
/* Source that asks the ddm-router at url ("http://host:port"); reads K,
 * dim and classes from GET /v1/experts. timeout_ms bounds each request. */
gen_source *gen_open_url(const char *url, int timeout_ms, char *err, size_t errlen);
void gen_close(gen_source *g);

/* The expert set's size, latent size and label classes (0 = unconditional). */
int gen_K(const gen_source *g);
int gen_dim(const gen_source *g);
int gen_classes(const gen_source *g);
/* 1 if the monolith can be sampled (in-process with a monolith file). */
int gen_has_monolith(const gen_source *g);
/* The in-process expert set, or NULL for a URL source. */
ensemble *gen_ensemble(gen_source *g);
/* The in-process monolith (a one-expert set), or NULL. */
ensemble *gen_monolith(gen_source *g);

uint64_t gen_request_seed(uint64_t run_seed, int label, int chunk);

/* Draws n images of spec for label (-1 unconditional) and run seed into out
 * [n][dim] (8-bit-rounded values in [-1, 1]); adds to *st when not NULL.
 * Returns 0 or an error with a one-line message. */
int gen_draw(gen_source *g, const gen_spec *sp, int label, uint64_t run_seed, long n, float *out,
             gen_stats *st, char *err, size_t errlen);

/* Class-balanced labelled draw: n images in C blocks, images
 * c n / C .. (c + 1) n / C - 1 asking for class c (each block one gen_draw
 * with that label); labels [n] receives each image's class (may be NULL).
 * Same contract as gen_draw. */
int gen_draw_classes(gen_source *g, const gen_spec *sp, uint64_t run_seed, long n, float *out,
                     int *labels, gen_stats *st, char *err, size_t errlen);

/* Rounds x [n] to the 8-bit grid of PNG images in place (clamped to [-1, 1]). */
void gen_quantize(float *x, size_t n);

/* Strategy of spec for a set of K experts (monolith: expert:0 of 1).
 * Returns 0 or DDM_EINVAL with a message. */
int gen_spec_strategy(const gen_spec *sp, int K, strategy *out, char *err, size_t errlen);

#endif
