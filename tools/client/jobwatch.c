/* jobwatch.c -- jobs and event streams from the command line (see jobwatch.h). */
#include "tools/client/jobwatch.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "server/httpc.h"
#include "tools/client/cli.h"
#include "tools/client/sse_client.h"

#define BAR_WIDTH 30

void jw_bar(char *buf, size_t len, int done, int total, int steps_per, double t)
{
    if (total < 1)
        total = 1;
    if (done > total)
        done = total;
    int fill = (int)((long)done * BAR_WIDTH / total);
    char bar[BAR_WIDTH + 1];
    for (int i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    if (steps_per < 1)
        steps_per = 1;
    snprintf(buf, len, "[%s] %3d%% step %d/%d t=%.3f", bar, (int)((long)done * 100 / total),
             done / steps_per, total / steps_per, t);
}

static int request(const jw_opts *o, const char *method, const char *path, const char *accept,
                   const char *body, size_t len, httpc_response *r)
{
    char err[256];
    httpc *c;
    memset(r, 0, sizeof *r);
    if (httpc_open(o->hostport, o->timeout_ms, &c, err, sizeof err)) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    httpc_header h[2];
    size_t nh = 0;
    if (body)
        h[nh++] = (httpc_header){ "Content-Type", "application/json" };
    if (accept)
        h[nh++] = (httpc_header){ "Accept", accept };
    int rc = httpc_request(c, method, path, h, nh, body, len, r);
    httpc_close(c);
    if (rc) {
        fprintf(stderr, "ddm-client: %s %s%s: %s (is ddm-router running there?)\n", method,
                o->url, path, ddm_strerror(rc));
        httpc_response_free(r);
        return 1;
    }
    if (r->status >= 300) {
        cli_report_http_error(r);
        httpc_response_free(r);
        return 1;
    }
    return 0;
}

/* Reports the HTTP error an event stream's request got (body may be NULL). */
static void print_http_error(int status, const char *body)
{
    httpc_response r = { .status = status, .body = (char *)(body ? body : ""),
                         .body_len = body ? strlen(body) : 0 };
    cli_report_http_error(&r);
}

static int valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n != 48)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    return 1;
}

static int bad_id(const char *id)
{
    fprintf(stderr, "ddm-client: \"%s\" is not a job id: give the 48 hex digits "
                    "`ddm-client jobs submit` printed\n", id);
    return 1;
}

static int save_png(const jw_opts *o, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    httpc_response r;
    if (request(o, "GET", path, "image/png", NULL, 0, &r))
        return 1;
    char err[512];
    int bad = fs_write_file(o->out, r.body, r.body_len, err, sizeof err);
    httpc_response_free(&r);
    if (bad) {
        fprintf(stderr, "ddm-client: %s\n", err);
        return 1;
    }
    if (!o->quiet)
        fprintf(stderr, "wrote %s\n", o->out);
    return 0;
}

static void print_status(const cJSON *j)
{
    printf("job %s: %s", cli_jstr(j, "id"), cli_jstr(j, "status"));
    if (cJSON_GetObjectItemCaseSensitive(j, "queue_position"))
        printf(" (queue position %d)", (int)cli_jnum(j, "queue_position"));
    printf(", step %d/%d, %d images, seed %.0f\n", (int)cli_jnum(j, "step"), (int)cli_jnum(j, "steps"),
           (int)cli_jnum(j, "n"), cli_jnum(j, "seed"));
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (err)
        printf("error %s: %s\n", cli_jstr(err, "code"), cli_jstr(err, "message"));
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(j, "result");
    if (res) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(res, "timings");
        printf("expert calls %.0f; timings ms: total %.1f (queue %.1f, router %.1f, experts %.1f)\n",
               cli_jnum(res, "expert_calls"), cli_jnum(t, "total_ms"), cli_jnum(t, "queue_ms"),
               cli_jnum(t, "router_ms"), cli_jnum(t, "expert_ms"));
    }
}

/* GET or DELETE /v1/jobs/ID and print the status document it answers.
 * Returns 0 (and *succeeded) or 1. */
static int job_call(const jw_opts *o, const char *method, const char *id, int *succeeded)
{
    if (!valid_id(id))
        return bad_id(id);
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    httpc_response r;
    if (request(o, method, path, "application/json", NULL, 0, &r))
        return 1;
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    *succeeded = j && !strcmp(cli_jstr(j, "status"), "succeeded");
    if (o->json)
        fwrite(r.body, 1, r.body_len, stdout);
    else if (j && !o->quiet)
        print_status(j);
    cJSON_Delete(j);
    httpc_response_free(&r);
    return 0;
}

int jw_status(const jw_opts *o, const char *id)
{
    int succeeded;
    if (job_call(o, "GET", id, &succeeded))
        return 1;
    if (o->out) {
        if (!succeeded) {
            fprintf(stderr, "ddm-client: job %s has no result (yet): see its status\n", id);
            return 1;
        }
        return save_png(o, id);
    }
    return 0;
}

int jw_cancel(const jw_opts *o, const char *id)
{
    int succeeded;
    return job_call(o, "DELETE", id, &succeeded);
}

/* Reads events until the final one. Returns 0 on done(succeeded), 1 otherwise;
 * *final: the done event's data (malloc'd) when asked. *last_id: resume point. */
typedef struct watch_state {
    char last_id[32];
    int shown;                /* a progress line is on stderr */
} watch_state;

