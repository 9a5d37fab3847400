/* png.c -- 8-bit grey / RGB PNG encode and hardened decode with libpng, and image grids.
 *
 * libpng reports errors by longjmp. Each libpng session therefore runs in its
 * own function whose state lives in a struct reached through a pointer, so
 * nothing the error path needs is an automatic variable changed after setjmp,
 * and the error path frees everything the struct holds. The error callback
 * formats libpng's message into the caller's err buffer.
 *
 * Decoding asks libpng for 8-bit RGBA whatever the file holds (palette,
 * tRNS, grey, 1-16 bits, interlace) and composites alpha on the background
 * itself, then converts to grey when asked: one path for every input type. */
#include "common/png.h"

#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"
#include "common/fsutil.h"

/* Ancillary chunks libpng would otherwise decompress or keep (text, ICC
 * profiles, ...): skipped unread, so none can hide a decompression bomb. */
static const png_byte SKIPPED_CHUNKS[] = "zTXt\0iTXt\0tEXt\0iCCP\0sPLT\0eXIf\0";
#define N_SKIPPED_CHUNKS 6
#define CHUNK_MALLOC_MAX ((png_alloc_size_t)1 << 20) /* largest ancillary chunk kept */
#define LIBPNG_SIDE_MAX 1000000 /* libpng's own refusal, beyond any limit of ours */
#define CHUNK_CACHE_MAX 128                          /* most ancillary chunks kept */

/* Rec. 709 luma in 1/32768 (libpng's png_set_rgb_to_gray defaults; sum 32768). */
#define LUMA_R 6968
#define LUMA_G 23434
#define LUMA_B (32768 - LUMA_R - LUMA_G)

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

static int encode_run(encoder *enc, const uint8_t *pix, int width, int height, int channels)
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
                 channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA
                 : channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(enc->png, enc->info);
    for (int y = 0; y < height; y++)
        png_write_row(enc->png, pix + (size_t)y * (size_t)width * (size_t)channels);
    png_write_end(enc->png, NULL);
    png_destroy_write_struct(&enc->png, &enc->info);
    return 0;
}

int pngio_encode(const uint8_t *pix, int width, int height, int channels, uint8_t **out,
                 size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    if (!pix || width <= 0 || height <= 0 || width > PNGIO_MAX_SIDE || height > PNGIO_MAX_SIDE) {
        ddm_errf(err, errlen, 0, "PNG encode: image size %dx%d outside 1..%d", width, height,
                PNGIO_MAX_SIDE);
        return DDM_EINVAL;
    }
    if (channels != 1 && channels != 3 && channels != 4) {
        ddm_errf(err, errlen, 0, "PNG encode: %d channels (1 grey, 3 RGB or 4 RGBA)", channels);
        return DDM_EINVAL;
    }
    encoder enc = { .e = { err, errlen, 0 } };
    int rc = encode_run(&enc, pix, width, height, channels);
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

int pngio_encode_grey(const uint8_t *pix, int width, int height, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen)
{
    return pngio_encode(pix, width, height, 1, out, outlen, err, errlen);
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

int pngio_write(const char *path, const uint8_t *pix, int width, int height, int channels,
                char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    int rc = pngio_encode(pix, width, height, channels, &buf, &len, err, errlen);
    if (rc)
        return rc;
    rc = write_file(path, buf, len, err, errlen);
    free(buf);
    return rc;
}

int pngio_write_grey(const char *path, const uint8_t *pix, int width, int height,
                     char *err, size_t errlen)
{
    return pngio_write(path, pix, width, height, 1, err, errlen);
}

/* ---- decoding ------------------------------------------------------------- */

typedef struct decoder {
    pngerr e;
    png_structp png;
    png_infop info;
    const uint8_t *buf;
    size_t len, pos;
    const pngio_opts *o;
    uint8_t *pix;      /* [h][w][4] RGBA, then converted in place */
    png_bytep *rows;   /* [h] pointers into pix */
    int w, h;
    int too_big;
    int had_alpha;
} decoder;

static void dec_read(png_structp png, png_bytep out, size_t n)
{
    decoder *d = png_get_io_ptr(png);
    if (n > d->len - d->pos)
        png_error(png, "truncated file (data ends early)");
    memcpy(out, d->buf + d->pos, n);
    d->pos += n;
}

/* Frees what a decode holds (also on the error path). */
static void dec_release(decoder *d)
{
    if (d->png)
        png_destroy_read_struct(&d->png, d->info ? &d->info : NULL, NULL);
    d->png = NULL;
    d->info = NULL;
    free(d->rows);
    d->rows = NULL;
}

/* Sets up libpng's limits and the transforms to 8-bit RGBA; returns the
 * image size after checking it against the limits (longjmps on error). */
static void dec_header(decoder *d)
{
    png_structp png = d->png;
    png_set_user_limits(png, LIBPNG_SIDE_MAX, LIBPNG_SIDE_MAX); /* ours is checked below */
    png_set_chunk_malloc_max(png, CHUNK_MALLOC_MAX);
    png_set_chunk_cache_max(png, CHUNK_CACHE_MAX);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, 0);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, SKIPPED_CHUNKS, N_SKIPPED_CHUNKS);
    png_set_read_fn(png, d, dec_read);
    png_read_info(png, d->info);
    png_uint_32 w = png_get_image_width(png, d->info);
    png_uint_32 h = png_get_image_height(png, d->info);
    long limit = d->o->max_pixels > 0 ? d->o->max_pixels : PNGIO_DEFAULT_MAX_PIXELS;
    if (w == 0 || h == 0 || w > PNGIO_MAX_SIDE || h > PNGIO_MAX_SIDE ||
        (unsigned long long)w * h > (unsigned long long)limit) {
        d->too_big = 1;
        char msg[128];
        snprintf(msg, sizeof msg, "image of %lux%lu pixels is over the limit of %ld pixels "
                 "(and %d on a side)", (unsigned long)w, (unsigned long)h, limit, PNGIO_MAX_SIDE);
        png_error(png, msg);
    }
    int depth = png_get_bit_depth(png, d->info);
    int type = png_get_color_type(png, d->info);
    d->had_alpha = (type & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, d->info, PNG_INFO_tRNS);
    if (type == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, d->info, PNG_INFO_tRNS))
        png_set_tRNS_to_alpha(png);
    if (depth == 16)
        png_set_scale_16(png);
    if (!(type & PNG_COLOR_MASK_COLOR))
        png_set_gray_to_rgb(png);
    if (!d->had_alpha)
        png_set_add_alpha(png, 0xff, PNG_FILLER_AFTER);
    png_set_interlace_handling(png);
    png_read_update_info(png, d->info);
    if (png_get_channels(png, d->info) != 4 || png_get_rowbytes(png, d->info) != (size_t)w * 4)
        png_error(png, "cannot convert this image to 8-bit RGBA");
    d->w = (int)w;
    d->h = (int)h;
}

