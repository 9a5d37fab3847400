/* test_browser.c -- the web playground in a real browser: the shipped digits
 * cluster (8 ddm-expert workers and ddm-router on loopback), and headless
 * Chromium driven by tests/browser/playground.mjs (puppeteer-core). The router
 * runs with bearer tokens: the page loads without one (it is public) and shows
 * the API's 401, then takes the token in its field; it submits a job, sees
 * progress, a preview, the final grid and the heat map, cancels a long job and
 * saves a screenshot (out/playground.png; DDM_SCREENSHOT=docs/playground.png
 * refreshes the one in the docs). */
#include <setjmp.h>
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

#include "tests/support/cluster.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

#define TOKEN "playground-test-token-0123456789"

static void test_playground(void **state)
{
    (void)state;
    if (access("/usr/bin/chromium", X_OK) != 0 || access("node_modules/puppeteer-core", R_OK) != 0)
        fail_msg("chromium or puppeteer-core is missing: run make deps");
    /* 5 ms batching delay: a 100-step job runs for a second or more, so the page
     * sees it run; a 1000-step one for long enough to cancel */
    char dir[128], tokens[200];
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "browser"), 0);
    snprintf(tokens, sizeof tokens, "%s/tokens", dir);
    FILE *f = fopen(tokens, "w");
    assert_non_null(f);
    fprintf(f, "browser:" TOKEN "\n");
    fclose(f);
    chmod(tokens, 0600);
    tcluster tc;
    static const char *const wargs[] = { "--max-delay-us", "5000", NULL };
    const char *const rargs[] = { "--auth-token-file", tokens, NULL };
    if (tcluster_start(&tc, "models/digits", 8, 1, wargs, rargs)) {
        tcluster_stop(&tc, 0);
        toyset_rmdir(dir);
        fail_msg("cluster did not start");
    }
    const char *shot = getenv("DDM_SCREENSHOT") ? getenv("DDM_SCREENSHOT") : "out/playground.png";
    char url[100];
    snprintf(url, sizeof url, "http://%s/", tc.hostport);
    char *argv[] = { "/usr/bin/env", "node", "tests/browser/playground.mjs", url, (char *)shot,
                     TOKEN, NULL };
    pid_t pid = proc_start(argv, NULL == getenv("DDM_BROWSER_LOG") ? "/dev/stderr" : getenv("DDM_BROWSER_LOG"));
    int st = proc_wait(pid, 240000);
    if (st == -1)
        proc_stop(pid, SIGKILL, 1000);
    if (!(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
        proc_dump_log(tc.rlog);
    tcluster_stop(&tc, 0);
    toyset_rmdir(dir);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_playground),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
