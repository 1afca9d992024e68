/* CUDA backend of the assigner's scores and Sinkhorn-Knopp: see
 * sinkhorn_cuda.h for what, sinkhorn.h for the algebra.
 *
 * S (n, ldk) row-major, ldk = K rounded up to 4 (float4 rows).  With
 * t = S/eps (a float division, as the reference's out / epsilon), m_b the
 * row maximum of t and E_bk = exp(t_bk - m_b), Q = diag(v) E diag(u):
 *
 *   pass     reads      computes
 *   gemm     x, w       S = x w^T (cuBLAS; writes S once)
 *   init     S          m_b; a_k = sum_b e^(m_b - M) E_bk   (M = max m_b)
 *   reduce   partials   u_k = 1 / (K a_k)
 *   iterate  S, u       w_b = E_b . u, v_b = 1 / (B w_b), a_k = sum_b v_b E_bk
 *   reduce   partials   u_k = 1 / (K a_k)            (iterate+reduce: I - 1 times)
 *   write    S rows     the output rows only: w_b, q_bk = E_bk u_k / w_b,
 *                       entropy, argmax; writes Q for those rows
 *
 * so I iterations read the matrix I + 1 times after the GEMM wrote it and
 * write only the output rows (4096 x 3000, I = 3: 5 passes of 49 MB and one
 * of the output).  exp is recomputed from S in each pass: the passes are
 * bound by memory, not by the division and exp.  I = 0: q = B e^(m_b - M)
 * E_bk / sum_k a_k after init and reduce (the CPU backend's formula).
 *
 * Row passes: a block owns a contiguous range of rows, thread j the float4
 * column groups j, j + NT, ..., j + (CPT4 - 1) NT, and it takes R rows at a
 * time into registers (one coalesced load per row and group).  A row's
 * maximum or dot product is a warp shuffle reduction and then a sum over
 * the block's warps in warp order by one thread per row; a block's column
 * sums stay in double registers of the column's owner and are written once
 * per block as (block, column) partials that reduce sums in block order.
 * Every sum has a fixed order (no atomics; `bad` is a plain store of 1), so
 * a repeated run gives the same bits.  Successive passes take each block's
 * tiles in alternate directions (sk_tile_row: L2 reuse).  (CPT4, R, NT
 * bound) come from a table by K (sk_pick), up to K = 32768. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/check.h"
#include "common/log.h"
#include "common/timeutil.h"
}

#include "nn/cuda/cuda_check.h" /* CUDA_CHECK, CUBLAS_CHECK */
#include "sinkhorn_cuda.h"

/* Most blocks of a row pass (the reduce kernel keeps one weight per block
 * in shared memory). */
#define SK_MAX_BLOCKS 1024
#define SK_FULL 0xffffffffu

/* What a row pass reads and writes. */
struct sk_args {
    const float *s;    /* scores (n, ldk) */
    int ldk, k, k4;    /* k4: float4 groups of a row holding columns < k */
    float eps;
    int row0, rows;    /* this pass covers rows [row0, row0 + rows) of s */
    const float *u;    /* (ldk) column scaling, 0 past k (iterate, write) */
    float *m;          /* (n) row maxima of S/eps (init writes, the others read) */
    double *part;      /* (gridDim.x, ldk) the blocks' column sums (init, iterate) */
    float *bmax;       /* (gridDim.x) init: each block's largest m_b (its sums' scale) */
    double bn;         /* B: rows of the whole problem */
    int *bad;          /* set to 1 on a non-finite or non-positive sum */
    float *q;          /* write: (rows, ldk) codes of the pass's rows */
    float *ent;        /* write: (rows) entropy, rows r % ent_every == 0, or NULL */
    int32_t *am;       /* write: (rows) argmax */
    int ent_every;     /* >= 1 */
    const double *misc; /* iterations == 0: [M, 1 / sum_k a_k] (reduce, total) */
    int scale_only;    /* write with iterations == 0: q = e B e^(m_b - M) / sum a */
    int reverse;       /* this pass takes each block's tiles last to first */
};

/* This block's rows: an even split of [row0, row0 + rows). */
__device__ __forceinline__ void sk_block_rows(const sk_args &a, int *lo, int *hi)
{
    *lo = a.row0 + (int)((int64_t)a.rows * blockIdx.x / gridDim.x);
    *hi = a.row0 + (int)((int64_t)a.rows * (blockIdx.x + 1) / gridDim.x);
}

/* The first row of the block's ti-th tile of R rows in the order of this
 * pass: successive passes go through each block's rows in alternate
 * directions, so that a pass starts on the rows the previous one read last
 * (still in L2 when it holds most of the matrix: 49 MB for 4096 x 3000, an
 * H100 has 50 MB).  Only the order of the sums depends on it. */
__device__ __forceinline__ int sk_tile_row(const sk_args &a, int lo, int ntiles, int ti, int R)
{
    return lo + (a.reverse ? ntiles - 1 - ti : ti) * R;
}

/* t[r][c][i] = S[b0 + r][4 g + i] / eps for the thread's groups g; -inf for
 * rows past hi and for the padding columns (exp gives 0 there). */
template <int CPT4, int R>
__device__ __forceinline__ void sk_load(const sk_args &a, int b0, int hi,
                                        float (&t)[R][CPT4][4])
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int b = b0 + r;
        const float4 *row = reinterpret_cast<const float4 *>(a.s + (size_t)b * (size_t)a.ldk);
