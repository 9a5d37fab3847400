/* fuzz_http.c -- libFuzzer target: the HTTP server (server/http.c, http_parse.c,
 * http_req.c) reading up to four connections: llhttp and the request
 * callbacks, the limits (411/413/414/431/501), pipelining with responses
 * given out of order, 100-continue, backpressure (max_pipelined), handlers
 * that answer later, drop the request or close the connection, the
 * connection caps (eviction, reserve connections), and the ways a connection
 * ends (client EOF, reset, server close or graceful shutdown).
 *
 * No listener: the server adopts one end of a socketpair per connection
 * (http_server_adopt) and the harness plays the client on the other end,
 * driving the real libuv loop with UV_RUN_NOWAIT, so a run takes tens of
 * microseconds and never waits for a timer.
 *
 * Input: two control bytes, then the bytes the client sends.
 *   byte 0, bits 0-2: chunk size (all at once, 1, 2, 3, 7, 16, 61, 512 bytes),
 *           each chunk read by the server on its own;
 *           bit 3: answer every deferred request before the client half-closes
 *           (else they are pending at EOF: aborted);
 *           bits 4-5: the end: client half-close, client reset, server close
 *           right after the input, graceful server shutdown;
 *           bit 6: deferred requests are dropped (http_req_drop) instead of
 *           answered; bit 7: a deferred request whose client went away is
 *           finished later (detached, maybe after the server is freed) rather
 *           than inside its on_abort.
 *   byte 1: the limits: bit 0 max_header_bytes 512, bit 1 max_body_bytes 256,
 *           bits 2-3 max_pipelined 1, 2, 4 or 16, bit 4 allow_no_length,
 *           bit 5 max_headers 8; bits 6-7: 1 to 4 connections, chunk k going
 *           to connection k mod n, each connected at its first chunk; with
 *           more than one, max_connections is 2 and reserve_connections 1,
 *           so that later connections evict idle ones or become reserve
 *           connections (health only, 503 for the rest) or are refused.
 * Routes: GET /healthz (always), GET|POST /v1/samples (answers at once with
 * the body's length), GET|POST /defer (answered later, newest first), GET
 * /drop, POST /close (Connection: close), PUT /error (an error echoing the
 * body, JSON-escaped). Every handler's answer carries X-Seq: <arrival index>.
 *
 * A server per set of limits is kept from one input to the next (until an
 * input closes it), so its books are checked after every input.
 *
 * Checks beyond "no crash, leak or UB": the server writes only HTTP/1.1
 * responses; X-Seq values leave in arrival order (pipelined responses never
 * overtake); the connection is closed within a bounded number of loop
 * iterations once the client has sent everything (no wedge); what the server
 * writes is valid UTF-8 (client bytes in error messages are escaped); every request
 * handed to a handler is finished exactly once; with the connection gone the
 * server counts no connection open and no body bytes arriving. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "common/err.h"
#include "common/log.h"
#include "common/utf8.h"
#include "server/http.h"

#define MAX_DEFERRED 64
#define SETTLE_ITERS 2000 /* loop iterations allowed after the input ends */

static uv_loop_t loop;

#define MAX_CONNS 4

/* our end of one connection */
typedef struct client {
    int fd;                      /* -1 before the server adopts its other end, or after close */
    int started;
    int stalled;                 /* the server stopped reading it: nothing more is sent */
    char *out;                   /* what the server wrote to it, NUL-terminated */
    size_t out_len, out_cap;
} client;

/* one input's state */
static struct {
    http_server *srv;
    int freed;                   /* close_cb ran */
    uint64_t seen_out;           /* the server's bytes_out when the clients were last read */
    client c[MAX_CONNS];
    int nconns;
    http_req *deferred[MAX_DEFERRED];
    int ndeferred;
    int drop_deferred;
    int abort_later;             /* aborted requests are finished later, not in on_abort */
    unsigned seq;                /* handler calls so far */
} st;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_http: broken promise: %s\n", what);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&loop) != 0)
        abort();
    return 0;
}

/* ---- handlers ---------------------------------------------------------------------- */

static void seq_header(http_req *req)
{
    char v[16];
    snprintf(v, sizeof v, "%u", st.seq++);
    http_resp_header(req, "X-Seq", v);
}

