/* test_blas.c -- choosing OpenBLAS kernels and the half_gemm crossover
 * (common/blas_tune.h) from made-up timings, the cache file, and through the
 * real binaries: overrides, bad values, a cold and a warm start. No timing is
 * asserted: the measured numbers only have to be well formed. */
#include <math.h>
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

#include "common/blas.h"
#include "common/blas_tune.h"
#include "common/err.h"
#include "common/model.h"
#include "common/st.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define AVX512_FLAGS "fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq " \
                     "avx512cd avx512bw avx512vl"
#define AVX2_FLAGS "fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx f16c fma avx2"

/* ---- candidates ----------------------------------------------------------------------- */

static void test_candidates(void **state)
{
    (void)state;
    char out[BLAS_TUNE_MAX_CANDS][BLAS_TUNE_NAME];
    /* AVX-512 without bf16: SkylakeX, then the AVX2 generation; own already there */
    int n = blas_tune_candidates(AVX512_FLAGS, "SkylakeX", out, BLAS_TUNE_MAX_CANDS);
    assert_int_equal(n, 3);
    assert_string_equal(out[0], "SkylakeX");
    assert_string_equal(out[1], "Haswell");
    assert_string_equal(out[2], "Zen");
    /* with bf16 and AMX: the newer Intel cores too, newest first */
    n = blas_tune_candidates(AVX512_FLAGS " avx512_bf16 amx_bf16 amx_tile", "Cooperlake", out,
                             BLAS_TUNE_MAX_CANDS);
    assert_int_equal(n, 5);
    assert_string_equal(out[0], "SapphireRapids");
    assert_string_equal(out[1], "Cooperlake");
    /* an AMD EPYC with AVX-512 where OpenBLAS picks Zen: SkylakeX is timed as well */
    n = blas_tune_candidates(AVX512_FLAGS, "Zen", out, BLAS_TUNE_MAX_CANDS);
    assert_int_equal(n, 3);
    assert_string_equal(out[0], "SkylakeX");
    /* AVX2 only: never an AVX-512 core (it would crash), down to Sandybridge */
    n = blas_tune_candidates(AVX2_FLAGS, "Haswell", out, BLAS_TUNE_MAX_CANDS);
    assert_int_equal(n, 3);
    assert_string_equal(out[0], "Haswell");
    assert_string_equal(out[1], "Zen");
    assert_string_equal(out[2], "Sandybridge");
    /* OpenBLAS's own pick outside our list is timed too */
    n = blas_tune_candidates("fpu sse sse2 pni ssse3", "Excavator", out, BLAS_TUNE_MAX_CANDS);
    assert_int_equal(n, 3);
    assert_string_equal(out[0], "Core2");
    assert_string_equal(out[1], "Prescott");
    assert_string_equal(out[2], "Excavator");

    char missing[32];
    assert_int_equal(blas_tune_runnable("skylakex", AVX2_FLAGS, missing, sizeof missing), 0);
    assert_string_equal(missing, "avx512f");
    assert_int_equal(blas_tune_runnable("Haswell", AVX2_FLAGS, missing, sizeof missing), 1);
    /* a flag that only starts like the one needed does not count */
    assert_int_equal(blas_tune_runnable("Haswell", "avx avx2x fma", missing, sizeof missing), 0);
    assert_int_equal(blas_tune_runnable("Foo", AVX2_FLAGS, missing, sizeof missing), -1);
    char canon[BLAS_TUNE_NAME];
    assert_int_equal(blas_tune_canonical("COOPERLAKE", canon), 0);
    assert_string_equal(canon, "Cooperlake");
    assert_int_equal(blas_tune_canonical("Pentium", canon), -1);
}

/* ---- choosing ------------------------------------------------------------------------------ */

/* A table over rows 1, 8, 32, 64; each candidate's time per forward is
 * per_latent us x rows, half_gemm's half_per_latent x rows up to `cross`
 * rows and 10x slower above. */
