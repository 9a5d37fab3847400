/* test_st.c -- safetensors reader/writer: round trips, half/bfloat16 rounding,
 * a table of corrupt files each refused with its own message, random
 * mutations that must never crash the reader, and SHA-256 vectors. */
#include <errno.h>
#include <math.h>
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

#include "common/err.h"
#include "common/rng.h"
#include "common/sha256.h"
#include "common/st.h"
#include "tests/support/toyset.h"

static char tmpdir[64];

static int group_setup(void **state)
{
    (void)state;
    return toyset_tempdir(tmpdir, sizeof tmpdir, "test-st");
}

static int group_teardown(void **state)
{
    (void)state;
    toyset_rmdir(tmpdir);
    return 0;
}

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len)
        assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* A safetensors file from a header string and data_len data bytes (0x11 each). */
static void write_st(const char *path, const char *json, size_t data_len)
{
    size_t jl = strlen(json);
    uint8_t *buf = malloc(8 + jl + data_len + 1);
    assert_non_null(buf);
    uint64_t n = jl;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, json, jl);
    memset(buf + 8 + jl, 0x11, data_len);
    write_bytes(path, buf, 8 + jl + data_len);
    free(buf);
}

/* ---- SHA-256 ---------------------------------------------------------------------- */

static void test_sha256_vectors(void **state)
{
    (void)state;
    char hex[SHA256_HEX_SIZE];
    sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m448, strlen(m448), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    /* one million 'a', fed in uneven pieces to exercise the block buffering */
    enum { MILLION = 1000000 };
    char *a = malloc(MILLION);
    assert_non_null(a);
    memset(a, 'a', MILLION);
    sha256_ctx ctx;
    uint8_t dig[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    size_t done = 0, piece = 1;
    while (done < MILLION) {
        size_t take = piece < MILLION - done ? piece : MILLION - done;
        sha256_update(&ctx, a + done, take);
        done += take;
        piece = piece * 7 % 1021 + 1;
    }
    sha256_final(&ctx, dig);
    sha256_to_hex(dig, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    sha256_hex(a, MILLION, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

/* Lengths around the 55/56/64-byte padding boundaries: one-shot equals bytewise. */
static void test_sha256_boundaries(void **state)
{
    (void)state;
    uint8_t msg[200];
    for (int i = 0; i < 200; i++)
        msg[i] = (uint8_t)(i * 31 + 7);
    for (size_t len = 0; len <= 200; len++) {
        char one[SHA256_HEX_SIZE], bytewise[SHA256_HEX_SIZE];
        sha256_hex(msg, len, one);
        sha256_ctx ctx;
        uint8_t dig[SHA256_DIGEST_SIZE];
        sha256_init(&ctx);
        for (size_t i = 0; i < len; i++)
            sha256_update(&ctx, msg + i, 1);
        sha256_final(&ctx, dig);
        sha256_to_hex(dig, bytewise);
        assert_string_equal(one, bytewise);
    }
    /* 64 bytes of 'a' (an exact block), known answer */
    char hex[SHA256_HEX_SIZE];
    char a64[64];
    memset(a64, 'a', 64);
    sha256_hex(a64, 64, hex);
    assert_string_equal(hex, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

/* ---- half and bfloat16 ------------------------------------------------------------ */

static float f16(uint16_t h) { return st_f16_to_f32(h); }

static void test_f16_known_values(void **state)
{
    (void)state;
    const struct { float f; uint16_t h; } v[] = {
        { 0.0f, 0x0000 },          { -0.0f, 0x8000 },         { 1.0f, 0x3c00 },
        { -2.0f, 0xc000 },         { 0.5f, 0x3800 },          { 65504.0f, 0x7bff },
        { 65519.0f, 0x7bff },      { 65520.0f, 0x7c00 },      { 1e9f, 0x7c00 },
        { -1e9f, 0xfc00 },         { INFINITY, 0x7c00 },      { -INFINITY, 0xfc00 },
        { 0x1p-14f, 0x0400 },      { 0x1p-24f, 0x0001 },      { 0x1p-25f, 0x0000 },
        { 0x1.000002p-25f, 0x0001 }, { 0x1.8p-24f, 0x0002 },  { 0x1.4p-23f, 0x0002 },
        { 0x1.ffcp-15f, 0x0400 },  { 0x1.ff8p-15f, 0x03ff },  { 1e-10f, 0x0000 },
        { -1e-10f, 0x8000 },
        { 1.0f + 0x1p-11f, 0x3c00 }, { 1.0f + 0x3p-11f, 0x3c02 },
        { 1.0f + 0x1.2p-11f, 0x3c01 }, { 0.1f, 0x2e66 }, { 3.14159265f, 0x4248 },
        { 0x1p-149f, 0x0000 },
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint16_t h = st_f32_to_f16(v[i].f);
        if (h != v[i].h)
            fail_msg("f16(%a) = 0x%04x, expected 0x%04x", (double)v[i].f, h, v[i].h);
    }
    assert_true(isnan(f16(st_f32_to_f16(NAN))));
    assert_true(isnan(f16(st_f32_to_f16(-NAN))));
    assert_true(isnan(f16(0x7c01))); /* signalling-looking half NaN stays NaN */
    assert_true(f16(0x0001) == 0x1p-24f);
    assert_true(f16(0x03ff) == 0x3ffp-24f);
    assert_true(f16(0xfbff) == -65504.0f);
}

/* Every half value survives half -> float -> half bit-exactly. */
static void test_f16_exhaustive_roundtrip(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = f16((uint16_t)h);
        if (isnan(f)) {
            assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff));
            assert_true(isnan(f16(st_f32_to_f16(f))));
            continue;
        }
        uint16_t back = st_f32_to_f16(f);
        if (back != h)
            fail_msg("half 0x%04x -> %a -> 0x%04x", h, (double)f, back);
    }
}

/* For many floats, the chosen half is the nearest one, ties to even. */
static void test_f16_rounding_is_nearest_even(void **state)
{
    (void)state;
    uint64_t s = 12345;
    for (int i = 0; i < 300000; i++) {
        uint32_t bits = (uint32_t)rng_splitmix64(&s) & 0x7fffffffu;
        /* concentrate on the half range: exponents -30..+16 */
        bits = (bits & 0x807fffffu) | ((uint32_t)(97 + (bits >> 23) % 47) << 23);
        float f;
        memcpy(&f, &bits, 4);
        uint16_t h = st_f32_to_f16(f);
        double x = f, got = f16(h);
        if (h == 0x7c00) { /* overflow: must be at or past the rounding edge 65520 */
            assert_true(x >= 65520.0);
            continue;
        }
        assert_true(h < 0x7c00);
        double lo = h > 0 ? f16((uint16_t)(h - 1)) : -1.0;
        double hi = h < 0x7bff ? f16((uint16_t)(h + 1)) : 65536.0; /* 65536: edge neighbour */
        double d = fabs(x - got);
        if (d > fabs(x - lo) || d > fabs(x - hi))
            fail_msg("f16(%a) = 0x%04x is not the nearest half", x, h);
        if ((d == fabs(x - lo) || d == fabs(x - hi)) && (h & 1))
            fail_msg("f16(%a) = 0x%04x: tie not rounded to even", x, h);
    }
}

static void test_bf16(void **state)
{
    (void)state;
    assert_int_equal(st_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(st_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);   /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + 0x3p-8f), 0x3f82);   /* tie -> even */
    assert_int_equal(st_f32_to_bf16(1.0f + 0x1.2p-8f), 0x3f81); /* above tie */
    assert_int_equal(st_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(st_f32_to_bf16(0x1.fffffep127f), 0x7f80);  /* rounds up to inf */
    assert_true(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))));
    assert_true(st_bf16_to_f32(0x4049) == 3.140625f);
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            assert_int_equal(st_f32_to_bf16(f), h);
    }
}

