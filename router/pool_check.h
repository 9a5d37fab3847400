/* pool_check.h -- does a worker's handshake (InfoReply) fit this router?
 *
 * The checks of worker protocol v1 (docs/protocol.md), apart from the pool's
 * sockets so they read as one list: protocol major 1, expert id, dim, set
 * size, classes, image shape, class names, weights hash (a pin from the
 * cluster file, else the hash trusted on first use), max batch. */
#ifndef DDM_POOL_CHECK_H
#define DDM_POOL_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "ddm/v1/worker.pb-c.h"

#define POOL_PROTOCOL_MAJOR 1

/* What the router expects of a replica of one expert. */
typedef struct pool_expect {
    int expert_id;
    int dim, n_experts, n_classes;
    int height, width, channels;       /* the router model's image shape */
    const char *const *class_names;    /* n_class_names names, or NULL / 0 */
    int n_class_names;
    const char *pin;                   /* the cluster file's sha256= (lower-case hex), or "" */
    const char *trusted;               /* hash trusted on first use, or "" (none yet) */
} pool_expect;

/* Checks ir against e. Returns 0, or a negative ddm_err with a one-line
 * reason in why saying what differs and what to fix (e.g. "weights sha256
 * <got> differs from the pinned <want> ..."). */
int pool_check_info(const pool_expect *e, const Ddm__V1__InfoReply *ir, char *why,
                    size_t whylen);

/* What a reply to a DenoiseRequest amounts to (pool_check_reply). */
typedef enum pool_reply_verdict {
    POOL_REPLY_OK = 0,           /* wr->denoise->v holds rows x dim finite floats */
    POOL_REPLY_WORKER_ERROR = 1, /* the worker says it could not serve the request: not
                                    the replica's fault (the request fails or is retried) */
    POOL_REPLY_BAD = 2,          /* garbage: the replica goes out of rotation */
} pool_reply_verdict;

/* Checks the decoded reply wr (NULL when the len bytes did not decode; as
 * protobuf-c unpacked it, so v.data is malloc-aligned) to the denoise request
 * id of rows latents of dim floats: the reply kind, its id, an error it
 * carries, the length and finiteness of v. Returns a pool_reply_verdict;
 * unless POOL_REPLY_OK, why holds one line (the worker's message, or what
 * is wrong with the reply). */
int pool_check_reply(const Ddm__V1__WorkerReply *wr, size_t len, uint32_t id, int rows,
                     size_t dim, char *why, size_t whylen);

/* Parses a "MAJOR.MINOR" protocol_version: the major number, or -1 when s
 * is NULL or not of that form. */
int pool_protocol_major(const char *s);

#endif
