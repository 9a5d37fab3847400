/* metrics.c -- worker counters and histograms as Prometheus text. */
#include "expert-worker/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void emetrics_init(emetrics *m, int max_batch)
{
    memset(m, 0, sizeof *m);
    emetrics_hist *b = &m->batch_size;
    for (int v = 1; b->nb < EMETRICS_MAX_BUCKETS; v *= 2) {
        b->le[b->nb++] = v < max_batch ? v : max_batch;
        if (v >= max_batch)
            break;
    }
    static const double times[] = { 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
                                    10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5,
                                    10.0 };
    int nt = (int)(sizeof times / sizeof times[0]);
    for (int i = 0; i < nt; i++)
        m->queue_s.le[i] = m->compute_s.le[i] = times[i];
    m->queue_s.nb = m->compute_s.nb = nt;
}

void emetrics_observe(emetrics_hist *h, double v)
{
    int i = 0;
    while (i < h->nb && v > h->le[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

typedef struct outbuf {
    char *p;
    size_t len, cap;
    int oom;
} outbuf;

static void out(outbuf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(outbuf *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t ncap = 2 * o->cap + (size_t)n;
        char *np = realloc(o->p, ncap);
        if (!np) {
            o->oom = 1;
            return;
        }
        o->p = np;
        o->cap = ncap;
    }
}

static void hist(outbuf *o, const char *name, const char *help, const emetrics_hist *h)
{
    out(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->nb; i++) {
        cum += h->counts[i];
        out(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    cum += h->counts[h->nb];
    out(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    out(o, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

static void counter(outbuf *o, const char *name, const char *help, uint64_t v)
{
    out(o, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
        (unsigned long long)v);
}

char *emetrics_render(const emetrics *m, const emetrics_info *info, size_t *len)
{
    outbuf o = { .cap = 4096 };
    o.p = malloc(o.cap);
    if (!o.p)
        return NULL;
    o.p[0] = 0;
    out(&o, "# HELP ddm_expert_info The expert this worker serves.\n"
            "# TYPE ddm_expert_info gauge\n"
            "ddm_expert_info{expert_id=\"%d\",sha256=\"%s\",dataset=\"%s\",version=\"%s\","
            "max_batch=\"%d\"} 1\n",
        info->expert_id, info->sha256, info->dataset, info->version, info->max_batch);
    out(&o, "# HELP ddm_expert_requests_total Requests received, by kind.\n"
            "# TYPE ddm_expert_requests_total counter\n"
            "ddm_expert_requests_total{kind=\"denoise\"} %llu\n"
            "ddm_expert_requests_total{kind=\"info\"} %llu\n",
        (unsigned long long)m->denoise_requests, (unsigned long long)m->info_requests);
    static const char *reasons[EM_ERR_COUNT] = { "decode", "invalid", "busy", "shutdown",
                                                 "internal" };
    out(&o, "# HELP ddm_expert_errors_total Error replies, by reason.\n"
            "# TYPE ddm_expert_errors_total counter\n");
    for (int i = 0; i < EM_ERR_COUNT; i++)
        out(&o, "ddm_expert_errors_total{reason=\"%s\"} %llu\n", reasons[i],
            (unsigned long long)m->errors[i]);
    counter(&o, "ddm_expert_latents_total", "Latents computed.", m->latents);
    counter(&o, "ddm_expert_batches_total", "Forward passes run.", m->batches);
    counter(&o, "ddm_expert_replies_unsent_total", "Replies nanomsg refused to send.",
            m->replies_unsent);
    hist(&o, "ddm_expert_batch_size", "Latents per forward pass.", &m->batch_size);
    hist(&o, "ddm_expert_queue_seconds",
         "Time a request waited from arrival to the start of its forward pass.", &m->queue_s);
    hist(&o, "ddm_expert_compute_seconds", "Duration of one forward pass.", &m->compute_s);
    out(&o, "# HELP ddm_expert_queue_latents Latents waiting for a forward pass.\n"
            "# TYPE ddm_expert_queue_latents gauge\nddm_expert_queue_latents %ld\n",
        m->queue_latents);
    out(&o, "# HELP ddm_expert_computing 1 while a forward pass runs.\n"
            "# TYPE ddm_expert_computing gauge\nddm_expert_computing %d\n", m->computing);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}
