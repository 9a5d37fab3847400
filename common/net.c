/* net.c -- forward and backward math of the ddm MLP (the function is in net.h).
 *
 * The batch is always the M dimension of row-major cblas_sgemm calls:
 * activations are [n][H] and a layer y = W x is one GEMM A * W^T over the
 * whole batch. Elementwise work (biases, LayerNorm, SiLU, the Gaussian
 * baseline's diagonal terms) is fused into one pass per row. net_forward_ref()
 * recomputes the same function with plain double loops, row by row, sharing
 * only input checks and the scalar gain formula of the Gaussian baseline
 * (which tests check against a closed form of their own). */
#include "common/net.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/blas.h"
#include "common/err.h"
#include "common/half_gemm.h"

struct net_scratch {
    net_config c;
    int max_batch;
    int training;
    int n;          /* rows of the last successful net_forward, -1 if none */
    double *freq;   /* [T/2] time-embedding frequencies */
    float *temb;    /* [max][T] time embedding of each row (kept for backward) */
    float *trun;    /* [max][T] time embedding of each run of rows with equal t */
    float *h;       /* [max][H] residual stream */
    float *f;       /* [max][H] features silu(LN(h) * g_out) */
    /* Per block tensors; L = n_blocks when training (one slab per block,
     * kept for backward), L = 1 otherwise (every block reuses slab 0). */
    float *u;       /* [L][max][H] LN(h) * g, the input of W1 */
    float *act;     /* [L][max][H] W1 u + b1; silu applied in place when not training */
    float *sact;    /* [L][max][H] silu(act) when training; == act otherwise */
    /* training only */
    float *xhat;    /* [B+1][max][H] normalised LN outputs before the gain */
    float *rstd;    /* [B+1][max] 1 / sqrt(var + eps) of each LN row */
    float *x;       /* [max][D] copy of the input */
    int *lab;       /* [max] embedding row of each input row (C for null) */
    float *dh;      /* [max][H] dLoss/dh, carried down the residual stream */
    float *d1, *d2; /* [max][H] backward workspace */
    /* Gaussian baseline (R > 0) */
    float *gd;      /* [max][D] d = x - (1 - t) mu */
    float *gz;      /* [max][R] d U^T, then scaled per row */
    float *ggain;   /* [R] f(lam_r) - f(sig2) at one t (rows of a batch often share t) */
    int small_gemm; /* blas_has_small_gemm(), read once */
};

/* ---- small helpers ---------------------------------------------------------- */

static void *alloc_array(size_t n, size_t size, int *fail)
{
    void *p = NULL;
    if (n == 0)
        return NULL;
    if (posix_memalign(&p, 64, n * size) != 0) {
        *fail = 1;
        return NULL;
    }
    memset(p, 0, n * size);
    return p;
}

/* ---- elementwise kernels -----------------------------------------------------
 * Rows are walked in chunks of VL floats through fixed-length loops over
 * local arrays: gcc -O2 vectorises those (its cheap cost model refuses loops
 * of unknown trip count), and a row's tail goes through the same code padded,
 * so every element is computed the same way whatever H is. */
#define VL 16

/* The kernels below also get AVX2 and AVX-512 builds, picked at load time by
 * the CPU (gcc's target_clones): the binaries stay portable x86-64. Not with
 * clang (the fuzz build): clang 14 does not export a cloned function's name. */
#if defined(__clang__)
#define VECTOR_CLONES
#else
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif

/* dst[0..VL) = p[0..m), the rest pad. */
static inline void load_lanes(float *restrict dst, const float *restrict p, int m, float pad)
{
    if (m == VL) {
        for (int k = 0; k < VL; k++)
            dst[k] = p[k];
    } else {
        for (int k = 0; k < VL; k++)
            dst[k] = k < m ? p[k] : pad;
    }
}

static inline void store_lanes(float *restrict p, const float *restrict src, int m)
{
    if (m == VL) {
        for (int k = 0; k < VL; k++)
            p[k] = src[k];
    } else {
        for (int k = 0; k < m; k++)
            p[k] = src[k];
    }
}

