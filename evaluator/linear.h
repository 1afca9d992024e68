/* Linear probe on frozen features, with eval_linear.py's semantics: one
 * nn.Linear(dim, n_classes) (weight N(0, 0.01), bias 0), cross-entropy,
 * SGD(momentum 0.9, weight_decay on weight and bias, optional Nesterov),
 * learning rate per epoch from CosineAnnealingLR(epochs, eta_min=final_lr) or
 * MultiStepLR(decay_epochs, gamma), validation after each epoch, the best
 * top-1 kept (with the top-5 of that epoch).
 *
 * Training examples come from a batch source, the seam between the two
 * modes: "fast" gathers cached center-crop features (eval_linear_source_
 * features); "full" (evaluator/live.c) fills each batch by running
 * RandomResizedCrop + flip crops, new ones every epoch, through the frozen
 * backbone.  Each epoch visits the examples in
 * a permutation drawn from (seed, epoch) with common/rng.h, in batches of
 * batch_size, the last one short (DataLoader's drop_last=False).
 *
 * Forward/backward are plain BLAS (cblas_sgemm) with our own softmax
 * cross-entropy (nn/layers.h was not committed yet when this was written);
 * the SGD step is nn/optim.h's (plain SGD, LARC off) over an nn_param_table
 * holding "linear.weight" and "linear.bias", and the schedules are
 * nn/schedule.h's (torch's recursive formulas).  Everything is allocated in
 * eval_linear_init, nothing in the step. */
#ifndef SWAV_EVALUATOR_LINEAR_H
#define SWAV_EVALUATOR_LINEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "nn/optim.h"
#include "nn/params.h"

#define EVAL_MAX_MILESTONES 16

enum eval_sched {
    EVAL_SCHED_COSINE = 0, /* CosineAnnealingLR(T_max=epochs, eta_min=final_lr) */
    EVAL_SCHED_STEP,       /* MultiStepLR(decay_epochs, gamma) */
};

struct eval_linear_config {
    int epochs;         /* 100 */
    int batch_size;     /* 32 */
    double lr;          /* 0.3 */
    double wd;          /* 1e-6 */
    double momentum;    /* 0.9 */
    bool nesterov;      /* false */
    enum eval_sched sched; /* cosine */
    double final_lr;    /* 0 (cosine) */
    int n_decay;        /* 2 */
    int decay_epochs[EVAL_MAX_MILESTONES]; /* 60 80 (step) */
    double gamma;       /* 0.1 (step) */
    uint64_t seed;      /* 31: init and epoch permutations */
};

/* eval_linear.py's defaults. */
void eval_linear_config_default(struct eval_linear_config *cfg);
/* The learning rate used during `epoch` (0-based): the scheduler stepped
 * once per finished epoch. */
double eval_linear_lr(const struct eval_linear_config *cfg, int epoch);

struct eval_linear {
    int64_t dim, n_classes, max_batch;
    size_t n_params;   /* n_classes * dim + n_classes */
    float *params;     /* weight (n_classes, dim) then bias (n_classes) */
    float *grads;      /* same layout */
    struct nn_param_table table; /* "linear.weight", "linear.bias" (RegLog's names) */
    struct nn_optim optim;       /* momentum buffer inside; its config set per step */
    float *logits;     /* (max_batch, n_classes) scratch */
    float *xbuf;       /* (max_batch, dim) batch features from a source */
    int32_t *ybuf;     /* (max_batch) */
};

/* Allocates everything and draws the init: weight N(0, 0.01) from
 * (seed, epoch 0, image 0, EVAL_RNG_LINEAR_INIT), bias 0. */
void eval_linear_init(struct eval_linear *m, int64_t dim, int64_t n_classes, int64_t max_batch,
                      uint64_t seed);
void eval_linear_free(struct eval_linear *m);

/* One SGD step on b <= max_batch examples x (b, dim), labels y in
 * [0, n_classes) (checked by the caller); returns the batch's mean
 * cross-entropy before the step. */
float eval_linear_step(struct eval_linear *m, const float *x, const int32_t *y, int64_t b,
                       double lr, const struct eval_linear_config *cfg);
