/* test_net.c -- the MLP math: BLAS forward vs the plain reference, the Gaussian
 * baseline vs an explicit-covariance closed form, finite-difference gradients
 * of every trainable tensor, accumulation, null labels, error returns, and a
 * throughput print. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <cblas.h>

#include "common/blas.h"
#include "common/err.h"
#include "common/forkjoin.h"
#include "common/half_gemm.h"
#include "common/net.h"
#include "common/net_par.h"
#include "common/st.h"
#include "common/rng.h"
#include "tests/support/proc.h"

/* ---- fixture: every allocation is tracked and freed in teardown ------------ */

enum { FX_MAX = 256 };
typedef struct fx {
    void *mem[FX_MAX];
    int nmem;
    net_scratch *scr[FX_MAX];
    int nscr;
} fx;

static int fx_setup(void **state)
{
    *state = calloc(1, sizeof(fx));
    return *state ? 0 : -1;
}

static int fx_teardown(void **state)
{
    fx *f = *state;
    for (int i = 0; i < f->nmem; i++)
        free(f->mem[i]);
    for (int i = 0; i < f->nscr; i++)
        net_scratch_free(f->scr[i]);
    free(f);
    return 0;
}

static void *fx_alloc(fx *f, size_t bytes)
{
    assert_true(f->nmem < FX_MAX);
    void *p = calloc(1, bytes ? bytes : 1);
    assert_non_null(p);
    f->mem[f->nmem++] = p;
    return p;
}

static net_scratch *fx_scratch(fx *f, const net_config *c, int max_batch, int training)
{
    assert_true(f->nscr < FX_MAX);
    net_scratch *s = net_scratch_new(c, max_batch, training);
    assert_non_null(s);
    f->scr[f->nscr++] = s;
    return s;
}

/* ---- random networks and inputs -------------------------------------------- */

typedef struct tnet {
    net_config c;
    float *buf;     /* net_param_count floats */
    net_weights w;
} tnet;

static uint64_t g_stream = 1000; /* fresh rng stream per fill */

static void fill(float *p, size_t n, float mean, float scale, uint64_t seed)
{
    rng_normal_fill(seed, g_stream++, 0, p, n);
    for (size_t i = 0; i < n; i++)
        p[i] = mean + scale * p[i];
}

/* Orthonormal rows U [R][D] by Gram-Schmidt (double) on normal draws. */
static void orthonormal_rows(int R, int D, float *u, uint64_t seed)
{
    double *q = malloc((size_t)R * D * sizeof *q);
    assert_non_null(q);
    for (int r = 0; r < R; r++) {
        double *v = q + (size_t)r * D;
        for (int j = 0; j < D; j++)
            v[j] = rng_normal(seed, g_stream, (uint64_t)r * D + j);
        for (int pass = 0; pass < 2; pass++) {
            for (int k = 0; k < r; k++) {
                double dot = 0;
                for (int j = 0; j < D; j++)
                    dot += v[j] * q[(size_t)k * D + j];
                for (int j = 0; j < D; j++)
                    v[j] -= dot * q[(size_t)k * D + j];
            }
        }
        double nrm = 0;
        for (int j = 0; j < D; j++)
            nrm += v[j] * v[j];
        nrm = sqrt(nrm);
        assert_true(nrm > 1e-6);
        for (int j = 0; j < D; j++)
            v[j] /= nrm;
    }
    g_stream++;
    for (size_t i = 0; i < (size_t)R * D; i++)
        u[i] = (float)q[i];
    free(q);
}

/* A network with every tensor random: not net_init's zero W_out or unit
 * gains, so every path carries signal. Gaussian baseline with a random
 * orthonormal basis, variances in [0.05, 3], sig2 = 0.3. */
static void tnet_random(fx *f, tnet *n, net_config c, uint64_t seed)
{
    char err[160];
    assert_int_equal(net_config_check(&c, err, sizeof err), 0);
    n->c = c;
    n->buf = fx_alloc(f, net_param_count(&c) * sizeof(float));
    net_init(&c, n->buf, seed);
    net_bind(&c, n->buf, &n->w);
    const int D = c.in_dim, H = c.hidden, B = c.n_blocks, O = c.out_dim;
    const int T = c.time_dim, C = c.n_classes, R = c.gauss_rank;
    fill(n->w.w_in, (size_t)H * D, 0, 1.0f / sqrtf((float)D), seed);
    fill(n->w.b_in, (size_t)H, 0, 0.2f, seed);
    if (T)
        fill(n->w.w_t, (size_t)H * T, 0, 1.0f / sqrtf((float)T), seed);
    if (C)
        fill(n->w.emb, (size_t)(C + 1) * H, 0, 0.5f, seed);
    fill(n->w.ln_g, (size_t)(B + 1) * H, 1.0f, 0.2f, seed);
    fill(n->w.w1, (size_t)B * H * H, 0, 1.0f / sqrtf((float)H), seed);
    fill(n->w.b1, (size_t)B * H, 0, 0.2f, seed);
    fill(n->w.w2, (size_t)B * H * H, 0, 1.0f / sqrtf((float)H), seed);
    fill(n->w.b2, (size_t)B * H, 0, 0.2f, seed);
    fill(n->w.w_out, (size_t)O * H, 0, 1.0f / sqrtf((float)H), seed);
    fill(n->w.b_out, (size_t)O, 0, 0.2f, seed);
    if (R) {
        fill(n->w.g_mu, (size_t)D, 0, 0.5f, seed);
        orthonormal_rows(R, D, n->w.g_u, seed);
        for (int r = 0; r < R; r++)
            n->w.g_lam[r] = 0.05f + 2.95f * (float)rng_uniform(seed, g_stream, (uint64_t)r);
        g_stream++;
        n->w.g_sig2[0] = 0.3f;
    }
}

/* Inputs for n rows: x ~ N(0, 1), t spread over [0, 1] including both ends
 * (some repeated),
 * labels cycling through -1..C-1. */
