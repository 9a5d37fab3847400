/* test_identity.c -- the router never trusts a worker blindly: real ddm-router
 * and ddm-expert processes on loopback beside fake workers (threads with their
 * own raw REP sockets, tests/support/fakeworker.h) that claim an identity they
 * do not have or answer garbage. Covers weights pins and trust on first use,
 * a fake that binds a dead replica's address, per-reply checks (NaN, wrong
 * length) that take only that replica out, protocol versions, the cluster key
 * (HMAC), and a worker's log under a flood of garbage. */
#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/hmac.h"
#include "common/nnuv.h"
#include "common/png.h"
#include "common/sha256.h"
#include "ddm/v1/worker.pb-c.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/fakeworker.h"
#include "tests/support/images.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define K 2
#define DIM 16
#define CLASSES 3
#define MAXP 8

static char dir[128];
static char hash[K][SHA256_HEX_SIZE]; /* sha256 of expert-k.safetensors */
static char keyfile[256];

/* Processes and fakes of the current test, stopped by cleanup(). */
static pid_t pids[MAXP];
static int npids;
static fake_worker *fakes[MAXP];
static int nfakes;
static int seq; /* unique names */

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (toyset_tempdir(dir, sizeof dir, "test-identity") || toyset_write(dir, K, DIM, CLASSES, 5))
        return -1;
    for (int k = 0; k < K; k++) {
        char path[256];
        snprintf(path, sizeof path, "%s/expert-%d.safetensors", dir, k);
        FILE *f = fopen(path, "rb");
        if (!f)
            return -1;
        static uint8_t buf[1 << 22];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        sha256_hex(buf, n, hash[k]);
    }
    snprintf(keyfile, sizeof keyfile, "%s/cluster.key", dir);
    FILE *f = fopen(keyfile, "w");
    if (!f)
        return -1;
    fputs("a shared secret of the test cluster\n", f);
    fclose(f);
    chmod(keyfile, 0600);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (getenv("DDM_KEEP_LOGS"))
        fprintf(stderr, "logs kept in %s\n", dir);
    else
        toyset_rmdir(dir);
    return 0;
}

/* Stops everything the test started (also when it failed half-way). */
static int cleanup(void **state)
{
    (void)state;
    for (int i = 0; i < nfakes; i++)
        fake_worker_stop(fakes[i]);
    nfakes = 0;
    for (int i = 0; i < npids; i++)
        if (pids[i] > 0)
            proc_stop(pids[i], SIGTERM, 5000);
    npids = 0;
    return 0;
}

/* ---- helpers ----------------------------------------------------------------------- */

static void path_of(char *buf, size_t len, const char *what)
{
    snprintf(buf, len, "%s/%s-%d", dir, what, ++seq);
}

static void tcp_url(char *buf, size_t len)
{
    snprintf(buf, len, "tcp://127.0.0.1:%d", proc_free_port());
}

static pid_t start_worker(int k, const char *url, const char *key, char *log, size_t loglen)
{
    char bin[256], weights[256];
    snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", dir, k);
    path_of(log, loglen, "worker.log");
    char *argv[12] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights", weights,
                       "--listen", (char *)url, "--max-delay-us", "0" };
    int a = 7;
    if (key) {
        argv[a++] = "--cluster-key-file";
        argv[a++] = (char *)key;
    }
    argv[a] = NULL;
    pid_t pid = proc_start(argv, log);
    assert_true(pid > 0);
    pids[npids++] = pid;
    return pid;
}

/* Starts a router on conf (written from text) and waits for /healthz. */
static int start_router(const char *text, const char *key, char *log, size_t loglen, pid_t *pid)
{
    char conf[256], bin[256], listen[64];
    path_of(conf, sizeof conf, "cluster.conf");
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models %s\n%s", dir, text);
    fclose(f);
    path_of(log, loglen, "router.log");
    int port = proc_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    char *argv[12] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf,
                       "--listen", listen, "--expert-timeout-ms", "1000" };
    int a = 7;
    if (key) {
        argv[a++] = "--cluster-key-file";
        argv[a++] = (char *)key;
    }
    argv[a] = NULL;
    *pid = proc_start(argv, log);
    assert_true(*pid > 0);
    pids[npids++] = *pid;
    if (proc_wait_http(port, "/healthz", 200, 10000)) {
        proc_dump_log(log);
        fail_msg("router did not start");
    }
    return port;
}

