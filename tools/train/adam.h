/* adam.h -- the optimiser side of training: Adam(W), the learning-rate
 * schedule (linear warmup then cosine decay) and an exponential moving
 * average of the weights.
 *
 * All three work on the trainable prefix of a net's flat parameter buffer
 * (net_trainable_count floats); the fixed tensors behind it are never
 * touched. */
#ifndef DDM_TRAIN_ADAM_H
#define DDM_TRAIN_ADAM_H

#include <stddef.h>

typedef struct adam {
    size_t n;          /* parameters */
    float *m;          /* [n] first moment */
    float *v;          /* [n] second moment */
    long step;         /* updates taken */
    float beta1, beta2, eps;
    float weight_decay; /* decoupled (AdamW), times lr; 0 = plain Adam */
} adam;

/* Allocates zeroed moments for n parameters with beta1 0.9, beta2 0.999,
 * eps 1e-8 and the given decoupled weight decay. Returns 0 or DDM_ENOMEM. */
int adam_init(adam *a, size_t n, float weight_decay);
void adam_free(adam *a);

/* One update p -= lr * mhat / (sqrt(vhat) + eps) (+ lr * wd * p) with the
 * bias-corrected moments of grad. p and grad hold a->n floats. */
void adam_step(adam *a, float *p, const float *grad, float lr);

/* adam_step followed by ema_update(ema, p, a->n, decay, s) in the same pass;
 * ema may be NULL (no average). */
void adam_step_ema(adam *a, float *p, const float *grad, float lr, float *ema, float decay,
                   long s);

/* Learning rate at step s of total: linear warmup from lr/warmup to lr over
 * the first warmup steps, then a cosine from lr down to lr * final_frac at
 * the last step. */
float lr_at(long s, long total, long warmup, float lr, float final_frac);

/* ema = d * ema + (1 - d) * p over n floats, with d = min(decay, s / (s + 1))
 * where s counts the updates before this one: the plain mean of all iterates
 * until s reaches 1 / (1 - decay), an exponential average from then on, so
 * the random initialisation is forgotten and the final horizon really is
 * 1 / (1 - decay) updates. */
void ema_update(float *ema, const float *p, size_t n, float decay, long s);

/* Scales grad (n floats) so its L2 norm is at most max_norm (no-op when
 * max_norm <= 0). Returns the norm before scaling. */
double grad_clip(float *grad, size_t n, float max_norm);

#endif
