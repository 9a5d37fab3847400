/* cluster.h -- a whole local cluster for tests, benchmarks and soak runs: R
 * ddm-expert replicas per expert of a model directory (or of a random toy set)
 * on ipc:// sockets in a temp dir (or on tcp:// loopback ports), and ddm-router
 * on a free loopback port, started the way a user starts them, logs in the
 * temp dir. */
#ifndef DDM_TEST_CLUSTER_H
#define DDM_TEST_CLUSTER_H

#include <sys/types.h>

#define TCLUSTER_MAX_WORKERS 256

/* How the router reaches the workers: ipc:// sockets in the temp dir, or
 * tcp://127.0.0.1 on free ports (as deploy/local/digits.conf). */
typedef enum tcluster_transport { TCLUSTER_IPC = 0, TCLUSTER_TCP } tcluster_transport;

typedef struct tcluster {
    char dir[128];            /* temp dir: cluster.conf, sockets, logs (and a toy set) */
    char models[256];
    char conf[256];
    char rlog[256];           /* the router's log */
    int K, replicas;
    int n_workers;            /* K * replicas; worker i serves expert i % K */
    tcluster_transport transport;
    int ports[TCLUSTER_MAX_WORKERS]; /* TCLUSTER_TCP: worker i's port */
    pid_t workers[TCLUSTER_MAX_WORKERS];
    pid_t router;
    int port;
    char hostport[64];        /* "127.0.0.1:port" of the router */
    const char *const *worker_args; /* extra ddm-expert flags (NULL-terminated) or NULL */
} tcluster;

/* Starts the cluster for models (a directory with router.safetensors and
 * expert-0..K-1) with `replicas` workers per expert and waits until the
 * router's /readyz says 200. worker_args and router_args: extra flags,
 * NULL-terminated, or NULL; kept by pointer (must outlive the cluster).
 * Returns 0, or -1 with a message on stderr (what started is stopped). */
int tcluster_start(tcluster *c, const char *models, int K, int replicas,
                   const char *const *worker_args, const char *const *router_args);
/* The same with the workers on transport tr (tcluster_start: TCLUSTER_IPC). */
int tcluster_start_on(tcluster *c, tcluster_transport tr, const char *models, int K,
                      int replicas, const char *const *worker_args,
                      const char *const *router_args);

/* Like tcluster_start with one replica per expert of a random toy set (K
 * experts over dim floats, `classes` classes) written into the temp dir. */
int tcluster_start_toy(tcluster *c, int K, int dim, int classes, const char *const *worker_args,
                       const char *const *router_args);

/* (Re)starts worker i (0..n_workers-1) on its URL; returns its pid or -1. */
pid_t tcluster_start_worker(tcluster *c, int i);

/* Starts one more ddm-router on the same workers (extra flags router_args),
 * logging to <dir>/router-<port>.log, and waits for /readyz. Returns its pid
 * and *port, or -1 (its log dumped on stderr). The caller stops it
 * (proc_stop) before tcluster_stop. */
pid_t tcluster_add_router(tcluster *c, const char *const *router_args, int *port);

/* Stops the router and every worker (SIGTERM, then SIGKILL) and removes the
 * temp dir unless keep or $DDM_KEEP_LOGS is set. Safe on a half-started
 * cluster and twice. */
void tcluster_stop(tcluster *c, int keep);

#endif
