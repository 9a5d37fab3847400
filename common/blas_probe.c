/* blas_probe.c -- one child process per OpenBLAS core type (see blas_probe.h).
 *
 * Line protocol, over a socketpair that is the child's stdin and stdout:
 *   child:  "core NAME"        the core OpenBLAS loaded (the child exits here
 *                              when NAME is not the one asked for, or for "own")
 *   child:  "check EB EH"      L2 error relative to net_forward_ref of the
 *                              forward on OpenBLAS (EB) and on half_gemm (EH,
 *                              -1 without half_gemm), worst over the row counts
 *   parent: "round"            -> child: "round B1 .. Bn H1 .. Hn", CPU us of
 *                              the fastest forward over blas_tune_rows[i] rows
 *                              in a window, OpenBLAS then half_gemm (0 without)
 *   parent closes its end      -> child exits 0. */
#include "common/blas_probe.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "common/err.h"
#include "common/half_gemm.h"
#include "common/log.h"
#include "common/net.h"
#include "common/rng.h"
#include "common/st.h"

#define MAX_ROWS_TIMED 128 /* the largest of blas_tune_rows */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- child ------------------------------------------------------------------------- */

typedef struct probe_net {
    net_config c;
    float *params, *tbuf;
    uint16_t *hbuf;
    net_weights plain; /* transposed fp32 copies only: OpenBLAS at every row count */
    net_weights half;  /* with half copies: half_gemm at every row count (rows set high) */
    int has_half;
    net_scratch *s;
    float *x, *t_check, *t_time, *out, *ref;
    int *lab;
} probe_net;

/* Weights like a trained expert's in size and spread, every value an exact
 * half (as the shipped fp16 files), so that half copies exist. */
static int probe_net_init(probe_net *p)
{
    const net_config arch = BLAS_PROBE_ARCH;
    p->c = arch;
    const net_config *c = &p->c;
    const int D = c->in_dim, H = c->hidden, R = c->gauss_rank, N = MAX_ROWS_TIMED;
    size_t np = net_param_count(c);
    p->params = malloc(np * sizeof(float));
    p->tbuf = malloc(net_transposed_count(c) * sizeof(float));
    p->hbuf = malloc(net_half_count(c) * sizeof(uint16_t));
    p->x = malloc((size_t)N * D * sizeof(float));
    p->out = malloc((size_t)N * D * sizeof(float));
    p->ref = malloc((size_t)N * D * sizeof(float));
    p->t_check = malloc(N * sizeof(float));
    p->t_time = malloc(N * sizeof(float));
    p->lab = malloc(N * sizeof(int));
    p->s = net_scratch_new(c, N, 0);
    if (!p->params || !p->tbuf || !p->hbuf || !p->x || !p->out || !p->ref || !p->t_check ||
        !p->t_time || !p->lab || !p->s)
        return -1;
    net_init(c, p->params, 7);
    net_weights w;
    net_bind(c, p->params, &w);
    rng_normal_fill(7, 100, 0, w.w_out, (size_t)D * H);
    for (size_t i = 0; i < (size_t)D * H; i++)
        w.w_out[i] *= 0.05f;
    for (int i = 0; i < D; i++)
        w.g_mu[i] = 0.1f * rng_normal(7, 101, (uint64_t)i);
    memset(w.g_u, 0, (size_t)R * D * sizeof(float));
    for (int r = 0; r < R; r++) { /* orthonormal: unit vectors on distinct axes */
        w.g_u[(size_t)r * D + (size_t)(r * 12)] = 1.0f;
        w.g_lam[r] = 0.5f + 0.05f * (float)r;
    }
    w.g_sig2[0] = 0.1f;
    for (size_t i = 0; i < np; i++)
        p->params[i] = st_f16_to_f32(st_f32_to_f16(p->params[i]));
    net_bind(c, p->params, &p->plain);
    net_transpose(c, &p->plain, p->tbuf);
    p->half = p->plain;
    p->has_half = net_half(c, &p->half, p->hbuf) > 0;
    rng_normal_fill(7, 102, 0, p->x, (size_t)N * D);
    for (int i = 0; i < N; i++) {
        p->lab[i] = i % 11 - 1;
        p->t_check[i] = 0.02f + 0.95f * (float)(i / 3) / (float)(N / 3); /* runs of 3 */
        p->t_time[i] = 0.5f; /* a batch shares its step, as the router sends it */
    }
    return 0;
}

