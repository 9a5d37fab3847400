/* sse_client.c -- blocking Server-Sent Events reader (see sse_client.h). */
#include "tools/client/sse_client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/strbuf.h"

struct ssec {
    httpc *c;
    int fd;
    strbuf in;            /* bytes read, not parsed yet (from `pos`) */
    size_t pos;
    strbuf event, data, id;
    int has_id, has_data;
    char ev_name[64];
    int comments;
    int eof;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads what is there (waiting until deadline). 1 read, 0 EOF, negative error. */
static int fill(ssec *r, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left < 0)
            left = 0;
        struct pollfd p = { .fd = r->fd, .events = POLLIN };
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return DDM_ETIMEDOUT;
        char buf[16384];
        ssize_t got = read(r->fd, buf, sizeof buf);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0)
            return -errno;
        if (got == 0)
            return 0;
        if (r->pos > 0 && r->pos == r->in.len) { /* all parsed: start over */
            r->in.len = 0;
            r->pos = 0;
        }
        strbuf_put(&r->in, buf, (size_t)got);
        return r->in.oom ? DDM_ENOMEM : 1;
    }
}

static const char *find_head_end(const ssec *r)
{
    return r->in.p ? strstr(r->in.p, "\r\n\r\n") : NULL;
}

int ssec_open(const char *hostport, const char *method, const char *path,
              const httpc_header *headers, size_t nheaders, const void *body, size_t len,
              int timeout_ms, ssec **out, int *status, char **err_body)
{
    *out = NULL;
    *status = 0;
    if (err_body)
        *err_body = NULL;
    ssec *r = calloc(1, sizeof *r);
    if (!r)
        return DDM_ENOMEM;
    char err[128];
    int rc = httpc_open(hostport, timeout_ms, &r->c, err, sizeof err);
    if (rc) {
        free(r);
        return rc;
    }
    strbuf q = { 0 };
    strbuf_printf(&q, "%s %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n", method, path,
                  hostport);
    for (size_t i = 0; i < nheaders; i++)
        strbuf_printf(&q, "%s: %s\r\n", headers[i].name, headers[i].value);
    if (body || !strcmp(method, "POST"))
        strbuf_printf(&q, "Content-Length: %zu\r\n", len);
    strbuf_puts(&q, "\r\n");
    if (len)
        strbuf_put(&q, body, len);
    rc = q.oom ? DDM_ENOMEM : httpc_send_raw(r->c, q.p, q.len);
    strbuf_free(&q);
    r->fd = httpc_fd(r->c);
    long long deadline = now_ms() + timeout_ms;
    const char *end = NULL;
    while (!rc && !(end = find_head_end(r))) {
        int f = fill(r, deadline);
        if (f <= 0)
            rc = f == 0 ? DDM_EPROTO : f;
    }
    if (rc) {
        ssec_close(r);
        return rc;
    }
    int st = 0;
    sscanf(r->in.p, "HTTP/1.%*d %d", &st);
    *status = st;
    r->pos = (size_t)(end + 4 - r->in.p);
    int is_stream = 0;
    long clen = -1;
    for (const char *h = strstr(r->in.p, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n")) {
        if (!strncasecmp(h + 2, "Content-Type:", 13) && strstr(h + 2, "text/event-stream") &&
            strstr(h + 2, "text/event-stream") < strstr(h + 2, "\r\n"))
            is_stream = 1;
        if (!strncasecmp(h + 2, "Content-Length:", 15))
            clen = strtol(h + 17, NULL, 10);
    }
    if (st == 200 && is_stream) {
        *out = r;
        return 0;
    }
    /* an error: read its body (Content-Length, else until the server closes) */
    while (clen < 0 || r->in.len - r->pos < (size_t)clen) {
        int f = fill(r, deadline);
        if (f <= 0)
            break;
    }
    if (err_body) {
        size_t n = r->in.len - r->pos;
        if (clen >= 0 && (size_t)clen < n)
            n = (size_t)clen;
        *err_body = malloc(n + 1);
        if (*err_body) {
            memcpy(*err_body, r->in.p + r->pos, n);
            (*err_body)[n] = '\0';
        }
    }
    ssec_close(r);
    return DDM_EPROTO;
}

/* Handles one line (without its end). Returns 1 when it dispatched an event. */
static int line(ssec *r, const char *l, size_t n)
{
    if (n == 0) { /* blank: dispatch */
        if (!r->has_data) {
            r->event.len = 0;
            return 0;
        }
        return 1;
    }
    if (l[0] == ':') {
        r->comments++;
        return 0;
    }
    const char *colon = memchr(l, ':', n);
    size_t fl = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vl = colon ? n - fl - 1 : 0;
    if (vl && *v == ' ')
        v++, vl--;
    if (fl == 5 && !memcmp(l, "event", 5)) {
        r->event.len = 0;
        strbuf_put(&r->event, v, vl);
    } else if (fl == 4 && !memcmp(l, "data", 4)) {
        if (r->has_data)
            strbuf_put(&r->data, "\n", 1);
        strbuf_put(&r->data, v, vl);
        r->has_data = 1;
    } else if (fl == 2 && !memcmp(l, "id", 2)) {
        r->id.len = 0;
        strbuf_put(&r->id, v, vl);
        r->has_id = 1;
    }
    return 0;
}

int ssec_next(ssec *r, ssec_event *ev, int timeout_ms)
{
    /* forget the previous event */
    r->event.len = r->data.len = r->id.len = 0;
    if (r->event.p) r->event.p[0] = '\0';
    if (r->data.p) r->data.p[0] = '\0';
    if (r->id.p) r->id.p[0] = '\0';
    r->has_id = r->has_data = 0;
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        while (r->in.p && r->pos < r->in.len) {
            char *nl = memchr(r->in.p + r->pos, '\n', r->in.len - r->pos);
            if (!nl)
                break;
            size_t n = (size_t)(nl - (r->in.p + r->pos));
            const char *l = r->in.p + r->pos;
            if (n && l[n - 1] == '\r')
                n--;
            r->pos = (size_t)(nl + 1 - r->in.p);
            if (line(r, l, n)) {
                snprintf(r->ev_name, sizeof r->ev_name, "%s",
                         r->event.len ? r->event.p : "message");
                ev->event = r->ev_name;
                ev->data = r->data.p ? r->data.p : "";
                ev->data_len = r->data.len;
                ev->id = r->has_id ? (r->id.p ? r->id.p : "") : NULL;
                return 1;
            }
        }
        if (r->eof)
            return 0;
        if (r->pos > 0 && r->pos < r->in.len) { /* keep the partial line only */
            memmove(r->in.p, r->in.p + r->pos, r->in.len - r->pos);
            r->in.len -= r->pos;
            r->pos = 0;
        }
        int f = fill(r, deadline);
        if (f == 0)
            r->eof = 1;
        else if (f < 0)
            return f;
    }
}

int ssec_comments(const ssec *r) { return r->comments; }
int ssec_fd(const ssec *r) { return r->fd; }

void ssec_close(ssec *r)
{
    if (!r)
        return;
    httpc_close(r->c);
    strbuf_free(&r->in);
    strbuf_free(&r->event);
    strbuf_free(&r->data);
    strbuf_free(&r->id);
    free(r);
}
