/* test_peer.c -- the PyTorch peer of `make bench-peer` (tools/bench/torch_peer.py)
 * computes ddm's images: 2 Euler steps of one image from ddm's own noise, top-2
 * and full, against router/local's in-process sampling of the same seed; and it
 * answers bad input with a message naming what to fix. The benchmark itself
 * (tools/bench/peer_bench_main.c) checks all 50 steps of 32 images before it
 * measures anything.
 *
 * Needs Debian's python3-torch (make deps installs it); without it the tests
 * skip with a message saying so. Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "router/local.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define PYTHON "/usr/bin/python3"
#define PEER "tools/bench/torch_peer.py"
#define MODELS "models/digits"
#define SEED 11
#define STEPS 2

static char g_dir[128];
static int g_have_torch;
static ensemble *g_e;

static int group_setup(void **state)
{
    (void)state;
    int st;
    char *out = proc_sh(&st, "%s -c 'import torch' 2>&1", PYTHON);
    free(out);
    g_have_torch = st == 0;
    if (!g_have_torch)
        fprintf(stderr, "# python3-torch is missing (%s cannot import torch): skipping the "
                        "peer tests (make deps installs it)\n", PYTHON);
    char err[256];
    g_e = ensemble_open(MODELS, err, sizeof err);
    if (!g_e) {
        fprintf(stderr, "test_peer: %s\n", err);
        return -1;
    }
    return toyset_tempdir(g_dir, sizeof g_dir, "test-peer");
}

static int group_teardown(void **state)
{
    (void)state;
    ensemble_close(g_e);
    toyset_rmdir(g_dir);
    return 0;
}

/* In-process images of image 0 of SEED with the strategy, into out[dim]. */
static void inprocess(const char *strategy, float *out)
{
    char err[256];
    sample_params p;
    sample_params_default(&p, g_e->K);
    assert_int_equal(strategy_parse(strategy, g_e->K, NAN, NAN, &p.strat, err, sizeof err), 0);
    p.n = 1;
    p.steps = STEPS;
    p.seed = SEED;
    assert_int_equal(ensemble_sample(g_e, &p, out, NULL, NULL), 0);
}

/* Largest |a - b| over n floats, and the largest |b| into *scale. */
static double max_diff(const float *a, const float *b, int n, double *scale)
{
    double m = 0;
    *scale = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        m = d > m || isnan(d) ? d : m;
        *scale = fabs(b[i]) > *scale ? fabs(b[i]) : *scale;
    }
    return m;
}

static void test_peer_matches_inprocess(void **state)
{
    (void)state;
    if (!g_have_torch)
        skip();
    int D = g_e->dim;
    /* ddm's noise of image 0: the trajectory's initial x */
    sample_params p;
    sample_params_default(&p, g_e->K);
    p.seed = SEED;
    traj *tr = traj_new(&p, 0, D);
    assert_non_null(tr);
    char noise[300], out_top2[300], out_full[300];
    snprintf(noise, sizeof noise, "%s/noise.f32", g_dir);
    snprintf(out_top2, sizeof out_top2, "%s/top2.f32", g_dir);
    snprintf(out_full, sizeof out_full, "%s/full.f32", g_dir);
    FILE *f = fopen(noise, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(tr->x, sizeof(float), (size_t)D, f), (size_t)D);
    fclose(f);
    traj_free(tr);

    /* one peer process, two sample commands and a bad one, 1 thread */
    int st;
    char *reply = proc_sh(&st,
                          "printf 'sample top-2 %d %s %s\\nsample full %d %s %s\\n"
                          "sample top-2 %d %s/missing.f32 %s/x.f32\\n' | "
                          "%s %s --models %s --serve --threads 1 2>&1",
                          STEPS, noise, out_top2, STEPS, noise, out_full, STEPS, g_dir, g_dir,
                          PYTHON, PEER, MODELS);
    assert_non_null(reply);
    if (st != 0 || strncmp(reply, "ready\nok ", 9))
        fprintf(stderr, "peer said (status %d):\n%s\n", st, reply);
    assert_int_equal(st, 0);
    assert_non_null(strstr(reply, "ready\nok "));
    /* the bad command gets an error naming the file, and the session goes on */
    assert_non_null(strstr(reply, "\nerror noise file "));
    assert_non_null(strstr(reply, "missing.f32: cannot read"));
    free(reply);

    const char *strategies[] = { "top-2", "full" };
    const char *outs[] = { out_top2, out_full };
    float *ref = malloc((size_t)D * sizeof *ref), *pt = malloc((size_t)D * sizeof *pt);
    assert_non_null(ref);
    assert_non_null(pt);
    for (int s = 0; s < 2; s++) {
        inprocess(strategies[s], ref);
        f = fopen(outs[s], "rb");
        assert_non_null(f);
        assert_int_equal(fread(pt, sizeof(float), (size_t)D, f), (size_t)D);
        fclose(f);
        double scale, d = max_diff(pt, ref, D, &scale);
        fprintf(stderr, "# %s, %d steps: largest |PyTorch - in-process| %.2g (largest |value| "
                        "%.2f)\n", strategies[s], STEPS, d, scale);
        assert_true(scale > 0.5); /* an image, not zeros */
        assert_true(d <= 1e-5);
    }
    /* the two strategies give different images: the comparison can tell */
    inprocess("full", ref);
    double scale;
    f = fopen(out_top2, "rb");
    assert_non_null(f);
    assert_int_equal(fread(pt, sizeof(float), (size_t)D, f), (size_t)D);
    fclose(f);
    assert_true(max_diff(pt, ref, D, &scale) > 1e-3);
    free(ref);
    free(pt);
}

static void test_peer_bad_input(void **state)
{
    (void)state;
    if (!g_have_torch)
        skip();
    static const struct {
        const char *args, *want;
        int status;
    } cases[] = {
        { "--models " MODELS " --steps 0 --serve", "--steps \"0\": expected an integer 1..1000", 2 },
        { "--models " MODELS " --bogus", "unknown option \"--bogus\"", 2 },
        { "--models " MODELS, "give --noise FILE and --out FILE, or --serve", 2 },
        { "--models " MODELS " --serve --omp-wait spin", "--omp-wait \"spin\": use passive or "
          "default", 2 },
        { "--serve", "--models DIR is required", 2 },
        { "--models /nonexistent --serve", "/nonexistent/router.safetensors not found", 1 },
        { "--help", "--noise FILE --out FILE", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st;
        char *out = proc_sh(&st, "%s %s %s </dev/null 2>&1", PYTHON, PEER, cases[i].args);
        assert_non_null(out);
        if (st != cases[i].status || !strstr(out, cases[i].want))
            fprintf(stderr, "torch_peer.py %s -> status %d:\n%s\n", cases[i].args, st, out);
        assert_int_equal(st, cases[i].status);
        assert_non_null(strstr(out, cases[i].want));
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peer_matches_inprocess),
        cmocka_unit_test(test_peer_bad_input),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
