/* tcluster.c -- a ddm cluster on loopback for tests (see tcluster.h). */
#include "tests/support/tcluster.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/proc.h"
#include "tests/support/toyset.h"

int tcluster_start(tcluster *c, const char *models, int K, int dim, int classes,
                   const char *delay_us, char *const router_args[])
{
    memset(c, 0, sizeof *c);
    signal(SIGPIPE, SIG_IGN);
    if (K < 1 || K > TCLUSTER_MAX_EXPERTS || toyset_tempdir(c->dir, sizeof c->dir, "tcluster"))
        return -1;
    c->K = K;
    if (!models) {
        if (toyset_write(c->dir, K, dim, classes, 3))
            return -1;
        models = c->dir;
    }
    snprintf(c->conf, sizeof c->conf, "%s/cluster.conf", c->dir);
    FILE *f = fopen(c->conf, "w");
    if (!f)
        return -1;
    fprintf(f, "models %s\n", models);
    for (int k = 0; k < K; k++)
        fprintf(f, "expert %d ipc://%s/e%d.ipc\n", k, c->dir, k);
    fclose(f);
    char bin[256];
    proc_bin("ddm-expert", bin, sizeof bin);
    for (int k = 0; k < K; k++) {
        char weights[300], url[200], log[200];
        snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", models, k);
        snprintf(url, sizeof url, "ipc://%s/e%d.ipc", c->dir, k);
        snprintf(log, sizeof log, "%s/worker-%d.log", c->dir, k);
        char *argv[] = { bin, "--weights", weights, "--listen", url, "--max-delay-us",
                         (char *)(delay_us ? delay_us : "200"), NULL };
        if ((c->workers[k] = proc_start(argv, log)) < 0)
            return -1;
    }
    c->router = tcluster_add_router(c, router_args, &c->port);
    if (c->router < 0)
        return -1;
    snprintf(c->hostport, sizeof c->hostport, "127.0.0.1:%d", c->port);
    snprintf(c->rlog, sizeof c->rlog, "%s/router-%d.log", c->dir, c->port);
    return 0;
}

pid_t tcluster_add_router(tcluster *c, char *const router_args[], int *port)
{
    *port = proc_free_port();
    char rbin[256], listen[64], log[200];
    proc_bin("ddm-router", rbin, sizeof rbin);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", *port);
    snprintf(log, sizeof log, "%s/router-%d.log", c->dir, *port);
    char *argv[64] = { rbin, "--cluster", c->conf, "--listen", listen };
    int n = 5;
    for (int i = 0; router_args && router_args[i] && n < 63; i++)
        argv[n++] = router_args[i];
    argv[n] = NULL;
    pid_t pid = proc_start(argv, log);
    if (pid < 0)
        return -1;
    if (proc_wait_http(*port, "/readyz", 200, 20000)) {
        fprintf(stderr, "tcluster: the router never became ready\n");
        proc_dump_log(log);
        proc_stop(pid, SIGKILL, 2000);
        return -1;
    }
    return pid;
}

void tcluster_stop(tcluster *c)
{
    if (c->router > 0)
        proc_stop(c->router, SIGTERM, 5000);
    c->router = 0;
    for (int k = 0; k < c->K; k++)
        if (c->workers[k] > 0)
            proc_stop(c->workers[k], SIGTERM, 5000);
    memset(c->workers, 0, sizeof c->workers);
    if (c->dir[0]) {
        if (getenv("DDM_KEEP_LOGS"))
            fprintf(stderr, "tcluster: logs kept in %s\n", c->dir);
        else
            toyset_rmdir(c->dir);
    }
    c->dir[0] = '\0';
}
