/* api_decode.c -- sampling requests in: JSON and protobuf decoding, and the
 * response format from Accept (see api.h; api.c encodes responses).
 *
 * Decoding checks types and the shape of the text; the ranges are checked once,
 * by sample_params_check. JSON is strict: valid UTF-8, one object and nothing
 * after it, no field twice, no \u0000 in a string, exact integers only (a seed
 * above 2^53 is read from its digits, not through a double). */
#include "router/api.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/rng.h"
#include "common/utf8.h"
#include "ddm/v1/api.pb-c.h"

static int is_type(const char *ct, const char *type)
{
    size_t n = strlen(type);
    if (strncasecmp(ct, type, n))
        return 0;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

static int is_proto(const char *ct)
{
    return ct && (is_type(ct, "application/x-protobuf") || is_type(ct, "application/protobuf"));
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

/* Field values as sent, before sample_params_check. */
typedef struct raw_req {
    int has_n, has_steps, has_seed, has_thr, has_temp, has_label, has_guid;
    int has_priority, has_preview;
    long long n, steps, label, priority, preview_every;
    uint64_t seed;
    double thr, temp, guid;
    char strategy[64], sampler[16];
    int has_strategy, has_sampler;
    char label_name[MODEL_MAX_CLASS_NAME]; /* the class by name (JSON string, label_name) */
    int has_label_name;
    int trace, substitute;
} raw_req;

/* ---- JSON text: the raw text of a member, exact integers ----------------------------- */

static size_t skip_ws(const char *b, size_t len, size_t i)
{
    while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r'))
        i++;
    return i;
}

/* i at an opening quote: the index after the closing one. */
static size_t skip_string(const char *b, size_t len, size_t i)
{
    for (i++; i < len && b[i] != '"'; i++)
        if (b[i] == '\\')
            i++;
    return i + 1;
}

/* i at a value of valid JSON text: the index after it. */
static size_t skip_value(const char *b, size_t len, size_t i)
{
    if (b[i] == '"')
        return skip_string(b, len, i);
    if (b[i] == '{' || b[i] == '[') {
        int depth = 0;
        for (; i < len; i++) {
            if (b[i] == '"') {
                i = skip_string(b, len, i) - 1;
            } else if (b[i] == '{' || b[i] == '[') {
                depth++;
            } else if ((b[i] == '}' || b[i] == ']') && --depth == 0) {
                return i + 1;
            }
        }
        return len;
    }
    while (i < len && !strchr(",}] \t\r\n", b[i]))
        i++;
    return i;
}

/* The text of member `key` (written without escapes) of the valid JSON object
 * text b[0..len); 0 and *val, *vlen, or -1 if there is none. */
static int member_text(const char *b, size_t len, const char *key, const char **val, size_t *vlen)
{
    size_t klen = strlen(key), i = skip_ws(b, len, 0) + 1; /* past '{' */
    for (;;) {
        i = skip_ws(b, len, i);
        if (i >= len || b[i] != '"')
            return -1;
        size_t k0 = i + 1, k1 = skip_string(b, len, i) - 1;
        i = skip_ws(b, len, k1 + 1) + 1; /* past ':' */
        i = skip_ws(b, len, i);
        size_t v1 = skip_value(b, len, i);
        if (k1 - k0 == klen && !memcmp(b + k0, key, klen)) {
            *val = b + i;
            *vlen = v1 - i;
            return 0;
        }
        i = skip_ws(b, len, v1);
        if (i >= len || b[i] != ',')
            return -1;
        i++;
    }
}

/* The exact value of JSON number text t[0..n) if it is a non-negative integer
 * (1e3 and 5.0 are; 1.5 and 1.0000000000000001 are not) up to 2^64-1:
 * 0, -1 (negative or not an integer) or -2 (too large). The digits are used as
 * written: value = (integer digits, then fraction digits) x 10^(exponent -
 * fraction digits). */
static int exact_u64(const char *t, size_t n, uint64_t *out)
{
    size_t i = 0;
    if (i < n && t[i] == '-')
        return -1;
    size_t i0 = i;
    while (i < n && isdigit((unsigned char)t[i]))
        i++;
    size_t i1 = i, f0 = i, f1 = i;
    if (i < n && t[i] == '.') {
        f0 = ++i;
        while (i < n && isdigit((unsigned char)t[i]))
            i++;
        f1 = i;
    }
    long exp = 0;
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        int neg = i < n && t[i] == '-';
        if (i < n && (t[i] == '-' || t[i] == '+'))
            i++;
        for (; i < n && isdigit((unsigned char)t[i]); i++)
            if (exp < 1000000)
                exp = exp * 10 + (t[i] - '0');
        exp = neg ? -exp : exp;
    }
    if (i != n || i1 == i0)
        return -1;
    long L = (long)(i1 - i0 + f1 - f0), keep = L + exp - (long)(f1 - f0);
#define DIGIT(k) ((k) < (long)(i1 - i0) ? t[i0 + (size_t)(k)] : t[f0 + (size_t)(k) - (i1 - i0)])
    for (long k = keep > 0 ? keep : 0; k < L; k++) /* right of the point: zeros only */
        if (DIGIT(k) != '0')
            return -1;
    uint64_t v = 0;
    for (long k = 0; k < keep; k++) {
        unsigned d = k < L ? (unsigned)(DIGIT(k) - '0') : 0;
        if (v > (UINT64_MAX - d) / 10)
            return -2;
        v = v * 10 + d;
    }
#undef DIGIT
    *out = v;
    return 0;
}

/* An integer field (n, steps, label): integral and within 32 bits, else the
 * message names the field and its allowed range. */
static int json_int(const cJSON *it, const char *name, int n_classes, long long *out,
                    const char **code, char *err, size_t errlen)
{
    char range[64];
    sample_field_range(name, n_classes, range, sizeof range);
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
        return bad(code, "bad_field", err, errlen, "field \"%s\" must be an integer %s", name,
                   range);
    if (!(fabs(it->valuedouble) <= INT_MAX))
        return bad(code, "bad_field", err, errlen, "field \"%s\" = %g is out of range: allowed %s",
                   name, it->valuedouble, range);
    *out = (long long)it->valuedouble;
    return 0;
}

static int json_num(const cJSON *it, const char *name, double *out, const char **code, char *err,
                    size_t errlen)
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

static int json_seed(const cJSON *it, const char *body, size_t len, uint64_t *out,
                     const char **code, char *err, size_t errlen)
{
    if (cJSON_IsString(it)) {
        if (parse_seed_string(it->valuestring, out))
            return bad(code, "bad_field", err, errlen,
                       "field \"seed\" must be an unsigned 64-bit integer (number or string)");
        return 0;
    }
    const char *t;
    size_t tl;
    if (!cJSON_IsNumber(it))
        return bad(code, "bad_field", err, errlen,
                   "field \"seed\" must be an unsigned 64-bit integer (number or string)");
    if (member_text(body, len, "seed", &t, &tl)) /* a key written with escapes */
        return bad(code, "bad_field", err, errlen,
                   "field \"seed\": write the key without escapes, or the seed as a string");
    int rc = exact_u64(t, tl, out);
    if (rc == -2)
        return bad(code, "bad_field", err, errlen,
                   "field \"seed\" = %.*s is out of range: allowed 0..18446744073709551615",
                   (int)(tl < 40 ? tl : 40), t);
    if (rc)
        return bad(code, "bad_field", err, errlen,
                   "field \"seed\" must be an unsigned 64-bit integer (0..18446744073709551615, "
                   "exact: no fraction)");
    return 0;
}

/* Offset of a \u0000 escape in valid JSON text, or -1. */
static long nul_escape_at(const char *b, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (b[i] != '\\')
            continue;
        if (b[i + 1] == 'u' && i + 5 < len && !strncmp(b + i + 2, "0000", 4))
            return (long)i;
        i++; /* the escaped character */
    }
    return -1;
}

