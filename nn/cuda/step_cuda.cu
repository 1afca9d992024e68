/* The rest of a SwAV step on the device: crop normalization, prototype
 * normalization, Sinkhorn-Knopp, and SGD + LARC over the flat parameter
 * buffer (nn/optim.h's semantics, same float formulas as optim.c).
 *
 * NEVER RUN ON A GPU when written: see docs/cuda.md. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

extern "C" int nn_cuda_pointer_usable(const void *p)
{
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) {
        return 1;
    }
    int dev = 0, pageable = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev) == cudaSuccess &&
        pageable) {
        return 2; /* plain host memory, but the GPU reaches it (HMM or ATS) */
    }
    cudaGetLastError();
    return 0;
}

/* ---- crops: uint8 NHWC -> float NCHW, the reference's mean/std ---------------- */

/* A loader's batch of one resolution: src (batch, n_crops, h, w, 3) image-
 * major -> dst (n_crops * batch, 3, h, w) crop-major, one thread per pixel
 * of dst's rows; the constants and float formula of nn_normalize_u8 (tensor.c). */
__global__ void k_normalize_crops(float *dst, const uint8_t *src, int64_t batch, int64_t n_crops,
                                  int64_t plane)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; /* over rows * plane */
    if (i >= batch * n_crops * plane) {
        return;
    }
    const float mean[3] = {0.485f, 0.456f, 0.406f};
    const float stdv[3] = {0.228f, 0.224f, 0.225f};
    int64_t row = i / plane, p = i % plane;
    int64_t c = row / batch, img = row % batch; /* dst row = crop c of image img */
    const uint8_t *s = src + ((img * n_crops + c) * plane + p) * 3;
    float *d = dst + row * plane * 3 + p;
    for (int k = 0; k < 3; k++) {
        float scale = 1.0f / (255.0f * stdv[k]), shift = -mean[k] / stdv[k];
        d[k * plane] = (float)s[k] * scale + shift;
    }
}

/* ---- the table's memory operations ------------------------------------------------ */

int cu_host_kind(const void *p)
{
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return CU_HOST_PAGEABLE; /* older runtimes: unregistered host memory is an error here */
    }
    return a.type == cudaMemoryTypeUnregistered ? CU_HOST_PAGEABLE
           : a.type == cudaMemoryTypeHost       ? CU_HOST_PINNED
                                                : CU_DEVICE;
}

int cu_is_host(const void *p)
{
    return cu_host_kind(p) != CU_DEVICE;
}

static void cu_copy(nn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    struct cuda_backend *b = cu_be(be);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, b->stream));
    /* the bytes are there on return, and src is the caller's again: a pageable
     * source is staged by the driver before the call returns, but the DMA reads
     * a pinned one later */
    if (cu_is_host(dst) || cu_host_kind(src) == CU_HOST_PINNED) {
        CUDA_CHECK(cudaStreamSynchronize(b->stream));
    }
}

static void cu_zero(nn_backend_t *be, void *p, size_t bytes)
{
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cu_be(be)->stream));
}

__global__ void k_scale(float *x, size_t n, float s)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] *= s;
    }
}

static void cu_scale(nn_backend_t *be, float *x, size_t n, float s)
{
    k_scale<<<cu_blocks(n), TPB, 0, cu_be(be)->stream>>>(x, n, s);
    CUDA_LAUNCH_CHECK();
}

__global__ void k_add_at(float *base, const int64_t *off, int n, float v)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        base[off[i]] += v; /* the offsets of one call are distinct */
    }
}

static void cu_add_at(nn_backend_t *be, float *base, const int64_t *offsets, int n, float value)
{
    struct cuda_backend *b = cu_be(be);
    cu_grow(b, (void **)&b->idx, &b->idx_bytes, (size_t)n * sizeof(int64_t));
    /* pageable source: staged before the call returns; ordered on the stream
     * after the previous kernel that read b->idx */
    CUDA_CHECK(cudaMemcpyAsync(b->idx, offsets, (size_t)n * sizeof(int64_t), cudaMemcpyDefault,
                               b->stream));
    if (cu_host_kind(offsets) == CU_HOST_PINNED) { /* read by the DMA later */
        CUDA_CHECK(cudaStreamSynchronize(b->stream));
    }
    k_add_at<<<cu_blocks((size_t)n), TPB, 0, b->stream>>>(base, b->idx, n, value);
    CUDA_LAUNCH_CHECK();
}

