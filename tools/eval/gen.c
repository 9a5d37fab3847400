/* gen.c -- samples from the in-process sampler or a ddm-router (see gen.h). */
#include "tools/eval/gen.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/err.h"
#include "common/png.h"
#include "server/httpc.h"
#include "tools/client/cli.h"
#include "tools/client/samples.h"

struct gen_source {
    ensemble *set;       /* in-process expert set, or NULL */
    ensemble *mono;      /* in-process monolith, or NULL */
    httpc *http;         /* URL source, or NULL */
    char url[256];
    int K, dim, classes;
};

void gen_spec_init(gen_spec *sp, const char *name)
{
    memset(sp, 0, sizeof *sp);
    snprintf(sp->name, sizeof sp->name, "%s", name);
    sp->monolith = strcmp(name, "monolith") == 0;
    snprintf(sp->strategy, sizeof sp->strategy, "%s", sp->monolith ? "expert:0" : name);
    sp->threshold = NAN;
    sp->temperature = NAN;
    char *at = strchr(sp->strategy, '@');
    if (at) { /* "full@0.5": the router's softmax at temperature 0.5 */
        char *end;
        double t = strtod(at + 1, &end);
        sp->temperature = (at[1] && !*end) ? (float)t : -1.0f; /* -1: refused by the parse */
        *at = '\0';
    }
    sp->steps = 50;
    sp->guidance = 1.0f;
}

uint64_t gen_request_seed(uint64_t run_seed, int label, int chunk)
{
    return 10000 * run_seed + 100 * (uint64_t)(label + 1) + (uint64_t)chunk;
}

int gen_spec_strategy(const gen_spec *sp, int K, strategy *out, char *err, size_t errlen)
{
    if (sp->monolith)
        return strategy_parse("expert:0", 1, NAN, NAN, out, err, errlen);
    return strategy_parse(sp->strategy, K, sp->threshold, sp->temperature, out, err, errlen);
}

void gen_quantize(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t b;
        pngio_grid_render(&x[i], 1, 1, 1, 1, &b); /* the server's own float -> byte */
        x[i] = (float)b * (2.0f / 255.0f) - 1.0f;
    }
}

gen_source *gen_open_local(const char *models_dir, const char *monolith_path, char *err,
                           size_t errlen)
{
    gen_source *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->set = ensemble_open(models_dir, err, errlen);
    if (!g->set) {
        free(g);
        return NULL;
    }
    g->K = g->set->K;
    g->dim = g->set->dim;
    g->classes = g->set->n_classes;
    char path[4096];
    struct stat sb;
    if (monolith_path)
        snprintf(path, sizeof path, "%s", monolith_path);
    else
        snprintf(path, sizeof path, "%s/monolith.safetensors", models_dir);
    if (monolith_path || stat(path, &sb) == 0) {
        g->mono = ensemble_open_single(path, err, errlen);
        if (!g->mono || g->mono->dim != g->dim || g->mono->n_classes != g->classes) {
            if (g->mono)
                snprintf(err, errlen, "%s has dim %d and %d classes, the expert set %d and %d",
                         path, g->mono->dim, g->mono->n_classes, g->dim, g->classes);
            gen_close(g);
            return NULL;
        }
    }
    return g;
}

gen_source *gen_open_url(const char *url, int timeout_ms, char *err, size_t errlen)
{
    char hp[256];
    if (cli_url_hostport(url, hp, sizeof hp, err, errlen))
        return NULL;
    gen_source *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(g->url, sizeof g->url, "%s", url);
    if (httpc_open(hp, timeout_ms, &g->http, err, errlen)) {
        free(g);
        return NULL;
    }
    httpc_response resp;
    int rc = httpc_request(g->http, "GET", "/v1/experts", NULL, 0, NULL, 0, &resp);
    if (rc || resp.status != 200) {
        char msg[512] = "";
        if (rc)
            snprintf(msg, sizeof msg, "%s", ddm_strerror(rc));
        else
            cli_error_message(&resp, msg, sizeof msg);
        snprintf(err, errlen, "GET %s/v1/experts: %s (is ddm-router running there?)", url, msg);
        httpc_response_free(&resp);
        gen_close(g);
        return NULL;
    }
    cJSON *o = cJSON_ParseWithLength(resp.body, resp.body_len);
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "num_experts");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "dim");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "num_classes");
    if (cJSON_IsNumber(k) && cJSON_IsNumber(d) && cJSON_IsNumber(c)) {
        g->K = k->valueint;
        g->dim = d->valueint;
        g->classes = c->valueint;
    }
    cJSON_Delete(o);
    httpc_response_free(&resp);
    if (g->K < 1 || g->K > STRAT_MAX_EXPERTS || g->dim < 1 || g->classes < 0) {
        snprintf(err, errlen, "GET %s/v1/experts: no num_experts/dim/num_classes in the answer; "
                 "is this a ddm-router?", url);
        gen_close(g);
        return NULL;
    }
    return g;
}

