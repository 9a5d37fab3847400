/* test_sampler.c -- trajectories, ticks (routing, grouping, CFG, ODE steps)
 * and in-process sampling with a small random expert set on disk. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/st.h"
#include "router/local.h"
#include "router/sampler.h"
#include "tests/support/toyset.h"

#define D 6

static sample_params params(const char *strat, int K, int steps, sampler_kind s)
{
    sample_params p;
    sample_params_default(&p, K);
    char err[256];
    if (strategy_parse(strat, K, NAN, NAN, &p.strat, err, sizeof err))
        fail_msg("%s", err);
    p.steps = steps;
    p.sampler = s;
    p.seed = 99;
    return p;
}

/* Velocity of toy expert k: v = a_k x + b_k (elementwise, same for all dims). */
static const float A[3] = { -1.0f, -0.5f, 0.25f };
static const float B[3] = { 0.3f, -0.2f, 0.1f };

static void fill_linear(tick *tk, int K)
{
    for (int k = 0; k < K; k++) {
        const float *x;
        int rows = tick_rows(tk, k, &x, NULL, NULL);
        float *o = tick_out(tk, k);
        for (int r = 0; r < rows * D; r++)
            o[r] = A[k] * x[r] + B[k];
    }
}

static void test_initial_noise_is_keyed_by_seed_and_image(void **state)
{
    (void)state;
    sample_params p = params("expert:0", 3, 10, SAMPLER_EULER);
    traj *t0 = traj_new(&p, 0, D), *t1 = traj_new(&p, 1, D);
    float z[D];
    rng_normal_fill(99, 1, 0, z, D);
    for (int d = 0; d < D; d++)
        assert_true(t1->x[d] == z[d]);
    assert_true(t0->x[0] != t1->x[0]);
    assert_float_equal(traj_time(t0), 1.0f, 0);
    traj_free(t0);
    traj_free(t1);
}

static void test_euler_matches_recurrence(void **state)
{
    (void)state;
    char err[256];
    tick *tk = tick_new(3, D, 4, NULL, err, sizeof err);
    assert_non_null(tk);
    sample_params p = params("expert:1", 3, 7, SAMPLER_EULER);
    traj *tr = traj_new(&p, 0, D);
    float ref[D];
    memcpy(ref, tr->x, sizeof ref);
    for (int s = 0; s < 7; s++) {
        assert_int_equal(tick_plan(tk, &tr, 1), 0);
        assert_int_equal(tick_rows(tk, 0, NULL, NULL, NULL), 0);
        assert_int_equal(tick_rows(tk, 1, NULL, NULL, NULL), 1);
        const float *t;
        tick_rows(tk, 1, NULL, &t, NULL);
        assert_float_equal(t[0], 1.0f - s / 7.0f, 1e-6);
        fill_linear(tk, 3);
        tick_finish(tk);
        for (int d = 0; d < D; d++)
            ref[d] += (-1.0f / 7.0f) * (A[1] * ref[d] + B[1]);
    }
    assert_true(tr->done);
    assert_int_equal(tr->evals, 7);
    for (int d = 0; d < D; d++)
        assert_float_equal(tr->x[d], ref[d], 1e-5);
    assert_int_equal(tick_plan(tk, &tr, 1), DDM_EINVAL); /* done trajectories are refused */
    traj_free(tr);
    tick_free(tk);
}

static void test_heun_second_order(void **state)
{
    (void)state;
    char err[256];
    tick *tk = tick_new(3, D, 4, NULL, err, sizeof err);
    sample_params p = params("expert:0", 3, 5, SAMPLER_HEUN);
    traj *tr = traj_new(&p, 0, D);
    float ref[D];
    memcpy(ref, tr->x, sizeof ref);
    int evals = 0;
    while (!tr->done) {
        assert_int_equal(tick_plan(tk, &tr, 1), 0);
        fill_linear(tk, 3);
        tick_finish(tk);
        evals++;
    }
    assert_int_equal(evals, 10);
    /* Heun on dx/dt = a x + b with step h: x' = x + h/2 (f(x) + f(x + h f(x))) */
    float h = -0.2f;
    for (int s = 0; s < 5; s++)
        for (int d = 0; d < D; d++) {
            float f1 = A[0] * ref[d] + B[0];
            float f2 = A[0] * (ref[d] + h * f1) + B[0];
            ref[d] += 0.5f * h * (f1 + f2);
        }
    for (int d = 0; d < D; d++)
        assert_float_equal(tr->x[d], ref[d], 1e-5);
    traj_free(tr);
    tick_free(tk);
}

