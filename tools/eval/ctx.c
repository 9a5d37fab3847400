/* ctx.c -- options, reference sets, quality summary and output helpers of ddm-eval (see ctx.h). */
#include "tools/eval/ctx.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/fsutil.h"
#include "common/err.h"
#include "common/png.h"
#include "common/rng.h"
#include "common/st.h"
#include "tools/train/data.h"

void eval_opts_default(eval_opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->data, sizeof o->data, "digits");
    snprintf(o->data_dir, sizeof o->data_dir, "%s", DATA_DEFAULT_DIR);
    snprintf(o->strategy, sizeof o->strategy, "top-2");
    snprintf(o->strategies, sizeof o->strategies, "top-2,full");
    o->label = -1;
    o->steps = 50;
    o->guidance = 2.0f;
    o->seeds = 3;
    o->seed = 1;
    o->n = 1000;
    o->n_cond = 500;
    o->modes = 3;
    o->probe_n = 64;
    o->every = 5;
    o->eps = 0.01f;
    o->jobs = 2;
    o->timeout_ms = 600000;
    o->plots = 1;
}

void eval_opts_finish(eval_opts *o)
{
    data_set_name(o->data, o->set, sizeof o->set);
    if (!o->models[0])
        snprintf(o->models, sizeof o->models, "models/%s", o->set);
    if (!o->classifier[0])
        snprintf(o->classifier, sizeof o->classifier, "%.1000s/classifier.safetensors",
                 o->models);
    if (!o->out[0])
        snprintf(o->out, sizeof o->out, "docs/results/%s", o->set);
}

double eval_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- reference images ------------------------------------------------------------ */

