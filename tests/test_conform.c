/* test_conform.c -- ddm-client conform end to end: it passes against the real
 * ddm-expert (ipc and tcp, with and without --weights) and against a minimal
 * cooked-REP worker written here from docs/protocol.md; it fails, naming the
 * failed checks and within its deadlines, against broken workers: one whose
 * answers hold a NaN, one whose answers are a float short, one that never
 * answers, one that answers only the handshake. Also: its usage errors, and
 * the example bytes of docs/protocol.md (our encoder writes them, ddm-expert
 * answers them, and the SP-over-TCP framing the page describes works with a
 * plain TCP socket).
 *
 * The fake workers are this binary run again as a child process
 * (test_conform --fake-worker MODE URL WEIGHTS), so each has a nanomsg of its
 * own. `test_conform --print-examples` prints the example bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/err.h"
#include "common/hmac.h"
#include "common/model.h"
#include "common/net.h"
#include "common/nnuv.h"
#include "common/st.h"
#include "ddm/v1/worker.pb-c.h"
#include "expert-worker/wire.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/client/wreq.h"

#define FAKE_MAX_BATCH 64
#define RUN_MS 60000      /* a conform run must end within this (it takes a second or two) */

static char g_dir[128];
static char g_weights[256];   /* a small fp16 expert, dim 784 */
static char g_tiny[256];      /* a dim-4 expert for the example bytes */
static char g_uncond[256];    /* an unconditional expert (no classes), dim 784 */
static char g_key[256];       /* a cluster key file */
static char g_key2[256];      /* another key */
static pid_t g_kids[8];
static int g_nkids;
static char g_self[512];      /* this binary, for the fake workers */

static const net_config g_cfg = { .in_dim = 784, .hidden = 32, .n_blocks = 1, .out_dim = 784,
                                  .n_classes = 10, .time_dim = 16, .gauss_rank = 4 };
static const net_config g_tiny_cfg = { .in_dim = 4, .hidden = 8, .n_blocks = 1, .out_dim = 4,
                                       .n_classes = 10, .time_dim = 4, .gauss_rank = 2 };

/* ---- fake workers (child processes) ------------------------------------------------- */

/* unsigned: has the cluster key, checks request MACs and signs its
 * handshake replies, but sends every other reply without a MAC */
enum { FAKE_GOOD, FAKE_NAN, FAKE_SHORT, FAKE_SILENT, FAKE_MUTE, FAKE_UNSIGNED, FAKE_N };
static const char *FAKE_NAMES[] = { "good", "nan", "short", "silent", "mute", "unsigned" };

static hmac_key g_fake_key;      /* the unsigned fake's key */
static uint8_t g_fake_mac[HMAC_SIZE]; /* the MAC of the request being answered */
static int g_fake_sign;          /* sign the next reply */

static void fake_send(int sock, const nnuv_hdr *h, const Ddm__V1__WorkerReply *r)
{
    size_t len = ddm__v1__worker_reply__get_packed_size(r);
    uint8_t *msg = nn_allocmsg(len + (g_fake_sign ? HMAC_TRAILER_SIZE : 0), 0);
    if (!msg)
        return;
    ddm__v1__worker_reply__pack(r, msg);
    if (g_fake_sign)
        hmac_trailer_rep(&g_fake_key, g_fake_mac, msg, len, msg + len);
    if (nnuv_sendmsg(sock, 0, msg, h) < 0)
        nn_freemsg(msg);
}

static void fake_error(int sock, const nnuv_hdr *h, const Ddm__V1__DenoiseRequest *d, int code,
                       const char *msg)
{
    Ddm__V1__Error e = DDM__V1__ERROR__INIT;
    e.has_code = 1;
    e.code = code;
    e.message = (char *)msg;
    Ddm__V1__DenoiseReply dr = DDM__V1__DENOISE_REPLY__INIT;
    Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
    if (d) {
        dr.has_id = d->has_id;
        dr.id = d->id;
        dr.error = &e;
        r.kind_case = DDM__V1__WORKER_REPLY__KIND_DENOISE;
        r.denoise = &dr;
    } else {
        r.kind_case = DDM__V1__WORKER_REPLY__KIND_ERROR;
        r.error = &e;
    }
    fake_send(sock, h, &r);
}

/* A worker in ~100 lines, one request at a time: the good one binds a cooked
 * REP socket (the simplest kind the protocol allows); the broken ones a raw
 * REP socket, echoing the SP header. key: the cluster key file (the unsigned
 * mode). Runs until killed. */
