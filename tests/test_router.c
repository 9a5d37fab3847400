/* test_router.c -- ddm-router end to end: real ddm-expert and ddm-router
 * processes on loopback, a small random expert set on disk, requests over
 * real HTTP connections. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/base64.h"
#include "common/png.h"
#include "common/utf8.h"
#include "ddm/v1/api.pb-c.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/images.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define K 3
#define DIM 16
#define CLASSES 3

static char dir[128], conf[256], rlog[256];
static pid_t router_pid;
static int router_port;
/* expert 0 has two replicas (tcp and ipc), experts 1 and 2 one each */
#define N_WORKERS 4
static pid_t workers[N_WORKERS];
static const int worker_expert[N_WORKERS] = { 0, 0, 1, 2 };
static char worker_url[N_WORKERS][200];

static pid_t start_worker(int i)
{
    char bin[256], weights[256], log[256];
    snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", dir, worker_expert[i]);
    snprintf(log, sizeof log, "%s/worker-%d.log", dir, i);
    char *argv[] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights", weights,
                     "--listen", worker_url[i], "--max-delay-us", "200", NULL };
    return proc_start(argv, log);
}

/* Routers a test starts besides the main one: stopped in teardown if a failed
 * test left them running (still our unreaped children, so the pid is theirs). */
static pid_t others[32];
static int n_others;

static pid_t track(pid_t pid)
{
    if (pid > 0 && n_others < 32)
        others[n_others++] = pid;
    return pid;
}

static pid_t start_router(const char *cluster, int port, const char *log)
{
    char bin[256], listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    char *argv[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", (char *)cluster,
                     "--listen", listen, "--expert-timeout-ms", "700", NULL };
    return track(proc_start(argv, log));
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (toyset_tempdir(dir, sizeof dir, "test-router") || toyset_write(dir, K, DIM, CLASSES, 3))
        return -1;
    int p0 = proc_free_port();
    snprintf(worker_url[0], sizeof worker_url[0], "tcp://127.0.0.1:%d", p0);
    snprintf(worker_url[1], sizeof worker_url[1], "ipc://%s/e0b.ipc", dir);
    snprintf(worker_url[2], sizeof worker_url[2], "ipc://%s/e1.ipc", dir);
    snprintf(worker_url[3], sizeof worker_url[3], "ipc://%s/e2.ipc", dir);
    snprintf(conf, sizeof conf, "%s/cluster.conf", dir);
    FILE *f = fopen(conf, "w");
    if (!f)
        return -1;
    fprintf(f, "# test cluster\nmodels %s\n", dir);
    for (int i = 0; i < N_WORKERS; i++)
        fprintf(f, "expert %d %s\n", worker_expert[i], worker_url[i]);
    fprintf(f, "set max-images 64\n");
    fclose(f);
    for (int i = 0; i < N_WORKERS; i++)
        if ((workers[i] = start_worker(i)) < 0)
            return -1;
    router_port = proc_free_port();
    snprintf(rlog, sizeof rlog, "%s/router.log", dir);
    router_pid = start_router(conf, router_port, rlog);
    if (proc_wait_http(router_port, "/readyz", 200, 15000)) {
        fprintf(stderr, "router never became ready\n");
        proc_dump_log(rlog);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (getenv("DDM_KEEP_LOGS"))
        fprintf(stderr, "logs kept in %s\n", dir);
    if (router_pid > 0)
        proc_stop(router_pid, SIGTERM, 5000);
    for (int i = 0; i < n_others; i++)
        if (waitpid(others[i], NULL, WNOHANG) == 0) /* a failed test's router, still running */
            proc_stop(others[i], SIGKILL, 5000);
    for (int i = 0; i < N_WORKERS; i++)
        if (workers[i] > 0) {
            kill(workers[i], SIGCONT); /* a failed test may have left one stopped */
            proc_stop(workers[i], SIGTERM, 5000);
        }
    if (!getenv("DDM_KEEP_LOGS"))
        toyset_rmdir(dir);
    return 0;
}

/* ---- helpers ----------------------------------------------------------------------- */

static httpc *client(void)
{
    char hp[64], err[128];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", router_port);
    httpc *c;
    assert_int_equal(httpc_open(hp, 20000, &c, err, sizeof err), 0);
    return c;
}

/* POSTs a JSON body; returns the status, fills *resp (caller frees). */
static int post_json(httpc *c, const char *body, httpc_response *resp)
{
    httpc_header h[] = { { "Content-Type", "application/json" } };
    int rc = httpc_request(c, "POST", "/v1/samples", h, 1, body, strlen(body), resp);
    return rc ? rc : resp->status;
}

static int get(const char *path, httpc_response *resp)
{
    httpc *c = client();
    int rc = httpc_request(c, "GET", path, NULL, 0, NULL, 0, resp);
    httpc_close(c);
    return rc ? rc : resp->status;
}

/* Decodes the PNGs of a JSON response into pix [n][DIM] (0..255). */
static int json_images(cJSON *root, uint8_t *pix, int max)
{
    int n = images_from_json(root, pix, max, DIM);
    assert_true(n >= 0);
    return n;
}

static cJSON *sample_ok(const char *body)
{
    httpc *c = client();
    httpc_response r;
    int st = post_json(c, body, &r);
    if (st != 200)
        fail_msg("%s -> %d %s", body, st, r.body ? r.body : "");
    cJSON *root = cJSON_Parse(r.body);
    assert_non_null(root);
    httpc_response_free(&r);
    httpc_close(c);
    return root;
}

static double num(cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valuedouble; }

/* ---- tests -------------------------------------------------------------------------- */

static void test_health_ready_experts(void **state)
{
    (void)state;
    httpc_response r;
    assert_int_equal(get("/healthz", &r), 200);
    httpc_response_free(&r);
    assert_int_equal(get("/readyz", &r), 200);
    httpc_response_free(&r);
    /* ready means one replica per expert: wait for the second one's handshake
     * (a probe round or more on a loaded machine) */
    cJSON *root = NULL;
    for (int i = 0; i < 500; i++) {
        assert_int_equal(get("/v1/experts", &r), 200);
        cJSON_Delete(root);
        root = cJSON_Parse(r.body);
        httpc_response_free(&r);
        cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "experts"), 0);
        if (e && (int)num(e, "live_replicas") == 2)
            break;
        usleep(20000);
    }
    cJSON *ex = cJSON_GetObjectItem(root, "experts");
    assert_int_equal(cJSON_GetArraySize(ex), K);
    cJSON *e0 = cJSON_GetArrayItem(ex, 0);
    assert_int_equal((int)num(e0, "live_replicas"), 2);
    cJSON *reps = cJSON_GetObjectItem(e0, "replicas");
    assert_int_equal(cJSON_GetArraySize(reps), 2);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(reps, 1), "state")->valuestring, "up");
    cJSON_Delete(root);
}

