/* hmac.h -- HMAC-SHA256 (RFC 2104) and the MAC trailer of worker protocol v1.
 *
 * A cluster key (--cluster-key-file on ddm-router and ddm-expert) makes every
 * router <-> worker message P || T, where P is the packed protobuf without its
 * `mac` field and T the 34-byte trailer 0x7a 0x20 MAC -- field 15 (mac),
 * length-delimited, 32 bytes -- so that P || T still parses as the message
 * with `mac` set:
 *   request MAC = HMAC-SHA256(key, "ddm1 req" || P)
 *   reply MAC   = HMAC-SHA256(key, "ddm1 rep" || request MAC || P)
 * A reply is thus bound to the request it answers, and a handshake (whose
 * request carries a fresh random challenge) proves the worker holds the key
 * now. docs/protocol.md has the full text. */
#ifndef DDM_HMAC_H
#define DDM_HMAC_H

#include <stddef.h>
#include <stdint.h>

#include "common/sha256.h"

#define HMAC_SIZE 32          /* bytes of an HMAC-SHA256 */
#define HMAC_KEY_MIN 16       /* shortest cluster key accepted */
#define HMAC_KEY_MAX 4096     /* longest cluster key file read */
#define HMAC_TRAILER_SIZE 34  /* 0x7a 0x20 + MAC */

/* A key with its inner and outer pad blocks already hashed: a MAC then
 * costs the message's blocks plus two. */
typedef struct hmac_key {
    sha256_ctx inner; /* after absorbing key ^ ipad */
    sha256_ctx outer; /* after absorbing key ^ opad */
} hmac_key;

/* Prepares k from len bytes of key (longer than 64 bytes: hashed first, as
 * RFC 2104 says). */
void hmac_key_set(hmac_key *k, const void *key, size_t len);

/* Reads a cluster key file: its bytes with trailing whitespace trimmed, at
 * least HMAC_KEY_MIN of them. Returns 0, or an error with a one-line message
 * naming the file and what to fix (missing, not a regular file, too short,
 * too long). Warns (log) when the file is readable by group or others. */
int hmac_key_load(const char *path, hmac_key *k, char *err, size_t errlen);

/* Incremental HMAC under k (k must outlive the context). */
typedef struct hmac_ctx {
    sha256_ctx h;
    const hmac_key *k;
} hmac_ctx;
void hmac_start(hmac_ctx *c, const hmac_key *k);
void hmac_update(hmac_ctx *c, const void *data, size_t len);
void hmac_final(hmac_ctx *c, uint8_t mac[HMAC_SIZE]);

/* One shot: mac = HMAC-SHA256(k, data[0..len)). */
void hmac_sha256(const hmac_key *k, const void *data, size_t len, uint8_t mac[HMAC_SIZE]);

/* 1 if a and b are equal; the time taken does not depend on where they differ. */
int hmac_equal(const uint8_t a[HMAC_SIZE], const uint8_t b[HMAC_SIZE]);

/* ---- the worker protocol's MAC trailer ------------------------------------------- */

/* Writes the trailer of a request whose packed bytes (without mac) are
 * P[0..len); its MAC (trailer + 2) is what the reply's MAC chains to. */
void hmac_trailer_req(const hmac_key *k, const void *P, size_t len,
                      uint8_t trailer[HMAC_TRAILER_SIZE]);
/* Writes the trailer of a reply P[0..len) to the request whose MAC is req_mac. */
void hmac_trailer_rep(const hmac_key *k, const uint8_t req_mac[HMAC_SIZE], const void *P,
                      size_t len, uint8_t trailer[HMAC_TRAILER_SIZE]);

/* Checks that msg[0..len) ends with a valid request trailer. Returns 0 (the
 * request MAC copied to req_mac; the message proper is msg[0..len - 34)),
 * DDM_EPROTO when msg does not end with a trailer, or DDM_EMISMATCH when the
 * MAC is wrong. */
int hmac_trailer_check_req(const hmac_key *k, const void *msg, size_t len,
                           uint8_t req_mac[HMAC_SIZE]);
/* The same for a reply to the request whose MAC is req_mac. */
int hmac_trailer_check_rep(const hmac_key *k, const uint8_t req_mac[HMAC_SIZE],
                           const void *msg, size_t len);

#endif
