/* fuzz_cluster.c -- libFuzzer target: the cluster file (router/cluster.c
 * cluster_parse) and the router settings it carries (router/args.c
 * router_args_settings), as ddm-router reads them at start.
 *
 * Input: the file's text. Checks beyond "no crash, leak or UB": a parse
 * either fails with a message or returns a cluster that keeps cluster.h's
 * promises (every id 0..K-1 has 1..16 replicas with valid URLs, pins are 64
 * lower-case hex digits or "", impl is "c" or "torch", a router path). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "router/args.h"
#include "router/cluster.h"

static router_opts defaults;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    /* the strings outlive this function: the options point into them. --log-level
     * as a flag wins over the files' "set log-level": logging stays off */
    static char a0[] = "ddm-router", a1[] = "--cluster", a2[] = "fuzz.conf",
                a3[] = "--log-level", a4[] = "off";
    char *av[] = { a0, a1, a2, a3, a4, NULL };
    char err[256];
    if (router_args_parse(5, av, &defaults, stderr, err, sizeof err) != ROUTER_ARGS_RUN) {
        fprintf(stderr, "fuzz_cluster: default options: %s\n", err);
        abort();
    }
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_cluster: broken promise: %s\n", what);
        abort();
    }
}

static int is_pin(const char *h)
{
    if (!h[0])
        return 1;
    if (strlen(h) != 64)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return 0;
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    cluster c;
    char err[512] = "";
    int rc = cluster_parse(text, "fuzz.conf", &c, err, sizeof err);
    free(text);
    if (rc) {
        check(rc < 0, "a failed parse returns a negative ddm_err");
        check(err[0] != '\0', "a failed parse says why");
        check(c.n_experts == 0 && !c.router_path, "a failed parse leaves nothing to free");
        return 0;
    }
    check(c.n_experts >= 1 && c.n_experts <= CLUSTER_MAX_EXPERTS, "1..64 experts");
    check(c.router_path != NULL, "a router path");
    for (int k = 0; k < c.n_experts; k++) {
        const cluster_expert *e = &c.experts[k];
        check(e->n_replicas >= 1 && e->n_replicas <= CLUSTER_MAX_REPLICAS, "1..16 replicas");
        for (int r = 0; r < e->n_replicas; r++) {
            check(e->urls[r] && (!strncmp(e->urls[r], "tcp://", 6) ||
                                 !strncmp(e->urls[r], "ipc://", 6)), "a worker URL");
            check(is_pin(e->sha256[r]), "a pin of 64 lower-case hex digits or none");
            check(!strcmp(e->impl[r], "c") || !strcmp(e->impl[r], "torch"), "impl c or torch");
        }
    }
    router_opts o = defaults;
    int unknown = 0;
    err[0] = '\0';
    if (router_args_settings(&o, &c, &unknown, err, sizeof err))
        check(err[0] != '\0', "a refused setting says why");
    cluster_free(&c);
    return 0;
}
