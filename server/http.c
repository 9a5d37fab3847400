/* http.c -- HTTP/1.1 server core: listening, connections, driving llhttp (the
 * callbacks are in http_parse.c), ordered writes, timeouts and lingering close.
 *
 * Design notes:
 *  - All connections share one 64 KiB read buffer (the server's): input is parsed
 *    synchronously in the read callback and whatever must outlive it is copied.
 *  - A parsed request is queued on its connection before its handler runs; responses
 *    leave in queue order (conn_flush), so pipelined answers never overtake.
 *  - Past max_pipelined queued/writing requests the parser pauses (HPE_PAUSED), the
 *    unparsed rest is saved and reading stops until writes complete.
 *  - One timer per connection; its deadline is recomputed from the state after every
 *    event (header/body timeout -> 408, idle -> close, write stall -> close).
 *  - After a final response (error or Connection: close) the write side is shut down
 *    and input is drained for a while ("lingering close") so the client reads the
 *    response instead of a reset.
 *  - uv handles are freed only in close callbacks; a closing connection never frees
 *    memory while a parse or callback is on the stack. */
#include "server/http_internal.h"

#include "common/err.h"
#include "common/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LINGER_MS 2000

static void conn_parse(http_conn *conn, const char *data, size_t len);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void conn_after_write(http_conn *conn);

void http_config_default(http_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_header_bytes = 16384;
    cfg->max_headers = 100;
    cfg->max_body_bytes = 8u << 20;
    cfg->header_timeout_ms = 10000;
    cfg->body_timeout_ms = 30000;
    cfg->idle_timeout_ms = 60000;
    cfg->max_connections = 1024;
    cfg->max_connections_per_ip = 256;
    cfg->reserve_connections = 32;
    cfg->near_cap_timeout_ms = 1000;
    cfg->max_pipelined = 16;
    cfg->retry_after_s = 1;
    cfg->allow_no_length = 0;
}

static void config_fill(http_config *c, const http_config *in)
{
    http_config d;
    http_config_default(&d);
    if (!in) {
        *c = d;
        return;
    }
    *c = *in;
#define DEF(f) if (!c->f) c->f = d.f
    DEF(max_header_bytes); DEF(max_headers); DEF(max_body_bytes);
    DEF(header_timeout_ms); DEF(body_timeout_ms); DEF(idle_timeout_ms);
    DEF(max_connections); DEF(max_pipelined); DEF(retry_after_s);
    DEF(max_connections_per_ip); DEF(reserve_connections); DEF(near_cap_timeout_ms);
#undef DEF
}

/* ---- connection queue and writes ------------------------------------------------ */

void conn_unlink_req(http_conn *conn, http_req *req)
{
    http_req **pp = &conn->q_head, *prev = NULL;
    while (*pp && *pp != req) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = req->next;
    if (conn->q_tail == req)
        conn->q_tail = prev;
    req->next = NULL;
    conn->nqueued--;
}

static void conn_maybe_resume(http_conn *conn)
{
    http_server *s = conn->srv;
    if (!conn->paused || conn->closing || conn->in_parse || conn->stop_parse ||
        conn->nqueued + conn->nwriting >= s->cfg.max_pipelined)
        return;
    conn->paused = 0;
    llhttp_resume(&conn->parser);
    if (conn->saved_len) {
        conn_parse(conn, conn->saved, conn->saved_len);
        if (conn->closing || conn->paused)
            return;
    }
    if (!conn->reading && !conn->read_eof && !conn->closing) {
        if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0)
            conn->reading = 1;
    }
}

static void on_written(uv_write_t *w, int status)
{
    http_req *req = w->data;
    http_conn *conn = req->conn;
    conn->nwriting--;
    if (status == 0)
        conn->srv->stats.bytes_out += req->head_len + req->rbody_len;
    if (req->streaming)
        stream_head_written(req, status); /* req lives on as the connection's stream */
    else
        req_free(req);
    if (conn->closing)
        return;
    if (status < 0) {
        conn_close_hard(conn);
        return;
    }
    conn_after_write(conn);
}

