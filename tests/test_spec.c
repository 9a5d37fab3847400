/* test_spec.c -- speculative dispatch and load-aware substitution end to end:
 * real ddm-expert and ddm-router processes on a small random expert set.
 *
 * Speculation: two routers on the same workers, one with --speculate off and
 * one with it on, answer the same requests (top-2, full, sample; with and
 * without a label and guidance; euler and heun) with the same PNG bytes, and
 * those are the in-process images. The workers run --max-batch 1 (and
 * in-process one row per forward) so that no row's answer depends on its
 * batch mates: OpenBLAS may round a row differently for another batch height,
 * and the speculative calls group rows differently from the plan's.
 *
 * Substitution: with a worker killed, stopped (before and after the router
 * notices), or up but never answering, a request with "substitute": true
 * succeeds and says which steps were substituted; without it the same
 * request fails naming the expert. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/half_gemm.h"
#include "common/png.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/apicheck.h"
#include "tests/support/cluster.h"
#include "tests/support/fakeworker.h"
#include "tests/support/images.h"
#include "tests/support/metrics.h"
#include "tests/support/proc.h"

#define K 3
#define DIM 16
#define CLASSES 3

static tcluster tc;                 /* its router: --speculate off */
static pid_t spec_router = -1;      /* the same workers, --speculate on */
static int spec_port;
static char spec_hp[64];

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    /* the workers and routers use this process's kernels, so that in-process
     * rows can match theirs bit for bit (ddm binaries otherwise pick their own) */
    setenv("OPENBLAS_CORETYPE", openblas_get_corename(), 1);
    char rows[16];
    snprintf(rows, sizeof rows, "%d", half_gemm_rows());
    setenv("DDM_HALF_ROWS", rows, 1);
    static const char *const wargs[] = { "--max-batch", "1", "--max-delay-us", "0", NULL };
    static const char *const rargs[] = { "--speculate", "off", "--ticks", "1", NULL };
    if (tcluster_start_toy(&tc, K, DIM, CLASSES, wargs, rargs)) {
        tcluster_stop(&tc, 0);
        return -1;
    }
    static const char *const sargs[] = { "--speculate", "on", "--ticks", "1", NULL };
    spec_router = tcluster_add_router(&tc, sargs, &spec_port);
    if (spec_router < 0) {
        tcluster_stop(&tc, 0);
        return -1;
    }
    snprintf(spec_hp, sizeof spec_hp, "127.0.0.1:%d", spec_port);
    apicheck_begin();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (spec_router > 0)
        proc_stop(spec_router, SIGTERM, 5000);
    for (int i = 0; i < tc.n_workers; i++)
        if (tc.workers[i] > 0)
            kill(tc.workers[i], SIGCONT); /* a failed test may have left one stopped */
    tcluster_stop(&tc, 0);
    apicheck_end();
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

/* POSTs a JSON body to /v1/samples on hostport; records the response for the
 * OpenAPI check. Returns the status (r to be freed by the caller). */
static int post(const char *hostport, const char *body, httpc_response *r)
{
    char err[128];
    httpc *c;
    assert_int_equal(httpc_open(hostport, 60000, &c, err, sizeof err), 0);
    httpc_header h[] = { { "Content-Type", "application/json" } };
    int rc = httpc_request(c, "POST", "/v1/samples", h, 1, body, strlen(body), r);
    httpc_close(c);
    if (rc)
        fail_msg("POST %s: transport error %d", body, rc);
    apicheck_http("POST", "/v1/samples", r);
    return r->status;
}

static cJSON *sample_ok(const char *hostport, const char *body)
{
    httpc_response r;
    int st = post(hostport, body, &r);
    if (st != 200)
        fail_msg("%s -> %d %s", body, st, r.body ? r.body : "");
    cJSON *root = cJSON_Parse(r.body);
    assert_non_null(root);
    httpc_response_free(&r);
    return root;
}

/* Value of the sample line "name value" of hostport's /metrics. */
static double metric(const char *hostport, const char *name)
{
    char *text = tmetrics_fetch(hostport);
    if (!text)
        fail_msg("GET %s/metrics failed", hostport);
    double v = tmetrics_value(text, name);
    free(text);
    if (isnan(v))
        fail_msg("no %s in %s's /metrics", name, hostport);
    return v;
}