/* sg = 1 / (1 + e^-v) lane by lane. e^x: x = n ln2 + r, |r| <= ln2/2, e^r by
 * Cephes' expf polynomial (~2 ulp), 2^n built in the exponent bits; x is
 * clamped to [-87, 88] so nothing overflows, and NaN stays NaN. */
static inline void sigmoid_lanes(const float *restrict v, float *restrict sg)
{
    float xs[VL];
    for (int k = 0; k < VL; k++) { /* own loop: gcc if-converts the clamps only here */
        float x = -v[k];
        x = x < -87.0f ? -87.0f : x;
        xs[k] = x > 88.0f ? 88.0f : x;
    }
    for (int k = 0; k < VL; k++) {
        float x = xs[k];
        float t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: rounds to int */
        float nf = t - 12582912.0f;
        uint32_t tb;
        memcpy(&tb, &t, sizeof tb);
        float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        uint32_t sb = (tb - 0x4B400000u + 127u) << 23; /* 2^n */
        float sc;
        memcpy(&sc, &sb, sizeof sc);
        sg[k] = 1.0f / (1.0f + p * sc);
    }
}

/* a = a + b (b may be NULL), s = silu(a). s may equal a (then only s is kept). */
VECTOR_CLONES
static void bias_silu_row(int H, float *a, const float *b, float *s)
{
    float v[VL], bb[VL], sg[VL];
    for (int j = 0; j < H; j += VL) {
        int m = H - j < VL ? H - j : VL;
        load_lanes(v, a + j, m, 0.0f);
        if (b) {
            load_lanes(bb, b + j, m, 0.0f);
            for (int k = 0; k < VL; k++)
                v[k] += bb[k];
            if (s != a)
                store_lanes(a + j, v, m);
        }
        sigmoid_lanes(v, sg);
        for (int k = 0; k < VL; k++)
            sg[k] *= v[k];
        store_lanes(s + j, sg, m);
    }
}

/* d *= silu'(z), z = z0 * zg (zg may be NULL: z = z0); silu'(z) = sg (1 + z (1 - sg)). */
static void silu_back_row(int H, const float *z0, const float *zg, float *d)
{
    float z[VL], g[VL], dd[VL], sg[VL];
    for (int j = 0; j < H; j += VL) {
        int m = H - j < VL ? H - j : VL;
        load_lanes(z, z0 + j, m, 0.0f);
        if (zg) {
            load_lanes(g, zg + j, m, 0.0f);
            for (int k = 0; k < VL; k++)
                z[k] *= g[k];
        }
        load_lanes(dd, d + j, m, 0.0f);
        sigmoid_lanes(z, sg);
        for (int k = 0; k < VL; k++)
            dd[k] *= sg[k] * (1.0f + z[k] * (1.0f - sg[k]));
        store_lanes(d + j, dd, m);
    }
}

/* One LayerNorm row: u = g * (h - mean) / sqrt(var + eps), with xhat (before
 * the gain) kept when not NULL. Returns 1 / sqrt(var + eps). */
VECTOR_CLONES
static float ln_row(int H, const float *restrict h, const float *restrict g, float *restrict u,
                    float *restrict xhat)
{
    float c[VL], gg[VL], acc[VL] = { 0 };
    for (int j = 0; j < H; j += VL) {
        load_lanes(c, h + j, H - j < VL ? H - j : VL, 0.0f);
        for (int k = 0; k < VL; k++)
            acc[k] += c[k];
    }
    float mean = 0.0f;
    for (int k = 0; k < VL; k++)
        mean += acc[k];
    mean /= (float)H;
    for (int k = 0; k < VL; k++)
        acc[k] = 0.0f;
    for (int j = 0; j < H; j += VL) {
        load_lanes(c, h + j, H - j < VL ? H - j : VL, mean); /* pad adds 0 */
        for (int k = 0; k < VL; k++)
            acc[k] += (c[k] - mean) * (c[k] - mean);
    }
    float var = 0.0f;
    for (int k = 0; k < VL; k++)
        var += acc[k];
    float r = 1.0f / sqrtf(var / (float)H + NET_LN_EPS);
    for (int j = 0; j < H; j += VL) {
        int m = H - j < VL ? H - j : VL;
        load_lanes(c, h + j, m, 0.0f);
        load_lanes(gg, g + j, m, 0.0f);
        for (int k = 0; k < VL; k++)
            c[k] = (c[k] - mean) * r;
        if (xhat)
            store_lanes(xhat + j, c, m);
        for (int k = 0; k < VL; k++)
            c[k] *= gg[k];
        store_lanes(u + j, c, m);
    }
    return r;
}

