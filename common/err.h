/* err.h -- the one error code space of ddm.
 *
 * 0 is success, every failure is negative. System errors travel as -errno
 * (libuv style), so a DDM_E* code never collides with one: ours start at -1000. */
#ifndef DDM_ERR_H
#define DDM_ERR_H

#include <stddef.h>

typedef enum ddm_err {
    DDM_OK = 0,
    DDM_EINVAL    = -1000, /* bad argument or malformed input */
    DDM_ENOMEM    = -1001, /* allocation failed */
    DDM_EIO       = -1002, /* read/write failed or short */
    DDM_EFORMAT   = -1003, /* file or message does not follow its format */
    DDM_ERANGE    = -1004, /* value outside its allowed range */
    DDM_EMISMATCH = -1005, /* shapes, ids or hashes that should agree do not */
    DDM_ETIMEDOUT = -1006, /* a deadline passed */
    DDM_EUNAVAIL  = -1007, /* no live worker / resource unavailable */
    DDM_EBUSY     = -1008, /* queue full, try again later */
    DDM_ECLOSED   = -1009, /* object is shutting down */
    DDM_ENOTFOUND = -1010, /* named thing does not exist */
    DDM_EPROTO    = -1011, /* peer broke the wire protocol */
} ddm_err;

/* Returns a static, human-readable description of err (a DDM_E* code or a
 * -errno value). Never returns NULL. */
const char *ddm_strerror(int err);

/* Formats a one-line message into err (when err is not NULL and errlen > 0)
 * and returns code, so a failure path reads `return ddm_errf(err, errlen,
 * DDM_EFORMAT, "...", ...);`. */
int ddm_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
