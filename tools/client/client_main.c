/* client_main.c -- ddm-client: command-line client of ddm-router.
 *
 *   ddm-client sample   POST /v1/samples, write a PNG grid / files, print the stats
 *   ddm-client experts  GET /v1/experts as a table
 *   ddm-client bench    closed-loop load on POST /v1/samples, latency percentiles
 *   ddm-client ready    GET /readyz, optionally waiting until it says 200
 *   ddm-client conform  check a worker against worker protocol v1 (tools/client/conform.h)
 *   ddm-client jobs     submit, status, cancel and watch asynchronous jobs (/v1/jobs)
 * Exit 0 on success, 1 on a runtime failure (an HTTP error included), 2 on a
 * usage error. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "common/version.h"
#include "server/httpc.h"
#include "tools/client/cli.h"
#include "tools/client/conform.h"
#include "tools/client/jobwatch.h"
#include "tools/client/loadgen.h"
#include "tools/client/samples.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define CT_JSON "application/json"
#define CT_PROTO "application/x-protobuf"

static void usage_main(FILE *f)
{
    fprintf(f,
"usage: ddm-client COMMAND [options]\n"
"\n"
"Command-line client of ddm-router (the Decentralized Diffusion Model server).\n"
"\n"
"commands:\n"
"  sample     generate images: POST /v1/samples, write a PNG grid, print seed, calls, timings\n"
"  experts    list the experts, their replicas and statistics (GET /v1/experts)\n"
"  bench      closed-loop load test of POST /v1/samples: images/s, latency percentiles\n"
"  ready      check GET /readyz (optionally wait for it); exit 0 when ready\n"
"  conform    check a worker (ddm-expert or your own) against worker protocol v1\n"
"  jobs       asynchronous jobs: submit, status, cancel, watch (with a progress bar)\n"
"\n"
"  -h, --help       this text (COMMAND --help: that command's options)\n"
"  -V, --version    print the version\n"
"\n"
"sample, experts, bench and ready take --url URL (default $DDM_URL, else " DEFAULT_URL ").\n"
"Exit status: 0 success, 1 runtime failure (HTTP errors included), 2 usage error.\n"
"Example: ddm-client sample -n 16 --strategy top-2 --seed 7 -o grid.png\n");
}

static void usage_sample(FILE *f)
{
    fprintf(f,
"usage: ddm-client sample [options]\n"
"\n"
"Asks ddm-router for images (POST /v1/samples) and writes them as one PNG grid\n"
"(-o) and/or one PNG per image (--out-dir). Fields not given are left to the\n"
"server's defaults; the server checks the ranges.\n"
"\n"
"  -u, --url URL           server (default $DDM_URL, else " DEFAULT_URL ")\n"
"  -n, --n N               images, 1..256 (server default 1)\n"
"  -s, --steps N           ODE steps, 1..1000 (server default 50)\n"
"  -S, --strategy NAME     top-K, full, threshold, sample, nucleus, uniform, expert:N\n"
"                          (server default top-2)\n"
"      --seed N            noise seed, 0..2^64-1 (server draws one when absent; echoed)\n"
"      --label N|NAME      class to draw, by number or by name (absent: unconditional)\n"
"      --guidance G        classifier-free guidance scale (server default 1)\n"
"      --sampler NAME      euler or heun (server default euler)\n"
"      --threshold X       tau of threshold (top_p of nucleus)\n"
"      --temperature X     temperature of sample\n"
"      --trace             ask for and print the experts and weights chosen at each step\n"
"      --proto             talk protobuf (ddm.v1.SampleRequest/Response) instead of JSON\n"
"  -o, --output FILE       write all images as one PNG grid\n"
"      --cols N            grid columns (default ceil(sqrt(n)), as the server's grid)\n"
"      --out-dir DIR       write each image as DIR/sample-NNN.png (DIR is created)\n"
"      --server-grid       let the server render the grid (Accept: image/png); needs -o,\n"
"                          prints no stats\n"
"      --json              print the response as JSON (without the images) on stdout\n"
"      --progress          stream the call (Server-Sent Events) and draw a progress bar\n"
"                          on stderr from its step events (JSON only)\n"
"  -t, --timeout DUR       deadline of the request (default 300s; units ms, s, m, h)\n"
"  -q, --quiet             print nothing but errors\n"
"  -h, --help              this text\n");
}

static void usage_experts(FILE *f)
{
    fprintf(f,
"usage: ddm-client experts [options]\n"
"\n"
"Lists the served experts (GET /v1/experts): live replicas, each replica's state,\n"
"batched calls, rows, mean latency and mean batch size.\n"
"\n"
"  -u, --url URL      server (default $DDM_URL, else " DEFAULT_URL ")\n"
"      --json         print the server's JSON as is\n"
"  -t, --timeout DUR  deadline of the request (default 10s)\n"
"  -h, --help         this text\n");
}

static void usage_bench(FILE *f)
{
    fprintf(f,
"usage: ddm-client bench [options]\n"
"\n"
"Closed-loop load on POST /v1/samples: C connections (one thread each) send the\n"
"same request back to back for the duration. Prints requests/s, images/s, latency\n"
"p50/p90/p99/max and the failures by HTTP status or transport error. Exits 1 if\n"
"any request failed.\n"
"\n"
"  -u, --url URL          server (default $DDM_URL, else " DEFAULT_URL ")\n"
"  -c, --connections N    concurrent connections, 1..%d (default 8)\n"
"  -d, --duration DUR     how long to send (default 10s; units ms, s, m, h; max 24h)\n"
"      --requests N       stop after N requests in total (default: no limit)\n"
"  -n, --n N              images per request (default 1)\n"
"  -s, --steps N          steps per image (server default 50)\n"
"  -S, --strategy NAME    routing strategy (server default top-2)\n"
"      --seed N           fixed seed for every request (default: the server draws)\n"
"      --label N|NAME     class to draw, by number or by name\n"
"      --guidance G       classifier-free guidance scale\n"
"      --sampler NAME     euler or heun\n"
"      --proto            send protobuf instead of JSON\n"
"      --png              ask for image/png grids (Accept: image/png)\n"
"  -t, --timeout DUR      deadline of one request (default 120s)\n"
"      --json             print the summary as one JSON object on stdout\n"
"  -q, --quiet            no progress lines on stderr\n"
"  -h, --help             this text\n",
            LOADGEN_MAX_CONNECTIONS);
}

static void usage_jobs(FILE *f)
{
    fprintf(f,
"usage: ddm-client jobs submit [request options] [--priority N] [--preview-every N] [--wait]\n"
"       ddm-client jobs status ID [-o FILE]\n"
"       ddm-client jobs cancel ID\n"
"       ddm-client jobs watch ID [--events] [-o FILE]\n"
"\n"
"Asynchronous jobs (POST /v1/jobs): submit prints the job's id; status shows where\n"
"it is (and writes the result's PNG grid with -o once it succeeded); cancel stops it\n"
"at the next step; watch draws a progress bar from its event stream until it ends\n"
"(exit 0 only if it succeeded), resuming if the stream drops.\n"
"\n"
"  -u, --url URL           server (default $DDM_URL, else " DEFAULT_URL ")\n"
"  request options         as for sample: -n, -s/--steps, -S/--strategy, --seed, --label,\n"
"                          --guidance, --sampler, --threshold, --temperature, --trace\n"
"      --priority N        higher runs first, -100..100 (default 0)\n"
"      --preview-every N   a preview event every N steps (watch --events shows them)\n"
"      --wait              submit, then watch\n"
"      --events            watch: print every event (\"NAME DATA\") on stdout\n"
"  -o, --output FILE       the result as one PNG grid (status, watch, submit --wait)\n"
"      --json              print the server's JSON\n"
"  -t, --timeout DUR       connect and request deadline (default 30s)\n"
"  -q, --quiet             no progress bar or summary\n"
"  -h, --help              this text\n");
}

static void usage_ready(FILE *f)
{
    fprintf(f,
"usage: ddm-client ready [options]\n"
"\n"
"Asks GET /readyz. Exit 0 when the router says ready (every expert has a live\n"
"replica), 1 otherwise, with the server's reason (which experts are missing).\n"
"\n"
"  -u, --url URL      server (default $DDM_URL, else " DEFAULT_URL ")\n"
"  -w, --wait DUR     keep asking every 200 ms for up to DUR (default: ask once)\n"
"  -q, --quiet        print nothing on success\n"
"  -h, --help         this text\n");
}

static void usage_conform(FILE *f)
{
    fprintf(f,
"usage: ddm-client conform URL [options]\n"
"\n"
"Checks the worker at URL (tcp://host:port or ipc:///path, what you would give it\n"
"as --listen) against worker protocol v1 (docs/protocol.md), talking to it the\n"
"way ddm-router does (a raw nanomsg REQ socket). Checks: the handshake's fields;\n"
"an error reply, never a crash or a hang, to garbage, empty and truncated\n"
"messages, x/dim/batch that disagree, a batch over max_batch, NaN and Inf in x,\n"
"t outside [0, 1] or NaN, bad ts and labels (after each, a good request must\n"
"still be answered); answers of batch x dim x 4 bytes, all finite, id echoed;\n"
"packed repeated fields; unknown fields; batch invariance (a row alone and in a\n"
"batch of 64 agree within 1e-4: |a - b| <= 1e-4 (1 + |b|)); determinism (same\n"
"bytes twice); %d clients at once; with --weights, agreement with the file's\n"
"reference forward within 1e-4. Each check prints PASS, FAIL or SKIP (not\n"
"applicable, e.g. no --weights; or not run after the worker stopped answering)\n"
"with what was sent and what came back.\n"
"\n"
"      --weights FILE          the expert weights the worker serves (a ddm safetensors\n"
"                              denoiser): compare its answers with their reference forward\n"
"      --timeout-ms N          deadline of each reply, 1..600000 (default %d, the\n"
"                              router's --expert-timeout-ms)\n"
"      --cluster-key-file FILE the cluster key the worker runs with: every request\n"
"                              carries a MAC, every reply's MAC is checked, and two more\n"
"                              checks send a request without a MAC and one with a wrong\n"
"                              MAC (each must get an error, the worker still serving)\n"
"  -h, --help                  this text\n"
"\n"
"Exit status: 0 every check passed, 1 a check failed, 2 usage error (bad flags,\n"
"bad URL, unreadable --weights or --cluster-key-file).\n"
"Example: ddm-client conform tcp://127.0.0.1:7103 --weights models/digits/expert-3.safetensors\n",
            CONFORM_CLIENTS, CONFORM_TIMEOUT_MS);
}

/* After getopt's own one-line complaint: where to look. */
static int usage_hint(const char *cmd)
{
    fprintf(stderr, "ddm-client: see ddm-client %s --help\n", cmd);
    return 2;
}