/* LayerNorm backward of one row, u = g * xhat: given du = dLoss/du (in, and
 * overwritten as scratch), adds dLoss/dg into gg and sets (accumulate = 0) or
 * adds dLoss/dh = rstd (dx - mean(dx) - xhat mean(dx xhat)), dx = du g, into dh. */
static void ln_back_row(int H, const float *restrict xhat, float rstd, const float *restrict g,
                        float *restrict gg, float *restrict du, float *restrict dh, int accumulate)
{
    float x[VL], gv[VL], d[VL], a[VL], m1v[VL] = { 0 }, m2v[VL] = { 0 };
    for (int j = 0; j < H; j += VL) {
        int m = H - j < VL ? H - j : VL;
        load_lanes(x, xhat + j, m, 0.0f);
        load_lanes(gv, g + j, m, 0.0f);
        load_lanes(d, du + j, m, 0.0f);
        load_lanes(a, gg + j, m, 0.0f);
        for (int k = 0; k < VL; k++) {
            a[k] += d[k] * x[k];
            d[k] *= gv[k];
            m1v[k] += d[k];
            m2v[k] += d[k] * x[k];
        }
        store_lanes(gg + j, a, m);
        store_lanes(du + j, d, m);
    }
    float m1 = 0.0f, m2 = 0.0f;
    for (int k = 0; k < VL; k++) {
        m1 += m1v[k];
        m2 += m2v[k];
    }
    m1 /= (float)H;
    m2 /= (float)H;
    for (int j = 0; j < H; j += VL) {
        int m = H - j < VL ? H - j : VL;
        load_lanes(x, xhat + j, m, 0.0f);
        load_lanes(d, du + j, m, 0.0f);
        if (accumulate) {
            load_lanes(a, dh + j, m, 0.0f);
        } else {
            for (int k = 0; k < VL; k++)
                a[k] = 0.0f;
        }
        for (int k = 0; k < VL; k++)
            a[k] += rstd * (d[k] - m1 - x[k] * m2);
        store_lanes(dh + j, a, m);
    }
}

/* Gaussian baseline's gain along a direction of variance l at time t. */
static inline double gauss_gain(double l, double t)
{
    double a = 1.0 - t;
    return (t - a * l) / (a * a * l + t * t);
}

/* C[m][n] = A[m][k] B[n][k]^T + beta C: a layer over the batch. */
static void gemm_nt(int m, int n, int k, const float *a, const float *b, float beta, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b, k, beta, c, n);
}

/* OpenBLAS (0.3.21 on SkylakeX) multiplies without packing its operands when
 * m n k <= 1e6, its "small matrix" kernels. At a few rows, packing the weights
 * (which come from L3 on every call) is most of a layer's time, so a layer
 * over at most SLICE_ROWS rows is cut into column slices under that size:
 * 1.4-1.9x faster at 4-16 rows, slower from about 32 (docs/benchmarks.md).
 * Kernel sets without those kernels (Haswell) gain nothing from slices and
 * lose up to 15% at 16 rows, so they get whole layers (blas_has_small_gemm). */
#define SMALL_GEMM_MNK 1000000
#define SLICE_ROWS 16

/* C[m][n] = A[m][k] W^T + beta C for a weight matrix W [n][k], multiplying by
 * its half copy wh [k][n] at a few rows, else by its transposed copy wt [k][n]
 * when there is one (see net_weights; w may be NULL when wt is given). Half
 * copies exist only where half_gemm runs (net_half). */
