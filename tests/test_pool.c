/* test_pool.c -- router/pool on one libuv loop against fake workers on
 * loopback (tests/support/fakeworker.h): the close ordering (nothing is
 * called back before pool_close returns; pending calls end with
 * DDM_ECLOSED), deadlines that move a message to another replica, the
 * message table growing past its first size under many calls at once, a
 * call whose only replica turns bad failing with DDM_EUNAVAIL, a stopped
 * replica (or one that missed a probe) getting no new work while its
 * sibling answers, and cancelled calls (never called back, their buffers
 * never written). */
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

/* Timings of a test pool; 0 for the defaults (probes every 100 ms). */
typedef struct timing {
    uint32_t call_timeout_ms, probe_timeout_ms, suspect_ms;
    int down_after;
} timing;

/* A pool over the given fakes (all expert 0); waits until want replicas are live. */
static pool *make_pool_timing(uv_loop_t *loop, cluster *cl, fake_worker **fakes, int n,
                              const fake_mode *modes, const timing *tm, int want_live)
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
    pc.probe_interval_ms = 100;
    if (tm->call_timeout_ms)
        pc.call_timeout_ms = tm->call_timeout_ms;
    if (tm->probe_timeout_ms)
        pc.probe_timeout_ms = tm->probe_timeout_ms;
    if (tm->down_after)
        pc.down_after = tm->down_after;
    pc.suspect_ms = tm->suspect_ms;
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

static pool *make_pool(uv_loop_t *loop, cluster *cl, fake_worker **fakes, int n,
                       const fake_mode *modes, uint32_t timeout_ms, int want_live)
{
    timing tm = { .call_timeout_ms = timeout_ms };
    return make_pool_timing(loop, cl, fakes, n, modes, &tm, want_live);
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

static pool_replica_stats rstats(pool *p, int r)
{
    pool_replica_stats st;
    pool_get_replica_stats(p, 0, r, &st);
    return st;
}

/* n one-row calls at once; waits for them all; every one must succeed with
 * the zeros the fakes answer. */
static void calls_ok(uv_loop_t *loop, pool *p, int n)
{
    enum { MAX = 16 };
    static float x[MAX][DIM], t[MAX], out[MAX][DIM];
    assert_true(n <= MAX);
    memset(out, 0x7f, sizeof out);
    result r = { 0 };
    for (int i = 0; i < n; i++) {
        t[i] = 0.5f;
        assert_int_equal(pool_call(p, 0, 1, x[i], &t[i], NULL, out[i], on_done, &r, NULL), 0);
    }
    run_until(loop, &r.calls, n, 20);
    assert_int_equal(r.calls, n);
    if (r.status)
        fail_msg("a call failed: %s", r.msg);
    for (int i = 0; i < n; i++)
        for (int d = 0; d < DIM; d++)
            assert_true(out[i][d] == 0.0f);
}

/* Runs the loop until replica r's slow flag is want (up to 20 s). */
static void wait_slow(uv_loop_t *loop, pool *p, int r, int want)
{
    double t0 = proc_now_s();
    while (!rstats(p, r).slow != !want && proc_now_s() - t0 < 20)
        uv_run(loop, UV_RUN_ONCE);
    assert_int_equal(rstats(p, r).slow, want);
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
    calls_ok(&loop, p, 6);
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

/* Replica 0 stops (reads nothing, as under SIGSTOP) beside a good replica 1;
 * the deadline is 60 s and the probes are slow to notice (60 s). The message
 * that went to it is unanswered for 100 ms (suspect_ms): the replica is
 * "slow", and the message is sent to replica 1 (not to it again) long before
 * its deadline -- the calls end within calls_ok's 20 s. From then on the
 * stopped replica gets no new work although it is still up; once it answers
 * again (SIGCONT), it gets work again. */
static void test_stopped_replica_gets_no_new_work(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[2];
    fake_mode m[2] = { FAKE_ZEROS, FAKE_ZEROS };
    timing tm = { .call_timeout_ms = 60000, .probe_timeout_ms = 60000, .suspect_ms = 100 };
    pool *p = make_pool_timing(&loop, &cl, f, 2, m, &tm, 2);
    fake_worker_pause(f[0], 1);
    calls_ok(&loop, p, 2); /* equal load: one message to each replica */
    pool_replica_stats a = rstats(p, 0), b = rstats(p, 1);
    assert_int_equal(a.messages, 1);
    assert_int_equal(a.timeouts, 1);
    assert_int_equal(b.messages, 2); /* its own, and the retry of the stopped one's */
    assert_int_equal(b.timeouts, 0);
    assert_true(a.slow);
    assert_false(b.slow);
    const char *url, *st, *detail;
    pool_replica_info(p, 0, 0, &url, &st, &detail);
    assert_string_equal(st, "up"); /* the probes have not noticed: this is not "down" */
    assert_non_null(strstr(detail, "no new work"));

    calls_ok(&loop, p, 12);
    a = rstats(p, 0);
    assert_int_equal(a.messages, 1); /* nothing new for the stopped replica */
    assert_int_equal(rstats(p, 1).messages, 14);
    pool_expert_stats es;
    pool_get_stats(p, 0, &es);
    assert_int_equal(es.retries, 1);
    assert_int_equal(es.failures, 0);

    fake_worker_pause(f[0], 0); /* it answers its queue (late), then work again */
    wait_slow(&loop, p, 0, 0);
    calls_ok(&loop, p, 12);
    assert_true(rstats(p, 0).messages > 1);
    finish(&loop, p, &cl, f, 2);
}

/* A replica that misses a probe gets no new work while its sibling answers,
 * before it misses enough of them to be marked down. */
static void test_probe_miss_gets_no_new_work(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cluster cl;
    fake_worker *f[2];
    fake_mode m[2] = { FAKE_ZEROS, FAKE_ZEROS };
    timing tm = { .call_timeout_ms = 5000, .probe_timeout_ms = 200, .down_after = 1000 };
    pool *p = make_pool_timing(&loop, &cl, f, 2, m, &tm, 2);
    fake_worker_pause(f[1], 1);
    wait_slow(&loop, p, 1, 1);
    const char *url, *st, *detail;
    pool_replica_info(p, 0, 1, &url, &st, &detail);
    assert_string_equal(st, "up");
    assert_non_null(strstr(detail, "no answer to a probe"));
    calls_ok(&loop, p, 10);
    assert_int_equal(rstats(p, 1).messages, 0);
    assert_int_equal(rstats(p, 0).messages, 10);
    fake_worker_pause(f[1], 0);
    finish(&loop, p, &cl, f, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_calls_back_later),
        cmocka_unit_test(test_deadline_moves_message),
        cmocka_unit_test(test_many_calls),
        cmocka_unit_test(test_bad_only_replica),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_stopped_replica_gets_no_new_work),
        cmocka_unit_test(test_probe_miss_gets_no_new_work),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
