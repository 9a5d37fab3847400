/* st.h -- safetensors files: a validating mmap reader and an atomic writer.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "string value", ...}}, then the data block.
 * st_open() checks everything against the file before returning: header
 * length, JSON, dtype, shape x dtype size == byte length, offsets inside the
 * data block, no two tensors overlapping. Nothing it returns can point outside
 * the mapping. */
#ifndef DDM_ST_H
#define DDM_ST_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (64u << 20) /* header lengths above this are refused */

typedef enum st_dtype { ST_F32 = 0, ST_F16, ST_BF16, ST_I32, ST_I64, ST_U8 } st_dtype;

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;      /* inside the read-only mapping; may be unaligned (read
                              with memcpy or st_read_f32), little-endian */
    size_t nbytes;         /* == st_numel() * element size, checked at open */
} st_tensor;

typedef struct st_file st_file;

/* Maps and validates `path`. Returns NULL on any problem with a one-line
 * message in err that names the file and what is wrong ("weights file P: ...").
 * Besides the checks above: dtypes F32 F16 BF16 I32 I64 U8 only, at most
 * ST_MAX_DIMS dims, unique names, no gap or trailing bytes in the data block,
 * __metadata__ an object of strings. The sha256 is computed here. The file
 * must not be modified in place while open (writers replace it by rename). */
st_file *st_open(const char *path, char *err, size_t errlen);
/* Unmaps and frees f and everything it returned; NULL is a no-op. */
void st_close(st_file *f);

/* Tensors in header order; st_at returns NULL outside 0..count-1. */
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
/* Returns the tensor called name, or NULL. */
const st_tensor *st_get(const st_file *f, const char *name);
/* Returns the __metadata__ value for key, or NULL. Owned by f. */
const char *st_meta(const st_file *f, const char *key);
int st_meta_count(const st_file *f);
/* i-th metadata pair; returns 0 or DDM_ERANGE. */
int st_meta_at(const st_file *f, int i, const char **key, const char **value);
/* Lowercase hex sha256 of the whole file (65 bytes with NUL), owned by f. */
const char *st_sha256(const st_file *f);
const char *st_path(const st_file *f);

/* Element count of a tensor (product of its shape). */
size_t st_numel(const st_tensor *t);
/* Converts an F32, F16 or BF16 tensor into dst (n floats, n must equal the
 * element count). Returns 0, or DDM_EMISMATCH / DDM_EFORMAT with err set. */
int st_read_f32(const st_tensor *t, float *dst, size_t n, char *err, size_t errlen);

/* Writer: collects tensors (copied, converted to the requested dtype) and
 * metadata, then writes the file to path.tmp and renames it over path, so a
 * crash never leaves a half-written weights file. Tensors are laid out in add
 * order; the header is padded with spaces to a multiple of 8 bytes. */
typedef struct st_writer st_writer;
/* Returns an empty writer, or NULL when out of memory. */
st_writer *st_writer_new(void);
/* Frees w and its copies; NULL is a no-op. */
void st_writer_free(st_writer *w);
/* Copies data (numel(shape) floats; may be NULL only if that is 0), stored
 * as dtype ST_F32, ST_F16 or ST_BF16 (rounded to nearest even). ndim 0 is a
 * scalar. Returns 0, DDM_EINVAL (empty, reserved or duplicate name, bad dtype
 * or shape) or DDM_ENOMEM; on failure w is unchanged. */
int st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim,
                      const int64_t *shape, const float *data);
/* Copies raw little-endian bytes of any dtype (e.g. ST_I32 assignments);
 * nbytes must equal numel(shape) * element size. Returns as st_writer_add_f32. */
int st_writer_add_raw(st_writer *w, const char *name, st_dtype dtype, int ndim,
                      const int64_t *shape, const void *data, size_t nbytes);
/* Sets a __metadata__ string (copied); setting a key again replaces its
 * value. Returns 0, DDM_EINVAL or DDM_ENOMEM. */
int st_writer_meta(st_writer *w, const char *key, const char *value);
/* Writes everything added so far to path (via path.tmp, fsync, rename; the
 * temporary is removed on failure). w stays usable. Returns 0, DDM_ENOMEM or
 * -errno with a one-line message in err. */
int st_writer_save(st_writer *w, const char *path, char *err, size_t errlen);

/* IEEE half <-> float, round to nearest even; inf, NaN and subnormals kept. */
uint16_t st_f32_to_f16(float f);
float st_f16_to_f32(uint16_t h);
/* bfloat16 <-> float, round to nearest even; NaN stays NaN. */
uint16_t st_f32_to_bf16(float f);
float st_bf16_to_f32(uint16_t h);

/* The dtype's name in headers ("F32", ...) and its element size in bytes;
 * "?" and 0 for a value outside the enum. */
const char *st_dtype_name(st_dtype d);
size_t st_dtype_size(st_dtype d);

#endif