static void layer(const net_scratch *s, int m, int n, int k, const float *a, const float *w,
                  const float *wt, const uint16_t *wh, float beta, float *c)
{
    if (wh && m <= half_gemm_rows()) {
        half_gemm(m, n, k, a, wh, beta, c);
        return;
    }
    if (!wt) {
        gemm_nt(m, n, k, a, w, beta, c);
        return;
    }
    int cols = n;
    if (s->small_gemm && m <= SLICE_ROWS && (double)m * n * k > SMALL_GEMM_MNK) {
        cols = SMALL_GEMM_MNK / (m * k) / 16 * 16; /* whole 16-float vectors */
        if (cols < 16)
            cols = n;
    }
    for (int j = 0; j < n; j += cols) {
        int nj = n - j < cols ? n - j : cols;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, nj, k, 1.0f, a, k, wt + j, n,
                    beta, c + j, n);
    }
}

/* C[m][n] = A[m][k] B[k][n] + beta C: a gradient back through a layer. */
static void gemm_nn(int m, int n, int k, const float *a, const float *b, float beta, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, beta, c, n);
}

/* C[m][n] += A[k][m]^T B[k][n]: a weight gradient summed over k rows. */
static void gemm_tn_acc(int m, int n, int k, const float *a, const float *b, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, m, b, n, 1.0f, c, n);
}

/* acc[j] += sum_i m[i][j] over n rows of `cols`. */
static void colsum_acc(int n, int cols, const float *m, float *acc)
{
    for (int i = 0; i < n; i++) {
        const float *r = m + (size_t)i * cols;
        for (int j = 0; j < cols; j++)
            acc[j] += r[j];
    }
}

/* Checks the inputs shared by both forward paths; max_n bounds n. */
static int check_inputs(const net_config *c, int n, int max_n, const float *x, const float *t,
                        const int *labels, const float *out)
{
    if (n < 0 || n > max_n)
        return DDM_ERANGE;
    if (n == 0)
        return 0;
    if (!x || !out)
        return DDM_EINVAL;
    if (c->time_dim > 0 || c->gauss_rank > 0) {
        if (!t)
            return DDM_EINVAL;
        for (int i = 0; i < n; i++)
            if (!(t[i] >= 0.0f && t[i] <= 1.0f)) /* also refuses NaN */
                return DDM_ERANGE;
    }
    if (c->n_classes > 0 && labels) {
        for (int i = 0; i < n; i++)
            if (labels[i] < -1 || labels[i] >= c->n_classes)
                return DDM_ERANGE;
    }
    return 0;
}

/* ---- scratch ------------------------------------------------------------------ */

net_scratch *net_scratch_new(const net_config *c, int max_batch, int training)
{
    char err[160];
    if (!c || max_batch < 1 || net_config_check(c, err, sizeof err) != 0)
        return NULL;
    net_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->c = *c;
    s->max_batch = max_batch;
    s->training = training != 0;
    s->n = -1;
    size_t m = (size_t)max_batch, D = (size_t)c->in_dim, H = (size_t)c->hidden;
    size_t B = (size_t)c->n_blocks, T = (size_t)c->time_dim, R = (size_t)c->gauss_rank;
    size_t L = s->training ? B : (B > 0 ? 1 : 0);
    int fail = 0;
    s->freq = alloc_array(T / 2, sizeof(double), &fail);
    s->temb = alloc_array(s->training ? m * T : 0, sizeof(float), &fail);
    s->trun = alloc_array(m * T, sizeof(float), &fail);
    s->h = alloc_array(m * H, sizeof(float), &fail);
    s->f = alloc_array(m * H, sizeof(float), &fail);
    s->u = alloc_array(L * m * H, sizeof(float), &fail);
    s->act = alloc_array(L * m * H, sizeof(float), &fail);
    s->sact = s->training ? alloc_array(L * m * H, sizeof(float), &fail) : s->act;
    if (s->training) {
        s->xhat = alloc_array((B + 1) * m * H, sizeof(float), &fail);
        s->rstd = alloc_array((B + 1) * m, sizeof(float), &fail);
        s->x = alloc_array(m * D, sizeof(float), &fail);
        s->lab = alloc_array(m, sizeof(int), &fail);
        s->dh = alloc_array(m * H, sizeof(float), &fail);
        s->d1 = alloc_array(m * H, sizeof(float), &fail);
        s->d2 = alloc_array(m * H, sizeof(float), &fail);
    }
    s->gd = alloc_array(R > 0 ? m * D : 0, sizeof(float), &fail);
    s->gz = alloc_array(m * R, sizeof(float), &fail);
    s->ggain = alloc_array(R, sizeof(float), &fail);
    s->small_gemm = blas_has_small_gemm();
    if (fail) {
        net_scratch_free(s);
        return NULL;
    }
    for (size_t i = 0; i < T / 2; i++)
        s->freq[i] = exp(-log(10000.0) * (double)i / (double)(T / 2));
    return s;
}

