/* nnuv.h -- drive nanomsg sockets from a libuv loop.
 *
 * nanomsg exposes two pollable descriptors per socket: NN_RCVFD is readable
 * while nn_recv would not block, NN_SNDFD while nn_send would not block. nnuv
 * watches them with uv_poll (level-triggered), receives with NN_DONTWAIT until
 * EAGAIN and hands each message to a callback; it sends with NN_DONTWAIT and
 * keeps a FIFO of what could not go out yet, flushed when NN_SNDFD fires.
 *
 * Raw sockets (AF_SP_RAW) carry an SP header beside the body, which nnuv
 * passes as an nnuv_hdr:
 *   raw REP: received header = 4-byte peer (pipe) key + the request's
 *            backtrace ending in the request id (top bit set). Send the reply
 *            with the same header, unchanged, and it goes back to its
 *            requester; replies may go in any order.
 *   raw REQ: the header of a request is one 4-byte request id with the top
 *            bit set (nnuv_hdr_set_id); the reply arrives with that header
 *            (nnuv_hdr_id), so many requests can be in flight and matched.
 * Cooked sockets work too; their header is empty (len 0).
 *
 * Caveats of nanomsg 1.1 that callers must know:
 *   - A raw REP socket never reports "would block": if the peer's pipe is
 *     still writing an earlier message, nanomsg silently drops the reply.
 *     Give the socket an NN_SNDBUF large enough for a burst of replies to one
 *     peer, and let requesters retry after a timeout.
 *   - A raw REQ socket with no connected peer queues here (EAGAIN) until a
 *     peer appears; nothing expires queued messages (see nnuv_queued).
 *   - Messages larger than the receiver's NN_RCVMAXSIZE make nanomsg close
 *     that connection; the sender is not told.
 *
 * Every function must be called from the loop's thread. */
#ifndef DDM_NNUV_H
#define DDM_NNUV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define NNUV_MAX_HDR 64 /* bytes of SP header kept (16 hops of backtrace) */

typedef struct nnuv_hdr {
    uint32_t len;              /* bytes used in b, 0 for cooked sockets */
    uint8_t b[NNUV_MAX_HDR];   /* the SP header, wire (big-endian) order */
} nnuv_hdr;

typedef struct nnuv nnuv;

typedef struct nnuv_stats {
    uint64_t received;      /* messages handed to the receive callback */
    uint64_t sent;          /* messages accepted by nanomsg */
    uint64_t queued_total;  /* sends that had to wait in the queue (EAGAIN) */
    uint64_t dropped;       /* received messages dropped (header over NNUV_MAX_HDR),
                               and queued sends that failed or were discarded at close */
} nnuv_stats;

/* Receive callback. body is a nanomsg NN_MSG buffer of len bytes whose
 * ownership passes to the callback: release it with nn_freemsg() or give it
 * to nnuv_send(). hdr is valid only during the call: copy it to reply later.
 * The callback may call nnuv_recv_stop() or nnuv_close() on s. */
typedef void (*nnuv_recv_fn)(nnuv *s, void *body, size_t len, const nnuv_hdr *hdr, void *ud);

/* Wraps the nanomsg socket sock (any protocol, raw or cooked) for loop.
 * Takes ownership of sock on success (nnuv_close() closes it); on failure the
 * caller keeps it. Returns 0 and *out, DDM_ENOMEM, DDM_EINVAL (sock has no
 * pollable descriptors) or -errno from libuv. Receiving starts with
 * nnuv_recv_start. */
int nnuv_open(uv_loop_t *loop, int sock, nnuv **out);

/* Starts (or restarts, with a new callback) delivering received messages to
 * fn(s, ..., ud). Returns 0, DDM_EINVAL for a send-only socket or DDM_ECLOSED
 * after nnuv_close, or -errno from libuv. */
int nnuv_recv_start(nnuv *s, nnuv_recv_fn fn, void *ud);

/* Stops delivering messages; they wait inside nanomsg (backpressure) until
 * nnuv_recv_start. Safe inside the receive callback: no further message is
 * delivered after it returns. */
void nnuv_recv_stop(nnuv *s);

/* Sends body, an NN_MSG buffer (from nn_allocmsg or a receive callback; all
 * of its nn_allocmsg/nn_reallocmsg size is sent), with header hdr (NULL or
 * len 0 for none). On success (0) the message is sent or queued in order
 * behind earlier ones, and ownership of body passes to nnuv/nanomsg. On
 * failure the caller keeps body: DDM_EINVAL (hdr->len over NNUV_MAX_HDR, or a
 * socket that cannot send), DDM_ECLOSED (closing), DDM_ENOMEM, or -errno from
 * nn_sendmsg (e.g. -EFSM on a cooked socket in the wrong state). */
int nnuv_send(nnuv *s, void *body, const nnuv_hdr *hdr);

/* Like nnuv_send but copies data (not owned) into a new NN_MSG buffer. */
int nnuv_send_copy(nnuv *s, const void *data, size_t len, const nnuv_hdr *hdr);

/* Messages waiting in the send queue. */
size_t nnuv_queued(const nnuv *s);

/* The wrapped nanomsg socket (for nn_setsockopt, nn_bind, nn_connect). Do
 * not nn_close it: nnuv_close does. */
int nnuv_socket(const nnuv *s);

void nnuv_get_stats(const nnuv *s, nnuv_stats *out);

/* Stops receiving, tries once more to send what is queued (without
 * blocking), frees what still cannot go out, closes the poll handles and,
 * once libuv has released them, nn_close()s the socket, frees s and calls
 * close_cb(ud) if not NULL. s must not be used after this call. Safe inside
 * the receive callback. */
void nnuv_close(nnuv *s, void (*close_cb)(void *ud), void *ud);

/* The single-message steps nnuv is built on, for code without a loop
 * (ddm-client conform, tests): flags 0 blocks (up to the socket's
 * NN_RCVTIMEO / NN_SNDTIMEO), NN_DONTWAIT does not.
 * nnuv_recvmsg receives one message: returns its length (>= 0) with *body
 * (an NN_MSG buffer the caller owns) and its SP header in *hdr; or -errno
 * from nn_recvmsg (-EAGAIN, -ETIMEDOUT, ...), or DDM_ERANGE when the header
 * was over NNUV_MAX_HDR (the message is dropped); *body is NULL then.
 * nnuv_sendmsg sends the NN_MSG buffer body with header hdr (NULL or len 0:
 * none): 0 and ownership of body passes to nanomsg, or DDM_EINVAL / -errno
 * and the caller keeps body. */
int nnuv_recvmsg(int sock, int flags, void **body, nnuv_hdr *hdr);
int nnuv_sendmsg(int sock, int flags, void *body, const nnuv_hdr *hdr);

/* Raw REQ helpers. Sets h to the single-word header of request id (31 bits;
 * the top bit, which marks the end of a backtrace, is set by this call). */
void nnuv_hdr_set_id(nnuv_hdr *h, uint32_t id);
/* Reads the request id (top bit cleared) from the header of a reply received
 * on a raw REQ socket. Returns 0, or DDM_EPROTO when h is not one word with
 * the top bit set. */
int nnuv_hdr_id(const nnuv_hdr *h, uint32_t *id);
/* The 4-byte peer key at the front of a raw REP header (which connection the
 * request came on), or 0 when h is shorter than a word. */
uint32_t nnuv_hdr_peer(const nnuv_hdr *h);

#endif
