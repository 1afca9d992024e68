/* The SwAV model: ResNet-18/34/50/101 backbone (widths x1 x2 x4 x5, or any
 * multiple of 8 for small experiments), projection head, prototypes, and its
 * multi-crop forward and backward (src/resnet50.py of the reference).
 *
 * Parameters live in one flat float buffer (param_data), their gradients in
 * another of the same layout (grad_data), described by one nn_param_table
 * under the reference's state-dict names; BatchNorm running statistics and
 * num_batches_tracked (stored here as float, flagged NN_PARAM_INT64) live in
 * buffer_data under a second table.  The optimizer and checkpoints work on
 * these flat buffers and tables only.
 *
 * The model is built for a fixed list of crop groups (consecutive crops of
 * one resolution) and a batch size; all activations live in one arena sized
 * then.  Input: per group, normalized float NCHW (n_crops*batch, 3, S, S),
 * crop-major (rows of crop c are [c*batch, (c+1)*batch)), as the reference's
 * torch.cat(inputs[start:end]).  Inside the backbone activations are in
 * oneDNN's nChw8c layout (cfg.layout), plain NCHW, or bf16/fp16 NHWC
 * (cfg.act_dtype). */
#ifndef SWAV_NN_RESNET_H
#define SWAV_NN_RESNET_H

#include <stdint.h>

#include "backend.h"
#include "collective.h"
#include "params.h"
#include "tensor.h"

#define NN_MAX_GROUPS 8

struct nn_resnet_cfg {
    int depth;              /* 18, 34 (BasicBlock), 50, 101 (Bottleneck) */
    int width;              /* stem channels: 64 x widen (64, 128, 256, 320); a multiple of 8 for NCHW8C */
    int small_stem;         /* conv 3x3 stride 1 pad 1, no maxpool (32-pixel data) */
    int zero_init_residual; /* last BN of each residual branch starts at weight 0 */
    int hidden_mlp;         /* projection head hidden size; 0: one Linear */
    int feat_dim;           /* embedding size; 0: no head, the model ends at the backbone */
    int nmb_prototypes;     /* K; 0: no prototypes */
    int no_l2norm;          /* 1: skip the L2 normalization of the embedding */
    int plain_layout;       /* 1: NCHW inside the backbone (else nChw8c when width % 8 == 0
                             * and the backend has it: the CPU one) */
    uint64_t seed;          /* initialization (common/rng.h streams) */
    enum nn_dtype act_dtype; /* the backbone's activations and their gradients:
                             * NN_DTYPE_F32 (0, the default), or NN_DTYPE_BF16 / NN_DTYPE_F16
                             * channels_last (NHWC) on a backend that has them
                             * (nn_backend_has_lowp: CUDA; nn_model_new fails otherwise).
                             * Parameters, gradients, BN statistics, feats and the head stay
                             * float; inputs stay float NCHW (converted by the model, the
                             * stem's widened to NN_LOWP_STEM_CHANNELS).  fp16 needs loss
                             * scaling (nn/loss_scale.h) in training. docs/cuda.md */
};

/* Defaults of the reference (resnet50, hidden_mlp 2048, feat_dim 128, 3000 prototypes). */
void nn_resnet_cfg_default(struct nn_resnet_cfg *cfg);

struct nn_crop_group {
    int n_crops; /* consecutive crops of this resolution */
    int size;    /* crop side in pixels */
};

enum nn_model_mode {
    NN_MODEL_EVAL = 0,
    NN_MODEL_TRAIN = 1, /* batch statistics, running stats updated */
};

struct nn_model_impl;

struct nn_model {
    struct nn_resnet_cfg cfg;
    nn_backend_t *be;
    /* parameters and their gradients: one table, two flat buffers */
    struct nn_param_table params;
    float *param_data; /* (params.total) */
    float *grad_data;  /* (params.total), accumulated by nn_model_backward */
    /* BN running stats + num_batches_tracked */
    struct nn_param_table buffers;
    float *buffer_data; /* (buffers.total) */

    int n_groups;
    struct nn_crop_group groups[NN_MAX_GROUPS];
    int batch;       /* batch size it was built for (forward may use less) */
    int n_rows;      /* rows of the outputs in the last forward: crops * batch */
    int feat_channels; /* backbone output: 512 or 2048, x width/64 */
    /* outputs of the last forward, row r = crop (r / batch), image (r % batch) */
    float *feats;     /* (n_rows, feat_channels): backbone after avgpool */
    float *embedding; /* (n_rows, feat_dim): after the head and L2 normalize */
    float *scores;    /* (n_rows, nmb_prototypes): embedding @ prototypes^T */
    float *out;       /* the last of those the model has */
    int out_dim;

    struct nn_model_impl *impl;
};

