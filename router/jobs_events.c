/* jobs_events.c -- a job's events: step events assembled from the engine's
 * per-image observer, previews of the predicted clean images, the bounded log
 * of step events, and the subscribers that read it (see jobs.h).
 *
 * Images of one job may sit in different ticks and so drift apart by an
 * evaluation or more; step event x is emitted once every image has completed
 * evaluation x. Until then the images' routing of x waits in a small ring
 * (grown if the drift ever needs it). A preview for step s gathers each
 * image's predicted x0 = x - t v the first time that image reports a step
 * >= s (exact when the images move together, a step later at worst). */
#include "router/jobs_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "router/sse.h"

#define RING_MIN 4
#define RETRY_MS 1000
#define FLUSH_MS 40            /* queued frames wait at most this long for company */
#define FLUSH_BYTES (16 << 10) /* ... or until this many are queued */

static int terminal(job_state s) { return s >= JOB_SUCCEEDED; }

/* ---- allocation ------------------------------------------------------------------------- */

int job_events_init(job *j)
{
    int n = j->p.n, K = j->J->m.K;
    j->evals = sample_evals(&j->p);
    j->at_min = n;
    j->ring = RING_MIN;
    j->img_evals = calloc((size_t)n, sizeof *j->img_evals);
    j->rows = malloc((size_t)j->ring * (size_t)n * (size_t)K * sizeof *j->rows);
    if (!j->img_evals || !j->rows)
        return DDM_ENOMEM;
    if (!j->sync) { /* a streamed sample has no status document to put them in */
        j->rs = malloc(sizeof *j->rs);
        if (!j->rs)
            return DDM_ENOMEM;
        rstats_init(j->rs, K);
    }
    if (j->preview_every > 0) {
        j->pv_target = j->preview_every;
        j->pv_filled = calloc((size_t)n, 1);
        if (!j->pv_filled)
            return DDM_ENOMEM;
    }
    return 0;
}

static void log_free(job *j)
{
    for (int i = 0; i < j->log_len; i++)
        free(j->log[(j->log_head + i) % j->log_cap].frame);
    free(j->log);
    j->log = NULL;
    j->log_cap = j->log_head = j->log_len = 0;
    j->log_bytes = 0;
    /* log_start stays: indexes keep counting for late readers */
}

void job_events_free(job *j)
{
    job_events_finish(j);
    free(j->pv_frame);
    j->pv_frame = NULL;
    log_free(j);
}

void job_events_finish(job *j)
{
    free(j->img_evals);
    free(j->rows);
    free(j->rs);
    free(j->pv_x0);
    free(j->pv_filled);
    j->img_evals = NULL;
    j->rows = NULL;
    j->rs = NULL;
    j->pv_x0 = NULL;
    j->pv_filled = NULL;
    if (!j->subs)
        log_free(j);
}

/* ---- the step-event log ------------------------------------------------------------------ */

static evrec *log_at(job *j, int index)
{
    return &j->log[(j->log_head + (index - j->log_start)) % j->log_cap];
}

static void log_drop_oldest(job *j)
{
    evrec *ev = &j->log[j->log_head];
    j->log_bytes -= ev->len;
    free(ev->frame);
    ev->frame = NULL;
    j->log_head = (j->log_head + 1) % j->log_cap;
    j->log_start++;
    j->log_len--;
}

/* Appends the frame of event index log_start + log_len (takes frame). */
static void log_append(job *j, char *frame, size_t len)
{
    if (j->log_len == j->log_cap) {
        int cap = j->log_cap ? 2 * j->log_cap : 64;
        evrec *n = malloc((size_t)cap * sizeof *n);
        if (!n) { /* keep going with what fits: drop the oldest */
            if (!j->log_len) {
                free(frame);
                j->log_start++;
                return;
            }
            log_drop_oldest(j);
        } else {
            for (int i = 0; i < j->log_len; i++)
                n[i] = j->log[(j->log_head + i) % j->log_cap];
            free(j->log);
            j->log = n;
            j->log_cap = cap;
            j->log_head = 0;
        }
    }
    evrec *ev = &j->log[(j->log_head + j->log_len) % j->log_cap];
    ev->frame = frame;
    ev->len = len;
    j->log_len++;
    j->log_bytes += len;
    while (j->log_bytes > j->J->cfg.log_bytes && j->log_len > 1)
        log_drop_oldest(j);
}

