/* The library-call checks of our CUDA code (STYLE.md's second tier of
 * errors): a failed CUDA runtime or cuBLAS call logs the expression, the
 * error and the place, then aborts.  C++/CUDA only; shared by nn/cuda/
 * (through cuda_internal.h, which adds cuDNN's) and the assigner's
 * sinkhorn_cuda.cu. */
#ifndef SWAV_NN_CUDA_CHECK_H
#define SWAV_NN_CUDA_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "common/log.h"
}

/* cudaGetDeviceCount without aborting: the count, 0 when the runtime cannot
 * count (no driver, a driver too old): then why (whylen > 0) says so in the
 * runtime's words, else why is "".  The sticky error is cleared. */
static inline int swav_cuda_count(char *why, size_t whylen)
{
    int n = 0;
    cudaError_t st = cudaGetDeviceCount(&n);
    if (st != cudaSuccess) {
        snprintf(why, whylen, "%s: %s", cudaGetErrorName(st), cudaGetErrorString(st));
        cudaGetLastError();
        return 0;
    }
    why[0] = '\0';
    return n;
}

#define CUDA_CHECK(expr)                                                                   \
    do {                                                                                   \
        cudaError_t swav_cu_st_ = (expr);                                                  \
        if (swav_cu_st_ != cudaSuccess) {                                                  \
            LOG_ERROR("%s failed: %s (%s) at %s:%d", #expr, cudaGetErrorString(swav_cu_st_), \
                      cudaGetErrorName(swav_cu_st_), __FILE__, __LINE__);                  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define CUBLAS_CHECK(expr)                                                                 \
    do {                                                                                   \
        cublasStatus_t swav_blas_st_ = (expr);                                             \
        if (swav_blas_st_ != CUBLAS_STATUS_SUCCESS) {                                      \
            LOG_ERROR("%s failed: %s (cublas status %d) at %s:%d", #expr,                 \
                      cublasGetStatusString(swav_blas_st_), (int)swav_blas_st_, __FILE__,  \
                      __LINE__);                                                           \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* A launch: check the configuration right away (asynchronous faults show at
 * the next synchronizing call; with CUDA_LAUNCH_BLOCKING=1 in the environment,
 * here: scripts/gpu-check reruns a failed test so). */
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

#endif
