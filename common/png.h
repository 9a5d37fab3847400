/* png.h -- PNG in and out (libpng): 8-bit grey or RGB images, and grids of them.
 *
 * Everything ddm shows as a picture goes through here: samples (grey or RGB,
 * as the model is), grids of them in HTTP responses and eval reports, the
 * digits sheet, the images of a user's folder. Encoding goes to a memory
 * buffer (for HTTP bodies) or to a file. Decoding accepts any PNG -- grey,
 * grey+alpha, RGB, RGBA, palette (with tRNS transparency), 1/2/4/8/16 bits,
 * interlaced or not -- and converts it to 8-bit grey or RGB, compositing any
 * transparency on a background colour the caller chooses.
 *
 * Decoding is safe against hostile files: the pixel count in IHDR is checked
 * against a limit before anything is allocated, ancillary chunks that could
 * hide a decompression bomb (zTXt, iTXt, iCCP, ...) are skipped unread, the
 * compressed image data is inflated only as far as the image needs, wrong
 * CRCs and truncated data are errors, and every error path frees what it took.
 *
 * Pixels are row-major, channels interleaved (HWC: r g b r g b ...).
 * Float images map [-1, 1] -> [0, 255] (-1 black, +1 white), clamped.
 * The prefix is pngio_ so that nothing here can clash with libpng's png_*. */
#ifndef DDM_PNG_H
#define DDM_PNG_H

#include <stddef.h>
#include <stdint.h>

#define PNGIO_MAX_SIDE 16384   /* larger images are refused (decode and encode) */
#define PNGIO_DEFAULT_MAX_PIXELS (1L << 24) /* decode: width * height above this is refused */
#define PNGIO_MAX_FILE_BYTES ((size_t)1 << 30) /* pngio_read: larger files are refused */
#define PNGIO_GRID_SEP 2       /* pixels between grid cells */
#define PNGIO_GRID_SEP_VALUE 128 /* grey of separators and unused cells */

/* ---- decoding -------------------------------------------------------------- */

/* How to decode. A zeroed struct means grey, black background, default limit. */
typedef struct pngio_opts {
    int channels;           /* 3 = RGB; anything else = grey (Rec. 709 luma) */
    uint8_t background[3];  /* RGB that transparent pixels are composited on */
    long max_pixels;        /* width * height limit; <= 0 = PNGIO_DEFAULT_MAX_PIXELS */
} pngio_opts;

/* A decoded image. */
typedef struct pngio_image {
    int width, height;
    int channels;           /* 1 or 3, as asked */
    int colour;             /* 1 when some pixel (after compositing) has r != g or g != b */
    int had_alpha;          /* 1 when the file carried alpha or tRNS transparency */
    uint8_t *pix;           /* [height][width][channels], malloc'd, owned by the image */
} pngio_image;

/* Decodes the PNG in buf[0..len) as o says (o may be NULL: grey, black).
 * On success returns 0 and fills *img (free with pngio_image_free). On
 * failure returns DDM_EFORMAT (not a PNG, corrupt, bad CRC, truncated),
 * DDM_ERANGE (more pixels than the limit, or a side above PNGIO_MAX_SIDE:
 * refused from the header, before any allocation) or DDM_ENOMEM, *img is
 * zeroed and err holds one line. Never crashes, whatever the bytes. */
int pngio_decode(const uint8_t *buf, size_t len, const pngio_opts *o, pngio_image *img,
                 char *err, size_t errlen);

/* pngio_decode on the contents of the file at path (refused without reading
 * when larger than PNGIO_MAX_FILE_BYTES). Errors as pngio_decode, plus
 * DDM_ENOTFOUND for a missing file and -errno / DDM_EIO for read errors;
 * every message starts with the path. */
int pngio_read(const char *path, const pngio_opts *o, pngio_image *img, char *err,
               size_t errlen);

/* Frees img->pix and zeroes *img; a zeroed image is fine. */
void pngio_image_free(pngio_image *img);

/* Grey shorthands of the above (alpha composited on black). *pix is a
 * malloc'd [*height][*width] array owned by the caller; NULL on failure. */
int pngio_decode_grey(const uint8_t *buf, size_t len, uint8_t **pix, int *width,
                      int *height, char *err, size_t errlen);
int pngio_read_grey(const char *path, uint8_t **pix, int *width, int *height,
                    char *err, size_t errlen);

/* ---- encoding -------------------------------------------------------------- */

/* Encodes pix [height][width][channels] (channels 1 grey, 3 RGB, 4 RGBA) as an
 * 8-bit PNG into a malloc'd buffer. On success returns 0 and the caller owns
 * *out (*outlen bytes; free with free()); on failure returns a ddm_err
 * (DDM_EINVAL for a bad size or channel count), *out = NULL, message in err. */
int pngio_encode(const uint8_t *pix, int width, int height, int channels, uint8_t **out,
                 size_t *outlen, char *err, size_t errlen);
/* pngio_encode with channels = 1. */
int pngio_encode_grey(const uint8_t *pix, int width, int height, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen);

/* Writes pix as a PNG file at path (replaced if it exists; a partial file is
 * removed on failure). Returns 0, or a ddm_err / -errno with a message naming path. */
int pngio_write(const char *path, const uint8_t *pix, int width, int height, int channels,
                char *err, size_t errlen);
int pngio_write_grey(const char *path, const uint8_t *pix, int width, int height,
                     char *err, size_t errlen);

/* ---- grids of float images ------------------------------------------------ */

/* Size of a grid of n cells of w x h with cols columns (rows = ceil(n/cols)),
 * PNGIO_GRID_SEP pixels between cells and no outer border. Returns 0, or
 * DDM_EINVAL when an argument is not positive or the grid is too large. */
int pngio_grid_size(int n, int cols, int w, int h, int *grid_w, int *grid_h);

/* Renders n images imgs [n][h][w][channels] (floats in [-1, 1]) into out,
 * which must hold grid_w * grid_h * channels bytes (pngio_grid_size); image i
 * goes to row i / cols, column i % cols. Arguments must be valid. */
void pngio_grid_render_ch(const float *imgs, int n, int w, int h, int channels, int cols,
                          uint8_t *out);
/* pngio_grid_render_ch with channels = 1. */
void pngio_grid_render(const float *imgs, int n, int w, int h, int cols, uint8_t *out);

/* Encodes a grid of n images [n][h][w][channels] in [-1, 1] as a PNG in
 * memory (grey for channels 1, RGB for 3); the caller frees *out. Returns 0
 * or a ddm_err with a message. */
int pngio_encode_grid_ch(const float *imgs, int n, int w, int h, int channels, int cols,
                         uint8_t **out, size_t *outlen, char *err, size_t errlen);
int pngio_encode_grid(const float *imgs, int n, int w, int h, int cols, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen);

/* Writes such a grid as a PNG file at path. Returns 0 or a ddm_err / -errno
 * with a message naming path. */
int pngio_write_grid_ch(const char *path, const float *imgs, int n, int w, int h, int channels,
                        int cols, char *err, size_t errlen);
int pngio_write_grid(const char *path, const float *imgs, int n, int w, int h, int cols,
                     char *err, size_t errlen);

/* The byte of a float pixel in [-1, 1] (clamped; NaN -> 0), as every
 * encoder here maps it. */
uint8_t pngio_float_to_byte(float v);

#endif