/* Reads everything a handler may read (the accessors must hold up). */
static void touch(http_req *req)
{
    size_t n = http_req_header_count(req), len;
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        check(http_req_header_at(req, i, &k, &v) == 0 && k && v, "header i of count");
        check(http_req_header(req, k) != NULL, "a header found by its name");
    }
    check(http_req_header_at(req, n, NULL, NULL) == DDM_ERANGE, "no header past the count");
    const uint8_t *b = http_req_body(req, &len);
    check(b != NULL && b[len] == '\0', "a NUL-terminated body");
    check(http_req_path(req) != NULL && http_req_query(req) != NULL, "a path and a query");
    http_req_set_user(req, &st);
    check(http_req_user(req) == &st && http_req_start_ns(req) > 0, "user pointer, start time");
    (void)http_req_method(req);
    (void)http_req_version_minor(req);
}

static void on_samples(http_req *req, void *ud)
{
    (void)ud;
    touch(req);
    size_t len;
    http_req_body(req, &len);
    char body[64];
    int n = snprintf(body, sizeof body, "{\"bytes\": %zu}", len);
    seq_header(req);
    http_respond(req, 200, "application/json", body, (size_t)n);
}

static void on_healthz(http_req *req, void *ud)
{
    (void)ud;
    seq_header(req);
    http_respond(req, 200, "text/plain", "ok\n", 3);
}

static void on_abort(http_req *req, void *ud)
{
    (void)ud;
    for (int i = 0; i < st.ndeferred; i++) {
        if (st.deferred[i] != req)
            continue;
        check(http_req_aborted(req), "aborted inside on_abort");
        if (st.abort_later)
            return; /* stays valid, detached, until answer_deferred finishes it */
        st.deferred[i] = st.deferred[--st.ndeferred];
        if (i & 1)
            http_req_drop(req);
        else
            check(http_respond(req, 200, "text/plain", "late", 4) == DDM_ECLOSED,
                  "answering an aborted request is DDM_ECLOSED");
        if (i & 2) { /* finish the other aborted ones too: their on_abort must not run */
            for (int k = 0; k < st.ndeferred;) {
                http_req *r = st.deferred[k];
                if (!http_req_aborted(r)) {
                    k++;
                    continue;
                }
                st.deferred[k] = st.deferred[--st.ndeferred];
                http_req_drop(r);
            }
        }
        return;
    }
    check(0, "on_abort for a request that is not pending");
}

static void on_defer(http_req *req, void *ud)
{
    (void)ud;
    touch(req);
    if (st.ndeferred == MAX_DEFERRED) {
        seq_header(req);
        http_respond_error(req, 503, "busy", "too many deferred requests");
        return;
    }
    char v[16];
    snprintf(v, sizeof v, "%u", st.seq++);
    http_resp_header(req, "X-Seq", v); /* numbered on arrival, answered later */
    http_req_on_abort(req, on_abort, NULL);
    st.deferred[st.ndeferred++] = req;
}

static void on_drop(http_req *req, void *ud)
{
    (void)ud;
    http_req_drop(req);
}

static void on_close(http_req *req, void *ud)
{
    (void)ud;
    touch(req);
    seq_header(req);
    http_resp_header(req, "Connection", "close");
    http_respond(req, 200, "text/plain", "bye\n", 4);
}

static void on_error(http_req *req, void *ud)
{
    (void)ud;
    size_t len;
    const uint8_t *b = http_req_body(req, &len);
    seq_header(req);
    http_respond_error(req, 422, "echo", (const char *)b); /* up to the first NUL */
}

/* Answers (or drops) the deferred requests, newest first: the server must
 * still send the responses in arrival order. */
static void answer_deferred(void)
{
    while (st.ndeferred) {
        http_req *req = st.deferred[--st.ndeferred];
        http_req_on_abort(req, NULL, NULL);
        if (st.drop_deferred) {
            http_req_drop(req);
        } else {
            int rc = http_respond(req, 200, "text/plain", "later\n", 6);
            check(rc == 0 || rc == DDM_ECLOSED, "a deferred answer is sent or the client is gone");
        }
    }
}

/* ---- the client side ---------------------------------------------------------------- */

