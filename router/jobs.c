/* jobs.c -- the job table: ids, admission, outcomes, stored results, TTL and
 * eviction, status documents, metrics (see jobs.h; events are in
 * jobs_events.c, endpoints in jobs_http.c).
 *
 * Ids are 16 random bytes (getrandom) and an 8-byte tag, the first bytes of
 * SHA-256(key || random) with a key drawn at start: an id with a good tag was
 * issued by this process, so when it is not in the table it was evicted (410),
 * and any other well-formed id is unknown (404) -- without remembering evicted
 * ids. */
#include "router/jobs_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"
#include "common/sha256.h"

#define TIMER_MS 250
#define JOB_OVERHEAD 2048 /* bytes a finished job counts beyond its results */

void jobs_config_default(jobs_config *c)
{
    c->ttl_s = 600;
    c->store_bytes = (size_t)256 << 20;
    c->max_subscribers = 8;
    c->heartbeat_ms = 15000;
    c->log_bytes = (size_t)256 << 10;
    c->stream_soft = (size_t)64 << 10;
    c->stream_hard = (size_t)1 << 20;
}

const char *job_state_name(job_state s)
{
    static const char *names[] = { "queued", "running", "succeeded", "failed", "cancelled" };
    return names[s];
}

static int fill_random(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void make_tag(const jobs *J, const uint8_t rnd[JOB_RND_BYTES], uint8_t tag[JOB_TAG_BYTES])
{
    sha256_ctx c;
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_init(&c);
    sha256_update(&c, J->key, sizeof J->key);
    sha256_update(&c, rnd, JOB_RND_BYTES);
    sha256_final(&c, d);
    memcpy(tag, d, JOB_TAG_BYTES);
}

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
}

int job_parse_id(const jobs *J, const char *s, size_t len, uint8_t rnd[JOB_RND_BYTES])
{
    uint8_t raw[JOB_RND_BYTES + JOB_TAG_BYTES];
    if (len != JOB_ID_LEN)
        return 400;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return 400;
        if (i % 2 == 0)
            raw[i / 2] = (uint8_t)(v << 4);
        else
            raw[i / 2] |= (uint8_t)v;
    }
    uint8_t tag[JOB_TAG_BYTES];
    make_tag(J, raw, tag);
    if (memcmp(tag, raw + JOB_RND_BYTES, JOB_TAG_BYTES))
        return 404;
    memcpy(rnd, raw, JOB_RND_BYTES);
    return 0;
}

/* ---- hash table ---------------------------------------------------------------------- */

static size_t bucket_of(const jobs *J, const uint8_t *rnd)
{
    uint64_t h;
    memcpy(&h, rnd, sizeof h);
    return (size_t)(h % J->nbuckets);
}

job *job_find(jobs *J, const uint8_t rnd[JOB_RND_BYTES])
{
    for (job *j = J->buckets[bucket_of(J, rnd)]; j; j = j->hnext)
        if (!memcmp(j->rnd, rnd, JOB_RND_BYTES))
            return j;
    return NULL;
}

static void table_grow(jobs *J)
{
    size_t nb = J->nbuckets * 2;
    job **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    job **old = J->buckets;
    size_t on = J->nbuckets;
    J->buckets = b;
    J->nbuckets = nb;
    for (size_t i = 0; i < on; i++)
        for (job *j = old[i], *next; j; j = next) {
            next = j->hnext;
            size_t k = bucket_of(J, j->rnd);
            j->hnext = b[k];
            b[k] = j;
        }
    free(old);
}

static void table_add(jobs *J, job *j)
{
    if (J->count + 1 > 2 * J->nbuckets)
        table_grow(J);
    size_t k = bucket_of(J, j->rnd);
    j->hnext = J->buckets[k];
    J->buckets[k] = j;
    J->count++;
    j->in_table = 1;
}

