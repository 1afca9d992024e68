/* The CUDA backend: cuDNN for convolution and batch norm, cuBLAS for the
 * linear layers, this file's kernels for the rest (element-wise ops, max and
 * average pooling, row-wise ops, losses).  The CPU backend (backend_cpu.c)
 * is the reference; tests/cuda/test_cuda_layers.c compares the two.
 *
 * Every cuDNN descriptor set is created once per shape, with its algorithms
 * (cudnnFind*, the fastest that keeps fp32 FMA math unless SWAV_CUDA_TF32=1),
 * and kept in the backend's cache; one workspace, grown only when a new shape
 * needs more.  After a warm-up step a step allocates nothing.
 *
 * NEVER RUN ON A GPU when written: see docs/cuda.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- element-wise kernels ---------------------------------------------------- */

__global__ void k_relu_fwd(float *y, const float *x, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

__global__ void k_relu_bwd(float *dx, const float *dy, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}

__global__ void k_add(float *y, const float *a, const float *b, size_t n, int relu)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = a[i] + b[i];
        y[i] = relu && !(v > 0.0f) ? 0.0f : v;
    }
}

__global__ void k_accum(float *y, const float *x, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] += x[i];
    }
}

/* In-place ReLU after batch norm; mask (may be NULL) remembers y > 0. */
__global__ void k_relu_mask(float *y, unsigned char *mask, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = y[i];
        int pos = v > 0.0f;
        y[i] = pos ? v : 0.0f;
        if (mask) {
            mask[i] = (unsigned char)pos;
        }
    }
}

__global__ void k_apply_mask(float *t, const float *dy, const unsigned char *mask, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        t[i] = mask[i] ? dy[i] : 0.0f;
    }
}

/* ---- memory, cache ----------------------------------------------------------------- */

static void *cu_alloc(nn_backend_t *be, size_t bytes)
{
    struct cuda_backend *b = cu_be(be);
    size_t n = (bytes + 255) / 256 * 256;
    if (!n) {
        n = 256;
    }
    void *p = NULL;
    CUDA_CHECK(cudaSetDevice(b->device));
    /* Every allocation must fit the device's free memory, keeping 512 MiB
     * for cuDNN's workspace and the scratch buffers: a clear message (a
     * smaller --batch_size fits) rather than a failure in the middle of a
     * step, and managed memory past it would page to the host, which on
     * some drivers and VMs hangs the GPU rather than failing. */
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const size_t margin = (size_t)512 << 20;
    if (n + margin > free_b) {
        LOG_ERROR("CUDA backend: %.1f MiB asked on GPU %d with %.1f MiB of its %.1f MiB free; "
                  "refused: lower --batch_size or free the GPU",
                  n / 1048576.0, b->device, free_b / 1048576.0, total_b / 1048576.0);
        abort();
    }
    if (b->managed) {
        CUDA_CHECK(cudaMallocManaged(&p, n, cudaMemAttachGlobal));
    } else {
        CUDA_CHECK(cudaMalloc(&p, n));
    }
    CUDA_CHECK(cudaMemsetAsync(p, 0, n, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    return p;
}

static void cu_free(nn_backend_t *be, void *p)
{
    if (p) {
        CUDA_CHECK(cudaStreamSynchronize(cu_be(be)->stream));
        CUDA_CHECK(cudaFree(p));
        cu_lowp_forget_weights(cu_be(be)); /* the address may come back as another weight */
    }
}

static void cu_sync(nn_backend_t *be)
{
    CUDA_CHECK(cudaStreamSynchronize(cu_be(be)->stream));
}

static void cu_weights_updated(nn_backend_t *be)
{
    /* float: cuDNN reads OIHW weights as they are; bf16/fp16 keep KRSC copies */
    cu_lowp_weights_updated(cu_be(be));
}

static int cu_cache_size(const nn_backend_t *be)
{
    return ((const struct cuda_backend *)be)->n_entries;
}

void *cu_cache_find(struct cuda_backend *b, const int *key)
{
    for (int i = 0; i < b->n_entries; i++) {
        if (!memcmp(b->entries[i].key, key, sizeof(int) * CU_KEY_MAX)) {
            return b->entries[i].op;
        }
    }
    return NULL;
}

void cu_cache_put(struct cuda_backend *b, const int *key, void *op, void (*op_free)(void *))
{
    if (b->n_entries == b->cap_entries) {
        b->cap_entries = b->cap_entries ? 2 * b->cap_entries : 64;
        b->entries = (struct cu_entry *)swav_xrealloc(b->entries,
                                                      (size_t)b->cap_entries * sizeof *b->entries);
    }
    struct cu_entry *e = &b->entries[b->n_entries++];
    memcpy(e->key, key, sizeof e->key);
    e->op = op;
    e->op_free = op_free;
}

void cu_grow(struct cuda_backend *b, void **p, size_t *have, size_t want)
{
    if (want <= *have) {
        return;
    }
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    CUDA_CHECK(cudaFree(*p));
    *p = NULL;
    CUDA_CHECK(cudaMalloc(p, want));
    *have = want;
}

void cu_ws_reserve(struct cuda_backend *b, size_t bytes)
{
    cu_grow(b, &b->ws, &b->ws_bytes, bytes);
}

void cu_tmp_reserve(struct cuda_backend *b, size_t bytes)
{
    cu_grow(b, (void **)&b->tmp, &b->tmp_bytes, bytes);
}

void cu_red_reserve(struct cuda_backend *b, size_t n)
{
    cu_grow(b, (void **)&b->red, &b->red_bytes, n * sizeof(double));
}

static void cu_destroy(nn_backend_t *be)
{
    struct cuda_backend *b = cu_be(be);
    cudaStreamSynchronize(b->stream);
    for (int i = 0; i < b->n_entries; i++) {
        b->entries[i].op_free(b->entries[i].op);
    }
    free(b->entries);
    cu_lowp_free(b);
    cu_step_free(b);
    cudaFree(b->ws);
    cudaFree(b->tmp);
    cudaFree(b->red);
    cudaFreeHost(b->host_red);
    cublasDestroy(b->blas);
    cudnnDestroy(b->dnn);
    cudaStreamDestroy(b->stream);
    free(b);
}

static size_t cu_numel_plain(const struct nn_tensor *t)
{
    SWAV_ASSERT(t->layout != NN_LAYOUT_NCHW8C); /* the CPU backend's layout */
    SWAV_ASSERT(t->dtype == NN_DTYPE_F32);      /* bf16/fp16 go to lowp_cuda.cu */
    return nn_tensor_numel(t);
}

/* ---- conv2d (cuDNN) ----------------------------------------------------------------- */

enum cu_kind { CU_CONV_FWD = 1, CU_CONV_BWD, CU_BN };

struct cu_conv {
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    struct cu_conv_algos algo;
    int have_data;
};

static void cu_conv_free(void *op)
{
    struct cu_conv *c = (struct cu_conv *)op;
    cudnnDestroyTensorDescriptor(c->x);
    cudnnDestroyTensorDescriptor(c->y);
    cudnnDestroyFilterDescriptor(c->w);
    cudnnDestroyConvolutionDescriptor(c->conv);
    free(c);
}

static void cu_tensor_desc(cudnnTensorDescriptor_t d, const struct nn_tensor *t)
{
    int n = (int)t->shape[0], c = (int)t->shape[1];
    int h = t->ndim == 4 ? (int)t->shape[2] : 1, w = t->ndim == 4 ? (int)t->shape[3] : 1;
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w));
}

