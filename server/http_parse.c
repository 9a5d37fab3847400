/* http_parse.c -- llhttp callbacks of the HTTP server: build the request being
 * parsed (URL, headers, body) under the configured limits, reject what cannot be
 * served (411/413/414/431/501), queue complete requests and route them.
 * A failing callback records the status in conn->err_status and returns -1;
 * http.c turns that into the error response after llhttp_execute returns. */
#include "server/http_internal.h"

#include "common/err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ARENA_MIN 512
#define BODY_FIRST 16384 /* a body's first buffer, whatever Content-Length says */

/* ---- request arena (url, header names/values) -------------------------------- */

static int arena_put(http_req *req, const char *at, size_t len)
{
    if (req->alen + len + 1 > req->acap) {
        size_t cap = req->acap ? req->acap : ARENA_MIN;
        while (cap < req->alen + len + 1)
            cap *= 2;
        char *p = realloc(req->arena, cap);
        if (!p)
            return DDM_ENOMEM;
        req->arena = p;
        req->acap = cap;
    }
    memcpy(req->arena + req->alen, at, len);
    req->alen += len;
    return 0;
}

static http_conn *pconn(llhttp_t *p) { return p->data; }

static int fail(http_conn *conn, int status, const char *code, const char *msg)
{
    if (!conn->err_status) {
        conn->err_status = status;
        conn->err_code = code;
        conn->err_msg = msg;
    }
    return -1;
}

/* Counts header-section bytes against the limit; 0 or -1 (error set). */
static int count_bytes(http_conn *conn, http_req *req, size_t len, int is_url)
{
    req->hdr_bytes += len;
    if (req->hdr_bytes > conn->srv->cfg.max_header_bytes) {
        if (is_url)
            return fail(conn, 414, "uri_too_long", "request URL is longer than the server allows");
        return fail(conn, 431, "headers_too_large",
                    "request headers are larger than the server allows");
    }
    return 0;
}

/* ---- llhttp callbacks ------------------------------------------------------------ */

static int cb_message_begin(llhttp_t *p)
{
    http_conn *conn = pconn(p);
    conn_drop_cur(conn); /* cannot be there: message_complete always takes it */
    conn->cur = req_new(conn);
    if (!conn->cur)
        return fail(conn, 503, "out_of_memory", "server is out of memory");
    conn->cur->receiving = 1;
    conn->t_begin = uv_now(conn->srv->loop);
    conn->had_request = 1;
    return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (count_bytes(conn, req, len, 1) < 0)
        return -1;
    if (!req->url_open) {
        req->url_open = 1;
        req->url = (uint32_t)req->alen;
    }
    return arena_put(req, at, len) < 0 ? fail(conn, 503, "out_of_memory", "out of memory") : 0;
}

static int cb_url_complete(llhttp_t *p)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (!req->url_open)
        req->url = (uint32_t)req->alen;
    req->url_open = 0;
    if (arena_put(req, "", 1) < 0)
        return fail(conn, 503, "out_of_memory", "out of memory");
    char *u = req->arena + req->url;
    char *hash = strchr(u, '#');
    if (hash)
        *hash = '\0';
    char *q = strchr(u, '?');
    if (q) {
        *q = '\0';
        req->query = (uint32_t)(q + 1 - req->arena);
    }
    return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (count_bytes(conn, req, len, 0) < 0)
        return -1;
    if (!req->field_open) {
        if (req->nhdrs >= conn->srv->cfg.max_headers)
            return fail(conn, 431, "headers_too_large", "request has too many header lines");
        if (req->nhdrs == req->hcap) {
            uint32_t cap = req->hcap ? req->hcap * 2 : 16;
            hdr_ent *h = realloc(req->hdrs, cap * sizeof(*h));
            if (!h)
                return fail(conn, 503, "out_of_memory", "out of memory");
            req->hdrs = h;
            req->hcap = cap;
        }
        hdr_ent *h = &req->hdrs[req->nhdrs++];
        h->name = (uint32_t)req->alen;
        h->name_len = 0;
        h->val = UINT32_MAX;
        h->val_len = 0;
        req->field_open = 1;
    }
    req->hdrs[req->nhdrs - 1].name_len += (uint32_t)len;
    return arena_put(req, at, len) < 0 ? fail(conn, 503, "out_of_memory", "out of memory") : 0;
}

