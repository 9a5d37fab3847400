/* fit.h -- the one training loop behind every network ddm-train makes.
 *
 * A task (denoiser, router, classifier) supplies two callbacks: one fills a
 * batch of inputs for a step, one turns the network's outputs into a loss
 * and its gradient. fit_run() owns everything else: the scratch, gradients,
 * Adam, the learning-rate schedule, the EMA of the weights and the progress
 * lines on stderr ("expert 3: step 1200/3000 loss 0.1234 9876 samples/s
 * ETA 1m05s"). Every random draw of a task is a pure function of (seed,
 * step, row), so a run is reproducible. */
#ifndef DDM_TRAIN_FIT_H
#define DDM_TRAIN_FIT_H

#include <stddef.h>
#include <stdint.h>

#include "common/net.h"

/* rng streams of the tasks (one per kind of draw) */
enum {
    FIT_STREAM_INDEX = 1, /* which sample a row takes */
    FIT_STREAM_TIME,      /* t of a row */
    FIT_STREAM_DROP,      /* label dropout of a row */
    FIT_STREAM_NOISE,     /* eps, D per row */
    FIT_STREAM_AUG,       /* augmentation of a row */
    FIT_STREAM_EVAL,      /* held-out evaluation draws */
};

typedef enum t_dist { T_UNIFORM = 0, T_LOGIT_NORMAL } t_dist;

typedef struct train_opts {
    long steps;         /* optimiser updates */
    int batch;          /* rows per update */
    float lr;           /* peak learning rate */
    float lr_final;     /* final lr as a fraction of the peak (cosine end) */
    long warmup;        /* linear warmup steps */
    float ema;          /* EMA decay of the saved weights; 0 = save the raw weights */
    float weight_decay; /* AdamW decoupled decay */
    float clip;         /* gradient norm clip; 0 = none */
    uint64_t seed;
    t_dist tdist;       /* how t is drawn (denoiser, router) */
    float t_mean;       /* logit-normal: mean of the normal (0: centred on t = 0.5) */
    float p_null;       /* probability a row's label is replaced by null */
    double log_secs;    /* seconds between progress lines; <= 0 = none */
    const char *tag;    /* prefix of progress lines */
} train_opts;

typedef struct train_result {
    double final_loss;    /* mean training loss over the last 10% of steps */
    double first_loss;    /* mean training loss over the first 1% of steps (>= 1) */
    double seconds;
    double samples_per_s;
} train_result;

/* Defaults for a denoiser: 3000 steps, batch 128, lr 1e-3, final 0.02,
 * warmup 200, EMA 0.997, no decay, clip 1, seed 1, uniform t, p_null 0.1,
 * progress every 10 s. */
void train_opts_default(train_opts *o);

typedef struct fit_task {
    void *ctx;
    /* Fills the B rows of step `step`: x [B][D], t [B] and labels [B] (-1
     * null), and whatever targets the loss needs (kept in ctx). */
    void (*batch)(void *ctx, long step, int B, float *x, float *t, int *labels);
    /* Mean loss of out [B][O] against the targets of the last batch; writes
     * dout [B][O] = dLoss/dout. */
    double (*loss)(void *ctx, int B, const float *out, float *dout);
} fit_task;

/* A network as the training loop sees it: one flat parameter buffer whose
 * first n_train floats are trained (the rest is fixed), and forward /
 * backward over a batch. fit_net_mlp() wraps common/net.h's MLP; the conv
 * judge (conv_train.c) brings its own. */
typedef struct fit_net {
    void *ctx;
    size_t n_params;      /* floats of the parameter buffer */
    size_t n_train;       /* its trained prefix */
    int in_dim, out_dim;  /* floats per row of x and of out */
    /* Binds the parameter and gradient buffers (n_params floats each) the
     * calls below use. */
    void (*bind)(void *ctx, float *params, float *grad);
    /* out [B][out_dim] from x [B][in_dim], t [B], labels [B] (-1 null). */
    int (*forward)(void *ctx, int B, const float *x, const float *t, const int *labels,
                   float *out);
    /* ADDS dLoss/dparam of the last forward into the bound grad. */
    int (*backward)(void *ctx, int B, const float *dout);
    void (*destroy)(void *ctx);
} fit_net;

/* The MLP of config c as a fit_net for batches of up to max_batch rows.
 * Returns 0 or DDM_ENOMEM; release with fit_net_free. */
int fit_net_mlp(const net_config *c, int max_batch, fit_net *out);
/* Calls net->destroy; safe on a zeroed struct. */
void fit_net_free(fit_net *net);

/* Trains params (net->n_params floats, initialised by the caller, fixed
 * tensors included) for o->steps updates. On return params holds the raw
 * trained weights and avg (same size; may be NULL when o->ema == 0) the EMA,
 * fixed tensors copied. Returns 0, or DDM_ENOMEM / a net error with a
 * message in err; a NaN or infinite loss stops training with DDM_ERANGE. */
int fit_run_net(const fit_net *net, float *params, float *avg, const fit_task *task,
                const train_opts *o, train_result *res, char *err, size_t errlen);
/* fit_run_net on the MLP of config c. */
int fit_run(const net_config *c, float *params, float *avg, const fit_task *task,
            const train_opts *o, train_result *res, char *err, size_t errlen);

/* t drawn per dist from the uniform u in (0, 1) and the normal z (logit-normal:
 * sigmoid(mean + z)); in (0, 1). */
float fit_draw_t(t_dist dist, double u, float z, float mean);

/* Row-wise softmax cross-entropy of logits [B][K] against classes y [B]:
 * returns the mean loss and writes dout = (softmax - onehot) / B. */
double fit_xent(int B, int K, const float *logits, const int *y, float *dout);

/* Index of the largest of v[0..n). */
int fit_argmax(const float *v, int n);

/* n standard normals into out: a fast float Box-Muller, four per Philox
 * block (blocks block0, block0 + 1, ... of stream under seed). For training
 * noise, where rng_normal_fill's double precision is not needed. */
void fit_normals(uint64_t seed, uint64_t stream, uint64_t block0, float *out, size_t n);

/* Seconds since an arbitrary fixed point (CLOCK_MONOTONIC). */
double fit_now(void);

#endif
