/* cfg.c -- ddm-train flags: one table drives parsing, --help and the
 * canonical child command lines (see cfg.h). */
#include "tools/train/cfg.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

typedef enum opt_type { O_INT, O_LONG, O_FLOAT, O_U64, O_STR, O_TDIST, O_DTYPE, O_FLAG } opt_type;

typedef struct opt_def {
    const char *name;
    opt_type type;
    size_t off, size;   /* field in train_cfg */
    double min;         /* smallest allowed value (numbers) */
    unsigned steps;     /* STEP_ bits the flag applies to */
    const char *help;
} opt_def;

#define F(field) offsetof(train_cfg, field), sizeof(((train_cfg *)0)->field)
enum {
    P = STEP_PARTITION, E = STEP_EXPERT, R = STEP_ROUTER, M = STEP_MONOLITH,
    C = STEP_CLASSIFIER, V = STEP_VERIFY, A = STEP_ALL, J = STEP_JUDGE,
    EVERY = P | E | R | M | C | V | A | J,
};

static const opt_def OPTS[] = {
    { "data", O_STR, F(dataset), 0, EVERY, "dataset: digits, fashion, or a folder of PNGs (subfolder = class)" },
    { "size", O_INT, F(size), 0, P | R | M | C | A | J, "folder: centre-crop and area-resample to NxN (0 = the images' own size)" },
    { "channels", O_INT, F(channels), 0, P | R | M | C | A | J, "folder: 1 grey or 3 RGB (0 = 3 if any image is colour)" },
    { "background", O_STR, F(background), 0, P | R | M | C | A | J, "folder: colour under transparency (RRGGBB, black, white)" },
    { "strict", O_FLAG, F(strict), 0, P | R | M | C | A | J, "folder: an unreadable PNG is an error (default: skipped)" },
    { "data-dir", O_STR, F(data_dir), 0, P | R | M | C | V | A | J, "where `make data` put the datasets" },
    { "k", O_INT, F(K), 1, EVERY, "number of clusters / experts" },
    { "shards", O_STR, F(shards), 0, P | E | R | A, "partition and shard files (default DATA-DIR/SET/kK)" },
    { "out", O_STR, F(out), 0, E | R | M | C | V | A | J, "weights directory (default models/SET)" },
    { "shard", O_INT, F(shard), 0, E, "expert: the cluster to train on (required)" },
    { "shard-file", O_STR, F(shard_file), 0, E, "expert: the shard file (default SHARDS/shard-N.safetensors)" },
    { "seed", O_U64, F(seed), 0, EVERY, "seed of every random draw" },
    { "threads", O_INT, F(threads), 0, EVERY, "OpenBLAS threads (0 = OpenBLAS default)" },
    { "log-secs", O_FLOAT, F(log_secs), 0, E | R | M | C | A | J, "seconds between progress lines (0 = none)" },
    { "dtype", O_DTYPE, F(dtype), 0, E | R | M | C | A | J, "weights storage: f16 or f32" },
    { "pca", O_INT, F(pca), 0, P | A, "k-means on this many principal components (0 = raw pixels)" },
    { "restarts", O_INT, F(restarts), 1, P | A, "k-means++ restarts" },
    { "hidden", O_INT, F(den.hidden), 1, E | M | A, "denoiser hidden width" },
    { "blocks", O_INT, F(den.blocks), 0, E | M | A, "denoiser residual blocks" },
    { "time-dim", O_INT, F(time_dim), 0, E | M | A, "denoiser time-embedding width (even)" },
    { "rank", O_INT, F(rank), 0, E | M | A, "rank of the Gaussian baseline (0 = none)" },
    { "var-floor", O_FLOAT, F(var_floor), 1e-8, E | M | A, "smallest variance of the Gaussian baseline" },
    { "steps", O_LONG, F(den.steps), 1, E | M | A, "expert training steps" },
    { "batch", O_INT, F(den.batch), 1, E | M | A, "expert batch size" },
    { "lr", O_FLOAT, F(den.lr), 1e-9, E | M | A, "denoiser peak learning rate (cosine decay)" },
    { "warmup", O_LONG, F(den.warmup), 0, E | M | A, "denoiser warmup steps" },
    { "ema", O_FLOAT, F(den.ema), 0, E | M | A, "denoiser weight EMA decay (0 = none)" },
    { "p-null", O_FLOAT, F(den.p_null), 0, E | M | A, "denoiser null-label probability" },
    { "t-dist", O_TDIST, F(den.tdist), 0, E | M | A, "denoiser t: uniform or logit-normal" },
    { "t-mean", O_FLOAT, F(den.t_mean), -10, E | M | A, "denoiser logit-normal t: mean of the normal (< 0: more training near t = 0)" },
    { "min-class", O_INT, F(min_class), 0, E | A, "expert: classes with fewer images in the shard answer as null (0 = off)" },
    { "mono-steps", O_LONG, F(mono_steps), 0, M | A, "monolith steps (0 = --steps)" },
    { "mono-batch", O_INT, F(mono_batch), 0, M | A, "monolith batch (0 = K x --batch: equal compute)" },
    { "router-hidden", O_INT, F(rt.hidden), 1, R | A, "router hidden width" },
    { "router-blocks", O_INT, F(rt.blocks), 0, R | A, "router residual blocks" },
    { "router-time-dim", O_INT, F(rt_time_dim), 0, R | A, "router time-embedding width" },
    { "router-steps", O_LONG, F(rt.steps), 1, R | A, "router training steps" },
    { "router-batch", O_INT, F(rt.batch), 1, R | A, "router batch size" },
    { "router-lr", O_FLOAT, F(rt.lr), 1e-9, R | A, "router peak learning rate" },
    { "router-ema", O_FLOAT, F(rt.ema), 0, R | A, "router weight EMA decay" },
    { "router-p-null", O_FLOAT, F(rt.p_null), 0, R | A, "router label-dropout probability" },
    { "router-t-dist", O_TDIST, F(rt.tdist), 0, R | A, "router t: uniform or logit-normal" },
    { "cls-hidden", O_INT, F(cls.hidden), 1, C | A, "classifier hidden width" },
    { "cls-blocks", O_INT, F(cls.blocks), 0, C | A, "classifier residual blocks" },
    { "cls-steps", O_LONG, F(cls.steps), 1, C | A, "classifier training steps" },
    { "cls-batch", O_INT, F(cls.batch), 1, C | A, "classifier batch size" },
    { "cls-lr", O_FLOAT, F(cls.lr), 1e-9, C | A, "classifier peak learning rate" },
    { "cls-ema", O_FLOAT, F(cls.ema), 0, C | A, "classifier weight EMA decay" },
    { "cls-shift", O_INT, F(cls_shift), 0, C | A, "classifier random shift augmentation, pixels" },
    { "judge-channels", O_STR, F(judge_channels), 0, J | A, "conv judge: output channels of each conv layer (1-3 layers)" },
    { "judge-kernel", O_INT, F(judge_kernel), 1, J | A, "conv judge: kernel size (odd)" },
    { "judge-feat", O_INT, F(judge_feat), 1, J | A, "conv judge: feature (dense) width" },
    { "judge-steps", O_LONG, F(jdg.steps), 1, J | A, "conv judge training steps" },
    { "judge-batch", O_INT, F(jdg.batch), 1, J | A, "conv judge batch size" },
    { "judge-lr", O_FLOAT, F(jdg.lr), 1e-9, J | A, "conv judge peak learning rate" },
    { "judge-ema", O_FLOAT, F(jdg.ema), 0, J | A, "conv judge weight EMA decay" },
    { "judge-shift", O_INT, F(judge_shift), 0, J | A, "conv judge random shift augmentation, pixels" },
    { "samples", O_INT, F(samples), 10, V | A, "verify: samples per measurement" },
    { "sample-steps", O_INT, F(sample_steps), 1, V | A, "verify: Euler steps" },
    { "guidance", O_FLOAT, F(guidance), 0, V | A, "verify: guidance of label-asked samples" },
    { "strategy", O_STR, F(strategy), 0, V, "verify: routing strategy measured (top-2, full, expert:N, ...)" },
    { "grids", O_STR, F(grids), 0, V | A, "verify: write PREFIX-top2.png and PREFIX-labels.png" },
    { "jobs", O_INT, F(jobs), 1, A, "all: cores to use (jobs run with one OpenBLAS thread each)" },
    { "force", O_FLAG, F(force), 0, A, "all: redo steps whose outputs already exist" },
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

void cfg_default(train_cfg *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->dataset, sizeof c->dataset, "digits");
    snprintf(c->background, sizeof c->background, "black");
    snprintf(c->data_dir, sizeof c->data_dir, "data");
    c->K = 8;
    c->shard = -1;
    c->seed = 1;
    c->threads = 0;
    c->jobs = 2;
    c->log_secs = 10.0;
    c->dtype = ST_F16;
    c->pca = 0;
    c->restarts = 8;
    c->den = (net_train){ .hidden = 384, .blocks = 2, .steps = 3000, .batch = 128, .lr = 2e-3f,
                          .warmup = 200, .ema = 0.997f, .p_null = 0.1f, .tdist = T_LOGIT_NORMAL };
    c->time_dim = 64;
    c->rank = 64;
    c->var_floor = 1e-3f;
    c->min_class = 1;
    c->rt = (net_train){ .hidden = 256, .blocks = 2, .steps = 3000, .batch = 256, .lr = 1e-3f,
                         .warmup = 200, .ema = 0.997f, .p_null = 0.5f, .tdist = T_UNIFORM };
    c->rt_time_dim = 64;
    c->cls = (net_train){ .hidden = 512, .blocks = 2, .steps = 3000, .batch = 128, .lr = 1e-3f,
                          .warmup = 200, .ema = 0.997f, .p_null = 0.0f, .tdist = T_UNIFORM };
    c->cls_shift = 2;
    c->jdg = (net_train){ .steps = 2000, .batch = 128, .lr = 2e-3f, .warmup = 100, .ema = 0.995f,
                          .tdist = T_UNIFORM };
    snprintf(c->judge_channels, sizeof c->judge_channels, "16,32");
    c->judge_feat = 128;
    c->judge_kernel = 3;
    c->judge_shift = 2;
    c->samples = 1000;
    c->sample_steps = 50;
    c->guidance = 2.0f;
    snprintf(c->strategy, sizeof c->strategy, "top-2");
}

