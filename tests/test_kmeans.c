/* test_kmeans.c -- k-means recovers separated blobs, is deterministic, keeps
 * clusters non-empty, agrees with a naive nearest-centroid reference; PCA
 * recovers a known subspace. */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/rng.h"
#include "tools/train/kmeans.h"

enum { BLOBS = 5, PER_BLOB = 120, DIM = 20, NROWS = BLOBS * PER_BLOB };

typedef struct blobs {
    float x[NROWS * DIM];       /* rows, blob b's points interleaved: row i is blob i % BLOBS */
    float centre[BLOBS * DIM];  /* true centres */
    float mean[BLOBS * DIM];    /* sample means of each blob */
    int label[NROWS];
} blobs;

/* Well-separated Gaussian blobs: centres ~ N(0, 8^2) per coordinate, noise N(0, 0.5^2). */
static void make_blobs(blobs *b, uint64_t seed)
{
    rng_normal_fill(seed, 1, 0, b->centre, BLOBS * DIM);
    for (int i = 0; i < BLOBS * DIM; i++)
        b->centre[i] *= 8.0f;
    rng_normal_fill(seed, 2, 0, b->x, NROWS * DIM);
    memset(b->mean, 0, sizeof b->mean);
    for (int i = 0; i < NROWS; i++) {
        int k = i % BLOBS;
        b->label[i] = k;
        for (int j = 0; j < DIM; j++) {
            float v = b->centre[k * DIM + j] + 0.5f * b->x[i * DIM + j];
            b->x[i * DIM + j] = v;
            b->mean[k * DIM + j] += v / PER_BLOB;
        }
    }
}

static int setup(void **state)
{
    blobs *b = malloc(sizeof *b);
    assert_non_null(b);
    make_blobs(b, 7);
    *state = b;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

/* Asserts the clusters are exactly the blobs up to a permutation; returns it
 * in perm[cluster] = blob. */
static void assert_recovers(const blobs *b, const kmeans_result *r, int *perm)
{
    for (int j = 0; j < BLOBS; j++)
        perm[j] = -1;
    for (int i = 0; i < NROWS; i++) {
        int a = r->assign[i];
        assert_true(a >= 0 && a < BLOBS);
        if (perm[a] < 0)
            perm[a] = b->label[i];
        assert_int_equal(perm[a], b->label[i]);
    }
    int used[BLOBS] = { 0 };
    for (int j = 0; j < BLOBS; j++) {
        assert_true(perm[j] >= 0);
        assert_int_equal(used[perm[j]], 0);
        used[perm[j]] = 1;
        assert_int_equal(r->sizes[j], PER_BLOB);
    }
}

static void test_blobs_recovered(void **state)
{
    blobs *b = *state;
    kmeans_opts o;
    kmeans_opts_default(&o, BLOBS);
    kmeans_result *r;
    char err[256] = "";
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), 0);
    assert_int_equal(r->n, NROWS);
    assert_int_equal(r->d, DIM);
    assert_int_equal(r->k, BLOBS);
    assert_true(r->converged);
    int perm[BLOBS];
    assert_recovers(b, r, perm);
    /* centroids are the blob means; inertia is the within-blob scatter */
    double inertia = 0;
    for (int j = 0; j < BLOBS; j++)
        for (int t = 0; t < DIM; t++)
            assert_float_equal(r->centroids[j * DIM + t], b->mean[perm[j] * DIM + t], 1e-4);
    for (int i = 0; i < NROWS; i++)
        for (int t = 0; t < DIM; t++) {
            double dlt = b->x[i * DIM + t] - b->mean[b->label[i] * DIM + t];
            inertia += dlt * dlt;
        }
    assert_float_equal(r->inertia, inertia, 1e-6 * inertia);
    /* the noise variance is 0.25 per coordinate */
    assert_float_equal(inertia / (NROWS * DIM), 0.25, 0.03);
    kmeans_result_free(r);
}

static void test_same_seed_same_result(void **state)
{
    blobs *b = *state;
    /* k = 8 on 5 blobs: the split of blobs depends on the seed, so equality
     * of two runs is a real check of determinism */
    kmeans_opts o;
    kmeans_opts_default(&o, 8);
    o.seed = 42;
    kmeans_result *r1, *r2, *r3;
    char err[256] = "";
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r1, err, sizeof err), 0);
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r2, err, sizeof err), 0);
    assert_memory_equal(r1->assign, r2->assign, sizeof(int) * NROWS);
    assert_memory_equal(r1->centroids, r2->centroids, sizeof(float) * 8 * DIM);
    assert_true(r1->inertia == r2->inertia);
    /* another seed runs other draws (different seeding order at least) */
    o.seed = 43;
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r3, err, sizeof err), 0);
    assert_true(memcmp(r1->assign, r3->assign, sizeof(int) * NROWS) != 0 ||
                memcmp(r1->centroids, r3->centroids, sizeof(float) * 8 * DIM) != 0);
    /* more restarts never give a worse inertia than one */
    kmeans_result *r4;
    o.restarts = 1;
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r4, err, sizeof err), 0);
    o.restarts = 6;
    kmeans_result *r5;
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r5, err, sizeof err), 0);
    assert_true(r5->inertia <= r4->inertia);
    kmeans_result_free(r1);
    kmeans_result_free(r2);
    kmeans_result_free(r3);
    kmeans_result_free(r4);
    kmeans_result_free(r5);
}