/* Index of the fastest usable result (cudnnFind sorts by time) whose
 * workspace fits SWAV_CUDA_WS_MAX_MB (default 1024), else of the fastest
 * usable one; its workspace in *mem.  cu_conv_find's choice. */
template <typename P>
static int cu_pick(const P *perf, int n, size_t *mem, const struct cu_conv_search *s,
                   const char *what)
{
    const char *env = getenv("SWAV_CUDA_WS_MAX_MB");
    size_t cap = (size_t)(env ? atol(env) : 1024) << 20;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            if (perf[i].status == CUDNN_STATUS_SUCCESS && (pass == 1 || perf[i].memory <= cap)) {
                if (pass == 1) {
                    LOG_WARN("cuda: %s%s: every algorithm wants more than %zu MiB of workspace;"
                             " algo %d takes %zu MiB", s->tag, what, cap >> 20, (int)perf[i].algo,
                             perf[i].memory >> 20);
                }
                *mem = perf[i].memory;
                return i;
            }
        }
    }
    LOG_ERROR("cuda: %s%s: cudnnFind returned no usable algorithm%s", s->tag, what, s->detail);
    abort();
}

/* The workspace reserved is the larger of what the search reported for the
 * chosen algorithm and what cudnnGet*WorkspaceSize says for it with the math
 * type adopted (as PyTorch does): the convolution call then never lacks it. */
void cu_conv_find(struct cuda_backend *b, const struct cu_conv_search *s, int fwd,
                  cudnnTensorDescriptor_t x, cudnnFilterDescriptor_t w, cudnnTensorDescriptor_t y,
                  cudnnConvolutionDescriptor_t conv, cudnnConvolutionDescriptor_t conv_data,
                  struct cu_conv_algos *algo)
{
    int n = 0;
    size_t mem = 0;
    if (fwd) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(b->dnn, x, w, conv, y,
                                                         CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf));
        int i = cu_pick(perf, n, &mem, s, "conv forward");
        algo->fwd = perf[i].algo;
        if (s->adopt_math) {
            CUDNN_CHECK(cudnnSetConvolutionMathType(conv, perf[i].mathType));
        }
        size_t need = 0;
        if (cudnnGetConvolutionForwardWorkspaceSize(b->dnn, x, w, conv, y, algo->fwd, &need) ==
            CUDNN_STATUS_SUCCESS) {
            mem = need > mem ? need : mem;
        }
        cu_ws_reserve(b, mem);
        return;
    }
    cudnnConvolutionBwdFilterAlgoPerf_t fp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(
        b->dnn, x, y, conv, w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, fp));
    int i = cu_pick(fp, n, &mem, s, "conv backward filter");
    algo->filter = fp[i].algo;
    if (s->adopt_math) {
        CUDNN_CHECK(cudnnSetConvolutionMathType(conv, fp[i].mathType));
    }
    size_t need = 0;
    if (cudnnGetConvolutionBackwardFilterWorkspaceSize(b->dnn, x, y, conv, w, algo->filter,
                                                       &need) == CUDNN_STATUS_SUCCESS) {
        mem = need > mem ? need : mem;
    }
    cu_ws_reserve(b, mem);
    if (conv_data) {
        cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(
            b->dnn, w, y, conv_data, x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, dp));
        i = cu_pick(dp, n, &mem, s, "conv backward data");
        algo->data = dp[i].algo;
        if (s->adopt_math) {
            CUDNN_CHECK(cudnnSetConvolutionMathType(conv_data, dp[i].mathType));
        }
        need = 0;
        if (cudnnGetConvolutionBackwardDataWorkspaceSize(b->dnn, w, y, conv_data, x, algo->data,
                                                         &need) == CUDNN_STATUS_SUCCESS) {
            mem = need > mem ? need : mem;
        }
        cu_ws_reserve(b, mem);
    }
}

void cu_conv_key(int key[CU_KEY_MAX], int kind, const struct nn_tensor *inp, int out_channels,
                 int k, int stride, int pad, int have_data)
{
    memset(key, 0, sizeof(int) * CU_KEY_MAX);
    int at = 0;
    key[at++] = kind;
    for (int i = 0; i < 4; i++) {
        key[at++] = (int)inp->shape[i];
    }
    key[at++] = out_channels;
    key[at++] = k;
    key[at++] = stride;
    key[at++] = pad;
    key[at++] = have_data;
}

/* The float path's search: under the descriptor's math type (FMA unless
 * SWAV_CUDA_TF32=1), which its results keep. */
static const struct cu_conv_search cu_conv_search_f32 = {"", "", 0};

static struct cu_conv *cu_conv_get(struct cuda_backend *b, int kind, const struct nn_tensor *out,
                                   const struct nn_tensor *inp, const struct nn_tensor *weight,
                                   int stride, int pad, int have_data)
{
    SWAV_ASSERT(inp->ndim == 4 && out->ndim == 4 && weight->ndim == 4);
    SWAV_ASSERT(inp->layout == NN_LAYOUT_NCHW && out->layout == NN_LAYOUT_NCHW);
    SWAV_ASSERT(weight->shape[0] == out->shape[1] && weight->shape[1] == inp->shape[1]);
    int k = (int)weight->shape[2];
    SWAV_ASSERT(out->shape[2] == (inp->shape[2] + 2 * pad - k) / stride + 1);
    SWAV_ASSERT(out->shape[3] == (inp->shape[3] + 2 * pad - k) / stride + 1);
    int key[CU_KEY_MAX];
    cu_conv_key(key, kind, inp, (int)out->shape[1], k, stride, pad, have_data);
    struct cu_conv *c = (struct cu_conv *)cu_cache_find(b, key);
    if (c) {
        return c;
    }
    c = (struct cu_conv *)swav_xcalloc(1, sizeof *c);
    c->have_data = have_data;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&c->w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c->conv));
    cu_tensor_desc(c->x, inp);
    cu_tensor_desc(c->y, out);
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(c->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                           (int)weight->shape[0], (int)weight->shape[1], k, k));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c->conv, pad, pad, stride, stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(c->conv, b->conv_math));
    int on, oc, oh, ow;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(c->conv, c->x, c->w, &on, &oc, &oh, &ow));
    SWAV_ASSERT(on == out->shape[0] && oc == out->shape[1] && oh == out->shape[2] &&
                ow == out->shape[3]);
    /* backward data on the same descriptor as the filter's */
    cu_conv_find(b, &cu_conv_search_f32, kind == CU_CONV_FWD, c->x, c->w, c->y, c->conv,
                 have_data ? c->conv : NULL, &c->algo);
    cu_cache_put(b, key, c, cu_conv_free);
    return c;
}

