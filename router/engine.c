/* engine.c -- step-level continuous batching over remote experts (see engine.h). */
#include "router/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"

#define MAX_TICKS 8

struct engine_job {
    engine *e;
    sample_params p;
    traj **trajs;
    int n_done;
    int active;              /* trajectories in the FIFO or in a tick */
    int dead;                /* failed or cancelled: drop its trajectories */
    int owner_holds;         /* the caller still holds it (until cancel/release) */
    int done_called;
    engine_done_fn done;
    void *ud;
    engine_eval_fn obs;      /* this job's evaluation observer, or NULL */
    void *obs_ud;
    uint64_t admit_ns, first_ns, deadline_ns;
    double router_us, expert_us;
    engine_job *prev, *next; /* list of live jobs (for timeouts) */
};

typedef struct tick_slot {
    engine *e;
    tick *tk;
    traj **batch;
    int n;
    int busy;
    int pending;             /* expert calls outstanding */
    int failed_experts[STRAT_MAX_EXPERTS];
    char fail_msg[STRAT_MAX_EXPERTS][160];
    int fail_status[STRAT_MAX_EXPERTS];
    int plan_rc;
    uint64_t start_ns, calls_ns, replies_ns;
    uv_work_t work;
} tick_slot;

struct engine {
    uv_loop_t *loop;
    pool *pl;
    const model *router;
    int K, dim, width, height;
    engine_config cfg;
    traj **fifo;             /* ring of ready trajectories */
    int fifo_cap, fifo_head, fifo_len;
    tick_slot slots[MAX_TICKS];
    int n_slots;
    engine_job *jobs;        /* live jobs, newest first */
    uv_timer_t timer;
    engine_stats st;
    engine_eval_fn obs;      /* every job's evaluation observer, or NULL */
    void *obs_ud;
    int closing;
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
}

static void schedule(engine *e);

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
    e->st.images_in_flight -= j->p.n;
    free(j);
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

int engine_submit(engine *e, const sample_params *p, engine_done_fn done, void *ud,
                  engine_job **out)
{
    if (e->closing)
        return DDM_ECLOSED;
    if (e->st.images_in_flight + p->n > e->cfg.max_images) {
        e->st.jobs_busy++;
        return DDM_EBUSY;
    }
    if (e->fifo_len + p->n > e->fifo_cap)
        return DDM_EBUSY; /* cannot happen while fifo_cap >= max_images */
    engine_job *j = calloc(1, sizeof *j);
    if (!j)
        return DDM_ENOMEM;
    j->e = e;
    j->p = *p;
    j->trajs = calloc((size_t)p->n, sizeof *j->trajs);
    if (!j->trajs) {
        free(j);
        return DDM_ENOMEM;
    }
    for (int i = 0; i < p->n; i++) {
        j->trajs[i] = traj_new(&j->p, i, e->dim);
        if (!j->trajs[i]) {
            for (int k = 0; k < i; k++)
                traj_free(j->trajs[k]);
            free(j->trajs);
            free(j);
            return DDM_ENOMEM;
        }
        j->trajs[i]->owner = j;
    }
    j->done = done;
    j->ud = ud;
    j->owner_holds = 1;
    j->admit_ns = uv_hrtime();
    j->deadline_ns = j->admit_ns + (uint64_t)e->cfg.request_timeout_ms * 1000000ull;
    j->next = e->jobs;
    if (e->jobs)
        e->jobs->prev = j;
    e->jobs = j;
    e->st.images_in_flight += p->n;
    for (int i = 0; i < p->n; i++) {
        e->fifo[(e->fifo_head + e->fifo_len) % e->fifo_cap] = j->trajs[i];
        e->fifo_len++;
        j->active++;
    }
    *out = j;
    schedule(e);
    return 0;
}

void engine_job_cancel(engine_job *j)
{
    if (!j->dead)
        j->e->st.jobs_cancelled++;
    j->dead = 1;
    j->owner_holds = 0;
    job_maybe_free(j);
}

