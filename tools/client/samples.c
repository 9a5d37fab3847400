/* samples.c -- POST /v1/samples bodies and responses on the client side (see samples.h). */
#define _GNU_SOURCE /* memmem */
#include "tools/client/samples.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "common/base64.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/png.h"
#include "ddm/v1/api.pb-c.h"

/* ---- requests ------------------------------------------------------------------------ */

static int encode_json(const samples_req *r, uint8_t **body, size_t *len)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return DDM_ENOMEM;
    int ok = 1;
    if (r->n)
        ok &= !!cJSON_AddNumberToObject(o, "n", (double)r->n);
    if (r->steps)
        ok &= !!cJSON_AddNumberToObject(o, "steps", (double)r->steps);
    if (r->has_seed) {
        if (r->seed <= (1ull << 53)) {
            ok &= !!cJSON_AddNumberToObject(o, "seed", (double)r->seed);
        } else { /* beyond a double's exact integers: the server takes a decimal string */
            char s[24];
            snprintf(s, sizeof s, "%llu", (unsigned long long)r->seed);
            ok &= !!cJSON_AddStringToObject(o, "seed", s);
        }
    }
    if (r->strategy)
        ok &= !!cJSON_AddStringToObject(o, "strategy", r->strategy);
    if (r->sampler)
        ok &= !!cJSON_AddStringToObject(o, "sampler", r->sampler);
    if (r->has_threshold)
        ok &= !!cJSON_AddNumberToObject(o, "threshold", r->threshold);
    if (r->has_temperature)
        ok &= !!cJSON_AddNumberToObject(o, "temperature", r->temperature);
    if (r->label_name)
        ok &= !!cJSON_AddStringToObject(o, "label", r->label_name);
    else if (r->has_label)
        ok &= !!cJSON_AddNumberToObject(o, "label", (double)r->label);
    if (r->has_guidance)
        ok &= !!cJSON_AddNumberToObject(o, "guidance", r->guidance);
    if (r->trace)
        ok &= !!cJSON_AddTrueToObject(o, "trace");
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s)
        return DDM_ENOMEM;
    *body = (uint8_t *)s;
    *len = strlen(s);
    return 0;
}

static int encode_proto(const samples_req *r, uint8_t **body, size_t *len)
{
    Ddm__V1__SampleRequest m = DDM__V1__SAMPLE_REQUEST__INIT;
    if (r->n)
        m.has_n = 1, m.n = (uint32_t)r->n;
    if (r->steps)
        m.has_steps = 1, m.steps = (uint32_t)r->steps;
    if (r->has_seed)
        m.has_seed = 1, m.seed = r->seed;
    m.strategy = (char *)r->strategy;
    m.sampler = (char *)r->sampler;
    if (r->has_threshold)
        m.has_threshold = 1, m.threshold = (float)r->threshold;
    if (r->has_temperature)
        m.has_temperature = 1, m.temperature = (float)r->temperature;
    if (r->label_name)
        m.label_name = (char *)r->label_name;
    else if (r->has_label)
        m.has_label = 1, m.label = (int32_t)r->label;
    if (r->has_guidance)
        m.has_guidance = 1, m.guidance = (float)r->guidance;
    if (r->trace)
        m.has_trace = 1, m.trace = 1;
    *len = ddm__v1__sample_request__get_packed_size(&m);
    *body = malloc(*len ? *len : 1);
    if (!*body)
        return DDM_ENOMEM;
    ddm__v1__sample_request__pack(&m, *body);
    return 0;
}

int samples_encode(const samples_req *r, int proto, uint8_t **body, size_t *len)
{
    *body = NULL;
    *len = 0;
    return proto ? encode_proto(r, body, len) : encode_json(r, body, len);
}

/* ---- responses ----------------------------------------------------------------------- */

