/* blas_tune.c -- the kernel choice from a table of timings, and its cache
 * file (see blas_tune.h). */
#include "common/blas_tune.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

const int blas_tune_rows[] = { 1, 2, 4, 8, 12, 16, 20, 24, 32, 48, 64, 96, 128 };
const int blas_tune_n_rows = sizeof blas_tune_rows / sizeof blas_tune_rows[0];

/* OpenBLAS's x86-64 core types this module reasons about: the newest
 * instruction-set generation each needs (3 AVX-512, 2 AVX2, 1 AVX, 0 SSE)
 * and the /proc/cpuinfo flags its kernels use. */
static const struct core_type {
    const char *name;
    int gen;
    const char *needs;
} CORES[] = {
    { "SapphireRapids", 3,
      "avx512f avx512vl avx512bw avx512dq avx512cd avx512_bf16 amx_bf16 amx_tile" },
    { "Cooperlake", 3, "avx512f avx512vl avx512bw avx512dq avx512cd avx512_bf16" },
    { "SkylakeX", 3, "avx512f avx512vl avx512bw avx512dq avx512cd" },
    { "Haswell", 2, "avx2 fma" },
    { "Zen", 2, "avx2 fma" },
    { "Sandybridge", 1, "avx" },
    { "Nehalem", 0, "ssse3 sse4_1 sse4_2" },
    { "Core2", 0, "ssse3" },
    { "Prescott", 0, "pni" },
};
#define N_CORES (sizeof CORES / sizeof CORES[0])

static const struct core_type *find_core(const char *name)
{
    for (size_t i = 0; name && i < N_CORES; i++)
        if (strcasecmp(name, CORES[i].name) == 0)
            return &CORES[i];
    return NULL;
}

const char *blas_tune_known_cores(void)
{
    return "SapphireRapids, Cooperlake, SkylakeX, Haswell, Zen, Sandybridge, Nehalem, Core2, "
           "Prescott";
}

int blas_tune_canonical(const char *core, char out[BLAS_TUNE_NAME])
{
    const struct core_type *c = find_core(core);
    if (!c)
        return -1;
    snprintf(out, BLAS_TUNE_NAME, "%s", c->name);
    return 0;
}

/* 1 if the space-separated list has the word w. */
static int has_word(const char *list, const char *w, size_t wlen)
{
    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, " \t\n");
        if (n == wlen && strncmp(p, w, n) == 0)
            return 1;
        p += n;
    }
    return 0;
}

int blas_tune_runnable(const char *core, const char *flags, char *missing, size_t missing_len)
{
    const struct core_type *c = find_core(core);
    if (!c)
        return -1;
    for (const char *p = c->needs; *p;) {
        size_t n = strcspn(p, " ");
        if (!has_word(flags, p, n)) {
            if (missing && missing_len)
                snprintf(missing, missing_len, "%.*s", (int)n, p);
            return 0;
        }
        p += n;
        while (*p == ' ')
            p++;
    }
    return 1;
}

int blas_tune_candidates(const char *flags, const char *own, char out[][BLAS_TUNE_NAME], int max)
{
    int n = 0, gens = 0;
    for (int gen = 3; gen >= 0 && gens < 2; gen--) {
        int found = 0;
        for (size_t i = 0; i < N_CORES && n < max; i++) {
            if (CORES[i].gen != gen || blas_tune_runnable(CORES[i].name, flags, NULL, 0) != 1)
                continue;
            snprintf(out[n++], BLAS_TUNE_NAME, "%s", CORES[i].name);
            found = 1;
        }
        gens += found;
    }
    if (own && *own && n < max) {
        for (int i = 0; i < n; i++)
            if (strcasecmp(out[i], own) == 0)
                return n;
        snprintf(out[n++], BLAS_TUNE_NAME, "%s", own);
    }
    return n;
}

/* ---- choosing ---------------------------------------------------------------------- */

static int has_half(const blas_table *t, const blas_cand *c)
{
    if (c->err_half < 0 || c->err_half > BLAS_TUNE_MAX_ERR)
        return 0;
    for (int i = 0; i < t->n_rows; i++)
        if (!(c->half_us[i] > 0))
            return 0;
    return 1;
}

