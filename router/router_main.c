/* router_main.c -- ddm-router: the sampling daemon (flags, wiring, signals). */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "common/blas.h"
#include "common/err.h"
#include "common/log.h"
#include "common/model.h"
#include "common/version.h"
#include "router/cluster.h"
#include "router/cors.h"
#include "router/engine.h"
#include "router/jobs.h"
#include "router/playground.h"
#include "router/pool.h"
#include "router/service.h"
#include "server/http.h"

#define DRAIN_LIMIT_MS 30000

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddm-router --cluster FILE [options]\n"
"\n"
"Serves a Decentralized Diffusion Model over HTTP: routes every sampling step\n"
"to the experts the router network selects, on ddm-expert workers over nanomsg.\n"
"\n"
"  -c, --cluster FILE            cluster file: models dir, expert replicas, settings (required)\n"
"  -l, --listen HOST:PORT        HTTP address (default: the file's \"listen\", else 127.0.0.1:8080)\n"
"      --router-weights PATH     router network (default: the file's router / <models>/router.safetensors)\n"
"      --max-images N            images in flight before 503 + Retry-After (default 1024)\n"
"      --tick-capacity N         trajectories per tick (default 256)\n"
"      --ticks N                 ticks in flight at once (default 2)\n"
"      --expert-timeout-ms MS    deadline of one expert message attempt (default 2000)\n"
"      --attempts N              sends per expert message before failing (default 3)\n"
"      --request-timeout-ms MS   whole-request deadline, then 504 (default 300000)\n"
"      --max-connections N       HTTP connections before 503 (default 1024)\n"
"      --threads N               threads for the router network: a tick's rows are split\n"
"                                over them (default 1; 2 when the router has a core to spare)\n"
"      --job-ttl-s S             finished jobs are kept S seconds (default 600)\n"
"      --job-store-mb MB         results of finished jobs kept, in all (default 256)\n"
"      --max-subscribers N       event streams per job (default 8)\n"
"      --sse-heartbeat-ms MS     comment line on a quiet event stream (default 15000)\n"
"      --cors-origin ORIGIN      allow browsers on ORIGIN (e.g. http://localhost:3000, or *)\n"
"                                to call the API; repeatable; default: no CORS\n"
"      --log-level LEVEL         debug, info, warn, error (default info)\n"
"  -h, --help                    this text\n"
"  -V, --version                 print the version\n"
"\n"
"Settings may also come from the cluster file as \"set <name> <value>\" with the\n"
"long option's name (e.g. \"set max-images 512\"); flags win over the file.\n"
"SIGTERM/SIGINT: stop admitting, finish what is in flight (up to 30 s), exit 0.\n");
}

typedef struct opts {
    const char *cluster, *listen, *router_weights;
    long max_images, tick_capacity, ticks, expert_timeout_ms, attempts, request_timeout_ms;
    long max_connections, threads;
    long job_ttl_s, job_store_mb, max_subscribers, sse_heartbeat_ms;
} opts;

