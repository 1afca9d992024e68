/* Tensors: a non-owning view (data pointer, dtype, shape, layout, device)
 * and the activation arena that owns the memory behind them.
 *
 * A tensor never allocates: memory comes from one of the model's buffers
 * (parameters, gradients, activation arena), so that nothing is allocated in
 * the step loop.  The arena is a bump allocator used in two passes: a
 * measuring pass with no memory (offsets only) at model build, then one
 * allocation of the measured size and a second pass that hands out the same
 * offsets, now as pointers.
 *
 * Layouts (docs/nn.md): NCHW is PyTorch's; NCHW8C is oneDNN's nChw8c (channel
 * blocks of 8 innermost, channels padded up to a multiple of 8: what the
 * AVX2 convolutions want), used inside the backbone; NC is a row-major
 * matrix (batch, features); NHWC is channels_last (the CUDA backend's
 * low-precision backbone, docs/cuda.md).
 *
 * dtypes: F32 everywhere but the low-precision backbone (cfg.act_dtype of
 * resnet.h), whose activations and their gradients are BF16 (bfloat16:
 * float's upper 16 bits, 8 significant bits, float's range) or F16 (IEEE
 * half: 11 significant bits, largest finite 65504), stored as uint16_t. */
#ifndef SWAV_NN_TENSOR_H
#define SWAV_NN_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define NN_MAX_DIMS 4

enum nn_dtype {
    NN_DTYPE_F32 = 0,
    NN_DTYPE_I32,
    NN_DTYPE_BF16, /* 2 bytes; only on a backend with lowp_nhwc (backend_impl.h) */
    NN_DTYPE_F16,  /* 2 bytes (IEEE binary16); likewise */
};

/* BF16 or F16: a low-precision activation dtype of the CUDA backbone. */
static inline int nn_dtype_is_lowp(enum nn_dtype dt)
{
    return dt == NN_DTYPE_BF16 || dt == NN_DTYPE_F16;
}
/* "fp32", "bf16", "fp16" (logs); "i32" */
const char *nn_dtype_name(enum nn_dtype dt);

enum nn_layout {
    NN_LAYOUT_NCHW = 0, /* (N, C, H, W) plain, also used for 1-D/2-D plain */
    NN_LAYOUT_NCHW8C,   /* oneDNN nChw8c: (N, ceil(C/8), H, W, 8) */
    NN_LAYOUT_NC,       /* (N, C) row-major */
    NN_LAYOUT_NHWC,     /* (N, H, W, C): channels innermost, no padding */
};

enum nn_device {
    NN_DEVICE_CPU = 0,
    NN_DEVICE_CUDA,
};

struct nn_tensor {
    void *data;
    enum nn_dtype dtype;
    enum nn_layout layout;
    enum nn_device device;
    int ndim;
    int64_t shape[NN_MAX_DIMS];
};

/* Views.  nn_tensor_4d(data, layout, n, c, h, w); nn_tensor_2d(data, n, c). */
struct nn_tensor nn_tensor_4d(float *data, enum nn_layout layout, int64_t n, int64_t c,
                              int64_t h, int64_t w);
struct nn_tensor nn_tensor_2d(float *data, int64_t n, int64_t c);
struct nn_tensor nn_tensor_1d(float *data, int64_t n);
/* Logical element count (product of shape). */
size_t nn_tensor_numel(const struct nn_tensor *t);
/* Bytes of one element of the dtype (4, or 2 for BF16 and F16). */
size_t nn_dtype_bytes(enum nn_dtype dtype);
/* Bytes the layout occupies (nChw8c pads C up to a multiple of 8), in the
 * tensor's dtype. */
size_t nn_tensor_bytes(const struct nn_tensor *t);
/* Same for float elements; nn_layout_bytes_dt for any dtype. */
size_t nn_layout_bytes(enum nn_layout layout, int64_t n, int64_t c, int64_t h, int64_t w);
size_t nn_layout_bytes_dt(enum nn_dtype dtype, enum nn_layout layout, int64_t n, int64_t c,
                          int64_t h, int64_t w);
/* Converts between any two 4-D layouts of the same logical shape, and
 * between F32, BF16 and F16 (host memory: plain C, used at boundaries and in
 * tests; not in the hot path).  To BF16 or F16 rounds to nearest even. */
void nn_tensor_convert(struct nn_tensor *dst, const struct nn_tensor *src);
float *nn_tensor_f32(const struct nn_tensor *t);

/* bfloat16 on the host: round to nearest even (NaN stays a quiet NaN), as
 * CUDA's __float2bfloat16_rn; and back (exact). */
uint16_t nn_bf16_from_f32(float f);
float nn_f32_from_bf16(uint16_t h);
/* IEEE half on the host: round to nearest even, as CUDA's __float2half_rn
 * (beyond 65504 + half a step: inf; below 2^-24: subnormals, then zero;
 * NaN stays a quiet NaN); and back (exact). */
uint16_t nn_f16_from_f32(float f);
float nn_f32_from_f16(uint16_t h);

/* ---- arena ---------------------------------------------------------------- */

struct nn_arena {
    nn_backend_t *be;    /* whose memory (NULL: host) */
    unsigned char *base; /* NULL while measuring */
    size_t size;         /* bytes allocated (after nn_arena_commit) */
    size_t used;         /* bytes handed out in the current pass */
    size_t high;         /* largest `used` seen in any pass */
};

/* be: the backend whose memory the arena hands out (nn_backend_alloc), so
 * that its layers can address it; NULL: host memory. */
void nn_arena_init(struct nn_arena *a, nn_backend_t *be);
/* Hands out `bytes` aligned to 64.  While measuring returns a fake non-NULL
 * pointer that must not be dereferenced. */
void *nn_arena_alloc(struct nn_arena *a, size_t bytes);
/* Ends the measuring pass: allocates `high` bytes (zeroed, pages touched once)
 * and rewinds, so the next pass hands out real memory at the same offsets. */
void nn_arena_commit(struct nn_arena *a);
void nn_arena_rewind(struct nn_arena *a);
void nn_arena_free(struct nn_arena *a);

/* uint8 NHWC crops (what the loader sends) -> float NCHW, normalized with the
 * reference's mean [0.485,0.456,0.406] and std [0.228,0.224,0.225].
 * src: (n, h, w, 3) uint8; dst: (n, 3, h, w) float. */
void nn_normalize_u8(float *dst, const uint8_t *src, int n, int h, int w);

/* Rows of the prototypes (K, D) matrix L2-normalized in place, as
 * F.normalize(w, dim=1, p=2) (norm clamped below at 1e-12); the reference
 * does it at the start of every step. */
void nn_prototypes_normalize(float *w, int64_t rows, int64_t cols);

#endif
