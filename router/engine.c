/* engine.c -- step-level continuous batching over remote experts (see engine.h).
 *
 * Lifetimes (the rule every path below keeps):
 *   - A job is freed only when both hold: its owner no longer holds it (it was
 *     released after done, or cancelled) and none of its trajectories is in the
 *     ready ring or in a tick (active == 0). job_maybe_free checks both.
 *   - Tick threads (plan_work, finish_work) touch only the trajectories in their
 *     slot's batch, and every one of those is counted in its job's active until
 *     after_finish (loop thread) takes it back, so a job and its trajectories
 *     outlive every tick that reads them, whatever the owner does meanwhile.
 *   - The result handed to done points into the job: it stays valid until the
 *     owner's engine_job_release, also while the engine closes. engine_close
 *     never frees a job the owner holds; it finishes once every job is gone.
 *   - engine_close calls nothing before it returns: outstanding jobs get their
 *     done (503 "shutting_down") from a later loop iteration, then cb runs once
 *     the last tick returned and the last job was released or cancelled. From
 *     engine_close on the engine never calls the pool again (pool_call), so the
 *     pool may be closed right after it: calls still out complete with their
 *     error and the ticks waiting on them finish. */
#include "router/engine.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

#define MAX_TICKS 8
#define REDO_MAX 3            /* evaluations of a trajectory redone in a row (substitution) */
#define FAILED_UNUSABLE_MS 3000 /* an expert whose call failed is unusable this long */

struct engine_job {
    engine *e;
    sample_params p;
    traj **trajs;
    traj **ready;            /* [p.n] ring: trajectories waiting for a tick */
    int rhead, rlen;
    int rows_bound;          /* expert rows one evaluation of an image costs at most */
    uint64_t seq;            /* arrival order */
    uint64_t served_ns;      /* last time a tick took some of it (admission at first) */
    uint64_t served_seq;     /* order of that (round robin between equals) */
    int eff;                 /* effective priority, computed per tick */
    int rows_in_flight;      /* expert rows of its trajectories in ticks (as charged) */
    int n_done;
    int active;              /* trajectories ready or in a tick */
    int dead;                /* failed or cancelled: drop its trajectories */
    int owner_holds;         /* the caller still holds it (until cancel/release) */
    int done_called;
    engine_done_fn done;
    void *ud;
    engine_eval_fn obs;      /* this job's evaluation observer, or NULL */
    void *obs_ud;
    uint64_t admit_ns, first_ns, deadline_ns;
    double router_us, expert_us;
    api_result result;       /* handed to done; valid, as its trajectories, until release */
    engine_job *prev, *next; /* list of live jobs (for timeouts) */
};

/* A speculative call of a tick (one per expert at most). */
enum { SPEC_NONE = 0, SPEC_SENT, SPEC_OK, SPEC_FAILED, SPEC_DROPPED };
typedef struct spec_call {
    int state;
    int needed;              /* the plan uses rows of it (or the engine closes: awaited) */
    pool_call_id id;
} spec_call;

typedef struct tick_slot tick_slot;
typedef struct spec_ref { tick_slot *s; } spec_ref; /* the ud of speculative calls */

struct tick_slot {
    engine *e;
    tick *tk;
    traj **batch;
    int *charged;            /* [capacity] rows charged to batch[i]'s job */
    unsigned char *redo;     /* [capacity] batch[i] evaluates again (an expert failed) */
    int n;
    int busy;
    int planned;             /* after_plan ran: pending counts what the tick waits for */
    int finish_here;         /* waits for on_idle to combine it on the loop thread */
    int pending;             /* expert calls outstanding that the tick waits for */
    spec_call spec[STRAT_MAX_EXPERTS];
    spec_ref spec_ud;
    int failed_experts[STRAT_MAX_EXPERTS];
    char fail_msg[STRAT_MAX_EXPERTS][160];
    int fail_status[STRAT_MAX_EXPERTS];
    const char *fail_code[STRAT_MAX_EXPERTS];
    int plan_rc;
    uint64_t start_ns, calls_ns, replies_ns;
    uv_work_t work;
};