static int parse_long(const char *name, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "ddm-router: --%s \"%s\": expected an integer %ld..%ld\n", name, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* numeric settings: flag name, bounds, where it goes */
typedef struct numopt { const char *name; long lo, hi; long *dst; } numopt;

typedef struct app {
    uv_loop_t *loop;
    http_server *srv;
    pool *pl;
    engine *eng;
    service *svc;
    jobs *jobs;
    cors cors;
    model *router;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    int stopping;
    uint64_t drain_start;
} app;

static void shutdown_now(app *a)
{
    uv_timer_stop(&a->drain_timer);
    uv_close((uv_handle_t *)&a->drain_timer, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    jobs_close(a->jobs); /* before the engine: it cancels the jobs' engine work */
    http_server_close(a->srv, NULL, NULL);
    engine_close(a->eng, NULL, NULL);
    pool_close(a->pl, NULL, NULL);
}

static void on_drain_timer(uv_timer_t *t)
{
    app *a = t->data;
    uint64_t ms = (uv_hrtime() - a->drain_start) / 1000000;
    int pending = service_pending(a->svc) + jobs_pending(a->jobs);
    if (pending == 0 || ms > DRAIN_LIMIT_MS) {
        if (pending)
            log_warn("drain limit reached with %d requests or jobs pending", pending);
        log_info("stopped");
        shutdown_now(a);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (a->stopping) {
        log_warn("second signal: stopping now");
        shutdown_now(a);
        return;
    }
    a->stopping = 1;
    log_info("signal %d: draining %d request(s), then exiting", signum, service_pending(a->svc));
    service_set_draining(a->svc, 1);
    jobs_set_draining(a->jobs, 1);
    a->drain_start = uv_hrtime();
    uv_timer_start(&a->drain_timer, on_drain_timer, 0, 50);
}

int main(int argc, char **argv)
{
    log_set_name("ddm-router");
    blas_fix_core(argv); /* may re-execute this program with faster BLAS kernels */
    opts o = { .max_images = 1024, .tick_capacity = 256, .ticks = 2, .expert_timeout_ms = 2000,
               .attempts = 3, .request_timeout_ms = 300000, .max_connections = 1024,
               .threads = 1, .job_ttl_s = 600, .job_store_mb = 256, .max_subscribers = 8,
               .sse_heartbeat_ms = 15000 };
    numopt nums[] = {
        { "max-images", 1, 1 << 20, &o.max_images },
        { "tick-capacity", 1, 4096, &o.tick_capacity },
        { "ticks", 1, 8, &o.ticks },
        { "expert-timeout-ms", 10, 3600000, &o.expert_timeout_ms },
        { "attempts", 1, 100, &o.attempts },
        { "request-timeout-ms", 100, 86400000, &o.request_timeout_ms },
        { "max-connections", 1, 1 << 20, &o.max_connections },
        { "threads", 1, 16, &o.threads },
        { "job-ttl-s", 1, 30 * 86400, &o.job_ttl_s },
        { "job-store-mb", 1, 1 << 20, &o.job_store_mb },
        { "max-subscribers", 1, 1024, &o.max_subscribers },
        { "sse-heartbeat-ms", 100, 3600000, &o.sse_heartbeat_ms },
    };
    enum { N_NUMS = sizeof nums / sizeof nums[0] };
    int set_by_flag[N_NUMS] = { 0 };
    static const struct option longopts[] = {
        { "cluster", required_argument, 0, 'c' },
        { "listen", required_argument, 0, 'l' },
        { "router-weights", required_argument, 0, 'w' },
        { "max-images", required_argument, 0, 1000 },
        { "tick-capacity", required_argument, 0, 1001 },
        { "ticks", required_argument, 0, 1002 },
        { "expert-timeout-ms", required_argument, 0, 1003 },
        { "attempts", required_argument, 0, 1004 },
        { "request-timeout-ms", required_argument, 0, 1005 },
        { "max-connections", required_argument, 0, 1006 },
        { "threads", required_argument, 0, 1007 },
        { "job-ttl-s", required_argument, 0, 1008 },
        { "job-store-mb", required_argument, 0, 1009 },
        { "max-subscribers", required_argument, 0, 1010 },
        { "sse-heartbeat-ms", required_argument, 0, 1011 },
        { "cors-origin", required_argument, 0, 'O' },
        { "log-level", required_argument, 0, 'L' },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    int c;
    app a;
    memset(&a, 0, sizeof a);
    while ((c = getopt_long(argc, argv, "c:l:hV", longopts, NULL)) != -1) {
        if (c >= 1000 && c < 1000 + N_NUMS) {
            numopt *n = &nums[c - 1000];
            if (parse_long(n->name, optarg, n->lo, n->hi, n->dst))
                return 2;
            set_by_flag[c - 1000] = 1;
            continue;
        }
        switch (c) {
        case 'c': o.cluster = optarg; break;
        case 'l': o.listen = optarg; break;
        case 'w': o.router_weights = optarg; break;
        case 'O':
            if (cors_add(&a.cors, optarg)) {
                fprintf(stderr, "ddm-router: --cors-origin \"%s\": give an origin such as "
                                "http://localhost:3000 (scheme://host[:port], no path) or *, "
                                "at most %d\n", optarg, CORS_MAX_ORIGINS);
                return 2;
            }
            break;
        case 'L': {
            int lv = log_parse_level(optarg);
            if (lv < 0) {
                fprintf(stderr, "ddm-router: --log-level \"%s\": use debug, info, warn or error\n", optarg);
                return 2;
            }
            log_set_level((log_level)lv);
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V': printf("ddm-router %s\n", DDM_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ddm-router: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (!o.cluster) {
        fprintf(stderr, "ddm-router: --cluster FILE is required (e.g. deploy/local/digits.conf)\n");
        return 2;
    }
    char err[512];
    cluster cl;
    if (cluster_load(o.cluster, &cl, err, sizeof err)) {
        fprintf(stderr, "ddm-router: %s\n", err);
        return 1;
    }
    for (int i = 0; i < N_NUMS; i++) {
        const char *v = cluster_setting(&cl, nums[i].name);
        if (v && !set_by_flag[i] && parse_long(nums[i].name, v, nums[i].lo, nums[i].hi, nums[i].dst)) {
            fprintf(stderr, "ddm-router: in %s: bad value for setting %s\n", o.cluster, nums[i].name);
            cluster_free(&cl);
            return 1;
        }
    }
    for (int i = 0; i < cl.n_settings; i++) {
        int known = 0;
        for (int k = 0; k < N_NUMS; k++)
            known |= !strcmp(cl.set_keys[i], nums[k].name);
        if (!known)
            log_warn("%s: unknown setting \"%s\" ignored", o.cluster, cl.set_keys[i]);
    }
    openblas_set_num_threads(1); /* parallel by rows instead (--threads) */
    const char *listen = o.listen ? o.listen : cl.listen ? cl.listen : "127.0.0.1:8080";
    const char *rpath = o.router_weights ? o.router_weights : cl.router_path;

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
    int dim = a.router->cfg.in_dim, side = 1;
    while (side * side < dim)
        side++;
    int width = side * side == dim ? side : dim, height = side * side == dim ? side : 1;
    int n_classes = a.router->cfg.n_classes;

    a.loop = uv_default_loop();
    pool_config pc;
    pool_config_default(&pc);
    pc.dim = dim;
    pc.n_experts = cl.n_experts;
    pc.n_classes = n_classes;
    pc.call_timeout_ms = (uint32_t)o.expert_timeout_ms;
    pc.attempts = (int)o.attempts;
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
    if (engine_new(a.loop, a.pl, a.router, K, dim, width, height, &ec, &a.eng, err, sizeof err)) {
        fprintf(stderr, "ddm-router: %s\n", err);
        return 1;
    }
    http_config hc;
    http_config_default(&hc);
    hc.max_connections = (uint32_t)o.max_connections;
    hc.max_body_bytes = 1 << 20;
    if (http_server_new(a.loop, &hc, &a.srv) ||
        service_new(a.loop, a.srv, a.eng, a.pl, K, dim, n_classes, &a.svc)) {
        fprintf(stderr, "ddm-router: out of memory\n");
        return 1;
    }
    jobs_config jc;
    jobs_config_default(&jc);
    jc.ttl_s = (uint32_t)o.job_ttl_s;
    jc.store_bytes = (size_t)o.job_store_mb << 20;
    jc.max_subscribers = (int)o.max_subscribers;
    jc.heartbeat_ms = (uint32_t)o.sse_heartbeat_ms;
    jobs_model jm = { .K = K, .dim = dim, .n_classes = n_classes, .width = width, .height = height };
    if (jobs_new(a.loop, a.srv, a.eng, &jm, &jc, &a.jobs) || playground_routes(a.srv)) {
        fprintf(stderr, "ddm-router: out of memory\n");
        return 1;
    }
    service_set_jobs(a.svc, a.jobs);
    cors_install(&a.cors, a.srv);
    if (http_server_listen(a.srv, listen, err, sizeof err)) {
        fprintf(stderr, "ddm-router: cannot listen on %s: %s\n", listen, err);
        return 1;
    }
    uv_signal_init(a.loop, &a.sigterm);
    uv_signal_init(a.loop, &a.sigint);
    a.sigterm.data = a.sigint.data = &a;
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_timer_init(a.loop, &a.drain_timer);
    a.drain_timer.data = &a;
    log_info("listening on %s (port %d), %d experts, dim %d, %d classes, router %s", listen,
             http_server_port(a.srv), K, dim, n_classes, rpath);
    uv_run(a.loop, UV_RUN_DEFAULT);
    service_free(a.svc);
    model_close(a.router);
    cluster_free(&cl); /* listen and rpath point into it */
    uv_loop_close(a.loop);
    return 0;
}
