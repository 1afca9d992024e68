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
#include <stdint.h>

typedef struct nn_backend nn_backend_t;

/* nthreads <= 0: leave the runtimes' defaults (OMP_NUM_THREADS etc.). */
nn_backend_t *nn_backend_cpu_new(int nthreads);
void nn_backend_destroy(nn_backend_t **be);
const char *nn_backend_name(const nn_backend_t *be);
/* Memory of this backend (device memory on the CUDA backend; host memory,
 * or the guard's pages under SWAV_NN_GUARD, on the CPU), 64-byte aligned
 * and zeroed.  Reached from the host only through nn_backend_copy. */
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
/* 1 when the backend runs a low-precision NHWC backbone, bf16 and fp16 (the
 * CUDA backend): a model may be built with cfg.act_dtype NN_DTYPE_BF16 or
 * NN_DTYPE_F16 (resnet.h); 0 on the CPU backend. */
int nn_backend_has_lowp(const nn_backend_t *be);
/* Number of cached primitives (tests: a step after warm-up creates none). */
int nn_backend_cache_size(const nn_backend_t *be);

/* ---- memory operations, ordered with the layers ---------------------------
 * On the CPU backend these run at once; on the CUDA one they are queued on
 * its stream like every layer, so model memory is only touched in order.
 * Host code never reads or writes a backend's memory itself (the CUDA
 * backend's is device memory): it copies with nn_backend_copy, which waits
 * for the queued work when its destination is host memory (nn/guard.h
 * checks this on the CPU). */

/* bytes from src to dst, each host memory or this backend's.  When dst is
 * host memory the bytes are there when the call returns; when src is host
 * memory it may be reused when the call returns. */
void nn_backend_copy(nn_backend_t *be, void *dst, const void *src, size_t bytes);
/* A host copy of n floats of p (this backend's memory), malloc'd: the
 * caller frees it.  NULL when p is NULL. */
float *nn_backend_to_host(nn_backend_t *be, const float *p, size_t n);
/* bytes of p (this backend's memory) set to zero. */
void nn_backend_zero(nn_backend_t *be, void *p, size_t bytes);
/* x[0..n) *= s (this backend's memory). */
void nn_backend_scale(nn_backend_t *be, float *x, size_t n, float s);
/* base[offsets[i]] += value for i < n; base is this backend's memory,
 * offsets host memory (BatchNorm's num_batches_tracked). */
void nn_backend_add_at(nn_backend_t *be, float *base, const int64_t *offsets, int n, float value);
/* 1 when any of x[0..n) (this backend's memory) is an infinity or a NaN,
 * else 0: dynamic loss scaling's overflow check (nn/loss_scale.h) over the
 * gradient buffer.  Waits for the queued work (the answer is on the host). */
int nn_backend_nonfinite(nn_backend_t *be, const float *x, size_t n);
/* A loader's crops of one resolution into the model's input, normalized as
 * nn_normalize_u8 (tensor.h) does: src (batch, n_crops, h, w, 3) uint8,
 * image-major as the loader sends them, in host memory (reusable when the
 * call returns); dst (n_crops * batch, 3, h, w) float, crop-major (row
 * c * batch + i is crop c of image i), this backend's memory. */
void nn_backend_normalize_crops(nn_backend_t *be, float *dst, const uint8_t *src, int batch,
                                int n_crops, int h, int w);
/* Rows of w (rows, cols), this backend's memory, scaled to unit L2 norm
 * (nn_prototypes_normalize of tensor.h). */
void nn_backend_normalize_rows(nn_backend_t *be, float *w, int64_t rows, int64_t cols);

#endif