static void add_cand(blas_table *t, const char *core, double per_latent, double half_per_latent,
                     int cross)
{
    blas_cand *c = &t->cand[t->n_cand++];
    memset(c, 0, sizeof *c);
    snprintf(c->core, sizeof c->core, "%s", core);
    c->status = BLAS_CAND_OK;
    c->err_blas = 1e-7;
    c->err_half = half_per_latent > 0 ? 2e-7 : -1;
    for (int i = 0; i < t->n_rows; i++) {
        c->blas_us[i] = per_latent * t->rows[i];
        c->half_us[i] = half_per_latent <= 0 ? 0
                        : t->rows[i] <= cross ? half_per_latent * t->rows[i]
                                              : 10 * per_latent * t->rows[i];
    }
}

static void table_init(blas_table *t, const char *own)
{
    memset(t, 0, sizeof *t);
    static const int rows[] = { 1, 8, 32, 64 };
    t->n_rows = 4;
    memcpy(t->rows, rows, sizeof rows);
    snprintf(t->own, sizeof t->own, "%s", own);
    t->rounds = 3;
}

static void test_choose_fastest(void **state)
{
    (void)state;
    blas_table t;
    blas_choice ch;
    table_init(&t, "Haswell");
    add_cand(&t, "Haswell", 20, 10, 8);
    add_cand(&t, "SkylakeX", 10, 8, 32); /* twice as fast: worth a restart */
    add_cand(&t, "Zen", 19, 10, 8);
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 1);
    assert_string_equal(ch.core, "SkylakeX");
    assert_int_equal(ch.half_rows, 32);
    assert_int_equal(ch.kept_own, 0);
    assert_int_equal(t.cand[0].half_rows, 8);
    assert_true(t.cand[1].score > t.cand[2].score && t.cand[2].score > t.cand[0].score);
    /* a geometric mean: 1e5 latents/s at every row count */
    assert_true(fabs(t.cand[1].score - 1e5) < 1e-6 * 1e5);

    /* OpenBLAS's own pick within the margin stays (no restart for noise) */
    table_init(&t, "Haswell");
    add_cand(&t, "Haswell", 10.2, 0, 0);
    add_cand(&t, "SkylakeX", 10, 0, 0);
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 0);
    assert_int_equal(ch.kept_own, 1);
    assert_int_equal(ch.half_rows, 0); /* no half_gemm on this CPU */
    /* ... but not beyond it */
    table_init(&t, "Haswell");
    add_cand(&t, "Haswell", 10.5, 0, 0);
    add_cand(&t, "SkylakeX", 10, 0, 0);
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 1);
    assert_int_equal(ch.kept_own, 0);
}

static void test_refuse_wrong(void **state)
{
    (void)state;
    blas_table t;
    blas_choice ch;
    table_init(&t, "Haswell");
    add_cand(&t, "Haswell", 20, 10, 8);
    add_cand(&t, "SkylakeX", 5, 8, 32);
    t.cand[1].err_blas = 1e-3; /* fastest, and wrong */
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 0);
    assert_string_equal(ch.core, "Haswell");
    assert_int_equal(t.cand[1].wrong, 1);
    assert_int_equal(t.cand[0].wrong, 0);
    t.cand[1].err_blas = NAN; /* NaN is wrong too */
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 0);
    /* a wrong half_gemm only costs the crossover */
    t.cand[1].err_blas = 1e-7;
    t.cand[1].err_half = 1e-2;
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 1);
    assert_int_equal(ch.half_rows, 0);
    /* nothing usable: no choice, the fallback crossover */
    t.cand[0].err_blas = t.cand[1].err_blas = 1;
    assert_int_equal(blas_tune_choose(&t, NULL, 17, &ch), -1);
    assert_string_equal(ch.core, "");
    assert_int_equal(ch.half_rows, 17);
    /* unknown to OpenBLAS and failed probes are never chosen */
    table_init(&t, "Cooperlake");
    add_cand(&t, "SapphireRapids", 1, 1, 64);
    t.cand[0].status = BLAS_CAND_UNKNOWN;
    add_cand(&t, "SkylakeX", 2, 1, 64);
    t.cand[1].status = BLAS_CAND_FAILED;
    add_cand(&t, "Cooperlake", 10, 5, 8);
    assert_int_equal(blas_tune_choose(&t, NULL, 20, &ch), 2);
    assert_int_equal(ch.half_rows, 8);
}