static void table_remove(jobs *J, job *j)
{
    for (job **pp = &J->buckets[bucket_of(J, j->rnd)]; *pp; pp = &(*pp)->hnext)
        if (*pp == j) {
            *pp = j->hnext;
            J->count--;
            break;
        }
    j->in_table = 0;
}

/* ---- lists ---------------------------------------------------------------------------- */

static void live_unlink(jobs *J, job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        J->live_head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->prev = j->next = NULL;
    J->n_live--;
}

static void fin_unlink(jobs *J, job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        J->fin_head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        J->fin_tail = j->prev;
    j->prev = j->next = NULL;
}

/* ---- freeing and eviction ---------------------------------------------------------------- */

void job_maybe_free(job *j)
{
    if (j->state <= JOB_RUNNING || j->in_table || j->n_subs || j->works || j->ej)
        return;
    job_events_free(j);
    free(j->res_json);
    free(j->res_proto);
    free(j->res_png);
    free(j->routing_json);
    free(j);
}

static void evict(jobs *J, job *j)
{
    fin_unlink(J, j);
    J->stored -= j->bytes;
    table_remove(J, j);
    job_end_subs(j, 1);
    job_maybe_free(j);
}

static void evict_over_bound(jobs *J)
{
    while (J->stored > J->cfg.store_bytes && J->fin_head && J->fin_head != J->fin_tail) {
        J->evicted_size++;
        evict(J, J->fin_head);
    }
}

/* ---- outcomes -------------------------------------------------------------------------- */

static void finish(job *j, job_state st)
{
    jobs *J = j->J;
    j->state = st;
    j->finished_ns = uv_hrtime();
    admit_leave(&j->slot); /* its token's next request may start */
    J->finished_by[st]++;
    if (j->rs) {
        strbuf o = { 0 };
        rstats_json(j->rs, &o);
        j->routing_json = strbuf_take(&o, NULL);
    }
    job_events_finish(j);
    if (j->live_listed) {
        live_unlink(J, j);
        j->live_listed = 0;
    }
    if (j->in_table) {
        j->prev = J->fin_tail;
        if (J->fin_tail)
            J->fin_tail->next = j;
        else
            J->fin_head = j;
        J->fin_tail = j;
        j->bytes = JOB_OVERHEAD + j->res_json_len + j->res_proto_len + j->res_png_len +
                   (j->routing_json ? strlen(j->routing_json) : 0);
        J->stored += j->bytes;
        evict_over_bound(J); /* never the newest: j stays */
    }
    job_pump_all(j); /* remaining steps, then the final event, then the streams end */
    if (J->closing)
        job_end_subs(j, 1); /* readers too far behind for the final event */
    job_maybe_free(j);
}

static void set_error(job *j, int status, const char *code, const char *msg)
{
    j->err_status = status;
    snprintf(j->err_code, sizeof j->err_code, "%s", code ? code : "internal");
    snprintf(j->err_msg, sizeof j->err_msg, "%s", msg ? msg : "");
}

typedef struct enc_work {
    uv_work_t w;
    job *j;
    api_result r;
    sample_params pc;         /* the request as encoded: trace only if asked */
    uint8_t *out[3];          /* JSON, protobuf, PNG */
    size_t len[3];
    int rc;
    char err[256];
} enc_work;

static void encode_work(uv_work_t *w)
{
    enc_work *ew = w->data;
    static const api_format fmts[3] = { API_JSON, API_PROTO, API_PNG };
    int n = ew->j->sync ? 1 : 3;
    for (int i = 0; i < n && !ew->rc; i++) {
        const char *ct;
        ew->rc = api_encode_sample(fmts[i], &ew->r, &ew->out[i], &ew->len[i], &ct, ew->err,
                                   sizeof ew->err);
    }
}

