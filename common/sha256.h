/* sha256.h -- SHA-256 (FIPS 180-4): incremental hashing and a one-shot hex helper.
 *
 * Used to fingerprint weights files, so a worker and the router can agree on
 * exactly which model bytes are being served, and under HMAC-SHA256
 * (common/hmac.h) to authenticate router <-> worker messages. Uses the CPU's
 * SHA extensions when it has them (chosen at run time). */
#ifndef DDM_SHA256_H
#define DDM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_SIZE 32
#define SHA256_HEX_SIZE 65 /* 64 lowercase hex digits and the NUL */

typedef struct sha256_ctx {
    uint32_t h[8];       /* chaining state */
    uint64_t nbytes;     /* message length so far, in bytes */
    uint8_t block[64];   /* pending partial block */
    size_t fill;         /* bytes used in block */
} sha256_ctx;

/* Starts a new hash in ctx. */
void sha256_init(sha256_ctx *ctx);
/* Appends len bytes of data (may be NULL when len is 0). */
void sha256_update(sha256_ctx *ctx, const void *data, size_t len);
/* Writes the 32-byte digest to out. ctx must be re-initialised before reuse. */
void sha256_final(sha256_ctx *ctx, uint8_t out[SHA256_DIGEST_SIZE]);

/* One shot: lowercase hex digest of data[0..len) into hex (65 bytes with NUL). */
void sha256_hex(const void *data, size_t len, char hex[SHA256_HEX_SIZE]);
/* Lowercase hex of an already computed digest. */
void sha256_to_hex(const uint8_t digest[SHA256_DIGEST_SIZE], char hex[SHA256_HEX_SIZE]);

/* 1 if this CPU has the SHA extensions (then they are used by default). */
int sha256_hw_available(void);
/* For tests and benchmarks: use the SHA extensions (on, when available) or
 * the portable code (0) from now on. Not thread-safe against hashing in
 * progress. Returns 1 if the SHA extensions are now in use. */
int sha256_use_hw(int on);

#endif