static fake_worker *start_fake(const char *url, int expert, const char *sha, const char *ver,
                               fake_mode mode)
{
    fake_config c = { .url = url, .expert_id = expert, .dim = DIM, .n_classes = CLASSES,
                      .n_experts = K, .max_batch = 64, .sha256 = sha,
                      .protocol_version = ver, .mode = mode };
    char err[256];
    fake_worker *f = fake_worker_start(&c, err, sizeof err);
    if (!f)
        fail_msg("%s", err);
    fakes[nfakes++] = f;
    return f;
}

static int http(int port, const char *method, const char *path, const char *body,
                httpc_response *r)
{
    char hp[64], err[128];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    httpc *c;
    assert_int_equal(httpc_open(hp, 20000, &c, err, sizeof err), 0);
    httpc_header h[] = { { "Content-Type", "application/json" } };
    int rc = httpc_request(c, method, path, h, body ? 1 : 0, body, body ? strlen(body) : 0, r);
    httpc_close(c);
    return rc ? rc : r->status;
}

static int sample(int port, const char *body, httpc_response *r)
{
    return http(port, "POST", "/v1/samples", body, r);
}

/* State of replica url of expert k in /v1/experts ("" if not listed), and
 * the expert's failure count. */
static void replica_state(int port, int k, const char *url, char *state, size_t len,
                          long *failures)
{
    httpc_response r;
    state[0] = 0;
    if (http(port, "GET", "/v1/experts", NULL, &r) != 200) {
        httpc_response_free(&r);
        return;
    }
    cJSON *root = cJSON_Parse(r.body);
    httpc_response_free(&r);
    assert_non_null(root);
    cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "experts"), k);
    if (failures)
        *failures = (long)cJSON_GetObjectItem(e, "failures")->valuedouble;
    cJSON *reps = cJSON_GetObjectItem(e, "replicas");
    for (int i = 0; url && i < cJSON_GetArraySize(reps); i++) {
        cJSON *rp = cJSON_GetArrayItem(reps, i);
        if (!strcmp(cJSON_GetObjectItem(rp, "url")->valuestring, url))
            snprintf(state, len, "%s", cJSON_GetObjectItem(rp, "state")->valuestring);
    }
    cJSON_Delete(root);
}

/* A number from /v1/experts: field of expert k, or (url not NULL) of its
 * replica url; -1 when absent. */
static long experts_num(int port, int k, const char *url, const char *field)
{
    httpc_response r;
    long v = -1;
    assert_int_equal(http(port, "GET", "/v1/experts", NULL, &r), 200);
    cJSON *root = cJSON_Parse(r.body);
    httpc_response_free(&r);
    assert_non_null(root);
    cJSON *o = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "experts"), k);
    cJSON *reps = cJSON_GetObjectItem(o, "replicas");
    for (int i = 0; url && i < cJSON_GetArraySize(reps); i++) {
        cJSON *rp = cJSON_GetArrayItem(reps, i);
        o = !strcmp(cJSON_GetObjectItem(rp, "url")->valuestring, url) ? rp : o;
    }
    cJSON *f = cJSON_GetObjectItem(o, field);
    if (cJSON_IsNumber(f))
        v = (long)f->valuedouble;
    cJSON_Delete(root);
    return v;
}

static long failures_of(int port, int k)
{
    char st[32];
    long f = -1;
    replica_state(port, k, NULL, st, sizeof st, &f);
    return f;
}

/* Waits (up to 15 s) until replica url of expert k is in state want. */
static void wait_state(int port, int k, const char *url, const char *want, const char *log)
{
    char st[32] = "";
    for (int i = 0; i < 300; i++) {
        replica_state(port, k, url, st, sizeof st, NULL);
        if (!strcmp(st, want))
            return;
        usleep(50000);
    }
    proc_dump_log(log);
    fail_msg("expert %d replica %s is \"%s\", not \"%s\"", k, url, st, want);
}

