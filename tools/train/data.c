/* data.c -- loaders for the digits sheet (libpng) and Fashion-MNIST IDX files (zlib).
 *
 * Every input is checked before it is trusted: the digits sheet must be
 * exactly 2000x1000; an IDX file must have the right magic number, 28x28
 * images, an image count equal to its label file's, labels 0..9, and exactly
 * the bytes its header announces. gzread() reads gzip'd and plain files alike. */
#include "tools/train/data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "common/err.h"
#include "common/png.h"

#define DIGITS_W 2000
#define DIGITS_H 1000
#define DIGITS_TILE 20
#define DIGITS_COLS (DIGITS_W / DIGITS_TILE)      /* 100 tiles per row */
#define DIGITS_ROWS_PER_CLASS 5
#define DIGITS_PER_CLASS (DIGITS_COLS * DIGITS_ROWS_PER_CLASS) /* 500 */
#define DIGITS_TEST_EVERY 10                      /* sample j of a class is test if j % 10 == 0 */
#define DIGITS_PAD ((DATA_SIDE - DIGITS_TILE) / 2) /* 4 px border */

#define IDX_MAGIC_LABELS 0x00000801u
#define IDX_MAGIC_IMAGES 0x00000803u
#define IDX_MAX_ITEMS 10000000u
#define IDX_CHUNK_IMAGES 1024

static const char *const digit_names[DATA_CLASSES] = {
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
};
static const char *const fashion_names[DATA_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
};

const char *const *data_class_names(const char *name)
{
    if (name && strcmp(name, "digits") == 0)
        return digit_names;
    if (name && strcmp(name, "fashion") == 0)
        return fashion_names;
    return NULL;
}

/* A dataset with room for n samples of shape (copied), fields set,
 * contents uninitialised. */
static dataset *ds_alloc_shaped(const char *name, data_split split, int n, const model_shape *shape)
{
    dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return NULL;
    snprintf(ds->name, sizeof ds->name, "%s", name);
    ds->split = split;
    ds->n = n;
    if (model_shape_copy(&ds->shape, shape)) {
        free(ds);
        return NULL;
    }
    ds->width = shape->width;
    ds->height = shape->height;
    ds->channels = shape->channels;
    ds->dim = ds->width * ds->height * ds->channels;
    ds->n_classes = shape->n_class_names;
    ds->class_names = (const char *const *)ds->shape.class_names;
    size_t nn = n > 0 ? (size_t)n : 1;
    ds->pixels = malloc(nn * (size_t)ds->dim * sizeof *ds->pixels);
    ds->labels = malloc(nn * sizeof *ds->labels);
    if (!ds->pixels || !ds->labels) {
        data_free(ds);
        return NULL;
    }
    return ds;
}

/* digits / fashion: 28 x 28 x 1, ten named classes. */
static dataset *ds_alloc(const char *name, data_split split, int n)
{
    model_shape sh = { .height = DATA_SIDE, .width = DATA_SIDE, .channels = 1,
                       .n_class_names = DATA_CLASSES,
                       .class_names = (char **)data_class_names(name) };
    return ds_alloc_shaped(name, split, n, &sh);
}

void data_free(dataset *ds)
{
    if (!ds)
        return;
    free(ds->pixels);
    free(ds->labels);
    model_shape_free(&ds->shape);
    imgdir_free(ds->folder);
    free(ds);
}

static float byte_to_unit(uint8_t b)
{
    return (float)b * (2.0f / 255.0f) - 1.0f;
}

/* ---- digits --------------------------------------------------------------- */