/* ---- step events -------------------------------------------------------------------------- */

static float *ring_row(job *j, int e, int image)
{
    int K = j->J->m.K;
    return j->rows + ((size_t)(e % j->ring) * (size_t)j->p.n + (size_t)image) * (size_t)K;
}

/* Makes the ring hold evaluation e (>= done_evals). Returns 0 or DDM_ENOMEM. */
static int ring_fit(job *j, int e)
{
    if (e < j->done_evals + j->ring)
        return 0;
    int ring = j->ring;
    while (e >= j->done_evals + ring)
        ring *= 2;
    size_t per = (size_t)j->p.n * (size_t)j->J->m.K;
    float *rows = malloc((size_t)ring * per * sizeof *rows);
    if (!rows)
        return DDM_ENOMEM;
    for (int x = j->done_evals; x < j->done_evals + j->ring; x++)
        memcpy(rows + (size_t)(x % ring) * per, j->rows + (size_t)(x % j->ring) * per,
               per * sizeof *rows);
    free(j->rows);
    j->rows = rows;
    j->ring = ring;
    return 0;
}

/* Serializes step event x (every image has completed it) into the log. */
static void emit_step(job *j, int x)
{
    int K = j->J->m.K, n = j->p.n;
    int heun = j->p.sampler == SAMPLER_HEUN;
    strbuf d = { 0 };
    strbuf_printf(&d, "{\"index\":%d,\"step\":%d,\"stage\":%d,\"t\":%.6g,\"evaluations\":%d,"
                      "\"images\":[",
                  x, heun ? x / 2 : x, heun ? x % 2 : 0, rstats_eval_time(&j->p, x), j->evals);
    for (int i = 0; i < n; i++) {
        const float *w = ring_row(j, x, i);
        strbuf_puts(&d, i ? ",{\"experts\":[" : "{\"experts\":[");
        int first = 1;
        for (int k = 0; k < K; k++)
            if (w[k] >= 0) {
                strbuf_printf(&d, first ? "%d" : ",%d", k);
                first = 0;
            }
        strbuf_puts(&d, "],\"weights\":[");
        first = 1;
        for (int k = 0; k < K; k++)
            if (w[k] >= 0) {
                strbuf_printf(&d, first ? "%.4g" : ",%.4g", w[k]);
                first = 0;
            }
        strbuf_puts(&d, "]}");
    }
    strbuf_puts(&d, "]}");
    strbuf f = { 0 };
    if (!d.oom)
        sse_frame(&f, x + 1, "step", d.p, d.len);
    strbuf_free(&d);
    size_t len;
    char *frame = strbuf_take(&f, &len);
    if (frame) {
        log_append(j, frame, len);
    } else { /* out of memory: the log restarts after x; readers behind it are closed */
        log_free(j);
        j->log_start = x + 1;
    }
}

/* ---- previews ------------------------------------------------------------------------------ */

typedef struct pv_work {
    uv_work_t w;
    job *j;
    float *x0;                /* [n][height][width][channels], owned */
    int n, width, height, channels, step;
    float t;
    char *frame;
    size_t len;
} pv_work;

static void pv_encode(uv_work_t *w)
{
    pv_work *pw = w->data;
    uint8_t *png;
    size_t plen;
    char err[128];
    if (api_encode_grid(pw->x0, pw->n, pw->width, pw->height, pw->channels, &png, &plen, err,
                        sizeof err))
        return;
    strbuf d = { 0 };
    strbuf_printf(&d, "{\"step\":%d,\"t\":%.6g,\"n\":%d,\"png\":\"", pw->step, pw->t, pw->n);
    strbuf_base64(&d, png, plen);
    strbuf_puts(&d, "\"}");
    free(png);
    strbuf f = { 0 };
    if (!d.oom)
        sse_frame(&f, -1, "preview", d.p, d.len);
    strbuf_free(&d);
    pw->frame = strbuf_take(&f, &pw->len);
}