static void cu_conv2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                              const struct nn_tensor *weight, int stride, int pad)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_conv2d_forward(be, out, inp, weight, stride, pad);
    }
    struct cuda_backend *b = cu_be(be);
    struct cu_conv *c = cu_conv_get(b, CU_CONV_FWD, out, inp, weight, stride, pad, 0);
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnConvolutionForward(b->dnn, &one, c->x, inp->data, c->w, weight->data, c->conv,
                                        c->algo.fwd, b->ws, b->ws_bytes, &zero, c->y, out->data));
}

static void cu_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp, struct nn_tensor *dweight,
                               const struct nn_tensor *dout, const struct nn_tensor *inp,
                               const struct nn_tensor *weight, int stride, int pad)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_conv2d_backward(be, dinp, dweight, dout, inp, weight, stride, pad);
    }
    struct cuda_backend *b = cu_be(be);
    struct cu_conv *c = cu_conv_get(b, CU_CONV_BWD, dout, inp, weight, stride, pad, dinp != NULL);
    const float one = 1.0f, zero = 0.0f;
    /* beta 1: the weight gradient accumulates (layers.h) */
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(b->dnn, &one, c->x, inp->data, c->y, dout->data,
                                               c->conv, c->algo.filter, b->ws, b->ws_bytes, &one,
                                               c->w, dweight->data));
    if (dinp) {
        SWAV_ASSERT(dinp->layout == NN_LAYOUT_NCHW);
        CUDNN_CHECK(cudnnConvolutionBackwardData(b->dnn, &one, c->w, weight->data, c->y,
                                                 dout->data, c->conv, c->algo.data, b->ws,
                                                 b->ws_bytes, &zero, c->x, dinp->data));
    }
}

/* ---- batch norm (cuDNN; eval-mode backward: a kernel) -------------------------------- */

struct cu_bn {
    cudnnTensorDescriptor_t x, c;
    int64_t channels;
    size_t numel;
};

static void cu_bn_free(void *op)
{
    struct cu_bn *n = (struct cu_bn *)op;
    cudnnDestroyTensorDescriptor(n->x);
    cudnnDestroyTensorDescriptor(n->c);
    free(n);
}

static struct cu_bn *cu_bn_get(struct cuda_backend *b, const struct nn_tensor *inp)
{
    SWAV_ASSERT(inp->ndim == 4 || inp->ndim == 2);
    int key[CU_KEY_MAX] = {0};
    int at = 0;
    key[at++] = CU_BN;
    key[at++] = inp->ndim;
    for (int i = 0; i < inp->ndim; i++) {
        key[at++] = (int)inp->shape[i];
    }
    struct cu_bn *n = (struct cu_bn *)cu_cache_find(b, key);
    if (n) {
        return n;
    }
    n = (struct cu_bn *)swav_xcalloc(1, sizeof *n);
    n->channels = inp->shape[1];
    n->numel = cu_numel_plain(inp);
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&n->x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&n->c));
    cu_tensor_desc(n->x, inp);
    CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(n->c, n->x, CUDNN_BATCHNORM_SPATIAL));
    /* scratch of the backward: masked gradient (numel) + 1/std (C) */
    cu_tmp_reserve(b, (n->numel + (size_t)n->channels + 64) * sizeof(float));
    cu_cache_put(b, key, n, cu_bn_free);
    return n;
}

__global__ void k_invstd_to_var(float *v, int64_t C, float eps)
{
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        float inv = v[c];
        v[c] = 1.0f / (inv * inv) - eps;
    }
}

__global__ void k_var_to_invstd(float *inv, const float *var, int64_t C, float eps)
{
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        inv[c] = rsqrtf(var[c] + eps);
    }
}

/* Eval-mode backward (fixed statistics): one block per channel. */
__global__ void k_bn_eval_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                              const float *w, const float *mean, const float *var, int64_t N,
                              int64_t C, int64_t HW, float eps)
{
    __shared__ double sh[33];
    int64_t c = blockIdx.x;
    float inv = rsqrtf(var[c] + eps), m = mean[c], g = w[c] * inv;
    double sdy = 0, sdyx = 0;
    for (int64_t j = threadIdx.x; j < N * HW; j += blockDim.x) {
        int64_t n = j / HW, i = j % HW;
        size_t o = (size_t)((n * C + c) * HW + i);
        float d = dy[o];
        sdy += d;
        sdyx += (double)d * ((x[o] - m) * inv);
        dx[o] = d * g;
    }
    sdy = cu_block_sum(sdy, sh);
    sdyx = cu_block_sum(sdyx, sh);
    if (threadIdx.x == 0) {
        dw[c] += (float)sdyx;
        db[c] += (float)sdy;
    }
}

static size_t cu_batchnorm_workspace_bytes(nn_backend_t *be, const struct nn_tensor *inp,
                                           unsigned flags)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_batchnorm_workspace_bytes(be, inp, flags);
    }
    struct cu_bn *n = cu_bn_get(cu_be(be), inp);
    return (flags & NN_BN_RELU) ? n->numel : 0; /* the ReLU mask, one byte each */
}

static void cu_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out,
                                 const struct nn_tensor *inp, const float *weight,
                                 const float *bias, float *running_mean, float *running_var,
                                 float *save_mean, float *save_var, void *workspace,
                                 unsigned flags, float momentum, float eps)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_batchnorm_forward(be, out, inp, weight, bias, running_mean, running_var,
                                         save_mean, save_var, workspace, flags, momentum, eps);
    }
    struct cuda_backend *b = cu_be(be);
    SWAV_ASSERT(out->layout == inp->layout && out->ndim == inp->ndim);
    struct cu_bn *n = cu_bn_get(b, inp);
    const float one = 1.0f, zero = 0.0f;
    if (flags & NN_BN_TRAIN) {
        /* cuDNN updates the running variance with the unbiased batch variance
         * (m/(m-1)), as PyTorch and the CPU backend do; it saves 1/sqrt(var+eps),
         * which is turned into the biased variance layers.h asks for. */
        CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
            b->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, n->x, inp->data, n->x, out->data, n->c,
            weight, bias, (double)momentum, running_mean, running_var, (double)eps, save_mean,
            save_var));
        k_invstd_to_var<<<cu_blocks((size_t)n->channels), TPB, 0, b->stream>>>(save_var, n->channels, eps);
        CUDA_LAUNCH_CHECK();
    } else {
        CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
            b->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, n->x, inp->data, n->x, out->data, n->c,
            weight, bias, running_mean, running_var, (double)eps));
    }
    if (flags & NN_BN_RELU) {
        k_relu_mask<<<cu_blocks(n->numel), TPB, 0, b->stream>>>(
            (float *)out->data, (unsigned char *)workspace, n->numel);
        CUDA_LAUNCH_CHECK();
    }
}

