/* cluster.h -- the cluster file: which experts exist and where their replicas listen.
 *
 * One directive per line, '#' starts a comment:
 *   models  <dir>               router.safetensors and expert-N.safetensors live here
 *   router  <path>              router network weights (default <models>/router.safetensors)
 *   listen  <host:port>         HTTP address of ddm-router (default 127.0.0.1:8080)
 *   expert  <id> <url> [k=v ...] one replica of expert <id> (nanomsg URL: tcp://host:port,
 *                               ipc://path), with optional attributes:
 *                                 sha256=<64 hex>  the weights hash the replica must declare
 *                                                  in its handshake (the router refuses others)
 *                                 impl=c|torch     which worker ddm-cluster starts (ddm-expert,
 *                                                  or expert-worker/python); the router ignores it
 *   set     <key> <value>       a router setting (see cluster_setting keys in --help)
 * The same file drives ddm-router, deploy/local's launcher, the systemd units
 * and the Kubernetes ConfigMap. Relative paths are relative to the working directory. */
#ifndef DDM_CLUSTER_H
#define DDM_CLUSTER_H

#include <stddef.h>

#define CLUSTER_MAX_EXPERTS 64
#define CLUSTER_MAX_REPLICAS 16
#define CLUSTER_MAX_SETTINGS 32

typedef struct cluster_expert {
    int n_replicas;
    char *urls[CLUSTER_MAX_REPLICAS];
    char sha256[CLUSTER_MAX_REPLICAS][65]; /* pinned weights hash (lower-case hex) or "" */
    char impl[CLUSTER_MAX_REPLICAS][8];    /* "c" (default) or "torch" */
} cluster_expert;

typedef struct cluster {
    char *models_dir;          /* may be NULL */
    char *router_path;         /* resolved: explicit or <models>/router.safetensors */
    char *listen;              /* may be NULL (caller's default) */
    int n_experts;             /* K = highest id + 1; every id 0..K-1 has >= 1 replica */
    cluster_expert experts[CLUSTER_MAX_EXPERTS];
    int n_settings;
    char *set_keys[CLUSTER_MAX_SETTINGS];
    char *set_values[CLUSTER_MAX_SETTINGS];
} cluster;

/* Parses a cluster file. Returns 0, or an error with "path:line: what is
 * wrong" in err. On success the caller frees with cluster_free. */
int cluster_load(const char *path, cluster *out, char *err, size_t errlen);
/* Parses from a string (path is used in messages only). */
int cluster_parse(const char *text, const char *path, cluster *out, char *err, size_t errlen);
void cluster_free(cluster *c);
/* Value of setting key or NULL. */
const char *cluster_setting(const cluster *c, const char *key);

#endif