#pragma unroll
        for (int c = 0; c < CPT4; c++) {
            const int g = (int)threadIdx.x + c * (int)blockDim.x;
            if (b < hi && g < a.k4) {
                const float4 v = __ldg(row + g);
                const float vv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    t[r][c][i] = 4 * g + i < a.k ? __fdiv_rn(vv[i], a.eps) : -INFINITY;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 4; i++) t[r][c][i] = -INFINITY;
            }
        }
    }
}

/* The thread's u, 0 past k. */
template <int CPT4>
__device__ __forceinline__ void sk_load_u(const sk_args &a, float (&u)[CPT4][4])
{
#pragma unroll
    for (int c = 0; c < CPT4; c++) {
        const int g = (int)threadIdx.x + c * (int)blockDim.x;
        if (g < a.k4) {
            const float4 v = *(reinterpret_cast<const float4 *>(a.u) + g);
            u[c][0] = v.x;
            u[c][1] = v.y;
            u[c][2] = v.z;
            u[c][3] = v.w;
        } else {
#pragma unroll
            for (int i = 0; i < 4; i++) u[c][i] = 0.0f;
        }
    }
}

/* The CPU backend's exp (sinkhorn.c, sk_expf) takes max(x, -87.3): E is
 * never below e^-87.3 ~ 1.2e-38 (a prototype far from every sample keeps a
 * little weight), and a NaN stays a NaN. */
#define SK_EXP_MIN (-87.3f)

/* t <- exp(max(t - m_r, SK_EXP_MIN)), but 0 where t is -inf (the padding
 * columns and the rows past the block's end). */
template <int CPT4, int R>
__device__ __forceinline__ void sk_exp(float (&t)[R][CPT4][4], const float (&mr)[R])
{
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < CPT4; c++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float x = t[r][c][i] - mr[r];
                t[r][c][i] = x == -INFINITY ? 0.0f : expf(x < SK_EXP_MIN ? SK_EXP_MIN : x);
            }
}

/* A tile of R rows from b0 as E = exp(S / eps - m_r): sk_load, the rows'
 * maxima m_r of the init pass into mr (0 past hi, where t is -inf), sk_exp.
 * The iterate and write passes both start their tiles so. */
template <int CPT4, int R>
__device__ __forceinline__ void sk_load_exp(const sk_args &a, int b0, int hi,
                                            float (&t)[R][CPT4][4], float (&mr)[R])
{
    sk_load<CPT4, R>(a, b0, hi, t);
#pragma unroll
    for (int r = 0; r < R; r++) mr[r] = b0 + r < hi ? a.m[b0 + r] : 0.0f;
    sk_exp<CPT4, R>(t, mr);
}

__device__ __forceinline__ float sk_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(SK_FULL, v, o);
    return v;
}

__device__ __forceinline__ float sk_warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(SK_FULL, v, o));
    return v;
}

/* The block's dot products of its R rows with u: partial sums in float per
 * thread and warp, then the warps' sums in warp order in double by thread r
 * (the result is returned there only). */
template <int CPT4, int R>
__device__ __forceinline__ void sk_dot_partials(const float (&e)[R][CPT4][4],
                                                const float (&u)[CPT4][4], float (*sm)[R])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < R; r++) {
        float d = 0.0f;
#pragma unroll
        for (int c = 0; c < CPT4; c++)
#pragma unroll
            for (int i = 0; i < 4; i++) d = fmaf(e[r][c][i], u[c][i], d);
        d = sk_warp_sum(d);
        if (lane == 0) sm[warp][r] = d;
    }
}