static void test_crossover(void **state)
{
    (void)state;
    blas_table t;
    table_init(&t, "X");
    add_cand(&t, "A", 10, 5, 32); /* half wins up to 32 */
    assert_int_equal(blas_tune_crossover(&t, &t.cand[0]), 32);
    add_cand(&t, "B", 10, 20, 64); /* half always slower */
    assert_int_equal(blas_tune_crossover(&t, &t.cand[1]), 0);
    add_cand(&t, "C", 10, 5, 64); /* always faster: up to the largest row count timed */
    assert_int_equal(blas_tune_crossover(&t, &t.cand[2]), 64);
    /* one noisy row count above the crossover does not move it */
    add_cand(&t, "D", 10, 5, 8);
    t.cand[3].half_us[3] = 9 * 64; /* 64 rows: half a little faster, 32 much slower */
    assert_int_equal(blas_tune_crossover(&t, &t.cand[3]), 8);
    add_cand(&t, "E", 10, 0, 0); /* no half_gemm */
    assert_int_equal(blas_tune_crossover(&t, &t.cand[4]), 0);
}

static void test_forced(void **state)
{
    (void)state;
    blas_table t;
    blas_choice ch;
    table_init(&t, "SkylakeX");
    add_cand(&t, "SkylakeX", 10, 5, 32);
    add_cand(&t, "Haswell", 20, 5, 64);
    assert_int_equal(blas_tune_choose(&t, "haswell", 20, &ch), 1);
    assert_string_equal(ch.core, "haswell");
    assert_int_equal(ch.half_rows, 64); /* Haswell's own crossover */
    assert_int_equal(blas_tune_choose(&t, "Zen", 20, &ch), -1); /* not measured */
    assert_string_equal(ch.core, "Zen");
    assert_int_equal(ch.half_rows, 20);
}

/* ---- the cache file ------------------------------------------------------------------------- */

