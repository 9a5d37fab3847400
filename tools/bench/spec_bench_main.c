/* spec_bench_main.c -- what speculative dispatch can gain, and what it gains.
 *
 * --switches: in-process (router/local) sampling with traces on models/digits
 * (or --models DIR): how often a trajectory's set of selected experts changes
 * from one evaluation to the next, per band of t and per trajectory, for a few
 * request shapes. A set that did not change is a speculation hit: the latent
 * sent to the previous evaluation's experts was what the router then chose.
 *
 * Default (latency, then throughput): single-image requests (50 steps,
 * top-2, 1 client) in rotated rounds: in-process (1 and 2 threads), then
 * served by four ddm-router processes over the same ddm-expert workers
 * (--speculate off/on x --inline-trajs 0/4). Prints the medians of the
 * rounds' p50 and p99, the served / in-process ratios, where a step's time
 * goes (in-process phase times; the routers' /metrics), the speculation
 * counters (hits, misses, wasted expert rows), whether all four routers
 * return the same PNG bytes, and then images/s at --clients clients with
 * speculation off and on (inline planning on), alternating. */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/blas.h"
#include "common/model.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/cluster.h"
#include "tests/support/metrics.h"
#include "tests/support/proc.h"
#include "tools/client/cli.h"
#include "tools/client/loadgen.h"

/* ---- set changes ------------------------------------------------------------------- */

#define BANDS 10

typedef struct switch_stats {
    uint64_t evals[BANDS], changed[BANDS], new_experts[BANDS], dropped[BANDS], sel[BANDS];
    double *per_traj;          /* [n] changes per trajectory */
    int n;
} switch_stats;

static uint64_t mask_of(const trace_entry *te)
{
    uint64_t m = 0;
    for (int j = 0; j < te->n_sel; j++)
        m |= 1ull << te->sel[j];
    return m;
}

/* Samples p (trace on) in-process and adds its set changes to st. */
static int measure_switches(ensemble *e, sample_params *p, switch_stats *st)
{
    p->trace = 1;
    float *out = malloc((size_t)p->n * (size_t)e->dim * sizeof *out);
    traj **tr = calloc((size_t)p->n, sizeof *tr);
    int rc = out && tr ? ensemble_sample(e, p, out, NULL, tr) : -1;
    int evals = sample_evals(p);
    for (int i = 0; i < p->n && !rc; i++) {
        int changes = 0;
        for (int ev = 1; ev < evals; ev++) {
            const trace_entry *a = &tr[i]->trace[ev - 1], *b = &tr[i]->trace[ev];
            int band = (int)(b->t * BANDS);
            band = band < 0 ? 0 : band >= BANDS ? BANDS - 1 : band;
            uint64_t ma = mask_of(a), mb = mask_of(b);
            st->evals[band]++;
            st->sel[band] += (uint64_t)b->n_sel;
            st->new_experts[band] += (uint64_t)__builtin_popcountll(mb & ~ma);
            st->dropped[band] += (uint64_t)__builtin_popcountll(ma & ~mb);
            if (ma != mb) {
                st->changed[band]++;
                changes++;
            }
        }
        st->per_traj[st->n++] = changes;
    }
    for (int i = 0; i < p->n && tr; i++)
        traj_free(tr[i]);
    free(tr);
    free(out);
    return rc;
}

static void print_switches(const char *what, switch_stats *st, int transitions)
{
    uint64_t ev = 0, ch = 0, nw = 0, dr = 0, se = 0;
    printf("\n%s: %d trajectories, %d transitions each\n\n", what, st->n, transitions);
    printf("| t band | evaluations | set changed | new experts per evaluation | rows hit "
           "(speculated and selected) | wasted rows per evaluation |\n|---|---|---|---|---|---|\n");
    for (int b = BANDS - 1; b >= 0; b--) {
        if (!st->evals[b])
            continue;
        ev += st->evals[b], ch += st->changed[b], nw += st->new_experts[b];
        dr += st->dropped[b], se += st->sel[b];
        printf("| %.1f-%.1f | %llu | %.1f%% | %.3f | %.1f%% | %.3f |\n", b / (double)BANDS,
               (b + 1) / (double)BANDS, (unsigned long long)st->evals[b],
               100.0 * st->changed[b] / st->evals[b], (double)st->new_experts[b] / st->evals[b],
               100.0 * (st->sel[b] - st->new_experts[b]) / st->sel[b],
               (double)st->dropped[b] / st->evals[b]);
    }
    printf("| all | %llu | **%.1f%%** | %.3f | **%.1f%%** | %.3f |\n", (unsigned long long)ev,
           100.0 * ch / ev, (double)nw / ev, 100.0 * (se - nw) / se, (double)dr / ev);
    int never = 0;
    for (int i = 0; i < st->n; i++)
        never += st->per_traj[i] == 0;
    cli_sort_doubles(st->per_traj, (size_t)st->n);
    printf("\nchanges per trajectory: mean %.2f, median %.0f, p90 %.0f, max %.0f; trajectories "
           "that never change: %.1f%%\n", (double)ch / st->n,
           cli_percentile(st->per_traj, (size_t)st->n, 0.5),
           cli_percentile(st->per_traj, (size_t)st->n, 0.9), st->per_traj[st->n - 1],
           100.0 * never / st->n);
}