static void inputs(fx *f, const net_config *c, int n, uint64_t seed, float **x, float **t,
                   int **lab)
{
    *x = fx_alloc(f, (size_t)n * c->in_dim * sizeof(float));
    *t = fx_alloc(f, (size_t)n * sizeof(float));
    *lab = fx_alloc(f, (size_t)n * sizeof(int));
    fill(*x, (size_t)n * c->in_dim, 0, 1, seed);
    for (int i = 0; i < n; i++) {
        (*t)[i] = n == 1 ? 0.37f : (float)i / (float)(n - 1);
        if (i % 3 == 2)
            (*t)[i] = (*t)[i - 1]; /* runs of equal t, as in real batches */
        (*lab)[i] = c->n_classes ? (i * 7) % (c->n_classes + 1) - 1 : 0;
    }
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / sqrt(den > 0 ? den : 1e-300);
}

/* ---- BLAS forward vs reference ---------------------------------------------- */

static void check_forward_vs_ref(fx *f, net_config c, uint64_t seed)
{
    tnet n;
    tnet_random(f, &n, c, seed);
    net_scratch *s = fx_scratch(f, &c, 64, 0);
    net_scratch *st = fx_scratch(f, &c, 64, 1);
    /* the inference layout: transposed copies, GEMMs sliced at <= 16 rows */
    net_weights wt = n.w;
    net_transpose(&c, &wt, fx_alloc(f, net_transposed_count(&c) * sizeof(float)));
    const int batches[] = { 1, 7, 16, 64 };
    for (int k = 0; k < 4; k++) {
        int b = batches[k];
        float *x, *t, *out, *ref, *out_tr, *out_t;
        int *lab;
        inputs(f, &c, b, seed + (uint64_t)k, &x, &t, &lab);
        out = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
        out_tr = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
        ref = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
        out_t = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
        const float *tp = c.time_dim || c.gauss_rank ? t : NULL;
        assert_int_equal(net_forward(&c, &n.w, s, b, x, tp, lab, out), 0);
        assert_int_equal(net_forward(&c, &n.w, st, b, x, tp, lab, out_tr), 0);
        assert_int_equal(net_forward(&c, &wt, s, b, x, tp, lab, out_t), 0);
        assert_int_equal(net_forward_ref(&c, &n.w, b, x, tp, lab, ref), 0);
        double e = rel_err(out, ref, (size_t)b * c.out_dim);
        double e_tr = rel_err(out_tr, ref, (size_t)b * c.out_dim);
        double e_t = rel_err(out_t, ref, (size_t)b * c.out_dim);
        if (e >= 1e-5 || e_tr >= 1e-5 || e_t >= 1e-5)
            print_message("D=%d H=%d B=%d O=%d T=%d C=%d R=%d batch %d: err %.3g, training %.3g, "
                          "transposed %.3g\n", c.in_dim, c.hidden, c.n_blocks, c.out_dim,
                          c.time_dim, c.n_classes, c.gauss_rank, b, e, e_tr, e_t);
        assert_true(e < 1e-5);
        assert_true(e_tr < 1e-5);
        assert_true(e_t < 1e-5);
        /* the output is not trivially the same for every row */
        if (b > 1)
            assert_true(rel_err(out, out + c.out_dim, (size_t)c.out_dim) > 1e-3);
    }
}

static void test_forward_matches_ref(void **state)
{
    fx *f = *state;
    /* denoiser, 28x28, random orthonormal Gaussian basis */
    check_forward_vs_ref(f, (net_config){ 784, 96, 2, 784, 10, 32, 20 }, 11);
    /* router with labels */
    check_forward_vs_ref(f, (net_config){ 784, 64, 1, 8, 10, 16, 0 }, 12);
    /* classifier without time or labels */
    check_forward_vs_ref(f, (net_config){ 784, 64, 2, 10, 0, 0, 0 }, 13);
    /* no blocks, odd sizes */
    check_forward_vs_ref(f, (net_config){ 37, 19, 0, 37, 3, 6, 5 }, 14);
}

/* ---- half-precision weights and split forward -------------------------------- */

/* half_gemm against double loops: tiles of 64 and 16 columns, every row
 * group size, k down to 1, beta 0 and 1. */
static void test_half_gemm(void **state)
{
    (void)state;
    if (!half_gemm_supported())
        skip();
    const int ms[] = { 1, 2, 5, 6, 7, 13, 20 }, ns[] = { 16, 64, 80, 144 }, ks[] = { 1, 3, 100 };
    enum { MAXM = 20, MAXN = 144, MAXK = 100 };
    static float a[MAXM * MAXK], bf[MAXK * MAXN], c[MAXM * MAXN];
    static uint16_t bh[MAXK * MAXN];
    static double want[MAXM * MAXN];
    for (int mi = 0; mi < 7; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int ki = 0; ki < 3; ki++)
                for (int beta = 0; beta <= 1; beta++) {
                    int m = ms[mi], n = ns[ni], k = ks[ki];
                    fill(a, (size_t)m * k, 0, 1, 40 + (uint64_t)mi);
                    fill(bf, (size_t)k * n, 0, 1, 50 + (uint64_t)ni);
                    fill(c, (size_t)m * n, 0, 1, 60 + (uint64_t)ki);
                    half_copy_exact(bf, bh, (size_t)k * n); /* rounds: compare with the halves */
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < n; j++) {
                            double acc = beta ? c[(size_t)i * n + j] : 0.0;
                            for (int q = 0; q < k; q++)
                                acc += (double)a[(size_t)i * k + q] *
                                       st_f16_to_f32(bh[(size_t)q * n + j]);
                            want[(size_t)i * n + j] = acc;
                        }
                    half_gemm(m, n, k, a, bh, (float)beta, c);
                    for (size_t i = 0; i < (size_t)m * n; i++)
                        if (fabs(c[i] - want[i]) > 1e-4 * (1 + fabs(want[i])))
                            fail_msg("m %d n %d k %d beta %d: [%zu] = %g, want %g", m, n, k, beta,
                                     i, (double)c[i], want[i]);
                }
}

