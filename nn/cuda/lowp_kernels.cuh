/* Kernels of the low-precision NHWC backbone, bf16 and fp16 (lowp_cuda.cu
 * holds the table's entries that launch them; docs/cuda.md, "bf16 and fp16").
 *
 * Tensors: T = __nv_bfloat16 or __half (every kernel is a template on the
 * storage type; lowp<T> converts), channels_last: element (n, c, h, w) of a
 * logical (N, C, H, W) tensor at ((n H + h) W + w) C + c, i.e. M = N H W
 * rows of C contiguous channels.  Everything is computed in float registers
 * and stored rounded to nearest even (lowp<T>::from); reductions (BatchNorm
 * statistics and parameter gradients) in double, in a fixed order with no
 * atomics, so a rerun gives the same bits.  fp16's range ends at 65504: a
 * larger value is stored as inf (the loss scaler's overflow, nn/loss_scale.h).
 *
 * Indexes: the entries assert that every tensor has fewer than 2^31
 * elements (cuDNN's legacy API has the same bound), so element indexes are
 * 32-bit unsigned; pointer offsets that multiply two of them are size_t.
 *
 * Vector accesses: the "2" kernels move two channels (lowp<T>::pair:
 * __nv_bfloat162 or __half2, 4 bytes) at a time; the entries choose them
 * only when C is even (a pair never straddles two rows) and every pointer
 * is 4-byte aligned, and fall back to the scalar ones otherwise.
 *
 * LOWP_LAUNCH is a launch (k<<<grid, block, 0, stream>>>); a host-side
 * rehearsal may define it otherwise before including this file. */
#ifndef SWAV_NN_CUDA_LOWP_KERNELS_CUH
#define SWAV_NN_CUDA_LOWP_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#ifndef LOWP_LAUNCH
#define LOWP_LAUNCH(k, grid, block, stream) k<<<(grid), (block), 0, (stream)>>>
#endif

typedef __nv_bfloat16 bf16;
typedef __half f16;

/* The storage type's conversions: to float (exact), from float (round to
 * nearest even; fp16 overflows to inf), and its pair. */
template <class T> struct lowp;
template <> struct lowp<bf16> {
    typedef __nv_bfloat162 pair;
    static __host__ __device__ __forceinline__ float to(bf16 x) { return __bfloat162float(x); }
    static __host__ __device__ __forceinline__ bf16 from(float f) { return __float2bfloat16_rn(f); }
    static __host__ __device__ __forceinline__ float lo(pair p) { return __low2float(p); }
    static __host__ __device__ __forceinline__ float hi(pair p) { return __high2float(p); }
    static __host__ __device__ __forceinline__ pair make(float lo, float hi)
    {
        return __floats2bfloat162_rn(lo, hi);
    }
};
template <> struct lowp<f16> {
    typedef __half2 pair;
    static __host__ __device__ __forceinline__ float to(f16 x) { return __half2float(x); }
    static __host__ __device__ __forceinline__ f16 from(float f) { return __float2half_rn(f); }
    static __host__ __device__ __forceinline__ float lo(pair p) { return __low2float(p); }
    static __host__ __device__ __forceinline__ float hi(pair p) { return __high2float(p); }
    static __host__ __device__ __forceinline__ pair make(float lo, float hi)
    {
        return __floats2half2_rn(lo, hi);
    }
};

/* BatchNorm reductions: blocks of LOWP_BN_TX x LOWP_BN_TY threads; x picks a
 * channel group (VEC channels, consecutive threads on consecutive channels,
 * so a warp reads 32 VEC contiguous values of a row), y a row of every
 * LOWP_BN_TY-th; grid (channel tiles, row chunks). */
#define LOWP_BN_TX 32
#define LOWP_BN_TY 8
#define LOWP_BN_MIN_ROWS 64         /* rows of a chunk at least (8 a thread) */
#define LOWP_BN_TARGET_BLOCKS 2048  /* enough blocks to fill an H100 several times */
#define LOWP_BN_MAX_CHUNKS 1024     /* gridDim.y; the final pass adds them in a fixed order */
#define LOWP_TPB 256