static void test_uniform_and_guidance_rows(void **state)
{
    (void)state;
    char err[256];
    tick *tk = tick_new(3, D, 4, NULL, err, sizeof err);
    sample_params p = params("uniform", 3, 4, SAMPLER_EULER);
    p.label = 2;
    p.guidance = 3.0f;
    traj *tr[2] = { traj_new(&p, 0, D), traj_new(&p, 1, D) };
    float x0[D];
    memcpy(x0, tr[1]->x, sizeof x0);
    assert_int_equal(tick_plan(tk, tr, 2), 0);
    for (int k = 0; k < 3; k++) {
        const int *lab;
        /* two trajectories x (label row + null row) */
        assert_int_equal(tick_rows(tk, k, NULL, NULL, &lab), 4);
        assert_int_equal(lab[0], 2);
        assert_int_equal(lab[1], -1);
        float *o = tick_out(tk, k);
        for (int r = 0; r < 4; r++)
            for (int d = 0; d < D; d++) /* cond rows: k + 1, null rows: 10 k */
                o[r * D + d] = (r % 2 == 0) ? (float)(k + 1) : 10.0f * k;
    }
    tick_finish(tk);
    /* v = sum_k 1/3 (null + g (cond - null)) */
    float v = 0;
    for (int k = 0; k < 3; k++)
        v += (10.0f * k + 3.0f * ((k + 1) - 10.0f * k)) / 3.0f;
    for (int d = 0; d < D; d++)
        assert_float_equal(tr[1]->x[d], x0[d] - 0.25f * v, 1e-5);
    assert_int_equal(tr[0]->rows, 6);
    assert_int_equal(tr[0]->rows_by_expert[2], 2);
    /* without guidance (g = 1) a labelled request sends one row per expert */
    sample_params q = params("uniform", 3, 4, SAMPLER_EULER);
    q.label = 1;
    traj *t1 = traj_new(&q, 0, D);
    assert_int_equal(tick_plan(tk, &t1, 1), 0);
    const int *lab;
    assert_int_equal(tick_rows(tk, 0, NULL, NULL, &lab), 1);
    assert_int_equal(lab[0], 1);
    fill_linear(tk, 3);
    tick_finish(tk);
    traj_free(t1);
    traj_free(tr[0]);
    traj_free(tr[1]);
    tick_free(tk);
}

/* ---- with real networks ------------------------------------------------------------- */

static char dir[64];

static int setup_set(void **state)
{
    (void)state;
    if (toyset_tempdir(dir, sizeof dir, "test-sampler"))
        return -1;
    return toyset_write(dir, 3, 16, 3, 0);
}

static int teardown_set(void **state)
{
    (void)state;
    toyset_rmdir(dir);
    return 0;
}

