/* test_http.c -- the HTTP server (server/http.h) and client (server/httpc.h) over
 * real loopback sockets: a server runs on 127.0.0.1:0 in its own uv loop thread,
 * the test thread talks to it with httpc (well-formed and hostile requests). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "common/err.h"
#include "server/http.h"
#include "server/httpc.h"

/* ---- fixture: server in a loop thread ----------------------------------------- */

typedef struct slow_job slow_job;

typedef struct fx {
    uv_loop_t loop;
    uv_async_t wake;             /* runs stop / call requests on the loop thread */
    http_server *srv;
    pthread_t th;
    char addr[64];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;                    /* under mu */
    void (*call_fn)(struct fx *f); /* under mu */
    int call_done;
    http_stats stats;            /* filled by the call */
    slow_job *jobs;              /* loop thread only */
    atomic_int slow_started;
    atomic_int aborted;
    atomic_int late_done;
    atomic_int late_rc;
    atomic_int server_closed;
    int stopped;                 /* test thread only */
    uint64_t count404;
} fx;

struct slow_job {
    uv_timer_t timer;
    http_req *req;               /* NULL once finished */
    fx *f;
    int ms;
    slow_job *next;
};

static void job_closed(uv_handle_t *h) { free(h->data); }

static void job_unlink(fx *f, slow_job *j)
{
    for (slow_job **pp = &f->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            return;
        }
}

static void slow_fire(uv_timer_t *t)
{
    slow_job *j = t->data;
    char body[64];
    int n = snprintf(body, sizeof body, "slow %d", j->ms);
    int aborted = http_req_aborted(j->req);
    int rc = http_respond(j->req, 200, "text/plain", body, (size_t)n);
    j->req = NULL;
    if (aborted) {
        atomic_store(&j->f->late_rc, rc);
        atomic_fetch_add(&j->f->late_done, 1);
    }
    job_unlink(j->f, j);
    uv_close((uv_handle_t *)&j->timer, job_closed);
}

static void slow_abort(http_req *req, void *ud)
{
    (void)req;
    fx *f = ud;
    atomic_fetch_add(&f->aborted, 1);
    /* deliberately keep the job: the timer answers later and that must be a no-op */
}

/* GET /slow?ms=N: answers "slow N" after N ms from a timer. */
static void h_slow(http_req *req, void *ud)
{
    fx *f = ud;
    slow_job *j = calloc(1, sizeof *j);
    assert_non_null(j);
    j->f = f;
    j->req = req;
    j->ms = atoi(http_req_query(req) + 3);
    uv_timer_init(&f->loop, &j->timer);
    j->timer.data = j;
    uv_timer_start(&j->timer, slow_fire, (uint64_t)j->ms, 0);
    j->next = f->jobs;
    f->jobs = j;
    http_req_on_abort(req, slow_abort, f);
    atomic_fetch_add(&f->slow_started, 1);
}

static void h_hello(http_req *req, void *ud)
{
    (void)ud;
    http_resp_header(req, "X-Test", "yes");
    http_respond(req, 200, "text/plain", "hello", 5);
}

/* POST /echo: body back, with the request's content type and query in headers. */
static void h_echo(http_req *req, void *ud)
{
    (void)ud;
    size_t len;
    const uint8_t *b = http_req_body(req, &len);
    const char *ct = http_req_header(req, "content-type");
    http_resp_header(req, "X-Query", http_req_query(req));
    char n[32];
    snprintf(n, sizeof n, "%zu", http_req_header_count(req));
    http_resp_header(req, "X-Header-Count", n);
    http_respond(req, 200, ct ? ct : "application/octet-stream", b, len);
}

/* GET /big[?kb=N]: 4 MiB (or N KiB) of 'x', ownership transferred. */
static void h_big(http_req *req, void *ud)
{
    (void)ud;
    const char *q = http_req_query(req);
    size_t n = strncmp(q, "kb=", 3) == 0 ? (size_t)atoi(q + 3) << 10 : 4u << 20;
    char *b = malloc(n);
    assert_non_null(b);
    memset(b, 'x', n);
    http_respond_owned(req, 200, "application/octet-stream", b, n);
}

/* GET /busy: 503 + Retry-After; /busy?long: a 5000-character message to escape */
static void h_busy(http_req *req, void *ud)
{
    (void)ud;
    http_resp_retry_after(req, 3);
    if (!strcmp(http_req_query(req), "long")) {
        char msg[5001];
        for (int i = 0; i < 5000; i++)
            msg[i] = i % 2 ? '"' : 'm';
        msg[5000] = '\0';
        http_respond_error(req, 503, "busy", msg);
        return;
    }
    http_respond_error(req, 503, "busy", "queue \"full\"\nretry");
}

static void on_server_closed(void *ud)
{
    fx *f = ud;
    atomic_store(&f->server_closed, 1);
}

static void wake_cb(uv_async_t *a)
{
    fx *f = a->data;
    pthread_mutex_lock(&f->mu);
    void (*fn)(fx *) = f->call_fn;
    int stop = f->stop;
    pthread_mutex_unlock(&f->mu);
    if (fn) {
        fn(f);
        pthread_mutex_lock(&f->mu);
        f->call_fn = NULL;
        f->call_done = 1;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
    }
    if (stop) {
        http_server_close(f->srv, on_server_closed, f);
        f->srv = NULL;
        /* jobs still pending: their requests were aborted above; finish them */
        while (f->jobs) {
            slow_job *j = f->jobs;
            f->jobs = j->next;
            uv_timer_stop(&j->timer);
            if (j->req)
                http_req_drop(j->req);
            uv_close((uv_handle_t *)&j->timer, job_closed);
        }
        uv_close((uv_handle_t *)&f->wake, NULL);
    }
}

