/* The comparisons of the CUDA tests (tests/cuda/test_*.c): a result of the
 * CUDA backend against the CPU backend's, one line per check,
 *   "<name> rel err E (tol T) ok"   (or FAIL)
 * counted in `failures`; a test goes on after a failure, so one run shows
 * every check, and its main returns failures ? 1 : 0.
 *
 * rel_err is max |a - ref| over max |ref|, that maximum floored at
 * CHECK_REL_FLOOR (an all-zero reference then gives the largest absolute
 * difference over the floor); a NaN in `a` sticks.  A test defines
 * CHECK_REL_FLOOR and CHECK_NAME_WIDTH (the column its names are padded to)
 * before it includes this: each keeps its own, since its tolerances were set
 * against its floor. */
#ifndef SWAV_TESTS_CUDA_COMPARE_H
#define SWAV_TESTS_CUDA_COMPARE_H

#if !defined(CHECK_REL_FLOOR) || !defined(CHECK_NAME_WIDTH)
#error "define CHECK_REL_FLOOR and CHECK_NAME_WIDTH before including tests/cuda/compare.h"
#endif

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "nn/cuda/backend_cuda.h"

static int failures;

/* The CUDA side of a comparison: *gpu, the backend on GPU 0, and 0; 77
 * (said as a SKIP line) where there is no device; 1 (a FAIL line) when the
 * backend cannot be opened.  Its memory is managed: these checks read the
 * CUDA backend's buffers on the host after nn_backend_sync (production runs
 * use device memory, and the guard suite proves that the model, trainer and
 * evaluator never touch it from the host). */
static inline int open_gpu(nn_backend_t **gpu)
{
    if (nn_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device (cudaGetDeviceCount: %s)\n",
               nn_cuda_count_error()[0] ? nn_cuda_count_error() : "0 devices");
        return 77;
    }
    setenv("SWAV_CUDA_MEMORY", "managed", 1);
    *gpu = nn_backend_cuda_new(0);
    if (!*gpu) {
        printf("FAIL: nn_backend_cuda_new(0)\n");
        return 1;
    }
    return 0;
}

static inline double rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= md)) {
            md = d; /* NaN sticks */
        }
        if (fabs(ref[i]) > mr) {
            mr = fabs(ref[i]);
        }
    }
    return md / (mr > CHECK_REL_FLOOR ? mr : CHECK_REL_FLOOR);
}

/* One line for an error e against its tolerance (NaN fails). */
static inline void report(const char *name, double e, double tol)
{
    int ok = e <= tol;
    printf("%-*s rel err %.3g (tol %.0e) %s\n", CHECK_NAME_WIDTH, name, e, tol,
           ok ? "ok" : "FAIL");
    failures += !ok;
}

/* g (the GPU's, read now: synchronize first) against c, n values. */
static inline void check(const char *name, const float *g, const float *c, size_t n, double tol)
{
    report(name, rel_err(g, c, n), tol);
}

/* A condition, one line "<what> ok" (or FAIL). */
static inline void expect(int ok, const char *what)
{
    printf("%-*s %s\n", CHECK_NAME_WIDTH, what, ok ? "ok" : "FAIL");
    failures += !ok;
}

#endif
