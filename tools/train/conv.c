/* conv.c -- the convolutional judge network: im2col + sgemm forward and
 * backward, a double-precision reference, and its weights files (see conv.h). */
#include "tools/train/conv.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

/* ---- layout ------------------------------------------------------------------------- */

int conv_config_check(const conv_config *c, char *err, size_t errlen)
{
    const char *bad = NULL;
    if (c->height < 1 || c->height > CONV_MAX_DIM)
        bad = "height";
    else if (c->width < 1 || c->width > CONV_MAX_DIM)
        bad = "width";
    else if (c->channels < 1 || c->channels > 4)
        bad = "channels (1..4)";
    else if (c->n_conv < 1 || c->n_conv > CONV_MAX_LAYERS)
        bad = "n_conv (1..3 conv layers)";
    else if (c->kernel < 1 || c->kernel > 7 || c->kernel % 2 == 0)
        bad = "kernel (odd, 1..7)";
    else if (c->feat < 1 || c->feat > CONV_MAX_DIM)
        bad = "feat";
    else if (c->classes < 2 || c->classes > CONV_MAX_DIM)
        bad = "classes (at least 2)";
    else if ((c->height >> c->n_conv) < 1 || (c->width >> c->n_conv) < 1)
        bad = "n_conv (the image must be at least 2^n_conv pixels on each side)";
    for (int i = 0; !bad && i < c->n_conv; i++)
        if (c->ch[i] < 1 || c->ch[i] > 512)
            bad = "conv channels (1..512 each)";
    if (bad) {
        snprintf(err, errlen, "conv judge config: bad %s", bad);
        return DDM_EINVAL;
    }
    return 0;
}

int conv_parse_channels(const char *list, conv_config *c)
{
    c->n_conv = 0;
    for (const char *p = list; p && *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 512 || (*end && *end != ',') ||
            c->n_conv == CONV_MAX_LAYERS || (*end == ',' && !end[1])) {
            c->n_conv = 0;
            return DDM_EINVAL;
        }
        c->ch[c->n_conv++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return c->n_conv > 0 ? 0 : DDM_EINVAL;
}

void conv_layer_shape(const conv_config *c, int i, int *h, int *w, int *ch)
{
    *h = c->height >> i;
    *w = c->width >> i;
    *ch = i == 0 ? c->channels : c->ch[i - 1];
}

/* Floats per row of the flattened last pooled map. */
static size_t flat_size(const conv_config *c)
{
    int h, w, ch;
    conv_layer_shape(c, c->n_conv, &h, &w, &ch);
    return (size_t)h * w * ch;
}

static size_t kk_cin(const conv_config *c, int i)
{
    int h, w, ch;
    conv_layer_shape(c, i, &h, &w, &ch);
    return (size_t)c->kernel * c->kernel * ch;
}

size_t conv_param_count(const conv_config *c)
{
    size_t n = 0;
    for (int i = 0; i < c->n_conv; i++)
        n += (size_t)c->ch[i] * kk_cin(c, i) + (size_t)c->ch[i];
    n += (size_t)c->feat * flat_size(c) + (size_t)c->feat;
    n += (size_t)c->classes * c->feat + (size_t)c->classes;
    return n;
}

void conv_bind(const conv_config *c, float *buf, conv_weights *w)
{
    memset(w, 0, sizeof *w);
    float *p = buf;
    for (int i = 0; i < c->n_conv; i++) {
        w->w[i] = p;
        p += (size_t)c->ch[i] * kk_cin(c, i);
        w->b[i] = p;
        p += c->ch[i];
    }
    w->w_fc = p;
    p += (size_t)c->feat * flat_size(c);
    w->b_fc = p;
    p += c->feat;
    w->w_out = p;
    p += (size_t)c->classes * c->feat;
    w->b_out = p;
}

static void normal_fill(float *x, size_t n, double sd, uint64_t seed, uint64_t stream)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(sd * rng_normal(seed, stream, i));
}

void conv_init(const conv_config *c, float *buf, uint64_t seed)
{
    conv_weights w;
    conv_bind(c, buf, &w);
    memset(buf, 0, conv_param_count(c) * sizeof *buf);
    for (int i = 0; i < c->n_conv; i++) {
        size_t fan = kk_cin(c, i);
        normal_fill(w.w[i], (size_t)c->ch[i] * fan, sqrt(2.0 / (double)fan), seed, 100 + i);
    }
    size_t P = flat_size(c);
    normal_fill(w.w_fc, (size_t)c->feat * P, sqrt(2.0 / (double)P), seed, 200);
    normal_fill(w.w_out, (size_t)c->classes * c->feat, sqrt(1.0 / c->feat), seed, 201);
}