/* The images of a JSON response decoded into pix [n][DIM]. */
static int images(cJSON *root, uint8_t *pix, int max)
{
    int n = images_from_json(root, pix, max, DIM);
    assert_true(n >= 0);
    return n;
}

/* ---- speculation -------------------------------------------------------------------- */

typedef struct req {
    const char *strategy;
    int label;          /* -1: none */
    float guidance;
    sampler_kind sampler;
} req;

/* Served with speculation on and off: the same bytes, the in-process images,
 * and the speculation really ran (hits, misses and wasted rows counted). */
static void test_speculation_changes_no_image(void **state)
{
    (void)state;
    static const req reqs[] = {
        { "top-2", -1, 1.0f, SAMPLER_EULER }, { "top-2", 1, 2.5f, SAMPLER_HEUN },
        { "full", -1, 1.0f, SAMPLER_HEUN },   { "full", 2, 3.0f, SAMPLER_EULER },
        { "sample", -1, 1.0f, SAMPLER_EULER }, { "sample", 0, 2.0f, SAMPLER_HEUN },
        { "top-1", 1, 1.0f, SAMPLER_EULER },
    };
    char err[256];
    ensemble *e = ensemble_open(tc.models, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    e->chunk = 1; /* one row per forward, as the workers (--max-batch 1) */
    enum { N = 4, STEPS = 10 };
    for (size_t q = 0; q < sizeof reqs / sizeof reqs[0]; q++) {
        const req *rq = &reqs[q];
        char body[256], lab[64] = "";
        if (rq->label >= 0)
            snprintf(lab, sizeof lab, ", \"label\": %d, \"guidance\": %g", rq->label,
                     rq->guidance);
        snprintf(body, sizeof body,
                 "{\"n\": %d, \"steps\": %d, \"seed\": %zu, \"strategy\": \"%s\", "
                 "\"sampler\": \"%s\"%s}", N, STEPS, 77 + q, rq->strategy,
                 sampler_name(rq->sampler), lab);
        cJSON *off = sample_ok(tc.hostport, body), *on = sample_ok(spec_hp, body);
        char *ia = cJSON_PrintUnformatted(cJSON_GetObjectItem(off, "images"));
        char *ib = cJSON_PrintUnformatted(cJSON_GetObjectItem(on, "images"));
        if (strcmp(ia, ib))
            fail_msg("%s: the images differ with speculation on", body);
        free(ia);
        free(ib);
        assert_int_equal((long)cJSON_GetObjectItem(on, "expert_calls")->valuedouble,
                         (long)cJSON_GetObjectItem(off, "expert_calls")->valuedouble);
        /* in-process: the same images */
        sample_params p;
        sample_params_default(&p, K);
        assert_int_equal(strategy_parse(rq->strategy, K, NAN, NAN, &p.strat, err, sizeof err), 0);
        p.n = N, p.steps = STEPS, p.seed = 77 + q, p.sampler = rq->sampler;
        p.label = rq->label, p.guidance = rq->label >= 0 ? rq->guidance : 1.0f;
        float x[N * DIM];
        assert_int_equal(ensemble_sample(e, &p, x, NULL, NULL), 0);
        uint8_t ref[N * (DIM + PNGIO_GRID_SEP)], got[N * DIM];
        pngio_grid_render(x, N, DIM, 1, N, ref); /* N images of 16x1 side by side */
        images(on, got, N);
        for (int i = 0; i < N; i++)
            for (int d = 0; d < DIM; d++)
                if (got[i * DIM + d] != ref[i * (DIM + PNGIO_GRID_SEP) + d])
                    fail_msg("%s: image %d pixel %d is %d served, %d in-process", body, i, d,
                             got[i * DIM + d], ref[i * (DIM + PNGIO_GRID_SEP) + d]);
        cJSON_Delete(off);
        cJSON_Delete(on);
    }
    ensemble_close(e);
    /* the speculation ran on one router and not on the other */
    const char *hit = "ddm_speculation_rows_total{outcome=\"hit\"}";
    const char *miss = "ddm_speculation_rows_total{outcome=\"miss\"}";
    const char *wasted = "ddm_speculation_rows_total{outcome=\"wasted\"}";
    assert_true(metric(spec_hp, hit) > 0);
    assert_true(metric(spec_hp, miss) > 0);   /* sample changes expert often */
    assert_true(metric(spec_hp, wasted) > 0);
    assert_true(metric(spec_hp, "ddm_speculation_evaluations_total{outcome=\"hit\"}") > 0);
    assert_true(metric(spec_hp, "ddm_speculation_calls_total{outcome=\"sent\"}") > 0);
    assert_true(metric(tc.hostport, hit) == 0);
    assert_true(metric(tc.hostport, "ddm_speculation_calls_total{outcome=\"sent\"}") == 0);
}

/* ---- substitution ------------------------------------------------------------------- */

static pid_t sub_router = -1;
static int sub_port;

/* A router with short deadlines for the substitution tests (one attempt of
 * 400 ms per message: a stopped worker fails a call quickly). */
static const char *sub_hostport(void)
{
    static char hp[64];
    if (sub_router < 0) {
        static const char *const args[] = { "--expert-timeout-ms", "400", "--attempts", "1",
                                            NULL };
        sub_router = tcluster_add_router(&tc, args, &sub_port);
        assert_true(sub_router > 0);
        snprintf(hp, sizeof hp, "127.0.0.1:%d", sub_port);
    }
    return hp;
}

/* The trace of a substituted request: every step's experts avoid `gone`, and
 * the steps that name it as the original are counted. */
static int check_trace(cJSON *root, int gone)
{
    int subs = 0;
    cJSON *tr = cJSON_GetObjectItem(root, "trace"), *st;
    assert_non_null(tr);
    cJSON_ArrayForEach(st, tr)
    {
        cJSON *ex, *s;
        cJSON_ArrayForEach(ex, cJSON_GetObjectItem(st, "experts"))
            assert_true((int)ex->valuedouble != gone);
        cJSON_ArrayForEach(s, cJSON_GetObjectItem(st, "substitutions"))
        {
            assert_int_equal((int)cJSON_GetObjectItem(s, "original")->valuedouble, gone);
            cJSON *with = cJSON_GetObjectItem(s, "expert");
            assert_non_null(with);
            assert_true((int)with->valuedouble != gone);
            subs++;
        }
    }
    return subs;
}

/* Waits until /v1/experts on hostport says expert k has no live replica. */
static void wait_down(const char *hostport, int k)
{
    double t0 = proc_now_s();
    while (proc_now_s() - t0 < 20) {
        char err[128];
        httpc *c;
        assert_int_equal(httpc_open(hostport, 5000, &c, err, sizeof err), 0);
        httpc_response r;
        assert_int_equal(httpc_request(c, "GET", "/v1/experts", NULL, 0, NULL, 0, &r), 0);
        httpc_close(c);
        cJSON *root = cJSON_Parse(r.body);
        httpc_response_free(&r);
        cJSON *ex = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "experts"), k);
        int live = (int)cJSON_GetObjectItem(ex, "live_replicas")->valuedouble;
        cJSON_Delete(root);
        if (live == 0)
            return;
        usleep(50000);
    }
    fail_msg("expert %d still has a live replica after 20 s", k);
}

