/* The CUDA backend's low-precision channels_last backbone, bf16 or fp16
 * (backend_impl.h's lowp_nhwc; cfg.act_dtype of nn/resnet.h, the trainer's
 * --use_fp16 with --amp_dtype): the table's layer entries in backend_cuda.cu
 * and syncbn_cuda.cu hand every BF16 or F16 tensor to the functions here (a
 * one-line dispatch at the top of each), so the float path is untouched.
 * Each entry is a template on the storage type T (bf16 or f16), chosen by
 * the tensor's dtype (LOWP_DISPATCH); the kernels (lowp_kernels.cuh) are
 * templates on it too, so both types share every line.
 *
 * What is low-precision and what stays float: activations and their
 * gradients are T NHWC; weights stay the model's float OIHW parameters
 * (master weights), of which the backend keeps a T KRSC copy per
 * convolution and type, refreshed once per nn_backend_weights_updated
 * (version counter, as the CPU backend's reordered weights) and all dropped
 * at any nn_backend_free (a freed weight's address may come back as
 * another's, and copies of freed weights would pile up); weight gradients,
 * BatchNorm parameters and their gradients, running and saved statistics,
 * and the average pool's (N, C) output and its gradient are float.
 *
 * Convolutions: cuDNN's legacy API on T NHWC tensors and KRSC filters
 * (CUDNN_DATA_BFLOAT16 or CUDNN_DATA_HALF), float compute
 * (PSEUDO_BFLOAT16_CONFIG / PSEUDO_HALF_CONFIG) with tensor-op math;
 * descriptors and algorithms (cudnnFind*, the fastest whose workspace fits
 * SWAV_CUDA_WS_MAX_MB, each direction's descriptor set to the math type its
 * algorithm was found with) made once per shape and type and kept in the
 * backend's cache.  The filter gradient goes to a T KRSC scratch (beta 0),
 * then a kernel adds it into the float OIHW gradient (layers.h's +=).  An
 * input with more channels than the weight (the stem's, widened to
 * NN_LOWP_STEM_CHANNELS with zeros) meets a copy whose extra channels are 0.
 *
 * BatchNorm: our kernels, not cuDNN's (two-level per-channel sums in double,
 * fixed order, no atomics; see lowp_kernels.cuh).  The fused ReLU keeps no
 * mask: the layer's workspace holds the forward's per-channel scale and
 * shift (2 C floats), from which the backward recomputes x scale + shift > 0
 * with the forward's own expression.
 *
 * Buffers (weight copies, the filter-gradient scratch, BatchNorm partial
 * sums and per-channel scratch) grow at the first sight of a shape, with a
 * stream synchronization before a buffer is replaced; a steady-state step
 * allocates nothing.  Everything runs on the backend's stream.
 *
 * NEVER RUN ON A GPU when written: see docs/cuda.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

#include "lowp_kernels.cuh"

/* The storage type's dtype, cuDNN data type and name (messages). */
template <class T> struct lowp_desc;
template <> struct lowp_desc<bf16> {
    static const enum nn_dtype dtype = NN_DTYPE_BF16;
    static const cudnnDataType_t cudnn = CUDNN_DATA_BFLOAT16;
};
template <> struct lowp_desc<f16> {
    static const enum nn_dtype dtype = NN_DTYPE_F16;
    static const cudnnDataType_t cudnn = CUDNN_DATA_HALF;
};

/* k<T, a> as one macro argument (LOWP_LAUNCH's kernel) */
#define LOWP_K2(k, a) k<T, a>

/* fn<T>(args) for the storage type of dtype dt (BF16 or F16). */
#define LOWP_DISPATCH(dt, fn, ...)                     \
    do {                                               \
        if ((dt) == NN_DTYPE_BF16) {                   \
            fn<bf16>(__VA_ARGS__);                     \
        } else {                                       \
            SWAV_ASSERT((dt) == NN_DTYPE_F16);         \
            fn<f16>(__VA_ARGS__);                      \
        }                                              \
    } while (0)

/* A convolution weight's T KRSC copy: (src, cp, dtype) identify it. */
struct cu_lowp_wslot {
    const void *src; /* the float OIHW parameter */
    int o, i, k, cp; /* its shape; cp >= i channels in the copy */
    enum nn_dtype dtype; /* BF16 or F16 */
    void *buf;       /* (o, k, k, cp) of the dtype */
    uint64_t version;
};

struct cu_lowp {
    uint64_t version; /* bumped by weights_updated */
    struct cu_lowp_wslot *w;
    int n_w, cap_w;
    void *dw; /* the filter gradient, KRSC (2-byte elements) */
    size_t dw_bytes;
    double *part; /* BatchNorm partial sums: 2 C a row chunk */
    size_t part_bytes;
    float *chan; /* per-channel scratch: 8 segments of lowp_cpad(C) floats */
    size_t chan_bytes;
    double *stat; /* batchnorm_stats: mean and M2 (2 C) before the copy out */
    size_t stat_bytes;
};

