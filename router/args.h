/* args.h -- ddm-router's options: one table drives the flags (getopt_long), the
 * cluster file's "set <name> <value>" settings and --help (with every default). */
#ifndef DDM_ROUTER_ARGS_H
#define DDM_ROUTER_ARGS_H

#include <stdio.h>

#include "router/cluster.h"
#include "router/cors.h"

typedef struct router_opts {
    const char *cluster;           /* --cluster (required) */
    const char *listen;            /* NULL: the file's "listen", else 127.0.0.1:8080 */
    const char *router_weights;    /* NULL: the file's router / <models>/router.safetensors */
    const char *auth_file;         /* NULL: no tokens */
    const char *cluster_key_file;  /* NULL: no HMAC between router and workers */
    long public_metrics, public_experts; /* 0/1 */
    long max_images, max_request_cost, tick_capacity, tick_rows, share_rows, ticks, threads;
    long speculate, substitute_queue_rows, inline_trajs;
    long expert_timeout_ms, attempts, request_timeout_ms;
    long max_connections, max_connections_per_ip, max_body_bytes;
    long drain_timeout_ms, token_concurrency, token_queue;
    long job_ttl_s, job_store_mb, max_subscribers, sse_heartbeat_ms;
    cors cors;                     /* --cors-origin, repeatable (none: CORS off) */
    const char *log_level;         /* "info" */
    unsigned long long given;      /* options given as flags, one bit each (args.c's order) */
} router_opts;

typedef enum router_args_result {
    ROUTER_ARGS_RUN = 0,    /* o is complete: load the cluster file next */
    ROUTER_ARGS_EXIT = 1,   /* --help or --version was printed to out: exit 0 */
    ROUTER_ARGS_USAGE = 2,  /* bad command line, message in err: exit 2 */
} router_args_result;

/* Parses argv into o (starting from the defaults) and remembers which options
 * were given, so that router_args_settings leaves those alone. String fields
 * point into argv. */
router_args_result router_args_parse(int argc, char **argv, router_opts *o, FILE *out, char *err,
                                     size_t errlen);

/* Applies the cluster file's settings (the long option names) to the options
 * not given as flags: flags win. A setting no option has is logged (warning)
 * and counted in *n_unknown (may be NULL). Returns 0, or -1 with "in FILE:
 * setting ...: what is wrong" in err. String values point into cl. */
int router_args_settings(router_opts *o, const cluster *cl, int *n_unknown, char *err,
                         size_t errlen);

/* Writes the --help text (every option with its default). */
void router_args_usage(FILE *f);

#endif
