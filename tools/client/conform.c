/* conform.c -- the checks of ddm-client conform (see conform.h; each check
 * tests one rule of docs/protocol.md).
 *
 * Requests are built with protobuf-c, sent on a wreq (a raw REQ socket, as
 * the router uses) and waited for with the --timeout-ms deadline. A request
 * that breaks a rule is a mutated copy of a good two-latent request; after
 * each one a good request must still be answered, else the worker is taken
 * as stopped and the remaining checks are skipped. Inputs come from Philox
 * under a fixed seed, so every run sends the same bytes. */
#include "tools/client/conform.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/model.h"
#include "common/rng.h"
#include "tools/client/conform_int.h"

/* ---- report ---------------------------------------------------------------------------- */

static void print_check(suite *s, const check *k, const char *verdict, const char *rule)
{
    FILE *f = s->o->out;
    fprintf(f, "%s %s: %s\n", verdict, k->name, rule);
    if (k->sent[0])
        fprintf(f, "     sent: %s\n", k->sent);
    if (k->got[0])
        fprintf(f, "     got:  %s\n", k->got);
    if (k->why[0])
        fprintf(f, "     why:  %s\n", k->why);
    fflush(f);
}

/* ---- the handshake ------------------------------------------------------------------- */

static int is_lower_hex64(const char *h)
{
    if (!h || strlen(h) != 64)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return 0;
    return 1;
}

/* protocol_version "MAJOR.MINOR" with decimal parts; 1 when major is 1. */
static int version_ok(const char *v, char *why, size_t len)
{
    if (!v) {
        snprintf(why, len, "protocol_version is absent: set it to \"1.0\"");
        return 0;
    }
    unsigned major, minor;
    int n = 0;
    if (sscanf(v, "%u.%u%n", &major, &minor, &n) != 2 || v[n] || v[0] < '0' || v[0] > '9') {
        snprintf(why, len, "protocol_version \"%s\" is not \"MAJOR.MINOR\": set \"1.0\"", v);
        return 0;
    }
    if (major != 1) {
        snprintf(why, len, "protocol_version \"%s\" has major %u; the router speaks 1", v, major);
        return 0;
    }
    return 1;
}

static void info_fields(check *k, const Ddm__V1__InfoReply *i)
{
    char shape[64] = "no shape", why[200];
    if (i->has_height || i->has_width || i->has_channels)
        snprintf(shape, sizeof shape, "%ux%ux%u", i->height, i->width, i->channels);
    chk_got(k, "InfoReply protocol_version=%s expert_id=%d num_experts=%u dim=%u (%s) "
            "num_classes=%u%s max_batch=%u weights_sha256=%.16s... architecture=\"%s\" "
            "dataset=\"%s\"", i->protocol_version ? i->protocol_version : "(absent)",
            i->expert_id, i->num_experts, i->dim, shape, i->num_classes,
            i->n_class_names ? " (named)" : "", i->max_batch,
            i->weights_sha256 ? i->weights_sha256 : "(absent)",
            i->architecture ? i->architecture : "", i->dataset ? i->dataset : "");
    if (!version_ok(i->protocol_version, why, sizeof why))
        chk_fail(k, "%s", why);
    if (!i->has_expert_id || i->expert_id < -1)
        chk_fail(k, "expert_id must be present and >= -1 (-1 = a monolith)");
    if (!i->has_dim || i->dim < 1)
        chk_fail(k, "dim must be present and >= 1");
    if (!i->has_max_batch || i->max_batch < 1)
        chk_fail(k, "max_batch must be present and >= 1");
    if (!i->has_num_classes)
        chk_fail(k, "num_classes must be present (0 = unconditional)");
    if (i->num_experts && i->expert_id >= (int32_t)i->num_experts)
        chk_fail(k, "expert_id %d is not below num_experts %u", i->expert_id, i->num_experts);
    if (i->has_height || i->has_width || i->has_channels) {
        if (!i->has_height || !i->has_width || !i->has_channels)
            chk_fail(k, "height, width and channels go together: send all three or none");
        else if (i->channels != 1 && i->channels != 3)
            chk_fail(k, "channels %u: must be 1 (grey) or 3 (RGB)", i->channels);
        else if ((uint64_t)i->height * i->width * i->channels != i->dim)
            chk_fail(k, "height x width x channels = %u x %u x %u is not dim %u", i->height,
                     i->width, i->channels, i->dim);
    } else if (i->dim != 784) {
        chk_fail(k, "no height/width/channels: the router then assumes 28x28x1 (dim 784), but "
                 "dim is %u; send the shape", i->dim);
    }
    if (i->n_class_names && i->n_class_names != i->num_classes)
        chk_fail(k, "%zu class_names for num_classes %u: send one per class or none",
                 i->n_class_names, i->num_classes);
    for (size_t c = 0; c < i->n_class_names; c++)
        if (!i->class_names[c][0]) {
            chk_fail(k, "class_names[%zu] is empty", c);
            break;
        }
    if (!is_lower_hex64(i->weights_sha256))
        chk_fail(k, "weights_sha256 must be the 64 lowercase hex digits of the weights file's "
                 "sha256");
}

