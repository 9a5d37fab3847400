/* images.c -- the images of a router response (see images.h). */
#include "tests/support/images.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/png.h"

int images_from_json(const cJSON *root, uint8_t *pix, int max, int dim)
{
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(root, "images");
    int n = cJSON_GetArraySize(imgs);
    if (!cJSON_IsArray(imgs) || n > max) {
        fprintf(stderr, "images: %d images, expected an array of at most %d\n", n, max);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const char *b64 = cJSON_GetStringValue(cJSON_GetArrayItem(imgs, i));
        size_t len = b64 ? strlen(b64) : 0;
        uint8_t *png = malloc(len + 1), *px = NULL;
        long plen = png && b64 ? base64_decode(b64, len, png) : -1;
        int w = 0, h = 0;
        char err[128] = "not base64";
        int ok = plen > 0 &&
                 pngio_decode_grey(png, (size_t)plen, &px, &w, &h, err, sizeof err) == 0;
        if (ok && w * h != dim) {
            snprintf(err, sizeof err, "%d x %d pixels, expected %d", w, h, dim);
            ok = 0;
        }
        if (ok)
            memcpy(pix + (size_t)i * (size_t)dim, px, (size_t)dim);
        free(px);
        free(png);
        if (!ok) {
            fprintf(stderr, "images: image %d: %s\n", i, err);
            return -1;
        }
    }
    return n;
}
