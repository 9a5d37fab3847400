/* model.h -- a network plus its weights file: load (validated) and save.
 *
 * A weights file is safetensors with the tensors of net_tensor_table() and
 * __metadata__ keys:
 *   ddm.format = "ddm-mlp-v1"       (files without it are refused)
 *   ddm.kind   = "denoiser" | "router" | "classifier"
 *   in_dim, hidden, n_blocks, out_dim, n_classes, time_dim, gauss_rank   (decimal)
 *   dataset, expert_id (-1 for the monolith / non-experts), num_experts
 * and the image shape (wave 2; files without these keys mean 28 x 28 x 1):
 *   height, width, channels                 (decimal; height*width*channels = in_dim
 *                                            of a denoiser; channels 1 or 3, HWC order)
 *   class_names                             (JSON array of n_classes strings, label order)
 * and free-form training keys (config, seed, steps, loss, ...). Optional
 * extra tensors (e.g. "centroid" [D]) may ride along and are ignored by the
 * loader. */
#ifndef DDM_MODEL_H
#define DDM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "common/net.h"
#include "common/st.h"

#define MODEL_FORMAT "ddm-mlp-v1"
#define MODEL_MAX_CLASS_NAME 64   /* bytes of a class name, NUL included */

/* The image a network's in_dim is: height x width x channels, HWC order,
 * and the names of its classes. Filled by model_shape_read (owned: free
 * with model_shape_free) or set by hand as a view (then not freed). */
typedef struct model_shape {
    int height, width, channels;  /* channels 1 (grey) or 3 (RGB) */
    int n_class_names;            /* 0 when the file names no classes */
    char **class_names;           /* [n_class_names], one allocation with the strings */
} model_shape;

typedef enum model_kind { MODEL_DENOISER = 0, MODEL_ROUTER, MODEL_CLASSIFIER } model_kind;

typedef struct model {
    model_kind kind;
    net_config cfg;
    net_weights w;        /* points into params */
    float *params;        /* owned: net_param_count(cfg) floats, converted to fp32, then
                             the net_transpose() copies that w points at too */
    uint16_t *halves;     /* owned: net_half() copies that w points at, or NULL */
    st_file *file;        /* the open weights file (metadata, sha256) */
    int expert_id;        /* cluster id, -1 when not an expert */
    int num_experts;      /* K of the set, 0 if unknown */
    char dataset[32];
    model_shape shape;    /* image shape (28x28x1 default, see model_shape_read) */
} model;

/* Opens and validates a weights file: metadata present and sane (config ints
 * are plain decimals passing net_config_check; a denoiser has out_dim ==
 * in_dim; a router with num_experts > 0 has out_dim == num_experts;
 * -1 <= expert_id < num_experts; the image shape as model_shape_read checks it), every tensor of the layout present as
 * F32/F16/BF16 with exactly the expected shape, no layout tensor the config
 * rules out, finite values, Gaussian variances g_lam >= 0 and g_sig2 > 0.
 * Returns the model (caller closes it) or NULL with a one-line message in err
 * naming the file and the tensor or key. */
model *model_open(const char *path, char *err, size_t errlen);
/* Frees the params, closes the file; NULL is a no-op. */
void model_close(model *m);

const char *model_kind_name(model_kind k);
/* Metadata value or NULL (owned by m). */
const char *model_meta(const model *m, const char *key);

/* Adds the network's tensors (params in net_tensor_table layout, stored as
 * dtype) and the required metadata to w. The caller adds any other metadata
 * or tensors and calls st_writer_save(). dataset may be NULL (""). Returns 0,
 * DDM_EINVAL (bad kind, dtype, config, expert_id < -1, dataset of 32+ chars,
 * or a name already in w) or DDM_ENOMEM. */
int model_write(st_writer *w, model_kind kind, const net_config *c, const float *params,
                st_dtype dtype, const char *dataset, int expert_id, int num_experts);

/* Reads the shape keys of f's metadata for a network of in_dim inputs and
 * n_classes classes (a classifier's: its out_dim) into *out (free with model_shape_free):
 *   height, width, channels: all three or none; decimals; channels 1 or 3;
 *     height * width * channels == in_dim. None: 28 x 28 x 1 when in_dim is
 *     784 -- the files from before these keys -- else model_shape_default.
 *   class_names: absent, or a JSON array of exactly n_classes distinct,
 *     non-empty strings of at most MODEL_MAX_CLASS_NAME - 1 printable bytes.
 * Returns 0, or DDM_EFORMAT / DDM_EMISMATCH / DDM_ENOMEM with a message
 * naming the file (st_path) and the key. */
int model_shape_read(const st_file *f, int in_dim, int n_classes, model_shape *out, char *err,
                     size_t errlen);
/* The shape of a file without the keys: side x side x 1 when in_dim is a
 * square, else in_dim x 1 x 1; no class names. */
void model_shape_default(model_shape *s, int in_dim);
/* Adds height, width, channels and (when s has names) class_names to w.
 * Returns 0, DDM_EINVAL (channels not 1 or 3, a bad name) or DDM_ENOMEM. */
int model_shape_write(st_writer *w, const model_shape *s);
/* A deep copy of src into *dst (free with model_shape_free); 0 or DDM_ENOMEM. */
int model_shape_copy(model_shape *dst, const model_shape *src);
/* Frees the names and zeroes *s. */
void model_shape_free(model_shape *s);
/* 1 when a and b have the same height, width, channels and class names
 * (a shape without names matches any names only if both have none). */
int model_shape_equal(const model_shape *a, const model_shape *b);
/* Index of class `name` in s, or -1. */
int model_class_index(const model_shape *s, const char *name);
/* "32x32x3" into buf. */
const char *model_shape_str(const model_shape *s, char *buf, size_t len);

#endif