/* 1 if r is a WorkerReply.error saying the request's MAC was missing or wrong. */
static int auth_refusal(const reply *r)
{
    const Ddm__V1__WorkerReply *w = r->wr;
    return w && w->kind_case == DDM__V1__WORKER_REPLY__KIND_ERROR && w->error &&
           w->error->has_code && (w->error->code == DDM_EPROTO ||
                                  w->error->code == DDM_EMISMATCH) &&
           w->error->message && strstr(w->error->message, "MAC");
}

static void run_handshake(suite *s, check *k)
{
    uint8_t challenge[16];
    uint64_t st = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
    for (int i = 0; i < 16; i += 8) {
        uint64_t v = rng_splitmix64(&st);
        memcpy(challenge + i, &v, 8);
    }
    Ddm__V1__InfoRequest ir = DDM__V1__INFO_REQUEST__INIT;
    ir.has_id = 1;
    ir.id = 0x1d1d;
    ir.has_challenge = 1;
    ir.challenge.data = challenge;
    ir.challenge.len = sizeof challenge;
    Ddm__V1__WorkerRequest w = DDM__V1__WORKER_REQUEST__INIT;
    w.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
    w.info = &ir;
    uint8_t buf[64];
    size_t len = ddm__v1__worker_request__pack(&w, buf);
    chk_sent(k, "InfoRequest id=%llu challenge=16 random bytes (%zu bytes%s)",
             (unsigned long long)ir.id, len, s->has_key ? " and the MAC trailer" : "");
    reply r;
    call_bytes(s, s->c, buf, len, &r);
    reply_describe(s, &r, k->got, sizeof k->got);
    const Ddm__V1__InfoReply *i =
        r.wr && r.wr->kind_case == DDM__V1__WORKER_REPLY__KIND_INFO ? r.wr->info : NULL;
    /* without a usable (and, with a key, authenticated) InfoReply the rest is skipped */
    if (r.rc == DDM_ETIMEDOUT)
        chk_fail(k, "nothing answered at %s: is the worker running and listening there?",
                 s->o->url);
    else if (auth_refusal(&r))
        chk_fail(k, s->has_key ? "the worker refused our MAC: conform's --cluster-key-file is "
                                 "not the key the worker was started with"
                               : "the worker wants a MAC: it runs with a cluster key; give "
                                 "conform the same --cluster-key-file");
    else
        reply_mac_ok(s, k, &r);
    if (k->failed || !i) {
        if (!i)
            chk_fail(k, "an InfoRequest must get a WorkerReply with info set");
        reply_free(&r);
        return;
    }
    info_fields(k, i);
    if (i->error) {
        char e[300];
        err_describe(i->error, e, sizeof e);
        chk_fail(k, "InfoReply.error is set (%s): the worker says it cannot serve", e);
    }
    if (!i->has_id || i->id != ir.id)
        chk_fail(k, "InfoReply.id must echo the request's id %llu", (unsigned long long)ir.id);
    if (i->has_dim && i->dim >= 1 && i->dim <= (1u << 24) && i->has_max_batch &&
        i->max_batch >= 1 && i->has_num_classes && i->num_classes < (1u << 20)) {
        s->info_ok = 1;
        s->dim = (int)i->dim;
        s->max_batch = i->max_batch > (1u << 30) ? 1 << 30 : (int)i->max_batch;
        s->n_classes = (int)i->num_classes;
        s->expert_id = i->expert_id;
        snprintf(s->sha256, sizeof s->sha256, "%s", i->weights_sha256 ? i->weights_sha256 : "");
    }
    reply_free(&r);
}