static void probe_net_free(probe_net *p)
{
    net_scratch_free(p->s);
    free(p->params);
    free(p->tbuf);
    free(p->hbuf);
    free(p->x);
    free(p->out);
    free(p->ref);
    free(p->t_check);
    free(p->t_time);
    free(p->lab);
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / sqrt(den > 0 ? den : 1e-300);
}

/* Worst error over the row counts of the forward with w against p->ref. */
static double check(probe_net *p, const net_weights *w)
{
    double worst = 0;
    for (int i = 0; i < blas_tune_n_rows; i++) {
        int n = blas_tune_rows[i];
        if (net_forward(&p->c, w, p->s, n, p->x, p->t_check, p->lab, p->out) != 0)
            return INFINITY;
        double e = rel_err(p->out, p->ref, (size_t)n * p->c.out_dim);
        if (!(e <= worst)) /* NaN counts as worst */
            worst = isnan(e) ? INFINITY : e;
    }
    return worst;
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Microseconds of CPU time of the fastest of the forwards over n rows with w
 * repeated for window_s (at least 3). CPU time, not wall: on a shared
 * machine a call that waited for a core does not count its wait, and the
 * fastest call is the one least disturbed, whichever candidate is timed. */
static double time_forward(probe_net *p, const net_weights *w, int n, double window_s)
{
    net_forward(&p->c, w, p->s, n, p->x, p->t_time, p->lab, p->out); /* warm */
    double best = INFINITY, t0 = now_s();
    int calls = 0;
    do {
        double c0 = thread_cpu_s();
        net_forward(&p->c, w, p->s, n, p->x, p->t_time, p->lab, p->out);
        double c = thread_cpu_s() - c0;
        if (c < best)
            best = c;
        calls++;
    } while (now_s() - t0 < window_s || calls < 3);
    return best * 1e6;
}

void blas_probe_child(int argc, char **argv)
{
    const char *want = argc > 0 ? argv[0] : "own";
    double window_s = (argc > 1 ? atof(argv[1]) : 3.0) * 1e-3;
    if (!(window_s > 0 && window_s < 10))
        window_s = 3e-3;
    const char *core = openblas_get_corename();
    printf("core %s\n", core ? core : "unknown");
    fflush(stdout);
    if (!strcmp(want, "own") || !core || strcasecmp(core, want) != 0)
        exit(0);
    openblas_set_num_threads(1);
    half_gemm_set_rows(1 << 20); /* the half weights take every row count */
    probe_net p;
    memset(&p, 0, sizeof p);
    if (probe_net_init(&p) != 0 ||
        net_forward_ref(&p.c, &p.plain, MAX_ROWS_TIMED, p.x, p.t_check, p.lab, p.ref) != 0) {
        fprintf(stderr, "blas probe: out of memory\n");
        probe_net_free(&p);
        exit(1);
    }
    printf("check %.6g %.6g\n", check(&p, &p.plain), p.has_half ? check(&p, &p.half) : -1.0);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && !strncmp(line, "round", 5)) {
        double us[2][BLAS_TUNE_MAX_ROWS] = { { 0 } };
        for (int i = 0; i < blas_tune_n_rows; i++) {
            us[0][i] = time_forward(&p, &p.plain, blas_tune_rows[i], window_s);
            if (p.has_half)
                us[1][i] = time_forward(&p, &p.half, blas_tune_rows[i], window_s);
        }
        printf("round");
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < blas_tune_n_rows; i++)
                printf(" %.3f", us[k][i]);
        printf("\n");
        fflush(stdout);
    }
    probe_net_free(&p);
    exit(0);
}

/* ---- parent ---------------------------------------------------------------------------- */

typedef struct child {
    pid_t pid;
    int fd;        /* our end of the socketpair, -1 once closed */
    char buf[1024];
    size_t len;    /* bytes in buf */
    int dead;
} child;

