/* sse.h -- Server-Sent Events framing and flow control on a streamed response.
 *
 * A frame is "id: N\nevent: NAME\ndata: JSON\n\n" (id and event optional; the
 * JSON is one line). Frames are queued per reader and written together
 * (sse_flush), so that a stream of small events costs a few writes, not one
 * each. Writers never block: sse_queue checks the reader's backlog against two
 * bounds. Droppable frames (previews) are skipped once the backlog passes the
 * soft bound; any frame is refused past the hard bound, and the caller waits
 * for the drain or closes the stream (a reader that far behind reconnects with
 * Last-Event-ID). */
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

/* Appends frame[0..len) to pend (the reader's frames not yet written, see
 * sse_flush) unless the backlog -- bytes the kernel has not taken plus pend --
 * says otherwise: SSE_DROPPED when droppable and the backlog is at or past
 * soft, SSE_FULL when it is at or past hard (nothing queued: wait for the
 * drain, or close), SSE_GONE when the client has left. */
sse_result sse_queue(http_req *req, strbuf *pend, const char *frame, size_t len, int droppable,
                     size_t soft, size_t hard);

/* Writes pend to the stream in one write and empties it: SSE_SENT, or
 * SSE_GONE when the client has left or the write failed. */
sse_result sse_flush(http_req *req, strbuf *pend);

/* Queues a comment line, which keeps proxies and the server's idle timeout
 * from closing a quiet stream, and flushes. Returns as sse_queue (never dropped). */
sse_result sse_heartbeat(http_req *req, strbuf *pend, size_t hard);

/* Parses a Last-Event-ID header (NULL or empty: *out = -1). Returns 0, or -1
 * when it is not a decimal number 0..2^31-1. */
int sse_last_event_id(const char *value, long *out);

#endif