enum { F_N, F_STEPS, F_SEED, F_STRATEGY, F_THRESHOLD, F_TEMPERATURE, F_LABEL, F_GUIDANCE,
       F_SAMPLER, F_TRACE, F_SUBSTITUTE, F_PRIORITY, F_PREVIEW, F_COUNT };
static const char *const FIELDS[F_COUNT] = { "n", "steps", "seed", "strategy", "threshold",
                                             "temperature", "label", "guidance", "sampler",
                                             "trace", "substitute", "priority",
                                             "preview_every" };
#define F_SAMPLE_COUNT F_PRIORITY /* the fields of every request; the rest are jobs' */

/* jobs: whether the job fields are taken (else they are unknown fields). */
static int decode_json(const uint8_t *body, size_t len, int n_classes, int jobs, raw_req *r,
                       const char **code, char *err, size_t errlen)
{
    const char *text = (const char *)body;
    size_t bad_at = utf8_valid_prefix(body, len);
    if (bad_at < len)
        return bad(code, "bad_json", err, errlen,
                   "body is not valid UTF-8 (byte %zu): JSON text must be UTF-8", bad_at);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root)
        return bad(code, "bad_json", err, errlen,
                   "body is not valid JSON (near byte %ld): send a JSON object such as "
                   "{\"n\": 4, \"strategy\": \"top-2\"}",
                   end ? (long)(end - text) : 0L);
    int st = 0;
    size_t after = skip_ws(text, len, (size_t)(end - text));
    long nul = -1;
    if (!cJSON_IsObject(root)) {
        st = bad(code, "bad_json", err, errlen, "body must be a JSON object");
    } else if (after < len) {
        st = bad(code, "bad_json", err, errlen,
                 "body has bytes after the JSON object (from byte %zu): send one object only",
                 after);
    } else if ((nul = nul_escape_at(text, len)) >= 0) {
        st = bad(code, "bad_json", err, errlen,
                 "a string holds \\u0000 (byte %ld): no field takes a NUL character", nul);
    }
    unsigned seen = 0;
    for (const cJSON *it = root->child; it && !st; it = it->next) {
        const char *k = it->string;
        const int n_fields = jobs ? F_COUNT : F_SAMPLE_COUNT;
        int f = 0;
        while (f < n_fields && strcmp(k, FIELDS[f]))
            f++;
        if (f == n_fields) {
            st = bad(code, "unknown_field", err, errlen,
                     "unknown field \"%.64s\": allowed n, steps, seed, strategy, threshold, "
                     "temperature, label, guidance, sampler, trace, substitute%s", k,
                     jobs ? ", priority, preview_every"
                          : " (priority and preview_every: POST /v1/jobs or an event stream)");
            break;
        }
        if (seen & 1u << f) {
            st = bad(code, "bad_field", err, errlen, "field \"%s\" appears twice: send it once",
                     k);
            break;
        }
        seen |= 1u << f;
        switch (f) {
        case F_N:
            r->has_n = 1;
            st = json_int(it, "n", n_classes, &r->n, code, err, errlen);
            break;
        case F_STEPS:
            r->has_steps = 1;
            st = json_int(it, "steps", n_classes, &r->steps, code, err, errlen);
            break;
        case F_SEED:
            r->has_seed = 1;
            st = json_seed(it, text, len, &r->seed, code, err, errlen);
            break;
        case F_STRATEGY:
        case F_SAMPLER:
            if (!cJSON_IsString(it) ||
                strlen(it->valuestring) >= (f == F_STRATEGY ? sizeof r->strategy : sizeof r->sampler)) {
                st = bad(code, "bad_field", err, errlen, "field \"%s\" must be a %s", k,
                         cJSON_IsString(it) ? "shorter string" : "string");
            } else if (f == F_STRATEGY) {
                r->has_strategy = 1;
                snprintf(r->strategy, sizeof r->strategy, "%s", it->valuestring);
            } else {
                r->has_sampler = 1;
                snprintf(r->sampler, sizeof r->sampler, "%s", it->valuestring);
            }
            break;
        case F_THRESHOLD:
            r->has_thr = 1;
            st = json_num(it, k, &r->thr, code, err, errlen);
            break;
        case F_TEMPERATURE:
            r->has_temp = 1;
            st = json_num(it, k, &r->temp, code, err, errlen);
            break;
        case F_GUIDANCE:
            r->has_guid = 1;
            st = json_num(it, k, &r->guid, code, err, errlen);
            break;
        case F_LABEL:
            if (cJSON_IsNull(it))
                break;
            if (cJSON_IsString(it)) {
                if (strlen(it->valuestring) >= sizeof r->label_name)
                    st = bad(code, "bad_field", err, errlen,
                             "field \"label\": a class name has at most %d bytes",
                             (int)sizeof r->label_name - 1);
                r->has_label_name = 1;
                snprintf(r->label_name, sizeof r->label_name, "%s", it->valuestring);
                break;
            }
            r->has_label = 1;
            st = json_int(it, "label", n_classes, &r->label, code, err, errlen);
            break;
        case F_TRACE:
        case F_SUBSTITUTE:
            if (!cJSON_IsBool(it))
                st = bad(code, "bad_field", err, errlen, "field \"%s\" must be true or false", k);
            *(f == F_TRACE ? &r->trace : &r->substitute) = cJSON_IsTrue(it);
            break;
        case F_PRIORITY:
            r->has_priority = 1;
            st = json_int(it, "priority", n_classes, &r->priority, code, err, errlen);
            break;
        case F_PREVIEW:
            r->has_preview = 1;
            st = json_int(it, "preview_every", n_classes, &r->preview_every, code, err, errlen);
            break;
        }
    }
    cJSON_Delete(root);
    return st;
}

