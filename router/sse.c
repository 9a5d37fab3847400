/* sse.c -- Server-Sent Events framing and flow control (see sse.h). */
#include "router/sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"

int sse_wanted(const char *accept)
{
    if (!accept)
        return 0;
    for (const char *p = accept; (p = strchr(p, 't')) != NULL; p++)
        if (!strncasecmp(p, "text/event-stream", 17))
            return 1;
    return 0;
}

int sse_begin(http_req *req, int retry_ms)
{
    http_resp_header(req, "Cache-Control", "no-store");
    http_resp_header(req, "X-Accel-Buffering", "no");
    int rc = http_stream_begin(req, 200, "text/event-stream");
    if (rc)
        return rc;
    char hint[32];
    int n = snprintf(hint, sizeof hint, "retry: %d\n\n", retry_ms);
    return http_stream_write(req, hint, (size_t)n);
}

void sse_frame(strbuf *o, long id, const char *event, const char *data, size_t len)
{
    if (id >= 0)
        strbuf_printf(o, "id: %ld\n", id);
    if (event)
        strbuf_printf(o, "event: %s\n", event);
    strbuf_puts(o, "data: ");
    strbuf_put(o, data, len);
    strbuf_puts(o, "\n\n");
}

sse_result sse_queue(http_req *req, strbuf *pend, const char *frame, size_t len, int droppable,
                     size_t soft, size_t hard)
{
    if (http_req_aborted(req))
        return SSE_GONE;
    size_t q = http_stream_queued(req) + pend->len;
    if (q >= hard)
        return SSE_FULL;
    if (droppable && q >= soft)
        return SSE_DROPPED;
    strbuf_put(pend, frame, len);
    return pend->oom ? SSE_GONE : SSE_SENT;
}

sse_result sse_flush(http_req *req, strbuf *pend)
{
    int rc = pend->len ? http_stream_write(req, pend->p, pend->len) : 0;
    pend->len = 0;
    return rc ? SSE_GONE : SSE_SENT;
}

sse_result sse_heartbeat(http_req *req, strbuf *pend, size_t hard)
{
    sse_result r = sse_queue(req, pend, ":\n\n", 3, 0, hard, hard);
    return r == SSE_SENT ? sse_flush(req, pend) : r;
}

int sse_last_event_id(const char *value, long *out)
{
    *out = -1;
    if (!value || !*value)
        return 0;
    long v = 0;
    for (const char *p = value; *p; p++) {
        if (*p < '0' || *p > '9' || v > 214748364)
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v > 2147483647L)
        return -1;
    *out = v;
    return 0;
}
