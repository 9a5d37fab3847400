/* fairness_main.c -- how a small request fares while a maximal one runs.
 *
 * One run against a real ddm-router with real ddm-expert workers (ipc://):
 *   1. idle: the small request (default: 1 image, 50 steps, top-2) alone,
 *      sequentially, its median latency;
 *   2. the big request alone: its wall time, expert evaluations per second
 *      (the response's expert_calls over its wall time), and per CPU-second of
 *      the router and workers together -- times the cores, what the cluster
 *      would do with the machine to itself (the cost cap is sized by it; on a
 *      shared machine the wall-clock rate says more about the neighbours);
 *   3. loaded: the big request again, and the small one sequentially while
 *      it runs: the small one's median and p90 latency, and the ratio of its
 *      median to the idle median (goal: a few times at most).
 * Prints a markdown table. Uses models/digits (or --models DIR). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/httpc.h"
#include "tests/support/cluster.h"
#include "tests/support/proc.h"
#include "tools/client/cli.h"

#define MAX_SAMPLES 4096

typedef struct shot {
    int status;
    double seconds;
    double expert_calls;   /* from the JSON response, 0 if absent */
} shot;

static shot post(const char *hostport, const char *body)
{
    shot s = { 0 };
    httpc *c;
    char err[128];
    if (httpc_open(hostport, 600000, &c, err, sizeof err))
        return s;
    httpc_header h[] = { { "Content-Type", "application/json" } };
    httpc_response r;
    double t0 = proc_now_s();
    int rc = httpc_request(c, "POST", "/v1/samples", h, 1, body, strlen(body), &r);
    s.seconds = proc_now_s() - t0;
    if (rc == 0) {
        s.status = r.status;
        cJSON *root = r.status == 200 ? cJSON_Parse(r.body) : NULL;
        cJSON *ec = root ? cJSON_GetObjectItem(root, "expert_calls") : NULL;
        if (cJSON_IsNumber(ec))
            s.expert_calls = ec->valuedouble;
        cJSON_Delete(root);
        if (r.status != 200)
            fprintf(stderr, "fairness: %d %.300s\n", r.status, r.body ? r.body : "");
        httpc_response_free(&r);
    }
    httpc_close(c);
    return s;
}

typedef struct big_run {
    const char *hostport, *body;
    volatile int done;
    shot result;
} big_run;

/* CPU seconds the router and the workers have used so far. */
static double cluster_cpu(const tcluster *cl)
{
    double s = proc_cpu_seconds(cl->router);
    for (int i = 0; i < cl->n_workers; i++)
        s += proc_cpu_seconds(cl->workers[i]);
    return s;
}

static void *big_thread(void *arg)
{
    big_run *b = arg;
    b->result = post(b->hostport, b->body);
    b->done = 1;
    return NULL;
}

