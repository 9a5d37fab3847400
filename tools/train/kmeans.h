/* kmeans.h -- k-means partitioning of the training set into expert shards, and PCA.
 *
 * Each DDM expert trains on one cluster of the data. kmeans_fit() clusters
 * float rows [n][d] (pixels), optionally on their leading principal
 * components, with k-means++ seeding, several restarts (lowest inertia wins)
 * and Lloyd iterations whose distances are one SGEMM per chunk of rows.
 * Everything random is drawn from common/rng.h keyed by the seed, so the same
 * input and seed give the same partition. */
#ifndef DDM_KMEANS_H
#define DDM_KMEANS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct kmeans_opts {
    int k;           /* clusters, 1..n */
    int restarts;    /* k-means++ starts tried; the lowest inertia wins (default 4) */
    int max_iters;   /* Lloyd iterations per start (default 100) */
    uint64_t seed;   /* every random draw derives from it (default 1) */
    int pca_dims;    /* 0: cluster the rows as given; > 0: cluster their projection
                        on the first pca_dims principal components (default 0) */
} kmeans_opts;

typedef struct kmeans_result {
    int n, d, k;
    int *assign;      /* [n], cluster of each row, 0..k-1 */
    float *centroids; /* [k][d], mean of the rows of each cluster, in the input
                         (pixel) space even when clustering ran on PCA features */
    int *sizes;       /* [k], rows per cluster, every one >= 1 */
    double inertia;   /* sum of squared distances to the cluster means, in the
                         space the clustering ran in (PCA features or rows) */
    int iters;        /* Lloyd iterations of the winning start */
    int converged;    /* 1 if the winning start stopped because no row moved */
    int restart;      /* index of the winning start */
} kmeans_result;

/* Fills o with the defaults above for k clusters. */
void kmeans_opts_default(kmeans_opts *o, int k);

/* Clusters rows [n][d] (row-major). Returns 0 and *out (free with
 * kmeans_result_free) or a ddm_err with a one-line message: DDM_EINVAL for bad
 * options (k outside 1..n, pca_dims outside 0..min(d, n-1), ...), DDM_ENOMEM,
 * or an error of the PCA. Deterministic for fixed input, options and BLAS
 * thread count. Clusters are numbered in the order k-means++ seeded them. */
int kmeans_fit(const float *rows, int n, int d, const kmeans_opts *o, kmeans_result **out,
               char *err, size_t errlen);

void kmeans_result_free(kmeans_result *r);

/* Nearest of the k centroids [k][d] for each row [n][d] into assign[n] (ties
 * go to the lower index); if dist2 is not NULL, the squared distances into
 * dist2[n]. Uses one SGEMM per chunk of rows. Returns 0 or DDM_ENOMEM /
 * DDM_EINVAL. */
int kmeans_assign(const float *rows, int n, int d, const float *centroids, int k, int *assign,
                  float *dist2);

/* Prints the cluster x class table of counts to f: one line per cluster with
 * its size, the count of each class and its majority class with its share,
 * a totals line and the overall purity (share of rows in their cluster's
 * majority class). class_names may be NULL (classes are shown by number). */
void kmeans_print_table(FILE *f, const int *assign, int n, int k, const int *labels,
                        int n_classes, const char *const *class_names);

/* Principal component analysis of rows [n][d] from their covariance matrix
 * (accumulated with SSYRK, eigen-decomposed with LAPACK dsyev). */
typedef struct pca {
    int d, n_components;
    float *mean;         /* [d] */
    float *components;   /* [n_components][d], orthonormal rows, by decreasing
                            variance; each row's largest-magnitude entry is > 0 */
    float *variance;     /* [n_components], eigenvalues (unbiased, divisor n-1) */
    float *mean_proj;    /* [n_components], components . mean */
    double total_variance; /* trace of the covariance */
} pca;

/* Fits a PCA with n_components (1..min(d, n-1)) to rows [n][d]. Returns 0 and
 * *out (free with pca_free) or a ddm_err with a message. */
int pca_fit(const float *rows, int n, int d, int n_components, pca **out, char *err,
            size_t errlen);

/* Projects rows [n][p->d] onto the components: out [n][n_components] =
 * (rows - mean) . components^T. No allocation. */
void pca_project(const pca *p, const float *rows, int n, float *out);

void pca_free(pca *p);

#endif
