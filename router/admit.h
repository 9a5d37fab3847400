/* admit.h -- admission of sampling requests: what POST /v1/samples, POST /v1/jobs
 * and streamed samples share, so that each rule is written once.
 *
 * A sampling request passes, in this order:
 *   1. admit_request: refused with 503 while draining; its body decoded
 *      (api_decode_sample: 400/415); refused when it could never be served
 *      (engine_check: n over --max-images, cost over --max-request-cost: 400);
 *      refused when its token already has `concurrency` requests running and
 *      `queue` waiting (429 with Retry-After);
 *   2. admit_enter: takes its turn under its token's limits -- it runs at once,
 *      or waits in the token's line until admit_leave of one of the token's
 *      running requests starts it;
 *   3. admit_leave when it is over (answered, failed, cancelled, client gone).
 * Without tokens (--auth-token-file absent) every request runs at once. The
 * owner submits to the engine itself when its turn comes. Loop thread only. */
#ifndef DDM_ADMIT_H
#define DDM_ADMIT_H

#include <stdint.h>

#include "common/model.h"
#include "router/api.h"
#include "router/auth.h"
#include "router/engine.h"
#include "server/http.h"

typedef struct admit admit;

/* The served model (K experts, n_classes classes) and the engine whose limits
 * apply. Nothing is owned. Returns 0 and *out, or DDM_ENOMEM. */
int admit_new(engine *eng, int K, int n_classes, admit **out);
/* Class names for labels given by name (not copied; NULL: none). */
void admit_set_shape(admit *a, const model_shape *shape);
/* While draining, admit_request answers 503 shutting_down. */
void admit_set_draining(admit *a, int draining);
/* Requests refused with 429 so far (for /metrics). */
uint64_t admit_throttled(const admit *a);
void admit_free(admit *a);

/* Step 1 for req, whose body is a sample request; its token is
 * http_req_user(req) (service_route sets it). jf NULL: the job fields
 * (priority, preview_every) are refused; else they are decoded into p and jf.
 * Returns 0 with *p filled, or answers req with the error (status, code and a
 * message that says what to fix; Retry-After on 429 and 503) and returns the
 * status. */
int admit_request(admit *a, http_req *req, sample_params *p, api_job_fields *jf);

/* A request's turn under its token's limits; embedded in the owner's request
 * object and zeroed before admit_enter. */
typedef struct admit_slot admit_slot;
typedef void (*admit_start_fn)(admit_slot *slot, void *ud);
struct admit_slot {
    auth_token *tok;          /* held from admit_enter to admit_leave; NULL: no tokens */
    int entered;              /* between admit_enter and admit_leave */
    int running;              /* counted in tok->running */
    int waiting;              /* in tok's line */
    admit_slot *next;         /* tok's line */
    admit_start_fn start;
    void *ud;
};

/* Step 2 for a request of token tok (NULL: tokens are off). Returns 1 when it
 * may run now (it counts as running), or 0 when it waits: start(slot, ud) then
 * runs on the loop thread when its turn comes, from inside the admit_leave of
 * another request of the token (start may call admit_leave on its own slot,
 * e.g. when it fails). admit_request has checked that there is room. */
int admit_enter(admit_slot *s, auth_token *tok, admit_start_fn start, void *ud);

/* Step 3: the request is over, or leaves the line before its turn. If it was
 * running, the token's next waiting requests start (their start callbacks run
 * before this returns). Does nothing for a slot not entered (or left). */
void admit_leave(admit_slot *s);

/* Requests of the token waiting ahead of s in its line (0: next), or -1 when s
 * is not waiting. */
int admit_line_position(const admit_slot *s);

#endif
