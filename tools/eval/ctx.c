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
    snprintf(o->temps, sizeof o->temps, "0.1,0.2,0.35,0.5,0.7,1,1.4,2,3,5,100");
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
    o->boot = 50;
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

/* idx [m] = a subset of 0..total-1 drawn without replacement (partial
 * Fisher-Yates with counter-based draws of seed); scratch [total]. */
static void pick_subset(long total, long m, uint64_t seed, long *scratch, long *idx)
{
    for (long i = 0; i < total; i++)
        scratch[i] = i;
    for (long i = 0; i < m; i++) {
        long k = i + (long)(rng_uniform(seed, 7, (uint64_t)i) * (double)(total - i));
        k = k >= total ? total - 1 : k;
        long t = scratch[i];
        scratch[i] = scratch[k];
        scratch[k] = t;
        idx[i] = scratch[i];
    }
}

/* Rows idx [m] of x [][D] into out [m][D]. */
static void gather(const float *x, int D, const long *idx, long m, float *out)
{
    for (long i = 0; i < m; i++)
        memcpy(out + (size_t)i * D, x + (size_t)idx[i] * D, (size_t)D * sizeof *out);
}

/* The held-out set as judge j sees it: FID statistics of every image, KID and
 * precision/recall terms of the subset r->ref_idx. */
static int jref_init(const eval_ref *r, judge *j, eval_jref *jr, char *err, size_t errlen)
{
    jr->H = j->H;
    jr->m = r->ref_m;
    float *feat = malloc((size_t)r->held_n * (size_t)j->H * sizeof *feat);
    float *conf = malloc((size_t)r->held_n * sizeof *conf);
    jr->feat = malloc((size_t)r->ref_m * (size_t)j->H * sizeof *jr->feat);
    jr->radius = malloc((size_t)r->ref_m * sizeof *jr->radius);
    fid_stats st = { 0 };
    int rc = (!feat || !conf || !jr->feat || !jr->radius) ? DDM_ENOMEM : 0;
    rc = rc ? rc : judge_run(j, r->held, r->held_n, feat, NULL, conf);
    if (!rc) {
        long sure = 0;
        for (long i = 0; i < r->held_n; i++)
            sure += conf[i] > JUDGE_CONFIDENT;
        jr->confident = (double)sure / r->held_n;
    }
    rc = rc ? rc : fid_stats_compute(feat, r->held_n, j->H, &st);
    rc = rc ? rc : fid_ref_init(&st, &jr->fid);
    if (!rc) {
        for (long i = 0; i < r->ref_m; i++)
            memcpy(jr->feat + (size_t)i * j->H, feat + (size_t)r->ref_idx[i] * j->H,
                   (size_t)j->H * sizeof *feat);
        jr->kid_scale = kid_scale(jr->feat, jr->m, jr->H);
        jr->kid_rr = kid_ref_term(jr->feat, jr->m, jr->H, jr->kid_scale);
        rc = pr_radii(jr->feat, jr->m, jr->H, METRIC_PR_K, jr->radius);
    }
    if (rc)
        snprintf(err, errlen, "held-out features of the %s judge: %s", j->name, ddm_strerror(rc));
    fid_stats_free(&st);
    free(feat);
    free(conf);
    return rc;
}

