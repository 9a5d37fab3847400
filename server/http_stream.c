/* http_stream.c -- streamed HTTP responses (see http.h): a head without
 * Content-Length, then body bytes as the owner produces them, then close.
 *
 * The head goes through the connection's ordered queue like any response
 * (conn_flush); once it is written the request becomes conn->stream, which owns
 * the connection until it ends: no later response is written and nothing more
 * is parsed. Body bytes written before the head went out wait in req->sbuf.
 * Each later write is one malloc'd chunk with its own uv_write_t; chunks keep a
 * pointer to the connection, not to the request, so a request ended (and
 * freed) by its owner while chunks are in flight is fine. The connection
 * outlives its write callbacks (libuv calls them, with UV_ECANCELED when
 * closing, before the handle's close callback). */
#include "server/http_internal.h"

#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct chunk {
    uv_write_t wr;
    http_conn *conn;
    size_t len;
    char data[];
} chunk;

/* All queued bytes are out and the owner ended: close gracefully. */
static void stream_finish(http_conn *conn, http_req *req)
{
    conn->stream = NULL;
    req_free(req);
    conn->close_after_write = 1;
    conn->stop_parse = 1;
    if (!conn->nwriting)
        conn_begin_linger(conn);
}

static void on_chunk_written(uv_write_t *w, int status)
{
    chunk *c = w->data;
    http_conn *conn = c->conn;
    conn->nwriting--;
    conn->stream_queued -= c->len;
    if (status == 0)
        conn->srv->stats.bytes_out += c->len;
    free(c);
    if (conn->closing)
        return;
    if (status < 0) {
        conn_close_hard(conn);
        return;
    }
    conn->t_activity = conn->t_write = uv_now(conn->srv->loop);
    http_req *req = conn->stream;
    if (req && req->stream_ended && !conn->nwriting) {
        stream_finish(conn, req);
        return;
    }
    if (req && conn->stream_queued == 0 && req->drain_fn)
        req->drain_fn(req, req->drain_ud); /* may write or end the stream */
    if (!conn->closing)
        conn_arm(conn);
}

/* Hands len bytes to libuv on the live stream of conn. */
static int chunk_write(http_conn *conn, const void *data, size_t len)
{
    chunk *c = malloc(sizeof *c + len);
    if (!c)
        return DDM_ENOMEM;
    c->conn = conn;
    c->len = len;
    memcpy(c->data, data, len);
    c->wr.data = c;
    uv_buf_t b = uv_buf_init(c->data, (unsigned)len);
    int rc = uv_write(&c->wr, (uv_stream_t *)&conn->tcp, &b, 1, on_chunk_written);
    if (rc < 0) {
        free(c);
        conn_close_hard(conn);
        return DDM_ECLOSED;
    }
    if (!conn->nwriting)
        conn->t_write = uv_now(conn->srv->loop);
    conn->nwriting++;
    conn->stream_queued += len;
    return 0;
}

int http_stream_begin(http_req *req, int status, const char *content_type)
{
    if (req->streaming || status < 200 || status > 599)
        return DDM_EINVAL;
    if (!req->conn)
        return DDM_ECLOSED;
    http_conn *conn = req->conn;
    char line[128];
    int ln = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, http_status_reason(status));
    size_t ct = content_type ? strlen(content_type) + 16 : 0;
    char *head = malloc((size_t)ln + ct + req->rh_len + 24);
    if (!head)
        return DDM_ENOMEM;
    size_t n = (size_t)ln;
    memcpy(head, line, n);
    if (content_type)
        n += (size_t)sprintf(head + n, "Content-Type: %s\r\n", content_type);
    if (req->rh_len) {
        memcpy(head + n, req->rhdrs, req->rh_len);
        n += req->rh_len;
    }
    n += (size_t)sprintf(head + n, "Connection: close\r\n\r\n");
    req->head = head;
    req->head_len = n;
    req->rbody = NULL;
    req->rbody_len = 0;
    req->streaming = 1;
    req->keep_alive = 1; /* the stream, not conn_flush, decides when to close */
    req->state = REQ_READY;
    conn->stop_parse = 1;
    conn->srv->stats.responses[status / 100]++;
    conn->srv->status_counts[status]++;
    conn_flush(conn);
    return 0;
}