/* *flag = 1 when some x[i] has an all-ones exponent (inf or NaN), by the
 * bits: no flag about finite math can fold it away.  Threads that find one
 * all store the same 1 (no atomics needed); a grid-stride loop. */
__global__ void k_nonfinite(int *flag, const float *x, size_t n)
{
    size_t stride = (size_t)gridDim.x * blockDim.x;
    int any = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        any |= (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;
    }
    if (any) {
        *flag = 1;
    }
}

static int cu_nonfinite(nn_backend_t *be, const float *x, size_t n)
{
    struct cuda_backend *b = cu_be(be);
    if (!b->flag) {
        CUDA_CHECK(cudaMalloc((void **)&b->flag, sizeof(int)));
    }
    CUDA_CHECK(cudaMemsetAsync(b->flag, 0, sizeof(int), b->stream));
    size_t blocks = cu_blocks(n);
    blocks = blocks < 4096 ? blocks : 4096; /* a few waves; each thread strides on */
    k_nonfinite<<<(unsigned)blocks, TPB, 0, b->stream>>>(b->flag, x, n);
    CUDA_LAUNCH_CHECK();
    int h = 0;
    CUDA_CHECK(cudaMemcpyAsync(&h, b->flag, sizeof(int), cudaMemcpyDeviceToHost, b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
    return h != 0;
}

/* normalize_crops' staging.  The host-to-device copy of a loader's batch
 * runs on the copy stream, so that its DMA overlaps the compute stream's
 * queue (the previous step's backward and optimizer, which the host has not
 * waited for); the normalizing kernel on the compute stream waits for the
 * copy (event `copied`), and the next copy into the same buffer waits for
 * that kernel (event `used`).  One buffer per destination (the trainer's
 * resolution groups), so no group's copy waits for another's kernel. */
struct cu_stage {
    const float *dst;
    unsigned char *buf;
    size_t bytes;
    cudaEvent_t copied, used; /* never recorded yet: waiting on them is a no-op */
};
enum { CU_MAX_STAGES = 8 };

static struct cu_stage *cu_stage_for(struct cuda_backend *b, const float *dst, size_t bytes)
{
    if (!b->stages) {
        b->stages = (struct cu_stage *)swav_xcalloc(CU_MAX_STAGES, sizeof *b->stages);
        CUDA_CHECK(cudaStreamCreateWithFlags(&b->copy_stream, cudaStreamNonBlocking));
    }
    struct cu_stage *s = NULL;
    for (int i = 0; i < b->n_stages && !s; i++) {
        s = b->stages[i].dst == dst ? &b->stages[i] : NULL;
    }
    if (!s) {
        /* a new destination; past CU_MAX_STAGES (callers with many inputs,
         * never the trainer) the slots are shared round-robin: correct, as
         * the events order every use of a slot, only less overlapped */
        if (b->n_stages < CU_MAX_STAGES) {
            s = &b->stages[b->n_stages++];
            CUDA_CHECK(cudaEventCreateWithFlags(&s->copied, cudaEventDisableTiming));
            CUDA_CHECK(cudaEventCreateWithFlags(&s->used, cudaEventDisableTiming));
        } else {
            s = &b->stages[b->stage_next++ % CU_MAX_STAGES];
        }
        s->dst = dst;
    }
    if (bytes > s->bytes) {
        /* the buffer's last kernel (and so its copy) done before it goes */
        CUDA_CHECK(cudaEventSynchronize(s->used));
        CUDA_CHECK(cudaFree(s->buf));
        s->buf = NULL;
        CUDA_CHECK(cudaMalloc((void **)&s->buf, bytes));
        s->bytes = bytes;
    }
    return s;
}

static void cu_normalize_crops(nn_backend_t *be, float *dst, const uint8_t *src, int batch,
                               int n_crops, int h, int w)
{
    struct cuda_backend *b = cu_be(be);
    int64_t plane = (int64_t)h * w, rows = (int64_t)batch * n_crops;
    size_t bytes = (size_t)(rows * plane * 3);
    const int kind = cu_host_kind(src);
    if (kind == CU_DEVICE) {
        k_normalize_crops<<<cu_blocks((size_t)(rows * plane)), TPB, 0, b->stream>>>(
            dst, src, batch, n_crops, plane);
        CUDA_LAUNCH_CHECK();
        return;
    }
    struct cu_stage *s = cu_stage_for(b, dst, bytes);
    CUDA_CHECK(cudaStreamWaitEvent(b->copy_stream, s->used, 0));
    /* from pageable memory (a ZeroMQ frame) the call returns once the bytes
     * are in the driver's staging: src is the caller's again */
    CUDA_CHECK(cudaMemcpyAsync(s->buf, src, bytes, cudaMemcpyDefault, b->copy_stream));
    CUDA_CHECK(cudaEventRecord(s->copied, b->copy_stream));
    if (kind == CU_HOST_PINNED) {
        /* pinned memory is read by the DMA itself, later: wait for it, as
         * the interface promises src back on return */
        CUDA_CHECK(cudaEventSynchronize(s->copied));
    }
    CUDA_CHECK(cudaStreamWaitEvent(b->stream, s->copied, 0));
    k_normalize_crops<<<cu_blocks((size_t)(rows * plane)), TPB, 0, b->stream>>>(dst, s->buf, batch,
                                                                               n_crops, plane);
    CUDA_LAUNCH_CHECK();
    CUDA_CHECK(cudaEventRecord(s->used, b->stream));
}

__global__ void k_rows_normalize(float *w, int64_t cols); /* below, with the prototypes */

static void cu_normalize_rows(nn_backend_t *be, float *w, int64_t rows, int64_t cols)
{
    k_rows_normalize<<<(unsigned)rows, TPB, 0, cu_be(be)->stream>>>(w, cols);
    CUDA_LAUNCH_CHECK();
}

static void *cu_optim_new(nn_backend_t *be, const struct nn_param_table *table,
                          const struct nn_optim_config *cfg)
{
    return nn_cuda_optim_new(be, table, cfg);
}

static void cu_optim_destroy(void *o)
{
    struct nn_cuda_optim *p = (struct nn_cuda_optim *)o;
    nn_cuda_optim_destroy(&p);
}

static void cu_optim_set_group(void *o, int index, int group)
{
    nn_cuda_optim_set_group((struct nn_cuda_optim *)o, index, group);
}

static void cu_optim_step_groups(void *o, float *params, const float *grads,
                                 const double *group_lr, int64_t iteration)
{
    nn_cuda_optim_step_groups((struct nn_cuda_optim *)o, params, grads, group_lr, iteration);
}

static float *cu_optim_momentum(void *o)
{
    return nn_cuda_optim_momentum((struct nn_cuda_optim *)o);
}

void cu_iface_fill_step(struct nn_backend_iface *t)
{
    t->copy = cu_copy;
    t->zero = cu_zero;
    t->scale = cu_scale;
    t->add_at = cu_add_at;
    t->nonfinite = cu_nonfinite;
    t->normalize_crops = cu_normalize_crops;
    t->normalize_rows = cu_normalize_rows;
    t->optim_new = cu_optim_new;
    t->optim_destroy = cu_optim_destroy;
    t->optim_set_group = cu_optim_set_group;
    t->optim_step_groups = cu_optim_step_groups;
    t->optim_momentum = cu_optim_momentum;
}

void cu_step_free(struct cuda_backend *b)
{
    if (b->stages) {
        cudaStreamSynchronize(b->copy_stream);
        for (int i = 0; i < b->n_stages; i++) {
            cudaFree(b->stages[i].buf);
            cudaEventDestroy(b->stages[i].copied);
            cudaEventDestroy(b->stages[i].used);
        }
        free(b->stages);
        cudaStreamDestroy(b->copy_stream);
        b->stages = NULL;
        b->n_stages = 0;
    }
    cudaFree(b->idx);
    cudaFree(b->flag);
    b->idx = NULL;
    b->flag = NULL;
}

/* ---- prototypes: rows L2-normalized in place ------------------------------------ */

__global__ void k_rows_normalize(float *w, int64_t cols)
{
    __shared__ double sh[33];
    float *r = w + (int64_t)blockIdx.x * cols;
    double s = 0;
    for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
        s += (double)r[d] * r[d];
    }
    s = cu_block_sum(s, sh);
    /* nn_prototypes_normalize's formula: x / max(||x||, 1e-12), a division
     * as F.normalize does */
    float nrm = fmaxf((float)sqrt(s), 1e-12f);
    for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
        r[d] = r[d] / nrm;
    }
}


