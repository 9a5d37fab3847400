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
#include "common/strbuf.h"
#include "router/admit.h"
#include "router/jobs.h"
#include "router/rstats.h"
#include "router/sse.h"

/* latency histogram buckets of POST /v1/samples, seconds */
static const double LAT_BUCKETS[] = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 };
#define N_LAT (sizeof LAT_BUCKETS / sizeof LAT_BUCKETS[0])

/* Responses encoded at once on the threadpool; more wait in the service's own
 * queue, so encoding never takes the threads the engine's ticks need
 * (router_main sizes the threadpool to ticks + this). */
#define MAX_ENCODERS SERVICE_ENCODERS

typedef struct sreq sreq;

/* A route as registered through service_route: the token check in front of fn. */
typedef struct guard {
    service *s;
    http_handler_fn fn;
    void *ud;
    int flags;
    char path[64];
} guard;

#define MAX_GUARDS 32
#define MAX_PUBLIC 8

struct service {
    uv_loop_t *loop;
    http_server *srv;
    engine *eng;
    pool *pl;
    int K, dim, n_classes;
    const model_shape *shape;  /* NULL until service_set_model */
    const char *dataset;
    int draining;
    int stopped;             /* the engine is closing: never submit again */
    int pending;
    admit *adm;              /* checks and per-token turns, shared with the jobs */
    auth *auth;              /* NULL: no tokens */
    char public_paths[MAX_PUBLIC][64];
    int n_public;
    guard *guards[MAX_GUARDS];
    int n_guards;
    uint64_t unauthorized;
    int encoding;            /* encodes on the threadpool */
    sreq *enc_head, *enc_tail; /* finished jobs waiting for an encoder */
    uint64_t lat_count[N_LAT + 1];
    double lat_sum;
    uint64_t lat_n;
    uint64_t images_total;
    rstats routing;          /* every evaluation's experts and weights, by band of t */
    jobs *jobs;              /* async jobs and event streams, or NULL */
};

/* One POST /v1/samples from admission to response. */
struct sreq {
    service *s;
    http_req *req;           /* NULL once the client went away */
    engine_job *job;
    sample_params p;
    admit_slot slot;         /* its turn under its token's limits */
    api_format fmt;
    int done;                /* engine called back */
    api_result result;
    uint8_t *body;
    size_t len;
    const char *ctype;
    int enc_rc;
    char err[256];
    uv_work_t work;
    sreq *enc_next;          /* waiting for an encoder */
};

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

static void on_job_done(engine_job *job, void *ud, int status, const char *code,
                        const char *msg, const api_result *res);
static void close_if_draining(service *s, http_req *req);

/* The end of r: its token's next waiting request may start. */
static void sreq_free(sreq *r)
{
    r->s->pending--;
    admit_leave(&r->slot);
    free(r);
}

/* Answers a request that never reached the engine (r->req still set). */
static void sreq_fail(sreq *r, int status, const char *code, const char *msg)
{
    http_req_on_abort(r->req, NULL, NULL);
    if (status == 503 || status == 429)
        http_resp_retry_after(r->req, 1);
    close_if_draining(r->s, r->req);
    http_respond_error(r->req, status, code, msg);
    sreq_free(r);
}

/* Submits r to the engine; on failure answers it and frees it. */
static void sreq_run(sreq *r)
{
    service *s = r->s;
    if (s->stopped) {
        sreq_fail(r, 503, "shutting_down", "the router is shutting down: retry elsewhere");
        return;
    }
    int rc = engine_submit(s->eng, &r->p, on_job_done, r, &r->job);
    if (rc == DDM_EBUSY)
        sreq_fail(r, 503, "overloaded",
                  "too many images in flight: retry after the Retry-After seconds");
    else if (rc)
        sreq_fail(r, 500, "internal", ddm_strerror(rc));
}

/* Its token's turn has come (admit_enter waited). */
static void sreq_turn(admit_slot *slot, void *ud)
{
    (void)slot;
    sreq_run(ud);
}

static void on_abort(http_req *req, void *ud)
{
    sreq *r = ud;
    r->req = NULL;
    http_req_drop(req);
    if (r->slot.waiting) { /* never started */
        sreq_free(r);
        return;
    }
    if (!r->done) { /* still computing: stop; done will not be called */
        engine_job_cancel(r->job);
        sreq_free(r);
    }
    /* else the response is being encoded: after_encode cleans up */
}

