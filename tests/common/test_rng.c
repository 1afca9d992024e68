/* RNG: a stream is a pure function of (seed, epoch, image, crop), whatever the
 * order in which streams are drawn; Philox matches its published known-answer
 * vectors (Random123 kat_vectors). */
#include <stdio.h>
#include <string.h>

#include "common/rng.h"

static int failures;
#define EXPECT(c)                                                        \
    do {                                                                 \
        if (!(c)) {                                                      \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #c); \
            failures++;                                                  \
        }                                                                \
    } while (0)

static void draw(uint64_t seed, uint32_t e, uint32_t i, uint32_t c, uint32_t *out, int n)
{
    struct swav_rng r;
    swav_rng_init(&r, seed, e, i, c);
    for (int k = 0; k < n; k++) out[k] = swav_rng_u32(&r);
}

int main(void)
{
    /* Random123 known answers for philox4x32_10. */
    uint32_t out[4];
    swav_philox4x32_10((uint32_t[4]){0, 0, 0, 0}, (uint32_t[2]){0, 0}, out);
    EXPECT(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu &&
           out[3] == 0x9b00dbd8u);
    swav_philox4x32_10((uint32_t[4]){0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                       (uint32_t[2]){0xffffffffu, 0xffffffffu}, out);
    EXPECT(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u &&
           out[3] == 0x6d5451fdu);
    swav_philox4x32_10((uint32_t[4]){0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
                       (uint32_t[2]){0xa4093822u, 0x299f31d0u}, out);
    EXPECT(out[0] == 0xd16cfe09u && out[1] == 0x94fdccebu && out[2] == 0x5001e420u &&
           out[3] == 0x24126ea1u);

    /* The same key gives the same stream in any order of calls. */
    enum { N = 37, K = 6 };
    uint32_t first[K][N], again[K][N];
    uint32_t keys[K][3] = {{0, 0, 0}, {0, 0, 1}, {0, 1, 0}, {1, 0, 0}, {3, 12345, 7}, {99, 1, 2}};
    for (int k = 0; k < K; k++) draw(31, keys[k][0], keys[k][1], keys[k][2], first[k], N);
    for (int k = K - 1; k >= 0; k--) {
        /* interleave: draw part of another stream first */
        uint32_t junk[5];
        draw(31, keys[(k + 1) % K][0], 777, 3, junk, 5);
        draw(31, keys[k][0], keys[k][1], keys[k][2], again[k], N);
    }
    EXPECT(memcmp(first, again, sizeof first) == 0);
    /* Different keys give different streams; different seeds too. */
    for (int k = 1; k < K; k++) EXPECT(memcmp(first[0], first[k], sizeof first[0]) != 0);
    uint32_t other[N];
    draw(32, 0, 0, 0, other, N);
    EXPECT(memcmp(first[0], other, sizeof other) != 0);

    /* Uniform draws lie in [0, 1) and average near 1/2. */
    struct swav_rng r;
    swav_rng_init(&r, 5, 1, 2, 3);
    double sum = 0;
    for (int k = 0; k < 100000; k++) {
        double u = swav_rng_uniform(&r);
        EXPECT(u >= 0.0 && u < 1.0);
        sum += u;
    }
    EXPECT(sum / 100000 > 0.49 && sum / 100000 < 0.51);
    uint32_t counts[7] = {0};
    for (int k = 0; k < 70000; k++) counts[swav_rng_below(&r, 7)]++;
    for (int k = 0; k < 7; k++) EXPECT(counts[k] > 9500 && counts[k] < 10500);

    if (failures) {
        fprintf(stderr, "test_rng: %d failures\n", failures);
        return 1;
    }
    printf("test_rng: ok\n");
    return 0;
}
