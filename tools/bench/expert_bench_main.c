/* expert_bench_main.c -- ddm-expert benchmark: the physical limits of one
 * core (FMA peak per vector width, bandwidth), sgemm and the in-process
 * forward as a share of them, half_gemm vs OpenBLAS at each batch size, the
 * startup cost of choosing the kernels, served throughput through the socket
 * with concurrent clients, and round-trip latency over ipc:// and tcp
 * loopback. `--retune N` measures the OpenBLAS kernels again and prints the
 * table the choice is made from (common/blas.h).
 *
 * Uses the architecture of the shipped expert (D=784, hidden=384, 2 blocks,
 * time_dim=64, 10 classes, Gaussian rank 64) with random weights, written to
 * a temp dir and served by real ddm-expert processes. Prints Markdown. */
#include <arpa/inet.h>
#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/blas.h"
#include "common/cpupeak.h"
#include "common/half_gemm.h"
#include "common/model.h"
#include "common/net.h"
#include "common/rng.h"
#include "common/st.h"
#include "ddm/v1/worker.pb-c.h"
#include "tests/support/proc.h"
#include "tools/client/cli.h"

static const net_config ARCH = { .in_dim = 784, .hidden = 384, .n_blocks = 2, .out_dim = 784,
                                 .n_classes = 10, .time_dim = 64, .gauss_rank = 64 };