static int decode_run(decoder *d)
{
    d->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &d->e, on_error, on_warning);
    if (!d->png)
        return DDM_ENOMEM;
    d->info = png_create_info_struct(d->png);
    if (!d->info) {
        dec_release(d);
        return DDM_ENOMEM;
    }
    if (setjmp(png_jmpbuf(d->png))) {
        dec_release(d);
        free(d->pix);
        d->pix = NULL;
        return d->e.oom ? DDM_ENOMEM : d->too_big ? DDM_ERANGE : DDM_EFORMAT;
    }
    dec_header(d);
    size_t w = (size_t)d->w, h = (size_t)d->h;
    d->pix = malloc(w * h * 4);
    d->rows = malloc(sizeof *d->rows * h);
    if (!d->pix || !d->rows) {
        d->e.oom = 1;
        png_error(d->png, "out of memory");
    }
    for (size_t y = 0; y < h; y++)
        d->rows[y] = d->pix + y * w * 4;
    png_read_image(d->png, d->rows);
    png_read_end(d->png, NULL);
    dec_release(d);
    return 0;
}

/* RGBA [n][4] -> [n][channels] in place: alpha composited on bg, then luma
 * for grey. Returns 1 when some composited pixel is not grey. */
static int composite(uint8_t *pix, size_t n, int channels, const uint8_t bg[3])
{
    int colour = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = pix + 4 * i;
        unsigned a = s[3], c[3];
        for (int k = 0; k < 3; k++)
            c[k] = a == 255 ? s[k] : (s[k] * a + bg[k] * (255 - a) + 127) / 255;
        colour |= c[0] != c[1] || c[1] != c[2];
        if (channels == 3) {
            uint8_t *dst = pix + 3 * i;
            dst[0] = (uint8_t)c[0];
            dst[1] = (uint8_t)c[1];
            dst[2] = (uint8_t)c[2];
        } else {
            pix[i] = (uint8_t)((LUMA_R * c[0] + LUMA_G * c[1] + LUMA_B * c[2] + 16384) >> 15);
        }
    }
    return colour;
}

int pngio_decode(const uint8_t *buf, size_t len, const pngio_opts *o, pngio_image *img,
                 char *err, size_t errlen)
{
    static const pngio_opts grey = { 0 };
    memset(img, 0, sizeof *img);
    if (!o)
        o = &grey;
    if (!buf || len < 8 || png_sig_cmp(buf, 0, 8) != 0)
        return ddm_errf(err, errlen, DDM_EFORMAT, "not a PNG file (bad signature)");
    decoder d = { .e = { err, errlen, 0 }, .buf = buf, .len = len, .o = o };
    int rc = decode_run(&d);
    if (rc) {
        if (rc == DDM_ENOMEM && !d.e.oom)
            ddm_errf(err, errlen, 0, "PNG: out of memory");
        return rc;
    }
    int ch = o->channels == 3 ? 3 : 1;
    size_t n = (size_t)d.w * (size_t)d.h;
    img->colour = composite(d.pix, n, ch, o->background);
    uint8_t *p = realloc(d.pix, n * (size_t)ch);
    img->pix = p ? p : d.pix;
    img->width = d.w;
    img->height = d.h;
    img->channels = ch;
    img->had_alpha = d.had_alpha;
    return 0;
}