struct engine {
    uv_loop_t *loop;
    pool *pl;
    const model *router;
    int K, dim, width, height;
    engine_config cfg;
    int n_ready;             /* trajectories waiting in the jobs' ready rings */
    uint64_t next_seq, serve_counter;
    engine_job **order;      /* [max_images] scratch: live jobs in scheduling order */
    tick_slot slots[MAX_TICKS];
    int n_slots;
    engine_job *jobs;        /* live jobs, newest first */
    uv_timer_t timer;
    uv_idle_t idle;          /* runs small ticks' tick_finish (on_idle) */
    int handles_open;        /* timer and idle, until their close callbacks ran */
    engine_stats st;
    engine_eval_fn obs;      /* every job's evaluation observer, or NULL */
    void *obs_ud;
    uint64_t failed_ns[STRAT_MAX_EXPERTS]; /* when a call of expert k last failed */
    int closing;
    int close_failed;        /* the jobs outstanding at engine_close were failed */
    void (*close_cb)(void *);
    void *close_ud;
};

void engine_config_default(engine_config *c)
{
    c->max_images = 1024;
    c->tick_capacity = 256;
    c->ticks_in_flight = 2;
    c->router_threads = 1;
    c->request_timeout_ms = 300000;
    c->max_request_cost = ENGINE_DEFAULT_MAX_COST;
    c->tick_rows = ENGINE_DEFAULT_TICK_ROWS;
    c->share_rows = ENGINE_DEFAULT_SHARE_ROWS;
    c->age_ms = 1000;
    c->speculate = 1;
    c->inline_trajs = ENGINE_DEFAULT_INLINE_TRAJS;
    c->substitute_queue_rows = ENGINE_DEFAULT_SUBSTITUTE_ROWS;
}

static void schedule(engine *e, int inline_ok);
static void close_maybe_finish(engine *e);
static void on_idle(uv_idle_t *h);

/* ---- jobs ------------------------------------------------------------------------------ */

static void job_free(engine_job *j)
{
    engine *e = j->e;
    if (j->prev)
        j->prev->next = j->next;
    else if (e->jobs == j)
        e->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    for (int i = 0; i < j->p.n; i++)
        traj_free(j->trajs[i]);
    free(j->trajs);
    free(j->ready);
    e->st.images_in_flight -= j->p.n;
    free(j);
}

static void ready_push(engine_job *j, traj *tr)
{
    j->ready[(j->rhead + j->rlen) % j->p.n] = tr;
    j->rlen++;
    j->e->n_ready++;
}

static traj *ready_pop(engine_job *j)
{
    traj *tr = j->ready[j->rhead];
    j->rhead = (j->rhead + 1) % j->p.n;
    j->rlen--;
    j->e->n_ready--;
    return tr;
}

/* Drops a dead job's waiting trajectories (no tick will take them). */
static void ready_drop(engine_job *j)
{
    while (j->rlen > 0) {
        ready_pop(j);
        j->active--;
    }
}

static void job_maybe_free(engine_job *j)
{
    if (!j->owner_holds && j->active == 0)
        job_free(j);
}

static void job_fail(engine_job *j, int status, const char *code, const char *msg)
{
    if (j->dead)
        return;
    j->dead = 1;
    j->e->st.jobs_failed++;
    if (j->owner_holds && !j->done_called) {
        j->done_called = 1;
        j->done(j, j->ud, status, code, msg, NULL);
    }
}

int engine_check(const engine *e, const sample_params *p, const char **code, char *err,
                 size_t errlen)
{
    if (code)
        *code = p->n > e->cfg.max_images ? "too_many_images" : "too_much_work";
    if (p->n > e->cfg.max_images)
        return ddm_errf(err, errlen, DDM_ERANGE,
                        "n = %d can never be served here: this router holds at most %d images "
                        "at once (--max-images); ask for fewer images", p->n, e->cfg.max_images);
    uint64_t cost = sample_cost(p, e->K);
    if (cost > e->cfg.max_request_cost) {
        char how[160];
        sample_cost_explain(p, e->K, how, sizeof how);
        return ddm_errf(err, errlen, DDM_ERANGE,
                        "this request costs %llu expert evaluations (%s), over this router's "
                        "limit of %llu (--max-request-cost): ask for fewer images, steps or "
                        "experts", (unsigned long long)cost, how,
                        (unsigned long long)e->cfg.max_request_cost);
    }
    return 0;
}

