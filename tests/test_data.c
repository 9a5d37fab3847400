/* test_data.c -- dataset loaders on synthetic files (digits sheet, IDX plain and
 * gzip'd), their rejections of broken files, subsets, and the PNG grid writer. */
#define _GNU_SOURCE
#include <ftw.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/png.h"
#include "tools/train/data.h"

#define SHEET_W 2000
#define SHEET_H 1000

typedef struct fixture {
    char dir[64];      /* temp data dir with digits/ and fashion/ */
    uint8_t *sheet;    /* [SHEET_H][SHEET_W] synthetic digits sheet */
    dataset *ds[2];
} fixture;

/* Tile (r, c) of the sheet: its id r*100+c in the first two pixels (low,
 * high byte), then a pattern; ids let a test find which tile a sample is. */
static uint8_t sheet_value(int r, int c, int y, int x)
{
    int id = r * 100 + c;
    if (y == 0 && x == 0)
        return (uint8_t)(id & 0xff);
    if (y == 0 && x == 1)
        return (uint8_t)(id >> 8);
    return (uint8_t)((y * 20 + x + r * 3 + c * 5) & 0xff);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/ddm-test-data-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    char p[256];
    snprintf(p, sizeof p, "%s/digits", f->dir);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof p, "%s/fashion", f->dir);
    assert_int_equal(mkdir(p, 0755), 0);
    f->sheet = malloc(SHEET_W * SHEET_H);
    assert_non_null(f->sheet);
    for (int y = 0; y < SHEET_H; y++)
        for (int x = 0; x < SHEET_W; x++)
            f->sheet[y * SHEET_W + x] = sheet_value(y / 20, x / 20, y % 20, x % 20);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f->sheet);
    data_free(f->ds[0]);
    data_free(f->ds[1]);
    free(f);
    return 0;
}

static void path_of(const fixture *f, const char *rel, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", f->dir, rel);
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void write_sheet(fixture *f)
{
    char p[256], err[256];
    path_of(f, "digits/digits.png", p, sizeof p);
    assert_int_equal(pngio_write_grey(p, f->sheet, SHEET_W, SHEET_H, err, sizeof err), 0);
}

/* ---- digits ---------------------------------------------------------------- */

/* Checks sample i of ds against the tile it came from; returns the tile id. */
static int check_digit_sample(const fixture *f, const dataset *ds, int i)
{
    const float *img = ds->pixels + (size_t)i * DATA_DIM;
    int lo = (int)((img[4 * 28 + 4] + 1.0f) * 127.5f + 0.5f);
    int hi = (int)((img[4 * 28 + 5] + 1.0f) * 127.5f + 0.5f);
    int id = lo + 256 * hi;
    int r = id / 100, c = id % 100;
    assert_true(r >= 0 && r < 50);
    assert_int_equal(ds->labels[i], r / 5);
    for (int y = 0; y < 28; y++) {
        for (int x = 0; x < 28; x++) {
            float v = img[y * 28 + x];
            if (y < 4 || y >= 24 || x < 4 || x >= 24) {
                assert_true(v == -1.0f); /* black padding */
            } else {
                uint8_t b = f->sheet[(r * 20 + y - 4) * SHEET_W + c * 20 + x - 4];
                assert_float_equal(v, b / 127.5 - 1.0, 1e-6);
            }
        }
    }
    return id;
}

static void test_digits_load_and_split(void **state)
{
    fixture *f = *state;
    write_sheet(f);
    char err[256] = "";
    for (int s = 0; s < 2; s++) {
        int rc = data_load("digits", f->dir, s == 0 ? DATA_TRAIN : DATA_TEST, &f->ds[s], err,
                           sizeof err);
        assert_int_equal(rc, 0);
        assert_string_equal(f->ds[s]->name, "digits");
        assert_int_equal(f->ds[s]->dim, 784);
        assert_int_equal(f->ds[s]->width, 28);
        assert_int_equal(f->ds[s]->n_classes, 10);
        assert_string_equal(f->ds[s]->class_names[7], "7");
    }
    assert_int_equal(f->ds[0]->n, 4500);
    assert_int_equal(f->ds[1]->n, 500);
    int counts[10];
    data_class_counts(f->ds[0], counts);
    for (int c = 0; c < 10; c++)
        assert_int_equal(counts[c], 450);
    data_class_counts(f->ds[1], counts);
    for (int c = 0; c < 10; c++)
        assert_int_equal(counts[c], 50);

    /* every tile exactly once across the two splits, each test tile is
     * sample j % 10 == 0 of its class */
    static uint8_t seen[5000];
    memset(seen, 0, sizeof seen);
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < f->ds[s]->n; i++) {
            int id = check_digit_sample(f, f->ds[s], i);
            int j = (id / 100 % 5) * 100 + id % 100; /* index within its class */
            assert_int_equal(j % 10 == 0, s == 1);
            assert_int_equal(seen[id], 0);
            seen[id] = 1;
        }
    }
    for (int id = 0; id < 5000; id++)
        assert_int_equal(seen[id], 1);
}