static void check_strategy(const char *strategy, int expect_per_step, int only_expert)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"n\": 3, \"steps\": 6, \"seed\": 11, \"strategy\": \"%s\", \"trace\": true}", strategy);
    cJSON *root = sample_ok(body);
    uint8_t pix[3 * DIM];
    assert_int_equal(json_images(root, pix, 3), 3);
    cJSON *trace = cJSON_GetObjectItem(root, "trace");
    assert_int_equal(cJSON_GetArraySize(trace), 3 * 6);
    long calls[K] = { 0 }, total = 0;
    cJSON *te;
    cJSON_ArrayForEach(te, trace) {
        cJSON *ex = cJSON_GetObjectItem(te, "experts"), *w = cJSON_GetObjectItem(te, "weights");
        int m = cJSON_GetArraySize(ex);
        if (expect_per_step > 0)
            assert_int_equal(m, expect_per_step);
        assert_true(m >= 1 && m <= K);
        double wsum = 0;
        for (int j = 0; j < m; j++) {
            int k = cJSON_GetArrayItem(ex, j)->valueint;
            if (only_expert >= 0)
                assert_int_equal(k, only_expert);
            calls[k]++;
            total++;
            wsum += cJSON_GetArrayItem(w, j)->valuedouble;
        }
        assert_float_equal(wsum, 1.0, 1e-4);
    }
    /* the per-expert counters agree with the trace: exactly the selected experts were called */
    cJSON *by = cJSON_GetObjectItem(root, "calls_by_expert");
    for (int k = 0; k < K; k++)
        assert_int_equal((long)cJSON_GetArrayItem(by, k)->valuedouble, calls[k]);
    assert_int_equal((long)num(root, "expert_calls"), total);
    cJSON_Delete(root);
}

static void test_every_strategy(void **state)
{
    (void)state;
    check_strategy("top-1", 1, -1);
    check_strategy("top-2", 2, -1);
    check_strategy("full", K, -1);
    check_strategy("uniform", K, -1);
    check_strategy("expert:2", 1, 2);
    check_strategy("threshold", 0, -1);
    check_strategy("nucleus", 0, -1);
    check_strategy("sample", 1, -1);
}

