/* test_jobs.c -- async jobs and their event streams, end to end: real
 * ddm-expert and ddm-router processes on loopback (a random toy set), real
 * HTTP connections. POST/GET/DELETE /v1/jobs, Server-Sent Events with resume
 * (Last-Event-ID) and cancel, the streamed /v1/samples, queue positions,
 * admission, subscriber bounds, slow readers, TTL and size eviction, routing
 * metrics. Every response is checked against docs/openapi.yaml at the end. */
#include <cjson/cJSON.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/base64.h"
#include "common/png.h"
#include "ddm/v1/api.pb-c.h"
#include "server/httpc.h"
#include "tests/support/apicheck.h"
#include "tests/support/proc.h"
#include "tests/support/cluster.h"
#include "tools/client/sse_client.h"

#define K 3
#define DIM 16
#define CLASSES 3

static tcluster tc;

static int setup(void **state)
{
    (void)state;
    /* 3 ms batching delay: every step takes a few ms, so a 1000-step job runs
     * for seconds (long enough to watch and cancel whatever the machine does) */
    static const char *const wargs[] = { "--max-delay-us", "3000", NULL };
    static const char *const args[] = { "--max-request-cost", "1000000", "--max-images", "600", "--job-ttl-s", "4", "--job-store-mb", "1",
                     "--max-subscribers", "3", "--sse-heartbeat-ms", "300", NULL };
    if (tcluster_start_toy(&tc, K, DIM, CLASSES, wargs, args)) {
        tcluster_stop(&tc, 0);
        return -1;
    }
    apicheck_begin();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tcluster_stop(&tc, 0);
    apicheck_end();
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------ */

/* One request to hostport on a fresh connection with extra headers (nh of
 * them) and, when body is set, Content-Type: application/json; records the
 * response. Returns the status. */
static int call_hp(const char *hostport, const char *method, const char *path,
                   const httpc_header *extra, size_t nh, const char *body, httpc_response *r)
{
    char err[128];
    httpc *c;
    assert_int_equal(httpc_open(hostport, 30000, &c, err, sizeof err), 0);
    httpc_header h[8];
    size_t n = 0;
    if (body)
        h[n++] = (httpc_header){ "Content-Type", "application/json" };
    for (size_t i = 0; i < nh && n < 8; i++)
        h[n++] = extra[i];
    int rc = httpc_request(c, method, path, h, n, body, body ? strlen(body) : 0, r);
    httpc_close(c);
    if (rc)
        fail_msg("%s %s: transport error %d", method, path, rc);
    apicheck_http(method, path, r);
    return r->status;
}

/* One request to the cluster's router; accept may be NULL. Returns the status. */
static int call(const char *method, const char *path, const char *accept, const char *body,
                httpc_response *r)
{
    httpc_header h[1] = { { "Accept", accept } };
    return call_hp(tc.hostport, method, path, h, accept ? 1 : 0, body, r);
}

static cJSON *call_json(const char *method, const char *path, const char *body, int want)
{
    httpc_response r;
    int st = call(method, path, NULL, body, &r);
    if (st != want)
        fail_msg("%s %s -> %d (wanted %d): %s", method, path, st, want, r.body);
    cJSON *j = cJSON_Parse(r.body);
    if (!j)
        fail_msg("%s %s: body is not JSON: %s", method, path, r.body);
    httpc_response_free(&r);
    return j;
}

static const char *str(cJSON *o, const char *k)
{
    cJSON *it = cJSON_GetObjectItem(o, k);
    return cJSON_IsString(it) ? it->valuestring : "";
}

static double num(cJSON *o, const char *k)
{
    cJSON *it = cJSON_GetObjectItem(o, k);
    if (!cJSON_IsNumber(it))
        fail_msg("field %s is not a number", k);
    return it->valuedouble;
}

/* Submits a job; returns its id in id[49]. */
static void submit(const char *body, char id[64])
{
    httpc_response r;
    int st = call("POST", "/v1/jobs", NULL, body, &r);
    if (st != 202)
        fail_msg("POST /v1/jobs %s -> %d: %s", body, st, r.body);
    cJSON *j = cJSON_Parse(r.body);
    assert_non_null(j);
    snprintf(id, 64, "%s", str(j, "id"));
    assert_int_equal(strlen(id), 48);
    char loc[100];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
    assert_string_equal(httpc_response_header(&r, "Location"), loc);
    cJSON_Delete(j);
    httpc_response_free(&r);
}

static cJSON *status_of(const char *id)
{
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    return call_json("GET", path, NULL, 200);
}

/* Polls until the job has finished; returns its status document. */
static cJSON *wait_done(const char *id)
{
    for (int i = 0; i < 3000; i++) {
        cJSON *j = status_of(id);
        const char *s = str(j, "status");
        if (strcmp(s, "queued") && strcmp(s, "running"))
            return j;
        cJSON_Delete(j);
        usleep(20000);
    }
    fail_msg("job %s never finished", id);
    return NULL;
}

static ssec *open_events(const char *id, const char *last_id, int *status, char **body)
{
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    httpc_header h[1] = { { "Last-Event-ID", last_id } };
    ssec *s = NULL;
    int rc = ssec_open(tc.hostport, "GET", path, h, last_id ? 1 : 0, NULL, 0, 10000, &s, status,
                       body);
    if (rc && rc != -1011 /* DDM_EPROTO: an HTTP error, body given */)
        fail_msg("GET %s: transport error %d", path, rc);
    if (rc && body && *body)
        apicheck_response("GET", path, *status, "application/json", *body, strlen(*body));
    return s;
}

/* Next event (recorded for the schema check); fails the test on a timeout. */
static int next_event(ssec *s, const char *path, ssec_event *ev)
{
    int rc = ssec_next(s, ev, 30000);
    if (rc < 0)
        fail_msg("event stream %s: error %d", path, rc);
    if (rc == 1)
        apicheck_event(strcmp(path, "/v1/samples") ? "GET" : "POST", path, ev->event, ev->data);
    return rc;
}

/* Sum of a Prometheus series' values whose line starts with prefix. */
static double metric_sum(const char *prefix)
{
    httpc_response r;
    assert_int_equal(call("GET", "/metrics", NULL, NULL, &r), 200);
    double sum = 0;
    size_t pl = strlen(prefix);
    for (char *line = r.body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, prefix, pl)) {
            char *sp = strchr(line, ' ');
            if (sp)
                sum += strtod(sp + 1, NULL);
        }
    httpc_response_free(&r);
    return sum;
}

static void check_png(const char *b64, int *w, int *h)
{
    size_t len = strlen(b64);
    uint8_t *png = malloc(len);
    long n = base64_decode(b64, len, png);
    assert_true(n > 0);
    uint8_t *px;
    char err[128];
    assert_int_equal(pngio_decode_grey(png, (size_t)n, &px, w, h, err, sizeof err), 0);
    free(px);
    free(png);
}

