/* png.h -- 8-bit greyscale PNG in and out (libpng), and grids of images.
 *
 * Everything ddm shows as a picture is grey: 28x28 samples, grids of them in
 * HTTP responses and eval reports, the digits sheet of the dataset. Encoding
 * goes to a memory buffer (for HTTP bodies) or to a file; decoding accepts any
 * PNG (palette, RGB, alpha, 1-16 bit) and converts it to 8-bit grey.
 *
 * The prefix is pngio_ so that nothing here can clash with libpng's png_*.
 * Float images map [-1, 1] -> [0, 255] (-1 black, +1 white), clamped. */
#ifndef DDM_PNG_H
#define DDM_PNG_H

#include <stddef.h>
#include <stdint.h>

#define PNGIO_MAX_SIDE 16384   /* larger images are refused (decode and encode) */
#define PNGIO_GRID_SEP 2       /* pixels between grid cells */
#define PNGIO_GRID_SEP_VALUE 128 /* grey of separators and unused cells */

/* Encodes pix [height][width] (row-major, 8-bit grey) as a PNG into a buffer
 * allocated with malloc. On success returns 0 and the caller owns *out
 * (*outlen bytes) and frees it with free(); on failure returns a ddm_err,
 * sets *out = NULL and writes a one-line message to err. */
int pngio_encode_grey(const uint8_t *pix, int width, int height, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen);

/* Writes pix [height][width] as a PNG file at path (replaced if it exists).
 * Returns 0, or a ddm_err / -errno with a message naming path. */
int pngio_write_grey(const char *path, const uint8_t *pix, int width, int height,
                     char *err, size_t errlen);

/* Decodes a PNG held in buf[0..len) into 8-bit grey (colour is converted with
 * the Rec. 709 weights, alpha is dropped, 16-bit is reduced). On success
 * returns 0, *pix is a malloc'd [*height][*width] array owned by the caller.
 * On failure returns DDM_EFORMAT (not a PNG, corrupt, truncated), DDM_ERANGE
 * (larger than PNGIO_MAX_SIDE) or DDM_ENOMEM, with *pix = NULL. */
int pngio_decode_grey(const uint8_t *buf, size_t len, uint8_t **pix, int *width,
                      int *height, char *err, size_t errlen);

/* pngio_decode_grey on the contents of the file at path. A missing file is
 * DDM_ENOTFOUND, other read errors -errno; messages name the path. */
int pngio_read_grey(const char *path, uint8_t **pix, int *width, int *height,
                    char *err, size_t errlen);

/* Size of a grid of n cells of w x h with cols columns (rows = ceil(n/cols)),
 * PNGIO_GRID_SEP pixels between cells and no outer border. Returns 0, or
 * DDM_EINVAL when an argument is not positive or the grid is too large. */
int pngio_grid_size(int n, int cols, int w, int h, int *grid_w, int *grid_h);

/* Renders n images imgs [n][h][w] (floats, [-1, 1]) into out, which must hold
 * grid_w * grid_h bytes as given by pngio_grid_size(); image i goes to row
 * i / cols, column i % cols. Arguments must be valid (see pngio_grid_size). */
void pngio_grid_render(const float *imgs, int n, int w, int h, int cols, uint8_t *out);

/* Encodes a grid of n images [n][h][w] in [-1, 1] as a PNG in memory; the
 * caller frees *out. Returns 0 or a ddm_err with a message. */
int pngio_encode_grid(const float *imgs, int n, int w, int h, int cols, uint8_t **out,
                      size_t *outlen, char *err, size_t errlen);

/* Writes a grid of n images [n][h][w] in [-1, 1] as a PNG file at path.
 * Returns 0 or a ddm_err / -errno with a message naming path. */
int pngio_write_grid(const char *path, const float *imgs, int n, int w, int h, int cols,
                     char *err, size_t errlen);

#endif
