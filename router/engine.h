/* engine.h -- ddm-router's scheduler: step-level continuous batching over remote experts.
 *
 * Admitted requests become trajectories in one FIFO of "ready" latents. A
 * tick takes up to its capacity from the front (whatever request and step
 * they belong to), plans it on the libuv threadpool (router network +
 * selection, tick_plan), sends each selected expert one call with its rows
 * (pool_call), and when every expert has answered combines and steps on the
 * threadpool (tick_finish). Unfinished trajectories go to the back of the
 * FIFO; requests that arrive meanwhile join the next tick. Several ticks may
 * be in flight at once over disjoint trajectories, so router work overlaps
 * expert work. The loop thread only moves pointers and bytes. */
#ifndef DDM_ENGINE_H
#define DDM_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/model.h"
#include "router/api.h"
#include "router/pool.h"

typedef struct engine engine;
typedef struct engine_job engine_job;

typedef struct engine_config {
    int max_images;             /* images admitted at once; past it submit says busy (1024) */
    int tick_capacity;          /* trajectories per tick (256) */
    int ticks_in_flight;        /* (2) */
    int router_threads;         /* threads the router network's rows are split over (1) */
    uint32_t request_timeout_ms; /* a request older than this fails with 504 (300000) */
} engine_config;

void engine_config_default(engine_config *c);

/* Outcome of a job, given to the done callback on the loop thread.
 * status 0: r is the result (valid until engine_job_release). Otherwise the
 * HTTP status to answer (503, 504, 500) with an error code and message. */
typedef void (*engine_done_fn)(engine_job *job, void *ud, int status, const char *code,
                               const char *msg, const api_result *r);

typedef struct engine_stats {
    uint64_t ticks, tick_rows, expert_calls;
    double router_us_sum;       /* router network time, all ticks */
    double overhead_us_sum;     /* tick wall time not spent waiting on experts */
    double expert_wait_us_sum;
    uint64_t jobs_ok, jobs_failed, jobs_cancelled, jobs_busy;
    int images_in_flight, ready, ticks_running;
} engine_stats;

/* router may not be NULL when any strategy reads it (the daemon always has one). */
int engine_new(uv_loop_t *loop, pool *pl, const model *router, int K, int dim, int width,
               int height, const engine_config *cfg, engine **out, char *err, size_t errlen);

/* Admits a request (p is copied). Returns 0 and *job (done will be called
 * exactly once unless the job is cancelled first), or DDM_EBUSY when the
 * images in flight would exceed max_images, or DDM_ENOMEM. */
int engine_submit(engine *e, const sample_params *p, engine_done_fn done, void *ud,
                  engine_job **job);

/* The client went away before done: stop work on the job; done is not called.
 * The job must not be used afterwards. */
void engine_job_cancel(engine_job *job);
/* After done: the caller is finished with the result; frees the job (its
 * trajectories, which the result points to). */
void engine_job_release(engine_job *job);

void engine_get_stats(const engine *e, engine_stats *out);

/* Stops scheduling and returns without calling anything. From a later loop
 * iteration on, every job whose done has not run gets done with 503
 * "shutting_down". Results already handed to done stay valid until their
 * engine_job_release. Once the last tick has returned and every job was
 * released or cancelled, the engine is freed and cb(ud) runs (cb may be NULL).
 * From this call on the engine never calls the pool again, so the caller may
 * close the pool right after (its outstanding calls complete with an error).
 * engine_submit then returns DDM_ECLOSED. A second call does nothing. */
void engine_close(engine *e, void (*cb)(void *ud), void *ud);

#endif
