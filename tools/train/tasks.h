/* tasks.h -- what each network of a DDM set learns, on in-memory data.
 *
 *   denoiser (expert, monolith): rectified flow. x_t = (1 - t) x0 + t eps,
 *       target v = eps - x0, MSE; label replaced by null with p_null, so
 *       classifier-free guidance works. The Gaussian baseline is fitted to
 *       the same data first (denoiser_init), the MLP learns the correction.
 *   router: x_t of any training image, t random, label dropped with
 *       p_null (~0.5, so it routes with and without a label) -> the image's
 *       cluster, cross-entropy.
 *   classifier: clean image, randomly shifted by up to `shift` pixels ->
 *       class, cross-entropy; its features (net_features) serve FID.
 * The data is only what the caller passes in: an expert's trainer is given
 * its shard's images and nothing else. Images are [n][D] floats in [-1, 1]
 * of side x side pixels (D = side * side). */
#ifndef DDM_TRAIN_TASKS_H
#define DDM_TRAIN_TASKS_H

#include <stddef.h>

#include "common/net.h"
#include "tools/train/conv.h"
#include "tools/train/fit.h"

/* A view of training data; not owned. */
typedef struct train_data {
    int n;
    int dim;
    const float *x;   /* [n][dim] */
    const int *y;     /* [n] class labels (may be NULL for an unconditional denoiser) */
    const int *z;     /* [n] cluster of each image (router only, else NULL) */
} train_data;

/* net_init(seed) of a denoiser config, then its Gaussian baseline fitted to
 * d (gauss_fit with var_floor). params holds net_param_count(c) floats.
 * Returns 0 or an error with a message. */
int denoiser_init(const net_config *c, float *params, const train_data *d, uint64_t seed,
                  float var_floor, char *err, size_t errlen);

/* Trains a denoiser on d (see fit_run for params / avg / result). */
int denoiser_train(const net_config *c, float *params, float *avg, const train_data *d,
                   const train_opts *o, train_result *res, char *err, size_t errlen);

/* Mean squared velocity error of the denoiser on d, averaged over `draws`
 * noisy copies of every image at t uniform (deterministic in seed); labels
 * used as given (y NULL = null labels). Returns the loss, or a negative
 * value on error (bad config, out of memory). */
double denoiser_eval(const net_config *c, const float *params, const train_data *d, int draws,
                     uint64_t seed);

/* Trains a router on d (d->z the targets; labels d->y dropped with o->p_null). */
int router_train(const net_config *c, float *params, float *avg, const train_data *d,
                 const train_opts *o, train_result *res, char *err, size_t errlen);

/* Router accuracy on d at a fixed t: each image noised once (seed), with its
 * label (with_label) or null; fraction whose argmax is d->z. -1 on error. */
double router_eval(const net_config *c, const float *params, const train_data *d, float t,
                   int with_label, uint64_t seed);

/* Trains a classifier on d with random shifts of up to shift pixels
 * (side x side x channels images, HWC). */
int classifier_train(const net_config *c, float *params, float *avg, const train_data *d,
                     int side, int channels, int shift, const train_opts *o, train_result *res,
                     char *err, size_t errlen);

/* The same task for any network (e.g. the conv judge): net->in_dim pixels
 * in, net->out_dim class logits out. */
int classifier_train_net(const fit_net *net, float *params, float *avg, const train_data *d,
                         int side, int channels, int shift, const train_opts *o,
                         train_result *res, char *err, size_t errlen);

/* Classifies x [n][dim]: writes the argmax class into pred[n] (may be NULL)
 * and the max softmax probability into conf[n] (may be NULL). Returns 0 or
 * an error (DDM_ENOMEM, or net_forward's). */
int classifier_predict(const net_config *c, const float *params, int n, const float *x,
                       int *pred, float *conf);

/* Fraction of d classified as d->y, or -1 on error. */
double classifier_eval(const net_config *c, const float *params, const train_data *d);

/* A classifier's verdict on logits [n][K]: argmax into pred[n] and max
 * softmax probability into conf[n] (each may be NULL). */
void classifier_verdict(const float *logits, int n, int K, int *pred, float *conf);

/* The conv judge (conv.h) as a fit_net for batches of up to max_batch rows
 * (t and labels ignored). Returns 0 or DDM_ENOMEM; release with fit_net_free. */
int conv_fit_net(const conv_config *c, int max_batch, fit_net *out);

/* Runs the conv judge over x [n][H*W*C] in chunks of s's max batch: feat
 * [n][feat], pred [n] and conf [n] (each may be NULL). Returns 0 or a
 * conv_forward error. */
int conv_classify(const conv_config *c, const conv_weights *w, conv_scratch *s, long n,
                  const float *x, float *feat, int *pred, float *conf);

#endif
