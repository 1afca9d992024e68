/* CPU Sinkhorn-Knopp with scaling vectors: see sinkhorn.h for the algebra.
 *
 * Layout: E (n, k) sample-major, the sgemm output overwritten in place by
 * exp(S/eps - m_b).  With Q = diag(v) E diag(u):
 *   row normalisation of the reference (per prototype):  u_k = 1 / (K a_k),
 *        a_k = sum_b v_b E_bk                           (axpy per sample row)
 *   column normalisation (per sample):                  v_b = 1 / (B w_b),
 *        w_b = sum_k E_bk u_k                           (dot per sample row)
 * so one pass per iteration computes w_b, v_b and the next a in one read of
 * each row, and the last pass writes q_bk = E_bk u_k / w_b (= B v_b E_bk u_k)
 * only for the rows whose codes are wanted.  Row maxima m_b keep exp in
 * range; they re-enter as the initial v_b = exp(m_b - M), accumulated online
 * (as in an online softmax) so no separate max pass is needed. */
#include "sinkhorn.h"

#include <cblas.h>
#include <float.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

struct cpu_impl {
    assigner_pool_t *pool;
    int threads;
    size_t cap_nk;      /* floats in e */
    int cap_n, cap_k;
    bool kernel;        /* the packed AVX2 score kernel runs here */
    size_t cap_wp;
    float *wp;          /* packed prototypes (see scores.h), or NULL */
    float *e;           /* (n, k) scores, then exp */
    float *m;           /* (n) row maxima */
    float *u;           /* (k) prototype scaling */
    double *acc;        /* (threads, k) per-thread a */
    float *rowbuf;      /* (threads, k) a row of codes before it is streamed out */
    double *tmax;       /* (threads) running max of each thread's a */
    int bad;            /* set by a worker on a non-finite value */

    /* the pass in flight */
    const struct sinkhorn_problem *p;
    const float *x, *w;
    int pass;           /* 0: exp; 1: iterate; 2: write codes */
    float *codes;
    float *entropy;
    int32_t *argmax;
};