static struct cu_lowp *lowp_state(struct cuda_backend *b)
{
    if (!b->lowp) {
        b->lowp = (struct cu_lowp *)swav_xcalloc(1, sizeof *b->lowp);
        b->lowp->version = 1; /* slots start at 0: converted at first use */
    }
    return b->lowp;
}

void cu_lowp_weights_updated(struct cuda_backend *b)
{
    if (b->lowp) {
        b->lowp->version++;
    }
}

void cu_lowp_forget_weights(struct cuda_backend *b)
{
    struct cu_lowp *s = b->lowp;
    if (!s) {
        return;
    }
    CUDA_CHECK(cudaStreamSynchronize(b->stream)); /* a queued convolution may read one */
    for (int i = 0; i < s->n_w; i++) {
        CUDA_CHECK(cudaFree(s->w[i].buf));
    }
    s->n_w = 0;
}

void cu_lowp_free(struct cuda_backend *b)
{
    struct cu_lowp *s = b->lowp;
    if (!s) {
        return;
    }
    for (int i = 0; i < s->n_w; i++) {
        cudaFree(s->w[i].buf);
    }
    free(s->w);
    cudaFree(s->dw);
    cudaFree(s->part);
    cudaFree(s->chan);
    cudaFree(s->stat);
    free(s);
    b->lowp = NULL;
}

/* A backbone tensor of this path: T's dtype, NHWC, 4-D, fewer than 2^31
 * elements (the kernels' 32-bit element indexes; cuDNN's legacy API has the
 * same bound). */
static void lowp_check_dt(const struct nn_tensor *t, enum nn_dtype dt)
{
    SWAV_ASSERT(nn_dtype_is_lowp(dt) && t->dtype == dt && t->layout == NN_LAYOUT_NHWC &&
                t->ndim == 4);
    SWAV_ASSERT(t->shape[0] > 0 && t->shape[1] > 0 && t->shape[2] > 0 && t->shape[3] > 0);
    SWAV_ASSERT(nn_tensor_numel(t) <= (size_t)INT32_MAX);
}

template <class T> static void lowp_check(const struct nn_tensor *t)
{
    lowp_check_dt(t, lowp_desc<T>::dtype);
}

static int lowp_same(const struct nn_tensor *a, const struct nn_tensor *b)
{
    return a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1] &&
           a->shape[2] == b->shape[2] && a->shape[3] == b->shape[3];
}

static int lowp_al4(const void *p)
{
    return ((uintptr_t)p & 3u) == 0;
}

/* per-channel scratch segment length: C rounded up to 32 floats */
static size_t lowp_cpad(unsigned C)
{
    return ((size_t)C + 31) / 32 * 32;
}

/* ---- conversions ------------------------------------------------------------------- */

template <class T>
static void lowp_convert(nn_backend_t *be, struct nn_tensor *dst, const struct nn_tensor *src)
{
    struct cuda_backend *b = cu_be(be);
    SWAV_ASSERT(dst->ndim == 4 && src->ndim == 4 && dst->data != src->data);
    SWAV_ASSERT(dst->shape[0] == src->shape[0] && dst->shape[2] == src->shape[2] &&
                dst->shape[3] == src->shape[3]);
    unsigned HW = (unsigned)(src->shape[2] * src->shape[3]);
    if (src->dtype == NN_DTYPE_F32) {
        SWAV_ASSERT(src->layout == NN_LAYOUT_NCHW && src->shape[1] > 0);
        lowp_check<T>(dst);
        SWAV_ASSERT(dst->shape[1] >= src->shape[1]);
        unsigned npix = (unsigned)src->shape[0] * HW;
        LOWP_LAUNCH(k_lowp_from_nchw<T>, lowp_blocks(npix), LOWP_TPB, b->stream)(
            (T *)dst->data, (const float *)src->data, npix, HW, (unsigned)src->shape[1],
            (unsigned)dst->shape[1]);
    } else {
        lowp_check<T>(src);
        SWAV_ASSERT(dst->dtype == NN_DTYPE_F32 && dst->layout == NN_LAYOUT_NCHW &&
                    dst->shape[1] == src->shape[1]);
        unsigned n = (unsigned)nn_tensor_numel(src);
        LOWP_LAUNCH(k_lowp_to_nchw<T>, lowp_blocks(n), LOWP_TPB, b->stream)(
            (float *)dst->data, (const T *)src->data, n, (unsigned)src->shape[1], HW);
    }
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_convert(nn_backend_t *be, struct nn_tensor *dst, const struct nn_tensor *src)
{
    LOWP_DISPATCH(src->dtype == NN_DTYPE_F32 ? dst->dtype : src->dtype, lowp_convert, be, dst,
                  src);
}

/* ---- convolutions (cuDNN) -------------------------------------------------------------- */

/* cache kinds, apart from backend_cuda.cu's (1, 2, 3): bf16's, and fp16's
 * ('fh') */
enum { LOWP_CONV_FWD = 0x62660001, LOWP_CONV_BWD = 0x62660002, LOWP_F16_KIND = 0x040e0000 };

struct cu_lowp_conv {
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;      /* forward, or backward filter */
    cudnnConvolutionDescriptor_t conv_data; /* backward data (NULL: not asked for) */
    struct cu_conv_algos algo;
};

static void lowp_conv_free(void *op)
{
    struct cu_lowp_conv *c = (struct cu_lowp_conv *)op;
    cudnnDestroyTensorDescriptor(c->x);
    cudnnDestroyTensorDescriptor(c->y);
    cudnnDestroyFilterDescriptor(c->w);
    cudnnDestroyConvolutionDescriptor(c->conv);
    if (c->conv_data) {
        cudnnDestroyConvolutionDescriptor(c->conv_data);
    }
    free(c);
}

/* backend_cuda.cu's search (the float convolutions' rule), each descriptor
 * then set to the math type its algorithm was found with. */
static const struct cu_conv_search lowp_conv_search_bf16 = {
    "bf16 ", " (bf16 NHWC, KRSC filter, float compute)", 1};
static const struct cu_conv_search lowp_conv_search_f16 = {
    "fp16 ", " (fp16 NHWC, KRSC filter, float compute)", 1};

template <class T>
static void lowp_tensor_desc(cudnnTensorDescriptor_t d, const struct nn_tensor *t)
{
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NHWC, lowp_desc<T>::cudnn,
                                           (int)t->shape[0], (int)t->shape[1], (int)t->shape[2],
                                           (int)t->shape[3]));
}

