/* test_torch.c -- the PyTorch worker (expert-worker/python, bin/ddm-torch-worker)
 * end to end: real worker processes on loopback answering raw REQ clients
 * (tests/support/wclient), compared with ddm-expert and the in-process C
 * forward pass; ddm-client conform passing against it, with and without a
 * cluster key; its trainer on a shard; mixed clusters started by
 * deploy/local/ddm-cluster with impl=torch lines, whose images must equal the
 * all-C cluster's; the shipped U-Net expert served, routed and traced.
 *
 * Needs Debian's python3-torch (make deps installs it); without it every
 * test skips with a message saying so. Run from the repository root. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/model.h"
#include "common/net.h"
#include "common/png.h"
#include "common/rng.h"
#include "common/st.h"
#include "ddm/v1/worker.pb-c.h"
#include "server/httpc.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tests/support/wclient.h"
#include "tools/train/shard.h"

#define DIGITS "models/digits"
#define UNET_DIR "models/digits-unet" /* the U-Net as expert 3, links to the rest */
#define UNET_EXPERT 3
#define D 784
#define RECV_MS 20000
#define MAX_KIDS 32

static char g_dir[128];
static char g_bin[512];
static int g_have_torch;
static pid_t g_kids[MAX_KIDS];
static char g_kid_log[MAX_KIDS][300];
static int g_nkids;

/* ---- processes --------------------------------------------------------------------------- */

static void forget_kid(pid_t pid)
{
    for (int i = 0; i < g_nkids; i++) {
        if (g_kids[i] == pid) {
            g_kids[i] = g_kids[g_nkids - 1];
            memcpy(g_kid_log[i], g_kid_log[g_nkids - 1], sizeof g_kid_log[i]);
            g_nkids--;
            return;
        }
    }
}

static const char *kid_log(pid_t pid)
{
    for (int i = 0; i < g_nkids; i++)
        if (g_kids[i] == pid)
            return g_kid_log[i];
    return "/dev/null";
}

/* Starts bin/<prog> with the NULL-terminated args after name; its output
 * goes to <dir>/<name>.log. */
static pid_t start_prog(const char *prog, const char *name, ...)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", g_bin, prog);
    char *argv[40];
    int n = 0;
    argv[n++] = path;
    va_list ap;
    va_start(ap, name);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 39)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    assert_true(g_nkids < MAX_KIDS);
    snprintf(g_kid_log[g_nkids], sizeof g_kid_log[0], "%s/%s.log", g_dir, name);
    pid_t pid = proc_start(argv, g_kid_log[g_nkids]);
    assert_true(pid > 0);
    g_kids[g_nkids++] = pid;
    return pid;
}

#define start_torch(name, ...) start_prog("ddm-torch-worker", name, __VA_ARGS__, NULL)
#define start_c(name, ...) start_prog("ddm-expert", name, __VA_ARGS__, NULL)

/* SIGTERM; the worker must exit 0. */
static void stop_clean(pid_t pid)
{
    int st = proc_stop(pid, SIGTERM, 60000);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        proc_dump_log(kid_log(pid));
        forget_kid(pid);
        fail_msg("worker %d did not exit 0 on SIGTERM (status %d)", (int)pid, st);
    }
    forget_kid(pid);
}

static void url_ipc(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "ipc://%s/%s.ipc", g_dir, name);
}

static wclient *connect_ready(const char *url, pid_t pid)
{
    wclient *c = wclient_open(url, RECV_MS);
    assert_non_null(c);
    Ddm__V1__WorkerReply *r = wclient_info(c, 60000);
    if (!r) {
        proc_dump_log(kid_log(pid));
        fail_msg("worker at %s did not answer an InfoRequest within 60 s", url);
    }
    ddm__v1__worker_reply__free_unpacked(r, NULL);
    return c;
}

/* ---- fixture ---------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    const char *b = getenv("DDM_BIN_DIR");
    if (!realpath(b && *b ? b : "bin", g_bin))
        snprintf(g_bin, sizeof g_bin, "%s", b && *b ? b : "bin");
    if (toyset_tempdir(g_dir, sizeof g_dir, "torch"))
        return -1;
    int st;
    char *out = proc_sh(&st, "/usr/bin/python3 -c 'import torch, numpy, google.protobuf'");
    char path[700];
    snprintf(path, sizeof path, "%s/ddm-torch-worker", g_bin);
    g_have_torch = st == 0 && access(path, X_OK) == 0;
    if (!g_have_torch)
        fprintf(stderr, "# SKIP: %s: /usr/bin/python3 cannot import torch, numpy and protobuf, "
                        "or %s is missing: run make deps && make\n%s", __FILE__, path,
                out ? out : "");
    free(out);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    toyset_rmdir(g_dir);
    return 0;
}

/* Kills what a failed test left running. */
static char g_up[4][300]; /* cluster files a test brought up */
static int g_nup;
static char *cluster(const char *cmd, const char *conf, int *st);

static int test_teardown(void **state)
{
    (void)state;
    while (g_nup > 0) {
        int st;
        free(cluster("down", g_up[--g_nup], &st));
    }
    while (g_nkids > 0) {
        proc_stop(g_kids[g_nkids - 1], SIGKILL, 5000);
        g_nkids--;
    }
    return 0;
}

#define NEED_TORCH()                                                                            \
    do {                                                                                        \
        if (!g_have_torch)                                                                      \
            skip();                                                                             \
    } while (0)

/* ---- requests ------------------------------------------------------------------------------ */

typedef struct dreq {
    int n;
    float x[64 * D];   /* [n][D] */
    float t[64];
    int32_t labels[64];
} dreq;

/* n random latents: normal x, times in [0, 1] with the ends, labels -1..9. */
static void dreq_make(dreq *d, uint64_t seed, int n)
{
    assert_true(n <= 64);
    d->n = n;
    rng_normal_fill(seed, 1, 0, d->x, (size_t)n * D);
    for (int i = 0; i < n; i++) {
        d->t[i] = i == 0 ? 0.0f : i == 1 ? 1.0f : (float)rng_uniform(seed, 2, (uint64_t)i);
        d->labels[i] = (int)(rng_uniform(seed, 3, (uint64_t)i) * 11) - 1;
    }
}

static void dreq_proto(const dreq *d, uint64_t id, Ddm__V1__DenoiseRequest *r)
{
    Ddm__V1__DenoiseRequest init = DDM__V1__DENOISE_REQUEST__INIT;
    *r = init;
    r->has_id = 1;
    r->id = id;
    r->has_dim = 1;
    r->dim = D;
    r->has_batch = 1;
    r->batch = (uint32_t)d->n;
    r->has_x = 1;
    r->x.data = (uint8_t *)d->x;
    r->x.len = (size_t)d->n * D * sizeof(float);
    r->n_ts = (size_t)d->n;
    r->ts = (float *)d->t;
    r->n_labels = (size_t)d->n;
    r->labels = (int32_t *)d->labels;
}

static int send_denoise(wclient *c, Ddm__V1__DenoiseRequest *r)
{
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    wr.denoise = r;
    uint32_t id = wclient_next_id(c);
    assert_int_equal(wclient_send(c, id, &wr), 0);
    return (int)id;
}

