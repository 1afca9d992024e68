/* What every libFuzzer target here shares: its entry point and the check of
 * an invariant (abort, so libFuzzer and the corpus replay both stop on it
 * with the input that broke it). */
#ifndef SWAV_TESTS_FUZZ_FUZZ_H
#define SWAV_TESTS_FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond)                                                       \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond,        \
                    __FILE__, __LINE__);                                         \
            abort();                                                             \
        }                                                                        \
    } while (0)

#endif
