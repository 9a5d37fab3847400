/* test_router_args.c -- ddm-router's options table (router/args): flags, the
 * cluster file's settings (flags win), the messages of bad values, and --help
 * naming every option with its default. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/log.h"
#include "router/args.h"
#include "router/cluster.h"

static router_args_result parse(router_opts *o, char *err, size_t errlen, ...)
{
    char *argv[32] = { "ddm-router" };
    int argc = 1;
    va_list ap;
    va_start(ap, errlen);
    for (char *a; argc < 31 && (a = va_arg(ap, char *));)
        argv[argc++] = a;
    va_end(ap);
    FILE *out = fopen("/dev/null", "w");
    router_args_result r = router_args_parse(argc, argv, o, out, err, errlen);
    fclose(out);
    return r;
}

static char *help_text(void)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    router_args_usage(f);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Every option is in --help, each number with the default the parser starts from. */
static void test_help_has_every_default(void **state)
{
    (void)state;
    router_opts o;
    char err[256];
    assert_int_equal(parse(&o, err, sizeof err, "--cluster", "x.conf", NULL), ROUTER_ARGS_RUN);
    static const struct { const char *name; size_t off; } nums[] = {
#define N(name, field) { name, offsetof(router_opts, field) }
        N("max-images", max_images), N("max-request-cost", max_request_cost),
        N("tick-capacity", tick_capacity), N("tick-rows", tick_rows),
        N("share-rows", share_rows), N("ticks", ticks), N("threads", threads),
        N("expert-timeout-ms", expert_timeout_ms), N("attempts", attempts),
        N("request-timeout-ms", request_timeout_ms), N("max-connections", max_connections),
        N("max-connections-per-ip", max_connections_per_ip), N("max-body-bytes", max_body_bytes),
        N("drain-timeout-ms", drain_timeout_ms), N("token-concurrency", token_concurrency),
        N("token-queue", token_queue), N("job-ttl-s", job_ttl_s), N("job-store-mb", job_store_mb),
        N("max-subscribers", max_subscribers), N("sse-heartbeat-ms", sse_heartbeat_ms),
#undef N
    };
    char *help = help_text();
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        char flag[64], def[64];
        snprintf(flag, sizeof flag, "--%s ", nums[i].name);
        long v = *(long *)((char *)&o + nums[i].off);
        snprintf(def, sizeof def, "(default %ld)", v);
        const char *at = strstr(help, flag);
        if (!at)
            fail_msg("--help lacks %s", flag);
        const char *next = strstr(at + 1, "\n      --"); /* the next option */
        const char *d = strstr(at, def);
        if (!d || (next && d > next))
            fail_msg("--help does not give %s its default %s", flag, def);
    }
    static const char *const others[] = { "--cluster FILE", "--listen HOST:PORT",
                                          "--router-weights PATH", "--auth-token-file FILE",
                                          "--public-metrics", "--public-experts",
                                          "--log-level LEVEL", "(default info)", "--help",
                                          "--cors-origin ORIGIN", "default: none, CORS off",
                                          "--version", "127.0.0.1:8080" };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        if (!strstr(help, others[i]))
            fail_msg("--help lacks %s", others[i]);
    free(help);
    assert_int_equal(o.max_images, 1024);
    assert_null(o.listen);
    assert_int_equal(o.public_metrics, 0);
}

