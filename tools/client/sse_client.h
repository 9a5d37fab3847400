/* sse_client.h -- reading a Server-Sent Events stream over HTTP/1.1, blocking,
 * for ddm-client (--progress, jobs watch) and the tests.
 *
 * One reader is one request (GET, or POST with a body) on its own connection,
 * with Accept: text/event-stream. Events are parsed as the SSE format says:
 * "event:", "data:" (several lines joined with \n), "id:", comment lines
 * (counted: they are the server's heartbeats), a blank line dispatches. */
#ifndef DDM_CLIENT_SSE_CLIENT_H
#define DDM_CLIENT_SSE_CLIENT_H

#include <stddef.h>

#include "server/httpc.h"

typedef struct ssec ssec;

typedef struct ssec_event {
    const char *event;   /* "message" when the frame named none */
    const char *data;    /* joined data lines, NUL-terminated */
    size_t data_len;
    const char *id;      /* the frame's id, or NULL when it had none */
} ssec_event;

/* Sends the request to hostport (extra headers optional) and reads the
 * response head. Returns 0 and *out when the server answered 200 with an
 * event stream. Otherwise returns a negative error (transport, timeout:
 * *status 0) or DDM_EPROTO with *status the HTTP status and *body the
 * response body (malloc'd, NUL-terminated, caller frees). timeout_ms bounds
 * connecting and reading the head. */
int ssec_open(const char *hostport, const char *method, const char *path,
              const httpc_header *headers, size_t nheaders, const void *body, size_t len,
              int timeout_ms, ssec **out, int *status, char **err_body);

/* Next event: 1 and *ev (valid until the next call), 0 when the server ended
 * the stream, DDM_ETIMEDOUT when nothing complete arrived within timeout_ms,
 * another negative error on a broken connection. */
int ssec_next(ssec *r, ssec_event *ev, int timeout_ms);

/* Comment lines seen so far (heartbeats). */
int ssec_comments(const ssec *r);

/* The socket (tests poke at it: stop reading, half-close). */
int ssec_fd(const ssec *r);

/* Closes the connection and frees r (NULL is fine). */
void ssec_close(ssec *r);

#endif
