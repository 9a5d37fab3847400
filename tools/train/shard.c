/* shard.c -- partition and shard files (see shard.h). */
#include "tools/train/shard.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/st.h"

void shard_path(char *buf, size_t len, const char *dir, int k)
{
    snprintf(buf, len, "%s/shard-%d.safetensors", dir, k);
}

void partition_path(char *buf, size_t len, const char *dir)
{
    snprintf(buf, len, "%s/partition.safetensors", dir);
}

static uint8_t to_byte(float x)
{
    long b = lrintf((x + 1.0f) * 127.5f);
    return (uint8_t)(b < 0 ? 0 : (b > 255 ? 255 : b));
}

static float from_byte(uint8_t b) { return (float)b * (2.0f / 255.0f) - 1.0f; }

static int meta_int(st_writer *w, const char *key, long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%ld", v);
    return st_writer_meta(w, key, buf);
}

static int write_shard(const char *dir, const char *dataset, const model_shape *shape, int k,
                       int K, int n, int dim,
                       const float *x, const int *y, int n_classes, const int *assign,
                       const float *centroid, char *err, size_t errlen)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        m += assign[i] == k;
    uint8_t *img = malloc((size_t)(m ? m : 1) * dim);
    int32_t *lab = malloc((size_t)(m ? m : 1) * sizeof *lab);
    int32_t *idx = malloc((size_t)(m ? m : 1) * sizeof *idx);
    st_writer *w = st_writer_new();
    int rc = DDM_ENOMEM;
    char path[4096];
    shard_path(path, sizeof path, dir, k);
    if (!img || !lab || !idx || !w) {
        snprintf(err, errlen, "cannot write %s: out of memory", path);
        goto out;
    }
    for (int i = 0, j = 0; i < n; i++) {
        if (assign[i] != k)
            continue;
        for (int p = 0; p < dim; p++)
            img[(size_t)j * dim + p] = to_byte(x[(size_t)i * dim + p]);
        lab[j] = y[i];
        idx[j] = i;
        j++;
    }
    int64_t s_img[2] = { m, dim }, s_vec[1] = { m }, s_c[1] = { dim };
    rc = st_writer_add_raw(w, "images", ST_U8, 2, s_img, img, (size_t)m * dim);
    rc = rc ? rc : st_writer_add_raw(w, "labels", ST_I32, 1, s_vec, lab, (size_t)m * 4);
    rc = rc ? rc : st_writer_add_raw(w, "index", ST_I32, 1, s_vec, idx, (size_t)m * 4);
    rc = rc ? rc : st_writer_add_f32(w, "centroid", ST_F32, 1, s_c, centroid);
    rc = rc ? rc : st_writer_meta(w, "ddm.kind", "shard");
    rc = rc ? rc : st_writer_meta(w, "dataset", dataset);
    rc = rc ? rc : meta_int(w, "num_experts", K);
    rc = rc ? rc : meta_int(w, "cluster", k);
    rc = rc ? rc : meta_int(w, "n", m);
    rc = rc ? rc : meta_int(w, "dim", dim);
    rc = rc ? rc : meta_int(w, "n_classes", n_classes);
    rc = rc ? rc : st_writer_meta(w, "pixels", "x = b * (2 / 255) - 1");
    rc = rc ? rc : model_shape_write(w, shape);
    if (rc) {
        snprintf(err, errlen, "cannot write %s: %s", path, ddm_strerror(rc));
        goto out;
    }
    rc = st_writer_save(w, path, err, errlen);
out:
    st_writer_free(w);
    free(img);
    free(lab);
    free(idx);
    return rc;
}