static void encode_work(uv_work_t *w)
{
    sreq *r = w->data;
    r->enc_rc = api_encode_sample(r->fmt, &r->result, &r->body, &r->len, &r->ctype, r->err,
                                  sizeof r->err);
}

/* While draining, every answer tells the client to take its next request
 * elsewhere. */
static void close_if_draining(service *s, http_req *req)
{
    if (s->draining)
        http_resp_header(req, "Connection", "close");
}

static void after_encode(uv_work_t *w, int status);

static void encode_start(sreq *r)
{
    r->s->encoding++;
    r->work.data = r;
    if (uv_queue_work(r->s->loop, &r->work, encode_work, after_encode)) {
        encode_work(&r->work);
        after_encode(&r->work, 0);
    }
}

static void after_encode(uv_work_t *w, int status)
{
    (void)status;
    sreq *r = w->data;
    service *s = r->s;
    s->encoding--;
    if (s->enc_head) { /* the next finished job takes the encoder */
        sreq *n = s->enc_head;
        s->enc_head = n->enc_next;
        if (!s->enc_head)
            s->enc_tail = NULL;
        encode_start(n);
    }
    if (r->req) {
        http_req_on_abort(r->req, NULL, NULL);
        observe_latency(r->s, r->req);
        close_if_draining(r->s, r->req);
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
    sreq_free(r);
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
            close_if_draining(r->s, r->req);
            http_respond_error(r->req, status, code, msg);
        }
        sreq_free(r);
        return;
    }
    r->result = *res;
    service *s = r->s;
    if (s->encoding < MAX_ENCODERS) {
        encode_start(r);
        return;
    }
    if (s->enc_tail)
        s->enc_tail->enc_next = r;
    else
        s->enc_head = r;
    s->enc_tail = r;
}

static void handle_samples(http_req *req, void *ud)
{
    service *s = ud;
    if (s->jobs && sse_wanted(http_req_header(req, "Accept"))) {
        jobs_sample_stream(s->jobs, req); /* the same call, as Server-Sent Events */
        return;
    }
    api_format fmt;
    if (api_response_format(http_req_header(req, "Accept"), http_req_header(req, "Content-Type"),
                            &fmt)) {
        http_respond_error(req, 406, "not_acceptable",
                           "Accept names no format we produce: use application/json, "
                           "application/x-protobuf, image/png or text/event-stream");
        return;
    }
    sample_params p;
    if (admit_request(s->adm, req, &p, NULL))
        return; /* answered */
    sreq *r = calloc(1, sizeof *r);
    if (!r) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    r->s = s;
    r->req = req;
    r->fmt = fmt;
    r->p = p;
    s->pending++;
    http_req_on_abort(req, on_abort, r);
    if (admit_enter(&r->slot, http_req_user(req), sreq_turn, r))
        sreq_run(r); /* else its turn comes in sreq_turn */
}