static int ref_load(const eval_opts *o, const eval_judges *js, eval_ref *r, char *err,
                    size_t errlen)
{
    judge *j0 = js->j[0];
    r->D = j0->D;
    r->C = j0->C;
    if (!o->heldout[0])
        r->class_names = data_class_names(o->data);
    if (j0->m->shape.n_class_names == r->C) /* the classifier's own names (folders: the only ones) */
        r->class_names = (const char *const *)j0->m->shape.class_names;
    int rc = load_split(o, j0, o->heldout, DATA_TEST, j0->D, &r->held, &r->held_labels, &r->held_n,
                        err, errlen);
    if (rc)
        return rc;
    if (r->held_n <= METRIC_PR_K) {
        snprintf(err, errlen, "the held-out set has %ld images; at least %d are needed",
                 r->held_n, METRIC_PR_K + 1);
        return DDM_EINVAL;
    }
    r->ref_m = r->held_n < EVAL_REF_MAX ? r->held_n : EVAL_REF_MAX;
    long *scratch = malloc((size_t)r->held_n * sizeof *scratch);
    r->ref_idx = malloc((size_t)r->ref_m * sizeof *r->ref_idx);
    if (!scratch || !r->ref_idx) {
        free(scratch);
        snprintf(err, errlen, "out of memory for the reference subset");
        return DDM_ENOMEM;
    }
    pick_subset(r->held_n, r->ref_m, 0x5EED, scratch, r->ref_idx);
    free(scratch);
    for (int k = 0; k < js->n; k++) {
        if (js->j[k]->D != r->D || js->j[k]->C != r->C) {
            snprintf(err, errlen, "the %s judge takes %d pixels and %d classes, the classifier "
                     "%d and %d: judges must be trained on the same dataset", js->j[k]->name,
                     js->j[k]->D, js->j[k]->C, r->D, r->C);
            return DDM_EMISMATCH;
        }
        rc = jref_init(r, js->j[k], &r->j[k], err, errlen);
        if (rc)
            return rc;
        r->judges = k + 1;
    }
    char terr[1024];
    int *tl = NULL;
    if (load_split(o, j0, o->train, DATA_TRAIN, j0->D, &r->train, &tl, &r->train_n, terr,
                   sizeof terr)) {
        fprintf(stderr, "ddm-eval: warning: no training set for the FID floor: %s\n", terr);
        r->train = NULL;
        r->train_n = 0;
    }
    /* the data's class frequencies: training labels, else held-out labels */
    const int *lab = tl ? tl : r->held_labels;
    long nl = tl ? r->train_n : r->held_n, counted = 0;
    for (long i = 0; lab && i < nl; i++)
        if (lab[i] >= 0 && lab[i] < r->C && lab[i] < EVAL_MAX_CLASSES) {
            r->class_freq[lab[i]] += 1;
            counted++;
        }
    for (int c = 0; c < r->C && c < EVAL_MAX_CLASSES; c++)
        r->class_freq[c] = counted ? r->class_freq[c] / counted : 1.0 / r->C;
    free(tl);
    return 0;
}

int eval_ref_load(const eval_opts *o, const eval_judges *js, eval_ref *r, char *err,
                  size_t errlen)
{
    memset(r, 0, sizeof *r);
    int rc = ref_load(o, js, r, err, errlen);
    if (rc)
        eval_ref_free(r);
    return rc;
}

void eval_ref_free(eval_ref *r)
{
    free(r->held);
    free(r->held_labels);
    free(r->train);
    free(r->ref_idx);
    for (int k = 0; k < EVAL_MAX_JUDGES; k++) {
        fid_ref_free(&r->j[k].fid);
        free(r->j[k].feat);
        free(r->j[k].radius);
    }
    memset(r, 0, sizeof *r);
}

int eval_floor(const eval_ref *r, const eval_judges *js, long n, uint64_t seed, eval_quality *q,
               char *err, size_t errlen)
{
    memset(q, 0, sizeof *q);
    if (!r->train) {
        snprintf(err, errlen, "no training set loaded");
        return DDM_ENOTFOUND;
    }
    long m = n < r->train_n ? n : r->train_n;
    if (m < 2) {
        snprintf(err, errlen, "the floor needs at least 2 images");
        return DDM_EINVAL;
    }
    long *scratch = malloc((size_t)r->train_n * sizeof *scratch);
    long *idx = malloc((size_t)m * sizeof *idx);
    float *x = malloc((size_t)m * (size_t)r->D * sizeof *x);
    int rc = (!scratch || !idx || !x) ? DDM_ENOMEM : 0;
    if (rc) {
        snprintf(err, errlen, "FID floor: out of memory");
    } else {
        pick_subset(r->train_n, m, seed, scratch, idx);
        gather(r->train, r->D, idx, m, x);
        rc = eval_quality_of(js, r, x, m, NULL, 0, 0, NULL, q, err, errlen);
    }
    free(scratch);
    free(idx);
    free(x);
    return rc;
}

void eval_quality_free(eval_quality *q)
{
    free(q->boot_val);
    free(q->boot_hist);
    q->boot_val = NULL;
    q->boot_hist = NULL;
}

