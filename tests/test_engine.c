/* test_engine.c -- router/engine on one libuv loop in this process, talking to
 * real ddm-expert workers (a small random set on disk) through a real pool:
 * results, cancel, timeout, an expert without a replica, busy, and the close
 * orderings (engine_close while a result is held, while ticks run, from inside
 * done, with the pool closed right after). */
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
#include <uv.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/log.h"
#include "common/model.h"
#include "router/cluster.h"
#include "router/engine.h"
#include "router/pool.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define K 3
#define DIM 16
#define CLASSES 3

static char dir[128];
static pid_t workers[K];
static model *router_net;

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    log_set_level((log_level)log_parse_level("warn")); /* the pool's "replica is up" lines */
    if (toyset_tempdir(dir, sizeof dir, "test-engine") || toyset_write(dir, K, DIM, CLASSES, 5))
        return -1;
    for (int k = 0; k < K; k++) {
        char bin[256], weights[256], url[256], log[256];
        snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", dir, k);
        snprintf(url, sizeof url, "ipc://%s/e%d.ipc", dir, k);
        snprintf(log, sizeof log, "%s/worker-%d.log", dir, k);
        char *argv[] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights", weights,
                         "--listen", url, "--max-delay-us", "200", NULL };
        if ((workers[k] = proc_start(argv, log)) < 0)
            return -1;
    }
    char path[256], err[256];
    snprintf(path, sizeof path, "%s/router.safetensors", dir);
    router_net = model_open(path, err, sizeof err);
    if (!router_net) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int k = 0; k < K; k++)
        if (workers[k] > 0)
            proc_stop(workers[k], SIGTERM, 5000);
    model_close(router_net);
    toyset_rmdir(dir);
    return 0;
}

/* ---- a loop, a pool and an engine per test ----------------------------------------- */

typedef struct fx {
    uv_loop_t loop;
    pool *pl;
    engine *e;                /* NULL once the test closed it */
    int engine_closed, pool_closed;
    int pool_closing;
} fx;

/* Runs the loop until *v >= want or ms pass; returns *v. */
static int spin(fx *f, const int *v, int want, int ms)
{
    double end = proc_now_s() + ms / 1e3;
    while (*v < want && proc_now_s() < end)
        uv_run(&f->loop, UV_RUN_ONCE); /* the pool's sweep timer wakes it every 20 ms */
    return *v;
}

static void spin_ms(fx *f, int ms)
{
    int never = 0;
    spin(f, &never, 1, ms);
}

static void set_flag(void *ud) { (*(int *)ud)++; }