static int load_digits(const char *dir, data_split split, dataset **out, char *err,
                       size_t errlen)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/digits/digits.png", dir) >= sizeof path) {
        ddm_errf(err, errlen, 0, "data directory path too long: %s", dir);
        return DDM_EINVAL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        ddm_errf(err, errlen, 0, "%s: %s; run `make data` to fetch the datasets", path,
                e == ENOENT ? "not found" : strerror(e));
        return e == ENOENT ? DDM_ENOTFOUND : -e;
    }
    uint8_t *pix;
    int w, h;
    char msg[512];
    int rc = pngio_read_grey(path, &pix, &w, &h, msg, sizeof msg);
    if (rc) {
        ddm_errf(err, errlen, 0, "%s; run `make data` to fetch it again", msg);
        return rc;
    }
    if (w != DIGITS_W || h != DIGITS_H) {
        ddm_errf(err, errlen, 0, "%s is %dx%d, expected %dx%d (100x50 tiles of 20x20); "
                "run `make data` to fetch it again", path, w, h, DIGITS_W, DIGITS_H);
        free(pix);
        return DDM_EFORMAT;
    }
    int per_class_test = DIGITS_PER_CLASS / DIGITS_TEST_EVERY;
    int per_class = split == DATA_TEST ? per_class_test : DIGITS_PER_CLASS - per_class_test;
    dataset *ds = ds_alloc("digits", split, per_class * DATA_CLASSES);
    if (!ds) {
        free(pix);
        ddm_errf(err, errlen, 0, "digits: out of memory");
        return DDM_ENOMEM;
    }
    int i = 0;
    for (int c = 0; c < DATA_CLASSES; c++) {
        for (int j = 0; j < DIGITS_PER_CLASS; j++) {
            int is_test = j % DIGITS_TEST_EVERY == 0;
            if (is_test != (split == DATA_TEST))
                continue;
            int tile_row = c * DIGITS_ROWS_PER_CLASS + j / DIGITS_COLS;
            int tile_col = j % DIGITS_COLS;
            const uint8_t *src = pix + (size_t)tile_row * DIGITS_TILE * DIGITS_W
                                 + (size_t)tile_col * DIGITS_TILE;
            float *dst = ds->pixels + (size_t)i * DATA_DIM;
            for (int k = 0; k < DATA_DIM; k++)
                dst[k] = -1.0f;
            for (int y = 0; y < DIGITS_TILE; y++)
                for (int x = 0; x < DIGITS_TILE; x++)
                    dst[(y + DIGITS_PAD) * DATA_SIDE + x + DIGITS_PAD] =
                        byte_to_unit(src[(size_t)y * DIGITS_W + (size_t)x]);
            ds->labels[i++] = c;
        }
    }
    free(pix);
    *out = ds;
    return 0;
}

/* ---- fashion (IDX) -------------------------------------------------------- */