int engine_submit(engine *e, const sample_params *p, engine_done_fn done, void *ud,
                  engine_job **out)
{
    if (e->closing)
        return DDM_ECLOSED;
    if (p->n < 1 || engine_check(e, p, NULL, NULL, 0))
        return DDM_ERANGE;
    if (e->st.images_in_flight + p->n > e->cfg.max_images) {
        e->st.jobs_busy++;
        return DDM_EBUSY;
    }
    engine_job *j = calloc(1, sizeof *j);
    if (!j)
        return DDM_ENOMEM;
    j->e = e;
    j->p = *p;
    j->trajs = calloc((size_t)p->n, sizeof *j->trajs);
    j->ready = calloc((size_t)p->n, sizeof *j->ready);
    if (!j->trajs || !j->ready) {
        free(j->trajs);
        free(j->ready);
        free(j);
        return DDM_ENOMEM;
    }
    for (int i = 0; i < p->n; i++) {
        j->trajs[i] = traj_new(&j->p, i, e->dim);
        if (!j->trajs[i]) {
            for (int k = 0; k < i; k++)
                traj_free(j->trajs[k]);
            free(j->trajs);
            free(j->ready);
            free(j);
            return DDM_ENOMEM;
        }
        j->trajs[i]->owner = j;
    }
    j->done = done;
    j->ud = ud;
    j->owner_holds = 1;
    j->admit_ns = j->served_ns = uv_hrtime();
    j->deadline_ns = j->admit_ns + (uint64_t)e->cfg.request_timeout_ms * 1000000ull;
    j->seq = e->next_seq++;
    j->served_seq = ++e->serve_counter; /* joins the end of the round */
    j->rows_bound = sample_rows_per_eval(&j->p, e->K);
    j->next = e->jobs;
    if (e->jobs)
        e->jobs->prev = j;
    e->jobs = j;
    e->st.images_in_flight += p->n;
    for (int i = 0; i < p->n; i++) {
        ready_push(j, j->trajs[i]);
        j->active++;
    }
    *out = j;
    schedule(e, 0); /* never plans here: nothing may call back before this returns */
    return 0;
}

void engine_job_cancel(engine_job *j)
{
    engine *e = j->e;
    if (!j->dead)
        e->st.jobs_cancelled++;
    j->dead = 1;
    j->owner_holds = 0;
    ready_drop(j); /* what waits goes now; what is in a tick goes when the tick returns */
    job_maybe_free(j);
    close_maybe_finish(e);
}

void engine_job_release(engine_job *j)
{
    engine *e = j->e;
    j->owner_holds = 0;
    job_maybe_free(j);
    close_maybe_finish(e);
}

/* ---- ticks ------------------------------------------------------------------------------- */

static void plan_work(uv_work_t *w)
{
    tick_slot *s = w->data;
    s->plan_rc = tick_plan(s->tk, s->batch, s->n);
}

static void finish_work(uv_work_t *w)
{
    tick_slot *s = w->data;
    tick_finish(s->tk);
}

static void after_finish(uv_work_t *w, int status);

/* Whether a failure of expert k in this tick may be answered by evaluating
 * tr again (its request substitutes, and it has not failed REDO_MAX times in
 * a row): the next plan sees k unusable and picks another. */
static int can_redo(const traj *tr)
{
    const engine_job *j = tr->owner;
    return j->p.substitute && tr->redo < REDO_MAX;
}

static void complete_tick(tick_slot *s)
{
    s->replies_ns = uv_hrtime();
    /* trajectories of failed experts' jobs fail their jobs (503/504), or are
     * evaluated again when their request substitutes */
    for (int i = 0; i < s->n; i++) {
        traj *tr = s->batch[i];
        engine_job *j = tr->owner;
        s->redo[i] = 0;
        for (int q = 0; q < tr->n_sel && !j->dead; q++) {
            int k = tr->sel[q];
            if (!s->failed_experts[k])
                continue;
            if (can_redo(tr)) {
                s->redo[i] = 1;
                tick_skip(s->tk, i);
                break;
            }
            job_fail(j, s->fail_status[k], s->fail_code[k], s->fail_msg[k]);
        }
    }
    /* A small tick combines on the loop thread (a threadpool hop costs more
     * than the work), but never from inside this call chain: complete_tick
     * runs inside the pool's callbacks and after_plan, and after_finish calls
     * done, schedules and calls the pool again. on_idle runs it once the
     * callback stack has unwound, in the next loop iteration (the idle
     * handle makes that iteration's poll not block). */
    if (s->n <= s->e->cfg.inline_trajs ||
        uv_queue_work(s->e->loop, &s->work, finish_work, after_finish)) {
        s->finish_here = 1;
        uv_idle_start(&s->e->idle, on_idle);
    }
}

/* Combines the ticks complete_tick left to the loop thread (top of the
 * stack: after_finish may call done, schedule and call the pool). */
static void on_idle(uv_idle_t *h)
{
    engine *e = h->data;
    uv_idle_stop(h); /* started again by any tick that completes meanwhile */
    for (int i = 0; i < e->n_slots; i++) {
        tick_slot *s = &e->slots[i];
        if (!s->finish_here)
            continue;
        s->finish_here = 0;
        tick_finish(s->tk);
        after_finish(&s->work, 0);
    }
}