/* logits (b, n_classes) = x W^T + bias, b <= any (computed in place of the
 * caller's buffer). */
void eval_linear_forward(const struct eval_linear *m, const float *x, int64_t b, float *logits);
/* Softmax cross-entropy of one row of logits z (C), max subtracted, in
 * double: returns the loss and turns z into (softmax - onehot) * scale, the
 * gradient of scale x loss (shared with the fine-tuning of semisup.h). */
double eval_ce_row_backward(float *z, int C, int label, float scale);
/* Accuracy and mean loss over (n, dim) features, in batches of max_batch. */
void eval_linear_evaluate(struct eval_linear *m, const float *x, const int32_t *y, int64_t n,
                          struct eval_acc *acc, double *mean_loss);

/* ---- the seam between fast and full mode ----------------------------------- */

struct eval_batch_source {
    void *ctx;
    int64_t n; /* training examples per epoch */
    /* Fill x (b, dim) and y (b) with examples idx[0..b) of `epoch`; 0 on
     * success, nonzero to abort the run (the source has logged why). */
    int (*fill)(void *ctx, int epoch, const uint32_t *idx, int64_t b, float *x, int32_t *y);
    /* Called at the start of each epoch with its whole order (the fills
     * follow it in batches of `batch`, the last one short), so that a
     * source can fetch ahead (full mode asks the loaders for every batch
     * of the epoch up to its window ahead).  May be NULL; nonzero aborts. */
    int (*begin)(void *ctx, int epoch, const uint32_t *order, int64_t n, int64_t batch);
};

/* Fast mode: cached features (n, dim) and labels. */
struct eval_feature_source {
    const float *x;
    const int32_t *y;
    int64_t n, dim;
};
struct eval_batch_source eval_linear_source_features(struct eval_feature_source *fs);

/* The order of `epoch`: a permutation of [0, n) drawn from
 * (seed, epoch, 0, EVAL_RNG_LINEAR_PERM). */
void eval_linear_epoch_order(uint64_t seed, int epoch, uint32_t *perm, int64_t n);

#define EVAL_RNG_LINEAR_INIT 0x4c494e49u /* "LINI" */
#define EVAL_RNG_LINEAR_PERM 0x4c505251u /* "LPRQ" */

struct eval_linear_result {
    double best_top1, best_top5; /* top-5 of the epoch with the best top-1 */
    int best_epoch;
    double last_top1, last_top5, last_val_loss;
    double last_train_loss;      /* mean over the last epoch's batches */
    int64_t steps;
};

/* The end of a probe epoch: the validation accuracy and loss become the
 * last ones, the mean of the epoch's `nb` batch losses (summing to
 * `loss_sum`) the last training loss, and the epoch the best when its top-1
 * beats the best so far.  Shared by the linear probe and semi-supervised
 * fine-tuning. */
struct eval_acc;
void eval_linear_result_epoch(struct eval_linear_result *r, int epoch,
                              const struct eval_acc *acc, double val_loss, double loss_sum,
                              int64_t nb);

/* Called after every step (may be NULL). */
typedef void (*eval_linear_step_fn)(void *ctx, int epoch, int64_t step, float loss, double lr);

enum eval_linear_status {
    EVAL_LINEAR_OK = 0,
    EVAL_LINEAR_ERR_ARGS,   /* config or sizes out of range */
    EVAL_LINEAR_ERR_LABEL,  /* a label outside [0, n_classes) */
    EVAL_LINEAR_ERR_SOURCE, /* the batch source failed */
};
const char *eval_linear_status_str(enum eval_linear_status st);

/* Trains m (already initialized, max_batch >= cfg->batch_size) for
 * cfg->epochs epochs on `train`, validating on (val_x, val_y) after each. */
enum eval_linear_status eval_linear_run(struct eval_linear *m, const struct eval_linear_config *cfg,
                                        const struct eval_batch_source *train,
                                        const float *val_x, const int32_t *val_y, int64_t n_val,
                                        eval_linear_step_fn on_step, void *step_ctx,
                                        struct eval_linear_result *res);

#endif
