/* test_pool.c -- router/pool on one libuv loop against fake workers on
 * loopback (tests/support/fakeworker.h): the close ordering (nothing is
 * called back before pool_close returns; pending calls end with
 * DDM_ECLOSED), deadlines that move a message to another replica, the
 * message table growing past its first size under many calls at once, a
 * call whose only replica turns bad failing with DDM_EUNAVAIL, and cancelled
 * calls (never called back, their buffers never written). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <uv.h>

#include "common/err.h"
#include "router/cluster.h"
#include "router/pool.h"
#include "tests/support/fakeworker.h"
#include "tests/support/proc.h"

#define DIM 16
#define HASH "1111111111111111111111111111111111111111111111111111111111111111"

typedef struct result {
    int calls, status;
    char msg[512];
} result;

static void on_done(void *ud, int k, int status, const char *msg)
{
    result *r = ud;
    (void)k;
    r->calls++;
    if (status) {
        r->status = status;
        snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
    }
}

static int closed;
static void on_closed(void *ud)
{
    (void)ud;
    closed = 1;
}

/* A pool over the given fakes (all expert 0); waits until want replicas are live. */
static pool *make_pool(uv_loop_t *loop, cluster *cl, fake_worker **fakes, int n,
                       const fake_mode *modes, uint32_t timeout_ms, int want_live)
{
    memset(cl, 0, sizeof *cl);
    cl->n_experts = 1;
    cl->experts[0].n_replicas = n;
    for (int i = 0; i < n; i++) {
        char url[64];
        snprintf(url, sizeof url, "tcp://127.0.0.1:%d", proc_free_port());
        cl->experts[0].urls[i] = strdup(url);
        fake_config fc = { .url = url, .expert_id = 0, .dim = DIM, .n_classes = 3,
                           .n_experts = 1, .max_batch = 8, .sha256 = HASH,
                           .protocol_version = "1.0", .mode = modes[i] };
        char err[256];
        fakes[i] = fake_worker_start(&fc, err, sizeof err);
        if (!fakes[i])
            fail_msg("%s", err);
    }
    pool_config pc;
    pool_config_default(&pc);
    pc.dim = DIM;
    pc.height = pc.width = 4; /* DIM = 4 x 4 x 1, the fake workers claim that shape */
    pc.channels = 1;
    pc.n_experts = 1;
    pc.n_classes = 3;
    pc.call_timeout_ms = timeout_ms;
    pc.probe_interval_ms = 100;
    pool *p;
    char err[256];
    if (pool_new(loop, cl, &pc, &p, err, sizeof err))
        fail_msg("%s", err);
    double t0 = proc_now_s();
    while (pool_live_replicas(p, 0) < want_live && proc_now_s() - t0 < 10)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(pool_live_replicas(p, 0), want_live);
    return p;
}

