/* rstats.c -- per-expert x time-band routing statistics (see rstats.h). */
#include "router/rstats.h"

#include <string.h>

void rstats_init(rstats *r, int K)
{
    memset(r, 0, sizeof *r);
    r->K = K < 1 ? 1 : K > STRAT_MAX_EXPERTS ? STRAT_MAX_EXPERTS : K;
}

int rstats_bucket(float t)
{
    int b = (int)(t * RSTATS_BUCKETS);
    return b < 0 ? 0 : b >= RSTATS_BUCKETS ? RSTATS_BUCKETS - 1 : b;
}

float rstats_eval_time(const sample_params *p, int e)
{
    int step = p->sampler == SAMPLER_HEUN ? e / 2 + e % 2 : e;
    return 1.0f - (float)step / (float)p->steps;
}

void rstats_add_eval(rstats *r, const traj *tr)
{
    int b = rstats_bucket(rstats_eval_time(tr->p, tr->evals - 1));
    for (int j = 0; j < tr->n_sel; j++) {
        int k = tr->sel[j];
        if (k < 0 || k >= r->K)
            continue;
        r->sel[k][b]++;
        r->wsum[k][b] += tr->w[j];
    }
}

void rstats_prometheus(const rstats *r, strbuf *o)
{
    strbuf_puts(o, "# HELP ddm_routing_selections_total Evaluations that selected the expert, "
                   "by band of t (t_bucket = lower edge of [t, t+0.1)).\n"
                   "# TYPE ddm_routing_selections_total counter\n");
    for (int k = 0; k < r->K; k++)
        for (int b = 0; b < RSTATS_BUCKETS; b++)
            strbuf_printf(o, "ddm_routing_selections_total{expert=\"%d\",t_bucket=\"%.1f\"} %llu\n",
                          k, (double)b / RSTATS_BUCKETS, (unsigned long long)r->sel[k][b]);
    strbuf_puts(o, "# HELP ddm_routing_weight_total Sum of the expert's weights when selected, "
                   "by band of t (divide by ddm_routing_selections_total for the mean).\n"
                   "# TYPE ddm_routing_weight_total counter\n");
    for (int k = 0; k < r->K; k++)
        for (int b = 0; b < RSTATS_BUCKETS; b++)
            strbuf_printf(o, "ddm_routing_weight_total{expert=\"%d\",t_bucket=\"%.1f\"} %.6f\n", k,
                          (double)b / RSTATS_BUCKETS, r->wsum[k][b]);
}

void rstats_json(const rstats *r, strbuf *o)
{
    strbuf_puts(o, "{\"t_buckets\":[");
    for (int b = 0; b < RSTATS_BUCKETS; b++)
        strbuf_printf(o, "%s%.1f", b ? "," : "", (double)b / RSTATS_BUCKETS);
    strbuf_puts(o, "],\"selections\":[");
    for (int k = 0; k < r->K; k++) {
        strbuf_puts(o, k ? ",[" : "[");
        for (int b = 0; b < RSTATS_BUCKETS; b++)
            strbuf_printf(o, "%s%llu", b ? "," : "", (unsigned long long)r->sel[k][b]);
        strbuf_puts(o, "]");
    }
    strbuf_puts(o, "],\"mean_weight\":[");
    for (int k = 0; k < r->K; k++) {
        strbuf_puts(o, k ? ",[" : "[");
        for (int b = 0; b < RSTATS_BUCKETS; b++)
            strbuf_printf(o, "%s%.4f", b ? "," : "",
                          r->sel[k][b] ? r->wsum[k][b] / (double)r->sel[k][b] : 0.0);
        strbuf_puts(o, "]");
    }
    strbuf_puts(o, "]}");
}
