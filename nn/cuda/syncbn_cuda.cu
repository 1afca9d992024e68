/* The two pieces of a batch norm whose statistics span more than one tensor
 * (SyncBN, nn/syncbn.h) on the CUDA backend: the table's batchnorm_stats and
 * batchnorm_backward_elemt (contracts in nn/layers.h; the CPU versions in
 * nn/backend_cpu.c are the reference).  Layouts NCHW (4-D) and NC (2-D).
 *
 * Statistics: per channel, the sums of d = x - k_c and d^2 (k_c the
 * channel's first value, as the CPU backend shifts) accumulated in DOUBLE
 * (the CPU backend sums runs of 64 in float, so this side is the more exact
 * of the two), in two levels with no atomics: a grid of (channel, chunk)
 * blocks writes one partial pair per block into fixed slots, then one thread
 * per channel adds its chunks in chunk order.  The reduction order depends
 * on the shape only: the same bits on every run.  The results are read back
 * into the caller's host arrays and the stream synchronized before return.
 *
 * Backward: per channel A = w invstd mean_dy, B = w invstd^2 mean_dy_xhat
 * computed in double exactly as the CPU backend (same expression, correctly
 * rounded sqrt and division on both), then dx -= A + B (x - mean) in float
 * with explicitly rounded operations (no FMA contraction), the CPU's order.
 *
 * NEVER RUN ON A GPU when written: see docs/cuda.md. */
#include <stdint.h>

#include "cuda_internal.h"

/* Elements of one channel a block of the NCHW statistics kernel sums (16 a
 * thread); rows a block of the NC kernel sums (8 a thread). */
#define BN_STATS_CHUNK (TPB * 16)
#define BN_STATS_NC_ROWS 64
#define BN_STATS_MAX_CHUNKS 1024 /* gridDim.y; the final pass adds them serially */
#define BN_NC_GROUPS (TPB / 32)  /* row groups of the NC kernel's block */

/* NCHW with HW > 1: block (c, p) sums the values j in [p chunk, (p+1) chunk)
 * of channel c's M = N HW, value j at x[(n C + c) HW + i], n = j / HW,
 * i = j % HW.  M < 2^31 (checked by the caller), so j, n, i fit 32 bits. */
__global__ void __launch_bounds__(TPB) k_bn_stats_nchw(double *part, const float *x, unsigned C,
                                                       unsigned HW, unsigned M, unsigned chunk)
{
    __shared__ double sh[33];
    unsigned c = blockIdx.x, p = blockIdx.y;
    double k = (double)x[(size_t)c * HW];
    unsigned j0 = p * chunk, j1 = min(j0 + chunk, M);
    double s1 = 0, s2 = 0;
    for (unsigned j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        unsigned n = j / HW, i = j - n * HW;
        double d = (double)x[((size_t)n * C + c) * HW + i] - k;
        s1 += d;
        s2 += d * d;
    }
    s1 = cu_block_sum(s1, sh);
    s2 = cu_block_sum(s2, sh);
    if (threadIdx.x == 0) {
        size_t o = ((size_t)c * gridDim.y + p) * 2;
        part[o] = s1;
        part[o + 1] = s2;
    }
}

/* NC (and NCHW with HW = 1): row-major (N, C).  Block (g, p): channels
 * [32 g, 32 g + 32) (a warp reads 32 consecutive floats of a row), rows
 * [p chunk, (p+1) chunk), the block's BN_NC_GROUPS warps taking every
 * BN_NC_GROUPS-th row; the warps' sums are then added in warp order.
 * blockDim.x must be TPB. */
__global__ void __launch_bounds__(TPB) k_bn_stats_nc(double *part, const float *x, unsigned C,
                                                     unsigned N, unsigned chunk)
{
    __shared__ double sh1[TPB], sh2[TPB];
    unsigned lane = threadIdx.x & 31, r = threadIdx.x >> 5;
    unsigned c = blockIdx.x * 32 + lane, p = blockIdx.y;
    unsigned n0 = p * chunk, n1 = min(n0 + chunk, N);
    double s1 = 0, s2 = 0;
    if (c < C) {
        double k = (double)x[c];
        for (unsigned n = n0 + r; n < n1; n += BN_NC_GROUPS) {
            double d = (double)x[(size_t)n * C + c] - k;
            s1 += d;
            s2 += d * d;
        }
    }
    sh1[threadIdx.x] = s1;
    sh2[threadIdx.x] = s2;
    __syncthreads();
    if (r == 0 && c < C) {
        for (unsigned q = 1; q < BN_NC_GROUPS; q++) {
            s1 += sh1[q * 32 + lane];
            s2 += sh2[q * 32 + lane];
        }
        size_t o = ((size_t)c * gridDim.y + p) * 2;
        part[o] = s1;
        part[o + 1] = s2;
    }
}