void net_scratch_free(net_scratch *s)
{
    if (!s)
        return;
    if (s->sact != s->act)
        free(s->sact);
    free(s->freq); free(s->temb); free(s->trun); free(s->h); free(s->f); free(s->u); free(s->act);
    free(s->xhat); free(s->rstd); free(s->x); free(s->lab);
    free(s->dh); free(s->d1); free(s->d2); free(s->gd); free(s->gz); free(s->ggain);
    free(s);
}

int net_scratch_max_batch(const net_scratch *s) { return s->max_batch; }

const float *net_features(const net_scratch *s) { return s->f; }

/* ---- forward ------------------------------------------------------------------- */

/* With out = f W_out^T already in place, adds b_out and the Gaussian baseline:
 * out += b_out - mu + fs d + (d U^T diag(f(lam) - fs)) U, d = x - (1 - t) mu. */
VECTOR_CLONES
static void gauss_add(const net_config *c, const net_weights *w, net_scratch *s, int n,
                      const float *x, const float *t, float *out)
{
    const int D = c->in_dim, R = c->gauss_rank;
    float *d = s->gd, *z = s->gz;
    for (int i = 0; i < n; i++) {
        float a = 1.0f - t[i];
        const float *xi = x + (size_t)i * D;
        float *di = d + (size_t)i * D;
        for (int j = 0; j < D; j++)
            di[j] = xi[j] - a * w->g_mu[j];
    }
    /* z = d U^T: coordinates along the directions */
    layer(s, n, R, D, d, w->g_u, w->g_u_t, w->g_u_th, 0.0f, z);
    float *gain = s->ggain, fsf = 0.0f;
    for (int i = 0; i < n; i++) {
        if (i == 0 || t[i] != t[i - 1]) { /* gains depend on t only */
            double fs = gauss_gain(w->g_sig2[0], t[i]);
            for (int r = 0; r < R; r++)
                gain[r] = (float)(gauss_gain(w->g_lam[r], t[i]) - fs);
            fsf = (float)fs;
        }
        float *zi = z + (size_t)i * R;
        for (int r = 0; r < R; r++)
            zi[r] *= gain[r];
        const float *di = d + (size_t)i * D;
        float *oi = out + (size_t)i * D;
        for (int j = 0; j < D; j++)
            oi[j] += w->b_out[j] - w->g_mu[j] + fsf * di[j];
    }
    /* out += z U: U [R][D] is already in the [k][n] form layer() multiplies by */
    layer(s, n, D, R, z, NULL, w->g_u, w->g_u_h, 1.0f, out);
}