/* Per-dataset defaults, applied before the flags. Digits experts train 6000
 * steps: twice the base default, still inside the 20-minute `make models`
 * budget, and the unconditional confident-sample rate rises with every step
 * (docs/training.md). Fashion-MNIST has 13x the images of digits and harder
 * classes, and a 90-minute budget instead of 20. */
static void preset(train_cfg *c, const char *dataset)
{
    if (strcmp(dataset, "digits") == 0)
        c->den.steps = 6000;
    if (strcmp(dataset, "fashion") == 0) {
        c->den.steps = 6000;
        c->rt.steps = 5000;
        c->cls.steps = 10000;
        c->cls_shift = 1;
        c->jdg.steps = 6000;
        c->judge_shift = 1;
    }
}

/* Bytes of the field behind each option type (checked: a mismatch is a bug). */
static size_t type_size(opt_type t)
{
    switch (t) {
    case O_INT: case O_FLAG: return sizeof(int);
    case O_LONG: return sizeof(long);
    case O_FLOAT: return sizeof(float);
    case O_U64: return sizeof(uint64_t);
    case O_TDIST: return sizeof(t_dist);
    case O_DTYPE: return sizeof(st_dtype);
    default: return 0;
    }
}

static const char *tdist_name(t_dist d) { return d == T_LOGIT_NORMAL ? "logit-normal" : "uniform"; }

