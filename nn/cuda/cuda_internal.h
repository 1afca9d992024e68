/* Internal to nn/cuda/: the backend's state and the checks (C++/CUDA only). */
#ifndef SWAV_NN_CUDA_INTERNAL_H
#define SWAV_NN_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

extern "C" {
#include "common/check.h"
#include "common/log.h"
#include "nn/backend_impl.h"
}

#include "backend_cuda.h"
#include "cuda_check.h" /* CUDA_CHECK, CUBLAS_CHECK, CUDA_LAUNCH_CHECK */

#define CUDNN_CHECK(expr)                                                                  \
    do {                                                                                   \
        cudnnStatus_t swav_dnn_st_ = (expr);                                               \
        if (swav_dnn_st_ != CUDNN_STATUS_SUCCESS) {                                        \
            LOG_ERROR("%s failed: %s at %s:%d", #expr, cudnnGetErrorString(swav_dnn_st_),  \
                      __FILE__, __LINE__);                                                 \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define CU_KEY_MAX 16

struct cu_entry {
    int key[CU_KEY_MAX];
    void *op;
    void (*op_free)(void *op);
};

struct cuda_backend {
    struct nn_backend base;
    int device;
    int managed; /* SWAV_CUDA_MEMORY=managed: nn_backend_alloc gives managed memory */
    cudaStream_t stream;
    cudnnHandle_t dnn;
    cublasHandle_t blas;
    cudnnMathType_t conv_math;
    void *ws; /* one cuDNN workspace, grown only when a shape is first seen */
    size_t ws_bytes;
    float *tmp; /* scratch floats (masked gradients, Sinkhorn sums) */
    size_t tmp_bytes;
    double *red; /* device partial sums (losses, norms) */
    size_t red_bytes;
    double *host_red; /* pinned: results read back */
    /* normalize_crops: a loader's uint8 crops copied in on a stream of their
     * own (step_cuda.cu), one staging buffer per destination */
    cudaStream_t copy_stream;
    struct cu_stage *stages;
    int n_stages, stage_next;
    int64_t *idx; /* device: add_at's offsets */
    size_t idx_bytes;
    int *flag; /* device: nonfinite's answer (one int) */
    struct cu_entry *entries;
    int n_entries, cap_entries;
    struct cu_lowp *lowp; /* lowp_cuda.cu's state (weight copies, scratch); NULL until used */
};

static inline struct cuda_backend *cu_be(nn_backend_t *be)
{
    return (struct cuda_backend *)be;
}

/* step_cuda.cu: the table's memory operations and optimizer entries, and
 * the buffers they own (freed by cu_step_free). */
void cu_iface_fill_step(struct nn_backend_iface *t);
void cu_step_free(struct cuda_backend *b);

/* syncbn_cuda.cu: the table's two SyncBN pieces (nn/layers.h). */
void cu_batchnorm_stats(nn_backend_t *be, double *mean, double *m2, const struct nn_tensor *inp);
void cu_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                 const struct nn_tensor *inp, const float *weight,
                                 const float *mean, const float *var, const float *mean_dy,
                                 const float *mean_dy_xhat, float eps);

/* Grows the scratch buffers (first sight of a shape only: warm-up). */
/* Grows a device buffer of the backend to at least `want` bytes (a no-op
 * when it has them); the old one may still be read by queued kernels, hence
 * the synchronization: first sight of a shape only.  Every grow-only scratch
 * buffer of nn/cuda goes through it. */
void cu_grow(struct cuda_backend *b, void **p, size_t *have, size_t want);
/* What p is: device or managed memory, pageable host memory (copies from it
 * are staged by the driver before cudaMemcpyAsync returns), or pinned host
 * memory (read by the DMA itself, later). */
enum { CU_DEVICE, CU_HOST_PAGEABLE, CU_HOST_PINNED };
int cu_host_kind(const void *p);
/* 1 when p is host memory (pageable or pinned), 0 for device or managed. */
int cu_is_host(const void *p);
void cu_tmp_reserve(struct cuda_backend *b, size_t bytes);
void cu_red_reserve(struct cuda_backend *b, size_t n);
/* The cuDNN workspace, grown likewise; the cache of per-shape descriptor
 * sets (key: CU_KEY_MAX ints, the first a kind). */
void cu_ws_reserve(struct cuda_backend *b, size_t bytes);
void *cu_cache_find(struct cuda_backend *b, const int *key);
void cu_cache_put(struct cuda_backend *b, const int *key, void *op, void (*op_free)(void *));

/* Convolutions, float (backend_cuda.cu) and bf16/fp16 (lowp_cuda.cu), once per
 * shape: the cache key of a descriptor set (kind, input shape, output
 * channels, kernel, stride, pad, have_data), and the algorithms of a set.
 * cu_conv_find runs cudnnFind* (forward on conv; else backward filter on
 * conv and, when conv_data is not NULL, backward data on conv_data), takes
 * for each the fastest successful result whose workspace fits
 * SWAV_CUDA_WS_MAX_MB (default 1024), else the fastest successful one (with
 * a warning; none: abort), and grows the workspace to fit it.  The paths
 * differ in `s`: */
struct cu_conv_search {
    const char *tag;    /* before the direction in the messages: "", "bf16 " or "fp16 " */
    const char *detail; /* after the no-usable-algorithm error ("" for none) */
    int adopt_math;     /* 1: the descriptor is then set to the math type its algorithm
                         * was found with (bf16/fp16: searched under TENSOR_OP_MATH); 0: it keeps
                         * its own (float: the search ran under it, so its results keep it) */
};
struct cu_conv_algos {
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdFilterAlgo_t filter;
    cudnnConvolutionBwdDataAlgo_t data;
};
void cu_conv_key(int key[CU_KEY_MAX], int kind, const struct nn_tensor *inp, int out_channels,
                 int k, int stride, int pad, int have_data);
void cu_conv_find(struct cuda_backend *b, const struct cu_conv_search *s, int fwd,
                  cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t y,
                  cudnnConvolutionDescriptor_t conv, cudnnConvolutionDescriptor_t conv_data,
                  struct cu_conv_algos *algo);

/* lowp_cuda.cu: the bf16/fp16 NHWC backbone (backend_impl.h's lowp_nhwc).
 * The table's layer entries call these when their tensor is NN_DTYPE_BF16 or
 * NN_DTYPE_F16 (same contracts as nn/layers.h); convert is the table's own. */
void cu_lowp_convert(nn_backend_t *be, struct nn_tensor *dst, const struct nn_tensor *src);
void cu_lowp_conv2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                            const struct nn_tensor *weight, int stride, int pad);
void cu_lowp_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp, struct nn_tensor *dweight,
                             const struct nn_tensor *dout, const struct nn_tensor *inp,
                             const struct nn_tensor *weight, int stride, int pad);
