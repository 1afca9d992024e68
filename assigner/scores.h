/* Scores S = x w^T for the CPU Sinkhorn backend, by chunks of rows.
 *
 * The shape is always the same thin one (thousands of rows, K in the
 * thousands, D = 128): OpenBLAS repacks w for every call and zeroes C in a
 * separate pass before its kernel, which is 40% of its time here.  The AVX2
 * kernel packs w once per problem into 16-prototype panels (D x 16 floats,
 * one 8 KiB block each) and computes 6 x 16 tiles with 12 accumulators, panel
 * blocks sized for L2; each output is a plain dot product over D in order.
 * Machines without AVX2+FMA use cblas_sgemm. */
#ifndef SWAV_ASSIGNER_SCORES_H
#define SWAV_ASSIGNER_SCORES_H

#include <stdbool.h>
#include <stddef.h>

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

#endif
