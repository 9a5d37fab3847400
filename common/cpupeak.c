/* cpupeak.c -- FMA throughput, clock and bandwidth of one core (see cpupeak.h).
 *
 * Every measure is the best of short chunks (a few ms each): interference on
 * a shared machine only ever slows a chunk down, so the best one is the
 * closest to what the core does alone. */
#include "common/cpupeak.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile float g_sink; /* keeps results alive */

/* ---- FMA ------------------------------------------------------------------------ */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* 16 independent chains: two FMA units with a latency of 4 cycles need 8 in
 * flight; twice that leaves room for any core we know of. Each chain
 * converges (a = a m + c with m just under 1), so no value overflows or
 * turns denormal. */
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define CHAINS16(X) CHAINS(X) X(12) X(13) X(14) X(15)

__attribute__((target("avx512f"))) static float fma512(long iters)
{
    const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-3f);
#define INIT(i) __m512 a##i = _mm512_set1_ps((float)(i));
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    CHAINS16(INIT)
    for (long k = 0; k < iters; k++) {
        CHAINS16(STEP)
    }
    __m512 s = _mm512_setzero_ps();
    CHAINS16(SUM)
    return _mm512_reduce_add_ps(s);
#undef INIT
#undef STEP
#undef SUM
}

/* 12 chains: 16 vector registers hold them, m, c and a spare */
__attribute__((target("avx,fma"))) static float fma256(long iters)
{
    const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-3f);
#define INIT(i) __m256 a##i = _mm256_set1_ps((float)(i));
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define SUM(i) s = _mm256_add_ps(s, a##i);
    CHAINS(INIT)
    for (long k = 0; k < iters; k++) {
        CHAINS(STEP)
    }
    __m256 s = _mm256_setzero_ps();
    CHAINS(SUM)
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[7];
#undef INIT
#undef STEP
#undef SUM
}

__attribute__((target("avx,fma"))) static float fma128(long iters)
{
    const __m128 m = _mm_set1_ps(0.9999999f), c = _mm_set1_ps(1e-3f);
#define INIT(i) __m128 a##i = _mm_set1_ps((float)(i));
#define STEP(i) a##i = _mm_fmadd_ps(a##i, m, c);
#define SUM(i) s = _mm_add_ps(s, a##i);
    CHAINS(INIT)
    for (long k = 0; k < iters; k++) {
        CHAINS(STEP)
    }
    __m128 s = _mm_setzero_ps();
    CHAINS(SUM)
    float o[4];
    _mm_storeu_ps(o, s);
    return o[0] + o[3];
#undef INIT
#undef STEP
#undef SUM
}

int cpupeak_has_width(int bits)
{
    __builtin_cpu_init();
    if (bits == 512)
        return __builtin_cpu_supports("avx512f") ? 1 : 0;
    if (bits == 256 || bits == 128)
        return __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma") ? 1 : 0;
    return 0;
}

double cpupeak_fma_gflops(int bits, double secs)
{
    if (!cpupeak_has_width(bits))
        return 0;
    const long iters = 100000; /* 1.2-1.6 M FMAs: about 0.3-1 ms a chunk */
    const int chains = bits == 512 ? 16 : 12, lanes = bits / 32;
    double best = 0, t0 = now_s(), el;
    int chunks = 0;
    do {
        double t1 = now_s();
        float r = bits == 512 ? fma512(iters) : bits == 256 ? fma256(iters) : fma128(iters);
        double dt = now_s() - t1;
        g_sink = r;
        double gf = 2.0 * lanes * chains * (double)iters / dt * 1e-9;
        if (gf > best)
            best = gf;
        chunks++;
        el = now_s() - t0;
    } while (el < secs || chunks < 3);
    return best;
}

