/* args.c -- ddm-router's options table (see args.h). */
#include "router/args.h"

#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/version.h"
#include "router/engine.h"

/* K_BOOL: a flag without a value on the command line (1 when given); K_ONOFF:
 * a switch with a value, on or off. Both take 1/0, true/false, yes/no, on/off
 * in the cluster file. K_ORIGIN: a CORS origin, repeatable (router_opts.cors). */
typedef enum opt_kind {
    K_STR, K_LONG, K_BOOL, K_ONOFF, K_LEVEL, K_ORIGIN, K_HELP, K_VERSION
} opt_kind;

typedef struct opt {
    const char *name;
    char shortc;              /* 0: long only */
    opt_kind kind;
    const char *metavar;      /* "N", "FILE", ... (NULL for flags without a value) */
    size_t off;               /* offsetof(router_opts, ...) */
    long lo, hi, def;         /* K_LONG: bounds and default */
    const char *sdef;         /* K_STR/K_LEVEL: default text for --help (NULL: none) */
    int settable;             /* also "set <name> <value>" in the cluster file */
    const char *help;         /* lines separated by '\n' */
} opt;

#define OFF(f) offsetof(router_opts, f)

static const opt OPTS[] = {
    { "cluster", 'c', K_STR, "FILE", OFF(cluster), 0, 0, 0, NULL, 0,
      "cluster file: models dir, expert replicas, settings (required)" },
    { "listen", 'l', K_STR, "HOST:PORT", OFF(listen), 0, 0, 0, NULL, 0,
      "HTTP address (default: the file's \"listen\", else 127.0.0.1:8080)" },
    { "router-weights", 0, K_STR, "PATH", OFF(router_weights), 0, 0, 0, NULL, 0,
      "router network (default: the file's \"router\", else\n"
      "<models>/router.safetensors)" },
    { "max-images", 0, K_LONG, "N", OFF(max_images), 1, 1 << 20, 1024, NULL, 1,
      "images in flight before 503 + Retry-After; a request for more images\n"
      "gets 400" },
    { "max-request-cost", 0, K_LONG, "N", OFF(max_request_cost), 1, 1000000000000L,
      (long)ENGINE_DEFAULT_MAX_COST, NULL, 1,
      "expert evaluations one request may cost: images x steps (x2 heun)\n"
      "x experts per step (k of top-k; K for full, uniform, threshold,\n"
      "nucleus; 1 for sample, expert:N) x2 with guidance and a label;\n"
      "over it, 400 (docs/benchmarks.md says how the default was sized)" },
    { "tick-capacity", 0, K_LONG, "N", OFF(tick_capacity), 1, 4096, 256, NULL, 1,
      "trajectories per tick" },
    { "tick-rows", 0, K_LONG, "N", OFF(tick_rows), 1, 1 << 20, ENGINE_DEFAULT_TICK_ROWS, NULL, 1,
      "expert rows per tick" },
    { "share-rows", 0, K_LONG, "N", OFF(share_rows), 1, 1 << 20, ENGINE_DEFAULT_SHARE_ROWS, NULL,
      1, "expert rows a request keeps in flight while smaller requests of its\n"
         "priority run: keeps small requests fast" },
    { "ticks", 0, K_LONG, "N", OFF(ticks), 1, 8, 2, NULL, 1, "ticks in flight at once" },
    { "speculate", 0, K_ONOFF, "on|off", OFF(speculate), 0, 1, 1, NULL, 1,
      "speculative dispatch: a trajectory's next latent goes to the experts\n"
      "of its previous step while the router network decides; then only\n"
      "the difference is sent (images unchanged; docs/benchmarks.md)" },
    { "inline-trajs", 0, K_LONG, "N", OFF(inline_trajs), 0, 4096, ENGINE_DEFAULT_INLINE_TRAJS,
      NULL, 1,
      "a tick of at most N trajectories is planned and combined on the event\n"
      "loop, not the threadpool: for a few rows the hop costs more than the\n"
      "work (single-image latency; 0: always the threadpool)" },
    { "substitute-queue-rows", 0, K_LONG, "N", OFF(substitute_queue_rows), 0, 1 << 20,
      ENGINE_DEFAULT_SUBSTITUTE_ROWS, NULL, 1,
      "requests with \"substitute\": true use the next-best expert instead\n"
      "of one with no live replica or more rows than this outstanding" },
    { "threads", 0, K_LONG, "N", OFF(threads), 1, 16, 1, NULL, 1,
      "threads for the router network: a tick's rows are split over them\n"
      "(2 when the router has a core to spare)" },
    { "expert-timeout-ms", 0, K_LONG, "MS", OFF(expert_timeout_ms), 10, 3600000, 2000, NULL, 1,
      "deadline of one expert message attempt" },
    { "attempts", 0, K_LONG, "N", OFF(attempts), 1, 100, 3, NULL, 1,
      "sends per expert message before failing" },
    { "request-timeout-ms", 0, K_LONG, "MS", OFF(request_timeout_ms), 100, 86400000, 300000, NULL,
      1, "whole-request deadline, then 504" },
    { "max-connections", 0, K_LONG, "N", OFF(max_connections), 1, 1 << 20, 1024, NULL, 1,
      "HTTP connections; at the cap a new one closes the one idle longest,\n"
      "else only /healthz and /readyz answer on it" },
    { "max-connections-per-ip", 0, K_LONG, "N", OFF(max_connections_per_ip), 1, 1 << 20, 256, NULL,
      1, "the same per client address (behind a proxy every client has its\n"
         "address: raise it)" },
    { "max-body-bytes", 0, K_LONG, "N", OFF(max_body_bytes), 1024, 1 << 30, 65536, NULL, 1,
      "request body limit, else 413 (a sample request is under 1 KiB)" },
    { "drain-timeout-ms", 0, K_LONG, "MS", OFF(drain_timeout_ms), 0, 3600000, 30000, NULL, 1,
      "on SIGTERM, how long requests in flight may finish; then they\n"
      "get 503" },
    { "cluster-key-file", 0, K_STR, "FILE", OFF(cluster_key_file), 0, 0, 0, NULL, 1,
      "HMAC key shared with the workers (their --cluster-key-file):\n"
      "every message is authenticated, a worker without the key is\n"
      "refused (default: none)" },
    { "auth-token-file", 0, K_STR, "FILE", OFF(auth_file), 0, 0, 0, NULL, 1,
      "require \"Authorization: Bearer <token>\" on the API: one token\n"
      "a line, \"[name:]token [concurrency=N] [queue=N]\" (docs/api.md);\n"
      "re-read on SIGHUP. /healthz and /readyz stay open (default: no\n"
      "tokens)" },
    { "public-metrics", 0, K_BOOL, NULL, OFF(public_metrics), 0, 1, 0, NULL, 1,
      "/metrics answers without a token (default: it needs one)" },
    { "public-experts", 0, K_BOOL, NULL, OFF(public_experts), 0, 1, 0, NULL, 1,
      "/v1/experts answers without a token (default: it needs one)" },
    { "token-concurrency", 0, K_LONG, "N", OFF(token_concurrency), 1, 100000, 4, NULL, 1,
      "a token's sample requests computed at once, unless its line says" },
    { "token-queue", 0, K_LONG, "N", OFF(token_queue), 0, 1000000, 16, NULL, 1,
      "a token's requests waiting for a turn, unless its line says; past\n"
      "them 429" },
    { "job-ttl-s", 0, K_LONG, "S", OFF(job_ttl_s), 1, 30 * 86400, 600, NULL, 1,
      "finished jobs are kept this long (then 410 Gone)" },
    { "job-store-mb", 0, K_LONG, "MB", OFF(job_store_mb), 1, 1 << 20, 256, NULL, 1,
      "results of finished jobs kept, in all; the oldest go first" },
    { "max-subscribers", 0, K_LONG, "N", OFF(max_subscribers), 1, 1024, 8, NULL, 1,
      "event streams per job, else 429" },
    { "sse-heartbeat-ms", 0, K_LONG, "MS", OFF(sse_heartbeat_ms), 100, 3600000, 15000, NULL, 1,
      "a comment line on an event stream quiet this long" },
    { "cors-origin", 0, K_ORIGIN, "ORIGIN", OFF(cors), 0, 0, 0, NULL, 1,
      "let pages from ORIGIN (scheme://host[:port], or *) call the API from\n"
      "a browser; repeatable (default: none, CORS off)" },
    { "log-level", 0, K_LEVEL, "LEVEL", OFF(log_level), 0, 0, 0, "info", 1,
      "debug, info, warn, error or off" },
    { "help", 'h', K_HELP, NULL, 0, 0, 0, 0, NULL, 0, "this text" },
    { "version", 'V', K_VERSION, NULL, 0, 0, 0, 0, NULL, 0, "print the version" },
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static long *long_at(router_opts *o, const opt *d) { return (long *)((char *)o + d->off); }
static const char **str_at(router_opts *o, const opt *d)
{
    return (const char **)((char *)o + d->off);
}

static void defaults(router_opts *o)
{
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *d = &OPTS[i];
        if (d->kind == K_LONG || d->kind == K_BOOL || d->kind == K_ONOFF)
            *long_at(o, d) = d->def;
        else if (d->kind == K_STR || d->kind == K_LEVEL)
            *str_at(o, d) = d->sdef;
    }
}