/* Sends d, returns its reply (a successful DenoiseReply; fails otherwise). */
static Ddm__V1__WorkerReply *ask(wclient *c, const dreq *d, uint64_t id)
{
    Ddm__V1__DenoiseRequest r;
    dreq_proto(d, id, &r);
    uint32_t rid = (uint32_t)send_denoise(c, &r);
    Ddm__V1__WorkerReply *w = wclient_recv(c, rid, NULL);
    assert_non_null(w);
    assert_int_equal(w->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
    if (w->denoise->error)
        fail_msg("error reply: %s", w->denoise->error->message);
    assert_true(w->denoise->has_id && w->denoise->id == id);
    assert_int_equal(w->denoise->v.len, (size_t)d->n * D * sizeof(float));
    return w;
}

/* The C forward of the weights file at path on d: out [n][D]. */
static void c_forward(const char *path, const dreq *d, float *out)
{
    char err[512];
    model *m = model_open(path, err, sizeof err);
    if (!m)
        fail_msg("%s", err);
    net_scratch *s = net_scratch_new(&m->cfg, 64, 0);
    assert_non_null(s);
    int lab[64];
    for (int i = 0; i < d->n; i++)
        lab[i] = d->labels[i];
    assert_int_equal(net_forward(&m->cfg, &m->w, s, d->n, d->x, d->t, lab, out), 0);
    net_scratch_free(s);
    model_close(m);
}

/* max |a - b| / max(1, max |b|) over n floats (a: little-endian bytes). */
static double rel_err(const uint8_t *a, const float *b, size_t n)
{
    double diff = 0, scale = 1;
    for (size_t i = 0; i < n; i++) {
        float g;
        memcpy(&g, a + 4 * i, 4);
        if (!isfinite(g))
            return INFINITY;
        diff = fmax(diff, fabs((double)g - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return diff / scale;
}

static void expert_path(char *buf, size_t len, int k)
{
    snprintf(buf, len, DIGITS "/expert-%d.safetensors", k);
}

/* ---- the worker alone ---------------------------------------------------------------------- */

static void test_cli(void **state)
{
    (void)state;
    NEED_TORCH();
    int st;
    char *out = proc_sh(&st, "%s/ddm-torch-worker --help", g_bin);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "usage: ddm-torch-worker --weights FILE --listen URL"));
    assert_non_null(strstr(out, "--cluster-key-file"));
    free(out);
    out = proc_sh(&st, "%s/ddm-torch-worker --version", g_bin);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "ddm-torch-worker 0."));
    free(out);
    static const char *const usage[][2] = {
        { "", "--weights FILE is required" },
        { "--weights x.safetensors", "--listen URL is required" },
        { "--weights w -l tcp://127.0.0.1:1 --max-batch 0",
          "--max-batch \"0\": expected an integer 1..65536" },
        { "--weights w -l tcp://127.0.0.1:1 --frobnicate", "unknown option \"--frobnicate\"" },
        { "--weights w -l tcp://127.0.0.1:1 --log-level loud", "--log-level \"loud\"" },
        { "--weights w -l tcp://127.0.0.1:1 extra", "unexpected argument \"extra\"" },
    };
    for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++) {
        out = proc_sh(&st, "%s/ddm-torch-worker %s", g_bin, usage[i][0]);
        if (st != 2 || !strstr(out, usage[i][1]))
            fail_msg("\"%s\": exit %d, output: %s (expected 2 and \"%s\")", usage[i][0], st, out,
                     usage[i][1]);
        assert_int_equal(strchr(out, '\n') - out + 1, (long)strlen(out)); /* one line */
        free(out);
    }
    /* runtime errors: exit 1 with one line naming the file or flag */
    out = proc_sh(&st, "%s/ddm-torch-worker --weights %s/nope.safetensors -l ipc://%s/x.ipc", g_bin,
                  g_dir, g_dir);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "nope.safetensors"));
    free(out);
    out = proc_sh(&st, "%s/ddm-torch-worker --weights " DIGITS "/router.safetensors -l ipc://%s/x.ipc",
                  g_bin, g_dir);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "only denoisers"));
    free(out);
    out = proc_sh(&st, "%s/ddm-torch-worker --weights " DIGITS "/expert-0.safetensors -l nope://x",
                  g_bin);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "--listen nope://x: not a usable nanomsg URL"));
    free(out);
    char key[300];
    snprintf(key, sizeof key, "%s/short.key", g_dir);
    FILE *f = fopen(key, "w");
    fputs("tooshort\n", f);
    fclose(f);
    out = proc_sh(&st, "%s/ddm-torch-worker --weights " DIGITS "/expert-0.safetensors -l "
                       "ipc://%s/x.ipc --cluster-key-file %s", g_bin, g_dir, key);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "the key is 8 bytes, at least 16"));
    free(out);
}

/* The handshake declares what the weights file says, as ddm-expert does,
 * plus protocol_version 1.0, on every --listen URL. */
static void test_info_handshake(void **state)
{
    (void)state;
    NEED_TORCH();
    char url[300], curl[300], w[300];
    url_ipc(url, sizeof url, "info-torch");
    url_ipc(curl, sizeof curl, "info-c");
    expert_path(w, sizeof w, 5);
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", proc_free_port());
    pid_t pt = start_torch("info-torch", "--weights", w, "--listen", url, "--listen", tcp,
                           "--max-batch", "48");
    pid_t pc = start_c("info-c", "--weights", w, "--listen", curl, "--max-batch", "48");
    wclient *ct = wclient_open(url, RECV_MS), *cc = wclient_open(curl, RECV_MS);
    Ddm__V1__WorkerReply *rt = wclient_info(ct, 60000), *rc = wclient_info(cc, 60000);
    if (!rt)
        proc_dump_log(kid_log(pt));
    assert_non_null(rt);
    assert_non_null(rc);
    assert_int_equal(rt->kind_case, DDM__V1__WORKER_REPLY__KIND_INFO);
    const Ddm__V1__InfoReply *t = rt->info, *c = rc->info;
    assert_null(t->error);
    assert_true(t->has_id && t->id == 77);
    assert_string_equal(t->protocol_version, "1.0");
    assert_true(t->has_expert_id && t->expert_id == 5 && t->expert_id == c->expert_id);
    assert_true(t->has_dim && t->dim == D && t->dim == c->dim);
    assert_true(t->has_num_experts && t->num_experts == 8 && t->num_experts == c->num_experts);
    assert_true(t->has_num_classes && t->num_classes == 10 && t->num_classes == c->num_classes);
    assert_true(t->has_max_batch && t->max_batch == 48 && t->max_batch == c->max_batch);
    assert_string_equal(t->weights_sha256, c->weights_sha256);
    assert_string_equal(t->dataset, "digits");
    assert_non_null(strstr(t->architecture, "ddm-mlp-v1 denoiser in_dim=784 hidden=384"));
    assert_non_null(strstr(t->architecture, "pytorch"));
    /* the shape and class names the file carries (the shipped digits files: 28 x 28 x 1,
     * classes "0".."9"), as ddm-expert declares them */
    assert_true(t->has_height && t->height == 28 && t->width == 28 && t->channels == 1);
    assert_true(c->has_height && c->height == t->height && c->width == t->width &&
                c->channels == t->channels);
    assert_int_equal(t->n_class_names, 10);
    assert_int_equal(t->n_class_names, c->n_class_names);
    for (size_t i = 0; i < t->n_class_names; i++)
        assert_string_equal(t->class_names[i], c->class_names[i]);
    assert_string_equal(t->class_names[7], "7");
    ddm__v1__worker_reply__free_unpacked(rt, NULL);
    ddm__v1__worker_reply__free_unpacked(rc, NULL);
    /* the second --listen URL answers too */
    wclient *c2 = wclient_open(tcp, RECV_MS);
    rt = wclient_info(c2, 20000);
    assert_non_null(rt);
    assert_int_equal(rt->info->expert_id, 5);
    ddm__v1__worker_reply__free_unpacked(rt, NULL);
    wclient_close(c2);
    wclient_close(ct);
    wclient_close(cc);
    stop_clean(pt);
    stop_clean(pc);
}

