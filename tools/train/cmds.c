/* cmds.c -- ddm-train partition, expert, router, monolith and classifier. */
#include "tools/train/cmds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "tools/train/data.h"
#include "tools/train/kmeans.h"
#include "tools/train/shard.h"
#include "tools/train/tasks.h"

static const float ROUTER_TS[] = { 0.1f, 0.3f, 0.5f, 0.7f, 0.9f };
#define N_ROUTER_TS 5

static int meta_num(st_writer *w, const char *key, double v)
{
    char buf[48];
    snprintf(buf, sizeof buf, "%.6g", v);
    return st_writer_meta(w, key, buf);
}

int train_meta(st_writer *w, const train_cfg *c, const char *arch, uint64_t seed,
               const train_opts *o, const train_result *res, const char *const *kv, int nkv)
{
    char conf[512], num[32];
    int at = snprintf(conf, sizeof conf, "steps=%ld batch=%d lr=%g lr_final=%g warmup=%ld ema=%g "
                      "clip=%g p_null=%g t=%s", o->steps, o->batch, o->lr, o->lr_final, o->warmup,
                      o->ema, o->clip, o->p_null,
                      o->tdist == T_LOGIT_NORMAL ? "logit-normal" : "uniform");
    if (o->tdist == T_LOGIT_NORMAL && o->t_mean != 0.0f && at > 0 && (size_t)at < sizeof conf)
        snprintf(conf + at, sizeof conf - (size_t)at, " t_mean=%g", o->t_mean);
    int rc = st_writer_meta(w, "architecture", arch);
    rc = rc ? rc : st_writer_meta(w, "config", conf);
    snprintf(num, sizeof num, "%llu", (unsigned long long)seed);
    rc = rc ? rc : st_writer_meta(w, "seed", num);
    snprintf(num, sizeof num, "%ld", o->steps);
    rc = rc ? rc : st_writer_meta(w, "steps", num);
    rc = rc ? rc : meta_num(w, "loss", res->final_loss);
    rc = rc ? rc : st_writer_meta(w, "command", c->command);
    if (!rc && data_is_folder(c->dataset)) /* how ddm-eval reads the folder again */
        rc = st_writer_meta(w, "data_background", c->background);
    for (int i = 0; i < nkv && !rc; i++)
        rc = st_writer_meta(w, kv[2 * i], kv[2 * i + 1]);
    return rc;
}

int train_save(const train_cfg *c, const char *path, model_kind kind, const net_config *nc,
               const model_shape *shape, const float *params, int expert_id, uint64_t seed, const train_opts *o,
               const train_result *res, const float *centroid, const char *const *kv, int nkv,
               char *err, size_t errlen)
{
    st_writer *w = st_writer_new();
    if (!w) {
        snprintf(err, errlen, "cannot write %s: out of memory", path);
        return DDM_ENOMEM;
    }
    char arch[160];
    snprintf(arch, sizeof arch, "mlp in=%d hidden=%d blocks=%d out=%d classes=%d time_dim=%d "
             "gauss_rank=%d", nc->in_dim, nc->hidden, nc->n_blocks, nc->out_dim, nc->n_classes,
             nc->time_dim, nc->gauss_rank);
    int rc = model_write(w, kind, nc, params, c->dtype, cfg_set_name(c), expert_id, c->K);
    rc = rc ? rc : model_shape_write(w, shape);
    rc = rc ? rc : train_meta(w, c, arch, seed, o, res, kv, nkv);
    if (!rc && centroid) {
        int64_t shape[1] = { nc->in_dim };
        rc = st_writer_add_f32(w, "centroid", ST_F32, 1, shape, centroid);
    }
    if (rc)
        snprintf(err, errlen, "cannot write %s: %s", path, ddm_strerror(rc));
    else
        rc = st_writer_save(w, path, err, errlen);
    st_writer_free(w);
    return rc;
}

