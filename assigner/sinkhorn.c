/* CPU Sinkhorn-Knopp with scaling vectors: see sinkhorn.h for the algebra.
 *
 * Layout: E (n, ldk) sample-major (ldk: k rounded up to the score kernel's
 * 16-wide panels).  With Q = diag(v) E diag(u):
 *   row normalisation of the reference (per prototype):  u_k = 1 / (K a_k),
 *        a_k = sum_b v_b E_bk                           (axpy per sample row)
 *   column normalisation (per sample):                  v_b = 1 / (B w_b),
 *        w_b = sum_k E_bk u_k                           (dot per sample row)
 * so one pass per iteration computes w_b, v_b and the next a in one read of
 * each row, and the last pass writes q_bk = E_bk u_k / w_b (= B v_b E_bk u_k)
 * only for the rows whose codes are wanted.  Each row carries a scale that
 * keeps exp in range and re-enters as the initial v_b:
 *  - fused path (AVX2+FMA, every |S/eps| <= 40 by the norms of x and w):
 *    E_b = exp(S_b/eps) 2^-shift_b, shift_b from the bound of the row, a
 *    power of two applied inside exp (exact); the score kernel writes E and
 *    adds the first a while each tile is in registers (scores.h), so pass 0
 *    is one write of E;
 *  - row-maximum path (otherwise): E_b = exp(S_b/eps - m_b), m_b the row
 *    maximum, computed from the scores while the chunk is in cache, the
 *    initial v_b = exp(m_b - M) accumulated online (as in an online softmax).
 * Successive passes visit each thread's rows in alternate directions, so
 * each starts on the rows the previous one read last (a gain where the
 * cache keeps them). */
#include "sinkhorn.h"

#include <cblas.h>
#include <float.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/check.h"
#include "common/timeutil.h"
#include "pool.h"
#include "scores.h"

/* Hot loops get an AVX2+FMA clone chosen at load time, the baseline
 * otherwise. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SWAV_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SWAV_HOT
#endif

/* ---- vectorisable exp/log (Cephes polynomials, ~1-2 ulp) ---------------- */

