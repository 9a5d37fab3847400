/* api.c -- sampling API decoding and encoding (see api.h). */
#define _GNU_SOURCE /* strcasestr */
#include "router/api.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/err.h"
#include "common/png.h"
#include "common/rng.h"
#include "ddm/v1/api.pb-c.h"

/* ---- request decoding -------------------------------------------------------------- */

static int is_type(const char *ct, const char *type)
{
    size_t n = strlen(type);
    if (strncasecmp(ct, type, n))
        return 0;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

static int bad(const char **code, const char *c, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int bad(const char **code, const char *c, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    *code = c;
    return 400;
}

/* Raw field values, before the range checks both formats share. */
typedef struct raw_req {
    int has_n, has_steps, has_seed, has_thr, has_temp, has_label, has_guid, has_trace;
    double n, steps, label;
    uint64_t seed;
    double thr, temp, guid;
    const char *strategy, *sampler;
    int trace;
} raw_req;

static int json_int_field(const cJSON *it, const char *name, double lo, double hi, double *out,
                          const char **code, char *err, size_t errlen)
{
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
        return bad(code, "bad_field", err, errlen, "field \"%s\" must be an integer %.0f..%.0f",
                   name, lo, hi);
    *out = it->valuedouble;
    return 0;
}

static int json_num_field(const cJSON *it, const char *name, double *out, const char **code,
                          char *err, size_t errlen)
{
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble))
        return bad(code, "bad_field", err, errlen, "field \"%s\" must be a number", name);
    *out = it->valuedouble;
    return 0;
}

static int parse_seed_string(const char *s, uint64_t *out)
{
    if (!*s || strlen(s) > 20)
        return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int decode_json(const uint8_t *body, size_t len, raw_req *r, const char **code, char *err,
                       size_t errlen)
{
    cJSON *root = cJSON_ParseWithLength((const char *)body, len);
    if (!root)
        return bad(code, "bad_json", err, errlen,
                   "body is not valid JSON (near byte %ld): send a JSON object such as "
                   "{\"n\": 4, \"strategy\": \"top-2\"}",
                   cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - (const char *)body) : 0L);
    int st = 0;
    if (!cJSON_IsObject(root)) {
        st = bad(code, "bad_json", err, errlen, "body must be a JSON object");
        goto done;
    }
    for (const cJSON *it = root->child; it && !st; it = it->next) {
        const char *k = it->string;
        if (!strcmp(k, "n")) {
            r->has_n = 1;
            st = json_int_field(it, "n", 1, SAMPLE_MAX_N, &r->n, code, err, errlen);
        } else if (!strcmp(k, "steps")) {
            r->has_steps = 1;
            st = json_int_field(it, "steps", 1, SAMPLE_MAX_STEPS, &r->steps, code, err, errlen);
        } else if (!strcmp(k, "seed")) {
            r->has_seed = 1;
            if (cJSON_IsString(it)) {
                if (parse_seed_string(it->valuestring, &r->seed))
                    st = bad(code, "bad_field", err, errlen,
                             "field \"seed\" must be an unsigned 64-bit integer (number or string)");
            } else if (cJSON_IsNumber(it) && it->valuedouble >= 0 &&
                       it->valuedouble <= 9007199254740992.0 &&
                       it->valuedouble == floor(it->valuedouble)) {
                r->seed = (uint64_t)it->valuedouble;
            } else {
                st = bad(code, "bad_field", err, errlen,
                         "field \"seed\" must be an integer 0..2^53 (or a decimal string up to 2^64-1)");
            }
        } else if (!strcmp(k, "strategy") || !strcmp(k, "sampler")) {
            if (!cJSON_IsString(it))
                st = bad(code, "bad_field", err, errlen, "field \"%s\" must be a string", k);
            else if (!strcmp(k, "strategy"))
                r->strategy = it->valuestring;
            else
                r->sampler = it->valuestring;
        } else if (!strcmp(k, "threshold")) {
            r->has_thr = 1;
            st = json_num_field(it, k, &r->thr, code, err, errlen);
        } else if (!strcmp(k, "temperature")) {
            r->has_temp = 1;
            st = json_num_field(it, k, &r->temp, code, err, errlen);
        } else if (!strcmp(k, "guidance")) {
            r->has_guid = 1;
            st = json_num_field(it, k, &r->guid, code, err, errlen);
        } else if (!strcmp(k, "label")) {
            if (!cJSON_IsNull(it)) {
                r->has_label = 1;
                st = json_int_field(it, "label", 0, 1e9, &r->label, code, err, errlen);
            }
        } else if (!strcmp(k, "trace")) {
            if (!cJSON_IsBool(it))
                st = bad(code, "bad_field", err, errlen, "field \"trace\" must be true or false");
            r->trace = cJSON_IsTrue(it);
        } else {
            st = bad(code, "unknown_field", err, errlen,
                     "unknown field \"%.64s\": allowed n, steps, seed, strategy, threshold, "
                     "temperature, label, guidance, sampler, trace", k);
        }
    }
    if (!st) {
        /* the strings point into root: copy what we keep */
        static __thread char strat[64], samp[16];
        if (r->strategy) {
            snprintf(strat, sizeof strat, "%s", r->strategy);
            r->strategy = strat;
        }
        if (r->sampler) {
            snprintf(samp, sizeof samp, "%s", r->sampler);
            r->sampler = samp;
        }
    }
done:
    cJSON_Delete(root);
    return st;
}