static void test_plan_routes_by_router_network(void **state)
{
    (void)state;
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    assert_int_equal(e->K, 3);
    /* top-1:drawn draws its expert: the argmax of the logits plus the
     * trajectory's Gumbel noise (the same noise at every evaluation) */
    {
        sample_params pd = params("top-1:drawn", 3, 10, SAMPLER_EULER);
        enum { ND = 40 };
        traj *td[ND];
        for (int i = 0; i < ND; i++)
            td[i] = traj_new(&pd, i, 16);
        assert_int_equal(tick_plan(e->tk, td, ND), 0);
        float lg[ND * 3], xd[ND * 16], tdd[ND], g[3];
        for (int i = 0; i < ND; i++) {
            memcpy(xd + i * 16, td[i]->xe, 16 * sizeof(float));
            tdd[i] = 1.0f;
        }
        net_scratch *sd = net_scratch_new(&e->router->cfg, ND, 0);
        assert_int_equal(net_forward(&e->router->cfg, &e->router->w, sd, ND, xd, tdd, NULL, lg),
                         0);
        net_scratch_free(sd);
        int differ = 0;
        for (int i = 0; i < ND; i++) {
            sample_route_noise(&pd, i, 3, g);
            int best = 0, greedy = 0;
            for (int k = 1; k < 3; k++) {
                if (lg[i * 3 + k] + g[k] > lg[i * 3 + best] + g[best])
                    best = k;
                if (lg[i * 3 + k] > lg[i * 3 + greedy])
                    greedy = k;
            }
            assert_int_equal(td[i]->sel[0], best);
            differ += best != greedy;
            traj_free(td[i]);
        }
        assert_true(differ > 0); /* the draw is not the argmax everywhere */
    }
    sample_params p = params("top-1", 3, 10, SAMPLER_EULER); /* plain top-1: the argmax */
    enum { N = 40 };
    traj *tr[N];
    for (int i = 0; i < N; i++)
        tr[i] = traj_new(&p, i, 16);
    assert_int_equal(tick_plan(e->tk, tr, N), 0);
    /* recompute the router's choice independently */
    float logits[N * 3], x[N * 16], t[N];
    for (int i = 0; i < N; i++) {
        memcpy(x + i * 16, tr[i]->xe, 16 * sizeof(float));
        t[i] = 1.0f;
    }
    net_scratch *s = net_scratch_new(&e->router->cfg, N, 0);
    assert_int_equal(net_forward(&e->router->cfg, &e->router->w, s, N, x, t, NULL, logits), 0);
    net_scratch_free(s);
    int count[3] = { 0 };
    for (int i = 0; i < N; i++) {
        int best = 0;
        for (int k = 1; k < 3; k++)
            if (logits[i * 3 + k] > logits[i * 3 + best])
                best = k;
        assert_int_equal(tr[i]->n_sel, 1);
        assert_int_equal(tr[i]->sel[0], best);
        count[best]++;
    }
    for (int k = 0; k < 3; k++)
        assert_int_equal(tick_rows(e->tk, k, NULL, NULL, NULL), count[k]);
    /* the call order: every expert once, most rows first, ties by index */
    int order[3], seen[3] = { 0 };
    tick_experts_by_rows(e->tk, order);
    for (int i = 0; i < 3; i++) {
        assert_in_range(order[i], 0, 2);
        seen[order[i]]++;
        if (i > 0) {
            assert_true(count[order[i - 1]] >= count[order[i]]);
            if (count[order[i - 1]] == count[order[i]])
                assert_true(order[i - 1] < order[i]);
        }
    }
    assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    assert_int_equal(ensemble_eval_tick(e, e->tk), 0);
    tick_finish(e->tk);
    for (int i = 0; i < N; i++)
        traj_free(tr[i]);
    ensemble_close(e);
}

static void test_sampling_is_deterministic_per_seed(void **state)
{
    (void)state;
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    assert_non_null(e);
    sample_params p = params("top-2", 3, 12, SAMPLER_HEUN);
    p.n = 5;
    p.trace = 1;
    float a[5 * 16], b[5 * 16], c[2 * 16];
    sample_stats st;
    traj *trs[5];
    assert_int_equal(ensemble_sample(e, &p, a, &st, trs), 0);
    assert_int_equal(st.rows, 5 * 24 * 2); /* 2 experts x 24 evaluations x 5 images */
    uint64_t by = 0;
    for (int k = 0; k < 3; k++)
        by += st.rows_by_expert[k];
    assert_int_equal(by, st.rows);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(trs[i]->trace[0].n_sel, 2);
        float wsum = trs[i]->trace[5].w[0] + trs[i]->trace[5].w[1];
        assert_float_equal(wsum, 1.0f, 1e-5);
        traj_free(trs[i]);
    }
    assert_int_equal(ensemble_sample(e, &p, b, NULL, NULL), 0);
    assert_memory_equal(a, b, sizeof a);
    /* an image does not depend on the other images of its request (up to
     * BLAS rounding: OpenBLAS may round a row differently for another batch
     * height, by an ulp or so) */
    p.n = 2;
    assert_int_equal(ensemble_sample(e, &p, c, NULL, NULL), 0);
    for (int i = 0; i < 2 * 16; i++)
        assert_float_equal(a[i], c[i], 1e-4);
    p.seed = 100;
    assert_int_equal(ensemble_sample(e, &p, c, NULL, NULL), 0);
    assert_true(memcmp(a, c, sizeof c) != 0);
    for (int i = 0; i < 5 * 16; i++)
        assert_true(isfinite(a[i]));
    ensemble_close(e);
}