static inline float sk_expf(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    /* round to nearest by the 1.5*2^23 trick: vectorises without SSE4.1 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* Natural log for x > 0 normal; only used for statistics. */
static inline float sk_logf(float x)
{
    union { float f; int32_t i; } v = {x}, mu;
    int32_t e = ((v.i >> 23) & 0xff) - 126;
    mu.i = (v.i & 0x007fffff) | 0x3f000000; /* mantissa in [0.5, 1) */
    float m = mu.f;
    /* to [sqrt(.5), sqrt(2)) */
    int small = m < 0.707106781186547524f;
    e -= small;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    float fe = (float)e;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    return m + y + 0.693359375f * fe;
}

/* Copy n floats bypassing the cache where the target allows: the codes
 * (and E) are far larger than the caches, and a plain store would first
 * read every destination line from memory. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
static inline void stream_copy(float *dst, const float *src, int n)
{
    int j = 0;
    while (j < n && ((uintptr_t)(dst + j) & 15u) != 0) {
        dst[j] = src[j];
        j++;
    }
    for (; j + 4 <= n; j += 4) {
        _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
    }
    for (; j < n; j++) {
        dst[j] = src[j];
    }
}
static inline void stream_fence(void)
{
    _mm_sfence();
}
#else
static inline void stream_copy(float *dst, const float *src, int n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static inline void stream_fence(void) {}
#endif

/* The first j with q[j] == v (v is the row maximum, so one exists), 8 at a
 * time with a branch-free inner block the compiler vectorises. */
static inline int32_t first_equal(const float *q, int k, float v)
{
    int j = 0;
    for (; j + 8 <= k; j += 8) {
        int hit = 0;
        for (int t = 0; t < 8; t++) hit |= q[j + t] == v;
        if (hit) break;
    }
    for (; j < k; j++) {
        if (q[j] == v) return j;
    }
    return 0;
}

/* ---- the CPU backend --------------------------------------------------- */

/* The fused path (kernel machines) needs |S/eps| <= FUSED_BOUND for every
 * score, known beforehand from ||x_b|| max_k ||w_k|| / eps: then E = exp(S/eps)
 * 2^-shift_b, with shift_b = ceil(bound_b log2 e), lies in [2^-116, 1] and
 * every product stays a normal float.  Otherwise the row-maximum path. */
#define FUSED_BOUND 40.0
/* A fused row whose largest E is below 2^-REBASE_LOG2 is rescaled by a power
 * of two after its chunk (rare: a sample far from every prototype), so that
 * every row's maximum is in [2^-REBASE_LOG2, 1] and w_b = E_b . u stays far
 * from the subnormals. */
#define REBASE_LOG2 60

enum { PASS_BOUNDS, PASS_EXP, PASS_EXP_FUSED, PASS_ITERATE, PASS_WRITE };

struct cpu_impl {
    assigner_pool_t *pool;
    int threads;
    size_t cap_nk;      /* floats in e */
    int cap_n, cap_kpad;
    bool kernel;        /* the packed AVX2 score kernel runs here */
    size_t cap_wp;
    float *wp;          /* packed prototypes (see scores.h), or NULL */
    float *e;           /* (n, ldk) scores, then exp; 64-byte aligned */
    float *m;           /* (n) row maxima (row-maximum path); raw score maxima (fused) */
    double *v0;         /* (n) initial v_b: the row's scale in a, relative to all rows */
    int32_t *shift;     /* (n) fused: E_b = exp(S_b/eps) 2^-shift_b */
    float *weight;      /* (n) fused: v0 as the kernel's float */
    float *u;           /* (k) prototype scaling */
    double *acc;        /* (threads, kpad) per-thread a */
    float *rowbuf;      /* (threads, k) a row of codes before it is streamed out */
    double *tmax;       /* (threads) running max of each thread's a; bounds pass: max bound */
    int *tshift;        /* (threads) bounds pass: max shift */
    int bad;            /* set by a worker on a non-finite value */
    int rebased;        /* fused rows rescaled in this run */
    /* x . y; next: the row the pass reads after x (prefetched), or NULL */
    float (*dot)(const float *x, const float *y, int k, const float *next);
    void (*axpy_rows)(double *a, const float *const *rows, const double *v, int nr, int k);

    /* the pass in flight */
    const struct sinkhorn_problem *p;
    const float *x, *w;
    int ldk;            /* row stride of e: k rounded up to whole kernel panels */
    double wnorm;       /* max_k ||w_k|| */
    const float *packed_w; /* the w that wp and wnorm were made from */
    int packed_k, packed_d;
    int shift_max;      /* fused: max_b shift_b */
    double inv_total;   /* iterations == 0: 1 / sum(a) */
    int pass;
    bool reverse;       /* this pass visits each thread's rows last to first */
    float *codes;
    float *entropy;
    int32_t *argmax;
};

static int cpu_reserve(void *vimpl, int n, int k, int d)
{
    struct cpu_impl *c = vimpl;
    const int kpad = assigner_scores_kpad(k);
    size_t nk = (size_t)n * (size_t)kpad;
    if (nk > c->cap_nk) {
        free(c->e);
        /* 2 MiB aligned, transparent huge pages asked for: the passes stream
         * through tens of MB, and 4 KiB pages cost a TLB miss every 4 KiB */
        const size_t huge = (size_t)2 << 20;
        size_t bytes = (nk * sizeof(float) + huge - 1) & ~(huge - 1);
        c->e = aligned_alloc(huge, bytes);
        if (!c->e) {
            c->cap_nk = 0;
            return -1;
        }
        (void)madvise(c->e, bytes, MADV_HUGEPAGE);
        c->cap_nk = nk;
    }
    if (n > c->cap_n) {
        free(c->m);
        free(c->v0);
        free(c->shift);
        free(c->weight);
        c->m = swav_xmalloc((size_t)n * sizeof(float));
        c->v0 = swav_xmalloc((size_t)n * sizeof(double));
        c->shift = swav_xmalloc((size_t)n * sizeof(int32_t));
        c->weight = swav_xmalloc((size_t)n * sizeof(float));
        c->cap_n = n;
    }
    size_t wpn = assigner_scores_packed_size(k, d);
    if (c->kernel && wpn > c->cap_wp) {
        free(c->wp);
        c->wp = aligned_alloc(64, (wpn * sizeof(float) + 63) & ~(size_t)63);
        if (!c->wp) {
            c->cap_wp = 0;
            return -1;
        }
        c->cap_wp = wpn;
    }
    if (kpad > c->cap_kpad) {
        free(c->u);
        free(c->acc);
        free(c->rowbuf);
        c->rowbuf = swav_xmalloc((size_t)kpad * (size_t)c->threads * sizeof(float));
        c->u = swav_xmalloc((size_t)kpad * sizeof(float));
        c->acc = swav_xmalloc((size_t)kpad * (size_t)c->threads * sizeof(double));
        c->cap_kpad = kpad;
    }
    return 0;
}

/* Rows of scores computed per kernel call: small enough that the block is
 * still in cache when exp reads it back (row-maximum path), a multiple of
 * the kernel's 6-row tiles (fused path). */
#define SCORE_CHUNK 48

/* Bounds pass: shift_b and the thread's largest bound and shift. */
static void pass_bounds(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int d = p->d;
    double big = 0.0;
    int smax = 0;
    int lo, hi;
    assigner_pool_range(p->n, share, nshares, &lo, &hi);
    for (int b = lo; b < hi; b++) {
        const float *xb = c->x + (size_t)b * (size_t)d;
        double s = 0.0;
        for (int t = 0; t < d; t++) s += (double)xb[t] * xb[t];
        /* the bound of |S/eps|, with room for the float rounding of S */
        double bound = sqrt(s) * c->wnorm / (double)p->epsilon * (1.0 + 1e-5) + 1e-6;
        if (!(bound <= FUSED_BOUND)) {
            big = INFINITY;
            break;
        }
        int sh = (int)ceil(bound * 1.4426950408889634);
        c->shift[b] = sh;
        big = bound > big ? bound : big;
        smax = sh > smax ? sh : smax;
    }
    c->tmax[share] = big;
    c->tshift[share] = smax;
}

/* Row-maximum pass 0: S = x w^T by chunks of rows (each thread its own,
 * scores.h), then in cache E = exp(S/eps - m_b) and a (per thread) =
 * sum_b exp(m_b - M_t) E_b. */
SWAV_HOT static void pass_exp(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int k = p->k;
    const size_t ldk = (size_t)c->ldk;
    const float eps = p->epsilon;
    double *a = c->acc + (size_t)share * ldk;
    for (int j = 0; j < k; j++) a[j] = 0.0;
    float tmax = -INFINITY;
    int lo, hi;
    assigner_pool_range(p->n, share, nshares, &lo, &hi);
    for (int b = lo; b < hi; b++) {
        if ((b - lo) % SCORE_CHUNK == 0) {
            int rows = hi - b < SCORE_CHUNK ? hi - b : SCORE_CHUNK;
            assigner_scores_rows(c->e + (size_t)b * ldk, (int)ldk,
                                 c->x + (size_t)b * (size_t)p->d, rows, c->kernel ? c->wp : NULL,
                                 c->w, k, p->d);
        }
        float *row = c->e + (size_t)b * ldk;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < k; j++) {
            float t = row[j] / eps;
            row[j] = t;
            mx = t > mx ? t : mx;
        }
        if (!(mx > -INFINITY && mx < INFINITY)) {
            c->bad = 1;
            mx = 0.0f;
        }
        c->m[b] = mx;
#pragma omp simd
        for (int j = 0; j < k; j++) {
            row[j] = sk_expf(row[j] - mx);
        }
        if (mx > tmax) {
            if (tmax > -INFINITY) {
                double s = exp((double)tmax - (double)mx);
                for (int j = 0; j < k; j++) a[j] *= s;
            }
            tmax = mx;
        }
        double vb = exp((double)mx - (double)tmax);
#pragma omp simd
        for (int j = 0; j < k; j++) {
            a[j] += vb * (double)row[j];
        }
    }
    c->tmax[share] = tmax;
}

