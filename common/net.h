/* net.h -- the MLP networks of ddm and their math (forward, backward).
 *
 * One architecture serves three roles, chosen by its config:
 *   denoiser (expert or monolith): x_t, t, label -> velocity v   (out_dim = in_dim)
 *   router:                        x_t, t, label -> K logits
 *   classifier:                    x, label unused -> class logits (time_dim = 0)
 *
 *   h0 = W_in x + b_in + W_t temb(t) + emb[label]          temb: sinusoidal, time_dim wide
 *   for each block b:  h += W2_b silu(W1_b (LN(h) * g_b) + b1_b) + b2_b
 *   f  = silu(LN(h) * g_out)                               the "features" (penultimate)
 *   y  = W_out f + b_out
 *   denoiser only:  v = y + gauss(x_t, t)
 *
 * LN is LayerNorm over the H values of a row, eps NET_LN_EPS, no bias (the
 * gain is the g multiplied after it); silu(z) = z * sigmoid(z).
 * temb(t), with T2 = time_dim / 2 and, for i < T2, freq_i = exp(-ln(10000) i / T2)
 * and arg_i = 1000 t freq_i (computed in double):
 *   temb = [sin(arg_0), ..., sin(arg_{T2-1}), cos(arg_0), ..., cos(arg_{T2-1})].
 *
 * gauss() is the closed-form E[eps - x0 | x_t] if the expert's data were the
 * Gaussian N(mu, U^T diag(lam) U + sig2 (I - U^T U)) (U's R rows are orthonormal
 * directions): it carries the noise that an MLP bottleneck cannot (see
 * DESIGN.md), and the MLP learns the correction.
 * With d = x_t - (1 - t) mu and f(l) = (t - (1 - t) l) / ((1 - t)^2 l + t^2):
 *   gauss = -mu + f(sig2) d + U^T diag(f(lam_i) - f(sig2)) U d.
 * lam and sig2 must be > 0 (f is undefined at t = 0, l = 0).
 * The Gaussian tensors are fixed (computed once from the shard), not trained.
 *
 * All tensors are fp32, row-major, one contiguous buffer in the order of
 * net_tensor_table(): trainable tensors first, then the fixed Gaussian ones. */
#ifndef DDM_NET_H
#define DDM_NET_H

#include <stddef.h>
#include <stdint.h>

#define NET_MAX_TENSORS 16
#define NET_MAX_DIM 8192     /* any config size above this is refused */
#define NET_LN_EPS 1e-5f

typedef struct net_config {
    int in_dim;      /* D: input features (784 for 28x28) */
    int hidden;      /* H */
    int n_blocks;    /* residual blocks, >= 0 */
    int out_dim;     /* O: D for a denoiser, K for a router, classes for a classifier */
    int n_classes;   /* C: label classes; embedding has C + 1 rows, row C = null. 0 = no label input */
    int time_dim;    /* T: sinusoidal time features (even); 0 = no time input */
    int gauss_rank;  /* R: rank of the Gaussian baseline; 0 = none. Requires out_dim == in_dim */
} net_config;

typedef struct net_weights {
    float *w_in;     /* [H][D] */
    float *b_in;     /* [H] */
    float *w_t;      /* [H][T]            (NULL when T = 0) */
    float *emb;      /* [C + 1][H]        (NULL when C = 0) */
    float *ln_g;     /* [n_blocks + 1][H] block norms, then the output norm */
    float *w1;       /* [n_blocks][H][H] */
    float *b1;       /* [n_blocks][H] */
    float *w2;       /* [n_blocks][H][H] */
    float *b2;       /* [n_blocks][H] */
    float *w_out;    /* [O][H] */
    float *b_out;    /* [O] */
    float *g_mu;     /* [D]    Gaussian mean                  (NULL when R = 0) */
    float *g_u;      /* [R][D] orthonormal directions, rows    (NULL when R = 0) */
    float *g_lam;    /* [R]    variances along g_u             (NULL when R = 0) */
    float *g_sig2;   /* [1]    variance in the rest of space   (NULL when R = 0) */
    /* Optional transposed copies ([in][out]) set by net_transpose(); NULL
     * otherwise. When present net_forward multiplies by them instead: OpenBLAS
     * packs a transposed weight matrix far more slowly, which costs up to half
     * of a forward pass at the small batches serving sees (docs/benchmarks.md). */
    float *w_in_t;   /* [D][H] */
    float *w1_t;     /* [n_blocks][H][H], each block's w1 transposed */
    float *w2_t;     /* [n_blocks][H][H] */
    float *w_out_t;  /* [H][O] */
    float *g_u_t;    /* [D][R] */
    /* Optional IEEE-half copies set by net_half(): the transposed matrices
     * above and g_u, each only when every value is exactly a half (as in the
     * fp16 weights files we ship) and its output width is a multiple of 16.
     * net_forward multiplies up to half_gemm_rows() rows by them
     * (common/half_gemm.h): half the bytes to stream per call. */
    const uint16_t *w_in_h;  /* [D][H] */
    const uint16_t *w1_h;    /* [n_blocks][H][H] */
    const uint16_t *w2_h;    /* [n_blocks][H][H] */
    const uint16_t *w_out_h; /* [H][O] */
    const uint16_t *g_u_th;  /* [D][R] */
    const uint16_t *g_u_h;   /* [R][D] */
} net_weights;

/* One tensor of the layout: its name in weights files, shape, offset (in
 * floats) into the contiguous buffer, and whether training updates it. */
