/* utf8.h -- UTF-8 validity, for text that came from outside (request bodies,
 * bytes echoed into JSON). */
#ifndef DDM_UTF8_H
#define DDM_UTF8_H

#include <stddef.h>

/* Length (1..4) of the valid UTF-8 sequence at p, of the avail bytes there, or
 * 0 if there is none: a stray continuation byte, a cut sequence, an overlong
 * form, a surrogate or a code point past U+10FFFF. avail >= 1. */
int utf8_seq_len(const unsigned char *p, size_t avail);

/* Offset of the first byte of s[0..len) that does not start a valid sequence,
 * or len when all of it is valid UTF-8. */
size_t utf8_valid_prefix(const void *s, size_t len);

/* Writes the JSON string literal for s (with quotes; ", \\ and control
 * characters escaped; bytes that are not UTF-8 as \\ufffd, so that nothing a
 * client sent can make the JSON invalid) into buf, NUL-terminated and cut to
 * size; NULL s as "". Returns the length it needs (without the NUL), like
 * snprintf (buf may be NULL when size is 0). */
size_t utf8_json_quote(char *buf, size_t size, const char *s);

#endif
