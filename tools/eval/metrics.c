/* metrics.c -- KID, precision/recall, class coverage and bootstrap resamples (see metrics.h). */
#include "tools/eval/metrics.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

#define BOOT_STREAM 0xB007ull

void metric_boot_counts(uint64_t seed, int b, long n, int *counts)
{
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (long i = 0; i < n; i++) {
        long k = (long)(rng_uniform(seed, BOOT_STREAM + (uint64_t)b, (uint64_t)i) * (double)n);
        counts[k < n ? k : n - 1]++;
    }
}

/* ---- KID ---------------------------------------------------------------------------------- */

static double *to_double(const float *x, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    if (d)
        for (size_t i = 0; i < n; i++)
            d[i] = x[i];
    return d;
}

/* k = (g / scale + 1)^3 in place over g [n] */
static void poly3(double *g, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++) {
        double v = g[i] / scale + 1.0;
        g[i] = v * v * v;
    }
}

double kid_scale(const float *ref, long m, int d)
{
    double s = 0;
    for (size_t i = 0; i < (size_t)m * d; i++)
        s += (double)ref[i] * ref[i];
    return m > 0 && s > 0 ? s / m : 1.0;
}

double kid_ref_term(const float *ref, long m, int d, double scale)
{
    double *r = to_double(ref, (size_t)m * d), *g = malloc((size_t)m * m * sizeof *g);
    double sum = NAN;
    if (r && g && m >= 2) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)m, d, 1.0, r, d, r, d,
                    0.0, g, (int)m);
        poly3(g, (size_t)m * m, scale);
        sum = 0;
        for (long i = 0; i < m; i++)
            for (long j = 0; j < m; j++)
                if (i != j)
                    sum += g[(size_t)i * m + j];
        sum /= (double)m * (double)(m - 1);
    }
    free(r);
    free(g);
    return sum;
}

int kid_set_init(const float *x, long n, const float *ref, long m, int d, double scale,
                 double rr, kid_set *out)
{
    memset(out, 0, sizeof *out);
    if (n < 2 || m < 1 || d < 1)
        return DDM_EINVAL;
    double *xd = to_double(x, (size_t)n * d), *rd = to_double(ref, (size_t)m * d);
    double *kr = malloc((size_t)n * m * sizeof *kr);
    out->kgg = malloc((size_t)n * n * sizeof *out->kgg);
    out->kgr = calloc((size_t)n, sizeof *out->kgr);
    int rc = (!xd || !rd || !kr || !out->kgg || !out->kgr) ? DDM_ENOMEM : 0;
    if (!rc) {
        out->n = n;
        out->m = m;
        out->rr = rr;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, d, 1.0, xd, d, xd,
                    d, 0.0, out->kgg, (int)n);
        poly3(out->kgg, (size_t)n * n, scale);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m, d, 1.0, xd, d, rd,
                    d, 0.0, kr, (int)m);
        poly3(kr, (size_t)n * m, scale);
        for (long i = 0; i < n; i++)
            for (long j = 0; j < m; j++)
                out->kgr[i] += kr[(size_t)i * m + j];
    }
    free(xd);
    free(rd);
    free(kr);
    if (rc)
        kid_set_free(out);
    return rc;
}

void kid_set_free(kid_set *s)
{
    free(s->kgg);
    free(s->kgr);
    memset(s, 0, sizeof *s);
}

double kid_set_value(const kid_set *s, const int *counts)
{
    const long n = s->n;
    double N = 0, gg = 0, gr = 0;
    for (long i = 0; i < n; i++) {
        double ci = counts ? counts[i] : 1;
        if (ci == 0)
            continue;
        N += ci;
        const double *row = s->kgg + (size_t)i * n;
        double dot = 0;
        if (counts) {
            for (long j = 0; j < n; j++)
                dot += row[j] * counts[j];
        } else {
            for (long j = 0; j < n; j++)
                dot += row[j];
        }
        gg += ci * dot - ci * row[i]; /* pairs of distinct draws */
        gr += ci * s->kgr[i];
    }
    if (N < 2)
        return NAN;
    return gg / (N * (N - 1)) + s->rr - 2.0 * gr / (N * (double)s->m);
}

