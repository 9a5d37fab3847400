/* test_expert.c -- ddm-expert end to end: real worker processes on loopback
 * answering raw REQ clients, compared with the in-process forward pass; bad
 * input, batching, handshake, metrics, graceful stop, exit codes. Plus unit
 * tests of the batching policy and request validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cblas.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/err.h"
#include "common/half_gemm.h"
#include "common/model.h"
#include "common/net.h"
#include "common/rng.h"
#include "common/st.h"
#include "ddm/v1/worker.pb-c.h"
#include "expert-worker/batcher.h"
#include "expert-worker/wire.h"
#include "server/httpc.h"
#include "tests/support/proc.h"

#define EXPERT_ID 3
#define NUM_EXPERTS 8
#define RECV_MS 5000

/* ---- fixture: a random expert on disk, loaded in-process as the reference ---- */

static char g_dir[128];
static char g_weights[256];
static model *g_ref;
static net_scratch *g_scratch;
static pid_t g_children[16];
static int g_nchildren;
static char g_log[300];

static const net_config g_cfg = { .in_dim = 784, .hidden = 64, .n_blocks = 2, .out_dim = 784,
                                  .n_classes = 10, .time_dim = 16, .gauss_rank = 8 };

/* Random denoiser: net_init, then a random orthonormal Gaussian basis, means
 * and variances, and a random output layer so v is not just the baseline. */
static int write_weights(const char *path)
{
    const net_config *c = &g_cfg;
    size_t np = net_param_count(c);
    float *p = malloc(np * sizeof *p);
    if (!p)
        return -1;
    net_init(c, p, 11);
    net_weights w;
    net_bind(c, p, &w);
    int D = c->in_dim, H = c->hidden, R = c->gauss_rank;
    rng_normal_fill(5, 1, 0, w.w_out, (size_t)D * H);
    for (size_t i = 0; i < (size_t)D * H; i++)
        w.w_out[i] *= 0.05f;
    rng_normal_fill(5, 2, 0, w.b_out, (size_t)D);
    for (int i = 0; i < D; i++) {
        w.b_out[i] *= 0.01f;
        w.g_mu[i] = 0.3f * rng_normal(5, 3, (uint64_t)i);
    }
    /* Gram-Schmidt on random rows */
    rng_normal_fill(5, 4, 0, w.g_u, (size_t)R * D);
    for (int r = 0; r < R; r++) {
        float *u = w.g_u + (size_t)r * D;
        for (int q = 0; q < r; q++) {
            const float *v = w.g_u + (size_t)q * D;
            double d = 0;
            for (int i = 0; i < D; i++)
                d += (double)u[i] * v[i];
            for (int i = 0; i < D; i++)
                u[i] -= (float)d * v[i];
        }
        double n = 0;
        for (int i = 0; i < D; i++)
            n += (double)u[i] * u[i];
        for (int i = 0; i < D; i++)
            u[i] /= (float)sqrt(n);
        w.g_lam[r] = 0.5f + (float)rng_uniform(5, 5, (uint64_t)r) * 3.0f;
    }
    w.g_sig2[0] = 0.2f;
    st_writer *sw = st_writer_new();
    char err[256];
    /* fp16, as the shipped experts: passes of <= 20 rows take the half-copy path */
    int rc = sw ? model_write(sw, MODEL_DENOISER, c, p, ST_F16, "digits", EXPERT_ID, NUM_EXPERTS)
                : -1;
    if (rc == 0)
        rc = st_writer_save(sw, path, err, sizeof err);
    if (rc)
        fprintf(stderr, "write_weights: %s\n", err);
    st_writer_free(sw);
    free(p);
    return rc;
}

static int group_setup(void **state)
{
    (void)state;
    openblas_set_num_threads(1); /* the worker runs with --threads 1 */
    /* and the same kernels and half_gemm crossover as this process, so replies
     * can match bit for bit (ddm-expert would otherwise pick its own, see
     * common/blas.h) */
    setenv("OPENBLAS_CORETYPE", openblas_get_corename(), 1);
    char rows[16];
    snprintf(rows, sizeof rows, "%d", half_gemm_rows());
    setenv("DDM_HALF_ROWS", rows, 1);
    snprintf(g_dir, sizeof g_dir, "/tmp/ddm-test-expert-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_weights, sizeof g_weights, "%s/expert-3.safetensors", g_dir);
    snprintf(g_log, sizeof g_log, "%s/worker.log", g_dir);
    if (write_weights(g_weights))
        return -1;
    char err[256];
    g_ref = model_open(g_weights, err, sizeof err);
    if (!g_ref) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    g_scratch = net_scratch_new(&g_ref->cfg, 256, 0);
    return g_scratch ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    net_scratch_free(g_scratch);
    model_close(g_ref);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (strncmp(g_dir, "/tmp/ddm-test-expert-", 21) == 0 && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
    return 0;
}

/* Kills whatever a test left running; dumps the worker log if it failed. */
static int test_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < g_nchildren; i++)
        if (g_children[i] > 0)
            proc_stop(g_children[i], SIGKILL, 2000);
    g_nchildren = 0;
    return 0;
}

/* ---- worker processes ----------------------------------------------------------- */

static void ipc_url(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "ipc://%s/%s.ipc", g_dir, name);
}

static void add_child(pid_t pid)
{
    for (int i = 0; i < g_nchildren; i++)
        if (g_children[i] == 0) {
            g_children[i] = pid;
            return;
        }
    assert_true(g_nchildren < 16);
    g_children[g_nchildren++] = pid;
}

