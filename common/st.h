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
    const void *data;      /* inside the read-only mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

/* Maps and validates `path`. Returns NULL on any problem with a one-line
 * message in err that names the file and what is wrong. */
st_file *st_open(const char *path, char *err, size_t errlen);
void st_close(st_file *f);

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
 * crash never leaves a half-written weights file. */
typedef struct st_writer st_writer;
st_writer *st_writer_new(void);
void st_writer_free(st_writer *w);
/* data holds numel(shape) floats; dtype is ST_F32, ST_F16 or ST_BF16. */
int st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim,
                      const int64_t *shape, const float *data);
/* Raw bytes of any dtype (e.g. ST_I32 assignments). */
int st_writer_add_raw(st_writer *w, const char *name, st_dtype dtype, int ndim,
                      const int64_t *shape, const void *data, size_t nbytes);
int st_writer_meta(st_writer *w, const char *key, const char *value);
int st_writer_save(st_writer *w, const char *path, char *err, size_t errlen);

/* IEEE half <-> float, round to nearest even. */
uint16_t st_f32_to_f16(float f);
float st_f16_to_f32(uint16_t h);

#endif