/* Expert k failed this tick (status a ddm_err, msg naming it). */
static void expert_failed(tick_slot *s, int k, int status, const char *msg)
{
    engine *e = s->e;
    s->failed_experts[k] = 1;
    /* a failure the replicas' states do not show (a deadline, a worker's
     * error): substitution avoids the expert for a while */
    if (!e->closing && status != DDM_ECLOSED && pool_live_replicas(e->pl, k) > 0)
        e->failed_ns[k] = uv_hrtime();
    s->fail_status[k] = status == DDM_ETIMEDOUT ? 504 : 503;
    s->fail_code[k] = status == DDM_ETIMEDOUT   ? "expert_timeout"
                      : status == DDM_ECLOSED ? "shutting_down"
                                              : "expert_unavailable";
    if (status == DDM_ECLOSED)
        msg = "the router is shutting down: retry elsewhere";
    snprintf(s->fail_msg[k], sizeof s->fail_msg[k], "%s", msg ? msg : ddm_strerror(status));
}

static void on_expert_done(void *ud, int k, int status, const char *msg)
{
    tick_slot *s = ud;
    if (status)
        expert_failed(s, k, status, msg);
    if (--s->pending == 0)
        complete_tick(s);
}

/* A speculative call is back. Before the plan, only its outcome is noted
 * (after_plan decides what it was worth); after it, the tick was waiting for
 * it: a failure counts only if its rows were used. */
static void on_spec_done(void *ud, int k, int status, const char *msg)
{
    tick_slot *s = ((spec_ref *)ud)->s;
    spec_call *sc = &s->spec[k];
    sc->state = status ? SPEC_FAILED : SPEC_OK;
    if (status && (!s->planned || sc->needed)) /* kept for after_plan, or used */
        expert_failed(s, k, status, msg);
    if (!s->planned)
        return;
    if (--s->pending == 0)
        complete_tick(s);
}

/* Sends each expert the rows of the trajectories whose previous evaluation
 * selected it (tick_speculate), before the plan. An expert that cannot take
 * them now is left to the plan. */
static void speculate(engine *e, tick_slot *s)
{
    if (!tick_speculate(s->tk, s->batch, s->n))
        return;
    for (int k = 0; k < e->K; k++) {
        const float *x, *t;
        const int *lab;
        int rows = tick_spec_rows(s->tk, k, &x, &t, &lab);
        if (rows == 0)
            continue;
        int rc = pool_call(e->pl, k, rows, x, t, lab, tick_spec_out(s->tk, k), on_spec_done,
                           &s->spec_ud, &s->spec[k].id);
        if (rc) {
            tick_spec_withdraw(s->tk, k);
            continue;
        }
        s->spec[k].state = SPEC_SENT;
        e->st.spec_calls++;
        e->st.expert_calls++;
        e->st.tick_rows += (uint64_t)rows;
    }
}

/* After the plan: the speculative calls whose rows it used are waited for
 * (as are all while closing: the pool may not be called then), the others
 * dropped. keep 0: none is used (the tick makes no calls). */
static void settle_spec(engine *e, tick_slot *s, int keep)
{
    for (int k = 0; k < e->K; k++) {
        spec_call *sc = &s->spec[k];
        if (sc->state == SPEC_NONE)
            continue;
        sc->needed = keep && tick_spec_used(s->tk, k) > 0;
        if (sc->state == SPEC_FAILED && !sc->needed)
            s->failed_experts[k] = 0; /* its failure touched no row the tick uses */
        if (sc->state != SPEC_SENT)
            continue;
        if (sc->needed || e->closing) {
            s->pending++;
        } else {
            pool_cancel(e->pl, sc->id);
            sc->state = SPEC_DROPPED;
            e->st.spec_calls_dropped++;
        }
    }
}

