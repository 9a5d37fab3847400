/* half_gemm.c -- fp32 activations times fp16 weights, AVX-512 (see half_gemm.h).
 *
 * C is computed in tiles of up to GROUP_ROWS rows by 64 columns (4 vectors):
 * 24 accumulators, 4 converted weight vectors and a broadcast fit the 32
 * vector registers, and each k step does 4 loads for 4 x rows FMAs. The weight
 * panel of a column tile (k x 64 halves, 100 KB for k = 784) is read from L3
 * once and from L2 by the following row groups. Columns past the last full
 * tile go 16 at a time. */
#include "common/half_gemm.h"

#include <string.h>

#include "common/st.h"

#define GROUP_ROWS 6

/* The AVX-512 kernel is GCC's (its pragmas); other compilers (clang, used for
 * the fuzz build) get half_gemm_supported() = 0 and the fp32 path. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HALF_GEMM_AVX512 1
#endif

static int g_rows = HALF_GEMM_DEFAULT_ROWS;

int half_gemm_rows(void) { return __atomic_load_n(&g_rows, __ATOMIC_RELAXED); }

void half_gemm_set_rows(int rows) { __atomic_store_n(&g_rows, rows < 0 ? 0 : rows, __ATOMIC_RELAXED); }

int half_gemm_supported(void)
{
#ifdef HALF_GEMM_AVX512
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") ? 1 : 0;
    }
    return known;
#else
    return 0;
#endif
}

int half_copy_exact(const float *x, uint16_t *h, size_t n)
{
    int exact = 1;
    for (size_t i = 0; i < n; i++) {
        h[i] = st_f32_to_f16(x[i]);
        float back = st_f16_to_f32(h[i]);
        if (memcmp(&back, &x[i], sizeof back) != 0) /* also tells -0 from 0 */
            exact = 0;
    }
    return exact;
}

#ifdef HALF_GEMM_AVX512
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

static inline __m512 load_half16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* rows x (16 * VECS) tile of C; rows and VECS are constants after inlining,
 * so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(int rows, int vecs, int k, const float *a,
                                                       const uint16_t *b, int n, float beta,
                                                       float *c)
{
    __m512 acc[GROUP_ROWS][4];
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < vecs; v++)
            acc[r][v] = _mm512_setzero_ps();
    for (int kk = 0; kk < k; kk++) {
        const uint16_t *bk = b + (size_t)kk * n;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < vecs; v++)
            bv[v] = load_half16(bk + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            __m512 ar = _mm512_set1_ps(a[(size_t)r * k + kk]);
#pragma GCC unroll 4
            for (int v = 0; v < vecs; v++)
                acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 4
        for (int v = 0; v < vecs; v++) {
            float *cp = c + (size_t)r * n + 16 * v;
            __m512 y = acc[r][v];
            if (beta != 0.0f)
                y = _mm512_add_ps(y, _mm512_loadu_ps(cp));
            _mm512_storeu_ps(cp, y);
        }
}

/* One row group (1..GROUP_ROWS rows) across all n columns. */
#define TILE_CASES(vecs)                                                                           \
    switch (rows) {                                                                                \
    case 1: tile(1, vecs, k, a, b, n, beta, c); break;                                             \
    case 2: tile(2, vecs, k, a, b, n, beta, c); break;                                             \
    case 3: tile(3, vecs, k, a, b, n, beta, c); break;                                             \
    case 4: tile(4, vecs, k, a, b, n, beta, c); break;                                             \
    case 5: tile(5, vecs, k, a, b, n, beta, c); break;                                             \
    default: tile(6, vecs, k, a, b, n, beta, c); break;                                            \
    }

static void tile_64(int rows, int k, const float *a, const uint16_t *b, int n, float beta, float *c)
{
    TILE_CASES(4)
}

static void tile_16(int rows, int k, const float *a, const uint16_t *b, int n, float beta, float *c)
{
    TILE_CASES(1)
}

void half_gemm(int m, int n, int k, const float *a, const uint16_t *b, float beta, float *c)
{
    const int groups = (m + GROUP_ROWS - 1) / GROUP_ROWS;
    for (int j = 0; j < n;) {
        const int wide = n - j >= 64;
        /* even groups: 8 rows are 4 + 4, not 6 + 2 */
        for (int g = 0, r0 = 0; g < groups; g++) {
            int rows = (m - r0) / (groups - g);
            const float *ar = a + (size_t)r0 * k;
            float *cr = c + (size_t)r0 * n + j;
            if (wide)
                tile_64(rows, k, ar, b + j, n, beta, cr);
            else
                tile_16(rows, k, ar, b + j, n, beta, cr);
            r0 += rows;
        }
        j += wide ? 64 : 16;
    }
}
#pragma GCC pop_options

#else
void half_gemm(int m, int n, int k, const float *a, const uint16_t *b, float beta, float *c)
{
    (void)m; (void)n; (void)k; (void)a; (void)b; (void)beta; (void)c;
    /* unreachable: half_gemm_supported() is 0 here */
}
#endif