/* acc[c][i] += v_r e[r][c][i] over the rows with v_r != 0. */
template <int CPT4, int R>
__device__ __forceinline__ void sk_axpy(double (&acc)[CPT4][4], const float (&e)[R][CPT4][4],
                                        const double *v)
{
#pragma unroll
    for (int r = 0; r < R; r++) {
        const double vr = v[r];
        if (vr != 0.0) {
#pragma unroll
            for (int c = 0; c < CPT4; c++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[c][i] = fma(vr, (double)e[r][c][i], acc[c][i]);
        }
    }
}

/* The block's column sums into part[blockIdx.x] (the padding columns get 0). */
template <int CPT4>
__device__ __forceinline__ void sk_store_part(const sk_args &a, const double (&acc)[CPT4][4])
{
    double *dst = a.part + (size_t)blockIdx.x * (size_t)a.ldk;
#pragma unroll
    for (int c = 0; c < CPT4; c++) {
        const int g = (int)threadIdx.x + c * (int)blockDim.x;
        if (g < a.k4) {
#pragma unroll
            for (int i = 0; i < 4; i++) dst[4 * g + i] = acc[c][i];
        }
    }
}

/* init: m_b, and the block's a_k = sum_b e^(m_b - bmax) E_bk, bmax = the
 * largest m_b of the block (the sums are rescaled when it grows, as an
 * online softmax does). */
template <int CPT4, int R, int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB) sk_init(sk_args a)
{
    __shared__ float sm_red[32][R];
    __shared__ float sm_m[R];
    __shared__ double sm_v[R];
    __shared__ double sm_scale;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int lo, hi;
    sk_block_rows(a, &lo, &hi);
    double acc[CPT4][4];
#pragma unroll
    for (int c = 0; c < CPT4; c++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[c][i] = 0.0;
    float run = -INFINITY; /* thread 0: the block's largest m_b so far */
    const int ntiles = (hi - lo + R - 1) / R;
    for (int ti = 0; ti < ntiles; ti++) {
        const int b0 = sk_tile_row(a, lo, ntiles, ti, R);
        float t[R][CPT4][4];
        sk_load<CPT4, R>(a, b0, hi, t);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < CPT4; c++)
#pragma unroll
                for (int i = 0; i < 4; i++) mx = fmaxf(mx, t[r][c][i]);
            mx = sk_warp_max(mx);
            if (lane == 0) sm_red[warp][r] = mx;
        }
        __syncthreads();
        if (threadIdx.x < R) {
            const int r = threadIdx.x, b = b0 + r;
            float mx = -INFINITY;
            for (int w = 0; w < nw; w++) mx = fmaxf(mx, sm_red[w][r]);
            if (b < hi) {
                if (!(mx > -INFINITY && mx < INFINITY)) {
                    *a.bad = 1;
                    mx = 0.0f;
                }
                a.m[b] = mx;
            }
            sm_m[r] = mx;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float tm = -INFINITY;
            for (int r = 0; r < R && b0 + r < hi; r++) tm = fmaxf(tm, sm_m[r]);
            double scale = 1.0;
            if (tm > run) {
                scale = run > -INFINITY ? exp((double)run - (double)tm) : 0.0;
                run = tm;
            }
            sm_scale = scale;
            for (int r = 0; r < R; r++) {
                sm_v[r] = b0 + r < hi ? exp((double)sm_m[r] - (double)run) : 0.0;
            }
        }
        __syncthreads();
        const double scale = sm_scale;
        if (scale != 1.0) {
#pragma unroll
            for (int c = 0; c < CPT4; c++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[c][i] *= scale;
        }
        float mr[R];
        double v[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const bool in = b0 + r < hi;
            mr[r] = in ? sm_m[r] : 0.0f; /* rows past hi: t = -inf, e = 0 */
            v[r] = sm_v[r];
        }
        sk_exp<CPT4, R>(t, mr);
        sk_axpy<CPT4, R>(acc, t, v);
    }
    sk_store_part<CPT4>(a, acc);
    if (threadIdx.x == 0) a.bmax[blockIdx.x] = run;
}

/* iterate: w_b = E_b . u, v_b = 1 / (B w_b), the block's a_k = sum_b v_b E_bk. */
template <int CPT4, int R, int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB) sk_iterate(sk_args a)
{
    __shared__ float sm_red[32][R];
    __shared__ double sm_v[R];
    const int nw = blockDim.x >> 5;
    int lo, hi;
    sk_block_rows(a, &lo, &hi);
    float u[CPT4][4];
    sk_load_u<CPT4>(a, u);
    double acc[CPT4][4];
#pragma unroll
    for (int c = 0; c < CPT4; c++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[c][i] = 0.0;
    const int ntiles = (hi - lo + R - 1) / R;
    for (int ti = 0; ti < ntiles; ti++) {
        const int b0 = sk_tile_row(a, lo, ntiles, ti, R);
        float t[R][CPT4][4];
        float mr[R];
        sk_load_exp<CPT4, R>(a, b0, hi, t, mr);
        sk_dot_partials<CPT4, R>(t, u, sm_red);
        __syncthreads();
        if (threadIdx.x < R) {
            const int r = threadIdx.x;
            double w = 0.0;
            for (int x = 0; x < nw; x++) w += (double)sm_red[x][r];
            double v = 0.0;
            if (b0 + r < hi) {
                if (w > 0.0 && w < INFINITY) {
                    v = 1.0 / (a.bn * w);
                } else {
                    *a.bad = 1; /* the row is left out, as on the CPU */
                }
            }
            sm_v[r] = v;
        }
        __syncthreads();
        double v[R];
#pragma unroll
        for (int r = 0; r < R; r++) v[r] = sm_v[r];
        sk_axpy<CPT4, R>(acc, t, v);
    }
    sk_store_part<CPT4>(a, acc);
}

/* (value, column) of the larger q, the first column on a tie. */
__device__ __forceinline__ void sk_argmax_take(float &v, int &j, float v2, int j2)
{
    if (v2 > v || (v2 == v && j2 < j)) {
        v = v2;
        j = j2;
    }
}

/* write: the codes of rows [row0, row0 + rows), their entropy and argmax. */
template <int CPT4, int R, int NT, int MINB>
__global__ void __launch_bounds__(NT, MINB) sk_write(sk_args a)
{
    __shared__ float sm_red[32][R];
    __shared__ float sm_inv[R];
    __shared__ float sm_h[32][R];
    __shared__ float sm_mv[32][R];
    __shared__ int sm_mj[32][R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int lo, hi;
    sk_block_rows(a, &lo, &hi);
    float u[CPT4][4];
    if (!a.scale_only) {
        sk_load_u<CPT4>(a, u);
    } else {
#pragma unroll
        for (int c = 0; c < CPT4; c++)
#pragma unroll
            for (int i = 0; i < 4; i++) u[c][i] = 1.0f;
    }
    const int every = a.ent_every > 1 ? a.ent_every : 1;
    const int ntiles = (hi - lo + R - 1) / R;
    for (int ti = 0; ti < ntiles; ti++) {
        const int b0 = sk_tile_row(a, lo, ntiles, ti, R);
        float t[R][CPT4][4];
        float mr[R];
        sk_load_exp<CPT4, R>(a, b0, hi, t, mr);
        if (!a.scale_only) {
            sk_dot_partials<CPT4, R>(t, u, sm_red);
        }
        __syncthreads();
        if (threadIdx.x < R) {
            const int r = threadIdx.x;
            float inv = 1.0f;
            if (b0 + r < hi) {
                if (!a.scale_only) {
                    double w = 0.0;
                    for (int x = 0; x < nw; x++) w += (double)sm_red[x][r];
                    float wf = (float)w;
                    if (!(wf > 0.0f && wf < INFINITY)) {
                        *a.bad = 1;
                        wf = 1.0f;
                    }
                    inv = 1.0f / wf;
                } else {
                    /* no iteration: q = B v0_b E_b / sum_k a_k, v0_b = e^(m_b - M) */
                    inv = (float)(a.bn * a.misc[1] * exp((double)mr[r] - a.misc[0]));
                }
            }
            sm_inv[r] = inv;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int b = b0 + r;
            const bool in = b < hi;
            const int ro = b - a.row0; /* the row's place in the output */
            const float inv = sm_inv[r];
            float *qrow = a.q + (size_t)ro * (size_t)a.ldk;
            const bool want_h = in && a.ent && ro % every == 0;
            float h = 0.0f, best = -1.0f;
            int bj = INT_MAX;
#pragma unroll
            for (int c = 0; c < CPT4; c++) {
                const int g = (int)threadIdx.x + c * (int)blockDim.x;
                float qq[4];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    qq[i] = t[r][c][i] * u[c][i] * inv;
                    const int j = 4 * g + i;
                    if (g < a.k4 && j < a.k) {
                        if (want_h) h -= qq[i] * logf(fmaxf(qq[i], 1e-30f));
                        if (qq[i] > best) {
                            best = qq[i];
                            bj = j;
                        }
                    }
                }
                if (in && g < a.k4) {
                    reinterpret_cast<float4 *>(qrow)[g] = make_float4(qq[0], qq[1], qq[2], qq[3]);
                }
            }
            h = sk_warp_sum(h);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float v2 = __shfl_down_sync(SK_FULL, best, o);
                const int j2 = __shfl_down_sync(SK_FULL, bj, o);
                sk_argmax_take(best, bj, v2, j2);
            }
            if (lane == 0) {
                sm_h[warp][r] = h;
                sm_mv[warp][r] = best;
                sm_mj[warp][r] = bj;
            }
        }
        __syncthreads();
        if (threadIdx.x < R && b0 + (int)threadIdx.x < hi) {
            const int r = threadIdx.x, ro = b0 + r - a.row0;
            double h = 0.0;
            float best = -1.0f;
            int bj = INT_MAX;
            for (int x = 0; x < nw; x++) {
                h += (double)sm_h[x][r];
                sk_argmax_take(best, bj, sm_mv[x][r], sm_mj[x][r]);
            }
            if (a.ent && ro % every == 0) a.ent[ro] = (float)h;
            a.am[ro] = bj == INT_MAX ? 0 : bj;
        }
    }
}