/* Loads a split of c's dataset; prints the error. */
static dataset *load_split(const train_cfg *c, data_split split)
{
    dataset *ds = NULL;
    char err[4096];
    data_spec spec = cfg_data_spec(c);
    spec.folder.quiet = split == DATA_TEST; /* the train split's load warns once */
    if (data_load_spec(&spec, split, &ds, err, sizeof err)) {
        fprintf(stderr, "ddm-train: %s\n", err);
        return NULL;
    }
    return ds;
}

static int fail(const char *err)
{
    fprintf(stderr, "ddm-train: %s\n", err);
    return 1;
}

int cmd_partition(const train_cfg *c)
{
    char err[4096];
    dataset *ds = load_split(c, DATA_TRAIN);
    if (!ds)
        return 1;
    kmeans_opts ko;
    kmeans_opts_default(&ko, c->K);
    ko.restarts = c->restarts;
    ko.seed = cfg_seed(c, "partition", 0);
    ko.pca_dims = c->pca;
    kmeans_result *km = NULL;
    double t0 = fit_now();
    int rc = kmeans_fit(ds->pixels, ds->n, ds->dim, &ko, &km, err, sizeof err);
    if (!rc) {
        printf("partition %s: %d images of %dx%dx%d, %d classes\n", cfg_set_name(c), ds->n, ds->height,
               ds->width, ds->channels, ds->n_classes);
        printf("partition %s: k-means K=%d on %s (%d restarts, seed %llu): inertia %.1f, "
               "%d iterations%s, %.1f s\n", cfg_set_name(c), c->K, c->pca ? "PCA features" : "pixels",
               c->restarts, (unsigned long long)ko.seed, km->inertia, km->iters,
               km->converged ? " (converged)" : "", fit_now() - t0);
        kmeans_print_table(stdout, km->assign, ds->n, c->K, ds->labels, ds->n_classes,
                           ds->class_names);
        fflush(stdout);
        rc = fs_mkdirs(c->shards, err, sizeof err);
    }
    if (!rc)
        rc = shard_write_all(c->shards, cfg_set_name(c), &ds->shape, ds->n, ds->dim, ds->pixels,
                             ds->labels, ds->n_classes, km->assign, c->K, km->centroids, err,
                             sizeof err);
    if (!rc)
        printf("partition: wrote %s/partition.safetensors and shard-0..%d.safetensors\n",
               c->shards, c->K - 1);
    if (!rc && ds->folder) {
        char mpath[CFG_PATH + 32];
        data_spec spec = cfg_data_spec(c);
        snprintf(mpath, sizeof mpath, "%s/manifest.tsv", c->shards);
        rc = imgdir_write_manifest(ds->folder, c->dataset, &spec.folder, mpath, err, sizeof err);
        if (!rc)
            printf("partition: wrote %s (%d images with their sha256, class and split)\n", mpath,
                   ds->folder->n);
    }
    kmeans_result_free(km);
    data_free(ds);
    return rc ? fail(err) : 0;
}

/* Classes with fewer than min_count images in the shard: the expert has
 * (almost) nothing to say about them, so their embedding rows become the
 * null row -- asking this expert for such a class gives its unconditional
 * prediction, not an untrained direction that guidance would amplify.
 * Writes the classes kept, e.g. "0,2,6", into kept. Returns how many were nulled. */
static int null_unseen_classes(const net_config *nc, float *params, const shard *s, int min_count,
                               char *kept, size_t len)
{
    net_weights w;
    net_bind(nc, params, &w);
    int C = nc->n_classes, H = nc->hidden, nulled = 0;
    size_t at = 0;
    kept[0] = '\0';
    for (int k = 0; k < C; k++) {
        int cnt = 0;
        for (int i = 0; i < s->n; i++)
            cnt += s->y[i] == k;
        if (cnt < min_count) {
            memcpy(w.emb + (size_t)k * H, w.emb + (size_t)C * H, (size_t)H * sizeof(float));
            nulled++;
        } else if (at < len) {
            at += (size_t)snprintf(kept + at, len - at, "%s%d", at ? "," : "", k);
        }
    }
    return nulled;
}