/* A pool over the workers; expert `dead` (or -1) is listed at a URL nobody serves. */
static void fx_open(fx *f, const engine_config *ec, int dead)
{
    memset(f, 0, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    char text[2048], err[256];
    size_t n = (size_t)snprintf(text, sizeof text, "models %s\n", dir);
    for (int k = 0; k < K; k++)
        n += (size_t)snprintf(text + n, sizeof text - n, "expert %d ipc://%s/%s%d.ipc\n", k, dir,
                              k == dead ? "nobody" : "e", k);
    cluster cl;
    assert_int_equal(cluster_parse(text, "test.conf", &cl, err, sizeof err), 0);
    pool_config pc;
    pool_config_default(&pc);
    pc.dim = DIM;
    pc.height = pc.width = 4; /* DIM = 4 x 4 x 1, the toy workers' shape */
    pc.channels = 1;
    pc.n_experts = K;
    pc.n_classes = CLASSES;
    pc.call_timeout_ms = 1000;
    if (pool_new(&f->loop, &cl, &pc, &f->pl, err, sizeof err))
        fail_msg("pool_new: %s", err);
    cluster_free(&cl);
    /* wait for every expert that has a worker */
    double end = proc_now_s() + 15;
    for (;;) {
        int up = 1;
        for (int k = 0; k < K; k++)
            up &= k == dead || pool_live_replicas(f->pl, k) > 0;
        if (up)
            break;
        if (proc_now_s() > end)
            fail_msg("workers never became live");
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    engine_config c;
    engine_config_default(&c);
    if (ec)
        c = *ec;
    if (engine_new(&f->loop, f->pl, router_net, K, DIM, DIM, 1, &c, &f->e, err, sizeof err))
        fail_msg("engine_new: %s", err);
}

/* Closes what is still open (engine first, then the pool, as ddm-router does)
 * and checks the loop ends with every handle closed. */
static void fx_close(fx *f)
{
    if (f->e && !f->engine_closed)
        engine_close(f->e, set_flag, &f->engine_closed);
    if (!f->pool_closing)
        pool_close(f->pl, set_flag, &f->pool_closed);
    assert_int_equal(spin(f, &f->engine_closed, 1, 10000), 1);
    assert_int_equal(spin(f, &f->pool_closed, 1, 10000), 1);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* What a job's done callback saw. */
typedef struct outcome {
    int calls;
    int status;
    char code[64], msg[256];
    engine_job *job;
    const api_result *r;
    int release;              /* release the job inside done */
    engine *close_from_done;  /* engine_close inside done */
    int *closed_flag;
} outcome;

static void on_done(engine_job *job, void *ud, int status, const char *code, const char *msg,
                    const api_result *r)
{
    outcome *o = ud;
    o->calls++;
    o->status = status;
    o->job = job;
    o->r = r;
    snprintf(o->code, sizeof o->code, "%s", code ? code : "");
    snprintf(o->msg, sizeof o->msg, "%s", msg ? msg : "");
    if (o->close_from_done)
        engine_close(o->close_from_done, set_flag, o->closed_flag);
    if (status || o->release)
        engine_job_release(job);
}

static sample_params params(int n, int steps, const char *strategy)
{
    sample_params p;
    sample_params_default(&p, K);
    p.n = n;
    p.steps = steps;
    p.seed = 7;
    char err[128];
    assert_int_equal(strategy_parse(strategy, K, NAN, NAN, &p.strat, err, sizeof err), 0);
    return p;
}

static engine_job *submit(fx *f, const sample_params *p, outcome *o)
{
    engine_job *j = NULL;
    assert_int_equal(engine_submit(f->e, p, on_done, o, &j), 0);
    assert_non_null(j);
    return j;
}

static int ticks_run(fx *f)
{
    engine_stats st;
    engine_get_stats(f->e, &st);
    return (int)st.ticks;
}

/* Runs the loop until `want` ticks have run; fails (rather than hangs) when
 * they do not within 60 s, e.g. a job failed on a deadline under load. */
static void wait_ticks(fx *f, int want)
{
    int one = 1;
    double end = proc_now_s() + 60;
    while (ticks_run(f) < want && proc_now_s() < end)
        spin(f, &one, 2, 20);
    if (ticks_run(f) < want) {
        engine_stats st;
        engine_get_stats(f->e, &st);
        fail_msg("only %d of %d ticks ran in 60 s (jobs failed %llu, ok %llu)", ticks_run(f),
                 want, (unsigned long long)st.jobs_failed, (unsigned long long)st.jobs_ok);
    }
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_result(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, -1);
    outcome o = { .release = 0 };
    sample_params p = params(3, 4, "top-2");
    submit(&f, &p, &o);
    assert_int_equal(spin(&f, &o.calls, 1, 10000), 1);
    assert_int_equal(o.status, 0);
    assert_int_equal(o.r->p->n, 3);
    for (int i = 0; i < 3; i++) {
        assert_true(o.r->trajs[i]->done);
        for (int d = 0; d < DIM; d++)
            assert_true(isfinite(o.r->trajs[i]->x[d]));
    }
    engine_job_release(o.job);
    fx_close(&f);
}

/* A small tick planned and combined on the loop thread (inline_trajs) gives
 * the same images, bit for bit, as one that goes through the threadpool,
 * with speculation on and off. */
static void test_inline_ticks(void **state)
{
    (void)state;
    float got[4][3][DIM];
    for (int v = 0; v < 4; v++) {
        engine_config c;
        engine_config_default(&c);
        c.inline_trajs = v & 1 ? 4 : 0;
        c.speculate = v >> 1;
        fx f;
        fx_open(&f, &c, -1);
        outcome o = { 0 };
        sample_params p = params(3, 12, "top-2");
        p.label = 1;
        p.guidance = 2.0f;
        submit(&f, &p, &o);
        assert_int_equal(spin(&f, &o.calls, 1, 20000), 1);
        assert_int_equal(o.status, 0);
        for (int i = 0; i < 3; i++)
            memcpy(got[v][i], o.r->trajs[i]->x, sizeof got[v][i]);
        engine_job_release(o.job);
        fx_close(&f);
    }
    for (int v = 1; v < 4; v++)
        assert_memory_equal(got[v], got[0], sizeof got[0]);
}

/* The shutdown use-after-free: engine_close while the owner still holds a
 * result (a response being encoded) must leave the result readable and call
 * back only after the owner released it. */
static void test_close_while_result_held(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, -1);
    outcome o = { 0 };
    sample_params p = params(4, 3, "full");
    submit(&f, &p, &o);
    assert_int_equal(spin(&f, &o.calls, 1, 10000), 1);
    assert_int_equal(o.status, 0);
    engine_close(f.e, set_flag, &f.engine_closed);
    assert_int_equal(f.engine_closed, 0); /* never before it returns */
    spin_ms(&f, 200);
    assert_int_equal(f.engine_closed, 0); /* the result is still held */
    double sum = 0;
    for (int i = 0; i < 4; i++) /* readable: ASan reports a use after free here */
        for (int d = 0; d < DIM; d++)
            sum += o.r->trajs[i]->x[d];
    assert_true(isfinite(sum));
    assert_int_equal(o.calls, 1); /* a finished job is not failed again */
    engine_job_release(o.job);
    assert_int_equal(spin(&f, &f.engine_closed, 1, 5000), 1);
    f.e = NULL;
    fx_close(&f);
}

/* engine_close with work running returns without calling anything; the job
 * then gets 503 shutting_down, and the close callback comes after it. */
static void test_close_calls_back_later(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, -1);
    outcome o = { 0 };
    sample_params p = params(8, 1000, "top-2");
    submit(&f, &p, &o);
    wait_ticks(&f, 3);
    engine_close(f.e, set_flag, &f.engine_closed);
    assert_int_equal(o.calls, 0);
    assert_int_equal(f.engine_closed, 0);
    engine_job *j2;
    assert_int_equal(engine_submit(f.e, &p, on_done, &o, &j2), DDM_ECLOSED);
    assert_int_equal(spin(&f, &f.engine_closed, 1, 10000), 1);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.status, 503);
    assert_string_equal(o.code, "shutting_down");
    f.e = NULL;
    fx_close(&f);
}

