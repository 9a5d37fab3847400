/* router_main.c -- ddm-router: the sampling daemon (flags, wiring, signals). */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
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
#include "router/auth.h"
#include "router/cluster.h"
#include "router/engine.h"
#include "router/pool.h"
#include "router/service.h"
#include "server/http.h"

/* after the drain, how long connections get to take their last responses */
#define SHUTDOWN_GRACE_MS 5000

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
"      --max-images N            images in flight before 503 + Retry-After (default 1024);\n"
"                                a request for more images gets 400\n"
"      --max-request-cost N      expert evaluations one request may cost: images x steps\n"
"                                (x2 heun) x experts per step (k of top-k, K for full,\n"
"                                uniform, threshold, nucleus, 1 for sample, expert:N)\n"
"                                x2 with guidance and a label; over it, 400 (default 400000)\n"
"      --tick-capacity N         trajectories per tick (default 256)\n"
"      --tick-rows N             expert rows per tick (default 512)\n"
"      --share-rows N            rows a request adds to a tick while other requests of\n"
"                                its priority run: keeps small ones fast (default 32)\n"
"      --ticks N                 ticks in flight at once (default 2)\n"
"      --expert-timeout-ms MS    deadline of one expert message attempt (default 2000)\n"
"      --attempts N              sends per expert message before failing (default 3)\n"
"      --request-timeout-ms MS   whole-request deadline, then 504 (default 300000)\n"
"      --max-connections N       HTTP connections; at the cap a new one closes the one idle\n"
"                                longest, else only /healthz and /readyz answer (default 1024)\n"
"      --max-connections-per-ip N  the same per client address (default 256; behind a\n"
"                                proxy all clients share its address: raise it)\n"
"      --max-body-bytes N        request body limit, else 413 (default 65536)\n"
"      --drain-timeout-ms MS     on SIGTERM, how long requests in flight may finish; then\n"
"                                they get 503 (default 30000)\n"
"      --threads N               threads for the router network: a tick's rows are split\n"
"                                over them (default 1; 2 when the router has a core to spare)\n"
"      --cluster-key-file FILE   HMAC key shared with the workers (their --cluster-key-file):\n"
"                                every message is authenticated, a worker without the key\n"
"                                is refused (default: the file's \"set cluster-key-file\", else none)\n"
"      --auth-token-file FILE    require \"Authorization: Bearer <token>\" on the API: one\n"
"                                token a line, \"[name:]token [concurrency=N] [queue=N]\"\n"
"                                (docs/deploy.md); re-read on SIGHUP. /healthz and /readyz\n"
"                                stay open (default: no tokens)\n"
"      --public-metrics          /metrics answers without a token\n"
"      --public-experts          /v1/experts answers without a token\n"
"      --token-concurrency N     a token's sample requests computed at once, unless its\n"
"                                line says (default 4)\n"
"      --token-queue N           and waiting for a turn before 429 (default 16)\n"
"      --log-level LEVEL         debug, info, warn, error (default info)\n"
"  -h, --help                    this text\n"
"  -V, --version                 print the version\n"
"\n"
"Settings may also come from the cluster file as \"set <name> <value>\" with the\n"
"long option's name (e.g. \"set max-images 512\"); flags win over the file.\n"
"SIGHUP: re-read the token file (a bad file keeps the old tokens).\n"
"SIGTERM/SIGINT: stop admitting, finish what is in flight (up to --drain-timeout-ms,\n"
"then 503 with Connection: close), exit 0. A second signal stops at once (503s).\n");
}