/* A second router on the cluster's workers with extra flags; its host:port in hp. */
static pid_t other_router(const char *const *args, char hp[64])
{
    int port;
    pid_t pid = tcluster_add_router(&tc, args, &port);
    assert_true(pid > 0);
    snprintf(hp, 64, "127.0.0.1:%d", port);
    return pid;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_submit_status_result(void **state)
{
    (void)state;
    char id[64];
    submit("{\"n\": 2, \"steps\": 4, \"seed\": 5, \"strategy\": \"top-2\"}", id);
    cJSON *st = wait_done(id);
    assert_string_equal(str(st, "status"), "succeeded");
    assert_int_equal((int)num(st, "step"), 4);
    assert_int_equal((int)num(st, "steps"), 4);
    cJSON *res = cJSON_GetObjectItem(st, "result");
    assert_non_null(res);
    /* the same images as the synchronous call with the same seed */
    cJSON *sync = call_json("POST", "/v1/samples",
                            "{\"n\": 2, \"steps\": 4, \"seed\": 5, \"strategy\": \"top-2\"}", 200);
    cJSON *a = cJSON_GetObjectItem(res, "images"), *b = cJSON_GetObjectItem(sync, "images");
    assert_int_equal(cJSON_GetArraySize(a), 2);
    for (int i = 0; i < 2; i++)
        assert_string_equal(cJSON_GetArrayItem(a, i)->valuestring,
                            cJSON_GetArrayItem(b, i)->valuestring);
    /* the job's routing statistics count exactly the expert calls made */
    cJSON *routing = cJSON_GetObjectItem(st, "routing");
    cJSON *sel = cJSON_GetObjectItem(routing, "selections");
    assert_int_equal(cJSON_GetArraySize(sel), K);
    cJSON *by = cJSON_GetObjectItem(res, "calls_by_expert");
    for (int k = 0; k < K; k++) {
        double total = 0;
        cJSON *row = cJSON_GetArrayItem(sel, k), *v;
        cJSON_ArrayForEach(v, row) total += v->valuedouble;
        assert_int_equal((long)total, (long)cJSON_GetArrayItem(by, k)->valuedouble);
    }
    cJSON_Delete(sync);
    cJSON_Delete(st);

    /* the result in the other encodings */
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    httpc_response r;
    assert_int_equal(call("GET", path, "image/png", NULL, &r), 200);
    assert_string_equal(httpc_response_header(&r, "Content-Type"), "image/png");
    uint8_t *px;
    int w, h;
    char err[128];
    assert_int_equal(pngio_decode_grey((uint8_t *)r.body, r.body_len, &px, &w, &h, err, sizeof err), 0);
    free(px);
    httpc_response_free(&r);
    assert_int_equal(call("GET", path, "application/x-protobuf", NULL, &r), 200);
    Ddm__V1__SampleResponse *m =
        ddm__v1__sample_response__unpack(NULL, r.body_len, (uint8_t *)r.body);
    assert_non_null(m);
    assert_int_equal(m->n_images, 2);
    assert_int_equal(m->seed, 5);
    ddm__v1__sample_response__free_unpacked(m, NULL);
    httpc_response_free(&r);
    assert_int_equal(call("GET", path, "text/html", NULL, &r), 406);
    httpc_response_free(&r);
    /* a finished job cannot be cancelled */
    assert_int_equal(call("DELETE", path, NULL, NULL, &r), 409);
    httpc_response_free(&r);
}

static void test_bad_ids_and_bodies(void **state)
{
    (void)state;
    static const struct { const char *method, *path, *body; int status; const char *msg; } cases[] = {
        { "GET", "/v1/jobs/xyz", NULL, 400, "malformed" },
        { "GET", "/v1/jobs/0123456789abcdef0123456789abcdef0123456789abcdeF", NULL, 400, "malformed" },
        { "GET", "/v1/jobs/0123456789abcdef0123456789abcdef0123456789abcdef", NULL, 404, "no job" },
        { "DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef0123456789abcdef", NULL, 404, NULL },
        { "GET", "/v1/jobs/0123456789abcdef0123456789abcdef0123456789abcdef/events", NULL, 404, NULL },
        { "GET", "/v1/jobs/0123456789abcdef0123456789abcdef0123456789abcdef/other", NULL, 404, NULL },
        { "DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef0123456789abcdef/events", NULL, 405, NULL },
        { "PUT", "/v1/jobs/x", NULL, 405, NULL },
        { "GET", "/v1/jobs", NULL, 405, NULL },
        { "POST", "/v1/jobs", "{\"priority\": 1000}", 400, "priority" },
        { "POST", "/v1/jobs", "{\"priority\": 1.5}", 400, "priority" },
        { "POST", "/v1/jobs", "{\"preview_every\": -1}", 400, "preview_every" },
        { "POST", "/v1/jobs", "{\"preview_every\": \"2\"}", 400, "preview_every" },
        { "POST", "/v1/jobs", "{\"n\": 0}", 400, "1..256" },
        { "POST", "/v1/jobs", "{\"bogus\": 1}", 400, "unknown field" },
        { "POST", "/v1/jobs", "{n: 1", 400, "JSON" },
        /* the job fields belong to jobs and event streams */
        { "POST", "/v1/samples", "{\"priority\": 1}", 400, "POST /v1/jobs" },
        { "POST", "/v1/samples", "{\"preview_every\": 1}", 400, "unknown field" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        httpc_response r;
        int st = call(cases[i].method, cases[i].path, NULL, cases[i].body, &r);
        if (st != cases[i].status)
            fail_msg("%s %s %s -> %d, wanted %d: %s", cases[i].method, cases[i].path,
                     cases[i].body ? cases[i].body : "", st, cases[i].status, r.body);
        if (cases[i].msg && !strstr(r.body, cases[i].msg))
            fail_msg("%s %s: message lacks \"%s\": %s", cases[i].method, cases[i].path,
                     cases[i].msg, r.body);
        cJSON *j = cJSON_Parse(r.body);
        assert_non_null(cJSON_GetObjectItem(j, "error"));
        cJSON_Delete(j);
        httpc_response_free(&r);
    }
}

/* Step events of one stream: index order, per image experts and weights. */
static void check_step(cJSON *d, int want_index, int n)
{
    assert_int_equal((int)num(d, "index"), want_index);
    double t = num(d, "t");
    assert_true(t > 0 && t <= 1);
    cJSON *imgs = cJSON_GetObjectItem(d, "images");
    assert_int_equal(cJSON_GetArraySize(imgs), n);
    cJSON *im;
    cJSON_ArrayForEach(im, imgs) {
        cJSON *ex = cJSON_GetObjectItem(im, "experts"), *w = cJSON_GetObjectItem(im, "weights");
        assert_int_equal(cJSON_GetArraySize(ex), 2); /* top-2 */
        assert_int_equal(cJSON_GetArraySize(w), 2);
        double s = cJSON_GetArrayItem(w, 0)->valuedouble + cJSON_GetArrayItem(w, 1)->valuedouble;
        assert_float_equal(s, 1.0, 1e-3);
    }
}

static void test_events_resume_and_cancel(void **state)
{
    (void)state;
    char id[64], path[120];
    submit("{\"n\": 3, \"steps\": 1000, \"seed\": 9, \"preview_every\": 5}", id);
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    int status;
    ssec *s = open_events(id, NULL, &status, NULL);
    assert_non_null(s);
    ssec_event ev;
    int steps = 0, previews = 0;
    char last_id[32] = "";
    while (steps < 12 || previews < 1) {
        assert_int_equal(next_event(s, path, &ev), 1);
        cJSON *d = cJSON_Parse(ev.data);
        assert_non_null(d);
        if (!strcmp(ev.event, "step")) {
            check_step(d, steps, 3);
            char want[16];
            snprintf(want, sizeof want, "%d", steps + 1);
            assert_string_equal(ev.id, want);
            snprintf(last_id, sizeof last_id, "%s", ev.id);
            steps++;
        } else if (!strcmp(ev.event, "preview")) {
            int w, h;
            check_png(str(d, "png"), &w, &h);
            assert_true(w >= 8 && h >= 8); /* 2 x 2 grid of 4 x 4 images */
            assert_int_equal((int)num(d, "step") % 5, 0);
            previews++;
        } else if (strcmp(ev.event, "queued") != 0) {
            fail_msg("unexpected event %s: %s", ev.event, ev.data);
        }
        cJSON_Delete(d);
    }
    ssec_close(s);

    /* resume: the next step event is the one after Last-Event-ID */
    s = open_events(id, last_id, &status, NULL);
    assert_non_null(s);
    for (;;) {
        assert_int_equal(next_event(s, path, &ev), 1);
        if (!strcmp(ev.event, "step"))
            break;
    }
    assert_int_equal(atoi(ev.id), atoi(last_id) + 1);
    cJSON *d = cJSON_Parse(ev.data);
    check_step(d, atoi(last_id), 3);
    cJSON_Delete(d);
    /* a malformed Last-Event-ID is refused */
    char *body = NULL;
    assert_null(open_events(id, "abc", &status, &body));
    assert_int_equal(status, 400);
    free(body);

    /* cancel: the stream ends with done(cancelled), expert calls stop */
    httpc_response r;
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    assert_int_equal(call("DELETE", path, NULL, NULL, &r), 200);
    cJSON *st = cJSON_Parse(r.body);
    assert_string_equal(str(st, "status"), "cancelled");
    int at = (int)num(st, "step");
    assert_true(at < 1000);
    cJSON_Delete(st);
    httpc_response_free(&r);
    int rc;
    char epath[200];
    snprintf(epath, sizeof epath, "/v1/jobs/%s/events", id);
    while ((rc = next_event(s, epath, &ev)) == 1 && strcmp(ev.event, "done") != 0)
        ;
    assert_int_equal(rc, 1);
    d = cJSON_Parse(ev.data);
    assert_string_equal(str(d, "status"), "cancelled");
    cJSON_Delete(d);
    assert_int_equal(ssec_next(s, &ev, 10000), 0); /* then the stream closes */
    ssec_close(s);
    double rows = metric_sum("ddm_expert_rows_total");
    usleep(300000);
    assert_true(metric_sum("ddm_expert_rows_total") == rows); /* nothing more is computed */
    /* idempotent */
    assert_int_equal(call("DELETE", path, NULL, NULL, &r), 200);
    httpc_response_free(&r);
    st = status_of(id);
    assert_string_equal(str(st, "status"), "cancelled");
    cJSON_Delete(st);
    /* the finished job's stream replays its final state and closes */
    s = open_events(id, "3", &status, NULL);
    assert_non_null(s);
    assert_int_equal(next_event(s, epath, &ev), 1);
    assert_string_equal(ev.event, "done");
    assert_int_equal(ssec_next(s, &ev, 10000), 0);
    ssec_close(s);
    /* the result of a cancelled job: no */
    assert_int_equal(call("GET", path, "image/png", NULL, &r), 409);
    httpc_response_free(&r);
}

static void test_stream_behind_pipelined_request(void **state)
{
    (void)state;
    /* an event stream pipelined behind a request still being computed starts
     * only once that response is out, and nothing is interleaved */
    char id[64];
    submit("{\"n\": 1, \"steps\": 2}", id);
    cJSON *st = wait_done(id);
    cJSON_Delete(st);
    const char *body = "{\"n\": 1, \"steps\": 30}";
    char raw[800];
    snprintf(raw, sizeof raw,
             "POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%sGET /v1/jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n",
             strlen(body), body, id);
    char *out;
    size_t len;
    assert_int_equal(httpc_raw(tc.hostport, raw, strlen(raw), 30000, &out, &len), 0);
    char *first = strstr(out, "HTTP/1.1 200"), *images = strstr(out, "\"images\"");
    char *second = first ? strstr(first + 1, "HTTP/1.1 200") : NULL;
    if (!first || !images || !second || images > second ||
        !strstr(second, "text/event-stream") || !strstr(second, "event: done"))
        fail_msg("pipelined response then stream, in order: %s", out);
    free(out);
}

static void test_streamed_samples(void **state)
{
    (void)state;
    const char *body = "{\"n\": 2, \"steps\": 6, \"seed\": 21, \"preview_every\": 3}";
    httpc_header h[] = { { "Content-Type", "application/json" } };
    ssec *s;
    int status;
    char *err = NULL;
    int rc = ssec_open(tc.hostport, "POST", "/v1/samples", h, 1, body, strlen(body), 10000, &s,
                       &status, &err);
    if (rc)
        fail_msg("streamed /v1/samples: %d %d %s", rc, status, err ? err : "");
    ssec_event ev;
    int steps = 0, previews = 0, done = 0;
    while (next_event(s, "/v1/samples", &ev) == 1) {
        cJSON *d = cJSON_Parse(ev.data);
        assert_non_null(d);
        if (!strcmp(ev.event, "step")) {
            check_step(d, steps++, 2);
        } else if (!strcmp(ev.event, "preview")) {
            assert_int_equal((int)num(d, "step"), 3); /* not 6: the last step is the result */
            previews++;
        } else if (!strcmp(ev.event, "done")) {
            /* the whole response, as the plain call gives it */
            cJSON *plain = call_json("POST", "/v1/samples",
                                     "{\"n\": 2, \"steps\": 6, \"seed\": 21}", 200);
            cJSON *a = cJSON_GetObjectItem(d, "images"), *b = cJSON_GetObjectItem(plain, "images");
            assert_int_equal(cJSON_GetArraySize(a), 2);
            for (int i = 0; i < 2; i++)
                assert_string_equal(cJSON_GetArrayItem(a, i)->valuestring,
                                    cJSON_GetArrayItem(b, i)->valuestring);
            cJSON_Delete(plain);
            done++;
        }
        cJSON_Delete(d);
    }
    ssec_close(s);
    assert_int_equal(steps, 6);
    assert_int_equal(previews, 1);
    assert_int_equal(done, 1);
    /* bad input is refused before the stream starts */
    rc = ssec_open(tc.hostport, "POST", "/v1/samples", h, 1, "{\"n\": 0}", 8, 10000, &s, &status,
                   &err);
    assert_int_equal(status, 400);
    free(err);
}

static void test_queue_position(void **state)
{
    (void)state;
    /* a second router that takes 2 images per tick, one tick at a time */
    const char *const args[] = { "--tick-capacity", "2", "--ticks", "1", NULL };
    char hp[64], err[128];
    pid_t pid = other_router(args, hp);
    httpc *c;
    assert_int_equal(httpc_open(hp, 10000, &c, err, sizeof err), 0);
    httpc_header h[] = { { "Content-Type", "application/json" } };
    /* the first has the higher priority: it keeps both tick places while it runs
     * (the others would need 10 s of ageing to catch up), so the others wait */
    const char *bodies[3] = { "{\"n\": 256, \"steps\": 3, \"priority\": 10}",
                              "{\"n\": 1, \"steps\": 2}", "{\"n\": 1, \"steps\": 2}" };
    char ids[3][64];
    int pos[3];
    for (int i = 0; i < 3; i++) {
        httpc_response r;
        assert_int_equal(httpc_request(c, "POST", "/v1/jobs", h, 1, bodies[i], strlen(bodies[i]), &r), 0);
        assert_int_equal(r.status, 202);
        apicheck_response("POST", "/v1/jobs", r.status, "application/json", r.body, r.body_len);
        cJSON *j = cJSON_Parse(r.body);
        snprintf(ids[i], 64, "%s", str(j, "id"));
        cJSON *qp = cJSON_GetObjectItem(j, "queue_position");
        pos[i] = qp ? qp->valueint : -1;
        cJSON_Delete(j);
        httpc_response_free(&r);
    }
    /* the first started at once; the others wait behind it, in order */
    assert_int_equal(pos[0], -1);
    assert_int_equal(pos[1], 0);
    assert_int_equal(pos[2], 1);
    /* the third's stream says where it is, then that it moved up, then runs */
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", ids[2]);
    ssec *s;
    int status;
    assert_int_equal(ssec_open(hp, "GET", path, NULL, 0, NULL, 0, 10000, &s, &status, NULL), 0);
    ssec_event ev;
    int last_pos = 99, first_pos = -1, saw_queued = 0, saw_step = 0;
    while (ssec_next(s, &ev, 30000) == 1) {
        apicheck_event("GET", path, ev.event, ev.data);
        cJSON *d = cJSON_Parse(ev.data);
        if (!strcmp(ev.event, "queued")) {
            int p = (int)num(d, "position");
            assert_true(p < last_pos);
            assert_false(saw_step);
            if (first_pos < 0)
                first_pos = p;
            last_pos = p;
            saw_queued++;
        } else if (!strcmp(ev.event, "step")) {
            saw_step++;
        }
        cJSON_Delete(d);
    }
    ssec_close(s);
    assert_true(saw_queued >= 1);
    assert_int_equal(first_pos, 1);
    assert_int_equal(saw_step, 2);
    httpc_close(c);
    proc_stop(pid, SIGTERM, 5000);
}

static void test_admission_and_subscribers(void **state)
{
    (void)state;
    /* queued jobs count toward --max-images (600): 3 x 200 fill it */
    char ids[3][64], id[64];
    for (int i = 0; i < 3; i++)
        submit("{\"n\": 200, \"steps\": 1000}", ids[i]);
    httpc_response r;
    assert_int_equal(call("POST", "/v1/jobs", NULL, "{\"n\": 1, \"steps\": 2}", &r), 503);
    assert_non_null(httpc_response_header(&r, "Retry-After"));
    httpc_response_free(&r);
    /* at most 3 streams per job (--max-subscribers 3) */
    ssec *s[3];
    int status;
    for (int i = 0; i < 3; i++) {
        s[i] = open_events(ids[0], NULL, &status, NULL);
        assert_non_null(s[i]);
    }
    char *body = NULL;
    assert_null(open_events(ids[0], NULL, &status, &body));
    assert_int_equal(status, 429);
    free(body);
    /* one reader stops reading: the others, and the server, go on */
    int fd = ssec_fd(s[0]);
    int small = 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    ssec_event ev;
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", ids[0]);
    for (int i = 0; i < 50; i++)
        assert_int_equal(next_event(s[1], path, &ev), 1);
    for (int i = 0; i < 3; i++) {
        char p[256];
        snprintf(p, sizeof p, "/v1/jobs/%s", ids[i]);
        assert_int_equal(call("DELETE", p, NULL, NULL, &r), 200);
        httpc_response_free(&r);
    }
    for (int i = 0; i < 3; i++)
        ssec_close(s[i]);
    /* room again, once the cancelled jobs' images have left the ticks in flight */
    for (int i = 0; i < 500 && metric_sum("ddm_images_in_flight") > 0; i++)
        usleep(20000);
    submit("{\"n\": 1, \"steps\": 2}", id);
    cJSON *st = wait_done(id);
    assert_string_equal(str(st, "status"), "succeeded");
    cJSON_Delete(st);
}

static void test_slow_reader_is_cut_off(void **state)
{
    (void)state;
    /* a big job whose step events (n = 256) pile up behind a reader that never reads */
    char id[64];
    submit("{\"n\": 256, \"steps\": 1000, \"preview_every\": 1}", id);
    int status;
    ssec *s = open_events(id, NULL, &status, NULL);
    assert_non_null(s);
    int small = 1024;
    setsockopt(ssec_fd(s), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    double lagging0 = metric_sum("ddm_sse_streams_lagging_total");
    /* meanwhile other work is served */
    cJSON *ok = call_json("POST", "/v1/samples", "{\"n\": 1, \"steps\": 3}", 200);
    cJSON_Delete(ok);
    int cut = 0;
    for (int i = 0; i < 600 && !cut; i++) {
        cut = metric_sum("ddm_sse_streams_lagging_total") > lagging0;
        if (!cut)
            usleep(50000);
    }
    assert_true(cut);
    assert_true(metric_sum("ddm_sse_previews_skipped_total") > 0);
    ssec_close(s);
    char p[256];
    snprintf(p, sizeof p, "/v1/jobs/%s", id);
    httpc_response r;
    assert_int_equal(call("DELETE", p, NULL, NULL, &r), 200);
    httpc_response_free(&r);
}

static void test_eviction(void **state)
{
    (void)state;
    /* size: two results of ~1 MiB each (trace of 256 images x 40 steps) in a 1 MiB store */
    char a[64], b[64];
    submit("{\"n\": 256, \"steps\": 40, \"trace\": true}", a);
    cJSON *st = wait_done(a);
    cJSON_Delete(st);
    submit("{\"n\": 256, \"steps\": 40, \"trace\": true}", b);
    st = wait_done(b);
    assert_string_equal(str(st, "status"), "succeeded");
    cJSON_Delete(st);
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s", a);
    httpc_response r;
    assert_int_equal(call("GET", path, NULL, NULL, &r), 410);
    httpc_response_free(&r);
    assert_true(metric_sum("ddm_jobs_evicted_total{reason=\"size\"}") >= 1);
    /* TTL (4 s): the newest goes too, in time */
    snprintf(path, sizeof path, "/v1/jobs/%s", b);
    int gone = 0;
    for (int i = 0; i < 400 && !gone; i++) {
        gone = call("GET", path, NULL, NULL, &r) == 410;
        httpc_response_free(&r);
        if (!gone)
            usleep(50000);
    }
    assert_true(gone);
    assert_true(metric_sum("ddm_jobs_evicted_total{reason=\"ttl\"}") >= 1);
    /* codes outside /metrics' always-listed set count once sent: the submit, the 410 */
    assert_true(metric_sum("ddm_http_responses_total{code=\"202\"}") >= 1);
    assert_true(metric_sum("ddm_http_responses_total{code=\"410\"}") >= 1);
}

static void test_routing_metrics(void **state)
{
    (void)state;
    double before[K];
    char prefix[80];
    for (int i = 0; i < 500 && metric_sum("ddm_images_in_flight") > 0; i++)
        usleep(20000); /* nothing else is computing meanwhile */
    for (int k = 0; k < K; k++) {
        snprintf(prefix, sizeof prefix, "ddm_routing_selections_total{expert=\"%d\"", k);
        before[k] = metric_sum(prefix);
    }
    cJSON *res = call_json("POST", "/v1/samples", "{\"n\": 3, \"steps\": 10, \"seed\": 4}", 200);
    cJSON *by = cJSON_GetObjectItem(res, "calls_by_expert");
    for (int k = 0; k < K; k++) {
        snprintf(prefix, sizeof prefix, "ddm_routing_selections_total{expert=\"%d\"", k);
        assert_int_equal((long)(metric_sum(prefix) - before[k]),
                         (long)cJSON_GetArrayItem(by, k)->valuedouble);
    }
    cJSON_Delete(res);
    /* bounded label set: K experts x 10 bands */
    httpc_response r;
    assert_int_equal(call("GET", "/metrics", NULL, NULL, &r), 200);
    int series = 0;
    for (char *p = r.body; (p = strstr(p, "\nddm_routing_weight_total{")); p++)
        series++;
    assert_int_equal(series, K * 10);
    assert_non_null(strstr(r.body, "t_bucket=\"0.9\""));
    httpc_response_free(&r);
}

static void test_heartbeats(void **state)
{
    (void)state;
    /* a queued job's quiet stream gets comment lines (--sse-heartbeat-ms 100) */
    const char *const args[] = { "--tick-capacity", "1", "--ticks", "1", "--sse-heartbeat-ms",
                                 "100", NULL };
    char hp[64], err[128];
    pid_t pid = other_router(args, hp);
    httpc *c;
    assert_int_equal(httpc_open(hp, 10000, &c, err, sizeof err), 0);
    httpc_header h[] = { { "Content-Type", "application/json" } };
    /* the big one's priority keeps the small one waiting (ageing would take 100 s) */
    const char *big = "{\"n\": 256, \"steps\": 200, \"priority\": 100}",
               *small = "{\"n\": 1, \"steps\": 1}";
    httpc_response r;
    assert_int_equal(httpc_request(c, "POST", "/v1/jobs", h, 1, big, strlen(big), &r), 0);
    cJSON *j = cJSON_Parse(r.body);
    char bigid[64];
    snprintf(bigid, sizeof bigid, "%s", str(j, "id"));
    cJSON_Delete(j);
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "POST", "/v1/jobs", h, 1, small, strlen(small), &r), 0);
    j = cJSON_Parse(r.body);
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", str(j, "id"));
    cJSON_Delete(j);
    httpc_response_free(&r);
    ssec *s;
    int status;
    assert_int_equal(ssec_open(hp, "GET", path, NULL, 0, NULL, 0, 10000, &s, &status, NULL), 0);
    ssec_event ev;
    /* the big job's 256 images take every tick while the small one waits */
    for (int i = 0; i < 300 && ssec_comments(s) < 2; i++) {
        int rc = ssec_next(s, &ev, 100);
        assert_true(rc == 1 || rc == -1006 /* DDM_ETIMEDOUT */);
    }
    assert_true(ssec_comments(s) >= 2);
    ssec_close(s);
    snprintf(path, sizeof path, "/v1/jobs/%s", bigid);
    assert_int_equal(httpc_request(c, "DELETE", path, NULL, 0, NULL, 0, &r), 0);
    httpc_response_free(&r);
    httpc_close(c);
    proc_stop(pid, SIGTERM, 5000);
}

static void test_cors_and_pages(void **state)
{
    (void)state;
    /* off by default: no CORS headers, a preflight is not answered */
    httpc_response r;
    char err[128];
    httpc *c;
    httpc_header origin[] = { { "Origin", "http://app.test:3000" },
                              { "Access-Control-Request-Method", "POST" } };
    assert_int_equal(httpc_open(tc.hostport, 10000, &c, err, sizeof err), 0);
    assert_int_equal(httpc_request(c, "GET", "/healthz", origin, 1, NULL, 0, &r), 0);
    assert_null(httpc_response_header(&r, "Access-Control-Allow-Origin"));
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "OPTIONS", "/v1/jobs", origin, 2, NULL, 0, &r), 0);
    assert_int_equal(r.status, 405);
    httpc_response_free(&r);
    /* the page, its script and style, and the API description */
    static const struct { const char *path, *ctype, *has; } pages[] = {
        { "/", "text/html", "ddm playground" }, { "/playground.js", "text/javascript", "/v1/jobs" },
        { "/playground.css", "text/css", "canvas" }, { "/openapi.json", "application/json", "\"3.1" },
    };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        assert_int_equal(call("GET", pages[i].path, NULL, NULL, &r), 200);
        assert_non_null(strstr(httpc_response_header(&r, "Content-Type"), pages[i].ctype));
        assert_non_null(strstr(r.body, pages[i].has));
        httpc_response_free(&r);
    }
    httpc_close(c);

    /* --cors-origin: that origin (only) gets the headers and its preflights answered */
    const char *const args[] = { "--cors-origin", "http://app.test:3000", NULL };
    char hp[64];
    pid_t pid = other_router(args, hp);
    assert_int_equal(httpc_open(hp, 10000, &c, err, sizeof err), 0);
    assert_int_equal(httpc_request(c, "OPTIONS", "/v1/jobs", origin, 2, NULL, 0, &r), 0);
    assert_int_equal(r.status, 204);
    assert_string_equal(httpc_response_header(&r, "Access-Control-Allow-Origin"),
                        "http://app.test:3000");
    assert_non_null(strstr(httpc_response_header(&r, "Access-Control-Allow-Headers"),
                           "Authorization"));
    httpc_response_free(&r);
    assert_int_equal(httpc_request(c, "GET", "/v1/jobs/zz", origin, 1, NULL, 0, &r), 0);
    assert_int_equal(r.status, 400);
    assert_string_equal(httpc_response_header(&r, "Access-Control-Allow-Origin"),
                        "http://app.test:3000");
    httpc_response_free(&r);
    httpc_header other[] = { { "Origin", "http://evil.test" } };
    assert_int_equal(httpc_request(c, "GET", "/healthz", other, 1, NULL, 0, &r), 0);
    assert_null(httpc_response_header(&r, "Access-Control-Allow-Origin"));
    httpc_response_free(&r);
    httpc_close(c);
    proc_stop(pid, SIGTERM, 5000);
    /* a bad origin is a usage error */
    char bin[256], log[300];
    snprintf(log, sizeof log, "%s/cors.log", tc.dir);
    char *bad[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", tc.conf,
                    "--cors-origin", "app.test/x", NULL };
    int st = proc_wait(proc_start(bad, log), 5000);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