/* Stores value v of option d. 0, or -1 with what is wrong in err. */
static int set_value(router_opts *o, const opt *d, const char *v, char *err, size_t errlen)
{
    switch (d->kind) {
    case K_LONG: {
        char *end;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < d->lo || x > d->hi) {
            snprintf(err, errlen, "--%s \"%.64s\": expected an integer %ld..%ld", d->name, v,
                     d->lo, d->hi);
            return -1;
        }
        *long_at(o, d) = x;
        return 0;
    }
    case K_BOOL:
    case K_ONOFF: {
        static const char *const yes[] = { "1", "true", "yes", "on" };
        static const char *const no[] = { "0", "false", "no", "off" };
        for (int i = 0; i < 4; i++) {
            if (!strcasecmp(v, yes[i]) || !strcasecmp(v, no[i])) {
                *long_at(o, d) = !strcasecmp(v, yes[i]);
                return 0;
            }
        }
        if (d->kind == K_ONOFF)
            snprintf(err, errlen, "--%s \"%.64s\": expected on or off", d->name, v);
        else
            snprintf(err, errlen, "%s \"%.64s\": expected 1 or 0 (true/false, yes/no, on/off)",
                     d->name, v);
        return -1;
    }
    case K_LEVEL:
        if (log_parse_level(v) < 0) {
            snprintf(err, errlen, "--%s \"%.64s\": use debug, info, warn, error or off", d->name, v);
            return -1;
        }
        *str_at(o, d) = v;
        log_set_level((log_level)log_parse_level(v));
        return 0;
    case K_ORIGIN:
        if (cors_add((cors *)((char *)o + d->off), v)) {
            snprintf(err, errlen, "--%s \"%.64s\": give an origin such as http://localhost:3000 "
                     "(scheme://host[:port], no path) or *, at most %d", d->name, v,
                     CORS_MAX_ORIGINS);
            return -1;
        }
        return 0;
    case K_STR:
        if (!*v) {
            snprintf(err, errlen, "--%s needs a value", d->name);
            return -1;
        }
        *str_at(o, d) = v;
        return 0;
    default:
        return 0;
    }
}