static void cu_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                                  float *dbias, const struct nn_tensor *dout,
                                  const struct nn_tensor *inp, const float *weight,
                                  const float *save_mean, const float *save_var,
                                  const void *workspace, unsigned flags, float eps)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_batchnorm_backward(be, dinp, dweight, dbias, dout, inp, weight, save_mean,
                                          save_var, workspace, flags, eps);
    }
    struct cuda_backend *b = cu_be(be);
    struct cu_bn *n = cu_bn_get(b, inp);
    const float *dy = (const float *)dout->data;
    float *masked = b->tmp;
    float *invstd = b->tmp + (n->numel + 15) / 16 * 16;
    if (flags & NN_BN_RELU) {
        SWAV_ASSERT(workspace != NULL);
        k_apply_mask<<<cu_blocks(n->numel), TPB, 0, b->stream>>>(
            masked, dy, (const unsigned char *)workspace, n->numel);
        CUDA_LAUNCH_CHECK();
        dy = masked;
    }
    if (flags & NN_BN_TRAIN) {
        k_var_to_invstd<<<cu_blocks((size_t)n->channels), TPB, 0, b->stream>>>(
            invstd, save_var, n->channels, eps);
        CUDA_LAUNCH_CHECK();
        const float one = 1.0f, zero = 0.0f;
        CUDNN_CHECK(cudnnBatchNormalizationBackward(
            b->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &one, n->x, inp->data, n->x, dy,
            n->x, dinp->data, n->c, weight, dweight, dbias, (double)eps, save_mean, invstd));
    } else {
        int64_t HW = inp->ndim == 4 ? inp->shape[2] * inp->shape[3] : 1;
        k_bn_eval_bwd<<<(unsigned)n->channels, TPB, 0, b->stream>>>(
            (float *)dinp->data, dweight, dbias, dy, (const float *)inp->data, weight, save_mean,
            save_var, inp->shape[0], n->channels, HW, eps);
        CUDA_LAUNCH_CHECK();
    }
}

/* ---- relu, add ------------------------------------------------------------------------- */

static void cu_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_relu_forward(be, out, inp);
    }
    size_t n = cu_numel_plain(inp);
    k_relu_fwd<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>((float *)out->data,
                                                            (const float *)inp->data, n);
    CUDA_LAUNCH_CHECK();
}

static void cu_relu_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout,
                             const struct nn_tensor *out)
{
    if (nn_dtype_is_lowp(out->dtype)) {
        return cu_lowp_relu_backward(be, dinp, dout, out);
    }
    size_t n = cu_numel_plain(out);
    k_relu_bwd<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>(
        (float *)dinp->data, (const float *)dout->data, (const float *)out->data, n);
    CUDA_LAUNCH_CHECK();
}

static void cu_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a,
                           const struct nn_tensor *bb, int relu)
{
    if (nn_dtype_is_lowp(a->dtype)) {
        return cu_lowp_add_forward(be, out, a, bb, relu);
    }
    SWAV_ASSERT(a->layout == bb->layout && a->layout == out->layout);
    size_t n = cu_numel_plain(a);
    k_add<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>(
        (float *)out->data, (const float *)a->data, (const float *)bb->data, n, relu);
    CUDA_LAUNCH_CHECK();
}

static void cu_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x)
{
    if (nn_dtype_is_lowp(y->dtype)) {
        return cu_lowp_accumulate(be, y, x);
    }
    SWAV_ASSERT(y->layout == x->layout && nn_tensor_numel(y) == nn_tensor_numel(x));
    size_t n = cu_numel_plain(y);
    k_accum<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>((float *)y->data,
                                                         (const float *)x->data, n);
    CUDA_LAUNCH_CHECK();
}

/* ---- max pooling: the workspace keeps each output's argmax (h * W + w) so
 * that the backward, which gets neither input nor output, can route the
 * gradient; the backward gathers (no atomics: deterministic). ------------------- */

__global__ void k_maxpool_fwd(float *y, int *idx, const float *x, int64_t NC, int H, int W,
                              int Ho, int Wo, int k, int s, int p)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= NC * Ho * Wo) {
        return;
    }
    int ow = (int)(i % Wo), oh = (int)((i / Wo) % Ho);
    int64_t nc = i / ((int64_t)Ho * Wo);
    const float *xp = x + nc * H * W;
    float best = -INFINITY;
    int arg = -1;
    for (int kh = 0; kh < k; kh++) {
        int h = oh * s - p + kh;
        if (h < 0 || h >= H) {
            continue;
        }
        for (int kw = 0; kw < k; kw++) {
            int w = ow * s - p + kw;
            if (w < 0 || w >= W) {
                continue;
            }
            float v = xp[h * W + w];
            if (v > best || arg < 0 || isnan(v)) {
                best = v;
                arg = h * W + w;
            }
        }
    }
    y[i] = best;
    idx[i] = arg;
}

__global__ void k_maxpool_bwd(float *dx, const float *dy, const int *idx, int64_t NC, int H, int W,
                              int Ho, int Wo, int k, int s, int p)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= NC * H * W) {
        return;
    }
    int w = (int)(i % W), h = (int)((i / W) % H);
    int64_t nc = i / ((int64_t)H * W);
    int me = h * W + w;
    /* outputs whose window covers (h, w): oh*s - p <= h <= oh*s - p + k - 1 */
    int oh0 = h + p - k + 1 > 0 ? (h + p - k + 1 + s - 1) / s : 0;
    int oh1 = min((h + p) / s, Ho - 1);
    int ow0 = w + p - k + 1 > 0 ? (w + p - k + 1 + s - 1) / s : 0;
    int ow1 = min((w + p) / s, Wo - 1);
    float g = 0.0f;
    for (int oh = oh0; oh <= oh1; oh++) {
        for (int ow = ow0; ow <= ow1; ow++) {
            int64_t o = (nc * Ho + oh) * Wo + ow;
            if (idx[o] == me) {
                g += dy[o];
            }
        }
    }
    dx[i] = g;
}