static void restart_worker(int k)
{
    tc.workers[k] = tcluster_start_worker(&tc, k);
    assert_true(tc.workers[k] > 0);
    assert_int_equal(proc_wait_http(tc.port, "/readyz", 200, 20000), 0);
    assert_int_equal(proc_wait_http(sub_port, "/readyz", 200, 20000), 0);
    assert_int_equal(proc_wait_http(spec_port, "/readyz", 200, 20000), 0);
}

/* Expert 1's only worker killed: with substitute, 200 and every step says
 * what stood in for expert 1; without, 503 naming it. */
static void test_substitute_killed_worker(void **state)
{
    (void)state;
    const char *hp = sub_hostport();
    kill(tc.workers[1], SIGKILL);
    proc_wait(tc.workers[1], 5000);
    tc.workers[1] = -1;
    wait_down(hp, 1);
    enum { N = 2, STEPS = 6 };
    char body[256];
    snprintf(body, sizeof body, "{\"n\": %d, \"steps\": %d, \"seed\": 5, \"strategy\": "
             "\"expert:1\", \"trace\": true, \"substitute\": true}", N, STEPS);
    cJSON *ok = sample_ok(hp, body);
    assert_int_equal((int)cJSON_GetObjectItem(ok, "substitutions")->valuedouble, N * STEPS);
    assert_int_equal(check_trace(ok, 1), N * STEPS);
    cJSON_Delete(ok);
    /* top-2 and full too: expert 1 never used, full drops it */
    ok = sample_ok(hp, "{\"n\": 3, \"steps\": 5, \"strategy\": \"top-2\", \"trace\": true, "
                       "\"substitute\": true, \"label\": 2, \"guidance\": 2}");
    check_trace(ok, 1);
    cJSON_Delete(ok);
    ok = sample_ok(hp, "{\"n\": 1, \"steps\": 3, \"strategy\": \"full\", \"trace\": true, "
                       "\"substitute\": true}");
    assert_int_equal((int)cJSON_GetObjectItem(ok, "substitutions")->valuedouble, 3);
    cJSON *s0 = cJSON_GetArrayItem(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ok, "trace"), 0),
                            "substitutions"), 0);
    assert_int_equal((int)cJSON_GetObjectItem(s0, "original")->valuedouble, 1);
    assert_null(cJSON_GetObjectItem(s0, "expert")); /* dropped: full has no one left */
    cJSON_Delete(ok);
    /* without substitute: 503 naming the expert, on every router */
    snprintf(body, sizeof body, "{\"n\": %d, \"steps\": %d, \"seed\": 5, \"strategy\": "
             "\"expert:1\"}", N, STEPS);
    const char *hps[] = { hp, spec_hp };
    for (int i = 0; i < 2; i++) {
        httpc_response r;
        assert_int_equal(post(hps[i], body, &r), 503);
        if (!strstr(r.body, "expert 1"))
            fail_msg("503 does not name expert 1: %s", r.body);
        httpc_response_free(&r);
    }
    /* a request that substitutes on the speculating router too */
    snprintf(body, sizeof body, "{\"n\": %d, \"steps\": %d, \"seed\": 5, \"strategy\": "
             "\"expert:1\", \"substitute\": true}", N, STEPS);
    ok = sample_ok(spec_hp, body);
    assert_int_equal((int)cJSON_GetObjectItem(ok, "substitutions")->valuedouble, N * STEPS);
    cJSON_Delete(ok);
    assert_true(metric(hp, "ddm_substitutions_total") >= N * STEPS);
    restart_worker(1);
    /* back: no substitution needed */
    ok = sample_ok(hp, body);
    assert_int_equal((int)cJSON_GetObjectItem(ok, "substitutions")->valuedouble, 0);
    cJSON_Delete(ok);
}

