/* net_par.h -- one forward pass split by rows over a few threads.
 *
 * The router network runs once per tick over every latent in flight, and on a
 * router whose experts wait for it that pass is serial time: with two cores,
 * two halves of 16 rows (each in half_gemm's range) took a 32-row tick's
 * router network from 552 to 324-366 us (docs/benchmarks.md). The caller runs the first
 * part itself, forkjoin's kept helper threads the others. */
#ifndef DDM_NET_PAR_H
#define DDM_NET_PAR_H

#include "common/net.h"

/* Parts smaller than this are not worth a thread. */
#define NET_PAR_MIN_ROWS 8

typedef struct net_par net_par;

/* Scratch for up to max_batch rows on up to threads (1..16) threads.
 * NULL on a bad config, bad counts or out of memory. */
net_par *net_par_new(const net_config *c, int max_batch, int threads);
void net_par_free(net_par *p);

/* net_forward over n rows, the rows split evenly over at most `threads`
 * parts of at least NET_PAR_MIN_ROWS, each a net_forward of its own. Its rows
 * equal the whole batch's where both take the same GEMM path; a part of at
 * most half_gemm_rows() rows of a batch above that differs by rounding
 * (half_gemm instead of OpenBLAS). Returns net_forward's error (the first
 * part's that failed). A part that finds no helper thread free runs on the
 * caller's thread. */
int net_par_forward(net_par *p, const net_weights *w, int n, const float *x, const float *t,
                    const int *labels, float *out);

#endif