/* ddm-router's order: engine_close, then pool_close at once while ticks wait
 * on experts. Everything ends, the job gets its 503 once. */
static void test_close_engine_then_pool(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, -1);
    outcome o[3] = { { 0 } };
    sample_params p = params(16, 1000, "full");
    for (int i = 0; i < 3; i++)
        submit(&f, &p, &o[i]);
    wait_ticks(&f, 2);
    engine_close(f.e, set_flag, &f.engine_closed);
    pool_close(f.pl, set_flag, &f.pool_closed);
    f.pool_closing = 1;
    assert_int_equal(spin(&f, &f.engine_closed, 1, 10000), 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].status, 503);
        assert_string_equal(o[i].code, "shutting_down");
    }
    f.e = NULL;
    fx_close(&f);
}

/* engine_close from inside a done callback (the owner decides to stop). */
static void test_close_from_done(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, -1);
    outcome a = { .release = 1 }, b = { 0 };
    a.close_from_done = f.e;
    a.closed_flag = &f.engine_closed;
    sample_params pa = params(1, 2, "top-1"), pb = params(4, 1000, "top-2");
    submit(&f, &pa, &a);
    submit(&f, &pb, &b);
    assert_int_equal(spin(&f, &f.engine_closed, 1, 10000), 1);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.status, 503);
    f.e = NULL;
    fx_close(&f);
}

/* A cancelled job is never called back, its images leave the engine, and the
 * engine goes on serving. */
