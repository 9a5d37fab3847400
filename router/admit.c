/* admit.c -- admission of sampling requests (see admit.h).
 *
 * A token's line is its waiting requests' slots, oldest first, linked through
 * the token's owner fields (auth_token.wait_head/wait_tail). Starting the line
 * (token_promote) calls owners' start callbacks, which may fail and leave at
 * once; tok->promoting keeps such a leave from starting the line again inside
 * the loop (the loop itself goes on while the token has room), so the stack
 * never grows with the line. */
#include "router/admit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

struct admit {
    engine *eng;
    int K, n_classes;
    const model_shape *shape;
    int draining;
    uint64_t seed_state;     /* seeds of requests that give none */
    uint64_t throttled;
};

int admit_new(engine *eng, int K, int n_classes, admit **out)
{
    admit *a = calloc(1, sizeof *a);
    if (!a)
        return DDM_ENOMEM;
    a->eng = eng;
    a->K = K;
    a->n_classes = n_classes;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->seed_state = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                    ((uint64_t)getpid() << 32);
    *out = a;
    return 0;
}

void admit_set_shape(admit *a, const model_shape *shape) { a->shape = shape; }
void admit_set_draining(admit *a, int draining) { a->draining = draining; }
uint64_t admit_throttled(const admit *a) { return a->throttled; }
void admit_free(admit *a) { free(a); }

int admit_request(admit *a, http_req *req, sample_params *p, api_job_fields *jf)
{
    if (a->draining) {
        http_resp_retry_after(req, 1);
        http_respond_error(req, 503, "shutting_down", "the router is shutting down: retry elsewhere");
        return 503;
    }
    size_t len;
    const uint8_t *body = http_req_body(req, &len);
    const char *code = "bad_request";
    char err[384];
    int st = api_decode_sample(http_req_header(req, "Content-Type"), body, len, a->K,
                               a->n_classes, a->shape, &a->seed_state, p, jf, &code, err,
                               sizeof err);
    if (!st && engine_check(a->eng, p, &code, err, sizeof err))
        st = 400; /* never servable: not a 503 */
    if (st) {
        http_respond_error(req, st, code, err);
        return st;
    }
    const auth_token *tok = http_req_user(req);
    if (tok && tok->running >= tok->concurrency && tok->waiting >= tok->queue) {
        a->throttled++;
        snprintf(err, sizeof err,
                 "token \"%s\" has %d request(s) running and %d waiting, its limits "
                 "(concurrency=%d queue=%d in the token file): retry after the Retry-After "
                 "seconds", tok->name, tok->running, tok->waiting, tok->concurrency, tok->queue);
        http_resp_retry_after(req, 1);
        http_respond_error(req, 429, "too_many_requests", err);
        return 429;
    }
    return 0;
}

/* ---- a token's turns ------------------------------------------------------------------- */

/* Starts the requests waiting in tok's line while it has room. */
static void token_promote(auth_token *tok)
{
    if (tok->promoting)
        return; /* the loop below, further up the stack, goes on */
    tok->promoting = 1;
    while (tok->wait_head && tok->running < tok->concurrency) {
        admit_slot *s = tok->wait_head;
        tok->wait_head = s->next;
        if (!tok->wait_head)
            tok->wait_tail = NULL;
        tok->waiting--;
        s->waiting = 0;
        s->next = NULL;
        s->running = 1;
        tok->running++;
        s->start(s, s->ud); /* may leave at once (failed): the loop goes on */
    }
    tok->promoting = 0;
}

int admit_enter(admit_slot *s, auth_token *tok, admit_start_fn start, void *ud)
{
    s->tok = tok;
    s->start = start;
    s->ud = ud;
    s->entered = 1;
    s->next = NULL;
    if (!tok)
        return 1;
    auth_token_hold(tok);
    if (tok->running < tok->concurrency && !tok->wait_head) {
        s->running = 1;
        tok->running++;
        return 1;
    }
    s->waiting = 1;
    if (tok->wait_tail)
        ((admit_slot *)tok->wait_tail)->next = s;
    else
        tok->wait_head = s;
    tok->wait_tail = s;
    tok->waiting++;
    return 0;
}

static void line_remove(auth_token *tok, admit_slot *s)
{
    admit_slot *prev = NULL;
    for (admit_slot *c = tok->wait_head; c; prev = c, c = c->next) {
        if (c != s)
            continue;
        if (prev)
            prev->next = s->next;
        else
            tok->wait_head = s->next;
        if (tok->wait_tail == s)
            tok->wait_tail = prev;
        tok->waiting--;
        break;
    }
    s->next = NULL;
    s->waiting = 0;
}

void admit_leave(admit_slot *s)
{
    if (!s->entered)
        return;
    s->entered = 0;
    auth_token *tok = s->tok;
    s->tok = NULL;
    if (!tok)
        return;
    if (s->waiting)
        line_remove(tok, s);
    if (s->running) {
        s->running = 0;
        tok->running--;
        token_promote(tok);
    }
    auth_token_release(tok); /* after the promotion: tok outlives it */
}

int admit_line_position(const admit_slot *s)
{
    if (!s->waiting || !s->tok)
        return -1;
    int pos = 0;
    for (const admit_slot *c = s->tok->wait_head; c && c != s; c = c->next)
        pos++;
    return pos;
}
