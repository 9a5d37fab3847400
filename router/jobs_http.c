/* jobs_http.c -- the job endpoints (see jobs.h and docs/api.md):
 *   POST   /v1/jobs                 submit (202, Location)
 *   GET    /v1/jobs/{id}            status; the result when done (per Accept)
 *   DELETE /v1/jobs/{id}            cancel at the next step boundary
 *   GET    /v1/jobs/{id}/events     Server-Sent Events (Last-Event-ID resumes)
 * and POST /v1/samples with Accept: text/event-stream (jobs_sample_stream).
 * The body is /v1/samples' (decoded by api.c) plus "priority" and
 * "preview_every", which are taken out here before api.c sees it. */
#include "router/jobs_int.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "ddm/v1/api.pb-c.h"
#include "router/sse.h"

#define PRIORITY_MIN (-100)
#define PRIORITY_MAX 100

static int is_json(const char *ct)
{
    return !ct || !strncasecmp(ct, "application/json", 16);
}

static int is_proto(const char *ct)
{
    return ct && (!strncasecmp(ct, "application/x-protobuf", 22) ||
                  !strncasecmp(ct, "application/protobuf", 20));
}

/* Takes an optional integer field out of a JSON object. Returns 0 (absent or
 * valid: *out set when present) or 400 with err. */
static int take_int(cJSON *root, const char *name, long lo, long hi, long *out, char *err,
                    size_t errlen)
{
    cJSON *it = cJSON_DetachItemFromObjectCaseSensitive(root, name);
    if (!it)
        return 0;
    int ok = cJSON_IsNumber(it) && it->valuedouble == (double)(long)it->valuedouble &&
             it->valuedouble >= lo && it->valuedouble <= hi;
    if (ok)
        *out = (long)it->valuedouble;
    cJSON_Delete(it);
    if (ok)
        return 0;
    snprintf(err, errlen, "field \"%s\" must be an integer %ld..%ld", name, lo, hi);
    return 400;
}

/* Decodes a job (or streamed sample) body. Returns 0, or the HTTP status with
 * *code and err set. */
static int decode_body(jobs *J, http_req *req, sample_params *p, int *preview_every,
                       const char **code, char *err, size_t errlen)
{
    size_t len;
    const uint8_t *body = http_req_body(req, &len);
    const char *ct = http_req_header(req, "Content-Type");
    long prio = 0, pe = 0;
    char *stripped = NULL;
    *code = "bad_field";
    if (is_json(ct)) {
        cJSON *root = cJSON_ParseWithLength((const char *)body, len);
        if (root && cJSON_IsObject(root)) { /* else api.c says what is wrong */
            int st = take_int(root, "priority", PRIORITY_MIN, PRIORITY_MAX, &prio, err, errlen);
            if (!st)
                st = take_int(root, "preview_every", 0, SAMPLE_MAX_STEPS, &pe, err, errlen);
            if (!st)
                stripped = cJSON_PrintUnformatted(root);
            cJSON_Delete(root);
            if (st)
                return st;
            if (!stripped) {
                *code = "internal";
                snprintf(err, errlen, "out of memory");
                return 500;
            }
            body = (const uint8_t *)stripped;
            len = strlen(stripped);
        } else {
            cJSON_Delete(root);
        }
    } else if (is_proto(ct)) {
        Ddm__V1__SampleRequest *m = ddm__v1__sample_request__unpack(NULL, len, body);
        if (m) { /* else api.c says what is wrong */
            prio = m->has_priority ? m->priority : 0;
            pe = m->has_preview_every ? (long)m->preview_every : 0;
            ddm__v1__sample_request__free_unpacked(m, NULL);
            if (prio < PRIORITY_MIN || prio > PRIORITY_MAX) {
                snprintf(err, errlen, "field \"priority\" = %ld is out of range: allowed %d..%d",
                         prio, PRIORITY_MIN, PRIORITY_MAX);
                return 400;
            }
            if (pe > SAMPLE_MAX_STEPS) {
                snprintf(err, errlen, "field \"preview_every\" = %ld is out of range: allowed 0..%d",
                         pe, SAMPLE_MAX_STEPS);
                return 400;
            }
        }
    }
    int st = api_decode_sample(ct, body, len, J->m.K, J->m.n_classes, &J->seed_state, p, code,
                               err, errlen);
    free(stripped);
    if (st)
        return st;
    p->priority = (int)prio;
    *preview_every = (int)pe;
    return 0;
}

