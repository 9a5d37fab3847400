/* router_bench_main.c -- served vs in-process sampling throughput of ddm-router.
 *
 * For each strategy and client count: images/s of the same sampling done
 * in-process (router/local: one batch of c trajectories, the batching the
 * daemon forms for c closed-loop clients asking one image each), and served
 * (c client threads against a real ddm-router with real ddm-expert workers
 * on ipc:// sockets), plus latency percentiles and the router's overhead per
 * tick from its /metrics, and the CPU time per image of both (this process
 * in-process; the router and workers served): on a machine whose cores the
 * router and workers share, served / in-process throughput cannot exceed
 * the inverse ratio of those CPU times. Prints a markdown table. Uses models/digits (or
 * --models DIR): throughput needs the shipped architecture, not training. */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/blas.h"
#include "common/model.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/metrics.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/client/cli.h"

/* CPU seconds used so far by the router and the workers together. */
static double cluster_cpu_s(const pid_t *pids, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += proc_cpu_seconds(pids[i]);
    return s;
}

typedef struct client_stats {
    const char *hostport, *body;
    double until;
    int ok, failed;
    double lat[20000];
    int nlat;
} client_stats;

static void *client_thread(void *arg)
{
    client_stats *cs = arg;
    httpc *c;
    char err[128];
    if (httpc_open(cs->hostport, 60000, &c, err, sizeof err))
        return NULL;
    httpc_header h[] = { { "Content-Type", "application/json" } };
    while (proc_now_s() < cs->until) {
        double t0 = proc_now_s();
        httpc_response r;
        int rc = httpc_request(c, "POST", "/v1/samples", h, 1, cs->body, strlen(cs->body), &r);
        if (rc == 0 && r.status == 200) {
            cs->ok++;
            if (cs->nlat < 20000)
                cs->lat[cs->nlat++] = proc_now_s() - t0;
        } else {
            cs->failed++;
        }
        httpc_response_free(&r);
    }
    httpc_close(c);
    return NULL;
}

typedef struct metrics_snap {
    double ticks, overhead_s, router_net_s;
    double rows[STRAT_MAX_EXPERTS], calls; /* rows sent to each expert; calls to all */
} metrics_snap;

static int fetch_metrics(const char *hostport, int K, metrics_snap *m)
{
    memset(m, 0, sizeof *m);
    char *text = tmetrics_fetch(hostport);
    if (!text)
        return -1;
    m->ticks = tmetrics_value(text, "ddm_ticks_total");
    m->overhead_s = tmetrics_value(text, "ddm_tick_overhead_seconds_total");
    m->router_net_s = tmetrics_value(text, "ddm_router_net_seconds_total");
    for (int k = 0; k < K; k++) {
        char name[64];
        snprintf(name, sizeof name, "ddm_expert_rows_total{expert=\"%d\"}", k);
        m->rows[k] = tmetrics_value(text, name);
        snprintf(name, sizeof name, "ddm_expert_calls_total{expert=\"%d\"}", k);
        m->calls += tmetrics_value(text, name);
    }
    free(text);
    return 0;
}

#define ROUNDS 3

/* Images/s of in-process sampling: n trajectories advancing together (the
 * batching the daemon forms for n single-image clients), repeated for
 * `seconds`. threads 2: experts shared out over two threads, router rows split.
 * cpu_ms (if not NULL): this process's CPU milliseconds per image. */
static double inproc_ips(ensemble *e, const char *strategy, int n, int steps, int threads,
                         double seconds, double *cpu_ms)
{
    char err[256];
    sample_params p;
    sample_params_default(&p, e->K);
    strategy_parse(strategy, e->K, NAN, NAN, &p.strat, err, sizeof err);
    p.n = n;
    p.steps = steps;
    float *out = malloc((size_t)n * (size_t)e->dim * sizeof *out);
    ensemble_set_threads(e, threads);
    double c0 = proc_self_cpu_seconds(), t0 = proc_now_s();
    int reps = 0;
    do {
        p.seed = (uint64_t)reps;
        ensemble_sample(e, &p, out, NULL, NULL);
        reps++;
    } while (proc_now_s() - t0 < seconds);
    double ips = (double)n * reps / (proc_now_s() - t0);
    if (cpu_ms)
        *cpu_ms = 1e3 * (proc_self_cpu_seconds() - c0) / ((double)n * reps);
    ensemble_set_threads(e, 1);
    free(out);
    return ips;
}

