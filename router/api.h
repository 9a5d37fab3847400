/* api.h -- the sampling API's wire formats: request decoding and response encoding.
 *
 * POST /v1/samples takes JSON (application/json) or protobuf
 * (application/x-protobuf, ddm.v1.SampleRequest) and answers in the request's
 * format, or per Accept: application/json, application/x-protobuf, or
 * image/png (one grid of all images). Decoding checks every field's type and
 * range and names the field in its message; unknown JSON fields are refused
 * so that a typo is not silently ignored. */
#ifndef DDM_API_H
#define DDM_API_H

#include <stddef.h>
#include <stdint.h>

#include "common/model.h"
#include "router/sampler.h"

typedef enum api_format { API_JSON = 0, API_PROTO, API_PNG } api_format;

/* The fields only asynchronous jobs and event streams take (POST /v1/jobs, and
 * POST /v1/samples answered as text/event-stream): `priority` (into
 * sample_params.priority) and this. */
typedef struct api_job_fields {
    int preview_every;        /* a preview event every N steps, 0..SAMPLE_MAX_STEPS (0: none) */
} api_job_fields;

/* Decodes a sample request. K, n_classes and shape (its class names; may be
 * NULL) describe the served model. The class is `label` as a number, or as
 * a class name (JSON: label as a string; protobuf: label_name). jf NULL: the
 * job fields (priority, preview_every) are refused as unknown (JSON) or not
 * taken here (protobuf); else they are decoded, priority into p. On success
 * returns 0 and fills *p (seed drawn from *seed_state when absent). On failure
 * returns the HTTP status to answer (400 or 415), and err_code / err hold the
 * error's code ("bad_field", "bad_json", ...) and message. */
int api_decode_sample(const char *content_type, const uint8_t *body, size_t len, int K,
                      int n_classes, const model_shape *shape, uint64_t *seed_state,
                      sample_params *p, api_job_fields *jf,
                      const char **err_code, char *err, size_t errlen);

/* Response format from the Accept header (may be NULL) and the request's
 * content type. Returns 0 and *fmt, or 406 if Accept names nothing we make. */
int api_response_format(const char *accept, const char *content_type, api_format *fmt);

/* What a finished request returns. */
typedef struct api_result {
    const sample_params *p;
    int K;
    int width, height;        /* image size; width * height * channels = dim */
    int channels;             /* 1 grey, 3 RGB (HWC); 0 is taken as 1 */
    traj **trajs;             /* [p->n] finished trajectories (x = image) */
    double queue_ms, total_ms, router_ms, expert_ms;
} api_result;

/* The PNG grid of n images imgs [n][height][width][channels] in [-1, 1] that
 * Accept: image/png answers (ceil(sqrt(n)) columns; grey or RGB as channels
 * is 1 or 3), malloc'd into *png (caller frees). Returns 0 or a ddm_err with
 * err set. Previews use it too, so they look like the result. */
int api_encode_grid(const float *imgs, int n, int width, int height, int channels, uint8_t **png,
                    size_t *len, char *err, size_t errlen);

/* Encodes the response body (malloc'd, caller frees) and its content type.
 * Returns 0, or DDM_ENOMEM / DDM_EFORMAT with err set. */
int api_encode_sample(api_format fmt, const api_result *r, uint8_t **body, size_t *len,
                      const char **content_type, char *err, size_t errlen);

#endif
