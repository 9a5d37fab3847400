/* test_train.c -- ddm-train: optimiser, Gaussian baseline fit, the three
 * training tasks on small synthetic problems, shard files, expert isolation
 * (an expert opens nothing but its own shard), the CLI, and the shipped
 * models/digits weights against their MANIFEST. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/st.h"
#include "router/local.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/train/adam.h"
#include "tools/train/cfg.h"
#include "tools/train/cmds.h"
#include "tools/train/conv.h"
#include "tools/train/gauss.h"
#include "tools/train/shard.h"
#include "tools/train/tasks.h"

/* ---- open() interposition: which files does a step open? --------------------- */

/* Every open/openat of this process goes through here (the definition in the
 * executable takes precedence over libc's), so a test can list the paths. */
#define MAX_LOGGED 64
static int log_opens;
static int n_opened;
static char opened[MAX_LOGGED][512];

static void note_open(const char *path)
{
    if (log_opens && n_opened < MAX_LOGGED)
        snprintf(opened[n_opened++], sizeof opened[0], "%s", path);
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    note_open(path);
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...) __attribute__((alias("open")));

/* ---- synthetic data ------------------------------------------------------------ */

/* n samples of K blobs in dim: blob k has +2 on coordinates k, k+K, ...,
 * -0.5 elsewhere, plus noise sd; class = blob. x [n][dim], y [n]. */
static void blobs(int n, int dim, int K, float sd, uint64_t seed, float *x, int *y)
{
    for (int i = 0; i < n; i++) {
        int k = i % K;
        y[i] = k;
        for (int j = 0; j < dim; j++) {
            float c = (j % K == k) ? 0.8f : -0.5f;
            float v = c + sd * rng_normal(seed, (uint64_t)i, (uint64_t)j);
            x[(size_t)i * dim + j] = v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
        }
    }
}

static train_opts quick_opts(long steps, int batch, float lr)
{
    train_opts o;
    train_opts_default(&o);
    o.steps = steps;
    o.batch = batch;
    o.lr = lr;
    o.warmup = steps / 10;
    o.ema = 0.95f; /* a short run: average only its end */
    o.log_secs = 0;
    o.tag = "test";
    return o;
}

/* ---- optimiser ------------------------------------------------------------------ */

static void test_lr_schedule(void **state)
{
    (void)state;
    assert_float_equal(lr_at(0, 1000, 100, 1e-3f, 0.1f), 1e-5f, 1e-9);
    assert_float_equal(lr_at(99, 1000, 100, 1e-3f, 0.1f), 1e-3f, 1e-9);
    assert_float_equal(lr_at(100, 1000, 100, 1e-3f, 0.1f), 1e-3f, 1e-9);
    assert_float_equal(lr_at(999, 1000, 100, 1e-3f, 0.1f), 1e-4f, 1e-9);
    float mid = lr_at(550, 1000, 100, 1e-3f, 0.0f); /* half way through the cosine */
    assert_float_equal(mid, 5e-4f, 2e-6);
    for (long s = 101; s < 1000; s++)
        assert_true(lr_at(s, 1000, 100, 1e-3f, 0.1f) <= lr_at(s - 1, 1000, 100, 1e-3f, 0.1f));
}

static void test_adam_minimises_and_ema_follows(void **state)
{
    (void)state;
    enum { N = 37 };
    float p[N], g[N], ema[N], target[N];
    for (int i = 0; i < N; i++) {
        p[i] = 0.0f;
        target[i] = (float)(i - 18) / 9.0f;
    }
    memcpy(ema, p, sizeof p);
    adam a;
    assert_int_equal(adam_init(&a, N, 0.0f), 0);
    for (long s = 0; s < 2000; s++) {
        for (int i = 0; i < N; i++)
            g[i] = 2.0f * (p[i] - target[i]);
        adam_step_ema(&a, p, g, lr_at(s, 2000, 50, 0.05f, 0.01f), ema, 0.99f, s);
    }
    for (int i = 0; i < N; i++) {
        assert_float_equal(p[i], target[i], 1e-3);
        assert_float_equal(ema[i], target[i], 2e-2);
    }
    adam_free(&a);
    float big[4] = { 3, 4, 0, 0 };
    assert_float_equal(grad_clip(big, 4, 1.0f), 5.0, 1e-9);
    assert_float_equal(big[0], 0.6f, 1e-6);
    assert_float_equal(big[1], 0.8f, 1e-6);
}