/* Only two distinct points but k = 4: seeding must duplicate centres, and the
 * empty clusters must be re-seeded so that every cluster keeps a row. */
static void test_no_empty_clusters(void **state)
{
    (void)state;
    float x[8 * 3];
    for (int i = 0; i < 8; i++)
        for (int t = 0; t < 3; t++)
            x[i * 3 + t] = i % 2 ? 5.0f : -1.0f;
    kmeans_opts o;
    kmeans_opts_default(&o, 4);
    kmeans_result *r;
    char err[256] = "";
    assert_int_equal(kmeans_fit(x, 8, 3, &o, &r, err, sizeof err), 0);
    int total = 0;
    for (int j = 0; j < 4; j++) {
        assert_true(r->sizes[j] >= 1);
        total += r->sizes[j];
    }
    assert_int_equal(total, 8);
    assert_float_equal(r->inertia, 0.0, 1e-9);
    kmeans_result_free(r);

    /* k = n: every row its own cluster */
    kmeans_opts_default(&o, 8);
    float y[8 * 2];
    for (int i = 0; i < 16; i++)
        y[i] = (float)(i * i % 11);
    assert_int_equal(kmeans_fit(y, 8, 2, &o, &r, err, sizeof err), 0);
    for (int j = 0; j < 8; j++)
        assert_int_equal(r->sizes[j], 1);
    kmeans_result_free(r);
}

/* The SGEMM assignment agrees with a naive double-precision reference. */
static void test_assign_matches_naive(void **state)
{
    (void)state;
    enum { N = 3000, D = 37, K = 9 };
    float *x = malloc(sizeof *x * N * D), *c = malloc(sizeof *c * K * D);
    float *dist = malloc(sizeof *dist * N);
    int *a = malloc(sizeof *a * N);
    assert_true(x && c && dist && a);
    rng_normal_fill(3, 0, 0, x, N * D);
    rng_normal_fill(3, 1, 0, c, K * D);
    assert_int_equal(kmeans_assign(x, N, D, c, K, a, dist), 0);
    for (int i = 0; i < N; i++) {
        double best = INFINITY, mine = 0;
        for (int j = 0; j < K; j++) {
            double s = 0;
            for (int t = 0; t < D; t++) {
                double dlt = (double)x[i * D + t] - c[j * D + t];
                s += dlt * dlt;
            }
            if (s < best)
                best = s;
            if (j == a[i])
                mine = s;
        }
        /* the chosen centroid is the nearest up to float rounding */
        assert_true(mine <= best + 1e-4 * (1 + best));
        assert_float_equal(dist[i], mine, 1e-4 * (1 + mine));
    }
    free(x);
    free(c);
    free(dist);
    free(a);
}

static void test_bad_options(void **state)
{
    blobs *b = *state;
    kmeans_opts o;
    kmeans_result *r = (kmeans_result *)1;
    char err[256] = "";
    kmeans_opts_default(&o, 0);
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), DDM_EINVAL);
    assert_null(r);
    assert_non_null(strstr(err, "k 0"));
    kmeans_opts_default(&o, NROWS + 1);
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), DDM_EINVAL);
    kmeans_opts_default(&o, 3);
    o.pca_dims = DIM + 1;
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "pca_dims"));
    o.pca_dims = 0;
    o.restarts = 0;
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), DDM_EINVAL);
    pca *p = (pca *)1;
    assert_int_equal(pca_fit(b->x, 1, DIM, 1, &p, err, sizeof err), DDM_EINVAL);
    assert_null(p);
}

/* Data on a known 3-D subspace of R^20 with variances 9, 4, 1 (plus tiny
 * noise): PCA finds that subspace, in order, and projection + reconstruction
 * gives the data back. */