static void after_encode(uv_work_t *w, int status)
{
    (void)status;
    enc_work *ew = w->data;
    job *j = ew->j;
    jobs *J = j->J;
    j->works--;
    J->works--;
    j->encoding = 0;
    engine_job_release(j->ej); /* the result pointed into it until here */
    j->ej = NULL;
    if (j->state > JOB_RUNNING || ew->rc) { /* cancelled or shut down meanwhile, or failed */
        for (int i = 0; i < 3; i++)
            free(ew->out[i]);
        if (j->state <= JOB_RUNNING) {
            set_error(j, 500, "internal", ew->err);
            finish(j, JOB_FAILED);
        } else {
            job_maybe_free(j);
        }
    } else {
        /* the JSON body ends with a newline: events and documents embed it without */
        while (ew->len[0] && (ew->out[0][ew->len[0] - 1] == '\n'))
            ew->len[0]--;
        j->res_json = (char *)ew->out[0], j->res_json_len = ew->len[0];
        j->res_proto = (char *)ew->out[1], j->res_proto_len = ew->len[1];
        j->res_png = (char *)ew->out[2], j->res_png_len = ew->len[2];
        finish(j, JOB_SUCCEEDED);
    }
    free(ew);
    jobs_close_maybe_done(J);
}

/* After jobs_close: frees the table once the last work has returned. */
static void timer_closed(uv_handle_t *h)
{
    jobs *J = h->data;
    if (--J->handles > 0)
        return;
    free(J->buckets);
    free(J);
}

void jobs_close_maybe_done(jobs *J)
{
    if (J->closing && J->works == 0 && !uv_is_closing((uv_handle_t *)&J->timer)) {
        uv_close((uv_handle_t *)&J->timer, timer_closed);
        uv_close((uv_handle_t *)&J->flush_timer, timer_closed);
    }
}

static void on_done(engine_job *ej, void *ud, int status, const char *code, const char *msg,
                    const api_result *r)
{
    job *j = ud;
    jobs *J = j->J;
    if (status) {
        engine_job_release(ej);
        j->ej = NULL;
        set_error(j, status, code, msg);
        finish(j, JOB_FAILED);
        return;
    }
    j->queue_ms = r->queue_ms;
    j->total_ms = r->total_ms;
    j->router_ms = r->router_ms;
    j->expert_ms = r->expert_ms;
    enc_work *ew = calloc(1, sizeof *ew);
    if (!ew) {
        engine_job_release(ej);
        j->ej = NULL;
        set_error(j, 500, "internal", "out of memory encoding the result");
        finish(j, JOB_FAILED);
        return;
    }
    ew->j = j;
    ew->pc = *r->p;
    ew->r = *r;
    ew->r.p = &ew->pc;
    ew->w.data = ew;
    j->works++;
    J->works++;
    j->encoding = 1;
    if (uv_queue_work(J->loop, &ew->w, encode_work, after_encode)) {
        encode_work(&ew->w);
        after_encode(&ew->w, 0);
    }
}

/* Submits j to the engine (its token's turn has come). Returns 0 or the
 * engine's error (nothing submitted). */
static int job_start(job *j)
{
    jobs *J = j->J;
    if (J->closing)
        return DDM_ECLOSED;
    int rc = engine_submit(J->eng, &j->p, on_done, j, &j->ej);
    if (rc)
        return rc;
    engine_job_observe(j->ej, job_on_eval, j);
    j->qpos = engine_job_queue_position(j->ej);
    j->state = j->qpos >= 0 ? JOB_QUEUED : JOB_RUNNING;
    return 0;
}

/* A job that waited for its token's turn gets it. */
static void job_turn(admit_slot *slot, void *ud)
{
    (void)slot;
    job *j = ud;
    int rc = job_start(j);
    if (rc) {
        if (rc == DDM_EBUSY)
            set_error(j, 503, "overloaded",
                      "too many images in flight when its turn came: submit it again later");
        else if (rc == DDM_ECLOSED)
            set_error(j, 503, "shutting_down", "the router is shutting down: retry elsewhere");
        else
            set_error(j, 500, "internal", ddm_strerror(rc));
        finish(j, JOB_FAILED);
        return;
    }
    job_pump_all(j); /* its readers learn the new position */
}

