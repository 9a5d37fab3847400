/* jobs_http.c -- the job endpoints (see jobs.h and docs/api.md):
 *   POST   /v1/jobs                 submit (202, Location)
 *   GET    /v1/jobs/{id}            status; the result when done (per Accept)
 *   DELETE /v1/jobs/{id}            cancel at the next step boundary
 *   GET    /v1/jobs/{id}/events     Server-Sent Events (Last-Event-ID resumes)
 * and POST /v1/samples with Accept: text/event-stream (jobs_sample_stream).
 * Every route goes through service_route (the token check). The body is
 * /v1/samples' plus "priority" and "preview_every", admitted by admit.c as
 * /v1/samples is. */
#include "router/jobs_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "router/sse.h"

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

/* Admits req's body as a job (sync: a streamed /v1/samples) the way POST
 * /v1/samples is admitted (admit.h). Returns the job, or NULL having answered
 * req with the error. */
static job *admit_job(jobs *J, http_req *req, int sync)
{
    sample_params p;
    api_job_fields jf;
    if (admit_request(J->adm, req, &p, &jf))
        return NULL;
    job *j;
    int rc = job_submit(J, &p, jf.preview_every, sync, http_req_user(req), &j);
    if (rc) {
        respond_submit_error(req, rc);
        return NULL;
    }
    return j;
}

static void handle_submit(http_req *req, void *ud)
{
    jobs *J = ud;
    job *j = admit_job(J, req, 0);
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
    http_respond_strbuf(req, 202, "application/json", &o);
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
    http_respond_strbuf(req, 200, "application/json", &o);
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
    http_respond_strbuf(req, 200, "application/json", &o);
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
    job *j = admit_job(J, req, 1);
    if (j)
        job_subscribe(j, req, -1);
}

int jobs_http_routes(jobs *J)
{
    int rc = service_route(J->svc, "POST", "/v1/jobs", handle_submit, J, 0);
    if (!rc)
        rc = service_route(J->svc, "GET", "/v1/jobs/", handle_job, J, SERVICE_ROUTE_PREFIX);
    if (!rc)
        rc = service_route(J->svc, "DELETE", "/v1/jobs/", handle_job, J, SERVICE_ROUTE_PREFIX);
    return rc;
}