static void test_half_copy_exact(void **state)
{
    (void)state;
    const float exact[] = { 0.0f, -0.0f, 0.5f, -1.75f, 65504.0f, 5.9604645e-8f /* 2^-24 */ };
    uint16_t h[6];
    assert_int_equal(half_copy_exact(exact, h, 6), 1);
    for (int i = 0; i < 6; i++) {
        float back = st_f16_to_f32(h[i]);
        assert_memory_equal(&back, &exact[i], sizeof back);
    }
    const float inexact[] = { 0.1f, 1e5f, 1e-9f, 1.0f + 1.0f / 4096 };
    for (int i = 0; i < 4; i++)
        assert_int_equal(half_copy_exact(&inexact[i], h, 1), 0);
}

/* A net whose weights are all halves gets half copies of every matrix
 * half_gemm can take (output width a multiple of 16), and net_forward with
 * them matches the reference at batches on both sides of half_gemm_rows()
 * (set to 20 here, whatever this machine measured).
 * Up to that many rows the fp32 copies of those matrices are replaced by NaN,
 * so a match shows the half copies were used. */
static void check_half_vs_ref(fx *f, net_config c, uint64_t seed, int want_copies)
{
    tnet n;
    tnet_random(f, &n, c, seed);
    size_t np = net_param_count(&c);
    for (size_t i = 0; i < np; i++)
        n.buf[i] = st_f16_to_f32(st_f32_to_f16(n.buf[i])); /* as if loaded from fp16 */
    net_weights wh = n.w;
    net_transpose(&c, &wh, fx_alloc(f, net_transposed_count(&c) * sizeof(float)));
    assert_int_equal(net_half(&c, &wh, fx_alloc(f, net_half_count(&c) * sizeof(uint16_t))),
                     want_copies);
    assert_non_null(wh.w_in_h);
    size_t nt = net_transposed_count(&c);
    float *nan_buf = fx_alloc(f, nt * sizeof(float));
    for (size_t i = 0; i < nt; i++)
        nan_buf[i] = NAN;
    net_weights half_only = wh;
    const struct { const uint16_t *half; float **fp32; } pairs[] = {
        { wh.w_in_h, &half_only.w_in_t }, { wh.w1_h, &half_only.w1_t },
        { wh.w2_h, &half_only.w2_t },     { wh.w_out_h, &half_only.w_out_t },
        { wh.g_u_th, &half_only.g_u_t },  { wh.g_u_h, &half_only.g_u },
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (pairs[i].half)
            *pairs[i].fp32 = nan_buf;
    net_scratch *s = fx_scratch(f, &c, 64, 0);
    const int saved_rows = half_gemm_rows(), rows = 20;
    half_gemm_set_rows(rows);
    const int batches[] = { 1, 7, rows, rows + 1, 64 };
    for (int k = 0; k < 5; k++) {
        int b = batches[k];
        float *x, *t, *out, *ref;
        int *lab;
        inputs(f, &c, b, seed + (uint64_t)k, &x, &t, &lab);
        out = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
        ref = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
        const net_weights *wu = b <= rows ? &half_only : &wh;
        assert_int_equal(net_forward(&c, wu, s, b, x, t, lab, out), 0);
        assert_int_equal(net_forward_ref(&c, &n.w, b, x, t, lab, ref), 0);
        double e = rel_err(out, ref, (size_t)b * c.out_dim);
        if (!(e < 1e-5))
            print_message("half copies, batch %d: err %.3g\n", b, e);
        assert_true(e < 1e-5);
    }
    half_gemm_set_rows(saved_rows);
    /* one weight that is not a half: that matrix gets no copy */
    n.w.w1[3] = 0.1f;
    net_weights w2 = n.w;
    net_transpose(&c, &w2, fx_alloc(f, net_transposed_count(&c) * sizeof(float)));
    assert_int_equal(net_half(&c, &w2, fx_alloc(f, net_half_count(&c) * sizeof(uint16_t))),
                     want_copies - 1);
    assert_null(w2.w1_h);
    assert_non_null(w2.w2_h);
}

static void test_forward_half(void **state)
{
    fx *f = *state;
    if (!half_gemm_supported())
        skip();
    /* denoiser: all but g_u^T (R = 20 columns) */
    check_half_vs_ref(f, (net_config){ 784, 96, 2, 784, 10, 32, 20 }, 21, 5);
    /* router: w_out has 8 columns, so w_in, w1, w2 only */
    check_half_vs_ref(f, (net_config){ 784, 64, 1, 8, 10, 16, 0 }, 22, 3);
}

/* net_par_forward gives net_forward's rows, split or not. */
static void test_par_forward(void **state)
{
    fx *f = *state;
    net_config c = { 784, 64, 1, 8, 10, 16, 0 };
    tnet n;
    tnet_random(f, &n, c, 31);
    assert_null(net_par_new(&c, 64, 0));
    assert_null(net_par_new(&c, 64, 17));
    assert_null(net_par_new(&c, 0, 2));
    net_scratch *s = fx_scratch(f, &c, 64, 0);
    const int rows[] = { 5, 16, 37, 64 };
    for (int threads = 1; threads <= 3; threads++) {
        net_par *p = net_par_new(&c, 64, threads);
        assert_non_null(p);
        for (int k = 0; k < 4; k++) {
            int b = rows[k];
            float *x, *t, *out, *whole;
            int *lab;
            inputs(f, &c, b, 70 + (uint64_t)k, &x, &t, &lab);
            out = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
            whole = fx_alloc(f, (size_t)b * c.out_dim * sizeof(float));
            assert_int_equal(net_par_forward(p, &n.w, b, x, t, lab, out), 0);
            assert_int_equal(net_forward(&c, &n.w, s, b, x, t, lab, whole), 0);
            assert_true(rel_err(out, whole, (size_t)b * c.out_dim) < 1e-6);
            /* the last part wrote its rows too */
            assert_true(rel_err(out + (size_t)(b - 1) * c.out_dim,
                                whole + (size_t)(b - 1) * c.out_dim, (size_t)c.out_dim) < 1e-6);
        }
        /* an error in any part comes back: a label out of range in the last row */
        float *x, *t, *out;
        int *lab;
        inputs(f, &c, 40, 80, &x, &t, &lab);
        out = fx_alloc(f, 40 * (size_t)c.out_dim * sizeof(float));
        lab[39] = 99;
        assert_int_not_equal(net_par_forward(p, &n.w, 40, x, t, lab, out), 0);
        net_par_free(p);
    }
    net_par_free(NULL);
}

/* forkjoin: every job runs exactly once, on distinct threads where helpers
 * are free, also when callers on several threads use it at once (the helpers
 * are shared) and when n is over FORKJOIN_MAX (the jobs beyond the helpers
 * run on the caller: none is dropped). */
typedef struct fj_job {
    int runs;
    pthread_t on;
} fj_job;

static void *fj_count(void *arg)
{
    fj_job *j = arg;
    j->runs++;
    j->on = pthread_self();
    usleep(200); /* long enough that the jobs overlap */
    return NULL;
}

static void *fj_caller(void *arg)
{
    int *bad = arg;
    for (int round = 0; round < 50; round++) {
        fj_job jobs[FORKJOIN_MAX] = { 0 };
        int n = 1 + round % FORKJOIN_MAX;
        forkjoin_run(n, fj_count, jobs, sizeof jobs[0]);
        for (int i = 0; i < FORKJOIN_MAX; i++)
            *bad += jobs[i].runs != (i < n);
    }
    return NULL;
}

static void test_forkjoin(void **state)
{
    (void)state;
    fj_job jobs[3 * FORKJOIN_MAX] = { 0 };
    forkjoin_run(4, fj_count, jobs, sizeof jobs[0]);
    for (int i = 0; i < 4; i++)
        assert_int_equal(jobs[i].runs, 1);
    assert_true(pthread_equal(jobs[0].on, pthread_self())); /* job 0 on the caller */
    assert_false(pthread_equal(jobs[1].on, pthread_self()));
    assert_false(pthread_equal(jobs[1].on, jobs[2].on));
    memset(jobs, 0, sizeof jobs);
    forkjoin_run(3 * FORKJOIN_MAX - 1, fj_count, jobs, sizeof jobs[0]);
    for (int i = 0; i < 3 * FORKJOIN_MAX; i++)
        assert_int_equal(jobs[i].runs, i < 3 * FORKJOIN_MAX - 1);
    forkjoin_run(0, fj_count, jobs, sizeof jobs[0]); /* nothing to do */
    assert_int_equal(jobs[0].runs, 1);
    /* three callers at once: 3 x up to 15 helper jobs for 15 helpers */
    pthread_t th[3];
    int bad[3] = { 0 };
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, fj_caller, &bad[i]), 0);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(bad[i], 0);
    }
}

