/* blas.h -- make OpenBLAS use the kernels the CPU can run (every ddm binary calls this first).
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) does not recognise recent Xeons
 * (e.g. family 6 model 207) and falls back to its generic "Prescott" SSE3
 * kernels: sgemm runs 5-10x slower than it can. The core is chosen when the
 * library loads, so the only fix from inside a program is to set
 * OPENBLAS_CORETYPE and execute itself again. */
#ifndef DDM_BLAS_H
#define DDM_BLAS_H

/* If OPENBLAS_CORETYPE is unset and OpenBLAS picked Prescott on a CPU with
 * AVX-512 (or AVX2), sets OPENBLAS_CORETYPE to SkylakeX (or Haswell) and
 * re-executes this program (its /proc/self/exe path) with argv. Returns when nothing needed fixing
 * or the exec failed (logged). Call first thing in main, before threads. */
void blas_fix_core(char **argv);

/* The kernel set OpenBLAS uses ("SkylakeX", "Prescott", ...). */
const char *blas_core(void);

/* 1 when that kernel set multiplies small sgemm problems (m n k <= 1e6)
 * without packing its operands (OpenBLAS 0.3.21: SkylakeX and the cores built
 * on it), else 0. net_forward slices small-batch layers to use them. */
int blas_has_small_gemm(void);

#endif