void samples_resp_free(samples_resp *r)
{
    for (int i = 0; r->png && i < r->n_images; i++)
        free(r->png[i]);
    free(r->png);
    free(r->png_len);
    free(r->trace);
    free(r->meta_json);
    memset(r, 0, sizeof *r);
}

static int alloc_images(samples_resp *r, int n)
{
    r->png = calloc((size_t)(n ? n : 1), sizeof *r->png);
    r->png_len = calloc((size_t)(n ? n : 1), sizeof *r->png_len);
    if (!r->png || !r->png_len)
        return DDM_ENOMEM;
    r->n_images = n;
    return 0;
}

static double num(const cJSON *o, const char *key, double def)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? it->valuedouble : def;
}

static void str(const cJSON *o, const char *key, char *dst, size_t len)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    snprintf(dst, len, "%s", cJSON_IsString(it) ? it->valuestring : "");
}

/* A seed above 2^53 does not survive cJSON's doubles: read its digits from the
 * body (the first "seed" key; the server writes it at the top level). */
static uint64_t exact_seed(const char *body, size_t len, double approx)
{
    if (approx < 9007199254740992.0)
        return (uint64_t)approx;
    const char *key = memmem(body, len, "\"seed\"", 6);
    if (key) {
        const char *p = key + 6, *end = body + len;
        while (p < end && (*p == ' ' || *p == ':'))
            p++;
        uint64_t v = 0;
        int digits = 0;
        while (p < end && *p >= '0' && *p <= '9' && digits < 20) {
            v = v * 10 + (uint64_t)(*p++ - '0');
            digits++;
        }
        if (digits)
            return v;
    }
    return (uint64_t)approx;
}

static int decode_json_trace(const cJSON *arr, samples_resp *r, char *err, size_t errlen)
{
    int n = cJSON_GetArraySize(arr);
    r->trace = calloc((size_t)(n ? n : 1), sizeof *r->trace);
    if (!r->trace)
        return DDM_ENOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        samples_trace *t = &r->trace[r->n_trace];
        t->image = (int)num(it, "image", 0);
        t->step = (int)num(it, "step", 0);
        t->stage = (int)num(it, "stage", 0);
        t->t = (float)num(it, "t", 0);
        const cJSON *ex = cJSON_GetObjectItemCaseSensitive(it, "experts");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(it, "weights");
        int ne = cJSON_GetArraySize(ex);
        if (!cJSON_IsArray(ex) || ne > SAMPLES_MAX_EXPERTS || cJSON_GetArraySize(w) != ne) {
            snprintf(err, errlen, "response trace entry %d has malformed experts/weights",
                     r->n_trace);
            return DDM_EFORMAT;
        }
        for (int j = 0; j < ne; j++) {
            const cJSON *e = cJSON_GetArrayItem(ex, j), *wj = cJSON_GetArrayItem(w, j);
            t->experts[j] = cJSON_IsNumber(e) ? (int)e->valuedouble : -1;
            t->weights[j] = cJSON_IsNumber(wj) ? (float)wj->valuedouble : NAN;
        }
        t->n_sel = ne;
        r->n_trace++;
    }
    return 0;
}

