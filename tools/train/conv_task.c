/* conv_task.c -- the conv judge as a trainable network (a fit_net for the
 * classifier task) and as a batch classifier for its users. */
#include "tools/train/tasks.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

typedef struct conv_ctx {
    conv_config c;
    conv_scratch *s;
    conv_weights w, g;
} conv_ctx;

static void cv_bind(void *vctx, float *params, float *grad)
{
    conv_ctx *m = vctx;
    conv_bind(&m->c, params, &m->w);
    conv_bind(&m->c, grad, &m->g);
}

static int cv_forward(void *vctx, int B, const float *x, const float *t, const int *labels,
                      float *out)
{
    (void)t;
    (void)labels;
    conv_ctx *m = vctx;
    return conv_forward(&m->c, &m->w, m->s, B, x, out);
}

static int cv_backward(void *vctx, int B, const float *dout)
{
    conv_ctx *m = vctx;
    return conv_backward(&m->c, &m->w, &m->g, m->s, B, dout);
}

static void cv_destroy(void *vctx)
{
    conv_ctx *m = vctx;
    conv_scratch_free(m->s);
    free(m);
}

int conv_fit_net(const conv_config *c, int max_batch, fit_net *out)
{
    memset(out, 0, sizeof *out);
    conv_ctx *m = calloc(1, sizeof *m);
    if (!m)
        return DDM_ENOMEM;
    m->c = *c;
    m->s = conv_scratch_new(c, max_batch, 1);
    if (!m->s) {
        free(m);
        return DDM_ENOMEM;
    }
    size_t np = conv_param_count(c);
    *out = (fit_net){ m, np, np, c->height * c->width * c->channels, c->classes,
                      cv_bind, cv_forward, cv_backward, cv_destroy };
    return 0;
}

int conv_classify(const conv_config *c, const conv_weights *w, conv_scratch *s, long n,
                  const float *x, float *feat, int *pred, float *conf)
{
    const int CH = conv_scratch_max_batch(s), O = c->classes;
    const size_t D = (size_t)c->height * c->width * c->channels;
    float *logits = malloc((size_t)CH * O * sizeof *logits);
    if (!logits)
        return DDM_ENOMEM;
    int rc = 0;
    for (long r0 = 0; r0 < n && !rc; r0 += CH) {
        int m = n - r0 < CH ? (int)(n - r0) : CH;
        rc = conv_forward(c, w, s, m, x + (size_t)r0 * D, logits);
        if (rc)
            break;
        if (feat)
            memcpy(feat + (size_t)r0 * c->feat, conv_features(s),
                   (size_t)m * c->feat * sizeof *feat);
        classifier_verdict(logits, m, O, pred ? pred + r0 : NULL, conf ? conf + r0 : NULL);
    }
    free(logits);
    return rc;
}