struct lowp_bn_plan {
    unsigned vec;    /* channels a thread: 2 (C even, aligned pointers) or 1 */
    unsigned tiles;  /* gridDim.x: channel tiles of LOWP_BN_TX * vec channels */
    unsigned chunks; /* gridDim.y: row chunks */
    unsigned chunk;  /* rows of a chunk (the last may be short or empty) */
};

static inline struct lowp_bn_plan lowp_bn_plan_of(unsigned M, unsigned C, int aligned)
{
    struct lowp_bn_plan p;
    p.vec = (C % 2 == 0 && aligned) ? 2 : 1;
    unsigned tc = LOWP_BN_TX * p.vec;
    p.tiles = (C + tc - 1) / tc;
    unsigned by_rows = (M + LOWP_BN_MIN_ROWS - 1) / LOWP_BN_MIN_ROWS;
    unsigned want = (LOWP_BN_TARGET_BLOCKS + p.tiles - 1) / p.tiles;
    unsigned P = want < by_rows ? want : by_rows;
    P = P < LOWP_BN_MAX_CHUNKS ? P : LOWP_BN_MAX_CHUNKS;
    P = P > 0 ? P : 1;
    p.chunk = (M + P - 1) / P;
    p.chunks = P;
    return p;
}

static inline unsigned lowp_blocks(unsigned n)
{
    unsigned b = (n + LOWP_TPB - 1) / LOWP_TPB;
    return b ? b : 1;
}

/* 1 / sqrt(var + eps) in float: IEEE division and square root (nvcc's
 * defaults, no fast math), so every kernel that recomputes it gets the same
 * bits. */
static __host__ __device__ __forceinline__ float lowp_invstd(float var, float eps)
{
    return 1.0f / sqrtf(var + eps);
}

/* The affine form of a normalization, y = x scale + shift, in double and
 * rounded once: scale = w / sqrt(var + eps), shift = b - mean scale. */
static __host__ __device__ __forceinline__ void lowp_bn_coef(double mean, double var, float w,
                                                             float b, float eps, float *scale,
                                                             float *shift)
{
    double sc = (double)w / sqrt(var + (double)eps);
    *scale = (float)sc;
    *shift = (float)((double)b - mean * sc);
}

/* The normalization and the ReLU's mask share this expression (explicit
 * FMA: no contraction choice can make the backward's mask differ from the
 * forward's). */
static __host__ __device__ __forceinline__ float lowp_bn_affine(float x, float scale, float shift)
{
    return fmaf(x, scale, shift);
}

/* ---- conversions ------------------------------------------------------------------ */

/* float NCHW (N, Cs, H, W) -> T NHWC (N, Cd, H, W), Cd >= Cs, channels
 * [Cs, Cd) zero.  One thread a pixel (N HW of them): consecutive threads read
 * consecutive floats of each plane and write consecutive pixels. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_from_nchw(T *dst, const float *src, unsigned npix, unsigned HW, unsigned Cs, unsigned Cd)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= npix) {
        return;
    }
    unsigned n = i / HW, p = i - n * HW;
    T *d = dst + (size_t)i * Cd;
    for (unsigned c = 0; c < Cd; c++) {
        d[c] = lowp<T>::from(c < Cs ? src[((size_t)n * Cs + c) * HW + p] : 0.0f);
    }
}

/* T NHWC -> float NCHW, same (N, C, H, W): one thread a float of dst. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_to_nchw(float *dst, const T *src, unsigned n_el, unsigned C, unsigned HW)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_el) {
        return;
    }
    unsigned p = i % HW, t = i / HW;
    unsigned c = t % C, n = t / C;
    dst[i] = lowp<T>::to(src[((size_t)n * HW + p) * C + c]);
}

/* A convolution's float OIHW weight (O, I, k, k) -> its T KRSC copy
 * (O, k, k, Cp), Cp >= I, channels [I, Cp) zero: one thread an element of
 * the copy. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_weight_krsc(T *dst, const float *w, unsigned n, unsigned I, unsigned k, unsigned Cp)
{
    unsigned j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) {
        return;
    }
    unsigned c = j % Cp, t = j / Cp;
    unsigned s = t % k;
    t /= k;
    unsigned r = t % k, o = t / k;
    dst[j] = lowp<T>::from(c < I ? w[(((size_t)o * I + c) * k + r) * k + s] : 0.0f);
}

/* dw (O, I, k, k) float += the T KRSC filter gradient g (O, k, k, Cp):
 * one thread an element of dw (channels [I, Cp) of g are dropped). */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_dw_add(float *dw, const T *g, unsigned n, unsigned I, unsigned k, unsigned Cp)
{
    unsigned j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) {
        return;
    }
    unsigned s = j % k, t = j / k;
    unsigned r = t % k;
    t /= k;
    unsigned c = t % I, o = t / I;
    dw[j] += lowp<T>::to(g[(((size_t)o * k + r) * k + s) * Cp + c]);
}

