/* kmeans.c -- k-means++ / Lloyd clustering with BLAS distances, and PCA via LAPACK.
 *
 * Squared distances use ||x||^2 - 2 x.c + ||c||^2: the cross terms of a chunk
 * of rows against all centroids are one SGEMM. Cluster sums are accumulated
 * in double. An empty cluster takes the row farthest from its own centroid
 * (from a cluster that keeps at least one row), so every cluster stays
 * non-empty. Random draws come from rng_uniform(seed, stream, index) with one
 * stream per restart. */
#include "tools/train/kmeans.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/rng.h"

#define CHUNK_ROWS 1024
#define STREAM_BASE 0x6b6d00000000ull   /* "km": keeps k-means draws apart from other users */

/* LAPACK (Fortran) symmetric eigen-decomposition, exported by libopenblas.
 * The trailing lengths are the hidden lengths of the two character arguments
 * that gfortran-compiled code expects. */
extern void dsyev_(const char *jobz, const char *uplo, const int *n, double *a,
                   const int *lda, double *w, double *work, const int *lwork, int *info,
                   size_t jobz_len, size_t uplo_len);

void kmeans_opts_default(kmeans_opts *o, int k)
{
    o->k = k;
    o->restarts = 4;
    o->max_iters = 100;
    o->seed = 1;
    o->pca_dims = 0;
}

/* ---- distances ------------------------------------------------------------ */

static void row_norms(const float *x, int n, int d, float *norms)
{
    for (int i = 0; i < n; i++) {
        const float *r = x + (size_t)i * (size_t)d;
        double s = 0;
        for (int j = 0; j < d; j++)
            s += (double)r[j] * r[j];
        norms[i] = (float)s;
    }
}

/* Nearest centroid of rows x [n][d] given their norms xnorm [n] and the
 * centroids c [k][d] with norms cnorm [k]; g is scratch [CHUNK_ROWS][k].
 * Writes assign[n] and dist[n]; returns how many assign entries changed. */
static int assign_rows(const float *x, const float *xnorm, int n, int d, const float *c,
                       const float *cnorm, int k, float *g, int *assign, float *dist)
{
    int changed = 0;
    for (int i0 = 0; i0 < n; i0 += CHUNK_ROWS) {
        int m = n - i0 < CHUNK_ROWS ? n - i0 : CHUNK_ROWS;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, k, d, 1.0f,
                    x + (size_t)i0 * (size_t)d, d, c, d, 0.0f, g, k);
        for (int r = 0; r < m; r++) {
            const float *gr = g + (size_t)r * (size_t)k;
            int best = 0;
            float bd = FLT_MAX;
            for (int j = 0; j < k; j++) {
                float dj = xnorm[i0 + r] - 2.0f * gr[j] + cnorm[j];
                if (dj < bd) {
                    bd = dj;
                    best = j;
                }
            }
            if (assign[i0 + r] != best)
                changed++;
            assign[i0 + r] = best;
            dist[i0 + r] = bd > 0.0f ? bd : 0.0f;
        }
    }
    return changed;
}

int kmeans_assign(const float *rows, int n, int d, const float *centroids, int k, int *assign,
                  float *dist2)
{
    if (n < 0 || d < 1 || k < 1)
        return DDM_EINVAL;
    if (n == 0)
        return 0;
    float *xnorm = malloc(sizeof *xnorm * (size_t)n);
    float *cnorm = malloc(sizeof *cnorm * (size_t)k);
    float *g = malloc(sizeof *g * (size_t)CHUNK_ROWS * (size_t)k);
    float *dist = dist2 ? dist2 : malloc(sizeof *dist * (size_t)n);
    int rc = DDM_ENOMEM;
    if (xnorm && cnorm && g && dist) {
        row_norms(rows, n, d, xnorm);
        row_norms(centroids, k, d, cnorm);
        for (int i = 0; i < n; i++)
            assign[i] = -1;
        assign_rows(rows, xnorm, n, d, centroids, cnorm, k, g, assign, dist);
        rc = 0;
    }
    free(xnorm);
    free(cnorm);
    free(g);
    if (dist != dist2)
        free(dist);
    return rc;
}