int cmd_expert(const train_cfg *c)
{
    char err[4096], path[CFG_PATH + 64], tag[32];
    if (c->shard_file[0])
        snprintf(path, sizeof path, "%s", c->shard_file);
    else
        shard_path(path, sizeof path, c->shards, c->shard);
    /* the shard file is the only data this step reads */
    shard *s = NULL;
    if (shard_read(path, &s, err, sizeof err))
        return fail(err);
    int rc = 0;
    if ((c->shard >= 0 && s->id != c->shard) || s->K != c->K ||
        strcmp(s->dataset, cfg_set_name(c)) != 0) {
        snprintf(err, sizeof err, "%s holds cluster %d of %d of %s, but expert %d of %d of %s "
                 "was asked for", path, s->id, s->K, s->dataset, c->shard, c->K, cfg_set_name(c));
        shard_free(s);
        return fail(err);
    }
    if (s->n < 1) {
        snprintf(err, sizeof err, "%s is empty; re-run partition", path);
        shard_free(s);
        return fail(err);
    }
    net_config nc = cfg_denoiser(c, s->dim, s->n_classes);
    size_t np = net_param_count(&nc);
    float *params = malloc(np * sizeof *params), *avg = malloc(np * sizeof *avg);
    uint64_t seed = cfg_seed(c, "expert", s->id);
    snprintf(tag, sizeof tag, "expert %d", s->id);
    train_opts o = cfg_opts(c, &c->den, seed, tag);
    train_result res = { 0 };
    train_data d = { s->n, s->dim, s->x, s->y, NULL };
    if (!params || !avg) {
        snprintf(err, sizeof err, "expert %d: out of memory", s->id);
        rc = DDM_ENOMEM;
    }
    rc = rc ? rc : denoiser_init(&nc, params, &d, seed, c->var_floor, err, sizeof err);
    if (!rc)
        fprintf(stderr, "%s: %d images of %s, %zu parameters, %ld steps of %d\n", tag, s->n,
                path, net_trainable_count(&nc), o.steps, o.batch);
    rc = rc ? rc : denoiser_train(&nc, params, avg, &d, &o, &res, err, sizeof err);
    char kept[128] = "";
    if (!rc && nc.n_classes > 0 && c->min_class > 0) {
        int nulled = null_unseen_classes(&nc, avg, s, c->min_class, kept, sizeof kept);
        if (nulled)
            fprintf(stderr, "%s: %d classes with < %d images answer as null; kept %s\n", tag,
                    nulled, c->min_class, kept);
    }
    if (!rc) {
        char opath[CFG_PATH + 64], nbuf[16], cbuf[16];
        snprintf(opath, sizeof opath, "%s/expert-%d.safetensors", c->out, s->id);
        snprintf(nbuf, sizeof nbuf, "%d", s->n);
        snprintf(cbuf, sizeof cbuf, "%d", s->id);
        const char *kv[] = { "cluster", cbuf, "shard_n", nbuf, "shard_sha256", s->sha256,
                             "role", "expert", "classes", kept };
        rc = fs_mkdirs(c->out, err, sizeof err);
        rc = rc ? rc : train_save(c, opath, MODEL_DENOISER, &nc, &s->shape, avg, s->id, seed, &o, &res,
                                  s->centroid, kv, 5, err, sizeof err);
        if (!rc)
            printf("expert %d: %d images, loss %.4f -> %.4f, %.1f s (%.0f samples/s), wrote %s\n",
                   s->id, s->n, res.first_loss, res.final_loss, res.seconds, res.samples_per_s,
                   opath);
    }
    free(params);
    free(avg);
    shard_free(s);
    return rc ? fail(err) : 0;
}

