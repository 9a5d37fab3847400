/* conform_msg.c -- what the checks of ddm-client conform share: the report
 * of one check, random latents, DenoiseRequests as sent (any field may be
 * absent or wrong), round trips with the deadline, and the judging of a
 * reply (see conform_int.h). */
#include "tools/client/conform_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <nanomsg/nn.h>

#include "common/err.h"
#include "common/rng.h"

/* ---- report lines -------------------------------------------------------------------- */

static void vput(char *buf, size_t len, int append, const char *fmt, va_list ap)
{
    size_t used = append ? strlen(buf) : 0;
    if (append && used && used + 2 < len) {
        memcpy(buf + used, "; ", 3);
        used += 2;
    }
    if (used < len)
        vsnprintf(buf + used, len - used, fmt, ap);
}

void chk_sent(check *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vput(k->sent, sizeof k->sent, 0, fmt, ap);
    va_end(ap);
}

void chk_got(check *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vput(k->got, sizeof k->got, 0, fmt, ap);
    va_end(ap);
}

/* Records a failure (appended to earlier ones); returns -1. */
int chk_fail(check *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vput(k->why, sizeof k->why, k->failed, fmt, ap);
    va_end(ap);
    k->failed = 1;
    return -1;
}

/* ---- latents and requests ------------------------------------------------------------ */

void rows_free(rows *r)
{
    free(r->x);
    free(r->t);
    free(r->labels);
    memset(r, 0, sizeof *r);
}

/* n fresh random latents of the worker's dim. Returns 0 or DDM_ENOMEM. */
int rows_make(suite *s, rows *r, int n)
{
    r->n = n;
    r->dim = s->dim;
    size_t nx = (size_t)n * (size_t)s->dim;
    r->x = malloc(nx * sizeof *r->x);
    r->t = malloc((size_t)n * sizeof *r->t);
    r->labels = malloc((size_t)n * sizeof *r->labels);
    if (!r->x || !r->t || !r->labels) {
        rows_free(r);
        return DDM_ENOMEM;
    }
    uint64_t stream = 2 * s->next_stream++;
    rng_normal_fill(CONFORM_SEED, stream, 0, r->x, nx);
    for (int i = 0; i < n; i++) {
        r->t[i] = (float)rng_uniform(CONFORM_SEED, stream + 1, (uint64_t)i);
        r->labels[i] = (int32_t)((stream / 2 + (uint64_t)i) % (uint64_t)(s->n_classes + 1)) - 1;
    }
    return 0;
}

/* The request the router sends for r: per-latent times, and labels when the
 * worker has classes. */
void dreq_rows(suite *s, dreq *d, const rows *r)
{
    memset(d, 0, sizeof *d);
    d->id = s->next_id++;
    d->has_dim = d->has_batch = 1;
    d->dim = (uint32_t)r->dim;
    d->batch = (uint32_t)r->n;
    d->x = r->x;
    d->x_bytes = (size_t)r->n * (size_t)r->dim * sizeof(float);
    d->ts = r->t;
    d->n_ts = (size_t)r->n;
    if (s->n_classes > 0) {
        d->labels = r->labels;
        d->n_labels = (size_t)r->n;
    }
}

void dreq_proto(const dreq *d, Ddm__V1__DenoiseRequest *r)
{
    Ddm__V1__DenoiseRequest init = DDM__V1__DENOISE_REQUEST__INIT;
    *r = init;
    r->has_id = 1;
    r->id = d->id;
    r->has_dim = d->has_dim;
    r->dim = d->dim;
    r->has_batch = d->has_batch;
    r->batch = d->batch;
    r->has_t = d->has_t;
    r->t = d->t;
    r->has_x = 1;
    r->x.data = (uint8_t *)d->x;
    r->x.len = d->x_bytes;
    r->n_ts = d->n_ts;
    r->ts = (float *)d->ts;
    r->n_labels = d->n_labels;
    r->labels = (int32_t *)d->labels;
}