static int decode_proto(const uint8_t *body, size_t len, int jobs, raw_req *r,
                        const char **code, char *err, size_t errlen)
{
    Ddm__V1__SampleRequest *m = ddm__v1__sample_request__unpack(NULL, len, body);
    if (!m)
        return bad(code, "bad_protobuf", err, errlen,
                   "body is not a valid ddm.v1.SampleRequest protobuf message");
    r->has_n = m->has_n, r->n = m->n;
    r->has_steps = m->has_steps, r->steps = m->steps;
    r->has_seed = m->has_seed, r->seed = m->seed;
    r->has_thr = m->has_threshold, r->thr = m->threshold;
    r->has_temp = m->has_temperature, r->temp = m->temperature;
    r->has_label = m->has_label, r->label = m->label;
    r->has_guid = m->has_guidance, r->guid = m->guidance;
    r->trace = m->has_trace && m->trace;
    r->substitute = m->has_substitute && m->substitute;
    if (jobs) {
        r->has_priority = m->has_priority, r->priority = m->priority;
        r->has_preview = m->has_preview_every, r->preview_every = m->preview_every;
    }
    int st = 0;
    if (m->has_label && m->label_name)
        st = bad(code, "bad_field", err, errlen,
                 "give the class as label (a number) or label_name, not both");
    else if (m->label_name && strlen(m->label_name) >= sizeof r->label_name)
        st = bad(code, "bad_field", err, errlen, "field \"label_name\": a class name has at "
                 "most %d bytes", (int)sizeof r->label_name - 1);
    else if (m->strategy && strlen(m->strategy) >= sizeof r->strategy)
        st = bad(code, "bad_field", err, errlen, "field \"strategy\" must be a shorter string");
    else if (m->sampler && strlen(m->sampler) >= sizeof r->sampler)
        st = bad(code, "bad_field", err, errlen, "field \"sampler\" must be a shorter string");
    else if ((r->has_thr && !isfinite(r->thr)) || (r->has_temp && !isfinite(r->temp)) ||
             (r->has_guid && !isfinite(r->guid)))
        st = bad(code, "bad_field", err, errlen,
                 "fields threshold, temperature and guidance must be finite numbers");
    if (!st && m->strategy) {
        r->has_strategy = 1;
        snprintf(r->strategy, sizeof r->strategy, "%s", m->strategy);
    }
    if (!st && m->label_name) {
        r->has_label_name = 1;
        snprintf(r->label_name, sizeof r->label_name, "%s", m->label_name);
    }
    if (!st && m->sampler) {
        r->has_sampler = 1;
        snprintf(r->sampler, sizeof r->sampler, "%s", m->sampler);
    }
    ddm__v1__sample_request__free_unpacked(m, NULL);
    return st;
}