static int fake_main(int mode, const char *url, const char *weights, const char *key)
{
    char err[512];
    if (key && hmac_key_load(key, &g_fake_key, err, sizeof err)) {
        fprintf(stderr, "fake worker: %s\n", err);
        return 1;
    }
    model *m = model_open(weights, err, sizeof err);
    net_scratch *sc = m ? net_scratch_new(&m->cfg, FAKE_MAX_BATCH, 0) : NULL;
    if (!sc) {
        fprintf(stderr, "fake worker: %s\n", m ? "out of memory" : err);
        return 1;
    }
    int D = m->cfg.in_dim;
    float *x = malloc((size_t)FAKE_MAX_BATCH * D * sizeof *x);
    float *v = malloc((size_t)FAKE_MAX_BATCH * D * sizeof *v);
    float t[FAKE_MAX_BATCH];
    int labels[FAKE_MAX_BATCH];
    int sock = nn_socket(mode == FAKE_GOOD ? AF_SP : AF_SP_RAW, NN_REP);
    int unlimited = -1, buf = 8 << 20;
    nn_setsockopt(sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &unlimited, sizeof unlimited);
    nn_setsockopt(sock, NN_SOL_SOCKET, NN_SNDBUF, &buf, sizeof buf);
    if (!x || !v || sock < 0 || nn_bind(sock, url) < 0) {
        fprintf(stderr, "fake worker: cannot serve %s\n", url);
        return 1;
    }
    wire_limits lim = { .dim = D, .max_batch = FAKE_MAX_BATCH, .n_classes = m->cfg.n_classes };
    wire_arena a;
    wire_arena_init(&a);
    for (;;) {
        void *body;
        nnuv_hdr h;
        int n = nnuv_recvmsg(sock, 0, &body, &h);
        if (n < 0)
            continue;
        g_fake_sign = 0;
        if (key) {
            int rc = hmac_trailer_check_req(&g_fake_key, body, (size_t)n, g_fake_mac);
            if (rc) {
                nn_freemsg(body);
                fake_error(sock, &h, NULL, rc, "bad MAC");
                continue;
            }
            n -= HMAC_TRAILER_SIZE;
        }
        wire_arena_reset(&a, 1 << 24);
        Ddm__V1__WorkerRequest *wr;
        int rc = wire_decode(&a, body, (size_t)n, &wr, err, sizeof err);
        nn_freemsg(body);
        if (mode == FAKE_SILENT || (mode == FAKE_MUTE && (rc || wr->kind_case !=
                                                          DDM__V1__WORKER_REQUEST__KIND_INFO)))
            continue;
        if (rc) {
            fake_error(sock, &h, NULL, rc, err);
            continue;
        }
        if (wr->kind_case == DDM__V1__WORKER_REQUEST__KIND_INFO) {
            Ddm__V1__InfoReply i = DDM__V1__INFO_REPLY__INIT;
            i.has_id = wr->info->has_id;
            i.id = wr->info->id;
            i.protocol_version = (char *)WIRE_PROTOCOL_VERSION;
            i.has_expert_id = i.has_dim = i.has_max_batch = i.has_num_classes = 1;
            i.has_num_experts = 1;
            i.expert_id = m->expert_id;
            i.num_experts = (uint32_t)m->num_experts;
            i.dim = (uint32_t)D;
            i.max_batch = FAKE_MAX_BATCH;
            i.num_classes = (uint32_t)m->cfg.n_classes;
            i.weights_sha256 = (char *)st_sha256(m->file);
            i.architecture = (char *)FAKE_NAMES[mode];
            Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
            r.kind_case = DDM__V1__WORKER_REPLY__KIND_INFO;
            r.info = &i;
            g_fake_sign = key != NULL; /* the handshake only */
            fake_send(sock, &h, &r);
            continue;
        }
        if (wr->kind_case != DDM__V1__WORKER_REQUEST__KIND_DENOISE) {
            fake_error(sock, &h, NULL, DDM_EINVAL, "empty WorkerRequest: set denoise or info");
            continue;
        }
        const Ddm__V1__DenoiseRequest *d = wr->denoise;
        if ((rc = wire_check_denoise(d, &lim, err, sizeof err)) < 0) {
            fake_error(sock, &h, d, rc, err);
            continue;
        }
        int b = (int)d->batch;
        wire_le_to_f32(x, d->x.data, (size_t)b * D);
        for (int r = 0; r < b; r++) {
            t[r] = d->n_ts ? d->ts[r] : d->t;
            labels[r] = d->n_labels ? d->labels[r] : -1;
        }
        net_forward(&m->cfg, &m->w, sc, b, x, t, labels, v);
        if (mode == FAKE_NAN)
            v[0] = NAN;
        Ddm__V1__DenoiseReply dr = DDM__V1__DENOISE_REPLY__INIT;
        dr.has_id = d->has_id;
        dr.id = d->id;
        dr.has_v = 1;
        dr.v.data = (uint8_t *)v;
        dr.v.len = (size_t)b * D * sizeof(float) - (mode == FAKE_SHORT ? 4 : 0);
        Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
        r.kind_case = DDM__V1__WORKER_REPLY__KIND_DENOISE;
        r.denoise = &dr;
        fake_send(sock, &h, &r);
    }
}

/* ---- processes ---------------------------------------------------------------------- */

static void add_kid(pid_t pid)
{
    assert_true(pid > 0);
    assert_true(g_nkids < 8);
    g_kids[g_nkids++] = pid;
}

