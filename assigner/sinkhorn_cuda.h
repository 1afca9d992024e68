/* The CUDA backend of the assigner's scores and Sinkhorn-Knopp (sinkhorn.h's
 * struct sinkhorn_backend on one GPU), built only where the CUDA toolkit is
 * (meson's have_cuda; C callers test SWAV_HAVE_CUDA).
 *
 * Same problem and results as the CPU backend: S = x w^T with cuBLAS (fp32;
 * TF32 only with SWAV_CUDA_TF32=1), E = exp(S/eps - m_b) with m_b the row
 * maximum (the CPU's row-maximum path), and the iterations on scaling
 * vectors with E read-only: Q = diag(v) E diag(u), one fused pass over the
 * scores per iteration (the row dots w_b = E_b . u, v_b = 1 / (B w_b), and
 * the next column sums a = sum_b v_b E_b in the same read), Q written once
 * for the output rows only and copied back with their entropy and argmax.
 * exp is recomputed from S in every pass rather than stored: a pass reads
 * the matrix and writes nothing but vectors.  Device buffers are made by
 * reserve and reused; every sum has a fixed order (no float atomics), so a
 * run repeated on the same device gives the same codes, bit for bit.
 * Up to 32768 prototypes.  See docs/assigner.md. */
#ifndef SWAV_ASSIGNER_SINKHORN_CUDA_H
#define SWAV_ASSIGNER_SINKHORN_CUDA_H

#include <stddef.h>

#include "sinkhorn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most prototypes the CUDA backend takes. */
#define SINKHORN_CUDA_MAX_K 32768

/* Number of usable CUDA devices; 0 with the runtime's reason in why
 * ("cudaErrorNoDevice: no CUDA-capable device is detected", ...). */
int sinkhorn_cuda_device_count(char *why, size_t whylen);

/* The backend on `device`, with its own stream and cuBLAS handle; logs the
 * device's name.  NULL with a message when the device cannot be used. */
struct sinkhorn_backend *sinkhorn_backend_cuda_new(int device, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
