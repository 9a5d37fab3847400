/* base64.h -- standard base64 (RFC 4648, with padding), used for PNGs in JSON. */
#ifndef DDM_BASE64_H
#define DDM_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Characters base64_encode writes for len bytes (without the NUL). */
size_t base64_encoded_len(size_t len);
/* Encodes src[0..len) into dst (base64_encoded_len(len) + 1 bytes, NUL-terminated). */
void base64_encode(const uint8_t *src, size_t len, char *dst);
/* Decodes src[0..len) into dst (at least len / 4 * 3 bytes). Returns the byte
 * count, or -1 if src is not valid padded base64. */
long base64_decode(const char *src, size_t len, uint8_t *dst);

#endif