/* One thread per channel: its P partial pairs added in chunk order, then
 * mean = k + s1 / M, M2 = s2 - s1^2 / M (clamped at 0), as the CPU backend.
 * out: mean (C) then M2 (C).  The shift is x[c HW] in both layouts. */
__global__ void k_bn_stats_final(double *out, const double *part, const float *x, unsigned C,
                                 unsigned HW, unsigned P, double M)
{
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) {
        return;
    }
    const double *pc = part + (size_t)c * P * 2;
    double s1 = 0, s2 = 0;
    for (unsigned p = 0; p < P; p++) {
        s1 += pc[2 * p];
        s2 += pc[2 * p + 1];
    }
    out[c] = (double)x[(size_t)c * HW] + s1 / M;
    double v = s2 - s1 * s1 / M;
    out[C + c] = v > 0 ? v : 0;
}

static void cu_bn_dims(const struct nn_tensor *t, int64_t *N, int64_t *C, int64_t *HW)
{
    SWAV_ASSERT(t->ndim == 4 || t->ndim == 2);
    SWAV_ASSERT(t->layout != NN_LAYOUT_NCHW8C); /* the CPU backend's layout */
    *N = t->shape[0];
    *C = t->shape[1];
    *HW = t->ndim == 4 ? t->shape[2] * t->shape[3] : 1;
    SWAV_ASSERT(*N > 0 && *C > 0 && *HW > 0);
}

void cu_batchnorm_stats(nn_backend_t *be, double *mean, double *m2, const struct nn_tensor *inp)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_batchnorm_stats(be, mean, m2, inp);
    }
    struct cuda_backend *b = cu_be(be);
    int64_t N, C, HW;
    cu_bn_dims(inp, &N, &C, &HW);
    int64_t M = N * HW; /* values per channel */
    SWAV_ASSERT(M < INT32_MAX && C < INT32_MAX);
    const float *x = (const float *)inp->data;
    unsigned P;
    if (HW == 1) {
        P = (unsigned)((N + BN_STATS_NC_ROWS - 1) / BN_STATS_NC_ROWS);
    } else {
        P = (unsigned)((M + BN_STATS_CHUNK - 1) / BN_STATS_CHUNK);
    }
    P = P < BN_STATS_MAX_CHUNKS ? P : BN_STATS_MAX_CHUNKS;
    unsigned chunk = (unsigned)((M + P - 1) / P); /* M = N when HW = 1 */
    /* b->red: mean and M2 (2C), then the partial pairs (2 C P) */
    cu_red_reserve(b, (size_t)2 * C + (size_t)2 * C * P);
    double *out = b->red, *part = b->red + 2 * C;
    if (HW == 1) {
        dim3 grid((unsigned)((C + 31) / 32), P);
        k_bn_stats_nc<<<grid, TPB, 0, b->stream>>>(part, x, (unsigned)C, (unsigned)N, chunk);
    } else {
        dim3 grid((unsigned)C, P);
        k_bn_stats_nchw<<<grid, TPB, 0, b->stream>>>(part, x, (unsigned)C, (unsigned)HW,
                                                     (unsigned)M, chunk);
    }
    CUDA_LAUNCH_CHECK();
    k_bn_stats_final<<<cu_blocks((size_t)C), TPB, 0, b->stream>>>(out, part, x, (unsigned)C,
                                                                  (unsigned)HW, P, (double)M);
    CUDA_LAUNCH_CHECK();
    /* mean, m2: the caller's host arrays (any pointer kind works with Default) */
    CUDA_CHECK(cudaMemcpyAsync(mean, out, (size_t)C * sizeof(double), cudaMemcpyDefault,
                               b->stream));
    CUDA_CHECK(cudaMemcpyAsync(m2, out + C, (size_t)C * sizeof(double), cudaMemcpyDefault,
                               b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
}

/* A = w invstd mean_dy, B = w invstd^2 mean_dy_xhat: the CPU backend's
 * double expressions (left to right, float operands widened), rounded to
 * float once. */
__global__ void k_bn_elemt_coef(float *A, float *B, const float *w, const float *var,
                                const float *mdy, const float *mdyx, unsigned C, float eps)
{
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        double inv = 1.0 / sqrt((double)var[c] + (double)eps);
        A[c] = (float)((double)w[c] * inv * (double)mdy[c]);
        B[c] = (float)((double)w[c] * inv * inv * (double)mdyx[c]);
    }
}

