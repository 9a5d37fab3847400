/* conform_checks.c -- the checks of ddm-client conform on valid requests:
 * answers at the edges, wire variants (packed fields, unknown fields), batch
 * invariance, determinism, concurrent clients, and the reference forward of
 * a weights file (see conform_int.h). */
#include "tools/client/conform_int.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/model.h"
#include "common/net.h"
#include "common/st.h"

#define CONC_PER_CLIENT 4 /* requests each client of the concurrency check has in flight */
#define BUSY_TRIES 10     /* sends of a request that keeps getting busy errors */
#define BUSY_BACKOFF_US 20000 /* wait before the n-th resend: n times this */

/* ---- answers ------------------------------------------------------------------------- */

void run_answers(suite *s, check *k)
{
    int full = s->max_batch < CONFORM_ROUTER_ROWS ? s->max_batch : CONFORM_ROUTER_ROWS;
    size_t row_bytes = (size_t)s->dim * 4;
    if ((size_t)full * row_bytes > CONFORM_MAX_BYTES / 4)
        full = row_bytes > CONFORM_MAX_BYTES / 4 ? 1 : (int)(CONFORM_MAX_BYTES / 4 / row_bytes);
    /* shape of each request: rows, shared t (< 0: per-latent ts), labels sent */
    struct { int n; float t; int labels; const char *what; } cases[] = {
        { 1, 0.5f, 0, "1 latent, t = 0.5, no labels" },
        { 3, -1, 1, "3 latents, ts = [0, 0.5, 1], labels -1, 0, last class" },
        { 2, 0.0f, 1, "2 latents, t = 0" },
        { 2, 1.0f, 1, "2 latents, t = 1" },
        { full, -1, 1, "a full batch" },
    };
    int nc = (int)(sizeof cases / sizeof cases[0]), done = 0;
    for (int c = 0; c < nc && !k->failed; c++) {
        rows r;
        int n = cases[c].n < s->max_batch ? cases[c].n : s->max_batch;
        if (rows_make(s, &r, n)) {
            chk_fail(k, "out of memory");
            return;
        }
        dreq d;
        dreq_rows(s, &d, &r);
        if (c == 1)
            for (int i = 0; i < n; i++) {
                r.t[i] = (float)i / (float)(n > 1 ? n - 1 : 1);
                r.labels[i] = i == 0 ? -1 : i == 1 ? 0 : s->n_classes - 1;
                if (s->n_classes == 0)
                    r.labels[i] = -1;
            }
        if (cases[c].t >= 0) {
            d.n_ts = 0;
            d.has_t = 1;
            d.t = cases[c].t;
        }
        if (!cases[c].labels) {
            d.n_labels = 0;
        } else if (s->n_classes == 0) {
            d.labels = r.labels; /* all -1: labels may be sent to an unconditional worker */
            d.n_labels = (size_t)n;
            for (int i = 0; i < n; i++)
                r.labels[i] = -1;
        }
        dreq_describe(&d, k->sent, sizeof k->sent);
        if (ask(s, k, &d, NULL) == 0)
            done++;
        rows_free(&r);
    }
    if (!k->failed)
        chk_got(k, "%d of %d requests answered with batch x dim x 4 bytes of finite floats, "
                "ids echoed (the last one shown above: %d latents)", done, nc,
                cases[nc - 1].n < s->max_batch ? cases[nc - 1].n : s->max_batch);
}

