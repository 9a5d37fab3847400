/* test_fuzz.c -- the fuzz targets (tests/fuzz/, built by `make fuzz-build` into
 * build/fuzz/bin with libFuzzer, ASan and UBSan) as tests: for each target,
 * every input in tests/fuzz/regressions/<target>/ (crashes found and fixed)
 * is replayed, then the fuzzer runs for DDM_FUZZ_SECONDS (make test: 20) from
 * the seed corpus tests/fuzz/corpus/<target>/ in a fresh temporary corpus.
 * Any crash, leak, timeout, out-of-memory or sanitizer report fails the test
 * and names the reproducer (kept in build/fuzz/artifacts/<target>/) and the
 * command that replays it. With DDM_FUZZ_SECONDS=0 (make SANITIZE=1 test:
 * the fuzz build is sanitized already, a second pass would repeat the first)
 * only the regressions and the seed corpus are replayed.
 *
 * Two fuzzers run at a time (the machine has two cores): while one target's
 * test waits for its fuzzer, the next target's is already running.
 * Paths are relative to the repository root (make test runs from there);
 * DDM_FUZZ_DIR names the fuzzers' directory (default build/fuzz/bin). */
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/support/proc.h"

/* Every tests/fuzz/fuzz_<name>.c; test_all_targets_listed checks the list. */
static const char *const TARGETS[] = { "http", "api", "wire", "reply", "st", "cluster", "png" };
#define N_TARGETS ((int)(sizeof TARGETS / sizeof TARGETS[0]))
#define MAX_ARGS 32

typedef struct fuzz_run {
    pid_t pid;            /* 0: not started */
    char tmp[64];         /* temporary corpus and log */
    char log[96];
    char art[128];        /* artifact prefix: build/fuzz/artifacts/<target>/ */
} fuzz_run;

static fuzz_run runs[N_TARGETS];
static char fuzz_dir[512];
static int seconds = 20;

static void fuzzer_path(const char *t, char *buf, size_t len)
{
    snprintf(buf, len, "%s/fuzz_%s", fuzz_dir, t);
}

static void mkdirs(const char *path)
{
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    mkdir(p, 0755);
}

/* Prints the last lines of log that matter (the sanitizer report). */
static void show_log(const char *log)
{
    fprintf(stderr, "---- %s (end) ----\n", log);
    proc_dump_log(log);
}

/* The input a crashed replay was running: its last "Running: " line. */
static void last_running(const char *log, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *f = fopen(log, "r");
    if (!f)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *r = strstr(line, "Running: ");
        if (r) {
            snprintf(buf, len, "%s", r + 9);
            buf[strcspn(buf, "\n")] = '\0';
        }
    }
    fclose(f);
}

/* The newest crash-, leak-, timeout- or oom- file under the prefix dir. */
static void newest_artifact(const char *dir, char *buf, size_t len)
{
    buf[0] = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return;
    time_t best = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "crash-", 6) && strncmp(e->d_name, "leak-", 5) &&
            strncmp(e->d_name, "timeout-", 8) && strncmp(e->d_name, "oom-", 4))
            continue; /* slow-unit- files are notes (a busy machine), not failures */
        char p[512];
        snprintf(p, sizeof p, "%s%s", dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) == 0 && sb.st_mtime >= best) {
            best = sb.st_mtime;
            snprintf(buf, len, "%s", p);
        }
    }
    closedir(d);
}

static int files_in(const char *dir, glob_t *g)
{
    char pat[256];
    snprintf(pat, sizeof pat, "%s/*", dir);
    memset(g, 0, sizeof *g);
    int rc = glob(pat, 0, NULL, g);
    return rc == 0 ? (int)g->gl_pathc : 0;
}

/* ---- replay -------------------------------------------------------------------------- */

/* Runs the fuzzer once over argv's inputs; fails naming the input that broke. */
static void replay_run(const char *t, char **argv, const char *what)
{
    char tmp[64] = "/tmp/ddm-fuzz-replay-XXXXXX", log[96], art[96];
    assert_non_null(mkdtemp(tmp));
    snprintf(log, sizeof log, "%s/replay.log", tmp);
    snprintf(art, sizeof art, "-artifact_prefix=%s/", tmp);
    int a = 0;
    while (argv[a])
        a++;
    argv[a] = art; /* never into the working directory */
    argv[a + 1] = NULL;
    int st = proc_wait(proc_start(argv, log), 300000);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char which[512];
        last_running(log, which, sizeof which);
        show_log(log);
        fail_msg("fuzz target %s fails on %s (status 0x%x); replay: %s %s", t,
                 which[0] ? which : what, st, argv[0], which[0] ? which : what);
    }
    glob_t g;
    int n = files_in(tmp, &g);
    for (int k = 0; k < n; k++)
        unlink(g.gl_pathv[k]);
    globfree(&g);
    rmdir(tmp);
}

