/* Epoch sharding: ranks' shards are disjoint and cover the data set (padding
 * repeats only when n is not a multiple of the world), batches drop the tail,
 * the permutation depends only on (seed, epoch), epochs differ. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/sampler.h"

static int fails;
#define EXPECT(c) do { if (!(c)) { fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #c); fails++; } } while (0)

static void check(uint32_t n, int world, uint32_t bs)
{
    char err[256];
    unsigned *seen = calloc(n, sizeof *seen);
    uint32_t used = 0;
    for (int r = 0; r < world; r++) {
        struct trainer_sampler s, t;
        EXPECT(trainer_sampler_init(&s, n, r, world, bs, 31, err, sizeof err) == 0);
        EXPECT(trainer_sampler_init(&t, n, r, world, bs, 31, err, sizeof err) == 0);
        EXPECT(s.n_batches == ((n + world - 1) / world) / bs);
        for (uint32_t st = 0; st < s.n_batches; st++) {
            const uint32_t *b = trainer_sampler_batch(&s, 3, st);
            /* the same batch from a fresh instance, asked out of order */
            const uint32_t *c = trainer_sampler_batch(&t, 3, s.n_batches - 1 - st);
            (void)c;
            const uint32_t *c2 = trainer_sampler_batch(&t, 3, st);
            EXPECT(memcmp(b, c2, bs * sizeof *b) == 0);
            for (uint32_t k = 0; k < bs; k++) {
                EXPECT(b[k] < n);
                seen[b[k]]++;
                used++;
            }
        }
        /* another epoch gives another order */
        uint32_t first[8];
        memcpy(first, trainer_sampler_batch(&s, 3, 0), (bs < 8 ? bs : 8) * sizeof *first);
        EXPECT(memcmp(first, trainer_sampler_batch(&s, 4, 0), (bs < 8 ? bs : 8) * sizeof *first) != 0 || n < 4);
        trainer_sampler_free(&s);
        trainer_sampler_free(&t);
    }
    unsigned repeats = 0;
    for (uint32_t i = 0; i < n; i++) repeats += seen[i] > 1 ? seen[i] - 1 : 0;
    uint32_t padded = ((n + world - 1) / world) * world - n;
    EXPECT(repeats <= padded);
    EXPECT(used == (uint32_t)world * (((n + world - 1) / world) / bs) * bs);
    free(seen);
}

int main(void)
{
    check(1000, 1, 64);
    check(1000, 2, 64);
    check(1001, 4, 10);
    check(97, 3, 8);
    char err[256];
    struct trainer_sampler s;
    EXPECT(trainer_sampler_init(&s, 10, 0, 2, 64, 1, err, sizeof err) != 0 && strstr(err, "batch_size"));
    EXPECT(trainer_sampler_init(&s, 0, 0, 1, 1, 1, err, sizeof err) != 0);
    if (fails) return 1;
    printf("test_sampler: ok\n");
    return 0;
}