static int cb_header_field_complete(llhttp_t *p)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (!req->field_open) /* empty name: llhttp rejects it, be defensive */
        return fail(conn, 400, "bad_request", "empty header name");
    req->field_open = 0;
    return arena_put(req, "", 1) < 0 ? fail(conn, 503, "out_of_memory", "out of memory") : 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (count_bytes(conn, req, len, 0) < 0)
        return -1;
    if (!req->nhdrs)
        return fail(conn, 400, "bad_request", "header value without a name");
    hdr_ent *h = &req->hdrs[req->nhdrs - 1];
    if (!req->value_open) {
        req->value_open = 1;
        h->val = (uint32_t)req->alen;
        h->val_len = 0;
    }
    h->val_len += (uint32_t)len;
    return arena_put(req, at, len) < 0 ? fail(conn, 503, "out_of_memory", "out of memory") : 0;
}

static int cb_header_value_complete(llhttp_t *p)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (!req->nhdrs)
        return fail(conn, 400, "bad_request", "header value without a name");
    hdr_ent *h = &req->hdrs[req->nhdrs - 1];
    if (!req->value_open) {
        h->val = (uint32_t)req->alen;
        h->val_len = 0;
    }
    req->value_open = 0;
    /* trim trailing whitespace (llhttp already skipped the leading one) */
    while (h->val_len && (req->arena[h->val + h->val_len - 1] == ' ' ||
                          req->arena[h->val + h->val_len - 1] == '\t')) {
        h->val_len--;
        req->alen--;
    }
    return arena_put(req, "", 1) < 0 ? fail(conn, 503, "out_of_memory", "out of memory") : 0;
}

static int method_needs_length(const char *m)
{
    return !strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH");
}

static int cb_headers_complete(llhttp_t *p)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    const http_config *cfg = &conn->srv->cfg;
    req->headers_done = 1;
    req->method = llhttp_method_name((llhttp_method_t)p->method);
    req->is_head = p->method == HTTP_HEAD;
    req->minor = p->http_major == 1 ? p->http_minor : 0;
    conn->t_headers = uv_now(conn->srv->loop);
    if (!req->arena && arena_put(req, "", 0) < 0)
        return fail(conn, 503, "out_of_memory", "out of memory");

    if (req->minor >= 1 && p->http_major == 1) { /* RFC 9112 3.2: exactly one Host */
        int hosts = 0;
        for (uint32_t i = 0; i < req->nhdrs; i++)
            hosts += strcasecmp(req->arena + req->hdrs[i].name, "Host") == 0;
        if (hosts != 1)
            return fail(conn, 400, "bad_request",
                        hosts ? "more than one Host header"
                              : "HTTP/1.1 requests need a Host header (e.g. Host: localhost)");
    }
    const char *te = http_req_header(req, "Transfer-Encoding");
    if (te && strcasecmp(te, "chunked") != 0)
        return fail(conn, 501, "not_implemented",
                    "Transfer-Encoding other than \"chunked\" is not supported");
    int chunked = (p->flags & F_CHUNKED) != 0;
    int has_len = (p->flags & F_CONTENT_LENGTH) != 0;
    if (!chunked && !has_len && method_needs_length(req->method) && !cfg->allow_no_length)
        return fail(conn, 411, "length_required",
                    "send the body with Content-Length or chunked Transfer-Encoding");
    if (has_len && p->content_length > cfg->max_body_bytes)
        return fail(conn, 413, "body_too_large", "request body is larger than the server allows");
    if (has_len && p->content_length > 0) { /* grows as bytes arrive (cb_body) */
        size_t cap = p->content_length < BODY_FIRST ? p->content_length + 1 : BODY_FIRST;
        req->body = malloc(cap);
        if (!req->body)
            return fail(conn, 503, "out_of_memory", "out of memory");
        req->bcap = cap;
        req->blimit = p->content_length;
        conn->srv->stats.body_bytes_receiving += cap;
    }
    /* 100-continue only when nothing earlier is still owed (order) */
    const char *expect = http_req_header(req, "Expect");
    if (expect && !strcasecmp(expect, "100-continue") && (chunked || p->content_length > 0) &&
        req->minor >= 1)
        conn_send_continue(conn);
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    if (req->blen + len > conn->srv->cfg.max_body_bytes)
        return fail(conn, 413, "body_too_large", "request body is larger than the server allows");
    if (req->blen + len + 1 > req->bcap) {
        size_t cap = req->bcap ? req->bcap * 2 : 4096;
        while (cap < req->blen + len + 1)
            cap *= 2;
        size_t most = (req->blimit ? req->blimit : conn->srv->cfg.max_body_bytes) + 1;
        if (cap > most)
            cap = most;
        uint8_t *b = realloc(req->body, cap);
        if (!b)
            return fail(conn, 503, "out_of_memory", "out of memory");
        conn->srv->stats.body_bytes_receiving += cap - req->bcap;
        req->body = b;
        req->bcap = cap;
    }
    memcpy(req->body + req->blen, at, len);
    req->blen += len;
    return 0;
}