/* The value of o in c as text. */
static void opt_value(const train_cfg *c, const opt_def *o, char *buf, size_t len)
{
    const char *p = (const char *)c + o->off;
    switch (o->type) {
    case O_INT: snprintf(buf, len, "%d", *(const int *)p); break;
    case O_LONG: snprintf(buf, len, "%ld", *(const long *)p); break;
    case O_FLOAT: snprintf(buf, len, "%g", *(const float *)p); break;
    case O_U64: snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case O_STR: snprintf(buf, len, "%s", p); break;
    case O_TDIST: snprintf(buf, len, "%s", tdist_name(*(const t_dist *)p)); break;
    case O_DTYPE: snprintf(buf, len, "%s", *(const st_dtype *)p == ST_F32 ? "f32" : "f16"); break;
    case O_FLAG: snprintf(buf, len, "%s", *(const int *)p ? "on" : "off"); break;
    }
}

static int opt_set(train_cfg *c, const opt_def *o, const char *v, char *err, size_t errlen)
{
    char *p = (char *)c + o->off, *end = NULL;
    double num = 0.0;
    switch (o->type) {
    case O_INT:
    case O_LONG:
    case O_U64: {
        unsigned long long u = 0;
        long long s = 0;
        if (o->type == O_U64)
            u = strtoull(v, &end, 0);
        else
            s = strtoll(v, &end, 10);
        if (!*v || *end || (o->type != O_U64 && (s < o->min || s > (o->type == O_INT ? 1000000000LL : 1000000000000LL))))
            goto bad;
        if (o->type == O_INT)
            *(int *)p = (int)s;
        else if (o->type == O_LONG)
            *(long *)p = (long)s;
        else
            *(uint64_t *)p = (uint64_t)u;
        return 0;
    }
    case O_FLOAT:
        num = strtod(v, &end);
        if (!*v || *end || !isfinite(num) || num < o->min)
            goto bad;
        *(float *)p = (float)num;
        return 0;
    case O_STR:
        if (strlen(v) >= o->size || !*v)
            goto bad;
        memcpy(p, v, strlen(v) + 1);
        return 0;
    case O_TDIST:
        if (strcmp(v, "uniform") == 0)
            *(t_dist *)p = T_UNIFORM;
        else if (strcmp(v, "logit-normal") == 0)
            *(t_dist *)p = T_LOGIT_NORMAL;
        else
            goto bad;
        return 0;
    case O_DTYPE:
        if (strcmp(v, "f16") == 0)
            *(st_dtype *)p = ST_F16;
        else if (strcmp(v, "f32") == 0)
            *(st_dtype *)p = ST_F32;
        else
            goto bad;
        return 0;
    case O_FLAG:
        *(int *)p = 1;
        return 0;
    }
bad:
    if (o->type == O_TDIST)
        snprintf(err, errlen, "--%s: '%s' is not uniform or logit-normal", o->name, v);
    else if (o->type == O_DTYPE)
        snprintf(err, errlen, "--%s: '%s' is not f16 or f32", o->name, v);
    else if (o->type == O_STR)
        snprintf(err, errlen, "--%s: empty or longer than %zu characters", o->name, o->size - 1);
    else
        snprintf(err, errlen, "--%s: '%s' is not a number >= %g", o->name, v, o->min);
    return DDM_EINVAL;
}