/* An RGB sheet with equal channels loads exactly like the grey one. */
static void test_digits_rgb_sheet(void **state)
{
    fixture *f = *state;
    uint8_t *rgb = malloc((size_t)SHEET_W * SHEET_H * 3);
    assert_non_null(rgb);
    for (size_t i = 0; i < (size_t)SHEET_W * SHEET_H; i++)
        rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = f->sheet[i];
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = SHEET_W;
    img.height = SHEET_H;
    img.format = PNG_FORMAT_RGB;
    char p[256];
    path_of(f, "digits/digits.png", p, sizeof p);
    assert_true(png_image_write_to_file(&img, p, 0, rgb, 0, NULL));
    free(rgb);
    char err[256] = "";
    assert_int_equal(data_load("digits", f->dir, DATA_TEST, &f->ds[1], err, sizeof err), 0);
    assert_int_equal(f->ds[1]->n, 500);
    for (int i = 0; i < f->ds[1]->n; i += 7)
        check_digit_sample(f, f->ds[1], i);
}

static void test_digits_missing(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    assert_int_equal(data_load("digits", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err),
                     DDM_ENOTFOUND);
    assert_null(f->ds[0]);
    assert_non_null(strstr(err, "digits.png"));
    assert_non_null(strstr(err, "make data"));
}

static void test_digits_wrong_size(void **state)
{
    fixture *f = *state;
    char p[256], err[256] = "";
    path_of(f, "digits/digits.png", p, sizeof p);
    assert_int_equal(pngio_write_grey(p, f->sheet, 1000, 1000, err, sizeof err), 0);
    assert_int_equal(data_load("digits", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err),
                     DDM_EFORMAT);
    assert_null(f->ds[0]);
    assert_non_null(strstr(err, "1000x1000"));
    assert_non_null(strstr(err, "expected 2000x1000"));
}

static void test_digits_truncated_and_garbage(void **state)
{
    fixture *f = *state;
    uint8_t *png;
    size_t len;
    char p[256], err[256] = "";
    assert_int_equal(pngio_encode_grey(f->sheet, SHEET_W, SHEET_H, &png, &len, err, sizeof err), 0);
    path_of(f, "digits/digits.png", p, sizeof p);
    write_bytes(p, png, len / 2);
    free(png);
    assert_int_equal(data_load("digits", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err),
                     DDM_EFORMAT);
    assert_null(f->ds[0]);
    assert_non_null(strstr(err, "digits.png"));
    assert_non_null(strstr(err, "truncated"));

    write_bytes(p, "hello, not a png at all", 23);
    assert_int_equal(data_load("digits", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err),
                     DDM_EFORMAT);
    assert_non_null(strstr(err, "not a PNG"));
}

static void test_unknown_name_and_split(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    assert_int_equal(data_load("cifar", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err),
                     DDM_EINVAL);
    assert_non_null(strstr(err, "cifar"));
    assert_int_equal(data_load("digits", f->dir, (data_split)5, &f->ds[0], err, sizeof err),
                     DDM_EINVAL);
    assert_null(f->ds[0]);
}

/* ---- fashion (IDX) ----------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint8_t img_value(int i, int k)
{
    return (uint8_t)((i * 31 + k * 7) & 0xff);
}

/* IDX images [n][rows][cols] (+ extra bytes appended); returns malloc'd bytes. */
static uint8_t *idx_images(int n, int rows, int cols, uint32_t magic, size_t *len)
{
    *len = 16 + (size_t)n * rows * cols;
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    put_be32(b, magic);
    put_be32(b + 4, (uint32_t)n);
    put_be32(b + 8, (uint32_t)rows);
    put_be32(b + 12, (uint32_t)cols);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < rows * cols; k++)
            b[16 + (size_t)i * rows * cols + k] = img_value(i, k);
    return b;
}

static uint8_t *idx_labels(int n, size_t *len)
{
    *len = 8 + (size_t)n;
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    put_be32(b, 0x801);
    put_be32(b + 4, (uint32_t)n);
    for (int i = 0; i < n; i++)
        b[8 + i] = (uint8_t)((i * 3) % 10);
    return b;
}

