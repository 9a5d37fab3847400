/* st.c -- safetensors reader (mmap, validated before use) and atomic writer.
 *
 * The reader trusts nothing in the file: the header is copied out of the
 * mapping and NUL-terminated before cJSON sees it, every number is checked to
 * be an exact non-negative integer, sizes are multiplied with overflow checks,
 * and the tensors must tile the data block exactly (no overlap, no gap, no
 * trailing bytes), as the format's specification requires. The host is
 * assumed little-endian, like the format. */
#include "common/st.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/sha256.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "st.c assumes a little-endian host (safetensors data is little-endian)"
#endif

#define JSON_INT_MAX ((uint64_t)1 << 53) /* largest integer a JSON double holds exactly */

struct st_file {
    char *path;
    const uint8_t *map;     /* whole file, read-only */
    size_t size;
    cJSON *root;            /* parsed header: owns tensor names and metadata */
    st_tensor *tensors;     /* in header order */
    int ntensors;
    const char **meta_keys; /* point into root */
    const char **meta_vals;
    int nmeta;
    char sha256[SHA256_HEX_SIZE];
};

static const struct { const char *name; size_t size; } dtypes[] = {
    [ST_F32] = { "F32", 4 }, [ST_F16] = { "F16", 2 }, [ST_BF16] = { "BF16", 2 },
    [ST_I32] = { "I32", 4 }, [ST_I64] = { "I64", 8 }, [ST_U8] = { "U8", 1 },
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

const char *st_dtype_name(st_dtype d)
{
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].name : "?";
}

size_t st_dtype_size(st_dtype d)
{
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].size : 0;
}

/* ---- half and bfloat16 conversion ------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

static float bits_f32(uint32_t x)
{
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    int exp = (int)((x >> 23) & 0xff);
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xff) /* inf stays inf; NaN stays a (quiet) NaN */
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
    int e = exp - 127 + 15; /* biased half exponent */
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        /* half subnormal (or zero): value = m * 2^-24 with m = mant24 >> (14 - e) */
        if (e < -10)
            return (uint16_t)sign; /* below half the smallest subnormal */
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++; /* may carry into the smallest normal: still correct */
        return (uint16_t)(sign | h);
    }
    uint32_t h = (uint32_t)e << 10 | mant >> 13, rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++; /* a carry out of the mantissa bumps the exponent, up to inf */
    return (uint16_t)(sign | h);
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)mant * 0x1p-24f; /* zero or subnormal, exact */
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | mant << 13);
    return bits_f32(sign | (exp + 112) << 23 | mant << 13);
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(x >> 16 | 0x40u); /* NaN: keep it a quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

float st_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* ---- reader ----------------------------------------------------------------------- */

/* A tensor name made safe for a one-line message: control bytes become '?',
 * long names are cut. */
