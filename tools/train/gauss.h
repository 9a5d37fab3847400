/* gauss.h -- fitting a denoiser's Gaussian baseline to its training data.
 *
 * The baseline (net.h) is the exact flow-matching velocity of the Gaussian
 * N(mu, U^T diag(lam) U + sig2 (I - U^T U)). gauss_fit() computes it from a
 * shard: mu the mean image, U the R leading eigenvectors of the covariance
 * (LAPACK dsyev in double), lam their eigenvalues and sig2 the mean of the
 * other D - R eigenvalues, every variance floored so the baseline stays
 * finite where the shard has (almost) no variance, e.g. the always-black
 * border pixels. */
#ifndef DDM_TRAIN_GAUSS_H
#define DDM_TRAIN_GAUSS_H

#include <stddef.h>

#define GAUSS_DEFAULT_FLOOR 1e-3f

/* Fits the baseline to x [n][D] (n >= 1, 0 <= R <= D):
 *   mu [D], u [R][D] (orthonormal rows, largest eigenvalue first),
 *   lam [R], sig2 [1]; variances below var_floor are raised to it.
 * Returns 0, DDM_EINVAL (bad sizes), DDM_ENOMEM, or DDM_EFORMAT when LAPACK
 * fails, with a message in err. Uses O(D^2) doubles of temporary memory. */
int gauss_fit(const float *x, int n, int D, int R, float var_floor, float *mu, float *u,
              float *lam, float *sig2, char *err, size_t errlen);

#endif
