/* loadgen.c -- closed-loop load generator (see loadgen.h). */
#include "tools/client/loadgen.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "server/httpc.h"
#include "tools/client/cli.h"

typedef struct shared {
    const loadgen_config *cfg;
    int64_t start_ns;
    atomic_llong deadline_ns;     /* lowered to 0 to stop every thread early */
    atomic_long claimed;          /* requests started (for max_requests) */
    atomic_ullong done, failed;   /* for progress reports */
} shared;

typedef struct worker {
    shared *sh;
    int index;
    pthread_t th;
    int started;
    httpc *c;
    double *lat;                  /* [n] latencies of good requests, ms */
    size_t n, cap;
    uint64_t ok, failed, bytes;
    int oom;
    int nf;
    loadgen_failure fails[LOADGEN_MAX_KINDS];
} worker;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
}

/* Counts one failure of kind code in a table of at most LOADGEN_MAX_KINDS;
 * once full, new kinds go to the last slot (code 0, "other"). */
static void count_failure(loadgen_failure *tab, int *n, int code, uint64_t times,
                          const char *msg)
{
    int i;
    for (i = 0; i < *n; i++)
        if (tab[i].code == code)
            break;
    if (i == *n) {
        if (*n == LOADGEN_MAX_KINDS) {
            i = LOADGEN_MAX_KINDS - 1;
            tab[i].code = 0;
            snprintf(tab[i].first_message, sizeof tab[i].first_message, "other failures");
        } else {
            (*n)++;
            tab[i].code = code;
            tab[i].count = 0;
            snprintf(tab[i].first_message, sizeof tab[i].first_message, "%s", msg);
        }
    }
    tab[i].count += times;
}

static void record_latency(worker *w, double ms)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4096;
        double *np = realloc(w->lat, cap * sizeof *np);
        if (!np) {
            w->oom = 1; /* keep counting; percentiles miss this sample */
            return;
        }
        w->lat = np;
        w->cap = cap;
    }
    w->lat[w->n++] = ms;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    const loadgen_config *cfg = sh->cfg;
    httpc_header hdr[2];
    size_t nh = 0;
    if (cfg->content_type)
        hdr[nh++] = (httpc_header){ "Content-Type", cfg->content_type };
    if (cfg->accept)
        hdr[nh++] = (httpc_header){ "Accept", cfg->accept };
    int64_t last_report = sh->start_ns;
    for (;;) {
        int64_t t0 = now_ns();
        if (t0 >= atomic_load(&sh->deadline_ns))
            break;
        if (cfg->max_requests && atomic_fetch_add(&sh->claimed, 1) >= cfg->max_requests)
            break;
        httpc_response resp;
        int rc = httpc_request(w->c, cfg->method, cfg->path, hdr, nh, cfg->body, cfg->body_len,
                               &resp);
        double ms = (double)(now_ns() - t0) / 1e6;
        int bad = 1;
        if (rc) {
            w->failed++;
            count_failure(w->fails, &w->nf, rc, 1, ddm_strerror(rc));
            httpc_disconnect(w->c);
            sleep_ms(10); /* a server that is down must not turn this into a busy loop */
        } else if (resp.status != 200 || resp.body_len == 0) {
            char msg[160];
            cli_error_message(&resp, msg, sizeof msg);
            w->failed++;
            count_failure(w->fails, &w->nf, resp.status, 1, msg);
            if (resp.status == 429 || resp.status == 503)
                sleep_ms(10);
        } else {
            bad = 0;
            w->ok++;
            w->bytes += resp.body_len;
            record_latency(w, ms);
        }
        httpc_response_free(&resp);
        if (bad)
            atomic_fetch_add(&sh->failed, 1);
        atomic_fetch_add(&sh->done, 1);
        if (w->index == 0 && cfg->progress) {
            int64_t t = now_ns();
            if (t - last_report >= 1000000000) {
                last_report = t;
                cfg->progress(cfg->progress_ud, (double)(t - sh->start_ns) / 1e9,
                              atomic_load(&sh->done), atomic_load(&sh->failed));
            }
        }
    }
    return NULL;
}

static int cmp_failure(const void *a, const void *b)
{
    const loadgen_failure *x = a, *y = b;
    return (x->code > y->code) - (x->code < y->code);
}

/* Folds every worker's counts and latencies into res. */
static int merge(worker *ws, int n, loadgen_result *res, char *err, size_t errlen)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += ws[i].n;
    double *all = malloc((total ? total : 1) * sizeof *all);
    if (!all) {
        snprintf(err, errlen, "out of memory merging %zu latencies", total);
        return DDM_ENOMEM;
    }
    size_t at = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        worker *w = &ws[i];
        if (w->n)
            memcpy(all + at, w->lat, w->n * sizeof *all);
        at += w->n;
        for (size_t j = 0; j < w->n; j++)
            sum += w->lat[j];
        res->ok += w->ok;
        res->failed += w->failed;
        res->bytes_received += w->bytes;
        for (int f = 0; f < w->nf; f++)
            count_failure(res->failures, &res->n_failures, w->fails[f].code, w->fails[f].count,
                          w->fails[f].first_message);
    }
    res->requests = res->ok + res->failed;
    cli_sort_doubles(all, total);
    qsort(res->failures, (size_t)res->n_failures, sizeof *res->failures, cmp_failure);
    if (total) {
        res->mean_ms = sum / (double)total;
        res->min_ms = all[0];
        res->max_ms = all[total - 1];
        res->p50_ms = cli_percentile(all, total, 0.50);
        res->p90_ms = cli_percentile(all, total, 0.90);
        res->p99_ms = cli_percentile(all, total, 0.99);
    }
    free(all);
    return 0;
}

int loadgen_run(const loadgen_config *cfg, loadgen_result *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    if (cfg->connections < 1 || cfg->connections > LOADGEN_MAX_CONNECTIONS ||
        cfg->duration_ms <= 0 || cfg->max_requests < 0 || cfg->timeout_ms <= 0 ||
        !cfg->method || !cfg->path || !cfg->hostport) {
        snprintf(err, errlen, "load generator: connections must be 1..%d, duration and timeout "
                              "positive", LOADGEN_MAX_CONNECTIONS);
        return DDM_EINVAL;
    }
    int n = cfg->connections;
    worker *ws = calloc((size_t)n, sizeof *ws);
    if (!ws) {
        snprintf(err, errlen, "out of memory for %d connections", n);
        return DDM_ENOMEM;
    }
    shared sh = { .cfg = cfg };
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        ws[i].sh = &sh;
        ws[i].index = i;
        rc = httpc_open(cfg->hostport, cfg->timeout_ms, &ws[i].c, err, errlen);
    }
    sh.start_ns = now_ns();
    atomic_store(&sh.deadline_ns, sh.start_ns + (int64_t)cfg->duration_ms * 1000000);
    for (int i = 0; i < n && !rc; i++) {
        rc = pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
        if (rc) {
            snprintf(err, errlen, "cannot start load thread %d of %d: %s", i + 1, n,
                     ddm_strerror(-rc));
            rc = -rc;
            /* stop the ones already running at their next request */
            atomic_store(&sh.deadline_ns, 0);
        } else {
            ws[i].started = 1;
        }
    }
    for (int i = 0; i < n; i++)
        if (ws[i].started)
            pthread_join(ws[i].th, NULL);
    res->elapsed_s = (double)(now_ns() - sh.start_ns) / 1e9;
    if (!rc)
        rc = merge(ws, n, res, err, errlen);
    for (int i = 0; i < n; i++) {
        httpc_close(ws[i].c);
        free(ws[i].lat);
    }
    free(ws);
    return rc;
}