/* CPU seconds used by the calling thread. */
static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU seconds (user + system) used so far by process pid, all threads. */
static double proc_cpu_s(pid_t pid)
{
    char buf[1024];
    const char *p = proc_stat(pid, buf, sizeof buf);
    unsigned long ut = 0, st = 0;
    /* fields 3.. after ")": state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime */
    if (!p || sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void die(const char *msg)
{
    fprintf(stderr, "expert_bench: %s\n", msg);
    exit(1);
}

/* ---- weights ----------------------------------------------------------------- */

static void write_weights(const char *path)
{
    const net_config *c = &ARCH;
    size_t np = net_param_count(c);
    float *p = malloc(np * sizeof *p);
    if (!p)
        die("out of memory");
    net_init(c, p, 1);
    net_weights w;
    net_bind(c, p, &w);
    int D = c->in_dim, H = c->hidden, R = c->gauss_rank;
    rng_normal_fill(2, 1, 0, w.w_out, (size_t)D * H);
    for (size_t i = 0; i < (size_t)D * H; i++)
        w.w_out[i] *= 0.05f;
    for (int i = 0; i < D; i++)
        w.g_mu[i] = 0.1f * rng_normal(2, 2, (uint64_t)i);
    memset(w.g_u, 0, (size_t)R * D * sizeof(float));
    for (int r = 0; r < R; r++) { /* orthonormal: spread unit vectors */
        w.g_u[(size_t)r * D + (size_t)(r * 12)] = 1.0f;
        w.g_lam[r] = 0.5f + 0.05f * (float)r;
    }
    w.g_sig2[0] = 0.1f;
    st_writer *sw = st_writer_new();
    char err[256];
    /* fp16 as the shipped experts: workers keep half copies for small batches */
    if (!sw || model_write(sw, MODEL_DENOISER, c, p, ST_F16, "bench", 0, 1) ||
        st_writer_save(sw, path, err, sizeof err))
        die("cannot write the weights file");
    st_writer_free(sw);
    free(p);
}

/* ---- compute -------------------------------------------------------------------- */

/* The machine may be shared: every figure below is a median over REPS
 * interleaved rounds (or, for a peak, the best of short runs: interference
 * only slows a run down). */
#define REPS 12

/* One sgemm problem C[m][n] = A[m][k] B[k][n] (row-major) with its buffers. */
typedef struct gemm_case {
    int m, n, k;
    float *a, *b, *c;
} gemm_case;

static gemm_case gemm_case_new(int m, int n, int k)
{
    gemm_case g = { m, n, k, malloc((size_t)m * k * sizeof(float)),
                    malloc((size_t)k * n * sizeof(float)), malloc((size_t)m * n * sizeof(float)) };
    if (!g.a || !g.b || !g.c)
        die("out of memory");
    rng_normal_fill(3, 1, 0, g.a, (size_t)m * k);
    rng_normal_fill(3, 2, 0, g.b, (size_t)k * n);
    return g;
}

static void gemm_case_free(gemm_case *g)
{
    free(g->a);
    free(g->b);
    free(g->c);
}

/* GFLOP per CPU-second of this thread, repeating the GEMM for at least secs
 * (and twice). */
static double gemm_window(const gemm_case *g, double secs)
{
    long it = 0;
    double c0 = thread_cpu_s(), t0 = proc_now_s();
    do {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->m, g->n, g->k, 1.0f, g->a, g->k,
                    g->b, g->n, 0.0f, g->c, g->n);
        it++;
    } while (proc_now_s() - t0 < secs || it < 2);
    return 2.0 * g->m * g->n * g->k * (double)it / (thread_cpu_s() - c0) * 1e-9;
}

/* The FMA peak of this core: the widest vectors it has, the best of every
 * measure this run takes. A peak is an upper bound: interference (other
 * processes, the hypervisor) only ever makes a measure of it lower, so the
 * best one is the truest, and a share of it is never overstated. A measure
 * paired with each round instead was fooled by a round whose peak runs were
 * all disturbed: 98% "of peak" for a forward doing 32%. */
typedef struct limits {
    int bits;    /* widest FMA width */
    double peak; /* its fp32 GFLOP/s, best so far */
} limits;

/* Measures the peak once more (20 ms) and keeps the best. */
static void limits_remeasure(limits *lim)
{
    double p = cpupeak_fma_gflops(lim->bits, 0.02);
    if (p > lim->peak)
        lim->peak = p;
}

/* sgemm: median over REPS rounds of GFLOP per CPU-second, each round after a
 * new measure of the peak. */
static double sgemm_rate(limits *lim, int m, int n, int k)
{
    gemm_case g = gemm_case_new(m, n, k);
    double r[REPS];
    gemm_window(&g, 0.05);
    for (int rep = 0; rep < REPS; rep++) {
        limits_remeasure(lim);
        r[rep] = gemm_window(&g, 0.1);
    }
    gemm_case_free(&g);
    return cli_median(r, REPS);
}

/* net_forward over one batch of inputs. */
typedef struct fwd_case {
    const model *m;
    const net_weights *w; /* m's weights, or a copy without the half copies */
    int batch;
    net_scratch *s;
    float *x, *out, *t;
    int *lab;
} fwd_case;

static fwd_case fwd_case_new(const model *m, int batch)
{
    const net_config *c = &m->cfg;
    fwd_case f = { m, &m->w, batch, net_scratch_new(c, batch, 0),
                   malloc((size_t)batch * c->in_dim * sizeof(float)),
                   malloc((size_t)batch * c->out_dim * sizeof(float)),
                   malloc((size_t)batch * sizeof(float)), malloc((size_t)batch * sizeof(int)) };
    if (!f.s || !f.x || !f.out || !f.t || !f.lab)
        die("out of memory");
    rng_normal_fill(4, 1, 0, f.x, (size_t)batch * c->in_dim);
    for (int i = 0; i < batch; i++) {
        f.t[i] = 0.5f; /* a batch shares its step, as the router sends it */
        f.lab[i] = i % 11 - 1;
    }
    return f;
}

static void fwd_case_free(fwd_case *f)
{
    net_scratch_free(f->s);
    free(f->x);
    free(f->out);
    free(f->t);
    free(f->lab);
}

/* Latents/s (wall) of repeating the forward pass for at least secs (and
 * twice); the rate per CPU-second of this thread in *cpu_rate (may be NULL). */
static double fwd_window(fwd_case *f, double secs, double *cpu_rate)
{
    long it = 0;
    double c0 = thread_cpu_s(), t0 = proc_now_s(), el;
    do {
        if (net_forward(&f->m->cfg, f->w, f->s, f->batch, f->x, f->t, f->lab, f->out))
            die("net_forward failed");
        it++;
        el = proc_now_s() - t0;
    } while (el < secs || it < 2);
    if (cpu_rate)
        *cpu_rate = (double)it * f->batch / (thread_cpu_s() - c0);
    return (double)it * f->batch / el;
}

typedef struct fwd_result {
    double latents_s;  /* median over REPS rounds, wall clock */
    double per_cpu_s;  /* median over rounds, per CPU-second of the thread */
    double gflops;     /* executed GFLOP per CPU-second at per_cpu_s */
    double bytes;      /* weights one call reads */
    double gbs;        /* read bandwidth over a buffer of `bytes`: the best of the rounds */
    double bound_s;    /* weight-streaming bound: batch x gbs / bytes */
} fwd_result;

/* Each round: the FMA peak (20 ms; the best is kept in lim), the read
 * bandwidth over a buffer the size of the weights the call reads (20 ms:
 * from the cache level they sit in, as the forward's are; the best is
 * kept), then the forward (0.1 s), whose rate is per CPU-second of its
 * thread: what it does while it has the core. */
static fwd_result forward_rate(const model *m, limits *lim, int batch)
{
    fwd_case f = fwd_case_new(m, batch);
    fwd_result res = { 0 };
    res.bytes = net_forward_weight_bytes(&m->cfg, &m->w, batch);
    cpupeak_buf *buf = cpupeak_buf_new((size_t)res.bytes);
    if (!buf)
        die("out of memory");
    double flops = net_forward_flops(&m->cfg, batch, net_t_runs(batch, f.t)) / batch;
    double rate[REPS], crate[REPS];
    fwd_window(&f, 0.05, NULL);
    for (int rep = 0; rep < REPS; rep++) {
        limits_remeasure(lim);
        double gbs = cpupeak_bandwidth(buf, CPUPEAK_READ, 0.02);
        if (gbs > res.gbs)
            res.gbs = gbs;
        rate[rep] = fwd_window(&f, 0.1, &crate[rep]);
    }
    cpupeak_buf_free(buf);
    fwd_case_free(&f);
    res.latents_s = cli_median(rate, REPS);
    res.per_cpu_s = cli_median(crate, REPS);
    res.gflops = res.per_cpu_s * flops * 1e-9;
    res.bound_s = batch * res.gbs * 1e9 / res.bytes;
    return res;
}

/* Median over REPS rounds of (forward on half_gemm) / (forward on OpenBLAS)
 * at batch, per CPU-second, both 0.1 s back to back, half_gemm taking every
 * row count; the medians of both rates in *half_s and *blas_s. */
static double half_speedup(const model *m, int batch, double *half_s, double *blas_s)
{
    net_weights plain = m->w;
    plain.w_in_h = plain.w1_h = plain.w2_h = plain.w_out_h = plain.g_u_th = plain.g_u_h = NULL;
    const int saved = half_gemm_rows();
    half_gemm_set_rows(1 << 20);
    fwd_case f = fwd_case_new(m, batch);
    double ratio[REPS], hr[REPS], br[REPS];
    for (int rep = 0; rep < REPS; rep++) {
        f.w = &m->w;
        fwd_window(&f, 0.1, &hr[rep]);
        f.w = &plain;
        fwd_window(&f, 0.1, &br[rep]);
        ratio[rep] = hr[rep] / br[rep];
    }
    fwd_case_free(&f);
    half_gemm_set_rows(saved);
    *half_s = cli_median(hr, REPS);
    *blas_s = cli_median(br, REPS);
    return cli_median(ratio, REPS);
}

/* ---- startup ------------------------------------------------------------------------------ */

/* Milliseconds from start to exit of `bin --listen ipc:///nonexistent/x`
 * (a usage error, right after the kernels are chosen) with extra arguments
 * and environment. */
static double startup_ms(const char *bin, char *const extra[], const char *core, const char *rows)
{
    extern char **environ;
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **env = calloc(ne + 3, sizeof *env), ce[64], re[64];
    if (!env)
        die("out of memory");
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (strncmp(environ[i], "OPENBLAS_CORETYPE=", 18) && strncmp(environ[i], "DDM_HALF_ROWS=", 14))
            env[k++] = environ[i];
    if (core) {
        snprintf(ce, sizeof ce, "OPENBLAS_CORETYPE=%s", core);
        env[k++] = ce;
    }
    if (rows) {
        snprintf(re, sizeof re, "DDM_HALF_ROWS=%s", rows);
        env[k++] = re;
    }
    char *argv[16] = { (char *)bin, "--listen", "ipc:///nonexistent/x" };
    int a = 3;
    for (int i = 0; extra && extra[i] && a < 15; i++)
        argv[a++] = extra[i];
    argv[a] = NULL;
    double t0 = proc_now_s();
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execve(bin, argv, env);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    double ms = (proc_now_s() - t0) * 1e3;
    free(env);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 2)
        die("startup run did not end with its usage error");
    return ms;
}

