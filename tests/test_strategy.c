/* test_strategy.c -- parsing and expert selection of every routing strategy. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/rng.h"
#include "router/strategy.h"

#define K 8
/* probabilities 0.4 0.25 0.15 0.1 0.05 0.03 0.015 0.005 as logits, shuffled */
static const float P[K] = { 0.05f, 0.4f, 0.015f, 0.25f, 0.1f, 0.005f, 0.15f, 0.03f };
static float L[K];

static int setup(void **state)
{
    (void)state;
    for (int i = 0; i < K; i++)
        L[i] = logf(P[i]) + 3.0f; /* an offset must not matter */
    return 0;
}

static strategy parse_ok(const char *name, float thr, float temp)
{
    strategy s;
    char err[256];
    int rc = strategy_parse(name, K, thr, temp, &s, err, sizeof err);
    if (rc)
        fail_msg("%s: %s", name, err);
    return s;
}

static void expect_sel(const char *name, float thr, const int *idx, const float *w, int m)
{
    strategy s = parse_ok(name, thr, NAN);
    int got[K];
    float gw[K];
    int n = strategy_select(&s, L, K, 0.5, NULL, got, gw);
    assert_int_equal(n, m);
    float sum = 0;
    for (int i = 0; i < n; i++) {
        assert_int_equal(got[i], idx[i]);
        assert_float_equal(gw[i], w[i], 1e-5);
        sum += gw[i];
    }
    assert_float_equal(sum, 1.0f, 1e-5);
}

static void test_topk(void **state)
{
    (void)state;
    expect_sel("top-1", NAN, (int[]){ 1 }, (float[]){ 1.0f }, 1);
    expect_sel("top-2", NAN, (int[]){ 1, 3 }, (float[]){ 0.4f / 0.65f, 0.25f / 0.65f }, 2);
    expect_sel("top-3", NAN, (int[]){ 1, 3, 6 }, (float[]){ 0.5f, 0.3125f, 0.1875f }, 3);
}

static void test_full_uniform_expert(void **state)
{
    (void)state;
    int all[K] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    expect_sel("full", NAN, all, P, K);
    float u[K];
    for (int i = 0; i < K; i++)
        u[i] = 1.0f / K;
    expect_sel("uniform", NAN, all, u, K);
    expect_sel("expert:6", NAN, (int[]){ 6 }, (float[]){ 1.0f }, 1);
    /* uniform and expert:N never read the router */
    strategy s = parse_ok("expert:2", NAN, NAN);
    int idx[K];
    float w[K];
    assert_int_equal(strategy_select(&s, NULL, K, 0.5, NULL, idx, w), 1);
    assert_int_equal(idx[0], 2);
    assert_false(strategy_uses_router(&s));
    s = parse_ok("uniform", NAN, NAN);
    assert_false(strategy_uses_router(&s));
    s = parse_ok("top-2", NAN, NAN);
    assert_true(strategy_uses_router(&s));
}

static void test_threshold_nucleus(void **state)
{
    (void)state;
    /* tau 0.1: 0.4 0.25 0.15 0.1 -> experts 1 3 4 6 */
    expect_sel("threshold", 0.1f, (int[]){ 1, 3, 4, 6 },
               (float[]){ 0.4f / 0.9f, 0.25f / 0.9f, 0.1f / 0.9f, 0.15f / 0.9f }, 4);
    /* tau above every p: falls back to the argmax */
    expect_sel("threshold", 0.9f, (int[]){ 1 }, (float[]){ 1.0f }, 1);
    /* nucleus 0.8: 0.4+0.25+0.15 = 0.8 */
    expect_sel("nucleus", 0.8f, (int[]){ 1, 3, 6 }, (float[]){ 0.5f, 0.3125f, 0.1875f }, 3);
    /* default nucleus 0.9: + 0.1 */
    expect_sel("nucleus", NAN, (int[]){ 1, 3, 4, 6 },
               (float[]){ 0.4f / 0.9f, 0.25f / 0.9f, 0.1f / 0.9f, 0.15f / 0.9f }, 4);
}

static void test_sample_follows_probabilities(void **state)
{
    (void)state;
    strategy s = parse_ok("sample", NAN, NAN);
    int count[K] = { 0 };
    enum { N = 20000 };
    for (int i = 0; i < N; i++) {
        int idx[K];
        float w[K];
        double u = (i + 0.5) / N; /* a stratified sweep of (0, 1) */
        assert_int_equal(strategy_select(&s, L, K, u, NULL, idx, w), 1);
        assert_float_equal(w[0], 1.0f, 0);
        count[idx[0]]++;
    }
    for (int i = 0; i < K; i++)
        assert_float_equal((double)count[i] / N, P[i], 2e-3);
    /* low temperature concentrates on the argmax */
    s = parse_ok("sample", NAN, 0.05f);
    int idx[K];
    float w[K];
    strategy_select(&s, L, K, 0.9, NULL, idx, w);
    assert_int_equal(idx[0], 1);
}