/* r->label_name -> r->label: the index of that class name in shape, or a
 * message naming the valid names. */
static int resolve_label_name(raw_req *r, const model_shape *shape, int n_classes,
                              const char **code, char *err, size_t errlen)
{
    int k = shape ? model_class_index(shape, r->label_name) : -1;
    if (k >= 0) {
        r->has_label = 1;
        r->label = k;
        return 0;
    }
    if (n_classes == 0)
        return bad(code, "bad_field", err, errlen,
                   "field \"label\": this model is unconditional, omit it");
    if (!shape || shape->n_class_names == 0)
        return bad(code, "bad_field", err, errlen,
                   "field \"label\" = \"%.64s\": this model names no classes: give a number "
                   "0..%d", r->label_name, n_classes - 1);
    size_t at = (size_t)snprintf(err, errlen, "field \"label\" = \"%.64s\" is not a class of "
                                 "this model: use a number 0..%d or one of", r->label_name,
                                 n_classes - 1);
    for (int i = 0; i < shape->n_class_names && at < errlen; i++)
        at += (size_t)snprintf(err + at, errlen - at, "%s \"%s\"", i ? "," : "",
                               shape->class_names[i]);
    if (at >= errlen && errlen > 4)
        memcpy(err + errlen - 4, "...", 4);
    *code = "bad_field";
    return 400;
}