static int run_switches(ensemble *e, int images, int steps)
{
    typedef struct shape {
        const char *name, *strategy;
        int labelled;
        float guidance;
        sampler_kind sampler;
    } shape;
    static const shape shapes[] = {
        { "top-2, unconditional, euler", "top-2", 0, 1.0f, SAMPLER_EULER },
        { "top-2, label 0..9 (images spread over them), guidance 2, euler", "top-2", 1, 2.0f,
          SAMPLER_EULER },
        { "top-2, unconditional, heun (predictor and corrector evaluations)", "top-2", 0, 1.0f,
          SAMPLER_HEUN },
        { "top-1, unconditional, euler", "top-1", 0, 1.0f, SAMPLER_EULER },
        { "sample (one expert drawn per evaluation), unconditional, euler", "sample", 0, 1.0f,
          SAMPLER_EULER },
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        switch_stats st;
        memset(&st, 0, sizeof st);
        st.per_traj = calloc((size_t)images, sizeof *st.per_traj);
        sample_params p;
        char err[256];
        int groups = shapes[s].labelled && e->n_classes > 0 ? e->n_classes : 1;
        for (int g = 0; g < groups; g++) {
            sample_params_default(&p, e->K);
            if (strategy_parse(shapes[s].strategy, e->K, NAN, NAN, &p.strat, err, sizeof err))
                return fprintf(stderr, "spec_bench: %s\n", err), 1;
            p.n = images / groups + (g < images % groups);
            p.steps = steps;
            p.seed = 1000 + (uint64_t)g;
            p.label = shapes[s].labelled && e->n_classes > 0 ? g : -1;
            p.guidance = shapes[s].guidance;
            p.sampler = shapes[s].sampler;
            for (int i0 = 0; i0 < p.n; i0 += SAMPLE_MAX_N) {
                sample_params q = p;
                q.n = p.n - i0 < SAMPLE_MAX_N ? p.n - i0 : SAMPLE_MAX_N;
                q.seed = p.seed * 1000 + (uint64_t)i0;
                if (measure_switches(e, &q, &st))
                    return fprintf(stderr, "spec_bench: sampling failed\n"), 1;
            }
        }
        print_switches(shapes[s].name, &st, sample_evals(&p) - 1);
        free(st.per_traj);
        fflush(stdout);
    }
    return 0;
}

/* ---- latency and throughput: in-process vs served, speculation and inline planning ----- */

#define N_CFG 4
#define MAX_ROUNDS 64

/* One ddm-router over the shared workers. */
typedef struct rcfg {
    const char *speculate, *inline_trajs, *name;
    pid_t pid;
    char hp[64];
    /* summed over the latency runs (deltas of /metrics, and the load generator's wall) */
    double ticks, net_s, overhead_s, wait_s, elapsed_s, requests, rows;
    double spec_send_s, send_s, finish_s;
    double evals_hit, evals_miss, rows_hit, rows_miss, rows_wasted, calls, dropped;
    double p50[MAX_ROUNDS], p99[MAX_ROUNDS], cpu[MAX_ROUNDS];
} rcfg;

static rcfg CFG[N_CFG] = {
    { .speculate = "off", .inline_trajs = "0", .name = "speculation off, inline planning off" },
    { .speculate = "off", .inline_trajs = "4", .name = "speculation off, inline planning on" },
    { .speculate = "on", .inline_trajs = "0", .name = "speculation on, inline planning off" },
    { .speculate = "on", .inline_trajs = "4", .name = "speculation on, inline planning on (default)" },
};

/* The counters of one /metrics body (NAN where absent). */
typedef struct counters {
    double ticks, net_s, overhead_s, wait_s, rows;
    double spec_send_s, send_s, finish_s;
    double evals_hit, evals_miss, rows_hit, rows_miss, rows_wasted, calls, dropped;
} counters;

