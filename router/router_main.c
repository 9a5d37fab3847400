/* router_main.c -- ddm-router: the sampling daemon (flags, wiring, signals). */
#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "common/blas.h"
#include "common/err.h"
#include "common/log.h"
#include "common/model.h"
#include "common/version.h"
#include "router/args.h"
#include "router/auth.h"
#include "router/cluster.h"
#include "router/cors.h"
#include "router/engine.h"
#include "router/jobs.h"
#include "router/playground.h"
#include "router/pool.h"
#include "router/service.h"
#include "server/http.h"

/* after the drain, how long connections get to take their last responses */
#define SHUTDOWN_GRACE_MS 5000

typedef struct app {
    uv_loop_t *loop;
    http_server *srv;
    pool *pl;
    engine *eng;
    service *svc;
    jobs *jobs;
    model *router;
    uv_signal_t sigterm, sigint, sighup;
    auth *auth;
    uv_timer_t drain_timer;
    int stopping;
    int shut;                /* shutdown_now ran */
    long drain_limit_ms;
    uint64_t drain_start;
} app;

/* Stops everything, in the order that lets every pending request be answered:
 * the jobs still live fail with 503 shutting_down (their event streams get
 * that error event and end); the HTTP server stops taking requests but keeps
 * its connections until they owe nothing (SHUTDOWN_GRACE_MS at most); the
 * engine fails what is still running with 503 shutting_down (answered with
 * Connection: close) and never calls the pool again; the pool fails the calls
 * still out, which lets the engine's ticks end. The loop ends when all of
 * them have closed. */
static void shutdown_now(app *a)
{
    if (a->shut)
        return;
    a->shut = 1;
    uv_timer_stop(&a->drain_timer);
    uv_close((uv_handle_t *)&a->drain_timer, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sighup, NULL);
    service_stop(a->svc);
    jobs_close(a->jobs); /* before the engine closes: it stops the jobs' engine work */
    http_server_shutdown(a->srv, SHUTDOWN_GRACE_MS, NULL, NULL);
    engine_close(a->eng, NULL, NULL);
    pool_close(a->pl, NULL, NULL);
}

/* Every connection is a file descriptor: raise the soft limit towards what the
 * connection caps need (up to the hard limit; a warning if that is too low). */
static void raise_fd_limit(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur >= (rlim_t)need)
        return;
    rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= (rlim_t)need ? (rlim_t)need
                                                                             : rl.rlim_max;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) || want < (rlim_t)need)
        log_warn("open files limit is %llu, below the %ld the connection caps need: raise it "
                 "(ulimit -n, LimitNOFILE=) or lower --max-connections",
                 (unsigned long long)want, need);
}

/* Requests and jobs admitted and not finished yet. */
static int pending(const app *a)
{
    return service_pending(a->svc) + jobs_pending(a->jobs);
}

static void on_drain_timer(uv_timer_t *t)
{
    app *a = t->data;
    uint64_t ms = (uv_hrtime() - a->drain_start) / 1000000;
    if (pending(a) == 0 || ms > (uint64_t)a->drain_limit_ms) {
        if (pending(a))
            log_warn("drain limit (%ld ms) reached with %d request(s) or job(s) pending: they "
                     "get 503", a->drain_limit_ms, pending(a));
        log_info("stopped");
        shutdown_now(a);
    }
}

static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    app *a = s->data;
    if (!a->auth) {
        log_info("SIGHUP: no --auth-token-file, nothing to re-read");
        return;
    }
    char warn[300], err[400];
    if (auth_reload(a->auth, warn, sizeof warn, err, sizeof err)) {
        log_error("SIGHUP: %s; the old tokens stay in use", err);
        return;
    }
    if (warn[0])
        log_warn("%s", warn);
    log_info("SIGHUP: %d token(s) loaded", auth_count(a->auth));
}

static void on_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (a->stopping) {
        log_warn("second signal: stopping now, pending requests get 503");
        shutdown_now(a);
        return;
    }
    a->stopping = 1;
    log_info("signal %d: draining %d request(s) and job(s), then exiting", signum, pending(a));
    service_set_draining(a->svc, 1);
    a->drain_start = uv_hrtime();
    uv_timer_start(&a->drain_timer, on_drain_timer, 0, 50);
}