/* ---- bad input ----------------------------------------------------------------------- */

/* A good request of one latent must still be answered (any DenoiseReply with
 * v counts: its content is judged by other checks). Marks s dead if not. */
/* A good request for one fresh latent (in r, d), packed into a new buffer
 * (free()) with room for extra bytes after its len; NULL when out of memory
 * (r is then empty). */
static uint8_t *one_latent(suite *s, rows *r, dreq *d, size_t extra, size_t *len)
{
    if (rows_make(s, r, 1))
        return NULL;
    dreq_rows(s, d, r);
    uint8_t *buf = dreq_pack(d, len), *b = buf ? realloc(buf, *len + extra) : NULL;
    if (!b) {
        free(buf);
        rows_free(r);
    }
    return b;
}

static void still_serving(suite *s, check *k)
{
    rows r;
    dreq d;
    size_t len;
    uint8_t *buf = one_latent(s, &r, &d, 0, &len);
    if (!buf) {
        chk_fail(k, "out of memory");
        return;
    }
    reply rp = { .rc = DDM_ENOMEM };
    call_bytes(s, s->c, buf, len, &rp);
    free(buf);
    rows_free(&r);
    int ok = rp.wr && rp.wr->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE &&
             !rp.wr->denoise->error && rp.wr->denoise->has_v;
    if (ok) {
        reply_mac_ok(s, k, &rp); /* answered; a bad MAC fails k, but the worker serves */
    } else {
        char got[300];
        reply_describe(s, &rp, got, sizeof got);
        chk_fail(k, "then a good request got %s: a worker must keep serving after bad input",
                 got);
        s->dead = 1;
        snprintf(s->dead_why, sizeof s->dead_why, "the worker stopped answering after %s",
                 k->name);
    }
    reply_free(&rp);
}

static int err_ok(check *k, const Ddm__V1__Error *e)
{
    if (!e->has_code || e->code >= 0)
        return chk_fail(k, "Error.code must be a negative common/err.h code");
    if (!e->message || !e->message[0])
        return chk_fail(k, "Error.message must say what is wrong");
    return 0;
}

/* Sends buf and expects a refusal: WorkerReply.error (wrapper), else a
 * DenoiseReply with error set and the id of d echoed, never v. Then checks
 * the worker still serves. */
static void refusal(suite *s, check *k, const void *buf, size_t len, int wrapper, const dreq *d)
{
    reply r;
    call_bytes(s, s->c, buf, len, &r);
    reply_describe(s, &r, k->got, sizeof k->got);
    int kind = r.wr ? (int)r.wr->kind_case : -1;
    reply_mac_ok(s, k, &r);
    if (r.rc == DDM_ETIMEDOUT)
        chk_fail(k, "bad input must get an error reply, not silence");
    else if (!r.wr)
        chk_fail(k, "the reply must be a ddm.v1.WorkerReply");
    else if (wrapper && kind != DDM__V1__WORKER_REPLY__KIND_ERROR)
        chk_fail(k, "a message that is not a usable WorkerRequest gets WorkerReply.error");
    else if (wrapper)
        err_ok(k, r.wr->error);
    else if (kind == DDM__V1__WORKER_REPLY__KIND_DENOISE && !r.wr->denoise->error)
        chk_fail(k, "the worker computed an answer: it must refuse this request with "
                 "DenoiseReply.error and no v");
    else if (kind != DDM__V1__WORKER_REPLY__KIND_DENOISE)
        chk_fail(k, "an invalid DenoiseRequest gets a DenoiseReply with error set");
    else if (r.wr->denoise->has_v)
        chk_fail(k, "an error reply carries no v");
    else if (!r.wr->denoise->has_id || r.wr->denoise->id != d->id)
        chk_fail(k, "the error reply must echo the request's id %llu", (unsigned long long)d->id);
    else
        err_ok(k, r.wr->denoise->error);
    reply_free(&r);
    still_serving(s, k);
}