static int decode_proto(const uint8_t *body, size_t len, raw_req *r, const char **code,
                        char *err, size_t errlen)
{
    Ddm__V1__SampleRequest *m = ddm__v1__sample_request__unpack(NULL, len, body);
    if (!m)
        return bad(code, "bad_protobuf", err, errlen,
                   "body is not a valid ddm.v1.SampleRequest protobuf message");
    static __thread char strat[64], samp[16];
    r->has_n = m->has_n, r->n = m->n;
    r->has_steps = m->has_steps, r->steps = m->steps;
    r->has_seed = m->has_seed, r->seed = m->seed;
    r->has_thr = m->has_threshold, r->thr = m->threshold;
    r->has_temp = m->has_temperature, r->temp = m->temperature;
    r->has_label = m->has_label, r->label = m->label;
    r->has_guid = m->has_guidance, r->guid = m->guidance;
    r->trace = m->has_trace && m->trace;
    if (m->strategy) {
        snprintf(strat, sizeof strat, "%s", m->strategy);
        r->strategy = strat;
    }
    if (m->sampler) {
        snprintf(samp, sizeof samp, "%s", m->sampler);
        r->sampler = samp;
    }
    int st = 0;
    if ((r->has_thr && !isfinite(r->thr)) || (r->has_temp && !isfinite(r->temp)) ||
        (r->has_guid && !isfinite(r->guid)))
        st = bad(code, "bad_field", err, errlen,
                 "fields threshold, temperature and guidance must be finite numbers");
    ddm__v1__sample_request__free_unpacked(m, NULL);
    return st;
}

