/* conform.h -- `ddm-client conform`: checks a worker against worker protocol
 * v1 (docs/protocol.md) over the wire, the way the router talks to it.
 *
 * The checks: the handshake's fields; an Error reply (never a crash or a
 * hang) to garbage, truncated and empty messages and to every kind of
 * invalid DenoiseRequest, with a good request answered after each; answers of
 * the right length, finite, with the id echoed, at the edges (t = 0 and 1, a
 * full batch); labels and times packed or not, unknown fields ignored; batch
 * invariance; determinism; 8 clients at once; and, given the weights file,
 * agreement with its reference forward pass; given the cluster key, a valid
 * MAC on every reply and a refusal of requests with a missing or wrong MAC.
 * Each check prints PASS, FAIL or SKIP with what was sent and what came back. */
#ifndef DDM_CLIENT_CONFORM_H
#define DDM_CLIENT_CONFORM_H

#include <stdio.h>

#define CONFORM_TIMEOUT_MS 2000 /* default deadline of one reply: the router's call timeout */
#define CONFORM_TOL 1e-4        /* |a - b| <= CONFORM_TOL * (1 + |b|) for every value */
#define CONFORM_CLIENTS 8       /* sockets of the concurrency check */

typedef struct conform_opts {
    const char *url;        /* the worker: tcp://host:port or ipc:///path */
    const char *weights;    /* NULL, or the denoiser weights file the worker serves:
                               answers are compared with its reference forward */
    const char *cluster_key_file; /* NULL, or the cluster key the worker was started
                               with: every request is signed, every reply's MAC checked,
                               and a missing or wrong request MAC must be refused */
    int timeout_ms;         /* deadline of each reply (>= 1) */
    FILE *out;              /* where the report goes */
} conform_opts;

typedef struct conform_result {
    int passed, failed, skipped;
} conform_result;

/* Runs every check against the worker at o->url and prints the report to
 * o->out: per check "PASS|FAIL|SKIP name: rule" and indented "sent:", "got:"
 * and (on failure) "why:" lines, then one summary line naming the failed
 * checks. A check that needs the handshake is skipped without one; after the
 * worker stops answering, the checks that follow are skipped (and the suite
 * fails); the --weights checks are skipped without a file, and a bad-input
 * check whose request would be over 256 MiB is skipped too. Returns 0 when the suite ran (*res counts the outcomes), or before
 * any check: DDM_EINVAL (bad URL, --weights not a denoiser), an st/model
 * error for an unreadable weights file, an hmac_key_load error for the key
 * file, DDM_ENOMEM; with a message in err. */
int conform_run(const conform_opts *o, conform_result *res, char *err, size_t errlen);

#endif