/* ---- element-wise ------------------------------------------------------------------ */

struct lowp_op_relu { /* out = relu(a) (b unused); NaN -> 0 as the float kernels */
    static __host__ __device__ __forceinline__ float f(float a, float b) { return a > 0.0f ? a : 0.0f; }
};
struct lowp_op_relu_bwd { /* out = a (dout) where b (the ReLU's output) > 0 */
    static __host__ __device__ __forceinline__ float f(float a, float b) { return b > 0.0f ? a : 0.0f; }
};
struct lowp_op_add {
    static __host__ __device__ __forceinline__ float f(float a, float b) { return a + b; }
};
struct lowp_op_add_relu {
    static __host__ __device__ __forceinline__ float f(float a, float b)
    {
        float v = a + b;
        return v > 0.0f ? v : 0.0f;
    }
};

/* out[i] = OP(a[i], b[i]) for i in [first, first + n).  out may be a or b
 * (each thread reads its element before writing it). */
template <class T, class OP>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_eltwise(T *out, const T *a, const T *b, unsigned first, unsigned n)
{
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) {
        return;
    }
    unsigned i = first + t;
    out[i] = lowp<T>::from(OP::f(lowp<T>::to(a[i]), lowp<T>::to(b[i])));
}

/* The same on pairs: elements [2 i, 2 i + 1] for i < npairs; out, a, b
 * 4-byte aligned. */
template <class T, class OP>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_eltwise2(T *out, const T *a, const T *b, unsigned npairs)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= npairs) {
        return;
    }
    typedef typename lowp<T>::pair P;
    P va = ((const P *)a)[i], vb = ((const P *)b)[i];
    float lo = OP::f(lowp<T>::lo(va), lowp<T>::lo(vb));
    float hi = OP::f(lowp<T>::hi(va), lowp<T>::hi(vb));
    ((P *)out)[i] = lowp<T>::make(lo, hi);
}

/* ---- max pooling: the workspace keeps each output's winning window
 * position (kh k + kw, one byte; 255 for an empty window) so that the
 * backward, which sees neither input nor output, routes the gradient by
 * gathering (no atomics).  Same tie and NaN rules as the float kernels. ----- */

struct lowp_pool_shape {
    unsigned C, H, W, Ho, Wo;
    int k, s, p;
};

