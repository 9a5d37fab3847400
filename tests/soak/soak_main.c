/* soak_main.c -- `make soak`: a bounded chaos run on loopback.
 *
 * A real cluster (tests/support/cluster: R ddm-expert replicas per expert on
 * ipc://, one ddm-router) under C closed-loop client connections sending
 * sample requests, while every --interval seconds one random replica is
 * killed (SIGKILL, restarted --down seconds later) or stopped (SIGSTOP, SIGCONT
 * --down seconds later). At most one replica is out at a time, so with two or
 * more replicas per expert every request's experts keep a live replica: the
 * goal is no failed request. Reports requests served and failed (by reason),
 * latency p50/p99/p99.9/max, and the router's and the workers' RSS and open fds at the
 * start and at the end (goal: flat). Exit 0 when nothing failed. */
#include <dirent.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/rng.h"
#include "server/httpc.h"
#include "tests/support/cluster.h"
#include "tests/support/proc.h"
#include "tools/client/cli.h"

#define MAX_CLIENTS 256
#define MAX_LAT 2000000

typedef struct shared {
    const char *hostport;
    volatile int stop;
    pthread_mutex_t mu;
    long ok, failed;
    long by_status[600];    /* failures by HTTP status; [0] = no answer */
    char last_error[256];
    double *lat;            /* seconds of the successful requests */
    long nlat;
    double t0;              /* when the measured run started (0: warming up) */
    double slowest, slowest_at; /* the slowest request: seconds, and its start in the run */
} shared;

#define MAX_EVENTS 4096
typedef struct event {
    double at;              /* seconds into the run */
    int worker;
    const char *what;       /* "killed", "restarted", "stopped", "continued" */
} event;

static const char *const BODIES[] = {
    "{\"n\": 1, \"steps\": 20, \"strategy\": \"top-2\"}",
    "{\"n\": 2, \"steps\": 20, \"strategy\": \"top-1\"}",
    "{\"n\": 1, \"steps\": 10, \"strategy\": \"full\"}",
    "{\"n\": 4, \"steps\": 10, \"strategy\": \"top-2\", \"sampler\": \"heun\"}",
};

static void *client_main(void *arg)
{
    shared *s = arg;
    uint64_t rng = (uint64_t)(uintptr_t)&rng ^ (uint64_t)proc_now_s();
    httpc *c = NULL;
    char err[128];
    httpc_header h[] = { { "Content-Type", "application/json" } };
    while (!s->stop) {
        if (!c && httpc_open(s->hostport, 60000, &c, err, sizeof err)) {
            usleep(100000);
            continue;
        }
        const char *body = BODIES[rng_splitmix64(&rng) % (sizeof BODIES / sizeof BODIES[0])];
        httpc_response r;
        double t0 = proc_now_s();
        int rc = httpc_request(c, "POST", "/v1/samples", h, 1, body, strlen(body), &r);
        double dt = proc_now_s() - t0;
        pthread_mutex_lock(&s->mu);
        if (rc == 0 && r.status == 200) {
            s->ok++;
            if (s->nlat < MAX_LAT)
                s->lat[s->nlat++] = dt;
            if (dt > s->slowest) {
                s->slowest = dt;
                s->slowest_at = s->t0 > 0 ? t0 - s->t0 : 0;
            }
        } else {
            s->failed++;
            s->by_status[rc == 0 && r.status > 0 && r.status < 600 ? r.status : 0]++;
            snprintf(s->last_error, sizeof s->last_error, "%d %.200s", rc == 0 ? r.status : rc,
                     rc == 0 && r.body ? r.body : "(no answer)");
        }
        pthread_mutex_unlock(&s->mu);
        if (rc == 0)
            httpc_response_free(&r);
        else { /* a fresh connection after a transport error */
            httpc_close(c);
            c = NULL;
        }
    }
    if (c)
        httpc_close(c);
    return NULL;
}

/* RSS (kB) and open fds of a live process; -1 when unreadable. */
static void proc_usage(pid_t pid, long *rss_kb, long *fds)
{
    char path[64], line[256];
    *rss_kb = *fds = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            *rss_kb = atol(line + 6);
    if (f)
        fclose(f);
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return;
    long n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    *fds = n;
}

typedef struct usage {
    long router_rss, router_fds, worker_rss_mean, worker_rss_max, worker_fds_mean, worker_fds_max;
} usage;