/* ---- writer + reader round trip --------------------------------------------------- */

static void test_roundtrip_every_dtype(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "rt.safetensors");
    float f32v[6] = { 1.5f, -2.25f, 3e-5f, 1e6f, -0.0f, 0.1f };
    float halfv[4] = { 1.0f, -0.5f, 65504.0f, 0x1p-24f };
    float bfv[3] = { 1.0f, 3.140625f, -1e30f };
    int32_t i32v[5] = { 0, -1, 7, INT32_MAX, INT32_MIN };
    int64_t i64v[2] = { INT64_MIN, 1234567890123LL };
    uint8_t u8v[3] = { 0, 128, 255 };
    float scalar = 42.0f;
    const int64_t s23[2] = { 2, 3 }, s4[1] = { 4 }, s3[1] = { 3 }, s5[1] = { 5 };
    const int64_t s2[1] = { 2 }, s113[3] = { 1, 1, 3 }, s03[2] = { 0, 3 };

    st_writer *w = st_writer_new();
    assert_non_null(w);
    assert_int_equal(st_writer_add_f32(w, "a.f32", ST_F32, 2, s23, f32v), 0);
    assert_int_equal(st_writer_add_f32(w, "b.f16", ST_F16, 1, s4, halfv), 0);
    assert_int_equal(st_writer_add_f32(w, "c.bf16", ST_BF16, 1, s3, bfv), 0);
    assert_int_equal(st_writer_add_raw(w, "d.i32", ST_I32, 1, s5, i32v, sizeof i32v), 0);
    assert_int_equal(st_writer_add_raw(w, "e.i64", ST_I64, 1, s2, i64v, sizeof i64v), 0);
    assert_int_equal(st_writer_add_raw(w, "f.u8", ST_U8, 3, s113, u8v, sizeof u8v), 0);
    assert_int_equal(st_writer_add_f32(w, "g.scalar", ST_F32, 0, NULL, &scalar), 0);
    assert_int_equal(st_writer_add_f32(w, "h.empty", ST_F32, 2, s03, NULL), 0);
    assert_int_equal(st_writer_meta(w, "dataset", "digits"), 0);
    assert_int_equal(st_writer_meta(w, "note", "quotes \" and \\ and unicode \xc3\xa9"), 0);
    assert_int_equal(st_writer_meta(w, "seed", "1"), 0);
    assert_int_equal(st_writer_meta(w, "seed", "7"), 0); /* replaces */
    /* the writer copied the data: changing the source now must not matter */
    f32v[0] = 99.0f;
    char err[512] = "";
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    f32v[0] = 1.5f;

    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1); /* renamed away */

    /* header layout: length multiple of 8, padded with spaces */
    size_t flen;
    uint8_t *bytes = read_bytes(path, &flen);
    uint64_t hlen;
    memcpy(&hlen, bytes, 8);
    assert_int_equal(hlen % 8, 0);
    assert_true(8 + hlen <= flen);
    assert_true(bytes[8] == '{');

    st_file *f = st_open(path, err, sizeof err);
    if (!f)
        fail_msg("%s", err);
    assert_string_equal(st_path(f), path);
    char hex[SHA256_HEX_SIZE];
    sha256_hex(bytes, flen, hex);
    assert_string_equal(st_sha256(f), hex);
    free(bytes);

    assert_int_equal(st_count(f), 8);
    const char *names[8] = { "a.f32", "b.f16", "c.bf16", "d.i32", "e.i64", "f.u8", "g.scalar",
                             "h.empty" };
    for (int i = 0; i < 8; i++)
        assert_string_equal(st_at(f, i)->name, names[i]); /* header order = add order */
    assert_null(st_at(f, 8));
    assert_null(st_at(f, -1));
    assert_null(st_get(f, "nope"));

    const st_tensor *t = st_get(f, "a.f32");
    assert_int_equal(t->dtype, ST_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->nbytes, 24);
    assert_int_equal(st_numel(t), 6);
    assert_memory_equal(t->data, f32v, sizeof f32v);
    float out[6];
    assert_int_equal(st_read_f32(t, out, 6, err, sizeof err), 0);
    assert_memory_equal(out, f32v, sizeof f32v);

    t = st_get(f, "b.f16");
    assert_int_equal(t->dtype, ST_F16);
    assert_int_equal(t->nbytes, 8);
    assert_int_equal(st_read_f32(t, out, 4, err, sizeof err), 0);
    for (int i = 0; i < 4; i++)
        assert_true(out[i] == halfv[i]); /* all exactly representable */

    t = st_get(f, "c.bf16");
    assert_int_equal(t->dtype, ST_BF16);
    assert_int_equal(st_read_f32(t, out, 3, err, sizeof err), 0);
    assert_true(out[0] == 1.0f && out[1] == 3.140625f);
    assert_true(fabsf(out[2] - bfv[2]) <= 1e30f / 128);

    t = st_get(f, "d.i32");
    assert_int_equal(t->dtype, ST_I32);
    assert_memory_equal(t->data, i32v, sizeof i32v);
    assert_int_equal(st_read_f32(t, out, 5, err, sizeof err), DDM_EFORMAT);
    assert_non_null(strstr(err, "dtype I32"));
    t = st_get(f, "e.i64");
    assert_int_equal(t->dtype, ST_I64);
    assert_memory_equal(t->data, i64v, sizeof i64v);
    t = st_get(f, "f.u8");
    assert_int_equal(t->dtype, ST_U8);
    assert_int_equal(t->ndim, 3);
    assert_memory_equal(t->data, u8v, sizeof u8v);
    t = st_get(f, "g.scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(st_numel(t), 1);
    assert_int_equal(st_read_f32(t, out, 1, err, sizeof err), 0);
    assert_true(out[0] == 42.0f);
    assert_int_equal(st_read_f32(t, out, 2, err, sizeof err), DDM_EMISMATCH);
    t = st_get(f, "h.empty");
    assert_int_equal(st_numel(t), 0);
    assert_int_equal(t->nbytes, 0);

    assert_int_equal(st_meta_count(f), 3);
    assert_string_equal(st_meta(f, "dataset"), "digits");
    assert_string_equal(st_meta(f, "note"), "quotes \" and \\ and unicode \xc3\xa9");
    assert_string_equal(st_meta(f, "seed"), "7");
    assert_null(st_meta(f, "missing"));
    const char *k, *v;
    assert_int_equal(st_meta_at(f, 0, &k, &v), 0);
    assert_string_equal(k, "dataset");
    assert_int_equal(st_meta_at(f, 3, &k, &v), DDM_ERANGE);
    st_close(f);
}

