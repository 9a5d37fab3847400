/* judge.h -- the dataset's classifier as the judge of samples: class, confidence
 * and the penultimate features that FID compares.
 *
 * Images are [n][D] floats in [-1, 1]. The judge holds one scratch for
 * JUDGE_CHUNK rows, allocated at open; use it from one thread at a time. */
#ifndef DDM_EVAL_JUDGE_H
#define DDM_EVAL_JUDGE_H

#include <stddef.h>

#include "common/model.h"

#define JUDGE_CHUNK 256
#define JUDGE_CONFIDENT 0.9f   /* "confident sample": max softmax above this */

typedef struct judge {
    model *m;          /* the classifier */
    net_scratch *s;
    float *logits;     /* [JUDGE_CHUNK][C] */
    int D;             /* image size */
    int C;             /* classes */
    int H;             /* feature size */
} judge;

/* Opens a classifier weights file (ddm.kind "classifier"). Returns NULL with
 * a one-line message in err when the file is missing, not a classifier or
 * invalid. */
judge *judge_open(const char *path, char *err, size_t errlen);
void judge_close(judge *j);

/* Runs the classifier over x [n][D]: feat [n][H] penultimate features, pred
 * [n] argmax class, conf [n] max softmax probability (each may be NULL).
 * Returns 0 or a net_forward error. */
int judge_run(judge *j, const float *x, long n, float *feat, int *pred, float *conf);

#endif
