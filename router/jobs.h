/* jobs.h -- asynchronous sampling jobs: the job table, progress events, results.
 *
 * POST /v1/jobs admits a sample request the way POST /v1/samples does (admit.h:
 * the same checks, 400 for work over the cost cap or n over --max-images,
 * and the same per-token concurrency and queue: a job waiting for its token's
 * turn is "queued") and, once it is its turn, submits it to the engine at once
 * (so queued jobs count toward the engine's admission limit); it answers 202
 * with an unguessable id. While the job runs, the engine's per-evaluation observer
 * feeds it: "step" events (the routing of every image at each evaluation,
 * once all of the job's images have made it), "preview" events (a PNG grid of
 * the predicted clean images every preview_every steps), and per-expert x
 * time-band routing statistics. Subscribers (GET /v1/jobs/{id}/events, and a
 * POST /v1/samples that asks for text/event-stream) read these as Server-Sent
 * Events at their own pace: each has a cursor into the job's bounded log of
 * step events, previews are skipped for a slow reader, and a reader that
 * falls out of the log is disconnected (it may resume with Last-Event-ID).
 * When a job ends, its result is encoded once (JSON, protobuf, PNG grid) and
 * kept for a TTL within a bounded total size, oldest evicted first; an
 * evicted id answers 410. DELETE cancels at the next step boundary.
 *
 * Everything runs on the loop thread except encoding (libuv threadpool). */
#ifndef DDM_JOBS_H
#define DDM_JOBS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/strbuf.h"
#include "router/engine.h"
#include "router/service.h"
#include "server/http.h"

typedef struct jobs jobs;

typedef struct jobs_config {
    uint32_t ttl_s;            /* a finished job is kept this long (600) */
    size_t store_bytes;        /* finished jobs' results kept, in total (256 MiB) */
    int max_subscribers;       /* event streams per job (8) */
    uint32_t heartbeat_ms;     /* comment line on a quiet stream (15000) */
    size_t log_bytes;          /* step events kept per running job for resuming (256 KiB) */
    size_t stream_soft;        /* a reader's backlog past which previews are skipped (64 KiB) */
    size_t stream_hard;        /* backlog at which writing stops until it drains (1 MiB) */
} jobs_config;

void jobs_config_default(jobs_config *c);

/* Describes the served model for events and previews: K experts, images of
 * height x width x channels = dim (HWC). */
typedef struct jobs_model {
    int K, dim, width, height, channels;
} jobs_model;

/* Creates the job table and registers POST /v1/jobs, GET and DELETE
 * /v1/jobs/{id} and GET /v1/jobs/{id}/events through svc (service_route: the
 * token check applies), admitting jobs with service_admit(svc). Nothing
 * passed is owned; the service and the engine must outlive the table (close
 * it with jobs_close first). Returns 0 and *out, or DDM_ENOMEM. */
int jobs_new(uv_loop_t *loop, service *svc, engine *eng, const jobs_model *m,
             const jobs_config *cfg, jobs **out);

/* Serves a POST /v1/samples whose Accept asks for text/event-stream: the same
 * events as a job's stream, ending with "done" carrying the whole response.
 * Finishes req in every case. */
void jobs_sample_stream(jobs *J, http_req *req);

/* Jobs still queued or running, plus encodings in flight (the drain waits for them). */
int jobs_pending(const jobs *J);

/* Appends the table's Prometheus metrics (jobs by state, stored bytes,
 * evictions, subscribers, previews skipped, streams closed for lagging). */
void jobs_metrics(const jobs *J, strbuf *o);

/* Shutdown, past the drain: every live job fails with 503 "shutting_down" (its
 * engine work stops, its event streams get that "error" event and then end
 * with what was queued written); finished jobs are freed; the table itself is
 * freed once encodings in flight have returned (never touch J afterwards).
 * Call before http_server_shutdown and engine_close. */
void jobs_close(jobs *J);

#endif