int blas_tune_crossover(const blas_table *t, const blas_cand *c)
{
    if (c->status != BLAS_CAND_OK || !has_half(t, c))
        return 0;
    /* cost(h) = sum over rows of us per latent, half_gemm up to h */
    double best = 0;
    int best_h = 0;
    for (int k = -1; k < t->n_rows; k++) {
        int h = k < 0 ? 0 : t->rows[k];
        double cost = 0;
        for (int i = 0; i < t->n_rows; i++)
            cost += (t->rows[i] <= h ? c->half_us[i] : c->blas_us[i]) / t->rows[i];
        if (k < 0 || cost < best) {
            best = cost;
            best_h = h;
        }
    }
    return best_h;
}

/* Geometric mean over the rows of latents/s of the forward on OpenBLAS with
 * c's kernels. half_gemm does not depend on them, so it does not count. */
static double score(const blas_table *t, const blas_cand *c)
{
    double logs = 0;
    for (int i = 0; i < t->n_rows; i++) {
        if (!(c->blas_us[i] > 0))
            return 0;
        logs += log(t->rows[i] / (c->blas_us[i] * 1e-6));
    }
    return t->n_rows > 0 ? exp(logs / t->n_rows) : 0;
}

int blas_tune_choose(blas_table *t, const char *forced, int fallback_rows, blas_choice *out)
{
    int best = -1, own = -1;
    for (int i = 0; i < t->n_cand; i++) {
        blas_cand *c = &t->cand[i];
        c->wrong = c->status == BLAS_CAND_OK &&
                   (!(c->err_blas >= 0 && c->err_blas <= BLAS_TUNE_MAX_ERR) ||
                    c->err_half > BLAS_TUNE_MAX_ERR);
        c->half_rows = blas_tune_crossover(t, c);
        c->score = c->status == BLAS_CAND_OK ? score(t, c) : 0;
        if (c->status != BLAS_CAND_OK || !(c->err_blas >= 0 && c->err_blas <= BLAS_TUNE_MAX_ERR) ||
            !(c->score > 0))
            continue; /* a wrong half_gemm only costs the crossover, not the core */
        if (best < 0 || c->score > t->cand[best].score)
            best = i;
        if (strcasecmp(c->core, t->own) == 0)
            own = i;
    }
    memset(out, 0, sizeof *out);
    out->index = -1;
    out->half_rows = fallback_rows;
    if (forced) {
        snprintf(out->core, sizeof out->core, "%s", forced);
        for (int i = 0; i < t->n_cand; i++) {
            blas_cand *c = &t->cand[i];
            if (strcasecmp(c->core, forced) == 0 && c->status == BLAS_CAND_OK && c->score > 0) {
                out->index = i;
                out->half_rows = c->half_rows;
            }
        }
        return out->index;
    }
    if (own >= 0 && t->cand[own].score >= (1.0 - BLAS_TUNE_MARGIN) * t->cand[best].score) {
        out->kept_own = own != best;
        best = own;
    }
    if (best >= 0) {
        out->index = best;
        out->half_rows = t->cand[best].half_rows;
        snprintf(out->core, sizeof out->core, "%s", t->cand[best].core);
    }
    return out->index;
}

