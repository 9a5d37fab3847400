/* half_gemm.h -- a layer over a few rows with weights kept as IEEE half.
 *
 * Serving multiplies a handful of latents by an expert's weights on every
 * call, and those weights (5 MB per expert in fp32) come from L3 each time:
 * at 1-20 rows a layer spends most of its time streaming them. The shipped
 * weights files are fp16, so a copy in half precision holds exactly the same
 * values in half the bytes; half_gemm converts them back on the fly
 * (vcvtph2ps) and multiplies in fp32, 1.25-1.9x faster than OpenBLAS at these
 * sizes on this machine (docs/benchmarks.md). Every output is one fp32 FMA
 * chain over k in order, so a row's result does not depend on the other rows
 * of the batch. */
#ifndef DDM_HALF_GEMM_H
#define DDM_HALF_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* Rows up to which half_gemm beats OpenBLAS here (even from 24 on). */
#define HALF_GEMM_MAX_ROWS 20

/* 1 if this CPU can run half_gemm (AVX-512F), read once. */
int half_gemm_supported(void);

/* Writes x[n] as halves into h and returns 1 if every value is exactly an
 * IEEE half (so the copy loses nothing); returns 0 otherwise (h then holds
 * rounded values the caller must not use). */
int half_copy_exact(const float *x, uint16_t *h, size_t n);

/* C[m][n] = A[m][k] B[k][n] + beta C with B in IEEE half, row-major, leading
 * dimensions k, n and n. Requires half_gemm_supported(), n % 16 == 0 and
 * beta 0 or 1. */
void half_gemm(int m, int n, int k, const float *a, const uint16_t *b, float beta, float *c);

#endif