static void after_plan(uv_work_t *w, int status)
{
    (void)status;
    tick_slot *s = w->data;
    engine *e = s->e;
    s->planned = 1;
    s->pending = 1; /* held until every call is out */
    if (s->plan_rc) {
        /* cannot plan (bug or corrupt state): fail everything in the tick */
        for (int i = 0; i < s->n; i++)
            job_fail(s->batch[i]->owner, 500, "internal", "routing failed for this batch");
        settle_spec(e, s, 0);
        memset(s->failed_experts, 0, sizeof s->failed_experts);
        if (--s->pending == 0)
            complete_tick(s);
        return;
    }
    int live = 0;
    for (int i = 0; i < s->n && !live; i++)
        live = !((engine_job *)s->batch[i]->owner)->dead;
    if (!live) { /* every job in it was cancelled or failed while it was planned */
        settle_spec(e, s, 0);
        if (--s->pending == 0)
            complete_tick(s); /* no expert call: their trajectories are dropped */
        return;
    }
    e->st.router_us_sum += tick_router_us(s->tk);
    for (int i = 0; i < s->n; i++) /* each trajectory's share of the router network */
        ((engine_job *)s->batch[i]->owner)->router_us += tick_router_us(s->tk) / s->n;
    s->calls_ns = uv_hrtime();
    settle_spec(e, s, 1);
    tick_spec_stats ss;
    tick_spec_get_stats(s->tk, &ss);
    e->st.spec_evals_hit += (uint64_t)ss.evals_hit;
    e->st.spec_evals_miss += (uint64_t)ss.evals_miss;
    e->st.spec_rows_hit += (uint64_t)ss.rows_hit;
    e->st.spec_rows_miss += (uint64_t)ss.rows_miss;
    e->st.spec_rows_wasted += (uint64_t)ss.rows_wasted;
    /* Largest calls first: workers that share cores start the longest jobs
     * first, so the tick does not end on one big call running alone. */
    int order[STRAT_MAX_EXPERTS];
    tick_experts_by_rows(s->tk, order);
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < e->K; i++) {
        const int k = order[i];
        const float *x, *t;
        const int *lab;
        int rows = tick_rows(s->tk, k, &x, &t, &lab);
        if (rows == 0)
            continue;
        if (e->closing) { /* the pool may be closing too: never call it again */
            s->pending++;
            on_expert_done(s, k, DDM_ECLOSED, "the router is shutting down: retry elsewhere");
            continue;
        }
        e->st.expert_calls++;
        e->st.tick_rows += (uint64_t)rows;
        s->pending++;
        int rc = pool_call(e->pl, k, rows, x, t, lab, tick_out(s->tk, k), on_expert_done, s,
                           NULL);
        if (rc) {
            char msg[160];
            snprintf(msg, sizeof msg, "expert %d has no live replica: start one or check /readyz", k);
            on_expert_done(s, k, rc == DDM_EUNAVAIL ? DDM_EUNAVAIL : rc,
                           rc == DDM_EUNAVAIL ? msg : ddm_strerror(rc));
        }
    }
    e->st.send_us_sum += (double)(uv_hrtime() - t0) / 1e3;
    if (--s->pending == 0)
        complete_tick(s);
}

static void after_finish(uv_work_t *w, int status)
{
    (void)status;
    tick_slot *s = w->data;
    engine *e = s->e;
    uint64_t now = uv_hrtime();
    double wall = (double)(now - s->start_ns) / 1e3;
    double wait = (double)(s->replies_ns - s->calls_ns) / 1e3;
    e->st.ticks++;
    e->st.overhead_us_sum += wall - wait;
    e->st.expert_wait_us_sum += wait;
    e->st.finish_us_sum += (double)(now - s->replies_ns) / 1e3;
    for (int i = 0; i < s->n; i++) {
        traj *tr = s->batch[i];
        engine_job *j = tr->owner;
        j->expert_us += wait;
        j->rows_in_flight -= s->charged[i];
        if (j->dead) {
            j->active--;
            job_maybe_free(j);
            continue;
        }
        if (s->redo[i]) { /* an expert failed: this evaluation again, another expert */
            tr->redo++;
            e->st.evals_redone++;
            ready_push(j, tr);
            continue;
        }
        tr->redo = 0;
        e->st.substitutions += (uint64_t)tr->n_sub;
        if (e->obs)
            e->obs(e->obs_ud, tr);
        if (j->obs)
            j->obs(j->obs_ud, tr);
        if (!tr->done) {
            ready_push(j, tr);
            continue;
        }
        j->active--;
        if (++j->n_done == j->p.n) {
            j->result = (api_result){
                .p = &j->p, .K = e->K, .width = e->width, .height = e->height,
                .channels = e->dim / (e->width * e->height), /* dim = H x W x C */
                .trajs = j->trajs,
                .queue_ms = (double)(j->first_ns - j->admit_ns) / 1e6,
                .total_ms = (double)(now - j->admit_ns) / 1e6,
                .router_ms = j->router_us / 1e3,
                .expert_ms = j->expert_us / 1e3 / j->p.n,
            };
            e->st.jobs_ok++;
            j->done_called = 1;
            j->done(j, j->ud, 0, NULL, NULL, &j->result);
        }
    }
    s->busy = 0;
    e->st.ticks_running--;
    if (e->closing) {
        close_maybe_finish(e);
        return;
    }
    schedule(e, 1);
}