/* One thread an output element (n, oh, ow, c), n_out of them. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_maxpool_fwd(T *y, unsigned char *arg, const T *x, unsigned n_out,
                   struct lowp_pool_shape ps)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_out) {
        return;
    }
    unsigned c = i % ps.C, t = i / ps.C;
    unsigned ow = t % ps.Wo;
    t /= ps.Wo;
    unsigned oh = t % ps.Ho, n = t / ps.Ho;
    float best = -INFINITY;
    int a = -1;
    for (int kh = 0; kh < ps.k; kh++) {
        int h = (int)oh * ps.s - ps.p + kh;
        if (h < 0 || h >= (int)ps.H) {
            continue;
        }
        for (int kw = 0; kw < ps.k; kw++) {
            int w = (int)ow * ps.s - ps.p + kw;
            if (w < 0 || w >= (int)ps.W) {
                continue;
            }
            float v = lowp<T>::to(x[(((size_t)n * ps.H + (unsigned)h) * ps.W + (unsigned)w) * ps.C + c]);
            if (v > best || a < 0 || isnan(v)) {
                best = v;
                a = kh * ps.k + kw;
            }
        }
    }
    y[i] = lowp<T>::from(best);
    arg[i] = (unsigned char)(a < 0 ? 255 : a);
}

/* One thread an input element (n, h, w, c), n_in of them: the sum, in
 * window order, of the gradients of the outputs whose winner it is. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_maxpool_bwd(T *dx, const T *dy, const unsigned char *arg, unsigned n_in,
                   struct lowp_pool_shape ps)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_in) {
        return;
    }
    unsigned c = i % ps.C, t = i / ps.C;
    int w = (int)(t % ps.W);
    t /= ps.W;
    int h = (int)(t % ps.H);
    unsigned n = t / ps.H;
    /* outputs whose window covers (h, w): oh s - p <= h <= oh s - p + k - 1 */
    int oh0 = h + ps.p - ps.k + 1 > 0 ? (h + ps.p - ps.k + 1 + ps.s - 1) / ps.s : 0;
    int oh1 = (h + ps.p) / ps.s < (int)ps.Ho - 1 ? (h + ps.p) / ps.s : (int)ps.Ho - 1;
    int ow0 = w + ps.p - ps.k + 1 > 0 ? (w + ps.p - ps.k + 1 + ps.s - 1) / ps.s : 0;
    int ow1 = (w + ps.p) / ps.s < (int)ps.Wo - 1 ? (w + ps.p) / ps.s : (int)ps.Wo - 1;
    float g = 0.0f;
    for (int oh = oh0; oh <= oh1; oh++) {
        for (int ow = ow0; ow <= ow1; ow++) {
            size_t o = (((size_t)n * ps.Ho + (unsigned)oh) * ps.Wo + (unsigned)ow) * ps.C + c;
            int me = (h + ps.p - oh * ps.s) * ps.k + (w + ps.p - ow * ps.s);
            if (arg[o] == me) {
                g += lowp<T>::to(dy[o]);
            }
        }
    }
    dx[i] = lowp<T>::from(g);
}

/* ---- global average pooling: T NHWC (N, C, H, W) -> float (N, C) ----- */

/* One thread an output (n, c): the HW values summed in order in float, as
 * the float kernel, divided by HW. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_avgpool_fwd(float *y, const T *x, unsigned NC, unsigned C, unsigned HW)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= NC) {
        return;
    }
    unsigned n = i / C, c = i - n * C;
    const T *xp = x + (size_t)n * HW * C + c;
    float s = 0.0f;
    for (unsigned p = 0; p < HW; p++) {
        s += lowp<T>::to(xp[(size_t)p * C]);
    }
    y[i] = s / (float)HW;
}

/* dx (n, h, w, c) = dy (n, c) / HW: one thread an element of dx. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_avgpool_bwd(T *dx, const float *dy, unsigned n_el, unsigned C, unsigned HW)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_el) {
        return;
    }
    unsigned c = i % C, n = i / C / HW;
    dx[i] = lowp<T>::from(dy[(size_t)n * C + c] / (float)HW);
}

/* ---- batch norm ---------------------------------------------------------------------
 * Partial sums: block (tile, p) covers the channels of its tile and the rows
 * [p chunk, min((p + 1) chunk, M)); its threads of one column (same x) sum
 * every LOWP_BN_TY-th row in double, then the TY sums are added in y order
 * and written to part[(2 p + q) C + c] (q = 0, 1: the two sums), in fixed
 * slots.  A final kernel (one thread a channel) adds the chunks in order. */

template <class T, int VEC> struct lowp_vec;
template <class T> struct lowp_vec<T, 1> {
    static __host__ __device__ __forceinline__ void load(const T *p, float *v)
    {
        v[0] = lowp<T>::to(p[0]);
    }
    static __host__ __device__ __forceinline__ void store(T *p, const float *v)
    {
        p[0] = lowp<T>::from(v[0]);
    }
};
template <class T> struct lowp_vec<T, 2> { /* p 4-byte aligned */
    static __host__ __device__ __forceinline__ void load(const T *p, float *v)
    {
        typename lowp<T>::pair t = *(const typename lowp<T>::pair *)p;
        v[0] = lowp<T>::lo(t);
        v[1] = lowp<T>::hi(t);
    }
    static __host__ __device__ __forceinline__ void store(T *p, const float *v)
    {
        *(typename lowp<T>::pair *)p = lowp<T>::make(v[0], v[1]);
    }
};

/* Writes this column's two sums s[0], s[1] (VEC channels each) of the block
 * into part, the TY rows of threads added in y order.  Every thread of the
 * block calls it (it synchronizes). */