/* ---- shared option handling ----------------------------------------------------------- */

enum {
    O_SEED = 1000, O_LABEL, O_GUIDANCE, O_SAMPLER, O_THRESHOLD, O_TEMPERATURE, O_TRACE,
    O_PROTO, O_COLS, O_OUTDIR, O_SERVERGRID, O_JSON, O_REQUESTS, O_PNG, O_WEIGHTS,
    O_TIMEOUT_MS, O_CLUSTER_KEY, O_PROGRESS, O_PRIORITY, O_PREVIEW, O_WAIT, O_EVENTS
};

/* getopt entries of the request fields parse_req_opt handles (sample, bench, jobs) */
#define REQ_LONGOPTS                                                                     \
    { "n", required_argument, 0, 'n' }, { "steps", required_argument, 0, 's' },           \
    { "strategy", required_argument, 0, 'S' }, { "seed", required_argument, 0, O_SEED },  \
    { "label", required_argument, 0, O_LABEL },                                           \
    { "guidance", required_argument, 0, O_GUIDANCE },                                     \
    { "sampler", required_argument, 0, O_SAMPLER },                                       \
    { "threshold", required_argument, 0, O_THRESHOLD },                                   \
    { "temperature", required_argument, 0, O_TEMPERATURE }

typedef struct common_opts {
    const char *url;
    char hostport[300];
    long timeout_ms;
    int quiet, json;
} common_opts;

