/* The backend function table (internal to nn/): one entry per layer of
 * layers.h, same signature. */
#ifndef SWAV_NN_BACKEND_IMPL_H
#define SWAV_NN_BACKEND_IMPL_H

#include "layers.h"
#include "optim.h"

struct nn_backend_iface {
    const char *name;
    int blocked_layout; /* 1: its layers take NN_LAYOUT_NCHW8C (the CPU's oneDNN) */
    /* 1: the backbone's layers (conv2d, batch norm and its SyncBN pieces, relu,
     * add, accumulate, max pooling, average pooling's input and dinp) also
     * take NN_DTYPE_BF16 and NN_DTYPE_F16 tensors in NN_LAYOUT_NHWC, with fp32
     * weights and per-channel arrays, and `convert` is set (the CUDA backend;
     * cfg.act_dtype of resnet.h).  Such a convolution's input may have more
     * channels than its weight (zeros: the stem's input padded to
     * NN_LOWP_STEM_CHANNELS). */
    int lowp_nhwc;
    void (*destroy)(nn_backend_t *be);
    void *(*alloc)(nn_backend_t *be, size_t bytes);
    void (*free)(nn_backend_t *be, void *p);
    void (*sync)(nn_backend_t *be);
    int (*cache_size)(const nn_backend_t *be);
    void (*weights_updated)(nn_backend_t *be);
    void (*copy)(nn_backend_t *be, void *dst, const void *src, size_t bytes);
    void (*zero)(nn_backend_t *be, void *p, size_t bytes);
    void (*scale)(nn_backend_t *be, float *x, size_t n, float s);
    void (*add_at)(nn_backend_t *be, float *base, const int64_t *offsets, int n, float value);
    int (*nonfinite)(nn_backend_t *be, const float *x, size_t n);
    void (*normalize_crops)(nn_backend_t *be, float *dst, const uint8_t *src, int batch,
                            int n_crops, int h, int w);
    void (*normalize_rows)(nn_backend_t *be, float *w, int64_t rows, int64_t cols);
    /* An optimizer whose state lives on the backend (NULL: optim.c's host
     * one serves).  Same semantics as nn/optim.h. */
    void *(*optim_new)(nn_backend_t *be, const struct nn_param_table *table,
                       const struct nn_optim_config *cfg);
    void (*optim_destroy)(void *o);
    void (*optim_set_group)(void *o, int index, int group);
    void (*optim_step_groups)(void *o, float *params, const float *grads, const double *group_lr,
                              int64_t iteration);
    float *(*optim_momentum)(void *o);
    void (*convert)(nn_backend_t *be, struct nn_tensor *dst, const struct nn_tensor *src);
    void (*conv2d_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, const struct nn_tensor *weight, int stride, int pad);
    void (*conv2d_backward)(nn_backend_t *be, struct nn_tensor *dinp, struct nn_tensor *dweight, const struct nn_tensor *dout, const struct nn_tensor *inp, const struct nn_tensor *weight, int stride, int pad);
    size_t (*batchnorm_workspace_bytes)(nn_backend_t *be, const struct nn_tensor *inp, unsigned flags);
    void (*batchnorm_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, const float *weight, const float *bias, float *running_mean, float *running_var, float *save_mean, float *save_var, void *workspace, unsigned flags, float momentum, float eps);
    void (*batchnorm_backward)(nn_backend_t *be, struct nn_tensor *dinp, float *dweight, float *dbias, const struct nn_tensor *dout, const struct nn_tensor *inp, const float *weight, const float *save_mean, const float *save_var, const void *workspace, unsigned flags, float eps);
    void (*batchnorm_stats)(nn_backend_t *be, double *mean, double *m2, const struct nn_tensor *inp);
    void (*batchnorm_backward_elemt)(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *inp, const float *weight, const float *mean, const float *var, const float *mean_dy, const float *mean_dy_xhat, float eps);
    void (*relu_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp);
    void (*relu_backward)(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const struct nn_tensor *out);
    void (*add_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *a, const struct nn_tensor *b, int relu);
    void (*accumulate)(nn_backend_t *be, struct nn_tensor *y, const struct nn_tensor *x);
    size_t (*maxpool2d_workspace_bytes)(nn_backend_t *be, const struct nn_tensor *out, const struct nn_tensor *inp, int k, int stride, int pad);
    void (*maxpool2d_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, void *workspace, int k, int stride, int pad);
    void (*maxpool2d_backward)(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const void *workspace, int k, int stride, int pad);
    void (*avgpool_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp);
    void (*avgpool_backward)(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout);
    void (*linear_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, const float *weight, const float *bias);
    void (*linear_backward)(nn_backend_t *be, struct nn_tensor *dinp, float *dweight, float *dbias, const struct nn_tensor *dout, const struct nn_tensor *inp, const float *weight);
    void (*l2_normalize_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, float *norms);
    void (*l2_normalize_backward)(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const struct nn_tensor *out, const float *norms);
    void (*log_softmax_forward)(nn_backend_t *be, struct nn_tensor *out, const struct nn_tensor *inp, float scale);
    void (*log_softmax_backward)(nn_backend_t *be, struct nn_tensor *dinp, const struct nn_tensor *dout, const struct nn_tensor *out, float scale);
    float (*swav_loss_forward)(nn_backend_t *be, float *logp, const struct nn_tensor *scores, const float *q, const struct nn_swav_loss_cfg *cfg);
    void (*swav_loss_backward)(nn_backend_t *be, struct nn_tensor *dscores, const float *logp, const float *q, const struct nn_swav_loss_cfg *cfg);
    float (*cross_entropy_soft_forward)(nn_backend_t *be, float *logp, const struct nn_tensor *logits, const float *target);
    void (*cross_entropy_soft_backward)(nn_backend_t *be, struct nn_tensor *dlogits, const float *logp, const float *target);
    float (*cross_entropy_forward)(nn_backend_t *be, float *logp, const struct nn_tensor *logits, const int32_t *labels);
    void (*cross_entropy_backward)(nn_backend_t *be, struct nn_tensor *dlogits, const float *logp, const int32_t *labels);
};

struct nn_backend {
    const struct nn_backend_iface *iface;
};

#endif