/* The router's temperature: full at T is softmax(logits / T) = p^(1/T)
 * renormalised -- the uniform committee as T grows, top-1 as it shrinks; top-k
 * keeps its set and renormalises the tempered weights. */
static void test_temperature_of_full_and_topk(void **state)
{
    (void)state;
    int idx[K];
    float w[K];
    strategy s = parse_ok("full", NAN, 0.5f);
    double z = 0;
    for (int i = 0; i < K; i++)
        z += (double)P[i] * P[i];
    assert_int_equal(strategy_select(&s, L, K, 0.5, NULL, idx, w), K);
    for (int i = 0; i < K; i++)
        assert_float_equal(w[i], P[i] * P[i] / z, 1e-5);
    s = parse_ok("full", NAN, 100.0f);
    strategy_select(&s, L, K, 0.5, NULL, idx, w);
    for (int i = 0; i < K; i++)
        assert_float_equal(w[i], 1.0f / K, 0.01);
    s = parse_ok("full", NAN, 0.01f);
    strategy_select(&s, L, K, 0.5, NULL, idx, w);
    assert_true(w[1] > 0.999f);
    s = parse_ok("top-2", NAN, 2.0f);
    assert_int_equal(strategy_select(&s, L, K, 0.5, NULL, idx, w), 2);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    double a = sqrt(0.4), b = sqrt(0.25);
    assert_float_equal(w[0], a / (a + b), 1e-5);
    /* threshold and nucleus read the tempered probabilities too */
    s = parse_ok("threshold", 0.2f, 0.5f); /* p^2 / z: only 0.4 and 0.25 stay above 0.2 */
    assert_int_equal(strategy_select(&s, L, K, 0.5, NULL, idx, w), 2);
}

/* top-k:drawn with Gumbel noise: the set is a draw without replacement from
 * the probabilities (top-1:drawn: a draw from p), the weights p e^g
 * renormalised. Plain top-k ignores the noise: the k most probable, always
 * (DESIGN.md's contract). */
static void test_topk_drawn_with_gumbel_noise_draws_sets(void **state)
{
    (void)state;
    strategy s1 = parse_ok("top-1:drawn", NAN, NAN), s2 = parse_ok("top-2:drawn", NAN, NAN);
    int count[K] = { 0 }, in2[K] = { 0 };
    enum { N = 40000 };
    for (int i = 0; i < N; i++) {
        float g[K];
        for (int k = 0; k < K; k++) {
            double u = (rng_uniform(5, (uint64_t)k, (uint64_t)i));
            g[k] = (float)-log(-log(u));
        }
        int idx[K];
        float w[K];
        assert_int_equal(strategy_select(&s1, L, K, 0.5, g, idx, w), 1);
        count[idx[0]]++;
        assert_int_equal(strategy_select(&s2, L, K, 0.5, g, idx, w), 2);
        in2[idx[0]]++;
        in2[idx[1]]++;
        /* weights p e^g renormalised over the pair */
        double a = P[idx[0]] * exp(g[idx[0]]), b = P[idx[1]] * exp(g[idx[1]]);
        assert_float_equal(w[0], a / (a + b), 1e-4);
    }
    for (int k = 0; k < K; k++)
        assert_float_equal((double)count[k] / N, P[k], 0.01);
    /* the second expert of a pair is drawn from what is left: the most probable expert
     * is in more pairs than its probability alone, the least in fewer than twice it */
    assert_true((double)in2[1] / N > 0.4 + 0.1);
    assert_true((double)in2[5] / N < 2 * 0.005 + 0.005);
    /* without noise, top-2:drawn is the two most probable */
    int idx[K];
    float w[K], g[K];
    assert_int_equal(strategy_select(&s2, L, K, 0.5, NULL, idx, w), 2);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    /* plain top-2 (and its alias top-2:greedy) ignores noise that would pick expert 7 */
    for (int k = 0; k < K; k++)
        g[k] = k == 7 ? 50.0f : 0.0f;
    const char *plain[] = { "top-2", "top-2:greedy" };
    char name[32];
    for (int v = 0; v < 2; v++) {
        strategy gr = parse_ok(plain[v], NAN, NAN);
        assert_int_equal(strategy_select(&gr, L, K, 0.5, g, idx, w), 2);
        assert_int_equal(idx[0], 1);
        assert_int_equal(idx[1], 3);
        assert_float_equal(w[0], 0.4f / 0.65f, 1e-5);
        strategy_name(&gr, name, sizeof name);
        assert_string_equal(name, "top-2");
    }
    assert_int_equal(strategy_select(&s2, L, K, 0.5, g, idx, w), 2);
    assert_true(idx[0] == 7 || idx[1] == 7);
    strategy_name(&s2, name, sizeof name);
    assert_string_equal(name, "top-2:drawn");
}