static int test_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < g_nkids; i++)
        proc_stop(g_kids[i], SIGKILL, 2000);
    g_nkids = 0;
    return 0;
}

static void ipc_url(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "ipc://%s/%s.ipc", g_dir, name);
}

/* Waits until something answers an InfoRequest at url (up to 20 s). */
static void wait_handshake(const char *url)
{
    char err[256];
    wreq *c;
    assert_int_equal(wreq_open(url, &c, err, sizeof err), 0);
    Ddm__V1__InfoRequest ir = DDM__V1__INFO_REQUEST__INIT;
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
    wr.info = &ir;
    uint8_t buf[32];
    size_t len = ddm__v1__worker_request__pack(&wr, buf);
    for (int i = 0; i < 100; i++) {
        void *body;
        size_t blen;
        if (wreq_call(c, buf, len, 200, &body, &blen) == 0) {
            nn_freemsg(body);
            wreq_close(c);
            return;
        }
    }
    wreq_close(c);
    fail_msg("nothing answered a handshake at %s within 20 s", url);
}

/* key: a cluster key file, or NULL */
static void start_expert_key(const char *url, const char *weights, const char *max_batch,
                             const char *key)
{
    char bin[256], log[300];
    proc_bin("ddm-expert", bin, sizeof bin);
    snprintf(log, sizeof log, "%s/expert.log", g_dir);
    char *argv[] = { bin, "--weights", (char *)weights, "--listen", (char *)url, "--max-batch",
                     (char *)max_batch, "--log-level", "error", NULL, NULL, NULL };
    if (key) {
        argv[9] = "--cluster-key-file";
        argv[10] = (char *)key;
    }
    add_kid(proc_start(argv, log));
    wait_handshake(url); /* a keyed worker's error reply counts: it is up */
}

static void start_expert_weights(const char *url, const char *weights, const char *max_batch)
{
    start_expert_key(url, weights, max_batch, NULL);
}

static void start_expert(const char *url, const char *max_batch)
{
    start_expert_weights(url, g_weights, max_batch);
}

static void start_fake_key(int mode, const char *url, const char *key)
{
    char log[300];
    snprintf(log, sizeof log, "%s/fake-%s.log", g_dir, FAKE_NAMES[mode]);
    char *argv[] = { g_self, "--fake-worker", (char *)FAKE_NAMES[mode], (char *)url, g_weights,
                     (char *)key, NULL };
    add_kid(proc_start(argv, log));
    if (mode == FAKE_SILENT) { /* nothing to ask: wait for its socket file */
        struct stat st;
        for (int i = 0; i < 400 && stat(url + 6, &st) != 0; i++)
            usleep(50000);
        usleep(100000);
    } else {
        wait_handshake(url);
    }
}

static void start_fake(int mode, const char *url)
{
    start_fake_key(mode, url, NULL);
}

/* Runs ddm-client with args (NULL-terminated) to its exit; its output in out.
 * Returns the exit status. Fails if it runs longer than RUN_MS. */
static int run_client(char *out, size_t outlen, ...)
{
    char bin[256], log[300];
    proc_bin("ddm-client", bin, sizeof bin);
    snprintf(log, sizeof log, "%s/client.log", g_dir);
    unlink(log);
    char *argv[24];
    int n = 0;
    argv[n++] = bin;
    va_list ap;
    va_start(ap, outlen);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 23)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    pid_t pid = proc_start(argv, log);
    assert_true(pid > 0);
    int st = proc_wait(pid, RUN_MS);
    if (st == -1) {
        proc_stop(pid, SIGKILL, 2000);
        proc_dump_log(log);
        fail_msg("ddm-client %s did not finish within %d s", argv[1], RUN_MS / 1000);
    }
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (f) {
        size_t k = fread(out, 1, outlen - 1, f);
        out[k] = 0;
        fclose(f);
    }
    if (!WIFEXITED(st)) {
        fprintf(stderr, "%s\n", out);
        fail_msg("ddm-client did not exit (status %d)", st);
    }
    return WEXITSTATUS(st);
}

static int count_lines(const char *out, const char *prefix)
{
    int n = 0;
    size_t pl = strlen(prefix);
    for (const char *p = out; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        n += !strncmp(p, prefix, pl);
    return n;
}

static void expect_in(const char *out, const char *needle)
{
    if (!strstr(out, needle)) {
        fprintf(stderr, "%s\n", out);
        fail_msg("the output above lacks \"%s\"", needle);
    }
}

/* Every check passed: pass PASS lines, skip SKIP lines, no FAIL, exit 0. */
static void expect_all_pass(int rc, const char *out, int pass, int skip)
{
    if (rc != 0 || count_lines(out, "FAIL ") != 0) {
        fprintf(stderr, "%s\n", out);
        fail_msg("conform exited %d with failures", rc);
    }
    assert_int_equal(count_lines(out, "PASS "), pass);
    assert_int_equal(count_lines(out, "SKIP "), skip);
}

/* ---- conform against conforming workers ----------------------------------------------- */

#define N_CHECKS 32
#define N_KEY_CHECKS 2   /* mac-missing, mac-wrong: skipped without --cluster-key-file */

static char g_out[1 << 16];

static void test_expert_passes_with_weights(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "expert");
    start_expert(url, "64");
    int rc = run_client(g_out, sizeof g_out, "conform", url, "--weights", g_weights, NULL);
    expect_all_pass(rc, g_out, N_CHECKS - N_KEY_CHECKS, N_KEY_CHECKS);
    expect_in(g_out, "PASS reference");
    expect_in(g_out, "PASS batch-over-max");
    expect_in(g_out, "SKIP mac-wrong: no --cluster-key-file given");
    expect_in(g_out, "conforms to worker protocol v1");
}

