/* peer_bench_main.c -- `make bench-peer`: ddm side by side with a PyTorch peer.
 *
 * Three implementations of the same sampling (the shipped models/digits: a
 * router network and K experts; unconditional, guidance off, Euler, top-2
 * renormalised or full, the same steps), measured in one run:
 *   PyTorch     tools/bench/torch_peer.py: PyTorch eager on the CPU, the
 *               PyTorch worker's MLP (expert-worker/python/ddm_torch/mlp.py),
 *               batched over the images, each expert on the rows that chose it;
 *               a child process driven over a pipe (its "bench" command);
 *   in-process  router/local (ensemble_sample), as ddm-eval samples;
 *   served      ddm-router and K ddm-expert workers on tcp loopback, set up as
 *               deploy/local/digits.conf (router --ticks 1 --threads 2, workers
 *               --max-delay-us 0, as ddm-cluster starts them), single-image
 *               requests from closed-loop clients (tools/client/loadgen).
 * Two load points: 1 image (one image at a time: a batch of 1, one client)
 * and 32 images in flight (a batch of 32 for PyTorch and in-process, 32
 * single-image clients for served). PyTorch and in-process run on the same
 * noise: images 0..31 of one seed, written by ddm's own trajectory code
 * (traj_new) to a file the peer reads; served requests carry no seed (the
 * router draws one per request, so the 32 in flight are 32 images).
 *
 * First it checks that the three compute the same thing: PyTorch's images
 * against in-process ones from the same noise (float difference and 8-bit
 * pixels), and served images of that seed against in-process ones (pixels).
 * A difference above --tolerance stops the benchmark: a benchmark of another
 * computation is worthless. Then rounds: in each round every (strategy, load)
 * cell measures the three systems back to back for --seconds each, in an
 * order that rotates from round to round (the machine is shared: drift hits
 * all three alike); a warm-up round first is not counted. Prints each round,
 * then a Markdown table of medians and of the per-round ratios, then where
 * each spends its time (the peer's phases per step and torch.profiler's
 * operators; ddm in-process phases per step; the router's /metrics). */
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/blas.h"
#include "common/png.h"
#include "ddm/v1/api.pb-c.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/cluster.h"
#include "tests/support/metrics.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/client/cli.h"
#include "tools/client/loadgen.h"

#define MAX_IMAGES 32          /* the larger load point */
#define MAX_ROUNDS 50
#define PEER_START_MS 300000   /* importing torch on a loaded machine is slow */

/* ---- the PyTorch peer: a child process answering one line per command ---- */

typedef struct peer {
    pid_t pid;
    int to, from;      /* its stdin, its stdout */
    char buf[8192];
    size_t have;
    char log[300];     /* its stderr */
} peer;

/* Reads one line (without the newline) within timeout_ms; 0, or -1 on
 * end of file, error or timeout. */
static int peer_line(peer *p, char *line, size_t len, int timeout_ms)
{
    double until = proc_now_s() + timeout_ms / 1e3;
    for (;;) {
        char *nl = memchr(p->buf, '\n', p->have);
        if (nl) {
            size_t n = (size_t)(nl - p->buf);
            snprintf(line, len, "%.*s", (int)n, p->buf);
            p->have -= n + 1;
            memmove(p->buf, nl + 1, p->have);
            return 0;
        }
        if (p->have == sizeof p->buf) /* a line longer than the buffer: cut it */
            p->have = 0;
        int left = (int)((until - proc_now_s()) * 1e3);
        struct pollfd pf = { .fd = p->from, .events = POLLIN };
        if (left <= 0 || poll(&pf, 1, left) <= 0)
            return -1;
        ssize_t r = read(p->from, p->buf + p->have, sizeof p->buf - p->have);
        if (r <= 0)
            return -1;
        p->have += (size_t)r;
    }
}

/* Starts torch_peer.py --serve with `threads` threads, its stderr in
 * dir/peer-<threads>.log, and waits for its "ready". 0 or -1. */