/* 1 if one line of the file holds every one of the strings (NULL-terminated). */
static int log_has(const char *path, ...)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        va_list ap;
        va_start(ap, path);
        found = 1;
        for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
            if (!strstr(line, s))
                found = 0;
        va_end(ap);
    }
    fclose(f);
    return found;
}

static void assert_log_has(const char *path, const char *a, const char *b, const char *c)
{
    if (!log_has(path, a, b, c, (const char *)NULL)) {
        proc_dump_log(path);
        fail_msg("%s has no line with \"%s\", \"%s\" and \"%s\"", path, a, b ? b : "",
                 c ? c : "");
    }
}

/* Decodes the PNGs of a JSON response into pix [n][DIM]. */
static int images(const char *body, uint8_t *pix, int max)
{
    cJSON *root = cJSON_Parse(body);
    assert_non_null(root);
    int n = images_from_json(root, pix, max, DIM);
    cJSON_Delete(root);
    assert_true(n >= 0);
    return n;
}

/* The served images of body equal in-process sampling (to one 8-bit level). */
static void check_in_process(const char *resp, int n, int steps, uint64_t seed, const char *strat)
{
    uint8_t got[8 * DIM];
    assert_int_equal(images(resp, got, 8), n);
    char err[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    assert_non_null(e);
    sample_params p;
    sample_params_default(&p, K);
    p.n = n, p.steps = steps, p.seed = seed;
    assert_int_equal(strategy_parse(strat, K, 0.5f, 1.0f, &p.strat, err, sizeof err), 0);
    float x[8 * DIM];
    assert_int_equal(ensemble_sample(e, &p, x, NULL, NULL), 0);
    uint8_t ref[8 * (DIM + PNGIO_GRID_SEP)];
    pngio_grid_render(x, n, DIM, 1, n, ref);
    for (int i = 0; i < n; i++)
        for (int d = 0; d < DIM; d++)
            if (abs((int)got[i * DIM + d] - (int)ref[i * (DIM + PNGIO_GRID_SEP) + d]) > 1)
                fail_msg("image %d pixel %d: served %d, in-process %d", i, d, got[i * DIM + d],
                         ref[i * (DIM + PNGIO_GRID_SEP) + d]);
    ensemble_close(e);
}

static const char *fake_hash(char c)
{
    static char h[4][65];
    static int i;
    char *s = h[i++ % 4];
    memset(s, c, 64);
    s[64] = 0;
    return s;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* A worker pinned in the cluster file and a fake claiming that expert with
 * other weights: refused with a log line naming the URL, the pin and the
 * hash it got; it gets no work and the expert is not ready. */
static void test_pinned_impostor_refused(void **state)
{
    (void)state;
    char u0[200], uf[128], wlog[256], rlog[256], conf[1024];
    snprintf(u0, sizeof u0, "ipc://%s/p0-%d.ipc", dir, seq);
    tcp_url(uf, sizeof uf);
    start_worker(0, u0, NULL, wlog, sizeof wlog);
    const char *bogus = fake_hash('f');
    fake_worker *f = start_fake(uf, 1, bogus, "1.0", FAKE_ZEROS);
    snprintf(conf, sizeof conf, "expert 0 %s sha256=%s\nexpert 1 %s sha256=%s\n", u0, hash[0],
             uf, hash[1]);
    pid_t rp;
    int port = start_router(conf, NULL, rlog, sizeof rlog, &rp);
    wait_state(port, 0, u0, "up", rlog);
    wait_state(port, 1, uf, "refused", rlog);
    assert_log_has(rlog, uf, hash[1], bogus);
    httpc_response r;
    int st = sample(port, "{\"n\": 2, \"steps\": 3, \"strategy\": \"expert:1\"}", &r);
    if (st == 200 || !strstr(r.body, "expert 1"))
        fail_msg("expert:1 with only a fake replica: %d %s", st, r.body);
    httpc_response_free(&r);
    assert_int_equal(http(port, "GET", "/readyz", NULL, &r), 503);
    httpc_response_free(&r);
    assert_int_equal(fake_worker_denoise_count(f), 0);
    assert_int_equal(sample(port, "{\"n\": 2, \"steps\": 3, \"strategy\": \"expert:0\"}", &r), 200);
    httpc_response_free(&r);
}

/* Without pins the first hash an expert's replicas declared is trusted: a
 * second replica claiming other weights is refused and gets no work while
 * the real one serves. */
static void test_tofu_impostor_refused(void **state)
{
    (void)state;
    char u0[128], u1[128], uf[128], wlog[256], rlog[256], conf[1024];
    tcp_url(u0, sizeof u0);
    tcp_url(u1, sizeof u1);
    tcp_url(uf, sizeof uf);
    start_worker(0, u0, NULL, wlog, sizeof wlog);
    start_worker(1, u1, NULL, wlog, sizeof wlog);
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\nexpert 1 %s\n", u0, u1, uf);
    pid_t rp;
    int port = start_router(conf, NULL, rlog, sizeof rlog, &rp);
    wait_state(port, 1, u1, "up", rlog);
    const char *bogus = fake_hash('e');
    fake_worker *f = start_fake(uf, 1, bogus, "1.0", FAKE_ZEROS);
    wait_state(port, 1, uf, "refused", rlog);
    assert_log_has(rlog, uf, hash[1], bogus);
    for (int i = 0; i < 4; i++) {
        httpc_response r;
        assert_int_equal(sample(port, "{\"n\": 3, \"steps\": 4, \"seed\": 9, \"strategy\": \"expert:1\"}", &r), 200);
        check_in_process(r.body, 3, 4, 9, "expert:1");
        httpc_response_free(&r);
    }
    assert_int_equal(fake_worker_denoise_count(f), 0);
}

/* The hostile review's case: the only replica of an expert dies and a fake
 * binds its address; nanomsg reconnects the router's pipe to it silently.
 * The router must re-check identity on the new pipe and refuse it: no 200
 * with the fake's (black) images, no work sent to it. Expert 0 is pinned,
 * expert 1 trusted on first use. */
static void test_fake_binds_dead_replica_address(void **state)
{
    (void)state;
    char u0[128], u1[128], wlog[256], rlog[256], conf[1024];
    tcp_url(u0, sizeof u0);
    tcp_url(u1, sizeof u1);
    pid_t w0 = start_worker(0, u0, NULL, wlog, sizeof wlog);
    pid_t w1 = start_worker(1, u1, NULL, wlog, sizeof wlog);
    snprintf(conf, sizeof conf, "expert 0 %s sha256=%s\nexpert 1 %s\n", u0, hash[0], u1);
    pid_t rp;
    int port = start_router(conf, NULL, rlog, sizeof rlog, &rp);
    assert_int_equal(proc_wait_http(port, "/readyz", 200, 10000), 0);
    httpc_response r;
    assert_int_equal(sample(port, "{\"n\": 2, \"steps\": 3, \"strategy\": \"full\"}", &r), 200);
    httpc_response_free(&r);

    kill(w0, SIGKILL);
    kill(w1, SIGKILL);
    proc_wait(w0, 5000);
    proc_wait(w1, 5000);
    const char *b0 = fake_hash('d'), *b1 = fake_hash('c');
    fake_worker *f0 = start_fake(u0, 0, b0, "1.0", FAKE_ZEROS);
    fake_worker *f1 = start_fake(u1, 1, b1, "1.0", FAKE_ZEROS);
    /* the router's pipes reconnect and it asks the newcomers who they are */
    for (int i = 0; i < 200 && (!fake_worker_info_count(f0) || !fake_worker_info_count(f1)); i++)
        usleep(50000);
    assert_true(fake_worker_info_count(f0) > 0 && fake_worker_info_count(f1) > 0);
    for (int k = 0; k < K; k++) {
        char body[128];
        snprintf(body, sizeof body, "{\"n\": 2, \"steps\": 3, \"strategy\": \"expert:%d\"}", k);
        int st = sample(port, body, &r);
        char want[32];
        snprintf(want, sizeof want, "expert %d", k);
        if (st == 200 || !strstr(r.body, want))
            fail_msg("expert %d served by a fake: %d %s", k, st, r.body);
        httpc_response_free(&r);
    }
    wait_state(port, 0, u0, "refused", rlog);
    wait_state(port, 1, u1, "refused", rlog);
    assert_log_has(rlog, u0, hash[0], b0);
    assert_log_has(rlog, u1, hash[1], b1);
    assert_int_equal(fake_worker_denoise_count(f0), 0);
    assert_int_equal(fake_worker_denoise_count(f1), 0);
}

/* Replicas that pass the handshake (they claim the right hash) but answer
 * NaN or the wrong length: each is taken out of rotation with a log line
 * naming it and the reason, the requests are served by the healthy replica,
 * and no expert's failure counter moves. */
static void test_bad_replies_take_replica_out(void **state)
{
    (void)state;
    char u0[128], u1[128], un[128], us[128], wlog[256], rlog[256], conf[1024];
    tcp_url(u0, sizeof u0);
    tcp_url(u1, sizeof u1);
    tcp_url(un, sizeof un);
    tcp_url(us, sizeof us);
    start_worker(0, u0, NULL, wlog, sizeof wlog);
    start_worker(1, u1, NULL, wlog, sizeof wlog);
    fake_worker *fn = start_fake(un, 1, hash[1], "1.0", FAKE_NAN);
    fake_worker *fs = start_fake(us, 1, hash[1], "1.0", FAKE_SHORT);
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\nexpert 1 %s\nexpert 1 %s\n", u0, un,
             us, u1);
    pid_t rp;
    int port = start_router(conf, NULL, rlog, sizeof rlog, &rp);
    wait_state(port, 1, u1, "up", rlog);
    wait_state(port, 1, un, "up", rlog);
    wait_state(port, 1, us, "up", rlog);
    for (int i = 0; i < 6; i++) {
        httpc_response r;
        int st = sample(port, "{\"n\": 4, \"steps\": 5, \"seed\": 3, \"strategy\": \"expert:1\"}", &r);
        if (st != 200) {
            proc_dump_log(rlog);
            fail_msg("request %d: %d %s", i, st, r.body);
        }
        check_in_process(r.body, 4, 5, 3, "expert:1");
        httpc_response_free(&r);
    }
    assert_true(fake_worker_denoise_count(fn) >= 1);
    assert_true(fake_worker_denoise_count(fs) >= 1);
    assert_log_has(rlog, "expert 1", un, "not finite");
    assert_log_has(rlog, "expert 1", us, "bytes");
    char st[32];
    replica_state(port, 1, un, st, sizeof st, NULL);
    assert_string_equal(st, "quarantined");
    replica_state(port, 1, us, st, sizeof st, NULL);
    assert_string_equal(st, "quarantined");
    assert_int_equal(failures_of(port, 0), 0);
    assert_int_equal(failures_of(port, 1), 0);
    assert_false(log_has(rlog, "expert 0", "not finite", (const char *)NULL));
    /* counted per replica and per expert, in /v1/experts and /metrics */
    long bad = experts_num(port, 1, NULL, "bad_replies");
    assert_true(experts_num(port, 1, un, "bad_replies") >= 1);
    assert_true(experts_num(port, 1, us, "bad_replies") >= 1);
    assert_int_equal(experts_num(port, 1, u1, "bad_replies"), 0);
    assert_int_equal(experts_num(port, 1, un, "bad_replies") +
                     experts_num(port, 1, us, "bad_replies"), bad);
    assert_int_equal(experts_num(port, 0, NULL, "bad_replies"), 0);
    assert_true(experts_num(port, 1, u1, "messages") >= 1);
    httpc_response m;
    assert_int_equal(http(port, "GET", "/metrics", NULL, &m), 200);
    char line[96];
    snprintf(line, sizeof line, "\nddm_expert_bad_replies_total{expert=\"1\"} %ld\n", bad);
    if (!strstr(m.body, line) || !strstr(m.body, "\nddm_expert_bad_replies_total{expert=\"0\"} 0\n"))
        fail_msg("/metrics lacks%s:\n%s", line, m.body);
    httpc_response_free(&m);
}

/* The NaN replica is the expert's only one: 503 naming that expert, for a
 * request that calls only it and for one that calls every expert; the
 * other expert is never blamed. */
static void test_bad_only_replica_fails_naming_it(void **state)
{
    (void)state;
    char u0[128], un[128], wlog[256], rlog[256], conf[1024];
    tcp_url(u0, sizeof u0);
    tcp_url(un, sizeof un);
    start_worker(0, u0, NULL, wlog, sizeof wlog);
    start_fake(un, 1, hash[1], "1.0", FAKE_NAN);
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\n", u0, un);
    pid_t rp;
    int port = start_router(conf, NULL, rlog, sizeof rlog, &rp);
    wait_state(port, 1, un, "up", rlog);
    wait_state(port, 0, u0, "up", rlog);
    const char *bodies[] = { "{\"n\": 2, \"steps\": 3, \"strategy\": \"full\"}",
                             "{\"n\": 2, \"steps\": 3, \"strategy\": \"expert:1\"}" };
    for (int i = 0; i < 2; i++) {
        httpc_response r;
        int st = sample(port, bodies[i], &r);
        if (st != 503 || !strstr(r.body, "expert 1") || strstr(r.body, "expert 0"))
            fail_msg("%s -> %d %s", bodies[i], st, r.body);
        httpc_response_free(&r);
    }
    assert_int_equal(failures_of(port, 0), 0);
    assert_false(log_has(rlog, "expert 0", "not finite", (const char *)NULL));
    assert_log_has(rlog, "expert 1", un, "not finite");
    httpc_response r;
    assert_int_equal(sample(port, "{\"n\": 1, \"steps\": 3, \"strategy\": \"expert:0\"}", &r), 200);
    httpc_response_free(&r);
}

/* A worker speaking protocol 2.x, or not saying which, is refused with a
 * log line naming its URL. */
static void test_protocol_major_refused(void **state)
{
    (void)state;
    char u0[128], u1[128], wlog[256], rlog[256], conf[1024];
    tcp_url(u0, sizeof u0);
    tcp_url(u1, sizeof u1);
    fake_worker *f0 = start_fake(u0, 0, hash[0], NULL, FAKE_ZEROS);
    fake_worker *f1 = start_fake(u1, 1, hash[1], "2.0", FAKE_ZEROS);
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\n", u0, u1);
    pid_t rp;
    int port = start_router(conf, NULL, rlog, sizeof rlog, &rp);
    wait_state(port, 1, u1, "refused", rlog);
    wait_state(port, 0, u0, "refused", rlog);
    assert_log_has(rlog, u1, "protocol", "2.0");
    assert_log_has(rlog, u0, "protocol", NULL);
    httpc_response r;
    assert_int_equal(sample(port, "{\"n\": 1, \"steps\": 2, \"strategy\": \"expert:1\"}", &r), 503);
    httpc_response_free(&r);
    assert_int_equal(fake_worker_denoise_count(f0) + fake_worker_denoise_count(f1), 0);
    (void)wlog;
}

/* A raw REQ client: sends one packed WorkerRequest (with a MAC trailer
 * under key when key is not NULL) and returns the decoded reply. */
static Ddm__V1__WorkerReply *raw_request(const char *url, const hmac_key *key, int denoise)
{
    int s = nn_socket(AF_SP, NN_REQ);
    int timeo = 5000;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &timeo, sizeof timeo);
    assert_true(nn_connect(s, url) >= 0);
    float x[DIM] = { 0.5f };
    Ddm__V1__DenoiseRequest d = DDM__V1__DENOISE_REQUEST__INIT;
    d.has_id = 1, d.id = 77;
    d.has_t = 1, d.t = 0.5f;
    d.has_dim = 1, d.dim = DIM;
    d.has_batch = 1, d.batch = 1;
    d.has_x = 1, d.x.data = (uint8_t *)x, d.x.len = sizeof x;
    Ddm__V1__InfoRequest in = DDM__V1__INFO_REQUEST__INIT;
    in.has_id = 1, in.id = 78;
    Ddm__V1__WorkerRequest w = DDM__V1__WORKER_REQUEST__INIT;
    if (denoise) {
        w.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
        w.denoise = &d;
    } else {
        w.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
        w.info = &in;
    }
    uint8_t buf[1024];
    size_t len = ddm__v1__worker_request__pack(&w, buf);
    if (key) {
        hmac_trailer_req(key, buf, len, buf + len);
        len += HMAC_TRAILER_SIZE;
    }
    assert_int_equal(nn_send(s, buf, len, 0), (int)len);
    void *reply = NULL;
    int n = nn_recv(s, &reply, NN_MSG, 0);
    assert_true(n > 0);
    Ddm__V1__WorkerReply *r = ddm__v1__worker_reply__unpack(NULL, (size_t)n, reply);
    nn_freemsg(reply);
    nn_close(s);
    assert_non_null(r);
    return r;
}