/* A worker with a cluster key, conform with the same key: every check
 * passes, the two on missing and wrong MACs too. With another key, or none,
 * the handshake fails saying so and the rest is skipped. */
static void test_expert_passes_keyed(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "keyed");
    start_expert_key(url, g_weights, "64", g_key);
    int rc = run_client(g_out, sizeof g_out, "conform", url, "--weights", g_weights,
                        "--cluster-key-file", g_key, NULL);
    expect_all_pass(rc, g_out, N_CHECKS, 0);
    expect_in(g_out, "every message authenticated (cluster key)");
    expect_in(g_out, "PASS mac-missing");
    expect_in(g_out, "PASS mac-wrong");
    expect_in(g_out, "code -1005 (mismatch)");

    rc = run_client(g_out, sizeof g_out, "conform", url, "--cluster-key-file", g_key2, NULL);
    if (rc != 1)
        fail_msg("conform with the wrong key exited %d, expected 1:\n%s", rc, g_out);
    expect_in(g_out, "FAIL handshake");
    expect_in(g_out, "the worker refused our MAC: conform's --cluster-key-file is not the key "
                     "the worker was started with");
    expect_in(g_out, "0 passed, 1 FAILED, 31 skipped: handshake\n");

    rc = run_client(g_out, sizeof g_out, "conform", url, NULL);
    assert_int_equal(rc, 1);
    expect_in(g_out, "the worker wants a MAC: it runs with a cluster key; give conform the "
                     "same --cluster-key-file");
}

/* Over tcp, a max batch below 64, no weights file: the two checks that
 * need it are skipped, the rest pass. */
static void test_expert_passes_tcp_small_batch(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", proc_free_port());
    start_expert(url, "5");
    int rc = run_client(g_out, sizeof g_out, "conform", url, NULL);
    expect_all_pass(rc, g_out, N_CHECKS - 2 - N_KEY_CHECKS, 2 + N_KEY_CHECKS);
    expect_in(g_out, "SKIP reference: no --weights FILE given");
    expect_in(g_out, "batch=6"); /* max_batch + 1 was sent */
    expect_in(g_out, "in the batch of 5");
}

/* The edges: an unconditional expert (labels may only be -1, a label 0 is
 * refused) with a max batch of 1 (batch invariance has nothing to mix). */
static void test_expert_passes_unconditional_batch_1(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "uncond");
    start_expert_weights(url, g_uncond, "1");
    int rc = run_client(g_out, sizeof g_out, "conform", url, "--weights", g_uncond, NULL);
    expect_all_pass(rc, g_out, N_CHECKS - N_KEY_CHECKS, N_KEY_CHECKS);
    expect_in(g_out, "num_classes=0");
    expect_in(g_out, "labels=[-1, 0] (num_classes is 0)");
}

/* A worker written from the spec alone, on a cooked REP socket, passes. */
static void test_cooked_worker_passes(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "good");
    start_fake(FAKE_GOOD, url);
    int rc = run_client(g_out, sizeof g_out, "conform", url, "--weights", g_weights, NULL);
    expect_all_pass(rc, g_out, N_CHECKS - N_KEY_CHECKS, N_KEY_CHECKS);
    /* with a key, its unsigned handshake reply fails */
    rc = run_client(g_out, sizeof g_out, "conform", url, "--cluster-key-file", g_key, NULL);
    assert_int_equal(rc, 1);
    expect_in(g_out, "a reply WITHOUT a MAC trailer: an InfoReply");
    expect_in(g_out, "the reply carries no MAC trailer");
    expect_in(g_out, "0 passed, 1 FAILED, 31 skipped: handshake\n");
}

/* ---- conform against broken workers ----------------------------------------------------- */

/* Runs conform with a short deadline against a broken worker: exit 1, and
 * the summary line names the failed checks. */
static void run_broken(int mode, const char *timeout_ms)
{
    char url[300];
    ipc_url(url, sizeof url, FAKE_NAMES[mode]);
    start_fake(mode, url);
    int rc = run_client(g_out, sizeof g_out, "conform", url, "--weights", g_weights,
                        "--timeout-ms", timeout_ms, NULL);
    if (rc != 1) {
        fprintf(stderr, "%s\n", g_out);
        fail_msg("conform against the \"%s\" worker exited %d, expected 1", FAKE_NAMES[mode], rc);
    }
    expect_in(g_out, "FAILED, ");
}