static cudnnConvolutionDescriptor_t lowp_conv_desc(int stride, int pad)
{
    cudnnConvolutionDescriptor_t d;
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, pad, pad, stride, stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(d, CUDNN_TENSOR_OP_MATH));
    return d;
}

/* kind: LOWP_CONV_FWD or LOWP_CONV_BWD (bf16's values; fp16's key adds
 * LOWP_F16_KIND). */
template <class T>
static struct cu_lowp_conv *lowp_conv_get(struct cuda_backend *b, int kind,
                                          const struct nn_tensor *out, const struct nn_tensor *inp,
                                          const struct nn_tensor *weight, int stride, int pad,
                                          int have_data)
{
    lowp_check<T>(inp);
    lowp_check<T>(out);
    SWAV_ASSERT(weight->dtype == NN_DTYPE_F32 && weight->layout == NN_LAYOUT_NCHW &&
                weight->ndim == 4);
    int k = (int)weight->shape[2];
    SWAV_ASSERT(weight->shape[3] == k && weight->shape[0] == out->shape[1] &&
                weight->shape[1] <= inp->shape[1] && out->shape[0] == inp->shape[0]);
    SWAV_ASSERT(stride >= 1 && pad >= 0);
    SWAV_ASSERT(out->shape[2] == (inp->shape[2] + 2 * pad - k) / stride + 1);
    SWAV_ASSERT(out->shape[3] == (inp->shape[3] + 2 * pad - k) / stride + 1);
    const int f16 = lowp_desc<T>::dtype == NN_DTYPE_F16;
    int key[CU_KEY_MAX];
    cu_conv_key(key, kind + (f16 ? LOWP_F16_KIND : 0), inp, (int)out->shape[1], k, stride, pad,
                have_data);
    struct cu_lowp_conv *c = (struct cu_lowp_conv *)cu_cache_find(b, key);
    if (c) {
        return c;
    }
    c = (struct cu_lowp_conv *)swav_xcalloc(1, sizeof *c);
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&c->w));
    lowp_tensor_desc<T>(c->x, inp);
    lowp_tensor_desc<T>(c->y, out);
    /* format NHWC for a filter: (K, R, S, C) in memory, dims given as (K, C, R, S) */
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(c->w, lowp_desc<T>::cudnn, CUDNN_TENSOR_NHWC,
                                           (int)weight->shape[0], (int)inp->shape[1], k, k));
    c->conv = lowp_conv_desc(stride, pad);
    int on, oc, oh, ow;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(c->conv, c->x, c->w, &on, &oc, &oh, &ow));
    SWAV_ASSERT(on == out->shape[0] && oc == out->shape[1] && oh == out->shape[2] &&
                ow == out->shape[3]);
    /* backward data on a descriptor of its own (its math type may differ) */
    if (kind == LOWP_CONV_BWD && have_data) {
        c->conv_data = lowp_conv_desc(stride, pad);
    }
    cu_conv_find(b, f16 ? &lowp_conv_search_f16 : &lowp_conv_search_bf16, kind == LOWP_CONV_FWD,
                 c->x, c->w, c->y, c->conv, c->conv_data, &c->algo);
    cu_cache_put(b, key, c, lowp_conv_free);
    return c;
}

/* The T KRSC copy of a float OIHW weight with cp >= I channels, made again
 * when the weights' version moved since it was made. */