/* With a cluster key: a keyless fake claiming the right identity gets no
 * work and is refused; clients without the key (or with another) get an
 * error from a keyed worker, which computes nothing for them; a keyless
 * router refuses keyed workers; and the images are bit-identical to a
 * keyless cluster's. */
static void test_cluster_key(void **state)
{
    (void)state;
    char u0[128], u1[128], uf[128], p0[128], p1[128], wlog[256], rlog[256], rlog2[256];
    char conf[1024];
    tcp_url(u0, sizeof u0);
    tcp_url(u1, sizeof u1);
    tcp_url(uf, sizeof uf);
    tcp_url(p0, sizeof p0);
    tcp_url(p1, sizeof p1);
    start_worker(0, u0, keyfile, wlog, sizeof wlog);
    start_worker(1, u1, keyfile, wlog, sizeof wlog);
    fake_worker *f = start_fake(uf, 1, hash[1], "1.0", FAKE_ZEROS);
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\nexpert 1 %s\n", u0, uf, u1);
    pid_t rp;
    int port = start_router(conf, keyfile, rlog, sizeof rlog, &rp);
    wait_state(port, 0, u0, "up", rlog);
    wait_state(port, 1, u1, "up", rlog);
    wait_state(port, 1, uf, "refused", rlog);
    assert_log_has(rlog, uf, "MAC", NULL);
    const char *req = "{\"n\": 4, \"steps\": 6, \"seed\": 11, \"strategy\": \"top-2\"}";
    httpc_response keyed;
    assert_int_equal(sample(port, req, &keyed), 200);
    assert_int_equal(fake_worker_denoise_count(f), 0);

    /* the same request on a keyless cluster: the same bytes */
    start_worker(0, p0, NULL, wlog, sizeof wlog);
    start_worker(1, p1, NULL, wlog, sizeof wlog);
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\n", p0, p1);
    pid_t rp2;
    int port2 = start_router(conf, NULL, rlog2, sizeof rlog2, &rp2);
    assert_int_equal(proc_wait_http(port2, "/readyz", 200, 10000), 0);
    httpc_response plain;
    assert_int_equal(sample(port2, req, &plain), 200);
    cJSON *a = cJSON_Parse(keyed.body), *b = cJSON_Parse(plain.body);
    char *ia = cJSON_PrintUnformatted(cJSON_GetObjectItem(a, "images"));
    char *ib = cJSON_PrintUnformatted(cJSON_GetObjectItem(b, "images"));
    assert_string_equal(ia, ib);
    free(ia);
    free(ib);
    cJSON_Delete(a);
    cJSON_Delete(b);
    httpc_response_free(&keyed);
    httpc_response_free(&plain);

    /* clients without the key, or with another one */
    hmac_key wrong, right;
    hmac_key_set(&wrong, "another secret, not the cluster's", 33);
    char err[256];
    assert_int_equal(hmac_key_load(keyfile, &right, err, sizeof err), 0);
    const hmac_key *keys[] = { NULL, &wrong };
    for (int i = 0; i < 2; i++)
        for (int denoise = 0; denoise < 2; denoise++) {
            Ddm__V1__WorkerReply *r = raw_request(u1, keys[i], denoise);
            if (r->kind_case != DDM__V1__WORKER_REPLY__KIND_ERROR || !r->error->message ||
                !strstr(r->error->message, "MAC"))
                fail_msg("keyed worker answered a %s request %s the key with kind %d",
                         denoise ? "denoise" : "info", i ? "under another" : "without",
                         r->kind_case);
            assert_false(r->has_mac);
            ddm__v1__worker_reply__free_unpacked(r, NULL);
        }
    /* the right key gets a real answer */
    Ddm__V1__WorkerReply *r = raw_request(u1, &right, 1);
    assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
    assert_true(r->has_mac);
    ddm__v1__worker_reply__free_unpacked(r, NULL);

    /* a keyless router cannot use keyed workers */
    snprintf(conf, sizeof conf, "expert 0 %s\nexpert 1 %s\n", u0, u1);
    pid_t rp3;
    char rlog3[256];
    int port3 = start_router(conf, NULL, rlog3, sizeof rlog3, &rp3);
    wait_state(port3, 1, u1, "refused", rlog3);
    assert_log_has(rlog3, u1, "MAC", NULL);

    /* a router under another key: refused, and the log says the keys differ */
    char otherkey[256], rlog4[256];
    snprintf(otherkey, sizeof otherkey, "%s/other.key", dir);
    FILE *kf = fopen(otherkey, "w");
    assert_non_null(kf);
    fputs("another cluster key, 32 bytes ok\n", kf);
    fclose(kf);
    chmod(otherkey, 0600);
    pid_t rp4;
    int port4 = start_router(conf, otherkey, rlog4, sizeof rlog4, &rp4);
    wait_state(port4, 1, u1, "refused", rlog4);
    assert_log_has(rlog4, u1, "is not the router's", NULL);
}