/* What a bad-request check changes in the good two-latent request. */
typedef enum mutation {
    M_X_SHORT, M_X_ROWS, M_DIM_WRONG, M_DIM_MISSING, M_BATCH_ZERO, M_BATCH_MISSING,
    M_BATCH_OVER, M_X_NAN, M_X_INF, M_T_ABOVE, M_T_BELOW, M_T_NAN, M_T_MISSING, M_TS_RANGE,
    M_TS_COUNT, M_LABEL_BIG, M_LABEL_LOW, M_LABELS_COUNT
} mutation;

static void run_mutation(suite *s, check *k, mutation m)
{
    int n = m == M_BATCH_OVER ? s->max_batch + 1 : 2;
    int dim = m == M_DIM_WRONG ? s->dim + 1 : s->dim;
    if ((size_t)n * (size_t)dim * 4 > CONFORM_MAX_BYTES) {
        k->skipped = 1;
        snprintf(k->why, sizeof k->why, "%d latents of dim %d would be over %zu MiB", n, dim,
                 CONFORM_MAX_BYTES >> 20);
        return;
    }
    rows r;
    int saved_dim = s->dim;
    s->dim = dim;
    int rc = rows_make(s, &r, n);
    s->dim = saved_dim;
    if (rc) {
        chk_fail(k, "out of memory");
        return;
    }
    dreq d;
    dreq_rows(s, &d, &r);
    float ts[2] = { 0.25f, 0.5f };
    int32_t labels[2] = { -1, -1 };
    char note[120] = "";
    int e = s->dim > 3 ? 3 : s->dim - 1;
    switch (m) {
    case M_X_SHORT: d.x_bytes -= 4; break;
    case M_X_ROWS: d.x_bytes = (size_t)s->dim * 4; break;
    case M_DIM_WRONG: snprintf(note, sizeof note, " (the worker's dim is %d)", s->dim); break;
    case M_DIM_MISSING: d.has_dim = 0; break;
    case M_BATCH_ZERO: d.batch = 0; d.x_bytes = 0; d.n_ts = 0; d.n_labels = 0;
        d.has_t = 1; d.t = 0.5f; break;
    case M_BATCH_MISSING: d.has_batch = 0; break;
    case M_BATCH_OVER: snprintf(note, sizeof note, " (max_batch is %d)", s->max_batch); break;
    case M_X_NAN: r.x[(size_t)s->dim + (size_t)e] = NAN;
        snprintf(note, sizeof note, ", x[1][%d] = nan", e); break;
    case M_X_INF: r.x[0] = INFINITY; snprintf(note, sizeof note, ", x[0][0] = inf"); break;
    case M_T_ABOVE: d.n_ts = 0; d.has_t = 1; d.t = 1.5f; break;
    case M_T_BELOW: d.n_ts = 0; d.has_t = 1; d.t = -0.25f; break;
    case M_T_NAN: d.n_ts = 0; d.has_t = 1; d.t = NAN; break;
    case M_T_MISSING: d.n_ts = 0; break;
    case M_TS_RANGE: ts[1] = 2.0f; d.ts = ts; break;
    case M_TS_COUNT: d.n_ts = 1; break;
    case M_LABEL_BIG: labels[1] = s->n_classes; d.labels = labels; d.n_labels = 2;
        snprintf(note, sizeof note, " (num_classes is %d)", s->n_classes); break;
    case M_LABEL_LOW: labels[1] = -2; d.labels = labels; d.n_labels = 2; break;
    case M_LABELS_COUNT: labels[0] = -1; d.labels = labels; d.n_labels = 1; break;
    }
    size_t len;
    uint8_t *buf = dreq_pack(&d, &len);
    if (!buf) {
        rows_free(&r);
        chk_fail(k, "out of memory");
        return;
    }
    dreq_describe(&d, k->sent, sizeof k->sent);
    size_t o = strlen(k->sent);
    snprintf(k->sent + o, sizeof k->sent - o, "%s", note);
    refusal(s, k, buf, len, 0, &d);
    free(buf);
    rows_free(&r);
}

static const uint8_t GARBAGE[] = {
    0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    'n', 'o', 't', ' ', 'a', ' ', 'p', 'r', 'o', 't', 'o', 'b', 'u', 'f',
};