typedef struct net_tensor_info {
    const char *name;
    int ndim;
    int64_t shape[3];
    size_t offset;
    size_t numel;
    int trainable;
} net_tensor_info;

/* Checks a config: every size positive where required and <= NET_MAX_DIM,
 * T even, R <= D and R > 0 only if O == D. Returns 0 or DDM_EINVAL with a
 * message in err naming the field. */
int net_config_check(const net_config *c, char *err, size_t errlen);

/* Fills out[] (NET_MAX_TENSORS entries) with the layout; returns the count.
 * Tensors of size zero (absent by config) are not listed. */
int net_tensor_table(const net_config *c, net_tensor_info *out);
/* Total floats of the buffer, and of its trainable prefix. */
size_t net_param_count(const net_config *c);
size_t net_trainable_count(const net_config *c);
/* Points w's fields into buf (net_param_count floats) per the layout. */
void net_bind(const net_config *c, float *buf, net_weights *w);

/* Floats needed for the transposed copies of net_transpose(). */
size_t net_transposed_count(const net_config *c);
/* Writes the transposed copies of w's large matrices into buf
 * (net_transposed_count floats) and points w's *_t fields at them, so that
 * net_forward uses them. For inference only: the copies are not updated when
 * the weights change, so a training loop must not call it. */
void net_transpose(const net_config *c, net_weights *w, float *buf);
/* uint16_t values needed by net_half(). */
size_t net_half_count(const net_config *c);
/* After net_transpose(): writes half copies into buf (net_half_count values)
 * and points w's *_h fields at those that hold exactly the fp32 values (the
 * others are NULL, and net_forward uses fp32 for them). Returns how many of
 * the six matrices got a copy: 0 on a CPU without half_gemm. Inference only,
 * like net_transpose. */
int net_half(const net_config *c, net_weights *w, uint16_t *buf);

/* Deterministic initialisation of the trainable tensors in buf: scaled normal
 * weights from rng (seed), zero biases, unit gains, and W_out = 0 for a
 * denoiser so training starts from the Gaussian baseline. Fixed Gaussian
 * tensors are set to mu = 0, U = 0, lam = 1, sig2 = 1. */
void net_init(const net_config *c, float *buf, uint64_t seed);

/* Per-batch activations and workspace for one config, allocated once for up
 * to max_batch rows. With training != 0 it also keeps what net_backward needs
 * (every block's activations and a copy of the input). Returns NULL on a bad
 * config, max_batch < 1 or out of memory. A scratch is used by one thread at
 * a time; net_scratch_free(NULL) is a no-op. */
typedef struct net_scratch net_scratch;
net_scratch *net_scratch_new(const net_config *c, int max_batch, int training);
void net_scratch_free(net_scratch *s);
int net_scratch_max_batch(const net_scratch *s);

/* Forward pass over n rows with cblas_sgemm.
 *   x      [n][D] inputs
 *   t      [n] times in [0, 1]          (ignored, may be NULL, when T = 0 and R = 0)
 *   labels [n] classes 0..C-1, or -1 for null; NULL means all null (ignored when C = 0)
 *   out    [n][O]
 * Returns 0; DDM_ERANGE if n < 0, n > max_batch, a label is outside -1..C-1 or
 * a t is outside [0, 1] (or NaN); DDM_EINVAL if s was made for another config
 * or t is NULL while needed. On error out is untouched and a following
 * net_backward is refused. Does not allocate. out may not alias x. */
int net_forward(const net_config *c, const net_weights *w, net_scratch *s, int n,
                const float *x, const float *t, const int *labels, float *out);

/* The same function computed with plain loops in double: the reference the
 * BLAS path is tested against. Slow; allocates its own temporaries; returns 0,
 * the errors of net_forward (no max_batch) or DDM_ENOMEM. */
int net_forward_ref(const net_config *c, const net_weights *w, int n,
                    const float *x, const float *t, const int *labels, float *out);

/* Features f [n][H] (the penultimate activation) of the last net_forward on
 * s; owned by s, valid until the next net_forward. */
const float *net_features(const net_scratch *s);

/* Backward pass for the last net_forward on s (created with training != 0,
 * same n): given dout [n][O] = dLoss/dout, ADDS dLoss/dparam into grad (a
 * net_weights bound to a buffer of the same layout; only trainable tensors
 * are touched; emb rows only of the batch's labels, row C for null).
 * dLoss/dx is not computed. Does not allocate. Returns 0, or DDM_EINVAL when s
 * is not a training scratch of this config or its last net_forward failed or
 * had another n. */
int net_backward(const net_config *c, const net_weights *w, net_weights *grad,
                 net_scratch *s, int n, const float *dout);

/* Floating-point operations one net_forward over n rows executes in its
 * matrix products, 2 per multiply-add: the time embedding's product with W_t
 * once per run of consecutive rows with equal t (t_runs of them: 1 when the
 * batch shares one t, n when every t differs; see net_t_runs), everything
 * else once per row. Elementwise work (LayerNorm, SiLU, biases, the
 * baseline's diagonal) is not counted. */
double net_forward_flops(const net_config *c, int n, int t_runs);
/* Runs of consecutive equal values in t[n] (0 when n is 0). */
int net_t_runs(int n, const float *t);
/* Bytes of weights one net_forward over n rows must read at least once: every
 * matrix in the precision the forward multiplies by at n rows (its half copy
 * up to half_gemm_rows(), else fp32), the vectors, one embedding row. The
 * weight-streaming bound of a pass is these bytes over the bandwidth they
 * come at. */
double net_forward_weight_bytes(const net_config *c, const net_weights *w, int n);

#endif
