/* httpc.h -- small blocking HTTP/1.1 client over one TCP connection.
 *
 * One httpc object is one connection to one host:port, used by one thread at a
 * time (a load generator gives each thread its own). The connection is opened
 * lazily, kept alive between requests and reopened when the server closed it.
 * A request on a reused connection that fails before any response byte arrived
 * (the server timed it out meanwhile) is retried once on a fresh connection.
 * Responses are parsed with llhttp (Content-Length, chunked, or until EOF).
 * Every call has a deadline of the timeout given at open. */
#ifndef DDM_SERVER_HTTPC_H
#define DDM_SERVER_HTTPC_H

#include <stddef.h>
#include <stdint.h>

typedef struct httpc httpc;

typedef struct httpc_header {
    const char *name;
    const char *value;
} httpc_header;

/* A parsed response. All memory is owned by the struct; release with
 * httpc_response_free. */
typedef struct httpc_response {
    int status;              /* e.g. 200 */
    int keep_alive;          /* nonzero if the connection stays usable */
    size_t nheaders;
    httpc_header *headers;   /* [nheaders], strings NUL-terminated */
    char *body;              /* [body_len] + NUL terminator; never NULL after success */
    size_t body_len;
    char *_store;            /* internal: header strings */
} httpc_response;

/* Creates a client for "host:port" (host: name, IPv4 literal or [IPv6] literal).
 * timeout_ms (0 = 30000) bounds connect and every request. Does not connect yet.
 * Returns 0 and *out, or DDM_EINVAL (bad address; message in err) / DDM_ENOMEM. */
int httpc_open(const char *hostport, int timeout_ms, httpc **out, char *err, size_t errlen);

/* Closes the connection and frees c (NULL is fine). */
void httpc_close(httpc *c);

/* Connects now if not connected. Returns 0 or a negative error (-errno,
 * DDM_ETIMEDOUT, DDM_ENOTFOUND for an unresolvable host). */
int httpc_connect(httpc *c);

/* Closes the current connection (the next request opens a new one). */
void httpc_disconnect(httpc *c);

/* Sends one request and reads its response into *resp (zeroed first; free it with
 * httpc_response_free even on failure -- it is always safe). headers may be NULL
 * when nheaders is 0; "Host" and "Content-Length" are added automatically (the
 * latter whenever body is not NULL or the method is POST/PUT/PATCH).
 * Returns 0 (any HTTP status), DDM_ETIMEDOUT, DDM_EPROTO (malformed response),
 * DDM_EIO / -errno (connection failed), DDM_ENOMEM. */
int httpc_request(httpc *c, const char *method, const char *path,
                  const httpc_header *headers, size_t nheaders,
                  const void *body, size_t len, httpc_response *resp);

/* Value of the first response header named name (case-insensitive) or NULL. */
const char *httpc_response_header(const httpc_response *resp, const char *name);

/* Frees what resp owns and zeroes it. */
void httpc_response_free(httpc_response *resp);

/* ---- raw helpers, for tests with hand-made or hostile requests ------------------- */

/* Sends bytes as they are on the connection (connecting first if needed).
 * Returns 0 or a negative error. */
int httpc_send_raw(httpc *c, const void *bytes, size_t len);

/* Reads the next response on the connection (after httpc_send_raw; call again for
 * pipelined responses). head nonzero if it answers a HEAD request (no body).
 * Returns as httpc_request; DDM_ECLOSED if the server closed before any byte. */
int httpc_read_response(httpc *c, int head, httpc_response *resp);

/* Waits up to timeout_ms for the server to close the connection, discarding
 * any bytes. Returns 1 if closed (EOF or reset), 0 if still open, or a negative error. */
int httpc_wait_closed(httpc *c, int timeout_ms);

/* The socket, or -1 when not connected (for tests that need to poke at it). */
int httpc_fd(const httpc *c);

/* One-shot: connects to hostport, sends bytes, reads until the server closes the
 * connection or timeout_ms passes, and returns everything read in *out
 * (malloc'd, NUL-terminated, caller frees) and *out_len. Returns 0 (also on
 * timeout with what was read so far) or a negative error (nothing allocated). */
int httpc_raw(const char *hostport, const void *bytes, size_t len, int timeout_ms,
              char **out, size_t *out_len);

#endif
