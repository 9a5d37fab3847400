/* fid.c -- Fréchet distance between feature sets (see fid.h). */
#include "tools/eval/fid.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* LAPACK's symmetric eigen-decomposition (reference Fortran ABI as exported
 * by libopenblas: 32-bit integers, hidden string lengths at the end). */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                   double *w, double *work, const int *lwork, int *info, size_t jobz_len,
                   size_t uplo_len);

#define FID_MAX_D 8192
#define FID_CHUNK 512 /* rows centred at a time while accumulating the covariance */

int fid_stats_compute(const float *feat, long n, int d, fid_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!feat || n < 2 || d < 1 || d > FID_MAX_D)
        return DDM_EINVAL;
    out->d = d;
    out->n = n;
    out->mu = calloc((size_t)d, sizeof *out->mu);
    out->cov = calloc((size_t)d * (size_t)d, sizeof *out->cov);
    long ch = n < FID_CHUNK ? n : FID_CHUNK;
    double *xc = malloc((size_t)ch * (size_t)d * sizeof *xc);
    if (!out->mu || !out->cov || !xc) {
        free(xc);
        fid_stats_free(out);
        return DDM_ENOMEM;
    }
    for (long i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            out->mu[j] += feat[(size_t)i * d + j];
    for (int j = 0; j < d; j++)
        out->mu[j] /= (double)n;
    /* cov (upper triangle, row-major) += xc^T xc over chunks of centred rows */
    for (long r0 = 0; r0 < n; r0 += ch) {
        long m = n - r0 < ch ? n - r0 : ch;
        for (long i = 0; i < m; i++)
            for (int j = 0; j < d; j++)
                xc[(size_t)i * d + j] = feat[(size_t)(r0 + i) * d + j] - out->mu[j];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, (int)m, 1.0, xc, d, 1.0, out->cov,
                    d);
    }
    free(xc);
    for (int i = 0; i < d; i++) {
        for (int j = i; j < d; j++) {
            double v = out->cov[(size_t)i * d + j] / (double)(n - 1);
            out->cov[(size_t)i * d + j] = v;
            out->cov[(size_t)j * d + i] = v;
        }
    }
    return 0;
}

int fid_stats_from(const double *mu, const double *cov, int d, long n, fid_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!mu || !cov || d < 1 || d > FID_MAX_D)
        return DDM_EINVAL;
    out->d = d;
    out->n = n;
    out->mu = malloc((size_t)d * sizeof *out->mu);
    out->cov = malloc((size_t)d * (size_t)d * sizeof *out->cov);
    if (!out->mu || !out->cov) {
        fid_stats_free(out);
        return DDM_ENOMEM;
    }
    memcpy(out->mu, mu, (size_t)d * sizeof *mu);
    memcpy(out->cov, cov, (size_t)d * (size_t)d * sizeof *cov);
    return 0;
}

void fid_stats_free(fid_stats *s)
{
    free(s->mu);
    free(s->cov);
    memset(s, 0, sizeof *s);
}

/* Eigen-decomposition of the symmetric a [d][d] in place: eigenvalues into
 * w [d] (ascending), eigenvectors into a's columns (column-major) when
 * vectors. Returns 0, DDM_ENOMEM or DDM_EFORMAT (no convergence). */
static int eig_sym(double *a, int d, double *w, int vectors)
{
    const char jobz = vectors ? 'V' : 'N', uplo = 'U';
    int lwork = -1, info = 0;
    double q = 0;
    dsyev_(&jobz, &uplo, &d, a, &d, w, &q, &lwork, &info, 1, 1);
    if (info != 0)
        return DDM_EFORMAT;
    lwork = (int)q;
    if (lwork < 3 * d)
        lwork = 3 * d;
    double *work = malloc((size_t)lwork * sizeof *work);
    if (!work)
        return DDM_ENOMEM;
    dsyev_(&jobz, &uplo, &d, a, &d, w, work, &lwork, &info, 1, 1);
    free(work);
    return info == 0 ? 0 : DDM_EFORMAT;
}

/* s = A^1/2 = V diag(sqrt(max(w, 0))) V^T for symmetric PSD A [d][d] (row- and
 * column-major agree); v, u [d][d] and w [d] are work space. */