/* Rows one more evaluation of tr will cost: what its last evaluation selected
 * (the strategy's bound before the first), twice with guidance. */
static int traj_rows(const engine_job *j, const traj *tr)
{
    if (tr->evals == 0 || tr->n_sel == 0)
        return j->rows_bound;
    int guided = j->p.label >= 0 && j->p.guidance != 1.0f;
    return tr->n_sel * (guided ? 2 : 1);
}

/* A job's effective priority at time now: its priority plus one for every
 * age_ms since a tick last took any of it (ageing). */
static int job_eff(const engine *e, const engine_job *j, uint64_t now)
{
    const uint64_t age_ns = (uint64_t)(e->cfg.age_ms ? e->cfg.age_ms : 1) * 1000000ull;
    uint64_t waited = now > j->served_ns ? (now - j->served_ns) / age_ns : 0;
    long eff = (long)j->p.priority + (long)(waited > 1000000 ? 1000000 : waited);
    return eff > INT_MAX ? INT_MAX : eff < INT_MIN ? INT_MIN : (int)eff;
}

/* Scheduling order: whether x (effective priority ex) comes before y (ey):
 * higher effective priority first, then the job a tick served longest ago
 * (round robin), then arrival. */
static int runs_before(const engine_job *x, int ex, const engine_job *y, int ey)
{
    if (ex != ey)
        return ex > ey;
    if (x->served_seq != y->served_seq)
        return x->served_seq < y->served_seq;
    return x->seq < y->seq;
}

static int job_cmp(const void *a, const void *b)
{
    const engine_job *x = *(engine_job *const *)a, *y = *(engine_job *const *)b;
    return runs_before(x, x->eff, y, y->eff) ? -1 : runs_before(y, y->eff, x, x->eff);
}

/* Rows a job in flight would put into ticks if nothing held it back. */
static long job_demand(const engine_job *j)
{
    return (long)j->active * j->rows_bound;
}

/* Moves up to max ready trajectories of j into s, within the tick's capacity
 * and row budget and j's limit on rows in flight (but at least one
 * trajectory of a job with none in flight, and one per tick). */
static void take(engine *e, tick_slot *s, engine_job *j, int max, long limit, int *rows,
                 uint64_t now)
{
    int taken = 0;
    long mine = j->rows_in_flight;
    while (taken < max && j->rlen > 0 && s->n < e->cfg.tick_capacity) {
        traj *tr = j->ready[j->rhead];
        int r = traj_rows(j, tr);
        if (s->n > 0 && *rows + r > e->cfg.tick_rows)
            break;
        if (mine > 0 && mine + r > limit)
            break;
        ready_pop(j);
        s->charged[s->n] = r;
        s->batch[s->n++] = tr;
        *rows += r;
        mine += r;
        taken++;
    }
    j->rows_in_flight = (int)mine;
    if (taken) {
        j->served_ns = now;
        j->served_seq = ++e->serve_counter;
        if (!j->first_ns)
            j->first_ns = now;
    }
}

/* Fills slot s from the jobs' ready trajectories (the rules are in engine.h,
 * "Scheduling"). Level by level of effective priority, highest first; within
 * a level, first every job its even share of the capacity left, in round-robin
 * order, then what is still free in the same order. */
static void fill_tick(engine *e, tick_slot *s, uint64_t now)
{
    int n_live = 0;
    for (engine_job *j = e->jobs, *next; j; j = next) {
        next = j->next;
        if (j->dead) {
            ready_drop(j);
            job_maybe_free(j);
            continue;
        }
        if (j->active == 0)
            continue; /* finished: waiting for its owner */
        j->eff = job_eff(e, j, now);
        e->order[n_live++] = j;
    }
    qsort(e->order, (size_t)n_live, sizeof *e->order, job_cmp);
    int rows = 0;
    long top1 = -1, top2 = -1; /* the two largest demands in order[0..b) */
    int top1_i = -1;
    for (int a = 0, b; a < n_live; a = b) {
        for (b = a; b < n_live && e->order[b]->eff == e->order[a]->eff; b++) {
            long d = job_demand(e->order[b]);
            if (d > top1) {
                top2 = top1;
                top1 = d;
                top1_i = b;
            } else if (d > top2) {
                top2 = d;
            }
        }
        if (s->n >= e->cfg.tick_capacity || rows >= e->cfg.tick_rows)
            break;
        /* a job with another live job at its level or above is held back to
         * the larger of share_rows and the largest demand among those others */
        long limit[2];
        for (int i = 0; i < 2; i++) {
            long other = i ? top1 : top2; /* i = 1: not the largest itself */
            limit[i] = other > e->cfg.share_rows ? other : e->cfg.share_rows;
        }
        int runnable = 0;
        for (int i = a; i < b; i++)
            runnable += e->order[i]->rlen > 0;
        for (int pass = 0; pass < 2; pass++)
            for (int i = a; i < b && s->n < e->cfg.tick_capacity; i++) {
                engine_job *j = e->order[i];
                if (j->rlen == 0)
                    continue;
                long lim = b == 1 ? LONG_MAX : limit[i != top1_i];
                int quota = e->cfg.tick_capacity - s->n;
                if (pass == 0) { /* even share of what is left */
                    quota = (quota + runnable - 1) / runnable;
                    runnable--;
                }
                take(e, s, j, quota, lim, &rows, now);
            }
    }
}