/* Fused pass 0: the kernel writes E = exp(S/eps) 2^-shift_b and adds
 * v0_b E_b (v0_b = 2^(shift_b - max shift), exact) into the thread's a;
 * rows whose maximum came out below 2^-REBASE_LOG2 are rescaled. */
static void pass_exp_fused(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const size_t ldk = (size_t)c->ldk;
    double *a = c->acc + (size_t)share * ldk;
    for (size_t j = 0; j < ldk; j++) a[j] = 0.0;
    int lo, hi;
    assigner_pool_range(p->n, share, nshares, &lo, &hi);
    for (int b = lo; b < hi; b++) {
        c->v0[b] = ldexp(1.0, c->shift[b] - c->shift_max);
        c->weight[b] = (float)c->v0[b];
    }
    for (int b0 = lo; b0 < hi; b0 += SCORE_CHUNK) {
        int rows = hi - b0 < SCORE_CHUNK ? hi - b0 : SCORE_CHUNK;
        assigner_scores_exp_rows(c->e + (size_t)b0 * ldk, (int)ldk,
                                 c->x + (size_t)b0 * (size_t)p->d, rows, c->wp, p->k, p->d,
                                 p->epsilon, c->shift + b0, c->weight + b0, a, c->m + b0);
        for (int b = b0; b < b0 + rows; b++) {
            float smax = c->m[b];
            if (!(smax > -INFINITY && smax < INFINITY)) {
                c->bad = 1;
                continue;
            }
            /* log2 of the row's largest E */
            double lg = (double)(smax / p->epsilon) * 1.4426950408889634 - c->shift[b];
            if (lg < -REBASE_LOG2) {
                int s = (int)floor(-lg);
                float f = ldexpf(1.0f, s);
                float *row = c->e + (size_t)b * ldk;
                for (int j = 0; j < p->k; j++) row[j] *= f;
                c->v0[b] = ldexp(c->v0[b], -s);
                __atomic_fetch_add(&c->rebased, 1, __ATOMIC_RELAXED);
            }
        }
    }
}