/* Writes fashion/<name> plain, or fashion/<name>.gz compressed. */
static void write_idx(const fixture *f, const char *name, const uint8_t *buf, size_t len, int gz)
{
    char p[256];
    snprintf(p, sizeof p, "%s/fashion/%s%s", f->dir, name, gz ? ".gz" : "");
    if (!gz) {
        write_bytes(p, buf, len);
        return;
    }
    gzFile g = gzopen(p, "wb");
    assert_non_null(g);
    assert_int_equal(gzwrite(g, buf, (unsigned)len), (int)len);
    assert_int_equal(gzclose(g), Z_OK);
}

static void write_fashion(const fixture *f, const char *pre, int n, int gz)
{
    char name[64];
    size_t len;
    uint8_t *b = idx_images(n, 28, 28, 0x803, &len);
    snprintf(name, sizeof name, "%s-images-idx3-ubyte", pre);
    write_idx(f, name, b, len, gz);
    free(b);
    b = idx_labels(n, &len);
    snprintf(name, sizeof name, "%s-labels-idx1-ubyte", pre);
    write_idx(f, name, b, len, gz);
    free(b);
}

static void check_fashion(const dataset *ds, int n)
{
    assert_int_equal(ds->n, n);
    assert_string_equal(ds->name, "fashion");
    assert_string_equal(ds->class_names[9], "Ankle boot");
    for (int i = 0; i < n; i++) {
        assert_int_equal(ds->labels[i], (i * 3) % 10);
        for (int k = 0; k < 784; k++)
            assert_float_equal(ds->pixels[(size_t)i * 784 + k], img_value(i, k) / 127.5 - 1.0,
                               1e-6);
    }
}

static void test_fashion_plain_and_gzip(void **state)
{
    fixture *f = *state;
    write_fashion(f, "train", 1500, 1); /* more than one 1024-image chunk */
    write_fashion(f, "t10k", 12, 0);
    char err[256] = "";
    assert_int_equal(data_load("fashion", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err), 0);
    check_fashion(f->ds[0], 1500);
    assert_int_equal(data_load("fashion", f->dir, DATA_TEST, &f->ds[1], err, sizeof err), 0);
    check_fashion(f->ds[1], 12);
    assert_int_equal(f->ds[1]->split, DATA_TEST);
    /* extremes map to -1 and +1 */
    int seen_lo = 0, seen_hi = 0;
    for (size_t k = 0; k < (size_t)1500 * 784; k++) {
        seen_lo |= f->ds[0]->pixels[k] == -1.0f;
        seen_hi |= f->ds[0]->pixels[k] == 1.0f;
        assert_true(f->ds[0]->pixels[k] >= -1.0f && f->ds[0]->pixels[k] <= 1.0f);
    }
    assert_true(seen_lo && seen_hi);
}

static void test_fashion_missing(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    assert_int_equal(data_load("fashion", f->dir, DATA_TRAIN, &f->ds[0], err, sizeof err),
                     DDM_ENOTFOUND);
    assert_non_null(strstr(err, "train-images-idx3-ubyte.gz"));
    assert_non_null(strstr(err, "make data"));
}

/* Loads the test split expecting failure rc with needle in the message. */
static void expect_fashion_error(fixture *f, int rc, const char *needle)
{
    char err[256] = "";
    assert_int_equal(data_load("fashion", f->dir, DATA_TEST, &f->ds[1], err, sizeof err), rc);
    assert_null(f->ds[1]);
    if (!strstr(err, needle))
        fail_msg("message \"%s\" lacks \"%s\"", err, needle);
}

static void test_fashion_truncated(void **state)
{
    fixture *f = *state;
    size_t len;
    write_fashion(f, "t10k", 20, 0);
    uint8_t *b = idx_images(20, 28, 28, 0x803, &len);
    write_idx(f, "t10k-images-idx3-ubyte", b, len - 100, 0);          /* plain, short */
    expect_fashion_error(f, DDM_EFORMAT, "truncated");
    write_idx(f, "t10k-images-idx3-ubyte", b, 10, 0);                 /* header cut */
    expect_fashion_error(f, DDM_EFORMAT, "header");

    /* a gzip stream cut in the middle: .gz is preferred over the plain file */
    char p[256];
    write_idx(f, "t10k-images-idx3-ubyte", b, len, 1);
    snprintf(p, sizeof p, "%s/fashion/t10k-images-idx3-ubyte.gz", f->dir);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(truncate(p, st.st_size / 2), 0);
    expect_fashion_error(f, DDM_EFORMAT, "truncated");
    free(b);
}

