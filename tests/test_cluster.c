/* test_cluster.c -- the cluster file parser: directives, replica attributes, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/err.h"
#include "router/cluster.h"

#define HASH "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

static void test_attributes_parsed(void **state)
{
    (void)state;
    const char *text = "models m\n"
                       "expert 0 tcp://127.0.0.1:7100 sha256=" HASH "\n"
                       "expert 0 tcp://127.0.0.1:7110 impl=torch\n"
                       "expert 1 ipc:///tmp/x.ipc impl=c sha256=9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n";
    cluster c;
    char err[256];
    assert_int_equal(cluster_parse(text, "t.conf", &c, err, sizeof err), 0);
    assert_int_equal(c.n_experts, 2);
    assert_int_equal(c.experts[0].n_replicas, 2);
    assert_string_equal(c.experts[0].sha256[0], HASH);
    assert_string_equal(c.experts[0].impl[0], "c");
    assert_string_equal(c.experts[0].sha256[1], "");
    assert_string_equal(c.experts[0].impl[1], "torch");
    assert_string_equal(c.experts[1].sha256[0], HASH); /* upper case folded */
    assert_string_equal(c.experts[1].impl[0], "c");
    cluster_free(&c);
}

static void expect_error(const char *text, const char *needle)
{
    cluster c;
    char err[256] = "";
    assert_int_not_equal(cluster_parse(text, "t.conf", &c, err, sizeof err), 0);
    if (!strstr(err, needle)) {
        fprintf(stderr, "error \"%s\" does not mention \"%s\"\n", err, needle);
        fail();
    }
}

static void test_bad_attributes_refused(void **state)
{
    (void)state;
    expect_error("models m\nexpert 0 tcp://h:1 sha256=abc\n", "t.conf:2: sha256 must be 64 hex");
    expect_error("models m\nexpert 0 tcp://h:1 sha256=" HASH "zz\n", "64 hex");
    expect_error("models m\nexpert 0 tcp://h:1 impl=rust\n", "impl \"rust\" is unknown");
    expect_error("models m\nexpert 0 tcp://h:1 colour=red\n", "unknown attribute \"colour\"");
    expect_error("models m\nexpert 0 tcp://h:1 justaword\n", "is not an attribute");
    expect_error("models m\nexpert 0 tcp://h:1 =x\n", "is not an attribute");
    expect_error("models m\nexpert 0\n", "expected \"expert <id> <url>");
}

static void test_directory_is_not_a_cluster_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/ddm-test-cluster-XXXXXX";
    assert_non_null(mkdtemp(dir));
    cluster c;
    char err[256] = "";
    assert_int_not_equal(cluster_load(dir, &c, err, sizeof err), 0);
    assert_non_null(strstr(err, "not a regular file (a directory)"));
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attributes_parsed),
        cmocka_unit_test(test_bad_attributes_refused),
        cmocka_unit_test(test_directory_is_not_a_cluster_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