static void forget_child(pid_t pid)
{
    for (int i = 0; i < g_nchildren; i++)
        if (g_children[i] == pid)
            g_children[i] = 0;
}

/* Starts ddm-expert on url with extra flags (NULL-terminated). */
static pid_t start_worker(const char *url, ...)
{
    char bin[256];
    proc_bin("ddm-expert", bin, sizeof bin);
    char *argv[32];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--weights";
    argv[n++] = g_weights;
    argv[n++] = "--listen";
    argv[n++] = (char *)url;
    va_list ap;
    va_start(ap, url);
    const char *a;
    while ((a = va_arg(ap, const char *)) && n < 31)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    unlink(g_log);
    pid_t pid = proc_start(argv, g_log);
    assert_true(pid > 0);
    add_child(pid);
    return pid;
}

/* SIGTERM, and the worker must exit 0 (under sanitizers: without leaks,
 * so every path a test drove is checked for them). */
static void stop_clean(pid_t pid)
{
    int st = proc_stop(pid, SIGTERM, 10000);
    forget_child(pid);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        proc_dump_log(g_log);
        fail_msg("ddm-expert did not exit 0 on SIGTERM (status %d)", st);
    }
}

/* ---- a blocking raw REQ client ------------------------------------------------------ */

static int client_open(const char *url, int rcv_ms)
{
    int s = nn_socket(AF_SP_RAW, NN_REQ);
    assert_true(s >= 0);
    int big = -1;
    assert_int_equal(nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &big, sizeof big), 0);
    assert_int_equal(nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &rcv_ms, sizeof rcv_ms), 0);
    int snd = 5000;
    assert_int_equal(nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDTIMEO, &snd, sizeof snd), 0);
    assert_true(nn_connect(s, url) >= 0);
    return s;
}

/* Sends bytes as one message whose raw REQ header is request id `id`. */
static void send_bytes(int s, uint32_t id, const void *buf, size_t len)
{
    union { max_align_t a; unsigned char b[64]; } ctrl;
    struct nn_cmsghdr *cm = (struct nn_cmsghdr *)ctrl.b;
    uint8_t hdr[4] = { (uint8_t)(0x80 | id >> 24), (uint8_t)(id >> 16), (uint8_t)(id >> 8),
                       (uint8_t)id };
    size_t four = 4;
    cm->cmsg_len = NN_CMSG_SPACE(sizeof four + 4);
    cm->cmsg_level = PROTO_SP;
    cm->cmsg_type = SP_HDR;
    memcpy(NN_CMSG_DATA(cm), &four, sizeof four);
    memcpy(NN_CMSG_DATA(cm) + sizeof four, hdr, 4);
    struct nn_iovec iov = { (void *)buf, len };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.b,
                            .msg_controllen = cm->cmsg_len };
    assert_int_equal(nn_sendmsg(s, &mh, 0), (int)len);
}

static void send_request(int s, uint32_t id, const Ddm__V1__WorkerRequest *r)
{
    size_t len = ddm__v1__worker_request__get_packed_size(r);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    ddm__v1__worker_request__pack(r, buf);
    send_bytes(s, id, buf, len);
    free(buf);
}

/* Receives one reply; returns it (free with ddm__v1__worker_reply__free_unpacked)
 * and its request id, or NULL on timeout. */
static Ddm__V1__WorkerReply *recv_reply(int s, uint32_t *id)
{
    void *body = NULL;
    union { max_align_t a; unsigned char b[128]; } ctrl;
    struct nn_iovec iov = { &body, NN_MSG };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.b,
                            .msg_controllen = sizeof ctrl.b };
    int n = nn_recvmsg(s, &mh, 0);
    if (n < 0)
        return NULL;
    struct nn_cmsghdr *cm = (struct nn_cmsghdr *)ctrl.b;
    size_t hl;
    memcpy(&hl, NN_CMSG_DATA(cm), sizeof hl);
    assert_int_equal(hl, 4);
    const uint8_t *h = NN_CMSG_DATA(cm) + sizeof hl;
    *id = ((uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3]) & 0x7fffffffu;
    Ddm__V1__WorkerReply *r = ddm__v1__worker_reply__unpack(NULL, (size_t)n, body);
    nn_freemsg(body);
    assert_non_null(r);
    return r;
}

/* Receives until the reply to request id arrives (earlier, stale replies
 * are dropped). NULL on timeout. */
static Ddm__V1__WorkerReply *recv_reply_to(int s, uint32_t want)
{
    for (;;) {
        uint32_t id;
        Ddm__V1__WorkerReply *r = recv_reply(s, &id);
        if (!r || id == want)
            return r;
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    }
}

static uint32_t g_next_id = 1;

/* Asks for info until the worker answers (it may still be starting). */
static Ddm__V1__WorkerReply *wait_info(int s)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        Ddm__V1__InfoRequest ir = DDM__V1__INFO_REQUEST__INIT;
        ir.has_id = 1;
        ir.id = 77;
        Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
        wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_INFO;
        wr.info = &ir;
        uint32_t id = g_next_id++;
        send_request(s, id, &wr);
        int ms = 200;
        nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &ms, sizeof ms);
        Ddm__V1__WorkerReply *r = recv_reply_to(s, id);
        ms = RECV_MS;
        nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &ms, sizeof ms);
        if (r)
            return r;
    }
    proc_dump_log(g_log);
    fail_msg("ddm-expert did not answer an InfoRequest within 10 s");
    return NULL;
}

