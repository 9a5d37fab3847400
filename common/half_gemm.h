/* half_gemm.h -- a layer over a few rows with weights kept as IEEE half.
 *
 * Serving multiplies a handful of latents by an expert's weights on every
 * call, and those weights (5 MB per expert in fp32) come from L3 each time:
 * at a few rows a layer spends most of its time streaming them. The shipped
 * weights files are fp16, so a copy in half precision holds exactly the same
 * values in half the bytes; half_gemm converts them back on the fly
 * (vcvtph2ps) and multiplies in fp32: faster than OpenBLAS up to a row count
 * measured on each machine (half_gemm_rows(), common/blas.h). Every output is
 * one fp32 FMA chain over k in order, so a row's result does not depend on
 * the other rows of the batch. */
#ifndef DDM_HALF_GEMM_H
#define DDM_HALF_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* Rows up to which net_forward multiplies by the half copies when nothing
 * measured says otherwise (one Xeon's crossover; common/blas.h measures each
 * machine's and sets it with half_gemm_set_rows). */
#define HALF_GEMM_DEFAULT_ROWS 20

/* The row count up to which net_forward uses half_gemm (where half copies
 * exist); HALF_GEMM_DEFAULT_ROWS until set. 0 = never. */
int half_gemm_rows(void);
/* Sets it (negative values count as 0). Call at startup, before the threads
 * that run forward passes. */
void half_gemm_set_rows(int rows);

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
