/* test_client.c -- ddm-client and the local launcher: the client's parsers and
 * wire code (tools/client), its load generator against a real HTTP server on
 * loopback, and end to end: `ddm-cluster up` on a small random expert set with
 * the real ddm-expert / ddm-router binaries, then the ddm-client binary against
 * it (grids, protobuf, errors, experts, bench), a worker killed and restarted
 * by its supervisor, and `ddm-cluster down`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "common/base64.h"
#include "common/err.h"
#include "common/png.h"
#include "ddm/v1/api.pb-c.h"
#include "server/http.h"
#include "server/httpc.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/client/cli.h"
#include "tools/client/loadgen.h"
#include "tools/client/samples.h"

/* ---- cli helpers ----------------------------------------------------------------------- */

static void test_url_hostport(void **state)
{
    (void)state;
    static const struct { const char *in, *out; } good[] = {
        { "http://127.0.0.1:8080", "127.0.0.1:8080" },
        { "http://127.0.0.1:8080/", "127.0.0.1:8080" },
        { "HTTP://example.org", "example.org:80" },
        { "localhost:9000", "localhost:9000" },
        { "http://[::1]:8080", "[::1]:8080" },
        { "http://[::1]", "[::1]:80" },
    };
    char hp[300], err[256];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int rc = cli_url_hostport(good[i].in, hp, sizeof hp, err, sizeof err);
        if (rc)
            fail_msg("%s: %s", good[i].in, err);
        assert_string_equal(hp, good[i].out);
    }
    static const struct { const char *in, *says; } bad[] = {
        { "https://127.0.0.1:8080", "https" },
        { "ftp://x:1", "only http" },
        { "http://host:8080/v1", "without a path" },
        { "http://", "no host" },
        { "http://:8080", "no host" },
        { "http://host:0", "1..65535" },
        { "http://host:70000", "1..65535" },
        { "http://host:8x", "1..65535" },
        { "http://host:", "1..65535" },
        { "http://::1:8080", "brackets" },
        { "http://[::1", "unterminated" },
        { "http://[::1]x", "after" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(cli_url_hostport(bad[i].in, hp, sizeof hp, err, sizeof err), DDM_EINVAL);
        if (!strstr(err, bad[i].says))
            fail_msg("%s: message \"%s\" does not say \"%s\"", bad[i].in, err, bad[i].says);
    }
}

static void test_duration(void **state)
{
    (void)state;
    static const struct { const char *in; long ms; } good[] = {
        { "30s", 30000 }, { "30", 30000 }, { "500ms", 500 }, { "1.5m", 90000 },
        { "2h", 7200000 }, { "0.0001", 1 }, { "1ms", 1 },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        long ms = -1;
        assert_int_equal(cli_duration_ms(good[i].in, &ms), 0);
        assert_int_equal(ms, good[i].ms);
    }
    static const char *bad[] = { "", "0", "-1s", "abc", "10x", "1e300h", "s", " 5s", "nan", "inf" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        long ms = 7;
        if (cli_duration_ms(bad[i], &ms) != DDM_EINVAL)
            fail_msg("duration \"%s\" was accepted", bad[i]);
        assert_int_equal(ms, 7);
    }
}