static void respond_strbuf(http_req *req, int status, strbuf *o)
{
    size_t len;
    char *body = strbuf_take(o, &len);
    if (!body) {
        http_respond_error(req, 500, "internal", "out of memory");
        return;
    }
    http_respond_owned(req, status, "application/json", body, len);
}

static void respond_submit_error(http_req *req, int rc)
{
    if (rc == DDM_EBUSY) {
        http_resp_retry_after(req, 1);
        http_respond_error(req, 503, "overloaded",
                           "too many images queued or running: retry after the Retry-After seconds");
    } else if (rc == DDM_ECLOSED) {
        http_resp_retry_after(req, 1);
        http_respond_error(req, 503, "shutting_down", "the router is shutting down: retry elsewhere");
    } else {
        http_respond_error(req, 500, "internal", ddm_strerror(rc));
    }
}

static int refuse_draining(jobs *J, http_req *req)
{
    if (!J->draining && !J->closing)
        return 0;
    http_resp_retry_after(req, 1);
    http_respond_error(req, 503, "shutting_down", "the router is shutting down: retry elsewhere");
    return 1;
}

/* Decodes the body and admits the job (sync: a streamed /v1/samples). Returns
 * the job, or NULL having answered req with the error. */
static job *admit(jobs *J, http_req *req, int sync)
{
    if (refuse_draining(J, req))
        return NULL;
    sample_params p;
    int pe;
    const char *code;
    char err[384];
    int st = decode_body(J, req, &p, &pe, &code, err, sizeof err);
    if (st) {
        http_respond_error(req, st, code, err);
        return NULL;
    }
    job *j;
    int rc = job_submit(J, &p, p.trace, pe, sync, &j);
    if (rc) {
        respond_submit_error(req, rc);
        return NULL;
    }
    return j;
}

static void handle_submit(http_req *req, void *ud)
{
    jobs *J = ud;
    job *j = admit(J, req, 0);
    if (!j)
        return;
    char loc[96];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", j->id);
    http_resp_header(req, "Location", loc);
    strbuf o = { 0 };
    strbuf_printf(&o, "{\"id\":\"%s\",\"status\":\"%s\"", j->id, job_state_name(j->state));
    if (j->state == JOB_QUEUED)
        strbuf_printf(&o, ",\"queue_position\":%d", j->qpos);
    strbuf_printf(&o, ",\"url\":\"%s\",\"events_url\":\"%s/events\"}\n", loc, loc);
    respond_strbuf(req, 202, &o);
}

/* Resolves the id in /v1/jobs/{id}[suffix]; answers 400/404/410 itself. */
static job *lookup(jobs *J, http_req *req, const char *id, size_t len)
{
    uint8_t rnd[JOB_RND_BYTES];
    int st = job_parse_id(J, id, len, rnd);
    char msg[256];
    if (st == 400) {
        snprintf(msg, sizeof msg, "job id \"%.*s\" is malformed: an id is the %d lowercase hex "
                                  "digits POST /v1/jobs answered", (int)(len > 64 ? 64 : len), id,
                 JOB_ID_LEN);
        http_respond_error(req, 400, "bad_job_id", msg);
        return NULL;
    }
    if (st == 404) {
        snprintf(msg, sizeof msg, "no job %.*s on this router (ids do not survive a restart)",
                 (int)len, id);
        http_respond_error(req, 404, "not_found", msg);
        return NULL;
    }
    job *j = job_find(J, rnd);
    if (!j) {
        snprintf(msg, sizeof msg, "job %.*s is gone: finished jobs are kept for %u s and within "
                                  "the result store's size, oldest first",
                 (int)len, id, J->cfg.ttl_s);
        http_respond_error(req, 410, "gone", msg);
    }
    return j;
}

