/* pool_check.c -- the handshake and reply checks of worker protocol v1 (see pool_check.h). */
#include "router/pool_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"

int pool_protocol_major(const char *s)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    long major = strtol(s, &end, 10);
    if (major > 1000000)
        return -1;
    if (*end == '.') {
        const char *m = end + 1;
        if (*m < '0' || *m > '9')
            return -1;
        strtol(m, &end, 10);
    }
    return *end ? -1 : (int)major;
}

static int is_sha256(const char *h)
{
    if (!h || strlen(h) != 64)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f') ||
              (h[i] >= 'A' && h[i] <= 'F')))
            return 0;
    return 1;
}

int pool_check_info(const pool_expect *e, const Ddm__V1__InfoReply *ir, char *why,
                    size_t whylen)
{
    const char *v = ir->protocol_version;
    int major = pool_protocol_major(v);
    if (!v || !*v)
        return ddm_errf(why, whylen, DDM_EPROTO,
                        "does not say its protocol_version: this router speaks worker protocol "
                        "%d.x (docs/protocol.md); upgrade the worker", POOL_PROTOCOL_MAJOR);
    if (major != POOL_PROTOCOL_MAJOR)
        return ddm_errf(why, whylen, DDM_EPROTO,
                        "speaks worker protocol \"%.20s\", this router speaks %d.x: run a worker "
                        "for protocol %d (or a router for its version)", v, POOL_PROTOCOL_MAJOR,
                        POOL_PROTOCOL_MAJOR);
    if (!ir->has_expert_id || ir->expert_id != e->expert_id)
        return ddm_errf(why, whylen, DDM_EMISMATCH,
                        "serves expert %d, but the cluster file lists it as expert %d",
                        ir->has_expert_id ? ir->expert_id : -1, e->expert_id);
    if ((int)ir->dim != e->dim)
        return ddm_errf(why, whylen, DDM_EMISMATCH,
                        "serves dim %u, the router's model has dim %d", ir->dim, e->dim);
    if (ir->num_experts && (int)ir->num_experts != e->n_experts)
        return ddm_errf(why, whylen, DDM_EMISMATCH,
                        "comes from a set of %u experts, the router routes over %d",
                        ir->num_experts, e->n_experts);
    if ((int)ir->num_classes != e->n_classes)
        return ddm_errf(why, whylen, DDM_EMISMATCH, "has %u classes, the router's model has %d",
                        ir->num_classes, e->n_classes);
    if (ir->has_height || ir->has_width || ir->has_channels) {
        if ((int)ir->height != e->height || (int)ir->width != e->width ||
            (int)ir->channels != e->channels)
            return ddm_errf(why, whylen, DDM_EMISMATCH,
                            "serves %ux%ux%u images, the router's model %dx%dx%d (height x "
                            "width x channels)", ir->height, ir->width, ir->channels, e->height,
                            e->width, e->channels);
    } else if (e->height != 28 || e->width != 28 || e->channels != 1) {
        return ddm_errf(why, whylen, DDM_EMISMATCH,
                        "does not say its image shape (so 28x28x1), the router's model has "
                        "%dx%dx%d: upgrade the worker", e->height, e->width, e->channels);
    }
    if (ir->n_class_names > 0) {
        int same = (int)ir->n_class_names == e->n_class_names;
        for (int i = 0; same && i < e->n_class_names; i++)
            same = ir->class_names[i] && !strcmp(ir->class_names[i], e->class_names[i]);
        if (!same)
            return ddm_errf(why, whylen, DDM_EMISMATCH,
                            "names its %zu classes differently from the router's model (%d "
                            "names): were they trained on the same dataset?",
                            ir->n_class_names, e->n_class_names);
    }
    const char *h = ir->weights_sha256;
    if (!is_sha256(h))
        return ddm_errf(why, whylen, DDM_EPROTO,
                        "declares weights_sha256 \"%.70s\", not a sha256 (64 hex digits)",
                        h ? h : "");
    if (e->pin && *e->pin && strcasecmp(h, e->pin))
        return ddm_errf(why, whylen, DDM_EMISMATCH,
                        "declares weights sha256 %s, but the cluster file pins %s: start it "
                        "on the pinned weights file, or fix the pin", h, e->pin);
    if ((!e->pin || !*e->pin) && e->trusted && *e->trusted && strcasecmp(h, e->trusted))
        return ddm_errf(why, whylen, DDM_EMISMATCH,
                        "declares weights sha256 %s, but this expert's replicas declared %s "
                        "first (trusted on first use): pin the right hash with sha256= in the "
                        "cluster file", h, e->trusted);
    if (!ir->has_max_batch || ir->max_batch < 1)
        return ddm_errf(why, whylen, DDM_EPROTO,
                        "says max_batch %u: a worker must take at least one latent per request",
                        ir->max_batch);
    return 0;
}

/* 1 if the n little-endian floats at v (4-byte aligned: protobuf-c's copy of
 * the bytes field) are all finite, i.e. no exponent field has every bit set.
 * Adding one to the exponent field carries into the sign bit only when it is
 * all ones: and, add and or, which the compiler vectorises. */
static int all_finite(const uint32_t *v, size_t n)
{
    uint32_t lanes[8] = { 0 }; /* eight at a time: vectorised at -O2 too */
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lanes[j] |= (v[i + j] & 0x7f800000u) + 0x00800000u;
    uint32_t carry = 0;
    for (int j = 0; j < 8; j++)
        carry |= lanes[j];
    for (; i < n; i++)
        carry |= (v[i] & 0x7f800000u) + 0x00800000u;
    return !(carry & 0x80000000u);
}

int pool_check_reply(const Ddm__V1__WorkerReply *wr, size_t len, uint32_t id, int rows,
                     size_t dim, char *why, size_t whylen)
{
    const Ddm__V1__DenoiseReply *dr =
        wr && wr->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE ? wr->denoise : NULL;
    size_t want = (size_t)rows * dim * sizeof(float);
    if (!wr) {
        snprintf(why, whylen, "undecodable reply (%zu bytes)", len);
        return POOL_REPLY_BAD;
    }
    if (!dr) {
        if (wr->kind_case == DDM__V1__WORKER_REPLY__KIND_ERROR && wr->error) {
            /* the worker could not decode our request: its fault or ours, not garbage */
            snprintf(why, whylen, "worker error: %.200s",
                     wr->error->message ? wr->error->message : "(no message)");
            return POOL_REPLY_WORKER_ERROR;
        }
        snprintf(why, whylen, "answered a denoise request with another kind of reply");
        return POOL_REPLY_BAD;
    }
    if (!dr->has_id || dr->id != id) {
        snprintf(why, whylen, "reply names request %llu, not %u", (unsigned long long)dr->id, id);
        return POOL_REPLY_BAD;
    }
    if (dr->error) {
        snprintf(why, whylen, "worker error: %.200s",
                 dr->error->message ? dr->error->message : "(no message)");
        return POOL_REPLY_WORKER_ERROR;
    }
    if (!dr->has_v || dr->v.len != want) {
        snprintf(why, whylen, "reply holds %zu bytes of velocities, expected %zu (%d rows of "
                 "dim %zu)", dr->has_v ? dr->v.len : 0, want, rows, dim);
        return POOL_REPLY_BAD;
    }
    if (!all_finite((const uint32_t *)(const void *)dr->v.data, want / 4)) {
        snprintf(why, whylen, "reply values not finite (NaN or inf) for %d rows", rows);
        return POOL_REPLY_BAD;
    }
    return 0;
}
