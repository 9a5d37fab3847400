/* blas.c -- the process's OpenBLAS kernels and half_gemm crossover (see blas.h). */
#include "common/blas.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include "common/blas_probe.h"
#include "common/err.h"
#include "common/half_gemm.h"
#include "common/log.h"
#include "common/version.h"

#define MAX_HALF_ROWS 65536
#define LOCK_WAIT_S 120.0 /* another process measuring: at most this long, then go without */

static char g_core_src[160], g_rows_src[160];

const char *blas_core_source(void) { return g_core_src; }
const char *blas_rows_source(void) { return g_rows_src; }

const char *blas_core(void) { return openblas_get_corename(); }

int blas_has_small_gemm(void)
{
    static const char *const cores[] = { "SkylakeX", "Cooperlake", "SapphireRapids" };
    const char *core = openblas_get_corename();
    for (size_t i = 0; core && i < sizeof cores / sizeof cores[0]; i++)
        if (strcasecmp(core, cores[i]) == 0)
            return 1;
    return 0;
}

/* ---- identity ------------------------------------------------------------------------ */

/* The value of the first "key<spaces>: value" line of /proc/cpuinfo. */
static void cpuinfo_field(const char *key, char *out, size_t len)
{
    out[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    size_t klen = strlen(key);
    while (getline(&line, &cap, f) >= 0) {
        if (strncmp(line, key, klen) != 0 || (line[klen] != ' ' && line[klen] != '\t' &&
                                              line[klen] != ':'))
            continue;
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        char *v = colon + 1;
        while (*v == ' ')
            v++;
        v[strcspn(v, "\n")] = 0;
        snprintf(out, len, "%s", v);
        break;
    }
    free(line);
    fclose(f);
}

/* Where /proc/cpuinfo cannot be read (systemd's ProcSubset=pid): the name
 * from CPUID and the flags blas_tune reasons about, as the CPU reports them. */
static void cpuid_ident(blas_ident *id)
{
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned int r[12];
    if (__get_cpuid(0x80000000, &r[0], &r[1], &r[2], &r[3]) && r[0] >= 0x80000004) {
        for (unsigned int i = 0; i < 3; i++)
            __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        char name[49];
        memcpy(name, r, 48);
        name[48] = 0;
        char *p = name;
        while (*p == ' ')
            p++;
        snprintf(id->cpu, sizeof id->cpu, "%s", p);
    }
    __builtin_cpu_init();
    /* /proc/cpuinfo's names, in the order of the cases below */
    static const char *const flag[] = { "pni",      "ssse3",    "sse4_1",   "sse4_2",  "avx",
                                        "fma",      "avx2",     "avx512f",  "avx512vl", "avx512bw",
                                        "avx512dq", "avx512cd", "avx512_bf16" };
    size_t k = 0;
#define HAS(name) __builtin_cpu_supports(name)
    for (size_t i = 0; i < sizeof flag / sizeof flag[0]; i++) {
        int has = 0;
        switch (i) { /* __builtin_cpu_supports takes literals only */
        case 0: has = HAS("sse3"); break;
        case 1: has = HAS("ssse3"); break;
        case 2: has = HAS("sse4.1"); break;
        case 3: has = HAS("sse4.2"); break;
        case 4: has = HAS("avx"); break;
        case 5: has = HAS("fma"); break;
        case 6: has = HAS("avx2"); break;
        case 7: has = HAS("avx512f"); break;
        case 8: has = HAS("avx512vl"); break;
        case 9: has = HAS("avx512bw"); break;
        case 10: has = HAS("avx512dq"); break;
        case 11: has = HAS("avx512cd"); break;
        case 12: has = HAS("avx512bf16"); break;
        }
        if (has && k + strlen(flag[i]) + 2 < sizeof id->flags)
            k += (size_t)sprintf(id->flags + k, "%s%s", k ? " " : "", flag[i]);
    }
#undef HAS
#else
    (void)id;
#endif
}

void blas_ident_get(blas_ident *id)
{
    memset(id, 0, sizeof *id);
    cpuinfo_field("model name", id->cpu, sizeof id->cpu);
    cpuinfo_field("flags", id->flags, sizeof id->flags);
    if (!id->flags[0])
        cpuid_ident(id);
    /* the configuration without the loaded core's name, which the choice changes */
    const char *cfg = openblas_get_config(), *core = openblas_get_corename();
    size_t clen = core ? strlen(core) : 0, k = 0;
    for (const char *p = cfg ? cfg : ""; *p && k + 1 < sizeof id->openblas;) {
        size_t n = strcspn(p, " ");
        if (!(n == clen && strncasecmp(p, core, n) == 0)) {
            if (k > 0)
                id->openblas[k++] = ' ';
            for (size_t i = 0; i < n && k + 1 < sizeof id->openblas; i++)
                id->openblas[k++] = p[i];
        }
        p += n;
        while (*p == ' ')
            p++;
    }
    id->openblas[k] = 0;
#if defined(__SANITIZE_ADDRESS__)
    const char *build = "asan+ubsan";
#else
    const char *build = "release";
#endif
    snprintf(id->build, sizeof id->build, "ddm %s %s", DDM_VERSION, build);
}

/* ---- measuring and the cache ----------------------------------------------------------- */

static int self_exe(char *buf, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return 0;
}

/* Takes the lock beside path (created with its directory), waiting up to
 * LOCK_WAIT_S for a process that is measuring. Returns its fd, or -1 when
 * there is no lock to take (unwritable: go on without), or -2 on timeout. */
static int lock_take(const char *path)
{
    char lock[4200];
    snprintf(lock, sizeof lock, "%s.lock", path);
    if (blas_tune_make_dir(lock) != 0)
        return -1;
    int fd = open(lock, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    for (int waited_ms = 0; flock(fd, LOCK_EX | LOCK_NB) != 0; waited_ms += 50) {
        if (errno != EWOULDBLOCK && errno != EINTR) {
            close(fd);
            return -1;
        }
        if (waited_ms == 0)
            log_info("waiting for another process measuring this CPU's BLAS kernels (%s)", lock);
        if (waited_ms >= LOCK_WAIT_S * 1000) {
            close(fd);
            return -2;
        }
        usleep(50000);
    }
    return fd;
}

/* Measures and writes the cache at path ("" for none). */
static int measure(const blas_ident *id, const char *path, int rounds, double window_s,
                   blas_table *t, char *err, size_t errlen)
{
    char exe[4096];
    if (self_exe(exe, sizeof exe) != 0) {
        snprintf(err, errlen, "cannot find this program (/proc/self/exe): %s", strerror(errno));
        return DDM_EUNAVAIL;
    }
    int rc = blas_probe_run(exe, id->flags, rounds, window_s, t, err, errlen);
    if (rc)
        return rc;
    char werr[512];
    if (!path[0])
        log_warn("no cache directory (HOME and XDG_CACHE_HOME unset): every start measures the "
                 "BLAS kernels again (%.1f s); --blas-core and --half-rows skip it", t->seconds);
    else if (blas_tune_write(path, id, t, werr, sizeof werr) != 0)
        log_warn("%s: every start measures the BLAS kernels again (%.1f s); make the directory "
                 "writable, set XDG_CACHE_HOME, or pass --blas-core and --half-rows",
                 werr, t->seconds);
    return 0;
}

/* This CPU's table: the cache, else (may_measure) measured now under the
 * lock. *fresh tells which. Returns 0 or an error with a message in err. */
static int table_for(const blas_ident *id, int may_measure, blas_table *t, char *path,
                     size_t pathlen, int *fresh, char *err, size_t errlen)
{
    *fresh = 0;
    if (blas_tune_cache_path(id, path, pathlen) != 0)
        path[0] = 0;
    int rc = path[0] ? blas_tune_read(path, id, t, err, errlen) : DDM_ENOTFOUND;
    if (rc == 0 || !may_measure)
        return rc;
    if (rc != DDM_ENOTFOUND)
        log_info("%s", err);
    int fd = path[0] ? lock_take(path) : -1;
    if (fd == -2) {
        snprintf(err, errlen, "another process has been measuring for %.0f s", LOCK_WAIT_S);
        return DDM_ETIMEDOUT;
    }
    if (fd >= 0 && blas_tune_read(path, id, t, err, errlen) == 0) { /* it measured meanwhile */
        close(fd);
        return 0;
    }
    log_info("measuring OpenBLAS kernels and the half_gemm crossover on this CPU, once (a few "
             "seconds; the result is kept in %s)", path[0] ? path : "no file");
    rc = measure(id, path, BLAS_STARTUP_ROUNDS, BLAS_STARTUP_WINDOW_S, t, err, errlen);
    if (fd >= 0)
        close(fd); /* releases the lock */
    *fresh = rc == 0;
    return rc;
}

int blas_measure(int rounds, double window_s, blas_table *t, blas_choice *c, char *err,
                 size_t errlen)
{
    blas_ident id;
    blas_ident_get(&id);
    char path[4200];
    if (blas_tune_cache_path(&id, path, sizeof path) != 0)
        path[0] = 0;
    int fd = path[0] ? lock_take(path) : -1;
    int rc = measure(&id, path, rounds, window_s, t, err, errlen);
    if (fd >= 0)
        close(fd);
    if (rc == 0)
        blas_tune_choose(t, NULL, HALF_GEMM_DEFAULT_ROWS, c);
    return rc;
}

int blas_cached(blas_table *t, blas_choice *c, char *path, size_t pathlen, char *err,
                size_t errlen)
{
    blas_ident id;
    blas_ident_get(&id);
    if (blas_tune_cache_path(&id, path, pathlen) != 0) {
        snprintf(err, errlen, "no cache directory (HOME and XDG_CACHE_HOME unset)");
        return DDM_ENOTFOUND;
    }
    int rc = blas_tune_read(path, &id, t, err, errlen);
    if (rc == 0)
        blas_tune_choose(t, NULL, HALF_GEMM_DEFAULT_ROWS, c);
    return rc;
}

/* ---- startup -------------------------------------------------------------------------- */

static const char *g_prog = "ddm";

static void usage_exit(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_exit(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", g_prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static int parse_rows(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > MAX_HALF_ROWS)
        return -1;
    *out = (int)v;
    return 0;
}

/* Removes k arguments at argv[i]. */
static void drop_args(int *argc, char **argv, int i, int k)
{
    memmove(&argv[i], &argv[i + k], (size_t)(*argc - i - k + 1) * sizeof *argv); /* with NULL */
    *argc -= k;
}

/* The core when nothing was measured: OpenBLAS's own pick, except its
 * generic Prescott kernels on a CPU with AVX-512 or AVX2 (a CPU this
 * OpenBLAS does not recognise; 4-5x slower, docs/benchmarks.md). */
static const char *unmeasured_core(void)
{
    const char *own = openblas_get_corename();
    if (own && strcasecmp(own, "Prescott") == 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f"))
            return "SkylakeX";
        if (__builtin_cpu_supports("avx2"))
            return "Haswell";
    }
    return own ? own : "";
}

/* --blas-table: this CPU's table (measured now if none is cached) and the
 * choice it gives with the overrides, on stdout. Returns the exit status. */
static int print_table(const char *core, int rows)
{
    blas_ident id;
    blas_ident_get(&id);
    blas_table t;
    blas_choice ch;
    char path[4200], err[512];
    int fresh;
    if (table_for(&id, 1, &t, path, sizeof path, &fresh, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", g_prog, err);
        return 1;
    }
    blas_tune_choose(&t, core, HALF_GEMM_DEFAULT_ROWS, &ch);
    printf("OpenBLAS kernels on %s (%s), %s; latents/s of the shipped expert's forward, "
           "OpenBLAS only, the median over %d interleaved rounds of the fastest call in each; "
           "measured %s in %.1f s%s%s.\n\n",
           id.cpu[0] ? id.cpu : "an unknown CPU", id.build, id.openblas, t.rounds, t.when,
           t.seconds, path[0] ? "; from " : "", path);
    blas_tune_print(stdout, &t, &ch);
    printf("\nChosen: %s kernels%s, half_gemm up to %d rows%s.\n",
           ch.core[0] ? ch.core : "none usable", core ? " (--blas-core)" : "",
           rows >= 0 ? rows : ch.half_rows, rows >= 0 ? " (--half-rows)" : "");
    return 0;
}

/* The flags blas_select takes out of argv. */
typedef struct blas_flags {
    const char *core;     /* --blas-core, or NULL */
    const char *rows;     /* --half-rows, or NULL */
    int table;            /* --blas-table */
    int info_only;        /* -h, --help, -V or --version is among the arguments */
} blas_flags;

/* Takes our flags out of argv (up to a "--"); exits 2 on a flag without its
 * value. */
static void take_flags(int *argc, char **argv, blas_flags *f)
{
    memset(f, 0, sizeof *f);
    for (int i = 1; i < *argc;) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strcmp(a, "--blas-table") == 0) {
            f->table = 1;
            drop_args(argc, argv, i, 1);
            continue;
        }
        const char **dst = !strncmp(a, "--blas-core", 11) && (a[11] == 0 || a[11] == '=')
                               ? &f->core
                           : !strncmp(a, "--half-rows", 11) && (a[11] == 0 || a[11] == '=')
                               ? &f->rows
                               : NULL;
        if (!dst) {
            f->info_only |= !strcmp(a, "-h") || !strcmp(a, "--help") || !strcmp(a, "-V") ||
                            !strcmp(a, "--version");
            i++;
        } else if (a[11] == '=') {
            *dst = a + 12;
            drop_args(argc, argv, i, 1);
        } else if (i + 1 < *argc) {
            *dst = argv[i + 1];
            drop_args(argc, argv, i, 2);
        } else {
            usage_exit("%s needs a value (see --help)", a);
        }
    }
}

/* The core and crossover from this CPU's table (measured now when there is
 * none and the core is not given), else the unmeasured defaults. core and
 * *rows come in set or empty/-1 and go out set; path and *fresh say where
 * from. */
static void decide(const blas_ident *id, char core[BLAS_TUNE_NAME], int *rows, char *path,
                   size_t pathlen, int *fresh)
{
    char why[512] = "";
    blas_table t;
    blas_choice ch;
    int rc = table_for(id, !core[0], &t, path, pathlen, fresh, why, sizeof why);
    if (rc == 0) {
        blas_tune_choose(&t, core[0] ? core : NULL, HALF_GEMM_DEFAULT_ROWS, &ch);
        if (*fresh)
            log_info("BLAS: measured %d core types in %.1f s", t.n_cand, t.seconds);
        const char *how = *fresh ? "measured now" : "measured";
        if (!core[0] && ch.index >= 0) {
            snprintf(core, BLAS_TUNE_NAME, "%s", ch.core);
            snprintf(g_core_src, sizeof g_core_src, "%s%s", how,
                     ch.kept_own ? "; OpenBLAS's own pick, within 3% of the fastest" : "");
        }
        if (*rows < 0 && ch.index >= 0) {
            *rows = ch.half_rows;
            snprintf(g_rows_src, sizeof g_rows_src, "%s with %s", how, ch.core);
        }
        if (ch.index < 0)
            snprintf(why, sizeof why, "no usable measurement%s%s in %s", core[0] ? " of " : "",
                     core, path);
    }
    if (!core[0]) {
        snprintf(core, BLAS_TUNE_NAME, "%s", unmeasured_core());
        snprintf(g_core_src, sizeof g_core_src, "OpenBLAS's own pick, not measured: %.100s", why);
    }
    if (*rows < 0) {
        *rows = HALF_GEMM_DEFAULT_ROWS;
        snprintf(g_rows_src, sizeof g_rows_src, "default, not measured: %.120s", why);
    }
}

void blas_select(int *argc, char **argv)
{
    if (*argc >= 1 && argv[0]) {
        const char *slash = strrchr(argv[0], '/');
        g_prog = slash ? slash + 1 : argv[0];
    }
    if (*argc >= 2 && strcmp(argv[1], BLAS_PROBE_FLAG) == 0)
        blas_probe_child(*argc - 2, argv + 2); /* does not return */
    blas_flags fl;
    take_flags(argc, argv, &fl);

    char core[BLAS_TUNE_NAME] = "";
    int rows = -1;
    blas_ident id; /* read only when needed: an inherited choice reads nothing */
    int have_id = 0;
    if (fl.rows && parse_rows(fl.rows, &rows) != 0)
        usage_exit("--half-rows \"%s\": expected an integer 0..%d (the batch size up to which "
                   "fp16 weights use half_gemm; 0 = never)", fl.rows, MAX_HALF_ROWS);
    if (fl.core) {
        char missing[32];
        if (blas_tune_canonical(fl.core, core) != 0)
            usage_exit("--blas-core \"%s\": not an OpenBLAS core type; one of %s", fl.core,
                       blas_tune_known_cores());
        blas_ident_get(&id);
        have_id = 1;
        if (id.flags[0] && blas_tune_runnable(core, id.flags, missing, sizeof missing) == 0)
            usage_exit("--blas-core %s: this CPU lacks %s (see the flags in /proc/cpuinfo), so "
                       "those kernels would crash; choose one it can run", core, missing);
        snprintf(g_core_src, sizeof g_core_src, "--blas-core");
    }
    if (rows >= 0)
        snprintf(g_rows_src, sizeof g_rows_src, "--half-rows");
    if (fl.table)
        exit(print_table(core[0] ? core : NULL, rows));
    if (fl.info_only) {
        if (rows >= 0)
            half_gemm_set_rows(rows);
        return;
    }

    const char *env_core = getenv("OPENBLAS_CORETYPE"), *env_rows = getenv("DDM_HALF_ROWS");
    if (env_core && !*env_core)
        env_core = NULL;
    if (!core[0] && env_core) {
        snprintf(core, sizeof core, "%.*s", BLAS_TUNE_NAME - 1, env_core);
        snprintf(g_core_src, sizeof g_core_src, "OPENBLAS_CORETYPE");
    }
    if (rows < 0 && env_rows) {
        if (parse_rows(env_rows, &rows) == 0)
            snprintf(g_rows_src, sizeof g_rows_src, "DDM_HALF_ROWS");
        else
            log_warn("DDM_HALF_ROWS=\"%s\" is not an integer 0..%d: ignored", env_rows,
                     MAX_HALF_ROWS);
    }
    /* both inherited from a ddm parent (or our own restart): nothing to say */
    int quiet = !fl.core && !fl.rows && env_core && rows >= 0;
    char path[4200] = "";
    int fresh = 0;
    if (!core[0] || rows < 0) {
        if (!have_id)
            blas_ident_get(&id);
        decide(&id, core, &rows, path, sizeof path, &fresh);
    }
    half_gemm_set_rows(rows);
    char rows_s[16];
    snprintf(rows_s, sizeof rows_s, "%d", rows);
    setenv("DDM_HALF_ROWS", rows_s, 1);

    const char *loaded = openblas_get_corename();
    int loaded_ok = !core[0] || (loaded && strcasecmp(loaded, core) == 0);
    /* at info what is news: a measurement, an override, a restart, no measurement */
    int news = fresh || fl.core || fl.rows || !loaded_ok ||
               strstr(g_core_src, "not measured") || strstr(g_rows_src, "not measured");
    if (!quiet)
        log_msg(news ? LOG_INFO : LOG_DEBUG,
                "BLAS: OpenBLAS %s kernels (%s), half_gemm up to %d rows (%s)%s%s", core,
                g_core_src, rows, g_rows_src, path[0] ? "; table in " : "", path);
    if (loaded_ok)
        return;
    if (env_core && strcasecmp(env_core, core) == 0) {
        /* asked for already and OpenBLAS loaded something else: it does not know the name */
        log_warn("OPENBLAS_CORETYPE=%s, but OpenBLAS loaded %s kernels (%s does not know %s)",
                 core, loaded ? loaded : "unknown", openblas_get_config(), core);
        return;
    }
    setenv("OPENBLAS_CORETYPE", core, 1);
    char self[4096];
    if (self_exe(self, sizeof self) == 0)
        execv(self, argv); /* the real path, not /proc/self/exe: the process keeps its name */
    log_warn("could not restart with OPENBLAS_CORETYPE=%s (%s): running on %s kernels", core,
             strerror(errno), loaded ? loaded : "unknown");
}