int cmd_router(const train_cfg *c)
{
    char err[4096];
    dataset *tr = load_split(c, DATA_TRAIN), *te = tr ? load_split(c, DATA_TEST) : NULL;
    partition *p = NULL;
    float *params = NULL, *avg = NULL;
    int *te_z = NULL, rc = 0;
    if (!tr || !te) {
        data_free(tr);
        return 1;
    }
    if (partition_read(c->shards, &p, err, sizeof err)) {
        rc = 1;
        goto out;
    }
    if (p->n != tr->n || p->dim != tr->dim || p->K != c->K) {
        snprintf(err, sizeof err, "partition in %s is for %d images / K %d, the training set "
                 "has %d (K %d asked); re-run partition", c->shards, p->n, p->K, tr->n, c->K);
        rc = 1;
        goto out;
    }
    /* held-out targets: each test image's nearest cluster centroid */
    te_z = malloc((size_t)te->n * sizeof *te_z);
    if (!te_z || kmeans_assign(te->pixels, te->n, te->dim, p->centroids, p->K, te_z, NULL)) {
        snprintf(err, sizeof err, "router: cannot assign the test set to clusters");
        rc = 1;
        goto out;
    }
    net_config nc = cfg_router(c, tr->dim, tr->n_classes);
    size_t np = net_param_count(&nc);
    params = malloc(np * sizeof *params);
    avg = malloc(np * sizeof *avg);
    if (!params || !avg) {
        snprintf(err, sizeof err, "router: out of memory");
        rc = 1;
        goto out;
    }
    uint64_t seed = cfg_seed(c, "router", 0);
    net_init(&nc, params, seed);
    train_opts o = cfg_opts(c, &c->rt, seed, "router");
    train_result res = { 0 };
    train_data d = { tr->n, tr->dim, tr->pixels, tr->labels, p->assign };
    fprintf(stderr, "router: %d images, K %d, %zu parameters, %ld steps of %d\n", tr->n, c->K,
            net_trainable_count(&nc), o.steps, o.batch);
    if (router_train(&nc, params, avg, &d, &o, &res, err, sizeof err)) {
        rc = 1;
        goto out;
    }
    train_data h = { te->n, te->dim, te->pixels, te->labels, te_z };
    char acc[256];
    size_t at = 0;
    printf("router: held-out accuracy (%d test images, nearest-centroid clusters)\n", te->n);
    printf("  t     %s\n", "unconditional  with label");
    for (int i = 0; i < N_ROUTER_TS; i++) {
        double a0 = router_eval(&nc, avg, &h, ROUTER_TS[i], 0, seed + 7);
        double a1 = router_eval(&nc, avg, &h, ROUTER_TS[i], 1, seed + 7);
        printf("  %.1f   %6.2f%%        %6.2f%%\n", ROUTER_TS[i], 100 * a0, 100 * a1);
        at += (size_t)snprintf(acc + at, sizeof acc - at, "%st%.1f=%.4f/%.4f", i ? " " : "",
                               ROUTER_TS[i], a0, a1);
    }
    fflush(stdout);
    char opath[CFG_PATH + 64];
    snprintf(opath, sizeof opath, "%s/router.safetensors", c->out);
    const char *kv[] = { "heldout_accuracy_uncond_label", acc, "role", "router" };
    if (fs_mkdirs(c->out, err, sizeof err) ||
        train_save(c, opath, MODEL_ROUTER, &nc, &tr->shape, avg, -1, seed, &o, &res, NULL, kv, 2, err,
                   sizeof err)) {
        rc = 1;
        goto out;
    }
    printf("router: loss %.4f -> %.4f, %.1f s, wrote %s\n", res.first_loss, res.final_loss,
           res.seconds, opath);
out:
    if (rc)
        fail(err);
    free(params);
    free(avg);
    free(te_z);
    partition_free(p);
    data_free(tr);
    data_free(te);
    return rc;
}

