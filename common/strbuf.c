/* strbuf.c -- growable buffer (see strbuf.h). */
#include "common/strbuf.h"

#include "common/base64.h"
#include "common/utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_reserve(strbuf *b, size_t more)
{
    if (b->oom || b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

void strbuf_put(strbuf *b, const void *data, size_t len)
{
    strbuf_reserve(b, len);
    if (b->oom)
        return;
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void strbuf_puts(strbuf *b, const char *s) { strbuf_put(b, s, strlen(s)); }

void strbuf_printf(strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    strbuf_reserve(b, (size_t)n);
    if (b->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void strbuf_json_str(strbuf *b, const char *s)
{
    size_t n = utf8_json_quote(NULL, 0, s);
    strbuf_reserve(b, n);
    if (b->oom)
        return;
    utf8_json_quote(b->p + b->len, n + 1, s);
    b->len += n;
}

void strbuf_base64(strbuf *b, const void *data, size_t len)
{
    size_t n = base64_encoded_len(len);
    strbuf_reserve(b, n);
    if (b->oom)
        return;
    base64_encode(data, len, b->p + b->len); /* NUL-terminated, as b keeps it */
    b->len += n;
}

char *strbuf_take(strbuf *b, size_t *len)
{
    char *p = b->oom ? NULL : b->p;
    if (len)
        *len = p ? b->len : 0;
    if (!p)
        free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    return p;
}

void strbuf_free(strbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}