/* ---- Lloyd ---------------------------------------------------------------- */

/* Scratch for one clustering run on features x [n][d], allocated once. */
typedef struct km_work {
    int n, d, k;
    const float *x;  /* [n][d] features, borrowed */
    float *xnorm;    /* [n] */
    float *c;        /* [k][d] current centroids */
    float *cnorm;    /* [k] */
    float *g;        /* [CHUNK_ROWS][k] cross terms */
    float *dist;     /* [n] squared distance to the assigned centroid */
    double *mind;    /* [n] k-means++: squared distance to the nearest chosen centre */
    double *sum;     /* [k][d] */
    int *count;      /* [k] */
    int *assign;     /* [n] */
} km_work;

static void work_free(km_work *w)
{
    free(w->xnorm);
    free(w->c);
    free(w->cnorm);
    free(w->g);
    free(w->dist);
    free(w->mind);
    free(w->sum);
    free(w->count);
    free(w->assign);
}

static int work_init(km_work *w, const float *x, int n, int d, int k)
{
    memset(w, 0, sizeof *w);
    w->n = n;
    w->d = d;
    w->k = k;
    w->x = x;
    w->xnorm = malloc(sizeof *w->xnorm * (size_t)n);
    w->c = malloc(sizeof *w->c * (size_t)k * (size_t)d);
    w->cnorm = malloc(sizeof *w->cnorm * (size_t)k);
    w->g = malloc(sizeof *w->g * (size_t)CHUNK_ROWS * (size_t)k);
    w->dist = malloc(sizeof *w->dist * (size_t)n);
    w->mind = malloc(sizeof *w->mind * (size_t)n);
    w->sum = malloc(sizeof *w->sum * (size_t)k * (size_t)d);
    w->count = malloc(sizeof *w->count * (size_t)k);
    w->assign = malloc(sizeof *w->assign * (size_t)n);
    if (!w->xnorm || !w->c || !w->cnorm || !w->g || !w->dist || !w->mind || !w->sum ||
        !w->count || !w->assign) {
        work_free(w);
        return DDM_ENOMEM;
    }
    row_norms(x, n, d, w->xnorm);
    return 0;
}

static double sq_dist(const float *a, const float *b, int d)
{
    double s = 0;
    for (int j = 0; j < d; j++) {
        double t = (double)a[j] - b[j];
        s += t * t;
    }
    return s;
}

/* k-means++ seeding: the first centre uniformly, each next one with
 * probability proportional to the squared distance to the nearest chosen. */
static void seed_plus_plus(km_work *w, uint64_t seed, uint64_t stream)
{
    const int n = w->n, d = w->d;
    uint64_t draw = 0;
    int pick = (int)(rng_uniform(seed, stream, draw++) * n);
    if (pick >= n)
        pick = n - 1;
    for (int j = 0; j < w->k; j++) {
        if (j > 0) {
            double total = 0;
            for (int i = 0; i < n; i++)
                total += w->mind[i];
            double u = rng_uniform(seed, stream, draw++);
            if (total > 0) {
                double target = u * total, cum = 0;
                pick = -1;
                for (int i = 0; i < n; i++) {
                    if (w->mind[i] <= 0)
                        continue;
                    cum += w->mind[i];
                    pick = i;
                    if (cum >= target)
                        break;
                }
            } else { /* every row sits on a centre already */
                pick = (int)(u * n);
                if (pick >= n)
                    pick = n - 1;
            }
        }
        float *cj = w->c + (size_t)j * (size_t)d;
        memcpy(cj, w->x + (size_t)pick * (size_t)d, sizeof *cj * (size_t)d);
        for (int i = 0; i < n; i++) {
            double dd = sq_dist(w->x + (size_t)i * (size_t)d, cj, d);
            if (j == 0 || dd < w->mind[i])
                w->mind[i] = dd;
        }
    }
}