static void keep_output(client *c, const char *buf, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap * 2 : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *p = realloc(c->out, cap + 1);
        if (!p)
            abort();
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, buf, n);
    c->out_len += n;
    c->out[c->out_len] = '\0';
}

/* A connection's whole output: HTTP/1.1 responses, and "\r\nX-Seq: N" (only
 * in headers: bodies echo client bytes only JSON-escaped, where CR LF cannot
 * appear) in increasing order. */
static void check_output(const client *c)
{
    if (!c->out_len)
        return;
    check(c->out_len >= 9 && !memcmp(c->out, "HTTP/1.1 ", 9), "the server writes HTTP/1.1");
    /* client bytes are echoed only JSON-escaped, invalid UTF-8 as U+FFFD */
    check(utf8_valid_prefix(c->out, c->out_len) == c->out_len, "the output is valid UTF-8");
    static const char marker[] = "\r\nX-Seq: ";
    long last = -1;
    for (const char *m = c->out; (m = memmem(m, c->out_len - (size_t)(m - c->out), marker,
                                              sizeof marker - 1)) != NULL;) {
        m += sizeof marker - 1;
        char *end;
        long v = strtol(m, &end, 10);
        check(end != m && v > last, "responses leave in arrival order");
        last = v;
    }
}

static void read_clients(void)
{
    char buf[8192];
    for (int i = 0; i < st.nconns; i++) {
        client *c = &st.c[i];
        while (c->fd >= 0) {
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0)
                break;
            keep_output(c, buf, (size_t)r);
        }
    }
}

/* One loop iteration, then our side's work. */
static void pump(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
    if (!st.freed) { /* read only after the server wrote something: a syscall saved */
        http_stats hs;
        http_server_stats(st.srv, &hs);
        if (hs.bytes_out == st.seen_out)
            return;
        st.seen_out = hs.bytes_out;
    }
    read_clients();
}

static int conns_open(void)
{
    if (st.freed)
        return 0;
    http_stats s;
    http_server_stats(st.srv, &s);
    return s.connections_open > 0;
}

/* Connects client i: the server adopts the other end of a new socketpair. */
static void connect_client(int i)
{
    client *c = &st.c[i];
    int sv[2];
    check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
          "a socketpair");
    check(http_server_adopt(st.srv, sv[0]) == 0, "the server adopts the socket");
    c->fd = sv[1];
    c->started = 1;
    pump();
}

/* Sends the input in chunks, chunk k on connection k % nconns (connected on
 * its first chunk, so that earlier ones may be busy by then). */
static void send_all(const uint8_t *data, size_t size, size_t chunk)
{
    size_t off = 0;
    for (int k = 0; off < size; k++) {
        size_t n = chunk && chunk < size - off ? chunk : size - off;
        client *c = &st.c[k % st.nconns];
        if (!c->started)
            connect_client(k % st.nconns);
        if (c->fd < 0 || c->stalled) { /* its bytes are lost */
            off += n;
            continue;
        }
        ssize_t w = write(c->fd, data + off, n);
        if (w < 0) {
            /* full (the server stopped reading: backpressure) or gone */
            int stuck = 0;
            while (conns_open() && stuck++ < 50) {
                pump();
                read_clients();
                answer_deferred();
                w = write(c->fd, data + off, n);
                if (w >= 0)
                    break;
            }
            if (w < 0) { /* the server does not read any more: that is its right */
                c->stalled = 1;
                w = (ssize_t)n;
            }
        }
        off += (size_t)w;
        pump();
    }
}

static void on_server_freed(void *ud)
{
    (void)ud;
    st.freed = 1;
}

static void settle(const char *what)
{
    for (int i = 0; i < SETTLE_ITERS && conns_open(); i++) {
        pump();
        read_clients();
        answer_deferred();
    }
    if (conns_open()) {
        fprintf(stderr, "fuzz_http: a connection is still open %d loop iterations after %s\n",
                SETTLE_ITERS, what);
        abort();
    }
}

/* A server with the limits of control byte 1, kept between inputs (making one
 * costs more than a short input's whole run) until an input closes it. */
static http_server *servers[256];

