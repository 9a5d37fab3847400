/* test_nnuv.c -- nanomsg sockets driven by a libuv loop: real REQ/REP round
 * trips over ipc:// and tcp:// loopback, raw headers, out-of-order replies,
 * the send queue, and clean close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <uv.h>

#include "common/err.h"
#include "common/nnuv.h"

#define TIMEOUT_MS 10000

/* ---- endpoints ------------------------------------------------------------ */

typedef struct endpoint {
    char url[256];
    char dir[128]; /* temp dir of an ipc socket, "" for tcp */
} endpoint;

static int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void endpoint_make(endpoint *e, int ipc)
{
    memset(e, 0, sizeof *e);
    if (ipc) {
        snprintf(e->dir, sizeof e->dir, "/tmp/ddm-nnuv-XXXXXX");
        assert_non_null(mkdtemp(e->dir));
        snprintf(e->url, sizeof e->url, "ipc://%s/s.ipc", e->dir);
    } else {
        snprintf(e->url, sizeof e->url, "tcp://127.0.0.1:%d", free_tcp_port());
    }
}

static void endpoint_clean(endpoint *e)
{
    if (e->dir[0]) {
        char path[300];
        snprintf(path, sizeof path, "%s/s.ipc", e->dir);
        unlink(path);
        rmdir(e->dir);
    }
}

static void set_int_opt(int sock, int opt, int v)
{
    assert_int_equal(nn_setsockopt(sock, NN_SOL_SOCKET, opt, &v, sizeof v), 0);
}

/* ---- an echo server: raw REP on the loop ------------------------------------ */

typedef struct held {
    void *body;
    size_t len;
    nnuv_hdr hdr;
} held;

typedef struct echo_server {
    nnuv *s;
    int hold;           /* >0: keep this many requests, then answer in reverse order */
    int nheld;
    held held[64];
    int close_on_first; /* close the socket from inside the first callback */
    int received;
    int closed;
} echo_server;

/* Reply "echo:" + request body, with the request's header. */
static void echo_reply(echo_server *es, const void *body, size_t len, const nnuv_hdr *hdr)
{
    char *out = nn_allocmsg(len + 5, 0);
    assert_non_null(out);
    memcpy(out, "echo:", 5);
    memcpy(out + 5, body, len);
    assert_int_equal(nnuv_send(es->s, out, hdr), 0);
}

static void on_server_closed(void *ud) { ((echo_server *)ud)->closed = 1; }

static void echo_on_recv(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    echo_server *es = ud;
    (void)s;
    es->received++;
    /* a raw REP header is the peer key plus the request id (top bit set) */
    assert_true(hdr->len >= 8);
    assert_true(hdr->b[hdr->len - 4] & 0x80);
    if (es->close_on_first) {
        nn_freemsg(body);
        nnuv_close(es->s, on_server_closed, es);
        return;
    }
    if (es->hold > 0) {
        assert_true(es->nheld < 64);
        held *h = &es->held[es->nheld++];
        h->body = body;
        h->len = len;
        h->hdr = *hdr;
        if (es->nheld == es->hold) {
            for (int i = es->nheld - 1; i >= 0; i--) {
                echo_reply(es, es->held[i].body, es->held[i].len, &es->held[i].hdr);
                nn_freemsg(es->held[i].body);
            }
            es->nheld = 0;
        }
        return;
    }
    echo_reply(es, body, len, hdr);
    nn_freemsg(body);
}

static void echo_server_start(uv_loop_t *loop, echo_server *es, const char *url)
{
    int sock = nn_socket(AF_SP_RAW, NN_REP);
    assert_true(sock >= 0);
    set_int_opt(sock, NN_RCVMAXSIZE, -1);
    assert_true(nn_bind(sock, url) >= 0);
    assert_int_equal(nnuv_open(loop, sock, &es->s), 0);
    assert_int_equal(nnuv_socket(es->s), sock);
    assert_int_equal(nnuv_recv_start(es->s, echo_on_recv, es), 0);
}

/* ---- cooked REQ clients in threads ----------------------------------------------- */