static int cpu_reserve(void *vimpl, int n, int k, int d)
{
    struct cpu_impl *c = vimpl;
    size_t nk = (size_t)n * (size_t)k;
    if (nk > c->cap_nk) {
        free(c->e);
        c->e = malloc(nk * sizeof(float));
        if (!c->e) {
            c->cap_nk = 0;
            return -1;
        }
        c->cap_nk = nk;
    }
    if (n > c->cap_n) {
        free(c->m);
        c->m = swav_xmalloc((size_t)n * sizeof(float));
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
    if (k > c->cap_k) {
        free(c->u);
        free(c->acc);
        free(c->rowbuf);
        c->rowbuf = swav_xmalloc((size_t)k * (size_t)c->threads * sizeof(float));
        c->u = swav_xmalloc((size_t)k * sizeof(float));
        c->acc = swav_xmalloc((size_t)k * (size_t)c->threads * sizeof(double));
        c->cap_k = k;
    }
    return 0;
}

/* Rows of scores computed per sgemm call in pass 0: small enough that the
 * block is still in cache when exp reads it back. */
#define SCORE_CHUNK 64

/* Pass 0: S = x w^T by chunks of rows (each thread its own, scores.h), then in cache E = exp(S/eps - m_b) and a (per
 * thread) = sum_b exp(m_b - M_t) E_b. */
SWAV_HOT static void pass_exp(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int k = p->k;
    const float eps = p->epsilon;
    double *a = c->acc + (size_t)share * (size_t)k;
    for (int j = 0; j < k; j++) a[j] = 0.0;
    float tmax = -INFINITY;
    int lo, hi;
    assigner_pool_range(p->n, share, nshares, &lo, &hi);
    for (int b = lo; b < hi; b++) {
        if ((b - lo) % SCORE_CHUNK == 0) {
            int rows = hi - b < SCORE_CHUNK ? hi - b : SCORE_CHUNK;
            assigner_scores_rows(c->e + (size_t)b * (size_t)k, k,
                                 c->x + (size_t)b * (size_t)p->d, rows, c->kernel ? c->wp : NULL,
                                 c->w, k, p->d);
        }
        float *row = c->e + (size_t)b * (size_t)k;
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

/* An iteration but the last: w_b, v_b, and the next a. */
SWAV_HOT static void pass_iterate(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int k = p->k;
    const float *u = c->u;
    const double bn = (double)p->n;
    double *a = c->acc + (size_t)share * (size_t)k;
    for (int j = 0; j < k; j++) a[j] = 0.0;
    int lo, hi;
    assigner_pool_range(p->n, share, nshares, &lo, &hi);
    for (int b = lo; b < hi; b++) {
        const float *row = c->e + (size_t)b * (size_t)k;
        float w = 0.0f;
#pragma omp simd reduction(+ : w)
        for (int j = 0; j < k; j++) {
            w += row[j] * u[j];
        }
        if (!(w > 0.0f && w < INFINITY)) {
            c->bad = 1;
            continue;
        }
        double vb = 1.0 / (bn * (double)w);
#pragma omp simd
        for (int j = 0; j < k; j++) {
            a[j] += vb * (double)row[j];
        }
    }
}

/* The last iteration, output rows only: q_bk = E_bk u_k / w_b, plus the
 * row's entropy and argmax. */
SWAV_HOT static void pass_write(struct cpu_impl *c, int share, int nshares)
{
    const struct sinkhorn_problem *p = c->p;
    const int k = p->k;
    const float *u = c->u;
    int lo, hi;
    assigner_pool_range(p->out_rows, share, nshares, &lo, &hi);
    for (int r = lo; r < hi; r++) {
        const float *row = c->e + (size_t)(p->out_row0 + r) * (size_t)k;
        float *q = c->rowbuf + (size_t)share * (size_t)k;
        float *dst = p->out_group > 0
                       ? c->codes + (size_t)(r / p->out_group) * p->out_group_stride +
                             (size_t)(r % p->out_group) * (size_t)k
                       : c->codes + (size_t)r * (size_t)k;
        float inv;
        if (p->iterations > 0) {
            float w = 0.0f;
#pragma omp simd reduction(+ : w)
            for (int j = 0; j < k; j++) {
                w += row[j] * u[j];
            }
            if (!(w > 0.0f && w < INFINITY)) {
                c->bad = 1;
                w = 1.0f;
            }
            inv = 1.0f / w;
        } else {
            /* no iteration: q = B * Q0, u holds 1 / sum(Q0) */
            inv = (float)p->n * c->u[0] * c->m[p->out_row0 + r];
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
    case 0: pass_exp(c, share, nshares); break;
    case 1: pass_iterate(c, share, nshares); break;
    default: pass_write(c, share, nshares); break;
    }
}

/* Sum the per-thread a into acc[0] and set u = 1 / (K a).  Returns -1 when a
 * prototype got no weight at all or a value is not finite. */
SWAV_HOT static int reduce_rows(struct cpu_impl *c, const double *scale)
{
    const int k = c->p->k;
    const int t = c->threads;
    double *a0 = c->acc;
    if (scale) {
        for (int j = 0; j < k; j++) a0[j] *= scale[0];
    }
    for (int s = 1; s < t; s++) {
        const double *as = c->acc + (size_t)s * (size_t)k;
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
    SWAV_ASSERT((size_t)p->n * (size_t)p->k <= c->cap_nk && p->n <= c->cap_n &&
                p->k <= c->cap_k);
    double t0 = swav_now_s();
    SWAV_ASSERT(!c->kernel || assigner_scores_packed_size(p->k, p->d) <= c->cap_wp);
    if (c->kernel) {
        assigner_scores_pack(c->wp, w, p->k, p->d);
    }
    c->p = p;
    c->x = x;
    c->w = w;
    c->codes = codes;
    c->entropy = entropy;
    c->argmax = argmax;
    c->bad = 0;
    c->pass = 0;
    assigner_pool_run(c->pool, pass_dispatch, c);
    double t1 = swav_now_s();
    double big = -INFINITY;
    for (int s = 0; s < c->threads; s++) {
        if (c->tmax[s] > big) big = c->tmax[s];
    }
    double scale[64];
    SWAV_ASSERT(c->threads <= 64);
    for (int s = 0; s < c->threads; s++) {
        scale[s] = c->tmax[s] > -INFINITY ? exp(c->tmax[s] - big) : 0.0;
    }
    int rc = 0;
    if (p->iterations == 0) {
        /* q = B exp(m_b - M) E_bk / sum_k a_k; m is reused to carry
         * exp(m_b - M), u[0] the inverse total. */
        if (reduce_rows(c, scale) < 0) rc = -1;
        double tot = 0.0;
        for (int j = 0; j < p->k; j++) tot += c->acc[j];
        c->u[0] = (float)(1.0 / tot);
        for (int b = p->out_row0; b < p->out_row0 + p->out_rows; b++) {
            c->m[b] = (float)exp((double)c->m[b] - big);
        }
        c->pass = 2;
        assigner_pool_run(c->pool, pass_dispatch, c);
    } else {
        if (reduce_rows(c, scale) < 0) rc = -1;
        for (int it = 1; it < p->iterations; it++) {
            c->pass = 1;
            assigner_pool_run(c->pool, pass_dispatch, c);
            if (reduce_rows(c, NULL) < 0) rc = -1;
        }
        c->pass = 2;
        assigner_pool_run(c->pool, pass_dispatch, c);
    }
    double t2 = swav_now_s();
    if (res) {
        res->ms_scores = (t1 - t0) * 1e3;
        res->ms_sinkhorn = (t2 - t1) * 1e3;
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
    free(c->u);
    free(c->acc);
    free(c->rowbuf);
    free(c->tmax);
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
    c->kernel = assigner_scores_have_kernel() && !getenv("SWAV_ASSIGNER_BLAS");
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