static int peer_start(peer *p, const char *python, const char *script, const char *models,
                      int threads, const char *omp_wait, const char *dir)
{
    memset(p, 0, sizeof *p);
    snprintf(p->log, sizeof p->log, "%s/peer-%d.log", dir, threads);
    int in[2], out[2];
    if (pipe(in) || pipe(out))
        return -1;
    char th[16];
    snprintf(th, sizeof th, "%d", threads);
    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0)
            dup2(fd, 2);
        close(in[1]);
        close(out[0]);
        char *av[] = { (char *)python, (char *)script, "--models", (char *)models, "--serve",
                       "--threads", th, "--omp-wait", (char *)omp_wait, NULL };
        execv(python, av);
        fprintf(stderr, "exec %s: %s\n", python, strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    p->to = in[1];
    p->from = out[0];
    char line[256];
    if (peer_line(p, line, sizeof line, PEER_START_MS) || strcmp(line, "ready")) {
        fprintf(stderr, "peer_bench: the PyTorch peer did not start; its log:\n");
        proc_dump_log(p->log);
        return -1;
    }
    return 0;
}

/* Sends cmd and reads the answer: lines starting with "# " are printed
 * (a profile); the last starts with "ok" (returns 0, the rest in reply) or
 * "error" (printed, returns -1). */
static int peer_ask(peer *p, const char *cmd, char *reply, size_t len, int timeout_ms)
{
    char line[1024];
    size_t n = strlen(cmd);
    if (write(p->to, cmd, n) != (ssize_t)n || write(p->to, "\n", 1) != 1)
        return -1;
    for (;;) {
        if (peer_line(p, line, sizeof line, timeout_ms)) {
            fprintf(stderr, "peer_bench: no answer from the PyTorch peer to \"%s\"; its log:\n",
                    cmd);
            proc_dump_log(p->log);
            return -1;
        }
        if (!strncmp(line, "# ", 2)) {
            printf("    %s\n", line + 2);
            continue;
        }
        if (!strncmp(line, "ok", 2)) {
            snprintf(reply, len, "%.*s", (int)(len - 1), line[2] ? line + 3 : "");
            return 0;
        }
        fprintf(stderr, "peer_bench: the PyTorch peer answered \"%s\" to \"%s\"\n", line, cmd);
        return -1;
    }
}

static void peer_stop(peer *p)
{
    if (p->pid <= 0)
        return;
    if (write(p->to, "quit\n", 5) != 5 || proc_wait(p->pid, 10000) < 0)
        proc_stop(p->pid, SIGTERM, 5000);
    close(p->to);
    close(p->from);
    p->pid = 0;
}

/* ---- the measurements ---------------------------------------------------------------------- */

enum { SYS_PEER, SYS_PEER1, SYS_INPROC, SYS_SERVED, N_SYS };
static const char *sys_name[N_SYS] = { "PyTorch", "PyTorch (1 thread)", "ddm in-process",
                                       "ddm served" };

typedef struct meas {
    double ips;      /* images per second */
    double lat_ms;   /* one batch (PyTorch, in-process) or the p50 request (served) */
    double cpu_ms;   /* CPU per image: the peer process / this process / router + workers */
    /* where the time went, per step (in-process: sample_stats; served: /metrics per tick) */
    double router_us, experts_us, other_us;
    int failed;
} meas;

typedef struct bench {
    ensemble *e;
    peer pr;             /* --threads threads */
    peer pr1;            /* 1 thread (pid 0 when not measured) */
    tcluster cl;
    const char *noise;   /* MAX_IMAGES images of `seed`, raw float32 */
    uint64_t seed;
    int steps;
    double seconds;
} bench;

static double median_of(const meas *m, int n, size_t off)
{
    double v[MAX_ROUNDS];
    for (int i = 0; i < n; i++)
        v[i] = *(const double *)((const char *)&m[i] + off);
    return cli_median(v, (size_t)n);
}

static int measure_peer(bench *b, peer *pr, const char *strat, int n, meas *m)
{
    char cmd[600], reply[256];
    snprintf(cmd, sizeof cmd, "bench %s %d %d %.3f %s", strat, n, b->steps, b->seconds, b->noise);
    if (peer_ask(pr, cmd, reply, sizeof reply, (int)(b->seconds * 1000) + 600000))
        return -1;
    long batches, images;
    double wall, cpu;
    if (sscanf(reply, "%ld %ld %lf %lf", &batches, &images, &wall, &cpu) != 4 || images < 1)
        return -1;
    m->ips = (double)images / wall;
    m->lat_ms = 1e3 * wall / (double)batches;
    m->cpu_ms = 1e3 * cpu / (double)images;
    return 0;
}