template <class T>
static const T *lowp_weight(struct cuda_backend *b, const struct nn_tensor *w, int cp)
{
    struct cu_lowp *s = lowp_state(b);
    const enum nn_dtype dt = lowp_desc<T>::dtype;
    int o = (int)w->shape[0], i = (int)w->shape[1], k = (int)w->shape[2];
    SWAV_ASSERT(cp >= i && (size_t)o * k * k * cp <= (size_t)INT32_MAX);
    struct cu_lowp_wslot *sl = NULL;
    for (int j = 0; j < s->n_w; j++) {
        if (s->w[j].src == w->data && s->w[j].cp == cp && s->w[j].dtype == dt) {
            sl = &s->w[j];
            break;
        }
    }
    if (!sl) {
        if (s->n_w == s->cap_w) {
            s->cap_w = s->cap_w ? 2 * s->cap_w : 64;
            s->w = (struct cu_lowp_wslot *)swav_xrealloc(s->w, (size_t)s->cap_w * sizeof *s->w);
        }
        sl = &s->w[s->n_w++];
        memset(sl, 0, sizeof *sl);
        sl->src = w->data;
        sl->cp = cp;
        sl->dtype = dt;
    }
    if (sl->o != o || sl->i != i || sl->k != k) { /* first sight */
        CUDA_CHECK(cudaStreamSynchronize(b->stream));
        CUDA_CHECK(cudaFree(sl->buf));
        sl->buf = NULL;
        CUDA_CHECK(cudaMalloc(&sl->buf, (size_t)o * k * k * cp * sizeof(T)));
        sl->o = o;
        sl->i = i;
        sl->k = k;
        sl->version = 0;
    }
    if (sl->version != s->version) {
        unsigned n = (unsigned)o * (unsigned)(k * k) * (unsigned)cp;
        LOWP_LAUNCH(k_lowp_weight_krsc<T>, lowp_blocks(n), LOWP_TPB, b->stream)(
            (T *)sl->buf, (const float *)w->data, n, (unsigned)i, (unsigned)k, (unsigned)cp);
        CUDA_LAUNCH_CHECK();
        sl->version = s->version;
    }
    return (const T *)sl->buf;
}

template <class T>
static void lowp_conv2d_forward(nn_backend_t *be, struct nn_tensor *out,
                                const struct nn_tensor *inp, const struct nn_tensor *weight,
                                int stride, int pad)
{
    struct cuda_backend *b = cu_be(be);
    struct cu_lowp_conv *c =
        lowp_conv_get<T>(b, LOWP_CONV_FWD, out, inp, weight, stride, pad, 0);
    const T *wb = lowp_weight<T>(b, weight, (int)inp->shape[1]);
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnConvolutionForward(b->dnn, &one, c->x, inp->data, c->w, wb, c->conv,
                                        c->algo.fwd, b->ws, b->ws_bytes, &zero, c->y, out->data));
}

void cu_lowp_conv2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                            const struct nn_tensor *weight, int stride, int pad)
{
    LOWP_DISPATCH(inp->dtype, lowp_conv2d_forward, be, out, inp, weight, stride, pad);
}

template <class T>
static void lowp_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                 struct nn_tensor *dweight, const struct nn_tensor *dout,
                                 const struct nn_tensor *inp, const struct nn_tensor *weight,
                                 int stride, int pad)
{
    struct cuda_backend *b = cu_be(be);
    struct cu_lowp_conv *c = lowp_conv_get<T>(b, LOWP_CONV_BWD, dout, inp, weight, stride, pad,
                                              dinp != NULL);
    struct cu_lowp *s = lowp_state(b);
    SWAV_ASSERT(dweight->dtype == NN_DTYPE_F32 && dweight->ndim == 4);
    for (int i = 0; i < 4; i++) {
        SWAV_ASSERT(dweight->shape[i] == weight->shape[i]);
    }
    unsigned O = (unsigned)weight->shape[0], I = (unsigned)weight->shape[1];
    unsigned k = (unsigned)weight->shape[2], cp = (unsigned)inp->shape[1];
    cu_grow(b, &s->dw, &s->dw_bytes, (size_t)O * k * k * cp * sizeof(T));
    const float one = 1.0f, zero = 0.0f;
    /* the gradient of the T copy, rounded once, then added in float */
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(b->dnn, &one, c->x, inp->data, c->y, dout->data,
                                               c->conv, c->algo.filter, b->ws, b->ws_bytes, &zero,
                                               c->w, s->dw));
    unsigned n = O * I * k * k;
    LOWP_LAUNCH(k_lowp_dw_add<T>, lowp_blocks(n), LOWP_TPB, b->stream)(
        (float *)dweight->data, (const T *)s->dw, n, I, k, cp);
    CUDA_LAUNCH_CHECK();
    if (dinp) {
        lowp_check<T>(dinp);
        SWAV_ASSERT(lowp_same(dinp, inp));
        const T *wb = lowp_weight<T>(b, weight, (int)cp);
        CUDNN_CHECK(cudnnConvolutionBackwardData(b->dnn, &one, c->w, wb, c->y, dout->data,
                                                 c->conv_data, c->algo.data, b->ws, b->ws_bytes,
                                                 &zero, c->x, dinp->data));
    }
}

void cu_lowp_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp, struct nn_tensor *dweight,
                             const struct nn_tensor *dout, const struct nn_tensor *inp,
                             const struct nn_tensor *weight, int stride, int pad)
{
    LOWP_DISPATCH(inp->dtype, lowp_conv2d_backward, be, dinp, dweight, dout, inp, weight, stride,
                  pad);
}

/* ---- batch norm ------------------------------------------------------------------------ */

