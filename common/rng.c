/* Philox4x32-10: see rng.h.  Constants from Random123. */
#include "rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void philox_round(uint32_t c[4], const uint32_t k[2])
{
    uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
    uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k[0];
    uint32_t n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

void swav_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t k[2] = {key[0], key[1]};
    for (int i = 0; i < 10; i++) {
        philox_round(c, k);
        if (i < 9) {
            k[0] += PHILOX_W0;
            k[1] += PHILOX_W1;
        }
    }
    out[0] = c[0];
    out[1] = c[1];
    out[2] = c[2];
    out[3] = c[3];
}

void swav_rng_init(struct swav_rng *r, uint64_t seed, uint32_t epoch, uint32_t image,
                   uint32_t crop)
{
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = 0;
    r->ctr[1] = epoch;
    r->ctr[2] = image;
    r->ctr[3] = crop;
    r->used = 4;
}

uint32_t swav_rng_u32(struct swav_rng *r)
{
    if (r->used == 4) {
        swav_philox4x32_10(r->ctr, r->key, r->buf);
        r->ctr[0]++;
        r->used = 0;
    }
    return r->buf[r->used++];
}

uint64_t swav_rng_u64(struct swav_rng *r)
{
    uint64_t hi = swav_rng_u32(r);
    return (hi << 32) | swav_rng_u32(r);
}

double swav_rng_uniform(struct swav_rng *r)
{
    return (double)(swav_rng_u64(r) >> 11) * 0x1.0p-53;
}

double swav_rng_range(struct swav_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * swav_rng_uniform(r);
}

uint32_t swav_rng_below(struct swav_rng *r, uint32_t n)
{
    /* Lemire's nearly divisionless method. */
    uint64_t m = (uint64_t)swav_rng_u32(r) * n;
    uint32_t l = (uint32_t)m;
    if (l < n) {
        uint32_t t = (uint32_t)(-n) % n;
        while (l < t) {
            m = (uint64_t)swav_rng_u32(r) * n;
            l = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

double swav_rng_normal(struct swav_rng *r)
{
    double u1 = swav_rng_uniform(r);
    double u2 = swav_rng_uniform(r);
    if (u1 < 1e-300) {
        u1 = 1e-300;
    }
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void swav_rng_shuffle_u32(struct swav_rng *r, uint32_t *perm, uint32_t n)
{
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = swav_rng_below(r, i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}