static void read_counters(const char *hp, counters *c)
{
    char *m = tmetrics_fetch(hp);
    c->ticks = tmetrics_value(m, "ddm_ticks_total");
    c->net_s = tmetrics_value(m, "ddm_router_net_seconds_total");
    c->overhead_s = tmetrics_value(m, "ddm_tick_overhead_seconds_total");
    c->wait_s = tmetrics_value(m, "ddm_tick_expert_wait_seconds_total");
    c->rows = tmetrics_value(m, "ddm_tick_rows_total");
    c->spec_send_s = tmetrics_value(m, "ddm_tick_phase_seconds_total{phase=\"speculative_send\"}");
    c->send_s = tmetrics_value(m, "ddm_tick_phase_seconds_total{phase=\"send\"}");
    c->finish_s = tmetrics_value(m, "ddm_tick_phase_seconds_total{phase=\"finish\"}");
    c->evals_hit = tmetrics_value(m, "ddm_speculation_evaluations_total{outcome=\"hit\"}");
    c->evals_miss = tmetrics_value(m, "ddm_speculation_evaluations_total{outcome=\"miss\"}");
    c->rows_hit = tmetrics_value(m, "ddm_speculation_rows_total{outcome=\"hit\"}");
    c->rows_miss = tmetrics_value(m, "ddm_speculation_rows_total{outcome=\"miss\"}");
    c->rows_wasted = tmetrics_value(m, "ddm_speculation_rows_total{outcome=\"wasted\"}");
    c->calls = tmetrics_value(m, "ddm_speculation_calls_total{outcome=\"sent\"}");
    c->dropped = tmetrics_value(m, "ddm_speculation_calls_total{outcome=\"dropped\"}");
    free(m);
}

/* CPU seconds of the router pid and every worker. */
static double cluster_cpu(const tcluster *c, pid_t router)
{
    double s = proc_cpu_seconds(router);
    for (int i = 0; i < c->n_workers; i++)
        s += proc_cpu_seconds(c->workers[i]);
    return s;
}

/* Closed-loop load on one router: `clients` connections, `requests` in all
 * (0: for duration_ms). Returns 0 with *r filled, or -1 (message printed). */
static int load(const char *hp, const char *body, int clients, long requests, long duration_ms,
                loadgen_result *r)
{
    loadgen_config lc = {
        .hostport = hp, .method = "POST", .path = "/v1/samples", .body = body,
        .body_len = strlen(body), .content_type = "application/json",
        .accept = "application/json", .connections = clients,
        .duration_ms = duration_ms, .max_requests = requests, .timeout_ms = 120000,
    };
    char err[256];
    if (loadgen_run(&lc, r, err, sizeof err))
        return fprintf(stderr, "spec_bench: %s\n", err), -1;
    if (r->failed)
        fprintf(stderr, "spec_bench: %llu of %llu requests to %s failed\n",
                (unsigned long long)r->failed, (unsigned long long)r->requests, hp);
    return r->ok ? 0 : -1;
}

/* One latency measure of router cfg: `count` single-image requests back to
 * back on one connection; adds its counters to cfg. */
static int served_round(const tcluster *cl, rcfg *cfg, const char *body, int count, int round)
{
    counters a, b;
    read_counters(cfg->hp, &a);
    double cpu0 = cluster_cpu(cl, cfg->pid);
    loadgen_result r;
    if (load(cfg->hp, body, 1, count, 600000, &r))
        return -1;
    double cpu1 = cluster_cpu(cl, cfg->pid);
    read_counters(cfg->hp, &b);
    cfg->p50[round] = r.p50_ms;
    cfg->p99[round] = r.p99_ms;
    cfg->cpu[round] = 1e3 * (cpu1 - cpu0) / (double)r.ok;
    cfg->elapsed_s += r.elapsed_s;
    cfg->requests += (double)r.ok;
#define ADD(f) cfg->f += b.f - a.f
    ADD(ticks), ADD(net_s), ADD(overhead_s), ADD(wait_s), ADD(rows);
    ADD(spec_send_s), ADD(send_s), ADD(finish_s);
    ADD(evals_hit), ADD(evals_miss), ADD(rows_hit), ADD(rows_miss), ADD(rows_wasted);
    ADD(calls), ADD(dropped);
#undef ADD
    return 0;
}

/* In-process: `count` single-image samplings with `threads`; p50/p99 ms and
 * the per-step split (us) of the router network, experts and the rest. */
typedef struct inproc_meas {
    double p50[MAX_ROUNDS], p99[MAX_ROUNDS], cpu[MAX_ROUNDS]; /* cpu: ms per image */
    double router_s, experts_s, other_s, steps, total_s;
} inproc_meas;

