/* samples.h -- ddm-client's side of POST /v1/samples: request bodies (JSON or
 * protobuf ddm.v1.SampleRequest), response decoding (JSON or protobuf
 * ddm.v1.SampleResponse) and writing the images (one grid, or one file each).
 *
 * Only the fields the user set go into a request; the server fills in its
 * defaults and checks ranges (its message names the field). */
#ifndef DDM_CLIENT_SAMPLES_H
#define DDM_CLIENT_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

#define SAMPLES_MAX_EXPERTS 64

/* What to ask for; zero/NULL/has_* = 0 leaves a field out. */
typedef struct samples_req {
    long n;                   /* images (0 = server default) */
    long steps;               /* ODE steps (0 = server default) */
    int has_seed;
    uint64_t seed;
    const char *strategy;     /* "top-2", "full", ... */
    const char *sampler;      /* "euler" / "heun" */
    int has_threshold;
    double threshold;
    int has_temperature;
    double temperature;
    int has_label;
    long label;
    const char *label_name;   /* the class by name (sent instead of label) */
    int has_guidance;
    double guidance;
    int trace;
} samples_req;

/* Encodes r as JSON (proto = 0) or protobuf (proto = 1). On success returns 0
 * and *body (malloc'd, caller frees) of *len bytes; DDM_ENOMEM otherwise. */
int samples_encode(const samples_req *r, int proto, uint8_t **body, size_t *len);

/* One traced evaluation: the experts selected for one image at one step. */
typedef struct samples_trace {
    int image, step, stage;   /* stage: Heun's corrector = 1 (JSON only; else 0) */
    float t;
    int n_sel;
    int experts[SAMPLES_MAX_EXPERTS];
    float weights[SAMPLES_MAX_EXPERTS];
} samples_trace;

/* A decoded SampleResponse. Owns everything it points to. */
typedef struct samples_resp {
    uint64_t seed;
    uint64_t expert_calls;         /* latent evaluations sent to experts */
    int K;                         /* entries of calls_by_expert */
    uint64_t calls_by_expert[SAMPLES_MAX_EXPERTS];
    double queue_ms, total_ms, router_ms, expert_ms;
    char strategy[64], sampler[16];
    int steps, width, height;
    int channels;                  /* 1 grey, 3 RGB (0 when the server did not say: 1) */
    int n_images;
    uint8_t **png;                 /* [n_images] PNG files as received */
    size_t *png_len;               /* [n_images] */
    int n_trace;
    samples_trace *trace;          /* [n_trace] or NULL */
    char *meta_json;               /* the response as pretty JSON, without the images */
} samples_resp;

/* Decodes a 200 response body. content_type picks the format (protobuf when
 * it says application/x-protobuf, JSON otherwise). On success returns 0 and
 * fills *out (free with samples_resp_free); on failure returns DDM_EFORMAT /
 * DDM_ENOMEM with a one-line message in err and *out is empty. */
int samples_decode(const char *content_type, const uint8_t *body, size_t len, samples_resp *out,
                   char *err, size_t errlen);

/* Frees what r owns and zeroes it (safe on a zeroed struct). */
void samples_resp_free(samples_resp *r);

/* Columns of the grid for n images: ceil(sqrt(n)), as the server's image/png. */
int samples_grid_cols(int n);

/* Decodes every image and writes them as one grid PNG at path (cols columns,
 * 0 = samples_grid_cols), grey or RGB as the response's channels say. Returns 0, or an error with a message naming the
 * image or the path (images of different sizes, a corrupt PNG, ...). */
int samples_write_grid(const samples_resp *r, const char *path, int cols, char *err,
                       size_t errlen);

/* Writes image i as dir/<prefix>NNN.png, exactly the bytes received, creating dir
 * (one level) if missing. Returns 0 or an error naming the file. */
int samples_write_dir(const samples_resp *r, const char *dir, const char *prefix, char *err,
                      size_t errlen);

#endif