static void test_nan_worker_fails(void **state)
{
    (void)state;
    run_broken(FAKE_NAN, "2000");
    /* bad input is still refused properly: only the answers are wrong */
    expect_in(g_out, "PASS handshake");
    expect_in(g_out, "PASS x-nan");
    expect_in(g_out, "FAIL answers");
    expect_in(g_out, "v[0][0] = nan: every value must be finite");
    expect_in(g_out, "FAIL batch-invariance");
    expect_in(g_out, "FAIL concurrency");
    expect_in(g_out, "FAIL reference");
    expect_in(g_out, ": answers, packed, unknown-fields, batch-invariance, determinism, "
                     "concurrency, reference\n");
    assert_int_equal(count_lines(g_out, "SKIP "), N_KEY_CHECKS);
}

static void test_short_worker_fails(void **state)
{
    (void)state;
    run_broken(FAKE_SHORT, "2000");
    expect_in(g_out, "PASS handshake");
    expect_in(g_out, "FAIL answers");
    expect_in(g_out, "v has 3132 bytes, expected batch x dim x 4 = 1 x 784 x 4 = 3136");
    expect_in(g_out, "FAIL reference");
    assert_int_equal(count_lines(g_out, "SKIP "), N_KEY_CHECKS);
}

/* Nothing ever answers: the handshake fails after its deadline and every
 * other check is skipped; conform ends (run_client's deadline) with exit 1. */
static void test_silent_worker_fails(void **state)
{
    (void)state;
    run_broken(FAKE_SILENT, "500");
    expect_in(g_out, "FAIL handshake");
    expect_in(g_out, "no reply within 500 ms");
    expect_in(g_out, "nothing answered at ipc://");
    assert_int_equal(count_lines(g_out, "PASS "), 0);
    assert_int_equal(count_lines(g_out, "SKIP "), N_CHECKS - 1);
    expect_in(g_out, "0 passed, 1 FAILED, 31 skipped: handshake\n");
}

/* Answers the handshake, then nothing: the first bad-input check fails on
 * silence, the good request after it finds the worker stopped, and the
 * rest are skipped naming why. */
static void test_mute_worker_fails(void **state)
{
    (void)state;
    run_broken(FAKE_MUTE, "500");
    expect_in(g_out, "PASS handshake");
    expect_in(g_out, "FAIL garbage");
    expect_in(g_out, "bad input must get an error reply, not silence");
    expect_in(g_out, "a worker must keep serving after bad input");
    expect_in(g_out, "SKIP empty: the worker stopped answering after garbage");
    expect_in(g_out, "1 passed, 1 FAILED, 30 skipped: garbage\n");
}

/* Keyed, signs its handshake, but no other reply: every check after the
 * handshake fails on the missing MAC, naming it. */
static void test_unsigned_worker_fails(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "unsigned");
    start_fake_key(FAKE_UNSIGNED, url, g_key);
    int rc = run_client(g_out, sizeof g_out, "conform", url, "--cluster-key-file", g_key, NULL);
    if (rc != 1)
        fail_msg("conform against the unsigned worker exited %d, expected 1:\n%s", rc, g_out);
    expect_in(g_out, "PASS handshake");
    expect_in(g_out, "FAIL garbage");
    expect_in(g_out, "FAIL answers");
    expect_in(g_out, "FAIL concurrency");
    expect_in(g_out, "got:  a reply WITHOUT a MAC trailer: DenoiseReply id=");
    expect_in(g_out, "why:  the reply carries no MAC trailer");
    assert_int_equal(count_lines(g_out, "PASS "), 1);
}

/* ---- usage -------------------------------------------------------------------------- */

static void test_usage(void **state)
{
    (void)state;
    char rpath[300];
    snprintf(rpath, sizeof rpath, "%s/router.safetensors", g_dir);
    net_config rc = { .in_dim = 784, .hidden = 8, .n_blocks = 0, .out_dim = 4, .n_classes = 10,
                      .time_dim = 4, .gauss_rank = 0 };
    assert_int_equal(toyset_write_model(rpath, MODEL_ROUTER, &rc, 3, -1, 4, ST_F32), 0);
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "--help", NULL), 0);
    expect_in(g_out, "usage: ddm-client conform URL");
    expect_in(g_out, "--timeout-ms N");
    assert_int_equal(run_client(g_out, sizeof g_out, "--help", NULL), 0);
    expect_in(g_out, "conform    check a worker");
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", NULL), 2);
    expect_in(g_out, "give the worker's URL");
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "http://x:1", NULL), 2);
    expect_in(g_out, "use tcp://host:port or ipc:///path");
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "ipc:///x", "--timeout-ms", "0",
                                NULL), 2);
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "ipc:///x", "extra", NULL), 2);
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "ipc:///x", "--weights", rpath,
                                NULL), 2);
    expect_in(g_out, "is a router, not a denoiser");
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "ipc:///x", "--weights",
                                "/nonexistent.safetensors", NULL), 2);
    expect_in(g_out, "/nonexistent.safetensors");
    char shortkey[300];
    snprintf(shortkey, sizeof shortkey, "%s/short.key", g_dir);
    FILE *f = fopen(shortkey, "w");
    assert_non_null(f);
    fputs("too short\n", f);
    fclose(f);
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "ipc:///x",
                                "--cluster-key-file", shortkey, NULL), 2);
    expect_in(g_out, "cluster key file ");
    expect_in(g_out, "short.key");
    assert_int_equal(run_client(g_out, sizeof g_out, "conform", "ipc:///x",
                                "--cluster-key-file", "/nonexistent.key", NULL), 2);
    expect_in(g_out, "/nonexistent.key");
}