/* A write finished fine: close if that was the last one owed, else maybe read on. */
static void conn_after_write(http_conn *conn)
{
    conn->t_activity = conn->t_write = uv_now(conn->srv->loop);
    if (conn->srv->draining && !conn->nwriting && !conn->q_head && !conn->stream) {
        conn_begin_linger(conn); /* shutting down: it owes nothing more */
        return;
    }
    if (conn->close_after_write && !conn->nwriting) {
        if (conn->q_head)
            conn_close_hard(conn); /* requests behind a closing response can't be answered */
        else
            conn_begin_linger(conn);
        return;
    }
    conn_maybe_resume(conn);
    if (!conn->closing)
        conn_arm(conn);
}

static void on_continue_written(uv_write_t *w, int status)
{
    http_conn *conn = w->data;
    conn->cont_busy = 0;
    conn->nwriting--;
    if (conn->closing)
        return;
    if (status < 0)
        conn_close_hard(conn);
    else
        conn_after_write(conn);
}

void conn_send_continue(http_conn *conn)
{
    /* only when nothing earlier is still owed: it must not overtake a response */
    if (conn->q_head || conn->nwriting || conn->cont_busy || conn->closing)
        return;
    static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init(cont, sizeof(cont) - 1);
    conn->cont_wr.data = conn;
    if (uv_write(&conn->cont_wr, (uv_stream_t *)&conn->tcp, &b, 1, on_continue_written) == 0) {
        conn->t_write = uv_now(conn->srv->loop);
        conn->cont_busy = 1;
        conn->nwriting++;
    }
}

void conn_flush(http_conn *conn)
{
    if (conn->closing || conn->stream)
        return; /* a streamed response owns the connection to its end */
    while (conn->q_head && conn->q_head->state == REQ_READY && !conn->close_after_write) {
        http_req *req = conn->q_head;
        conn->q_head = req->next;
        if (!conn->q_head)
            conn->q_tail = NULL;
        req->next = NULL;
        conn->nqueued--;
        uv_buf_t b[2];
        unsigned nb = 0;
        b[nb++] = uv_buf_init(req->head, (unsigned)req->head_len);
        if (req->rbody_len)
            b[nb++] = uv_buf_init((char *)req->rbody, (unsigned)req->rbody_len);
        req->wr.data = req;
        req->state = REQ_WRITING;
        if (!conn->nwriting)
            conn->t_write = uv_now(conn->srv->loop);
        int rc = uv_write(&req->wr, (uv_stream_t *)&conn->tcp, b, nb, on_written);
        if (rc < 0) {
            req_free(req);
            conn_close_hard(conn);
            return;
        }
        conn->nwriting++;
        if (!req->keep_alive) {
            conn->close_after_write = 1;
            conn->stop_parse = 1;
        }
        if (req->streaming)
            break; /* nothing may follow a streamed response on this connection */
    }
    conn_arm(conn);
}

/* Answers the request being parsed (or a fresh one) with a server error and stops
 * accepting requests on conn; the connection closes once everything is written. */
static void conn_fail(http_conn *conn, int status, const char *code, const char *msg)
{
    if (conn->closing)
        return;
    conn->stop_parse = 1;
    http_req *req = conn->cur;
    conn->cur = NULL;
    if (req)
        conn_cur_received(conn, req);
    else
        req = req_new(conn);
    if (!req) {
        conn_close_hard(conn);
        return;
    }
    req->keep_alive = 0;
    req->state = REQ_PENDING;
    if (conn->q_tail)
        conn->q_tail->next = req;
    else
        conn->q_head = req;
    conn->q_tail = req;
    conn->nqueued++;
    if (status == 503 && conn->limited)
        http_resp_retry_after(req, conn->srv->cfg.retry_after_s);
    req_respond_internal(req, status, code, msg, NULL);
}

