/* http_req.c -- HTTP request accessors and the response API (building status line,
 * headers and body for one request; http.c writes them in order). */
#include "server/http_internal.h"

#include "common/err.h"
#include "common/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_RESP_HEADERS 64

http_req *req_new(http_conn *conn)
{
    http_req *req = calloc(1, sizeof(*req));
    if (!req)
        return NULL;
    req->conn = conn;
    req->state = REQ_PARSING;
    req->method = "GET";
    req->minor = 1;
    req->keep_alive = 1;
    req->start_ns = uv_hrtime();
    return req;
}

void req_free(http_req *req)
{
    if (!req)
        return;
    free(req->arena);
    free(req->hdrs);
    free(req->body);
    free(req->rhdrs);
    free(req->head);
    free(req->rbody_owned);
    free(req->sbuf);
    free(req);
}

void req_release_detached(http_req *req)
{
    if (req->abort_pending)
        req->finished = 1; /* freed by the abort loop in conn_close_hard */
    else
        req_free(req);
}

/* ---- accessors ------------------------------------------------------------------- */

const char *http_req_method(const http_req *req) { return req->method; }

const char *http_req_path(const http_req *req)
{
    return req->arena ? req->arena + req->url : "/";
}

const char *http_req_query(const http_req *req)
{
    return req->arena && req->query ? req->arena + req->query : "";
}

int http_req_version_minor(const http_req *req) { return req->minor; }

const char *http_req_header(const http_req *req, const char *name)
{
    for (uint32_t i = 0; i < req->nhdrs; i++) {
        const hdr_ent *h = &req->hdrs[i];
        if (h->val == UINT32_MAX)
            continue; /* field without a value yet (only while parsing) */
        if (strcasecmp(req->arena + h->name, name) == 0)
            return req->arena + h->val;
    }
    return NULL;
}

size_t http_req_header_count(const http_req *req) { return req->nhdrs; }

int http_req_header_at(const http_req *req, size_t i, const char **name, const char **value)
{
    if (i >= req->nhdrs || req->hdrs[i].val == UINT32_MAX)
        return DDM_ERANGE;
    if (name)
        *name = req->arena + req->hdrs[i].name;
    if (value)
        *value = req->arena + req->hdrs[i].val;
    return 0;
}

const uint8_t *http_req_body(const http_req *req, size_t *len)
{
    if (len)
        *len = req->blen;
    return req->body ? req->body : (const uint8_t *)"";
}

uint64_t http_req_start_ns(const http_req *req) { return req->start_ns; }

int http_req_peer(const http_req *req, char *buf, size_t len)
{
    if (!req->conn || req->conn->closing)
        return DDM_ECLOSED;
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    int rc = uv_tcp_getpeername(&req->conn->tcp, (struct sockaddr *)&ss, &sl);
    if (rc < 0)
        return rc;
    char ip[64];
    int port;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        snprintf(buf, len, "[%s]:%d", ip, port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        snprintf(buf, len, "%s:%d", ip, port);
    }
    return 0;
}

void http_req_set_user(http_req *req, void *user) { req->user = user; }
void *http_req_user(const http_req *req) { return req->user; }

void http_req_on_abort(http_req *req, void (*fn)(http_req *, void *), void *ud)
{
    req->abort_fn = req->aborted ? NULL : fn;
    req->abort_ud = ud;
}

int http_req_aborted(const http_req *req) { return req->aborted; }

/* ---- response headers ---------------------------------------------------------- */

static int bad_header_text(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return 1;
    return 0;
}

int http_resp_header(http_req *req, const char *name, const char *value)
{
    if (!name || !*name || !value || bad_header_text(name) || bad_header_text(value) ||
        strchr(name, ':') || strcasecmp(name, "Content-Length") == 0 ||
        req->rh_count >= MAX_RESP_HEADERS)
        return DDM_EINVAL;
    if (strcasecmp(name, "Connection") == 0) {
        if (strcasecmp(value, "close") == 0)
            req->resp_close = 1;
        return 0; /* the server writes Connection itself */
    }
    size_t need = strlen(name) + strlen(value) + 4;
    if (req->rh_len + need + 1 > req->rh_cap) {
        size_t cap = req->rh_cap ? req->rh_cap * 2 : 256;
        while (cap < req->rh_len + need + 1)
            cap *= 2;
        char *p = realloc(req->rhdrs, cap);
        if (!p)
            return DDM_ENOMEM;
        req->rhdrs = p;
        req->rh_cap = cap;
    }
    req->rh_len += (size_t)snprintf(req->rhdrs + req->rh_len, req->rh_cap - req->rh_len,
                                    "%s: %s\r\n", name, value);
    req->rh_count++;
    return 0;
}

int http_resp_retry_after(http_req *req, unsigned seconds)
{
    char v[16];
    snprintf(v, sizeof(v), "%u", seconds);
    return http_resp_header(req, "Retry-After", v);
}

/* ---- responding ------------------------------------------------------------------ */

const char *http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return "Unknown";
}

size_t http_json_escape(char *buf, size_t size, const char *s)
{
    return utf8_json_quote(buf, size, s);
}

/* Builds the response head (and copies body when copy_body) and queues it.
 * owned: malloc'd body to take over (freed in every case). */
