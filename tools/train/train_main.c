/* train_main.c -- ddm-train: datasets to a DDM expert set (see --help). */
#include <cblas.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/blas.h"
#include "common/err.h"
#include "common/log.h"
#include "tools/train/cfg.h"
#include "tools/train/cmds.h"

#define DDM_TRAIN_VERSION "0.1.0"

static const struct {
    const char *name;
    unsigned step;
    const char *what;
} STEPS[] = {
    { "partition", STEP_PARTITION,
      "k-means (k-means++, restarts, fixed seed) of the training set into K shards:\n"
      "              SHARDS/partition.safetensors and shard-N.safetensors (only cluster N's\n"
      "              images); prints the cluster x class table" },
    { "expert", STEP_EXPERT,
      "trains expert N (--shard N) on its shard file alone: rectified flow with a\n"
      "              Gaussian baseline, null label 10%, Adam, warmup + cosine, EMA;\n"
      "              writes OUT/expert-N.safetensors (metadata: dataset, K, cluster,\n"
      "              centroid tensor, architecture, config, seed, steps, loss, command)" },
    { "router", STEP_ROUTER,
      "trains r(x_t, t, label) -> K cluster logits on all training data (label\n"
      "              dropped ~50%); prints held-out accuracy at t = 0.1 .. 0.9 with and\n"
      "              without label; writes OUT/router.safetensors" },
    { "monolith", STEP_MONOLITH,
      "the same denoiser on all data with the experts' total compute (same steps,\n"
      "              K x batch); writes OUT/monolith.safetensors" },
    { "classifier", STEP_CLASSIFIER,
      "clean-image classifier (random shifts), prints test accuracy; its features\n"
      "              serve FID; writes OUT/classifier.safetensors" },
    { "judge", STEP_JUDGE,
      "the conv judge: a small CNN classifier (im2col + sgemm) trained like the\n"
      "              classifier; ddm-eval's second set of FID features; writes\n"
      "              OUT/judge-conv.safetensors" },
    { "verify", STEP_VERIFY,
      "samples OUT with the in-process sampler (top-2, 50 Euler steps) and reports\n"
      "              the classifier-confident rate and the label accuracy with guidance;\n"
      "              --grids PREFIX writes PREFIX-top2.png and PREFIX-labels.png" },
    { "all", STEP_ALL,
      "partition, then experts, router, classifier, judge as separate processes --jobs\n"
      "              at a time (one thread each), the monolith, verify, and OUT/MANIFEST\n"
      "              (file, sha256, command). Restartable: finished steps are kept\n"
      "              unless --force" },
};
#define N_STEPS (sizeof STEPS / sizeof STEPS[0])

static void usage(FILE *f)
{
    train_cfg d;
    cfg_default(&d);
    fprintf(f, "usage: ddm-train <step> [flags]      ddm-train <step> --help\n"
               "Trains a Decentralized Diffusion Model set: K experts each on one data\n"
               "cluster, a router, a monolith baseline and a classifier (see docs/training.md).\n\n"
               "steps:\n");
    for (size_t i = 0; i < N_STEPS; i++)
        fprintf(f, "  %-11s %s\n", STEPS[i].name, STEPS[i].what);
    fprintf(f, "\nflags of `all` (every step takes the subset it uses; defaults in []):\n");
    cfg_print_flags(&d, STEP_ALL, f);
    fprintf(f, "  --shard N              expert: the cluster to train on (required)\n"
               "  --shard-file PATH      expert: the shard file (default SHARDS/shard-N.safetensors)\n"
               "  --blas-core NAME       OpenBLAS kernels (default: the fastest measured on this CPU)\n"
               "  --half-rows N          fp16 weight copies up to N rows (default: measured here)\n"
               "\n--data fashion changes the defaults of --steps to 6000, --router-steps to 5000\n"
               "--cls-steps to 10000, --cls-shift to 1, --judge-steps to 6000 and --judge-shift to 1\n"
               "(ddm-train all --data fashion --help).\n"
               "\nexample: ddm-train all --data digits --k 8 --out models/digits\n"
               "exit status: 0 success, 1 runtime error, 2 usage error\n");
}

int main(int argc, char **argv)
{
    log_set_name("ddm-train");
    blas_select(&argc, argv); /* may re-execute with the kernels measured fastest here */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("ddm-train %s\n", DDM_TRAIN_VERSION);
        return 0;
    }
    unsigned step = 0;
    for (size_t i = 0; i < N_STEPS; i++)
        if (strcmp(argv[1], STEPS[i].name) == 0)
            step = STEPS[i].step;
    if (!step) {
        fprintf(stderr, "ddm-train: unknown step '%s'; one of partition, expert, router, "
                "monolith, classifier, judge, verify, all (ddm-train --help)\n", argv[1]);
        return 2;
    }
    train_cfg c;
    char err[4096];
    cfg_default(&c);
    int rc = cfg_parse(&c, step, argc - 1, argv + 1, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc) {
        fprintf(stderr, "ddm-train: %s\n", err);
        return 2;
    }
    if (step == STEP_EXPERT && c.shard < 0 && !c.shard_file[0]) {
        fprintf(stderr, "ddm-train: expert: --shard N (0..K-1) is required\n");
        return 2;
    }
    if (step == STEP_EXPERT && c.shard >= c.K) {
        fprintf(stderr, "ddm-train: expert: --shard %d is outside 0..%d (--k %d)\n", c.shard,
                c.K - 1, c.K);
        return 2;
    }
    if (c.threads > 0)
        openblas_set_num_threads(c.threads);
    switch (step) {
    case STEP_PARTITION: return cmd_partition(&c);
    case STEP_EXPERT: return cmd_expert(&c);
    case STEP_ROUTER: return cmd_router(&c);
    case STEP_MONOLITH: return cmd_monolith(&c);
    case STEP_CLASSIFIER: return cmd_classifier(&c);
    case STEP_VERIFY: return cmd_verify(&c);
    case STEP_JUDGE: return cmd_judge(&c);
    default: {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            fprintf(stderr, "ddm-train: all: cannot find my own executable (/proc/self/exe)\n");
            return 1;
        }
        self[n] = '\0';
        return cmd_all(&c, self);
    }
    }
}