/* ---- row kernels of the iterations: a dot product per row, and a += sum
 * of v_i row_i over a few rows at once (a read and written once per group,
 * not once per row).  AVX2+FMA versions with independent accumulators where
 * the score kernel runs, plain loops otherwise. */

#define AXPY_ROWS 4

SWAV_HOT static float dot_plain(const float *x, const float *y, int k, const float *next)
{
    (void)next;
    float w = 0.0f;
#pragma omp simd reduction(+ : w)
    for (int j = 0; j < k; j++) {
        w += x[j] * y[j];
    }
    return w;
}

SWAV_HOT static void axpy_rows_plain(double *a, const float *const *rows, const double *v,
                                     int nr, int k)
{
    for (int i = 0; i < nr; i++) {
        const float *row = rows[i];
        const double vb = v[i];
#pragma omp simd
        for (int j = 0; j < k; j++) {
            a[j] += vb * (double)row[j];
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *x, const float *y, int k,
                                                          const float *next)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int j = 0;
    /* the next row streams in while this one is summed (passes alternate
     * direction: a row jump the hardware prefetchers would first have to
     * learn) */
    if (!next) next = x;
    for (; j + 32 <= k; j += 32) {
        _mm_prefetch((const char *)(next + j), _MM_HINT_T0);
        _mm_prefetch((const char *)(next + j + 16), _MM_HINT_T0);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(y + j + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 16), _mm256_loadu_ps(y + j + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 24), _mm256_loadu_ps(y + j + 24), s3);
    }
    for (; j + 8 <= k; j += 8) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), s0);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float w = _mm_cvtss_f32(h);
    for (; j < k; j++) {
        w += x[j] * y[j];
    }
    return w;
}