static void test_numbers(void **state)
{
    (void)state;
    long v;
    assert_int_equal(cli_parse_long("42", 1, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(cli_parse_long("0", 1, 100, &v), DDM_ERANGE);
    assert_int_equal(cli_parse_long("101", 1, 100, &v), DDM_ERANGE);
    assert_int_equal(cli_parse_long("4x", 1, 100, &v), DDM_EINVAL);
    assert_int_equal(cli_parse_long("", 1, 100, &v), DDM_EINVAL);
    assert_int_equal(cli_parse_long(" 4", 1, 100, &v), DDM_EINVAL);
    assert_int_equal(cli_parse_long("99999999999999999999", 1, 100, &v), DDM_ERANGE);
    uint64_t u;
    assert_int_equal(cli_parse_u64("18446744073709551615", &u), 0);
    assert_true(u == UINT64_MAX);
    assert_int_equal(cli_parse_u64("18446744073709551616", &u), DDM_EINVAL);
    assert_int_equal(cli_parse_u64("-1", &u), DDM_EINVAL);
    assert_int_equal(cli_parse_u64("", &u), DDM_EINVAL);
    double d;
    assert_int_equal(cli_parse_double("2.5", &d), 0);
    assert_true(d == 2.5);
    assert_int_equal(cli_parse_double("nan", &d), DDM_EINVAL);
    assert_int_equal(cli_parse_double("1e999", &d), DDM_EINVAL);
    assert_int_equal(cli_parse_double("1.0x", &d), DDM_EINVAL);
}

static void test_percentile(void **state)
{
    (void)state;
    double one[] = { 7 };
    assert_true(cli_percentile(one, 1, 0.5) == 7);
    assert_true(cli_percentile(one, 1, 0.99) == 7);
    assert_true(cli_percentile(NULL, 0, 0.5) == 0);
    double h[100];
    for (int i = 0; i < 100; i++)
        h[i] = i + 1; /* 1..100 */
    assert_true(cli_percentile(h, 100, 0.50) == 50);
    assert_true(cli_percentile(h, 100, 0.90) == 90);
    assert_true(cli_percentile(h, 100, 0.99) == 99);
    assert_true(cli_percentile(h, 100, 1.0) == 100);
    assert_true(cli_percentile(h, 100, 0.0) == 1);
    double four[] = { 10, 20, 30, 40 };
    assert_true(cli_percentile(four, 4, 0.5) == 20);  /* ceil(2) = 2nd */
    assert_true(cli_percentile(four, 4, 0.51) == 30); /* ceil(2.04) = 3rd */
    assert_true(cli_percentile(four, 4, 0.99) == 40);
    /* sort, and the median of an unsorted array it leaves as it was */
    double mixed[] = { 30, 10, 40, 20, 50 };
    assert_true(cli_median(mixed, 5) == 30);
    assert_true(mixed[0] == 30 && mixed[4] == 50);
    assert_true(cli_median(mixed, 4) == 20); /* 10 20 30 40: nearest rank, the 2nd */
    assert_true(isnan(cli_median(NULL, 0)));
    cli_sort_doubles(mixed, 5);
    for (int i = 0; i < 5; i++)
        assert_true(mixed[i] == 10.0 * (i + 1));
}

static void test_error_message(void **state)
{
    (void)state;
    char buf[64];
    char json[] = "{\"error\":{\"code\":\"bad_field\",\"message\":\"field \\\"n\\\" is out of range\"}}";
    httpc_response r = { .status = 400, .body = json, .body_len = strlen(json) };
    cli_error_message(&r, buf, sizeof buf);
    assert_string_equal(buf, "field \"n\" is out of range");
    char text[] = "Bad Gateway\r\nmore";
    r = (httpc_response){ .status = 502, .body = text, .body_len = strlen(text) };
    cli_error_message(&r, buf, sizeof buf);
    assert_string_equal(buf, "Bad Gateway");
    char ctl[] = "a\tb";
    r = (httpc_response){ .status = 500, .body = ctl, .body_len = 3 };
    cli_error_message(&r, buf, sizeof buf);
    assert_string_equal(buf, "a?b");
    char empty[] = "";
    r = (httpc_response){ .status = 500, .body = empty, .body_len = 0 };
    cli_error_message(&r, buf, sizeof buf);
    assert_string_equal(buf, "(empty body)");
    char longmsg[200];
    memset(longmsg, 'x', sizeof longmsg - 1);
    longmsg[sizeof longmsg - 1] = '\0';
    r = (httpc_response){ .status = 500, .body = longmsg, .body_len = strlen(longmsg) };
    cli_error_message(&r, buf, 10);
    assert_int_equal(strlen(buf), 9);
}

/* ---- request encoding --------------------------------------------------------------------- */

static void test_encode_json(void **state)
{
    (void)state;
    samples_req r = { .n = 16, .steps = 50, .has_seed = 1, .seed = 7, .strategy = "top-2",
                      .sampler = "heun", .has_label = 1, .label = 3, .has_guidance = 1,
                      .guidance = 2.5, .trace = 1 };
    uint8_t *body;
    size_t len;
    assert_int_equal(samples_encode(&r, 0, &body, &len), 0);
    cJSON *o = cJSON_ParseWithLength((const char *)body, len);
    assert_non_null(o);
    assert_int_equal(cJSON_GetObjectItem(o, "n")->valueint, 16);
    assert_int_equal(cJSON_GetObjectItem(o, "steps")->valueint, 50);
    assert_true(cJSON_GetObjectItem(o, "seed")->valuedouble == 7);
    assert_string_equal(cJSON_GetObjectItem(o, "strategy")->valuestring, "top-2");
    assert_string_equal(cJSON_GetObjectItem(o, "sampler")->valuestring, "heun");
    assert_int_equal(cJSON_GetObjectItem(o, "label")->valueint, 3);
    assert_true(cJSON_GetObjectItem(o, "guidance")->valuedouble == 2.5);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(o, "trace")));
    assert_null(cJSON_GetObjectItem(o, "threshold"));
    assert_null(cJSON_GetObjectItem(o, "temperature"));
    cJSON_Delete(o);
    free(body);

    /* nothing set: an empty object (the server's defaults); a huge seed as a string */
    samples_req e = { .has_seed = 1, .seed = UINT64_MAX };
    assert_int_equal(samples_encode(&e, 0, &body, &len), 0);
    assert_string_equal((char *)body, "{\"seed\":\"18446744073709551615\"}");
    free(body);
    samples_req z = { 0 };
    assert_int_equal(samples_encode(&z, 0, &body, &len), 0);
    assert_string_equal((char *)body, "{}");
    free(body);
}

static void test_encode_proto(void **state)
{
    (void)state;
    samples_req r = { .n = 4, .has_seed = 1, .seed = UINT64_MAX, .strategy = "threshold",
                      .has_threshold = 1, .threshold = 0.25, .has_temperature = 1,
                      .temperature = 0.5 };
    uint8_t *body;
    size_t len;
    assert_int_equal(samples_encode(&r, 1, &body, &len), 0);
    Ddm__V1__SampleRequest *m = ddm__v1__sample_request__unpack(NULL, len, body);
    assert_non_null(m);
    assert_true(m->has_n && m->n == 4);
    assert_false(m->has_steps);
    assert_true(m->has_seed && m->seed == UINT64_MAX);
    assert_string_equal(m->strategy, "threshold");
    assert_null(m->sampler);
    assert_true(m->has_threshold && m->threshold == 0.25f);
    assert_true(m->has_temperature && m->temperature == 0.5f);
    assert_false(m->has_label);
    assert_false(m->has_trace);
    ddm__v1__sample_request__free_unpacked(m, NULL);
    free(body);
}

/* ---- response decoding and image output -------------------------------------------------------- */

#define IMG_W 6
#define IMG_H 5

/* A w x h image whose pixel values identify the image: (i * 37 + p * 11) % 256. */
static void make_pixels(int i, uint8_t *pix, int w, int h)
{
    for (int p = 0; p < w * h; p++)
        pix[p] = (uint8_t)((i * 37 + p * 11) % 256);
}

static void make_png(int i, uint8_t **png, size_t *len)
{
    uint8_t pix[IMG_W * IMG_H];
    make_pixels(i, pix, IMG_W, IMG_H);
    char err[128];
    assert_int_equal(pngio_encode_grey(pix, IMG_W, IMG_H, png, len, err, sizeof err), 0);
}