static void test_ties_go_to_lower_index(void **state)
{
    (void)state;
    float flat[K] = { 0 };
    strategy s = parse_ok("top-2", NAN, NAN);
    int idx[K];
    float w[K];
    assert_int_equal(strategy_select(&s, flat, K, 0.5, NULL, idx, w), 2);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
}

/* Load-aware substitution: the next-best usable expert in the router's
 * ranking stands in, weights renormalised as the strategy would; full drops
 * what it cannot replace; nothing usable left changes nothing. */
static void test_substitute(void **state)
{
    (void)state;
    /* ranking by P: 1 (0.4), 3 (0.25), 6 (0.15), 4 (0.1), 0, 7, 2, 5 */
    unsigned char usable[K];
    memset(usable, 1, sizeof usable);
    int idx[K], orig[K], sub[K], n;
    float w[K];
    strategy s = parse_ok("top-2", NAN, NAN);
    n = strategy_select(&s, L, K, 0.5, NULL, idx, w);
    assert_int_equal(strategy_substitute(&s, L, NULL, K, usable, idx, w, &n, orig, sub), 0);
    assert_int_equal(n, 2);
    usable[1] = 0; /* the best one: 6 is next after 3 */
    assert_int_equal(strategy_substitute(&s, L, NULL, K, usable, idx, w, &n, orig, sub), 1);
    assert_int_equal(orig[0], 1);
    assert_int_equal(sub[0], 6);
    assert_int_equal(n, 2);
    assert_int_equal(idx[0], 3);
    assert_int_equal(idx[1], 6);
    assert_float_equal(w[0], 0.25f / 0.4f, 1e-5);
    assert_float_equal(w[1], 0.15f / 0.4f, 1e-5);
    /* at the request's temperature: the weights renormalise softmax(logits / T), as
     * strategy_select's do (T = 0.5 squares the probabilities) */
    strategy sharp = parse_ok("top-2", NAN, 0.5f);
    n = strategy_select(&sharp, L, K, 0.5, NULL, idx, w);
    assert_int_equal(strategy_substitute(&sharp, L, NULL, K, usable, idx, w, &n, orig, sub), 1);
    assert_int_equal(idx[0], 3);
    assert_int_equal(idx[1], 6);
    assert_float_equal(w[0], 0.0625f / (0.0625f + 0.0225f), 1e-5);
    assert_float_equal(w[1], 0.0225f / (0.0625f + 0.0225f), 1e-5);
    /* top-k:drawn: ranked and weighted as it selects, p e^noise with the image's
     * noise; noise 2 on expert 6 draws {1, 6} and 3 stands in for 1 */
    float noise[K] = { 0 };
    noise[6] = 2.0f;
    strategy drawn = parse_ok("top-2:drawn", NAN, NAN);
    n = strategy_select(&drawn, L, K, 0.5, noise, idx, w);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 6);
    assert_int_equal(strategy_substitute(&drawn, L, noise, K, usable, idx, w, &n, orig, sub), 1);
    assert_int_equal(sub[0], 3);
    assert_int_equal(idx[0], 3);
    assert_int_equal(idx[1], 6);
    float e6 = 0.15f * expf(2.0f);
    assert_float_equal(w[0], 0.25f / (0.25f + e6), 1e-5);
    assert_float_equal(w[1], e6 / (0.25f + e6), 1e-5);
    /* both gone, and 6 too: 4 and 0 */
    n = strategy_select(&s, L, K, 0.5, NULL, idx, w);
    usable[3] = usable[6] = 0;
    assert_int_equal(strategy_substitute(&s, L, NULL, K, usable, idx, w, &n, orig, sub), 2);
    assert_int_equal(orig[0], 1);
    assert_int_equal(sub[0], 4);
    assert_int_equal(orig[1], 3);
    assert_int_equal(sub[1], 0);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 4);
    assert_float_equal(w[0] + w[1], 1.0f, 1e-6);
    assert_float_equal(w[1], 0.1f / 0.15f, 1e-5);
    /* expert:1 and sample: one expert, weight 1 */
    s = parse_ok("expert:1", NAN, NAN);
    n = strategy_select(&s, NULL, K, 0.5, NULL, idx, w);
    assert_int_equal(strategy_substitute(&s, L, NULL, K, usable, idx, w, &n, orig, sub), 1);
    assert_int_equal(n, 1);
    assert_int_equal(idx[0], 4);
    assert_float_equal(w[0], 1.0f, 0);
    /* full: nothing outside the set, the unusable ones are dropped */
    s = parse_ok("full", NAN, NAN);
    n = strategy_select(&s, L, K, 0.5, NULL, idx, w);
    assert_int_equal(strategy_substitute(&s, L, NULL, K, usable, idx, w, &n, orig, sub), 3);
    assert_int_equal(n, K - 3);
    for (int j = 0; j < 3; j++)
        assert_int_equal(sub[j], -1);
    float sum = 0;
    for (int j = 0; j < n; j++) {
        assert_true(usable[idx[j]]);
        sum += w[j];
    }
    assert_float_equal(sum, 1.0f, 1e-5);
    assert_float_equal(w[0], 0.05f / 0.2f, 1e-5); /* expert 0 of 0, 2, 4, 5, 7 */
    /* uniform without logits: equal weights over the usable ones */
    s = parse_ok("uniform", NAN, NAN);
    n = strategy_select(&s, NULL, K, 0.5, NULL, idx, w);
    assert_int_equal(strategy_substitute(&s, NULL, NULL, K, usable, idx, w, &n, orig, sub), 3);
    assert_int_equal(n, K - 3);
    assert_float_equal(w[0], 1.0f / (K - 3), 1e-6);
    /* nothing usable: left as it was */
    memset(usable, 0, sizeof usable);
    s = parse_ok("top-2", NAN, NAN);
    n = strategy_select(&s, L, K, 0.5, NULL, idx, w);
    assert_int_equal(strategy_substitute(&s, L, NULL, K, usable, idx, w, &n, orig, sub), 0);
    assert_int_equal(n, 2);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
}