static void run_garbage(suite *s, check *k)
{
    hex_preview(k->sent, sizeof k->sent, GARBAGE, sizeof GARBAGE);
    refusal(s, k, GARBAGE, sizeof GARBAGE, 1, NULL);
}

static void run_empty(suite *s, check *k)
{
    chk_sent(k, "0 bytes (a WorkerRequest with neither denoise nor info)");
    refusal(s, k, "", 0, 1, NULL);
}

static void run_truncated(suite *s, check *k)
{
    rows r;
    if (rows_make(s, &r, 2)) {
        chk_fail(k, "out of memory");
        return;
    }
    dreq d;
    dreq_rows(s, &d, &r);
    size_t len;
    uint8_t *buf = dreq_pack(&d, &len);
    if (buf) {
        char desc[CONFORM_TEXT - 80];
        dreq_describe(&d, desc, sizeof desc);
        chk_sent(k, "the first %zu of the %zu bytes of %s", len / 2, len, desc);
        refusal(s, k, buf, len / 2, 1, &d);
    } else {
        chk_fail(k, "out of memory");
    }
    free(buf);
    rows_free(&r);
}

/* ---- authentication (with --cluster-key-file) ------------------------------------------- */

/* A valid one-latent request sent without a MAC trailer, or with one whose
 * MAC is wrong: the worker must refuse it with WorkerReply.error of code
 * want (its reply need not be authenticated: there is no request MAC to
 * chain it to) and compute nothing, then still answer a signed request. */
static void run_auth(suite *s, check *k, int wrong)
{
    rows r;
    dreq d;
    size_t len;
    uint8_t *msg = one_latent(s, &r, &d, HMAC_TRAILER_SIZE, &len);
    if (!msg) {
        chk_fail(k, "out of memory");
        return;
    }
    char desc[CONFORM_TEXT - 120];
    dreq_describe(&d, desc, sizeof desc);
    size_t n = len;
    if (wrong) {
        hmac_trailer_req(&s->key, msg, len, msg + len);
        msg[len + 2 + HMAC_SIZE - 1] ^= 0x01; /* the last bit of the MAC flipped */
        n += HMAC_TRAILER_SIZE;
        chk_sent(k, "%s, with a MAC trailer whose last bit is flipped", desc);
    } else {
        chk_sent(k, "%s, without a MAC trailer", desc);
    }
    int want = wrong ? DDM_EMISMATCH : DDM_EPROTO;
    reply rp = { .rc = DDM_ENOMEM };
    void *body = NULL;
    size_t blen = 0;
    uint32_t id;
    int rc = wreq_send_raw(s->c, msg, n, s->o->timeout_ms, &id);
    if (rc == 0)
        rc = wreq_recv_id(s->c, id, s->o->timeout_ms, &body, &blen);
    reply_take(&rp, s->c, rc, body, blen);
    reply_describe(s, &rp, k->got, sizeof k->got);
    const Ddm__V1__WorkerReply *w = rp.wr;
    if (rp.rc == DDM_ETIMEDOUT)
        chk_fail(k, "a request with a %s MAC must get an error reply, not silence",
                 wrong ? "wrong" : "missing");
    else if (!w)
        chk_fail(k, "the reply must be a ddm.v1.WorkerReply");
    else if (w->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE && w->denoise->has_v)
        chk_fail(k, "the worker computed an answer: a request with a %s MAC must be refused "
                 "before any work", wrong ? "wrong" : "missing");
    else if (w->kind_case != DDM__V1__WORKER_REPLY__KIND_ERROR)
        chk_fail(k, "a request with a %s MAC gets WorkerReply.error", wrong ? "wrong" : "missing");
    else if (!w->error->has_code || w->error->code != want)
        chk_fail(k, "Error.code must be %d (%s) for a %s MAC", want, ddm_strerror(want),
                 wrong ? "wrong" : "missing");
    else
        err_ok(k, w->error);
    reply_free(&rp);
    free(msg);
    rows_free(&r);
    still_serving(s, k);
}

static void run_mac_missing(suite *s, check *k) { run_auth(s, k, 0); }
static void run_mac_wrong(suite *s, check *k) { run_auth(s, k, 1); }

/* ---- the suite ------------------------------------------------------------------------- */