static void test_fashion_bad_headers(void **state)
{
    fixture *f = *state;
    size_t len;
    write_fashion(f, "t10k", 20, 1);
    uint8_t *b = idx_images(20, 28, 28, 0x802, &len);
    write_idx(f, "t10k-images-idx3-ubyte", b, len, 1);
    free(b);
    expect_fashion_error(f, DDM_EFORMAT, "bad magic number 0x00000802");

    b = idx_images(20, 27, 28, 0x803, &len);
    write_idx(f, "t10k-images-idx3-ubyte", b, len, 1);
    free(b);
    expect_fashion_error(f, DDM_EFORMAT, "expected 28x28");

    b = idx_images(19, 28, 28, 0x803, &len);                           /* 19 images, 20 labels */
    write_idx(f, "t10k-images-idx3-ubyte", b, len, 1);
    free(b);
    expect_fashion_error(f, DDM_EMISMATCH, "19 images");

    b = idx_images(20, 28, 28, 0x803, &len);
    uint8_t *longer = malloc(len + 5);
    assert_non_null(longer);
    memcpy(longer, b, len);
    memset(longer + len, 0, 5);
    write_idx(f, "t10k-images-idx3-ubyte", longer, len + 5, 1);     /* trailing bytes */
    free(longer);
    expect_fashion_error(f, DDM_EFORMAT, "more bytes");

    write_idx(f, "t10k-images-idx3-ubyte", b, len, 1);
    free(b);
    b = idx_labels(20, &len);
    b[8 + 13] = 10;                                                  /* label out of range */
    write_idx(f, "t10k-labels-idx1-ubyte", b, len, 1);
    expect_fashion_error(f, DDM_EFORMAT, "label 10 of item 13");
    put_be32(b, 0x803);                                              /* labels with images' magic */
    write_idx(f, "t10k-labels-idx1-ubyte", b, len, 1);
    expect_fashion_error(f, DDM_EFORMAT, "labels");
    free(b);
}

/* ---- subset ---------------------------------------------------------------- */

static void test_subset(void **state)
{
    fixture *f = *state;
    write_fashion(f, "t10k", 12, 1);
    char err[256] = "";
    assert_int_equal(data_load("fashion", f->dir, DATA_TEST, &f->ds[1], err, sizeof err), 0);
    const int idx[4] = { 5, 0, 5, 11 };
    assert_int_equal(data_subset(f->ds[1], idx, 4, &f->ds[0], err, sizeof err), 0);
    assert_int_equal(f->ds[0]->n, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(f->ds[0]->labels[i], f->ds[1]->labels[idx[i]]);
        assert_memory_equal(f->ds[0]->pixels + (size_t)i * 784,
                            f->ds[1]->pixels + (size_t)idx[i] * 784, 784 * sizeof(float));
    }
    assert_string_equal(f->ds[0]->name, "fashion");
    data_free(f->ds[0]);
    f->ds[0] = NULL;
    const int bad[2] = { 3, 12 };
    assert_int_equal(data_subset(f->ds[1], bad, 2, &f->ds[0], err, sizeof err), DDM_ERANGE);
    assert_null(f->ds[0]);
    assert_non_null(strstr(err, "index 12"));
    assert_int_equal(data_subset(f->ds[1], NULL, 0, &f->ds[0], err, sizeof err), 0);
    assert_int_equal(f->ds[0]->n, 0);
}

/* ---- PNG grid ---------------------------------------------------------------- */

static uint8_t expect_byte(float v)
{
    if (isnan(v))
        return 0;
    double x = (v + 1.0) * 127.5;
    if (x < 0)
        x = 0;
    if (x > 255)
        x = 255;
    return (uint8_t)(x + 0.5);
}

/* Decodes PNG bytes with libpng's simplified API into grey. */
static uint8_t *libpng_decode(const uint8_t *buf, size_t len, int *w, int *h)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    assert_true(png_image_begin_read_from_memory(&img, buf, len));
    img.format = PNG_FORMAT_GRAY;
    uint8_t *pix = malloc(PNG_IMAGE_SIZE(img));
    assert_non_null(pix);
    assert_true(png_image_finish_read(&img, NULL, pix, 0, NULL));
    *w = (int)img.width;
    *h = (int)img.height;
    return pix;
}

