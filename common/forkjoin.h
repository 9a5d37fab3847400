/* forkjoin.h -- run n independent jobs at once, one on the calling thread.
 *
 * For work split per call (a forward pass by rows, a tick's experts by
 * lanes): threads are started for jobs 1..n-1, the caller runs job 0, and all
 * are joined before forkjoin_run returns. A job whose thread cannot be started
 * runs on the caller instead, so the work is always done. */
#ifndef DDM_FORKJOIN_H
#define DDM_FORKJOIN_H

#include <stddef.h>

#define FORKJOIN_MAX 16

/* Calls fn(jobs + i * stride) for i in 0..n-1 (1 <= n <= FORKJOIN_MAX). */
void forkjoin_run(int n, void *(*fn)(void *), void *jobs, size_t stride);

#endif
