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

/* The reference side of many FIDs against one set (the held-out images):
 * its statistics and R = S^1/2, the square root of its covariance. */
typedef struct fid_ref {
    fid_stats st;
    double *sqrt_cov;   /* [d][d] symmetric */
    double tr;          /* tr S */
} fid_ref;

/* Copies s and computes its square root. Returns 0, DDM_EINVAL, DDM_ENOMEM or
 * DDM_EFORMAT (LAPACK did not converge). Free with fid_ref_free. */
int fid_ref_init(const fid_stats *s, fid_ref *out);
void fid_ref_free(fid_ref *r);

/* One sample set prepared for repeated FIDs against r -- the estimate and its
 * bootstrap resamples. Its features F [n][d] are kept with F R, so a FID
 * costs one d x d Gram matrix and its eigenvalues (no square root):
 *     FID = |mu - mu_r|^2 + tr S + tr S_r - 2 sum_i sqrt(eig_i(R S R)),
 * R S R = Y^T Y with Y_i = sqrt(c_i / (N - 1)) (F_i R - mean_c(F R)). */
typedef struct fid_set fid_set;
/* feat [n][d] (n >= 2, d == r's). Returns 0 and *out, DDM_EINVAL or DDM_ENOMEM. */
int fid_set_new(const fid_ref *r, const float *feat, long n, fid_set **out);
void fid_set_free(fid_set *s);
/* FID of the set with each row i counted counts[i] >= 0 times (a bootstrap
 * resample; NULL = each once; the counts must sum to at least 2). Returns 0,
 * DDM_EINVAL or DDM_EFORMAT. Not thread-safe on one set. */
int fid_set_distance(fid_set *s, const int *counts, double *out);

/* tr sqrt(A^1/2 B A^1/2) for symmetric PSD A, B [d][d] (inputs untouched).
 * Returns 0 and *out, or DDM_ENOMEM / DDM_EFORMAT. Exposed for tests. */
int fid_trace_sqrt_product(const double *A, const double *B, int d, double *out);

#endif