int cmd_monolith(const train_cfg *c)
{
    char err[4096];
    dataset *tr = load_split(c, DATA_TRAIN);
    if (!tr)
        return 1;
    net_config nc = cfg_denoiser(c, tr->dim, tr->n_classes);
    size_t np = net_param_count(&nc);
    float *params = malloc(np * sizeof *params), *avg = malloc(np * sizeof *avg);
    uint64_t seed = cfg_seed(c, "monolith", 0);
    net_train nt = c->den;
    nt.steps = c->mono_steps;
    nt.batch = c->mono_batch;
    train_opts o = cfg_opts(c, &nt, seed, "monolith");
    train_result res = { 0 };
    train_data d = { tr->n, tr->dim, tr->pixels, tr->labels, NULL };
    int rc = 0;
    if (!params || !avg) {
        snprintf(err, sizeof err, "monolith: out of memory");
        rc = DDM_ENOMEM;
    }
    rc = rc ? rc : denoiser_init(&nc, params, &d, seed, c->var_floor, err, sizeof err);
    if (!rc)
        fprintf(stderr, "monolith: %d images, %zu parameters, %ld steps of %d\n", tr->n,
                net_trainable_count(&nc), o.steps, o.batch);
    rc = rc ? rc : denoiser_train(&nc, params, avg, &d, &o, &res, err, sizeof err);
    if (!rc) {
        char opath[CFG_PATH + 64];
        snprintf(opath, sizeof opath, "%s/monolith.safetensors", c->out);
        const char *kv[] = { "role", "monolith" };
        rc = fs_mkdirs(c->out, err, sizeof err);
        rc = rc ? rc : train_save(c, opath, MODEL_DENOISER, &nc, &tr->shape, avg, -1, seed, &o,
                                  &res, NULL,
                                  kv, 1, err, sizeof err);
        if (!rc)
            printf("monolith: %d images, loss %.4f -> %.4f, %.1f s (%.0f samples/s), wrote %s\n",
                   tr->n, res.first_loss, res.final_loss, res.seconds, res.samples_per_s, opath);
    }
    free(params);
    free(avg);
    data_free(tr);
    return rc ? fail(err) : 0;
}

int cmd_classifier(const train_cfg *c)
{
    char err[4096];
    dataset *tr = load_split(c, DATA_TRAIN), *te = tr ? load_split(c, DATA_TEST) : NULL;
    if (!tr || !te) {
        data_free(tr);
        return 1;
    }
    net_config nc = cfg_classifier(c, tr->dim, tr->n_classes);
    size_t np = net_param_count(&nc);
    float *params = malloc(np * sizeof *params), *avg = malloc(np * sizeof *avg);
    uint64_t seed = cfg_seed(c, "classifier", 0);
    train_opts o = cfg_opts(c, &c->cls, seed, "classifier");
    train_result res = { 0 };
    train_data d = { tr->n, tr->dim, tr->pixels, tr->labels, NULL };
    int rc = 0;
    if (!params || !avg) {
        snprintf(err, sizeof err, "classifier: out of memory");
        rc = DDM_ENOMEM;
    }
    if (!rc) {
        net_init(&nc, params, seed);
        fprintf(stderr, "classifier: %d images, %zu parameters, %ld steps of %d\n", tr->n,
                net_trainable_count(&nc), o.steps, o.batch);
        rc = classifier_train(&nc, params, avg, &d, tr->width, tr->channels, c->cls_shift, &o,
                              &res, err, sizeof err);
    }
    if (!rc) {
        train_data h = { te->n, te->dim, te->pixels, te->labels, NULL };
        double acc = classifier_eval(&nc, avg, &h), acc_tr = classifier_eval(&nc, avg, &d);
        char abuf[32], opath[CFG_PATH + 64];
        snprintf(abuf, sizeof abuf, "%.4f", acc);
        snprintf(opath, sizeof opath, "%s/classifier.safetensors", c->out);
        printf("classifier: test accuracy %.2f%% (%d images), train %.2f%%\n", 100 * acc, te->n,
               100 * acc_tr);
        const char *kv[] = { "test_accuracy", abuf, "role", "classifier" };
        rc = fs_mkdirs(c->out, err, sizeof err);
        rc = rc ? rc : train_save(c, opath, MODEL_CLASSIFIER, &nc, &tr->shape, avg, -1, seed, &o,
                                  &res, NULL,
                                  kv, 2, err, sizeof err);
        if (!rc)
            printf("classifier: loss %.4f -> %.4f, %.1f s, wrote %s\n", res.first_loss,
                   res.final_loss, res.seconds, opath);
    }
    free(params);
    free(avg);
    data_free(tr);
    data_free(te);
    return rc ? fail(err) : 0;
}