static http_server *server_for(uint8_t lim)
{
    http_server **slot = &servers[lim];
    if (*slot)
        return *slot;
    http_config cfg;
    http_config_default(&cfg);
    if (lim & 1)
        cfg.max_header_bytes = 512;
    cfg.max_body_bytes = lim & 2 ? 256 : 65536;
    static const uint32_t PIPE[4] = { 1, 2, 4, 16 };
    cfg.max_pipelined = PIPE[(lim >> 2) & 3];
    cfg.allow_no_length = (lim >> 4) & 1;
    if (lim & 0x20)
        cfg.max_headers = 8;
    if (lim >> 6) { /* several connections: over a cap of 2, with 1 reserve connection */
        cfg.max_connections = 2;
        cfg.reserve_connections = 1;
    }
    http_server *s;
    check(http_server_new(&loop, &cfg, &s) == 0, "a server");
    http_server_route_always(s, "GET", "/healthz", on_healthz, NULL);
    http_server_route(s, "GET", "/v1/samples", on_samples, NULL);
    http_server_route(s, "POST", "/v1/samples", on_samples, NULL);
    http_server_route(s, "GET", "/defer", on_defer, NULL);
    http_server_route(s, "POST", "/defer", on_defer, NULL);
    http_server_route(s, "GET", "/drop", on_drop, NULL);
    http_server_route(s, "POST", "/close", on_close, NULL);
    http_server_route(s, "PUT", "/error", on_error, NULL);
    return *slot = s;
}

static void half_close_all(void)
{
    for (int i = 0; i < st.nconns; i++)
        if (st.c[i].fd >= 0)
            shutdown(st.c[i].fd, SHUT_WR);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const size_t CHUNKS[8] = { 0, 1, 2, 3, 7, 16, 61, 512 };
    uint8_t ctl = data[0], lim = data[1];
    int end = (ctl >> 4) & 3;
    data += 2, size -= 2;

    memset(&st, 0, sizeof st);
    st.nconns = 1 + (lim >> 6);
    for (int i = 0; i < MAX_CONNS; i++)
        st.c[i].fd = -1;
    st.drop_deferred = (ctl >> 6) & 1;
    st.abort_later = ctl >> 7;
    st.srv = server_for(lim);
    http_stats hs0;
    http_server_stats(st.srv, &hs0);
    st.seen_out = hs0.bytes_out;

    connect_client(0);
    send_all(data, size, CHUNKS[ctl & 7]);
    if (ctl & 8) { /* let every handler answer before the clients go */
        for (int i = 0; i < 4; i++) {
            pump();
            answer_deferred();
        }
    }
    switch (end) {
    case 0: /* the clients half-close and read to the end */
        half_close_all();
        settle("the clients' EOF");
        break;
    case 1: /* the clients reset: unread input makes close(2) send RST */
        for (int i = 0; i < st.nconns; i++) {
            if (st.c[i].fd >= 0)
                close(st.c[i].fd);
            st.c[i].fd = -1;
        }
        settle("the clients' reset");
        break;
    case 2: /* the server closes at once: pending requests aborted */
        http_server_close(st.srv, on_server_freed, NULL);
        break;
    case 3: /* graceful shutdown: owed responses go out, then everything closes */
        http_server_shutdown(st.srv, 60000, on_server_freed, NULL);
        half_close_all();
        settle("a graceful shutdown and the clients' EOF");
        if (!st.freed) /* ends the grace */
            http_server_close(st.srv, on_server_freed, NULL);
        break;
    }
    if (end >= 2) { /* the server is going: the next input with these limits makes a new one */
        for (int i = 0; i < SETTLE_ITERS && !st.freed; i++) {
            pump();
            answer_deferred();
        }
        check(st.freed, "the server is freed after http_server_close");
        servers[lim] = NULL;
    } else { /* the server stays: its books must balance with no connection open */
        http_stats hs;
        http_server_stats(st.srv, &hs);
        check(hs.connections_open == 0, "no connection counted open");
        check(hs.body_bytes_receiving == 0, "no body bytes counted as arriving");
    }
    answer_deferred(); /* aborted ones left for later (bit 7), after the server is gone too */
    check(st.ndeferred == 0, "every deferred request finished");
    read_clients();
    for (int i = 0; i < st.nconns; i++) {
        client *c = &st.c[i];
        check_output(c);
        if (c->fd >= 0)
            close(c->fd);
        free(c->out);
    }
    return 0;
}