static void handle_experts(http_req *req, void *ud)
{
    service *s = ud;
    strbuf o = { 0 };
    strbuf_printf(&o, "{\"num_experts\":%d,\"dim\":%d,\"num_classes\":%d,", s->K, s->dim,
                  s->n_classes);
    if (s->shape) {
        strbuf_printf(&o,
                      "\"height\":%d,\"width\":%d,\"channels\":%d,\"dataset\":", s->shape->height,
                      s->shape->width, s->shape->channels);
        strbuf_json_str(&o, s->dataset);
        strbuf_printf(&o, ",\"class_names\":[");
        for (int i = 0; i < s->shape->n_class_names; i++) {
            strbuf_printf(&o, "%s", i ? "," : "");
            strbuf_json_str(&o, s->shape->class_names[i]);
        }
        strbuf_printf(&o, "],");
    }
    strbuf_printf(&o, "\"ready\":%s,\"experts\":[", pool_ready(s->pl) ? "true" : "false");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        strbuf_printf(&o, "%s{\"id\":%d,\"live_replicas\":%d,\"calls\":%llu,\"messages\":%llu,\"rows\":%llu,"
                "\"retries\":%llu,\"failures\":%llu,\"bad_replies\":%llu,\"mean_latency_ms\":%.3f,"
                "\"mean_batch\":%.2f,\"replicas\":[",
            k ? "," : "", k, pool_live_replicas(s->pl, k), (unsigned long long)st.calls,
            (unsigned long long)st.messages, (unsigned long long)st.rows,
            (unsigned long long)st.retries, (unsigned long long)st.failures,
            (unsigned long long)st.bad_replies,
            st.messages ? st.latency_ms_sum / (double)st.messages : 0.0,
            st.batch_reports ? (double)st.batch_rows_sum / (double)st.batch_reports : 0.0);
        for (int r = 0; r < pool_n_replicas(s->pl, k); r++) {
            const char *url, *state, *detail;
            pool_replica_info(s->pl, k, r, &url, &state, &detail);
            strbuf_printf(&o, "%s{\"url\":", r ? "," : "");
            strbuf_json_str(&o, url);
            pool_replica_stats rs;
            pool_get_replica_stats(s->pl, k, r, &rs);
            strbuf_printf(&o, ",\"state\":\"%s\",\"slow\":%s,\"messages\":%llu,\"timeouts\":%llu,"
                    "\"bad_replies\":%llu,\"detail\":", state, rs.slow ? "true" : "false",
                (unsigned long long)rs.messages, (unsigned long long)rs.timeouts,
                (unsigned long long)rs.bad_replies);
            strbuf_json_str(&o, detail);
            strbuf_printf(&o, "}");
        }
        strbuf_printf(&o, "]}");
    }
    strbuf_printf(&o, "]}\n");
    http_respond_strbuf(req, 200, "application/json", &o);
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
    strbuf o = { 0 };
    /* these always (a series that exists from the start), any other code once sent */
    static const int always[] = { 200, 400, 401, 404, 405, 406, 408, 411, 413, 415, 429, 431,
                                  500, 503, 504 };
    strbuf_printf(&o, "# HELP ddm_http_responses_total HTTP responses by status code.\n"
                      "# TYPE ddm_http_responses_total counter\n");
    for (int code = 100, i = 0; code <= 599; code++) {
        uint64_t count = http_server_status_count(s->srv, code);
        int listed = i < (int)(sizeof always / sizeof always[0]) && always[i] == code;
        i += listed;
        if (listed || count > 0)
            strbuf_printf(&o, "ddm_http_responses_total{code=\"%d\"} %llu\n", code,
                          (unsigned long long)count);
    }
    http_stats hs;
    http_server_stats(s->srv, &hs);
    strbuf_printf(&o, "# TYPE ddm_http_connections_open gauge\nddm_http_connections_open %llu\n",
                  (unsigned long long)hs.connections_open);
    strbuf_printf(
        &o,
        "# HELP ddm_http_connections_rejected_total Connections over a cap with no room made: "
        "health probes only.\n# TYPE ddm_http_connections_rejected_total counter\n"
        "ddm_http_connections_rejected_total %llu\n",
        (unsigned long long)hs.connections_rejected);
    strbuf_printf(
        &o,
        "# HELP ddm_http_connections_evicted_total Connections without a request in progress "
        "closed to make room at a cap.\n# TYPE ddm_http_connections_evicted_total counter\n"
        "ddm_http_connections_evicted_total %llu\n",
        (unsigned long long)hs.connections_evicted);
    strbuf_printf(&o, "# HELP ddm_sample_request_seconds Latency of POST /v1/samples.\n"
                      "# TYPE ddm_sample_request_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t b = 0; b < N_LAT; b++) {
        cum += s->lat_count[b];
        strbuf_printf(&o, "ddm_sample_request_seconds_bucket{le=\"%g\"} %llu\n", LAT_BUCKETS[b],
                      (unsigned long long)cum);
    }
    cum += s->lat_count[N_LAT];
    strbuf_printf(&o, "ddm_sample_request_seconds_bucket{le=\"+Inf\"} %llu\n",
                  (unsigned long long)cum);
    strbuf_printf(&o,
                  "ddm_sample_request_seconds_sum %.6f\nddm_sample_request_seconds_count %llu\n",
                  s->lat_sum, (unsigned long long)s->lat_n);
    strbuf_printf(&o, "# TYPE ddm_images_total counter\nddm_images_total %llu\n",
                  (unsigned long long)s->images_total);
    engine_stats es;
    engine_get_stats(s->eng, &es);
    strbuf_printf(&o,
                  "# HELP ddm_queue_depth Trajectories waiting for their next tick.\n"
                  "# TYPE ddm_queue_depth gauge\nddm_queue_depth %d\n",
                  es.ready);
    strbuf_printf(&o, "# TYPE ddm_images_in_flight gauge\nddm_images_in_flight %d\n",
                  es.images_in_flight);
    strbuf_printf(&o, "# TYPE ddm_ticks_total counter\nddm_ticks_total %llu\n",
                  (unsigned long long)es.ticks);
    strbuf_printf(&o, "# TYPE ddm_tick_rows_total counter\nddm_tick_rows_total %llu\n",
                  (unsigned long long)es.tick_rows);
    strbuf_printf(
        &o,
        "# HELP ddm_tick_overhead_seconds_total Tick wall time not spent waiting on experts.\n"
        "# TYPE ddm_tick_overhead_seconds_total counter\nddm_tick_overhead_seconds_total %.6f\n",
        es.overhead_us_sum / 1e6);
    strbuf_printf(
        &o, "# TYPE ddm_router_net_seconds_total counter\nddm_router_net_seconds_total %.6f\n",
        es.router_us_sum / 1e6);
    strbuf_printf(&o,
                  "# HELP ddm_tick_expert_wait_seconds_total Tick wall time from the end of its "
                  "plan to the last expert answer.\n"
                  "# TYPE ddm_tick_expert_wait_seconds_total counter\n"
                  "ddm_tick_expert_wait_seconds_total %.6f\n",
                  es.expert_wait_us_sum / 1e6);
    strbuf_printf(&o,
                  "# HELP ddm_tick_phase_seconds_total Parts of tick wall time: sending the "
                  "speculative calls (before the plan), sending the plan's calls, and from the "
                  "last answer to the combined step.\n"
                  "# TYPE ddm_tick_phase_seconds_total counter\n"
                  "ddm_tick_phase_seconds_total{phase=\"speculative_send\"} %.6f\n"
                  "ddm_tick_phase_seconds_total{phase=\"send\"} %.6f\n"
                  "ddm_tick_phase_seconds_total{phase=\"finish\"} %.6f\n",
                  es.spec_send_us_sum / 1e6, es.send_us_sum / 1e6, es.finish_us_sum / 1e6);
    strbuf_printf(
        &o,
        "# HELP ddm_speculation_evaluations_total Evaluations whose latent went to the previous "
        "step's experts before the router network chose: hit = every expert chosen had it.\n"
        "# TYPE ddm_speculation_evaluations_total counter\n"
        "ddm_speculation_evaluations_total{outcome=\"hit\"} %llu\n"
        "ddm_speculation_evaluations_total{outcome=\"miss\"} %llu\n"
        "# HELP ddm_speculation_rows_total Expert rows of those evaluations: hit (sent early and "
        "used), miss (sent once chosen), wasted (sent early, not chosen: computed for nothing).\n"
        "# TYPE ddm_speculation_rows_total counter\n"
        "ddm_speculation_rows_total{outcome=\"hit\"} %llu\n"
        "ddm_speculation_rows_total{outcome=\"miss\"} %llu\n"
        "ddm_speculation_rows_total{outcome=\"wasted\"} %llu\n"
        "# HELP ddm_speculation_calls_total Speculative expert calls: sent, and dropped (no row "
        "of them chosen: not waited for, the reply ignored).\n"
        "# TYPE ddm_speculation_calls_total counter\n"
        "ddm_speculation_calls_total{outcome=\"sent\"} %llu\n"
        "ddm_speculation_calls_total{outcome=\"dropped\"} %llu\n",
        (unsigned long long)es.spec_evals_hit, (unsigned long long)es.spec_evals_miss,
        (unsigned long long)es.spec_rows_hit, (unsigned long long)es.spec_rows_miss,
        (unsigned long long)es.spec_rows_wasted, (unsigned long long)es.spec_calls,
        (unsigned long long)es.spec_calls_dropped);
    strbuf_printf(
        &o,
        "# HELP ddm_substitutions_total Experts replaced by the next-best one (or dropped) for "
        "requests with substitute true.\n# TYPE ddm_substitutions_total counter\n"
        "ddm_substitutions_total %llu\n"
        "# HELP ddm_evaluations_redone_total Evaluations done again after an expert failed "
        "(requests with substitute true).\n# TYPE ddm_evaluations_redone_total counter\n"
        "ddm_evaluations_redone_total %llu\n",
        (unsigned long long)es.substitutions, (unsigned long long)es.evals_redone);
    strbuf_printf(&o, "# TYPE ddm_jobs_total counter\n");
    strbuf_printf(&o, "ddm_jobs_total{outcome=\"ok\"} %llu\n", (unsigned long long)es.jobs_ok);
    strbuf_printf(&o, "ddm_jobs_total{outcome=\"failed\"} %llu\n",
                  (unsigned long long)es.jobs_failed);
    strbuf_printf(&o, "ddm_jobs_total{outcome=\"cancelled\"} %llu\n",
                  (unsigned long long)es.jobs_cancelled);
    strbuf_printf(&o, "ddm_jobs_total{outcome=\"busy\"} %llu\n", (unsigned long long)es.jobs_busy);
    strbuf_printf(&o, "# HELP ddm_expert_calls_total Batched calls sent per expert.\n"
                      "# TYPE ddm_expert_calls_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        strbuf_printf(&o, "ddm_expert_calls_total{expert=\"%d\"} %llu\n", k,
                      (unsigned long long)st.calls);
    }
    strbuf_printf(&o, "# TYPE ddm_expert_rows_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        strbuf_printf(&o, "ddm_expert_rows_total{expert=\"%d\"} %llu\n", k,
                      (unsigned long long)st.rows);
    }
    strbuf_printf(&o,
                  "# HELP ddm_expert_batch_rows Mean rows per forward pass the workers reported.\n"
                  "# TYPE ddm_expert_batch_rows gauge\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        strbuf_printf(&o, "ddm_expert_batch_rows{expert=\"%d\"} %.2f\n", k,
                      st.batch_reports ? (double)st.batch_rows_sum / (double)st.batch_reports
                                       : 0.0);
    }
    strbuf_printf(&o, "# TYPE ddm_expert_retries_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        strbuf_printf(&o, "ddm_expert_retries_total{expert=\"%d\"} %llu\n", k,
                      (unsigned long long)st.retries);
    }
    if (s->auth) {
        strbuf_printf(&o,
                      "# HELP ddm_token_requests Sampling requests (samples and jobs) per "
                      "token, running and waiting for the token's turn.\n"
                      "# TYPE ddm_token_requests gauge\n");
        for (int i = 0; i < auth_count(s->auth); i++) {
            const auth_token *t = auth_token_at(s->auth, i);
            strbuf_printf(&o,
                          "ddm_token_requests{token=\"%s\",state=\"running\"} %d\n"
                          "ddm_token_requests{token=\"%s\",state=\"waiting\"} %d\n",
                          t->name, t->running, t->name, t->waiting);
        }
    }
    strbuf_printf(&o, "# HELP ddm_expert_bad_replies_total Replies refused (undecodable, wrong length, "
            "not finite, bad MAC); each quarantines its replica.\n"
            "# TYPE ddm_expert_bad_replies_total counter\n");
    for (int k = 0; k < s->K; k++) {
        pool_expert_stats st;
        pool_get_stats(s->pl, k, &st);
        strbuf_printf(&o, "ddm_expert_bad_replies_total{expert=\"%d\"} %llu\n", k,
            (unsigned long long)st.bad_replies);
    }
    strbuf_printf(&o, "# TYPE ddm_expert_live_replicas gauge\n");
    for (int k = 0; k < s->K; k++)
        strbuf_printf(&o, "ddm_expert_live_replicas{expert=\"%d\"} %d\n", k,
                      pool_live_replicas(s->pl, k));
    rstats_prometheus(&s->routing, &o);
    if (s->jobs)
        jobs_metrics(s->jobs, &o);
    http_respond_strbuf(req, 200, "text/plain; version=0.0.4", &o);
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
    int rc = admit_new(eng, K, n_classes, &s->adm);
    if (!rc) rc = service_route(s, "POST", "/v1/samples", handle_samples, s, 0);
    if (!rc) rc = service_route(s, "GET", "/v1/experts", handle_experts, s, 0);
    if (!rc) rc = service_route(s, "GET", "/healthz", handle_healthz, s, SERVICE_ROUTE_HEALTH);
    if (!rc) rc = service_route(s, "GET", "/readyz", handle_readyz, s, SERVICE_ROUTE_HEALTH);
    if (!rc) rc = service_route(s, "GET", "/metrics", handle_metrics, s, 0);
    if (rc) {
        service_free(s);
        return rc;
    }
    rstats_init(&s->routing, K);
    engine_set_eval_observer(eng, on_eval, s);
    *out = s;
    return 0;
}