/* ---- Sinkhorn-Knopp (distributed_sinkhorn, one rank) ----------------------------- *
 * Reference on Q = exp(scores / eps)^T (K, B): Q /= sum(Q); iters times
 * { Q /= row sums (over B), Q /= K; Q /= column sums (over K), Q /= B };
 * Q *= B.  Here q is (B, K), so the reference's rows are our columns. */

#define SK_BLOCKS 1024

__global__ void k_sk_exp(float *q, double *part, const float *scores, int64_t n, float inv_eps)
{
    __shared__ double sh[33];
    double s = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = expf(scores[i] * inv_eps);
        q[i] = v;
        s += v;
    }
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) {
        part[blockIdx.x] = s;
    }
}

__global__ void k_sk_total(double *out, const double *part, int64_t n)
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

__global__ void k_sk_scale(float *q, const double *total, int64_t n)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        q[i] = (float)(q[i] / total[0]);
    }
}

/* Column sums in two passes (enough blocks for 4096 x 3000): part[j * K + k] =
 * sum of q[b, k] over rows chunk j (SK_ROWS rows, in order), then colsum[k] =
 * sum over j in order: deterministic. */
#define SK_ROWS 128

__global__ void k_sk_colpart(double *part, const float *q, int64_t B, int64_t K)
{
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t b0 = (int64_t)blockIdx.y * SK_ROWS, b1 = min(b0 + SK_ROWS, B);
    if (k < K) {
        double s = 0;
        for (int64_t b = b0; b < b1; b++) {
            s += q[b * K + k];
        }
        part[blockIdx.y * K + k] = s;
    }
}

