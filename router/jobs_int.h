/* jobs_int.h -- private structures of the job table, shared by jobs.c (table,
 * lifecycle, results), jobs_events.c (step/preview events, subscribers) and
 * jobs_http.c (the HTTP endpoints). Not for use outside router/jobs*.c.
 *
 * Lifetime of a job: created by POST (or a streamed /v1/samples: "sync", not
 * in the table); queued while it waits for its token's turn (admit_enter) or
 * for its first tick; live while the engine job runs (ej != NULL); then finished
 * (succeeded, failed, cancelled) and, unless sync, on the finished list until
 * its TTL passes or the store's byte bound evicts it. A job is freed only when
 * it has finished, is out of the table, has no subscriber and no threadpool
 * work refers to it (job_maybe_free checks them all).
 *
 * Nothing here cancels an engine job from inside the engine's evaluation
 * observer (the engine forbids it): a streamed sample whose reader left is
 * cancelled by the table's timer, within TIMER_MS. */
#ifndef DDM_JOBS_INT_H
#define DDM_JOBS_INT_H

#include "router/admit.h"
#include "router/jobs.h"
#include "router/rstats.h"

#define JOB_RND_BYTES 16
#define JOB_TAG_BYTES 8
#define JOB_ID_LEN (2 * (JOB_RND_BYTES + JOB_TAG_BYTES)) /* hex digits */

typedef enum job_state {
    JOB_QUEUED = 0, JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED
} job_state;

typedef struct job job;

/* One event stream reading a job. */
typedef struct sub {
    job *j;
    http_req *req;           /* NULL once ended */
    struct sub *next;
    int next_index;          /* next step event (evaluation index) to send */
    int pv_seen;             /* preview sequence number sent or skipped */
    int qpos_sent;           /* queue position last sent (-2: none yet) */
    uint64_t last_write_ms;  /* uv_now of the last frame or heartbeat */
    strbuf pend;             /* frames queued, written by the next flush */
    struct sub *fprev, *fnext; /* the table's list of readers with frames queued */
    int listed;
} sub;

/* A serialized step event of the job's log. */
typedef struct evrec {
    char *frame;
    size_t len;
} evrec;

struct job {
    jobs *J;
    uint8_t rnd[JOB_RND_BYTES];
    char id[JOB_ID_LEN + 1];
    job_state state;
    int sync;                /* streamed /v1/samples: one subscriber, not in the table */
    int in_table;
    int live_listed;         /* on the live list (queued or running, sync ones too) */
    sample_params p;
    admit_slot slot;         /* its turn under its token's limits */
    int preview_every;       /* steps between previews, 0 = none */
    engine_job *ej;          /* while the engine has it (until the result is encoded); NULL
                              * before its token's turn */
    int works;               /* threadpool works that refer to the job */
    int encoding;            /* the result is being encoded (the engine job is done) */
    int qpos;                /* last known queue position (-1 when started) */

    /* progress: step events are emitted once every image completed an evaluation */
    int evals;               /* evaluations per image */
    int done_evals;          /* evaluations every image has completed */
    int *img_evals;          /* [n] evaluations completed per image */
    int at_min;              /* images with img_evals == done_evals */
    float *rows;             /* assembler ring [ring][n][K]: weight, -1 when not selected */
    int ring;                /* evaluations the ring holds (a power of two) */
    rstats *rs;              /* routing statistics of this job (while live) */

    /* step events kept for subscribers and for resuming */
    evrec *log;              /* ring [log_cap]: event log_start is at log[log_head] */
    int log_cap, log_head, log_start, log_len;
    size_t log_bytes;

    /* previews */
    float *pv_x0;            /* [n][dim] predicted clean images being gathered */
    uint8_t *pv_filled;      /* [n] */
    int pv_target;           /* step the gathered preview is for */
    int pv_have;
    int pv_busy;             /* an encoding is in flight */
    char *pv_frame;          /* the latest preview event, whole frame */
    size_t pv_len;
    int pv_seq;

    sub *subs;
    int n_subs;