/* Which experts requests that substitute may use in a tick planned now: a
 * live replica, at most substitute_queue_rows rows outstanding at the one
 * that would get the rows, and no failed call in the last FAILED_UNUSABLE_MS. */
static void set_usable(engine *e, tick_slot *s, uint64_t now)
{
    unsigned char usable[STRAT_MAX_EXPERTS];
    const uint64_t recent = (uint64_t)FAILED_UNUSABLE_MS * 1000000ull;
    for (int k = 0; k < e->K; k++) {
        int q = pool_queue_rows(e->pl, k);
        usable[k] = q >= 0 && q <= e->cfg.substitute_queue_rows &&
                    !(e->failed_ns[k] && now - e->failed_ns[k] < recent);
    }
    tick_set_usable(s->tk, usable);
}

/* inline_ok: a small tick may be planned right here, on the loop thread (the
 * router network over a few rows costs less than a threadpool hop; the
 * speculative calls are out already). */
static void start_tick(engine *e, tick_slot *s, int inline_ok)
{
    s->n = 0;
    uint64_t now = uv_hrtime();
    fill_tick(e, s, now);
    if (s->n == 0)
        return;
    s->busy = 1;
    s->start_ns = now;
    s->planned = 0;
    s->pending = 0;
    memset(s->spec, 0, sizeof s->spec);
    memset(s->failed_experts, 0, sizeof s->failed_experts);
    e->st.ticks_running++;
    set_usable(e, s, now);
    if (e->cfg.speculate) {
        uint64_t t0 = uv_hrtime();
        speculate(e, s);
        e->st.spec_send_us_sum += (double)(uv_hrtime() - t0) / 1e3;
    }
    if ((inline_ok && s->n <= e->cfg.inline_trajs) ||
        uv_queue_work(e->loop, &s->work, plan_work, after_plan)) {
        s->plan_rc = tick_plan(s->tk, s->batch, s->n);
        after_plan(&s->work, 0);
    }
}

static void schedule(engine *e, int inline_ok)
{
    if (e->closing)
        return;
    for (int i = 0; i < e->n_slots && e->n_ready > 0; i++)
        if (!e->slots[i].busy)
            start_tick(e, &e->slots[i], inline_ok);
}

static void on_timer(uv_timer_t *t)
{
    engine *e = t->data;
    uint64_t now = uv_hrtime();
    for (engine_job *j = e->jobs, *next; j; j = next) {
        next = j->next;
        if (!j->dead && !j->done_called && now > j->deadline_ns) {
            char msg[128];
            snprintf(msg, sizeof msg, "request took longer than %u ms: ask for fewer images or steps",
                     e->cfg.request_timeout_ms);
            job_fail(j, 504, "timeout", msg);
        }
    }
}