/* The MLP in PyTorch equals the C forward within 1e-4 on every shipped
 * expert, over 64 latents with t from 0 to 1 and every label (-1 = null). */
static void test_forward_equals_c(void **state)
{
    (void)state;
    NEED_TORCH();
    char url[8][300], w[300];
    pid_t pid[8];
    for (int k = 0; k < 8; k++) {
        char name[32];
        snprintf(name, sizeof name, "fwd-%d", k);
        url_ipc(url[k], sizeof url[k], name);
        expert_path(w, sizeof w, k);
        pid[k] = start_torch(name, "--weights", w, "--listen", url[k], "--max-batch", "64");
    }
    static dreq d;
    static float want[64 * D];
    double worst = 0;
    for (int k = 0; k < 8; k++) {
        wclient *c = connect_ready(url[k], pid[k]);
        dreq_make(&d, 100 + (uint64_t)k, 64);
        Ddm__V1__WorkerReply *r = ask(c, &d, 500 + (uint64_t)k);
        expert_path(w, sizeof w, k);
        c_forward(w, &d, want);
        double e = rel_err(r->denoise->v.data, want, (size_t)64 * D);
        print_message("# expert %d: PyTorch vs C forward, max error %.2e of the largest value\n",
                      k, e);
        worst = fmax(worst, e);
        ddm__v1__worker_reply__free_unpacked(r, NULL);
        wclient_close(c);
    }
    for (int k = 0; k < 8; k++)
        stop_clean(pid[k]);
    assert_true(worst <= 1e-4);
}

/* A row's answer does not depend on its batch mates (rows alone and inside
 * a batch of 64 agree within 1e-4); the same request twice gives the same
 * bytes. */
static void test_batch_invariance_and_determinism(void **state)
{
    (void)state;
    NEED_TORCH();
    char url[300], w[300];
    url_ipc(url, sizeof url, "inv");
    expert_path(w, sizeof w, 2);
    pid_t pid = start_torch("inv", "--weights", w, "--listen", url, "--max-batch", "64",
                            "--max-delay-us", "0");
    wclient *c = connect_ready(url, pid);
    static dreq all, one;
    dreq_make(&all, 7, 64);
    Ddm__V1__WorkerReply *big = ask(c, &all, 1);
    for (int i = 0; i < 64; i += 9) {
        one.n = 1;
        memcpy(one.x, all.x + (size_t)i * D, D * sizeof(float));
        one.t[0] = all.t[i];
        one.labels[0] = all.labels[i];
        Ddm__V1__WorkerReply *r = ask(c, &one, 2);
        float ref[D];
        memcpy(ref, big->denoise->v.data + (size_t)i * D * 4, sizeof ref);
        double e = rel_err(r->denoise->v.data, ref, D);
        if (e > 1e-4)
            fail_msg("row %d alone differs from the same row in a batch of 64 by %.2e", i, e);
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    }
    Ddm__V1__WorkerReply *again = ask(c, &all, 3);
    assert_memory_equal(again->denoise->v.data, big->denoise->v.data, big->denoise->v.len);
    ddm__v1__worker_reply__free_unpacked(again, NULL);
    ddm__v1__worker_reply__free_unpacked(big, NULL);
    wclient_close(c);
    stop_clean(pid);
}

/* Concurrent requests share one forward pass: with --max-batch 16 and a
 * long --max-delay-us, eight requests of two latents wait for each other
 * and go through one pass of 16 (the pass starts when the batch is full,
 * not on a timer), each answered with its own rows; /metrics counts it. */
