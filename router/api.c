/* api.c -- sampling API responses: JSON, protobuf and PNG grid encoding (see
 * api.h; api_decode.c reads requests). */
#include "router/api.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/png.h"
#include "common/rng.h"
#include "common/strbuf.h"
#include "ddm/v1/api.pb-c.h"

/* ---- response encoding -------------------------------------------------------------- */

static int channels_of(const api_result *r)
{
    return r->channels == 3 ? 3 : 1;
}

static int image_png(const api_result *r, int i, uint8_t **png, size_t *len, char *err,
                     size_t errlen)
{
    return pngio_encode_grid_ch(r->trajs[i]->x, 1, r->width, r->height, channels_of(r), 1, png,
                                len, err, errlen);
}

static void totals(const api_result *r, uint64_t *calls, uint64_t *by, uint64_t *subs)
{
    *calls = 0;
    *subs = 0;
    memset(by, 0, (size_t)r->K * sizeof *by);
    for (int i = 0; i < r->p->n; i++) {
        *calls += r->trajs[i]->rows;
        *subs += r->trajs[i]->substitutions;
        for (int k = 0; k < r->K; k++)
            by[k] += r->trajs[i]->rows_by_expert[k];
    }
}

static int encode_json(const api_result *r, uint8_t **body, size_t *len, char *err, size_t errlen)
{
    const sample_params *p = r->p;
    strbuf b = { 0 };
    char sname[32];
    strategy_name(&p->strat, sname, sizeof sname);
    uint64_t calls, by[STRAT_MAX_EXPERTS], subs;
    totals(r, &calls, by, &subs);
    strbuf_printf(&b, "{\"seed\":%llu,\"n\":%d,\"steps\":%d,\"strategy\":\"%s\",\"sampler\":\"%s\","
                      "\"width\":%d,\"height\":%d,\"channels\":%d,\"expert_calls\":%llu,"
                      "\"calls_by_expert\":[",
                  (unsigned long long)p->seed, p->n, p->steps, sname, sampler_name(p->sampler),
                  r->width, r->height, channels_of(r), (unsigned long long)calls);
    for (int k = 0; k < r->K; k++)
        strbuf_printf(&b, "%s%llu", k ? "," : "", (unsigned long long)by[k]);
    strbuf_printf(&b, "],\"substitutions\":%llu", (unsigned long long)subs);
    strbuf_printf(&b, ",\"timings\":{\"queue_ms\":%.3f,\"total_ms\":%.3f,\"router_ms\":%.3f,"
                      "\"expert_ms\":%.3f},\"images\":[",
                  r->queue_ms, r->total_ms, r->router_ms, r->expert_ms);
    int rc = 0;
    for (int i = 0; i < p->n && !rc && !b.oom; i++) {
        uint8_t *png;
        size_t plen;
        rc = image_png(r, i, &png, &plen, err, errlen);
        if (rc)
            break;
        strbuf_puts(&b, i ? ",\"" : "\"");
        strbuf_base64(&b, png, plen);
        strbuf_puts(&b, "\"");
        free(png);
    }
    strbuf_printf(&b, "]");
    if (p->trace) {
        strbuf_printf(&b, ",\"trace\":[");
        int evals = sample_evals(p), first = 1;
        for (int i = 0; i < p->n; i++) {
            for (int e = 0; e < evals && r->trajs[i]->trace; e++) {
                const trace_entry *te = &r->trajs[i]->trace[e];
                strbuf_printf(&b,
                              "%s{\"image\":%d,\"step\":%d,\"stage\":%d,\"t\":%.6g,"
                              "\"experts\":[",
                              first ? "" : ",", i, te->step, te->stage, te->t);
                first = 0;
                for (int j = 0; j < te->n_sel; j++)
                    strbuf_printf(&b, "%s%d", j ? "," : "", te->sel[j]);
                strbuf_printf(&b, "],\"weights\":[");
                for (int j = 0; j < te->n_sel; j++)
                    strbuf_printf(&b, "%s%.6g", j ? "," : "", te->w[j]);
                strbuf_printf(&b, "]");
                if (te->n_sub) {
                    strbuf_printf(&b, ",\"substitutions\":[");
                    for (int j = 0; j < te->n_sub; j++) {
                        strbuf_printf(&b, "%s{\"original\":%d", j ? "," : "", te->sub_orig[j]);
                        if (te->sub_new[j] != TRACE_DROPPED)
                            strbuf_printf(&b, ",\"expert\":%d", te->sub_new[j]);
                        strbuf_printf(&b, "}");
                    }
                    strbuf_printf(&b, "]");
                }
                strbuf_printf(&b, "}");
            }
        }
        strbuf_printf(&b, "]");
    }
    strbuf_printf(&b, "}\n");
    if (rc) {
        strbuf_free(&b);
        return rc;
    }
    *body = (uint8_t *)strbuf_take(&b, len);
    if (!*body)
        return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory encoding the response");
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
    uint64_t calls, by[STRAT_MAX_EXPERTS], subs;
    totals(r, &calls, by, &subs);
    int evals = sample_evals(p);
    size_t ntrace = p->trace ? (size_t)p->n * (size_t)evals : 0;
    ProtobufCBinaryData *imgs = calloc((size_t)p->n, sizeof *imgs);
    Ddm__V1__TraceStep *steps = ntrace ? calloc(ntrace, sizeof *steps) : NULL;
    Ddm__V1__TraceStep **stepp = ntrace ? calloc(ntrace, sizeof *stepp) : NULL;
    uint32_t *sel = ntrace ? calloc(ntrace * STRAT_MAX_EXPERTS, sizeof *sel) : NULL;
    size_t nsub = 0; /* substitutions in the trace */
    for (size_t s = 0; s < ntrace; s++)
        nsub += r->trajs[s / (size_t)evals]->trace[s % (size_t)evals].n_sub;
    Ddm__V1__Substitution *subv = nsub ? calloc(nsub, sizeof *subv) : NULL;
    Ddm__V1__Substitution **subp = nsub ? calloc(nsub, sizeof *subp) : NULL;
    int rc = 0;
    if (!imgs || (ntrace && (!steps || !stepp || !sel)) || (nsub && (!subv || !subp))) {
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
    m.has_channels = 1, m.channels = (uint32_t)channels_of(r);
    m.has_substitutions = 1, m.substitutions = subs;
    size_t isub = 0;
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
        ts->has_stage = 1, ts->stage = te->stage;
        ts->n_substitutions = te->n_sub;
        ts->substitutions = te->n_sub ? subp + isub : NULL;
        for (int j = 0; j < te->n_sub; j++, isub++) {
            Ddm__V1__Substitution *sb = &subv[isub];
            ddm__v1__substitution__init(sb);
            sb->has_original = 1, sb->original = te->sub_orig[j];
            if (te->sub_new[j] != TRACE_DROPPED)
                sb->has_expert = 1, sb->expert = te->sub_new[j];
            subp[isub] = sb;
        }
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
    free(subv);
    free(subp);
    return rc;
}

int api_encode_grid(const float *imgs, int n, int width, int height, int channels, uint8_t **png,
                    size_t *len, char *err, size_t errlen)
{
    int cols = 1;
    while (cols * cols < n)
        cols++;
    return pngio_encode_grid_ch(imgs, n, width, height, channels, cols, png, len, err, errlen);
}

int api_encode_sample(api_format fmt, const api_result *r, uint8_t **body, size_t *len,
                      const char **content_type, char *err, size_t errlen)
{
    if (fmt == API_PNG) {
        const sample_params *p = r->p;
        size_t dim = (size_t)r->width * (size_t)r->height * (size_t)channels_of(r);
        float *all = malloc((size_t)p->n * dim * sizeof *all);
        if (!all) {
            snprintf(err, errlen, "out of memory encoding the response");
            return DDM_ENOMEM;
        }
        for (int i = 0; i < p->n; i++)
            memcpy(all + (size_t)i * dim, r->trajs[i]->x, dim * sizeof *all);
        int rc = api_encode_grid(all, p->n, r->width, r->height, channels_of(r), body, len,
                                 err, errlen);
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
