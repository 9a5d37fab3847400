/* rng.h -- counter-based random numbers (Philox4x32-10).
 *
 * A draw is a pure function of (seed, stream, index): the same triple gives
 * the same number on any machine, in any order of calls, from any thread.
 * ddm keys sampling noise by (request seed, image index), so an image never
 * depends on what else is being served. */
#ifndef DDM_RNG_H
#define DDM_RNG_H

#include <stddef.h>
#include <stdint.h>

/* One Philox4x32-10 block: counter ctr[4] under key key[2] -> out[4]. */
void rng_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Uniform double in (0, 1), never 0 or 1: draw number `index` of `stream`. */
double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);

/* Standard normal draw number `index` of `stream` (Box-Muller on a pair). */
float rng_normal(uint64_t seed, uint64_t stream, uint64_t index);

/* Fills out[0..n) with normal draws offset, offset+1, ... of `stream`;
 * equal to calling rng_normal for each index, only faster. */
void rng_normal_fill(uint64_t seed, uint64_t stream, uint64_t offset, float *out, size_t n);

/* splitmix64 step: a cheap mixer for deriving seeds (e.g. a random request
 * seed from the clock). Advances *state and returns the next value. */
uint64_t rng_splitmix64(uint64_t *state);

#endif