/* ---- scratch -------------------------------------------------------------------------- */

struct conv_scratch {
    conv_config c;
    int max_batch, training;
    float *col[CONV_MAX_LAYERS];  /* [B h w][k k cin]; inference shares col[0] */
    float *z[CONV_MAX_LAYERS];    /* [B h w][ch] after ReLU */
    float *a[CONV_MAX_LAYERS];    /* [B h/2 w/2][ch] pooled: the next layer's input */
    int *arg[CONV_MAX_LAYERS];    /* [B h/2 w/2 ch] index into z of each pooled value */
    float *f;                     /* [B][feat] */
    float *y;                     /* [B][classes] when the caller passes no out */
    /* training only */
    float *dz, *dcol, *da0, *da1, *df;
    int last_n;                   /* rows of the last successful forward, 0 = none */
};

void conv_scratch_free(conv_scratch *s)
{
    if (!s)
        return;
    for (int i = 0; i < CONV_MAX_LAYERS; i++) {
        if (i == 0 || s->training)
            free(s->col[i]);
        free(s->z[i]);
        free(s->a[i]);
        free(s->arg[i]);
    }
    free(s->f);
    free(s->y);
    free(s->dz);
    free(s->dcol);
    free(s->da0);
    free(s->da1);
    free(s->df);
    free(s);
}

conv_scratch *conv_scratch_new(const conv_config *c, int max_batch, int training)
{
    char err[128];
    if (max_batch < 1 || conv_config_check(c, err, sizeof err))
        return NULL;
    conv_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->c = *c;
    s->max_batch = max_batch;
    s->training = training != 0;
    size_t B = (size_t)max_batch, col_max = 0, z_max = 0, a_max = 0;
    int ok = 1;
    for (int i = 0; i < c->n_conv; i++) {
        int h, w, ch;
        conv_layer_shape(c, i, &h, &w, &ch);
        size_t col = B * h * w * kk_cin(c, i), z = B * h * w * c->ch[i];
        size_t a = B * (h / 2) * (w / 2) * c->ch[i];
        col_max = col > col_max ? col : col_max;
        z_max = z > z_max ? z : z_max;
        a_max = a > a_max ? a : a_max;
        if (s->training) {
            s->col[i] = malloc(col * sizeof(float));
            ok &= s->col[i] != NULL;
        }
        s->z[i] = malloc(z * sizeof(float));
        s->a[i] = malloc(a * sizeof(float));
        s->arg[i] = malloc(a * sizeof(int));
        ok &= s->z[i] && s->a[i] && s->arg[i];
    }
    if (!s->training) {
        s->col[0] = malloc(col_max * sizeof(float));
        for (int i = 1; i < c->n_conv; i++)
            s->col[i] = s->col[0];
        ok &= s->col[0] != NULL;
    }
    s->f = malloc(B * c->feat * sizeof(float));
    s->y = malloc(B * c->classes * sizeof(float));
    ok &= s->f && s->y;
    if (s->training) {
        s->dz = malloc(z_max * sizeof(float));
        s->dcol = malloc(col_max * sizeof(float));
        s->da0 = malloc(a_max * sizeof(float));
        s->da1 = malloc(a_max * sizeof(float));
        s->df = malloc(B * c->feat * sizeof(float));
        ok &= s->dz && s->dcol && s->da0 && s->da1 && s->df;
    }
    if (!ok) {
        conv_scratch_free(s);
        return NULL;
    }
    return s;
}

const float *conv_features(const conv_scratch *s) { return s->f; }
int conv_scratch_max_batch(const conv_scratch *s) { return s->max_batch; }

/* ---- the pieces ------------------------------------------------------------------------- */

/* col [n h w][k k cin] from a [n][h][w][cin], zero padding k/2. */
static void im2col(const float *a, int n, int h, int w, int cin, int k, float *col)
{
    const int p = k / 2;
    const size_t kc = (size_t)k * k * cin, rowb = (size_t)cin * sizeof(float);
    for (int b = 0; b < n; b++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float *row = col + (((size_t)b * h + y) * w + x) * kc;
                for (int dy = 0; dy < k; dy++) {
                    int sy = y + dy - p;
                    for (int dx = 0; dx < k; dx++) {
                        int sx = x + dx - p;
                        float *dst = row + ((size_t)dy * k + dx) * cin;
                        if (sy < 0 || sy >= h || sx < 0 || sx >= w)
                            memset(dst, 0, rowb);
                        else
                            memcpy(dst, a + (((size_t)b * h + sy) * w + sx) * cin, rowb);
                    }
                }
            }
}

