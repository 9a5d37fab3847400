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
/* After done: the caller is finished with the result; frees the job. */
void engine_job_release(engine_job *job);

void engine_get_stats(const engine *e, engine_stats *out);

/* ---- watching progress (jobs, streamed events, routing metrics) --------------------- */

/* Runs on the loop thread right after each evaluation of a trajectory of a job
 * that is still live (neither failed nor cancelled), and before that job's done
 * when it was its last: tr->evals counts the evaluation, tr->sel / w / n_sel
 * are the routing it used, tr->x and tr->v the state and velocity after it.
 * The trajectory is in no tick at that moment. The callback must not submit,
 * cancel or release jobs, and should be quick (it runs per image per step). */
typedef void (*engine_eval_fn)(void *ud, const traj *tr);

/* Observer of every job's evaluations (e.g. metrics); fn NULL removes it. */
void engine_set_eval_observer(engine *e, engine_eval_fn fn, void *ud);
/* Observer of one job's evaluations (runs after the engine-wide one). */
void engine_job_observe(engine_job *job, engine_eval_fn fn, void *ud);
/* Jobs admitted before this one that still wait for their first tick (0: it
 * is next), or -1 once one of its trajectories has been in a tick. */
int engine_job_queue_position(const engine_job *job);

/* Stops scheduling; pending jobs fail with 503; frees once running ticks
 * returned, then calls cb(ud). */
void engine_close(engine *e, void (*cb)(void *ud), void *ud);

#endif