static size_t cu_maxpool2d_workspace_bytes(nn_backend_t *be, const struct nn_tensor *out,
                                           const struct nn_tensor *inp, int k, int stride, int pad)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_maxpool2d_workspace_bytes(be, out, inp, k, stride, pad);
    }
    return cu_numel_plain(out) * sizeof(int);
}

static void cu_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out,
                                 const struct nn_tensor *inp, void *workspace, int k, int stride,
                                 int pad)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_maxpool2d_forward(be, out, inp, workspace, k, stride, pad);
    }
    SWAV_ASSERT(inp->ndim == 4 && out->ndim == 4 && workspace != NULL);
    SWAV_ASSERT(out->shape[2] == (inp->shape[2] + 2 * pad - k) / stride + 1);
    SWAV_ASSERT(out->shape[3] == (inp->shape[3] + 2 * pad - k) / stride + 1);
    size_t n = cu_numel_plain(out);
    k_maxpool_fwd<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>(
        (float *)out->data, (int *)workspace, (const float *)inp->data,
        inp->shape[0] * inp->shape[1], (int)inp->shape[2], (int)inp->shape[3], (int)out->shape[2],
        (int)out->shape[3], k, stride, pad);
    CUDA_LAUNCH_CHECK();
}

static void cu_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                  const struct nn_tensor *dout, const void *workspace, int k,
                                  int stride, int pad)
{
    if (nn_dtype_is_lowp(dinp->dtype)) {
        return cu_lowp_maxpool2d_backward(be, dinp, dout, workspace, k, stride, pad);
    }
    size_t n = cu_numel_plain(dinp);
    k_maxpool_bwd<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>(
        (float *)dinp->data, (const float *)dout->data, (const int *)workspace,
        dinp->shape[0] * dinp->shape[1], (int)dinp->shape[2], (int)dinp->shape[3],
        (int)dout->shape[2], (int)dout->shape[3], k, stride, pad);
    CUDA_LAUNCH_CHECK();
}

/* ---- global average pooling: one warp per (n, c) ----------------------------------------- */

__global__ void k_avgpool_fwd(float *y, const float *x, int64_t NC, int64_t HW)
{
    int64_t nc = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (nc >= NC) {
        return;
    }
    float s = 0.0f;
    for (int64_t i = lane; i < HW; i += 32) {
        s += x[nc * HW + i];
    }
    for (int o = 16; o > 0; o >>= 1) {
        s += __shfl_down_sync(0xffffffffu, s, o);
    }
    if (lane == 0) {
        y[nc] = s / (float)HW;
    }
}

__global__ void k_avgpool_bwd(float *dx, const float *dy, int64_t NC, int64_t HW)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < NC * HW) {
        dx[i] = dy[i / HW] / (float)HW;
    }
}

static void cu_avgpool_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_avgpool_forward(be, out, inp);
    }
    SWAV_ASSERT(inp->ndim == 4 && inp->layout == NN_LAYOUT_NCHW);
    int64_t NC = inp->shape[0] * inp->shape[1], HW = inp->shape[2] * inp->shape[3];
    SWAV_ASSERT(out->ndim == 2 && out->shape[0] == inp->shape[0] && out->shape[1] == inp->shape[1]);
    k_avgpool_fwd<<<cu_blocks((size_t)NC * 32), TPB, 0, cu_be(be)->stream>>>(
        (float *)out->data, (const float *)inp->data, NC, HW);
    CUDA_LAUNCH_CHECK();
}

static void cu_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout)
{
    if (nn_dtype_is_lowp(dinp->dtype)) {
        return cu_lowp_avgpool_backward(be, dinp, dout);
    }
    SWAV_ASSERT(dinp->ndim == 4 && dinp->layout == NN_LAYOUT_NCHW);
    int64_t NC = dinp->shape[0] * dinp->shape[1], HW = dinp->shape[2] * dinp->shape[3];
    k_avgpool_bwd<<<cu_blocks((size_t)(NC * HW)), TPB, 0, cu_be(be)->stream>>>(
        (float *)dinp->data, (const float *)dout->data, NC, HW);
    CUDA_LAUNCH_CHECK();
}

/* ---- linear (cuBLAS, column-major view of row-major matrices) ------------------------------ */

__global__ void k_bias_rows(float *y, const float *bias, int64_t N, int64_t O)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * O) {
        y[i] = bias[i % O];
    }
}

/* dbias[o] += sum_n dy[n, o], one thread per column, rows in order. */
__global__ void k_col_sum_acc(float *dbias, const float *dy, int64_t N, int64_t O)
{
    int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o < O) {
        double s = 0;
        for (int64_t n = 0; n < N; n++) {
            s += dy[n * O + o];
        }
        dbias[o] += (float)s;
    }
}

static void cu_linear_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                              const float *weight, const float *bias)
{
    struct cuda_backend *b = cu_be(be);
    int N = (int)inp->shape[0], In = (int)inp->shape[1], O = (int)out->shape[1];
    SWAV_ASSERT(out->shape[0] == N);
    float one = 1.0f, beta = 0.0f;
    if (bias) {
        k_bias_rows<<<cu_blocks((size_t)N * O), TPB, 0, b->stream>>>((float *)out->data, bias, N, O);
        CUDA_LAUNCH_CHECK();
        beta = 1.0f;
    }
    /* out^T (O, N) = W (O, I) . inp^T (I, N) */
    CUBLAS_CHECK(cublasSgemm(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, O, N, In, &one, weight, In,
                             (const float *)inp->data, In, &beta, (float *)out->data, O));
}

static void cu_linear_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                               float *dbias, const struct nn_tensor *dout,
                               const struct nn_tensor *inp, const float *weight)
{
    struct cuda_backend *b = cu_be(be);
    int N = (int)inp->shape[0], In = (int)inp->shape[1], O = (int)dout->shape[1];
    const float *dy = (const float *)dout->data;
    float one = 1.0f, zero = 0.0f;
    if (dinp) {
        /* dinp^T (I, N) = W^T (I, O) . dy^T (O, N) */
        CUBLAS_CHECK(cublasSgemm(b->blas, CUBLAS_OP_N, CUBLAS_OP_N, In, N, O, &one, weight, In, dy,
                                 O, &zero, (float *)dinp->data, In));
    }
    /* dW^T (I, O) += inp^T (I, N) . dy (N, O) */
    CUBLAS_CHECK(cublasSgemm(b->blas, CUBLAS_OP_N, CUBLAS_OP_T, In, O, N, &one,
                             (const float *)inp->data, In, dy, O, &one, dweight, In));
    if (dbias) {
        k_col_sum_acc<<<cu_blocks((size_t)O), TPB, 0, b->stream>>>(dbias, dy, N, O);
        CUDA_LAUNCH_CHECK();
    }
}