/* The reduction plan of x (M rows of C) and its scratch, grown if needed. */
static struct lowp_bn_plan lowp_bn_prepare(struct cuda_backend *b, const struct nn_tensor *x,
                                           int aligned, unsigned *M, unsigned *C)
{
    lowp_check_dt(x, x->dtype);
    struct cu_lowp *s = lowp_state(b);
    *C = (unsigned)x->shape[1];
    *M = (unsigned)(x->shape[0] * x->shape[2] * x->shape[3]);
    struct lowp_bn_plan p = lowp_bn_plan_of(*M, *C, aligned);
    cu_grow(b, (void **)&s->part, &s->part_bytes, (size_t)2 * *C * p.chunks * sizeof(double));
    cu_grow(b, (void **)&s->chan, &s->chan_bytes, 8 * lowp_cpad(*C) * sizeof(float));
    cu_grow(b, (void **)&s->stat, &s->stat_bytes, (size_t)2 * *C * sizeof(double));
    return p;
}

size_t cu_lowp_batchnorm_workspace_bytes(nn_backend_t *be, const struct nn_tensor *inp,
                                         unsigned flags)
{
    unsigned M, C;
    lowp_bn_prepare(cu_be(be), inp, lowp_al4(inp->data), &M, &C); /* scratch at build time */
    return (flags & NN_BN_RELU) ? (size_t)2 * C * sizeof(float) : 0; /* scale, shift */
}

template <class T>
static void lowp_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out,
                                   const struct nn_tensor *inp, const float *weight,
                                   const float *bias, float *running_mean, float *running_var,
                                   float *save_mean, float *save_var, void *workspace,
                                   unsigned flags, float momentum, float eps)
{
    struct cuda_backend *b = cu_be(be);
    lowp_check<T>(out);
    SWAV_ASSERT(lowp_same(out, inp));
    unsigned M, C;
    struct lowp_bn_plan p =
        lowp_bn_prepare(b, inp, lowp_al4(inp->data) && lowp_al4(out->data), &M, &C);
    struct cu_lowp *s = b->lowp;
    size_t cp = lowp_cpad(C);
    /* with the ReLU, scale and shift go to the workspace for the backward's mask */
    float *scale = s->chan, *shift = s->chan + cp;
    if ((flags & NN_BN_RELU) && workspace) {
        scale = (float *)workspace;
        shift = scale + C;
    }
    const T *x = (const T *)inp->data;
    if (flags & NN_BN_TRAIN) {
        dim3 grid(p.tiles, p.chunks), block(LOWP_BN_TX, LOWP_BN_TY);
        if (p.vec == 2) {
            LOWP_LAUNCH(LOWP_K2(k_lowp_bn_stats, 2), grid, block, b->stream)(s->part, x, C, M,
                                                                             p.chunk);
        } else {
            LOWP_LAUNCH(LOWP_K2(k_lowp_bn_stats, 1), grid, block, b->stream)(s->part, x, C, M,
                                                                             p.chunk);
        }
        CUDA_LAUNCH_CHECK();
        LOWP_LAUNCH(k_lowp_bn_fwd_final<T>, lowp_warp_blocks(C), LOWP_TPB, b->stream)(
            s->part, p.chunks, x, C, (double)M, weight, bias, running_mean, running_var,
            save_mean, save_var, scale, shift, momentum, eps);
    } else {
        LOWP_LAUNCH(k_lowp_bn_eval_coef, lowp_blocks(C), LOWP_TPB, b->stream)(
            scale, shift, running_mean, running_var, weight, bias, C, eps);
    }
    CUDA_LAUNCH_CHECK();
    unsigned nv = M * C / p.vec;
    int relu = (flags & NN_BN_RELU) != 0;
    if (p.vec == 2) {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_apply, 2), lowp_blocks(nv), LOWP_TPB, b->stream)(
            (T *)out->data, x, scale, shift, nv, C, relu);
    } else {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_apply, 1), lowp_blocks(nv), LOWP_TPB, b->stream)(
            (T *)out->data, x, scale, shift, nv, C, relu);
    }
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                               const float *weight, const float *bias, float *running_mean,
                               float *running_var, float *save_mean, float *save_var,
                               void *workspace, unsigned flags, float momentum, float eps)
{
    LOWP_DISPATCH(inp->dtype, lowp_batchnorm_forward, be, out, inp, weight, bias, running_mean,
                  running_var, save_mean, save_var, workspace, flags, momentum, eps);
}