static void ident(blas_ident *id, const char *cpu)
{
    memset(id, 0, sizeof *id);
    snprintf(id->cpu, sizeof id->cpu, "%s", cpu);
    snprintf(id->flags, sizeof id->flags, "%s", AVX512_FLAGS);
    snprintf(id->openblas, sizeof id->openblas, "OpenBLAS 0.3.21 DYNAMIC_ARCH");
    snprintf(id->build, sizeof id->build, "ddm test");
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_cache(void **state)
{
    (void)state;
    char dir[64], path[4200], path2[4200], err[512];
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "blas"), 0);
    setenv("XDG_CACHE_HOME", dir, 1);
    blas_ident id, other;
    ident(&id, "Test CPU A");
    ident(&other, "Test CPU B");
    assert_int_equal(blas_tune_cache_path(&id, path, sizeof path), 0);
    assert_int_equal(blas_tune_cache_path(&other, path2, sizeof path2), 0);
    assert_true(strncmp(path, dir, strlen(dir)) == 0);
    assert_string_not_equal(path, path2); /* one file per CPU model */

    blas_table t, back;
    table_init(&t, "SkylakeX");
    add_cand(&t, "SkylakeX", 10, 5, 32);
    add_cand(&t, "SapphireRapids", 0, 0, 0);
    t.cand[1].status = BLAS_CAND_UNKNOWN;
    snprintf(t.when, sizeof t.when, "2026-11-27T10:00:00Z");
    t.seconds = 2.5;
    assert_int_equal(blas_tune_read(path, &id, &back, err, sizeof err), DDM_ENOTFOUND);
    assert_int_equal(blas_tune_write(path, &id, &t, err, sizeof err), 0); /* makes ddm/ */
    assert_int_equal(blas_tune_read(path, &id, &back, err, sizeof err), 0);
    assert_int_equal(back.n_rows, 4);
    assert_int_equal(back.rows[3], 64);
    assert_int_equal(back.n_cand, 2);
    assert_string_equal(back.own, "SkylakeX");
    assert_string_equal(back.when, t.when);
    assert_int_equal(back.rounds, 3);
    assert_int_equal(back.cand[1].status, BLAS_CAND_UNKNOWN);
    for (int i = 0; i < 4; i++) {
        assert_true(fabs(back.cand[0].blas_us[i] - t.cand[0].blas_us[i]) < 1e-3);
        assert_true(fabs(back.cand[0].half_us[i] - t.cand[0].half_us[i]) < 1e-3);
    }
    blas_choice a, b;
    blas_tune_choose(&t, NULL, 20, &a);
    blas_tune_choose(&back, NULL, 20, &b);
    assert_string_equal(a.core, b.core);
    assert_int_equal(a.half_rows, b.half_rows);

    /* invalidation: another CPU, OpenBLAS or build reading the same file */
    other = id;
    snprintf(other.openblas, sizeof other.openblas, "OpenBLAS 0.3.26 DYNAMIC_ARCH");
    assert_int_equal(blas_tune_read(path, &other, &back, err, sizeof err), DDM_EMISMATCH);
    assert_non_null(strstr(err, "measure again"));
    other = id;
    snprintf(other.flags, sizeof other.flags, "%s", AVX2_FLAGS);
    assert_int_equal(blas_tune_read(path, &other, &back, err, sizeof err), DDM_EMISMATCH);
    other = id;
    snprintf(other.build, sizeof other.build, "ddm asan");
    assert_int_equal(blas_tune_read(path, &other, &back, err, sizeof err), DDM_EMISMATCH);

    /* another file format, a file cut short, garbage */
    char *text = strdup(read_text(path));
    char *fmt = strstr(text, "format 1\n");
    assert_non_null(fmt);
    fmt[7] = '9';
    write_text(path, text);
    assert_int_equal(blas_tune_read(path, &id, &back, err, sizeof err), DDM_EMISMATCH);
    fmt[7] = '1';
    *strstr(text, "end\n") = 0;
    write_text(path, text);
    assert_int_equal(blas_tune_read(path, &id, &back, err, sizeof err), DDM_EFORMAT);
    write_text(path, "format 1\nrows 1 2 x\n");
    assert_int_equal(blas_tune_read(path, &id, &back, err, sizeof err), DDM_EFORMAT);
    free(text);
    write_text(path, "\x01\x02 binary\n");
    assert_int_equal(blas_tune_read(path, &id, &back, err, sizeof err), DDM_EFORMAT);

    /* no cache directory at all */
    unsetenv("XDG_CACHE_HOME");
    char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    unsetenv("HOME");
    assert_int_equal(blas_tune_cache_path(&id, path2, sizeof path2), DDM_ENOTFOUND);
    setenv("XDG_CACHE_HOME", "relative/dir", 1); /* not absolute: ignored */
    assert_int_equal(blas_tune_cache_path(&id, path2, sizeof path2), DDM_ENOTFOUND);
    unsetenv("XDG_CACHE_HOME");
    if (home) {
        setenv("HOME", home, 1);
        free(home);
    }
    /* an unwritable place: an error, nothing written */
    assert_true(blas_tune_write("/proc/ddm-no/blas.txt", &id, &t, err, sizeof err) < 0);
    toyset_rmdir(dir);
}