/* ---- the example bytes of docs/protocol.md ------------------------------------------------ */

static const float EX_X[4] = { 0.5f, -1.0f, 0.25f, 2.0f };
static const float EX_TS[1] = { 0.5f };
static const int32_t EX_LABELS[1] = { 3 };
static const float EX_V[4] = { -0.75f, 1.5f, 0.125f, -2.0f };

/* The example request, as the router packs it: one latent of dim 4,
 * ts = [0.5], label 3, id 7. Returns its length. */
static size_t example_request(uint8_t *buf)
{
    Ddm__V1__DenoiseRequest d = DDM__V1__DENOISE_REQUEST__INIT;
    d.has_id = d.has_dim = d.has_batch = d.has_x = 1;
    d.id = 7;
    d.dim = 4;
    d.batch = 1;
    d.x.data = (uint8_t *)EX_X;
    d.x.len = sizeof EX_X;
    d.n_labels = 1;
    d.labels = (int32_t *)EX_LABELS;
    d.n_ts = 1;
    d.ts = (float *)EX_TS;
    Ddm__V1__WorkerRequest w = DDM__V1__WORKER_REQUEST__INIT;
    w.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    w.denoise = &d;
    return ddm__v1__worker_request__pack(&w, buf);
}

/* The example reply, as ddm-expert packs it (wire_pack_reply). */
static size_t example_reply(uint8_t *buf)
{
    Ddm__V1__DenoiseReply d = DDM__V1__DENOISE_REPLY__INIT;
    d.has_id = d.has_v = d.has_queue_us = d.has_compute_us = d.has_batch_size = 1;
    d.id = 7;
    d.v.data = (uint8_t *)EX_V;
    d.v.len = sizeof EX_V;
    d.queue_us = 120;
    d.compute_us = 35;
    d.batch_size = 1;
    Ddm__V1__WorkerReply w = DDM__V1__WORKER_REPLY__INIT;
    w.kind_case = DDM__V1__WORKER_REPLY__KIND_DENOISE;
    w.denoise = &d;
    size_t len;
    void *m = wire_pack_reply(&w, &len);
    if (!m)
        return 0;
    memcpy(buf, m, len);
    nn_freemsg(m);
    return len;
}

/* The authenticated examples' key: these 32 ASCII bytes. */
#define EX_KEY "ddm-example-cluster-key-32-bytes"

/* The example request with its MAC trailer under EX_KEY; its request MAC
 * (the last 32 bytes) in mac. Returns the length. */
static size_t example_request_mac(uint8_t *buf, uint8_t mac[HMAC_SIZE])
{
    hmac_key k;
    hmac_key_set(&k, EX_KEY, strlen(EX_KEY));
    size_t n = example_request(buf);
    hmac_trailer_req(&k, buf, n, buf + n);
    memcpy(mac, buf + n + 2, HMAC_SIZE);
    return n + HMAC_TRAILER_SIZE;
}

/* The example reply with its MAC trailer, chained to the request's. */
static size_t example_reply_mac(uint8_t *buf)
{
    hmac_key k;
    hmac_key_set(&k, EX_KEY, strlen(EX_KEY));
    uint8_t req[256], mac[HMAC_SIZE];
    example_request_mac(req, mac);
    size_t n = example_reply(buf);
    hmac_trailer_rep(&k, mac, buf, n, buf + n);
    return n + HMAC_TRAILER_SIZE;
}

static void print_hex(const char *name, const uint8_t *b, size_t n)
{
    printf("%s (%zu bytes):\n", name, n);
    for (size_t i = 0; i < n; i++)
        printf("%02x%s", b[i], i + 1 == n || i % 16 == 15 ? "\n" : " ");
}

/* The bytes of the fenced block after "<!-- example:NAME -->" in
 * docs/protocol.md: on each line, the hex pairs before the first '|'. */