/* ---- Gaussian baseline ------------------------------------------------------------ */

static void test_gauss_fit_recovers_mean_and_covariance(void **state)
{
    (void)state;
    enum { D = 12, R = 3, N = 40000 };
    /* orthonormal directions: Gram-Schmidt on fixed random vectors */
    float U[R][D], mu[D];
    const float lam[R] = { 0.5f, 0.2f, 0.08f }, sig2 = 0.01f;
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < D; j++)
            U[r][j] = rng_normal(7, 100 + r, j);
        for (int q = 0; q < r; q++) {
            float dot = 0;
            for (int j = 0; j < D; j++)
                dot += U[r][j] * U[q][j];
            for (int j = 0; j < D; j++)
                U[r][j] -= dot * U[q][j];
        }
        float nn = 0;
        for (int j = 0; j < D; j++)
            nn += U[r][j] * U[r][j];
        for (int j = 0; j < D; j++)
            U[r][j] /= sqrtf(nn);
    }
    for (int j = 0; j < D; j++)
        mu[j] = 0.1f * (float)j - 0.5f;
    float *x = malloc((size_t)N * D * sizeof *x);
    assert_non_null(x);
    for (int i = 0; i < N; i++) {
        float *xi = x + (size_t)i * D;
        /* iso noise with variance sig2 in every direction, plus lam - sig2 along U */
        for (int j = 0; j < D; j++)
            xi[j] = mu[j] + sqrtf(sig2) * rng_normal(9, (uint64_t)i, (uint64_t)j);
        for (int r = 0; r < R; r++) {
            float a = sqrtf(lam[r] - sig2) * rng_normal(11, (uint64_t)i, (uint64_t)r);
            for (int j = 0; j < D; j++)
                xi[j] += a * U[r][j];
        }
    }
    float fmu[D], fu[R * D], flam[R], fs2;
    char err[256];
    assert_int_equal(gauss_fit(x, N, D, R, 1e-4f, fmu, fu, flam, &fs2, err, sizeof err), 0);
    for (int j = 0; j < D; j++)
        assert_float_equal(fmu[j], mu[j], 0.01);
    for (int r = 0; r < R; r++) {
        assert_float_equal(flam[r], lam[r], 0.06 * lam[r]);
        float dot = 0;
        for (int j = 0; j < D; j++)
            dot += fu[r * D + j] * U[r][j];
        assert_true(fabsf(dot) > 0.98f);
    }
    assert_float_equal(fs2, sig2, 0.1 * sig2);
    /* the floor applies, bad sizes are refused */
    assert_int_equal(gauss_fit(x, N, D, R, 0.05f, fmu, fu, flam, &fs2, err, sizeof err), 0);
    assert_float_equal(fs2, 0.05f, 1e-7);
    assert_int_equal(gauss_fit(x, N, D, D + 1, 1e-4f, fmu, fu, flam, &fs2, err, sizeof err),
                     DDM_EINVAL);
    free(x);
}

/* ---- tasks -------------------------------------------------------------------------- */

static void test_tiny_denoiser_loss_falls(void **state)
{
    (void)state;
    enum { N = 256, D = 16, K = 4 };
    float *x = malloc(N * D * sizeof *x);
    int y[N];
    blobs(N, D, K, 0.05f, 3, x, y);
    net_config c = { .in_dim = D, .hidden = 64, .n_blocks = 1, .out_dim = D, .n_classes = K,
                     .time_dim = 16, .gauss_rank = 0 };
    size_t np = net_param_count(&c);
    float *p = malloc(np * sizeof *p), *avg = malloc(np * sizeof *avg);
    char err[256];
    train_data d = { N, D, x, y, NULL };
    assert_int_equal(denoiser_init(&c, p, &d, 5, 1e-3f, err, sizeof err), 0);
    double before = denoiser_eval(&c, p, &d, 4, 77);
    train_opts o = quick_opts(400, 64, 3e-3f);
    train_result res;
    assert_int_equal(denoiser_train(&c, p, avg, &d, &o, &res, err, sizeof err), 0);
    double after = denoiser_eval(&c, avg, &d, 4, 77);
    print_message("# denoiser: train loss %.3f -> %.3f, eval %.3f -> %.3f\n", res.first_loss,
                  res.final_loss, before, after);
    assert_true(res.final_loss < 0.6 * res.first_loss);
    assert_true(after < 0.6 * before);
    free(p);
    free(avg);
    free(x);
}