int service_set_model(service *s, const model_shape *shape, const char *dataset)
{
    s->shape = shape;
    s->dataset = dataset;
    admit_set_shape(s->adm, shape);
    return 0;
}

void service_set_jobs(service *s, jobs *J) { s->jobs = J; }
admit *service_admit(service *s) { return s->adm; }

/* ---- tokens --------------------------------------------------------------------------- */

static int path_public(const service *s, const char *path)
{
    for (int i = 0; i < s->n_public; i++)
        if (!strcmp(s->public_paths[i], path))
            return 1;
    return 0;
}

/* The token check in front of every route (see service_route). */
static void guarded(http_req *req, void *ud)
{
    guard *g = ud;
    service *s = g->s;
    auth_token *tok = NULL;
    if (s->draining) /* every answer tells the client to take its next request elsewhere */
        http_resp_header(req, "Connection", "close");
    if (s->auth && !(g->flags & (SERVICE_ROUTE_HEALTH | SERVICE_ROUTE_PUBLIC)) &&
        !path_public(s, g->path)) {
        const char *h = http_req_header(req, "Authorization");
        tok = auth_check(s->auth, h);
        if (!tok) {
            s->unauthorized++;
            char peer[64] = "?";
            http_req_peer(req, peer, sizeof peer);
            log_debug("401 for %s %.80s from %s (%s)", http_req_method(req), http_req_path(req),
                      peer, h ? "token not valid" : "no token"); /* never the token itself */
            http_resp_header(req, "WWW-Authenticate",
                             h ? "Bearer realm=\"ddm-router\", error=\"invalid_token\""
                               : "Bearer realm=\"ddm-router\"");
            http_respond_error(req, 401, "unauthorized",
                               h ? "the bearer token is not valid: check the token you were "
                                   "given (Authorization: Bearer <token>)"
                                 : "this endpoint needs a token: send Authorization: Bearer "
                                   "<token>");
            return;
        }
    }
    http_req_set_user(req, tok);
    g->fn(req, g->ud);
}