/* ---- closing ------------------------------------------------------------------- */

static void server_maybe_free(http_server *s);

static void on_conn_closed(uv_handle_t *h)
{
    http_conn *conn = h->data;
    if (--conn->handles > 0)
        return;
    http_server *s = conn->srv;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        s->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    if (conn->limited)
        s->nlimited--;
    s->stats.connections_open--;
    free(conn->saved);
    free(conn);
    s->nhandles--;
    server_maybe_free(s);
}

void conn_close_hard(http_conn *conn)
{
    if (conn->closing)
        return;
    http_server *s = conn->srv;
    conn->closing = 1;
    conn->stop_parse = 1;
    if (!conn->limited)
        s->nactive--;
    if (conn->reading)
        uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->reading = 0;
    uv_timer_stop(&conn->timer);
    conn_drop_cur(conn);
    /* detach pending requests first, then tell their owners (who may finish any of them) */
    http_req *aborted = NULL, **tail = &aborted;
    for (http_req *r = conn->q_head, *next; r; r = next) {
        next = r->next;
        r->next = NULL;
        /* a stream is its owner's until ended, even once its head is ready */
        if ((r->state == REQ_PENDING || r->streaming) && !r->stream_ended) {
            r->conn = NULL;
            r->aborted = 1;
            r->abort_pending = 1;
            s->stats.requests_aborted++;
            *tail = r;
            tail = &r->next;
        } else {
            req_free(r);
        }
    }
    conn->q_head = conn->q_tail = NULL;
    conn->nqueued = 0;
    tail = stream_detach(conn, tail);
    uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&conn->timer, on_conn_closed);
    while (aborted) {
        http_req *r = aborted;
        aborted = r->next;
        r->next = NULL;
        r->abort_pending = 0;
        if (r->finished) {
            req_free(r);
            continue;
        }
        void (*fn)(http_req *, void *) = r->abort_fn;
        r->abort_fn = NULL;
        if (fn)
            fn(r, r->abort_ud);
    }
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    http_conn *conn = sr->data;
    if (conn->closing)
        return;
    if (status < 0 || conn->read_eof)
        conn_close_hard(conn);
}

void conn_begin_linger(http_conn *conn)
{
    if (conn->lingering || conn->closing)
        return;
    conn->lingering = 1;
    conn->stop_parse = 1;
    conn->t_linger = uv_now(conn->srv->loop);
    conn->shut.data = conn;
    if (uv_shutdown(&conn->shut, (uv_stream_t *)&conn->tcp, on_shutdown) < 0) {
        conn_close_hard(conn);
        return;
    }
    if (!conn->reading && !conn->read_eof &&
        uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0)
        conn->reading = 1;
    conn_arm(conn);
}

/* ---- timers ------------------------------------------------------------------ */

enum { T_NONE, T_HEADER, T_BODY, T_IDLE, T_WRITE, T_LINGER };

/* From 7/8 of max_connections on, connections without a complete request get
 * near_cap_timeout_ms instead of the header and idle timeouts. */
static int near_cap(const http_server *s)
{
    return (uint64_t)s->nactive * 8 >= (uint64_t)s->cfg.max_connections * 7;
}

static uint64_t shorter(uint64_t a, uint64_t b) { return a < b ? a : b; }