static const char *show(const char *s, char buf[72])
{
    size_t i = 0;
    for (; s[i] && i < 64; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

typedef struct ctx {
    const char *path;
    char *err;
    size_t errlen;
} ctx;

static void __attribute__((format(printf, 2, 3))) fail(ctx *c, const char *fmt, ...)
{
    if (!c->err || c->errlen == 0)
        return;
    int n = snprintf(c->err, c->errlen, "weights file %s: ", c->path);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

enum { NUM_OK = 0, NUM_NAN, NUM_FRACTION, NUM_NEGATIVE, NUM_HUGE };

/* Reads an exact non-negative integer <= 2^53 from a JSON number. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return NUM_NAN;
    double d = j->valuedouble;
    if (d != d)
        return NUM_NAN;
    if (d < 0)
        return NUM_NEGATIVE;
    if (d > (double)JSON_INT_MAX)
        return NUM_HUGE;
    if (d != (double)(uint64_t)d)
        return NUM_FRACTION;
    *out = (uint64_t)d;
    return NUM_OK;
}

/* Names what is wrong with a number that json_uint refused; field is e.g. "shape[1]". */
static void fail_number(ctx *c, const char *tname, const char *field, const cJSON *j, int why)
{
    char b[72];
    switch (why) {
    case NUM_NAN:
        fail(c, "tensor \"%s\": %s is not a number", show(tname, b), field);
        break;
    case NUM_FRACTION:
        fail(c, "tensor \"%s\": %s = %.17g is not an integer", show(tname, b), field,
             j->valuedouble);
        break;
    case NUM_NEGATIVE:
        fail(c, "tensor \"%s\": %s = %.17g is negative", show(tname, b), field, j->valuedouble);
        break;
    default:
        fail(c, "tensor \"%s\": %s = %g is too large", show(tname, b), field, j->valuedouble);
        break;
    }
}

static void format_shape(const int64_t *shape, int ndim, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (n < len)
        snprintf(buf + n, len - n, "]");
}

/* Where one tensor's bytes lie in the data block; used only during st_open. */
typedef struct entry {
    const char *name;
    uint64_t begin, end;
    int idx; /* index in header order */
} entry;

/* Parses one header entry into t and e. Returns 0 or -1 with the message set. */
static int parse_tensor(ctx *c, const cJSON *item, st_tensor *t, entry *e)
{
    char b[72], field[32];
    const char *name = item->string;
    if (!name || !*name) {
        fail(c, "a tensor has an empty name");
        return -1;
    }
    if (!cJSON_IsObject(item)) {
        fail(c, "tensor \"%s\": entry must be an object with dtype, shape and data_offsets",
             show(name, b));
        return -1;
    }
    const cJSON *dtype = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *f = item->child; f; f = f->next) {
        const cJSON **slot = !strcmp(f->string, "dtype")          ? &dtype
                             : !strcmp(f->string, "shape")        ? &shape
                             : !strcmp(f->string, "data_offsets") ? &offs
                                                                  : NULL;
        char fb[72];
        if (!slot) {
            fail(c, "tensor \"%s\": unknown field \"%s\"", show(name, b), show(f->string, fb));
            return -1;
        }
        if (*slot) {
            fail(c, "tensor \"%s\": field \"%s\" appears twice", show(name, b), f->string);
            return -1;
        }
        *slot = f;
    }
    if (!dtype || !shape || !offs) {
        fail(c, "tensor \"%s\": missing field \"%s\"", show(name, b),
             !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
        return -1;
    }

    if (!cJSON_IsString(dtype)) {
        fail(c, "tensor \"%s\": dtype must be a string", show(name, b));
        return -1;
    }
    int d = 0;
    while (d < N_DTYPES && strcmp(dtype->valuestring, dtypes[d].name))
        d++;
    if (d == N_DTYPES) {
        char db[72];
        fail(c, "tensor \"%s\": unsupported dtype \"%s\" (supported: F32, F16, BF16, I32, I64, U8)",
             show(name, b), show(dtype->valuestring, db));
        return -1;
    }
    t->dtype = (st_dtype)d;

    if (!cJSON_IsArray(shape)) {
        fail(c, "tensor \"%s\": shape must be an array of non-negative integers", show(name, b));
        return -1;
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS) {
        fail(c, "tensor \"%s\": shape has %d dimensions, at most %d are supported", show(name, b),
             ndim, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = ndim;
    int i = 0, zero = 0;
    for (const cJSON *s = shape->child; s; s = s->next, i++) {
        uint64_t v;
        int why = json_uint(s, &v);
        if (why != NUM_OK) {
            snprintf(field, sizeof field, "shape[%d]", i);
            fail_number(c, name, field, s, why);
            return -1;
        }
        t->shape[i] = (int64_t)v;
        zero |= v == 0;
    }
    uint64_t nbytes = zero ? 0 : dtypes[d].size;
    for (i = 0; i < ndim && !zero; i++) {
        if (__builtin_mul_overflow(nbytes, (uint64_t)t->shape[i], &nbytes) ||
            nbytes > JSON_INT_MAX) {
            char sb[256];
            format_shape(t->shape, ndim, sb, sizeof sb);
            fail(c, "tensor \"%s\": shape %s is too large", show(name, b), sb);
            return -1;
        }
    }

    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
        fail(c, "tensor \"%s\": data_offsets must be an array [begin, end]", show(name, b));
        return -1;
    }
    uint64_t be[2];
    i = 0;
    for (const cJSON *o = offs->child; o; o = o->next, i++) {
        int why = json_uint(o, &be[i]);
        if (why != NUM_OK) {
            snprintf(field, sizeof field, "data_offsets[%d]", i);
            fail_number(c, name, field, o, why);
            return -1;
        }
    }
    if (be[0] > be[1]) {
        fail(c, "tensor \"%s\": data_offsets [%llu, %llu] begin after end", show(name, b),
             (unsigned long long)be[0], (unsigned long long)be[1]);
        return -1;
    }
    if (be[1] - be[0] != nbytes) {
        char sb[256];
        format_shape(t->shape, ndim, sb, sizeof sb);
        fail(c, "tensor \"%s\" data_offsets [%llu, %llu] hold %llu bytes but shape %s %s "
             "needs %llu", show(name, b), (unsigned long long)be[0], (unsigned long long)be[1],
             (unsigned long long)(be[1] - be[0]), sb, dtypes[d].name, (unsigned long long)nbytes);
        return -1;
    }
    t->name = name;
    t->nbytes = (size_t)nbytes;
    e->name = name;
    e->begin = be[0];
    e->end = be[1];
    return 0;
}

static int parse_metadata(ctx *c, st_file *f, const cJSON *meta)
{
    char b[72];
    if (!cJSON_IsObject(meta)) {
        fail(c, "__metadata__ must be an object of string values");
        return -1;
    }
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof *f->meta_keys);
    f->meta_vals = calloc((size_t)n + 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals) {
        fail(c, "out of memory reading __metadata__");
        return -1;
    }
    for (const cJSON *m = meta->child; m; m = m->next) {
        if (!cJSON_IsString(m)) {
            fail(c, "__metadata__ value of \"%s\" is not a string", show(m->string, b));
            return -1;
        }
        for (int i = 0; i < f->nmeta; i++) {
            if (!strcmp(f->meta_keys[i], m->string)) {
                fail(c, "__metadata__ key \"%s\" appears twice", show(m->string, b));
                return -1;
            }
        }
        f->meta_keys[f->nmeta] = m->string;
        f->meta_vals[f->nmeta++] = m->valuestring;
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static int by_offset(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Checks names are unique and the tensors tile the data block [0, size)
 * exactly. Sorts e. Returns 0 or -1 with the message set. */
static int check_layout(ctx *c, entry *e, int n, uint64_t size)
{
    char b1[72], b2[72];
    qsort(e, (size_t)n, sizeof *e, by_name);
    for (int i = 1; i < n; i++) {
        if (!strcmp(e[i].name, e[i - 1].name)) {
            fail(c, "tensor \"%s\" appears twice in the header", show(e[i].name, b1));
            return -1;
        }
    }
    qsort(e, (size_t)n, sizeof *e, by_offset);

    /* Walk in offset order: each tensor must begin where the previous ended. */
    uint64_t cursor = 0;
    int bad = -1;
    for (int k = 0; k < n && bad < 0; k++) {
        if (e[k].begin != cursor)
            bad = k;
        else
            cursor = e[k].end;
    }
    /* A clean tiling that ends past EOF is a cut-short file; otherwise a
     * tensor past the end is a bad offset, reported before gaps it causes. */
    if (bad < 0 && cursor > size) {
        fail(c, "file is truncated: tensors need %llu data bytes but only %llu follow the header",
             (unsigned long long)cursor, (unsigned long long)size);
        return -1;
    }
    for (int k = 0; k < n; k++) {
        if (e[k].end > size) {
            fail(c, "tensor \"%s\": data_offsets [%llu, %llu] run past the end of the data "
                 "block (%llu bytes)", show(e[k].name, b1), (unsigned long long)e[k].begin,
                 (unsigned long long)e[k].end, (unsigned long long)size);
            return -1;
        }
    }
    if (bad >= 0) {
        const entry *x = &e[bad];
        if (x->begin < cursor) { /* cursor is the end of e[bad - 1] */
            const entry *p = &e[bad - 1];
            fail(c, "tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] overlap",
                 show(p->name, b1), (unsigned long long)p->begin, (unsigned long long)p->end,
                 show(x->name, b2), (unsigned long long)x->begin, (unsigned long long)x->end);
        } else {
            fail(c, "data block has a gap: bytes [%llu, %llu) before tensor \"%s\" belong to no "
                 "tensor", (unsigned long long)cursor, (unsigned long long)x->begin,
                 show(x->name, b1));
        }
        return -1;
    }
    if (cursor < size) {
        fail(c, "%llu trailing bytes after the last tensor (tensors end at data byte %llu of %llu)",
             (unsigned long long)(size - cursor), (unsigned long long)cursor,
             (unsigned long long)size);
        return -1;
    }
    return 0;
}

static int is_json_space(uint8_t ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* Parses and checks the header; fills f's tensors and metadata. */
static int parse_header(ctx *c, st_file *f, const uint8_t *hdr, size_t hlen, uint64_t data_size)
{
    /* A private NUL-terminated copy: the parser never reads the mapping. */
    char *text = malloc(hlen + 1);
    if (!text) {
        fail(c, "out of memory for a %zu-byte header", hlen);
        return -1;
    }
    memcpy(text, hdr, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    f->root = cJSON_ParseWithLengthOpts(text, hlen, &end, 0);
    if (!f->root) {
        size_t at = end && end >= text && end <= text + hlen ? (size_t)(end - text) : 0;
        fail(c, "header is not valid JSON (parse error near byte %zu of %zu)", at, hlen);
        free(text);
        return -1;
    }
    for (size_t i = (size_t)(end - text); i < hlen; i++) {
        if (!is_json_space((uint8_t)text[i])) {
            fail(c, "header has unexpected bytes after the JSON object (at byte %zu of %zu)", i,
                 hlen);
            free(text);
            return -1;
        }
    }
    free(text);
    if (!cJSON_IsObject(f->root)) {
        fail(c, "header is not a JSON object");
        return -1;
    }

    int n = 0;
    const cJSON *meta = NULL;
    for (const cJSON *it = f->root->child; it; it = it->next) {
        if (it->string && !strcmp(it->string, "__metadata__")) {
            if (meta) {
                fail(c, "__metadata__ appears twice in the header");
                return -1;
            }
            meta = it;
        } else {
            n++;
        }
    }
    if (meta && parse_metadata(c, f, meta))
        return -1;

    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    entry *e = calloc((size_t)n + 1, sizeof *e);
    if (!f->tensors || !e) {
        fail(c, "out of memory for %d tensors", n);
        free(e);
        return -1;
    }
    int i = 0;
    for (const cJSON *it = f->root->child; it; it = it->next) {
        if (it == meta)
            continue;
        if (parse_tensor(c, it, &f->tensors[i], &e[i])) {
            free(e);
            return -1;
        }
        e[i].idx = i;
        i++;
    }
    f->ntensors = n;
    int rc = check_layout(c, e, n, data_size);
    for (i = 0; i < n && rc == 0; i++) /* only now are the offsets known to be inside */
        f->tensors[e[i].idx].data = hdr + hlen + e[i].begin;
    free(e);
    return rc;
}

st_file *st_open(const char *path, char *err, size_t errlen)
{
    ctx c = { path, err, errlen };
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        fail(&c, "out of memory");
        free(f);
        return NULL;
    }
    /* O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever (it is
     * refused below as not a regular file); regular files ignore the flag */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        fail(&c, "cannot open: %s", strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        fail(&c, "cannot stat: %s", strerror(errno));
        close(fd);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        fail(&c, "not a regular file (a directory, FIFO or device): give a .safetensors file");
        close(fd);
        goto fail;
    }
    if (sb.st_size < 8) {
        fail(&c, "file is %lld bytes, too short for a safetensors header (at least 8)",
             (long long)sb.st_size);
        close(fd);
        goto fail;
    }
    f->size = (size_t)sb.st_size;
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fail(&c, "cannot mmap %zu bytes: %s", f->size, strerror(errno));
        goto fail;
    }
    f->map = map;

    uint64_t hlen;
    memcpy(&hlen, f->map, 8);
    if (hlen > ST_MAX_HEADER) {
        fail(&c, "header length %llu exceeds the limit of %u bytes (not a safetensors file?)",
             (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > f->size - 8) {
        fail(&c, "header length %llu runs past the end of the file (%zu bytes)",
             (unsigned long long)hlen, f->size);
        goto fail;
    }
    if (parse_header(&c, f, f->map + 8, (size_t)hlen, f->size - 8 - hlen))
        goto fail;
    sha256_hex(f->map, f->size, f->sha256);
    return f;
fail:
    st_close(f);
    return NULL;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap((void *)f->map, f->size);
    cJSON_Delete(f->root);
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    free(f);
}

int st_count(const st_file *f) { return f->ntensors; }

const st_tensor *st_at(const st_file *f, int i)
{
    return i >= 0 && i < f->ntensors ? &f->tensors[i] : NULL;
}

const st_tensor *st_get(const st_file *f, const char *name)
{
    for (int i = 0; i < f->ntensors; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta_keys[i], key))
            return f->meta_vals[i];
    return NULL;
}

int st_meta_count(const st_file *f) { return f->nmeta; }

int st_meta_at(const st_file *f, int i, const char **key, const char **value)
{
    if (i < 0 || i >= f->nmeta)
        return DDM_ERANGE;
    *key = f->meta_keys[i];
    *value = f->meta_vals[i];
    return 0;
}

const char *st_sha256(const st_file *f) { return f->sha256; }
const char *st_path(const st_file *f) { return f->path; }

size_t st_numel(const st_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0)
            return 0;
        n *= (size_t)t->shape[i]; /* no overflow: numel * size was checked at open */
    }
    return n;
}

int st_read_f32(const st_tensor *t, float *dst, size_t n, char *err, size_t errlen)
{
    char b[72];
    size_t numel = st_numel(t);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        snprintf(err, errlen, "tensor \"%s\" has dtype %s, expected F32, F16 or BF16",
                 show(t->name, b), st_dtype_name(t->dtype));
        return DDM_EFORMAT;
    }
    if (n != numel) {
        snprintf(err, errlen, "tensor \"%s\" has %zu elements, expected %zu", show(t->name, b),
                 numel, n);
        return DDM_EMISMATCH;
    }
    const uint8_t *p = t->data; /* may be unaligned: read through memcpy */
    if (t->dtype == ST_F32) {
        if (n)
            memcpy(dst, p, n * 4);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = t->dtype == ST_F16 ? st_f16_to_f32(h) : st_bf16_to_f32(h);
    }
    return 0;
}

/* ---- writer ----------------------------------------------------------------------- */

typedef struct wtensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint8_t *data; /* owned, little-endian bytes as stored in the file */
    size_t nbytes;
} wtensor;

struct st_writer {
    wtensor *t;
    int n, cap;
    char **keys, **vals; /* owned */
    int nmeta, metacap;
};

st_writer *st_writer_new(void) { return calloc(1, sizeof(st_writer)); }

void st_writer_free(st_writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (int i = 0; i < w->nmeta; i++) {
        free(w->keys[i]);
        free(w->vals[i]);
    }
    free(w->t);
    free(w->keys);
    free(w->vals);
    free(w);
}

/* Validates name and shape, and returns a new slot with name set, or NULL
 * with *rc set. The slot's data is filled by the caller. */
static wtensor *writer_slot(st_writer *w, const char *name, st_dtype dtype, int ndim,
                            const int64_t *shape, size_t *nbytes, int *rc)
{
    *rc = DDM_EINVAL;
    if (!w || !name || !*name || !strcmp(name, "__metadata__") || ndim < 0 ||
        ndim > ST_MAX_DIMS || (ndim > 0 && !shape) || st_dtype_size(dtype) == 0)
        return NULL;
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return NULL;
    uint64_t total = st_dtype_size(dtype);
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return NULL;
        zero |= shape[i] == 0;
    }
    for (int i = 0; i < ndim && !zero; i++)
        if (__builtin_mul_overflow(total, (uint64_t)shape[i], &total) || total > JSON_INT_MAX)
            return NULL;
    *nbytes = zero ? 0 : (size_t)total;
    *rc = DDM_ENOMEM;
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t)
            return NULL;
        w->t = t;
        w->cap = cap;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)) || !(t->data = malloc(*nbytes ? *nbytes : 1))) {
        free(t->name);
        return NULL;
    }
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->nbytes = *nbytes;
    *rc = 0;
    return t;
}

