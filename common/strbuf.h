/* strbuf.h -- a growable text/byte buffer for responses, events and metrics.
 *
 * Appends never fail loudly: the first allocation failure sets oom, later
 * appends do nothing, and the owner checks oom once at the end (so a writer
 * of many small pieces needs no error path per piece). The bytes are always
 * NUL-terminated when p is not NULL. */
#ifndef DDM_STRBUF_H
#define DDM_STRBUF_H

#include <stddef.h>

typedef struct strbuf {
    char *p;          /* [len] + NUL, malloc'd; NULL until the first append */
    size_t len, cap;
    int oom;          /* an append failed: the content is incomplete */
} strbuf;

/* Makes room for more bytes (plus the NUL). Sets oom on failure. */
void strbuf_reserve(strbuf *b, size_t more);
void strbuf_put(strbuf *b, const void *data, size_t len);
void strbuf_puts(strbuf *b, const char *s);
void strbuf_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal (quotes, escapes; bytes that are not
 * UTF-8 become U+FFFD, as utf8_json_quote writes them); NULL as "". */
void strbuf_json_str(strbuf *b, const char *s);
/* Appends data[0..len) in base64 (RFC 4648, padded; no quotes). */
void strbuf_base64(strbuf *b, const void *data, size_t len);
/* Returns the malloc'd bytes (caller frees) and their length, and empties b;
 * NULL (and b freed) when oom was set or nothing was appended. */
char *strbuf_take(strbuf *b, size_t *len);
/* Frees the bytes and zeroes b. */
void strbuf_free(strbuf *b);

#endif