static void test_gaussian_baseline_is_a_good_start(void **state)
{
    (void)state;
    /* with the baseline fitted to a Gaussian-looking shard, the untrained
     * denoiser (W_out = 0) already beats predicting noise with a bare MLP */
    enum { N = 512, D = 16, K = 1 };
    float *x = malloc(N * D * sizeof *x);
    int y[N];
    blobs(N, D, K, 0.2f, 4, x, y);
    net_config bare = { .in_dim = D, .hidden = 32, .n_blocks = 1, .out_dim = D, .n_classes = 0,
                        .time_dim = 8, .gauss_rank = 0 };
    net_config gs = bare;
    gs.gauss_rank = 4;
    float *p0 = malloc(net_param_count(&bare) * sizeof(float));
    float *p1 = malloc(net_param_count(&gs) * sizeof(float));
    char err[256];
    train_data d = { N, D, x, NULL, NULL };
    assert_int_equal(denoiser_init(&bare, p0, &d, 1, 1e-3f, err, sizeof err), 0);
    assert_int_equal(denoiser_init(&gs, p1, &d, 1, 1e-3f, err, sizeof err), 0);
    double l0 = denoiser_eval(&bare, p0, &d, 4, 5), l1 = denoiser_eval(&gs, p1, &d, 4, 5);
    print_message("# untrained loss: bare %.3f, with Gaussian baseline %.3f\n", l0, l1);
    assert_true(l1 < 0.5 * l0);
    free(p0);
    free(p1);
    free(x);
}

static void test_router_learns_clusters(void **state)
{
    (void)state;
    enum { N = 600, NT = 200, D = 24, K = 3 };
    float *x = malloc(N * D * sizeof *x), *xt = malloc(NT * D * sizeof *xt);
    int y[N], yt[NT];
    blobs(N, D, K, 0.3f, 5, x, y);
    blobs(NT, D, K, 0.3f, 6, xt, yt);
    net_config c = { .in_dim = D, .hidden = 48, .n_blocks = 1, .out_dim = K, .n_classes = K,
                     .time_dim = 16, .gauss_rank = 0 };
    size_t np = net_param_count(&c);
    float *p = malloc(np * sizeof *p), *avg = malloc(np * sizeof *avg);
    net_init(&c, p, 9);
    train_opts o = quick_opts(600, 64, 3e-3f);
    o.p_null = 0.5f;
    train_result res;
    char err[256];
    /* cluster = blob, label = blob as well */
    train_data d = { N, D, x, y, y };
    assert_int_equal(router_train(&c, p, avg, &d, &o, &res, err, sizeof err), 0);
    train_data h = { NT, D, xt, yt, yt };
    double a1 = router_eval(&c, avg, &h, 0.1f, 0, 3), a9 = router_eval(&c, avg, &h, 0.9f, 0, 3);
    double l9 = router_eval(&c, avg, &h, 0.9f, 1, 3);
    print_message("# router: t=0.1 %.3f, t=0.9 %.3f, t=0.9 with label %.3f\n", a1, a9, l9);
    assert_true(a1 >= 0.95);
    assert_true(l9 >= 0.95); /* the label alone names the cluster here */
    assert_true(a9 < a1);    /* noise makes it harder */
    free(p);
    free(avg);
    free(x);
    free(xt);
}

/* 8x8 images of a bright bar: class 0-3 horizontal at rows 1,3,5,7... shifted */
static void bars(int n, uint64_t seed, float *x, int *y)
{
    for (int i = 0; i < n; i++) {
        int k = (int)(rng_uniform(seed, 1, (uint64_t)i) * 4);
        int pos = 2 + (int)(rng_uniform(seed, 2, (uint64_t)i) * 4);
        y[i] = k;
        float *xi = x + (size_t)i * 64;
        for (int p = 0; p < 64; p++)
            xi[p] = -1.0f + 0.2f * fabsf(rng_normal(seed, 3 + (uint64_t)i, (uint64_t)p));
        for (int j = 0; j < 8; j++) {
            int r = k == 0 ? pos : (k == 1 ? j : (k == 2 ? j : 7 - j));
            int col = k == 0 ? j : (k == 1 ? pos : j);
            xi[r * 8 + col] = 1.0f;
        }
    }
}