int st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim,
                      const int64_t *shape, const float *data)
{
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return DDM_EINVAL;
    size_t nbytes = 0;
    int rc;
    wtensor *t = writer_slot(w, name, dtype, ndim, shape, &nbytes, &rc);
    if (!t)
        return rc;
    size_t n = nbytes / st_dtype_size(dtype);
    if (n && !data) {
        free(t->name);
        free(t->data);
        return DDM_EINVAL;
    }
    if (dtype == ST_F32) {
        if (n)
            memcpy(t->data, data, nbytes);
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h = dtype == ST_F16 ? st_f32_to_f16(data[i]) : st_f32_to_bf16(data[i]);
            memcpy(t->data + 2 * i, &h, 2);
        }
    }
    w->n++;
    return 0;
}

int st_writer_add_raw(st_writer *w, const char *name, st_dtype dtype, int ndim,
                      const int64_t *shape, const void *data, size_t nbytes)
{
    size_t need = 0;
    int rc;
    wtensor *t = writer_slot(w, name, dtype, ndim, shape, &need, &rc);
    if (!t)
        return rc;
    if (need != nbytes || (nbytes && !data)) {
        free(t->name);
        free(t->data);
        return DDM_EINVAL;
    }
    if (nbytes)
        memcpy(t->data, data, nbytes);
    w->n++;
    return 0;
}

