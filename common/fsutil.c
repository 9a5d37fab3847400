/* fsutil.c -- small filesystem helpers (see fsutil.h). */
#include "common/fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
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

int fs_read_file(const char *path, size_t max_bytes, unsigned char **buf, size_t *len, char *err,
                 size_t errlen)
{
    *buf = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        return ddm_errf(err, errlen, e == ENOENT ? DDM_ENOTFOUND : -e, "%s: %s", path,
                        e == ENOENT ? "no such file" : strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ddm_errf(err, errlen, DDM_EINVAL, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        fclose(f);
        return ddm_errf(err, errlen, DDM_ERANGE, "%s: %lld bytes, more than the %zu allowed",
                        path, (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    unsigned char *b = malloc(n + 1);
    if (!b) {
        fclose(f);
        return ddm_errf(err, errlen, DDM_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = fread(b, 1, n, f);
    int bad = ferror(f) || got != n;
    fclose(f);
    if (bad) {
        free(b);
        return ddm_errf(err, errlen, DDM_EIO, "%s: read error (file changed while reading?)", path);
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

int fs_write_file(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "cannot write %s: %s (check the folder exists and is writable)",
                 path, strerror(e));
        return -e;
    }
    size_t w = fwrite(data, 1, len, f);
    int bad = w != len || ferror(f);
    if (fclose(f) || bad) {
        snprintf(err, errlen, "cannot write %s: short write (disk full?)", path);
        return DDM_EIO;
    }
    return 0;
}
