/* The model and the SwAV step of the CUDA model tests, run on each side
 * (test_cuda_model: float; test_cuda_lowp: the bf16 and fp16 backbones), the CPU
 * backend's side first: fixed codes, the loader's uint8 crops normalized by
 * the backend, forward, loss and backward. */
#ifndef SWAV_TESTS_CUDA_SWAV_STEP_H
#define SWAV_TESTS_CUDA_SWAV_STEP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rng.h"
#include "nn/backend.h"
#include "nn/layers.h"
#include "nn/resnet.h"

/* The model both tests build on each side: ResNet-18 of width 16, head
 * 64 -> 16, 30 prototypes, plain layouts (the CUDA backend's), seed 7 (the
 * same weights on both sides). */
static inline void step_model_cfg(struct nn_resnet_cfg *cfg)
{
    nn_resnet_cfg_default(cfg);
    cfg->depth = 18;
    cfg->width = 16;
    cfg->hidden_mlp = 64;
    cfg->feat_dim = 16;
    cfg->nmb_prototypes = 30;
    cfg->plain_layout = 1;
    cfg->seed = 7;
}

/* Codes q (rows, K): each row a softmax of N(0, 1) draws from r. */
static inline void codes_fill(float *q, size_t rows, int K, struct swav_rng *r)
{
    for (size_t row = 0; row < rows; row++) {
        double s = 0;
        for (int k = 0; k < K; k++) {
            s += q[row * K + k] = (float)exp(swav_rng_normal(r));
        }
        for (int k = 0; k < K; k++) {
            q[row * K + k] = (float)(q[row * K + k] / s);
        }
    }
}

/* One side up to the gradients: the crops raw[g] (host, uint8 NHWC) of each
 * group normalized by the backend into in[g], the prototypes normalized, the
 * forward, the SwAV loss against q (logp into lp) and its backward into ds
 * (n_rows, K), the gradients zeroed and the model's backward; the backend
 * synchronized.  loss_scale != 1: the trainer's fp16 loss scaling (ds times
 * it before the backward, the gradients divided by it after).  Returns the
 * loss. */
static inline float side_step_scaled(struct nn_model *m, nn_backend_t *be, float **in,
                                     uint8_t *const *raw, const struct nn_crop_group *groups,
                                     int n_groups, int batch, int K, const float *q, float *lp,
                                     float *ds, const struct nn_swav_loss_cfg *lc,
                                     float loss_scale)
{
    for (int g = 0; g < n_groups; g++) {
        nn_backend_normalize_crops(be, in[g], raw[g], batch, groups[g].n_crops, groups[g].size,
                                   groups[g].size);
    }
    nn_model_normalize_prototypes(m);
    nn_model_forward(m, (const float *const *)in, batch, NN_MODEL_TRAIN);
    struct nn_tensor sc = nn_tensor_2d(m->scores, m->n_rows, K);
    struct nn_tensor dsc = nn_tensor_2d(ds, m->n_rows, K);
    float loss = nn_swav_loss_forward(be, lp, &sc, q, lc);
    nn_swav_loss_backward(be, &dsc, lp, q, lc);
    if (loss_scale != 1.0f) {
        nn_backend_scale(be, ds, (size_t)m->n_rows * K, loss_scale);
    }
    nn_model_zero_grad(m);
    nn_model_backward(m, ds);
    if (loss_scale != 1.0f) {
        nn_backend_scale(be, m->grad_data, m->params.total, 1.0f / loss_scale);
    }
    nn_backend_sync(be);
    return loss;
}

static inline float side_step(struct nn_model *m, nn_backend_t *be, float **in, uint8_t *const *raw,
                              const struct nn_crop_group *groups, int n_groups, int batch, int K,
                              const float *q, float *lp, float *ds,
                              const struct nn_swav_loss_cfg *lc)
{
    return side_step_scaled(m, be, in, raw, groups, n_groups, batch, K, q, lp, ds, lc, 1.0f);
}

#endif
