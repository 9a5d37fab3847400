/* base64.c -- standard base64 (RFC 4648) with padding. */
#include "common/base64.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encoded_len(size_t len) { return (len + 2) / 3 * 4; }

void base64_encode(const uint8_t *src, size_t len, char *dst)
{
    size_t i = 0, o = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        dst[o++] = ALPHABET[v >> 18];
        dst[o++] = ALPHABET[(v >> 12) & 63];
        dst[o++] = ALPHABET[(v >> 6) & 63];
        dst[o++] = ALPHABET[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)src[i] << 16 | (i + 1 < len ? (uint32_t)src[i + 1] << 8 : 0);
        dst[o++] = ALPHABET[v >> 18];
        dst[o++] = ALPHABET[(v >> 12) & 63];
        dst[o++] = i + 1 < len ? ALPHABET[(v >> 6) & 63] : '=';
        dst[o++] = '=';
    }
    dst[o] = '\0';
}

static int value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

long base64_decode(const char *src, size_t len, uint8_t *dst)
{
    if (len % 4)
        return -1;
    long o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int pad = (src[i + 3] == '=') + (src[i + 2] == '=');
        if (pad && i + 4 != len)
            return -1;
        int a = value(src[i]), b = value(src[i + 1]);
        int c = pad >= 2 ? 0 : value(src[i + 2]);
        int d = pad >= 1 ? 0 : value(src[i + 3]);
        if (a < 0 || b < 0 || c < 0 || d < 0)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        dst[o++] = (uint8_t)(v >> 16);
        if (pad < 2)
            dst[o++] = (uint8_t)(v >> 8);
        if (pad < 1)
            dst[o++] = (uint8_t)v;
    }
    return o;
}
