/* Scores by chunks of rows: see scores.h. */
#include "scores.h"

#include <cblas.h>
#include <string.h>

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

__attribute__((target("avx2,fma"))) static void tile(const float *x, int d, int mr,
                                                      const float *wp, float *out, int ldo,
                                                      int nc)
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
    if (mr == TILE_ROWS && nc == PANEL) {
        _mm256_storeu_ps(out, c00);
        _mm256_storeu_ps(out + 8, c01);
        _mm256_storeu_ps(out + ldo, c10);
        _mm256_storeu_ps(out + ldo + 8, c11);
        _mm256_storeu_ps(out + 2 * ldo, c20);
        _mm256_storeu_ps(out + 2 * ldo + 8, c21);
        _mm256_storeu_ps(out + 3 * ldo, c30);
        _mm256_storeu_ps(out + 3 * ldo + 8, c31);
        _mm256_storeu_ps(out + 4 * ldo, c40);
        _mm256_storeu_ps(out + 4 * ldo + 8, c41);
        _mm256_storeu_ps(out + 5 * ldo, c50);
        _mm256_storeu_ps(out + 5 * ldo + 8, c51);
        return;
    }
    float buf[TILE_ROWS][PANEL];
    _mm256_storeu_ps(buf[0], c00);
    _mm256_storeu_ps(buf[0] + 8, c01);
    _mm256_storeu_ps(buf[1], c10);
    _mm256_storeu_ps(buf[1] + 8, c11);
    _mm256_storeu_ps(buf[2], c20);
    _mm256_storeu_ps(buf[2] + 8, c21);
    _mm256_storeu_ps(buf[3], c30);
    _mm256_storeu_ps(buf[3] + 8, c31);
    _mm256_storeu_ps(buf[4], c40);
    _mm256_storeu_ps(buf[4] + 8, c41);
    _mm256_storeu_ps(buf[5], c50);
    _mm256_storeu_ps(buf[5] + 8, c51);
    for (int r = 0; r < mr; r++) {
        memcpy(out + (size_t)r * ldo, buf[r], (size_t)nc * sizeof(float));
    }
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
