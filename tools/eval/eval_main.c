/* eval_main.c -- ddm-eval: measures sample quality and routing behaviour of a
 * Decentralized Diffusion Model set, in-process (the same sampling code as
 * ddm-router) or through a running ddm-router (--url).
 *
 *   ddm-eval fid           FID of one strategy, floor, class histogram, confident rate
 *   ddm-eval table         every strategy side by side -> docs/results/<data>/table.md
 *   ddm-eval distance      are the selected experts the nearest clusters?
 *   ddm-eval specialists   each expert asked for each class; switching mid-trajectory
 *   ddm-eval sweep         full and top-2 at router temperatures from sharp to flat
 *   ddm-eval coverage      class histograms, the router's calibration, the first choice
 * Exit 0 on success, 1 on a runtime error, 2 on a usage error. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/blas.h"
#include "common/version.h"
#include "tools/client/cli.h"
#include "tools/eval/cmds.h"
#include "tools/train/data.h"

static void usage(FILE *f)
{
    fprintf(f,
"usage: ddm-eval COMMAND [flags]\n"
"\n"
"Measures a Decentralized Diffusion Model set: FID on the dataset classifier's\n"
"features against the held-out set, routing stability and expert agreement\n"
"along trajectories, and the specialist tests. Sampling runs in-process with the\n"
"same tick code as ddm-router, or through a running router with --url.\n"
"\n"
"commands:\n"
"  fid          FID of one strategy (-n images), beside the floor (as many training\n"
"               images vs the held-out set), class histogram and confident rate\n"
"  table        monolith, full, uniform, top-1..3, threshold 0.05, sample (T = 1),\n"
"               nucleus 0.9, top-1:drawn, top-2:drawn and each expert alone,\n"
"               unconditional and\n"
"               class-conditional:\n"
"               FID over --seeds seeds, expert calls/image, images/s, switches,\n"
"               velocity change, Lipschitz estimate, expert disagreement;\n"
"               writes OUT/table.md, table.csv and PNG plots\n"
"  distance     along --strategies trajectories: distance of x_t and predicted x0\n"
"               to every cluster centroid, rank of the selected experts; OUT/distance.md\n"
"  specialists  each expert forced alone and asked for each class, its unconditional\n"
"               classes, the clusters' class make-up, switching experts\n"
"               mid-trajectory; OUT/specialists.md\n"
"  sweep        full and top-2 with the router's softmax at --temperatures (sharp to\n"
"               flat; full at a high temperature is the uniform committee) beside\n"
"               top-1, top-2, top-2:drawn, monolith and uniform: FID, precision, recall per judge,\n"
"               unconditional unless --modes; OUT/sweep.md, sweep.csv, sweep-*.png\n"
"  coverage     per --strategies (default top-1,top-2,top-1:drawn,top-2:drawn,full,\n"
"               sample): the class histogram\n"
"               of unconditional samples against the data's frequencies (TV distance),\n"
"               the router's calibration against the cluster sizes, the expert chosen\n"
"               at t = 1 and when trajectories commit; OUT/coverage.md, coverage.csv\n"
"\n"
"flags (defaults in []):\n"
"  --data NAME          dataset: digits or fashion [digits]\n"
"  --data-dir DIR       where `make data` put the datasets [data]\n"
"  --models DIR         router.safetensors, expert-N.safetensors, monolith [models/DATA]\n"
"  --classifier PATH    the first judge, an MLP classifier [MODELS/classifier.safetensors]\n"
"  --conv-judge PATH    the second judge, a conv net (ddm-train judge), or none\n"
"                       [judge-conv.safetensors beside the classifier, when present]\n"
"  --monolith PATH      the monolith [MODELS/monolith.safetensors if present]\n"
"  --partition PATH     cluster file with centroids and class table\n"
"                       [DATA-DIR/DATA/kK/partition.safetensors]\n"
"  --heldout PATH       reference images (safetensors \"images\" [n][D]) instead of the\n"
"                       dataset's test split\n"
"  --train PATH         images for the FID floor instead of the training split\n"
"  -u, --url URL        sample through a running ddm-router (http://host:port)\n"
"  -o, --out DIR        reports and plots [docs/results/DATA]\n"
"  -s, --strategy S     fid: full, top-K, threshold, sample, nucleus, uniform, expert:N,\n"
"                       monolith [top-2]\n"
"  --label N            fid: ask every image for class N\n"
"  --conditional        fid: class-balanced labels (equal images per class)\n"
"  -n N                 fid: images [1000]; table: unconditional samples per row per\n"
"                       seed [1000]; distance: trajectories [250, at most 256];\n"
"                       specialists: samples per (expert, class) [50]\n"
"  --n-cond N           table: class-conditional samples per row per seed [500]\n"
"  --seeds N            table: run seeds per row [3]\n"
"  --seed N             first run seed [1]\n"
"  --steps N            Euler steps [50]\n"
"  --guidance G         classifier-free guidance of labelled samples [2]\n"
"  --rows LIST          table: comma-separated rows, each a strategy (or monolith),\n"
"                       optionally @T for the router's softmax temperature [all]\n"
"  --modes M            table, sweep: unconditional, conditional or both\n"
"                       [table: both; sweep: unconditional]\n"
"  --strategies LIST    distance: comma-separated strategies [top-2,full];\n"
"                       coverage [top-1,top-2,top-1:drawn,top-2:drawn,full,sample]\n"
"  --probe N            table: trajectories per probe pass, 0 = none [64]\n"
"  --every N            table: probe every N steps [5]\n"
"  --eps X              table: Lipschitz step, RMS per pixel [0.01]\n"
"  -j, --jobs N         table: worker threads (rows sampled side by side) [2]\n"
"  --boot N             table, sweep: bootstrap replicates per FID draw for the\n"
"                       confidence intervals, 0 = none [50]\n"
"  --temperatures LIST  sweep: router softmax temperatures\n"
"                       [0.1,0.2,0.35,0.5,0.7,1,1.4,2,3,5,100]\n"
"  --timeout MS         --url: per-request timeout in milliseconds [600000]\n"
"  --no-plots           skip PNG plots and grids\n"
"  -q, --quiet          no progress lines on stderr\n"
"  --blas-core NAME, --half-rows N  OpenBLAS kernels, fp16 weight rows [measured here]\n"
"  -h, --help           this text\n"
"  -V, --version        print the version\n"
"\n"
"Exit status: 0 success, 1 runtime error, 2 usage error.\n"
"Examples:\n"
"  ddm-eval fid --strategy top-2 -n 5000\n"
"  ddm-eval table                       (the digits table, ~4 min on 2 cores)\n"
"  ddm-eval fid --url http://127.0.0.1:8080 --strategy full -n 500\n"
"  ddm-eval table --rows full@0.5,top-2   (a row at router temperature 0.5)\n"
"  ddm-eval sweep --seeds 2\n");
}

enum {
    O_DATA = 256, O_DATA_DIR, O_MODELS, O_CLASSIFIER, O_MONOLITH, O_PARTITION, O_HELDOUT,
    O_TRAIN, O_LABEL, O_CONDITIONAL, O_NCOND, O_SEEDS, O_SEED, O_STEPS, O_GUIDANCE, O_ROWS,
    O_MODES, O_STRATEGIES, O_PROBE, O_EVERY, O_EPS, O_TIMEOUT, O_NO_PLOTS, O_CONV_JUDGE,
    O_BOOT, O_TEMPS,
};

static int bad_value(const char *flag, const char *val, const char *allowed)
{
    fprintf(stderr, "ddm-eval: %s \"%s\": %s\n", flag, val, allowed);
    return 2;
}

static int set_str(char *dst, size_t len, const char *flag, const char *val)
{
    if (strlen(val) >= len) {
        fprintf(stderr, "ddm-eval: %s: value longer than %zu characters\n", flag, len - 1);
        return 2;
    }
    snprintf(dst, len, "%s", val);
    return 0;
}

static int get_long(const char *flag, const char *val, long lo, long hi, long *out)
{
    if (cli_parse_long(val, lo, hi, out)) {
        char allowed[96];
        snprintf(allowed, sizeof allowed, "allowed an integer %ld..%ld", lo, hi);
        return bad_value(flag, val, allowed);
    }
    return 0;
}

static int get_float(const char *flag, const char *val, double lo, double hi, float *out)
{
    double d;
    if (cli_parse_double(val, &d) || d < lo || d > hi) {
        char allowed[96];
        snprintf(allowed, sizeof allowed, "allowed a number %g..%g", lo, hi);
        return bad_value(flag, val, allowed);
    }
    *out = (float)d;
    return 0;
}

/* 0 if every comma-separated name in list is a strategy (or "monolith"),
 * with an optional "@temperature", for some set size; else prints
 * strategy_parse's message and returns 2. */