typedef struct served_result {
    double ips, p50_ms, p99_ms, overhead_us, router_net_us;
    double cpu_ms; /* router and workers' CPU milliseconds per image */
    double calls_per_tick, busiest_share; /* expert calls per tick; the busiest expert's
                                             share of the rows sent */
    int failed;
} served_result;

/* nc closed-loop clients against the daemon for `seconds`; pids: the router
 * and the K workers. */
static served_result served(const char *hostport, const pid_t *pids, int K,
                            const char *strategy, int nc, int per_request, int steps,
                            double seconds)
{
    served_result res = { 0 };
    double cpu0 = cluster_cpu_s(pids, K + 1);
    metrics_snap m0, m1;
    fetch_metrics(hostport, K, &m0);
    char body[128];
    snprintf(body, sizeof body, "{\"n\": %d, \"steps\": %d, \"strategy\": \"%s\"}", per_request,
             steps, strategy);
    client_stats *cs = calloc((size_t)nc, sizeof *cs);
    pthread_t th[64];
    double s0 = proc_now_s();
    for (int i = 0; i < nc; i++) {
        cs[i].hostport = hostport;
        cs[i].body = body;
        cs[i].until = s0 + seconds;
        pthread_create(&th[i], NULL, client_thread, &cs[i]);
    }
    for (int i = 0; i < nc; i++)
        pthread_join(th[i], NULL);
    double el = proc_now_s() - s0;
    double cpu1 = cluster_cpu_s(pids, K + 1);
    fetch_metrics(hostport, K, &m1);
    int ok = 0, nl = 0;
    for (int i = 0; i < nc; i++) {
        ok += cs[i].ok;
        res.failed += cs[i].failed;
        nl += cs[i].nlat;
    }
    double *lat = malloc((size_t)(nl ? nl : 1) * sizeof *lat);
    int j = 0;
    for (int i = 0; i < nc; i++)
        for (int q = 0; q < cs[i].nlat; q++)
            lat[j++] = cs[i].lat[q];
    cli_sort_doubles(lat, (size_t)nl);
    res.ips = (double)ok * per_request / el;
    res.cpu_ms = ok ? 1e3 * (cpu1 - cpu0) / ((double)ok * per_request) : NAN;
    res.p50_ms = nl ? 1e3 * cli_percentile(lat, (size_t)nl, 0.50) : NAN;
    res.p99_ms = nl ? 1e3 * cli_percentile(lat, (size_t)nl, 0.99) : NAN;
    double ticks = m1.ticks - m0.ticks, rows = 0, busiest = 0;
    res.overhead_us = ticks > 0 ? 1e6 * (m1.overhead_s - m0.overhead_s) / ticks : NAN;
    res.router_net_us = ticks > 0 ? 1e6 * (m1.router_net_s - m0.router_net_s) / ticks : NAN;
    res.calls_per_tick = ticks > 0 ? (m1.calls - m0.calls) / ticks : NAN;
    for (int k = 0; k < K; k++) {
        double d = m1.rows[k] - m0.rows[k];
        rows += d;
        busiest = d > busiest ? d : busiest;
    }
    res.busiest_share = rows > 0 ? busiest / rows : NAN;
    free(lat);
    free(cs);
    return res;
}

