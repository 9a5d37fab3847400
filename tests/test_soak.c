/* test_soak.c -- a short run of the chaos soak (`make soak` runs it for 10
 * minutes on the digits models): a small random set, 2 replicas per expert,
 * replicas killed and stopped every 2.5 s under 8 connections for 10 s. No
 * request may fail, and the soak must report what it measured. */
#include <libgen.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "tests/support/proc.h"
#include "tests/support/toyset.h"

static char soak_bin[512];

static void test_soak_smoke(void **state)
{
    (void)state;
    char dir[128], log[256], bins[256];
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "test-soak"), 0);
    assert_int_equal(toyset_write(dir, 3, 16, 3, 9), 0);
    snprintf(log, sizeof log, "%s/soak.out", dir);
    proc_bin("", bins, sizeof bins);
    bins[strlen(bins) - 1] = '\0'; /* the directory */
    char *argv[] = { soak_bin, "--models", dir, "--bin", bins, "--seconds", "10", "--interval",
                     "2.5", "--down", "1", "--clients", "8", "--seed", "3", NULL };
    int st = proc_wait(proc_start(argv, log), 120000);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char out[8192];
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    fclose(f);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("soak failed (status 0x%x):\n%s", st, out);
    if (!strstr(out, "| requests served | failed |") || !strstr(out, "| router |"))
        fail_msg("soak output lacks its tables:\n%s", out);
    toyset_rmdir(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    signal(SIGPIPE, SIG_IGN);
    char self[512]; /* $(BUILD)/tests/test_soak -> $(BUILD)/soak/soak */
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(soak_bin, sizeof soak_bin, "%s/../soak/soak", dirname(self));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soak_smoke),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