static void test_seeds_formats_and_in_process(void **state)
{
    (void)state;
    const char *req = "{\"n\": 4, \"steps\": 8, \"seed\": 42, \"strategy\": \"top-2\", \"sampler\": \"heun\"}";
    cJSON *a = sample_ok(req), *b = sample_ok(req);
    assert_int_equal((long)num(a, "seed"), 42);
    uint8_t pa[4 * DIM], pb[4 * DIM], pc[4 * DIM];
    json_images(a, pa, 4);
    json_images(b, pb, 4);
    assert_memory_equal(pa, pb, sizeof pa);
    cJSON *c = sample_ok("{\"n\": 4, \"steps\": 8, \"seed\": 43, \"strategy\": \"top-2\", \"sampler\": \"heun\"}");
    json_images(c, pc, 4);
    assert_true(memcmp(pa, pc, sizeof pa) != 0);

    /* protobuf gives the same images */
    Ddm__V1__SampleRequest m = DDM__V1__SAMPLE_REQUEST__INIT;
    m.has_n = 1, m.n = 4;
    m.has_steps = 1, m.steps = 8;
    m.has_seed = 1, m.seed = 42;
    m.strategy = "top-2";
    m.sampler = "heun";
    uint8_t buf[256];
    size_t len = ddm__v1__sample_request__pack(&m, buf);
    httpc *hc = client();
    httpc_header h[] = { { "Content-Type", "application/x-protobuf" } };
    httpc_response r;
    assert_int_equal(httpc_request(hc, "POST", "/v1/samples", h, 1, buf, len, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(httpc_response_header(&r, "Content-Type"), "application/x-protobuf");
    Ddm__V1__SampleResponse *resp =
        ddm__v1__sample_response__unpack(NULL, r.body_len, (uint8_t *)r.body);
    assert_non_null(resp);
    assert_int_equal(resp->n_images, 4);
    assert_int_equal(resp->seed, 42);
    for (int i = 0; i < 4; i++) {
        uint8_t *px;
        int w, hh;
        char err[128];
        assert_int_equal(pngio_decode_grey(resp->images[i].data, resp->images[i].len, &px, &w, &hh,
                                           err, sizeof err), 0);
        assert_memory_equal(px, pa + i * DIM, DIM);
        free(px);
    }
    ddm__v1__sample_response__free_unpacked(resp, NULL);
    httpc_response_free(&r);
    httpc_close(hc);

    /* the daemon's images equal in-process sampling with the same library */
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    assert_non_null(e);
    sample_params p;
    sample_params_default(&p, K);
    p.n = 4, p.steps = 8, p.seed = 42, p.sampler = SAMPLER_HEUN;
    float x[4 * DIM];
    assert_int_equal(ensemble_sample(e, &p, x, NULL, NULL), 0);
    uint8_t ref[4 * (DIM + PNGIO_GRID_SEP)];
    pngio_grid_render(x, 4, DIM, 1, 4, ref); /* 4 images of 16x1 side by side: same quantisation */
    int maxdiff = 0;
    for (int i = 0; i < 4; i++)
        for (int d = 0; d < DIM; d++) {
            int a1 = pa[i * DIM + d];
            int b1 = ref[i * (DIM + PNGIO_GRID_SEP) + d];
            if (abs(a1 - b1) > maxdiff)
                maxdiff = abs(a1 - b1);
        }
    assert_true(maxdiff <= 1); /* <= one 8-bit level: float results agree to ~1e-4 */
    ensemble_close(e);
    cJSON_Delete(a);
    cJSON_Delete(b);
    cJSON_Delete(c);
}

static void test_label_guidance_and_png(void **state)
{
    (void)state;
    cJSON *a = sample_ok("{\"n\": 2, \"steps\": 5, \"label\": 1, \"guidance\": 2, \"strategy\": \"top-2\"}");
    /* conditional + null rows for each of the 2 experts, 5 steps, 2 images */
    assert_int_equal((long)num(a, "expert_calls"), 2 * 2 * 5 * 2);
    cJSON_Delete(a);
    a = sample_ok("{\"n\": 2, \"steps\": 5, \"label\": 1, \"strategy\": \"top-2\"}");
    assert_int_equal((long)num(a, "expert_calls"), 2 * 5 * 2);
    cJSON_Delete(a);
    httpc *c = client();
    httpc_header h[] = { { "Content-Type", "application/json" }, { "Accept", "image/png" } };
    httpc_response r;
    const char *body = "{\"n\": 9, \"steps\": 3}";
    assert_int_equal(httpc_request(c, "POST", "/v1/samples", h, 2, body, strlen(body), &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(httpc_response_header(&r, "Content-Type"), "image/png");
    uint8_t *px;
    int w, hh;
    char err[128];
    assert_int_equal(pngio_decode_grey((uint8_t *)r.body, r.body_len, &px, &w, &hh, err, sizeof err), 0);
    assert_int_equal(w, 3 * 4 + 2 * PNGIO_GRID_SEP);
    free(px);
    httpc_response_free(&r);
    httpc_close(c);
}

/* One hostile or malformed request and the status it must get. */
typedef struct bad_case {
    const char *name;
    const char *raw;       /* full raw request, or NULL to POST body as JSON */
    const char *body;
    int status;            /* expected status; 0 = connection closed without one */
    const char *msg;       /* substring of the error message, or NULL */
} bad_case;

static void test_malformed_requests(void **state)
{
    (void)state;
    static char huge_body[2 << 20];
    memset(huge_body, ' ', sizeof huge_body - 1);
    static char huge_raw[300];
    snprintf(huge_raw, sizeof huge_raw,
             "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n", sizeof huge_body - 1);
    static char mid_raw[300]; /* over the router's 64 KiB body limit (was 1 MiB) */
    snprintf(mid_raw, sizeof mid_raw,
             "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: 70000\r\n\r\n");
    static char big_header[40000];
    int n = snprintf(big_header, sizeof big_header, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big_header + n, 'a', 30000);
    strcpy(big_header + n + 30000, "\r\n\r\n");
    const bad_case cases[] = {
        { "not json", NULL, "{n: 3", 400, "not valid JSON" },
        { "json array", NULL, "[1,2]", 400, "JSON object" },
        { "empty body", NULL, "", 400, "JSON" },
        { "n string", NULL, "{\"n\": \"3\"}", 400, "must be an integer" },
        { "n zero", NULL, "{\"n\": 0}", 400, "1..256" },
        { "n huge", NULL, "{\"n\": 100000}", 400, "1..256" },
        { "n fraction", NULL, "{\"n\": 1.5}", 400, "integer" },
        { "steps zero", NULL, "{\"steps\": 0}", 400, "1..1000" },
        { "steps huge", NULL, "{\"steps\": 1e9}", 400, "1..1000" },
        /* a work bomb: 64 x 2000 evaluations x 3 experts x 2 rows; it once passed a
         * check that counted n x steps only */
        { "work bomb", NULL, "{\"n\": 64, \"steps\": 1000, \"strategy\": \"full\", "
          "\"sampler\": \"heun\", \"label\": 1, \"guidance\": 2}", 400,
          "costs 768000 expert evaluations (64 images x 1000 steps x 2 (heun) x 3 experts "
          "(full) x 2 (guidance with a label)), over this router's limit of 400000" },
        /* more images than --max-images (64 here) can never fit: 400, not 503 */
        { "n over max-images", NULL, "{\"n\": 65, \"steps\": 1}", 400, "--max-images" },
        { "seed negative", NULL, "{\"seed\": -1}", 400, "seed" },
        { "seed string junk", NULL, "{\"seed\": \"12x\"}", 400, "seed" },
        { "strategy unknown", NULL, "{\"strategy\": \"best\"}", 400, "unknown" },
        { "strategy top-9", NULL, "{\"strategy\": \"top-9\"}", 400, "1..3" },
        { "expert out of range", NULL, "{\"strategy\": \"expert:7\"}", 400, "0..2" },
        { "strategy number", NULL, "{\"strategy\": 2}", 400, "string" },
        /* these named the field "strategy" */
        { "threshold range", NULL, "{\"strategy\": \"threshold\", \"threshold\": 2}", 400,
          "field \\\"threshold\\\" = 2 is out of range: allowed (0, 1]" },
        { "temperature zero", NULL, "{\"strategy\": \"sample\", \"temperature\": 0}", 400,
          "field \\\"temperature\\\" = 0 is out of range: allowed 0.01..100" },
        { "label range", NULL, "{\"label\": 7}", 400, "0..2" },
        /* it said the range was 0..1000000000 */
        { "label string", NULL, "{\"label\": \"3\"}", 400,
          "names no classes: give a number 0..2" },
        /* leniencies: each of these was accepted */
        { "trailing bytes", NULL, "{\"n\": 1, \"steps\": 2} x", 400, "after the JSON object" },
        { "second object", NULL, "{\"n\": 1}{\"n\": 2}", 400, "after the JSON object" },
        { "duplicate key", NULL, "{\"n\": 1000, \"steps\": 2, \"n\": 1}", 400,
          "field \\\"n\\\" appears twice" },
        { "NUL in a string", NULL, "{\"strategy\": \"top-2\\u0000junk\"}", 400, "\\\\u0000" },
        { "not UTF-8", NULL, "{\"strategy\": \"\xff\xfe\"}", 400, "not valid UTF-8 (byte 14)" },
        { "seed over 2^64", NULL, "{\"seed\": 18446744073709551616}", 400,
          "field \\\"seed\\\" = 18446744073709551616 is out of range" },
        { "seed inexact", NULL, "{\"seed\": 1.5}", 400, "exact" },
        { "seed inexact 2", NULL, "{\"seed\": 9007199254740993.5}", 400, "exact" },
        { "n over int", NULL, "{\"n\": 1e12}", 400, "allowed 1..256" },
        { "guidance negative", NULL, "{\"guidance\": -1}", 400, "0..20" },
        { "sampler unknown", NULL, "{\"sampler\": \"rk4\"}", 400, "euler or heun" },
        { "trace not bool", NULL, "{\"trace\": 1}", 400, "true or false" },
        { "unknown field", NULL, "{\"images\": 3}", 400, "unknown field" },
        { "wrong content type", "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
          "Content-Length: 2\r\n\r\n{}", NULL, 415, "application/json" },
        { "truncated protobuf", "POST /v1/samples HTTP/1.1\r\nHost: x\r\n"
          "Content-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\n\x22\x05", NULL, 400,
          "SampleRequest" },
        { "unknown path", "GET /v2/nothing HTTP/1.1\r\nHost: x\r\n\r\n", NULL, 404, NULL },
        { "wrong method", "GET /v1/samples HTTP/1.1\r\nHost: x\r\n\r\n", NULL, 405, NULL },
        { "delete experts", "DELETE /v1/experts HTTP/1.1\r\nHost: x\r\n\r\n", NULL, 405, NULL },
        { "no length", "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n", NULL, 411, NULL },
        { "garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", NULL, 400, NULL },
        { "bad version", "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", NULL, 400, NULL },
        { "oversized body", huge_raw, NULL, 413, NULL },
        { "body over 64 KiB", mid_raw, NULL, 413, NULL },
        { "huge header", big_header, NULL, 431, NULL },
        { "bad chunked", "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", NULL, 400, NULL },
        { "unsupported encoding", "POST /v1/samples HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", NULL, 501, NULL },
        { "no Host", "GET /healthz HTTP/1.1\r\n\r\n", NULL, 400, "Host" },
        { "PNG refused by q=0", "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          "Accept: image/png;q=0\r\nContent-Length: 2\r\n\r\n{}", NULL, 406, NULL },
        { "not acceptable", "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          "Accept: text/html\r\nContent-Length: 2\r\n\r\n{}", NULL, 406, NULL },
    };
    int ncases = (int)(sizeof cases / sizeof cases[0]);
    assert_true(ncases >= 30);
    for (int i = 0; i < ncases; i++) {
        const bad_case *bc = &cases[i];
        httpc *c = client();
        httpc_response r;
        int rc;
        if (bc->raw) {
            rc = httpc_send_raw(c, bc->raw, strlen(bc->raw));
            if (!rc && bc->raw == huge_raw)
                httpc_send_raw(c, huge_body, sizeof huge_body - 1); /* may fail once refused */
            if (!rc && bc->raw == mid_raw)
                httpc_send_raw(c, huge_body, 70000);
            if (!rc)
                rc = httpc_read_response(c, 0, &r);
        } else {
            rc = post_json(c, bc->body, &r);
            rc = rc < 0 ? rc : 0;
        }
        if (rc != 0)
            fail_msg("case \"%s\": no response (%d)", bc->name, rc);
        if (r.status != bc->status)
            fail_msg("case \"%s\": status %d, expected %d: %s", bc->name, r.status, bc->status, r.body);
        if (bc->msg && !strstr(r.body, bc->msg))
            fail_msg("case \"%s\": body lacks \"%s\": %s", bc->name, bc->msg, r.body);
        if (utf8_valid_prefix(r.body, r.body_len) != r.body_len)
            fail_msg("case \"%s\": the answer is not UTF-8: %s", bc->name, r.body);
        if (r.status >= 400) { /* errors are JSON {"error": {"code", "message"}} */
            cJSON *root = cJSON_Parse(r.body);
            cJSON *e = root ? cJSON_GetObjectItem(root, "error") : NULL;
            if (!e || !cJSON_IsString(cJSON_GetObjectItem(e, "message")))
                fail_msg("case \"%s\": error body is not {\"error\": ...}: %s", bc->name, r.body);
            cJSON_Delete(root);
        }
        httpc_response_free(&r);
        httpc_close(c);
    }
    /* still serving */
    cJSON *ok = sample_ok("{\"n\": 1, \"steps\": 2}");
    cJSON_Delete(ok);
}

/* Values the decoder once took loosely, taken exactly now. */
static void test_exact_values(void **state)
{
    (void)state;
    httpc *c = client();
    httpc_response r;
    /* seeds above 2^53 as numbers: exact (9007199254740993 became ...992) */
    static const struct { const char *sent, *echoed; } seeds[] = {
        { "9007199254740993", "9007199254740993" },
        { "18446744073709551615", "18446744073709551615" },
        { "1e3", "1000" }, { "5.0", "5" }, { "0", "0" },
    };
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char body[128], want[64];
        snprintf(body, sizeof body, "{\"n\": 1, \"steps\": 1, \"seed\": %s}", seeds[i].sent);
        assert_int_equal(post_json(c, body, &r), 200);
        snprintf(want, sizeof want, "\"seed\":%s,", seeds[i].echoed);
        if (!strstr(r.body, want))
            fail_msg("seed %s: %.60s", seeds[i].sent, r.body);
        httpc_response_free(&r);
    }
    /* Accept by q-value: the highest acceptable wins, q=0 never */
    static const struct { const char *accept, *ctype; } acc[] = {
        { "image/png;q=0, application/json", "application/json" },
        { "application/json;q=0.5, image/png;q=0.9", "image/png" },
        { "image/png, application/json", "image/png" },             /* ties: first listed */
        { "*/*;q=0.1, application/x-protobuf", "application/x-protobuf" },
        { "image/*;q=0, */*", "application/json" },
        { "application/json;q=0.001", "application/json" },
    };
    for (size_t i = 0; i < sizeof acc / sizeof acc[0]; i++) {
        httpc_header h[] = { { "Content-Type", "application/json" }, { "Accept", acc[i].accept } };
        const char *body = "{\"n\": 1, \"steps\": 1}";
        assert_int_equal(httpc_request(c, "POST", "/v1/samples", h, 2, body, strlen(body), &r), 0);
        assert_int_equal(r.status, 200);
        if (strcmp(httpc_response_header(&r, "Content-Type"), acc[i].ctype))
            fail_msg("Accept \"%s\": got %s", acc[i].accept, httpc_response_header(&r, "Content-Type"));
        httpc_response_free(&r);
    }
    /* bytes that are not UTF-8 echoed in an error (protobuf strings are not
     * checked by the decoder): replaced, the answer stays valid JSON */
    Ddm__V1__SampleRequest m = DDM__V1__SAMPLE_REQUEST__INIT;
    m.strategy = "best\xff\xfe";
    uint8_t buf[64];
    size_t len = ddm__v1__sample_request__pack(&m, buf);
    httpc_header h[] = { { "Content-Type", "application/x-protobuf" } };
    assert_int_equal(httpc_request(c, "POST", "/v1/samples", h, 1, buf, len, &r), 0);
    assert_int_equal(r.status, 400);
    assert_int_equal(utf8_valid_prefix(r.body, r.body_len), r.body_len);
    assert_non_null(strstr(r.body, "best\\ufffd\\ufffd"));
    cJSON *root = cJSON_Parse(r.body);
    assert_non_null(root);
    cJSON_Delete(root);
    httpc_response_free(&r);
    httpc_close(c);
}

static void test_hostile_connections(void **state)
{
    (void)state;
    /* hundreds of idle connections, a slow header, a client leaving mid-request */
    enum { IDLE = 300 };
    httpc *idle[IDLE];
    for (int i = 0; i < IDLE; i++) {
        idle[i] = client();
        assert_int_equal(httpc_connect(idle[i]), 0);
    }
    httpc *slow = client();
    assert_int_equal(httpc_send_raw(slow, "POST /v1/samples HTTP/1.1\r\nHo", 30), 0);
    httpc *gone = client();
    const char *req = "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 32\r\n\r\n{\"n\": 8, \"steps\": 200, \"seed\":1}";
    assert_int_equal(httpc_send_raw(gone, req, strlen(req)), 0);
    usleep(50000);
    httpc_close(gone); /* leaves while its request is being computed */
    httpc *half = client();
    assert_int_equal(httpc_send_raw(half, req, strlen(req) - 10), 0);
    httpc_close(half); /* leaves mid-body */
    cJSON *ok = sample_ok("{\"n\": 2, \"steps\": 4}");
    cJSON_Delete(ok);
    for (int i = 0; i < IDLE; i++)
        httpc_close(idle[i]);
    httpc_close(slow);
    httpc_response r;
    assert_int_equal(get("/metrics", &r), 200);
    assert_non_null(strstr(r.body, "ddm_expert_calls_total{expert=\"0\"}"));
    assert_non_null(strstr(r.body, "ddm_sample_request_seconds_bucket"));
    httpc_response_free(&r);
}

/* ---- failover -------------------------------------------------------------------------- */

typedef struct load {
    volatile int stop;
    int ok, failed, last_status;
} load;

static void *load_thread(void *arg)
{
    load *l = arg;
    httpc *c = client();
    while (!l->stop) {
        httpc_response r;
        int st = post_json(c, "{\"n\": 2, \"steps\": 10, \"strategy\": \"expert:0\"}", &r);
        if (st == 200)
            __sync_fetch_and_add(&l->ok, 1);
        else {
            __sync_fetch_and_add(&l->failed, 1);
            l->last_status = st;
        }
        httpc_response_free(&r);
    }
    httpc_close(c);
    return NULL;
}

static void test_replica_killed_under_load(void **state)
{
    (void)state;
    load l = { 0 };
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, load_thread, &l);
    usleep(400000);
    kill(workers[1], SIGKILL); /* one of expert 0's two replicas */
    proc_wait(workers[1], 2000);
    workers[1] = -1;
    usleep(2500000);
    l.stop = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    if (l.failed)
        fail_msg("%d of %d requests failed (last status %d)", l.failed, l.ok + l.failed, l.last_status);
    assert_true(l.ok > 4);
    workers[1] = start_worker(1); /* back for the other tests */
}

static void test_only_replica_killed_then_restarted(void **state)
{
    (void)state;
    kill(workers[2], SIGKILL); /* expert 1's only replica */
    proc_wait(workers[2], 2000);
    workers[2] = -1;
    httpc *c = client();
    httpc_response r;
    int st = post_json(c, "{\"n\": 1, \"steps\": 3, \"strategy\": \"expert:1\"}", &r);
    assert_true(st == 503 || st == 504);
    if (!strstr(r.body, "expert 1"))
        fail_msg("503 does not name the expert: %s", r.body);
    httpc_response_free(&r);
    assert_int_equal(proc_wait_http(router_port, "/readyz", 503, 5000), 0);
    assert_int_equal(get("/readyz", &r), 503);
    assert_non_null(strstr(r.body, "1"));
    httpc_response_free(&r);
    /* requests that do not need expert 1 still work */
    st = post_json(c, "{\"n\": 1, \"steps\": 3, \"strategy\": \"expert:2\"}", &r);
    assert_int_equal(st, 200);
    httpc_response_free(&r);
    workers[2] = start_worker(2);
    assert_int_equal(proc_wait_http(router_port, "/readyz", 200, 10000), 0);
    st = post_json(c, "{\"n\": 1, \"steps\": 3, \"strategy\": \"expert:1\"}", &r);
    assert_int_equal(st, 200);
    httpc_response_free(&r);
    httpc_close(c);
}

static void test_handshake_refuses_wrong_worker(void **state)
{
    (void)state;
    /* a second router whose file lists expert 2's worker as expert 1 */
    char conf2[256], log2[256];
    snprintf(conf2, sizeof conf2, "%s/wrong.conf", dir);
    snprintf(log2, sizeof log2, "%s/router2.log", dir);
    FILE *f = fopen(conf2, "w");
    fprintf(f, "models %s\nexpert 0 %s\nexpert 1 %s\nexpert 2 %s\n", dir, worker_url[0],
            worker_url[3], worker_url[3]);
    fclose(f);
    int port = proc_free_port();
    pid_t pid = start_router(conf2, port, log2);
    assert_int_equal(proc_wait_http(port, "/healthz", 200, 10000), 0);
    usleep(800000);
    char hp[64], err[128];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    httpc *c;
    assert_int_equal(httpc_open(hp, 5000, &c, err, sizeof err), 0);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/v1/experts", NULL, 0, NULL, 0, &r), 0);
    if (!strstr(r.body, "refused") || !strstr(r.body, "serves expert 2"))
        fail_msg("wrong worker not refused: %s", r.body);
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "GET", "/readyz", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 503);
    httpc_response_free(&r);
    httpc_close(c);
    int status = proc_stop(pid, SIGTERM, 5000);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_bad_flags_and_files(void **state)
{
    (void)state;
    char bin[256], log[256];
    snprintf(log, sizeof log, "%s/flags.log", dir);
    char *a1[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--bogus", NULL };
    int st = proc_wait(proc_start(a1, log), 5000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    char *a2[] = { bin, "--cluster", "/nonexistent.conf", NULL };
    st = proc_wait(proc_start(a2, log), 5000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    char *a3[] = { bin, "--help", NULL };
    st = proc_wait(proc_start(a3, log), 5000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A second router on the same workers, with extra flags (NULL-terminated). */
static pid_t start_router_args(int port, const char *log, ...)
{
    char bin[256], listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    char *argv[32] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf,
                       "--listen", listen };
    int n = 5;
    va_list ap;
    va_start(ap, log);
    for (const char *a; n < 31 && (a = va_arg(ap, const char *)); )
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    pid_t pid = track(proc_start(argv, log));
    if (proc_wait_http(port, "/readyz", 200, 15000)) {
        proc_dump_log(log);
        fail_msg("second router never became ready");
    }
    return pid;
}

static httpc *client_at(int port)
{
    char hp[64], err[128];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    httpc *c;
    assert_int_equal(httpc_open(hp, 20000, &c, err, sizeof err), 0);
    return c;
}

/* 1,024 connections that send nothing (the connection cap) once made every
 * request 503, /healthz included -- the liveness probe. Now the health probes
 * and a sample request are still served: against the default flags (the
 * per-address cap, 256, is hit first) and with the per-address cap out of the
 * way (the global cap). */
static void idle_flood(int port)
{
    enum { IDLE = 1024 };
    httpc **idle = calloc(IDLE, sizeof *idle);
    assert_non_null(idle);
    for (int i = 0; i < IDLE; i++) {
        idle[i] = client_at(port);
        assert_int_equal(httpc_connect(idle[i]), 0);
    }
    usleep(200000);
    httpc *c = client_at(port);
    httpc_response r;
    assert_int_equal(httpc_request(c, "GET", "/healthz", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
    c = client_at(port);
    assert_int_equal(httpc_request(c, "GET", "/readyz", NULL, 0, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
    c = client_at(port);
    int st = post_json(c, "{\"n\": 2, \"steps\": 4}", &r);
    if (st != 200)
        fail_msg("sample request under %d idle connections: %d %s", IDLE, st, r.body);
    httpc_response_free(&r);
    httpc_close(c);
    for (int i = 0; i < IDLE; i++)
        httpc_close(idle[i]);
    free(idle);
}

static void test_idle_connection_flood(void **state)
{
    (void)state;
    struct rlimit rl; /* 1,024 sockets and then some */
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 4096 && rl.rlim_max > rl.rlim_cur) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 1200)
        skip(); /* cannot open enough sockets here */
    idle_flood(router_port);
    char log[256];
    snprintf(log, sizeof log, "%s/router-flood.log", dir);
    int port = proc_free_port();
    pid_t pid = start_router_args(port, log, "--max-connections-per-ip", "4096", (char *)NULL);
    idle_flood(port);
    int st = proc_stop(pid, SIGTERM, 10000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- bearer tokens ---------------------------------------------------------------------- */

#define TOK_A "alice-0123456789abcdef0123456789"
#define TOK_B "bob-fedcba9876543210fedcba987654"
#define TOK_B2 "bob-new-0011223344556677889900aa"

static int get_with(int port, const char *path, const char *token, httpc_response *r)
{
    httpc *c = client_at(port);
    char auth[128];
    snprintf(auth, sizeof auth, "Bearer %s", token ? token : "");
    httpc_header h[] = { { "Authorization", auth } };
    int rc = httpc_request(c, "GET", path, h, token ? 1 : 0, NULL, 0, r);
    httpc_close(c);
    return rc ? rc : r->status;
}

static int sample_with(httpc *c, const char *token, const char *body, httpc_response *r)
{
    char auth[128];
    snprintf(auth, sizeof auth, "Bearer %s", token ? token : "");
    httpc_header h[] = { { "Content-Type", "application/json" }, { "Authorization", auth } };
    int rc = httpc_request(c, "POST", "/v1/samples", h, token ? 2 : 1, body, strlen(body), r);
    return rc ? rc : r->status;
}

static void write_tokens(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, 0600);
}

typedef struct held_req {
    int port;
    const char *token;
    int status;
} held_req;

static void *held_thread(void *arg)
{
    held_req *h = arg;
    httpc *c = client_at(h->port);
    httpc_response r;
    h->status = sample_with(c, h->token, "{\"n\": 8, \"steps\": 1000, \"strategy\": \"top-1\"}", &r);
    if (h->status > 0)
        httpc_response_free(&r);
    httpc_close(c);
    return NULL;
}

/* --auth-token-file: 401 with WWW-Authenticate without a valid token, health
 * open, /metrics public only when asked, per-token concurrency and queue (429),
 * SIGHUP reloads (a bad file keeps the old tokens), and no token in the log. */
static void test_auth_tokens(void **state)
{
    (void)state;
    char tokens[256], log[256];
    snprintf(tokens, sizeof tokens, "%s/tokens", dir);
    snprintf(log, sizeof log, "%s/router-auth.log", dir);
    write_tokens(tokens, "# API tokens\nalice:" TOK_A " concurrency=1 queue=1\nbob:" TOK_B "\n");
    int port = proc_free_port();
    pid_t pid = start_router_args(port, log, "--auth-token-file", tokens, "--public-metrics",
                                  "--log-level", "debug", (char *)NULL);
    httpc_response r;
    assert_int_equal(get_with(port, "/healthz", NULL, &r), 200);
    httpc_response_free(&r);
    assert_int_equal(get_with(port, "/readyz", NULL, &r), 200);
    httpc_response_free(&r);
    assert_int_equal(get_with(port, "/metrics", NULL, &r), 200); /* --public-metrics */
    httpc_response_free(&r);
    assert_int_equal(get_with(port, "/v1/experts", NULL, &r), 401);
    assert_string_equal(httpc_response_header(&r, "WWW-Authenticate"), "Bearer realm=\"ddm-router\"");
    httpc_response_free(&r);
    assert_int_equal(get_with(port, "/v1/experts", TOK_B, &r), 200);
    httpc_response_free(&r);
    assert_int_equal(get_with(port, "/nothing", NULL, &r), 404); /* the paths are public knowledge */
    httpc_response_free(&r);

    httpc *c = client_at(port);
    const char *small = "{\"n\": 1, \"steps\": 3}";
    assert_int_equal(sample_with(c, NULL, small, &r), 401);
    assert_non_null(strstr(r.body, "\"unauthorized\""));
    httpc_response_free(&r);
    assert_int_equal(sample_with(c, TOK_A "x", small, &r), 401);
    assert_string_equal(httpc_response_header(&r, "WWW-Authenticate"),
                        "Bearer realm=\"ddm-router\", error=\"invalid_token\"");
    httpc_response_free(&r);
    assert_int_equal(sample_with(c, TOK_A, small, &r), 200);
    httpc_response_free(&r);

    /* alice: concurrency 1, queue 1: the third request at once gets 429 */
    held_req h[2] = { { port, TOK_A, 0 }, { port, TOK_A, 0 } };
    pthread_t th[2];
    pthread_create(&th[0], NULL, held_thread, &h[0]);
    usleep(100000);
    pthread_create(&th[1], NULL, held_thread, &h[1]);
    usleep(100000);
    assert_int_equal(sample_with(c, TOK_A, small, &r), 429);
    assert_non_null(httpc_response_header(&r, "Retry-After"));
    if (!strstr(r.body, "too_many_requests") || !strstr(r.body, "alice"))
        fail_msg("%s", r.body);
    httpc_response_free(&r);
    assert_int_equal(sample_with(c, TOK_B, small, &r), 200); /* other tokens go on */
    httpc_response_free(&r);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(h[i].status, 200); /* the waiting one ran after the first */
    }

    /* SIGHUP: bob's token replaced, alice kept */
    write_tokens(tokens, "alice:" TOK_A "\nbob:" TOK_B2 "\n");
    kill(pid, SIGHUP);
    int reloaded = 0;
    for (int i = 0; i < 100 && !reloaded; i++) {
        usleep(50000);
        reloaded = sample_with(c, TOK_B2, small, &r) == 200;
        httpc_response_free(&r);
    }
    assert_true(reloaded);
    assert_int_equal(sample_with(c, TOK_B, small, &r), 401);
    httpc_response_free(&r);
    assert_int_equal(sample_with(c, TOK_A, small, &r), 200);
    httpc_response_free(&r);
    /* a bad file keeps the tokens in use */
    write_tokens(tokens, "alice:short\n");
    kill(pid, SIGHUP);
    usleep(300000);
    assert_int_equal(sample_with(c, TOK_B2, small, &r), 200);
    httpc_response_free(&r);
    httpc_close(c);
    int st = proc_stop(pid, SIGTERM, 10000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    FILE *f = fopen(log, "r"); /* debug logging, 401s included: no token text */
    assert_non_null(f);
    char line[1024];
    int reload_error = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "0123456789abcdef") || strstr(line, "fedcba98") ||
            strstr(line, "0011223344"))
            fail_msg("the log shows a token: %s", line);
        reload_error |= strstr(line, "the old tokens stay in use") != NULL;
    }
    fclose(f);
    assert_true(reload_error);

    /* a bad token file at start: exit 1 naming the line */
    write_tokens(tokens, "ok:" TOK_A "\nshort:abc\n");
    char bin[256], listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", proc_free_port());
    char *argv[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf, "--listen",
                     listen, "--auth-token-file", tokens, NULL };
    char log2[256];
    snprintf(log2, sizeof log2, "%s/router-badtokens.log", dir);
    st = proc_wait(track(proc_start(argv, log2)), 10000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    f = fopen(log2, "r");
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    if (!strstr(line, "tokens:2:"))
        fail_msg("%s", line);
}

/* The cost cap comes from the cluster file too ("set max-request-cost"). */
static void test_cost_cap_setting(void **state)
{
    (void)state;
    char conf2[256], log[256];
    snprintf(conf2, sizeof conf2, "%s/capped.conf", dir);
    snprintf(log, sizeof log, "%s/router-capped.log", dir);
    FILE *f = fopen(conf2, "w");
    fprintf(f, "models %s\n", dir);
    for (int i = 0; i < N_WORKERS; i++)
        fprintf(f, "expert %d %s\n", worker_expert[i], worker_url[i]);
    fprintf(f, "set max-request-cost 50\n");
    fclose(f);
    int port = proc_free_port();
    pid_t pid = start_router(conf2, port, log);
    assert_int_equal(proc_wait_http(port, "/readyz", 200, 15000), 0);
    httpc *c = client_at(port);
    httpc_response r;
    assert_int_equal(post_json(c, "{\"n\": 2, \"steps\": 10, \"strategy\": \"top-2\"}", &r), 200);
    httpc_response_free(&r);
    assert_int_equal(post_json(c, "{\"n\": 3, \"steps\": 10, \"strategy\": \"top-2\"}", &r), 400);
    if (!strstr(r.body, "too_much_work") || !strstr(r.body, "costs 60 ") ||
        !strstr(r.body, "limit of 50"))
        fail_msg("%s", r.body);
    httpc_response_free(&r);
    httpc_close(c);
    int st = proc_stop(pid, SIGTERM, 10000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* After the drain limit a request still in flight gets 503 with a JSON error
 * and Connection: close (it once got an empty reply: the connection closed). */
static void test_drain_limit_answers_503(void **state)
{
    (void)state;
    char log[256];
    snprintf(log, sizeof log, "%s/router-drain.log", dir);
    int port = proc_free_port();
    pid_t pid = start_router_args(port, log, "--drain-timeout-ms", "300", "--expert-timeout-ms",
                                  "60000", (char *)NULL);
    kill(workers[2], SIGSTOP); /* expert 1's only replica: its request cannot finish */
    httpc *c = client_at(port);
    const char *req = "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 39\r\n\r\n{\"n\":1,\"steps\":5,\"strategy\":\"expert:1\"}";
    assert_int_equal(httpc_send_raw(c, req, strlen(req)), 0);
    usleep(200000);
    kill(pid, SIGTERM);
    httpc_response r;
    int rc = httpc_read_response(c, 0, &r);
    kill(workers[2], SIGCONT);
    if (rc)
        fail_msg("no response after the drain limit (%d)", rc);
    assert_int_equal(r.status, 503);
    const char *conn = httpc_response_header(&r, "Connection");
    assert_non_null(conn);
    assert_string_equal(conn, "close");
    cJSON *root = cJSON_Parse(r.body);
    cJSON *e = root ? cJSON_GetObjectItem(root, "error") : NULL;
    if (!e || strcmp(cJSON_GetObjectItem(e, "code")->valuestring, "shutting_down"))
        fail_msg("not a shutting_down error: %s", r.body);
    cJSON_Delete(root);
    httpc_response_free(&r);
    httpc_close(c);
    int st = proc_wait(pid, 10000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(proc_wait_http(router_port, "/readyz", 200, 10000), 0);
}

static int count_threads(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)); )
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* The threadpool has a thread per tick in flight plus the encoders (libuv's
 * default of 4 was shared by up to 8 ticks and every response's encoding):
 * --ticks 8 has 6 threads more than the default --ticks 2. */
static void test_threadpool_sized_to_ticks(void **state)
{
    (void)state;
    char log[256];
    snprintf(log, sizeof log, "%s/router-ticks.log", dir);
    int port = proc_free_port();
    pid_t pid = start_router_args(port, log, "--ticks", "8", (char *)NULL);
    cJSON_Delete(sample_ok("{\"n\": 1, \"steps\": 2}")); /* both pools started */
    httpc *c = client_at(port);
    httpc_response r;
    assert_int_equal(post_json(c, "{\"n\": 1, \"steps\": 2}", &r), 200);
    httpc_response_free(&r);
    httpc_close(c);
    int more = count_threads(pid) - count_threads(router_pid);
    if (more < 6)
        fail_msg("--ticks 8 runs %d threads more than --ticks 2, expected 6", more);
    int st = proc_stop(pid, SIGTERM, 10000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

typedef struct stop_load {
    int port;
    volatile int stop;
    int ok, unavailable, other, no_answer;
    char other_body[256];
} stop_load;

static void *stop_load_thread(void *arg)
{
    stop_load *l = arg;
    while (!l->stop) {
        char hp[64], err[128];
        snprintf(hp, sizeof hp, "127.0.0.1:%d", l->port);
        httpc *c;
        if (httpc_open(hp, 20000, &c, err, sizeof err))
            break;
        httpc_response r;
        int st = post_json(c, "{\"n\": 256, \"steps\": 1, \"strategy\": \"top-1\"}", &r);
        if (st == 200)
            __sync_fetch_and_add(&l->ok, 1);
        else if (st == 503 && strstr(r.body, "shutting_down"))
            __sync_fetch_and_add(&l->unavailable, 1);
        else if (st < 0)
            __sync_fetch_and_add(&l->no_answer, 1);
        else {
            __sync_fetch_and_add(&l->other, 1);
            snprintf(l->other_body, sizeof l->other_body, "%d %s", st, r.body ? r.body : "");
        }
        if (st >= 0)
            httpc_response_free(&r);
        httpc_close(c);
        if (st < 0)
            break; /* the router is gone */
    }
    return NULL;
}

/* Two signals while responses are being encoded: the router stops at once,
 * cleanly (it once freed the trajectories an encoder was reading: a
 * heap-use-after-free under ASan, make SANITIZE=1 test), exit 0. */
static void test_stop_now_while_encoding(void **state)
{
    (void)state;
    char log[256];
    snprintf(log, sizeof log, "%s/router-stop.log", dir);
    int port = proc_free_port();
    pid_t pid = start_router_args(port, log, "--max-images", "4096", (char *)NULL);
    stop_load l = { .port = port };
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, stop_load_thread, &l);
    while (l.ok < 8)
        usleep(20000);
    kill(pid, SIGTERM);
    usleep(1000);
    kill(pid, SIGTERM);
    int st = proc_wait(pid, 15000);
    l.stop = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        proc_dump_log(log);
        fail_msg("router did not exit 0 (status 0x%x)", st);
    }
    if (l.other)
        fail_msg("%d answers neither 200 nor 503 shutting_down, e.g. %s", l.other, l.other_body);
}

static void test_sigterm_drains(void **state)
{
    (void)state;
    /* a request in flight when SIGTERM arrives is still answered */
    httpc *c = client();
    const char *req = "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 31\r\n\r\n{\"n\": 4, \"steps\": 60, \"seed\":1}";
    assert_int_equal(httpc_send_raw(c, req, strlen(req)), 0);
    usleep(30000);
    kill(router_pid, SIGTERM);
    httpc_response r;
    assert_int_equal(httpc_read_response(c, 0, &r), 0);
    assert_int_equal(r.status, 200);
    httpc_response_free(&r);
    httpc_close(c);
    int st = proc_wait(router_pid, 10000);
    router_pid = -1;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_health_ready_experts),
        cmocka_unit_test(test_every_strategy),
        cmocka_unit_test(test_seeds_formats_and_in_process),
        cmocka_unit_test(test_label_guidance_and_png),
        cmocka_unit_test(test_malformed_requests),
        cmocka_unit_test(test_exact_values),
        cmocka_unit_test(test_hostile_connections),
        cmocka_unit_test(test_replica_killed_under_load),
        cmocka_unit_test(test_only_replica_killed_then_restarted),
        cmocka_unit_test(test_handshake_refuses_wrong_worker),
        cmocka_unit_test(test_bad_flags_and_files),
        cmocka_unit_test(test_idle_connection_flood),
        cmocka_unit_test(test_cost_cap_setting),
        cmocka_unit_test(test_auth_tokens),
        cmocka_unit_test(test_drain_limit_answers_503),
        cmocka_unit_test(test_threadpool_sized_to_ticks),
        cmocka_unit_test(test_stop_now_while_encoding),
        cmocka_unit_test(test_sigterm_drains),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