/* The JSON a ddm-router answers with, for n images. */
static char *make_json_response(int n, const char *seed_text, int with_trace)
{
    size_t cap = 1 << 16, at = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    at += (size_t)snprintf(s + at, cap - at,
                           "{\"seed\":%s,\"n\":%d,\"steps\":3,\"strategy\":\"top-2\","
                           "\"sampler\":\"euler\",\"width\":%d,\"height\":%d,\"expert_calls\":%d,"
                           "\"calls_by_expert\":[%d,0,%d],\"timings\":{\"queue_ms\":1.5,"
                           "\"total_ms\":9.25,\"router_ms\":0.5,\"expert_ms\":7},\"images\":[",
                           seed_text, n, IMG_W, IMG_H, 6 * n, 3 * n, 3 * n);
    for (int i = 0; i < n; i++) {
        uint8_t *png;
        size_t len;
        make_png(i, &png, &len);
        char *b64 = malloc(base64_encoded_len(len) + 1);
        assert_non_null(b64);
        base64_encode(png, len, b64);
        at += (size_t)snprintf(s + at, cap - at, "%s\"%s\"", i ? "," : "", b64);
        free(b64);
        free(png);
    }
    at += (size_t)snprintf(s + at, cap - at, "]");
    if (with_trace)
        at += (size_t)snprintf(s + at, cap - at,
                               ",\"trace\":[{\"image\":0,\"step\":0,\"stage\":0,\"t\":1,"
                               "\"experts\":[0,2],\"weights\":[0.75,0.25]},{\"image\":0,"
                               "\"step\":1,\"stage\":1,\"t\":0.5,\"experts\":[2],\"weights\":[1]}]");
    snprintf(s + at, cap - at, "}\n");
    return s;
}

static void check_images(const samples_resp *r, int n)
{
    assert_int_equal(r->n_images, n);
    for (int i = 0; i < n; i++) {
        uint8_t *pix, want[IMG_W * IMG_H];
        int w, h;
        char err[128];
        assert_int_equal(pngio_decode_grey(r->png[i], r->png_len[i], &pix, &w, &h, err,
                                           sizeof err), 0);
        assert_int_equal(w, IMG_W);
        assert_int_equal(h, IMG_H);
        make_pixels(i, want, IMG_W, IMG_H);
        assert_memory_equal(pix, want, sizeof want);
        free(pix);
    }
}

static void test_decode_json(void **state)
{
    (void)state;
    char *body = make_json_response(3, "18446744073709551615", 1);
    samples_resp r;
    char err[256];
    int rc = samples_decode("application/json", (uint8_t *)body, strlen(body), &r, err, sizeof err);
    if (rc)
        fail_msg("decode: %s", err);
    assert_true(r.seed == UINT64_MAX); /* beyond a double: read from the digits */
    assert_true(r.expert_calls == 18);
    assert_int_equal(r.K, 3);
    assert_true(r.calls_by_expert[0] == 9 && r.calls_by_expert[1] == 0 && r.calls_by_expert[2] == 9);
    assert_true(r.queue_ms == 1.5 && r.total_ms == 9.25 && r.router_ms == 0.5 && r.expert_ms == 7);
    assert_string_equal(r.strategy, "top-2");
    assert_string_equal(r.sampler, "euler");
    assert_int_equal(r.steps, 3);
    assert_int_equal(r.width, IMG_W);
    assert_int_equal(r.height, IMG_H);
    check_images(&r, 3);
    assert_int_equal(r.n_trace, 2);
    assert_int_equal(r.trace[0].n_sel, 2);
    assert_int_equal(r.trace[0].experts[1], 2);
    assert_true(r.trace[0].weights[0] == 0.75f);
    assert_int_equal(r.trace[1].stage, 1);
    assert_true(r.trace[1].t == 0.5f);
    /* --json output: everything but the images, the seed with all its digits */
    assert_null(strstr(r.meta_json, "images"));
    assert_non_null(strstr(r.meta_json, "18446744073709551615"));
    assert_non_null(strstr(r.meta_json, "\"trace\""));
    samples_resp_free(&r);
    samples_resp_free(&r); /* safe twice */
    free(body);

    /* broken answers are errors with a message, not crashes */
    static const char *bad[] = {
        "not json", "[1,2]", "{\"seed\":1}", "{\"images\":[\"!!!\"]}", "{\"images\":[3]}",
        "{\"images\":[],\"trace\":[{\"experts\":[1,2],\"weights\":[1]}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        rc = samples_decode(NULL, (const uint8_t *)bad[i], strlen(bad[i]), &r, err, sizeof err);
        if (rc != DDM_EFORMAT)
            fail_msg("\"%s\" decoded with %d", bad[i], rc);
        assert_true(err[0] != '\0');
        assert_null(r.png);
    }
}