typedef struct check_def {
    const char *name;
    const char *rule;
    void (*run)(suite *s, check *k);
    mutation m;             /* for run == NULL: a bad DenoiseRequest */
    int needs;              /* NEEDS_WEIGHTS, NEEDS_KEY or 0 */
} check_def;

enum { NEEDS_WEIGHTS = 1, NEEDS_KEY = 2 };

static const check_def CHECKS[] = {
    { "handshake", "an InfoRequest gets an InfoReply with protocol_version 1.x, expert_id >= -1, "
      "dim >= 1, max_batch >= 1, num_classes, a shape that makes dim, weights_sha256 of 64 hex "
      "digits, the id echoed", run_handshake, 0, 0 },
    { "garbage", "bytes that are not a WorkerRequest get WorkerReply.error", run_garbage, 0, 0 },
    { "empty", "a WorkerRequest with neither denoise nor info gets WorkerReply.error",
      run_empty, 0, 0 },
    { "truncated", "a WorkerRequest cut short gets WorkerReply.error", run_truncated, 0, 0 },
    { "mac-missing", "with a cluster key, a request without a MAC gets WorkerReply.error code "
      "-1011 (DDM_EPROTO) and no computation", run_mac_missing, 0, NEEDS_KEY },
    { "mac-wrong", "with a cluster key, a request with a wrong MAC gets WorkerReply.error code "
      "-1005 (DDM_EMISMATCH) and no computation", run_mac_wrong, 0, NEEDS_KEY },
    { "x-short", "x shorter than batch x dim x 4 bytes gets DenoiseReply.error", NULL,
      M_X_SHORT, 0 },
    { "x-rows", "batch 2 with one latent of x gets DenoiseReply.error", NULL, M_X_ROWS, 0 },
    { "dim-wrong", "a dim other than the worker's gets DenoiseReply.error", NULL, M_DIM_WRONG, 0 },
    { "dim-missing", "a request without dim gets DenoiseReply.error", NULL, M_DIM_MISSING, 0 },
    { "batch-zero", "batch 0 gets DenoiseReply.error", NULL, M_BATCH_ZERO, 0 },
    { "batch-missing", "a request without batch gets DenoiseReply.error", NULL,
      M_BATCH_MISSING, 0 },
    { "batch-over-max", "max_batch + 1 latents get DenoiseReply.error", NULL, M_BATCH_OVER, 0 },
    { "x-nan", "a NaN in x gets DenoiseReply.error", NULL, M_X_NAN, 0 },
    { "x-inf", "an infinity in x gets DenoiseReply.error", NULL, M_X_INF, 0 },
    { "t-above-1", "t = 1.5 gets DenoiseReply.error", NULL, M_T_ABOVE, 0 },
    { "t-below-0", "t = -0.25 gets DenoiseReply.error", NULL, M_T_BELOW, 0 },
    { "t-nan", "t = NaN gets DenoiseReply.error", NULL, M_T_NAN, 0 },
    { "t-missing", "neither t nor ts gets DenoiseReply.error", NULL, M_T_MISSING, 0 },
    { "ts-range", "a per-latent time ts[1] = 2 gets DenoiseReply.error", NULL, M_TS_RANGE, 0 },
    { "ts-count", "ts with fewer entries than batch gets DenoiseReply.error", NULL,
      M_TS_COUNT, 0 },
    { "label-too-big", "label num_classes gets DenoiseReply.error", NULL, M_LABEL_BIG, 0 },
    { "label-below-null", "label -2 gets DenoiseReply.error", NULL, M_LABEL_LOW, 0 },
    { "labels-count", "labels with fewer entries than batch get DenoiseReply.error", NULL,
      M_LABELS_COUNT, 0 },
    { "answers", "valid requests get v of batch x dim x 4 bytes, all finite, the id echoed "
      "(t = 0, t = 1, shared t and ts, labels and none, 1 latent to a full batch)",
      run_answers, 0, 0 },
    { "packed", "labels and ts sent packed are read as sent unpacked", run_packed, 0, 0 },
    { "unknown-fields", "fields this version does not define are ignored", run_unknown, 0, 0 },
    { "batch-invariance", "rows alone and inside a batch of min(64, max_batch) agree within "
      "1e-4", run_invariance, 0, 0 },
    { "determinism", "the same request twice gives the same bytes", run_determinism, 0, 0 },
    { "concurrency", "8 clients at once, each with 4 requests in flight, all answered "
      "correctly", run_concurrency, 0, 0 },
    { "weights", "the handshake names the --weights file: dim, expert_id, num_classes, sha256",
      run_weights, 0, NEEDS_WEIGHTS },
    { "reference", "answers equal the reference forward of the --weights file within 1e-4 "
      "(several t, labels and batch sizes)", run_reference, 0, NEEDS_WEIGHTS },
};