/* Threads of the reduce kernel: 32 columns x SK_RED_Y slices of the blocks
 * (a few partials per thread, all loads in flight at once). */
#define SK_RED_Y 32

/* u_k = 1 / (K a_k), a_k the sum of the blocks' partials (init: each scaled
 * by e^(bmax - M), M the largest bmax): each thread sums blocks y, y +
 * SK_RED_Y, ... of its column, then the slices are added in slice order.
 * Optionally a_k itself (for the total of iterations == 0) and M into
 * misc[0]. */
__global__ void __launch_bounds__(32 * SK_RED_Y) sk_reduce(const double *part, const float *bmax,
                                                           int nb, int k, int ldk, float *u,
                                                           double *a_out, double *misc, int *bad)
{
    __shared__ double wts[SK_MAX_BLOCKS];
    __shared__ float smax[32 * SK_RED_Y];
    __shared__ double sm[SK_RED_Y][33];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 32 + tx, nthr = 32 * SK_RED_Y;
    if (bmax) {
        float mx = -INFINITY;
        for (int i = tid; i < nb; i += nthr) mx = fmaxf(mx, bmax[i]);
        smax[tid] = mx;
        __syncthreads();
        for (int s = nthr / 2; s > 0; s >>= 1) {
            if (tid < s) smax[tid] = fmaxf(smax[tid], smax[tid + s]);
            __syncthreads();
        }
        const float big = smax[0];
        for (int i = tid; i < nb; i += nthr) {
            wts[i] = bmax[i] > -INFINITY ? exp((double)bmax[i] - (double)big) : 0.0;
        }
        if (misc && blockIdx.x == 0 && tid == 0) misc[0] = (double)big;
        __syncthreads();
    }
    const int col = blockIdx.x * 32 + tx;
    double s = 0.0;
    if (col < ldk) {
#pragma unroll 4
        for (int b = ty; b < nb; b += SK_RED_Y) {
            const double p = part[(size_t)b * (size_t)ldk + col];
            s += bmax ? wts[b] * p : p;
        }
    }
    sm[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && col < ldk) {
        double acol = 0.0;
        for (int y = 0; y < SK_RED_Y; y++) acol += sm[y][tx];
        if (col < k) {
            double uj = 1.0 / ((double)k * acol);
            if (!(acol > 0.0) || !(uj <= (double)FLT_MAX)) {
                *bad = 1; /* a prototype got no weight, or a value is not finite */
                uj = 0.0;
            }
            u[col] = (float)uj;
            if (a_out) a_out[col] = acol;
        } else {
            u[col] = 0.0f;
        }
    }
}