static int measure_inproc(bench *b, const char *strat, int n, meas *m)
{
    char err[256];
    sample_params p;
    sample_params_default(&p, b->e->K);
    if (strategy_parse(strat, b->e->K, NAN, NAN, &p.strat, err, sizeof err))
        return -1;
    p.n = n;
    p.steps = b->steps;
    p.seed = b->seed;
    float *out = malloc((size_t)n * (size_t)b->e->dim * sizeof *out);
    if (!out)
        return -1;
    sample_stats st, sum = { 0 };
    int reps = 0, rc = 0;
    double c0 = proc_self_cpu_seconds(), t0 = proc_now_s();
    do {
        rc = ensemble_sample(b->e, &p, out, &st, NULL);
        sum.router_s += st.router_s;
        sum.experts_s += st.experts_s;
        sum.plan_finish_s += st.plan_finish_s;
        reps++;
    } while (!rc && proc_now_s() - t0 < b->seconds);
    double wall = proc_now_s() - t0;
    free(out);
    if (rc)
        return -1;
    double images = (double)n * reps, steps = (double)reps * b->steps;
    m->ips = images / wall;
    m->lat_ms = 1e3 * wall / reps;
    m->cpu_ms = 1e3 * (proc_self_cpu_seconds() - c0) / images;
    m->router_us = 1e6 * sum.router_s / steps;
    m->experts_us = 1e6 * sum.experts_s / steps;
    m->other_us = 1e6 * sum.plan_finish_s / steps;
    return 0;
}

static double cluster_cpu_s(const tcluster *c)
{
    double s = proc_cpu_seconds(c->router);
    for (int i = 0; i < c->n_workers; i++)
        s += proc_cpu_seconds(c->workers[i]);
    return s;
}

static int measure_served(bench *b, const char *strat, int clients, meas *m)
{
    char body[160];
    snprintf(body, sizeof body, "{\"n\": 1, \"steps\": %d, \"strategy\": \"%s\"}", b->steps, strat);
    loadgen_config lc = {
        .hostport = b->cl.hostport, .method = "POST", .path = "/v1/samples", .body = body,
        .body_len = strlen(body), .content_type = "application/json",
        .accept = "application/json", .connections = clients,
        .duration_ms = (long)(b->seconds * 1000), .timeout_ms = 600000,
    };
    char *m0 = tmetrics_fetch(b->cl.hostport);
    double cpu0 = cluster_cpu_s(&b->cl);
    loadgen_result r;
    char err[256];
    int rc = loadgen_run(&lc, &r, err, sizeof err);
    double cpu1 = cluster_cpu_s(&b->cl);
    char *m1 = tmetrics_fetch(b->cl.hostport);
    if (rc || r.ok == 0) {
        fprintf(stderr, "peer_bench: served: %s\n", rc ? err : "no request succeeded");
        free(m0);
        free(m1);
        return -1;
    }
    m->ips = (double)r.ok / r.elapsed_s;
    m->lat_ms = r.p50_ms;
    m->cpu_ms = 1e3 * (cpu1 - cpu0) / (double)r.ok;
    m->failed = (int)r.failed;
#define DELTA(name) (tmetrics_value(m1, name) - tmetrics_value(m0, name))
    double ticks = DELTA("ddm_ticks_total");
    if (ticks > 0) {
        double overhead = DELTA("ddm_tick_overhead_seconds_total");
        double net = DELTA("ddm_router_net_seconds_total");
        double wall = r.elapsed_s;
        m->router_us = 1e6 * net / ticks;
        m->other_us = 1e6 * (overhead - net) / ticks;
        /* the rest of a tick: waiting for the experts' answers (ticks run back to back) */
        m->experts_us = 1e6 * (wall - overhead) / ticks;
    }
#undef DELTA
    free(m0);
    free(m1);
    return 0;
}

