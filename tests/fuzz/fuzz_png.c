/* fuzz_png.c -- libFuzzer target: the PNG reader (common/png.c pngio_decode)
 * with its pixel limit, as ddm-train's image folders and the tools read PNGs.
 *
 * Input: the file's bytes. Each is decoded as RGB on white with a limit of
 * 2^20 pixels (the limit keeps a run fast; the default is 2^24). Checks
 * beyond "no crash, leak or UB": a refused file gets a message and a zeroed
 * image; an accepted one is within the limit; decoding it again as grey with
 * the limit set to exactly its pixel count succeeds with the same size,
 * alpha and colour flags, and with one pixel less it is refused as
 * DDM_ERANGE before anything is decoded. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/png.h"

#define FUZZ_MAX_PIXELS (1L << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_png: broken promise: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pngio_opts o = { .channels = 3, .background = { 255, 255, 255 },
                     .max_pixels = FUZZ_MAX_PIXELS };
    pngio_image img;
    char err[256] = "";
    int rc = pngio_decode(data, size, &o, &img, err, sizeof err);
    if (rc) {
        check(rc == DDM_EFORMAT || rc == DDM_ERANGE || rc == DDM_ENOMEM,
              "a refused PNG is DDM_EFORMAT, DDM_ERANGE or DDM_ENOMEM");
        check(err[0] != '\0', "a refused PNG gets a message");
        check(img.pix == NULL && img.width == 0, "a refused PNG leaves a zeroed image");
        return 0;
    }
    long pixels = (long)img.width * img.height;
    check(img.width >= 1 && img.height >= 1 && img.width <= PNGIO_MAX_SIDE &&
          img.height <= PNGIO_MAX_SIDE && pixels <= FUZZ_MAX_PIXELS, "within the limits");
    check(img.channels == 3 && img.pix != NULL, "RGB pixels");

    pngio_opts g = { .channels = 1, .background = { 255, 255, 255 }, .max_pixels = pixels };
    pngio_image grey;
    check(pngio_decode(data, size, &g, &grey, err, sizeof err) == 0,
          "a limit of exactly its pixel count admits the image");
    check(grey.width == img.width && grey.height == img.height && grey.channels == 1,
          "the same size as grey");
    check(grey.colour == img.colour && grey.had_alpha == img.had_alpha,
          "the same colour and alpha flags as grey");
    pngio_image_free(&grey);
    if (pixels > 1) {
        g.max_pixels = pixels - 1;
        check(pngio_decode(data, size, &g, &grey, err, sizeof err) == DDM_ERANGE,
              "one pixel over the limit is DDM_ERANGE");
        check(grey.pix == NULL, "nothing decoded over the limit");
    }
    pngio_image_free(&img);
    return 0;
}
