/* utf8.c -- UTF-8 validity (see utf8.h). */
#include "common/utf8.h"

int utf8_seq_len(const unsigned char *p, size_t avail)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    int n = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if ((size_t)n > avail)
        return 0;
    for (int i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if (n > 1 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) ||
                  (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)))
        return 0;
    return n;
}

size_t utf8_valid_prefix(const void *s, size_t len)
{
    const unsigned char *p = s;
    size_t i = 0;
    while (i < len) {
        int n = utf8_seq_len(p + i, len - i);
        if (!n)
            return i;
        i += (size_t)n;
    }
    return len;
}

size_t utf8_json_quote(char *buf, size_t size, const char *s)
{
    size_t n = 0;
#define PUT(c) do { if (n + 1 < size) buf[n] = (c); n++; } while (0)
    PUT('"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        unsigned char c = *p;
        if (c >= 0x80) {
            int len = utf8_seq_len(p, 4); /* a NUL stops a cut sequence first */
            if (!len) { /* not UTF-8: the replacement character */
                PUT('\\'); PUT('u'); PUT('f'); PUT('f'); PUT('f'); PUT('d');
                continue;
            }
            for (int i = 0; i < len; i++)
                PUT((char)p[i]);
            p += len - 1;
            continue;
        }
        if (c == '"' || c == '\\') {
            PUT('\\');
            PUT((char)c);
        } else if (c == '\n') {
            PUT('\\'); PUT('n');
        } else if (c == '\r') {
            PUT('\\'); PUT('r');
        } else if (c == '\t') {
            PUT('\\'); PUT('t');
        } else if (c < 0x20 || c == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            PUT('\\'); PUT('u'); PUT('0'); PUT('0');
            PUT(hex[c >> 4]); PUT(hex[c & 15]);
        } else {
            PUT((char)c);
        }
    }
    PUT('"');
#undef PUT
    if (size)
        buf[n < size ? n : size - 1] = '\0';
    return n;
}