__global__ void k_sk_colsum(double *colsum, const double *part, int64_t nchunks, int64_t K)
{
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < K) {
        double s = 0;
        for (int64_t j = 0; j < nchunks; j++) {
            s += part[j * K + k];
        }
        colsum[k] = s;
    }
}

__global__ void k_sk_divcol(float *q, const double *colsum, int64_t B, int64_t K)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < B * K) {
        q[i] = (float)(q[i] / colsum[i % K] / (double)K);
    }
}

/* one block per row b: q[b, :] /= sum_k q[b, k], /= B, then *= final_mul */
__global__ void k_sk_rownorm(float *q, int64_t B, int64_t K, float final_mul)
{
    __shared__ double sh[33];
    float *r = q + (int64_t)blockIdx.x * K;
    double s = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        s += r[k];
    }
    s = cu_block_sum(s, sh);
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        r[k] = (float)(r[k] / s / (double)B) * final_mul;
    }
}

extern "C" void nn_cuda_sinkhorn(nn_backend_t *be, float *q, const float *scores, int B, int K,
                                 float eps, int iters)
{
    struct cuda_backend *b = cu_be(be);
    SWAV_ASSERT(iters >= 1); /* the final Q *= B rides on the last iteration */
    int64_t n = (int64_t)B * K;
    int64_t nchunks = (B + SK_ROWS - 1) / SK_ROWS;
    cu_red_reserve(b, (size_t)K * (nchunks + 1) + SK_BLOCKS + 1);
    double *total = b->red, *part = b->red + 1, *colsum = b->red + 1 + SK_BLOCKS;
    double *colpart = colsum + K;
    k_sk_exp<<<SK_BLOCKS, TPB, 0, b->stream>>>(q, part, scores, n, 1.0f / eps);
    CUDA_LAUNCH_CHECK();
    k_sk_total<<<1, 1024, 0, b->stream>>>(total, part, SK_BLOCKS);
    CUDA_LAUNCH_CHECK();
    k_sk_scale<<<cu_blocks((size_t)n), TPB, 0, b->stream>>>(q, total, n);
    CUDA_LAUNCH_CHECK();
    for (int it = 0; it < iters; it++) {
        dim3 grid(cu_blocks((size_t)K), (unsigned)nchunks);
        k_sk_colpart<<<grid, TPB, 0, b->stream>>>(colpart, q, B, K);
        CUDA_LAUNCH_CHECK();
        k_sk_colsum<<<cu_blocks((size_t)K), TPB, 0, b->stream>>>(colsum, colpart, nchunks, K);
        CUDA_LAUNCH_CHECK();
        k_sk_divcol<<<cu_blocks((size_t)n), TPB, 0, b->stream>>>(q, colsum, B, K);
        CUDA_LAUNCH_CHECK();
        k_sk_rownorm<<<(unsigned)B, TPB, 0, b->stream>>>(q, B, K, it == iters - 1 ? (float)B : 1.0f);
        CUDA_LAUNCH_CHECK();
    }
}