/* Experts shared out over threads and the router network split by rows give
 * the images of one thread (up to BLAS rounding for other batch heights). */
static void test_threads_give_same_images(void **state)
{
    (void)state;
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    assert_non_null(e);
    assert_int_equal(ensemble_set_threads(e, 0), DDM_EINVAL);
    assert_int_equal(ensemble_set_threads(e, ENSEMBLE_MAX_THREADS + 1), DDM_EINVAL);
    sample_params p = params("top-2", 3, 6, SAMPLER_EULER);
    p.n = 40; /* enough rows for the router network to be split */
    static float one[40 * 16], many[40 * 16];
    sample_stats s1, s3;
    assert_int_equal(ensemble_sample(e, &p, one, &s1, NULL), 0);
    assert_int_equal(ensemble_set_threads(e, 3), 0);
    assert_int_equal(ensemble_sample(e, &p, many, &s3, NULL), 0);
    for (int i = 0; i < 40 * 16; i++)
        assert_float_equal(one[i], many[i], 1e-4);
    for (int k = 0; k < 3; k++)
        assert_int_equal(s1.rows_by_expert[k], s3.rows_by_expert[k]);
    ensemble_close(e);
}

/* A row-independent stand-in for expert k: v = a_k x + b_k t + 0.01 label. */
static void fake_expert(int k, int rows, const float *x, const float *t, const int *lab,
                        float *out, int dim)
{
    for (int r = 0; r < rows; r++)
        for (int d = 0; d < dim; d++)
            out[r * dim + d] = (0.3f - 0.4f * (float)k) * x[r * dim + d] +
                               (0.2f * (float)k - 0.1f) * t[r] + 0.01f * (float)lab[r];
}

static void fake_plan_rows(tick *tk, int K, int dim)
{
    for (int k = 0; k < K; k++) {
        const float *x, *t;
        const int *lab;
        int rows = tick_rows(tk, k, &x, &t, &lab);
        fake_expert(k, rows, x, t, lab, tick_out(tk, k), dim);
    }
}

/* Speculative dispatch changes nothing: trajectories advanced with
 * tick_speculate (the speculation answered, or for one expert withdrawn)
 * stay bit for bit those advanced without, for strategies whose routing
 * changes little (top-2) and a lot (sample), with guidance and heun; the
 * counts add up: every row of a speculated evaluation is a hit or a miss,
 * every speculative row a hit or wasted. */