typedef struct client_thread {
    const char *url;
    int index;
    int rounds;
    int ok;         /* replies that matched */
    int *finished;  /* shared count of finished clients (atomic) */
    uv_async_t *done;
} client_thread;

static void *client_main(void *arg)
{
    client_thread *c = arg;
    int sock = nn_socket(AF_SP, NN_REQ);
    if (sock < 0)
        goto out;
    int to = TIMEOUT_MS;
    nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVTIMEO, &to, sizeof to);
    nn_setsockopt(sock, NN_SOL_SOCKET, NN_SNDTIMEO, &to, sizeof to);
    if (nn_connect(sock, c->url) < 0)
        goto close;
    for (int i = 0; i < c->rounds; i++) {
        char msg[64], want[80];
        int n = snprintf(msg, sizeof msg, "client %d round %d", c->index, i);
        snprintf(want, sizeof want, "echo:%s", msg);
        if (nn_send(sock, msg, (size_t)n, 0) != n)
            break;
        char *reply = NULL;
        int r = nn_recv(sock, &reply, NN_MSG, 0);
        if (r < 0)
            break;
        if ((size_t)r == strlen(want) && memcmp(reply, want, (size_t)r) == 0)
            c->ok++;
        nn_freemsg(reply);
    }
close:
    nn_close(sock);
out:
    __atomic_add_fetch(c->finished, 1, __ATOMIC_SEQ_CST);
    uv_async_send(c->done);
    return NULL;
}

typedef struct cooked_run {
    echo_server es;
    int finished;
    int nclients;
} cooked_run;

/* uv_async_send calls coalesce: count finished clients, not callbacks */
static void on_client_done(uv_async_t *a)
{
    cooked_run *r = a->data;
    if (__atomic_load_n(&r->finished, __ATOMIC_SEQ_CST) < r->nclients)
        return;
    nnuv_close(r->es.s, on_server_closed, &r->es);
    uv_close((uv_handle_t *)a, NULL);
}

