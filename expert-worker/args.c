/* args.c -- ddm-expert's command line. */
#include "expert-worker/args.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/version.h"

void expert_args_usage(FILE *f)
{
    fprintf(f,
        "usage: ddm-expert --weights FILE --listen URL [--listen URL ...] [options]\n"
        "\n"
        "Serves one expert (a denoiser weights file) to ddm-router over nanomsg: answers\n"
        "DenoiseRequests and InfoRequests (proto/ddm/v1/worker.proto) from any number of\n"
        "routers, batching concurrent requests into one forward pass.\n"
        "\n"
        "  -w, --weights FILE       expert weights (safetensors, e.g. models/digits/expert-3.safetensors)\n"
        "  -l, --listen URL         nanomsg URL to bind, repeatable: tcp://127.0.0.1:7103,\n"
        "                           tcp://*:7103, ipc:///tmp/expert-3.ipc\n"
        "      --max-batch N        latents per request and per forward pass (default 256)\n"
        "      --max-delay-us N     how long a request may wait for others to share its\n"
        "                           forward pass (default 500; 0 = never wait)\n"
        "      --max-queue N        latents waiting before new requests are refused with a\n"
        "                           busy error (default 16 x max-batch)\n"
        "      --threads N          OpenBLAS threads (default 1: many workers share a machine)\n"
        "      --inline-rows N      a forward pass of at most N latents with nothing queued\n"
        "                           behind it runs on the event-loop thread, others on a pool\n"
        "                           thread (default 20; 0 = all on the pool)\n"
        "      --blas-core NAME     OpenBLAS kernels (default: the fastest measured on this CPU)\n"
        "      --half-rows N        fp16 weight copies up to N rows (default: measured here)\n"
        "      --metrics HOST:PORT  serve Prometheus text on GET /metrics (default off)\n"
        "      --linger-ms N        on SIGTERM/SIGINT, after the last reply, time given to\n"
        "                           nanomsg to send it before exiting (default 200)\n"
        "      --cluster-key-file FILE  HMAC key shared with the routers (their\n"
        "                           --cluster-key-file): requests without a valid MAC get an\n"
        "                           error and no work, replies carry a MAC (default: none)\n"
        "      --log-level LEVEL    debug, info, warn, error or off (default info)\n"
        "  -h, --help               this text\n"
        "  -V, --version            version\n"
        "\n"
        "SIGTERM or SIGINT: stop taking work, answer what is queued, exit 0.\n"
        "Exit status: 0 success, 1 runtime error (e.g. bad weights file), 2 usage error.\n");
}

/* Parses a whole decimal integer in lo..hi. Returns 0 or -1 with err set. */
static int parse_num(const char *flag, const char *s, long lo, long hi, long *out, char *err,
                     size_t errlen)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        snprintf(err, errlen, "--%s \"%s\": expected an integer %ld..%ld", flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

expert_args_result expert_args_parse(int argc, char **argv, expert_config *cfg, FILE *out,
                                     char *err, size_t errlen)
{
    enum { OPT_MAX_BATCH = 1000, OPT_MAX_DELAY, OPT_MAX_QUEUE, OPT_THREADS, OPT_METRICS,
           OPT_LINGER, OPT_LOG, OPT_INLINE, OPT_KEY };
    static const struct option longopts[] = {
        { "weights", required_argument, 0, 'w' },
        { "listen", required_argument, 0, 'l' },
        { "max-batch", required_argument, 0, OPT_MAX_BATCH },
        { "max-delay-us", required_argument, 0, OPT_MAX_DELAY },
        { "max-queue", required_argument, 0, OPT_MAX_QUEUE },
        { "threads", required_argument, 0, OPT_THREADS },
        { "inline-rows", required_argument, 0, OPT_INLINE },
        { "metrics", required_argument, 0, OPT_METRICS },
        { "linger-ms", required_argument, 0, OPT_LINGER },
        { "log-level", required_argument, 0, OPT_LOG },
        { "cluster-key-file", required_argument, 0, OPT_KEY },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    expert_config_default(cfg);
    cfg->handle_signals = 1;
    optind = 1;
    opterr = 0;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, ":w:l:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 'w': cfg->weights = optarg; break;
        case 'l':
            if (cfg->n_listen == EXPERT_MAX_LISTEN) {
                snprintf(err, errlen, "--listen: at most %d URLs", EXPERT_MAX_LISTEN);
                return EXPERT_ARGS_USAGE;
            }
            cfg->listen[cfg->n_listen++] = optarg;
            break;
        case OPT_MAX_BATCH:
            if (parse_num("max-batch", optarg, 1, 65536, &v, err, errlen))
                return EXPERT_ARGS_USAGE;
            cfg->max_batch = (int)v;
            break;
        case OPT_MAX_DELAY:
            if (parse_num("max-delay-us", optarg, 0, 10000000, &v, err, errlen))
                return EXPERT_ARGS_USAGE;
            cfg->max_delay_us = (int)v;
            break;
        case OPT_MAX_QUEUE:
            if (parse_num("max-queue", optarg, 1, 1L << 30, &v, err, errlen))
                return EXPERT_ARGS_USAGE;
            cfg->max_queue = v;
            break;
        case OPT_THREADS:
            if (parse_num("threads", optarg, 1, 1024, &v, err, errlen))
                return EXPERT_ARGS_USAGE;
            cfg->threads = (int)v;
            break;
        case OPT_INLINE:
            if (parse_num("inline-rows", optarg, 0, 65536, &v, err, errlen))
                return EXPERT_ARGS_USAGE;
            cfg->inline_rows = (int)v;
            break;
        case OPT_METRICS: cfg->metrics = optarg; break;
        case OPT_KEY: cfg->cluster_key_file = optarg; break;
        case OPT_LINGER:
            if (parse_num("linger-ms", optarg, 0, 60000, &v, err, errlen))
                return EXPERT_ARGS_USAGE;
            cfg->linger_ms = (int)v;
            break;
        case OPT_LOG: {
            int lv = log_parse_level(optarg);
            if (lv < 0) {
                snprintf(err, errlen, "--log-level \"%s\": use debug, info, warn, error or off",
                         optarg);
                return EXPERT_ARGS_USAGE;
            }
            log_set_level((log_level)lv);
            break;
        }
        case 'h': expert_args_usage(out); return EXPERT_ARGS_EXIT;
        case 'V': fprintf(out, "ddm-expert %s\n", DDM_VERSION); return EXPERT_ARGS_EXIT;
        case ':':
            snprintf(err, errlen, "%s needs a value (see --help)", argv[optind - 1]);
            return EXPERT_ARGS_USAGE;
        default:
            snprintf(err, errlen, "unknown option \"%s\" (see --help)", argv[optind - 1]);
            return EXPERT_ARGS_USAGE;
        }
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument \"%s\" (see --help)", argv[optind]);
        return EXPERT_ARGS_USAGE;
    }
    if (!cfg->weights) {
        snprintf(err, errlen, "--weights FILE is required (e.g. models/digits/expert-3.safetensors)");
        return EXPERT_ARGS_USAGE;
    }
    if (cfg->n_listen == 0) {
        snprintf(err, errlen, "--listen URL is required (e.g. tcp://127.0.0.1:7103)");
        return EXPERT_ARGS_USAGE;
    }
    return EXPERT_ARGS_RUN;
}