/* dx[i] -= A_c + B_c (x[i] - mean_c), c = (i / HW) % C: NCHW, and NC with
 * HW = 1.  I: uint32_t when n + TPB fits it (cheap division), else size_t. */
template <typename I>
__global__ void __launch_bounds__(TPB) k_bn_elemt(float *dx, const float *x, const float *mean,
                                                  const float *A, const float *B, I n, I C, I HW)
{
    I i = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x;
    if (i < n) {
        I c = i / HW % C;
        float t = __fmul_rn(B[c], __fsub_rn(x[i], mean[c]));
        dx[i] = __fsub_rn(dx[i], __fadd_rn(A[c], t));
    }
}

void cu_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                 const struct nn_tensor *inp, const float *weight,
                                 const float *mean, const float *var, const float *mean_dy,
                                 const float *mean_dy_xhat, float eps)
{
    if (nn_dtype_is_lowp(inp->dtype)) {
        return cu_lowp_batchnorm_backward_elemt(be, dinp, inp, weight, mean, var, mean_dy,
                                                mean_dy_xhat, eps);
    }
    struct cuda_backend *b = cu_be(be);
    int64_t N, C, HW;
    cu_bn_dims(inp, &N, &C, &HW);
    SWAV_ASSERT(dinp->layout == inp->layout && dinp->ndim == inp->ndim);
    size_t n = nn_tensor_numel(inp);
    SWAV_ASSERT(nn_tensor_numel(dinp) == n && C < INT32_MAX);
    /* b->tmp: mean_dy, mean_dy_xhat staged from the host, then A, B */
    size_t cp = ((size_t)C + 31) / 32 * 32;
    cu_tmp_reserve(b, 4 * cp * sizeof(float));
    float *mdy = b->tmp, *mdyx = b->tmp + cp, *A = b->tmp + 2 * cp, *B = b->tmp + 3 * cp;
    /* host (pageable) sources: staged when the call returns, so the caller
     * may reuse them at once; ordered on the stream like every kernel */
    CUDA_CHECK(cudaMemcpyAsync(mdy, mean_dy, (size_t)C * sizeof(float), cudaMemcpyDefault,
                               b->stream));
    CUDA_CHECK(cudaMemcpyAsync(mdyx, mean_dy_xhat, (size_t)C * sizeof(float), cudaMemcpyDefault,
                               b->stream));
    k_bn_elemt_coef<<<cu_blocks((size_t)C), TPB, 0, b->stream>>>(A, B, weight, var, mdy, mdyx,
                                                                 (unsigned)C, eps);
    CUDA_LAUNCH_CHECK();
    size_t blocks = ((size_t)n + TPB - 1) / TPB;
    SWAV_ASSERT(blocks <= INT32_MAX);
    float *dx = (float *)dinp->data;
    const float *x = (const float *)inp->data;
    if (n <= (size_t)UINT32_MAX - TPB) {
        k_bn_elemt<uint32_t><<<(unsigned)blocks, TPB, 0, b->stream>>>(
            dx, x, mean, A, B, (uint32_t)n, (uint32_t)C, (uint32_t)HW);
    } else {
        k_bn_elemt<size_t><<<(unsigned)blocks, TPB, 0, b->stream>>>(dx, x, mean, A, B, n,
                                                                    (size_t)C, (size_t)HW);
    }
    CUDA_LAUNCH_CHECK();
}
