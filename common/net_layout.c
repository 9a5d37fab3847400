/* net_layout.c -- where each tensor of a net lives in its flat buffer, and
 * deterministic initialisation. The math itself is in net.c. */
#include "common/net.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/half_gemm.h"
#include "common/rng.h"

int net_config_check(const net_config *c, char *err, size_t errlen)
{
    const struct { const char *name; int v; int min; } f[] = {
        { "in_dim", c->in_dim, 1 },     { "hidden", c->hidden, 1 },
        { "n_blocks", c->n_blocks, 0 }, { "out_dim", c->out_dim, 1 },
        { "n_classes", c->n_classes, 0 }, { "time_dim", c->time_dim, 0 },
        { "gauss_rank", c->gauss_rank, 0 },
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].v < f[i].min || f[i].v > NET_MAX_DIM) {
            snprintf(err, errlen, "network config: %s = %d, allowed %d..%d", f[i].name, f[i].v,
                     f[i].min, NET_MAX_DIM);
            return DDM_EINVAL;
        }
    }
    if (c->n_blocks > 64) {
        snprintf(err, errlen, "network config: n_blocks = %d, allowed 0..64", c->n_blocks);
        return DDM_EINVAL;
    }
    if (c->time_dim % 2) {
        snprintf(err, errlen, "network config: time_dim = %d must be even", c->time_dim);
        return DDM_EINVAL;
    }
    if (c->gauss_rank > 0 && (c->out_dim != c->in_dim || c->gauss_rank > c->in_dim)) {
        snprintf(err, errlen,
                 "network config: gauss_rank = %d needs out_dim == in_dim and rank <= in_dim "
                 "(in_dim %d, out_dim %d)", c->gauss_rank, c->in_dim, c->out_dim);
        return DDM_EINVAL;
    }
    return 0;
}

static void add(net_tensor_info *out, int *n, size_t *off, const char *name, int trainable,
                int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    int64_t dims[3] = { d0, d1, d2 };
    size_t numel = 1;
    for (int i = 0; i < ndim; i++)
        numel *= (size_t)dims[i];
    if (numel == 0)
        return;
    net_tensor_info *t = &out[(*n)++];
    t->name = name;
    t->ndim = ndim;
    memcpy(t->shape, dims, sizeof dims);
    t->offset = *off;
    t->numel = numel;
    t->trainable = trainable;
    *off += numel;
}

int net_tensor_table(const net_config *c, net_tensor_info *out)
{
    int n = 0;
    size_t off = 0;
    int64_t D = c->in_dim, H = c->hidden, B = c->n_blocks, O = c->out_dim;
    int64_t T = c->time_dim, C = c->n_classes, R = c->gauss_rank;
    add(out, &n, &off, "w_in", 1, 2, H, D, 0);
    add(out, &n, &off, "b_in", 1, 1, H, 0, 0);
    if (T > 0)
        add(out, &n, &off, "w_t", 1, 2, H, T, 0);
    if (C > 0)
        add(out, &n, &off, "emb", 1, 2, C + 1, H, 0);
    add(out, &n, &off, "ln_g", 1, 2, B + 1, H, 0);
    add(out, &n, &off, "w1", 1, 3, B, H, H);
    add(out, &n, &off, "b1", 1, 2, B, H, 0);
    add(out, &n, &off, "w2", 1, 3, B, H, H);
    add(out, &n, &off, "b2", 1, 2, B, H, 0);
    add(out, &n, &off, "w_out", 1, 2, O, H, 0);
    add(out, &n, &off, "b_out", 1, 1, O, 0, 0);
    if (R > 0) {
        add(out, &n, &off, "g_mu", 0, 1, D, 0, 0);
        add(out, &n, &off, "g_u", 0, 2, R, D, 0);
        add(out, &n, &off, "g_lam", 0, 1, R, 0, 0);
        add(out, &n, &off, "g_sig2", 0, 1, 1, 0, 0);
    }
    return n;
}

static size_t count(const net_config *c, int trainable_only)
{
    net_tensor_info t[NET_MAX_TENSORS];
    int n = net_tensor_table(c, t);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (!trainable_only || t[i].trainable)
            total += t[i].numel;
    return total;
}

