/* Layers as forward/backward pairs (llm.c style), each a backend call.
 *
 * Conventions: outputs first; gradients prefixed d; parameter gradients are
 * ACCUMULATED (+=, the caller zeroes them once per step); activation
 * gradients (dinp) are WRITTEN (=), and may be NULL where not needed.
 * Tensors carry their layout (tensor.h); a layer's input and output share one
 * layout unless said otherwise.  Weights are plain (PyTorch's layouts:
 * conv OIHW, linear (out, in)) because they live in the flat parameter buffer
 * the optimizer and checkpoints see; the backend reorders them for its
 * kernels.  Every tensor and array is the backend's memory (nn_backend_alloc,
 * a model's buffers, its arena) unless its comment says host; with
 * SWAV_NN_GUARD=1 a host pointer is refused (nn/guard.h). */
#ifndef SWAV_NN_LAYERS_H
#define SWAV_NN_LAYERS_H

#include <stdint.h>

#include "backend.h"
#include "tensor.h"

/* ---- dtype and layout: float NCHW <-> bf16 or fp16 NHWC, on a backend with
 * them (nn_backend_has_lowp).  Same N, H, W; F32 NCHW -> BF16/F16 NHWC rounds
 * to nearest even and may widen C (the extra channels written as zeros: the
 * low-precision stem's input, NN_LOWP_STEM_CHANNELS); BF16/F16 NHWC -> F32
 * NCHW is exact and keeps C.  dst and src do not overlap. ------------------- */
/* RGB + a zero channel: 8-byte pixels for cuDNN's NHWC tensor-core kernels (NVIDIA's
 * convolution performance guide: 4 channels suffice for a stride-2 first layer, 8
 * elsewhere; DALI pads to 4 for the same reason) */
#define NN_LOWP_STEM_CHANNELS 4
void nn_convert(nn_backend_t *be, struct nn_tensor *dst, const struct nn_tensor *src);

/* ---- conv2d: no bias, square kernel k = weight->shape[2], symmetric pad,
 * output size floor((H + 2 pad - k) / stride) + 1 as in PyTorch. --------- */
void nn_conv2d_forward(nn_backend_t *be, struct nn_tensor *out, /* (N, O, Ho, Wo) */
                       const struct nn_tensor *inp,              /* (N, I, H, W) */
                       const struct nn_tensor *weight,           /* (O, I, k, k) */
                       int stride, int pad);
void nn_conv2d_backward(nn_backend_t *be, struct nn_tensor *dinp, /* NULL: skip */
                        struct nn_tensor *dweight,                /* += */
                        const struct nn_tensor *dout, const struct nn_tensor *inp,
                        const struct nn_tensor *weight, int stride, int pad);

/* ---- batch norm over (N, C, H, W) (BatchNorm2d) or (N, C) (BatchNorm1d) ----
 * NN_BN_TRAIN: batch statistics, saved in save_mean/save_var (biased
 * variance, what the normalization uses); running stats updated as PyTorch
 * does: r = (1 - momentum) r + momentum x, with the UNBIASED batch variance.
 * Without it: eval mode, running stats used.  NN_BN_RELU fuses a ReLU after
 * it (the workspace then remembers the mask for the backward). */
enum nn_bn_flags {
    NN_BN_TRAIN = 1u << 0,
    NN_BN_RELU = 1u << 1,
};
size_t nn_batchnorm_workspace_bytes(nn_backend_t *be, const struct nn_tensor *inp,
                                    unsigned flags);
void nn_batchnorm_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                          const float *weight, const float *bias, /* (C) */
                          float *running_mean, float *running_var, /* (C), updated in train */
                          float *save_mean, float *save_var,       /* (C), written in train */
                          void *workspace, unsigned flags, float momentum, float eps);
/* In eval mode pass the running stats as save_mean/save_var. */
void nn_batchnorm_backward(nn_backend_t *be, struct nn_tensor *dinp,
                           float *dweight, float *dbias, /* (C), += */
                           const struct nn_tensor *dout, const struct nn_tensor *inp,
                           const float *weight, const float *save_mean, const float *save_var,
                           const void *workspace, unsigned flags, float eps);

/* Pieces of a batch norm whose statistics span more than this tensor
 * (SyncBN, nn/syncbn.h puts them together across ranks).  Statistics of this
 * tensor, to double precision, into host arrays of C: mean, and M2 = the sum
 * over (N, H, W) of (x - mean)^2. */
void nn_batchnorm_stats(nn_backend_t *be, double *mean, double *m2, const struct nn_tensor *inp);
/* Completes a train-mode backward from an eval-mode one: after
 * nn_batchnorm_backward without NN_BN_TRAIN with the statistics (mean, var)
 * of a larger batch this tensor is part of, which leaves dinp = weight *
 * invstd * dy' (dy' = dout through the fused ReLU's mask), this subtracts
 * weight * invstd * (mean_dy + xhat * mean_dy_xhat), xhat = (x - mean) *
 * invstd, invstd = 1 / sqrt(var + eps), where mean_dy and mean_dy_xhat (C
 * each, host) are the larger batch's means of dy' and dy' * xhat.  In place
 * on dinp (same shape and layout as inp). */