static int sym_sqrt(const double *A, int d, double *s, double *v, double *u, double *w)
{
    memcpy(v, A, (size_t)d * d * sizeof *v);
    int rc = eig_sym(v, d, w, 1);
    if (rc)
        return rc;
    for (int j = 0; j < d; j++) {
        double r = w[j] > 0 ? sqrt(w[j]) : 0.0;
        for (int i = 0; i < d; i++)
            u[(size_t)j * d + i] = v[(size_t)j * d + i] * r;
    }
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, d, d, d, 1.0, u, d, v, d, 0.0, s, d);
    return 0;
}

int fid_trace_sqrt_product(const double *A, const double *B, int d, double *out)
{
    size_t dd = (size_t)d * (size_t)d;
    double *v = malloc(dd * sizeof *v), *u = malloc(dd * sizeof *u);
    double *s = malloc(dd * sizeof *s), *w = malloc((size_t)d * sizeof *w);
    int rc = (!v || !u || !s || !w) ? DDM_ENOMEM : 0;
    rc = rc ? rc : sym_sqrt(A, d, s, v, u, w);
    if (!rc) {
        /* M = S B S (u = S B, v = u S), symmetrised against round-off */
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, s, d, B, d, 0.0, u, d);
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, d, d, d, 1.0, u, d, s, d, 0.0, v, d);
        for (int i = 0; i < d; i++)
            for (int j = i + 1; j < d; j++) {
                double m = 0.5 * (v[(size_t)i * d + j] + v[(size_t)j * d + i]);
                v[(size_t)i * d + j] = v[(size_t)j * d + i] = m;
            }
        rc = eig_sym(v, d, w, 0);
    }
    if (!rc) {
        double tr = 0;
        for (int i = 0; i < d; i++)
            tr += w[i] > 0 ? sqrt(w[i]) : 0.0;
        *out = tr;
    }
    free(v);
    free(u);
    free(s);
    free(w);
    return rc;
}

int fid_distance(const fid_stats *a, const fid_stats *b, double *out, char *err, size_t errlen)
{
    if (a->d != b->d || a->d < 1) {
        snprintf(err, errlen, "FID: feature sizes differ (%d and %d)", a->d, b->d);
        return DDM_EMISMATCH;
    }
    int d = a->d;
    double dm = 0, tr = 0, ts = 0;
    for (int i = 0; i < d; i++) {
        double e = a->mu[i] - b->mu[i];
        dm += e * e;
        tr += a->cov[(size_t)i * d + i] + b->cov[(size_t)i * d + i];
    }
    int rc = fid_trace_sqrt_product(a->cov, b->cov, d, &ts);
    if (rc == DDM_ENOMEM) {
        snprintf(err, errlen, "FID: out of memory for %dx%d matrices", d, d);
        return rc;
    }
    if (rc) {
        snprintf(err, errlen, "FID: LAPACK dsyev did not converge on the %dx%d covariance; "
                 "check the features for NaN or Inf", d, d);
        return rc;
    }
    double f = dm + tr - 2.0 * ts;
    *out = f > 0 ? f : 0.0;
    return 0;
}

/* ---- repeated FIDs against one reference ------------------------------------------------ */

int fid_ref_init(const fid_stats *s, fid_ref *out)
{
    memset(out, 0, sizeof *out);
    int d = s->d;
    int rc = fid_stats_from(s->mu, s->cov, d, s->n, &out->st);
    if (rc)
        return rc;
    size_t dd = (size_t)d * d;
    double *v = malloc(dd * sizeof *v), *u = malloc(dd * sizeof *u);
    double *w = malloc((size_t)d * sizeof *w);
    out->sqrt_cov = malloc(dd * sizeof *out->sqrt_cov);
    rc = (!v || !u || !w || !out->sqrt_cov) ? DDM_ENOMEM : 0;
    rc = rc ? rc : sym_sqrt(s->cov, d, out->sqrt_cov, v, u, w);
    if (!rc) {
        for (int i = 0; i < d; i++)
            out->tr += s->cov[(size_t)i * d + i];
    }
    free(v);
    free(u);
    free(w);
    if (rc)
        fid_ref_free(out);
    return rc;
}

void fid_ref_free(fid_ref *r)
{
    fid_stats_free(&r->st);
    free(r->sqrt_cov);
    memset(r, 0, sizeof *r);
}

struct fid_set {
    const fid_ref *r;
    long n;
    int d;
    double *f;      /* [n][d] features */
    double *fr;     /* [n][d] F R */
    double *y;      /* [n][d] scratch rows */
    double *g;      /* [d][d] Gram */
    double *w;      /* [d] eigenvalues */
    double *mu;     /* [d] */
    double *mur;    /* [d] */
    double *work;
    int lwork;
};