static void test_cancel(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, -1);
    outcome o = { 0 };
    sample_params p = params(8, 1000, "top-2");
    engine_job *j = submit(&f, &p, &o);
    wait_ticks(&f, 2);
    engine_job_cancel(j);
    engine_stats st;
    double end = proc_now_s() + 10;
    do {
        spin_ms(&f, 20);
        engine_get_stats(f.e, &st);
    } while ((st.images_in_flight || st.ticks_running) && proc_now_s() < end);
    assert_int_equal(st.images_in_flight, 0);
    assert_int_equal(st.jobs_cancelled, 1);
    assert_int_equal(o.calls, 0);
    outcome ok = { .release = 1 };
    sample_params q = params(2, 3, "top-2");
    submit(&f, &q, &ok);
    assert_int_equal(spin(&f, &ok.calls, 1, 10000), 1);
    assert_int_equal(ok.status, 0);
    fx_close(&f);
}

static void test_timeout(void **state)
{
    (void)state;
    engine_config c;
    engine_config_default(&c);
    c.request_timeout_ms = 150;
    fx f;
    fx_open(&f, &c, -1);
    outcome o = { 0 };
    sample_params p = params(16, 1000, "full");
    submit(&f, &p, &o);
    assert_int_equal(spin(&f, &o.calls, 1, 10000), 1);
    assert_int_equal(o.status, 504);
    assert_string_equal(o.code, "timeout");
    assert_non_null(strstr(o.msg, "150 ms"));
    fx_close(&f);
}

/* An expert without a live replica fails the requests that need it (503
 * naming it) and no other. */
static void test_expert_unavailable(void **state)
{
    (void)state;
    fx f;
    fx_open(&f, NULL, 2);
    outcome bad = { 0 }, good = { .release = 1 };
    sample_params pb = params(2, 3, "expert:2"), pg = params(2, 3, "expert:0");
    submit(&f, &pb, &bad);
    submit(&f, &pg, &good);
    assert_int_equal(spin(&f, &bad.calls, 1, 10000), 1);
    assert_int_equal(spin(&f, &good.calls, 1, 10000), 1);
    assert_int_equal(bad.status, 503);
    assert_string_equal(bad.code, "expert_unavailable");
    if (!strstr(bad.msg, "expert 2"))
        fail_msg("message does not name expert 2: %s", bad.msg);
    assert_int_equal(good.status, 0);
    fx_close(&f);
}

static void test_busy(void **state)
{
    (void)state;
    engine_config c;
    engine_config_default(&c);
    c.max_images = 5;
    fx f;
    fx_open(&f, &c, -1);
    outcome a = { .release = 1 }, b = { 0 };
    sample_params p3 = params(3, 3, "top-2");
    submit(&f, &p3, &a);
    engine_job *j;
    assert_int_equal(engine_submit(f.e, &p3, on_done, &b, &j), DDM_EBUSY);
    assert_int_equal(spin(&f, &a.calls, 1, 10000), 1);
    b.release = 1;
    submit(&f, &p3, &b); /* room again once the first is done */
    assert_int_equal(spin(&f, &b.calls, 1, 10000), 1);
    fx_close(&f);
}

/* ---- scheduling ------------------------------------------------------------------------ */

static engine_config sched_config(int capacity, int share_rows, uint32_t age_ms)
{
    engine_config c;
    engine_config_default(&c);
    c.ticks_in_flight = 1; /* one tick at a time: what each tick holds is the schedule */
    c.tick_capacity = capacity;
    c.share_rows = share_rows;
    c.age_ms = age_ms;
    return c;
}

static uint64_t rows_sent(fx *f)
{
    engine_stats st;
    engine_get_stats(f->e, &st);
    return st.tick_rows;
}

/* Round robin by request: a small request that arrives behind a big one gets
 * into every tick (it once queued behind all of the big one's trajectories:
 * about 9 / 4 ticks per step here). Counted in ticks, not time. */