static size_t doc_bytes(const char *name, uint8_t *out, size_t cap)
{
    FILE *f = fopen("docs/protocol.md", "r");
    if (!f)
        fail_msg("cannot open docs/protocol.md (run from the repository root)");
    char marker[64], line[512];
    snprintf(marker, sizeof marker, "<!-- example:%s -->", name);
    int state = 0; /* 0 before the marker, 1 before the fence, 2 inside */
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        if (state == 0 && strstr(line, marker))
            state = 1;
        else if (state == 1 && !strncmp(line, "```", 3))
            state = 2;
        else if (state == 2 && !strncmp(line, "```", 3))
            break;
        else if (state == 2) {
            char *bar = strchr(line, '|');
            if (bar)
                *bar = 0;
            for (char *p = strtok(line, " \t\n"); p; p = strtok(NULL, " \t\n")) {
                unsigned v;
                int used = 0;
                if (strlen(p) != 2 || sscanf(p, "%2x%n", &v, &used) != 1 || used != 2)
                    fail_msg("docs/protocol.md example:%s: \"%s\" is not a hex byte", name, p);
                assert_true(n < cap);
                out[n++] = (uint8_t)v;
            }
        }
    }
    fclose(f);
    if (state != 2)
        fail_msg("docs/protocol.md has no fenced block after %s", marker);
    return n;
}

static void expect_doc_bytes(const char *name, const uint8_t *want, size_t n)
{
    uint8_t got[512];
    size_t gn = doc_bytes(name, got, sizeof got);
    if (gn != n || memcmp(got, want, n)) {
        print_hex("encoder", want, n);
        print_hex("docs/protocol.md", got, gn);
        fail_msg("docs/protocol.md example:%s differs from what our encoder writes", name);
    }
}

/* Our encoder writes the page's bytes, and they decode back to the fields. */
static void test_protocol_examples(void **state)
{
    (void)state;
    uint8_t req[256], rep[256];
    size_t rn = example_request(req), pn = example_reply(rep);
    expect_doc_bytes("request", req, rn);
    expect_doc_bytes("reply", rep, pn);
    Ddm__V1__WorkerReply *r = ddm__v1__worker_reply__unpack(NULL, pn, rep);
    assert_non_null(r);
    assert_int_equal(r->denoise->batch_size, 1);
    assert_memory_equal(r->denoise->v.data, EX_V, sizeof EX_V);
    ddm__v1__worker_reply__free_unpacked(r, NULL);

    /* authenticated: P || T, which still parses, with mac set, and verifies */
    uint8_t mreq[256], mrep[256], mac[HMAC_SIZE];
    size_t mrn = example_request_mac(mreq, mac), mpn = example_reply_mac(mrep);
    expect_doc_bytes("request-mac", mreq, mrn);
    expect_doc_bytes("reply-mac", mrep, mpn);
    hmac_key k;
    hmac_key_set(&k, EX_KEY, strlen(EX_KEY));
    uint8_t got[HMAC_SIZE];
    assert_int_equal(hmac_trailer_check_req(&k, mreq, mrn, got), 0);
    assert_int_equal(hmac_trailer_check_rep(&k, mac, mrep, mpn), 0);
    Ddm__V1__WorkerRequest *q = ddm__v1__worker_request__unpack(NULL, mrn, mreq);
    assert_non_null(q);
    assert_true(q->has_mac && q->mac.len == HMAC_SIZE);
    assert_int_equal(q->denoise->id, 7);
    ddm__v1__worker_request__free_unpacked(q, NULL);
    r = ddm__v1__worker_reply__unpack(NULL, mpn, mrep);
    assert_non_null(r);
    assert_true(r->has_mac && r->mac.len == HMAC_SIZE);
    ddm__v1__worker_reply__free_unpacked(r, NULL);
}

static int read_full(int fd, uint8_t *b, size_t n)
{
    for (size_t o = 0; o < n;) {
        ssize_t k = read(fd, b + o, n - o);
        if (k <= 0)
            return -1;
        o += (size_t)k;
    }
    return 0;
}

/* The transport section's framing, by hand on a plain TCP socket: the SP
 * greeting, then the request of the page (8-byte length, request id, body)
 * to a real ddm-expert serving a dim-4 expert, whose reply comes back framed
 * the same way, with the request id, and answers id 7 with 4 floats. */