static uint64_t conn_deadline(const http_conn *conn, int *kind)
{
    const http_config *c = &conn->srv->cfg;
    const uint64_t quick = near_cap(conn->srv) || conn->limited ? c->near_cap_timeout_ms
                                                                : UINT64_MAX;
    if (conn->lingering) {
        *kind = T_LINGER;
        uint32_t l = c->header_timeout_ms < LINGER_MS ? c->header_timeout_ms : LINGER_MS;
        return conn->t_linger + l;
    }
    if (conn->nwriting) {
        *kind = T_WRITE;
        return conn->t_write + c->idle_timeout_ms;
    }
    if (conn->stream) { /* a live stream is a request in progress: only silence ends it */
        *kind = T_IDLE;
        return conn->t_activity + c->idle_timeout_ms;
    }
    if (conn->cur) {
        if (conn->cur->headers_done) {
            *kind = T_BODY;
            return conn->t_headers + c->body_timeout_ms;
        }
        *kind = T_HEADER;
        return conn->t_begin + shorter(c->header_timeout_ms, quick);
    }
    if (conn->q_head || conn->paused) { /* waiting for handlers: their business */
        *kind = T_NONE;
        return 0;
    }
    *kind = T_IDLE;
    return conn->t_activity +
           shorter(conn->had_request ? c->idle_timeout_ms : c->header_timeout_ms, quick);
}

static void on_timer(uv_timer_t *t)
{
    http_conn *conn = t->data;
    int kind;
    uint64_t d = conn_deadline(conn, &kind);
    uint64_t now = uv_now(conn->srv->loop);
    if (kind == T_NONE)
        return;
    if (now < d) {
        conn_arm(conn);
        return;
    }
    switch (kind) {
    case T_HEADER:
    case T_BODY:
        conn->srv->stats.timeouts++;
        conn_fail(conn, 408, "timeout",
                  kind == T_HEADER ? "request headers did not arrive in time"
                                   : "request body did not arrive in time");
        break;
    default: /* idle, stalled write, linger: just close */
        conn_close_hard(conn);
        break;
    }
}

void conn_arm(http_conn *conn)
{
    if (conn->closing)
        return;
    int kind;
    uint64_t d = conn_deadline(conn, &kind);
    if (kind == T_NONE) {
        uv_timer_stop(&conn->timer);
        return;
    }
    uint64_t now = uv_now(conn->srv->loop);
    uv_timer_start(&conn->timer, on_timer, d > now ? d - now : 1, 0);
}

/* ---- reading and parsing --------------------------------------------------------- */

static int save_rest(http_conn *conn, const char *rest, size_t n)
{
    /* rest inside saved (a resumed parse paused again): integers, as saved may be NULL */
    if (conn->saved_len && (uintptr_t)rest - (uintptr_t)conn->saved < conn->saved_len) {
        memmove(conn->saved, rest, n);
        conn->saved_len = n;
        return 0;
    }
    if (conn->saved_len + n > conn->saved_cap) {
        size_t cap = conn->saved_cap ? conn->saved_cap : 4096;
        while (cap < conn->saved_len + n)
            cap *= 2;
        char *p = realloc(conn->saved, cap);
        if (!p)
            return DDM_ENOMEM;
        conn->saved = p;
        conn->saved_cap = cap;
    }
    memcpy(conn->saved + conn->saved_len, rest, n);
    conn->saved_len += n;
    return 0;
}

static int parse_status(llhttp_errno_t e)
{
    return e == HPE_INVALID_TRANSFER_ENCODING ? 501 : 400;
}