static void test_classifier_learns_bars(void **state)
{
    (void)state;
    enum { N = 800, NT = 200 };
    float *x = malloc(N * 64 * sizeof *x), *xt = malloc(NT * 64 * sizeof *xt);
    int y[N], yt[NT];
    bars(N, 1, x, y);
    bars(NT, 2, xt, yt);
    net_config c = { .in_dim = 64, .hidden = 48, .n_blocks = 1, .out_dim = 4 };
    size_t np = net_param_count(&c);
    float *p = malloc(np * sizeof *p), *avg = malloc(np * sizeof *avg);
    net_init(&c, p, 2);
    train_opts o = quick_opts(400, 64, 3e-3f);
    train_result res;
    char err[256];
    train_data d = { N, 64, x, y, NULL };
    assert_int_equal(classifier_train(&c, p, avg, &d, 8, 1, 1, &o, &res, err, sizeof err), 0);
    train_data h = { NT, 64, xt, yt, NULL };
    double acc = classifier_eval(&c, avg, &h);
    print_message("# classifier: held-out accuracy %.3f\n", acc);
    assert_true(acc >= 0.95);
    float conf[NT];
    int pred[NT];
    assert_int_equal(classifier_predict(&c, avg, NT, xt, pred, conf), 0);
    for (int i = 0; i < NT; i++)
        assert_true(conf[i] >= 0.25f - 1e-6f && conf[i] <= 1.0f + 1e-6f);
    free(p);
    free(avg);
    free(x);
    free(xt);
}

/* ---- shard files and expert isolation ----------------------------------------------- */

typedef struct fixture {
    char dir[256];
    char shards[300];
    char out[300];
} fixture;

enum { FN = 300, FD = 64, FK = 3 };

/* Class of fixture image i: cluster 1 never has class 4. */
static int fixture_label(int i)
{
    return (i / FK) % (i % FK == 1 ? 4 : 5);
}

static int setup_shards(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || toyset_tempdir(f->dir, sizeof f->dir, "train"))
        return -1;
    snprintf(f->shards, sizeof f->shards, "%s/shards", f->dir);
    snprintf(f->out, sizeof f->out, "%s/out", f->dir);
    char err[256];
    if (fs_mkdirs(f->shards, err, sizeof err))
        return -1;
    float *x = malloc(FN * FD * sizeof *x), cent[FK * FD];
    int y[FN], assign[FN];
    /* cluster k: pixel values quantised like the datasets' */
    for (int i = 0; i < FN; i++) {
        assign[i] = i % FK;
        y[i] = fixture_label(i);
        for (int j = 0; j < FD; j++) {
            int b = (int)(40 + 80 * assign[i] + 30 * rng_uniform(8, (uint64_t)i, (uint64_t)j));
            x[(size_t)i * FD + j] = (float)b * (2.0f / 255.0f) - 1.0f;
        }
    }
    memset(cent, 0, sizeof cent);
    model_shape sh;
    model_shape_default(&sh, FD);
    int rc = shard_write_all(f->shards, "synth", &sh, FN, FD, x, y, 5, assign, FK, cent, err,
                             sizeof err);
    free(x);
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown_shards(void **state)
{
    fixture *f = *state;
    if (f)
        toyset_rmdir(f->dir);
    free(f);
    return 0;
}

static void test_shard_files_round_trip(void **state)
{
    fixture *f = *state;
    char path[512], err[512];
    partition *p = NULL;
    assert_int_equal(partition_read(f->shards, &p, err, sizeof err), 0);
    assert_int_equal(p->K, FK);
    assert_int_equal(p->n, FN);
    int total = 0;
    for (int k = 0; k < FK; k++) {
        shard *s = NULL;
        shard_path(path, sizeof path, f->shards, k);
        assert_int_equal(shard_read(path, &s, err, sizeof err), 0);
        assert_int_equal(s->id, k);
        assert_int_equal(s->K, FK);
        assert_int_equal(s->n_classes, 5);
        assert_string_equal(s->dataset, "synth");
        for (int i = 0; i < s->n; i++) {
            int src = s->index[i];
            assert_int_equal(p->assign[src], k); /* only this cluster's images */
            assert_int_equal(s->y[i], fixture_label(src));
            for (int j = 0; j < FD; j++) {
                int b = (int)(40 + 80 * k + 30 * rng_uniform(8, (uint64_t)src, (uint64_t)j));
                assert_true(s->x[(size_t)i * FD + j] == (float)b * (2.0f / 255.0f) - 1.0f);
            }
        }
        int col = 0;
        for (int c = 0; c < 5; c++)
            col += p->table[k * 5 + c];
        assert_int_equal(col, s->n);
        total += s->n;
        shard_free(s);
    }
    assert_int_equal(total, FN);
    partition_free(p);
    /* a missing shard is an error naming the file */
    shard *s = NULL;
    shard_path(path, sizeof path, f->shards, 9);
    assert_true(shard_read(path, &s, err, sizeof err) != 0);
    assert_null(s);
    assert_non_null(strstr(err, "shard-9"));
}