/* A 64-bit field value into an int: values beyond int stay beyond the range
 * sample_params_check allows, whatever their size. */
static int to_int(long long v)
{
    return v > INT_MAX ? INT_MAX : v < INT_MIN ? INT_MIN : (int)v;
}

int api_decode_sample(const char *content_type, const uint8_t *body, size_t len, int K,
                      int n_classes, const model_shape *shape, uint64_t *seed_state,
                      sample_params *p, api_job_fields *jf, const char **err_code, char *err,
                      size_t errlen)
{
    raw_req r;
    memset(&r, 0, sizeof r);
    int st;
    if (!content_type || is_type(content_type, "application/json")) {
        st = decode_json(body, len, n_classes, jf != NULL, &r, err_code, err, errlen);
    } else if (is_proto(content_type)) {
        st = decode_proto(body, len, jf != NULL, &r, err_code, err, errlen);
    } else {
        *err_code = "unsupported_media_type";
        snprintf(err, errlen,
                 "Content-Type \"%.64s\" is not supported: use application/json or "
                 "application/x-protobuf", content_type);
        return 415;
    }
    if (!st && r.has_label_name)
        st = resolve_label_name(&r, shape, n_classes, err_code, err, errlen);
    if (st)
        return st;

    sample_params_default(p, K);
    if (r.has_n)
        p->n = to_int(r.n);
    if (r.has_steps)
        p->steps = to_int(r.steps);
    if (r.has_label)
        p->label = r.label < 0 ? INT_MIN : to_int(r.label); /* -1 means none: not sendable */
    if (r.has_guid)
        p->guidance = (float)r.guid;
    if (r.has_sampler && sampler_parse(r.sampler, &p->sampler))
        return bad(err_code, "bad_field", err, errlen,
                   "field \"sampler\" = \"%.32s\": allowed euler or heun", r.sampler);
    char serr[256];
    const char *sname = r.has_strategy ? r.strategy : (K >= 2 ? "top-2" : "expert:0");
    if (strategy_parse(sname, K, NAN, NAN, &p->strat, serr, sizeof serr))
        return bad(err_code, "bad_field", err, errlen, "field \"strategy\": %s", serr);
    if (r.has_thr && (p->strat.kind == STRAT_THRESHOLD || p->strat.kind == STRAT_NUCLEUS))
        p->strat.threshold = (float)r.thr;
    if (r.has_temp)
        p->strat.temperature = (float)r.temp;
    p->trace = r.trace;
    p->substitute = r.substitute;
    if (r.has_priority)
        p->priority = to_int(r.priority);
    if (sample_params_check(p, n_classes, err, errlen)) {
        *err_code = "bad_field";
        return 400;
    }
    if (jf) {
        jf->preview_every = r.has_preview ? to_int(r.preview_every) : 0;
        if (jf->preview_every < 0 || jf->preview_every > SAMPLE_MAX_STEPS)
            return bad(err_code, "bad_field", err, errlen,
                       "field \"preview_every\" = %d is out of range: allowed %s",
                       jf->preview_every,
                       sample_field_range("preview_every", n_classes, serr, sizeof serr));
    }
    if (r.has_seed)
        p->seed = r.seed;
    else /* 53 bits, so the echoed seed survives JSON number parsing */
        p->seed = rng_splitmix64(seed_state) >> 11;
    return 0;
}

