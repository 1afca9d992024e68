/* The model and the SwAV step of the CUDA model tests, run on each side
 * (test_cuda_model: float; test_cuda_lowp: the bf16 and fp16 backbones), the CPU
 * backend's side first: fixed codes, the loader's uint8 crops normalized by
 * the backend, forward, loss and backward. */
#ifndef SWAV_TESTS_CUDA_SWAV_STEP_H
#define SWAV_TESTS_CUDA_SWAV_STEP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/rng.h"
#include "nn/backend.h"
#include "nn/layers.h"
#include "nn/optim.h"
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

/* The buffers of a step on both sides (the CPU model mc and the CUDA model
 * mg, built alike on these groups): the crops as a loader's batch (host
 * uint8, random from r), each side's normalized inputs, the codes (fixed
 * rows of a softmax from r, the same on both sides; crops 0 and 1 assigned,
 * temperature 0.1), each side's log-probabilities and score gradients, and
 * each side's optimizer (SwAV's settings; the CUDA backend's own). */
struct step_pair {
    int n_groups;
    uint8_t *raw[NN_MAX_GROUPS];
    float *in_c[NN_MAX_GROUPS], *in_g[NN_MAX_GROUPS];
    size_t n_in[NN_MAX_GROUPS], nq, ns;
    float *q_c, *q_g, *lp_c, *ds_c, *lp_g, *ds_g;
    struct nn_swav_loss_cfg lc;
    struct nn_optim opt_c, opt_g;
};

static const int step_assign[2] = {0, 1};

static inline void step_pair_init(struct step_pair *d, nn_backend_t *cpu, nn_backend_t *gpu,
                                  struct nn_model *mc, struct nn_model *mg,
                                  const struct nn_crop_group *groups, int n_groups, int batch,
                                  int n_crops, int K, struct swav_rng *r)
{
    d->n_groups = n_groups;
    for (int g = 0; g < n_groups; g++) {
        size_t n = (size_t)groups[g].n_crops * batch * 3 * groups[g].size * groups[g].size;
        d->n_in[g] = n;
        d->raw[g] = malloc(n); /* host memory, as a loader's batch */
        for (size_t i = 0; i < n; i++) {
            d->raw[g][i] = (uint8_t)swav_rng_below(r, 256);
        }
        d->in_c[g] = nn_backend_alloc(cpu, n * sizeof(float));
        d->in_g[g] = nn_backend_alloc(gpu, n * sizeof(float));
    }
    d->nq = (size_t)2 * batch * K;
    d->ns = (size_t)n_crops * batch * K;
    d->q_c = malloc(d->nq * sizeof(float));
    d->q_g = nn_backend_alloc(gpu, d->nq * sizeof(float));
    codes_fill(d->q_c, d->nq / K, K, r);
    nn_backend_copy(gpu, d->q_g, d->q_c, d->nq * sizeof(float)); /* host -> device */
    d->lp_c = malloc(d->ns * sizeof(float));
    d->ds_c = malloc(d->ns * sizeof(float));
    d->lp_g = nn_backend_alloc(gpu, d->ns * sizeof(float));
    d->ds_g = nn_backend_alloc(gpu, d->ns * sizeof(float));
    d->lc = (struct nn_swav_loss_cfg){n_crops, batch, 2, step_assign, 0.1f};
    struct nn_optim_config oc = nn_optim_config_swav(1e-6, 0);
    nn_optim_init_on(&d->opt_c, cpu, &mc->params, &oc);
    nn_optim_init_on(&d->opt_g, gpu, &mg->params, &oc);
}

static inline void step_pair_free(struct step_pair *d, nn_backend_t *cpu, nn_backend_t *gpu)
{
    nn_optim_free(&d->opt_g);
    nn_optim_free(&d->opt_c);
    for (int g = 0; g < d->n_groups; g++) {
        free(d->raw[g]);
        nn_backend_free(cpu, d->in_c[g]);
        nn_backend_free(gpu, d->in_g[g]);
    }
    free(d->q_c);
    free(d->lp_c);
    free(d->ds_c);
    nn_backend_free(gpu, d->q_g);
    nn_backend_free(gpu, d->lp_g);
    nn_backend_free(gpu, d->ds_g);
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
