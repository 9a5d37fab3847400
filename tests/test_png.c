/* test_png.c -- the PNG reader and writer (common/png): every colour type and
 * bit depth converted to 8-bit grey or RGB, alpha composited on a chosen
 * background, RGB grids; and hostile files -- truncated at every length, a
 * header claiming 100000x100000, decompression bombs in IDAT and in a zTXt
 * chunk, wrong CRCs, random mutations -- each refused (or read) cleanly with
 * nothing leaked (run under ASan by make SANITIZE=1 test).
 *
 * Test files are built here chunk by chunk (zlib for IDAT and CRCs) so that
 * every field can be set or broken on purpose. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/png.h"
#include "common/rng.h"
#include "tests/support/toyset.h"

static char tmpdir[64];

static int group_setup(void **state)
{
    (void)state;
    return toyset_tempdir(tmpdir, sizeof tmpdir, "test-png");
}

static int group_teardown(void **state)
{
    (void)state;
    toyset_rmdir(tmpdir);
    return 0;
}

/* ---- a PNG builder ------------------------------------------------------------------- */

typedef struct bytes {
    uint8_t *p;
    size_t len, cap;
} bytes;

static void put(bytes *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static void chunk(bytes *b, const char *type, const uint8_t *data, size_t n)
{
    uint8_t hdr[8];
    be32(hdr, (uint32_t)n);
    memcpy(hdr + 4, type, 4);
    put(b, hdr, 8);
    if (n)
        put(b, data, n);
    uLong crc = crc32(0, (const Bytef *)type, 4);
    if (n)
        crc = crc32(crc, data, (uInt)n);
    uint8_t c[4];
    be32(c, (uint32_t)crc);
    put(b, c, 4);
}

static void start(bytes *b, uint32_t w, uint32_t h, int depth, int type, int interlace)
{
    static const uint8_t sig[8] = { 137, 80, 78, 71, 13, 10, 26, 10 };
    memset(b, 0, sizeof *b);
    put(b, sig, 8);
    uint8_t ihdr[13];
    be32(ihdr, w);
    be32(ihdr + 4, h);
    ihdr[8] = (uint8_t)depth, ihdr[9] = (uint8_t)type, ihdr[10] = 0, ihdr[11] = 0;
    ihdr[12] = (uint8_t)interlace;
    chunk(b, "IHDR", ihdr, 13);
}

/* IDAT from raw scanlines (each already led by its filter byte). */
static void idat(bytes *b, const uint8_t *raw, size_t n)
{
    uLongf clen = compressBound((uLong)n);
    uint8_t *z = malloc(clen);
    assert_non_null(z);
    assert_int_equal(compress2(z, &clen, raw, (uLong)n, 9), Z_OK);
    chunk(b, "IDAT", z, clen);
    free(z);
}

static void finish(bytes *b) { chunk(b, "IEND", NULL, 0); }

/* Packs samples [h][w*spp] of `depth` bits (8/16: big-endian) into
 * scanlines with filter byte 0. Returns malloc'd bytes, *n their count. */
static uint8_t *scanlines(const unsigned *s, int w, int h, int spp, int depth, size_t *n)
{
    size_t row = ((size_t)w * spp * depth + 7) / 8;
    uint8_t *raw = calloc((row + 1) * h, 1);
    assert_non_null(raw);
    for (int y = 0; y < h; y++) {
        uint8_t *r = raw + y * (row + 1) + 1;
        for (int i = 0; i < w * spp; i++) {
            unsigned v = s[y * w * spp + i];
            if (depth == 16) {
                r[2 * i] = (uint8_t)(v >> 8), r[2 * i + 1] = (uint8_t)v;
            } else if (depth == 8) {
                r[i] = (uint8_t)v;
            } else {
                int bit = i * depth, shift = 8 - depth - bit % 8;
                r[bit / 8] |= (uint8_t)(v << shift);
            }
        }
    }
    *n = (row + 1) * h;
    return raw;
}

/* A whole file: w x h samples of the given type/depth, optional PLTE/tRNS. */
static bytes make_png(const unsigned *s, int w, int h, int depth, int type, const uint8_t *plte,
                      size_t plte_n, const uint8_t *trns, size_t trns_n)
{
    static const int spp_of[7] = { 1, 0, 3, 1, 2, 0, 4 };
    bytes b;
    start(&b, (uint32_t)w, (uint32_t)h, depth, type, 0);
    if (plte)
        chunk(&b, "PLTE", plte, plte_n);
    if (trns)
        chunk(&b, "tRNS", trns, trns_n);
    size_t n;
    uint8_t *raw = scanlines(s, w, h, spp_of[type], depth, &n);
    idat(&b, raw, n);
    free(raw);
    finish(&b);
    return b;
}

static int decode(const bytes *b, int channels, uint8_t r, uint8_t g, uint8_t bl, pngio_image *img)
{
    pngio_opts o = { .channels = channels, .background = { r, g, bl } };
    char err[256];
    int rc = pngio_decode(b->p, b->len, &o, img, err, sizeof err);
    if (rc)
        print_message("decode: %s\n", err);
    return rc;
}

static uint8_t luma(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((6968 * r + 23434 * g + 2366 * b + 16384) >> 15);
}

/* ---- every input type ----------------------------------------------------------------- */

static void test_grey_depths(void **state)
{
    (void)state;
    const int W = 5, H = 3;
    for (int depth = 1; depth <= 16; depth *= 2) {
        unsigned max = depth == 16 ? 65535u : (1u << depth) - 1;
        unsigned s[15];
        for (int i = 0; i < W * H; i++)
            s[i] = (unsigned)(i * 7) % (max + 1);
        bytes b = make_png(s, W, H, depth, 0, NULL, 0, NULL, 0);
        pngio_image img;
        assert_int_equal(decode(&b, 1, 0, 0, 0, &img), 0);
        assert_int_equal(img.width, W);
        assert_int_equal(img.height, H);
        assert_int_equal(img.channels, 1);
        assert_int_equal(img.colour, 0);
        for (int i = 0; i < W * H; i++) {
            unsigned want = depth == 16 ? (s[i] * 255u + 32767u) / 65535u : s[i] * 255u / max;
            assert_int_equal(img.pix[i], want);
        }
        pngio_image_free(&img);
        /* the same file as RGB: three equal channels */
        assert_int_equal(decode(&b, 3, 0, 0, 0, &img), 0);
        assert_int_equal(img.channels, 3);
        for (int i = 0; i < W * H; i++) {
            assert_int_equal(img.pix[3 * i], img.pix[3 * i + 1]);
            assert_int_equal(img.pix[3 * i + 1], img.pix[3 * i + 2]);
        }
        pngio_image_free(&img);
        free(b.p);
    }
}

static void test_rgb_and_rgba(void **state)
{
    (void)state;
    const int W = 4, H = 2;
    unsigned rgb[24], rgba[32];
    for (int i = 0; i < W * H; i++) {
        rgb[3 * i] = 30u * i, rgb[3 * i + 1] = 255u - 20u * i, rgb[3 * i + 2] = (7u * i) % 256;
        for (int k = 0; k < 3; k++)
            rgba[4 * i + k] = rgb[3 * i + k];
        rgba[4 * i + 3] = i == 0 ? 0u : i == 1 ? 255u : 37u * i % 256u;
    }
    for (int depth = 8; depth <= 16; depth += 8) {
        unsigned s3[24], s4[32];
        for (int i = 0; i < 24; i++)
            s3[i] = depth == 16 ? rgb[i] * 257u : rgb[i];
        for (int i = 0; i < 32; i++)
            s4[i] = depth == 16 ? rgba[i] * 257u : rgba[i];
        bytes b = make_png(s3, W, H, depth, 2, NULL, 0, NULL, 0);
        pngio_image img;
        assert_int_equal(decode(&b, 3, 9, 9, 9, &img), 0);
        assert_int_equal(img.colour, 1);
        assert_int_equal(img.had_alpha, 0);
        for (int i = 0; i < 24; i++)
            assert_int_equal(img.pix[i], rgb[i]);
        pngio_image_free(&img);
        assert_int_equal(decode(&b, 1, 0, 0, 0, &img), 0);
        for (int i = 0; i < W * H; i++)
            assert_int_equal(img.pix[i], luma(rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]));
        pngio_image_free(&img);
        free(b.p);

        /* RGBA: alpha composited on the background chosen */
        const uint8_t bg[3] = { 10, 200, 40 };
        b = make_png(s4, W, H, depth, 6, NULL, 0, NULL, 0);
        assert_int_equal(decode(&b, 3, bg[0], bg[1], bg[2], &img), 0);
        assert_int_equal(img.had_alpha, 1);
        for (int i = 0; i < W * H; i++) {
            unsigned a = rgba[4 * i + 3];
            for (int k = 0; k < 3; k++) {
                unsigned want = (rgba[4 * i + k] * a + bg[k] * (255 - a) + 127) / 255;
                assert_int_equal(img.pix[3 * i + k], want);
            }
        }
        assert_memory_equal(img.pix, bg, 3); /* pixel 0 is fully transparent */
        pngio_image_free(&img);
        free(b.p);
    }
}