template <class T>
static void lowp_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                                    float *dbias, const struct nn_tensor *dout,
                                    const struct nn_tensor *inp, const float *weight,
                                    const float *save_mean, const float *save_var,
                                    const void *workspace, unsigned flags, float eps)
{
    struct cuda_backend *b = cu_be(be);
    lowp_check<T>(dout);
    lowp_check<T>(dinp);
    SWAV_ASSERT(lowp_same(dout, inp) && lowp_same(dinp, inp));
    unsigned M, C;
    struct lowp_bn_plan p = lowp_bn_prepare(
        b, inp, lowp_al4(inp->data) && lowp_al4(dout->data) && lowp_al4(dinp->data), &M, &C);
    struct cu_lowp *s = b->lowp;
    size_t cp = lowp_cpad(C);
    const float *scale = NULL, *shift = NULL;
    if (flags & NN_BN_RELU) {
        SWAV_ASSERT(workspace != NULL); /* the forward's scale and shift */
        scale = (const float *)workspace;
        shift = scale + C;
    }
    float *inv = s->chan, *A = s->chan + cp, *mdy = s->chan + 2 * cp, *mdyx = s->chan + 3 * cp;
    const T *x = (const T *)inp->data, *dy = (const T *)dout->data;
    dim3 grid(p.tiles, p.chunks), block(LOWP_BN_TX, LOWP_BN_TY);
    if (p.vec == 2) {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_bwd_reduce, 2), grid, block, b->stream)(
            s->part, dy, x, save_mean, save_var, scale, shift, C, M, p.chunk, eps);
    } else {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_bwd_reduce, 1), grid, block, b->stream)(
            s->part, dy, x, save_mean, save_var, scale, shift, C, M, p.chunk, eps);
    }
    CUDA_LAUNCH_CHECK();
    LOWP_LAUNCH(k_lowp_bn_bwd_final, lowp_warp_blocks(C), LOWP_TPB, b->stream)(
        s->part, p.chunks, C, (double)M, weight, save_var, eps, dweight, dbias, inv, A, mdy, mdyx,
        (flags & NN_BN_TRAIN) != 0);
    CUDA_LAUNCH_CHECK();
    unsigned nv = M * C / p.vec;
    T *dx = (T *)dinp->data;
    if (p.vec == 2) {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_bwd_apply, 2), lowp_blocks(nv), LOWP_TPB, b->stream)(
            dx, dy, x, save_mean, inv, scale, shift, A, mdy, mdyx, nv, C);
    } else {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_bwd_apply, 1), lowp_blocks(nv), LOWP_TPB, b->stream)(
            dx, dy, x, save_mean, inv, scale, shift, A, mdy, mdyx, nv, C);
    }
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                                float *dbias, const struct nn_tensor *dout,
                                const struct nn_tensor *inp, const float *weight,
                                const float *save_mean, const float *save_var,
                                const void *workspace, unsigned flags, float eps)
{
    LOWP_DISPATCH(inp->dtype, lowp_batchnorm_backward, be, dinp, dweight, dbias, dout, inp, weight,
                  save_mean, save_var, workspace, flags, eps);
}

template <class T>
static void lowp_batchnorm_stats(nn_backend_t *be, double *mean, double *m2,
                                 const struct nn_tensor *inp)
{
    struct cuda_backend *b = cu_be(be);
    unsigned M, C;
    struct lowp_bn_plan p = lowp_bn_prepare(b, inp, lowp_al4(inp->data), &M, &C);
    struct cu_lowp *s = b->lowp;
    const T *x = (const T *)inp->data;
    dim3 grid(p.tiles, p.chunks), block(LOWP_BN_TX, LOWP_BN_TY);
    if (p.vec == 2) {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_stats, 2), grid, block, b->stream)(s->part, x, C, M, p.chunk);
    } else {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_stats, 1), grid, block, b->stream)(s->part, x, C, M, p.chunk);
    }
    CUDA_LAUNCH_CHECK();
    LOWP_LAUNCH(k_lowp_bn_stats_final<T>, lowp_warp_blocks(C), LOWP_TPB, b->stream)(
        s->stat, s->part, p.chunks, x, C, (double)M);
    CUDA_LAUNCH_CHECK();
    /* mean, m2: the caller's host arrays (any pointer kind works with Default) */
    CUDA_CHECK(cudaMemcpyAsync(mean, s->stat, (size_t)C * sizeof(double), cudaMemcpyDefault,
                               b->stream));
    CUDA_CHECK(cudaMemcpyAsync(m2, s->stat + C, (size_t)C * sizeof(double), cudaMemcpyDefault,
                               b->stream));
    CUDA_CHECK(cudaStreamSynchronize(b->stream));
}

void cu_lowp_batchnorm_stats(nn_backend_t *be, double *mean, double *m2,
                             const struct nn_tensor *inp)
{
    LOWP_DISPATCH(inp->dtype, lowp_batchnorm_stats, be, mean, m2, inp);
}