/* ---- workers and clients ------------------------------------------------------------- */

static pid_t start_worker(const char *bin, const char *weights, const char *url,
                          const char *delay_us)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork failed");
    if (pid == 0) {
        execl(bin, bin, "--weights", weights, "--listen", url, "--max-batch", "256",
              "--max-delay-us", delay_us, "--threads", "1", "--log-level", "warn", (char *)NULL);
        fprintf(stderr, "expert_bench: exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    return pid;
}

static void stop_worker(pid_t pid)
{
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
}

static int client_socket(const char *url)
{
    int s = nn_socket(AF_SP_RAW, NN_REQ);
    int big = -1, to = 10000;
    if (s < 0 || nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &big, sizeof big) ||
        nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &to, sizeof to) ||
        nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDTIMEO, &to, sizeof to) || nn_connect(s, url) < 0)
        die("cannot open a client socket");
    return s;
}

static void send_id(int s, uint32_t id, const void *buf, size_t len)
{
    union { max_align_t a; unsigned char b[64]; } ctrl;
    struct nn_cmsghdr *cm = (struct nn_cmsghdr *)ctrl.b;
    size_t four = 4;
    uint8_t h[4] = { (uint8_t)(0x80 | (id >> 24 & 0x7f)), (uint8_t)(id >> 16), (uint8_t)(id >> 8),
                     (uint8_t)id };
    cm->cmsg_len = NN_CMSG_SPACE(sizeof four + 4);
    cm->cmsg_level = PROTO_SP;
    cm->cmsg_type = SP_HDR;
    memcpy(NN_CMSG_DATA(cm), &four, sizeof four);
    memcpy(NN_CMSG_DATA(cm) + sizeof four, h, 4);
    struct nn_iovec iov = { (void *)buf, len };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.b,
                            .msg_controllen = cm->cmsg_len };
    if (nn_sendmsg(s, &mh, 0) != (int)len)
        die("send failed");
}

/* Receives a reply; returns its batch_size (0 on an error reply), -1 on timeout. */
static int recv_one(int s)
{
    void *body = NULL;
    union { max_align_t a; unsigned char b[128]; } ctrl;
    struct nn_iovec iov = { &body, NN_MSG };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl.b,
                            .msg_controllen = sizeof ctrl.b };
    int n = nn_recvmsg(s, &mh, 0);
    if (n < 0)
        return -1;
    Ddm__V1__WorkerReply *r = ddm__v1__worker_reply__unpack(NULL, (size_t)n, body);
    nn_freemsg(body);
    int bs = 0;
    if (r && r->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE && !r->denoise->error &&
        r->denoise->has_v)
        bs = (int)r->denoise->batch_size;
    else if (r && r->kind_case == DDM__V1__WORKER_REPLY__KIND_DENOISE && r->denoise->error)
        fprintf(stderr, "expert_bench: error reply: %s\n", r->denoise->error->message);
    if (r)
        ddm__v1__worker_reply__free_unpacked(r, NULL);
    return bs;
}