/* Runs every tests/fuzz/regressions/<target>/ input once (each file named, so
 * that a crash says which) and, with DDM_FUZZ_SECONDS=0, the seed corpus. */
static void replay(int i)
{
    const char *t = TARGETS[i];
    char bin[600], dir[128], seeds[128];
    fuzzer_path(t, bin, sizeof bin);
    snprintf(dir, sizeof dir, "tests/fuzz/regressions/%s", t);
    glob_t g;
    int n = files_in(dir, &g);
    if (n > MAX_ARGS - 3)
        fail_msg("%s holds more than %d inputs: raise MAX_ARGS in tests/test_fuzz.c", dir,
                 MAX_ARGS - 3);
    char *argv[MAX_ARGS];
    if (n) {
        argv[0] = bin;
        for (int k = 0; k < n; k++)
            argv[k + 1] = g.gl_pathv[k];
        argv[n + 1] = NULL;
        replay_run(t, argv, dir);
    }
    globfree(&g);
    if (seconds == 0) { /* -runs=0: each file of the directory once, then stop */
        snprintf(seeds, sizeof seeds, "tests/fuzz/corpus/%s", t);
        char *av[] = { bin, "-runs=0", seeds, NULL, NULL };
        replay_run(t, av, seeds);
    }
    print_message("# %s: %d regression input(s)%s replayed\n", t, n,
                  seconds == 0 ? " and the seed corpus" : "");
}

/* ---- fuzzing ------------------------------------------------------------------------- */

static void start(int i)
{
    fuzz_run *r = &runs[i];
    if (r->pid || seconds <= 0)
        return;
    const char *t = TARGETS[i];
    char bin[600], seeds[128], time_arg[48], art_arg[160], dict[128], dict_arg[160];
    fuzzer_path(t, bin, sizeof bin);
    char tmp[sizeof r->tmp] = "/tmp/ddm-fuzz-XXXXXX";
    if (!mkdtemp(tmp)) {
        r->pid = -1;
        return;
    }
    memcpy(r->tmp, tmp, sizeof tmp);
    snprintf(r->log, sizeof r->log, "%s/fuzz.log", tmp);
    snprintf(r->art, sizeof r->art, "build/fuzz/artifacts/%s/", t);
    mkdirs(r->art);
    snprintf(seeds, sizeof seeds, "tests/fuzz/corpus/%s", t);
    snprintf(time_arg, sizeof time_arg, "-max_total_time=%d", seconds);
    snprintf(art_arg, sizeof art_arg, "-artifact_prefix=%s", r->art);
    snprintf(dict, sizeof dict, "tests/fuzz/%s.dict", t);
    snprintf(dict_arg, sizeof dict_arg, "-dict=%s", dict);
    char *argv[] = { bin, r->tmp, seeds, time_arg, "-timeout=20", "-rss_limit_mb=2048",
                     "-print_final_stats=1", art_arg,
                     access(dict, R_OK) == 0 ? dict_arg : NULL, NULL };
    r->pid = proc_start(argv, r->log);
}

/* "stat::<name>: <value>" from the fuzzer's final statistics, or -1. */
static long long stat_of(const char *log, const char *name)
{
    FILE *f = fopen(log, "r");
    if (!f)
        return -1;
    char line[512], key[96];
    snprintf(key, sizeof key, "stat::%s:", name);
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key)))
            v = atoll(line + strlen(key));
    fclose(f);
    return v;
}

/* The last "cov: N ft: M" of the log. */
static void coverage(const char *log, long *cov, long *ft)
{
    *cov = *ft = -1;
    FILE *f = fopen(log, "r");
    if (!f)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *c = strstr(line, "cov: "), *x = strstr(line, "ft: ");
        if (c && x) {
            *cov = atol(c + 5);
            *ft = atol(x + 4);
        }
    }
    fclose(f);
}

static void rm_tree(const char *dir)
{
    glob_t g;
    int n = files_in(dir, &g);
    for (int k = 0; k < n; k++)
        unlink(g.gl_pathv[k]);
    globfree(&g);
    rmdir(dir);
}