/* Every measure of judge k (index jk in q) on x, with q->boot replicates. */
static int judge_quality(judge *j, int jk, const eval_jref *jr, const float *x, long n,
                         const int *asked, uint64_t boot_seed, float *conf, eval_quality *q)
{
    eval_jq *v = &q->j[jk];
    const int H = j->H, B = q->boot, C = q->C;
    const long mg = n < jr->m ? n : jr->m; /* precision/recall: sets of equal size */
    float *feat = malloc((size_t)n * H * sizeof *feat), *gsub = malloc((size_t)mg * H * sizeof *gsub);
    int *pred = malloc((size_t)n * sizeof *pred), *cnt = malloc((size_t)n * sizeof *cnt);
    int *cg = malloc((size_t)mg * sizeof *cg), *cr = malloc((size_t)jr->m * sizeof *cr);
    long *scratch = malloc((size_t)n * sizeof *scratch), *gidx = malloc((size_t)mg * sizeof *gidx);
    float *cf = malloc((size_t)n * sizeof *cf);
    double *rad = malloc((size_t)mg * sizeof *rad);
    unsigned char *pin = malloc((size_t)mg), *rin = malloc((size_t)jr->m);
    fid_set *fs = NULL;
    kid_set ks = { 0 };
    int rc = (!feat || !gsub || !pred || !cnt || !cg || !cr || !scratch || !gidx || !cf || !rad ||
              !pin || !rin) ? DDM_ENOMEM : 0;
    rc = rc ? rc : judge_run(j, x, n, feat, pred, cf);
    rc = rc ? rc : fid_set_new(&jr->fid, feat, n, &fs);
    rc = rc ? rc : fid_set_distance(fs, NULL, &v->fid);
    rc = rc ? rc : kid_set_init(feat, n, jr->feat, jr->m, H, jr->kid_scale, jr->kid_rr, &ks);
    if (!rc) {
        v->kid = kid_set_value(&ks, NULL);
        pick_subset(n, mg, 0x9E7, scratch, gidx);
        for (long i = 0; i < mg; i++)
            memcpy(gsub + (size_t)i * H, feat + (size_t)gidx[i] * H, (size_t)H * sizeof *gsub);
        rc = mg > METRIC_PR_K ? pr_radii(gsub, mg, H, METRIC_PR_K, rad) : DDM_EINVAL;
    }
    rc = rc ? rc : pr_inside(gsub, mg, jr->feat, jr->radius, jr->m, H, pin);
    rc = rc ? rc : pr_inside(jr->feat, jr->m, gsub, rad, mg, H, rin);
    if (!rc) {
        v->precision = pr_share(pin, mg, NULL);
        v->recall = pr_share(rin, jr->m, NULL);
        long conf_n = 0, right = 0;
        for (long i = 0; i < n; i++) {
            if (pred[i] >= 0 && pred[i] < EVAL_MAX_CLASSES)
                v->hist[pred[i]]++;
            conf_n += cf[i] > JUDGE_CONFIDENT;
            if (asked)
                right += pred[i] == asked[i];
        }
        v->confident = (double)conf_n / (double)n;
        v->label_acc = asked ? (double)right / (double)n : NAN;
        if (conf)
            memcpy(conf, cf, (size_t)n * sizeof *conf);
    }
    for (int b = 0; b < B && !rc; b++) {
        double *bv = q->boot_val + ((size_t)jk * B + b) * EVAL_STATS;
        double *bh = q->boot_hist + ((size_t)jk * B + b) * C;
        metric_boot_counts(boot_seed, b, n, cnt);
        metric_boot_counts(boot_seed ^ 0xA5A5, b, mg, cg);
        metric_boot_counts(boot_seed ^ 0x5A5A, b, jr->m, cr);
        rc = fid_set_distance(fs, cnt, &bv[0]);
        bv[1] = kid_set_value(&ks, cnt);
        bv[2] = pr_share(pin, mg, cg);
        bv[3] = pr_share(rin, jr->m, cr);
        for (long i = 0; i < n; i++)
            if (pred[i] >= 0 && pred[i] < C)
                bh[pred[i]] += cnt[i];
    }
    fid_set_free(fs);
    kid_set_free(&ks);
    free(feat);
    free(gsub);
    free(pred);
    free(cnt);
    free(cg);
    free(cr);
    free(scratch);
    free(gidx);
    free(cf);
    free(rad);
    free(pin);
    free(rin);
    return rc;
}