static void test_round_robin_by_request(void **state)
{
    (void)state;
    engine_config c = sched_config(4, 1000, 60000);
    fx f;
    fx_open(&f, &c, -1);
    outcome big = { .release = 1 }, small = { .release = 1 };
    sample_params pb = params(8, 60, "top-2"), ps = params(1, 6, "top-2");
    submit(&f, &pb, &big);
    int t0 = ticks_run(&f);
    submit(&f, &ps, &small);
    assert_int_equal(spin(&f, &small.calls, 1, 10000), 1);
    assert_int_equal(small.status, 0);
    assert_int_equal(big.calls, 0);
    int ticks = ticks_run(&f) - t0;
    if (ticks > 6 + 1) /* one per step, plus the tick in flight when it arrived */
        fail_msg("the small request took %d ticks for 6 steps", ticks);
    assert_int_equal(spin(&f, &big.calls, 1, 20000), 1);
    fx_close(&f);
}

/* While a small request runs, a big one of the same priority keeps at most
 * share_rows rows in flight (at least one trajectory), so the ticks the small
 * one waits for stay short. */
static void test_share_rows_while_sharing(void **state)
{
    (void)state;
    engine_config c = sched_config(256, 3, 60000);
    fx f;
    fx_open(&f, &c, -1);
    outcome big = { .release = 1 }, small = { .release = 1 };
    sample_params pb = params(16, 200, "full"), ps = params(1, 10, "top-1");
    submit(&f, &pb, &big); /* K = 3 rows per image and step: 48 rows a tick alone */
    wait_ticks(&f, 2);
    uint64_t r0 = rows_sent(&f);
    int t0 = ticks_run(&f);
    submit(&f, &ps, &small);
    assert_int_equal(spin(&f, &small.calls, 1, 10000), 1);
    uint64_t rows = rows_sent(&f) - r0;
    int ticks = ticks_run(&f) - t0;
    /* the tick in flight when it came (<= 48 rows), then 3 + 1 rows per tick */
    if (rows > 48 + (uint64_t)ticks * 4)
        fail_msg("%llu rows in %d ticks while sharing", (unsigned long long)rows, ticks);
    assert_true(ticks <= 10 + 1);
    /* alone again, the big one fills its ticks */
    uint64_t r1 = rows_sent(&f);
    int t1 = ticks_run(&f);
    wait_ticks(&f, t1 + 3);
    assert_true(rows_sent(&f) - r1 >= 3 * 40);
    assert_int_equal(spin(&f, &big.calls, 1, 20000), 1);
    fx_close(&f);
}

/* Two big requests do not hold each other back (the share is for smaller
 * ones): together they fill ticks as one would. Counted over the whole run,
 * not a window of it (on the loop thread many ticks can run between two
 * looks): both 50-step requests in ~50 ticks, where taking turns would need
 * ~100. */
static void test_big_requests_not_throttled(void **state)
{
    (void)state;
    engine_config c = sched_config(256, 3, 60000);
    fx f;
    fx_open(&f, &c, -1);
    outcome a = { .release = 1 }, b = { .release = 1 };
    sample_params p = params(16, 50, "full");
    submit(&f, &p, &a);
    submit(&f, &p, &b);
    assert_int_equal(spin(&f, &a.calls, 1, 60000), 1);
    assert_int_equal(spin(&f, &b.calls, 1, 60000), 1);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    int ticks = ticks_run(&f);
    if (ticks > 55)
        fail_msg("two 50-step requests took %d ticks: they took turns", ticks);
    assert_true(rows_sent(&f) >= 50 * 96); /* both whole: 2 x 16 images x 3 experts */
    fx_close(&f);
}

/* Higher priority gets tick capacity first: a later request of priority 5
 * finishes before an earlier one of priority 0 that it shares ticks with. */
static void test_priority_first(void **state)
{
    (void)state;
    engine_config c = sched_config(4, 1000, 60000);
    fx f;
    fx_open(&f, &c, -1);
    outcome lo = { .release = 1 }, hi = { .release = 1 };
    sample_params pl = params(4, 20, "top-2"), ph = params(4, 20, "top-2");
    ph.priority = 5;
    submit(&f, &pl, &lo);
    submit(&f, &ph, &hi);
    assert_int_equal(spin(&f, &hi.calls, 1, 10000), 1);
    assert_int_equal(lo.calls, 0);
    assert_int_equal(spin(&f, &lo.calls, 1, 10000), 1);
    assert_int_equal(lo.status, 0);
    fx_close(&f);
}

