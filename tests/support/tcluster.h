/* tcluster.h -- a whole ddm cluster on loopback for end-to-end tests: one
 * ddm-expert per expert (ipc sockets in a temp dir) and a ddm-router on a free
 * port, started as a user starts them, logs in the temp dir. */
#ifndef DDM_TEST_TCLUSTER_H
#define DDM_TEST_TCLUSTER_H

#include <sys/types.h>

#define TCLUSTER_MAX_EXPERTS 16

typedef struct tcluster {
    char dir[128];            /* temp dir: cluster file, logs, sockets (and a toy set) */
    char conf[256], rlog[256];
    char hostport[64];        /* "127.0.0.1:PORT" of the router */
    int K, port;
    pid_t workers[TCLUSTER_MAX_EXPERTS];
    pid_t router;
} tcluster;

/* Starts the cluster. models: a directory with expert-N and router weights
 * (NULL: a random toy set of K experts over dim floats and `classes` classes
 * is written into the temp dir). delay_us: the workers' --max-delay-us (a
 * larger one makes every step slower: long jobs for cancel tests).
 * router_args: extra ddm-router flags, NULL-terminated (may be NULL). Waits
 * for /readyz. Returns 0, or -1 (logs dumped on stderr; call tcluster_stop). */
int tcluster_start(tcluster *c, const char *models, int K, int dim, int classes,
                   const char *delay_us, char *const router_args[]);

/* Starts one more ddm-router on the same workers (extra flags router_args),
 * logging to <dir>/router-<port>.log, and waits for /readyz. Returns its pid
 * and *port, or -1. The caller stops it (proc_stop) before tcluster_stop. */
pid_t tcluster_add_router(tcluster *c, char *const router_args[], int *port);

/* Stops the router and the workers (SIGTERM, then SIGKILL) and removes the
 * temp dir (kept when DDM_KEEP_LOGS is set). Safe on a half-started cluster. */
void tcluster_stop(tcluster *c);

#endif