/* ---- SGD + LARC ------------------------------------------------------------------------ */

#define OPT_CHUNK 65536
#define OPT_MAX_GROUPS NN_OPTIM_MAX_GROUPS

struct opt_chunk {
    int param;
    size_t begin, len;
};

struct opt_lr {
    float lr[OPT_MAX_GROUPS];
};

struct nn_cuda_optim {
    struct cuda_backend *b;
    struct nn_optim_config cfg;
    const struct nn_param_table *table;
    int n, nchunks;
    float *momentum;          /* nn_backend_alloc (device memory), table->total */
    struct opt_chunk *chunks; /* device */
    int *first_chunk;         /* device, n + 1 */
    int *group_host;          /* host copy, n */
    int *group;               /* device, n */
    unsigned char *frozen_kind; /* device, n: 1 for NN_PARAM_PROTOTYPES */
    double *partial;          /* device, 2 * nchunks */
    float *coef;              /* device, 2 * n: LARC factor, weight decay */
};

__global__ void k_opt_norms(double *partial, const struct opt_chunk *chunks, const float *p,
                            const float *g)
{
    __shared__ double sh[33];
    struct opt_chunk c = chunks[blockIdx.x];
    double sp = 0, sg = 0;
    for (size_t k = threadIdx.x; k < c.len; k += blockDim.x) {
        double a = p[c.begin + k], d = g[c.begin + k];
        sp += a * a;
        sg += d * d;
    }
    sp = cu_block_sum(sp, sh);
    sg = cu_block_sum(sg, sh);
    if (threadIdx.x == 0) {
        partial[2 * blockIdx.x] = sp;
        partial[2 * blockIdx.x + 1] = sg;
    }
}

/* optim.c's tensor_coeffs, one thread per tensor */
__global__ void k_opt_coeffs(float *coef, const double *partial, const int *first_chunk,
                             const int *group, int n, int larc, float wd_cfg, float trust,
                             float eps, int clip, struct opt_lr lrs)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float a = 1.0f, wd = wd_cfg;
    if (larc) {
        double sp = 0, sg = 0;
        for (int c = first_chunk[i]; c < first_chunk[i + 1]; c++) {
            sp += partial[2 * c];
            sg += partial[2 * c + 1];
        }
        float pn = (float)sqrt(sp), gn = (float)sqrt(sg);
        if (pn != 0.0f && gn != 0.0f) {
            float num = trust * pn;
            float den = gn + pn * wd_cfg;
            den = den + eps;
            a = num / den;
            if (clip) {
                a = a / lrs.lr[group[i]];
                if (!(a < 1.0f)) {
                    a = 1.0f;
                }
            }
        } else {
            a = 1.0f;
            wd = 0.0f;
        }
    }
    coef[2 * i] = a;
    coef[2 * i + 1] = wd;
}