static void test_parse_errors(void **state)
{
    (void)state;
    struct { const char *name; float thr, temp; const char *msg; } bad[] = {
        { "top-0", NAN, NAN, "unknown" },        { "top-9", NAN, NAN, "1..8" },
        { "top-", NAN, NAN, "unknown" },         { "top-2x", NAN, NAN, "1..8" },
        { "expert:8", NAN, NAN, "0..7" },        { "expert:-1", NAN, NAN, "unknown" },
        { "best", NAN, NAN, "unknown" },         { "", NAN, NAN, "unknown" },
        { "threshold", 0.0f, NAN, "(0, 1]" },    { "threshold", 1.5f, NAN, "(0, 1]" },
        { "nucleus", -1.0f, NAN, "(0, 1]" },     { "sample", NAN, 0.0f, "0.01..100" },
        { "sample", NAN, 1e9f, "0.01..100" },    { "top-2:greed", NAN, NAN, ":drawn" },
        { "top-9:drawn", NAN, NAN, "1..8" },     { "top-2:drawnx", NAN, NAN, ":drawn" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strategy s;
        char err[256] = "";
        assert_int_equal(strategy_parse(bad[i].name, K, bad[i].thr, bad[i].temp, &s, err,
                                        sizeof err), DDM_EINVAL);
        if (!strstr(err, bad[i].msg))
            fail_msg("\"%s\": message \"%s\" lacks \"%s\"", bad[i].name, err, bad[i].msg);
    }
    char name[32];
    strategy s = parse_ok("expert:5", NAN, NAN);
    strategy_name(&s, name, sizeof name);
    assert_string_equal(name, "expert:5");
    s = parse_ok("top-3", NAN, NAN);
    strategy_name(&s, name, sizeof name);
    assert_string_equal(name, "top-3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_full_uniform_expert),
        cmocka_unit_test(test_threshold_nucleus),
        cmocka_unit_test(test_sample_follows_probabilities),
        cmocka_unit_test(test_temperature_of_full_and_topk),
        cmocka_unit_test(test_topk_drawn_with_gumbel_noise_draws_sets),
        cmocka_unit_test(test_ties_go_to_lower_index),
        cmocka_unit_test(test_substitute),
        cmocka_unit_test(test_parse_errors),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