static void test_batches_across_requests(void **state)
{
    (void)state;
    NEED_TORCH();
    char url[300], w[300];
    url_ipc(url, sizeof url, "batch");
    expert_path(w, sizeof w, 4);
    char hp[64];
    int port = proc_free_port();
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    pid_t pid = start_torch("batch", "--weights", w, "--listen", url, "--max-batch", "16",
                            "--max-delay-us", "10000000", "--metrics", hp);
    wclient *c = connect_ready(url, pid);
    static dreq d[8];
    uint32_t ids[8];
    for (int i = 0; i < 8; i++) {
        dreq_make(&d[i], 40 + (uint64_t)i, 2);
        Ddm__V1__DenoiseRequest r;
        dreq_proto(&d[i], 900 + (uint64_t)i, &r);
        ids[i] = (uint32_t)send_denoise(c, &r);
    }
    static float want[2 * D];
    for (int i = 0; i < 8; i++) {
        Ddm__V1__WorkerReply *r = wclient_recv(c, ids[i], NULL);
        assert_non_null(r);
        assert_null(r->denoise->error);
        assert_int_equal(r->denoise->id, 900 + i);
        assert_int_equal(r->denoise->batch_size, 16);
        c_forward(w, &d[i], want);
        assert_true(rel_err(r->denoise->v.data, want, 2 * D) <= 1e-4);
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    }
    assert_int_equal(proc_wait_http(port, "/healthz", 200, 10000), 0);
    httpc *h;
    char err[128];
    assert_int_equal(httpc_open(hp, 5000, &h, err, sizeof err), 0);
    httpc_response resp;
    assert_int_equal(httpc_request(h, "GET", "/metrics", NULL, 0, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 200);
    static const char *const lines[] = {
        "ddm_expert_requests_total{kind=\"denoise\"} 8\n", "ddm_expert_latents_total 16\n",
        "ddm_expert_batches_total 1\n", "ddm_expert_batch_size_bucket{le=\"8\"} 0\n",
        "ddm_expert_batch_size_bucket{le=\"16\"} 1\n", "expert_id=\"4\"", "impl=\"torch\"",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (!strstr(resp.body, lines[i]))
            fail_msg("/metrics lacks %s:\n%s", lines[i], resp.body);
    httpc_response_free(&resp);
    httpc_close(h);
    wclient_close(c);
    stop_clean(pid);
}

/* ---- bad input: the same refusal as ddm-expert, word for word ------------------------------ */

typedef struct bad_case {
    const char *what;
    int wrapper;  /* 1: WorkerReply.error, 0: DenoiseReply.error */
    int code;
} bad_case;

/* Builds bad request number i into buf (packed) and returns its length, or
 * 0 past the last one. */
static size_t bad_request(int i, uint8_t *buf, size_t cap, bad_case *bc)
{
    static dreq d;
    dreq_make(&d, 5, 3);
    Ddm__V1__DenoiseRequest r;
    dreq_proto(&d, 42, &r);
    float nan_x[3 * D];
    int32_t lab[3] = { 1, 2, 3 };
    float ts[3] = { 0.5f, 0.5f, 0.5f };
    switch (i) {
    case 0: *bc = (bad_case){ "garbage bytes", 1, DDM_EFORMAT };
        memcpy(buf, "\xff\xff\xff\xff garbage", 13);
        return 13;
    case 1: { *bc = (bad_case){ "truncated protobuf", 1, DDM_EFORMAT };
        Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
        wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
        wr.denoise = &r;
        size_t n = ddm__v1__worker_request__get_packed_size(&wr);
        assert_true(n <= cap);
        ddm__v1__worker_request__pack(&wr, buf);
        return n / 2;
    }
    case 2: *bc = (bad_case){ "empty WorkerRequest", 1, DDM_EINVAL };
        return (size_t)-1; /* an empty message body: zero bytes */
    case 3: *bc = (bad_case){ "dim missing", 0, DDM_EINVAL }; r.has_dim = 0; break;
    case 4: *bc = (bad_case){ "dim mismatch", 0, DDM_EMISMATCH }; r.dim = 783; break;
    case 5: *bc = (bad_case){ "batch 0", 0, DDM_ERANGE }; r.batch = 0; break;
    case 6: *bc = (bad_case){ "batch over max", 0, DDM_ERANGE }; r.batch = 65; break;
    case 7: *bc = (bad_case){ "x length vs dim x batch", 0, DDM_EMISMATCH }; r.x.len -= 4; break;
    case 8: *bc = (bad_case){ "x missing", 0, DDM_EMISMATCH }; r.has_x = 0; break;
    case 9: *bc = (bad_case){ "labels count", 0, DDM_EMISMATCH }; r.n_labels = 2; break;
    case 10: *bc = (bad_case){ "label too big", 0, DDM_ERANGE };
        lab[1] = 10; r.labels = lab; break;
    case 11: *bc = (bad_case){ "label below -1", 0, DDM_ERANGE };
        lab[2] = -2; r.labels = lab; break;
    case 12: *bc = (bad_case){ "ts count", 0, DDM_EMISMATCH }; r.n_ts = 1; break;
    case 13: *bc = (bad_case){ "ts above 1", 0, DDM_ERANGE };
        ts[2] = 1.5f; r.ts = ts; break;
    case 14: *bc = (bad_case){ "ts NaN", 0, DDM_ERANGE };
        ts[0] = NAN; r.ts = ts; break;
    case 15: *bc = (bad_case){ "t missing", 0, DDM_EINVAL }; r.n_ts = 0; break;
    case 16: *bc = (bad_case){ "t negative", 0, DDM_ERANGE };
        r.n_ts = 0; r.has_t = 1; r.t = -0.25f; break;
    case 17: *bc = (bad_case){ "t infinite", 0, DDM_ERANGE };
        r.n_ts = 0; r.has_t = 1; r.t = INFINITY; break;
    case 18: *bc = (bad_case){ "x NaN", 0, DDM_ERANGE };
        memcpy(nan_x, d.x, sizeof nan_x); nan_x[D + 17] = NAN; r.x.data = (uint8_t *)nan_x; break;
    case 19: *bc = (bad_case){ "x infinite", 0, DDM_ERANGE };
        memcpy(nan_x, d.x, sizeof nan_x); nan_x[2 * D] = -INFINITY; r.x.data = (uint8_t *)nan_x; break;
    default: return 0;
    }
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    wr.denoise = &r;
    size_t n = ddm__v1__worker_request__get_packed_size(&wr);
    assert_true(n <= cap);
    ddm__v1__worker_request__pack(&wr, buf);
    return n;
}

static const Ddm__V1__Error *reply_error(const Ddm__V1__WorkerReply *r, const bad_case *bc)
{
    if (bc->wrapper) {
        assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_ERROR);
        return r->error;
    }
    assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
    assert_false(r->denoise->has_v);
    assert_true(r->denoise->has_id && r->denoise->id == 42);
    return r->denoise->error;
}

static void test_bad_input_as_ddm_expert(void **state)
{
    (void)state;
    NEED_TORCH();
    char url[300], curl[300], w[300];
    url_ipc(url, sizeof url, "bad-torch");
    url_ipc(curl, sizeof curl, "bad-c");
    expert_path(w, sizeof w, 6);
    pid_t pt = start_torch("bad-torch", "--weights", w, "--listen", url, "--max-batch", "64");
    pid_t pc = start_c("bad-c", "--weights", w, "--listen", curl, "--max-batch", "64");
    wclient *ct = connect_ready(url, pt), *cc = connect_ready(curl, pc);
    static uint8_t buf[4 * 64 * D + 4096];
    bad_case bc;
    size_t n;
    for (int i = 0; (n = bad_request(i, buf, sizeof buf, &bc)) != 0; i++) {
        size_t len = n == (size_t)-1 ? 0 : n;
        uint32_t it = wclient_next_id(ct), ic = wclient_next_id(cc);
        assert_int_equal(wclient_send_raw(ct, it, buf, len), 0);
        assert_int_equal(wclient_send_raw(cc, ic, buf, len), 0);
        Ddm__V1__WorkerReply *rt = wclient_recv(ct, it, NULL), *rc = wclient_recv(cc, ic, NULL);
        if (!rt)
            fail_msg("%s: no reply from the PyTorch worker", bc.what);
        assert_non_null(rc);
        const Ddm__V1__Error *et = reply_error(rt, &bc), *ec = reply_error(rc, &bc);
        assert_non_null(et);
        assert_true(et->has_code);
        if (et->code != bc.code || ec->code != bc.code)
            fail_msg("%s: codes %d (torch) and %d (C), expected %d", bc.what, et->code, ec->code,
                     bc.code);
        if (strcmp(et->message, ec->message))
            fail_msg("%s: the workers word it differently:\n  torch: %s\n  C:     %s", bc.what,
                     et->message, ec->message);
        print_message("# %-24s -> %d %s\n", bc.what, et->code, et->message);
        ddm__v1__worker_reply__free_unpacked(rt, NULL);
        ddm__v1__worker_reply__free_unpacked(rc, NULL);
    }
    /* and it still serves, correctly */
    static dreq d;
    static float want[4 * D];
    dreq_make(&d, 77, 4);
    Ddm__V1__WorkerReply *r = ask(ct, &d, 1234);
    c_forward(w, &d, want);
    assert_true(rel_err(r->denoise->v.data, want, 4 * D) <= 1e-4);
    ddm__v1__worker_reply__free_unpacked(r, NULL);
    wclient_close(ct);
    wclient_close(cc);
    stop_clean(pt);
    stop_clean(pc);
}

/* SIGTERM: what is queued is answered, then the worker exits 0 and says
 * what it served. */
static void test_sigterm_drains(void **state)
{
    (void)state;
    NEED_TORCH();
    char url[300], w[300];
    url_ipc(url, sizeof url, "term");
    expert_path(w, sizeof w, 1);
    /* --linger-ms: the replies must reach this (slow, under sanitizers)
     * client before the worker closes its socket */
    pid_t pid = start_torch("term", "--weights", w, "--listen", url, "--max-batch", "256",
                            "--max-delay-us", "10000000", "--linger-ms", "3000");
    wclient *c = connect_ready(url, pid);
    static dreq d[3];
    uint32_t ids[3];
    for (int i = 0; i < 3; i++) {
        dreq_make(&d[i], 60 + (uint64_t)i, 3);
        Ddm__V1__DenoiseRequest r;
        dreq_proto(&d[i], 70 + (uint64_t)i, &r);
        ids[i] = (uint32_t)send_denoise(c, &r);
    }
    /* requests on one pipe are handled in order: once this InfoRequest is
     * answered, the three are queued (waiting for company) */
    Ddm__V1__WorkerReply *info = wclient_info(c, 20000);
    assert_non_null(info);
    ddm__v1__worker_reply__free_unpacked(info, NULL);
    assert_int_equal(kill(pid, SIGTERM), 0);
    Ddm__V1__WorkerReply *r[3];
    for (int i = 0; i < 3; i++) {
        r[i] = wclient_recv(c, ids[i], NULL);
        if (!r[i])
            proc_dump_log(kid_log(pid));
        assert_non_null(r[i]);
    }
    static float want[3 * D];
    for (int i = 0; i < 3; i++) {
        assert_null(r[i]->denoise->error);
        c_forward(w, &d[i], want);
        assert_true(rel_err(r[i]->denoise->v.data, want, 3 * D) <= 1e-4);
        ddm__v1__worker_reply__free_unpacked(r[i], NULL);
    }
    int st = proc_wait(pid, 20000);
    forget_kid(pid);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    wclient_close(c);
    char *out = proc_sh(&st, "grep -c 'stopped: 3 denoise requests, 9 latents' %s/term.log", g_dir);
    free(out);
    assert_int_equal(st, 0);
}

/* Any torch.nn.Module: --module FILE.py:NAME serves what NAME(path) returns,
 * with the identity of the weights file; a module that fails or answers
 * NaN gets its requests an error reply, not garbage. */
static void test_serves_any_module(void **state)
{
    (void)state;
    NEED_TORCH();
    char py[300], spec[320], url[300], w[300];
    snprintf(py, sizeof py, "%s/mymodule.py", g_dir);
    FILE *f = fopen(py, "w");
    assert_non_null(f);
    fputs("import torch\n"
          "class Mine(torch.nn.Module):\n"
          "    def forward(self, x, t, labels):\n"
          "        if (labels == 9).any():\n"
          "            return x * float('nan')\n"
          "        if (labels == 8).any():\n"
          "            raise RuntimeError('eights are not my thing')\n"
          "        return 2 * x + t[:, None] + (labels[:, None] >= 0).float()\n"
          "def make(path):\n"
          "    return Mine()\n", f);
    fclose(f);
    snprintf(spec, sizeof spec, "%s:make", py);
    url_ipc(url, sizeof url, "mine");
    expert_path(w, sizeof w, 7);
    pid_t pid = start_torch("mine", "--weights", w, "--listen", url, "--module", spec);
    wclient *c = connect_ready(url, pid);
    static dreq d;
    dreq_make(&d, 3, 5);
    for (int i = 0; i < 5; i++)
        d.labels[i] = i - 1; /* -1..3 */
    Ddm__V1__WorkerReply *r = ask(c, &d, 9);
    for (int i = 0; i < 5; i++) {
        for (int j = 0; j < D; j += 97) {
            float got;
            memcpy(&got, r->denoise->v.data + 4 * ((size_t)i * D + j), 4);
            float want = 2 * d.x[i * D + j] + d.t[i] + (d.labels[i] >= 0 ? 1.0f : 0.0f);
            assert_float_equal(got, want, 1e-6);
        }
    }
    ddm__v1__worker_reply__free_unpacked(r, NULL);
    /* a module that answers NaN, or raises, never sends garbage: the
     * requests of that pass get an error reply naming what went wrong */
    static const struct { int label; const char *say; } broken[] = {
        { 9, "forward pass failed on this worker: the module returned a non-finite velocity" },
        { 8, "forward pass failed on this worker: RuntimeError: eights are not my thing" },
    };
    for (int b = 0; b < 2; b++) {
        d.labels[2] = broken[b].label;
        Ddm__V1__DenoiseRequest req;
        dreq_proto(&d, 10, &req);
        uint32_t id = (uint32_t)send_denoise(c, &req);
        r = wclient_recv(c, id, NULL);
        assert_non_null(r);
        assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
        assert_false(r->denoise->has_v);
        assert_non_null(r->denoise->error);
        assert_int_equal(r->denoise->error->code, DDM_EUNAVAIL);
        if (!strstr(r->denoise->error->message, broken[b].say))
            fail_msg("error \"%s\" does not say \"%s\"", r->denoise->error->message,
                     broken[b].say);
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    }
    d.labels[2] = 1;
    ddm__v1__worker_reply__free_unpacked(ask(c, &d, 11), NULL); /* and it still serves */
    Ddm__V1__WorkerReply *info = wclient_info(c, 20000);
    assert_int_equal(info->info->expert_id, 7);
    assert_non_null(strstr(info->info->architecture, "Mine"));
    ddm__v1__worker_reply__free_unpacked(info, NULL);
    wclient_close(c);
    stop_clean(pid);
}

/* With --cluster-key-file every request needs a valid MAC and every reply
 * carries one chained to its request; a request without one, or with a
 * MAC under another key, gets an unauthenticated error and no compute. */
static void test_cluster_key(void **state)
{
    (void)state;
    NEED_TORCH();
    static const char key[] = "0123456789abcdef-test-cluster-key";
    char kf[300], url[300], w[300];
    snprintf(kf, sizeof kf, "%s/cluster.key", g_dir);
    FILE *f = fopen(kf, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", key); /* the trailing newline is trimmed */
    fclose(f);
    url_ipc(url, sizeof url, "keyed");
    expert_path(w, sizeof w, 0);
    pid_t pid = start_torch("keyed", "--weights", w, "--listen", url, "--cluster-key-file", kf);
    wclient *c = wclient_open(url, RECV_MS);
    wclient_set_key(c, (const uint8_t *)key, strlen(key));
    Ddm__V1__WorkerReply *info = wclient_info(c, 60000);
    if (!info)
        proc_dump_log(kid_log(pid));
    assert_non_null(info);
    assert_int_equal(info->kind_case, DDM__V1__WORKER_REPLY__KIND_INFO);
    ddm__v1__worker_reply__free_unpacked(info, NULL);

    static dreq d;
    static float want[2 * D];
    dreq_make(&d, 11, 2);
    Ddm__V1__DenoiseRequest r;
    dreq_proto(&d, 5, &r);
    int ok = -1;
    uint32_t id = (uint32_t)send_denoise(c, &r);
    Ddm__V1__WorkerReply *rep = wclient_recv(c, id, &ok);
    assert_non_null(rep);
    assert_int_equal(ok, 1);
    assert_null(rep->denoise->error);
    c_forward(w, &d, want);
    assert_true(rel_err(rep->denoise->v.data, want, 2 * D) <= 1e-4);
    ddm__v1__worker_reply__free_unpacked(rep, NULL);

    /* no MAC at all */
    wclient_set_key(c, NULL, 0);
    id = (uint32_t)send_denoise(c, &r);
    rep = wclient_recv(c, id, NULL);
    assert_non_null(rep);
    assert_int_equal(rep->kind_case, DDM__V1__WORKER_REPLY__KIND_ERROR);
    assert_int_equal(rep->error->code, DDM_EPROTO);
    assert_non_null(strstr(rep->error->message, "no MAC"));
    ddm__v1__worker_reply__free_unpacked(rep, NULL);
    /* another key */
    wclient_set_key(c, (const uint8_t *)"a-different-key-of-the-cluster", 30);
    id = (uint32_t)send_denoise(c, &r);
    rep = wclient_recv(c, id, &ok);
    assert_non_null(rep);
    assert_int_equal(ok, 0);
    assert_int_equal(rep->kind_case, DDM__V1__WORKER_REPLY__KIND_ERROR);
    assert_int_equal(rep->error->code, DDM_EMISMATCH);
    assert_non_null(strstr(rep->error->message, "MAC does not verify"));
    ddm__v1__worker_reply__free_unpacked(rep, NULL);
    wclient_close(c);
    stop_clean(pid);
}

/* ddm-client conform against the PyTorch worker on a shipped expert, with
 * --weights (its answers equal the reference forward): without a key, and
 * with one (every reply's MAC checked, missing and wrong request MACs
 * refused). The two workers start at once: importing torch is most of it. */
static void test_conform_passes(void **state)
{
    (void)state;
    NEED_TORCH();
    static const char key[] = "conform-torch-cluster-key-0123456789";
    char kf[300], u0[300], uk[300], w[300];
    snprintf(kf, sizeof kf, "%s/conform.key", g_dir);
    FILE *f = fopen(kf, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", key);
    fclose(f);
    assert_int_equal(chmod(kf, 0600), 0);
    url_ipc(u0, sizeof u0, "conform");
    url_ipc(uk, sizeof uk, "conform-keyed");
    expert_path(w, sizeof w, 3);
    pid_t p0 = start_torch("conform", "--weights", w, "--listen", u0);
    pid_t pk = start_torch("conform-keyed", "--weights", w, "--listen", uk,
                           "--cluster-key-file", kf);
    wclient_close(connect_ready(u0, p0));
    wclient *c = wclient_open(uk, RECV_MS);
    wclient_set_key(c, (const uint8_t *)key, strlen(key));
    Ddm__V1__WorkerReply *info = wclient_info(c, 60000);
    if (!info)
        proc_dump_log(kid_log(pk));
    assert_non_null(info);
    ddm__v1__worker_reply__free_unpacked(info, NULL);
    wclient_close(c);

    const char *urls[2] = { u0, uk };
    for (int i = 0; i < 2; i++) {
        int st;
        char *out = proc_sh(&st, "%s/ddm-client conform %s --weights %s%s%s", g_bin, urls[i], w,
                            i ? " --cluster-key-file " : "", i ? kf : "");
        assert_non_null(out);
        const char *want = i ? "conform: 32 passed, 0 failed, 0 skipped"
                             : "conform: 30 passed, 0 failed, 2 skipped";
        if (st != 0 || !strstr(out, want) || !strstr(out, "PASS reference"))
            fail_msg("conform against the PyTorch worker%s exited %d:\n%s",
                     i ? " with a key" : "", st, out);
        if (i && (!strstr(out, "PASS mac-missing") || !strstr(out, "PASS mac-wrong")))
            fail_msg("no MAC checks:\n%s", out);
        free(out);
    }
    stop_clean(p0);
    stop_clean(pk);
}

/* ---- the trainer -------------------------------------------------------------------------- */

/* ddm-torch-train on a shard written by the partition code: a short run
 * writes weights whose handshake names the shard's cluster, K, dim and
 * classes, and that a worker serves. */
static void test_trainer_on_a_shard(void **state)
{
    (void)state;
    NEED_TORCH();
    enum { N = 60, K = 4, C = 10, CLUSTER = 2 };
    static float x[N * D];
    int y[N], assign[N];
    static float cent[K * D];
    for (int i = 0; i < N; i++) {
        assign[i] = i % K;
        y[i] = (i / K) % 7; /* classes 7..9 never appear */
        for (int j = 0; j < D; j++)
            x[(size_t)i * D + j] = (float)((int)(255 * rng_uniform(9, (uint64_t)i, (uint64_t)j))) *
                                   (2.0f / 255.0f) - 1.0f;
    }
    char shards[300], err[256];
    snprintf(shards, sizeof shards, "%s/shards", g_dir);
    assert_int_equal(mkdir(shards, 0755), 0);
    model_shape sh;
    model_shape_default(&sh, D);
    assert_int_equal(shard_write_all(shards, "synth", &sh, N, D, x, y, C, assign, K, cent, err,
                                     sizeof err), 0);
    int st;
    char *out = proc_sh(&st, "%s/ddm-torch-train", g_bin);
    assert_int_equal(st, 2);
    assert_non_null(strstr(out, "--shard FILE is required"));
    free(out);
    out = proc_sh(&st, "%s/ddm-torch-train --shard %s/nope.safetensors --out %s/u.safetensors",
                  g_bin, shards, g_dir);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "nope.safetensors"));
    free(out);
    out = proc_sh(&st, "%s/ddm-torch-train --shard %s/partition.safetensors --out %s/u.safetensors",
                  g_bin, shards, g_dir);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "expected \"shard\""));
    free(out);
    char shard[400], wout[300];
    shard_path(shard, sizeof shard, shards, CLUSTER);
    snprintf(wout, sizeof wout, "%s/unet/expert-%d.safetensors", g_dir, CLUSTER);
    out = proc_sh(&st, "%s/ddm-torch-train --shard %s --out %s --steps 6 --batch 8 --base 8 "
                       "--log-secs 0", g_bin, shard, wout);
    if (st != 0)
        fail_msg("ddm-torch-train failed (exit %d): %s", st, out);
    free(out);
    /* the file: the identity keys of common/model.h */
    char e2[256];
    st_file *sf = st_open(wout, e2, sizeof e2);
    if (!sf)
        fail_msg("%s", e2);
    assert_string_equal(st_meta(sf, "ddm.format"), "ddm-unet-v1");
    assert_string_equal(st_meta(sf, "ddm.kind"), "denoiser");
    assert_string_equal(st_meta(sf, "expert_id"), "2");
    assert_string_equal(st_meta(sf, "num_experts"), "4");
    assert_string_equal(st_meta(sf, "in_dim"), "784");
    assert_string_equal(st_meta(sf, "n_classes"), "10");
    assert_string_equal(st_meta(sf, "dataset"), "synth");
    assert_string_equal(st_meta(sf, "height"), "28");
    assert_string_equal(st_meta(sf, "channels"), "1");
    assert_string_equal(st_meta(sf, "classes"), "0,1,2,3,4,5,6");
    assert_non_null(strstr(st_meta(sf, "architecture"), "ddm-unet-v1"));
    st_file *shf = st_open(shard, e2, sizeof e2);
    assert_non_null(shf);
    assert_string_equal(st_meta(sf, "shard_sha256"), st_sha256(shf));
    st_close(shf);
    st_close(sf);
    /* served: the handshake says what the file says */
    char url[300];
    url_ipc(url, sizeof url, "unet-synth");
    pid_t pid = start_torch("unet-synth", "--weights", wout, "--listen", url);
    wclient *c = wclient_open(url, RECV_MS);
    Ddm__V1__WorkerReply *info = wclient_info(c, 60000);
    if (!info)
        proc_dump_log(kid_log(pid));
    assert_non_null(info);
    assert_int_equal(info->info->expert_id, 2);
    assert_int_equal(info->info->num_experts, 4);
    assert_int_equal(info->info->dim, D);
    assert_int_equal(info->info->num_classes, 10);
    assert_true(info->info->has_height && info->info->height == 28 && info->info->width == 28 &&
                info->info->channels == 1);
    ddm__v1__worker_reply__free_unpacked(info, NULL);
    static dreq d;
    dreq_make(&d, 21, 5);
    Ddm__V1__WorkerReply *r = ask(c, &d, 31);
    ddm__v1__worker_reply__free_unpacked(r, NULL);
    wclient_close(c);
    stop_clean(pid);
}

