/* http.h -- reusable HTTP/1.1 server on libuv + llhttp (knows nothing of diffusion).
 *
 * One server lives on one uv loop; every function here must be called from that
 * loop's thread. Routes map (method, exact path) to a handler. A handler gets an
 * http_req and answers it exactly once with one of the http_respond* calls, either
 * before returning or later (many loop ticks later, e.g. from a timer or a nanomsg
 * poll callback). Pipelined requests are answered strictly in arrival order: a
 * response given early is buffered until every earlier one has been written.
 *
 * Request lifetime (the rule async owners rely on):
 *   - The http_req pointer given to a handler stays valid until the owner calls
 *     an http_respond* function or http_req_drop() on it, and not one moment longer.
 *     Exactly one of those calls per request; every request must get one (a request
 *     never finished is leaked).
 *   - If the client goes away first (connection reset or closed, EOF while the
 *     request is pending, server closing), the request is "aborted": the optional
 *     on_abort callback runs once on the loop thread, http_req_aborted() turns true,
 *     accessors keep working, and the later http_respond* call only frees it and
 *     returns DDM_ECLOSED. It is fine to finish the request inside on_abort.
 *   - The server may be closed while requests are pending: they are aborted as
 *     above and stay valid (detached from the server) until finished.
 *
 * Errors the server produces itself (JSON bodies, see http_respond_error):
 *   400 malformed request (any llhttp parse error, or HTTP/1.1 without exactly one
 *   Host header), 404 unknown path, 405 known
 *   path with other method (with Allow), 408 header/body timeout, 411 POST/PUT/PATCH
 *   with neither Content-Length nor chunked, 413 body over max_body_bytes,
 *   414 URL over max_header_bytes, 431 headers over max_header_bytes or too many,
 *   501 Transfer-Encoding other than chunked, 503 + Retry-After for a request other
 *   than an "always" route on a connection over the caps (max_connections, per address).
 *   All but 404/405 close the connection after the response.
 *
 * A client that half-closes (EOF) while a request is still in a handler is treated
 * as gone (the request is aborted), which is what lets async work be dropped.
 * While a connection is paused (max_pipelined reached) it is not read, so its
 * departure is noticed only when the backlog drains or a write fails.
 * HEAD on a path that only has a GET route runs the GET handler and sends no body.
 * Memory per connection is bounded by max_pipelined * (max_body_bytes + response);
 * size max_body_bytes for the API (the default 8 MiB is generous). A body's buffer
 * grows as its bytes arrive (a declared Content-Length alone reserves at most
 * 16 KiB). Past max_connections + reserve_connections open, new connections are
 * closed without a response. */
#ifndef DDM_SERVER_HTTP_H
#define DDM_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/strbuf.h"

typedef struct http_server http_server;
typedef struct http_req http_req;

/* Limits and timeouts. A field left 0 takes the default shown. */
typedef struct http_config {
    size_t   max_header_bytes;   /* 16384: request line + header bytes, else 431 (414 for the URL) */
    uint32_t max_headers;        /* 100: header lines per request, else 431 */
    size_t   max_body_bytes;     /* 8 MiB: decoded body bytes, else 413 */
    uint32_t header_timeout_ms;  /* 10000: first byte of a request to end of headers, else 408;
                                    also how long a new connection may stay silent */
    uint32_t body_timeout_ms;    /* 30000: end of headers to end of body, else 408 */
    uint32_t idle_timeout_ms;    /* 60000: keep-alive connection with nothing to do is closed;
                                    also the limit for a write making no progress */
    uint32_t max_connections;    /* 1024: at it, a new connection first evicts the connection
                                    that has gone longest without a complete request in progress
                                    (silent, half a request, or idle keep-alive); if there is
                                    none it is a reserve connection (below) */
    uint32_t max_connections_per_ip; /* 256: the same for the connections of one client address */
    uint32_t reserve_connections; /* 32: connections over the caps that are still read: they get
                                    the "always" routes (health probes) and 503 + Retry-After for
                                    anything else; past these a connection is closed at once */
    uint32_t near_cap_timeout_ms; /* 1000: from 7/8 of max_connections on, a connection without a
                                    complete request (header phase, idle keep-alive) is closed
                                    after this instead of header_timeout / idle_timeout */
    uint32_t max_pipelined;      /* 16: requests queued or being written per connection before
                                    the server stops reading from it (backpressure, not an error) */
    uint32_t retry_after_s;      /* 1: Retry-After value of the over-capacity 503 */
    int      allow_no_length;    /* 0: 1 accepts POST/PUT/PATCH without a length as an empty body
                                    instead of answering 411 */
} http_config;