void gen_close(gen_source *g)
{
    if (!g)
        return;
    ensemble_close(g->set);
    ensemble_close(g->mono);
    httpc_close(g->http);
    free(g);
}

int gen_K(const gen_source *g) { return g->K; }
int gen_dim(const gen_source *g) { return g->dim; }
int gen_classes(const gen_source *g) { return g->classes; }
int gen_has_monolith(const gen_source *g) { return g->mono != NULL; }
ensemble *gen_ensemble(gen_source *g) { return g->set; }
ensemble *gen_monolith(gen_source *g) { return g->mono; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One request of n <= GEN_CHUNK images in-process. */
static int draw_local(gen_source *g, const gen_spec *sp, int label, uint64_t seed, int n,
                      float *out, gen_stats *st, char *err, size_t errlen)
{
    ensemble *e = sp->monolith ? g->mono : g->set;
    if (!e) {
        snprintf(err, errlen, "no monolith to sample: put monolith.safetensors beside the "
                 "experts or pass --monolith PATH");
        return DDM_ENOTFOUND;
    }
    sample_params p;
    sample_params_default(&p, e->K);
    p.n = n;
    p.steps = sp->steps;
    p.seed = seed;
    p.label = label;
    p.guidance = label >= 0 ? sp->guidance : 1.0f;
    int rc = gen_spec_strategy(sp, e->K, &p.strat, err, errlen);
    rc = rc ? rc : sample_params_check(&p, e->n_classes, err, errlen);
    if (rc)
        return rc;
    sample_stats ss;
    rc = ensemble_sample(e, &p, out, &ss, NULL);
    if (rc) {
        snprintf(err, errlen, "%s: in-process sampling failed: %s", sp->name, ddm_strerror(rc));
        return rc;
    }
    if (st) {
        st->rows += (double)ss.rows;
        for (int k = 0; k < e->K && k < STRAT_MAX_EXPERTS; k++)
            st->rows_by_expert[k] += (double)ss.rows_by_expert[k];
        st->switches += ss.switches * n;
        st->seconds += ss.seconds;
    }
    return 0;
}

/* Routing switches of one response's trace (entries grouped by image, in order). */
static double trace_switches(const samples_resp *r)
{
    double sw = 0;
    int prev_img = -1;
    uint64_t prev = 0;
    for (int i = 0; i < r->n_trace; i++) {
        const samples_trace *t = &r->trace[i];
        uint64_t m = 0;
        for (int j = 0; j < t->n_sel; j++)
            if (t->experts[j] >= 0 && t->experts[j] < 64)
                m |= 1ull << t->experts[j];
        if (t->image == prev_img && m != prev)
            sw += 1;
        prev_img = t->image;
        prev = m;
    }
    return sw;
}

/* One request of n <= GEN_CHUNK images from the router. */
static int draw_url(gen_source *g, const gen_spec *sp, int label, uint64_t seed, int n, float *out,
                    gen_stats *st, char *err, size_t errlen)
{
    if (sp->monolith) {
        snprintf(err, errlen, "the monolith is not served by a ddm-router; drop it from --url runs");
        return DDM_EINVAL;
    }
    samples_req r = { 0 };
    r.n = n;
    r.steps = sp->steps;
    r.has_seed = 1;
    r.seed = seed;
    r.strategy = sp->strategy;
    r.has_threshold = !isnan(sp->threshold);
    r.threshold = sp->threshold;
    r.has_temperature = !isnan(sp->temperature);
    r.temperature = sp->temperature;
    r.has_label = label >= 0;
    r.label = label;
    r.has_guidance = label >= 0;
    r.guidance = sp->guidance;
    r.trace = 1;
    uint8_t *body = NULL;
    size_t len = 0;
    if (samples_encode(&r, 0, &body, &len)) {
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    httpc_header h[] = { { "Content-Type", "application/json" } };
    httpc_response resp;
    double t0 = now_s();
    int rc = httpc_request(g->http, "POST", "/v1/samples", h, 1, body, len, &resp);
    double secs = now_s() - t0;
    free(body);
    if (rc) {
        snprintf(err, errlen, "POST %s/v1/samples: %s%s", g->url, ddm_strerror(rc),
                 rc == DDM_ETIMEDOUT ? " (raise --timeout)" : "");
        httpc_response_free(&resp);
        return rc;
    }
    if (resp.status != 200) {
        char msg[512];
        cli_error_message(&resp, msg, sizeof msg);
        snprintf(err, errlen, "POST %s/v1/samples (%s): HTTP %d: %s", g->url, sp->name,
                 resp.status, msg);
        httpc_response_free(&resp);
        return DDM_EPROTO;
    }
    samples_resp sr;
    rc = samples_decode(httpc_response_header(&resp, "Content-Type"), (const uint8_t *)resp.body,
                        resp.body_len, &sr, err, errlen);
    httpc_response_free(&resp);
    if (rc)
        return rc;
    if (sr.n_images != n) {
        snprintf(err, errlen, "%s: asked for %d images, the router sent %d", g->url, n,
                 sr.n_images);
        rc = DDM_EPROTO;
    }
    pngio_opts po = { .channels = sr.channels == 3 ? 3 : 1 }; /* grey or RGB, as served */
    for (int i = 0; i < n && !rc; i++) {
        pngio_image img;
        rc = pngio_decode(sr.png[i], sr.png_len[i], &po, &img, err, errlen);
        if (!rc && img.width * img.height * img.channels != g->dim) {
            snprintf(err, errlen, "%s: image %d is %dx%dx%d, the set's latents have %d values",
                     g->url, i, img.width, img.height, img.channels, g->dim);
            rc = DDM_EPROTO;
        }
        for (int d = 0; d < g->dim && !rc; d++)
            out[(size_t)i * g->dim + d] = (float)img.pix[d] * (2.0f / 255.0f) - 1.0f;
        pngio_image_free(&img);
    }
    if (!rc && st) {
        st->rows += (double)sr.expert_calls;
        for (int k = 0; k < sr.K && k < STRAT_MAX_EXPERTS; k++)
            st->rows_by_expert[k] += (double)sr.calls_by_expert[k];
        st->switches += trace_switches(&sr);
        st->seconds += secs;
    }
    samples_resp_free(&sr);
    return rc;
}

int gen_draw(gen_source *g, const gen_spec *sp, int label, uint64_t run_seed, long n, float *out,
             gen_stats *st, char *err, size_t errlen)
{
    for (long i0 = 0, ch = 0; i0 < n; i0 += GEN_CHUNK, ch++) {
        int m = n - i0 < GEN_CHUNK ? (int)(n - i0) : GEN_CHUNK;
        uint64_t seed = gen_request_seed(run_seed, label, (int)ch);
        float *o = out + (size_t)i0 * (size_t)g->dim;
        int rc = g->http ? draw_url(g, sp, label, seed, m, o, st, err, errlen)
                         : draw_local(g, sp, label, seed, m, o, st, err, errlen);
        if (rc)
            return rc;
        if (!g->http)
            gen_quantize(o, (size_t)m * (size_t)g->dim);
    }
    if (st)
        st->images += n;
    return 0;
}

int gen_draw_classes(gen_source *g, const gen_spec *sp, uint64_t run_seed, long n, float *out,
                     int *labels, gen_stats *st, char *err, size_t errlen)
{
    int C = g->classes;
    if (C < 1) {
        snprintf(err, errlen, "the expert set is unconditional (no label classes): "
                 "class-conditional sampling needs experts trained with labels");
        return DDM_EINVAL;
    }
    for (int c = 0; c < C; c++) {
        long a = (long)c * n / C, b = (long)(c + 1) * n / C;
        if (b <= a)
            continue;
        int rc = gen_draw(g, sp, c, run_seed, b - a, out + (size_t)a * (size_t)g->dim, st, err,
                          errlen);
        if (rc)
            return rc;
        for (long i = a; i < b && labels; i++)
            labels[i] = c;
    }
    return 0;
}