int pngio_read(const char *path, const pngio_opts *o, pngio_image *img, char *err,
               size_t errlen)
{
    memset(img, 0, sizeof *img);
    uint8_t *buf;
    size_t len;
    int rc = fs_read_file(path, PNGIO_MAX_FILE_BYTES, &buf, &len, err, errlen);
    if (rc)
        return rc;
    char msg[256] = "";
    rc = pngio_decode(buf, len, o, img, msg, sizeof msg);
    free(buf);
    if (rc)
        ddm_errf(err, errlen, 0, "%s: %s", path, msg);
    return rc;
}

void pngio_image_free(pngio_image *img)
{
    if (!img)
        return;
    free(img->pix);
    memset(img, 0, sizeof *img);
}

int pngio_decode_grey(const uint8_t *buf, size_t len, uint8_t **pix, int *width,
                      int *height, char *err, size_t errlen)
{
    pngio_image img;
    int rc = pngio_decode(buf, len, NULL, &img, err, errlen);
    *pix = img.pix;
    *width = img.width;
    *height = img.height;
    return rc;
}

int pngio_read_grey(const char *path, uint8_t **pix, int *width, int *height,
                    char *err, size_t errlen)
{
    pngio_image img;
    int rc = pngio_read(path, NULL, &img, err, errlen);
    *pix = img.pix;
    *width = img.width;
    *height = img.height;
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

uint8_t pngio_float_to_byte(float v)
{
    float x = (v + 1.0f) * 127.5f + 0.5f;
    if (!(x > 0.0f)) /* also NaN */
        return 0;
    if (x >= 255.0f)
        return 255;
    return (uint8_t)x;
}

void pngio_grid_render_ch(const float *imgs, int n, int w, int h, int channels, int cols,
                          uint8_t *out)
{
    int gw, gh;
    if (pngio_grid_size(n, cols, w, h, &gw, &gh) != 0 || (channels != 1 && channels != 3))
        return;
    if (cols > n)
        cols = n;
    size_t c = (size_t)channels, row = (size_t)w * c; /* floats (and bytes) per image row */
    memset(out, PNGIO_GRID_SEP_VALUE, (size_t)gw * (size_t)gh * c);
    for (int i = 0; i < n; i++) {
        int x0 = (i % cols) * (w + PNGIO_GRID_SEP);
        int y0 = (i / cols) * (h + PNGIO_GRID_SEP);
        const float *img = imgs + (size_t)i * row * (size_t)h;
        for (int y = 0; y < h; y++) {
            uint8_t *dst = out + ((size_t)(y0 + y) * (size_t)gw + (size_t)x0) * c;
            for (size_t x = 0; x < row; x++)
                dst[x] = pngio_float_to_byte(img[(size_t)y * row + x]);
        }
    }
}

void pngio_grid_render(const float *imgs, int n, int w, int h, int cols, uint8_t *out)
{
    pngio_grid_render_ch(imgs, n, w, h, 1, cols, out);
}

int pngio_encode_grid_ch(const float *imgs, int n, int w, int h, int channels, int cols,
                         uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    int gw, gh;
    if (!imgs || pngio_grid_size(n, cols, w, h, &gw, &gh) != 0 ||
        (channels != 1 && channels != 3)) {
        ddm_errf(err, errlen, 0, "PNG grid: bad layout (n %d, cols %d, cell %dx%dx%d) or grid "
                "larger than %d pixels", n, cols, w, h, channels, PNGIO_MAX_SIDE);
        return DDM_EINVAL;
    }
    uint8_t *pix = malloc((size_t)gw * (size_t)gh * (size_t)channels);
    if (!pix) {
        ddm_errf(err, errlen, 0, "PNG grid: out of memory (%dx%d)", gw, gh);
        return DDM_ENOMEM;
    }
    pngio_grid_render_ch(imgs, n, w, h, channels, cols, pix);
    int rc = pngio_encode(pix, gw, gh, channels, out, outlen, err, errlen);
    free(pix);
    return rc;
}

int pngio_encode_grid(const float *imgs, int n, int w, int h, int cols, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen)
{
    return pngio_encode_grid_ch(imgs, n, w, h, 1, cols, out, outlen, err, errlen);
}

int pngio_write_grid_ch(const char *path, const float *imgs, int n, int w, int h, int channels,
                        int cols, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    int rc = pngio_encode_grid_ch(imgs, n, w, h, channels, cols, &buf, &len, err, errlen);
    if (rc)
        return rc;
    rc = write_file(path, buf, len, err, errlen);
    free(buf);
    return rc;
}

int pngio_write_grid(const char *path, const float *imgs, int n, int w, int h, int cols,
                     char *err, size_t errlen)
{
    return pngio_write_grid_ch(path, imgs, n, w, h, 1, cols, err, errlen);
}