/* Fills cfg with the defaults above. */
void http_config_default(http_config *cfg);

/* Counters, for /metrics. Monotonic except connections_open. */
typedef struct http_stats {
    uint64_t connections_open;     /* now, including ones being rejected or closed */
    uint64_t connections_total;    /* accepted since start */
    uint64_t connections_rejected; /* over a cap with no room to evict: reserve or dropped */
    uint64_t connections_evicted;  /* closed to make room for a new one at a cap */
    uint64_t body_bytes_receiving; /* now: memory held by request bodies still arriving */
    uint64_t requests_total;       /* complete requests handed to a route handler */
    uint64_t requests_aborted;     /* client went away before the handler's response */
    uint64_t responses[6];         /* by status class: [1] 1xx .. [5] 5xx; [0] unused */
    uint64_t parse_errors;         /* 400s from malformed input */
    uint64_t timeouts;             /* 408s sent */
    uint64_t bytes_in, bytes_out;
} http_stats;

/* A route handler. req is valid until finished (see the lifetime rule above);
 * ud is the pointer given to http_server_route. */
typedef void (*http_handler_fn)(http_req *req, void *ud);

/* Creates a server on loop. cfg may be NULL (all defaults); it is copied.
 * If SIGPIPE still has its default action it is set to ignored (a client that
 * resets mid-response must not kill the process).
 * Returns 0 and *out, or DDM_ENOMEM / -errno. The server does nothing until
 * http_server_listen. Release it with http_server_close (also when never listened). */
int http_server_new(uv_loop_t *loop, const http_config *cfg, http_server **out);

/* Registers handler for method (e.g. "GET", upper case) and exact path (e.g.
 * "/v1/samples", matched before '?'). Strings are copied. Registering the same
 * method and path twice replaces the handler. Returns 0, DDM_EINVAL (bad method
 * or path not starting with '/'), DDM_ENOMEM. Call before or after listen. */
int http_server_route(http_server *s, const char *method, const char *path,
                      http_handler_fn handler, void *ud);

/* Like http_server_route, and the route is also served on reserve connections
 * (over max_connections or the per-address cap): for health probes, which must
 * answer while the server is full. */
int http_server_route_always(http_server *s, const char *method, const char *path,
                             http_handler_fn handler, void *ud);

/* Like http_server_route, but the handler gets every path that starts with
 * prefix (e.g. "/v1/jobs/" for "/v1/jobs/{id}"); it parses the rest itself.
 * An exact route registered for a path wins when both would match only if it
 * was registered first (routes are tried in registration order). Paths a
 * prefix route matches count as known for 405 (wrong method, with Allow). */
int http_server_route_prefix(http_server *s, const char *method, const char *prefix,
                             http_handler_fn handler, void *ud);

/* Sets fn to run for every complete request before routing (NULL removes it),
 * on the loop thread. It may add response headers (http_resp_header) that then
 * go with whatever answers the request, routes' and the server's own 404/405
 * alike. It returns nonzero when it finished the request itself (e.g. a CORS
 * preflight), which then reaches no route; 0 to let routing go on. */
void http_server_set_filter(http_server *s, int (*fn)(http_req *req, void *ud), void *ud);

/* Binds and listens on "host:port": IPv4 literal ("127.0.0.1:8080"), bracketed
 * IPv6 literal ("[::1]:0"), "localhost:port", or ":port" / "*:port" (all IPv4
 * interfaces). Port 0 picks an ephemeral port (read it with http_server_port).
 * Returns 0, DDM_EINVAL for an unparsable address, or -errno (e.g. -EADDRINUSE);
 * on failure a one-line message is written to err (if errlen > 0). */
int http_server_listen(http_server *s, const char *hostport, char *err, size_t errlen);

/* Serves fd, a stream socket that is already connected (e.g. one end of a
 * socketpair: tests and the fuzz harness drive the server through it without
 * a listener), as if it had just been accepted: the same caps, parser and
 * timeouts. Takes ownership of fd on success; on failure the caller keeps
 * it. Returns 0, DDM_ECLOSED (server closing), DDM_ENOMEM or -errno. */
