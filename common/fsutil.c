/* fsutil.c -- small filesystem helpers (see fsutil.h). */
#include "common/fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"

int fs_mkdirs(const char *path, char *err, size_t errlen)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ddm_errf(err, errlen, -ENAMETOOLONG, "directory name too long: %.64s...", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char keep = *p;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            int e = errno;
            return ddm_errf(err, errlen, -e, "cannot create directory %s: %s", buf, strerror(e));
        }
        *p = keep;
        if (!keep)
            return 0;
    }
}