/* Accuracy of the conv judge on d (chunks of 256), or -1 on error. */
static double judge_accuracy(const conv_config *cc, const float *params, const dataset *d)
{
    conv_weights w;
    conv_bind(cc, (float *)params, &w);
    conv_scratch *s = conv_scratch_new(cc, 256, 0);
    int *pred = malloc((size_t)d->n * sizeof *pred);
    double acc = -1.0;
    if (s && pred && conv_classify(cc, &w, s, d->n, d->pixels, NULL, pred, NULL) == 0) {
        long hit = 0;
        for (int i = 0; i < d->n; i++)
            hit += pred[i] == d->labels[i];
        acc = (double)hit / d->n;
    }
    conv_scratch_free(s);
    free(pred);
    return acc;
}

int cmd_judge(const train_cfg *c)
{
    char err[4096] = "";
    dataset *tr = load_split(c, DATA_TRAIN), *te = tr ? load_split(c, DATA_TEST) : NULL;
    if (!tr || !te) {
        data_free(tr);
        return 1;
    }
    conv_config cc;
    float *params = NULL, *avg = NULL;
    fit_net net = { 0 };
    int rc = cfg_judge(c, tr->height, tr->width, tr->dim / (tr->width * tr->height),
                       tr->n_classes, &cc, err, sizeof err);
    uint64_t seed = cfg_seed(c, "judge", 0);
    train_opts o = cfg_opts(c, &c->jdg, seed, "judge");
    o.p_null = 0.0f;
    train_result res = { 0 };
    if (!rc) {
        size_t np = conv_param_count(&cc);
        params = malloc(np * sizeof *params);
        avg = malloc(np * sizeof *avg);
        if (!params || !avg || conv_fit_net(&cc, o.batch, &net)) {
            snprintf(err, sizeof err, "judge: out of memory");
            rc = DDM_ENOMEM;
        }
    }
    if (!rc) {
        conv_init(&cc, params, seed);
        fprintf(stderr, "judge: %d images, conv %s k%d, features %d, %zu parameters, %ld steps "
                "of %d\n", tr->n, c->judge_channels, cc.kernel, cc.feat, net.n_params, o.steps,
                o.batch);
        train_data d = { tr->n, tr->dim, tr->pixels, tr->labels, NULL };
        rc = classifier_train_net(&net, params, avg, &d, tr->width, tr->channels, c->judge_shift,
                                  &o, &res, err, sizeof err);
    }
    if (!rc) {
        double acc = judge_accuracy(&cc, avg, te), acc_tr = judge_accuracy(&cc, avg, tr);
        char abuf[32], arch[160], opath[CFG_PATH + 64];
        snprintf(abuf, sizeof abuf, "%.4f", acc);
        snprintf(arch, sizeof arch, "conv in=%dx%dx%d conv=%s kernel=%d pool=2 feat=%d out=%d",
                 cc.height, cc.width, cc.channels, c->judge_channels, cc.kernel, cc.feat,
                 cc.classes);
        snprintf(opath, sizeof opath, "%s/judge-conv.safetensors", c->out);
        printf("judge: test accuracy %.2f%% (%d images), train %.2f%%\n", 100 * acc, te->n,
               100 * acc_tr);
        const char *kv[] = { "test_accuracy", abuf, "role", "judge", "dataset", cfg_set_name(c) };
        st_writer *w = st_writer_new();
        rc = w ? fs_mkdirs(c->out, err, sizeof err) : DDM_ENOMEM;
        rc = rc ? rc : conv_write(w, &cc, avg, c->dtype);
        rc = rc ? rc : train_meta(w, c, arch, seed, &o, &res, kv, 3);
        if (rc && !err[0])
            snprintf(err, sizeof err, "cannot write %s: %s", opath, ddm_strerror(rc));
        rc = rc ? rc : st_writer_save(w, opath, err, sizeof err);
        st_writer_free(w);
        if (!rc)
            printf("judge: loss %.4f -> %.4f, %.1f s (%.0f samples/s), wrote %s\n",
                   res.first_loss, res.final_loss, res.seconds, res.samples_per_s, opath);
    }
    fit_net_free(&net);
    free(params);
    free(avg);
    data_free(tr);
    data_free(te);
    return rc ? fail(err) : 0;
}
