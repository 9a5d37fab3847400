/* fsutil.h -- small filesystem helpers shared by the tools. */
#ifndef DDM_FSUTIL_H
#define DDM_FSUTIL_H

#include <stddef.h>

/* Creates path and any missing parents (like mkdir -p, mode 0755).
 * Returns 0 or -errno with "cannot create directory X: why" in err. */
int fs_mkdirs(const char *path, char *err, size_t errlen);

/* Reads the whole regular file at path into a malloc'd buffer (*buf, *len;
 * the caller frees *buf; one spare NUL byte follows the data). Files larger
 * than max_bytes are refused without reading them. Returns 0, DDM_ENOTFOUND
 * (no such file), DDM_EINVAL (not a regular file), DDM_ERANGE (too large),
 * DDM_ENOMEM, or -errno / DDM_EIO; the message names path. */
int fs_read_file(const char *path, size_t max_bytes, unsigned char **buf, size_t *len, char *err,
                 size_t errlen);

/* Writes data[0..len) to path (created or truncated). Returns 0, or -errno /
 * DDM_EIO with "cannot write PATH: why" in err. */
int fs_write_file(const char *path, const void *data, size_t len, char *err, size_t errlen);

#endif