VECTOR_CLONES
int net_forward(const net_config *c, const net_weights *w, net_scratch *s, int n,
                const float *x, const float *t, const int *labels, float *out)
{
    if (!c || !w || !s)
        return DDM_EINVAL;
    s->n = -1;
    if (memcmp(c, &s->c, sizeof *c) != 0)
        return DDM_EINVAL;
    int rc = check_inputs(c, n, s->max_batch, x, t, labels, out);
    if (rc)
        return rc;
    if (n == 0) {
        s->n = 0;
        return 0;
    }
    const int D = c->in_dim, H = c->hidden, B = c->n_blocks, O = c->out_dim;
    const int T = c->time_dim, C = c->n_classes, half = T / 2;
    const size_t slab = (size_t)s->max_batch * H;
    float *h = s->h;

    /* input layer: h = x W_in^T + temb W_t^T + b_in + emb[label] */
    layer(s, n, H, D, x, w->w_in, w->w_in_t, w->w_in_h, 0.0f, h);
    const float *tw = NULL; /* [runs][H] temb W_t^T, one row per run of equal t */
    if (T > 0) {
        /* batches often share a timestep: the embedding and its product with
         * W_t are computed once per run of rows with equal t
         * (net_forward_flops counts them so) */
        int runs = 0;
        for (int i = 0; i < n; i++) {
            if (i > 0 && t[i] == t[i - 1])
                continue;
            float *e = s->trun + (size_t)runs++ * T;
            for (int k = 0; k < half; k++) {
                double arg = 1000.0 * (double)t[i] * s->freq[k];
                e[k] = (float)sin(arg);
                e[half + k] = (float)cos(arg);
            }
        }
        gemm_nt(runs, H, T, s->trun, w->w_t, 0.0f, s->f); /* f is free until the features */
        tw = s->f;
    }
    for (int i = 0, run = -1; i < n; i++) {
        float *hi = h + (size_t)i * H;
        if (T > 0) {
            if (i == 0 || t[i] != t[i - 1])
                run++;
            const float *ti = tw + (size_t)run * H;
            for (int j = 0; j < H; j++)
                hi[j] += ti[j];
            if (s->training)
                memcpy(s->temb + (size_t)i * T, s->trun + (size_t)run * T,
                       (size_t)T * sizeof(float));
        }
        int row = C > 0 ? (labels && labels[i] >= 0 ? labels[i] : C) : 0;
        if (C > 0) {
            const float *e = w->emb + (size_t)row * H;
            for (int j = 0; j < H; j++)
                hi[j] += w->b_in[j] + e[j];
        } else {
            for (int j = 0; j < H; j++)
                hi[j] += w->b_in[j];
        }
        if (s->training)
            s->lab[i] = row;
    }
    if (s->training)
        memcpy(s->x, x, (size_t)n * D * sizeof *x);

    /* residual blocks: h += W2 silu(W1 (LN(h) g) + b1) + b2 */
    for (int b = 0; b < B; b++) {
        size_t at = s->training ? (size_t)b * slab : 0;
        float *u = s->u + at, *a = s->act + at, *sa = s->sact + at;
        float *xh = s->training ? s->xhat + (size_t)b * slab : NULL;
        const float *g = w->ln_g + (size_t)b * H;
        const float *b1 = w->b1 + (size_t)b * H, *b2 = w->b2 + (size_t)b * H;
        for (int i = 0; i < n; i++) {
            float *hi = h + (size_t)i * H;
            float r = ln_row(H, hi, g, u + (size_t)i * H, xh ? xh + (size_t)i * H : NULL);
            if (s->training)
                s->rstd[(size_t)b * s->max_batch + i] = r;
            for (int j = 0; j < H; j++) /* b2 now; the W2 GEMM accumulates onto it */
                hi[j] += b2[j];
        }
        size_t wb = (size_t)b * H * H;
        layer(s, n, H, H, u, w->w1 + wb, w->w1_t ? w->w1_t + wb : NULL,
              w->w1_h ? w->w1_h + wb : NULL, 0.0f, a);
        for (int i = 0; i < n; i++)
            bias_silu_row(H, a + (size_t)i * H, b1, sa + (size_t)i * H);
        layer(s, n, H, H, sa, w->w2 + wb, w->w2_t ? w->w2_t + wb : NULL,
              w->w2_h ? w->w2_h + wb : NULL, 1.0f, h);
    }

    /* features and output layer */
    const float *g = w->ln_g + (size_t)B * H;
    float *xh = s->training ? s->xhat + (size_t)B * slab : NULL;
    for (int i = 0; i < n; i++) {
        float *fi = s->f + (size_t)i * H;
        float r = ln_row(H, h + (size_t)i * H, g, fi, xh ? xh + (size_t)i * H : NULL);
        if (s->training)
            s->rstd[(size_t)B * s->max_batch + i] = r;
        bias_silu_row(H, fi, NULL, fi);
    }
    layer(s, n, O, H, s->f, w->w_out, w->w_out_t, w->w_out_h, 0.0f, out);
    if (c->gauss_rank > 0) {
        gauss_add(c, w, s, n, x, t, out);
    } else {
        for (int i = 0; i < n; i++) {
            float *oi = out + (size_t)i * O;
            for (int j = 0; j < O; j++)
                oi[j] += w->b_out[j];
        }
    }
    s->n = n;
    return 0;
}

/* ---- backward ------------------------------------------------------------------ */

