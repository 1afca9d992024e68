/* File exchange of the evaluator's PyTorch parity tools (linear_ref_tool,
 * semisup_ref_tool): raw little-endian arrays in a folder shared with the
 * Python side. */
#ifndef SWAV_TESTS_EVALUATOR_REF_IO_H
#define SWAV_TESTS_EVALUATOR_REF_IO_H

#include <stdio.h>
#include <stdlib.h>

#include "common/check.h"
#include "evaluator/results.h"

/* DIR/NAME, exactly `bytes` long (a multiple of 4), read whole; exits with a
 * message otherwise. */
static inline void *read_exact(const char *dir, const char *name, size_t bytes)
{
    char path[4096], err[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    float *x;
    int64_t rows;
    if (eval_read_features(path, 1, bytes + 1, &x, &rows, err, sizeof(err)) != 0 ||
        (size_t)rows * 4 != bytes) {
        fprintf(stderr, "%s: cannot read %zu bytes (%s)\n", path, bytes, err);
        exit(1);
    }
    return x;
}

static inline void write_file(const char *dir, const char *name, const void *p, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    SWAV_ASSERT(f && fwrite(p, 1, bytes, f) == bytes && fclose(f) == 0);
}

#endif