__global__ void k_opt_update(float *p, const float *g, float *buf, const struct opt_chunk *chunks,
                             const float *coef, const int *group, const unsigned char *frozen,
                             int larc, float m, int use_momentum, int nesterov, struct opt_lr lrs)
{
    struct opt_chunk c = chunks[blockIdx.x];
    int i = c.param;
    if (frozen[i]) {
        return;
    }
    float a = coef[2 * i], wd = coef[2 * i + 1], nlr = -lrs.lr[group[i]];
    for (size_t k = c.begin + threadIdx.x; k < c.begin + c.len; k += blockDim.x) {
        if (larc) {
            float d = (g[k] + wd * p[k]) * a;
            float bv = buf[k] * m + d;
            buf[k] = bv;
            p[k] = p[k] + nlr * bv;
        } else if (!use_momentum) {
            float d = g[k] + wd * p[k];
            p[k] = p[k] + nlr * d;
        } else {
            float d = g[k] + wd * p[k];
            float bv = buf[k] * m + d;
            buf[k] = bv;
            float u = nesterov ? d + m * bv : bv;
            p[k] = p[k] + nlr * u;
        }
    }
}

/* On the backend's stream, then waited for: the stream is non-blocking, so
 * a plain cudaMemcpy (legacy default stream, which returns once a pageable
 * source is staged, not copied) would not be ordered with its kernels. */