/* ---- Accept ------------------------------------------------------------------------------- */

/* How a media range matches a format's type: 3 exact, 2 type/star, 1 star/star, 0 not. */
static int range_match(const char *range, size_t rlen, const char *type)
{
    const char *slash = strchr(type, '/');
    if (rlen == strlen(type) && !strncasecmp(range, type, rlen))
        return 3;
    size_t major = (size_t)(slash - type);
    if (rlen == major + 2 && !strncasecmp(range, type, major + 1) && range[major + 1] == '*')
        return 2;
    return rlen == 3 && !strncmp(range, "*/*", 3) ? 1 : 0;
}

int api_response_format(const char *accept, const char *content_type, api_format *fmt)
{
    api_format req = is_proto(content_type) ? API_PROTO : API_JSON;
    *fmt = req;
    if (!accept || !*accept)
        return 0;
    /* the formats in tie order: the request's own first */
    static const struct { api_format f; const char *types[2]; } kinds[] = {
        { API_JSON, { "application/json", NULL } },
        { API_PROTO, { "application/x-protobuf", "application/protobuf" } },
        { API_PNG, { "image/png", NULL } },
    };
    double q[3] = { 0, 0, 0 };
    int spec[3] = { 0, 0, 0 }, pos[3] = { 0, 0, 0 };
    int index = 0;
    for (const char *s = accept; *s; index++) {
        size_t n = strcspn(s, ",");
        char el[128]; /* one element: "type/subtype ; q=0.5 ; ..." (longer ones are ignored) */
        if (n < sizeof el) {
            memcpy(el, s, n);
            el[n] = '\0';
            char *save = NULL, *range = strtok_r(el, ";", &save);
            double qv = 1.0;
            int valid = range != NULL;
            for (char *param; valid && (param = strtok_r(NULL, ";", &save));) {
                param += strspn(param, " \t");
                if ((param[0] == 'q' || param[0] == 'Q') && param[1] == '=') {
                    char *qe;
                    qv = strtod(param + 2, &qe);
                    qe += strspn(qe, " \t");
                    valid = qe != param + 2 && !*qe && qv >= 0 && qv <= 1;
                }
            }
            if (valid) {
                range += strspn(range, " \t");
                size_t rl = strlen(range);
                while (rl && (range[rl - 1] == ' ' || range[rl - 1] == '\t'))
                    rl--;
                for (int k = 0; k < 3; k++)
                    for (int t = 0; t < 2 && kinds[k].types[t]; t++) {
                        int sp = range_match(range, rl, kinds[k].types[t]);
                        if (sp > spec[k]) { /* the most specific range decides (RFC 9110) */
                            spec[k] = sp;
                            q[k] = qv;
                            pos[k] = index;
                        }
                    }
            }
        }
        s += n;
        if (*s == ',')
            s++;
    }
    int best = -1;
    for (int step = 0; step < 3; step++) {
        int k = step == 0 ? (int)req : step == (int)req ? 0 : step; /* request's format first */
        if (q[k] <= 0)
            continue;
        if (best < 0 || q[k] > q[best] || (q[k] == q[best] && pos[k] < pos[best]))
            best = k;
    }
    if (best < 0)
        return 406;
    *fmt = kinds[best].f;
    return 0;
}