static void test_decode_proto(void **state)
{
    (void)state;
    Ddm__V1__SampleResponse m = DDM__V1__SAMPLE_RESPONSE__INIT;
    Ddm__V1__Timings tm = DDM__V1__TIMINGS__INIT;
    ProtobufCBinaryData imgs[2];
    for (int i = 0; i < 2; i++)
        make_png(i, &imgs[i].data, &imgs[i].len);
    uint64_t by[2] = { 5, 7 };
    uint32_t ex[2] = { 0, 1 };
    float w[2] = { 0.5f, 0.5f };
    Ddm__V1__TraceStep ts = DDM__V1__TRACE_STEP__INIT, *tsp = &ts;
    ts.has_image = 1, ts.image = 1, ts.has_step = 1, ts.step = 4, ts.has_t = 1, ts.t = 0.25f;
    ts.n_experts = 2, ts.experts = ex, ts.n_weights = 2, ts.weights = w;
    m.n_images = 2, m.images = imgs;
    m.has_seed = 1, m.seed = 123456789012345ull;
    m.has_expert_calls = 1, m.expert_calls = 12;
    m.n_calls_by_expert = 2, m.calls_by_expert = by;
    tm.has_total_ms = 1, tm.total_ms = 3.5;
    m.timings = &tm;
    m.strategy = "full", m.sampler = "heun";
    m.has_steps = 1, m.steps = 6, m.has_width = 1, m.width = IMG_W, m.has_height = 1,
    m.height = IMG_H;
    m.n_trace = 1, m.trace = &tsp;
    size_t len = ddm__v1__sample_response__get_packed_size(&m);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    ddm__v1__sample_response__pack(&m, buf);
    for (int i = 0; i < 2; i++)
        free(imgs[i].data);
    samples_resp r;
    char err[256];
    int rc = samples_decode("application/x-protobuf", buf, len, &r, err, sizeof err);
    if (rc)
        fail_msg("decode: %s", err);
    assert_true(r.seed == 123456789012345ull);
    assert_true(r.expert_calls == 12);
    assert_int_equal(r.K, 2);
    assert_true(r.calls_by_expert[1] == 7);
    assert_true(r.total_ms == 3.5);
    assert_string_equal(r.strategy, "full");
    assert_string_equal(r.sampler, "heun");
    assert_int_equal(r.steps, 6);
    check_images(&r, 2);
    assert_int_equal(r.n_trace, 1);
    assert_int_equal(r.trace[0].image, 1);
    assert_int_equal(r.trace[0].step, 4);
    assert_int_equal(r.trace[0].experts[1], 1);
    cJSON *meta = cJSON_Parse(r.meta_json);
    assert_non_null(meta);
    assert_true(cJSON_GetObjectItem(meta, "seed")->valuedouble == 123456789012345.0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(meta, "trace")), 1);
    assert_null(cJSON_GetObjectItem(meta, "images"));
    cJSON_Delete(meta);
    samples_resp_free(&r);
    /* truncated: refused */
    rc = samples_decode("application/x-protobuf", buf, len / 2, &r, err, sizeof err);
    assert_int_equal(rc, DDM_EFORMAT);
    free(buf);
}

static char g_tmp[128];

static int tmp_setup(void **state)
{
    (void)state;
    return toyset_tempdir(g_tmp, sizeof g_tmp, "client");
}

static int tmp_teardown(void **state)
{
    (void)state;
    toyset_rmdir(g_tmp);
    return 0;
}