/* Cluster sums and counts of the current assignment. */
static void accumulate(km_work *w)
{
    const int d = w->d;
    memset(w->sum, 0, sizeof *w->sum * (size_t)w->k * (size_t)d);
    memset(w->count, 0, sizeof *w->count * (size_t)w->k);
    for (int i = 0; i < w->n; i++) {
        int a = w->assign[i];
        double *s = w->sum + (size_t)a * (size_t)d;
        const float *xi = w->x + (size_t)i * (size_t)d;
        for (int j = 0; j < d; j++)
            s[j] += xi[j];
        w->count[a]++;
    }
}

/* Gives each empty cluster the row farthest from its centroid among clusters
 * that keep at least one row; returns how many rows moved. Needs k <= n. */
static int reseed_empty(km_work *w)
{
    const int d = w->d;
    int moved = 0;
    for (int j = 0; j < w->k; j++) {
        if (w->count[j] > 0)
            continue;
        int far = -1;
        for (int i = 0; i < w->n; i++)
            if (w->count[w->assign[i]] > 1 && (far < 0 || w->dist[i] > w->dist[far]))
                far = i;
        if (far < 0)
            break; /* impossible while k <= n */
        const float *xf = w->x + (size_t)far * (size_t)d;
        int old = w->assign[far];
        double *so = w->sum + (size_t)old * (size_t)d, *sj = w->sum + (size_t)j * (size_t)d;
        for (int t = 0; t < d; t++) {
            so[t] -= xf[t];
            sj[t] = xf[t];
        }
        w->count[old]--;
        w->count[j] = 1;
        w->assign[far] = j;
        w->dist[far] = 0;
        moved++;
    }
    return moved;
}

static void update_centroids(km_work *w)
{
    const int d = w->d;
    for (int j = 0; j < w->k; j++) {
        float *cj = w->c + (size_t)j * (size_t)d;
        const double *s = w->sum + (size_t)j * (size_t)d;
        double inv = w->count[j] > 0 ? 1.0 / w->count[j] : 0.0;
        for (int t = 0; t < d; t++)
            cj[t] = (float)(s[t] * inv);
    }
    row_norms(w->c, w->k, d, w->cnorm);
}

/* One k-means run from a k-means++ start. Leaves the assignment in w->assign
 * and the centroids (means of it) in w->c; returns the exact inertia. */
static double lloyd(km_work *w, const kmeans_opts *o, uint64_t stream, int *iters,
                    int *converged)
{
    seed_plus_plus(w, o->seed, stream);
    row_norms(w->c, w->k, w->d, w->cnorm);
    for (int i = 0; i < w->n; i++)
        w->assign[i] = -1;
    *converged = 0;
    int it;
    for (it = 0; it < o->max_iters; it++) {
        int changed = assign_rows(w->x, w->xnorm, w->n, w->d, w->c, w->cnorm, w->k, w->g,
                                  w->assign, w->dist);
        if (changed == 0) {
            *converged = 1;
            break;
        }
        accumulate(w);
        reseed_empty(w);
        update_centroids(w);
    }
    *iters = it;
    double inertia = 0;
    for (int i = 0; i < w->n; i++)
        inertia += sq_dist(w->x + (size_t)i * (size_t)w->d,
                           w->c + (size_t)w->assign[i] * (size_t)w->d, w->d);
    return inertia;
}

void kmeans_result_free(kmeans_result *r)
{
    if (!r)
        return;
    free(r->assign);
    free(r->centroids);
    free(r->sizes);
    free(r);
}