/* Expert 2's worker stopped (SIGSTOP). Right away, before the router's probes
 * notice, a call to it times out in the middle of a request: with substitute
 * the request evaluates those steps again with another expert and succeeds;
 * without, it fails naming the expert. Once the router marks it down, the
 * same again without waiting for any deadline. */
static void test_substitute_stopped_worker(void **state)
{
    (void)state;
    const char *hp = sub_hostport();
    assert_int_equal(proc_wait_http(sub_port, "/readyz", 200, 20000), 0);
    double redone0 = metric(hp, "ddm_evaluations_redone_total");
    kill(tc.workers[2], SIGSTOP);
    cJSON *ok = sample_ok(hp, "{\"n\": 2, \"steps\": 8, \"strategy\": \"expert:2\", "
                              "\"trace\": true, \"substitute\": true}");
    assert_int_equal((int)cJSON_GetObjectItem(ok, "substitutions")->valuedouble, 2 * 8);
    assert_int_equal(check_trace(ok, 2), 2 * 8);
    cJSON_Delete(ok);
    /* the first call went to the stopped worker unless the probes were faster */
    double redone = metric(hp, "ddm_evaluations_redone_total") - redone0;
    assert_true(redone >= 0);
    httpc_response r;
    int st = post(hp, "{\"n\": 1, \"steps\": 4, \"strategy\": \"expert:2\"}", &r);
    assert_true(st == 503 || st == 504);
    if (!strstr(r.body, "expert 2"))
        fail_msg("%d does not name expert 2: %s", st, r.body);
    httpc_response_free(&r);
    wait_down(hp, 2);
    assert_int_equal(post(hp, "{\"n\": 1, \"steps\": 4, \"strategy\": \"expert:2\"}", &r), 503);
    assert_non_null(strstr(r.body, "expert 2"));
    httpc_response_free(&r);
    ok = sample_ok(hp, "{\"n\": 1, \"steps\": 4, \"strategy\": \"top-2\", \"trace\": true, "
                       "\"substitute\": true}");
    check_trace(ok, 2);
    cJSON_Delete(ok);
    kill(tc.workers[2], SIGCONT);
    assert_int_equal(proc_wait_http(sub_port, "/readyz", 200, 20000), 0);
    /* every response of this file fits docs/openapi.yaml */
    assert_int_equal(apicheck_run(tc.hostport), 0);
    proc_stop(sub_router, SIGTERM, 5000);
    sub_router = -1;
}

