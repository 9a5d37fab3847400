/* nanomsg_bench_main.c -- what nanomsg itself costs per tick of fan-out, with no ddm
 * code: a requester holding one REQ socket per expert sends a message to each
 * of K echo processes and waits for all K replies, as ddm-router does every
 * tick. Prints wall time and CPU time (requester, echo processes, both) per
 * tick for a few payload sizes. On a machine whose cores the router and the
 * workers share, that CPU time is a floor under what serving adds to the
 * in-process sampling (docs/benchmarks.md, ddm-router). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define MAX_EXPERTS 64
#define WARMUP_TICKS 100

static int set_timeouts(int s)
{
    int ms = 10000;
    return nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDTIMEO, &ms, sizeof ms) < 0 ||
           nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &ms, sizeof ms) < 0;
}

/* An echo process: replies to `total` requests with the request itself and
 * writes the CPU seconds of all but the first `warmup` to fd `report`. */
static int echo_main(const char *url, int total, int warmup, int report)
{
    int s = nn_socket(AF_SP, NN_REP);
    if (s < 0 || set_timeouts(s) || nn_bind(s, url) < 0) {
        fprintf(stderr, "nanomsg bench: echo on %s: %s\n", url, nn_strerror(nn_errno()));
        return 1;
    }
    double c0 = 0;
    for (int i = 0; i < total; i++) {
        if (i == warmup)
            c0 = proc_self_cpu_seconds();
        void *msg;
        if (nn_recv(s, &msg, NN_MSG, 0) < 0 || nn_send(s, &msg, NN_MSG, 0) < 0) {
            fprintf(stderr, "nanomsg bench: echo %s: %s\n", url, nn_strerror(nn_errno()));
            return 1;
        }
    }
    double cpu = proc_self_cpu_seconds() - c0;
    ssize_t w = write(report, &cpu, sizeof cpu);
    nn_close(s);
    return w == (ssize_t)sizeof cpu ? 0 : 1;
}

typedef struct tick_cost {
    double wall_us, requester_us, echo_us; /* per tick */
} tick_cost;