__attribute__((target("avx2,fma"))) static void axpy_rows_avx2(double *a,
                                                                const float *const *rows,
                                                                const double *v, int nr, int k)
{
    if (nr != AXPY_ROWS) {
        axpy_rows_plain(a, rows, v, nr, k);
        return;
    }
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    const __m256d v0 = _mm256_set1_pd(v[0]), v1 = _mm256_set1_pd(v[1]);
    const __m256d v2 = _mm256_set1_pd(v[2]), v3 = _mm256_set1_pd(v[3]);
    int j = 0;
    for (; j + 8 <= k; j += 8) {
        __m256d lo = _mm256_loadu_pd(a + j), hi = _mm256_loadu_pd(a + j + 4);
        __m256 x0 = _mm256_loadu_ps(r0 + j), x1 = _mm256_loadu_ps(r1 + j);
        __m256 x2 = _mm256_loadu_ps(r2 + j), x3 = _mm256_loadu_ps(r3 + j);
        lo = _mm256_fmadd_pd(v0, _mm256_cvtps_pd(_mm256_castps256_ps128(x0)), lo);
        hi = _mm256_fmadd_pd(v0, _mm256_cvtps_pd(_mm256_extractf128_ps(x0, 1)), hi);
        lo = _mm256_fmadd_pd(v1, _mm256_cvtps_pd(_mm256_castps256_ps128(x1)), lo);
        hi = _mm256_fmadd_pd(v1, _mm256_cvtps_pd(_mm256_extractf128_ps(x1, 1)), hi);
        lo = _mm256_fmadd_pd(v2, _mm256_cvtps_pd(_mm256_castps256_ps128(x2)), lo);
        hi = _mm256_fmadd_pd(v2, _mm256_cvtps_pd(_mm256_extractf128_ps(x2, 1)), hi);
        lo = _mm256_fmadd_pd(v3, _mm256_cvtps_pd(_mm256_castps256_ps128(x3)), lo);
        hi = _mm256_fmadd_pd(v3, _mm256_cvtps_pd(_mm256_extractf128_ps(x3, 1)), hi);
        _mm256_storeu_pd(a + j, lo);
        _mm256_storeu_pd(a + j + 4, hi);
    }
    for (; j < k; j++) {
        a[j] += v[0] * r0[j] + v[1] * r1[j] + v[2] * r2[j] + v[3] * r3[j];
    }
}
#endif

/* An iteration but the last: w_b, v_b, and the next a, AXPY_ROWS rows at a
 * time. */
static void pass_iterate(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int k = p->k;
    const size_t ldk = (size_t)c->ldk;
    const float *u = c->u;
    const double bn = (double)p->n;
    double *a = c->acc + (size_t)share * ldk;
    for (int j = 0; j < k; j++) a[j] = 0.0;
    int lo, hi;
    assigner_pool_range(p->n, share, nshares, &lo, &hi);
    const bool down = c->reverse;
    const float *rows[AXPY_ROWS];
    double v[AXPY_ROWS];
    int nr = 0;
    for (int i = lo; i < hi; i++) {
        const int b = down ? lo + hi - 1 - i : i;
        const float *row = c->e + (size_t)b * ldk;
        const float *next = i + 1 < hi ? (down ? row - ldk : row + ldk) : NULL;
        float w = c->dot(row, u, k, next);
        if (!(w > 0.0f && w < INFINITY)) {
            c->bad = 1;
            continue;
        }
        rows[nr] = row;
        v[nr] = 1.0 / (bn * (double)w);
        if (++nr == AXPY_ROWS) {
            c->axpy_rows(a, rows, v, nr, k);
            nr = 0;
        }
    }
    if (nr > 0) {
        c->axpy_rows(a, rows, v, nr, k);
    }
}

/* The last iteration, output rows only: q_bk = E_bk u_k / w_b, plus the
 * row's entropy and argmax. */