static int bad_value(const char *flag, const char *v, const char *want)
{
    fprintf(stderr, "ddm-client: %s \"%s\": expected %s\n", flag, v, want);
    return 2;
}

static int opt_long(const char *flag, const char *v, long lo, long hi, long *out)
{
    if (cli_parse_long(v, lo, hi, out)) {
        char want[96];
        snprintf(want, sizeof want, "an integer %ld..%ld", lo, hi);
        return bad_value(flag, v, want);
    }
    return 0;
}

static int opt_double(const char *flag, const char *v, double *out)
{
    return cli_parse_double(v, out) ? bad_value(flag, v, "a number") : 0;
}

static int opt_duration(const char *flag, const char *v, long *out)
{
    return cli_duration_ms(v, out) ? bad_value(flag, v, "a duration such as 30s, 500ms, 2m")
                                   : 0;
}

static int resolve_url(common_opts *c)
{
    if (!c->url)
        c->url = getenv("DDM_URL") && *getenv("DDM_URL") ? getenv("DDM_URL") : DEFAULT_URL;
    char err[512];
    if (cli_url_hostport(c->url, c->hostport, sizeof c->hostport, err, sizeof err)) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 2;
    }
    return 0;
}

static int extra_args(int argc, char **argv)
{
    if (optind < argc) {
        fprintf(stderr, "ddm-client: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    return 0;
}

/* Opens a connection and sends one request; on success *resp holds the
 * answer (any status). Prints the transport error and returns 1 on failure. */
static int do_request(const common_opts *c, const char *method, const char *path,
                      const httpc_header *h, size_t nh, const void *body, size_t len,
                      httpc_response *resp)
{
    char err[512];
    httpc *hc;
    memset(resp, 0, sizeof *resp);
    if (httpc_open(c->hostport, (int)c->timeout_ms, &hc, err, sizeof err)) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    int rc = httpc_request(hc, method, path, h, nh, body, len, resp);
    httpc_close(hc);
    if (rc) {
        if (rc == DDM_ETIMEDOUT)
            fprintf(stderr, "ddm-client: %s %s%s: no answer within %ld ms (raise --timeout)\n",
                    method, c->url, path, c->timeout_ms);
        else
            fprintf(stderr, "ddm-client: %s %s%s: %s (is ddm-router running there?)\n", method,
                    c->url, path, ddm_strerror(rc));
        httpc_response_free(resp);
        return 1;
    }
    return 0;
}

/* Prints "ddm-client: HTTP 400: message" for a non-200 response; returns 1 then. */
static int http_failed(const httpc_response *resp)
{
    if (resp->status == 200)
        return 0;
    cli_report_http_error(resp);
    return 1;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Parses the options every command that calls the router shares (--url,
 * --timeout, --quiet, --json). Returns 0 if c was one of them (and handled),
 * -1 if it is not one of them, 2 on a bad value. */
static int parse_common_opt(int c, const char *arg, common_opts *co)
{
    switch (c) {
    case 'u': co->url = arg; return 0;
    case 't': return opt_duration("--timeout", arg, &co->timeout_ms) ? 2 : 0;
    case 'q': co->quiet = 1; return 0;
    case O_JSON: co->json = 1; return 0;
    default: return -1;
    }
}

/* Parses the request fields sample and bench share. Returns 0 if c was one of
 * them (and handled), -1 if it is not one of them, 2 on a bad value. */
static int parse_req_opt(int c, const char *arg, samples_req *r)
{
    long v;
    switch (c) {
    case 'n':
        if (opt_long("--n", arg, 1, 1000000, &r->n))
            return 2;
        return 0;
    case 's':
        if (opt_long("--steps", arg, 1, 1000000, &r->steps))
            return 2;
        return 0;
    case 'S': r->strategy = arg; return 0;
    case O_SAMPLER: r->sampler = arg; return 0;
    case O_SEED:
        if (cli_parse_u64(arg, &r->seed))
            return bad_value("--seed", arg, "an integer 0..18446744073709551615");
        r->has_seed = 1;
        return 0;
    case O_LABEL: /* a class number, or a class name the server resolves */
        if (arg[0] && strspn(arg, "0123456789") != strlen(arg)) {
            r->label_name = arg;
            return 0;
        }
        if (opt_long("--label", arg, 0, 1000000, &v))
            return 2;
        r->has_label = 1, r->label = v;
        return 0;
    case O_GUIDANCE:
        r->has_guidance = 1;
        return opt_double("--guidance", arg, &r->guidance);
    case O_THRESHOLD:
        r->has_threshold = 1;
        return opt_double("--threshold", arg, &r->threshold);
    case O_TEMPERATURE:
        r->has_temperature = 1;
        return opt_double("--temperature", arg, &r->temperature);
    default:
        return -1;
    }
}

/* ---- sample -------------------------------------------------------------------------- */

static void print_trace(const samples_resp *r)
{
    for (int i = 0; i < r->n_trace; i++) {
        const samples_trace *t = &r->trace[i];
        printf("trace image %d step %d%s t=%.4f:", t->image, t->step,
               t->stage ? " (corrector)" : "", t->t);
        for (int j = 0; j < t->n_sel; j++)
            printf(" %d (%.3f)", t->experts[j], t->weights[j]);
        printf("\n");
    }
}

static void print_stats(FILE *f, const samples_resp *r, double rtt_ms)
{
    fprintf(f, "seed %llu, strategy %s, sampler %s, %d steps, %d images %dx%d%s\n",
            (unsigned long long)r->seed, r->strategy, r->sampler, r->steps, r->n_images,
            r->width, r->height, r->channels == 3 ? " RGB" : "");
    fprintf(f, "expert calls %llu; by expert:", (unsigned long long)r->expert_calls);
    for (int k = 0; k < r->K; k++)
        fprintf(f, " %d:%llu", k, (unsigned long long)r->calls_by_expert[k]);
    fprintf(f, "\n");
    fprintf(f, "timings ms: total %.1f (queue %.1f, router %.1f, experts %.1f), "
               "round trip %.1f\n", r->total_ms, r->queue_ms, r->router_ms, r->expert_ms,
            rtt_ms);
}

/* Writes the images and prints what `sample` prints, from a decoded response. */
static int sample_outputs(const common_opts *co, const samples_req *rq, samples_resp *sr,
                          const char *out, const char *out_dir, int cols, double rtt)
{
    char err[512];
    int rc = 0;
    /* with --json, stdout carries only the JSON; the rest goes to stderr */
    FILE *info = co->json ? stderr : stdout;
    if (out && (rc = samples_write_grid(sr, out, cols, err, sizeof err)) == 0 && !co->quiet)
        fprintf(info, "wrote %s: %d images in a %d-column grid\n", out, sr->n_images,
                cols ? cols : samples_grid_cols(sr->n_images));
    if (!rc && out_dir && (rc = samples_write_dir(sr, out_dir, "sample-", err, sizeof err)) == 0 &&
        !co->quiet)
        fprintf(info, "wrote %s/sample-000.png .. sample-%03d.png\n", out_dir, sr->n_images - 1);
    if (rc) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    if (co->json)
        printf("%s\n", sr->meta_json);
    else if (!co->quiet && rq->trace)
        print_trace(sr);
    if (!co->quiet)
        print_stats(info, sr, rtt);
    return 0;
}

/* sample --progress: the same call as an event stream, a progress bar from its steps. */
static int sample_streamed(const common_opts *co, const samples_req *rq, uint8_t *body,
                           size_t blen, const char *out, const char *out_dir, int cols)
{
    jw_opts jo = { .url = co->url, .hostport = co->hostport, .timeout_ms = (int)co->timeout_ms,
                   .quiet = co->quiet };
    char *json;
    size_t jlen;
    double t0 = mono_ms();
    int rc = jw_stream_sample(&jo, body, blen, &json, &jlen);
    double rtt = mono_ms() - t0;
    free(body);
    if (rc)
        return 1;
    samples_resp sr;
    char err[512];
    rc = samples_decode(CT_JSON, (const uint8_t *)json, jlen, &sr, err, sizeof err);
    free(json);
    if (rc) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    rc = sample_outputs(co, rq, &sr, out, out_dir, cols, rtt);
    samples_resp_free(&sr);
    return rc;
}

static int cmd_sample(int argc, char **argv)
{
    static const struct option lo[] = {
        { "url", required_argument, 0, 'u' },       REQ_LONGOPTS,
        { "trace", no_argument, 0, O_TRACE },       { "proto", no_argument, 0, O_PROTO },
        { "output", required_argument, 0, 'o' },    { "cols", required_argument, 0, O_COLS },
        { "out-dir", required_argument, 0, O_OUTDIR },
        { "server-grid", no_argument, 0, O_SERVERGRID },
        { "json", no_argument, 0, O_JSON },         { "timeout", required_argument, 0, 't' },
        { "quiet", no_argument, 0, 'q' },           { "help", no_argument, 0, 'h' },
        { "progress", no_argument, 0, O_PROGRESS },
        { 0, 0, 0, 0 },
    };
    common_opts co = { .timeout_ms = 300000 };
    samples_req rq = { 0 };
    int proto = 0, server_grid = 0, progress = 0;
    long cols = 0;
    const char *out = NULL, *out_dir = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "u:n:s:S:o:t:qh", lo, NULL)) != -1) {
        int st = parse_req_opt(c, optarg, &rq);
        if (st < 0)
            st = parse_common_opt(c, optarg, &co);
        if (st == 2)
            return 2;
        if (st == 0)
            continue;
        switch (c) {
        case 'o': out = optarg; break;
        case O_TRACE: rq.trace = 1; break;
        case O_PROTO: proto = 1; break;
        case O_COLS: if (opt_long("--cols", optarg, 1, 1024, &cols)) return 2; break;
        case O_OUTDIR: out_dir = optarg; break;
        case O_SERVERGRID: server_grid = 1; break;
        case O_PROGRESS: progress = 1; break;
        case 'h': usage_sample(stdout); return 0;
        default: return usage_hint("sample");
        }
    }
    if (extra_args(argc, argv) || resolve_url(&co))
        return 2;
    if (co.timeout_ms > 0x7fffffff)
        co.timeout_ms = 0x7fffffff;
    if (server_grid && (!out || out_dir || co.json || rq.trace || cols)) {
        fprintf(stderr, "ddm-client: --server-grid writes only the server's PNG grid: give -o FILE "
                        "and none of --out-dir, --json, --trace, --cols\n");
        return 2;
    }
    if (progress && (proto || server_grid)) {
        fprintf(stderr, "ddm-client: --progress streams JSON events: drop --proto and --server-grid\n");
        return 2;
    }

    uint8_t *body;
    size_t blen;
    if (samples_encode(&rq, proto, &body, &blen)) {
        fprintf(stderr, "ddm-client: out of memory\n");
        return 1;
    }
    if (progress)
        return sample_streamed(&co, &rq, body, blen, out, out_dir, (int)cols);
    const char *ctype = proto ? CT_PROTO : CT_JSON;
    httpc_header h[2] = { { "Content-Type", ctype },
                          { "Accept", server_grid ? "image/png" : ctype } };
    httpc_response resp;
    double t0 = mono_ms();
    int rc = do_request(&co, "POST", "/v1/samples", h, 2, body, blen, &resp);
    double rtt = mono_ms() - t0;
    free(body);
    if (rc)
        return 1;
    if (http_failed(&resp)) {
        httpc_response_free(&resp);
        return 1;
    }
    char err[512];
    if (server_grid) {
        rc = fs_write_file(out, resp.body, resp.body_len, err, sizeof err);
        httpc_response_free(&resp);
        if (rc) {
            fprintf(stderr, "ddm-client: %s\n", err);
            return 1;
        }
        if (!co.quiet)
            printf("wrote %s (grid rendered by the server), round trip %.1f ms\n", out, rtt);
        return 0;
    }
    samples_resp sr;
    rc = samples_decode(httpc_response_header(&resp, "Content-Type"), (const uint8_t *)resp.body,
                        resp.body_len, &sr, err, sizeof err);
    httpc_response_free(&resp);
    if (rc) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    rc = sample_outputs(&co, &rq, &sr, out, out_dir, (int)cols, rtt);
    samples_resp_free(&sr);
    return rc;
}