double cpupeak_clock_ghz(double secs)
{
    const long adds = 2000000; /* 2 M dependent adds: about 0.5-1 ms */
    double best = 0, t0 = now_s(), el;
    int chunks = 0;
    do {
        long x = 1, n = adds;
        const long y = 3;
        double t1 = now_s();
        /* register + register: a core cannot fold these at rename, as some
         * fold adds of an immediate (which would read as a clock of 20 GHz) */
        __asm__ volatile("1:\n\t"
                         "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
                         "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
                         "sub $8, %1\n\tjnz 1b"
                         : "+r"(x), "+r"(n)
                         : "r"(y)
                         : "cc");
        double dt = now_s() - t1;
        g_sink = (float)x;
        double ghz = (double)adds / dt * 1e-9;
        if (ghz > best)
            best = ghz;
        chunks++;
        el = now_s() - t0;
    } while (el < secs || chunks < 3);
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cpupeak_fma_per_cycle(int bits, double secs)
{
    if (!cpupeak_has_width(bits))
        return 0;
    double r[64], t0 = now_s();
    int n = 0;
    double before = cpupeak_clock_ghz(0);
    do {
        double gf = cpupeak_fma_gflops(bits, 0);
        double after = cpupeak_clock_ghz(0);
        r[n++] = gf / (0.5 * (before + after)) / (bits / 32) / 2;
        before = after;
    } while (n < 64 && (now_s() - t0 < secs || n < 3));
    qsort(r, (size_t)n, sizeof r[0], cmp_double);
    return n % 2 ? r[n / 2] : 0.5 * (r[n / 2 - 1] + r[n / 2]);
}

#else
double cpupeak_fma_per_cycle(int bits, double secs) { (void)bits; (void)secs; return 0; }
int cpupeak_has_width(int bits) { (void)bits; return 0; }
double cpupeak_fma_gflops(int bits, double secs) { (void)bits; (void)secs; return 0; }
double cpupeak_clock_ghz(double secs) { (void)secs; return 0; }
#endif

/* ---- caches -------------------------------------------------------------------------- */

size_t cpupeak_llc_bytes(void)
{
    size_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96], buf[32];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(buf, sizeof buf, f)) {
            char *end;
            unsigned long long v = strtoull(buf, &end, 10);
            if (*end == 'K')
                v <<= 10;
            else if (*end == 'M')
                v <<= 20;
            else if (*end == 'G')
                v <<= 30;
            if (v > best)
                best = (size_t)v;
        }
        fclose(f);
    }
    return best;
}

/* ---- bandwidth ------------------------------------------------------------------------- */

struct cpupeak_buf {
    size_t n;   /* floats per array, a multiple of CHUNK */
    size_t len; /* bytes mapped per array */
    float *a, *b, *c;
};

#define CHUNK 128 /* floats per step of every kernel */