static void *loop_main(void *arg)
{
    fx *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Runs fn on the loop thread and waits for it. */
static void fx_call(fx *f, void (*fn)(fx *f))
{
    pthread_mutex_lock(&f->mu);
    f->call_fn = fn;
    f->call_done = 0;
    uv_async_send(&f->wake);
    while (!f->call_done)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

static void grab_stats(fx *f) { http_server_stats(f->srv, &f->stats); }

static void grab_404(fx *f) { f->count404 = http_server_status_count(f->srv, 404); }

static http_stats fx_stats(fx *f)
{
    fx_call(f, grab_stats);
    return f->stats;
}

static int fx_start(void **state, const http_config *cfg)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_async_init(&f->loop, &f->wake, wake_cb), 0);
    f->wake.data = f;
    assert_int_equal(http_server_new(&f->loop, cfg, &f->srv), 0);
    assert_int_equal(http_server_route(f->srv, "GET", "/hello", h_hello, f), 0);
    assert_int_equal(http_server_route(f->srv, "POST", "/echo", h_echo, f), 0);
    assert_int_equal(http_server_route(f->srv, "PUT", "/echo", h_echo, f), 0);
    assert_int_equal(http_server_route(f->srv, "GET", "/slow", h_slow, f), 0);
    assert_int_equal(http_server_route(f->srv, "GET", "/big", h_big, f), 0);
    assert_int_equal(http_server_route(f->srv, "GET", "/busy", h_busy, f), 0);
    assert_int_equal(http_server_route_always(f->srv, "GET", "/health", h_hello, f), 0);
    assert_int_equal(http_server_route(f->srv, "get", "/x", h_hello, f), DDM_EINVAL);
    assert_int_equal(http_server_route(f->srv, "GET", "x", h_hello, f), DDM_EINVAL);
    char err[200];
    assert_true(http_server_port(f->srv) < 0);
    int rc = http_server_listen(f->srv, "127.0.0.1:0", err, sizeof err);
    if (rc != 0)
        fail_msg("listen: %s", err);
    int port = http_server_port(f->srv);
    assert_true(port > 0);
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", port);
    assert_int_equal(pthread_create(&f->th, NULL, loop_main, f), 0);
    *state = f;
    return 0;
}

static http_config test_config(void)
{
    http_config c;
    http_config_default(&c);
    c.max_body_bytes = 1u << 20;
    c.max_header_bytes = 8192;
    c.header_timeout_ms = 700;
    c.body_timeout_ms = 700;
    c.idle_timeout_ms = 5000;
    return c;
}

static int setup(void **state)
{
    http_config c = test_config();
    return fx_start(state, &c);
}

static int setup_idle(void **state)
{
    http_config c = test_config();
    c.header_timeout_ms = 10000; /* idle connections must stay for this test */
    c.max_connections_per_ip = 1024;
    return fx_start(state, &c);
}

static int setup_maxconn(void **state)
{
    http_config c = test_config();
    c.max_connections = 4;
    c.header_timeout_ms = 10000;
    c.near_cap_timeout_ms = 300;
    return fx_start(state, &c);
}

static int setup_per_ip(void **state)
{
    http_config c = test_config();
    c.max_connections_per_ip = 2;
    return fx_start(state, &c);
}

/* Stops the server and the loop thread; checks everything was closed. */
static void fx_stop(fx *f)
{
    if (f->stopped)
        return;
    f->stopped = 1;
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_mutex_unlock(&f->mu);
    uv_async_send(&f->wake);
    pthread_join(f->th, NULL);
    assert_int_equal(atomic_load(&f->server_closed), 1);
    assert_int_equal(uv_loop_close(&f->loop), 0); /* every handle was closed */
}

static int setup_short_idle(void **state)
{
    http_config c = test_config();
    c.idle_timeout_ms = 300;
    return fx_start(state, &c);
}

static int teardown(void **state)
{
    fx *f = *state;
    fx_stop(f);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
    return 0;
}

/* ---- helpers ---------------------------------------------------------------- */

static int64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* Waits until *v >= want, up to ms; returns the final value. */
static int wait_atomic(atomic_int *v, int want, int ms)
{
    int64_t end = ms_now() + ms;
    while (atomic_load(v) < want && ms_now() < end)
        sleep_ms(5);
    return atomic_load(v);
}

static httpc *client(fx *f)
{
    httpc *c;
    char err[200];
    assert_int_equal(httpc_open(f->addr, 15000, &c, err, sizeof err), 0);
    return c;
}

static int status_of(const char *raw)
{
    int st = 0;
    if (!raw || sscanf(raw, "HTTP/1.1 %d", &st) != 1)
        return -1;
    return st;
}

/* Sends raw bytes on a fresh connection and returns the first response. */
static void raw_request(fx *f, const char *bytes, size_t len, httpc_response *r)
{
    httpc *c = client(f);
    assert_int_equal(httpc_send_raw(c, bytes, len), 0);
    assert_int_equal(httpc_read_response(c, 0, r), 0);
    httpc_close(c);
}