void router_args_usage(FILE *f)
{
    fprintf(f, "usage: ddm-router --cluster FILE [options]\n"
               "\n"
               "Serves a Decentralized Diffusion Model over HTTP: routes every sampling step\n"
               "to the experts the router network selects, on ddm-expert workers over nanomsg.\n"
               "\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *d = &OPTS[i];
        char left[64];
        int n = d->shortc ? snprintf(left, sizeof left, "  -%c, --%s", d->shortc, d->name)
                          : snprintf(left, sizeof left, "      --%s", d->name);
        if (d->metavar)
            snprintf(left + n, sizeof left - (size_t)n, " %s", d->metavar);
        char help[600], def[64] = "";
        if (d->kind == K_LONG)
            snprintf(def, sizeof def, " (default %ld)", d->def);
        else if (d->kind == K_ONOFF)
            snprintf(def, sizeof def, " (default %s)", d->def ? "on" : "off");
        else if (d->kind == K_LEVEL && d->sdef)
            snprintf(def, sizeof def, " (default %s)", d->sdef);
        const char *last = strrchr(d->help, '\n');
        size_t tail = strlen(last ? last + 1 : d->help);
        snprintf(help, sizeof help, "%s%s%s", d->help, 32 + tail + strlen(def) > 100 ? "\n" : "",
                 def[0] && 32 + tail + strlen(def) > 100 ? def + 1 : def);
        const char *line = help;
        int first = 1;
        while (*line) {
            size_t len = strcspn(line, "\n");
            if (first && strlen(left) < 32)
                fprintf(f, "%-32s%.*s\n", left, (int)len, line);
            else if (first)
                fprintf(f, "%s\n%32s%.*s\n", left, "", (int)len, line);
            else
                fprintf(f, "%32s%.*s\n", "", (int)len, line);
            first = 0;
            line += len + (line[len] == '\n');
        }
    }
    fprintf(f, "      --blas-core NAME --half-rows N  BLAS kernels and the rows up to which fp16\n"
               "                                weights multiply directly (default: measured on\n"
               "                                this CPU and cached; --blas-table prints the table)\n");
    fprintf(f, "\n"
               "Every option but cluster, listen, router-weights, help and version may also come\n"
               "from the cluster file as \"set <name> <value>\" (e.g. \"set max-images 512\",\n"
               "\"set public-metrics 1\"); flags win over the file.\n"
               "SIGHUP: re-read the token file (a bad file keeps the old tokens).\n"
               "SIGTERM/SIGINT: stop admitting, finish what is in flight (up to\n"
               "--drain-timeout-ms, then 503 with Connection: close), exit 0. A second signal\n"
               "stops at once (503s).\n"
               "Exit status: 0 success, 1 runtime error (e.g. bad cluster file), 2 usage error.\n");
}