static void wait_ready(int s)
{
    ddm__v1__worker_reply__free_unpacked(wait_info(s), NULL);
}

/* ---- denoise requests ------------------------------------------------------------------ */

typedef struct dreq {
    uint64_t id;
    int n;
    float *x;          /* [n][D] */
    int has_t;
    float t;
    float *ts;         /* NULL or [n] */
    int *labels;       /* NULL or [n] */
} dreq;

/* A random request of n latents: per-latent times and labels (some null) when
 * per_latent, else one t and no labels. */
static void dreq_make(dreq *d, uint64_t seed, int n, int per_latent)
{
    int D = g_cfg.in_dim;
    memset(d, 0, sizeof *d);
    d->id = seed;
    d->n = n;
    d->x = malloc((size_t)n * D * sizeof *d->x);
    assert_non_null(d->x);
    rng_normal_fill(seed, 10, 0, d->x, (size_t)n * D);
    if (per_latent) {
        d->ts = malloc((size_t)n * sizeof *d->ts);
        d->labels = malloc((size_t)n * sizeof *d->labels);
        for (int i = 0; i < n; i++) {
            d->ts[i] = (float)rng_uniform(seed, 11, (uint64_t)i);
            d->labels[i] = (int)(rng_uniform(seed, 12, (uint64_t)i) * 11) - 1; /* -1..9 */
        }
    } else {
        d->has_t = 1;
        d->t = (float)rng_uniform(seed, 13, 0);
    }
}

static void dreq_free(dreq *d)
{
    free(d->x);
    free(d->ts);
    free(d->labels);
}

/* Fills a protobuf DenoiseRequest pointing into d (labels converted into lab). */
static void dreq_proto(const dreq *d, Ddm__V1__DenoiseRequest *r, int32_t *lab)
{
    Ddm__V1__DenoiseRequest init = DDM__V1__DENOISE_REQUEST__INIT;
    *r = init;
    r->has_id = 1;
    r->id = d->id;
    r->has_dim = 1;
    r->dim = (uint32_t)g_cfg.in_dim;
    r->has_batch = 1;
    r->batch = (uint32_t)d->n;
    r->has_x = 1;
    r->x.data = (uint8_t *)d->x;
    r->x.len = (size_t)d->n * g_cfg.in_dim * sizeof(float);
    r->has_t = d->has_t;
    r->t = d->t;
    if (d->ts) {
        r->n_ts = (size_t)d->n;
        r->ts = d->ts;
    }
    if (d->labels) {
        for (int i = 0; i < d->n; i++)
            lab[i] = d->labels[i];
        r->n_labels = (size_t)d->n;
        r->labels = lab;
    }
}

static void send_denoise_proto(int s, uint32_t id, Ddm__V1__DenoiseRequest *r)
{
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    wr.denoise = r;
    send_request(s, id, &wr);
}

static void send_dreq(int s, uint32_t id, const dreq *d)
{
    int32_t lab[256];
    Ddm__V1__DenoiseRequest r;
    assert_true(d->n <= 256);
    dreq_proto(d, &r, lab);
    send_denoise_proto(s, id, &r);
}

/* The in-process answer for d alone: out [n][D]. */
static void reference(const dreq *d, float *out)
{
    float t[256];
    for (int i = 0; i < d->n; i++)
        t[i] = d->ts ? d->ts[i] : d->t;
    assert_int_equal(net_forward(&g_ref->cfg, &g_ref->w, g_scratch, d->n, d->x, t, d->labels, out),
                     0);
}

/* Checks a successful reply to d; exact: bit for bit, else within a small
 * relative error (a different batch composition may change BLAS rounding). */
static void check_reply(const Ddm__V1__WorkerReply *r, const dreq *d, int exact)
{
    assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
    const Ddm__V1__DenoiseReply *v = r->denoise;
    if (v->error)
        fail_msg("error reply: %s", v->error->message);
    assert_true(v->has_id);
    assert_int_equal(v->id, d->id);
    assert_true(v->has_v);
    size_t nf = (size_t)d->n * g_cfg.in_dim;
    assert_int_equal(v->v.len, nf * sizeof(float));
    assert_true(v->has_batch_size && v->batch_size >= (uint32_t)d->n);
    float *want = malloc(nf * sizeof *want);
    assert_non_null(want);
    reference(d, want);
    if (exact) {
        assert_memory_equal(v->v.data, want, nf * sizeof(float));
    } else {
        double num = 0, den = 0;
        for (size_t i = 0; i < nf; i++) {
            float got;
            memcpy(&got, v->v.data + 4 * i, 4);
            num += ((double)got - want[i]) * ((double)got - want[i]);
            den += (double)want[i] * want[i];
        }
        assert_true(sqrt(num / den) < 1e-5);
    }
    free(want);
}

/* Expects an error DenoiseReply (or WorkerReply.error when wrapper) naming
 * `needle` in its message. */