static int measure(bench *b, int sys, const char *strat, int n, meas *m)
{
    memset(m, 0, sizeof *m);
    switch (sys) {
    case SYS_PEER:   return measure_peer(b, &b->pr, strat, n, m);
    case SYS_PEER1:  return b->pr1.pid > 0 ? measure_peer(b, &b->pr1, strat, n, m) : 0;
    case SYS_INPROC: return measure_inproc(b, strat, n, m);
    default:         return measure_served(b, strat, n, m);
    }
}

/* ---- the same computation? --------------------------------------------------------------- */

/* Writes images 0..n-1's initial noise of seed (ddm's own trajectories) to path. */
static int write_noise(const char *path, int K, int dim, uint64_t seed, int n)
{
    sample_params p;
    sample_params_default(&p, K);
    p.n = n;
    p.seed = seed;
    FILE *f = fopen(path, "wb");
    int rc = f ? 0 : -1;
    for (int i = 0; i < n && !rc; i++) {
        traj *tr = traj_new(&p, i, dim);
        if (!tr || fwrite(tr->x, sizeof(float), (size_t)dim, f) != (size_t)dim)
            rc = -1;
        traj_free(tr);
    }
    if (f && fclose(f))
        rc = -1;
    return rc;
}

/* The served images of request {n, steps, seed, strategy} as 8-bit pixels
 * into px [n][dim]; 0 or -1. */
static int served_pixels(bench *b, const char *strat, int n, uint8_t *px)
{
    char body[200];
    snprintf(body, sizeof body, "{\"n\": %d, \"steps\": %d, \"seed\": %llu, \"strategy\": \"%s\"}",
             n, b->steps, (unsigned long long)b->seed, strat);
    httpc *c;
    char err[128];
    if (httpc_open(b->cl.hostport, 600000, &c, err, sizeof err))
        return -1;
    httpc_header h[] = { { "Content-Type", "application/json" },
                         { "Accept", "application/x-protobuf" } };
    httpc_response r;
    int rc = httpc_request(c, "POST", "/v1/samples", h, 2, body, strlen(body), &r);
    httpc_close(c);
    if (rc)
        return -1;
    Ddm__V1__SampleResponse *resp = r.status == 200 ?
        ddm__v1__sample_response__unpack(NULL, r.body_len, (uint8_t *)r.body) : NULL;
    rc = resp && (int)resp->n_images == n ? 0 : -1;
    for (int i = 0; i < n && !rc; i++) {
        uint8_t *p;
        int w, hh;
        if (pngio_decode_grey(resp->images[i].data, resp->images[i].len, &p, &w, &hh, err,
                              sizeof err))
            rc = -1;
        else if (w * hh != b->e->dim)
            rc = -1, free(p);
        else
            memcpy(px + (size_t)i * b->e->dim, p, (size_t)b->e->dim), free(p);
    }
    if (resp)
        ddm__v1__sample_response__free_unpacked(resp, NULL);
    httpc_response_free(&r);
    return rc;
}

/* PyTorch and served against in-process on images 0..n-1 of the seed.
 * Returns 0 when PyTorch's floats are within tol and served pixels within
 * one 8-bit level. */