/* ---- clusters ------------------------------------------------------------------------------- */

static int distinct_port(int *used, int n)
{
    for (;;) {
        int p = proc_free_port(), again = 0;
        for (int i = 0; i < n; i++)
            again |= used[i] == p;
        if (!again)
            return p;
    }
}

/* Writes a cluster file: 8 experts of models_dir on loopback, impl=torch for
 * ids in [torch_lo, torch_hi), the router weights from the shipped set. */
static void write_conf(const char *path, const char *models_dir, int port, int torch_lo,
                       int torch_hi, int *used, int *nused)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    /* a deadline for slow CPUs: the U-Net is ~50x the MLP's compute */
    fprintf(f, "models %s\nrouter %s/" DIGITS "/router.safetensors\nlisten 127.0.0.1:%d\n"
               "set ticks 1\nset expert-timeout-ms 30000\n", models_dir, cwd, port);
    for (int k = 0; k < 8; k++) {
        int p = distinct_port(used, *nused);
        used[(*nused)++] = p;
        fprintf(f, "expert %d tcp://127.0.0.1:%d%s\n", k, p,
                k >= torch_lo && k < torch_hi ? " impl=torch" : "");
    }
    fclose(f);
}

static char *cluster(const char *cmd, const char *conf, int *st)
{
    return proc_sh(st, "sh deploy/local/ddm-cluster %s %s --run-dir %s.run --bin %s "
                       "--ready-timeout 120", cmd, conf, conf, g_bin);
}

