/* conv.h -- the convolutional judge: a small CNN classifier whose features
 * give ddm-eval a second pair of eyes beside the MLP classifier.
 *
 * Images are [n][H][W][C] floats in [-1, 1] (HWC, as every ddm image). For
 * each conv layer i (n_conv of them, 1..CONV_MAX_LAYERS):
 *     z_i = ReLU(conv_k(a_i; W_i) + b_i)     k x k, stride 1, zero padding k/2
 *     a_(i+1) = maxpool_2x2(z_i)             stride 2; an odd last row/column is dropped
 * then two dense layers on the flattened a_(n_conv) (HWC order):
 *     f = ReLU(W_fc a + b_fc)                the features [feat] that FID compares
 *     y = W_out f + b_out                    class logits [classes]
 *
 * Convolutions run as im2col + one sgemm over the whole batch, forward and
 * backward (dW = dZ^T col, dcol = dZ W, then col2im); conv_forward_ref is the
 * same function in plain double loops, the reference the BLAS path and the
 * gradients are tested against.
 *
 * Parameters are one contiguous float buffer in this order: for each conv
 * layer W_i [ch_i][k][k][cin_i], b_i [ch_i]; then W_fc [feat][flat], b_fc
 * [feat], W_out [classes][feat], b_out [classes]. All are trained.
 *
 * Weights files are safetensors with tensors conv<i>.weight, conv<i>.bias,
 * fc.weight, fc.bias, out.weight, out.bias and __metadata__ ddm.format =
 * "ddm-conv-v1", ddm.kind = "judge", height, width, channels, kernel,
 * conv_channels ("16,32"), feat, classes (decimal) plus free-form training
 * keys (dataset, test_accuracy, command, ...). */
#ifndef DDM_TRAIN_CONV_H
#define DDM_TRAIN_CONV_H

#include <stddef.h>
#include <stdint.h>

#include "common/st.h"

#define CONV_FORMAT "ddm-conv-v1"
#define CONV_MAX_LAYERS 3
#define CONV_MAX_DIM 4096   /* any size above this is refused */

typedef struct conv_config {
    int height, width, channels;   /* input image */
    int n_conv;                    /* conv layers, 1..CONV_MAX_LAYERS */
    int ch[CONV_MAX_LAYERS];       /* output channels of each conv layer */
    int kernel;                    /* odd kernel size k */
    int feat;                      /* feature (dense) width */
    int classes;                   /* logits */
} conv_config;

typedef struct conv_weights {
    float *w[CONV_MAX_LAYERS];     /* [ch_i][k][k][cin_i] */
    float *b[CONV_MAX_LAYERS];     /* [ch_i] */
    float *w_fc;                   /* [feat][flat] */
    float *b_fc;                   /* [feat] */
    float *w_out;                  /* [classes][feat] */
    float *b_out;                  /* [classes] */
} conv_weights;

/* Checks a config: every size positive, kernel odd, the image at least
 * 2^n_conv pixels on each side, everything <= CONV_MAX_DIM. Returns 0 or
 * DDM_EINVAL with a message naming the field. */
int conv_config_check(const conv_config *c, char *err, size_t errlen);
/* Parses a list of 1..CONV_MAX_LAYERS channel counts in 1..512 ("16,32")
 * into c->ch and c->n_conv. Returns 0, or DDM_EINVAL leaving c->n_conv 0. */
int conv_parse_channels(const char *list, conv_config *c);
/* Floats of the parameter buffer. */
size_t conv_param_count(const conv_config *c);
/* Height, width and channels entering conv layer i (i == n_conv: the pooled
 * output of the last layer, which the dense layer reads). */
void conv_layer_shape(const conv_config *c, int i, int *h, int *w, int *ch);
/* Points w into buf (conv_param_count floats) per the layout. */
void conv_bind(const conv_config *c, float *buf, conv_weights *w);
/* He-normal weights from seed, zero biases. */
void conv_init(const conv_config *c, float *buf, uint64_t seed);

/* Activations for up to max_batch rows, allocated once; with training != 0
 * also what conv_backward needs. One thread at a time. NULL on a bad config,
 * max_batch < 1 or out of memory; conv_scratch_free(NULL) is a no-op. */
typedef struct conv_scratch conv_scratch;
conv_scratch *conv_scratch_new(const conv_config *c, int max_batch, int training);
void conv_scratch_free(conv_scratch *s);
int conv_scratch_max_batch(const conv_scratch *s);

/* Forward over n rows x [n][H*W*C]: logits into out [n][classes] (may be
 * NULL). Returns 0, or DDM_ERANGE when n is outside 1..max_batch (then a
 * following conv_backward is refused). Does not allocate. */
int conv_forward(const conv_config *c, const conv_weights *w, conv_scratch *s, int n,
                 const float *x, float *out);
/* Features f [n][feat] of the last conv_forward on s; owned by s. */
const float *conv_features(const conv_scratch *s);
/* Backward for the last conv_forward on s (a training scratch, same n):
 * ADDS dLoss/dparam into grad (bound to a buffer of the same layout) given
 * dout [n][classes]. Returns 0 or DDM_EINVAL. Does not allocate. */
int conv_backward(const conv_config *c, const conv_weights *w, conv_weights *grad,
                  conv_scratch *s, int n, const float *dout);
/* The same forward in plain loops in double: logits [n][classes] and, when
 * feat is not NULL, features [n][feat]. Slow; for tests. Returns 0,
 * DDM_EINVAL or DDM_ENOMEM. */
int conv_forward_ref(const conv_config *c, const conv_weights *w, int n, const float *x,
                     double *out, double *feat);

/* A judge network loaded from a file. */
typedef struct conv_model {
    conv_config cfg;
    conv_weights w;   /* points into params */
    float *params;    /* owned, conv_param_count floats */
    st_file *file;    /* the open weights file (metadata, sha256) */
} conv_model;

/* Opens and validates a judge weights file: format and kind, config keys
 * passing conv_config_check, every tensor present as F32/F16/BF16 with its
 * exact shape, finite values. NULL with a one-line message naming the file
 * and what is wrong. */
conv_model *conv_open(const char *path, char *err, size_t errlen);
void conv_close(conv_model *m);
/* 1 if path is a safetensors file whose ddm.format is CONV_FORMAT (it may
 * still be invalid: conv_open says why). */
int conv_is_judge_file(const char *path);
/* Adds the tensors (stored as dtype F32/F16/BF16) and the format, kind and
 * config metadata to w. Returns 0, DDM_EINVAL or DDM_ENOMEM. */
int conv_write(st_writer *w, const conv_config *c, const float *params, st_dtype dtype);

#endif