static const char *step_name(unsigned step)
{
    switch (step) {
    case STEP_PARTITION: return "partition";
    case STEP_EXPERT: return "expert";
    case STEP_ROUTER: return "router";
    case STEP_MONOLITH: return "monolith";
    case STEP_CLASSIFIER: return "classifier";
    case STEP_VERIFY: return "verify";
    case STEP_JUDGE: return "judge";
    default: return "all";
    }
}

const char *cfg_set_name(const train_cfg *c)
{
    return c->set[0] ? c->set : c->dataset;
}

data_spec cfg_data_spec(const train_cfg *c)
{
    data_spec s = { .name = c->dataset, .dir = c->data_dir,
                    .folder = { .size = c->size, .channels = c->channels, .strict = c->strict } };
    imgdir_parse_colour(c->background, s.folder.background); /* checked by cfg_parse */
    return s;
}

static void finish(train_cfg *c, int shards_given, int out_given)
{
    data_set_name(c->dataset, c->set, sizeof c->set);
    if (!shards_given)
        snprintf(c->shards, sizeof c->shards, "%.500s/%s/k%d", c->data_dir, c->set, c->K);
    if (!out_given)
        snprintf(c->out, sizeof c->out, "models/%s", c->set);
    if (c->mono_steps == 0)
        c->mono_steps = c->den.steps;
    if (c->mono_batch == 0)
        c->mono_batch = c->K * c->den.batch;
}

