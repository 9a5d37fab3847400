/* cpupeak.h -- what one core of this machine can do at most, measured: fp32
 * FMA throughput per vector width, the core clock, and memory bandwidth.
 *
 * The benchmarks report a forward pass as a share of these physical limits
 * (docs/benchmarks.md), not of another library's speed. Every function here
 * measures: nothing is taken from a table of CPU models. On a shared machine
 * a measure is only as good as the core time it got: callers take medians of
 * repeats interleaved with what they compare it to. */
#ifndef DDM_CPUPEAK_H
#define DDM_CPUPEAK_H

#include <stddef.h>

/* 1 if this CPU runs fp32 FMA on vectors of `bits` (128 and 256: FMA3 with
 * AVX; 512: AVX-512F), else 0. */
int cpupeak_has_width(int bits);

/* fp32 GFLOP/s of one thread running independent FMA chains (enough of them
 * to cover the FMA latency of every unit) on vectors of `bits` for about secs
 * (at least a few ms). An FMA counts 2 FLOPs per lane. 0 when the CPU lacks
 * that width (cpupeak_has_width). */
double cpupeak_fma_gflops(int bits, double secs);

/* The clock of this core in GHz while it runs scalar code, from the time of a
 * chain of dependent register-to-register integer adds (one per cycle on
 * every x86-64 core), for about secs. 0 where not measured (not x86-64).
 * Wide vector code may run at a lower clock than this. */
double cpupeak_clock_ghz(double secs);

/* FMA instructions per clock cycle on vectors of `bits` (the FMA units the
 * core keeps busy): the median over about secs of pairs of short runs, the
 * FMA loop's rate over the clock (cpupeak_clock_ghz) measured just before
 * and after, so both see the same turbo state. 0 where not measured. A
 * value under the unit count means wide vectors run at a lower clock. */
double cpupeak_fma_per_cycle(int bits, double secs);

/* Size in bytes of the largest CPU cache sysfs reports, 0 if unknown. */
size_t cpupeak_llc_bytes(void);

typedef enum cpupeak_kernel {
    CPUPEAK_READ,  /* sum of a: bytes counted = 1 array */
    CPUPEAK_COPY,  /* c = a: 2 arrays (STREAM's count; write-allocate not counted) */
    CPUPEAK_TRIAD, /* a = b + s c: 3 arrays (STREAM's count) */
} cpupeak_kernel;

/* Three arrays of `bytes` each (rounded up to 256 bytes), touched once so
 * that their pages exist. NULL when out of memory. */
typedef struct cpupeak_buf cpupeak_buf;
cpupeak_buf *cpupeak_buf_new(size_t bytes);
void cpupeak_buf_free(cpupeak_buf *b);
size_t cpupeak_buf_bytes(const cpupeak_buf *b);

/* GB/s (1e9 bytes) of kernel k over b's arrays: the best of short passes
 * run for about secs (at least two passes). Buffers larger than the caches
 * give memory bandwidth; a buffer the size of a working set gives the
 * bandwidth that working set is read at from where it lives. */
double cpupeak_bandwidth(cpupeak_buf *b, cpupeak_kernel k, double secs);

#endif