/* One packed DenoiseRequest of n latents. */
static uint8_t *make_request(int n, size_t *len)
{
    int D = ARCH.in_dim;
    float *x = malloc((size_t)n * D * sizeof *x);
    int32_t *lab = malloc((size_t)n * sizeof *lab);
    rng_normal_fill(5, (uint64_t)n, 0, x, (size_t)n * D);
    for (int i = 0; i < n; i++)
        lab[i] = i % 10;
    Ddm__V1__DenoiseRequest d = DDM__V1__DENOISE_REQUEST__INIT;
    d.has_id = 1;
    d.has_t = 1;
    d.t = 0.5f;
    d.has_dim = 1;
    d.dim = (uint32_t)D;
    d.has_batch = 1;
    d.batch = (uint32_t)n;
    d.has_x = 1;
    d.x.data = (uint8_t *)x;
    d.x.len = (size_t)n * D * sizeof(float);
    d.n_labels = (size_t)n;
    d.labels = lab;
    Ddm__V1__WorkerRequest w = DDM__V1__WORKER_REQUEST__INIT;
    w.kind_case = DDM__V1__WORKER_REQUEST__KIND_DENOISE;
    w.denoise = &d;
    *len = ddm__v1__worker_request__get_packed_size(&w);
    uint8_t *buf = malloc(*len);
    ddm__v1__worker_request__pack(&w, buf);
    free(x);
    free(lab);
    return buf;
}

/* Waits until the worker at url answers a one-latent request. */
static void wait_ready(const char *url)
{
    int s = client_socket(url);
    int to = 200;
    nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &to, sizeof to);
    size_t len;
    uint8_t *req = make_request(1, &len);
    for (int i = 0; i < 100; i++) {
        send_id(s, (uint32_t)i, req, len);
        if (recv_one(s) > 0) {
            free(req);
            nn_close(s);
            return;
        }
    }
    die("the worker did not answer within 20 s");
}

static long g_latents; /* latents received by all clients (atomic) */
static long g_batch_sum, g_replies;

typedef struct client {
    pthread_t th;
    const char *url;
    const uint8_t *req;
    size_t len;
    int latents;         /* per request */
    int depth;           /* requests kept in flight */
    double t0, t1;       /* measuring window */
    long got_latents;    /* latents of replies inside the window */
    int failed;
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    int s = client_socket(c->url);
    uint32_t id = 1;
    int inflight = 0;
    for (int i = 0; i < c->depth; i++, inflight++)
        send_id(s, id++, c->req, c->len);
    while (inflight > 0) {
        int bs = recv_one(s);
        inflight--;
        if (bs < 0) {
            c->failed = 1;
            break;
        }
        double t = proc_now_s();
        if (bs > 0) {
            __atomic_add_fetch(&g_latents, c->latents, __ATOMIC_RELAXED);
            __atomic_add_fetch(&g_batch_sum, bs, __ATOMIC_RELAXED);
            __atomic_add_fetch(&g_replies, 1, __ATOMIC_RELAXED);
        }
        if (t >= c->t0 && t < c->t1 && bs > 0)
            c->got_latents += c->latents;
        if (t < c->t1) {
            send_id(s, id++, c->req, c->len);
            inflight++;
        }
    }
    nn_close(s);
    return NULL;
}

typedef struct served_result {
    double latents_s;   /* mean over the whole window */
    double best_s;      /* best 0.5 s sub-window */
    double per_cpu_s;   /* latents per CPU-second of the worker process */
    double avg_batch;
    int failed;
} served_result;