/* Rows of h with a variance far below NET_LN_EPS: eps keeps LN finite and
 * both paths must agree on it. */
static void test_layer_norm_tiny_variance(void **state)
{
    fx *f = *state;
    net_config c = { 8, 16, 1, 4, 0, 0, 0 };
    tnet n;
    tnet_random(f, &n, c, 91);
    for (int i = 0; i < 16 * 8; i++)
        n.w.w_in[i] *= 1e-4f;
    for (int i = 0; i < 16; i++)
        n.w.b_in[i] *= 1e-3f;
    net_scratch *s = fx_scratch(f, &c, 3, 0);
    float *x, *t, out[3 * 4], ref[3 * 4];
    int *lab;
    inputs(f, &c, 3, 92, &x, &t, &lab);
    assert_int_equal(net_forward(&c, &n.w, s, 3, x, NULL, NULL, out), 0);
    assert_int_equal(net_forward_ref(&c, &n.w, 3, x, NULL, NULL, ref), 0);
    for (int i = 0; i < 12; i++)
        assert_true(isfinite(out[i]));
    assert_true(rel_err(out, ref, 12) < 1e-5);
}

/* Pre-activations far outside exp's float range: SiLU must still be x or 0
 * there (the fast path clamps its exponent), exactly as the reference says. */
static void test_extreme_activations(void **state)
{
    fx *f = *state;
    net_config c = { 8, 16, 1, 4, 0, 0, 0 };
    tnet n;
    tnet_random(f, &n, c, 95);
    const float big[8] = { 50.0f, -50.0f, 90.0f, -90.0f, 200.0f, -200.0f, 1e6f, -1e6f };
    for (int j = 0; j < 16; j++)
        n.w.b1[j] = big[j % 8];
    for (int i = 0; i < 4 * 16; i++)
        n.w.w_out[i] *= 1e-3f; /* keep the 1e6 rows from drowning the others */
    net_scratch *s = fx_scratch(f, &c, 3, 0);
    float *x, *t, out[3 * 4], ref[3 * 4];
    int *lab;
    inputs(f, &c, 3, 96, &x, &t, &lab);
    assert_int_equal(net_forward(&c, &n.w, s, 3, x, NULL, NULL, out), 0);
    assert_int_equal(net_forward_ref(&c, &n.w, 3, x, NULL, NULL, ref), 0);
    for (int i = 0; i < 12; i++)
        assert_true(isfinite(out[i]));
    assert_true(rel_err(out, ref, 12) < 1e-5);
}

/* Labels NULL mean all null; -1 is the null row, not row 0. */
static void test_null_labels(void **state)
{
    fx *f = *state;
    net_config c = { 20, 16, 1, 20, 4, 8, 3 };
    tnet n;
    tnet_random(f, &n, c, 21);
    net_scratch *s = fx_scratch(f, &c, 8, 0);
    float *x, *t, *o_null, *o_minus, *o_zero;
    int *lab;
    inputs(f, &c, 8, 22, &x, &t, &lab);
    o_null = fx_alloc(f, 8 * 20 * sizeof(float));
    o_minus = fx_alloc(f, 8 * 20 * sizeof(float));
    o_zero = fx_alloc(f, 8 * 20 * sizeof(float));
    int minus[8], zero[8];
    for (int i = 0; i < 8; i++) {
        minus[i] = -1;
        zero[i] = 0;
    }
    assert_int_equal(net_forward(&c, &n.w, s, 8, x, t, NULL, o_null), 0);
    assert_int_equal(net_forward(&c, &n.w, s, 8, x, t, minus, o_minus), 0);
    assert_int_equal(net_forward(&c, &n.w, s, 8, x, t, zero, o_zero), 0);
    assert_memory_equal(o_null, o_minus, 8 * 20 * sizeof(float));
    assert_true(rel_err(o_zero, o_minus, 8 * 20) > 1e-3);
}