int shard_write_all(const char *dir, const char *dataset, const model_shape *shape, int n,
                    int dim, const float *x,
                    const int *y, int n_classes, const int *assign, int K,
                    const float *centroids, char *err, size_t errlen)
{
    char path[4096];
    partition_path(path, sizeof path, dir);
    int32_t *table = calloc((size_t)K * n_classes, sizeof *table);
    st_writer *w = st_writer_new();
    int rc = DDM_ENOMEM;
    if (!table || !w) {
        snprintf(err, errlen, "cannot write %s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        if (assign[i] < 0 || assign[i] >= K || y[i] < 0 || y[i] >= n_classes) {
            snprintf(err, errlen, "partition: sample %d has cluster %d / class %d out of range", i,
                     assign[i], y[i]);
            rc = DDM_ERANGE;
            goto out;
        }
        table[assign[i] * n_classes + y[i]]++;
    }
    int64_t s_c[2] = { K, dim }, s_a[1] = { n }, s_t[2] = { K, n_classes };
    rc = st_writer_add_f32(w, "centroids", ST_F32, 2, s_c, centroids);
    rc = rc ? rc : st_writer_add_raw(w, "assign", ST_I32, 1, s_a, assign, (size_t)n * 4);
    rc = rc ? rc : st_writer_add_raw(w, "table", ST_I32, 2, s_t, table, (size_t)K * n_classes * 4);
    rc = rc ? rc : st_writer_meta(w, "ddm.kind", "partition");
    rc = rc ? rc : st_writer_meta(w, "dataset", dataset);
    rc = rc ? rc : meta_int(w, "num_experts", K);
    rc = rc ? rc : meta_int(w, "n", n);
    rc = rc ? rc : meta_int(w, "dim", dim);
    rc = rc ? rc : model_shape_write(w, shape);
    if (rc) {
        snprintf(err, errlen, "cannot write %s: %s", path, ddm_strerror(rc));
        goto out;
    }
    rc = st_writer_save(w, path, err, errlen);
    for (int k = 0; k < K && !rc; k++)
        rc = write_shard(dir, dataset, shape, k, K, n, dim, x, y, n_classes, assign,
                         centroids + (size_t)k * dim, err, errlen);
out:
    st_writer_free(w);
    free(table);
    return rc;
}

/* The tensor `name` of f, required to have dtype and the given shape
 * (-1 = any); NULL with a message otherwise. */
static const st_tensor *need(const st_file *f, const char *name, st_dtype dtype, int ndim,
                             int64_t d0, int64_t d1, char *err, size_t errlen)
{
    const st_tensor *t = st_get(f, name);
    if (!t || t->dtype != dtype || t->ndim != ndim || (d0 >= 0 && t->shape[0] != d0) ||
        (ndim > 1 && d1 >= 0 && t->shape[1] != d1)) {
        snprintf(err, errlen, "%s: tensor \"%s\" missing or of the wrong type/shape; re-run "
                 "`ddm-train partition`", st_path(f), name);
        return NULL;
    }
    return t;
}

static int meta_get_int(const st_file *f, const char *key, int lo, int hi, int *out, char *err,
                        size_t errlen)
{
    const char *v = st_meta(f, key);
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < lo || x > hi) {
        snprintf(err, errlen, "%s: metadata \"%s\" missing or outside %d..%d", st_path(f), key, lo,
                 hi);
        return DDM_EFORMAT;
    }
    *out = (int)x;
    return 0;
}

static int check_kind(const st_file *f, const char *kind, char *err, size_t errlen)
{
    const char *k = st_meta(f, "ddm.kind");
    if (!k || strcmp(k, kind) != 0) {
        snprintf(err, errlen, "%s is not a %s file (ddm.kind %s)", st_path(f), kind,
                 k ? k : "missing");
        return DDM_EFORMAT;
    }
    return 0;
}

