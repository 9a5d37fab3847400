/* judge.c -- the MLP classifier or the conv judge as the judge of samples (see judge.h). */
#include "tools/eval/judge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "tools/train/tasks.h"

static judge *open_conv(judge *j, const char *path, char *err, size_t errlen)
{
    j->cv = conv_open(path, err, errlen);
    if (!j->cv)
        return NULL;
    const conv_config *c = &j->cv->cfg;
    j->D = c->height * c->width * c->channels;
    j->C = c->classes;
    j->H = c->feat;
    j->name = "conv";
    j->cs = conv_scratch_new(c, JUDGE_CHUNK, 0);
    if (!j->cs) {
        snprintf(err, errlen, "out of memory for the conv judge's scratch");
        return NULL;
    }
    return j;
}

judge *judge_open(const char *path, char *err, size_t errlen)
{
    judge *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (conv_is_judge_file(path)) {
        if (!open_conv(j, path, err, errlen))
            goto fail;
        return j;
    }
    j->m = model_open(path, err, errlen);
    if (!j->m)
        goto fail;
    if (j->m->kind != MODEL_CLASSIFIER) {
        snprintf(err, errlen, "%s is a %s network, not a judge (train one with `ddm-train "
                 "classifier` or `ddm-train judge`)", path, model_kind_name(j->m->kind));
        goto fail;
    }
    j->D = j->m->cfg.in_dim;
    j->C = j->m->cfg.out_dim;
    j->H = j->m->cfg.hidden;
    j->name = "mlp";
    j->s = net_scratch_new(&j->m->cfg, JUDGE_CHUNK, 0);
    j->logits = malloc((size_t)JUDGE_CHUNK * (size_t)j->C * sizeof *j->logits);
    if (!j->s || !j->logits) {
        snprintf(err, errlen, "out of memory for the classifier's scratch");
        goto fail;
    }
    return j;
fail:
    judge_close(j);
    return NULL;
}

void judge_close(judge *j)
{
    if (!j)
        return;
    net_scratch_free(j->s);
    free(j->logits);
    model_close(j->m);
    conv_scratch_free(j->cs);
    conv_close(j->cv);
    free(j);
}

const st_file *judge_file(const judge *j) { return j->cv ? j->cv->file : j->m->file; }

int judge_run(judge *j, const float *x, long n, float *feat, int *pred, float *conf)
{
    if (j->cv)
        return conv_classify(&j->cv->cfg, &j->cv->w, j->cs, n, x, feat, pred, conf);
    const model *m = j->m;
    for (long r0 = 0; r0 < n; r0 += JUDGE_CHUNK) {
        int nr = n - r0 < JUDGE_CHUNK ? (int)(n - r0) : JUDGE_CHUNK;
        int rc = net_forward(&m->cfg, &m->w, j->s, nr, x + (size_t)r0 * j->D, NULL, NULL,
                             j->logits);
        if (rc)
            return rc;
        if (feat)
            memcpy(feat + (size_t)r0 * j->H, net_features(j->s),
                   (size_t)nr * (size_t)j->H * sizeof *feat);
        classifier_verdict(j->logits, nr, j->C, pred ? pred + r0 : NULL, conf ? conf + r0 : NULL);
    }
    return 0;
}
