/* judge.h -- a network that judges samples: class, confidence and the
 * features that FID, KID and precision/recall compare.
 *
 * Two kinds: the dataset's MLP classifier (common/model.h, penultimate
 * features) and the conv judge (tools/train/conv.h, its dense features),
 * told apart by the weights file's ddm.format. Images are [n][D] floats in
 * [-1, 1]. A judge holds one scratch for JUDGE_CHUNK rows, allocated at open;
 * use it from one thread at a time. */
#ifndef DDM_EVAL_JUDGE_H
#define DDM_EVAL_JUDGE_H

#include <stddef.h>

#include "common/model.h"
#include "tools/train/conv.h"

#define JUDGE_CHUNK 256
#define JUDGE_CONFIDENT 0.9f   /* "confident sample": max softmax above this */

typedef struct judge {
    model *m;          /* the MLP classifier, or NULL */
    net_scratch *s;
    float *logits;     /* [JUDGE_CHUNK][C] */
    conv_model *cv;    /* the conv judge, or NULL */
    conv_scratch *cs;
    int D;             /* image size */
    int C;             /* classes */
    int H;             /* feature size */
    const char *name;  /* "mlp" or "conv": the label in tables */
} judge;

/* Opens a judge weights file: an MLP classifier (ddm.kind "classifier") or a
 * conv judge (ddm.format "ddm-conv-v1"). Returns NULL with a one-line message
 * in err when the file is missing, neither, or invalid. */
judge *judge_open(const char *path, char *err, size_t errlen);
void judge_close(judge *j);
/* The open weights file (sha256, metadata). */
const st_file *judge_file(const judge *j);

/* Runs the judge over x [n][D]: feat [n][H] features, pred [n] argmax class,
 * conf [n] max softmax probability (each may be NULL). Returns 0 or a
 * forward error. */
int judge_run(judge *j, const float *x, long n, float *feat, int *pred, float *conf);

#endif