static void test_speculation_is_exact(void **state)
{
    (void)state;
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    assert_non_null(e);
    enum { N = 24, DIM = 16, KK = 3 };
    static const char *strats[] = { "top-2", "sample", "top-1", "full" };
    for (size_t si = 0; si < sizeof strats / sizeof strats[0]; si++) {
        sample_params p = params(strats[si], KK, 12, si % 2 ? SAMPLER_HEUN : SAMPLER_EULER);
        p.n = N;
        p.label = 1;
        p.guidance = si == 0 ? 2.0f : 1.0f;
        tick *plain = tick_new(KK, DIM, N, e->router, err, sizeof err);
        tick *spec = tick_new(KK, DIM, N, e->router, err, sizeof err);
        assert_non_null(plain);
        assert_non_null(spec);
        traj *a[N], *b[N];
        for (int i = 0; i < N; i++) {
            a[i] = traj_new(&p, i, DIM);
            b[i] = traj_new(&p, i, DIM);
        }
        long hit = 0, miss = 0, wasted = 0, made = 0, evals_hit = 0, evals_miss = 0;
        int evals = sample_evals(&p);
        for (int ev = 0; ev < evals; ev++) {
            assert_int_equal(tick_plan(plain, a, N), 0);
            fake_plan_rows(plain, KK, DIM);
            tick_finish(plain);

            int rows = tick_speculate(spec, b, N);
            if (ev == 0)
                assert_int_equal(rows, 0); /* nothing to go on before the first plan */
            else
                assert_true(rows > 0);
            for (int k = 0; k < KK; k++) {
                const float *x, *t;
                const int *lab;
                int r = tick_spec_rows(spec, k, &x, &t, &lab);
                if (r && ev % 5 == 3 && k == 0) { /* could not be sent */
                    tick_spec_withdraw(spec, k);
                    continue;
                }
                made += r;
                fake_expert(k, r, x, t, lab, tick_spec_out(spec, k), DIM);
            }
            assert_int_equal(tick_plan(spec, b, N), 0);
            fake_plan_rows(spec, KK, DIM);
            tick_spec_stats st;
            tick_spec_get_stats(spec, &st);
            int used = 0;
            for (int k = 0; k < KK; k++)
                used += tick_spec_used(spec, k);
            assert_int_equal(used, st.rows_hit);
            hit += st.rows_hit, miss += st.rows_miss, wasted += st.rows_wasted;
            evals_hit += st.evals_hit, evals_miss += st.evals_miss;
            assert_int_equal(st.evals_hit + st.evals_miss, ev == 0 ? 0 : N);
            tick_finish(spec);
            for (int i = 0; i < N; i++) {
                assert_memory_equal(a[i]->x, b[i]->x, DIM * sizeof(float));
                assert_int_equal(a[i]->n_sel, b[i]->n_sel);
                assert_memory_equal(a[i]->sel, b[i]->sel, (size_t)a[i]->n_sel * sizeof(int));
            }
        }
        assert_int_equal(hit + wasted, made);
        assert_true(hit > 0);
        if (!strcmp(strats[si], "sample")) /* one expert drawn per evaluation: often another */
            assert_true(miss > 0 && wasted > 0 && evals_miss > 0);
        if (!strcmp(strats[si], "full")) /* the set never changes: only the withdrawals miss */
            assert_true(evals_hit > 0);
        for (int i = 0; i < N; i++) {
            traj_free(a[i]);
            traj_free(b[i]);
        }
        tick_free(plain);
        tick_free(spec);
    }
    ensemble_close(e);
}

/* Substitution in the plan: with an expert unusable, requests that
 * substitute never select it (the next-best one in its place, recorded per
 * evaluation and in the trace), requests that do not still may; with none
 * usable the selection stays. A skipped trajectory is not advanced. */