/* misc[1] = 1 / sum_k a_k (one block, fixed order). */
__global__ void __launch_bounds__(256) sk_total(const double *a, int k, double *misc)
{
    __shared__ double sm[256];
    const int tid = threadIdx.x;
    double s = 0.0;
    for (int j = tid; j < k; j += 256) s += a[j];
    sm[tid] = s;
    __syncthreads();
    for (int h = 128; h > 0; h >>= 1) {
        if (tid < h) sm[tid] += sm[tid + h];
        __syncthreads();
    }
    if (tid == 0) misc[1] = 1.0 / sm[0];
}

/* ---- shapes: (columns groups per thread, rows per tile, most threads) ---- */

typedef void (*sk_kernel)(sk_args);

struct sk_shape {
    int cpt4, r, maxnt;
    sk_kernel init, iterate, write;
};

#define SK_SHAPE(C, R, NT, MINB)                                                           \
    {C, R, NT, sk_init<C, R, NT, MINB>, sk_iterate<C, R, NT, MINB>, sk_write<C, R, NT, MINB>}
/* Registers per thread ~ 4 CPT4 (R + 3) + 20: the tile, u and the double
 * sums.  Up to K = 6144 two blocks of 256 threads fit an SM in 128 registers
 * each without spilling (K = 3000: CPT4 3, R 4); past that, one block per
 * SM, and past K = 8192 wider blocks that spill to local memory (correct,
 * slower: SwAV's K is in the thousands). */
static const sk_shape sk_shapes[] = {
    SK_SHAPE(1, 8, 256, 2), SK_SHAPE(2, 4, 256, 2), SK_SHAPE(3, 4, 256, 2),
    SK_SHAPE(4, 2, 256, 2), SK_SHAPE(6, 1, 256, 2), SK_SHAPE(8, 1, 256, 1),
    SK_SHAPE(8, 1, 512, 1), SK_SHAPE(8, 1, 1024, 1),
};
#define SK_NSHAPES ((int)(sizeof sk_shapes / sizeof sk_shapes[0]))

/* The first shape whose threads cover K's float4 groups; its thread count
 * (whole warps) in *nt.  -1 past SINKHORN_CUDA_MAX_K. */
static int sk_pick(int k, int *nt)
{
    const int k4 = (k + 3) / 4;
    for (int i = 0; i < SK_NSHAPES; i++) {
        int need = (k4 + sk_shapes[i].cpt4 - 1) / sk_shapes[i].cpt4;
        need = (need + 31) / 32 * 32;
        if (need <= sk_shapes[i].maxnt) {
            *nt = need;
            return i;
        }
    }
    return -1;
}

/* ---- the backend ------------------------------------------------------------------ */

struct cuda_impl {
    int device;
    int sms;
    cudaStream_t st;
    cublasHandle_t blas;
    void *blas_ws;
    cudaEvent_t ev[3];
    bool tf32;
    /* capacities */
    int cap_n, cap_ldk, cap_d, cap_kd, cap_blocks;
    /* device */
    float *x, *w, *s, *q, *m, *u, *bmax, *ent;
    double *part, *a, *misc;
    int32_t *am;
    int *bad;
    /* pinned host */
    float *h_ent;
    int32_t *h_am;
    int *h_bad;
    /* the w on the device: copied from this pointer with this shape */
    const float *w_src;
    int w_k, w_d;
    /* occupancy (blocks per SM) of each shape's kernels at the thread count last used */
    int occ_nt[SK_NSHAPES];
    int occ[SK_NSHAPES][3];
    char err[256];
};

static void sk_free_dev(void *p)
{
    if (p) CUDA_CHECK(cudaFree(p));
}

static void sk_release(struct cuda_impl *g)
{
    sk_free_dev(g->x);
    sk_free_dev(g->w);
    sk_free_dev(g->s);
    sk_free_dev(g->q);
    sk_free_dev(g->m);
    sk_free_dev(g->u);
    sk_free_dev(g->bmax);
    sk_free_dev(g->ent);
    sk_free_dev(g->part);
    sk_free_dev(g->a);
    sk_free_dev(g->misc);
    sk_free_dev(g->am);
    sk_free_dev(g->bad);
    if (g->h_ent) CUDA_CHECK(cudaFreeHost(g->h_ent));
    if (g->h_am) CUDA_CHECK(cudaFreeHost(g->h_am));
    if (g->h_bad) CUDA_CHECK(cudaFreeHost(g->h_bad));
    g->x = g->w = g->s = g->q = g->m = g->u = g->bmax = g->ent = NULL;
    g->part = g->a = g->misc = NULL;
    g->am = NULL;
    g->bad = NULL;
    g->h_ent = NULL;
    g->h_am = NULL;
    g->h_bad = NULL;
    g->cap_n = g->cap_ldk = g->cap_d = g->cap_kd = g->cap_blocks = 0;
    g->w_src = NULL;
}

/* Blocks per SM of the shape's kernel `which` (0 init, 1 iterate, 2 write)
 * at nt threads. */