router_args_result router_args_parse(int argc, char **argv, router_opts *o, FILE *out, char *err,
                                     size_t errlen)
{
    _Static_assert(N_OPTS <= 64, "router_opts.given holds one bit per option");
    defaults(o);
    struct option lo[N_OPTS + 1];
    char shorts[2 * N_OPTS + 2] = ":";
    size_t ns = 1;
    for (size_t i = 0; i < N_OPTS; i++) {
        const opt *d = &OPTS[i];
        int has_arg = d->kind == K_STR || d->kind == K_LONG || d->kind == K_LEVEL ||
                      d->kind == K_ORIGIN || d->kind == K_ONOFF;
        lo[i] = (struct option){ d->name, has_arg ? required_argument : no_argument, NULL,
                                 1000 + (int)i };
        if (d->shortc) {
            shorts[ns++] = d->shortc;
            if (has_arg)
                shorts[ns++] = ':';
        }
    }
    lo[N_OPTS] = (struct option){ 0, 0, 0, 0 };
    shorts[ns] = '\0';
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        size_t i = 0;
        if (c >= 1000 && c < 1000 + (int)N_OPTS) {
            i = (size_t)(c - 1000);
        } else if (c == ':') {
            snprintf(err, errlen, "%s needs a value (see --help)", argv[optind - 1]);
            return ROUTER_ARGS_USAGE;
        } else {
            while (i < N_OPTS && OPTS[i].shortc != c)
                i++;
            if (c == '?' || i == N_OPTS) {
                snprintf(err, errlen, "unknown option \"%s\" (see --help)", argv[optind - 1]);
                return ROUTER_ARGS_USAGE;
            }
        }
        const opt *d = &OPTS[i];
        if (d->kind == K_HELP) {
            router_args_usage(out);
            return ROUTER_ARGS_EXIT;
        }
        if (d->kind == K_VERSION) {
            fprintf(out, "ddm-router %s\n", DDM_VERSION);
            return ROUTER_ARGS_EXIT;
        }
        if (set_value(o, d, d->kind == K_BOOL ? "1" : optarg, err, errlen))
            return ROUTER_ARGS_USAGE;
        o->given |= 1ull << i;
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", argv[optind]);
        return ROUTER_ARGS_USAGE;
    }
    if (!o->cluster) {
        snprintf(err, errlen, "--cluster FILE is required (e.g. deploy/local/digits.conf)");
        return ROUTER_ARGS_USAGE;
    }
    return ROUTER_ARGS_RUN;
}

int router_args_settings(router_opts *o, const cluster *cl, int *n_unknown, char *err,
                         size_t errlen)
{
    if (n_unknown)
        *n_unknown = 0;
    for (int s = 0; s < cl->n_settings; s++) {
        const char *key = cl->set_keys[s];
        size_t i = 0;
        while (i < N_OPTS && (strcmp(OPTS[i].name, key) || !OPTS[i].settable))
            i++;
        if (i == N_OPTS) {
            log_warn("%s: setting \"%s\" is no option of ddm-router (see --help): ignored",
                     o->cluster, key);
            if (n_unknown)
                (*n_unknown)++;
            continue;
        }
        if (o->given & 1ull << i)
            continue; /* the flag wins */
        char why[200];
        if (set_value(o, &OPTS[i], cl->set_values[s], why, sizeof why)) {
            snprintf(err, errlen, "in %s: setting %s: %s", o->cluster, key, why);
            return -1;
        }
    }
    return 0;
}