static void cluster_up(const char *conf)
{
    int st;
    assert_true(g_nup < 4);
    snprintf(g_up[g_nup++], sizeof g_up[0], "%s", conf);
    char *out = cluster("up", conf, &st);
    if (st != 0)
        fail_msg("ddm-cluster up %s failed: %s", conf, out);
    free(out);
}

static void cluster_down(const char *conf)
{
    int st;
    for (int i = 0; i < g_nup; i++)
        if (!strcmp(g_up[i], conf))
            memmove(g_up[i], g_up[--g_nup], sizeof g_up[0]);
    char *out = cluster("down", conf, &st);
    if (st != 0)
        fail_msg("ddm-cluster down %s: %s", conf, out);
    free(out);
}

/* Samples n images through the router at port into dir/sample-NNN.png. */
static void sample(int port, const char *strategy, int n, const char *dir)
{
    int st;
    char *out = proc_sh(&st, "%s/ddm-client sample --url http://127.0.0.1:%d -n %d --steps 30 "
                             "--seed 7 --strategy %s --out-dir %s -q", g_bin, port, n, strategy,
                        dir);
    if (st != 0)
        fail_msg("ddm-client sample (%s): %s", strategy, out);
    free(out);
}

/* Largest grey-level difference between the images of two sample dirs. */
static int max_grey_diff(const char *a, const char *b, int n)
{
    int worst = 0;
    for (int i = 0; i < n; i++) {
        char pa[600], pb[600], err[256];
        snprintf(pa, sizeof pa, "%s/sample-%03d.png", a, i);
        snprintf(pb, sizeof pb, "%s/sample-%03d.png", b, i);
        uint8_t *xa, *xb;
        int wa, ha, wb, hb;
        if (pngio_read_grey(pa, &xa, &wa, &ha, err, sizeof err) ||
            pngio_read_grey(pb, &xb, &wb, &hb, err, sizeof err))
            fail_msg("%s", err);
        assert_true(wa == 28 && ha == 28 && wb == 28 && hb == 28);
        for (int j = 0; j < 28 * 28; j++)
            worst = abs((int)xa[j] - (int)xb[j]) > worst ? abs((int)xa[j] - (int)xb[j]) : worst;
        free(xa);
        free(xb);
    }
    return worst;
}