    /* outcome */
    char *res_json, *res_proto, *res_png; /* succeeded: the result in each encoding */
    size_t res_json_len, res_proto_len, res_png_len;
    char *routing_json;      /* rstats_json once finished */
    int err_status;
    char err_code[40], err_msg[320];
    uint64_t created_ns, started_ns, finished_ns;
    double created_unix;
    double queue_ms, total_ms, router_ms, expert_ms;
    size_t bytes;            /* counted toward the store bound while finished */

    job *hnext;              /* hash chain */
    job *prev, *next;        /* live list, or the finished list (oldest first) */
};

struct jobs {
    uv_loop_t *loop;
    service *svc;
    admit *adm;
    engine *eng;
    jobs_model m;
    jobs_config cfg;
    uint8_t key[32];         /* tags issued ids: tells evicted (410) from unknown (404) */
    job **buckets;
    size_t nbuckets, count;
    job *live_head;          /* queued and running, newest first */
    job *fin_head, *fin_tail; /* finished, oldest first */
    int n_live;
    size_t stored;           /* bytes of finished jobs */
    int closing;
    int works;               /* threadpool works in flight (all jobs) */
    uv_timer_t timer;
    uv_timer_t flush_timer;  /* writes queued frames every FLUSH_MS */
    sub *flush_head;
    int handles;             /* timers not closed yet */
    /* counters for /metrics */
    uint64_t submitted, evicted_ttl, evicted_size, pv_skipped, streams_lagging, n_subs;
    uint64_t finished_by[5];
};

/* jobs.c */
job *job_find(jobs *J, const uint8_t rnd[JOB_RND_BYTES]);
/* The job's place in the queue: -1 once started, else how many jobs would run
 * before it (engine_job_queue_position; for a job waiting for its token's
 * turn, the engine's queued jobs plus the token's requests ahead of it). */
int job_queue_position(const job *j);
/* Parses an id: 0 and rnd when well formed and issued by this process; 400 when
 * malformed; 404 when well formed but never issued here. */
int job_parse_id(const jobs *J, const char *s, size_t len, uint8_t rnd[JOB_RND_BYTES]);
/* Creates a job for a request admit_request accepted (the trace goes into its
 * result only if p asks) and takes its turn for token tok (NULL: none): it is
 * submitted to the engine now, or when its turn comes. Returns 0 and *out, or
 * DDM_EBUSY / DDM_ECLOSED / DDM_ENOMEM / DDM_EIO (nothing created). */
int job_submit(jobs *J, const sample_params *p, int preview_every, int sync, auth_token *tok,
               job **out);
/* Cancels a live job (next step boundary) and finishes it as cancelled. */
void job_cancel(job *j);
/* Frees j if nothing refers to it any more. */
void job_maybe_free(job *j);
const char *job_state_name(job_state s);
/* The status document (JSON object); with_result adds "result" when succeeded. */
void job_status_json(const job *j, int with_result, strbuf *o);
/* A job started: queued jobs with readers learn their new positions. */
void jobs_positions_changed(jobs *J);
/* Frees a closing table once no work is in flight. */
void jobs_close_maybe_done(jobs *J);

/* jobs_events.c */
/* The engine's per-evaluation observer of one job (ud = job). */
void job_on_eval(void *ud, const traj *tr);
/* Allocates what progress tracking needs; 0 or DDM_ENOMEM. */
int job_events_init(job *j);
/* Frees the step log, the assembler and the preview buffers. */
void job_events_free(job *j);
/* The job has finished: frees what only a running job needs (the step log
 * only once no reader is left). */
void job_events_finish(job *j);
/* Adds an event stream reading j from step event index `from` (-1: from the
 * start). Takes req over in every case. Returns 0 or DDM_ENOMEM. */
int job_subscribe(job *j, http_req *req, long from);
/* Writes what every subscriber of j may get now. */
void job_pump_all(job *j);
/* Ends every stream of j (abort: close at once). */
void job_end_subs(job *j, int abort);
/* Heartbeats and queue-position updates (the table's timer). */
void job_tick_subs(job *j, uint64_t now_ms);
/* Writes every reader's queued frames (the flush timer). */
void jobs_flush(uv_timer_t *t);

/* jobs_http.c */
int jobs_http_routes(jobs *J);

#endif