/* Opens dir/fashion/base.gz, or dir/fashion/base when that is absent. */
static int idx_open(const char *dir, const char *base, gzFile *f, char *path, size_t pathlen,
                    char *err, size_t errlen)
{
    struct stat st;
    const char *suffix[2] = { ".gz", "" };
    for (int s = 0; s < 2; s++) {
        if ((size_t)snprintf(path, pathlen, "%s/fashion/%s%s", dir, base, suffix[s]) >= pathlen) {
            ddm_errf(err, errlen, 0, "data directory path too long: %s", dir);
            return DDM_EINVAL;
        }
        if (stat(path, &st) == 0)
            break;
        if (s == 1) {
            ddm_errf(err, errlen, 0, "%s/fashion/%s.gz: not found (nor uncompressed); run `make data` "
                    "to fetch the datasets", dir, base);
            return DDM_ENOTFOUND;
        }
    }
    if (!S_ISREG(st.st_mode)) {
        ddm_errf(err, errlen, 0, "%s: not a regular file", path);
        return DDM_EINVAL;
    }
    *f = gzopen(path, "rb");
    if (!*f) {
        int e = errno ? errno : ENOMEM;
        ddm_errf(err, errlen, 0, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    gzbuffer(*f, 1 << 17);
    return 0;
}

/* Reads exactly n bytes; a short read is a truncated (or corrupt) file. */
static int idx_read(gzFile f, void *buf, size_t n, const char *path, const char *what,
                    char *err, size_t errlen)
{
    uint8_t *p = buf;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int r = gzread(f, p, chunk);
        if (r <= 0) {
            int zerr;
            const char *zmsg = gzerror(f, &zerr);
            ddm_errf(err, errlen, 0, "%s: truncated or corrupt while reading %s (%s); "
                    "run `make data` to fetch it again", path, what,
                    zerr != Z_OK && zmsg && *zmsg ? zmsg : "file ends early");
            return zerr == Z_ERRNO ? DDM_EIO : DDM_EFORMAT;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* After the last item: the file must end here. */
static int idx_expect_end(gzFile f, const char *path, char *err, size_t errlen)
{
    uint8_t extra[1];
    int r = gzread(f, extra, sizeof extra);
    if (r > 0) {
        ddm_errf(err, errlen, 0, "%s: has more bytes than its header announces; "
                "run `make data` to fetch it again", path);
        return DDM_EFORMAT;
    }
    if (r < 0) {
        int zerr;
        const char *zmsg = gzerror(f, &zerr);
        ddm_errf(err, errlen, 0, "%s: corrupt at its end (%s); run `make data` to fetch it again",
                path, zmsg ? zmsg : "?");
        return DDM_EFORMAT;
    }
    return 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads the header of an IDX file: magic, then dims 32-bit big-endian counts. */
static int idx_header(gzFile f, const char *path, uint32_t magic, uint32_t *dims, int ndims,
                      char *err, size_t errlen)
{
    uint8_t hdr[16];
    int rc = idx_read(f, hdr, 4 * (size_t)(1 + ndims), path, "the header", err, errlen);
    if (rc)
        return rc;
    if (be32(hdr) != magic) {
        ddm_errf(err, errlen, 0, "%s: bad magic number 0x%08x, expected 0x%08x (IDX %s); "
                "run `make data` to fetch it again", path, be32(hdr), magic,
                magic == IDX_MAGIC_IMAGES ? "images" : "labels");
        return DDM_EFORMAT;
    }
    for (int i = 0; i < ndims; i++)
        dims[i] = be32(hdr + 4 * (i + 1));
    if (dims[0] == 0 || dims[0] > IDX_MAX_ITEMS) {
        ddm_errf(err, errlen, 0, "%s: item count %u outside 1..%u", path, dims[0], IDX_MAX_ITEMS);
        return DDM_EFORMAT;
    }
    return 0;
}

static int load_fashion(const char *dir, data_split split, dataset **out, char *err,
                        size_t errlen)
{
    const char *pre = split == DATA_TEST ? "t10k" : "train";
    char base[64], ipath[4096], lpath[4096];
    gzFile fi = NULL, fl = NULL;
    dataset *ds = NULL;
    uint8_t *buf = NULL;
    uint32_t idims[3], ldims[1];
    int rc;

    snprintf(base, sizeof base, "%s-images-idx3-ubyte", pre);
    if ((rc = idx_open(dir, base, &fi, ipath, sizeof ipath, err, errlen)))
        goto done;
    snprintf(base, sizeof base, "%s-labels-idx1-ubyte", pre);
    if ((rc = idx_open(dir, base, &fl, lpath, sizeof lpath, err, errlen)))
        goto done;
    if ((rc = idx_header(fi, ipath, IDX_MAGIC_IMAGES, idims, 3, err, errlen)) ||
        (rc = idx_header(fl, lpath, IDX_MAGIC_LABELS, ldims, 1, err, errlen)))
        goto done;
    if (idims[1] != DATA_SIDE || idims[2] != DATA_SIDE) {
        ddm_errf(err, errlen, 0, "%s: images are %ux%u, expected %dx%d", ipath, idims[1], idims[2],
                DATA_SIDE, DATA_SIDE);
        rc = DDM_EFORMAT;
        goto done;
    }
    if (idims[0] != ldims[0]) {
        ddm_errf(err, errlen, 0, "%s holds %u images but %s holds %u labels; run `make data` to "
                "fetch them again", ipath, idims[0], lpath, ldims[0]);
        rc = DDM_EMISMATCH;
        goto done;
    }
    int n = (int)idims[0];
    ds = ds_alloc("fashion", split, n);
    buf = malloc((size_t)IDX_CHUNK_IMAGES * DATA_DIM);
    if (!ds || !buf) {
        ddm_errf(err, errlen, 0, "fashion: out of memory for %d images", n);
        rc = DDM_ENOMEM;
        goto done;
    }
    for (int i = 0; i < n; i += IDX_CHUNK_IMAGES) {
        int m = n - i < IDX_CHUNK_IMAGES ? n - i : IDX_CHUNK_IMAGES;
        if ((rc = idx_read(fi, buf, (size_t)m * DATA_DIM, ipath, "the images", err, errlen)))
            goto done;
        float *dst = ds->pixels + (size_t)i * DATA_DIM;
        for (size_t k = 0; k < (size_t)m * DATA_DIM; k++)
            dst[k] = byte_to_unit(buf[k]);
    }
    if ((rc = idx_expect_end(fi, ipath, err, errlen)))
        goto done;
    for (int i = 0; i < n; i += IDX_CHUNK_IMAGES * DATA_DIM) {
        int m = n - i < IDX_CHUNK_IMAGES * DATA_DIM ? n - i : IDX_CHUNK_IMAGES * DATA_DIM;
        if ((rc = idx_read(fl, buf, (size_t)m, lpath, "the labels", err, errlen)))
            goto done;
        for (int k = 0; k < m; k++) {
            if (buf[k] >= DATA_CLASSES) {
                ddm_errf(err, errlen, 0, "%s: label %u of item %d is outside 0..%d", lpath, buf[k],
                        i + k, DATA_CLASSES - 1);
                rc = DDM_EFORMAT;
                goto done;
            }
            ds->labels[i + k] = buf[k];
        }
    }
    if ((rc = idx_expect_end(fl, lpath, err, errlen)))
        goto done;
    *out = ds;
    ds = NULL;
done:
    if (fi)
        gzclose(fi);
    if (fl)
        gzclose(fl);
    free(buf);
    data_free(ds);
    return rc;
}

/* ---- public --------------------------------------------------------------- */

int data_load(const char *name, const char *data_dir, data_split split, dataset **out,
              char *err, size_t errlen)
{
    *out = NULL;
    if (!data_dir)
        data_dir = DATA_DEFAULT_DIR;
    if (split != DATA_TRAIN && split != DATA_TEST) {
        ddm_errf(err, errlen, 0, "bad split %d (expected train or test)", (int)split);
        return DDM_EINVAL;
    }
    if (name && strcmp(name, "digits") == 0)
        return load_digits(data_dir, split, out, err, errlen);
    if (name && strcmp(name, "fashion") == 0)
        return load_fashion(data_dir, split, out, err, errlen);
    ddm_errf(err, errlen, 0, "unknown dataset \"%s\" (expected digits, fashion or a folder of "
            "PNGs)", name ? name : "(null)");
    return DDM_EINVAL;
}

int data_subset(const dataset *ds, const int *idx, int n, dataset **out, char *err,
                size_t errlen)
{
    *out = NULL;
    if (n < 0) {
        ddm_errf(err, errlen, 0, "data_subset: negative count %d", n);
        return DDM_EINVAL;
    }
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= ds->n) {
            ddm_errf(err, errlen, 0, "data_subset: index %d at position %d is outside 0..%d",
                    idx[i], i, ds->n - 1);
            return DDM_ERANGE;
        }
    }
    dataset *sub = ds_alloc_shaped(ds->name, ds->split, n, &ds->shape);
    if (!sub) {
        ddm_errf(err, errlen, 0, "data_subset: out of memory for %d samples", n);
        return DDM_ENOMEM;
    }
    size_t D = (size_t)ds->dim;
    for (int i = 0; i < n; i++) {
        memcpy(sub->pixels + (size_t)i * D, ds->pixels + (size_t)idx[i] * D,
               D * sizeof *sub->pixels);
        sub->labels[i] = ds->labels[idx[i]];
    }
    *out = sub;
    return 0;
}

void data_class_counts(const dataset *ds, int *counts)
{
    for (int c = 0; c < ds->n_classes; c++)
        counts[c] = 0;
    for (int i = 0; i < ds->n; i++)
        if (ds->labels[i] >= 0 && ds->labels[i] < ds->n_classes)
            counts[ds->labels[i]]++;
}

int data_write_png_grid(const char *path, const float *imgs, int n, int cols, char *err,
                        size_t errlen)
{
    return pngio_write_grid(path, imgs, n, DATA_SIDE, DATA_SIDE, cols, err, errlen);
}

int data_write_grid(const dataset *ds, const char *path, const float *imgs, int n, int cols,
                    char *err, size_t errlen)
{
    return pngio_write_grid_ch(path, imgs, n, ds->width, ds->height, ds->channels, cols, err,
                               errlen);
}

/* ---- folders of PNGs -------------------------------------------------------- */

int data_is_folder(const char *name)
{
    return name && strcmp(name, "digits") != 0 && strcmp(name, "fashion") != 0;
}

void data_set_name(const char *name, char *buf, size_t len)
{
    if (!data_is_folder(name)) {
        snprintf(buf, len, "%s", name ? name : "");
        return;
    }
    size_t n = strlen(name);
    while (n > 1 && name[n - 1] == '/')
        n--;
    size_t a = n;
    while (a > 0 && name[a - 1] != '/')
        a--;
    size_t m = n - a;
    if (m > 31)
        m = 31;
    snprintf(buf, len, "%.*s", (int)m, name + a);
}

static int load_folder(const data_spec *spec, data_split split, dataset **out, char *err,
                       size_t errlen)
{
    imgdir_set *s = NULL;
    int rc = imgdir_load(spec->name, &spec->folder, &s, err, errlen);
    if (rc)
        return rc;
    int n = 0;
    for (int i = 0; i < s->n; i++)
        n += s->test[i] == (split == DATA_TEST);
    model_shape sh = { .height = s->size, .width = s->size, .channels = s->channels,
                       .n_class_names = s->n_classes, .class_names = s->class_names };
    char name[32];
    data_set_name(spec->name, name, sizeof name);
    dataset *ds = ds_alloc_shaped(name, split, n, &sh);
    if (!ds) {
        imgdir_free(s);
        return ddm_errf(err, errlen, DDM_ENOMEM, "%s: out of memory for %d images", spec->name, n);
    }
    for (int i = 0, j = 0; i < s->n; i++) {
        if (s->test[i] != (split == DATA_TEST))
            continue;
        const uint8_t *src = s->pix + (size_t)i * s->dim;
        float *dst = ds->pixels + (size_t)j * s->dim;
        for (int k = 0; k < s->dim; k++)
            dst[k] = byte_to_unit(src[k]);
        ds->labels[j++] = s->labels[i];
    }
    ds->folder = s;
    *out = ds;
    return 0;
}

int data_load_spec(const data_spec *spec, data_split split, dataset **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (!data_is_folder(spec->name))
        return data_load(spec->name, spec->dir, split, out, err, errlen);
    if (split != DATA_TRAIN && split != DATA_TEST)
        return ddm_errf(err, errlen, DDM_EINVAL, "bad split %d (expected train or test)", (int)split);
    return load_folder(spec, split, out, err, errlen);
}
