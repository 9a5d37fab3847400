/* engine.h -- ddm-router's scheduler: step-level continuous batching over remote experts.
 *
 * Admitted requests ("jobs") become trajectories, one per image. A tick takes
 * ready trajectories of any jobs, at any step, plans them on the libuv
 * threadpool (router network + selection, tick_plan), sends each selected
 * expert one call with its rows (pool_call), and when every expert has
 * answered combines and steps on the threadpool (tick_finish). Unfinished
 * trajectories become ready again; requests that arrive meanwhile join the
 * next tick. Several ticks may be in flight at once over disjoint
 * trajectories, so router work overlaps expert work. The loop thread only
 * moves pointers and bytes, except for small ticks (at most inline_trajs
 * trajectories): those are planned and combined on the loop thread, because a
 * threadpool hop (two thread wake-ups) costs more than the router network
 * over a few rows; a single image takes one tick per step, so this is its
 * latency. Their combining runs from an idle handle, never from inside a
 * pool or libuv callback that other work is still unwinding through.
 *
 * Scheduling (who gets into a tick), per tick:
 *   - Jobs are taken level by level of effective priority
 *     (sample_params.priority, plus one for every age_ms a job has waited since
 *     a tick last took any of it: ageing, so no job starves), highest first.
 *     Within a level, round robin: each job first gets its even share of the
 *     tick's capacity left, the job served longest ago first, then what is
 *     still free goes out in the same order.
 *   - A job with another live job at its level or above keeps at most
 *     max(share_rows, the largest demand among those others) expert rows in
 *     flight, over all ticks (but always at least one trajectory). A tick
 *     lasts as long as its rows take, and a small request needs one tick per
 *     step: this keeps its latency near its idle latency while a big one runs,
 *     and holds a job back only for smaller ones (two big jobs share ticks
 *     whole).
 *   - A tick holds at most tick_capacity trajectories and tick_rows rows (but
 *     at least one trajectory): that also bounds how long a request arriving
 *     while a big one runs alone waits for its first tick.
 * A request's cost is its expert evaluations (sample_cost: images x
 * evaluations x experts per evaluation x 2 with guidance); one over
 * max_request_cost, or with more images than max_images, is refused
 * (engine_check) rather than queued.
 *
 * Speculative dispatch (speculate): when a tick takes a trajectory that was
 * evaluated before, its rows go at once to the experts its previous
 * evaluation selected (tick_speculate), and the router network runs
 * meanwhile. When the plan is back, a speculative call none of whose rows
 * were selected is dropped (pool_cancel: its reply is ignored), one that
 * holds selected rows is waited for, and only the rows of experts that were
 * not speculated are sent (the difference). Images are exactly those of
 * planning first (sampler.h).
 *
 * Load-aware substitution (sample_params.substitute): each tick marks an
 * expert unusable when it has no live replica, more than
 * substitute_queue_rows rows outstanding at the pool, or a call that failed
 * in the last few seconds; the plan replaces an unusable expert selected for
 * such a request by the next-best one in the router's ranking
 * (strategy_substitute). When an expert fails during the tick, the
 * trajectories of such requests that needed it evaluate again in a later
 * tick (at most 3 times in a row) instead of failing their request. */
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

/* Defaults (docs/benchmarks.md, "Fairness and the cost cap", says how they were chosen). */
#define ENGINE_DEFAULT_MAX_COST 400000ull
#define ENGINE_DEFAULT_TICK_ROWS 512
#define ENGINE_DEFAULT_SHARE_ROWS 32
#define ENGINE_DEFAULT_SUBSTITUTE_ROWS 256
#define ENGINE_DEFAULT_INLINE_TRAJS 4