static void fuzz(int i)
{
    fuzz_run *r = &runs[i];
    const char *t = TARGETS[i];
    start(i);
    if (i + 1 < N_TARGETS)
        start(i + 1); /* the next target runs while this one finishes */
    if (r->pid < 0)
        fail_msg("cannot start fuzz target %s", t);
    int st = proc_wait(r->pid, (seconds * 3 + 120) * 1000);
    if (st == -1) {
        proc_stop(r->pid, SIGKILL, 5000);
        show_log(r->log);
        fail_msg("fuzz target %s did not stop after -max_total_time=%d", t, seconds);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char art[512], bin[600];
        newest_artifact(r->art, art, sizeof art);
        fuzzer_path(t, bin, sizeof bin);
        show_log(r->log);
        fail_msg("fuzz target %s found a crash, leak, timeout or sanitizer report (status 0x%x)"
                 "\n  reproducer: %s\n  replay:     %s %s\n  once fixed, keep it: "
                 "tests/fuzz/regressions/%s/<what-it-was>", t, st, art[0] ? art : "(none written)",
                 bin, art[0] ? art : "<input>", t);
    }
    long long execs = stat_of(r->log, "number_of_executed_units");
    long long eps = stat_of(r->log, "average_exec_per_sec");
    long cov, ft;
    coverage(r->log, &cov, &ft);
    print_message("# %s: %lld runs in %d s (%lld/s), cov %ld ft %ld\n", t, execs, seconds, eps,
                  cov, ft);
    if (execs <= 0) {
        show_log(r->log);
        fail_msg("fuzz target %s ran no input", t);
    }
    rm_tree(r->tmp);
}

static void test_target(void **state)
{
    int i = (int)(intptr_t)*state;
    char bin[600];
    fuzzer_path(TARGETS[i], bin, sizeof bin);
    if (access(bin, X_OK) != 0)
        fail_msg("%s is missing: build the fuzz targets with make fuzz-build (clang, "
                 "libclang-rt-14-dev: make deps)", bin);
    replay(i);
    if (seconds > 0)
        fuzz(i);
}

/* Every tests/fuzz/fuzz_<name>.c is in TARGETS (else it would never run in CI). */
static void test_all_targets_listed(void **state)
{
    (void)state;
    glob_t g;
    memset(&g, 0, sizeof g);
    assert_int_equal(glob("tests/fuzz/fuzz_*.c", 0, NULL, &g), 0);
    for (size_t k = 0; k < g.gl_pathc; k++) {
        const char *name = strrchr(g.gl_pathv[k], '/') + 1 + strlen("fuzz_");
        int found = 0;
        for (int i = 0; i < N_TARGETS; i++)
            found |= !strncmp(name, TARGETS[i], strlen(TARGETS[i])) &&
                     !strcmp(name + strlen(TARGETS[i]), ".c");
        if (!found)
            fail_msg("%s is not in TARGETS of tests/test_fuzz.c: add it there", g.gl_pathv[k]);
    }
    assert_int_equal((int)g.gl_pathc, N_TARGETS);
    globfree(&g);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *d = getenv("DDM_FUZZ_DIR");
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s", d && *d ? d : "build/fuzz/bin");
    const char *s = getenv("DDM_FUZZ_SECONDS");
    if (s && *s)
        seconds = atoi(s);
    /* the fuzzers' sanitizers: leaks reported, a modest quarantine (two run at once) */
    setenv("ASAN_OPTIONS", "detect_leaks=1:quarantine_size_mb=64:malloc_context_size=20", 1);
    setenv("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1", 1);
    struct CMUnitTest tests[N_TARGETS + 1];
    tests[0] = (struct CMUnitTest)cmocka_unit_test(test_all_targets_listed);
    for (int i = 0; i < N_TARGETS; i++)
        tests[i + 1] = (struct CMUnitTest){ .name = TARGETS[i], .test_func = test_target,
                                            .initial_state = (void *)(intptr_t)i };
    int rc = _cmocka_run_group_tests("fuzz", tests, N_TARGETS + 1, NULL, NULL);
    for (int i = 0; i < N_TARGETS; i++) /* a target whose test failed early */
        if (runs[i].pid > 0 && proc_wait(runs[i].pid, 0) == -1)
            proc_stop(runs[i].pid, SIGKILL, 5000);
    return rc;
}
