/* err.c -- descriptions of ddm error codes. */
#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *ddm_strerror(int err)
{
    switch (err) {
    case DDM_OK:        return "success";
    case DDM_EINVAL:    return "invalid argument";
    case DDM_ENOMEM:    return "out of memory";
    case DDM_EIO:       return "input/output error";
    case DDM_EFORMAT:   return "malformed data";
    case DDM_ERANGE:    return "value out of range";
    case DDM_EMISMATCH: return "mismatch";
    case DDM_ETIMEDOUT: return "timed out";
    case DDM_EUNAVAIL:  return "unavailable";
    case DDM_EBUSY:     return "busy, try again later";
    case DDM_ECLOSED:   return "closed";
    case DDM_ENOTFOUND: return "not found";
    case DDM_EPROTO:    return "protocol error";
    }
    if (err < 0 && err > -1000)
        return strerror(-err);
    return "unknown error";
}

int ddm_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