/* Features are what the output layer sees: out = W_out f + b_out. */
static void test_features(void **state)
{
    fx *f = *state;
    net_config c = { 30, 24, 2, 5, 0, 0, 0 };
    tnet n;
    tnet_random(f, &n, c, 31);
    net_scratch *s = fx_scratch(f, &c, 4, 0);
    float *x, *t, out[4 * 5], re[4 * 5];
    int *lab;
    inputs(f, &c, 4, 32, &x, &t, &lab);
    assert_int_equal(net_forward(&c, &n.w, s, 4, x, NULL, NULL, out), 0);
    const float *feat = net_features(s);
    for (int i = 0; i < 4; i++) {
        for (int o = 0; o < 5; o++) {
            double acc = n.w.b_out[o];
            for (int j = 0; j < 24; j++)
                acc += (double)n.w.w_out[o * 24 + j] * feat[i * 24 + j];
            re[i * 5 + o] = (float)acc;
        }
    }
    assert_true(rel_err(out, re, 20) < 1e-6);
}

/* ---- Gaussian baseline vs explicit covariance ---------------------------------- */

/* Solves A y = b (A [n][n], destroyed) by Gaussian elimination with partial pivoting. */
static void solve(int n, double *A, double *b, double *y)
{
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(A[i * n + k]) > fabs(A[p * n + k]))
                p = i;
        assert_true(fabs(A[p * n + k]) > 1e-12);
        if (p != k) {
            for (int j = 0; j < n; j++) {
                double tmp = A[k * n + j];
                A[k * n + j] = A[p * n + j];
                A[p * n + j] = tmp;
            }
            double tmp = b[k];
            b[k] = b[p];
            b[p] = tmp;
        }
        for (int i = k + 1; i < n; i++) {
            double m = A[i * n + k] / A[k * n + k];
            for (int j = k; j < n; j++)
                A[i * n + j] -= m * A[k * n + j];
            b[i] -= m * b[k];
        }
    }
    for (int i = n - 1; i >= 0; i--) {
        double acc = b[i];
        for (int j = i + 1; j < n; j++)
            acc -= A[i * n + j] * y[j];
        y[i] = acc / A[i * n + i];
    }
}

/* E[eps - x0 | x_t] for x0 ~ N(mu, S), x_t = (1 - t) x0 + t eps, by
 * conditioning the joint Gaussian: E[x0 | x_t] = mu + a S (a^2 S + t^2 I)^-1 (x_t - a mu),
 * then eps = (x_t - a x0) / t. */
static void gauss_closed_form(int D, const double *S, const float *mu, const float *x, double t,
                              double *v)
{
    double A[8 * 8], b[8], y[8], ex0[8];
    double a = 1.0 - t;
    for (int i = 0; i < D; i++) {
        for (int j = 0; j < D; j++)
            A[i * D + j] = a * a * S[i * D + j] + (i == j ? t * t : 0.0);
        b[i] = x[i] - a * mu[i];
    }
    solve(D, A, b, y);
    for (int i = 0; i < D; i++) {
        double acc = 0;
        for (int j = 0; j < D; j++)
            acc += S[i * D + j] * y[j];
        ex0[i] = mu[i] + a * acc;
    }
    for (int i = 0; i < D; i++)
        v[i] = (x[i] - a * ex0[i]) / t - ex0[i];
}

static void check_gauss(fx *f, int D, int R, uint64_t seed)
{
    net_config c = { D, 8, 1, D, 3, 4, R };
    tnet n;
    tnet_random(f, &n, c, seed);
    /* MLP output zeroed: out is the baseline alone */
    memset(n.w.w_out, 0, (size_t)D * 8 * sizeof(float));
    memset(n.w.b_out, 0, (size_t)D * sizeof(float));
    double S[8 * 8];
    for (int i = 0; i < D; i++) {
        for (int j = 0; j < D; j++) {
            double uu = 0, lam_uu = 0;
            for (int r = 0; r < R; r++) {
                double p = (double)n.w.g_u[r * D + i] * n.w.g_u[r * D + j];
                uu += p;
                lam_uu += n.w.g_lam[r] * p;
            }
            S[i * D + j] = lam_uu + n.w.g_sig2[0] * ((i == j ? 1.0 : 0.0) - uu);
        }
    }
    const float ts[] = { 0.05f, 0.2f, 0.5f, 0.8f, 0.95f, 1.0f };
    enum { NT = sizeof ts / sizeof ts[0] };
    float *x = fx_alloc(f, NT * (size_t)D * sizeof(float));
    float *out = fx_alloc(f, NT * (size_t)D * sizeof(float));
    float *ref = fx_alloc(f, NT * (size_t)D * sizeof(float));
    float *cf = fx_alloc(f, NT * (size_t)D * sizeof(float));
    fill(x, NT * (size_t)D, 0, 1.5f, seed + 1);
    net_scratch *s = fx_scratch(f, &c, NT, 0);
    assert_int_equal(net_forward(&c, &n.w, s, NT, x, ts, NULL, out), 0);
    assert_int_equal(net_forward_ref(&c, &n.w, NT, x, ts, NULL, ref), 0);
    for (int k = 0; k < NT; k++) {
        double v[8];
        gauss_closed_form(D, S, n.w.g_mu, x + k * D, ts[k], v);
        for (int j = 0; j < D; j++)
            cf[k * D + j] = (float)v[j];
        double e = rel_err(out + k * D, cf + k * D, (size_t)D);
        double er = rel_err(ref + k * D, cf + k * D, (size_t)D);
        if (e >= 1e-5 || er >= 1e-5)
            print_message("D=%d R=%d t=%.2f: err %.3g, ref err %.3g\n", D, R, ts[k], e, er);
        assert_true(e < 1e-5);
        assert_true(er < 1e-5);
    }
}