int cfg_parse(train_cfg *c, unsigned step, int argc, char **argv, char *err, size_t errlen)
{
    struct option lo[N_OPTS + 2];
    for (size_t i = 0; i < N_OPTS; i++)
        lo[i] = (struct option){ OPTS[i].name, OPTS[i].type == O_FLAG ? no_argument
                                                                      : required_argument,
                                 NULL, (int)(256 + i) };
    lo[N_OPTS] = (struct option){ "help", no_argument, NULL, 'h' };
    lo[N_OPTS + 1] = (struct option){ NULL, 0, NULL, 0 };
    int shards_given = 0, out_given = 0;
    for (size_t i = 0; i < N_OPTS; i++)
        if (OPTS[i].type != O_STR && OPTS[i].size != type_size(OPTS[i].type))
            abort(); /* the option table disagrees with train_cfg */
    for (int i = 1; i < argc; i++) { /* the dataset's defaults first, then every flag */
        if (strcmp(argv[i], "--data") == 0 && i + 1 < argc)
            preset(c, argv[i + 1]);
        else if (strncmp(argv[i], "--data=", 7) == 0)
            preset(c, argv[i] + 7);
    }
    optind = 1;
    opterr = 0;
    for (;;) {
        int idx = -1;
        int ch = getopt_long(argc, argv, "h", lo, &idx);
        if (ch == -1)
            break;
        if (ch == 'h') {
            printf("usage: ddm-train %s [flags]\n", step_name(step));
            cfg_print_flags(c, step, stdout);
            return 1;
        }
        if (ch < 256 || ch >= 256 + (int)N_OPTS) {
            snprintf(err, errlen, "%s: unknown flag or missing value: %s (see ddm-train %s --help)",
                     step_name(step), argv[optind - 1], step_name(step));
            return DDM_EINVAL;
        }
        const opt_def *o = &OPTS[ch - 256];
        if (!(o->steps & step)) {
            snprintf(err, errlen, "%s: --%s does not apply to this step (see ddm-train %s --help)",
                     step_name(step), o->name, step_name(step));
            return DDM_EINVAL;
        }
        if (opt_set(c, o, o->type == O_FLAG ? "" : optarg, err, errlen))
            return DDM_EINVAL;
        shards_given |= strcmp(o->name, "shards") == 0;
        out_given |= strcmp(o->name, "out") == 0;
    }
    if (optind < argc) {
        snprintf(err, errlen, "%s: unexpected argument '%s'", step_name(step), argv[optind]);
        return DDM_EINVAL;
    }
    if (c->time_dim % 2 || c->rt_time_dim % 2) {
        snprintf(err, errlen, "%s: --time-dim and --router-time-dim must be even", step_name(step));
        return DDM_EINVAL;
    }
    uint8_t rgb[3];
    if (imgdir_parse_colour(c->background, rgb)) {
        snprintf(err, errlen, "%s: --background '%s': use RRGGBB hex (e.g. ffffff), black or white",
                 step_name(step), c->background);
        return DDM_EINVAL;
    }
    if (c->channels != 0 && c->channels != 1 && c->channels != 3) {
        snprintf(err, errlen, "%s: --channels %d: use 1 (grey) or 3 (RGB)", step_name(step),
                 c->channels);
        return DDM_EINVAL;
    }
    if (c->den.p_null > 1 || c->rt.p_null > 1) {
        snprintf(err, errlen, "%s: --p-null and --router-p-null must be in [0, 1]", step_name(step));
        return DDM_EINVAL;
    }
    finish(c, shards_given, out_given);
    size_t at = (size_t)snprintf(c->command, sizeof c->command, "ddm-train");
    for (int i = 0; i < argc && at < sizeof c->command; i++)
        at += (size_t)snprintf(c->command + at, sizeof c->command - at, " %s", argv[i]);
    return 0;
}

void cfg_print_flags(const train_cfg *defaults, unsigned step, FILE *f)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *o = &OPTS[i];
        if (!(o->steps & step))
            continue;
        char val[64] = "";
        opt_value(defaults, o, val, sizeof val);
        char left[64];
        snprintf(left, sizeof left, "--%s%s", o->name, o->type == O_FLAG ? "" : " V");
        fprintf(f, "  %-22s %s", left, o->help);
        if (o->type != O_FLAG && val[0])
            fprintf(f, " [%s]", val);
        fputc('\n', f);
    }
    fprintf(f, "  %-22s this help\n", "--help");
}

int cfg_argv(const train_cfg *c, const char *stepname, int shard, char **argv, char *store,
             size_t storelen)
{
    static const unsigned bits[] = { STEP_PARTITION, STEP_EXPERT, STEP_ROUTER, STEP_MONOLITH,
                                     STEP_CLASSIFIER, STEP_VERIFY, STEP_ALL, STEP_JUDGE };
    unsigned step = 0;
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++)
        if (strcmp(stepname, step_name(bits[i])) == 0)
            step = bits[i];
    if (!step)
        return -1;
    int argc = 0;
    size_t at = 0;
