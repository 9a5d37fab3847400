/* fid.h -- Fréchet distance between two feature sets (FID).
 *
 * Each set is summarised by its mean mu and covariance S (unbiased, n - 1);
 * the distance between the Gaussians N(mu1, S1) and N(mu2, S2) is
 *     |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1^1/2 S2 S1^1/2).
 * The trace term uses the symmetric form (equal to tr sqrtm(S1 S2)): S1^1/2
 * and the eigenvalues of the symmetric product come from LAPACK's dsyev
 * (OpenBLAS ships it), negative round-off eigenvalues clamped to 0, so
 * rank-deficient covariances (fewer samples than features) are fine.
 * All arithmetic is in double. */
#ifndef DDM_EVAL_FID_H
#define DDM_EVAL_FID_H

#include <stddef.h>

typedef struct fid_stats {
    int d;         /* feature dimension */
    long n;        /* samples summarised */
    double *mu;    /* [d] */
    double *cov;   /* [d][d] row-major, symmetric */
} fid_stats;

/* Mean and covariance of feat [n][d] (n >= 2, 1 <= d <= 8192) into *out,
 * which owns new buffers (free with fid_stats_free). Returns 0, DDM_EINVAL
 * or DDM_ENOMEM. */
int fid_stats_compute(const float *feat, long n, int d, fid_stats *out);

/* Statistics from a given mean [d] and covariance [d][d] (copied), e.g. an
 * analytic Gaussian. Returns 0, DDM_EINVAL or DDM_ENOMEM. */
int fid_stats_from(const double *mu, const double *cov, int d, long n, fid_stats *out);

/* Frees the buffers and zeroes s; safe on a zeroed struct. */
void fid_stats_free(fid_stats *s);

/* FID between a and b (same d) into *out (>= 0 up to round-off; tiny
 * negative values are returned as 0). Returns 0, DDM_EMISMATCH (different
 * d), DDM_ENOMEM, or DDM_EFORMAT when LAPACK fails to converge (err says
 * so). */
int fid_distance(const fid_stats *a, const fid_stats *b, double *out, char *err, size_t errlen);

/* tr sqrt(A^1/2 B A^1/2) for symmetric PSD A, B [d][d] (inputs untouched).
 * Returns 0 and *out, or DDM_ENOMEM / DDM_EFORMAT. Exposed for tests. */
int fid_trace_sqrt_product(const double *A, const double *B, int d, double *out);

#endif