/* An empty writer makes a valid file with no tensors; a writer refuses bad input. */
static void test_writer_contract(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "empty.safetensors");
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_file *f = st_open(path, err, sizeof err);
    assert_non_null(f);
    assert_int_equal(st_count(f), 0);
    assert_int_equal(st_meta_count(f), 0);
    st_close(f);

    const int64_t s2[1] = { 2 }, neg[1] = { -2 };
    float x[2] = { 1, 2 };
    int32_t ix[2] = { 1, 2 };
    assert_int_equal(st_writer_add_f32(w, "x", ST_F32, 1, s2, x), 0);
    assert_int_equal(st_writer_add_f32(w, "x", ST_F32, 1, s2, x), DDM_EINVAL); /* duplicate */
    assert_int_equal(st_writer_add_f32(w, "", ST_F32, 1, s2, x), DDM_EINVAL);
    assert_int_equal(st_writer_add_f32(w, "__metadata__", ST_F32, 1, s2, x), DDM_EINVAL);
    assert_int_equal(st_writer_add_f32(w, "y", ST_I32, 1, s2, x), DDM_EINVAL);
    assert_int_equal(st_writer_add_f32(w, "y", ST_F32, 1, neg, x), DDM_EINVAL);
    assert_int_equal(st_writer_add_f32(w, "y", ST_F32, ST_MAX_DIMS + 1, s2, x), DDM_EINVAL);
    assert_int_equal(st_writer_add_f32(w, "y", ST_F32, 1, s2, NULL), DDM_EINVAL);
    assert_int_equal(st_writer_add_raw(w, "y", ST_I32, 1, s2, ix, 7), DDM_EINVAL);
    assert_int_equal(st_writer_add_raw(w, "y", (st_dtype)42, 1, s2, ix, 8), DDM_EINVAL);
    assert_int_equal(st_writer_add_raw(w, "y", ST_I32, 1, s2, ix, 8), 0);

    /* a missing directory: error with -errno, a message, and no file left */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no-such-dir/x.safetensors", tmpdir);
    err[0] = '\0';
    assert_int_equal(st_writer_save(w, bad, err, sizeof err), -ENOENT);
    assert_non_null(strstr(err, "cannot write weights file"));
    assert_non_null(strstr(err, "no-such-dir"));
    st_writer_free(w);
}