size_t net_param_count(const net_config *c) { return count(c, 0); }
size_t net_trainable_count(const net_config *c) { return count(c, 1); }

void net_bind(const net_config *c, float *buf, net_weights *w)
{
    memset(w, 0, sizeof *w);
    net_tensor_info t[NET_MAX_TENSORS];
    int n = net_tensor_table(c, t);
    for (int i = 0; i < n; i++) {
        float *p = buf + t[i].offset;
        const char *s = t[i].name;
        if (!strcmp(s, "w_in")) w->w_in = p;
        else if (!strcmp(s, "b_in")) w->b_in = p;
        else if (!strcmp(s, "w_t")) w->w_t = p;
        else if (!strcmp(s, "emb")) w->emb = p;
        else if (!strcmp(s, "ln_g")) w->ln_g = p;
        else if (!strcmp(s, "w1")) w->w1 = p;
        else if (!strcmp(s, "b1")) w->b1 = p;
        else if (!strcmp(s, "w2")) w->w2 = p;
        else if (!strcmp(s, "b2")) w->b2 = p;
        else if (!strcmp(s, "w_out")) w->w_out = p;
        else if (!strcmp(s, "b_out")) w->b_out = p;
        else if (!strcmp(s, "g_mu")) w->g_mu = p;
        else if (!strcmp(s, "g_u")) w->g_u = p;
        else if (!strcmp(s, "g_lam")) w->g_lam = p;
        else if (!strcmp(s, "g_sig2")) w->g_sig2 = p;
    }
}

size_t net_transposed_count(const net_config *c)
{
    const size_t D = (size_t)c->in_dim, H = (size_t)c->hidden, O = (size_t)c->out_dim;
    return D * H + 2 * (size_t)c->n_blocks * H * H + H * O + D * (size_t)c->gauss_rank;
}

/* dst[cols][rows] = src[rows][cols]^T */
static float *transpose_into(float *dst, const float *src, size_t rows, size_t cols)
{
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            dst[j * rows + i] = src[i * cols + j];
    return dst;
}

void net_transpose(const net_config *c, net_weights *w, float *buf)
{
    const size_t D = (size_t)c->in_dim, H = (size_t)c->hidden, O = (size_t)c->out_dim;
    const size_t B = (size_t)c->n_blocks, R = (size_t)c->gauss_rank;
    w->w_in_t = transpose_into(buf, w->w_in, H, D);
    buf += D * H;
    w->w1_t = B ? buf : NULL;
    for (size_t b = 0; b < B; b++, buf += H * H)
        transpose_into(buf, w->w1 + b * H * H, H, H);
    w->w2_t = B ? buf : NULL;
    for (size_t b = 0; b < B; b++, buf += H * H)
        transpose_into(buf, w->w2 + b * H * H, H, H);
    w->w_out_t = transpose_into(buf, w->w_out, O, H);
    buf += H * O;
    w->g_u_t = R ? transpose_into(buf, w->g_u, R, D) : NULL;
}

size_t net_half_count(const net_config *c)
{
    return net_transposed_count(c) + (size_t)c->gauss_rank * (size_t)c->in_dim;
}

/* A half copy of src[n] (rows of `cols` values) taken from *buf, or NULL when
 * half_gemm cannot use it or it would not be exact. */
static const uint16_t *half_of(const float *src, size_t n, size_t cols, uint16_t **buf, int *made)
{
    if (!src || n == 0 || cols % 16 != 0)
        return NULL;
    uint16_t *dst = *buf;
    *buf += n;
    if (!half_copy_exact(src, dst, n))
        return NULL;
    ++*made;
    return dst;
}

int net_half(const net_config *c, net_weights *w, uint16_t *buf)
{
    const size_t D = (size_t)c->in_dim, H = (size_t)c->hidden, O = (size_t)c->out_dim;
    const size_t B = (size_t)c->n_blocks, R = (size_t)c->gauss_rank;
    int made = 0;
    w->w_in_h = w->w1_h = w->w2_h = w->w_out_h = w->g_u_th = w->g_u_h = NULL;
    if (!half_gemm_supported())
        return 0;
    w->w_in_h = half_of(w->w_in_t, D * H, H, &buf, &made);
    w->w1_h = half_of(w->w1_t, B * H * H, H, &buf, &made);
    w->w2_h = half_of(w->w2_t, B * H * H, H, &buf, &made);
    w->w_out_h = half_of(w->w_out_t, H * O, O, &buf, &made);
    w->g_u_th = half_of(w->g_u_t, D * R, R, &buf, &made);
    w->g_u_h = half_of(w->g_u, R * D, D, &buf, &made);
    return made;
}