/* ---- row-wise ops: one block per row -------------------------------------------------------- */

__global__ void k_l2n_fwd(float *y, float *norms, const float *x, int64_t D)
{
    __shared__ double sh[33];
    const float *xr = x + (int64_t)blockIdx.x * D;
    float *yr = y + (int64_t)blockIdx.x * D;
    double s = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        s += (double)xr[d] * xr[d];
    }
    s = cu_block_sum(s, sh);
    float nrm = (float)sqrt(s);
    if (threadIdx.x == 0 && norms) {
        norms[blockIdx.x] = nrm;
    }
    float inv = 1.0f / fmaxf(nrm, 1e-12f);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        yr[d] = xr[d] * inv;
    }
}

__global__ void k_l2n_bwd(float *dx, const float *dy, const float *y, const float *norms, int64_t D)
{
    __shared__ double sh[33];
    int64_t off = (int64_t)blockIdx.x * D;
    float nrm = norms[blockIdx.x];
    if (nrm <= 1e-12f) {
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            dx[off + d] = dy[off + d] / 1e-12f;
        }
        return;
    }
    double dot = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        dot += (double)y[off + d] * dy[off + d];
    }
    dot = cu_block_sum(dot, sh);
    float inv = 1.0f / nrm;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        dx[off + d] = (dy[off + d] - y[off + d] * (float)dot) * inv;
    }
}

__global__ void k_log_softmax(float *y, const float *x, int64_t K, float scale)
{
    __shared__ float shf[33];
    __shared__ double sh[33];
    const float *xr = x + (int64_t)blockIdx.x * K;
    float *yr = y + (int64_t)blockIdx.x * K;
    float m = -INFINITY;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        m = fmaxf(m, scale * xr[k]);
    }
    m = cu_block_max(m, shf);
    double s = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        s += exp((double)(scale * xr[k] - m));
    }
    s = cu_block_sum(s, sh);
    float lse = m + (float)log(s);
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        yr[k] = scale * xr[k] - lse;
    }
}

__global__ void k_log_softmax_bwd(float *dx, const float *dy, const float *y, int64_t K, float scale)
{
    __shared__ double sh[33];
    int64_t off = (int64_t)blockIdx.x * K;
    double s = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        s += dy[off + k];
    }
    s = cu_block_sum(s, sh);
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        dx[off + k] = scale * (dy[off + k] - expf(y[off + k]) * (float)s);
    }
}

static void cu_l2_normalize_forward(nn_backend_t *be, struct nn_tensor *out,
                                    const struct nn_tensor *inp, float *norms)
{
    k_l2n_fwd<<<(unsigned)inp->shape[0], TPB, 0, cu_be(be)->stream>>>(
        (float *)out->data, norms, (const float *)inp->data, inp->shape[1]);
    CUDA_LAUNCH_CHECK();
}

static void cu_l2_normalize_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                     const struct nn_tensor *dout, const struct nn_tensor *out,
                                     const float *norms)
{
    k_l2n_bwd<<<(unsigned)out->shape[0], TPB, 0, cu_be(be)->stream>>>(
        (float *)dinp->data, (const float *)dout->data, (const float *)out->data, norms,
        out->shape[1]);
    CUDA_LAUNCH_CHECK();
}

static void cu_log_softmax_forward(nn_backend_t *be, struct nn_tensor *out,
                                   const struct nn_tensor *inp, float scale)
{
    k_log_softmax<<<(unsigned)inp->shape[0], TPB, 0, cu_be(be)->stream>>>(
        (float *)out->data, (const float *)inp->data, inp->shape[1], scale);
    CUDA_LAUNCH_CHECK();
}

static void cu_log_softmax_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                    const struct nn_tensor *dout, const struct nn_tensor *out,
                                    float scale)
{
    k_log_softmax_bwd<<<(unsigned)out->shape[0], TPB, 0, cu_be(be)->stream>>>(
        (float *)dinp->data, (const float *)dout->data, (const float *)out->data, out->shape[1],
        scale);
    CUDA_LAUNCH_CHECK();
}

/* ---- losses --------------------------------------------------------------------------------- */

#define CU_MAX_ASSIGN 16
struct cu_assign {
    int a[CU_MAX_ASSIGN];
};

/* part[(i * n_crops + v) * bs + b] = sum_k q_i[b, k] logp_v[b, k] (0 where v is i's crop) */
__global__ void k_swav_dots(double *part, const float *logp, const float *q, int64_t bs, int64_t K,
                            int n_crops, struct cu_assign as)
{
    __shared__ double sh[33];
    int64_t b = blockIdx.x;
    int iv = blockIdx.y, i = iv / n_crops, v = iv % n_crops;
    double s = 0;
    if (v != as.a[i]) {
        const float *qr = q + ((int64_t)i * bs + b) * K;
        const float *lr = logp + ((int64_t)v * bs + b) * K;
        for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
            s += (double)qr[k] * lr[k];
        }
    }
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) {
        part[(int64_t)iv * bs + b] = s;
    }
}

/* out[0] = sum of part[0..n) in a fixed order (one block). */
__global__ void k_sum_fixed(double *out, const double *part, int64_t n)
{
    __shared__ double sh[33];
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        s += part[i];
    }
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) {
        out[0] = s;
    }
}

/* row r = v * bs + b of dscores */
__global__ void k_swav_bwd(float *g, const float *logp, const float *q, int64_t bs, int64_t K,
                           int n_crops, int n_assign, struct cu_assign as, float c)
{
    __shared__ double sh[33];
    __shared__ float qs[CU_MAX_ASSIGN];
    int64_t r = blockIdx.x, v = r / bs, b = r % bs;
    for (int i = 0; i < n_assign; i++) {
        double s = 0;
        const float *qr = q + ((int64_t)i * bs + b) * K;
        for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
            s += qr[k];
        }
        s = cu_block_sum(s, sh);
        if (threadIdx.x == 0) {
            qs[i] = (float)s;
        }
    }
    __syncthreads();
    const float *lr = logp + r * K;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        float p = expf(lr[k]), acc = 0.0f;
        for (int i = 0; i < n_assign; i++) {
            if (v != as.a[i]) {
                acc += c * (p * qs[i] - q[((int64_t)i * bs + b) * K + k]);
            }
        }
        g[r * K + k] = acc;
    }
}