int job_submit(jobs *J, const sample_params *p, int preview_every, int sync, auth_token *tok,
               job **out)
{
    if (J->closing)
        return DDM_ECLOSED;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return DDM_ENOMEM;
    j->J = J;
    j->p = *p; /* p->trace: the trace goes into the result; step events come regardless */
    j->preview_every = preview_every;
    j->sync = sync;
    j->created_ns = uv_hrtime();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    j->created_unix = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    uint8_t tag[JOB_TAG_BYTES];
    if (fill_random(j->rnd, sizeof j->rnd)) {
        free(j);
        return DDM_EIO;
    }
    make_tag(J, j->rnd, tag);
    to_hex(j->rnd, JOB_RND_BYTES, j->id);
    to_hex(tag, JOB_TAG_BYTES, j->id + 2 * JOB_RND_BYTES);
    j->id[JOB_ID_LEN] = '\0';
    if (job_events_init(j)) {
        job_events_free(j);
        free(j);
        return DDM_ENOMEM;
    }
    j->state = JOB_QUEUED;
    if (admit_enter(&j->slot, tok, job_turn, j)) {
        int rc = job_start(j);
        if (rc) {
            admit_leave(&j->slot);
            job_events_free(j);
            free(j);
            return rc;
        }
    } else {
        j->qpos = job_queue_position(j);
    }
    J->submitted++;
    if (!sync)
        table_add(J, j);
    j->next = J->live_head;
    if (J->live_head)
        J->live_head->prev = j;
    J->live_head = j;
    J->n_live++;
    j->live_listed = 1;
    *out = j;
    return 0;
}

int job_queue_position(const job *j)
{
    if (j->ej)
        return engine_job_queue_position(j->ej);
    if (j->state != JOB_QUEUED)
        return -1;
    int line = admit_line_position(&j->slot);
    return engine_jobs_queued(j->J->eng) + (line > 0 ? line : 0);
}

void job_cancel(job *j)
{
    if (j->state != JOB_QUEUED && j->state != JOB_RUNNING)
        return;
    if (j->ej && !j->encoding) { /* not being encoded: stop it; done will not be called */
        engine_job_cancel(j->ej);
        j->ej = NULL;
    } /* else after_encode sees the cancelled state and drops the result */
    finish(j, JOB_CANCELLED);
}

/* ---- status documents ------------------------------------------------------------------ */

void job_status_json(const job *j, int with_result, strbuf *o)
{
    uint64_t now = uv_hrtime();
    uint64_t end = j->finished_ns ? j->finished_ns : now;
    strbuf_printf(o, "{\"id\":\"%s\",\"status\":\"%s\"", j->id, job_state_name(j->state));
    if (j->state == JOB_QUEUED)
        strbuf_printf(o, ",\"queue_position\":%d", j->qpos < 0 ? 0 : j->qpos);
    int per_step = j->p.sampler == SAMPLER_HEUN ? 2 : 1;
    strbuf_printf(o, ",\"step\":%d,\"steps\":%d,\"evaluations\":%d,\"n\":%d,\"seed\":%llu,"
                     "\"priority\":%d,\"preview_every\":%d,\"created_at\":%.3f",
                  j->done_evals / per_step, j->p.steps, j->done_evals, j->p.n,
                  (unsigned long long)j->p.seed, j->p.priority, j->preview_every,
                  j->created_unix);
    strbuf_printf(o, ",\"timings\":{\"elapsed_ms\":%.3f", (double)(end - j->created_ns) / 1e6);
    if (j->state == JOB_RUNNING && j->started_ns)
        strbuf_printf(o, ",\"queue_ms\":%.3f", (double)(j->started_ns - j->created_ns) / 1e6);
    if (j->state == JOB_SUCCEEDED)
        strbuf_printf(o, ",\"queue_ms\":%.3f,\"total_ms\":%.3f,\"router_ms\":%.3f,\"expert_ms\":%.3f",
                      j->queue_ms, j->total_ms, j->router_ms, j->expert_ms);
    strbuf_puts(o, "}");
    if (j->finished_ns && !j->sync) {
        double left = (double)j->J->cfg.ttl_s - (double)(now - j->finished_ns) / 1e9;
        strbuf_printf(o, ",\"expires_in_s\":%.0f", left < 0 ? 0 : left);
    }
    if (j->state == JOB_FAILED) {
        strbuf_printf(o, ",\"error\":{\"code\":");
        strbuf_json_str(o, j->err_code);
        strbuf_puts(o, ",\"message\":");
        strbuf_json_str(o, j->err_msg);
        strbuf_printf(o, ",\"http_status\":%d}", j->err_status);
    }
    if (j->rs) {
        strbuf_puts(o, ",\"routing\":");
        rstats_json(j->rs, o);
    } else if (j->routing_json) {
        strbuf_printf(o, ",\"routing\":%s", j->routing_json);
    }
    if (j->state == JOB_SUCCEEDED && !j->sync)
        strbuf_printf(o, ",\"result_url\":\"/v1/jobs/%s\"", j->id);
    if (with_result && j->state == JOB_SUCCEEDED && j->res_json) {
        strbuf_puts(o, ",\"result\":");
        strbuf_put(o, j->res_json, j->res_json_len);
    }
    strbuf_puts(o, "}");
}