int shard_read(const char *path, shard **out, char *err, size_t errlen)
{
    *out = NULL;
    st_file *f = st_open(path, err, errlen);
    if (!f)
        return DDM_EIO;
    shard *s = calloc(1, sizeof *s);
    int rc = s ? 0 : DDM_ENOMEM;
    const char *ds = st_meta(f, "dataset");
    rc = rc ? rc : check_kind(f, "shard", err, errlen);
    rc = rc ? rc : meta_get_int(f, "cluster", 0, 1 << 20, &s->id, err, errlen);
    rc = rc ? rc : meta_get_int(f, "num_experts", 1, 1 << 20, &s->K, err, errlen);
    rc = rc ? rc : meta_get_int(f, "n", 0, 1 << 30, &s->n, err, errlen);
    rc = rc ? rc : meta_get_int(f, "dim", 1, 1 << 20, &s->dim, err, errlen);
    rc = rc ? rc : meta_get_int(f, "n_classes", 1, 1000, &s->n_classes, err, errlen);
    if (rc)
        goto out;
    snprintf(s->sha256, sizeof s->sha256, "%s", st_sha256(f));
    snprintf(s->dataset, sizeof s->dataset, "%s", ds ? ds : "");
    if ((rc = model_shape_read(f, s->dim, s->n_classes, &s->shape, err, errlen)))
        goto out;
    const st_tensor *ti = need(f, "images", ST_U8, 2, s->n, s->dim, err, errlen);
    const st_tensor *tl = ti ? need(f, "labels", ST_I32, 1, s->n, -1, err, errlen) : NULL;
    const st_tensor *tx = tl ? need(f, "index", ST_I32, 1, s->n, -1, err, errlen) : NULL;
    const st_tensor *tc = tx ? need(f, "centroid", ST_F32, 1, s->dim, -1, err, errlen) : NULL;
    if (!tc) {
        rc = DDM_EFORMAT;
        goto out;
    }
    size_t m = (size_t)(s->n ? s->n : 1);
    s->x = malloc(m * s->dim * sizeof *s->x);
    s->y = malloc(m * sizeof *s->y);
    s->index = malloc(m * sizeof *s->index);
    s->centroid = malloc((size_t)s->dim * sizeof *s->centroid);
    if (!s->x || !s->y || !s->index || !s->centroid) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = DDM_ENOMEM;
        goto out;
    }
    const uint8_t *img = ti->data;
    for (size_t i = 0; i < (size_t)s->n * s->dim; i++)
        s->x[i] = from_byte(img[i]);
    memcpy(s->y, tl->data, (size_t)s->n * sizeof *s->y);
    memcpy(s->index, tx->data, (size_t)s->n * sizeof *s->index);
    rc = st_read_f32(tc, s->centroid, (size_t)s->dim, err, errlen);
    for (int i = 0; i < s->n && !rc; i++) {
        if (s->y[i] < 0 || s->y[i] >= s->n_classes) {
            snprintf(err, errlen, "%s: label %d of sample %d is out of range", path, s->y[i], i);
            rc = DDM_EFORMAT;
        }
    }
out:
    st_close(f);
    if (rc) {
        shard_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void shard_free(shard *s)
{
    if (!s)
        return;
    free(s->x);
    free(s->y);
    free(s->index);
    free(s->centroid);
    model_shape_free(&s->shape);
    free(s);
}

int partition_read(const char *dir, partition **out, char *err, size_t errlen)
{
    char path[4096];
    partition_path(path, sizeof path, dir);
    *out = NULL;
    st_file *f = st_open(path, err, errlen);
    if (!f)
        return DDM_EIO;
    partition *p = calloc(1, sizeof *p);
    int rc = p ? 0 : DDM_ENOMEM;
    const char *ds = st_meta(f, "dataset");
    rc = rc ? rc : check_kind(f, "partition", err, errlen);
    rc = rc ? rc : meta_get_int(f, "num_experts", 1, 1 << 20, &p->K, err, errlen);
    rc = rc ? rc : meta_get_int(f, "n", 1, 1 << 30, &p->n, err, errlen);
    rc = rc ? rc : meta_get_int(f, "dim", 1, 1 << 20, &p->dim, err, errlen);
    if (rc)
        goto out;
    snprintf(p->dataset, sizeof p->dataset, "%s", ds ? ds : "");
    const st_tensor *tc = need(f, "centroids", ST_F32, 2, p->K, p->dim, err, errlen);
    const st_tensor *ta = tc ? need(f, "assign", ST_I32, 1, p->n, -1, err, errlen) : NULL;
    const st_tensor *tt = ta ? need(f, "table", ST_I32, 2, p->K, -1, err, errlen) : NULL;
    if (!tt) {
        rc = DDM_EFORMAT;
        goto out;
    }
    p->n_classes = (int)tt->shape[1];
    p->assign = malloc((size_t)p->n * sizeof *p->assign);
    p->centroids = malloc((size_t)p->K * p->dim * sizeof *p->centroids);
    p->table = malloc((size_t)p->K * (p->n_classes ? p->n_classes : 1) * sizeof *p->table);
    if (!p->assign || !p->centroids || !p->table) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = DDM_ENOMEM;
        goto out;
    }
    memcpy(p->assign, ta->data, (size_t)p->n * sizeof *p->assign);
    memcpy(p->table, tt->data, tt->nbytes);
    rc = st_read_f32(tc, p->centroids, (size_t)p->K * p->dim, err, errlen);
    for (int i = 0; i < p->n && !rc; i++) {
        if (p->assign[i] < 0 || p->assign[i] >= p->K) {
            snprintf(err, errlen, "%s: cluster %d of sample %d is outside 0..%d", path,
                     p->assign[i], i, p->K - 1);
            rc = DDM_EFORMAT;
        }
    }
out:
    st_close(f);
    if (rc) {
        partition_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void partition_free(partition *p)
{
    if (!p)
        return;
    free(p->assign);
    free(p->centroids);
    free(p->table);
    free(p);
}