static double cu_read_red(struct cuda_backend *b, const double *dev)
{
    CUDA_CHECK(cudaMemcpyAsync(b->host_red, dev, sizeof(double), cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    return b->host_red[0];
}

static struct cu_assign cu_assign_of(const struct nn_swav_loss_cfg *cfg)
{
    SWAV_ASSERT(cfg->n_assign >= 1 && cfg->n_assign <= CU_MAX_ASSIGN && cfg->n_crops > 1);
    struct cu_assign as;
    memset(&as, 0, sizeof as);
    for (int i = 0; i < cfg->n_assign; i++) {
        as.a[i] = cfg->crops_for_assign[i];
    }
    return as;
}

static float cu_swav_loss_forward(nn_backend_t *be, float *logp, const struct nn_tensor *scores,
                                  const float *q, const struct nn_swav_loss_cfg *cfg)
{
    struct cuda_backend *b = cu_be(be);
    int64_t bs = cfg->bs, K = scores->shape[1];
    SWAV_ASSERT(scores->shape[0] == (int64_t)cfg->n_crops * bs);
    struct cu_assign as = cu_assign_of(cfg);
    k_log_softmax<<<(unsigned)scores->shape[0], TPB, 0, b->stream>>>(
        logp, (const float *)scores->data, K, 1.0f / cfg->temperature);
    CUDA_LAUNCH_CHECK();
    size_t np = (size_t)cfg->n_assign * cfg->n_crops * bs;
    cu_red_reserve(b, np + 1);
    dim3 grid((unsigned)bs, (unsigned)(cfg->n_assign * cfg->n_crops));
    k_swav_dots<<<grid, TPB, 0, b->stream>>>(b->red + 1, logp, q, bs, K, cfg->n_crops, as);
    CUDA_LAUNCH_CHECK();
    k_sum_fixed<<<1, 1024, 0, b->stream>>>(b->red, b->red + 1, (int64_t)np);
    CUDA_LAUNCH_CHECK();
    double s = cu_read_red(b, b->red);
    return (float)(-s / ((double)bs * (cfg->n_crops - 1) * cfg->n_assign));
}

static void cu_swav_loss_backward(nn_backend_t *be, struct nn_tensor *dscores, const float *logp,
                                  const float *q, const struct nn_swav_loss_cfg *cfg)
{
    struct cuda_backend *b = cu_be(be);
    int64_t bs = cfg->bs, K = dscores->shape[1];
    struct cu_assign as = cu_assign_of(cfg);
    float c = 1.0f / (cfg->temperature * (float)bs * (float)(cfg->n_crops - 1) * (float)cfg->n_assign);
    k_swav_bwd<<<(unsigned)(cfg->n_crops * bs), TPB, 0, b->stream>>>(
        (float *)dscores->data, logp, q, bs, K, cfg->n_crops, cfg->n_assign, as, c);
    CUDA_LAUNCH_CHECK();
}

__global__ void k_row_dot(double *part, const float *a, const float *bm, int64_t K)
{
    __shared__ double sh[33];
    int64_t off = (int64_t)blockIdx.x * K;
    double s = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        s += (double)a[off + k] * bm[off + k];
    }
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) {
        part[blockIdx.x] = s;
    }
}

__global__ void k_ce_soft_bwd(float *g, const float *logp, const float *t, int64_t N, int64_t K)
{
    __shared__ double sh[33];
    int64_t off = (int64_t)blockIdx.x * K;
    double s = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        s += t[off + k];
    }
    float ts = (float)cu_block_sum(s, sh);
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        g[off + k] = (expf(logp[off + k]) * ts - t[off + k]) / (float)N;
    }
}

/* part[n] = logp[n, label]; a label out of range gives NaN (the loss shows it). */
__global__ void k_ce_gather(double *part, const float *logp, const int32_t *labels, int64_t N,
                            int64_t K)
{
    int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N) {
        int32_t l = labels[n];
        part[n] = (l >= 0 && l < K) ? (double)logp[n * K + l] : nan("");
    }
}

__global__ void k_ce_bwd(float *g, const float *logp, const int32_t *labels, int64_t N, int64_t K)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * K) {
        int64_t n = i / K, k = i % K;
        g[i] = (expf(logp[i]) - (k == labels[n] ? 1.0f : 0.0f)) / (float)N;
    }
}

static float cu_cross_entropy_soft_forward(nn_backend_t *be, float *logp,
                                           const struct nn_tensor *logits, const float *target)
{
    struct cuda_backend *b = cu_be(be);
    int64_t N = logits->shape[0], K = logits->shape[1];
    k_log_softmax<<<(unsigned)N, TPB, 0, b->stream>>>(logp, (const float *)logits->data, K, 1.0f);
    CUDA_LAUNCH_CHECK();
    cu_red_reserve(b, (size_t)N + 1);
    k_row_dot<<<(unsigned)N, TPB, 0, b->stream>>>(b->red + 1, target, logp, K);
    CUDA_LAUNCH_CHECK();
    k_sum_fixed<<<1, 1024, 0, b->stream>>>(b->red, b->red + 1, N);
    CUDA_LAUNCH_CHECK();
    return (float)(-cu_read_red(b, b->red) / (double)N);
}

static void cu_cross_entropy_soft_backward(nn_backend_t *be, struct nn_tensor *dlogits,
                                           const float *logp, const float *target)
{
    int64_t N = dlogits->shape[0], K = dlogits->shape[1];
    k_ce_soft_bwd<<<(unsigned)N, TPB, 0, cu_be(be)->stream>>>((float *)dlogits->data, logp, target,
                                                              N, K);
    CUDA_LAUNCH_CHECK();
}

static float cu_cross_entropy_forward(nn_backend_t *be, float *logp, const struct nn_tensor *logits,
                                      const int32_t *labels)
{
    struct cuda_backend *b = cu_be(be);
    int64_t N = logits->shape[0], K = logits->shape[1];
    k_log_softmax<<<(unsigned)N, TPB, 0, b->stream>>>(logp, (const float *)logits->data, K, 1.0f);
    CUDA_LAUNCH_CHECK();
    cu_red_reserve(b, (size_t)N + 1);
    k_ce_gather<<<cu_blocks((size_t)N), TPB, 0, b->stream>>>(b->red + 1, logp, labels, N, K);
    CUDA_LAUNCH_CHECK();
    k_sum_fixed<<<1, 1024, 0, b->stream>>>(b->red, b->red + 1, N);
    CUDA_LAUNCH_CHECK();
    return (float)(-cu_read_red(b, b->red) / (double)N);
}

static void cu_cross_entropy_backward(nn_backend_t *be, struct nn_tensor *dlogits,
                                      const float *logp, const int32_t *labels)
{
    int64_t N = dlogits->shape[0], K = dlogits->shape[1];
    k_ce_bwd<<<cu_blocks((size_t)(N * K)), TPB, 0, cu_be(be)->stream>>>((float *)dlogits->data,
                                                                        logp, labels, N, K);
    CUDA_LAUNCH_CHECK();
}

