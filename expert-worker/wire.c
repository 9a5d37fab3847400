/* wire.c -- decoding, validation and packing of worker protocol messages. */
#include "expert-worker/wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nanomsg/nn.h>

#include "common/err.h"

#define WIRE_ALIGN 16

struct wire_big {
    wire_big *next;
    size_t size;
    max_align_t data[]; /* the allocation handed out */
};

static size_t round_up(size_t n) { return (n + WIRE_ALIGN - 1) & ~(size_t)(WIRE_ALIGN - 1); }

static void *arena_alloc(void *ud, size_t size)
{
    wire_arena *a = ud;
    size = round_up(size ? size : 1);
    if (a->cap - a->used >= size) {
        void *p = a->buf + a->used;
        a->used += size;
        return p;
    }
    wire_big *b = malloc(sizeof *b + size);
    if (!b)
        return NULL;
    b->next = a->big;
    b->size = size;
    a->big = b;
    a->big_bytes += size;
    return b->data;
}

/* Everything is released at reset: protobuf-c's frees are no-ops. */
static void arena_free(void *ud, void *p)
{
    (void)ud;
    (void)p;
}

void wire_arena_init(wire_arena *a)
{
    memset(a, 0, sizeof *a);
    a->pa.alloc = arena_alloc;
    a->pa.free = arena_free;
    a->pa.allocator_data = a;
}

void wire_arena_reset(wire_arena *a, size_t max_keep)
{
    size_t need = a->used + a->big_bytes;
    while (a->big) {
        wire_big *n = a->big->next;
        free(a->big);
        a->big = n;
    }
    if (a->big_bytes > 0 && need > a->cap) {
        size_t ncap = round_up(need + need / 4);
        if (ncap > max_keep)
            ncap = round_up(max_keep);
        if (ncap > a->cap) {
            /* contents are dead: free + malloc, no copy */
            uint8_t *nb = malloc(ncap);
            if (nb) {
                free(a->buf);
                a->buf = nb;
                a->cap = ncap;
            }
        }
    }
    a->big_bytes = 0;
    a->used = 0;
}

void wire_arena_free(wire_arena *a)
{
    wire_arena_reset(a, 0);
    free(a->buf);
    a->buf = NULL;
    a->cap = 0;
}

