/* Which images rank r trains on in an epoch, like torch's DistributedSampler
 * (shuffle, padded to a multiple of the world size by repeating the first
 * images) followed by a DataLoader with drop_last=True.
 *
 * The permutation is drawn from the counter-based RNG keyed by (seed, epoch,
 * image 0, SAMPLER_RNG_TAG): the same seed and epoch give the same shards on
 * every rank, every restart, in any order. */
#ifndef SWAV_TRAINER_SAMPLER_H
#define SWAV_TRAINER_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#define SAMPLER_RNG_TAG 0x53414d50u /* "SAMP" */

struct trainer_sampler {
    uint32_t n_images;   /* data set size */
    int rank, world;
    uint32_t batch_size; /* per rank */
    uint64_t seed;
    uint32_t per_rank;   /* ceil(n / world): the shard's length */
    uint32_t n_batches;  /* floor(per_rank / batch_size): steps per epoch */
    uint32_t *perm;      /* scratch: the epoch's global permutation */
    uint32_t *shard;     /* this rank's images for the current epoch */
    int64_t epoch;       /* the epoch perm/shard hold, -1 none */
};

/* Returns 0, or -1 with a message when the shard cannot hold one batch. */
int trainer_sampler_init(struct trainer_sampler *s, uint32_t n_images, int rank, int world,
                         uint32_t batch_size, uint64_t seed, char *err, size_t errlen);
void trainer_sampler_free(struct trainer_sampler *s);
/* The image indices of (epoch, step) for this rank: batch_size entries. */
const uint32_t *trainer_sampler_batch(struct trainer_sampler *s, uint32_t epoch, uint32_t step);

#endif
