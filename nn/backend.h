/* Backends: a table of function pointers behind an opaque handle (ggml).
 *
 * Every layer of nn/layers.h is a call through this table, so a CUDA backend
 * can replace the CPU one without the model code changing.  The CPU backend
 * is the reference: oneDNN 2.6 (convolution, batch norm, pooling, eltwise,
 * binary; OpenMP threads) and OpenBLAS cblas_sgemm (linear layers), with
 * every oneDNN primitive created once per shape and cached in the backend. */
#ifndef SWAV_NN_BACKEND_H
#define SWAV_NN_BACKEND_H

#include <stddef.h>

typedef struct nn_backend nn_backend_t;

/* nthreads <= 0: leave the runtimes' defaults (OMP_NUM_THREADS etc.). */
nn_backend_t *nn_backend_cpu_new(int nthreads);
void nn_backend_destroy(nn_backend_t **be);
const char *nn_backend_name(const nn_backend_t *be);
/* Device memory of this backend (host memory for the CPU backend), 64-byte
 * aligned and zeroed. */
void *nn_backend_alloc(nn_backend_t *be, size_t bytes);
void nn_backend_free(nn_backend_t *be, void *p);
/* Waits for queued work (no-op on CPU). */
void nn_backend_sync(nn_backend_t *be);
/* Parameter memory was written (optimizer step, checkpoint load, a test
 * perturbing a weight): copies of weights the backend keeps in its kernels'
 * layouts are stale.  Convolutions reorder their weights once per version
 * and reuse that copy for every crop group and for the backward;
 * nn_model_forward calls this itself. */
void nn_backend_weights_updated(nn_backend_t *be);
/* Number of cached primitives (tests: a step after warm-up creates none). */
int nn_backend_cache_size(const nn_backend_t *be);

#endif
