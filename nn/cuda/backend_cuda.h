/* The CUDA backend (nn/backend.h's table on one GPU) and the device-side
 * pieces of a training step that are not layers: crop normalization,
 * prototype normalization, Sinkhorn, and a fused SGD+LARC step.
 *
 * Memory: nn_backend_alloc on this backend returns device memory
 * (cudaMalloc): the host reaches it only through nn_backend_copy (nn/guard.h
 * proves on the CPU that the model, trainer and evaluator never touch it
 * otherwise); SWAV_CUDA_MEMORY=managed in the environment gives managed
 * memory instead, readable by the host after nn_backend_sync (the CUDA tests
 * compare buffers so).  Every pointer handed to a layer must be device
 * memory (nn_backend_alloc'd or cudaMalloc'd).  Layouts: NCHW (4-D) and NC (2-D) only; nChw8c is the CPU
 * backend's and is refused (build the model with cfg.plain_layout = 1).
 * fp32 throughout (no TF32 unless SWAV_CUDA_TF32=1 in the environment).
 * Calls are asynchronous on the backend's stream; loss forwards return their
 * value and so synchronize.  See docs/cuda.md. */
#ifndef SWAV_NN_CUDA_BACKEND_CUDA_H
#define SWAV_NN_CUDA_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "nn/backend.h"
#include "nn/optim.h"
#include "nn/params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices (0 when there is no driver or no device). */
int nn_cuda_device_count(void);
/* Why the count was 0 ("no CUDA-capable device", "driver too old", ...), or
 * "" when it was not. */
const char *nn_cuda_count_error(void);
/* NULL (with a logged reason) when the device cannot be used. */
nn_backend_t *nn_backend_cuda_new(int device);

/* 1 when p is device or managed memory; 2 when it is plain host memory that
 * this GPU can still address (pageable memory access: HMM or ATS; slow);
 * 0 when the GPU cannot address it (malloc'd memory without HMM). */
int nn_cuda_pointer_usable(const void *p);
/* distributed_sinkhorn of the reference with one rank: q (B, K) from scores
 * (B, K), epsilon eps, iters iterations; q sums to 1 per row. */
void nn_cuda_sinkhorn(nn_backend_t *be, float *q, const float *scores, int B, int K, float eps,
                      int iters);

/* SGD + LARC over the flat parameter buffer, nn/optim.h's semantics (same
 * config struct; nthreads ignored).  Momentum buffer on the device. */
struct nn_cuda_optim;
struct nn_cuda_optim *nn_cuda_optim_new(nn_backend_t *be, const struct nn_param_table *table,
                                        const struct nn_optim_config *cfg);
void nn_cuda_optim_destroy(struct nn_cuda_optim **o);
void nn_cuda_optim_set_group(struct nn_cuda_optim *o, int index, int group);
void nn_cuda_optim_step(struct nn_cuda_optim *o, float *params, const float *grads, double lr,
                        int64_t iteration);
void nn_cuda_optim_step_groups(struct nn_cuda_optim *o, float *params, const float *grads,
                               const double *group_lr, int64_t iteration);
/* The momentum buffer (table->total floats, the backend's memory: nn_backend_alloc). */
float *nn_cuda_optim_momentum(struct nn_cuda_optim *o);

/* A collective over NCCL for the ranks of `bootstrap` (the trainer's ZeroMQ
 * ring: it carries rank 0's NCCL id to the others), on this backend's GPU
 * and stream; buffers may be device or host memory.  Every call waits at
 * most timeout_ms, then aborts the communicator and fails (nn/collective.h's
 * statuses).  The bootstrap stays the caller's.  NULL with a message in err
 * when the communicator cannot be formed.  nccl_collective.cu. */
struct nn_collective;
struct nn_collective *nn_collective_nccl_new(nn_backend_t *be, struct nn_collective *bootstrap,
                                             int timeout_ms, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