int eval_quality_of(const eval_judges *js, const eval_ref *r, const float *x, long n,
                    const int *asked, int boot, uint64_t boot_seed, float *conf,
                    eval_quality *q, char *err, size_t errlen)
{
    memset(q, 0, sizeof *q);
    q->n = n;
    q->C = r->C;
    q->judges = r->judges < js->n ? r->judges : js->n;
    q->boot = boot > 0 ? boot : 0;
    for (int k = 0; k < EVAL_MAX_JUDGES; k++)
        q->j[k].fid = q->j[k].kid = q->j[k].precision = q->j[k].recall = q->j[k].label_acc = NAN;
    if (n < 2) {
        snprintf(err, errlen, "FID needs at least 2 samples (got %ld)", n);
        return DDM_EINVAL;
    }
    if (q->boot) {
        q->boot_val = calloc((size_t)q->judges * q->boot * EVAL_STATS, sizeof *q->boot_val);
        q->boot_hist = calloc((size_t)q->judges * q->boot * q->C, sizeof *q->boot_hist);
        if (!q->boot_val || !q->boot_hist) {
            snprintf(err, errlen, "out of memory for %d bootstrap replicates", q->boot);
            return DDM_ENOMEM;
        }
    }
    for (int k = 0; k < q->judges; k++) {
        int rc = judge_quality(js->j[k], k, &r->j[k], x, n, asked, boot_seed, k ? NULL : conf, q);
        if (rc) {
            snprintf(err, errlen, "judging samples (%s judge): %s", js->j[k]->name,
                     ddm_strerror(rc));
            return rc;
        }
    }
    return 0;
}

int eval_open_judges(const eval_opts *o, eval_judges *js, char *err, size_t errlen)
{
    memset(js, 0, sizeof *js);
    if (!(js->j[0] = eval_open_judge(o, err, errlen)))
        return DDM_EINVAL;
    js->n = 1;
    if (!strcmp(o->conv_judge, "none"))
        return 0;
    char path[EVAL_PATH + 64], e2[1024];
    if (o->conv_judge[0]) {
        snprintf(path, sizeof path, "%s", o->conv_judge);
    } else { /* beside the classifier */
        const char *slash = strrchr(o->classifier, '/');
        int dl = slash ? (int)(slash - o->classifier) : 1;
        snprintf(path, sizeof path, "%.*s/judge-conv.safetensors", dl,
                 slash ? o->classifier : ".");
    }
    struct stat sb;
    if (!o->conv_judge[0] && stat(path, &sb) != 0) {
        static int noted;
        if (!noted++)
            fprintf(stderr, "ddm-eval: note: no conv judge at %s: one judge only (train it with "
                    "`ddm-train judge`)\n", path);
        return 0;
    }
    if (!(js->j[1] = judge_open(path, e2, sizeof e2))) {
        snprintf(err, errlen, "%s (the second judge: pass --conv-judge PATH, or none)", e2);
        eval_close_judges(js);
        return DDM_EINVAL;
    }
    js->n = 2;
    return 0;
}

void eval_close_judges(eval_judges *js)
{
    for (int k = 0; k < EVAL_MAX_JUDGES; k++)
        judge_close(js->j[k]);
    memset(js, 0, sizeof *js);
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

int eval_fopen_reports(const eval_opts *o, const char *md_name, const char *csv_name, FILE **md,
                       FILE **csv, char *err, size_t errlen)
{
    *csv = NULL;
    if (!(*md = eval_fopen(o, md_name, err, errlen)))
        return DDM_EIO;
    if (!(*csv = eval_fopen(o, csv_name, err, errlen))) {
        fclose(*md);
        *md = NULL;
        return DDM_EIO;
    }
    return 0;
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

void eval_weights_line(gen_source *g, const eval_judges *js, char *buf, size_t len)
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
    for (int k = 0; js && k < js->n; k++)
        PUT("%s%s %.12s", at ? ", " : "", k ? "conv judge" : "classifier",
            st_sha256(judge_file(js->j[k])));
#undef PUT
}