/* da [n][h][w][cin] = the sum of col's entries over the positions each came
 * from (the adjoint of im2col). */
static void col2im(const float *col, int n, int h, int w, int cin, int k, float *da)
{
    const int p = k / 2;
    const size_t kc = (size_t)k * k * cin;
    memset(da, 0, (size_t)n * h * w * cin * sizeof *da);
    for (int b = 0; b < n; b++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                const float *row = col + (((size_t)b * h + y) * w + x) * kc;
                for (int dy = 0; dy < k; dy++) {
                    int sy = y + dy - p;
                    if (sy < 0 || sy >= h)
                        continue;
                    for (int dx = 0; dx < k; dx++) {
                        int sx = x + dx - p;
                        if (sx < 0 || sx >= w)
                            continue;
                        const float *src = row + ((size_t)dy * k + dx) * cin;
                        float *dst = da + (((size_t)b * h + sy) * w + sx) * cin;
                        for (int c = 0; c < cin; c++)
                            dst[c] += src[c];
                    }
                }
            }
}

/* a [n][h/2][w/2][ch] = 2x2 maxima of z [n][h][w][ch]; arg the index of each. */
static void pool_forward(const float *z, int n, int h, int w, int ch, float *a, int *arg)
{
    const int ho = h / 2, wo = w / 2;
    for (int b = 0; b < n; b++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                size_t o = (((size_t)b * ho + oy) * wo + ox) * ch;
                size_t i00 = (((size_t)b * h + 2 * oy) * w + 2 * ox) * ch;
                size_t q[4] = { i00, i00 + ch, i00 + (size_t)w * ch, i00 + (size_t)w * ch + ch };
                for (int c = 0; c < ch; c++) {
                    size_t best = q[0] + c;
                    for (int j = 1; j < 4; j++)
                        if (z[q[j] + c] > z[best])
                            best = q[j] + c;
                    a[o + c] = z[best];
                    arg[o + c] = (int)best;
                }
            }
}

/* x[m][j] += b[j]; ReLU. */
static void bias_relu(float *x, size_t m, int cols, const float *b)
{
    for (size_t r = 0; r < m; r++) {
        float *row = x + r * cols;
        for (int j = 0; j < cols; j++) {
            float v = row[j] + b[j];
            row[j] = v > 0.0f ? v : 0.0f;
        }
    }
}

/* g[j] += sum over rows of d[m][j] */
static void col_sums(const float *d, size_t m, int cols, float *g)
{
    for (size_t r = 0; r < m; r++)
        for (int j = 0; j < cols; j++)
            g[j] += d[r * cols + j];
}

/* ---- forward / backward ------------------------------------------------------------------- */

int conv_forward(const conv_config *c, const conv_weights *w, conv_scratch *s, int n,
                 const float *x, float *out)
{
    s->last_n = 0;
    if (n < 1 || n > s->max_batch)
        return DDM_ERANGE;
    const float *a = x;
    for (int i = 0; i < c->n_conv; i++) {
        int h, wd, cin;
        conv_layer_shape(c, i, &h, &wd, &cin);
        const int M = n * h * wd, Kc = (int)kk_cin(c, i), N = c->ch[i];
        im2col(a, n, h, wd, cin, c->kernel, s->col[i]);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, Kc, 1.0f, s->col[i], Kc,
                    w->w[i], Kc, 0.0f, s->z[i], N);
        bias_relu(s->z[i], (size_t)M, N, w->b[i]);
        pool_forward(s->z[i], n, h, wd, N, s->a[i], s->arg[i]);
        a = s->a[i];
    }
    const int P = (int)flat_size(c), F = c->feat, O = c->classes;
    float *y = out ? out : s->y;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, F, P, 1.0f, a, P, w->w_fc, P, 0.0f,
                s->f, F);
    bias_relu(s->f, (size_t)n, F, w->b_fc);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, O, F, 1.0f, s->f, F, w->w_out, F,
                0.0f, y, O);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < O; j++)
            y[(size_t)r * O + j] += w->b_out[j];
    s->last_n = n;
    return 0;
}