int engine_new(uv_loop_t *loop, pool *pl, const model *router, int K, int dim, int width,
               int height, const engine_config *cfg, engine **out, char *err, size_t errlen)
{
    if (width < 1 || height < 1 || dim % (width * height))
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "image size %dx%d does not divide the model's dimension %d", width, height,
                        dim);
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    e->loop = loop;
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
    uv_idle_init(loop, &e->idle);
    e->idle.data = e;
    e->handles_open = 2;
    e->pl = pl;
    e->router = router;
    e->K = K;
    e->dim = dim;
    e->width = width;
    e->height = height;
    e->cfg = *cfg;
    if (e->cfg.ticks_in_flight < 1)
        e->cfg.ticks_in_flight = 1;
    if (e->cfg.ticks_in_flight > MAX_TICKS)
        e->cfg.ticks_in_flight = MAX_TICKS;
    e->n_slots = e->cfg.ticks_in_flight;
    if (e->cfg.tick_rows < 1)
        e->cfg.tick_rows = 1;
    if (e->cfg.share_rows < 1)
        e->cfg.share_rows = 1;
    if (e->cfg.max_images < 1)
        e->cfg.max_images = 1;
    e->order = calloc((size_t)e->cfg.max_images, sizeof *e->order);
    if (!e->order)
        goto oom;
    for (int i = 0; i < e->n_slots; i++) {
        tick_slot *s = &e->slots[i];
        s->e = e;
        s->work.data = s;
        s->tk = tick_new(K, dim, e->cfg.tick_capacity, router, err, errlen);
        s->spec_ud.s = s;
        s->batch = calloc((size_t)e->cfg.tick_capacity, sizeof *s->batch);
        s->charged = calloc((size_t)e->cfg.tick_capacity, sizeof *s->charged);
        s->redo = calloc((size_t)e->cfg.tick_capacity, 1);
        if (!s->tk || !s->batch || !s->charged || !s->redo ||
            tick_set_router_threads(s->tk, e->cfg.router_threads)) {
            engine_close(e, NULL, NULL);
            return DDM_ENOMEM;
        }
    }
    uv_timer_start(&e->timer, on_timer, 100, 100);
    *out = e;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    engine_close(e, NULL, NULL);
    return DDM_ENOMEM;
}

void engine_set_eval_observer(engine *e, engine_eval_fn fn, void *ud)
{
    e->obs = fn;
    e->obs_ud = ud;
}

void engine_job_observe(engine_job *j, engine_eval_fn fn, void *ud)
{
    j->obs = fn;
    j->obs_ud = ud;
}

int engine_job_queue_position(const engine_job *j)
{
    if (j->first_ns || j->dead)
        return -1;
    const engine *e = j->e;
    uint64_t now = uv_hrtime();
    int mine = job_eff(e, j, now), pos = 0;
    for (const engine_job *o = e->jobs; o; o = o->next)
        pos += o != j && !o->dead && !o->first_ns && o->active > 0 &&
               runs_before(o, job_eff(e, o, now), j, mine);
    return pos;
}

int engine_jobs_queued(const engine *e)
{
    int n = 0;
    for (const engine_job *o = e->jobs; o; o = o->next)
        n += !o->dead && !o->first_ns && o->active > 0;
    return n;
}

void engine_get_stats(const engine *e, engine_stats *out)
{
    *out = e->st;
    out->ready = e->n_ready;
}

static void handle_closed(uv_handle_t *h)
{
    engine *e = h->data;
    if (--e->handles_open > 0)
        return;
    void (*cb)(void *) = e->close_cb;
    void *ud = e->close_ud;
    for (int i = 0; i < e->n_slots; i++) {
        tick_free(e->slots[i].tk);
        free(e->slots[i].batch);
        free(e->slots[i].charged);
        free(e->slots[i].redo);
    }
    free(e->order);
    free(e);
    if (cb)
        cb(ud);
}

/* Frees the engine once closing, the outstanding jobs were failed, no tick is
 * running and every job is gone (released or cancelled by its owner). */
static void close_maybe_finish(engine *e)
{
    if (!e->closing || !e->close_failed || e->st.ticks_running > 0)
        return;
    /* drop what is waiting: no tick will take it */
    for (engine_job *j = e->jobs, *next; j; j = next) {
        next = j->next;
        ready_drop(j);
        job_maybe_free(j);
    }
    if (e->jobs || uv_is_closing((uv_handle_t *)&e->timer))
        return; /* owners still hold results: their release calls back in */
    uv_close((uv_handle_t *)&e->timer, handle_closed);
    uv_close((uv_handle_t *)&e->idle, handle_closed);
}

/* The first loop iteration after engine_close: fail what is outstanding. */
static void on_close_timer(uv_timer_t *t)
{
    engine *e = t->data;
    /* close_failed is still 0, so a release inside done frees only that job */
    for (engine_job *j = e->jobs, *next; j; j = next) {
        next = j->next;
        job_fail(j, 503, "shutting_down", "the router is shutting down: retry elsewhere");
    }
    e->close_failed = 1;
    close_maybe_finish(e);
}

void engine_close(engine *e, void (*cb)(void *ud), void *ud)
{
    if (e->closing)
        return;
    e->closing = 1;
    e->close_cb = cb;
    e->close_ud = ud;
    uv_timer_stop(&e->timer);
    uv_timer_start(&e->timer, on_close_timer, 0, 0);
}