static void test_grey_alpha(void **state)
{
    (void)state;
    unsigned s[4] = { 200, 0, 100, 255 }; /* two pixels: (200, a 0), (100, a 255) */
    bytes b = make_png(s, 2, 1, 8, 4, NULL, 0, NULL, 0);
    pngio_image img;
    assert_int_equal(decode(&b, 1, 255, 255, 255, &img), 0);
    assert_int_equal(img.pix[0], 255); /* transparent: the white background */
    assert_int_equal(img.pix[1], 100);
    pngio_image_free(&img);
    assert_int_equal(decode(&b, 3, 255, 0, 0, &img), 0);
    assert_int_equal(img.colour, 1); /* the red background shows */
    const uint8_t want[6] = { 255, 0, 0, 100, 100, 100 };
    assert_memory_equal(img.pix, want, 6);
    pngio_image_free(&img);
    free(b.p);
}

static void test_palette_with_trns(void **state)
{
    (void)state;
    const uint8_t plte[12] = { 255, 0, 0, 0, 255, 0, 0, 0, 255, 50, 60, 70 };
    const uint8_t trns[2] = { 0, 128 }; /* entry 0 transparent, 1 half, 2-3 opaque */
    const uint8_t bg[3] = { 0, 0, 0 };
    for (int depth = 2; depth <= 8; depth *= 2) {
        unsigned s[8] = { 0, 1, 2, 3, 3, 2, 1, 0 };
        bytes b = make_png(s, 4, 2, depth, 3, plte, sizeof plte, trns, sizeof trns);
        pngio_image img;
        assert_int_equal(decode(&b, 3, bg[0], bg[1], bg[2], &img), 0);
        assert_int_equal(img.had_alpha, 1);
        for (int i = 0; i < 8; i++) {
            unsigned a = s[i] < 2 ? trns[s[i]] : 255;
            for (int k = 0; k < 3; k++)
                assert_int_equal(img.pix[3 * i + k], (plte[3 * s[i] + k] * a + 127) / 255);
        }
        pngio_image_free(&img);
        free(b.p);
    }
    /* 1-bit palette without tRNS */
    unsigned s1[8] = { 0, 1, 1, 0, 1, 0, 0, 1 };
    bytes b = make_png(s1, 8, 1, 1, 3, plte, 6, NULL, 0);
    pngio_image img;
    assert_int_equal(decode(&b, 3, 0, 0, 0, &img), 0);
    for (int i = 0; i < 8; i++)
        assert_memory_equal(img.pix + 3 * i, plte + 3 * s1[i], 3);
    pngio_image_free(&img);
    free(b.p);
}