/* This process's environment for a child timing core (NULL: OpenBLAS's own
 * pick): its own OPENBLAS_CORETYPE, one BLAS thread. ct holds the variable. */
static char **child_env(const char *core, char ct[64])
{
    extern char **environ;
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (!strncmp(e, "OPENBLAS_CORETYPE=", 18) || !strncmp(e, "OPENBLAS_NUM_THREADS=", 21) ||
            !strncmp(e, "DDM_HALF_ROWS=", 14))
            continue;
        env[k++] = (char *)e;
    }
    env[k++] = "OPENBLAS_NUM_THREADS=1";
    if (core) {
        snprintf(ct, 64, "OPENBLAS_CORETYPE=%s", core);
        env[k++] = ct;
    }
    env[k] = NULL;
    return env;
}

/* Starts exe --probe-blas CORE WINDOW_MS (core NULL: "own", without
 * OPENBLAS_CORETYPE). Returns 0 or -1. */
static int child_start(child *ch, const char *exe, const char *core, double window_s)
{
    memset(ch, 0, sizeof *ch);
    ch->fd = -1;
    int sv[2];
    char ct[64];
    char **env = child_env(core, ct);
    if (!env || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        free(env);
        return -1;
    }
    char ms[32];
    snprintf(ms, sizeof ms, "%.3f", window_s * 1e3);
    char *argv[] = { (char *)exe, BLAS_PROBE_FLAG, (char *)(core ? core : "own"), ms, NULL };
    pid_t pid = fork();
    if (pid == 0) {
        if (dup2(sv[1], 0) < 0 || dup2(sv[1], 1) < 0)
            _exit(127);
        execve(exe, argv, env);
        _exit(127);
    }
    close(sv[1]);
    free(env);
    if (pid < 0) {
        close(sv[0]);
        return -1;
    }
    ch->pid = pid;
    ch->fd = sv[0];
    return 0;
}

/* Reads one line (without its newline) into line within timeout_s. Returns
 * 0, or -1 on EOF, error or timeout (the child is then killed). */