static void inproc_round(ensemble *e, const char *strategy, int steps, int threads, int count,
                         inproc_meas *m, int round)
{
    char err[256];
    sample_params p;
    sample_params_default(&p, e->K);
    strategy_parse(strategy, e->K, NAN, NAN, &p.strat, err, sizeof err);
    p.steps = steps;
    float *out = malloc((size_t)e->dim * sizeof *out);
    double *lat = calloc((size_t)count, sizeof *lat);
    ensemble_set_threads(e, threads);
    double cpu0 = proc_self_cpu_seconds();
    for (int i = 0; i < count; i++) {
        p.seed = (uint64_t)(round * count + i);
        sample_stats st;
        double t0 = proc_now_s();
        ensemble_sample(e, &p, out, &st, NULL);
        lat[i] = 1e3 * (proc_now_s() - t0);
        m->total_s += lat[i] / 1e3;
        m->router_s += st.router_s;
        m->experts_s += st.experts_s;
        m->other_s += st.plan_finish_s;
        m->steps += sample_evals(&p);
    }
    m->cpu[round] = 1e3 * (proc_self_cpu_seconds() - cpu0) / count;
    ensemble_set_threads(e, 1);
    cli_sort_doubles(lat, (size_t)count);
    m->p50[round] = cli_percentile(lat, (size_t)count, 0.5);
    m->p99[round] = cli_percentile(lat, (size_t)count, 0.99);
    free(lat);
    free(out);
}

/* The PNG bytes of body's answer from hp (Accept: image/png), malloc'd; NULL on failure. */
static char *fetch_png(const char *hp, const char *body, size_t *len)
{
    httpc *c;
    char err[128];
    if (httpc_open(hp, 120000, &c, err, sizeof err))
        return NULL;
    httpc_header h[] = { { "Content-Type", "application/json" }, { "Accept", "image/png" } };
    httpc_response r;
    char *out = NULL;
    if (httpc_request(c, "POST", "/v1/samples", h, 2, body, strlen(body), &r) == 0 &&
        r.status == 200 && (out = malloc(r.body_len + 1))) {
        memcpy(out, r.body, r.body_len);
        *len = r.body_len;
    }
    httpc_response_free(&r);
    httpc_close(c);
    return out;
}

static double median_of(const double *v, int n)
{
    double tmp[MAX_ROUNDS];
    memcpy(tmp, v, (size_t)n * sizeof *v);
    return cli_median(tmp, (size_t)n);
}