static void skip(suite *s, const check_def *c, const char *why);

static void finish(suite *s, check *k, const check_def *c)
{
    if (k->skipped && !k->failed) {
        skip(s, c, k->why);
    } else if (k->failed) {
        s->res.failed++;
        size_t o = strlen(s->failed);
        if (o + strlen(c->name) + 3 < sizeof s->failed)
            snprintf(s->failed + o, sizeof s->failed - o, "%s%s", o ? ", " : "", c->name);
        print_check(s, k, "FAIL", c->rule);
    } else {
        s->res.passed++;
        print_check(s, k, "PASS", c->rule);
    }
}

static void skip(suite *s, const check_def *c, const char *why)
{
    s->res.skipped++;
    fprintf(s->o->out, "SKIP %s: %s\n", c->name, why);
}

static int load_weights(suite *s, char *err, size_t errlen)
{
    char e[512];
    s->ref = model_open(s->o->weights, e, sizeof e);
    if (!s->ref)
        return ddm_errf(err, errlen, DDM_EINVAL, "--weights: %s", e);
    if (s->ref->kind != MODEL_DENOISER) {
        snprintf(err, errlen, "--weights %s is a %s, not a denoiser (an expert's weights)",
                 s->o->weights, model_kind_name(s->ref->kind));
        model_close(s->ref);
        s->ref = NULL;
        return DDM_EINVAL;
    }
    return 0;
}

int conform_run(const conform_opts *o, conform_result *res, char *err, size_t errlen)
{
    suite s = { .o = o, .next_stream = 1, .next_id = 1 };
    memset(res, 0, sizeof *res);
    if (o->weights && load_weights(&s, err, errlen))
        return DDM_EINVAL;
    if (o->cluster_key_file) {
        char e[400];
        int rc = hmac_key_load(o->cluster_key_file, &s.key, e, sizeof e);
        if (rc) {
            model_close(s.ref);
            return ddm_errf(err, errlen, rc, "%s", e);
        }
        s.has_key = 1;
    }
    int rc = wreq_open(o->url, &s.c, err, errlen);
    if (rc) {
        model_close(s.ref);
        return rc;
    }
    if (s.has_key)
        wreq_set_key(s.c, &s.key);
    fprintf(o->out, "conform: worker %s, protocol 1.0, deadline %d ms a reply%s%s%s\n", o->url,
            o->timeout_ms, o->weights ? ", reference " : "", o->weights ? o->weights : "",
            s.has_key ? ", every message authenticated (cluster key)" : "");
    for (size_t i = 0; i < sizeof CHECKS / sizeof CHECKS[0]; i++) {
        const check_def *c = &CHECKS[i];
        check k = { .name = c->name };
        if (c->needs == NEEDS_WEIGHTS && !s.ref)
            skip(&s, c, "no --weights FILE given");
        else if (c->needs == NEEDS_KEY && !s.has_key)
            skip(&s, c, "no --cluster-key-file given");
        else if (i > 0 && !s.info_ok)
            skip(&s, c, "no usable handshake (the check needs dim, max_batch, num_classes)");
        else if (s.dead)
            skip(&s, c, s.dead_why);
        else {
            if (c->run)
                c->run(&s, &k);
            else
                run_mutation(&s, &k, c->m);
            finish(&s, &k, c);
        }
    }
    if (s.res.failed)
        fprintf(o->out, "conform: %d passed, %d FAILED, %d skipped: %s\n", s.res.passed,
                s.res.failed, s.res.skipped, s.failed);
    else
        fprintf(o->out, "conform: %d passed, 0 failed, %d skipped: %s conforms to worker "
                "protocol v1\n", s.res.passed, s.res.skipped, o->url);
    fflush(o->out);
    *res = s.res;
    wreq_close(s.c);
    model_close(s.ref);
    return 0;
}