/* Ageing: a low-priority request is not starved by a long high-priority one:
 * every age_ms of waiting lifts it by one level. */
static void test_ageing_prevents_starvation(void **state)
{
    (void)state;
    engine_config c = sched_config(4, 1000, 2);
    fx f;
    fx_open(&f, &c, -1);
    outcome lo = { .release = 1 }, hi = { .release = 1 };
    sample_params ph = params(4, 1000, "top-2"), pl = params(4, 3, "top-2");
    ph.sampler = SAMPLER_HEUN; /* 2,000 ticks of all the capacity */
    ph.priority = 2;
    submit(&f, &ph, &hi);
    submit(&f, &pl, &lo);
    assert_int_equal(spin(&f, &lo.calls, 1, 20000), 1);
    assert_int_equal(lo.status, 0);
    assert_int_equal(hi.calls, 0); /* got its turns long before the long one ended */
    assert_int_equal(spin(&f, &hi.calls, 1, 60000), 1);
    fx_close(&f);
}

/* The cost of a request in expert evaluations, and the refusals. */
static void test_cost_and_check(void **state)
{
    (void)state;
    engine_config c;
    engine_config_default(&c);
    c.max_images = 8;
    c.max_request_cost = 1000;
    fx f;
    fx_open(&f, &c, -1);
    sample_params p = params(2, 10, "full");
    assert_int_equal(sample_cost(&p, K), 2 * 10 * K);
    p.label = 1;
    assert_int_equal(sample_cost(&p, K), 2 * 10 * K); /* guidance 1: one row */
    p.guidance = 2;
    assert_int_equal(sample_cost(&p, K), 2 * 10 * K * 2);
    p.sampler = SAMPLER_HEUN;
    assert_int_equal(sample_cost(&p, K), 2 * 20 * K * 2);
    sample_params q = params(2, 10, "top-2");
    assert_int_equal(sample_cost(&q, K), 2 * 10 * 2);
    q = params(2, 10, "expert:1");
    assert_int_equal(sample_cost(&q, K), 2 * 10);
    q = params(2, 10, "sample");
    assert_int_equal(sample_cost(&q, K), 2 * 10);
    q = params(2, 10, "nucleus");
    assert_int_equal(sample_cost(&q, K), 2 * 10 * K);
    const char *code;
    char err[512];
    assert_int_equal(engine_check(f.e, &p, &code, err, sizeof err), 0); /* 240 */
    sample_params big = params(4, 50, "full");
    big.label = 2, big.guidance = 3;
    assert_int_equal(engine_check(f.e, &big, &code, err, sizeof err), DDM_ERANGE);
    assert_string_equal(code, "too_much_work");
    if (!strstr(err, "1200") || !strstr(err, "1000") ||
        !strstr(err, "4 images x 50 steps x 3 experts (full) x 2 (guidance with a label)"))
        fail_msg("message: %s", err);
    sample_params many = params(9, 1, "top-1");
    assert_int_equal(engine_check(f.e, &many, &code, err, sizeof err), DDM_ERANGE);
    assert_string_equal(code, "too_many_images");
    assert_non_null(strstr(err, "8"));
    engine_job *j;
    outcome o = { 0 };
    assert_int_equal(engine_submit(f.e, &many, on_done, &o, &j), DDM_ERANGE);
    assert_int_equal(engine_check(f.e, &q, &code, err, sizeof err), 0);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_result),
        cmocka_unit_test(test_inline_ticks),
        cmocka_unit_test(test_close_while_result_held),
        cmocka_unit_test(test_close_calls_back_later),
        cmocka_unit_test(test_close_engine_then_pool),
        cmocka_unit_test(test_close_from_done),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_expert_unavailable),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_round_robin_by_request),
        cmocka_unit_test(test_share_rows_while_sharing),
        cmocka_unit_test(test_big_requests_not_throttled),
        cmocka_unit_test(test_priority_first),
        cmocka_unit_test(test_ageing_prevents_starvation),
        cmocka_unit_test(test_cost_and_check),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
