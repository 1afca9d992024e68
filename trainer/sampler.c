/* Epoch sharding: see sampler.h. */
#include "sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"
#include "common/rng.h"

int trainer_sampler_init(struct trainer_sampler *s, uint32_t n_images, int rank, int world,
                         uint32_t batch_size, uint64_t seed, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (world < 1 || rank < 0 || rank >= world || batch_size == 0) {
        snprintf(err, errlen, "bad sampler shape: rank %d of %d, batch %u", rank, world,
                 batch_size);
        return -1;
    }
    if (n_images == 0) {
        snprintf(err, errlen, "the data set has no images");
        return -1;
    }
    s->n_images = n_images;
    s->rank = rank;
    s->world = world;
    s->batch_size = batch_size;
    s->seed = seed;
    s->per_rank = (uint32_t)(((uint64_t)n_images + (uint64_t)world - 1) / (uint64_t)world);
    s->n_batches = s->per_rank / batch_size;
    if (s->n_batches == 0) {
        snprintf(err, errlen,
                 "%u images over %d ranks give %u per rank, fewer than --batch_size %u: "
                 "no full batch (drop_last) — use a smaller batch or more images",
                 n_images, world, s->per_rank, batch_size);
        return -1;
    }
    s->perm = swav_xmalloc((size_t)n_images * sizeof *s->perm);
    s->shard = swav_xmalloc((size_t)s->per_rank * sizeof *s->shard);
    s->epoch = -1;
    return 0;
}

void trainer_sampler_free(struct trainer_sampler *s)
{
    free(s->perm);
    free(s->shard);
    memset(s, 0, sizeof *s);
}

static void sampler_fill(struct trainer_sampler *s, uint32_t epoch)
{
    for (uint32_t i = 0; i < s->n_images; i++) {
        s->perm[i] = i;
    }
    struct swav_rng r;
    swav_rng_init(&r, s->seed, epoch, 0, SAMPLER_RNG_TAG);
    swav_rng_shuffle_u32(&r, s->perm, s->n_images);
    /* Padded index k of the global list: the permutation repeated. */
    for (uint32_t j = 0; j < s->per_rank; j++) {
        uint64_t k = (uint64_t)s->rank + (uint64_t)j * (uint64_t)s->world;
        s->shard[j] = s->perm[k % s->n_images];
    }
    s->epoch = epoch;
}

const uint32_t *trainer_sampler_batch(struct trainer_sampler *s, uint32_t epoch, uint32_t step)
{
    SWAV_ASSERT(step < s->n_batches);
    if (s->epoch != (int64_t)epoch) {
        sampler_fill(s, epoch);
    }
    return s->shard + (size_t)step * s->batch_size;
}