/* Appends a protobuf varint to b at *o. */
static void put_varint(uint8_t *b, size_t *o, uint64_t v)
{
    while (v >= 0x80) {
        b[(*o)++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b[(*o)++] = (uint8_t)v;
}

/* WorkerRequest{denoise: inner} with extra bytes after inner (inside the
 * DenoiseRequest) and after the wrapper; a new buffer (free()) or NULL. */
static uint8_t *wrap_denoise(const Ddm__V1__DenoiseRequest *r, const uint8_t *in_extra,
                             size_t in_n, const uint8_t *out_extra, size_t out_n, size_t *len)
{
    size_t il = ddm__v1__denoise_request__get_packed_size(r) + in_n;
    uint8_t *b = malloc(il + out_n + 16);
    if (!b)
        return NULL;
    size_t o = 0;
    b[o++] = 0x0a; /* field 1 (denoise), length-delimited */
    put_varint(b, &o, il);
    o += ddm__v1__denoise_request__pack(r, b + o);
    if (in_n)
        memcpy(b + o, in_extra, in_n);
    o += in_n;
    if (out_n)
        memcpy(b + o, out_extra, out_n);
    *len = o + out_n;
    return b;
}

/* Labels and ts sent packed (as proto3 encoders write repeated scalars)
 * must be read as the unpacked ones. */
void run_packed(suite *s, check *k)
{
    int n = s->max_batch < 3 ? s->max_batch : 3;
    rows r;
    if (rows_make(s, &r, n)) {
        chk_fail(k, "out of memory");
        return;
    }
    dreq d;
    dreq_rows(s, &d, &r);
    float *a = malloc((size_t)n * s->dim * sizeof *a), *b = malloc((size_t)n * s->dim * sizeof *b);
    uint8_t extra[16 + 10 * 3 + 4 * 3];
    size_t e = 0;
    if (!a || !b) {
        chk_fail(k, "out of memory");
        goto out;
    }
    dreq_describe(&d, k->sent, sizeof k->sent);
    size_t o = strlen(k->sent);
    snprintf(k->sent + o, sizeof k->sent - o, ", first unpacked, then ts%s packed",
             d.n_labels ? " and labels" : "");
    if (ask(s, k, &d, a))
        goto out;
    Ddm__V1__DenoiseRequest pr;
    dreq_proto(&d, &pr);
    pr.n_ts = 0;
    pr.n_labels = 0;
    extra[e++] = 0x3a; /* field 7 (ts), packed */
    put_varint(extra, &e, (uint64_t)n * 4);
    memcpy(extra + e, r.t, (size_t)n * 4);
    e += (size_t)n * 4;
    if (d.n_labels) {
        uint8_t zz[32];
        size_t zn = 0;
        for (int i = 0; i < n; i++)
            put_varint(zz, &zn, (uint32_t)((r.labels[i] << 1) ^ (r.labels[i] >> 31)));
        extra[e++] = 0x32; /* field 6 (labels), packed */
        put_varint(extra, &e, zn);
        memcpy(extra + e, zz, zn);
        e += zn;
    }
    size_t len;
    uint8_t *buf = wrap_denoise(&pr, extra, e, NULL, 0, &len);
    if (!buf) {
        chk_fail(k, "out of memory");
        goto out;
    }
    reply rp;
    call_bytes(s, s->c, buf, len, &rp);
    free(buf);
    reply_describe(s, &rp, k->got, sizeof k->got);
    if (answer_ok(s, k, &rp, &d, b) == 0)
        agree(k, "packed vs unpacked", b, a, n, s->dim, NULL);
    reply_free(&rp);
out:
    free(a);
    free(b);
    rows_free(&r);
}

/* Fields this version does not know are skipped, inside the DenoiseRequest
 * and in the WorkerRequest: a later minor version may add some. */
void run_unknown(suite *s, check *k)
{
    rows r;
    if (rows_make(s, &r, 1)) {
        chk_fail(k, "out of memory");
        return;
    }
    dreq d;
    dreq_rows(s, &d, &r);
    float *a = malloc((size_t)s->dim * sizeof *a), *b = malloc((size_t)s->dim * sizeof *b);
    dreq_describe(&d, k->sent, sizeof k->sent);
    size_t o = strlen(k->sent);
    snprintf(k->sent + o, sizeof k->sent - o, ", then again with fields 12 and 13 added to "
             "the DenoiseRequest and field 14 to the WorkerRequest");
    if (!a || !b || ask(s, k, &d, a)) {
        if (!a || !b)
            chk_fail(k, "out of memory");
        goto out;
    }
    /* field 12 varint 1 and field 13 bytes "hi" inside; field 14 fixed32 outside */
    static const uint8_t in_extra[] = { 0x60, 0x01, 0x6a, 0x02, 'h', 'i' };
    static const uint8_t out_extra[] = { 0x75, 0x01, 0x02, 0x03, 0x04 };
    Ddm__V1__DenoiseRequest pr;
    dreq_proto(&d, &pr);
    size_t len;
    uint8_t *buf = wrap_denoise(&pr, in_extra, sizeof in_extra, out_extra, sizeof out_extra,
                                &len);
    if (!buf) {
        chk_fail(k, "out of memory");
        goto out;
    }
    reply rp;
    call_bytes(s, s->c, buf, len, &rp);
    free(buf);
    reply_describe(s, &rp, k->got, sizeof k->got);
    if (answer_ok(s, k, &rp, &d, b) == 0)
        agree(k, "with vs without unknown fields", b, a, 1, s->dim, NULL);
    reply_free(&rp);
out:
    free(a);
    free(b);
    rows_free(&r);
}

/* Three rows alone, then at the start, middle and end of a batch of
 * min(64, max_batch) rows: the answers agree within CONFORM_TOL. */
void run_invariance(suite *s, check *k)
{
    int n = s->max_batch < CONFORM_BATCH_ROWS ? s->max_batch : CONFORM_BATCH_ROWS;
    int pos[3] = { 0, n / 2, n - 1 };
    size_t D = (size_t)s->dim;
    rows big;
    if (rows_make(s, &big, n)) {
        chk_fail(k, "out of memory");
        return;
    }
    float *batch = malloc((size_t)n * D * sizeof *batch), *alone = malloc(D * sizeof *alone);
    double worst = 0;
    if (!batch || !alone) {
        chk_fail(k, "out of memory");
        goto out;
    }
    dreq d;
    dreq_rows(s, &d, &big);
    dreq_describe(&d, k->sent, sizeof k->sent);
    if (ask(s, k, &d, batch))
        goto out;
    for (int p = 0; p < 3 && !k->failed; p++) {
        int i = pos[p];
        rows one = { .n = 1, .dim = s->dim, .x = big.x + (size_t)i * D, .t = big.t + i,
                     .labels = big.labels + i };
        dreq_rows(s, &d, &one);
        if (ask(s, k, &d, alone))
            break;
        char what[64];
        snprintf(what, sizeof what, "row %d alone vs in the batch of %d", i, n);
        agree(k, what, alone, batch + (size_t)i * D, 1, s->dim, &worst);
    }
    if (!k->failed && n == 1)
        chk_got(k, "max_batch is 1: a row is always computed alone, nothing to compare");
    else if (!k->failed)
        chk_got(k, "rows %d, %d, %d alone equal their answers in the batch of %d: worst "
                "|a - b| / (1 + |b|) = %.3g", pos[0], pos[1], pos[2], n, worst);
out:
    free(batch);
    free(alone);
    rows_free(&big);
}

void run_determinism(suite *s, check *k)
{
    int n = s->max_batch < 4 ? s->max_batch : 4;
    rows r;
    if (rows_make(s, &r, n)) {
        chk_fail(k, "out of memory");
        return;
    }
    size_t bytes = (size_t)n * s->dim * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes);
    dreq d;
    dreq_rows(s, &d, &r);
    dreq_describe(&d, k->sent, sizeof k->sent);
    strncat(k->sent, ", twice", sizeof k->sent - strlen(k->sent) - 1);
    if (!a || !b)
        chk_fail(k, "out of memory");
    else if (ask(s, k, &d, a) == 0 && ask(s, k, &d, b) == 0) {
        if (memcmp(a, b, bytes)) {
            size_t i = 0;
            while (i + 1 < bytes / 4 && !memcmp(a + i, b + i, 4))
                i++;
            chk_fail(k, "v differs: row %zu element %zu is %.9g, then %.9g", i / (size_t)s->dim,
                     i % (size_t)s->dim, (double)a[i], (double)b[i]);
        } else {
            chk_got(k, "the same %zu bytes of v both times", bytes);
        }
    }
    free(a);
    free(b);
    rows_free(&r);
}

/* ---- concurrency ----------------------------------------------------------------------- */

typedef struct conc_client {
    const suite *s;
    int idx;
    rows r[CONC_PER_CLIENT];
    dreq d[CONC_PER_CLIENT];
    float *want[CONC_PER_CLIENT];   /* the same rows' answer alone, [n][dim] */
    int answered, busy;
    check k;                        /* this client's failures */
} conc_client;

/* Sends request j of cl; *id = its request id. */
static int conc_send(conc_client *cl, wreq *c, int j, uint32_t *id)
{
    size_t len;
    uint8_t *buf = dreq_pack(&cl->d[j], &len);
    if (!buf)
        return chk_fail(&cl->k, "out of memory");
    int rc = wreq_send(c, buf, len, cl->s->o->timeout_ms, id);
    free(buf);
    if (rc)
        return chk_fail(&cl->k, "client %d: could not send: %s", cl->idx, ddm_strerror(rc));
    return 0;
}

static int busy_reply(const reply *r)
{
    const Ddm__V1__WorkerReply *w = r->wr;
    return w && w->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE && w->denoise->error &&
           w->denoise->error->has_code && w->denoise->error->code == DDM_EBUSY;
}

/* Thread: all requests in flight at once on its own socket, then every
 * reply matched by request id and compared with the answer alone. A busy
 * error (queue full: a worker may say so under load) is retried after a
 * growing pause, up to BUSY_TRIES sends. */
static void *conc_run(void *arg)
{
    conc_client *cl = arg;
    const suite *s = cl->s;
    wreq *c;
    char err[256];
    uint32_t ids[CONC_PER_CLIENT];
    int done[CONC_PER_CLIENT] = { 0 }, tries[CONC_PER_CLIENT] = { 0 };
    if (wreq_open(s->o->url, &c, err, sizeof err)) {
        chk_fail(&cl->k, "client %d: %s", cl->idx, err);
        return NULL;
    }
    if (s->has_key)
        wreq_set_key(c, &s->key);
    for (int j = 0; j < CONC_PER_CLIENT; j++)
        if (conc_send(cl, c, j, &ids[j]))
            goto out;
    while (cl->answered < CONC_PER_CLIENT) {
        void *body = NULL;
        size_t len = 0;
        uint32_t id;
        reply r;
        int rc = wreq_recv(c, s->o->timeout_ms, &id, &body, &len);
        reply_take(&r, c, rc, body, len);
        if (rc == DDM_ETIMEDOUT) {
            chk_fail(&cl->k, "client %d: %d of %d replies missing after %d ms", cl->idx,
                     CONC_PER_CLIENT - cl->answered, CONC_PER_CLIENT, s->o->timeout_ms);
            break;
        }
        int j = 0;
        while (j < CONC_PER_CLIENT && (ids[j] != id || done[j]))
            j++;
        if (rc || j == CONC_PER_CLIENT) {
            reply_free(&r); /* not ours, or a late one */
            continue;
        }
        if (busy_reply(&r) && ++tries[j] < BUSY_TRIES) {
            cl->busy++;
            reply_free(&r);
            usleep((useconds_t)(BUSY_BACKOFF_US * tries[j]));
            if (conc_send(cl, c, j, &ids[j]))
                break;
            continue;
        }
        done[j] = 1;
        cl->answered++;
        float *got = malloc((size_t)cl->d[j].batch * cl->d[j].dim * sizeof *got);
        char what[64];
        snprintf(what, sizeof what, "client %d request %d vs the same rows alone", cl->idx, j);
        if (!got)
            chk_fail(&cl->k, "out of memory");
        else if (answer_ok(s, &cl->k, &r, &cl->d[j], got) == 0)
            agree(&cl->k, what, got, cl->want[j], (int)cl->d[j].batch, (int)cl->d[j].dim, NULL);
        free(got);
        reply_free(&r);
        if (cl->k.failed)
            break;
    }
out:
    wreq_close(c);
    return NULL;
}

void run_concurrency(suite *s, check *k)
{
    conc_client *cl = calloc(CONFORM_CLIENTS, sizeof *cl);
    pthread_t th[CONFORM_CLIENTS];
    int started = 0, total = 0, answered = 0, busy = 0;
    if (!cl) {
        chk_fail(k, "out of memory");
        return;
    }
    /* every request's answer alone first, on the main socket */
    for (int i = 0; i < CONFORM_CLIENTS && !k->failed; i++) {
        cl[i].s = s;
        cl[i].idx = i;
        cl[i].k.name = k->name;
        for (int j = 0; j < CONC_PER_CLIENT && !k->failed; j++) {
            int n = 1 + (i + j) % 4;
            n = n < s->max_batch ? n : s->max_batch;
            if (rows_make(s, &cl[i].r[j], n) ||
                !(cl[i].want[j] = malloc((size_t)n * s->dim * sizeof(float)))) {
                chk_fail(k, "out of memory");
                break;
            }
            dreq_rows(s, &cl[i].d[j], &cl[i].r[j]);
            total++;
            if (ask(s, k, &cl[i].d[j], cl[i].want[j])) {
                dreq_describe(&cl[i].d[j], k->sent, sizeof k->sent);
                chk_fail(k, "not run: a request alone (shown) is not answered correctly");
            }
        }
    }
    if (!k->failed)
        chk_sent(k, "%d sockets at once, each with %d DenoiseRequests of 1-%d latents in "
                 "flight (%d in all), answers compared with each request sent alone",
                 CONFORM_CLIENTS, CONC_PER_CLIENT, s->max_batch < 4 ? s->max_batch : 4, total);
    for (int i = 0; i < CONFORM_CLIENTS && !k->failed; i++) {
        if (pthread_create(&th[i], NULL, conc_run, &cl[i])) {
            chk_fail(k, "cannot start a thread");
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < started; i++) {
        answered += cl[i].answered;
        busy += cl[i].busy;
        if (cl[i].k.failed)
            chk_fail(k, "%s", cl[i].k.why);
    }
    if (started)
        chk_got(k, "%d of %d answered%s", answered, total,
                busy ? " (some after a busy error, retried)" : "");
    for (int i = 0; i < CONFORM_CLIENTS; i++)
        for (int j = 0; j < CONC_PER_CLIENT; j++) {
            rows_free(&cl[i].r[j]);
            free(cl[i].want[j]);
        }
    free(cl);
}

/* ---- against the weights file ---------------------------------------------------------- */

void run_weights(suite *s, check *k)
{
    const model *m = s->ref;
    chk_sent(k, "(the handshake above) vs %s", s->o->weights);
    chk_got(k, "worker: dim %d, expert_id %d, num_classes %d, sha256 %.16s...; file: dim %d, "
            "expert_id %d, n_classes %d, sha256 %.16s...", s->dim, s->expert_id, s->n_classes,
            s->sha256, m->cfg.in_dim, m->expert_id, m->cfg.n_classes, st_sha256(m->file));
    if (s->dim != m->cfg.in_dim)
        chk_fail(k, "the worker's dim is not the file's");
    if (s->expert_id != m->expert_id)
        chk_fail(k, "the worker's expert_id is not the file's");
    if (s->n_classes != m->cfg.n_classes)
        chk_fail(k, "the worker's num_classes is not the file's");
    if (strcmp(s->sha256, st_sha256(m->file)))
        chk_fail(k, "weights_sha256 is not the file's sha256: the worker serves other weights");
}

void run_reference(suite *s, check *k)
{
    const model *m = s->ref;
    if (s->dim != m->cfg.in_dim) {
        chk_fail(k, "not run: the worker's dim is not the file's");
        return;
    }
    static const float T[] = { 0, 0.05f, 0.25f, 0.5f, 0.75f, 0.95f, 1 };
    int sizes[3] = { 1, 7, CONFORM_BATCH_ROWS };
    double worst = 0;
    int asked = 0;
    for (int c = 0; c < 3 && !k->failed; c++) {
        int n = sizes[c] < s->max_batch ? sizes[c] : s->max_batch;
        rows r;
        if (rows_make(s, &r, n)) {
            chk_fail(k, "out of memory");
            return;
        }
        for (int i = 0; i < n; i++)
            r.t[i] = T[(i + c) % 7];
        size_t nf = (size_t)n * s->dim;
        float *got = malloc(nf * sizeof *got), *want = malloc(nf * sizeof *want);
        int *lab = malloc((size_t)n * sizeof *lab);
        dreq d;
        dreq_rows(s, &d, &r);
        dreq_describe(&d, k->sent, sizeof k->sent);
        if (!got || !want || !lab) {
            chk_fail(k, "out of memory");
        } else if (ask(s, k, &d, got) == 0) {
            for (int i = 0; i < n; i++)
                lab[i] = r.labels[i];
            int rc = net_forward_ref(&m->cfg, &m->w, n, r.x, r.t, lab, want);
            if (rc)
                chk_fail(k, "reference forward: %s", ddm_strerror(rc));
            else
                agree(k, "worker vs reference forward", got, want, n, s->dim, &worst);
            asked++;
        }
        free(got);
        free(want);
        free(lab);
        rows_free(&r);
    }
    if (!k->failed)
        chk_got(k, "%d requests (1, 7 and %d latents; t from 0 to 1, labels -1..%d) match "
                "the reference forward of %s: worst |a - b| / (1 + |b|) = %.3g", asked,
                s->max_batch < CONFORM_BATCH_ROWS ? s->max_batch : CONFORM_BATCH_ROWS,
                s->n_classes - 1, s->o->weights, worst);
}