static int respond(http_req *req, int status, const char *ctype, const void *body,
                   size_t len, void *owned)
{
    if (!req->conn) {
        free(owned);
        req_release_detached(req);
        return DDM_ECLOSED;
    }
    http_conn *conn = req->conn;
    int rc = 0;
    if (status < 200 || status > 599 || (len && !body) || (ctype && bad_header_text(ctype))) {
        free(owned);
        owned = NULL;
        status = 500;
        ctype = "application/json";
        body = "{\"error\":{\"code\":\"internal\",\"message\":\"handler gave an invalid response\"}}";
        len = strlen(body);
        rc = DDM_EINVAL;
    }
    int no_body = status == 204 || status == 304;
    if (no_body)
        len = 0;
    if (req->resp_close)
        req->keep_alive = 0;
    const char *conn_hdr = !req->keep_alive ? "Connection: close\r\n"
                           : req->minor == 0 ? "Connection: keep-alive\r\n" : "";
    char line[256];
    int ln = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", status, http_status_reason(status));
    char clen[64] = "";
    if (!no_body)
        snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", len);
    size_t ct_len = ctype ? strlen(ctype) + 16 : 0;
    size_t head_len = (size_t)ln + ct_len + strlen(clen) + req->rh_len + strlen(conn_hdr) + 2;
    size_t copy = (!owned && !req->is_head) ? len : 0;
    char *head = malloc(head_len + copy + 1);
    if (!head) {
        free(owned);
        conn_unlink_req(conn, req);
        req_free(req);
        conn_close_hard(conn);
        return DDM_ENOMEM;
    }
    size_t n = (size_t)ln;
    memcpy(head, line, n);
    if (ctype)
        n += (size_t)sprintf(head + n, "Content-Type: %s\r\n", ctype);
    n += (size_t)sprintf(head + n, "%s", clen);
    if (req->rh_len) {
        memcpy(head + n, req->rhdrs, req->rh_len);
        n += req->rh_len;
    }
    n += (size_t)sprintf(head + n, "%s\r\n", conn_hdr);
    req->head = head;
    req->head_len = n;
    if (req->is_head || len == 0) {
        free(owned);
        req->rbody = NULL;
        req->rbody_len = 0;
    } else if (owned) {
        req->rbody_owned = owned;
        req->rbody = owned;
        req->rbody_len = len;
    } else {
        memcpy(head + n, body, len);
        req->rbody = head + n;
        req->rbody_len = len;
    }
    req->state = REQ_READY;
    http_server *s = conn->srv;
    s->stats.responses[status / 100]++;
    s->status_counts[status]++;
    conn_flush(conn);
    return rc;
}

int http_respond(http_req *req, int status, const char *content_type, const void *body,
                 size_t len)
{
    return respond(req, status, content_type, body, len, NULL);
}

int http_respond_owned(http_req *req, int status, const char *content_type, void *body,
                       size_t len)
{
    if (!body || !len) {
        free(body);
        return respond(req, status, content_type, NULL, 0, NULL);
    }
    return respond(req, status, content_type, body, len, body);
}

int http_respond_strbuf(http_req *req, int status, const char *content_type, strbuf *b)
{
    if (b->oom) {
        strbuf_free(b);
        return http_respond_error(req, 500, "internal", "out of memory building the response");
    }
    size_t len;
    char *body = strbuf_take(b, &len);
    return http_respond_owned(req, status, content_type, body, len);
}

int http_respond_error(http_req *req, int status, const char *code, const char *message)
{
    char ec[128], em[1024];
    size_t nc = http_json_escape(ec, sizeof(ec), code ? code : "error");
    size_t nm = http_json_escape(em, sizeof(em), message ? message : "");
    if (nc < sizeof(ec) && nm < sizeof(em)) {
        char buf[1200];
        int n = snprintf(buf, sizeof(buf), "{\"error\":{\"code\":%s,\"message\":%s}}\n", ec, em);
        return respond(req, status, "application/json", buf, (size_t)n, NULL);
    }
    /* long message: size exactly */
    char *c = malloc(nc + 1), *m = malloc(nm + 1);
    size_t total = nc + nm + 32;
    char *body = malloc(total);
    if (!c || !m || !body) {
        free(c);
        free(m);
        free(body);
        return respond(req, status, "application/json", "{\"error\":{}}\n", 13, NULL);
    }
    http_json_escape(c, nc + 1, code ? code : "error");
    http_json_escape(m, nm + 1, message ? message : "");
    int n = snprintf(body, total, "{\"error\":{\"code\":%s,\"message\":%s}}\n", c, m);
    free(c);
    free(m);
    return respond(req, status, "application/json", body, (size_t)n, body);
}

int req_respond_internal(http_req *req, int status, const char *code, const char *msg,
                         const char *allow)
{
    if (allow && http_resp_header(req, "Allow", allow) < 0)
        return DDM_ENOMEM;
    return http_respond_error(req, status, code, msg);
}

void http_req_drop(http_req *req)
{
    if (req->streaming) { /* a streamed response: end it without flushing */
        http_stream_end(req, 1);
        return;
    }
    if (!req->conn) {
        req_release_detached(req);
        return;
    }
    http_conn *conn = req->conn;
    conn_unlink_req(conn, req);
    req_free(req);
    conn_close_hard(conn);
}