static void tiny_cfg(train_cfg *c, const fixture *f, int shard)
{
    cfg_default(c);
    snprintf(c->dataset, sizeof c->dataset, "synth");
    c->K = FK;
    snprintf(c->shards, sizeof c->shards, "%s", f->shards);
    snprintf(c->out, sizeof c->out, "%s", f->out);
    snprintf(c->data_dir, sizeof c->data_dir, "%s/no-such-data", f->dir);
    c->shard = shard;
    c->den = (net_train){ .hidden = 32, .blocks = 1, .steps = 60, .batch = 32, .lr = 2e-3f,
                          .warmup = 5, .ema = 0.9f, .p_null = 0.1f, .tdist = T_UNIFORM };
    c->time_dim = 8;
    c->rank = 4;
    c->log_secs = 0;
    snprintf(c->command, sizeof c->command, "ddm-train expert (test)");
}

static void test_expert_opens_only_its_shard(void **state)
{
    fixture *f = *state;
    train_cfg c;
    tiny_cfg(&c, f, 1);
    n_opened = 0;
    log_opens = 1;
    int rc = cmd_expert(&c);
    log_opens = 0;
    assert_int_equal(rc, 0);
    char shard1[512], outp[512];
    shard_path(shard1, sizeof shard1, f->shards, 1);
    snprintf(outp, sizeof outp, "%s/expert-1.safetensors", f->out);
    int saw_shard = 0;
    for (int i = 0; i < n_opened; i++) {
        const char *p = opened[i];
        if (strncmp(p, f->dir, strlen(f->dir)) != 0)
            continue; /* system files (libraries, /proc) */
        print_message("# expert 1 opened %s\n", p);
        if (strcmp(p, shard1) == 0) {
            saw_shard = 1;
            continue;
        }
        /* besides its shard it may only touch its output (and the dir to sync it) */
        assert_true(strncmp(p, f->out, strlen(f->out)) == 0);
    }
    assert_true(saw_shard);
    /* and what it learned is its shard's: the baseline mean is the shard mean */
    char err[512];
    model *m = model_open(outp, err, sizeof err);
    assert_non_null(m);
    shard *s = NULL;
    assert_int_equal(shard_read(shard1, &s, err, sizeof err), 0);
    for (int j = 0; j < FD; j++) {
        double mean = 0;
        for (int i = 0; i < s->n; i++)
            mean += s->x[(size_t)i * FD + j];
        mean /= s->n;
        assert_float_equal(m->w.g_mu[j], mean, 2e-3); /* F16 storage */
    }
    assert_int_equal(m->expert_id, 1);
    assert_int_equal(m->num_experts, FK);
    assert_string_equal(model_meta(m, "cluster"), "1");
    assert_string_equal(model_meta(m, "shard_sha256"), s->sha256);
    assert_non_null(model_meta(m, "loss"));
    assert_non_null(model_meta(m, "config"));
    assert_non_null(model_meta(m, "architecture"));
    assert_string_equal(model_meta(m, "steps"), "60");
    assert_non_null(st_get(m->file, "centroid"));
    /* class 4 never occurs in shard 1: it answers as the null label */
    assert_string_equal(model_meta(m, "classes"), "0,1,2,3");
    const int H = m->cfg.hidden, C = m->cfg.n_classes;
    assert_memory_equal(m->w.emb + 4 * H, m->w.emb + C * H, (size_t)H * sizeof(float));
    assert_true(memcmp(m->w.emb + 3 * H, m->w.emb + C * H, (size_t)H * sizeof(float)) != 0);
    shard_free(s);
    model_close(m);
}

