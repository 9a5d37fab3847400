/* wclient.c -- a blocking worker-protocol client for tests (see wclient.h).
 *
 * The MAC is computed here with common/sha256 (HMAC per RFC 2104), apart from
 * any implementation under test, so a test checks a worker's MACs against an
 * independent computation. */
#include "tests/support/wclient.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/err.h"
#include "common/nnuv.h"
#include "common/sha256.h"

#define WCLIENT_MAX_KEY 256
#define WCLIENT_SLOTS 64 /* request MACs remembered for checking replies */

struct wclient {
    int sock;
    int rcv_ms;
    uint32_t next_id;
    uint8_t key[WCLIENT_MAX_KEY];
    size_t keylen;
    struct {
        uint32_t id;
        uint8_t mac[WCLIENT_MAC_LEN];
    } sent[WCLIENT_SLOTS];
};

void wclient_hmac(const uint8_t *key, size_t keylen, const void *a, size_t alen, const void *b,
                  size_t blen, const void *c, size_t clen, uint8_t out[WCLIENT_MAC_LEN])
{
    uint8_t k[64] = { 0 }, pad[64], inner[SHA256_DIGEST_SIZE];
    sha256_ctx ctx;
    if (keylen > 64) {
        sha256_init(&ctx);
        sha256_update(&ctx, key, keylen);
        sha256_final(&ctx, k);
    } else {
        memcpy(k, key, keylen);
    }
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x36;
    sha256_init(&ctx);
    sha256_update(&ctx, pad, 64);
    sha256_update(&ctx, a, alen);
    sha256_update(&ctx, b, blen);
    sha256_update(&ctx, c, clen);
    sha256_final(&ctx, inner);
    for (int i = 0; i < 64; i++)
        pad[i] = k[i] ^ 0x5c;
    sha256_init(&ctx);
    sha256_update(&ctx, pad, 64);
    sha256_update(&ctx, inner, sizeof inner);
    sha256_final(&ctx, out);
}

wclient *wclient_open(const char *url, int rcv_ms)
{
    wclient *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sock = nn_socket(AF_SP_RAW, NN_REQ);
    c->rcv_ms = rcv_ms;
    c->next_id = 1;
    int big = -1, snd = 5000;
    if (c->sock < 0 ||
        nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &big, sizeof big) < 0 ||
        nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &rcv_ms, sizeof rcv_ms) < 0 ||
        nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_SNDTIMEO, &snd, sizeof snd) < 0 ||
        nn_connect(c->sock, url) < 0) {
        fprintf(stderr, "wclient: %s: %s\n", url, nn_strerror(nn_errno()));
        if (c->sock >= 0)
            nn_close(c->sock);
        free(c);
        return NULL;
    }
    return c;
}

void wclient_close(wclient *c)
{
    if (!c)
        return;
    nn_close(c->sock);
    free(c);
}

void wclient_set_key(wclient *c, const uint8_t *key, size_t len)
{
    c->keylen = len <= WCLIENT_MAX_KEY ? len : WCLIENT_MAX_KEY;
    if (c->keylen)
        memcpy(c->key, key, c->keylen);
}

uint32_t wclient_next_id(wclient *c) { return c->next_id++ & 0x7fffffffu; }

int wclient_send_raw(wclient *c, uint32_t id, const void *buf, size_t len)
{
    void *body = nn_allocmsg(len, 0);
    if (!body)
        return -1;
    memcpy(body, buf, len);
    nnuv_hdr h;
    nnuv_hdr_set_id(&h, id);
    if (nnuv_sendmsg(c->sock, 0, body, &h) < 0) {
        nn_freemsg(body);
        return -1;
    }
    return 0;
}

int wclient_send(wclient *c, uint32_t id, const Ddm__V1__WorkerRequest *r)
{
    size_t len = ddm__v1__worker_request__get_packed_size(r);
    uint8_t *buf = malloc(len + 2 + WCLIENT_MAC_LEN);
    if (!buf)
        return -1;
    ddm__v1__worker_request__pack(r, buf);
    size_t total = len;
    if (c->keylen) {
        uint8_t *mac = buf + len + 2;
        wclient_hmac(c->key, c->keylen, "ddm1 req", 8, buf, len, NULL, 0, mac);
        buf[len] = 0x7a;
        buf[len + 1] = WCLIENT_MAC_LEN;
        total += 2 + WCLIENT_MAC_LEN;
        c->sent[id % WCLIENT_SLOTS].id = id;
        memcpy(c->sent[id % WCLIENT_SLOTS].mac, mac, WCLIENT_MAC_LEN);
    }
    int rc = wclient_send_raw(c, id, buf, total);
    free(buf);
    return rc;
}

/* 1 if msg[0..n) ends in a valid reply MAC for request id. */
static int reply_mac_ok(const wclient *c, uint32_t id, const uint8_t *msg, size_t n)
{
    const size_t tl = 2 + WCLIENT_MAC_LEN;
    if (n < tl || msg[n - tl] != 0x7a || msg[n - tl + 1] != WCLIENT_MAC_LEN ||
        c->sent[id % WCLIENT_SLOTS].id != id)
        return 0;
    uint8_t want[WCLIENT_MAC_LEN];
    wclient_hmac(c->key, c->keylen, "ddm1 rep", 8, c->sent[id % WCLIENT_SLOTS].mac,
                 WCLIENT_MAC_LEN, msg, n - tl, want);
    return memcmp(want, msg + n - WCLIENT_MAC_LEN, WCLIENT_MAC_LEN) == 0;
}

Ddm__V1__WorkerReply *wclient_recv(wclient *c, uint32_t id, int *mac_ok)
{
    for (;;) {
        void *body;
        nnuv_hdr h;
        int n = nnuv_recvmsg(c->sock, 0, &body, &h);
        if (n == DDM_ERANGE)
            continue; /* a header too long to be a reply of ours: dropped */
        if (n < 0)
            return NULL;
        uint32_t got;
        if (nnuv_hdr_id(&h, &got) != 0 || got != id) {
            nn_freemsg(body);
            continue;
        }
        if (mac_ok)
            *mac_ok = c->keylen ? reply_mac_ok(c, id, body, (size_t)n) : 0;
        Ddm__V1__WorkerReply *r = ddm__v1__worker_reply__unpack(NULL, (size_t)n, body);
        nn_freemsg(body);
        return r;
    }
}

Ddm__V1__WorkerReply *wclient_info(wclient *c, int timeout_ms)
{
    int short_ms = 200, attempts = timeout_ms / short_ms + 1;
    nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &short_ms, sizeof short_ms);
    Ddm__V1__WorkerReply *r = NULL;
    for (int i = 0; i < attempts && !r; i++) {
        Ddm__V1__InfoRequest ir = DDM__V1__INFO_REQUEST__INIT;
        uint8_t challenge[16];
        for (int j = 0; j < 16; j++)
            challenge[j] = (uint8_t)rand();
        ir.has_id = 1;
        ir.id = 77;
        ir.has_challenge = 1;
        ir.challenge.data = challenge;
        ir.challenge.len = sizeof challenge;
        Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
        wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
        wr.info = &ir;
        uint32_t id = wclient_next_id(c);
        if (wclient_send(c, id, &wr) == 0)
            r = wclient_recv(c, id, NULL);
    }
    nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &c->rcv_ms, sizeof c->rcv_ms);
    return r;
}