static served_result served_rate(const char *url, pid_t worker, int nclients, int per_req,
                                 int depth, double secs)
{
    size_t len;
    uint8_t *req = make_request(per_req, &len);
    client *cs = calloc((size_t)nclients, sizeof *cs);
    double start = proc_now_s() + 0.1;
    double t0 = start + 0.5, t1 = t0 + secs;
    for (int i = 0; i < nclients; i++) {
        cs[i] = (client){ .url = url, .req = req, .len = len, .latents = per_req, .depth = depth,
                          .t0 = t0, .t1 = t1 };
        pthread_create(&cs[i].th, NULL, client_main, &cs[i]);
    }
    /* sample the shared counters every 0.25 s inside the window */
    enum { MAXS = 512 };
    double ts[MAXS];
    long lat_at[MAXS], bs_at[MAXS], rep_at[MAXS];
    int ns = 0;
    while (proc_now_s() < t0)
        usleep(1000);
    double wcpu0 = proc_cpu_s(worker);
    for (double next = t0; next <= t1 + 1e-9 && ns < MAXS; next += 0.25) {
        while (proc_now_s() < next)
            usleep(500);
        ts[ns] = proc_now_s();
        lat_at[ns] = __atomic_load_n(&g_latents, __ATOMIC_RELAXED);
        bs_at[ns] = __atomic_load_n(&g_batch_sum, __ATOMIC_RELAXED);
        rep_at[ns] = __atomic_load_n(&g_replies, __ATOMIC_RELAXED);
        ns++;
    }
    double wcpu = proc_cpu_s(worker) - wcpu0;
    served_result r = { 0 };
    long lat = 0;
    for (int i = 0; i < nclients; i++) {
        pthread_join(cs[i].th, NULL);
        lat += cs[i].got_latents;
        r.failed |= cs[i].failed;
    }
    r.latents_s = (double)lat / secs;
    if (ns > 1 && wcpu > 0)
        r.per_cpu_s = (double)(lat_at[ns - 1] - lat_at[0]) / wcpu;
    for (int i = 0; i + 2 < ns; i++) {
        double rate = (double)(lat_at[i + 2] - lat_at[i]) / (ts[i + 2] - ts[i]);
        if (rate > r.best_s)
            r.best_s = rate;
    }
    if (ns > 1 && rep_at[ns - 1] > rep_at[0])
        r.avg_batch = (double)(bs_at[ns - 1] - bs_at[0]) / (double)(rep_at[ns - 1] - rep_at[0]);
    free(cs);
    free(req);
    return r;
}

/* Median over `rounds` of served latents/s (mean over 0.6 s) divided by the
 * in-process forward's at `batch` measured just before (0.3 s): the host's
 * speed drifts, and a ratio of two rates taken a minute apart drifts with it. */
static double served_paired(const char *url, pid_t worker, const model *m, int nclients,
                            int depth, int batch, int rounds)
{
    fwd_case f = fwd_case_new(m, batch);
    double ratio[16];
    if (rounds > 16)
        rounds = 16;
    for (int r = 0; r < rounds; r++) {
        double in = fwd_window(&f, 0.3, NULL);
        served_result sr = served_rate(url, worker, nclients, 16, depth, 0.6);
        ratio[r] = sr.latents_s / in;
    }
    fwd_case_free(&f);
    return cli_median(ratio, (size_t)rounds);
}

/* Round trips of one latent, one at a time: p50 and p99 in microseconds. */
static void latency(const char *url, int n, double *p50, double *p99, double *mean)
{
    int s = client_socket(url);
    size_t len;
    uint8_t *req = make_request(1, &len);
    double *lat = malloc((size_t)n * sizeof *lat);
    for (int i = 0; i < 200; i++) { /* warm up */
        send_id(s, (uint32_t)i, req, len);
        if (recv_one(s) <= 0)
            die("latency warm-up failed");
    }
    double sum = 0;
    for (int i = 0; i < n; i++) {
        double t0 = proc_now_s();
        send_id(s, (uint32_t)(1000 + i), req, len);
        if (recv_one(s) <= 0)
            die("latency request failed");
        lat[i] = (proc_now_s() - t0) * 1e6;
        sum += lat[i];
    }
    cli_sort_doubles(lat, (size_t)n);
    *p50 = cli_percentile(lat, (size_t)n, 0.50);
    *p99 = cli_percentile(lat, (size_t)n, 0.99);
    *mean = sum / n;
    free(lat);
    free(req);
    nn_close(s);
}

/* A loopback TCP port that was free a moment ago (bind to 0, close). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &len))
        die("cannot find a free TCP port");
    close(fd);
    return ntohs(a.sin_port);
}

/* Prints the physical limits of one core; returns the FMA peak measured so
 * far (the rounds below raise it to the best of theirs). */
static limits print_limits(const model *m)
{
    limits lim = { 0, 0 };
    double ghz = cpupeak_clock_ghz(0.1);
    printf("### The physical limits of one core\n\n"
           "Clock of scalar code (a chain of dependent integer adds, best of 0.1 s): %.2f GHz. "
           "fp32 FMA throughput of one thread (independent FMA chains), best of 0.3 s of short "
           "runs; FMAs per cycle: the median over 0.3 s of short FMA runs each divided by the "
           "clock measured just before and after (FMA units x lanes x 2 x clock = the peak).\n\n"
           "| vector width | GFLOP/s | FMAs per cycle (units kept busy) |\n"
           "|---|---|---|\n", ghz);
    for (int bits = 128; bits <= 512; bits *= 2) {
        double gf = cpupeak_fma_gflops(bits, 0.3);
        if (gf <= 0)
            continue;
        printf("| %d-bit | %.1f | %.2f |\n", bits, gf, cpupeak_fma_per_cycle(bits, 0.3));
        if (gf > lim.peak) {
            lim.peak = gf;
            lim.bits = bits;
        }
    }
    if (lim.peak <= 0)
        die("no FMA unit measured (this bench needs x86-64 with FMA)");
    printf("\n");

    /* the weights' working sets, then buffers far beyond the caches */
    size_t llc = cpupeak_llc_bytes(), big = llc > (256u << 20) ? llc : (256u << 20);
    if (big > (1u << 30))
        big = 1u << 30;
    const struct { const char *what; size_t bytes; } sizes[] = {
        { "weights read by a batch-1 forward", (size_t)net_forward_weight_bytes(&m->cfg, &m->w, 1) },
        { "weights read by a batch-256 forward", (size_t)net_forward_weight_bytes(&m->cfg, &m->w,
                                                                                   256) },
        { "64 MiB", 64u << 20 },
        { "far beyond the caches", big },
    };
    printf("Bandwidth of one thread, GB/s (1e9 bytes), best of 0.3 s of passes; copy and triad "
           "count bytes as STREAM does (2 and 3 arrays; the write-allocate read not counted). "
           "Largest cache reported by sysfs: %.0f MiB.\n\n"
           "| buffer (per array) | MiB | read | copy | triad |\n|---|---|---|---|---|\n",
           (double)llc / (1 << 20));
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        cpupeak_buf *b = cpupeak_buf_new(sizes[i].bytes);
        if (!b)
            die("out of memory for the bandwidth buffers");
        double r = cpupeak_bandwidth(b, CPUPEAK_READ, 0.3), c = cpupeak_bandwidth(b, CPUPEAK_COPY,
                                                                                 0.3);
        double t = cpupeak_bandwidth(b, CPUPEAK_TRIAD, 0.3);
        printf("| %s | %.1f | %.1f | %.1f | %.1f |\n", sizes[i].what,
               (double)cpupeak_buf_bytes(b) / (1 << 20), r, c, t);
        cpupeak_buf_free(b);
        fflush(stdout);
    }
    printf("\n");
    return lim;
}

