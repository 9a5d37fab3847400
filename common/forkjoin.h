/* forkjoin.h -- run n independent jobs at once, one on the calling thread.
 *
 * For work split per call (a forward pass by rows, a tick's experts by
 * lanes): jobs 1..n-1 go to helper threads, the caller runs job 0, and all
 * are done before forkjoin_run returns. Helpers are started on first use and
 * kept (at most FORKJOIN_MAX - 1 per process, shared by concurrent callers);
 * a job that finds no helper free -- all busy, or more jobs than helpers --
 * runs on the caller instead, so every job is always done. Thread-safe. */
#ifndef DDM_FORKJOIN_H
#define DDM_FORKJOIN_H

#include <stddef.h>

#define FORKJOIN_MAX 16

/* Calls fn(jobs + i * stride) exactly once for every i in 0..n-1 (any n >= 0;
 * at most FORKJOIN_MAX run at once, the rest on the caller after its own). */
void forkjoin_run(int n, void *(*fn)(void *), void *jobs, size_t stride);

#endif