void engine_job_release(engine_job *j)
{
    j->owner_holds = 0;
    job_maybe_free(j);
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

static void complete_tick(tick_slot *s)
{
    s->replies_ns = uv_hrtime();
    /* trajectories of failed experts' jobs fail their jobs (503/504) */
    for (int i = 0; i < s->n; i++) {
        traj *tr = s->batch[i];
        engine_job *j = tr->owner;
        for (int q = 0; q < tr->n_sel && !j->dead; q++) {
            int k = tr->sel[q];
            if (s->failed_experts[k])
                job_fail(j, s->fail_status[k],
                         s->fail_status[k] == 504 ? "expert_timeout" : "expert_unavailable",
                         s->fail_msg[k]);
        }
    }
    int rc = uv_queue_work(s->e->loop, &s->work, finish_work, after_finish);
    if (rc) { /* cannot happen with a live loop; finish inline rather than lose work */
        tick_finish(s->tk);
        after_finish(&s->work, 0);
    }
}

static void on_expert_done(void *ud, int k, int status, const char *msg)
{
    tick_slot *s = ud;
    if (status) {
        s->failed_experts[k] = 1;
        s->fail_status[k] = status == DDM_ETIMEDOUT ? 504 : 503;
        snprintf(s->fail_msg[k], sizeof s->fail_msg[k], "%s", msg ? msg : ddm_strerror(status));
    }
    if (--s->pending == 0)
        complete_tick(s);
}

static void after_plan(uv_work_t *w, int status)
{
    (void)status;
    tick_slot *s = w->data;
    engine *e = s->e;
    memset(s->failed_experts, 0, sizeof s->failed_experts);
    if (s->plan_rc) {
        /* cannot plan (bug or corrupt state): fail everything in the tick */
        for (int i = 0; i < s->n; i++)
            job_fail(s->batch[i]->owner, 500, "internal", "routing failed for this batch");
        for (int k = 0; k < e->K; k++)
            s->failed_experts[k] = 0;
        s->pending = 0;
        complete_tick(s);
        return;
    }
    e->st.router_us_sum += tick_router_us(s->tk);
    for (int i = 0; i < s->n; i++) /* each trajectory's share of the router network */
        ((engine_job *)s->batch[i]->owner)->router_us += tick_router_us(s->tk) / s->n;
    s->calls_ns = uv_hrtime();
    s->pending = 1; /* held until every call is out */
    /* Largest calls first: workers that share cores start the longest jobs
     * first, so the tick does not end on one big call running alone. */
    int order[STRAT_MAX_EXPERTS];
    tick_experts_by_rows(s->tk, order);
    for (int i = 0; i < e->K; i++) {
        const int k = order[i];
        const float *x, *t;
        const int *lab;
        int rows = tick_rows(s->tk, k, &x, &t, &lab);
        if (rows == 0)
            continue;
        e->st.expert_calls++;
        e->st.tick_rows += (uint64_t)rows;
        s->pending++;
        int rc = pool_call(e->pl, k, rows, x, t, lab, tick_out(s->tk, k), on_expert_done, s);
        if (rc) {
            char msg[160];
            snprintf(msg, sizeof msg, "expert %d has no live replica: start one or check /readyz", k);
            on_expert_done(s, k, rc == DDM_EUNAVAIL ? DDM_EUNAVAIL : rc,
                           rc == DDM_EUNAVAIL ? msg : ddm_strerror(rc));
        }
    }
    if (--s->pending == 0)
        complete_tick(s);
}

static void fifo_push(engine *e, traj *tr)
{
    e->fifo[(e->fifo_head + e->fifo_len) % e->fifo_cap] = tr;
    e->fifo_len++;
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
    for (int i = 0; i < s->n; i++) {
        traj *tr = s->batch[i];
        engine_job *j = tr->owner;
        j->expert_us += wait;
        if (j->dead) {
            j->active--;
            job_maybe_free(j);
            continue;
        }
        if (e->obs)
            e->obs(e->obs_ud, tr);
        if (j->obs)
            j->obs(j->obs_ud, tr);
        if (!tr->done) {
            fifo_push(e, tr);
            continue;
        }
        j->active--;
        if (++j->n_done == j->p.n) {
            api_result r = {
                .p = &j->p, .K = e->K, .width = e->width, .height = e->height,
                .trajs = j->trajs,
                .queue_ms = (double)(j->first_ns - j->admit_ns) / 1e6,
                .total_ms = (double)(now - j->admit_ns) / 1e6,
                .router_ms = j->router_us / 1e3,
                .expert_ms = j->expert_us / 1e3 / j->p.n,
            };
            e->st.jobs_ok++;
            j->done_called = 1;
            j->done(j, j->ud, 0, NULL, NULL, &r);
        }
    }
    s->busy = 0;
    e->st.ticks_running--;
    if (e->closing && e->st.ticks_running == 0) {
        engine_close(e, e->close_cb, e->close_ud);
        return;
    }
    schedule(e);
}

static void start_tick(engine *e, tick_slot *s)
{
    s->n = 0;
    uint64_t now = uv_hrtime();
    while (e->fifo_len > 0 && s->n < e->cfg.tick_capacity) {
        traj *tr = e->fifo[e->fifo_head];
        e->fifo_head = (e->fifo_head + 1) % e->fifo_cap;
        e->fifo_len--;
        engine_job *j = tr->owner;
        if (j->dead) {
            j->active--;
            job_maybe_free(j);
            continue;
        }
        if (!j->first_ns)
            j->first_ns = now;
        s->batch[s->n++] = tr;
    }
    if (s->n == 0)
        return;
    s->busy = 1;
    s->start_ns = now;
    e->st.ticks_running++;
    if (uv_queue_work(e->loop, &s->work, plan_work, after_plan)) {
        s->plan_rc = tick_plan(s->tk, s->batch, s->n);
        after_plan(&s->work, 0);
    }
}

static void schedule(engine *e)
{
    if (e->closing)
        return;
    for (int i = 0; i < e->n_slots && e->fifo_len > 0; i++)
        if (!e->slots[i].busy)
            start_tick(e, &e->slots[i]);
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
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return DDM_ENOMEM;
    }
    e->loop = loop;
    uv_timer_init(loop, &e->timer);
    e->timer.data = e;
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
    e->fifo_cap = e->cfg.max_images + SAMPLE_MAX_N;
    e->fifo = calloc((size_t)e->fifo_cap, sizeof *e->fifo);
    if (!e->fifo)
        goto oom;
    for (int i = 0; i < e->n_slots; i++) {
        tick_slot *s = &e->slots[i];
        s->e = e;
        s->work.data = s;
        s->tk = tick_new(K, dim, e->cfg.tick_capacity, router, err, errlen);
        s->batch = calloc((size_t)e->cfg.tick_capacity, sizeof *s->batch);
        if (!s->tk || !s->batch || tick_set_router_threads(s->tk, e->cfg.router_threads)) {
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
    if (j->first_ns)
        return -1;
    int pos = 0; /* the list is newest first: older jobs follow j */
    for (const engine_job *o = j->next; o; o = o->next)
        pos += !o->dead && !o->first_ns;
    return pos;
}

void engine_get_stats(const engine *e, engine_stats *out)
{
    *out = e->st;
    out->ready = e->fifo_len;
}

static void timer_closed(uv_handle_t *h)
{
    engine *e = h->data;
    void (*cb)(void *) = e->close_cb;
    void *ud = e->close_ud;
    for (int i = 0; i < e->n_slots; i++) {
        tick_free(e->slots[i].tk);
        free(e->slots[i].batch);
    }
    free(e->fifo);
    free(e);
    if (cb)
        cb(ud);
}

void engine_close(engine *e, void (*cb)(void *ud), void *ud)
{
    int first = !e->closing;
    e->closing = 1;
    e->close_cb = cb;
    e->close_ud = ud;
    if (first)
        for (engine_job *j = e->jobs; j; j = j->next)
            job_fail(j, 503, "shutting_down", "the router is shutting down: retry elsewhere");
    if (e->st.ticks_running > 0)
        return; /* after_finish calls back in when the last tick returns */
    /* drop what is queued, then free whatever jobs remain */
    while (e->fifo_len > 0) {
        traj *tr = e->fifo[e->fifo_head];
        e->fifo_head = (e->fifo_head + 1) % e->fifo_cap;
        e->fifo_len--;
        engine_job *j = tr->owner;
        j->active--;
    }
    while (e->jobs) {
        engine_job *j = e->jobs;
        j->owner_holds = 0; /* the owner's responses have been given (job_fail above) */
        job_free(j);
    }
    if (!uv_is_closing((uv_handle_t *)&e->timer))
        uv_close((uv_handle_t *)&e->timer, timer_closed);
}