static void test_substitution_and_skip(void **state)
{
    (void)state;
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    assert_non_null(e);
    enum { N = 40, DIM = 16, KK = 3 };
    sample_params p = params("top-1", KK, 4, SAMPLER_EULER), q = p;
    p.trace = 1;
    p.substitute = 1;
    tick *tk = tick_new(KK, DIM, N, e->router, err, sizeof err);
    traj *a[N], *b[N];
    for (int i = 0; i < N; i++) {
        a[i] = traj_new(&p, i, DIM);
        b[i] = traj_new(&q, i, DIM);
    }
    /* which expert top-1 picks for each, all usable */
    assert_int_equal(tick_plan(tk, b, N), 0);
    int first[N], picked[KK] = { 0 };
    for (int i = 0; i < N; i++)
        picked[first[i] = b[i]->sel[0]]++;
    int busy = picked[0] >= picked[1] ? (picked[0] >= picked[2] ? 0 : 2)
                                      : (picked[1] >= picked[2] ? 1 : 2);
    assert_true(picked[busy] > 0);
    unsigned char usable[KK] = { 1, 1, 1 };
    usable[busy] = 0;
    tick_set_usable(tk, usable);
    assert_int_equal(tick_plan(tk, b, N), 0); /* without substitute: unchanged */
    for (int i = 0; i < N; i++)
        assert_int_equal(b[i]->sel[0], first[i]);
    assert_int_equal(tick_plan(tk, a, N), 0);
    int subs = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(a[i]->n_sel, 1);
        assert_true(a[i]->sel[0] != busy);
        if (first[i] == busy) {
            assert_int_equal(a[i]->n_sub, 1);
            assert_int_equal(a[i]->sub_orig[0], busy);
            assert_int_equal(a[i]->sub_new[0], a[i]->sel[0]);
            subs++;
        } else {
            assert_int_equal(a[i]->n_sub, 0);
            assert_int_equal(a[i]->sel[0], first[i]);
        }
    }
    assert_int_equal(subs, picked[busy]);
    assert_int_equal(tick_rows(tk, busy, NULL, NULL, NULL), 0);
    float x0[DIM];
    memcpy(x0, a[0]->x, sizeof x0);
    tick_skip(tk, 0);
    fake_plan_rows(tk, KK, DIM);
    tick_finish(tk);
    assert_memory_equal(a[0]->x, x0, sizeof x0); /* skipped: not advanced */
    assert_int_equal(a[0]->evals, 0);
    assert_int_equal(a[1]->evals, 1);
    uint64_t total = 0;
    for (int i = 1; i < N; i++) {
        total += a[i]->substitutions;
        const trace_entry *te = &a[i]->trace[0];
        assert_int_equal(te->n_sub, first[i] == busy);
        if (te->n_sub) {
            assert_int_equal(te->sub_orig[0], busy);
            assert_int_equal(te->sub_new[0], te->sel[0]);
        }
    }
    assert_int_equal(total, (uint64_t)(subs - (first[0] == busy)));
    /* nothing usable: the selection stays (its call will fail, naming the expert) */
    memset(usable, 0, sizeof usable);
    tick_set_usable(tk, usable);
    assert_int_equal(tick_plan(tk, a + 1, 1), 0);
    assert_int_equal(a[1]->n_sub, 0);
    assert_int_equal(a[1]->n_sel, 1);
    tick_set_usable(tk, NULL);
    for (int i = 0; i < N; i++) {
        traj_free(a[i]);
        traj_free(b[i]);
    }
    tick_free(tk);
    ensemble_close(e);
}

static void test_open_refuses_wrong_expert_file(void **state)
{
    (void)state;
    char err[256], from[128], to[128];
    snprintf(from, sizeof from, "%s/expert-1.safetensors", dir);
    snprintf(to, sizeof to, "%s/expert-1.bak", dir);
    assert_int_equal(rename(from, to), 0);
    assert_null(ensemble_open(dir, err, sizeof err));
    assert_non_null(strstr(err, "expert-1.safetensors"));
    /* expert-2's file in expert-1's place: refused for its id */
    char two[128];
    snprintf(two, sizeof two, "%s/expert-2.safetensors", dir);
    assert_int_equal(link(two, from), 0);
    assert_null(ensemble_open(dir, err, sizeof err));
    assert_non_null(strstr(err, "expert_id 2"));
    unlink(from);
    assert_int_equal(rename(to, from), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initial_noise_is_keyed_by_seed_and_image),
        cmocka_unit_test(test_euler_matches_recurrence),
        cmocka_unit_test(test_heun_second_order),
        cmocka_unit_test(test_uniform_and_guidance_rows),
        cmocka_unit_test(test_plan_routes_by_router_network),
        cmocka_unit_test(test_sampling_is_deterministic_per_seed),
        cmocka_unit_test(test_threads_give_same_images),
        cmocka_unit_test(test_speculation_is_exact),
        cmocka_unit_test(test_substitution_and_skip),
        cmocka_unit_test(test_open_refuses_wrong_expert_file),
    };
    return cmocka_run_group_tests(tests, setup_set, teardown_set);
}
