/* service.c -- ddm-router's HTTP API (see service.h). */
#include "router/service.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "router/rstats.h"
#include "router/sse.h"

/* latency histogram buckets of POST /v1/samples, seconds */
static const double LAT_BUCKETS[] = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
#define N_LAT (sizeof LAT_BUCKETS / sizeof LAT_BUCKETS[0])

struct service {
    uv_loop_t *loop;
    http_server *srv;
    engine *eng;
    pool *pl;
    int K, dim, n_classes;
    int draining;
    int pending;
    uint64_t seed_state;
    uint64_t lat_count[N_LAT + 1];
    double lat_sum;
    uint64_t lat_n;
    uint64_t images_total;
    rstats routing;          /* every evaluation's experts and weights, by band of t */
    jobs *jobs;              /* async jobs and event streams, or NULL */
};

/* One POST /v1/samples from admission to response. */
typedef struct sreq {
    service *s;
    http_req *req;           /* NULL once the client went away */
    engine_job *job;
    api_format fmt;
    int done;                /* engine called back */
    api_result result;
    uint8_t *body;
    size_t len;
    const char *ctype;
    int enc_rc;
    char err[256];
    uv_work_t work;
} sreq;

static void observe_latency(service *s, http_req *req)
{
    double sec = (double)(uv_hrtime() - http_req_start_ns(req)) / 1e9;
    size_t b = 0;
    while (b < N_LAT && sec > LAT_BUCKETS[b])
        b++;
    s->lat_count[b]++;
    s->lat_sum += sec;
    s->lat_n++;
}

static void sreq_end(sreq *r)
{
    r->s->pending--;
    free(r);
}

static void on_abort(http_req *req, void *ud)
{
    sreq *r = ud;
    r->req = NULL;
    http_req_drop(req);
    if (!r->done) { /* still computing: stop; done will not be called */
        engine_job_cancel(r->job);
        sreq_end(r);
    }
    /* else the response is being encoded: after_encode cleans up */
}

static void encode_work(uv_work_t *w)
{
    sreq *r = w->data;
    r->enc_rc = api_encode_sample(r->fmt, &r->result, &r->body, &r->len, &r->ctype, r->err,
                                  sizeof r->err);
}

static void after_encode(uv_work_t *w, int status)
{
    (void)status;
    sreq *r = w->data;
    if (r->req) {
        http_req_on_abort(r->req, NULL, NULL);
        observe_latency(r->s, r->req);
        if (r->enc_rc) {
            free(r->body);
            http_respond_error(r->req, 500, "internal", r->err);
        } else {
            r->s->images_total += (uint64_t)r->result.p->n;
            http_respond_owned(r->req, 200, r->ctype, r->body, r->len);
        }
    } else {
        free(r->body);
    }
    engine_job_release(r->job); /* r->result points into the job until here */
    sreq_end(r);
}

static void on_job_done(engine_job *job, void *ud, int status, const char *code,
                        const char *msg, const api_result *res)
{
    sreq *r = ud;
    r->done = 1;
    if (status) {
        engine_job_release(job);
        if (r->req) {
            http_req_on_abort(r->req, NULL, NULL);
            observe_latency(r->s, r->req);
            if (status == 503)
                http_resp_retry_after(r->req, 1);
            http_respond_error(r->req, status, code, msg);
        }
        sreq_end(r);
        return;
    }
    r->result = *res;
    r->work.data = r;
    if (uv_queue_work(r->s->loop, &r->work, encode_work, after_encode)) {
        encode_work(&r->work);
        after_encode(&r->work, 0);
    }
}

static void handle_samples(http_req *req, void *ud)
{
    service *s = ud;
    if (s->draining) {
        http_resp_retry_after(req, 1);
        http_respond_error(req, 503, "shutting_down", "the router is shutting down: retry elsewhere");
        return;
    }
    if (s->jobs && sse_wanted(http_req_header(req, "Accept"))) {
        jobs_sample_stream(s->jobs, req); /* the same call, as Server-Sent Events */
        return;
    }
    size_t len;
    const uint8_t *body = http_req_body(req, &len);
    const char *ctype = http_req_header(req, "Content-Type");
    sample_params p;
    const char *code = "bad_request";
    char err[384];
    int st = api_decode_sample(ctype, body, len, s->K, s->n_classes, &s->seed_state, &p, &code,
                               err, sizeof err);
    if (st) {
        http_respond_error(req, st, code, err);
        return;
    }
    api_format fmt;
    if (api_response_format(http_req_header(req, "Accept"), ctype, &fmt)) {
        http_respond_error(req, 406, "not_acceptable",
                           "Accept names no format we produce: use application/json, "
                           "application/x-protobuf or image/png");
        return;
    }
    sreq *r = calloc(1, sizeof *r);
    if (!r) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    r->s = s;
    r->req = req;
    r->fmt = fmt;
    int rc = engine_submit(s->eng, &p, on_job_done, r, &r->job);
    if (rc) {
        free(r);
        if (rc == DDM_EBUSY) {
            http_resp_retry_after(req, 1);
            http_respond_error(req, 503, "overloaded",
                               "too many images in flight: retry after the Retry-After seconds");
        } else {
            http_respond_error(req, 500, "internal", ddm_strerror(rc));
        }
        return;
    }
    s->pending++;
    http_req_on_abort(req, on_abort, r);
}

