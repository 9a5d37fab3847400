/* spec_bench_main.c -- what speculative dispatch can gain, and what it gains.
 *
 * --switches: in-process (router/local) sampling with traces on models/digits
 * (or --models DIR): how often a trajectory's set of selected experts changes
 * from one evaluation to the next, per band of t and per trajectory, for a few
 * request shapes. A set that did not change is a speculation hit: the latent
 * sent to the previous evaluation's experts was what the router then chose.
 *
 * Default (latency): single-image requests (50 steps, top-2, 1 client) in
 * interleaved rounds: in-process (1 and 2 threads), then served by two
 * ddm-router processes against the same 8 ddm-expert workers, one with
 * --speculate off and one with --speculate on, the order alternating per
 * round. Prints per round and the medians of the rounds' p50 latencies, the
 * served / in-process ratios, and the speculation counters from /metrics
 * (hits, misses, wasted expert rows). */
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
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/client/cli.h"

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

int main(int argc, char **argv)
{
    blas_select(&argc, argv);
    const char *models = NULL;
    int steps = 50, images = 512, switches = 0;
    static const struct option lo[] = {
        { "models", required_argument, 0, 'm' }, { "steps", required_argument, 0, 's' },
        { "images", required_argument, 0, 'n' }, { "switches", no_argument, 0, 'S' },
        { "help", no_argument, 0, 'h' },         { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'm': models = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 'n': images = atoi(optarg); break;
        case 'S': switches = 1; break;
        case 'h':
            printf("usage: spec_bench --switches [--models DIR] [--images 512] [--steps 50]\n");
            return 0;
        default: return 2;
        }
    }
    if (steps < 2 || images < 1 || images > 100000) {
        fprintf(stderr, "spec_bench: --steps must be >= 2, --images 1..100000\n");
        return 2;
    }
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
    }
    ensemble_close(e);
    return rc;
}