static int sk_occupancy(struct cuda_impl *g, int shape, int nt, int which)
{
    if (g->occ_nt[shape] != nt) {
        const sk_shape *sh = &sk_shapes[shape];
        const sk_kernel ks[3] = {sh->init, sh->iterate, sh->write};
        for (int i = 0; i < 3; i++) {
            int nb = 0;
            CUDA_CHECK(
                cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, (const void *)ks[i], nt, 0));
            g->occ[shape][i] = nb > 0 ? nb : 1;
        }
        g->occ_nt[shape] = nt;
    }
    return g->occ[shape][which];
}

/* Blocks of a row pass over `rows` rows: enough to fill the device, at most
 * one per tile and what the partials have room for. */
static int sk_grid(struct cuda_impl *g, int shape, int nt, int which, int rows, int ldk)
{
    const int r = sk_shapes[shape].r;
    long long nb = (long long)g->sms * sk_occupancy(g, shape, nt, which);
    long long tiles = (rows + r - 1) / r;
    if (nb > tiles) nb = tiles;
    long long room = which == 2 ? SK_MAX_BLOCKS
                                : (long long)g->cap_blocks * g->cap_ldk / ldk;
    if (nb > room) nb = room;
    if (nb > SK_MAX_BLOCKS) nb = SK_MAX_BLOCKS;
    return nb < 1 ? 1 : (int)nb;
}

