/* Random unit vectors for the assigner's tests and benchmarks (embeddings
 * and prototypes: rows of L2 norm 1, as the trainer sends them): n rows of
 * d standard normal draws from r, each row divided by its norm. */
#ifndef SWAV_TESTS_ASSIGNER_UNIT_ROWS_H
#define SWAV_TESTS_ASSIGNER_UNIT_ROWS_H

#include <math.h>
#include <stddef.h>

#include "common/rng.h"

static inline void fill_unit_rows(float *x, int n, int d, struct swav_rng *r)
{
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int t = 0; t < d; t++) {
            x[(size_t)i * d + t] = (float)swav_rng_normal(r);
            s += (double)x[(size_t)i * d + t] * x[(size_t)i * d + t];
        }
        for (int t = 0; t < d; t++) x[(size_t)i * d + t] = (float)(x[(size_t)i * d + t] / sqrt(s));
    }
}

#endif
