/* Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
 *
 * A stream is a pure function of (seed, epoch, image, crop): the key is the
 * 64-bit run seed, the counter holds (block, epoch, image, crop).  Any loader,
 * in any order, draws the same numbers for the same crop of the same image in
 * the same epoch; nothing depends on how many draws came before elsewhere.
 * `crop` is any 32-bit tag: crop number, or a purpose code (permutation,
 * substitution, ...) chosen by the caller. */
#ifndef SWAV_COMMON_RNG_H
#define SWAV_COMMON_RNG_H

#include <stdint.h>

struct swav_rng {
    uint32_t key[2];
    uint32_t ctr[4];   /* ctr[0] counts 128-bit blocks */
    uint32_t buf[4];
    unsigned used;     /* words of buf already handed out */
};

/* The raw Philox4x32-10 block function. */
void swav_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

void swav_rng_init(struct swav_rng *r, uint64_t seed, uint32_t epoch, uint32_t image,
                   uint32_t crop);
uint32_t swav_rng_u32(struct swav_rng *r);
uint64_t swav_rng_u64(struct swav_rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double swav_rng_uniform(struct swav_rng *r);
/* Uniform in [lo, hi). */
double swav_rng_range(struct swav_rng *r, double lo, double hi);
/* Uniform integer in [0, n), unbiased (n > 0). */
uint32_t swav_rng_below(struct swav_rng *r, uint32_t n);
/* Standard normal (Box-Muller, two uniforms per draw). */
double swav_rng_normal(struct swav_rng *r);
/* Fisher-Yates shuffle of perm[0..n) drawn from r. */
void swav_rng_shuffle_u32(struct swav_rng *r, uint32_t *perm, uint32_t n);

#endif