#define PUSH(...)                                                                   \
    do {                                                                            \
        int w_ = snprintf(store + at, storelen - at, __VA_ARGS__);                  \
        if (w_ < 0 || (size_t)w_ >= storelen - at || argc >= CFG_MAX_ARGS - 1)      \
            return -1;                                                              \
        argv[argc++] = store + at;                                                  \
        at += (size_t)w_ + 1;                                                       \
    } while (0)
    PUSH("%s", stepname);
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt_def *o = &OPTS[i];
        if (!(o->steps & step) || strcmp(o->name, "shard-file") == 0)
            continue;
        if (o->type == O_FLAG) {
            if (*(const int *)((const char *)c + o->off))
                PUSH("--%s", o->name);
            continue;
        }
        if (strcmp(o->name, "shard") == 0) {
            PUSH("--shard");
            PUSH("%d", shard);
            continue;
        }
        char val[CFG_PATH];
        opt_value(c, o, val, sizeof val);
        if (!val[0])
            continue;
        PUSH("--%s", o->name);
        PUSH("%s", val);
    }
#undef PUSH
    argv[argc] = NULL;
    return argc;
}

uint64_t cfg_seed(const train_cfg *c, const char *role, int index)
{
    uint64_t s = c->seed * 0x9E3779B97F4A7C15ull;
    for (const char *p = role; *p; p++)
        s = (s ^ (uint8_t)*p) * 0x100000001B3ull;
    s ^= (uint64_t)(index + 1) * 0xD1B54A32D192ED03ull;
    return rng_splitmix64(&s);
}

net_config cfg_denoiser(const train_cfg *c, int dim, int n_classes)
{
    return (net_config){ .in_dim = dim, .hidden = c->den.hidden, .n_blocks = c->den.blocks,
                         .out_dim = dim, .n_classes = n_classes, .time_dim = c->time_dim,
                         .gauss_rank = c->rank };
}

net_config cfg_router(const train_cfg *c, int dim, int n_classes)
{
    return (net_config){ .in_dim = dim, .hidden = c->rt.hidden, .n_blocks = c->rt.blocks,
                         .out_dim = c->K, .n_classes = n_classes, .time_dim = c->rt_time_dim,
                         .gauss_rank = 0 };
}

net_config cfg_classifier(const train_cfg *c, int dim, int n_classes)
{
    return (net_config){ .in_dim = dim, .hidden = c->cls.hidden, .n_blocks = c->cls.blocks,
                         .out_dim = n_classes, .n_classes = 0, .time_dim = 0, .gauss_rank = 0 };
}

int cfg_judge(const train_cfg *c, int height, int width, int channels, int n_classes,
              conv_config *out, char *err, size_t errlen)
{
    *out = (conv_config){ .height = height, .width = width, .channels = channels,
                          .kernel = c->judge_kernel, .feat = c->judge_feat,
                          .classes = n_classes };
    if (conv_parse_channels(c->judge_channels, out)) {
        snprintf(err, errlen, "--judge-channels \"%s\": give 1 to %d comma-separated channel "
                 "counts in 1..512, like 16,32", c->judge_channels, CONV_MAX_LAYERS);
        return DDM_EINVAL;
    }
    char e2[256];
    if (conv_config_check(out, e2, sizeof e2)) {
        snprintf(err, errlen, "judge: %s (see --judge-channels, --judge-kernel, --judge-feat)",
                 e2);
        return DDM_EINVAL;
    }
    return 0;
}

train_opts cfg_opts(const train_cfg *c, const net_train *n, uint64_t seed, const char *tag)
{
    train_opts o;
    train_opts_default(&o);
    o.steps = n->steps;
    o.batch = n->batch;
    o.lr = n->lr;
    o.warmup = n->warmup < n->steps ? n->warmup : 0;
    o.ema = n->ema;
    o.p_null = n->p_null;
    o.tdist = n->tdist;
    o.t_mean = n->t_mean;
    o.seed = seed;
    o.log_secs = c->log_secs;
    o.tag = tag;
    return o;
}