template <typename T> static T *opt_upload(cudaStream_t s, const T *host, size_t n)
{
    T *d = NULL;
    CUDA_CHECK(cudaMalloc((void **)&d, (n ? n : 1) * sizeof(T)));
    if (n) {
        CUDA_CHECK(cudaMemcpyAsync(d, host, n * sizeof(T), cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
    return d;
}

extern "C" struct nn_cuda_optim *nn_cuda_optim_new(nn_backend_t *be, const struct nn_param_table *table,
                                                   const struct nn_optim_config *cfg)
{
    struct nn_cuda_optim *o = (struct nn_cuda_optim *)swav_xcalloc(1, sizeof *o);
    o->b = cu_be(be);
    o->cfg = *cfg;
    o->table = table;
    o->n = table->n;
    o->momentum = (float *)nn_backend_alloc(be, (table->total ? table->total : 1) * sizeof(float));
    int nchunks = 0;
    for (int i = 0; i < table->n; i++) {
        nchunks += (int)((table->p[i].numel + OPT_CHUNK - 1) / OPT_CHUNK);
    }
    o->nchunks = nchunks;
    struct opt_chunk *ch = (struct opt_chunk *)swav_xcalloc((size_t)nchunks + 1, sizeof *ch);
    int *first = (int *)swav_xcalloc((size_t)table->n + 1, sizeof(int));
    unsigned char *fk = (unsigned char *)swav_xcalloc((size_t)table->n + 1, 1);
    int c = 0;
    for (int i = 0; i < table->n; i++) {
        const struct nn_param *p = &table->p[i];
        first[i] = c;
        fk[i] = (p->flags & NN_PARAM_PROTOTYPES) ? 1 : 0;
        for (size_t off = 0; off < p->numel; off += OPT_CHUNK) {
            ch[c].param = i;
            ch[c].begin = p->offset + off;
            ch[c].len = p->numel - off < OPT_CHUNK ? p->numel - off : OPT_CHUNK;
            c++;
        }
    }
    first[table->n] = c;
    o->group_host = (int *)swav_xcalloc((size_t)table->n + 1, sizeof(int));
    o->chunks = opt_upload(o->b->stream, ch, (size_t)nchunks);
    o->first_chunk = opt_upload(o->b->stream, first, (size_t)table->n + 1);
    o->group = opt_upload(o->b->stream, o->group_host, (size_t)table->n + 1);
    /* frozen_kind holds the flag; the per-step mask (kind && iteration <
     * freeze) lives in the second half */
    unsigned char *fk2 = (unsigned char *)swav_xcalloc(2 * ((size_t)table->n + 1), 1);
    memcpy(fk2, fk, (size_t)table->n + 1);
    o->frozen_kind = opt_upload(o->b->stream, fk2, 2 * ((size_t)table->n + 1));
    CUDA_CHECK(cudaMalloc((void **)&o->partial, (2 * (size_t)nchunks + 2) * sizeof(double)));
    CUDA_CHECK(cudaMalloc((void **)&o->coef, (2 * (size_t)table->n + 2) * sizeof(float)));
    free(ch);
    free(first);
    free(fk);
    free(fk2);
    return o;
}

extern "C" void nn_cuda_optim_destroy(struct nn_cuda_optim **op)
{
    struct nn_cuda_optim *o = *op;
    if (!o) {
        return;
    }
    nn_backend_free(&o->b->base, o->momentum);
    cudaFree(o->chunks);
    cudaFree(o->first_chunk);
    cudaFree(o->group);
    cudaFree(o->frozen_kind);
    cudaFree(o->partial);
    cudaFree(o->coef);
    free(o->group_host);
    free(o);
    *op = NULL;
}

extern "C" void nn_cuda_optim_set_group(struct nn_cuda_optim *o, int index, int group)
{
    SWAV_ASSERT(index >= 0 && index < o->n && group >= 0 && group < OPT_MAX_GROUPS);
    o->group_host[index] = group;
    /* ordered after the steps already queued (they read o->group) */
    CUDA_CHECK(cudaMemcpyAsync(o->group, o->group_host, (size_t)o->n * sizeof(int),
                               cudaMemcpyHostToDevice, o->b->stream));
    CUDA_CHECK(cudaStreamSynchronize(o->b->stream));
}

extern "C" float *nn_cuda_optim_momentum(struct nn_cuda_optim *o)
{
    return o->momentum;
}

/* mask[i] = kind[i] && frozen_now (one bool for the whole step) */
__global__ void k_opt_frozen(unsigned char *mask, const unsigned char *kind, int n, int frozen_now)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        mask[i] = kind[i] && frozen_now;
    }
}

extern "C" void nn_cuda_optim_step_groups(struct nn_cuda_optim *o, float *params, const float *grads,
                                          const double *group_lr, int64_t iteration)
{
    if (o->nchunks == 0) {
        return;
    }
    struct cuda_backend *b = o->b;
    struct opt_lr lrs;
    for (int g = 0; g < OPT_MAX_GROUPS; g++) {
        lrs.lr[g] = (float)group_lr[g];
    }
    int frozen_now = iteration < o->cfg.freeze_prototypes_niters;
    unsigned char *mask = o->frozen_kind + o->n + 1;
    k_opt_frozen<<<cu_blocks((size_t)o->n), TPB, 0, b->stream>>>(mask, o->frozen_kind, o->n,
                                                                  frozen_now);
    CUDA_LAUNCH_CHECK();
    if (o->cfg.larc) {
        k_opt_norms<<<(unsigned)o->nchunks, TPB, 0, b->stream>>>(o->partial, o->chunks, params,
                                                                 grads);
        CUDA_LAUNCH_CHECK();
    }
    k_opt_coeffs<<<cu_blocks((size_t)o->n), TPB, 0, b->stream>>>(
        o->coef, o->partial, o->first_chunk, o->group, o->n, o->cfg.larc,
        (float)o->cfg.weight_decay, (float)o->cfg.trust_coefficient, (float)o->cfg.eps,
        o->cfg.clip, lrs);
    CUDA_LAUNCH_CHECK();
    k_opt_update<<<(unsigned)o->nchunks, TPB, 0, b->stream>>>(
        params, grads, o->momentum, o->chunks, o->coef, o->group, mask, o->cfg.larc,
        (float)o->cfg.momentum, o->cfg.momentum != 0.0, o->cfg.nesterov, lrs);
    CUDA_LAUNCH_CHECK();
}

extern "C" void nn_cuda_optim_step(struct nn_cuda_optim *o, float *params, const float *grads,
                                   double lr, int64_t iteration)
{
    double lrs[OPT_MAX_GROUPS];
    for (int g = 0; g < OPT_MAX_GROUPS; g++) {
        lrs[g] = lr;
    }
    nn_cuda_optim_step_groups(o, params, grads, lrs, iteration);
}