int main(int argc, char **argv)
{
    const char *models = NULL, *bindir = "bin";
    const char *small = "{\"n\": 1, \"steps\": 50, \"strategy\": \"top-2\", \"seed\": 1}";
    const char *big = "{\"n\": 64, \"steps\": 100, \"strategy\": \"full\", \"label\": 3, "
                      "\"guidance\": 2, \"seed\": 2}";
    int samples = 20;
    const char *router_args[32] = { 0 };
    int n_rargs = 0;
    static const struct option lo[] = {
        { "models", required_argument, 0, 'm' }, { "bin", required_argument, 0, 'b' },
        { "small", required_argument, 0, 's' },  { "big", required_argument, 0, 'B' },
        { "samples", required_argument, 0, 'n' }, { "router-arg", required_argument, 0, 'r' },
        { "help", no_argument, 0, 'h' },          { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': models = optarg; break;
        case 'b': bindir = optarg; break;
        case 's': small = optarg; break;
        case 'B': big = optarg; break;
        case 'n': samples = atoi(optarg); break;
        case 'r':
            if (n_rargs < 31)
                router_args[n_rargs++] = optarg;
            break;
        case 'h':
            printf("usage: fairness [--models DIR] [--bin DIR] [--small JSON] [--big JSON]\n"
                   "                [--samples N (idle small requests, default 20)]\n"
                   "                [--router-arg ARG ...] (passed to ddm-router, e.g.\n"
                   "                 --router-arg=--ticks --router-arg=1)\n"
                   "Small-request latency while a big request runs, as a ratio to its idle\n"
                   "latency, and the big request's expert evaluations per second.\n");
            return 0;
        default: return 2;
        }
    }
    if (samples < 3 || samples > MAX_SAMPLES) {
        fprintf(stderr, "fairness: --samples 3..%d\n", MAX_SAMPLES);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setenv("DDM_BIN_DIR", bindir, 1);
    struct stat sb;
    if (!models && stat("models/digits/router.safetensors", &sb) == 0)
        models = "models/digits";
    if (!models) {
        fprintf(stderr, "fairness: no models/digits here: pass --models DIR\n");
        return 1;
    }
    int K = 0;
    char path[512];
    for (; K < 64; K++) {
        snprintf(path, sizeof path, "%s/expert-%d.safetensors", models, K);
        if (stat(path, &sb))
            break;
    }
    static const char *const wargs[] = { "--max-delay-us", "0", NULL };
    tcluster cl;
    if (tcluster_start(&cl, models, K, 1, wargs, router_args))
        return 1;
    post(cl.hostport, small); /* warm up */

    static double idle[MAX_SAMPLES], loaded[MAX_SAMPLES];
    for (int i = 0; i < samples; i++)
        idle[i] = post(cl.hostport, small).seconds;
    double cpu0 = cluster_cpu(&cl);
    shot alone = post(cl.hostport, big);
    double cpu = cluster_cpu(&cl) - cpu0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    big_run b = { .hostport = cl.hostport, .body = big };
    pthread_t th;
    pthread_create(&th, NULL, big_thread, &b);
    usleep(200000); /* let it fill the engine */
    int nl = 0, small_failed = 0;
    while (!b.done && nl < MAX_SAMPLES) {
        shot s = post(cl.hostport, small);
        if (b.done)
            break; /* overlapped the big one's end: not a loaded sample */
        if (s.status == 200)
            loaded[nl++] = s.seconds;
        else
            small_failed++;
    }
    pthread_join(th, NULL);
    tcluster_stop(&cl, 0);

    cli_sort_doubles(idle, (size_t)samples);
    cli_sort_doubles(loaded, (size_t)nl);
    double idle_p50 = cli_percentile(idle, (size_t)samples, 0.5);
    printf("small: %s\nbig:   %s\n\n", small, big);
    printf("| small idle p50 ms | small loaded p50 ms | small loaded p90 ms | loaded / idle (p50) "
           "| loaded samples | big alone s | big loaded s | big expert evaluations | "
           "evaluations/s (big alone) | evaluations per CPU-s | x %ld cores |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|\n", cores);
    if (nl == 0 || alone.status != 200 || b.result.status != 200) {
        printf("| %.1f | - | - | - | %d | %.2f | %.2f | %.0f | - | - | - |\n", idle_p50 * 1e3, nl,
               alone.seconds, b.result.seconds, alone.expert_calls);
        fprintf(stderr, "fairness: the big request failed or ended before any small one "
                        "(statuses %d, %d; %d small failed)\n", alone.status, b.result.status,
                small_failed);
        return 1;
    }
    double p50 = cli_percentile(loaded, (size_t)nl, 0.5), p90 = cli_percentile(loaded, (size_t)nl, 0.9);
    printf("| %.1f | %.1f | %.1f | %.1f | %d | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f |\n",
           idle_p50 * 1e3, p50 * 1e3, p90 * 1e3, p50 / idle_p50, nl, alone.seconds,
           b.result.seconds, alone.expert_calls, alone.expert_calls / alone.seconds,
           alone.expert_calls / cpu, alone.expert_calls / cpu * (double)cores);
    return small_failed ? 1 : 0;
}