int st_writer_meta(st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value)
        return DDM_EINVAL;
    char *v = strdup(value);
    if (!v)
        return DDM_ENOMEM;
    for (int i = 0; i < w->nmeta; i++) {
        if (!strcmp(w->keys[i], key)) {
            free(w->vals[i]);
            w->vals[i] = v;
            return 0;
        }
    }
    if (w->nmeta == w->metacap) {
        int cap = w->metacap ? 2 * w->metacap : 16;
        char **k = realloc(w->keys, (size_t)cap * sizeof *k);
        if (k)
            w->keys = k;
        char **vv = k ? realloc(w->vals, (size_t)cap * sizeof *vv) : NULL;
        if (!vv) {
            free(v);
            return DDM_ENOMEM;
        }
        w->vals = vv;
        w->metacap = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return DDM_ENOMEM;
    }
    w->keys[w->nmeta] = k;
    w->vals[w->nmeta++] = v;
    return 0;
}

/* The header JSON (unpadded), malloc'd; NULL when out of memory. */
static char *writer_header(const st_writer *w)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    if (w->nmeta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; meta && i < w->nmeta; i++)
            if (!cJSON_AddStringToObject(meta, w->keys[i], w->vals[i]))
                meta = NULL;
        if (!meta)
            goto fail;
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
        cJSON *offs = NULL;
        if (!e || !cJSON_AddStringToObject(e, "dtype", st_dtype_name(t->dtype)) || !shape)
            goto fail;
        for (int d = 0; d < t->ndim; d++) {
            cJSON *v = cJSON_CreateNumber((double)t->shape[d]);
            if (!v || !cJSON_AddItemToArray(shape, v)) {
                cJSON_Delete(v);
                goto fail;
            }
        }
        if (!(offs = cJSON_AddArrayToObject(e, "data_offsets")))
            goto fail;
        double be[2] = { (double)off, (double)(off + t->nbytes) };
        for (int k = 0; k < 2; k++) {
            cJSON *v = cJSON_CreateNumber(be[k]);
            if (!v || !cJSON_AddItemToArray(offs, v)) {
                cJSON_Delete(v);
                goto fail;
            }
        }
        off += t->nbytes;
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
fail:
    cJSON_Delete(root);
    return NULL;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t k = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