static void conn_parse(http_conn *conn, const char *data, size_t len)
{
    int from_saved = conn->saved_len && data == conn->saved;
    conn->in_parse++;
    llhttp_errno_t e = llhttp_execute(&conn->parser, data, len);
    conn->in_parse--;
    if (conn->closing)
        return;
    if (e == HPE_OK) {
        if (from_saved)
            conn->saved_len = 0;
    } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        if (e == HPE_PAUSED_UPGRADE)
            conn->stop_parse = 1;
        const char *pos = llhttp_get_error_pos(&conn->parser);
        size_t rest = pos ? (size_t)(data + len - pos) : 0;
        if (conn->stop_parse) {
            conn->saved_len = 0; /* nothing after a final request is read */
        } else {
            if (!from_saved)
                conn->saved_len = 0;
            if (rest && save_rest(conn, pos, rest) < 0) {
                conn_close_hard(conn);
                return;
            }
            if (!rest)
                conn->saved_len = 0;
            conn->paused = 1;
            if (conn->reading) {
                uv_read_stop((uv_stream_t *)&conn->tcp);
                conn->reading = 0;
            }
            /* everything may already be written (all answered synchronously) */
            conn_maybe_resume(conn);
            if (conn->closing)
                return;
        }
    } else {
        if (from_saved)
            conn->saved_len = 0;
        if (conn->err_status) {
            if (conn->err_status == 400)
                conn->srv->stats.parse_errors++;
            conn_fail(conn, conn->err_status, conn->err_code, conn->err_msg);
        } else {
            char msg[200];
            snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
                     llhttp_get_error_reason(&conn->parser));
            int st = parse_status(e);
            if (st == 400)
                conn->srv->stats.parse_errors++;
            conn_fail(conn, st, st == 400 ? "bad_request" : "not_implemented", msg);
        }
        return;
    }
    if (!conn->closing)
        conn_arm(conn);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    http_conn *conn = h->data;
    *buf = uv_buf_init(conn->srv->rbuf, sizeof(conn->srv->rbuf));
}

static int conn_has_pending(const http_conn *conn)
{
    for (const http_req *r = conn->q_head; r; r = r->next)
        if (r->state == REQ_PENDING)
            return 1;
    return 0;
}

static void on_eof(http_conn *conn)
{
    conn->read_eof = 1;
    if (conn->reading)
        uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->reading = 0;
    if (conn->lingering || conn->cur || conn_has_pending(conn) ||
        (!conn->q_head && !conn->nwriting)) {
        conn_close_hard(conn);
        return;
    }
    /* only responses in flight: finish writing them, then close */
    conn->stop_parse = 1;
    conn->close_after_write = 1;
    conn_arm(conn);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    http_conn *conn = stream->data;
    if (conn->closing)
        return;
    if (nread == UV_EOF) {
        on_eof(conn);
        return;
    }
    if (nread < 0) {
        conn_close_hard(conn);
        return;
    }
    if (nread == 0)
        return;
    conn->srv->stats.bytes_in += (uint64_t)nread;
    conn->t_activity = uv_now(conn->srv->loop);
    if (conn->lingering || conn->stop_parse) {
        conn_arm(conn);
        return; /* drained and dropped */
    }
    if (conn->paused) { /* should not happen: reading stops while paused */
        if (save_rest(conn, buf->base, (size_t)nread) < 0)
            conn_close_hard(conn);
        return;
    }
    conn_parse(conn, buf->base, (size_t)nread);
}

/* ---- server ---------------------------------------------------------------------- */

static int same_peer(const http_conn *a, const http_conn *b)
{
    if (!a->has_peer || !b->has_peer || a->peer.ss_family != b->peer.ss_family)
        return 0;
    if (a->peer.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->peer)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)&b->peer)->sin_addr.s_addr;
    if (a->peer.ss_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)&a->peer)->sin6_addr,
                       &((const struct sockaddr_in6 *)&b->peer)->sin6_addr,
                       sizeof(struct in6_addr));
    return 0;
}

/* A connection with no complete request in progress: silent since accepted,
 * half a request line or headers, or idle keep-alive. A live stream is a
 * response in progress, however quiet, so never evictable. */
static int evictable(const http_conn *c)
{
    return !c->closing && !c->limited && !c->lingering && !c->q_head && !c->nwriting &&
           !c->stream && !c->paused && (!c->cur || !c->cur->headers_done);
}

/* Closes the evictable connection (of conn's client address when per_ip) that
 * has gone longest without activity; returns 1 if there was one. */
static int evict_one(http_server *s, const http_conn *conn, int per_ip)
{
    http_conn *victim = NULL;
    for (http_conn *c = s->conns; c; c = c->next)
        if (c != conn && evictable(c) && (!per_ip || same_peer(c, conn)) &&
            (!victim || c->t_activity < victim->t_activity))
            victim = c;
    if (!victim)
        return 0;
    s->stats.connections_evicted++;
    conn_close_hard(victim);
    return 1;
}