static void test_gauss_closed_form(void **state)
{
    fx *f = *state;
    check_gauss(f, 5, 5, 41); /* full rank */
    check_gauss(f, 6, 2, 42); /* sig2 fills the rest of the space */
}

/* ---- gradients -------------------------------------------------------------------- */

typedef struct gcase {
    tnet n;
    int rows;
    float *x, *t;
    int *lab;
    float *r;       /* [rows][O] loss weights: loss = sum(out * r) */
    float *out;
    float *gbuf;    /* analytic gradient, net_param_count floats */
    net_weights g;
    float *num;     /* numeric gradient of the trainable prefix */
} gcase;

static double loss_of(gcase *k)
{
    const net_config *c = &k->n.c;
    assert_int_equal(net_forward_ref(c, &k->n.w, k->rows, k->x, k->t, k->lab, k->out), 0);
    double L = 0;
    for (size_t i = 0; i < (size_t)k->rows * c->out_dim; i++)
        L += (double)k->out[i] * k->r[i];
    return L;
}

/* Builds a case, its analytic gradient (one forward + backward) and the
 * central-difference gradient of every trainable entry. */
static void gcase_build(fx *f, gcase *k, net_config c, int rows, uint64_t seed)
{
    tnet_random(f, &k->n, c, seed);
    k->rows = rows;
    inputs(f, &c, rows, seed + 1, &k->x, &k->t, &k->lab);
    for (int i = 0; i < rows; i++)
        k->t[i] = 0.1f + 0.8f * (float)i / (float)rows; /* away from the t = 0 corner */
    k->r = fx_alloc(f, (size_t)rows * c.out_dim * sizeof(float));
    k->out = fx_alloc(f, (size_t)rows * c.out_dim * sizeof(float));
    fill(k->r, (size_t)rows * c.out_dim, 0, 1, seed + 2);
    size_t np = net_param_count(&c), nt = net_trainable_count(&c);
    k->gbuf = fx_alloc(f, np * sizeof(float));
    k->num = fx_alloc(f, nt * sizeof(float));
    for (size_t i = nt; i < np; i++)
        k->gbuf[i] = 7.0f; /* sentinel on the fixed Gaussian tensors */
    net_bind(&c, k->gbuf, &k->g);
    net_scratch *s = fx_scratch(f, &c, rows, 1);
    assert_int_equal(net_forward(&c, &k->n.w, s, rows, k->x, k->t, k->lab, k->out), 0);
    assert_int_equal(net_backward(&c, &k->n.w, &k->g, s, rows, k->r), 0);
    for (size_t i = nt; i < np; i++)
        assert_true(k->gbuf[i] == 7.0f);
    const float eps = 1e-2f;
    for (size_t i = 0; i < nt; i++) {
        float p0 = k->n.buf[i];
        float hi = p0 + eps, lo = p0 - eps;
        k->n.buf[i] = hi;
        double Lp = loss_of(k);
        k->n.buf[i] = lo;
        double Lm = loss_of(k);
        k->n.buf[i] = p0;
        k->num[i] = (float)((Lp - Lm) / ((double)hi - lo));
    }
}

/* Largest relative error over every entry of one tensor. The denominator has
 * a floor of 1% of the tensor's largest numeric gradient: entries whose true
 * gradient is ~0 are compared against the tensor's scale, not against the
 * ~1e-5 noise that float outputs put into central differences. */
static double grad_err(const float *analytic, const float *numeric, size_t n)
{
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(numeric[i]));
    for (size_t i = 0; i < n; i++) {
        double a = analytic[i], b = numeric[i];
        double e = fabs(a - b) / (fmax(fabs(a), fabs(b)) + 1e-2 * scale + 1e-12);
        worst = fmax(worst, e);
    }
    return worst;
}

#define GRAD_TOL 2e-2

static void check_grads(fx *f, net_config c, int rows, uint64_t seed)
{
    gcase k;
    gcase_build(f, &k, c, rows, seed);
    net_tensor_info ti[NET_MAX_TENSORS];
    int nt = net_tensor_table(&c, ti);
    for (int i = 0; i < nt; i++) {
        if (!ti[i].trainable)
            continue;
        const float *a = k.gbuf + ti[i].offset, *num = k.num + ti[i].offset;
        double e = grad_err(a, num, ti[i].numel);
        double big = 0;
        size_t at = 0;
        for (size_t j = 0; j < ti[i].numel; j++) {
            if (fabs(num[j]) > big) {
                big = fabs(num[j]);
                at = j;
            }
        }
        if (e >= GRAD_TOL || big < 1e-2)
            print_message("tensor %s: max rel err %.3g, max |grad| %.3g\n", ti[i].name, e, big);
        assert_true(big >= 1e-2); /* the tensor matters to the loss: the check means something */
        assert_true(e < GRAD_TOL);
        /* The same checker catches a 10% error in a single entry. */
        float *bad = fx_alloc(f, ti[i].numel * sizeof(float));
        memcpy(bad, a, ti[i].numel * sizeof(float));
        bad[at] *= 1.1f;
        assert_true(grad_err(bad, num, ti[i].numel) >= GRAD_TOL);
    }
}

static void test_grad_denoiser(void **state)
{
    check_grads(*state, (net_config){ 6, 16, 2, 6, 3, 4, 3 }, 5, 51);
}

static void test_grad_router(void **state)
{
    check_grads(*state, (net_config){ 7, 12, 1, 4, 3, 6, 0 }, 6, 52);
}

static void test_grad_classifier(void **state)
{
    check_grads(*state, (net_config){ 9, 10, 2, 5, 0, 0, 0 }, 4, 53);
}

