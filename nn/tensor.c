/* Tensor views, layout arithmetic, the activation arena, input normalization:
 * see tensor.h. */
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/check.h"

struct nn_tensor nn_tensor_4d(float *data, enum nn_layout layout, int64_t n, int64_t c,
                              int64_t h, int64_t w)
{
    struct nn_tensor t = {0};
    t.data = data;
    t.dtype = NN_DTYPE_F32;
    t.layout = layout;
    t.device = NN_DEVICE_CPU;
    t.ndim = 4;
    t.shape[0] = n;
    t.shape[1] = c;
    t.shape[2] = h;
    t.shape[3] = w;
    return t;
}

struct nn_tensor nn_tensor_2d(float *data, int64_t n, int64_t c)
{
    struct nn_tensor t = {0};
    t.data = data;
    t.dtype = NN_DTYPE_F32;
    t.layout = NN_LAYOUT_NC;
    t.ndim = 2;
    t.shape[0] = n;
    t.shape[1] = c;
    return t;
}

struct nn_tensor nn_tensor_1d(float *data, int64_t n)
{
    struct nn_tensor t = {0};
    t.data = data;
    t.dtype = NN_DTYPE_F32;
    t.layout = NN_LAYOUT_NCHW;
    t.ndim = 1;
    t.shape[0] = n;
    return t;
}

size_t nn_tensor_numel(const struct nn_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        n *= (size_t)t->shape[i];
    }
    return n;
}

size_t nn_dtype_bytes(enum nn_dtype dtype)
{
    return nn_dtype_is_lowp(dtype) ? 2 : 4;
}

const char *nn_dtype_name(enum nn_dtype dt)
{
    switch (dt) {
    case NN_DTYPE_F32:
        return "fp32";
    case NN_DTYPE_I32:
        return "i32";
    case NN_DTYPE_BF16:
        return "bf16";
    case NN_DTYPE_F16:
        return "fp16";
    }
    return "?";
}

size_t nn_layout_bytes_dt(enum nn_dtype dtype, enum nn_layout layout, int64_t n, int64_t c,
                          int64_t h, int64_t w)
{
    if (layout == NN_LAYOUT_NCHW8C) {
        c = (c + 7) / 8 * 8;
    }
    return (size_t)(n * c * h * w) * nn_dtype_bytes(dtype);
}

size_t nn_layout_bytes(enum nn_layout layout, int64_t n, int64_t c, int64_t h, int64_t w)
{
    return nn_layout_bytes_dt(NN_DTYPE_F32, layout, n, c, h, w);
}

size_t nn_tensor_bytes(const struct nn_tensor *t)
{
    if (t->ndim == 4) {
        return nn_layout_bytes_dt(t->dtype, t->layout, t->shape[0], t->shape[1], t->shape[2],
                                  t->shape[3]);
    }
    return nn_tensor_numel(t) * nn_dtype_bytes(t->dtype);
}

float *nn_tensor_f32(const struct nn_tensor *t)
{
    SWAV_ASSERT(t->dtype == NN_DTYPE_F32);
    return (float *)t->data;
}

/* Offset of logical element (n, c, h, w) in a 4-D layout. */
static size_t nn_offset4(const struct nn_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w)
{
    int64_t C = t->shape[1], H = t->shape[2], W = t->shape[3];
    if (t->layout == NN_LAYOUT_NCHW8C) {
        int64_t cb = (C + 7) / 8;
        return (size_t)((((n * cb + c / 8) * H + h) * W + w) * 8 + c % 8);
    }
    if (t->layout == NN_LAYOUT_NHWC) {
        return (size_t)(((n * H + h) * W + w) * C + c);
    }
    return (size_t)(((n * C + c) * H + h) * W + w);
}

uint16_t nn_bf16_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fffu; /* NaN: the canonical one, as CUDA's conversion */
    }
    u += 0x7fffu + ((u >> 16) & 1u); /* ties to even; overflow rounds to inf */
    return (uint16_t)(u >> 16);
}

float nn_f32_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t nn_f16_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return 0x7fffu; /* NaN: the canonical one, as CUDA's conversion */
    }
    if (a >= 0x477ff000u) { /* 65520 = 65504 + half a step, and inf: inf */
        return (uint16_t)(sign | 0x7c00u);
    }
    if (a < 0x38800000u) { /* below 2^-14: a subnormal of step 2^-24 (or zero) */
        if (a < 0x33000000u) { /* at most 2^-25: rounds to zero (the tie to even) */
            return sign;
        }
        uint32_t m = (a & 0x7fffffu) | 0x800000u; /* 24-bit significand */
        unsigned shift = 126u - (a >> 23);       /* m * 2^(e-150) in steps of 2^-24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
        q += rem > half || (rem == half && (q & 1u));
        return (uint16_t)(sign | q); /* q = 0x400 rounds up into the normals: right */
    }
    /* normal: rebias the exponent (127 -> 15), round the 13 dropped bits */
    uint32_t r = a - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13)); /* a carry into the exponent is right */
}