/* Saving over a file is atomic: a reader of the old file keeps its bytes. */
static void test_save_replaces_atomically(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "replace.safetensors");
    const int64_t s1[1] = { 1 };
    float one = 1.0f, two = 2.0f;
    st_writer *w = st_writer_new();
    assert_int_equal(st_writer_add_f32(w, "v", ST_F32, 1, s1, &one), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    st_file *old = st_open(path, err, sizeof err);
    assert_non_null(old);

    w = st_writer_new();
    assert_int_equal(st_writer_add_f32(w, "v", ST_F32, 1, s1, &two), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    st_file *cur = st_open(path, err, sizeof err);
    assert_non_null(cur);
    float a, b;
    assert_int_equal(st_read_f32(st_get(old, "v"), &a, 1, err, sizeof err), 0);
    assert_int_equal(st_read_f32(st_get(cur, "v"), &b, 1, err, sizeof err), 0);
    assert_true(a == 1.0f && b == 2.0f);
    assert_string_not_equal(st_sha256(old), st_sha256(cur));
    st_close(old);
    st_close(cur);
}

/* ---- corrupt files ---------------------------------------------------------------- */

#define T8 "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":"
enum { HDR, RAW };
static const struct corrupt {
    const char *what;
    int mode;          /* HDR: json + data_len filler bytes; RAW: raw bytes as given */
    const char *json;  /* or the raw bytes */
    size_t len;        /* data_len, or raw length */
    const char *expect;
} corrupt[] = {
    { "empty file", RAW, "", 0, "file is 0 bytes, too short" },
    { "7 bytes", RAW, "\x08\0\0\0\0\0\0", 7, "file is 7 bytes, too short" },
    { "absurd header length", RAW, "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10,
      "header length 9223372036854775807 exceeds the limit" },
    { "header past EOF", RAW, "\x64\0\0\0\0\0\0\0{}", 10,
      "header length 100 runs past the end of the file (10 bytes)" },
    { "invalid JSON", HDR, "{\"a\": ", 0, "header is not valid JSON" },
    { "JSON array", HDR, "[1,2]", 0, "header is not a JSON object" },
    { "bytes after JSON", HDR, "{} x", 0, "unexpected bytes after the JSON object" },
    { "entry not object", HDR, "{\"a\":5}", 0, "tensor \"a\": entry must be an object" },
    { "empty name", HDR, "{\"\":" T8 "[0,8]}}", 8, "a tensor has an empty name" },
    { "unknown dtype", HDR, "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
      "tensor \"a\": unsupported dtype \"F64\"" },
    { "dtype not a string", HDR, "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
      "tensor \"a\": dtype must be a string" },
    { "missing field", HDR, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
      "tensor \"a\": missing field \"data_offsets\"" },
    { "unknown field", HDR,
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"foo\":1}}", 4,
      "tensor \"a\": unknown field \"foo\"" },
    { "field twice", HDR,
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
      "tensor \"a\": field \"shape\" appears twice" },
    { "shape not array", HDR, "{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4,
      "tensor \"a\": shape must be an array" },
    { "negative shape", HDR, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,-3],\"data_offsets\":[0,4]}}",
      4, "tensor \"a\": shape[1] = -3 is negative" },
    { "non-integer shape", HDR,
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}}", 10,
      "tensor \"a\": shape[0] = 2.5 is not an integer" },
    { "string in shape", HDR,
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8,
      "tensor \"a\": shape[0] is not a number" },
    { "too many dims", HDR,
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
      "tensor \"a\": shape has 9 dimensions, at most 8" },
    { "huge dim", HDR, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,1]}}", 1,
      "tensor \"a\": shape[0] = 1e+300 is too large" },
    { "numel overflow", HDR,
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
      "tensor \"a\": shape [4294967296,4294967296] is too large" },
    { "offsets not a pair", HDR, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}",
      8, "tensor \"a\": data_offsets must be an array [begin, end]" },
    { "negative offset", HDR, "{\"a\":" T8 "[-8,0]}}", 8,
      "tensor \"a\": data_offsets[0] = -8 is negative" },
    { "begin > end", HDR, "{\"a\":" T8 "[8,0]}}", 8,
      "tensor \"a\": data_offsets [8, 0] begin after end" },
    { "size/shape mismatch", HDR,
      "{\"w1\":{\"dtype\":\"F32\",\"shape\":[5,6],\"data_offsets\":[0,100]}}", 100,
      "tensor \"w1\" data_offsets [0, 100] hold 100 bytes but shape [5,6] F32 needs 120" },
    { "offsets out of range", HDR, "{\"a\":" T8 "[0,8]},\"b\":" T8 "[400,408]}}", 16,
      "tensor \"b\": data_offsets [400, 408] run past the end of the data block (16 bytes)" },
    { "overlapping tensors", HDR, "{\"a\":" T8 "[0,8]},\"b\":" T8 "[4,12]}}", 12,
      "tensors \"a\" [0, 8] and \"b\" [4, 12] overlap" },
    { "hole", HDR, "{\"a\":" T8 "[0,8]},\"b\":" T8 "[12,20]}}", 20,
      "gap: bytes [8, 12) before tensor \"b\" belong to no tensor" },
    { "hole at start", HDR, "{\"a\":" T8 "[4,12]}}", 12,
      "gap: bytes [0, 4) before tensor \"a\"" },
    { "trailing bytes", HDR, "{\"a\":" T8 "[0,8]}}", 12,
      "4 trailing bytes after the last tensor" },
    { "truncated data block", HDR, "{\"a\":" T8 "[0,8]},\"b\":" T8 "[8,16]}}", 12,
      "file is truncated: tensors need 16 data bytes but only 12 follow the header" },
    { "metadata not object", HDR, "{\"__metadata__\":\"x\"}", 0,
      "__metadata__ must be an object of string values" },
    { "metadata not strings", HDR, "{\"__metadata__\":{\"ok\":\"1\",\"k\":1}}", 0,
      "__metadata__ value of \"k\" is not a string" },
    { "metadata key twice", HDR, "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0,
      "__metadata__ key \"k\" appears twice" },
    { "metadata twice", HDR, "{\"__metadata__\":{},\"__metadata__\":{}}", 0,
      "__metadata__ appears twice" },
    { "duplicate names", HDR, "{\"a\":" T8 "[0,8]},\"a\":" T8 "[8,16]}}", 16,
      "tensor \"a\" appears twice in the header" },
    { "control bytes in name", HDR,
      "{\"a\\nb\":{\"dtype\":\"F99\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
      "tensor \"a?b\": unsupported dtype" },
};