/* Result with centroids = means of rows [n][d] per cluster of assign. */
static kmeans_result *make_result(const float *rows, int n, int d, int k, const int *assign)
{
    kmeans_result *r = calloc(1, sizeof *r);
    double *sum = calloc((size_t)k * (size_t)d, sizeof *sum);
    if (!r || !sum)
        goto fail;
    r->n = n;
    r->d = d;
    r->k = k;
    r->assign = malloc(sizeof *r->assign * (size_t)n);
    r->centroids = malloc(sizeof *r->centroids * (size_t)k * (size_t)d);
    r->sizes = calloc((size_t)k, sizeof *r->sizes);
    if (!r->assign || !r->centroids || !r->sizes)
        goto fail;
    memcpy(r->assign, assign, sizeof *r->assign * (size_t)n);
    for (int i = 0; i < n; i++) {
        double *s = sum + (size_t)assign[i] * (size_t)d;
        const float *xi = rows + (size_t)i * (size_t)d;
        for (int t = 0; t < d; t++)
            s[t] += xi[t];
        r->sizes[assign[i]]++;
    }
    for (int j = 0; j < k; j++)
        for (int t = 0; t < d; t++)
            r->centroids[(size_t)j * (size_t)d + (size_t)t] =
                r->sizes[j] ? (float)(sum[(size_t)j * (size_t)d + (size_t)t] / r->sizes[j]) : 0.0f;
    free(sum);
    return r;
fail:
    free(sum);
    kmeans_result_free(r);
    return NULL;
}

int kmeans_fit(const float *rows, int n, int d, const kmeans_opts *o, kmeans_result **out,
               char *err, size_t errlen)
{
    *out = NULL;
    if (!rows || n < 1 || d < 1) {
        ddm_errf(err, errlen, 0, "k-means: need at least one row of at least one value (n %d, d %d)",
                n, d);
        return DDM_EINVAL;
    }
    if (o->k < 1 || o->k > n) {
        ddm_errf(err, errlen, 0, "k-means: k %d outside 1..%d (the number of rows)", o->k, n);
        return DDM_EINVAL;
    }
    if (o->restarts < 1 || o->max_iters < 1) {
        ddm_errf(err, errlen, 0, "k-means: restarts (%d) and max_iters (%d) must be >= 1",
                o->restarts, o->max_iters);
        return DDM_EINVAL;
    }
    int max_pca = d < n - 1 ? d : n - 1;
    if (o->pca_dims < 0 || o->pca_dims > max_pca) {
        ddm_errf(err, errlen, 0, "k-means: pca_dims %d outside 0..%d", o->pca_dims, max_pca);
        return DDM_EINVAL;
    }

    const float *feat = rows;
    int fd = d;
    float *proj = NULL;
    pca *p = NULL;
    if (o->pca_dims > 0) {
        int rc = pca_fit(rows, n, d, o->pca_dims, &p, err, errlen);
        if (rc)
            return rc;
        proj = malloc(sizeof *proj * (size_t)n * (size_t)o->pca_dims);
        if (!proj) {
            pca_free(p);
            ddm_errf(err, errlen, 0, "k-means: out of memory for %d PCA features", n);
            return DDM_ENOMEM;
        }
        pca_project(p, rows, n, proj);
        pca_free(p);
        feat = proj;
        fd = o->pca_dims;
    }

    km_work w;
    int *best = malloc(sizeof *best * (size_t)n);
    if (!best || work_init(&w, feat, n, fd, o->k) != 0) {
        free(best);
        free(proj);
        ddm_errf(err, errlen, 0, "k-means: out of memory (n %d, d %d, k %d)", n, fd, o->k);
        return DDM_ENOMEM;
    }
    double best_inertia = INFINITY;
    int best_iters = 0, best_conv = 0, best_restart = 0;
    for (int r = 0; r < o->restarts; r++) {
        int iters, conv;
        double inertia = lloyd(&w, o, STREAM_BASE + (uint64_t)r, &iters, &conv);
        if (inertia < best_inertia) {
            best_inertia = inertia;
            best_iters = iters;
            best_conv = conv;
            best_restart = r;
            memcpy(best, w.assign, sizeof *best * (size_t)n);
        }
    }
    work_free(&w);
    free(proj);

    kmeans_result *res = make_result(rows, n, d, o->k, best);
    free(best);
    if (!res) {
        ddm_errf(err, errlen, 0, "k-means: out of memory for the result");
        return DDM_ENOMEM;
    }
    res->inertia = best_inertia;
    res->iters = best_iters;
    res->converged = best_conv;
    res->restart = best_restart;
    *out = res;
    return 0;
}

/* ---- cluster x class table ------------------------------------------------ */