static void pv_done(uv_work_t *w, int status)
{
    (void)status;
    pv_work *pw = w->data;
    job *j = pw->j;
    jobs *J = j->J;
    j->works--;
    J->works--;
    j->pv_busy = 0;
    free(pw->x0);
    if (pw->frame && !terminal(j->state)) {
        free(j->pv_frame);
        j->pv_frame = pw->frame;
        j->pv_len = pw->len;
        j->pv_seq++;
        job_pump_all(j);
    } else {
        free(pw->frame);
    }
    free(pw);
    job_maybe_free(j);
    jobs_close_maybe_done(J);
}

/* Every image has given its x0 for pv_target: encode on the threadpool. */
static void pv_dispatch(job *j)
{
    jobs *J = j->J;
    int step = j->pv_target;
    j->pv_have = 0;
    memset(j->pv_filled, 0, (size_t)j->p.n);
    j->pv_target += j->preview_every;
    if (j->pv_busy) /* the previous one is still encoding: skip this one */
        return;
    pv_work *pw = calloc(1, sizeof *pw);
    if (!pw)
        return;
    pw->j = j;
    pw->x0 = j->pv_x0; /* handed over; the next preview allocates anew */
    j->pv_x0 = NULL;
    pw->n = j->p.n;
    pw->width = J->m.width;
    pw->height = J->m.height;
    pw->channels = J->m.channels;
    pw->step = step;
    pw->t = 1.0f - (float)step / (float)j->p.steps;
    pw->w.data = pw;
    j->pv_busy = 1;
    j->works++;
    J->works++;
    if (uv_queue_work(J->loop, &pw->w, pv_encode, pv_done)) {
        pv_encode(&pw->w);
        pv_done(&pw->w, 0);
    }
}

static void pv_capture(job *j, const traj *tr)
{
    size_t D = (size_t)j->J->m.dim;
    if (!j->pv_x0) {
        j->pv_x0 = malloc((size_t)j->p.n * D * sizeof *j->pv_x0);
        if (!j->pv_x0)
            return;
    }
    float t = 1.0f - (float)tr->step / (float)j->p.steps;
    float *dst = j->pv_x0 + (size_t)tr->image * D;
    for (size_t d = 0; d < D; d++)
        dst[d] = tr->x[d] - t * tr->v[d];
    j->pv_filled[tr->image] = 1;
    if (++j->pv_have == j->p.n)
        pv_dispatch(j);
}

/* ---- the observer -------------------------------------------------------------------------- */

void job_on_eval(void *ud, const traj *tr)
{
    job *j = ud;
    int K = j->J->m.K, i = tr->image, e = tr->evals - 1;
    if (j->state == JOB_QUEUED) {
        j->state = JOB_RUNNING;
        j->qpos = -1;
        j->started_ns = uv_hrtime();
        jobs_positions_changed(j->J); /* the ones behind it moved up */
    }
    if (j->rs)
        rstats_add_eval(j->rs, tr);
    if (i < 0 || i >= j->p.n || e != j->img_evals[i] || !j->rows)
        return; /* cannot happen: evaluations are reported in order */
    if (ring_fit(j, e) == 0) {
        float *w = ring_row(j, e, i);
        for (int k = 0; k < K; k++)
            w[k] = -1.0f;
        for (int q = 0; q < tr->n_sel; q++)
            if (tr->sel[q] >= 0 && tr->sel[q] < K)
                w[tr->sel[q]] = tr->w[q];
    }
    j->img_evals[i] = e + 1;
    int emitted = 0;
    if (e == j->done_evals && --j->at_min == 0) {
        while (j->at_min == 0 && j->done_evals < j->evals) {
            emit_step(j, j->done_evals);
            j->done_evals++;
            emitted = 1;
            for (int m = 0; m < j->p.n; m++)
                j->at_min += j->img_evals[m] == j->done_evals;
        }
    }
    if (j->preview_every > 0 && j->pv_filled && tr->stage == 0 && tr->step >= j->pv_target &&
        j->pv_target < j->p.steps && !j->pv_filled[i]) /* the last one is the result */
        pv_capture(j, tr);
    if (emitted)
        job_pump_all(j);
}