/* ---- the table ------------------------------------------------------------------------------- */

static struct nn_backend_iface cu_iface;

static void cu_iface_fill(void)
{
    struct nn_backend_iface *t = &cu_iface;
    t->name = "cuda";
    t->destroy = cu_destroy;
    t->alloc = cu_alloc;
    t->free = cu_free;
    t->sync = cu_sync;
    t->cache_size = cu_cache_size;
    t->weights_updated = cu_weights_updated;
    t->lowp_nhwc = 1;
    t->convert = cu_lowp_convert;
    cu_iface_fill_step(t);
    t->conv2d_forward = cu_conv2d_forward;
    t->conv2d_backward = cu_conv2d_backward;
    t->batchnorm_workspace_bytes = cu_batchnorm_workspace_bytes;
    t->batchnorm_forward = cu_batchnorm_forward;
    t->batchnorm_backward = cu_batchnorm_backward;
    t->batchnorm_stats = cu_batchnorm_stats;
    t->batchnorm_backward_elemt = cu_batchnorm_backward_elemt;
    t->relu_forward = cu_relu_forward;
    t->relu_backward = cu_relu_backward;
    t->add_forward = cu_add_forward;
    t->accumulate = cu_accumulate;
    t->maxpool2d_workspace_bytes = cu_maxpool2d_workspace_bytes;
    t->maxpool2d_forward = cu_maxpool2d_forward;
    t->maxpool2d_backward = cu_maxpool2d_backward;
    t->avgpool_forward = cu_avgpool_forward;
    t->avgpool_backward = cu_avgpool_backward;
    t->linear_forward = cu_linear_forward;
    t->linear_backward = cu_linear_backward;
    t->l2_normalize_forward = cu_l2_normalize_forward;
    t->l2_normalize_backward = cu_l2_normalize_backward;
    t->log_softmax_forward = cu_log_softmax_forward;
    t->log_softmax_backward = cu_log_softmax_backward;
    t->swav_loss_forward = cu_swav_loss_forward;
    t->swav_loss_backward = cu_swav_loss_backward;
    t->cross_entropy_soft_forward = cu_cross_entropy_soft_forward;
    t->cross_entropy_soft_backward = cu_cross_entropy_soft_backward;
    t->cross_entropy_forward = cu_cross_entropy_forward;
    t->cross_entropy_backward = cu_cross_entropy_backward;
}

static char cu_count_error[160];

extern "C" const char *nn_cuda_count_error(void)
{
    return cu_count_error;
}

extern "C" int nn_cuda_device_count(void)
{
    return swav_cuda_count(cu_count_error, sizeof cu_count_error);
}

/* nn_backend_cuda_new gives up: what it had made so far goes (the handles
 * and the stream are made in that order, the missing ones are NULL). */
static nn_backend_t *cu_new_failed(struct cuda_backend *b)
{
    if (b->dnn) {
        cudnnDestroy(b->dnn);
    }
    if (b->stream) {
        cudaStreamDestroy(b->stream);
    }
    free(b);
    return NULL;
}

extern "C" nn_backend_t *nn_backend_cuda_new(int device)
{
    int n = nn_cuda_device_count();
    if (device < 0 || device >= n) {
        LOG_ERROR("cuda: device %d asked for, %d present", device, n);
        return NULL;
    }
    /* nn_backend_alloc: device memory (cudaMalloc), which the host reaches
     * only through nn_backend_copy; SWAV_CUDA_MEMORY=managed gives managed
     * memory instead, which host code may read after nn_backend_sync (the
     * CUDA tests compare buffers that way).  Anything else is refused. */
    const char *mem = getenv("SWAV_CUDA_MEMORY");
    if (mem && *mem && strcmp(mem, "device") != 0 && strcmp(mem, "managed") != 0) {
        LOG_ERROR("cuda: SWAV_CUDA_MEMORY=%s: expected device (the default) or managed", mem);
        return NULL;
    }
    cu_iface_fill();
    struct cuda_backend *b = (struct cuda_backend *)swav_xcalloc(1, sizeof *b);
    b->base.iface = &cu_iface;
    b->device = device;
    b->managed = mem && !strcmp(mem, "managed");
    /* The device's first touches fail cleanly (NULL and a line saying why):
     * a GPU in exclusive-process mode that another process holds, a driver or
     * library that does not start; after them, a failure is a bug: abort. */
    cudaError_t st = cudaSetDevice(device);
    if (st == cudaSuccess) {
        st = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking);
    }
    if (st != cudaSuccess) {
        LOG_ERROR("cuda: device %d does not start: %s (%s)%s", device, cudaGetErrorString(st),
                  cudaGetErrorName(st),
                  st == cudaErrorDevicesUnavailable
                      ? ": is it in exclusive-process mode and held by another process "
                        "(nvidia-smi's compute mode)? Put the assigner and evaluator on the CPU "
                        "(swav train --assigner_device cpu --eval_device cpu) or on another GPU"
                      : "");
        cudaGetLastError();
        return cu_new_failed(b);
    }
    cudnnStatus_t dst = cudnnCreate(&b->dnn);
    if (dst != CUDNN_STATUS_SUCCESS) {
        LOG_ERROR("cuda: cudnnCreate on device %d: %s (is libcudnn.so.9 the version we were "
                  "built against, %d?)", device, cudnnGetErrorString(dst), CUDNN_VERSION);
        return cu_new_failed(b);
    }
    CUDNN_CHECK(cudnnSetStream(b->dnn, b->stream));
    cublasStatus_t bst = cublasCreate(&b->blas);
    if (bst != CUBLAS_STATUS_SUCCESS) {
        LOG_ERROR("cuda: cublasCreate on device %d: %s", device, cublasGetStatusString(bst));
        return cu_new_failed(b);
    }
    CUBLAS_CHECK(cublasSetStream(b->blas, b->stream));
    const char *tf32 = getenv("SWAV_CUDA_TF32");
    int allow_tf32 = tf32 && tf32[0] == '1';
    b->conv_math = allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    CUBLAS_CHECK(cublasSetMathMode(b->blas, allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                       : CUBLAS_PEDANTIC_MATH));
    CUDA_CHECK(cudaMallocHost((void **)&b->host_red, 64));
    cu_red_reserve(b, 4096);
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    LOG_INFO("cuda: device %d %s (sm_%d%d, %.1f GiB), cuDNN %zu, tf32 %s, %s memory", device,
             prop.name, prop.major, prop.minor, prop.totalGlobalMem / 1073741824.0,
             cudnnGetVersion(), allow_tf32 ? "on" : "off", b->managed ? "managed" : "device");
    return &b->base;
}