static void fill_normal(float *p, size_t n, float scale, uint64_t seed, uint64_t stream)
{
    rng_normal_fill(seed, stream, 0, p, n);
    for (size_t i = 0; i < n; i++)
        p[i] *= scale;
}

void net_init(const net_config *c, float *buf, uint64_t seed)
{
    net_tensor_info t[NET_MAX_TENSORS];
    int n = net_tensor_table(c, t);
    for (int i = 0; i < n; i++) {
        float *p = buf + t[i].offset;
        const char *s = t[i].name;
        size_t numel = t[i].numel;
        if (!strcmp(s, "w_in")) {
            fill_normal(p, numel, 1.0f / sqrtf((float)c->in_dim), seed, (uint64_t)i);
        } else if (!strcmp(s, "w_t")) {
            fill_normal(p, numel, 1.0f / sqrtf((float)c->time_dim), seed, (uint64_t)i);
        } else if (!strcmp(s, "emb")) {
            fill_normal(p, numel, 0.1f, seed, (uint64_t)i);
        } else if (!strcmp(s, "w1")) {
            fill_normal(p, numel, 1.0f / sqrtf((float)c->hidden), seed, (uint64_t)i);
        } else if (!strcmp(s, "w2")) {
            /* small residual branches keep the stack near identity at start */
            fill_normal(p, numel, 0.5f / sqrtf((float)c->hidden * (c->n_blocks + 1)), seed,
                        (uint64_t)i);
        } else if (!strcmp(s, "w_out")) {
            float scale = c->gauss_rank > 0 ? 0.0f : 1.0f / sqrtf((float)c->hidden);
            fill_normal(p, numel, scale, seed, (uint64_t)i);
        } else if (!strcmp(s, "ln_g") || !strcmp(s, "g_lam") || !strcmp(s, "g_sig2")) {
            for (size_t j = 0; j < numel; j++)
                p[j] = 1.0f;
        } else {
            memset(p, 0, numel * sizeof *p); /* biases, g_mu, g_u */
        }
    }
}

double net_forward_flops(const net_config *c, int n, int t_runs)
{
    double D = c->in_dim, H = c->hidden, B = c->n_blocks, O = c->out_dim;
    double T = c->time_dim, R = c->gauss_rank;
    double per_row = H * D + B * 2 * H * H + O * H + 2 * R * D;
    return 2.0 * (per_row * n + H * T * (T > 0 ? t_runs : 0));
}

int net_t_runs(int n, const float *t)
{
    int runs = 0;
    for (int i = 0; i < n; i++)
        runs += i == 0 || t[i] != t[i - 1];
    return runs;
}

/* Bytes of one matrix of n values: its half copy's when the forward uses it. */
static double matrix_bytes(const uint16_t *half, int rows, size_t n)
{
    return (double)n * (half && rows <= half_gemm_rows() ? 2 : 4);
}

double net_forward_weight_bytes(const net_config *c, const net_weights *w, int n)
{
    const size_t D = (size_t)c->in_dim, H = (size_t)c->hidden, B = (size_t)c->n_blocks;
    const size_t O = (size_t)c->out_dim, T = (size_t)c->time_dim, R = (size_t)c->gauss_rank;
    double bytes = matrix_bytes(w->w_in_h, n, D * H) + matrix_bytes(w->w1_h, n, B * H * H) +
                   matrix_bytes(w->w2_h, n, B * H * H) + matrix_bytes(w->w_out_h, n, H * O) +
                   matrix_bytes(w->g_u_th, n, D * R) + matrix_bytes(w->g_u_h, n, R * D);
    /* w_t, then the vectors: b_in, one emb row, gains, b1, b2, b_out, mu, lam, sig2 */
    size_t floats = H * T + H + (c->n_classes > 0 ? H : 0) + (B + 1) * H + 2 * B * H + O +
                    (R > 0 ? D + R + 1 : 0);
    return bytes + 4.0 * (double)floats;
}