SWAV_HOT static void pass_write(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int k = p->k;
    const size_t ldk = (size_t)c->ldk;
    const float *u = c->u;
    int lo, hi;
    assigner_pool_range(p->out_rows, share, nshares, &lo, &hi);
    const bool down = c->reverse;
    for (int i = lo; i < hi; i++) {
        const int r = down ? lo + hi - 1 - i : i;
        const float *row = c->e + (size_t)(p->out_row0 + r) * ldk;
        float *q = c->rowbuf + (size_t)share * ldk;
        float *dst = p->out_group > 0
                       ? c->codes + (size_t)(r / p->out_group) * p->out_group_stride +
                             (size_t)(r % p->out_group) * (size_t)k
                       : c->codes + (size_t)r * (size_t)k;
        float inv;
        if (p->iterations > 0) {
            const float *next =
                i + 1 < hi ? (down ? row - ldk : row + ldk) : NULL;
            float w = c->dot(row, u, k, next);
            if (!(w > 0.0f && w < INFINITY)) {
                c->bad = 1;
                w = 1.0f;
            }
            inv = 1.0f / w;
        } else {
            /* no iteration: q = B v0_b E_b / sum(a) */
            inv = (float)((double)p->n * c->inv_total * c->v0[p->out_row0 + r]);
        }
        const float *uu = p->iterations > 0 ? u : NULL;
        float mx = -1.0f;
        float h = 0.0f;
        if (uu) {
#pragma omp simd reduction(max : mx)
            for (int j = 0; j < k; j++) {
                float v = row[j] * uu[j] * inv;
                q[j] = v;
                mx = v > mx ? v : mx;
            }
        } else {
#pragma omp simd reduction(max : mx)
            for (int j = 0; j < k; j++) {
                float v = row[j] * inv;
                q[j] = v;
                mx = v > mx ? v : mx;
            }
        }
        if (c->entropy && r % (p->entropy_every > 1 ? p->entropy_every : 1) == 0) {
#pragma omp simd reduction(+ : h)
            for (int j = 0; j < k; j++) {
                float v = q[j] > 1e-30f ? q[j] : 1e-30f;
                h -= q[j] * sk_logf(v);
            }
            c->entropy[r] = h;
        }
        if (c->argmax) {
            c->argmax[r] = first_equal(q, k, mx);
        }
        stream_copy(dst, q, k);
    }
    stream_fence();
}

static void pass_dispatch(void *ctx, int share, int nshares)
{
    struct cpu_impl *c = ctx;
    switch (c->pass) {
    case PASS_BOUNDS: pass_bounds(c, share, nshares); break;
    case PASS_EXP: pass_exp(c, share, nshares); break;
    case PASS_EXP_FUSED: pass_exp_fused(c, share, nshares); break;
    case PASS_ITERATE: pass_iterate(c, share, nshares); break;
    default: pass_write(c, share, nshares); break;
    }
}

/* Sum the per-thread a into acc[0] and set u = 1 / (K a).  Returns -1 when a
 * prototype got no weight at all or a value is not finite. */
SWAV_HOT static int reduce_rows(struct cpu_impl *c, const double *scale)
{
    const int k = c->p->k;
    const size_t ldk = (size_t)c->ldk;
    const int t = c->threads;
    double *a0 = c->acc;
    if (scale) {
        for (int j = 0; j < k; j++) a0[j] *= scale[0];
    }
    for (int s = 1; s < t; s++) {
        const double *as = c->acc + (size_t)s * ldk;
        double f = scale ? scale[s] : 1.0;
        for (int j = 0; j < k; j++) a0[j] += f * as[j];
    }
    int bad = 0;
    for (int j = 0; j < k; j++) {
        double uj = 1.0 / ((double)k * a0[j]);
        if (!(a0[j] > 0.0) || !isfinite(uj) || uj > FLT_MAX) {
            bad = 1;
            uj = 0.0;
        }
        c->u[j] = (float)uj;
    }
    return bad ? -1 : 0;
}