static void finish(uv_loop_t *loop, pool *p, cluster *cl, fake_worker **fakes, int n)
{
    closed = 0;
    pool_close(p, on_closed, NULL);
    while (!closed)
        uv_run(loop, UV_RUN_ONCE);
    for (int i = 0; i < n; i++)
        fake_worker_stop(fakes[i]);
    cluster_free(cl);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void run_until(uv_loop_t *loop, const int *flag, int want, double secs)
{
    double t0 = proc_now_s();
    while (*flag < want && proc_now_s() - t0 < secs)
        uv_run(loop, UV_RUN_ONCE);
}

/* pool_close with a call pending: nothing is called back before it returns;
 * then the call ends with DDM_ECLOSED, and only after that the close callback. */
static void test_close_calls_back_later(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[1];
    fake_mode m[1] = { FAKE_SILENT };
    pool *p = make_pool(&loop, &cl, f, 1, m, 5000, 1);
    float x[DIM] = { 0 }, t[1] = { 0.5f }, out[DIM];
    result r = { 0 };
    assert_int_equal(pool_call(p, 0, 1, x, t, NULL, out, on_done, &r, NULL), 0);
    closed = 0;
    pool_close(p, on_closed, NULL);
    assert_int_equal(r.calls, 0);
    assert_int_equal(closed, 0);
    assert_int_equal(pool_call(p, 0, 1, x, t, NULL, out, on_done, &r, NULL), DDM_ECLOSED);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, DDM_ECLOSED);
    fake_worker_stop(f[0]);
    cluster_free(&cl);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* One replica never answers: its messages time out and are served by the
 * other; every call succeeds. */
static void test_deadline_moves_message(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[2];
    fake_mode m[2] = { FAKE_SILENT, FAKE_ZEROS };
    pool *p = make_pool(&loop, &cl, f, 2, m, 200, 2);
    enum { N = 6 };
    float x[N][DIM], t[N], out[N][DIM];
    memset(x, 0, sizeof x);
    for (int i = 0; i < N; i++)
        t[i] = 0.5f;
    memset(out, 0x7f, sizeof out);
    result r = { 0 };
    for (int i = 0; i < N; i++)
        assert_int_equal(pool_call(p, 0, 1, x[i], &t[i], NULL, out[i], on_done, &r, NULL), 0);
    run_until(&loop, &r.calls, N, 10);
    assert_int_equal(r.calls, N);
    if (r.status)
        fail_msg("a call failed: %s", r.msg);
    for (int i = 0; i < N; i++)
        for (int d = 0; d < DIM; d++)
            assert_true(out[i][d] == 0.0f);
    assert_true(fake_worker_denoise_count(f[0]) >= 1); /* some went to the silent one */
    pool_expert_stats st;
    pool_get_stats(p, 0, &st);
    assert_true(st.retries >= 1);
    assert_int_equal(st.failures, 0);
    finish(&loop, p, &cl, f, 2);
}

/* Far more messages at once than the table's first size: all answered. */
static void test_many_calls(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[1];
    fake_mode m[1] = { FAKE_ZEROS };
    pool *p = make_pool(&loop, &cl, f, 1, m, 5000, 1);
    enum { CALLS = 120, ROWS = 20 }; /* 3 messages per call (max batch 8): 360 */
    float *x = calloc(CALLS * ROWS * DIM, sizeof *x), *out = malloc(CALLS * ROWS * DIM * 4);
    float t[ROWS];
    for (int i = 0; i < ROWS; i++)
        t[i] = 0.25f;
    memset(out, 0x7f, CALLS * ROWS * DIM * 4);
    result r = { 0 };
    for (int c = 0; c < CALLS; c++)
        assert_int_equal(pool_call(p, 0, ROWS, x + c * ROWS * DIM, t, NULL,
                                   out + c * ROWS * DIM, on_done, &r, NULL), 0);
    run_until(&loop, &r.calls, CALLS, 20);
    assert_int_equal(r.calls, CALLS);
    assert_int_equal(r.status, 0);
    for (int i = 0; i < CALLS * ROWS * DIM; i++)
        assert_true(out[i] == 0.0f);
    assert_int_equal(fake_worker_denoise_count(f[0]), CALLS * 3);
    free(x);
    free(out);
    finish(&loop, p, &cl, f, 1);
}

/* The only replica answers NaN: the call fails with DDM_EUNAVAIL naming the
 * expert and the replica, and the replica is quarantined. */
static void test_bad_only_replica(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[1];
    fake_mode m[1] = { FAKE_NAN };
    pool *p = make_pool(&loop, &cl, f, 1, m, 5000, 1);
    float x[DIM] = { 0 }, t[1] = { 0.5f }, out[DIM];
    result r = { 0 };
    assert_int_equal(pool_call(p, 0, 1, x, t, NULL, out, on_done, &r, NULL), 0);
    run_until(&loop, &r.calls, 1, 10);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, DDM_EUNAVAIL);
    assert_non_null(strstr(r.msg, "expert 0"));
    assert_non_null(strstr(r.msg, "not finite"));
    const char *url, *st, *detail;
    pool_replica_info(p, 0, 0, &url, &st, &detail);
    assert_string_equal(st, "quarantined");
    assert_int_equal(pool_live_replicas(p, 0), 0);
    assert_int_equal(pool_call(p, 0, 1, x, t, NULL, out, on_done, &r, NULL), DDM_EUNAVAIL);
    finish(&loop, p, &cl, f, 1);
}

/* Cancelled calls: done never runs, the reply that comes anyway is not
 * written to out, the rows no longer count as queued, an old id cancels
 * nothing, and calls made after it are answered as usual. */
static void test_cancel(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[1];
    fake_mode m[1] = { FAKE_ZEROS };
    pool *p = make_pool(&loop, &cl, f, 1, m, 5000, 1);
    enum { ROWS = 20 }; /* 3 messages (max batch 8) */
    float x[ROWS * DIM], t[ROWS], out[ROWS * DIM], out2[ROWS * DIM];
    memset(x, 0, sizeof x);
    for (int i = 0; i < ROWS; i++)
        t[i] = 0.5f;
    memset(out, 0x7f, sizeof out);
    memset(out2, 0x7f, sizeof out2);
    result dropped = { 0 }, kept = { 0 };
    assert_int_equal(pool_queue_rows(p, 0), 0);
    pool_call_id id, id2;
    assert_int_equal(pool_call(p, 0, ROWS, x, t, NULL, out, on_done, &dropped, &id), 0);
    assert_int_equal(pool_queue_rows(p, 0), ROWS);
    assert_int_equal(pool_cancel(p, id), 1);
    assert_int_equal(pool_queue_rows(p, 0), 0);
    assert_int_equal(pool_cancel(p, id), 0); /* once */
    assert_int_equal(pool_call(p, 0, ROWS, x, t, NULL, out2, on_done, &kept, &id2), 0);
    assert_true(id2 != id); /* the slot may be the same, the generation is not */
    assert_int_equal(pool_cancel(p, id), 0);
    run_until(&loop, &kept.calls, 1, 10);
    assert_int_equal(kept.calls, 1);
    assert_int_equal(kept.status, 0);
    /* the cancelled call's replies have arrived by now (sent first, same socket) */
    double t0 = proc_now_s();
    while (fake_worker_denoise_count(f[0]) < 6 && proc_now_s() - t0 < 10)
        uv_run(&loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(dropped.calls, 0);
    unsigned char never[ROWS * DIM * 4];
    memset(never, 0x7f, sizeof never);
    assert_memory_equal(out, never, sizeof out);
    for (int i = 0; i < ROWS * DIM; i++)
        assert_true(out2[i] == 0.0f);
    assert_int_equal(pool_cancel(p, id2), 0); /* finished: nothing to cancel */
    pool_expert_stats st;
    pool_get_stats(p, 0, &st);
    assert_int_equal(st.cancelled, 1);
    assert_int_equal(st.failures, 0);
    finish(&loop, p, &cl, f, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_calls_back_later),
        cmocka_unit_test(test_deadline_moves_message),
        cmocka_unit_test(test_many_calls),
        cmocka_unit_test(test_bad_only_replica),
        cmocka_unit_test(test_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