static void test_corrupt_files_rejected(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "corrupt.safetensors");
    char prefix[300];
    snprintf(prefix, sizeof prefix, "weights file %s: ", path);
    for (size_t i = 0; i < sizeof corrupt / sizeof corrupt[0]; i++) {
        const struct corrupt *c = &corrupt[i];
        if (c->mode == RAW)
            write_bytes(path, c->json, c->len);
        else
            write_st(path, c->json, c->len);
        memset(err, 0, sizeof err);
        st_file *f = st_open(path, err, sizeof err);
        if (f) {
            st_close(f);
            fail_msg("case \"%s\": st_open accepted a corrupt file", c->what);
        }
        if (!strstr(err, c->expect))
            fail_msg("case \"%s\": message \"%s\" lacks \"%s\"", c->what, err, c->expect);
        if (strncmp(err, prefix, strlen(prefix)) || strchr(err, '\n'))
            fail_msg("case \"%s\": message \"%s\" must be one line starting with \"%s\"", c->what,
                     err, prefix);
    }
    /* the table's files differ from valid ones only in the flaw: the same
     * shape of file with the flaw fixed opens */
    write_st(path, "{\"a\":" T8 "[0,8]},\"b\":" T8 "[8,16]}}", 16);
    st_file *f = st_open(path, err, sizeof err);
    assert_non_null(f);
    st_close(f);
}

