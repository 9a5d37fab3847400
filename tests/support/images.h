/* images.h -- the images of a router response, decoded for comparison. */
#ifndef DDM_TEST_IMAGES_H
#define DDM_TEST_IMAGES_H

#include <stdint.h>

#include <cjson/cJSON.h>

/* Decodes the base64 grey PNGs of a JSON sample response (its "images"
 * array) into pix [n][dim] (0..255). Returns n, or -1 with a message on
 * stderr when there is no images array, more than max images, or an image
 * that is not base64 of a grey PNG of dim pixels. */
int images_from_json(const cJSON *root, uint8_t *pix, int max, int dim);

#endif