/* Whether a new connection (counted in nactive) fits under the caps, making
 * room by eviction where it can. */
static int admit(http_server *s, http_conn *conn)
{
    uint32_t same = 0;
    for (http_conn *c = s->conns; c; c = c->next)
        same += c != conn && !c->closing && !c->limited && same_peer(c, conn);
    if (same >= s->cfg.max_connections_per_ip && !evict_one(s, conn, 1))
        return 0;
    if (s->nactive > s->cfg.max_connections && !evict_one(s, conn, 0))
        return 0;
    return 1;
}

/* A new connection of s: handles initialised and counted (in nactive too),
 * not connected yet. NULL when out of memory. */
static http_conn *conn_new(http_server *s)
{
    http_conn *conn = calloc(1, sizeof(*conn));
    if (!conn)
        return NULL;
    conn->srv = s;
    uv_tcp_init(s->loop, &conn->tcp);
    uv_timer_init(s->loop, &conn->timer);
    conn->tcp.data = conn->timer.data = conn;
    conn->handles = 2;
    conn->next = s->conns;
    if (s->conns)
        s->conns->prev = conn;
    s->conns = conn;
    s->nhandles++;
    s->stats.connections_open++;
    s->nactive++; /* conn_close_hard takes it back */
    conn->t_activity = uv_now(s->loop);
    return conn;
}

/* Serves conn, now connected: the caps, the parser, reading, the timer. */
static void conn_start(http_server *s, http_conn *conn)
{
    s->stats.connections_total++;
    uv_tcp_nodelay(&conn->tcp, 1);
    llhttp_init(&conn->parser, HTTP_REQUEST, &s->settings);
    conn->parser.data = conn;
    int plen = sizeof(conn->peer);
    conn->has_peer = uv_tcp_getpeername(&conn->tcp, (struct sockaddr *)&conn->peer, &plen) == 0;
    if (!admit(s, conn)) {
        s->nactive--;
        s->stats.connections_rejected++;
        if (s->nlimited >= s->cfg.reserve_connections) { /* far over: no courtesy */
            conn->limited = 1; /* not counted in nactive */
            s->nlimited++;
            conn_close_hard(conn);
            return;
        }
        conn->limited = 1; /* read, but only "always" routes are served (dispatch) */
        s->nlimited++;
    }
    if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) < 0) {
        conn_close_hard(conn);
        return;
    }
    conn->reading = 1;
    int near = near_cap(s);
    if (near && !s->was_near) /* the short timeouts start now for every connection */
        for (http_conn *c = s->conns; c; c = c->next)
            conn_arm(c);
    else
        conn_arm(conn);
    s->was_near = near;
}

static void on_connection(uv_stream_t *ls, int status)
{
    http_server *s = ls->data;
    if (status < 0 || s->closing) {
        if (status < 0)
            log_warn("http: accept failed: %s", uv_strerror(status));
        return;
    }
    http_conn *conn = conn_new(s);
    if (!conn) {
        log_error("http: out of memory accepting a connection");
        return;
    }
    if (uv_accept(ls, (uv_stream_t *)&conn->tcp) < 0) {
        conn_close_hard(conn);
        return;
    }
    conn_start(s, conn);
}

int http_server_adopt(http_server *s, uv_os_sock_t fd)
{
    if (s->closing)
        return DDM_ECLOSED;
    http_conn *conn = conn_new(s);
    if (!conn)
        return DDM_ENOMEM;
    int rc = uv_tcp_open(&conn->tcp, fd);
    if (rc < 0) {
        conn_close_hard(conn);
        return rc;
    }
    conn_start(s, conn);
    return 0;
}

