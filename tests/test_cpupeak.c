/* test_cpupeak.c -- the FMA, clock and bandwidth measures return sane
 * numbers. Speeds are never asserted (the machine is shared): only that each
 * figure is positive and finite where the CPU has the feature, and 0 where it
 * does not. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "common/cpupeak.h"

static void test_fma(void **state)
{
    (void)state;
    int widths = 0;
    for (int bits = 128; bits <= 512; bits *= 2) {
        double gf = cpupeak_fma_gflops(bits, 0.01);
        print_message("# fp32 FMA, %d-bit vectors: %.1f GFLOP/s\n", bits, gf);
        double per_cycle = cpupeak_fma_per_cycle(bits, 0.01);
        print_message("# FMAs per cycle at %d bits: %.2f\n", bits, per_cycle);
        if (cpupeak_has_width(bits)) {
            assert_true(isfinite(gf) && gf > 0);
            assert_true(isfinite(per_cycle) && per_cycle > 0);
            widths++;
        } else {
            assert_true(gf == 0 && per_cycle == 0);
        }
    }
    assert_true(cpupeak_fma_gflops(64, 0.01) == 0); /* no such width */
#if defined(__x86_64__)
    assert_true(widths > 0 || !cpupeak_has_width(256)); /* x86-64 CPUs since 2013 have FMA */
    double ghz = cpupeak_clock_ghz(0.01);
    print_message("# clock %.2f GHz\n", ghz);
    assert_true(isfinite(ghz) && ghz > 0);
#endif
}

static void test_bandwidth(void **state)
{
    (void)state;
    cpupeak_buf *b = cpupeak_buf_new(1000); /* rounded up to whole steps */
    assert_non_null(b);
    assert_true(cpupeak_buf_bytes(b) >= 1000 && cpupeak_buf_bytes(b) % 256 == 0);
    cpupeak_buf_free(b);
    b = cpupeak_buf_new(4 << 20);
    assert_non_null(b);
    static const char *names[] = { "read", "copy", "triad" };
    for (int k = CPUPEAK_READ; k <= CPUPEAK_TRIAD; k++) {
        double gbs = cpupeak_bandwidth(b, (cpupeak_kernel)k, 0.005);
        print_message("# %s over 4 MiB: %.1f GB/s\n", names[k], gbs);
        assert_true(isfinite(gbs) && gbs > 0);
    }
    cpupeak_buf_free(b);
    cpupeak_buf_free(NULL);
    size_t llc = cpupeak_llc_bytes();
    print_message("# largest cache: %zu bytes\n", llc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fma),
        cmocka_unit_test(test_bandwidth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
