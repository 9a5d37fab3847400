/* pool_check.h -- does a worker's handshake (InfoReply) fit this router?
 *
 * The checks of worker protocol v1 (docs/protocol.md), apart from the pool's
 * sockets so they read as one list: protocol major 1, expert id, dim, set
 * size, classes, image shape, class names, weights hash (a pin from the
 * cluster file, else the hash trusted on first use), max batch. */
#ifndef DDM_POOL_CHECK_H
#define DDM_POOL_CHECK_H

#include <stddef.h>

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

/* Parses a "MAJOR.MINOR" protocol_version: the major number, or -1 when s
 * is NULL or not of that form. */
int pool_protocol_major(const char *s);

#endif