void stream_head_written(http_req *req, int status)
{
    http_conn *conn = req->conn;
    free(req->head);
    req->head = NULL;
    req->head_len = 0;
    if (conn->closing || status < 0) {
        /* the connection is going: tell the owner (or free an ended stream) */
        req->conn = NULL;
        req->aborted = 1;
        if (req->stream_ended) {
            req_free(req);
            return;
        }
        conn->srv->stats.requests_aborted++;
        void (*fn)(http_req *, void *) = req->abort_fn;
        req->abort_fn = NULL;
        if (fn)
            fn(req, req->abort_ud);
        if (!conn->closing)
            conn_close_hard(conn);
        return;
    }
    conn->stream = req;
    req->stream_live = 1;
    if (req->sbuf_len) {
        int rc = chunk_write(conn, req->sbuf, req->sbuf_len);
        free(req->sbuf);
        req->sbuf = NULL;
        req->sbuf_len = req->sbuf_cap = 0;
        if (rc)
            return; /* closed: the stream was detached and its owner told */
    }
    if (req->stream_ended && !conn->nwriting)
        stream_finish(conn, req);
}

http_req **stream_detach(http_conn *conn, http_req **tail)
{
    http_req *r = conn->stream;
    if (!r)
        return tail;
    conn->stream = NULL;
    r->stream_live = 0;
    r->conn = NULL;
    r->aborted = 1;
    if (r->stream_ended) { /* the owner is done with it: nobody else to tell */
        req_free(r);
        return tail;
    }
    conn->srv->stats.requests_aborted++;
    r->abort_pending = 1;
    r->next = NULL;
    *tail = r;
    return &r->next;
}

int http_stream_write(http_req *req, const void *data, size_t len)
{
    if (!req->streaming || req->stream_ended)
        return DDM_EINVAL;
    if (!req->conn || req->aborted)
        return DDM_ECLOSED;
    if (req->is_head || len == 0)
        return 0;
    if (req->stream_live)
        return chunk_write(req->conn, data, len);
    if (req->sbuf_len + len > req->sbuf_cap) { /* head not out yet: keep it */
        size_t cap = req->sbuf_cap ? req->sbuf_cap : 4096;
        while (cap < req->sbuf_len + len)
            cap *= 2;
        char *p = realloc(req->sbuf, cap);
        if (!p)
            return DDM_ENOMEM;
        req->sbuf = p;
        req->sbuf_cap = cap;
    }
    memcpy(req->sbuf + req->sbuf_len, data, len);
    req->sbuf_len += len;
    return 0;
}

size_t http_stream_queued(const http_req *req)
{
    if (!req->conn)
        return 0;
    return req->stream_live ? req->conn->stream_queued : req->sbuf_len;
}

void http_stream_on_drain(http_req *req, void (*fn)(http_req *req, void *ud), void *ud)
{
    req->drain_fn = fn;
    req->drain_ud = ud;
}

void http_stream_end(http_req *req, int abort)
{
    if (!req->conn) { /* client gone (or never started as a stream) */
        req_release_detached(req);
        return;
    }
    http_conn *conn = req->conn;
    req->stream_ended = 1;
    req->drain_fn = NULL;
    req->abort_fn = NULL;
    if (!req->streaming) { /* never begun: finish it as a dropped request */
        conn_unlink_req(conn, req);
        req_free(req);
        conn_close_hard(conn);
        return;
    }
    if (req->stream_live) {
        if (abort) {
            conn->stream = NULL;
            req_free(req);
            conn_close_hard(conn);
        } else if (!conn->nwriting) {
            stream_finish(conn, req);
        }
        return; /* else the last chunk's callback finishes it */
    }
    /* the head is not out yet */
    if (req->state == REQ_READY) { /* still in the queue behind earlier responses */
        if (!abort)
            return; /* head and buffered bytes go out in turn, then it finishes */
        conn_unlink_req(conn, req);
        req_free(req);
        conn_close_hard(conn);
        return;
    }
    /* REQ_WRITING: the head's write callback frees it (ended) */
    if (abort)
        conn_close_hard(conn);
}