typedef struct engine_config {
    int max_images;             /* images admitted at once; past it submit says busy (1024) */
    int tick_capacity;          /* trajectories per tick (256) */
    int ticks_in_flight;        /* (2) */
    int router_threads;         /* threads the router network's rows are split over (1) */
    uint32_t request_timeout_ms; /* a request older than this fails with 504 (300000) */
    uint64_t max_request_cost;  /* expert evaluations per request (ENGINE_DEFAULT_MAX_COST) */
    int tick_rows;              /* expert rows per tick (ENGINE_DEFAULT_TICK_ROWS) */
    int share_rows;             /* rows per tick of a job that shares (ENGINE_DEFAULT_SHARE_ROWS) */
    uint32_t age_ms;            /* waiting this long raises a job's priority by one (1000) */
    int speculate;              /* speculative dispatch (1) */
    int substitute_queue_rows;  /* substitution: an expert with more rows outstanding is
                                   unusable (ENGINE_DEFAULT_SUBSTITUTE_ROWS) */
    int inline_trajs;           /* a tick of at most this many trajectories is planned
                                   (except the one a submit starts) and combined on the loop
                                   thread, not the threadpool (ENGINE_DEFAULT_INLINE_TRAJS;
                                   0: never) */
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
    double expert_wait_us_sum;  /* from the end of the plan to the last answer */
    /* parts of those: sending speculative calls (before the plan: in the overhead),
     * sending the plan's calls (in the wait), and from the last answer to the
     * combined step (threadpool or idle hop, tick_finish: in the overhead) */
    double spec_send_us_sum, send_us_sum, finish_us_sum;
    uint64_t jobs_ok, jobs_failed, jobs_cancelled, jobs_busy;
    int images_in_flight, ready, ticks_running;
    /* speculative dispatch (tick_spec_stats summed over ticks) */
    uint64_t spec_evals_hit, spec_evals_miss;
    uint64_t spec_rows_hit, spec_rows_miss, spec_rows_wasted;
    uint64_t spec_calls, spec_calls_dropped; /* speculative calls sent; dropped unanswered */
    /* load-aware substitution */
    uint64_t substitutions;     /* experts replaced (or dropped) in evaluations */
    uint64_t evals_redone;      /* evaluations done again after an expert failed */
} engine_stats;

/* router may not be NULL when any strategy reads it (the daemon always has one).
 * width x height is the image size of results; dim must be a multiple of it
 * (dim / (width x height) channels, HWC), else DDM_EINVAL with err set. */
int engine_new(uv_loop_t *loop, pool *pl, const model *router, int K, int dim, int width,
               int height, const engine_config *cfg, engine **out, char *err, size_t errlen);

/* Whether p could ever be admitted: returns 0, or DDM_ERANGE with a message
 * naming the limit in err and its code in *code (may be NULL):
 * "too_many_images" (more than max_images) or "too_much_work" (a cost over
 * max_request_cost; the message has the cost, how it came about and the cap). */
int engine_check(const engine *e, const sample_params *p, const char **code, char *err,
                 size_t errlen);

/* Admits a request (p is copied). Returns 0 and *job (done will be called
 * exactly once unless the job is cancelled first), DDM_ERANGE when
 * engine_check refuses it, DDM_EBUSY when the images in flight would exceed
 * max_images (try again later), DDM_ECLOSED after engine_close, or DDM_ENOMEM. */
int engine_submit(engine *e, const sample_params *p, engine_done_fn done, void *ud,
                  engine_job **job);

/* The client went away, or cancelled, before done: stop work on the job at the
 * next step boundary (its trajectories in a tick finish that evaluation; no
 * expert is called for it after that, nor for a tick planned meanwhile that
 * holds only cancelled or failed jobs); done is not called. The job must not
 * be used afterwards. */
void engine_job_cancel(engine_job *job);
/* After done: the caller is finished with the result; frees the job (its
 * trajectories, which the result points to). */
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
/* How many jobs would get a tick before this one, in the scheduler's order as
 * of now (effective priority with ageing, then round robin): the live jobs
 * that have not started either and come first (0: it is next), or -1 once a
 * tick has taken one of its trajectories. Jobs already running are not
 * counted: they share ticks with a job that starts. */
int engine_job_queue_position(const engine_job *job);
/* Live jobs no tick has taken any of yet. */
int engine_jobs_queued(const engine *e);

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