static void test_round_trip_and_interlace(void **state)
{
    (void)state;
    /* our encoder, grey and RGB, back through the decoder */
    uint8_t pix[7 * 5 * 3];
    for (size_t i = 0; i < sizeof pix; i++)
        pix[i] = (uint8_t)(i * 13);
    char err[256];
    for (int ch = 1; ch <= 3; ch += 2) {
        uint8_t *png;
        size_t len;
        assert_int_equal(pngio_encode(pix, 7, 5, ch, &png, &len, err, sizeof err), 0);
        pngio_image img;
        pngio_opts o = { .channels = ch };
        assert_int_equal(pngio_decode(png, len, &o, &img, err, sizeof err), 0);
        assert_int_equal(img.width, 7);
        assert_int_equal(img.height, 5);
        assert_memory_equal(img.pix, pix, (size_t)7 * 5 * ch);
        pngio_image_free(&img);
        free(png);
    }
    assert_int_equal(pngio_encode(pix, 7, 5, 2, &(uint8_t *){ NULL }, &(size_t){ 0 }, err,
                                  sizeof err), DDM_EINVAL);
    /* RGBA out, composited back in on a background */
    uint8_t rgba[8] = { 200, 100, 0, 255, 200, 100, 0, 0 };
    uint8_t *png;
    size_t len;
    assert_int_equal(pngio_encode(rgba, 2, 1, 4, &png, &len, err, sizeof err), 0);
    pngio_image im;
    pngio_opts bo = { .channels = 3, .background = { 1, 2, 3 } };
    assert_int_equal(pngio_decode(png, len, &bo, &im, err, sizeof err), 0);
    const uint8_t want_rgba[6] = { 200, 100, 0, 1, 2, 3 };
    assert_memory_equal(im.pix, want_rgba, 6);
    assert_int_equal(im.had_alpha, 1);
    pngio_image_free(&im);
    free(png);

    /* Adam7 interlace: built with 8-bit grey, filter 0 per pass */
    const int W = 9, H = 9;
    static const int px0[7] = { 0, 4, 0, 2, 0, 1, 0 }, py0[7] = { 0, 0, 4, 0, 2, 0, 1 };
    static const int pdx[7] = { 8, 8, 4, 4, 2, 2, 1 }, pdy[7] = { 8, 8, 8, 4, 4, 2, 2 };
    uint8_t raw[512];
    size_t n = 0;
    for (int p = 0; p < 7; p++) {
        for (int y = py0[p]; y < H; y += pdy[p]) {
            if (px0[p] >= W)
                continue;
            raw[n++] = 0;
            for (int x = px0[p]; x < W; x += pdx[p])
                raw[n++] = (uint8_t)(y * W + x);
        }
    }
    bytes b;
    start(&b, (uint32_t)W, (uint32_t)H, 8, 0, 1);
    idat(&b, raw, n);
    finish(&b);
    pngio_image img;
    assert_int_equal(decode(&b, 1, 0, 0, 0, &img), 0);
    for (int i = 0; i < W * H; i++)
        assert_int_equal(img.pix[i], i);
    pngio_image_free(&img);
    free(b.p);
}