/* ---- experts ------------------------------------------------------------------------- */

static int print_experts(const char *body, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *experts = cJSON_GetObjectItemCaseSensitive(root, "experts");
    if (!cJSON_IsArray(experts)) {
        fprintf(stderr, "ddm-client: GET /v1/experts: the answer is not the expected JSON "
                        "(is this a ddm-router?)\n");
        cJSON_Delete(root);
        return 1;
    }
    printf("%d experts, dim %d, %d classes, %s\n", (int)cli_jnum(root, "num_experts"),
           (int)cli_jnum(root, "dim"), (int)cli_jnum(root, "num_classes"),
           cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "ready")) ? "ready"
                                                                        : "NOT ready");
    if (cJSON_GetObjectItemCaseSensitive(root, "channels")) { /* image shape (routers since #15) */
        int ch = (int)cli_jnum(root, "channels");
        printf("images %dx%d %s, dataset %s, classes:", (int)cli_jnum(root, "width"),
               (int)cli_jnum(root, "height"), ch == 3 ? "RGB" : "grey", cli_jstr(root, "dataset"));
        const cJSON *nm, *names = cJSON_GetObjectItemCaseSensitive(root, "class_names");
        int any = 0;
        cJSON_ArrayForEach(nm, names) {
            printf("%s %s", any ? "," : "", cJSON_IsString(nm) ? nm->valuestring : "?");
            any = 1;
        }
        printf("%s\n", any ? "" : " (unnamed)");
    }
    printf("%-3s %-5s %10s %12s %9s %8s %8s %8s  %s\n", "id", "live", "calls", "rows",
           "lat ms", "batch", "retries", "failures", "replicas (state)");
    const cJSON *e;
    cJSON_ArrayForEach(e, experts) {
        const cJSON *reps = cJSON_GetObjectItemCaseSensitive(e, "replicas");
        char live[16];
        snprintf(live, sizeof live, "%d/%d", (int)cli_jnum(e, "live_replicas"),
                 cJSON_GetArraySize(reps));
        printf("%-3d %-5s %10.0f %12.0f %9.3f %8.2f %8.0f %8.0f ", (int)cli_jnum(e, "id"), live,
               cli_jnum(e, "calls"), cli_jnum(e, "rows"), cli_jnum(e, "mean_latency_ms"),
               cli_jnum(e, "mean_batch"), cli_jnum(e, "retries"), cli_jnum(e, "failures"));
        const cJSON *r;
        int first = 1;
        cJSON_ArrayForEach(r, reps) {
            /* the detail of a healthy replica (weights hash, batch) is in --json */
            const char *state = cli_jstr(r, "state"), *detail = cli_jstr(r, "detail");
            int show = *detail && strcmp(state, "up");
            printf("%s %s (%s%s%s)", first ? "" : ",", cli_jstr(r, "url"), state, show ? ": " : "",
                   show ? detail : "");
            first = 0;
        }
        printf("\n");
    }
    cJSON_Delete(root);
    return 0;
}