#define SK_TRY(expr)                                                                       \
    do {                                                                                   \
        cudaError_t sk_st_ = (expr);                                                       \
        if (sk_st_ != cudaSuccess) {                                                       \
            snprintf(g->err, sizeof g->err, "%s: %s", #expr, cudaGetErrorString(sk_st_));  \
            cudaGetLastError();                                                            \
            sk_release(g);                                                                 \
            return -1;                                                                     \
        }                                                                                  \
    } while (0)

static int cuda_reserve(void *vimpl, int n, int k, int d)
{
    struct cuda_impl *g = (struct cuda_impl *)vimpl;
    g->err[0] = '\0';
    int nt = 0;
    const int shape = sk_pick(k, &nt);
    if (shape < 0) {
        snprintf(g->err, sizeof g->err, "the CUDA backend takes at most %d prototypes, not %d",
                 SINKHORN_CUDA_MAX_K, k);
        return -1;
    }
    CUDA_CHECK(cudaSetDevice(g->device));
    const int ldk = (k + 3) / 4 * 4;
    /* partials for as many blocks as the row passes will launch at this K */
    int blocks = g->sms * sk_occupancy(g, shape, nt, 0);
    const int blocks_it = g->sms * sk_occupancy(g, shape, nt, 1);
    if (blocks_it > blocks) blocks = blocks_it;
    if (blocks > SK_MAX_BLOCKS) blocks = SK_MAX_BLOCKS;
    if (n <= g->cap_n && ldk <= g->cap_ldk && d <= g->cap_d && (long long)k * d <= g->cap_kd &&
        (long long)blocks * ldk <= (long long)g->cap_blocks * g->cap_ldk) {
        return 0;
    }
    /* grow everything to the larger of the old and new shapes */
    if (g->cap_n > n) n = g->cap_n;
    const int cldk = g->cap_ldk > ldk ? g->cap_ldk : ldk;
    if (g->cap_d > d) d = g->cap_d;
    long long kd = (long long)k * d;
    if (g->cap_kd > kd) kd = g->cap_kd;
    if (g->cap_blocks > blocks) blocks = g->cap_blocks;
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    sk_release(g);
    const size_t nl = (size_t)n * (size_t)cldk;
    SK_TRY(cudaMalloc((void **)&g->x, (size_t)n * (size_t)d * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->w, (size_t)kd * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->s, nl * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->q, nl * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->m, (size_t)n * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->u, (size_t)cldk * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->bmax, SK_MAX_BLOCKS * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->ent, (size_t)n * sizeof(float)));
    SK_TRY(cudaMalloc((void **)&g->part, (size_t)blocks * (size_t)cldk * sizeof(double)));
    SK_TRY(cudaMalloc((void **)&g->a, (size_t)cldk * sizeof(double)));
    SK_TRY(cudaMalloc((void **)&g->misc, 2 * sizeof(double)));
    SK_TRY(cudaMalloc((void **)&g->am, (size_t)n * sizeof(int32_t)));
    SK_TRY(cudaMalloc((void **)&g->bad, sizeof(int)));
    SK_TRY(cudaMallocHost((void **)&g->h_ent, (size_t)n * sizeof(float)));
    SK_TRY(cudaMallocHost((void **)&g->h_am, (size_t)n * sizeof(int32_t)));
    SK_TRY(cudaMallocHost((void **)&g->h_bad, sizeof(int)));
    /* the padding columns of S are never read as scores (masked), but keep
     * them defined */
    SK_TRY(cudaMemset(g->s, 0, nl * sizeof(float)));
    g->cap_n = n;
    g->cap_ldk = cldk;
    g->cap_d = d;
    g->cap_kd = kd;
    g->cap_blocks = blocks;
    return 0;
}

static double sk_elapsed(cudaEvent_t a, cudaEvent_t b)
{
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

static int cuda_run(void *vimpl, const struct sinkhorn_problem *p, const float *x,
                    const float *w, float *codes, float *entropy, int32_t *argmax,
                    struct sinkhorn_result *res)
{
    struct cuda_impl *g = (struct cuda_impl *)vimpl;
    SWAV_ASSERT(p->n > 0 && p->k > 0 && p->d > 0 && p->iterations >= 0);
    SWAV_ASSERT(p->out_row0 >= 0 && p->out_rows >= 0 && p->out_row0 + p->out_rows <= p->n);
    const int n = p->n, k = p->k, d = p->d;
    const int ldk = (k + 3) / 4 * 4;
    int nt = 0;
    const int shape = sk_pick(k, &nt);
    SWAV_ASSERT(shape >= 0);
    SWAV_ASSERT(n <= g->cap_n && ldk <= g->cap_ldk && d <= g->cap_d &&
                (long long)k * d <= g->cap_kd);
    const double t0 = swav_now_s();
    CUDA_CHECK(cudaSetDevice(g->device));
    cudaStream_t st = g->st;
    if (!(p->w_same && w == g->w_src && k == g->w_k && d == g->w_d)) {
        CUDA_CHECK(cudaMemcpyAsync(g->w, w, (size_t)k * d * sizeof(float), cudaMemcpyHostToDevice,
                                   st));
        g->w_src = w;
        g->w_k = k;
        g->w_d = d;
    }
    CUDA_CHECK(
        cudaMemcpyAsync(g->x, x, (size_t)n * d * sizeof(float), cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemsetAsync(g->bad, 0, sizeof(int), st));
    CUDA_CHECK(cudaEventRecord(g->ev[0], st));
    /* S^T (column-major k x n, leading dimension ldk) = w x^T: S row-major */
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, k, n, d, &one, g->w, d, g->x, d,
                             &zero, g->s, ldk));
    CUDA_CHECK(cudaEventRecord(g->ev[1], st));

    const sk_shape *sh = &sk_shapes[shape];
    sk_args a;
    memset(&a, 0, sizeof a);
    a.s = g->s;
    a.ldk = ldk;
    a.k = k;
    a.k4 = (k + 3) / 4;
    a.eps = p->epsilon;
    a.u = g->u;
    a.m = g->m;
    a.part = g->part;
    a.bmax = g->bmax;
    a.bn = (double)n;
    a.bad = g->bad;
    a.q = g->q;
    a.ent = entropy ? g->ent : NULL;
    a.am = g->am;
    a.ent_every = p->entropy_every > 1 ? p->entropy_every : 1;
    a.misc = g->misc;
    const dim3 rblock(32, SK_RED_Y), rgrid((unsigned)((ldk + 31) / 32));

    a.row0 = 0;
    a.rows = n;
    a.reverse = 0; /* then alternate, pass after pass */
    int nb = sk_grid(g, shape, nt, 0, n, ldk);
    sh->init<<<nb, nt, 0, st>>>(a);
    CUDA_CHECK(cudaGetLastError());
    sk_reduce<<<rgrid, rblock, 0, st>>>(g->part, g->bmax, nb, k, ldk, g->u,
                                        p->iterations == 0 ? g->a : NULL, g->misc, g->bad);
    CUDA_CHECK(cudaGetLastError());
    if (p->iterations == 0) {
        sk_total<<<1, 256, 0, st>>>(g->a, k, g->misc);
        CUDA_CHECK(cudaGetLastError());
    }
    for (int it = 1; it < p->iterations; it++) {
        nb = sk_grid(g, shape, nt, 1, n, ldk);
        a.reverse = !a.reverse;
        sh->iterate<<<nb, nt, 0, st>>>(a);
        CUDA_CHECK(cudaGetLastError());
        sk_reduce<<<rgrid, rblock, 0, st>>>(g->part, NULL, nb, k, ldk, g->u, NULL, NULL, g->bad);
        CUDA_CHECK(cudaGetLastError());
    }
    if (p->out_rows > 0) {
        a.row0 = p->out_row0;
        a.rows = p->out_rows;
        a.scale_only = p->iterations == 0;
        a.reverse = !a.reverse;
        nb = sk_grid(g, shape, nt, 2, p->out_rows, ldk);
        sh->write<<<nb, nt, 0, st>>>(a);
        CUDA_CHECK(cudaGetLastError());
    }
    CUDA_CHECK(cudaEventRecord(g->ev[2], st));

    /* the codes: dense or by groups of out_group rows */
    const size_t rowb = (size_t)k * sizeof(float), ldkb = (size_t)ldk * sizeof(float);
    if (p->out_rows > 0) {
        if (p->out_group > 0) {
            for (int r0 = 0; r0 < p->out_rows; r0 += p->out_group) {
                const int rows = p->out_rows - r0 < p->out_group ? p->out_rows - r0 : p->out_group;
                float *dst = codes + (size_t)(r0 / p->out_group) * p->out_group_stride;
                CUDA_CHECK(cudaMemcpy2DAsync(dst, rowb, g->q + (size_t)r0 * ldk, ldkb, rowb,
                                             (size_t)rows, cudaMemcpyDeviceToHost, st));
            }
        } else {
            CUDA_CHECK(cudaMemcpy2DAsync(codes, rowb, g->q, ldkb, rowb, (size_t)p->out_rows,
                                         cudaMemcpyDeviceToHost, st));
        }
        CUDA_CHECK(cudaMemcpyAsync(g->h_am, g->am, (size_t)p->out_rows * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, st));
        if (entropy) {
            CUDA_CHECK(cudaMemcpyAsync(g->h_ent, g->ent, (size_t)p->out_rows * sizeof(float),
                                       cudaMemcpyDeviceToHost, st));
        }
    }
    CUDA_CHECK(cudaMemcpyAsync(g->h_bad, g->bad, sizeof(int), cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    if (p->out_rows > 0) {
        if (argmax) {
            memcpy(argmax, g->h_am, (size_t)p->out_rows * sizeof(int32_t));
        }
        if (entropy) {
            for (int r = 0; r < p->out_rows; r += a.ent_every) entropy[r] = g->h_ent[r];
        }
    }
    const double t1 = swav_now_s();
    if (res) {
        res->ms_scores = sk_elapsed(g->ev[0], g->ev[1]);
        res->ms_sinkhorn = sk_elapsed(g->ev[1], g->ev[2]);
        const double rest = (t1 - t0) * 1e3 - res->ms_scores - res->ms_sinkhorn;
        res->ms_copy = rest > 0.0 ? rest : 0.0;
        res->fused = false;
        res->rebased_rows = 0;
    }
    return *g->h_bad ? -1 : 0;
}

static const char *cuda_error(void *vimpl)
{
    return ((struct cuda_impl *)vimpl)->err;
}

static void *cuda_host_alloc(void *vimpl, size_t bytes)
{
    struct cuda_impl *g = (struct cuda_impl *)vimpl;
    void *p = NULL;
    CUDA_CHECK(cudaSetDevice(g->device));
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        LOG_WARN("cuda: %zu bytes of page-locked memory refused; codes copied to pageable "
                 "memory (slower)", bytes);
        return NULL;
    }
    return p;
}

static void cuda_host_free(void *vimpl, void *p)
{
    (void)vimpl;
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

static void cuda_free(void *vimpl)
{
    struct cuda_impl *g = (struct cuda_impl *)vimpl;
    CUDA_CHECK(cudaSetDevice(g->device));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    sk_release(g);
    for (int i = 0; i < 3; i++) CUDA_CHECK(cudaEventDestroy(g->ev[i]));
    CUBLAS_CHECK(cublasDestroy(g->blas));
    sk_free_dev(g->blas_ws);
    CUDA_CHECK(cudaStreamDestroy(g->st));
    free(g);
}

extern "C" int sinkhorn_cuda_device_count(char *why, size_t whylen)
{
    char buf[256];
    int n = swav_cuda_count(buf, sizeof buf);
    if (why && whylen) {
        snprintf(why, whylen, "%s", n == 0 && !buf[0] ? "no CUDA device" : buf);
    }
    return n;
}

/* cuBLAS's workspace, given once (no allocation behind our back later). */
#define SK_BLAS_WS ((size_t)32 << 20)

extern "C" struct sinkhorn_backend *sinkhorn_backend_cuda_new(int device, char *err,
                                                              size_t errlen)
{
    char why[200];
    const int count = sinkhorn_cuda_device_count(why, sizeof why);
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "no CUDA device %d (%d present%s%s)", device, count,
                 why[0] ? ": " : "", why);
        return NULL;
    }
    cudaError_t st = cudaSetDevice(device);
    cudaDeviceProp prop;
    if (st == cudaSuccess) st = cudaGetDeviceProperties(&prop, device);
    if (st != cudaSuccess) {
        snprintf(err, errlen, "CUDA device %d: %s", device, cudaGetErrorString(st));
        cudaGetLastError();
        return NULL;
    }
    struct cuda_impl *g = (struct cuda_impl *)swav_xcalloc(1, sizeof *g);
    g->device = device;
    g->sms = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    for (int i = 0; i < SK_NSHAPES; i++) g->occ_nt[i] = -1;
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking));
    for (int i = 0; i < 3; i++) CUDA_CHECK(cudaEventCreate(&g->ev[i]));
    cublasStatus_t bs = cublasCreate(&g->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "CUDA device %d: cublasCreate failed (status %d)", device, (int)bs);
        for (int i = 0; i < 3; i++) CUDA_CHECK(cudaEventDestroy(g->ev[i]));
        CUDA_CHECK(cudaStreamDestroy(g->st));
        free(g);
        return NULL;
    }
    CUBLAS_CHECK(cublasSetStream(g->blas, g->st));
    const char *tf32 = getenv("SWAV_CUDA_TF32");
    g->tf32 = tf32 && tf32[0] == '1';
    /* fp32 (no TF32 in the default math mode) unless asked */
    CUBLAS_CHECK(cublasSetMathMode(g->blas, g->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                    : CUBLAS_DEFAULT_MATH));
    if (cudaMalloc(&g->blas_ws, SK_BLAS_WS) != cudaSuccess) {
        cudaGetLastError();
        snprintf(err, errlen, "CUDA device %d: no room for cuBLAS's workspace", device);
        cuda_free(g);
        return NULL;
    }
    CUBLAS_CHECK(cublasSetWorkspace(g->blas, g->blas_ws, SK_BLAS_WS));
    LOG_INFO("assigner on CUDA device %d: %s (sm_%d%d, %d SMs, %.1f GiB), %s scores", device,
             prop.name, prop.major, prop.minor, prop.multiProcessorCount,
             prop.totalGlobalMem / 1073741824.0, g->tf32 ? "TF32" : "fp32");
    struct sinkhorn_backend *b = (struct sinkhorn_backend *)swav_xcalloc(1, sizeof *b);
    b->name = "cuda";
    b->impl = g;
    b->reserve = cuda_reserve;
    b->run = cuda_run;
    b->free_impl = cuda_free;
    b->error = cuda_error;
    b->host_alloc = cuda_host_alloc;
    b->host_free = cuda_host_free;
    return b;
}