int http_server_adopt(http_server *s, uv_os_sock_t fd);

/* Returns the bound TCP port (> 0), or a negative ddm_err if not listening. */
int http_server_port(const http_server *s);

/* Stops listening, closes every connection (pending requests are aborted and
 * their on_abort callbacks run before this returns), and frees the server once
 * libuv has closed all its handles; then calls close_cb(ud) if not NULL. The
 * server pointer must not be used after this call. Safe to call from a handler. */
void http_server_close(http_server *s, void (*close_cb)(void *ud), void *ud);

/* Graceful close. Stops listening and reading new requests at once; requests
 * still in handlers stay valid and their owners answer them as usual; every
 * connection is closed (lingering, so the client reads its last response)
 * once it owes nothing. After grace_ms whatever is left is closed as by
 * http_server_close (pending requests aborted). Then the server is freed and
 * close_cb(ud) runs (may be NULL). Returns at once and calls nothing before it
 * returns; the server pointer must not be used afterwards except by answering
 * the requests already handed out. A later http_server_close ends the grace. */
void http_server_shutdown(http_server *s, uint32_t grace_ms, void (*close_cb)(void *ud),
                          void *ud);

/* Copies the counters into *out. */
void http_server_stats(const http_server *s, http_stats *out);

/* Number of responses sent with exactly this status (100..599), else 0. */
uint64_t http_server_status_count(const http_server *s, int status);

/* ---- request accessors: valid until the request is finished ---------------------- */

const char *http_req_method(const http_req *req); /* "GET", "POST", ... ("HEAD" for HEAD) */
const char *http_req_path(const http_req *req);   /* raw path without query: "/v1/samples" */
const char *http_req_query(const http_req *req);  /* raw query after '?', "" when none */
int http_req_version_minor(const http_req *req);  /* 0 for HTTP/1.0, 1 for HTTP/1.1 */

/* Returns the value of the first header named name (case-insensitive), or NULL.
 * The value has surrounding whitespace removed, NUL-terminated. */
const char *http_req_header(const http_req *req, const char *name);

/* Number of header lines, and the i-th (0-based) name and value; returns 0 or
 * DDM_ERANGE. Pointers stay owned by the request. */
size_t http_req_header_count(const http_req *req);
int http_req_header_at(const http_req *req, size_t i, const char **name, const char **value);

/* The decoded body (Content-Length or chunked), NUL-terminated for convenience
 * (the NUL is not counted in *len). Never NULL: "" with *len = 0 when empty.
 * Owned by the request. len may be NULL. */
const uint8_t *http_req_body(const http_req *req, size_t *len);

/* uv_hrtime() (ns) when the first byte of this request was parsed. */
uint64_t http_req_start_ns(const http_req *req);

/* Writes the client's address as "ip:port" into buf. Returns 0, DDM_ECLOSED if
 * the connection is gone, or -errno. */
int http_req_peer(const http_req *req, char *buf, size_t len);

/* An owner-defined pointer attached to the request (NULL initially). */
void http_req_set_user(http_req *req, void *user);
void *http_req_user(const http_req *req);

/* Registers fn(req, ud) to run once, on the loop thread, if the client goes away
 * (or the server closes) before the request is finished. Replaces an earlier
 * registration; fn NULL unregisters. Inside fn the request is still valid and may
 * be finished. Not called after the request is finished. If the request is
 * already aborted when this is called, fn is not called (check http_req_aborted). */
void http_req_on_abort(http_req *req, void (*fn)(http_req *req, void *ud), void *ud);

/* Nonzero once the client went away; responding is then a no-op that frees. */
int http_req_aborted(const http_req *req);

/* ---- responding: each http_respond* / http_req_drop finishes the request ---------- */

/* Adds a response header for the coming response (copied; up to 64 per response).
 * "Content-Length" is always computed by the server and must not be given.
 * Giving "Connection: close" makes the server close after this response.
 * Does not finish the request. Returns 0, DDM_EINVAL (CR/LF/NUL in name or value,
 * empty name, Content-Length, or too many), DDM_ENOMEM. */
int http_resp_header(http_req *req, const char *name, const char *value);