static void test_pca_recovers_subspace(void **state)
{
    (void)state;
    enum { N = 4000, D = 20, R = 3 };
    double basis[R][D];
    float off[D];
    /* orthonormal basis by Gram-Schmidt on normal draws */
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < D; t++)
            basis[r][t] = rng_normal(11, 100 + (uint64_t)r, (uint64_t)t);
        for (int q = 0; q < r; q++) {
            double dot = 0;
            for (int t = 0; t < D; t++)
                dot += basis[r][t] * basis[q][t];
            for (int t = 0; t < D; t++)
                basis[r][t] -= dot * basis[q][t];
        }
        double nn = 0;
        for (int t = 0; t < D; t++)
            nn += basis[r][t] * basis[r][t];
        for (int t = 0; t < D; t++)
            basis[r][t] /= sqrt(nn);
    }
    for (int t = 0; t < D; t++)
        off[t] = 3.0f + (float)t;
    const double sd[R] = { 3.0, 2.0, 1.0 };
    float *x = malloc(sizeof *x * N * D), *proj = malloc(sizeof *proj * N * R);
    assert_true(x && proj);
    for (int i = 0; i < N; i++) {
        double z[R];
        for (int r = 0; r < R; r++)
            z[r] = sd[r] * rng_normal(11, 200 + (uint64_t)r, (uint64_t)i);
        for (int t = 0; t < D; t++) {
            double v = off[t] + 1e-3 * rng_normal(11, 300, (uint64_t)(i * D + t));
            for (int r = 0; r < R; r++)
                v += z[r] * basis[r][t];
            x[i * D + t] = (float)v;
        }
    }
    pca *p;
    char err[256] = "";
    assert_int_equal(pca_fit(x, N, D, R, &p, err, sizeof err), 0);
    assert_int_equal(p->n_components, R);
    for (int t = 0; t < D; t++)
        assert_float_equal(p->mean[t], off[t], 0.15);
    for (int r = 0; r < R; r++) {
        /* variance close to sd^2 (sampling error ~ 2-3% at N = 4000) */
        assert_float_equal(p->variance[r], sd[r] * sd[r], 0.1 * sd[r] * sd[r]);
        /* unit length, inside the subspace, aligned with its own basis vector */
        double len = 0, in = 0, own = 0;
        for (int t = 0; t < D; t++)
            len += (double)p->components[r * D + t] * p->components[r * D + t];
        for (int q = 0; q < R; q++) {
            double dot = 0;
            for (int t = 0; t < D; t++)
                dot += p->components[r * D + t] * basis[q][t];
            in += dot * dot;
            if (q == r)
                own = fabs(dot);
        }
        assert_float_equal(len, 1.0, 1e-5);
        assert_float_equal(in, 1.0, 1e-5);
        assert_true(own > 0.99);
    }
    assert_float_equal(p->total_variance, 9.0 + 4.0 + 1.0, 1.5);

    /* project and reconstruct */
    pca_project(p, x, N, proj);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        for (int t = 0; t < D; t++) {
            double v = p->mean[t];
            for (int r = 0; r < R; r++)
                v += (double)proj[i * R + r] * p->components[r * D + t];
            double e = fabs(v - x[i * D + t]);
            if (e > worst)
                worst = e;
        }
    }
    assert_true(worst < 1e-2);
    pca_free(p);
    free(x);
    free(proj);
}

/* Clustering on PCA features still finds the blobs, and centroids come back
 * in the input space (DIM wide), not the feature space. */
static void test_kmeans_on_pca(void **state)
{
    blobs *b = *state;
    kmeans_opts o;
    kmeans_opts_default(&o, BLOBS);
    o.pca_dims = 4;
    kmeans_result *r;
    char err[256] = "";
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), 0);
    assert_int_equal(r->d, DIM);
    int perm[BLOBS];
    assert_recovers(b, r, perm);
    for (int j = 0; j < BLOBS; j++)
        for (int t = 0; t < DIM; t++)
            assert_float_equal(r->centroids[j * DIM + t], b->mean[perm[j] * DIM + t], 1e-4);
    kmeans_result_free(r);
}

static void test_print_table(void **state)
{
    blobs *b = *state;
    kmeans_opts o;
    kmeans_opts_default(&o, BLOBS);
    kmeans_result *r;
    char err[256] = "";
    assert_int_equal(kmeans_fit(b->x, NROWS, DIM, &o, &r, err, sizeof err), 0);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    kmeans_print_table(f, r->assign, NROWS, BLOBS, b->label, 10, NULL);
    fclose(f);
    assert_non_null(strstr(text, "purity 100.0%"));
    assert_non_null(strstr(text, "  total   600 |   120   120   120   120   120     0"));
    free(text);

    /* mixed: two classes split evenly over one cluster -> purity 50% */
    int assign[4] = { 0, 0, 0, 0 }, labels[4] = { 1, 2, 1, 2 };
    const char *names[3] = { "zero", "one", "two" };
    text = NULL;
    f = open_memstream(&text, &len);
    kmeans_print_table(f, assign, 4, 1, labels, 3, names);
    fclose(f);
    assert_non_null(strstr(text, "0=zero 1=one 2=two"));
    assert_non_null(strstr(text, "one (50.0%)"));
    assert_non_null(strstr(text, "purity 50.0%"));
    free(text);
    kmeans_result_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_blobs_recovered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_seed_same_result, setup, teardown),
        cmocka_unit_test(test_no_empty_clusters),
        cmocka_unit_test(test_assign_matches_naive),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test(test_pca_recovers_subspace),
        cmocka_unit_test_setup_teardown(test_kmeans_on_pca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_print_table, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
