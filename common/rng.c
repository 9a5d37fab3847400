/* rng.c -- Philox4x32-10 counter-based generator (Salmon et al., SC'11).
 *
 * Layout of a counter: ctr = {pair lo, pair hi, stream lo, stream hi}, key =
 * seed. Each block yields two 53-bit uniforms and so two normals (the cos and
 * sin halves of Box-Muller): normal index i uses block i/2, half i%2. */
#include "common/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void rng_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static void block(uint64_t seed, uint64_t stream, uint64_t n, uint32_t out[4])
{
    uint32_t ctr[4] = { (uint32_t)n, (uint32_t)(n >> 32), (uint32_t)stream, (uint32_t)(stream >> 32) };
    uint32_t key[2] = { (uint32_t)seed, (uint32_t)(seed >> 32) };
    rng_philox(ctr, key, out);
}

/* 53 random bits -> (0, 1), centred in its bucket so 0 and 1 never occur. */
static double to_unit(uint32_t hi, uint32_t lo)
{
    uint64_t bits = (((uint64_t)hi << 32) | lo) >> 11;
    return ((double)bits + 0.5) * (1.0 / 9007199254740992.0);
}

double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t r[4];
    block(seed, stream, index / 2, r);
    return (index & 1) ? to_unit(r[2], r[3]) : to_unit(r[0], r[1]);
}

static void normal_pair(uint64_t seed, uint64_t stream, uint64_t pair, float z[2])
{
    uint32_t r[4];
    block(seed, stream, pair, r);
    double u1 = to_unit(r[0], r[1]);
    double u2 = to_unit(r[2], r[3]);
    double rad = sqrt(-2.0 * log(u1));
    double ang = 6.283185307179586 * u2;
    z[0] = (float)(rad * cos(ang));
    z[1] = (float)(rad * sin(ang));
}

float rng_normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    float z[2];
    normal_pair(seed, stream, index / 2, z);
    return z[index & 1];
}

void rng_normal_fill(uint64_t seed, uint64_t stream, uint64_t offset, float *out, size_t n)
{
    size_t i = 0;
    float z[2];
    if (n > 0 && (offset & 1)) {
        out[i++] = rng_normal(seed, stream, offset);
    }
    for (; i + 1 < n; i += 2) {
        normal_pair(seed, stream, (offset + i) / 2, z);
        out[i] = z[0];
        out[i + 1] = z[1];
    }
    if (i < n)
        out[i] = rng_normal(seed, stream, offset + i);
}

uint64_t rng_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