static void test_rgb_grid(void **state)
{
    (void)state;
    /* two 2x1 RGB images: red|green and blue|white, in a 2-column grid */
    const float imgs[12] = { 1, -1, -1, -1, 1, -1, -1, -1, 1, 1, 1, 1 };
    uint8_t *png;
    size_t len;
    char err[256];
    assert_int_equal(pngio_encode_grid_ch(imgs, 2, 2, 1, 3, 2, &png, &len, err, sizeof err), 0);
    pngio_image img;
    pngio_opts o = { .channels = 3 };
    assert_int_equal(pngio_decode(png, len, &o, &img, err, sizeof err), 0);
    assert_int_equal(img.width, 2 + PNGIO_GRID_SEP + 2);
    assert_int_equal(img.height, 1);
    const uint8_t want[] = { 255, 0, 0, 0, 255, 0, 128, 128, 128, 128, 128, 128,
                             0, 0, 255, 255, 255, 255 };
    assert_memory_equal(img.pix, want, sizeof want);
    pngio_image_free(&img);
    free(png);
    /* grey grids are what they were */
    assert_int_equal(pngio_encode_grid(imgs, 3, 2, 2, 3, &png, &len, err, sizeof err), 0);
    assert_int_equal(pngio_decode(png, len, NULL, &img, err, sizeof err), 0);
    assert_int_equal(img.channels, 1);
    assert_int_equal(img.width, 3 * 2 + 2 * PNGIO_GRID_SEP);
    pngio_image_free(&img);
    free(png);
}

/* ---- hostile files ---------------------------------------------------------------------- */

static bytes small_rgb(void)
{
    unsigned s[6 * 4 * 3];
    for (int i = 0; i < 72; i++)
        s[i] = (unsigned)(i * 37) % 256;
    return make_png(s, 6, 4, 8, 2, NULL, 0, NULL, 0);
}

static void test_truncated_at_every_length(void **state)
{
    (void)state;
    bytes b = small_rgb();
    pngio_image img;
    char err[256];
    for (size_t n = 0; n < b.len; n++) {
        int rc = pngio_decode(b.p, n, &(pngio_opts){ .channels = 3 }, &img, err, sizeof err);
        if (rc != DDM_EFORMAT)
            fail_msg("a file cut at %zu of %zu bytes: rc %d (%s)", n, b.len, rc, err);
        assert_null(img.pix);
    }
    assert_int_equal(decode(&b, 3, 0, 0, 0, &img), 0);
    pngio_image_free(&img);
    free(b.p);
}