void fid_set_free(fid_set *s)
{
    if (!s)
        return;
    free(s->f);
    free(s->fr);
    free(s->y);
    free(s->g);
    free(s->w);
    free(s->mu);
    free(s->mur);
    free(s->work);
    free(s);
}

int fid_set_new(const fid_ref *r, const float *feat, long n, fid_set **out)
{
    *out = NULL;
    int d = r->st.d;
    if (!feat || n < 2 || d < 1)
        return DDM_EINVAL;
    fid_set *s = calloc(1, sizeof *s);
    if (!s)
        return DDM_ENOMEM;
    s->r = r;
    s->n = n;
    s->d = d;
    size_t nd = (size_t)n * d;
    s->f = malloc(nd * sizeof *s->f);
    s->fr = malloc(nd * sizeof *s->fr);
    s->y = malloc(nd * sizeof *s->y);
    s->g = malloc((size_t)d * d * sizeof *s->g);
    s->w = malloc((size_t)d * sizeof *s->w);
    s->mu = malloc((size_t)d * sizeof *s->mu);
    s->mur = malloc((size_t)d * sizeof *s->mur);
    if (!s->f || !s->fr || !s->y || !s->g || !s->w || !s->mu || !s->mur) {
        fid_set_free(s);
        return DDM_ENOMEM;
    }
    for (size_t i = 0; i < nd; i++)
        s->f[i] = feat[i];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, d, d, 1.0, s->f, d,
                r->sqrt_cov, d, 0.0, s->fr, d);
    const char jobz = 'N', uplo = 'U';
    int lwork = -1, info = 0;
    double q = 0;
    dsyev_(&jobz, &uplo, &d, s->g, &d, s->w, &q, &lwork, &info, 1, 1);
    s->lwork = info == 0 && (int)q > 3 * d ? (int)q : 3 * d;
    s->work = malloc((size_t)s->lwork * sizeof *s->work);
    if (!s->work) {
        fid_set_free(s);
        return DDM_ENOMEM;
    }
    *out = s;
    return 0;
}

int fid_set_distance(fid_set *s, const int *counts, double *out)
{
    const int d = s->d;
    const long n = s->n;
    double N = 0;
    for (long i = 0; i < n; i++)
        N += counts ? counts[i] : 1;
    if (N < 2)
        return DDM_EINVAL;
    memset(s->mu, 0, (size_t)d * sizeof *s->mu);
    memset(s->mur, 0, (size_t)d * sizeof *s->mur);
    for (long i = 0; i < n; i++) {
        double c = counts ? counts[i] : 1;
        if (c == 0)
            continue;
        const double *f = s->f + (size_t)i * d, *fr = s->fr + (size_t)i * d;
        for (int j = 0; j < d; j++) {
            s->mu[j] += c * f[j];
            s->mur[j] += c * fr[j];
        }
    }
    for (int j = 0; j < d; j++) {
        s->mu[j] /= N;
        s->mur[j] /= N;
    }
    /* tr S and the rows of Y */
    double trs = 0;
    long m = 0;
    for (long i = 0; i < n; i++) {
        double c = counts ? counts[i] : 1;
        if (c == 0)
            continue;
        const double *f = s->f + (size_t)i * d, *fr = s->fr + (size_t)i * d;
        double *y = s->y + (size_t)m * d, k = sqrt(c / (N - 1)), ss = 0;
        for (int j = 0; j < d; j++) {
            double e = f[j] - s->mu[j];
            ss += e * e;
            y[j] = k * (fr[j] - s->mur[j]);
        }
        trs += c * ss;
        m++;
    }
    trs /= N - 1;
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, d, (int)m, 1.0, s->y, d, 0.0, s->g, d);
    const char jobz = 'N', uplo = 'U';
    int info = 0, dd = d, lw = s->lwork;
    dsyev_(&jobz, &uplo, &dd, s->g, &dd, s->w, s->work, &lw, &info, 1, 1);
    if (info != 0)
        return DDM_EFORMAT;
    double ts = 0, dm = 0;
    for (int j = 0; j < d; j++) {
        ts += s->w[j] > 0 ? sqrt(s->w[j]) : 0.0;
        double e = s->mu[j] - s->r->st.mu[j];
        dm += e * e;
    }
    double f = dm + trs + s->r->tr - 2.0 * ts;
    *out = f > 0 ? f : 0.0;
    return 0;
}