/* The cost of choosing the kernels at startup: ddm-expert to its usage
 * error with a warm cache, with both choices inherited (no file read: the
 * floor), and with a restart into other kernels; 30 interleaved rounds. */
static void print_startup(const char *bin)
{
    char rows[16];
    snprintf(rows, sizeof rows, "%d", half_gemm_rows());
    const char *other = strcasecmp(blas_core(), "Haswell") ? "Haswell" : "Zen";
    char *restart[] = { "--blas-core", (char *)other, NULL };
    enum { N = 30 };
    double warm[N], inherit[N], re[N];
    for (int r = 0; r < N; r++) {
        warm[r] = startup_ms(bin, NULL, NULL, NULL);
        inherit[r] = startup_ms(bin, NULL, blas_core(), rows);
        re[r] = startup_ms(bin, restart, NULL, rows);
    }
    double mw = cli_median(warm, N), mi = cli_median(inherit, N), mr = cli_median(re, N);
    cli_sort_doubles(warm, N);
    cli_sort_doubles(inherit, N);
    cli_sort_doubles(re, N);
    printf("### Startup: choosing the kernels\n\n"
           "`%s --listen ipc:///nonexistent/x` to its usage error (right after the kernels "
           "are chosen), ms from fork to exit, %d interleaved rounds: median (fastest).\n\n"
           "| how the choice is made | ms |\n|---|---|\n"
           "| both inherited (OPENBLAS_CORETYPE, DDM_HALF_ROWS: no file read, no restart) | "
           "%.1f (%.1f) |\n"
           "| warm cache (the file read, %s kernels already loaded) | %.1f (%.1f) |\n"
           "| `--blas-core %s`: one restart into other kernels | %.1f (%.1f) |\n\n",
           bin, N, mi, inherit[0], blas_core(), mw, warm[0], other, mr, re[0]);
}