/* The kernels in AVX-512 and AVX2 (8 independent accumulators for the sum, 4
 * vectors per step for the others) with a plain fallback: gcc -O2 would keep
 * a sum's accumulators in memory and read caches at a fraction of their
 * speed, and a bound must not be lower than what the forward gets. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) static float read512(const float *a, size_t n)
{
    __m512 s[8];
    for (int k = 0; k < 8; k++)
        s[k] = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += CHUNK)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            s[k] = _mm512_add_ps(s[k], _mm512_load_ps(a + i + 16 * k));
    for (int k = 1; k < 8; k++)
        s[0] = _mm512_add_ps(s[0], s[k]);
    return _mm512_reduce_add_ps(s[0]);
}

__attribute__((target("avx"))) static float read256(const float *a, size_t n)
{
    __m256 s[8];
    for (int k = 0; k < 8; k++)
        s[k] = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 64)
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            s[k] = _mm256_add_ps(s[k], _mm256_load_ps(a + i + 8 * k));
    for (int k = 1; k < 8; k++)
        s[0] = _mm256_add_ps(s[0], s[k]);
    float o[8];
    _mm256_storeu_ps(o, s[0]);
    return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}

__attribute__((target("avx512f"))) static void copy512(float *c, const float *a, size_t n)
{
    for (size_t i = 0; i < n; i += 64)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            _mm512_store_ps(c + i + 16 * k, _mm512_load_ps(a + i + 16 * k));
}

__attribute__((target("avx"))) static void copy256(float *c, const float *a, size_t n)
{
    for (size_t i = 0; i < n; i += 32)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            _mm256_store_ps(c + i + 8 * k, _mm256_load_ps(a + i + 8 * k));
}

__attribute__((target("avx512f"))) static void triad512(float *a, const float *b, const float *c,
                                                        float s, size_t n)
{
    const __m512 sv = _mm512_set1_ps(s);
    for (size_t i = 0; i < n; i += 64)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            _mm512_store_ps(a + i + 16 * k, _mm512_fmadd_ps(sv, _mm512_load_ps(c + i + 16 * k),
                                                            _mm512_load_ps(b + i + 16 * k)));
}

__attribute__((target("avx,fma"))) static void triad256(float *a, const float *b, const float *c,
                                                        float s, size_t n)
{
    const __m256 sv = _mm256_set1_ps(s);
    for (size_t i = 0; i < n; i += 32)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            _mm256_store_ps(a + i + 8 * k, _mm256_fmadd_ps(sv, _mm256_load_ps(c + i + 8 * k),
                                                           _mm256_load_ps(b + i + 8 * k)));
}
#endif

static float k_read(const float *a, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpupeak_has_width(512))
        return read512(a, n);
    if (cpupeak_has_width(256))
        return read256(a, n);
#endif
    float s[8] = { 0 };
    for (size_t i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += a[i + k];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

static void k_copy(float *c, const float *a, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpupeak_has_width(512)) {
        copy512(c, a, n);
        return;
    }
    if (cpupeak_has_width(256)) {
        copy256(c, a, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        c[i] = a[i];
}

static void k_triad(float *a, const float *b, const float *c, float s, size_t n)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (cpupeak_has_width(512)) {
        triad512(a, b, c, s, n);
        return;
    }
    if (cpupeak_has_width(256)) {
        triad256(a, b, c, s, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] + s * c[i];
}

/* An array of len bytes, 2 MB aligned and with transparent huge pages asked
 * for: far fewer page faults to set up a buffer of a gigabyte, and no TLB
 * misses in the way of the bandwidth. */
static float *map_array(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE);
#endif
    return p;
}

cpupeak_buf *cpupeak_buf_new(size_t bytes)
{
    cpupeak_buf *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->n = (bytes / sizeof(float) + CHUNK - 1) / CHUNK * CHUNK;
    if (b->n == 0)
        b->n = CHUNK;
    b->len = b->n * sizeof(float);
    b->a = map_array(b->len);
    b->b = map_array(b->len);
    b->c = map_array(b->len);
    if (!b->a || !b->b || !b->c) {
        cpupeak_buf_free(b);
        return NULL;
    }
    for (size_t i = 0; i < b->n; i++) { /* every page touched, small exact values */
        b->a[i] = 1.0f;
        b->b[i] = 2.0f;
        b->c[i] = 0.5f;
    }
    return b;
}

void cpupeak_buf_free(cpupeak_buf *b)
{
    if (!b)
        return;
    if (b->a)
        munmap(b->a, b->len);
    if (b->b)
        munmap(b->b, b->len);
    if (b->c)
        munmap(b->c, b->len);
    free(b);
}

size_t cpupeak_buf_bytes(const cpupeak_buf *b) { return b->n * sizeof(float); }

double cpupeak_bandwidth(cpupeak_buf *b, cpupeak_kernel k, double secs)
{
    const double arrays = k == CPUPEAK_READ ? 1 : k == CPUPEAK_COPY ? 2 : 3;
    const double bytes = arrays * (double)b->n * sizeof(float);
    double best = 0, t0 = now_s(), el;
    int passes = 0;
    do {
        double t1 = now_s();
        switch (k) {
        case CPUPEAK_READ: g_sink = k_read(b->a, b->n); break;
        case CPUPEAK_COPY: k_copy(b->c, b->a, b->n); break;
        case CPUPEAK_TRIAD: k_triad(b->a, b->b, b->c, 0.5f, b->n); break;
        }
        double dt = now_s() - t1;
        if (k != CPUPEAK_READ)
            g_sink = b->a[b->n / 2] + b->c[b->n / 3];
        double gbs = bytes / dt * 1e-9;
        if (gbs > best)
            best = gbs;
        passes++;
        el = now_s() - t0;
    } while (el < secs || passes < 2);
    return best;
}