static int decode_json(const uint8_t *body, size_t len, samples_resp *r, char *err,
                       size_t errlen)
{
    cJSON *root = cJSON_ParseWithLength((const char *)body, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        snprintf(err, errlen, "response is not a JSON object (%zu bytes)", len);
        return DDM_EFORMAT;
    }
    int rc = 0;
    cJSON *imgs = cJSON_DetachItemFromObjectCaseSensitive(root, "images");
    if (!cJSON_IsArray(imgs)) {
        snprintf(err, errlen, "response has no \"images\" array");
        rc = DDM_EFORMAT;
        goto done;
    }
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(root, "seed");
    if (cJSON_IsNumber(seed) && seed->valuedouble >= 0) {
        r->seed = exact_seed((const char *)body, len, seed->valuedouble);
        /* keep every digit in meta_json too */
        char digits[24];
        snprintf(digits, sizeof digits, "%llu", (unsigned long long)r->seed);
        cJSON *raw = cJSON_CreateRaw(digits);
        if (!raw || !cJSON_ReplaceItemInObjectCaseSensitive(root, "seed", raw)) {
            cJSON_Delete(raw);
            rc = DDM_ENOMEM;
            goto done;
        }
    }
    r->expert_calls = (uint64_t)num(root, "expert_calls", 0);
    const cJSON *by = cJSON_GetObjectItemCaseSensitive(root, "calls_by_expert");
    const cJSON *it;
    cJSON_ArrayForEach(it, by) {
        if (r->K < SAMPLES_MAX_EXPERTS)
            r->calls_by_expert[r->K++] = cJSON_IsNumber(it) ? (uint64_t)it->valuedouble : 0;
    }
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "timings");
    r->queue_ms = num(tm, "queue_ms", 0);
    r->total_ms = num(tm, "total_ms", 0);
    r->router_ms = num(tm, "router_ms", 0);
    r->expert_ms = num(tm, "expert_ms", 0);
    str(root, "strategy", r->strategy, sizeof r->strategy);
    str(root, "sampler", r->sampler, sizeof r->sampler);
    r->steps = (int)num(root, "steps", 0);
    r->width = (int)num(root, "width", 0);
    r->height = (int)num(root, "height", 0);
    r->channels = (int)num(root, "channels", 1);
    const cJSON *trace = cJSON_GetObjectItemCaseSensitive(root, "trace");
    if (cJSON_IsArray(trace) && (rc = decode_json_trace(trace, r, err, errlen)))
        goto done;
    if ((rc = alloc_images(r, cJSON_GetArraySize(imgs))))
        goto done;
    int i = 0;
    cJSON_ArrayForEach(it, imgs) {
        size_t slen = cJSON_IsString(it) ? strlen(it->valuestring) : 0;
        r->png[i] = malloc(slen / 4 * 3 + 1);
        if (!r->png[i]) {
            rc = DDM_ENOMEM;
            goto done;
        }
        long n = cJSON_IsString(it) ? base64_decode(it->valuestring, slen, r->png[i]) : -1;
        if (n <= 0) {
            snprintf(err, errlen, "response image %d is not a base64 string", i);
            rc = DDM_EFORMAT;
            goto done;
        }
        r->png_len[i++] = (size_t)n;
    }
    r->meta_json = cJSON_Print(root);
    if (!r->meta_json)
        rc = DDM_ENOMEM;
done:
    cJSON_Delete(imgs);
    cJSON_Delete(root);
    return rc;
}