int http_server_new(uv_loop_t *loop, const http_config *cfg, http_server **out)
{
    *out = NULL;
    http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return DDM_ENOMEM;
    /* libuv writes with write(2): a peer reset must be EPIPE, not a dead process */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    s->loop = loop;
    config_fill(&s->cfg, cfg);
    int rc = uv_tcp_init(loop, &s->listener);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->listener.data = s;
    s->nhandles = 1;
    http_parse_settings(&s->settings);
    *out = s;
    return 0;
}

/* Adds or replaces the route (method, path, prefix); always: served on reserve
 * connections too. */
static int route_add(http_server *s, const char *method, const char *path, int prefix,
                     int always, http_handler_fn handler, void *ud)
{
    if (!method || !*method || !path || path[0] != '/' || !handler)
        return DDM_EINVAL;
    for (const char *m = method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return DDM_EINVAL;
    for (size_t i = 0; i < s->nroutes; i++) {
        if (!strcmp(s->routes[i].method, method) && !strcmp(s->routes[i].path, path) &&
            s->routes[i].prefix == prefix) {
            s->routes[i].fn = handler;
            s->routes[i].ud = ud;
            s->routes[i].always = always;
            return 0;
        }
    }
    if (s->nroutes == s->croutes) {
        size_t cap = s->croutes ? s->croutes * 2 : 8;
        route *r = realloc(s->routes, cap * sizeof(*r));
        if (!r)
            return DDM_ENOMEM;
        s->routes = r;
        s->croutes = cap;
    }
    route *r = &s->routes[s->nroutes];
    r->method = strdup(method);
    r->path = strdup(path);
    if (!r->method || !r->path) {
        free(r->method);
        free(r->path);
        return DDM_ENOMEM;
    }
    r->prefix = prefix;
    r->fn = handler;
    r->ud = ud;
    r->always = always;
    s->nroutes++;
    return 0;
}

int http_server_route(http_server *s, const char *method, const char *path,
                      http_handler_fn handler, void *ud)
{
    return route_add(s, method, path, 0, 0, handler, ud);
}

int http_server_route_always(http_server *s, const char *method, const char *path,
                             http_handler_fn handler, void *ud)
{
    return route_add(s, method, path, 0, 1, handler, ud);
}

int http_server_route_prefix(http_server *s, const char *method, const char *prefix,
                             http_handler_fn handler, void *ud)
{
    return route_add(s, method, prefix, 1, 0, handler, ud);
}

void http_server_set_filter(http_server *s, int (*fn)(http_req *req, void *ud), void *ud)
{
    s->filter = fn;
    s->filter_ud = ud;
}

static int parse_hostport(const char *hp, struct sockaddr_storage *ss)
{
    const char *colon = strrchr(hp, ':');
    if (!colon || !colon[1])
        return DDM_EINVAL;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return DDM_EINVAL;
    size_t hl = (size_t)(colon - hp);
    char host[128];
    if (hl >= sizeof(host))
        return DDM_EINVAL;
    memcpy(host, hp, hl);
    host[hl] = '\0';
    if (host[0] == '[') {
        if (hl < 3 || host[hl - 1] != ']')
            return DDM_EINVAL;
        host[hl - 1] = '\0';
        return uv_ip6_addr(host + 1, (int)port, (struct sockaddr_in6 *)ss) < 0 ? DDM_EINVAL : 0;
    }
    if (!host[0] || !strcmp(host, "*"))
        strcpy(host, "0.0.0.0");
    else if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) < 0 ? DDM_EINVAL : 0;
}

int http_server_listen(http_server *s, const char *hostport, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (s->closing || s->listening) {
        if (errlen)
            snprintf(err, errlen, "http server is already listening or closing");
        return DDM_EINVAL;
    }
    if (!hostport || parse_hostport(hostport, &ss) < 0) {
        if (errlen)
            snprintf(err, errlen,
                     "listen address \"%s\" is not host:port (e.g. 127.0.0.1:8080 or [::1]:8080)",
                     hostport ? hostport : "");
        return DDM_EINVAL;
    }
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc < 0) {
        if (errlen)
            snprintf(err, errlen, "cannot listen on %s: %s", hostport, uv_strerror(rc));
        return rc;
    }
    s->listening = 1;
    return 0;
}