int net_backward(const net_config *c, const net_weights *w, net_weights *grad,
                 net_scratch *s, int n, const float *dout)
{
    if (!c || !w || !grad || !s || !s->training || s->n < 0 || n != s->n ||
        memcmp(c, &s->c, sizeof *c) != 0)
        return DDM_EINVAL;
    if (n == 0)
        return 0;
    if (!dout)
        return DDM_EINVAL;
    const int D = c->in_dim, H = c->hidden, B = c->n_blocks, O = c->out_dim;
    const int T = c->time_dim, C = c->n_classes;
    const size_t slab = (size_t)s->max_batch * H;
    float *dh = s->dh, *d1 = s->d1, *d2 = s->d2;

    /* output layer; the Gaussian baseline has no parameters to train */
    colsum_acc(n, O, dout, grad->b_out);
    gemm_tn_acc(O, H, n, dout, s->f, grad->w_out);
    gemm_nn(n, H, O, dout, w->w_out, 0.0f, d1); /* d1 = dLoss/df */

    /* f = silu(xhat * g_out), xhat = LN(h) */
    for (int i = 0; i < n; i++) {
        const float *xh = s->xhat + (size_t)B * slab + (size_t)i * H;
        const float *g = w->ln_g + (size_t)B * H;
        float *di = d1 + (size_t)i * H;
        silu_back_row(H, xh, g, di);
        ln_back_row(H, xh, s->rstd[(size_t)B * s->max_batch + i], g, grad->ln_g + (size_t)B * H,
                    di, dh + (size_t)i * H, 0);
    }

    /* blocks, last first: h_out = h_in + W2 silu(a) + b2, a = W1 (xhat g) + b1 */
    for (int b = B - 1; b >= 0; b--) {
        const size_t at = (size_t)b * slab;
        const float *w1 = w->w1 + (size_t)b * H * H, *w2 = w->w2 + (size_t)b * H * H;
        const float *g = w->ln_g + (size_t)b * H;
        colsum_acc(n, H, dh, grad->b2 + (size_t)b * H);
        gemm_tn_acc(H, H, n, dh, s->sact + at, grad->w2 + (size_t)b * H * H);
        gemm_nn(n, H, H, dh, w2, 0.0f, d1); /* dLoss/dsilu(a) */
        for (int i = 0; i < n; i++)
            silu_back_row(H, s->act + at + (size_t)i * H, NULL, d1 + (size_t)i * H);
        colsum_acc(n, H, d1, grad->b1 + (size_t)b * H);
        gemm_tn_acc(H, H, n, d1, s->u + at, grad->w1 + (size_t)b * H * H);
        gemm_nn(n, H, H, d1, w1, 0.0f, d2); /* dLoss/du */
        for (int i = 0; i < n; i++)
            ln_back_row(H, s->xhat + at + (size_t)i * H, s->rstd[(size_t)b * s->max_batch + i], g,
                        grad->ln_g + (size_t)b * H, d2 + (size_t)i * H, dh + (size_t)i * H, 1);
    }

    /* input layer: h0 = x W_in^T + temb W_t^T + b_in + emb[label] */
    colsum_acc(n, H, dh, grad->b_in);
    gemm_tn_acc(H, D, n, dh, s->x, grad->w_in);
    if (T > 0)
        gemm_tn_acc(H, T, n, dh, s->temb, grad->w_t);
    if (C > 0) {
        for (int i = 0; i < n; i++) {
            float *ge = grad->emb + (size_t)s->lab[i] * H;
            const float *di = dh + (size_t)i * H;
            for (int j = 0; j < H; j++)
                ge[j] += di[j];
        }
    }
    return 0;
}

/* ---- reference --------------------------------------------------------------- */

/* y[rows] = b + W[rows][cols] x, in double. */
static void ref_affine(int rows, int cols, const float *W, const float *b, const double *x,
                       double *y)
{
    for (int r = 0; r < rows; r++) {
        double acc = b ? b[r] : 0.0;
        for (int k = 0; k < cols; k++)
            acc += (double)W[(size_t)r * cols + k] * x[k];
        y[r] = acc;
    }
}