static int check_names(const char *flag, const char *list)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
        strategy st;
        gen_spec sp;
        char err[256];
        gen_spec_init(&sp, s);
        if (gen_spec_strategy(&sp, STRAT_MAX_EXPERTS, &st, err, sizeof err)) {
            fprintf(stderr, "ddm-eval: %s: %s\n", flag, err);
            return 2;
        }
    }
    return 0;
}

/* Parses flags into o; returns 0, 1 after --help/--version, or 2. */
static int parse(int argc, char **argv, eval_opts *o)
{
    static const struct option lo[] = {
        { "data", required_argument, 0, O_DATA },
        { "data-dir", required_argument, 0, O_DATA_DIR },
        { "models", required_argument, 0, O_MODELS },
        { "classifier", required_argument, 0, O_CLASSIFIER },
        { "conv-judge", required_argument, 0, O_CONV_JUDGE },
        { "boot", required_argument, 0, O_BOOT },
        { "temperatures", required_argument, 0, O_TEMPS },
        { "monolith", required_argument, 0, O_MONOLITH },
        { "partition", required_argument, 0, O_PARTITION },
        { "heldout", required_argument, 0, O_HELDOUT },
        { "train", required_argument, 0, O_TRAIN },
        { "url", required_argument, 0, 'u' },
        { "out", required_argument, 0, 'o' },
        { "strategy", required_argument, 0, 's' },
        { "label", required_argument, 0, O_LABEL },
        { "conditional", no_argument, 0, O_CONDITIONAL },
        { "n", required_argument, 0, 'n' },
        { "n-cond", required_argument, 0, O_NCOND },
        { "seeds", required_argument, 0, O_SEEDS },
        { "seed", required_argument, 0, O_SEED },
        { "steps", required_argument, 0, O_STEPS },
        { "guidance", required_argument, 0, O_GUIDANCE },
        { "rows", required_argument, 0, O_ROWS },
        { "modes", required_argument, 0, O_MODES },
        { "strategies", required_argument, 0, O_STRATEGIES },
        { "probe", required_argument, 0, O_PROBE },
        { "every", required_argument, 0, O_EVERY },
        { "eps", required_argument, 0, O_EPS },
        { "jobs", required_argument, 0, 'j' },
        { "timeout", required_argument, 0, O_TIMEOUT },
        { "no-plots", no_argument, 0, O_NO_PLOTS },
        { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    int c, rc = 0;
    long v;
    opterr = 0;
    optind = 2; /* argv[1] is the command */
    while ((c = getopt_long(argc, argv, ":u:o:s:n:j:qhV", lo, NULL)) != -1) {
        const char *a = optarg;
        switch (c) {
        case O_DATA:
            if (data_is_folder(a) && access(a, R_OK | X_OK) != 0)
                return bad_value("--data", a, "allowed digits, fashion or a readable folder of PNGs");
            rc = set_str(o->data, sizeof o->data, "--data", a);
            break;
        case O_DATA_DIR: rc = set_str(o->data_dir, sizeof o->data_dir, "--data-dir", a); break;
        case O_MODELS: rc = set_str(o->models, sizeof o->models, "--models", a); break;
        case O_CLASSIFIER: rc = set_str(o->classifier, sizeof o->classifier, "--classifier", a); break;
        case O_CONV_JUDGE: rc = set_str(o->conv_judge, sizeof o->conv_judge, "--conv-judge", a); break;
        case O_BOOT:
            rc = get_long("--boot", a, 0, 1000, &v);
            o->boot = (int)v;
            break;
        case O_TEMPS: rc = set_str(o->temps, sizeof o->temps, "--temperatures", a); break;
        case O_MONOLITH: rc = set_str(o->monolith, sizeof o->monolith, "--monolith", a); break;
        case O_PARTITION: rc = set_str(o->partition, sizeof o->partition, "--partition", a); break;
        case O_HELDOUT: rc = set_str(o->heldout, sizeof o->heldout, "--heldout", a); break;
        case O_TRAIN: rc = set_str(o->train, sizeof o->train, "--train", a); break;
        case 'u': rc = set_str(o->url, sizeof o->url, "--url", a); break;
        case 'o': rc = set_str(o->out, sizeof o->out, "--out", a); break;
        case 's': rc = set_str(o->strategy, sizeof o->strategy, "--strategy", a); break;
        case O_ROWS: rc = set_str(o->rows, sizeof o->rows, "--rows", a); break;
        case O_STRATEGIES:
            rc = set_str(o->strategies, sizeof o->strategies, "--strategies", a);
            o->strategies_given = 1;
            break;
        case O_LABEL:
            rc = get_long("--label", a, 0, 1000000, &v);
            o->label = (int)v;
            break;
        case O_CONDITIONAL: o->conditional = 1; break;
        case 'n':
            rc = get_long("-n", a, 2, 10000000, &v);
            o->n = v;
            o->n_given = 1;
            break;
        case O_NCOND:
            rc = get_long("--n-cond", a, 2, 10000000, &v);
            o->n_cond = v;
            break;
        case O_SEEDS:
            rc = get_long("--seeds", a, 1, 16, &v);
            o->seeds = (int)v;
            break;
        case O_SEED:
            rc = get_long("--seed", a, 0, 100000000000L, &v);
            o->seed = (uint64_t)v;
            break;
        case O_STEPS:
            rc = get_long("--steps", a, 1, 1000, &v);
            o->steps = (int)v;
            break;
        case O_GUIDANCE: rc = get_float("--guidance", a, 0, 20, &o->guidance); break;
        case O_MODES:
            if (!strcmp(a, "unconditional"))
                o->modes = 1;
            else if (!strcmp(a, "conditional"))
                o->modes = 2;
            else if (!strcmp(a, "both"))
                o->modes = 3;
            else
                return bad_value("--modes", a, "allowed unconditional, conditional or both");
            o->modes_given = 1;
            break;
        case O_PROBE:
            rc = get_long("--probe", a, 0, 256, &v);
            o->probe_n = (int)v;
            break;
        case O_EVERY:
            rc = get_long("--every", a, 1, 1000, &v);
            o->every = (int)v;
            break;
        case O_EPS: rc = get_float("--eps", a, 1e-6, 10, &o->eps); break;
        case 'j':
            rc = get_long("--jobs", a, 1, 64, &v);
            o->jobs = (int)v;
            break;
        case O_TIMEOUT:
            rc = get_long("--timeout", a, 1, 86400000, &v);
            o->timeout_ms = (int)v;
            break;
        case O_NO_PLOTS: o->plots = 0; break;
        case 'q': o->quiet = 1; break;
        case 'h': usage(stdout); return 1;
        case 'V': printf("ddm-eval %s\n", DDM_VERSION); return 1;
        case ':':
            fprintf(stderr, "ddm-eval: %s needs a value (see ddm-eval --help)\n",
                    argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "ddm-eval: unknown flag %s (see ddm-eval --help)\n",
                    argv[optind - 1]);
            return 2;
        }
        if (rc)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "ddm-eval: unexpected argument \"%s\" (see ddm-eval --help)\n",
                argv[optind]);
        return 2;
    }
    if (o->label >= 0 && o->conditional) {
        fprintf(stderr, "ddm-eval: --label and --conditional exclude each other\n");
        return 2;
    }
    /* strategy names are checked here for spelling; against the set's K once it is loaded */
    if (check_names("--strategy", o->strategy) || check_names("--rows", o->rows) ||
        check_names("--strategies", o->strategies))
        return 2;
    return 0;
}

int main(int argc, char **argv)
{
    blas_select(&argc, argv); /* may re-execute with the kernels measured fastest here */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        printf("ddm-eval %s\n", DDM_VERSION);
        return 0;
    }
    int (*run)(const eval_opts *) = !strcmp(cmd, "fid")           ? cmd_fid
                                    : !strcmp(cmd, "table")       ? cmd_table
                                    : !strcmp(cmd, "distance")    ? cmd_distance
                                    : !strcmp(cmd, "specialists") ? cmd_specialists
                                    : !strcmp(cmd, "sweep")       ? cmd_sweep
                                    : !strcmp(cmd, "coverage")    ? cmd_coverage
                                                                  : NULL;
    if (!run) {
        fprintf(stderr, "ddm-eval: unknown command \"%s\": use fid, table, distance, "
                "specialists, sweep or coverage (see ddm-eval --help)\n", cmd);
        return 2;
    }
    eval_opts o;
    eval_opts_default(&o);
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    if (run == cmd_sweep && !o.modes_given)
        o.modes = 1;
    if (run == cmd_coverage && !o.strategies_given)
        snprintf(o.strategies, sizeof o.strategies, "top-1,top-2,top-1:drawn,top-2:drawn,full,sample");
    eval_opts_finish(&o);
    size_t at = 0;
    for (int i = 0; i < argc && at < sizeof o.command - 1; i++) {
        const char *a = i == 0 ? "ddm-eval" : argv[i];
        at += (size_t)snprintf(o.command + at, sizeof o.command - at, "%s%s", i ? " " : "", a);
    }
    return run(&o);
}
