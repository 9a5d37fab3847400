/* forkjoin.c -- see forkjoin.h.
 *
 * Helpers are threads kept for the life of the process: a forkjoin_run
 * happens every tick (hundreds of times a second), and creating and joining
 * a thread each time cost more CPU than the job it ran. Each helper waits on
 * its own condition variable under one mutex; a call takes idle helpers, hands
 * each a job and waits until they are all done. Concurrent calls share the
 * helpers; a job that finds none idle (and no room for another) runs on its
 * caller, so the work is always done. */
#include "common/forkjoin.h"

#include <pthread.h>

typedef struct fj_join {
    int left;                  /* helper jobs of this call still running */
    pthread_cond_t done;
} fj_join;

typedef struct fj_helper {
    pthread_cond_t wake;
    void *(*fn)(void *);
    void *arg;
    fj_join *join;             /* the call it works for; NULL when idle */
    struct fj_helper *next_idle;
} fj_helper;

static pthread_mutex_t fj_mu = PTHREAD_MUTEX_INITIALIZER;
static fj_helper fj_helpers[FORKJOIN_MAX - 1];
static int fj_started;         /* helpers created so far */
static fj_helper *fj_idle;     /* stack of idle helpers */

static void *helper_main(void *arg)
{
    fj_helper *h = arg;
    pthread_mutex_lock(&fj_mu);
    for (;;) {
        while (!h->join)
            pthread_cond_wait(&h->wake, &fj_mu);
        pthread_mutex_unlock(&fj_mu);
        h->fn(h->arg);
        pthread_mutex_lock(&fj_mu);
        fj_join *j = h->join;
        h->join = NULL;
        h->next_idle = fj_idle;
        fj_idle = h;
        if (--j->left == 0)
            pthread_cond_signal(&j->done);
    }
    return NULL;
}

/* An idle helper, starting a new one if there is room; NULL if none can be
 * had. Called with fj_mu held. */
static fj_helper *take_helper(void)
{
    if (fj_idle) {
        fj_helper *h = fj_idle;
        fj_idle = h->next_idle;
        return h;
    }
    if (fj_started == FORKJOIN_MAX - 1)
        return NULL;
    fj_helper *h = &fj_helpers[fj_started];
    if (pthread_cond_init(&h->wake, NULL))
        return NULL;
    pthread_t tid;
    pthread_attr_t attr;
    int ok = pthread_attr_init(&attr) == 0;
    ok = ok && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
         pthread_create(&tid, &attr, helper_main, h) == 0;
    pthread_attr_destroy(&attr);
    if (!ok) {
        pthread_cond_destroy(&h->wake);
        return NULL;
    }
    fj_started++;
    return h;
}

void forkjoin_run(int n, void *(*fn)(void *), void *jobs, size_t stride)
{
    char *job = jobs;
    if (n < 1)
        return;
    fj_join j = { .left = 0 };
    pthread_cond_init(&j.done, NULL);
    int handed = 1; /* jobs 1..handed-1 went to helpers */
    pthread_mutex_lock(&fj_mu);
    for (; handed < n; handed++) {
        fj_helper *h = take_helper();
        if (!h)
            break;
        h->fn = fn;
        h->arg = job + (size_t)handed * stride;
        h->join = &j;
        j.left++;
        pthread_cond_signal(&h->wake);
    }
    pthread_mutex_unlock(&fj_mu);
    fn(job);
    for (int i = handed; i < n; i++) /* no helper to be had: run it here */
        fn(job + (size_t)i * stride);
    pthread_mutex_lock(&fj_mu);
    while (j.left > 0)
        pthread_cond_wait(&j.done, &fj_mu);
    pthread_mutex_unlock(&fj_mu);
    pthread_cond_destroy(&j.done);
}