static void test_png_grid_round_trip(void **state)
{
    fixture *f = *state;
    enum { N = 7, COLS = 3 };
    float *imgs = malloc(sizeof *imgs * N * 784);
    assert_non_null(imgs);
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 784; k++) /* byte t, +0.3 or +0.7: rounds to t or t + 1 */
            imgs[i * 784 + k] = ((float)((i * 131 + k * 17) % 256) + (k % 2 ? 0.3f : 0.7f))
                                / 127.5f - 1.0f;
        imgs[i * 784 + 0] = -3.0f; /* clamped */
        imgs[i * 784 + 1] = 3.0f;
        imgs[i * 784 + 2] = NAN;   /* shown black */
    }
    int gw, gh;
    assert_int_equal(pngio_grid_size(N, COLS, 28, 28, &gw, &gh), 0);
    assert_int_equal(gw, 3 * 28 + 2 * 2);
    assert_int_equal(gh, 3 * 28 + 2 * 2);

    uint8_t *png;
    size_t len;
    char err[256] = "";
    assert_int_equal(pngio_encode_grid(imgs, N, 28, 28, COLS, &png, &len, err, sizeof err), 0);
    int w, h;
    uint8_t *pix = libpng_decode(png, len, &w, &h);
    assert_int_equal(w, gw);
    assert_int_equal(h, gh);
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            int cx = x / 30, cy = y / 30, ix = x % 30, iy = y % 30, i = cy * COLS + cx;
            uint8_t want = PNGIO_GRID_SEP_VALUE; /* separators, empty cells */
            if (ix < 28 && iy < 28 && i < N)
                want = expect_byte(imgs[i * 784 + iy * 28 + ix]);
            if (pix[y * w + x] != want)
                fail_msg("grid pixel (%d,%d) is %d, expected %d", x, y, pix[y * w + x], want);
        }
    }

    /* the file writer and our decoder give the same pixels */
    char p[256];
    path_of(f, "grid.png", p, sizeof p);
    assert_int_equal(data_write_png_grid(p, imgs, N, COLS, err, sizeof err), 0);
    uint8_t *pix2;
    int w2, h2;
    assert_int_equal(pngio_read_grey(p, &pix2, &w2, &h2, err, sizeof err), 0);
    assert_int_equal(w2, w);
    assert_int_equal(h2, h);
    assert_memory_equal(pix, pix2, (size_t)w * h);
    free(pix2);
    free(pix);

    /* a truncated buffer is refused with a message, not a crash */
    assert_int_equal(pngio_decode_grey(png, len - 20, &pix2, &w2, &h2, err, sizeof err),
                     DDM_EFORMAT);
    assert_null(pix2);
    assert_true(strlen(err) > 0);
    free(png);

    /* bad layouts */
    assert_int_equal(pngio_encode_grid(imgs, 0, 28, 28, 3, &png, &len, err, sizeof err),
                     DDM_EINVAL);
    assert_null(png);
    assert_int_equal(pngio_encode_grid(imgs, N, 28, 28, 0, &png, &len, err, sizeof err),
                     DDM_EINVAL);
    path_of(f, "no/such/dir/grid.png", p, sizeof p);
    assert_true(data_write_png_grid(p, imgs, N, COLS, err, sizeof err) < 0);
    assert_non_null(strstr(err, "no/such/dir"));
    free(imgs);
}

/* Palette PNGs are converted to grey by the decoder. */
static void test_png_decode_palette(void **state)
{
    (void)state;
    enum { W = 5, H = 3 };
    uint8_t cmap[4 * 3] = { 0, 0, 0, 80, 80, 80, 200, 200, 200, 255, 255, 255 };
    uint8_t idx[W * H];
    for (int i = 0; i < W * H; i++)
        idx[i] = (uint8_t)(i % 4);
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = W;
    img.height = H;
    img.format = PNG_FORMAT_RGB_COLORMAP;
    img.colormap_entries = 4;
    png_alloc_size_t len = 0;
    assert_true(png_image_write_get_memory_size(img, len, 0, idx, 0, cmap));
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    assert_true(png_image_write_to_memory(&img, buf, &len, 0, idx, 0, cmap));
    uint8_t *pix;
    int w, h;
    char err[256] = "";
    assert_int_equal(pngio_decode_grey(buf, len, &pix, &w, &h, err, sizeof err), 0);
    assert_int_equal(w, W);
    assert_int_equal(h, H);
    for (int i = 0; i < W * H; i++)
        assert_int_equal(pix[i], cmap[3 * (i % 4)]);
    free(pix);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_digits_load_and_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digits_rgb_sheet, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digits_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digits_wrong_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_digits_truncated_and_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_name_and_split, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fashion_plain_and_gzip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fashion_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fashion_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fashion_bad_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_png_grid_round_trip, setup, teardown),
        cmocka_unit_test(test_png_decode_palette),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