template <class T>
static void lowp_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                          const struct nn_tensor *inp, const float *weight,
                                          const float *mean, const float *var, const float *mean_dy,
                                          const float *mean_dy_xhat, float eps)
{
    struct cuda_backend *b = cu_be(be);
    lowp_check<T>(dinp);
    SWAV_ASSERT(lowp_same(dinp, inp));
    unsigned M, C;
    struct lowp_bn_plan p =
        lowp_bn_prepare(b, inp, lowp_al4(inp->data) && lowp_al4(dinp->data), &M, &C);
    struct cu_lowp *s = b->lowp;
    size_t cp = lowp_cpad(C);
    float *mdy = s->chan, *mdyx = s->chan + cp, *A = s->chan + 2 * cp, *B = s->chan + 3 * cp;
    /* host (pageable) sources: staged when the call returns, so the caller
     * may reuse them at once; ordered on the stream like every kernel */
    CUDA_CHECK(cudaMemcpyAsync(mdy, mean_dy, (size_t)C * sizeof(float), cudaMemcpyDefault,
                               b->stream));
    CUDA_CHECK(cudaMemcpyAsync(mdyx, mean_dy_xhat, (size_t)C * sizeof(float), cudaMemcpyDefault,
                               b->stream));
    LOWP_LAUNCH(k_lowp_bn_elemt_coef, lowp_blocks(C), LOWP_TPB, b->stream)(A, B, weight, var, mdy,
                                                                         mdyx, C, eps);
    CUDA_LAUNCH_CHECK();
    unsigned nv = M * C / p.vec;
    T *dx = (T *)dinp->data;
    const T *x = (const T *)inp->data;
    if (p.vec == 2) {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_elemt, 2), lowp_blocks(nv), LOWP_TPB, b->stream)(
            dx, x, mean, A, B, nv, C);
    } else {
        LOWP_LAUNCH(LOWP_K2(k_lowp_bn_elemt, 1), lowp_blocks(nv), LOWP_TPB, b->stream)(
            dx, x, mean, A, B, nv, C);
    }
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                      const struct nn_tensor *inp, const float *weight,
                                      const float *mean, const float *var, const float *mean_dy,
                                      const float *mean_dy_xhat, float eps)
{
    LOWP_DISPATCH(inp->dtype, lowp_batchnorm_backward_elemt, be, dinp, inp, weight, mean, var,
                  mean_dy, mean_dy_xhat, eps);
}

/* ---- relu, add, accumulate --------------------------------------------------------------- */

template <class T, class OP>
static void lowp_eltwise(struct cuda_backend *b, void *out, const void *a, const void *bb,
                         unsigned n)
{
    T *o = (T *)out;
    const T *x = (const T *)a, *y = (const T *)bb;
    if (lowp_al4(o) && lowp_al4(x) && lowp_al4(y)) {
        unsigned np = n / 2;
        if (np) {
            LOWP_LAUNCH(LOWP_K2(k_lowp_eltwise2, OP), lowp_blocks(np), LOWP_TPB, b->stream)(o, x, y,
                                                                                          np);
            CUDA_LAUNCH_CHECK();
        }
        if (n % 2) {
            LOWP_LAUNCH(LOWP_K2(k_lowp_eltwise, OP), 1, LOWP_TPB, b->stream)(o, x, y, n - 1, 1);
            CUDA_LAUNCH_CHECK();
        }
    } else {
        LOWP_LAUNCH(LOWP_K2(k_lowp_eltwise, OP), lowp_blocks(n), LOWP_TPB, b->stream)(o, x, y, 0,
                                                                                      n);
        CUDA_LAUNCH_CHECK();
    }
}

template <class T>
static void lowp_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    lowp_check<T>(inp);
    lowp_check<T>(out);
    SWAV_ASSERT(lowp_same(out, inp));
    lowp_eltwise<T, lowp_op_relu>(cu_be(be), out->data, inp->data, inp->data,
                               (unsigned)nn_tensor_numel(inp));
}

void cu_lowp_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    LOWP_DISPATCH(inp->dtype, lowp_relu_forward, be, out, inp);
}

template <class T>
static void lowp_relu_backward(nn_backend_t *be, struct nn_tensor *dinp,
                               const struct nn_tensor *dout, const struct nn_tensor *out)
{
    lowp_check<T>(out);
    lowp_check<T>(dout);
    lowp_check<T>(dinp);
    SWAV_ASSERT(lowp_same(dout, out) && lowp_same(dinp, out));
    lowp_eltwise<T, lowp_op_relu_bwd>(cu_be(be), dinp->data, dout->data, out->data,
                                   (unsigned)nn_tensor_numel(out));
}

void cu_lowp_relu_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout,
                           const struct nn_tensor *out)
{
    LOWP_DISPATCH(out->dtype, lowp_relu_backward, be, dinp, dout, out);
}

template <class T>
static void lowp_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a,
                             const struct nn_tensor *bb, int relu)
{
    lowp_check<T>(a);
    lowp_check<T>(bb);
    lowp_check<T>(out);
    SWAV_ASSERT(lowp_same(a, bb) && lowp_same(out, a));
    unsigned n = (unsigned)nn_tensor_numel(a);
    if (relu) {
        lowp_eltwise<T, lowp_op_add_relu>(cu_be(be), out->data, a->data, bb->data, n);
    } else {
        lowp_eltwise<T, lowp_op_add>(cu_be(be), out->data, a->data, bb->data, n);
    }
}

void cu_lowp_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a,
                         const struct nn_tensor *bb, int relu)
{
    LOWP_DISPATCH(a->dtype, lowp_add_forward, be, out, a, bb, relu);
}

template <class T>
static void lowp_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x)
{
    lowp_check<T>(y);
    lowp_check<T>(x);
    SWAV_ASSERT(lowp_same(y, x));
    lowp_eltwise<T, lowp_op_add>(cu_be(be), y->data, y->data, x->data,
                                 (unsigned)nn_tensor_numel(y));
}

