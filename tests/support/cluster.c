/* cluster.c -- a local cluster of real processes (see cluster.h). */
#include "tests/support/cluster.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/proc.h"
#include "tests/support/toyset.h"

static void worker_url(const tcluster *c, int i, char *buf, size_t len)
{
    if (c->transport == TCLUSTER_TCP)
        snprintf(buf, len, "tcp://127.0.0.1:%d", c->ports[i]);
    else
        snprintf(buf, len, "ipc://%s/e%d.%d.ipc", c->dir, i % c->K, i / c->K);
}

pid_t tcluster_start_worker(tcluster *c, int i)
{
    char bin[256], weights[512], url[256], log[256];
    snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", c->models, i % c->K);
    worker_url(c, i, url, sizeof url);
    snprintf(log, sizeof log, "%s/worker-%d.log", c->dir, i);
    char *argv[48] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights", weights,
                       "--listen", url };
    int n = 5;
    for (int a = 0; c->worker_args && c->worker_args[a] && n < 47; a++)
        argv[n++] = (char *)c->worker_args[a];
    argv[n] = NULL;
    return c->workers[i] = proc_start(argv, log);
}

pid_t tcluster_add_router(tcluster *c, const char *const *router_args, int *port)
{
    *port = proc_free_port();
    char bin[256], listen[64], log[256];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", *port);
    snprintf(log, sizeof log, "%s/router-%d.log", c->dir, *port);
    char *argv[64] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", c->conf,
                       "--listen", listen };
    int n = 5;
    for (int a = 0; router_args && router_args[a] && n < 63; a++)
        argv[n++] = (char *)router_args[a];
    argv[n] = NULL;
    pid_t pid = proc_start(argv, log);
    if (pid < 0 || proc_wait_http(*port, "/readyz", 200, 30000)) {
        fprintf(stderr, "tcluster: the router never became ready; its log:\n");
        proc_dump_log(log);
        if (pid > 0)
            proc_stop(pid, SIGKILL, 2000);
        return -1;
    }
    return pid;
}

/* Starts the cluster in c->dir (made already), its workers on transport tr. */
static int start(tcluster *c, tcluster_transport tr, const char *models, int K, int replicas,
                 const char *const *worker_args, const char *const *router_args)
{
    signal(SIGPIPE, SIG_IGN);
    c->transport = tr;
    if (K < 1 || replicas < 1 || K * replicas > TCLUSTER_MAX_WORKERS) {
        fprintf(stderr, "tcluster: %d experts x %d replicas is too many\n", K, replicas);
        return -1;
    }
    snprintf(c->models, sizeof c->models, "%s", models);
    c->K = K;
    c->replicas = replicas;
    c->n_workers = K * replicas;
    c->worker_args = worker_args;
    for (int i = 0, tries = 0; tr == TCLUSTER_TCP && i < c->n_workers; tries++) {
        if (tries > 100 * c->n_workers) {
            fprintf(stderr, "tcluster: no %d free loopback ports\n", c->n_workers);
            return -1;
        }
        int port = proc_free_port(), seen = port <= 0;
        for (int j = 0; j < i && !seen; j++)
            seen = c->ports[j] == port; /* the kernel may give one twice */
        if (!seen)
            c->ports[i++] = port;
    }
    snprintf(c->conf, sizeof c->conf, "%s/cluster.conf", c->dir);
    FILE *f = fopen(c->conf, "w");
    if (!f) {
        perror(c->conf);
        return -1;
    }
    fprintf(f, "models %s\n", models);
    for (int i = 0; i < c->n_workers; i++) {
        char url[256];
        worker_url(c, i, url, sizeof url);
        fprintf(f, "expert %d %s\n", i % K, url);
    }
    fclose(f);
    for (int i = 0; i < c->n_workers; i++)
        if (tcluster_start_worker(c, i) < 0) {
            tcluster_stop(c, 0);
            return -1;
        }
    c->router = tcluster_add_router(c, router_args, &c->port);
    snprintf(c->hostport, sizeof c->hostport, "127.0.0.1:%d", c->port);
    snprintf(c->rlog, sizeof c->rlog, "%s/router-%d.log", c->dir, c->port);
    if (c->router < 0) {
        c->router = 0;
        tcluster_stop(c, 0);
        return -1;
    }
    return 0;
}

int tcluster_start(tcluster *c, const char *models, int K, int replicas,
                   const char *const *worker_args, const char *const *router_args)
{
    return tcluster_start_on(c, TCLUSTER_IPC, models, K, replicas, worker_args, router_args);
}

int tcluster_start_on(tcluster *c, tcluster_transport tr, const char *models, int K,
                      int replicas, const char *const *worker_args,
                      const char *const *router_args)
{
    memset(c, 0, sizeof *c);
    if (toyset_tempdir(c->dir, sizeof c->dir, "cluster"))
        return -1;
    if (start(c, tr, models, K, replicas, worker_args, router_args)) {
        tcluster_stop(c, 0);
        return -1;
    }
    return 0;
}

int tcluster_start_toy(tcluster *c, int K, int dim, int classes, const char *const *worker_args,
                       const char *const *router_args)
{
    memset(c, 0, sizeof *c);
    if (toyset_tempdir(c->dir, sizeof c->dir, "cluster"))
        return -1;
    if (toyset_write(c->dir, K, dim, classes, 3)) {
        fprintf(stderr, "tcluster: cannot write a toy set into %s\n", c->dir);
        tcluster_stop(c, 0);
        return -1;
    }
    return start(c, TCLUSTER_IPC, c->dir, K, 1, worker_args, router_args);
}

void tcluster_stop(tcluster *c, int keep)
{
    if (c->router > 0)
        proc_stop(c->router, SIGTERM, 10000);
    c->router = 0;
    for (int i = 0; i < c->n_workers; i++)
        if (c->workers[i] > 0) {
            kill(c->workers[i], SIGCONT); /* a stopped worker cannot take SIGTERM */
            proc_stop(c->workers[i], SIGTERM, 5000);
            c->workers[i] = 0;
        }
    if (!c->dir[0])
        return;
    if (keep || getenv("DDM_KEEP_LOGS"))
        fprintf(stderr, "cluster files kept in %s\n", c->dir);
    else
        toyset_rmdir(c->dir);
    c->dir[0] = '\0';
}