int api_decode_sample(const char *content_type, const uint8_t *body, size_t len, int K,
                      int n_classes, uint64_t *seed_state, sample_params *p,
                      const char **err_code, char *err, size_t errlen)
{
    raw_req r;
    memset(&r, 0, sizeof r);
    int st;
    if (!content_type || is_type(content_type, "application/json")) {
        st = decode_json(body, len, &r, err_code, err, errlen);
    } else if (is_type(content_type, "application/x-protobuf") ||
               is_type(content_type, "application/protobuf")) {
        st = decode_proto(body, len, &r, err_code, err, errlen);
    } else {
        *err_code = "unsupported_media_type";
        snprintf(err, errlen,
                 "Content-Type \"%.64s\" is not supported: use application/json or "
                 "application/x-protobuf", content_type);
        return 415;
    }
    if (st)
        return st;

    sample_params_default(p, K);
    if (r.has_n) {
        if (r.n < 1 || r.n > SAMPLE_MAX_N)
            return bad(err_code, "bad_field", err, errlen, "field \"n\" = %.0f is out of range: allowed 1..%d", r.n, SAMPLE_MAX_N);
        p->n = (int)r.n;
    }
    if (r.has_steps) {
        if (r.steps < 1 || r.steps > SAMPLE_MAX_STEPS)
            return bad(err_code, "bad_field", err, errlen, "field \"steps\" = %.0f is out of range: allowed 1..%d", r.steps, SAMPLE_MAX_STEPS);
        p->steps = (int)r.steps;
    }
    if (r.has_label) {
        if (r.label < 0 || r.label >= n_classes) {
            if (n_classes == 0)
                return bad(err_code, "bad_field", err, errlen, "field \"label\": this model is unconditional, omit it");
            return bad(err_code, "bad_field", err, errlen, "field \"label\" = %.0f is out of range: allowed 0..%d", r.label, n_classes - 1);
        }
        p->label = (int)r.label;
    }
    if (r.has_guid) {
        if (!(r.guid >= 0 && r.guid <= 20))
            return bad(err_code, "bad_field", err, errlen, "field \"guidance\" = %g is out of range: allowed 0..20", r.guid);
        p->guidance = (float)r.guid;
    }
    if (r.sampler && sampler_parse(r.sampler, &p->sampler))
        return bad(err_code, "bad_field", err, errlen, "field \"sampler\" = \"%.32s\": allowed euler or heun", r.sampler);
    char serr[256];
    const char *sname = r.strategy ? r.strategy : (K >= 2 ? "top-2" : "expert:0");
    if (strategy_parse(sname, K, r.has_thr ? (float)r.thr : NAN, r.has_temp ? (float)r.temp : NAN,
                       &p->strat, serr, sizeof serr))
        return bad(err_code, "bad_field", err, errlen, "field \"strategy\": %s", serr);
    p->trace = r.trace;
    if (r.has_seed)
        p->seed = r.seed;
    else /* 53 bits, so the echoed seed survives JSON number parsing */
        p->seed = rng_splitmix64(seed_state) >> 11;
    return 0;
}

int api_response_format(const char *accept, const char *content_type, api_format *fmt)
{
    api_format req = (content_type && (is_type(content_type, "application/x-protobuf") ||
                                       is_type(content_type, "application/protobuf")))
                         ? API_PROTO : API_JSON;
    *fmt = req;
    if (!accept || !*accept)
        return 0;
    /* the first type listed that we can produce wins */
    const char *best = NULL;
    api_format bf = req;
    struct { const char *t; api_format f; } kinds[] = {
        { "application/json", API_JSON }, { "application/x-protobuf", API_PROTO },
        { "application/protobuf", API_PROTO }, { "image/png", API_PNG },
        { "*/*", req }, { "application/*", req }, { "image/*", API_PNG },
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const char *at = strcasestr(accept, kinds[i].t);
        if (at && (!best || at < best)) {
            best = at;
            bf = kinds[i].f;
        }
    }
    if (!best)
        return 406;
    *fmt = bf;
    return 0;
}