static int read_events(const jw_opts *o, ssec *s, watch_state *ws, char **final, size_t *flen,
                       int *ended)
{
    ssec_event ev;
    int rc;
    *ended = 0;
    while ((rc = ssec_next(s, &ev, 24 * 3600 * 1000)) == 1) {
        if (ev.id)
            snprintf(ws->last_id, sizeof ws->last_id, "%s", ev.id);
        if (o->events)
            printf("%s %s\n", ev.event, ev.data);
        cJSON *d = cJSON_ParseWithLength(ev.data, ev.data_len);
        if (!strcmp(ev.event, "step") && !o->quiet && d) {
            char line[160];
            int evals = (int)cli_jnum(d, "evaluations");
            /* Heun evaluates twice per step: its step number lags the index */
            int per = (int)cli_jnum(d, "index") > (int)cli_jnum(d, "step") ? 2 : 1;
            jw_bar(line, sizeof line, (int)cli_jnum(d, "index") + 1, evals, per, cli_jnum(d, "t"));
            fprintf(stderr, "\r%s", line);
            ws->shown = 1;
        } else if (!strcmp(ev.event, "queued") && !o->quiet && d) {
            fprintf(stderr, "\rqueued, position %d          ", (int)cli_jnum(d, "position"));
            ws->shown = 1;
        } else if (!strcmp(ev.event, "done") || !strcmp(ev.event, "error")) {
            if (ws->shown)
                fprintf(stderr, "\n");
            ws->shown = 0;
            *ended = 1;
            const char *status = d ? cli_jstr(d, "status") : "";
            int ok = !strcmp(ev.event, "done") && (!*status || !strcmp(status, "succeeded"));
            if (!ok) {
                const cJSON *err = d ? cJSON_GetObjectItemCaseSensitive(d, "error") : NULL;
                if (err)
                    fprintf(stderr, "ddm-client: job failed: %s: %s\n", cli_jstr(err, "code"),
                            cli_jstr(err, "message"));
                else
                    fprintf(stderr, "ddm-client: job %s at step %d of %d\n", status,
                            (int)cli_jnum(d, "step"), (int)cli_jnum(d, "steps"));
            }
            if (ok && final) {
                *final = malloc(ev.data_len + 1);
                if (*final) {
                    memcpy(*final, ev.data, ev.data_len + 1);
                    *flen = ev.data_len;
                }
            }
            cJSON_Delete(d);
            return ok ? 0 : 1;
        }
        cJSON_Delete(d);
    }
    if (ws->shown)
        fprintf(stderr, "\n");
    ws->shown = 0;
    return 1; /* the stream ended without a final event */
}

int jw_watch(const jw_opts *o, const char *id)
{
    if (!valid_id(id))
        return bad_id(id);
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    watch_state ws = { .last_id = "" };
    for (int attempt = 0; attempt < 20; attempt++) {
        httpc_header h[1] = { { "Last-Event-ID", ws.last_id } };
        ssec *s;
        int status;
        char *body = NULL;
        int rc = ssec_open(o->hostport, "GET", path, h, ws.last_id[0] ? 1 : 0, NULL, 0,
                           o->timeout_ms, &s, &status, &body);
        if (rc) {
            if (status) {
                print_http_error(status, body);
                free(body);
                return 1;
            }
            fprintf(stderr, "ddm-client: GET %s%s: %s\n", o->url, path, ddm_strerror(rc));
            sleep(1);
            continue;
        }
        int ended;
        rc = read_events(o, s, &ws, NULL, NULL, &ended);
        ssec_close(s);
        if (ended) {
            if (rc == 0 && o->out)
                return save_png(o, id);
            return rc;
        }
        sleep(1); /* dropped: resume after the last step we saw */
    }
    fprintf(stderr, "ddm-client: the event stream of job %s kept dropping: giving up\n", id);
    return 1;
}

int jw_submit(const jw_opts *o, const char *body, size_t len, int wait)
{
    httpc_response r;
    if (request(o, "POST", "/v1/jobs", NULL, body, len, &r))
        return 1;
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    char id[64] = "";
    snprintf(id, sizeof id, "%s", j ? cli_jstr(j, "id") : "");
    if (o->json)
        fwrite(r.body, 1, r.body_len, stdout);
    else
        printf("%s\n", id);
    if (!o->quiet && j && !o->json)
        fprintf(stderr, "job %s %s%s\n", id, cli_jstr(j, "status"),
                cJSON_GetObjectItemCaseSensitive(j, "queue_position") ? " (queued)" : "");
    cJSON_Delete(j);
    httpc_response_free(&r);
    fflush(stdout);
    if (!wait)
        return 0;
    return jw_watch(o, id);
}

int jw_stream_sample(const jw_opts *o, const uint8_t *body, size_t len, char **json,
                     size_t *json_len)
{
    httpc_header h[1] = { { "Content-Type", "application/json" } };
    ssec *s;
    int status;
    char *err = NULL;
    int rc = ssec_open(o->hostport, "POST", "/v1/samples", h, 1, body, len, o->timeout_ms, &s,
                       &status, &err);
    if (rc) {
        if (status) {
            print_http_error(status, err);
        } else {
            fprintf(stderr, "ddm-client: POST %s/v1/samples: %s (is ddm-router running there?)\n",
                    o->url, ddm_strerror(rc));
        }
        free(err);
        return 1;
    }
    watch_state ws = { .last_id = "" };
    int ended;
    *json = NULL;
    rc = read_events(o, s, &ws, json, json_len, &ended);
    ssec_close(s);
    if (!rc && !*json) {
        fprintf(stderr, "ddm-client: out of memory\n");
        return 1;
    }
    if (!ended)
        fprintf(stderr, "ddm-client: the stream ended before the result: retry\n");
    return rc;
}