size_t cu_lowp_batchnorm_workspace_bytes(nn_backend_t *be, const struct nn_tensor *inp,
                                         unsigned flags);
void cu_lowp_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                               const float *weight, const float *bias, float *running_mean,
                               float *running_var, float *save_mean, float *save_var,
                               void *workspace, unsigned flags, float momentum, float eps);
void cu_lowp_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                                float *dbias, const struct nn_tensor *dout,
                                const struct nn_tensor *inp, const float *weight,
                                const float *save_mean, const float *save_var,
                                const void *workspace, unsigned flags, float eps);
void cu_lowp_batchnorm_stats(nn_backend_t *be, double *mean, double *m2,
                             const struct nn_tensor *inp);
void cu_lowp_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                      const struct nn_tensor *inp, const float *weight,
                                      const float *mean, const float *var, const float *mean_dy,
                                      const float *mean_dy_xhat, float eps);
void cu_lowp_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp);
void cu_lowp_relu_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout,
                           const struct nn_tensor *out);
void cu_lowp_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a,
                         const struct nn_tensor *bb, int relu);
void cu_lowp_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x);
size_t cu_lowp_maxpool2d_workspace_bytes(nn_backend_t *be, const struct nn_tensor *out,
                                         const struct nn_tensor *inp, int k, int stride, int pad);
void cu_lowp_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                               void *workspace, int k, int stride, int pad);
void cu_lowp_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                const struct nn_tensor *dout, const void *workspace, int k,
                                int stride, int pad);
void cu_lowp_avgpool_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp);
void cu_lowp_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout);
/* Weights changed: the bf16/fp16 copies are stale (made again at their next
 * use).  Any free: the copies are dropped (a freed weight's address may come
 * back as another's).  cu_lowp_free at destroy. */
void cu_lowp_weights_updated(struct cuda_backend *b);
void cu_lowp_forget_weights(struct cuda_backend *b);
void cu_lowp_free(struct cuda_backend *b);

#define TPB 256

static inline unsigned cu_blocks(size_t n)
{
    size_t b = (n + TPB - 1) / TPB;
    return (unsigned)(b ? b : 1);
}

/* ---- block reductions (blockDim.x a multiple of 32, at most 1024) ---------- */

template <typename T> static __device__ __forceinline__ T cu_block_sum(T v, T *sh)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, o);
    }
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) {
        sh[wid] = v;
    }
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = (int)threadIdx.x < nw ? sh[threadIdx.x] : (T)0;
    if (wid == 0) {
        for (int o = 16; o > 0; o >>= 1) {
            v += __shfl_down_sync(0xffffffffu, v, o);
        }
        if (lane == 0) {
            sh[32] = v;
        }
    }
    __syncthreads();
    T r = sh[32];
    __syncthreads();
    return r;
}

static __device__ __forceinline__ float cu_block_max(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    }
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    if (lane == 0) {
        sh[wid] = v;
    }
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = (int)threadIdx.x < nw ? sh[threadIdx.x] : -INFINITY;
    if (wid == 0) {
        for (int o = 16; o > 0; o >>= 1) {
            v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        }
        if (lane == 0) {
            sh[32] = v;
        }
    }
    __syncthreads();
    float r = sh[32];
    __syncthreads();
    return r;
}

#endif
