/* adam.c -- Adam(W), warmup + cosine learning rate, weight EMA (see adam.h). */
#include "tools/train/adam.h"

#include <math.h>
#include <stdlib.h>

#include "common/err.h"

int adam_init(adam *a, size_t n, float weight_decay)
{
    a->n = n;
    a->m = calloc(n ? n : 1, sizeof *a->m);
    a->v = calloc(n ? n : 1, sizeof *a->v);
    a->step = 0;
    a->beta1 = 0.9f;
    a->beta2 = 0.999f;
    a->eps = 1e-8f;
    a->weight_decay = weight_decay;
    if (!a->m || !a->v) {
        adam_free(a);
        return DDM_ENOMEM;
    }
    return 0;
}

void adam_free(adam *a)
{
    free(a->m);
    free(a->v);
    a->m = a->v = NULL;
}

/* The update loop runs over every parameter each step, a large share of
 * training time next to the GEMMs: it is vectorised (no errno from sqrtf,
 * no aliasing) and cloned for AVX-512 / AVX2 CPUs. */
#define HOT __attribute__((optimize("O3", "no-math-errno"), \
                           target_clones("avx512f", "avx2", "default")))

HOT static void adam_loop(size_t n, float *restrict p, const float *restrict grad,
                          float *restrict m, float *restrict v, float *restrict ema, float b1,
                          float b2, float c1, float c2, float eps, float lr, float decay,
                          float ed)
{
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float mi = b1 * m[i] + (1.0f - b1) * g;
        float vi = b2 * v[i] + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - lr * (mi * c1) / (sqrtf(vi * c2) + eps);
    }
    if (ema) {
        float e = 1.0f - ed;
        for (size_t i = 0; i < n; i++)
            ema[i] = ed * ema[i] + e * p[i];
    }
}

void adam_step(adam *a, float *p, const float *grad, float lr)
{
    adam_step_ema(a, p, grad, lr, NULL, 0.0f, 0);
}

void adam_step_ema(adam *a, float *p, const float *grad, float lr, float *ema, float decay,
                   long s)
{
    a->step++;
    const float b1 = a->beta1, b2 = a->beta2;
    const float c1 = 1.0f / (1.0f - powf(b1, (float)a->step));
    const float c2 = 1.0f / (1.0f - powf(b2, (float)a->step));
    float warm = (float)s / (float)(s + 1);
    adam_loop(a->n, p, grad, a->m, a->v, ema, b1, b2, c1, c2, a->eps, lr,
              1.0f - lr * a->weight_decay, decay < warm ? decay : warm);
}

float lr_at(long s, long total, long warmup, float lr, float final_frac)
{
    if (warmup > 0 && s < warmup)
        return lr * (float)(s + 1) / (float)warmup;
    long span = total - warmup;
    if (span <= 1)
        return lr;
    double q = (double)(s - warmup) / (double)(span - 1);
    if (q > 1.0)
        q = 1.0;
    double c = 0.5 * (1.0 + cos(M_PI * q));
    return (float)(lr * (final_frac + (1.0 - final_frac) * c));
}

void ema_update(float *ema, const float *p, size_t n, float decay, long s)
{
    float warm = (float)s / (float)(s + 1);
    float d = decay < warm ? decay : warm;
    float e = 1.0f - d;
    for (size_t i = 0; i < n; i++)
        ema[i] = d * ema[i] + e * p[i];
}

HOT static double sum_squares(const float *restrict x, size_t n)
{
    /* float partial sums of 1024 elements, added in double */
    double total = 0.0;
    for (size_t i0 = 0; i0 < n; i0 += 1024) {
        size_t end = n - i0 < 1024 ? n : i0 + 1024;
        float part[16] = { 0 };
        size_t i = i0;
        for (; i + 16 <= end; i += 16)
            for (int l = 0; l < 16; l++)
                part[l] += x[i + l] * x[i + l];
        for (; i < end; i++)
            part[0] += x[i] * x[i];
        for (int l = 0; l < 16; l++)
            total += part[l];
    }
    return total;
}

double grad_clip(float *grad, size_t n, float max_norm)
{
    double norm = sqrt(sum_squares(grad, n));
    if (max_norm > 0.0f && norm > max_norm) {
        float k = (float)(max_norm / norm);
        for (size_t i = 0; i < n; i++)
            grad[i] *= k;
    }
    return norm;
}