/* A second backward adds the same gradient again; labels -1 train the null row only. */
static void test_backward_accumulates(void **state)
{
    fx *f = *state;
    net_config c = { 12, 16, 2, 12, 4, 6, 4 };
    tnet n;
    tnet_random(f, &n, c, 61);
    const int rows = 6;
    float *x, *t, *r, *out;
    int *lab;
    inputs(f, &c, rows, 62, &x, &t, &lab);
    r = fx_alloc(f, (size_t)rows * 12 * sizeof(float));
    out = fx_alloc(f, (size_t)rows * 12 * sizeof(float));
    fill(r, (size_t)rows * 12, 0, 1, 63);
    size_t np = net_param_count(&c), nt = net_trainable_count(&c);
    float *g1 = fx_alloc(f, np * sizeof(float)), *g2 = fx_alloc(f, np * sizeof(float));
    float *gn = fx_alloc(f, np * sizeof(float));
    net_weights w1, w2, wn;
    net_bind(&c, g1, &w1);
    net_bind(&c, g2, &w2);
    net_bind(&c, gn, &wn);
    net_scratch *s = fx_scratch(f, &c, 8, 1);
    int minus[6] = { -1, -1, -1, -1, -1, -1 };

    assert_int_equal(net_forward(&c, &n.w, s, rows, x, t, minus, out), 0);
    assert_int_equal(net_backward(&c, &n.w, &w1, s, rows, r), 0);
    assert_int_equal(net_backward(&c, &n.w, &w2, s, rows, r), 0);
    assert_int_equal(net_backward(&c, &n.w, &w2, s, rows, r), 0);
    double norm = 0;
    for (size_t i = 0; i < nt; i++) {
        assert_true(fabsf(g2[i] - 2.0f * g1[i]) <= 1e-5f * (fabsf(g1[i]) + 1e-3f));
        norm += (double)g1[i] * g1[i];
    }
    assert_true(norm > 1e-2);
    /* null row only */
    for (int row = 0; row < 4; row++)
        for (int j = 0; j < 16; j++)
            assert_true(w1.emb[row * 16 + j] == 0.0f);
    double null_norm = 0;
    for (int j = 0; j < 16; j++)
        null_norm += fabs(w1.emb[4 * 16 + j]);
    assert_true(null_norm > 1e-3);
    /* NULL labels give the same gradient */
    assert_int_equal(net_forward(&c, &n.w, s, rows, x, t, NULL, out), 0);
    assert_int_equal(net_backward(&c, &n.w, &wn, s, rows, r), 0);
    assert_memory_equal(g1, gn, np * sizeof(float));
    /* a class label trains its own row */
    memset(gn, 0, np * sizeof(float));
    int two[6] = { 2, 2, 2, 2, 2, 2 };
    assert_int_equal(net_forward(&c, &n.w, s, rows, x, t, two, out), 0);
    assert_int_equal(net_backward(&c, &n.w, &wn, s, rows, r), 0);
    double row2 = 0, others = 0;
    for (int row = 0; row < 5; row++)
        for (int j = 0; j < 16; j++)
            *(row == 2 ? &row2 : &others) += fabs(wn.emb[row * 16 + j]);
    assert_true(row2 > 1e-3);
    assert_true(others == 0.0);
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_errors(void **state)
{
    fx *f = *state;
    net_config c = { 10, 8, 1, 10, 3, 4, 2 };
    tnet n;
    tnet_random(f, &n, c, 71);
    net_scratch *s = fx_scratch(f, &c, 4, 1);
    net_scratch *inf = fx_scratch(f, &c, 4, 0);
    float *x, *t, *out, *r;
    int *lab;
    inputs(f, &c, 5, 72, &x, &t, &lab);
    out = fx_alloc(f, 5 * 10 * sizeof(float));
    r = fx_alloc(f, 5 * 10 * sizeof(float));
    float *g = fx_alloc(f, net_param_count(&c) * sizeof(float));
    net_weights gw;
    net_bind(&c, g, &gw);
    int ok[4] = { -1, 0, 1, 2 };

    for (int i = 0; i < 50; i++)
        out[i] = 42.0f;
    assert_int_equal(net_forward(&c, &n.w, s, 5, x, t, lab, out), DDM_ERANGE);
    assert_int_equal(net_forward(&c, &n.w, s, -1, x, t, ok, out), DDM_ERANGE);
    int bad_hi[4] = { 0, 3, 1, 1 }, bad_lo[4] = { 0, -2, 1, 1 };
    assert_int_equal(net_forward(&c, &n.w, s, 4, x, t, bad_hi, out), DDM_ERANGE);
    assert_int_equal(net_forward(&c, &n.w, s, 4, x, t, bad_lo, out), DDM_ERANGE);
    assert_int_equal(net_forward_ref(&c, &n.w, 4, x, t, bad_hi, out), DDM_ERANGE);
    float tbad[4] = { 0.5f, 1.5f, 0.1f, 0.2f }, tnan[4] = { 0.5f, NAN, 0.1f, 0.2f };
    assert_int_equal(net_forward(&c, &n.w, s, 4, x, tbad, ok, out), DDM_ERANGE);
    assert_int_equal(net_forward(&c, &n.w, s, 4, x, tnan, ok, out), DDM_ERANGE);
    assert_int_equal(net_forward(&c, &n.w, s, 4, x, NULL, ok, out), DDM_EINVAL);
    for (int i = 0; i < 50; i++)
        assert_true(out[i] == 42.0f); /* untouched */
    /* a failed forward leaves nothing to differentiate */
    assert_int_equal(net_backward(&c, &n.w, &gw, s, 4, r), DDM_EINVAL);

    assert_int_equal(net_forward(&c, &n.w, s, 4, x, t, ok, out), 0);
    assert_int_equal(net_backward(&c, &n.w, &gw, s, 3, r), DDM_EINVAL); /* other n */
    assert_int_equal(net_backward(&c, &n.w, &gw, s, 4, r), 0);
    assert_int_equal(net_forward(&c, &n.w, inf, 4, x, t, ok, out), 0);
    assert_int_equal(net_backward(&c, &n.w, &gw, inf, 4, r), DDM_EINVAL); /* not training */
    assert_int_equal(net_forward(&c, &n.w, s, 0, x, t, ok, out), 0);
    assert_int_equal(net_backward(&c, &n.w, &gw, s, 0, r), 0);

    /* a scratch is bound to its config */
    net_config other = c;
    other.hidden = 16;
    assert_int_equal(net_forward(&other, &n.w, s, 4, x, t, ok, out), DDM_EINVAL);
    assert_null(net_scratch_new(&c, 0, 0));
    net_config bad = c;
    bad.time_dim = 3;
    assert_null(net_scratch_new(&bad, 4, 0));
    assert_int_equal(net_scratch_max_batch(s), 4);
    net_scratch_free(NULL);
}

/* FLOPs count the time embedding's product once per run of equal t, as
 * net_forward computes it; weight bytes follow the copies it multiplies by. */
static void test_flops_and_bytes(void **state)
{
    fx *f = *state;
    net_config c = { 784, 384, 2, 784, 10, 64, 64 };
    const float t[5] = { 0.5f, 0.5f, 0.2f, 0.5f, 0.5f };
    assert_int_equal(net_t_runs(5, t), 3);
    assert_int_equal(net_t_runs(1, t), 1);
    assert_int_equal(net_t_runs(0, t), 0);
    double per_row = 384.0 * 784 + 2 * 2 * 384.0 * 384 + 784.0 * 384 + 2 * 64.0 * 784;
    assert_true(net_forward_flops(&c, 5, 3) == 2 * (5 * per_row + 3 * 384.0 * 64));
    assert_true(net_forward_flops(&c, 5, 1) < net_forward_flops(&c, 5, 5));
    net_config nt = c;
    nt.time_dim = 0;
    assert_true(net_forward_flops(&nt, 5, 3) == 2 * 5 * per_row);

    tnet n;
    tnet_random(f, &n, c, 31);
    double matrices = 784.0 * 384 + 2 * 2 * 384.0 * 384 + 384.0 * 784 + 2 * 64.0 * 784;
    double fp32 = net_forward_weight_bytes(&c, &n.w, 4);
    assert_true(fp32 > 4 * (matrices + 384.0 * 64) && fp32 < 4 * (matrices + 384.0 * 64) + 65536);
    if (!half_gemm_supported())
        return;
    size_t np = net_param_count(&c);
    for (size_t i = 0; i < np; i++)
        n.buf[i] = st_f16_to_f32(st_f32_to_f16(n.buf[i]));
    net_weights wh = n.w;
    net_transpose(&c, &wh, fx_alloc(f, net_transposed_count(&c) * sizeof(float)));
    assert_int_equal(net_half(&c, &wh, fx_alloc(f, net_half_count(&c) * sizeof(uint16_t))), 6);
    const int saved = half_gemm_rows();
    half_gemm_set_rows(8);
    assert_true(net_forward_weight_bytes(&c, &wh, 8) == fp32 - 2 * matrices); /* halves */
    assert_true(net_forward_weight_bytes(&c, &wh, 9) == fp32);                /* OpenBLAS */
    half_gemm_set_rows(saved);
}

/* ---- throughput (printed, not asserted) ------------------------------------------------ */

static void test_throughput(void **state)
{
    fx *f = *state;
    net_config c = { 784, 384, 2, 784, 10, 64, 64 };
    tnet n;
    tnet_random(f, &n, c, 81);
    const int b = 64;
    float *x, *t, *out, *r;
    int *lab;
    inputs(f, &c, b, 82, &x, &t, &lab);
    out = fx_alloc(f, (size_t)b * 784 * sizeof(float));
    r = fx_alloc(f, (size_t)b * 784 * sizeof(float));
    fill(r, (size_t)b * 784, 0, 1, 83);
    float *g = fx_alloc(f, net_param_count(&c) * sizeof(float));
    net_weights gw;
    net_bind(&c, g, &gw);
    net_scratch *s = fx_scratch(f, &c, b, 0);
    net_scratch *st = fx_scratch(f, &c, b, 1);
    const int ns[] = { 1, 64 };
    for (int k = 0; k < 2; k++) {
        assert_int_equal(net_forward(&c, &n.w, s, ns[k], x, t, lab, out), 0); /* warm up */
        int iters = 0;
        double t0 = proc_now_s(), el, best = 1e9;
        do {
            double t1 = proc_now_s();
            assert_int_equal(net_forward(&c, &n.w, s, ns[k], x, t, lab, out), 0);
            best = fmin(best, proc_now_s() - t1);
            iters++;
            el = proc_now_s() - t0;
        } while (el < 0.5 && iters < 2000);
        double per = el / iters, fl = net_forward_flops(&c, ns[k], net_t_runs(ns[k], t));
        print_message("# forward batch %2d: mean %.3f ms %.2f GFLOP/s, best %.3f ms %.2f GFLOP/s "
                      "(D=784 H=384 blocks=2 T=64 C=10 R=64; OpenBLAS %s kernels, %d threads)\n",
                      ns[k], per * 1e3, fl / per * 1e-9, best * 1e3, fl / best * 1e-9,
                      openblas_get_corename(), openblas_get_num_threads());
    }
    int iters = 0;
    double t0 = proc_now_s(), el;
    do {
        assert_int_equal(net_forward(&c, &n.w, st, b, x, t, lab, out), 0);
        assert_int_equal(net_backward(&c, &n.w, &gw, st, b, r), 0);
        iters++;
        el = proc_now_s() - t0;
    } while (el < 0.5 && iters < 1000);
    print_message("# forward+backward batch 64: %.3f ms\n", el / iters * 1e3);
}

int main(int argc, char **argv)
{
    /* the kernels the binaries use, so that the small-batch slices of
     * net_forward run here too where OpenBLAS has them (common/blas.h) */
    blas_select(&argc, argv);
    print_message("OpenBLAS kernels %s; small-matrix slices %s\n", blas_core(),
                  blas_has_small_gemm() ? "tested" : "not available");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_forward_matches_ref, fx_setup, fx_teardown),
        cmocka_unit_test(test_half_gemm),
        cmocka_unit_test(test_half_copy_exact),
        cmocka_unit_test_setup_teardown(test_forward_half, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_par_forward, fx_setup, fx_teardown),
        cmocka_unit_test(test_forkjoin),
        cmocka_unit_test_setup_teardown(test_layer_norm_tiny_variance, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_extreme_activations, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_null_labels, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_features, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_gauss_closed_form, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_grad_denoiser, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_grad_router, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_grad_classifier, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backward_accumulates, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_flops_and_bytes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_throughput, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
