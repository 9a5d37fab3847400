/* test_hmac.c -- SHA-256 on both implementations (portable and SHA-NI),
 * HMAC-SHA256 against RFC 4231, the worker protocol's MAC trailer, and
 * cluster key files. */
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
#include "common/hmac.h"
#include "common/sha256.h"
#include "tests/support/toyset.h"

static void hex_of(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

/* FIPS 180-4 vectors, one-shot and in uneven pieces. */
static void check_vectors(void)
{
    char hex[SHA256_HEX_SIZE];
    sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m448, strlen(m448), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                       "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    sha256_hex(m896, strlen(m896), hex);
    assert_string_equal(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    enum { MILLION = 1000000 };
    char *a = malloc(MILLION);
    assert_non_null(a);
    memset(a, 'a', MILLION);
    sha256_hex(a, MILLION, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    sha256_ctx ctx;
    uint8_t dig[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    for (size_t done = 0, piece = 3; done < MILLION; piece = piece * 7 % 1021 + 1) {
        size_t take = piece < MILLION - done ? piece : MILLION - done;
        sha256_update(&ctx, a + done, take);
        done += take;
    }
    sha256_final(&ctx, dig);
    sha256_to_hex(dig, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

static void test_sha256_portable(void **state)
{
    (void)state;
    assert_int_equal(sha256_use_hw(0), 0);
    check_vectors();
    sha256_use_hw(1);
}

static void test_sha256_shani(void **state)
{
    (void)state;
    if (!sha256_hw_available())
        skip(); /* this CPU has no SHA extensions: the portable code is all there is */
    assert_int_equal(sha256_use_hw(1), 1);
    check_vectors();
}

/* Both implementations agree on every length around the block and padding
 * boundaries and on multi-block runs (several blocks per compress call). */
static void test_sha256_implementations_agree(void **state)
{
    (void)state;
    uint8_t *msg = malloc(4096);
    assert_non_null(msg);
    for (int i = 0; i < 4096; i++)
        msg[i] = (uint8_t)(i * 131 + (i >> 7));
    for (size_t len = 0; len <= 4096; len += len < 300 ? 1 : 61) {
        char c[SHA256_HEX_SIZE], h[SHA256_HEX_SIZE];
        sha256_use_hw(0);
        sha256_hex(msg, len, c);
        sha256_use_hw(1);
        sha256_hex(msg, len, h);
        assert_string_equal(c, h);
    }
    free(msg);
}

/* RFC 4231 test cases 1, 2, 3, 4, 6 and 7. */
static void test_hmac_rfc4231(void **state)
{
    (void)state;
    uint8_t k20b[20], k20a[20], k25[25], k131[131], d50dd[50], d50cd[50];
    memset(k20b, 0x0b, sizeof k20b);
    memset(k20a, 0xaa, sizeof k20a);
    for (int i = 0; i < 25; i++)
        k25[i] = (uint8_t)(i + 1);
    memset(k131, 0xaa, sizeof k131);
    memset(d50dd, 0xdd, sizeof d50dd);
    memset(d50cd, 0xcd, sizeof d50cd);
    struct {
        const void *key;
        size_t klen;
        const void *data;
        size_t dlen;
        const char *mac;
    } tc[] = {
        { k20b, 20, "Hi There", 8,
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
        { "Jefe", 4, "what do ya want for nothing?", 28,
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
        { k20a, 20, d50dd, 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe" },
        { k25, 25, d50cd, 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b" },
        { k131, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54,
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" },
        { k131, 131,
          "This is a test using a larger than block-size key and a larger than block-size "
          "data. The key needs to be hashed before being used by the HMAC algorithm.", 152,
          "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2" },
    };
    for (int hw = 0; hw < 2; hw++) {
        sha256_use_hw(hw);
        for (size_t i = 0; i < sizeof tc / sizeof tc[0]; i++) {
            hmac_key k;
            hmac_key_set(&k, tc[i].key, tc[i].klen);
            uint8_t mac[HMAC_SIZE];
            char hex[2 * HMAC_SIZE + 1];
            hmac_sha256(&k, tc[i].data, tc[i].dlen, mac);
            hex_of(mac, HMAC_SIZE, hex);
            if (strcmp(hex, tc[i].mac))
                fail_msg("RFC 4231 case %zu (hw %d): %s, expected %s", i, hw, hex, tc[i].mac);
            /* incremental, in two pieces, gives the same */
            hmac_ctx c;
            hmac_start(&c, &k);
            hmac_update(&c, tc[i].data, tc[i].dlen / 3);
            hmac_update(&c, (const uint8_t *)tc[i].data + tc[i].dlen / 3,
                        tc[i].dlen - tc[i].dlen / 3);
            uint8_t mac2[HMAC_SIZE];
            hmac_final(&c, mac2);
            assert_memory_equal(mac, mac2, HMAC_SIZE);
        }
    }
    sha256_use_hw(1);
}

/* P || T parses as the same protobuf with mac set; a reply's MAC chains to
 * its request's; any flipped bit, another key, or another request fails. */
static void test_trailer(void **state)
{
    (void)state;
    hmac_key k, other;
    hmac_key_set(&k, "0123456789abcdef-cluster", 24);
    hmac_key_set(&other, "0123456789abcdef-cluster!", 25);
    uint8_t req[64 + HMAC_TRAILER_SIZE], rep[40 + HMAC_TRAILER_SIZE];
    for (int i = 0; i < 64; i++)
        req[i] = (uint8_t)(i * 3);
    for (int i = 0; i < 40; i++)
        rep[i] = (uint8_t)(i * 5 + 1);
    hmac_trailer_req(&k, req, 64, req + 64);
    assert_int_equal(req[64], 0x7a);
    assert_int_equal(req[65], 0x20);
    uint8_t mac[HMAC_SIZE];
    assert_int_equal(hmac_trailer_check_req(&k, req, sizeof req, mac), 0);
    assert_memory_equal(mac, req + 66, HMAC_SIZE);
    assert_int_equal(hmac_trailer_check_req(&other, req, sizeof req, mac), DDM_EMISMATCH);
    assert_int_equal(hmac_trailer_check_req(&k, req, 64, mac), DDM_EPROTO); /* no trailer */
    assert_int_equal(hmac_trailer_check_req(&k, req, 10, mac), DDM_EPROTO);
    for (size_t bit = 0; bit < 8 * sizeof req; bit += 7) {
        req[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        assert_true(hmac_trailer_check_req(&k, req, sizeof req, mac) != 0);
        req[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    assert_int_equal(hmac_trailer_check_req(&k, req, sizeof req, mac), 0);

    hmac_trailer_rep(&k, mac, rep, 40, rep + 40);
    assert_int_equal(hmac_trailer_check_rep(&k, mac, rep, sizeof rep), 0);
    uint8_t mac2[HMAC_SIZE];
    memcpy(mac2, mac, sizeof mac2);
    mac2[5] ^= 1; /* the same reply presented as the answer to another request */
    assert_int_equal(hmac_trailer_check_rep(&k, mac2, rep, sizeof rep), DDM_EMISMATCH);
    assert_int_equal(hmac_trailer_check_rep(&other, mac, rep, sizeof rep), DDM_EMISMATCH);
    rep[3] ^= 0x10;
    assert_int_equal(hmac_trailer_check_rep(&k, mac, rep, sizeof rep), DDM_EMISMATCH);
    /* the request tag and the reply tag differ: a request MAC is no reply MAC */
    uint8_t t[HMAC_TRAILER_SIZE];
    hmac_trailer_req(&k, rep, 40, t);
    memcpy(rep + 40, t, sizeof t);
    rep[3] ^= 0x10;
    assert_int_equal(hmac_trailer_check_rep(&k, mac, rep, sizeof rep), DDM_EMISMATCH);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

/* Key files: trailing whitespace trimmed (so "echo KEY > file" works), too
 * short / missing / a directory / a FIFO refused with the path in the message. */
static void test_key_files(void **state)
{
    (void)state;
    char dir[128], p1[256], p2[256], p3[256], p4[256], err[512];
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "test-hmac"), 0);
    snprintf(p1, sizeof p1, "%s/k1", dir);
    snprintf(p2, sizeof p2, "%s/k2", dir);
    snprintf(p3, sizeof p3, "%s/short", dir);
    snprintf(p4, sizeof p4, "%s/fifo", dir);
    write_file(p1, "correct horse battery staple\n\n", 0600);
    write_file(p2, "correct horse battery staple", 0600);
    write_file(p3, "tooshort  \n", 0600);
    hmac_key a, b, c;
    assert_int_equal(hmac_key_load(p1, &a, err, sizeof err), 0);
    assert_int_equal(hmac_key_load(p2, &b, err, sizeof err), 0);
    hmac_key_set(&c, "correct horse battery staple", 28);
    uint8_t ma[HMAC_SIZE], mb[HMAC_SIZE], mc[HMAC_SIZE];
    hmac_sha256(&a, "x", 1, ma);
    hmac_sha256(&b, "x", 1, mb);
    hmac_sha256(&c, "x", 1, mc);
    assert_memory_equal(ma, mb, HMAC_SIZE);
    assert_memory_equal(ma, mc, HMAC_SIZE);

    assert_int_equal(hmac_key_load(p3, &a, err, sizeof err), DDM_ERANGE);
    assert_non_null(strstr(err, p3));
    assert_non_null(strstr(err, "at least 16"));
    assert_true(hmac_key_load("/nonexistent/key", &a, err, sizeof err) < 0);
    assert_non_null(strstr(err, "/nonexistent/key"));
    assert_int_equal(hmac_key_load(dir, &a, err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
    assert_int_equal(mkfifo(p4, 0600), 0);
    assert_int_equal(hmac_key_load(p4, &a, err, sizeof err), DDM_EINVAL); /* no hang */
    toyset_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_portable),
        cmocka_unit_test(test_sha256_shani),
        cmocka_unit_test(test_sha256_implementations_agree),
        cmocka_unit_test(test_hmac_rfc4231),
        cmocka_unit_test(test_trailer),
        cmocka_unit_test(test_key_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
