/* judge.c -- the classifier as the judge of samples (see judge.h). */
#include "tools/eval/judge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

judge *judge_open(const char *path, char *err, size_t errlen)
{
    judge *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    j->m = model_open(path, err, errlen);
    if (!j->m)
        goto fail;
    if (j->m->kind != MODEL_CLASSIFIER) {
        snprintf(err, errlen, "%s is a %s network, not the classifier (train it with "
                 "`ddm-train classifier`)", path, model_kind_name(j->m->kind));
        goto fail;
    }
    j->D = j->m->cfg.in_dim;
    j->C = j->m->cfg.out_dim;
    j->H = j->m->cfg.hidden;
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
    free(j);
}

int judge_run(judge *j, const float *x, long n, float *feat, int *pred, float *conf)
{
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
        for (int i = 0; i < nr; i++) {
            const float *l = j->logits + (size_t)i * j->C;
            int a = 0;
            for (int c = 1; c < j->C; c++)
                if (l[c] > l[a])
                    a = c;
            double sum = 0;
            for (int c = 0; c < j->C; c++)
                sum += exp((double)(l[c] - l[a]));
            if (pred)
                pred[r0 + i] = a;
            if (conf)
                conf[r0 + i] = (float)(1.0 / sum);
        }
    }
    return 0;
}
