/* auth.h -- bearer tokens for ddm-router's HTTP API (--auth-token-file).
 *
 * The token file has one token per line, optionally named and with limits:
 *     [name:]token [concurrency=N] [queue=N]
 * '#' starts a comment, blank lines are ignored. A token is 16..256 characters of
 * RFC 6750's b64token alphabet (A-Z a-z 0-9 - . _ ~ + / and trailing =), e.g. the
 * output of `openssl rand -hex 24`. A name (1..64 of A-Z a-z 0-9 _ . -; default
 * "token-<line>") is what logs and metrics show: a token itself is never logged or
 * kept in memory, only its SHA-256. concurrency: the token's requests computed at
 * once (default auth_defaults); queue: more of them waiting for a slot, beyond
 * which a request gets 429.
 *
 * A request presents "Authorization: Bearer <token>"; auth_check hashes it and
 * compares the digest with every token's in constant time (no early exit), so the
 * time taken says nothing about which bytes matched.
 *
 * Tokens are reference counted: a request keeps its token alive (and its
 * counters) across auth_reload, which keeps the object of every token still in
 * the file (same name and token) and drops the others once their requests end. */
#ifndef DDM_AUTH_H
#define DDM_AUTH_H

#include <stddef.h>

#include "common/sha256.h"

typedef struct auth auth;

typedef struct auth_token {
    char name[65];
    unsigned char digest[SHA256_DIGEST_SIZE];
    int concurrency;      /* requests computed at once */
    int queue;            /* requests waiting for a slot, at most */
    /* the owner's (router/admit.c) state, kept across reloads */
    int running, waiting;
    void *wait_head, *wait_tail;  /* the line of waiting requests (admit_slot) */
    int promoting;                /* the line is being started */
    int refs;             /* the table's, and one per request holding it */
} auth_token;

/* Limits of tokens that do not set their own. */
typedef struct auth_defaults {
    int concurrency;      /* 4 */
    int queue;            /* 16 */
} auth_defaults;

void auth_defaults_init(auth_defaults *d);

/* Reads the token file. Returns 0 and *out, or an error with "path:line: what
 * is wrong" in err (a token's text never appears in it). The file must be a
 * regular file; *warn gets a warning to log when others may read it (else ""). */
int auth_load(const char *path, const auth_defaults *d, auth **out, char *warn, size_t warnlen,
              char *err, size_t errlen);

/* Re-reads the file into a: on success tokens still present keep their object,
 * the others leave the table; on failure a is unchanged. Returns as auth_load. */
int auth_reload(auth *a, char *warn, size_t warnlen, char *err, size_t errlen);

/* Number of tokens, and token i (0..count-1) of the table. */
int auth_count(const auth *a);
auth_token *auth_token_at(const auth *a, int i);

/* The token an Authorization header value presents, or NULL (no header, not
 * "Bearer <token>", or no such token). The result is the table's: call
 * auth_token_hold to keep it past the next auth_reload. */
auth_token *auth_check(const auth *a, const char *authorization);

/* Reference counting (a NULL token is ignored). */
void auth_token_hold(auth_token *t);
void auth_token_release(auth_token *t);

/* Frees the table; tokens still held by requests live on until released. */
void auth_free(auth *a);

#endif