static int cpu_run(void *vimpl, const struct sinkhorn_problem *p, const float *x,
                   const float *w, float *codes, float *entropy, int32_t *argmax,
                   struct sinkhorn_result *res)
{
    struct cpu_impl *c = vimpl;
    SWAV_ASSERT(p->n > 0 && p->k > 0 && p->d > 0 && p->iterations >= 0);
    SWAV_ASSERT(p->out_row0 >= 0 && p->out_rows >= 0 && p->out_row0 + p->out_rows <= p->n);
    const int kpad = assigner_scores_kpad(p->k);
    SWAV_ASSERT((size_t)p->n * (size_t)kpad <= c->cap_nk && p->n <= c->cap_n &&
                kpad <= c->cap_kpad);
    double t0 = swav_now_s();
    SWAV_ASSERT(!c->kernel || assigner_scores_packed_size(p->k, p->d) <= c->cap_wp);
    c->p = p;
    c->x = x;
    c->w = w;
    c->ldk = kpad;
    c->codes = codes;
    c->entropy = entropy;
    c->argmax = argmax;
    c->bad = 0;
    c->rebased = 0;
    bool fused = false;
    if (c->kernel) {
        if (!(p->w_same && w == c->packed_w && p->k == c->packed_k && p->d == c->packed_d)) {
            assigner_scores_pack(c->wp, w, p->k, p->d);
            double wn = 0.0;
            for (int j = 0; j < p->k; j++) {
                double s = 0.0;
                for (int t = 0; t < p->d; t++) {
                    s += (double)w[(size_t)j * p->d + t] * w[(size_t)j * p->d + t];
                }
                wn = s > wn ? s : wn;
            }
            c->wnorm = sqrt(wn);
            c->packed_w = w;
            c->packed_k = p->k;
            c->packed_d = p->d;
        }
        c->pass = PASS_BOUNDS;
        assigner_pool_run(c->pool, pass_dispatch, c);
        fused = true;
        c->shift_max = 0;
        for (int s = 0; s < c->threads; s++) {
            fused = fused && c->tmax[s] <= FUSED_BOUND;
            c->shift_max = c->tshift[s] > c->shift_max ? c->tshift[s] : c->shift_max;
        }
    }
    c->pass = fused ? PASS_EXP_FUSED : PASS_EXP;
    c->reverse = false;
    assigner_pool_run(c->pool, pass_dispatch, c);
    double t1 = swav_now_s();
    double scale[64];
    SWAV_ASSERT(c->threads <= 64);
    if (!fused) {
        /* the per-thread a were relative to each thread's largest m_b */
        double big = -INFINITY;
        for (int s = 0; s < c->threads; s++) {
            if (c->tmax[s] > big) big = c->tmax[s];
        }
        for (int s = 0; s < c->threads; s++) {
            scale[s] = c->tmax[s] > -INFINITY ? exp(c->tmax[s] - big) : 0.0;
        }
        if (p->iterations == 0) {
            for (int b = p->out_row0; b < p->out_row0 + p->out_rows; b++) {
                c->v0[b] = exp((double)c->m[b] - big);
            }
        }
    }
    int rc = 0;
    if (reduce_rows(c, fused ? NULL : scale) < 0) rc = -1;
    if (p->iterations == 0) {
        /* q = B v0_b E_bk / sum_k a_k */
        double tot = 0.0;
        for (int j = 0; j < p->k; j++) tot += c->acc[j];
        c->inv_total = 1.0 / tot;
    } else {
        for (int it = 1; it < p->iterations; it++) {
            c->pass = PASS_ITERATE;
            c->reverse = !c->reverse;
            assigner_pool_run(c->pool, pass_dispatch, c);
            if (reduce_rows(c, NULL) < 0) rc = -1;
        }
    }
    c->pass = PASS_WRITE;
    c->reverse = !c->reverse;
    assigner_pool_run(c->pool, pass_dispatch, c);
    double t2 = swav_now_s();
    if (res) {
        res->ms_scores = (t1 - t0) * 1e3;
        res->ms_sinkhorn = (t2 - t1) * 1e3;
        res->fused = fused;
        res->rebased_rows = c->rebased;
    }
    if (c->bad) rc = -1;
    return rc;
}