void kmeans_print_table(FILE *f, const int *assign, int n, int k, const int *labels,
                        int n_classes, const char *const *class_names)
{
    int *tab = calloc((size_t)k * (size_t)n_classes, sizeof *tab);
    int *col = calloc((size_t)n_classes, sizeof *col);
    if (!tab || !col) {
        fprintf(f, "(cluster table: out of memory)\n");
        free(tab);
        free(col);
        return;
    }
    for (int i = 0; i < n; i++)
        if (assign[i] >= 0 && assign[i] < k && labels[i] >= 0 && labels[i] < n_classes)
            tab[(size_t)assign[i] * (size_t)n_classes + (size_t)labels[i]]++;
    int named = 0;
    for (int c = 0; class_names && c < n_classes; c++) {
        char num[16];
        snprintf(num, sizeof num, "%d", c);
        if (strcmp(class_names[c], num) != 0)
            named = 1;
    }
    if (named) {
        fprintf(f, "classes:");
        for (int c = 0; c < n_classes; c++)
            fprintf(f, " %d=%s", c, class_names[c]);
        fprintf(f, "\n");
    }
    fprintf(f, "cluster  size |");
    for (int c = 0; c < n_classes; c++)
        fprintf(f, " %5d", c);
    fprintf(f, " | majority\n");
    long majority_total = 0;
    for (int j = 0; j < k; j++) {
        const int *row = tab + (size_t)j * (size_t)n_classes;
        int size = 0, top = 0;
        for (int c = 0; c < n_classes; c++) {
            size += row[c];
            col[c] += row[c];
            if (row[c] > row[top])
                top = c;
        }
        majority_total += row[top];
        fprintf(f, "%7d %5d |", j, size);
        for (int c = 0; c < n_classes; c++)
            fprintf(f, " %5d", row[c]);
        char num[16];
        snprintf(num, sizeof num, "%d", top);
        if (size > 0)
            fprintf(f, " | %s (%.1f%%)\n", class_names ? class_names[top] : num,
                    100.0 * row[top] / size);
        else
            fprintf(f, " | -\n");
    }
    int total = 0;
    for (int c = 0; c < n_classes; c++)
        total += col[c];
    fprintf(f, "  total %5d |", total);
    for (int c = 0; c < n_classes; c++)
        fprintf(f, " %5d", col[c]);
    fprintf(f, " | purity %.1f%%\n", total ? 100.0 * (double)majority_total / total : 0.0);
    free(tab);
    free(col);
}

/* ---- PCA ------------------------------------------------------------------ */

void pca_free(pca *p)
{
    if (!p)
        return;
    free(p->mean);
    free(p->components);
    free(p->variance);
    free(p->mean_proj);
    free(p);
}

