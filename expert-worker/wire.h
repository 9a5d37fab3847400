/* wire.h -- the worker's side of proto/ddm/v1/worker.proto: decoding into a
 * reusable arena, validating DenoiseRequests, packing replies into nanomsg
 * message buffers.
 *
 * protobuf-c allocates while unpacking (the message, the copy of x, repeated
 * arrays, its own scratch). A wire_arena gives it a bump allocator that is
 * reset per request and grows to the largest request seen, so a worker in
 * steady state does not call malloc per request. */
#ifndef DDM_EXPERT_WIRE_H
#define DDM_EXPERT_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "ddm/v1/worker.pb-c.h"

/* InfoReply.protocol_version: the version of docs/protocol.md this worker
 * speaks ("MAJOR.MINOR"; a router refuses an unknown major). */
#define WIRE_PROTOCOL_VERSION "1.0"

typedef struct wire_big wire_big;

typedef struct wire_arena {
    ProtobufCAllocator pa;  /* handed to protobuf-c; allocator_data = the arena */
    uint8_t *buf;           /* bump region */
    size_t cap, used;
    wire_big *big;          /* allocations that did not fit, freed at reset */
    size_t big_bytes;
} wire_arena;

void wire_arena_init(wire_arena *a);
/* Forgets every allocation. If the last use overflowed into malloc, the bump
 * region grows to hold it next time, up to max_keep bytes. */
void wire_arena_reset(wire_arena *a, size_t max_keep);
void wire_arena_free(wire_arena *a);

/* Decodes one WorkerRequest from buf[0..len) into a (which must be reset
 * first). Returns 0 and *out (valid until the arena is reset), or
 * DDM_EFORMAT with a message in err. buf is not referenced afterwards. */
int wire_decode(wire_arena *a, const void *buf, size_t len, Ddm__V1__WorkerRequest **out,
                char *err, size_t errlen);

/* What a worker accepts. */
typedef struct wire_limits {
    int dim;         /* latent size D */
    int max_batch;   /* latents per request and per forward pass */
    int n_classes;   /* labels 0..n_classes-1 (and -1 = null) */
} wire_limits;

/* Checks a DenoiseRequest against lim: dim, batch 1..max_batch, x exactly
 * dim x batch x 4 bytes of finite floats, labels empty or one per latent in
 * -1..n_classes-1, ts empty or one per latent in [0, 1], else t present and
 * in [0, 1]. Returns 0, or with a one-line message in err saying what to
 * fix: DDM_EINVAL (dim, batch or t missing), DDM_ERANGE (a value out of its
 * range) or DDM_EMISMATCH (sizes that disagree), as docs/protocol.md lists. */
int wire_check_denoise(const Ddm__V1__DenoiseRequest *r, const wire_limits *lim, char *err,
                       size_t errlen);

/* Maximum encoded size of a valid WorkerRequest for lim (x, the worst-case
 * per-latent label and time fields, the scalars), for NN_RCVMAXSIZE. */
size_t wire_max_request_bytes(const wire_limits *lim);

/* Packs r into a new nanomsg NN_MSG buffer (nn_allocmsg) of exactly its
 * size. Returns it (owned by the caller) and its length in *len, or NULL if
 * out of memory. */
void *wire_pack_reply(const Ddm__V1__WorkerReply *r, size_t *len);

/* Copies n little-endian fp32 values from src to dst (a memcpy on
 * little-endian hosts); src need not be aligned. */
void wire_le_to_f32(float *dst, const void *src, size_t n);
/* In place: host floats to little-endian order (no-op on little-endian). */
void wire_f32_to_le(float *v, size_t n);

#endif