static void test_write_grid_and_dir(void **state)
{
    (void)state;
    char *body = make_json_response(5, "1", 0);
    samples_resp r;
    char err[256], path[256];
    assert_int_equal(samples_decode(NULL, (uint8_t *)body, strlen(body), &r, err, sizeof err), 0);
    free(body);
    assert_int_equal(samples_grid_cols(1), 1);
    assert_int_equal(samples_grid_cols(5), 3);
    assert_int_equal(samples_grid_cols(64), 8);
    assert_int_equal(samples_grid_cols(65), 9);

    snprintf(path, sizeof path, "%s/grid.png", g_tmp);
    int rc = samples_write_grid(&r, path, 0, err, sizeof err);
    if (rc)
        fail_msg("grid: %s", err);
    uint8_t *g;
    int gw, gh;
    assert_int_equal(pngio_read_grey(path, &g, &gw, &gh, err, sizeof err), 0);
    /* 5 images in 3 columns, 2 rows, PNGIO_GRID_SEP between cells */
    assert_int_equal(gw, 3 * IMG_W + 2 * PNGIO_GRID_SEP);
    assert_int_equal(gh, 2 * IMG_H + PNGIO_GRID_SEP);
    for (int i = 0; i < 5; i++) { /* every cell holds exactly its image's pixels */
        uint8_t want[IMG_W * IMG_H];
        make_pixels(i, want, IMG_W, IMG_H);
        int x0 = (i % 3) * (IMG_W + PNGIO_GRID_SEP), y0 = (i / 3) * (IMG_H + PNGIO_GRID_SEP);
        for (int y = 0; y < IMG_H; y++)
            assert_memory_equal(g + (size_t)(y0 + y) * (size_t)gw + (size_t)x0,
                                want + y * IMG_W, IMG_W);
    }
    /* the unused sixth cell is separator grey */
    assert_int_equal(g[(size_t)(IMG_H + PNGIO_GRID_SEP) * (size_t)gw + 2 * (IMG_W + PNGIO_GRID_SEP)],
                     PNGIO_GRID_SEP_VALUE);
    free(g);

    /* the same grid as the server renders it (pngio_encode_grid over the floats) */
    float all[5 * IMG_W * IMG_H];
    for (int i = 0; i < 5; i++) {
        uint8_t px[IMG_W * IMG_H];
        make_pixels(i, px, IMG_W, IMG_H);
        for (int p = 0; p < IMG_W * IMG_H; p++)
            all[i * IMG_W * IMG_H + p] = (float)px[p] / 127.5f - 1.0f;
    }
    uint8_t *srv;
    size_t srvlen;
    assert_int_equal(pngio_encode_grid(all, 5, IMG_W, IMG_H, 3, &srv, &srvlen, err, sizeof err), 0);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *mine = malloc(srvlen + 1);
    assert_non_null(mine);
    size_t got = fread(mine, 1, srvlen + 1, f);
    fclose(f);
    assert_int_equal(got, srvlen);
    assert_memory_equal(mine, srv, srvlen);
    free(mine);
    free(srv);

    /* explicit columns */
    assert_int_equal(samples_write_grid(&r, path, 5, err, sizeof err), 0);
    assert_int_equal(pngio_read_grey(path, &g, &gw, &gh, err, sizeof err), 0);
    assert_int_equal(gw, 5 * IMG_W + 4 * PNGIO_GRID_SEP);
    assert_int_equal(gh, IMG_H);
    free(g);

    /* one file per image, the bytes as received */
    snprintf(path, sizeof path, "%s/imgs", g_tmp);
    assert_int_equal(samples_write_dir(&r, path, "s-", err, sizeof err), 0);
    assert_int_equal(samples_write_dir(&r, path, "s-", err, sizeof err), 0); /* dir exists: fine */
    for (int i = 0; i < 5; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s/s-%03d.png", path, i);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal((size_t)st.st_size, r.png_len[i]);
    }
    /* unwritable places are errors naming the path */
    assert_true(samples_write_grid(&r, "/nonexistent-dir/x.png", 0, err, sizeof err) < 0);
    assert_non_null(strstr(err, "/nonexistent-dir/x.png"));
    assert_true(samples_write_dir(&r, "/nonexistent-dir/a/b", "s-", err, sizeof err) < 0);
    assert_non_null(strstr(err, "/nonexistent-dir/a/b"));

    /* images of different sizes cannot share a grid */
    free(r.png[4]);
    uint8_t px[4] = { 1, 2, 3, 4 };
    assert_int_equal(pngio_encode_grey(px, 2, 2, &r.png[4], &r.png_len[4], err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/bad.png", g_tmp);
    assert_int_equal(samples_write_grid(&r, path, 0, err, sizeof err), DDM_EMISMATCH);
    assert_non_null(strstr(err, "image 4"));
    samples_resp_free(&r);
}

/* ---- the load generator against a real HTTP server ------------------------------------------------ */

typedef struct srv_fx {
    uv_loop_t loop;
    uv_async_t stop;
    http_server *srv;
    pthread_t th;
    char addr[64];
    atomic_int hits;
    atomic_int bad_requests;
} srv_fx;

static srv_fx g_srv;

static const char LG_BODY[] = "{\"n\":1}";

/* Every 4th request answers 503 (with a ddm error body); the others 200.
 * A request whose body or content type is not what the generator was given
 * answers 400. */
static void h_samples(http_req *req, void *ud)
{
    srv_fx *f = ud;
    size_t len;
    const uint8_t *body = http_req_body(req, &len);
    const char *ct = http_req_header(req, "Content-Type");
    const char *acc = http_req_header(req, "Accept");
    if (len != strlen(LG_BODY) || memcmp(body, LG_BODY, len) || !ct ||
        strcmp(ct, "application/json") || !acc || strcmp(acc, "image/png")) {
        atomic_fetch_add(&f->bad_requests, 1);
        http_respond_error(req, 400, "bad", "unexpected request");
        return;
    }
    int n = atomic_fetch_add(&f->hits, 1) + 1;
    if (n % 4 == 0) {
        http_respond_error(req, 503, "overloaded", "too many images in flight");
        return;
    }
    http_respond(req, 200, "image/png", "PNGDATA", 7);
}

static void on_stop(uv_async_t *a)
{
    srv_fx *f = a->data;
    http_server_close(f->srv, NULL, NULL);
    uv_close((uv_handle_t *)&f->stop, NULL);
}

static void *srv_main(void *arg)
{
    srv_fx *f = arg;
    uv_run(&f->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int srv_setup(void **state)
{
    (void)state;
    srv_fx *f = &g_srv;
    memset(f, 0, sizeof *f);
    if (uv_loop_init(&f->loop) || uv_async_init(&f->loop, &f->stop, on_stop))
        return -1;
    f->stop.data = f;
    char err[200];
    if (http_server_new(&f->loop, NULL, &f->srv) ||
        http_server_route(f->srv, "POST", "/v1/samples", h_samples, f) ||
        http_server_listen(f->srv, "127.0.0.1:0", err, sizeof err))
        return -1;
    snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", http_server_port(f->srv));
    return pthread_create(&f->th, NULL, srv_main, f) ? -1 : 0;
}

static int srv_teardown(void **state)
{
    (void)state;
    uv_async_send(&g_srv.stop);
    pthread_join(g_srv.th, NULL);
    uv_loop_close(&g_srv.loop);
    return 0;
}

static void test_loadgen_counts(void **state)
{
    (void)state;
    atomic_store(&g_srv.hits, 0);
    loadgen_config c = {
        .hostport = g_srv.addr, .method = "POST", .path = "/v1/samples", .body = LG_BODY,
        .body_len = strlen(LG_BODY), .content_type = "application/json", .accept = "image/png",
        .connections = 3, .duration_ms = 20000, .max_requests = 200, .timeout_ms = 5000,
    };
    loadgen_result r;
    char err[256];
    int rc = loadgen_run(&c, &r, err, sizeof err);
    if (rc)
        fail_msg("loadgen: %s", err);
    assert_int_equal(atomic_load(&g_srv.bad_requests), 0);
    assert_int_equal(r.requests, 200);     /* the budget, exactly */
    assert_int_equal(atomic_load(&g_srv.hits), 200);
    assert_int_equal(r.ok, 150);           /* every 4th was a 503 */
    assert_int_equal(r.failed, 50);
    assert_int_equal(r.bytes_received, 150 * 7);
    assert_int_equal(r.n_failures, 1);
    assert_int_equal(r.failures[0].code, 503);
    assert_int_equal(r.failures[0].count, 50);
    assert_string_equal(r.failures[0].first_message, "too many images in flight");
    assert_true(r.min_ms > 0);
    assert_true(r.min_ms <= r.p50_ms && r.p50_ms <= r.p90_ms && r.p90_ms <= r.p99_ms &&
                r.p99_ms <= r.max_ms);
    assert_true(r.mean_ms >= r.min_ms && r.mean_ms <= r.max_ms);
    assert_true(r.elapsed_s > 0 && r.elapsed_s < 20);
}

static void test_loadgen_duration(void **state)
{
    (void)state;
    loadgen_config c = {
        .hostport = g_srv.addr, .method = "POST", .path = "/v1/samples", .body = LG_BODY,
        .body_len = strlen(LG_BODY), .content_type = "application/json", .accept = "image/png",
        .connections = 4, .duration_ms = 300, .timeout_ms = 5000,
    };
    loadgen_result r;
    char err[256];
    double t0 = proc_now_s();
    assert_int_equal(loadgen_run(&c, &r, err, sizeof err), 0);
    double took = proc_now_s() - t0;
    assert_true(took >= 0.3 && took < 3.0);  /* bounded by the duration */
    assert_true(r.requests > 10);
    assert_int_equal(r.requests, r.ok + r.failed);
}

static void test_loadgen_refused(void **state)
{
    (void)state;
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", proc_free_port()); /* nothing listens */
    loadgen_config c = { .hostport = hp, .method = "GET", .path = "/", .connections = 2,
                         .duration_ms = 200, .timeout_ms = 1000 };
    loadgen_result r;
    char err[256];
    double t0 = proc_now_s();
    assert_int_equal(loadgen_run(&c, &r, err, sizeof err), 0);
    assert_true(proc_now_s() - t0 < 3.0);
    assert_int_equal(r.ok, 0);
    assert_true(r.failed >= 2);
    assert_true(r.failed < 200);   /* backs off instead of spinning */
    assert_int_equal(r.n_failures, 1);
    assert_true(r.failures[0].code < 0); /* a transport error, not an HTTP status */
    /* bad configurations are refused before any request */
    c.connections = 0;
    assert_int_equal(loadgen_run(&c, &r, err, sizeof err), DDM_EINVAL);
    c.connections = 1, c.duration_ms = 0;
    assert_int_equal(loadgen_run(&c, &r, err, sizeof err), DDM_EINVAL);
    c.duration_ms = 10, c.hostport = "no-port-here";
    assert_true(loadgen_run(&c, &r, err, sizeof err) != 0);
}

/* ---- end to end: ddm-cluster + ddm-client binaries ------------------------------------------------- */

#define E2E_K 3
#define E2E_DIM 64 /* 8x8 images */

static char e_dir[128], e_conf[256], e_run[256], e_bin[256];
static int e_port, e_up;

/* Runs a shell command, returns its exit status; its output (stdout and
 * stderr) goes to out. */
static int sh(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sh(char *out, size_t outlen, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[2200];
    snprintf(full, sizeof full, "{ %s ; } 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    char sink[4096];
    while (fread(sink, 1, sizeof sink, p) > 0) {
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int cluster_down(void)
{
    char out[4096];
    return sh(out, sizeof out, "sh deploy/local/ddm-cluster down %s --run-dir %s --bin %s", e_conf,
              e_run, e_bin);
}

static int e2e_setup(void **state)
{
    (void)state;
    const char *dir = getenv("DDM_BIN_DIR");
    snprintf(e_bin, sizeof e_bin, "%s", dir && *dir ? dir : "bin");
    if (toyset_tempdir(e_dir, sizeof e_dir, "client-e2e") ||
        toyset_write(e_dir, E2E_K, E2E_DIM, 3, 11))
        return -1;
    snprintf(e_conf, sizeof e_conf, "%s/toy.conf", e_dir);
    snprintf(e_run, sizeof e_run, "%s/run", e_dir);
    FILE *f = fopen(e_conf, "w");
    if (!f)
        return -1;
    e_port = proc_free_port();
    fprintf(f, "# test cluster\nmodels %s\nlisten 127.0.0.1:%d\n", e_dir, e_port);
    int used[E2E_K] = { 0 };
    for (int k = 0; k < E2E_K; k++) {
        int p;
        int again;
        do { /* distinct ports */
            p = proc_free_port();
            again = p == e_port;
            for (int j = 0; j < k; j++)
                again |= used[j] == p;
        } while (again);
        used[k] = p;
        fprintf(f, "expert %d tcp://127.0.0.1:%d\n", k, p);
    }
    fprintf(f, "expert 0 ipc://%s/e0b.ipc   # a second replica of expert 0\n", e_dir);
    fclose(f);
    return 0;
}

static int e2e_teardown(void **state)
{
    (void)state;
    if (e_up)
        cluster_down();
    toyset_rmdir(e_dir);
    return 0;
}

static int have_binaries(void)
{
    static const char *need[] = { "ddm-router", "ddm-expert", "ddm-client" };
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        char p[300];
        snprintf(p, sizeof p, "%s/%s", e_bin, need[i]);
        if (access(p, X_OK))
            return 0;
    }
    return access("deploy/local/ddm-cluster", R_OK) == 0;
}

static pid_t read_pid(const char *name)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s.pid", e_run, name);
    FILE *f = fopen(p, "r");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return (pid_t)v;
}

/* 1 if pid no longer runs (exited, or a zombie nobody reaped yet) */
static int gone(pid_t pid)
{
    if (kill(pid, 0) != 0)
        return errno == ESRCH;
    char buf[256];
    const char *fields = proc_stat(pid, buf, sizeof buf);
    if (!fields)
        return 1;
    return fields[0] == ' ' && fields[1] == 'Z';
}

static int file_equal(const char *a, const char *b)
{
    char out[256];
    return sh(out, sizeof out, "cmp -s %s %s", a, b) == 0;
}

#define EXPECT(rc_want, out, ...)                                                              \
    do {                                                                                       \
        int rc_ = sh(out, sizeof out, __VA_ARGS__);                                            \
        if (rc_ != (rc_want))                                                                  \
            fail_msg("exit %d, expected %d, from: %s", rc_, (rc_want), out);                  \
    } while (0)

static void test_e2e_cluster_and_client(void **state)
{
    (void)state;
    if (!have_binaries()) {
        fprintf(stderr, "# skipped: needs %s/ddm-router, ddm-expert, ddm-client (make) and the "
                        "repo root as working directory\n", e_bin);
        skip();
    }
    static char out[65536];
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", e_port);
    const char *cl = "sh deploy/local/ddm-cluster";

    /* up: 4 workers (expert 0 twice) and the router; ready when it returns */
    e_up = 1;
    EXPECT(0, out, "%s up %s --run-dir %s --bin %s --ready-timeout 30", cl, e_conf, e_run, e_bin);
    assert_non_null(strstr(out, "is up: 4 expert worker(s)"));
    EXPECT(0, out, "%s status %s --run-dir %s --bin %s", cl, e_conf, e_run, e_bin);
    assert_non_null(strstr(out, "expert-0.1"));
    assert_non_null(strstr(out, "200 ready"));
    /* a second up refuses: it is running */
    EXPECT(1, out, "%s up %s --run-dir %s --bin %s", cl, e_conf, e_run, e_bin);
    assert_non_null(strstr(out, "already running"));

    /* sample: grid + files; protobuf and the server's grid give the same PNG */
    char g1[300], g2[300], g3[300];
    snprintf(g1, sizeof g1, "%s/g1.png", e_dir);
    snprintf(g2, sizeof g2, "%s/g2.png", e_dir);
    snprintf(g3, sizeof g3, "%s/g3.png", e_dir);
    EXPECT(0, out, "%s/ddm-client sample --url %s -n 5 --steps 4 --seed 3 --strategy top-2 -o %s "
                   "--out-dir %s/imgs", e_bin, url, g1, e_dir);
    assert_non_null(strstr(out, "seed 3, strategy top-2"));
    assert_non_null(strstr(out, "expert calls 40;")); /* 5 images x 4 steps x 2 experts */
    uint8_t *pix;
    int w, h;
    char err[256];
    assert_int_equal(pngio_read_grey(g1, &pix, &w, &h, err, sizeof err), 0);
    free(pix);
    assert_int_equal(w, 3 * 8 + 2 * PNGIO_GRID_SEP);
    assert_int_equal(h, 2 * 8 + PNGIO_GRID_SEP);
    char p4[300];
    snprintf(p4, sizeof p4, "%s/imgs/sample-004.png", e_dir);
    assert_int_equal(access(p4, R_OK), 0);
    EXPECT(0, out, "%s/ddm-client sample --url %s -n 5 --steps 4 --seed 3 --strategy top-2 --proto "
                   "-o %s", e_bin, url, g2);
    assert_true(file_equal(g1, g2));
    EXPECT(0, out, "%s/ddm-client sample --url %s -n 5 --steps 4 --seed 3 --strategy top-2 "
                   "--server-grid -o %s", e_bin, url, g3);
    assert_true(file_equal(g1, g3));
    EXPECT(0, out, "%s/ddm-client sample --url %s -n 5 --steps 4 --seed 4 --strategy top-2 -o %s",
           e_bin, url, g2);
    assert_false(file_equal(g1, g2)); /* another seed, other images */

    /* --json: the response without images, the seed echoed */
    EXPECT(0, out, "%s/ddm-client sample --url %s -n 2 --steps 2 --seed 99 --strategy expert:2 "
                   "--trace --json 2>/dev/null", e_bin, url);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_true(cJSON_GetObjectItem(j, "seed")->valuedouble == 99);
    assert_null(cJSON_GetObjectItem(j, "images"));
    cJSON *by = cJSON_GetObjectItem(j, "calls_by_expert");
    assert_true(cJSON_GetArrayItem(by, 2)->valuedouble == 4);
    assert_true(cJSON_GetArrayItem(by, 0)->valuedouble == 0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "trace")), 4);
    cJSON_Delete(j);

    /* errors: the server's message and exit 1; usage errors exit 2 */
    EXPECT(1, out, "%s/ddm-client sample --url %s --strategy top-9", e_bin, url);
    if (strncmp(out, "ddm-client: HTTP 400: ", 22))
        fail_msg("unexpected error output: %s", out);
    assert_non_null(strstr(out, "strategy"));
    EXPECT(1, out, "%s/ddm-client sample --url %s -n 300", e_bin, url);
    assert_non_null(strstr(out, "HTTP 400: field \"n\""));
    EXPECT(2, out, "%s/ddm-client sample --url %s --steps many", e_bin, url);
    EXPECT(2, out, "%s/ddm-client sample --bogus", e_bin);
    EXPECT(2, out, "%s/ddm-client frobnicate", e_bin);
    EXPECT(0, out, "%s/ddm-client --version", e_bin);
    assert_non_null(strstr(out, "ddm-client "));

    /* experts: a table with every expert, expert 0 with 2 live replicas. Ready
     * means one live replica per expert: the second one of expert 0 may still be
     * connecting on a loaded machine, so give it up to 30 s. */
    for (int tries = 0;; tries++) {
        EXPECT(0, out, "%s/ddm-client experts --url %s", e_bin, url);
        if (strstr(out, "2/2") || tries == 300)
            break;
        usleep(100 * 1000);
    }
    assert_non_null(strstr(out, "3 experts"));
    assert_non_null(strstr(out, "2/2"));
    assert_non_null(strstr(out, "ipc://"));

    /* bench: a short closed loop with no failures */
    EXPECT(0, out, "%s/ddm-client bench --url %s -c 2 -d 1s --steps 2 -q", e_bin, url);
    assert_non_null(strstr(out, "errors      none"));
    assert_non_null(strstr(out, "images/s"));
    EXPECT(0, out, "%s/ddm-client bench --url %s -c 2 --requests 6 --steps 2 --proto --json -q",
           e_bin, url);
    j = cJSON_Parse(out);
    assert_non_null(j);
    assert_true(cJSON_GetObjectItem(j, "ok")->valuedouble == 6);
    cJSON_Delete(j);
    /* a bench whose every request fails exits 1 and counts them by status */
    EXPECT(1, out, "%s/ddm-client bench --url %s -c 1 --requests 3 --strategy nope -q", e_bin, url);
    assert_non_null(strstr(out, "errors      HTTP 400: 3"));

    /* a worker killed with SIGKILL comes back under its supervisor */
    pid_t old = read_pid("expert-1");
    assert_true(old > 0);
    assert_int_equal(kill(old, SIGKILL), 0);
    pid_t now = -1;
    for (int i = 0; i < 100; i++) { /* backoff 1 s, then the restart */
        usleep(100000);
        now = read_pid("expert-1");
        if (now > 0 && now != old && kill(now, 0) == 0)
            break;
    }
    assert_true(now > 0 && now != old);
    EXPECT(0, out, "%s/ddm-client ready --url %s --wait 10s -q", e_bin, url);
    EXPECT(0, out, "%s/ddm-client sample --url %s -n 2 --steps 3 --strategy expert:1 -q", e_bin, url);
    EXPECT(0, out, "%s status %s --run-dir %s --bin %s", cl, e_conf, e_run, e_bin);
    assert_non_null(strstr(out, "running   1")); /* one restart shown for expert-1 */

    /* down stops exactly what up started */
    pid_t router = read_pid("router"), w0 = read_pid("expert-0");
    assert_true(router > 0 && w0 > 0);
    EXPECT(0, out, "%s down %s --run-dir %s --bin %s", cl, e_conf, e_run, e_bin);
    e_up = 0;
    assert_non_null(strstr(out, "stopped"));
    assert_true(gone(router));
    assert_true(gone(w0));
    assert_true(gone(now));
    EXPECT(1, out, "%s status %s --run-dir %s --bin %s", cl, e_conf, e_run, e_bin);
    EXPECT(1, out, "%s/ddm-client ready --url %s", e_bin, url);
    EXPECT(0, out, "%s down %s --run-dir %s --bin %s", cl, e_conf, e_run, e_bin); /* idempotent */
}

static void test_e2e_cluster_errors(void **state)
{
    (void)state;
    if (!have_binaries())
        skip();
    static char out[16384];
    const char *cl = "sh deploy/local/ddm-cluster";
    EXPECT(2, out, "%s", cl);
    EXPECT(2, out, "%s sideways %s", cl, e_conf);
    EXPECT(0, out, "%s --help", cl);
    assert_non_null(strstr(out, "usage: ddm-cluster"));
    EXPECT(1, out, "%s up %s/missing.conf --bin %s", cl, e_dir, e_bin);
    assert_non_null(strstr(out, "not found"));
    /* a models folder that does not exist: says how to make it */
    char conf[300];
    snprintf(conf, sizeof conf, "%s/nomodels.conf", e_dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models %s/nothing-here\nlisten 127.0.0.1:%d\nexpert 0 tcp://127.0.0.1:1\n", e_dir,
            proc_free_port());
    fclose(f);
    EXPECT(1, out, "%s up %s --bin %s --run-dir %s/run2", cl, conf, e_bin, e_dir);
    assert_non_null(strstr(out, "make models DATASET=nothing-here"));
    /* a remote expert is refused (it is a local launcher) */
    f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models %s\nexpert 0 tcp://10.1.2.3:7100\n", e_dir);
    fclose(f);
    EXPECT(1, out, "%s up %s --bin %s --run-dir %s/run2", cl, conf, e_bin, e_dir);
    assert_non_null(strstr(out, "not on this machine"));
    /* a worker that cannot start fails "up" at once, with its log, and leaves nothing */
    f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models %s\nlisten 127.0.0.1:%d\nexpert 0 tcp://127.0.0.1:%d\n"
               "expert 1 tcp://127.0.0.1:%d\nexpert 2 ipc://%s/x.ipc\n",
            e_dir, proc_free_port(), proc_free_port(), proc_free_port(), e_dir);
    fclose(f);
    char e1[300];
    snprintf(e1, sizeof e1, "%s/expert-1.safetensors", e_dir);
    char saved[300];
    snprintf(saved, sizeof saved, "%s/expert-1.saved", e_dir);
    assert_int_equal(rename(e1, saved), 0);
    FILE *junk = fopen(e1, "w");
    assert_non_null(junk);
    fputs("not a safetensors file", junk);
    fclose(junk);
    double t0 = proc_now_s();
    EXPECT(1, out, "%s up %s --bin %s --run-dir %s/run2 --ready-timeout 30", cl, conf, e_bin, e_dir);
    assert_true(proc_now_s() - t0 < 15); /* fails fast, not at the timeout */
    assert_int_equal(rename(saved, e1), 0);
    assert_non_null(strstr(out, "expert-1"));
    assert_non_null(strstr(out, "exited with status 1"));
    assert_non_null(strstr(out, "stopping what was started"));
    EXPECT(1, out, "%s status %s --bin %s --run-dir %s/run2", cl, conf, e_bin, e_dir);
}

int main(void)
{
    const struct CMUnitTest unit[] = {
        cmocka_unit_test(test_url_hostport),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_percentile),
        cmocka_unit_test(test_error_message),
        cmocka_unit_test(test_encode_json),
        cmocka_unit_test(test_encode_proto),
        cmocka_unit_test(test_decode_json),
        cmocka_unit_test(test_decode_proto),
        cmocka_unit_test_setup_teardown(test_write_grid_and_dir, tmp_setup, tmp_teardown),
    };
    const struct CMUnitTest load[] = {
        cmocka_unit_test(test_loadgen_counts),
        cmocka_unit_test(test_loadgen_duration),
        cmocka_unit_test(test_loadgen_refused),
    };
    const struct CMUnitTest e2e[] = {
        cmocka_unit_test(test_e2e_cluster_and_client),
        cmocka_unit_test(test_e2e_cluster_errors),
    };
    int fails = cmocka_run_group_tests_name("client", unit, NULL, NULL);
    fails += cmocka_run_group_tests_name("loadgen", load, srv_setup, srv_teardown);
    fails += cmocka_run_group_tests_name("e2e", e2e, e2e_setup, e2e_teardown);
    return fails ? 1 : 0;
}