/* ---- precision and recall ----------------------------------------------------------------- */

/* Squared distances D [na][nb] between rows of a and b. */
static double *sq_dists(const float *a, long na, const float *b, long nb, int d)
{
    double *ad = to_double(a, (size_t)na * d), *bd = to_double(b, (size_t)nb * d);
    double *D = malloc((size_t)na * nb * sizeof *D);
    double *an = malloc((size_t)na * sizeof *an), *bn = malloc((size_t)nb * sizeof *bn);
    if (!ad || !bd || !D || !an || !bn) {
        free(D);
        D = NULL;
        goto out;
    }
    for (long i = 0; i < na; i++) {
        an[i] = 0;
        for (int j = 0; j < d; j++)
            an[i] += ad[(size_t)i * d + j] * ad[(size_t)i * d + j];
    }
    for (long i = 0; i < nb; i++) {
        bn[i] = 0;
        for (int j = 0; j < d; j++)
            bn[i] += bd[(size_t)i * d + j] * bd[(size_t)i * d + j];
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)na, (int)nb, d, -2.0, ad, d, bd, d,
                0.0, D, (int)nb);
    for (long i = 0; i < na; i++)
        for (long j = 0; j < nb; j++) {
            double v = D[(size_t)i * nb + j] + an[i] + bn[j];
            D[(size_t)i * nb + j] = v > 0 ? v : 0;
        }
out:
    free(ad);
    free(bd);
    free(an);
    free(bn);
    return D;
}

int pr_radii(const float *pts, long m, int d, int k, double *radius)
{
    if (m <= k || k < 1)
        return DDM_EINVAL;
    double *D = sq_dists(pts, m, pts, m, d);
    double *best = malloc((size_t)k * sizeof *best);
    if (!D || !best) {
        free(D);
        free(best);
        return DDM_ENOMEM;
    }
    for (long i = 0; i < m; i++) {
        int nb = 0; /* the k smallest distances to others, ascending */
        for (long j = 0; j < m; j++) {
            if (j == i)
                continue;
            double v = D[(size_t)i * m + j];
            if (nb == k && v >= best[k - 1])
                continue;
            int at = nb < k ? nb++ : k - 1;
            while (at > 0 && best[at - 1] > v) {
                best[at] = best[at - 1];
                at--;
            }
            best[at] = v;
        }
        radius[i] = sqrt(best[k - 1]);
    }
    free(D);
    free(best);
    return 0;
}

int pr_inside(const float *a, long na, const float *b, const double *rb, long nb, int d,
              unsigned char *in)
{
    double *D = sq_dists(a, na, b, nb, d);
    if (!D)
        return DDM_ENOMEM;
    for (long i = 0; i < na; i++) {
        in[i] = 0;
        for (long j = 0; j < nb && !in[i]; j++)
            in[i] = D[(size_t)i * nb + j] <= rb[j] * rb[j];
    }
    free(D);
    return 0;
}

double pr_share(const unsigned char *in, long n, const int *counts)
{
    double hit = 0, tot = 0;
    for (long i = 0; i < n; i++) {
        double c = counts ? counts[i] : 1;
        hit += c * in[i];
        tot += c;
    }
    return tot > 0 ? hit / tot : NAN;
}

/* ---- coverage and summaries ---------------------------------------------------------------- */

double metric_tv(const double *hist, const double *freq, int C)
{
    double tot = 0, tv = 0;
    for (int c = 0; c < C; c++)
        tot += hist[c];
    if (tot <= 0)
        return NAN;
    for (int c = 0; c < C; c++)
        tv += fabs(hist[c] / tot - freq[c]);
    return 0.5 * tv;
}

void metric_mean_sd(const double *v, int n, double *mean, double *sd)
{
    double m = 0, s = 0;
    for (int i = 0; i < n; i++)
        m += v[i];
    m = n > 0 ? m / n : NAN;
    for (int i = 0; i < n; i++)
        s += (v[i] - m) * (v[i] - m);
    *mean = m;
    *sd = n > 1 ? sqrt(s / (n - 1)) : NAN;
}
