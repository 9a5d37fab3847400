/* png.c -- 8-bit greyscale PNG encode/decode with libpng, and image grids.
 *
 * libpng reports errors by longjmp. Each libpng session therefore runs in its
 * own function whose state lives in a struct reached through a pointer, so
 * nothing the error path needs is an automatic variable changed after setjmp.
 * The error callback formats libpng's message into the caller's err buffer. */
#include "common/png.h"

#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"

#define MAX_FILE_BYTES ((size_t)1 << 30)

/* Where libpng's error callback leaves its message. */
typedef struct pngerr {
    char *err;
    size_t errlen;
    int oom;           /* set before png_error() when an allocation failed */
} pngerr;

static void on_error(png_structp png, png_const_charp msg)
{
    pngerr *e = png_get_error_ptr(png);
    ddm_errf(e->err, e->errlen, 0, "PNG: %s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* warnings (e.g. odd colour profiles) do not stop us */
}

/* ---- encoding ------------------------------------------------------------- */

typedef struct encoder {
    pngerr e;
    png_structp png;
    png_infop info;
    uint8_t *data;     /* [cap], output so far */
    size_t len, cap;
} encoder;

static void enc_write(png_structp png, png_bytep data, size_t len)
{
    encoder *enc = png_get_io_ptr(png);
    if (len > enc->cap - enc->len) {
        size_t cap = enc->cap ? enc->cap : 4096;
        while (cap - enc->len < len)
            cap *= 2;
        uint8_t *p = realloc(enc->data, cap);
        if (!p) {
            enc->e.oom = 1;
            png_error(png, "out of memory");
        }
        enc->data = p;
        enc->cap = cap;
    }
    memcpy(enc->data + enc->len, data, len);
    enc->len += len;
}

static void enc_flush(png_structp png)
{
    (void)png;
}

static int encode_run(encoder *enc, const uint8_t *pix, int width, int height)
{
    enc->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &enc->e, on_error, on_warning);
    if (!enc->png)
        return DDM_ENOMEM;
    enc->info = png_create_info_struct(enc->png);
    if (!enc->info) {
        png_destroy_write_struct(&enc->png, NULL);
        return DDM_ENOMEM;
    }
    if (setjmp(png_jmpbuf(enc->png))) {
        png_destroy_write_struct(&enc->png, &enc->info);
        return enc->e.oom ? DDM_ENOMEM : DDM_EIO;
    }
    png_set_write_fn(enc->png, enc, enc_write, enc_flush);
    png_set_IHDR(enc->png, enc->info, (png_uint_32)width, (png_uint_32)height, 8,
                 PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(enc->png, enc->info);
    for (int y = 0; y < height; y++)
        png_write_row(enc->png, pix + (size_t)y * (size_t)width);
    png_write_end(enc->png, NULL);
    png_destroy_write_struct(&enc->png, &enc->info);
    return 0;
}

int pngio_encode_grey(const uint8_t *pix, int width, int height, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    if (!pix || width <= 0 || height <= 0 || width > PNGIO_MAX_SIDE || height > PNGIO_MAX_SIDE) {
        ddm_errf(err, errlen, 0, "PNG encode: image size %dx%d outside 1..%d", width, height,
                PNGIO_MAX_SIDE);
        return DDM_EINVAL;
    }
    encoder enc = { .e = { err, errlen, 0 } };
    int rc = encode_run(&enc, pix, width, height);
    if (rc) {
        if (rc == DDM_ENOMEM)
            ddm_errf(err, errlen, 0, "PNG encode: out of memory (%dx%d image)", width, height);
        free(enc.data);
        return rc;
    }
    *out = enc.data;
    *outlen = enc.len;
    return 0;
}

/* Writes buf[0..len) to path; on failure removes the partial file. */
static int write_file(const char *path, const uint8_t *buf, size_t len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        int rc = -errno;
        ddm_errf(err, errlen, 0, "cannot create %s: %s", path, strerror(-rc));
        return rc;
    }
    size_t w = fwrite(buf, 1, len, f);
    int rc = 0;
    if (w != len)
        rc = errno ? -errno : DDM_EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = errno ? -errno : DDM_EIO;
    if (rc) {
        ddm_errf(err, errlen, 0, "writing %s failed: %s (disk full?)", path, ddm_strerror(rc));
        remove(path);
    }
    return rc;
}

