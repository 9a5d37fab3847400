/* sse.h -- Server-Sent Events framing and flow control on a streamed response.
 *
 * A frame is "id: N\nevent: NAME\ndata: JSON\n\n" (id and event optional; the
 * JSON is one line). Writers never block: sse_send checks the reader's backlog
 * (bytes the kernel has not taken yet) against two bounds. Droppable frames
 * (previews) are skipped once the backlog passes the soft bound; any frame is
 * refused past the hard bound, and the caller then closes the stream (a reader
 * that far behind reconnects with Last-Event-ID). */
#ifndef DDM_SSE_H
#define DDM_SSE_H

#include <stddef.h>

#include "common/strbuf.h"
#include "server/http.h"

/* 1 if an Accept header value names text/event-stream. */
int sse_wanted(const char *accept);

/* Starts the event stream on req: 200, text/event-stream, no caching, and a
 * "retry:" hint of retry_ms for reconnecting readers. Returns as http_stream_begin. */
int sse_begin(http_req *req, int retry_ms);

/* Appends one frame to o: id (< 0 for none), event name (NULL for the default
 * "message"), data (one line of len bytes, no CR/LF). */
void sse_frame(strbuf *o, long id, const char *event, const char *data, size_t len);

typedef enum sse_result { SSE_SENT = 0, SSE_DROPPED = 1, SSE_FULL = 2, SSE_GONE = 3 } sse_result;

/* Writes frame[0..len) unless the backlog says otherwise: SSE_DROPPED when
 * droppable and the backlog is at or past soft, SSE_FULL when it is at or
 * past hard (nothing written: wait for the drain, or close), SSE_GONE when
 * the client has left or the write failed. */
sse_result sse_send(http_req *req, const char *frame, size_t len, int droppable, size_t soft,
                    size_t hard);

/* A comment line, which keeps proxies and the server's idle timeout from
 * closing a quiet stream. Returns as sse_send (never dropped). */
sse_result sse_heartbeat(http_req *req, size_t hard);

/* Parses a Last-Event-ID header (NULL or empty: *out = -1). Returns 0, or -1
 * when it is not a decimal number 0..2^31-1. */
int sse_last_event_id(const char *value, long *out);

#endif
