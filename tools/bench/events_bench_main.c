/* events_bench_main.c -- what progress events cost the served throughput.
 *
 * The shipped digits cluster (8 ddm-expert workers and ddm-router on loopback,
 * as deploy/local/digits.conf runs it), C closed-loop clients asking one image
 * each, in rounds that alternate:
 *   off  POST /v1/samples, JSON response (no events)
 *   on   the same call with Accept: text/event-stream (a step event per
 *        evaluation with every image's experts and weights, no previews:
 *        preview_every unset), the client reading every event
 * and reports images/s of each round, the medians of each mode and
 * on/off - 1. The machine is shared: only paired, alternating rounds mean
 * anything, and the median of several. */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/httpc.h"
#include "tests/support/proc.h"
#include "tests/support/tcluster.h"
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

/* One round: images/s with `clients` clients for `seconds`. */
static double round_images_per_s(const char *hostport, const char *body, int events, int clients,
                                 double seconds, long *failed)
{
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
    return (double)images / (proc_now_s() - t0);
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
    char *rargs[] = { "--ticks", "1", "--threads", "2", NULL };
    if (tcluster_start(&tc, models, 8, 0, 0, "0", rargs)) {
        tcluster_stop(&tc);
        return 1;
    }
    char body[128];
    snprintf(body, sizeof body, "{\"n\": 1, \"steps\": %d, \"strategy\": \"top-2\"}", steps);
    long failed = 0;
    round_images_per_s(tc.hostport, body, 0, clients, 2, &failed); /* warm up */
    double off[50], on[50], ratio[50];
    printf("events_bench: %d clients, 1 image x %d steps top-2 each, %d alternating rounds of "
           "%.0f s\n", clients, steps, rounds, seconds);
    printf("| round | off (images/s) | on (images/s) | on/off |\n|---|---|---|---|\n");
    for (int r = 0; r < rounds; r++) {
        /* alternate which goes first, so that a drift in the machine's load cancels */
        if (r % 2 == 0) {
            off[r] = round_images_per_s(tc.hostport, body, 0, clients, seconds, &failed);
            on[r] = round_images_per_s(tc.hostport, body, 1, clients, seconds, &failed);
        } else {
            on[r] = round_images_per_s(tc.hostport, body, 1, clients, seconds, &failed);
            off[r] = round_images_per_s(tc.hostport, body, 0, clients, seconds, &failed);
        }
        ratio[r] = on[r] / off[r];
        printf("| %d | %.1f | %.1f | %.3f |\n", r + 1, off[r], on[r], ratio[r]);
        fflush(stdout);
    }
    double moff = cli_median(off, (size_t)rounds), mon = cli_median(on, (size_t)rounds);
    double mratio = cli_median(ratio, (size_t)rounds);
    printf("\nmedian images/s: off %.1f, on %.1f; median of the paired on/off ratios %.3f "
           "(events cost %.1f%%); failed requests %ld\n", moff, mon, mratio,
           100.0 * (1.0 - mratio), failed);
    tcluster_stop(&tc);
    return failed ? 1 : 0;
}