/* The protobuf response as JSON in the server's JSON field names, for --json. */
static char *proto_meta_json(const Ddm__V1__SampleResponse *m)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    if (m->has_seed) {
        char s[24];
        snprintf(s, sizeof s, "%llu", (unsigned long long)m->seed);
        cJSON_AddRawToObject(o, "seed", s);
    }
    cJSON_AddNumberToObject(o, "n", (double)m->n_images);
    if (m->has_steps)
        cJSON_AddNumberToObject(o, "steps", m->steps);
    if (m->strategy)
        cJSON_AddStringToObject(o, "strategy", m->strategy);
    if (m->sampler)
        cJSON_AddStringToObject(o, "sampler", m->sampler);
    if (m->has_width)
        cJSON_AddNumberToObject(o, "width", m->width);
    if (m->has_height)
        cJSON_AddNumberToObject(o, "height", m->height);
    if (m->has_channels)
        cJSON_AddNumberToObject(o, "channels", m->channels);
    if (m->has_expert_calls)
        cJSON_AddNumberToObject(o, "expert_calls", (double)m->expert_calls);
    cJSON *by = cJSON_AddArrayToObject(o, "calls_by_expert");
    for (size_t k = 0; by && k < m->n_calls_by_expert; k++)
        cJSON_AddItemToArray(by, cJSON_CreateNumber((double)m->calls_by_expert[k]));
    if (m->timings) {
        cJSON *t = cJSON_AddObjectToObject(o, "timings");
        if (t) {
            cJSON_AddNumberToObject(t, "queue_ms", m->timings->queue_ms);
            cJSON_AddNumberToObject(t, "total_ms", m->timings->total_ms);
            cJSON_AddNumberToObject(t, "router_ms", m->timings->router_ms);
            cJSON_AddNumberToObject(t, "expert_ms", m->timings->expert_ms);
        }
    }
    if (m->n_trace) {
        cJSON *tr = cJSON_AddArrayToObject(o, "trace");
        for (size_t s = 0; tr && s < m->n_trace; s++) {
            const Ddm__V1__TraceStep *ts = m->trace[s];
            cJSON *e = cJSON_CreateObject();
            if (!e)
                break;
            cJSON_AddItemToArray(tr, e);
            cJSON_AddNumberToObject(e, "image", ts->image);
            cJSON_AddNumberToObject(e, "step", ts->step);
            cJSON_AddNumberToObject(e, "t", ts->t);
            cJSON *ex = cJSON_AddArrayToObject(e, "experts");
            for (size_t j = 0; ex && j < ts->n_experts; j++)
                cJSON_AddItemToArray(ex, cJSON_CreateNumber(ts->experts[j]));
            cJSON *w = cJSON_AddArrayToObject(e, "weights");
            for (size_t j = 0; w && j < ts->n_weights; j++)
                cJSON_AddItemToArray(w, cJSON_CreateNumber(ts->weights[j]));
        }
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

static int decode_proto(const uint8_t *body, size_t len, samples_resp *r, char *err,
                        size_t errlen)
{
    Ddm__V1__SampleResponse *m = ddm__v1__sample_response__unpack(NULL, len, body);
    if (!m) {
        snprintf(err, errlen, "response is not a valid ddm.v1.SampleResponse (%zu bytes)", len);
        return DDM_EFORMAT;
    }
    int rc = 0;
    r->seed = m->seed;
    r->expert_calls = m->expert_calls;
    for (size_t k = 0; k < m->n_calls_by_expert && r->K < SAMPLES_MAX_EXPERTS; k++)
        r->calls_by_expert[r->K++] = m->calls_by_expert[k];
    if (m->timings) {
        r->queue_ms = m->timings->queue_ms;
        r->total_ms = m->timings->total_ms;
        r->router_ms = m->timings->router_ms;
        r->expert_ms = m->timings->expert_ms;
    }
    snprintf(r->strategy, sizeof r->strategy, "%s", m->strategy ? m->strategy : "");
    snprintf(r->sampler, sizeof r->sampler, "%s", m->sampler ? m->sampler : "");
    r->steps = (int)m->steps;
    r->width = (int)m->width;
    r->height = (int)m->height;
    r->channels = m->has_channels ? (int)m->channels : 1;
    if (m->n_trace) {
        r->trace = calloc(m->n_trace, sizeof *r->trace);
        if (!r->trace) {
            rc = DDM_ENOMEM;
            goto done;
        }
        for (size_t s = 0; s < m->n_trace; s++) {
            const Ddm__V1__TraceStep *ts = m->trace[s];
            samples_trace *t = &r->trace[s];
            if (ts->n_experts > SAMPLES_MAX_EXPERTS || ts->n_weights != ts->n_experts) {
                snprintf(err, errlen, "response trace entry %zu has malformed experts/weights", s);
                rc = DDM_EFORMAT;
                goto done;
            }
            t->image = (int)ts->image;
            t->step = (int)ts->step;
            t->t = ts->t;
            t->n_sel = (int)ts->n_experts;
            for (size_t j = 0; j < ts->n_experts; j++) {
                t->experts[j] = (int)ts->experts[j];
                t->weights[j] = ts->weights[j];
            }
            r->n_trace++;
        }
    }
    if ((rc = alloc_images(r, (int)m->n_images)))
        goto done;
    for (size_t i = 0; i < m->n_images; i++) {
        r->png[i] = malloc(m->images[i].len ? m->images[i].len : 1);
        if (!r->png[i]) {
            rc = DDM_ENOMEM;
            goto done;
        }
        memcpy(r->png[i], m->images[i].data, m->images[i].len);
        r->png_len[i] = m->images[i].len;
    }
    if (!(r->meta_json = proto_meta_json(m)))
        rc = DDM_ENOMEM;
done:
    ddm__v1__sample_response__free_unpacked(m, NULL);
    return rc;
}

int samples_decode(const char *content_type, const uint8_t *body, size_t len, samples_resp *out,
                   char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int proto = content_type && (!strncasecmp(content_type, "application/x-protobuf", 22) ||
                                 !strncasecmp(content_type, "application/protobuf", 20));
    int rc = proto ? decode_proto(body, len, out, err, errlen)
                   : decode_json(body, len, out, err, errlen);
    if (rc == DDM_ENOMEM)
        snprintf(err, errlen, "out of memory decoding a %zu-byte response", len);
    if (rc)
        samples_resp_free(out);
    return rc;
}

/* ---- writing images ------------------------------------------------------------------ */

int samples_grid_cols(int n)
{
    int cols = 1;
    while (cols * cols < n)
        cols++;
    return cols;
}

int samples_write_grid(const samples_resp *r, const char *path, int cols, char *err,
                       size_t errlen)
{
    if (r->n_images < 1) {
        snprintf(err, errlen, "the response holds no images to write to %s", path);
        return DDM_EINVAL;
    }
    if (cols <= 0)
        cols = samples_grid_cols(r->n_images);
    int w = 0, h = 0, rc = 0, ch = r->channels == 3 ? 3 : 1;
    float *all = NULL;
    pngio_opts po = { .channels = ch };
    for (int i = 0; i < r->n_images && !rc; i++) {
        pngio_image img;
        char perr[256];
        rc = pngio_decode(r->png[i], r->png_len[i], &po, &img, perr, sizeof perr);
        if (rc) {
            snprintf(err, errlen, "response image %d: %s", i, perr);
            break;
        }
        if (i == 0) {
            w = img.width, h = img.height;
            all = malloc((size_t)r->n_images * (size_t)w * (size_t)h * ch * sizeof *all);
            if (!all) {
                snprintf(err, errlen, "out of memory for %d images of %dx%d", r->n_images, w, h);
                rc = DDM_ENOMEM;
            }
        } else if (img.width != w || img.height != h) {
            snprintf(err, errlen, "response image %d is %dx%d but image 0 is %dx%d", i,
                     img.width, img.height, w, h);
            rc = DDM_EMISMATCH;
        }
        if (!rc) {
            /* bytes back to [-1, 1]; pngio maps them to the same bytes again */
            size_t n = (size_t)w * (size_t)h * ch;
            float *dst = all + (size_t)i * n;
            for (size_t p = 0; p < n; p++)
                dst[p] = (float)img.pix[p] / 127.5f - 1.0f;
        }
        pngio_image_free(&img);
    }
    if (!rc)
        rc = pngio_write_grid_ch(path, all, r->n_images, w, h, ch, cols, err, errlen);
    free(all);
    return rc;
}

int samples_write_dir(const samples_resp *r, const char *dir, const char *prefix, char *err,
                      size_t errlen)
{
    if (mkdir(dir, 0777) && errno != EEXIST) {
        int e = errno;
        snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(e));
        return -e;
    }
    for (int i = 0; i < r->n_images; i++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s%03d.png", dir, prefix, i) >= sizeof path) {
            snprintf(err, errlen, "output path under %s is too long", dir);
            return DDM_EINVAL;
        }
        int rc = fs_write_file(path, r->png[i], r->png_len[i], err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}