int pca_fit(const float *rows, int n, int d, int n_components, pca **out, char *err,
            size_t errlen)
{
    *out = NULL;
    if (!rows || n < 2 || d < 1 || n_components < 1 || n_components > d ||
        n_components > n - 1) {
        ddm_errf(err, errlen, 0, "PCA: need n >= 2 rows and 1 <= components <= min(d, n-1) "
                "(n %d, d %d, components %d)", n, d, n_components);
        return DDM_EINVAL;
    }
    const size_t dd = (size_t)d * (size_t)d;
    pca *p = calloc(1, sizeof *p);
    double *mean = calloc((size_t)d, sizeof *mean);
    double *cov = calloc(dd, sizeof *cov);        /* [d][d], symmetric */
    float *covf = malloc(sizeof *covf * dd);      /* [d][d] one chunk's X^T X (upper) */
    float *xc = malloc(sizeof *xc * (size_t)CHUNK_ROWS * (size_t)d); /* centred chunk */
    double *evals = malloc(sizeof *evals * (size_t)d);
    double *work = NULL;
    int rc = DDM_ENOMEM;
    if (!p || !mean || !cov || !covf || !xc || !evals)
        goto fail;
    p->d = d;
    p->n_components = n_components;
    p->mean = malloc(sizeof *p->mean * (size_t)d);
    p->components = malloc(sizeof *p->components * (size_t)n_components * (size_t)d);
    p->variance = malloc(sizeof *p->variance * (size_t)n_components);
    p->mean_proj = malloc(sizeof *p->mean_proj * (size_t)n_components);
    if (!p->mean || !p->components || !p->variance || !p->mean_proj)
        goto fail;

    for (int i = 0; i < n; i++)
        for (int t = 0; t < d; t++)
            mean[t] += rows[(size_t)i * (size_t)d + (size_t)t];
    for (int t = 0; t < d; t++) {
        mean[t] /= n;
        p->mean[t] = (float)mean[t];
    }
    /* covariance: per chunk of centred rows X^T X in float (SSYRK, upper
     * triangle of row-major C), summed in double */
    for (int i0 = 0; i0 < n; i0 += CHUNK_ROWS) {
        int m = n - i0 < CHUNK_ROWS ? n - i0 : CHUNK_ROWS;
        for (int r = 0; r < m; r++)
            for (int t = 0; t < d; t++)
                xc[(size_t)r * (size_t)d + (size_t)t] =
                    (float)(rows[(size_t)(i0 + r) * (size_t)d + (size_t)t] - mean[t]);
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, d, m, 1.0f, xc, d, 0.0f, covf, d);
        for (int a = 0; a < d; a++)
            for (int b = a; b < d; b++)
                cov[(size_t)a * (size_t)d + (size_t)b] += covf[(size_t)a * (size_t)d + (size_t)b];
    }
    p->total_variance = 0;
    for (int a = 0; a < d; a++) {
        for (int b = a; b < d; b++) {
            double v = cov[(size_t)a * (size_t)d + (size_t)b] / (n - 1);
            cov[(size_t)a * (size_t)d + (size_t)b] = v;
            cov[(size_t)b * (size_t)d + (size_t)a] = v;
        }
        p->total_variance += cov[(size_t)a * (size_t)d + (size_t)a];
    }

    int info = 0, lwork = -1;
    double wq;
    dsyev_("V", "U", &d, cov, &d, evals, &wq, &lwork, &info, 1, 1);
    lwork = info == 0 && wq > 0 ? (int)wq : 3 * d;
    work = malloc(sizeof *work * (size_t)lwork);
    if (!work)
        goto fail;
    dsyev_("V", "U", &d, cov, &d, evals, work, &lwork, &info, 1, 1);
    if (info != 0) {
        ddm_errf(err, errlen, 0, "PCA: LAPACK dsyev failed (info %d)", info);
        rc = DDM_EINVAL;
        goto fail;
    }
    /* eigenvalues ascend; eigenvector e is column e of the column-major
     * result, i.e. cov[e*d .. e*d+d) */
    for (int c = 0; c < n_components; c++) {
        int e = d - 1 - c;
        const double *v = cov + (size_t)e * (size_t)d;
        int big = 0;
        for (int t = 1; t < d; t++)
            if (fabs(v[t]) > fabs(v[big]))
                big = t;
        double sign = v[big] < 0 ? -1.0 : 1.0;
        double mp = 0;
        for (int t = 0; t < d; t++) {
            p->components[(size_t)c * (size_t)d + (size_t)t] = (float)(sign * v[t]);
            mp += sign * v[t] * mean[t];
        }
        p->variance[c] = (float)(evals[e] > 0 ? evals[e] : 0);
        p->mean_proj[c] = (float)mp;
    }
    free(mean);
    free(cov);
    free(covf);
    free(xc);
    free(evals);
    free(work);
    *out = p;
    return 0;
fail:
    if (rc == DDM_ENOMEM)
        ddm_errf(err, errlen, 0, "PCA: out of memory (n %d, d %d)", n, d);
    free(mean);
    free(cov);
    free(covf);
    free(xc);
    free(evals);
    free(work);
    pca_free(p);
    return rc;
}

void pca_project(const pca *p, const float *rows, int n, float *out)
{
    if (n <= 0)
        return;
    const int nc = p->n_components;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nc, p->d, 1.0f, rows, p->d,
                p->components, p->d, 0.0f, out, nc);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < nc; c++)
            out[(size_t)i * (size_t)nc + (size_t)c] -= p->mean_proj[c];
}