int conv_backward(const conv_config *c, const conv_weights *w, conv_weights *grad,
                  conv_scratch *s, int n, const float *dout)
{
    if (!s->training || s->last_n != n || n < 1)
        return DDM_EINVAL;
    const int L = c->n_conv, P = (int)flat_size(c), F = c->feat, O = c->classes;
    const float *aL = s->a[L - 1];
    /* output layer */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, O, F, n, 1.0f, dout, O, s->f, F, 1.0f,
                grad->w_out, F);
    col_sums(dout, (size_t)n, O, grad->b_out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, F, O, 1.0f, dout, O, w->w_out, F,
                0.0f, s->df, F);
    for (size_t i = 0; i < (size_t)n * F; i++)
        s->df[i] = s->f[i] > 0.0f ? s->df[i] : 0.0f;
    /* dense layer */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, F, P, n, 1.0f, s->df, F, aL, P, 1.0f,
                grad->w_fc, P);
    col_sums(s->df, (size_t)n, F, grad->b_fc);
    float *da = s->da0, *da_in = s->da1;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, P, F, 1.0f, s->df, F, w->w_fc, P,
                0.0f, da, P);
    /* conv layers, last to first */
    for (int i = L - 1; i >= 0; i--) {
        int h, wd, cin;
        conv_layer_shape(c, i, &h, &wd, &cin);
        const int M = n * h * wd, Kc = (int)kk_cin(c, i), N = c->ch[i];
        const size_t pooled = (size_t)n * (h / 2) * (wd / 2) * N;
        memset(s->dz, 0, (size_t)M * N * sizeof *s->dz);
        for (size_t o = 0; o < pooled; o++)
            s->dz[s->arg[i][o]] += da[o];
        for (size_t q = 0; q < (size_t)M * N; q++)
            s->dz[q] = s->z[i][q] > 0.0f ? s->dz[q] : 0.0f;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, Kc, M, 1.0f, s->dz, N, s->col[i],
                    Kc, 1.0f, grad->w[i], Kc);
        col_sums(s->dz, (size_t)M, N, grad->b[i]);
        if (i == 0)
            break;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, Kc, N, 1.0f, s->dz, N, w->w[i],
                    Kc, 0.0f, s->dcol, Kc);
        col2im(s->dcol, n, h, wd, cin, c->kernel, da_in);
        float *t = da;
        da = da_in;
        da_in = t;
    }
    return 0;
}

int conv_forward_ref(const conv_config *c, const conv_weights *w, int n, const float *x,
                     double *out, double *feat)
{
    char err[128];
    if (n < 1 || conv_config_check(c, err, sizeof err))
        return DDM_EINVAL;
    const int k = c->kernel, pd = k / 2;
    size_t amax = 1;
    for (int L = 0; L < c->n_conv; L++) {
        int h, wd, cin;
        conv_layer_shape(c, L, &h, &wd, &cin);
        size_t m = (size_t)h * wd * (cin > c->ch[L] ? cin : c->ch[L]);
        amax = m > amax ? m : amax;
    }
    double *a = malloc(amax * sizeof *a), *z = malloc(amax * sizeof *z);
    double *f = malloc((size_t)c->feat * sizeof *f);
    if (!a || !z || !f) {
        free(a);
        free(z);
        free(f);
        return DDM_ENOMEM;
    }
    for (int r = 0; r < n; r++) {
        size_t D = (size_t)c->height * c->width * c->channels;
        for (size_t i = 0; i < D; i++)
            a[i] = x[(size_t)r * D + i];
        for (int L = 0; L < c->n_conv; L++) {
            int h, wd, cin;
            conv_layer_shape(c, L, &h, &wd, &cin);
            int co = c->ch[L];
            for (int y = 0; y < h; y++)
                for (int xx = 0; xx < wd; xx++)
                    for (int o = 0; o < co; o++) {
                        double s = w->b[L][o];
                        for (int dy = 0; dy < k; dy++)
                            for (int dx = 0; dx < k; dx++) {
                                int sy = y + dy - pd, sx = xx + dx - pd;
                                if (sy < 0 || sy >= h || sx < 0 || sx >= wd)
                                    continue;
                                for (int ci = 0; ci < cin; ci++)
                                    s += (double)w->w[L][(((size_t)o * k + dy) * k + dx) * cin + ci] *
                                         a[((size_t)sy * wd + sx) * cin + ci];
                            }
                        z[((size_t)y * wd + xx) * co + o] = s > 0 ? s : 0;
                    }
            for (int y = 0; y < h / 2; y++)
                for (int xx = 0; xx < wd / 2; xx++)
                    for (int o = 0; o < co; o++) {
                        double m = -INFINITY;
                        for (int j = 0; j < 4; j++) {
                            double v = z[((size_t)(2 * y + j / 2) * wd + 2 * xx + j % 2) * co + o];
                            m = v > m ? v : m;
                        }
                        a[((size_t)y * (wd / 2) + xx) * co + o] = m;
                    }
        }
        size_t P = flat_size(c);
        for (int j = 0; j < c->feat; j++) {
            double s = w->b_fc[j];
            for (size_t i = 0; i < P; i++)
                s += (double)w->w_fc[(size_t)j * P + i] * a[i];
            f[j] = s > 0 ? s : 0;
            if (feat)
                feat[(size_t)r * c->feat + j] = f[j];
        }
        for (int o = 0; o < c->classes; o++) {
            double s = w->b_out[o];
            for (int j = 0; j < c->feat; j++)
                s += (double)w->w_out[(size_t)o * c->feat + j] * f[j];
            out[(size_t)r * c->classes + o] = s;
        }
    }
    free(a);
    free(z);
    free(f);
    return 0;
}

