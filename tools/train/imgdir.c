/* imgdir.c -- a folder of PNGs as a training set (see imgdir.h).
 *
 * Two passes: the first lists the files and reads only their PNG headers
 * (size and colour type: enough to choose the output size and channels
 * before decoding anything), the second decodes, crops and resamples each
 * image straight into the output array and hashes its bytes. */
#include "tools/train/imgdir.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "common/png.h"
#include "common/sha256.h"

#define MAX_DEPTH 32
#define PROGRESS_SECS 5.0

/* ---- listing ----------------------------------------------------------------------- */

typedef struct list {
    char **p;
    int n, cap;
} list;

static int list_add(list *l, const char *s)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        char **np = realloc(l->p, (size_t)cap * sizeof *np);
        if (!np)
            return DDM_ENOMEM;
        l->p = np;
        l->cap = cap;
    }
    if (!(l->p[l->n] = strdup(s)))
        return DDM_ENOMEM;
    l->n++;
    return 0;
}

static void list_free(list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->p[i]);
    free(l->p);
    memset(l, 0, sizeof *l);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_png_name(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

/* Appends the PNGs under root/rel (rel "" = root) to l, relative to root. */
static int walk(const char *root, const char *rel, int depth, list *l, char *err, size_t errlen)
{
    char dir[4096];
    if ((size_t)snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel) >= sizeof dir)
        return ddm_errf(err, errlen, DDM_EINVAL, "path too long under %s", root);
    if (depth > MAX_DEPTH)
        return ddm_errf(err, errlen, DDM_EINVAL, "%s: folders nested deeper than %d (a symlink "
                        "loop?)", dir, MAX_DEPTH);
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        return ddm_errf(err, errlen, e == ENOENT ? DDM_ENOTFOUND : -e, "%s: %s", dir,
                        e == ENOENT ? "no such folder" : strerror(e));
    }
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char child[4096], full[4096];
        if ((size_t)snprintf(child, sizeof child, "%s%s%s", rel, *rel ? "/" : "", de->d_name) >=
                sizeof child ||
            (size_t)snprintf(full, sizeof full, "%s/%s", root, child) >= sizeof full) {
            rc = ddm_errf(err, errlen, DDM_EINVAL, "path too long: %s/%s", dir, de->d_name);
            break;
        }
        struct stat st;
        if (stat(full, &st) != 0)
            continue; /* a dangling link: nothing to read */
        if (S_ISDIR(st.st_mode))
            rc = walk(root, child, depth + 1, l, err, errlen);
        else if (S_ISREG(st.st_mode) && is_png_name(de->d_name)) {
            if (l->n >= IMGDIR_MAX_IMAGES)
                rc = ddm_errf(err, errlen, DDM_ERANGE, "%s: more than %d PNGs", root,
                              IMGDIR_MAX_IMAGES);
            else if (list_add(l, child))
                rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory listing %s", root);
        }
    }
    closedir(d);
    return rc;
}

/* ---- headers ---------------------------------------------------------------------- */

typedef struct header {
    int ok;           /* a PNG signature and IHDR were found */
    int w, h;
    int colour;       /* stored as colour (RGB, RGBA, palette) */
} header;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static header read_header(const char *path)
{
    header h = { 0 };
    uint8_t b[33];
    FILE *f = fopen(path, "rb");
    if (!f)
        return h;
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    static const uint8_t sig[8] = { 137, 80, 78, 71, 13, 10, 26, 10 };
    if (n < sizeof b || memcmp(b, sig, 8) || memcmp(b + 12, "IHDR", 4))
        return h;
    uint32_t w = be32(b + 16), ht = be32(b + 20);
    if (w == 0 || ht == 0 || w > PNGIO_MAX_SIDE || ht > PNGIO_MAX_SIDE)
        return h;
    h.ok = 1;
    h.w = (int)w;
    h.h = (int)ht;
    h.colour = b[25] == 2 || b[25] == 3 || b[25] == 6;
    return h;
}

/* ---- resampling --------------------------------------------------------------------- */

/* Area weights along one axis: output i covers [i*s/n, (i+1)*s/n) of the s
 * source pixels; source pixel first[i] + k gets weight w[off[i] + k], its
 * overlap with that interval over the interval's length. Spans overlap by
 * at most one pixel, so there are at most s + n weights. */
typedef struct axis {
    int *first, *count, *off;   /* [n] */
    float *w;                   /* [s + n] */
} axis;