int main(int argc, char **argv)
{
    log_set_name("ddm-router");
    blas_select(&argc, argv); /* may re-execute with the kernels measured fastest here */
    router_opts o;
    char err[512];
    switch (router_args_parse(argc, argv, &o, stdout, err, sizeof err)) {
    case ROUTER_ARGS_EXIT:
        return 0;
    case ROUTER_ARGS_USAGE:
        fprintf(stderr, "ddm-router: %s\n", err);
        return 2;
    case ROUTER_ARGS_RUN:
        break;
    }
    cluster cl;
    if (cluster_load(o.cluster, &cl, err, sizeof err)) {
        fprintf(stderr, "ddm-router: %s\n", err);
        return 1;
    }
    if (router_args_settings(&o, &cl, NULL, err, sizeof err)) {
        fprintf(stderr, "ddm-router: %s\n", err);
        cluster_free(&cl);
        return 1;
    }
    auth *tokens = NULL; /* loaded before anything else can fail (nothing to undo) */
    if (o.auth_file) {
        auth_defaults ad = { .concurrency = (int)o.token_concurrency, .queue = (int)o.token_queue };
        char warn[300];
        if (auth_load(o.auth_file, &ad, &tokens, warn, sizeof warn, err, sizeof err)) {
            fprintf(stderr, "ddm-router: %s\n", err);
            cluster_free(&cl);
            return 1;
        }
        if (warn[0])
            log_warn("%s", warn);
    } else if (o.public_metrics || o.public_experts) {
        log_warn("--public-metrics / --public-experts mean nothing without --auth-token-file");
    }
    openblas_set_num_threads(1); /* parallel by rows instead (--threads) */
    /* The libuv threadpool runs the ticks' plan and finish phases and the
     * response encoding: size it so every tick and every encoder has a thread
     * (libuv reads this once, at the first queued work). */
    long pool_threads = o.ticks + SERVICE_ENCODERS;
    const char *uvt = getenv("UV_THREADPOOL_SIZE");
    if (!uvt || atol(uvt) < pool_threads) {
        char v[24];
        snprintf(v, sizeof v, "%ld", pool_threads);
        setenv("UV_THREADPOOL_SIZE", v, 1);
    }
    const char *listen = o.listen ? o.listen : cl.listen ? cl.listen : "127.0.0.1:8080";
    const char *rpath = o.router_weights ? o.router_weights : cl.router_path;

    app a;
    memset(&a, 0, sizeof a);
    a.drain_limit_ms = o.drain_timeout_ms;
    a.router = model_open(rpath, err, sizeof err);
    if (!a.router) {
        fprintf(stderr, "ddm-router: %s\n", err);
        cluster_free(&cl);
        return 1;
    }
    if (a.router->kind != MODEL_ROUTER || a.router->cfg.out_dim != cl.n_experts) {
        fprintf(stderr, "ddm-router: %s is a %s network with %d outputs, but %s lists %d experts\n",
                rpath, model_kind_name(a.router->kind), a.router->cfg.out_dim, o.cluster,
                cl.n_experts);
        model_close(a.router);
        cluster_free(&cl);
        return 1;
    }
    int dim = a.router->cfg.in_dim;
    const model_shape *shape = &a.router->shape; /* image shape and class names of the set */
    int width = shape->width, height = shape->height;
    int n_classes = a.router->cfg.n_classes;

    a.loop = uv_default_loop();
    pool_config pc;
    pool_config_default(&pc);
    pc.dim = dim;
    pc.n_experts = cl.n_experts;
    pc.n_classes = n_classes;
    pc.height = shape->height;
    pc.width = shape->width;
    pc.channels = shape->channels;
    pc.n_class_names = shape->n_class_names;
    pc.class_names = (const char *const *)shape->class_names;
    pc.call_timeout_ms = (uint32_t)o.expert_timeout_ms;
    pc.attempts = (int)o.attempts;
    pc.cluster_key_file = o.cluster_key_file;
    int rc = pool_new(a.loop, &cl, &pc, &a.pl, err, sizeof err);
    int K = cl.n_experts;
    if (rc) {
        fprintf(stderr, "ddm-router: %s\n", err);
        model_close(a.router);
        return 1;
    }
    engine_config ec;
    engine_config_default(&ec);
    ec.max_images = (int)o.max_images;
    ec.tick_capacity = (int)o.tick_capacity;
    ec.ticks_in_flight = (int)o.ticks;
    ec.router_threads = (int)o.threads;
    ec.request_timeout_ms = (uint32_t)o.request_timeout_ms;
    ec.max_request_cost = (uint64_t)o.max_request_cost;
    ec.tick_rows = (int)o.tick_rows;
    ec.share_rows = (int)o.share_rows;
    ec.speculate = (int)o.speculate;
    ec.substitute_queue_rows = (int)o.substitute_queue_rows;
    ec.inline_trajs = (int)o.inline_trajs;
    if (engine_new(a.loop, a.pl, a.router, K, dim, width, height, &ec, &a.eng, err, sizeof err)) {
        fprintf(stderr, "ddm-router: %s\n", err);
        return 1;
    }
    http_config hc;
    http_config_default(&hc);
    hc.max_connections = (uint32_t)o.max_connections;
    hc.max_connections_per_ip = (uint32_t)o.max_connections_per_ip;
    hc.max_body_bytes = (size_t)o.max_body_bytes;
    raise_fd_limit(o.max_connections + hc.reserve_connections + 256);
    jobs_config jc;
    jobs_config_default(&jc);
    jc.ttl_s = (uint32_t)o.job_ttl_s;
    jc.store_bytes = (size_t)o.job_store_mb << 20;
    jc.max_subscribers = (int)o.max_subscribers;
    jc.heartbeat_ms = (uint32_t)o.sse_heartbeat_ms;
    jobs_model jm = { .K = K, .dim = dim, .width = width, .height = height,
                      .channels = shape->channels };
    if (http_server_new(a.loop, &hc, &a.srv) ||
        service_new(a.loop, a.srv, a.eng, a.pl, K, dim, n_classes, &a.svc) ||
        service_set_model(a.svc, shape, a.router->dataset) ||
        jobs_new(a.loop, a.svc, a.eng, &jm, &jc, &a.jobs) || playground_routes(a.svc)) {
        fprintf(stderr, "ddm-router: out of memory\n");
        return 1;
    }
    service_set_jobs(a.svc, a.jobs);
    cors_install(&o.cors, a.srv); /* o lives as long as the server */
    if (tokens) {
        a.auth = tokens;
        const char *pub[3] = { 0 };
        int np = 0;
        if (o.public_metrics)
            pub[np++] = "/metrics";
        if (o.public_experts)
            pub[np++] = "/v1/experts";
        service_set_auth(a.svc, a.auth, pub);
        log_info("bearer tokens on: %d token(s) from %s%s%s", auth_count(a.auth), o.auth_file,
                 o.public_metrics ? ", /metrics public" : "",
                 o.public_experts ? ", /v1/experts public" : "");
    }
    if (http_server_listen(a.srv, listen, err, sizeof err)) {
        fprintf(stderr, "ddm-router: cannot listen on %s: %s\n", listen, err);
        return 1;
    }
    uv_signal_init(a.loop, &a.sigterm);
    uv_signal_init(a.loop, &a.sigint);
    uv_signal_init(a.loop, &a.sighup);
    a.sigterm.data = a.sigint.data = a.sighup.data = &a;
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_signal_start(&a.sighup, on_sighup, SIGHUP);
    uv_timer_init(a.loop, &a.drain_timer);
    a.drain_timer.data = &a;
    char shp[32];
    log_info("listening on %s (port %d), %d experts, %s images of %s, %d classes, router %s",
             listen, http_server_port(a.srv), K, model_shape_str(shape, shp, sizeof shp),
             a.router->dataset[0] ? a.router->dataset : "?", n_classes, rpath);
    uv_run(a.loop, UV_RUN_DEFAULT);
    service_free(a.svc);
    auth_free(a.auth);
    model_close(a.router);
    cluster_free(&cl); /* listen and rpath point into it */
    uv_loop_close(a.loop);
    return 0;
}