/* ---- files ---------------------------------------------------------------------------------- */

/* Name and shape of tensor t (0 .. 2 n_conv + 3) of the layout; returns its ndim. */
static int tensor_info(const conv_config *c, int t, char *name, size_t len, int64_t *shape)
{
    int L = c->n_conv;
    if (t < 2 * L) {
        int i = t / 2, h, w, cin;
        conv_layer_shape(c, i, &h, &w, &cin);
        snprintf(name, len, "conv%d.%s", i, t % 2 ? "bias" : "weight");
        if (t % 2) {
            shape[0] = c->ch[i];
            return 1;
        }
        shape[0] = c->ch[i];
        shape[1] = shape[2] = c->kernel;
        shape[3] = cin;
        return 4;
    }
    static const char *names[] = { "fc.weight", "fc.bias", "out.weight", "out.bias" };
    int j = t - 2 * L;
    snprintf(name, len, "%s", names[j]);
    shape[0] = j < 2 ? c->feat : c->classes;
    shape[1] = j == 0 ? (int64_t)flat_size(c) : c->feat;
    return j % 2 ? 1 : 2;
}

/* Pointer of tensor t in w. */
static float *tensor_ptr(const conv_weights *w, int L, int t)
{
    if (t < 2 * L)
        return t % 2 ? w->b[t / 2] : w->w[t / 2];
    float *p[] = { w->w_fc, w->b_fc, w->w_out, w->b_out };
    return p[t - 2 * L];
}

static size_t numel(const int64_t *shape, int ndim)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

int conv_write(st_writer *w, const conv_config *c, const float *params, st_dtype dtype)
{
    char err[128], name[32], buf[64];
    if (conv_config_check(c, err, sizeof err) || !params)
        return DDM_EINVAL;
    conv_weights cw;
    conv_bind(c, (float *)params, &cw);
    int rc = 0;
    for (int t = 0; t < 2 * c->n_conv + 4 && !rc; t++) {
        int64_t shape[4];
        int nd = tensor_info(c, t, name, sizeof name, shape);
        rc = st_writer_add_f32(w, name, dtype, nd, shape, tensor_ptr(&cw, c->n_conv, t));
    }
    const struct {
        const char *key;
        int v;
    } ints[] = { { "height", c->height }, { "width", c->width }, { "channels", c->channels },
                 { "kernel", c->kernel }, { "feat", c->feat }, { "classes", c->classes } };
    rc = rc ? rc : st_writer_meta(w, "ddm.format", CONV_FORMAT);
    rc = rc ? rc : st_writer_meta(w, "ddm.kind", "judge");
    for (size_t i = 0; i < sizeof ints / sizeof ints[0] && !rc; i++) {
        snprintf(buf, sizeof buf, "%d", ints[i].v);
        rc = st_writer_meta(w, ints[i].key, buf);
    }
    size_t at = 0;
    for (int i = 0; i < c->n_conv; i++)
        at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%d", i ? "," : "", c->ch[i]);
    rc = rc ? rc : st_writer_meta(w, "conv_channels", buf);
    return rc;
}

