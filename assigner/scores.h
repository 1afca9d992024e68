/* Scores S = x w^T for the CPU Sinkhorn backend, by chunks of rows.
 *
 * The shape is always the same thin one (thousands of rows, K in the
 * thousands, D = 128): OpenBLAS repacks w for every call and zeroes C in a
 * separate pass before its kernel, which is 40% of its time here.  The AVX2
 * kernel packs w once per problem into 16-prototype panels (D x 16 floats,
 * one 8 KiB block each) and computes 6 x 16 tiles with 12 accumulators, panel
 * blocks sized for L2; each output is a plain dot product over D in order.
 * Machines without AVX2+FMA use cblas_sgemm.  The fused variant below also
 * turns each tile into exp and column sums before it leaves the registers. */
#ifndef SWAV_ASSIGNER_SCORES_H
#define SWAV_ASSIGNER_SCORES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Floats of the packed form of w (k, d). */
size_t assigner_scores_packed_size(int k, int d);
/* Whether the packed kernel runs on this machine. */
bool assigner_scores_have_kernel(void);
/* Pack w (k, d) into wp (assigner_scores_packed_size floats, 32-byte aligned). */
void assigner_scores_pack(float *wp, const float *w, int k, int d);
/* s (rows, ldo) = x (rows, d) . w^T for all k prototypes; wp packed from w
 * (used by the kernel), w itself used by the BLAS fallback. */
void assigner_scores_rows(float *s, int ldo, const float *x, int rows, const float *wp,
                          const float *w, int k, int d);

/* k rounded up to whole panels: the row stride the fused kernel needs. */
int assigner_scores_kpad(int k);

/* Most rows per assigner_scores_exp_rows call. */
#define ASSIGNER_SCORES_EXP_MAX_ROWS 64

/* The score kernel with the exp of the CPU Sinkhorn backend fused into its
 * epilogue, on the 6 x 16 tile while it is in registers (kernel machines
 * only: wp from assigner_scores_pack).  For rows r < rows (<= the max above)
 * and s = x w^T:
 *   e[r][j]    = exp(s_rj / eps) * 2^-shift[r]   for j < kpad (columns k.. are
 *                                               the zero padding prototypes)
 *   colsum[j] += sum_r weight[r] * e[r][j]       for j < kpad (double)
 *   smax[r]    = max_{j<k} s_rj                  (the raw row maximum)
 * s / eps is a float division as the reference's out / epsilon, and the
 * power-of-two shift enters the exponent of exp exactly.  The caller keeps
 * |s_rj / eps| <= 40 and shift[r] <= 60 (so every e is a normal float).
 * e: 64-byte aligned, lde a multiple of 16 (whole cache lines per tile row,
 * written with non-temporal stores; an sfence ends the call). */
void assigner_scores_exp_rows(float *e, int lde, const float *x, int rows, const float *wp,
                              int k, int d, float eps, const int32_t *shift,
                              const float *weight, double *colsum, float *smax);

#endif