int pngio_write_grey(const char *path, const uint8_t *pix, int width, int height,
                     char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    int rc = pngio_encode_grey(pix, width, height, &buf, &len, err, errlen);
    if (rc)
        return rc;
    rc = write_file(path, buf, len, err, errlen);
    free(buf);
    return rc;
}

/* ---- decoding ------------------------------------------------------------- */

typedef struct decoder {
    pngerr e;
    png_structp png;
    png_infop info;
    const uint8_t *buf;
    size_t len, pos;
    uint8_t *pix;      /* [h][w] result */
    png_bytep *rows;   /* [h] pointers into pix */
    int w, h;
    int too_big;
} decoder;

static void dec_read(png_structp png, png_bytep out, size_t n)
{
    decoder *d = png_get_io_ptr(png);
    if (n > d->len - d->pos)
        png_error(png, "truncated file (data ends early)");
    memcpy(out, d->buf + d->pos, n);
    d->pos += n;
}

static int decode_run(decoder *d)
{
    d->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &d->e, on_error, on_warning);
    if (!d->png)
        return DDM_ENOMEM;
    d->info = png_create_info_struct(d->png);
    if (!d->info) {
        png_destroy_read_struct(&d->png, NULL, NULL);
        return DDM_ENOMEM;
    }
    if (setjmp(png_jmpbuf(d->png))) {
        png_destroy_read_struct(&d->png, &d->info, NULL);
        free(d->rows);
        free(d->pix);
        d->rows = NULL;
        d->pix = NULL;
        return d->e.oom ? DDM_ENOMEM : d->too_big ? DDM_ERANGE : DDM_EFORMAT;
    }
    png_set_read_fn(d->png, d, dec_read);
    png_read_info(d->png, d->info);
    png_uint_32 w = png_get_image_width(d->png, d->info);
    png_uint_32 h = png_get_image_height(d->png, d->info);
    int depth = png_get_bit_depth(d->png, d->info);
    int type = png_get_color_type(d->png, d->info);
    if (w > PNGIO_MAX_SIDE || h > PNGIO_MAX_SIDE) {
        d->too_big = 1;
        png_error(d->png, "image larger than 16384 pixels on a side");
    }
    if (type == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(d->png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(d->png);
    if (depth == 16)
        png_set_strip_16(d->png);
    if (type & PNG_COLOR_MASK_ALPHA)
        png_set_strip_alpha(d->png);
    if (type & PNG_COLOR_MASK_COLOR)
        png_set_rgb_to_gray_fixed(d->png, 1, -1, -1);
    png_set_interlace_handling(d->png);
    png_read_update_info(d->png, d->info);
    if (png_get_channels(d->png, d->info) != 1 || png_get_rowbytes(d->png, d->info) != w)
        png_error(d->png, "cannot convert this image to 8-bit grey");

    d->pix = malloc((size_t)w * h);
    d->rows = malloc(sizeof *d->rows * h);
    if (!d->pix || !d->rows) {
        d->e.oom = 1;
        png_error(d->png, "out of memory");
    }
    for (png_uint_32 y = 0; y < h; y++)
        d->rows[y] = d->pix + (size_t)y * w;
    png_read_image(d->png, d->rows);
    png_read_end(d->png, NULL);
    png_destroy_read_struct(&d->png, &d->info, NULL);
    free(d->rows);
    d->rows = NULL;
    d->w = (int)w;
    d->h = (int)h;
    return 0;
}

int pngio_decode_grey(const uint8_t *buf, size_t len, uint8_t **pix, int *width,
                      int *height, char *err, size_t errlen)
{
    *pix = NULL;
    *width = *height = 0;
    if (!buf || len < 8 || png_sig_cmp(buf, 0, 8) != 0) {
        ddm_errf(err, errlen, 0, "not a PNG file (bad signature)");
        return DDM_EFORMAT;
    }
    decoder d = { .e = { err, errlen, 0 }, .buf = buf, .len = len };
    int rc = decode_run(&d);
    if (rc)
        return rc;
    *pix = d.pix;
    *width = d.w;
    *height = d.h;
    return 0;
}

int pngio_read_grey(const char *path, uint8_t **pix, int *width, int *height,
                    char *err, size_t errlen)
{
    *pix = NULL;
    *width = *height = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int rc = errno == ENOENT ? DDM_ENOTFOUND : -errno;
        ddm_errf(err, errlen, 0, "%s: %s", path, rc == DDM_ENOTFOUND ? "no such file" : strerror(-rc));
        return rc;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > MAX_FILE_BYTES) {
        fclose(f);
        ddm_errf(err, errlen, 0, "%s: not a regular file of at most 1 GiB", path);
        return DDM_EINVAL;
    }
    size_t len = (size_t)st.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        ddm_errf(err, errlen, 0, "%s: out of memory reading %zu bytes", path, len);
        return DDM_ENOMEM;
    }
    size_t got = fread(buf, 1, len, f);
    int rd_err = ferror(f);
    fclose(f);
    if (rd_err || got != len) {
        free(buf);
        ddm_errf(err, errlen, 0, "%s: read error", path);
        return DDM_EIO;
    }
    char msg[256] = "";
    int rc = pngio_decode_grey(buf, len, pix, width, height, msg, sizeof msg);
    free(buf);
    if (rc)
        ddm_errf(err, errlen, 0, "%s: %s", path, msg);
    return rc;
}