/* ---- subscribers ---------------------------------------------------------------------------- */

static void on_sub_abort(http_req *req, void *ud);
static void on_sub_drain(http_req *req, void *ud);

static void flush_unlist(sub *s)
{
    if (!s->listed)
        return;
    jobs *J = s->j->J;
    if (s->fprev)
        s->fprev->fnext = s->fnext;
    else
        J->flush_head = s->fnext;
    if (s->fnext)
        s->fnext->fprev = s->fprev;
    s->fprev = s->fnext = NULL;
    s->listed = 0;
}

/* Ends s's stream and forgets s. Frees the job's log when a finished job has
 * no reader left. Never frees the job itself. */
static void sub_remove(sub *s, int abort)
{
    job *j = s->j;
    flush_unlist(s);
    if (!abort && s->req && s->pend.len)
        sse_flush(s->req, &s->pend);
    strbuf_free(&s->pend);
    if (s->req)
        http_stream_end(s->req, abort);
    for (sub **pp = &j->subs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    j->n_subs--;
    j->J->n_subs--;
    free(s);
    if (!j->subs && terminal(j->state))
        log_free(j);
}

/* The frame that ends a stream: done (the result for a streamed sample, else
 * the status document) or error. */
static char *final_frame(const job *j, size_t *len)
{
    strbuf d = { 0 }, f = { 0 };
    if (j->sync && j->state == JOB_SUCCEEDED)
        strbuf_put(&d, j->res_json, j->res_json_len);
    else
        job_status_json(j, 0, &d);
    if (!d.oom)
        sse_frame(&f, -1, j->state == JOB_FAILED ? "error" : "done", d.p, d.len);
    strbuf_free(&d);
    return strbuf_take(&f, len);
}

/* Writes s's queued frames now if there are many, else within FLUSH_MS.
 * Returns 1 if s was removed (its client is gone). */
static int schedule_flush(sub *s)
{
    if (!s->pend.len)
        return 0;
    jobs *J = s->j->J;
    if (s->pend.len >= FLUSH_BYTES) {
        flush_unlist(s);
        if (sse_flush(s->req, &s->pend) == SSE_GONE) {
            sub_remove(s, 1);
            return 1;
        }
        return 0;
    }
    if (!s->listed) {
        s->fnext = J->flush_head;
        if (J->flush_head)
            J->flush_head->fprev = s;
        J->flush_head = s;
        s->listed = 1;
        if (!uv_is_active((uv_handle_t *)&J->flush_timer))
            uv_timer_start(&J->flush_timer, jobs_flush, FLUSH_MS, 0);
    }
    return 0;
}

void jobs_flush(uv_timer_t *t)
{
    jobs *J = t->data;
    while (J->flush_head) {
        sub *s = J->flush_head;
        flush_unlist(s);
        if (sse_flush(s->req, &s->pend) == SSE_GONE) {
            job *j = s->j;
            sub_remove(s, 1);
            job_maybe_free(j);
        }
    }
}

/* Queues what s may get now (written by schedule_flush). Returns 1 if s was removed. */
static int pump(sub *s)
{
    job *j = s->j;
    jobs *J = j->J;
    size_t soft = J->cfg.stream_soft, hard = J->cfg.stream_hard;
    uint64_t now = uv_now(J->loop);
    sse_result r;
    if (j->state == JOB_QUEUED && s->qpos_sent != j->qpos) {
        char d[64];
        int n = snprintf(d, sizeof d, "{\"position\":%d}", j->qpos < 0 ? 0 : j->qpos);
        strbuf f = { 0 };
        sse_frame(&f, -1, "queued", d, (size_t)n);
        r = f.oom ? SSE_FULL : sse_queue(s->req, &s->pend, f.p, f.len, 0, soft, hard);
        strbuf_free(&f);
        if (r == SSE_GONE)
            goto gone;
        if (r == SSE_FULL)
            return 0;
        s->qpos_sent = j->qpos;
        s->last_write_ms = now;
    }
    while (s->next_index < j->log_start + j->log_len) {
        if (s->next_index < j->log_start) { /* fell out of the log: too slow */
            J->streams_lagging++;
            sub_remove(s, 1);
            return 1;
        }
        evrec *ev = log_at(j, s->next_index);
        r = sse_queue(s->req, &s->pend, ev->frame, ev->len, 0, soft, hard);
        if (r == SSE_GONE)
            goto gone;
        if (r == SSE_FULL)
            return 0; /* the drain callback comes back */
        s->next_index++;
        s->last_write_ms = now;
    }
    if (j->pv_frame && s->pv_seen < j->pv_seq) {
        r = sse_queue(s->req, &s->pend, j->pv_frame, j->pv_len, 1, soft, hard);
        if (r == SSE_GONE)
            goto gone;
        if (r == SSE_FULL)
            return 0;
        if (r == SSE_DROPPED)
            J->pv_skipped++;
        else
            s->last_write_ms = now;
        s->pv_seen = j->pv_seq;
    }
    if (terminal(j->state) && !(j->state == JOB_SUCCEEDED && !j->res_json && j->sync)) {
        size_t len;
        char *f = final_frame(j, &len);
        if (!f)
            goto gone;
        r = sse_queue(s->req, &s->pend, f, len, 0, hard, hard);
        free(f);
        if (r == SSE_FULL)
            return 0;
        sub_remove(s, r != SSE_SENT); /* writes what is queued, then ends the stream */
        return 1;
    }
    return schedule_flush(s);
gone:
    sub_remove(s, 1);
    return 1;
}

void job_pump_all(job *j)
{
    for (sub *s = j->subs, *next; s; s = next) {
        next = s->next;
        pump(s);
    }
}

void job_end_subs(job *j, int abort)
{
    while (j->subs)
        sub_remove(j->subs, abort);
}

void job_tick_subs(job *j, uint64_t now_ms)
{
    for (sub *s = j->subs, *next; s; s = next) {
        next = s->next;
        if (j->state == JOB_QUEUED && s->qpos_sent != j->qpos && pump(s))
            continue;
        if (now_ms - s->last_write_ms >= j->J->cfg.heartbeat_ms) {
            flush_unlist(s);
            sse_result r = sse_heartbeat(s->req, &s->pend, j->J->cfg.stream_hard);
            if (r == SSE_GONE)
                sub_remove(s, 1);
            else if (r == SSE_SENT)
                s->last_write_ms = now_ms;
        }
    }
}

static void on_sub_abort(http_req *req, void *ud)
{
    (void)req;
    sub *s = ud;
    job *j = s->j;
    sub_remove(s, 1); /* http_stream_end on an aborted stream frees it */
    job_maybe_free(j);
}

static void on_sub_drain(http_req *req, void *ud)
{
    (void)req;
    sub *s = ud;
    job *j = s->j;
    if (pump(s))
        job_maybe_free(j);
}

int job_subscribe(job *j, http_req *req, long from)
{
    jobs *J = j->J;
    sub *s = calloc(1, sizeof *s);
    if (!s) {
        http_respond_error(req, 500, "internal", "out of memory");
        return DDM_ENOMEM;
    }
    s->j = j;
    s->req = req;
    s->qpos_sent = -2;
    int log_end = j->log_start + j->log_len;
    if (terminal(j->state)) { /* a finished job replays its final state only */
        s->next_index = log_end;
        s->pv_seen = j->pv_seq;
    } else {
        s->next_index = from < 0 ? j->log_start : from > log_end ? log_end
                        : from < j->log_start ? j->log_start : (int)from;
    }
    s->next = j->subs;
    j->subs = s;
    j->n_subs++;
    J->n_subs++;
    s->last_write_ms = uv_now(J->loop);
    if (sse_begin(req, RETRY_MS)) {
        sub_remove(s, 1);
        return 0;
    }
    http_req_on_abort(req, on_sub_abort, s);
    http_stream_on_drain(req, on_sub_drain, s);
    pump(s);
    return 0;
}
