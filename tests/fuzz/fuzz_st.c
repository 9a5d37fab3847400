/* fuzz_st.c -- libFuzzer target: a weights file as ddm-expert and ddm-router
 * open it: the safetensors reader (common/st.c st_open and its accessors,
 * st_read_f32), the image shape metadata (common/model.c model_shape_read)
 * and the whole model loader (model_open).
 *
 * Input: the file's bytes. st_open maps a path, so the bytes go to a memfd
 * (a regular file in memory) opened as /proc/self/fd/N: no disk, no
 * temporary file left behind. Checks beyond "no crash, leak or UB": a refused
 * file gets a message naming it; an accepted one keeps st.h's promises
 * (every tensor's bytes inside the file, nbytes = numel x element size,
 * st_get finds each tensor by its name). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/log.h"
#include "common/model.h"
#include "common/st.h"

#define READ_MAX_ELEMS (1u << 20) /* st_read_f32 only on tensors up to this */

static int memfd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    memfd = memfd_create("fuzz_st", MFD_CLOEXEC);
    if (memfd < 0) {
        perror("fuzz_st: memfd_create");
        abort();
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_st: broken promise: %s\n", what);
        abort();
    }
}

static void put_file(const uint8_t *data, size_t size)
{
    if (ftruncate(memfd, 0) < 0)
        abort();
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(memfd, data + done, size - done, (off_t)done);
        if (w <= 0)
            abort();
        done += (size_t)w;
    }
}

static void use_file(const st_file *f)
{
    int n = st_count(f);
    check(st_at(f, -1) == NULL && st_at(f, n) == NULL, "st_at is NULL outside 0..count-1");
    float *buf = NULL;
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        check(t && t->name, "every tensor has a name");
        check(st_get(f, t->name) == t, "st_get finds a tensor by its name");
        size_t numel = st_numel(t);
        check(t->nbytes == numel * st_dtype_size(t->dtype), "nbytes = numel x element size");
        if (t->nbytes) { /* both ends readable: a pointer outside the mapping faults */
            const uint8_t *first = t->data, *last = first + t->nbytes - 1;
            volatile uint8_t touch = (uint8_t)(*first ^ *last);
            (void)touch;
        }
        if ((t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) &&
            numel <= READ_MAX_ELEMS) {
            float *b = realloc(buf, (numel ? numel : 1) * sizeof *b);
            if (!b)
                break;
            buf = b;
            char err[256];
            check(st_read_f32(t, buf, numel, err, sizeof err) == 0,
                  "st_read_f32 reads a float tensor of the right count");
            if (numel > 0)
                check(st_read_f32(t, buf, numel - 1, err, sizeof err) != 0,
                      "st_read_f32 refuses a wrong count");
        }
    }
    free(buf);
    for (int i = 0; i < st_meta_count(f); i++) {
        const char *k, *v;
        check(st_meta_at(f, i, &k, &v) == 0 && k && v, "metadata pairs");
        check(st_meta(f, k) != NULL, "st_meta finds a key");
    }
    check(strlen(st_sha256(f)) == 64, "a sha256");
    /* the image shape, as a denoiser of the digits, emoji or this file's size reads it */
    const int dims[3] = { 784, 32 * 32 * 3, 12 };
    for (int i = 0; i < 3; i++) {
        model_shape s;
        char err[256];
        if (model_shape_read(f, dims[i], 10, &s, err, sizeof err) == 0) {
            check(s.height * s.width * s.channels == dims[i], "height x width x channels = dim");
            check(s.n_class_names == 0 || s.n_class_names == 10, "no names or one per class");
            model_shape_free(&s);
        } else {
            check(err[0] != '\0', "a refused shape says why");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    put_file(data, size);
    char err[512] = "";
    st_file *f = st_open(path, err, sizeof err);
    if (!f) {
        check(strstr(err, path) != NULL, "a refused file is named in the message");
        return 0;
    }
    use_file(f);
    st_close(f);
    model *m = model_open(path, err, sizeof err);
    if (m)
        model_close(m);
    else
        check(strstr(err, path) != NULL, "a refused model file is named in the message");
    return 0;
}