/* ---- grids ---------------------------------------------------------------- */

int pngio_grid_size(int n, int cols, int w, int h, int *grid_w, int *grid_h)
{
    *grid_w = *grid_h = 0;
    if (n <= 0 || cols <= 0 || w <= 0 || h <= 0 || w > PNGIO_MAX_SIDE || h > PNGIO_MAX_SIDE)
        return DDM_EINVAL;
    if (cols > n)
        cols = n;
    long rows = (n + cols - 1) / cols;
    long gw = (long)cols * w + (long)(cols - 1) * PNGIO_GRID_SEP;
    long gh = rows * h + (rows - 1) * PNGIO_GRID_SEP;
    if (gw > PNGIO_MAX_SIDE || gh > PNGIO_MAX_SIDE)
        return DDM_EINVAL;
    *grid_w = (int)gw;
    *grid_h = (int)gh;
    return 0;
}

static uint8_t to_byte(float v)
{
    float x = (v + 1.0f) * 127.5f + 0.5f;
    if (!(x > 0.0f)) /* also NaN */
        return 0;
    if (x >= 255.0f)
        return 255;
    return (uint8_t)x;
}

void pngio_grid_render(const float *imgs, int n, int w, int h, int cols, uint8_t *out)
{
    int gw, gh;
    if (pngio_grid_size(n, cols, w, h, &gw, &gh) != 0)
        return;
    if (cols > n)
        cols = n;
    memset(out, PNGIO_GRID_SEP_VALUE, (size_t)gw * (size_t)gh);
    for (int i = 0; i < n; i++) {
        int x0 = (i % cols) * (w + PNGIO_GRID_SEP);
        int y0 = (i / cols) * (h + PNGIO_GRID_SEP);
        const float *img = imgs + (size_t)i * (size_t)w * (size_t)h;
        for (int y = 0; y < h; y++) {
            uint8_t *dst = out + (size_t)(y0 + y) * (size_t)gw + (size_t)x0;
            for (int x = 0; x < w; x++)
                dst[x] = to_byte(img[(size_t)y * (size_t)w + (size_t)x]);
        }
    }
}

int pngio_encode_grid(const float *imgs, int n, int w, int h, int cols, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    int gw, gh;
    if (!imgs || pngio_grid_size(n, cols, w, h, &gw, &gh) != 0) {
        ddm_errf(err, errlen, 0, "PNG grid: bad layout (n %d, cols %d, cell %dx%d) or grid "
                "larger than %d pixels", n, cols, w, h, PNGIO_MAX_SIDE);
        return DDM_EINVAL;
    }
    uint8_t *pix = malloc((size_t)gw * (size_t)gh);
    if (!pix) {
        ddm_errf(err, errlen, 0, "PNG grid: out of memory (%dx%d)", gw, gh);
        return DDM_ENOMEM;
    }
    pngio_grid_render(imgs, n, w, h, cols, pix);
    int rc = pngio_encode_grey(pix, gw, gh, out, outlen, err, errlen);
    free(pix);
    return rc;
}

int pngio_write_grid(const char *path, const float *imgs, int n, int w, int h, int cols,
                     char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    int rc = pngio_encode_grid(imgs, n, w, h, cols, &buf, &len, err, errlen);
    if (rc)
        return rc;
    rc = write_file(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
