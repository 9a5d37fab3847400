/* fuzz_wire.c -- libFuzzer target: a message arriving at ddm-expert, as the
 * worker's on_request handles it: the MAC trailer check of a keyed worker
 * (common/hmac.c hmac_trailer_check_req), decoding into the reused arena
 * (expert-worker/wire.c wire_decode, wire_arena_reset) and the validation
 * of a DenoiseRequest (wire_check_denoise).
 *
 * Input: one selector byte, then the message. Bits 0-1 pick the worker's
 * limits (small ones, so that valid requests are within reach: dim 2 and
 * max batch 4 without classes; dim 3 and 8 with 10 classes; the digits' 784
 * and 64 with 10; 3072 and 1 with 8). Bit 2: the worker has a cluster key and
 * the harness appends the right MAC trailer (the check must pass and strip
 * it); bit 3: a keyed worker gets the bytes as they are (a forged or missing
 * MAC, which must be refused). Checks beyond "no crash, leak or UB": a
 * refused message has a message; an accepted DenoiseRequest is what
 * wire_check_denoise promises (sizes, labels and times in range, finite x). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hmac.h"
#include "common/log.h"
#include "expert-worker/wire.h"

static wire_arena arena;
static hmac_key key;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    wire_arena_init(&arena);
    static const char k[] = "fuzzing-cluster-key-0123456789";
    hmac_key_set(&key, k, sizeof k - 1);
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_wire: broken promise: %s\n", what);
        abort();
    }
}

static const wire_limits LIMITS[4] = {
    { .dim = 2, .max_batch = 4, .n_classes = 0 },
    { .dim = 3, .max_batch = 8, .n_classes = 10 },
    { .dim = 784, .max_batch = 64, .n_classes = 10 },
    { .dim = 3072, .max_batch = 1, .n_classes = 8 },
};

static void check_valid(const Ddm__V1__DenoiseRequest *r, const wire_limits *lim)
{
    check(r->dim == (uint32_t)lim->dim, "dim is the worker's");
    check(r->batch >= 1 && r->batch <= (uint32_t)lim->max_batch, "batch within max batch");
    size_t n = (size_t)r->dim * r->batch;
    check(r->has_x && r->x.len == n * 4, "x is dim x batch floats");
    float *x = malloc(n * sizeof *x);
    if (!x)
        return;
    wire_le_to_f32(x, r->x.data, n);
    for (size_t i = 0; i < n; i++)
        check(isfinite(x[i]), "x is finite");
    free(x);
    check(r->n_labels == 0 || r->n_labels == r->batch, "no labels or one per latent");
    for (size_t i = 0; i < r->n_labels; i++)
        check(r->labels[i] >= -1 && r->labels[i] < lim->n_classes, "labels in -1..classes-1");
    if (r->n_ts) {
        check(r->n_ts == r->batch, "one time per latent");
        for (size_t i = 0; i < r->n_ts; i++)
            check(r->ts[i] >= 0 && r->ts[i] <= 1, "times in [0, 1]");
    } else {
        check(r->has_t && r->t >= 0 && r->t <= 1, "t in [0, 1]");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    data++, size--;
    const wire_limits *lim = &LIMITS[sel & 3];
    /* the message in its own allocation (with room for a trailer), as nanomsg hands it over */
    uint8_t *msg = malloc(size + HMAC_TRAILER_SIZE);
    if (!msg)
        return 0;
    memcpy(msg, data, size);
    size_t len = size;
    if (sel & 4) {
        hmac_trailer_req(&key, msg, len, msg + len);
        len += HMAC_TRAILER_SIZE;
        uint8_t mac[HMAC_SIZE];
        check(hmac_trailer_check_req(&key, msg, len, mac) == 0, "a right MAC is accepted");
        check(!memcmp(mac, msg + len - HMAC_SIZE, HMAC_SIZE), "the request MAC is returned");
        len -= HMAC_TRAILER_SIZE;
    } else if (sel & 8) {
        uint8_t mac[HMAC_SIZE];
        int rc = hmac_trailer_check_req(&key, msg, len, mac);
        check(rc == DDM_EPROTO || rc == DDM_EMISMATCH, "a forged or missing MAC is refused");
        free(msg);
        return 0;
    }
    wire_arena_reset(&arena, 1u << 20);
    Ddm__V1__WorkerRequest *wr = NULL;
    char err[256] = "";
    int rc = wire_decode(&arena, msg, len, &wr, err, sizeof err);
    free(msg); /* nanomsg's buffer is freed right after decoding: nothing may point into it */
    if (rc) {
        check(rc == DDM_EFORMAT && err[0], "an undecodable message gets DDM_EFORMAT and a message");
        return 0;
    }
    if (wr->kind_case != DDM__V1__WORKER_REQUEST__KIND_DENOISE)
        return 0;
    const Ddm__V1__DenoiseRequest *r = wr->denoise;
    rc = wire_check_denoise(r, lim, err, sizeof err);
    if (rc) {
        check((rc == DDM_EINVAL || rc == DDM_ERANGE || rc == DDM_EMISMATCH) && err[0],
              "an invalid request gets DDM_EINVAL, DDM_ERANGE or DDM_EMISMATCH and a message");
        return 0;
    }
    check_valid(r, lim);
    return 0;
}