/* Convenience: http_resp_header(req, "Retry-After", "<seconds>"). */
int http_resp_retry_after(http_req *req, unsigned seconds);

/* Sends status (100..599, not 101) with Content-Type content_type (NULL = none),
 * the headers added so far and a copy of body[0..len) (body may be NULL if len is 0).
 * Finishes the request in all cases (the pointer is invalid afterwards).
 * Returns 0 when queued for writing, DDM_ECLOSED if the client had gone away
 * (nothing sent), DDM_EINVAL for a bad status (answers 500 instead), DDM_ENOMEM
 * (the connection is closed). */
int http_respond(http_req *req, int status, const char *content_type,
                 const void *body, size_t len);

/* Like http_respond but takes ownership of body, which must come from malloc
 * (it is released with free()) -- in every case, including errors. No copy. */
int http_respond_owned(http_req *req, int status, const char *content_type,
                       void *body, size_t len);

/* Like http_respond_owned with the bytes of b, which is emptied (they are
 * taken); a b that ran out of memory (b->oom) is answered 500 instead. */
int http_respond_strbuf(http_req *req, int status, const char *content_type, strbuf *b);

/* Sends status with the JSON body {"error": {"code": code, "message": message}}
 * (both JSON-escaped; application/json). Add Retry-After beforehand with
 * http_resp_retry_after when useful (429/503). Returns as http_respond. */
int http_respond_error(http_req *req, int status, const char *code, const char *message);

/* Finishes the request without a response. If the client is still connected the
 * connection is closed (nothing else can be sent on it in order). Use when
 * abandoning work, e.g. from on_abort or at shutdown. */
void http_req_drop(http_req *req);

/* ---- streamed responses (Server-Sent Events and the like) ---------------------------
 *
 * A streamed response has no Content-Length: the body is whatever the owner
 * writes until it ends the stream, and then the connection closes (the response
 * says "Connection: close"; nothing else is read or answered on the connection).
 * After http_stream_begin the request stays valid until http_stream_end, which is
 * then the only way to finish it (http_req_drop ends it without flushing). Writes
 * never block: they are queued on the connection and http_stream_queued tells how
 * many bytes wait, so the owner bounds its reader's backlog itself. If the client
 * goes away, on_abort runs as for any request; writes then return DDM_ECLOSED and
 * the owner must still call http_stream_end. A stream with nothing written for
 * the server's idle_timeout_ms is closed (send heartbeats more often than that). */

/* Starts the response: status, content_type, the headers added so far and
 * "Connection: close" go out once every earlier response on the connection has
 * been written. Returns 0, DDM_ECLOSED (the client is gone: still end the
 * stream), DDM_EINVAL (bad status, already started), DDM_ENOMEM. */
int http_stream_begin(http_req *req, int status, const char *content_type);

/* Queues a copy of data[0..len) for the stream. Returns 0, DDM_ECLOSED (client
 * gone), DDM_EINVAL (not started, or ended), DDM_ENOMEM. A HEAD request's
 * stream accepts writes and sends nothing. If the socket refuses the write the
 * connection closes at once, and on_abort runs before this returns. */
int http_stream_write(http_req *req, const void *data, size_t len);

/* Bytes written with http_stream_write that the kernel has not taken yet. */
size_t http_stream_queued(const http_req *req);

/* fn(req, ud) runs on the loop thread each time the queue drains to 0 bytes
 * (NULL removes it). It may write and may end the stream. */
void http_stream_on_drain(http_req *req, void (*fn)(http_req *req, void *ud), void *ud);

/* Finishes the stream (req is invalid afterwards). abort 0: what was queued is
 * written, then the connection closes; abort 1: the connection closes now and
 * queued bytes are dropped (e.g. for a reader that fell too far behind). */
void http_stream_end(http_req *req, int abort);

/* Writes the JSON string literal for s (with quotes, escaped) into buf; returns the
 * length it needs (excluding the NUL), like snprintf. Bytes that are not valid
 * UTF-8 become U+FFFD, so the output is always valid JSON text whatever s holds
 * (e.g. a client's bytes echoed in an error). Shared with other JSON writers. */
size_t http_json_escape(char *buf, size_t size, const char *s);

/* Standard reason phrase for status ("Not Found"), "Unknown" if none. */
const char *http_status_reason(int status);

#endif
