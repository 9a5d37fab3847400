/* conform_int.h -- inside ddm-client conform: the state of a run, the report
 * of one check, and the helpers its three files share (conform.c: the
 * handshake, bad input and the run; conform_checks.c: checks on valid
 * requests; conform_msg.c: requests, replies, reports). Not a public API. */
#ifndef DDM_CLIENT_CONFORM_INT_H
#define DDM_CLIENT_CONFORM_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/hmac.h"
#include "common/model.h"
#include "ddm/v1/worker.pb-c.h"
#include "tools/client/conform.h"
#include "tools/client/wreq.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "latents travel as little-endian fp32; this host would need byte swapping"
#endif

#define CONFORM_SEED 0x64646d31u           /* "ddm1": inputs are the same in every run */
#define CONFORM_MAX_BYTES ((size_t)256 << 20) /* largest request built (batch-over-max) */
#define CONFORM_ROUTER_ROWS 256            /* most latents the router sends in one message */
#define CONFORM_BATCH_ROWS 64              /* the batch of batch-invariance and reference */
#define CONFORM_TEXT 700                   /* bytes of one report line */

/* One run of the suite. */
typedef struct suite {
    const conform_opts *o;
    wreq *c;                  /* the main socket */
    model *ref;                  /* --weights, or NULL */
    int has_key;                 /* --cluster-key-file given */
    hmac_key key;
    /* from the handshake */
    int info_ok;                 /* dim, max_batch and num_classes are usable */
    int dim, max_batch, n_classes, expert_id;
    char sha256[80];
    int dead;                    /* stopped answering: later checks are skipped */
    char dead_why[200];
    uint64_t next_stream;        /* Philox stream of the next rows */
    uint64_t next_id;            /* DenoiseRequest.id of the next request */
    conform_result res;
    char failed[CONFORM_TEXT];   /* names of the failed checks */
} suite;

/* One check's report: what was sent, what came back, why it failed. */
typedef struct check {
    const char *name;
    char sent[CONFORM_TEXT], got[CONFORM_TEXT], why[CONFORM_TEXT];
    int failed;
    int skipped;                 /* not applicable to this worker (why says so) */
} check;

/* Set the sent / got line (replacing it). */
void chk_sent(check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void chk_got(check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records a failure (appended to earlier ones with "; "); returns -1. */
int chk_fail(check *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Random latents of the worker's dim. */
typedef struct rows {
    int n, dim;
    float *x;           /* [n][dim] standard normal */
    float *t;           /* [n] in (0, 1) */
    int32_t *labels;    /* [n] in -1..n_classes-1 */
} rows;

/* n fresh latents of s->dim from the next Philox stream. Returns 0 or
 * DDM_ENOMEM (r is then empty). rows_free releases them (and zeroes r). */
int rows_make(suite *s, rows *r, int n);
void rows_free(rows *r);

/* A DenoiseRequest as sent: every field may be absent or inconsistent. It
 * points into rows it does not own. */
typedef struct dreq {
    uint64_t id;
    int has_dim, has_batch, has_t;
    uint32_t dim, batch;
    float t;
    const float *x;
    size_t x_bytes;
    const float *ts;
    size_t n_ts;
    const int32_t *labels;
    size_t n_labels;
} dreq;

/* The request the router sends for r (a fresh id, per-latent ts, labels
 * when the worker has classes). */
void dreq_rows(suite *s, dreq *d, const rows *r);
/* d as a protobuf-c message pointing into d's arrays. */
void dreq_proto(const dreq *d, Ddm__V1__DenoiseRequest *r);
/* d packed as a WorkerRequest into a new buffer (free()); NULL if out of memory. */
uint8_t *dreq_pack(const dreq *d, size_t *len);
/* "DenoiseRequest id=.. dim=.. batch=.. x=N bytes t=.. ts=[..] labels=[..]" */
void dreq_describe(const dreq *d, char *buf, size_t len);
/* "N bytes: 0f ff ..." (the first 16 bytes). */
void hex_preview(char *buf, size_t len, const uint8_t *b, size_t n);

/* A reply as received. */
typedef struct reply {
    int rc;                      /* 0, DDM_ETIMEDOUT, ... */
    int mac;                     /* wreq_reply_mac: 0, DDM_EPROTO, DDM_EMISMATCH, unchecked */
    size_t len;
    Ddm__V1__WorkerReply *wr;    /* NULL when rc != 0 or the bytes do not decode */
} reply;

/* Fills r from a wreq receive on c (rc, and on success the nanomsg body of
 * len bytes, which it decodes and releases, and c's MAC verdict on it). */
void reply_take(reply *r, const wreq *c, int rc, void *body, size_t len);
void reply_free(reply *r);
/* One round trip of buf on c within s's deadline. */
void call_bytes(const suite *s, wreq *c, const void *buf, size_t len, reply *r);
/* One line saying what came back ("no reply within N ms", "DenoiseReply id=3 v=...", ...;
 * with a key, a missing or wrong reply MAC is said first). */
void reply_describe(const suite *s, const reply *r, char *buf, size_t len);
/* "code -1004 (value out of range), "message"" */
void err_describe(const Ddm__V1__Error *e, char *buf, size_t len);

/* With a key: fails k unless r (a reply to a signed request) carries a valid
 * reply MAC. 0 or -1. */
int reply_mac_ok(const suite *s, check *k, const reply *r);
/* Checks that r answers d: a DenoiseReply with d's id, no error, and v of
 * batch x dim x 4 bytes of finite floats, copied into out when not NULL.
 * Returns 0, or -1 with the failure in k. Reads s only (threads share it). */
int answer_ok(const suite *s, check *k, const reply *r, const dreq *d, float *out);
/* Sends d on s's socket, describes the reply in k->got, checks it with
 * answer_ok. 0 or -1. */
int ask(suite *s, check *k, const dreq *d, float *out);
/* Fails k unless got and want ([n][dim]) agree within CONFORM_TOL; raises
 * *worst (when not NULL) to the largest |a - b| / (1 + |b|) seen. 0 or -1. */
int agree(check *k, const char *what, const float *got, const float *want, int n, int dim,
          double *worst);

/* The checks of conform_checks.c. */
void run_answers(suite *s, check *k);
void run_packed(suite *s, check *k);
void run_unknown(suite *s, check *k);
void run_invariance(suite *s, check *k);
void run_determinism(suite *s, check *k);
void run_concurrency(suite *s, check *k);
void run_weights(suite *s, check *k);
void run_reference(suite *s, check *k);

#endif
