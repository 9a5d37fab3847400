/* test_eval.c -- ddm-eval: FID against analytic values, what each strategy
 * selects as the eval sees it, the probe measures, the charts, and the
 * binary end to end on a 2-expert toy set -- in-process and through a real
 * ddm-router with ddm-expert workers (--url). */
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/model.h"
#include "common/png.h"
#include "common/rng.h"
#include "common/st.h"
#include "router/local.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/eval/cmds.h"
#include "tools/eval/fid.h"
#include "tools/eval/gen.h"
#include "tools/eval/metrics.h"
#include "tools/eval/plot.h"
#include "tools/eval/probe.h"
#include "tools/train/conv.h"

#define TK 2        /* experts of the toy set */
#define TDIM 16     /* 4x4 latents */
#define TCLS 3      /* label classes */

/* ---- FID ------------------------------------------------------------------------------ */

/* n samples of N(mu, diag(var)) in d dims, from rng stream `stream`. */
static float *gaussian_samples(long n, int d, const double *mu, const double *var,
                               uint64_t stream)
{
    float *x = malloc((size_t)n * d * sizeof *x);
    assert_non_null(x);
    for (long i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            x[i * d + j] = (float)(mu[j] + sqrt(var[j]) *
                                   rng_normal(42, stream, (uint64_t)(i * d + j)));
    return x;
}

static void test_fid_self_is_zero(void **state)
{
    (void)state;
    const int d = 24;
    const long n = 400;
    double mu[24], var[24];
    for (int j = 0; j < d; j++) {
        mu[j] = 0.1 * j;
        var[j] = 0.5 + 0.1 * j;
    }
    float *x = gaussian_samples(n, d, mu, var, 1);
    fid_stats a, b;
    assert_int_equal(fid_stats_compute(x, n, d, &a), 0);
    assert_int_equal(fid_stats_compute(x, n, d, &b), 0);
    double f = -1;
    char err[256];
    assert_int_equal(fid_distance(&a, &b, &f, err, sizeof err), 0);
    assert_true(f >= 0 && f < 1e-6);
    /* fewer samples than features: rank-deficient covariance, still ~0 */
    fid_stats c;
    assert_int_equal(fid_stats_compute(x, 10, d, &c), 0);
    assert_int_equal(fid_distance(&c, &c, &f, err, sizeof err), 0);
    assert_true(f >= 0 && f < 1e-6);
    /* and the mean/covariance are right */
    assert_true(fabs(a.mu[3] - 0.3) < 0.15);
    assert_true(fabs(a.cov[5 * d + 5] - 1.0) < 0.25);
    fid_stats_free(&a);
    fid_stats_free(&b);
    fid_stats_free(&c);
    free(x);
}

/* 2x2 SPD: tr sqrt(A^1/2 B A^1/2) = sqrt(tr(AB) + 2 sqrt(det A det B)). */
static void test_fid_analytic_2x2(void **state)
{
    (void)state;
    const double A[4] = { 2.0, 0.6, 0.6, 1.0 }, B[4] = { 0.5, -0.3, -0.3, 3.0 };
    const double ma[2] = { 1.0, -2.0 }, mb[2] = { 0.5, 0.0 };
    double trab = A[0] * B[0] + A[1] * B[2] + A[2] * B[1] + A[3] * B[3];
    double dab = (A[0] * A[3] - A[1] * A[2]) * (B[0] * B[3] - B[1] * B[2]);
    double ts = sqrt(trab + 2 * sqrt(dab));
    double want = 0.25 + 4.0 + (A[0] + A[3]) + (B[0] + B[3]) - 2 * ts;
    double got;
    assert_int_equal(fid_trace_sqrt_product(A, B, 2, &got), 0);
    assert_true(fabs(got - ts) < 1e-9);
    fid_stats a, b;
    assert_int_equal(fid_stats_from(ma, A, 2, 0, &a), 0);
    assert_int_equal(fid_stats_from(mb, B, 2, 0, &b), 0);
    char err[256];
    assert_int_equal(fid_distance(&a, &b, &got, err, sizeof err), 0);
    assert_true(fabs(got - want) < 1e-9);
    /* symmetric in its arguments */
    assert_int_equal(fid_distance(&b, &a, &got, err, sizeof err), 0);
    assert_true(fabs(got - want) < 1e-9);
    fid_stats_free(&a);
    fid_stats_free(&b);
}

/* Sampled Gaussians with diagonal covariances: FID -> |dmu|^2 + sum (sqrt a - sqrt b)^2. */
static void test_fid_sampled_gaussians(void **state)
{
    (void)state;
    const int d = 8;
    const long n = 40000;
    double m1[8], v1[8], m2[8], v2[8], want = 0;
    for (int j = 0; j < d; j++) {
        m1[j] = 0.0;
        m2[j] = j % 2 ? 1.0 : -0.5;
        v1[j] = 1.0;
        v2[j] = 0.25 + 0.5 * j;
        want += (m1[j] - m2[j]) * (m1[j] - m2[j]) + pow(sqrt(v1[j]) - sqrt(v2[j]), 2);
    }
    float *x = gaussian_samples(n, d, m1, v1, 2), *y = gaussian_samples(n, d, m2, v2, 3);
    fid_stats a, b;
    assert_int_equal(fid_stats_compute(x, n, d, &a), 0);
    assert_int_equal(fid_stats_compute(y, n, d, &b), 0);
    double got;
    char err[256];
    assert_int_equal(fid_distance(&a, &b, &got, err, sizeof err), 0);
    assert_true(fabs(got - want) < 0.03 * want);
    fid_stats_free(&a);
    fid_stats_free(&b);
    free(x);
    free(y);
}

static void test_fid_errors(void **state)
{
    (void)state;
    float x[12] = { 0 };
    fid_stats a, b;
    assert_int_equal(fid_stats_compute(x, 1, 4, &a), DDM_EINVAL); /* n < 2 */
    assert_int_equal(fid_stats_compute(x, 3, 4, &a), 0);
    assert_int_equal(fid_stats_compute(x, 4, 3, &b), 0);
    double f;
    char err[256] = "";
    assert_int_equal(fid_distance(&a, &b, &f, err, sizeof err), DDM_EMISMATCH);
    assert_non_null(strstr(err, "differ"));
    fid_stats_free(&a);
    fid_stats_free(&b);
}

/* ---- repeated FIDs, KID, precision / recall, coverage ------------------------------------- */

/* The rows of x [n][d] repeated counts[i] times. */
static float *replicate(const float *x, long n, int d, const int *counts, long *m)
{
    long tot = 0;
    for (long i = 0; i < n; i++)
        tot += counts[i];
    float *y = malloc((size_t)tot * d * sizeof *y);
    long at = 0;
    for (long i = 0; i < n; i++)
        for (int c = 0; c < counts[i]; c++, at++)
            memcpy(y + (size_t)at * d, x + (size_t)i * d, (size_t)d * sizeof *y);
    *m = tot;
    return y;
}

/* fid_set's fast path (no square root per call) equals fid_distance, with
 * and without bootstrap counts. */
static void test_fid_set_matches_fid_distance(void **state)
{
    (void)state;
    enum { N = 300, M = 400, D = 6 };
    double mu1[D] = { 0, 1, 0, 2, 0, 0 }, v1[D] = { 1, 2, 0.5, 1, 3, 1 };
    double mu2[D] = { 0.5, 1, 0, 1, 0, 0.2 }, v2[D] = { 1, 1, 1, 2, 1, 0.5 };
    float *x = gaussian_samples(N, D, mu1, v1, 11), *y = gaussian_samples(M, D, mu2, v2, 12);
    fid_stats sx, sy;
    assert_int_equal(fid_stats_compute(x, N, D, &sx), 0);
    assert_int_equal(fid_stats_compute(y, M, D, &sy), 0);
    fid_ref ref;
    assert_int_equal(fid_ref_init(&sy, &ref), 0);
    fid_set *fs = NULL;
    assert_int_equal(fid_set_new(&ref, x, N, &fs), 0);
    double a, b;
    char err[256];
    assert_int_equal(fid_distance(&sx, &sy, &a, err, sizeof err), 0);
    assert_int_equal(fid_set_distance(fs, NULL, &b), 0);
    print_message("# FID %.9f (fid_distance) vs %.9f (fid_set)\n", a, b);
    assert_true(fabs(a - b) <= 1e-8 * (1 + a));
    int counts[N];
    for (int rep = 0; rep < 3; rep++) {
        metric_boot_counts(7, rep, N, counts);
        long m;
        float *z = replicate(x, N, D, counts, &m);
        fid_stats sz;
        assert_int_equal(fid_stats_compute(z, m, D, &sz), 0);
        assert_int_equal(fid_distance(&sz, &sy, &a, err, sizeof err), 0);
        assert_int_equal(fid_set_distance(fs, counts, &b), 0);
        assert_true(fabs(a - b) <= 1e-8 * (1 + a));
        fid_stats_free(&sz);
        free(z);
    }
    fid_set_free(fs);
    fid_ref_free(&ref);
    fid_stats_free(&sx);
    fid_stats_free(&sy);
    free(x);
    free(y);
}

/* KID by its definition: mean k over distinct pairs of x, of r, and across. */
static double kid_brute(const float *x, long n, const float *r, long m, int d, double s)
{
    double xx = 0, rr = 0, xr = 0;
#define K3(a, b)                                                                      \
    ({                                                                                \
        double dot_ = 0;                                                              \
        for (int j_ = 0; j_ < d; j_++)                                                \
            dot_ += (double)(a)[j_] * (b)[j_];                                        \
        double v_ = dot_ / s + 1;                                                     \
        v_ *v_ *v_;                                                                   \
    })
    for (long i = 0; i < n; i++)
        for (long j = 0; j < n; j++)
            if (i != j)
                xx += K3(x + i * d, x + j * d);
    for (long i = 0; i < m; i++)
        for (long j = 0; j < m; j++)
            if (i != j)
                rr += K3(r + i * d, r + j * d);
    for (long i = 0; i < n; i++)
        for (long j = 0; j < m; j++)
            xr += K3(x + i * d, r + j * d);
#undef K3
    return xx / (n * (n - 1.0)) + rr / (m * (m - 1.0)) - 2 * xr / ((double)n * m);
}

static void test_kid(void **state)
{
    (void)state;
    enum { N = 60, M = 80, D = 5 };
    double mu[D] = { 0 }, v[D] = { 1, 1, 1, 1, 1 }, mu2[D] = { 1.5, 0, 0, 0, 0 };
    float *x = gaussian_samples(N, D, mu, v, 21), *r = gaussian_samples(M, D, mu, v, 22);
    float *far = gaussian_samples(N, D, mu2, v, 23);
    double s = kid_scale(r, M, D), rr = kid_ref_term(r, M, D, s);
    kid_set k;
    assert_int_equal(kid_set_init(x, N, r, M, D, s, rr, &k), 0);
    double same = kid_set_value(&k, NULL);
    assert_true(fabs(same - kid_brute(x, N, r, M, D, s)) < 1e-9);
    int counts[N];
    metric_boot_counts(3, 0, N, counts);
    long m;
    float *z = replicate(x, N, D, counts, &m);
    assert_true(fabs(kid_set_value(&k, counts) - kid_brute(z, m, r, M, D, s)) < 1e-9);
    free(z);
    kid_set_free(&k);
    assert_int_equal(kid_set_init(far, N, r, M, D, s, rr, &k), 0);
    double shifted = kid_set_value(&k, NULL);
    kid_set_free(&k);
    print_message("# KID same distribution %.4f, mean shifted by 1.5 %.4f\n", same, shifted);
    assert_true(shifted > 0.2 && fabs(same) < 0.2 * shifted);
    free(x);
    free(r);
    free(far);
}

static void test_precision_recall(void **state)
{
    (void)state;
    /* the reference: 4 tight clusters on a line; samples from 2 of them, then from nowhere */
    enum { M = 80, D = 2 };
    float r[M * D], g[M * D], far[M * D];
    for (int i = 0; i < M; i++) {
        float c = (float)(10 * (i % 4));
        r[i * D] = c + (float)(0.3 * rng_normal(1, 1, (uint64_t)i));
        r[i * D + 1] = (float)(0.3 * rng_normal(1, 2, (uint64_t)i));
        g[i * D] = (float)(10 * (i % 2)) + (float)(0.2 * rng_normal(1, 3, (uint64_t)i));
        g[i * D + 1] = (float)(0.2 * rng_normal(1, 4, (uint64_t)i));
        far[i * D] = 5 + (float)(0.2 * rng_normal(1, 5, (uint64_t)i));
        far[i * D + 1] = 40;
    }
    double rr[M], rg[M], rf[M];
    unsigned char in[M];
    assert_int_equal(pr_radii(r, M, D, METRIC_PR_K, rr), 0);
    assert_int_equal(pr_radii(g, M, D, METRIC_PR_K, rg), 0);
    assert_int_equal(pr_radii(far, M, D, METRIC_PR_K, rf), 0);
    assert_int_equal(pr_inside(g, M, r, rr, M, D, in), 0);
    double precision = pr_share(in, M, NULL);
    assert_int_equal(pr_inside(r, M, g, rg, M, D, in), 0);
    double recall = pr_share(in, M, NULL);
    print_message("# half the modes: precision %.3f recall %.3f\n", precision, recall);
    assert_true(precision > 0.9);
    assert_true(recall > 0.35 && recall < 0.55);
    assert_int_equal(pr_inside(far, M, r, rr, M, D, in), 0);
    assert_true(pr_share(in, M, NULL) == 0.0);
    assert_int_equal(pr_radii(r, 3, D, 3, rr), DDM_EINVAL);
}

static void test_coverage_and_resamples(void **state)
{
    (void)state;
    double freq[4] = { 0.25, 0.25, 0.25, 0.25 }, same[4] = { 5, 5, 5, 5 };
    double skew[4] = { 10, 0, 10, 0 }, none[4] = { 0 };
    assert_true(fabs(metric_tv(same, freq, 4)) < 1e-12);
    assert_true(fabs(metric_tv(skew, freq, 4) - 0.5) < 1e-12);
    assert_true(isnan(metric_tv(none, freq, 4)));
    int a[50], b[50], c[50];
    metric_boot_counts(9, 1, 50, a);
    metric_boot_counts(9, 1, 50, b);
    metric_boot_counts(9, 2, 50, c);
    int sa = 0, diff = 0;
    for (int i = 0; i < 50; i++) {
        sa += a[i];
        assert_int_equal(a[i], b[i]);
        diff += a[i] != c[i];
    }
    assert_int_equal(sa, 50);
    assert_true(diff > 0);
}

/* ---- in-process helpers on a toy set ----------------------------------------------------- */

static char tdir[128];

static int write_images_file(const char *path, long n, uint64_t seed)
{
    float *x = malloc((size_t)n * TDIM * sizeof *x);
    int *lab = malloc((size_t)n * sizeof *lab);
    if (!x || !lab)
        return -1;
    for (long i = 0; i < n * TDIM; i++)
        x[i] = (float)(2 * rng_uniform(seed, 1, (uint64_t)i) - 1);
    for (long i = 0; i < n; i++)
        lab[i] = (int)(i % TCLS);
    st_writer *w = st_writer_new();
    int64_t si[2] = { n, TDIM }, sl[1] = { n };
    char err[256];
    int rc = !w || st_writer_add_f32(w, "images", ST_F32, 2, si, x) ||
             st_writer_add_raw(w, "labels", ST_I32, 1, sl, lab, (size_t)n * sizeof *lab) ||
             st_writer_save(w, path, err, sizeof err);
    st_writer_free(w);
    free(x);
    free(lab);
    return rc ? -1 : 0;
}

static int write_partition(const char *path)
{
    float c[TK * TDIM];
    int tab[TK * TCLS] = { 30, 5, 1, 2, 10, 40 };
    for (int i = 0; i < TK * TDIM; i++)
        c[i] = i < TDIM ? 0.3f : -0.3f;
    st_writer *w = st_writer_new();
    int64_t sc[2] = { TK, TDIM }, st[2] = { TK, TCLS };
    char err[256];
    int rc = !w || st_writer_add_f32(w, "centroids", ST_F32, 2, sc, c) ||
             st_writer_add_raw(w, "table", ST_I32, 2, st, tab, sizeof tab) ||
             st_writer_save(w, path, err, sizeof err);
    st_writer_free(w);
    return rc ? -1 : 0;
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (toyset_tempdir(tdir, sizeof tdir, "test-eval") || toyset_write(tdir, TK, TDIM, TCLS, 9))
        return -1;
    char p[256];
    net_config mono = { .in_dim = TDIM, .hidden = 12, .n_blocks = 1, .out_dim = TDIM,
                        .n_classes = TCLS, .time_dim = 8, .gauss_rank = 2 };
    net_config cls = { .in_dim = TDIM, .hidden = 10, .n_blocks = 1, .out_dim = TCLS,
                       .n_classes = 0, .time_dim = 0, .gauss_rank = 0 };
    snprintf(p, sizeof p, "%s/monolith.safetensors", tdir);
    if (toyset_write_model(p, MODEL_DENOISER, &mono, 77, -1, TK, ST_F32))
        return -1;
    snprintf(p, sizeof p, "%s/classifier.safetensors", tdir);
    if (toyset_write_model(p, MODEL_CLASSIFIER, &cls, 78, -1, 0, ST_F32))
        return -1;
    /* a conv judge for the 4x4 images: ddm-eval's second judge, found beside the classifier */
    conv_config cc = { .height = 4, .width = 4, .channels = 1, .n_conv = 1, .ch = { 3 },
                       .kernel = 3, .feat = 6, .classes = TCLS };
    float cp[512];
    assert_true(conv_param_count(&cc) <= 512);
    conv_init(&cc, cp, 79);
    char err[256];
    st_writer *w = st_writer_new();
    snprintf(p, sizeof p, "%s/judge-conv.safetensors", tdir);
    if (!w || conv_write(w, &cc, cp, ST_F32) || st_writer_save(w, p, err, sizeof err))
        return -1;
    st_writer_free(w);
    snprintf(p, sizeof p, "%s/heldout.safetensors", tdir);
    if (write_images_file(p, 120, 5))
        return -1;
    snprintf(p, sizeof p, "%s/train.safetensors", tdir);
    if (write_images_file(p, 300, 6))
        return -1;
    snprintf(p, sizeof p, "%s/partition.safetensors", tdir);
    return write_partition(p);
}

static int group_teardown(void **state)
{
    (void)state;
    if (!getenv("DDM_KEEP_LOGS"))
        toyset_rmdir(tdir);
    else
        fprintf(stderr, "kept %s\n", tdir);
    return 0;
}

static ensemble *open_set(void)
{
    char err[512];
    ensemble *e = ensemble_open(tdir, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    return e;
}

/* Each strategy, as run by the eval's probe pass, selects exactly what
 * strategy_select documents for the router's own logits at the starting
 * noise; and calls the documented number of experts. */
static void test_strategies_select_documented_experts(void **state)
{
    (void)state;
    ensemble *e = open_set();
    const int n = 6;
    char names[16][GEN_NAME];
    int nr = table_default_rows(TK, names, 16);
    /* the documented rows, in order (top-3 dropped for K = 2) */
    const char *want[] = { "monolith", "full", "uniform", "top-1", "top-2", "threshold",
                           "sample", "nucleus", "top-1:drawn", "top-2:drawn", "expert:0",
                           "expert:1" };
    assert_int_equal(nr, 12);
    for (int i = 0; i < nr; i++)
        assert_string_equal(names[i], want[i]);
    /* router logits at t = 1 for the initial noise of images 0..n-1 */
    const model *r = e->router;
    net_scratch *s = net_scratch_new(&r->cfg, n, 0);
    float x[6 * TDIM], t[6], logits[6 * TK];
    uint64_t seed = gen_request_seed(1, -1, 0);
    for (int i = 0; i < n; i++) {
        rng_normal_fill(seed, (uint64_t)i, 0, x + i * TDIM, TDIM);
        t[i] = 1.0f;
    }
    assert_int_equal(net_forward(&r->cfg, &r->w, s, n, x, t, NULL, logits), 0);
    probe_opts po;
    probe_opts_default(&po);
    po.lipschitz = 0;
    po.disagreement = 0;
    for (int i = 1; i < nr; i++) { /* every row but the monolith */
        gen_spec sp;
        gen_spec_init(&sp, names[i]);
        sp.steps = 3;
        strategy st;
        char err[256];
        assert_int_equal(gen_spec_strategy(&sp, TK, &st, err, sizeof err), 0);
        double w[TK] = { 0 }, calls = 0;
        for (int j = 0; j < n; j++) {
            int idx[TK];
            float wt[TK];
            double u = rng_uniform(seed, SAMPLE_STREAM_ROUTING + (uint64_t)j, 0);
            sample_params sp_j;
            sample_params_default(&sp_j, TK);
            sp_j.seed = seed;
            float g[TK];
            sample_route_noise(&sp_j, j, TK, g); /* top-k:drawn's draw for image j */
            int m = strategy_select(&st, logits + j * TK, TK, u, g, idx, wt);
            calls += m;
            for (int k = 0; k < m; k++)
                w[idx[k]] += wt[k] / n;
        }
        probe_result pr;
        assert_int_equal(probe_run(e, &sp, 0, 1, n, &po, &pr, err, sizeof err), 0);
        for (int k = 0; k < TK; k++)
            assert_float_equal(pr.weight[k], w[k], 1e-5);
        /* documented cost: full / uniform K per step, top-k k, single experts 1 */
        if (!strcmp(names[i], "full") || !strcmp(names[i], "uniform"))
            assert_float_equal(pr.rows, TK * 3.0, 1e-9);
        else if (!strncmp(names[i], "top-1", 5) || !strcmp(names[i], "sample") ||
                 !strncmp(names[i], "expert:", 7))
            assert_float_equal(pr.rows, 3.0, 1e-9);
        else if (!strncmp(names[i], "top-2", 5))
            assert_float_equal(pr.rows, 6.0, 1e-9);
        if (!strcmp(names[i], "top-1:drawn")) { /* argmax of log p + the image's draw, by hand */
            double w0 = 0;
            for (int j = 0; j < n; j++) {
                sample_params sp_j;
                sample_params_default(&sp_j, TK);
                sp_j.seed = seed;
                float g[TK];
                sample_route_noise(&sp_j, j, TK, g);
                w0 += logits[j * TK] + g[0] >= logits[j * TK + 1] + g[1] ? 1.0 / n : 0;
            }
            assert_float_equal(pr.weight[0], w0, 1e-6);
        }
        if (!strncmp(names[i], "expert:", 7))
            assert_float_equal(pr.weight[names[i][7] - '0'], 1.0, 1e-6);
        if (!strcmp(names[i], "full") || !strcmp(names[i], "uniform"))
            assert_int_equal((int)lrint(pr.switches * 1000), 0);
        /* the weights of every evaluation sum to 1 */
        for (int ev = 0; ev < pr.evals; ev++) {
            double sum = 0;
            for (int k = 0; k < TK; k++)
                sum += pr.weight[ev * TK + k];
            assert_float_equal(sum, 1.0, 1e-5);
        }
        probe_result_free(&pr);
    }
    net_scratch_free(s);
    ensemble_close(e);
}

/* A probe pass draws exactly gen_draw's images (the Lipschitz clones and
 * expert queries must not disturb the trajectories), in both modes. */
static void test_probe_matches_draw(void **state)
{
    (void)state;
    char err[512];
    gen_source *g = gen_open_local(tdir, NULL, err, sizeof err);
    assert_non_null(g);
    assert_true(gen_has_monolith(g));
    ensemble *e = gen_ensemble(g);
    const int n = 9;
    float x[9 * TDIM];
    int lab[9];
    const char *rows[] = { "top-2", "sample", "threshold" };
    for (int r = 0; r < 3; r++) {
        for (int mode = 0; mode < 2; mode++) {
            gen_spec sp;
            gen_spec_init(&sp, rows[r]);
            sp.steps = 6;
            sp.guidance = 2.0f;
            gen_stats gs = { 0 };
            int rc = mode ? gen_draw_classes(g, &sp, 4, n, x, lab, &gs, err, sizeof err)
                          : gen_draw(g, &sp, -1, 4, n, x, &gs, err, sizeof err);
            assert_int_equal(rc, 0);
            assert_int_equal(gs.images, n);
            probe_opts po;
            probe_opts_default(&po);
            po.every = 2;
            probe_result pr;
            assert_int_equal(probe_run(e, &sp, mode, 4, n, &po, &pr, err, sizeof err), 0);
            assert_memory_equal(pr.images, x, sizeof x);
            assert_float_equal(pr.rows, gs.rows / n, 1e-9);
            assert_float_equal(pr.switches, gs.switches / n, 1e-9);
            if (mode)
                for (int i = 0; i < n; i++)
                    assert_int_equal(pr.labels[i], lab[i]);
            assert_true(isfinite(pr.lip_mean) && pr.lip_mean > 0 && pr.lip_max >= pr.lip_mean);
            assert_true(pr.disagree_deg > 0 && pr.disagree_deg < 180);
            assert_true(isfinite(pr.vel_change) && pr.vel_change > 0);
            probe_result_free(&pr);
        }
    }
    gen_close(g);
}

static void test_probe_distances(void **state)
{
    (void)state;
    ensemble *e = open_set();
    float cent[TK * TDIM];
    for (int i = 0; i < TK * TDIM; i++)
        cent[i] = i < TDIM ? 0.5f : -0.5f;
    probe_opts po;
    probe_opts_default(&po);
    po.every = 1;
    po.centroids = cent;
    const char *rows[] = { "full", "top-1" };
    for (int r = 0; r < 2; r++) {
        gen_spec sp;
        gen_spec_init(&sp, rows[r]);
        sp.steps = 4;
        probe_result pr;
        char err[256];
        assert_int_equal(probe_run(e, &sp, 0, 2, 8, &po, &pr, err, sizeof err), 0);
        for (int ev = 0; ev < pr.evals; ev++) {
            if (r == 0) { /* full selects everything: its set is always the K nearest */
                assert_float_equal(pr.nearest_x0[ev], 1.0, 1e-9);
                assert_float_equal(pr.far_w_x0[ev], 0.0, 1e-9); /* K = 2: nothing beyond 2 */
            }
            assert_true(pr.rank_x0[ev] >= 1.0 - 1e-9 && pr.rank_x0[ev] <= TK + 1e-9);
            assert_true(pr.mindist_x0[ev] <= pr.wdist_x0[ev] + 1e-9);
            assert_true(pr.mindist_xt[ev] <= pr.wdist_xt[ev] + 1e-9);
            assert_true(pr.top_nearest_x0[ev] >= 0 && pr.top_nearest_x0[ev] <= 1);
        }
        probe_result_free(&pr);
    }
    ensemble_close(e);
}

static void test_mean_angle(void **state)
{
    (void)state;
    float x[3 * 3] = { 1, 0, 0, 0, 2, 0, -3, 0, 0 };
    /* pairs: 90, 180, 90 */
    assert_float_equal(probe_mean_angle(x, 3, 3), 120.0, 1e-6);
    float y[2 * 2] = { 1, 1, 2, 2 };
    assert_float_equal(probe_mean_angle(y, 2, 2), 0.0, 1e-3);
}

static void test_quantize_and_seeds(void **state)
{
    (void)state;
    float v[6] = { -2.0f, -1.0f, 0.0f, 0.3f, 1.0f, 7.0f };
    gen_quantize(v, 6);
    for (int i = 0; i < 6; i++) {
        float b = (v[i] + 1.0f) * 127.5f;
        assert_float_equal(b, roundf(b), 1e-3);
        assert_true(v[i] >= -1.0f && v[i] <= 1.0f);
    }
    assert_float_equal(v[0], -1.0f, 0);
    assert_float_equal(v[5], 1.0f, 0);
    float w[6];
    memcpy(w, v, sizeof w);
    gen_quantize(w, 6);
    assert_memory_equal(v, w, sizeof v);
    /* seeds of distinct (run seed, label, chunk) never collide in range */
    assert_true(gen_request_seed(1, -1, 0) != gen_request_seed(1, 0, 0));
    assert_true(gen_request_seed(1, 63, 99) < gen_request_seed(2, -1, 0));
}

static void test_plots(void **state)
{
    (void)state;
    char p[256], err[256];
    const char *labels[] = { "floor", "top-2", "full" };
    double v[] = { 10, 30, NAN }, sd[] = { NAN, 2, 1 };
    snprintf(p, sizeof p, "%s/bars.png", tdir);
    assert_int_equal(plot_bars(p, "FID", labels, v, sd, 3, err, sizeof err), 0);
    uint8_t *pix;
    int w, h;
    assert_int_equal(pngio_read_grey(p, &pix, &w, &h, err, sizeof err), 0);
    long dark = 0;
    for (long i = 0; i < (long)w * h; i++)
        dark += pix[i] < 128;
    assert_true(w > 300 && h > 60 && dark > 200);
    free(pix);
    double x[4] = { 1, 2, 3, 4 }, y[4] = { 4, 3, 2, 1 };
    int gp[4] = { 0, 1, 0, 1 };
    const char *gn[] = { "a", "b" };
    snprintf(p, sizeof p, "%s/scatter.png", tdir);
    assert_int_equal(plot_scatter(p, "t", "x", "y", x, y, gp, 4, gn, 2, err, sizeof err), 0);
    double m[2 * 3] = { 0, 0.5, 1, 1, 0.5, 0 };
    const double *maps[1] = { m };
    const char *mn[1] = { "map" };
    snprintf(p, sizeof p, "%s/heat.png", tdir);
    assert_int_equal(plot_heat(p, "heat", maps, mn, 1, 2, 3, "E", "1", "0", err, sizeof err), 0);
    assert_int_equal(pngio_read_grey(p, &pix, &w, &h, err, sizeof err), 0);
    free(pix);
    /* lines on a log x axis, a point above the clip, references */
    double tx[3] = { 0.1, 1, 10 }, ya[3] = { 5, 3, 90 }, yb[3] = { 4, 4, 6 }, ea[3] = { 1, NAN, 1 };
    plot_series ser[2] = { { "full", tx, ya, ea, 3 }, { "top-2", tx, yb, NULL, 3 } };
    plot_ref refs[2] = { { "mono", 4.5 }, { "top-1", 4.6 } };
    snprintf(p, sizeof p, "%s/lines.png", tdir);
    assert_int_equal(plot_lines(p, "t", "T", "FID", 1, ser, 2, refs, 2, 12, err, sizeof err), 0);
    assert_int_equal(pngio_read_grey(p, &pix, &w, &h, err, sizeof err), 0);
    dark = 0;
    for (long i = 0; i < (long)w * h; i++)
        dark += pix[i] < 128;
    assert_true(w > 500 && h > 300 && dark > 500);
    free(pix);
    snprintf(p, sizeof p, "/nonexistent-dir/x.png");
    assert_true(plot_bars(p, "FID", labels, v, sd, 3, err, sizeof err) != 0);
}

/* ---- the binary -------------------------------------------------------------------------- */

/* Runs ddm-eval with args (NULL-terminated); returns its exit status, output in log. */
static int run_eval(const char *log, const char *const *args)
{
    char bin[256];
    char *argv[64];
    int n = 0;
    argv[n++] = (char *)proc_bin("ddm-eval", bin, sizeof bin);
    for (; args[n - 1] && n < 63; n++)
        argv[n] = (char *)args[n - 1];
    argv[n] = NULL;
    unlink(log);
    pid_t pid = proc_start(argv, log);
    assert_true(pid > 0);
    int st = proc_wait(pid, 120000);
    if (st == -1) {
        proc_stop(pid, SIGKILL, 1000);
        fail_msg("ddm-eval timed out");
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The "FID" number of a `ddm-eval fid` output. */
static double fid_of(const char *out)
{
    const char *p = strstr(out, "  FID ");
    double v = NAN;
    if (p)
        sscanf(p + 6, "%lf", &v);
    return v;
}

static void test_binary_usage_errors(void **state)
{
    (void)state;
    char log[256];
    snprintf(log, sizeof log, "%s/usage.log", tdir);
    assert_int_equal(run_eval(log, (const char *[]){ "--help", NULL }), 0);
    char *out = slurp(log);
    assert_non_null(strstr(out, "usage: ddm-eval"));
    free(out);
    assert_int_equal(run_eval(log, (const char *[]){ "--version", NULL }), 0);
    assert_int_equal(run_eval(log, (const char *[]){ "frobnicate", NULL }), 2);
    assert_int_equal(run_eval(log, (const char *[]){ "fid", "--bogus", NULL }), 2);
    assert_int_equal(run_eval(log, (const char *[]){ "fid", "-n", "1", NULL }), 2);
    out = slurp(log);
    assert_non_null(strstr(out, "-n \"1\""));
    free(out);
    assert_int_equal(run_eval(log, (const char *[]){ "table", "--modes", "x", NULL }), 2);
    assert_int_equal(run_eval(log, (const char *[]){ "fid", "-s", "top-k", NULL }), 2);
    out = slurp(log);
    assert_non_null(strstr(out, "--strategy: strategy \"top-k\" is unknown"));
    free(out);
    assert_int_equal(run_eval(log, (const char *[]){ "table", "--rows", "full,bogus", NULL }), 2);
    /* runtime error: no models there */
    char cls[256];
    snprintf(cls, sizeof cls, "%s/classifier.safetensors", tdir);
    assert_int_equal(run_eval(log, (const char *[]){ "fid", "--models", "/nonexistent",
                                                     "--classifier", cls, "--heldout", cls,
                                                     NULL }), 1);
    out = slurp(log);
    assert_non_null(strstr(out, "ddm-eval: "));
    free(out);
}

/* The whole table on the toy set: every documented row in table.csv, both
 * modes, finite FIDs, plots and grids written. */
static void test_binary_table_end_to_end(void **state)
{
    (void)state;
    char log[256], ho[256], tr[256], out[256], path[300];
    snprintf(log, sizeof log, "%s/table.log", tdir);
    snprintf(ho, sizeof ho, "%s/heldout.safetensors", tdir);
    snprintf(tr, sizeof tr, "%s/train.safetensors", tdir);
    snprintf(out, sizeof out, "%s/res", tdir);
    int rc = run_eval(log, (const char *[]){ "table", "--models", tdir, "--heldout", ho,
                                             "--train", tr, "--out", out, "-n", "30",
                                             "--n-cond", "24", "--seeds", "2", "--probe", "6",
                                             "--every", "2", "--steps", "4", "-j", "2", NULL });
    if (rc != 0)
        proc_dump_log(log);
    assert_int_equal(rc, 0);
    snprintf(path, sizeof path, "%s/table.csv", out);
    char *csv = slurp(path);
    assert_non_null(csv);
    const char *rows[] = { "monolith", "full", "uniform", "top-1", "top-2", "threshold",
                           "sample", "nucleus", "expert:0", "expert:1" };
    for (int m = 0; m < 2; m++) {
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
            for (int k = 0; k < 2; k++) {
                char key[64];
                snprintf(key, sizeof key, "\n%s,%s,%s,", m ? "conditional" : "unconditional",
                         rows[i], k ? "conv" : "mlp");
                const char *p = strstr(csv, key);
                if (!p)
                    fail_msg("table.csv has no row %s", key + 1);
                double fid = NAN, ci = NAN;
                sscanf(p + strlen(key), "%lf,%lf", &fid, &ci);
                assert_true(isfinite(fid) && fid >= 0);
                /* bootstrap intervals for strategies, none for experts alone */
                assert_true(strncmp(rows[i], "expert:", 7) ? isfinite(ci) && ci > 0 : isnan(ci));
            }
        }
    }
    assert_non_null(strstr(csv, "\nunconditional,training-data,"));
    assert_non_null(strstr(csv, "\nconditional,training-data,"));
    free(csv);
    snprintf(path, sizeof path, "%s/table.md", out);
    char *md = slurp(path);
    assert_non_null(md);
    assert_non_null(strstr(md, "| top-2 | "));
    assert_non_null(strstr(md, "## Class-conditional"));
    assert_non_null(strstr(md, "| FID mlp | FID conv |"));
    assert_non_null(strstr(md, "Is the ordering the same under both judges?"));
    assert_non_null(strstr(md, "### Class coverage"));
    free(md);
    const char *files[] = { "fid-unconditional.png", "fid-conditional.png",
                            "fid-conv-unconditional.png", "disagreement.png",
                            "routing.png", "samples-top-2.png", "samples-cond-expert-1.png" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        if (stat(path, &sb) != 0 || sb.st_size < 100)
            fail_msg("missing %s", path);
    }
    /* the temperature sweep: full@T and top-2@T beside the references */
    rc = run_eval(log, (const char *[]){ "sweep", "--models", tdir, "--heldout", ho, "--train",
                                         tr, "--out", out, "-n", "24", "--seeds", "1", "--boot",
                                         "4", "--steps", "3", "--temperatures", "0.5,2", NULL });
    if (rc != 0)
        proc_dump_log(log);
    assert_int_equal(rc, 0);
    snprintf(path, sizeof path, "%s/sweep.csv", out);
    csv = slurp(path);
    assert_non_null(csv);
    assert_non_null(strstr(csv, "\nunconditional,full,0.5,mlp,"));
    assert_non_null(strstr(csv, "\nunconditional,top-2,2,conv,"));
    assert_non_null(strstr(csv, "\nunconditional,monolith,nan,mlp,"));
    assert_null(strstr(csv, "\nconditional,")); /* unconditional unless --modes */
    free(csv);
    snprintf(path, sizeof path, "%s/sweep.md", out);
    md = slurp(path);
    assert_non_null(md);
    assert_non_null(strstr(md, "How sharp must the router be"));
    free(md);
    struct stat sb;
    snprintf(path, sizeof path, "%s/sweep-fid-conv.png", out);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(run_eval(log, (const char *[]){ "sweep", "--models", tdir,
                                                     "--temperatures", "2,1", NULL }), 2);
    /* distance and specialists read the partition file */
    char part[256];
    snprintf(part, sizeof part, "%s/partition.safetensors", tdir);
    rc = run_eval(log, (const char *[]){ "distance", "--models", tdir, "--partition", part,
                                         "--out", out, "-n", "10", "--steps", "4", NULL });
    if (rc)
        proc_dump_log(log);
    assert_int_equal(rc, 0);
    snprintf(path, sizeof path, "%s/distance.md", out);
    md = slurp(path);
    assert_non_null(md);
    assert_non_null(strstr(md, "## top-2"));
    assert_non_null(strstr(md, "## full"));
    free(md);
    rc = run_eval(log, (const char *[]){ "specialists", "--models", tdir, "--partition", part,
                                         "--heldout", ho, "--out", out, "-n", "6", "--steps",
                                         "3", NULL });
    if (rc)
        proc_dump_log(log);
    assert_int_equal(rc, 0);
    snprintf(path, sizeof path, "%s/specialists.md", out);
    md = slurp(path);
    assert_non_null(md);
    assert_non_null(strstr(md, "Switching experts"));
    assert_non_null(strstr(md, "| 0 | 0 83%, 1 14%")); /* make-up from the partition table */
    free(md);
}

/* --url: the same FID through ddm-router + ddm-expert workers as in-process. */
static void test_binary_url_matches_in_process(void **state)
{
    (void)state;
    char conf[256], rlog[256], log[256], ho[256], cls[256], url[64];
    pid_t workers[TK], router;
    int port = proc_free_port();
    snprintf(conf, sizeof conf, "%s/cluster.conf", tdir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models %s\n", tdir);
    for (int k = 0; k < TK; k++)
        fprintf(f, "expert %d ipc://%s/e%d.ipc\n", k, tdir, k);
    fclose(f);
    char bin[256];
    for (int k = 0; k < TK; k++) {
        char w[256], l[256], lst[256];
        snprintf(w, sizeof w, "%s/expert-%d.safetensors", tdir, k);
        snprintf(l, sizeof l, "%s/worker-%d.log", tdir, k);
        snprintf(lst, sizeof lst, "ipc://%s/e%d.ipc", tdir, k);
        char *argv[] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights", w,
                         "--listen", lst, NULL };
        workers[k] = proc_start(argv, l);
        assert_true(workers[k] > 0);
    }
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(rlog, sizeof rlog, "%s/router.log", tdir);
    char *rargv[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf,
                      "--listen", listen, NULL };
    router = proc_start(rargv, rlog);
    assert_true(router > 0);
    int ready = proc_wait_http(port, "/readyz", 200, 15000);
    if (ready)
        proc_dump_log(rlog);
    assert_int_equal(ready, 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/url.log", tdir);
    snprintf(ho, sizeof ho, "%s/heldout.safetensors", tdir);
    snprintf(cls, sizeof cls, "%s/classifier.safetensors", tdir);
    const char *strategies[] = { "top-1", "full" };
    for (int s = 0; s < 2; s++) {
        int rc = run_eval(log, (const char *[]){ "fid", "--url", url, "--classifier", cls,
                                                 "--heldout", ho, "--train", ho, "-s",
                                                 strategies[s], "-n", "300", "--steps", "5",
                                                 "--conditional", NULL });
        char *a = slurp(log);
        if (rc)
            fprintf(stderr, "%s", a);
        assert_int_equal(rc, 0);
        rc = run_eval(log, (const char *[]){ "fid", "--models", tdir, "--heldout", ho, "--train",
                                             ho, "-s", strategies[s], "-n", "300", "--steps",
                                             "5", "--conditional", NULL });
        char *b = slurp(log);
        assert_int_equal(rc, 0);
        double fa = fid_of(a), fb = fid_of(b);
        assert_true(isfinite(fa) && isfinite(fb));
        /* the same images: only BLAS rounding on other batch shapes may move a pixel */
        if (fabs(fa - fb) > 0.01 * fb + 0.006)
            fail_msg("%s: FID through the router %g, in-process %g", strategies[s], fa, fb);
        const char *ca = strstr(a, "expert calls"), *cb = strstr(b, "expert calls");
        assert_non_null(ca);
        assert_non_null(cb);
        double na = 0, nb = 0;
        sscanf(ca + 12, "%lf", &na);
        sscanf(cb + 12, "%lf", &nb);
        assert_float_equal(na, nb, 1e-6);
        free(a);
        free(b);
    }
    proc_stop(router, SIGTERM, 5000);
    for (int k = 0; k < TK; k++)
        proc_stop(workers[k], SIGTERM, 5000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fid_self_is_zero),
        cmocka_unit_test(test_fid_analytic_2x2),
        cmocka_unit_test(test_fid_sampled_gaussians),
        cmocka_unit_test(test_fid_errors),
        cmocka_unit_test(test_fid_set_matches_fid_distance),
        cmocka_unit_test(test_kid),
        cmocka_unit_test(test_precision_recall),
        cmocka_unit_test(test_coverage_and_resamples),
        cmocka_unit_test(test_mean_angle),
        cmocka_unit_test(test_quantize_and_seeds),
        cmocka_unit_test(test_strategies_select_documented_experts),
        cmocka_unit_test(test_probe_matches_draw),
        cmocka_unit_test(test_probe_distances),
        cmocka_unit_test(test_plots),
        cmocka_unit_test(test_binary_usage_errors),
        cmocka_unit_test(test_binary_table_end_to_end),
        cmocka_unit_test(test_binary_url_matches_in_process),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