/* y = g * (x - mean) / sqrt(var + eps) over H values, in double. */
static void ref_layer_norm(int H, const double *x, const float *g, double *y)
{
    double mean = 0.0, var = 0.0;
    for (int j = 0; j < H; j++)
        mean += x[j];
    mean /= H;
    for (int j = 0; j < H; j++)
        var += (x[j] - mean) * (x[j] - mean);
    var /= H;
    double r = 1.0 / sqrt(var + (double)NET_LN_EPS);
    for (int j = 0; j < H; j++)
        y[j] = (x[j] - mean) * r * g[j];
}

static double ref_silu(double v) { return v / (1.0 + exp(-v)); }

int net_forward_ref(const net_config *c, const net_weights *w, int n,
                    const float *x, const float *t, const int *labels, float *out)
{
    if (!c || !w)
        return DDM_EINVAL;
    int rc = check_inputs(c, n, INT_MAX, x, t, labels, out);
    if (rc)
        return rc;
    const int D = c->in_dim, H = c->hidden, B = c->n_blocks, O = c->out_dim;
    const int T = c->time_dim, C = c->n_classes, R = c->gauss_rank, half = T / 2;
    double *xd = calloc((size_t)D, sizeof *xd), *te = calloc((size_t)T + 1, sizeof *te);
    double *h = calloc((size_t)H, sizeof *h), *u = calloc((size_t)H, sizeof *u);
    double *a = calloc((size_t)H, sizeof *a), *y = calloc((size_t)H, sizeof *y);
    double *o = calloc((size_t)O, sizeof *o), *proj = calloc((size_t)R + 1, sizeof *proj);
    if (!xd || !te || !h || !u || !a || !y || !o || !proj) {
        rc = DDM_ENOMEM;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < D; j++)
            xd[j] = x[(size_t)i * D + j];
        ref_affine(H, D, w->w_in, w->b_in, xd, h);
        if (T > 0) {
            for (int k = 0; k < half; k++) {
                double arg = 1000.0 * (double)t[i] * exp(-log(10000.0) * k / half);
                te[k] = sin(arg);
                te[half + k] = cos(arg);
            }
            ref_affine(H, T, w->w_t, NULL, te, y);
            for (int j = 0; j < H; j++)
                h[j] += y[j];
        }
        if (C > 0) {
            int row = labels && labels[i] >= 0 ? labels[i] : C;
            for (int j = 0; j < H; j++)
                h[j] += w->emb[(size_t)row * H + j];
        }
        for (int b = 0; b < B; b++) {
            ref_layer_norm(H, h, w->ln_g + (size_t)b * H, u);
            ref_affine(H, H, w->w1 + (size_t)b * H * H, w->b1 + (size_t)b * H, u, a);
            for (int j = 0; j < H; j++)
                a[j] = ref_silu(a[j]);
            ref_affine(H, H, w->w2 + (size_t)b * H * H, w->b2 + (size_t)b * H, a, y);
            for (int j = 0; j < H; j++)
                h[j] += y[j];
        }
        ref_layer_norm(H, h, w->ln_g + (size_t)B * H, u);
        for (int j = 0; j < H; j++)
            u[j] = ref_silu(u[j]);
        ref_affine(O, H, w->w_out, w->b_out, u, o);
        if (R > 0) {
            /* o += -mu + fs d + sum_r (f(lam_r) - fs) (u_r . d) u_r */
            double ti = t[i], fs = gauss_gain(w->g_sig2[0], ti);
            for (int j = 0; j < D; j++)
                xd[j] -= (1.0 - ti) * w->g_mu[j];
            for (int r = 0; r < R; r++) {
                double p = 0.0;
                for (int j = 0; j < D; j++)
                    p += (double)w->g_u[(size_t)r * D + j] * xd[j];
                proj[r] = p * (gauss_gain(w->g_lam[r], ti) - fs);
            }
            for (int j = 0; j < D; j++) {
                double acc = -(double)w->g_mu[j] + fs * xd[j];
                for (int r = 0; r < R; r++)
                    acc += proj[r] * w->g_u[(size_t)r * D + j];
                o[j] += acc;
            }
        }
        for (int j = 0; j < O; j++)
            out[(size_t)i * O + j] = (float)o[j];
    }
done:
    free(xd); free(te); free(h); free(u); free(a); free(y); free(o); free(proj);
    return rc;
}