/* Reads "images" (U8 or F32 [n][D]) and optional "labels" (I32 [n]) from a safetensors file. */
static int load_image_file(const char *path, int D, float **x, int **labels, long *n, char *err,
                           size_t errlen)
{
    *x = NULL;
    *labels = NULL;
    st_file *f = st_open(path, err, errlen);
    if (!f)
        return DDM_EFORMAT;
    int rc = 0;
    const st_tensor *ti = st_get(f, "images"), *tl = st_get(f, "labels");
    if (!ti || ti->ndim != 2 || ti->shape[1] != D || ti->shape[0] < 2 ||
        (ti->dtype != ST_U8 && ti->dtype != ST_F32)) {
        snprintf(err, errlen, "%s: needs a tensor \"images\" U8 or F32 [n][%d] with n >= 2", path,
                 D);
        rc = DDM_EFORMAT;
        goto out;
    }
    *n = (long)ti->shape[0];
    size_t cnt = (size_t)*n * (size_t)D;
    *x = malloc(cnt * sizeof **x);
    if (!*x) {
        rc = DDM_ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    if (ti->dtype == ST_U8) {
        const uint8_t *b = ti->data;
        for (size_t i = 0; i < cnt; i++)
            (*x)[i] = (float)b[i] * (2.0f / 255.0f) - 1.0f;
    } else {
        rc = st_read_f32(ti, *x, cnt, err, errlen);
        if (rc)
            goto out;
    }
    if (tl && tl->dtype == ST_I32 && tl->ndim == 1 && tl->shape[0] == *n) {
        *labels = malloc((size_t)*n * sizeof **labels);
        if (!*labels) {
            rc = DDM_ENOMEM;
            snprintf(err, errlen, "%s: out of memory", path);
            goto out;
        }
        memcpy(*labels, tl->data, (size_t)*n * sizeof **labels);
    }
out:
    if (rc) {
        free(*x);
        free(*labels);
        *x = NULL;
        *labels = NULL;
    }
    st_close(f);
    return rc;
}

/* The image shape of the set under evaluation (eval_set_image_shape). */
static model_shape img_shape;

void eval_set_image_shape(const model_shape *shape)
{
    img_shape = *shape;
    img_shape.n_class_names = 0; /* the shape only: names stay with their model */
    img_shape.class_names = NULL;
}

/* One reference split: a file, or the dataset's split. A folder of PNGs is
 * read at the classifier's size and channels, on the background its
 * training recorded (metadata data_background). */
static int load_split(const eval_opts *o, const judge *j, const char *file, data_split split,
                      int D, float **x, int **labels, long *n, char *err, size_t errlen)
{
    if (file[0])
        return load_image_file(file, D, x, labels, n, err, errlen);
    dataset *ds = NULL;
    data_spec spec = { .name = o->data, .dir = o->data_dir,
                       .folder = { .size = j->m->shape.width, .channels = j->m->shape.channels,
                                   .quiet = split == DATA_TRAIN } };
    const char *bg = model_meta(j->m, "data_background");
    if (bg)
        imgdir_parse_colour(bg, spec.folder.background);
    int rc = data_load_spec(&spec, split, &ds, err, errlen);
    if (rc)
        return rc;
    if (ds->dim != D) {
        snprintf(err, errlen, "%s images have %d pixels, the classifier takes %d", o->data, ds->dim,
                 D);
        data_free(ds);
        return DDM_EMISMATCH;
    }
    *x = ds->pixels;
    *labels = ds->labels;
    *n = ds->n;
    ds->pixels = NULL;
    ds->labels = NULL;
    data_free(ds);
    return 0;
}

static int ref_load(const eval_opts *o, judge *j, eval_ref *r, char *err, size_t errlen)
{
    r->D = j->D;
    r->C = j->C;
    if (!o->heldout[0])
        r->class_names = data_class_names(o->data);
    if (j->m->shape.n_class_names == r->C) /* the classifier's own names (folders: the only ones) */
        r->class_names = (const char *const *)j->m->shape.class_names;
    int rc = load_split(o, j, o->heldout, DATA_TEST, j->D, &r->held, &r->held_labels, &r->held_n,
                        err, errlen);
    if (rc)
        return rc;
    float *feat = malloc((size_t)r->held_n * (size_t)j->H * sizeof *feat);
    if (!feat) {
        snprintf(err, errlen, "out of memory for the held-out features");
        return DDM_ENOMEM;
    }
    rc = judge_run(j, r->held, r->held_n, feat, NULL, NULL);
    rc = rc ? rc : fid_stats_compute(feat, r->held_n, j->H, &r->held_stats);
    free(feat);
    if (rc) {
        snprintf(err, errlen, "held-out features: %s", ddm_strerror(rc));
        return rc;
    }
    char terr[1024];
    int *tl = NULL;
    if (load_split(o, j, o->train, DATA_TRAIN, j->D, &r->train, &tl, &r->train_n, terr,
                   sizeof terr)) {
        fprintf(stderr, "ddm-eval: warning: no training set for the FID floor: %s\n", terr);
        r->train = NULL;
        r->train_n = 0;
    }
    free(tl);
    return 0;
}

int eval_ref_load(const eval_opts *o, judge *j, eval_ref *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    int rc = ref_load(o, j, r, err, errlen);
    if (rc)
        eval_ref_free(r);
    return rc;
}

void eval_ref_free(eval_ref *r)
{
    free(r->held);
    free(r->held_labels);
    free(r->train);
    fid_stats_free(&r->held_stats);
    memset(r, 0, sizeof *r);
}

int eval_floor(const eval_ref *r, judge *j, long n, uint64_t seed, double *fid, long *used,
               char *err, size_t errlen)
{
    if (!r->train) {
        snprintf(err, errlen, "no training set loaded");
        return DDM_ENOTFOUND;
    }
    long m = n < r->train_n ? n : r->train_n;
    if (m < 2) {
        snprintf(err, errlen, "the floor needs at least 2 images");
        return DDM_EINVAL;
    }
    long *idx = malloc((size_t)r->train_n * sizeof *idx);
    float *x = malloc((size_t)m * (size_t)r->D * sizeof *x);
    float *feat = malloc((size_t)m * (size_t)j->H * sizeof *feat);
    int rc = (!idx || !x || !feat) ? DDM_ENOMEM : 0;
    if (!rc) {
        /* partial Fisher-Yates with counter-based draws */
        for (long i = 0; i < r->train_n; i++)
            idx[i] = i;
        for (long i = 0; i < m; i++) {
            long k = i + (long)(rng_uniform(seed, 7, (uint64_t)i) * (double)(r->train_n - i));
            k = k >= r->train_n ? r->train_n - 1 : k;
            long t = idx[i];
            idx[i] = idx[k];
            idx[k] = t;
            memcpy(x + (size_t)i * r->D, r->train + (size_t)idx[i] * r->D,
                   (size_t)r->D * sizeof *x);
        }
        rc = judge_run(j, x, m, feat, NULL, NULL);
    }
    fid_stats s = { 0 };
    rc = rc ? rc : fid_stats_compute(feat, m, j->H, &s);
    if (!rc)
        rc = fid_distance(&s, &r->held_stats, fid, err, errlen);
    else
        snprintf(err, errlen, "FID floor: %s", ddm_strerror(rc));
    fid_stats_free(&s);
    free(idx);
    free(x);
    free(feat);
    *used = m;
    return rc;
}

int eval_quality_of(judge *j, const eval_ref *r, const float *x, long n, const int *asked,
                    float *conf, eval_quality *q, char *err, size_t errlen)
{
    memset(q, 0, sizeof *q);
    q->n = n;
    q->fid = NAN;
    q->label_acc = NAN;
    if (n < 2) {
        snprintf(err, errlen, "FID needs at least 2 samples (got %ld)", n);
        return DDM_EINVAL;
    }
    float *feat = malloc((size_t)n * (size_t)j->H * sizeof *feat);
    int *pred = malloc((size_t)n * sizeof *pred);
    float *cf = conf ? conf : malloc((size_t)n * sizeof *cf);
    int rc = (!feat || !pred || !cf) ? DDM_ENOMEM : 0;
    rc = rc ? rc : judge_run(j, x, n, feat, pred, cf);
    fid_stats s = { 0 };
    rc = rc ? rc : fid_stats_compute(feat, n, j->H, &s);
    if (rc) {
        snprintf(err, errlen, "classifying samples: %s", ddm_strerror(rc));
    } else {
        rc = fid_distance(&s, &r->held_stats, &q->fid, err, errlen);
        long conf_n = 0, right = 0;
        for (long i = 0; i < n; i++) {
            if (pred[i] >= 0 && pred[i] < EVAL_MAX_CLASSES)
                q->hist[pred[i]]++;
            conf_n += cf[i] > JUDGE_CONFIDENT;
            if (asked)
                right += pred[i] == asked[i];
        }
        q->confident = (double)conf_n / (double)n;
        if (asked)
            q->label_acc = (double)right / (double)n;
    }
    fid_stats_free(&s);
    free(feat);
    free(pred);
    if (!conf)
        free(cf);
    return rc;
}

judge *eval_open_judge(const eval_opts *o, char *err, size_t errlen)
{
    char e2[1024];
    judge *j = judge_open(o->classifier, e2, sizeof e2);
    if (!j)
        snprintf(err, errlen, "%s (the classifier judges samples: train it with `ddm-train "
                 "classifier` or pass --classifier PATH)", e2);
    else
        eval_set_image_shape(&j->m->shape);
    return j;
}

gen_source *eval_open_source(const eval_opts *o, char *err, size_t errlen)
{
    if (o->url[0])
        return gen_open_url(o->url, o->timeout_ms, err, errlen);
    char e2[1024];
    gen_source *g = gen_open_local(o->models, o->monolith[0] ? o->monolith : NULL, e2, sizeof e2);
    if (!g)
        snprintf(err, errlen, "%s (pass --models DIR with router.safetensors and "
                 "expert-N.safetensors, or --url of a running ddm-router)", e2);
    return g;
}

/* ---- cluster metadata ---------------------------------------------------------------- */

static void partition_file(const eval_opts *o, int K, char *buf, size_t len)
{
    if (o->partition[0])
        snprintf(buf, len, "%s", o->partition);
    else
        snprintf(buf, len, "%.500s/%.31s/k%d/partition.safetensors", o->data_dir, o->set, K);
}

float *eval_centroids(const eval_opts *o, ensemble *e, char *where, size_t wlen, char *err,
                      size_t errlen)
{
    const int K = e->K, D = e->dim;
    float *c = malloc((size_t)K * (size_t)D * sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int k = 0;
    for (; k < K; k++) {
        const st_tensor *t = st_get(e->experts[k]->file, "centroid");
        char e2[256];
        if (!t || st_numel(t) != (size_t)D ||
            st_read_f32(t, c + (size_t)k * D, (size_t)D, e2, sizeof e2))
            break;
    }
    if (k == K) {
        snprintf(where, wlen, "the experts' \"centroid\" tensors");
        return c;
    }
    char path[EVAL_PATH + 64], e2[1024];
    partition_file(o, K, path, sizeof path);
    st_file *f = st_open(path, e2, sizeof e2);
    const st_tensor *t = f ? st_get(f, "centroids") : NULL;
    if (t && st_numel(t) == (size_t)K * D &&
        st_read_f32(t, c, (size_t)K * D, e2, sizeof e2) == 0) {
        snprintf(where, wlen, "%s", path);
        st_close(f);
        return c;
    }
    snprintf(err, errlen, "no cluster centroids: expert-%d.safetensors has no \"centroid\" "
             "tensor and %s gives no \"centroids\" [%d][%d] (%s); pass --partition FILE", k,
             path, K, D, f ? "tensor missing or wrong shape" : e2);
    st_close(f);
    free(c);
    return NULL;
}

int *eval_cluster_table(const eval_opts *o, int K, int C, char *err, size_t errlen)
{
    char path[EVAL_PATH + 64], e2[1024];
    partition_file(o, K, path, sizeof path);
    st_file *f = st_open(path, e2, sizeof e2);
    if (!f) {
        snprintf(err, errlen, "%s (pass --partition FILE)", e2);
        return NULL;
    }
    const st_tensor *t = st_get(f, "table");
    int *tab = NULL;
    if (!t || t->dtype != ST_I32 || t->ndim != 2 || t->shape[0] != K || t->shape[1] != C) {
        snprintf(err, errlen, "%s: no \"table\" I32 [%d][%d] (cluster x class counts)", path, K,
                 C);
    } else if ((tab = malloc((size_t)K * C * sizeof *tab)) != NULL) {
        memcpy(tab, t->data, (size_t)K * C * sizeof *tab);
    } else {
        snprintf(err, errlen, "out of memory");
    }
    st_close(f);
    return tab;
}

/* ---- output -------------------------------------------------------------------------- */

FILE *eval_fopen(const eval_opts *o, const char *name, char *err, size_t errlen)
{
    if (fs_mkdirs(o->out, err, errlen))
        return NULL;
    char path[EVAL_PATH + 128];
    snprintf(path, sizeof path, "%s/%s", o->out, name);
    FILE *f = fopen(path, "w");
    if (!f)
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    return f;
}

int eval_fclose_reports(const eval_opts *o, FILE **md, FILE **csv, const char *what, char *err,
                        size_t errlen)
{
    int bad = ferror(*md) || ferror(*csv);
    bad |= fclose(*md) != 0;
    bad |= fclose(*csv) != 0;
    *md = *csv = NULL;
    if (!bad)
        return 0;
    snprintf(err, errlen, "writing %s/%s failed", o->out, what);
    return DDM_EIO;
}

void eval_slug(const char *name, char *buf, size_t len)
{
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++) {
        char c = name[i];
        buf[i] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                         c == '-' || c == '.' ? c : '-';
    }
    buf[i] = '\0';
}

void eval_image_side(int D, int *w, int *h)
{
    int s = (int)lrint(sqrt((double)D));
    if (s * s == D) {
        *w = *h = s;
    } else {
        *w = D;
        *h = 1;
    }
}

int eval_write_grid(const eval_opts *o, const char *name, const float *x, int n, int D, int cols,
                    char *err, size_t errlen)
{
    if (fs_mkdirs(o->out, err, errlen))
        return DDM_EIO;
    char path[EVAL_PATH + 128];
    snprintf(path, sizeof path, "%s/%s", o->out, name);
    int w, h, c = 1;
    eval_image_side(D, &w, &h);
    if (img_shape.channels && img_shape.height * img_shape.width * img_shape.channels == D) {
        w = img_shape.width;
        h = img_shape.height;
        c = img_shape.channels;
    }
    return pngio_write_grid_ch(path, x, n, w, h, c, cols, err, errlen);
}

const char *eval_class_name(const eval_ref *r, int c, char *buf, size_t len)
{
    if (r && r->class_names && c >= 0 && c < r->C)
        snprintf(buf, len, "%s", r->class_names[c]);
    else
        snprintf(buf, len, "%d", c);
    return buf;
}

void eval_weights_line(gen_source *g, const judge *j, char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
#define PUT(...)                                                                              \
    do {                                                                                      \
        if (at < len)                                                                         \
            at += (size_t)snprintf(buf + at, len - at, __VA_ARGS__);                          \
    } while (0)
    ensemble *e = g ? gen_ensemble(g) : NULL, *m = g ? gen_monolith(g) : NULL;
    if (e && e->router)
        PUT("router %.12s", st_sha256(e->router->file));
    for (int k = 0; e && k < e->K; k++)
        PUT("%sexpert-%d %.12s", k || e->router ? ", " : "", k, st_sha256(e->experts[k]->file));
    if (m)
        PUT("%smonolith %.12s", at ? ", " : "", st_sha256(m->experts[0]->file));
    if (j)
        PUT("%sclassifier %.12s", at ? ", " : "", st_sha256(j->m->file));
#undef PUT
}