/* Experts 0-3 served by the PyTorch worker and 4-7 by ddm-expert (started
 * by ddm-cluster from impl=torch lines) draw the same images, within one
 * grey level, as the all-C cluster, for top-2 and full routing. */
static void test_mixed_cluster_matches_all_c(void **state)
{
    (void)state;
    NEED_TORCH();
    char cwd[512], models[600], conf_c[300], conf_m[300];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(models, sizeof models, "%s/" DIGITS, cwd);
    snprintf(conf_c, sizeof conf_c, "%s/all-c.conf", g_dir);
    snprintf(conf_m, sizeof conf_m, "%s/mixed.conf", g_dir);
    int used[20], nused = 0;
    int port_c = distinct_port(used, nused);
    used[nused++] = port_c;
    int port_m = distinct_port(used, nused);
    used[nused++] = port_m;
    write_conf(conf_c, models, port_c, 0, 0, used, &nused);
    write_conf(conf_m, models, port_m, 0, 4, used, &nused);
    cluster_up(conf_c);
    cluster_up(conf_m);
    int st;
    char *out = proc_sh(&st, "%s/ddm-client experts --url http://127.0.0.1:%d", g_bin, port_m);
    print_message("# mixed cluster:\n%s", out);
    free(out);
    /* the mixed cluster's workers 0-3 are Python processes */
    out = proc_sh(&st, "cat %s.run/expert-0.pid | xargs -I{} cat /proc/{}/cmdline | tr '\\0' ' '",
                  conf_m);
    assert_non_null(strstr(out, "ddm-torch-worker"));
    free(out);
    static const char *const strategies[] = { "top-2", "full" };
    int worst[2];
    for (int s = 0; s < 2; s++) {
        char dc[400], dm[400];
        snprintf(dc, sizeof dc, "%s/c-%s", g_dir, strategies[s]);
        snprintf(dm, sizeof dm, "%s/m-%s", g_dir, strategies[s]);
        sample(port_c, strategies[s], 8, dc);
        sample(port_m, strategies[s], 8, dm);
        worst[s] = max_grey_diff(dc, dm, 8);
        print_message("# %s: 8 images, largest grey-level difference mixed vs all-C: %d\n",
                      strategies[s], worst[s]);
    }
    cluster_down(conf_m);
    cluster_down(conf_c);
    assert_true(worst[0] <= 1);
    assert_true(worst[1] <= 1);
}