/* Runs ddm-client with args; returns its exit status, output in out (NUL-terminated). */
static int client(char *out, size_t len, const char *args)
{
    char bin[256], cmd[1024], file[300];
    snprintf(file, sizeof file, "%s/client.out", tc.dir);
    snprintf(cmd, sizeof cmd, "%s %s --url http://%s > %s 2>&1", proc_bin("ddm-client", bin, sizeof bin),
             args, tc.hostport, file);
    int st = system(cmd);
    FILE *f = fopen(file, "r");
    size_t n = f ? fread(out, 1, len - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_client_jobs(void **state)
{
    (void)state;
    static char out[1 << 16];
    char id[64], args[400], png[300];
    /* sample --progress: a bar from the step events, then the usual summary */
    snprintf(png, sizeof png, "%s/progress.png", tc.dir);
    snprintf(args, sizeof args, "sample -n 2 --steps 8 --seed 3 --progress -o %s", png);
    assert_int_equal(client(out, sizeof out, args), 0);
    if (!strstr(out, "100% step 8/8") || !strstr(out, "expert calls"))
        fail_msg("no progress bar or summary: %s", out);
    assert_int_equal(access(png, R_OK), 0);
    assert_int_equal(client(out, sizeof out, "sample --progress --proto"), 2);
    /* jobs submit prints the id; status; watch to the end writes the grid */
    assert_int_equal(client(out, sizeof out, "jobs submit -n 2 --steps 6 --priority 3 -q"), 0);
    snprintf(id, sizeof id, "%.48s", out);
    snprintf(args, sizeof args, "jobs watch %s -o %s", id, png);
    assert_int_equal(client(out, sizeof out, args), 0);
    snprintf(args, sizeof args, "jobs status %s", id);
    assert_int_equal(client(out, sizeof out, args), 0);
    if (!strstr(out, "succeeded") || !strstr(out, "step 6/6"))
        fail_msg("status: %s", out);
    /* a long job: watch --events shows its events; cancel stops it; watch then fails */
    assert_int_equal(client(out, sizeof out, "jobs submit -n 1 --steps 1000 -q"), 0);
    snprintf(id, sizeof id, "%.48s", out);
    snprintf(args, sizeof args, "jobs cancel %s", id);
    assert_int_equal(client(out, sizeof out, args), 0);
    assert_non_null(strstr(out, "cancelled"));
    snprintf(args, sizeof args, "jobs watch %s", id);
    assert_int_equal(client(out, sizeof out, args), 1);
    assert_non_null(strstr(out, "cancelled"));
    snprintf(args, sizeof args, "jobs submit -n 1 --steps 3 --wait --events --preview-every 1");
    assert_int_equal(client(out, sizeof out, args), 0);
    if (!strstr(out, "step {\"index\":2") || !strstr(out, "preview {") || !strstr(out, "done {"))
        fail_msg("watch --events: %s", out);
    /* bad input: a clear message, exit 1 (HTTP) or 2 (usage) */
    assert_int_equal(client(out, sizeof out, "jobs status nothex"), 1);
    assert_non_null(strstr(out, "not a job id"));
    assert_int_equal(client(out, sizeof out, "jobs status 0123456789abcdef0123456789abcdef0123456789abcdef"), 1);
    assert_non_null(strstr(out, "HTTP 404"));
    assert_int_equal(client(out, sizeof out, "jobs frobnicate x"), 2);
    assert_int_equal(client(out, sizeof out, "jobs submit --priority 1000"), 2);
}

/* ---- jobs on routers of their own (auth, priority, connection caps, drain) ---------- */

#define TOKEN "0123456789abcdef0123456789abcdef"

/* POSTs a job to hp (with the headers given); returns its status and id. */
static int submit_hp(const char *hp, const httpc_header *h, size_t nh, const char *body,
                     char id[64], cJSON **doc)
{
    httpc_response r;
    int st = call_hp(hp, "POST", "/v1/jobs", h, nh, body, &r);
    id[0] = '\0';
    cJSON *j = cJSON_Parse(r.body);
    if (st == 202)
        snprintf(id, 64, "%s", str(j, "id"));
    if (doc)
        *doc = j;
    else
        cJSON_Delete(j);
    httpc_response_free(&r);
    return st;
}

/* GET or DELETE /v1/jobs/{id} on hp; the status document (wanted 200). */
static cJSON *job_doc(const char *hp, const httpc_header *h, size_t nh, const char *method,
                      const char *id)
{
    char path[120];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    httpc_response r;
    int st = call_hp(hp, method, path, h, nh, NULL, &r);
    if (st != 200)
        fail_msg("%s %s -> %d: %s", method, path, st, r.body);
    cJSON *j = cJSON_Parse(r.body);
    httpc_response_free(&r);
    return j;
}

static void test_jobs_behind_tokens(void **state)
{
    (void)state;
    /* tokens on: every job route needs one (401 with WWW-Authenticate), the
     * playground and /openapi.json do not, a CORS preflight needs none; work
     * that could never be served is 400 for jobs as for /v1/samples, and a
     * token's concurrency and queue hold for jobs and samples together */
    char tokfile[300];
    snprintf(tokfile, sizeof tokfile, "%s/tokens", tc.dir);
    FILE *f = fopen(tokfile, "w");
    assert_non_null(f);
    fprintf(f, "alice:" TOKEN " concurrency=1 queue=1\n");
    fclose(f);
    const char *const args[] = { "--auth-token-file", tokfile, "--cors-origin",
                                 "http://app.test:3000", "--max-images", "100", NULL };
    char hp[64];
    pid_t pid = other_router(args, hp);
    httpc_header tok[1] = { { "Authorization", "Bearer " TOKEN } };
    httpc_header bad[1] = { { "Authorization", "Bearer " TOKEN "x" } };
    httpc_response r;
    const char *id0 = "0123456789abcdef0123456789abcdef0123456789abcdef";
    char path[160];
    static const char *const guarded[][2] = {
        { "POST", "/v1/jobs" }, { "GET", "/v1/jobs/%s" }, { "DELETE", "/v1/jobs/%s" },
        { "GET", "/v1/jobs/%s/events" }, { "POST", "/v1/samples" },
    };
    for (size_t i = 0; i < sizeof guarded / sizeof guarded[0]; i++) {
        snprintf(path, sizeof path, guarded[i][1], id0);
        const char *body = guarded[i][0][0] == 'P' ? "{\"n\": 1}" : NULL;
        for (int with_bad = 0; with_bad < 2; with_bad++) {
            assert_int_equal(call_hp(hp, guarded[i][0], path, bad, (size_t)with_bad, body, &r),
                             401);
            const char *www = httpc_response_header(&r, "WWW-Authenticate");
            assert_non_null(www);
            assert_int_equal(strncmp(www, "Bearer ", 7), 0);
            assert_true(!with_bad == !strstr(www, "invalid_token"));
            httpc_response_free(&r);
        }
    }
    static const char *const open_paths[] = { "/", "/playground.js", "/openapi.json", "/healthz" };
    for (size_t i = 0; i < sizeof open_paths / sizeof open_paths[0]; i++) {
        assert_int_equal(call_hp(hp, "GET", open_paths[i], NULL, 0, NULL, &r), 200);
        httpc_response_free(&r);
    }
    /* a browser's preflight carries no token; a 401 still reaches the page */
    httpc_header pre[2] = { { "Origin", "http://app.test:3000" },
                            { "Access-Control-Request-Method", "POST" } };
    assert_int_equal(call_hp(hp, "OPTIONS", "/v1/jobs", pre, 2, NULL, &r), 204);
    assert_non_null(strstr(httpc_response_header(&r, "Access-Control-Allow-Headers"),
                           "Authorization"));
    httpc_response_free(&r);
    assert_int_equal(call_hp(hp, "POST", "/v1/jobs", pre, 1, "{\"n\": 1}", &r), 401);
    assert_string_equal(httpc_response_header(&r, "Access-Control-Allow-Origin"),
                        "http://app.test:3000");
    httpc_response_free(&r);

    /* never servable: 400 before any limit */
    char id[64], id2[64], id3[64];
    cJSON *d;
    assert_int_equal(submit_hp(hp, tok, 1, "{\"n\": 200}", id, &d), 400);
    assert_string_equal(str(cJSON_GetObjectItem(d, "error"), "code"), "too_many_images");
    cJSON_Delete(d);
    assert_int_equal(submit_hp(hp, tok, 1, "{\"n\": 50, \"steps\": 1000, \"strategy\": \"full\", "
                               "\"sampler\": \"heun\", \"label\": 1, \"guidance\": 2}", id, &d), 400);
    assert_string_equal(str(cJSON_GetObjectItem(d, "error"), "code"), "too_much_work");
    cJSON_Delete(d);

    /* concurrency=1 queue=1: one job runs, the next waits its turn (queued), a
     * third job or a sample is refused; when the first ends the second starts */
    const char *longjob = "{\"n\": 1, \"steps\": 1000}";
    assert_int_equal(submit_hp(hp, tok, 1, longjob, id, NULL), 202);
    assert_int_equal(submit_hp(hp, tok, 1, longjob, id2, &d), 202);
    assert_string_equal(str(d, "status"), "queued");
    assert_true(num(d, "queue_position") >= 0);
    cJSON_Delete(d);
    assert_int_equal(submit_hp(hp, tok, 1, longjob, id3, &d), 429);
    assert_string_equal(str(cJSON_GetObjectItem(d, "error"), "code"), "too_many_requests");
    cJSON_Delete(d);
    assert_int_equal(call_hp(hp, "POST", "/v1/samples", tok, 1, "{\"n\": 1}", &r), 429);
    assert_non_null(httpc_response_header(&r, "Retry-After"));
    httpc_response_free(&r);
    d = job_doc(hp, tok, 1, "GET", id2);
    assert_string_equal(str(d, "status"), "queued");
    assert_int_equal((int)num(d, "step"), 0);
    cJSON_Delete(d);
    d = job_doc(hp, tok, 1, "DELETE", id);
    assert_string_equal(str(d, "status"), "cancelled");
    cJSON_Delete(d);
    int started = 0;
    for (int i = 0; i < 1500 && !started; i++) {
        d = job_doc(hp, tok, 1, "GET", id2);
        started = !strcmp(str(d, "status"), "running") && num(d, "step") > 0;
        cJSON_Delete(d);
        if (!started)
            usleep(20000);
    }
    assert_true(started);
    d = job_doc(hp, tok, 1, "DELETE", id2);
    assert_string_equal(str(d, "status"), "cancelled");
    cJSON_Delete(d);
    proc_stop(pid, SIGTERM, 5000);
}

static void test_priority_first(void **state)
{
    (void)state;
    /* higher priority gets tick capacity first, end to end: on a router that
     * takes one image per tick, a job of priority 10 submitted after one of
     * priority 0 of the same size finishes while the other still runs (ageing
     * adds one level a second: the first would need 10 s to catch up) */
    const char *const args[] = { "--tick-capacity", "1", "--ticks", "1", NULL };
    char hp[64], low[64], high[64];
    pid_t pid = other_router(args, hp);
    assert_int_equal(submit_hp(hp, NULL, 0, "{\"n\": 4, \"steps\": 100}", low, NULL), 202);
    assert_int_equal(submit_hp(hp, NULL, 0, "{\"n\": 4, \"steps\": 100, \"priority\": 10}", high,
                               NULL), 202);
    const char *st = "";
    cJSON *d = NULL;
    for (int i = 0; i < 3000; i++) {
        d = job_doc(hp, NULL, 0, "GET", high);
        st = str(d, "status");
        if (strcmp(st, "queued") && strcmp(st, "running"))
            break;
        cJSON_Delete(d);
        d = NULL;
        usleep(20000);
    }
    assert_non_null(d);
    assert_string_equal(st, "succeeded");
    assert_int_equal((int)num(d, "priority"), 10);
    cJSON_Delete(d);
    d = job_doc(hp, NULL, 0, "GET", low);
    assert_string_equal(str(d, "status"), "running");
    assert_true(num(d, "step") < 100);
    cJSON_Delete(d);
    d = job_doc(hp, NULL, 0, "DELETE", low);
    cJSON_Delete(d);
    proc_stop(pid, SIGTERM, 5000);
}

/* Reads s until an event named want (recorded for the schema check); fails on
 * the end of the stream or an error. */
static void read_until(ssec *s, const char *path, const char *want, ssec_event *ev)
{
    do
        if (next_event(s, path, ev) != 1)
            fail_msg("%s: the stream ended before a \"%s\" event", path, want);
    while (strcmp(ev->event, want) != 0);
}

/* Retries a request while the router answers 503 (a connection over a cap
 * until the router has seen an earlier one close). Returns the status. */
static int call_when_room(const char *hp, const char *method, const char *path,
                          httpc_response *r)
{
    int st = 503;
    for (int i = 0; i < 200 && st == 503; i++) {
        st = call_hp(hp, method, path, NULL, 0, NULL, r);
        if (st == 503) {
            httpc_response_free(r);
            usleep(20000);
        }
    }
    return st;
}

static void test_streams_and_connection_caps(void **state)
{
    (void)state;
    /* an open event stream is a response in progress: never evicted as idle,
     * not closed by the short timeout near the cap, and counted toward the
     * per-address cap (then only health probes answer on a new connection) */
    const char *const args[] = { "--max-connections", "3", "--max-connections-per-ip", "3",
                                 "--tick-capacity", "1", "--ticks", "1", NULL };
    char hp[64], hog[64], watched[64], err[128], path[160];
    pid_t pid = other_router(args, hp);
    httpc *c0;
    assert_int_equal(httpc_open(hp, 10000, &c0, err, sizeof err), 0);
    httpc_header h[1] = { { "Content-Type", "application/json" } };
    const char *bodies[2] = { "{\"n\": 1, \"steps\": 1000, \"priority\": 100}",
                              "{\"n\": 1, \"steps\": 5}" };
    char *ids[2] = { hog, watched };
    for (int i = 0; i < 2; i++) { /* on one kept-alive connection, idle afterwards */
        httpc_response r;
        assert_int_equal(httpc_request(c0, "POST", "/v1/jobs", h, 1, bodies[i],
                                       strlen(bodies[i]), &r), 0);
        assert_int_equal(r.status, 202);
        cJSON *j = cJSON_Parse(r.body);
        snprintf(ids[i], 64, "%s", str(j, "id"));
        cJSON_Delete(j);
        httpc_response_free(&r);
    }
    /* three streams on the watched job, which waits behind the hog: quiet */
    snprintf(path, sizeof path, "/v1/jobs/%s/events", watched);
    ssec *s[3];
    ssec_event ev;
    for (int i = 0; i < 3; i++) {
        int status;
        assert_int_equal(ssec_open(hp, "GET", path, NULL, 0, NULL, 0, 10000, &s[i], &status,
                                   NULL), 0);
        read_until(s[i], path, "queued", &ev);
    }
    /* the third took the idle connection's place */
    assert_int_equal(httpc_wait_closed(c0, 10000), 1);
    httpc_close(c0);
    /* past the near-cap timeout (1 s) the quiet streams are still open */
    usleep(1500000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ssec_next(s[i], &ev, 200), -1006 /* DDM_ETIMEDOUT: open, quiet */);
    /* the address is at its cap with streams only: health answers, nothing else */
    httpc_response r;
    assert_int_equal(call_hp(hp, "GET", "/healthz", NULL, 0, NULL, &r), 200);
    httpc_response_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s", watched);
    assert_int_equal(call_hp(hp, "GET", path, NULL, 0, NULL, &r), 503);
    httpc_response_free(&r);
    /* one stream goes: the hog can be cancelled, the watched job runs, the
     * remaining streams see it through */
    ssec_close(s[2]);
    snprintf(path, sizeof path, "/v1/jobs/%s", hog);
    assert_int_equal(call_when_room(hp, "DELETE", path, &r), 200);
    httpc_response_free(&r);
    snprintf(path, sizeof path, "/v1/jobs/%s/events", watched);
    for (int i = 0; i < 2; i++) {
        read_until(s[i], path, "step", &ev);
        read_until(s[i], path, "done", &ev);
        cJSON *d = cJSON_Parse(ev.data);
        assert_string_equal(str(d, "status"), "succeeded");
        cJSON_Delete(d);
        ssec_close(s[i]);
    }
    assert_int_equal(call_when_room(hp, "GET", "/metrics", &r), 200);
    assert_non_null(strstr(r.body, "\nddm_http_connections_evicted_total "));
    assert_null(strstr(r.body, "\nddm_http_connections_evicted_total 0\n"));
    httpc_response_free(&r);
    proc_stop(pid, SIGTERM, 5000);
}

static void test_drain_limit_ends_streams(void **state)
{
    (void)state;
    /* SIGTERM with a long job: new jobs get 503 at once; past the drain limit
     * the job fails with 503 shutting_down, its stream gets that error event
     * and ends, and the router exits 0 */
    const char *const args[] = { "--drain-timeout-ms", "500", NULL };
    char hp[64], id[64], path[160];
    pid_t pid = other_router(args, hp);
    assert_int_equal(submit_hp(hp, NULL, 0, "{\"n\": 1, \"steps\": 1000}", id, NULL), 202);
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    ssec *s;
    int status;
    assert_int_equal(ssec_open(hp, "GET", path, NULL, 0, NULL, 0, 10000, &s, &status, NULL), 0);
    ssec_event ev;
    read_until(s, path, "step", &ev);
    kill(pid, SIGTERM);
    httpc_response r;
    for (int st = 202; st == 202;) { /* once the signal is in: 503, Connection: close */
        char nid[64];
        st = submit_hp(hp, NULL, 0, "{\"n\": 1, \"steps\": 2}", nid, NULL);
        if (st == 202) {
            snprintf(path, sizeof path, "/v1/jobs/%s", nid);
            assert_int_equal(call_hp(hp, "DELETE", path, NULL, 0, NULL, &r), 200);
            httpc_response_free(&r);
            usleep(20000);
        } else {
            assert_int_equal(st, 503);
        }
    }
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    read_until(s, path, "error", &ev);
    cJSON *d = cJSON_Parse(ev.data);
    assert_string_equal(str(d, "status"), "failed");
    cJSON *e = cJSON_GetObjectItem(d, "error");
    assert_string_equal(str(e, "code"), "shutting_down");
    assert_int_equal((int)num(e, "http_status"), 503);
    cJSON_Delete(d);
    assert_int_equal(ssec_next(s, &ev, 10000), 0); /* then the stream ends */
    ssec_close(s);
    int st = proc_wait(pid, 30000);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fail_msg("the router did not exit 0 (status %d)", st);
}

static void test_responses_fit_openapi(void **state)
{
    (void)state;
    httpc_response r;
    /* the other endpoints, so that the whole API is checked */
    static const char *paths[] = { "/healthz", "/readyz", "/v1/experts", "/metrics", "/nothing",
                                   "/openapi.json" };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        call("GET", paths[i], NULL, NULL, &r);
        httpc_response_free(&r);
    }
    assert_int_equal(apicheck_run(tc.hostport), 0);
}

static void test_sigterm_finishes_jobs(void **state)
{
    (void)state;
    /* SIGTERM with a job running and a stream open: the job finishes, its
     * stream gets done, new jobs are refused, the router exits 0 (and, built
     * with sanitizers, without a leak report) */
    char id[64];
    submit("{\"n\": 2, \"steps\": 200}", id);
    int status;
    ssec *s = open_events(id, NULL, &status, NULL);
    assert_non_null(s);
    ssec_event ev;
    char path[200];
    snprintf(path, sizeof path, "/v1/jobs/%s/events", id);
    do
        assert_int_equal(next_event(s, path, &ev), 1);
    while (strcmp(ev.event, "step") != 0);
    kill(tc.router, SIGTERM);
    int done = 0, rc;
    while ((rc = ssec_next(s, &ev, 30000)) == 1)
        done |= !strcmp(ev.event, "done");
    ssec_close(s);
    assert_true(done);
    int st = proc_wait(tc.router, 30000);
    tc.router = 0;
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        proc_dump_log(tc.rlog);
        fail_msg("the router did not exit 0 (status %d)", st);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_submit_status_result),
        cmocka_unit_test(test_bad_ids_and_bodies),
        cmocka_unit_test(test_events_resume_and_cancel),
        cmocka_unit_test(test_streamed_samples),
        cmocka_unit_test(test_stream_behind_pipelined_request),
        cmocka_unit_test(test_queue_position),
        cmocka_unit_test(test_admission_and_subscribers),
        cmocka_unit_test(test_slow_reader_is_cut_off),
        cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_routing_metrics),
        cmocka_unit_test(test_heartbeats),
        cmocka_unit_test(test_cors_and_pages),
        cmocka_unit_test(test_client_jobs),
        cmocka_unit_test(test_jobs_behind_tokens),
        cmocka_unit_test(test_priority_first),
        cmocka_unit_test(test_streams_and_connection_caps),
        cmocka_unit_test(test_drain_limit_ends_streams),
        cmocka_unit_test(test_responses_fit_openapi),
        cmocka_unit_test(test_sigterm_finishes_jobs),
    };
    if (getenv("DDM_TEST_FILTER")) /* e.g. DDM_TEST_FILTER='*cancel*' */
        cmocka_set_test_filter(getenv("DDM_TEST_FILTER"));
    return cmocka_run_group_tests(tests, setup, teardown);
}