int main(int argc, char **argv)
{
    blas_select(&argc, argv); /* the workers do the same: compare like with like */
    const char *models = NULL, *bindir = "bin", *delay = "0", *ticks = "1", *rthreads = "2";
    int steps = 50, duration = 15, per_request = 1, only_clients = 0, pairs = 1, hidden = 0;
    const char *only_strategy = NULL;
    static const struct option lo[] = {
        { "models", required_argument, 0, 'm' }, { "bin", required_argument, 0, 'b' },
        { "steps", required_argument, 0, 's' },  { "duration", required_argument, 0, 'd' },
        { "max-delay-us", required_argument, 0, 'D' }, { "ticks", required_argument, 0, 'T' },
        { "images", required_argument, 0, 'n' }, { "threads", required_argument, 0, 'R' },
        { "strategy", required_argument, 0, 'S' }, { "clients", required_argument, 0, 'c' },
        { "no-pairs", no_argument, 0, 'P' },      { "hidden", required_argument, 0, 'H' },
        { "help", no_argument, 0, 'h' },         { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "m:b:s:d:h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': models = optarg; break;
        case 'b': bindir = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'd': duration = atoi(optarg); break;
        case 'D': delay = optarg; break;
        case 'T': ticks = optarg; break;
        case 'n': per_request = atoi(optarg); break;
        case 'R': rthreads = optarg; break;
        case 'S': only_strategy = optarg; break;
        case 'c': only_clients = atoi(optarg); break;
        case 'P': pairs = 0; break;
        case 'H': hidden = atoi(optarg); break;
        case 'h':
            printf("usage: router_bench [--models DIR] [--bin DIR] [--steps 50] [--duration 15]\n"
                   "                    [--max-delay-us N (workers', default 0 as in ddm-cluster)]\n"
                   "                    [--ticks N (the router's --ticks; default 1 as in digits.conf)]\n"
                   "                    [--images N (images per request, default 1)]\n"
                   "                    [--threads N (the router's --threads; default 2 as in digits.conf)]\n"
                   "                    [--strategy top-2|full] [--clients 1|32] [--no-pairs]\n"
                   "                    (only those rows of the table; no top-2/full pairs)\n"
                   "                    [--hidden N]\n"
                   "Without --models, uses models/digits. --hidden N benchmarks a random set\n"
                   "shaped like models/digits (fp16, 8 experts) with experts N wide instead of\n"
                   "384: how serving's cost compares with an expert's compute.\n"
                   "--blas-core NAME and --half-rows N override the kernels measured here\n"
                   "(common/blas.h); the workers started inherit them.\n");
            return 0;
        default: return 2;
        }
    }
    if (steps < 1 || duration < 1 || per_request < 1 || per_request > 64 || hidden < 0 ||
        hidden % 16 || hidden > 8192) {
        fprintf(stderr, "router_bench: --steps and --duration must be >= 1, --images 1..64, "
                        "--hidden a multiple of 16 up to 8192\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    openblas_set_num_threads(1);
    setenv("DDM_BIN_DIR", bindir, 1);
    char tmp[128];
    if (toyset_tempdir(tmp, sizeof tmp, "bench-router"))
        return 1;
    char toy[160];
    if (hidden) {
        snprintf(toy, sizeof toy, "%s/models", tmp);
        if (mkdir(toy, 0755) || toyset_write_digits_like(toy, 8, hidden, 1)) {
            fprintf(stderr, "router_bench: cannot write a model set under %s\n", tmp);
            toyset_rmdir(tmp);
            return 1;
        }
        models = toy;
        printf("random experts shaped like models/digits, %d wide (fp16)\n", hidden);
    }
    struct stat sb;
    if (!models && stat("models/digits/router.safetensors", &sb) == 0)
        models = "models/digits";
    char err[512];
    if (!models) {
        fprintf(stderr, "router_bench: no models/digits here: pass --models DIR\n");
        toyset_rmdir(tmp);
        return 1;
    }
    ensemble *e = ensemble_open(models, err, sizeof err);
    if (!e) {
        fprintf(stderr, "router_bench: %s\n", err);
        return 1;
    }
    int K = e->K;
    /* start the workers and the router */
    pid_t workers[64];
    char conf[256], rlog[256], url[256], weights[512], wlog[256], bin[256];
    snprintf(conf, sizeof conf, "%s/cluster.conf", tmp);
    FILE *f = fopen(conf, "w");
    fprintf(f, "models %s\n", models);
    for (int k = 0; k < K; k++) {
        snprintf(url, sizeof url, "ipc://%s/e%d.ipc", tmp, k);
        fprintf(f, "expert %d %s\n", k, url);
        snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", models, k);
        snprintf(wlog, sizeof wlog, "%s/worker-%d.log", tmp, k);
        char *av[] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights", weights,
                       "--listen", url, "--max-delay-us", (char *)delay, NULL };
        workers[k] = proc_start(av, wlog);
    }
    fclose(f);
    int port = proc_free_port();
    char listen[64], hostport[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    snprintf(hostport, sizeof hostport, "127.0.0.1:%d", port);
    snprintf(rlog, sizeof rlog, "%s/router.log", tmp);
    char *rv[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf, "--listen",
                   listen, "--ticks", (char *)ticks, "--threads", (char *)rthreads, NULL };
    pid_t router = proc_start(rv, rlog);
    pid_t cluster[65]; /* whose CPU time a served image costs */
    cluster[0] = router;
    memcpy(cluster + 1, workers, (size_t)K * sizeof *workers);
    if (proc_wait_http(port, "/readyz", 200, 20000)) {
        fprintf(stderr, "router_bench: router not ready\n");
        proc_dump_log(rlog);
        return 1;
    }
    const char *strategies[] = { "top-2", "full" };
    const int clients[] = { 1, 32 };
    const double slice = (double)duration / ROUNDS; /* each round measures for this long */
    printf("%d image(s) per request, %d steps, router --ticks %s --threads %s, workers "
           "--max-delay-us %s; medians of %d rounds (in each round: in-process 1 thread, "
           "2 threads, served, %.1f s each)\n\n", per_request, steps, ticks, rthreads, delay,
           ROUNDS, slice);
    printf("| strategy | clients | in-process img/s (1 thread) | in-process img/s (2 threads) | served img/s | served / in-process (2 threads) | p50 ms | p99 ms | failed | router overhead us/tick | router net us/tick | CPU ms/img in-process (2 threads) | CPU ms/img served (router + workers) | in-process / served CPU | expert calls/tick | busiest expert's rows |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int si = 0; si < 2; si++) {
        if (only_strategy && strcmp(only_strategy, strategies[si]))
            continue;
        for (int ci = 0; ci < 2; ci++) {
            int nc = clients[ci];
            if (only_clients && only_clients != nc)
                continue;
            double in1[ROUNDS], in2[ROUNDS], sv[ROUNDS], ratio[ROUNDS];
            double cpu_in[ROUNDS], cpu_sv[ROUNDS], cpu_ratio[ROUNDS];
            served_result last = { 0 };
            int failed = 0;
            for (int r = 0; r < ROUNDS; r++) {
                in1[r] = inproc_ips(e, strategies[si], nc * per_request, steps, 1, slice, NULL);
                in2[r] = inproc_ips(e, strategies[si], nc * per_request, steps, 2, slice,
                                    &cpu_in[r]);
                last = served(hostport, cluster, K, strategies[si], nc, per_request, steps,
                              slice);
                sv[r] = last.ips;
                ratio[r] = sv[r] / in2[r];
                cpu_sv[r] = last.cpu_ms;
                cpu_ratio[r] = cpu_in[r] / cpu_sv[r];
                failed += last.failed;
            }
            printf("| %s | %d | %.1f | %.1f | %.1f | %.2f | %.1f | %.1f | %d | %.0f | %.0f | %.2f | "
                   "%.2f | %.2f | %.1f | %.0f%% |\n",
                   strategies[si], nc, cli_median(in1, ROUNDS), cli_median(in2, ROUNDS),
                   cli_median(sv, ROUNDS), cli_median(ratio, ROUNDS), last.p50_ms,
                   last.p99_ms, failed, last.overhead_us, last.router_net_us,
                   cli_median(cpu_in, ROUNDS), cli_median(cpu_sv, ROUNDS),
                   cli_median(cpu_ratio, ROUNDS), last.calls_per_tick,
                   100 * last.busiest_share);
            fflush(stdout);
        }
    }
    /* The strategies' ratio from back-to-back measurements: the host's speed
     * drifts by tens of percent over the minutes the table takes. */
    double ratio_sv[ROUNDS], ratio_in[ROUNDS];
    for (int r = 0; r < ROUNDS && pairs; r++) {
        double t = served(hostport, cluster, K, "top-2", 32, per_request, steps, slice).ips;
        double f = served(hostport, cluster, K, "full", 32, per_request, steps, slice).ips;
        ratio_sv[r] = t / f;
        t = inproc_ips(e, "top-2", 32 * per_request, steps, 2, slice, NULL);
        f = inproc_ips(e, "full", 32 * per_request, steps, 2, slice, NULL);
        ratio_in[r] = t / f;
    }
    if (pairs) {
    printf("\ntop-2 / full throughput at 32 clients (K = %d), back-to-back pairs: served %.2fx "
           "(rounds:", K, cli_median(ratio_sv, ROUNDS));
    for (int r = 0; r < ROUNDS; r++)
        printf(" %.2f", ratio_sv[r]);
    printf("), in-process with 2 threads %.2fx (rounds:", cli_median(ratio_in, ROUNDS));
    for (int r = 0; r < ROUNDS; r++)
        printf(" %.2f", ratio_in[r]);
    printf(")\n");
    }
    proc_stop(router, SIGTERM, 10000);
    for (int k = 0; k < K; k++)
        proc_stop(workers[k], SIGTERM, 5000);
    ensemble_close(e);
    toyset_rmdir(tmp);
    return 0;
}