static void test_sp_tcp_framing(void **state)
{
    (void)state;
    int port = proc_free_port();
    char url[64], bin[256], log[300];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    proc_bin("ddm-expert", bin, sizeof bin);
    snprintf(log, sizeof log, "%s/tiny.log", g_dir);
    char *argv[] = { bin, "--weights", g_tiny, "--listen", url, "--log-level", "error", NULL };
    add_kid(proc_start(argv, log));
    wait_handshake(url);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = { .tv_sec = 10 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    /* greeting: 00 'S' 'P' 00, protocol (REQ = 48, big-endian), 2 reserved bytes */
    static const uint8_t hello[8] = { 0x00, 0x53, 0x50, 0x00, 0x00, 0x30, 0x00, 0x00 };
    assert_int_equal(write(fd, hello, 8), 8);
    uint8_t peer[8];
    assert_int_equal(read_full(fd, peer, 8), 0);
    static const uint8_t rep_hello[8] = { 0x00, 0x53, 0x50, 0x00, 0x00, 0x31, 0x00, 0x00 };
    assert_memory_equal(peer, rep_hello, 8); /* REP = 49 */

    uint8_t msg[300];
    size_t bn = example_request(msg + 12);
    uint64_t size = 4 + bn;
    for (int i = 0; i < 8; i++)
        msg[i] = (uint8_t)(size >> (56 - 8 * i));
    static const uint8_t reqid[4] = { 0x80, 0x00, 0x00, 0x2a }; /* request id 42, top bit set */
    memcpy(msg + 8, reqid, 4);
    assert_int_equal(write(fd, msg, 12 + bn), (ssize_t)(12 + bn));

    uint8_t hdr[12], body[512];
    assert_int_equal(read_full(fd, hdr, 12), 0);
    uint64_t rsize = 0;
    for (int i = 0; i < 8; i++)
        rsize = rsize << 8 | hdr[i];
    assert_memory_equal(hdr + 8, reqid, 4);
    assert_true(rsize > 4 && rsize - 4 <= sizeof body);
    assert_int_equal(read_full(fd, body, rsize - 4), 0);
    close(fd);
    Ddm__V1__WorkerReply *r = ddm__v1__worker_reply__unpack(NULL, rsize - 4, body);
    assert_non_null(r);
    assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
    assert_null(r->denoise->error);
    assert_int_equal(r->denoise->id, 7);
    assert_int_equal(r->denoise->v.len, 16);
    ddm__v1__worker_reply__free_unpacked(r, NULL);
}

/* ---- main ------------------------------------------------------------------------------ */

static int write_key(const char *path, const char *key)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "%s\n", key);
    fclose(f);
    return chmod(path, 0600);
}

static int group_setup(void **state)
{
    (void)state;
    ssize_t n = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
    if (n <= 0 || toyset_tempdir(g_dir, sizeof g_dir, "test-conform"))
        return -1;
    g_self[n] = 0;
    snprintf(g_weights, sizeof g_weights, "%s/expert-2.safetensors", g_dir);
    snprintf(g_tiny, sizeof g_tiny, "%s/tiny.safetensors", g_dir);
    snprintf(g_uncond, sizeof g_uncond, "%s/expert-0.safetensors", g_dir);
    snprintf(g_key, sizeof g_key, "%s/cluster.key", g_dir);
    snprintf(g_key2, sizeof g_key2, "%s/other.key", g_dir);
    if (write_key(g_key, "conform-test-cluster-key-0123456789") ||
        write_key(g_key2, "another-cluster-key-not-the-worker's"))
        return -1;
    net_config uc = g_cfg;
    uc.n_classes = 0;
    if (toyset_write_model(g_weights, MODEL_DENOISER, &g_cfg, 21, 2, 4, ST_F16) ||
        toyset_write_model(g_tiny, MODEL_DENOISER, &g_tiny_cfg, 22, 0, 1, ST_F32) ||
        toyset_write_model(g_uncond, MODEL_DENOISER, &uc, 23, 0, 4, ST_F32))
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    toyset_rmdir(g_dir);
    return 0;
}

int main(int argc, char **argv)
{
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "--fake-worker")) {
        for (int m = 0; m < FAKE_N; m++)
            if (!strcmp(argv[2], FAKE_NAMES[m]))
                return fake_main(m, argv[3], argv[4], argc == 6 ? argv[5] : NULL);
        return 2;
    }
    if (argc == 2 && !strcmp(argv[1], "--print-examples")) {
        uint8_t b[256];
        print_hex("request", b, example_request(b));
        print_hex("reply", b, example_reply(b));
        uint8_t mac[HMAC_SIZE];
        print_hex("request-mac (key \"" EX_KEY "\")", b, example_request_mac(b, mac));
        print_hex("reply-mac", b, example_reply_mac(b));
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol_examples),
        cmocka_unit_test_teardown(test_usage, test_teardown),
        cmocka_unit_test_teardown(test_sp_tcp_framing, test_teardown),
        cmocka_unit_test_teardown(test_expert_passes_with_weights, test_teardown),
        cmocka_unit_test_teardown(test_expert_passes_keyed, test_teardown),
        cmocka_unit_test_teardown(test_expert_passes_tcp_small_batch, test_teardown),
        cmocka_unit_test_teardown(test_expert_passes_unconditional_batch_1, test_teardown),
        cmocka_unit_test_teardown(test_cooked_worker_passes, test_teardown),
        cmocka_unit_test_teardown(test_nan_worker_fails, test_teardown),
        cmocka_unit_test_teardown(test_short_worker_fails, test_teardown),
        cmocka_unit_test_teardown(test_silent_worker_fails, test_teardown),
        cmocka_unit_test_teardown(test_mute_worker_fails, test_teardown),
        cmocka_unit_test_teardown(test_unsigned_worker_fails, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