static void test_open_system_errors(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "does-not-exist.safetensors");
    assert_null(st_open(path, err, sizeof err));
    assert_non_null(strstr(err, "cannot open: No such file or directory"));
    assert_null(st_open(tmpdir, err, sizeof err));
    assert_non_null(strstr(err, "not a regular file"));
    /* a tiny error buffer is truncated, never overrun */
    char small[8];
    assert_null(st_open(path, small, sizeof small));
    assert_int_equal(strlen(small), 7);
}

/* ---- random mutations ------------------------------------------------------------- */

static void test_mutations_never_crash(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "base.safetensors");
    st_writer *w = st_writer_new();
    float x[24];
    for (int i = 0; i < 24; i++)
        x[i] = (float)i * 0.25f - 3.0f;
    const int64_t s46[2] = { 4, 6 }, s8[1] = { 8 }, s3[1] = { 3 };
    int32_t ids[3] = { 1, 2, 3 };
    assert_int_equal(st_writer_add_f32(w, "w_in", ST_F32, 2, s46, x), 0);
    assert_int_equal(st_writer_add_f32(w, "b_in", ST_F16, 1, s8, x), 0);
    assert_int_equal(st_writer_add_f32(w, "g", ST_BF16, 1, s8, x + 8), 0);
    assert_int_equal(st_writer_add_raw(w, "ids", ST_I32, 1, s3, ids, sizeof ids), 0);
    assert_int_equal(st_writer_meta(w, "ddm.format", "ddm-mlp-v1"), 0);
    assert_int_equal(st_writer_meta(w, "hidden", "8"), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    size_t len;
    uint8_t *base = read_bytes(path, &len);
    uint8_t *buf = malloc(len + 64);
    assert_non_null(buf);

    tmp_path(path, sizeof path, "mutant.safetensors");
    static const char interesting[] = "\"{}[],:-.0123456789eE \\";
    uint64_t rs = 20240601;
    int opened = 0, refused = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = len;
        memcpy(buf, base, len);
        int muts = 1 + (int)(rng_splitmix64(&rs) % 4);
        for (int m = 0; m < muts && n > 0; m++) {
            uint64_t r = rng_splitmix64(&rs);
            /* bias towards the first 8 bytes and the header, where parsing happens */
            size_t at = (r >> 8) % 4 ? (size_t)((r >> 16) % (n < 200 ? n : 200))
                                     : (size_t)((r >> 16) % n);
            switch (r % 6) {
            case 0: buf[at] ^= (uint8_t)(1u << ((r >> 40) % 8)); break;
            case 1: buf[at] = (uint8_t)(r >> 48); break;
            case 2: buf[at] = (uint8_t)interesting[(r >> 40) % (sizeof interesting - 1)]; break;
            case 3: n = at; break; /* truncate */
            case 4: /* delete a byte */
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            default: /* insert a byte */
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = (uint8_t)interesting[(r >> 40) % (sizeof interesting - 1)];
                n++;
                break;
            }
        }
        write_bytes(path, buf, n);
        st_file *f = st_open(path, err, sizeof err);
        if (!f) {
            refused++;
            assert_non_null(strstr(err, "weights file "));
            assert_null(strchr(err, '\n'));
            continue;
        }
        opened++;
        /* whatever opened must be self-consistent with the bytes on disk */
        uint64_t hlen;
        memcpy(&hlen, buf, 8);
        size_t total = 0;
        for (int i = 0; i < st_count(f); i++) {
            const st_tensor *t = st_at(f, i);
            assert_true(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
            assert_int_equal(st_numel(t) * st_dtype_size(t->dtype), t->nbytes);
            total += t->nbytes;
            const uint8_t *p = t->data;
            unsigned sum = 0;
            for (size_t j = 0; j < t->nbytes; j++)
                sum += p[j]; /* touches every byte: faults if outside the mapping */
            (void)sum;
            if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
                size_t ne = st_numel(t);
                float *tmp = malloc(ne * sizeof *tmp + 1);
                assert_int_equal(st_read_f32(t, tmp, ne, err, sizeof err), 0);
                free(tmp);
            }
        }
        assert_int_equal(8 + hlen + total, n); /* tensors tile the data block */
        for (int i = 0; i < st_meta_count(f); i++) {
            const char *k, *v;
            assert_int_equal(st_meta_at(f, i, &k, &v), 0);
            assert_ptr_equal(st_meta(f, k), v);
        }
        char hex[SHA256_HEX_SIZE];
        sha256_hex(buf, n, hex);
        assert_string_equal(st_sha256(f), hex);
        st_close(f);
    }
    /* both outcomes must occur, or the mutator is not exercising anything */
    assert_true(opened > 50);
    assert_true(refused > 1000);
    free(buf);
    free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_sha256_boundaries),
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_f16_exhaustive_roundtrip),
        cmocka_unit_test(test_f16_rounding_is_nearest_even),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_roundtrip_every_dtype),
        cmocka_unit_test(test_writer_contract),
        cmocka_unit_test(test_save_replaces_atomically),
        cmocka_unit_test(test_corrupt_files_rejected),
        cmocka_unit_test(test_open_system_errors),
        cmocka_unit_test(test_mutations_never_crash),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