/* fsyncs the directory holding path so the rename itself is durable. */
static void sync_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    const char *d = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int st_writer_save(st_writer *w, const char *path, char *err, size_t errlen)
{
    if (!w || !path) {
        snprintf(err, errlen, "st_writer_save: no writer or path");
        return DDM_EINVAL;
    }
    char *json = writer_header(w);
    if (!json) {
        snprintf(err, errlen, "cannot write weights file %s: out of memory building the header",
                 path);
        return DDM_ENOMEM;
    }
    size_t jlen = strlen(json), hlen = (jlen + 7) & ~(size_t)7;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    uint8_t *head = malloc(8 + hlen);
    if (!tmp || !head) {
        free(json);
        free(tmp);
        free(head);
        snprintf(err, errlen, "cannot write weights file %s: out of memory", path);
        return DDM_ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    uint64_t n64 = hlen;
    memcpy(head, &n64, 8);
    memcpy(head + 8, json, jlen);
    memset(head + 8 + jlen, ' ', hlen - jlen); /* pad to 8 so the data block is aligned */
    free(json);

    int rc = 0;
    const char *what = "create";
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    what = "write";
    rc = write_all(fd, head, 8 + hlen);
    for (int i = 0; i < w->n && rc == 0; i++)
        rc = write_all(fd, w->t[i].data, w->t[i].nbytes);
    if (rc == 0) {
        what = "fsync";
        if (fsync(fd) < 0)
            rc = -errno;
    }
    if (close(fd) < 0 && rc == 0) {
        what = "close";
        rc = -errno;
    }
    if (rc == 0) {
        what = "rename";
        if (rename(tmp, path) < 0)
            rc = -errno;
    }
    if (rc == 0)
        sync_dir(path);
    else
        unlink(tmp);
out:
    if (rc != 0)
        snprintf(err, errlen, "cannot write weights file %s: %s %s failed: %s", path, what, tmp,
                 strerror(-rc));
    free(tmp);
    free(head);
    return rc;
}