template <int VEC>
static __device__ __forceinline__ void lowp_bn_block_store(double *part, double (*s)[VEC],
                                                           unsigned c0, unsigned C)
{
    __shared__ double sh[2][VEC][LOWP_BN_TY][LOWP_BN_TX];
    unsigned tx = threadIdx.x, ty = threadIdx.y;
    for (int q = 0; q < 2; q++) {
        for (int j = 0; j < VEC; j++) {
            sh[q][j][ty][tx] = s[q][j];
        }
    }
    __syncthreads();
    if (ty == 0 && c0 < C) {
        for (int q = 0; q < 2; q++) {
            for (int j = 0; j < VEC; j++) {
                double a = 0;
                for (int t = 0; t < LOWP_BN_TY; t++) {
                    a += sh[q][j][t][tx];
                }
                part[((size_t)2 * blockIdx.y + q) * C + c0 + j] = a;
            }
        }
    }
}

/* Statistics: sums of d = x - k_c and d^2, k_c = x[row 0, c] (a shift
 * against the cancellation of a mean far from zero, as the CPU backend). */
template <class T, int VEC>
__global__ void __launch_bounds__(LOWP_BN_TX * LOWP_BN_TY)
k_lowp_bn_stats(double *part, const T *x, unsigned C, unsigned M, unsigned chunk)
{
    unsigned c0 = (blockIdx.x * LOWP_BN_TX + threadIdx.x) * VEC;
    unsigned r0 = blockIdx.y * chunk, r1 = r0 + chunk < M ? r0 + chunk : M;
    double s[2][VEC];
    for (int j = 0; j < VEC; j++) {
        s[0][j] = s[1][j] = 0;
    }
    if (c0 < C) { /* VEC 2: C is even, so c0 + 1 < C too */
        float k[VEC], v[VEC];
        lowp_vec<T, VEC>::load(x + c0, k);
#pragma unroll 4 /* independent loads in flight: the loop is latency-bound otherwise */
        for (unsigned r = r0 + threadIdx.y; r < r1; r += LOWP_BN_TY) {
            lowp_vec<T, VEC>::load(x + (size_t)r * C + c0, v);
            for (int j = 0; j < VEC; j++) {
                double d = (double)v[j] - (double)k[j];
                s[0][j] += d;
                s[1][j] += d * d;
            }
        }
    }
    lowp_bn_block_store<VEC>(part, s, c0, C);
}

/* The chunks' sums of channel c, s1 and s2, by a whole warp (the final
 * kernels run a warp a channel: with one thread a channel, the 64 channels
 * of ResNet's first stages would leave one thread adding 1024 chunks in a
 * row).  Lane l adds chunks l, l + 32, ... in order, then a butterfly
 * (xor) reduction: a fixed order, and every lane ends with the same bits
 * (each pair adds the same two values, and addition commutes). */
#define LOWP_WARP 32
static __device__ __forceinline__ void lowp_bn_sum_chunks(const double *part, unsigned P,
                                                          unsigned C, unsigned c, unsigned lane,
                                                          double *s1, double *s2)
{
    double a = 0, q = 0;
    for (unsigned p = lane; p < P; p += LOWP_WARP) {
        a += part[((size_t)2 * p) * C + c];
        q += part[((size_t)2 * p + 1) * C + c];
    }
    for (int m = LOWP_WARP / 2; m > 0; m >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, m);
        q += __shfl_xor_sync(0xffffffffu, q, m);
    }
    *s1 = a;
    *s2 = q;
}

/* Blocks of LOWP_TPB threads for a warp a channel (LOWP_TPB is a multiple of 32). */
static inline unsigned lowp_warp_blocks(unsigned C)
{
    return lowp_blocks(C * LOWP_WARP);
}

