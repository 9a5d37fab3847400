/* data.h -- the training datasets: digits (OpenCV's digits.png), Fashion-MNIST,
 * and any folder of PNGs (tools/train/imgdir.h).
 *
 * All load into the same in-memory form: n images of height x width x channels
 * floats in [-1, 1] (HWC; -1 black, +1 white) with a class label. digits and
 * fashion are 28x28 grey with classes 0..9. `make data`
 * (mk/data.sh) fetches the files into data/:
 *   data/digits/digits.png      2000x1000 grey sheet, 100 x 50 tiles of 20x20,
 *                               tile row r holds class r / 5 (500 per class)
 *   data/fashion/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   IDX files
 * digits has no official split: a fixed stratified 10% is the test set (in
 * every class, sample j is test when j % 10 == 0: 450 train + 50 test per
 * class). Fashion uses its own 60000 / 10000 split.
 * Samples are in file order (digits: sorted by class); shuffling is the
 * trainer's job. */
#ifndef DDM_DATA_H
#define DDM_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "common/model.h"
#include "tools/train/imgdir.h"

#define DATA_SIDE 28
#define DATA_DIM (DATA_SIDE * DATA_SIDE)
#define DATA_CLASSES 10
#define DATA_DEFAULT_DIR "data"

typedef enum data_split { DATA_TRAIN = 0, DATA_TEST = 1 } data_split;

typedef struct dataset {
    char name[32];                  /* "digits", "fashion", or the folder's own name */
    data_split split;
    int n;                          /* number of images */
    int dim;                        /* height * width * channels (DATA_DIM for digits/fashion) */
    int width, height, channels;    /* DATA_SIDE x DATA_SIDE x 1 for digits/fashion */
    float *pixels;                  /* [n][dim] HWC, row y of an image at y*width*channels, in [-1, 1] */
    int *labels;                    /* [n], 0 .. n_classes-1 */
    int n_classes;                  /* DATA_CLASSES for digits/fashion */
    const char *const *class_names; /* [n_classes], = shape.class_names */
    model_shape shape;              /* height, width, channels, class names (owned) */
    imgdir_set *folder;             /* a folder's whole set (both splits; for the manifest), or NULL */
} dataset;

/* Which dataset to load: a name, or a folder and how to read it. */
typedef struct data_spec {
    const char *name;               /* "digits", "fashion", or the path of a folder of PNGs */
    const char *dir;                /* where `make data` put digits/fashion (NULL = DATA_DEFAULT_DIR) */
    imgdir_opts folder;             /* a folder's size, channels, background, strictness */
} data_spec;

/* 1 when name is not a built-in set (digits, fashion): a folder path. */
int data_is_folder(const char *name);

/* The set's short name into buf: digits / fashion, or a folder's last path
 * component (at most 31 bytes). */
void data_set_name(const char *name, char *buf, size_t len);

/* Loads split of the set spec names: data_load for digits/fashion, else
 * imgdir_load of the folder (its test split is imgdir's). Same contract as
 * data_load; errors name the folder or file and what to fix. */
int data_load_spec(const data_spec *spec, data_split split, dataset **out, char *err,
                   size_t errlen);

/* Loads split (DATA_TRAIN or DATA_TEST) of dataset name ("digits" or
 * "fashion") from data_dir (NULL means DATA_DEFAULT_DIR). On success returns
 * 0 and *out is a new dataset the caller frees with data_free(). On failure
 * returns a ddm_err, *out = NULL, and err holds one line that names the file
 * and what to do (a missing file: "run `make data`"; a truncated file, a bad
 * magic number, a wrong image size or count, a label out of range: which and
 * where). Never crashes on malformed files. */
int data_load(const char *name, const char *data_dir, data_split split, dataset **out,
              char *err, size_t errlen);

/* Frees ds and everything it owns; NULL is allowed. */
void data_free(dataset *ds);

/* A new dataset holding copies of ds's samples idx[0..n) in that order (the
 * same index may repeat; n may be 0). Returns 0 and *out (free with
 * data_free), DDM_ERANGE with a message when an index is outside [0, ds->n),
 * or DDM_ENOMEM. */
int data_subset(const dataset *ds, const int *idx, int n, dataset **out, char *err,
                size_t errlen);

/* Counts samples per class into counts[0..ds->n_classes). */
void data_class_counts(const dataset *ds, int *counts);

/* Class names of a dataset name ("digits" / "fashion"), or NULL if unknown. */
const char *const *data_class_names(const char *name);

/* Writes images [n][DATA_DIM] (values in [-1, 1]) as a PNG grid with cols
 * columns and 2 px separators at path. Returns 0 or a ddm_err with a message. */
int data_write_png_grid(const char *path, const float *imgs, int n, int cols, char *err,
                        size_t errlen);

/* The same for images of ds's shape (grey or RGB). */
int data_write_grid(const dataset *ds, const char *path, const float *imgs, int n, int cols,
                    char *err, size_t errlen);

#endif