static void test_print(void **state)
{
    (void)state;
    blas_table t;
    blas_choice ch;
    table_init(&t, "Haswell");
    add_cand(&t, "Haswell", 20, 10, 8);
    add_cand(&t, "SkylakeX", 10, 8, 32);
    add_cand(&t, "Zen", 1, 8, 32);
    t.cand[2].err_blas = 1;
    blas_tune_choose(&t, NULL, 20, &ch);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    blas_tune_print(f, &t, &ch);
    fclose(f);
    assert_non_null(strstr(buf, "**SkylakeX** (chosen)"));
    assert_non_null(strstr(buf, "Haswell (OpenBLAS's own pick)"));
    assert_non_null(strstr(buf, "Zen (refused: wrong results)"));
    assert_non_null(strstr(buf, "| half_gemm (fp16 weights, with SkylakeX) |"));
    assert_non_null(strstr(buf, "| 100000 |")); /* SkylakeX: 10 us per latent */
    free(buf);
}

/* ---- through the binaries ------------------------------------------------------------------ */

static char g_dir[64];

static int group_setup(void **state)
{
    (void)state;
    /* this process chose nothing: the children decide for themselves */
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("DDM_HALF_ROWS");
    return toyset_tempdir(g_dir, sizeof g_dir, "blas-bin");
}

static int group_teardown(void **state)
{
    (void)state;
    toyset_rmdir(g_dir);
    return 0;
}

/* Runs argv to its end with output in log; returns the exit status (-1 if
 * it did not end within 120 s). */
