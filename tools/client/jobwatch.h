/* jobwatch.h -- ddm-client's side of jobs and event streams: submit, status,
 * cancel and watch a job (/v1/jobs), and stream a POST /v1/samples with a
 * progress bar. The progress bar (stderr) is driven by the server's "step"
 * events: evaluations done of all, and t.
 *
 * Every function prints its own one-line errors ("ddm-client: HTTP 404: ...")
 * and returns the process exit status: 0 ok, 1 failure. */
#ifndef DDM_CLIENT_JOBWATCH_H
#define DDM_CLIENT_JOBWATCH_H

#include <stddef.h>
#include <stdint.h>

typedef struct jw_opts {
    const char *url;          /* for messages */
    const char *hostport;
    int timeout_ms;           /* connect and each request; streams wait as long as the job */
    int quiet;                /* no progress bar, no summary */
    int json;                 /* print the server's JSON */
    int events;               /* watch: print every event as "EVENT DATA" on stdout */
    const char *out;          /* a PNG grid of the result, or NULL */
} jw_opts;

/* POST /v1/jobs with body (JSON); prints the id. wait: then watch it. */
int jw_submit(const jw_opts *o, const char *body, size_t len, int wait);
/* GET /v1/jobs/ID: a summary (or --json); with out, the result's PNG grid. */
int jw_status(const jw_opts *o, const char *id);
/* DELETE /v1/jobs/ID. */
int jw_cancel(const jw_opts *o, const char *id);
/* GET /v1/jobs/ID/events with a progress bar until the job ends (resuming
 * with Last-Event-ID if the stream drops); 0 only if it succeeded (then the
 * PNG grid to out, when given). */
int jw_watch(const jw_opts *o, const char *id);

/* POST /v1/samples as an event stream (Accept: text/event-stream) with a
 * progress bar; on success returns 0 and *json, the response the "done" event
 * carried (malloc'd, caller frees). */
int jw_stream_sample(const jw_opts *o, const uint8_t *body, size_t len, char **json,
                     size_t *json_len);

/* The progress line for `done` of `total` evaluations at time t, into buf
 * ("[#######.............]  35% step 35/100 t=0.650"). */
void jw_bar(char *buf, size_t len, int done, int total, int steps_per, double t);

#endif