static void expect_error(int s, uint32_t id, int wrapper, int code, const char *needle)
{
    Ddm__V1__WorkerReply *r = recv_reply_to(s, id);
    if (!r)
        fail_msg("no reply to bad request %u (expected an error about \"%s\")", id, needle);
    const Ddm__V1__Error *e;
    if (wrapper) {
        assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_ERROR);
        e = r->error;
    } else {
        assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_DENOISE);
        assert_null(r->denoise->has_v ? (void *)1 : NULL);
        e = r->denoise->error;
    }
    assert_non_null(e);
    assert_true(e->has_code);
    if (code)
        assert_int_equal(e->code, code);
    assert_non_null(e->message);
    if (!strstr(e->message, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", e->message, needle);
    ddm__v1__worker_reply__free_unpacked(r, NULL);
}

/* One good request answered exactly: the worker still serves. */
static void expect_serving(int s)
{
    dreq d;
    dreq_make(&d, 999, 2, 1);
    uint32_t id = g_next_id++;
    send_dreq(s, id, &d);
    Ddm__V1__WorkerReply *r = recv_reply_to(s, id);
    assert_non_null(r);
    check_reply(r, &d, 1);
    ddm__v1__worker_reply__free_unpacked(r, NULL);
    dreq_free(&d);
}

/* ---- end-to-end tests ---------------------------------------------------------------- */

static void test_info_handshake(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "info");
    start_worker(url, "--max-batch", "64", NULL);
    int s = client_open(url, RECV_MS);
    Ddm__V1__WorkerReply *r = wait_info(s);
    assert_int_equal(r->kind_case, DDM__V1__WORKER_REPLY__KIND_INFO);
    const Ddm__V1__InfoReply *i = r->info;
    assert_null(i->error);
    assert_true(i->has_id && i->id == 77);
    assert_true(i->has_expert_id);
    assert_int_equal(i->expert_id, EXPERT_ID);
    assert_int_equal(i->dim, 784);
    assert_int_equal(i->num_experts, NUM_EXPERTS);
    assert_int_equal(i->max_batch, 64);
    assert_int_equal(i->num_classes, 10);
    assert_string_equal(i->dataset, "digits");
    assert_string_equal(i->weights_sha256, st_sha256(g_ref->file));
    assert_int_equal(strlen(i->weights_sha256), 64);
    assert_non_null(strstr(i->architecture, "hidden=64"));
    ddm__v1__worker_reply__free_unpacked(r, NULL);
    nn_close(s);
}

/* One request at a time with no batching delay: every reply equals the
 * in-process forward pass over the same rows, bit for bit; over tcp and ipc,
 * small passes on the loop thread (the default) and all on the pool. */
static void run_bit_exact(const char *url, const char *inline_rows)
{
    start_worker(url, "--max-delay-us", "0", "--inline-rows", inline_rows, NULL);
    if (half_gemm_supported()) /* sizes 1, 5, 17 below then run through half_gemm */
        assert_non_null(g_ref->w.w_in_h);
    int s = client_open(url, RECV_MS);
    wait_ready(s);
    const int sizes[] = { 1, 5, 17, 64, 256 };
    for (int k = 0; k < 5; k++) {
        for (int per_latent = 0; per_latent < 2; per_latent++) {
            dreq d;
            dreq_make(&d, 100 + (uint64_t)k * 2 + (uint64_t)per_latent, sizes[k], per_latent);
            uint32_t id = g_next_id++;
            send_dreq(s, id, &d);
            Ddm__V1__WorkerReply *r = recv_reply_to(s, id);
            assert_non_null(r);
            check_reply(r, &d, 1);
            assert_int_equal(r->denoise->batch_size, (uint32_t)d.n);
            assert_true(r->denoise->has_compute_us && r->denoise->has_queue_us);
            ddm__v1__worker_reply__free_unpacked(r, NULL);
            dreq_free(&d);
        }
    }
    nn_close(s);
}

static void test_bit_exact_ipc(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "exact");
    run_bit_exact(url, "20");
}

static void test_bit_exact_tcp(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", proc_free_port());
    run_bit_exact(url, "0");
}

/* Several raw REQ sockets, each with several requests in flight: each gets
 * exactly its own answers, and requests are stacked into shared forward
 * passes. A second --listen URL serves the same worker. */
static void test_concurrent_clients_batch(void **state)
{
    (void)state;
    enum { CLIENTS = 4, PER = 4, N = 3 };
    char url[300], url2[64];
    ipc_url(url, sizeof url, "conc");
    snprintf(url2, sizeof url2, "tcp://127.0.0.1:%d", proc_free_port());
    /* a long delay so everything sent at once shares passes */
    pid_t pid = start_worker(url, "--listen", url2, "--max-delay-us", "100000", "--max-batch",
                             "32", NULL);
    int s[CLIENTS];
    for (int c = 0; c < CLIENTS; c++) {
        s[c] = client_open(c % 2 ? url2 : url, RECV_MS);
        wait_ready(s[c]);
    }
    dreq d[CLIENTS][PER];
    for (int c = 0; c < CLIENTS; c++)
        for (int k = 0; k < PER; k++) {
            dreq_make(&d[c][k], 1000 + (uint64_t)c * 100 + (uint64_t)k, N, k % 2);
            send_dreq(s[c], (uint32_t)(c * 100 + k), &d[c][k]);
        }
    uint32_t max_bs = 0;
    for (int c = 0; c < CLIENTS; c++) {
        int seen[PER] = { 0 };
        for (int k = 0; k < PER; k++) {
            uint32_t id;
            Ddm__V1__WorkerReply *r = recv_reply(s[c], &id);
            if (!r)
                fail_msg("client %d: reply %d of %d missing", c, k + 1, PER);
            /* a reply reaches only the socket that asked */
            assert_true(id >= (uint32_t)c * 100 && id < (uint32_t)c * 100 + PER);
            int kk = (int)(id - (uint32_t)c * 100);
            assert_false(seen[kk]);
            seen[kk] = 1;
            check_reply(r, &d[c][kk], 0);
            if (r->denoise->batch_size > max_bs)
                max_bs = r->denoise->batch_size;
            assert_true(r->denoise->queue_us < 2000000);
            ddm__v1__worker_reply__free_unpacked(r, NULL);
        }
    }
    /* batches really formed: more than one request per forward pass */
    assert_true(max_bs > N);
    for (int c = 0; c < CLIENTS; c++) {
        for (int k = 0; k < PER; k++)
            dreq_free(&d[c][k]);
        nn_close(s[c]);
    }
    stop_clean(pid);
}