/* ---- response encoding -------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t more)
{
    if (b->oom || b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->oom = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    sb_reserve(b, (size_t)n);
    if (b->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static int image_png(const api_result *r, int i, uint8_t **png, size_t *len, char *err,
                     size_t errlen)
{
    return pngio_encode_grid(r->trajs[i]->x, 1, r->width, r->height, 1, png, len, err, errlen);
}

static void totals(const api_result *r, uint64_t *calls, uint64_t *by)
{
    *calls = 0;
    memset(by, 0, (size_t)r->K * sizeof *by);
    for (int i = 0; i < r->p->n; i++) {
        *calls += r->trajs[i]->rows;
        for (int k = 0; k < r->K; k++)
            by[k] += r->trajs[i]->rows_by_expert[k];
    }
}

static int encode_json(const api_result *r, uint8_t **body, size_t *len, char *err, size_t errlen)
{
    const sample_params *p = r->p;
    sbuf b = { 0 };
    char sname[32];
    strategy_name(&p->strat, sname, sizeof sname);
    uint64_t calls, by[STRAT_MAX_EXPERTS];
    totals(r, &calls, by);
    sb_printf(&b, "{\"seed\":%llu,\"n\":%d,\"steps\":%d,\"strategy\":\"%s\",\"sampler\":\"%s\","
                  "\"width\":%d,\"height\":%d,\"expert_calls\":%llu,\"calls_by_expert\":[",
              (unsigned long long)p->seed, p->n, p->steps, sname, sampler_name(p->sampler),
              r->width, r->height, (unsigned long long)calls);
    for (int k = 0; k < r->K; k++)
        sb_printf(&b, "%s%llu", k ? "," : "", (unsigned long long)by[k]);
    sb_printf(&b, "],\"timings\":{\"queue_ms\":%.3f,\"total_ms\":%.3f,\"router_ms\":%.3f,"
                  "\"expert_ms\":%.3f},\"images\":[",
              r->queue_ms, r->total_ms, r->router_ms, r->expert_ms);
    int rc = 0;
    for (int i = 0; i < p->n && !rc && !b.oom; i++) {
        uint8_t *png;
        size_t plen;
        rc = image_png(r, i, &png, &plen, err, errlen);
        if (rc)
            break;
        sb_reserve(&b, base64_encoded_len(plen) + 4);
        if (!b.oom) {
            b.p[b.len++] = i ? ',' : ' ';
            b.p[b.len++] = '"';
            base64_encode(png, plen, b.p + b.len);
            b.len += base64_encoded_len(plen);
            b.p[b.len++] = '"';
        }
        free(png);
    }
    sb_printf(&b, "]");
    if (p->trace) {
        sb_printf(&b, ",\"trace\":[");
        int evals = sample_evals(p), first = 1;
        for (int i = 0; i < p->n; i++) {
            for (int e = 0; e < evals && r->trajs[i]->trace; e++) {
                const trace_entry *te = &r->trajs[i]->trace[e];
                sb_printf(&b, "%s{\"image\":%d,\"step\":%d,\"stage\":%d,\"t\":%.6g,\"experts\":[",
                          first ? "" : ",", i, te->step, te->stage, te->t);
                first = 0;
                for (int j = 0; j < te->n_sel; j++)
                    sb_printf(&b, "%s%d", j ? "," : "", te->sel[j]);
                sb_printf(&b, "],\"weights\":[");
                for (int j = 0; j < te->n_sel; j++)
                    sb_printf(&b, "%s%.6g", j ? "," : "", te->w[j]);
                sb_printf(&b, "]}");
            }
        }
        sb_printf(&b, "]");
    }
    sb_printf(&b, "}\n");
    if (rc || b.oom) {
        free(b.p);
        if (!rc)
            snprintf(err, errlen, "out of memory encoding the response");
        return rc ? rc : DDM_ENOMEM;
    }
    *body = (uint8_t *)b.p;
    *len = b.len;
    return 0;
}

static int encode_proto(const api_result *r, uint8_t **body, size_t *len, char *err,
                        size_t errlen)
{
    const sample_params *p = r->p;
    Ddm__V1__SampleResponse m = DDM__V1__SAMPLE_RESPONSE__INIT;
    Ddm__V1__Timings tm = DDM__V1__TIMINGS__INIT;
    char sname[32];
    strategy_name(&p->strat, sname, sizeof sname);
    uint64_t calls, by[STRAT_MAX_EXPERTS];
    totals(r, &calls, by);
    int evals = sample_evals(p);
    size_t ntrace = p->trace ? (size_t)p->n * (size_t)evals : 0;
    ProtobufCBinaryData *imgs = calloc((size_t)p->n, sizeof *imgs);
    Ddm__V1__TraceStep *steps = ntrace ? calloc(ntrace, sizeof *steps) : NULL;
    Ddm__V1__TraceStep **stepp = ntrace ? calloc(ntrace, sizeof *stepp) : NULL;
    uint32_t *sel = ntrace ? calloc(ntrace * STRAT_MAX_EXPERTS, sizeof *sel) : NULL;
    int rc = 0;
    if (!imgs || (ntrace && (!steps || !stepp || !sel))) {
        rc = DDM_ENOMEM;
        snprintf(err, errlen, "out of memory encoding the response");
        goto done;
    }
    for (int i = 0; i < p->n && !rc; i++)
        rc = image_png(r, i, &imgs[i].data, &imgs[i].len, err, errlen);
    if (rc)
        goto done;
    m.n_images = (size_t)p->n;
    m.images = imgs;
    m.has_seed = 1, m.seed = p->seed;
    m.has_expert_calls = 1, m.expert_calls = calls;
    m.n_calls_by_expert = (size_t)r->K;
    m.calls_by_expert = by;
    tm.has_queue_ms = 1, tm.queue_ms = r->queue_ms;
    tm.has_total_ms = 1, tm.total_ms = r->total_ms;
    tm.has_router_ms = 1, tm.router_ms = r->router_ms;
    tm.has_expert_ms = 1, tm.expert_ms = r->expert_ms;
    m.timings = &tm;
    m.strategy = sname;
    m.has_steps = 1, m.steps = (uint32_t)p->steps;
    m.sampler = (char *)sampler_name(p->sampler);
    m.has_width = 1, m.width = (uint32_t)r->width;
    m.has_height = 1, m.height = (uint32_t)r->height;
    for (size_t s = 0; s < ntrace; s++) {
        int i = (int)(s / (size_t)evals), e = (int)(s % (size_t)evals);
        const trace_entry *te = &r->trajs[i]->trace[e];
        Ddm__V1__TraceStep *ts = &steps[s];
        ddm__v1__trace_step__init(ts);
        ts->has_image = 1, ts->image = (uint32_t)i;
        ts->has_step = 1, ts->step = te->step;
        ts->has_t = 1, ts->t = te->t;
        ts->n_experts = te->n_sel;
        ts->experts = sel + s * STRAT_MAX_EXPERTS;
        for (int j = 0; j < te->n_sel; j++)
            ts->experts[j] = te->sel[j];
        ts->n_weights = te->n_sel;
        ts->weights = (float *)te->w;
        stepp[s] = ts;
    }
    m.n_trace = ntrace;
    m.trace = stepp;
    *len = ddm__v1__sample_response__get_packed_size(&m);
    *body = malloc(*len ? *len : 1);
    if (!*body) {
        rc = DDM_ENOMEM;
        snprintf(err, errlen, "out of memory encoding the response");
        goto done;
    }
    ddm__v1__sample_response__pack(&m, *body);
done:
    for (int i = 0; imgs && i < p->n; i++)
        free(imgs[i].data);
    free(imgs);
    free(steps);
    free(stepp);
    free(sel);
    return rc;
}

int api_encode_sample(api_format fmt, const api_result *r, uint8_t **body, size_t *len,
                      const char **content_type, char *err, size_t errlen)
{
    if (fmt == API_PNG) {
        const sample_params *p = r->p;
        size_t dim = (size_t)r->width * (size_t)r->height;
        float *all = malloc((size_t)p->n * dim * sizeof *all);
        if (!all) {
            snprintf(err, errlen, "out of memory encoding the response");
            return DDM_ENOMEM;
        }
        for (int i = 0; i < p->n; i++)
            memcpy(all + (size_t)i * dim, r->trajs[i]->x, dim * sizeof *all);
        int cols = 1;
        while (cols * cols < p->n)
            cols++;
        int rc = pngio_encode_grid(all, p->n, r->width, r->height, cols, body, len, err, errlen);
        free(all);
        *content_type = "image/png";
        return rc;
    }
    if (fmt == API_PROTO) {
        *content_type = "application/x-protobuf";
        return encode_proto(r, body, len, err, errlen);
    }
    *content_type = "application/json";
    return encode_json(r, body, len, err, errlen);
}