static int check(bench *b, const char *strat, int n, double tol, const char *dir)
{
    size_t D = (size_t)b->e->dim, total = (size_t)n * D;
    float *ref = malloc(total * sizeof *ref), *pt = malloc(total * sizeof *pt);
    uint8_t *sv = malloc(total);
    char err[256], cmd[700], reply[128], out[300];
    int rc = ref && pt && sv ? 0 : -1;
    sample_params p;
    sample_params_default(&p, b->e->K);
    if (!rc)
        rc = strategy_parse(strat, b->e->K, NAN, NAN, &p.strat, err, sizeof err);
    p.n = n;
    p.steps = b->steps;
    p.seed = b->seed;
    if (!rc)
        rc = ensemble_sample(b->e, &p, ref, NULL, NULL);
    /* the peer reads the first n noise images: give it a file of exactly n */
    char noise_n[300];
    snprintf(noise_n, sizeof noise_n, "%s/noise-%d.f32", dir, n);
    snprintf(out, sizeof out, "%s/peer-%s-%d.f32", dir, strat, n);
    if (!rc)
        rc = write_noise(noise_n, b->e->K, (int)D, b->seed, n);
    snprintf(cmd, sizeof cmd, "sample %s %d %s %s", strat, b->steps, noise_n, out);
    if (!rc)
        rc = peer_ask(&b->pr, cmd, reply, sizeof reply, 600000);
    FILE *f = rc ? NULL : fopen(out, "rb");
    if (!f || fread(pt, sizeof(float), total, f) != total)
        rc = -1;
    if (f)
        fclose(f);
    if (!rc)
        rc = served_pixels(b, strat, n, sv);
    if (rc) {
        fprintf(stderr, "peer_bench: check of %s could not run\n", strat);
        free(ref), free(pt), free(sv);
        return -1;
    }
    double maxd = 0, maxv = 0;
    int px_peer = 0, px_served = 0, lv_peer = 0, lv_served = 0;
    for (size_t i = 0; i < total; i++) {
        double d = fabs((double)pt[i] - ref[i]);
        maxd = d > maxd || isnan(d) ? d : maxd;
        maxv = fabs(ref[i]) > maxv ? fabs(ref[i]) : maxv;
        int r8 = pngio_float_to_byte(ref[i]);
        int dp = abs(pngio_float_to_byte(pt[i]) - r8), ds = abs(sv[i] - r8);
        px_peer += dp > 0, px_served += ds > 0;
        lv_peer = dp > lv_peer ? dp : lv_peer;
        lv_served = ds > lv_served ? ds : lv_served;
    }
    int ok = maxd <= tol && lv_served <= 1;
    printf("- %s, images 0..%d of seed %llu, %d steps: PyTorch vs in-process: largest "
           "|difference| %.2g (largest |value| %.2f), 8-bit pixels differing %d of %zu (by at "
           "most %d); served vs in-process: pixels differing %d (by at most %d). %s\n",
           strat, n - 1, (unsigned long long)b->seed, b->steps, maxd, maxv, px_peer, total,
           lv_peer, px_served, lv_served, ok ? "Same computation." : "DIFFERENT: stopping.");
    free(ref), free(pt), free(sv);
    return ok ? 0 : -1;
}

