/* service.h -- ddm-router's HTTP API: routes, request lifetimes, metrics.
 *
 * Glue between server/ (HTTP), api.c (wire formats), engine.c (batching)
 * and pool.c (experts). POST /v1/samples, GET /v1/experts, /healthz,
 * /readyz, /metrics. Response bodies are encoded on the libuv threadpool. */
#ifndef DDM_SERVICE_H
#define DDM_SERVICE_H

#include <uv.h>

#include "router/engine.h"
#include "router/jobs.h"
#include "router/pool.h"
#include "server/http.h"

typedef struct service service;

/* Registers the routes on srv. Nothing is owned: the caller closes srv,
 * engine and pool (in that order) and then frees the service. */
int service_new(uv_loop_t *loop, http_server *srv, engine *eng, pool *pl, int K, int dim,
                int n_classes, service **out);

/* Hands POST /v1/samples with Accept: text/event-stream to J, and adds J's
 * metrics to /metrics (NULL: neither). J must outlive its use here. */
void service_set_jobs(service *s, jobs *J);
/* Draining: new sample requests get 503 and /readyz says not ready. */
void service_set_draining(service *s, int draining);
/* Requests admitted and not answered yet. */
int service_pending(const service *s);
void service_free(service *s);

#endif