static int cmd_experts(int argc, char **argv)
{
    static const struct option lo[] = {
        { "url", required_argument, 0, 'u' }, { "json", no_argument, 0, O_JSON },
        { "timeout", required_argument, 0, 't' }, { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    common_opts co = { .timeout_ms = 10000 };
    int c;
    while ((c = getopt_long(argc, argv, "u:t:h", lo, NULL)) != -1) {
        int st = parse_common_opt(c, optarg, &co);
        if (st == 2)
            return 2;
        if (st == 0)
            continue;
        switch (c) {
        case 'h': usage_experts(stdout); return 0;
        default: return usage_hint("experts");
        }
    }
    if (extra_args(argc, argv) || resolve_url(&co))
        return 2;
    if (co.timeout_ms > 0x7fffffff)
        co.timeout_ms = 0x7fffffff;
    httpc_response resp;
    if (do_request(&co, "GET", "/v1/experts", NULL, 0, NULL, 0, &resp))
        return 1;
    int rc = http_failed(&resp);
    if (!rc && co.json)
        fwrite(resp.body, 1, resp.body_len, stdout);
    else if (!rc)
        rc = print_experts(resp.body, resp.body_len);
    httpc_response_free(&resp);
    return rc;
}

/* ---- bench --------------------------------------------------------------------------- */

static void on_progress(void *ud, double elapsed, uint64_t done, uint64_t failed)
{
    (void)ud;
    fprintf(stderr, "bench: %5.1f s  %llu requests  %llu failed\n", elapsed,
            (unsigned long long)done, (unsigned long long)failed);
}

static const char *failure_name(int code, char *buf, size_t len)
{
    if (code > 0)
        snprintf(buf, len, "HTTP %d", code);
    else if (code == 0)
        snprintf(buf, len, "other");
    else
        snprintf(buf, len, "transport: %s", ddm_strerror(code));
    return buf;
}

static void print_bench_json(const loadgen_config *lc, const loadgen_result *r, long n)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return;
    cJSON_AddNumberToObject(o, "connections", lc->connections);
    cJSON_AddNumberToObject(o, "duration_s", r->elapsed_s);
    cJSON_AddNumberToObject(o, "requests", (double)r->requests);
    cJSON_AddNumberToObject(o, "ok", (double)r->ok);
    cJSON_AddNumberToObject(o, "failed", (double)r->failed);
    cJSON_AddNumberToObject(o, "requests_per_s", r->elapsed_s > 0 ? (double)r->ok / r->elapsed_s : 0);
    cJSON_AddNumberToObject(o, "images_per_s",
                            r->elapsed_s > 0 ? (double)r->ok * (double)n / r->elapsed_s : 0);
    cJSON *lat = cJSON_AddObjectToObject(o, "latency_ms");
    if (lat) {
        cJSON_AddNumberToObject(lat, "mean", r->mean_ms);
        cJSON_AddNumberToObject(lat, "p50", r->p50_ms);
        cJSON_AddNumberToObject(lat, "p90", r->p90_ms);
        cJSON_AddNumberToObject(lat, "p99", r->p99_ms);
        cJSON_AddNumberToObject(lat, "max", r->max_ms);
    }
    cJSON *errs = cJSON_AddObjectToObject(o, "errors");
    for (int i = 0; errs && i < r->n_failures; i++) {
        char name[128];
        cJSON_AddNumberToObject(errs, failure_name(r->failures[i].code, name, sizeof name),
                                (double)r->failures[i].count);
    }
    char *s = cJSON_PrintUnformatted(o);
    if (s)
        printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

static int cmd_bench(int argc, char **argv)
{
    static const struct option lo[] = {
        { "url", required_argument, 0, 'u' },          { "connections", required_argument, 0, 'c' },
        { "duration", required_argument, 0, 'd' },     { "requests", required_argument, 0, O_REQUESTS },
        { "n", required_argument, 0, 'n' },            { "steps", required_argument, 0, 's' },
        { "strategy", required_argument, 0, 'S' },     { "seed", required_argument, 0, O_SEED },
        { "label", required_argument, 0, O_LABEL },    { "guidance", required_argument, 0, O_GUIDANCE },
        { "sampler", required_argument, 0, O_SAMPLER },
        { "threshold", required_argument, 0, O_THRESHOLD },
        { "temperature", required_argument, 0, O_TEMPERATURE },
        { "proto", no_argument, 0, O_PROTO },          { "png", no_argument, 0, O_PNG },
        { "timeout", required_argument, 0, 't' },      { "json", no_argument, 0, O_JSON },
        { "quiet", no_argument, 0, 'q' },              { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    common_opts co = { .timeout_ms = 120000 };
    samples_req rq = { .n = 1 };
    long conns = 8, duration = 10000, max_req = 0;
    int proto = 0, png = 0;
    int c;
    while ((c = getopt_long(argc, argv, "u:c:d:n:s:S:t:qh", lo, NULL)) != -1) {
        int st = parse_req_opt(c, optarg, &rq);
        if (st < 0)
            st = parse_common_opt(c, optarg, &co);
        if (st == 2)
            return 2;
        if (st == 0)
            continue;
        switch (c) {
        case 'c':
            if (opt_long("--connections", optarg, 1, LOADGEN_MAX_CONNECTIONS, &conns))
                return 2;
            break;
        case 'd':
            if (opt_duration("--duration", optarg, &duration))
                return 2;
            if (duration > 24L * 3600 * 1000)
                return bad_value("--duration", optarg, "at most 24h");
            break;
        case O_REQUESTS: if (opt_long("--requests", optarg, 1, 1000000000L, &max_req)) return 2; break;
        case O_PROTO: proto = 1; break;
        case O_PNG: png = 1; break;
        case 'h': usage_bench(stdout); return 0;
        default: return usage_hint("bench");
        }
    }
    if (extra_args(argc, argv) || resolve_url(&co))
        return 2;
    if (co.timeout_ms > 0x7fffffff)
        co.timeout_ms = 0x7fffffff;
    uint8_t *body;
    size_t blen;
    if (samples_encode(&rq, proto, &body, &blen)) {
        fprintf(stderr, "ddm-client: out of memory\n");
        return 1;
    }
    const char *ctype = proto ? CT_PROTO : CT_JSON;
    loadgen_config lc = {
        .hostport = co.hostport, .method = "POST", .path = "/v1/samples",
        .body = body, .body_len = blen, .content_type = ctype,
        .accept = png ? "image/png" : ctype, .connections = (int)conns,
        .duration_ms = duration, .max_requests = max_req, .timeout_ms = (int)co.timeout_ms,
        .progress = co.quiet ? NULL : on_progress,
    };
    char desc[256], steps[32] = "";
    if (rq.steps)
        snprintf(steps, sizeof steps, " steps=%ld", rq.steps);
    snprintf(desc, sizeof desc, "n=%ld%s strategy=%s %s", rq.n, steps,
             rq.strategy ? rq.strategy : "(default)", proto ? "protobuf" : "json");
    if (!co.quiet)
        fprintf(stderr, "bench: %s for %.1f s with %ld connections: POST /v1/samples %s\n",
                co.url, (double)duration / 1000.0, conns, desc);
    loadgen_result r;
    char err[512];
    int rc = loadgen_run(&lc, &r, err, sizeof err);
    free(body);
    if (rc) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    if (co.json) {
        print_bench_json(&lc, &r, rq.n);
    } else {
        double el = r.elapsed_s > 0 ? r.elapsed_s : 1;
        printf("requests    %llu in %.2f s: %llu ok, %llu failed\n",
               (unsigned long long)r.requests, r.elapsed_s, (unsigned long long)r.ok,
               (unsigned long long)r.failed);
        printf("throughput  %.2f requests/s, %.2f images/s\n", (double)r.ok / el,
               (double)r.ok * (double)rq.n / el);
        printf("latency ms  mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", r.mean_ms,
               r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms);
        if (!r.n_failures)
            printf("errors      none\n");
        for (int i = 0; i < r.n_failures; i++) {
            char name[128];
            const loadgen_failure *f = &r.failures[i];
            printf("errors      %s: %llu", failure_name(f->code, name, sizeof name),
                   (unsigned long long)f->count);
            if (f->code > 0) /* a transport error's name says it all */
                printf(" (first: %s)", f->first_message);
            printf("\n");
        }
    }
    if (r.failed || !r.ok) {
        if (!r.ok && !r.failed)
            fprintf(stderr, "ddm-client: bench: no request completed (raise --duration)\n");
        else
            fprintf(stderr, "ddm-client: bench: %llu of %llu requests failed\n",
                    (unsigned long long)r.failed, (unsigned long long)r.requests);
        return 1;
    }
    return 0;
}

/* ---- ready --------------------------------------------------------------------------- */

static int cmd_ready(int argc, char **argv)
{
    static const struct option lo[] = {
        { "url", required_argument, 0, 'u' }, { "wait", required_argument, 0, 'w' },
        { "quiet", no_argument, 0, 'q' },     { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    common_opts co = { .timeout_ms = 2000 };
    long wait_ms = 0;
    int c;
    while ((c = getopt_long(argc, argv, "u:w:qh", lo, NULL)) != -1) {
        int st = parse_common_opt(c, optarg, &co);
        if (st == 2)
            return 2;
        if (st == 0)
            continue;
        switch (c) {
        case 'w': if (opt_duration("--wait", optarg, &wait_ms)) return 2; break;
        case 'h': usage_ready(stdout); return 0;
        default: return usage_hint("ready");
        }
    }
    if (extra_args(argc, argv) || resolve_url(&co))
        return 2;
    char err[512], last[1024] = "";
    httpc *hc;
    if (httpc_open(co.hostport, (int)co.timeout_ms, &hc, err, sizeof err)) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 2;
    }
    double deadline = mono_ms() + (double)wait_ms;
    for (;;) {
        httpc_response resp;
        int rc = httpc_request(hc, "GET", "/readyz", NULL, 0, NULL, 0, &resp);
        if (rc) {
            snprintf(last, sizeof last, "GET %s/readyz: %s", co.url, ddm_strerror(rc));
            httpc_disconnect(hc);
        } else if (resp.status == 200) {
            httpc_response_free(&resp);
            httpc_close(hc);
            if (!co.quiet)
                printf("ready\n");
            return 0;
        } else {
            char msg[900];
            cli_error_message(&resp, msg, sizeof msg);
            snprintf(last, sizeof last, "HTTP %d: %s", resp.status, msg);
        }
        httpc_response_free(&resp);
        if (mono_ms() + 200 > deadline)
            break;
        usleep(200000);
    }
    httpc_close(hc);
    if (wait_ms)
        fprintf(stderr, "ddm-client: not ready after %.1f s: %s\n", (double)wait_ms / 1000, last);
    else
        fprintf(stderr, "ddm-client: not ready: %s\n", last);
    return 1;
}

/* ---- conform ------------------------------------------------------------------------ */

static int cmd_conform(int argc, char **argv)
{
    static const struct option lo[] = {
        { "weights", required_argument, 0, O_WEIGHTS },
        { "timeout-ms", required_argument, 0, O_TIMEOUT_MS },
        { "cluster-key-file", required_argument, 0, O_CLUSTER_KEY },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    conform_opts o = { .timeout_ms = CONFORM_TIMEOUT_MS, .out = stdout };
    long ms;
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case O_WEIGHTS: o.weights = optarg; break;
        case O_TIMEOUT_MS:
            if (opt_long("--timeout-ms", optarg, 1, 600000, &ms))
                return 2;
            o.timeout_ms = (int)ms;
            break;
        case O_CLUSTER_KEY: o.cluster_key_file = optarg; break;
        case 'h': usage_conform(stdout); return 0;
        default: return usage_hint("conform");
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "ddm-client: conform: give the worker's URL, e.g. "
                        "ddm-client conform tcp://127.0.0.1:7103\n");
        return 2;
    }
    o.url = argv[optind++];
    if (extra_args(argc, argv))
        return 2;
    conform_result res;
    char err[768];
    if (conform_run(&o, &res, err, sizeof err)) {
        fprintf(stderr, "ddm-client: conform: %s\n", err);
        return 2;
    }
    return res.failed ? 1 : 0;
}

/* ---- jobs ----------------------------------------------------------------------------- */

/* Adds priority and preview_every to a JSON request body (takes body). */
static char *job_body(uint8_t *body, size_t len, int has_prio, long prio, long preview)
{
    cJSON *o = cJSON_ParseWithLength((const char *)body, len);
    free(body);
    if (!o)
        return NULL;
    if (has_prio)
        cJSON_AddNumberToObject(o, "priority", (double)prio);
    if (preview)
        cJSON_AddNumberToObject(o, "preview_every", (double)preview);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static int cmd_jobs(int argc, char **argv)
{
    static const struct option lo[] = {
        { "url", required_argument, 0, 'u' },       REQ_LONGOPTS,
        { "trace", no_argument, 0, O_TRACE },       { "priority", required_argument, 0, O_PRIORITY },
        { "preview-every", required_argument, 0, O_PREVIEW },
        { "wait", no_argument, 0, O_WAIT },         { "events", no_argument, 0, O_EVENTS },
        { "output", required_argument, 0, 'o' },    { "json", no_argument, 0, O_JSON },
        { "timeout", required_argument, 0, 't' },   { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage_jobs(stdout);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "ddm-client: jobs needs a subcommand: submit, status, cancel or watch\n");
        return usage_hint("jobs");
    }
    const char *sub = argv[1];
    argv[1] = "ddm-client";
    argc--;
    argv++;
    common_opts co = { .timeout_ms = 30000 };
    samples_req rq = { 0 };
    long prio = 0, preview = 0;
    int has_prio = 0, wait = 0, events = 0;
    const char *out = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "u:n:s:S:o:t:qh", lo, NULL)) != -1) {
        int st = parse_req_opt(c, optarg, &rq);
        if (st < 0)
            st = parse_common_opt(c, optarg, &co);
        if (st == 2)
            return 2;
        if (st == 0)
            continue;
        switch (c) {
        case 'o': out = optarg; break;
        case O_TRACE: rq.trace = 1; break;
        case O_PRIORITY:
            if (opt_long("--priority", optarg, -100, 100, &prio))
                return 2;
            has_prio = 1;
            break;
        case O_PREVIEW: if (opt_long("--preview-every", optarg, 0, 1000, &preview)) return 2; break;
        case O_WAIT: wait = 1; break;
        case O_EVENTS: events = 1; break;
        case 'h': usage_jobs(stdout); return 0;
        default: return usage_hint("jobs");
        }
    }
    if (resolve_url(&co))
        return 2;
    if (co.timeout_ms > 0x7fffffff)
        co.timeout_ms = 0x7fffffff;
    jw_opts jo = { .url = co.url, .hostport = co.hostport, .timeout_ms = (int)co.timeout_ms,
                   .quiet = co.quiet, .json = co.json, .events = events, .out = out };
    if (!strcmp(sub, "submit")) {
        if (extra_args(argc, argv))
            return 2;
        uint8_t *body;
        size_t blen;
        if (samples_encode(&rq, 0, &body, &blen)) {
            fprintf(stderr, "ddm-client: out of memory\n");
            return 1;
        }
        char *json = job_body(body, blen, has_prio, prio, preview);
        if (!json) {
            fprintf(stderr, "ddm-client: out of memory\n");
            return 1;
        }
        if (out && !wait) {
            fprintf(stderr, "ddm-client: jobs submit -o needs --wait (or use jobs status ID -o)\n");
            free(json);
            return 2;
        }
        int rc = jw_submit(&jo, json, strlen(json), wait);
        free(json);
        return rc;
    }
    if (strcmp(sub, "status") && strcmp(sub, "cancel") && strcmp(sub, "watch")) {
        fprintf(stderr, "ddm-client: unknown jobs subcommand \"%s\": use submit, status, cancel "
                        "or watch\n", sub);
        return 2;
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "ddm-client: jobs %s needs exactly one job id\n", sub);
        return 2;
    }
    const char *id = argv[optind];
    if (!strcmp(sub, "status"))
        return jw_status(&jo, id);
    if (!strcmp(sub, "cancel"))
        return jw_cancel(&jo, id);
    return jw_watch(&jo, id);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage_main(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage_main(stdout);
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        printf("ddm-client %s\n", DDM_VERSION);
        return 0;
    }
    /* the command's options start after it; getopt's messages say "ddm-client" */
    argv[1] = "ddm-client";
    argc--;
    argv++;
    if (!strcmp(cmd, "sample"))
        return cmd_sample(argc, argv);
    if (!strcmp(cmd, "experts"))
        return cmd_experts(argc, argv);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc, argv);
    if (!strcmp(cmd, "ready"))
        return cmd_ready(argc, argv);
    if (!strcmp(cmd, "conform"))
        return cmd_conform(argc, argv);
    if (!strcmp(cmd, "jobs"))
        return cmd_jobs(argc, argv);
    fprintf(stderr, "ddm-client: unknown command \"%s\": use sample, experts, bench, ready, "
                    "jobs or conform (see --help)\n", cmd);
    return 2;
}