/* Thousands of garbage messages a second: the worker answers each (with an
 * error) but its log grows by a bounded number of lines, and says how many
 * it left out. */
static void test_worker_log_flood(void **state)
{
    (void)state;
    char u[128], wlog[256];
    tcp_url(u, sizeof u);
    start_worker(0, u, NULL, wlog, sizeof wlog);
    int s = nn_socket(AF_SP_RAW, NN_REQ);
    assert_true(s >= 0);
    int big = 16 << 20;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDBUF, &big, sizeof big);
    assert_true(nn_connect(s, u) >= 0);
    /* wait for the worker to listen */
    int timeo = 200;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &timeo, sizeof timeo);
    double t0 = proc_now_s();
    int sent = 0;
    enum { N = 20000 };
    uint8_t junk[32];
    memset(junk, 0xff, sizeof junk); /* not a protobuf */
    while (sent < N && proc_now_s() - t0 < 20) {
        void *body = nn_allocmsg(sizeof junk, 0);
        memcpy(body, junk, sizeof junk);
        nnuv_hdr hdr;
        nnuv_hdr_set_id(&hdr, (uint32_t)sent & 0xffff);
        if (nnuv_sendmsg(s, NN_DONTWAIT, body, &hdr) < 0) {
            nn_freemsg(body);
            /* drain replies so that the worker's replies do not pile up */
            void *rep;
            if (nn_recv(s, &rep, NN_MSG, NN_DONTWAIT) > 0)
                nn_freemsg(rep);
            usleep(100);
            continue;
        }
        sent++;
        void *rep;
        while (nn_recv(s, &rep, NN_MSG, NN_DONTWAIT) > 0)
            nn_freemsg(rep);
    }
    /* the last replies: every message was answered */
    long answered = 0;
    void *rep;
    for (int n; (n = nn_recv(s, &rep, NN_MSG, 0)) > 0;) {
        answered++;
        nn_freemsg(rep);
    }
    double secs = proc_now_s() - t0;
    nn_close(s);
    usleep(1600000); /* a window has ended: the summary line is out */
    FILE *f = fopen(wlog, "r");
    assert_non_null(f);
    long lines = 0;
    char line[2048];
    int summary = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        summary |= strstr(line, "suppressed") != NULL;
    }
    fclose(f);
    /* 10 lines per second and call site, a summary per window, start-up lines */
    long bound = (long)(12 * (secs + 3)) + 10;
    if (lines > bound)
        fail_msg("%d garbage messages in %.1f s grew the worker's log by %ld lines (bound %ld)",
                 sent, secs, lines, bound);
    assert_true(sent > 1000);
    assert_true(summary);
    (void)answered;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_pinned_impostor_refused, cleanup),
        cmocka_unit_test_teardown(test_tofu_impostor_refused, cleanup),
        cmocka_unit_test_teardown(test_fake_binds_dead_replica_address, cleanup),
        cmocka_unit_test_teardown(test_bad_replies_take_replica_out, cleanup),
        cmocka_unit_test_teardown(test_bad_only_replica_fails_naming_it, cleanup),
        cmocka_unit_test_teardown(test_protocol_major_refused, cleanup),
        cmocka_unit_test_teardown(test_cluster_key, cleanup),
        cmocka_unit_test_teardown(test_worker_log_flood, cleanup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