static int child_line(child *ch, char *line, size_t len, double timeout_s)
{
    double end = now_s() + timeout_s;
    for (;;) {
        char *nl = memchr(ch->buf, '\n', ch->len);
        if (nl) {
            size_t n = (size_t)(nl - ch->buf);
            snprintf(line, len, "%.*s", (int)n, ch->buf);
            memmove(ch->buf, nl + 1, ch->len - n - 1);
            ch->len -= n + 1;
            return 0;
        }
        double left = end - now_s();
        if (ch->fd < 0 || ch->len == sizeof ch->buf || left <= 0)
            break;
        struct pollfd pfd = { .fd = ch->fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t got = read(ch->fd, ch->buf + ch->len, sizeof ch->buf - ch->len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        ch->len += (size_t)got;
    }
    if (!ch->dead && ch->pid > 0)
        kill(ch->pid, SIGKILL);
    ch->dead = 1;
    return -1;
}

/* Closes our end and reaps the child (killed after 2 s). */
static void child_end(child *ch)
{
    if (ch->fd >= 0)
        close(ch->fd);
    ch->fd = -1;
    if (ch->pid <= 0)
        return;
    for (int i = 0; i < 200; i++) {
        if (waitpid(ch->pid, NULL, WNOHANG) == ch->pid) {
            ch->pid = 0;
            return;
        }
        usleep(10000);
    }
    kill(ch->pid, SIGKILL);
    waitpid(ch->pid, NULL, 0);
    ch->pid = 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define SETUP_TIMEOUT_S 120.0 /* the reference forward under sanitizers is slow */
#define ROUND_TIMEOUT_S 60.0
#define ROUNDS_DEADLINE_S 60.0 /* no round starts after this: a busy machine gets fewer */

int blas_probe_run(const char *exe, const char *flags, int rounds, double window_s, blas_table *t,
                   char *err, size_t errlen)
{
    double t0 = now_s();
    memset(t, 0, sizeof *t);
    t->n_rows = blas_tune_n_rows;
    memcpy(t->rows, blas_tune_rows, (size_t)blas_tune_n_rows * sizeof(int));
    if (rounds < 1)
        rounds = 1;
    if (rounds > 64)
        rounds = 64;
    t->rounds = rounds;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(t->when, sizeof t->when, "%Y-%m-%dT%H:%M:%SZ", &tm);

    /* what OpenBLAS picks by itself */
    child own;
    char line[1024];
    if (child_start(&own, exe, NULL, window_s) != 0 || child_line(&own, line, sizeof line, 30) ||
        strncmp(line, "core ", 5) != 0) {
        child_end(&own);
        snprintf(err, errlen, "cannot run %s %s: no BLAS measurement", exe, BLAS_PROBE_FLAG);
        return DDM_EUNAVAIL;
    }
    snprintf(t->own, sizeof t->own, "%.*s", BLAS_TUNE_NAME - 1, line + 5);
    child_end(&own);

    char names[BLAS_TUNE_MAX_CANDS][BLAS_TUNE_NAME];
    int n = blas_tune_candidates(flags, t->own, names, BLAS_TUNE_MAX_CANDS);
    child ch[BLAS_TUNE_MAX_CANDS];
    t->n_cand = n;
    for (int i = 0; i < n; i++) {
        blas_cand *c = &t->cand[i];
        snprintf(c->core, sizeof c->core, "%.*s", BLAS_TUNE_NAME - 1, names[i]);
        c->err_blas = c->err_half = -1;
        c->status = BLAS_CAND_FAILED;
        if (child_start(&ch[i], exe, names[i], window_s) != 0)
            ch[i].dead = 1;
    }
    /* which core each loaded, then their checks (the children set up at once) */
    for (int i = 0; i < n; i++) {
        if (ch[i].dead || child_line(&ch[i], line, sizeof line, 30) || strncmp(line, "core ", 5))
            continue;
        if (strcasecmp(line + 5, names[i]) != 0) {
            t->cand[i].status = BLAS_CAND_UNKNOWN;
            log_debug("OpenBLAS loads %s when asked for %s: it does not know %s", line + 5,
                      names[i], names[i]);
            ch[i].dead = 1;
        }
    }
    for (int i = 0; i < n; i++) {
        blas_cand *c = &t->cand[i];
        if (ch[i].dead || child_line(&ch[i], line, sizeof line, SETUP_TIMEOUT_S) ||
            sscanf(line, "check %lf %lf", &c->err_blas, &c->err_half) != 2)
            ch[i].dead = 1;
    }
    /* interleaved rounds: one child measures at a time */
    static double us[BLAS_TUNE_MAX_CANDS][2][BLAS_TUNE_MAX_ROWS][64];
    int got[BLAS_TUNE_MAX_CANDS] = { 0 };
    int done = 0; /* rounds completed: fewer than asked when the deadline passed */
    double deadline = now_s() + ROUNDS_DEADLINE_S;
    for (int r = 0; r < rounds && (r == 0 || now_s() < deadline); r++, done++) {
        for (int i = 0; i < n; i++) {
            if (ch[i].dead)
                continue;
            if (send(ch[i].fd, "round\n", 6, MSG_NOSIGNAL) != 6 ||
                child_line(&ch[i], line, sizeof line, ROUND_TIMEOUT_S) ||
                strncmp(line, "round", 5) != 0) {
                ch[i].dead = 1;
                continue;
            }
            char *p = line + 5, *end;
            int ok = 1;
            for (int k = 0; k < 2 && ok; k++)
                for (int j = 0; j < t->n_rows && ok; j++) {
                    us[i][k][j][r] = strtod(p, &end);
                    ok = end != p;
                    p = end;
                }
            if (!ok)
                ch[i].dead = 1;
            else
                got[i]++;
        }
    }
    for (int i = 0; i < n; i++) {
        blas_cand *c = &t->cand[i];
        if (c->status != BLAS_CAND_UNKNOWN && done > 0 && got[i] == done) {
            c->status = BLAS_CAND_OK;
            for (int j = 0; j < t->n_rows; j++) {
                c->blas_us[j] = median(us[i][0][j], done);
                c->half_us[j] = median(us[i][1][j], done);
            }
        }
        child_end(&ch[i]);
    }
    t->rounds = done;
    t->seconds = now_s() - t0;
    return 0;
}