/* ---- the table's timer: TTL, queue positions, heartbeats -------------------------------- */

void jobs_positions_changed(jobs *J)
{
    for (job *j = J->live_head; j; j = j->next)
        if (j->state == JOB_QUEUED && j->subs) {
            int pos = job_queue_position(j);
            if (pos != j->qpos && pos >= 0) {
                j->qpos = pos;
                job_pump_all(j);
            }
        }
}

static void on_timer(uv_timer_t *t)
{
    jobs *J = t->data;
    uint64_t now = uv_hrtime();
    uint64_t ttl_ns = (uint64_t)J->cfg.ttl_s * 1000000000ull;
    while (J->fin_head && now - J->fin_head->finished_ns >= ttl_ns) {
        J->evicted_ttl++;
        evict(J, J->fin_head);
    }
    uint64_t now_ms = uv_now(J->loop);
    for (job *j = J->live_head, *next; j; j = next) {
        next = j->next;
        if (j->sync && !j->subs) { /* its reader left: stop the work */
            job_cancel(j);
            continue;
        }
        if (j->state == JOB_QUEUED) {
            j->qpos = job_queue_position(j);
            if (j->qpos < 0)
                j->state = JOB_RUNNING;
        }
        if (j->subs)
            job_tick_subs(j, now_ms);
    }
}

/* ---- table ---------------------------------------------------------------------------- */

int jobs_new(uv_loop_t *loop, service *svc, engine *eng, const jobs_model *m,
             const jobs_config *cfg, jobs **out)
{
    jobs *J = calloc(1, sizeof *J);
    if (!J)
        return DDM_ENOMEM;
    J->loop = loop;
    J->svc = svc;
    J->adm = service_admit(svc);
    J->eng = eng;
    J->m = *m;
    if (cfg)
        J->cfg = *cfg;
    else
        jobs_config_default(&J->cfg);
    J->nbuckets = 1024;
    J->buckets = calloc(J->nbuckets, sizeof *J->buckets);
    if (!J->buckets || fill_random(J->key, sizeof J->key)) {
        free(J->buckets);
        free(J);
        return DDM_ENOMEM;
    }
    uv_timer_init(loop, &J->timer);
    uv_timer_init(loop, &J->flush_timer);
    J->timer.data = J->flush_timer.data = J;
    J->handles = 2;
    int rc = jobs_http_routes(J);
    if (rc) { /* J leaks on purpose: the loop still holds the handles */
        uv_close((uv_handle_t *)&J->timer, NULL);
        uv_close((uv_handle_t *)&J->flush_timer, NULL);
        return rc;
    }
    uv_timer_start(&J->timer, on_timer, TIMER_MS, TIMER_MS);
    uv_unref((uv_handle_t *)&J->timer); /* does not keep the loop alive by itself */
    *out = J;
    return 0;
}