/* Expert 1 served by a worker that passes every handshake but never answers
 * a denoise request (so it stays up): the call times out in the first tick,
 * those evaluations are done again, expert 1 stands aside, the request
 * succeeds; without substitute, 504 naming it. */
static void test_substitute_silent_worker(void **state)
{
    (void)state;
    char furl[64], conf[512], log[512], err[256];
    snprintf(furl, sizeof furl, "tcp://127.0.0.1:%d", proc_free_port());
    fake_config fc = { .url = furl, .expert_id = 1, .dim = DIM, .n_classes = CLASSES,
                       .n_experts = K, .max_batch = 8,
                       .sha256 = "2222222222222222222222222222222222222222222222222222222222222222",
                       .protocol_version = "1.0", .mode = FAKE_SILENT };
    fake_worker *f = fake_worker_start(&fc, err, sizeof err);
    if (!f)
        fail_msg("%s", err);
    snprintf(conf, sizeof conf, "%s/silent.conf", tc.dir);
    FILE *cf = fopen(conf, "w");
    assert_non_null(cf);
    fprintf(cf, "models %s\nexpert 0 ipc://%s/e0.0.ipc\nexpert 1 %s\nexpert 2 ipc://%s/e2.0.ipc\n",
            tc.models, tc.dir, furl, tc.dir);
    fclose(cf);
    int port = proc_free_port();
    char bin[256], listen[64], hp[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    snprintf(log, sizeof log, "%s/router-silent.log", tc.dir);
    char *argv[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf,
                     "--listen", listen, "--expert-timeout-ms", "300", "--attempts", "1", NULL };
    pid_t rp = proc_start(argv, log);
    assert_true(rp > 0);
    if (proc_wait_http(port, "/readyz", 200, 30000)) {
        proc_dump_log(log);
        fail_msg("the router never became ready");
    }
    cJSON *ok = sample_ok(hp, "{\"n\": 2, \"steps\": 5, \"strategy\": \"expert:1\", "
                              "\"trace\": true, \"substitute\": true}");
    assert_int_equal((int)cJSON_GetObjectItem(ok, "substitutions")->valuedouble, 2 * 5);
    assert_int_equal(check_trace(ok, 1), 2 * 5);
    cJSON_Delete(ok);
    assert_true(metric(hp, "ddm_evaluations_redone_total") >= 2); /* both images' first step */
    assert_true(fake_worker_denoise_count(f) >= 1);
    httpc_response r;
    /* without substitute (past the few seconds expert 1 is avoided, or not: it fails) */
    assert_int_equal(post(hp, "{\"n\": 1, \"steps\": 3, \"strategy\": \"expert:1\"}", &r), 504);
    if (!strstr(r.body, "expert 1"))
        fail_msg("504 does not name expert 1: %s", r.body);
    httpc_response_free(&r);
    proc_stop(rp, SIGTERM, 5000);
    fake_worker_stop(f);
}

/* Bad values of the new field and flag are refused with a message. */
static void test_bad_values(void **state)
{
    (void)state;
    httpc_response r;
    assert_int_equal(post(tc.hostport, "{\"substitute\": 1}", &r), 400);
    assert_non_null(strstr(r.body, "substitute"));
    httpc_response_free(&r);
    char bin[256], conf[300], out[4096];
    snprintf(conf, sizeof conf, "%s", tc.conf);
    int status;
    char *o = proc_sh(&status, "%s --cluster %s --speculate maybe 2>&1",
                      proc_bin("ddm-router", bin, sizeof bin), conf);
    assert_non_null(o);
    snprintf(out, sizeof out, "%s", o);
    free(o);
    assert_int_equal(status, 2);
    if (!strstr(out, "--speculate") || !strstr(out, "on or off"))
        fail_msg("no usable message: %s", out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_speculation_changes_no_image),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_substitute_killed_worker),
        cmocka_unit_test(test_substitute_stopped_worker),
        cmocka_unit_test(test_substitute_silent_worker),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
