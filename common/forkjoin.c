/* forkjoin.c -- see forkjoin.h. */
#include "common/forkjoin.h"

#include <pthread.h>

void forkjoin_run(int n, void *(*fn)(void *), void *jobs, size_t stride)
{
    pthread_t tid[FORKJOIN_MAX];
    int started[FORKJOIN_MAX] = { 0 };
    char *job = jobs;
    if (n > FORKJOIN_MAX)
        n = FORKJOIN_MAX;
    for (int i = 1; i < n; i++)
        started[i] = pthread_create(&tid[i], NULL, fn, job + (size_t)i * stride) == 0;
    fn(job);
    for (int i = 1; i < n; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            fn(job + (size_t)i * stride); /* no thread to be had: run it here */
    }
}
