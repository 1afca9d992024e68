/* Scores by chunks of rows: see scores.h. */
#include "scores.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "common/check.h"

#define PANEL 16        /* prototypes per packed panel */
#define TILE_ROWS 6
#define PANEL_BLOCK 16  /* panels per L2 block: 16 x 8 KiB at D = 128 */

size_t assigner_scores_packed_size(int k, int d)
{
    size_t panels = ((size_t)k + PANEL - 1) / PANEL;
    return panels * PANEL * (size_t)d;
}

void assigner_scores_pack(float *wp, const float *w, int k, int d)
{
    int panels = (k + PANEL - 1) / PANEL;
    for (int p = 0; p < panels; p++) {
        float *dst = wp + (size_t)p * PANEL * d;
        for (int t = 0; t < d; t++) {
            for (int j = 0; j < PANEL; j++) {
                int kk = p * PANEL + j;
                dst[(size_t)t * PANEL + j] = kk < k ? w[(size_t)kk * d + t] : 0.0f;
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SCORES_X86 1

/* The 6 x 16 tile of x rows [0, mr) against one packed panel, into buf
 * (rows past mr repeat row 0). */
__attribute__((target("avx2,fma"))) static inline void tile_buf(const float *x, int d, int mr,
                                                                const float *wp,
                                                                float buf[TILE_ROWS][PANEL])
{
    const float *x0 = x;
    const float *x1 = mr > 1 ? x + d : x0;
    const float *x2 = mr > 2 ? x + 2 * d : x0;
    const float *x3 = mr > 3 ? x + 3 * d : x0;
    const float *x4 = mr > 4 ? x + 4 * d : x0;
    const float *x5 = mr > 5 ? x + 5 * d : x0;
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    for (int t = 0; t < d; t++) {
        __m256 b0 = _mm256_load_ps(wp + (size_t)t * PANEL);
        __m256 b1 = _mm256_load_ps(wp + (size_t)t * PANEL + 8);
        __m256 a;
        a = _mm256_broadcast_ss(x0 + t);
        c00 = _mm256_fmadd_ps(a, b0, c00);
        c01 = _mm256_fmadd_ps(a, b1, c01);
        a = _mm256_broadcast_ss(x1 + t);
        c10 = _mm256_fmadd_ps(a, b0, c10);
        c11 = _mm256_fmadd_ps(a, b1, c11);
        a = _mm256_broadcast_ss(x2 + t);
        c20 = _mm256_fmadd_ps(a, b0, c20);
        c21 = _mm256_fmadd_ps(a, b1, c21);
        a = _mm256_broadcast_ss(x3 + t);
        c30 = _mm256_fmadd_ps(a, b0, c30);
        c31 = _mm256_fmadd_ps(a, b1, c31);
        a = _mm256_broadcast_ss(x4 + t);
        c40 = _mm256_fmadd_ps(a, b0, c40);
        c41 = _mm256_fmadd_ps(a, b1, c41);
        a = _mm256_broadcast_ss(x5 + t);
        c50 = _mm256_fmadd_ps(a, b0, c50);
        c51 = _mm256_fmadd_ps(a, b1, c51);
    }
    _mm256_store_ps(buf[0], c00);
    _mm256_store_ps(buf[0] + 8, c01);
    _mm256_store_ps(buf[1], c10);
    _mm256_store_ps(buf[1] + 8, c11);
    _mm256_store_ps(buf[2], c20);
    _mm256_store_ps(buf[2] + 8, c21);
    _mm256_store_ps(buf[3], c30);
    _mm256_store_ps(buf[3] + 8, c31);
    _mm256_store_ps(buf[4], c40);
    _mm256_store_ps(buf[4] + 8, c41);
    _mm256_store_ps(buf[5], c50);
    _mm256_store_ps(buf[5] + 8, c51);
}

__attribute__((target("avx2,fma"))) static void tile(const float *x, int d, int mr,
                                                      const float *wp, float *out, int ldo,
                                                      int nc)
{
    _Alignas(32) float buf[TILE_ROWS][PANEL];
    tile_buf(x, d, mr, wp, buf);
    for (int r = 0; r < mr; r++) {
        memcpy(out + (size_t)r * ldo, buf[r], (size_t)nc * sizeof(float));
    }
}

/* exp(x) * 2^-shift of 8 floats: the Cephes polynomial of sinkhorn.c's
 * sk_expf (~1-2 ulp), with FMA, the shift subtracted from the exponent
 * (exact).  x within [-87.3, 88.3] and the result a normal float (the
 * caller's bounds). */
__attribute__((target("avx2,fma"))) static inline __m256 exp8_shift(__m256 x, __m256i shift)
{
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_sub_epi32(_mm256_cvtps_epi32(n), shift);
    e = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* assigner_scores_exp_rows on AVX2: panel blocks sized for L2, row tiles of
 * 6 inside, the tile's epilogue (divide, exp, store, column sums, row
 * maxima) straight after its 128-step dot products. */
__attribute__((target("avx2,fma"))) static void exp_rows_avx2(
    float *e, int lde, const float *x, int rows, const float *wp, int k, int d, float eps,
    const int32_t *shift, const float *weight, double *colsum, float *smax)
{
    _Alignas(32) float buf[TILE_ROWS][PANEL];
    _Alignas(32) float rmax[ASSIGNER_SCORES_EXP_MAX_ROWS][8];
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    /* s / eps as s * hi + s * lo, hi + lo = 1 / eps to twice float precision:
     * a multiply and an FMA give the correctly rounded quotient but for rare
     * ties, where a division costs as much as the rest of the epilogue */
    const double inv = 1.0 / (double)eps;
    const __m256 vhi = _mm256_set1_ps((float)inv);
    const __m256 vlo = _mm256_set1_ps((float)(inv - (double)(float)inv));
    for (int r = 0; r < rows; r++) _mm256_store_ps(rmax[r], ninf);
    const int panels = (k + PANEL - 1) / PANEL;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int pb = 0; pb < panels; pb += PANEL_BLOCK) {
        int pe = pb + PANEL_BLOCK < panels ? pb + PANEL_BLOCK : panels;
        for (int r0 = 0; r0 < rows; r0 += TILE_ROWS) {
            int mr = rows - r0 < TILE_ROWS ? rows - r0 : TILE_ROWS;
            for (int p = pb; p < pe; p++) {
                tile_buf(x + (size_t)r0 * d, d, mr, wp + (size_t)p * PANEL * d, buf);
                /* lanes past k (the last panel's padding) stay out of the maxima */
                int nc = k - p * PANEL;
                __m256 m0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nc), lane));
                __m256 m1 = _mm256_castsi256_ps(
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(nc - 8), lane));
                __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
                float *out = e + (size_t)r0 * lde + (size_t)p * PANEL;
                for (int r = 0; r < mr; r++) {
                    __m256 c0 = _mm256_load_ps(buf[r]), c1 = _mm256_load_ps(buf[r] + 8);
                    __m256 mx = nc >= PANEL
                                    ? _mm256_max_ps(c0, c1)
                                    : _mm256_max_ps(_mm256_blendv_ps(ninf, c0, m0),
                                                    _mm256_blendv_ps(ninf, c1, m1));
                    _mm256_store_ps(rmax[r0 + r], _mm256_max_ps(_mm256_load_ps(rmax[r0 + r]), mx));
                    __m256i sh = _mm256_set1_epi32(shift[r0 + r]);
                    __m256 t0 = _mm256_fmadd_ps(c0, vhi, _mm256_mul_ps(c0, vlo));
                    __m256 t1 = _mm256_fmadd_ps(c1, vhi, _mm256_mul_ps(c1, vlo));
                    __m256 e0 = exp8_shift(t0, sh);
                    __m256 e1 = exp8_shift(t1, sh);
                    _mm256_stream_ps(out + (size_t)r * lde, e0);
                    _mm256_stream_ps(out + (size_t)r * lde + 8, e1);
                    __m256 wr = _mm256_set1_ps(weight[r0 + r]);
                    s0 = _mm256_fmadd_ps(e0, wr, s0);
                    s1 = _mm256_fmadd_ps(e1, wr, s1);
                }
                double *cs = colsum + (size_t)p * PANEL;
                _mm256_storeu_pd(cs, _mm256_add_pd(_mm256_loadu_pd(cs),
                                                   _mm256_cvtps_pd(_mm256_castps256_ps128(s0))));
                _mm256_storeu_pd(cs + 4, _mm256_add_pd(_mm256_loadu_pd(cs + 4),
                                                       _mm256_cvtps_pd(_mm256_extractf128_ps(s0, 1))));
                _mm256_storeu_pd(cs + 8, _mm256_add_pd(_mm256_loadu_pd(cs + 8),
                                                       _mm256_cvtps_pd(_mm256_castps256_ps128(s1))));
                _mm256_storeu_pd(cs + 12, _mm256_add_pd(_mm256_loadu_pd(cs + 12),
                                                        _mm256_cvtps_pd(_mm256_extractf128_ps(s1, 1))));
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        float m = -INFINITY;
        for (int t = 0; t < 8; t++) m = rmax[r][t] > m ? rmax[r][t] : m;
        smax[r] = m;
    }
    _mm_sfence();
}
#endif

bool assigner_scores_have_kernel(void)
{
#ifdef SCORES_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

void assigner_scores_rows(float *s, int ldo, const float *x, int rows, const float *wp,
                          const float *w, int k, int d)
{
#ifdef SCORES_X86
    if (wp) {
        int panels = (k + PANEL - 1) / PANEL;
        for (int pb = 0; pb < panels; pb += PANEL_BLOCK) {
            int pe = pb + PANEL_BLOCK < panels ? pb + PANEL_BLOCK : panels;
            for (int r = 0; r < rows; r += TILE_ROWS) {
                int mr = rows - r < TILE_ROWS ? rows - r : TILE_ROWS;
                for (int p = pb; p < pe; p++) {
                    int nc = k - p * PANEL < PANEL ? k - p * PANEL : PANEL;
                    tile(x + (size_t)r * d, d, mr, wp + (size_t)p * PANEL * d,
                         s + (size_t)r * ldo + (size_t)p * PANEL, ldo, nc);
                }
            }
        }
        return;
    }
#endif
    (void)wp;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, k, d, 1.0f, x, d, w, d, 0.0f, s,
                ldo);
}

int assigner_scores_kpad(int k)
{
    return (k + PANEL - 1) / PANEL * PANEL;
}

void assigner_scores_exp_rows(float *e, int lde, const float *x, int rows, const float *wp,
                              int k, int d, float eps, const int32_t *shift,
                              const float *weight, double *colsum, float *smax)
{
    SWAV_ASSERT(rows >= 0 && rows <= ASSIGNER_SCORES_EXP_MAX_ROWS);
    SWAV_ASSERT(lde % PANEL == 0 && lde >= assigner_scores_kpad(k) &&
                ((uintptr_t)e & 63u) == 0);
#ifdef SCORES_X86
    exp_rows_avx2(e, lde, x, rows, wp, k, d, eps, shift, weight, colsum, smax);
#else
    (void)e; (void)x; (void)wp; (void)eps; (void)shift; (void)weight; (void)colsum; (void)smax;
    SWAV_ASSERT(!"assigner_scores_exp_rows without the kernel");
#endif
}