static void assert_json_error(const httpc_response *r, int status, const char *code)
{
    assert_int_equal(r->status, status);
    assert_string_equal(httpc_response_header(r, "Content-Type"), "application/json");
    char want[96];
    snprintf(want, sizeof want, "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
    if (strncmp(r->body, want, strlen(want)) != 0)
        fail_msg("body %s does not start with %s", r->body, want);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_get_post_roundtrip(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_int_equal(r.body_len, 5);
    assert_string_equal(httpc_response_header(&r, "x-test"), "yes");
    assert_string_equal(httpc_response_header(&r, "content-type"), "text/plain");
    httpc_response_free(&r);

    const char *json = "{\"n\": 2, \"strategy\": \"top-2\"}";
    httpc_header h[] = { { "Content-Type", "application/json" }, { "X-Extra", "  padded  " } };
    assert_int_equal(httpc_request(c, "POST", "/echo?a=1&b=2", h, 2, json, strlen(json), &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, json);
    assert_string_equal(httpc_response_header(&r, "Content-Type"), "application/json");
    assert_string_equal(httpc_response_header(&r, "X-Query"), "a=1&b=2");
    assert_string_equal(httpc_response_header(&r, "X-Header-Count"), "4"); /* Host, 2, CL */
    httpc_response_free(&r);

    /* empty POST body with Content-Length: 0 */
    assert_int_equal(httpc_request(c, "POST", "/echo", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_string_equal(r.body, "");
    httpc_response_free(&r);

    /* a 4 MiB response whose buffer was handed over */
    assert_int_equal(httpc_request(c, "GET", "/big", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 4u << 20);
    assert_int_equal(r.body[0], 'x');
    assert_int_equal(r.body[r.body_len - 1], 'x');
    httpc_response_free(&r);

    /* error helper: escaping and Retry-After */
    assert_int_equal(httpc_request(c, "GET", "/busy", NULL, 0, NULL, 0, &r), 0);
    assert_json_error(&r, 503, "busy");
    assert_string_equal(r.body,
                        "{\"error\":{\"code\":\"busy\",\"message\":\"queue \\\"full\\\"\\nretry\"}}\n");
    assert_string_equal(httpc_response_header(&r, "Retry-After"), "3");
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "GET", "/busy?long", NULL, 0, NULL, 0, &r), 0);
    assert_json_error(&r, 503, "busy");
    /* 2500 'm' + 2500 escaped quotes (2 bytes each) + framing */
    assert_int_equal(r.body_len, strlen("{\"error\":{\"code\":\"busy\",\"message\":\"\"}}\n") + 7500);
    assert_string_equal(r.body + r.body_len - 4, "\"}}\n");
    httpc_response_free(&r);
    httpc_close(c);

    http_stats st = fx_stats(f);
    assert_true(st.requests_total >= 5);
    assert_true(st.responses[2] >= 4);
    assert_true(st.responses[5] >= 1);
}

static void test_keepalive_reuse(void **state)
{
    fx *f = *state;
    http_stats before = fx_stats(f);
    httpc *c = client(f);
    httpc_response r;
    int fd = -1;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
        assert_int_equal(r.status, 200);
        assert_true(r.keep_alive);
        assert_null(httpc_response_header(&r, "Connection"));
        httpc_response_free(&r);
        if (i == 0)
            fd = httpc_fd(c);
        assert_int_equal(httpc_fd(c), fd);
    }
    http_stats after = fx_stats(f);
    assert_int_equal(after.connections_total - before.connections_total, 1);
    assert_int_equal(after.requests_total - before.requests_total, 5);

    /* Connection: close from the client: answered, then the server closes */
    httpc_header h = { "Connection", "close" };
    assert_int_equal(httpc_request(c, "GET", "/hello", &h, 1, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_false(r.keep_alive);
    assert_string_equal(httpc_response_header(&r, "Connection"), "close");
    httpc_response_free(&r);
    assert_int_equal(httpc_fd(c), -1);
    httpc_close(c);

    /* HTTP/1.0: close by default, keep-alive on request */
    c = client(f);
    const char *r10 = "GET /hello HTTP/1.0\r\n\r\n";
    assert_int_equal(httpc_send_raw(c, r10, strlen(r10)), 0);
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_string_equal(httpc_response_header(&r, "Connection"), "close");
    httpc_response_free(&r);
    httpc_close(c);

    c = client(f);
    const char *r10k = "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    assert_int_equal(httpc_send_raw(c, r10k, strlen(r10k)), 0);
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_string_equal(httpc_response_header(&r, "Connection"), "keep-alive");
    httpc_response_free(&r);
    assert_int_equal(httpc_send_raw(c, r10k, strlen(r10k)), 0);
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    assert_int_equal(httpc_wait_closed(c, 200), 0); /* still open */
    httpc_close(c);

    /* reused connection closed by the server meanwhile: the client retries once */
    c = client(f);
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    httpc_response_free(&r);
    shutdown(httpc_fd(c), SHUT_WR); /* server sees EOF and closes; we keep the fd */
    sleep_ms(100);
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
}

static void test_pipelined_in_order(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    /* the first answers 300 ms later than the second: order must still hold */
    const char *two = "GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n"
                      "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                      "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
    int64_t t0 = ms_now();
    assert_int_equal(httpc_send_raw(c, two, strlen(two)), 0);
    httpc_response r;
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow 300");
    assert_true(ms_now() - t0 >= 290);
    httpc_response_free(&r);
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_string_equal(r.body, "hello");
    httpc_response_free(&r);
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_string_equal(r.body, "abc");
    httpc_response_free(&r);

    /* more than max_pipelined (16) at once: parser pauses and resumes */
    enum { N = 50 };
    char *many = malloc(N * 64);
    assert_non_null(many);
    size_t len = 0;
    for (int i = 0; i < N; i++)
        len += (size_t)sprintf(many + len, "POST /echo?%d HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n%02d",
                               i, i);
    assert_int_equal(httpc_send_raw(c, many, len), 0);
    free(many);
    for (int i = 0; i < N; i++) {
        assert_int_equal(httpc_read_response(c, 0, &r), 0);
        char want[8];
        snprintf(want, sizeof want, "%02d", i);
        assert_string_equal(r.body, want);
        httpc_response_free(&r);
    }
    /* the connection is still good */
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
}

static void test_chunked_body(void **state)
{
    fx *f = *state;
    const char *req = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Type: text/plain\r\n\r\n"
                      "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
    httpc_response r;
    raw_request(f, req, strlen(req), &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello world");
    httpc_response_free(&r);

    /* chunked request split into many tiny writes */
    httpc *c = client(f);
    const char *parts[] = { "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Enc", "oding: chunked\r\n\r\n3\r",
                            "\nabc\r\n", "2\r\nde\r\n0\r\n", "\r\n" };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        assert_int_equal(httpc_send_raw(c, parts[i], strlen(parts[i])), 0);
        sleep_ms(20);
    }
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "abcde");
    httpc_response_free(&r);
    httpc_close(c);

    /* chunked body over max_body_bytes (1 MiB): 413 */
    size_t chunk = 256 * 1024;
    char *big = malloc(chunk * 5 + 1024);
    assert_non_null(big);
    size_t n = (size_t)sprintf(big, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 5; i++) {
        n += (size_t)sprintf(big + n, "%zx\r\n", chunk);
        memset(big + n, 'a', chunk);
        n += chunk;
        n += (size_t)sprintf(big + n, "\r\n");
    }
    n += (size_t)sprintf(big + n, "0\r\n\r\n");
    char *out;
    size_t outlen;
    assert_int_equal(httpc_raw(f->addr, big, n, 3000, &out, &outlen), 0);
    assert_int_equal(status_of(out), 413);
    free(out);
    free(big);
}

static void test_not_found_and_method(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/nope", NULL, 0, NULL, 0, &r), 0);
    assert_json_error(&r, 404, "not_found");
    assert_true(r.keep_alive);
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "DELETE", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_json_error(&r, 405, "method_not_allowed");
    assert_string_equal(httpc_response_header(&r, "Allow"), "GET, HEAD");
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "GET", "/echo", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 405);
    assert_string_equal(httpc_response_header(&r, "Allow"), "POST, PUT");
    httpc_response_free(&r);
    /* HEAD runs the GET handler without a body */
    assert_int_equal(httpc_request(c, "HEAD", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(httpc_response_header(&r, "Content-Length"), "5");
    assert_int_equal(r.body_len, 0);
    httpc_response_free(&r);
    /* and the connection survived all of it */
    assert_int_equal(httpc_request(c, "GET", "/hello?x", NULL, 0, NULL, 0, &r), 0);
    assert_string_equal(r.body, "hello");
    httpc_response_free(&r);
    httpc_close(c);
    fx_call(f, grab_404);
    assert_int_equal(f->count404, 1);
    http_stats st = fx_stats(f);
    assert_true(st.responses[4] >= 3);
}

static void test_body_too_large(void **state)
{
    fx *f = *state;
    /* declared length over the limit: refused before the body is read */
    const char *hdr = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n";
    httpc_response r;
    raw_request(f, hdr, strlen(hdr), &r);
    assert_json_error(&r, 413, "body_too_large");
    assert_false(r.keep_alive);
    httpc_response_free(&r);

    /* the whole body sent anyway: still a clean 413 (lingering close, no reset) */
    size_t n = 2u << 20;
    char *body = malloc(n);
    assert_non_null(body);
    memset(body, 'z', n);
    httpc *c = client(f);
    httpc_header h = { "Content-Type", "text/plain" };
    assert_int_equal(httpc_request(c, "PUT", "/echo", &h, 1, body, n, &r), 0);
    assert_int_equal(r.status, 413);
    httpc_response_free(&r);
    /* exactly the limit passes */
    assert_int_equal(httpc_request(c, "PUT", "/echo", &h, 1, body, 1u << 20, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 1u << 20);
    httpc_response_free(&r);
    httpc_close(c);
    free(body);
}

static void test_headers_too_large(void **state)
{
    fx *f = *state;
    size_t n = 20000;
    static char req[20200];
    size_t len = (size_t)sprintf(req, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + len, 'h', n);
    len += n;
    len += (size_t)sprintf(req + len, "\r\n\r\n");
    httpc_response r;
    raw_request(f, req, len, &r);
    assert_json_error(&r, 431, "headers_too_large");
    httpc_response_free(&r);

    /* too many small headers */
    len = (size_t)sprintf(req, "GET /hello HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 150; i++)
        len += (size_t)sprintf(req + len, "X-%d: 1\r\n", i);
    len += (size_t)sprintf(req + len, "\r\n");
    raw_request(f, req, len, &r);
    assert_int_equal(r.status, 431);
    httpc_response_free(&r);

    /* a huge URL */
    len = (size_t)sprintf(req, "GET /");
    memset(req + len, 'u', 10000);
    len += 10000;
    len += (size_t)sprintf(req + len, " HTTP/1.1\r\nHost: t\r\n\r\n");
    raw_request(f, req, len, &r);
    assert_int_equal(r.status, 414);
    httpc_response_free(&r);
}

static void test_malformed(void **state)
{
    fx *f = *state;
    static const char garbage[] = "\x01\x02\xff garbage \x00\r\n\r\n";
    httpc_response r;
    raw_request(f, garbage, sizeof garbage - 1, &r);
    assert_json_error(&r, 400, "bad_request");
    httpc_response_free(&r);

    const char *cases[][2] = {
        { "GET /hello HTTP/9.9\r\n\r\n", "400" },
        { "GET /hello HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", "400" },
        { "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "400" },
        { "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", "400" },
        { "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400" },
        { "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", "501" },
        { "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "501" },
        { "POST /echo HTTP/1.1\r\nHost: t\r\n\r\n", "411" },
        /* HTTP/1.1 needs exactly one Host (they were accepted without) */
        { "GET /hello HTTP/1.1\r\n\r\n", "400" },
        { "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out;
        size_t outlen;
        assert_int_equal(httpc_raw(f->addr, cases[i][0], strlen(cases[i][0]), 3000, &out, &outlen),
                         0);
        if (status_of(out) != atoi(cases[i][1]))
            fail_msg("case %zu: want %s, got: %.80s", i, cases[i][1], out);
        assert_non_null(strstr(out, "\"error\""));
        assert_non_null(strstr(out, "Connection: close"));
        free(out);
    }
    char *out;
    size_t outlen;
    const char *old = "GET /hello HTTP/1.0\r\n\r\n"; /* HTTP/1.0 needs no Host */
    assert_int_equal(httpc_raw(f->addr, old, strlen(old), 3000, &out, &outlen), 0);
    assert_int_equal(status_of(out), 200);
    free(out);
    /* an earlier good request on the same connection is still answered, in order */
    const char *mix = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\nBLAH\x01\r\n\r\n";
    assert_int_equal(httpc_raw(f->addr, mix, strlen(mix), 3000, &out, &outlen), 0);
    assert_int_equal(status_of(out), 200);
    char *second = strstr(out + 1, "HTTP/1.1 ");
    assert_non_null(second);
    assert_int_equal(status_of(second), 400);
    free(out);
    http_stats st = fx_stats(f);
    assert_true(st.parse_errors >= 6);
}

static void test_slow_headers_timeout(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    const char *part = "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    int64_t t0 = ms_now();
    assert_int_equal(httpc_send_raw(c, part, strlen(part)), 0);
    /* trickle one byte every 100 ms: must not extend the deadline */
    int sent = 0;
    while (ms_now() - t0 < 4000) {
        if (httpc_send_raw(c, "a", 1) != 0)
            break;
        sent++;
        sleep_ms(100);
        if (httpc_wait_closed(c, 0) != 0)
            break;
    }
    /* the 408 may already have been consumed by wait_closed; read what is left */
    int64_t elapsed = ms_now() - t0;
    assert_true(elapsed < 3000); /* configured 700 ms + slack for a loaded machine */
    assert_true(elapsed >= 600);
    httpc_close(c);

    /* and the 408 response itself */
    char *out;
    size_t outlen;
    t0 = ms_now();
    assert_int_equal(httpc_raw(f->addr, part, strlen(part), 3000, &out, &outlen), 0);
    elapsed = ms_now() - t0;
    assert_int_equal(status_of(out), 408);
    assert_non_null(strstr(out, "\"timeout\""));
    assert_true(elapsed >= 600 && elapsed < 3000);
    free(out);

    /* body that stops halfway: 408 after the body timeout */
    const char *half = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-some";
    assert_int_equal(httpc_raw(f->addr, half, strlen(half), 3000, &out, &outlen), 0);
    assert_int_equal(status_of(out), 408);
    free(out);

    /* a connection that never says anything is closed silently */
    c = client(f);
    assert_int_equal(httpc_connect(c), 0);
    assert_int_equal(httpc_wait_closed(c, 5000), 1);
    httpc_close(c);
    http_stats st = fx_stats(f);
    assert_true(st.timeouts >= 3);
}

/* Opens a connection whose request stays in its handler for ms. */
static httpc *busy_client(fx *f, int ms)
{
    httpc *c = client(f);
    char req[64];
    snprintf(req, sizeof req, "GET /slow?ms=%d HTTP/1.1\r\nHost: t\r\n\r\n", ms);
    assert_int_equal(httpc_send_raw(c, req, strlen(req)), 0);
    return c;
}

/* At the cap with every connection busy, a new one is a reserve connection:
 * health routes answer, anything else gets 503 + Retry-After and a close. */
static void test_max_connections(void **state)
{
    fx *f = *state;
    httpc *held[4];
    httpc_response r;
    for (int i = 0; i < 4; i++)
        held[i] = busy_client(f, 1500);
    assert_int_equal(wait_atomic(&f->slow_started, 4, 10000), 4);
    httpc *extra = client(f);
    assert_int_equal(httpc_request(extra, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_json_error(&r, 503, "overloaded");
    assert_string_equal(httpc_response_header(&r, "Retry-After"), "1");
    assert_false(r.keep_alive);
    httpc_response_free(&r);
    httpc_close(extra);
    extra = client(f); /* the health probe still answers */
    assert_int_equal(httpc_request(extra, "GET", "/health", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(extra);
    /* the held ones finish; idle now, the oldest makes room for a new client */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(httpc_read_response(held[i], 0, &r), 0);
        assert_int_equal(r.status, 200);
        httpc_response_free(&r);
    }
    extra = client(f);
    assert_int_equal(httpc_request(extra, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(extra);
    for (int i = 0; i < 4; i++)
        httpc_close(held[i]);
    http_stats st = fx_stats(f);
    assert_true(st.connections_rejected >= 2);
}

/* Connections that never send a request do not lock others out: at the cap a
 * new connection evicts the one silent longest, and near the cap silent ones
 * are closed after near_cap_timeout_ms (here 300) instead of header_timeout_ms
 * (10 s). */
static void test_silent_connections_evicted(void **state)
{
    fx *f = *state;
    httpc *silent[4];
    for (int i = 0; i < 4; i++) {
        silent[i] = client(f);
        assert_int_equal(httpc_connect(silent[i]), 0);
    }
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    http_stats st = fx_stats(f);
    assert_true(st.connections_evicted >= 1);
    /* 3 silent + c: near the cap (7/8 of 4), so silent ones are closed after 300 ms
     * (not header_timeout_ms, 10 s) until the count is below it: 2 of the 4 are gone
     * (one evicted, one timed out) well before 10 s */
    int closed = 0;
    for (int i = 0; i < 4; i++)
        closed += httpc_wait_closed(silent[i], i < 2 ? 3000 : 300) == 1;
    if (closed < 2)
        fail_msg("%d of 4 silent connections closed", closed);
    httpc_close(c);
    for (int i = 0; i < 4; i++)
        httpc_close(silent[i]);
}

/* The per-address cap (2 here): a third busy connection from 127.0.0.1 is a
 * reserve connection, while the global cap is far away. */
static void test_per_ip_cap(void **state)
{
    fx *f = *state;
    httpc *a = busy_client(f, 1000), *b = busy_client(f, 1000);
    assert_int_equal(wait_atomic(&f->slow_started, 2, 30000), 2);
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_json_error(&r, 503, "overloaded");
    httpc_response_free(&r);
    httpc_close(c);
    c = client(f);
    assert_int_equal(httpc_request(c, "GET", "/health", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
    httpc_close(a);
    httpc_close(b);
}

/* A declared Content-Length reserves no more than a first buffer: the body's
 * memory grows with the bytes that arrive (it was allocated whole from the
 * headers: 16 pipelined requests x every connection x the body limit). */
static void test_body_grows_as_it_arrives(void **state)
{
    fx *f = *state;
    enum { N = 20 };
    httpc *c[N];
    const char *head = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n0123456789";
    for (int i = 0; i < N; i++) {
        c[i] = client(f);
        assert_int_equal(httpc_send_raw(c[i], head, strlen(head)), 0);
    }
    http_stats st;
    int64_t end = ms_now() + 5000;
    do {
        st = fx_stats(f);
    } while (st.bytes_in < N * strlen(head) && ms_now() < end && (sleep_ms(10), 1));
    assert_true(st.body_bytes_receiving > 0);
    if (st.body_bytes_receiving > (uint64_t)N * 16384)
        fail_msg("%llu bytes held for %d bodies of 10 bytes so far",
                 (unsigned long long)st.body_bytes_receiving, N);
    /* one body sent whole still arrives whole */
    static char rest[1000000 - 10];
    memset(rest, 'x', sizeof rest);
    assert_int_equal(httpc_send_raw(c[0], rest, sizeof rest), 0);
    httpc_response r;
    assert_int_equal(httpc_read_response(c[0], 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 1000000);
    httpc_response_free(&r);
    for (int i = 0; i < N; i++)
        httpc_close(c[i]);
    end = ms_now() + 5000;
    do {
        st = fx_stats(f);
    } while (st.body_bytes_receiving && ms_now() < end && (sleep_ms(10), 1));
    assert_int_equal(st.body_bytes_receiving, 0);
}

static void test_disconnect_with_pending_response(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    const char *req = "GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(httpc_send_raw(c, req, strlen(req)), 0);
    assert_int_equal(wait_atomic(&f->slow_started, 1, 10000), 1);
    httpc_close(c); /* client gone while the handler works */
    assert_int_equal(wait_atomic(&f->aborted, 1, 10000), 1);
    /* the timer answers later: must be a no-op returning DDM_ECLOSED */
    assert_int_equal(wait_atomic(&f->late_done, 1, 10000), 1);
    assert_int_equal(atomic_load(&f->late_rc), DDM_ECLOSED);

    /* disconnect mid-body and mid-response: the server carries on */
    const char *half = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789";
    c = client(f);
    assert_int_equal(httpc_send_raw(c, half, strlen(half)), 0);
    httpc_close(c);
    for (int i = 0; i < 3; i++) {
        c = client(f);
        const char *big = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n";
        assert_int_equal(httpc_send_raw(c, big, strlen(big)), 0);
        char tmp[1000];
        if (i)
            (void)!recv(httpc_fd(c), tmp, sizeof tmp, 0); /* read a little, then vanish */
        httpc_close(c);
    }
    /* pipelined: slow first, then disconnect; both requests dropped cleanly */
    c = client(f);
    const char *two = "GET /slow?ms=200 HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(httpc_send_raw(c, two, strlen(two)), 0);
    assert_int_equal(wait_atomic(&f->slow_started, 2, 30000), 2);
    httpc_close(c);
    assert_int_equal(wait_atomic(&f->late_done, 2, 30000), 2);
    assert_int_equal(atomic_load(&f->late_rc), DDM_ECLOSED);

    c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
    http_stats st = fx_stats(f);
    assert_true(st.requests_aborted >= 2);
}

static void test_many_idle_connections(void **state)
{
    fx *f = *state;
    enum { N = 300 };
    httpc **idle = calloc(N, sizeof *idle);
    assert_non_null(idle);
    for (int i = 0; i < N; i++) {
        idle[i] = client(f);
        assert_int_equal(httpc_connect(idle[i]), 0);
        if (i % 3 == 0) /* some send half a request line, like slowloris */
            assert_int_equal(httpc_send_raw(idle[i], "GET /hel", 8), 0);
    }
    int64_t t0 = ms_now();
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    assert_true(ms_now() - t0 < 5000);
    http_stats st = fx_stats(f);
    assert_true(st.connections_open >= N + 1);
    for (int i = 0; i < N; i++)
        httpc_close(idle[i]);
    free(idle);
    /* the server notices they are gone */
    int64_t end = ms_now() + 10000;
    do {
        st = fx_stats(f);
        if (st.connections_open <= 1)
            break;
        sleep_ms(20);
    } while (ms_now() < end);
    assert_true(st.connections_open <= 1);
    httpc_close(c);
}

static void test_idle_and_stalled_reader(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    httpc_response_free(&r);
    int fd = httpc_fd(c);
    int64_t t0 = ms_now();
    assert_int_equal(httpc_wait_closed(c, 5000), 1); /* idle keep-alive closed by server */
    assert_true(ms_now() - t0 >= 250);
    /* the client reconnects transparently */
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    (void)fd;
    httpc_close(c);

    /* a client that asks for 16 MiB and never reads is dropped after the write stalls */
    c = client(f);
    const char *big = "GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /big HTTP/1.1\r\nHost: t\r\n\r\n"
                      "GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /big HTTP/1.1\r\nHost: t\r\n\r\n";
    http_stats before = fx_stats(f);
    assert_int_equal(httpc_send_raw(c, big, strlen(big)), 0);
    int64_t end = ms_now() + 10000;
    http_stats st;
    do { /* accepted, then closed by the server while we keep our end open */
        sleep_ms(20);
        st = fx_stats(f);
    } while (!(st.connections_total > before.connections_total && st.connections_open == 0) &&
             ms_now() < end);
    assert_int_equal(st.connections_total, before.connections_total + 1);
    assert_int_equal(st.connections_open, 0);
    assert_int_equal(httpc_wait_closed(c, 5000), 1);
    httpc_close(c);
}

static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

/* Random well-formed, mutated, truncated and split requests on many connections
 * at once, some abandoned mid-way: the server must neither crash nor leak (ASan),
 * and must keep serving. Deterministic (fixed seed). */
static void test_fuzz_hostile_mix(void **state)
{
    fx *f = *state;
    static const char *tmpl[] = {
        "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /echo?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "GET /slow?ms=30 HTTP/1.1\r\nHost: t\r\n\r\n",
        "HEAD /hello HTTP/1.0\r\n\r\n",
        "GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        "GET /big?kb=300 HTTP/1.1\r\nHost: t\r\n\r\n",
    };
    enum { CONNS = 48, ROUNDS = 16 };
    uint32_t seed = 12345;
#define RND() lcg(&seed)
    char buf[4096];
    for (int round = 0; round < ROUNDS; round++) {
        httpc *cs[CONNS];
        for (int i = 0; i < CONNS; i++) {
            cs[i] = client(f);
            size_t len = 0;
            int nreq = 1 + (int)(RND() % 4);
            for (int k = 0; k < nreq; k++) {
                const char *t = tmpl[RND() % (sizeof tmpl / sizeof *tmpl)];
                size_t tl = strlen(t);
                if (len + tl >= sizeof buf)
                    break;
                memcpy(buf + len, t, tl);
                len += tl;
            }
            int mode = (int)(RND() % 4);
            if (mode == 1) /* flip some bytes */
                for (int k = 0; k < 3; k++) {
                    size_t at = RND() % len;
                    buf[at] = (char)(RND() & 0xff);
                }
            else if (mode == 2) /* truncate */
                len = 1 + RND() % len;
            if (httpc_connect(cs[i]) != 0)
                continue;
            /* send in a few pieces */
            size_t off = 0;
            while (off < len) {
                size_t piece = 1 + RND() % (len - off);
                if (httpc_send_raw(cs[i], buf + off, piece) != 0)
                    break;
                off += piece;
            }
            if (RND() % 5 == 0) { /* abandon at once */
                httpc_close(cs[i]);
                cs[i] = NULL;
            }
        }
        /* read whatever comes for a little while, then drop everything */
        int64_t end = ms_now() + 60;
        while (ms_now() < end) {
            struct pollfd p[CONNS];
            int np = 0;
            for (int i = 0; i < CONNS; i++)
                if (cs[i] && httpc_fd(cs[i]) >= 0)
                    p[np++] = (struct pollfd){ .fd = httpc_fd(cs[i]), .events = POLLIN };
            if (!np || poll(p, (nfds_t)np, 10) < 0)
                break;
            for (int k = 0; k < np; k++)
                if (p[k].revents)
                    (void)!recv(p[k].fd, buf, sizeof buf, MSG_DONTWAIT);
        }
        for (int i = 0; i < CONNS; i++)
            httpc_close(cs[i]);
    }
#undef RND
    httpc *c = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
    int64_t end = ms_now() + 10000;
    http_stats st;
    do {
        st = fx_stats(f);
        if (st.connections_open == 0)
            break;
        sleep_ms(20);
    } while (ms_now() < end);
    assert_int_equal(st.connections_open, 0);
    assert_true(st.parse_errors > 0);
    assert_true(st.requests_total > 100);
}

static void test_expect_continue(void **state)
{
    fx *f = *state;
    httpc *c = client(f);
    const char *hdr = "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    assert_int_equal(httpc_send_raw(c, hdr, strlen(hdr)), 0);
    char buf[64] = { 0 };
    int64_t end = ms_now() + 10000;
    ssize_t n = -1;
    while (n < 0 && ms_now() < end) {
        n = recv(httpc_fd(c), buf, sizeof buf - 1, MSG_DONTWAIT);
        if (n < 0)
            sleep_ms(5);
    }
    assert_true(n > 0);
    assert_string_equal(buf, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(httpc_send_raw(c, "data", 4), 0);
    httpc_response r;
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "data");
    httpc_response_free(&r);
    httpc_close(c);
}

/* Closing the server with live connections, a pending async request and a
 * half-received one: abort callbacks run, everything is freed (teardown asserts
 * the loop has no handles left; ASan checks the memory). */
static void test_close_with_live_connections(void **state)
{
    fx *f = *state;
    httpc *a = client(f), *b = client(f), *d = client(f);
    const char *slow = "GET /slow?ms=5000 HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(httpc_send_raw(a, slow, strlen(slow)), 0);
    assert_int_equal(httpc_send_raw(b, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nab", 53),
                     0);
    assert_int_equal(httpc_connect(d), 0);
    assert_int_equal(wait_atomic(&f->slow_started, 1, 10000), 1);
    int before = atomic_load(&f->aborted);
    fx_stop(f);
    assert_int_equal(atomic_load(&f->aborted), before + 1);
    /* the clients see the server gone */
    assert_int_equal(httpc_wait_closed(a, 5000), 1);
    assert_int_equal(httpc_wait_closed(b, 5000), 1);
    assert_int_equal(httpc_wait_closed(d, 5000), 1);
    httpc_close(a);
    httpc_close(b);
    httpc_close(d);
}

/* http_server_shutdown: the loop-thread side (the server is gone for fx_stop). */
static void shutdown_long(fx *f)
{
    http_server_shutdown(f->srv, 5000, on_server_closed, f);
    f->srv = NULL;
}

static void shutdown_short(fx *f)
{
    http_server_shutdown(f->srv, 200, on_server_closed, f);
    f->srv = NULL;
}

/* Graceful shutdown: an idle keep-alive connection is closed at once, a request
 * in its handler still gets its response (then its connection closes), no new
 * connection is taken, and the server is freed once nothing is owed. */
static void test_shutdown_answers_pending(void **state)
{
    fx *f = *state;
    httpc *idle = client(f), *busy = client(f);
    httpc_response r;
    assert_int_equal(httpc_request(idle, "GET", "/hello", NULL, 0, NULL, 0, &r), 0);
    httpc_response_free(&r);
    const char *slow = "GET /slow?ms=400 HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(httpc_send_raw(busy, slow, strlen(slow)), 0);
    assert_int_equal(wait_atomic(&f->slow_started, 1, 10000), 1);
    fx_call(f, shutdown_long);
    assert_int_equal(atomic_load(&f->server_closed), 0); /* not before it returned */
    assert_int_equal(httpc_wait_closed(idle, 3000), 1);
    assert_int_equal(atomic_load(&f->server_closed), 0); /* the slow one is owed */
    assert_int_equal(httpc_read_response(busy, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow 400");
    httpc_response_free(&r);
    assert_int_equal(httpc_wait_closed(busy, 3000), 1);
    assert_int_equal(wait_atomic(&f->server_closed, 1, 5000), 1);
    assert_int_equal(atomic_load(&f->aborted), 0);
    httpc *late = client(f); /* the listener is closed */
    assert_true(httpc_request(late, "GET", "/hello", NULL, 0, NULL, 0, &r) < 0);
    httpc_close(late);
    httpc_close(idle);
    httpc_close(busy);
}

/* After the grace, what is still owed is aborted and the server closes. */
static void test_shutdown_grace_ends(void **state)
{
    fx *f = *state;
    httpc *busy = client(f);
    const char *slow = "GET /slow?ms=4000 HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(httpc_send_raw(busy, slow, strlen(slow)), 0);
    assert_int_equal(wait_atomic(&f->slow_started, 1, 10000), 1);
    fx_call(f, shutdown_short);
    assert_int_equal(wait_atomic(&f->server_closed, 1, 3000), 1);
    assert_int_equal(atomic_load(&f->aborted), 1);
    assert_int_equal(httpc_wait_closed(busy, 3000), 1);
    httpc_close(busy);
}

static void set_flag(void *ud) { *(int *)ud = 1; }

/* A hand-written HTTP peer for the client: answers the first request with a
 * chunked body, the second with "100 Continue" then a body ended by close. */
typedef struct raw_peer {
    int lfd;
    int port;
    pthread_t th;
} raw_peer;

static void read_request_head(int fd)
{
    char b[4096];
    size_t n = 0;
    while (n < sizeof b - 1) {
        ssize_t r = recv(fd, b + n, sizeof b - 1 - n, 0);
        if (r <= 0)
            return;
        n += (size_t)r;
        b[n] = '\0';
        if (strstr(b, "\r\n\r\n"))
            return;
    }
}

static void *raw_peer_main(void *arg)
{
    raw_peer *p = arg;
    int fd = accept(p->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    read_request_head(fd);
    const char *r1 = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
                     "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    (void)!send(fd, r1, strlen(r1), MSG_NOSIGNAL);
    read_request_head(fd);
    const char *r2 = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nConnection: close\r\n\r\n"
                     "until eof";
    (void)!send(fd, r2, strlen(r2), MSG_NOSIGNAL);
    close(fd);
    return NULL;
}

static void test_client_chunked_and_eof_bodies(void **state)
{
    (void)state;
    raw_peer p;
    p.lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(p.lfd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(p.lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(p.lfd, 4), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(p.lfd, (struct sockaddr *)&a, &al), 0);
    p.port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&p.th, NULL, raw_peer_main, &p), 0);
    char hp[64], err[200];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", p.port);
    httpc *c;
    assert_int_equal(httpc_open(hp, 10000, &c, err, sizeof err), 0);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/a", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello, world");
    assert_string_equal(httpc_response_header(&r, "x-a"), "1");
    assert_true(r.keep_alive);
    int fd = httpc_fd(c);
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "POST", "/b", NULL, 0, "x", 1, &r), 0);
    assert_int_equal(httpc_fd(c), -1); /* closed after Connection: close */
    (void)fd;
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "until eof");
    assert_false(r.keep_alive);
    httpc_response_free(&r);
    httpc_close(c);
    pthread_join(p.th, NULL);
    /* nobody listening any more: a clean error, not a hang */
    assert_int_equal(httpc_open(hp, 2000, &c, err, sizeof err), 0);
    assert_true(httpc_request(c, "GET", "/", NULL, 0, NULL, 0, &r) < 0);
    httpc_response_free(&r);
    httpc_close(c);
    close(p.lfd);
}

static void test_json_escape_and_reason(void **state)
{
    (void)state;
    char buf[64];
    size_t n = http_json_escape(buf, sizeof buf, "a\"b\\c\n\x01\x7f\xc3\xa9");
    assert_string_equal(buf, "\"a\\\"b\\\\c\\n\\u0001\\u007f\xc3\xa9\"");
    assert_int_equal(n, strlen(buf));
    /* bytes that are not UTF-8 (they were copied through: invalid JSON text) */
    n = http_json_escape(buf, sizeof buf, "x\xff\xc3(\xe2\x82\xac\xed\xa0\x80\xf0\x9f\x98\x80");
    assert_string_equal(buf, "\"x\\ufffd\\ufffd(\xe2\x82\xac\\ufffd\\ufffd\\ufffd\xf0\x9f\x98\x80\"");
    assert_int_equal(n, strlen(buf));
    char small[4];
    n = http_json_escape(small, sizeof small, "abcdef");
    assert_int_equal(n, 8);
    assert_string_equal(small, "\"ab");
    assert_string_equal(http_status_reason(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_reason(299), "Unknown");

    http_config c;
    http_config_default(&c);
    assert_int_equal(c.max_body_bytes, 8u << 20);
    assert_int_equal(c.max_header_bytes, 16384);

    /* listen argument errors, without a running loop */
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    http_server *s;
    assert_int_equal(http_server_new(&loop, NULL, &s), 0);
    char err[200] = "";
    assert_int_equal(http_server_listen(s, "nonsense", err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "host:port"));
    int rc = http_server_listen(s, "[::1]:0", err, sizeof err);
    if (rc != UV_EADDRNOTAVAIL && rc != UV_EAFNOSUPPORT) { /* hosts without IPv6 */
        assert_int_equal(rc, 0);
        assert_true(http_server_port(s) > 0);
    }
    int closed = 0;
    http_server_close(s, set_flag, &closed);
    assert_int_equal(closed, 0); /* only from the loop, once handles are closed */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);

    httpc *hc;
    assert_int_equal(httpc_open("no-port", 100, &hc, err, sizeof err), DDM_EINVAL);
    assert_int_equal(httpc_open("[::1]:80", 100, &hc, err, sizeof err), 0);
    httpc_close(hc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escape_and_reason),
        cmocka_unit_test(test_client_chunked_and_eof_bodies),
        cmocka_unit_test_setup_teardown(test_get_post_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_headers_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_headers_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_connections, setup_maxconn, teardown),
        cmocka_unit_test_setup_teardown(test_silent_connections_evicted, setup_maxconn, teardown),
        cmocka_unit_test_setup_teardown(test_per_ip_cap, setup_per_ip, teardown),
        cmocka_unit_test_setup_teardown(test_body_grows_as_it_arrives, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_with_pending_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_idle_connections, setup_idle, teardown),
        cmocka_unit_test_setup_teardown(test_idle_and_stalled_reader, setup_short_idle, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fuzz_hostile_mix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_live_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_answers_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_grace_ends, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