/* ---- cache file ---------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    h ^= '\n';
    return h * 1099511628211ULL;
}

int blas_tune_cache_path(const blas_ident *id, char *path, size_t len)
{
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char dir[4096];
    if (xdg && xdg[0] == '/')
        snprintf(dir, sizeof dir, "%s/ddm", xdg);
    else if (home && home[0] == '/')
        snprintf(dir, sizeof dir, "%s/.cache/ddm", home);
    else
        return DDM_ENOTFOUND;
    char fmt[16];
    snprintf(fmt, sizeof fmt, "%d", BLAS_TUNE_FORMAT);
    uint64_t h = 14695981039346656037ULL;
    h = fnv1a(h, fmt);
    h = fnv1a(h, id->cpu);
    h = fnv1a(h, id->flags);
    h = fnv1a(h, id->openblas);
    h = fnv1a(h, id->build);
    int n = snprintf(path, len, "%s/blas-%016llx.txt", dir, (unsigned long long)h);
    return n < 0 || (size_t)n >= len ? DDM_ERANGE : 0;
}

int blas_tune_make_dir(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static const char *status_word(blas_cand_status s)
{
    return s == BLAS_CAND_OK ? "ok" : s == BLAS_CAND_UNKNOWN ? "unknown" : "failed";
}

int blas_tune_write(const char *path, const blas_ident *id, const blas_table *t, char *err,
                    size_t errlen)
{
    int rc = blas_tune_make_dir(path);
    if (rc) {
        snprintf(err, errlen, "cannot create the directory of %s: %s", path, strerror(-rc));
        return rc;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        rc = -errno;
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        return rc;
    }
    fprintf(f, "# ddm: OpenBLAS kernels and half_gemm crossover measured on this CPU "
               "(common/blas_tune.h); delete this file to measure again\n");
    fprintf(f, "format %d\ncpu %s\nflags %s\nopenblas %s\nbuild %s\n", BLAS_TUNE_FORMAT, id->cpu,
            id->flags, id->openblas, id->build);
    fprintf(f, "own %s\nwhen %s\nrounds %d\nseconds %.3f\nrows", t->own[0] ? t->own : "-",
            t->when[0] ? t->when : "-", t->rounds, t->seconds);
    for (int i = 0; i < t->n_rows; i++)
        fprintf(f, " %d", t->rows[i]);
    fprintf(f, "\n");
    for (int c = 0; c < t->n_cand; c++) {
        const blas_cand *k = &t->cand[c];
        fprintf(f, "cand %s %s %.6g %.6g\nblas", k->core, status_word(k->status), k->err_blas,
                k->err_half);
        for (int i = 0; i < t->n_rows; i++)
            fprintf(f, " %.6g", k->blas_us[i]);
        fprintf(f, "\nhalf");
        for (int i = 0; i < t->n_rows; i++)
            fprintf(f, " %.6g", k->half_us[i]);
        fprintf(f, "\n");
    }
    fprintf(f, "end\n");
    if (fflush(f) != 0 || ferror(f)) {
        rc = -errno;
        fclose(f);
        unlink(tmp);
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(-rc));
        return rc ? rc : DDM_EIO;
    }
    fclose(f);
    if (rename(tmp, path) != 0) {
        rc = -errno;
        unlink(tmp);
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(-rc));
        return rc;
    }
    return 0;
}

/* Parses n doubles from s into v; returns 0 if exactly n finite ones. */
static int parse_doubles(const char *s, double *v, int n)
{
    for (int i = 0; i < n; i++) {
        char *end;
        v[i] = strtod(s, &end);
        if (end == s || !isfinite(v[i]))
            return -1;
        s = end;
    }
    while (*s == ' ')
        s++;
    return *s ? -1 : 0;
}