static void test_huge_header_refused_before_allocation(void **state)
{
    (void)state;
    /* 100000 x 100000 claimed, a few bytes of data */
    bytes b;
    start(&b, 100000, 100000, 8, 2, 0);
    uint8_t raw[16] = { 0 };
    idat(&b, raw, sizeof raw);
    finish(&b);
    pngio_image img;
    char err[256];
    assert_int_equal(pngio_decode(b.p, b.len, NULL, &img, err, sizeof err), DDM_ERANGE);
    assert_non_null(strstr(err, "100000"));
    free(b.p);

    /* within libpng's side limit but over our pixel limit */
    start(&b, 16000, 16000, 8, 0, 0);
    idat(&b, raw, sizeof raw);
    finish(&b);
    assert_int_equal(pngio_decode(b.p, b.len, NULL, &img, err, sizeof err), DDM_ERANGE);
    assert_non_null(strstr(err, "limit"));
    free(b.p);

    /* a caller's own limit */
    b = small_rgb();
    pngio_opts o = { .channels = 3, .max_pixels = 23 };
    assert_int_equal(pngio_decode(b.p, b.len, &o, &img, err, sizeof err), DDM_ERANGE);
    o.max_pixels = 24;
    assert_int_equal(pngio_decode(b.p, b.len, &o, &img, err, sizeof err), 0);
    pngio_image_free(&img);
    free(b.p);

    /* zero width */
    start(&b, 0, 5, 8, 0, 0);
    finish(&b);
    assert_true(pngio_decode(b.p, b.len, NULL, &img, err, sizeof err) < 0);
    free(b.p);
}

/* 64 MiB of zeros, deflated (about 64 KiB). */
static uint8_t *zeros_deflated(size_t *clen, size_t raw_len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    assert_int_equal(deflateInit(&z, 9), Z_OK);
    size_t cap = raw_len / 500 + 4096;
    uint8_t *out = malloc(cap);
    uint8_t *zero = calloc(1 << 16, 1);
    assert_non_null(out);
    assert_non_null(zero);
    z.next_out = out;
    z.avail_out = (uInt)cap;
    for (size_t done = 0; done < raw_len; done += 1 << 16) {
        z.next_in = zero;
        z.avail_in = 1 << 16;
        int flush = done + (1 << 16) >= raw_len ? Z_FINISH : Z_NO_FLUSH;
        assert_true(deflate(&z, flush) != Z_STREAM_ERROR);
        assert_true(z.avail_out > 0);
    }
    *clen = z.total_out;
    deflateEnd(&z);
    free(zero);
    return out;
}

static void test_decompression_bombs(void **state)
{
    (void)state;
    size_t clen;
    uint8_t *z = zeros_deflated(&clen, (size_t)64 << 20);
    pngio_image img;
    char err[256];

    /* IDAT: an 8x8 grey image whose stream inflates to 64 MiB. libpng
     * inflates only what the rows need (plus one small buffer to notice the
     * excess): the decode ends fast, either refused or with the 8x8 image. */
    bytes b;
    start(&b, 8, 8, 8, 0, 0);
    chunk(&b, "IDAT", z, clen);
    finish(&b);
    int rc = pngio_decode(b.p, b.len, NULL, &img, err, sizeof err);
    assert_true(rc == 0 || rc == DDM_EFORMAT);
    if (rc == 0) {
        assert_int_equal(img.width, 8);
        for (int i = 0; i < 64; i++)
            assert_int_equal(img.pix[i], 0);
    }
    pngio_image_free(&img);
    free(b.p);

    /* zTXt: a text chunk inflating to 64 MiB is skipped unread */
    uint8_t *ztxt = malloc(clen + 8);
    assert_non_null(ztxt);
    memcpy(ztxt, "Comment\0\0", 9); /* keyword, NUL, method 0 */
    memcpy(ztxt + 9, z, clen - 1);
    unsigned s[4] = { 1, 2, 3, 4 };
    bytes good = make_png(s, 2, 2, 8, 0, NULL, 0, NULL, 0);
    start(&b, 2, 2, 8, 0, 0);
    chunk(&b, "zTXt", ztxt, clen + 8);
    put(&b, good.p + 33, good.len - 33); /* the good file's IDAT and IEND */
    assert_int_equal(decode(&b, 1, 0, 0, 0, &img), 0);
    assert_int_equal(img.pix[3], 4);
    pngio_image_free(&img);
    free(b.p);
    free(good.p);
    free(ztxt);
    free(z);
}