int wire_decode(wire_arena *a, const void *buf, size_t len, Ddm__V1__WorkerRequest **out,
                char *err, size_t errlen)
{
    *out = ddm__v1__worker_request__unpack(&a->pa, len, buf);
    if (!*out) {
        snprintf(err, errlen, "undecodable message (%zu bytes): send one protobuf "
                 "ddm.v1.WorkerRequest per message", len);
        return DDM_EFORMAT;
    }
    return 0;
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* 1 when t is a valid time: in [0, 1] and not NaN. */
static int time_ok(float t) { return t >= 0.0f && t <= 1.0f; }

int wire_check_denoise(const Ddm__V1__DenoiseRequest *r, const wire_limits *lim, char *err,
                       size_t errlen)
{
    if (!r->has_dim) {
        snprintf(err, errlen, "dim missing: set dim = %d", lim->dim);
        return DDM_EINVAL;
    }
    if (r->dim != (uint32_t)lim->dim) {
        snprintf(err, errlen, "dim %u does not match this expert's dim %d", r->dim, lim->dim);
        return DDM_EMISMATCH;
    }
    if (!r->has_batch) {
        snprintf(err, errlen, "batch missing: set batch = the number of latents in x (1..%d)",
                 lim->max_batch);
        return DDM_EINVAL;
    }
    if (r->batch == 0) {
        snprintf(err, errlen, "batch must be 1..%d latents", lim->max_batch);
        return DDM_ERANGE;
    }
    if (r->batch > (uint32_t)lim->max_batch) {
        snprintf(err, errlen, "batch %u is over this worker's --max-batch %d: split the request",
                 r->batch, lim->max_batch);
        return DDM_ERANGE;
    }
    size_t n = r->batch;
    uint64_t want = (uint64_t)r->dim * n * 4;
    size_t xlen = r->has_x ? r->x.len : 0;
    if (xlen != want) {
        snprintf(err, errlen, "x has %zu bytes, expected dim x batch x 4 = %u x %zu x 4 = %llu",
                 xlen, r->dim, n, (unsigned long long)want);
        return DDM_EMISMATCH;
    }
    if (r->n_labels != 0 && r->n_labels != n) {
        snprintf(err, errlen, "labels has %zu entries, expected none or one per latent (%zu)",
                 r->n_labels, n);
        return DDM_EMISMATCH;
    }
    for (size_t i = 0; i < r->n_labels; i++) {
        int l = r->labels[i];
        if (l < -1 || l >= lim->n_classes) {
            if (lim->n_classes > 0)
                snprintf(err, errlen, "labels[%zu] = %d is outside -1..%d (-1 = null)", i, l,
                         lim->n_classes - 1);
            else
                snprintf(err, errlen, "labels[%zu] = %d but this expert is unconditional: "
                         "send no labels or -1", i, l);
            return DDM_ERANGE;
        }
    }
    if (r->n_ts != 0) {
        if (r->n_ts != n) {
            snprintf(err, errlen, "ts has %zu entries, expected none (use t) or one per latent "
                     "(%zu)", r->n_ts, n);
            return DDM_EMISMATCH;
        }
        for (size_t i = 0; i < n; i++) {
            if (!time_ok(r->ts[i])) {
                snprintf(err, errlen, "ts[%zu] = %g is outside [0, 1]", i, (double)r->ts[i]);
                return DDM_ERANGE;
            }
        }
    } else {
        if (!r->has_t) {
            snprintf(err, errlen, "t missing: set t in [0, 1] (or ts, one per latent)");
            return DDM_EINVAL;
        }
        if (!time_ok(r->t)) {
            snprintf(err, errlen, "t = %g is outside [0, 1]", (double)r->t);
            return DDM_ERANGE;
        }
    }
    const uint8_t *x = r->x.data;
    size_t count = n * r->dim;
    for (size_t i = 0; i < count; i++) {
        if ((load_le32(x + 4 * i) & 0x7f800000u) == 0x7f800000u) {
            snprintf(err, errlen, "x of latent %zu, element %zu is not finite (NaN or inf)",
                     i / r->dim, i % r->dim);
            return DDM_ERANGE;
        }
    }
    return 0;
}

size_t wire_max_request_bytes(const wire_limits *lim)
{
    size_t n = (size_t)lim->max_batch;
    size_t x = n * (size_t)lim->dim * 4;
    /* unpacked repeated fields: label = tag + zigzag varint (<= 5),
     * time = tag + fixed32; packed would be smaller */
    size_t per_latent = 6 + 5;
    /* x length prefix, scalars, the WorkerRequest wrapper: well under 128 */
    return x + n * per_latent + 128;
}

void *wire_pack_reply(const Ddm__V1__WorkerReply *r, size_t *len)
{
    size_t n = ddm__v1__worker_reply__get_packed_size(r);
    void *m = nn_allocmsg(n, 0);
    if (!m)
        return NULL;
    size_t w = ddm__v1__worker_reply__pack(r, m);
    (void)w; /* protobuf-c writes exactly get_packed_size bytes */
    *len = n;
    return m;
}

void wire_le_to_f32(float *dst, const void *src, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(dst, src, n * sizeof *dst);
#else
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = load_le32(p + 4 * i);
        memcpy(&dst[i], &u, 4);
    }
#endif
}

void wire_f32_to_le(float *v, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    (void)v;
    (void)n;
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        uint8_t b[4] = { (uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24) };
        memcpy(&v[i], b, 4);
    }
#endif
}