int main(int argc, char **argv)
{
    blas_select(&argc, argv); /* the same kernels ddm-expert will use */
    const char *bin = "bin/ddm-expert";
    double secs = 3.0;
    int gemm_only = 0, retune = 0;
    static const struct option opts[] = {
        { "bin", required_argument, 0, 'b' },
        { "seconds", required_argument, 0, 's' },
        { "gemm-only", no_argument, 0, 'g' },
        { "retune", required_argument, 0, 'r' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int o;
    while ((o = getopt_long(argc, argv, "b:s:gr:h", opts, NULL)) != -1) {
        switch (o) {
        case 'b': bin = optarg; break;
        case 's': secs = atof(optarg); break;
        case 'g': gemm_only = 1; break;
        case 'r': retune = atoi(optarg); break;
        case 'h':
            printf("usage: expert_bench [--bin PATH/ddm-expert] [--seconds S] [--gemm-only]\n"
                   "       expert_bench --retune ROUNDS\n"
                   "--retune measures this CPU's OpenBLAS kernels and half_gemm crossover again\n"
                   "(ROUNDS interleaved rounds), writes the cache every ddm binary reads\n"
                   "(common/blas.h) and prints the table. --blas-core NAME and --half-rows N\n"
                   "override the choice.\n");
            return 0;
        default: return 2;
        }
    }
    if (secs <= 0)
        die("--seconds must be > 0");
    if (optind < argc)
        die("unexpected argument (see --help)");
    openblas_set_num_threads(1);
    if (retune > 0) {
        blas_table t;
        blas_choice ch;
        char err[512];
        if (blas_measure(retune, 0.003, &t, &ch, err, sizeof err) != 0)
            die(err);
        blas_ident id;
        blas_ident_get(&id);
        printf("Latents/s of the shipped expert's forward (random fp16 weights, one t per batch) "
               "on OpenBLAS with each core type this CPU (%s) can run, at the batch sizes "
               "workers see; median over %d interleaved rounds of the fastest call in a 3 ms "
               "window; %s; measured in %.1f s. Error: L2 norm of the difference from "
               "net_forward_ref over its norm, worst over the row counts (refused above %.0e). "
               "The crossover is the row count up to which half_gemm beats OpenBLAS "
               "(net_forward uses it up to there).\n\n",
               id.cpu, t.rounds, id.openblas, t.seconds, BLAS_TUNE_MAX_ERR);
        blas_tune_print(stdout, &t, &ch);
        printf("\nChosen: **%s** kernels, half_gemm up to **%d** rows%s.\n", ch.core, ch.half_rows,
               ch.kept_own ? " (OpenBLAS's own pick, within 3% of the fastest: no restart)" : "");
        return 0;
    }
    if (gemm_only) {
        gemm_case a = gemm_case_new(256, 384, 784), b = gemm_case_new(1024, 1024, 1024);
        double ra[REPS], rb[REPS];
        for (int rep = 0; rep < REPS; rep++) {
            ra[rep] = gemm_window(&a, 0.1);
            rb[rep] = gemm_window(&b, 0.2);
        }
        printf("| %s | %.1f | %.1f |\n", blas_core(), cli_median(ra, REPS), cli_median(rb, REPS));
        gemm_case_free(&a);
        gemm_case_free(&b);
        return 0;
    }
    char dir[] = "/tmp/ddm-bench-expert-XXXXXX";
    if (!mkdtemp(dir))
        die("mkdtemp failed");
    char weights[128];
    snprintf(weights, sizeof weights, "%s/expert-0.safetensors", dir);
    write_weights(weights);
    char err[256];
    model *m = model_open(weights, err, sizeof err);
    if (!m)
        die(err);

    printf("## ddm-expert\n\n");
    printf("Architecture: D=%d, hidden=%d, n_blocks=%d, time_dim=%d, n_classes=%d, "
           "gauss_rank=%d (%.2f MFLOP per latent executed when a batch shares its t), random "
           "fp16 weights, OpenBLAS 1 thread, %s kernels (%s), half_gemm up to %d rows (%s).\n\n",
           ARCH.in_dim, ARCH.hidden, ARCH.n_blocks, ARCH.time_dim, ARCH.n_classes,
           ARCH.gauss_rank, net_forward_flops(&ARCH, 256, 1) / 256 * 1e-6, blas_core(),
           blas_core_source(), half_gemm_rows(), blas_rows_source());
    fflush(stdout);
    limits lim = print_limits(m);

    /* everything measured first, printed after: the peak they are shared
     * of is the best measure of the whole run */
    double g1 = sgemm_rate(&lim, 256, 384, 784), g2 = sgemm_rate(&lim, 1024, 1024, 1024);
    static const int batches[] = { 1, 4, 16, 32, 64, 128, 256 };
    enum { NB = sizeof batches / sizeof batches[0] };
    fwd_result fr[NB];
    for (int i = 0; i < NB; i++)
        fr[i] = forward_rate(m, &lim, batches[i]);
    printf("FMA peak used for every share below: **%.1f GFLOP/s** (%d-bit), the best of the "
           "measures above and of one more before each of the %d rounds of every row below.\n\n",
           lim.peak, lim.bits, REPS);
    printf("### cblas_sgemm, single thread\n\n"
           "GFLOP per CPU-second, median over %d rounds of 0.1 s.\n\n"
           "| GEMM (M x N x K) | GFLOP per CPU-s | %% of the FMA peak |\n|---|---|---|\n"
           "| 256 x 384 x 784 | %.1f | %.0f%% |\n| 1024 x 1024 x 1024 | %.1f | %.0f%% |\n\n",
           REPS, g1, 100 * g1 / lim.peak, g2, 100 * g2 / lim.peak);
    printf("### In-process forward (net_forward), single thread\n\n"
           "One t per batch (as the router sends a step). GFLOP counts the matrix products "
           "as executed: the time embedding's once per batch, the rest per latent; "
           "elementwise work is not counted. Rates: medians over %d rounds of 0.1 s, per "
           "CPU-second of the thread (wall clock beside it: on a busy machine it is lower "
           "by the time the thread waited for a core). Weight-streaming bound: batch x the "
           "read bandwidth over a buffer the size of the weights a call reads (best of 20 ms "
           "before each round; from the cache level those weights sit in, as the "
           "forward's do) / those bytes: every weight is read at least once per call.\n\n"
           "| batch | path | latents/s (wall) | latents per CPU-s | GFLOP per CPU-s | %% of FMA "
           "peak | weight MB per call | read GB/s at that size | streaming bound, latents/s | "
           "%% of bound |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n", REPS);
    for (int i = 0; i < NB; i++) {
        int half = m->halves && batches[i] <= half_gemm_rows();
        printf("| %d | %s | %.0f | %.0f | %.1f | %.0f%% | %.2f | %.1f | %.0f | %.0f%% |\n",
               batches[i], half ? "half_gemm" : "OpenBLAS", fr[i].latents_s, fr[i].per_cpu_s,
               fr[i].gflops, 100 * fr[i].gflops / lim.peak, fr[i].bytes * 1e-6, fr[i].gbs,
               fr[i].bound_s, 100 * fr[i].per_cpu_s / fr[i].bound_s);
    }
    fflush(stdout);

    if (m->halves) {
        printf("\n### half_gemm vs OpenBLAS at each batch size (the crossover)\n\n"
               "The forward with half_gemm at every layer it can take vs on OpenBLAS (%s) "
               "alone, latents per CPU-second, median over %d rounds of the two back to back "
               "(0.1 s each). "
               "net_forward uses half_gemm up to %d rows here (%s).\n\n"
               "| batch | half_gemm latents per CPU-s | OpenBLAS | half_gemm / OpenBLAS |\n"
               "|---|---|---|---|\n", blas_core(), REPS, half_gemm_rows(), blas_rows_source());
        static const int hb[] = { 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256 };
        for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++) {
            double h, o2, x = half_speedup(m, hb[i], &h, &o2);
            printf("| %d | %.0f | %.0f | %.2fx |\n", hb[i], h, o2, x);
            fflush(stdout);
        }
        printf("\n");
    }
    print_startup(bin);
    fflush(stdout);

    char ipc[160];
    snprintf(ipc, sizeof ipc, "ipc://%s/bench.ipc", dir);
    pid_t w = start_worker(bin, weights, ipc, "500");
    wait_ready(ipc);
    printf("\n### Served through the socket (ipc://, 16 latents per request, 2 in flight per "
           "client, --max-delay-us 500)\n\n"
           "Served rate: best 0.5 s window (mean over %.0f s in brackets), compared with the best "
           "in-process rate at the batch the clients can fill. Per CPU-second: latents per "
           "second of CPU used by the whole worker process (all its threads) vs by the "
           "in-process forward: the efficiency of serving, independent of other load. "
           "Paired: the median over 5 rounds of served (mean over 0.6 s) / in-process "
           "measured just before it.\n\n"
           "| clients | served latents/s | mean batch | in-process latents/s at batch | served / "
           "in-process | served per worker CPU-s | in-process per CPU-s | ratio | served / "
           "in-process (paired) |\n"
           "|---|---|---|---|---|---|---|---|---|\n", secs);
    /* the last row: one client (one raw REQ socket, one pipe) with 16 in
     * flight, as a router pipelining to one worker would */
    static const int nclients[] = { 1, 4, 16, 1 };
    static const int depth[] = { 2, 2, 2, 16 };
    for (int i = 0; i < 4; i++) {
        served_result sr = served_rate(ipc, w, nclients[i], 16, depth[i], secs);
        int nominal = 16 * nclients[i] * depth[i]; /* latents the clients keep in flight */
        nominal = nominal > 256 ? 256 : nominal;
        int want = nominal >= 256 ? 256 : nominal >= 64 ? 64 : 16, bi = 0;
        while (batches[bi] != want)
            bi++;
        char who[32];
        snprintf(who, sizeof who, depth[i] == 2 ? "%d" : "%d (%d in flight)", nclients[i],
                 depth[i]);
        double paired = served_paired(ipc, w, m, nclients[i], depth[i], batches[bi], 5);
        printf("| %s | %.0f (%.0f) | %.1f | %.0f (batch %d) | %.0f%% | %.0f | %.0f | %.0f%% | "
               "%.0f%% |%s\n",
               who, sr.best_s, sr.latents_s, sr.avg_batch, fr[bi].latents_s,
               batches[bi], 100.0 * sr.best_s / fr[bi].latents_s, sr.per_cpu_s,
               fr[bi].per_cpu_s, 100.0 * sr.per_cpu_s / fr[bi].per_cpu_s, 100.0 * paired,
               sr.failed ? " (a client timed out)" : "");
        fflush(stdout);
    }
    stop_worker(w);

    printf("\n### Round trip of one latent (one client, one request at a time, "
           "--max-delay-us 0)\n\n| transport | p50 us | p99 us | mean us |\n|---|---|---|---|\n");
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp://127.0.0.1:%d", free_port());
    const char *urls[2] = { ipc, tcp };
    const char *names[2] = { "ipc://", "tcp://127.0.0.1" };
    for (int i = 0; i < 2; i++) {
        w = start_worker(bin, weights, urls[i], "0");
        wait_ready(urls[i]);
        double p50, p99, mean;
        latency(urls[i], 3000, &p50, &p99, &mean);
        printf("| %s | %.0f | %.0f | %.0f |\n", names[i], p50, p99, mean);
        fflush(stdout);
        stop_worker(w);
    }
    w = start_worker(bin, weights, ipc, "500");
    wait_ready(ipc);
    double p50, p99, mean;
    latency(ipc, 2000, &p50, &p99, &mean);
    printf("| ipc://, default --max-delay-us 500 | %.0f | %.0f | %.0f |\n", p50, p99, mean);
    stop_worker(w);

    model_close(m);
    unlink(weights);
    char sock[200];
    snprintf(sock, sizeof sock, "%s/bench.ipc", dir);
    unlink(sock);
    rmdir(dir);
    return 0;
}