/* Runs `ticks` fan-outs of `bytes` to k echo processes; 0 or -1. */
static int measure(const char *tmp, const char *transport, int k, size_t bytes, int ticks,
                   tick_cost *out)
{
    char url[MAX_EXPERTS][160];
    int report[2];
    if (pipe(report))
        return -1;
    for (int i = 0; i < k; i++) {
        if (!strcmp(transport, "tcp"))
            snprintf(url[i], sizeof url[i], "tcp://127.0.0.1:%d", proc_free_port());
        else
            snprintf(url[i], sizeof url[i], "ipc://%s/e%d.ipc", tmp, i);
    }
    /* Fork every echo process before this process makes a socket: nanomsg's
     * I/O threads do not survive a fork. */
    pid_t pid[MAX_EXPERTS];
    for (int i = 0; i < k; i++) {
        pid[i] = fork();
        if (pid[i] == 0)
            _exit(echo_main(url[i], WARMUP_TICKS + ticks, WARMUP_TICKS, report[1]));
    }
    close(report[1]);
    int s[MAX_EXPERTS], rc = 0;
    for (int i = 0; i < k; i++) {
        s[i] = nn_socket(AF_SP, NN_REQ);
        if (s[i] < 0 || set_timeouts(s[i]) || nn_connect(s[i], url[i]) < 0)
            rc = -1;
    }
    char *buf = calloc(1, bytes);
    double t0 = 0, c0 = 0;
    for (int t = 0; t < WARMUP_TICKS + ticks && rc == 0 && buf; t++) {
        if (t == WARMUP_TICKS) {
            t0 = proc_now_s();
            c0 = proc_self_cpu_seconds();
        }
        for (int i = 0; i < k && rc == 0; i++)
            if (nn_send(s[i], buf, bytes, 0) < 0)
                rc = -1;
        for (int i = 0; i < k && rc == 0; i++) {
            void *msg;
            if (nn_recv(s[i], &msg, NN_MSG, 0) < 0)
                rc = -1;
            else
                nn_freemsg(msg);
        }
    }
    if (rc == 0) {
        out->wall_us = 1e6 * (proc_now_s() - t0) / ticks;
        out->requester_us = 1e6 * (proc_self_cpu_seconds() - c0) / ticks;
    } else {
        fprintf(stderr, "nanomsg bench: %s\n", buf ? nn_strerror(nn_errno()) : "out of memory");
    }
    out->echo_us = 0;
    for (int i = 0; i < k; i++) {
        double cpu;
        if (rc == 0 && read(report[0], &cpu, sizeof cpu) == (ssize_t)sizeof cpu)
            out->echo_us += 1e6 * cpu / ticks;
        else
            rc = -1;
    }
    for (int i = 0; i < k; i++)
        nn_close(s[i]);
    for (int i = 0; i < k; i++) /* each exits after its last reply */
        if (proc_wait(pid[i], 5000) != 0 && proc_stop(pid[i], SIGKILL, 2000) != 0)
            rc = -1;
    close(report[0]);
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    int k = 8, ticks = 2000;
    const char *transport = "ipc";
    size_t sizes[8] = { 100, 8 * 784 * 4, 32 * 784 * 4 }; /* see --help */
    int n_sizes = 3;
    static const struct option lo[] = {
        { "experts", required_argument, 0, 'k' }, { "ticks", required_argument, 0, 't' },
        { "transport", required_argument, 0, 'T' }, { "bytes", required_argument, 0, 'b' },
        { "help", no_argument, 0, 'h' },          { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "k:t:T:b:h", lo, NULL)) != -1) {
        switch (c) {
        case 'k': k = atoi(optarg); break;
        case 't': ticks = atoi(optarg); break;
        case 'T': transport = optarg; break;
        case 'b':
            sizes[0] = strtoul(optarg, NULL, 10);
            n_sizes = 1;
            break;
        case 'h':
            printf("usage: nanomsg_bench [--experts 8] [--ticks 2000] [--transport ipc|tcp]\n"
                   "                     [--bytes N]\n"
                   "Fan-out round trips with no ddm code: per tick, one message to each of\n"
                   "K echo processes and their K replies. Without --bytes: 100 bytes, 25,088\n"
                   "(8 latents of 784 floats: a top-2 call at 32 single-image clients) and\n"
                   "100,352 (32 latents: a full call).\n");
            return 0;
        default: return 2;
        }
    }
    if (k < 1 || k > MAX_EXPERTS || ticks < 1 || sizes[0] < 1 ||
        (strcmp(transport, "ipc") && strcmp(transport, "tcp"))) {
        fprintf(stderr, "nanomsg_bench: --experts 1..%d, --ticks >= 1, --bytes >= 1, "
                        "--transport ipc or tcp\n", MAX_EXPERTS);
        return 2;
    }
    char tmp[128];
    if (toyset_tempdir(tmp, sizeof tmp, "bench-nanomsg"))
        return 1;
    printf("%s, %d echo processes, %d ticks (after %d warm-up ticks)\n\n", transport, k, ticks,
           WARMUP_TICKS);
    printf("| payload bytes | wall us/tick | requester CPU us/tick | echo processes CPU "
           "us/tick | total CPU us/tick |\n|---|---|---|---|---|\n");
    int rc = 0;
    for (int i = 0; i < n_sizes && rc == 0; i++) {
        tick_cost tc;
        rc = measure(tmp, transport, k, sizes[i], ticks, &tc);
        if (rc == 0)
            printf("| %zu | %.1f | %.1f | %.1f | %.1f |\n", sizes[i], tc.wall_us,
                   tc.requester_us, tc.echo_us, tc.requester_us + tc.echo_us);
        fflush(stdout);
    }
    toyset_rmdir(tmp);
    return rc ? 1 : 0;
}
