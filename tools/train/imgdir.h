/* imgdir.h -- a folder of PNGs as a training set.
 *
 * Every *.png under the folder (any depth, names starting with '.' skipped,
 * case-insensitive extension) is an image. When PNGs sit in first-level
 * subfolders, each such subfolder is a class (name = folder name, classes in
 * byte order of their names) and a PNG at the top level is an error; when
 * there are no subfolders, the whole folder is one class named after it.
 * Files are taken in byte order of their paths, so the same folder always
 * gives the same set.
 *
 * Each image: decoded (common/png: any PNG type; alpha composited on the
 * background), centre-cropped to a square, then resampled to size x size by
 * area averaging -- each output pixel is the mean of the source area it
 * covers, partial pixels weighted by the overlap (an exact box filter:
 * antialiased when shrinking; when enlarging it repeats pixels, blending at
 * their edges) -- computed in floats on the 8-bit sRGB values (no gamma
 * linearisation) and rounded back to bytes. Channels: 1 = Rec. 709 luma,
 * 3 = RGB (HWC).
 *
 * Split: within each class, in path order, every tenth image (j % 10 == 9)
 * is the test split; the rest train. */
#ifndef DDM_TRAIN_IMGDIR_H
#define DDM_TRAIN_IMGDIR_H

#include <stddef.h>
#include <stdint.h>

#define IMGDIR_MAX_CLASSES 64        /* classes the networks and tools support */
#define IMGDIR_MAX_IMAGES 2000000
#define IMGDIR_MAX_DIM 8192          /* size * size * channels: NET_MAX_DIM of the MLP */
#define IMGDIR_MAX_PIXELS (1L << 24) /* per source image (4096 x 4096) */
#define IMGDIR_SHOW_SKIPPED 5        /* names of skipped files shown */

typedef struct imgdir_opts {
    int size;               /* output side; 0 = the images' own (min side, when all agree) */
    int channels;           /* 1, 3, or 0 = 3 when any file is stored as colour, else 1 */
    uint8_t background[3];  /* RGB under transparent pixels */
    int strict;             /* 1: an unreadable PNG fails the load instead of being skipped */
    int quiet;              /* 1: no warning lines on stderr */
} imgdir_opts;

typedef struct imgdir_set {
    int n;                  /* images loaded */
    int size, channels, dim;/* dim = size * size * channels */
    uint8_t *pix;           /* [n][dim] bytes, HWC */
    int *labels;            /* [n] class */
    uint8_t *test;          /* [n] 1 = test split */
    int n_classes;
    char **class_names;     /* [n_classes] */
    char **paths;           /* [n] relative to the folder */
    char (*sha256)[65];     /* [n] of each file's bytes */
    int n_skipped;          /* unreadable or corrupt PNGs left out */
    char *skipped;          /* "path: why\n" per skipped file (all of them) */
} imgdir_set;

/* Loads the folder root as described above. On success returns 0 and *out
 * (free with imgdir_free); skipped files are counted and, unless quiet, one
 * warning line names the count and the first IMGDIR_SHOW_SKIPPED. On failure
 * returns a ddm_err, *out = NULL, and err says what to fix: a missing or
 * empty folder, no readable PNG, a corrupt PNG with strict, images of mixed
 * sizes without a size, a PNG beside class folders, more than
 * IMGDIR_MAX_CLASSES classes, size * size * channels above IMGDIR_MAX_DIM. */
int imgdir_load(const char *root, const imgdir_opts *o, imgdir_set **out, char *err,
                size_t errlen);

void imgdir_free(imgdir_set *s);

/* Writes the manifest of s loaded from root to path: '#' comment lines (the
 * folder, size, channels, background, counts, skipped files) then one line
 * per image "path<TAB>sha256<TAB>class<TAB>train|test". Atomic (temp file +
 * rename). Returns 0 or an error naming path. */
int imgdir_write_manifest(const imgdir_set *s, const char *root, const imgdir_opts *o,
                          const char *path, char *err, size_t errlen);

/* Area-resamples a square crop: src [sh][sw][c] bytes, crop at (x0, y0) of
 * side s, to dst [n][n][c]. Exposed for tests. */
void imgdir_resample(const uint8_t *src, int sw, int c, int x0, int y0, int s, int n,
                     uint8_t *dst);

/* Parses a background colour: "RRGGBB" or "#RRGGBB" hex, "black", "white".
 * Returns 0 or DDM_EINVAL. */
int imgdir_parse_colour(const char *s, uint8_t rgb[3]);

#endif