/* ddm-cluster refuses, before starting anything, an impl it does not know
 * and impl=torch lines when the PyTorch worker is not built. */
static void test_cluster_impl_errors(void **state)
{
    (void)state;
    char conf[300], bins[300];
    snprintf(conf, sizeof conf, "%s/impl.conf", g_dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models " DIGITS "\nlisten 127.0.0.1:%d\nexpert 0 tcp://127.0.0.1:%d impl=rust\n",
            proc_free_port(), proc_free_port());
    fclose(f);
    int st;
    char *out = cluster("up", conf, &st);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "impl=rust is unknown: use impl=c (ddm-expert) or impl=torch"));
    free(out);
    /* a bin folder with the C binaries only */
    snprintf(bins, sizeof bins, "%s/c-only-bin", g_dir);
    assert_int_equal(mkdir(bins, 0755), 0);
    static const char *const progs[] = { "ddm-expert", "ddm-router", "ddm-client" };
    for (int i = 0; i < 3; i++) {
        char from[700], to[400];
        snprintf(from, sizeof from, "%s/%s", g_bin, progs[i]);
        snprintf(to, sizeof to, "%s/%s", bins, progs[i]);
        assert_int_equal(symlink(from, to), 0);
    }
    f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models " DIGITS "\nlisten 127.0.0.1:%d\nexpert 0 tcp://127.0.0.1:%d impl=torch\n",
            proc_free_port(), proc_free_port());
    fclose(f);
    out = proc_sh(&st, "sh deploy/local/ddm-cluster up %s --run-dir %s.run --bin %s", conf, conf,
                  bins);
    assert_int_equal(st, 1);
    assert_non_null(strstr(out, "ddm-torch-worker not found (impl=torch in"));
    free(out);
}

/* One expert replaced by the shipped U-Net (trained by ddm-torch-train on
 * that expert's shard only, models/digits-unet/MANIFEST): it passes the
 * router's handshake, is routed to, and shows up in traces. */
static void test_unet_expert_in_cluster(void **state)
{
    (void)state;
    NEED_TORCH();
    char cwd[512], models[600], conf[300];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(models, sizeof models, "%s/" UNET_DIR, cwd);
    /* the shipped file is the one its MANIFEST describes, trained on shard 3 */
    int st;
    char *out = proc_sh(&st, "cd " UNET_DIR " && awk '!/^#/ { print $2 \"  \" $1 }' MANIFEST | "
                             "sha256sum -c");
    if (st != 0)
        fail_msg(UNET_DIR "/MANIFEST does not match its files: %s", out);
    free(out);
    char path[700], err[256];
    snprintf(path, sizeof path, "%s/expert-%d.safetensors", models, UNET_EXPERT);
    st_file *sf = st_open(path, err, sizeof err);
    if (!sf)
        fail_msg("%s", err);
    assert_string_equal(st_meta(sf, "ddm.format"), "ddm-unet-v1");
    assert_string_equal(st_meta(sf, "cluster"), "3");
    snprintf(path, sizeof path, DIGITS "/expert-%d.safetensors", UNET_EXPERT);
    model *c_expert = model_open(path, err, sizeof err);
    assert_non_null(c_expert);
    assert_string_equal(st_meta(sf, "shard_sha256"), model_meta(c_expert, "shard_sha256"));
    model_close(c_expert);
    st_close(sf);
    snprintf(conf, sizeof conf, "%s/unet.conf", g_dir);
    int used[20], nused = 0;
    int port = distinct_port(used, nused);
    used[nused++] = port;
    write_conf(conf, models, port, UNET_EXPERT, UNET_EXPERT + 1, used, &nused);
    cluster_up(conf);
    /* served: the router took its handshake (weights hash of the U-Net) */
    out = proc_sh(&st, "%s/ddm-client experts --url http://127.0.0.1:%d", g_bin, port);
    print_message("# cluster with the U-Net as expert %d:\n%s", UNET_EXPERT, out);
    free(out);
    out = proc_sh(&st, "%s/ddm-client ready --url http://127.0.0.1:%d", g_bin, port);
    assert_int_equal(st, 0);
    free(out);
    /* routed and traced: class-conditional top-2 samples of the classes of
     * expert 3's cluster (4, 7, 9) select it, and the trace says so */
    int calls = 0, traced = 0;
    static const int labels[] = { 4, 7, 9 };
    for (int l = 0; l < 3; l++) {
        out = proc_sh(&st, "%s/ddm-client sample --url http://127.0.0.1:%d -n 4 --steps 10 "
                           "--seed 3 --strategy top-2 --label %d --trace --json 2>/dev/null",
                      g_bin, port, labels[l]);
        if (st != 0)
            fail_msg("sample: %s", out);
        cJSON *j = cJSON_Parse(out);
        assert_non_null(j);
        cJSON *by = cJSON_GetObjectItem(j, "calls_by_expert");
        calls += (int)cJSON_GetArrayItem(by, UNET_EXPERT)->valuedouble;
        cJSON *tr = cJSON_GetObjectItem(j, "trace"), *e;
        assert_true(cJSON_GetArraySize(tr) > 0);
        cJSON_ArrayForEach(e, tr) {
            cJSON *sel = cJSON_GetObjectItem(e, "experts"), *k;
            cJSON_ArrayForEach(k, sel) traced += (int)k->valuedouble == UNET_EXPERT;
        }
        cJSON_Delete(j);
        free(out);
    }
    print_message("# expert %d (U-Net): %d calls, selected in %d trace steps\n", UNET_EXPERT,
                  calls, traced);
    assert_true(calls > 0);
    assert_true(traced > 0);
    /* forced alone it draws images through the router */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/unet-alone", g_dir);
    char strat[16];
    snprintf(strat, sizeof strat, "expert:%d", UNET_EXPERT);
    sample(port, strat, 4, dir);
    cluster_down(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cli, test_teardown),
        cmocka_unit_test_teardown(test_info_handshake, test_teardown),
        cmocka_unit_test_teardown(test_forward_equals_c, test_teardown),
        cmocka_unit_test_teardown(test_batch_invariance_and_determinism, test_teardown),
        cmocka_unit_test_teardown(test_batches_across_requests, test_teardown),
        cmocka_unit_test_teardown(test_bad_input_as_ddm_expert, test_teardown),
        cmocka_unit_test_teardown(test_sigterm_drains, test_teardown),
        cmocka_unit_test_teardown(test_serves_any_module, test_teardown),
        cmocka_unit_test_teardown(test_cluster_key, test_teardown),
        cmocka_unit_test_teardown(test_conform_passes, test_teardown),
        cmocka_unit_test_teardown(test_trainer_on_a_shard, test_teardown),
        cmocka_unit_test_teardown(test_mixed_cluster_matches_all_c, test_teardown),
        cmocka_unit_test_teardown(test_cluster_impl_errors, test_teardown),
        cmocka_unit_test_teardown(test_unet_expert_in_cluster, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
