/* test_auth.c -- router/auth: the token file (real files in a temp dir), the
 * Authorization header check, reloads that keep a token's state, refusals that
 * name the line and never the token. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "router/auth.h"
#include "tests/support/toyset.h"

static char dir[128], path[256];

#define ALICE "0123456789abcdef0123456789abcdef"
#define BOB "Zm9vYmFyYmF6cXV4cXV1eA=="
#define CAROL "carol-token-1234567890"

static void write_file(const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, 0600);
}

static int setup(void **state)
{
    (void)state;
    if (toyset_tempdir(dir, sizeof dir, "test-auth"))
        return -1;
    snprintf(path, sizeof path, "%s/tokens", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    toyset_rmdir(dir);
    return 0;
}

static auth *load_ok(const char *text)
{
    write_file(text);
    auth_defaults d;
    auth_defaults_init(&d);
    auth *a = NULL;
    char warn[256], err[256];
    if (auth_load(path, &d, &a, warn, sizeof warn, err, sizeof err))
        fail_msg("%s", err);
    assert_string_equal(warn, "");
    return a;
}

static void test_check(void **state)
{
    (void)state;
    auth *a = load_ok("# tokens\n\nalice:" ALICE " concurrency=2 queue=5\n  " BOB "  # bob\n");
    assert_int_equal(auth_count(a), 2);
    auth_token *t = auth_check(a, "Bearer " ALICE);
    assert_non_null(t);
    assert_string_equal(t->name, "alice");
    assert_int_equal(t->concurrency, 2);
    assert_int_equal(t->queue, 5);
    t = auth_check(a, "bearer   " BOB); /* the scheme is case-insensitive */
    assert_non_null(t);
    assert_string_equal(t->name, "token-4"); /* unnamed: by its line */
    assert_int_equal(t->concurrency, 4);     /* the defaults */
    assert_int_equal(t->queue, 16);
    assert_null(auth_check(a, NULL));
    assert_null(auth_check(a, ""));
    assert_null(auth_check(a, ALICE));                  /* no scheme */
    assert_null(auth_check(a, "Basic " ALICE));
    assert_null(auth_check(a, "Bearer"));
    assert_null(auth_check(a, "Bearer " ALICE "x"));    /* one byte more */
    assert_null(auth_check(a, "Bearer 0123456789abcdef0123456789abcdeF"));
    assert_null(auth_check(a, "Bearer " ALICE " extra"));
    assert_null(auth_check(a, "Bearer alice:" ALICE));
    auth_free(a);
}

/* Refusals name the file and line, and never hold the token text. */
static void test_refusals(void **state)
{
    (void)state;
    static const struct { const char *text, *msg; } bad[] = {
        { "alice:short\n", ":1: the token of \"alice\" must be 16..256" },
        { "\n\nalice:" ALICE "\nbob:" ALICE "\n", ":4: \"bob\" has the same token as \"alice\"" },
        { "alice:" ALICE "\nalice:" BOB "\n", ":2: a second token named \"alice\"" },
        { "al ice:" ALICE "\n", ":1: the token of \"token-1\"" },
        { "al/ice:" ALICE "\n", ":1: a token's name may hold" },
        { ":" ALICE "\n", ":1: a token's name is 1..64" },
        { "alice:" ALICE " concurrency=0\n", ":1: \"concurrency=0\"" },
        { "alice:" ALICE " queue=x\n", ":1: \"queue=x\"" },
        { "alice:" ALICE " speed=3\n", ":1: \"speed=3\"" },
        { "alice:0123456789abcdef0123456789abcde\"\n", ":1: the token of \"alice\"" },
        { "# nothing\n\n", "holds no token" },
    };
    auth_defaults d;
    auth_defaults_init(&d);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(bad[i].text);
        auth *a = NULL;
        char warn[256], err[256];
        assert_int_not_equal(auth_load(path, &d, &a, warn, sizeof warn, err, sizeof err), 0);
        assert_null(a);
        if (!strstr(err, bad[i].msg))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, bad[i].msg);
        if (strstr(err, ALICE) || strstr(err, BOB) || strstr(err, "short"))
            fail_msg("case %zu: the message shows a token: %s", i, err);
    }
    /* not a regular file: a directory, a FIFO (which must not hang the reader) */
    auth *a = NULL;
    char warn[256], err[256];
    assert_int_not_equal(auth_load(dir, &d, &a, warn, sizeof warn, err, sizeof err), 0);
    assert_non_null(strstr(err, "not a regular file"));
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_not_equal(auth_load(fifo, &d, &a, warn, sizeof warn, err, sizeof err), 0);
    assert_non_null(strstr(err, "not a regular file"));
    assert_int_not_equal(auth_load("/nonexistent/tokens", &d, &a, warn, sizeof warn, err,
                                   sizeof err), 0);
    assert_non_null(strstr(err, "/nonexistent/tokens"));
    /* others may read it: loads, with a warning */
    write_file("alice:" ALICE "\n");
    chmod(path, 0644);
    assert_int_equal(auth_load(path, &d, &a, warn, sizeof warn, err, sizeof err), 0);
    assert_non_null(strstr(warn, "chmod 600"));
    auth_free(a);
}

/* A reload keeps the object (and so the running counts) of a token still in
 * the file, applies its new limits, drops removed tokens once released, and a
 * bad file changes nothing. */
static void test_reload(void **state)
{
    (void)state;
    auth *a = load_ok("alice:" ALICE "\nbob:" BOB "\n");
    auth_token *alice = auth_check(a, "Bearer " ALICE);
    auth_token *bob = auth_check(a, "Bearer " BOB);
    auth_token_hold(alice);
    auth_token_hold(bob); /* requests in flight */
    alice->running = 3;
    write_file("alice:" ALICE " concurrency=9\ncarol:" CAROL "\n");
    char warn[256], err[256];
    assert_int_equal(auth_reload(a, warn, sizeof warn, err, sizeof err), 0);
    assert_int_equal(auth_count(a), 2);
    assert_ptr_equal(auth_check(a, "Bearer " ALICE), alice);
    assert_int_equal(alice->running, 3);
    assert_int_equal(alice->concurrency, 9);
    assert_null(auth_check(a, "Bearer " BOB));
    assert_non_null(auth_check(a, "Bearer " CAROL));
    assert_string_equal(bob->name, "bob"); /* still valid for its request */
    auth_token_release(bob);
    write_file("alice:tooshort\n");
    assert_int_not_equal(auth_reload(a, warn, sizeof warn, err, sizeof err), 0);
    assert_ptr_equal(auth_check(a, "Bearer " ALICE), alice); /* unchanged */
    assert_non_null(auth_check(a, "Bearer " CAROL));
    auth_token_release(alice);
    auth_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