typedef struct opts {
    const char *cluster, *listen, *router_weights, *cluster_key_file, *auth_file;
    int public_metrics, public_experts;
    long token_concurrency, token_queue;
    long max_images, tick_capacity, ticks, expert_timeout_ms, attempts, request_timeout_ms;
    long max_connections, threads, drain_timeout_ms, max_request_cost, tick_rows, share_rows;
    long max_connections_per_ip, max_body_bytes;
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
 * the HTTP server stops taking requests but keeps its connections until they
 * owe nothing (SHUTDOWN_GRACE_MS at most); the engine fails what is still
 * running with 503 shutting_down (answered with Connection: close) and never
 * calls the pool again; the pool fails the calls still out, which lets the
 * engine's ticks end. The loop ends when all of them have closed. */
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

static void on_drain_timer(uv_timer_t *t)
{
    app *a = t->data;
    uint64_t ms = (uv_hrtime() - a->drain_start) / 1000000;
    if (service_pending(a->svc) == 0 || ms > (uint64_t)a->drain_limit_ms) {
        if (service_pending(a->svc))
            log_warn("drain limit (%ld ms) reached with %d request(s) pending: they get 503",
                     a->drain_limit_ms, service_pending(a->svc));
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
    log_info("signal %d: draining %d request(s), then exiting", signum, service_pending(a->svc));
    service_set_draining(a->svc, 1);
    a->drain_start = uv_hrtime();
    uv_timer_start(&a->drain_timer, on_drain_timer, 0, 50);
}

int main(int argc, char **argv)
{
    log_set_name("ddm-router");
    blas_fix_core(argv); /* may re-execute this program with faster BLAS kernels */
    opts o = { .max_images = 1024, .tick_capacity = 256, .ticks = 2, .expert_timeout_ms = 2000,
               .attempts = 3, .request_timeout_ms = 300000, .max_connections = 1024,
               .threads = 1, .drain_timeout_ms = 30000,
               .max_request_cost = (long)ENGINE_DEFAULT_MAX_COST,
               .tick_rows = ENGINE_DEFAULT_TICK_ROWS, .share_rows = ENGINE_DEFAULT_SHARE_ROWS,
               .max_connections_per_ip = 256, .max_body_bytes = 65536,
               .token_concurrency = 4, .token_queue = 16 };
    numopt nums[] = {
        { "max-images", 1, 1 << 20, &o.max_images },
        { "tick-capacity", 1, 4096, &o.tick_capacity },
        { "ticks", 1, 8, &o.ticks },
        { "expert-timeout-ms", 10, 3600000, &o.expert_timeout_ms },
        { "attempts", 1, 100, &o.attempts },
        { "request-timeout-ms", 100, 86400000, &o.request_timeout_ms },
        { "max-connections", 1, 1 << 20, &o.max_connections },
        { "threads", 1, 16, &o.threads },
        { "drain-timeout-ms", 0, 3600000, &o.drain_timeout_ms },
        { "max-request-cost", 1, 1000000000000L, &o.max_request_cost },
        { "tick-rows", 1, 1 << 20, &o.tick_rows },
        { "share-rows", 1, 1 << 20, &o.share_rows },
        { "max-connections-per-ip", 1, 1 << 20, &o.max_connections_per_ip },
        { "max-body-bytes", 1024, 1 << 30, &o.max_body_bytes },
        { "token-concurrency", 1, 100000, &o.token_concurrency },
        { "token-queue", 0, 1000000, &o.token_queue },
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
        { "drain-timeout-ms", required_argument, 0, 1008 },
        { "max-request-cost", required_argument, 0, 1009 },
        { "tick-rows", required_argument, 0, 1010 },
        { "share-rows", required_argument, 0, 1011 },
        { "max-connections-per-ip", required_argument, 0, 1012 },
        { "max-body-bytes", required_argument, 0, 1013 },
        { "token-concurrency", required_argument, 0, 1014 },
        { "token-queue", required_argument, 0, 1015 },
        { "auth-token-file", required_argument, 0, 'A' },
        { "public-metrics", no_argument, 0, 'M' },
        { "public-experts", no_argument, 0, 'E' },
        { "log-level", required_argument, 0, 'L' },
        { "cluster-key-file", required_argument, 0, 'k' },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    int c;
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
        case 'k': o.cluster_key_file = optarg; break;
        case 'A': o.auth_file = optarg; break;
        case 'M': o.public_metrics = 1; break;
        case 'E': o.public_experts = 1; break;
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
        known |= !strcmp(cl.set_keys[i], "cluster-key-file");
        if (!known)
            log_warn("%s: unknown setting \"%s\" ignored", o.cluster, cl.set_keys[i]);
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
    pc.cluster_key_file = o.cluster_key_file ? o.cluster_key_file
                                             : cluster_setting(&cl, "cluster-key-file");
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
    if (http_server_new(a.loop, &hc, &a.srv) ||
        service_new(a.loop, a.srv, a.eng, a.pl, K, dim, n_classes, &a.svc) ||
        service_set_model(a.svc, shape, a.router->dataset)) {
        fprintf(stderr, "ddm-router: out of memory\n");
        return 1;
    }
    if (o.auth_file) {
        auth_defaults ad = { .concurrency = (int)o.token_concurrency, .queue = (int)o.token_queue };
        char warn[300];
        if (auth_load(o.auth_file, &ad, &a.auth, warn, sizeof warn, err, sizeof err)) {
            fprintf(stderr, "ddm-router: %s\n", err);
            return 1;
        }
        if (warn[0])
            log_warn("%s", warn);
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
    } else if (o.public_metrics || o.public_experts) {
        log_warn("--public-metrics / --public-experts mean nothing without --auth-token-file");
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