/* A plain decimal metadata value in 1..CONV_MAX_DIM. */
static int meta_int(const st_file *f, const char *key, int *out)
{
    const char *v = st_meta(f, key);
    char *end;
    if (!v || !*v)
        return -1;
    long x = strtol(v, &end, 10);
    if (*end || x < 1 || x > CONV_MAX_DIM)
        return -1;
    *out = (int)x;
    return 0;
}

int conv_is_judge_file(const char *path)
{
    char err[256];
    st_file *f = st_open(path, err, sizeof err);
    const char *fmt = f ? st_meta(f, "ddm.format") : NULL;
    int yes = fmt && strcmp(fmt, CONV_FORMAT) == 0;
    st_close(f);
    return yes;
}

conv_model *conv_open(const char *path, char *err, size_t errlen)
{
    conv_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    m->file = st_open(path, err, errlen);
    if (!m->file)
        goto fail;
    const char *fmt = st_meta(m->file, "ddm.format"), *kind = st_meta(m->file, "ddm.kind");
    if (!fmt || strcmp(fmt, CONV_FORMAT) != 0 || !kind || strcmp(kind, "judge") != 0) {
        snprintf(err, errlen, "weights file %s: not a conv judge (ddm.format \"%s\", ddm.kind "
                 "\"%s\"; train one with `ddm-train judge`)", path, fmt ? fmt : "",
                 kind ? kind : "");
        goto fail;
    }
    conv_config *c = &m->cfg;
    const char *keys[] = { "height", "width", "channels", "kernel", "feat", "classes" };
    int *dst[] = { &c->height, &c->width, &c->channels, &c->kernel, &c->feat, &c->classes };
    for (int i = 0; i < 6; i++)
        if (meta_int(m->file, keys[i], dst[i])) {
            snprintf(err, errlen, "weights file %s: metadata \"%s\" missing or not a decimal in "
                     "1..%d", path, keys[i], CONV_MAX_DIM);
            goto fail;
        }
    const char *chs = st_meta(m->file, "conv_channels");
    conv_parse_channels(chs, c);
    char e2[128];
    if (c->n_conv < 1 || conv_config_check(c, e2, sizeof e2)) {
        snprintf(err, errlen, "weights file %s: %s", path,
                 c->n_conv < 1 ? "metadata \"conv_channels\" is not a list of 1..3 numbers "
                                 "in 1..512 like \"16,32\""
                               : e2);
        goto fail;
    }
    size_t np = conv_param_count(c);
    m->params = malloc(np * sizeof *m->params);
    if (!m->params) {
        snprintf(err, errlen, "%s: out of memory for %zu parameters", path, np);
        goto fail;
    }
    conv_bind(c, m->params, &m->w);
    int nt = 2 * c->n_conv + 4;
    if (st_count(m->file) != nt) {
        snprintf(err, errlen, "weights file %s: %d tensors, a judge of %d conv layers has %d",
                 path, st_count(m->file), c->n_conv, nt);
        goto fail;
    }
    for (int t = 0; t < nt; t++) {
        char name[32];
        int64_t shape[4];
        int nd = tensor_info(c, t, name, sizeof name, shape);
        const st_tensor *ts = st_get(m->file, name);
        int same = ts && ts->ndim == nd;
        for (int d = 0; same && d < nd; d++)
            same = ts->shape[d] == shape[d];
        if (!same || (ts->dtype != ST_F32 && ts->dtype != ST_F16 && ts->dtype != ST_BF16)) {
            snprintf(err, errlen, "weights file %s: tensor \"%s\" %s (expected F32/F16/BF16 of "
                     "%d dims matching the metadata)", path, name, ts ? "has the wrong shape or "
                     "dtype" : "is missing", nd);
            goto fail;
        }
        float *dstp = tensor_ptr(&m->w, c->n_conv, t);
        size_t cnt = numel(shape, nd);
        if (st_read_f32(ts, dstp, cnt, e2, sizeof e2)) {
            snprintf(err, errlen, "weights file %s: tensor \"%s\": %s", path, name, e2);
            goto fail;
        }
        for (size_t i = 0; i < cnt; i++)
            if (!isfinite(dstp[i])) {
                snprintf(err, errlen, "weights file %s: tensor \"%s\" holds a NaN or Inf", path,
                         name);
                goto fail;
            }
    }
    return m;
fail:
    conv_close(m);
    return NULL;
}

void conv_close(conv_model *m)
{
    if (!m)
        return;
    free(m->params);
    st_close(m->file);
    free(m);
}