static void set_bad(Ddm__V1__DenoiseRequest *r, const dreq *d, int32_t *lab)
{
    dreq_proto(d, r, lab);
}

/* Every kind of bad input gets an error reply naming the problem, and the
 * worker keeps answering good requests. */
static void test_bad_inputs(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "bad");
    pid_t pid = start_worker(url, "--max-batch", "8", "--max-delay-us", "0", NULL);
    int s = client_open(url, RECV_MS);
    wait_ready(s);

    /* garbage bytes, and an empty message */
    uint8_t junk[64];
    for (int i = 0; i < 64; i++)
        junk[i] = (uint8_t)(0xff - i * 7);
    uint32_t id = g_next_id++;
    send_bytes(s, id, junk, sizeof junk);
    expect_error(s, id, 1, DDM_EFORMAT, "undecodable");
    id = g_next_id++;
    send_bytes(s, id, junk, 0);
    expect_error(s, id, 1, DDM_EINVAL, "empty WorkerRequest");
    expect_serving(s);

    dreq d, big;
    dreq_make(&d, 5, 4, 1);
    dreq_make(&big, 6, 9, 0);
    int32_t lab[16];
    float nan_ts[4];
    Ddm__V1__DenoiseRequest r;
    struct {
        const char *what;
        int code;
    } cases[] = {
        { "dim", DDM_EMISMATCH },        /* 0: wrong dim */
        { "x has", DDM_EMISMATCH },      /* 1: byte length != dim x batch x 4 */
        { "--max-batch", DDM_ERANGE },   /* 2: batch over the limit */
        { "batch must be", DDM_ERANGE }, /* 3: batch 0 */
        { "t = 1.5", DDM_ERANGE },       /* 4: t outside [0, 1] */
        { "t = nan", DDM_ERANGE },       /* 5: t NaN */
        { "t missing", DDM_EINVAL },     /* 6: no t, no ts */
        { "ts[2]", DDM_ERANGE },         /* 7: a per-latent time NaN */
        { "ts has", DDM_EMISMATCH },     /* 8: ts count mismatch */
        { "labels[1] = 10", DDM_ERANGE },/* 9: label out of range */
        { "labels[3] = -2", DDM_ERANGE },/* 10: label below null */
        { "labels has", DDM_EMISMATCH }, /* 11: labels count mismatch */
        { "not finite", DDM_ERANGE },    /* 12: NaN in x */
        { "dim missing", DDM_EINVAL },   /* 13: no dim */
        { "batch missing", DDM_EINVAL }, /* 14: no batch */
    };
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        set_bad(&r, c == 2 ? &big : &d, lab);
        float saved = d.x[7];
        switch (c) {
        case 0: r.dim = 100; break;
        case 1: r.x.len -= 4; break;
        case 2: break;
        case 3: r.batch = 0; r.x.len = 0; break;
        case 4: r.n_ts = 0; r.has_t = 1; r.t = 1.5f; break;
        case 5: r.n_ts = 0; r.has_t = 1; r.t = NAN; break;
        case 6: r.n_ts = 0; r.has_t = 0; break;
        case 7:
            memcpy(nan_ts, d.ts, sizeof nan_ts);
            nan_ts[2] = NAN;
            r.ts = nan_ts;
            break;
        case 8: r.n_ts = 3; break;
        case 9: lab[1] = 10; break;
        case 10: lab[3] = -2; break;
        case 11: r.n_labels = 2; break;
        case 12: d.x[7] = NAN; break;
        case 13: r.has_dim = 0; break;
        case 14: r.has_batch = 0; break;
        }
        id = g_next_id++;
        send_denoise_proto(s, id, &r);
        d.x[7] = saved;
        expect_error(s, id, 0, cases[c].code, cases[c].what);
        /* the id of the request is echoed even in an error */
        expect_serving(s);
    }
    dreq_free(&d);
    dreq_free(&big);
    nn_close(s);
    stop_clean(pid);
}

/* Past --max-queue latents waiting, a request is refused with a busy error
 * at once; the queued ones are still answered. */
static void test_queue_full(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "full");
    pid_t pid = start_worker(url, "--max-batch", "8", "--max-queue", "8", "--max-delay-us",
                             "2000000", NULL);
    int s = client_open(url, RECV_MS);
    wait_ready(s);
    dreq d[3];
    for (int k = 0; k < 3; k++) {
        dreq_make(&d[k], 700 + (uint64_t)k, 3, 0);
        send_dreq(s, (uint32_t)(700 + k), &d[k]);
    }
    /* 3 + 3 wait for their delay; 3 more would make 9 > 8 */
    expect_error(s, 702, 0, DDM_EBUSY, "queue full");
    for (int k = 0; k < 2; k++) {
        Ddm__V1__WorkerReply *r = recv_reply_to(s, (uint32_t)(700 + k));
        assert_non_null(r);
        check_reply(r, &d[k], 0);
        assert_int_equal(r->denoise->batch_size, 6);
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    }
    for (int k = 0; k < 3; k++)
        dreq_free(&d[k]);
    nn_close(s);
    stop_clean(pid);
}