int jobs_pending(const jobs *J) { return J->n_live + J->works; }

void jobs_metrics(const jobs *J, strbuf *o)
{
    int by_state[5] = { 0 };
    for (const job *j = J->live_head; j; j = j->next)
        by_state[j->state] += !j->sync; /* streamed samples are no jobs of the table */
    for (const job *j = J->fin_head; j; j = j->next)
        by_state[j->state]++;
    strbuf_puts(o, "# HELP ddm_jobs Jobs in the table by status.\n# TYPE ddm_jobs gauge\n");
    for (int s = 0; s < 5; s++)
        strbuf_printf(o, "ddm_jobs{status=\"%s\"} %d\n", job_state_name((job_state)s), by_state[s]);
    strbuf_printf(o, "# TYPE ddm_jobs_submitted_total counter\nddm_jobs_submitted_total %llu\n",
                  (unsigned long long)J->submitted);
    strbuf_puts(o, "# HELP ddm_jobs_finished_total Jobs (and streamed samples) by outcome.\n"
                   "# TYPE ddm_jobs_finished_total counter\n");
    for (int s = JOB_SUCCEEDED; s <= JOB_CANCELLED; s++)
        strbuf_printf(o, "ddm_jobs_finished_total{status=\"%s\"} %llu\n",
                      job_state_name((job_state)s), (unsigned long long)J->finished_by[s]);
    strbuf_puts(o, "# HELP ddm_jobs_evicted_total Finished jobs dropped from the table.\n"
                   "# TYPE ddm_jobs_evicted_total counter\n");
    strbuf_printf(o, "ddm_jobs_evicted_total{reason=\"ttl\"} %llu\n",
                  (unsigned long long)J->evicted_ttl);
    strbuf_printf(o, "ddm_jobs_evicted_total{reason=\"size\"} %llu\n",
                  (unsigned long long)J->evicted_size);
    strbuf_printf(o, "# TYPE ddm_jobs_stored_bytes gauge\nddm_jobs_stored_bytes %zu\n", J->stored);
    strbuf_printf(o, "# TYPE ddm_sse_subscribers gauge\nddm_sse_subscribers %llu\n",
                  (unsigned long long)J->n_subs);
    strbuf_printf(o, "# HELP ddm_sse_previews_skipped_total Previews not sent to a reader "
                     "that was behind.\n# TYPE ddm_sse_previews_skipped_total counter\n"
                     "ddm_sse_previews_skipped_total %llu\n",
                  (unsigned long long)J->pv_skipped);
    strbuf_printf(o, "# HELP ddm_sse_streams_lagging_total Event streams closed because "
                     "their reader fell out of the job's event log.\n"
                     "# TYPE ddm_sse_streams_lagging_total counter\n"
                     "ddm_sse_streams_lagging_total %llu\n",
                  (unsigned long long)J->streams_lagging);
}

void jobs_close(jobs *J)
{
    if (J->closing)
        return;
    J->closing = 1;
    uv_timer_stop(&J->timer);
    uv_timer_stop(&J->flush_timer);
    while (J->live_head) {
        job *j = J->live_head;
        if (j->ej && !j->encoding) { /* an encoding one: after_encode drops the result */
            engine_job_cancel(j->ej);
            j->ej = NULL;
        }
        set_error(j, 503, "shutting_down", "the router is shutting down: retry elsewhere");
        finish(j, JOB_FAILED); /* the streams get the error event and end */
    }
    while (J->fin_head)
        evict(J, J->fin_head);
    /* encodings in flight finish their jobs (off every list) in after_encode,
     * and the last one frees the table */
    if (J->works)
        log_warn("jobs: %d encodings still running at shutdown", J->works);
    jobs_close_maybe_done(J);
}