static usage measure(const tcluster *cl)
{
    usage u = { 0 };
    proc_usage(cl->router, &u.router_rss, &u.router_fds);
    long n = 0, rss_sum = 0, fd_sum = 0;
    for (int i = 0; i < cl->n_workers; i++) {
        long rss, fds;
        proc_usage(cl->workers[i], &rss, &fds);
        if (rss < 0)
            continue;
        n++;
        rss_sum += rss;
        fd_sum += fds;
        if (rss > u.worker_rss_max)
            u.worker_rss_max = rss;
        if (fds > u.worker_fds_max)
            u.worker_fds_max = fds;
    }
    u.worker_rss_mean = n ? rss_sum / n : -1;
    u.worker_fds_mean = n ? fd_sum / n : -1;
    return u;
}

static void usage_text(FILE *f)
{
    fprintf(f,
            "usage: soak [--seconds 600] [--interval 10] [--down 3] [--clients 32]\n"
            "            [--replicas 2] [--models DIR] [--bin DIR] [--seed N]\n"
            "            [--router-arg ARG ...] [--keep]\n"
            "A chaos soak on loopback: C clients send sample requests to a real cluster\n"
            "(R replicas per expert) while every --interval s one random replica is killed\n"
            "(restarted --down s later) or stopped (continued --down s later). Reports\n"
            "requests served and failed, latency p50/p99/p99.9/max, and the RSS and fds\n"
            "of the router and the workers at the start and the end. Exit 0 when no\n"
            "request failed.\n"
            "Uses models/digits unless --models DIR; --keep leaves the logs.\n");
}

