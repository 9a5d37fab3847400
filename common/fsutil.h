/* fsutil.h -- small filesystem helpers shared by the tools. */
#ifndef DDM_FSUTIL_H
#define DDM_FSUTIL_H

#include <stddef.h>

/* Creates path and any missing parents (like mkdir -p, mode 0755).
 * Returns 0 or -errno with "cannot create directory X: why" in err. */
int fs_mkdirs(const char *path, char *err, size_t errlen);

#endif