static void test_expert_refuses_a_foreign_shard(void **state)
{
    fixture *f = *state;
    train_cfg c;
    tiny_cfg(&c, f, 2);
    shard_path(c.shard_file, sizeof c.shard_file, f->shards, 0); /* says cluster 0 */
    assert_int_equal(cmd_expert(&c), 1);
}

/* ---- flags ----------------------------------------------------------------------------- */

static void test_cfg_argv_round_trips(void **state)
{
    (void)state;
    train_cfg c, back;
    cfg_default(&c);
    c.den.steps = 1234;
    c.den.lr = 0.0025f;
    c.den.tdist = T_LOGIT_NORMAL;
    c.seed = 99;
    snprintf(c.out, sizeof c.out, "/tmp/x");
    snprintf(c.shards, sizeof c.shards, "/tmp/s");
    char store[8192], *argv[CFG_MAX_ARGS];
    int argc = cfg_argv(&c, "expert", 5, argv, store, sizeof store);
    assert_true(argc > 10);
    cfg_default(&back);
    char err[256];
    assert_int_equal(cfg_parse(&back, STEP_EXPERT, argc, argv, err, sizeof err), 0);
    assert_int_equal(back.shard, 5);
    assert_int_equal(back.den.steps, 1234);
    assert_float_equal(back.den.lr, 0.0025f, 1e-9);
    assert_int_equal(back.den.tdist, T_LOGIT_NORMAL);
    assert_int_equal(back.seed, 99);
    assert_string_equal(back.out, "/tmp/x");
    assert_string_equal(back.shards, "/tmp/s");
    /* a flag of another step, a bad value, a stray argument */
    char *bad1[] = { "expert", "--router-steps", "5", NULL };
    assert_int_equal(cfg_parse(&back, STEP_EXPERT, 3, bad1, err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "router-steps"));
    char *bad2[] = { "expert", "--lr", "fast", NULL };
    assert_int_equal(cfg_parse(&back, STEP_EXPERT, 3, bad2, err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "--lr"));
    char *bad3[] = { "router", "extra", NULL };
    assert_int_equal(cfg_parse(&back, STEP_ROUTER, 2, bad3, err, sizeof err), DDM_EINVAL);
    /* the conv judge's flags */
    snprintf(c.judge_channels, sizeof c.judge_channels, "8,16,32");
    c.jdg.steps = 77;
    argc = cfg_argv(&c, "judge", -1, argv, store, sizeof store);
    assert_true(argc > 10);
    cfg_default(&back);
    assert_int_equal(cfg_parse(&back, STEP_JUDGE, argc, argv, err, sizeof err), 0);
    assert_int_equal(back.jdg.steps, 77);
    conv_config cc;
    assert_int_equal(cfg_judge(&back, 28, 28, 1, 10, &cc, err, sizeof err), 0);
    assert_int_equal(cc.n_conv, 3);
    assert_int_equal(cc.ch[2], 32);
    snprintf(back.judge_channels, sizeof back.judge_channels, "8,16,32,64");
    assert_int_equal(cfg_judge(&back, 28, 28, 1, 10, &cc, err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "--judge-channels"));
    snprintf(back.judge_channels, sizeof back.judge_channels, "8,16,32");
    assert_int_equal(cfg_judge(&back, 4, 4, 1, 10, &cc, err, sizeof err), DDM_EINVAL);
    char *bad4[] = { "judge", "--steps", "5", NULL };
    assert_int_equal(cfg_parse(&back, STEP_JUDGE, 3, bad4, err, sizeof err), DDM_EINVAL);
}

