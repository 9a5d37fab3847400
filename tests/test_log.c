/* test_log.c -- rate-limited log lines: the first N of a window print, the
 * rest become one summary line with their count; call-site and per-key
 * limiters are independent. stderr is captured in a file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/log.h"

static char path[] = "/tmp/ddm-test-log-XXXXXX";
static int saved_fd = -1;

/* Points stderr at a fresh temp file. */
static int capture(void **state)
{
    (void)state;
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    fflush(stderr);
    saved_fd = dup(2);
    dup2(fd, 2);
    close(fd);
    return 0;
}

static int restore(void **state)
{
    (void)state;
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    unlink(path);
    return 0;
}

/* Empties the captured log. */
static void reset_log(void)
{
    fflush(stderr);
    assert_int_equal(ftruncate(2, 0), 0);
    lseek(2, 0, SEEK_SET);
}

/* Lines of the captured log that contain s (the last one into last). */
static int count_lines(const char *s, char *last, size_t lastlen)
{
    fflush(stderr);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, s)) {
            n++;
            if (last)
                snprintf(last, lastlen, "%s", line);
        }
    fclose(f);
    return n;
}

static void test_burst_then_summary(void **state)
{
    (void)state;
    log_limit l;
    log_limit_init(&l, 5, 200);
    for (int i = 0; i < 1000; i++)
        log_limited(&l, LOG_WARN, "bad message %d from peer", i);
    char last[2048];
    assert_int_equal(count_lines("bad message", NULL, 0), 5);
    log_limit_flush(&l, 0); /* the window is still open: nothing yet */
    assert_int_equal(count_lines("suppressed", NULL, 0), 0);
    usleep(250000);
    log_limit_flush(&l, 0);
    assert_int_equal(count_lines("suppressed 995 similar messages", last, sizeof last), 1);
    assert_non_null(strstr(last, "bad message 5 from peer")); /* the first one left out */
    assert_non_null(strstr(last, "WARN"));
    reset_log();
    /* a new window prints again */
    log_limited(&l, LOG_WARN, "bad message again");
    assert_int_equal(count_lines("bad message again", NULL, 0), 1);
    log_limit_flush(&l, 1); /* nothing suppressed: nothing to say */
    assert_int_equal(count_lines("suppressed", NULL, 0), 0);
    reset_log();
}

/* The summary also comes with the next line once the window has ended. */
static void test_summary_before_next_line(void **state)
{
    (void)state;
    log_limit l;
    log_limit_init(&l, 2, 100);
    for (int i = 0; i < 10; i++)
        log_limited(&l, LOG_ERROR, "flood %d", i);
    usleep(150000);
    log_limited(&l, LOG_ERROR, "after the flood");
    fflush(stderr);
    FILE *f = fopen(path, "r");
    char line[2048], order[3][64];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < 3)
        if (strstr(line, "suppressed") || strstr(line, "after the flood"))
            snprintf(order[n++], sizeof order[0], "%s",
                     strstr(line, "suppressed") ? "summary" : "next");
    fclose(f);
    assert_int_equal(n, 2);
    assert_string_equal(order[0], "summary");
    assert_string_equal(order[1], "next");
    assert_int_equal(count_lines("suppressed 8 similar", NULL, 0), 1);
    reset_log();
}

static void flood_site_a(int n)
{
    for (int i = 0; i < n; i++)
        log_warn_limited("site a %d", i);
}

static void flood_site_b(int n)
{
    for (int i = 0; i < n; i++)
        log_warn_limited("site b %d", i);
}

/* Call sites are limited apart; log_flush_suppressed reports each. */
static void test_call_sites(void **state)
{
    (void)state;
    flood_site_a(500);
    flood_site_b(3);
    assert_int_equal(count_lines("site a", NULL, 0), LOG_LIMIT_BURST);
    flood_site_b(500);
    assert_int_equal(count_lines("site b", NULL, 0), LOG_LIMIT_BURST);
    reset_log();
    usleep((LOG_LIMIT_WINDOW_MS + 100) * 1000);
    log_flush_suppressed();
    assert_int_equal(count_lines("suppressed 490 similar", NULL, 0), 1); /* site a */
    assert_int_equal(count_lines("suppressed 493 similar", NULL, 0), 1); /* site b */
    reset_log();
    log_flush_suppressed();
    assert_int_equal(count_lines("suppressed", NULL, 0), 0);
}

/* Below the level set, nothing is printed nor counted. */
static void test_level(void **state)
{
    (void)state;
    log_limit l;
    log_limit_init(&l, 1, 50);
    log_set_level(LOG_ERROR);
    for (int i = 0; i < 10; i++)
        log_limited(&l, LOG_WARN, "quiet %d", i);
    log_set_level(LOG_INFO);
    usleep(60000);
    log_limit_flush(&l, 0);
    assert_int_equal(count_lines("quiet", NULL, 0), 0);
    assert_int_equal(count_lines("suppressed", NULL, 0), 0);
    reset_log();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_summary),
        cmocka_unit_test(test_summary_before_next_line),
        cmocka_unit_test(test_call_sites),
        cmocka_unit_test(test_level),
    };
    /* TAP output goes to stdout, the captured log is stderr */
    return cmocka_run_group_tests(tests, capture, restore);
}