/* Several cooked REQ clients (threads) against one raw REP on the loop. */
static void run_cooked(int ipc)
{
    enum { CLIENTS = 3, ROUNDS = 25 };
    endpoint ep;
    endpoint_make(&ep, ipc);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    cooked_run run = { .nclients = CLIENTS };
    echo_server_start(&loop, &run.es, ep.url);
    uv_async_t done;
    assert_int_equal(uv_async_init(&loop, &done, on_client_done), 0);
    done.data = &run;
    client_thread ct[CLIENTS];
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        ct[i] = (client_thread){ .url = ep.url, .index = i, .rounds = ROUNDS,
                                 .finished = &run.finished, .done = &done };
        assert_int_equal(pthread_create(&th[i], NULL, client_main, &ct[i]), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (int i = 0; i < CLIENTS; i++)
        assert_int_equal(ct[i].ok, ROUNDS);
    assert_int_equal(run.es.received, CLIENTS * ROUNDS);
    assert_true(run.es.closed);
    endpoint_clean(&ep);
}

static void test_cooked_req_ipc(void **state) { (void)state; run_cooked(1); }
static void test_cooked_req_tcp(void **state) { (void)state; run_cooked(0); }

/* ---- raw REQ on the loop: many requests in flight ---------------------------------- */

typedef struct raw_client {
    nnuv *s;
    int n;           /* requests sent */
    int got;         /* replies received */
    int matched;     /* replies whose body matched their id */
    int order[64];   /* ids in arrival order */
    uint32_t base;
    int closed;
    echo_server *es;
    uv_timer_t watchdog;
    int timed_out;
} raw_client;

static void on_client_closed(void *ud) { ((raw_client *)ud)->closed = 1; }

static void finish(raw_client *c)
{
    uv_timer_stop(&c->watchdog);
    uv_close((uv_handle_t *)&c->watchdog, NULL);
    nnuv_close(c->s, on_client_closed, c);
    if (c->es && !c->es->closed && c->es->s)
        nnuv_close(c->es->s, on_server_closed, c->es);
}

static void on_watchdog(uv_timer_t *t)
{
    raw_client *c = t->data;
    c->timed_out = 1;
    finish(c);
}

static void raw_on_reply(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    (void)s;
    raw_client *c = ud;
    uint32_t id = 0;
    assert_int_equal(nnuv_hdr_id(hdr, &id), 0);
    char want[64];
    snprintf(want, sizeof want, "echo:request %u", id);
    if (id >= c->base && id < c->base + (uint32_t)c->n && len == strlen(want) &&
        memcmp(body, want, len) == 0)
        c->matched++;
    if (c->got < 64)
        c->order[c->got] = (int)(id - c->base);
    c->got++;
    nn_freemsg(body);
    if (c->got == c->n)
        finish(c);
}

static void raw_client_open(uv_loop_t *loop, raw_client *c, const char *url)
{
    int sock = nn_socket(AF_SP_RAW, NN_REQ);
    assert_true(sock >= 0);
    assert_true(nn_connect(sock, url) >= 0);
    assert_int_equal(nnuv_open(loop, sock, &c->s), 0);
    assert_int_equal(nnuv_recv_start(c->s, raw_on_reply, c), 0);
    assert_int_equal(uv_timer_init(loop, &c->watchdog), 0);
    c->watchdog.data = c;
    assert_int_equal(uv_timer_start(&c->watchdog, on_watchdog, TIMEOUT_MS, 0), 0);
}

static void raw_client_send_all(raw_client *c, int n)
{
    c->n = n;
    for (int i = 0; i < n; i++) {
        char msg[64];
        uint32_t id = c->base + (uint32_t)i;
        int len = snprintf(msg, sizeof msg, "request %u", id);
        nnuv_hdr h;
        nnuv_hdr_set_id(&h, id);
        assert_int_equal(nnuv_send_copy(c->s, msg, (size_t)len, &h), 0);
    }
}

/* One raw REQ sends N requests at once; the server keeps them all and answers
 * in reverse order; each reply must find its request by id. */
static void run_raw_in_flight(int ipc)
{
    enum { N = 40 };
    endpoint ep;
    endpoint_make(&ep, ipc);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    echo_server es = { .hold = N };
    echo_server_start(&loop, &es, ep.url);
    raw_client c = { .base = 1000000, .es = &es };
    raw_client_open(&loop, &c, ep.url);
    raw_client_send_all(&c, N);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_false(c.timed_out);
    assert_int_equal(c.got, N);
    assert_int_equal(c.matched, N);
    /* replies really came back out of order: reverse of arrival at the server */
    assert_int_equal(c.order[0], N - 1);
    assert_int_equal(c.order[N - 1], 0);
    assert_true(c.closed);
    assert_true(es.closed);
    endpoint_clean(&ep);
}

static void test_raw_req_in_flight_ipc(void **state) { (void)state; run_raw_in_flight(1); }
static void test_raw_req_in_flight_tcp(void **state) { (void)state; run_raw_in_flight(0); }

/* ---- the send queue: a raw REQ with no peer yet ------------------------------------ */

typedef struct late_bind {
    uv_loop_t *loop;
    echo_server *es;
    const char *url;
} late_bind;

static void on_late_bind(uv_timer_t *t)
{
    late_bind *lb = t->data;
    echo_server_start(lb->loop, lb->es, lb->url);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_send_queue_until_peer(void **state)
{
    (void)state;
    enum { N = 8 };
    endpoint ep;
    endpoint_make(&ep, 1);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    echo_server es = { 0 };
    raw_client c = { .base = 7, .es = &es };
    raw_client_open(&loop, &c, ep.url);
    raw_client_send_all(&c, N);
    /* nobody is listening: nanomsg says EAGAIN and everything waits here */
    assert_int_equal(nnuv_queued(c.s), N);
    late_bind lb = { &loop, &es, ep.url };
    uv_timer_t t;
    assert_int_equal(uv_timer_init(&loop, &t), 0);
    t.data = &lb;
    assert_int_equal(uv_timer_start(&t, on_late_bind, 50, 0), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_false(c.timed_out);
    assert_int_equal(c.matched, N);
    assert_int_equal(es.received, N);
    endpoint_clean(&ep);
}

/* ---- large bodies pass through untouched (zero-copy reply) ---------------------- */

static void big_on_recv(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    echo_server *es = ud;
    es->received++;
    /* flip every byte and send the same buffer back */
    unsigned char *p = body;
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)~p[i];
    assert_int_equal(nnuv_send(s, body, hdr), 0);
}

typedef struct big_client {
    raw_client rc;
    size_t size;
    int ok;
} big_client;

static void big_on_reply(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud)
{
    (void)s;
    big_client *b = ud;
    uint32_t id;
    assert_int_equal(nnuv_hdr_id(hdr, &id), 0);
    const unsigned char *p = body;
    int good = len == b->size;
    for (size_t i = 0; good && i < len; i++)
        good = p[i] == (unsigned char)~(unsigned char)(i * 7 + id);
    b->ok += good;
    nn_freemsg(body);
    if (++b->rc.got == b->rc.n)
        finish(&b->rc);
}

static void test_large_messages_tcp(void **state)
{
    (void)state;
    enum { N = 3 };
    endpoint ep;
    endpoint_make(&ep, 0);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    echo_server es = { 0 };
    int sock = nn_socket(AF_SP_RAW, NN_REP);
    assert_true(sock >= 0);
    set_int_opt(sock, NN_RCVMAXSIZE, -1);
    set_int_opt(sock, NN_SNDBUF, 8 << 20);
    assert_true(nn_bind(sock, ep.url) >= 0);
    assert_int_equal(nnuv_open(&loop, sock, &es.s), 0);
    assert_int_equal(nnuv_recv_start(es.s, big_on_recv, &es), 0);

    big_client b = { .size = 3u << 20 };
    b.rc.es = &es;
    raw_client_open(&loop, &b.rc, ep.url);
    set_int_opt(nnuv_socket(b.rc.s), NN_RCVMAXSIZE, -1);
    assert_int_equal(nnuv_recv_start(b.rc.s, big_on_reply, &b), 0);
    b.rc.n = N;
    for (uint32_t id = 0; id < N; id++) {
        unsigned char *m = nn_allocmsg(b.size, 0);
        assert_non_null(m);
        for (size_t i = 0; i < b.size; i++)
            m[i] = (unsigned char)(i * 7 + id);
        nnuv_hdr h;
        nnuv_hdr_set_id(&h, id);
        assert_int_equal(nnuv_send(b.rc.s, m, &h), 0);
        /* one at a time: a raw REP would drop a second big reply to a pipe
         * that is still writing the first (see nnuv.h) */
        while (b.rc.got <= (int)id && !b.rc.timed_out)
            uv_run(&loop, UV_RUN_ONCE);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_false(b.rc.timed_out);
    assert_int_equal(b.ok, N);
    assert_int_equal(es.received, N);
    endpoint_clean(&ep);
}

/* ---- close paths -------------------------------------------------------------------- */

static void on_flag(void *ud) { *(int *)ud = 1; }

/* Closing with messages still queued frees them (LSan checks) and still
 * calls the close callback. */
static void test_close_with_queued_messages(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    endpoint ep;
    endpoint_make(&ep, 1);
    int sock = nn_socket(AF_SP_RAW, NN_REQ);
    assert_true(sock >= 0);
    assert_true(nn_connect(sock, ep.url) >= 0);
    nnuv *s;
    assert_int_equal(nnuv_open(&loop, sock, &s), 0);
    for (uint32_t i = 0; i < 40; i++) {
        nnuv_hdr h;
        nnuv_hdr_set_id(&h, i);
        assert_int_equal(nnuv_send_copy(s, "payload", 7, &h), 0);
    }
    assert_int_equal(nnuv_queued(s), 40);
    nnuv_stats st;
    nnuv_get_stats(s, &st);
    assert_int_equal(st.queued_total, 40);
    assert_int_equal(st.sent, 0);
    int closed = 0;
    nnuv_close(s, on_flag, &closed);
    assert_false(closed); /* only once libuv released the handles */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(closed);
    assert_int_equal(uv_loop_close(&loop), 0);
    /* nnuv closed the nanomsg socket */
    assert_int_equal(nn_close(sock), -1);
    endpoint_clean(&ep);
}

/* The server closes itself from inside its receive callback; the client's
 * request then times out on the client side, nothing crashes or leaks. */
static void test_close_inside_callback(void **state)
{
    (void)state;
    endpoint ep;
    endpoint_make(&ep, 0);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    echo_server es = { .close_on_first = 1 };
    echo_server_start(&loop, &es, ep.url);
    int c = nn_socket(AF_SP_RAW, NN_REQ);
    assert_true(c >= 0);
    assert_true(nn_connect(c, ep.url) >= 0);
    /* two requests queued at the server before it runs: only one is delivered */
    char frame[8] = { (char)0x80, 0, 0, 1, 'a', 'b', 'c', 'd' };
    for (int i = 0; i < 2; i++) {
        frame[3] = (char)(1 + i);
        int to = 2000;
        nn_setsockopt(c, NN_SOL_SOCKET, NN_SNDTIMEO, &to, sizeof to);
        /* raw REQ without a header: put the id in the body's first word, as
         * nanomsg puts it on the wire */
        assert_int_equal(nn_send(c, frame, sizeof frame, 0), (int)sizeof frame);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(es.received, 1);
    assert_true(es.closed);
    nn_close(c);
    endpoint_clean(&ep);
}

/* ---- header helpers and argument errors ------------------------------------------- */

static void test_header_helpers(void **state)
{
    (void)state;
    nnuv_hdr h;
    nnuv_hdr_set_id(&h, 0x12345678);
    assert_int_equal(h.len, 4);
    assert_int_equal(h.b[0], 0x92); /* top bit set */
    uint32_t id = 0;
    assert_int_equal(nnuv_hdr_id(&h, &id), 0);
    assert_int_equal(id, 0x12345678);
    /* the top bit of the id itself is not representable */
    nnuv_hdr_set_id(&h, 0xffffffffu);
    assert_int_equal(nnuv_hdr_id(&h, &id), 0);
    assert_int_equal(id, 0x7fffffffu);
    /* not a raw REQ reply header */
    h.b[0] = 0x12;
    assert_int_equal(nnuv_hdr_id(&h, &id), DDM_EPROTO);
    h.len = 8;
    assert_int_equal(nnuv_hdr_id(&h, &id), DDM_EPROTO);
    h.len = 0;
    assert_int_equal(nnuv_hdr_id(&h, &id), DDM_EPROTO);
    assert_int_equal(nnuv_hdr_peer(&h), 0);
    h.len = 8;
    h.b[0] = 0x00; h.b[1] = 0x00; h.b[2] = 0x01; h.b[3] = 0x02;
    assert_int_equal(nnuv_hdr_peer(&h), 0x102);

    /* a header over the limit is refused and the caller keeps the body */
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    int sock = nn_socket(AF_SP_RAW, NN_REQ);
    assert_true(sock >= 0);
    nnuv *s;
    assert_int_equal(nnuv_open(&loop, sock, &s), 0);
    void *body = nn_allocmsg(4, 0);
    h.len = NNUV_MAX_HDR + 1;
    assert_int_equal(nnuv_send(s, body, &h), DDM_EINVAL);
    nn_freemsg(body);
    assert_int_equal(nnuv_recv_start(s, NULL, NULL), DDM_EINVAL);
    int closed = 0;
    nnuv_close(s, on_flag, &closed);
    assert_int_equal(nnuv_send(s, NULL, NULL), DDM_ECLOSED); /* still valid until the loop runs */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(closed);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_helpers),
        cmocka_unit_test(test_cooked_req_ipc),
        cmocka_unit_test(test_cooked_req_tcp),
        cmocka_unit_test(test_raw_req_in_flight_ipc),
        cmocka_unit_test(test_raw_req_in_flight_tcp),
        cmocka_unit_test(test_send_queue_until_peer),
        cmocka_unit_test(test_large_messages_tcp),
        cmocka_unit_test(test_close_with_queued_messages),
        cmocka_unit_test(test_close_inside_callback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