int service_route(service *s, const char *method, const char *path, http_handler_fn fn,
                  void *ud, int flags)
{
    if (s->n_guards == MAX_GUARDS || strlen(path) >= sizeof s->guards[0]->path)
        return DDM_EINVAL;
    guard *g = calloc(1, sizeof *g);
    if (!g)
        return DDM_ENOMEM;
    *g = (guard){ .s = s, .fn = fn, .ud = ud, .flags = flags };
    snprintf(g->path, sizeof g->path, "%s", path);
    int rc;
    if (flags & SERVICE_ROUTE_HEALTH)
        rc = http_server_route_always(s->srv, method, path, guarded, g);
    else if (flags & SERVICE_ROUTE_PREFIX)
        rc = http_server_route_prefix(s->srv, method, path, guarded, g);
    else
        rc = http_server_route(s->srv, method, path, guarded, g);
    if (rc) {
        free(g);
        return rc;
    }
    s->guards[s->n_guards++] = g;
    return 0;
}

int service_set_auth(service *s, auth *a, const char *const *public_paths)
{
    s->auth = a;
    s->n_public = 0;
    for (int i = 0; public_paths && public_paths[i]; i++) {
        if (s->n_public == MAX_PUBLIC || strlen(public_paths[i]) >= sizeof s->public_paths[0])
            return DDM_EINVAL;
        snprintf(s->public_paths[s->n_public++], sizeof s->public_paths[0], "%s", public_paths[i]);
    }
    return 0;
}

void service_set_draining(service *s, int draining)
{
    s->draining = draining;
    admit_set_draining(s->adm, draining);
}

void service_stop(service *s)
{
    service_set_draining(s, 1);
    s->stopped = 1;
}
int service_pending(const service *s) { return s->pending; }

void service_free(service *s)
{
    for (int i = 0; i < s->n_guards; i++)
        free(s->guards[i]);
    if (s->adm)
        admit_free(s->adm);
    free(s);
}
