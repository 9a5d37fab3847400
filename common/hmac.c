/* hmac.c -- HMAC-SHA256 and the worker protocol's MAC trailer (see hmac.h). */
#include "common/hmac.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

#define BLOCK 64

static const uint8_t TAG_REQ[8] = { 'd', 'd', 'm', '1', ' ', 'r', 'e', 'q' };
static const uint8_t TAG_REP[8] = { 'd', 'd', 'm', '1', ' ', 'r', 'e', 'p' };

void hmac_key_set(hmac_key *k, const void *key, size_t len)
{
    uint8_t block[BLOCK] = { 0 };
    if (len > BLOCK) {
        sha256_ctx c;
        sha256_init(&c);
        sha256_update(&c, key, len);
        sha256_final(&c, block);
    } else if (len) {
        memcpy(block, key, len);
    }
    uint8_t pad[BLOCK];
    for (int i = 0; i < BLOCK; i++)
        pad[i] = block[i] ^ 0x36;
    sha256_init(&k->inner);
    sha256_update(&k->inner, pad, BLOCK);
    for (int i = 0; i < BLOCK; i++)
        pad[i] = block[i] ^ 0x5c;
    sha256_init(&k->outer);
    sha256_update(&k->outer, pad, BLOCK);
    memset(block, 0, sizeof block);
    memset(pad, 0, sizeof pad);
}

int hmac_key_load(const char *path, hmac_key *k, char *err, size_t errlen)
{
    /* O_NONBLOCK: a FIFO must not hang the process (it is refused below) */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return ddm_errf(err, errlen, -errno, "cluster key file %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "cluster key file %s: not a regular file (give a file holding the key)",
                        path);
    }
    if (sb.st_size > HMAC_KEY_MAX) {
        close(fd);
        return ddm_errf(err, errlen, DDM_ERANGE,
                        "cluster key file %s: %lld bytes, at most %d are read: is it the key?",
                        path, (long long)sb.st_size, HMAC_KEY_MAX);
    }
    uint8_t buf[HMAC_KEY_MAX + 1];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return ddm_errf(err, errlen, -e, "cluster key file %s: %s", path, strerror(e));
        }
        if (r == 0 || (n += (size_t)r) == sizeof buf)
            break;
    }
    close(fd);
    if (n > HMAC_KEY_MAX)
        return ddm_errf(err, errlen, DDM_ERANGE, "cluster key file %s: over %d bytes", path,
                        HMAC_KEY_MAX);
    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t' || buf[n - 1] == '\n' ||
                     buf[n - 1] == '\r' || buf[n - 1] == '\v' || buf[n - 1] == '\f'))
        n--;
    if (n < HMAC_KEY_MIN) {
        memset(buf, 0, sizeof buf);
        return ddm_errf(err, errlen, DDM_ERANGE,
                        "cluster key file %s: %zu byte(s) without trailing whitespace, at least "
                        "%d needed (e.g. head -c 32 /dev/urandom | base64 > %s)",
                        path, n, HMAC_KEY_MIN, path);
    }
    if (sb.st_mode & 077)
        log_warn("cluster key file %s can be read by group or others: chmod 600 %s", path, path);
    hmac_key_set(k, buf, n);
    memset(buf, 0, sizeof buf);
    return 0;
}

void hmac_start(hmac_ctx *c, const hmac_key *k)
{
    c->h = k->inner;
    c->k = k;
}

void hmac_update(hmac_ctx *c, const void *data, size_t len) { sha256_update(&c->h, data, len); }

void hmac_final(hmac_ctx *c, uint8_t mac[HMAC_SIZE])
{
    uint8_t in[SHA256_DIGEST_SIZE];
    sha256_final(&c->h, in);
    sha256_ctx o = c->k->outer;
    sha256_update(&o, in, sizeof in);
    sha256_final(&o, mac);
}

void hmac_sha256(const hmac_key *k, const void *data, size_t len, uint8_t mac[HMAC_SIZE])
{
    hmac_ctx c;
    hmac_start(&c, k);
    hmac_update(&c, data, len);
    hmac_final(&c, mac);
}

int hmac_equal(const uint8_t a[HMAC_SIZE], const uint8_t b[HMAC_SIZE])
{
    volatile uint8_t d = 0;
    for (int i = 0; i < HMAC_SIZE; i++)
        d |= a[i] ^ b[i];
    return d == 0;
}

/* ---- trailer ------------------------------------------------------------------------ */

static void put_trailer(uint8_t t[HMAC_TRAILER_SIZE])
{
    t[0] = 15 << 3 | 2; /* field 15, length-delimited */
    t[1] = HMAC_SIZE;
}

void hmac_trailer_req(const hmac_key *k, const void *P, size_t len,
                      uint8_t trailer[HMAC_TRAILER_SIZE])
{
    hmac_ctx c;
    hmac_start(&c, k);
    hmac_update(&c, TAG_REQ, sizeof TAG_REQ);
    hmac_update(&c, P, len);
    put_trailer(trailer);
    hmac_final(&c, trailer + 2);
}

void hmac_trailer_rep(const hmac_key *k, const uint8_t req_mac[HMAC_SIZE], const void *P,
                      size_t len, uint8_t trailer[HMAC_TRAILER_SIZE])
{
    hmac_ctx c;
    hmac_start(&c, k);
    hmac_update(&c, TAG_REP, sizeof TAG_REP);
    hmac_update(&c, req_mac, HMAC_SIZE);
    hmac_update(&c, P, len);
    put_trailer(trailer);
    hmac_final(&c, trailer + 2);
}

static int has_trailer(const uint8_t *m, size_t len)
{
    return len >= HMAC_TRAILER_SIZE && m[len - HMAC_TRAILER_SIZE] == (15 << 3 | 2) &&
           m[len - HMAC_TRAILER_SIZE + 1] == HMAC_SIZE;
}

int hmac_trailer_check_req(const hmac_key *k, const void *msg, size_t len,
                           uint8_t req_mac[HMAC_SIZE])
{
    const uint8_t *m = msg;
    if (!has_trailer(m, len))
        return DDM_EPROTO;
    uint8_t t[HMAC_TRAILER_SIZE];
    hmac_trailer_req(k, m, len - HMAC_TRAILER_SIZE, t);
    if (!hmac_equal(t + 2, m + len - HMAC_SIZE))
        return DDM_EMISMATCH;
    memcpy(req_mac, t + 2, HMAC_SIZE);
    return 0;
}

int hmac_trailer_check_rep(const hmac_key *k, const uint8_t req_mac[HMAC_SIZE],
                           const void *msg, size_t len)
{
    const uint8_t *m = msg;
    if (!has_trailer(m, len))
        return DDM_EPROTO;
    uint8_t t[HMAC_TRAILER_SIZE];
    hmac_trailer_rep(k, req_mac, m, len - HMAC_TRAILER_SIZE, t);
    return hmac_equal(t + 2, m + len - HMAC_SIZE) ? 0 : DDM_EMISMATCH;
}