void nn_batchnorm_backward_elemt(nn_backend_t *be, struct nn_tensor *dinp,
                                 const struct nn_tensor *inp, const float *weight,
                                 const float *mean, const float *var, const float *mean_dy,
                                 const float *mean_dy_xhat, float eps);

/* ---- relu, residual add ------------------------------------------------- */
void nn_relu_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp);
/* From the output (out > 0). dinp may alias dout. */
void nn_relu_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout,
                      const struct nn_tensor *out);
/* out = a + b, then ReLU if relu (the end of a residual block).  The backward
 * of the add is the identity: use nn_relu_backward, then nn_accumulate. */
void nn_add_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a,
                    const struct nn_tensor *b, int relu);
/* y += x (same shape and layout). */
void nn_accumulate(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x);

/* ---- pooling ------------------------------------------------------------- */
size_t nn_maxpool2d_workspace_bytes(nn_backend_t *be, const struct nn_tensor *out,
                                    const struct nn_tensor *inp, int k, int stride, int pad);
void nn_maxpool2d_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp,
                          void *workspace, int k, int stride, int pad);
void nn_maxpool2d_backward(nn_backend_t *be, struct nn_tensor *dinp,
                           const struct nn_tensor *dout, const void *workspace, int k,
                           int stride, int pad);
/* AdaptiveAvgPool2d((1,1)) + flatten: (N, C, H, W) any layout -> (N, C) NC. */
void nn_avgpool_forward(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp);
void nn_avgpool_backward(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout);

/* ---- linear: out = inp W^T + b; W (O, I), b (O) or NULL ------------------- */
void nn_linear_forward(nn_backend_t *be, struct nn_tensor *out, /* (N, O) */
                       const struct nn_tensor *inp,              /* (N, I) */
                       const float *weight, const float *bias);
void nn_linear_backward(nn_backend_t *be, struct nn_tensor *dinp, /* NULL: skip */
                        float *dweight, float *dbias,             /* +=; dbias NULL: none */
                        const struct nn_tensor *dout, const struct nn_tensor *inp,
                        const float *weight);

/* ---- row-wise ops on (N, D) ---------------------------------------------- */
/* out = x / max(||x||_2, 1e-12) (F.normalize); norms (N) saved for backward. */
void nn_l2_normalize_forward(nn_backend_t *be, struct nn_tensor *out,
                             const struct nn_tensor *inp, float *norms);
void nn_l2_normalize_backward(nn_backend_t *be, struct nn_tensor *dinp,
                              const struct nn_tensor *dout, const struct nn_tensor *out,
                              const float *norms);
/* out = log_softmax(scale * inp) along rows. */
void nn_log_softmax_forward(nn_backend_t *be, struct nn_tensor *out,
                            const struct nn_tensor *inp, float scale);
void nn_log_softmax_backward(nn_backend_t *be, struct nn_tensor *dinp,
                             const struct nn_tensor *dout, const struct nn_tensor *out,
                             float scale);

/* ---- losses (scalar result; backward writes d of that scalar) ----------- */
/* SwAV swapped prediction (main_swav.py train()): scores (n_crops*bs, K),
 * crop v in rows [v*bs, (v+1)*bs); q (n_assign, bs, K), q[i] the codes of
 * crop crops_for_assign[i].  loss = 1/n_assign * sum_i 1/(n_crops-1) *
 * sum_{v != crops_for_assign[i]} -mean_b sum_k q_i log_softmax(p_v / T).
 * logp (n_crops*bs, K) is scratch written by forward, read by backward. */
struct nn_swav_loss_cfg {
    int n_crops, bs, n_assign;
    const int *crops_for_assign; /* n_assign crop indices */
    float temperature;
};
float nn_swav_loss_forward(nn_backend_t *be, float *logp, const struct nn_tensor *scores,
                           const float *q, const struct nn_swav_loss_cfg *cfg);
void nn_swav_loss_backward(nn_backend_t *be, struct nn_tensor *dscores, const float *logp,
                           const float *q, const struct nn_swav_loss_cfg *cfg);
/* Soft-target cross-entropy: mean_n -sum_k t log_softmax(x); logp (N, K) scratch. */
float nn_cross_entropy_soft_forward(nn_backend_t *be, float *logp, const struct nn_tensor *logits,
                                    const float *target);
void nn_cross_entropy_soft_backward(nn_backend_t *be, struct nn_tensor *dlogits,
                                    const float *logp, const float *target);
/* Hard-label cross-entropy: mean_n -log_softmax(x)[label]; labels in [0, K). */
float nn_cross_entropy_forward(nn_backend_t *be, float *logp, const struct nn_tensor *logits,
                               const int32_t *labels);
void nn_cross_entropy_backward(nn_backend_t *be, struct nn_tensor *dlogits, const float *logp,
                               const int32_t *labels);

#endif