static void print_latency(const inproc_meas *in1, const inproc_meas *in2, int rounds)
{
    double i1 = median_of(in1->p50, rounds), i2 = median_of(in2->p50, rounds);
    printf("| system | p50 ms | p99 ms | p50 / in-process (1 thread) | p50 / in-process (2 "
           "threads) | CPU ms per image (served: router + workers) |\n"
           "|---|---|---|---|---|---|\n");
    printf("| in-process, 1 thread | %.2f | %.2f | 1.00 | %.2f | %.2f |\n", i1,
           median_of(in1->p99, rounds), i1 / i2, median_of(in1->cpu, rounds));
    printf("| in-process, 2 threads | %.2f | %.2f | %.2f | 1.00 | %.2f |\n", i2,
           median_of(in2->p99, rounds), i2 / i1, median_of(in2->cpu, rounds));
    for (int c = 0; c < N_CFG; c++) {
        double p = median_of(CFG[c].p50, rounds);
        printf("| served, %s | %.2f | %.2f | **%.2fx** | %.2fx | %.2f |\n", CFG[c].name, p,
               median_of(CFG[c].p99, rounds), p / i1, p / i2, median_of(CFG[c].cpu, rounds));
    }
    printf("\nPer step (one tick per step for a single image), us, means over all the "
           "rounds' requests: in-process from ensemble_sample's phase times, served from the "
           "router's /metrics (ddm_tick_*). Before the answers: the router network; sending "
           "the speculative calls (pool_call: encoding, handing to nanomsg); the rest of the "
           "router's work and waits before the plan's calls go out. Then sending the plan's "
           "calls, waiting for the answers, and from the last answer to the combined step "
           "(threadpool or idle-handle hop, combining). \"Outside ticks\": the rest of the "
           "request's wall time (HTTP, admission, the first plan's threadpool hop, PNG "
           "encoding, the client)\n\n");
    printf("| system | router network | sending speculative calls | other router work before "
           "the calls | sending the plan's calls | waiting for the answers | answer to combined "
           "step | tick wall | outside ticks | total per step |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    const inproc_meas *in[2] = { in1, in2 };
    for (int t = 0; t < 2; t++) {
        double n = in[t]->steps;
        double r = 1e6 * in[t]->router_s / n, x = 1e6 * in[t]->experts_s / n;
        double o = 1e6 * in[t]->other_s / n;
        printf("| in-process, %d thread%s | %.0f | | %.0f (selection, grouping, combining, Euler)"
               " | | %.0f (the experts' forwards) | | %.0f | %.0f | %.0f |\n", t + 1,
               t ? "s" : "", r, o, x, r + o + x, 1e6 * in[t]->total_s / n - (r + o + x),
               1e6 * in[t]->total_s / n);
    }
    for (int c = 0; c < N_CFG; c++) {
        const rcfg *f = &CFG[c];
        double n = f->ticks;
        double net = 1e6 * f->net_s / n, spec = 1e6 * f->spec_send_s / n;
        double fin = 1e6 * f->finish_s / n, send = 1e6 * f->send_s / n;
        double other = 1e6 * f->overhead_s / n - net - spec - fin;
        double wait = 1e6 * f->wait_s / n - send, wall = 1e6 * (f->overhead_s + f->wait_s) / n;
        double outside = 1e6 * (f->elapsed_s - f->overhead_s - f->wait_s) / n;
        printf("| served, %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
               f->name, net, spec, other, send, wait, fin, wall, outside, 1e6 * f->elapsed_s / n);
    }
    printf("\nSpeculation over these single-image requests (rows: expert rows sent; hit: "
           "speculated and selected; miss: selected, not speculated, sent after the plan; "
           "wasted: speculated, not selected, dropped)\n\n");
    printf("| router | evaluations hit | rows sent | rows hit | rows miss | rows wasted | "
           "wasted / rows sent | speculative calls | dropped unanswered |\n"
           "|---|---|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < N_CFG; c++) {
        const rcfg *f = &CFG[c];
        if (strcmp(f->speculate, "on"))
            continue;
        printf("| %s | %.1f%% | %.0f | %.0f | %.0f | %.0f | **%.2f%%** | %.0f | %.0f |\n",
               f->name, 100 * f->evals_hit / (f->evals_hit + f->evals_miss), f->rows,
               f->rows_hit, f->rows_miss, f->rows_wasted, 100 * f->rows_wasted / f->rows,
               f->calls, f->dropped);
    }
}

/* Multi-client throughput of the default-inline routers, speculation off vs
 * on, in alternating rounds; with the speculation counters under load. */
static int run_throughput(const tcluster *cl, const char *body, int clients, int seconds,
                          int rounds)
{
    const int pick[2] = { 1, 3 }; /* off / on, both with inline planning (the default) */
    double ips[2][MAX_ROUNDS], p50[2][MAX_ROUNDS], cpu[2][MAX_ROUNDS], ratio[MAX_ROUNDS];
    counters sum[2];
    memset(sum, 0, sizeof sum);
    printf("\n%d clients, single-image requests (top-2, %s), %d s per measure, %d rounds, "
           "speculation off and on alternating (inline planning on)\n\n", clients, body, seconds,
           rounds);
    printf("| round | off img/s | on img/s | on / off | off p50 ms | on p50 ms | off CPU "
           "ms/img | on CPU ms/img |\n|---|---|---|---|---|---|---|---|\n");
    for (int r = 0; r < rounds; r++) {
        for (int q = 0; q < 2; q++) {
            int w = (r + q) % 2;
            rcfg *f = &CFG[pick[w]];
            counters a, b;
            read_counters(f->hp, &a);
            double c0 = cluster_cpu(cl, f->pid);
            loadgen_result lr;
            if (load(f->hp, body, clients, 0, (long)seconds * 1000, &lr))
                return -1;
            double c1 = cluster_cpu(cl, f->pid);
            read_counters(f->hp, &b);
            ips[w][r] = (double)lr.ok / lr.elapsed_s;
            p50[w][r] = lr.p50_ms;
            cpu[w][r] = 1e3 * (c1 - c0) / (double)lr.ok;
            sum[w].rows += b.rows - a.rows;
            sum[w].rows_wasted += b.rows_wasted - a.rows_wasted;
            sum[w].evals_hit += b.evals_hit - a.evals_hit;
            sum[w].evals_miss += b.evals_miss - a.evals_miss;
        }
        ratio[r] = ips[1][r] / ips[0][r];
        printf("| %d | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %.2f |\n", r + 1, ips[0][r],
               ips[1][r], ratio[r], p50[0][r], p50[1][r], cpu[0][r], cpu[1][r]);
        fflush(stdout);
    }
    printf("| **median** | **%.1f** | **%.1f** | **%.2f** | %.1f | %.1f | %.2f | %.2f |\n",
           median_of(ips[0], rounds), median_of(ips[1], rounds), median_of(ratio, rounds),
           median_of(p50[0], rounds), median_of(p50[1], rounds), median_of(cpu[0], rounds),
           median_of(cpu[1], rounds));
    printf("\nspeculation at %d clients: evaluations hit %.1f%%; rows wasted %.0f of %.0f "
           "sent (**%.2f%%**)\n", clients,
           100 * sum[1].evals_hit / (sum[1].evals_hit + sum[1].evals_miss), sum[1].rows_wasted,
           sum[1].rows, 100 * sum[1].rows_wasted / sum[1].rows);
    return 0;
}

static int run_latency(ensemble *e, const char *models, int steps, int rounds, int count,
                       int clients, int seconds, int tp_rounds)
{
    static const char *const wargs[] = { "--max-delay-us", "0", NULL };
    static const char *rargs[N_CFG][9];
    for (int c = 0; c < N_CFG; c++) {
        const char *a[] = { "--ticks", "1", "--threads", "2", "--speculate", CFG[c].speculate,
                            "--inline-trajs", CFG[c].inline_trajs, NULL };
        memcpy(rargs[c], a, sizeof a);
    }
    tcluster cl;
    if (tcluster_start(&cl, models, e->K, 1, wargs, rargs[0]))
        return 1;
    CFG[0].pid = cl.router;
    snprintf(CFG[0].hp, sizeof CFG[0].hp, "%s", cl.hostport);
    int rc = 1;
    for (int c = 1; c < N_CFG; c++) {
        int port;
        CFG[c].pid = tcluster_add_router(&cl, rargs[c], &port);
        if (CFG[c].pid < 0)
            goto out;
        snprintf(CFG[c].hp, sizeof CFG[c].hp, "127.0.0.1:%d", port);
    }
    char body[128];
    snprintf(body, sizeof body, "{\"n\": 1, \"steps\": %d, \"strategy\": \"top-2\"}", steps);
    printf("\nSingle-image latency, %d steps, top-2, 1 client: %d rounds; in each, %d requests "
           "per system, in-process (1 thread, 2 threads) then the four routers in rotated "
           "order. Routers --ticks 1 --threads 2 (as digits.conf), workers --max-delay-us 0 on "
           "ipc://, all on this machine's cores. p50 and p99: medians of the rounds' "
           "values.\n\n", steps, rounds, count);
    for (int c = 0; c < N_CFG; c++) { /* warm up */
        loadgen_result r;
        if (load(CFG[c].hp, body, 1, 5, 600000, &r))
            goto out;
    }
    inproc_meas in1, in2;
    memset(&in1, 0, sizeof in1);
    memset(&in2, 0, sizeof in2);
    for (int r = 0; r < rounds; r++) {
        inproc_round(e, "top-2", steps, 1, count, &in1, r);
        inproc_round(e, "top-2", steps, 2, count, &in2, r);
        for (int q = 0; q < N_CFG; q++)
            if (served_round(&cl, &CFG[(r + q) % N_CFG], body, count, r))
                goto out;
        fprintf(stderr, "round %d/%d: in-process %.2f / %.2f ms, served %.2f %.2f %.2f %.2f ms\n",
                r + 1, rounds, in1.p50[r], in2.p50[r], CFG[0].p50[r], CFG[1].p50[r],
                CFG[2].p50[r], CFG[3].p50[r]);
    }
    print_latency(&in1, &in2, rounds);
    /* images are the same bytes whatever the router's settings */
    char check[192];
    snprintf(check, sizeof check, "{\"n\": 16, \"steps\": %d, \"strategy\": \"top-2\", "
             "\"seed\": 7, \"label\": 3, \"guidance\": 2}", steps);
    size_t len0 = 0, len = 0;
    char *png0 = fetch_png(CFG[0].hp, check, &len0);
    int same = png0 != NULL;
    for (int c = 1; c < N_CFG && same; c++) {
        char *png = fetch_png(CFG[c].hp, check, &len);
        same = png && len == len0 && !memcmp(png, png0, len);
        free(png);
    }
    free(png0);
    printf("\nsame PNG bytes from all four routers (16 images, top-2, label 3, guidance 2, seed "
           "7): %s\n", same ? "yes" : "NO");
    if (clients > 0 && run_throughput(&cl, body, clients, seconds, tp_rounds))
        goto out;
    rc = same ? 0 : 1;
out:
    for (int c = 1; c < N_CFG; c++)
        if (CFG[c].pid > 0)
            proc_stop(CFG[c].pid, SIGTERM, 10000);
    tcluster_stop(&cl, 0);
    return rc;
}

/* ---- load-aware substitution: a stopped and a killed expert ---------------------------- */

/* One measure of `seconds` at `clients` clients with substitute on or off:
 * prints a table row. */
static int sub_row(const tcluster *cl, const char *phase, int substitute, int clients,
                   int seconds, int steps)
{
    char body[160];
    snprintf(body, sizeof body, "{\"n\": 1, \"steps\": %d, \"strategy\": \"top-2\"%s}", steps,
             substitute ? ", \"substitute\": true" : "");
    char *m0 = tmetrics_fetch(cl->hostport);
    loadgen_config lc = {
        .hostport = cl->hostport, .method = "POST", .path = "/v1/samples", .body = body,
        .body_len = strlen(body), .content_type = "application/json",
        .accept = "application/json", .connections = clients,
        .duration_ms = (long)seconds * 1000, .timeout_ms = 120000,
    };
    loadgen_result r;
    char err[256];
    if (loadgen_run(&lc, &r, err, sizeof err))
        return fprintf(stderr, "spec_bench: %s\n", err), -1;
    char *m1 = tmetrics_fetch(cl->hostport);
    double subs = tmetrics_value(m1, "ddm_substitutions_total") -
                  tmetrics_value(m0, "ddm_substitutions_total");
    double redone = tmetrics_value(m1, "ddm_evaluations_redone_total") -
                    tmetrics_value(m0, "ddm_evaluations_redone_total");
    free(m0);
    free(m1);
    char fails[256] = "";
    size_t n = 0;
    for (int i = 0; i < r.n_failures && n < sizeof fails - 40; i++)
        n += (size_t)snprintf(fails + n, sizeof fails - n, "%s%llu x %d", i ? ", " : "",
                              (unsigned long long)r.failures[i].count, r.failures[i].code);
    printf("| %s | %s | %llu | %llu%s%s%s | %.1f | %.1f | %.1f | %.1f | %.2f | %.0f |\n", phase,
           substitute ? "true" : "false", (unsigned long long)r.ok,
           (unsigned long long)r.failed, n ? " (" : "", fails, n ? ")" : "",
           (double)r.ok / r.elapsed_s, r.ok ? r.p50_ms : NAN, r.ok ? r.p99_ms : NAN,
           r.ok ? r.max_ms : NAN, r.ok ? subs / (double)r.ok : NAN, redone);
    fflush(stdout);
    return 0;
}

/* The busiest expert over the run so far (most rows), to stop. */
static int busiest_expert(const tcluster *cl)
{
    char *m = tmetrics_fetch(cl->hostport);
    int best = 0;
    double most = -1;
    for (int k = 0; k < cl->K; k++) {
        char name[64];
        snprintf(name, sizeof name, "ddm_expert_rows_total{expert=\"%d\"}", k);
        double v = tmetrics_value(m, name);
        if (v > most)
            most = v, best = k;
    }
    free(m);
    return best;
}

static int run_substitution(ensemble *e, const char *models, int steps, int clients, int seconds)
{
    static const char *const wargs[] = { "--max-delay-us", "0", NULL };
    static const char *const rargs[] = { "--ticks", "1", "--threads", "2", NULL };
    tcluster cl;
    if (tcluster_start(&cl, models, e->K, 1, wargs, rargs))
        return 1;
    int rc = 1;
    printf("\nLoad-aware substitution: %d clients, single-image requests (top-2, %d steps), %d s "
           "per row, \"substitute\" false and true; one replica per expert; router --ticks 1 "
           "--threads 2 and its default deadlines (--expert-timeout-ms 2000, --attempts 3, "
           "health probe every 500 ms, down after 2 missed)\n\n", clients, steps, seconds);
    printf("| phase | substitute | ok | failed (count x HTTP status) | img/s | p50 ms | p99 ms | "
           "max ms | substitutions per image | evaluations redone |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    if (sub_row(&cl, "every expert up", 0, clients, seconds, steps) ||
        sub_row(&cl, "every expert up", 1, clients, seconds, steps))
        goto out;
    int k = busiest_expert(&cl);
    pid_t w = cl.workers[k];
    char phase[96];
    snprintf(phase, sizeof phase, "expert %d stopped (SIGSTOP) at the row's start", k);
    kill(w, SIGSTOP);
    if (sub_row(&cl, phase, 1, clients, seconds, steps))
        goto out;
    snprintf(phase, sizeof phase, "expert %d stopped, known down", k);
    if (sub_row(&cl, phase, 0, clients, seconds, steps) ||
        sub_row(&cl, phase, 1, clients, seconds, steps))
        goto out;
    kill(w, SIGCONT);
    kill(w, SIGKILL);
    proc_wait(w, 5000);
    cl.workers[k] = -1;
    snprintf(phase, sizeof phase, "expert %d killed (no replica)", k);
    if (sub_row(&cl, phase, 1, clients, seconds, steps) ||
        sub_row(&cl, phase, 0, clients, seconds, steps))
        goto out;
    rc = 0;
out:
    tcluster_stop(&cl, 0);
    return rc;
}

int main(int argc, char **argv)
{
    blas_select(&argc, argv);
    const char *models = NULL, *bindir = "bin";
    int steps = 50, images = 512, switches = 0, rounds = 6, count = 60;
    int clients = 32, seconds = 5, tp_rounds = 3, substitution = 0;
    static const struct option lo[] = {
        { "models", required_argument, 0, 'm' }, { "steps", required_argument, 0, 's' },
        { "images", required_argument, 0, 'n' }, { "switches", no_argument, 0, 'S' },
        { "bin", required_argument, 0, 'b' },    { "rounds", required_argument, 0, 'r' },
        { "requests", required_argument, 0, 'q' }, { "clients", required_argument, 0, 'c' },
        { "seconds", required_argument, 0, 'd' }, { "throughput-rounds", required_argument, 0, 'T' },
        { "substitution", no_argument, 0, 'U' }, { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': models = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'n': images = atoi(optarg); break;
        case 'S': switches = 1; break;
        case 'b': bindir = optarg; break;
        case 'r': rounds = atoi(optarg); break;
        case 'q': count = atoi(optarg); break;
        case 'c': clients = atoi(optarg); break;
        case 'd': seconds = atoi(optarg); break;
        case 'T': tp_rounds = atoi(optarg); break;
        case 'U': substitution = 1; break;
        case 'h':
            printf("usage: spec_bench --switches [--models DIR] [--images 512] [--steps 50]\n"
                   "       spec_bench --substitution [--models DIR] [--bin DIR] [--clients N]\n"
                   "                  [--seconds 5] [--steps 50]\n"
                   "       spec_bench [--models DIR] [--bin DIR] [--steps 50] [--rounds 6]\n"
                   "                  [--requests 60] [--clients 32] [--seconds 5]\n"
                   "                  [--throughput-rounds 3]\n"
                   "--switches: how often top-2's experts change between evaluations\n"
                   "(in-process). Else: single-image latency (p50, p99, per-step split)\n"
                   "in-process and served by four ddm-routers over the same workers\n"
                   "(--speculate off/on x --inline-trajs 0/4), in rotated rounds of\n"
                   "--requests requests each; then throughput at --clients (0: skip)\n"
                   "with speculation off and on, --seconds per measure.\n"
                   "--substitution: requests with \"substitute\" false and true while every\n"
                   "expert is up, the busiest one is stopped (SIGSTOP), then killed.\n");
            return 0;
        default: return 2;
        }
    }
    if (steps < 2 || images < 1 || images > 100000 || rounds < 1 || rounds > MAX_ROUNDS ||
        count < 1 || clients < 0 || clients > 1024 || seconds < 1 || tp_rounds < 1 ||
        tp_rounds > MAX_ROUNDS) {
        fprintf(stderr, "spec_bench: --steps must be >= 2, --images 1..100000, --rounds and "
                        "--throughput-rounds 1..%d, --requests and --seconds >= 1, --clients "
                        "0..1024\n", MAX_ROUNDS);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    openblas_set_num_threads(1);
    struct stat sb;
    if (!models && stat("models/digits/router.safetensors", &sb) == 0)
        models = "models/digits";
    if (!models) {
        fprintf(stderr, "spec_bench: no models/digits here: pass --models DIR\n");
        return 1;
    }
    char err[512];
    ensemble *e = ensemble_open(models, err, sizeof err);
    if (!e) {
        fprintf(stderr, "spec_bench: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (switches) {
        printf("How often a trajectory's selected experts change from one evaluation to the "
               "next (%s, K = %d, %d steps, in-process)\n", models, e->K, steps);
        rc = run_switches(e, images, steps);
    } else if (substitution) {
        setenv("DDM_BIN_DIR", bindir, 1);
        rc = run_substitution(e, models, steps, clients > 0 ? clients : 4, seconds);
    } else {
        setenv("DDM_BIN_DIR", bindir, 1);
        rc = run_latency(e, models, steps, rounds, count, clients, seconds, tp_rounds);
    }
    ensemble_close(e);
    return rc;
}
