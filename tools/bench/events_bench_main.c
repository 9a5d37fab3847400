/* events_bench_main.c -- what progress events cost the served throughput.
 *
 * The shipped digits cluster (8 ddm-expert workers and ddm-router on loopback,
 * as deploy/local/digits.conf runs it), C closed-loop clients asking one image
 * each, in rounds that alternate:
 *   off  POST /v1/samples, JSON response (no events)
 *   on   the same call with Accept: text/event-stream (a step event per
 *        evaluation with every image's experts and weights, no previews:
 *        preview_every unset), the client reading every event
 * and reports for each round images/s and the CPU time per image of the
 * router and of the whole cluster (router + workers, from /proc), then the
 * medians of the paired on/off ratios. On a shared machine images/s swings
 * with the neighbours' load; CPU per image much less: the router and the
 * workers share the cores, so served images/s is bounded by the cluster's
 * CPU per image, and what events add to it is the events' cost. */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/httpc.h"
#include "tests/support/proc.h"
#include "tests/support/cluster.h"
#include "tools/client/cli.h"
#include "tools/client/sse_client.h"

typedef struct client {
    const char *hostport, *body;
    int events;
    double until;
    long images, failed;
} client;

static void *run_client(void *arg)
{
    client *c = arg;
    httpc *hc = NULL;
    char err[128];
    if (!c->events && httpc_open(c->hostport, 60000, &hc, err, sizeof err))
        return NULL;
    httpc_header h[] = { { "Content-Type", "application/json" } };
    while (proc_now_s() < c->until) {
        if (c->events) {
            ssec *s;
            int status;
            int rc = ssec_open(c->hostport, "POST", "/v1/samples", h, 1, c->body, strlen(c->body),
                               60000, &s, &status, NULL);
            if (rc) {
                c->failed++;
                continue;
            }
            ssec_event ev;
            int done = 0;
            while (ssec_next(s, &ev, 60000) == 1)
                done |= !strcmp(ev.event, "done");
            ssec_close(s);
            if (done)
                c->images++;
            else
                c->failed++;
        } else {
            httpc_response r;
            int rc = httpc_request(hc, "POST", "/v1/samples", h, 1, c->body, strlen(c->body), &r);
            if (!rc && r.status == 200)
                c->images++;
            else
                c->failed++;
            httpc_response_free(&r);
        }
    }
    httpc_close(hc);
    return NULL;
}

typedef struct round_result {
    double images_per_s, router_ms, cluster_ms; /* CPU ms per image */
} round_result;

static double cpu_s(const tcluster *tc, int all)
{
    double s = proc_cpu_seconds(tc->router);
    for (int k = 0; all && k < tc->n_workers; k++)
        s += proc_cpu_seconds(tc->workers[k]);
    return s;
}

/* One round: images/s with `clients` clients for `seconds`, and CPU per image. */
static round_result run_round(const tcluster *tc, const char *body, int events, int clients,
                              double seconds, long *failed)
{
    const char *hostport = tc->hostport;
    double r0 = cpu_s(tc, 0), c0 = cpu_s(tc, 1);
    client cs[256];
    pthread_t th[256];
    double t0 = proc_now_s();
    for (int i = 0; i < clients; i++) {
        cs[i] = (client){ .hostport = hostport, .body = body, .events = events,
                          .until = t0 + seconds };
        pthread_create(&th[i], NULL, run_client, &cs[i]);
    }
    long images = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(th[i], NULL);
        images += cs[i].images;
        *failed += cs[i].failed;
    }
    round_result r = { .images_per_s = (double)images / (proc_now_s() - t0) };
    if (images) {
        r.router_ms = (cpu_s(tc, 0) - r0) * 1e3 / (double)images;
        r.cluster_ms = (cpu_s(tc, 1) - c0) * 1e3 / (double)images;
    }
    return r;
}

int main(int argc, char **argv)
{
    int clients = 32, rounds = 5, steps = 50;
    double seconds = 6;
    const char *models = "models/digits";
    static const struct option lo[] = {
        { "clients", required_argument, 0, 'c' }, { "rounds", required_argument, 0, 'r' },
        { "seconds", required_argument, 0, 'd' }, { "steps", required_argument, 0, 's' },
        { "models", required_argument, 0, 'm' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "c:r:d:s:m:h", lo, NULL)) != -1) {
        switch (o) {
        case 'c': clients = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 'm': models = optarg; break;
        default:
            printf("usage: events_bench [--clients 32] [--rounds 5] [--seconds 6] [--steps 50] "
                   "[--models models/digits]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (clients < 1 || clients > 256 || rounds < 1 || rounds > 50 || seconds <= 0 || steps < 1) {
        fprintf(stderr, "events_bench: --clients 1..256, --rounds 1..50, --seconds > 0\n");
        return 2;
    }
    tcluster tc;
    static const char *const wargs[] = { "--max-delay-us", "0", NULL };
    static const char *const rargs[] = { "--ticks", "1", "--threads", "2", NULL };
    if (tcluster_start(&tc, models, 8, 1, wargs, rargs)) {
        tcluster_stop(&tc, 0);
        return 1;
    }
    char body[128];
    snprintf(body, sizeof body, "{\"n\": 1, \"steps\": %d, \"strategy\": \"top-2\"}", steps);
    long failed = 0;
    run_round(&tc, body, 0, clients, 2, &failed); /* warm up */
    double ips[50], rcpu[50], ccpu[50];
    printf("events_bench: %d clients, 1 image x %d steps top-2 each, %d alternating pairs of "
           "%.0f s rounds\n", clients, steps, rounds, seconds);
    printf("| pair | images/s off | on | on/off | router CPU ms/image off | on | on/off "
           "| cluster CPU ms/image off | on | on/off |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for (int r = 0; r < rounds; r++) {
        /* alternate which goes first, so that a drift in the machine's load cancels */
        round_result off, on;
        if (r % 2 == 0) {
            off = run_round(&tc, body, 0, clients, seconds, &failed);
            on = run_round(&tc, body, 1, clients, seconds, &failed);
        } else {
            on = run_round(&tc, body, 1, clients, seconds, &failed);
            off = run_round(&tc, body, 0, clients, seconds, &failed);
        }
        ips[r] = on.images_per_s / off.images_per_s;
        rcpu[r] = on.router_ms / off.router_ms;
        ccpu[r] = on.cluster_ms / off.cluster_ms;
        printf("| %d | %.1f | %.1f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", r + 1,
               off.images_per_s, on.images_per_s, ips[r], off.router_ms, on.router_ms, rcpu[r],
               off.cluster_ms, on.cluster_ms, ccpu[r]);
        fflush(stdout);
    }
    printf("\nmedians of the paired on/off ratios: images/s %.3f, router CPU per image %.3f, "
           "cluster CPU per image %.3f (events cost %.1f%% of the cluster's CPU per image); "
           "failed requests %ld\n", cli_median(ips, (size_t)rounds),
           cli_median(rcpu, (size_t)rounds), cli_median(ccpu, (size_t)rounds),
           100.0 * (cli_median(ccpu, (size_t)rounds) - 1.0), failed);
    tcluster_stop(&tc, 0);
    return failed ? 1 : 0;
}