/* ---- small JSON/text writer -------------------------------------------------------- */

typedef struct out {
    char *p;
    size_t len, cap;
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (o->len + (size_t)n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np)
            return;
        o->p = np;
        o->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(o->p + o->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    o->len += (size_t)n;
}

static void respond_out(http_req *req, int status, const char *ctype, out *o)
{
    if (!o->p) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    http_respond_owned(req, status, ctype, o->p, o->len);
}

static void put_json_str(out *o, const char *s)
{
    char buf[512];
    size_t n = http_json_escape(buf, sizeof buf, s ? s : "");
    if (n < sizeof buf)
        put(o, "%s", buf);
    else
        put(o, "\"\"");
}

static void handle_experts(http_req *req, void *ud)
{
    service *s = ud;
    out o = { 0 };
    put(&o, "{\"num_experts\":%d,\"dim\":%d,\"num_classes\":%d,\"ready\":%s,\"experts\":[", s->K,
        s->dim, s->n_classes, pool_ready(s->pl) ? "true" : "false");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        put(&o, "%s{\"id\":%d,\"live_replicas\":%d,\"calls\":%llu,\"messages\":%llu,\"rows\":%llu,"
                "\"retries\":%llu,\"failures\":%llu,\"mean_latency_ms\":%.3f,\"mean_batch\":%.2f,"
                "\"replicas\":[",
            k ? "," : "", k, pool_live_replicas(s->pl, k), (unsigned long long)st.calls,
            (unsigned long long)st.messages, (unsigned long long)st.rows,
            (unsigned long long)st.retries, (unsigned long long)st.failures,
            st.messages ? st.latency_ms_sum / (double)st.messages : 0.0,
            st.batch_reports ? (double)st.batch_rows_sum / (double)st.batch_reports : 0.0);
        for (int r = 0; r < pool_n_replicas(s->pl, k); r++) {
            const char *url, *state, *detail;
            pool_replica_info(s->pl, k, r, &url, &state, &detail);
            put(&o, "%s{\"url\":", r ? "," : "");
            put_json_str(&o, url);
            put(&o, ",\"state\":\"%s\",\"detail\":", state);
            put_json_str(&o, detail);
            put(&o, "}");
        }
        put(&o, "]}");
    }
    put(&o, "]}\n");
    respond_out(req, 200, "application/json", &o);
}

static void handle_healthz(http_req *req, void *ud)
{
    (void)ud;
    http_respond(req, 200, "application/json", "{\"status\":\"ok\"}\n", 16);
}

static void handle_readyz(http_req *req, void *ud)
{
    service *s = ud;
    if (s->draining) {
        http_respond_error(req, 503, "shutting_down", "the router is shutting down");
        return;
    }
    if (pool_ready(s->pl)) {
        http_respond(req, 200, "application/json", "{\"ready\":true}\n", 15);
        return;
    }
    char msg[512];
    size_t n = (size_t)snprintf(msg, sizeof msg, "experts without a live replica:");
    for (int k = 0; k < s->K && n < sizeof msg; k++)
        if (!pool_live_replicas(s->pl, k))
            n += (size_t)snprintf(msg + n, sizeof msg - n, " %d", k);
    http_respond_error(req, 503, "not_ready", msg);
}