int main(int argc, char **argv)
{
    double seconds = 600, interval = 10, down = 3;
    int clients = 32, replicas = 2, keep = 0;
    uint64_t seed = 1;
    const char *models = NULL, *bindir = "bin";
    const char *router_args[32] = { 0 };
    int n_rargs = 0;
    static const struct option lo[] = {
        { "seconds", required_argument, 0, 's' }, { "interval", required_argument, 0, 'i' },
        { "down", required_argument, 0, 'd' },    { "clients", required_argument, 0, 'c' },
        { "replicas", required_argument, 0, 'r' }, { "models", required_argument, 0, 'm' },
        { "bin", required_argument, 0, 'b' },     { "seed", required_argument, 0, 'S' },
        { "router-arg", required_argument, 0, 'R' }, { "keep", no_argument, 0, 'k' },
        { "help", no_argument, 0, 'h' },          { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 's': seconds = atof(optarg); break;
        case 'i': interval = atof(optarg); break;
        case 'd': down = atof(optarg); break;
        case 'c': clients = atoi(optarg); break;
        case 'r': replicas = atoi(optarg); break;
        case 'm': models = optarg; break;
        case 'b': bindir = optarg; break;
        case 'S': seed = strtoull(optarg, NULL, 10); break;
        case 'R':
            if (n_rargs < 31)
                router_args[n_rargs++] = optarg;
            break;
        case 'k': keep = 1; break;
        case 'h': usage_text(stdout); return 0;
        default: usage_text(stderr); return 2;
        }
    }
    if (seconds <= 0 || interval <= 0 || down <= 0 || down >= interval || clients < 1 ||
        clients > MAX_CLIENTS || replicas < 2) {
        fprintf(stderr, "soak: need --seconds > 0, 0 < --down < --interval, --clients 1..%d, "
                        "--replicas >= 2\n", MAX_CLIENTS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    setenv("DDM_BIN_DIR", bindir, 1);
    struct stat sb;
    if (!models && stat("models/digits/router.safetensors", &sb) == 0)
        models = "models/digits";
    if (!models) {
        fprintf(stderr, "soak: no models/digits here: pass --models DIR\n");
        return 1;
    }
    int K = 0;
    char path[512];
    for (; K < 64; K++) {
        snprintf(path, sizeof path, "%s/expert-%d.safetensors", models, K);
        if (stat(path, &sb))
            break;
    }
    if (K == 0) {
        fprintf(stderr, "soak: %s has no expert-0.safetensors: pass --models DIR\n", models);
        return 1;
    }
    static const char *const wargs[] = { "--max-delay-us", "0", NULL };
    tcluster cl;
    if (tcluster_start(&cl, models, K, replicas, wargs, router_args))
        return 1;
    shared s = { .hostport = cl.hostport };
    pthread_mutex_init(&s.mu, NULL);
    s.lat = malloc(MAX_LAT * sizeof *s.lat);
    pthread_t th[MAX_CLIENTS];
    for (int i = 0; i < clients; i++)
        pthread_create(&th[i], NULL, client_main, &s);
    sleep(2); /* warm: the first requests allocate what the steady state keeps */
    usage u0 = measure(&cl);
    double t0 = proc_now_s(), next_event = t0 + interval;
    pthread_mutex_lock(&s.mu);
    s.t0 = t0;
    pthread_mutex_unlock(&s.mu);
    static event ev[MAX_EVENTS];
    int nev = 0;
#define EVENT(w, name) (nev < MAX_EVENTS ? (void)(ev[nev++] = (event){ proc_now_s() - t0, (w), (name) }) : (void)0)
    int out = -1, kills = 0, stops = 0;  /* the replica now out, or -1 */
    int out_killed = 0;
    double back_at = 0;
    uint64_t rng = seed;
    printf("soak: %d experts x %d replicas, %d clients, %.0f s, an event every %.0f s "
           "(out %.0f s)\n", K, replicas, clients, seconds, interval, down);
    fflush(stdout);
    while (proc_now_s() - t0 < seconds) {
        usleep(100000);
        double now = proc_now_s();
        if (out >= 0 && now >= back_at) {
            if (out_killed)
                tcluster_start_worker(&cl, out);
            else
                kill(cl.workers[out], SIGCONT);
            EVENT(out, out_killed ? "restarted" : "continued");
            out = -1;
        }
        if (out < 0 && now >= next_event) {
            out = (int)(rng_splitmix64(&rng) % (uint64_t)cl.n_workers);
            out_killed = (int)(rng_splitmix64(&rng) & 1);
            if (out_killed) {
                kill(cl.workers[out], SIGKILL);
                waitpid(cl.workers[out], NULL, 0);
                kills++;
            } else {
                kill(cl.workers[out], SIGSTOP);
                stops++;
            }
            EVENT(out, out_killed ? "killed" : "stopped");
            back_at = now + down;
            next_event += interval;
        }
    }
    if (out >= 0) { /* bring the last one back before measuring the end */
        if (out_killed)
            tcluster_start_worker(&cl, out);
        else
            kill(cl.workers[out], SIGCONT);
        sleep(2);
    }
    usage u1 = measure(&cl);
    double elapsed = proc_now_s() - t0;
    s.stop = 1;
    for (int i = 0; i < clients; i++)
        pthread_join(th[i], NULL);
    tcluster_stop(&cl, keep || s.failed);

    cli_sort_doubles(s.lat, (size_t)s.nlat);
    double p50 = s.nlat ? cli_percentile(s.lat, (size_t)s.nlat, 0.5) : 0;
    double p99 = s.nlat ? cli_percentile(s.lat, (size_t)s.nlat, 0.99) : 0;
    double p999 = s.nlat ? cli_percentile(s.lat, (size_t)s.nlat, 0.999) : 0;
    double max = s.nlat ? s.lat[s.nlat - 1] : 0;
    long over = 0; /* slower than the router's default expert deadline (2 s) */
    for (long i = 0; i < s.nlat; i++)
        over += s.lat[i] > 2.0;
    printf("\n| seconds | events (kill / stop) | requests served | failed | served/s | p50 ms | "
           "p99 ms | p99.9 ms | max ms | over 2 s |\n|---|---|---|---|---|---|---|---|---|---|\n");
    printf("| %.0f | %d (%d / %d) | %ld | %ld | %.1f | %.1f | %.1f | %.1f | %.1f | %ld |\n\n",
           elapsed, kills + stops, kills, stops, s.ok, s.failed, s.ok / elapsed, p50 * 1e3,
           p99 * 1e3, p999 * 1e3, max * 1e3, over);
    /* what happened around the slowest request (for reading the tail) */
    printf("slowest request: %.2f s, from %.1f s into the run; events from 10 s before:",
           s.slowest, s.slowest_at);
    for (int i = 0; i < nev; i++)
        if (ev[i].at >= s.slowest_at - 10 && ev[i].at <= s.slowest_at + s.slowest)
            printf(" %.1f s worker %d (expert %d) %s;", ev[i].at, ev[i].worker, ev[i].worker % K,
                   ev[i].what);
    printf("\n\n");
    printf("| process | RSS start MB | RSS end MB | fds start | fds end |\n|---|---|---|---|---|\n");
    printf("| router | %.1f | %.1f | %ld | %ld |\n", u0.router_rss / 1024.0, u1.router_rss / 1024.0,
           u0.router_fds, u1.router_fds);
    printf("| workers (mean) | %.1f | %.1f | %ld | %ld |\n", u0.worker_rss_mean / 1024.0,
           u1.worker_rss_mean / 1024.0, u0.worker_fds_mean, u1.worker_fds_mean);
    printf("| workers (max) | %.1f | %.1f | %ld | %ld |\n", u0.worker_rss_max / 1024.0,
           u1.worker_rss_max / 1024.0, u0.worker_fds_max, u1.worker_fds_max);
    if (s.failed) {
        printf("\nfailures by status (0 = no answer):");
        for (int i = 0; i < 600; i++)
            if (s.by_status[i])
                printf(" %d: %ld", i, s.by_status[i]);
        printf("\nlast failure: %s\n", s.last_error);
    }
    free(s.lat);
    return s.failed ? 1 : 0;
}