/* A message far over NN_RCVMAXSIZE (set from --max-batch) is refused cleanly:
 * no hang, no crash; the client gets no reply (nanomsg drops the
 * connection), reconnects, and the worker serves on. A request only somewhat
 * over the limit gets a proper error reply. */
static void test_oversized_message(void **state)
{
    (void)state;
    char url[300];
    ipc_url(url, sizeof url, "big");
    pid_t pid = start_worker(url, "--max-batch", "8", "--max-delay-us", "0", NULL);
    int s = client_open(url, 1000);
    wait_ready(s);

    dreq d;
    dreq_make(&d, 8, 12, 0);
    uint32_t id = g_next_id++;
    send_dreq(s, id, &d);
    expect_error(s, id, 0, DDM_ERANGE, "--max-batch 8");
    dreq_free(&d);

    dreq_make(&d, 9, 200, 0); /* ~627 KB: over twice the limit */
    id = g_next_id++;
    send_dreq(s, id, &d);
    uint32_t got;
    Ddm__V1__WorkerReply *r = recv_reply(s, &got);
    assert_null(r); /* refused: timed out after 1 s, no hang */
    dreq_free(&d);

    /* still alive and serving (the client's pipe reconnects) */
    int ms = RECV_MS;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &ms, sizeof ms);
    wait_ready(s);
    expect_serving(s);
    nn_close(s);
    stop_clean(pid);
}

/* SIGTERM with work queued: the queued requests are answered (long before
 * their batching delay ran out) and the worker exits 0. */
static void test_sigterm_drains(void **state)
{
    (void)state;
    char url[300], hp[64];
    ipc_url(url, sizeof url, "term");
    int port = proc_free_port();
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    pid_t pid = start_worker(url, "--max-delay-us", "5000000", "--metrics", hp, NULL);
    int s = client_open(url, RECV_MS);
    wait_ready(s);
    enum { N = 5 };
    dreq d[N];
    for (int k = 0; k < N; k++) {
        dreq_make(&d[k], 300 + (uint64_t)k, 2, 1);
        send_dreq(s, (uint32_t)(5000 + k), &d[k]);
    }
    /* wait until all of them are queued (the batch waits for its 5 s delay) */
    int queued = 0;
    httpc *c;
    char err[128];
    assert_int_equal(httpc_open(hp, 2000, &c, err, sizeof err), 0);
    for (int i = 0; i < 250 && !queued; i++) {
        httpc_response resp;
        if (httpc_request(c, "GET", "/metrics", NULL, 0, NULL, 0, &resp) == 0 &&
            resp.status == 200 && strstr(resp.body, "ddm_expert_queue_latents 10\n"))
            queued = 1;
        httpc_response_free(&resp);
        if (!queued)
            usleep(20000);
    }
    httpc_close(c);
    assert_true(queued);
    assert_int_equal(kill(pid, SIGTERM), 0);
    for (int k = 0; k < N; k++) {
        uint32_t id;
        Ddm__V1__WorkerReply *r = recv_reply(s, &id);
        if (!r) {
            proc_dump_log(g_log);
            fail_msg("queued request %d not answered after SIGTERM", k);
        }
        assert_true(id >= 5000 && id < 5000 + N);
        check_reply(r, &d[id - 5000], 0);
        assert_int_equal(r->denoise->batch_size, 2 * N); /* flushed together */
        assert_true(r->denoise->queue_us < 4000000);
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    }
    int st = proc_wait(pid, 5000);
    forget_child(pid);
    assert_true(st != -1);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    for (int k = 0; k < N; k++)
        dreq_free(&d[k]);
    nn_close(s);
}