/* Builds and initializes the model (kaiming-normal fan-out convolutions,
 * BN 1/0, torch's default Linear init) and sizes its arena; also creates the
 * backend's primitives for these shapes.  NULL with a message if the
 * configuration is invalid (depth, width, groups). */
struct nn_model *nn_model_new(nn_backend_t *be, const struct nn_resnet_cfg *cfg,
                              const struct nn_crop_group *groups, int n_groups, int batch);
void nn_model_destroy(struct nn_model **m);

/* inputs[g]: (groups[g].n_crops * batch, 3, S, S) float NCHW, normalized,
 * in the backend's memory (nn_backend_alloc; nn_backend_normalize_crops
 * fills it from a loader's batch).  Like every layer call, the forward is
 * queued on the backend: host code reads the outputs (feats, embedding,
 * scores) or any model buffer only by copying them out with nn_backend_copy
 * (the CUDA backend's memory is device memory; nn/guard.h).
 * batch <= the built batch.  NN_MODEL_EVAL skips nothing but uses running
 * stats; its backward is not supported (the evaluator probes frozen
 * features, or fine-tunes in train mode).  Returns 0, or with SyncBN the
 * status of a failed collective (nn_model_sync_status). */
int nn_model_forward(struct nn_model *m, const float *const *inputs, int batch,
                     enum nn_model_mode mode);
/* dout: (n_rows, out_dim), the gradient of the loss w.r.t. m->out, in the
 * backend's memory.  Adds the
 * parameter gradients into grad_data (zero it first: nn_model_zero_grad).
 * Returns as nn_model_forward. */
int nn_model_backward(struct nn_model *m, const float *dout);
/* SyncBN (torch.nn.SyncBatchNorm.convert_sync_batchnorm: every BatchNorm2d
 * of the backbone and the head's BatchNorm1d): in train mode the batch
 * statistics become those of the batches of the ranks of c together, in
 * groups of group_size consecutive ranks (apex's process groups; 0: all),
 * nn/syncbn.h.  Every forward and backward in train mode then is collective:
 * all ranks call them in the same order with the same shapes.  c NULL or a
 * world of one: off.  The model borrows c.  -1 with a message when the
 * group size does not divide the world. */
int nn_model_set_sync_bn(struct nn_model *m, struct nn_collective *c, int group_size, char *err,
                         size_t errlen);
/* 0, or the status of the first SyncBN collective that failed (sticky: the
 * later BatchNorms of the pass, and of every later pass, use this rank's
 * statistics; the collective must be rebuilt, i.e. the trainer stops). */
int nn_model_sync_status(const struct nn_model *m);
void nn_model_zero_grad(struct nn_model *m);
/* fn(ctx, lo) is called during nn_model_backward each time the gradients
 * grad_data[lo, params.total) have become final (no later layer of the
 * backward touches them), lo falling from call to call, the last call with
 * lo 0: the trainer starts their all-reduce there, in buckets that overlap
 * the rest of the backward (DDP's buckets).  The producing layers are
 * queued on the backend when fn runs, not necessarily finished: a consumer
 * on another stream orders itself after the backend's queue.  fn NULL: off. */
typedef void (*nn_grad_ready_fn)(void *ctx, size_t lo);
void nn_model_set_grad_ready(struct nn_model *m, nn_grad_ready_fn fn, void *ctx);
/* prototypes.weight rows scaled to unit L2 norm (start of every step). */
void nn_model_normalize_prototypes(struct nn_model *m);

/* Pointer to a named parameter or buffer ("layer1.0.conv1.weight"), or NULL. */
float *nn_model_param(struct nn_model *m, const char *name);
float *nn_model_grad(struct nn_model *m, const char *name);
float *nn_model_buffer(struct nn_model *m, const char *name);

/* A saved activation of the last forward, by the reference's module name,
 * for tests and diagnostics (it stays valid until the next forward):
 * crop group `group`'s "conv1" / "layerS.J.convK" / "layerS.J.downsample.0"
 * (convolution outputs), "bn1" / "layerS.J.bnK" / "layerS.J.downsample.1"
 * (batch-norm outputs, after the ReLU where one is fused: the stem's, and
 * every block's but the last), "layerS.J" (block output, after its ReLU);
 * the head's "projection_head.0" (Linear) and "projection_head.1" (BN1d +
 * ReLU), whatever `group`.  Backbone tensors are in the model's layout
 * (nChw8c or NCHW; with cfg.act_dtype BF16/F16, that dtype NHWC), head ones (rows, hidden).  Returns 0 and a view in *out,
 * or -1 for an unknown name or group. */
int nn_model_activation(const struct nn_model *m, int group, const char *name,
                        struct nn_tensor *out);

/* Bytes of the activation arena (for logs and docs). */
size_t nn_model_arena_bytes(const struct nn_model *m);

#endif