/* Packs d as a WorkerRequest into a new buffer (free()); NULL if out of memory. */
uint8_t *dreq_pack(const dreq *d, size_t *len)
{
    Ddm__V1__DenoiseRequest r;
    dreq_proto(d, &r);
    Ddm__V1__WorkerRequest w = DDM__V1__WORKER_REQUEST__INIT;
    w.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    w.denoise = &r;
    *len = ddm__v1__worker_request__get_packed_size(&w);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf)
        ddm__v1__worker_request__pack(&w, buf);
    return buf;
}

static void list_f(char *buf, size_t len, const char *name, const float *v, size_t n)
{
    size_t o = strlen(buf);
    o += (size_t)snprintf(buf + o, o < len ? len - o : 0, " %s=[", name);
    for (size_t i = 0; i < n && i < 4 && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%g", i ? ", " : "", (double)v[i]);
    if (o < len)
        snprintf(buf + o, len - o, n > 4 ? ", ... (%zu)]" : "]", n);
}

static void list_i(char *buf, size_t len, const char *name, const int32_t *v, size_t n)
{
    size_t o = strlen(buf);
    o += (size_t)snprintf(buf + o, o < len ? len - o : 0, " %s=[", name);
    for (size_t i = 0; i < n && i < 4 && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%d", i ? ", " : "", v[i]);
    if (o < len)
        snprintf(buf + o, len - o, n > 4 ? ", ... (%zu)]" : "]", n);
}

/* "DenoiseRequest id=.. dim=.. batch=.. x=N bytes t=.. ts=[..] labels=[..]" */
void dreq_describe(const dreq *d, char *buf, size_t len)
{
    char dim[24] = "absent", batch[24] = "absent";
    if (d->has_dim)
        snprintf(dim, sizeof dim, "%u", d->dim);
    if (d->has_batch)
        snprintf(batch, sizeof batch, "%u", d->batch);
    snprintf(buf, len, "DenoiseRequest id=%llu dim=%s batch=%s x=%zu bytes",
             (unsigned long long)d->id, dim, batch, d->x_bytes);
    size_t o = strlen(buf);
    if (d->has_t && o < len)
        snprintf(buf + o, len - o, " t=%g", (double)d->t);
    if (d->n_ts)
        list_f(buf, len, "ts", d->ts, d->n_ts);
    if (d->n_labels)
        list_i(buf, len, "labels", d->labels, d->n_labels);
    if (!d->has_t && !d->n_ts && strlen(buf) + 20 < len)
        strcat(buf, " (no t, no ts)");
}

void hex_preview(char *buf, size_t len, const uint8_t *b, size_t n)
{
    size_t o = (size_t)snprintf(buf, len, "%zu bytes", n);
    for (size_t i = 0; i < n && i < 16 && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%02x", i ? " " : ": ", b[i]);
    if (n > 16 && o < len)
        snprintf(buf + o, len - o, " ...");
}

/* ---- replies ------------------------------------------------------------------------- */

void reply_free(reply *r)
{
    if (r->wr)
        ddm__v1__worker_reply__free_unpacked(r->wr, NULL);
    r->wr = NULL;
}

void reply_take(reply *r, const wreq *c, int rc, void *body, size_t len)
{
    memset(r, 0, sizeof *r);
    r->rc = rc;
    r->mac = WREQ_MAC_UNCHECKED;
    if (rc == 0) {
        r->mac = wreq_reply_mac(c);
        r->len = len;
        r->wr = ddm__v1__worker_reply__unpack(NULL, len, body);
        nn_freemsg(body);
    }
}

/* One round trip on c within the deadline. */
void call_bytes(const suite *s, wreq *c, const void *buf, size_t len, reply *r)
{
    void *body = NULL;
    size_t blen = 0;
    int rc = wreq_call(c, buf, len, s->o->timeout_ms, &body, &blen);
    reply_take(r, c, rc, body, blen);
}

void err_describe(const Ddm__V1__Error *e, char *buf, size_t len)
{
    if (!e->has_code)
        snprintf(buf, len, "no code, \"%s\"", e->message ? e->message : "");
    else
        snprintf(buf, len, "code %d (%s), \"%s\"", e->code, ddm_strerror(e->code),
                 e->message ? e->message : "");
}

static void describe(const suite *s, const reply *r, char *buf, size_t len);

void reply_describe(const suite *s, const reply *r, char *buf, size_t len)
{
    const char *mac = r->rc || !s->has_key ? NULL
                      : r->mac == DDM_EPROTO ? "a reply WITHOUT a MAC trailer: "
                      : r->mac == DDM_EMISMATCH ? "a reply with a WRONG MAC: " : NULL;
    size_t o = mac ? (size_t)snprintf(buf, len, "%s", mac) : 0;
    if (o < len)
        describe(s, r, buf + o, len - o);
}

/* reply_describe without the MAC verdict. */
static void describe(const suite *s, const reply *r, char *buf, size_t len)
{
    char e[CONFORM_TEXT - 100];
    if (r->rc == DDM_ETIMEDOUT) {
        snprintf(buf, len, "no reply within %d ms", s->o->timeout_ms);
        return;
    }
    if (r->rc) {
        snprintf(buf, len, "no reply: %s", ddm_strerror(r->rc));
        return;
    }
    if (!r->wr) {
        snprintf(buf, len, "%zu bytes that do not decode as ddm.v1.WorkerReply", r->len);
        return;
    }
    const Ddm__V1__DenoiseReply *d = r->wr->denoise;
    switch (r->wr->kind_case) {
    case DDM__V1__WORKER_REPLY__KIND_ERROR:
        err_describe(r->wr->error, e, sizeof e);
        snprintf(buf, len, "WorkerReply.error %s", e);
        return;
    case DDM__V1__WORKER_REPLY__KIND_INFO:
        snprintf(buf, len, "an InfoReply (%zu bytes)", r->len);
        return;
    case DDM__V1__WORKER_REPLY__KIND_DENOISE:
        break;
    default:
        snprintf(buf, len, "a WorkerReply with neither denoise, info nor error (%zu bytes)",
                 r->len);
        return;
    }
    char id[24] = "absent";
    if (d->has_id)
        snprintf(id, sizeof id, "%llu", (unsigned long long)d->id);
    if (d->error) {
        err_describe(d->error, e, sizeof e);
        snprintf(buf, len, "DenoiseReply id=%s error %s", id, e);
    } else if (!d->has_v) {
        snprintf(buf, len, "DenoiseReply id=%s with neither v nor error", id);
    } else {
        size_t nf = d->v.len / 4;
        int o = snprintf(buf, len, "DenoiseReply id=%s v=%zu bytes", id, d->v.len);
        for (size_t i = 0; i < nf && i < 3 && o > 0 && (size_t)o < len; i++) {
            float f;
            memcpy(&f, d->v.data + 4 * i, 4);
            o += snprintf(buf + o, len - (size_t)o, "%s%g", i ? ", " : " [", (double)f);
        }
        if (nf && o > 0 && (size_t)o < len)
            o += snprintf(buf + o, len - (size_t)o, "%s", nf > 3 ? ", ...]" : "]");
        if (d->has_batch_size && o > 0 && (size_t)o < len)
            snprintf(buf + o, len - (size_t)o, " batch_size=%u", d->batch_size);
    }
}

int reply_mac_ok(const suite *s, check *k, const reply *r)
{
    if (!s->has_key || r->rc || r->mac == 0 || r->mac == WREQ_MAC_UNCHECKED)
        return 0;
    if (r->mac == DDM_EPROTO)
        return chk_fail(k, "the reply carries no MAC trailer: with a cluster key every reply "
                        "ends with 7a 20 and HMAC-SHA256(key, \"ddm1 rep\" || request MAC || "
                        "reply); was the worker started with this --cluster-key-file?");
    return chk_fail(k, "the reply's MAC is wrong: it must be HMAC-SHA256(key, \"ddm1 rep\" || "
                    "request MAC || reply bytes before the trailer); does the worker hold this "
                    "cluster key?");
}

/* Checks that r answers d: a DenoiseReply with d's id, no error, and v of
 * batch x dim x 4 bytes of finite floats, copied into out when not NULL;
 * with a key, a valid reply MAC. Returns 0, or -1 with the failure in k.
 * Reads s only (threads share it). */
int answer_ok(const suite *s, check *k, const reply *r, const dreq *d, float *out)
{
    char got[CONFORM_TEXT - 150];
    if (reply_mac_ok(s, k, r))
        return -1;
    reply_describe(s, r, got, sizeof got);
    if (!r->wr || r->wr->kind_case != DDM__V1__WORKER_REPLY__KIND_DENOISE)
        return chk_fail(k, "request %llu got %s: a valid request must get a DenoiseReply with v",
                        (unsigned long long)d->id, got);
    const Ddm__V1__DenoiseReply *v = r->wr->denoise;
    if (v->error)
        return chk_fail(k, "valid request %llu was refused: %s", (unsigned long long)d->id, got);
    if (!v->has_id || v->id != d->id)
        return chk_fail(k, "request %llu got %s: DenoiseReply.id must echo the request's id",
                        (unsigned long long)d->id, got);
    size_t nf = (size_t)d->batch * d->dim, want = nf * sizeof(float);
    if (!v->has_v || v->v.len != want)
        return chk_fail(k, "request %llu: v has %zu bytes, expected batch x dim x 4 = "
                        "%u x %u x 4 = %zu", (unsigned long long)d->id,
                        v->has_v ? v->v.len : 0, d->batch, d->dim, want);
    for (size_t i = 0; i < nf; i++) {
        float f;
        memcpy(&f, v->v.data + 4 * i, 4);
        if (!isfinite(f))
            return chk_fail(k, "request %llu: v[%zu][%zu] = %g: every value must be finite",
                            (unsigned long long)d->id, i / d->dim, i % d->dim, (double)f);
    }
    if (out)
        memcpy(out, v->v.data, want);
    return 0;
}

/* Sends d and checks the answer (into out, if not NULL). 0 or -1 (in k). */
int ask(suite *s, check *k, const dreq *d, float *out)
{
    size_t len;
    uint8_t *buf = dreq_pack(d, &len);
    if (!buf)
        return chk_fail(k, "out of memory");
    reply r;
    call_bytes(s, s->c, buf, len, &r);
    free(buf);
    reply_describe(s, &r, k->got, sizeof k->got);
    int rc = answer_ok(s, k, &r, d, out);
    reply_free(&r);
    return rc;
}

/* Largest |got - want| / (1 + |want|) over n values; *at = its index. */
static double worst_diff(const float *got, const float *want, size_t n, size_t *at)
{
    double worst = 0;
    *at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]) / (1.0 + fabs((double)want[i]));
        if (!(e <= worst)) { /* NaN counts as worst */
            worst = e;
            *at = i;
            if (isnan(e))
                break;
        }
    }
    return worst;
}

/* Fails k unless got and want ([n][dim]) agree within CONFORM_TOL. */
int agree(check *k, const char *what, const float *got, const float *want, int n,
                 int dim, double *worst_out)
{
    size_t at;
    double w = worst_diff(got, want, (size_t)n * (size_t)dim, &at);
    if (worst_out && (w > *worst_out || isnan(w)))
        *worst_out = w;
    if (w <= CONFORM_TOL)
        return 0;
    return chk_fail(k, "%s: row %zu element %zu is %.9g, expected %.9g (|a - b| / (1 + |b|) = "
                    "%.3g > %g)", what, at / (size_t)dim, at % (size_t)dim, (double)got[at],
                    (double)want[at], w, CONFORM_TOL);
}