static void test_wrong_crcs(void **state)
{
    (void)state;
    bytes b = small_rgb();
    pngio_image img;
    char err[256];
    /* IHDR's CRC is at 8 + 8 + 13 */
    b.p[29] ^= 0x55;
    assert_int_equal(pngio_decode(b.p, b.len, NULL, &img, err, sizeof err), DDM_EFORMAT);
    assert_non_null(strstr(err, "CRC"));
    b.p[29] ^= 0x55;
    /* one byte of IDAT's compressed data */
    b.p[33 + 8 + 2] ^= 0x01;
    assert_int_equal(pngio_decode(b.p, b.len, NULL, &img, err, sizeof err), DDM_EFORMAT);
    assert_null(img.pix);
    free(b.p);
}

static void test_mutations_never_crash(void **state)
{
    (void)state;
    unsigned pal[16] = { 0, 1, 2, 3, 3, 2, 1, 0, 0, 0, 1, 1, 2, 2, 3, 3 };
    const uint8_t plte[12] = { 255, 0, 0, 0, 255, 0, 0, 0, 255, 50, 60, 70 };
    const uint8_t trns[1] = { 7 };
    bytes base[2] = { small_rgb(), make_png(pal, 4, 4, 2, 3, plte, 12, trns, 1) };
    uint64_t r = 42;
    uint8_t *m = malloc(base[0].len > base[1].len ? base[0].len : base[1].len);
    assert_non_null(m);
    int ok = 0, refused = 0;
    for (int it = 0; it < 4000; it++) {
        const bytes *b = &base[it & 1];
        memcpy(m, b->p, b->len);
        int flips = 1 + (int)((uint32_t)rng_splitmix64(&r) % 4);
        for (int f = 0; f < flips; f++) {
            size_t at = 8 + (uint32_t)rng_splitmix64(&r) % (b->len - 8); /* keep the signature */
            m[at] = (uint8_t)(uint32_t)rng_splitmix64(&r);
        }
        size_t len = (uint32_t)rng_splitmix64(&r) % 8 == 0 ? (uint32_t)rng_splitmix64(&r) % b->len : b->len;
        pngio_image img;
        char err[256];
        int rc = pngio_decode(m, len, &(pngio_opts){ .channels = 3 }, &img, err, sizeof err);
        assert_true(rc == 0 || rc == DDM_EFORMAT || rc == DDM_ERANGE);
        if (rc == 0) {
            ok++;
            assert_true(img.width > 0 && img.height > 0);
        } else {
            refused++;
            assert_true(err[0] != '\0');
        }
        pngio_image_free(&img);
    }
    assert_true(refused > 3000); /* nearly every mutation breaks a CRC */
    (void)ok;
    free(m);
    free(base[0].p);
    free(base[1].p);
}

static void test_read_names_the_file(void **state)
{
    (void)state;
    char path[256], err[512];
    pngio_image img;
    snprintf(path, sizeof path, "%s/missing.png", tmpdir);
    assert_int_equal(pngio_read(path, NULL, &img, err, sizeof err), DDM_ENOTFOUND);
    assert_non_null(strstr(err, path));
    assert_int_equal(pngio_read(tmpdir, NULL, &img, err, sizeof err), DDM_EINVAL);
    snprintf(path, sizeof path, "%s/cut.png", tmpdir);
    bytes b = small_rgb();
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(b.p, 1, b.len - 20, f);
    fclose(f);
    assert_int_equal(pngio_read(path, NULL, &img, err, sizeof err), DDM_EFORMAT);
    assert_non_null(strstr(err, path));
    assert_null(img.pix);
    /* and the whole file reads */
    f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(b.p, 1, b.len, f);
    fclose(f);
    assert_int_equal(pngio_read(path, &(pngio_opts){ .channels = 3 }, &img, err, sizeof err), 0);
    assert_int_equal(img.width, 6);
    pngio_image_free(&img);
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grey_depths),
        cmocka_unit_test(test_rgb_and_rgba),
        cmocka_unit_test(test_grey_alpha),
        cmocka_unit_test(test_palette_with_trns),
        cmocka_unit_test(test_round_trip_and_interlace),
        cmocka_unit_test(test_rgb_grid),
        cmocka_unit_test(test_truncated_at_every_length),
        cmocka_unit_test(test_huge_header_refused_before_allocation),
        cmocka_unit_test(test_decompression_bombs),
        cmocka_unit_test(test_wrong_crcs),
        cmocka_unit_test(test_mutations_never_crash),
        cmocka_unit_test(test_read_names_the_file),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
