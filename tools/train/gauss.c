/* gauss.c -- mean and leading covariance eigenpairs of a shard (see gauss.h). */
#include "tools/train/gauss.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* LAPACK (in libopenblas): symmetric eigendecomposition, eigenvalues in
 * ascending order, eigenvectors in the columns of a (column-major). The two
 * trailing arguments are the hidden Fortran lengths of jobz and uplo. */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda,
                   double *w, double *work, const int *lwork, int *info, size_t jobz_len,
                   size_t uplo_len);

int gauss_fit(const float *x, int n, int D, int R, float var_floor, float *mu, float *u,
              float *lam, float *sig2, char *err, size_t errlen)
{
    if (n < 1 || D < 1 || R < 0 || R > D) {
        snprintf(err, errlen, "gaussian fit: need n >= 1 and 0 <= rank <= dim (n %d, dim %d, rank %d)",
                 n, D, R);
        return DDM_EINVAL;
    }
    const size_t Dz = (size_t)D;
    double *mean = calloc(Dz, sizeof *mean);
    double *cov = calloc(Dz * Dz, sizeof *cov);
    double *eig = calloc(Dz, sizeof *eig);
    double *rows = malloc(Dz * 64 * sizeof *rows);
    double *work = NULL;
    int rc = 0;
    if (!mean || !cov || !eig || !rows) {
        rc = DDM_ENOMEM;
        snprintf(err, errlen, "gaussian fit: out of memory for a %dx%d covariance", D, D);
        goto out;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++)
            mean[j] += x[(size_t)i * Dz + j];
    for (int j = 0; j < D; j++)
        mean[j] /= n;
    /* cov = sum of centred outer products / n, 64 rows per syrk */
    for (int i0 = 0; i0 < n; i0 += 64) {
        int m = n - i0 < 64 ? n - i0 : 64;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < D; j++)
                rows[(size_t)i * Dz + j] = x[(size_t)(i0 + i) * Dz + j] - mean[j];
        cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, D, m, 1.0 / n, rows, D, 1.0, cov,
                    D);
    }
    int info = 0, lwork = -1;
    double wq = 0.0;
    dsyev_("V", "U", &D, cov, &D, eig, &wq, &lwork, &info, 1, 1);
    lwork = info == 0 ? (int)wq : 0;
    if (lwork < 3 * D)
        lwork = 3 * D;
    work = malloc((size_t)lwork * sizeof *work);
    if (!work) {
        rc = DDM_ENOMEM;
        snprintf(err, errlen, "gaussian fit: out of memory for LAPACK workspace");
        goto out;
    }
    dsyev_("V", "U", &D, cov, &D, eig, work, &lwork, &info, 1, 1);
    if (info != 0) {
        rc = DDM_EFORMAT;
        snprintf(err, errlen, "gaussian fit: LAPACK dsyev failed (info %d)", info);
        goto out;
    }
    /* eigenvalues ascending: the leading R are the last R columns */
    for (int r = 0; r < R; r++) {
        int col = D - 1 - r;
        double l = eig[col];
        lam[r] = l > var_floor ? (float)l : var_floor;
        for (int j = 0; j < D; j++)
            u[(size_t)r * Dz + j] = (float)cov[(size_t)col * Dz + j];
    }
    double rest = 0.0;
    for (int col = 0; col < D - R; col++)
        rest += eig[col] > 0.0 ? eig[col] : 0.0;
    rest = D > R ? rest / (D - R) : var_floor;
    sig2[0] = rest > var_floor ? (float)rest : var_floor;
    for (int j = 0; j < D; j++)
        mu[j] = (float)mean[j];
out:
    free(mean);
    free(cov);
    free(eig);
    free(rows);
    free(work);
    return rc;
}