/* Exact routes match the whole path, prefix routes any path that starts with theirs. */
static int route_matches(const route *r, const char *path)
{
    return r->prefix ? !strncmp(r->path, path, strlen(r->path)) : !strcmp(r->path, path);
}

static void dispatch(http_conn *conn, http_req *req)
{
    http_server *s = conn->srv;
    const char *path = http_req_path(req);
    route *get = NULL, *hit = NULL;
    int path_known = 0;
    for (size_t i = 0; i < s->nroutes && !hit; i++) {
        route *r = &s->routes[i];
        if (!route_matches(r, path))
            continue;
        path_known = 1;
        if (strcmp(r->method, req->method) == 0)
            hit = r;
        else if (!strcmp(r->method, "GET"))
            get = r;
    }
    if (!hit && get && req->is_head)
        hit = get;
    if (conn->limited && !(hit && hit->always)) { /* a reserve connection: health only */
        req->keep_alive = 0;
        conn->stop_parse = 1;
        http_resp_retry_after(req, s->cfg.retry_after_s);
        req_respond_internal(req, 503, "overloaded",
                             "server has too many connections, retry later", NULL);
        return;
    }
    if (s->filter && s->filter(req, s->filter_ud))
        return; /* answered by the filter (e.g. a CORS preflight) */
    if (hit) {
        s->stats.requests_total++;
        hit->fn(req, hit->ud);
        return;
    }
    if (get && req->is_head) {
        s->stats.requests_total++;
        get->fn(req, get->ud);
        return;
    }
    if (!path_known) {
        char msg[160];
        snprintf(msg, sizeof(msg), "no such path: %.100s", path);
        req_respond_internal(req, 404, "not_found", msg, NULL);
        return;
    }
    char allow[256] = "";
    size_t n = 0;
    for (size_t i = 0; i < s->nroutes; i++) {
        if (!route_matches(&s->routes[i], path))
            continue;
        n += (size_t)snprintf(allow + n, n < sizeof(allow) ? sizeof(allow) - n : 0, "%s%s",
                              n ? ", " : "", s->routes[i].method);
        if (!strcmp(s->routes[i].method, "GET"))
            n += (size_t)snprintf(allow + n, n < sizeof(allow) ? sizeof(allow) - n : 0, ", HEAD");
        if (n >= sizeof(allow))
            break;
    }
    char msg[300];
    snprintf(msg, sizeof(msg), "method %s is not allowed here; allowed: %s", req->method, allow);
    req_respond_internal(req, 405, "method_not_allowed", msg, allow);
}

static int cb_message_complete(llhttp_t *p)
{
    http_conn *conn = pconn(p);
    http_req *req = conn->cur;
    conn->cur = NULL;
    conn_cur_received(conn, req);
    if (req->body)
        req->body[req->blen] = '\0';
    req->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    req->state = REQ_PENDING;
    if (conn->q_tail)
        conn->q_tail->next = req;
    else
        conn->q_head = req;
    conn->q_tail = req;
    conn->nqueued++;
    if (!req->keep_alive)
        conn->stop_parse = 1;
    dispatch(conn, req); /* may respond, close the connection or the server */
    if (conn->closing || conn->stop_parse ||
        conn->nqueued + conn->nwriting >= conn->srv->cfg.max_pipelined)
        return HPE_PAUSED;
    return 0;
}

void http_parse_settings(llhttp_settings_t *st)
{
    llhttp_settings_init(st);
    st->on_message_begin = cb_message_begin;
    st->on_url = cb_url;
    st->on_url_complete = cb_url_complete;
    st->on_header_field = cb_header_field;
    st->on_header_field_complete = cb_header_field_complete;
    st->on_header_value = cb_header_value;
    st->on_header_value_complete = cb_header_value_complete;
    st->on_headers_complete = cb_headers_complete;
    st->on_body = cb_body;
    st->on_message_complete = cb_message_complete;
}