void cu_lowp_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x)
{
    LOWP_DISPATCH(y->dtype, lowp_accumulate, be, y, x);
}

/* ---- pooling --------------------------------------------------------------------------------- */

size_t cu_lowp_maxpool2d_workspace_bytes(nn_backend_t *be, const struct nn_tensor *out,
                                         const struct nn_tensor *inp, int k, int stride, int pad)
{
    lowp_check_dt(out, out->dtype);
    return nn_tensor_numel(out); /* one byte an output: its window position */
}

static struct lowp_pool_shape lowp_pool_of(const struct nn_tensor *in, const struct nn_tensor *out,
                                           int k, int stride, int pad)
{
    lowp_check_dt(in, in->dtype);
    lowp_check_dt(out, in->dtype);
    SWAV_ASSERT(k >= 1 && k * k < 255 && stride >= 1 && pad >= 0);
    SWAV_ASSERT(in->shape[0] == out->shape[0] && in->shape[1] == out->shape[1]);
    SWAV_ASSERT(out->shape[2] == (in->shape[2] + 2 * pad - k) / stride + 1);
    SWAV_ASSERT(out->shape[3] == (in->shape[3] + 2 * pad - k) / stride + 1);
    struct lowp_pool_shape ps;
    ps.C = (unsigned)in->shape[1];
    ps.H = (unsigned)in->shape[2];
    ps.W = (unsigned)in->shape[3];
    ps.Ho = (unsigned)out->shape[2];
    ps.Wo = (unsigned)out->shape[3];
    ps.k = k;
    ps.s = stride;
    ps.p = pad;
    return ps;
}

template <class T>
static void lowp_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out,
                                   const struct nn_tensor *inp, void *workspace, int k, int stride,
                                   int pad)
{
    SWAV_ASSERT(workspace != NULL);
    struct lowp_pool_shape ps = lowp_pool_of(inp, out, k, stride, pad);
    unsigned n = (unsigned)nn_tensor_numel(out);
    LOWP_LAUNCH(k_lowp_maxpool_fwd<T>, lowp_blocks(n), LOWP_TPB, cu_be(be)->stream)(
        (T *)out->data, (unsigned char *)workspace, (const T *)inp->data, n, ps);
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                               void *workspace, int k, int stride, int pad)
{
    LOWP_DISPATCH(inp->dtype, lowp_maxpool2d_forward, be, out, inp, workspace, k, stride, pad);
}

template <class T>
static void lowp_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                    const struct nn_tensor *dout, const void *workspace, int k,
                                    int stride, int pad)
{
    SWAV_ASSERT(workspace != NULL);
    struct lowp_pool_shape ps = lowp_pool_of(dinp, dout, k, stride, pad);
    unsigned n = (unsigned)nn_tensor_numel(dinp);
    LOWP_LAUNCH(k_lowp_maxpool_bwd<T>, lowp_blocks(n), LOWP_TPB, cu_be(be)->stream)(
        (T *)dinp->data, (const T *)dout->data, (const unsigned char *)workspace, n, ps);
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                const struct nn_tensor *dout, const void *workspace, int k,
                                int stride, int pad)
{
    LOWP_DISPATCH(dinp->dtype, lowp_maxpool2d_backward, be, dinp, dout, workspace, k, stride, pad);
}

template <class T>
static void lowp_avgpool_forward(nn_backend_t *be, struct nn_tensor *out,
                                 const struct nn_tensor *inp)
{
    lowp_check<T>(inp);
    SWAV_ASSERT(out->dtype == NN_DTYPE_F32 && out->ndim == 2 && out->shape[0] == inp->shape[0] &&
                out->shape[1] == inp->shape[1]);
    unsigned C = (unsigned)inp->shape[1], NC = (unsigned)inp->shape[0] * C;
    unsigned HW = (unsigned)(inp->shape[2] * inp->shape[3]);
    LOWP_LAUNCH(k_lowp_avgpool_fwd<T>, lowp_blocks(NC), LOWP_TPB, cu_be(be)->stream)(
        (float *)out->data, (const T *)inp->data, NC, C, HW);
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_avgpool_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp)
{
    LOWP_DISPATCH(inp->dtype, lowp_avgpool_forward, be, out, inp);
}

template <class T>
static void lowp_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp,
                                  const struct nn_tensor *dout)
{
    lowp_check<T>(dinp);
    SWAV_ASSERT(dout->dtype == NN_DTYPE_F32 && dout->ndim == 2 &&
                dout->shape[0] == dinp->shape[0] && dout->shape[1] == dinp->shape[1]);
    unsigned n = (unsigned)nn_tensor_numel(dinp);
    LOWP_LAUNCH(k_lowp_avgpool_bwd<T>, lowp_blocks(n), LOWP_TPB, cu_be(be)->stream)(
        (T *)dinp->data, (const float *)dout->data, n, (unsigned)dinp->shape[1],
        (unsigned)(dinp->shape[2] * dinp->shape[3]));
    CUDA_LAUNCH_CHECK();
}

void cu_lowp_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout)
{
    LOWP_DISPATCH(dinp->dtype, lowp_avgpool_backward, be, dinp, dout);
}