float nn_f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0x1fu) {
        u = sign | 0x7f800000u | (m << 13); /* inf, NaN */
    } else if (e != 0) {
        u = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        float f = (float)m * 0x1p-24f; /* subnormal or zero: exact in float */
        memcpy(&u, &f, sizeof u);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float nn_get(const struct nn_tensor *t, size_t o)
{
    if (t->dtype == NN_DTYPE_BF16) {
        return nn_f32_from_bf16(((const uint16_t *)t->data)[o]);
    }
    if (t->dtype == NN_DTYPE_F16) {
        return nn_f32_from_f16(((const uint16_t *)t->data)[o]);
    }
    return ((const float *)t->data)[o];
}

static void nn_put(struct nn_tensor *t, size_t o, float v)
{
    if (t->dtype == NN_DTYPE_BF16) {
        ((uint16_t *)t->data)[o] = nn_bf16_from_f32(v);
    } else if (t->dtype == NN_DTYPE_F16) {
        ((uint16_t *)t->data)[o] = nn_f16_from_f32(v);
    } else {
        ((float *)t->data)[o] = v;
    }
}

void nn_tensor_convert(struct nn_tensor *dst, const struct nn_tensor *src)
{
    SWAV_ASSERT(dst->ndim == 4 && src->ndim == 4);
    for (int i = 0; i < 4; i++) {
        SWAV_ASSERT(dst->shape[i] == src->shape[i]);
    }
    if (dst->dtype != NN_DTYPE_F32 || src->dtype != NN_DTYPE_F32) {
        SWAV_ASSERT(dst->dtype == NN_DTYPE_F32 || nn_dtype_is_lowp(dst->dtype));
        SWAV_ASSERT(src->dtype == NN_DTYPE_F32 || nn_dtype_is_lowp(src->dtype));
        if (dst->layout == NN_LAYOUT_NCHW8C) {
            memset(dst->data, 0, nn_tensor_bytes(dst));
        }
        for (int64_t n = 0; n < src->shape[0]; n++)
            for (int64_t c = 0; c < src->shape[1]; c++)
                for (int64_t h = 0; h < src->shape[2]; h++)
                    for (int64_t w = 0; w < src->shape[3]; w++)
                        nn_put(dst, nn_offset4(dst, n, c, h, w),
                               nn_get(src, nn_offset4(src, n, c, h, w)));
        return;
    }
    float *d = nn_tensor_f32(dst);
    const float *s = nn_tensor_f32(src);
    if (dst->layout == NN_LAYOUT_NCHW8C) {
        memset(d, 0, nn_tensor_bytes(dst)); /* padding channels stay zero */
    }
    for (int64_t n = 0; n < src->shape[0]; n++)
        for (int64_t c = 0; c < src->shape[1]; c++)
            for (int64_t h = 0; h < src->shape[2]; h++)
                for (int64_t w = 0; w < src->shape[3]; w++)
                    d[nn_offset4(dst, n, c, h, w)] = s[nn_offset4(src, n, c, h, w)];
}

/* ---- arena ---------------------------------------------------------------- */

#define NN_ARENA_ALIGN 64

void nn_arena_init(struct nn_arena *a, nn_backend_t *be)
{
    memset(a, 0, sizeof *a);
    a->be = be;
}

void *nn_arena_alloc(struct nn_arena *a, size_t bytes)
{
    size_t off = (a->used + NN_ARENA_ALIGN - 1) / NN_ARENA_ALIGN * NN_ARENA_ALIGN;
    a->used = off + bytes;
    if (a->used > a->high) {
        a->high = a->used;
    }
    if (a->base == NULL) {
        return (void *)(uintptr_t)(NN_ARENA_ALIGN + off); /* measuring: never dereferenced */
    }
    SWAV_ASSERT(a->used <= a->size);
    return a->base + off;
}

void nn_arena_commit(struct nn_arena *a)
{
    SWAV_ASSERT(a->base == NULL);
    a->size = a->high ? a->high : NN_ARENA_ALIGN;
    size_t bytes = (a->size + NN_ARENA_ALIGN - 1) / NN_ARENA_ALIGN * NN_ARENA_ALIGN;
    if (a->be) {
        a->base = nn_backend_alloc(a->be, bytes); /* zeroed, aligned to >= 64 */
    } else {
        a->base = aligned_alloc(NN_ARENA_ALIGN, bytes);
        SWAV_ASSERT(a->base != NULL);
        memset(a->base, 0, a->size); /* touch every page once, here and not in the step */
    }
    SWAV_ASSERT(a->base != NULL && (uintptr_t)a->base % NN_ARENA_ALIGN == 0);
    a->used = 0;
}

void nn_arena_rewind(struct nn_arena *a)
{
    a->used = 0;
}

void nn_arena_free(struct nn_arena *a)
{
    if (a->be) {
        nn_backend_free(a->be, a->base);
    } else {
        free(a->base);
    }
    memset(a, 0, sizeof *a);
}

void nn_normalize_u8(float *dst, const uint8_t *src, int n, int h, int w)
{
    static const float mean[3] = {0.485f, 0.456f, 0.406f};
    static const float stdv[3] = {0.228f, 0.224f, 0.225f};
    float scale[3], shift[3];
    for (int c = 0; c < 3; c++) {
        scale[c] = 1.0f / (255.0f * stdv[c]);
        shift[c] = -mean[c] / stdv[c];
    }
    size_t plane = (size_t)h * (size_t)w;
    for (int i = 0; i < n; i++) {
        const uint8_t *s = src + (size_t)i * plane * 3;
        float *d = dst + (size_t)i * plane * 3;
        for (size_t p = 0; p < plane; p++) {
            d[p] = (float)s[3 * p] * scale[0] + shift[0];
            d[plane + p] = (float)s[3 * p + 1] * scale[1] + shift[1];
            d[2 * plane + p] = (float)s[3 * p + 2] * scale[2] + shift[2];
        }
    }
}

void nn_prototypes_normalize(float *w, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        float *x = w + r * cols;
        double s = 0;
        for (int64_t c = 0; c < cols; c++) {
            s += (double)x[c] * x[c];
        }
        float n = (float)sqrt(s);
        if (n < 1e-12f) {
            n = 1e-12f;
        }
        for (int64_t c = 0; c < cols; c++) {
            x[c] = x[c] / n;
        }
    }
}