int http_server_port(const http_server *s)
{
    if (!s->listening)
        return DDM_ECLOSED;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    if (rc < 0)
        return rc;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void on_grace_closed(uv_handle_t *h)
{
    http_server *s = h->data;
    s->nhandles--;
    server_maybe_free(s);
}

static void server_maybe_free(http_server *s)
{
    if (s->closing && s->grace_open && s->nhandles == 1) { /* only the grace timer left */
        s->grace_open = 0;
        uv_close((uv_handle_t *)&s->grace, on_grace_closed);
        return;
    }
    if (!s->closing || s->nhandles > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *ud = s->close_ud;
    for (size_t i = 0; i < s->nroutes; i++) {
        free(s->routes[i].method);
        free(s->routes[i].path);
    }
    free(s->routes);
    free(s);
    if (cb)
        cb(ud);
}

static void on_listener_closed(uv_handle_t *h)
{
    http_server *s = h->data;
    s->nhandles--;
    server_maybe_free(s);
}

static void close_all(http_server *s)
{
    /* connections are unlinked only in their close callbacks, so walking is safe
     * even though abort callbacks run inside conn_close_hard */
    for (http_conn *c = s->conns; c; c = c->next)
        conn_close_hard(c);
    if (s->grace_open && s->nhandles == 1) /* nothing else left: end now */
        server_maybe_free(s);
}

void http_server_close(http_server *s, void (*close_cb)(void *ud), void *ud)
{
    if (!s)
        return;
    if (s->draining && s->grace_open) { /* ends the grace of http_server_shutdown */
        if (close_cb) {
            s->close_cb = close_cb;
            s->close_ud = ud;
        }
        uv_timer_stop(&s->grace);
        close_all(s);
        return;
    }
    if (s->closing)
        return;
    s->closing = 1;
    s->close_cb = close_cb;
    s->close_ud = ud;
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    close_all(s);
}

static void on_grace(uv_timer_t *t)
{
    close_all(t->data);
}

/* A connection when the server starts draining: stop taking requests, and
 * close it now if it owes nothing (else conn_after_write does, later). */
static void conn_drain(http_conn *conn)
{
    if (conn->closing || conn->lingering)
        return;
    conn->stop_parse = 1;
    conn_drop_cur(conn); /* a request not fully received: it will not be served */
    conn->saved_len = 0;
    if (!conn->q_head && !conn->nwriting && !conn->stream)
        conn_begin_linger(conn); /* a stream closes when its owner ends it (or at the grace) */
    else
        conn_arm(conn);
}

void http_server_shutdown(http_server *s, uint32_t grace_ms, void (*close_cb)(void *ud),
                          void *ud)
{
    if (!s || s->closing)
        return;
    s->closing = 1;
    s->draining = 1;
    s->close_cb = close_cb;
    s->close_ud = ud;
    uv_timer_init(s->loop, &s->grace);
    s->grace.data = s;
    s->grace_open = 1;
    s->nhandles++;
    uv_timer_start(&s->grace, on_grace, grace_ms ? grace_ms : 1, 0);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    for (http_conn *c = s->conns; c; c = c->next)
        conn_drain(c);
}

void conn_drop_cur(http_conn *conn)
{
    if (!conn->cur)
        return;
    conn_cur_received(conn, conn->cur);
    req_free(conn->cur);
    conn->cur = NULL;
}

void conn_cur_received(http_conn *conn, http_req *req)
{
    if (req->receiving) {
        conn->srv->stats.body_bytes_receiving -= req->bcap;
        req->receiving = 0;
    }
}

void http_server_stats(const http_server *s, http_stats *out)
{
    *out = s->stats;
}

uint64_t http_server_status_count(const http_server *s, int status)
{
    return status >= 100 && status <= 599 ? s->status_counts[status] : 0;
}
