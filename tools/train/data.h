/* data.h -- the training datasets: digits (OpenCV's digits.png) and Fashion-MNIST.
 *
 * Both load into the same in-memory form: n images of 28x28 floats in [-1, 1]
 * (-1 black background, +1 white ink) with a class label 0..9. `make data`
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

#define DATA_SIDE 28
#define DATA_DIM (DATA_SIDE * DATA_SIDE)
#define DATA_CLASSES 10
#define DATA_DEFAULT_DIR "data"

typedef enum data_split { DATA_TRAIN = 0, DATA_TEST = 1 } data_split;

typedef struct dataset {
    char name[16];                  /* "digits" or "fashion" */
    data_split split;
    int n;                          /* number of images */
    int dim;                        /* DATA_DIM */
    int width, height;              /* DATA_SIDE each */
    float *pixels;                  /* [n][dim] row-major, row y of an image at y*width, in [-1, 1] */
    int *labels;                    /* [n], 0 .. n_classes-1 */
    int n_classes;                  /* DATA_CLASSES */
    const char *const *class_names; /* [n_classes], static strings */
} dataset;

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

#endif