static void test_flags(void **state)
{
    (void)state;
    router_opts o;
    char err[256];
    assert_int_equal(parse(&o, err, sizeof err, "-c", "a.conf", "--max-images", "12",
                           "--public-experts", "--listen", "0.0.0.0:1", "--auth-token-file", "t",
                           "--log-level", "warn", "--cors-origin", "http://a.test:3000",
                           "--cors-origin", "*", "--job-ttl-s", "7", NULL), ROUTER_ARGS_RUN);
    assert_string_equal(o.cluster, "a.conf");
    assert_int_equal(o.max_images, 12);
    assert_int_equal(o.public_experts, 1);
    assert_string_equal(o.listen, "0.0.0.0:1");
    assert_string_equal(o.auth_file, "t");
    assert_string_equal(o.log_level, "warn");
    assert_int_equal(o.cors.n, 2); /* repeatable */
    assert_string_equal(o.cors.origins[0], "http://a.test:3000");
    assert_int_equal(o.job_ttl_s, 7);
    log_set_level(LOG_INFO);
    static const struct { const char *a, *b, *msg; } bad[] = {
        { "--ticks", "9", "--ticks \"9\": expected an integer 1..8" },
        { "--ticks", "2x", "expected an integer" },
        { "--max-request-cost", "0", "1..1000000000000" },
        { "--log-level", "loud", "debug, info, warn, error or off" },
        { "--cors-origin", "http://a.test/path", "scheme://host[:port], no path" },
        { "--max-subscribers", "0", "--max-subscribers \"0\": expected an integer 1..1024" },
        { "--bogus", NULL, "unknown option \"--bogus\"" },
        { "stray", NULL, "unexpected argument \"stray\"" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(parse(&o, err, sizeof err, "--cluster", "a.conf", bad[i].a, bad[i].b, NULL),
                         ROUTER_ARGS_USAGE);
        if (!strstr(err, bad[i].msg))
            fail_msg("%s: \"%s\" lacks \"%s\"", bad[i].a, err, bad[i].msg);
    }
    assert_int_equal(parse(&o, err, sizeof err, "--max-images", "3", NULL), ROUTER_ARGS_USAGE);
    assert_non_null(strstr(err, "--cluster FILE is required"));
    assert_int_equal(parse(&o, err, sizeof err, "--cluster", NULL), ROUTER_ARGS_USAGE);
    assert_non_null(strstr(err, "needs a value"));
    assert_int_equal(parse(&o, err, sizeof err, "--version", NULL), ROUTER_ARGS_EXIT);
    assert_int_equal(parse(&o, err, sizeof err, "-h", NULL), ROUTER_ARGS_EXIT);
}

static void load(cluster *cl, const char *settings)
{
    char text[1024], err[256];
    snprintf(text, sizeof text, "models /m\nexpert 0 tcp://127.0.0.1:1\n%s", settings);
    if (cluster_parse(text, "c.conf", cl, err, sizeof err))
        fail_msg("%s", err);
}

/* The cluster file's "set" lines reach every settable option; flags win. */
static void test_settings(void **state)
{
    (void)state;
    router_opts o;
    char err[256];
    assert_int_equal(parse(&o, err, sizeof err, "--cluster", "c.conf", "--ticks", "3", NULL),
                     ROUTER_ARGS_RUN);
    cluster cl;
    load(&cl, "set max-images 512\nset ticks 5\nset public-metrics yes\nset auth-token-file /t\n"
              "set max-request-cost 99\nset bogus 1\nset other 2\nset job-store-mb 3\n"
              "set cors-origin http://a.test\nset cors-origin http://b.test:8000\n");
    int unknown = -1;
    assert_int_equal(router_args_settings(&o, &cl, &unknown, err, sizeof err), 0);
    assert_int_equal(o.max_images, 512);
    assert_int_equal(o.ticks, 3); /* the flag wins */
    assert_int_equal(o.public_metrics, 1);
    assert_string_equal(o.auth_file, "/t");
    assert_int_equal(o.max_request_cost, 99);
    assert_int_equal(o.job_store_mb, 3);
    assert_int_equal(o.cors.n, 2); /* both lines */
    assert_string_equal(o.cors.origins[1], "http://b.test:8000");
    assert_int_equal(unknown, 2);
    cluster_free(&cl);
    /* a --cors-origin flag wins over the file's */
    assert_int_equal(parse(&o, err, sizeof err, "--cluster", "c.conf", "--cors-origin", "*", NULL),
                     ROUTER_ARGS_RUN);
    load(&cl, "set cors-origin http://a.test\n");
    assert_int_equal(router_args_settings(&o, &cl, &unknown, err, sizeof err), 0);
    assert_int_equal(o.cors.n, 1);
    assert_string_equal(o.cors.origins[0], "*");
    cluster_free(&cl);
    static const struct { const char *set, *msg; } bad[] = {
        { "set ticks 0\n", "in c.conf: setting ticks: --ticks \"0\": expected an integer 1..8" },
        { "set public-experts maybe\n", "setting public-experts: public-experts \"maybe\": expected 1 or 0" },
        { "set listen 0.0.0.0:1\n", NULL }, /* not a setting: the file has its own directive */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(&o, err, sizeof err, "--cluster", "c.conf", NULL), ROUTER_ARGS_RUN);
        load(&cl, bad[i].set);
        int rc = router_args_settings(&o, &cl, &unknown, err, sizeof err);
        if (bad[i].msg) {
            assert_int_equal(rc, -1);
            if (!strstr(err, bad[i].msg))
                fail_msg("\"%s\" lacks \"%s\"", err, bad[i].msg);
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(unknown, 1);
            assert_null(o.listen);
        }
        cluster_free(&cl);
    }
}

int main(void)
{
    log_set_level(LOG_ERROR); /* the unknown-setting warnings */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_has_every_default),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