/* Train-mode statistics of channel c from its shifted sums: mean and the
 * biased variance saved (float), running stats updated as the CPU backend
 * (momentum, unbiased variance), and the normalization's scale and shift. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_fwd_final(const double *part, unsigned P, const T *x, unsigned C, double M,
                    const float *w, const float *bias, float *rm, float *rv, float *save_mean,
                    float *save_var, float *scale, float *shift, float momentum, float eps)
{
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x, c = t / LOWP_WARP;
    if (c >= C) { /* the whole warp: c is the warp's */
        return;
    }
    double s1, s2;
    lowp_bn_sum_chunks(part, P, C, c, t % LOWP_WARP, &s1, &s2);
    if (t % LOWP_WARP) {
        return;
    }
    double mean = (double)lowp<T>::to(x[c]) + s1 / M;
    double m2 = s2 - s1 * s1 / M;
    m2 = m2 > 0 ? m2 : 0;
    double var = m2 / M;
    save_mean[c] = (float)mean;
    save_var[c] = (float)var;
    double uvar = m2 / (M > 1 ? M - 1 : 1);
    rm[c] = (float)((1 - momentum) * rm[c] + momentum * mean);
    rv[c] = (float)((1 - momentum) * rv[c] + momentum * uvar);
    lowp_bn_coef(mean, var, w[c], bias[c], eps, &scale[c], &shift[c]);
}

/* batchnorm_stats (SyncBN): mean and M2 of channel c, in double, into
 * out[c] and out[C + c]. */
template <class T>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_stats_final(double *out, const double *part, unsigned P, const T *x, unsigned C,
                      double M)
{
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x, c = t / LOWP_WARP;
    if (c >= C) { /* the whole warp: c is the warp's */
        return;
    }
    double s1, s2;
    lowp_bn_sum_chunks(part, P, C, c, t % LOWP_WARP, &s1, &s2);
    if (t % LOWP_WARP) {
        return;
    }
    out[c] = (double)lowp<T>::to(x[c]) + s1 / M;
    double m2 = s2 - s1 * s1 / M;
    out[C + c] = m2 > 0 ? m2 : 0;
}

/* Eval mode: scale and shift from the given statistics. */
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_eval_coef(float *scale, float *shift, const float *mean, const float *var,
                    const float *w, const float *bias, unsigned C, float eps)
{
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        lowp_bn_coef((double)mean[c], (double)var[c], w[c], bias[c], eps, &scale[c], &shift[c]);
    }
}

/* y = x scale + shift (then ReLU when relu): one thread VEC channels of a
 * row, n_vec = M C / VEC threads. */
template <class T, int VEC>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_apply(T *y, const T *x, const float *scale, const float *shift, unsigned n_vec,
                unsigned C, int relu)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_vec) {
        return;
    }
    unsigned e = i * VEC, c = e % C;
    float v[VEC];
    lowp_vec<T, VEC>::load(x + e, v);
    for (int j = 0; j < VEC; j++) {
        float t = lowp_bn_affine(v[j], scale[c + j], shift[c + j]);
        v[j] = relu && !(t > 0.0f) ? 0.0f : t;
    }
    lowp_vec<T, VEC>::store(y + e, v);
}

/* Backward sums: of dy' and of dy' xhat, dy' = dy through the fused ReLU's
 * mask (recomputed: x scale + shift > 0, the forward's expression on the
 * forward's scale and shift, kept in the layer's workspace; scale NULL: no
 * ReLU), xhat = (x - mean) invstd. */
template <class T, int VEC>
__global__ void __launch_bounds__(LOWP_BN_TX * LOWP_BN_TY)
k_lowp_bn_bwd_reduce(double *part, const T *dy, const T *x, const float *mean,
                     const float *var, const float *scale, const float *shift, unsigned C,
                     unsigned M, unsigned chunk, float eps)
{
    unsigned c0 = (blockIdx.x * LOWP_BN_TX + threadIdx.x) * VEC;
    unsigned r0 = blockIdx.y * chunk, r1 = r0 + chunk < M ? r0 + chunk : M;
    double s[2][VEC];
    for (int j = 0; j < VEC; j++) {
        s[0][j] = s[1][j] = 0;
    }
    if (c0 < C) {
        float m[VEC], inv[VEC], sc[VEC], sf[VEC], g[VEC], v[VEC];
        for (int j = 0; j < VEC; j++) {
            m[j] = mean[c0 + j];
            inv[j] = lowp_invstd(var[c0 + j], eps);
            sc[j] = scale ? scale[c0 + j] : 0.0f;
            sf[j] = scale ? shift[c0 + j] : 0.0f;
        }
#pragma unroll 4
        for (unsigned r = r0 + threadIdx.y; r < r1; r += LOWP_BN_TY) {
            size_t o = (size_t)r * C + c0;
            lowp_vec<T, VEC>::load(dy + o, g);
            lowp_vec<T, VEC>::load(x + o, v);
            for (int j = 0; j < VEC; j++) {
                float d = scale && !(lowp_bn_affine(v[j], sc[j], sf[j]) > 0.0f) ? 0.0f : g[j];
                float xh = (v[j] - m[j]) * inv[j];
                s[0][j] += d;
                s[1][j] += (double)d * xh;
            }
        }
    }
    lowp_bn_block_store<VEC>(part, s, c0, C);
}