int blas_tune_read(const char *path, const blas_ident *id, blas_table *t, char *err,
                   size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? DDM_ENOTFOUND : -errno;
    }
    memset(t, 0, sizeof *t);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0, matched = 0, done = 0, cand = -1, lineno = 0;
    while (rc == 0 && !done && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = 0;
        if (line[0] == '#' || line[0] == 0)
            continue;
        char *sp = strchr(line, ' ');
        size_t klen = sp ? (size_t)(sp - line) : (size_t)len;
        char *val = sp ? sp + 1 : line + len;
#define KEY(k) (klen == strlen(k) && strncmp(line, k, klen) == 0)
        const char *want = KEY("cpu") ? id->cpu : KEY("flags") ? id->flags
                         : KEY("openblas") ? id->openblas : KEY("build") ? id->build : NULL;
        if (KEY("format")) {
            if (atoi(val) != BLAS_TUNE_FORMAT) {
                snprintf(err, errlen, "%s: format %s, this build reads %d: measure again", path,
                         val, BLAS_TUNE_FORMAT);
                rc = DDM_EMISMATCH;
            }
            matched |= 1;
        } else if (want) {
            if (strcmp(val, want) != 0) {
                snprintf(err, errlen, "%s: measured for another %.*s: measure again", path,
                         (int)klen, line);
                rc = DDM_EMISMATCH;
            }
            matched |= KEY("cpu") ? 2 : KEY("flags") ? 4 : KEY("openblas") ? 8 : 16;
        } else if (KEY("own")) {
            snprintf(t->own, sizeof t->own, "%s", strcmp(val, "-") ? val : "");
        } else if (KEY("when")) {
            snprintf(t->when, sizeof t->when, "%s", strcmp(val, "-") ? val : "");
        } else if (KEY("rounds")) {
            t->rounds = atoi(val);
        } else if (KEY("seconds")) {
            t->seconds = atof(val);
        } else if (KEY("rows")) {
            char *p = val, *end;
            while (*p && t->n_rows < BLAS_TUNE_MAX_ROWS) {
                long r = strtol(p, &end, 10);
                if (end == p || r < 1 || r > 65536 ||
                    (t->n_rows > 0 && r <= t->rows[t->n_rows - 1]))
                    break;
                t->rows[t->n_rows++] = (int)r;
                p = end;
                while (*p == ' ')
                    p++;
            }
            if (*p || t->n_rows == 0)
                rc = DDM_EFORMAT;
        } else if (KEY("cand")) {
            if (t->n_cand == BLAS_TUNE_MAX_CANDS) {
                rc = DDM_EFORMAT;
                break;
            }
            cand = t->n_cand++;
            blas_cand *c = &t->cand[cand];
            char name[64], st[16];
            if (sscanf(val, "%63s %15s %lf %lf", name, st, &c->err_blas, &c->err_half) != 4 ||
                strlen(name) >= BLAS_TUNE_NAME)
                rc = DDM_EFORMAT;
            snprintf(c->core, sizeof c->core, "%s", name);
            c->status = !strcmp(st, "ok") ? BLAS_CAND_OK : !strcmp(st, "unknown") ? BLAS_CAND_UNKNOWN
                                                                                 : BLAS_CAND_FAILED;
            if (strcmp(st, "ok") && strcmp(st, "unknown") && strcmp(st, "failed"))
                rc = DDM_EFORMAT;
        } else if (KEY("blas") || KEY("half")) {
            if (cand < 0 || t->n_rows == 0 ||
                parse_doubles(val, KEY("blas") ? t->cand[cand].blas_us : t->cand[cand].half_us,
                              t->n_rows))
                rc = DDM_EFORMAT;
        } else if (KEY("end")) {
            done = 1;
        } else {
            rc = DDM_EFORMAT;
        }
#undef KEY
        if (rc == DDM_EFORMAT)
            snprintf(err, errlen, "%s:%d: damaged (\"%.40s\"): measure again", path, lineno, line);
    }
    free(line);
    fclose(f);
    if (rc == 0 && (!done || matched != 31)) {
        snprintf(err, errlen, "%s: %s: measure again", path,
                 !done ? "cut short (no \"end\")" : "identity lines missing");
        rc = DDM_EFORMAT;
    }
    return rc;
}

/* ---- printing ------------------------------------------------------------------------------ */

void blas_tune_print(FILE *f, const blas_table *t, const blas_choice *ch)
{
    fprintf(f, "| kernels |");
    for (int i = 0; i < t->n_rows; i++)
        fprintf(f, " %d |", t->rows[i]);
    fprintf(f, " geo. mean | error vs reference | half_gemm crossover |\n|---|");
    for (int i = 0; i < t->n_rows + 3; i++)
        fprintf(f, "---|");
    fprintf(f, "\n");
    for (int c = 0; c < t->n_cand; c++) {
        const blas_cand *k = &t->cand[c];
        int chosen = ch && ch->index == c, own = strcasecmp(k->core, t->own) == 0;
        fprintf(f, "| %s%s%s%s%s |", chosen ? "**" : "", k->core, chosen ? "** (chosen)" : "",
                own ? " (OpenBLAS's own pick)" : "", k->wrong ? " (refused: wrong results)" : "");
        if (k->status != BLAS_CAND_OK) {
            for (int i = 0; i < t->n_rows + 1; i++)
                fprintf(f, " |");
            fprintf(f, " %s | |\n", k->status == BLAS_CAND_UNKNOWN
                                        ? "not in this OpenBLAS (it loads another core)"
                                        : "probe failed");
            continue;
        }
        for (int i = 0; i < t->n_rows; i++)
            fprintf(f, " %.0f |", k->blas_us[i] > 0 ? t->rows[i] / (k->blas_us[i] * 1e-6) : 0.0);
        fprintf(f, " %.0f | %.1e | %d |\n", k->score, k->err_blas, k->half_rows);
    }
    const blas_cand *h = ch && ch->index >= 0 ? &t->cand[ch->index] : NULL;
    if (h && h->err_half >= 0) {
        fprintf(f, "| half_gemm (fp16 weights, with %s) |", h->core);
        for (int i = 0; i < t->n_rows; i++)
            fprintf(f, " %.0f |", h->half_us[i] > 0 ? t->rows[i] / (h->half_us[i] * 1e-6) : 0.0);
        fprintf(f, " | %.1e | |\n", h->err_half);
    }
}