static void test_metrics(void **state)
{
    (void)state;
    char url[300], hp[64];
    ipc_url(url, sizeof url, "metrics");
    int port = proc_free_port();
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    pid_t pid = start_worker(url, "--metrics", hp, "--max-delay-us", "0", NULL);
    int s = client_open(url, RECV_MS);
    wait_ready(s);
    expect_serving(s);
    uint8_t junk[3] = { 0xff, 0xff, 0xff };
    uint32_t id = g_next_id++;
    send_bytes(s, id, junk, 3);
    expect_error(s, id, 1, 0, "undecodable");
    assert_int_equal(proc_wait_http(port, "/metrics", 200, 5000), 0);

    httpc *c;
    char err[128];
    assert_int_equal(httpc_open(hp, 5000, &c, err, sizeof err), 0);
    httpc_response resp;
    assert_int_equal(httpc_request(c, "GET", "/metrics", NULL, 0, NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 200);
    const char *want[] = {
        "ddm_expert_requests_total{kind=\"denoise\"} 1\n",
        "ddm_expert_errors_total{reason=\"decode\"} 1\n",
        "ddm_expert_latents_total 2\n",
        "ddm_expert_batch_size_bucket{le=\"2\"} 1\n",
        "ddm_expert_batch_size_count 1\n",
        "# TYPE ddm_expert_queue_seconds histogram\n",
        "ddm_expert_compute_seconds_count 1\n",
        "expert_id=\"3\"",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(resp.body, want[i]))
            fail_msg("/metrics lacks %s:\n%s", want[i], resp.body);
    httpc_response_free(&resp);
    httpc_close(c);
    nn_close(s);
    stop_clean(pid);
}

/* Runs ddm-expert with args to completion; returns the exit status and the
 * output (stdout + stderr) in out. */
static int run_to_exit(char **args, char *out, size_t outlen)
{
    char bin[256];
    proc_bin("ddm-expert", bin, sizeof bin);
    char *argv[16];
    int n = 0;
    argv[n++] = bin;
    while (*args && n < 15)
        argv[n++] = *args++;
    argv[n] = NULL;
    char log[300];
    snprintf(log, sizeof log, "%s/exit.log", g_dir);
    unlink(log);
    pid_t pid = proc_start(argv, log);
    assert_true(pid > 0);
    add_child(pid);
    int st = proc_wait(pid, 10000);
    forget_child(pid);
    assert_true(st != -1 && WIFEXITED(st));
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (f) {
        size_t k = fread(out, 1, outlen - 1, f);
        out[k] = 0;
        fclose(f);
    }
    return WEXITSTATUS(st);
}

static void test_corrupt_weights_exit_1(void **state)
{
    (void)state;
    char path[300], url[300], out[4096];
    snprintf(path, sizeof path, "%s/corrupt.safetensors", g_dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("\x10\x00\x00\x00\x00\x00\x00\x00{\"bad json", f);
    fclose(f);
    ipc_url(url, sizeof url, "corrupt");
    char *args[] = { "--weights", path, "--listen", url, NULL };
    assert_int_equal(run_to_exit(args, out, sizeof out), 1);
    assert_non_null(strstr(out, path));
    assert_non_null(strstr(out, "ddm-expert: "));
    /* one line */
    assert_non_null(strchr(out, '\n'));
    assert_null(strchr(strchr(out, '\n') + 1, '\n'));

    /* a router file is a valid model but not a denoiser */
    char rpath[300];
    snprintf(rpath, sizeof rpath, "%s/router.safetensors", g_dir);
    net_config rc = { .in_dim = 784, .hidden = 16, .n_blocks = 0, .out_dim = 4,
                      .n_classes = 10, .time_dim = 8, .gauss_rank = 0 };
    float *p = calloc(net_param_count(&rc), sizeof *p);
    net_init(&rc, p, 1);
    st_writer *sw = st_writer_new();
    char err[256];
    assert_int_equal(model_write(sw, MODEL_ROUTER, &rc, p, ST_F32, "digits", -1, 4), 0);
    assert_int_equal(st_writer_save(sw, rpath, err, sizeof err), 0);
    st_writer_free(sw);
    free(p);
    char *args2[] = { "--weights", rpath, "--listen", url, NULL };
    assert_int_equal(run_to_exit(args2, out, sizeof out), 1);
    assert_non_null(strstr(out, "not a denoiser"));

    /* a FIFO as the weights: refused at once (opening it once waited for a writer forever) */
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/weights.fifo", g_dir);
    unlink(fifo);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    char *argsf[] = { "--weights", fifo, "--listen", url, NULL };
    assert_int_equal(run_to_exit(argsf, out, sizeof out), 1);
    assert_non_null(strstr(out, "not a regular file"));
    unlink(fifo);

    /* an unusable URL is a runtime error too */
    char *args3[] = { "--weights", g_weights, "--listen", "bogus://x", NULL };
    assert_int_equal(run_to_exit(args3, out, sizeof out), 1);
    assert_non_null(strstr(out, "bogus://x"));
}

static void test_flags(void **state)
{
    (void)state;
    char out[4096];
    char *help[] = { "--help", NULL };
    assert_int_equal(run_to_exit(help, out, sizeof out), 0);
    assert_non_null(strstr(out, "--max-delay-us"));
    assert_non_null(strstr(out, "default 256"));
    char *ver[] = { "--version", NULL };
    assert_int_equal(run_to_exit(ver, out, sizeof out), 0);
    assert_non_null(strstr(out, "ddm-expert "));
    char *bad[][6] = {
        { "--bogus", NULL },
        { "--weights", g_weights, NULL },                                  /* no --listen */
        { "--listen", "ipc:///tmp/x", NULL },                              /* no --weights */
        { "--weights", g_weights, "--listen", "ipc:///tmp/x", "--max-batch", NULL },
        { "--weights", g_weights, "--listen", "ipc:///tmp/x", "extra", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(run_to_exit(bad[i], out, sizeof out), 2);
        assert_non_null(strstr(out, "ddm-expert: "));
    }
    char *badnum[] = { "--weights", g_weights, "--listen", "ipc:///tmp/x", "--max-batch", "0",
                       NULL };
    assert_int_equal(run_to_exit(badnum, out, sizeof out), 2);
    assert_non_null(strstr(out, "--max-batch"));
    char *badnum2[] = { "--weights", g_weights, "--listen", "ipc:///tmp/x", "--threads", "2x",
                        NULL };
    assert_int_equal(run_to_exit(badnum2, out, sizeof out), 2);
    char *badnum3[] = { "--weights", g_weights, "--listen", "ipc:///tmp/x", "--inline-rows", "-1",
                        NULL };
    assert_int_equal(run_to_exit(badnum3, out, sizeof out), 2);
    assert_non_null(strstr(out, "--inline-rows"));
}

/* ---- unit tests: batching policy and validation ------------------------------------ */

static void test_batcher_policy(void **state)
{
    (void)state;
    batcher b;
    batcher_init(&b, 8, 1000);
    uint64_t wait;
    assert_int_equal(batcher_ready(&b, 0, 0, &wait), 0);
    assert_true(wait == UINT64_MAX);
    batcher_item it[5] = { { .n = 3, .t_ns = 100 }, { .n = 4, .t_ns = 200 },
                           { .n = 2, .t_ns = 300 }, { .n = 8, .t_ns = 400 },
                           { .n = 1, .t_ns = 500 } };
    batcher_push(&b, &it[0]);
    /* waits for the oldest's delay */
    assert_int_equal(batcher_ready(&b, 600, 0, &wait), 0);
    assert_int_equal(wait, 500);
    assert_int_equal(batcher_ready(&b, 1100, 0, &wait), 1);
    assert_int_equal(batcher_ready(&b, 600, 1, &wait), 1); /* flush */
    batcher_push(&b, &it[1]);
    batcher_push(&b, &it[2]);
    /* 9 latents >= max 8: ready at once */
    assert_int_equal(batcher_ready(&b, 300, 0, &wait), 1);
    batcher_push(&b, &it[3]);
    batcher_push(&b, &it[4]);
    int n;
    batcher_item *l = batcher_take(&b, &n);
    /* FIFO, while it fits: 3 + 4 (2 would make 9) */
    assert_int_equal(n, 7);
    assert_ptr_equal(l, &it[0]);
    assert_ptr_equal(l->next, &it[1]);
    assert_null(l->next->next);
    l = batcher_take(&b, &n);
    assert_int_equal(n, 2); /* 2, then 8 does not fit: no overtaking by the 1 behind */
    assert_ptr_equal(l, &it[2]);
    l = batcher_take(&b, &n);
    assert_int_equal(n, 8);
    l = batcher_take(&b, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(l, &it[4]);
    assert_null(batcher_take(&b, &n));
    assert_int_equal(n, 0);
    assert_int_equal(b.count, 0);
    assert_int_equal(b.latents, 0);
    /* delay 0: never waits */
    batcher_init(&b, 8, 0);
    batcher_push(&b, &it[0]);
    assert_int_equal(batcher_ready(&b, 100, 0, &wait), 1);
}

static void test_wire_arena_decode(void **state)
{
    (void)state;
    wire_arena a;
    wire_arena_init(&a);
    dreq d;
    dreq_make(&d, 42, 16, 1);
    int32_t lab[16];
    Ddm__V1__DenoiseRequest r;
    dreq_proto(&d, &r, lab);
    Ddm__V1__WorkerRequest wr = DDM__V1__WORKER_REQUEST__INIT;
    wr.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    wr.denoise = &r;
    size_t len = ddm__v1__worker_request__get_packed_size(&wr);
    uint8_t *buf = malloc(len);
    ddm__v1__worker_request__pack(&wr, buf);
    assert_true(len <= wire_max_request_bytes(&(wire_limits){ 784, 16, 10 }));
    char err[256];
    wire_limits lim = { 784, 16, 10 };
    for (int round = 0; round < 3; round++) {
        Ddm__V1__WorkerRequest *out;
        assert_int_equal(wire_decode(&a, buf, len, &out, err, sizeof err), 0);
        assert_int_equal(out->kind_case, DDM__V1__WORKER_REQUEST__KIND_DENOISE);
        assert_int_equal(wire_check_denoise(out->denoise, &lim, err, sizeof err), 0);
        assert_memory_equal(out->denoise->x.data, d.x, out->denoise->x.len);
        assert_int_equal(out->denoise->n_labels, 16);
        if (round > 0)
            assert_null(a.big); /* after the first reset it fits the bump region */
        wire_arena_reset(&a, 1 << 20);
    }
    /* a region is never kept above max_keep */
    Ddm__V1__WorkerRequest *out;
    assert_int_equal(wire_decode(&a, buf, len, &out, err, sizeof err), 0);
    wire_arena_free(&a);
    wire_arena_init(&a);
    assert_int_equal(wire_decode(&a, buf, len, &out, err, sizeof err), 0);
    wire_arena_reset(&a, 1024);
    assert_true(a.cap <= 1024);
    /* truncated input is a decode error, not a crash */
    assert_int_equal(wire_decode(&a, buf, len / 2, &out, err, sizeof err), DDM_EFORMAT);
    wire_arena_free(&a);
    free(buf);
    dreq_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batcher_policy),
        cmocka_unit_test(test_wire_arena_decode),
        cmocka_unit_test_teardown(test_flags, test_teardown),
        cmocka_unit_test_teardown(test_corrupt_weights_exit_1, test_teardown),
        cmocka_unit_test_teardown(test_info_handshake, test_teardown),
        cmocka_unit_test_teardown(test_bit_exact_ipc, test_teardown),
        cmocka_unit_test_teardown(test_bit_exact_tcp, test_teardown),
        cmocka_unit_test_teardown(test_concurrent_clients_batch, test_teardown),
        cmocka_unit_test_teardown(test_bad_inputs, test_teardown),
        cmocka_unit_test_teardown(test_oversized_message, test_teardown),
        cmocka_unit_test_teardown(test_queue_full, test_teardown),
        cmocka_unit_test_teardown(test_metrics, test_teardown),
        cmocka_unit_test_teardown(test_sigterm_drains, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
