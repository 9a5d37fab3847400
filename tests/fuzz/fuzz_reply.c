/* fuzz_reply.c -- libFuzzer target: a worker's reply arriving at ddm-router,
 * as router/pool.c handles it: the MAC trailer check of a keyed router
 * (common/hmac.c hmac_trailer_check_rep), decoding (protobuf-c, as
 * open_reply does), then the handshake checks (router/pool_check.c
 * pool_check_info) and the denoise reply checks (pool_check_reply).
 *
 * Input: one selector byte, then the reply. Bits 0-1 pick what the router
 * expects of the handshake (a pinned hash; a hash trusted on first use; RGB
 * 32x32 with class names; nothing trusted yet), bits 4-5 the request a
 * denoise reply answers (rows x dim: 1 x 2, 3 x 1, 2 x 784, 1 x 0). Bit 2: the
 * router has a cluster key and the harness appends the right MAC trailer
 * (the check must pass); bit 3: a keyed router gets the bytes as they are
 * (a forged or missing MAC, which must be refused). Checks beyond "no
 * crash, leak or UB": refusals say why; an accepted handshake declares a
 * sha256 equal to the pin; an accepted denoise reply holds rows x dim finite
 * floats. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/hmac.h"
#include "common/log.h"
#include "router/pool_check.h"

#define REQ_ID 7u

static hmac_key key;
static uint8_t req_mac[HMAC_SIZE];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    static const char k[] = "fuzzing-cluster-key-0123456789";
    hmac_key_set(&key, k, sizeof k - 1);
    for (int i = 0; i < HMAC_SIZE; i++)
        req_mac[i] = (uint8_t)(i * 37 + 1);
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_reply: broken promise: %s\n", what);
        abort();
    }
}

static const char PIN[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
static const char *const NAMES[3] = { "cat", "dog", "owl" };

static const pool_expect EXPECT[4] = {
    { .expert_id = 3, .dim = 784, .n_experts = 8, .n_classes = 10, .height = 28, .width = 28,
      .channels = 1, .pin = PIN, .trusted = "" },
    { .expert_id = 0, .dim = 784, .n_experts = 8, .n_classes = 10, .height = 28, .width = 28,
      .channels = 1, .pin = "", .trusted = PIN },
    { .expert_id = 1, .dim = 3072, .n_experts = 2, .n_classes = 3, .height = 32, .width = 32,
      .channels = 3, .class_names = NAMES, .n_class_names = 3, .pin = "", .trusted = "" },
    { .expert_id = 0, .dim = 2, .n_experts = 1, .n_classes = 0, .height = 1, .width = 2,
      .channels = 1, .pin = NULL, .trusted = NULL },
};

static const struct { int rows; size_t dim; } ASKED[4] = { { 1, 2 }, { 3, 1 }, { 2, 784 },
                                                           { 1, 0 } };

static void check_denoise(const Ddm__V1__WorkerReply *wr, size_t len, int rows, size_t dim)
{
    char why[300] = "";
    int v = pool_check_reply(wr, len, REQ_ID, rows, dim, why, sizeof why);
    check(v == POOL_REPLY_OK || v == POOL_REPLY_WORKER_ERROR || v == POOL_REPLY_BAD,
          "a verdict");
    if (v != POOL_REPLY_OK) {
        check(why[0] != '\0', "a refused reply says why");
        return;
    }
    check(wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE, "a denoise reply");
    const Ddm__V1__DenoiseReply *dr = wr->denoise;
    check(dr->has_id && dr->id == REQ_ID && !dr->error, "the request's id, no error");
    check(dr->has_v && dr->v.len == (size_t)rows * dim * 4, "rows x dim floats");
    for (size_t i = 0; i < dr->v.len / 4; i++) {
        float f;
        memcpy(&f, dr->v.data + 4 * i, 4);
        check(isfinite(f), "finite floats");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    data++, size--;
    uint8_t *msg = malloc(size + HMAC_TRAILER_SIZE);
    if (!msg)
        return 0;
    memcpy(msg, data, size);
    size_t len = size;
    if (sel & 4) {
        hmac_trailer_rep(&key, req_mac, msg, len, msg + len);
        check(hmac_trailer_check_rep(&key, req_mac, msg, len + HMAC_TRAILER_SIZE) == 0,
              "a right MAC is accepted");
    } else if (sel & 8) {
        int rc = hmac_trailer_check_rep(&key, req_mac, msg, len);
        check(rc == DDM_EPROTO || rc == DDM_EMISMATCH, "a forged or missing MAC is refused");
        free(msg);
        return 0;
    }
    Ddm__V1__WorkerReply *wr = ddm__v1__worker_reply__unpack(NULL, len, msg);
    free(msg);
    const pool_expect *e = &EXPECT[sel & 3];
    if (wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_INFO && wr->info) {
        char why[400] = "";
        int rc = pool_check_info(e, wr->info, why, sizeof why);
        if (rc) {
            check(rc < 0 && why[0], "a refused handshake says why");
        } else {
            const char *h = wr->info->weights_sha256;
            check(h && strlen(h) == 64, "an accepted handshake declares a sha256");
            if (e->pin && *e->pin)
                check(!strcasecmp(h, e->pin), "the pinned sha256");
            else if (e->trusted && *e->trusted)
                check(!strcasecmp(h, e->trusted), "the trusted sha256");
            check(wr->info->has_max_batch && wr->info->max_batch >= 1, "max batch >= 1");
        }
        (void)pool_protocol_major(wr->info->protocol_version);
    }
    check_denoise(wr, len, ASKED[(sel >> 4) & 3].rows, ASKED[(sel >> 4) & 3].dim);
    if (wr)
        ddm__v1__worker_reply__free_unpacked(wr, NULL);
    return 0;
}
