/* toyset.h -- small random expert sets written to disk, and helpers shared by tests. */
#ifndef DDM_TEST_TOYSET_H
#define DDM_TEST_TOYSET_H

#include <stdint.h>

#include "common/net.h"

/* Writes dir/expert-0..K-1.safetensors (denoisers with a Gaussian baseline)
 * and dir/router.safetensors for latents of dim floats and n_classes
 * classes. Weights are random (seeded) with non-zero output layers so
 * experts differ and routes vary. Returns 0 or -1 (message on stderr). */
int toyset_write(const char *dir, int K, int dim, int n_classes, uint64_t seed);

/* Writes one network (random, seeded) to path with weights stored as dtype
 * (an st_dtype: ST_F32, or ST_F16 as the shipped files). */
int toyset_write_model(const char *path, int kind, const net_config *c, uint64_t seed,
                       int expert_id, int K, int dtype);

/* Writes a random set shaped like the shipped digits models (K experts and a
 * router over 784-float latents, fp16 weights) but with experts `hidden`
 * wide: for benchmarks of how serving scales with an expert's compute. */
int toyset_write_digits_like(const char *dir, int K, int hidden, uint64_t seed);

/* Makes a fresh temp dir (template under /tmp) into buf; returns 0 or -1. */
int toyset_tempdir(char *buf, size_t len, const char *tag);
/* rm -rf dir (only paths under /tmp/ddm-). */
void toyset_rmdir(const char *dir);

#endif