static int axis_init(axis *a, int s, int n)
{
    a->first = malloc((size_t)n * sizeof *a->first);
    a->count = malloc((size_t)n * sizeof *a->count);
    a->off = malloc((size_t)n * sizeof *a->off);
    a->w = malloc((size_t)(s + n) * sizeof *a->w);
    if (!a->first || !a->count || !a->off || !a->w)
        return DDM_ENOMEM;
    int at = 0;
    for (int i = 0; i < n; i++) {
        double lo = (double)i * s / n, hi = (double)(i + 1) * s / n;
        int p0 = (int)floor(lo), p1 = (int)ceil(hi);
        if (p1 > s)
            p1 = s;
        a->first[i] = p0;
        a->count[i] = p1 - p0;
        a->off[i] = at;
        for (int p = p0; p < p1; p++) {
            double l = p > lo ? p : lo, r = p + 1 < hi ? p + 1 : hi;
            a->w[at++] = (float)((r - l) / (hi - lo));
        }
    }
    return 0;
}

static void axis_free(axis *a)
{
    free(a->first);
    free(a->count);
    free(a->off);
    free(a->w);
}

void imgdir_resample(const uint8_t *src, int sw, int c, int x0, int y0, int s, int n,
                     uint8_t *dst)
{
    axis ax = { 0 };
    float *rows = malloc((size_t)s * n * c * sizeof *rows); /* [s][n][c]: x done */
    if (!rows || axis_init(&ax, s, n)) {
        free(rows);
        axis_free(&ax);
        memset(dst, 0, (size_t)n * n * c);
        return;
    }
    for (int y = 0; y < s; y++) {
        const uint8_t *line = src + ((size_t)(y0 + y) * sw + x0) * c;
        for (int ox = 0; ox < n; ox++) {
            const float *w = ax.w + ax.off[ox];
            const uint8_t *px = line + (size_t)ax.first[ox] * c;
            for (int ch = 0; ch < c; ch++) {
                float acc = 0;
                for (int k = 0; k < ax.count[ox]; k++)
                    acc += w[k] * px[(size_t)k * c + ch];
                rows[((size_t)y * n + ox) * c + ch] = acc;
            }
        }
    }
    size_t stride = (size_t)n * c;
    for (int oy = 0; oy < n; oy++) {
        const float *w = ax.w + ax.off[oy];
        const float *r0 = rows + (size_t)ax.first[oy] * stride;
        for (size_t x = 0; x < stride; x++) {
            float acc = 0;
            for (int k = 0; k < ax.count[oy]; k++)
                acc += w[k] * r0[(size_t)k * stride + x];
            long v = lrintf(acc);
            dst[(size_t)oy * stride + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    free(rows);
    axis_free(&ax);
}

/* ---- loading ---------------------------------------------------------------------- */

void imgdir_free(imgdir_set *s)
{
    if (!s)
        return;
    free(s->pix);
    free(s->labels);
    free(s->test);
    free(s->class_names); /* one block with the strings */
    for (int i = 0; s->paths && i < s->n; i++)
        free(s->paths[i]);
    free(s->paths);
    free(s->sha256);
    free(s->skipped);
    free(s);
}

/* The class folder of a relative path ("" at the top level) into buf. */
static void class_of(const char *rel, char *buf, size_t len)
{
    const char *slash = strchr(rel, '/');
    size_t n = slash ? (size_t)(slash - rel) : 0;
    if (n >= len)
        n = len - 1;
    memcpy(buf, rel, n);
    buf[n] = '\0';
}

/* The folder's own name (its last path component) into buf. */
static void base_name(const char *root, char *buf, size_t len)
{
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/')
        n--;
    size_t a = n;
    while (a > 0 && root[a - 1] != '/')
        a--;
    size_t m = n - a < len - 1 ? n - a : len - 1;
    memcpy(buf, root + a, m);
    buf[m] = '\0';
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Appends "path: why\n" to the skipped list. */
static void note_skip(imgdir_set *s, size_t *cap, const char *rel, const char *why)
{
    size_t have = s->skipped ? strlen(s->skipped) : 0, add = strlen(rel) + strlen(why) + 4;
    if (have + add + 1 > *cap) {
        size_t nc = (have + add + 1) * 2;
        char *np = realloc(s->skipped, nc);
        if (!np)
            return;
        if (!s->skipped)
            np[0] = '\0';
        s->skipped = np;
        *cap = nc;
    }
    snprintf(s->skipped + have, *cap - have, "%s: %s\n", rel, why);
    s->n_skipped++;
}

/* Picks size and channels from the headers (pass 1). */
static int choose_shape(const char *root, const list *files, const header *hd,
                        const imgdir_opts *o, int *size, int *channels, char *err, size_t errlen)
{
    int first = -1, colour = 0;
    for (int i = 0; i < files->n; i++) {
        if (!hd[i].ok)
            continue;
        colour |= hd[i].colour;
        if (first < 0) {
            first = i;
        } else if (!o->size && (hd[i].w != hd[first].w || hd[i].h != hd[first].h)) {
            return ddm_errf(err, errlen, DDM_EMISMATCH, "%s: images differ in size (%s is %dx%d, "
                            "%s is %dx%d): give --size N to crop and resample them all to NxN",
                            root, files->p[first], hd[first].w, hd[first].h, files->p[i],
                            hd[i].w, hd[i].h);
        }
    }
    if (first < 0)
        return ddm_errf(err, errlen, DDM_EFORMAT, "%s: none of its %d .png files is a readable "
                        "PNG (first: %s)", root, files->n, files->p[0]);
    *size = o->size ? o->size : (hd[first].w < hd[first].h ? hd[first].w : hd[first].h);
    *channels = o->channels ? o->channels : colour ? 3 : 1;
    long dim = (long)*size * *size * *channels;
    if (dim > IMGDIR_MAX_DIM) {
        int fit = (int)floor(sqrt((double)IMGDIR_MAX_DIM / *channels));
        return ddm_errf(err, errlen, DDM_ERANGE, "%s: %dx%d images with %d channel%s are %ld "
                        "values, more than the %d the model supports: use --size %d or smaller%s",
                        root, *size, *size, *channels, *channels > 1 ? "s" : "", dim,
                        IMGDIR_MAX_DIM, fit, *channels == 3 ? " (or --channels 1)" : "");
    }
    return 0;
}

/* Classes from the class folders of the files; labels[i] per file. */
static int assign_classes(const char *root, const list *files, int *labels, list *classes,
                          char *err, size_t errlen)
{
    char cls[4096];
    int top = -1, sub = -1;
    for (int i = 0; i < files->n; i++) {
        class_of(files->p[i], cls, sizeof cls);
        if (cls[0])
            sub = sub < 0 ? i : sub;
        else
            top = top < 0 ? i : top;
    }
    if (top >= 0 && sub >= 0)
        return ddm_errf(err, errlen, DDM_EINVAL, "%s: %s is at the top level but %s is in a class "
                        "folder: put every image in a class folder, or none", root,
                        files->p[top], files->p[sub]);
    for (int i = 0; i < files->n; i++) {
        class_of(files->p[i], cls, sizeof cls);
        if (!cls[0])
            base_name(root, cls, 64);
        if (strlen(cls) >= 64)
            return ddm_errf(err, errlen, DDM_EINVAL, "%s: class folder name \"%.40s...\" is longer "
                            "than 63 bytes", root, cls);
        int k = classes->n - 1;
        if (k < 0 || strcmp(classes->p[k], cls)) { /* files are sorted: classes come in order */
            if (classes->n >= IMGDIR_MAX_CLASSES)
                return ddm_errf(err, errlen, DDM_ERANGE, "%s: more than %d class folders; the "
                                "model supports at most %d classes", root, IMGDIR_MAX_CLASSES,
                                IMGDIR_MAX_CLASSES);
            if (list_add(classes, cls))
                return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
            k = classes->n - 1;
        }
        labels[i] = k;
    }
    return 0;
}

/* Decodes file i into s (pass 2); returns 0, or an error with why (skippable). */
static int load_one(const char *root, const char *rel, const imgdir_opts *o, imgdir_set *s,
                    char *why, size_t whylen)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    uint8_t *buf;
    size_t len;
    int rc = fs_read_file(path, PNGIO_MAX_FILE_BYTES, &buf, &len, why, whylen);
    if (rc)
        return rc;
    pngio_opts po = { .channels = s->channels, .max_pixels = IMGDIR_MAX_PIXELS };
    memcpy(po.background, o->background, 3);
    pngio_image img;
    rc = pngio_decode(buf, len, &po, &img, why, whylen);
    if (!rc) {
        sha256_hex(buf, len, s->sha256[s->n]);
        int side = img.width < img.height ? img.width : img.height;
        uint8_t *dst = s->pix + (size_t)s->n * s->dim;
        if (side == s->size && img.width == img.height)
            memcpy(dst, img.pix, (size_t)s->dim);
        else
            imgdir_resample(img.pix, img.width, s->channels, (img.width - side) / 2,
                            (img.height - side) / 2, side, s->size, dst);
        pngio_image_free(&img);
    }
    free(buf);
    return rc;
}

int imgdir_load(const char *root, const imgdir_opts *o, imgdir_set **out, char *err,
                size_t errlen)
{
    *out = NULL;
    list files = { 0 }, classes = { 0 };
    header *hd = NULL;
    int *labels = NULL;
    imgdir_set *s = calloc(1, sizeof *s);
    size_t skip_cap = 0;
    if (!s)
        return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
    if (o->size < 0 || o->size > PNGIO_MAX_SIDE ||
        (o->channels != 0 && o->channels != 1 && o->channels != 3)) {
        free(s);
        return ddm_errf(err, errlen, DDM_EINVAL, "image folder: --size must be 1..%d and "
                        "--channels 1 or 3", PNGIO_MAX_SIDE);
    }
    int rc = walk(root, "", 0, &files, err, errlen);
    if (!rc && files.n == 0)
        rc = ddm_errf(err, errlen, DDM_ENOTFOUND, "%s: no .png files in this folder or below it",
                      root);
    if (rc)
        goto out;
    qsort(files.p, (size_t)files.n, sizeof *files.p, by_name);
    hd = calloc((size_t)files.n, sizeof *hd);
    labels = calloc((size_t)files.n, sizeof *labels);
    if (!hd || !labels) {
        rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory for %d files", files.n);
        goto out;
    }
    char path[8192];
    for (int i = 0; i < files.n; i++) {
        snprintf(path, sizeof path, "%s/%s", root, files.p[i]);
        hd[i] = read_header(path);
    }
    if ((rc = choose_shape(root, &files, hd, o, &s->size, &s->channels, err, errlen)) ||
        (rc = assign_classes(root, &files, labels, &classes, err, errlen)))
        goto out;
    s->dim = s->size * s->size * s->channels;
    s->pix = malloc((size_t)files.n * s->dim);
    s->labels = malloc((size_t)files.n * sizeof *s->labels);
    s->test = calloc((size_t)files.n, 1);
    s->paths = calloc((size_t)files.n, sizeof *s->paths);
    s->sha256 = malloc((size_t)files.n * sizeof *s->sha256);
    if (!s->pix || !s->labels || !s->test || !s->paths || !s->sha256) {
        rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory for %d images of %dx%dx%d",
                      files.n, s->size, s->size, s->channels);
        goto out;
    }
    double t0 = now_s(), last = t0;
    for (int i = 0; i < files.n; i++) {
        char why[512] = "not a PNG (bad signature or header)";
        int r = hd[i].ok ? load_one(root, files.p[i], o, s, why, sizeof why) : DDM_EFORMAT;
        if (r == DDM_ENOMEM) {
            rc = ddm_errf(err, errlen, r, "%s/%s: out of memory", root, files.p[i]);
            goto out;
        }
        if (r && o->strict) {
            rc = ddm_errf(err, errlen, r, "%s/%s: %s (--strict: fix or remove it, or drop "
                          "--strict to skip unreadable files)", root, files.p[i], why);
            goto out;
        }
        if (r) {
            const char *msg = why;
            size_t rl = strlen(root);
            if (!strncmp(msg, root, rl) && msg[rl] == '/') /* "root/rel: why" -> "why" */
                msg = strstr(msg + rl, ": ") ? strstr(msg + rl, ": ") + 2 : msg;
            note_skip(s, &skip_cap, files.p[i], msg);
            continue;
        }
        s->labels[s->n] = labels[i];
        s->paths[s->n] = files.p[i];
        files.p[i] = NULL;
        s->n++;
        double t = now_s();
        if (!o->quiet && t - last > PROGRESS_SECS && i + 1 < files.n) {
            double eta = (t - t0) / (i + 1) * (files.n - i - 1);
            fprintf(stderr, "images: %d / %d read (%.0f%%), ETA %.0f s\n", i + 1, files.n,
                    100.0 * (i + 1) / files.n, eta);
            last = t;
        }
    }
    if (s->n == 0) {
        rc = ddm_errf(err, errlen, DDM_EFORMAT, "%s: none of its %d PNGs could be read (first: %s)",
                      root, files.n, s->skipped ? s->skipped : "?");
        goto out;
    }
    /* drop classes left empty by skipped files, keeping the order */
    int *remap = calloc((size_t)classes.n, sizeof *remap), *count = calloc((size_t)classes.n, sizeof *count);
    if (!remap || !count) {
        free(remap);
        free(count);
        rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < s->n; i++)
        count[s->labels[i]]++;
    size_t bytes = 0;
    for (int k = 0; k < classes.n; k++) {
        remap[k] = count[k] ? s->n_classes++ : -1;
        bytes += count[k] ? strlen(classes.p[k]) + 1 + sizeof(char *) : 0;
    }
    s->class_names = malloc(bytes ? bytes : 1);
    if (s->class_names) {
        char *at = (char *)(s->class_names + s->n_classes);
        for (int k = 0; k < classes.n; k++) {
            if (remap[k] < 0)
                continue;
            s->class_names[remap[k]] = at;
            at += sprintf(at, "%s", classes.p[k]) + 1;
        }
        int *seen = count; /* reuse: images seen so far per class */
        memset(seen, 0, (size_t)classes.n * sizeof *seen);
        for (int i = 0; i < s->n; i++) {
            s->test[i] = seen[s->labels[i]]++ % 10 == 9;
            s->labels[i] = remap[s->labels[i]];
        }
    } else {
        rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
    }
    free(remap);
    free(count);
    if (rc)
        goto out;
    if (s->n_skipped && !o->quiet) {
        char first[1024] = "";
        const char *p = s->skipped;
        size_t at = 0;
        for (int k = 0; k < IMGDIR_SHOW_SKIPPED && p && *p; k++) {
            const char *nl = strchr(p, '\n');
            size_t n = nl ? (size_t)(nl - p) : strlen(p);
            at += (size_t)snprintf(first + at, sizeof first - at, "%s%.*s", k ? "; " : "",
                                   (int)(n > 200 ? 200 : n), p);
            if (at >= sizeof first)
                break;
            p = nl ? nl + 1 : NULL;
        }
        fprintf(stderr, "warning: %s: skipped %d unreadable PNG%s of %d (--strict makes this an "
                "error): %s%s\n", root, s->n_skipped, s->n_skipped > 1 ? "s" : "", files.n, first,
                s->n_skipped > IMGDIR_SHOW_SKIPPED ? "; ..." : "");
    }
    *out = s;
    s = NULL;
out:
    list_free(&files);
    list_free(&classes);
    free(hd);
    free(labels);
    imgdir_free(s);
    return rc;
}

/* ---- manifest and options ---------------------------------------------------------- */

int imgdir_write_manifest(const imgdir_set *s, const char *root, const imgdir_opts *o,
                          const char *path, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return ddm_errf(err, errlen, -errno, "cannot write %s: %s", tmp, strerror(errno));
    int n_test = 0;
    for (int i = 0; i < s->n; i++)
        n_test += s->test[i];
    fprintf(f, "# ddm image-folder manifest: the images a training run used.\n");
    fprintf(f, "# folder: %s\n", root);
    fprintf(f, "# size: %dx%d, channels: %d, background: %02x%02x%02x, resampling: centre crop "
            "to square, area average\n", s->size, s->size, s->channels, o->background[0],
            o->background[1], o->background[2]);
    fprintf(f, "# images: %d (%d train, %d test), classes: %d, skipped: %d\n", s->n, s->n - n_test,
            n_test, s->n_classes, s->n_skipped);
    for (const char *p = s->skipped; p && *p;) {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        fprintf(f, "# skipped: %.*s\n", n, p);
        p = nl ? nl + 1 : p + n;
    }
    fprintf(f, "# path\tsha256\tclass\tsplit\n");
    for (int i = 0; i < s->n; i++)
        fprintf(f, "%s\t%s\t%s\t%s\n", s->paths[i], s->sha256[i], s->class_names[s->labels[i]],
                s->test[i] ? "test" : "train");
    int bad = ferror(f);
    if (fclose(f) || bad) {
        unlink(tmp);
        return ddm_errf(err, errlen, DDM_EIO, "writing %s failed (disk full?)", tmp);
    }
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return ddm_errf(err, errlen, -e, "cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
    return 0;
}

int imgdir_parse_colour(const char *s, uint8_t rgb[3])
{
    if (!strcmp(s, "black") || !strcmp(s, "white")) {
        memset(rgb, s[0] == 'w' ? 255 : 0, 3);
        return 0;
    }
    if (*s == '#')
        s++;
    if (strlen(s) != 6 || strspn(s, "0123456789abcdefABCDEF") != 6)
        return DDM_EINVAL;
    for (int k = 0; k < 3; k++) {
        char h[3] = { s[2 * k], s[2 * k + 1], 0 };
        rgb[k] = (uint8_t)strtol(h, NULL, 16);
    }
    return 0;
}