/* ---- the run --------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: peer_bench [--models DIR] [--bin DIR] [--steps 50] [--rounds 5] [--seconds 4]\n"
        "                  [--strategy top-2|full|both] [--threads 2] [--seed 7]\n"
        "                  [--python /usr/bin/python3] [--peer tools/bench/torch_peer.py]\n"
        "                  [--omp-wait passive|default] [--tolerance 1e-4] [--check-only]\n"
        "                  [--no-1thread]\n"
        "ddm (in-process and served) against the PyTorch peer, side by side: checks that\n"
        "the three compute the same images, then --rounds interleaved rounds of --seconds\n"
        "per system and load point (1 image; 32 images in flight), then where each spends\n"
        "its time. Without --models, uses models/digits. --threads: the PyTorch peer's\n"
        "torch and OpenBLAS threads, the in-process sampler's threads and the router's\n"
        "--threads (each worker has one). --omp-wait: the peer's OpenMP wait policy\n"
        "(passive by default; \"default\" leaves libgomp's spin-then-sleep). A second peer\n"
        "with 1 thread is measured too, for reference (--no-1thread: not).\n"
        "--blas-core NAME and --half-rows N override the kernels measured here\n"
        "(common/blas.h); the workers and the peer inherit them.\n");
}

int main(int argc, char **argv)
{
    blas_select(&argc, argv); /* exports OPENBLAS_CORETYPE: workers and the peer inherit it */
    const char *models = NULL, *bindir = "bin", *python = "/usr/bin/python3";
    const char *script = "tools/bench/torch_peer.py", *strat_opt = "both", *omp_wait = "passive";
    int steps = 50, rounds = 5, threads = 2, check_only = 0, no_peer1 = 0;
    double seconds = 4, tol = 1e-4;
    uint64_t seed = 7;
    static const struct option lo[] = {
        { "models", required_argument, 0, 'm' }, { "bin", required_argument, 0, 'b' },
        { "steps", required_argument, 0, 's' },  { "rounds", required_argument, 0, 'r' },
        { "seconds", required_argument, 0, 'd' }, { "strategy", required_argument, 0, 'S' },
        { "threads", required_argument, 0, 't' }, { "seed", required_argument, 0, 'e' },
        { "python", required_argument, 0, 'p' }, { "peer", required_argument, 0, 'P' },
        { "omp-wait", required_argument, 0, 'w' }, { "tolerance", required_argument, 0, 'T' },
        { "check-only", no_argument, 0, 'c' },   { "no-1thread", no_argument, 0, '1' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "m:b:s:r:d:h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': models = optarg; break;
        case 'b': bindir = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'S': strat_opt = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'e': seed = strtoull(optarg, NULL, 10); break;
        case 'p': python = optarg; break;
        case 'P': script = optarg; break;
        case 'w': omp_wait = optarg; break;
        case 'T': tol = atof(optarg); break;
        case 'c': check_only = 1; break;
        case '1': no_peer1 = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || steps < 1 || steps > 1000 || rounds < 1 || rounds > MAX_ROUNDS ||
        !(seconds > 0) || threads < 1 || threads > ENSEMBLE_MAX_THREADS || !(tol > 0) ||
        (strcmp(strat_opt, "both") && strcmp(strat_opt, "top-2") && strcmp(strat_opt, "full")) ||
        (strcmp(omp_wait, "passive") && strcmp(omp_wait, "default"))) {
        fprintf(stderr, "peer_bench: --steps 1..1000, --rounds 1..%d, --seconds > 0, --threads "
                        "1..%d, --tolerance > 0, --strategy top-2, full or both, --omp-wait "
                        "passive or default (see --help)\n", MAX_ROUNDS, ENSEMBLE_MAX_THREADS);
        return 2;
    }
    int peer1 = threads > 1 && !no_peer1; /* measure a 1-thread peer too */
    signal(SIGPIPE, SIG_IGN);
    openblas_set_num_threads(1); /* ddm's threads are its own (lanes), as in ddm-router */
    setenv("DDM_BIN_DIR", bindir, 1);
    struct stat sb;
    if (!models && stat("models/digits/router.safetensors", &sb) == 0)
        models = "models/digits";
    if (!models) {
        fprintf(stderr, "peer_bench: no models/digits here: pass --models DIR\n");
        return 1;
    }
    if (access(python, X_OK) || access(script, R_OK)) {
        fprintf(stderr, "peer_bench: %s or %s is missing (--python, --peer)\n", python, script);
        return 1;
    }
    char err[512], dir[128], noise[300];
    bench b = { .seed = seed, .steps = steps, .seconds = seconds, .noise = noise };
    b.e = ensemble_open(models, err, sizeof err);
    if (!b.e) {
        fprintf(stderr, "peer_bench: %s\n", err);
        return 1;
    }
    if (ensemble_set_threads(b.e, threads) || toyset_tempdir(dir, sizeof dir, "bench-peer")) {
        fprintf(stderr, "peer_bench: cannot set %d threads or make a temp dir\n", threads);
        ensemble_close(b.e);
        return 1;
    }
    snprintf(noise, sizeof noise, "%s/noise.f32", dir);
    char th[16];
    snprintf(th, sizeof th, "%d", threads);
    const char *wargs[] = { "--max-delay-us", "0", NULL };
    const char *rargs[] = { "--ticks", "1", "--threads", th, NULL };
    int rc = 1;
    if (write_noise(noise, b.e->K, b.e->dim, seed, MAX_IMAGES)) {
        fprintf(stderr, "peer_bench: cannot write %s\n", noise);
        goto out;
    }
    if (peer_start(&b.pr, python, script, models, threads, omp_wait, dir) ||
        (peer1 && !check_only && peer_start(&b.pr1, python, script, models, 1, omp_wait, dir)))
        goto out;
    if (tcluster_start_on(&b.cl, TCLUSTER_TCP, models, b.e->K, 1, wargs, rargs))
        goto out;

    const char *strats[2];
    int n_strats = 0;
    if (strcmp(strat_opt, "full"))
        strats[n_strats++] = "top-2";
    if (strcmp(strat_opt, "top-2"))
        strats[n_strats++] = "full";
    printf("Same computation? (tolerance %g on PyTorch's floats, one 8-bit level served)\n\n",
           tol);
    for (int s = 0; s < n_strats; s++)
        if (check(&b, strats[s], MAX_IMAGES, tol, dir))
            goto out;
    if (check_only) {
        rc = 0;
        goto out;
    }

    const int loads[2] = { 1, MAX_IMAGES };
    enum { MAX_CELLS = 4 };
    static meas m[MAX_CELLS][N_SYS][MAX_ROUNDS];
    int n_cells = 2 * n_strats;
    printf("\nRounds (%d steps; %.1f s per system and load point; round 0 is a warm-up, not "
           "counted; images/s PyTorch (%d threads) / PyTorch (1 thread) / in-process / "
           "served):\n\n", steps, seconds, threads);
    for (int r = 0; r <= rounds; r++) {
        double la[3] = { NAN, NAN, NAN };
        getloadavg(la, 3);
        printf("- round %d (load average %.1f):", r, la[0]);
        for (int cell = 0; cell < n_cells; cell++) {
            const char *st = strats[cell / 2];
            int n = loads[cell % 2];
            meas tmp[N_SYS];
            for (int k = 0; k < N_SYS; k++) {
                int sys = (k + r) % N_SYS; /* the order rotates from round to round */
                if (measure(&b, sys, st, n, &tmp[sys])) {
                    fprintf(stderr, "peer_bench: %s, %s, %d image(s): measurement failed\n",
                            sys_name[sys], st, n);
                    goto out;
                }
            }
            printf(" %s x%d %.1f / %.1f / %.1f / %.1f;", st, n, tmp[SYS_PEER].ips,
                   tmp[SYS_PEER1].ips, tmp[SYS_INPROC].ips, tmp[SYS_SERVED].ips);
            fflush(stdout);
            if (r > 0)
                for (int sys = 0; sys < N_SYS; sys++)
                    m[cell][sys][r - 1] = tmp[sys];
        }
        printf("\n");
    }

    printf("\nMedians of %d rounds; ratios are medians of each round's own ratio. PyTorch (%d "
           "threads, as ddm) and in-process: %d image(s) = one batch of that many, batch after "
           "batch; served: that many closed-loop clients asking 1 image each. Latency: one batch "
           "(PyTorch, in-process) or a request's p50 (served). CPU: the peer process / this "
           "process / the router and %d workers, all threads. PyTorch (1 thread): the same "
           "peer with one thread, for reference%s.\n\n", rounds, threads, MAX_IMAGES, b.e->K,
           peer1 ? "" : " (not measured: --threads 1 or --no-1thread)");
    printf("| strategy | images in flight | PyTorch img/s | ddm in-process img/s | ddm served "
           "img/s | served / PyTorch | in-process / PyTorch | PyTorch (1 thread) img/s | "
           "served / PyTorch (1 thread) | latency ms PyTorch / in-process / served | failed |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int cell = 0; cell < n_cells; cell++) {
        double rs[MAX_ROUNDS], ri[MAX_ROUNDS], r1[MAX_ROUNDS];
        int failed = 0;
        for (int r = 0; r < rounds; r++) {
            rs[r] = m[cell][SYS_SERVED][r].ips / m[cell][SYS_PEER][r].ips;
            ri[r] = m[cell][SYS_INPROC][r].ips / m[cell][SYS_PEER][r].ips;
            r1[r] = peer1 ? m[cell][SYS_SERVED][r].ips / m[cell][SYS_PEER1][r].ips : NAN;
            failed += m[cell][SYS_SERVED][r].failed;
        }
        printf("| %s | %d | %.1f | %.1f | %.1f | **%.2fx** | %.2fx | %.1f | %.2fx | "
               "%.1f / %.1f / %.1f | %d |\n", strats[cell / 2],
               loads[cell % 2], median_of(m[cell][SYS_PEER], rounds, offsetof(meas, ips)),
               median_of(m[cell][SYS_INPROC], rounds, offsetof(meas, ips)),
               median_of(m[cell][SYS_SERVED], rounds, offsetof(meas, ips)),
               cli_median(rs, (size_t)rounds), cli_median(ri, (size_t)rounds),
               peer1 ? median_of(m[cell][SYS_PEER1], rounds, offsetof(meas, ips)) : NAN,
               cli_median(r1, (size_t)rounds),
               median_of(m[cell][SYS_PEER], rounds, offsetof(meas, lat_ms)),
               median_of(m[cell][SYS_INPROC], rounds, offsetof(meas, lat_ms)),
               median_of(m[cell][SYS_SERVED], rounds, offsetof(meas, lat_ms)), failed);
    }

    printf("\nWhat each image costs in CPU time (medians of the rounds; all threads of the "
           "peer process / this process / the router and the workers), whose ratios depend far "
           "less on what else the machine runs than images/s do, and each system's best round "
           "(interference only ever lowers a rate):\n\n");
    printf("| strategy | images in flight | CPU ms per image PyTorch / PyTorch (1 thread) / "
           "in-process / served | PyTorch CPU / served CPU | PyTorch CPU / in-process CPU | best "
           "round img/s PyTorch / in-process / served | best served / best PyTorch |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (int cell = 0; cell < n_cells; cell++) {
        double best[N_SYS] = { 0 }, cs[MAX_ROUNDS], ci[MAX_ROUNDS];
        for (int r = 0; r < rounds; r++) {
            for (int sys = 0; sys < N_SYS; sys++)
                best[sys] = m[cell][sys][r].ips > best[sys] ? m[cell][sys][r].ips : best[sys];
            cs[r] = m[cell][SYS_PEER][r].cpu_ms / m[cell][SYS_SERVED][r].cpu_ms;
            ci[r] = m[cell][SYS_PEER][r].cpu_ms / m[cell][SYS_INPROC][r].cpu_ms;
        }
        printf("| %s | %d | %.2f / %.2f / %.2f / %.2f | %.2fx | %.2fx | %.1f / %.1f / %.1f | "
               "%.2fx |\n", strats[cell / 2], loads[cell % 2],
               median_of(m[cell][SYS_PEER], rounds, offsetof(meas, cpu_ms)),
               peer1 ? median_of(m[cell][SYS_PEER1], rounds, offsetof(meas, cpu_ms)) : NAN,
               median_of(m[cell][SYS_INPROC], rounds, offsetof(meas, cpu_ms)),
               median_of(m[cell][SYS_SERVED], rounds, offsetof(meas, cpu_ms)),
               cli_median(cs, (size_t)rounds), cli_median(ci, (size_t)rounds), best[SYS_PEER],
               best[SYS_INPROC], best[SYS_SERVED], best[SYS_SERVED] / best[SYS_PEER]);
    }

    printf("\nWhere ddm's time goes, per step (medians of the rounds): in-process = router "
           "network / experts' forward passes / selection, grouping, combining and the Euler "
           "step; served (router /metrics, per tick) = router network / waiting for the "
           "experts' answers / the rest of the router's tick.\n\n");
    printf("| strategy | images in flight | in-process us per step | served us per tick |\n");
    printf("|---|---|---|---|\n");
    for (int cell = 0; cell < n_cells; cell++)
        printf("| %s | %d | %.0f / %.0f / %.0f | %.0f / %.0f / %.0f |\n", strats[cell / 2],
               loads[cell % 2], median_of(m[cell][SYS_INPROC], rounds, offsetof(meas, router_us)),
               median_of(m[cell][SYS_INPROC], rounds, offsetof(meas, experts_us)),
               median_of(m[cell][SYS_INPROC], rounds, offsetof(meas, other_us)),
               median_of(m[cell][SYS_SERVED], rounds, offsetof(meas, router_us)),
               median_of(m[cell][SYS_SERVED], rounds, offsetof(meas, experts_us)),
               median_of(m[cell][SYS_SERVED], rounds, offsetof(meas, other_us)));

    printf("\nWhere PyTorch's time goes (torch_peer.py's profile command: wall time per phase "
           "of a step, then torch.profiler's operators over one batch):\n\n");
    for (int cell = 0; cell < n_cells; cell++) {
        char cmd[600], reply[64];
        int n = loads[cell % 2];
        snprintf(cmd, sizeof cmd, "profile %s %d %d %d %s", strats[cell / 2], n, steps,
                 n == 1 ? 5 : 1, noise);
        if (peer_ask(&b.pr, cmd, reply, sizeof reply, 1200000))
            goto out;
        printf("\n");
    }
    rc = 0;
out:
    peer_stop(&b.pr);
    peer_stop(&b.pr1);
    tcluster_stop(&b.cl, rc != 0);
    ensemble_close(b.e);
    toyset_rmdir(dir);
    return rc;
}
