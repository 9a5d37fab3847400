/* wreq.h -- a blocking client of worker protocol v1 (docs/protocol.md).
 *
 * One raw (AF_SP_RAW) nanomsg REQ socket connected to one worker URL, as the
 * router connects: every request carries a fresh 31-bit request id in its SP
 * header, several may be in flight, and a reply is matched to its request by
 * that id. Every wait has a deadline, so a worker that never answers costs
 * the caller that long and no more. For ddm-client conform; a wreq is used
 * by one thread at a time (open one per thread). */
#ifndef DDM_CLIENT_WREQ_H
#define DDM_CLIENT_WREQ_H

#include <stddef.h>
#include <stdint.h>

#include "common/hmac.h"

typedef struct wreq wreq;

#define WREQ_MACS 64          /* requests whose MAC a keyed wreq remembers */
#define WREQ_MAC_UNCHECKED 1  /* wreq_reply_mac: no key, or not a reply to a signed request */

/* Opens a raw REQ socket to url (tcp://host:port or ipc:///path) with no
 * receive size limit. nanomsg connects in the background: a worker that is
 * not up yet is reached once it binds. Returns 0 and *out (wreq_close),
 * or DDM_EINVAL / DDM_ENOMEM / -errno with a message in err naming the URL. */
int wreq_open(const char *url, wreq **out, char *err, size_t errlen);

/* Closes the socket (unsent and unread messages are dropped); NULL is a no-op. */
void wreq_close(wreq *c);

/* Authenticates c with the cluster key k (copied), as a keyed router does
 * (docs/protocol.md, Authentication): from now on wreq_send appends the
 * request MAC trailer to every message and remembers the request MACs of the
 * last WREQ_MACS sends, and a reply to one of those is checked against its
 * request's MAC (wreq_reply_mac). */
void wreq_set_key(wreq *c, const hmac_key *k);

/* Sends buf[0..len) as one message under a new request id (*id), with the
 * MAC trailer when c has a key. Returns 0, DDM_ETIMEDOUT when it could not
 * be handed to a connection within timeout_ms (no worker there), or -errno. */
int wreq_send(wreq *c, const void *buf, size_t len, int timeout_ms, uint32_t *id);

/* Like wreq_send, but buf goes as it is, key or not (for checking how a
 * worker treats a missing or wrong MAC); its reply is not checked. */
int wreq_send_raw(wreq *c, const void *buf, size_t len, int timeout_ms, uint32_t *id);

/* Waits up to timeout_ms for the next reply to any request of c. Returns 0
 * with *id, and *body (a nanomsg buffer the caller releases with
 * nn_freemsg) of *len bytes; DDM_ETIMEDOUT; DDM_EPROTO when the SP header is
 * not one request id (then nothing is returned); or -errno. A reply to a
 * signed request (a keyed wreq_send) is checked: with a valid reply trailer
 * *len leaves the trailer out; without one the whole message is returned.
 * Either way wreq_reply_mac says which. */
int wreq_recv(wreq *c, int timeout_ms, uint32_t *id, void **body, size_t *len);

/* The MAC verdict on the reply the last successful wreq_recv (or
 * wreq_recv_id, wreq_call) returned: 0 a valid reply MAC chained to its
 * request's, DDM_EPROTO no trailer, DDM_EMISMATCH a wrong MAC, or
 * WREQ_MAC_UNCHECKED (c has no key, or the request was not signed). */
int wreq_reply_mac(const wreq *c);

/* Like wreq_recv but only for the reply to request id: replies to other
 * (earlier, timed-out) requests are dropped. timeout_ms bounds the whole wait. */
int wreq_recv_id(wreq *c, uint32_t id, int timeout_ms, void **body, size_t *len);

/* wreq_send then wreq_recv_id, each within timeout_ms. */
int wreq_call(wreq *c, const void *buf, size_t len, int timeout_ms, void **body,
                 size_t *blen);

#endif