static void handle_metrics(http_req *req, void *ud)
{
    service *s = ud;
    out o = { 0 };
    static const int codes[] = { 200, 400, 404, 405, 406, 408, 411, 413, 415, 431, 500, 503, 504 };
    put(&o, "# HELP ddm_http_responses_total HTTP responses by status code.\n"
            "# TYPE ddm_http_responses_total counter\n");
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        put(&o, "ddm_http_responses_total{code=\"%d\"} %llu\n", codes[i],
            (unsigned long long)http_server_status_count(s->srv, codes[i]));
    http_stats hs;
    http_server_stats(s->srv, &hs);
    put(&o, "# TYPE ddm_http_connections_open gauge\nddm_http_connections_open %llu\n",
        (unsigned long long)hs.connections_open);
    put(&o, "# HELP ddm_sample_request_seconds Latency of POST /v1/samples.\n"
            "# TYPE ddm_sample_request_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t b = 0; b < N_LAT; b++) {
        cum += s->lat_count[b];
        put(&o, "ddm_sample_request_seconds_bucket{le=\"%g\"} %llu\n", LAT_BUCKETS[b],
            (unsigned long long)cum);
    }
    cum += s->lat_count[N_LAT];
    put(&o, "ddm_sample_request_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    put(&o, "ddm_sample_request_seconds_sum %.6f\nddm_sample_request_seconds_count %llu\n",
        s->lat_sum, (unsigned long long)s->lat_n);
    put(&o, "# TYPE ddm_images_total counter\nddm_images_total %llu\n",
        (unsigned long long)s->images_total);
    engine_stats es;
    engine_get_stats(s->eng, &es);
    put(&o, "# HELP ddm_queue_depth Trajectories waiting for their next tick.\n"
            "# TYPE ddm_queue_depth gauge\nddm_queue_depth %d\n", es.ready);
    put(&o, "# TYPE ddm_images_in_flight gauge\nddm_images_in_flight %d\n", es.images_in_flight);
    put(&o, "# TYPE ddm_ticks_total counter\nddm_ticks_total %llu\n", (unsigned long long)es.ticks);
    put(&o, "# TYPE ddm_tick_rows_total counter\nddm_tick_rows_total %llu\n",
        (unsigned long long)es.tick_rows);
    put(&o, "# HELP ddm_tick_overhead_seconds_total Tick wall time not spent waiting on experts.\n"
            "# TYPE ddm_tick_overhead_seconds_total counter\nddm_tick_overhead_seconds_total %.6f\n",
        es.overhead_us_sum / 1e6);
    put(&o, "# TYPE ddm_router_net_seconds_total counter\nddm_router_net_seconds_total %.6f\n",
        es.router_us_sum / 1e6);
    put(&o, "# TYPE ddm_jobs_total counter\n");
    put(&o, "ddm_jobs_total{outcome=\"ok\"} %llu\n", (unsigned long long)es.jobs_ok);
    put(&o, "ddm_jobs_total{outcome=\"failed\"} %llu\n", (unsigned long long)es.jobs_failed);
    put(&o, "ddm_jobs_total{outcome=\"cancelled\"} %llu\n", (unsigned long long)es.jobs_cancelled);
    put(&o, "ddm_jobs_total{outcome=\"busy\"} %llu\n", (unsigned long long)es.jobs_busy);
    put(&o, "# HELP ddm_expert_calls_total Batched calls sent per expert.\n"
            "# TYPE ddm_expert_calls_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        put(&o, "ddm_expert_calls_total{expert=\"%d\"} %llu\n", k, (unsigned long long)st.calls);
    }
    put(&o, "# TYPE ddm_expert_rows_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        put(&o, "ddm_expert_rows_total{expert=\"%d\"} %llu\n", k, (unsigned long long)st.rows);
    }
    put(&o, "# HELP ddm_expert_batch_rows Mean rows per forward pass the workers reported.\n"
            "# TYPE ddm_expert_batch_rows gauge\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        put(&o, "ddm_expert_batch_rows{expert=\"%d\"} %.2f\n", k,
            st.batch_reports ? (double)st.batch_rows_sum / (double)st.batch_reports : 0.0);
    }
    put(&o, "# TYPE ddm_expert_retries_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        put(&o, "ddm_expert_retries_total{expert=\"%d\"} %llu\n", k, (unsigned long long)st.retries);
    }
    put(&o, "# TYPE ddm_expert_live_replicas gauge\n");
    for (int k = 0; k < s->K; k++)
        put(&o, "ddm_expert_live_replicas{expert=\"%d\"} %d\n", k, pool_live_replicas(s->pl, k));
    strbuf more = { 0 };
    rstats_prometheus(&s->routing, &more);
    if (s->jobs)
        jobs_metrics(s->jobs, &more);
    if (more.p)
        put(&o, "%s", more.p);
    strbuf_free(&more);
    respond_out(req, 200, "text/plain; version=0.0.4", &o);
}

static void on_eval(void *ud, const traj *tr)
{
    service *s = ud;
    rstats_add_eval(&s->routing, tr);
}

int service_new(uv_loop_t *loop, http_server *srv, engine *eng, pool *pl, int K, int dim,
                int n_classes, service **out)
{
    service *s = calloc(1, sizeof *s);
    if (!s)
        return DDM_ENOMEM;
    *s = (service){ .loop = loop, .srv = srv, .eng = eng, .pl = pl, .K = K, .dim = dim,
                    .n_classes = n_classes };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->seed_state = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                    ((uint64_t)getpid() << 32);
    int rc = http_server_route(srv, "POST", "/v1/samples", handle_samples, s);
    if (!rc) rc = http_server_route(srv, "GET", "/v1/experts", handle_experts, s);
    if (!rc) rc = http_server_route(srv, "GET", "/healthz", handle_healthz, s);
    if (!rc) rc = http_server_route(srv, "GET", "/readyz", handle_readyz, s);
    if (!rc) rc = http_server_route(srv, "GET", "/metrics", handle_metrics, s);
    if (rc) {
        free(s);
        return rc;
    }
    rstats_init(&s->routing, K);
    engine_set_eval_observer(eng, on_eval, s);
    *out = s;
    return 0;
}

void service_set_jobs(service *s, jobs *J) { s->jobs = J; }

void service_set_draining(service *s, int draining) { s->draining = draining; }
int service_pending(const service *s) { return s->pending; }
void service_free(service *s) { free(s); }