static void cpu_free(void *vimpl)
{
    struct cpu_impl *c = vimpl;
    assigner_pool_destroy(&c->pool);
    free(c->e);
    free(c->m);
    free(c->v0);
    free(c->shift);
    free(c->weight);
    free(c->u);
    free(c->acc);
    free(c->rowbuf);
    free(c->tmax);
    free(c->tshift);
    free(c->wp);
    free(c);
}

struct sinkhorn_backend *sinkhorn_backend_cpu_new(int threads)
{
    SWAV_ASSERT(threads >= 1 && threads <= 64);
    struct cpu_impl *c = swav_xcalloc(1, sizeof *c);
    c->threads = threads;
    c->pool = assigner_pool_new(threads);
    c->tmax = swav_xcalloc((size_t)threads, sizeof *c->tmax);
    c->tshift = swav_xcalloc((size_t)threads, sizeof *c->tshift);
    c->kernel = assigner_scores_have_kernel() && !getenv("SWAV_ASSIGNER_BLAS");
    c->dot = dot_plain;
    c->axpy_rows = axpy_rows_plain;
#if defined(__x86_64__) && defined(__GNUC__)
    if (c->kernel) {
        c->dot = dot_avx2;
        c->axpy_rows = axpy_rows_avx2;
    }
#endif
    /* each worker calls sgemm on its own rows */
    openblas_set_num_threads(1);
    struct sinkhorn_backend *b = swav_xcalloc(1, sizeof *b);
    b->name = "cpu";
    b->impl = c;
    b->reserve = cpu_reserve;
    b->run = cpu_run;
    b->free_impl = cpu_free;
    return b;
}

void sinkhorn_backend_destroy(struct sinkhorn_backend **pb)
{
    struct sinkhorn_backend *b = *pb;
    if (!b) {
        return;
    }
    b->free_impl(b->impl);
    free(b);
    *pb = NULL;
}

/* ---- the plain version ------------------------------------------------- */

void sinkhorn_plain(const struct sinkhorn_problem *p, const float *x, const float *w,
                    float *codes, float *q)
{
    const int n = p->n, k = p->k, d = p->d;
    /* q: (k, n), the reference's Q */
    for (int b = 0; b < n; b++) {
        for (int j = 0; j < k; j++) {
            double s = 0.0;
            for (int t = 0; t < d; t++) s += (double)x[(size_t)b * d + t] * w[(size_t)j * d + t];
            q[(size_t)j * n + b] = (float)exp((double)(float)s / (double)p->epsilon);
        }
    }
    double tot = 0.0;
    for (size_t i = 0; i < (size_t)n * k; i++) tot += q[i];
    for (size_t i = 0; i < (size_t)n * k; i++) q[i] = (float)(q[i] / tot);
    for (int it = 0; it < p->iterations; it++) {
        for (int j = 0; j < k; j++) {
            double s = 0.0;
            for (int b = 0; b < n; b++) s += q[(size_t)j * n + b];
            for (int b = 0; b < n; b++) {
                q[(size_t)j * n + b] = (float)(q[(size_t)j * n + b] / s / k);
            }
        }
        for (int b = 0; b < n; b++) {
            double s = 0.0;
            for (int j = 0; j < k; j++) s += q[(size_t)j * n + b];
            for (int j = 0; j < k; j++) {
                q[(size_t)j * n + b] = (float)(q[(size_t)j * n + b] / s / n);
            }
        }
    }
    for (int r = 0; r < p->out_rows; r++) {
        for (int j = 0; j < k; j++) {
            float *row = p->out_group > 0 ? codes + (size_t)(r / p->out_group) *
                                                            p->out_group_stride +
                                                        (size_t)(r % p->out_group) * k
                                          : codes + (size_t)r * k;
            row[j] = q[(size_t)j * n + p->out_row0 + r] * (float)n;
        }
    }
}