static int run(char *const argv[], const char *log)
{
    unlink(log);
    pid_t pid = proc_start(argv, log);
    assert_true(pid > 0);
    int st = proc_wait(pid, 300000) /* a cold measurement on a loaded machine, sanitized */;
    if (st == -1) {
        proc_stop(pid, SIGKILL, 1000);
        return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_bad_values(void **state)
{
    (void)state;
    char bin[512], log[128];
    proc_bin("ddm-expert", bin, sizeof bin);
    snprintf(log, sizeof log, "%s/bad.log", g_dir);
    char *a1[] = { bin, "--blas-core", "Pentium4", "--weights", "x", "--listen", "ipc:///x", NULL };
    assert_int_equal(run(a1, log), 2);
    assert_non_null(strstr(read_text(log), "--blas-core \"Pentium4\": not an OpenBLAS core type"));
    char *a2[] = { bin, "--half-rows=-3", NULL };
    assert_int_equal(run(a2, log), 2);
    assert_non_null(strstr(read_text(log), "--half-rows \"-3\": expected an integer 0..65536"));
    char *a3[] = { bin, "--weights", "x", "--half-rows", NULL };
    assert_int_equal(run(a3, log), 2);
    assert_non_null(strstr(read_text(log), "--half-rows needs a value"));
    /* --help with the flags: they are accepted, nothing is measured */
    char *a4[] = { bin, "--help", "--blas-core", "Haswell", NULL };
    assert_int_equal(run(a4, log), 0);
    assert_null(strstr(read_text(log), "measuring"));
}

/* Waits until log holds text (120 s). */
static int log_has(const char *log, const char *text)
{
    for (int i = 0; i < 1200; i++) {
        const char *s = read_text(log);
        if (s && strstr(s, text))
            return 1;
        usleep(100000);
    }
    return 0;
}

static void test_overrides(void **state)
{
    (void)state;
    char bin[512], weights[128], log[128], url[128];
    proc_bin("ddm-expert", bin, sizeof bin);
    snprintf(weights, sizeof weights, "%s/expert-0.safetensors", g_dir);
    snprintf(log, sizeof log, "%s/over.log", g_dir);
    snprintf(url, sizeof url, "ipc://%s/over.ipc", g_dir);
    net_config c = { 64, 32, 1, 64, 3, 8, 4 };
    assert_int_equal(toyset_write_model(weights, MODEL_DENOISER, &c, 5, 0, 1, ST_F16), 0);
    /* Haswell runs wherever AVX2 does; the worker's own line names the
     * kernels OpenBLAS loaded after the restart */
    char *argv[] = { bin, "--weights", weights, "--listen", url, "--blas-core=Haswell",
                     "--half-rows", "12", NULL };
    unlink(log);
    pid_t pid = proc_start(argv, log);
    assert_true(pid > 0);
    int ok = log_has(log, "serving expert");
    proc_stop(pid, SIGTERM, 5000);
    if (!ok)
        proc_dump_log(log);
    assert_true(ok);
    const char *s = read_text(log);
    assert_non_null(strstr(s, "OpenBLAS Haswell kernels (--blas-core), half_gemm up to 12 rows "
                              "(--half-rows)"));
    assert_non_null(strstr(s, "BLAS thread(s), Haswell kernels"));
    assert_null(strstr(s, "measuring")); /* both given: nothing to measure */
}

/* A start whose cache file is from another format measures again and
 * rewrites it (one measurement: the cold start of this test), a warm one
 * reads it, --blas-table prints it. */
static void test_cold_warm(void **state)
{
    (void)state;
    char bin[512], log[128], cache[128], path[4200], err[512];
    proc_bin("ddm-expert", bin, sizeof bin);
    snprintf(log, sizeof log, "%s/cold.log", g_dir);
    snprintf(cache, sizeof cache, "%s/cache", g_dir);
    setenv("XDG_CACHE_HOME", cache, 1);
    /* the file the binary will look for, in an older format */
    blas_ident id;
    blas_ident_get(&id);
    assert_int_equal(blas_tune_cache_path(&id, path, sizeof path), 0);
    blas_table t;
    table_init(&t, "SkylakeX");
    add_cand(&t, "SkylakeX", 10, 5, 32);
    assert_int_equal(blas_tune_write(path, &id, &t, err, sizeof err), 0);
    char *old = strdup(read_text(path));
    char *fmt = strstr(old, "format 1\n");
    assert_non_null(fmt);
    fmt[7] = '0';
    write_text(path, old);
    free(old);

    /* --weights missing: a usage error, after the kernels were chosen */
    char *argv[] = { bin, "--listen", "ipc:///nowhere", NULL };
    assert_int_equal(run(argv, log), 2);
    const char *s = read_text(log);
    if (!strstr(s, "measuring"))
        proc_dump_log(log);
    assert_non_null(strstr(s, "format 0, this build reads 1"));
    assert_non_null(strstr(s, "measuring OpenBLAS kernels"));
    assert_non_null(strstr(s, "(measured now"));
    const char *p = strstr(s, "table in ");
    assert_non_null(p);
    assert_true(strncmp(p + 9, path, strlen(path)) == 0); /* the file this test computed */
    char *text = strdup(read_text(path));
    assert_non_null(strstr(text, "format 1\n"));
    assert_non_null(strstr(text, "\nend\n"));
    assert_non_null(strstr(text, "\ncand "));
    assert_int_equal(blas_tune_read(path, &id, &t, err, sizeof err), 0);
    assert_true(t.n_cand >= 1 && t.n_rows == blas_tune_n_rows);

    /* warm: nothing measured, the file as it was (it holds the time it was measured) */
    assert_int_equal(run(argv, log), 2);
    s = read_text(log);
    assert_null(strstr(s, "measuring"));
    assert_string_equal(read_text(path), text);

    /* --blas-table prints the table the choice was made from */
    char out[128];
    snprintf(out, sizeof out, "%s/table.md", g_dir);
    char *targv[] = { bin, "--blas-table", NULL };
    assert_int_equal(run(targv, out), 0);
    s = read_text(out);
    assert_non_null(strstr(s, "(chosen)"));
    assert_non_null(strstr(s, "Chosen: "));
    assert_null(strstr(s, "measuring"));
    free(text);
    unsetenv("XDG_CACHE_HOME");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_candidates), cmocka_unit_test(test_choose_fastest),
        cmocka_unit_test(test_refuse_wrong), cmocka_unit_test(test_crossover),
        cmocka_unit_test(test_forced),       cmocka_unit_test(test_cache),
        cmocka_unit_test(test_print),        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_overrides),    cmocka_unit_test(test_cold_warm),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