/* Per channel: dweight += sum dy' xhat, dbias += sum dy' (float, as the
 * layer contract), and the coefficients of dx: inv, A = w inv, and in train
 * mode the means of dy' and dy' xhat (eval mode: 0, the statistics are
 * constants). */
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_bwd_final(const double *part, unsigned P, unsigned C, double M, const float *w,
                    const float *var, float eps, float *dw, float *db, float *inv, float *A,
                    float *mdy, float *mdyx, int train)
{
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x, c = t / LOWP_WARP;
    if (c >= C) { /* the whole warp: c is the warp's */
        return;
    }
    double sdy, sdyx;
    lowp_bn_sum_chunks(part, P, C, c, t % LOWP_WARP, &sdy, &sdyx);
    if (t % LOWP_WARP) {
        return;
    }
    dw[c] += (float)sdyx;
    db[c] += (float)sdy;
    float iv = lowp_invstd(var[c], eps);
    inv[c] = iv;
    A[c] = w[c] * iv;
    mdy[c] = train ? (float)(sdy / M) : 0.0f;
    mdyx[c] = train ? (float)(sdyx / M) : 0.0f;
}

/* dx = A (dy' - mean_dy - xhat mean_dy_xhat): one thread VEC channels.
 * dx may be dy (in place). */
template <class T, int VEC>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_bwd_apply(T *dx, const T *dy, const T *x, const float *mean, const float *inv,
                    const float *scale, const float *shift, const float *A, const float *mdy,
                    const float *mdyx, unsigned n_vec, unsigned C)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_vec) {
        return;
    }
    unsigned e = i * VEC, c = e % C;
    float g[VEC], v[VEC];
    lowp_vec<T, VEC>::load(dy + e, g);
    lowp_vec<T, VEC>::load(x + e, v);
    for (int j = 0; j < VEC; j++) {
        unsigned cj = c + j;
        float d = scale && !(lowp_bn_affine(v[j], scale[cj], shift[cj]) > 0.0f) ? 0.0f : g[j];
        float xh = (v[j] - mean[cj]) * inv[cj];
        g[j] = A[cj] * (d - mdy[cj] - xh * mdyx[cj]);
    }
    lowp_vec<T, VEC>::store(dx + e, g);
}

/* SyncBN's backward_elemt: A = w invstd mean_dy, B = w invstd^2
 * mean_dy_xhat in double (the CPU backend's expression), rounded once. */
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_elemt_coef(float *A, float *B, const float *w, const float *var, const float *mdy,
                     const float *mdyx, unsigned C, float eps)
{
    unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) {
        double inv = 1.0 / sqrt((double)var[c] + (double)eps);
        A[c] = (float)((double)w[c] * inv * (double)mdy[c]);
        B[c] = (float)((double)w[c] * inv * inv * (double)mdyx[c]);
    }
}

/* dx -= A + B (x - mean), in place. */
template <class T, int VEC>
__global__ void __launch_bounds__(LOWP_TPB)
k_lowp_bn_elemt(T *dx, const T *x, const float *mean, const float *A, const float *B,
                unsigned n_vec, unsigned C)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_vec) {
        return;
    }
    unsigned e = i * VEC, c = e % C;
    float d[VEC], v[VEC];
    lowp_vec<T, VEC>::load(dx + e, d);
    lowp_vec<T, VEC>::load(x + e, v);
    for (int j = 0; j < VEC; j++) {
        unsigned cj = c + j;
        d[j] -= A[cj] + B[cj] * (v[j] - mean[cj]);
    }
    lowp_vec<T, VEC>::store(dx + e, d);
}

#endif