/* The real binary: usage errors exit 2, an expert trains as its own process. */
static void test_binary_exit_codes_and_expert(void **state)
{
    fixture *f = *state;
    char bin[1024], log[600];
    proc_bin("ddm-train", bin, sizeof bin);
    if (access(bin, X_OK) != 0) {
        print_message("# %s not built; skipped\n", bin);
        skip();
    }
    snprintf(log, sizeof log, "%s/bin.log", f->dir);
    char *usage[] = { bin, "expert", "--no-such-flag", NULL };
    int st = proc_wait(proc_start(usage, log), 20000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    char *nostep[] = { bin, "frobnicate", NULL };
    st = proc_wait(proc_start(nostep, log), 20000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    char *help[] = { bin, "--help", NULL };
    st = proc_wait(proc_start(help, log), 20000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char out2[400];
    snprintf(out2, sizeof out2, "%s/bin-out", f->dir);
    char *ex[] = { bin, "expert", "--data", "synth", "--k", "3", "--shard", "2",
                   "--shards", f->shards, "--out", out2, "--steps", "30", "--batch", "16",
                   "--hidden", "16", "--blocks", "1", "--time-dim", "8", "--rank", "2",
                   "--threads", "1", "--log-secs", "0", NULL };
    st = proc_wait(proc_start(ex, log), 60000);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        proc_dump_log(log);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/expert-2.safetensors", out2);
    model *m = model_open(path, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(m->expert_id, 2);
    assert_non_null(strstr(model_meta(m, "command"), "--shard 2"));
    model_close(m);
    /* a missing shard is a runtime error (1) */
    char *miss[] = { bin, "expert", "--data", "synth", "--k", "3", "--shard", "1", "--shards",
                     out2, "--out", out2, NULL };
    st = proc_wait(proc_start(miss, log), 20000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
}

/* ---- the shipped weights ------------------------------------------------------------------ */

static void test_shipped_digits_manifest(void **state)
{
    (void)state;
    const char *dir = getenv("DDM_MODELS_DIR") ? getenv("DDM_MODELS_DIR") : "models/digits";
    char path[1024], line[8192], err[512];
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    FILE *fp = fopen(path, "r");
    if (!fp)
        fail_msg("%s is missing: the digits weights are shipped with the repository "
                 "(make models DATASET=digits)", path);
    int files = 0, experts = 0, router = 0, mono = 0, cls = 0, judge = 0;
    long bytes = 0;
    while (fgets(line, sizeof line, fp)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char name[256], sha[80], cmd[8000];
        assert_int_equal(sscanf(line, "%255s %79s %7999[^\n]", name, sha, cmd), 3);
        assert_non_null(strstr(cmd, "ddm-train "));
        snprintf(path, sizeof path, "%s/%s", dir, name);
        struct stat sb;
        if (strcmp(name, "judge-conv.safetensors") == 0) {
            conv_model *j = conv_open(path, err, sizeof err);
            if (!j)
                fail_msg("%s", err);
            assert_string_equal(st_sha256(j->file), sha);
            assert_string_equal(st_meta(j->file, "dataset"), "digits");
            assert_int_equal(stat(path, &sb), 0);
            bytes += (long)sb.st_size;
            files++;
            judge++;
            conv_close(j);
            continue;
        }
        model *m = model_open(path, err, sizeof err);
        if (!m)
            fail_msg("%s", err);
        assert_string_equal(st_sha256(m->file), sha);
        assert_string_equal(m->dataset, "digits");
        assert_int_equal(stat(path, &sb), 0);
        bytes += (long)sb.st_size;
        files++;
        experts += strncmp(name, "expert-", 7) == 0;
        router += strcmp(name, "router.safetensors") == 0;
        mono += strcmp(name, "monolith.safetensors") == 0;
        cls += strcmp(name, "classifier.safetensors") == 0;
        model_close(m);
    }
    fclose(fp);
    assert_int_equal(experts, 8);
    assert_int_equal(router + mono + cls, 3);
    assert_true(judge <= 1);
    assert_int_equal(files, 11 + judge);
    assert_true(bytes <= 40l * 1000 * 1000);
    ensemble *e = ensemble_open(dir, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    assert_int_equal(e->K, 8);
    assert_int_equal(e->n_classes, 10);
    ensemble_close(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_adam_minimises_and_ema_follows),
        cmocka_unit_test(test_gauss_fit_recovers_mean_and_covariance),
        cmocka_unit_test(test_tiny_denoiser_loss_falls),
        cmocka_unit_test(test_gaussian_baseline_is_a_good_start),
        cmocka_unit_test(test_router_learns_clusters),
        cmocka_unit_test(test_classifier_learns_bars),
        cmocka_unit_test_setup_teardown(test_shard_files_round_trip, setup_shards, teardown_shards),
        cmocka_unit_test_setup_teardown(test_expert_opens_only_its_shard, setup_shards,
                                        teardown_shards),
        cmocka_unit_test_setup_teardown(test_expert_refuses_a_foreign_shard, setup_shards,
                                        teardown_shards),
        cmocka_unit_test(test_cfg_argv_round_trips),
        cmocka_unit_test_setup_teardown(test_binary_exit_codes_and_expert, setup_shards,
                                        teardown_shards),
        cmocka_unit_test(test_shipped_digits_manifest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
