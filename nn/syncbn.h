/* SyncBatchNorm (torch.nn.SyncBatchNorm; apex's with process groups): a
 * train-mode batch norm whose batch statistics are those of the batches of
 * all ranks of a group together, and whose backward is the gradient of that.
 * Used for every BatchNorm of the model when the trainer runs with
 * --sync_bn (resnet.h: nn_model_set_sync_bn); a world of one never needs it.
 *
 * Forward: each rank computes its batch's per-channel count, mean and M2 in
 * double (nn_batchnorm_stats), the ranks exchange them (one all-reduce: each
 * rank writes its slot of a zeroed (world, 1 + 3C) buffer, the mean as two
 * floats, high and low part, so the float collective carries it to ~48
 * bits), and every rank merges the group's slots in rank order (Chan's
 * parallel variance), as torch's all_gather + batch_norm_gather_stats_with_
 * counts: identical statistics on every rank.  The layer then normalizes
 * with them (an eval-mode nn_batchnorm_forward, which also writes the fused
 * ReLU's mask) and updates the running stats with the group's unbiased
 * variance.
 *
 * Backward: the eval-mode backward with those statistics gives weight *
 * invstd * dy' and the local sums of dy' and dy' * xhat; one all-reduce of
 * the two sums over the group, then nn_batchnorm_backward_elemt subtracts
 * the group means' terms.  The weight and bias gradients added are the
 * local sums (as torch: the trainer's gradient all-reduce averages them).
 *
 * One collective per call in each direction; the multi-crop forward runs the
 * backbone once per crop group, and each call synchronizes on its own, as in
 * torch.  Groups (apex's syncbn_process_group_size): consecutive ranks
 * [g * size, (g + 1) * size); a group of the whole world exchanges the
 * backward sums with a plain all-reduce, a smaller one through the
 * (world, 2C) slots.
 *
 * A failed collective is sticky: the call returns its status, uses this
 * rank's statistics, and every later call skips the collective and returns
 * the same status (the ring must be rebuilt; the trainer stops). */
#ifndef SWAV_NN_SYNCBN_H
#define SWAV_NN_SYNCBN_H

#include "collective.h"
#include "layers.h"

typedef struct nn_syncbn nn_syncbn_t;

/* group_size: ranks per group, dividing c->world (0: the whole world);
 * max_channels: the widest BatchNorm it will serve.  NULL with a message in
 * err when the group size does not divide the world. */
nn_syncbn_t *nn_syncbn_new(struct nn_collective *c, int group_size, int max_channels, char *err,
                           size_t errlen);
/* Before the backend its backward ran on (two small buffers are that
 * backend's memory). */
void nn_syncbn_destroy(nn_syncbn_t **s);
/* The first failure's status (0: none). */
int nn_syncbn_status(const nn_syncbn_t *s);

/* Train-mode forward over the group.  flags: NN_BN_RELU or 0.  save_mean,
 * save_var (C) and *count receive the group's batch statistics (biased
 * variance) and number of values per channel, for the backward; running
 * stats are updated as nn_batchnorm_forward does.  workspace: as
 * nn_batchnorm_workspace_bytes(inp, NN_BN_TRAIN | flags) sized, needed with
 * NN_BN_RELU.  Returns 0 or the collective's status. */
int nn_syncbn_forward(nn_syncbn_t *s, nn_backend_t *be, struct nn_tensor *out,
                      const struct nn_tensor *inp, const float *weight, const float *bias,
                      float *running_mean, float *running_var, float *save_mean, float *save_var,
                      double *count, void *workspace, unsigned flags, float momentum, float eps);
/* Its backward: dinp written (may alias dout), dweight and dbias += this
 * rank's sums.  Returns 0 or the collective's status. */
int nn_syncbn_backward(nn_syncbn_t *s, nn_backend_t *be, struct nn_tensor *dinp, float *dweight,
                       float *dbias, const struct nn_tensor *dout, const struct nn_tensor *inp,
                       const float *weight, const float *save_mean, const float *save_var,
                       double count, const void *workspace, unsigned flags, float eps);

#endif
