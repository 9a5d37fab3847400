/* service.h -- ddm-router's HTTP API: routes, request lifetimes, metrics.
 *
 * Glue between server/ (HTTP), api.c (wire formats), admit.c (admission),
 * engine.c (batching) and pool.c (experts). POST /v1/samples, GET /v1/experts,
 * /healthz, /readyz, /metrics; every route of the API goes through
 * service_route (the token check). Response bodies are encoded on the libuv
 * threadpool. */
#ifndef DDM_SERVICE_H
#define DDM_SERVICE_H

#include <uv.h>

#include "common/model.h"
#include "router/admit.h"
#include "router/auth.h"
#include "router/engine.h"
#include "router/pool.h"
#include "server/http.h"

typedef struct service service;
typedef struct jobs jobs; /* router/jobs.h */

/* Responses encoded at once on the libuv threadpool (more wait their turn):
 * the threadpool needs ticks + this many threads so that ticks never wait
 * behind encoding. */
#define SERVICE_ENCODERS 2

/* Registers the routes on srv. Nothing is owned: the caller closes srv,
 * engine and pool (in that order) and then frees the service. */
int service_new(uv_loop_t *loop, http_server *srv, engine *eng, pool *pl, int K, int dim,
                int n_classes, service **out);
/* The served model's image shape, class names and dataset name (/v1/experts,
 * labels by name). Not copied: shape and dataset must outlive the service.
 * Returns 0. Without it: no shape in /v1/experts, no names. */
int service_set_model(service *s, const model_shape *shape, const char *dataset);

/* The admission (checks and per-token turns) of the service's sampling
 * requests, for other routes that admit sampling work (the jobs). */
admit *service_admit(service *s);

/* Route flags. */
#define SERVICE_ROUTE_HEALTH 1 /* never needs a token; answers on reserve connections too */
#define SERVICE_ROUTE_PUBLIC 2 /* never needs a token (static files: the playground) */
#define SERVICE_ROUTE_PREFIX 4 /* every path that starts with path (http_server_route_prefix) */

/* Registers a route of the API on the service's server. Every route goes through
 * here (ours and later ones, the jobs' and the playground's, alike): with tokens
 * on (service_set_auth), a request without a valid "Authorization: Bearer"
 * token gets 401 with WWW-Authenticate unless the route is SERVICE_ROUTE_HEALTH
 * or SERVICE_ROUTE_PUBLIC or its path is public; a handler sees the request's
 * token as http_req_user(req) (NULL with tokens off or on a public route).
 * While draining every answer carries Connection: close. fn gets ud. Returns
 * as http_server_route. */
int service_route(service *s, const char *method, const char *path, http_handler_fn fn,
                  void *ud, int flags);

/* Turns bearer tokens on (a may be NULL: off; the service does not own it).
 * public_paths: NULL-terminated paths that answer without a token (e.g.
 * "/metrics"), copied; NULL for none. */
int service_set_auth(service *s, auth *a, const char *const *public_paths);

/* Hands POST /v1/samples with Accept: text/event-stream to J, and adds J's
 * metrics to /metrics (NULL: neither). J must outlive its use here. */
void service_set_jobs(service *s, jobs *J);

/* Draining: new sample requests and jobs get 503, /readyz says not ready, and
 * every response carries Connection: close. */
void service_set_draining(service *s, int draining);
/* The engine is closing (engine_close follows): from now on the service never
 * submits to it; requests waiting for their token's turn get 503. */
void service_stop(service *s);
/* Requests admitted and not answered yet. */
int service_pending(const service *s);
void service_free(service *s);

#endif
