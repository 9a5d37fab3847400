/* cfg.h -- ddm-train's settings: one struct for every subcommand, its
 * defaults, and the canonical command line that reproduces a step.
 *
 * The pipeline (`all`) runs each step as a child `ddm-train <step> ...` whose
 * arguments cfg_argv() spells out in full, and every weights file records the
 * command that produced it, so the MANIFEST can list exact commands. */
#ifndef DDM_TRAIN_CFG_H
#define DDM_TRAIN_CFG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/net.h"
#include "common/st.h"
#include "tools/train/conv.h"
#include "tools/train/data.h"
#include "tools/train/fit.h"

#define CFG_PATH 1024
#define CFG_MAX_ARGS 96

/* One network's architecture and training schedule. */
typedef struct net_train {
    int hidden, blocks;
    long steps;
    int batch;
    float lr;
    long warmup;
    float ema;
    float p_null;
    t_dist tdist;
    float t_mean;   /* logit-normal mean */
} net_train;

typedef struct train_cfg {
    char dataset[CFG_PATH];    /* --data: digits, fashion, or a folder of PNGs */
    char set[32];              /* the set's short name (digits, fashion, the folder's name) */
    int size;                  /* --size: folder images resampled to size x size (0 = own) */
    int channels;              /* --channels 1|3 (0 = from the data) */
    char background[16];       /* --background: colour under transparent pixels */
    int strict;                /* --strict: an unreadable PNG is an error */
    char data_dir[CFG_PATH];   /* --data-dir */
    int K;                     /* --k */
    char shards[CFG_PATH];     /* --shards (default data-dir/<set>/k<K>) */
    char out[CFG_PATH];        /* --out (default models/<set>) */
    int shard;                 /* --shard (expert) */
    char shard_file[CFG_PATH]; /* --shard-file (expert; default shards/shard-N) */
    uint64_t seed;             /* --seed */
    int threads;               /* --threads: OpenBLAS threads, 0 = its default */
    int jobs;                  /* --jobs: cores `all` may use at once */
    int force;                 /* --force */
    float log_secs;            /* --log-secs */
    st_dtype dtype;            /* --dtype f16|f32 */
    /* partition */
    int pca, restarts;
    /* denoisers (experts; the monolith uses the same network) */
    net_train den;
    int time_dim, rank;
    float var_floor;
    int min_class;             /* expert: classes with fewer images answer as null */
    long mono_steps;           /* 0 = den.steps */
    int mono_batch;            /* 0 = K * den.batch (equal compute) */
    /* router, classifier */
    net_train rt;
    int rt_time_dim;
    net_train cls;
    int cls_shift;
    /* conv judge (tools/train/conv.h): steps, batch, lr, warmup, ema of jdg */
    net_train jdg;
    char judge_channels[32];   /* output channels of each conv layer, "16,32" */
    int judge_feat, judge_kernel, judge_shift;
    /* verify */
    int samples, sample_steps;
    float guidance;
    char strategy[32];         /* --strategy of the ensemble measurement (top-2) */
    char grids[CFG_PATH];      /* --grids PREFIX: PREFIX-top2.png, PREFIX-labels.png */
    /* the command line this process was started with (metadata) */
    char command[4096];
} train_cfg;

/* Subcommands, as bits of the set of steps a flag applies to. */
enum {
    STEP_PARTITION = 1, STEP_EXPERT = 2, STEP_ROUTER = 4, STEP_MONOLITH = 8,
    STEP_CLASSIFIER = 16, STEP_VERIFY = 32, STEP_ALL = 64, STEP_JUDGE = 128,
};

/* Fills the defaults (dataset digits, K 8, ...). */
void cfg_default(train_cfg *c);

/* The set's short name: c->set, or c->dataset for a config filled by hand. */
const char *cfg_set_name(const train_cfg *c);

/* How to load c's dataset (pointers into c). */
data_spec cfg_data_spec(const train_cfg *c);

/* Parses the flags of subcommand `step` (one STEP_ bit) from argv[1..argc)
 * (getopt_long; argv[0] is the subcommand) over the defaults in c, then
 * derives shards/out and records the command line. Returns 0, 1 when
 * --help was given (help printed to stdout), or DDM_EINVAL with a message
 * in err for an unknown flag, a flag of another step, a bad value or a
 * stray argument. */
int cfg_parse(train_cfg *c, unsigned step, int argc, char **argv, char *err, size_t errlen);

/* Prints the flags of step (with their defaults) to f. */
void cfg_print_flags(const train_cfg *defaults, unsigned step, FILE *f);

/* Canonical arguments of subcommand step (not counting the program name)
 * into argv (CFG_MAX_ARGS, strings in store of storelen bytes); returns argc
 * or -1 if store is too small. Only the flags the step reads are listed. */
int cfg_argv(const train_cfg *c, const char *step, int shard, char **argv, char *store,
             size_t storelen);

/* A seed for one network of the run: role ("expert", "router", ...) and index. */
uint64_t cfg_seed(const train_cfg *c, const char *role, int index);

/* The network configs of each role for a dataset of dim pixels and
 * n_classes classes. */
net_config cfg_denoiser(const train_cfg *c, int dim, int n_classes);
net_config cfg_router(const train_cfg *c, int dim, int n_classes);
net_config cfg_classifier(const train_cfg *c, int dim, int n_classes);
/* The conv judge's config for height x width x channels images; returns 0 or
 * DDM_EINVAL with a message (bad --judge-channels, or a config
 * conv_config_check refuses). */
int cfg_judge(const train_cfg *c, int height, int width, int channels, int n_classes,
              conv_config *out, char *err, size_t errlen);

/* Training options of a role (tag is the progress-line prefix). */
train_opts cfg_opts(const train_cfg *c, const net_train *n, uint64_t seed, const char *tag);

#endif