static void get_status(jobs *J, job *j, http_req *req)
{
    (void)J;
    api_format fmt;
    if (api_response_format(http_req_header(req, "Accept"), "application/json", &fmt)) {
        http_respond_error(req, 406, "not_acceptable",
                           "Accept names no format we produce: use application/json, "
                           "application/x-protobuf or image/png");
        return;
    }
    if (fmt != API_JSON) {
        if (j->state != JOB_SUCCEEDED) {
            char msg[200];
            snprintf(msg, sizeof msg, "job %s is %s: its result exists only once it has "
                                      "succeeded (ask for application/json to see the status)",
                     j->id, job_state_name(j->state));
            http_respond_error(req, 409, "no_result", msg);
            return;
        }
        if (fmt == API_PNG)
            http_respond(req, 200, "image/png", j->res_png, j->res_png_len);
        else
            http_respond(req, 200, "application/x-protobuf", j->res_proto, j->res_proto_len);
        return;
    }
    strbuf o = { 0 };
    job_status_json(j, 1, &o);
    strbuf_puts(&o, "\n");
    respond_strbuf(req, 200, &o);
}

static void cancel(jobs *J, job *j, http_req *req)
{
    (void)J;
    if (j->state == JOB_SUCCEEDED || j->state == JOB_FAILED) {
        char msg[160];
        snprintf(msg, sizeof msg, "job %s already %s: there is nothing to cancel", j->id,
                 job_state_name(j->state));
        http_respond_error(req, 409, "job_finished", msg);
        return;
    }
    job_cancel(j); /* idempotent: a cancelled job stays as it is */
    strbuf o = { 0 };
    job_status_json(j, 0, &o);
    strbuf_puts(&o, "\n");
    respond_strbuf(req, 200, &o);
}

static void events(jobs *J, job *j, http_req *req)
{
    long from;
    if (sse_last_event_id(http_req_header(req, "Last-Event-ID"), &from)) {
        http_respond_error(req, 400, "bad_field",
                           "Last-Event-ID must be the id of an event of this stream (a number)");
        return;
    }
    if (j->n_subs >= J->cfg.max_subscribers) {
        char msg[160];
        snprintf(msg, sizeof msg, "job %s already has %d event streams, the most allowed: close "
                                  "one or poll GET /v1/jobs/{id}", j->id, J->cfg.max_subscribers);
        http_resp_retry_after(req, 1);
        http_respond_error(req, 429, "too_many_subscribers", msg);
        return;
    }
    job_subscribe(j, req, from);
}

/* GET and DELETE /v1/jobs/{id}[/events] */
static void handle_job(http_req *req, void *ud)
{
    jobs *J = ud;
    const char *rest = http_req_path(req) + strlen("/v1/jobs/");
    const char *slash = strchr(rest, '/');
    size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);
    int want_events = 0;
    if (slash) {
        if (strcmp(slash, "/events") != 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "no such path: %.100s", http_req_path(req));
            http_respond_error(req, 404, "not_found", msg);
            return;
        }
        want_events = 1;
    }
    int del = !strcmp(http_req_method(req), "DELETE");
    if (want_events && del) {
        http_resp_header(req, "Allow", "GET, HEAD");
        http_respond_error(req, 405, "method_not_allowed",
                           "method DELETE is not allowed here; allowed: GET, HEAD");
        return;
    }
    job *j = lookup(J, req, rest, idlen);
    if (!j)
        return;
    if (want_events)
        events(J, j, req);
    else if (del)
        cancel(J, j, req);
    else
        get_status(J, j, req);
}

void jobs_sample_stream(jobs *J, http_req *req)
{
    job *j = admit(J, req, 1);
    if (j)
        job_subscribe(j, req, -1);
}

int jobs_http_routes(jobs *J)
{
    int rc = http_server_route(J->srv, "POST", "/v1/jobs", handle_submit, J);
    if (!rc)
        rc = http_server_route_prefix(J->srv, "GET", "/v1/jobs/", handle_job, J);
    if (!rc)
        rc = http_server_route_prefix(J->srv, "DELETE", "/v1/jobs/", handle_job, J);
    return rc;
}
